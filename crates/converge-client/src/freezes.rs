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

/// A declared table name and a row key whose epoch rose in a pull.
pub(crate) type RisenRow = (String, serde_json::Value);

impl Client {
    /// The epoch of a row as this client knows it (0 before any freeze
    /// was pulled): what an op made here of that row carries.
    pub fn epoch(&self, table: &str, key: &serde_json::Value) -> i64 {
        self.saved.epochs.get(&crate::row_name(table, key)).copied().unwrap_or(0)
    }

    /// Rows' epochs from the server's freezes, not from freeze ops: a
    /// server that rejoined from a snapshot has the freezes without their
    /// ops, and compaction takes freeze ops out of the log. A 0.1.0 server
    /// has none. Returns the rows whose epoch rose.
    pub(crate) fn pull_epochs(&mut self, db: &mut postgres::Client) -> Result<Vec<RisenRow>> {
        let has_epochs: bool = db.query_one("SELECT to_regclass('converge.frozen') IS NOT NULL", &[])?.get(0);
        if !has_epochs {
            return Ok(Vec::new());
        }
        let mut risen = Vec::new();
        for r in db.query("SELECT target_table, target_key::text, max(epoch) FROM converge.frozen GROUP BY 1, 2", &[])? {
            let key: serde_json::Value = serde_json::from_str(r.get::<_, &str>(1)).map_err(|e| ClientError::Format(e.to_string()))?;
            risen.extend(self.note_epoch(r.get(0), &key, r.get(2)).into_iter().map(|t| (t, key.clone())));
        }
        Ok(risen)
    }

    /// A row's epoch on the server, under the qualified table name and, for
    /// a plain `schema.table`, the bare name too (those declared). Returns
    /// the names under which it rose.
    fn note_epoch(&mut self, table: &str, key: &serde_json::Value, epoch: i64) -> Vec<String> {
        let declared = |t: &str| self.saved.columns.keys().any(|c| c.strip_prefix(t).is_some_and(|rest| rest.starts_with('.')));
        let names: Vec<String> = std::iter::once(table.to_string()).chain(crate::bare_name(table)).filter(|t| declared(t)).collect();
        let mut rose = Vec::new();
        for t in names {
            let e = self.saved.epochs.entry(crate::row_name(&t, key)).or_insert(0);
            if epoch > *e {
                *e = epoch;
                rose.push(t);
            }
        }
        rose
    }

    /// The cells of rows whose epoch rose become the server's, with this
    /// client's outbox edits of the row's new epoch merged on top (its
    /// edits of earlier epochs are kept out there). A row the server no
    /// longer has keeps its cells.
    pub(crate) fn take_frozen_rows(&mut self, db: &mut postgres::Client, rows: &[RisenRow]) -> Result<()> {
        for (table, key) in rows {
            // The row by its primary key, from the key as ops name it (the
            // server matches keys to rows the same way when it compacts).
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
                    &[table],
                )?
                .get(0);
            let Some(query) = query else { continue };
            let Some(row) = db.query_opt(&query, &[&key.to_string()])? else { continue };
            let row: serde_json::Value = serde_json::from_str(row.get(0)).map_err(|e| ClientError::Format(e.to_string()))?;
            let columns: Vec<String> =
                self.saved.columns.keys().filter_map(|c| c.strip_prefix(table.as_str())?.strip_prefix('.').map(String::from)).collect();
            for column in columns {
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
            let epoch = self.epoch(table, key);
            let own: Vec<_> = self
                .outbox
                .iter()
                .filter(|op| &op.target_table == table && op.target_key.to_value() == *key && op.epoch >= epoch)
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
}
