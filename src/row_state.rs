//! A row's entry in converge.row_state, read, locked and rewritten
//! directly (index scan, tuple lock, heap update) for the local row op.
//!
//! The two SQL statements this replaced were planned on every call (a
//! generic plan made while row_state is empty stays a sequential scan)
//! and were most of a row op's cost (perf of bench/local_update.sh).
//!
//! The entry is read in its newest committed version and locked as
//! `FOR UPDATE` would in READ COMMITTED, whatever the isolation level:
//! like the op counter, a row's clock is converge's bookkeeping, not data
//! a snapshot should see, and a REPEATABLE READ writer must not fail
//! because an apply moved the clock after its snapshot was taken.

use crate::direct::{attnum, Table};
use crate::errors::raise;
use converge_core::to_text;
use converge_core::types::LwwMap;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use crate::jsonb::Jb;
use pgrx::PgSqlErrorCode;
use serde_json::{Map, Value};

/// A row_state entry this transaction holds locked.
pub struct Locked {
    tid: pg_sys::ItemPointerData,
    pub clock: LwwMap,
    pub stash: Map<String, Value>,
}

/// The entry of `key` (a jsonb datum) of table `rel`, locked; None when
/// the key has none (or it was deleted concurrently).
pub fn lock(t: &Table, rel: pg_sys::Oid, key: pg_sys::Datum) -> Option<Locked> {
    use crate::direct::Key;
    let heap = t.rel();
    unsafe {
        let snap = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let keys = [Key::eq(1, pg_sys::F_OIDEQ.into(), pg_sys::Datum::from(rel)), Key::eq(2, pg_sys::F_JSONB_EQ.into(), key)];
        let mut found = None;
        crate::direct::index_scan(heap, c"row_state_pkey", &keys, snap, pg_sys::ScanDirection::ForwardScanDirection, |slot| {
            found = Some((*slot).tts_tid);
            false
        });
        let mut out = None;
        if let Some(mut tid) = found {
            let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
            let mut tmfd: pg_sys::TM_FailureData = std::mem::zeroed();
            let res = pg_sys::table_tuple_lock(
                heap,
                &mut tid,
                snap,
                slot,
                pg_sys::GetCurrentCommandId(false),
                pg_sys::LockTupleMode::LockTupleExclusive,
                pg_sys::LockWaitPolicy::LockWaitBlock,
                pg_sys::TUPLE_LOCK_FLAG_FIND_LAST_VERSION as u8,
                &mut tmfd,
            );
            match res {
                pg_sys::TM_Result::TM_Ok => out = Some(read(heap, slot, tid)),
                // Deleted meanwhile (compaction of a tombstone): no entry.
                pg_sys::TM_Result::TM_Deleted => {}
                other => raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("locking converge.row_state: result {other}")),
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
        }
        pg_sys::UnregisterSnapshot(snap);
        out
    }
}

unsafe fn read(heap: pg_sys::Relation, slot: *mut pg_sys::TupleTableSlot, tid: pg_sys::ItemPointerData) -> Locked {
    let mut null = false;
    let clock = pg_sys::slot_getattr(slot, attnum(heap, "clock"), &mut null);
    let clock = if null { LwwMap::default() } else { crate::types::from_datum::<LwwMap>(clock) };
    let stash = pg_sys::slot_getattr(slot, attnum(heap, "stash"), &mut null);
    let stash = match (!null).then(|| crate::jsonb::value(stash)) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Locked { tid, clock, stash }
}

/// Write the locked entry back with a new clock, liveness and stash.
pub fn rewrite(t: &mut Table, mut entry: Locked, rel: pg_sys::Oid, key: pg_sys::Datum, clock: &LwwMap, live: bool, stash: Map<String, Value>) {
    t.update(
        &mut entry.tid,
        &[
            ("tbl", Some(pg_sys::Datum::from(rel))),
            ("target_key", Some(key)),
            ("clock", Some(crate::types::to_datum(clock))),
            ("live", live.into_datum()),
            ("stash", Some(crate::jsonb::datum(&Value::Object(stash)))),
        ],
    );
}

/// A key's first entry: an upsert, which waits for (and then overwrites)
/// an entry another transaction is inserting. As converge's owner.
pub fn insert(rel: pg_sys::Oid, key: &Value, clock: &LwwMap, live: bool, stash: Map<String, Value>) {
    let args: Vec<DatumWithOid> =
        vec![rel.into(), Jb(key.clone()).into(), to_text(clock).into(), live.into(), Jb(Value::Object(stash)).into()];
    crate::spi::prepared(
        "INSERT INTO converge.row_state AS s (tbl, target_key, clock, live, stash)
         VALUES ($1::pg_catalog.regclass, $2, $3::converge.lwwmap, $4, $5)
         ON CONFLICT (tbl, target_key) DO UPDATE
            SET clock = EXCLUDED.clock, live = EXCLUDED.live, stash = EXCLUDED.stash",
        &args,
        |_| Ok(()),
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("writing converge.row_state: {e}")));
}
