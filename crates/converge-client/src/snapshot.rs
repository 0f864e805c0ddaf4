//! Rejoining from snapshots (SPEC section 3): a client whose cursor points
//! into a part of the server's log that `converge.compact()` removed gets
//! 55000 from `changes_since`; it takes each declared table's rows from
//! `converge.snapshot` instead, and goes on from the frontier they reflect.

use crate::{AnyCrdt, CellId, Client, ClientError, Result};
use std::collections::BTreeMap;

impl Client {
    /// Take the rows of every declared table, as `converge.snapshot` gives
    /// them (their CRDT columns' full states), all read in one REPEATABLE
    /// READ transaction so that they reflect one frontier, and move this
    /// client's cursor to that frontier. A table's cells become the
    /// snapshot's, with this client's outbox merged on top: merged into
    /// the cells instead, a snapshot would bring back what compaction no
    /// longer marks as removed (the client had seen an element added, the
    /// server folded its later removal). A declared table the server does
    /// not have (or that has no primary key) keeps its cells. Returns the
    /// number of rows taken.
    pub(crate) fn rejoin_from_snapshots(&mut self, db: &mut postgres::Client) -> Result<usize> {
        // "table.column" -> declared columns per table (a column name has no dot).
        let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in self.saved.columns.keys() {
            if let Some((t, c)) = name.rsplit_once('.') {
                tables.entry(t.to_string()).or_default().push(c.to_string());
            }
        }
        let mut tx = db.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).read_only(true).start()?;
        let mut taken: BTreeMap<CellId, AnyCrdt> = BTreeMap::new();
        let mut replaced: Vec<&String> = Vec::new();
        let mut rows = 0;
        for (table, columns) in &tables {
            // As declared: schema-qualified as the server writes it, or a bare name as it is.
            let found = tx.query_one(
                "SELECT coalesce(array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum)), '{}'),
                        converge.snapshot(min(c.oid)::regclass)::text
                   FROM (SELECT CASE WHEN strpos($1, '.') > 0 THEN to_regclass($1) ELSE to_regclass(quote_ident($1)) END AS oid) c
                   JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)",
                &[table],
            )?;
            let (keys, text): (Vec<String>, Option<String>) = (found.get(0), found.get(1));
            let Some(text) = text.filter(|_| !keys.is_empty()) else { continue };
            let snap: serde_json::Value = serde_json::from_str(&text).map_err(|e| ClientError::Format(e.to_string()))?;
            for row in snap["rows"].as_array().into_iter().flatten() {
                let key: serde_json::Map<String, serde_json::Value> =
                    keys.iter().map(|k| (k.clone(), row.get(k).cloned().unwrap_or(serde_json::Value::Null))).collect();
                let key = serde_json::Value::Object(key);
                for column in columns {
                    if let Some(serde_json::Value::String(state)) = row.get(column) {
                        let value = AnyCrdt::empty(&self.column_type(table, column)?)?.parse_like(state)?;
                        taken.insert(CellId::new(table, &key, column), value);
                    }
                }
                rows += 1;
            }
            replaced.push(table);
        }
        let frontier: String = tx.query_one("SELECT converge.frontier()::text", &[])?.get(0);
        tx.commit()?;
        self.cells.retain(|id, _| !replaced.contains(&&id.table));
        self.cells.extend(taken);
        for op in self.outbox.clone() {
            if self.saved.columns.contains_key(&format!("{}.{}", op.target_table, op.target_column)) {
                self.merge_delta(&op)?;
            }
        }
        let frontier: BTreeMap<String, u64> = serde_json::from_str(&frontier).map_err(|e| ClientError::Format(e.to_string()))?;
        for (actor, counter) in frontier {
            self.seen_through(&actor, counter);
        }
        Ok(rows)
    }
}
