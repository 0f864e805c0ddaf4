//! Helpers the op log's set-based apply uses: op_id parsing and delta
//! validation that reports instead of raising, so one bad op in a batch is
//! rejected without aborting the statement.

use crate::errors::OrRaise;
use converge_core::{decode, parse_op_id, Crdt, Json, Op};
use pgrx::JsonB;
use pgrx::prelude::*;

/// The actor of an op_id `actor:counter`, or NULL when malformed.
#[pg_extern(immutable, strict, parallel_safe)]
fn op_id_actor(op_id: &str) -> Option<String> {
    parse_op_id(op_id).map(|(a, _)| a.to_string())
}

/// The counter of an op_id `actor:counter` (>= 1), or NULL when malformed.
#[pg_extern(immutable, strict, parallel_safe)]
fn op_id_counter(op_id: &str) -> Option<i64> {
    parse_op_id(op_id).map(|(_, c)| c as i64)
}

fn check<T: Crdt>(bytes: &[u8]) -> Option<String> {
    decode::<T>(bytes).err().map(|e| format!("invalid_delta: {}", e.message))
}

/// An op's delta as readers before 0.2.0 take it: an ormap delta without
/// its per-key record of what it superseded (converge-core's
/// `without_covers`; it merges the same), any other delta as it is.
#[pg_extern(immutable, strict, parallel_safe)]
fn without_covers(delta: &[u8]) -> Vec<u8> {
    converge_core::without_covers(delta.to_vec())
}

/// Why `delta` is not a valid value of the converge type `type_name`, or
/// NULL when it is. Never raises.
#[pg_extern(immutable, parallel_safe)]
pub(crate) fn delta_error(type_name: Option<&str>, delta: Option<&[u8]>) -> Option<String> {
    let Some(bytes) = delta else { return Some("invalid_delta: NULL".into()) };
    let limit = crate::types::MAX_VALUE_BYTES.get().max(0) as usize;
    if bytes.len() > limit {
        return Some(format!("too_large: delta of {} bytes exceeds converge.max_value_bytes ({limit})", bytes.len()));
    }
    let name = type_name.unwrap_or("");
    for_crdt_type!(name, T => check::<T>(bytes), _ => Some(format!("not_crdt_column: type {name}")))
}

/// The binary form of an op (converge-core's `Op::encode`), from its fields.
/// `converge.op_encode(op)` wraps it.
#[allow(clippy::too_many_arguments)]
#[pg_extern(immutable, parallel_safe)]
fn op_encode_fields(
    op_id: Option<String>,
    actor: Option<String>,
    target_table: Option<String>,
    target_key: Option<JsonB>,
    target_column: Option<String>,
    schema_version: Option<i32>,
    epoch: Option<i64>,
    deps: Option<Vec<Option<String>>>,
    delta: Option<Vec<u8>>,
    signature: Option<Vec<u8>>,
) -> Vec<u8> {
    use crate::errors::required;
    let op = Op {
        op_id: required(op_id, "op_id"),
        actor: required(actor, "actor"),
        target_table: required(target_table, "target_table"),
        target_key: Json::from_value(&required(target_key, "target_key").0),
        target_column: required(target_column, "target_column"),
        schema_version: required(schema_version, "schema_version"),
        epoch: epoch.unwrap_or(0),
        deps: deps.unwrap_or_default().into_iter().map(|d| required(d, "a dep")).collect(),
        delta: required(delta, "delta"),
        signature,
    };
    op.validate().or_raise();
    op.encode()
}

/// The fields of an op in binary form (validated, canonical only).
/// `converge.op_decode(bytes)` wraps it.
#[pg_extern(immutable, strict, parallel_safe)]
#[allow(clippy::type_complexity)]
fn op_decode_fields(
    bytes: &[u8],
) -> TableIterator<
    'static,
    (
        name!(op_id, String),
        name!(actor, String),
        name!(target_table, String),
        name!(target_key, JsonB),
        name!(target_column, String),
        name!(schema_version, i32),
        name!(epoch, i64),
        name!(deps, Vec<String>),
        name!(delta, Vec<u8>),
        name!(signature, Option<Vec<u8>>),
    ),
> {
    let op = Op::decode(bytes).or_raise();
    TableIterator::once((
        op.op_id,
        op.actor,
        op.target_table,
        JsonB(op.target_key.to_value()),
        op.target_column,
        op.schema_version,
        op.epoch,
        op.deps,
        op.delta,
        op.signature,
    ))
}
