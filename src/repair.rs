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
    let mut excluded = Vec::new();
    crate::security::as_owner(|| {
        for (repair_id, reason, delta) in ops {
            let ids = named(&delta).unwrap_or_else(|| fail("invalid repair op"));
            Spi::run_with_args(
                "INSERT INTO converge.superseded (op_id, repair_id) SELECT u, $2 FROM unnest($1::text[]) u ON CONFLICT DO NOTHING",
                &[ids.clone().into(), repair_id.as_str().into()],
            )
            .unwrap_or_else(|e| fail(e));
            Spi::run_with_args(
                "UPDATE converge.op_log SET reason = $2 WHERE op_id = $1 AND outcome = 'applied'",
                &[repair_id.as_str().into(), reason.into()],
            )
            .unwrap_or_else(|e| fail(e));
            excluded.extend(applied_of(&ids, &repair_id));
        }
    });
    crate::rebuild::exclude(&excluded, "superseded");
}

/// The log rows of these ops that are applied here.
fn applied_of(ids: &[String], repair_id: &str) -> Vec<Excluded> {
    Spi::connect(|c| {
        c.select(
            "SELECT l.seq, l.target_table, l.target_key FROM converge.op_log l
               JOIN unnest($1::text[]) u(id) ON l.actor = converge.op_id_actor(u.id) AND l.counter = converge.op_id_counter(u.id)
              WHERE l.outcome = 'applied' AND l.target_table IS NOT NULL AND l.target_table NOT LIKE 'converge.%'",
            None,
            &[ids.to_vec().into()],
        )?
        .map(|r| {
            Ok(Excluded {
                seq: r.get::<i64>(1)?.unwrap_or(0),
                table: r.get::<String>(2)?.unwrap_or_default(),
                key: r.get::<JsonB>(3)?.map(|j| j.0).unwrap_or(Value::Null),
                reason: repair_id.to_string(),
            })
        })
        .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
    })
    .unwrap_or_else(|e| fail(e))
}

/// `converge.repair(supersedes, reason)`: exclude these ops on every node
/// (outcome `superseded`, their rows rebuilt without them). Returns the
/// repair op's id.
#[pg_extern(volatile, parallel_unsafe)]
fn repair(supersedes: Vec<Option<String>>, reason: &str) -> String {
    let ids: Vec<String> = supersedes.into_iter().flatten().collect();
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
    let mut set = GSet::default();
    for id in &ids {
        set.add(id);
    }
    let delta = converge_core::encode(&set);
    crate::actors::lock_registry(true);
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
    op_id
}
