//! Dots (unique event ids) and causal contexts for the observed-remove types.
//!
//! A dot is `(actor, counter)` where the counter comes from a durable per-node
//! sequence shared by every value the node touches. A node's dots inside one
//! value are therefore sparse, and a causal context cannot be a plain version
//! vector: it is an exact set of dots, stored per actor as sorted, disjoint,
//! non-adjacent inclusive ranges so that runs compress.

use crate::actor::{validate_actor, Actor};
use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub actor: Actor,
    pub counter: u64,
}

impl Dot {
    pub fn new(actor: impl Into<Actor>, counter: u64) -> Dot {
        Dot { actor: actor.into(), counter }
    }
}

/// An exact set of dots (a causal context).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DotSet(BTreeMap<Actor, Vec<(u64, u64)>>);

fn coalesce(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// `a \ b` for sorted, disjoint range lists.
fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(lo, hi) in a {
        let mut cur = lo;
        while j < b.len() && b[j].1 < cur {
            j += 1;
        }
        let mut k = j;
        let mut covered_to_end = false;
        while k < b.len() && b[k].0 <= hi {
            if b[k].0 > cur {
                out.push((cur, b[k].0 - 1));
            }
            if b[k].1 >= hi {
                covered_to_end = true;
                break;
            }
            cur = b[k].1 + 1; // b[k].1 < hi, so no overflow and cur <= hi
            k += 1;
        }
        if !covered_to_end {
            out.push((cur, hi));
        }
    }
    out
}

impl DotSet {
    pub fn new() -> Self {
        DotSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, d: &Dot) -> bool {
        match self.0.get(&d.actor) {
            None => false,
            Some(r) => {
                let i = r.partition_point(|&(_, hi)| hi < d.counter);
                i < r.len() && r[i].0 <= d.counter
            }
        }
    }

    pub fn insert(&mut self, d: &Dot) {
        let c = d.counter;
        if !self.0.contains_key(&d.actor) {
            self.0.insert(d.actor.clone(), Vec::new());
        }
        let Some(r) = self.0.get_mut(&d.actor) else { return };
        let i = r.partition_point(|&(_, hi)| hi < c);
        if i < r.len() && r[i].0 <= c {
            return;
        }
        let join_left = i > 0 && r[i - 1].1 + 1 == c;
        let join_right = i < r.len() && c.checked_add(1) == Some(r[i].0);
        match (join_left, join_right) {
            (true, true) => {
                r[i - 1].1 = r[i].1;
                r.remove(i);
            }
            (true, false) => r[i - 1].1 = c,
            (false, true) => r[i].0 = c,
            (false, false) => r.insert(i, (c, c)),
        }
    }

    pub fn union(&mut self, other: &DotSet) {
        for (actor, theirs) in &other.0 {
            match self.0.get_mut(actor) {
                None => {
                    self.0.insert(actor.clone(), theirs.clone());
                }
                Some(mine) => {
                    if mine != theirs {
                        let mut all = std::mem::take(mine);
                        all.extend_from_slice(theirs);
                        *mine = coalesce(all);
                    }
                }
            }
        }
    }

    pub fn difference(&self, other: &DotSet) -> DotSet {
        let mut out = BTreeMap::new();
        for (actor, mine) in &self.0 {
            let rest = match other.0.get(actor) {
                None => mine.clone(),
                Some(theirs) => subtract(mine, theirs),
            };
            if !rest.is_empty() {
                out.insert(actor.clone(), rest);
            }
        }
        DotSet(out)
    }

    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.0
            .iter()
            .flat_map(|(a, r)| r.iter().flat_map(move |&(lo, hi)| (lo..=hi).map(move |c| Dot::new(a.clone(), c))))
    }

    /// Number of stored ranges (a measure of the context's size).
    pub fn range_count(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    pub fn validate(&self) -> Result<()> {
        for (actor, r) in &self.0 {
            validate_actor(actor).map_err(|e| Error::binary(e.message))?;
            if r.is_empty() {
                return Err(Error::binary("empty range list in causal context"));
            }
            let mut prev: Option<u64> = None;
            for &(lo, hi) in r {
                if lo == 0 || lo > hi {
                    return Err(Error::binary("invalid dot range in causal context"));
                }
                if let Some(p) = prev {
                    if lo <= p.saturating_add(1) {
                        return Err(Error::binary("causal context ranges are not sorted, disjoint and apart (adjacent ranges are one range: [1,4], not [1,2],[3,4])"));
                    }
                }
                prev = Some(hi);
            }
        }
        Ok(())
    }
}

