//! Compaction (`Crdt::stable_form`, what converge.compact() applies) never
//! changes what users read, now or after any later concurrent history.
//! Three replicas edit and exchange deltas; at a random point every replica
//! has every delta so far: those ops are stable (their deltas never come
//! again, as the op log's dedupe guarantees) and their merge is the base.
//! From then on, random replicas compact against that base at random steps,
//! also while they hold newer ops that are not stable. A shadow system makes
//! the same edits without compacting. After every step each replica reads
//! the same as its shadow, and at the end all replicas agree.

use super::*;

/// One replica-step of a type: an edit by replica `node` (returns the
/// delta), chosen by `code` and `x`.
trait Edits: Crdt {
    fn edit(&mut self, node: usize, dot: u64, code: u8, x: u8) -> Self;
    fn read(&self) -> serde_json::Value {
        self.to_user_json().unwrap()
    }
}

impl Edits for OrSet {
    fn edit(&mut self, node: usize, dot: u64, code: u8, x: u8) -> Self {
        let e = format!("e{}", x % 4);
        if code % 2 == 0 { self.add(&e, Dot::new(NODES[node], dot)) } else { self.remove(&e) }
    }
}

impl Edits for MvReg {
    fn edit(&mut self, node: usize, dot: u64, _: u8, x: u8) -> Self {
        self.assign(Json::from_value(&serde_json::json!(x % 4)), Dot::new(NODES[node], dot))
    }
    fn read(&self) -> serde_json::Value {
        serde_json::to_value(self.values()).unwrap()
    }
}

fn run<T: Edits>(steps: &[(usize, u8, u8)], stable_at: usize, who: u8) -> std::result::Result<(), TestCaseError> {
    let mut real = vec![T::default(); 3];
    let mut shadow = vec![T::default(); 3];
    let mut deltas: Vec<(T, T)> = Vec::new();
    let mut base: Option<T> = None;
    let mut dot = 0u64;
    let compact = |v: &mut T, base: &T, who: usize| -> std::result::Result<(), TestCaseError> {
        if let Some(c) = v.stable_form(base) {
            prop_assert_eq!(c.read(), v.read(), "compaction changed what replica {} reads", who);
            prop_assert!(c.validate().is_ok());
            *v = c;
        }
        Ok(())
    };
    for (step, &(node, code, x)) in steps.iter().enumerate() {
        if step == stable_at {
            let mut b = T::default();
            for (d, _) in &deltas {
                b.merge(d);
            }
            for i in 0..3 {
                for (d, s) in &deltas {
                    real[i].merge(d);
                    shadow[i].merge(s);
                }
            }
            deltas.clear();
            for i in (0..3).filter(|i| who >> i & 1 == 1) {
                compact(&mut real[i], &b, i)?;
            }
            base = Some(b);
        }
        if code < 6 {
            dot += 1;
            let d = real[node].edit(node, dot, code, x);
            let s = shadow[node].edit(node, dot, code, x);
            deltas.push((d, s));
        } else if code == 9 {
            if let Some(b) = &base {
                compact(&mut real[node], b, node)?;
            }
        } else if !deltas.is_empty() {
            let (d, s) = &deltas[x as usize % deltas.len()];
            real[node].merge(d);
            shadow[node].merge(s);
        }
        prop_assert_eq!(real[node].read(), shadow[node].read(), "replica {} after step {}", node, step);
    }
    for i in 0..3 {
        for (d, s) in &deltas {
            real[i].merge(d);
            shadow[i].merge(s);
        }
        prop_assert_eq!(real[i].read(), shadow[i].read(), "replica {} at the end", i);
    }
    prop_assert_eq!(real[0].read(), real[1].read());
    prop_assert_eq!(real[1].read(), real[2].read());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn orset_compaction_changes_nothing_users_read(steps in prop::collection::vec((0usize..3, 0u8..10, any::<u8>()), 0..60),
                                                   stable_at in 0usize..60, who in 0u8..8) {
        run::<OrSet>(&steps, stable_at, who)?;
    }

    #[test]
    fn mvreg_compaction_changes_nothing_users_read(steps in prop::collection::vec((0usize..3, 0u8..10, any::<u8>()), 0..60),
                                                   stable_at in 0usize..60, who in 0u8..8) {
        run::<MvReg>(&steps, stable_at, who)?;
    }
}
