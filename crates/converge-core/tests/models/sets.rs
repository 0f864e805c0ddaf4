//! gset and orset against plain sets of text.
//!
//! SPEC: readers `elements` (sorted text[]), `contains`, `size`; the jsonb
//! cast shows the sorted elements. orset: add wins over a concurrent remove;
//! a remove removes exactly the adds its node has observed, and removing an
//! absent element is a no-op.

use super::*;
use std::collections::BTreeSet;

/// `size` is the number of elements; core has no separate reader for it.
fn check_set(
    elements: Vec<String>,
    contains: impl Fn(&str) -> bool,
    user: Result<serde_json::Value>,
    want: &BTreeSet<String>,
) -> Res {
    let want_vec: Vec<String> = want.iter().cloned().collect();
    prop_assert_eq!(&elements, &want_vec, "elements()");
    for e in 0..ELEMS {
        let e = elem(e);
        prop_assert_eq!(contains(&e), want.contains(&e), "contains({})", e);
    }
    prop_assert_eq!(user.ok(), Some(serde_json::json!(want_vec)), "to_user_json()");
    Ok(())
}

// ---- gset ----

pub struct GSetModel;

impl Subject for GSetModel {
    type S = GSet;
    type P = String;
    fn act(s: &mut GSet, _: &mut Env, _: usize, raw: &RawOp, _: &View<String>) -> OpResult<Self> {
        let e = elem(raw.elem);
        let d = s.add(&e);
        Ok(Some((e, d)))
    }
    fn check(s: &GSet, view: &View<String>) -> Res {
        let want: BTreeSet<String> = view.iter().map(|(_, e)| e.clone()).collect();
        check_set(s.elements(), |e| s.contains(e), s.to_user_json(), &want)
    }
}

// ---- orset ----

#[derive(Clone, Debug)]
pub enum SetOp {
    Add(String),
    Remove(String),
}

pub struct OrSetModel;

impl OrSetModel {
    /// Observed-remove: `e` is present iff some add(e) is in the causal past
    /// of no remove(e).
    fn model(view: &View<SetOp>) -> BTreeSet<String> {
        view.iter()
            .filter_map(|(a, op)| match op {
                SetOp::Add(e) if !view.covered(a, |p| matches!(p, SetOp::Remove(r) if r == e)) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Subject for OrSetModel {
    type S = OrSet;
    type P = SetOp;
    fn act(s: &mut OrSet, env: &mut Env, node: usize, raw: &RawOp, view: &View<SetOp>) -> OpResult<Self> {
        let e = elem(raw.elem);
        if !raw.code.is_multiple_of(3) {
            let d = s.add(&e, env.dot(node));
            return Ok(Some((SetOp::Add(e), d)));
        }
        let d = s.remove(&e);
        if Self::model(view).contains(&e) {
            Ok(Some((SetOp::Remove(e), d)))
        } else {
            prop_assert!(d.is_empty(), "remove of an absent element is not a no-op: {:?}", d);
            Ok(None)
        }
    }
    fn check(s: &OrSet, view: &View<SetOp>) -> Res {
        check_set(s.elements(), |e| s.contains(e), s.to_user_json(), &Self::model(view))
    }
}

// ---- single node ----

fn single_gset(raws: &[RawOp]) -> Res {
    let (mut s, mut want) = (GSet::default(), BTreeSet::new());
    for raw in raws {
        let e = elem(raw.elem);
        let d = s.add(&e);
        // The delta of an add that changes nothing is empty.
        prop_assert_eq!(d.is_empty(), want.contains(&e), "delta of add({})", e);
        want.insert(e);
        check_set(s.elements(), |e| s.contains(e), s.to_user_json(), &want)?;
    }
    Ok(())
}

fn single_orset(raws: &[RawOp]) -> Res {
    let (mut s, mut want, mut env) = (OrSet::default(), BTreeSet::new(), Env::default());
    for raw in raws {
        let e = elem(raw.elem);
        if raw.code.is_multiple_of(3) {
            let d = s.remove(&e);
            prop_assert_eq!(d.is_empty(), !want.contains(&e), "delta of remove({})", e);
            want.remove(&e);
        } else {
            s.add(&e, env.dot(0));
            want.insert(e);
        }
        check_set(s.elements(), |e| s.contains(e), s.to_user_json(), &want)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    #[test]
    fn gset_single(raws in prop::collection::vec(raw_op(Just(0)), 0..40)) {
        single_gset(&raws)?;
    }
    #[test]
    fn orset_single(raws in prop::collection::vec(raw_op(Just(0)), 0..40)) {
        single_orset(&raws)?;
    }
    #[test]
    fn gset_concurrent((h, seed) in history(raw_op(Just(0)))) {
        run::<GSetModel>(&h, seed)?;
    }
    #[test]
    fn orset_concurrent((h, seed) in history(raw_op(Just(0)))) {
        run::<OrSetModel>(&h, seed)?;
    }
}
