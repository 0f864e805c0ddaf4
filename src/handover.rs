//! Moving an authority to another node (docs/coordination.md, "Moving an
//! authority"). Judged by its actor alone, a move was not atomic: while
//! the nodes' settings differed, an op of the old or the new holder was
//! accepted by some nodes and rejected by others. So a move is two
//! replicated ops, and an op is judged by its actor and its counter
//! (converge-core `Authority::holds`):
//! - the END, made by the holder A when `set_authority` names another node
//!   there: A's term ends at the END's counter X, and every node that
//!   applies it switches to the new node, which does not hold it yet;
//! - the TAKE, made by the new node B when `set_authority` runs there once
//!   the END has arrived: B holds it above the TAKE's counter Y.
//!
//! Both carry the holders' terms so far, so a node learns them from
//! whichever comes first. converge-core's `authority::Handover` says why
//! every node then judges each op alike; its tests/handover.rs checks it
//! against a model.

use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
pub use converge_core::authority::Handover;
use converge_core::authority::{Authority, Term};

/// The target of handover ops; key `{"table": t, "column": c}` (`""`: the
/// table's authority), column `""`, delta a [`Handover`] as JSON.
pub const HANDOVER: &str = "converge.handover";

/// Apply handover ops that passed the gate: (actor, counter, table,
/// column, delta). Idempotent, and in any order (`Authority::hand_over`).
pub fn merge_handover_ops(ops: Vec<(String, i64, String, String, Vec<u8>)>) {
    for (actor, counter, table, column, delta) in ops {
        let Some((h, taken)) = Handover::read(&delta, &actor, counter) else { continue };
        hand_over(&table, &column, &h, taken);
    }
}

/// Take a peer's handovers as state (a rejoin from its snapshot): per
/// (table, column), its holder, since and earlier terms as JSON.
pub fn copy_handovers(rows: Vec<(String, String, String, Option<i64>, String)>) {
    for (table, column, node, since, earlier) in rows {
        let Ok(earlier) = serde_json::from_str::<Vec<Term>>(&earlier) else { continue };
        let Some(last) = earlier.last() else { continue };
        let h = Handover { from: last.node.clone(), to: node, until: last.until, earlier };
        hand_over(&table, &column, &h, since);
    }
}

/// Apply handover `h` (`taken`: its TAKE's counter; None: its END) to
/// this node's setting of (table, column), if it has one.
fn hand_over(table: &str, column: &str, h: &Handover, taken: Option<i64>) {
    let Some(rel) = crate::security::as_owner(|| crate::spi::read_one::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[table.into()]))
    else {
        return;
    };
    let Some(mut a) = locked(rel, column) else { return };
    // (Checked again under the row's lock: a set_authority may have
    // committed since the op was classified.)
    if !a.follows(h) || !a.hand_over(h, taken) {
        return;
    }
    let terms = serde_json::to_string(&a.earlier).expect("terms serialize");
    crate::security::as_owner(|| {
        Spi::run_with_args(
            "UPDATE converge.authority SET node = $3, since = $4, earlier = $5::jsonb WHERE table_name = $1 AND column_name = $2",
            &[rel.into(), column.into(), a.node.as_str().into(), a.since.into(), terms.into()],
        )
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
    // Sessions cache the table's authorities (the row trigger, the apply;
    // this one's at once: the rest of its batch is judged after this).
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(rel) };
    crate::apply::forget_resolved();
}

/// What `set_authority` does about the node that holds the setting now.
pub(crate) enum Plan {
    /// Record the setting (a first one, the same node, or replacing a
    /// holder that is no peer of this node).
    Store,
    /// This node holds it (above `since`, after the terms `earlier`):
    /// hand it over to the node named.
    End { since: i64, earlier: Vec<Term> },
    /// It was handed over to this node (after the holders' terms
    /// `earlier`): take it.
    Take { earlier: Vec<Term> },
    /// Cannot be done here (the setting names `holder`): raised once the
    /// arguments are validated.
    Refuse { holder: String, message: String, hint: String },
}

/// How `set_authority(tbl, col, node)` goes on this node, given the
/// setting here.
pub(crate) fn plan(tbl: pg_sys::Oid, name: &str, col: Option<&str>, node: &str) -> Plan {
    let Some(me) = crate::node::local_node_if_set() else { return Plan::Store };
    let what = match col {
        Some(c) => format!("column \"{c}\" of {name}"),
        None => format!("table {name}"),
    };
    let Some((holder, since, earlier)) = current(tbl, col) else { return Plan::Store };
    match (holder == node, since) {
        (true, Some(_)) => Plan::Store,
        (true, None) if node == me && !earlier.is_empty() => Plan::Take { earlier },
        (true, None) => Plan::Store,
        (false, Some(_)) if holder == me && !is_peer(node) => Plan::Refuse {
            holder: holder.clone(),
            message: format!("node \"{node}\" is not a peer of this node: it could not take the authority of {what} over"),
            hint: "Hand it over to a node in converge.peers (its name is its converge.node()).".into(),
        },
        (false, Some(since)) if holder == me => Plan::End { since, earlier },
        (false, None) if holder == me => Plan::Refuse {
            holder: holder.clone(),
            message: format!("the authority of {what} was handed over to this node, which has not taken it"),
            hint: format!("Take it with converge.set_authority naming node \"{me}\" first."),
        },
        (false, _) if !is_peer(&holder) => Plan::Store,
        (false, _) if node == me => Plan::Refuse {
            holder: holder.clone(),
            message: format!("node \"{holder}\" has not handed the authority of {what} over to this node"),
            hint: format!(
                "Run converge.set_authority naming node \"{me}\" on node \"{holder}\" first; its handover reaches every node \
                 through replication, and this node takes the authority when you run it here again."
            ),
        },
        (false, _) => Plan::Refuse {
            holder: holder.clone(),
            message: format!("the authority of {what} is node \"{holder}\": a change of it starts there"),
            hint: format!(
                "Run it on node \"{holder}\"; its handover reaches every node through replication. If node \"{holder}\" is gone \
                 for good, remove it with converge.remove_peer first."
            ),
        },
    }
}

