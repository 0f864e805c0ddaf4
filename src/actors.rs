//! Actors (SPEC section 5): devices with registered ed25519 keys, and
//! revocation. The registry (`converge.actor`) changes only through ops of
//! nodes (`register_actor`, `revoke_actor`), which replicate like any op, so
//! every node ends with the same registry; and whatever order ops and
//! registry changes arrive in, a node's applied ops of an actor are those
//! the final registry admits: a registry change re-checks the actor's ops in
//! the log, takes out the ones no longer admitted (their rows rebuilt,
//! rebuild.rs) and applies those now admitted.
//!
//! Registry ops target `converge.actor`, key `{"actor": name}`, column
//! `public_key` (an lwwreg of `{"key": hex, "after": n}`: ops with counters
//! above n must be signed; concurrent registrations of one actor settle on
//! one everywhere) or `revoked_after` (8 bytes, a big-endian counter; the
//! least of all revocations holds).

use crate::errors::{raise, OrRaise};
use crate::rebuild::Excluded;
use converge_core::signing::{parse_public_key, VerifyingKey};
use converge_core::types::LwwReg;
use converge_core::{Crdt, Json, Op};
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The `target_table` of registry ops.
pub const REGISTRY: &str = "converge.actor";
const KEY_COLUMN: &str = "public_key";
const REVOKE_COLUMN: &str = "revoked_after";

fn fail(e: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("converge actors: {e}"))
}

struct Entry {
    key: Option<VerifyingKey>,
    /// Ops with counters up to this one were made before the key was
    /// registered (as the registering node had them): they need none.
    signed_after: i64,
    revoked_after: Option<i64>,
}

/// The registry as one batch reads it, and the node names (a node's own
/// ops are trusted through its replication connection: never checked).
#[derive(Default)]
pub struct Registry {
    actors: HashMap<String, Entry>,
    nodes: HashSet<String>,
    /// Whether any op was ever superseded by a repair (repair.rs): only
    /// then is each op looked up there.
    pub repairs: bool,
}

impl Registry {
    /// Read once per batch, under `lock_registry`, as last committed (not
    /// as a REPEATABLE READ snapshot saw it: a registry change that
    /// committed since counts); no statement when nothing is registered.
    pub fn load() -> Registry {
        if !crate::direct::any_row(c"actor", c"actor_pkey", None) {
            return Registry::default();
        }
        let mut r = Registry { actors: HashMap::new(), nodes: Registry::load_nodes(), repairs: false };
        crate::direct::reading(c"actor", |heap| {
            let att = |name: &str| crate::direct::attnum(heap, name);
            let (a_actor, a_key, a_after) = (att("actor"), att("key_state"), att("revoked_after"));
            let newest = &raw mut pg_sys::SnapshotSelfData;
            crate::direct::index_scan(heap, c"actor_pkey", &[], newest, pg_sys::ScanDirection::ForwardScanDirection, |slot| {
                let get = |a| crate::direct::column(slot, a);
                let actor = get(a_actor).and_then(|d| unsafe { String::from_datum(d, false) });
                let key = get(a_key).and_then(|d| unsafe { Vec::<u8>::from_datum(d, false) }).and_then(|s| key_of_state(&s));
                let revoked_after = get(a_after).and_then(|d| unsafe { i64::from_datum(d, false) });
                if let Some(actor) = actor {
                    let (key, signed_after) = match key {
                        Some(k) => (parse_public_key(&k.key).ok(), k.after),
                        None => (None, 0),
                    };
                    r.actors.insert(actor, Entry { key, signed_after, revoked_after });
                }
                true
            })
        });
        r
    }

    /// Why the registry does not admit `op` (None: admitted). In the order
    /// of SPEC section 3: authenticate, then authorize.
    pub fn refuse(&self, op: &Op) -> Option<&'static str> {
        if self.nodes.contains(&op.actor) {
            return None;
        }
        let entry = self.actors.get(&op.actor)?;
        let must_sign = op.counter() as i64 > entry.signed_after;
        if let Some(reason) = entry.key.as_ref().filter(|_| must_sign).and_then(|k| op.check_signature(k).reason()) {
            return Some(reason);
        }
        match entry.revoked_after {
            Some(after) if op.counter() as i64 > after => Some("revoked"),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }
}

