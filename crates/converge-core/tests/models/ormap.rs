//! ormap against its SPEC: text keys to a nested pncounter, orset or mvreg.
//!
//! - Mutators act on the nested value the key holds now; the first mutator
//!   on a key fixes its type, another type's mutator there fails locally
//!   with 42804 (WrongType).
//! - A key is present iff some mutation on it is in the causal past of no
//!   remove of the key (observed-remove), and stays, even with an empty
//!   nested value, until removed. Removing an absent key or element is a
//!   no-op.
//! - Under a present key: the counter is the sum of the counter ops no key
//!   remove has seen; the set is observed-remove (an add survives unless a
//!   remove of that element or of the key has seen it); the register holds
//!   the values of the assigns that neither a later assign nor a key remove
//!   has seen.
//! - Each type with such a surviving op is live; two live types (from
//!   concurrent first uses) show as `{"conflict": {"<type>": value, ...}}`.
//! - `get` shows a counter as a number, a set as a sorted array, a register
//!   as the sorted array of its values; absent keys are NULL.

use super::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Counter,
    Set,
    Register,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "pncounter",
            Kind::Set => "orset",
            Kind::Register => "mvreg",
        }
    }
}

#[derive(Clone, Debug)]
pub enum Mut {
    /// Signed amount (decr records a negative one).
    Count(i128),
    Add(String),
    Remove(String),
    Assign(Json),
    RemoveKey,
}

impl Mut {
    fn kind(&self) -> Option<Kind> {
        match self {
            Mut::Count(_) => Some(Kind::Counter),
            Mut::Add(_) | Mut::Remove(_) => Some(Kind::Set),
            Mut::Assign(_) => Some(Kind::Register),
            Mut::RemoveKey => None,
        }
    }
}

pub type MapOp = (String, Mut);

/// The nested values of one present key.
#[derive(Debug, Default)]
struct Nested {
    kinds: BTreeSet<Kind>,
    counter: i128,
    set: BTreeSet<String>,
    reg: BTreeSet<Json>,
}

impl Nested {
    fn value(&self, kind: Kind) -> Value {
        match kind {
            Kind::Counter => json!(self.counter as i64),
            Kind::Set => json!(self.set),
            Kind::Register => Value::Array(self.reg.iter().map(Json::to_value).collect()),
        }
    }

    fn get(&self) -> Value {
        match self.kinds.iter().collect::<Vec<_>>().as_slice() {
            [one] => self.value(**one),
            many => {
                let m: serde_json::Map<String, Value> =
                    many.iter().map(|k| (k.name().into(), self.value(**k))).collect();
                json!({ "conflict": m })
            }
        }
    }
}

/// The model of the map a view has seen: present keys only.
fn model(view: &View<MapOp>) -> BTreeMap<String, Nested> {
    let mut out: BTreeMap<String, Nested> = BTreeMap::new();
    for (a, (k, m)) in view.iter() {
        let Some(kind) = m.kind() else { continue };
        // Gone with the key if a key remove has seen it.
        if view.covered(a, |(k2, m2)| k2 == k && matches!(m2, Mut::RemoveKey)) {
            continue;
        }
        let n = out.entry(k.clone()).or_default();
        n.kinds.insert(kind);
        match m {
            Mut::Count(x) => n.counter += x,
            Mut::Add(e) => {
                if !view.covered(a, |(k2, m2)| k2 == k && matches!(m2, Mut::Remove(r) if r == e)) {
                    n.set.insert(e.clone());
                }
            }
            Mut::Assign(v) => {
                if !view.covered(a, |(k2, m2)| k2 == k && matches!(m2, Mut::Assign(_))) {
                    n.reg.insert(v.clone());
                }
            }
            Mut::Remove(_) | Mut::RemoveKey => {}
        }
    }
    out
}

fn check_map(m: &OrMap, want: &BTreeMap<String, Nested>) -> Res {
    for k in 0..KEYS {
        let k = key(k);
        prop_assert_eq!(m.get(&k).ok(), Some(want.get(&k).map(Nested::get)), "get({})", k);
    }
    prop_assert_eq!(m.keys(), want.keys().cloned().collect::<Vec<_>>(), "keys()");
    let user: serde_json::Map<String, Value> = want.iter().map(|(k, n)| (k.clone(), n.get())).collect();
    prop_assert_eq!(m.to_user_json().ok(), Some(Value::Object(user)), "to_user_json()");
    Ok(())
}

