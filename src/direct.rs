//! Writing converge's own tables without SQL, for the path every write
//! takes (the op trigger's op rows).
//!
//! Why: a planned statement through SPI costs tens of microseconds (plan
//! cache revalidation, executor start for a ModifyTable, a search_path
//! switch to run it as converge's owner), which is more than the user's own
//! UPDATE. These rows are converge's, their values are built here, and
//! the tables have no triggers, no rules and no expression defaults that
//! matter, so they are written the way PostgreSQL's logical replication
//! apply writes rows: a heap insert and its index entries,
//! under the same locks. No ACL or RLS check is made: the caller is
//! converge itself, acting for a user the trigger already checked.
//!
//! Column values are given by name, so a table that gained a column in an
//! update script still gets every value in its place (missing ones NULL).
//! Not run here: column defaults, CHECK and NOT NULL constraints, triggers
//! and rules. A column added to op_log must be nullable or filled by the
//! writers here (local_ops, apply's insert_applied).

use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::ffi::CStr;

thread_local! {
    /// Oids of converge's tables by name, dropped on any relcache reset
    /// or invalidation of one of them (DROP EXTENSION, ALTER ...).
    static OIDS: std::cell::RefCell<Vec<(&'static CStr, pg_sys::Oid)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Called by the trigger's relcache callback.
pub fn forget_oid(relid: pg_sys::Oid) {
    OIDS.with(|o| o.borrow_mut().retain(|(_, oid)| relid != pg_sys::InvalidOid && *oid != relid));
}

unsafe extern "C-unwind" {
    // commands/sequence.h; not in pgrx's bindings.
    fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// The next value of converge's sequence `seq`. The right to use it is
/// not checked: only converge's own writes call this (what nextval's
/// check would ask of the caller, they needed converge's owner for).
pub(crate) fn nextval(seq: pg_sys::Oid) -> i64 {
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| nextval_internal(seq, false)) }
}

/// The oid of `converge.<name>`, or an error saying it is missing.
pub fn relid(name: &'static CStr) -> pg_sys::Oid {
    if let Some(oid) = OIDS.with(|o| o.borrow().iter().find(|(n, _)| *n == name).map(|(_, oid)| *oid)) {
        return oid;
    }
    crate::trigger::watch_relcache();
    let oid = lookup(name);
    OIDS.with(|o| o.borrow_mut().push((name, oid)));
    oid
}

fn lookup(name: &CStr) -> pg_sys::Oid {
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"converge".as_ptr(), false);
        let oid = pg_sys::get_relname_relid(name.as_ptr(), ns);
        if oid == pg_sys::InvalidOid {
            raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, format!("converge.{} is missing", name.to_string_lossy()));
        }
        oid
    }
}

/// One of converge's tables opened for writing, with its indexes.
pub struct Table {
    rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    names: Vec<String>,
}

impl Table {
    pub fn open(name: &'static CStr) -> Table {
        unsafe {
            let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
            let rel = pg_sys::table_open(relid(name), lock);
            let estate = pg_sys::CreateExecutorState();
            let mut rte = PgBox::<pg_sys::RangeTblEntry>::alloc_node(pg_sys::NodeTag::T_RangeTblEntry);
            rte.rtekind = pg_sys::RTEKind::RTE_RELATION;
            rte.relid = (*rel).rd_id;
            rte.relkind = (*(*rel).rd_rel).relkind;
            rte.rellockmode = lock;
            let mut rtes = pgrx::PgList::<pg_sys::RangeTblEntry>::new();
            rtes.push(rte.into_pg());
            pg_sys::ExecInitRangeTable(estate, rtes.into_pg());
            let rri = PgBox::<pg_sys::ResultRelInfo>::alloc_node(pg_sys::NodeTag::T_ResultRelInfo).into_pg();
            pg_sys::InitResultRelInfo(rri, rel, 1, std::ptr::null_mut(), 0);
            (*estate).es_output_cid = pg_sys::GetCurrentCommandId(true);
            pg_sys::ExecOpenIndices(rri, false);
            let desc = (*rel).rd_att;
            let slot = pg_sys::ExecInitExtraTupleSlot(estate, desc, &pg_sys::TTSOpsHeapTuple);
            let natts = (*desc).natts as usize;
            let names = (*desc)
                .attrs
                .as_slice(natts)
                .iter()
                .map(|a| if a.attisdropped { String::new() } else { pgrx::name_data_to_str(&a.attname).to_string() })
                .collect();
            Table { rel, estate, rri, slot, names }
        }
    }

