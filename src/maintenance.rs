//! Running for months (SPEC section 6): the merge that compaction folds
//! ops with, and lost peers (a peer whose slot here holds more WAL than
//! `converge.max_peer_lag_bytes` while it is not streaming loses the slot).
//! Compaction itself is SQL (sql/maintenance.sql): it is a few set-wise
//! statements over converge's own tables.

use crate::errors::raise;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;

/// `converge.max_peer_lag_bytes`, in kB (-1: no limit).
pub static MAX_PEER_LAG: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

pub fn register_gucs() {
    GucRegistry::define_int_guc(
        c"converge.max_peer_lag_bytes",
        c"WAL a peer's slot may hold while the peer is not streaming before the peer is marked lost (-1: no limit).",
        c"Past it the slot is dropped (its WAL freed), the peer no longer holds compaction back, and it rejoins by itself when it returns.",
        &MAX_PEER_LAG,
        -1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
}

fn merge_all<T: converge_core::Crdt>(ty: &str, deltas: &[Option<&[u8]>]) -> Option<Vec<u8>> {
    let mut acc: Option<T> = None;
    for d in deltas.iter().flatten() {
        let v = converge_core::decode::<T>(d).unwrap_or_else(|e| {
            raise(PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION, format!("not a valid {ty} delta: {}", e.message))
        });
        match acc.as_mut() {
            None => acc = Some(v),
            Some(a) => a.merge(&v),
        }
    }
    acc.map(|a| converge_core::encode(&a))
}

/// The merge of deltas of the converge type `ty`, in binary form (NULL
/// elements skipped; NULL when none is left).
#[pg_extern(immutable, strict, parallel_safe)]
fn merge_deltas(ty: &str, deltas: pgrx::Array<&[u8]>) -> Option<Vec<u8>> {
    let deltas: Vec<Option<&[u8]>> = deltas.iter().collect();
    for_crdt_type!(ty, T => merge_all::<T>(ty, &deltas), _ => raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("\"{ty}\" is not a converge type")
    ))
}

/// How a peer names its slots on this node (peers.rs slot_name: the name
/// part, before the hash of its system and database).
fn slot_pattern(peer: &str) -> String {
    let clean: String =
        peer.chars().take(40).map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    format!("^converge_{clean}_[0-9a-f]{{8}}$")
}

/// Mark peers lost whose slot here holds more than the limit while they
/// do not stream, dropping the slot; clear the mark of a lost peer that
/// has made its slot again and streams. Run by the worker every few
/// seconds, in a transaction of its own.
pub fn check_lost_peers() {
    let limit_kb = MAX_PEER_LAG.get() as i64;
    let peers: Vec<(String, bool)> = Spi::connect(|c| {
        c.select("SELECT p.name, s.lost_at IS NOT NULL FROM converge.peer p JOIN converge.peer_status s USING (name)", None, &[])
            .map(|t| t.filter_map(|r| Some((r.get::<String>(1).ok()??, r.get::<bool>(2).ok()??))).collect())
            .unwrap_or_default()
    });
    for (name, lost) in peers {
        let slots: Vec<(String, bool, i64)> = Spi::connect(|c| {
            c.select(
                "SELECT slot_name::text, active, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint
                   FROM pg_replication_slots
                  WHERE database = current_database() AND plugin = 'converge' AND slot_name::text ~ $1",
                None,
                &[slot_pattern(&name).into()],
            )
            .map(|t| t.filter_map(|r| Some((r.get::<String>(1).ok()??, r.get::<bool>(2).ok()??, r.get::<i64>(3).ok()??))).collect())
            .unwrap_or_default()
        });
        if lost {
            if slots.iter().any(|s| s.1) {
                let _ = Spi::run_with_args("UPDATE converge.peer_status SET lost_at = NULL WHERE name = $1", &[name.as_str().into()]);
                pgrx::log!("converge: peer \"{name}\" has rejoined (it streams from a new slot here)");
            }
            continue;
        }
        if limit_kb < 0 {
            continue;
        }
        for (slot, active, held) in slots {
            if active || held <= limit_kb * 1024 {
                continue;
            }
            // Dropping fails if the peer started streaming meanwhile: then it is not lost.
            let dropped = crate::apply::subtransaction(|| {
                Spi::run_with_args("SELECT pg_drop_replication_slot($1)", &[slot.as_str().into()]).is_ok()
            })
            .unwrap_or(false);
            if dropped {
                let _ = Spi::run_with_args(
                    "UPDATE converge.peer_status SET lost_at = clock_timestamp(), frontier = NULL WHERE name = $1",
                    &[name.as_str().into()],
                );
                pgrx::log!(
                    "converge: peer \"{name}\" is lost: its slot \"{slot}\" held {held} bytes of WAL (converge.max_peer_lag_bytes = {limit_kb}kB); slot dropped"
                );
            }
        }
    }
}

