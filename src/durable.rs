//! Durable commits that do not hold this node's op counter across their
//! WAL flush.
//!
//! A transaction that records ops of this node takes counters under a lock
//! held to its end (local_ops.rs), so that ops commit in counter order. A
//! commit with `synchronous_commit` on would hold that lock across its WAL
//! flush, and every replicated write of the node would wait for the flush
//! of the one before: one commit per flush however many sessions write
//! (measured: 16 clients at the rate of 1, README). So at PRE_COMMIT such a
//! transaction is made to commit asynchronously, which writes its commit
//! record in counter order and releases the lock without waiting; once the
//! lock is released, and before COMMIT returns, it flushes its WAL as the
//! commit would have. Its client hears of the commit only once it is
//! flushed, and concurrent commits share their flushes (group commit).
//!
//! What changes: for the time of that flush, other sessions can see the
//! write before it is durable, as with any asynchronous commit. converge's
//! readers that hand counters out (`frontier`, `changes_since`, `snapshot`)
//! flush what they can see first (`flush_visible`), so no counter a client
//! or peer keeps can be lost in a crash and then given to another op; a
//! query on `converge.op_log` itself can see such an op (docs/replication.md).
//!
//! Left as PostgreSQL does it: `synchronous_commit = off` (nothing to wait
//! for), PREPARE TRANSACTION and COMMIT PREPARED (flushed inside, the lock
//! held), and synchronous standbys (`remote_write` and up with
//! `synchronous_standby_names` set), where the commit waits for them with
//! the lock held.

use pgrx::pg_sys;
use pgrx::prelude::pg_guard;
use std::cell::Cell;

thread_local! {
    /// This transaction took the op-counter lock.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    /// The level its commit was asked for, while converge has made the
    /// commit asynchronous (from PRE_COMMIT to the end of the transaction).
    static WANTED: Cell<Option<i32>> = const { Cell::new(None) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Called where this node's op counter is locked: this transaction's
/// commit releases the lock before its WAL flush, and flushes after.
pub fn flush_after_unlock() {
    if !REGISTERED.get() {
        unsafe {
            pg_sys::RegisterXactCallback(Some(at_commit), std::ptr::null_mut());
            pg_sys::RegisterResourceReleaseCallback(Some(after_release), std::ptr::null_mut());
        }
        REGISTERED.set(true);
    }
    ARMED.set(true);
}

/// PRE_COMMIT, after the deferred triggers (which take the lock) and after
/// every function-level setting is undone, with no statement left to SET
/// anything: the level read here is the one the commit would use. The
/// variable is written directly, not through the GUC stack, so no later
/// restore of the stack can bring the OFF back (the release callback puts
/// the level back before the transaction's settings are unwound).
#[pg_guard]
unsafe extern "C-unwind" fn at_commit(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    if event != pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT || !ARMED.get() {
        return;
    }
    make_async();
}

/// Called at PRE_COMMIT by a commit that has just taken the op counter
/// (commit_ops.rs), whichever of the PRE_COMMIT callbacks runs first.
pub fn flush_after_unlock_now() {
    flush_after_unlock();
    unsafe { make_async() };
}

/// Whether this commit will wait for synchronous standbys (which
/// `make_async` leaves to PostgreSQL, with the counter lock held).
pub fn commit_waits_for_standbys() -> bool {
    let level = unsafe { pg_sys::synchronous_commit };
    level > pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_OFF as i32 && waits_for_standbys(level)
}

/// Make this commit asynchronous (once), remembering the level it wanted.
unsafe fn make_async() {
    if WANTED.get().is_some() {
        return;
    }
    let level = pg_sys::synchronous_commit;
    if level <= pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_OFF as i32 || waits_for_standbys(level) {
        return;
    }
    WANTED.set(Some(level));
    pg_sys::synchronous_commit = pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_OFF as i32;
}

/// Whether a commit at `level` waits for synchronous standbys (this
/// backend's setting; for a reload in flight the callback waits for them
/// after the flush, so the commit is on the standby before COMMIT returns,
/// though visible here a little earlier).
fn waits_for_standbys(level: i32) -> bool {
    unsafe {
        level > pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_LOCAL_FLUSH as i32
            && pg_sys::max_wal_senders > 0
            && !pg_sys::SyncRepStandbyNames.is_null()
            && *pg_sys::SyncRepStandbyNames != 0
    }
}

/// Resource release of the top transaction (commit, abort or prepare),
/// after its locks are released: put the level back and, on a commit made
/// asynchronous here, flush its commit record. The transaction has
/// committed: an ERROR here would become a PANIC, and nothing here raises
/// one (a failed WAL write is a PANIC inside a commit as well).
#[pg_guard]
unsafe extern "C-unwind" fn after_release(phase: pg_sys::ResourceReleasePhase::Type, is_commit: bool, is_top_level: bool, _arg: *mut std::ffi::c_void) {
    if phase != pg_sys::ResourceReleasePhase::RESOURCE_RELEASE_AFTER_LOCKS || !is_top_level {
        return;
    }
    ARMED.set(false);
    let Some(level) = WANTED.take() else { return };
    pg_sys::synchronous_commit = level;
    if is_commit {
        pg_sys::XLogFlush(pg_sys::XactLastCommitEnd);
        // Standbys named by a reload this backend has not read yet: the
        // wait returns at once when none are (PostgreSQL's own check).
        if level > pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_LOCAL_FLUSH as i32 {
            pg_sys::SyncRepWaitForLSN(pg_sys::XactLastCommitEnd, true);
        }
    }
}

/// Flush the WAL of every commit this session can see (readers that give
/// counters out call it first; see the module doc).
pub fn flush_visible() {
    unsafe {
        if !pg_sys::RecoveryInProgress() {
            pg_sys::XLogFlush(last_record_end(pg_sys::GetXLogInsertRecPtr()));
        }
    }
}

/// The end of the last record before insert position `pos`: at the start
/// of a page the position is past the page's header, which is not written
/// yet, and XLogFlush refuses to flush past what was written.
fn last_record_end(pos: u64) -> u64 {
    let long = std::mem::size_of::<pg_sys::XLogLongPageHeaderData>().next_multiple_of(8) as u64;
    let short = std::mem::size_of::<pg_sys::XLogPageHeaderData>().next_multiple_of(8) as u64;
    let segment = unsafe { pg_sys::wal_segment_size } as u64;
    if pos % segment == long {
        pos - long
    } else if pos % pg_sys::XLOG_BLCKSZ as u64 == short {
        pos - short
    } else {
        pos
    }
}

/// `converge.flush_visible()`: internal, for `changes_since`.
#[pgrx::pg_extern(volatile, parallel_restricted, name = "flush_visible")]
pub(crate) fn flush_visible_sql() {
    flush_visible();
}
