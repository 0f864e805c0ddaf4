//! The one rebuild mechanism behind freeze, revocation and repair (epochs.rs,
//! actors.rs, repair.rs), SPEC section 5: a row's state is the merge of its base (what
//! compaction folded) and every op of the row that is still `applied` in the
//! log. To leave ops out, their log rows get another outcome and every row
//! they touched is rebuilt that way. Its limit: an op already folded into a
//! base by `compact()` cannot be left out any more.

use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

fn fail(e: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("converge rebuild: {e}"))
}

/// Log rows (by seq) to take out of rows' states, with the rows they touched.
pub struct Excluded {
    pub seq: i64,
    pub table: String,
    pub key: Value,
    pub reason: String,
}

/// Give these applied ops the outcome `outcome` (`rejected` for a
/// revocation, `superseded` for a repair) with their reasons and rebuild
/// every row they touched. Runs as converge's owner (the user's tables are
/// written as in the apply: as the caller, or as the table's owner for a
/// superuser).
pub fn exclude(ops: &[Excluded], outcome: &str) {
    if ops.is_empty() {
        return;
    }
    crate::security::as_owner(|| {
        // converge.stats keeps counting them as applied (they were).
        Spi::run_with_args(
            "WITH out AS (UPDATE converge.op_log l SET outcome = $3, reason = u.reason
                            FROM unnest($1::int8[], $2::text[]) u(seq, reason) WHERE l.seq = u.seq AND l.outcome = 'applied'
                          RETURNING 1)
             INSERT INTO converge.retired AS r (counter, total) SELECT 'applied', count(*) FROM out HAVING count(*) > 0
                 ON CONFLICT (counter) DO UPDATE SET total = r.total + EXCLUDED.total",
            &[
                ops.iter().map(|o| o.seq).collect::<Vec<i64>>().into(),
                ops.iter().map(|o| o.reason.clone()).collect::<Vec<String>>().into(),
                outcome.into(),
            ],
        )
        .unwrap_or_else(|e| fail(e));
        // A rejected op's actor's contiguous frontier ends before it again:
        // it is no longer applied here (if it arrives again, it is checked
        // again, not taken for a duplicate). A superseded op's counter stays
        // used up (apply's advance_frontier goes past it).
        if outcome == "rejected" {
            Spi::run_with_args(
            "UPDATE converge.actor_frontier f SET contiguous = least(f.contiguous, m.lo - 1)
               FROM (SELECT l.actor, min(l.counter) AS lo FROM converge.op_log l WHERE l.seq = ANY ($1) GROUP BY l.actor) m
              WHERE f.actor = m.actor",
            &[ops.iter().map(|o| o.seq).collect::<Vec<i64>>().into()],
            )
            .unwrap_or_else(|e| fail(e));
        }
        crate::requests::withdraw(&ops.iter().map(|o| o.seq).collect::<Vec<i64>>());
        let mut rows: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for o in ops {
            rows.entry(o.table.clone()).or_default().insert(o.key.to_string());
        }
        for (table, keys) in rows {
            let keys: Vec<Value> = keys.iter().map(|k| serde_json::from_str(k).unwrap_or_else(|e| fail(e))).collect();
            rebuild_rows(&table, &keys);
        }
    })
}

/// A replicated table as a rebuild needs it.
struct Layout {
    rel: pg_sys::Oid,
    keys: Vec<String>,
    crdt: HashMap<String, String>,
}

/// `table`'s layout, or None when it is no longer replicated under that
/// name (its rows are nobody's to rebuild).
fn layout(table: &str) -> Option<Layout> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT r.table_name::oid, r.key_columns, r.crdt_columns::text FROM converge.replicated r
              WHERE r.table_name = to_regclass($1)
                AND (SELECT format('%I.%I', n.nspname, k.relname) FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace
                      WHERE k.oid = r.table_name) = $1",
            Some(1),
            &[table.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let row = t.first();
        let crdt = row.get::<String>(3)?.and_then(|j| serde_json::from_str(&j).ok());
        Ok::<_, pgrx::spi::SpiError>(match (row.get::<pg_sys::Oid>(1)?, row.get::<Vec<String>>(2)?, crdt) {
            (Some(rel), Some(keys), Some(crdt)) => Some(Layout { rel, keys, crdt }),
            _ => None,
        })
    })
    .unwrap_or_else(|e| fail(e))
}