    /// A tuple of this table from (column, value) pairs; columns not named are NULL.
    fn form(&self, values: &[(&str, Option<pg_sys::Datum>)]) -> pg_sys::HeapTuple {
        let at = self.positions(values.iter().map(|(name, _)| *name));
        let values: Vec<Option<pg_sys::Datum>> = values.iter().map(|(_, v)| *v).collect();
        self.form_at(&at, &values)
    }

    /// Where each named column is in the table's tuples.
    fn positions<'n>(&self, names: impl Iterator<Item = &'n str>) -> Vec<usize> {
        names
            .map(|name| {
                self.names.iter().position(|c| c == name).unwrap_or_else(|| {
                    raise(PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN, format!("converge table lacks column {name}"))
                })
            })
            .collect()
    }

    /// A tuple from the values of the columns at positions `at`.
    fn form_at(&self, at: &[usize], values: &[Option<pg_sys::Datum>]) -> pg_sys::HeapTuple {
        let n = self.names.len();
        let mut datums = vec![pg_sys::Datum::from(0usize); n];
        let mut nulls = vec![true; n];
        for (&i, v) in at.iter().zip(values) {
            if let Some(d) = v {
                datums[i] = *d;
                nulls[i] = false;
            }
        }
        unsafe { pg_sys::heap_form_tuple((*self.rel).rd_att, datums.as_mut_ptr(), nulls.as_mut_ptr()) }
    }

    /// Insert one row and its index entries (unique indexes are enforced).
    pub fn insert(&mut self, values: &[(&str, Option<pg_sys::Datum>)]) {
        let tuple = self.form(values);
        unsafe {
            pg_sys::ExecStoreHeapTuple(tuple, self.slot, false);
            pg_sys::simple_table_tuple_insert(self.rel, self.slot);
            self.index(false);
        }
    }

    /// Insert many rows, each the values of the columns `names` in order:
    /// the heap takes them a page at a time (one WAL record per page, as
    /// COPY does), then each gets its index entries (unique indexes are
    /// enforced, as by `insert`).
    pub fn insert_many(&mut self, names: &[&str], rows: &[Vec<Option<pg_sys::Datum>>]) {
        const CHUNK: usize = 256;
        let at = self.positions(names.iter().copied());
        unsafe {
            let desc = (*self.rel).rd_att;
            let mut slots: Vec<*mut pg_sys::TupleTableSlot> = (0..rows.len().min(CHUNK))
                .map(|_| pg_sys::ExecInitExtraTupleSlot(self.estate, desc, &pg_sys::TTSOpsHeapTuple))
                .collect();
            let cid = (*self.estate).es_output_cid;
            for chunk in rows.chunks(CHUNK) {
                for (slot, row) in slots.iter().zip(chunk) {
                    pg_sys::ExecStoreHeapTuple(self.form_at(&at, row), *slot, true);
                }
                // Through the table's access method, as every other write here.
                pg_sys::table_multi_insert(self.rel, slots.as_mut_ptr(), chunk.len() as i32, cid, 0, std::ptr::null_mut());
                for &slot in &slots[..chunk.len()] {
                    self.slot_index(slot, false);
                }
            }
        }
    }

    /// Replace the row at `tid` (which this transaction holds locked) by
    /// `values`; new index entries unless the update was HOT.
    /// Every column must be named: a column left out would become NULL.
    pub fn update(&mut self, tid: &mut pg_sys::ItemPointerData, values: &[(&str, Option<pg_sys::Datum>)]) {
        if let Some(missing) = self.names.iter().find(|n| !n.is_empty() && !values.iter().any(|(v, _)| v == n)) {
            raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("converge: an update of a row leaves out column {missing}"));
        }
        let tuple = self.form(values);
        unsafe {
            pg_sys::ExecStoreHeapTuple(tuple, self.slot, false);
            let mut new_index_entries = false;
            // heapam reads no snapshot here; pass the active one if any.
            let snap = if pg_sys::ActiveSnapshotSet() { pg_sys::GetActiveSnapshot() } else { std::ptr::null_mut() };
            pg_sys::simple_table_tuple_update(self.rel, tid, self.slot, snap, &mut new_index_entries);
            if new_index_entries {
                self.index(true);
            }
        }
    }

    pub fn rel(&self) -> pg_sys::Relation {
        self.rel
    }

    unsafe fn index(&mut self, update: bool) {
        self.slot_index(self.slot, update);
    }

    unsafe fn slot_index(&mut self, slot: *mut pg_sys::TupleTableSlot, update: bool) {
        if (*self.rri).ri_NumIndices > 0 {
            let found = pg_sys::ExecInsertIndexTuples(
                self.rri,
                slot,
                self.estate,
                update,
                false,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            pg_sys::list_free(found);
        }
        let econtext = (*self.estate).es_per_tuple_exprcontext;
        if !econtext.is_null() {
            pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
        }
    }

    /// Close the indexes and the table (locks are kept to the transaction's
    /// end), and make the rows visible to the rest of the transaction.
    pub fn close(self) {
        unsafe {
            pg_sys::ExecCloseIndices(self.rri);
            pg_sys::ExecResetTupleTable((*self.estate).es_tupleTable, false);
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            pg_sys::CommandCounterIncrement();
        }
    }
}

