//! The operation envelope: who made a change, to which row and column, under
//! which causal context, and the delta itself. The same struct is the
//! server's `converge.op` and what an offline client builds and stores.
//!
//! Binary form: `[FORMAT_VERSION, OP_TAG, postcard body]`, canonical (the
//! decoder re-encodes and compares), like the CRDT values.

use crate::actor::validate_actor;
use crate::codec::FORMAT_VERSION;
use crate::error::{Error, Result};
use crate::json::Json;
use serde::{Deserialize, Serialize};

/// Type tag of an encoded op (CRDT values use 1..=9).
pub const OP_TAG: u8 = 64;

/// The envelope version this release writes and accepts.
pub const SCHEMA_VERSION: i32 = 1;

/// Split `actor:counter` (counter >= 1, no leading zero). None if malformed.
pub fn parse_op_id(op_id: &str) -> Option<(&str, u64)> {
    let (actor, counter) = op_id.rsplit_once(':')?;
    validate_actor(actor).ok()?;
    if counter.is_empty() || counter.starts_with('0') || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let c: u64 = counter.parse().ok()?;
    (c <= i64::MAX as u64).then_some((actor, c))
}

pub fn format_op_id(actor: &str, counter: u64) -> String {
    format!("{actor}:{counter}")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Op {
    pub op_id: String,
    pub actor: String,
    pub target_table: String,
    /// The primary key columns and their values (a JSON object).
    pub target_key: Json,
    pub target_column: String,
    pub schema_version: i32,
    pub epoch: i64,
    pub deps: Vec<String>,
    /// The delta in the column type's binary form.
    pub delta: Vec<u8>,
    pub signature: Option<Vec<u8>>,
}

impl Op {
    /// A new op of `actor` number `counter` (schema version 1, epoch 0).
    pub fn new(
        actor: &str,
        counter: u64,
        target_table: &str,
        target_key: &serde_json::Value,
        target_column: &str,
        deps: Vec<String>,
        delta: Vec<u8>,
    ) -> Op {
        Op {
            op_id: format_op_id(actor, counter),
            actor: actor.to_string(),
            target_table: target_table.to_string(),
            target_key: Json::from_value(target_key),
            target_column: target_column.to_string(),
            schema_version: SCHEMA_VERSION,
            epoch: 0,
            deps,
            delta,
            signature: None,
        }
    }

    /// The counter part of the op_id (0 if the op_id is malformed).
    pub fn counter(&self) -> u64 {
        parse_op_id(&self.op_id).map(|(_, c)| c).unwrap_or(0)
    }

    /// Structural checks: well-formed ids, the actor matches the op_id, the
    /// key is a JSON object. (Whether the target exists is the server's call.)
    pub fn validate(&self) -> Result<()> {
        match parse_op_id(&self.op_id) {
            Some((a, _)) if a == self.actor => {}
            Some(_) => return Err(Error::param("op actor does not match its op_id")),
            None => return Err(Error::param(format!("malformed op_id \"{}\"", self.op_id.escape_default()))),
        }
        if let Some(d) = self.deps.iter().find(|d| parse_op_id(d).is_none()) {
            return Err(Error::param(format!("malformed dep \"{}\"", d.escape_default())));
        }
        if !self.target_key.to_value().is_object() {
            return Err(Error::param("op target_key must be a JSON object"));
        }
        self.target_key.validate()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_VERSION, OP_TAG];
        out.extend(postcard::to_stdvec(self).expect("postcard encoding of an op"));
        out
    }

    /// Decode and validate an encoded op (canonical bytes only).
    pub fn decode(bytes: &[u8]) -> Result<Op> {
        let body = match bytes {
            [] | [_] => return Err(Error::binary("op is truncated")),
            [0, ..] => return Err(Error::binary("op has format version 0, which is not supported")),
            [v, ..] if *v != FORMAT_VERSION => return Err(Error::binary(format!("op has unknown format version {v}"))),
            [_, t, ..] if *t != OP_TAG => return Err(Error::binary(format!("value is not an op (type tag {t})"))),
            [_, _, body @ ..] => body,
        };
        let (op, rest) =
            postcard::take_from_bytes::<Op>(body).map_err(|e| Error::binary(format!("corrupt op: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::binary(format!("corrupt op: {} trailing bytes", rest.len())));
        }
        op.validate().map_err(|e| Error::binary(format!("invalid op: {}", e.message)))?;
        if op.encode() != bytes {
            return Err(Error::binary("op is not in canonical form"));
        }
        Ok(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_ids() {
        assert_eq!(parse_op_id("phone-1:42"), Some(("phone-1", 42)));
        for bad in ["", "a", "a:", ":1", "a:0", "a:01", "a:-1", "a b:1", "a:1x", "a:99999999999999999999"] {
            assert_eq!(parse_op_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn encode_decode_and_hostile_bytes() {
        let op = Op::new("phone", 3, "incident", &serde_json::json!({"id": 1}), "tags", vec!["phone:2".into()], vec![1, 5, 0, 0]);
        let bytes = op.encode();
        assert_eq!(Op::decode(&bytes).unwrap(), op);
        assert_eq!(op.counter(), 3);
        for cut in 0..bytes.len() {
            assert!(Op::decode(&bytes[..cut]).is_err());
        }
        let mut wrong = op.clone();
        wrong.actor = "other".into();
        assert!(Op::decode(&wrong.encode()).is_err());
        let mut tail = bytes.clone();
        tail.push(0);
        assert!(Op::decode(&tail).is_err());
    }
}
