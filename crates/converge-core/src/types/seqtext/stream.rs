//! Edits on the stored bytes, without decoding the value: the runs before
//! the edit are only stepped over (a few varints each, no allocation), the
//! run(s) at the edit are decoded, changed and encoded again, and the rest
//! is copied as it is. An edit then costs a scan of run headers and a copy
//! of the bytes (what `overlay()` costs on plain text), not a decode and an
//! encode of every run. The result is byte for byte what the decoded path
//! (`SeqText::insert`/`delete` then `encode`) gives; tests check it.

use super::edit::{chains, join_runs, split_run};
use super::{CharId, Run};
use crate::codec::{Crdt, FORMAT_VERSION};
use crate::error::{Error, Result};

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

fn corrupt() -> Error {
    Error::binary("corrupt seqtext value")
}

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.b.get(self.at).ok_or_else(corrupt)?;
            self.at += 1;
            v |= u64::from(byte & 0x7f).checked_shl(shift).ok_or_else(corrupt)?;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt())
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()? as usize;
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len()).ok_or_else(corrupt)?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn flag(&mut self) -> Result<bool> {
        let byte = *self.b.get(self.at).ok_or_else(corrupt)?;
        self.at += 1;
        match byte {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(corrupt()),
        }
    }

    /// Step over one run: (visible characters, its length, deleted).
    fn skip_run(&mut self) -> Result<(u64, u64)> {
        self.varint()?; // node
        self.varint()?; // seq
        let len = self.varint()?;
        self.varint()?; // lamport
        if self.flag()? {
            self.varint()?;
            self.varint()?;
        }
        let deleted = self.flag()?;
        self.bytes()?;
        Ok((if deleted { 0 } else { len }, len))
    }

    fn run(&mut self) -> Result<Run> {
        let start = self.at;
        self.skip_run()?;
        let (r, rest) = postcard::take_from_bytes::<Run>(&self.b[start..]).map_err(|_| corrupt())?;
        debug_assert_eq!(rest.len(), self.b.len() - self.at);
        Ok(r)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_runs(out: &mut Vec<u8>, runs: &[Run]) {
    for r in runs {
        out.extend(postcard::to_stdvec(r).expect("postcard encoding of a run"));
    }
}

/// Where things are in the stored bytes.
struct Layout {
    /// Start of the `lamport` field (after the node table).
    lamport_at: usize,
    lamport: u64,
    count: u64,
    /// First byte of the first run.
    runs_at: usize,
    /// Index of the node `me`, if it is in the table.
    me: Option<u32>,
}

fn layout(b: &[u8], me: &str) -> Result<Layout> {
    if b.len() < 2 || b[0] != FORMAT_VERSION || b[1] != super::SeqText::TAG {
        return Err(corrupt());
    }
    let mut c = Cursor { b, at: 2 };
    let nodes = c.varint()?;
    let mut idx = None;
    for i in 0..nodes {
        if c.bytes()? == me.as_bytes() {
            idx = Some(i as u32);
        }
    }
    let lamport_at = c.at;
    let lamport = c.varint()?;
    let count = c.varint()?;
    Ok(Layout { lamport_at, lamport, count, runs_at: c.at, me: idx })
}

fn outside(msg: String) -> Error {
    Error::param(msg)
}

/// Visible length of the value (steps over every run).
fn length_from(c: &mut Cursor, count: u64, mut i: u64, mut seen: u64) -> Result<u64> {
    while i < count {
        seen += c.skip_run()?.0;
        i += 1;
    }
    Ok(seen)
}

/// `insert` on stored bytes; None when the slow path is needed (a node not
/// in the value's node table yet).
pub fn insert(b: &[u8], pos: u64, text: &str, node: &str, first_seq: u64) -> Result<Option<Vec<u8>>> {
    let l = layout(b, node)?;
    let mut c = Cursor { b, at: l.runs_at };
    let out_of_range = |c: &mut Cursor, i, seen| -> Result<Option<Vec<u8>>> {
        let len = length_from(c, l.count, i, seen)?;
        Err(outside(format!("seqtext position {pos} is outside the text (length {len})")))
    };
    // The run holding the character at pos - 1: index, byte range, offset.
    let mut target = None;
    if pos > 0 {
        let (mut seen, mut i) = (0u64, 0u64);
        while i < l.count {
            let start = c.at;
            let (vis, _) = c.skip_run()?;
            if pos - 1 < seen + vis {
                target = Some((start, c.at, pos - 1 - seen));
                break;
            }
            seen += vis;
            i += 1;
        }
        if target.is_none() {
            return out_of_range(&mut c, l.count, seen);
        }
    }
    if text.is_empty() {
        return Ok(Some(b.to_vec()));
    }
    let Some(me) = l.me else { return Ok(None) };
    let len = text.chars().count() as u64;
    if l.lamport.saturating_add(len) > super::MAX_NUMBER || first_seq == 0 || first_seq.saturating_add(len) > super::MAX_NUMBER {
        return Err(Error::range("seqtext Lamport number or seq out of range"));
    }
    let lamport = l.lamport + 1;
    let (cut_from, cut_to, replacement) = match target {
        None => (l.runs_at, l.runs_at, vec![Run(me, first_seq, len, lamport, None, false, text.to_string())]),
        Some((start, end, k)) => {
            let r = Cursor { b, at: start }.run()?;
            let mut parts = Vec::with_capacity(3);
            let tail = if k + 1 < r.2 {
                let (a, t) = split_run(&r, k + 1);
                parts.push(a);
                Some(t)
            } else {
                parts.push(r);
                None
            };
            let last = parts.last().expect("a part");
            let new = Run(me, first_seq, len, lamport, Some(CharId(last.0, last.1 + last.2 - 1)), false, text.to_string());
            if chains(last, &new) {
                let p = parts.last_mut().expect("a part");
                p.2 += len;
                p.6.push_str(text);
            } else {
                parts.push(new);
            }
            parts.extend(tail);
            (start, end, parts)
        }
    };
    let removed = u64::from(cut_to > cut_from);
    Ok(Some(splice(b, &l, l.lamport + len, l.count - removed + replacement.len() as u64, cut_from, cut_to, &replacement)))
}

/// `delete` on stored bytes.
pub fn delete(b: &[u8], pos: u64, n: u64) -> Result<Vec<u8>> {
    let l = layout(b, "")?;
    let mut c = Cursor { b, at: l.runs_at };
    let (mut seen, mut i) = (0u64, 0u64);
    let mut prev: Option<usize> = None;
    // Find the run holding the character at pos.
    let mut first = None;
    while i < l.count {
        let start = c.at;
        let (vis, _) = c.skip_run()?;
        if n > 0 && pos < seen + vis {
            first = Some((start, pos - seen));
            break;
        }
        seen += vis;
        prev = Some(start);
        i += 1;
    }
    let Some((first_at, mut k)) = first else {
        if n == 0 && pos <= seen {
            return Ok(b.to_vec());
        }
        let len = length_from(&mut c, l.count, i, seen)?;
        return Err(outside(format!("seqtext range of {n} characters from position {pos} is outside the text (length {len})")));
    };
    // The window: the run before, the runs the deletion touches, the run after.
    let mut window: Vec<Run> = Vec::new();
    let win_from = prev.unwrap_or(first_at);
    let mut rc = Cursor { b, at: win_from };
    let mut taken = 0u64;
    if prev.is_some() {
        window.push(rc.run()?);
        taken += 1;
    }
    let mut left = n;
    while left > 0 {
        if i >= l.count {
            let len = length_from(&mut Cursor { b, at: l.runs_at }, l.count, 0, 0)?;
            return Err(outside(format!("seqtext range of {n} characters from position {pos} is outside the text (length {len})")));
        }
        let r = rc.run()?;
        taken += 1;
        i += 1;
        if r.5 {
            window.push(r);
            continue;
        }
        let rest = if k > 0 {
            let (a, t) = split_run(&r, k);
            window.push(a);
            t
        } else {
            r
        };
        k = 0;
        let take = left.min(rest.2);
        let (mut dead, tail) = if take < rest.2 {
            let (a, t) = split_run(&rest, take);
            (a, Some(t))
        } else {
            (rest, None)
        };
        dead.5 = true;
        dead.6.clear();
        window.push(dead);
        window.extend(tail);
        left -= take;
    }
    if i < l.count {
        window.push(rc.run()?);
        taken += 1;
    }
    let joined = join_runs(window);
    Ok(splice(b, &l, l.lamport, l.count - taken + joined.len() as u64, win_from, rc.at, &joined))
}

/// The bytes with [from, to) of the runs replaced, and the lamport and run
/// count fields rewritten.
#[allow(clippy::too_many_arguments)]
fn splice(b: &[u8], l: &Layout, lamport: u64, count: u64, from: usize, to: usize, runs: &[Run]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + 64);
    out.extend_from_slice(&b[..l.lamport_at]);
    put_varint(&mut out, lamport);
    put_varint(&mut out, count);
    out.extend_from_slice(&b[l.runs_at..from]);
    put_runs(&mut out, runs);
    out.extend_from_slice(&b[to..]);
    out
}
