//! The worker's batches: each peer's received transactions applied in
//! one local transaction under the peer's origin, a batch that meets a
//! held lock put off rather than waited for (one worker serves every peer
//! of the database), and the passes that run in transactions of their own
//! after a batch (requests to decide, ops that waited for it).

use super::{fail, in_transaction, in_transaction_coded, pull, Link};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// What became of a batch that was not rolled back.
enum Batch {
    Applied,
    /// The peer was paused or removed meanwhile.
    Inactive,
    /// Another transaction holds the peer's status row (add_peer adding
    /// it again, which may also have written some of these ops).
    StatusHeld,
}

/// Apply the complete transactions received, in one local transaction
/// under the peer's origin (progress = the last commit's LSN). False if the
/// link was dropped (error, or the peer was paused or removed meanwhile).
pub(super) fn apply(link: &mut Link) -> bool {
    let t0 = Instant::now();
    let peer = link.peer.clone();
    let ops = std::mem::take(&mut link.ready);
    let (n, lsn, time, txns, bytes) = (ops.len(), link.ready_lsn, link.ready_time, link.ready_txns, link.ready_bytes);
    link.ready_txns = 0;
    link.ready_bytes = 0;
    let result = in_transaction_coded(std::panic::AssertUnwindSafe(|| {
        apply_lock_timeout();
        // Prepared once per worker (these two run per applied batch).
        let active = crate::spi::prepared("SELECT NOT paused FROM converge.peer WHERE name = $1", &[peer.name.as_str().into()], |t| {
            if t.is_empty() { Ok(None) } else { t.first().get_one::<bool>() }
        })
        .unwrap_or_else(|e| crate::errors::raise(pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("reading converge.peer: {e}")));
        if active != Some(true) {
            return Batch::Inactive;
        }
        // The peer's status row first (its counts go with the batch):
        // while another transaction holds it, the batch is applied again
        // later rather than wait on it. (Nothing is written before this.)
        if !pull::claim_status(&peer.name) {
            return Batch::StatusHeld;
        }
        let origin = pull::origin_id(&peer.origin);
        let Some(origin) = origin else { return Batch::Inactive };
        pull::apply_encoded(ops, &peer.name, origin, lsn, time);
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        let _ = crate::spi::prepared(
            "UPDATE converge.peer_status SET state = 'ok', confirmed_lsn = $2::pg_lsn, last_success = clock_timestamp(),
                    lag_seconds = $3, ops_received = ops_received + $4, bytes_received = bytes_received + $5
              WHERE name = $1",
            &[
                peer.name.as_str().into(),
                pull::fmt_lsn(lsn).into(),
                ((now - time).max(0) as f64 / 1e6).into(),
                (n as i64).into(),
                (bytes as i64).into(),
            ],
            |_| Ok(()),
        );
        Batch::Applied
    }));
    if matches!(result, Ok(Batch::Applied)) {
        // The peer is told this batch is ours once its commit is on disk
        // here (feedback, below): under synchronous_commit = off a crash
        // could lose it after the peer let it go.
        unsafe { pg_sys::XLogFlush(pg_sys::XactLastCommitEnd) };
    }
    if matches!(result, Ok(Batch::Applied)) && crate::apply::take_deferred() {
        retry_deferred(&peer.name);
    }
    match result {
        Ok(Batch::Applied) => {
            link.flushed = lsn;
            link.backoff = Duration::from_millis(500);
            link.unhold();
            if crate::requests::take_arrived() {
                decide_requests();
            }
            pgrx::debug1!(
                "converge: applied {n} ops ({txns} transactions, {bytes} bytes) from peer \"{}\" in {:.1} ms",
                peer.name,
                t0.elapsed().as_secs_f64() * 1000.0
            );
            true
        }
        Ok(Batch::Inactive) => {
            // Paused or removed: drop what we hold; the slot still has it.
            link.disconnect();
            link.next_connect = Instant::now() + Duration::from_secs(1);
            false
        }
        Ok(Batch::StatusHeld) => {
            // Tried again soon: the holder (add_peer) is usually brief, and
            // the try costs the other peers nothing (no wait).
            link.disconnect();
            link.next_connect = Instant::now() + Duration::from_millis(500);
            false
        }
        // A lock held too long, or a deadlock with a user's transaction
        // (one of the two is cancelled): the peer is not down. A deadlock
        // is over once one side gave up: tried again soon, not backed off.
        Err((e, Some(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE))) => {
            hold(link, &e, true);
            false
        }
        Err((e, Some(PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED))) => {
            hold(link, &e, false);
            false
        }
        Err((e, _)) => {
            fail(link, &format!("applying: {e}"));
            false
        }
    }
}

