//! converge's own ops (the actor registry, repairs, freezes, requests,
//! decisions, allocations): how the apply classifies them, and how it
//! merges those that passed the gate. None of them targets a user's table.

use super::*;

/// Classify `it` if it is one of converge's own ops (and say so).
pub(super) fn classify_control(
    it: &mut Item,
    from_peer: bool,
    actor: &str,
    targets: &mut Vec<Target>,
    cache: &mut HashMap<String, Result<usize, &'static str>>,
    registry: &crate::actors::Registry,
) -> bool {
    let delta = it.delta.clone().unwrap_or_default();
    let (bad, coltype) = match it.table.as_deref() {
        Some(crate::actors::REGISTRY) => {
            (crate::actors::registry_op_error(from_peer, it.key.as_ref(), it.column.as_deref(), it.delta.as_deref()), REGISTRY_OP)
        }
        Some(crate::repair::REPAIR) => {
            (crate::repair::repair_op_error(from_peer, it.key.as_ref(), it.column.as_deref(), it.delta.as_deref()), REPAIR_OP)
        }
        Some(crate::epochs::FREEZE) => (freeze_op_error(it, from_peer, actor, targets, cache), FREEZE_OP),
        Some(crate::requests::REQUEST) => {
            let mut bad = crate::requests::request_op_error(from_peer, it.key.as_ref(), it.column.as_deref(), &delta);
            // Any actor may ask: a device's request is checked as its ops are.
            if bad.is_none() && !registry.is_empty() {
                bad = registry.refuse(&as_op(it)).map(String::from);
            }
            (bad, REQUEST_OP)
        }
        Some(crate::requests::DECISION) => {
            (crate::requests::decision_op_error(from_peer, it.key.as_ref(), it.column.as_deref(), &delta), DECISION_OP)
        }
        Some(crate::handover::HANDOVER) => (handover_op_error(it, from_peer, actor, targets, cache), HANDOVER_OP),
        Some(crate::allocation::ALLOCATION) => {
            (crate::allocation::allocation_op_error(from_peer, it.key.as_ref(), it.column.as_deref(), &delta), ALLOCATION_OP)
        }
        Some(super::voids::VOID) => (super::voids::void_op_error(it, from_peer, registry), super::voids::VOID_OP),
        _ => return false,
    };
    it.bad = bad;
    it.coltype = Some(coltype.into());
    true
}

/// The coltype of ops on the actor registry (actors.rs) and of repair ops
/// (repair.rs): they have no target table.
pub(crate) const REGISTRY_OP: &str = "registry";
pub(crate) const REPAIR_OP: &str = "repair";
pub(crate) const FREEZE_OP: &str = "freeze";
/// Requests, their decisions (requests.rs) and allocations (allocation.rs).
pub(crate) const REQUEST_OP: &str = "request";
pub(crate) const DECISION_OP: &str = "decision";
pub(crate) const ALLOCATION_OP: &str = "allocation";
/// Handovers of an authority (handover.rs).
pub(crate) const HANDOVER_OP: &str = "handover";

/// The envelope of a node's op about a replicated table (a freeze, a
/// handover): through a peer's replication, column `""`, key `{"table":
/// t, <field>: v}` with `t` a replicated table's name as ops give it.
/// The target, `t` and `v`; Err: the reason to reject it.
fn table_op<'a>(
    it: &'a Item,
    from_peer: bool,
    field: &str,
    targets: &mut Vec<Target>,
    cache: &mut HashMap<String, Result<usize, &'static str>>,
) -> Result<(usize, &'a String, &'a serde_json::Value), String> {
    if !from_peer {
        return Err("not_authority".into());
    }
    if it.column.as_deref() != Some("") {
        return Err("unknown_column".into());
    }
    let Some(serde_json::Value::Object(k)) = &it.key else { return Err("invalid_key".into()) };
    let (Some(serde_json::Value::String(table)), Some(v), 2) = (k.get("table"), k.get(field), k.len()) else {
        return Err("invalid_key".into());
    };
    let t = resolve(table, targets, cache)?;
    if &targets[t].name != table {
        return Err("invalid_key".into());
    }
    Ok((t, table, v))
}

/// Why a handover op is not valid (None: valid). Only a node makes one,
/// through its replication, for a table replicated here whose setting it
/// follows (`Authority::follows`; else this node's configuration differs:
/// `not_authority`, as for a freeze).
fn handover_op_error(
    it: &Item,
    from_peer: bool,
    actor: &str,
    targets: &mut Vec<Target>,
    cache: &mut HashMap<String, Result<usize, &'static str>>,
) -> Option<String> {
    let (t, table, column) = match table_op(it, from_peer, "column", targets, cache) {
        Ok(found) => found,
        Err(why) => return Some(why),
    };
    let (t, Some(column)) = (&targets[t], column.as_str()) else { return Some("invalid_key".into()) };
    let counter = it.counter.unwrap_or_default();
    let Some((h, _)) = crate::handover::Handover::read(it.delta.as_deref().unwrap_or_default(), actor, counter) else {
        return Some("invalid_delta".into());
    };
    let here = if column.is_empty() { t.table_authority.as_ref() } else { t.authority.get(column) };
    match here {
        Some(a) if a.follows(&h) => None,
        Some(a) => Some(format!("not_authority: the handover of {table} {column} does not follow the setting here ({})", a.node)),
        None => Some(format!("not_authority: {table} {column} has no authority here")),
    }
}

