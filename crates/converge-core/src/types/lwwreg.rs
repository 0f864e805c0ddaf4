//! Last-writer-wins register holding one JSON value.

use crate::clock::Timestamp;
use crate::codec::Crdt;
use crate::error::Result;
use crate::json::Json;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LwwWrite {
    pub ts: Timestamp,
    pub value: Json,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LwwReg {
    #[serde(default)]
    pub write: Option<LwwWrite>,
}

impl LwwReg {
    pub fn value(&self) -> Option<&Json> {
        self.write.as_ref().map(|w| &w.value)
    }

    /// The newest timestamp in the value (a clock must move past it).
    pub fn max_timestamp(&self) -> Option<&Timestamp> {
        self.write.as_ref().map(|w| &w.ts)
    }

    /// Write `v` at `ts` (which the caller's clock made newer than
    /// `max_timestamp`). Returns the delta, already applied.
    pub fn assign(&mut self, v: Json, ts: Timestamp) -> LwwReg {
        let d = LwwReg { write: Some(LwwWrite { ts, value: v }) };
        self.merge(&d);
        d
    }
}

impl Crdt for LwwReg {
    const TAG: u8 = 6;
    const NAME: &'static str = "lwwreg";

    fn merge(&mut self, other: &Self) {
        // Timestamps order writes; equal timestamps (only from forged input)
        // fall back to the value so the result does not depend on the order.
        if other.write > self.write {
            self.write = other.write.clone();
        }
    }
    fn delta(new: &Self, old: &Self) -> Self {
        if new.write > old.write {
            new.clone()
        } else {
            LwwReg::default()
        }
    }
    fn validate(&self) -> Result<()> {
        if let Some(w) = &self.write {
            w.ts.validate()?;
            w.value.validate()?;
        }
        Ok(())
    }
    fn to_user_json(&self) -> Result<serde_json::Value> {
        Ok(self.value().map(Json::to_value).unwrap_or(serde_json::Value::Null))
    }
}
