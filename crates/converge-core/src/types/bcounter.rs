//! Bounded (escrow) counter: a counter that never goes below zero without
//! coordination. Every increment grants its node as many rights; a node may
//! only decrement by rights it holds, and rights move between nodes only by
//! `transfer`. Because each node spends only its own rights, the sum of all
//! spending can never exceed what was granted, under any partition.

use super::counts::{amount, to_bigint, Counts, MAX_COUNT};
use crate::actor::{validate_actor, Actor};
use crate::codec::Crdt;
use crate::error::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BCounter {
    /// Increments (grants) per node.
    #[serde(default)]
    pub p: Counts,
    /// Decrements (spends) per node.
    #[serde(default)]
    pub n: Counts,
    /// Rights moved: `t[from][to]`, monotonic.
    #[serde(default)]
    pub t: BTreeMap<Actor, Counts>,
}

impl BCounter {
    pub fn value(&self) -> Result<i64> {
        to_bigint(self.p.total() - self.n.total(), "bcounter value")
    }

    fn rights_exact(&self, node: &str) -> i128 {
        let incoming: i128 = self.t.values().map(|c| c.get(node) as i128).sum();
        let outgoing: i128 = self.t.get(node).map(Counts::total).unwrap_or(0);
        self.p.get(node) as i128 + incoming - outgoing - self.n.get(node) as i128
    }

    /// Rights `node` may still spend.
    pub fn rights(&self, node: &str) -> Result<i64> {
        to_bigint(self.rights_exact(node), "bcounter rights")
    }

    fn spend_check(&self, node: &str, n: u64, verb: &str) -> Result<()> {
        let held = self.rights_exact(node);
        if (n as i128) > held {
            return Err(Error::new(
                ErrorKind::InsufficientRights,
                format!("cannot {verb} {n}: node \"{node}\" holds only {held} rights on this bcounter"),
            ));
        }
        Ok(())
    }

    pub fn incr(&mut self, node: &str, n: i64) -> Result<BCounter> {
        let n = amount(n, "bcounter increment")?;
        to_bigint(self.p.total() + n as i128 - self.n.total(), "bcounter value")?;
        let d = BCounter { p: Counts::single(node, self.p.bump(node, n)?), ..Default::default() };
        self.merge(&d);
        Ok(d)
    }

    pub fn decr(&mut self, node: &str, n: i64) -> Result<BCounter> {
        let n = amount(n, "bcounter decrement")?;
        self.spend_check(node, n, "decrement by")?;
        let d = BCounter { n: Counts::single(node, self.n.bump(node, n)?), ..Default::default() };
        self.merge(&d);
        Ok(d)
    }

    pub fn transfer(&mut self, node: &str, to: &str, n: i64) -> Result<BCounter> {
        validate_actor(to)?;
        if node == to {
            return Err(Error::param(format!("cannot transfer rights from node \"{node}\" to itself")));
        }
        let n = amount(n, "transfer amount")?;
        self.spend_check(node, n, "transfer")?;
        let out = self.t.get(node).cloned().unwrap_or_default();
        let v = out.bump(to, n)?;
        let mut d = BCounter::default();
        if v > 0 {
            d.t.insert(node.to_string(), Counts::single(to, v));
        }
        self.merge(&d);
        Ok(d)
    }
}

impl Crdt for BCounter {
    const TAG: u8 = 3;
    const NAME: &'static str = "bcounter";

    fn merge(&mut self, other: &Self) {
        self.p.merge(&other.p);
        self.n.merge(&other.n);
        for (from, c) in &other.t {
            match self.t.get_mut(from) {
                Some(mine) => mine.merge(c),
                None => {
                    self.t.insert(from.clone(), c.clone());
                }
            }
        }
    }
    fn delta(new: &Self, old: &Self) -> Self {
        let empty = Counts::default();
        let t = new
            .t
            .iter()
            .map(|(from, c)| (from.clone(), Counts::delta(c, old.t.get(from).unwrap_or(&empty))))
            .filter(|(_, c)| !c.is_empty())
            .collect();
        BCounter { p: Counts::delta(&new.p, &old.p), n: Counts::delta(&new.n, &old.n), t }
    }
    fn validate(&self) -> Result<()> {
        self.p.validate()?;
        self.n.validate()?;
        for (from, c) in &self.t {
            validate_actor(from).map_err(|e| Error::binary(e.message))?;
            if c.is_empty() {
                return Err(Error::binary("empty transfer entry"));
            }
            c.validate()?;
            if c.0.contains_key(from) {
                return Err(Error::binary("transfer from a node to itself"));
            }
            if c.0.values().any(|&v| v > MAX_COUNT) {
                return Err(Error::binary("transfer out of range"));
            }
        }
        Ok(())
    }
    fn to_user_json(&self) -> Result<serde_json::Value> {
        Ok(self.value()?.into())
    }
}
