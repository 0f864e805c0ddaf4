//! Grow-only set of text.

use crate::codec::Crdt;
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GSet {
    #[serde(default)]
    pub elements: BTreeSet<String>,
}

impl GSet {
    pub fn add(&mut self, e: &str) -> GSet {
        let mut d = GSet::default();
        if !self.elements.contains(e) {
            d.elements.insert(e.to_string());
            self.elements.insert(e.to_string());
        }
        d
    }
    pub fn contains(&self, e: &str) -> bool {
        self.elements.contains(e)
    }
    pub fn elements(&self) -> Vec<String> {
        self.elements.iter().cloned().collect()
    }
}

impl Crdt for GSet {
    const TAG: u8 = 4;
    const NAME: &'static str = "gset";

    fn merge(&mut self, other: &Self) {
        for e in &other.elements {
            if !self.elements.contains(e) {
                self.elements.insert(e.clone());
            }
        }
    }
    fn delta(new: &Self, old: &Self) -> Self {
        GSet { elements: new.elements.difference(&old.elements).cloned().collect() }
    }
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    fn to_user_json(&self) -> Result<serde_json::Value> {
        Ok(self.elements.iter().cloned().collect::<Vec<_>>().into())
    }
}