/// Apply one raw op to `m` at `node`, where `now` is the model of what the
/// node has seen. Returns the op to record and its delta, or None when the
/// SPEC says the op fails or is a no-op (after checking the code agrees).
fn step(
    m: &mut OrMap,
    env: &mut Env,
    node: usize,
    raw: &RawOp,
    now: &BTreeMap<String, Nested>,
) -> OpResult<OrMapModel> {
    let (k, e) = (key(raw.key), elem(raw.elem));
    let me = NODES[node];
    let cur = now.get(&k);
    let op = match raw.code % 6 {
        0 => Mut::Count(raw.n as i128),
        1 => Mut::Count(-(raw.n as i128)),
        2 => Mut::Add(e.clone()),
        3 => Mut::Remove(e.clone()),
        4 => Mut::Assign(json(raw.elem)),
        _ => Mut::RemoveKey,
    };
    let what = format!("{me}: {op:?} at {k}");
    if op.kind().is_none() {
        let d = m.remove_key(&k);
        if cur.is_none() {
            prop_assert!(d.is_empty(), "{}: removing an absent key is not a no-op: {:?}", what, d);
            return Ok(None);
        }
        return Ok(Some(((k, op), d)));
    }
    let dot = env.dot(node);
    let r = match raw.code % 6 {
        0 => m.incr(&k, me, raw.n, dot),
        1 => m.decr(&k, me, raw.n, dot),
        2 => m.add(&k, &e, dot),
        3 => m.remove_element(&k, &e, dot),
        _ => m.assign(&k, json(raw.elem), dot),
    };
    let kind = op.kind().unwrap_or(Kind::Counter);
    if cur.is_some_and(|n| !n.kinds.contains(&kind)) {
        expect_err(r, ErrorKind::WrongType, &what)?;
        return Ok(None);
    }
    if let Mut::Count(x) = op {
        if i64::try_from(cur.map_or(0, |n| n.counter) + x).is_err() {
            expect_err(r, ErrorKind::OutOfRange, &what)?;
            return Ok(None);
        }
    }
    let d = expect_ok(r, &what)?;
    if matches!(op, Mut::Remove(_)) && !cur.is_some_and(|n| n.set.contains(&e)) {
        prop_assert!(d.is_empty(), "{}: removing an absent element is not a no-op: {:?}", what, d);
        return Ok(None);
    }
    Ok(Some(((k, op), d)))
}

pub struct OrMapModel;

impl Subject for OrMapModel {
    type S = OrMap;
    type P = MapOp;
    fn act(s: &mut OrMap, env: &mut Env, node: usize, raw: &RawOp, view: &View<MapOp>) -> OpResult<Self> {
        step(s, env, node, raw, &model(view))
    }
    fn check(s: &OrMap, view: &View<MapOp>) -> Res {
        check_map(s, &model(view))
    }
}

/// Single node: a plain map of plain nested values, updated in place.
fn single(raws: &[RawOp]) -> Res {
    let (mut m, mut env) = (OrMap::default(), Env::default());
    let mut want: BTreeMap<String, Nested> = BTreeMap::new();
    // Per key, this node's running totals up and down, kept across key
    // removes as the code keeps them (see hits_count_cap).
    let mut totals: BTreeMap<String, (i128, i128)> = BTreeMap::new();
    for (i, raw) in raws.iter().enumerate() {
        let k = key(raw.key);
        let e = if raw.code % 6 == 0 { raw.n as i128 } else { -(raw.n as i128) };
        let (up, down) = totals.get(&k).copied().unwrap_or_default();
        let counter = want.get(&k).map(|n| (n.kinds.contains(&Kind::Counter), n.counter));
        let counting = raw.code % 6 < 2 && counter.is_none_or(|(is, _)| is);
        if counting
            && i64::try_from(counter.map_or(0, |c| c.1) + e).is_ok()
            && super::counters::hits_count_cap(up, down, e)
        {
            continue;
        }
        let done = step(&mut m, &mut env, 0, raw, &want).map_err(|e| TestCaseError::fail(format!("step {i}: {e}")))?;
        if let Some(((k2, op), _)) = done {
            if let Mut::RemoveKey = op {
                want.remove(&k2);
            } else {
                let n = want.entry(k2.clone()).or_default();
                n.kinds.extend(op.kind());
                match op {
                    Mut::Count(x) => {
                        n.counter += x;
                        let t = totals.entry(k2.clone()).or_default();
                        if x >= 0 {
                            t.0 += x
                        } else {
                            t.1 -= x
                        }
                    }
                    Mut::Add(e) => {
                        n.set.insert(e);
                    }
                    Mut::Remove(e) => {
                        n.set.remove(&e);
                    }
                    Mut::Assign(v) => n.reg = BTreeSet::from([v]),
                    Mut::RemoveKey => {}
                }
            }
        }
        check_map(&m, &want).map_err(|e| TestCaseError::fail(format!("after step {i}: {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    #[test]
    fn ormap_single(raws in prop::collection::vec(raw_op(wide_amount()), 0..40)) {
        single(&raws)?;
    }
    #[test]
    fn ormap_concurrent((h, seed) in history(raw_op(-3i64..10))) {
        run::<OrMapModel>(&h, seed)?;
    }
}
