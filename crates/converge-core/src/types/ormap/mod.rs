//! Observed-remove map from text keys to nested CRDTs: a counter
//! (pncounter), a set (orset) or a register (mvreg) per key.
//!
//! One causal context covers the whole map. Every mutation on a key tags it
//! with a fresh presence dot of its kind; removing a key covers exactly the
//! dots observed, so a concurrent update elsewhere keeps the key alive holding
//! only that update. Counters are not dot-based, so a key remove records the
//! counts it observed (`rp`, `rn`) and the counter's value is what came after:
//! a node's increments the remover saw stay gone even if it kept incrementing.
//!
//! A set element's dot is also its Set presence marker, so `kinds` holds one
//! marker per live element plus the element-less markers that element
//! removes leave. An add supersedes nothing (an element added twice holds
//! two dots until it is removed), so that only removals ever supersede a
//! set's dots; an element remove supersedes that element's dots and the
//! element-less markers. A counter or register mutation supersedes every
//! marker of its kind: no counter value lives in a dot, and an assign
//! supersedes every value it saw.
//!
//! A delta says, per key, what it supersedes (`covers`, see [`covers`]), so
//! that a removal can be told from the op alone (`removes_only`).

mod covers;
pub use covers::without_covers;

use super::counts::{to_bigint, Counts};
use crate::codec::{prune_empty_members, write_postcard, Crdt};
use crate::dots::{Dot, DotMap, DotSet};
use crate::error::{Error, ErrorKind, Result};
use crate::json::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The nested type a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "pncounter")]
    Counter,
    #[serde(rename = "orset")]
    Set,
    #[serde(rename = "mvreg")]
    Register,
}

impl Kind {
    /// With its article, for messages.
    pub fn a_name(self) -> &'static str {
        match self {
            Kind::Counter => "a pncounter",
            Kind::Set => "an orset",
            Kind::Register => "an mvreg",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "pncounter",
            Kind::Set => "orset",
            Kind::Register => "mvreg",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    /// Presence dots: which kinds are live at this key.
    #[serde(default)]
    pub kinds: DotMap<Kind>,
    /// Nested orset elements.
    #[serde(default)]
    pub set: DotMap<String>,
    /// Nested mvreg values.
    #[serde(default)]
    pub reg: DotMap<Json>,
    /// Nested counter: increments and decrements per node.
    #[serde(default)]
    pub p: Counts,
    #[serde(default)]
    pub n: Counts,
    /// Counts observed by key removes (subtracted from p and n).
    #[serde(default)]
    pub rp: Counts,
    #[serde(default)]
    pub rn: Counts,
}

impl Slot {
    fn is_empty(&self) -> bool {
        *self == Slot::default()
    }

    pub fn live_kinds(&self) -> Vec<Kind> {
        self.kinds.distinct_values()
    }

    fn counter_exact(&self) -> i128 {
        (self.p.total() - self.rp.total()) - (self.n.total() - self.rn.total())
    }

    fn merge(&mut self, my_ctx: &DotSet, other: &Slot, other_ctx: &DotSet) {
        self.kinds.merge(my_ctx, &other.kinds, other_ctx);
        self.set.merge(my_ctx, &other.set, other_ctx);
        self.reg.merge(my_ctx, &other.reg, other_ctx);
        self.p.merge(&other.p);
        self.n.merge(&other.n);
        self.rp.merge(&other.rp);
        self.rn.merge(&other.rn);
    }

