//! Repair (SPEC section 5): `converge.repair(supersedes, reason)` records
//! an op of this node that names ops to exclude. It replicates like any op;
//! wherever it applies, the named ops get the outcome `superseded` (their
//! rows rebuilt without them, rebuild.rs), and a named op that arrives
//! later is `superseded` on arrival. The repair op stays in the log with
//! its reason in `reason`: the history says what was repaired and why.
//!
//! A repair op targets `converge.repair`, key `{"reason": text}`, column
//! `''`, and its delta is a gset (binary form) of the superseded op_ids.
//! `converge.superseded` keeps which op each repair excluded.

use crate::errors::raise;
use crate::rebuild::Excluded;
use converge_core::types::GSet;
use converge_core::parse_op_id;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::{json, Value};

/// The `target_table` of repair ops.
pub const REPAIR: &str = "converge.repair";

fn fail(e: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("converge repair: {e}"))
}

/// The op_ids a repair op's delta names, if it is valid.
fn named(delta: &[u8]) -> Option<Vec<String>> {
    let set = converge_core::decode::<GSet>(delta).ok()?;
    let ids = set.elements();
    (!ids.is_empty() && ids.iter().all(|id| parse_op_id(id).is_some())).then_some(ids)
}

/// Why a repair op is not valid (None: valid). Only nodes repair: an op
/// that did not come through a peer's replication is `not_authority`.
pub fn repair_op_error(from_peer: bool, key: Option<&Value>, column: Option<&str>, delta: Option<&[u8]>) -> Option<String> {
    if !from_peer {
        return Some("not_authority".into());
    }
    let reason_ok = key.and_then(|k| k.as_object()).is_some_and(|m| m.len() == 1 && m.get("reason").is_some_and(Value::is_string));
    if !reason_ok {
        return Some("invalid_key".into());
    }
    if column != Some("") {
        return Some("unknown_column".into());
    }
    named(delta.unwrap_or_default()).is_none().then(|| "invalid_delta".into())
}

/// Whether any op was ever superseded (a probe, once per batch).
pub fn any_superseded() -> bool {
    crate::direct::any_row(c"superseded", c"superseded_pkey", None)
}

/// The repair that excluded `op_id`, if any (read as last committed, like
/// the registry: under the registry's lock, actors::lock_registry). No
/// statement.
pub fn superseded_by(op_id: &str) -> Option<String> {
    let mut by = None;
    crate::direct::reading(c"superseded", |heap| {
        let att = crate::direct::attnum(heap, "repair_id");
        let key = [crate::direct::Key::eq(1, pg_sys::F_TEXTEQ.into(), op_id.into_datum().expect("text"))];
        let newest = &raw mut pg_sys::SnapshotSelfData;
        crate::direct::index_scan(heap, c"superseded_pkey", &key, newest, pg_sys::ScanDirection::ForwardScanDirection, |slot| {
            by = crate::direct::column(slot, att).and_then(|d| unsafe { String::from_datum(d, false) });
            false
        })
    });
    by
}

/// Merge repair ops (their op_id, reason and delta), through the dedupe
/// gate already: record what each supersedes, give those of them applied
/// here the outcome `superseded` and rebuild their rows, and keep each
/// repair's reason on its log row. The caller holds the registry's lock
/// (exclusive).
pub fn merge_repair_ops(ops: Vec<(String, String, Vec<u8>)>) {
    let mut superseded = Vec::new();
    crate::security::as_owner(|| {
        for (repair_id, reason, delta) in ops {
            let ids = named(&delta).unwrap_or_else(|| fail("invalid repair op"));
            Spi::run_with_args(
                "UPDATE converge.op_log SET reason = $2 WHERE op_id = $1 AND outcome = 'applied'",
                &[repair_id.as_str().into(), reason.into()],
            )
            .unwrap_or_else(|e| fail(e));
            superseded.extend(ids.into_iter().map(|id| (id, repair_id.clone())));
        }
    });
    supersede(superseded);
}