/// Batches that read the registry (shared) and registry changes
/// (exclusive) take turns, to the end of their transactions: a batch either
/// reads a change or is in the log when the change re-checks it.
/// Under a peer's origin (the worker, which applies every peer's batches)
/// the exclusive lock is not waited for long: a client transaction left
/// open after an apply_batch must not stall replication; the batch fails
/// (55P03, "canceling statement due to lock timeout") and the worker tries
/// it again.
pub fn lock_registry(exclusive: bool) {
    if !(exclusive && crate::apply::under_peer_origin()) {
        crate::locks::xact(crate::locks::Lock::Registry, exclusive);
        return;
    }
    waiting_at_most_2s(|| crate::locks::xact(crate::locks::Lock::Registry, true));
}

/// Take a lock with `take`, queued like any lock (so holders that come
/// later wait behind it), but for 2 s at most (lock_timeout, or less if a
/// shorter one is set): then 55P03, and the worker tries the batch again.
/// (No SQL: this runs before the apply sets its own search_path, and may
/// run with a peer's trust.)
pub fn waiting_at_most_2s(take: impl FnOnce()) {
    let old = unsafe {
        let v = pg_sys::GetConfigOption(c"lock_timeout".as_ptr(), false, false);
        if v.is_null() { c"0".to_owned() } else { std::ffi::CStr::from_ptr(v).to_owned() }
    };
    let set = |v: &std::ffi::CStr| {
        crate::spi::set_guc(c"lock_timeout", v, pg_sys::GucContext::PGC_USERSET, pg_sys::GucAction::GUC_ACTION_LOCAL)
    };
    // A shorter limit already set (the worker's apply_lock_timeout) stays.
    let shorter = old.to_str().ok().and_then(|v| v.parse::<i64>().ok()).is_some_and(|ms| ms > 0 && ms < 2000);
    if shorter {
        return take();
    }
    set(c"2s");
    take();
    set(&old);
}

/// Why a registry op is not valid (None: valid). Only nodes change the
/// registry: an op that did not come through a peer's replication is
/// `not_authority`.
pub fn registry_op_error(from_peer: bool, key: Option<&Value>, column: Option<&str>, delta: Option<&[u8]>) -> Option<String> {
    if !from_peer {
        return Some("not_authority".into());
    }
    let actor = key.and_then(|k| k.as_object()).filter(|m| m.len() == 1).and_then(|m| m.get("actor")).and_then(Value::as_str);
    if actor.is_none_or(|a| converge_core::validate_actor(a).is_err()) {
        return Some("invalid_key".into());
    }
    let delta = delta.unwrap_or_default();
    let ok = match column {
        Some(KEY_COLUMN) => key_of_state(delta).is_some(),
        Some(REVOKE_COLUMN) => cutoff(delta).is_some(),
        _ => return Some("unknown_column".into()),
    };
    (!ok).then(|| "invalid_delta".into())
}

/// A registration: the key, and the counter after which ops need it.
#[derive(PartialEq)]
struct Registered {
    key: Vec<u8>,
    after: i64,
}

/// The registration an lwwreg state of `public_key` holds, if valid: its
/// value is `{"key": "<hex>", "after": n}`.
fn key_of_state(state: &[u8]) -> Option<Registered> {
    let reg = converge_core::decode::<LwwReg>(state).ok()?;
    let v = reg.value()?.to_value();
    let key = hex_decode(v.get("key")?.as_str()?)?;
    let after = v.get("after")?.as_i64().filter(|a| *a >= 0)?;
    if v.as_object()?.len() != 2 {
        return None;
    }
    parse_public_key(&key).ok()?;
    Some(Registered { key, after })
}