    fn user_value(&self, kind: Kind) -> Result<serde_json::Value> {
        Ok(match kind {
            Kind::Counter => to_bigint(self.counter_exact(), "ormap counter value")?.into(),
            Kind::Set => self.set.distinct_values().into(),
            Kind::Register => self.reg.distinct_values().iter().map(Json::to_value).collect::<Vec<_>>().into(),
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrMap {
    #[serde(default)]
    pub entries: BTreeMap<String, Slot>,
    #[serde(default)]
    pub context: DotSet,
    /// In a delta: per key, the dots it supersedes there, each with the
    /// kind it marked. What a merge makes is a state, which holds none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub covers: BTreeMap<String, DotMap<Kind>>,
}

impl OrMap {
    fn slot(&self, k: &str) -> Option<&Slot> {
        self.entries.get(k)
    }

    /// Locally, a key keeps the nested type its first mutator gave it.
    fn check_kind(&self, k: &str, kind: Kind) -> Result<()> {
        if let Some(s) = self.slot(k) {
            let live = s.live_kinds();
            if !live.is_empty() && !live.contains(&kind) {
                let names: Vec<&str> = live.iter().map(|k| k.a_name()).collect();
                return Err(Error::new(
                    ErrorKind::WrongType,
                    format!("ormap key \"{k}\" holds {}, not {}", names.join(" and "), kind.a_name()),
                ));
            }
        }
        Ok(())
    }

    fn kind_dots(&self, k: &str, kind: Kind) -> DotSet {
        self.slot(k).map(|s| s.kinds.dots_where(|x| *x == kind)).unwrap_or_default()
    }

    fn apply(&mut self, k: &str, slot: Slot, mut context: DotSet, dot: &Dot) -> OrMap {
        let covers = self.slot(k).map(|s| s.attribute(&context)).unwrap_or_default();
        context.insert(dot);
        let mut d = OrMap { context, ..Default::default() };
        if !covers.is_empty() {
            d.covers.insert(k.to_string(), covers);
        }
        d.entries.insert(k.to_string(), slot);
        self.merge(&d);
        d
    }

    /// Add `n` to the counter at `k` (negative subtracts). Returns the delta.
    pub fn incr(&mut self, k: &str, node: &str, n: i64, dot: Dot) -> Result<OrMap> {
        // unsigned_abs: i64::MIN is a decrement of 2^63, not of i64::MAX.
        self.count(k, node, n.unsigned_abs(), n < 0, dot)
    }

    pub fn decr(&mut self, k: &str, node: &str, n: i64, dot: Dot) -> Result<OrMap> {
        self.count(k, node, n.unsigned_abs(), n >= 0, dot)
    }

    fn count(&mut self, k: &str, node: &str, n: u64, down: bool, dot: Dot) -> Result<OrMap> {
        self.check_kind(k, Kind::Counter)?;
        let cur = self.slot(k).cloned().unwrap_or_default();
        let signed = if down { -(n as i128) } else { n as i128 };
        to_bigint(cur.counter_exact() + signed, "ormap counter value")?;
        let mut s = Slot::default();
        s.kinds.0.insert(dot.clone(), Kind::Counter);
        if down {
            s.n = Counts::single(node, cur.n.bump(node, n)?);
        } else {
            s.p = Counts::single(node, cur.p.bump(node, n)?);
        }
        let ctx = self.kind_dots(k, Kind::Counter);
        Ok(self.apply(k, s, ctx, &dot))
    }

    /// What a set mutation on `k` touching element `e` supersedes: the dots
    /// of `e` and the Set markers that carry no element (left by element
    /// removes). Another element's dot is also its Set marker and must stay
    /// out, or merging the delta would drop that element.
    fn set_context(&self, k: &str, e: &str) -> DotSet {
        let Some(s) = self.slot(k) else { return DotSet::new() };
        let mut ctx = s.kinds.dots_where(|x| *x == Kind::Set).difference(&s.set.dots_where(|_| true));
        ctx.union(&s.set.dots_where(|v| v == e));
        ctx
    }

    /// Add element `e` to the set at `k`. Supersedes nothing (see the
    /// module's note).
    pub fn add(&mut self, k: &str, e: &str, dot: Dot) -> Result<OrMap> {
        self.check_kind(k, Kind::Set)?;
        let ctx = DotSet::new();
        let mut s = Slot::default();
        s.kinds.0.insert(dot.clone(), Kind::Set);
        s.set.0.insert(dot.clone(), e.to_string());
        Ok(self.apply(k, s, ctx, &dot))
    }

    /// Remove element `e` from the set at `k`; a no-op if it is not there.
    pub fn remove_element(&mut self, k: &str, e: &str, dot: Dot) -> Result<OrMap> {
        self.check_kind(k, Kind::Set)?;
        let seen = self.slot(k).map(|s| s.set.dots_where(|v| v == e)).unwrap_or_default();
        if seen.is_empty() {
            return Ok(OrMap::default());
        }
        // The new marker keeps the key (and its set, maybe now empty) alive.
        let ctx = self.set_context(k, e);
        let mut s = Slot::default();
        s.kinds.0.insert(dot.clone(), Kind::Set);
        Ok(self.apply(k, s, ctx, &dot))
    }

    /// Write `v` to the register at `k`, superseding every value seen there.
    pub fn assign(&mut self, k: &str, v: Json, dot: Dot) -> Result<OrMap> {
        self.check_kind(k, Kind::Register)?;
        let mut ctx = self.kind_dots(k, Kind::Register);
        if let Some(s) = self.slot(k) {
            ctx.union(&s.reg.dots_where(|_| true));
        }
        let mut s = Slot::default();
        s.kinds.0.insert(dot.clone(), Kind::Register);
        s.reg.0.insert(dot.clone(), v);
        Ok(self.apply(k, s, ctx, &dot))
    }

    /// Remove key `k` as observed here; a no-op if it is not there.
    pub fn remove_key(&mut self, k: &str) -> OrMap {
        let Some(cur) = self.slot(k) else { return OrMap::default() };
        if cur.kinds.is_empty() {
            return OrMap::default();
        }
        let mut ctx = cur.kinds.dots_where(|_| true);
        ctx.union(&cur.set.dots_where(|_| true));
        ctx.union(&cur.reg.dots_where(|_| true));
        let s = Slot { rp: cur.p.clone(), rn: cur.n.clone(), ..Default::default() };
        let mut d = OrMap { covers: BTreeMap::from([(k.to_string(), cur.attribute(&ctx))]), context: ctx, ..Default::default() };
        if !s.is_empty() {
            d.entries.insert(k.to_string(), s);
        }
        self.merge(&d);
        d
    }

    /// The value at `k` as JSON, or None if the key is absent.
    pub fn get(&self, k: &str) -> Result<Option<serde_json::Value>> {
        let Some(s) = self.slot(k) else { return Ok(None) };
        let kinds = s.live_kinds();
        match kinds.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(s.user_value(*one)?)),
            many => {
                let mut m = serde_json::Map::new();
                for kind in many {
                    m.insert(kind.name().to_string(), s.user_value(*kind)?);
                }
                Ok(Some(serde_json::json!({ "conflict": m })))
            }
        }
    }

    /// Every dot some entry still holds (presence markers, set elements,
    /// register values).
    pub fn live_dots(&self) -> DotSet {
        let mut all = DotSet::new();
        for s in self.entries.values() {
            all.union(&s.kinds.dots_where(|_| true));
            all.union(&s.set.dots_where(|_| true));
            all.union(&s.reg.dots_where(|_| true));
        }
        all
    }

    pub fn keys(&self) -> Vec<String> {
        self.entries.iter().filter(|(_, s)| !s.kinds.is_empty()).map(|(k, _)| k.clone()).collect()
    }
}

impl Crdt for OrMap {
    const TAG: u8 = 9;
    const NAME: &'static str = "ormap";
    const LATEST_VERSION: u8 = 2;

    /// Version 1 (entries, context) unless `covers` says something:
    /// version 2 (entries, context, covers). States, and every ormap value
    /// made before covers existed, keep version 1 and their bytes.
    fn write_binary(&self, out: &mut Vec<u8>) -> u8 {
        if self.covers.is_empty() {
            write_postcard(&(&self.entries, &self.context), out);
            1
        } else {
            write_postcard(&(&self.entries, &self.context, &self.covers), out);
            2
        }
    }

    fn read_binary(version: u8, body: &[u8]) -> std::result::Result<(Self, &[u8]), postcard::Error> {
        if version == 1 {
            let ((entries, context), rest) = postcard::take_from_bytes(body)?;
            Ok((OrMap { entries, context, covers: BTreeMap::new() }, rest))
        } else {
            let ((entries, context, covers), rest) = postcard::take_from_bytes(body)?;
            Ok((OrMap { entries, context, covers }, rest))
        }
    }

    fn merge(&mut self, other: &Self) {
        let empty = Slot::default();
        for (k, s) in self.entries.iter_mut() {
            s.merge(&self.context, other.entries.get(k).unwrap_or(&empty), &other.context);
        }
        for (k, os) in &other.entries {
            if !self.entries.contains_key(k) {
                let mut s = Slot::default();
                s.merge(&self.context, os, &other.context);
                self.entries.insert(k.clone(), s);
            }
        }
        self.entries.retain(|_, s| !s.is_empty());
        self.context.union(&other.context);
        // A merge makes a state: what one delta superseded is no longer
        // what this value supersedes (a merged delta then covers dots it
        // does not attribute, which the removal rule counts as removals).
        self.as_state();
    }

    fn as_state(&mut self) {
        self.covers.clear();
    }

    /// Also says per key what `new` superseded of `old` (`covers`).
    fn delta(new: &Self, old: &Self) -> Self {
        let empty = Slot::default();
        let mut d = OrMap::default();
        let mut removed = DotSet::new();
        for (k, os) in &old.entries {
            let ns = new.entries.get(k).unwrap_or(&empty);
            let mut gone = DotSet::new();
            DotMap::delta(&ns.kinds, &new.context, &os.kinds, &old.context, &mut gone);
            DotMap::delta(&ns.set, &new.context, &os.set, &old.context, &mut gone);
            DotMap::delta(&ns.reg, &new.context, &os.reg, &old.context, &mut gone);
            if !gone.is_empty() {
                d.covers.insert(k.clone(), os.attribute(&gone));
                removed.union(&gone);
            }
        }
        for (k, ns) in &new.entries {
            let os = old.entries.get(k).unwrap_or(&empty);
            let mut ignored = DotSet::new();
            let s = Slot {
                kinds: DotMap::delta(&ns.kinds, &new.context, &os.kinds, &old.context, &mut ignored),
                set: DotMap::delta(&ns.set, &new.context, &os.set, &old.context, &mut ignored),
                reg: DotMap::delta(&ns.reg, &new.context, &os.reg, &old.context, &mut ignored),
                p: Counts::delta(&ns.p, &os.p),
                n: Counts::delta(&ns.n, &os.n),
                rp: Counts::delta(&ns.rp, &os.rp),
                rn: Counts::delta(&ns.rn, &os.rn),
            };
            if !s.is_empty() {
                d.entries.insert(k.clone(), s);
            }
        }
        d.context = new.context.difference(&old.context);
        d.context.union(&removed);
        d
    }

    /// As orset's: the context drops the dots whose removal or overwrite
    /// is stable (the base has seen them and holds them no longer) and that
    /// are not live here. Any op still carrying such a dot is a duplicate,
    /// which the op log drops by its counter. A removed key's counts
    /// (`p`/`n`/`rp`/`rn`) stay: a node's next increment sends its running
    /// total, so forgetting what it counted before would change the sum on
    /// nodes that did not forget.
    fn stable_form(&self, stable: &Self) -> Option<Self> {
        let removed = stable.context.difference(&stable.live_dots());
        let gone = removed.difference(&self.live_dots());
        let context = self.context.difference(&gone);
        (context != self.context).then(|| OrMap { entries: self.entries.clone(), context, covers: BTreeMap::new() })
    }

    fn validate(&self) -> Result<()> {
        self.context.validate()?;
        for s in self.entries.values() {
            if s.is_empty() {
                return Err(Error::binary("empty ormap entry"));
            }
            s.kinds.validate(&self.context)?;
            s.set.validate(&self.context)?;
            s.reg.validate(&self.context)?;
            for v in s.reg.0.values() {
                v.validate()?;
            }
            for c in [&s.p, &s.n, &s.rp, &s.rn] {
                c.validate()?;
            }
        }
        self.validate_covers()
    }

    fn to_user_json(&self) -> Result<serde_json::Value> {
        let mut m = serde_json::Map::new();
        for k in self.keys() {
            if let Some(v) = self.get(&k)? {
                m.insert(k, v);
            }
        }
        Ok(serde_json::Value::Object(m))
    }

    fn prune_text(v: &mut serde_json::Value) {
        if let Some(serde_json::Value::Object(entries)) = v.get_mut("entries") {
            for slot in entries.values_mut() {
                prune_empty_members(slot);
            }
        }
        prune_empty_members(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dot(a: &str, c: u64) -> Dot {
        Dot::new(a, c)
    }

    #[test]
    fn second_add_keeps_first_element() {
        let mut m = OrMap::default();
        m.add("b", "x", dot("madrid", 1)).unwrap();
        m.add("b", "y", dot("madrid", 2)).unwrap();
        assert_eq!(m.get("b").unwrap(), Some(json!(["x", "y"])));
    }

    #[test]
    fn remove_element_keeps_the_others() {
        // Elements from two nodes, so no add has ever covered the other one.
        let mut m = OrMap::default();
        let mut other = OrMap::default();
        m.add("b", "x", dot("madrid", 1)).unwrap();
        other.add("b", "y", dot("dublin", 1)).unwrap();
        m.merge(&other);
        other.merge(&m);
        assert_eq!(m.get("b").unwrap(), Some(json!(["x", "y"])));
        let d = m.remove_element("b", "x", dot("madrid", 2)).unwrap();
        assert_eq!(m.get("b").unwrap(), Some(json!(["y"])));
        // The delta alone does the same to the other replica.
        other.merge(&d);
        assert_eq!(other, m);
        // Removing the last element leaves the key with an empty set.
        m.remove_element("b", "y", dot("madrid", 3)).unwrap();
        assert_eq!(m.get("b").unwrap(), Some(json!([])));
        assert_eq!(m.keys(), vec!["b".to_string()]);
    }

    #[test]
    fn elements_from_two_nodes_survive_a_later_add() {
        let mut a = OrMap::default();
        let mut b = OrMap::default();
        a.add("k", "x", dot("madrid", 1)).unwrap();
        b.add("k", "y", dot("dublin", 1)).unwrap();
        a.merge(&b);
        b.merge(&a);
        let d = a.add("k", "z", dot("madrid", 2)).unwrap();
        assert_eq!(a.get("k").unwrap(), Some(json!(["x", "y", "z"])));
        b.merge(&d);
        assert_eq!(b, a);
        // A remove on the other node takes only its element.
        let d = b.remove_element("k", "x", dot("dublin", 2)).unwrap();
        a.merge(&d);
        assert_eq!(a.get("k").unwrap(), Some(json!(["y", "z"])));
    }

    #[test]
    fn remove_key_keeps_only_the_concurrent_add() {
        let mut a = OrMap::default();
        a.add("k", "x", dot("madrid", 1)).unwrap();
        a.add("k", "y", dot("madrid", 2)).unwrap();
        let mut b = a.clone();
        let removed = a.remove_key("k");
        assert_eq!(a.get("k").unwrap(), None);
        let added = b.add("k", "z", dot("dublin", 1)).unwrap();
        a.merge(&added);
        b.merge(&removed);
        assert_eq!(a, b);
        assert_eq!(a.get("k").unwrap(), Some(json!(["z"])));
    }

    #[test]
    fn concurrent_kinds_both_survive_later_set_updates() {
        let mut a = OrMap::default();
        let mut b = OrMap::default();
        a.add("k", "x", dot("madrid", 1)).unwrap();
        b.assign("k", Json::parse("1").unwrap(), dot("dublin", 1)).unwrap();
        a.merge(&b);
        a.add("k", "y", dot("madrid", 2)).unwrap();
        assert_eq!(a.get("k").unwrap(), Some(json!({"conflict": {"orset": ["x", "y"], "mvreg": [1]}})));
        assert_eq!(a.incr("k", "madrid", 1, dot("madrid", 3)).unwrap_err().kind, ErrorKind::WrongType);
    }
}
