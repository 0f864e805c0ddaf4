//! Local edits by position, on the stored (node-index) form: find the
//! characters, split the run they are in, put the new run or the deletion
//! there, join it with its neighbours where they chain. The delta is built
//! directly (one run, or the deleted ids).

use super::wide::{self, W};
use super::{CharId, Run, SeqText, Span};
use crate::error::Result;

/// Byte offset of the `k`-th character of `s`.
fn byte_at(s: &str, k: u64) -> usize {
    s.char_indices().nth(k as usize).map(|(b, _)| b).unwrap_or(s.len())
}

/// Split a run at character offset `k` (0 < k < len).
pub(super) fn split_run(r: &Run, k: u64) -> (Run, Run) {
    let (lt, rt) = if r.5 { (String::new(), String::new()) } else {
        let b = byte_at(&r.6, k);
        (r.6[..b].to_string(), r.6[b..].to_string())
    };
    (Run(r.0, r.1, k, r.3, r.4, r.5, lt), Run(r.0, r.1 + k, r.2 - k, r.3 + k, Some(CharId(r.0, r.1 + k - 1)), r.5, rt))
}

/// Whether `b`, right after `a`, continues it.
pub(super) fn chains(a: &Run, b: &Run) -> bool {
    a.0 == b.0 && b.1 == a.1 + a.2 && b.3 == a.3 + a.2 && b.4 == Some(CharId(a.0, a.1 + a.2 - 1)) && a.5 == b.5
}

/// Runs in order, each joined with the next where it continues it.
pub(super) fn join_runs(runs: Vec<Run>) -> Vec<Run> {
    let mut joined: Vec<Run> = Vec::with_capacity(runs.len());
    for r in runs {
        match joined.last_mut() {
            Some(p) if chains(p, &r) => {
                p.2 += r.2;
                p.6.push_str(&r.6);
            }
            _ => joined.push(r),
        }
    }
    joined
}

/// The run and character offset of the visible character at `pos`.
fn locate(s: &SeqText, pos: u64) -> (usize, u64) {
    let mut seen = 0;
    for (i, r) in s.runs.iter().enumerate() {
        let v = r.visible();
        if pos < seen + v {
            return (i, pos - seen);
        }
        seen += v;
    }
    unreachable!("position checked against the length")
}

pub(super) fn insert(s: &mut SeqText, pos: u64, text: &str, node: &str, first_seq: u64) -> Result<SeqText> {
    let len = text.chars().count() as u64;
    let lamport = s.lamport + 1;
    let Ok(me) = s.nodes.binary_search_by(|n| n.as_str().cmp(node)) else {
        return Ok(insert_new_node(s, pos, text, node, first_seq));
    };
    let me = me as u32;
    let (at, origin) = if pos == 0 {
        (0, None)
    } else {
        let (i, k) = locate(s, pos - 1);
        if k + 1 < s.runs[i].2 {
            let (l, r) = split_run(&s.runs[i], k + 1);
            s.runs[i] = l;
            s.runs.insert(i + 1, r);
        }
        let r = &s.runs[i];
        (i + 1, Some(CharId(r.0, r.1 + r.2 - 1)))
    };
    let run = Run(me, first_seq, len, lamport, origin, false, text.to_string());
    match at.checked_sub(1).map(|p| &mut s.runs[p]) {
        Some(prev) if chains(prev, &run) => {
            prev.2 += len;
            prev.6.push_str(text);
        }
        _ => s.runs.insert(at, run.clone()),
    }
    s.lamport = lamport + len - 1;
    Ok(single_run_delta(s, run))
}

