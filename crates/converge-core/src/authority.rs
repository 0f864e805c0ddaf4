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
/// insert made anywhere may carry it), whether only removals are routed to
/// the node (`removes_only`: adds stay local everywhere), and since when
/// the node holds it and who held it before (an authority moved by a
/// handover: [`Authority::holds`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Authority {
    pub node: String,
    pub default: Option<serde_json::Value>,
    pub removes_only: bool,
    /// The node's ops with a counter above this are the authority's. None:
    /// handed over to the node, which has not taken it yet (nobody holds it).
    pub since: Option<i64>,
    /// Earlier holders, oldest first.
    pub earlier: Vec<Term>,
}

/// An earlier holder's term: its ops with `after < counter < until` were
/// the authority's (`until` is the counter of its handover).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Term {
    pub node: String,
    pub after: i64,
    pub until: i64,
}

impl Authority {
    /// An authority set on a node with no handover: all of `node`'s ops.
    pub fn new(node: &str, default: Option<serde_json::Value>, removes_only: bool) -> Authority {
        Authority { node: node.into(), default, removes_only, since: Some(0), earlier: Vec::new() }
    }

    /// Whether an op of `actor` with `counter` counts as the authority's.
    /// The judgment depends on the op and the handovers alone, so every
    /// node judges an op alike whenever it does (a handover reaches each
    /// node before its sender's later ops). `counter` None: a local change
    /// about to be made, which only the current holder may.
    pub fn holds(&self, actor: &str, counter: Option<i64>) -> bool {
        let Some(c) = counter else { return self.node == actor && self.since.is_some() };
        (self.node == actor && self.since.is_some_and(|s| c > s))
            || self.earlier.iter().any(|t| t.node == actor && t.after < c && c < t.until)
    }
}

/// A table's authority columns by name.
pub type Authorities = HashMap<String, Authority>;

/// An op handing an authority over (`converge.handover` in the
/// extension): `from` hands it to `to`, after the holders' terms
/// `earlier` (oldest first), whose last is `from`'s, ended at its op
/// `until`: the END, `from`'s op. The TAKE is `to`'s op, made once the END
/// reached it: `to` holds the authority above the TAKE's counter.
///
/// A move cannot be judged by the actor alone: nodes switch at different
/// times, and an op of the old holder made before the move would be
/// rejected by the nodes that switched first. Judged by actor and counter
/// ([`Authority::holds`]) against terms that every node learns alike, each
/// op is judged the same on every node whenever it is judged: a node gets
/// each actor's ops in that actor's counter order, so the END reaches it
/// before anything `from` did after it, and the TAKE before anything `to`
/// did after it; `from` makes no op of the column above `until`, `to` none
/// below its TAKE.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    pub from: String,
    pub to: String,
    pub until: i64,
    pub earlier: Vec<Term>,
}

impl Handover {
    /// The handover a delta carries, if it is a valid one for an op of
    /// `actor` with `counter`, and the TAKE's counter (None: an END).
    pub fn read(delta: &[u8], actor: &str, counter: i64) -> Option<(Handover, Option<i64>)> {
        let h: Handover = serde_json::from_slice(delta).ok()?;
        let name = |n: &str| crate::actor::validate_actor(n).is_ok();
        let last = h.earlier.last()?;
        let terms_ok = h.earlier.iter().all(|t| name(&t.node) && 0 <= t.after && t.after < t.until);
        if !name(&h.to) || h.from == h.to || last.node != h.from || last.until != h.until || !terms_ok {
            return None;
        }
        let taken = if actor == h.from && h.until == counter {
            None
        } else if actor == h.to && counter > 0 {
            Some(counter)
        } else {
            return None;
        };
        Some((h, taken))
    }

}

impl Authority {
    /// Whether handover `h` follows this setting: the terms of one are the
    /// start of the other's, each handover's node is the next holder, and
    /// a term it adds begins with this setting's holder (at its `since`,
    /// if known here). Else the two come from settings that differ (set
    /// differently on some node), and applying it would fork the terms.
    pub fn follows(&self, h: &Handover) -> bool {
        let (mine, theirs) = (&self.earlier[..], &h.earlier[..]);
        let n = theirs.len();
        if n <= mine.len() {
            // Known already: the same handover, or one before it.
            let next = mine.get(n).map_or(self.node.as_str(), |t| t.node.as_str());
            return mine[..n] == *theirs && h.to == next;
        }
        let new = &theirs[mine.len()];
        theirs[..mine.len()] == *mine && new.node == self.node && self.since.is_none_or(|s| s == new.after)
    }

