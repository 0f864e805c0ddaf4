//! Pulling from a peer: one round reads the peer's slot (our slot there),
//! applies the ops of every new transaction in one local transaction under
//! the peer's replication origin, and records the remote commit LSN as that
//! origin's progress in the same commit. The slot on the peer is advanced
//! only to what is committed here, so a crash anywhere loses nothing; a
//! transaction seen twice is skipped by LSN, and an op seen twice is a
//! `duplicate` anyway.

use super::decoder::{parse_message, Message};
use super::libpq::{Conn, PeerError};
use crate::errors::raise;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

/// Changes read from a slot per round (more rounds follow at once when hit).
pub const ROUND_LIMIT: i64 = 20_000;
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct PeerRow {
    pub name: String,
    pub conninfo: String,
    pub slot: String,
    pub origin: String,
    /// Added by a role that is not superuser (`connect_peer`).
    pub password_required: bool,
}

/// Connect to `peer` (as a replication connection with `replication`).
/// A peer added by a role that is not superuser must ask for the password
/// its conninfo carries on every connection, as on add_peer's: otherwise
/// a host list, or a name that resolves elsewhere later, could make the
/// worker, a superuser, log in with credentials that role never held.
pub fn connect_peer(peer: &PeerRow, replication: bool) -> Result<Conn, PeerError> {
    let conn = if replication { Conn::connect_replication(&peer.conninfo) } else { Conn::connect(&peer.conninfo) }?;
    if peer.password_required && !conn.used_password() {
        return Err(PeerError {
            sqlstate: Some("42501".into()),
            message: format!(
                "the connection to peer \"{}\" did not use the password in its conninfo, which it must since a role that is not superuser added it (have the peer ask for it, or add the peer again as a superuser)",
                peer.name
            ),
        });
    }
    Ok(conn)
}

pub fn load_peers(only_name: Option<&str>) -> Vec<PeerRow> {
    Spi::connect(|c| {
        let rows = c
            .select(
                "SELECT name, conninfo, slot_name, origin_name, password_required FROM converge.peer
                  WHERE ($1::text IS NULL AND NOT paused) OR name = $1 ORDER BY name",
                None,
                &[only_name.into()],
            )
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("reading converge.peer: {e}")));
        rows.map(|r| PeerRow {
            name: r.get(1).ok().flatten().unwrap_or_default(),
            conninfo: r.get(2).ok().flatten().unwrap_or_default(),
            slot: r.get(3).ok().flatten().unwrap_or_default(),
            origin: r.get(4).ok().flatten().unwrap_or_default(),
            // (Unknown reads as required: the safe side.)
            password_required: r.get(5).ok().flatten().unwrap_or(true),
        })
        .collect()
    })
}

pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn fmt_lsn(l: u64) -> String {
    format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff)
}

/// What a round did.
#[derive(Default, Debug)]
pub struct Round {
    pub ops: usize,
    pub bytes: usize,
    pub txns: usize,
    /// The slot had more than one round's worth: pull again at once.
    pub more: bool,
    /// Remote commit end LSN of the last transaction applied (0 if none).
    pub applied_lsn: u64,
}

// The replication origin this backend set up for the current transaction;
// reset when the transaction ends, so later local writes of the session are
// not mistaken for a peer's (and are shipped).
static ORIGIN_ACTIVE: AtomicBool = AtomicBool::new(false);
static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);
// The origin this backend holds (set up for the session, as PostgreSQL
// counts it: no other process may use it) in the current transaction, 0 if
// none; it tags the transaction's writes only once ORIGIN_ACTIVE.
static ORIGIN_HELD: AtomicU16 = AtomicU16::new(0);

#[pg_guard]
unsafe extern "C-unwind" fn reset_origin_at_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    if matches!(event, XACT_EVENT_PRE_PREPARE | XACT_EVENT_PRE_COMMIT | XACT_EVENT_PARALLEL_PRE_COMMIT) && !ORIGIN_ACTIVE.load(Ordering::SeqCst) {
        // Held only (nothing applied under it): let go before the commit,
        // where an error still aborts cleanly (the commit needs no origin).
        release_held();
    }
    if event == XACT_EVENT_PRE_PREPARE && ORIGIN_ACTIVE.load(Ordering::SeqCst) {
        // The origin would stay on the session after PREPARE and tag later
        // local transactions as the peer's.
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "a transaction that applied a peer's ops (converge.sync) cannot be prepared",
        );
    }
    if matches!(event, XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE) {
        BEFORE.with(|b| b.borrow_mut().clear());
    }
    if matches!(event, XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PARALLEL_ABORT) {
        if ORIGIN_ACTIVE.swap(false, Ordering::SeqCst) {
            pg_sys::replorigin_session_origin = pg_sys::InvalidRepOriginId as pg_sys::RepOriginId;
            pg_sys::replorigin_session_origin_lsn = 0;
            pg_sys::replorigin_session_origin_timestamp = 0;
        }
        release_held();
    }
}

