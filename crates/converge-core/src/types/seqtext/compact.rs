//! Compaction of a seqtext whose every op is causally stable (every node
//! has applied it, and every op made before a node saw it is here too).
//!
//! A deleted character is kept only while a kept character names it as
//! origin (directly or through a chain of deleted ones): its id places the
//! text after it. The others are leaves of the RGA tree, and removing a
//! leaf changes the place of no other character, present or future: a
//! character goes right after its origin, among that origin's other
//! children by key, whatever leaves hang there. No future op names a
//! removed character as origin: a local insert anchors on a visible
//! character, and every op that could anchor on a deleted one (made before
//! its deletion was seen) is already integrated here, which is what
//! stability guarantees. (An offline client that edited an old copy is
//! not covered by stability; docs/seqtext.md says what happens then.)

use super::wide::{self, Ids, W};
use super::SeqText;

impl SeqText {
    /// The same text without the deleted characters nothing hangs on.
    /// Only for a value whose every op is causally stable.
    pub fn compacted(&self) -> SeqText {
        self.compacted_against(self)
    }

    /// The same text without the characters that `stable` (the merge of
    /// this value's causally stable ops) has deleted and that nothing here
    /// hangs on. A character whose deletion is not stable yet stays: an op
    /// made by a node that has not seen the deletion may still name it.
    pub fn compacted_against(&self, stable: &SeqText) -> SeqText {
        let w = wide::widen(self);
        if !w.runs.iter().any(|r| r.deleted) {
            return self.clone();
        }
        let mut gone_there = Ids::default();
        for r in wide::widen(stable).runs.iter().filter(|r| r.deleted) {
            gone_there.add(&r.node, r.seq, r.len);
        }
        // Walk backwards: a character's origin always comes before it.
        let mut needed = Ids::default();
        for o in &w.orphans {
            if let Some((n, q)) = &o.origin {
                needed.add(n, *q, 1);
            }
        }
        let mut kept: Vec<W> = Vec::with_capacity(w.runs.len());
        for r in w.runs.into_iter().rev() {
            let keep = if r.deleted {
                // Characters of a run chain: keeping one keeps those before
                // it. Kept: up to the last one something hangs on or whose
                // deletion is not stable.
                let held = |k: &u64| needed.contains(&r.node, r.seq + k) || !gone_there.contains(&r.node, r.seq + k);
                match (0..r.len).rev().find(held) {
                    Some(last) => r.slice(0, last + 1),
                    None => continue,
                }
            } else {
                r
            };
            if let Some((n, q)) = &keep.origin {
                needed.add(n, *q, 1);
            }
            kept.push(keep);
        }
        kept.reverse();
        let mut deleted = w.tombs;
        for r in kept.iter().chain(&w.orphans).filter(|r| r.deleted) {
            deleted.add(&r.node, r.seq, r.len);
        }
        wide::narrow(kept, w.orphans, &deleted)
    }

    /// Whether the value has deleted characters (what `compacted` may drop).
    pub fn has_deleted(&self) -> bool {
        self.runs.iter().any(|r| r.5)
    }
}