    /// Apply a handover op (`taken`: the TAKE's counter; None: an END).
    /// Terms only grow, one per handover, and only the holder adds one, so
    /// the longest list seen is the newest: ops of a chain of handovers
    /// may come in any order (a node cut off from some holders). Whether
    /// anything changed.
    pub fn hand_over(&mut self, h: &Handover, taken: Option<i64>) -> bool {
        if h.earlier.len() > self.earlier.len() {
            (self.earlier, self.node, self.since) = (h.earlier.clone(), h.to.clone(), taken);
            true
        } else if h.earlier.len() == self.earlier.len() && self.node == h.to && self.since.is_none() && taken.is_some() {
            self.since = taken;
            true
        } else {
            false
        }
    }
}

/// Read a table's authority columns from the text of
/// `jsonb_object_agg(column, [node, default, removes_only, since, earlier])`
/// (NULL: none), where `earlier` is an array of `{node, after, until}`.
pub fn parse(text: Option<String>) -> Authorities {
    type Row = (String, Option<serde_json::Value>, bool, Option<i64>, Option<Vec<Term>>);
    let Some(text) = text else { return HashMap::new() };
    let m: HashMap<String, Row> = serde_json::from_str(&text).unwrap_or_default();
    m.into_iter()
        .map(|(k, (node, default, removes_only, since, earlier))| {
            (k, Authority { node, default, removes_only, since, earlier: earlier.unwrap_or_default() })
        })
        .collect()
}

/// Whether an op of `actor` with `counter` (None: a local change about to
/// be made) on `column` (`""`: a row op, whose lwwmap
/// `delta` carries plain columns) writes an authority column it may not. An
/// insert's row op may carry such a column as NULL or its constant
/// default: rows can be created anywhere. On a `removes_only` column only
/// a delta that removes is the authority's ([`removes`]). This is the rule
/// for nodes' ops; a client's are held to [`client_violation`].
pub fn violates(auth: &Authorities, column: &str, actor: &str, counter: Option<i64>, delta: &[u8]) -> bool {
    violation(auth, column, actor, counter, delta).is_some()
}

/// [`violates`], naming the column written and its authority.
pub fn violation<'a>(auth: &'a Authorities, column: &str, actor: &str, counter: Option<i64>, delta: &[u8]) -> Option<(&'a str, &'a Authority)> {
    check(auth, column, (actor, counter), delta, false)
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
pub fn client_violation<'a>(auth: &'a Authorities, column: &str, actor: &str, counter: Option<i64>, delta: &[u8]) -> Option<(&'a str, &'a Authority)> {
    check(auth, column, (actor, counter), delta, true)
}

fn check<'a>(auth: &'a Authorities, column: &str, by: (&str, Option<i64>), delta: &[u8], placeholders: bool) -> Option<(&'a str, &'a Authority)> {
    if auth.is_empty() {
        return None;
    }
    let (actor, counter) = by;
    if !column.is_empty() {
        let (name, a) = auth.get_key_value(column)?;
        let writes = !a.holds(actor, counter) && (!a.removes_only || removes(delta, actor));
        return writes.then_some((name.as_str(), a));
    }
    let d = decode_trusted::<LwwMap>(delta).ok()?;
    let insert = d.get("$live").map(|v| v.to_value()) == Some(serde_json::Value::Bool(true));
    let mut written = d.entries.keys().filter_map(|k| {
        let (name, a) = auth.get_key_value(k)?;
        if a.holds(actor, counter) {
            return None;
        }
        let v = d.get(k).map(|j| j.to_value()); // None: a removal
        let placeholder = !placeholders || d.entries.get(k).is_some_and(|e| e.0.ms() == 0);
        let allowed = insert && placeholder && matches!(&v, Some(x) if x.is_null() || a.default.as_ref().is_some_and(|d| same_json(x, d)));
        (!allowed).then_some((name.as_str(), a))
    });
    written.next()
}

