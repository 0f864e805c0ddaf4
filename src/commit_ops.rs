//! This node's ops that its triggers record wait for the transaction's
//! commit, and take their counters there.
//!
//! Ops commit in counter order (local_ops.rs), so a transaction holds the
//! order from the moment it takes counters until its commit is visible,
//! and every other writer of the node waits. Taking them in the first
//! deferred trigger that fired held the order across the rest of the
//! commit's triggers (the user's among them), through PostgreSQL's
//! heavyweight lock, which hands the lock to the next waiter while that
//! waiter still has to be scheduled: at 8 clients on 2 cores replicated
//! writes ran at a fifth of the plain update's rate (README, Benchmarks).
//!
//! So a small transaction's ops wait here (their keys copied into the
//! transaction's memory) and at PRE_COMMIT, after every trigger, take
//! consecutive counters and enter the log in the order they were recorded.
//! When converge is preloaded the order is then held by
//! `local_ops::enter_order`: the counter lock in a mode that only the
//! takers in mid-transaction conflict with, taken first so that every
//! wait for it is one the deadlock detector sees; the log opened; then a
//! per-database LWLock, which waiters take as they run, held until the
//! commit is visible (XACT_EVENT_COMMIT). Inside it: the log's inserts and
//! the rest of the commit. The heavyweight path (the counter lock in its
//! exclusive mode, as in mid-transaction) serves the rest: a transaction
//! with more than `AT_ONCE_AFTER` ops, or that took a counter in
//! mid-transaction, writes its ops as they are recorded from then on (its
//! memory stays flat and it can be cancelled); and PREPARE TRANSACTION, a
//! commit that waits for synchronous standbys, or a server where converge
//! is not preloaded take the exclusive lock at the commit.
//!
//! Subtransactions: an op recorded in a subtransaction that rolls back is
//! dropped; one written to the log inside a subtransaction younger than
//! the one that recorded it (a control op in a savepoint writes what
//! waits) is kept, and waits again if that subtransaction rolls back.

use crate::direct::OpLog;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::{Cell, RefCell};

/// Ops of a transaction past which they are written as they are recorded.
const AT_ONCE_AFTER: usize = 64;

/// One row change's ops, waiting for the commit.
struct Waiting {
    /// The subtransaction that recorded them.
    sub: pg_sys::SubTransactionId,
    /// The subtransaction that wrote them to the log, if one has.
    written: Option<pg_sys::SubTransactionId>,
    me: String,
    table: String,
    /// The key as a jsonb datum in the transaction's memory.
    key: pg_sys::Datum,
    cols: Vec<String>,
    versions: Vec<i32>,
    epoch: i64,
    deltas: Vec<Vec<u8>>,
}

thread_local! {
    static WAITING: RefCell<Vec<Waiting>> = const { RefCell::new(Vec::new()) };
    /// This transaction writes its ops as they are recorded.
    static AT_ONCE: Cell<bool> = const { Cell::new(false) };
    static HOOKED: Cell<bool> = const { Cell::new(false) };
    /// Tables and authority columns this transaction wrote as their holder
    /// (`note_held`), each with the subtransaction that wrote it.
    static HELD: RefCell<Vec<(pg_sys::SubTransactionId, String, String)>> = const { RefCell::new(Vec::new()) };
}

/// This transaction writes authority columns `cols` of `table` as their
/// holder. A handover of them may commit before this transaction takes its
/// counters (its snapshot, or its layout, older than the handover): the
/// counters would then fall after the holder's term, and every other node
/// would reject the writes this node keeps. So they are checked again
/// once the counters are this transaction's to take (`check_held`).
pub fn note_held(table: &str, cols: &[&str]) {
    hook();
    let sub = current_sub();
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        for c in cols {
            if !h.iter().any(|(s, t, k)| *s == sub && t == table && k == c) {
                h.push((sub, table.to_string(), c.to_string()));
            }
        }
    });
}

