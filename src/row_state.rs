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
    let mut probe = Probe::open(t);
    let out = probe.lock(t, rel, key);
    probe.close();
    out
}

/// One scan of row_state's primary key, kept open to lock the entries of
/// many keys in turn (a batch of row ops): opening the index, starting a
/// B-tree scan (a large allocation) and making a slot were paid per key.
pub struct Probe {
    index: pg_sys::Relation,
    scan: pg_sys::IndexScanDesc,
    found: *mut pg_sys::TupleTableSlot,
    locked: *mut pg_sys::TupleTableSlot,
}

impl Probe {
    pub fn open(t: &Table) -> Probe {
        let heap = t.rel();
        unsafe {
            let index = pg_sys::index_open(crate::direct::relid(c"row_state_pkey"), pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            // Each lock sets the scan's snapshot (the newest) before it runs.
            let scan = pg_sys::index_beginscan(heap, index, std::ptr::null_mut(), 2, 0);
            let found = pg_sys::table_slot_create(heap, std::ptr::null_mut());
            let locked = pg_sys::table_slot_create(heap, std::ptr::null_mut());
            Probe { index, scan, found, locked }
        }
    }

    /// As `lock` above, through this scan.
    pub fn lock(&mut self, t: &Table, rel: pg_sys::Oid, key: pg_sys::Datum) -> Option<Locked> {
        let heap = t.rel();
        unsafe {
            let snap = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
            (*self.scan).xs_snapshot = snap;
            let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
            pg_sys::ScanKeyInit(&mut keys[0], 1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_OIDEQ.into(), pg_sys::Datum::from(rel));
            pg_sys::ScanKeyInit(&mut keys[1], 2, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_JSONB_EQ.into(), key);
            pg_sys::index_rescan(self.scan, keys.as_mut_ptr(), 2, std::ptr::null_mut(), 0);
            let found = pg_sys::index_getnext_slot(self.scan, pg_sys::ScanDirection::ForwardScanDirection, self.found)
                .then(|| (*self.found).tts_tid);
            pg_sys::ExecClearTuple(self.found);
            let out = found.and_then(|tid| lock_found(heap, tid, snap, self.locked));
            (*self.scan).xs_snapshot = std::ptr::null_mut();
            pg_sys::UnregisterSnapshot(snap);
            out
        }
    }

    pub fn close(self) {
        unsafe {
            pg_sys::index_endscan(self.scan);
            pg_sys::ExecDropSingleTupleTableSlot(self.found);
            pg_sys::ExecDropSingleTupleTableSlot(self.locked);
            pg_sys::index_close(self.index, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}

/// Lock the entry found at `tid` in its newest version (None when it was
/// deleted meanwhile) and read it.
unsafe fn lock_found(heap: pg_sys::Relation, tid: pg_sys::ItemPointerData, snap: pg_sys::Snapshot, slot: *mut pg_sys::TupleTableSlot) -> Option<Locked> {
    let mut tid = tid;
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
    let out = match res {
        pg_sys::TM_Result::TM_Ok => Some(read(heap, slot, tid)),
        // Deleted meanwhile (compaction of a tombstone): no entry.
        pg_sys::TM_Result::TM_Deleted => None,
        other => raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("locking converge.row_state: result {other}")),
    };
    pg_sys::ExecClearTuple(slot);
    out
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

/// A key's first entry, unless another transaction wrote one first: then
/// (after waiting for it to end) nothing is written and false comes back,
/// and the caller computes again against that entry (`lock` finds it now).
/// Under REPEATABLE READ or SERIALIZABLE, PostgreSQL raises 40001 instead
/// when that entry is newer than the snapshot (as the upsert did).
/// An upsert that overwrote it lost that transaction's clock on this node
/// only: two first writers of a key (a local insert and an applied delete,
/// two workers applying two peers' ops) left nodes with different rows.
pub fn try_insert(rel: pg_sys::Oid, key: &Value, clock: &LwwMap, live: bool, stash: Map<String, Value>) -> bool {
    let args: Vec<DatumWithOid> =
        vec![rel.into(), Jb(key.clone()).into(), to_text(clock).into(), live.into(), Jb(Value::Object(stash)).into()];
    crate::security::as_owner_id(|| {
        crate::spi::prepared(
            "INSERT INTO converge.row_state AS s (tbl, target_key, clock, live, stash)
             VALUES ($1::pg_catalog.regclass, $2, $3::converge.lwwmap, $4, $5)
             ON CONFLICT (tbl, target_key) DO NOTHING",
            &args,
            |t| Ok(t.len() == 1),
        )
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("writing converge.row_state: {e}")))
}

/// The newest clock of the row tombstones of table `rel` that compaction
/// dropped (`converge.replicated.tombstone_clock`), as the latest commits
/// say: a local write of a key with no entry writes newer than it, as it
/// would have written newer than its tombstone (compact() in
/// sql/maintenance.sql). Read only for such keys.
pub fn dropped_floor(rel: pg_sys::Oid) -> Option<LwwMap> {
    use crate::direct::column;
    // (A stored lwwmap, read as the column holds it.)
    latest_layout(rel, |heap, slot| column(slot, attnum(heap, "tombstone_clock")).map(|d| unsafe { crate::types::from_datum::<LwwMap>(d) })).flatten()
}

/// Table `rel`'s layout (key, CRDT and other columns) as the latest
/// commits say, whatever this transaction's snapshot sees; None when the
/// table is not replicated.
pub fn layout_now(rel: pg_sys::Oid) -> Option<(Vec<String>, Value, Vec<String>)> {
    use crate::direct::column;
    latest_layout(rel, |heap, slot| unsafe {
        let names = |att: &str| column(slot, attnum(heap, att)).and_then(|d| Vec::<String>::from_datum(d, false)).unwrap_or_default();
        let crdt = column(slot, attnum(heap, "crdt_columns")).map(|d| crate::jsonb::value(d)).unwrap_or(Value::Null);
        (names("key_columns"), crdt, names("other_columns"))
    })
}

/// `read` of table `rel`'s row of converge.replicated in its newest
/// committed version (direct index scan, latest snapshot); None without one.
fn latest_layout<R>(rel: pg_sys::Oid, read: impl FnOnce(pg_sys::Relation, *mut pg_sys::TupleTableSlot) -> R) -> Option<R> {
    use crate::direct::{index_scan, reading, Key};
    let mut read = Some(read);
    let mut out = None;
    reading(c"replicated", |heap| unsafe {
        let snap = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let keys = [Key::eq(1, pg_sys::F_OIDEQ.into(), pg_sys::Datum::from(rel))];
        index_scan(heap, c"replicated_pkey", &keys, snap, pg_sys::ScanDirection::ForwardScanDirection, |slot| {
            out = read.take().map(|f| f(heap, slot));
            false
        });
        pg_sys::UnregisterSnapshot(snap);
    });
    out
}