/// The authority columns `actor` holds now that its op on `column` (`""`:
/// a row op) writes as only their holder may: those a handover committed
/// meanwhile could take from it (the extension checks them again when
/// the op takes its counter). Adds to a `removes_only` column, and an
/// insert's NULL or default, are anyone's: not listed.
pub fn held_written<'a>(auth: &'a Authorities, column: &str, actor: &str, delta: &[u8]) -> Vec<&'a str> {
    auth.iter()
        .filter(|(_, a)| a.holds(actor, None))
        .filter(|(c, a)| {
            // As any other node would be judged for the same op.
            // (No actor is named " ": the column is held by nobody here.)
            let alone: Authorities = [((*c).clone(), Authority { node: " ".into(), since: Some(0), earlier: Vec::new(), ..(*a).clone() })].into();
            check(&alone, column, ("", None), delta, false).is_some()
        })
        .map(|(c, _)| c.as_str())
        .collect()
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
        a.insert("status".into(), Authority::new("virginia", Some(serde_json::json!("open")), false));
        a.insert("tags".into(), Authority::new("virginia", None, true));
        a
    }

    #[test]
    fn only_the_authority_writes_its_column() {
        let a = auth();
        assert!(violates(&a, "status", "dublin", None, b""));
        assert!(!violates(&a, "status", "virginia", None, b""));
        assert!(!violates(&a, "notes", "dublin", None, b""));
        assert!(violates(&a, "", "dublin", None, &row_op(&[("status", serde_json::json!("closed"))])));
        assert!(!violates(&a, "", "virginia", None, &row_op(&[("status", serde_json::json!("closed"))])));
        assert!(!violates(&a, "", "dublin", None, &row_op(&[("title", serde_json::json!("x"))])));
    }

    #[test]
    fn an_insert_may_carry_null_or_the_default() {
        let a = auth();
        let live = ("$live", serde_json::json!(true));
        assert!(!violates(&a, "", "dublin", None, &row_op(&[live.clone(), ("status", serde_json::json!("open"))])));
        assert!(!violates(&a, "", "dublin", None, &row_op(&[live.clone(), ("status", serde_json::Value::Null)])));
        assert!(violates(&a, "", "dublin", None, &row_op(&[live, ("status", serde_json::json!("closed"))])));
        // Not an insert: the default is a change like any other.
        assert!(violates(&a, "", "dublin", None, &row_op(&[("status", serde_json::json!("open"))])));
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
            assert!(client_violation(&a, "", "phone1", None, &held).is_none(), "{v} under a placeholder");
            // Under a real timestamp it would reset the authority's value:
            // a node's insert may (its own setting may not have run yet), a
            // client's may not.
            let real = insert("phone1", &[("status", v.clone()), title.clone()], false);
            assert!(violation(&a, "", "phone1", None, &real).is_none());
            assert_eq!(client_violation(&a, "", "phone1", None, &real).map(|(c, _)| c), Some("status"), "{v} under a real timestamp");
            assert!(client_violation(&a, "", "virginia", None, &real).is_none(), "the authority may");
        }
        // Plain columns take real timestamps; a placeholder allows no other value.
        assert!(client_violation(&a, "", "phone1", None, &insert("phone1", &[title], false)).is_none());
        assert!(client_violation(&a, "", "phone1", None, &insert("phone1", &[("status", closed)], true)).is_some());
    }

    #[test]
    fn an_insert_may_carry_the_default_as_its_type_renders_it() {
        let mut a = Authorities::new();
        a.insert("amount".into(), Authority::new("virginia", Some(serde_json::json!(0)), false));
        a.insert("rate".into(), Authority::new("virginia", Some(serde_json::json!(1.50)), false));
        let live = ("$live", serde_json::json!(true));
        let num = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        for (col, v) in [("amount", "0.00"), ("amount", "-0"), ("amount", "0e5"), ("rate", "1.5"), ("rate", "15e-1")] {
            assert!(!violates(&a, "", "dublin", None, &row_op(&[live.clone(), (col, num(v))])), "{col} = {v}");
        }
        for (col, v) in [("amount", "0.01"), ("amount", "10"), ("rate", "-1.5"), ("rate", "15"), ("rate", "\"1.5\"")] {
            assert!(violates(&a, "", "dublin", None, &row_op(&[live.clone(), (col, num(v))])), "{col} = {v}");
        }
    }

    #[test]
    fn removes_only_routes_removals_alone() {
        let a = auth();
        let mut s = OrSet::default();
        let add = s.add("warning", crate::Dot::new("dublin", 1));
        let again = s.add("warning", crate::Dot::new("dublin", 2));
        let remove = s.remove("warning");
        assert!(!violates(&a, "tags", "dublin", None, &encode(&add)));
        assert!(!violates(&a, "tags", "dublin", None, &encode(&again)), "adding an element again removes nothing");
        assert!(violates(&a, "tags", "dublin", None, &encode(&remove)));
        assert!(!violates(&a, "tags", "virginia", None, &encode(&remove)));
        // An add merged with a removal (one statement doing both) removes.
        let mut both = s.add("fresh", crate::Dot::new("dublin", 3));
        both.merge(&s.remove("fresh"));
        assert!(violates(&a, "tags", "dublin", None, &encode(&both)));
        // A forged add that covers another element's dot removes it.
        let mut forged = OrSet::default().add("other", crate::Dot::new("dublin", 9));
        forged.context.insert(&crate::Dot::new("dublin", 1));
        assert!(violates(&a, "tags", "dublin", None, &encode(&forged)));
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
        assert!(violates(&a, "tags", "dublin", None, &encode(&forged)));
        // The authority may; and dublin's own dots are an add.
        assert!(!violates(&a, "tags", "virginia", None, &encode(&forged)));
        let own = OrSet::default().add("x", crate::Dot::new("dublin", 5));
        assert!(!violates(&a, "tags", "dublin", None, &encode(&own)));
    }

    #[test]
    fn a_handover_judges_by_actor_and_counter() {
        // virginia held status until its handover at counter 10; dublin took
        // it at its counter 20.
        let mut moved = Authority::new("dublin", Some(serde_json::json!("open")), false);
        moved.since = Some(20);
        moved.earlier.push(Term { node: "virginia".into(), after: 0, until: 10 });
        let a: Authorities = [("status".to_string(), moved.clone())].into();
        let closed = row_op(&[("status", serde_json::json!("closed"))]);
        assert!(!violates(&a, "", "virginia", Some(9), &closed), "before its handover");
        assert!(violates(&a, "", "virginia", Some(11), &closed), "after its handover");
        assert!(violates(&a, "", "dublin", Some(20), &closed), "before it took over");
        assert!(!violates(&a, "", "dublin", Some(21), &closed));
        assert!(violates(&a, "", "madrid", Some(15), &closed));
        assert!(!violates(&a, "", "dublin", None, &closed), "dublin holds it now");
        assert_eq!(held_written(&a, "", "dublin", &closed), vec!["status"]);
        let live = ("$live", serde_json::json!(true));
        assert!(held_written(&a, "", "dublin", &row_op(&[live, ("status", serde_json::json!("open"))])).is_empty(), "an insert's default");
        assert!(held_written(&a, "", "dublin", &row_op(&[("title", serde_json::json!("x"))])).is_empty());
        assert!(held_written(&a, "", "virginia", &closed).is_empty());
        assert!(violates(&a, "", "virginia", None, &closed));
        // Handed over, not taken yet: nobody holds it now.
        moved.since = None;
        let a: Authorities = [("status".to_string(), moved)].into();
        assert!(violates(&a, "", "dublin", Some(21), &closed));
        assert!(violates(&a, "", "dublin", None, &closed));
        assert!(!violates(&a, "", "virginia", Some(9), &closed));
    }

    #[test]
    fn parse_reads_terms_and_an_untaken_handover() {
        let text = r#"{"status": ["dublin", "open", false, null, [{"node": "virginia", "after": 0, "until": 10}]],
                       "tags": ["virginia", null, true, 0, []]}"#;
        let a = parse(Some(text.into()));
        assert_eq!(a["status"].since, None);
        assert_eq!(a["status"].earlier, vec![Term { node: "virginia".into(), after: 0, until: 10 }]);
        assert_eq!(a["tags"], Authority::new("virginia", None, true));
    }
}
