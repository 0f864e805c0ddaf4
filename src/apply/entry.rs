//! The ways into the batch apply: `converge.apply_batch` (and
//! `apply_ops`, its body for `retry_pending`), which reads the
//! `converge.op[]` it is given field by field, `apply_decoded` (ops a
//! peer sent, decoded in Rust: the worker and `sync()` apply them with no
//! SQL statement in between) and `apply_again` (an op kept aside, from
//! its log row: replay.rs, coordination.rs). All build the batch's items
//! and run the same steps.

use super::{apply_classified, classify, node_actors, retry_pending, trusted, Item, Outcome, Target};
use converge_core::Op;
use pgrx::prelude::*;
use std::collections::HashMap;

/// `converge.apply_batch(ops converge.op[], origin text)`: declared in
/// sql/ops.sql (its argument type is created there). Not STRICT: a NULL
/// origin is an error rather than a batch quietly dropped.
#[pg_extern(sql = false, volatile, parallel_unsafe)]
fn apply_batch(
    ops: Option<pgrx::AnyArray>,
    origin: Option<String>,
) -> TableIterator<'static, (name!(op_id, String), name!(outcome, String), name!(reason, Option<String>))> {
    // "reverify" is converge's own origin for ops a registry change takes
    // back in (their clocks are not judged again, run_as), and "local"
    // marks this node's own ops (add_peer tells a node's ops from a
    // client's by it, peers.rs): a caller's is only claimed, as a caller's
    // "peer:" origin is.
    let origin = origin.map(|o| if o.starts_with("reverify") || o == "local" { format!("claimed {o}") } else { o });
    TableIterator::new(run_batch(ops, origin, Some(true)))
}

/// `converge.apply_ops(ops, origin, top_level)`: apply_batch's body, called
/// by `retry_pending` with `top_level` false (no retry of its own).
#[pg_extern(sql = false, volatile, parallel_unsafe)]
fn apply_ops(
    ops: Option<pgrx::AnyArray>,
    origin: Option<String>,
    top_level: Option<bool>,
) -> TableIterator<'static, (name!(op_id, String), name!(outcome, String), name!(reason, Option<String>))> {
    TableIterator::new(run_batch(ops, origin, top_level))
}

/// A NULL or empty batch decides nothing (not even the pending ops' retry).
fn run_batch(ops: Option<pgrx::AnyArray>, origin: Option<String>, top_level: Option<bool>) -> Vec<Outcome> {
    let null = |what: &str| -> ! {
        crate::errors::raise(pgrx::PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("the {what} of a batch of ops must not be NULL"))
    };
    let origin = origin.unwrap_or_else(|| null("origin"));
    let top_level = top_level.unwrap_or_else(|| null("top_level"));
    let items = ops.map(|a| unsafe { items_of(a.datum()) }).unwrap_or_default();
    if items.is_empty() {
        return Vec::new();
    }
    run(items, &origin, top_level)
}

/// The fields of `converge.op` and their types, in the order `Item` takes them.
const OP_FIELDS: [(&str, pg_sys::Oid); 10] = [
    ("op_id", pg_sys::TEXTOID),
    ("actor", pg_sys::TEXTOID),
    ("target_table", pg_sys::TEXTOID),
    ("target_key", pg_sys::JSONBOID),
    ("target_column", pg_sys::TEXTOID),
    ("schema_version", pg_sys::INT4OID),
    ("epoch", pg_sys::INT8OID),
    ("deps", pg_sys::TEXTARRAYOID),
    ("delta", pg_sys::BYTEAOID),
    ("signature", pg_sys::BYTEAOID),
];

