//! Hybrid logical clock for the last-writer-wins types.
//!
//! A timestamp is (physical milliseconds, logical counter, node). Its order is
//! total: equal (ms, counter) pairs from different nodes are ordered by node
//! name. A clock never goes backwards and always moves past every timestamp it
//! observes, so a write made after seeing another write wins over it, whatever
//! the wall clocks say.

use crate::actor::{validate_actor, Actor};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub u64, pub u32, pub Actor);

impl Timestamp {
    pub fn ms(&self) -> u64 {
        self.0
    }
    pub fn logical(&self) -> u32 {
        self.1
    }
    pub fn node(&self) -> &str {
        &self.2
    }
    pub fn validate(&self) -> Result<()> {
        validate_actor(&self.2).map_err(|e| Error::binary(e.message))
    }

    /// A placeholder write of `node` over the entry timestamped `over`
    /// (None: no entry): physical time 0, so every timestamp a clock ticks
    /// at a wall time after 1970 beats it, and one logical step past
    /// `over` when that is a placeholder too, so the later of two
    /// placeholders wins. An insert made away from a column's authority
    /// writes the column with one (SPEC section 5): the row gets a value,
    /// and no decision of the authority is undone by it.
    pub fn placeholder(node: &str, over: Option<&Timestamp>) -> Timestamp {
        let after = over.filter(|t| t.0 == 0).map_or(0, |t| t.1);
        Timestamp(0, after.saturating_add(1), node.to_string())
    }
}

/// The clock state of one node (or one process of it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hlc {
    ms: u64,
    logical: u32,
}

impl Hlc {
    pub fn new() -> Hlc {
        Hlc::default()
    }

    /// Move past a timestamp seen in data (from any node).
    pub fn observe(&mut self, ts: &Timestamp) {
        if (ts.0, ts.1) > (self.ms, self.logical) {
            self.ms = ts.0;
            self.logical = ts.1;
        }
    }

    /// A fresh timestamp for `node`, strictly after everything this clock
    /// issued or observed. `wall_ms` is the current physical time.
    /// At the very end of its range (a value carrying the largest time,
    /// which no wall clock reaches) it stays there: equal to the last
    /// timestamp, not after it. It wrapped to 0 before, and the write lost
    /// to every other.
    pub fn tick(&mut self, wall_ms: u64, node: &str) -> Timestamp {
        if wall_ms > self.ms {
            self.ms = wall_ms;
            self.logical = 0;
        } else if self.logical < u32::MAX {
            self.logical += 1;
        } else if self.ms < u64::MAX {
            self.ms += 1;
            self.logical = 0;
        }
        Timestamp(self.ms, self.logical, node.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_at_the_end_of_its_range_does_not_wrap() {
        let mut c = Hlc::new();
        c.observe(&Timestamp(u64::MAX - 1, u32::MAX, "z".into()));
        let t = c.tick(1_700_000_000_000, "a");
        assert_eq!((t.0, t.1), (u64::MAX, 0));
        c.observe(&Timestamp(u64::MAX, u32::MAX, "z".into()));
        let t = c.tick(1_700_000_000_000, "a");
        assert_eq!((t.0, t.1), (u64::MAX, u32::MAX));
    }

    #[test]
    fn real_writes_beat_placeholders_and_the_later_placeholder_wins() {
        let first = Timestamp::placeholder("zz", None);
        assert_eq!(first, Timestamp(0, 1, "zz".into()));
        // Any tick at a real wall time, of any node, beats it.
        assert!(Hlc::new().tick(1_700_000_000_000, "a") > first);
        // A placeholder over a placeholder goes one step past it, whatever
        // the nodes' names; over a real write it starts again at 1.
        let later = Timestamp::placeholder("a", Some(&first));
        assert!(later > first);
        let real = Hlc::new().tick(1_700_000_000_000, "m");
        assert_eq!(Timestamp::placeholder("a", Some(&real)), Timestamp(0, 1, "a".into()));
        // Two made over the same entry are ordered by node.
        assert!(Timestamp::placeholder("b", None) > Timestamp::placeholder("a", None));
    }
}
