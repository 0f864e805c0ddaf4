//! Multi-value register: concurrent writes are all kept until a later write
//! (one that has seen them) supersedes them.

use crate::codec::Crdt;
use crate::dots::{kernel_delta, kernel_merge, Dot, DotMap, DotSet};
use crate::error::Result;
use crate::json::Json;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MvReg {
    #[serde(default)]
    pub entries: DotMap<Json>,
    #[serde(default)]
    pub context: DotSet,
}

impl MvReg {
    pub fn assign(&mut self, v: Json, dot: Dot) -> MvReg {
        let mut d = MvReg { entries: DotMap::default(), context: self.entries.dots_where(|_| true) };
        d.context.insert(&dot);
        d.entries.0.insert(dot, v);
        self.merge(&d);
        d
    }

    /// Distinct current values, sorted.
    pub fn values(&self) -> Vec<Json> {
        self.entries.distinct_values()
    }

    pub fn is_conflict(&self) -> bool {
        self.values().len() > 1
    }
}

impl Crdt for MvReg {
    const TAG: u8 = 7;
    const NAME: &'static str = "mvreg";

    fn merge(&mut self, other: &Self) {
        kernel_merge(&mut self.entries, &mut self.context, &other.entries, &other.context);
    }
    fn delta(new: &Self, old: &Self) -> Self {
        let (entries, context) = kernel_delta(&new.entries, &new.context, &old.entries, &old.context);
        MvReg { entries, context }
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
        (context != self.context).then(|| MvReg { entries: self.entries.clone(), context })
    }
    fn validate(&self) -> Result<()> {
        self.context.validate()?;
        self.entries.validate(&self.context)?;
        for v in self.entries.0.values() {
            v.validate()?;
        }
        Ok(())
    }
    fn to_user_json(&self) -> Result<serde_json::Value> {
        Ok(self.values().iter().map(Json::to_value).collect::<Vec<_>>().into())
    }
}