/// Why a freeze op is not valid (None: valid). Only the table's authority
/// freezes, through its replication; the key names a row of a replicated
/// table in canonical form; the delta says what the freeze includes.
fn freeze_op_error(
    it: &Item,
    from_peer: bool,
    actor: &str,
    targets: &mut Vec<Target>,
    cache: &mut HashMap<String, Result<usize, &'static str>>,
) -> Option<String> {
    let (t, _, row) = match table_op(it, from_peer, "key", targets, cache) {
        Ok(found) => found,
        Err(why) => return Some(why),
    };
    let t = &targets[t];
    // As before keys were respelled: a freeze made on a node of an earlier
    // release names its row as it was typed.
    if key_as_logged(row, &t.keys, &t.key_types, None).as_ref() != Some(row) {
        return Some("invalid_key".into());
    }
    if !t.table_authority.as_ref().is_some_and(|a| a.holds(actor, it.counter)) {
        // Came through replication (set_authority applies it once this
        // node knows its node as the table's authority: coordination.rs).
        return Some(format!("not_authority: {actor} is not the authority of {} here", t.name));
    }
    if it.epoch.unwrap_or(0) < 1 {
        return Some("invalid_epoch".into());
    }
    crate::epochs::Included::parse(it.delta.as_deref().unwrap_or_default()).is_none().then(|| "invalid_delta".into())
}


/// Merge converge's own ops among those that won the gate. Registry ops
/// change which ops of an actor are admitted: merged after the batch's
/// other ops, whose actors they then re-check (actors.rs).
pub(super) fn merge_control(won: &[&Item]) {
    let of = |kind: &'static str| won.iter().filter(move |i| i.coltype.as_deref() == Some(kind));
    let key_str = |i: &Item, f: &str| i.key.as_ref().and_then(|k| k.get(f)).and_then(|a| a.as_str()).unwrap_or_default().to_string();
    let registry: Vec<(String, String, Vec<u8>)> =
        of(REGISTRY_OP).map(|i| (key_str(i, "actor"), i.column.clone().unwrap_or_default(), i.delta.clone().unwrap_or_default())).collect();
    if !registry.is_empty() {
        crate::actors::merge_registry_ops(registry);
    }
    let repairs: Vec<(String, String, Vec<u8>)> =
        of(REPAIR_OP).map(|i| (i.op_id.clone().unwrap_or_default(), key_str(i, "reason"), i.delta.clone().unwrap_or_default())).collect();
    if !repairs.is_empty() {
        crate::repair::merge_repair_ops(repairs);
    }
    let freezes: Vec<(String, String, serde_json::Value, i64, Vec<u8>)> = of(FREEZE_OP)
        .map(|i| {
            let row = i.key.as_ref().and_then(|k| k.get("key")).cloned().unwrap_or_default();
            (i.op_id.clone().unwrap_or_default(), key_str(i, "table"), row, i.epoch.unwrap_or(0), i.delta.clone().unwrap_or_default())
        })
        .collect();
    if !freezes.is_empty() {
        crate::epochs::merge_freeze_ops(freezes);
    }
    let whole = |i: &&Item| (i.op_id.clone().unwrap_or_default(), i.key.clone().unwrap_or_default(), i.delta.clone().unwrap_or_default());
    let requests: Vec<(String, String, serde_json::Value, String, Vec<u8>)> = of(REQUEST_OP)
        .map(|i| {
            let (id, key, delta) = whole(i);
            (id, i.actor.clone().unwrap_or_default(), key, i.column.clone().unwrap_or_default(), delta)
        })
        .collect();
    if !requests.is_empty() {
        crate::requests::merge_request_ops(requests);
    }
    let decisions: Vec<(String, serde_json::Value, Vec<u8>)> = of(DECISION_OP).map(whole).collect();
    if !decisions.is_empty() {
        crate::requests::merge_decision_ops(decisions);
    }
    let handovers: Vec<(String, i64, String, String, Vec<u8>)> = of(HANDOVER_OP)
        .map(|i| (i.actor.clone().unwrap_or_default(), i.counter.unwrap_or_default(), key_str(i, "table"), key_str(i, "column"), i.delta.clone().unwrap_or_default()))
        .collect();
    if !handovers.is_empty() {
        crate::handover::merge_handover_ops(handovers);
    }
    let allocations: Vec<(String, serde_json::Value, Vec<u8>)> =
        of(ALLOCATION_OP).map(|i| (i.actor.clone().unwrap_or_default(), i.key.clone().unwrap_or_default(), i.delta.clone().unwrap_or_default())).collect();
    if !allocations.is_empty() {
        crate::allocation::merge_allocation_ops(allocations);
    }
}