/// The delta of one inserted run: an orphan (its origin is not in the
/// delta) or, at the very start, an integrated run.
fn single_run_delta(s: &SeqText, run: Run) -> SeqText {
    let me = s.nodes[run.0 as usize].clone();
    let origin = run.4.map(|CharId(n, q)| (s.nodes[n as usize].clone(), q));
    let mut nodes = vec![me.clone()];
    if let Some((n, _)) = &origin {
        if *n != me {
            nodes.push(n.clone());
        }
    }
    nodes.sort();
    let idx = |n: &str| nodes.iter().position(|x| x == n).expect("node") as u32;
    let r = Run(idx(&me), run.1, run.2, run.3, origin.as_ref().map(|(n, q)| CharId(idx(n), *q)), false, run.6);
    let lamport = r.3 + r.2 - 1;
    let (runs, orphans) = if r.4.is_none() { (vec![r], vec![]) } else { (vec![], vec![r]) };
    SeqText { nodes, lamport, runs, orphans, tombs: vec![] }
}

/// An insert by a node this value has not seen yet: its name joins the
/// sorted node table, so every index changes; done through the merge path.
fn insert_new_node(s: &mut SeqText, pos: u64, text: &str, node: &str, first_seq: u64) -> SeqText {
    let w = wide::widen(s);
    let origin = (pos > 0).then(|| {
        let (i, k) = locate(s, pos - 1);
        let r = &s.runs[i];
        (s.nodes[r.0 as usize].clone(), r.1 + k)
    });
    let len = text.chars().count() as u64;
    let piece = W { node: node.to_string(), seq: first_seq, len, lamport: s.lamport + 1, origin, deleted: false, text: text.to_string() };
    let mut seq = w.runs;
    let end = seq.len();
    wide::integrate(&mut seq, piece.clone(), end).expect("origin is present");
    let mut deleted = w.tombs.clone();
    for r in seq.iter().chain(&w.orphans).filter(|r| r.deleted) {
        deleted.add(&r.node, r.seq, r.len);
    }
    *s = wide::narrow(seq, w.orphans, &deleted);
    let none = wide::Ids::default();
    if piece.origin.is_none() {
        wide::narrow(vec![piece], vec![], &none)
    } else {
        wide::narrow(vec![], vec![piece], &none)
    }
}

pub(super) fn delete(s: &mut SeqText, pos: u64, n: u64) -> SeqText {
    let (first, k0) = locate(s, pos);
    let mut out: Vec<Run> = Vec::new();
    let mut gone: Vec<(u32, u64, u64)> = Vec::new();
    let mut left = n;
    let mut i = first;
    let mut k = k0;
    // Runs [first, i) are replaced by `out`.
    while left > 0 {
        let r = s.runs[i].clone();
        i += 1;
        if r.5 {
            out.push(r);
            continue;
        }
        let (head, rest) = if k > 0 { let (a, b) = split_run(&r, k); (Some(a), b) } else { (None, r) };
        k = 0;
        out.extend(head);
        let take = left.min(rest.2);
        let (mut dead, tail) = if take < rest.2 { let (a, b) = split_run(&rest, take); (a, Some(b)) } else { (rest, None) };
        gone.push((dead.0, dead.1, dead.2));
        dead.5 = true;
        dead.6.clear();
        out.push(dead);
        out.extend(tail);
        left -= take;
    }
    // Join with the neighbours too: a deleted stretch may now chain to them.
    let lo = first.saturating_sub(1);
    let hi = (i + 1).min(s.runs.len());
    let mut window: Vec<Run> = s.runs[lo..first].to_vec();
    window.extend(out);
    window.extend(s.runs[i..hi].iter().cloned());
    s.runs.splice(lo..hi, join_runs(window));
    tombs_delta(s, gone)
}

/// The delta of a deletion: the deleted ids, as tombs.
fn tombs_delta(s: &SeqText, gone: Vec<(u32, u64, u64)>) -> SeqText {
    let mut ids = wide::Ids::default();
    for (n, q, l) in gone {
        ids.add(&s.nodes[n as usize], q, l);
    }
    let nodes: Vec<String> = ids.0.keys().cloned().collect();
    let tombs = ids.spans().map(|(n, q, l)| Span(nodes.iter().position(|x| x == n).expect("node") as u32, q, l)).collect();
    SeqText { nodes, lamport: 0, runs: vec![], orphans: vec![], tombs }
}
