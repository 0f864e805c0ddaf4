//! Running for months (SPEC section 6): the merge that compaction folds
//! ops with, and the setting for lost peers (`converge.max_peer_lag_bytes`;
//! the check is replication/lost.rs).
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
        c"Past it the slot is dropped (its WAL freed), the peer no longer holds compaction back, and it rejoins by itself when it returns. A slot PostgreSQL invalidated (max_slot_wal_keep_size) loses its peer whatever this says.",
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
            None => {
                let mut v = v;
                v.as_state();
                acc = Some(v)
            }
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

fn stable_of<T: converge_core::Crdt>(ty: &str, v: &[u8], stable: &[u8]) -> Option<Vec<u8>> {
    let read = |b: &[u8]| {
        converge_core::decode::<T>(b).unwrap_or_else(|e| {
            raise(PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION, format!("not a valid {ty} value: {}", e.message))
        })
    };
    read(v).stable_form(&read(stable)).map(|c| converge_core::encode(&c))
}

/// Internal (converge.compact): `v` (binary form of the converge type `ty`)
/// without the metadata of what `stable` (the merge of its causally stable
/// ops: the row's base) removed and nothing needs any more, or NULL when
/// there is none.
#[pg_extern(immutable, strict, parallel_safe)]
fn stable_form(ty: &str, v: &[u8], stable: &[u8]) -> Option<Vec<u8>> {
    for_crdt_type!(ty, T => stable_of::<T>(ty, v, stable), _ => raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("\"{ty}\" is not a converge type")
    ))
}

fn base_of<T: converge_core::Crdt>(ty: &str, base: &[u8], pending: &[&[u8]]) -> Option<Vec<u8>> {
    let read = |b: &[u8]| {
        converge_core::decode::<T>(b).unwrap_or_else(|e| {
            raise(PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION, format!("not a valid {ty} value: {}", e.message))
        })
    };
    let pending: Vec<T> = pending.iter().map(|p| read(p)).collect();
    read(base).base_form(&pending).map(|c| converge_core::encode(&c))
}

/// Internal (converge.compact): a row's base (binary form of the converge
/// type `ty`) without what its stable ops removed, unless an op still in
/// the log (`pending`: their deltas; NULL when none) would then merge into
/// it differently (converge_core's `base_form`): a removal may be folded
/// before the add it removed, and an op not folded may be taken out by a
/// repair. NULL when the base stays as it is.
#[pg_extern(immutable, parallel_safe)]
fn base_form(ty: Option<&str>, base: Option<&[u8]>, pending: Option<pgrx::Array<&[u8]>>) -> Option<Vec<u8>> {
    // Not STRICT (pending may be NULL): no type or no base, nothing to drop.
    let (ty, base) = (ty?, base?);
    let pending: Vec<&[u8]> = match &pending {
        Some(a) => a.iter().flatten().collect(),
        None => Vec::new(),
    };
    for_crdt_type!(ty, T => base_of::<T>(ty, base, &pending), _ => raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("\"{ty}\" is not a converge type")
    ))
}

