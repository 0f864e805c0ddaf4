//! Observed-remove set of text (add wins over a concurrent remove).
//!
//! Each add tags the element with a fresh dot; a remove covers exactly the
//! dots it has observed, so an add made concurrently elsewhere survives.

use crate::codec::Crdt;
use crate::dots::{kernel_delta, kernel_merge, Dot, DotMap, DotSet};
use crate::error::Result;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrSet {
    /// Live (dot, element) pairs.
    #[serde(default)]
    pub entries: DotMap<String>,
    /// Every dot this state has seen.
    #[serde(default)]
    pub context: DotSet,
}

impl OrSet {
    /// Add `e` under the fresh dot `dot`; returns the delta, already applied.
    /// The delta covers only its own dot, never the dots `e` already has:
    /// an add then removes nothing, which is what lets an authority route
    /// only removals (`removes_only`, see [`OrSet::removes`]) while adds
    /// stay local. An element added twice holds two dots until a remove.
    pub fn add(&mut self, e: &str, dot: Dot) -> OrSet {
        let mut d = OrSet::default();
        d.context.insert(&dot);
        d.entries.0.insert(dot, e.to_string());
        self.merge(&d);
        d
    }

    /// Remove every observed instance of `e`; a no-op (empty delta) if absent.
    pub fn remove(&mut self, e: &str) -> OrSet {
        let d = OrSet { entries: DotMap::default(), context: self.entries.dots_where(|v| v == e) };
        self.merge(&d);
        d
    }

    /// Whether this state, taken as a delta, removes something: its
    /// context covers a dot that it does not carry. Decided from the delta
    /// alone, so every node decides alike whatever it has seen ([`OrSet::add`]
    /// never covers a dot it does not carry).
    pub fn removes(&self) -> bool {
        !self.context.difference(&self.entries.dots_where(|_| true)).is_empty()
    }

    pub fn contains(&self, e: &str) -> bool {
        self.entries.0.values().any(|v| v == e)
    }

    pub fn elements(&self) -> Vec<String> {
        self.entries.distinct_values()
    }
}

impl Crdt for OrSet {
    const TAG: u8 = 5;
    const NAME: &'static str = "orset";

    fn merge(&mut self, other: &Self) {
        kernel_merge(&mut self.entries, &mut self.context, &other.entries, &other.context);
    }
    fn delta(new: &Self, old: &Self) -> Self {
        let (entries, context) = kernel_delta(&new.entries, &new.context, &old.entries, &old.context);
        OrSet { entries, context }
    }
    /// The context drops the dots whose removal (or overwrite) is stable:
    /// such a dot only guarded against ops that had not arrived yet, and
    /// once its removal is stable any op carrying it is a duplicate (the op
    /// log deduplicates it by counter). Dots removed by ops not yet stable
    /// stay.
    fn stable_form(&self, stable: &Self) -> Option<Self> {
        let removed = stable.context.difference(&stable.entries.dots_where(|_| true));
        let gone = removed.difference(&self.entries.dots_where(|_| true));
        let context = self.context.difference(&gone);
        (context != self.context).then(|| OrSet { entries: self.entries.clone(), context })
    }
    fn validate(&self) -> Result<()> {
        self.context.validate()?;
        self.entries.validate(&self.context)
    }
    fn to_user_json(&self) -> Result<serde_json::Value> {
        Ok(self.elements().into())
    }
}