pub fn text(s: &str) -> Option<pg_sys::Datum> {
    s.into_datum()
}

pub fn int8(v: i64) -> Option<pg_sys::Datum> {
    Some(pg_sys::Datum::from(v))
}

pub fn int4(v: i32) -> Option<pg_sys::Datum> {
    Some(pg_sys::Datum::from(v))
}

/// The attribute number of column `name` of `rel` (an error if missing).
pub fn attnum(rel: pg_sys::Relation, name: &str) -> i32 {
    unsafe {
        let desc = (*rel).rd_att;
        (*desc)
            .attrs
            .as_slice((*desc).natts as usize)
            .iter()
            .position(|a| !a.attisdropped && pgrx::name_data_to_str(&a.attname) == name)
            .map(|i| i as i32 + 1)
            .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN, format!("converge table lacks column {name}")))
    }
}

/// Appends applied ops to converge.op_log: the caller gives the envelope,
/// this adds what every applied op row has (its place in the log's
/// sequence, the outcome, the transaction's time). Local ops and applied
/// batches both write through it.
pub struct OpLog {
    table: Table,
    seq: pg_sys::Oid,
    now: Option<pg_sys::Datum>,
}

impl OpLog {
    pub fn open() -> OpLog {
        let now = Some(pg_sys::Datum::from(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }));
        OpLog { table: Table::open(c"op_log"), seq: relid(c"op_log_seq_seq"), now }
    }

    /// Take now what the first `append` of a transaction would wait for:
    /// the sequence's lock (for a caller about to hold a lock that no one
    /// may wait behind).
    pub fn prepare(&self) {
        unsafe { pg_sys::LockRelationOid(self.seq, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
    }

    /// One applied op; `envelope` names op_id, actor, counter, target_*,
    /// schema_version, epoch, deps, delta, signature and origin.
    pub fn append(&mut self, envelope: &[(&str, Option<pg_sys::Datum>)]) {
        let mut row: Vec<(&str, Option<pg_sys::Datum>)> = Self::HEAD.into_iter().zip(self.head()).collect();
        row.extend_from_slice(envelope);
        self.table.insert(&row);
    }

    /// Many applied ops at once: each envelope gives the values of the
    /// columns `names`, in order.
    pub fn append_all(&mut self, names: &[&str], envelopes: impl Iterator<Item = Vec<Option<pg_sys::Datum>>>) {
        let names: Vec<&str> = Self::HEAD.into_iter().chain(names.iter().copied()).collect();
        let rows: Vec<Vec<Option<pg_sys::Datum>>> = envelopes.map(|e| self.head().into_iter().chain(e).collect()).collect();
        self.table.insert_many(&names, &rows);
    }

    /// The columns every applied op row has besides its envelope.
    const HEAD: [&'static str; 3] = ["seq", "outcome", "received_at"];

    fn head(&self) -> [Option<pg_sys::Datum>; 3] {
        [self.next_seq(), text("applied"), self.now]
    }

    /// The row's place in the log: nextval of its sequence (callers need
    /// no right on the sequence).
    fn next_seq(&self) -> Option<pg_sys::Datum> {
        int8(nextval(self.seq))
    }

    pub fn close(self) {
        self.table.close();
    }
}

/// A condition on column `attno` (1-based) of an index: compared by
/// `strategy` (a btree strategy number) with the function `proc`.
pub struct Key {
    pub attno: i16,
    pub strategy: u32,
    pub proc: pg_sys::RegProcedure,
    pub value: pg_sys::Datum,
}

impl Key {
    pub fn eq(attno: i16, proc: pg_sys::RegProcedure, value: pg_sys::Datum) -> Key {
        Key { attno, strategy: pg_sys::BTEqualStrategyNumber, proc, value }
    }
}

/// Visit the rows of `heap` that `index` (of converge's) finds for `keys`,
/// in `direction`, as `snapshot` sees them: `visit` gets each row in a slot
/// (valid during the call) and says whether to go on. The one index scan
/// behind every direct read (the op counter, the dedupe probes, row_state,
/// the actor registry).
pub fn index_scan(
    heap: pg_sys::Relation,
    index: &'static CStr,
    keys: &[Key],
    snapshot: pg_sys::Snapshot,
    direction: pg_sys::ScanDirection::Type,
    mut visit: impl FnMut(*mut pg_sys::TupleTableSlot) -> bool,
) {
    unsafe {
        let idx = pg_sys::index_open(relid(index), pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let mut sk: Vec<pg_sys::ScanKeyData> = keys
            .iter()
            .map(|k| {
                let mut s: pg_sys::ScanKeyData = std::mem::zeroed();
                pg_sys::ScanKeyInit(&mut s, k.attno, k.strategy as u16, k.proc, k.value);
                // Compare as the index sorts (its collation), or the descent can miss.
                let coll = *(*idx).rd_indcollation.add(k.attno as usize - 1);
                if coll != pg_sys::InvalidOid {
                    s.sk_collation = coll;
                }
                s
            })
            .collect();
        let n = sk.len() as i32;
        let scan = pg_sys::index_beginscan(heap, idx, snapshot, n, 0);
        pg_sys::index_rescan(scan, sk.as_mut_ptr(), n, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        while pg_sys::index_getnext_slot(scan, direction, slot) {
            if !visit(slot) {
                break;
            }
        }
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_close(idx, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
}

/// `table` opened for reading, for `f`.
pub fn reading<R>(table: &'static CStr, f: impl FnOnce(pg_sys::Relation) -> R) -> R {
    unsafe {
        let heap = pg_sys::table_open(relid(table), pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let r = f(heap);
        pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        r
    }
}

/// Whether `index` of `table` holds a row, committed or this transaction's
/// own (SnapshotSelf), whose first column equals `first` (compared with the
/// equality function `eq`), or any row at all without `first`. A probe
/// with no statement, for checks the apply makes on every batch.
pub fn any_row(table: &'static CStr, index: &'static CStr, first: Option<(pg_sys::Datum, pg_sys::RegProcedure)>) -> bool {
    let keys: Vec<Key> = first.map(|(value, eq)| Key::eq(1, eq, value)).into_iter().collect();
    let mut found = false;
    reading(table, |heap| {
        let newest = &raw mut pg_sys::SnapshotSelfData;
        index_scan(heap, index, &keys, newest, pg_sys::ScanDirection::ForwardScanDirection, |_| {
            found = true;
            false
        })
    });
    found
}

/// The value of column `att` in a row read by `index_scan`.
pub fn column(slot: *mut pg_sys::TupleTableSlot, att: i32) -> Option<pg_sys::Datum> {
    let mut isnull = false;
    let d = unsafe { pg_sys::slot_getattr(slot, att, &mut isnull) };
    (!isnull).then_some(d)
}

/// The newest version of the row whose version `tid` of table `rel` this
/// transaction wrote (its later updates followed), or None when it has
/// deleted it since. Read directly: no statement, no privilege.
pub fn newest_version(rel: pg_sys::Oid, tid: pg_sys::ItemPointerData) -> Option<pg_sys::ItemPointerData> {
    unsafe {
        // Make this command's own writes (an immediate trigger's insert)
        // visible to the snapshot below, as every earlier command's are.
        pg_sys::CommandCounterIncrement();
        let r = pg_sys::table_open(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let snap = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let mut tid = tid;
        let scan = pg_sys::table_beginscan_tid(r, snap);
        pg_sys::table_tuple_get_latest_tid(scan, &mut tid);
        pg_sys::table_endscan(scan);
        let slot = pg_sys::table_slot_create(r, std::ptr::null_mut());
        let found = pg_sys::table_tuple_fetch_row_version(r, &mut tid, snap, slot);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::UnregisterSnapshot(snap);
        pg_sys::table_close(r, pg_sys::NoLock as pg_sys::LOCKMODE);
        found.then_some(tid)
    }
}
