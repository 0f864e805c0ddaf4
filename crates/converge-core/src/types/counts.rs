//! Per-node monotonic counts: the building block of every counter.

use crate::actor::{validate_actor, Actor};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest count one node may hold in one entry (so sums fit i128 easily and
/// every single entry fits bigint).
pub const MAX_COUNT: u64 = i64::MAX as u64;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Counts(pub BTreeMap<Actor, u64>);

impl Counts {
    pub fn get(&self, a: &str) -> u64 {
        self.0.get(a).copied().unwrap_or(0)
    }

    pub fn total(&self) -> i128 {
        self.0.values().map(|&v| v as i128).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Add `n` to `a`'s entry; returns the new entry value.
    pub fn bump(&self, a: &str, n: u64) -> Result<u64> {
        self.get(a)
            .checked_add(n)
            .filter(|&v| v <= MAX_COUNT)
            .ok_or_else(|| Error::range(format!("count of node \"{a}\" would exceed bigint")))
    }

    pub fn set(&mut self, a: &str, v: u64) {
        if v == 0 {
            self.0.remove(a);
        } else {
            self.0.insert(a.to_string(), v);
        }
    }

    pub fn single(a: &str, v: u64) -> Counts {
        let mut c = Counts::default();
        c.set(a, v);
        c
    }

    pub fn merge(&mut self, other: &Counts) {
        for (a, &v) in &other.0 {
            // get_mut first: merge runs per row in merge_agg, and cloning the
            // key for `entry` would allocate even when it is already there.
            match self.0.get_mut(a) {
                Some(e) => *e = (*e).max(v),
                None => {
                    self.0.insert(a.clone(), v);
                }
            }
        }
    }

    /// Merge entries given as borrowed (node, count) pairs, allocating only
    /// for nodes not seen before.
    pub fn merge_pairs(&mut self, pairs: &[(&str, u64)]) {
        for &(a, v) in pairs {
            match self.0.get_mut(a) {
                Some(e) => *e = (*e).max(v),
                None => {
                    self.0.insert(a.to_string(), v);
                }
            }
        }
    }

    /// Entries of `new` that are larger than in `old`.
    pub fn delta(new: &Counts, old: &Counts) -> Counts {
        Counts(new.0.iter().filter(|(a, &v)| v > old.get(a)).map(|(a, &v)| (a.clone(), v)).collect())
    }

    pub fn validate(&self) -> Result<()> {
        for (a, &v) in &self.0 {
            validate_actor(a).map_err(|e| Error::binary(e.message))?;
            if v == 0 || v > MAX_COUNT {
                return Err(Error::binary(format!("count {v} of node \"{a}\" is out of range 1..{MAX_COUNT}")));
            }
        }
        Ok(())
    }
}

/// Convert an exact total to bigint, or fail with 22003.
pub fn to_bigint(v: i128, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::range(format!("{what} {v} is out of range for type bigint")))
}

/// Increments are amounts, never negative.
pub fn amount(n: i64, what: &str) -> Result<u64> {
    u64::try_from(n).map_err(|_| Error::param(format!("{what} must not be negative, got {n}")))
}
