//! Map of text keys to JSON values, each key last-writer-wins. A remove is a
//! timestamped tombstone, so the later of a put and a remove wins.

use crate::clock::Timestamp;
use crate::codec::Crdt;
use crate::error::{Error, Result};
use crate::json::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LwwSlot {
    /// A tombstone (orders before any put at an equal timestamp).
    Del,
    Put(Json),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LwwEntry(pub Timestamp, pub LwwSlot);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LwwMap {
    #[serde(default)]
    pub entries: BTreeMap<String, LwwEntry>,
}

impl LwwMap {
    pub fn get(&self, k: &str) -> Option<&Json> {
        match self.entries.get(k) {
            Some(LwwEntry(_, LwwSlot::Put(v))) => Some(v),
            _ => None,
        }
    }

    pub fn keys(&self) -> Vec<String> {
        self.entries.iter().filter(|(_, e)| matches!(e.1, LwwSlot::Put(_))).map(|(k, _)| k.clone()).collect()
    }

    pub fn max_timestamp(&self) -> Option<&Timestamp> {
        self.entries.values().map(|e| &e.0).max()
    }

    fn write(&mut self, k: &str, slot: LwwSlot, ts: Timestamp) -> LwwMap {
        let mut d = LwwMap::default();
        d.entries.insert(k.to_string(), LwwEntry(ts, slot));
        self.merge(&d);
        d
    }

    pub fn put(&mut self, k: &str, v: Json, ts: Timestamp) -> LwwMap {
        self.write(k, LwwSlot::Put(v), ts)
    }

    /// Always writes a tombstone, even for a key absent here, so it also wins
    /// over an older put made elsewhere.
    pub fn remove(&mut self, k: &str, ts: Timestamp) -> LwwMap {
        self.write(k, LwwSlot::Del, ts)
    }
}

impl Crdt for LwwMap {
    const TAG: u8 = 8;
    const NAME: &'static str = "lwwmap";

    fn merge(&mut self, other: &Self) {
        for (k, e) in &other.entries {
            match self.entries.get_mut(k) {
                Some(mine) => {
                    if e > mine {
                        *mine = e.clone();
                    }
                }
                None => {
                    self.entries.insert(k.clone(), e.clone());
                }
            }
        }
    }
    fn delta(new: &Self, old: &Self) -> Self {
        LwwMap {
            entries: new
                .entries
                .iter()
                .filter(|(k, e)| old.entries.get(*k).is_none_or(|o| *e > o))
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
        }
    }
    fn validate(&self) -> Result<()> {
        for e in self.entries.values() {
            e.0.validate()?;
            if let LwwSlot::Put(v) = &e.1 {
                v.validate().map_err(|e| Error::binary(e.message))?;
            }
        }
        Ok(())
    }
    fn to_user_json(&self) -> Result<serde_json::Value> {
        let mut m = serde_json::Map::new();
        for (k, e) in &self.entries {
            if let LwwSlot::Put(v) = &e.1 {
                m.insert(k.clone(), v.to_value());
            }
        }
        Ok(serde_json::Value::Object(m))
    }
}