/// Let go of the origin this session holds, if any.
fn release_held() {
    if ORIGIN_HELD.swap(0, Ordering::SeqCst) != 0 {
        unsafe { pg_sys::replorigin_session_reset() };
    }
}

pub fn origin_id(name: &str) -> Option<pg_sys::RepOriginId> {
    let c = std::ffi::CString::new(name).ok()?;
    let id = unsafe { pg_sys::replorigin_by_name(c.as_ptr(), true) };
    (id != pg_sys::InvalidRepOriginId as pg_sys::RepOriginId).then_some(id)
}

/// Set `origin` up for this session. Another process may have it for the
/// length of one transaction: the worker, applying a batch of the peer's
/// when `add_peer` or `sync` comes right after `pause_peer` (the upgrade
/// recipe). A session waits for it, up to 10 s, where PostgreSQL raises
/// 55006 at once; the worker does not wait (it tries again at its next
/// batch, and must not hold up its other peers).
fn acquire_origin(origin: pg_sys::RepOriginId) {
    if unsafe { pg_sys::IsBackgroundWorker } {
        unsafe { pg_sys::replorigin_session_setup(origin) };
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // (In a subtransaction: the failed attempt's lock is released.)
        match crate::apply::subtransaction(|| unsafe { pg_sys::replorigin_session_setup(origin) }) {
            Ok(()) => return,
            Err(c) if c.sqlstate == "55006" && std::time::Instant::now() < deadline => {
                pgrx::check_for_interrupts!();
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(c) => raise(c.code, c.message),
        }
    }
}

/// Hold `origin` for the rest of this transaction (waiting for it as
/// `acquire_origin` does) without marking anything written as its yet:
/// add_peer takes a re-added peer's origin before it writes the peer's
/// rows, which the worker, mid-batch under it, writes too before it lets
/// go. Nothing if this transaction applies under an origin already.
pub(super) fn take_origin(origin: pg_sys::RepOriginId) {
    unsafe {
        if pg_sys::replorigin_session_origin != pg_sys::InvalidRepOriginId as pg_sys::RepOriginId {
            return; // applying under one already (the copy's check then speaks)
        }
    }
    register_callback();
    hold(origin);
}

/// Let go of `origin` if this transaction holds it without having applied
/// under it (a peer re-added, then removed, in one transaction), so that
/// it can be dropped. Applied under it: refused (its commit records the
/// peer's progress on that origin).
pub(super) fn let_go_of(origin: pg_sys::RepOriginId, peer: &str) {
    if ORIGIN_ACTIVE.load(Ordering::SeqCst) && unsafe { pg_sys::replorigin_session_origin } == origin {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("peer \"{peer}\"'s ops were applied in this transaction; remove it in a transaction of its own"),
        );
    }
    if ORIGIN_HELD.load(Ordering::SeqCst) == origin {
        release_held();
    }
}

/// This session holds `origin` (not yet tagging anything): nothing if it
/// does already; another origin held untagged (a re-added peer whose copy
/// applied nothing) is let go first.
fn hold(origin: pg_sys::RepOriginId) {
    if ORIGIN_HELD.load(Ordering::SeqCst) == origin {
        return;
    }
    release_held();
    acquire_origin(origin);
    ORIGIN_HELD.store(origin, Ordering::SeqCst);
}

fn register_callback() {
    if !CALLBACK_REGISTERED.swap(true, Ordering::SeqCst) {
        unsafe {
            pg_sys::RegisterXactCallback(Some(reset_origin_at_end), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(undo_in_aborted_subxact), std::ptr::null_mut());
        }
    }
}