fn cutoff(delta: &[u8]) -> Option<i64> {
    let v = i64::from_be_bytes(delta.try_into().ok()?);
    (v >= 0).then_some(v)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Merge registry ops (actor, column, delta), already through the dedupe
/// gate, into the registry, then re-check the ops of every actor whose
/// entry changed. As converge's owner.
pub fn merge_registry_ops(ops: Vec<(String, String, Vec<u8>)>) {
    let mut changed = Vec::new();
    crate::security::as_owner(|| {
        for (actor, column, delta) in ops {
            if merge_one(&actor, &column, &delta) && !changed.contains(&actor) {
                changed.push(actor);
            }
        }
    });
    for actor in changed {
        reevaluate(&actor);
    }
}

/// Merge a peer's registry, read as rows (actor, key_state hex,
/// revoked_after): a node that copies a peer's state instead of its ops
/// (rejoin.rs) gets the registry that way, its ops being compacted there.
pub fn merge_registry_state(rows: Vec<(Option<String>, Option<String>, Option<String>)>) {
    let mut ops = Vec::new();
    for (actor, key_state, after) in rows {
        let Some(actor) = actor else { continue };
        if let Some(state) = key_state.as_deref().and_then(hex_decode).filter(|s| key_of_state(s).is_some()) {
            ops.push((actor.clone(), KEY_COLUMN.to_string(), state));
        }
        if let Some(after) = after.and_then(|a| a.parse::<i64>().ok()).filter(|a| *a >= 0) {
            ops.push((actor, REVOKE_COLUMN.to_string(), after.to_be_bytes().to_vec()));
        }
    }
    if !ops.is_empty() {
        lock_registry(true);
        // The rejoin's transaction ends under the peer's origin: ops this
        // admits again wait for the worker's next transaction.
        PARKING.with(|p| p.set(true));
        merge_registry_ops(ops);
        PARKING.with(|p| p.set(false));
    }
}

thread_local! {
    /// Readmitted ops go to converge.pending_ops instead of being applied now.
    static PARKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Merge one registry op; whether the actor's entry changed.
fn merge_one(actor: &str, column: &str, delta: &[u8]) -> bool {
    let (state, revoked) = Spi::connect_mut(|c| {
        let t = c.update("SELECT key_state, revoked_after FROM converge.actor WHERE actor = $1 FOR UPDATE", None, &[actor.into()])?;
        if t.is_empty() {
            return Ok((None, None));
        }
        let row = t.first();
        Ok::<_, pgrx::spi::SpiError>((row.get::<Vec<u8>>(1)?, row.get::<i64>(2)?))
    })
    .unwrap_or_else(|e| fail(e));
    let (new_state, new_revoked) = if column == KEY_COLUMN {
        let mut reg = state.as_deref().map(|s| converge_core::decode::<LwwReg>(s).unwrap_or_else(|e| fail(e.message))).unwrap_or_default();
        reg.merge(&converge_core::decode::<LwwReg>(delta).unwrap_or_else(|e| fail(e.message)));
        (Some(converge_core::encode(&reg)), revoked)
    } else {
        let at = cutoff(delta).unwrap_or_else(|| fail("invalid cut-off"));
        (state.clone(), Some(revoked.map_or(at, |r| r.min(at))))
    };
    let key = new_state.as_deref().and_then(key_of_state);
    let old_key = state.as_deref().and_then(key_of_state);
    let (public, after) = key.as_ref().map(|k| (k.key.clone(), k.after)).unzip();
    Spi::run_with_args(
        "INSERT INTO converge.actor (actor, key_state, public_key, signed_after, revoked_after) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (actor) DO UPDATE SET key_state = EXCLUDED.key_state, public_key = EXCLUDED.public_key,
                                               signed_after = EXCLUDED.signed_after, revoked_after = EXCLUDED.revoked_after,
                                               changed_at = now()",
        &[actor.into(), new_state.into(), public.into(), after.into(), new_revoked.into()],
    )
    .unwrap_or_else(|e| fail(e));
    key != old_key || new_revoked != revoked
}

/// Re-check every op of `actor` in the log against the registry: applied
/// ops it no longer admits are taken out (rows rebuilt); ops rejected for
/// their signature that it admits now (another key won) are applied.
fn reevaluate(actor: &str) {
    let registry = Registry::load();
    if registry.nodes.contains(actor) {
        return;
    }
    let rows = crate::security::as_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT seq, op_id, target_table, target_key, target_column, schema_version, coalesce(epoch, 0),
                        coalesce(deps, '{}'), delta, signature, outcome = 'applied', origin
                   FROM converge.op_log
                  WHERE actor = $1 AND (outcome = 'applied' OR (outcome = 'rejected' AND reason IN ('unsigned', 'bad_signature')
                                                                 -- (not one a repair gave up)
                                                                 AND NOT EXISTS (SELECT 1 FROM converge.superseded s WHERE s.op_id = op_log.op_id)
                                                                 -- (nor one refused since for another reason:
                                                                 -- client_writes_off, say, before a reopening)
                                                                 AND NOT EXISTS (SELECT 1 FROM converge.op_log later
                                                                                  WHERE later.op_id = op_log.op_id AND later.seq > op_log.seq
                                                                                    AND later.outcome IN ('rejected', 'quarantined')
                                                                                    AND later.reason NOT IN ('unsigned', 'bad_signature'))))
                  ORDER BY seq",
                None,
                &[actor.into()],
            )?
            .map(|r| {
                let op = Op {
                    op_id: r.get::<String>(2)?.unwrap_or_default(),
                    actor: actor.to_string(),
                    target_table: r.get::<String>(3)?.unwrap_or_default(),
                    target_key: Json::from_value(&r.get::<JsonB>(4)?.map(|j| j.0).unwrap_or(Value::Null)),
                    target_column: r.get::<String>(5)?.unwrap_or_default(),
                    schema_version: r.get::<i32>(6)?.unwrap_or(0),
                    epoch: r.get::<i64>(7)?.unwrap_or(0),
                    deps: r.get::<Vec<String>>(8)?.unwrap_or_default(),
                    delta: r.get::<Vec<u8>>(9)?.unwrap_or_default(),
                    signature: r.get::<Vec<u8>>(10)?,
                };
                let origin = r.get::<String>(12)?.unwrap_or_default();
                Ok((r.get::<i64>(1)?.unwrap_or(0), op, r.get::<bool>(11)?.unwrap_or(false), origin))
            })
            .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
        })
    })
    .unwrap_or_else(|e| fail(e));
    let applied: HashSet<String> = rows.iter().filter(|r| r.2).map(|r| r.1.op_id.clone()).collect();
    // A REPEATABLE READ snapshot may miss ops of the actor that a batch
    // committed before this change took the registry's lock.
    let newest: HashSet<u64> = crate::local_ops::applied_between(actor, 1, i64::MAX).into_iter().map(|c| c as u64).collect();
    let seen: HashSet<u64> = rows.iter().filter(|r| r.2).map(|r| r.1.counter()).collect();
    if newest != seen {
        raise(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            format!("could not re-check the ops of \"{actor}\": some were applied after this transaction's snapshot"),
        );
    }
    let mut excluded = Vec::new();
    // (With whether a client sent it here, READMIT_CLIENTS: see `admit`.)
    let mut readmit: BTreeMap<u64, (Op, bool)> = BTreeMap::new();
    for (seq, op, is_applied, origin) in rows {
        match (is_applied, registry.refuse(&op)) {
            (true, Some(reason)) => excluded.push(Excluded {
                seq,
                table: op.target_table.clone(),
                key: op.target_key.to_value(),
                reason: reason.to_string(),
            }),
            (false, None) if !applied.contains(&op.op_id) => admit(&mut readmit, op, from_client(&origin)),
            _ => {}
        }
    }
    // Ops of the actor waiting for their deps go through the checks again
    // (an op past a cut-off waits for nothing any more: it is rejected).
    for (op, origin) in take_pending(actor) {
        admit(&mut readmit, op, from_client(&origin));
    }
    warn_if_compacted(actor, &registry);
    crate::rebuild::exclude(&excluded, "rejected");
    let (clients, others): (Vec<(Op, bool)>, Vec<(Op, bool)>) = readmit.into_values().partition(|(_, c)| *c);
    for (ops, origin) in [(others, "reverify"), (clients, READMIT_CLIENTS)] {
        let ops: Vec<Op> = ops.into_iter().map(|(op, _)| op).collect();
        if ops.is_empty() {
            continue;
        }
        if crate::apply::under_peer_origin() || PARKING.with(|p| p.get()) {
            // Applied here they would never be shipped: the worker applies
            // them next, in a transaction of its own (apply::note_deferred).
            park(&ops, origin);
        } else {
            crate::apply::apply_decoded(ops, origin);
        }
    }
}

