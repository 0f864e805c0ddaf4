//! Epochs (SPEC section 5): `converge.freeze(tbl, key)`, served by the
//! table's authority, starts a row's next epoch. Its op records which ops
//! the row's state includes there: every op of an actor up to the
//! authority's contiguous frontier of that actor (all of them were done
//! there), and the ops of the row it had applied beyond that. Wherever the
//! freeze applies, ops of the row made in an older epoch that it does not
//! include are `quarantined` with reason `frozen`: those applied already
//! are taken out and the row rebuilt (rebuild.rs), those arriving later are
//! kept aside on arrival. Every node then holds the authority's state
//! merged with the ops of the new epoch, which local writes carry (the
//! trigger reads the row's epoch for tables with an authority).
//!
//! A freeze op targets `converge.freeze`, key `{"table": t, "key": k}`,
//! column `''`, carries the new epoch in its envelope, and its delta is
//! the JSON `{"frontier": {actor: counter}, "extras": [op_id]}`.
//! `converge.frozen` keeps every freeze of every row: an op is kept out
//! when any freeze of a later epoch than its own does not include it, so
//! the order in which freezes arrive does not matter.

use crate::direct::Key;
use crate::errors::raise;
use converge_core::parse_op_id;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};

/// The `target_table` of freeze ops.
pub const FREEZE: &str = "converge.freeze";

fn fail(e: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("converge freeze: {e}"))
}

/// What a freeze's state includes (the freeze op's delta).
#[derive(Default)]
pub struct Included {
    frontier: BTreeMap<String, i64>,
    extras: Vec<String>,
}

impl Included {
    /// The delta's JSON, if it is a valid one: exactly `frontier` (actor
    /// names to counters) and `extras` (op_ids).
    pub fn parse(delta: &[u8]) -> Option<Included> {
        let v: Value = serde_json::from_slice(delta).ok()?;
        let m = v.as_object().filter(|m| m.len() == 2)?;
        let frontier = m.get("frontier")?.as_object()?;
        let extras = m.get("extras")?.as_array()?;
        let mut inc = Included::default();
        for (actor, c) in frontier {
            converge_core::validate_actor(actor).ok()?;
            inc.frontier.insert(actor.clone(), c.as_i64().filter(|c| *c >= 0)?);
        }
        for id in extras {
            inc.extras.push(id.as_str().filter(|id| parse_op_id(id).is_some())?.to_string());
        }
        Some(inc)
    }

    fn to_json(&self) -> Value {
        json!({ "frontier": self.frontier, "extras": self.extras })
    }

    fn includes(&self, op_id: &str) -> bool {
        parse_op_id(op_id).is_some_and(|(a, c)| self.frontier.get(a).is_some_and(|f| c as i64 <= *f))
            || self.extras.iter().any(|x| x == op_id)
    }
}

/// One freeze of a row.
pub struct Freeze {
    pub epoch: i64,
    included: Included,
}

/// The freezes of a row (`table` as ops name it, `key` canonical), read as
/// last committed: a freeze that committed after this transaction's
/// snapshot counts (a local writer reads it after the row's lock, which
/// the freeze held). No statement.
pub fn freezes_of(table: &str, key: &Value) -> Vec<Freeze> {
    let mut out = Vec::new();
    crate::direct::reading(c"frozen", |heap| {
        let att = |n: &str| crate::direct::attnum(heap, n);
        let (ep, fr, ex) = (att("epoch"), att("frontier"), att("extras"));
        let keys = [
            Key::eq(1, pg_sys::F_TEXTEQ.into(), table.into_datum().expect("text")),
            Key::eq(2, pg_sys::F_JSONB_EQ.into(), JsonB(key.clone()).into_datum().expect("jsonb")),
        ];
        let newest = &raw mut pg_sys::SnapshotSelfData;
        crate::direct::index_scan(heap, c"frozen_pkey", &keys, newest, pg_sys::ScanDirection::ForwardScanDirection, |slot| {
            let col = |a| crate::direct::column(slot, a);
            let epoch = col(ep).and_then(|d| unsafe { i64::from_datum(d, false) }).unwrap_or(0);
            let frontier = col(fr).and_then(|d| unsafe { JsonB::from_datum(d, false) }).map(|j| j.0).unwrap_or(Value::Null);
            let extras = col(ex).and_then(|d| unsafe { Vec::<String>::from_datum(d, false) }).unwrap_or_default();
            let frontier = serde_json::from_value(frontier).unwrap_or_default();
            out.push(Freeze { epoch, included: Included { frontier, extras } });
            true
        });
    });
    out
}