/// Dot-keyed payloads: the store of the observed-remove types. Serialized as a
/// sequence of `[actor, counter, value]` so it also has a JSON form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DotMap<V>(pub BTreeMap<Dot, V>);

impl<V> Default for DotMap<V> {
    fn default() -> Self {
        DotMap(BTreeMap::new())
    }
}

impl<V: Serialize> Serialize for DotMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(d, v)| (&d.actor, d.counter, v)))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for DotMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let items: Vec<(Actor, u64, V)> = Vec::deserialize(d)?;
        let n = items.len();
        let map: BTreeMap<Dot, V> = items.into_iter().map(|(a, c, v)| (Dot::new(a, c), v)).collect();
        if map.len() != n {
            return Err(serde::de::Error::custom("duplicate dot"));
        }
        Ok(DotMap(map))
    }
}

impl<V: Clone + Ord> DotMap<V> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Join of two dot stores under their contexts: a dot survives if both
    /// sides have it, or one side has it and the other has not seen it.
    pub fn merge(&mut self, my_ctx: &DotSet, other: &DotMap<V>, other_ctx: &DotSet) {
        self.0.retain(|d, _| other.0.contains_key(d) || !other_ctx.contains(d));
        for (d, v) in &other.0 {
            match self.0.get_mut(d) {
                // The same dot always carries the same payload in a real history;
                // taking the larger keeps merge commutative even for forged input.
                Some(mine) => {
                    if v > mine {
                        *mine = v.clone();
                    }
                }
                None => {
                    if !my_ctx.contains(d) {
                        self.0.insert(d.clone(), v.clone());
                    }
                }
            }
        }
    }

    /// The part of `new` that `old` lacks, and the dots of `old` that `new`
    /// removed (added to `removed`).
    pub fn delta(new: &DotMap<V>, new_ctx: &DotSet, old: &DotMap<V>, old_ctx: &DotSet, removed: &mut DotSet) -> DotMap<V> {
        for d in old.0.keys() {
            if new_ctx.contains(d) && !new.0.contains_key(d) {
                removed.insert(d);
            }
        }
        DotMap(new.0.iter().filter(|(d, _)| !old_ctx.contains(d)).map(|(d, v)| (d.clone(), v.clone())).collect())
    }

    /// Every dot must be in the context: a state that holds a dot it has not
    /// seen is not a state any history can produce.
    pub fn validate(&self, ctx: &DotSet) -> Result<()> {
        for d in self.0.keys() {
            validate_actor(&d.actor).map_err(|e| Error::binary(e.message))?;
            if d.counter == 0 || !ctx.contains(d) {
                return Err(Error::binary("dot missing from causal context"));
            }
        }
        Ok(())
    }

    pub fn dots_where(&self, mut f: impl FnMut(&V) -> bool) -> DotSet {
        let mut s = DotSet::new();
        for (d, v) in &self.0 {
            if f(v) {
                s.insert(d);
            }
        }
        s
    }

    pub fn distinct_values(&self) -> Vec<V> {
        let mut v: Vec<V> = self.0.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Join of two dot-kernel states (a dot store with its causal context), the
/// merge of orset and mvreg.
pub fn kernel_merge<V: Clone + Ord>(entries: &mut DotMap<V>, ctx: &mut DotSet, other: &DotMap<V>, other_ctx: &DotSet) {
    entries.merge(ctx, other, other_ctx);
    ctx.union(other_ctx);
}

/// `delta(new, old)` of a dot-kernel state: the dots `old` has not seen,
/// and as context what `new` saw beyond `old` plus the dots of `old` that
/// `new` removed.
pub fn kernel_delta<V: Clone + Ord>(
    new: &DotMap<V>,
    new_ctx: &DotSet,
    old: &DotMap<V>,
    old_ctx: &DotSet,
) -> (DotMap<V>, DotSet) {
    let mut removed = DotSet::new();
    let entries = DotMap::delta(new, new_ctx, old, old_ctx, &mut removed);
    let mut context = new_ctx.difference(old_ctx);
    context.union(&removed);
    (entries, context)
}