/// The origin of ops a client sent here that a registry change takes back
/// in: unlike "reverify" (ops a peer delivered), they are still checked
/// against the table's client writes (apply/entry.rs), which may have been
/// turned off since they arrived.
pub const READMIT_CLIENTS: &str = "reverify:client";

/// Take `op` back in unless a peer's delivery of it is already taken: an
/// op any peer delivered is that peer's, as it delivered it (a client's
/// copy of the same op id, later or earlier, is not).
fn admit(readmit: &mut BTreeMap<u64, (Op, bool)>, op: Op, client: bool) {
    if !(client && matches!(readmit.get(&op.counter()), Some((_, false)))) {
        readmit.insert(op.counter(), (op, client));
    }
}

/// Whether an op logged or waiting under `origin` came from a client here
/// (not through a peer's replication, nor readmitted as a peer's).
fn from_client(origin: &str) -> bool {
    !origin.starts_with("peer:") && origin != "reverify"
}

/// Put ops in converge.pending_ops with nothing missing: the next retry
/// applies them (or buffers them again if their deps are not applied).
fn park(ops: &[Op], origin: &str) {
    let encoded: Vec<Vec<u8>> = ops.iter().map(Op::encode).collect();
    crate::security::as_owner(|| {
        Spi::run_with_args(
            "INSERT INTO converge.pending_ops (op_id, op, missing, origin)
             SELECT (x.o).op_id, x.o, '{}', $2 FROM (SELECT converge.op_decode(b) AS o FROM unnest($1::bytea[]) b) x
                 ON CONFLICT DO NOTHING",
            &[encoded.into(), origin.into()],
        )
    })
    .unwrap_or_else(|e| fail(e));
}

