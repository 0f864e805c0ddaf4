//! A model of moving an authority through a chain of handovers
//! (`authority::Handover`): holders write the column, hand it over (END)
//! and take it (TAKE), others write it when they may not; every op is
//! delivered to several observer nodes, each actor's ops in that actor's
//! counter order, interleaved at random. Each node judges each write when
//! it arrives, with what it knows then. Every node must judge every write
//! as the history says (a holder's write in its term counts, any other
//! does not) and end with the same setting.

use converge_core::authority::{Authority, Handover, Term};
use proptest::prelude::*;

const ACTORS: [&str; 3] = ["a", "b", "c"];

/// One op of the history: a write of the column (and whether it was made
/// by the holder in its term), or a handover op.
#[derive(Clone, Debug)]
enum Op {
    Write { actor: String, counter: i64, legit: bool },
    Handover { actor: String, counter: i64, h: Handover, taken: Option<i64> },
    Other { actor: String },
}

impl Op {
    fn actor(&self) -> &str {
        match self {
            Op::Write { actor, .. } | Op::Handover { actor, .. } | Op::Other { actor } => actor,
        }
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A history: a chain of `moves` handovers starting at "a", with writes of
/// holders and non-holders and unrelated ops in between.
fn history(r: &mut Rng, moves: usize) -> Vec<Op> {
    let mut counters = [0i64; 3];
    let mut next = |i: usize| {
        counters[i] += 1;
        counters[i]
    };
    let mut ops = Vec::new();
    let (mut holder, mut since, mut earlier) = (0usize, 0i64, Vec::<Term>::new());
    for m in 0..=moves {
        for _ in 0..r.below(4) {
            let i = r.below(3) as usize;
            match r.below(3) {
                0 => ops.push(Op::Other { actor: ACTORS[i].into() }),
                _ => ops.push(Op::Write { actor: ACTORS[i].into(), counter: next(i), legit: i == holder }),
            }
            if let Some(Op::Other { .. }) = ops.last() {
                next(i);
            }
        }
        if m == moves {
            break;
        }
        let to = (holder + 1 + r.below(2) as usize) % 3;
        let until = next(holder);
        earlier.push(Term { node: ACTORS[holder].into(), after: since, until });
        let h = Handover { from: ACTORS[holder].into(), to: ACTORS[to].into(), until, earlier: earlier.clone() };
        ops.push(Op::Handover { actor: ACTORS[holder].into(), counter: until, h: h.clone(), taken: None });
        // Not yet taken: the new holder's writes do not count.
        if r.below(2) == 0 {
            ops.push(Op::Write { actor: ACTORS[to].into(), counter: next(to), legit: false });
        }
        let taken = next(to);
        ops.push(Op::Handover { actor: ACTORS[to].into(), counter: taken, h, taken: Some(taken) });
        (holder, since) = (to, taken);
    }
    ops
}

/// Deliver `ops` in an order that keeps each actor's ops in order, judging
/// each write on arrival; the node's setting at the end and its
/// judgments in history order.
fn observe(r: &mut Rng, ops: &[Op]) -> (Authority, Vec<bool>) {
    let mut setting = Authority::new("a", None, false);
    let mut queues: Vec<Vec<usize>> = ACTORS.iter().map(|a| (0..ops.len()).filter(|&i| ops[i].actor() == *a).rev().collect()).collect();
    let mut judged = vec![false; ops.len()];
    while queues.iter().any(|q| !q.is_empty()) {
        let ready: Vec<usize> = (0..3).filter(|&q| !queues[q].is_empty()).collect();
        let q = ready[r.below(ready.len() as u64) as usize];
        let i = queues[q].pop().expect("ready");
        match &ops[i] {
            Op::Write { actor, counter, .. } => judged[i] = setting.holds(actor, Some(*counter)),
            Op::Handover { actor, counter, h, taken } => {
                let delta = serde_json::to_vec(h).unwrap();
                let (read, t) = Handover::read(&delta, actor, *counter).expect("a valid handover");
                assert_eq!((&read, t), (h, *taken));
                assert!(setting.follows(&read), "{read:?} after {setting:?}");
                setting.hand_over(&read, t);
            }
            Op::Other { .. } => {}
        }
    }
    (setting, judged)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_node_judges_every_write_as_the_history_says(seed in 1u64.., moves in 0usize..5) {
        let mut r = Rng(seed);
        let ops = history(&mut r, moves);
        let truth: Vec<bool> = ops.iter().map(|o| matches!(o, Op::Write { legit: true, .. })).collect();
        let mut end = None;
        for _node in 0..4 {
            let (setting, judged) = observe(&mut r, &ops);
            for (i, o) in ops.iter().enumerate() {
                if let Op::Write { .. } = o {
                    prop_assert_eq!(judged[i], truth[i], "op {} of {:?}", i, ops);
                }
            }
            if let Some(first) = &end {
                prop_assert_eq!(&setting, first);
            }
            end = Some(setting);
        }
    }
}

#[test]
fn a_handover_is_read_only_from_its_two_nodes() {
    let h = Handover { from: "a".into(), to: "b".into(), until: 5, earlier: vec![Term { node: "a".into(), after: 0, until: 5 }] };
    let delta = serde_json::to_vec(&h).unwrap();
    assert_eq!(Handover::read(&delta, "a", 5).map(|(_, t)| t), Some(None), "a's END at its counter");
    assert!(Handover::read(&delta, "a", 6).is_none(), "an END not at its own counter");
    assert_eq!(Handover::read(&delta, "b", 9).map(|(_, t)| t), Some(Some(9)), "b's TAKE");
    assert!(Handover::read(&delta, "c", 9).is_none(), "a third node's");
    let bad = |f: &dyn Fn(&mut Handover)| {
        let mut x = h.clone();
        f(&mut x);
        Handover::read(&serde_json::to_vec(&x).unwrap(), "b", 9).is_none()
    };
    assert!(bad(&|x| x.earlier.clear()));
    assert!(bad(&|x| x.until = 4), "the last term ends at the END");
    assert!(bad(&|x| x.earlier[0].node = "c".into()), "the last term is the sender's");
    assert!(bad(&|x| x.earlier[0].after = 5), "an empty term");
    assert!(bad(&|x| x.to = "a".into()));
    assert!(bad(&|x| x.to = "no way".into()));
    assert!(Handover::read(b"{\"from\":\"a\"}", "a", 5).is_none());
}

#[test]
fn a_handover_from_a_setting_that_differs_does_not_follow() {
    let term = |node: &str, after, until| Term { node: node.into(), after, until };
    let a = Authority::new("a", None, false);
    let h = |from: &str, to: &str, earlier: Vec<Term>| Handover { from: from.into(), to: to.into(), until: earlier.last().unwrap().until, earlier };
    assert!(a.follows(&h("a", "b", vec![term("a", 0, 5)])));
    // d held it on some node (a first setting that differed) and hands it to a.
    assert!(!a.follows(&h("d", "a", vec![term("d", 0, 5)])));
    // a's term as another node saw it.
    assert!(!a.follows(&h("a", "b", vec![term("a", 3, 5)])));
    let mut b = a.clone();
    assert!(b.hand_over(&h("a", "b", vec![term("a", 0, 5)]), None));
    // The same handover again, its TAKE, and one before it: known.
    assert!(b.follows(&h("a", "b", vec![term("a", 0, 5)])));
    // Another END of equal length: a fork.
    assert!(!b.follows(&h("a", "c", vec![term("a", 0, 5)])));
    assert!(!b.follows(&h("a", "b", vec![term("a", 0, 6)])));
    // b's own END, before its TAKE reached this node: b took it at 7.
    assert!(b.follows(&h("b", "c", vec![term("a", 0, 5), term("b", 7, 9)])));
    assert!(b.hand_over(&h("b", "c", vec![term("a", 0, 5), term("b", 7, 9)]), None));
    assert!(b.follows(&h("a", "b", vec![term("a", 0, 5)])), "a's END arriving late is old news");
    assert!(!b.follows(&h("a", "c", vec![term("a", 0, 5)])));
}