/// Record these (op_id, repair_id) pairs, exclude the ops applied here
/// (rows rebuilt), and let their actors' frontiers go past them.
pub fn supersede(pairs: Vec<(String, String)>) {
    if pairs.is_empty() {
        return;
    }
    let (ids, repairs): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
    let excluded = crate::security::as_owner(|| {
        Spi::run_with_args(
            "INSERT INTO converge.superseded (op_id, repair_id) SELECT u.id, u.r FROM unnest($1::text[], $2::text[]) u(id, r)
                 ON CONFLICT DO NOTHING",
            &[ids.clone().into(), repairs.clone().into()],
        )
        .unwrap_or_else(|e| fail(e));
        let by: std::collections::HashMap<&String, &String> = ids.iter().zip(&repairs).collect();
        let mut excluded = applied_of(&ids);
        for e in excluded.iter_mut() {
            e.reason = by.get(&e.reason).map(|r| r.to_string()).unwrap_or_default();
        }
        excluded
    });
    // This node's own op keeps its counter used (the next local op must not
    // take it again): its frontier row says so when the log no longer can.
    if let Some(me) = crate::node::local_node_if_set() {
        let mine: Option<i64> = ids.iter().filter_map(|id| parse_op_id(id)).filter(|(a, _)| *a == me).map(|(_, c)| c as i64).max();
        if let Some(c) = mine {
            crate::security::as_owner(|| {
                Spi::run_with_args(
                    "INSERT INTO converge.actor_frontier AS f (actor, contiguous) VALUES ($1, $2)
                         ON CONFLICT (actor) DO UPDATE SET contiguous = greatest(f.contiguous, EXCLUDED.contiguous)",
                    &[me.as_str().into(), c.into()],
                )
            })
            .unwrap_or_else(|e| fail(e));
        }
    }
    crate::rebuild::exclude(&excluded, "superseded");
    let actors: std::collections::BTreeSet<&str> = ids.iter().filter_map(|id| parse_op_id(id)).map(|(a, _)| a).collect();
    crate::security::as_owner(|| {
        for a in actors {
            crate::apply::advance_frontier(a, &[]);
        }
    });
}