/// converge.compact's step for the seqtext column `col` of `tbl`: rows with
/// no op of that column left in the log (nor pending) hold only causally
/// stable ops, so their deleted characters that nothing hangs on go. The
/// table is written as converge writes applied ops (the table's rights, no
/// op recorded: each node compacts its own copy). Rows another transaction
/// holds are skipped (compacted next time): compaction never waits on a
/// writer. Returns the rows changed.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn compact_seqtext(tbl: pg_sys::Oid, col: &str) -> i64 {
    let layout = crate::spi::read_one::<pgrx::JsonB>(
        "SELECT jsonb_build_object('name', format('%I.%I', n.nspname, c.relname), 'keys', to_jsonb(r.key_columns))
           FROM converge.replicated r JOIN pg_class c ON c.oid = r.table_name JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE r.table_name = $1::oid::regclass AND r.crdt_columns ->> $2 = 'seqtext'",
        &[tbl.into(), col.into()],
    );
    let Some(pgrx::JsonB(layout)) = layout else { return 0 };
    let name = layout["name"].as_str().unwrap_or_default().to_string();
    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let keys: Vec<String> = layout["keys"].as_array().into_iter().flatten().filter_map(|k| k.as_str()).map(ident).collect();
    let matched = keys.iter().map(|k| format!("t.{k} = b.{k}")).collect::<Vec<_>>().join(" AND ");
    let c = ident(col);
    let sql = format!(
        "WITH busy AS MATERIALIZED (
             SELECT v.* FROM (SELECT l.target_key FROM converge.op_log l
                               WHERE l.outcome = 'applied' AND l.target_table = $1 AND l.target_column = $2
                              UNION
                              SELECT (q.op).target_key FROM converge.pending q WHERE (q.op).target_table = $1) k,
                  LATERAL pg_catalog.jsonb_populate_record(NULL::{name}, k.target_key) v),
         todo AS (SELECT t.ctid AS tid, converge.seqtext_compacted(t.{c}) AS v FROM {name} t
                   WHERE t.{c} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM busy b WHERE {matched})
                     FOR UPDATE OF t SKIP LOCKED)
         UPDATE {name} t SET {c} = todo.v FROM todo WHERE t.ctid = todo.tid AND todo.v IS NOT NULL"
    );
    crate::trigger::set_applying(true);
    let n = crate::security::as_writer(tbl, || {
        Spi::connect_mut(|cl| cl.update(&sql, None, &[name.as_str().into(), col.into()]).map(|t| t.len() as i64))
    });
    crate::trigger::set_applying(false);
    let n = n.unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("compacting {name}.{col}: {e}")));
    // The bases of those rows likewise, so a rebuilt row equals the row.
    Spi::run_with_args(
        "UPDATE converge.row_base b SET state = c.v::bytea
           FROM (SELECT b2.target_key, converge.seqtext_compacted(b2.state::converge.seqtext) AS v FROM converge.row_base b2
                  WHERE b2.target_table = $1 AND b2.target_column = $2
                    AND b2.target_key NOT IN (SELECT l.target_key FROM converge.op_log l
                                               WHERE l.outcome = 'applied' AND l.target_table = $1 AND l.target_column = $2
                                                 AND l.target_key IS NOT NULL
                                              UNION ALL
                                              SELECT (q.op).target_key FROM converge.pending q
                                               WHERE (q.op).target_table = $1 AND (q.op).target_key IS NOT NULL)) c
          WHERE b.target_table = $1 AND b.target_column = $2 AND b.target_key = c.target_key AND c.v IS NOT NULL",
        &[name.as_str().into(), col.into()],
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("compacting the bases of {name}.{col}: {e}")));
    n
}
