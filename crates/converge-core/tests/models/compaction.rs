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

impl Edits for OrMap {
    fn edit(&mut self, node: usize, dot: u64, code: u8, x: u8) -> Self {
        // Three keys; each key's kind is fixed by its name, so local edits
        // never hit the wrong-type error (concurrent kinds are orset's and
        // mvreg's business, tested in the laws).
        let k = ["n", "s", "r"][x as usize % 3];
        let d = Dot::new(NODES[node], dot);
        let e = format!("e{}", (x / 3) % 3);
        let out = match (k, code % 3) {
            (_, 2) => Ok(self.remove_key(k)),
            ("n", 0) => self.incr(k, NODES[node], 1, d),
            ("n", _) => self.decr(k, NODES[node], 2, d),
            ("s", 0) => self.add(k, &e, d),
            ("s", _) => self.remove_element(k, &e, d),
            (_, _) => self.assign(k, Json::from_value(&serde_json::json!(x % 4)), d),
        };
        out.unwrap()
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

/// A row's base: ops fold into it in any order (a removal can be stable
/// before the add it removed), and it is compacted (`base_form`, with the
/// ops not folded yet as `pending`) between folds. Once every op is folded
/// it reads as the plain merge of every op. And at any moment, ops not
/// folded yet may be taken out (a repair, a revocation or a freeze
/// excludes them, and the row is rebuilt from its base and the ops left):
/// the base and the ops left read as the plain merge of the ops kept.
fn run_base<T: Edits>(steps: &[(usize, u8, u8)], order: &[u16], compact_every: u8) -> std::result::Result<(), TestCaseError> {
    run_base_excluding::<T>(steps, order, compact_every, None)
}

fn run_base_excluding<T: Edits>(
    steps: &[(usize, u8, u8)],
    order: &[u16],
    compact_every: u8,
    exclude: Option<(u8, u64)>,
) -> std::result::Result<(), TestCaseError> {
    let mut replicas = vec![T::default(); 3];
    let mut ops: Vec<T> = Vec::new();
    for (i, &(node, code, x)) in steps.iter().enumerate() {
        if code < 6 {
            ops.push(replicas[node].edit(node, i as u64 + 1, code, x));
        } else if !ops.is_empty() {
            let d = ops[x as usize % ops.len()].clone();
            replicas[node].merge(&d);
        }
    }
    let mut all = T::default();
    for d in &ops {
        all.merge(d);
    }
    // Fold in the order given by `order` (a permutation of the ops).
    let mut left: Vec<usize> = (0..ops.len()).collect();
    let mut folded: Vec<usize> = Vec::new();
    // (Within the history's length, so every case takes ops out.)
    let exclude = exclude.map(|(at, mask)| (at % (ops.len() as u8).max(1), mask));
    let mut base = T::default();
    let mut n = 0u8;
    while !left.is_empty() {
        if let Some((at, mask)) = exclude {
            if n == at {
                // The ops left, but those the mask takes out, on the base.
                let kept: Vec<usize> = left.iter().copied().filter(|&i| mask & (1 << (i % 64)) == 0).collect();
                let (mut rebuilt, mut plain) = (base.clone(), T::default());
                for &i in folded.iter().chain(&kept) {
                    plain.merge(&ops[i]);
                }
                for &i in &kept {
                    rebuilt.merge(&ops[i]);
                }
                prop_assert_eq!(rebuilt.read(), plain.read(), "the base and the ops kept after {} folds", n);
                return Ok(());
            }
        }
        let pick = order.get(n as usize).copied().unwrap_or(0) as usize % left.len();
        let next = left.remove(pick);
        folded.push(next);
        base.merge(&ops[next]);
        n = n.wrapping_add(1);
        if compact_every > 0 && n % compact_every == 0 {
            let pending: Vec<T> = left.iter().map(|&i| ops[i].clone()).collect();
            if let Some(c) = base.base_form(&pending) {
                prop_assert!(c.validate().is_ok());
                base = c;
            }
        }
    }
    prop_assert_eq!(base.read(), all.read(), "the base after every fold");
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

    #[test]
    fn ormap_compaction_changes_nothing_users_read(steps in prop::collection::vec((0usize..3, 0u8..10, any::<u8>()), 0..60),
                                                   stable_at in 0usize..60, who in 0u8..8) {
        run::<OrMap>(&steps, stable_at, who)?;
    }

    #[test]
    fn orset_base_compaction_keeps_removals_folded_before_their_add(
        steps in prop::collection::vec((0usize..3, 0u8..10, any::<u8>()), 0..40),
        order in prop::collection::vec(any::<u16>(), 40), every in 0u8..4) {
        run_base::<OrSet>(&steps, &order, every)?;
    }

    #[test]
    fn mvreg_base_compaction_keeps_removals_folded_before_their_add(
        steps in prop::collection::vec((0usize..3, 0u8..10, any::<u8>()), 0..40),
        order in prop::collection::vec(any::<u16>(), 40), every in 0u8..4) {
        run_base::<MvReg>(&steps, &order, every)?;
    }

    #[test]
    fn orset_base_compaction_survives_excluding_ops_not_folded(
        steps in prop::collection::vec((0usize..3, 0u8..10, any::<u8>()), 0..40),
        order in prop::collection::vec(any::<u16>(), 40), every in 1u8..4, at in 0u8..40, mask in any::<u64>()) {
        run_base_excluding::<OrSet>(&steps, &order, every, Some((at, mask)))?;
    }

    #[test]
    fn mvreg_base_compaction_survives_excluding_ops_not_folded(
        steps in prop::collection::vec((0usize..3, 0u8..10, any::<u8>()), 0..40),
        order in prop::collection::vec(any::<u16>(), 40), every in 1u8..4, at in 0u8..40, mask in any::<u64>()) {
        run_base_excluding::<MvReg>(&steps, &order, every, Some((at, mask)))?;
    }

    #[test]
    fn ormap_base_compaction_survives_excluding_ops_not_folded(
        steps in prop::collection::vec((0usize..3, 0u8..10, any::<u8>()), 0..40),
        order in prop::collection::vec(any::<u16>(), 40), every in 1u8..4, at in 0u8..40, mask in any::<u64>()) {
        run_base_excluding::<OrMap>(&steps, &order, every, Some((at, mask)))?;
    }

    #[test]
    fn ormap_base_compaction_keeps_removals_folded_before_their_add(
        steps in prop::collection::vec((0usize..3, 0u8..10, any::<u8>()), 0..40),
        order in prop::collection::vec(any::<u16>(), 40), every in 0u8..4) {
        run_base::<OrMap>(&steps, &order, every)?;
    }
}
