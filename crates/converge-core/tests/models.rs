//! Model-based tests: every type's readers against a plain reference model of
//! the user-visible value that SPEC section 2 defines.
//!
//! The merge laws (tests/laws.rs) hold even for a type that silently loses
//! elements, so these tests compare what users read. Two kinds per type:
//! - single node: random mutators, compared after every step with a plain
//!   value (a BTreeSet, an i128, a BTreeMap ...) updated the obvious way;
//! - concurrent: three nodes make ops and merge full states, `delta(new, old)`
//!   or single ops' deltas (causally ready ones in random order, and repeats).
//!   Every op is recorded with its causal past (the op ids its node had seen),
//!   and the model computes the value from those ops alone, never from a CRDT
//!   state. Each node is checked after every step against the model of what it
//!   has seen, and at the end every node, plus a fresh replica fed all deltas
//!   in a random non-causal order, against the model of all ops.
//!
//! Mid-history views are causally closed (a single op is delivered only once
//! its causal past is there, as `converge.apply` buffers ops with missing
//! deps): a view with gaps is not one the SPEC gives a value for, and a
//! counter's delta carries its node's earlier counts anyway.
//!
//! Case count: CONVERGE_PROPTEST_CASES (default 2000) per property.

use converge_core::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

// The crate root of a test resolves `mod x;` next to itself, hence the paths.
#[path = "models/compaction.rs"]
mod compaction;
#[path = "models/counters.rs"]
mod counters;
#[path = "models/ormap.rs"]
mod ormap;
#[path = "models/registers.rs"]
mod registers;
#[path = "models/seqtext.rs"]
mod seqtext;
#[path = "models/sets.rs"]
mod sets;

pub const NODES: [&str; 3] = ["madrid", "dublin", "virginia"];

pub type Res = std::result::Result<(), TestCaseError>;

pub fn cases() -> u32 {
    std::env::var("CONVERGE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

/// Dots and clocks as nodes have them: one durable counter and one HLC per
/// node, shared by every value the node touches.
pub struct Env {
    counters: [u64; 3],
    clocks: [Hlc; 3],
    wall: u64,
}

impl Default for Env {
    fn default() -> Env {
        Env { counters: [0; 3], clocks: Default::default(), wall: 1_700_000_000_000 }
    }
}

impl Env {
    pub fn dot(&mut self, a: usize) -> Dot {
        self.counters[a] += 1;
        Dot::new(NODES[a], self.counters[a])
    }
    /// A timestamp of node `a` after it observed `floor` (the value's newest).
    pub fn ts(&mut self, a: usize, floor: Option<&Timestamp>) -> Timestamp {
        // Skewed wall clocks that sometimes stand still, so ties happen.
        self.wall += (a as u64 * 7) % 3;
        if let Some(f) = floor {
            self.clocks[a].observe(f);
        }
        self.clocks[a].tick(self.wall - a as u64 * 5, NODES[a])
    }
}

/// One mutation's random input; each type reads the fields it needs.
#[derive(Clone, Debug)]
pub struct RawOp {
    pub code: u8,
    pub key: u8,
    pub elem: u8,
    pub n: i64,
}

pub fn key(k: u8) -> String {
    format!("k{k}")
}

pub fn elem(e: u8) -> String {
    format!("e{e}")
}

pub const KEYS: u8 = 3;
pub const ELEMS: u8 = 5;

/// JSON values of several shapes (equal for equal `e`, so values repeat).
pub fn json(e: u8) -> Json {
    match e % 4 {
        0 => Json::parse("null").unwrap(),
        1 => Json::parse(&format!("{e}")).unwrap(),
        2 => Json::parse(&format!("\"v{e}\"")).unwrap(),
        _ => Json::parse(&format!("{{\"b\":{e},\"a\":[1,{e}]}}")).unwrap(),
    }
}

pub fn raw_op(n: impl Strategy<Value = i64>) -> impl Strategy<Value = RawOp> {
    (any::<u8>(), 0..KEYS, 0..ELEMS, n).prop_map(|(code, key, elem, n)| RawOp { code, key, elem, n })
}

/// Amounts for single-node runs: small ones, and ones near the bigint limits.
pub fn wide_amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => -3i64..10,
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => (i64::MAX / 2 - 2)..(i64::MAX / 2 + 2),
        1 => any::<i64>(),
    ]
}

