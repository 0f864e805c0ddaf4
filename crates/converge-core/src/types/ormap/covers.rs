//! What an ormap delta supersedes, per key (`covers`), and the rule that
//! tells a removal from the op alone (SPEC 5, `removes_only`: removals of
//! keys and set elements are the authority's, while adds, increments and
//! assigns stay local everywhere).
//!
//! A delta's context covers every dot it supersedes, but it is one set for
//! the whole map, and a dot does not say which key it marked: from the
//! context alone, an assign that replaces a register's value cannot be told
//! from one that also removes another key. So every delta made here (the
//! mutators and `delta`) also lists, per key, the dots it superseded there
//! and the kind each marked. Merge does not read the list (the context does
//! the superseding); only [`OrMap::removes`] does. An op made by code that
//! lies in this list is a forged op, which `revoke_actor` is for.

use super::{Kind, OrMap, Slot};
use crate::codec::{decode_trusted, encode, Crdt};
use crate::dots::{DotMap, DotSet};
use crate::error::{Error, Result};

/// An op's delta as readers before 0.2.0 take it: an ormap delta without
/// its covers (format version 1, which merges the same); any other value
/// as it is. The extension's `changes_since(frontier)` serves unsigned ops
/// so; the client crate sends its ops so unless the column routes removals.
pub fn without_covers(delta: Vec<u8>) -> Vec<u8> {
    if delta.first() != Some(&2) || delta.get(1) != Some(&OrMap::TAG) {
        return delta;
    }
    match decode_trusted::<OrMap>(&delta) {
        Ok(mut d) => {
            d.as_state();
            encode(&d)
        }
        Err(_) => delta,
    }
}

impl Slot {
    /// The kind each of `dots` marked at this key. A dot the slot does not
    /// hold is left out: a delta covering it then covers it unattributed.
    pub(super) fn attribute(&self, dots: &DotSet) -> DotMap<Kind> {
        let mut m = DotMap::default();
        for d in dots.dots() {
            let kind = self.kinds.0.get(&d).copied().or_else(|| {
                if self.set.0.contains_key(&d) {
                    Some(Kind::Set)
                } else {
                    self.reg.0.contains_key(&d).then_some(Kind::Register)
                }
            });
            if let Some(kind) = kind {
                m.0.insert(d, kind);
            }
        }
        m
    }
}

impl OrMap {
    /// Whether this value, taken as a delta, removes a key or a set
    /// element. Decided from the delta alone, so every node decides alike
    /// whatever it has seen. It removes when:
    /// - its context covers a dot it neither carries nor lists in `covers`
    ///   (a dot it cannot say it only replaced, e.g. an op merged from two);
    /// - it supersedes a set's dot at some key (only removals do: an add
    ///   supersedes nothing);
    /// - it supersedes a counter's or register's dot at a key where it
    ///   carries no marker of that kind (the key removed, or its kind
    ///   replaced);
    /// - it carries counts a key removal observed (`rp`, `rn`).
    ///
    /// An increment or an assign supersedes only dots of its own kind at
    /// the key it marks, so neither removes.
    pub fn removes(&self) -> bool {
        let mut attributed = self.live_dots();
        for (k, covered) in &self.covers {
            let carried = self.entries.get(k).map(Slot::live_kinds).unwrap_or_default();
            if covered.0.values().any(|kind| *kind == Kind::Set || !carried.contains(kind)) {
                return true;
            }
            attributed.union(&covered.dots_where(|_| true));
        }
        !self.context.difference(&attributed).is_empty()
            || self.entries.values().any(|s| !s.rp.is_empty() || !s.rn.is_empty())
    }

