//! Merge and delta, on a form that names nodes instead of indexing them
//! (two states have different node tables).
//!
//! Integration is RGA's: a character goes right after its origin, past
//! every character there whose Lamport key (lamport, node, seq) is higher.
//! Keys grow along origin chains (a character's Lamport number is above its
//! origin's; `check` enforces it), so the order depends only on which
//! characters are present, not on the order they arrived in.

use super::{CharId, Run, SeqText, Span};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct W {
    pub node: String,
    pub seq: u64,
    pub len: u64,
    pub lamport: u64,
    pub origin: Option<(String, u64)>,
    pub deleted: bool,
    pub text: String,
}

impl W {
    /// The origin of the character at offset `k`.
    pub fn origin_of(&self, k: u64) -> Option<(String, u64)> {
        if k == 0 {
            self.origin.clone()
        } else {
            Some((self.node.clone(), self.seq + k - 1))
        }
    }

    /// Characters [a, b) of this run.
    pub fn slice(&self, a: u64, b: u64) -> W {
        let text = if self.deleted { String::new() } else { self.text.chars().skip(a as usize).take((b - a) as usize).collect() };
        W {
            node: self.node.clone(),
            seq: self.seq + a,
            len: b - a,
            lamport: self.lamport + a,
            origin: self.origin_of(a),
            deleted: self.deleted,
            text,
        }
    }

    pub fn key(&self) -> (u64, &str, u64) {
        (self.lamport, &self.node, self.seq)
    }

    /// Whether `next`, right after this run, continues it (typing forward).
    pub fn chains_to(&self, next: &W) -> bool {
        self.node == next.node
            && next.seq == self.seq + self.len
            && next.lamport == self.lamport + self.len
            && next.origin.as_ref() == Some(&(self.node.clone(), self.seq + self.len - 1))
            && self.deleted == next.deleted
    }

    fn absorb(&mut self, next: W) {
        self.len += next.len;
        self.text.push_str(&next.text);
    }
}

/// Sets of character ids: per node, sorted disjoint [start, end) ranges.
#[derive(Clone, Debug, Default)]
pub(super) struct Ids(pub BTreeMap<String, BTreeMap<u64, u64>>);

impl Ids {
    pub fn add(&mut self, node: &str, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let m = self.0.entry(node.to_string()).or_default();
        let (mut s, mut e) = (start, start + len);
        // Absorb every range that touches [s, e).
        let touching: Vec<(u64, u64)> = m.range(..=e).rev().take_while(|(_, &end)| end >= s).map(|(&a, &b)| (a, b)).collect();
        for (a, b) in touching {
            m.remove(&a);
            s = s.min(a);
            e = e.max(b);
        }
        m.insert(s, e);
    }

    pub fn contains(&self, node: &str, seq: u64) -> bool {
        self.0.get(node).and_then(|m| m.range(..=seq).next_back()).is_some_and(|(_, &e)| seq < e)
    }

    /// The parts of [start, start+len) of `node` not in the set, as offsets.
    pub fn missing(&self, node: &str, start: u64, len: u64) -> Vec<(u64, u64)> {
        let end = start + len;
        let mut out = Vec::new();
        let mut at = start;
        if let Some(m) = self.0.get(node) {
            let first = m.range(..=start).next_back().map(|(&a, _)| a).unwrap_or(start);
            for (&a, &b) in m.range(first..end) {
                if b <= at {
                    continue;
                }
                if a > at {
                    out.push((at - start, a.min(end) - start));
                }
                at = at.max(b);
                if at >= end {
                    break;
                }
            }
        }
        if at < end {
            out.push((at - start, end - start));
        }
        out
    }

    pub fn spans(&self) -> impl Iterator<Item = (&String, u64, u64)> {
        self.0.iter().flat_map(|(n, m)| m.iter().map(move |(&a, &b)| (n, a, b - a)))
    }
}

pub(super) struct Wide {
    pub runs: Vec<W>,
    pub orphans: Vec<W>,
    pub tombs: Ids,
}

