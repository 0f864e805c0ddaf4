//! Voids: a client gives up an op a server refused, so that its counter
//! stops holding the actor's frontier (and the compaction of every later op
//! of the actor) back on every node.
//!
//! A void is an op under the refused op's id with target `converge.void`,
//! an empty key object, column `""` and an empty delta. It changes no row;
//! applied, it uses the counter up, and it travels as any applied op does.
//!
//! A real op beats a void. Two nodes can disagree on an op: one applied it
//! (the client lost that answer), the other refused it and then took the
//! client's void. Where the real op arrives after the void (from a peer, a
//! replay, a release of ops kept aside), the void gives way (its log row
//! becomes `superseded`, `void overtaken`) and the op is applied; if the
//! op's write then fails, the void is applied again. Where the void arrives
//! after the real op, it is a duplicate; so it is where the real op waits
//! here (pending) or where a peer's delivery of it was refused or kept
//! aside here (a peer applied it; that delivery stays listed in
//! `quarantine`, and is released or replayed as before).
//!
//! Compaction keeps voids (one row per op given up), so the real op can
//! take a void's place whenever it arrives; and `changes_since` gives, to a
//! caller past its counter, an op a void contested here (a void that came
//! after it, or gave way to it).

use super::*;

/// The target of a void.
pub const VOID: &str = "converge.void";
pub(crate) const VOID_OP: &str = "void";

/// The reason a void's log row gets when a real op takes its counter.
const OVERTAKEN: &str = "void overtaken";

/// The reason this node's op gets when a join takes a peer's void of it.
const TAKEN_AT_JOIN: &str = "void taken at join";

pub(super) fn is_void(it: &Item) -> bool {
    it.coltype.as_deref() == Some(VOID_OP)
}

/// Why a void is not valid (None: valid). Its shape first, then its
/// signature as any op of its actor; where it enters from a client, it
/// must name an op this node refused from a client (`refused_here`), and
/// the caller must be allowed to write what that op wrote.
pub(super) fn void_op_error(it: &Item, from_peer: bool, registry: &crate::actors::Registry) -> Option<String> {
    let empty_key = matches!(&it.key, Some(serde_json::Value::Object(m)) if m.is_empty());
    if !empty_key {
        return Some("invalid_key: a void's key is {}".into());
    }
    if it.column.as_deref() != Some("") {
        return Some("unknown_column".into());
    }
    if !it.delta.as_deref().unwrap_or_default().is_empty() {
        return Some("invalid_delta: a void's delta is empty".into());
    }
    if !deps_of(it).is_empty() {
        return Some("invalid_deps: a void has no deps".into());
    }
    if !registry.is_empty() {
        if let Some(reason) = registry.refuse(&as_op(it)) {
            return Some(reason.into());
        }
    }
    if from_peer {
        return None;
    }
    let id = it.op_id.as_deref().unwrap_or_default();
    let Some((table, column, request)) = refused_here(id) else {
        return Some(format!("nothing_to_void: no op {id} that this node refused from a client"));
    };
    let writes = match crate::security::lookup(&table) {
        // (An op of a table that does not resolve here could never apply.)
        None => true,
        Some(rel) if request => crate::security::may_update_column(rel, &column),
        Some(_) => crate::security::may_write(Some(&table), Some(&column)),
    };
    (!writes).then(|| format!("not_permitted: voiding {id} needs the rights its op needs"))
}