/// The items of a `converge.op[]` datum, read straight from its elements
/// (no statement, no arrays per field). A target key keeps its jsonb datum
/// too, which the log row reuses when the key is already canonical.
unsafe fn items_of(array: pg_sys::Datum) -> Vec<Item> {
    let arr = pg_sys::pg_detoast_datum(array.cast_mut_ptr()) as *mut pg_sys::ArrayType;
    let elem = (*arr).elemtype;
    let (mut len, mut byval, mut align) = (0i16, false, 0 as std::ffi::c_char);
    pg_sys::get_typlenbyvalalign(elem, &mut len, &mut byval, &mut align);
    let (mut elems, mut nulls, mut n) = (std::ptr::null_mut(), std::ptr::null_mut(), 0i32);
    pg_sys::deconstruct_array(arr, elem, len as i32, byval, align, &mut elems, &mut nulls, &mut n);
    let desc = pg_sys::lookup_rowtype_tupdesc(elem, -1);
    let natts = (*desc).natts as usize;
    let attrs = (*desc).attrs.as_slice(natts);
    let at: Vec<usize> = OP_FIELDS
        .iter()
        .map(|(f, ty)| {
            attrs
                .iter()
                .position(|a| !a.attisdropped && pgrx::name_data_to_str(&a.attname) == *f && a.atttypid == *ty)
                .unwrap_or_else(|| {
                    crate::errors::raise(pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("converge.op lacks field {f} of its type"))
                })
        })
        .collect();
    let (mut values, mut isnull) = (vec![pg_sys::Datum::from(0usize); natts], vec![true; natts]);
    let mut items = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        if *nulls.add(i) {
            items.push(Item { n: i, ..Item::default() });
            continue;
        }
        let td = pg_sys::pg_detoast_datum((*elems.add(i)).cast_mut_ptr()) as pg_sys::HeapTupleHeader;
        let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
        tuple.t_len = pgrx::varsize_any(td as *const pg_sys::varlena) as u32;
        tuple.t_data = td;
        pg_sys::heap_deform_tuple(&mut tuple, desc, values.as_mut_ptr(), isnull.as_mut_ptr());
        let field = |k: usize| (values[at[k]], isnull[at[k]], attrs[at[k]].atttypid);
        let (key, key_null, _) = field(3);
        let (deps, deps_null, _) = field(7);
        items.push(Item {
            n: i,
            op_id: value(field(0)),
            actor_given: value(field(1)),
            table: value(field(2)),
            key: value::<crate::jsonb::Jb>(field(3)).map(|j| j.0),
            // (Fields of a composite are never toasted out of line; kept
            // out of the log should one ever be.)
            key_datum: (!key_null && !pgrx::varlena::varatt_is_1b_e(key.cast_mut_ptr())).then_some(key),
            column: value(field(4)),
            version: value(field(5)),
            epoch: value(field(6)),
            deps: (!deps_null).then(|| deps_of_array(deps)),
            delta: value(field(8)),
            signature: value(field(9)),
            ..Item::default()
        });
    }
    if (*desc).tdrefcount >= 0 {
        pg_sys::DecrTupleDescRefCount(desc);
    }
    items
}

/// A field of a deformed `converge.op` (datum, null, type) as `T`.
unsafe fn value<T: FromDatum>((datum, null, ty): (pg_sys::Datum, bool, pg_sys::Oid)) -> Option<T> {
    T::from_polymorphic_datum(datum, null, ty)
}

/// An op's deps (text[]) as the envelope reads them: a multidimensional
/// array is no list of op_ids (one None marks it invalid).
unsafe fn deps_of_array(d: pg_sys::Datum) -> Vec<Option<String>> {
    let arr = pg_sys::pg_detoast_datum(d.cast_mut_ptr()) as *mut pg_sys::ArrayType;
    if (*arr).ndim > 1 {
        return vec![None];
    }
    <Vec<Option<String>>>::from_polymorphic_datum(pg_sys::Datum::from(arr), false, pg_sys::TEXTARRAYOID).unwrap_or_default()
}

/// Apply ops a peer sent (decoded from its slot) as
/// `converge.apply_batch(ops, origin)` would, with no SQL in between.
pub fn apply_decoded(ops: Vec<Op>, origin: &str) -> Vec<Outcome> {
    run(items_of_ops(ops), origin, true)
}

/// Ops kept aside applied again where they came from (`converge.replay`,
/// and the ops `set_schema_version` or a freeze's release lets through):
/// a peer's delivery (origin `peer:X`) as that peer's, which the caller
/// checked it may ask for; anything else as a client's, logged `replay`.
/// A top-level apply either way, as any other: its deps' locks taken, the
/// pending ops it unblocks retried.
pub(super) fn again(items: Vec<Item>, origin: &str) -> Vec<Outcome> {
    if origin.starts_with("peer:") {
        super::from_peer(|| run(items, origin, true))
    } else {
        run(items, "replay", true)
    }
}

/// Decoded ops kept aside, applied again (see `again`).
pub fn apply_again(ops: Vec<Op>, origin: &str) -> Vec<Outcome> {
    again(items_of_ops(ops), origin)
}

/// The items of decoded ops.
fn items_of_ops(ops: Vec<Op>) -> Vec<Item> {
    ops.into_iter()
        .enumerate()
        .map(|(n, op)| Item {
            n,
            op_id: Some(op.op_id),
            actor_given: Some(op.actor),
            table: Some(op.target_table),
            key: Some(op.target_key.to_value()),
            column: Some(op.target_column),
            version: Some(op.schema_version),
            epoch: Some(op.epoch),
            deps: Some(op.deps.into_iter().map(Some).collect()),
            delta: Some(op.delta),
            signature: op.signature,
            ..Item::default()
        })
        .collect()
}

