//! Recording this node's own ops: the op counter and the op rows.
//!
//! The counter is the highest counter of this node's ops in the log.
//! Taking counters holds a converge-private lock tag until the transaction
//! ends (in mid-transaction, `take_counters`: its exclusive mode; at a
//! commit, `enter_order`: its shared mode and the database's commit order
//! until the commit is visible), so this node's ops commit in counter
//! order and its counters have no gaps (a rolled-back transaction gives
//! its counters back). The ops of row changes wait for the commit
//! (commit_ops.rs). Inside the lock the log is read with SnapshotSelf
//! (every committed row and this transaction's own), so a REPEATABLE READ
//! or SERIALIZABLE transaction never fails on it: the counter is not data
//! a snapshot should see.

use crate::direct::{attnum, int4, int8, relid, text, OpLog};
use std::cell::RefCell;
use std::ffi::CStr;
use pgrx::prelude::*;

/// Hold this node's op-counter lock to the end of the transaction.
fn lock_counter() {
    // A tag no SQL statement can take (LOCKTAG_OBJECT on a relation's
    // pg_class row is used by nothing else): only op recorders wait here.
    let frontier = relid(c"actor_frontier");
    unsafe { pg_sys::LockDatabaseObject(pg_sys::RelationRelationId, frontier, 1, pg_sys::ExclusiveLock as pg_sys::LOCKMODE) };
    // Released before the commit's WAL flush, not after (durable.rs).
    crate::durable::flush_after_unlock();
}

/// Hold a converge-private lock on `name` (an allocator's, an idempotency
/// key's) to the end of the transaction. Its tag is an object lock on the
/// pg_class entry of converge's table `table`, which no SQL statement can
/// take (an advisory lock any role could take and hold, stalling converge
/// while it holds the op counter). Names share 65 534 buckets.
pub fn private_lock(table: &'static CStr, name: &str) {
    private_lock_in(table, name, pg_sys::ExclusiveLock);
}

/// The same in a mode of its own (ShareLock: holders share it).
pub fn private_lock_in(table: &'static CStr, name: &str, mode: u32) {
    let bucket = 2 + (crate::replication::peers::stable_hash(name).rem_euclid(65_534)) as u16;
    unsafe { pg_sys::LockDatabaseObject(pg_sys::RelationRelationId, relid(table), bucket, mode as pg_sys::LOCKMODE) };
}

/// Take this node's op-counter lock (to the end of the transaction) before
/// a lock that an op recorder may take after it (allocate's).
pub fn hold_counter() {
    lock_counter();
}

/// Reserve `n` consecutive op counters of actor `me` (this node) and
/// return the last; the first is `last - n + 1`.
pub fn take_counters(me: &str, n: i64) -> i64 {
    lock_counter();
    let log = log_identity();
    let last = crate::counter_cache::get(me, log).unwrap_or_else(|| last_counter(me, View::Newest)) + n;
    crate::counter_cache::set(me, log, last);
    last
}

/// Ops of this node itself are about to enter the log by another path (a
/// peer sending back ops that a node restored from a backup lost): no
/// local take may interleave, and the cached counter is stale after.
pub fn own_ops_arrive() {
    lock_counter();
    crate::counter_cache::forget_here();
}

/// Which log the cache describes: op_log's oid and file (a new extension
/// or a TRUNCATE is a new log).
fn log_identity() -> u64 {
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid(c"op_log"));
        let id = ((*rel).rd_id.to_u32() as u64) << 32 | (*rel).rd_node.relNode.to_u32() as u64;
        pg_sys::RelationClose(rel);
        id
    }
}

/// Which rows a counter read sees.
#[derive(Clone, Copy)]
pub enum View {
    /// Every committed row and this transaction's own (SnapshotSelf): for
    /// a holder of the counter lock. No snapshot, so no serialization
    /// conflict and no predicate lock on the log.
    Newest,
    /// The calling statement's snapshot: for readers (frontier()), so
    /// the counter agrees with the rows the same statement reads. Local
    /// ops commit in counter order, so any snapshot sees a gapless prefix.
    Statement,
}