/// The log rows of these ops that are applied here (reason: the op_id).
/// A REPEATABLE READ snapshot that misses one applied since is refused
/// (40001), as for registry changes.
fn applied_of(ids: &[String]) -> Vec<Excluded> {
    let found = Spi::connect(|c| {
        c.select(
            "SELECT l.seq, l.target_table, l.target_key, l.op_id FROM converge.op_log l
               JOIN unnest($1::text[]) u(id) ON l.actor = converge.op_id_actor(u.id) AND l.counter = converge.op_id_counter(u.id)
              WHERE l.outcome = 'applied' AND l.target_table IS NOT NULL",
            None,
            &[ids.to_vec().into()],
        )?
        .map(|r| {
            Ok(Excluded {
                seq: r.get::<i64>(1)?.unwrap_or(0),
                table: r.get::<String>(2)?.unwrap_or_default(),
                key: r.get::<JsonB>(3)?.map(|j| j.0).unwrap_or(Value::Null),
                reason: r.get::<String>(4)?.unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
    })
    .unwrap_or_else(|e| fail(e));
    let seen: std::collections::HashSet<&str> = found.iter().map(|e| e.reason.as_str()).collect();
    let missed = ids.iter().filter(|id| !seen.contains(id.as_str())).any(|id| {
        parse_op_id(id).is_some_and(|(a, c)| !crate::local_ops::applied_between(a, c as i64, c as i64).is_empty())
    });
    if missed {
        raise(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            "could not repair: some of the ops were applied after this transaction's snapshot",
        );
    }
    // Registry and repair ops are never taken out (they have no rows).
    found.into_iter().filter(|e| !e.table.starts_with("converge.")).collect()
}

/// `converge.repair(supersedes, reason)`: exclude these ops on every node
/// (outcome `superseded`, their rows rebuilt without them). Returns the
/// repair op's id.
#[pg_extern(volatile, parallel_unsafe)]
fn repair(supersedes: Option<Vec<Option<String>>>, reason: Option<&str>) -> String {
    // Not STRICT: a NULL argument is an error, not a repair that did nothing.
    let reason = crate::errors::required(reason, "reason");
    let ids: Vec<String> = crate::errors::required(supersedes, "supersedes").into_iter().flatten().collect();
    if ids.is_empty() {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "supersedes must name at least one op");
    }
    if let Some(bad) = ids.iter().find(|id| parse_op_id(id).is_none()) {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("\"{}\" is not an op_id (actor:counter)", bad.escape_default()));
    }
    if reason.trim().is_empty() {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "a repair needs a reason (the history shows it)");
    }
    let me = crate::node::local_node();
    crate::actors::lock_registry(true);
    check_repairable(&ids);
    warn_running_totals(&ids);
    let mut set = GSet::default();
    for id in &ids {
        set.add(id);
    }
    let delta = converge_core::encode(&set);
    // Rows are rebuilt before the node's op counter is taken (it is held to
    // commit, and local writers need it to commit while holding rows a
    // rebuild waits for), under a placeholder for the repair's id (the
    // registry's lock keeps other repairs out until commit).
    let placeholder = format!("{me}:repairing");
    merge_repair_ops(vec![(placeholder.clone(), reason.to_string(), delta.clone())]);
    let op_id = crate::local_ops::log_control_op(&me, REPAIR, json!({ "reason": reason }), "", delta);
    crate::security::as_owner(|| {
        for sql in [
            "UPDATE converge.superseded SET repair_id = $2 WHERE repair_id = $1",
            "UPDATE converge.op_log SET reason = $2 WHERE outcome = 'superseded' AND reason = $1",
        ] {
            Spi::run_with_args(sql, &[placeholder.as_str().into(), op_id.as_str().into()]).unwrap_or_else(|e| fail(e));
        }
        Spi::run_with_args(
            "UPDATE converge.op_log SET reason = $2 WHERE op_id = $1 AND outcome = 'applied'",
            &[op_id.as_str().into(), reason.into()],
        )
        .unwrap_or_else(|e| fail(e));
    });
    // Ops that waited for a superseded op wait no more.
    crate::security::as_owner(|| Spi::run("SELECT count(*) FROM converge.retry_pending()")).unwrap_or_else(|e| fail(e));
    op_id
}

/// Say (WARNING) which named counter ops a repair cannot take out of their
/// values: a counter op carries its actor's running totals of the parts it
/// changed (a pncounter's p or n, a bcounter's p, n or a transfer), so a
/// later op of the same actor on the same row and column that carries one
/// of those totals (at least as high), applied here and not named too,
/// still carries the change (docs/coordination.md, "What a repair cannot
/// undo"). Named ops kept aside here count too: their change was never
/// merged, but a later op's total brought it in. The ops are superseded
/// all the same.
fn warn_running_totals(ids: &[String]) {
    // (named op, its column's type, its delta, a later op, that op's delta)
    type Pair = (String, String, Vec<u8>, String, Vec<u8>);
    let pairs: Vec<Pair> = crate::security::as_owner(|| {
        Spi::connect(|c| {
            c.select(
                "WITH named AS (
                     -- one delivery per named op: its applied one, else its
                     -- newest quarantined one (it passed every check), else
                     -- its newest rejected one (its rows may differ, a forged
                     -- or invalid one among them); not a void of it (logged
                     -- under its id). Each half by its own index.
                     SELECT DISTINCT ON (l.op_id) l.*
                       FROM (SELECT l.* FROM converge.op_log l
                               JOIN unnest($1::text[]) u(id) ON l.actor = converge.op_id_actor(u.id) AND l.counter = converge.op_id_counter(u.id)
                              WHERE l.outcome = 'applied'
                             UNION ALL
                             SELECT l.* FROM converge.op_log l WHERE l.op_id = ANY ($1) AND l.outcome IN ('rejected', 'quarantined')) l
                      WHERE l.target_table IS DISTINCT FROM 'converge.void'
                      ORDER BY l.op_id, l.outcome = 'applied' DESC, l.outcome = 'quarantined' DESC, l.seq DESC)
                 SELECT l.op_id, r.crdt_columns ->> l.target_column, l.delta, m.op_id, m.delta
                   FROM named l
                   -- (by name, not to_regclass: a rejected delivery keeps the
                   -- table name it was sent with, which may not parse)
                   JOIN converge.replicated r ON (SELECT format('%I.%I', n.nspname, k.relname) FROM pg_catalog.pg_class k
                                                   JOIN pg_catalog.pg_namespace n ON n.oid = k.relnamespace
                                                  WHERE k.oid = r.table_name) = l.target_table
                   JOIN converge.op_log m ON m.actor = l.actor AND m.counter > l.counter AND m.outcome = 'applied'
                                         AND m.target_table = l.target_table AND m.target_key = l.target_key
                                         AND m.target_column = l.target_column AND m.op_id <> ALL ($1)
                  WHERE r.crdt_columns ->> l.target_column IN ('gcounter', 'pncounter', 'bcounter')
                  ORDER BY l.op_id, m.counter DESC",
                None,
                &[ids.to_vec().into()],
            )?
            .map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<Vec<u8>>(3)?.unwrap_or_default(),
                    r.get::<String>(4)?.unwrap_or_default(),
                    r.get::<Vec<u8>>(5)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<Pair>, pgrx::spi::SpiError>>()
        })
    })
    .unwrap_or_else(|e| fail(e));
    // (Pairs come grouped by named op, later ops newest first.)
    for group in pairs.chunk_by(|a, b| a.0 == b.0) {
        let (op, ty, delta, _, _) = &group[0];
        let changed = totals(ty, delta);
        let carries = |later: &[u8]| totals(ty, later).iter().any(|(path, n)| changed.get(path).is_some_and(|m| n >= m));
        let Some((_, _, _, later, _)) = group.iter().find(|p| carries(&p.4)) else { continue };
        let undo = match ty.as_str() {
            "gcounter" => "A gcounter never counts down: a column whose counts need correcting is a pncounter.",
            _ => "Undo the change with a compensating op (the opposite incr or decr).",
        };
        crate::errors::warn_hint(
            format!("the change of counter op {op} likely stays in its row's value: op {later}, a later op of the same actor on that row, carries a total at least as high"),
            format!("A counter op holds its actor's running totals: a repair takes a change out only with the later ops that carry it. {undo}"),
        );
    }
}

