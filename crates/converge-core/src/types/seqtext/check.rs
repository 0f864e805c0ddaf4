//! Every invariant merge relies on, for values from outside (text input,
//! binary input, ops): well-formed runs, unique ids, Lamport numbers that
//! grow along origin chains, and the canonical form itself: the runs must
//! be exactly what integrating them (in their own order) produces.

use super::wide::{self, Ids, W};
use super::{Run, SeqText};
use crate::actor::validate_actor;
use crate::error::{Error, Result};

fn bad(msg: impl Into<String>) -> Error {
    Error::binary(msg.into())
}

fn check_run(s: &SeqText, r: &Run, used: &mut [bool]) -> Result<()> {
    let n = s.nodes.len();
    if r.0 as usize >= n || r.4.is_some_and(|o| o.0 as usize >= n) {
        return Err(bad("seqtext run names a node outside the node table"));
    }
    used[r.0 as usize] = true;
    if let Some(o) = r.4 {
        used[o.0 as usize] = true;
    }
    if r.2 == 0 || r.1 == 0 || r.3 == 0 {
        return Err(bad("seqtext run with zero length, seq or Lamport number"));
    }
    // Headroom below u64::MAX, so edits can always add to them.
    if r.1.saturating_add(r.2) > super::MAX_NUMBER || r.3.saturating_add(r.2) > super::MAX_NUMBER {
        return Err(bad("seqtext run has a seq or Lamport number beyond 2^62"));
    }
    if r.5 && !r.6.is_empty() {
        return Err(bad("deleted seqtext run keeps text"));
    }
    if r.6.contains('\0') {
        return Err(bad("seqtext text contains a NUL character"));
    }
    if !r.5 && r.6.chars().count() as u64 != r.2 {
        return Err(bad("seqtext run length does not match its text"));
    }
    Ok(())
}

pub(super) fn validate(s: &SeqText) -> Result<()> {
    if s.nodes.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad("seqtext node table is not sorted and distinct"));
    }
    for n in &s.nodes {
        validate_actor(n)?;
    }
    let mut used = vec![false; s.nodes.len()];
    for r in s.runs.iter().chain(&s.orphans) {
        check_run(s, r, &mut used)?;
    }
    for t in &s.tombs {
        if t.0 as usize >= s.nodes.len() || t.2 == 0 || t.1 == 0 || t.1.saturating_add(t.2) > super::MAX_NUMBER {
            return Err(bad("invalid seqtext tombstone span"));
        }
        used[t.0 as usize] = true;
    }
    if used.iter().any(|u| !u) {
        return Err(bad("seqtext node table names a node no character uses"));
    }
    let w = wide::widen(s);
    let mut ids = Ids::default();
    for r in w.runs.iter().chain(&w.orphans) {
        if ids.missing(&r.node, r.seq, r.len) != [(0, r.len)] {
            return Err(bad("seqtext character id appears twice"));
        }
        ids.add(&r.node, r.seq, r.len);
    }
    rebuild_matches(s, w)
}

/// Integrate the runs again in stored order (each origin must come first,
/// with a lower Lamport number) and compare with the stored value.
fn rebuild_matches(s: &SeqText, w: wide::Wide) -> Result<()> {
    let mut seq: Vec<W> = Vec::with_capacity(w.runs.len());
    let mut deleted = w.tombs.clone();
    let mut present = Ids::default();
    for r in w.runs.iter().chain(&w.orphans).filter(|r| r.deleted) {
        deleted.add(&r.node, r.seq, r.len);
    }
    for r in w.runs {
        if let Some((n, q)) = &r.origin {
            let origin_lamport = seq
                .iter()
                .rev()
                .find(|x| x.node == *n && *q >= x.seq && *q < x.seq + x.len)
                .map(|x| x.lamport + (q - x.seq))
                .ok_or_else(|| bad("seqtext run comes before its origin"))?;
            if origin_lamport >= r.lamport {
                return Err(bad("seqtext character has a Lamport number not above its origin's"));
            }
        }
        present.add(&r.node, r.seq, r.len);
        let end = seq.len();
        wide::integrate(&mut seq, r, end).ok_or_else(|| bad("seqtext run comes before its origin"))?;
    }
    for o in &w.orphans {
        match &o.origin {
            Some((n, q)) if present.contains(n, *q) => return Err(bad("seqtext orphan whose origin is present")),
            Some(_) => {}
            // (Its origin is the start of the text: it waits for nothing.)
            None => return Err(bad("seqtext orphan with no origin")),
        }
    }
    if wide::narrow(seq, w.orphans, &deleted) != *s {
        return Err(bad("seqtext value is not in canonical form (order, runs, orphans or tombstones)"));
    }
    Ok(())
}