pub(super) fn widen(s: &SeqText) -> Wide {
    let name = |i: u32| s.nodes.get(i as usize).cloned().unwrap_or_default();
    let w = |r: &Run| W {
        node: name(r.0),
        seq: r.1,
        len: r.2,
        lamport: r.3,
        origin: r.4.map(|CharId(n, q)| (name(n), q)),
        deleted: r.5,
        text: r.6.clone(),
    };
    let mut tombs = Ids::default();
    for Span(n, q, l) in &s.tombs {
        tombs.add(&name(*n), *q, *l);
    }
    Wide { runs: s.runs.iter().map(w).collect(), orphans: s.orphans.iter().map(w).collect(), tombs }
}

/// Ids of the characters of `runs`.
pub(super) fn ids_of<'a>(runs: impl IntoIterator<Item = &'a W>) -> Ids {
    let mut ids = Ids::default();
    for r in runs {
        ids.add(&r.node, r.seq, r.len);
    }
    ids
}

/// Ids of the deleted characters of `runs`.
fn deleted_of<'a>(runs: impl IntoIterator<Item = &'a W>, into: &mut Ids) {
    for r in runs.into_iter().filter(|r| r.deleted) {
        into.add(&r.node, r.seq, r.len);
    }
}

/// Where the character (node, seq) is: (run index, offset). Searched
/// backwards from `hint` first (an origin is usually just before).
fn find(seq: &[W], node: &str, s: u64, hint: usize) -> Option<(usize, u64)> {
    let hit = |i: usize| {
        let r = &seq[i];
        (r.node == node && s >= r.seq && s < r.seq + r.len).then(|| (i, s - r.seq))
    };
    let hint = hint.min(seq.len());
    (0..hint).rev().find_map(hit).or_else(|| (hint..seq.len()).find_map(hit))
}

fn split(seq: &mut Vec<W>, i: usize, k: u64) {
    let r = seq[i].clone();
    seq[i] = r.slice(0, k);
    seq.insert(i + 1, r.slice(k, r.len));
}

/// Put `p` (absent from `seq`) in its place. False if its origin is absent.
/// Returns the index it took (a hint for the next one).
pub(super) fn integrate(seq: &mut Vec<W>, p: W, hint: usize) -> Option<usize> {
    let mut at = match &p.origin {
        None => 0,
        Some((n, s)) => {
            let (i, k) = find(seq, n, *s, hint)?;
            // Keys must grow along origin chains; a character that breaks
            // this waits as an orphan for good (alike on every node).
            if seq[i].lamport + k >= p.lamport {
                return None;
            }
            if k + 1 < seq[i].len {
                split(seq, i, k + 1);
            }
            i + 1
        }
    };
    while at < seq.len() && seq[at].key() > p.key() {
        at += 1;
    }
    seq.insert(at, p);
    Some(at + 1)
}

/// Integrate every piece whose origin is present (repeatedly: a piece may
/// be the origin of another); the rest are returned as orphans.
fn settle(seq: &mut Vec<W>, present: &mut Ids, mut pool: Vec<W>) -> Vec<W> {
    pool.sort_by(|a, b| a.key().cmp(&b.key()));
    loop {
        let mut progress = false;
        let mut left = Vec::new();
        let mut hint = seq.len();
        for p in pool {
            let mut rest = Vec::new();
            for (a, b) in present.missing(&p.node, p.seq, p.len) {
                let piece = p.slice(a, b);
                let (node, start, len) = (piece.node.clone(), piece.seq, piece.len);
                match integrate(seq, piece.clone(), hint) {
                    Some(h) => {
                        hint = h;
                        present.add(&node, start, len);
                        progress = true;
                    }
                    None => rest.push(piece),
                }
            }
            left.extend(rest);
        }
        pool = left;
        if !progress || pool.is_empty() {
            return pool;
        }
    }
}

/// Mark the characters of `runs` that are in `deleted` as deleted (split
/// where needed, text dropped).
fn apply_deletes(runs: Vec<W>, deleted: &Ids) -> Vec<W> {
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        if r.deleted || !deleted.0.contains_key(&r.node) {
            out.push(r);
            continue;
        }
        let mut at = 0;
        for (a, b) in deleted.missing(&r.node, r.seq, r.len) {
            if a > at {
                let mut d = r.slice(at, a);
                d.deleted = true;
                d.text.clear();
                out.push(d);
            }
            out.push(r.slice(a, b));
            at = b;
        }
        if at < r.len {
            let mut d = r.slice(at, r.len);
            d.deleted = true;
            d.text.clear();
            out.push(d);
        }
    }
    out
}