/// The ops of `actor` waiting in converge.pending_ops, taken out of it.
fn take_pending(actor: &str) -> Vec<(Op, String)> {
    crate::security::as_owner(|| {
        Spi::connect_mut(|c| {
            c.update(
                "DELETE FROM converge.pending_ops q WHERE (q.op).actor = $1 RETURNING converge.op_encode(q.op), q.origin",
                None,
                &[actor.into()],
            )?
            .map(|r| {
                let op = r.get::<Vec<u8>>(1)?.map(|b| Op::decode(&b).unwrap_or_else(|e| fail(e.message)));
                Ok(op.map(|op| (op, r.get::<String>(2).ok().flatten().unwrap_or_default())))
            })
            .filter_map(Result::transpose)
            .collect::<Result<Vec<(Op, String)>, pgrx::spi::SpiError>>()
        })
    })
    .unwrap_or_else(|e| fail(e))
}

/// A revocation reaches back to the compaction horizon only (rebuild.rs).
fn warn_if_compacted(actor: &str, registry: &Registry) {
    let Some(after) = registry.actors.get(actor).and_then(|e| e.revoked_after) else { return };
    let horizon = crate::security::as_owner(|| {
        crate::spi::read_one::<i64>("SELECT upto FROM converge.log_horizon WHERE actor = $1", &[actor.into()])
    });
    if let Some(upto) = horizon.filter(|u| *u > after) {
        pgrx::warning!(
            "ops {}:{}..{}:{} were compacted into row bases before this revocation reached this node and stay applied",
            actor,
            after + 1,
            actor,
            upto
        );
    }
}

/// Record a registry op of this node (and merge it): its op_id. The
/// caller holds the registry's lock.
fn record(actor: &str, column: &str, delta: Vec<u8>) -> String {
    let me = crate::node::local_node();
    // Merged (and rows rebuilt) before the node's op counter is taken: the
    // counter lock is held to commit, and local writers need it to commit
    // while holding rows a rebuild may wait for.
    merge_registry_ops(vec![(actor.to_string(), column.to_string(), delta.clone())]);
    crate::local_ops::log_control_op(&me, REGISTRY, json!({ "actor": actor }), column, delta)
}

/// Refuse a node's name: nodes are trusted through their connection.
fn check_not_node(actor: &str) {
    converge_core::validate_actor(actor).or_raise();
    lock_registry(true);
    if Registry::load_nodes().contains(actor) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("\"{actor}\" is a node of this mesh: a node's own ops are trusted through its replication connection"),
        );
    }
}

/// This node's name and its peers'.
pub fn node_names() -> HashSet<String> {
    Registry::load_nodes()
}