/// converge.compact's step for the column `col` (of converge type `ty`:
/// seqtext, orset or mvreg) of `tbl`: each row with a base takes its stable
/// form against it (what the base's ops removed and nothing needs any more
/// goes: seqtext's deleted characters nothing hangs on, the context dots of
/// removed orset elements and overwritten mvreg values), and so does the
/// base. The table is written as converge writes applied ops (the table's
/// rights, no op recorded: each node compacts its own copy). The new
/// values are computed first, without locks; then the rows still as they
/// were and not held by another transaction are locked and written at once
/// (the others wait for the next compaction): compaction never waits on a
/// writer, and holds its row locks only from that last statement to its
/// commit. Returns the rows changed.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn compact_values(tbl: pg_sys::Oid, col: &str, ty: &str) -> i64 {
    let layout = crate::spi::read_one::<pgrx::JsonB>(
        "SELECT jsonb_build_object('name', format('%I.%I', n.nspname, c.relname), 'keys', to_jsonb(r.key_columns))
           FROM converge.replicated r JOIN pg_class c ON c.oid = r.table_name JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE r.table_name = $1::oid::regclass AND r.crdt_columns ->> $2 = $3",
        &[tbl.into(), col.into(), ty.into()],
    );
    let Some(pgrx::JsonB(layout)) = layout else { return 0 };
    let name = layout["name"].as_str().unwrap_or_default().to_string();
    use crate::rows::{ident, keys_match};
    let keys: Vec<String> = layout["keys"].as_array().into_iter().flatten().filter_map(|k| k.as_str()).map(String::from).collect();
    let matched = keys_match(&keys);
    let (c, qty) = (ident(col), ident(ty));
    // An op still waiting here (pending, or kept aside and so perhaps
    // applied later: a replay, a version or freeze set) was not counted
    // by the stability that lets a removal's dots go: it may add a dot a
    // stable removal covered (orset, mvreg, ormap), or be anchored on a
    // deleted character (seqtext). Its row keeps them until it is applied
    // or given up. (A client's op refused client_writes_off can only be
    // refused again while the table stays closed; a frozen op's counter is
    // used up for good.)
    let waiting = "AND NOT EXISTS (SELECT 1 FROM converge.pending_ops q WHERE (q.op).target_table = b.target_table
                            AND (q.op).target_key = b.target_key AND (q.op).target_column = b.target_column)
         AND NOT EXISTS (SELECT 1 FROM converge.quarantine k WHERE k.target_table = b.target_table
                            AND k.target_key = b.target_key AND k.target_column = b.target_column
                            AND k.reason IS DISTINCT FROM 'client_writes_off' AND k.reason IS DISTINCT FROM 'frozen')";
    // 1. As the caller (compact() runs as a superuser or the extension's
    //    owner): converge's bases and the rows, the new values computed
    //    without taking a lock.
    let todo_sql = format!(
        "SELECT t.ctid::text, b.target_key, converge.stable_form($3, t.{c}::bytea, b.state)
           FROM converge.row_base b, LATERAL pg_catalog.jsonb_populate_record(NULL::{name}, b.target_key) v, {name} t
          WHERE b.target_table = $1 AND b.target_column = $2 AND {matched} AND t.{c} IS NOT NULL {waiting}"
    );
    type Todo = (String, pgrx::JsonB, Option<Vec<u8>>);
    let todo: Vec<Todo> = Spi::connect(|cl| {
        cl.select(&todo_sql, None, &[name.as_str().into(), col.into(), ty.into()]).map(|t| {
            t.filter_map(|r| Some((r.get::<String>(1).ok()??, r.get::<pgrx::JsonB>(2).ok()??, r.get::<Vec<u8>>(3).ok()?)))
                .collect()
        })
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("compacting {name}.{col}: {e}")));
    let (change, same): (Vec<Todo>, Vec<Todo>) = todo.into_iter().partition(|t| t.2.is_some());
    // 2. As the table's writer: the rows still as they were (same tuple)
    //    and not held by anyone, locked and written at once.
    let tids: Vec<String> = change.iter().map(|t| t.0.clone()).collect();
    let values: Vec<Vec<u8>> = change.iter().filter_map(|t| t.2.clone()).collect();
    let write_sql = format!(
        "WITH u AS (SELECT * FROM unnest($1::text[], $2::bytea[]) u(tid, v)),
              locked AS (SELECT t.ctid AS tid FROM {name} t JOIN u ON t.ctid = u.tid::tid FOR UPDATE OF t SKIP LOCKED)
         UPDATE {name} t SET {c} = u.v::converge.{qty} FROM locked JOIN u ON u.tid::tid = locked.tid
          WHERE t.ctid = locked.tid RETURNING u.tid"
    );
    crate::trigger::set_applying(true);
    let written: std::collections::HashSet<String> = if tids.is_empty() {
        Default::default()
    } else {
        crate::security::as_writer(tbl, || {
            Spi::connect_mut(|cl| {
                cl.update(&write_sql, None, &[tids.into(), values.into()])
                    .map(|t| t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
            })
        })
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("compacting {name}.{col}: {e}")))
    };
    crate::trigger::set_applying(false);
    let done: Vec<pgrx::JsonB> = change.into_iter().filter(|t| written.contains(&t.0)).map(|t| t.1).collect();
    let same: Vec<pgrx::JsonB> = same.into_iter().map(|t| t.1).collect();
    let n = done.len() as i64;
    // The bases of the rows compacted now or with nothing to drop (not of
    // rows skipped: what their base forgets, they could never drop later),
    // unless an op still in the log would read differently on the
    // compacted base (base_form). A seqtext base only once the row has no
    // op left beyond it: a newer op may hang on a deleted character the
    // base alone would not keep.
    let keys: Vec<pgrx::JsonB> = same.into_iter().chain(done).collect();
    Spi::run_with_args(
        // Materialized: the function must only see states of this column
        // (a planner may test quals of one level in any order).
        "WITH c AS MATERIALIZED (
             SELECT b.ctid AS tid, converge.base_form($3, b.state, p.pending) AS v
               FROM converge.row_base b
               LEFT JOIN (SELECT l.target_key, array_agg(l.delta ORDER BY l.seq) AS pending
                            FROM converge.op_log l
                           WHERE l.outcome = 'applied' AND l.target_table = $1 AND l.target_column = $2
                             AND l.target_key = ANY ($4::jsonb[])
                           GROUP BY l.target_key) p ON p.target_key = b.target_key
              WHERE b.target_table = $1 AND b.target_column = $2 AND b.target_key = ANY ($4::jsonb[])
                AND ($3 <> 'seqtext' OR p.target_key IS NULL))
         UPDATE converge.row_base b SET state = c.v FROM c WHERE b.ctid = c.tid AND c.v IS NOT NULL",
        &[name.as_str().into(), col.into(), ty.into(), keys.into()],
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("compacting the bases of {name}.{col}: {e}")));
    n
}