/// Maximal runs: join each run with the next where it continues it.
pub(super) fn coalesce(runs: Vec<W>) -> Vec<W> {
    let mut out: Vec<W> = Vec::with_capacity(runs.len());
    for r in runs {
        match out.last_mut() {
            Some(prev) if prev.chains_to(&r) => prev.absorb(r),
            _ => out.push(r),
        }
    }
    out
}

/// Orphans in canonical form: by id, overlaps dropped, chains joined.
fn tidy_orphans(mut pool: Vec<W>) -> Vec<W> {
    pool.sort_by(|a, b| (&a.node, a.seq).cmp(&(&b.node, b.seq)));
    let mut seen = Ids::default();
    let mut pieces = Vec::new();
    for p in pool {
        for (a, b) in seen.missing(&p.node, p.seq, p.len) {
            pieces.push(p.slice(a, b));
        }
        seen.add(&p.node, p.seq, p.len);
    }
    pieces.sort_by(|a, b| (&a.node, a.seq).cmp(&(&b.node, b.seq)));
    coalesce(pieces)
}

/// The canonical state of integrated runs, orphans and deletions.
pub(super) fn narrow(runs: Vec<W>, orphans: Vec<W>, deleted: &Ids) -> SeqText {
    let runs = coalesce(apply_deletes(runs, deleted));
    let orphans = tidy_orphans(apply_deletes(orphans, deleted));
    let mut have = ids_of(runs.iter().chain(&orphans));
    let mut tombs = Ids::default();
    for (n, a, l) in deleted.spans() {
        for (x, y) in have.missing(n, a, l) {
            tombs.add(n, a + x, y - x);
        }
    }
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for r in runs.iter().chain(&orphans) {
        names.insert(&r.node);
        if let Some((n, _)) = &r.origin {
            names.insert(n);
        }
    }
    names.extend(tombs.0.keys().map(String::as_str));
    let nodes: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let index = |n: &str| nodes.binary_search_by(|x| x.as_str().cmp(n)).expect("node in table") as u32;
    let narrow_run = |r: &W| Run(index(&r.node), r.seq, r.len, r.lamport, r.origin.as_ref().map(|(n, q)| CharId(index(n), *q)), r.deleted, r.text.clone());
    let lamport = runs.iter().chain(&orphans).map(|r| r.lamport + r.len - 1).max().unwrap_or(0);
    let tombs: Vec<Span> = tombs.spans().map(|(n, a, l)| Span(index(n), a, l)).collect();
    have.0.clear();
    SeqText { lamport, runs: runs.iter().map(narrow_run).collect(), orphans: orphans.iter().map(narrow_run).collect(), tombs, nodes }
}

/// Per character of `runs`: id -> (Lamport number, origin, text char).
type Chars = BTreeMap<(String, u64), (u64, Option<(String, u64)>, Option<char>)>;

fn chars_of<'a>(runs: impl IntoIterator<Item = &'a W>, into: &mut Chars) {
    for r in runs {
        let mut text = r.text.chars();
        for k in 0..r.len {
            let ch = if r.deleted { None } else { text.next() };
            let v = (r.lamport + k, r.origin_of(k), ch);
            let e = into.entry((r.node.clone(), r.seq + k)).or_insert_with(|| v.clone());
            // The same id always carries the same character in a real
            // history; for forged input the larger wins, on every node alike.
            let (mine, theirs) = ((e.0, &e.1, e.2.unwrap_or('\0')), (v.0, &v.1, v.2.unwrap_or('\0')));
            if theirs > mine {
                *e = (v.0, v.1.clone(), v.2.or(e.2));
            } else if e.2.is_none() && v.2.is_some() && (e.0, &e.1) == (v.0, &v.1) {
                e.2 = v.2;
            }
        }
    }
}

