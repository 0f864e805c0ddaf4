//! Grow-only counter: one monotonic count per node; value is their sum.

use super::counts::{amount, to_bigint, Counts};
use crate::codec::Crdt;
use crate::error::Result;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GCounter {
    #[serde(default)]
    pub counts: Counts,
}

impl GCounter {
    pub fn value(&self) -> Result<i64> {
        to_bigint(self.counts.total(), "gcounter value")
    }

    /// Add `n` (≥ 0) for `node`; returns the delta, already applied.
    pub fn incr(&mut self, node: &str, n: i64) -> Result<GCounter> {
        let n = amount(n, "gcounter increment")?;
        let v = self.counts.bump(node, n)?;
        to_bigint(self.counts.total() + n as i128, "gcounter value")?;
        let d = GCounter { counts: Counts::single(node, v) };
        self.merge(&d);
        Ok(d)
    }
}

impl Crdt for GCounter {
    const TAG: u8 = 1;
    const NAME: &'static str = "gcounter";

    fn merge(&mut self, other: &Self) {
        self.counts.merge(&other.counts);
    }
    fn delta(new: &Self, old: &Self) -> Self {
        GCounter { counts: Counts::delta(&new.counts, &old.counts) }
    }
    fn validate(&self) -> Result<()> {
        self.counts.validate()
    }
    fn merge_encoded(&mut self, bytes: &[u8]) -> Result<()> {
        // A postcard map and a sequence of pairs have the same bytes.
        let pairs: Vec<(&str, u64)> = crate::codec::decode_view::<Self, _>(bytes)?;
        self.counts.merge_pairs(&pairs);
        Ok(())
    }
    fn to_user_json(&self) -> Result<serde_json::Value> {
        Ok(self.value()?.into())
    }
}
