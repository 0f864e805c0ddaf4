//! Authorities (SPEC section 5): a column with an authority is written
//! only by that node. The extension rejects ops that break this with
//! `not_authority`; an offline client can ask the same question before it
//! sends an op.

use crate::codec::decode_trusted;
use crate::types::LwwMap;
use std::collections::HashMap;

/// Per authority column of a table: (node, constant default as JSON).
pub type Authorities = HashMap<String, (String, Option<serde_json::Value>)>;

/// Read a table's authority columns from the text of
/// `jsonb_object_agg(column, [node, default])` (NULL: none).
pub fn parse(text: Option<String>) -> Authorities {
    let Some(text) = text else { return HashMap::new() };
    let m: HashMap<String, (String, Option<serde_json::Value>)> = serde_json::from_str(&text).unwrap_or_default();
    m
}

/// Whether an op of `actor` on `column` (`""`: a row op, whose lwwmap
/// `delta` carries plain columns) writes an authority column it may not.
/// An insert's row op may carry such a column as NULL or its constant
/// default: rows can be created anywhere.
pub fn violates(auth: &Authorities, column: &str, actor: &str, delta: &[u8]) -> bool {
    if auth.is_empty() {
        return false;
    }
    if !column.is_empty() {
        return auth.get(column).is_some_and(|(node, _)| node != actor);
    }
    let Ok(d) = decode_trusted::<LwwMap>(delta) else { return false };
    let insert = d.get("$live").map(|v| v.to_value()) == Some(serde_json::Value::Bool(true));
    d.entries.keys().any(|k| {
        let Some((node, default)) = auth.get(k) else { return false };
        if node == actor {
            return false;
        }
        let v = d.get(k).map(|j| j.to_value()); // None: a removal
        !(insert && matches!(&v, Some(x) if x.is_null() || Some(x) == default.as_ref()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode, Crdt, Json, Timestamp};

    fn ts(ms: u64) -> Timestamp {
        Timestamp(ms, 0, "dublin".into())
    }

    fn row_op(entries: &[(&str, serde_json::Value)]) -> Vec<u8> {
        let mut m = LwwMap::default();
        let mut out = LwwMap::default();
        for (i, (k, v)) in entries.iter().enumerate() {
            out.merge(&m.put(k, Json::from_value(v), ts(i as u64 + 1)));
        }
        encode(&out)
    }

    fn auth() -> Authorities {
        let mut a = Authorities::new();
        a.insert("status".into(), ("virginia".into(), Some(serde_json::json!("open"))));
        a
    }

    #[test]
    fn only_the_authority_writes_its_column() {
        let a = auth();
        assert!(violates(&a, "status", "dublin", b""));
        assert!(!violates(&a, "status", "virginia", b""));
        assert!(!violates(&a, "notes", "dublin", b""));
        assert!(violates(&a, "", "dublin", &row_op(&[("status", serde_json::json!("closed"))])));
        assert!(!violates(&a, "", "virginia", &row_op(&[("status", serde_json::json!("closed"))])));
        assert!(!violates(&a, "", "dublin", &row_op(&[("title", serde_json::json!("x"))])));
    }

    #[test]
    fn an_insert_may_carry_null_or_the_default() {
        let a = auth();
        let live = ("$live", serde_json::json!(true));
        assert!(!violates(&a, "", "dublin", &row_op(&[live.clone(), ("status", serde_json::json!("open"))])));
        assert!(!violates(&a, "", "dublin", &row_op(&[live.clone(), ("status", serde_json::Value::Null)])));
        assert!(violates(&a, "", "dublin", &row_op(&[live, ("status", serde_json::json!("closed"))])));
        // Not an insert: the default is a change like any other.
        assert!(violates(&a, "", "dublin", &row_op(&[("status", serde_json::json!("open"))])));
    }
}
