//! A client's chain of ops, and pushing it (SPEC section 3): each op
//! depends on the client's last op that no server refused. When a server
//! refuses one, the ops made after it would wait for it there for ever:
//! they are chained again after the op before it, under the same op_ids,
//! and sent again (docs/operations-log.md, "Offline clients").

use crate::{send_ops, Client, CrashPoint, Op, Outcome, Result};
use std::collections::{BTreeSet, HashMap};

impl Client {
    /// The deps of this client's next op: its last op no server refused.
    pub(crate) fn chain_deps(&self) -> Vec<String> {
        match self.live(self.saved.next_counter - 1) {
            0 => vec![],
            h => vec![converge_core::format_op_id(&self.saved.actor, h)],
        }
    }

    /// Push the outbox (after `arrange`, which may reorder, drop or repeat
    /// ops, as a flaky network would) with one `converge.apply_batch`. When
    /// the server refused an op, the ops made after it wait for it there
    /// for ever (or are refused with it, `dependency_rejected`): they are
    /// sent again, under the same op_ids, after the op before the refused
    /// one, by further batches of the same call. Then each refused counter
    /// is given up with a void (voids.rs). Returns the outcomes of every
    /// batch of edits, in order.
    pub fn push_with(&mut self, db: &mut postgres::Client, arrange: impl FnOnce(Vec<Op>) -> Vec<Op>) -> Result<Vec<Outcome>> {
        // Ops the server refused after they left the outbox, found in its
        // log (best effort: the push goes on without them).
        let _ = self.learn_refusals(db);
        // An op refused already (the outbox was not rewritten after a
        // crash) is not sent again: its refusal stands.
        let before = self.outbox.len();
        self.outbox.retain(|o| !self.saved.dead.contains_key(&o.counter()));
        if self.outbox.len() < before {
            self.rewrite_outbox()?;
        }
        let mut all = Vec::new();
        let mut arrange = Some(arrange);
        // Each batch after the first follows a refusal, which settles an
        // op for good: this bounds them.
        for _ in 0..=self.outbox.len() {
            let outbox = self.outbox.clone();
            let ops = match arrange.take() {
                Some(f) => f(outbox),
                None => outbox,
            };
            let ops: Vec<Op> = ops.into_iter().map(|o| self.outgoing(o)).collect();
            if ops.is_empty() {
                break;
            }
            let outcomes = send_ops(db, &ops, &self.saved.actor)?;
            if self.crash == Some(CrashPoint::AfterPushBeforeAck) {
                return Err(self.crashed(CrashPoint::AfterPushBeforeAck));
            }
            let again = self.settle(&outcomes)?;
            all.extend(outcomes);
            if !again {
                break;
            }
        }
        // The counters refused are given up where they were refused (their
        // outcomes are not the edits', and are not returned). The edits are
        // settled and saved: a void that could not be sent now goes with
        // the next push.
        let _ = self.send_voids(db);
        Ok(all)
    }

    /// Take a batch's outcomes, walking the outbox in chain order. An op
    /// leaves it once the server has it (applied; or a duplicate, buffered
    /// or waiting for an epoch or schema version, with the op before it
    /// gone too: a copy that waits there is released when its dep arrives).
    /// A refused op leaves it for `rejected`. An op behind a refused one,
    /// unless applied, is chained again after the last op that was not
    /// refused. Saved before the outbox is rewritten (after a crash
    /// between, the refused op is dropped before sending, and the ops
    /// behind it are held, then chained again). Returns whether any op
    /// was chained again.
    fn settle(&mut self, outcomes: &[Outcome]) -> Result<bool> {
        // An op that shows twice (buffered, then applied or refused by the
        // retry in the same call; sent twice): applied over refused over
        // held (a refusal a held copy met must not be missed).
        let rank = |o: &Outcome| match (o.outcome.as_str(), o.reason.as_deref()) {
            ("applied", _) => 3,
            ("duplicate" | "buffered", _) | ("quarantined", Some("new_epoch" | "new_schema")) => 1,
            _ => 2,
        };
        let mut of: HashMap<&str, &Outcome> = HashMap::new();
        for o in outcomes {
            if of.get(o.op_id.as_str()).is_none_or(|x| rank(o) >= rank(x)) {
                of.insert(&o.op_id, o);
            }
        }
        let mut order = std::mem::take(&mut self.outbox);
        order.sort_by_key(Op::counter);
        let mut head = self.live(order.first().and_then(|o| o.deps.first()).map_or(0, |d| self.own_counter(d)));
        let mut left: BTreeSet<String> = order.iter().map(|o| o.op_id.clone()).collect();
        let mut again = false;
        for mut op in order {
            let counter = op.counter();
            let behind = op.deps.iter().any(|d| self.saved.dead.contains_key(&self.own_counter(d)));
            let (outcome, reason) = of.get(op.op_id.as_str()).map_or(("", None), |o| (o.outcome.as_str(), o.reason.as_deref()));
            let kept = match (outcome, reason) {
                ("applied", _) => false,
                ("rejected", Some(r)) if r.starts_with("dependency_rejected") => {
                    self.rechain(&mut op, head);
                    again = true;
                    true
                }
                ("rejected", _) | ("quarantined", Some("old_schema")) => {
                    let before = op.deps.first().map_or(0, |d| self.own_counter(d));
                    if self.saved.dead.insert(counter, self.live(before)).is_none() {
                        self.saved.rejected.push((op.clone(), reason.unwrap_or_default().to_string()));
                        self.void_later(counter);
                    }
                    left.remove(&op.op_id);
                    continue;
                }
                ("quarantined", Some("new_epoch" | "new_schema")) | ("duplicate" | "buffered" | "", _) if behind => {
                    self.rechain(&mut op, head);
                    again = true;
                    true
                }
                ("quarantined", Some("new_epoch" | "new_schema")) | ("duplicate" | "buffered", _) => {
                    let kept = op.deps.iter().any(|d| left.contains(d));
                    // (Not a duplicate: mostly an op applied there, sent
                    // again after a lost answer; counters' own totals are
                    // kept at a rejoin anyway, snapshot.rs.)
                    if !kept && outcome != "duplicate" && !self.saved.held.iter().any(|h| h.op_id == op.op_id) {
                        self.saved.held.push(op.clone());
                    }
                    kept
                }
                ("", _) => true,
                // Frozen out, superseded: the counter is used up everywhere.
                _ => {
                    self.saved.rejected.push((op.clone(), reason.unwrap_or_default().to_string()));
                    false
                }
            };
            head = counter;
            if kept {
                self.outbox.push(op);
            } else {
                left.remove(&op.op_id);
            }
        }
        self.save()?;
        self.rewrite_outbox()?;
        Ok(again)
    }

    /// Chain `op` again after op `head` (0: none); it is signed again when sent.
    fn rechain(&self, op: &mut Op, head: u64) {
        op.deps = if head == 0 { vec![] } else { vec![converge_core::format_op_id(&self.saved.actor, head)] };
        op.signature = None;
    }

    /// The counter of `op_id` if it is this client's (0 otherwise).
    pub(crate) fn own_counter(&self, op_id: &str) -> u64 {
        match converge_core::parse_op_id(op_id) {
            Some((a, c)) if a == self.saved.actor => c,
            _ => 0,
        }
    }

    /// `counter`, or the op before it if a server refused it, and so on.
    pub(crate) fn live(&self, mut counter: u64) -> u64 {
        while let Some(before) = self.saved.dead.get(&counter) {
            counter = *before;
        }
        counter
    }

}
