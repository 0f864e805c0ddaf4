//! Authorities (SPEC section 5): a column with an authority is written
//! only by that node. The extension rejects ops that break this with
//! `not_authority`: ops that came through replication by [`violation`],
//! ops a client sends through `apply` by [`client_violation`], which an
//! offline client can ask before it sends an op.

use crate::codec::{decode_trusted, Crdt};
use crate::json::decimal;
use crate::types::{LwwMap, OrMap, OrSet};
use std::collections::HashMap;

/// One authority column: its node, a plain column's constant default (an
/// insert made anywhere may carry it), and whether only removals are routed
/// to the node (`removes_only`: adds stay local everywhere).
#[derive(Clone, Debug, PartialEq)]
pub struct Authority {
    pub node: String,
    pub default: Option<serde_json::Value>,
    pub removes_only: bool,
}

/// A table's authority columns by name.
pub type Authorities = HashMap<String, Authority>;

/// Read a table's authority columns from the text of
/// `jsonb_object_agg(column, [node, default, removes_only])` (NULL: none).
pub fn parse(text: Option<String>) -> Authorities {
    let Some(text) = text else { return HashMap::new() };
    let m: HashMap<String, (String, Option<serde_json::Value>, bool)> = serde_json::from_str(&text).unwrap_or_default();
    m.into_iter().map(|(k, (node, default, removes_only))| (k, Authority { node, default, removes_only })).collect()
}

/// Whether an op of `actor` on `column` (`""`: a row op, whose lwwmap
/// `delta` carries plain columns) writes an authority column it may not. An
/// insert's row op may carry such a column as NULL or its constant
/// default: rows can be created anywhere. On a `removes_only` column only
/// a delta that removes is the authority's ([`removes`]). This is the rule
/// for nodes' ops; a client's are held to [`client_violation`].
pub fn violates(auth: &Authorities, column: &str, actor: &str, delta: &[u8]) -> bool {
    violation(auth, column, actor, delta).is_some()
}

/// [`violates`], naming the column written and its authority.
pub fn violation<'a>(auth: &'a Authorities, column: &str, actor: &str, delta: &[u8]) -> Option<(&'a str, &'a Authority)> {
    check(auth, column, actor, delta, false)
}

/// [`violation`] for an op a client sends through `apply`: its insert may
/// carry an authority column (NULL or the default) only under a
/// placeholder timestamp (`Timestamp::placeholder`, physical time 0), as a
/// node's insert does. Under a real one it would beat the authority's
/// older value wherever the row is (live, or kept in a tombstone) and
/// reset it on every node. Nodes' ops are not held to it: a node writes
/// real timestamps until its own `set_authority` runs, and rejecting its
/// row ops would lose whole rows while the setting rolls out. Only
/// applied ops travel, so the entry node's decision holds everywhere.
pub fn client_violation<'a>(auth: &'a Authorities, column: &str, actor: &str, delta: &[u8]) -> Option<(&'a str, &'a Authority)> {
    check(auth, column, actor, delta, true)
}

fn check<'a>(auth: &'a Authorities, column: &str, actor: &str, delta: &[u8], placeholders: bool) -> Option<(&'a str, &'a Authority)> {
    if auth.is_empty() {
        return None;
    }
    if !column.is_empty() {
        let (name, a) = auth.get_key_value(column)?;
        let writes = a.node != actor && (!a.removes_only || removes(delta, actor));
        return writes.then_some((name.as_str(), a));
    }
    let d = decode_trusted::<LwwMap>(delta).ok()?;
    let insert = d.get("$live").map(|v| v.to_value()) == Some(serde_json::Value::Bool(true));
    let mut written = d.entries.keys().filter_map(|k| {
        let (name, a) = auth.get_key_value(k)?;
        if a.node == actor {
            return None;
        }
        let v = d.get(k).map(|j| j.to_value()); // None: a removal
        let placeholder = !placeholders || d.entries.get(k).is_some_and(|e| e.0.ms() == 0);
        let allowed = insert && placeholder && matches!(&v, Some(x) if x.is_null() || a.default.as_ref().is_some_and(|d| same_json(x, d)));
        (!allowed).then_some((name.as_str(), a))
    });
    written.next()
}

