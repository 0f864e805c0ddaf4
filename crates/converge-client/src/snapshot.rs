//! Rejoining from snapshots (SPEC section 3): a client whose cursor points
//! into a part of the server's log that `converge.compact()` removed gets
//! 55000 from `changes_since`; it takes each declared table's rows instead
//! (what `converge.snapshot` gives, read with each row's key as ops name
//! it), and goes on from the frontier they reflect.

use crate::{AnyCrdt, CellId, Client, ClientError, Result};
use std::collections::BTreeMap;

/// The columns `a` of the primary key `i` of the table named by $1 (`c`),
/// as declared: schema-qualified as the server writes it, or a bare name.
pub(crate) const PRIMARY_KEY: &str = "FROM (SELECT CASE WHEN strpos($1, '.') > 0 THEN to_regclass($1) ELSE to_regclass(quote_ident($1)) END AS oid) c
                       JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)";

impl Client {
    /// Take the rows of every declared table, as `converge.snapshot` gives
    /// them (their CRDT columns' full states), with each row's key as ops
    /// name it, all read with `converge.frontier()` in one REPEATABLE
    /// READ transaction so that they reflect one frontier, and move this
    /// client's cursor to that frontier. A table's cells become the
    /// snapshot's, with this client's outbox, the ops a server holds for
    /// it (`Saved::held`) and its own counter totals merged on top: merged into
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
            // As declared: schema-qualified as the server writes it, or a
            // bare name as it is. The rows as converge.snapshot gives them,
            // each with its key as the op trigger renders it (integers and
            // booleans as JSON, numeric as a JSON number, anything else as
            // its text: an array key is "{1,2}", not [1,2]), so that its
            // cells are the ones later ops name.
            let query: Option<String> = tx
                .query_one(
                    &format!(
                        "SELECT CASE WHEN count(*) > 0 THEN format('SELECT jsonb_build_object(%s)::text, to_jsonb(t)::text FROM %s t',
                            string_agg(format('%L, %s', a.attname,
                                CASE WHEN a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'bool'::regtype)
                                     THEN format('t.%I', a.attname)
                                     WHEN a.atttypid = 'numeric'::regtype
                                     THEN format('CASE WHEN t.%1$I::text IN (''NaN'', ''Infinity'', ''-Infinity'')
                                                       THEN to_jsonb(t.%1$I::text) ELSE to_jsonb(t.%1$I) END', a.attname)
                                     ELSE format('t.%I::text', a.attname) END), ', '
                                ORDER BY array_position(i.indkey::int2[], a.attnum)),
                            min(c.oid)::regclass) END
                       {PRIMARY_KEY}"
                    ),
                    &[table],
                )?
                .get(0);
            let Some(query) = query else { continue };
            let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).map_err(|e| ClientError::Format(e.to_string()));
            for r in tx.query(&query, &[])? {
                let (key, row) = (json(r.get(0))?, json(r.get(1))?);
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
        // This client's own counter totals, where it has any: a snapshot's
        // may be lower (an op applied on another server that this one has
        // not received, or one it holds), and a next increment carrying a
        // lower total would be lost under max where they meet. A row the
        // snapshot lacks keeps a cell with them (a deleted row's state
        // stays in its tombstone on the servers, and a later increment
        // must go on from them). The amounts of refused ops stay in them,
        // as they stay in the cells without a rejoin.
        let own: Vec<(CellId, AnyCrdt)> = self
            .cells
            .iter()
            .filter(|(id, _)| replaced.contains(&&id.table))
            .filter_map(|(id, v)| v.own_counts(&self.saved.actor).map(|o| (id.clone(), o)))
            .collect();
        self.cells.retain(|id, _| !replaced.contains(&&id.table));
        self.cells.extend(taken);
        for (id, mine) in own {
            match self.cells.get_mut(&id) {
                Some(cell) => cell.merge(&mine)?,
                None => {
                    self.cells.insert(id, mine);
                }
            }
        }
        let frontier: BTreeMap<String, u64> = serde_json::from_str(&frontier).map_err(|e| ClientError::Format(e.to_string()))?;
        // Ops a server holds are no longer in the outbox: applied in this
        // snapshot (the server's frontier covers them) or refused since,
        // they are let go; otherwise merged again, like the outbox.
        let applied = frontier.get(&self.saved.actor).copied().unwrap_or(0);
        let dead = &self.saved.dead;
        self.saved.held.retain(|op| op.counter() > applied && !dead.contains_key(&op.counter()));
        for op in self.saved.held.clone().iter().chain(self.outbox.clone().iter()) {
            if self.saved.columns.contains_key(&format!("{}.{}", op.target_table, op.target_column)) && !self.kept_out(op) {
                self.merge_delta(op)?;
            }
        }
        for (actor, counter) in frontier {
            self.seen_through(&actor, counter);
        }
        Ok(rows)
    }
}