/// The highest op counter of actor `me` in `view`: its last applied op in
/// the log, or its row of actor_frontier when compaction has emptied the
/// log of its ops.
///
/// Why not a counter row updated per op: one row updated thousands of
/// times a second grows a HOT chain that every reader walks. The log's
/// (actor, counter) index already holds the answer at its right end.
pub fn last_counter(me: &str, view: View) -> i64 {
    // A backward index scan reads a whole leaf page of matches; a floor
    // this backend already saw (counters only grow) keeps that to the ops
    // recorded since.
    let floor = SEEN.with(|s| s.borrow().as_ref().filter(|(a, _)| a == me).map(|(_, c)| *c));
    // Nothing at or above the floor (it came from a transaction that
    // rolled back, or from a newer view than this one): read without it.
    let logged = newest(c"op_log", c"op_log_applied_once", me, "counter", floor, view)
        .or_else(|| floor.and_then(|_| newest(c"op_log", c"op_log_applied_once", me, "counter", None, view)));
    // Compaction that removes all of this node's ops keeps the counter in
    // its actor_frontier row, and so does a repair that superseded its
    // newest op (it is no longer applied, its counter stays used).
    let kept = newest(c"actor_frontier", c"actor_frontier_pkey", me, "contiguous", None, view);
    let last = logged.unwrap_or(0).max(kept.unwrap_or(0));
    SEEN.with(|s| *s.borrow_mut() = Some((me.to_string(), last)));
    last
}

thread_local! {
    /// The last counter this backend read, as a lower bound for the next read.
    static SEEN: std::cell::RefCell<Option<(String, i64)>> = const { std::cell::RefCell::new(None) };
}

/// The value of `column` in the row of `table` found last by `index`
/// (first column: actor = `actor`), in `view`. With `floor`, only rows
/// whose second index column is at least `floor`.
fn newest(table: &'static CStr, index: &'static CStr, actor: &str, column: &str, floor: Option<i64>, view: View) -> Option<i64> {
    let range = (floor, None);
    scan(table, index, actor, column, range, pg_sys::ScanDirection::BackwardScanDirection, Some(1), view).pop()
}

/// The counters of `actor`'s ops applied here with counters in `lo..=hi`,
/// read from the log's unique (actor, counter) index of applied ops.
pub fn applied_between(actor: &str, lo: i64, hi: i64) -> Vec<i64> {
    let forward = pg_sys::ScanDirection::ForwardScanDirection;
    scan(c"op_log", c"op_log_applied_once", actor, "counter", (Some(lo), Some(hi)), forward, None, View::Newest)
}

/// `actor`'s contiguous frontier here: every counter up to it is applied.
pub fn contiguous(actor: &str) -> i64 {
    newest(c"actor_frontier", c"actor_frontier_pkey", actor, "contiguous", None, View::Newest).unwrap_or(0)
}

/// `column` of the rows of `table` that `index` (first column: actor =
/// `actor`; second, when `range` bounds it, within `range`) finds, in
/// `direction`, at most `limit`, in `view`.
#[allow(clippy::too_many_arguments)]
fn scan(
    table: &'static CStr,
    index: &'static CStr,
    actor: &str,
    column: &str,
    range: (Option<i64>, Option<i64>),
    direction: pg_sys::ScanDirection::Type,
    limit: Option<usize>,
    view: View,
) -> Vec<i64> {
    use crate::direct::Key;
    let actor_datum = actor.into_datum().expect("text");
    let mut keys = vec![Key::eq(1, pg_sys::F_TEXTEQ.into(), actor_datum)];
    if let Some(lo) = range.0 {
        keys.push(Key { attno: 2, strategy: pg_sys::BTGreaterEqualStrategyNumber, proc: pg_sys::F_INT8GE.into(), value: lo.into() });
    }
    if let Some(hi) = range.1 {
        keys.push(Key { attno: 2, strategy: pg_sys::BTLessEqualStrategyNumber, proc: pg_sys::F_INT8LE.into(), value: hi.into() });
    }
    let snapshot = match view {
        View::Newest => &raw mut pg_sys::SnapshotSelfData,
        View::Statement => unsafe { pg_sys::GetActiveSnapshot() },
    };
    let mut out = Vec::new();
    crate::direct::reading(table, |heap| {
        let att = attnum(heap, column);
        crate::direct::index_scan(heap, index, &keys, snapshot, direction, |slot| {
            if let Some(d) = crate::direct::column(slot, att) {
                out.push(d.value() as i64);
            }
            limit.is_none_or(|l| out.len() < l)
        })
    });
    out
}

/// `converge.last_op_counter(actor)`: this node's highest op counter in
/// the statement's snapshot, for `converge.frontier()` (internal).
#[pg_extern(stable, strict, parallel_restricted)]
fn last_op_counter(actor: &str) -> i64 {
    // A frontier leaves the server: every op it counts must be durable.
    crate::durable::flush_visible();
    last_counter(actor, View::Statement)
}


