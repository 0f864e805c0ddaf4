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

/// A copy of an op that waits in pending here: its deps (sorted), whether
/// a peer sent it, and the rest of it (target, its key as rows are told
/// apart: 1e2 and 100 are one key, versions, delta).
pub(super) struct Waiting {
    deps: Vec<String>,
    from_peer: bool,
    rest: (String, String, String, i32, i64, Vec<u8>),
}

impl Waiting {
    /// Whether `it` may take this copy's place: the same op chained again
    /// under other deps (a client sends it again after the op it waited
    /// for was refused). Only a peer's apply replaces a peer's copy.
    pub(super) fn gives_way_to(&self, it: &Item) -> bool {
        let mut deps = deps_of(it);
        deps.sort();
        let rest = (
            it.table.clone().unwrap_or_default(),
            super::keys::row_identity(it.key.as_ref().unwrap_or(&serde_json::Value::Null)),
            it.column.clone().unwrap_or_default(),
            it.version.unwrap_or_default(),
            it.epoch.unwrap_or_default(),
            it.delta.clone().unwrap_or_default(),
        );
        deps != self.deps && rest == self.rest && (trusted() || !self.from_peer)
    }
}

/// The copies of the ops among `ids` that wait in pending here.
pub(super) fn waiting_copies(ids: &[String]) -> HashMap<String, Waiting> {
    crate::spi::prepared(
        "SELECT q.op_id, (q.op).deps, q.origin LIKE 'peer:%', (q.op).target_table, (q.op).target_key,
                (q.op).target_column, (q.op).schema_version, (q.op).epoch, (q.op).delta
           FROM converge.pending_ops q
          WHERE EXISTS (SELECT 1 FROM converge.pending_ops) AND q.op_id = ANY ($1)",
        &[ids.to_vec().into()],
        |t| {
            let mut out = HashMap::new();
            for r in t {
                let Some(id) = r.get::<String>(1)? else { continue };
                let mut deps: Vec<String> = r.get::<Vec<Option<String>>>(2)?.unwrap_or_default().into_iter().flatten().collect();
                deps.sort();
                let rest = (
                    r.get::<String>(4)?.unwrap_or_default(),
                    super::keys::row_identity(&r.get::<pgrx::JsonB>(5)?.map(|j| j.0).unwrap_or_default()),
                    r.get::<String>(6)?.unwrap_or_default(),
                    r.get::<i32>(7)?.unwrap_or_default(),
                    r.get::<i64>(8)?.unwrap_or_default(),
                    r.get::<Vec<u8>>(9)?.unwrap_or_default(),
                );
                out.insert(id, Waiting { deps, from_peer: r.get::<bool>(3)?.unwrap_or(false), rest });
            }
            Ok(out)
        },
    )
    .unwrap_or_else(|e| spi_err(e))
}

/// Of the fresh ops of a client's batch that must wait (`waiting`), those
/// behind an op of the same batch that this node refused (rejected, also
/// as `client_writes_off`: `closed`, or quarantined under an older schema
/// version), directly or through another
/// such op; each with its reason, `dependency_rejected: <dep>`. They are
/// rejected rather than buffered: waiting, they would wait for ever, and a
/// client sends them again after the ops the server has (converge-client
/// does, under the same op_ids). An op refused in an earlier batch is not
/// counted: under a forged envelope it would hold back another actor's
/// ops, and the client that made it knows. Peers' batches wait as before.
pub(super) fn orphans<'a>(items: &[Item], closed: &[&Item], fresh: &[&'a Item], waiting: &HashSet<usize>) -> Vec<(&'a Item, String)> {
    let refused = |i: &Item| i.bad.is_some() || i.quarantine.as_deref() == Some("old_schema");
    let alive: HashSet<&str> = fresh.iter().filter_map(|i| i.op_id.as_deref()).collect();
    let mut dead: HashSet<String> = items
        .iter()
        .filter(|i| refused(i))
        .chain(closed.iter().copied())
        .filter_map(|i| i.op_id.clone())
        .filter(|id| !alive.contains(id.as_str()))
        .collect();
    if dead.is_empty() {
        return Vec::new();
    }
    // One refused here now and applied before (sent again) holds nothing back.
    let ids: Vec<String> = dead.iter().cloned().collect();
    let done = deps_done(&ids);
    dead.retain(|d| !done.contains(d));
    let held: Vec<&Item> = fresh.iter().copied().filter(|i| waiting.contains(&i.n)).collect();
    let mut out: Vec<(&Item, String)> = Vec::new();
    loop {
        let before = out.len();
        for it in &held {
            let id = it.op_id.clone().unwrap_or_default();
            if dead.contains(&id) {
                continue;
            }
            if let Some(d) = deps_of(it).into_iter().find(|d| dead.contains(d)) {
                dead.insert(id);
                out.push((*it, format!("dependency_rejected: {d}")));
            }
        }
        if out.len() == before {
            return out;
        }
    }
}
