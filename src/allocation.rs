//! Unique allocation (SPEC section 5): `converge.allocate(name, key)`,
//! served by one node per allocator (`converge.set_allocator`), gives each
//! idempotency key one number forever, distinct keys distinct numbers in
//! allocation order. Each allocation is an op of the allocator's node
//! (target `converge.allocation`, key `{"name", "idempotency_key"}`, delta
//! `{"value", "allocated_at"}`), kept in `converge.allocations` on every
//! node. The allocation and its op commit together, so a crash loses
//! neither or both; a retry after the crash finds the committed number.

use crate::errors::raise;
use crate::security::as_owner;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::{json, Value};

/// The `target_table` of allocation ops.
pub const ALLOCATION: &str = "converge.allocation";

fn fail(e: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("converge allocate: {e}"))
}

/// An allocation op's (name, idempotency_key) and (value, allocated_at).
fn parse(key: Option<&Value>, delta: &[u8]) -> Option<(String, String, i64, i64)> {
    let k = key?.as_object().filter(|k| k.len() == 2)?;
    let d: Value = serde_json::from_slice(delta).ok()?;
    let d = d.as_object().filter(|d| d.len() == 2)?;
    Some((
        k.get("name")?.as_str()?.to_string(),
        k.get("idempotency_key")?.as_str()?.to_string(),
        d.get("value")?.as_i64()?,
        crate::requests::micros(d.get("allocated_at"))?,
    ))
}

/// The node that serves allocator `name` here, if it is set.
fn allocator(name: &str) -> Option<(String, i64)> {
    as_owner(|| {
        Spi::connect(|c| {
            let t = c.select("SELECT node, start FROM converge.allocators WHERE name = $1", Some(1), &[name.into()])?;
            if t.is_empty() {
                return Ok(None);
            }
            let r = t.first();
            Ok(Some((r.get::<String>(1)?.unwrap_or_default(), r.get::<i64>(2)?.unwrap_or(1))))
        })
    })
    .unwrap_or_else(|e: pgrx::spi::SpiError| fail(e))
}

/// Why an allocation op is not valid: only nodes make them, and only a
/// peer's replication brings them. The allocator is not checked against
/// this node's setting: while an allocator moves, nodes that moved first
/// would reject the old one's allocations that the others keep.
pub fn allocation_op_error(from_peer: bool, key: Option<&Value>, column: Option<&str>, delta: &[u8]) -> Option<String> {
    if !from_peer {
        return Some("not_authority".into());
    }
    if column != Some("") {
        return Some("unknown_column".into());
    }
    parse(key, delta).is_none().then(|| "invalid_delta".into())
}

/// Record an allocation. One key has one number everywhere: should two
/// ever differ (an allocator moved before it had synced), the smaller one
/// is kept on every node, whatever the order they arrive in.
fn store(name: &str, key: &str, value: i64, at: i64, by: &str) {
    as_owner(|| {
        Spi::run_with_args(
            "INSERT INTO converge.allocations AS a (name, idempotency_key, value, allocated_at, allocated_by)
             VALUES ($1, $2, $3, pg_catalog.to_timestamp($4::float8 / 1e6), $5)
             ON CONFLICT (name, idempotency_key) DO UPDATE
                SET value = EXCLUDED.value, allocated_at = EXCLUDED.allocated_at, allocated_by = EXCLUDED.allocated_by
              WHERE EXCLUDED.value < a.value",
            &[name.into(), key.into(), value.into(), at.into(), by.into()],
        )
    })
    .unwrap_or_else(|e| fail(e));
}

/// Merge allocation ops (actor, key, delta) that passed the gate.
pub fn merge_allocation_ops(ops: Vec<(String, Value, Vec<u8>)>) {
    for (actor, key, delta) in ops {
        let (name, k, value, at) = parse(Some(&key), &delta).unwrap_or_else(|| fail("invalid allocation op"));
        store(&name, &k, value, at, &actor);
    }
}

/// One bigint read as converge's owner with a snapshot of its own (taken
/// after the allocator's lock, so it sees the allocation committed before).
fn fresh(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Option<i64> {
    as_owner(|| Spi::connect_mut(|c| {
        let t = c.update(sql, Some(1), args)?;
        if t.is_empty() { Ok(None) } else { t.first().get_one::<i64>() }
    }))
    .unwrap_or_else(|e: pgrx::spi::SpiError| fail(e))
}

/// `converge.allocate(name, idempotency_key)` (not granted to PUBLIC).
#[pg_extern(volatile, parallel_unsafe, name = "allocate")]
fn allocate_on(name: Option<&str>, idempotency_key: Option<&str>) -> i64 {
    let (Some(name), Some(key)) = (name, idempotency_key) else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "the allocator's name and the idempotency key must not be NULL")
    };
    let Some((node, start)) = allocator(name) else {
        crate::errors::raise_hint(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("no allocator named \"{name}\""),
            "Create it on every node with converge.set_allocator.",
        )
    };
    let me = crate::node::local_node();
    if node != me {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("allocator \"{name}\" is served by node \"{node}\", not by this node ({me})"),
        );
    }
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "converge.allocate runs in READ COMMITTED transactions only (it must see every number committed before it)",
        );
    }
    // One allocation of an allocator at a time, to the end of the
    // transaction: a second one with the same key waits, then reads the
    // first one's number (each statement below takes a new snapshot). The
    // op counter first: a decide function allocates while its request
    // holds it, and locks are always taken in that order.
    crate::local_ops::hold_counter();
    crate::local_ops::private_lock(c"allocators", name);
    let known = fresh(
        "SELECT value FROM converge.allocations WHERE name = $1 AND idempotency_key = $2",
        &[name.into(), key.into()],
    );
    if let Some(v) = known {
        // Committed, and maybe not yet on disk (durable.rs): a number
        // handed out survives a crash.
        crate::durable::flush_visible();
        return v;
    }
    let value = fresh("SELECT greatest(max(value) + 1, $2) FROM converge.allocations WHERE name = $1", &[name.into(), start.into()])
        .unwrap_or(start);
    let at = crate::requests::now_micros();
    let op_key = json!({ "name": name, "idempotency_key": key });
    let delta = serde_json::to_vec(&json!({ "value": value, "allocated_at": at })).unwrap_or_else(|e| fail(e));
    crate::local_ops::log_control_op(&me, ALLOCATION, op_key, "", delta);
    store(name, key, value, at, &me);
    value
}

/// A node that rejoins from a peer's snapshot copies its allocations
/// (name, idempotency_key, value, allocated_at in microseconds, allocated_by).
pub fn copy_allocations(rows: Vec<Vec<Option<String>>>) {
    for r in rows {
        let [Some(name), Some(key), Some(value), Some(at), Some(by)] = &r[..] else { continue };
        let (Ok(value), Ok(at)) = (value.parse::<i64>(), at.parse::<i64>()) else { continue };
        store(name, key, value, at, by);
    }
}