    /// `covers` lists, per key, dots of the context that the delta does not
    /// carry; no list is empty.
    pub(super) fn validate_covers(&self) -> Result<()> {
        let carried = self.live_dots();
        for c in self.covers.values() {
            if c.is_empty() {
                return Err(Error::binary("empty ormap covers entry"));
            }
            c.validate(&self.context)?;
            if c.0.keys().any(|d| carried.contains(d)) {
                return Err(Error::binary("ormap delta covers a dot it carries"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode, from_text, Crdt};
    use crate::dots::Dot;
    use crate::json::Json;

    fn dot(a: &str, c: u64) -> Dot {
        Dot::new(a, c)
    }

    /// A map with a counter at "n", a set {x} at "s" (and an element-less
    /// marker left by a removed element), a register at "r", all seen by
    /// both nodes.
    fn held() -> OrMap {
        let mut m = OrMap::default();
        m.incr("n", "dublin", 2, dot("dublin", 1)).unwrap();
        m.add("s", "x", dot("dublin", 2)).unwrap();
        m.add("s", "y", dot("virginia", 1)).unwrap();
        m.remove_element("s", "y", dot("dublin", 3)).unwrap();
        m.assign("r", Json::parse("1").unwrap(), dot("virginia", 2)).unwrap();
        m
    }

    #[test]
    fn adds_counts_and_assigns_do_not_remove_removals_do() {
        let m = held();
        let d = |f: &dyn Fn(&mut OrMap) -> OrMap| {
            let mut x = m.clone();
            let delta = f(&mut x);
            // The same answer for the mutator's delta and for the one a
            // trigger computes from the states before and after.
            let diff = OrMap::delta(&x, &m);
            assert_eq!(delta.removes(), diff.removes(), "{delta:?} vs {diff:?}");
            assert_eq!(diff, delta);
            delta.removes()
        };
        assert!(!d(&|x| x.add("s", "x", dot("dublin", 9)).unwrap()), "adding an element again");
        assert!(!d(&|x| x.add("s", "z", dot("dublin", 9)).unwrap()));
        assert!(!d(&|x| x.add("new", "z", dot("dublin", 9)).unwrap()));
        assert!(!d(&|x| x.incr("n", "dublin", 1, dot("dublin", 9)).unwrap()));
        assert!(!d(&|x| x.decr("n", "dublin", 5, dot("dublin", 9)).unwrap()));
        assert!(!d(&|x| x.assign("r", Json::parse("2").unwrap(), dot("dublin", 9)).unwrap()), "an overwrite");
        assert!(d(&|x| x.remove_element("s", "x", dot("dublin", 9)).unwrap()));
        assert!(d(&|x| x.remove_key("s")));
        assert!(d(&|x| x.remove_key("r")));
        assert!(d(&|x| x.remove_key("n")));
    }

    #[test]
    fn what_a_delta_cannot_attribute_counts_as_a_removal() {
        let m = held();
        // Two ops merged into one lose their covers: an assign's superseded
        // value is then a dot the merged delta does not account for.
        let (mut a, mut b) = (m.clone(), m.clone());
        let mut both = a.assign("r", Json::parse("2").unwrap(), dot("dublin", 9)).unwrap();
        both.merge(&b.add("s", "z", dot("dublin", 10)).unwrap());
        assert!(both.covers.is_empty() && both.removes());
        // An add whose context also covers x's dot, with or without saying so.
        let mut forged = m.clone().add("s", "z", dot("dublin", 9)).unwrap();
        forged.context.insert(&dot("dublin", 2));
        assert!(forged.removes());
        forged.covers.insert("s".into(), DotMap([(dot("dublin", 2), Kind::Set)].into()));
        assert!(forged.removes());
        // An assign claiming to supersede a register dot of a key it does not mark.
        let mut other_key = m.clone().assign("r", Json::parse("3").unwrap(), dot("dublin", 9)).unwrap();
        other_key.context.insert(&dot("dublin", 1));
        other_key.covers.insert("n".into(), DotMap([(dot("dublin", 1), Kind::Counter)].into()));
        assert!(other_key.removes());
        // Counts a key removal observed, carried by themselves.
        let mut counts = OrMap::default();
        counts.entries.insert("n".into(), Slot { rp: crate::types::counts::Counts::single("dublin", 2), ..Default::default() });
        assert!(counts.removes());
    }

    #[test]
    fn a_state_keeps_format_version_1_and_its_bytes() {
        // The encoding of this state before covers existed (version 1).
        let text = r#"{"context":{"dublin":[[1,1]],"madrid":[[1,4]]},"entries":{"n":{"p":{"madrid":5},"rp":{"madrid":5}},"r":{"kinds":[["madrid",4,"mvreg"]],"reg":[["madrid",4,{"a":1}]]},"s":{"kinds":[["dublin",1,"orset"],["madrid",3,"orset"]],"set":[["dublin",1,"y"]]}}}"#;
        let old = "010903016e00000001066d6164726964050001066d61647269640500017201066d616472696404020001066d616472696404077b2261223a317d00000000017302066475626c696e0101066d6164726964030101066475626c696e010179000000000002066475626c696e010101066d6164726964010104";
        let bytes: Vec<u8> = (0..old.len()).step_by(2).map(|i| u8::from_str_radix(&old[i..i + 2], 16).unwrap()).collect();
        let v: OrMap = from_text(text).unwrap();
        assert_eq!(encode(&v), bytes);
        assert_eq!(decode::<OrMap>(&bytes).unwrap(), v);
        // A delta that covers something is version 2, and reads back.
        let d = v.clone().remove_element("s", "y", dot("madrid", 5)).unwrap();
        let b2 = encode(&d);
        assert_eq!(b2[0], 2);
        assert_eq!(decode::<OrMap>(&b2).unwrap(), d);
        // Version 2 with nothing in covers is not canonical.
        let mut padded = encode(&v);
        padded[0] = 2;
        padded.push(0);
        assert!(decode::<OrMap>(&padded).is_err());
    }
}