/// A setting: its node, since, and the earlier holders' terms.
type Current = (String, Option<i64>, Vec<Term>);

/// The setting of (table, column) here.
fn current(tbl: pg_sys::Oid, col: Option<&str>) -> Option<Current> {
    locked(tbl, col.unwrap_or_default()).map(|a| (a.node, a.since, a.earlier))
}

/// The holder part of this node's setting of (table `tbl`, `column`: `""`
/// the table's), its row locked to the end of the transaction (a
/// set_authority or a handover applied meanwhile waits).
fn locked(tbl: pg_sys::Oid, column: &str) -> Option<Authority> {
    crate::security::as_owner(|| {
        Spi::connect_mut(|c| {
            let t = c.update(
                "SELECT a.node, a.since, a.earlier::text FROM converge.authority a
                  WHERE a.table_name = $1::oid::regclass AND a.column_name = $2 FOR UPDATE",
                Some(1),
                &[tbl.into(), column.into()],
            )?;
            if t.is_empty() {
                return Ok(None);
            }
            let r = t.first();
            let earlier = r.get::<String>(3)?.and_then(|e| serde_json::from_str(&e).ok()).unwrap_or_default();
            let since = r.get::<i64>(2)?;
            Ok(r.get::<String>(1)?.map(|node| Authority { node, default: None, removes_only: false, since, earlier }))
        })
    })
    .unwrap_or_else(|e: pgrx::spi::SpiError| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))
}

fn is_peer(node: &str) -> bool {
    crate::security::as_owner(|| {
        crate::spi::read_one::<bool>("SELECT EXISTS (SELECT 1 FROM converge.peer WHERE name = $1)", &[node.into()])
    }) == Some(true)
}

/// End this node's term on (table `name`, `col`), which it has held
/// above `since` after the terms `earlier`, and hand it over to `to`. The
/// table is locked against writes first: a transaction of this node
/// writing the column commits before the END, or waits and sees the
/// change (and a write that missed it is checked again when it takes its
/// counters: `commit_ops::note_held`).
pub(crate) fn end(tbl: pg_sys::Oid, name: &str, col: Option<&str>, to: &str, since: i64, earlier: Vec<Term>) {
    Spi::run(&format!("LOCK TABLE {name} IN SHARE ROW EXCLUSIVE MODE"))
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
    let me = crate::node::local_node();
    let (table, h, _) = log(&me, tbl, col, |until| {
        let mut terms = earlier;
        terms.push(Term { node: me.clone(), after: since, until });
        Handover { from: me.clone(), to: to.into(), until, earlier: terms }
    });
    hand_over(&table, col.unwrap_or_default(), &h, None);
}

/// Take over (table `name`, `col`), handed over after the terms `earlier`.
pub(crate) fn take(tbl: pg_sys::Oid, col: Option<&str>, earlier: Vec<Term>) {
    let me = crate::node::local_node();
    let last = earlier.last().expect("handed over").clone();
    let (table, h, taken) = log(&me, tbl, col, |_| Handover { from: last.node, to: me.clone(), until: last.until, earlier });
    hand_over(&table, col.unwrap_or_default(), &h, Some(taken));
}

/// Log this node's handover op, made from its counter: the table as ops
/// name it, the handover, and the op's counter.
fn log(me: &str, tbl: pg_sys::Oid, col: Option<&str>, make: impl FnOnce(i64) -> Handover) -> (String, Handover, i64) {
    let table = crate::security::in_fixed_path(|| {
        crate::spi::read_one::<String>(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = $1",
            &[tbl.into()],
        )
    })
    .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, "no such table"));
    let key = serde_json::json!({ "table": table, "column": col.unwrap_or_default() });
    let mut made = None;
    let mut taken = 0;
    crate::local_ops::log_control_op_with(me, HANDOVER, key, "", 0, |counter| {
        let h = make(counter);
        let bytes = serde_json::to_vec(&h).expect("a handover serializes");
        (made, taken) = (Some(h), counter);
        bytes
    });
    (table, made.expect("made"), taken)
}
