//! Collaborative text: a sequence CRDT (RGA: every character is inserted
//! after an origin character, concurrent inserts after one origin are
//! ordered by Lamport key, highest first), stored as runs.
//!
//! A character's id is (node, seq): seq is a dot of its node, one per
//! character. A run is a stretch of characters, in document order, where
//! each character after the first has the previous one as origin, the next
//! seq and the next Lamport number: what typing forward produces, so a
//! typed paragraph is one run however many keystrokes it took. Each run
//! keeps its first character's origin and Lamport number; a deleted run
//! keeps its ids and drops its text (its characters may still be origins).
//!
//! The state: runs in document order; `orphans`, characters whose origin has
//! not arrived (a delta read on its own, or deltas merged out of causal
//! order), kept by id until it does; `tombs`, deletions of characters not
//! present. Canonical: runs maximal, node table sorted, orphans and tombs
//! sorted and coalesced, `lamport` the highest Lamport number present.

mod check;
mod compact;
mod edit;
mod wide;
pub mod stream;

use crate::codec::Crdt;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The largest seq or Lamport number a value may hold (room to add to it).
pub const MAX_NUMBER: u64 = 1 << 62;

/// A character: (node index in `nodes`, seq).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CharId(pub u32, pub u64);

/// `[node, seq, len, lamport, origin, deleted, text]`: characters seq..seq+len
/// of node, Lamport numbers lamport..lamport+len; `origin` is the first
/// character's; `text` holds `len` characters, or is empty when deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run(pub u32, pub u64, pub u64, pub u64, pub Option<CharId>, pub bool, pub String);

/// `[node, seq, len]`: deleted characters seq..seq+len of node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Span(pub u32, pub u64, pub u64);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeqText {
    #[serde(default)]
    pub nodes: Vec<String>,
    /// The highest Lamport number of any character here (0: none).
    #[serde(default)]
    pub lamport: u64,
    #[serde(default)]
    pub runs: Vec<Run>,
    #[serde(default)]
    pub orphans: Vec<Run>,
    #[serde(default)]
    pub tombs: Vec<Span>,
}

impl Run {
    pub fn visible(&self) -> u64 {
        if self.5 {
            0
        } else {
            self.2
        }
    }
}

impl SeqText {
    /// The text.
    pub fn value(&self) -> String {
        self.runs.iter().filter(|r| !r.5).map(|r| r.6.as_str()).collect()
    }

    /// Length in characters (code points).
    pub fn length(&self) -> u64 {
        self.runs.iter().map(Run::visible).sum()
    }

    /// Insert `text` before the character at `pos` (`pos = length` appends),
    /// as `node`, whose characters get the seqs `first_seq..`. Returns the
    /// delta. 22023 for a position outside the text.
    pub fn insert(&mut self, pos: u64, text: &str, node: &str, first_seq: u64) -> Result<SeqText> {
        let len = self.length();
        if pos > len {
            return Err(Error::param(format!("seqtext position {pos} is outside the text (length {len})")));
        }
        if text.is_empty() {
            return Ok(SeqText::default());
        }
        let n = text.chars().count() as u64;
        if self.lamport.saturating_add(n) > MAX_NUMBER || first_seq == 0 || first_seq.saturating_add(n) > MAX_NUMBER {
            return Err(Error::range("seqtext Lamport number or seq out of range"));
        }
        edit::insert(self, pos, text, node, first_seq)
    }

    /// Delete `n` characters from `pos`. Returns the delta. 22023 for a
    /// range outside the text.
    pub fn delete(&mut self, pos: u64, n: u64) -> Result<SeqText> {
        let len = self.length();
        if pos > len || n > len - pos {
            return Err(Error::param(format!(
                "seqtext range of {n} characters from position {pos} is outside the text (length {len})"
            )));
        }
        if n == 0 {
            return Ok(SeqText::default());
        }
        Ok(edit::delete(self, pos, n))
    }
}

impl Crdt for SeqText {
    const TAG: u8 = 10;
    const NAME: &'static str = "seqtext";

    fn merge(&mut self, other: &Self) {
        *self = wide::merge(self, other);
    }

    fn delta(new: &Self, old: &Self) -> Self {
        wide::delta(new, old)
    }

    fn validate(&self) -> Result<()> {
        check::validate(self)
    }

    fn stable_form(&self, stable: &Self) -> Option<Self> {
        self.has_deleted().then(|| self.compacted_against(stable)).filter(|c| c != self)
    }

    fn to_user_json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::String(self.value()))
    }

    fn prune_text(v: &mut serde_json::Value) {
        if let Some(m) = v.as_object_mut() {
            if m.get("lamport").and_then(serde_json::Value::as_u64) == Some(0) {
                m.remove("lamport");
            }
        }
        crate::codec::prune_empty_members(v);
    }
}

#[cfg(test)]
mod tests;
