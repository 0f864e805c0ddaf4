//! Giving refused ops up (docs/operations-log.md, "Offline clients"): a
//! counter a server refused stays a gap in this client's ops on every
//! node, which holds the client's later ops in the servers' logs (their
//! compaction folds an actor's ops only up to its first gap). After each
//! push, the client sends a void for each such counter (an op under the
//! refused op's id, target `converge.void`, that changes nothing) to the
//! server it pushed to, which refused it. An op a server applied beats its
//! void, wherever the two meet.

use crate::{send_ops, Client, Op, Result};
use std::collections::BTreeSet;

/// The target of a void.
pub const VOID: &str = "converge.void";

impl Client {
    /// The refused counters whose void no server has answered yet.
    pub fn voids_pending(&self) -> BTreeSet<u64> {
        match &self.saved.voids {
            Some(v) => v.clone(),
            // Saved by a release before voids: every refused counter.
            None => self.saved.dead.keys().copied().collect(),
        }
    }

    /// Note that `counter` was refused: its void goes with the next push.
    pub(crate) fn void_later(&mut self, counter: u64) {
        let mut v = self.voids_pending();
        v.insert(counter);
        self.saved.voids = Some(v);
    }

    /// Send the voids still to send, and forget each one the server
    /// answered: applied or a duplicate (the counter is used up), or
    /// refused (this server cannot take it: an older release, or a counter
    /// it did not refuse; it is not a refusal of an edit, so `rejected()`
    /// does not list it).
    pub(crate) fn send_voids(&mut self, db: &mut postgres::Client) -> Result<()> {
        let todo = self.voids_pending();
        if todo.is_empty() {
            if self.saved.voids.is_none() {
                self.saved.voids = Some(todo);
                self.save()?;
            }
            return Ok(());
        }
        let actor = self.saved.actor.clone();
        let empty = serde_json::json!({});
        let ops: Vec<Op> = todo.iter().map(|c| self.outgoing(Op::new(&actor, *c, VOID, &empty, "", vec![], vec![]))).collect();
        let outcomes = send_ops(db, &ops, &actor)?;
        let answered: BTreeSet<u64> = outcomes
            .iter()
            .filter_map(|o| converge_core::parse_op_id(&o.op_id).filter(|(a, _)| *a == actor).map(|(_, c)| c))
            .collect();
        self.saved.voids = Some(todo.difference(&answered).copied().collect());
        self.save()
    }
}
