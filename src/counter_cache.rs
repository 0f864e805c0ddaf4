//! A shared-memory copy of each database's last op counter (when converge
//! is preloaded), so taking a counter reads no index.
//!
//! Only a backend that holds the right to take counters of its database
//! reads or writes its database's entry: the op-counter lock in its
//! exclusive mode, held to the end of the transaction
//! (`local_ops::take_counters`), or at a commit the lock in its shared
//! mode and this database's commit order, an LWLock held until the commit
//! is visible (`local_ops::enter_order`, commit_ops.rs). The two exclude
//! each other. An entry is therefore exact while it is set: a transaction
//! that took counters in the exclusive mode and then aborts (or whose
//! subtransaction aborts) clears it from its abort callback, which runs
//! before its locks are released; a commit in the order writes it only
//! once it is visible (`store`). The next taker reads the log again. A
//! server crash resets shared memory. Without preloading there is no
//! cache, no commit order, and every take reads the log.

use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, PgLwLock};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

const SLOTS: usize = 64;

#[derive(Clone, Copy, Default)]
struct Slot {
    db: u32,
    /// A hash of the node name the counter belongs to (set_node may rename
    /// a node that has not written data).
    actor: u64,
    /// Which log (op_log's oid and file): a recreated extension or a
    /// truncated log starts over.
    log: u64,
    last: i64,
}

#[derive(Clone, Copy)]
pub struct Counters {
    slots: [Slot; SLOTS],
    /// Where the next new database's entry goes (round robin).
    next: usize,
}

impl Default for Counters {
    fn default() -> Self {
        Counters { slots: [Slot::default(); SLOTS], next: 0 }
    }
}

unsafe impl PGRXSharedMemory for Counters {}

static COUNTERS: PgLwLock<Counters> = unsafe { PgLwLock::new(c"converge_op_counters") };
static READY: AtomicBool = AtomicBool::new(false);
/// The order of this node's commits that take counters at PRE_COMMIT
/// (commit_ops.rs): LWLocks, which the next waiter takes as it runs, one
/// per database (of `ORDER_LOCKS`, by its oid).
struct OrderLocks;
const ORDER_LOCKS: u32 = 16;
static ORDER: OrderLocks = OrderLocks;
const ORDER_NAME: &std::ffi::CStr = c"converge_op_order";

impl pgrx::shmem::PgSharedMemoryInitialization for OrderLocks {
    type Value = u64;
    unsafe fn on_shmem_request(&'static self) {
        unsafe { pg_sys::RequestNamedLWLockTranche(ORDER_NAME.as_ptr(), ORDER_LOCKS as i32) };
    }
    unsafe fn on_shmem_startup(&'static self, _value: u64) {}
}

thread_local! {
    /// This backend took counters in the current transaction.
    static TOOK: Cell<bool> = const { Cell::new(false) };
    static HOOKED: Cell<bool> = const { Cell::new(false) };
}

/// From `_PG_init`: reserve the shared memory when preloaded.
#[allow(unexpected_cfgs)] // pg_shmem_init! tests other PostgreSQL versions
pub fn init() {
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(COUNTERS);
        pg_shmem_init!(ORDER);
        READY.store(true, Ordering::Relaxed);
    }
}

fn db() -> u32 {
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

fn actor_hash(actor: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    actor.hash(&mut h);
    h.finish()
}

/// The last counter of `actor` in this database, if known. Call only
/// under the counter lock.
pub fn get(actor: &str, log: u64) -> Option<i64> {
    if !READY.load(Ordering::Relaxed) {
        return None;
    }
    let (d, a) = (db(), actor_hash(actor));
    COUNTERS.share().slots.iter().find(|s| s.db == d && s.actor == a && s.log == log).map(|s| s.last)
}

/// Record `last` as the last counter of `actor` in this database, taken
/// by this transaction. Call only under the counter lock.
pub fn set(actor: &str, log: u64, last: i64) {
    if !READY.load(Ordering::Relaxed) {
        return;
    }
    hook();
    TOOK.with(|t| t.set(true));
    store(actor, log, last);
}

/// Whether converge is preloaded: the cache and the commit order exist.
pub fn ready() -> bool {
    READY.load(Ordering::Relaxed)
}

/// Take this database's commit order (only when `ready`). Held until
/// `leave_order`, or until an abort releases every LWLock.
pub fn enter_order() {
    unsafe { pg_sys::LWLockAcquire(order_lock(), pg_sys::LWLockMode::LW_EXCLUSIVE) };
}

/// Release the commit order taken by `enter_order`. (Held unless
/// something inside the commit released every LWLock, such as a
/// subtransaction that another extension's commit callback rolled back;
/// releasing it again would fail inside the commit.)
pub fn leave_order() {
    unsafe {
        let lock = order_lock();
        if pg_sys::LWLockHeldByMe(lock) {
            pg_sys::LWLockRelease(lock);
        }
    }
}

fn order_lock() -> *mut pg_sys::LWLock {
    unsafe { &raw mut (*pg_sys::GetNamedLWLockTranche(ORDER_NAME.as_ptr()).add((db() % ORDER_LOCKS) as usize)).lock }
}

/// Record `last` as the last counter of `actor` in this database, by a
/// commit that holds the commit order and the counter lock in its shared
/// mode, now visible (nothing to forget on an abort: it has committed).
pub fn store(actor: &str, log: u64, last: i64) {
    let (d, actor) = (db(), actor_hash(actor));
    let mut c = COUNTERS.exclusive();
    if let Some(s) = c.slots.iter_mut().find(|s| s.db == d) {
        *s = Slot { db: d, actor, log, last };
        return;
    }
    let i = c.next;
    c.slots[i] = Slot { db: d, actor, log, last };
    c.next = (i + 1) % SLOTS;
}

/// Drop this database's entry (the next take reads the log). Call only
/// under the counter lock.
pub fn forget_here() {
    if READY.load(Ordering::Relaxed) {
        forget();
    }
}

fn forget() {
    let d = db();
    let mut c = COUNTERS.exclusive();
    if let Some(s) = c.slots.iter_mut().find(|s| s.db == d) {
        *s = Slot::default();
    }
}

fn hook() {
    if HOOKED.with(|h| h.replace(true)) {
        return;
    }
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => TOOK.with(|t| t.set(false)),
        // A prepared transaction may still roll back, from another session.
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            if TOOK.with(|t| t.replace(false)) {
                forget();
            }
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    // Conservative: any aborted subtransaction after a take forgets the
    // entry (the next take reads the log again).
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB && TOOK.with(|t| t.get()) {
        forget();
    }
}