/// Take the insert lock of a row: a local INSERT holds it shared while it
/// reads the row's epoch, and applying a freeze of the row takes it
/// exclusive. One of 32 per table, by the key's hash (one per key would let
/// a bulk insert fill the lock table; one per table would make every
/// insert into it wait for every freeze applied).
pub fn lock_insert(table: &str, key: &Value, mode: u32) {
    // jsonb's own hash: keys equal as jsonb (1.5 and 1.50) share a bucket.
    let datum = JsonB(key.clone()).into_datum().expect("jsonb");
    let hash = unsafe { pgrx::direct_function_call::<i32>(pg_sys::jsonb_hash, &[Some(datum)]) }.unwrap_or(0);
    crate::local_ops::private_lock_in(c"frozen", &format!("{table}\u{0}{}", hash & 31), mode);
}

/// The newest epoch among a row's freezes, 0 before any.
pub fn newest(freezes: &[Freeze]) -> i64 {
    freezes.iter().map(|f| f.epoch).max().unwrap_or(0)
}

/// A row's epoch: the newest freeze's, 0 before any.
pub fn epoch_of(table: &str, key: &Value) -> i64 {
    newest(&freezes_of(table, key))
}

/// Whether an op of `epoch` is kept out of the row: a freeze of a later
/// epoch did not include it.
pub fn kept_out(freezes: &[Freeze], op_id: &str, epoch: i64) -> bool {
    freezes.iter().any(|f| f.epoch > epoch && !f.included.includes(op_id))
}

/// Whether any row was ever frozen (a probe, once per batch).
pub fn any_frozen() -> bool {
    crate::direct::any_row(c"frozen", c"frozen_pkey", None)
}

/// Whether `op_id` is quarantined here because a freeze kept it out: its
/// counter is used up (the actor's frontier goes past it) and an op that
/// depends on it waits no more.
pub fn frozen_out(op_id: &str) -> bool {
    crate::spi::read_one::<bool>("SELECT converge.frozen_out($1)", &[op_id.into()]).unwrap_or(false)
}

/// Merge freeze ops (op_id, table, key, epoch, delta), through the dedupe
/// gate already: record each, then quarantine the applied ops of its row
/// that it keeps out and rebuild the row. The caller holds the registry's
/// lock (exclusive), so no batch applies an op of the row meanwhile.
pub fn merge_freeze_ops(ops: Vec<(String, String, Value, i64, Vec<u8>)>) {
    for (freeze_id, table, key, epoch, delta) in ops {
        let inc = Included::parse(&delta).unwrap_or_else(|| fail("invalid freeze op"));
        record(&freeze_id, &table, &key, epoch, &inc);
        keep_out_applied(&table, &key);
        // The apply's retry step (or, for ops of clients, the worker's
        // next transaction) applies them.
        to_pending(&waiting_for(&table, &key));
    }
}

/// Ops of the row kept aside as `new_epoch` (made in an epoch this node
/// had not reached) that the row's epoch here now reaches: each op's
/// binary form and where it came from.
pub fn waiting_for(table: &str, key: &Value) -> Vec<(Vec<u8>, String)> {
    let reached = epoch_of(table, key);
    crate::coordination::kept_aside(
        "l.target_table = $1 AND l.target_key = $2",
        "q.outcome = 'quarantined' AND q.reason = 'new_epoch' AND q.epoch <= $3",
        &[table.into(), JsonB(key.clone()).into(), reached.into()],
    )
}

/// Put ops in converge.pending_ops with nothing missing: the next retry
/// applies them (within an apply, its own retry step does).
fn to_pending(ops: &[(Vec<u8>, String)]) {
    if ops.is_empty() {
        return;
    }
    let (bytes, origins): (Vec<Vec<u8>>, Vec<String>) = ops.iter().cloned().unzip();
    crate::security::as_owner(|| {
        Spi::run_with_args(
            "INSERT INTO converge.pending_ops (op_id, op, missing, origin)
             SELECT (o).op_id, o, '{}', u.origin
               FROM unnest($1::bytea[], $2::text[]) u(b, origin), converge.op_decode(u.b) o
             ON CONFLICT DO NOTHING",
            &[bytes.into(), origins.into()],
        )
    })
    .unwrap_or_else(|e| fail(e));
}