impl Registry {
    fn load_nodes() -> HashSet<String> {
        crate::security::as_owner(|| {
            Spi::connect(|c| {
                c.select("SELECT name FROM converge.node_identity UNION SELECT name FROM converge.peer", None, &[])
                    .map(|t| t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
            })
        })
        .unwrap_or_else(|e| fail(e))
    }
}

/// `converge.register_actor(actor, public_key)`: from now on every op of
/// `actor` must carry an ed25519 signature by this key, on every node.
/// Returns the registry op's id (NULL when the actor already has this key).
#[pg_extern(volatile, parallel_unsafe)]
fn register_actor(actor: Option<&str>, public_key: Option<&[u8]>) -> Option<String> {
    // Not STRICT: a NULL would read as "already registered".
    let (actor, public_key) = (crate::errors::required(actor, "actor"), crate::errors::required(public_key, "public_key"));
    check_not_node(actor);
    parse_public_key(public_key).or_raise();
    let me = crate::node::local_node();
    let current = crate::security::as_owner(|| {
        crate::spi::read_one::<Vec<u8>>("SELECT key_state FROM converge.actor WHERE actor = $1", &[actor.into()])
    });
    if let Some(state) = &current {
        match key_of_state(state) {
            Some(k) if k.key == public_key => return None,
            Some(_) => raise_hint_55000(actor),
            None => {}
        }
    }
    // Ops this node has of the actor without a gap were made before the
    // key existed: they stay valid on every node (they may be compacted
    // anywhere already); every later one must be signed.
    let after = crate::local_ops::contiguous(actor);
    let floor = current.as_deref().and_then(|s| converge_core::decode::<LwwReg>(s).ok()).and_then(|r| r.max_timestamp().cloned());
    let ts = crate::node::timestamp(&me, floor.as_ref());
    let delta = LwwReg::default().assign(Json::from_value(&json!({ "key": hex(public_key), "after": after })), ts);
    Some(record(actor, KEY_COLUMN, converge_core::encode(&delta)))
}

fn raise_hint_55000(actor: &str) -> ! {
    crate::errors::raise_hint(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("actor \"{actor}\" already has another key"),
        "A key is an actor's identity: give the device with a new key a new actor name (and revoke the old one).",
    )
}

/// `converge.revoke_actor(actor, after)`: ops of `actor` with counters
/// above `after` (default: the highest counter of it applied here) are
/// rejected with `revoked` on every node, also those applied already.
#[pg_extern(volatile, parallel_unsafe)]
fn revoke_actor(actor: Option<&str>, after: default!(Option<i64>, "NULL")) -> String {
    // Not STRICT (after is optional), so a NULL actor reaches here.
    let actor = crate::errors::required(actor, "actor");
    check_not_node(actor);
    let after = after.unwrap_or_else(|| {
        crate::security::as_owner(|| {
            crate::spi::read_one::<i64>(
                "SELECT greatest((SELECT contiguous FROM converge.actor_frontier WHERE actor = $1),
                                 (SELECT max(counter) FROM converge.op_log WHERE actor = $1 AND outcome = 'applied'), 0)",
                &[actor.into()],
            )
        })
        .unwrap_or(0)
    });
    if after < 0 {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("after must be 0 or more, not {after}"));
    }
    // Ops folded into bases cannot be taken out (rebuild.rs): a cut-off
    // behind this node's horizon would leave them here and not elsewhere.
    let horizon = crate::security::as_owner(|| {
        crate::spi::read_one::<i64>("SELECT upto FROM converge.log_horizon WHERE actor = $1", &[actor.into()])
    });
    if let Some(upto) = horizon.filter(|u| after < *u) {
        crate::errors::raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("ops of \"{actor}\" through counter {upto} are compacted here and cannot be taken out"),
            format!("Revoke after {upto} or later; undo earlier ops with new ops."),
        );
    }
    record(actor, REVOKE_COLUMN, after.to_be_bytes().to_vec())
}

/// The bytes an actor signs for an op (`Op::signing_bytes`), from the op's
/// binary form; `converge.op_signing_bytes(op)` wraps it.
#[pg_extern(immutable, strict, parallel_safe)]
fn op_signing_bytes_of(op: &[u8]) -> Vec<u8> {
    Op::decode(op).or_raise().signing_bytes()
}
