//! seqtext against plain text (SPEC section 2, seqtext).
//!
//! Single node: random inserts and deletes, compared after every step with
//! a `Vec<char>` edited the obvious way (positions in code points; a
//! position or range outside the text is refused, like 22023).
//! Concurrent: three nodes edit and exchange deltas in random order. Every
//! inserted character is unique (a private-use code point), so the text
//! itself says which insert each character came from, and the model is:
//! the final text holds exactly the inserted characters no node deleted;
//! what one insert typed stays together, in order; and any two characters
//! a node ever saw in some order keep that order (no reordering of text a
//! user saw).
//! Compaction: at a random point of the concurrent history every node has
//! every delta (all ops stable; later they are never delivered again, as
//! the op log's dedupe guarantees; their merge is the base), random nodes
//! compact, and the history goes on, with nodes compacting against that
//! base at random steps while they hold newer ops: the same model must hold
//! at the end.

use super::*;
use std::collections::{BTreeMap, BTreeSet};

fn text_of(raw: &RawOp) -> String {
    ["a", "xy", "\u{e9}", "\u{1f600}b", "hello"][raw.elem as usize % 5].to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn seqtext_single(raws in prop::collection::vec(any::<(u8, u8, u8, i8)>(), 0..60)) {
        let mut env = Env::default();
        let mut t = SeqText::default();
        let mut want: Vec<char> = Vec::new();
        for (code, key, elem, n) in raws {
            let raw = RawOp { code, key, elem, n: n as i64 };
            let len = want.len() as u64;
            // Positions sometimes outside the text, to see them refused.
            let pos = (raw.key as u64 * 3) % (len + 3);
            let before = t.clone();
            if raw.code.is_multiple_of(3) {
                let n = (raw.n.unsigned_abs() % 5).min(len + 1);
                let r = t.delete(pos, n);
                if pos + n > len {
                    prop_assert!(r.is_err(), "delete({pos}, {n}) of {len} chars accepted");
                    prop_assert_eq!(&t, &before);
                    continue;
                }
                let d = r.unwrap();
                want.drain(pos as usize..(pos + n) as usize);
                prop_assert_eq!(before.merged(&d), t.clone());
            } else {
                let s = text_of(&raw);
                let first = env.dot(0).counter;
                let r = t.insert(pos, &s, NODES[0], first);
                if pos > len {
                    prop_assert!(r.is_err(), "insert at {pos} of {len} chars accepted");
                    continue;
                }
                for _ in 1..s.chars().count() {
                    env.dot(0);
                }
                let d = r.unwrap();
                let at = pos as usize;
                want.splice(at..at, s.chars());
                prop_assert_eq!(before.merged(&d), t.clone());
            }
            prop_assert_eq!(t.value(), want.iter().collect::<String>());
            prop_assert_eq!(t.length(), want.len() as u64);
            prop_assert_eq!(t.to_user_json().unwrap(), serde_json::json!(want.iter().collect::<String>()));
        }
    }

    #[test]
    fn seqtext_concurrent(steps in prop::collection::vec((0usize..3, 0u8..10, any::<u16>(), 0u8..4), 0..50),
                          seed in any::<u64>(), stable_at in 0usize..60) {
        let mut env = Env::default();
        let mut nodes = vec![SeqText::default(); 3];
        let mut deltas: Vec<SeqText> = Vec::new();
        let mut next_char = 0xE000u32;
        let mut typed: Vec<String> = Vec::new();
        // What the inserting node showed when it typed each char's insert.
        let mut saw: BTreeMap<char, BTreeSet<char>> = BTreeMap::new();
        let mut deleted: BTreeSet<char> = BTreeSet::new();
        // Pairs (x, y): some node saw x before y.
        let mut seen_order: BTreeSet<(char, char)> = BTreeSet::new();
        let mut base: Option<SeqText> = None;
        for (step, (a, code, r, n)) in steps.into_iter().enumerate() {
            if step == stable_at {
                let mut b = SeqText::default();
                for d in &deltas { b.merge(d); }
                base = Some(b);
                for node in nodes.iter_mut() {
                    for d in &deltas { node.merge(d); }
                }
                deltas.clear();
                for (i, node) in nodes.iter_mut().enumerate().filter(|(i, _)| seed >> (i + 5) & 1 == 1) {
                    let c = node.compacted();
                    prop_assert_eq!(c.value(), node.value(), "compaction changed node {}'s text", i);
                    prop_assert!(c.validate().is_ok(), "compacted value invalid: {:?}", c.validate());
                    prop_assert_eq!(decode::<SeqText>(&encode(&c)).unwrap(), c.clone());
                    prop_assert!(!c.has_deleted() || node.runs.len() >= c.runs.len());
                    *node = c;
                }
            }
            let len = nodes[a].length();
            let pos = r as u64 % (len + 1);
            let d = if code < 6 {
                let s: String = (0..1 + n as u32).map(|_| { next_char += 1; char::from_u32(next_char).unwrap() }).collect();
                let first = env.dot(a).counter;
                for _ in 1..s.chars().count() { env.dot(a); }
                typed.push(s.clone());
                let view: BTreeSet<char> = nodes[a].value().chars().collect();
                for c in s.chars() { saw.insert(c, view.clone()); }
                nodes[a].insert(pos, &s, NODES[a], first).unwrap()
            } else if code < 8 {
                let k = (n as u64).min(len - pos);
                let text: Vec<char> = nodes[a].value().chars().collect();
                deleted.extend(&text[pos as usize..(pos + k) as usize]);
                nodes[a].delete(pos, k).unwrap()
            } else if code == 9 && base.is_some() {
                // Compact against the stable base while holding newer ops.
                let c = nodes[a].compacted_against(base.as_ref().unwrap());
                prop_assert_eq!(c.value(), nodes[a].value(), "compaction changed node {}'s text", a);
                prop_assert!(c.validate().is_ok(), "compacted value invalid: {:?}", c.validate());
                nodes[a] = c;
                SeqText::default()
            } else {
                // Receive a random earlier delta (any order, repeats too).
                if deltas.is_empty() { continue; }
                let d = deltas[(seed as usize ^ r as usize) % deltas.len()].clone();
                nodes[a].merge(&d);
                SeqText::default()
            };
            deltas.push(d);
            let v: Vec<char> = nodes[a].value().chars().collect();
            for i in 0..v.len() {
                for j in i + 1..v.len().min(i + 6) {
                    seen_order.insert((v[i], v[j]));
                }
            }
        }
        // Everyone gets everything, in a shuffled order.
        let mut order: Vec<usize> = (0..deltas.len()).collect();
        let mut x = seed | 1;
        for i in (1..order.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for node in nodes.iter_mut() {
            for &i in &order { node.merge(&deltas[i]); }
        }
        // Nodes that compacted at different moments hold the same text (and
        // the same state once all have compacted).
        prop_assert_eq!(nodes[0].value(), nodes[1].value());
        prop_assert_eq!(nodes[1].value(), nodes[2].value());
        let all: Vec<SeqText> = nodes.iter().map(SeqText::compacted).collect();
        prop_assert_eq!(&all[0], &all[1]);
        prop_assert_eq!(&all[1], &all[2]);
        let fin = nodes[0].value();
        let want: BTreeSet<char> = typed.iter().flat_map(|s| s.chars()).filter(|c| !deleted.contains(c)).collect();
        let got: BTreeSet<char> = fin.chars().collect();
        prop_assert_eq!(&got, &want, "surviving characters");
        prop_assert_eq!(fin.chars().count(), want.len(), "a character shows twice");
        let at: BTreeMap<char, usize> = fin.chars().enumerate().map(|(i, c)| (c, i)).collect();
        // A typed run is only split by text typed by a node that saw it:
        // concurrent inserts never interleave with it.
        let chars: Vec<char> = fin.chars().collect();
        for s in &typed {
            let (Some(i), Some(j)) = (s.chars().filter_map(|c| at.get(&c)).min(), s.chars().filter_map(|c| at.get(&c)).max()) else { continue };
            for c in &chars[*i..=*j] {
                if !s.contains(*c) {
                    prop_assert!(s.chars().any(|x| saw[c].contains(&x)),
                        "{:?}, typed without seeing {:?}, landed inside it: {:?}", c, s, fin);
                }
            }
        }
        for (x, y) in seen_order {
            if let (Some(i), Some(j)) = (at.get(&x), at.get(&y)) {
                prop_assert!(i < j, "{:?} was seen before {:?} but ends after it", x, y);
            }
        }
    }
}