/// What `setup_origin` replaced, and in which subtransaction: a savepoint
/// (or a PL/pgSQL exception block) rolled back around `sync` undoes the
/// apply, so it must undo the progress too, or the commit would record the
/// peer's LSN past ops it did not keep and the next round would skip them.
struct Before {
    subxact: pg_sys::SubTransactionId,
    was_active: bool,
    lsn: u64,
    time: i64,
}

thread_local! {
    static BEFORE: std::cell::RefCell<Vec<Before>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[pg_guard]
unsafe extern "C-unwind" fn undo_in_aborted_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event != pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        return;
    }
    // Subtransaction ids grow: what was set up in `sub` or in a child of
    // it (released into it) is on top, each entry older than the one above.
    BEFORE.with(|b| {
        let mut b = b.borrow_mut();
        while b.last().is_some_and(|e| e.subxact >= sub) {
            let e = b.pop().unwrap();
            pg_sys::replorigin_session_origin_lsn = e.lsn;
            pg_sys::replorigin_session_origin_timestamp = e.time;
            if !e.was_active && ORIGIN_ACTIVE.swap(false, Ordering::SeqCst) {
                // Still held: let go at the commit, as an origin nothing
                // was applied under.
                pg_sys::replorigin_session_origin = pg_sys::InvalidRepOriginId as pg_sys::RepOriginId;
            }
        }
    });
}

/// Mark the rest of this transaction as applying `origin`'s changes up to
/// `remote_lsn`: the commit records that progress, and decoding on this node
/// filters the transaction out (it is never shipped again).
pub(super) fn setup_origin(origin: pg_sys::RepOriginId, remote_lsn: u64, remote_time: i64) {
    register_callback();
    unsafe {
        let none = pg_sys::InvalidRepOriginId as pg_sys::RepOriginId;
        let was_active = ORIGIN_ACTIVE.load(Ordering::SeqCst);
        let before = Before {
            subxact: pg_sys::GetCurrentSubTransactionId(),
            was_active,
            lsn: pg_sys::replorigin_session_origin_lsn,
            time: pg_sys::replorigin_session_origin_timestamp,
        };
        if was_active {
            if pg_sys::replorigin_session_origin != origin {
                raise(
                    PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                    "ops of two peers cannot be applied in one transaction (sync one peer per transaction)",
                );
            }
        } else {
            if pg_sys::replorigin_session_origin != none {
                raise(
                    PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                    "this session already has a replication origin set up (pg_replication_origin_session_setup)",
                );
            }
            hold(origin);
            pg_sys::replorigin_session_origin = origin;
            // Only now: the end-of-transaction callback resets what is set up.
            ORIGIN_ACTIVE.store(true, Ordering::SeqCst);
        }
        BEFORE.with(|b| b.borrow_mut().push(before));
        // A copy (remote LSN 0) after a kept round keeps that round's progress.
        let remote_lsn = if was_active { remote_lsn.max(pg_sys::replorigin_session_origin_lsn) } else { remote_lsn };
        pg_sys::replorigin_session_origin_lsn = remote_lsn;
        pg_sys::replorigin_session_origin_timestamp = remote_time;
    }
}

/// Apply encoded ops (as a peer shipped them) here, under `origin`.
pub fn apply_encoded(ops: Vec<Vec<u8>>, peer: &str, origin: pg_sys::RepOriginId, remote_lsn: u64, remote_time: i64) -> usize {
    if ops.is_empty() {
        return 0;
    }
    setup_origin(origin, remote_lsn, remote_time);
    let n = ops.len();
    // Decoded and applied in Rust, as apply_batch(ops, 'peer:<name>') would
    // apply them, with no statement between (one per batch cost more than
    // a small batch's apply: what a peer waits for under a steady load).
    let decoded: Vec<converge_core::Op> = ops
        .iter()
        .map(|b| {
            converge_core::Op::decode(b)
                .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION, format!("an op from peer {peer}: {}", e.message)))
        })
        .collect();
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    crate::apply::from_peer(|| crate::apply::apply_decoded(decoded, &format!("peer:{peer}")));
    unsafe { pg_sys::PopActiveSnapshot() };
    n
}

fn lsn_of(rows: &super::libpq::Rows, row: usize, col: usize) -> u64 {
    rows.text(row, col).and_then(|s| parse_lsn(&s)).unwrap_or(0)
}