/// The table and column of the op `op_id` as this node refused it from a
/// client (rejected, or quarantined other than as `new_schema` or
/// `new_epoch`: those apply by themselves later), and whether it is a
/// request (it names the table it asks about).
fn refused_here(op_id: &str) -> Option<(String, String, bool)> {
    // (An op refused without a table or column names none: '' resolves to nothing.)
    let sql = "SELECT coalesce(CASE WHEN l.target_table = 'converge.request' THEN l.target_key ->> 'table' ELSE l.target_table END, ''),
                      coalesce(l.target_column, ''), coalesce(l.target_table = 'converge.request', false)
                 FROM converge.op_log l
                WHERE l.op_id = $1 AND l.outcome IN ('rejected', 'quarantined')
                  AND NOT (l.outcome = 'quarantined' AND l.reason IN ('new_schema', 'new_epoch'))
                  -- (a void refused here is no op refused: sent again, it is refused again)
                  AND l.target_table IS DISTINCT FROM 'converge.void'
                  AND l.origin NOT LIKE 'peer:%' AND l.origin NOT LIKE 'claimed peer:%'
                ORDER BY l.seq DESC LIMIT 1";
    crate::security::as_owner(|| {
        crate::spi::prepared(sql, &[op_id.into()], |mut t| {
            Ok(t.next().and_then(|r| Some((r.get::<String>(1).ok()??, r.get::<String>(2).ok()??, r.get::<bool>(3).ok()??))))
        })
    })
    .unwrap_or_else(|e| spi_err(e))
}

/// Of the voids among `ids`, those a peer's delivery of the real op holds
/// here (refused or kept aside): a duplicate of that op.
pub(super) fn held_by_peer_delivery(ids: &[String]) -> HashSet<String> {
    crate::spi::prepared(
        "SELECT DISTINCT l.op_id FROM converge.op_log l
          WHERE l.op_id = ANY ($1) AND l.outcome IN ('rejected', 'quarantined') AND l.origin LIKE 'peer:%'
            AND l.target_table IS DISTINCT FROM 'converge.void'",
        &[ids.to_vec().into()],
        |t| Ok(t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect()),
    )
    .unwrap_or_else(|e| spi_err(e))
}

/// Of these ops (none a void), the ones whose counter a void holds here.
pub(super) fn held_by_void(items: &[&Item]) -> HashSet<String> {
    if items.is_empty() {
        return HashSet::new();
    }
    let (actors, counters) = actors_and_counters(items);
    crate::spi::prepared(
        "SELECT l.op_id FROM unnest($1::text[], $2::int8[]) u(actor, counter)
           JOIN converge.op_log l ON l.actor = u.actor AND l.counter = u.counter
          WHERE l.outcome = 'applied' AND l.target_table = $3",
        &[actors.into(), counters.into(), VOID.into()],
        |t| Ok(t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect()),
    )
    .unwrap_or_else(|e| spi_err(e))
}

type Gated<'a> = (Vec<&'a Item>, Vec<&'a Item>, Vec<(&'a Item, String)>);