/// `converge.set_client_writes(tbl, allowed)`: whether ops sent through
/// `converge.apply` (offline clients, anything but a peer's replication)
/// may write `tbl` here. Run on every node alike, by the table's owner,
/// like `replicate`. While they may (the default), compact() keeps the
/// table's row tombstones: a client's late edit of a deleted row must find
/// the tombstone on every node, or the nodes that dropped it would take
/// the edit as a new row and the others would not (docs/operations.md).
/// While they may not, such ops are rejected with `client_writes_off`
/// where they enter, and the tombstones (and seqtext deleted characters)
/// go once stable and once every peer not lost reports the table closed
/// too (`converge.clients_off_at_peers`).
#[pg_extern(volatile, parallel_unsafe)]
fn set_client_writes_on(tbl: Option<pg_sys::Oid>, allowed: Option<bool>) {
    let (Some(tbl), Some(allowed)) = (tbl, allowed) else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "the table and the setting must not be NULL")
    };
    let name = crate::spi::read_one::<String>("SELECT $1::oid::regclass::text", &[tbl.into()])
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, "no such table"));
    if !unsafe { pg_sys::pg_class_ownercheck(tbl, pg_sys::GetUserId()) } {
        raise(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("must be owner of table {name} to set its client writes"));
    }
    // Closing: wait for the transactions writing the table, client
    // applies among them (they lock it as writers do when they find it
    // open, apply/classify.rs), and hold later ones until this commits,
    // so that every client op taken before the switch is committed, and
    // in the frontier peers report with it, and none is taken after.
    // (Not when it is closed already: compact() may hold its setting's
    // row while it waits to write the table.)
    let open = crate::security::as_owner(|| {
        crate::spi::read_one::<bool>("SELECT client_writes FROM converge.replicated WHERE table_name = $1::oid::regclass", &[tbl.into()])
    });
    // As it is: nothing written, nothing locked. (Under REPEATABLE READ
    // the read may predate a switch: the UPDATE below then fails 40001.)
    if open == Some(allowed) && unsafe { pg_sys::XactIsoLevel } < pg_sys::XACT_REPEATABLE_READ as i32 {
        return;
    }
    if !allowed && open == Some(true) {
        unsafe { pg_sys::LockRelationOid(tbl, pg_sys::ShareLock as pg_sys::LOCKMODE) };
    }
    // (Read and written as converge's owner: the caller owns the table,
    // not converge's tables.)
    crate::security::as_owner(|| {
        Spi::get_one_with_args::<bool>(
            "UPDATE converge.replicated r SET client_writes = $2 WHERE r.table_name = $1::oid::regclass RETURNING true",
            &[tbl.into(), allowed.into()],
        )
        .ok()
        .flatten()
    })
    .unwrap_or_else(|| {
        crate::errors::raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {name} is not replicated"),
            "Run converge.replicate on it first.",
        )
    });
    // Sessions cache what the apply reads of a table (apply/target.rs).
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(tbl) };
    // Reopening: whatever compaction dropped while the table was closed,
    // here or at a peer, no client's late edit may find any more.
    if allowed && open == Some(false) {
        pgrx::warning!(
            "row tombstones or deleted characters of {name} may have been dropped, here or at a peer, while clients could not write it: a client's edit of such a row would read differently on nodes with and without them. Open it on every node alike, and let clients that read {name} before start again from converge.snapshot."
        );
    }
}
