//! The ways into the batch apply: `converge.apply_ops_core` (the body of
//! `apply_batch`, fed arrays by its SQL wrapper) and `apply_decoded` (ops
//! a peer sent, decoded in Rust: the worker and `sync()` apply them with no
//! SQL statement, wrapper or array in between). Both build the batch's
//! items and run the same steps.

use super::{apply_classified, classify, node_actors, retry_pending, trusted, Item, Outcome, Target};
use converge_core::Op;
use pgrx::prelude::*;
use pgrx::JsonB;
use std::collections::HashMap;

/// The body of `converge.apply_batch` for one batch (see sql/ops.sql for the
/// SQL wrapper that unpacks `converge.op[]` into these arrays).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn apply_ops_core(
    op_ids: Vec<Option<String>>,
    actors: Vec<Option<String>>,
    tables: Vec<Option<String>>,
    keys: Vec<Option<JsonB>>,
    columns: Vec<Option<String>>,
    versions: Vec<Option<i32>>,
    epochs: Vec<Option<i64>>,
    deps: Vec<Option<JsonB>>,
    deltas: pgrx::Array<&[u8]>,
    signatures: pgrx::Array<&[u8]>,
    origin: String,
    top_level: bool,
) -> TableIterator<'static, (name!(op_id, String), name!(outcome, String), name!(reason, Option<String>))> {
    let mut items: Vec<Item> = Vec::with_capacity(op_ids.len());
    let mut deps = deps.into_iter();
    let mut rest = (actors.into_iter(), tables.into_iter(), keys.into_iter(), columns.into_iter());
    let mut more = (
        versions.into_iter(),
        epochs.into_iter(),
        deltas.iter().map(|d| d.map(<[u8]>::to_vec)),
        signatures.iter().map(|d| d.map(<[u8]>::to_vec)),
    );
    for (n, op_id) in op_ids.into_iter().enumerate() {
        let d = deps.next().flatten().map(|j| match j.0 {
            serde_json::Value::Array(a) => a.into_iter().map(|v| v.as_str().map(String::from)).collect(),
            _ => vec![None],
        });
        items.push(Item {
            n,
            op_id,
            actor_given: rest.0.next().flatten(),
            table: rest.1.next().flatten(),
            key: rest.2.next().flatten().map(|j| j.0),
            column: rest.3.next().flatten(),
            version: more.0.next().flatten(),
            epoch: more.1.next().flatten(),
            deps: d,
            delta: more.2.next().flatten(),
            signature: more.3.next().flatten(),
            ..Item::default()
        });
    }
    TableIterator::new(run(items, &origin, top_level))
}

/// Apply ops a peer sent (decoded from its slot) as
/// `converge.apply_batch(ops, origin)` would, with no SQL in between.
pub fn apply_decoded(ops: Vec<Op>, origin: &str) -> Vec<Outcome> {
    let items = ops
        .into_iter()
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
        .collect();
    run(items, origin, true)
}

/// Classify the batch as the caller, check the caller's rights on every
/// target table, then apply as converge's owner. Only a batch that came
/// through a peer's replication has an origin `peer:<name>` (logged and
/// kept with what waits in pending, which a later retry trusts as that
/// peer's): an SQL caller's `peer:` origin is logged as `claimed peer:...`,
/// and ops of any other origin are never applied as a peer's.
fn run(items: Vec<Item>, origin: &str, top_level: bool) -> Vec<Outcome> {
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
    let control = [crate::actors::REGISTRY, crate::repair::REPAIR, crate::epochs::FREEZE];
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
    crate::security::as_caller(|| {
        for it in items.iter_mut() {
            classify(it, &mut targets, &mut cache, &nodes, &registry);
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
        if t.row_ops {
            require_rights(t.rel, &[(DELETE, "DELETE (row ops delete rows)")]);
        }
    }
    crate::security::as_owner(|| {
        // First ops left pending although their deps are applied.
        let mut out = if top_level { retry_pending() } else { Vec::new() };
        out.extend(apply_classified(&items, &targets, origin, top_level, t0));
        out
    })
}