/// The dedupe gate and the merge (`merge::gate_and_merge`) for ops of
/// which those in `overtaking` take the place of a void applied here: the
/// voids give way first, and are applied again for ops whose write then
/// fails. An op that lost the gate to a void another session applied
/// meanwhile (it committed while this batch waited on the gate) takes the
/// void's place the same way.
pub(super) fn through_gate<'a>(ready: &[&'a Item], overtaking: &HashSet<String>, targets: &[Target], origin: &str) -> Gated<'a> {
    let among = |items: &[&'a Item], ids: &HashSet<String>| -> Vec<&'a Item> {
        items.iter().copied().filter(|i| ids.contains(i.op_id.as_deref().unwrap_or(""))).collect()
    };
    let refused = |r: &[(&'a Item, String)]| -> Vec<&'a Item> { r.iter().map(|(i, _)| *i).collect() };
    give_way(&among(ready, overtaking));
    let (mut won, mut lost, mut rejected) = gate_and_merge(ready, targets, origin);
    take_back(&among(&refused(&rejected), overtaking));
    let real: Vec<&'a Item> = lost.iter().copied().filter(|i| !is_void(i)).collect();
    let late = held_by_void(&real);
    if !late.is_empty() {
        let again = among(&real, &late);
        lost.retain(|i| !late.contains(i.op_id.as_deref().unwrap_or("")));
        give_way(&again);
        let (w, l, r) = gate_and_merge(&again, targets, origin);
        take_back(&among(&refused(&r), &late));
        won.extend(w);
        lost.extend(l);
        rejected.extend(r);
    }
    (won, lost, rejected)
}

/// The voids applied here at these ops' counters give way to them
/// (before the dedupe gate takes the counters).
fn give_way(items: &[&Item]) {
    set_aside(items, ("applied", "superseded"), "AND l.target_table = $3", Some(OVERTAKEN));
}

/// The voids that gave way to these ops, which their write then refused
/// (a constraint, a trigger): applied again, so that the counter stays
/// used up here as on the nodes the void reached.
fn take_back(items: &[&Item]) {
    set_aside(
        items,
        ("superseded", "applied"),
        "AND l.target_table = $3 AND l.reason = $5
         AND NOT EXISTS (SELECT 1 FROM converge.op_log a WHERE a.actor = l.actor AND a.counter = l.counter AND a.outcome = 'applied')",
        None,
    );
}

/// Move the void rows at these ops' counters from one outcome to another.
fn set_aside(items: &[&Item], (from, to): (&str, &str), cond: &str, reason: Option<&str>) {
    if items.is_empty() {
        return;
    }
    let (actors, counters) = actors_and_counters(items);
    run(
        &format!(
            "UPDATE converge.op_log l SET outcome = $6, reason = $4
               FROM unnest($1::text[], $2::int8[]) u(actor, counter)
              WHERE l.actor = u.actor AND l.counter = u.counter AND l.outcome = $7 {cond}"
        ),
        &[actors.into(), counters.into(), VOID.into(), reason.into(), OVERTAKEN.into(), to.into(), from.into()],
    );
}

/// A join (rejoin.rs, a node added as a peer) replaced this node's rows
/// with a peer's, whose frontier covers the counters these voids hold
/// there (each encoded, applied on the peer). Where this node had applied
/// the op itself, its effect went with the rows: the op gives way
/// (`superseded`, `void taken at join`) and the void is applied here, so
/// the node is as the peer is; the op takes the void's place again when it
/// arrives (a replay where it was refused), here as everywhere. A request
/// stays applied (the join merges requests, it does not replace them):
/// its void is then a duplicate, as before. Returns the op_ids of the
/// voids so applied.
pub(crate) fn take_at_join(voids: &[Vec<u8>], origin: &str) -> HashSet<String> {
    if voids.is_empty() {
        return HashSet::new();
    }
    const DECODED: &str = "SELECT o.* FROM unnest($1::bytea[]) b, LATERAL converge.op_decode(b) o";
    crate::security::as_owner(|| {
        let gone: Vec<String> = crate::spi::prepared(
            &format!(
                "UPDATE converge.op_log l SET outcome = 'superseded', reason = $2 FROM ({DECODED}) v
                  WHERE l.actor = v.actor AND l.counter = converge.op_id_counter(v.op_id) AND l.outcome = 'applied'
                    -- (a request's state is merged, not replaced, by a join:
                    -- it stays applied, and the void a duplicate)
                    AND l.target_table NOT LIKE 'converge.%'
                  RETURNING v.op_id"
            ),
            &[voids.to_vec().into(), TAKEN_AT_JOIN.into()],
            |t| Ok(t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect()),
        )
        .unwrap_or_else(|e| spi_err(e));
        if !gone.is_empty() {
            run(
                &format!(
                    "INSERT INTO converge.op_log (op_id, actor, counter, target_table, target_key, target_column, schema_version,
                                                  epoch, deps, delta, signature, outcome, origin)
                     SELECT DISTINCT ON (v.op_id) v.op_id, v.actor, converge.op_id_counter(v.op_id), v.target_table, v.target_key, v.target_column,
                            v.schema_version, v.epoch, v.deps, v.delta, v.signature, 'applied', $2
                       FROM ({DECODED}) v WHERE v.op_id = ANY ($3)"
                ),
                &[voids.to_vec().into(), origin.into(), gone.clone().into()],
            );
        }
        gone.into_iter().collect()
    })
}

/// The actors and counters of `items`, as two arrays for unnest.
fn actors_and_counters(items: &[&Item]) -> (Vec<String>, Vec<i64>) {
    items.iter().map(|i| (i.actor.clone().unwrap_or_default(), i.counter.unwrap_or_default())).unzip()
}
