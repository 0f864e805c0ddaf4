//! Ops that wait and the locks that order appliers: converge.pending_ops
//! (ops missing deps) and its retries, the op_id bucket locks, and client
//! ops left for a transaction outside a peer's replication origin.

use super::*;

/// Whether converge.pending_ops holds any op (a probe, no statement: most
/// batches find it empty and skip the statements that read it).
pub(super) fn pending_any() -> bool {
    crate::direct::any_row(c"pending_ops", c"pending_ops_pkey", None)
}

/// Take the locks of the op_id buckets (64 per database, locks.rs),
/// sorted, exclusive where `excl` says so and shared otherwise: see step 3
/// of apply_classified.
pub(super) fn lock_buckets(ids: &[String], excl: &[bool]) {
    let mut buckets: BTreeMap<u32, bool> = BTreeMap::new();
    for (id, e) in ids.iter().zip(excl) {
        // A hash every process computes alike (FNV-1a), whatever its build.
        let b = (crate::replication::peers::stable_hash(id) & 63) as u32;
        *buckets.entry(b).or_default() |= *e;
    }
    for (b, e) in buckets {
        crate::locks::xact(crate::locks::Lock::OpIds(b), e);
    }
}

/// Whether this transaction applies a peer's changes (a replication origin
/// is set up: the worker, `sync`). Nothing it writes is shipped again.
pub fn under_peer_origin() -> bool {
    unsafe { pg_sys::replorigin_session_origin != pg_sys::InvalidRepOriginId as pg_sys::RepOriginId }
}

/// `converge.under_peer_origin()`: for `converge.retry_pending`, which
/// leaves ops that did not come from a peer for a transaction of their own
/// then, so that this node forwards them once they apply (internal).
#[pg_extern(volatile, parallel_restricted, name = "under_peer_origin")]
pub(super) fn under_peer_origin_sql() -> bool {
    under_peer_origin()
}

/// `converge.applying_trusted()`: whether converge is applying what came
/// through a peer's replication (or retrying on the worker's behalf). For
/// `converge.retry_pending`, which leaves the ops that came from peers to
/// such a retry: applied for any other caller, a peer's own ops would be
/// rejected as a client's ops under a node's name (internal).
#[pg_extern(volatile, parallel_restricted, name = "applying_trusted")]
pub(super) fn applying_trusted_sql() -> bool {
    super::classify::trusted()
}

thread_local! {
    /// A transaction under a peer's origin left ready ops that did not come
    /// from a peer in converge.pending_ops: the worker retries them right after
    /// (take_deferred).
    static DEFERRED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether ops were left for a retry outside the peer's origin (and forget it).
pub fn take_deferred() -> bool {
    DEFERRED.with(|d| d.replace(false))
}

/// Note, under a peer's origin, that ops of clients (or readmitted ones)
/// wait in converge.pending_ops for a transaction of their own.
pub fn note_deferred() {
    if !under_peer_origin() || !pending_any() {
        return;
    }
    let waiting = crate::spi::prepared(
        "SELECT EXISTS (SELECT 1 FROM converge.pending_ops q WHERE q.origin NOT LIKE 'peer:%'
                          AND NOT EXISTS (SELECT 1 FROM unnest(q.missing) d WHERE NOT converge.dep_done(d)))",
        &[],
        |t| t.first().get_one::<bool>(),
    )
    .unwrap_or_else(|e| spi_err(e));
    if waiting == Some(true) {
        DEFERRED.with(|d| d.set(true));
    }
}

/// Pending ops whose deps are all applied, applied now (those the acting
/// role may write; the others wait for a role that may). Under a peer's
/// origin only ops that came from peers: an op a client sent here must be
/// applied where this node ships it (what is written under a peer's origin
/// never is), so it waits for the worker's next transaction.
pub(super) fn retry_pending() -> Vec<Outcome> {
    if !pending_any() {
        return Vec::new();
    }
    crate::spi::prepared("SELECT op_id, outcome, reason FROM converge.retry_pending()", &[], |t| {
        Ok(t.map(|r| {
            (
                r.get::<String>(1).ok().flatten().unwrap_or_default(),
                r.get::<String>(2).ok().flatten().unwrap_or_default(),
                r.get::<String>(3).ok().flatten(),
            )
        })
        .collect())
    })
    .unwrap_or_else(|e| spi_err(e))
}