/// JSON equality with numbers compared by value. An insert's value is
/// rendered in the column's type (`row_to_json`: `0.00` for a numeric(10,2)
/// at its default 0, `0` for a float8 at 0.0) and a client may write it
/// either way; the default was taken from the literal.
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a, b) {
        (serde_json::Value::Number(x), serde_json::Value::Number(y)) => {
            let (x, y) = (decimal(&x.to_string()), decimal(&y.to_string()));
            x.is_some() && x == y
        }
        _ => a == b,
    }
}


/// Whether a delta on a `removes_only` column removes, by the rule every
/// node applies alike (decided from the op alone): an orset delta that
/// covers a dot it does not carry ([`OrSet::removes`]), an ormap delta that
/// removes a key or a set element ([`OrMap::removes`]), or either carrying a
/// dot of another actor. A gset delta never removes. The extension's
/// trigger asks the same of a local change, so a write it accepts is not
/// rejected on the other nodes.
pub fn removes(delta: &[u8], actor: &str) -> bool {
    removal(delta, actor).is_some()
}

/// Why [`removes`] holds, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The delta covers a dot it does not carry.
    Covers,
    /// It carries a dot of another actor (a copied value, or a forgery).
    /// The same dot carried with a larger element than the one it tags
    /// replaces that element in every merge (a dot keeps the larger
    /// payload) while covering nothing: a removal in disguise. Decided from
    /// the op alone (its actor and its delta), so every node decides alike.
    /// An actor reusing a dot of its own is not caught: it can replace only
    /// elements it added itself.
    OtherDots,
}