/// A subquery run on a peer: its tables that clients may not write there
/// (`converge.set_client_writes`), qualified, as a jsonb array. A peer of
/// an earlier version has no such setting: none.
pub const CLOSED_TABLES: &str = "(SELECT coalesce(jsonb_agg(format('%I.%I', n.nspname, c.relname)), '[]')::text
       FROM converge.replicated r JOIN pg_class c ON c.oid = r.table_name JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE to_jsonb(r) ->> 'client_writes' = 'false')";

/// One pull round from `peer` over `conn`, inside the caller's transaction.
/// `stop` is polled while waiting on the network (true = give up).
/// With `dry_run` it only reports what a round would apply (no writes here;
/// on the peer only the slot's release of what was applied here, which the
/// next round would make first: a peek from behind it would see only ops
/// applied already, up to its limit, and miss what came after).
pub fn pull_round(peer: &PeerRow, conn: &mut Conn, stop: &dyn Fn() -> bool, dry_run: bool) -> Result<Round, PeerError> {
    let perr = |m: String| PeerError { sqlstate: None, message: m };
    let origin = origin_id(&peer.origin)
        .ok_or_else(|| perr(format!("replication origin \"{}\" is missing; run converge.add_peer again", peer.origin)))?;
    let progress = unsafe { pg_sys::replorigin_get_progress(origin, true) };
    let round_start = crate::spi::read_one::<TimestampWithTimeZone>("SELECT clock_timestamp()", &[]);

    let t0 = std::time::Instant::now();
    let st = conn.query(
        // The frontier in the statement's snapshot, and the insert position
        // after it: every commit the frontier counts lies before that.
        // And, in the same snapshot, the tables clients may not write there.
        &format!(
            "SELECT pg_current_wal_flush_lsn()::text, confirmed_flush_lsn::text, converge.frontier()::text,
                    pg_current_wal_insert_lsn()::text, {CLOSED_TABLES}
               FROM pg_replication_slots WHERE slot_name = $1"
        ),
        &[&peer.slot],
        false,
        QUERY_TIMEOUT,
        stop,
    )?;
    if st.rows.is_empty() {
        return Err(perr(format!(
            "replication slot \"{}\" does not exist on peer \"{}\"; run converge.add_peer again",
            peer.slot, peer.name
        )));
    }
    let peer_lsn = lsn_of(&st, 0, 0);
    let mut confirmed = lsn_of(&st, 0, 1);
    let frontier_before = lsn_of(&st, 0, 3);
    let mut peer_frontier = st.text(0, 2);
    let peer_closed = st.text(0, 4);
    // What an earlier round committed here can be released on the peer.
    if progress > confirmed {
        let advanced =
            conn.query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)", &[&peer.slot, &fmt_lsn(progress)], false, QUERY_TIMEOUT, stop);
        match advanced {
            Ok(_) => confirmed = progress,
            // A dry run racing a sync that released more meanwhile: the
            // peek below starts past `progress` all the same.
            Err(_) if dry_run => {}
            Err(e) => return Err(e),
        }
    }
    // The peek decodes up to the flush position of its moment: the
    // frontier counts (for causal stability) only if that is past every
    // commit it counted (with synchronous_commit off, a commit is visible
    // before it is flushed).
    let flushed = conn.query("SELECT pg_current_wal_flush_lsn()::text", &[], false, QUERY_TIMEOUT, stop)?;
    if lsn_of(&flushed, 0, 0) < frontier_before {
        peer_frontier = None;
    }
    let t1 = t0.elapsed();
    let limit = ROUND_LIMIT.to_string();
    let changes = conn.query(
        "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2::int)",
        &[&peer.slot, &limit],
        true,
        QUERY_TIMEOUT,
        stop,
    )?;
    let t2 = t0.elapsed();
    let mut round = Round { more: changes.rows.len() as i64 >= ROUND_LIMIT, ..Default::default() };
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<Vec<u8>> = Vec::new();
    let mut last_time = 0i64;
    for row in &changes.rows {
        let Some(Some(data)) = row.first() else { continue };
        round.bytes += data.len();
        match parse_message(data).map_err(perr)? {
            Message::Op(op) => current.push(op),
            Message::Commit { end_lsn, commit_time } => {
                if end_lsn > progress {
                    round.txns += 1;
                    batch.append(&mut current);
                    round.applied_lsn = end_lsn;
                    last_time = commit_time;
                } else {
                    current.clear();
                }
            }
        }
    }
    if dry_run {
        round.ops = batch.len();
        return Ok(round);
    }
    round.ops = apply_encoded(batch, &peer.name, origin, round.applied_lsn, last_time);
    let t3 = t0.elapsed();
    pgrx::debug2!("converge round: status {:?} peek {:?} apply {:?}", t1, t2 - t1, t3 - t2);
    if round.ops == 0 && !round.more && peer_lsn > confirmed {
        // Nothing for us up to peer_lsn: let the peer recycle that WAL.
        conn.query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)", &[&peer.slot, &fmt_lsn(peer_lsn)], false, QUERY_TIMEOUT, stop)?;
        confirmed = peer_lsn;
    }
    let lag_seconds = if round.ops > 0 && last_time != 0 {
        // now() - the last applied commit's time, in seconds.
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        Some((now - last_time).max(0) as f64 / 1e6)
    } else if !round.more {
        Some(0.0)
    } else {
        None
    };
    Spi::run_with_args(
        "UPDATE converge.peer_status SET state = 'ok', peer_lsn = $2::pg_lsn, confirmed_lsn = $3::pg_lsn,
                lag_bytes = greatest(pg_wal_lsn_diff($2::pg_lsn, $3::pg_lsn), 0)::bigint,
                lag_seconds = coalesce($4, lag_seconds), last_success = clock_timestamp(),
                caught_up_at = CASE WHEN $5 THEN $6 ELSE caught_up_at END,
                ops_received = ops_received + $7, bytes_received = bytes_received + $8,
                frontier = CASE WHEN $5 AND $9::jsonb IS NOT NULL THEN $9::jsonb ELSE frontier END,
                frontier_at = CASE WHEN $5 AND $9::jsonb IS NOT NULL THEN $6 ELSE frontier_at END,
                closed_tables = CASE WHEN $5 AND $9::jsonb IS NOT NULL THEN $10::jsonb ELSE closed_tables END
          WHERE name = $1",
        &[
            peer.name.clone().into(),
            fmt_lsn(peer_lsn).into(),
            fmt_lsn(confirmed.max(round.applied_lsn)).into(),
            lag_seconds.into(),
            (!round.more).into(),
            round_start.into(),
            (round.ops as i64).into(),
            (round.bytes as i64).into(),
            peer_frontier.into(),
            peer_closed.into(),
        ],
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("updating peer status: {e}")));
    Ok(round)
}