/// Classify the batch as the caller, check the caller's rights on every
/// target table, then apply as converge's owner. Only a batch that came
/// through a peer's replication has an origin `peer:<name>` (logged and
/// kept with what waits in pending, which a later retry trusts as that
/// peer's), or one converge applies again from such a row (replay,
/// `set_schema_version`, `set_authority`: the table owner's call): an SQL
/// caller's `peer:` origin is logged as `claimed peer:...`, and ops of any
/// other origin are never applied as a peer's.
pub(super) fn run(mut items: Vec<Item>, origin: &str, top_level: bool) -> Vec<Outcome> {
    // A handover changes how the ops after it are judged: they are
    // classified once it is merged (handover.rs). Only a peer's batch
    // carries one that can be applied.
    let mut out = Vec::new();
    let handover = |i: &Item| i.table.as_deref() == Some(crate::handover::HANDOVER);
    while let Some(at) = items.iter().position(handover).filter(|at| trusted() && at + 1 < items.len()) {
        let rest = items.split_off(at + 1);
        out.extend(run_part(std::mem::replace(&mut items, rest), origin, top_level));
    }
    out.extend(run_part(items, origin, top_level));
    out
}

fn run_part(items: Vec<Item>, origin: &str, top_level: bool) -> Vec<Outcome> {
    match (trusted(), origin.starts_with("peer:")) {
        (false, true) => run_as(items, &format!("claimed {origin}"), top_level),
        (true, false) => super::classify::as_client(|| run_as(items, origin, top_level)),
        _ => run_as(items, origin, top_level),
    }
}

fn run_as(mut items: Vec<Item>, origin: &str, top_level: bool) -> Vec<Outcome> {
    let t0 = std::time::Instant::now();
    let mut targets: Vec<Target> = Vec::new();
    let mut cache = HashMap::new();

    // 1. Validate every envelope and delta, without raising (as the caller:
    //    table names resolve with its search_path).
    let nodes = node_actors();
    // The actor registry and the repairs, read under their lock (exclusive
    // when the batch changes them); the registry not at all for a batch of
    // a peer's own ops only (node ops are never checked against it).
    // Every batch holds it (shared) while a repair or registry change may
    // exclude what it applies: either the change sees the batch's ops in
    // the log, or the batch sees the change.
    // (Requests, decisions and allocations exclude nothing: a shared lock.)
    let control = [crate::actors::REGISTRY, crate::repair::REPAIR, crate::epochs::FREEZE, crate::handover::HANDOVER];
    let changes = items.iter().any(|i| i.table.as_deref().is_some_and(|t| control.contains(&t)));
    crate::actors::lock_registry(changes);
    // Only a batch that came through a peer's replication is that peer's
    // (an origin named by an SQL caller proves nothing).
    let peer = if trusted() { origin.strip_prefix("peer:") } else { None };
    let mut registry = if changes || items.iter().any(|i| peer.is_none() || i.actor_given.as_deref() != peer) {
        crate::actors::Registry::load()
    } else {
        crate::actors::Registry::default()
    };
    registry.repairs = crate::repair::any_superseded();
    // (As the caller, trust is off: its search_path may run its own code.)
    let from_peer = trusted();
    // Clocks are judged where a client's op enters (classify::clock_error),
    // never again: not in a peer's batch, nor when a registry change takes
    // an actor's ops back in (they may have come from any peer).
    let entering = !from_peer && !origin.starts_with("reverify");
    // A table's client writes are checked for every op a client sent here,
    // also when a registry change takes it back in (actors.rs).
    let client = origin == crate::actors::READMIT_CLIENTS || (!from_peer && origin != "reverify");
    crate::security::as_caller(|| {
        for it in items.iter_mut() {
            classify(it, &mut targets, &mut cache, &nodes, &registry, (from_peer, entering, client));
        }
    });
    // A privilege error is the caller's, not an op's: the whole call fails
    // and nothing of it is recorded.
    for it in items.iter().filter(|i| i.bad.is_none()) {
        if it.coltype.as_deref() == Some("row") {
            targets[it.target.expect("classified")].row_ops = true;
        }
    }
    for t in &targets {
        use crate::security::{require_rights, DELETE, INSERT, UPDATE};
        require_rights(t.rel, &[(INSERT, "INSERT"), (UPDATE, "UPDATE")]);
        if from_peer {
            crate::security::require_peer_rights(t.rel, t.row_ops);
        }
        if t.row_ops {
            require_rights(t.rel, &[(DELETE, "DELETE (row ops delete rows)")]);
            if !from_peer {
                crate::security::require_rows_visible(t.rel);
            }
        }
    }
    crate::security::as_owner(|| {
        // First ops left pending although their deps are applied.
        let mut out = if top_level { retry_pending() } else { Vec::new() };
        out.extend(apply_classified(&items, &targets, origin, top_level, t0));
        out
    })
}
