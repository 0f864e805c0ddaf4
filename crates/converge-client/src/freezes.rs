//! Freezes a client pulls (SPEC section 5, docs/coordination.md "Epochs"):
//! each frozen row's epoch, which the client's later edits of the row
//! carry, and the row's state as the freeze left it.
//!
//! A freeze keeps out the edits made without it (`frozen`), on every node.
//! The client's own state still holds its kept-out edits, and counters
//! carry running totals: its next increment of the row would carry them
//! back in. So when a pull brings a row's newer epoch, the client takes the
//! row's cells from the server (with its outbox edits of that epoch on
//! top), and edits it makes from then on build on the frozen state.

use crate::snapshot::PRIMARY_KEY;
use crate::{AnyCrdt, CellId, Client, ClientError, Result};

/// A declared table name, a row key and the row's newer epoch.
pub(crate) type RisenRow = (String, serde_json::Value, i64);

impl Client {
    /// The epoch of a row as this client knows it (0 before any freeze
    /// was pulled): what an op made here of that row carries.
    pub fn epoch(&self, table: &str, key: &serde_json::Value) -> i64 {
        self.saved.epochs.get(&crate::row_name(table, key)).copied().unwrap_or(0)
    }

    /// Whether the server keeps `op` out: it was made before a freeze of
    /// its row that this client has pulled since. Such an outbox op is not
    /// in the client's cells.
    pub(crate) fn kept_out(&self, op: &crate::Op) -> bool {
        op.epoch < self.epoch(&op.target_table, &op.target_key.to_value())
    }

    /// Rows' epochs from the server's freezes, not from freeze ops: a
    /// server that rejoined from a snapshot has the freezes without their
    /// ops, and compaction takes freeze ops out of the log. A 0.1.0 server
    /// has none. Returns the rows whose epoch rose (noted by
    /// `take_frozen_rows`).
    pub(crate) fn pull_epochs(&self, db: &mut postgres::Client) -> Result<Vec<RisenRow>> {
        let has_epochs: bool = db.query_one("SELECT to_regclass('converge.frozen') IS NOT NULL", &[])?.get(0);
        if !has_epochs {
            return Ok(Vec::new());
        }
        let mut risen = Vec::new();
        for r in db.query("SELECT target_table, target_key::text, max(epoch) FROM converge.frozen GROUP BY 1, 2", &[])? {
            let key: serde_json::Value = serde_json::from_str(r.get::<_, &str>(1)).map_err(|e| ClientError::Format(e.to_string()))?;
            let (table, epoch): (&str, i64) = (r.get(0), r.get(2));
            // Under the qualified table name and, for a plain
            // `schema.table`, the bare name too (those declared).
            let declared = |t: &str| !self.declared_columns(t).is_empty();
            for t in std::iter::once(table.to_string()).chain(crate::bare_name(table)).filter(|t| declared(t)) {
                if epoch > self.epoch(&t, &key) {
                    risen.push((t, key.clone(), epoch));
                }
            }
        }
        Ok(risen)
    }

    /// The columns declared on `table` (as it was declared: qualified or bare).
    fn declared_columns(&self, table: &str) -> Vec<String> {
        self.saved.columns.keys().filter_map(|c| c.strip_prefix(table)?.strip_prefix('.').map(String::from)).collect()
    }

    /// Rows whose epoch rose: their epochs are noted, and their cells
    /// become the server's, with this client's outbox edits of the new
    /// epoch merged on top (those of earlier epochs are kept out there).
    /// Every row is read before anything changes here, so a failed read
    /// leaves the rows to the next pull. A row the server no longer has
    /// keeps its cells.
    pub(crate) fn take_frozen_rows(&mut self, db: &mut postgres::Client, rows: &[RisenRow]) -> Result<()> {
        let mut read = Vec::new();
        for (table, key, epoch) in rows {
            read.push((table, key, *epoch, self.server_row(db, table, key)?));
        }
        for (table, key, epoch, row) in read {
            self.saved.epochs.insert(crate::row_name(table, key), epoch);
            let Some(row) = row else { continue };
            for column in self.declared_columns(table) {
                let cell = CellId::new(table, key, &column);
                match row.get(&column) {
                    Some(serde_json::Value::String(state)) => {
                        let value = AnyCrdt::empty(&self.column_type(table, &column)?)?.parse_like(state)?;
                        self.cells.insert(cell, value);
                    }
                    _ => {
                        self.cells.remove(&cell);
                    }
                }
            }
            let own: Vec<_> = self
                .outbox
                .iter()
                .filter(|op| &op.target_table == table && op.target_key.to_value() == *key && !self.kept_out(op))
                .cloned()
                .collect();
            for op in own {
                if self.saved.columns.contains_key(&format!("{}.{}", op.target_table, op.target_column)) {
                    self.merge_delta(&op)?;
                }
            }
        }
        Ok(())
    }

    /// The server's row of `table` (as declared) with key `key` (as ops
    /// name it), as JSON: its CRDT columns as their full-state text.
    fn server_row(&self, db: &mut postgres::Client, table: &str, key: &serde_json::Value) -> Result<Option<serde_json::Value>> {
        // By its primary key, from the key as ops name it (the server
        // matches keys to rows the same way when it compacts).
        let query: Option<String> = db
            .query_one(
                &format!(
                    "SELECT CASE WHEN count(*) > 0 THEN format(
                            'SELECT to_jsonb(t)::text FROM %1$s t WHERE (%2$s) = (SELECT %3$s FROM jsonb_populate_record(NULL::%1$s, $1::text::jsonb) r)',
                            min(c.oid)::regclass,
                            string_agg(format('t.%I', a.attname), ', ' ORDER BY a.attnum),
                            string_agg(format('r.%I', a.attname), ', ' ORDER BY a.attnum)) END
                       {PRIMARY_KEY}"
                ),
                &[&table],
            )?
            .get(0);
        let Some(query) = query else { return Ok(None) };
        let Some(row) = db.query_opt(&query, &[&key.to_string()])? else { return Ok(None) };
        serde_json::from_str(row.get(0)).map(Some).map_err(|e| ClientError::Format(e.to_string()))
    }
}
