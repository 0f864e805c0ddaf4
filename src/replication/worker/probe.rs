//! The worker's probe of a peer: when everything the peer had committed
//! at a moment is applied here (`caught_up_at`, `wait_for_peers`), with
//! the peer's frontier and what it received from us as of that moment
//! (causal stability, `converge.stats`).

use super::{fail, feedback, in_transaction, pull, stop_requested, Link};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// What a probe asked the peer: its WAL insert position, our clock then,
/// and (for causal stability) the peer's frontier and how much of ours it
/// has received, as of that moment.
#[derive(Clone)]
pub(super) struct Probe {
    lsn: u64,
    at: String,
    frontier: Option<String>,
    shipped: Option<String>,
    /// The slot the peer reads from here, as it records it.
    slot: Option<String>,
    /// The tables clients may not write there (pull::CLOSED_TABLES).
    closed: Option<String>,
}

/// Every 200 ms while idle: ask the peer for its WAL insert position P (and
/// note our clock), and ask the walsender for a keepalive; once it has
/// decoded past P with nothing left to apply, everything the peer had
/// committed when we asked is here: caught_up_at is that moment.
pub(super) fn caught_up(link: &mut Link) {
    if let Some(probe) = link.probe.clone() {
        if link.sent_ptr >= probe.lsn {
            link.probe = None;
            link.unhold(); // nothing is left to apply: no batch is held
            // Caught up: the link works, so the next failure backs off anew.
            link.backoff = Duration::from_millis(500);
            // Nothing for us up to sent_ptr is waiting: release that WAL.
            link.reported = link.reported.max(link.sent_ptr).max(link.flushed);
            let (name, flushed) = (link.peer.name.clone(), link.reported);
            let _ = in_transaction(move || record_probe(&name, &probe, flushed));
        } else if link.next_probe.elapsed() < Duration::from_secs(2) {
            return; // wait for the keepalive
        }
    }
    if Instant::now() < link.next_probe {
        return;
    }
    link.next_probe = Instant::now() + Duration::from_millis(200);
    let here = in_transaction(|| {
        (
            crate::spi::read_one::<String>("SELECT clock_timestamp()::text", &[]).unwrap_or_default(),
            crate::node::local_node_if_set().unwrap_or_default(),
        )
    });
    let Ok((at, me)) = here else { return };
    // The frontier is read in the statement's snapshot, the insert position
    // after it: every commit the frontier counts lies before that position.
    let asked = link.probe_conn.as_mut().map(|c| {
        c.query(
            &format!(
                "SELECT pg_current_wal_insert_lsn()::text, converge.frontier()::text,
                        (SELECT ops_received || ' ' || bytes_received FROM converge.peers WHERE name = $1),
                        (SELECT slot FROM converge.peers WHERE name = $1), {}",
                pull::CLOSED_TABLES
            ),
            &[&me],
            false,
            pull::QUERY_TIMEOUT,
            &stop_requested,
        )
    });
    match asked {
        Some(Ok(rows)) => {
            if let Some(p) = rows.text(0, 0).and_then(|t| pull::parse_lsn(&t)) {
                link.probe = Some(Probe {
                    lsn: p,
                    at,
                    frontier: rows.text(0, 1),
                    shipped: rows.text(0, 2),
                    slot: rows.text(0, 3),
                    closed: rows.text(0, 4),
                });
                feedback(link, true);
            }
        }
        Some(Err(e)) => fail(link, &e.message),
        None => {}
    }
}

/// A probe came true: everything the peer had committed when asked is
/// applied here. Record that moment, its WAL position and its frontier
/// (now usable for causal stability), and what it has received from us.
fn record_probe(name: &str, probe: &Probe, flushed: u64) {
    let (ops, bytes) = probe
        .shipped
        .as_deref()
        .and_then(|s| s.split_once(' '))
        .and_then(|(o, b)| Some((o.parse::<i64>().ok()?, b.parse::<i64>().ok()?)))
        .unzip();
    let _ = Spi::run_with_args(
        &pull::status_update(
            "caught_up_at = $2::timestamptz, peer_lsn = $3::pg_lsn,
             confirmed_lsn = greatest(s.confirmed_lsn, $4::pg_lsn),
             lag_bytes = greatest(pg_wal_lsn_diff($3::pg_lsn, $4::pg_lsn), 0)::bigint, lag_seconds = 0,
             frontier = coalesce($5::jsonb, s.frontier), frontier_at = CASE WHEN $5 IS NULL THEN s.frontier_at ELSE $2::timestamptz END,
             ops_shipped = coalesce($6, s.ops_shipped), bytes_shipped = coalesce($7, s.bytes_shipped),
             their_slot = coalesce($8, s.their_slot),
             closed_tables = CASE WHEN $5 IS NULL THEN s.closed_tables ELSE $9::jsonb END",
        ),
        &[
            name.into(),
            probe.at.as_str().into(),
            pull::fmt_lsn(probe.lsn).into(),
            pull::fmt_lsn(flushed).into(),
            probe.frontier.clone().into(),
            ops.into(),
            bytes.into(),
            probe.slot.clone().into(),
            probe.closed.clone().into(),
        ],
    );
}
