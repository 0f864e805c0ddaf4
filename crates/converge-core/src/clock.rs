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
    pub fn tick(&mut self, wall_ms: u64, node: &str) -> Timestamp {
        if wall_ms > self.ms {
            self.ms = wall_ms;
            self.logical = 0;
        } else if self.logical == u32::MAX {
            self.ms += 1;
            self.logical = 0;
        } else {
            self.logical += 1;
        }
        Timestamp(self.ms, self.logical, node.to_string())
    }
}