/// Append one op of this node (`me`'s op `counter`) to the log: no deps,
/// origin `local`. `key` is the row's key as a jsonb datum.
#[allow(clippy::too_many_arguments)]
pub fn append_local(log: &mut OpLog, me: &str, counter: i64, table: &str, key: pg_sys::Datum, column: &str, version: i32, epoch: i64, delta: &[u8]) {
    log.append(&[
        ("op_id", text(&format!("{me}:{counter}"))),
        ("actor", text(me)),
        ("counter", int8(counter)),
        ("target_table", text(table)),
        ("target_key", Some(key)),
        ("target_column", text(column)),
        ("schema_version", int4(version)),
        ("epoch", int8(epoch)),
        ("deps", Vec::<String>::new().into_datum()),
        ("delta", delta.into_datum()),
        ("origin", text("local")),
    ]);
}

thread_local! {
    /// This commit holds the commit order: the last counter it took.
    static IN_ORDER: RefCell<Option<(String, u64, i64)>> = const { RefCell::new(None) };
}

/// At PRE_COMMIT, before `take_order`: hold the counter lock in a shared
/// mode (RowExclusiveLock, which the ExclusiveLock of `lock_counter`
/// conflicts with and no other taker at commit does) to the end of the
/// transaction. False: converge is not preloaded (no order; take counters
/// with `take_counters`).
pub fn enter_order() -> bool {
    if !crate::counter_cache::ready() {
        return false;
    }
    let frontier = relid(c"actor_frontier");
    unsafe { pg_sys::LockDatabaseObject(pg_sys::RelationRelationId, frontier, 1, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
    true
}

/// Take the order's LWLock (after `enter_order`), until the commit is
/// visible (`leave_order`).
pub fn take_order() {
    crate::counter_cache::enter_order();
    IN_ORDER.with(|o| *o.borrow_mut() = Some((String::new(), log_identity(), 0)));
}

/// Reserve `n` consecutive op counters of `me` in the order held, and
/// return the last.
pub fn next_in_order(me: &str, n: i64) -> i64 {
    IN_ORDER.with(|o| {
        let mut o = o.borrow_mut();
        let (actor, log, last) = o.as_mut().expect("the commit order is held");
        let base = if actor == me {
            *last
        } else if actor.is_empty() {
            crate::counter_cache::get(me, *log).unwrap_or_else(|| last_counter(me, View::Newest))
        } else {
            // Another actor earlier in this commit (a renamed node): the
            // cache has neither's counters of this commit; the log has.
            last_counter(me, View::Newest)
        };
        *actor = me.to_string();
        *last = base + n;
        *last
    })
}

/// The commit is visible (`committed`): its last counter goes to the
/// cache and the order to the next commit. Or it aborted, which released
/// the order's LWLock already.
pub fn leave_order(committed: bool) {
    let Some((actor, log, last)) = IN_ORDER.with(|o| o.borrow_mut().take()) else { return };
    if committed {
        if !actor.is_empty() {
            crate::counter_cache::store(&actor, log, last);
        }
        crate::counter_cache::leave_order();
    }
}

/// Log one op of this node on converge's own state (the actor registry, a
/// repair): target `table` (`converge.<name>`), `key`, `column`, `delta`.
/// Returns its op_id.
pub fn log_control_op(me: &str, table: &str, key: serde_json::Value, column: &str, delta: Vec<u8>) -> String {
    log_control_op_with(me, table, key, column, 0, |_| delta)
}

/// The same, with an epoch, and a delta made from the counter once it is
/// taken (held to commit: every earlier op of this node has committed).
pub fn log_control_op_with(
    me: &str,
    table: &str,
    key: serde_json::Value,
    column: &str,
    epoch: i64,
    delta: impl FnOnce(i64) -> Vec<u8>,
) -> String {
    // Ops that this transaction's triggers recorded first go first.
    lock_counter();
    // (A freeze or decision of an authority handed over meanwhile fails.)
    crate::commit_ops::check_held();
    crate::commit_ops::write_now();
    let counter = take_counters(me, 1);
    let op_id = format!("{me}:{counter}");
    let delta = delta(counter);
    crate::security::as_owner(|| {
        let mut log = OpLog::open();
        append_local(&mut log, me, counter, table, crate::jsonb::datum(&key), column, 1, epoch, &delta);
        log.close();
    });
    op_id
}