/// Whether, and why, `actor`'s delta on a `removes_only` column removes.
pub fn removal(delta: &[u8], actor: &str) -> Option<Removal> {
    let (removes, carried) = match delta.get(1) {
        Some(&OrSet::TAG) => decode_trusted::<OrSet>(delta).ok().map(|d| (d.removes(), d.entries.dots_where(|_| true)))?,
        Some(&OrMap::TAG) => decode_trusted::<OrMap>(delta).ok().map(|d| (d.removes(), d.live_dots()))?,
        _ => return None,
    };
    if removes {
        Some(Removal::Covers)
    } else if carried.dots().any(|dot| dot.actor.as_str() != actor) {
        Some(Removal::OtherDots)
    } else {
        None
    }
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
        a.insert("status".into(), Authority { node: "virginia".into(), default: Some(serde_json::json!("open")), removes_only: false });
        a.insert("tags".into(), Authority { node: "virginia".into(), default: None, removes_only: true });
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

    /// An insert's row op of `actor`: "$live" under a real timestamp, the
    /// columns under placeholders (as a node away from the authority
    /// writes them) or under real ones.
    fn insert(actor: &str, entries: &[(&str, serde_json::Value)], placeholders: bool) -> Vec<u8> {
        let mut m = LwwMap::default();
        let mut out = m.put("$live", Json::from_value(&serde_json::json!(true)), ts(1));
        for (k, v) in entries {
            let t = if placeholders { Timestamp::placeholder(actor, None) } else { ts(2) };
            out.merge(&m.put(k, Json::from_value(v), t));
        }
        encode(&out)
    }

    #[test]
    fn a_clients_insert_carries_them_only_under_a_placeholder() {
        let a = auth();
        let (open, null, closed) = (serde_json::json!("open"), serde_json::Value::Null, serde_json::json!("closed"));
        let title = ("title", serde_json::json!("seal"));
        for v in [&open, &null] {
            let held = insert("phone1", &[("status", v.clone()), title.clone()], true);
            assert!(client_violation(&a, "", "phone1", &held).is_none(), "{v} under a placeholder");
            // Under a real timestamp it would reset the authority's value:
            // a node's insert may (its own setting may not have run yet), a
            // client's may not.
            let real = insert("phone1", &[("status", v.clone()), title.clone()], false);
            assert!(violation(&a, "", "phone1", &real).is_none());
            assert_eq!(client_violation(&a, "", "phone1", &real).map(|(c, _)| c), Some("status"), "{v} under a real timestamp");
            assert!(client_violation(&a, "", "virginia", &real).is_none(), "the authority may");
        }
        // Plain columns take real timestamps; a placeholder allows no other value.
        assert!(client_violation(&a, "", "phone1", &insert("phone1", &[title], false)).is_none());
        assert!(client_violation(&a, "", "phone1", &insert("phone1", &[("status", closed)], true)).is_some());
    }

    #[test]
    fn an_insert_may_carry_the_default_as_its_type_renders_it() {
        let mut a = Authorities::new();
        a.insert("amount".into(), Authority { node: "virginia".into(), default: Some(serde_json::json!(0)), removes_only: false });
        a.insert("rate".into(), Authority { node: "virginia".into(), default: Some(serde_json::json!(1.50)), removes_only: false });
        let live = ("$live", serde_json::json!(true));
        let num = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        for (col, v) in [("amount", "0.00"), ("amount", "-0"), ("amount", "0e5"), ("rate", "1.5"), ("rate", "15e-1")] {
            assert!(!violates(&a, "", "dublin", &row_op(&[live.clone(), (col, num(v))])), "{col} = {v}");
        }
        for (col, v) in [("amount", "0.01"), ("amount", "10"), ("rate", "-1.5"), ("rate", "15"), ("rate", "\"1.5\"")] {
            assert!(violates(&a, "", "dublin", &row_op(&[live.clone(), (col, num(v))])), "{col} = {v}");
        }
    }

    #[test]
    fn removes_only_routes_removals_alone() {
        let a = auth();
        let mut s = OrSet::default();
        let add = s.add("warning", crate::Dot::new("dublin", 1));
        let again = s.add("warning", crate::Dot::new("dublin", 2));
        let remove = s.remove("warning");
        assert!(!violates(&a, "tags", "dublin", &encode(&add)));
        assert!(!violates(&a, "tags", "dublin", &encode(&again)), "adding an element again removes nothing");
        assert!(violates(&a, "tags", "dublin", &encode(&remove)));
        assert!(!violates(&a, "tags", "virginia", &encode(&remove)));
        // An add merged with a removal (one statement doing both) removes.
        let mut both = s.add("fresh", crate::Dot::new("dublin", 3));
        both.merge(&s.remove("fresh"));
        assert!(violates(&a, "tags", "dublin", &encode(&both)));
        // A forged add that covers another element's dot removes it.
        let mut forged = OrSet::default().add("other", crate::Dot::new("dublin", 9));
        forged.context.insert(&crate::Dot::new("dublin", 1));
        assert!(violates(&a, "tags", "dublin", &encode(&forged)));
    }

    #[test]
    fn another_actors_dot_with_a_larger_element_is_a_removal() {
        let a = auth();
        // virginia's warning, as every node holds it.
        let mut held = OrSet::default();
        held.add("fall-risk", crate::Dot::new("virginia", 4));
        // dublin sends virginia's dot with a larger element: it covers
        // nothing it does not carry, yet merging it replaces the warning.
        let mut forged = OrSet::default();
        forged.entries.0.insert(crate::Dot::new("virginia", 4), "zz".into());
        forged.context.insert(&crate::Dot::new("virginia", 4));
        assert!(!forged.removes());
        assert_eq!(held.merged(&forged).elements(), vec!["zz".to_string()]);
        assert!(violates(&a, "tags", "dublin", &encode(&forged)));
        // The authority may; and dublin's own dots are an add.
        assert!(!violates(&a, "tags", "virginia", &encode(&forged)));
        let own = OrSet::default().add("x", crate::Dot::new("dublin", 5));
        assert!(!violates(&a, "tags", "dublin", &encode(&own)));
    }
}