/// Whether some character id is in both with different data (forged input).
fn conflicting(a: &Wide, b: &Wide) -> bool {
    let ids = ids_of(a.runs.iter().chain(&a.orphans));
    let shared: Vec<&W> = b.runs.iter().chain(&b.orphans).filter(|r| ids.missing(&r.node, r.seq, r.len) != [(0, r.len)]).collect();
    if shared.is_empty() {
        return false;
    }
    let mut mine = Chars::new();
    chars_of(a.runs.iter().chain(&a.orphans), &mut mine);
    shared.iter().any(|r| {
        let mut text = r.text.chars();
        (0..r.len).any(|k| {
            let ch = if r.deleted { None } else { text.next() };
            mine.get(&(r.node.clone(), r.seq + k)).is_some_and(|(l, o, c)| {
                *l != r.lamport + k || *o != r.origin_of(k) || (c.is_some() && ch.is_some() && *c != ch)
            })
        })
    })
}

/// Merge from scratch, one character at a time, resolving conflicting ids.
fn merge_resolving(a: Wide, b: Wide, deleted: &Ids) -> SeqText {
    let mut all = Chars::new();
    chars_of(a.runs.iter().chain(&a.orphans).chain(&b.runs).chain(&b.orphans), &mut all);
    let pieces: Vec<W> = all
        .into_iter()
        .map(|((node, seq), (lamport, origin, ch))| W {
            node,
            seq,
            len: 1,
            lamport,
            origin,
            deleted: ch.is_none(),
            text: ch.map(String::from).unwrap_or_default(),
        })
        .collect();
    let mut seq = Vec::new();
    let orphans = settle(&mut seq, &mut Ids::default(), pieces);
    narrow(seq, orphans, deleted)
}

pub(super) fn merge(a: &SeqText, b: &SeqText) -> SeqText {
    if b.runs.is_empty() && b.orphans.is_empty() && b.tombs.is_empty() {
        return a.clone();
    }
    let (wa, wb) = (widen(a), widen(b));
    let mut deleted = wa.tombs.clone();
    for (n, s, l) in wb.tombs.spans() {
        deleted.add(n, s, l);
    }
    deleted_of(wa.runs.iter().chain(&wa.orphans).chain(&wb.runs).chain(&wb.orphans), &mut deleted);
    if conflicting(&wa, &wb) {
        return merge_resolving(wa, wb, &deleted);
    }
    let mut seq = wa.runs;
    let mut present = ids_of(&seq);
    let mut pool: Vec<W> = wa.orphans;
    // b's runs in its document order: each origin is already in place.
    let mut hint = 0;
    for r in wb.runs {
        for (x, y) in present.missing(&r.node, r.seq, r.len) {
            let piece = r.slice(x, y);
            let (node, start, len) = (piece.node.clone(), piece.seq, piece.len);
            match integrate(&mut seq, piece.clone(), hint) {
                Some(h) => {
                    hint = h;
                    present.add(&node, start, len);
                }
                None => pool.push(piece),
            }
        }
    }
    pool.extend(wb.orphans);
    let orphans = settle(&mut seq, &mut present, pool);
    narrow(seq, orphans, &deleted)
}

/// The smallest state d with merge(old, d) = merge(old, new): the
/// characters `new` has and `old` lacks (orphans where their origin is in
/// `old` only), and the deletions `old` lacks.
pub(super) fn delta(new: &SeqText, old: &SeqText) -> SeqText {
    let (wn, wo) = (widen(new), widen(old));
    let have = ids_of(wo.runs.iter().chain(&wo.orphans));
    let mut old_deleted = wo.tombs.clone();
    deleted_of(wo.runs.iter().chain(&wo.orphans), &mut old_deleted);
    let mut pieces = Vec::new();
    for r in wn.runs.iter().chain(&wn.orphans) {
        for (x, y) in have.missing(&r.node, r.seq, r.len) {
            pieces.push(r.slice(x, y));
        }
    }
    let mut new_deleted = wn.tombs.clone();
    deleted_of(wn.runs.iter().chain(&wn.orphans), &mut new_deleted);
    let mut deleted = Ids::default();
    for (n, s, l) in new_deleted.spans() {
        for (x, y) in old_deleted.missing(n, s, l) {
            deleted.add(n, s + x, y - x);
        }
    }
    let mut seq = Vec::new();
    let mut present = Ids::default();
    let orphans = settle(&mut seq, &mut present, pieces);
    narrow(seq, orphans, &deleted)
}