/// How long a peer's batches may keep meeting held locks before the peer
/// is shown `down`.
pub(super) const HELD_DOWN_AFTER: Duration = Duration::from_secs(10);

/// A batch rolled back because a lock it needed stayed held past
/// `converge.apply_lock_timeout` (a user's long transaction): applied
/// again later, waiting 0.5 s, doubling to 30 s (`back_off`), while the
/// worker serves its other peers; or chosen as a deadlock's victim: again
/// in 0.5 s. The error says so; the peer is shown `down` only once its
/// batches have been held for more than 10 s.
fn hold(link: &mut Link, message: &str, back_off: bool) {
    link.disconnect();
    let wait = (Duration::from_millis(500) * 2u32.pow(link.held.min(6))).min(Duration::from_secs(30));
    let wait = if back_off { wait } else { Duration::from_millis(500) };
    link.held += back_off as u32;
    let since = *link.held_since.get_or_insert_with(Instant::now);
    link.next_connect = Instant::now() + wait;
    let name = link.peer.name.clone();
    let msg = format!("applying: {message}; the batch is applied again in {:.1} s", wait.as_secs_f64());
    if since.elapsed() > HELD_DOWN_AFTER {
        let _ = in_transaction(move || pull::record_error(&name, &msg));
    } else {
        let _ = in_transaction(move || pull::record_held(&name, &msg));
    }
}

/// The apply's lock waits end at `converge.apply_lock_timeout`, to the end
/// of this transaction. 0 leaves the server's `lock_timeout` (by default
/// none: PostgreSQL's apply workers' way).
pub(super) fn apply_lock_timeout() {
    let ms = super::super::launcher::APPLY_LOCK_TIMEOUT.get();
    if ms > 0 {
        let ms = std::ffi::CString::new(ms.to_string()).expect("digits");
        crate::spi::set_guc(c"lock_timeout", &ms, pg_sys::GucContext::PGC_USERSET, pg_sys::GucAction::GUC_ACTION_LOCAL);
    }
}

/// lock_timeout 2s to the end of this transaction (set without SPI).
fn lock_timeout_2s() {
    crate::spi::set_guc(c"lock_timeout", c"2s", pg_sys::GucContext::PGC_USERSET, pg_sys::GucAction::GUC_ACTION_LOCAL);
}

/// Decide the pending requests this node is the authority of, in a
/// transaction of its own: no peer's origin, so the decisions ship.
pub(super) fn decide_requests() {
    let pass = || {
        // The op counter, should a user's transaction hold it, is not
        // waited for long: the pass stops, to be tried again (rows and
        // requests other sessions hold are skipped, not waited for).
        lock_timeout_2s();
        crate::requests::decide_pending()
    };
    if let Err(e) = in_transaction(pass) {
        pgrx::warning!("converge: deciding requests: {e}");
    }
}

/// Ops that clients sent to this node and that waited for ops the batch
/// just applied: applied in a transaction of its own, with no replication
/// origin, so that this node ships them to its peers (what it writes under
/// a peer's origin, it never ships).
fn retry_deferred(peer: &str) {
    retry_pass(&format!("applying ops that waited for peer \"{peer}\"'s"));
}

/// Pending ops that are ready, applied in a transaction of its own (no
/// peer's origin: what it applies ships).
pub(super) fn retry_ready() {
    retry_pass("applying ops that waited");
}

/// One `retry_pending` pass in a transaction of its own: not stalled by a
/// session's locks for long (the next pass tries again), and with the ops
/// peers sent retried as theirs (trusted, like their batches).
fn retry_pass(what: &str) {
    let r = in_transaction(|| {
        lock_timeout_2s();
        crate::apply::from_peer(|| crate::spi::read_one::<i64>("SELECT pg_catalog.count(*) FROM converge.retry_pending()", &[]))
    });
    if let Err(e) = r {
        pgrx::warning!("converge: {what}: {e}");
    }
}