/// Lock the rows (as the writer of the table) and their row_state entries,
/// in the order local writes take them, before their parts are read: a
/// writer that held one commits its op first, and the read then sees it.
fn lock_rows(table: &str, t: &Layout, json: &[JsonB]) -> i64 {
    let matched = crate::rows::keys_match(&t.keys);
    let sql = format!(
        "WITH l AS (SELECT 1 FROM {table} t, pg_catalog.unnest($1::jsonb[]) k(key),
                         LATERAL pg_catalog.jsonb_populate_record(NULL::{table}, k.key) v
                     WHERE {matched} FOR UPDATE OF t)
         SELECT pg_catalog.count(*) FROM l"
    );
    let keys: Vec<JsonB> = json.iter().map(|j| JsonB(j.0.clone())).collect();
    let locked = crate::security::as_writer(t.rel, || Spi::get_one_with_args::<i64>(&sql, &[keys.into()]))
        .unwrap_or_else(|e| fail(e))
        .unwrap_or(0);
    let keys: Vec<JsonB> = json.iter().map(|j| JsonB(j.0.clone())).collect();
    Spi::run_with_args(
        "SELECT 1 FROM converge.row_state s WHERE s.tbl = $1::oid::regclass AND s.target_key = ANY ($2) FOR UPDATE",
        &[t.rel.into(), keys.into()],
    )
    .unwrap_or_else(|e| fail(e));
    locked
}

/// Lock these rows of `table` as a rebuild does (a no-op for a table no
/// longer replicated): a local writer of one commits its op first.
/// Returns how many of the rows exist.
pub fn lock(table: &str, keys: &[Value]) -> i64 {
    let Some(t) = layout(table) else { return 0 };
    let json: Vec<JsonB> = keys.iter().cloned().map(JsonB).collect();
    lock_rows(table, &t, &json)
}

/// Rebuild these rows of `table` (its qualified name, as ops name it) from
/// their bases and their applied ops: each row becomes what applying those
/// alone to an empty table would make it.
pub fn rebuild_rows(table: &str, keys: &[Value]) {
    let Some(t) = layout(table) else { return };
    let crdt = &t.crdt;
    let json: Vec<JsonB> = keys.iter().cloned().map(JsonB).collect();
    lock_rows(table, &t, &json);
    // Every part of the rows in one read (per row and column: base first,
    // then log order).
    let rows: Vec<(Value, String, Vec<u8>)> = Spi::connect(|c| {
        c.select(
            "SELECT p.target_key, p.target_column, p.d
               FROM (SELECT b.target_key, b.target_column, b.state AS d, 0::bigint AS o FROM converge.row_base b
                      WHERE b.target_table = $1 AND b.target_key = ANY ($2)
                     UNION ALL
                     SELECT l.target_key, l.target_column, l.delta, l.seq FROM converge.op_log l
                      WHERE l.outcome = 'applied' AND l.target_table = $1 AND l.target_key = ANY ($2)) p
              ORDER BY p.o",
            None,
            &[table.into(), json.into()],
        )
        .map(|t| {
            t.filter_map(|r| {
                let key = r.get::<JsonB>(1).ok().flatten()?.0;
                Some((key, r.get::<String>(2).ok().flatten()?, r.get::<Vec<u8>>(3).ok().flatten()?))
            })
            .collect()
        })
    })
    .unwrap_or_else(|e| fail(e));
    let mut parts: BTreeMap<(String, String), (Value, Vec<Vec<u8>>)> = BTreeMap::new();
    for (key, col, d) in rows {
        parts.entry((key.to_string(), col)).or_insert_with(|| (key, Vec::new())).1.push(d);
    }
    let parts: Vec<(Value, String, Vec<Vec<u8>>)> = parts.into_iter().map(|((_, col), (key, ds))| (key, col, ds)).collect();
    let mut entries = Vec::new();
    let mut lives: BTreeSet<String> = BTreeSet::new();
    for (key, col, deltas) in parts {
        let ty = if col.is_empty() { "lwwmap".to_string() } else if let Some(t) = crdt.get(&col) { t.clone() } else { continue };
        let refs: Vec<&[u8]> = deltas.iter().map(Vec::as_slice).collect();
        let merged = crate::apply::merge_bytes(&ty, &refs);
        if col.is_empty() && has_live(&merged) {
            lives.insert(key.to_string());
        }
        entries.push((key, col, merged));
    }
    // A row whose existence its row ops decided ("$live" in its clock) and
    // none of whose remaining ops does: no remaining op made it, so it goes
    // (a remaining CRDT op makes it again, as it would on an empty table).
    let gone: Vec<Value> = keys
        .iter()
        .filter(|k| !lives.contains(&k.to_string()) && clock_had_live(table, k))
        .cloned()
        .collect();
    crate::apply::replace_rows(table, keys, entries, &gone);
}

fn has_live(lwwmap: &[u8]) -> bool {
    converge_core::decode::<converge_core::types::LwwMap>(lwwmap).is_ok_and(|m| m.get("$live").is_some())
}

/// Whether the row's clock in row_state (before the rebuild) holds "$live".
fn clock_had_live(table: &str, key: &Value) -> bool {
    crate::spi::read_one::<Vec<u8>>(
        "SELECT s.clock::bytea FROM converge.row_state s WHERE s.tbl = to_regclass($1) AND s.target_key = $2",
        &[table.into(), JsonB(key.clone()).into()],
    )
    .is_some_and(|clock| has_live(&clock))
}