fn record(freeze_id: &str, table: &str, key: &Value, epoch: i64, inc: &Included) {
    crate::security::as_owner(|| {
        Spi::run_with_args(
            "INSERT INTO converge.frozen (target_table, target_key, epoch, freeze_id, frontier, extras)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[
                table.into(),
                JsonB(key.clone()).into(),
                epoch.into(),
                freeze_id.into(),
                JsonB(json!(inc.frontier)).into(),
                inc.extras.clone().into(),
            ],
        )
    })
    .unwrap_or_else(|e| fail(e));
}

/// Quarantine (`frozen`) the applied ops of the row that its freezes keep
/// out, and rebuild it. The row is locked first, so a local write of it
/// either committed before (and is read here) or reads the new epoch.
pub fn keep_out_applied(table: &str, key: &Value) {
    crate::security::as_owner(|| crate::rebuild::lock(table, std::slice::from_ref(key)));
    // A local INSERT of the key (its new row is not there to lock) holds
    // the key's insert lock shared: it commits before this reads the log,
    // or reads the new epoch. The worker (and sync) waits 2 s at most (a
    // session idle in a transaction after such an insert must not stall
    // replication).
    let take = || lock_insert(table, key, pg_sys::ExclusiveLock);
    if crate::apply::under_peer_origin() || unsafe { pg_sys::IsBackgroundWorker } {
        crate::actors::waiting_at_most_2s(take);
    } else {
        take();
    }
    let freezes = freezes_of(table, key);
    let applied: Vec<(i64, String, i64)> = crate::security::as_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT l.seq, l.op_id, coalesce(l.epoch, 0) FROM converge.op_log l
                  WHERE l.outcome = 'applied' AND l.target_table = $1 AND l.target_key = $2",
                None,
                &[table.into(), JsonB(key.clone()).into()],
            )?
            .map(|r| Ok((r.get::<i64>(1)?.unwrap_or(0), r.get::<String>(2)?.unwrap_or_default(), r.get::<i64>(3)?.unwrap_or(0))))
            .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
        })
    })
    .unwrap_or_else(|e| fail(e));
    let out: Vec<crate::rebuild::Excluded> = applied
        .into_iter()
        .filter(|(_, id, epoch)| kept_out(&freezes, id, *epoch))
        .map(|(seq, _, _)| crate::rebuild::Excluded { seq, table: table.to_string(), key: key.clone(), reason: "frozen".into() })
        .collect();
    crate::rebuild::exclude(&out, "quarantined");
}

/// What this node's state of a row includes now: every actor's contiguous
/// frontier, and the row's applied ops beyond those. Read once the op
/// counter is held (every earlier local op has committed).
fn included_now(table: &str, key: &Value) -> Included {
    crate::security::as_owner(|| {
        let frontier: BTreeMap<String, i64> =
            crate::spi::read_one::<JsonB>("SELECT coalesce(jsonb_object_agg(actor, contiguous), '{}') FROM converge.actor_frontier", &[])
                .and_then(|j| serde_json::from_value(j.0).ok())
                .unwrap_or_default();
        let extras: Vec<String> = Spi::connect(|c| {
            c.select(
                "SELECT l.op_id FROM converge.op_log l LEFT JOIN converge.actor_frontier f ON f.actor = l.actor
                  WHERE l.outcome = 'applied' AND l.target_table = $1 AND l.target_key = $2
                    AND l.counter > coalesce(f.contiguous, 0) ORDER BY l.op_id",
                None,
                &[table.into(), JsonB(key.clone()).into()],
            )
            .map(|t| t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
        })
        .unwrap_or_else(|e| fail(e));
        Included { frontier, extras }
    })
}

/// The row a freeze or epoch call names: the table as ops name it, the
/// key in canonical form, and the table's authority.
pub(crate) fn row_of(tbl: pg_sys::Oid, key: &Value) -> (String, Value, Option<crate::coordination::Authority>) {
    let name = crate::security::in_fixed_path(|| {
        crate::spi::read_one::<String>(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[tbl.into()],
        )
    })
    .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, "no such table"));
    crate::apply::row_target(tbl, key).unwrap_or_else(|why| match why {
        "not_replicated" => crate::errors::raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {name} is not replicated"),
            "Run converge.replicate on it first.",
        ),
        "invalid_key" => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{key} is not a key of {name}: give exactly its primary key columns"),
        ),
        _ => raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, format!("table {name} cannot be used ({why})")),
    })
}

