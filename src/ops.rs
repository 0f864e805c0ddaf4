//! Helpers the op log's set-based apply uses: op_id parsing and delta
//! validation that reports instead of raising, so one bad op in a batch is
//! rejected without aborting the statement.

use converge_core::{decode, Crdt};
use pgrx::prelude::*;

fn split_op_id(op_id: &str) -> Option<(&str, i64)> {
    let (actor, counter) = op_id.rsplit_once(':')?;
    converge_core::validate_actor(actor).ok()?;
    if counter.is_empty() || counter.starts_with('0') || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let c: i64 = counter.parse().ok()?;
    Some((actor, c))
}

/// The actor of an op_id `actor:counter`, or NULL when malformed.
#[pg_extern(immutable, strict, parallel_safe)]
fn op_id_actor(op_id: &str) -> Option<String> {
    split_op_id(op_id).map(|(a, _)| a.to_string())
}

/// The counter of an op_id `actor:counter` (>= 1), or NULL when malformed.
#[pg_extern(immutable, strict, parallel_safe)]
fn op_id_counter(op_id: &str) -> Option<i64> {
    split_op_id(op_id).map(|(_, c)| c)
}

fn check<T: Crdt>(bytes: &[u8]) -> Option<String> {
    decode::<T>(bytes).err().map(|e| format!("invalid_delta: {}", e.message))
}

/// Why `delta` is not a valid value of the converge type `type_name`, or
/// NULL when it is. Never raises.
#[pg_extern(immutable, parallel_safe)]
fn delta_error(type_name: Option<&str>, delta: Option<&[u8]>) -> Option<String> {
    let Some(bytes) = delta else { return Some("invalid_delta: NULL".into()) };
    let limit = crate::types::MAX_VALUE_BYTES.get().max(0) as usize;
    if bytes.len() > limit {
        return Some(format!("too_large: delta of {} bytes exceeds converge.max_value_bytes ({limit})", bytes.len()));
    }
    use converge_core::types::*;
    match type_name.unwrap_or("") {
        "gcounter" => check::<GCounter>(bytes),
        "pncounter" => check::<PnCounter>(bytes),
        "bcounter" => check::<BCounter>(bytes),
        "gset" => check::<GSet>(bytes),
        "orset" => check::<OrSet>(bytes),
        "lwwreg" => check::<LwwReg>(bytes),
        "mvreg" => check::<MvReg>(bytes),
        "lwwmap" => check::<LwwMap>(bytes),
        "ormap" => check::<OrMap>(bytes),
        other => Some(format!("not_crdt_column: type {other}")),
    }
}