/// The worker's update of peer `$1`'s status row: `set` (columns of
/// `converge.peer_status`), skipped while another transaction holds that
/// row (add_peer adding the peer again, which holds it to its commit): the
/// worker must not wait on it while its other peers wait on the worker.
/// What is skipped is only reporting, written again by the next probe or
/// round (or by add_peer itself).
pub fn status_update(set: &str) -> String {
    format!(
        "UPDATE converge.peer_status s SET {set}
           FROM (SELECT name FROM converge.peer_status WHERE name = $1 FOR UPDATE SKIP LOCKED) l WHERE s.name = l.name"
    )
}

/// Lock peer `name`'s status row for the rest of this transaction, unless
/// another transaction holds it (false): for the worker's changes that
/// must go with the row (a lost mark with its slot's drop, a rejoin), done
/// later instead of waiting.
pub fn claim_status(name: &str) -> bool {
    // (Planned once per session: the worker asks per applied batch.)
    crate::spi::prepared("SELECT 1 FROM converge.peer_status WHERE name = $1 FOR UPDATE SKIP LOCKED", &[name.into()], |t| Ok(t.len() == 1))
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("locking peer {name}'s status: {e}")))
}

/// Record a failure to reach or pull from a peer (in its own transaction;
/// the worker's, see status_update).
pub fn record_error(peer: &str, message: &str) {
    let _ = Spi::run_with_args(
        &status_update("state = 'down', last_error = $2, last_error_at = clock_timestamp()"),
        &[peer.into(), message.into()],
    );
}

/// A batch from `peer` rolled back on a lock held here: the error, with
/// the state left as it is (the peer is reachable).
pub fn record_held(peer: &str, message: &str) {
    let _ = Spi::run_with_args(&status_update("last_error = $2, last_error_at = clock_timestamp()"), &[peer.into(), message.into()]);
}