/// Raise 40001 if this node no longer holds a column `note_held` noted,
/// as the latest commits say. Called holding the op counter (or the commit
/// order's lock mode), which a handover takes until its commit is visible.
/// The notes stay until the transaction ends: a counter lock taken in a
/// savepoint that rolls back is released, and the commit checks again.
pub(crate) fn check_held() {
    let mut held: Vec<(String, Vec<String>)> = Vec::new();
    for (_, table, column) in HELD.with(|h| h.borrow().clone()) {
        match held.iter_mut().find(|(t, _)| *t == table) {
            Some((_, cols)) if cols.contains(&column) => {}
            Some((_, cols)) => cols.push(column),
            None => held.push((table, vec![column])),
        }
    }
    if held.is_empty() {
        return;
    }
    let me = crate::node::local_node();
    const SQL: &str = "SELECT c FROM pg_catalog.unnest($2) c WHERE NOT EXISTS (
        SELECT FROM converge.authority a WHERE a.table_name = pg_catalog.to_regclass($1) AND a.column_name OPERATOR(pg_catalog.=) c
           AND a.node OPERATOR(pg_catalog.=) $3 AND a.since IS NOT NULL)";
    for (table, cols) in held {
        let text = |s: &str| (pg_sys::TEXTOID, s.into_datum().expect("text"));
        let args = [text(&table), (pg_sys::TEXTARRAYOID, cols.into_datum().expect("text[]")), text(&me)];
        if let Some(c) = crate::security::as_owner(|| crate::spi::read_latest_text(SQL, &args)) {
            let what = if c.is_empty() { format!("table {table}") } else { format!("column \"{c}\" of {table}") };
            crate::errors::raise_hint(
                PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                format!("the authority of {what} moved to another node while this transaction wrote it"),
                "Retry the transaction: the node that holds it now decides it.",
            );
        }
    }
}

fn current_sub() -> pg_sys::SubTransactionId {
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

/// Record the ops of one row change of this node for the commit: one op
/// per changed column, each with its column's schema version. `key` is
/// the row's key as a jsonb datum.
pub fn record(me: &str, table: &str, key: pg_sys::Datum, cols: &[String], versions: &[i32], epoch: i64, deltas: Vec<Vec<u8>>) {
    hook();
    let key = unsafe {
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopTransactionContext);
        let copy = pg_sys::Datum::from(pg_sys::pg_detoast_datum_copy(key.cast_mut_ptr()));
        pg_sys::MemoryContextSwitchTo(old);
        copy
    };
    let w = Waiting {
        sub: current_sub(),
        written: None,
        me: me.to_string(),
        table: table.to_string(),
        key,
        cols: cols.to_vec(),
        versions: versions.to_vec(),
        epoch,
        deltas,
    };
    let many = WAITING.with(|q| {
        let mut q = q.borrow_mut();
        q.push(w);
        q.iter().filter(|w| w.written.is_none()).count() > AT_ONCE_AFTER
    });
    if many || AT_ONCE.get() {
        crate::local_ops::hold_counter();
        write_now();
    }
}

/// Write the ops still waiting, with counters taken under the counter
/// lock in its exclusive mode (the caller holds it; this transaction keeps
/// it to its end), and write later ones as they are recorded.
pub fn write_now() {
    hook();
    AT_ONCE.set(true);
    // The list goes back even if an error (caught by a savepoint) stops
    // the writing: ops of the outer transaction must not be lost with it.
    struct Back(Vec<Waiting>);
    impl Drop for Back {
        fn drop(&mut self) {
            let mut waiting = std::mem::take(&mut self.0);
            // Written where they were recorded: a rollback takes both away.
            waiting.retain(|w| w.written != Some(w.sub));
            WAITING.with(|q| q.borrow_mut().extend(waiting));
        }
    }
    let mut back = Back(WAITING.with(|q| std::mem::take(&mut *q.borrow_mut())));
    if back.0.iter().any(|w| w.written.is_none()) {
        // (Every caller holds the counter lock.)
        check_held();
        let now = current_sub();
        let mut log = OpLog::open();
        for w in back.0.iter_mut().filter(|w| w.written.is_none()) {
            append(&mut log, w, crate::local_ops::take_counters);
            w.written = Some(now);
        }
        log.close();
    }
}

