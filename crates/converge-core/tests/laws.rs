//! Property tests for the merge laws of every type.
//!
//! Each case is a random history: three replicas (three node identities)
//! apply random mutations and sometimes merge each other's state. Every state
//! and delta it produces is then checked against the laws. Case count:
//! CONVERGE_PROPTEST_CASES (default 2000) per property.

use converge_core::*;
use proptest::prelude::*;

const NODES: [&str; 3] = ["madrid", "dublin", "virginia"];

fn cases() -> u32 {
    std::env::var("CONVERGE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

/// Dots and clocks as a node would have them: one durable counter and one
/// HLC per node, shared by every value that node touches.
struct Env {
    counters: [u64; 3],
    clocks: [Hlc; 3],
    wall: u64,
}

impl Env {
    fn new() -> Env {
        Env { counters: [0; 3], clocks: Default::default(), wall: 1_700_000_000_000 }
    }
    fn dot(&mut self, a: usize) -> Dot {
        self.counters[a] += 1;
        Dot::new(NODES[a], self.counters[a])
    }
    fn ts(&mut self, a: usize, floor: Option<&Timestamp>) -> Timestamp {
        // Wall clocks that skew and sometimes stand still.
        self.wall += (a as u64 * 7) % 3;
        if let Some(f) = floor {
            self.clocks[a].observe(f);
        }
        self.clocks[a].tick(self.wall - a as u64 * 5, NODES[a])
    }
}

#[derive(Clone, Debug)]
struct RawOp {
    actor: usize,
    code: u8,
    key: u8,
    elem: u8,
    n: i64,
}

fn json(e: u8) -> Json {
    match e % 4 {
        0 => Json::parse("null").unwrap(),
        1 => Json::parse(&format!("{e}")).unwrap(),
        2 => Json::parse(&format!("\"v{e}\"")).unwrap(),
        _ => Json::parse(&format!("{{\"b\":{e},\"a\":[1,2]}}")).unwrap(),
    }
}

/// A type under test: how a raw op maps onto its mutators. Returns the delta,
/// or None where the op is refused (e.g. a spend without rights).
trait Model: Crdt + std::fmt::Debug {
    fn step(&mut self, env: &mut Env, op: &RawOp) -> Option<Self>;
}

impl Model for GCounter {
    fn step(&mut self, _: &mut Env, op: &RawOp) -> Option<Self> {
        self.incr(NODES[op.actor], op.n.abs()).ok()
    }
}

impl Model for PnCounter {
    fn step(&mut self, _: &mut Env, op: &RawOp) -> Option<Self> {
        let a = NODES[op.actor];
        if op.code.is_multiple_of(2) { self.incr(a, op.n) } else { self.decr(a, op.n) }.ok()
    }
}

impl Model for BCounter {
    fn step(&mut self, _: &mut Env, op: &RawOp) -> Option<Self> {
        let a = NODES[op.actor];
        match op.code % 3 {
            0 => self.incr(a, op.n.abs()),
            1 => self.decr(a, op.n.abs()),
            _ => self.transfer(a, NODES[(op.actor + 1 + op.key as usize % 2) % 3], op.n.abs()),
        }
        .ok()
    }
}

impl Model for GSet {
    fn step(&mut self, _: &mut Env, op: &RawOp) -> Option<Self> {
        Some(self.add(&format!("e{}", op.elem)))
    }
}

impl Model for OrSet {
    fn step(&mut self, env: &mut Env, op: &RawOp) -> Option<Self> {
        let e = format!("e{}", op.elem);
        Some(if op.code.is_multiple_of(3) { self.remove(&e) } else { self.add(&e, env.dot(op.actor)) })
    }
}

impl Model for LwwReg {
    fn step(&mut self, env: &mut Env, op: &RawOp) -> Option<Self> {
        let ts = env.ts(op.actor, self.max_timestamp());
        Some(self.assign(json(op.elem), ts))
    }
}

impl Model for MvReg {
    fn step(&mut self, env: &mut Env, op: &RawOp) -> Option<Self> {
        Some(self.assign(json(op.elem), env.dot(op.actor)))
    }
}

impl Model for LwwMap {
    fn step(&mut self, env: &mut Env, op: &RawOp) -> Option<Self> {
        let k = format!("k{}", op.key);
        let ts = env.ts(op.actor, self.max_timestamp());
        Some(if op.code.is_multiple_of(3) { self.remove(&k, ts) } else { self.put(&k, json(op.elem), ts) })
    }
}

impl Model for OrMap {
    fn step(&mut self, env: &mut Env, op: &RawOp) -> Option<Self> {
        let k = format!("k{}", op.key);
        let e = format!("e{}", op.elem);
        let a = NODES[op.actor];
        let dot = env.dot(op.actor);
        match op.code % 6 {
            0 => self.incr(&k, a, op.n, dot),
            1 => self.decr(&k, a, op.n, dot),
            2 => self.add(&k, &e, dot),
            3 => self.remove_element(&k, &e, dot),
            4 => self.assign(&k, json(op.elem), dot),
            _ => Ok(self.remove_key(&k)),
        }
        .ok()
    }
}

impl Model for SeqText {
    fn step(&mut self, env: &mut Env, op: &RawOp) -> Option<Self> {
        let len = self.length();
        let pos = (op.key as u64 * 7 + op.elem as u64) % (len + 1);
        let before = encode(self);
        if op.code.is_multiple_of(3) {
            let n = (op.n.unsigned_abs() % 4).min(len - pos);
            let d = self.delete(pos, n).ok()?;
            // The stored-bytes path gives the same bytes as the decoded one.
            assert_eq!(converge_core::types::seqtext::stream::delete(&before, pos, n).unwrap(), encode(self));
            return Some(d);
        }
        let text = ["a", "bc", "\u{e9}", "xyz"][op.elem as usize % 4];
        let first = env.counters[op.actor] + 1;
        env.counters[op.actor] += text.chars().count() as u64;
        let d = self.insert(pos, text, NODES[op.actor], first).ok()?;
        if let Some(b) = converge_core::types::seqtext::stream::insert(&before, pos, text, NODES[op.actor], first).unwrap() {
            assert_eq!(b, encode(self));
        }
        Some(d)
    }
}

#[derive(Clone, Debug)]
enum Step {
    Op(RawOp),
    Sync(usize),
}

fn step_strategy() -> impl Strategy<Value = (usize, Step)> {
    let op = (0usize..3, 0u8..6, 0u8..4, 0u8..6, -3i64..10)
        .prop_map(|(actor, code, key, elem, n)| Step::Op(RawOp { actor, code, key, elem, n }));
    let sync = (0usize..3).prop_map(Step::Sync);
    (0usize..3, prop_oneof![4 => op, 1 => sync])
}

fn history_strategy() -> impl Strategy<Value = (Vec<(usize, Step)>, u64)> {
    (prop::collection::vec(step_strategy(), 0..40), any::<u64>())
}

/// What one history produced.
struct Run<T> {
    replicas: Vec<T>,
    snapshots: Vec<T>,
    deltas: Vec<T>,
}

fn run<T: Model>(history: &[(usize, Step)]) -> std::result::Result<Run<T>, TestCaseError> {
    let mut env = Env::new();
    let mut replicas = vec![T::default(), T::default(), T::default()];
    let mut snapshots = vec![T::default()];
    let mut deltas = Vec::new();
    for (r, step) in history {
        match step {
            Step::Op(op) => {
                // The replica's node is the op's actor, so a node's dots and
                // clock stay its own.
                let op = RawOp { actor: *r, ..op.clone() };
                let before = replicas[*r].clone();
                if let Some(d) = replicas[*r].step(&mut env, &op) {
                    prop_assert_eq!(&before.merged(&d), &replicas[*r], "merge(s, delta) != apply(s, op)");
                    prop_assert!(d.validate().is_ok(), "delta is not a valid state: {:?}", d);
                    deltas.push(d);
                } else {
                    prop_assert_eq!(&before, &replicas[*r], "a refused op changed the state");
                }
            }
            Step::Sync(from) => {
                let other = replicas[*from].clone();
                replicas[*r].merge(&other);
            }
        }
        prop_assert!(replicas[*r].validate().is_ok(), "invalid state {:?}", replicas[*r]);
        snapshots.push(replicas[*r].clone());
    }
    Ok(Run { replicas, snapshots, deltas })
}

fn pick<T: Clone>(v: &[T], seed: u64, salt: u64) -> T {
    v[((seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xD134_2543_DE82_EF95) >> 7) as usize % v.len()]
        .clone()
}

fn check_laws<T: Model>(run: &Run<T>, seed: u64) -> std::result::Result<(), TestCaseError> {
    let a = pick(&run.snapshots, seed, 1);
    let b = pick(&run.snapshots, seed, 2);
    let c = pick(&run.snapshots, seed, 3);
    for (x, y) in [(&a, &b), (&b, &c), (&run.replicas[0], &run.replicas[1])] {
        prop_assert_eq!(x.merged(y), y.merged(x), "merge is not commutative");
    }
    prop_assert_eq!(a.merged(&b).merged(&c), a.merged(&b.merged(&c)), "merge is not associative");
    prop_assert_eq!(a.merged(&a), a.clone(), "merge is not idempotent");
    prop_assert_eq!(a.merged(&T::default()), a.clone(), "empty is not the identity");
    let ab = a.merged(&b);
    prop_assert_eq!(ab.merged(&a), ab.clone(), "merge is not an upper bound");
    Ok(())
}

fn check_deltas<T: Model>(run: &Run<T>, seed: u64) -> std::result::Result<(), TestCaseError> {
    for salt in 0..4 {
        let old = pick(&run.snapshots, seed, salt * 2 + 10);
        let new = pick(&run.snapshots, seed, salt * 2 + 11);
        let d = T::delta(&new, &old);
        prop_assert!(d.validate().is_ok(), "delta(new, old) is not a valid state: {:?}", d);
        prop_assert_eq!(old.merged(&d), old.merged(&new), "merge(old, delta(new, old)) != merge(old, new)");
        prop_assert!(T::delta(&old, &old).is_empty(), "delta(s, s) is not empty");
        let mut state = d.clone();
        state.as_state();
        prop_assert_eq!(T::default().merged(&d), state, "empty merged with delta(new, old) is not that delta as a state");
    }
    for d in &run.deltas {
        let mut state = d.clone();
        state.as_state();
        prop_assert_eq!(&T::default().merged(d), &state, "empty merged with an op's delta is not that delta as a state");
    }
    Ok(())
}

fn check_codec<T: Model>(run: &Run<T>) -> std::result::Result<(), TestCaseError> {
    for s in &run.snapshots {
        // A state is written in the first format version, whatever the
        // type's latest: stored values keep their bytes.
        prop_assert_eq!(encode(s)[0], FORMAT_VERSION);
    }
    for s in run.snapshots.iter().chain(&run.deltas) {
        let bytes = encode(s);
        prop_assert!((FORMAT_VERSION..=T::LATEST_VERSION).contains(&bytes[0]));
        prop_assert_eq!(&decode::<T>(&bytes).map_err(|e| TestCaseError::fail(e.message))?, s);
        // merge_encoded (the merge_agg fast path) equals decode-then-merge.
        let base = pick(&run.snapshots, bytes.len() as u64, 5);
        let mut fast = base.clone();
        fast.merge_encoded(&bytes).map_err(|e| TestCaseError::fail(e.message))?;
        prop_assert_eq!(fast, base.merged(s), "merge_encoded differs from merge");
        let text = to_text(s);
        let back: T = from_text(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(&back, s, "text round trip: {}", text);
        prop_assert_eq!(to_text(&back), text, "text form is not canonical");
        if s.is_empty() {
            prop_assert_eq!(to_text(s), "{}");
        }
        // A value fed to another type's decoder is refused by its tag.
        let mut other = bytes.clone();
        other[1] = if T::TAG == 1 { 2 } else { 1 };
        prop_assert!(decode::<T>(&other).is_err());
        // Every truncation is refused or decodes to something valid; never a panic.
        for cut in 0..bytes.len() {
            if let Ok(v) = decode::<T>(&bytes[..cut]) {
                prop_assert!(v.validate().is_ok());
            }
        }
    }
    Ok(())
}

fn check_convergence<T: Model>(run: &Run<T>, seed: u64) -> std::result::Result<(), TestCaseError> {
    let mut expected = T::default();
    for r in &run.replicas {
        expected.merge(r);
    }
    let mut all = T::default();
    for d in &run.deltas {
        all.merge(d);
    }
    prop_assert_eq!(&all, &expected, "the deltas do not add up to the replicas' states");
    // Three fresh replicas get every delta in their own random order, with
    // about 20% delivered twice.
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..3 {
        let mut feed: Vec<&T> = run.deltas.iter().collect();
        for d in &run.deltas {
            if next() % 5 == 0 {
                feed.push(d);
            }
        }
        for i in (1..feed.len()).rev() {
            feed.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        let mut r = T::default();
        for d in feed {
            r.merge(d);
        }
        prop_assert_eq!(&r, &expected, "replicas fed in different orders diverged");
    }
    Ok(())
}

/// Byte edits applied to a valid encoding: (position, kind, byte).
fn edits_strategy() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop::collection::vec((any::<usize>(), 0u8..4, any::<u8>()), 1..6)
}

fn fuzz_case<T: Model>(
    run: &Run<T>,
    seed: u64,
    edits: &[(usize, u8, u8)],
    noise: &[u8],
) -> std::result::Result<(), TestCaseError> {
    let base = pick(&run.snapshots, seed, 7);
    // Half the cases mutate a delta's encoding (an ormap delta has a later
    // format version than any state).
    let mut bytes = if run.deltas.is_empty() || seed.is_multiple_of(2) {
        encode(&base)
    } else {
        encode(&pick(&run.deltas, seed, 8))
    };
    for &(pos, kind, b) in edits {
        let n = bytes.len();
        match kind {
            0 => bytes[pos % n] = b,
            1 => bytes.insert(pos % (n + 1), b),
            2 if n > 2 => {
                bytes.remove(pos % n);
            }
            _ => bytes[pos % n] ^= 1 << (b % 8),
        }
    }
    // Mutated valid encodings, raw noise, and noise behind a valid header.
    let mut headed = vec![FORMAT_VERSION, T::TAG];
    headed.extend_from_slice(noise);
    let mut latest = headed.clone();
    latest[0] = T::LATEST_VERSION;
    for input in [&bytes[..], noise, &headed[..], &latest[..]] {
        if let Ok(v) = decode::<T>(input) {
            prop_assert!(v.validate().is_ok());
            prop_assert_eq!(encode(&v), input.to_vec(), "accepted bytes are not canonical");
            // (A merge makes a state: an ormap delta's covers do not survive
            // it, so idempotence is against the value as a state.)
            prop_assert_eq!(v.merged(&v), v.merged(&T::default()));
            // Merged into the empty value, a value is itself as a state (the
            // apply stores a row's one delta as it came unless as_state
            // changes it: src/apply/merge.rs).
            let mut state = v.clone();
            state.as_state();
            prop_assert_eq!(T::default().merged(&v), state, "empty merged with a value is not the value as a state");
            prop_assert_eq!(v.merged(&base), base.merged(&v));
            let _ = v.to_user_json();
            let _ = T::delta(&v, &base);
        }
    }
    // The text decoder on mutated canonical text and on noise.
    let mut text = to_text(&base).into_bytes();
    for &(pos, _, b) in edits {
        let n = text.len();
        text[pos % n] = b" {}[],:\"0123456789-abcdefghijklmnopqrstuvwxyz"[b as usize % 45];
    }
    for t in [String::from_utf8_lossy(&text).into_owned(), String::from_utf8_lossy(noise).into_owned()] {
        if let Ok(v) = from_text::<T>(&t) {
            prop_assert!(v.validate().is_ok());
            prop_assert_eq!(from_text::<T>(&to_text(&v)).ok(), Some(v.clone()));
        }
    }
    Ok(())
}

fn fuzz_cases() -> u32 {
    std::env::var("CONVERGE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

macro_rules! law_tests {
    ($($m:ident: $t:ty),* $(,)?) => {$(
        mod $m {
            use super::*;
            proptest! {
                #![proptest_config(ProptestConfig::with_cases(cases()))]
                #[test]
                fn merge_laws((h, seed) in history_strategy()) {
                    check_laws(&run::<$t>(&h)?, seed)?;
                }
                #[test]
                fn delta_laws((h, seed) in history_strategy()) {
                    check_deltas(&run::<$t>(&h)?, seed)?;
                }
                #[test]
                fn codec_round_trips((h, _seed) in history_strategy()) {
                    check_codec(&run::<$t>(&h)?)?;
                }
                #[test]
                fn replicas_converge((h, seed) in history_strategy()) {
                    check_convergence(&run::<$t>(&h)?, seed)?;
                }
            }
            proptest! {
                #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]
                /// Decoders never panic; whatever they accept is valid and canonical.
                #[test]
                fn fuzz_decoders((h, seed) in history_strategy(), edits in edits_strategy(),
                                 noise in prop::collection::vec(any::<u8>(), 0..64)) {
                    fuzz_case(&run::<$t>(&h)?, seed, &edits, &noise)?;
                }
            }
        }
    )*};
}

law_tests! {
    gcounter: GCounter,
    pncounter: PnCounter,
    bcounter: BCounter,
    gset: GSet,
    orset: OrSet,
    lwwreg: LwwReg,
    mvreg: MvReg,
    lwwmap: LwwMap,
    ormap: OrMap,
    seqtext: SeqText,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]
    /// The op decoder never panics; what it accepts is valid and canonical.
    #[test]
    fn fuzz_op_decoder(edits in edits_strategy(), noise in prop::collection::vec(any::<u8>(), 0..96),
                       counter in 1u64..1000, delta in prop::collection::vec(any::<u8>(), 0..16)) {
        let op = Op::new("phone", counter, "incident", &serde_json::json!({"id": counter}), "tags",
                         if counter > 1 { vec![format_op_id("phone", counter - 1)] } else { vec![] }, delta);
        let mut bytes = op.encode();
        prop_assert_eq!(Op::decode(&bytes).ok(), Some(op.clone()));
        for &(pos, kind, b) in &edits {
            let n = bytes.len();
            match kind {
                0 => bytes[pos % n] = b,
                1 => bytes.insert(pos % (n + 1), b),
                2 if n > 2 => { bytes.remove(pos % n); }
                _ => bytes[pos % n] ^= 1 << (b % 8),
            }
        }
        let mut headed = vec![FORMAT_VERSION, OP_TAG];
        headed.extend_from_slice(&noise);
        for input in [&bytes[..], &noise[..], &headed[..]] {
            if let Ok(o) = Op::decode(input) {
                prop_assert!(o.validate().is_ok());
                prop_assert_eq!(o.encode(), input.to_vec());
            }
        }
    }
}