/// The running totals a counter delta of type `ty` carries, each named by
/// its path in the value's text form (`counts.a`, `p.a`, `t.a.b`, ...).
fn totals(ty: &str, delta: &[u8]) -> std::collections::BTreeMap<String, i128> {
    let text = for_crdt_type!(ty, T => converge_core::decode::<T>(delta).ok().map(|v| converge_core::to_text(&v)), _ => None);
    let mut paths = std::collections::BTreeMap::new();
    fn walk(v: &Value, at: String, out: &mut std::collections::BTreeMap<String, i128>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, x)| walk(x, format!("{at}{}{k}", if at.is_empty() { "" } else { "\u{0}" }), out)),
            Value::Number(n) => {
                if let Some(n) = n.as_u64().map(i128::from).or_else(|| n.as_i64().map(i128::from)) {
                    out.insert(at, n);
                }
            }
            _ => {}
        }
    }
    if let Some(v) = text.and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
        walk(&v, String::new(), &mut paths);
    }
    paths
}

/// Refuse what a repair here could not do alike everywhere: an op of a
/// node (this one or a peer) that is not applied here (its own node applies
/// it without asking, so only an op every node can have seen is repaired),
/// and an op folded into a base here (compaction: it cannot be taken out).
fn check_repairable(ids: &[String]) {
    let nodes = crate::actors::node_names();
    for id in ids {
        let Some((actor, counter)) = parse_op_id(id) else { continue };
        let counter = counter as i64;
        let applied = !crate::local_ops::applied_between(actor, counter, counter).is_empty();
        if nodes.contains(actor) && !applied {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("op {id} of node \"{actor}\" is not applied here: only a node's ops this node has can be repaired"),
            );
        }
        let horizon = crate::security::as_owner(|| {
            crate::spi::read_one::<i64>("SELECT upto FROM converge.log_horizon WHERE actor = $1", &[actor.into()])
        });
        if horizon.is_some_and(|upto| counter <= upto) && !applied {
            crate::errors::raise_hint(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("op {id} is compacted here and cannot be taken out"),
                "Undo its effect with a new op.",
            );
        }
    }
}