/// At PRE_COMMIT: the waiting ops take their counters, in one stretch of
/// the order, and enter the log.
fn write_at_commit() {
    let waiting: Vec<Waiting> = WAITING.with(|q| std::mem::take(&mut *q.borrow_mut())).into_iter().filter(|w| w.written.is_none()).collect();
    if waiting.is_empty() {
        return;
    }
    let ordered = !AT_ONCE.get() && !crate::durable::commit_waits_for_standbys() && crate::local_ops::enter_order();
    if !ordered {
        crate::local_ops::hold_counter();
    }
    check_held();
    // The log, its indexes and sequence are locked before the order's
    // LWLock (no wait inside it is one the deadlock detector sees).
    let mut log = OpLog::open();
    if ordered {
        log.prepare();
        crate::local_ops::take_order();
    }
    let take: fn(&str, i64) -> i64 = if ordered { crate::local_ops::next_in_order } else { crate::local_ops::take_counters };
    for w in &waiting {
        append(&mut log, w, take);
    }
    log.close();
    // The commit's WAL flush waits for neither lock (durable.rs).
    crate::durable::flush_after_unlock_now();
}

/// Log `w`'s ops with consecutive counters, the last of which
/// `take(actor, count)` gives.
fn append(log: &mut OpLog, w: &Waiting, take: fn(&str, i64) -> i64) {
    let n = w.cols.len() as i64;
    let last = take(&w.me, n);
    for (i, ((col, delta), version)) in w.cols.iter().zip(&w.deltas).zip(&w.versions).enumerate() {
        let counter = last - n + 1 + i as i64;
        crate::local_ops::append_local(log, &w.me, counter, &w.table, w.key, col, *version, w.epoch, delta);
    }
}

/// Run `f` with an active snapshot: a COMMIT statement has none, and the
/// first lookups of a session read the catalog through SPI.
fn with_snapshot(f: impl FnOnce()) {
    let push = unsafe { !pg_sys::ActiveSnapshotSet() };
    if push {
        unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    }
    f();
    if push {
        unsafe { pg_sys::PopActiveSnapshot() };
    }
}

fn hook() {
    if HOOKED.replace(true) {
        return;
    }
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

/// The transaction is over: nothing of it may wait on.
fn reset() {
    AT_ONCE.set(false);
    HELD.with(|h| h.borrow_mut().clear());
    let left = WAITING.with(|q| std::mem::take(&mut *q.borrow_mut()));
    let lost = left.iter().filter(|w| w.written.is_none()).count();
    if lost > 0 {
        pgrx::warning!("converge: {lost} row changes recorded after the commit began were not logged");
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => with_snapshot(write_at_commit),
        // Held to COMMIT PREPARED, from another session: the heavyweight lock.
        XACT_EVENT_PRE_PREPARE => {
            if WAITING.with(|q| q.borrow().iter().any(|w| w.written.is_none())) {
                with_snapshot(|| {
                    crate::local_ops::hold_counter();
                    write_now();
                });
            }
        }
        XACT_EVENT_COMMIT => {
            crate::local_ops::leave_order(true);
            reset();
        }
        XACT_EVENT_PREPARE => reset(),
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            WAITING.with(|q| q.borrow_mut().clear());
            HELD.with(|h| h.borrow_mut().clear());
            AT_ONCE.set(false);
            crate::local_ops::leave_order(false);
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    // What a rolled-back subtransaction wrote is not written: nothing to
    // check again for it (`note_held`).
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        match event {
            SUBXACT_EVENT_ABORT_SUB => h.retain(|(s, _, _)| *s != sub),
            SUBXACT_EVENT_COMMIT_SUB => h.iter_mut().filter(|(s, _, _)| *s == sub).for_each(|(s, _, _)| *s = parent),
            _ => {}
        }
    });
    WAITING.with(|q| {
        let mut q = q.borrow_mut();
        match event {
            SUBXACT_EVENT_ABORT_SUB => {
                q.retain(|w| w.sub != sub);
                q.iter_mut().filter(|w| w.written == Some(sub)).for_each(|w| w.written = None);
            }
            SUBXACT_EVENT_COMMIT_SUB => {
                for w in q.iter_mut() {
                    if w.sub == sub {
                        w.sub = parent;
                    }
                    if w.written == Some(sub) {
                        w.written = Some(parent);
                    }
                }
                q.retain(|w| w.written != Some(w.sub));
            }
            _ => {}
        }
    });
}
