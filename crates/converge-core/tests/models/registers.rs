//! lwwreg, mvreg and lwwmap against the writes that should win.
//!
//! SPEC: lwwreg keeps the write with the greatest hybrid-logical-clock
//! timestamp, equal timestamps ordered by node; a node's timestamps are
//! strictly increasing and move past every timestamp it has merged. mvreg
//! keeps the distinct values of the writes no later write has seen
//! (`all_values` sorted, `is_conflict` when more than one). lwwmap: per key
//! the latest of put and remove wins, and a remove is a timestamped
//! tombstone even for a key absent here.

use super::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Timestamps made after seeing a write are newer than it (the clock's
/// promise that skew never lets an older write win where the newer was seen).
fn check_clock<P>(view: &View<P>, ts: impl Fn(&P) -> &Timestamp) -> Res {
    for (b, pb) in view.iter() {
        for (a, pa) in view.iter() {
            if view.before(a, b) {
                prop_assert!(ts(pa) < ts(pb), "op {} ({:?}) saw op {} ({:?}) yet is not newer", b, ts(pb), a, ts(pa));
            }
        }
    }
    Ok(())
}

// ---- lwwreg ----

pub struct LwwRegModel;

impl LwwRegModel {
    fn model(view: &View<(Timestamp, Json)>) -> Option<Json> {
        view.iter().max_by(|x, y| x.1 .0.cmp(&y.1 .0)).map(|(_, (_, v))| v.clone())
    }
}

fn check_lwwreg(r: &LwwReg, want: Option<&Json>) -> Res {
    prop_assert_eq!(r.value(), want, "value()");
    prop_assert_eq!(r.to_user_json().ok(), Some(want.map(Json::to_value).unwrap_or(Value::Null)), "to_user_json()");
    Ok(())
}

impl Subject for LwwRegModel {
    type S = LwwReg;
    type P = (Timestamp, Json);
    fn act(s: &mut LwwReg, env: &mut Env, node: usize, raw: &RawOp, _: &View<Self::P>) -> OpResult<Self> {
        let ts = env.ts(node, s.max_timestamp());
        let v = json(raw.elem);
        let d = s.assign(v.clone(), ts.clone());
        Ok(Some(((ts, v), d)))
    }
    fn check(s: &LwwReg, view: &View<Self::P>) -> Res {
        check_clock(view, |(ts, _)| ts)?;
        check_lwwreg(s, Self::model(view).as_ref())
    }
}

// ---- mvreg ----

pub struct MvRegModel;

impl MvRegModel {
    /// Values of the writes that no other seen write has in its past.
    fn model(view: &View<Json>) -> BTreeSet<Json> {
        view.iter().filter(|(a, _)| !view.covered(*a, |_| true)).map(|(_, v)| v.clone()).collect()
    }
}

fn check_mvreg(r: &MvReg, want: &BTreeSet<Json>) -> Res {
    let want: Vec<Json> = want.iter().cloned().collect();
    prop_assert_eq!(&r.values(), &want, "all_values()");
    prop_assert_eq!(r.is_conflict(), want.len() > 1, "is_conflict()");
    let user: Vec<Value> = want.iter().map(Json::to_value).collect();
    prop_assert_eq!(r.to_user_json().ok(), Some(Value::Array(user)), "to_user_json()");
    Ok(())
}

impl Subject for MvRegModel {
    type S = MvReg;
    type P = Json;
    fn act(s: &mut MvReg, env: &mut Env, node: usize, raw: &RawOp, _: &View<Json>) -> OpResult<Self> {
        let v = json(raw.elem);
        let d = s.assign(v.clone(), env.dot(node));
        Ok(Some((v, d)))
    }
    fn check(s: &MvReg, view: &View<Json>) -> Res {
        check_mvreg(s, &Self::model(view))
    }
}

// ---- lwwmap ----

/// A put (Some) or a remove (None) of a key, at a timestamp.
pub type MapWrite = (String, Option<Json>, Timestamp);

pub struct LwwMapModel;

impl LwwMapModel {
    fn model(view: &View<MapWrite>) -> BTreeMap<String, Json> {
        let mut last: BTreeMap<&str, &MapWrite> = BTreeMap::new();
        for (_, w) in view.iter() {
            let cur = last.entry(&w.0).or_insert(w);
            if w.2 > cur.2 {
                *cur = w;
            }
        }
        last.into_iter().filter_map(|(k, w)| w.1.clone().map(|v| (k.to_string(), v))).collect()
    }
}

fn check_lwwmap(m: &LwwMap, want: &BTreeMap<String, Json>) -> Res {
    for k in 0..KEYS {
        let k = key(k);
        prop_assert_eq!(m.get(&k), want.get(&k), "get({})", k);
    }
    prop_assert_eq!(m.keys(), want.keys().cloned().collect::<Vec<_>>(), "keys()");
    let user: serde_json::Map<String, Value> = want.iter().map(|(k, v)| (k.clone(), v.to_value())).collect();
    prop_assert_eq!(m.to_user_json().ok(), Some(Value::Object(user)), "to_user_json()");
    Ok(())
}

impl Subject for LwwMapModel {
    type S = LwwMap;
    type P = MapWrite;
    fn act(s: &mut LwwMap, env: &mut Env, node: usize, raw: &RawOp, _: &View<MapWrite>) -> OpResult<Self> {
        let (k, ts) = (key(raw.key), env.ts(node, s.max_timestamp()));
        if raw.code.is_multiple_of(3) {
            let d = s.remove(&k, ts.clone());
            // A tombstone even where the key is absent.
            prop_assert!(!d.is_empty(), "remove wrote no tombstone");
            Ok(Some(((k, None, ts), d)))
        } else {
            let v = json(raw.elem);
            let d = s.put(&k, v.clone(), ts.clone());
            Ok(Some(((k, Some(v), ts), d)))
        }
    }
    fn check(s: &LwwMap, view: &View<MapWrite>) -> Res {
        check_clock(view, |w| &w.2)?;
        check_lwwmap(s, &Self::model(view))
    }
}

// ---- single node ----

fn single_lwwreg(raws: &[RawOp]) -> Res {
    let (mut r, mut env) = (LwwReg::default(), Env::default());
    check_lwwreg(&r, None)?;
    for raw in raws {
        let ts = env.ts(0, r.max_timestamp());
        r.assign(json(raw.elem), ts);
        check_lwwreg(&r, Some(&json(raw.elem)))?;
    }
    Ok(())
}

fn single_mvreg(raws: &[RawOp]) -> Res {
    let (mut r, mut env) = (MvReg::default(), Env::default());
    check_mvreg(&r, &BTreeSet::new())?;
    for raw in raws {
        r.assign(json(raw.elem), env.dot(0));
        check_mvreg(&r, &BTreeSet::from([json(raw.elem)]))?;
    }
    Ok(())
}

fn single_lwwmap(raws: &[RawOp]) -> Res {
    let (mut m, mut want, mut env) = (LwwMap::default(), BTreeMap::new(), Env::default());
    for raw in raws {
        let (k, ts) = (key(raw.key), env.ts(0, m.max_timestamp()));
        if raw.code.is_multiple_of(3) {
            m.remove(&k, ts);
            want.remove(&k);
        } else {
            m.put(&k, json(raw.elem), ts);
            want.insert(k, json(raw.elem));
        }
        check_lwwmap(&m, &want)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    #[test]
    fn lwwreg_single(raws in prop::collection::vec(raw_op(Just(0)), 0..40)) {
        single_lwwreg(&raws)?;
    }
    #[test]
    fn mvreg_single(raws in prop::collection::vec(raw_op(Just(0)), 0..40)) {
        single_mvreg(&raws)?;
    }
    #[test]
    fn lwwmap_single(raws in prop::collection::vec(raw_op(Just(0)), 0..40)) {
        single_lwwmap(&raws)?;
    }
    #[test]
    fn lwwreg_concurrent((h, seed) in history(raw_op(Just(0)))) {
        run::<LwwRegModel>(&h, seed)?;
    }
    #[test]
    fn mvreg_concurrent((h, seed) in history(raw_op(Just(0)))) {
        run::<MvRegModel>(&h, seed)?;
    }
    #[test]
    fn lwwmap_concurrent((h, seed) in history(raw_op(Just(0)))) {
        run::<LwwMapModel>(&h, seed)?;
    }
}