/// `converge.freeze(tbl, key)`: start the row's next epoch. Returns it.
#[pg_extern(volatile, parallel_unsafe)]
fn freeze_on(tbl: Option<pg_sys::Oid>, key: Option<JsonB>) -> i64 {
    let (Some(tbl), Some(key)) = (tbl, key) else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "the table and the key must not be NULL")
    };
    let (table, key, authority) = row_of(tbl, &key.0);
    let me = crate::node::local_node();
    match authority {
        Some(a) if a.holds(&me, None) => {}
        Some(a) => raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("only node \"{}\", the authority of {table}, freezes its rows{}", a.node,
                    if a.since.is_none() { " (once it has taken it over with converge.set_authority)" } else { "" }),
        ),
        None => crate::errors::raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {table} has no authority to freeze its rows"),
            format!("Run SELECT converge.set_authority('{table}', NULL, '<node>') on every node first."),
        ),
    }
    // Checked again under the op counter (a handover may commit first).
    crate::commit_ops::note_held(&table, &[""]);
    use crate::security::{require_rights, SELECT, UPDATE};
    require_rights(tbl, &[(SELECT, "SELECT"), (UPDATE, "UPDATE")]);
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "converge.freeze runs in READ COMMITTED transactions only (it must see every op committed before it)",
        );
    }
    // Registry and repair changes, and peers' batches, stay out until
    // commit; the row's local writers wait on its lock.
    crate::actors::lock_registry(true);
    if crate::security::as_owner(|| crate::rebuild::lock(&table, std::slice::from_ref(&key))) == 0 {
        raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("table {table} has no row with key {key}"));
    }
    let epoch = epoch_of(&table, &key) + 1;
    let mut inc = Included::default();
    let target = json!({ "table": table, "key": key });
    let op_id = crate::local_ops::log_control_op_with(&me, FREEZE, target, "", epoch, |counter| {
        inc = included_now(&table, &key);
        // This node's own ops before the freeze are all committed and
        // applied here (compaction may have folded some into the base).
        inc.frontier.insert(me.clone(), counter - 1);
        inc.extras.retain(|id| parse_op_id(id).is_none_or(|(a, _)| a != me));
        serde_json::to_vec(&inc.to_json()).unwrap_or_else(|e| fail(e))
    });
    record(&op_id, &table, &key, epoch, &inc);
    // Ops made in this epoch that arrived before it: left for the next
    // apply or the worker's next pass (applying them here, with the op
    // counter held, could wait on rows of sessions waiting for it; and the
    // caller need not have the rights an apply needs).
    to_pending(&waiting_for(&table, &key));
    epoch
}

/// `converge.epoch(tbl, key)`: the row's epoch (0 before any freeze).
/// Volatile: it reads freezes as last committed, which may change within
/// a statement. Parallel unsafe: resolving the table may start a
/// subtransaction.
#[pg_extern(volatile, parallel_unsafe)]
fn epoch_on(tbl: Option<pg_sys::Oid>, key: Option<JsonB>) -> Option<i64> {
    let (tbl, key) = (tbl?, key?);
    let (table, key, _) = row_of(tbl, &key.0);
    Some(epoch_of(&table, &key))
}

/// A node that rejoins from a peer's snapshot copies the peer's freezes
/// (table, key, epoch, freeze_id, frontier, extras) and keeps out what
/// they keep out of its own log.
pub fn copy_freezes(rows: Vec<(String, Value, i64, String, Value, Vec<String>)>) {
    let mut touched: HashSet<(String, String)> = HashSet::new();
    for (table, key, epoch, freeze_id, frontier, extras) in rows {
        let inc = Included { frontier: serde_json::from_value(frontier).unwrap_or_default(), extras };
        record(&freeze_id, &table, &key, epoch, &inc);
        touched.insert((table, key.to_string()));
    }
    for (table, key) in touched {
        let key: Value = serde_json::from_str(&key).unwrap_or_else(|e| fail(e));
        keep_out_applied(&table, &key);
        to_pending(&waiting_for(&table, &key));
    }
}
