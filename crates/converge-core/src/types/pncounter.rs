//! Counter that goes up and down: two grow-only counters, value p - n.

use super::counts::{to_bigint, Counts};
use crate::codec::Crdt;
use crate::error::Result;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PnCounter {
    #[serde(default)]
    pub p: Counts,
    #[serde(default)]
    pub n: Counts,
}

impl PnCounter {
    pub fn value(&self) -> Result<i64> {
        to_bigint(self.p.total() - self.n.total(), "pncounter value")
    }

    /// Add `n` for `node`; a negative `n` decrements. Returns the delta.
    pub fn incr(&mut self, node: &str, n: i64) -> Result<PnCounter> {
        // unsigned_abs: i64::MIN is a decrement of 2^63, not of i64::MAX.
        self.count(node, n.unsigned_abs(), n < 0)
    }

    /// Subtract `n` for `node`; a negative `n` increments.
    pub fn decr(&mut self, node: &str, n: i64) -> Result<PnCounter> {
        self.count(node, n.unsigned_abs(), n >= 0)
    }

    fn count(&mut self, node: &str, n: u64, down: bool) -> Result<PnCounter> {
        let signed = if down { -(n as i128) } else { n as i128 };
        to_bigint(self.p.total() - self.n.total() + signed, "pncounter value")?;
        let d = if down {
            PnCounter { p: Counts::default(), n: Counts::single(node, self.n.bump(node, n)?) }
        } else {
            PnCounter { p: Counts::single(node, self.p.bump(node, n)?), n: Counts::default() }
        };
        self.merge(&d);
        Ok(d)
    }
}

impl Crdt for PnCounter {
    const TAG: u8 = 2;
    const NAME: &'static str = "pncounter";

    fn merge(&mut self, other: &Self) {
        self.p.merge(&other.p);
        self.n.merge(&other.n);
    }
    fn delta(new: &Self, old: &Self) -> Self {
        PnCounter { p: Counts::delta(&new.p, &old.p), n: Counts::delta(&new.n, &old.n) }
    }
    fn validate(&self) -> Result<()> {
        self.p.validate()?;
        self.n.validate()
    }
    fn merge_encoded(&mut self, bytes: &[u8]) -> Result<()> {
        type Pairs<'a> = Vec<(&'a str, u64)>;
        let (p, n): (Pairs, Pairs) = crate::codec::decode_view::<Self, _>(bytes)?;
        self.p.merge_pairs(&p);
        self.n.merge_pairs(&n);
        Ok(())
    }
    fn to_user_json(&self) -> Result<serde_json::Value> {
        Ok(self.value()?.into())
    }
}
