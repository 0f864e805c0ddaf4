//! Giving refused ops up (docs/operations-log.md, "Offline clients"): a
//! counter a server refused stays a gap in this client's ops on every
//! node, which holds the client's later ops in the servers' logs (their
//! compaction folds an actor's ops only up to its first gap). After each
//! push, the client sends a void for each such counter (an op under the
//! refused op's id, target `converge.void`, that changes nothing) to the
//! server it pushed to, which refused it. An op a server applied beats its
//! void, wherever the two meet.
//!
//! A server takes a void only for an op it refused itself. A void that
//! could not be sent where the op was refused (the connection dropped
//! after the push) and that a later push brings to another node is
//! declined there (`nothing_to_void`): it stays to send, to the nodes that
//! have not declined it, until one takes it.

use crate::{send_ops, Client, Op, Result};
use std::collections::BTreeSet;

/// The target of a void.
pub const VOID: &str = "converge.void";

impl Client {
    /// The refused counters whose void is not settled yet: no server took
    /// it, or refused it other than as `nothing_to_void`.
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

    /// This client's ops that the server refused after they left the
    /// outbox: it held one waiting for an op before it, and a retry then
    /// refused it (an authority, a schema version or a freeze set
    /// meanwhile; the bound on clocks). The ops the server holds behind
    /// it would wait for it for ever. Each is noted as refused (in
    /// `rejected()`) and given up with a void, which lets them go on.
    pub(crate) fn learn_refusals(&mut self, db: &mut postgres::Client) -> Result<()> {
        let actor = self.saved.actor.clone();
        let rows = db.query(
            "SELECT q.counter, converge.op_encode(ROW(q.op_id, q.actor, q.target_table, q.target_key, q.target_column,
                    q.schema_version, q.epoch, q.deps, q.delta, q.signature)::converge.op), coalesce(q.reason, q.outcome)
               FROM converge.quarantine q
              -- (op_id's actor: the view takes it into its scan, by an index)
              WHERE converge.op_id_actor(q.op_id) = $1 AND q.actor = $1 AND q.origin = $1 AND q.counter < $2
                -- (new_schema and new_epoch apply by themselves; a frozen op's
                -- counter is used up everywhere, and settle lists it; an op
                -- refused with the one before it was sent again after others)
                AND NOT (q.outcome = 'quarantined' AND q.reason IN ('new_schema', 'new_epoch', 'frozen'))
                AND coalesce(q.reason, '') NOT LIKE 'dependency_rejected%'
              ORDER BY q.counter",
            &[&actor, &(self.saved.next_counter as i64)],
        )?;
        let mut learned = false;
        let mut node = None;
        for r in rows {
            let counter = r.get::<_, i64>(0) as u64;
            if self.saved.dead.contains_key(&counter) {
                // Refused elsewhere first, and declined here then (held
                // here, not refused yet): this node takes the void now.
                if let Some(names) = self.saved.void_declined.get_mut(&counter) {
                    let here = match &node {
                        Some(n) => n,
                        None => node.insert(node_name(db)?),
                    };
                    learned |= names.remove(here.as_str());
                }
                continue;
            }
            if self.outbox.iter().any(|o| o.counter() == counter) {
                continue;
            }
            let op = Op::decode(r.get::<_, &[u8]>(1))?;
            let before = self.live(counter.saturating_sub(1));
            self.saved.dead.insert(counter, before);
            self.saved.rejected.push((op, r.get::<_, String>(2)));
            self.void_later(counter);
            learned = true;
        }
        if learned {
            self.save()?;
        }
        Ok(())
    }

    /// Send the voids still to send that this node has not declined, and
    /// forget each one it answered: applied or a duplicate (the counter is
    /// used up), or refused (this server cannot take it: an older release,
    /// the rights it needs; it is not a refusal of an edit, so `rejected()`
    /// does not list it). One it declined (it refused no op under that
    /// counter) stays, for the node that did.
    pub(crate) fn send_voids(&mut self, db: &mut postgres::Client) -> Result<()> {
        let pending = self.voids_pending();
        if pending.is_empty() {
            if self.saved.voids.is_none() {
                self.saved.voids = Some(pending);
                self.save()?;
            }
            return Ok(());
        }
        let node = node_name(db)?;
        let declined_here = |c: &u64| self.saved.void_declined.get(c).is_some_and(|n| n.contains(&node));
        let todo: Vec<u64> = pending.iter().copied().filter(|c| !declined_here(c)).collect();
        if todo.is_empty() {
            return Ok(());
        }
        let actor = self.saved.actor.clone();
        let empty = serde_json::json!({});
        let ops: Vec<Op> = todo.iter().map(|c| self.outgoing(Op::new(&actor, *c, VOID, &empty, "", vec![], vec![]))).collect();
        let mut left = pending;
        for o in send_ops(db, &ops, &actor)? {
            let counter = self.own_counter(&o.op_id);
            if counter == 0 {
                continue;
            }
            if o.outcome == "rejected" && o.reason.as_deref().is_some_and(|r| r.starts_with("nothing_to_void")) {
                self.saved.void_declined.entry(counter).or_default().insert(node.clone());
            } else {
                left.remove(&counter);
                self.saved.void_declined.remove(&counter);
            }
        }
        self.saved.voids = Some(left);
        self.save()
    }
}

/// The name of the node `db` is (converge.node_identity; "" before set_node).
fn node_name(db: &mut postgres::Client) -> Result<String> {
    Ok(db.query_opt("SELECT name FROM converge.node_identity", &[])?.map(|r| r.get(0)).unwrap_or_default())
}