/// The error a mutator gave must be `kind`, and it must not change the state.
pub fn expect_err<T: std::fmt::Debug>(r: Result<T>, kind: ErrorKind, what: &str) -> Res {
    match r {
        Err(e) if e.kind == kind => Ok(()),
        other => Err(TestCaseError::fail(format!("{what}: expected a {kind:?} error, got {other:?}"))),
    }
}

pub fn expect_ok<T>(r: Result<T>, what: &str) -> std::result::Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: unexpected error {e:?}")))
}

/// A set of op ids (indexes into a history's ops).
pub type Ids = u128;
pub const MAX_OPS: usize = 128;

pub fn has(ids: Ids, i: usize) -> bool {
    ids >> i & 1 == 1
}

/// One op of a concurrent history and the ops its node had seen when it made it.
#[derive(Clone, Debug)]
pub struct Rec<P> {
    pub node: usize,
    pub op: P,
    pub past: Ids,
}

/// The ops of a history that one node has seen (always causally closed).
pub struct View<'a, P> {
    pub ops: &'a [Rec<P>],
    pub seen: Ids,
}

impl<'a, P> View<'a, P> {
    pub fn iter(&self) -> impl Iterator<Item = (usize, &'a P)> + '_ {
        self.ops.iter().enumerate().filter(|(i, _)| has(self.seen, *i)).map(|(i, r)| (i, &r.op))
    }
    /// True when op `a` is in the causal past of op `b`.
    pub fn before(&self, a: usize, b: usize) -> bool {
        has(self.ops[b].past, a)
    }
    /// True when some seen op matching `by` has op `a` in its causal past.
    pub fn covered(&self, a: usize, by: impl Fn(&P) -> bool) -> bool {
        self.iter().any(|(b, p)| by(p) && self.before(a, b))
    }
}

/// A type under test in concurrent histories.
pub trait Subject {
    type S: Crdt + std::fmt::Debug;
    type P: Clone + std::fmt::Debug;
    /// Apply `raw` at `node`, whose seen ops are `view`. Returns the op to
    /// record and the mutator's delta, or None for an op the model says is
    /// refused or a no-op (after checking the implementation agrees); the
    /// harness checks that None left the state unchanged.
    fn act(s: &mut Self::S, env: &mut Env, node: usize, raw: &RawOp, view: &View<Self::P>) -> OpResult<Self>;
    /// Compare every reader of `s` with the model of `view`.
    fn check(s: &Self::S, view: &View<Self::P>) -> Res;
}

pub type OpResult<T> = std::result::Result<Option<(<T as Subject>::P, <T as Subject>::S)>, TestCaseError>;

#[derive(Clone, Debug)]
pub enum Step {
    /// A local mutation.
    Op(RawOp),
    /// Merge another node's full state.
    Merge(usize),
    /// Merge `delta(other, mine)` of another node's state.
    MergeDelta(usize),
    /// Merge one op's delta: a causally ready one, or (every third pick) one
    /// already seen again.
    Deliver(u8),
}

pub fn history(raw: impl Strategy<Value = RawOp>) -> impl Strategy<Value = (Vec<(usize, Step)>, u64)> {
    let step = prop_oneof![
        6 => raw.prop_map(Step::Op),
        1 => (0usize..3).prop_map(Step::Merge),
        1 => (0usize..3).prop_map(Step::MergeDelta),
        3 => any::<u8>().prop_map(Step::Deliver),
    ];
    (prop::collection::vec((0usize..3, step), 0..48), any::<u64>())
}

fn with_ops<P: std::fmt::Debug>(e: TestCaseError, what: String, ops: &[Rec<P>]) -> TestCaseError {
    let mut msg = format!("{what}: {e}\nops (id: node op, past):");
    for (i, r) in ops.iter().enumerate() {
        let past: Vec<usize> = (0..ops.len()).filter(|&j| has(r.past, j)).collect();
        msg.push_str(&format!("\n  {i}: {} {:?}, past {past:?}", NODES[r.node], r.op));
    }
    TestCaseError::fail(msg)
}

/// Run one concurrent history of `T` against its model.
pub fn run<T: Subject>(history: &[(usize, Step)], seed: u64) -> Res {
    let mut env = Env::default();
    let mut states: Vec<T::S> = vec![T::S::default(); 3];
    let mut seen: [Ids; 3] = [0; 3];
    let mut ops: Vec<Rec<T::P>> = Vec::new();
    let mut deltas: Vec<T::S> = Vec::new();
    for (i, (r, step)) in history.iter().enumerate() {
        let r = *r;
        match step {
            Step::Op(raw) => {
                let before = states[r].clone();
                let view = View { ops: &ops, seen: seen[r] };
                let done = T::act(&mut states[r], &mut env, r, raw, &view)
                    .map_err(|e| with_ops(e, format!("{} at step {i}", NODES[r]), &ops))?;
                match done {
                    Some((op, d)) => {
                        prop_assert_eq!(&before.merged(&d), &states[r], "merge(s, delta) != mutated s");
                        prop_assert!(ops.len() < MAX_OPS);
                        ops.push(Rec { node: r, op, past: seen[r] });
                        seen[r] |= 1 << (ops.len() - 1);
                        deltas.push(d);
                    }
                    None => prop_assert_eq!(&before, &states[r], "a refused or no-op mutation changed the state"),
                }
            }
            Step::Merge(from) => {
                let other = states[*from].clone();
                states[r].merge(&other);
                seen[r] |= seen[*from];
            }
            Step::MergeDelta(from) => {
                let d = T::S::delta(&states[*from], &states[r]);
                states[r].merge(&d);
                seen[r] |= seen[*from];
            }
            Step::Deliver(pick) => {
                let ready: Vec<usize> =
                    (0..ops.len()).filter(|&j| !has(seen[r], j) && ops[j].past & !seen[r] == 0).collect();
                let again: Vec<usize> = (0..ops.len()).filter(|&j| has(seen[r], j)).collect();
                let from =
                    if (pick.is_multiple_of(3) && !again.is_empty()) || ready.is_empty() { &again } else { &ready };
                if !from.is_empty() {
                    let j = from[*pick as usize % from.len()];
                    states[r].merge(&deltas[j]);
                    seen[r] |= 1 << j;
                }
            }
        }
        T::check(&states[r], &View { ops: &ops, seen: seen[r] })
            .map_err(|e| with_ops(e, format!("{} after step {i} ({step:?})", NODES[r]), &ops))?;
    }
    // Everyone merges everyone, then all must show the model of all ops.
    let all: Ids = if ops.is_empty() { 0 } else { Ids::MAX >> (MAX_OPS - ops.len()) };
    for _ in 0..2 {
        for r in 0..3 {
            for o in [(r + 1) % 3, (r + 2) % 3] {
                let other = states[o].clone();
                states[r].merge(&other);
            }
        }
    }
    let view = View { ops: &ops, seen: all };
    for r in 0..3 {
        prop_assert_eq!(&states[r], &states[0], "nodes did not converge");
        T::check(&states[r], &view).map_err(|e| with_ops(e, format!("{} after merging all", NODES[r]), &ops))?;
    }
    // A fresh replica gets every delta in a random order, about 20% twice.
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut feed: Vec<&T::S> = deltas.iter().collect();
    for d in &deltas {
        if next() % 5 == 0 {
            feed.push(d);
        }
    }
    for i in (1..feed.len()).rev() {
        feed.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    let mut fresh = T::S::default();
    for d in feed {
        fresh.merge(d);
    }
    prop_assert_eq!(&fresh, &states[0], "deltas in a random order do not give the merged state");
    T::check(&fresh, &view).map_err(|e| with_ops(e, "fresh replica fed all deltas".into(), &ops))
}
