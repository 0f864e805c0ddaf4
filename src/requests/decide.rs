//! The authority's side of requests: deciding each pending request once,
//! in arrival order, and writing the decision.
//!
//! Each request is decided in a subtransaction of its own, so that one
//! request never holds up the others: an error that is the request's (its
//! data, or the decide function refusing by raising: classes 22, 23, P0)
//! refuses it; any other error (a privilege or setting the decide function
//! lacks, a lock wait that timed out, a deadlock) leaves it pending with a
//! WARNING, to be tried again by the worker's next pass; only errors of the
//! whole session (out of memory, a cancel, a shutdown) are raised.

use super::*;
use crate::rows::ident;
use crate::security::as_table_owner;
use serde_json::Map;

/// `converge.decide_pending()`: decide, in arrival order, the pending
/// requests this node is the authority of. Not under a peer's origin
/// (the decisions would never ship): then it decides nothing.
#[pg_extern(volatile, parallel_unsafe)]
pub fn decide_pending() -> i64 {
    if crate::apply::under_peer_origin() {
        return 0;
    }
    let Some(me) = crate::node::local_node_if_set() else { return 0 };
    // Only the requests this node decides (the others wait for their
    // authority's decision to arrive), read without locking them.
    let ids: Vec<String> = as_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT q.request_id FROM converge.requests q
                  WHERE q.status = 'pending' AND q.requested_by IS NOT NULL
                    AND (SELECT a.node FROM converge.authority a
                          WHERE a.table_name = to_regclass(q.target_table) AND a.column_name IN (q.target_column, '')
                          ORDER BY a.column_name DESC LIMIT 1) = $1
                  ORDER BY q.arrival",
                None,
                &[me.as_str().into()],
            )
            .map(|t| t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
        })
    })
    .unwrap_or_else(|e: pgrx::spi::SpiError| fail(e));
    ids.iter().filter(|id| decide_one(&me, id)).count() as i64
}

/// A pending request, locked.
struct Pending {
    id: String,
    target: Target,
    value: Value,
    idempotency_key: Option<String>,
    arrival: i64,
}

/// Lock request `id` if it is pending; a request another session holds
/// (deciding it, or the outcome arriving) is skipped, not waited for.
fn lock_pending(id: &str) -> Option<Pending> {
    as_owner(|| {
        Spi::connect_mut(|c| {
            let t = c.update(
                "SELECT target_table, target_key, target_column, value, idempotency_key, arrival FROM converge.requests
                  WHERE request_id = $1 AND status = 'pending' AND requested_by IS NOT NULL FOR UPDATE SKIP LOCKED",
                Some(1),
                &[id.into()],
            )?;
            if t.is_empty() {
                return Ok(None);
            }
            let r = t.first();
            Ok(Some(Pending {
                id: id.to_string(),
                target: Target {
                    table: r.get::<String>(1)?.unwrap_or_default(),
                    key: r.get::<JsonB>(2)?.map(|j| j.0).unwrap_or(Value::Null),
                    column: r.get::<String>(3)?.unwrap_or_default(),
                },
                value: r.get::<JsonB>(4)?.map(|j| j.0).unwrap_or(Value::Null),
                idempotency_key: r.get::<String>(5)?,
                arrival: r.get::<i64>(6)?.unwrap_or(0),
            }))
        })
    })
    .unwrap_or_else(|e: pgrx::spi::SpiError| fail(e))
}

/// What an earlier request with the same idempotency key says.
enum Earlier {
    None,
    /// One arrived earlier and is still pending: it is decided first.
    Waits,
    /// (request_id, same row and column, status, decision, reason)
    Decided(String, bool, String, Option<Value>, Option<String>),
}

fn earlier(p: &Pending, k: &str) -> Earlier {
    as_owner(|| {
        Spi::connect_mut(|c| {
            let t = c.update(
                "SELECT request_id, status, decision, reason,
                        target_table = $3 AND target_key = $4 AND target_column = $5
                   FROM converge.requests
                  WHERE idempotency_key = $1 AND request_id <> $2 AND requested_by IS NOT NULL
                    AND (status <> 'pending' OR arrival < $6)
                  ORDER BY status = 'pending' DESC, decided_at, decision_id LIMIT 1",
                Some(1),
                &[
                    k.into(),
                    p.id.as_str().into(),
                    p.target.table.as_str().into(),
                    JsonB(p.target.key.clone()).into(),
                    p.target.column.as_str().into(),
                    p.arrival.into(),
                ],
            )?;
            if t.is_empty() {
                return Ok(Earlier::None);
            }
            let r = t.first();
            let status = r.get::<String>(2)?.unwrap_or_default();
            if status == "pending" {
                return Ok(Earlier::Waits);
            }
            Ok(Earlier::Decided(
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<bool>(5)?.unwrap_or(false),
                status,
                r.get::<JsonB>(3)?.map(|j| j.0),
                r.get::<String>(4)?,
            ))
        })
    })
    .unwrap_or_else(|e: pgrx::spi::SpiError| fail(e))
}

/// How a column's requests are decided.
#[derive(PartialEq)]
pub(super) enum Decide {
    /// No decide function: the value is written as proposed.
    AsProposed,
    /// Through this function (`schema.name`).
    By(String),
    /// The decide function set for it no longer exists: requests wait.
    Missing,
}

/// The decide function of a column (its own authority's, else the table's).
pub(super) fn decide_function(rel: pg_sys::Oid, col: &str) -> Decide {
    let found = as_owner(|| {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT a.decide IS NOT NULL,
                        (SELECT format('%I.%I', n.nspname, p.proname) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                          WHERE p.oid = a.decide)
                   FROM converge.authority a WHERE a.table_name = $1::oid::regclass AND a.column_name IN ($2, '')
                  ORDER BY a.column_name DESC LIMIT 1",
                Some(1),
                &[rel.into(), col.into()],
            )?;
            if t.is_empty() {
                return Ok((false, None));
            }
            let r = t.first();
            Ok((r.get::<bool>(1)?.unwrap_or(false), r.get::<String>(2)?))
        })
    })
    .unwrap_or_else(|e: pgrx::spi::SpiError| fail(e));
    match found {
        (false, _) => Decide::AsProposed,
        (true, Some(f)) => Decide::By(f),
        (true, None) => Decide::Missing,
    }
}

/// What one decision step ended with.
enum Step {
    /// The row has not arrived here yet: the request waits.
    NoRow,
    /// The columns written (None: refused by the decide function).
    Decided(Option<Value>),
}

/// Decide request `id` once, if this node decides it and it is pending.
/// Returns whether it was decided. It stays pending while its table is not
/// replicated here, its row does not exist yet, an earlier request with
/// its idempotency key is pending, or deciding it failed for a reason that
/// is not the request's.
pub(super) fn decide_one(me: &str, id: &str) -> bool {
    let Some(p) = lock_pending(id) else { return false };
    let Ok(l) = crate::apply::layout_of(&p.target.table) else { return false };
    if l.decider(&p.target.column).as_deref() != Some(me) {
        return false;
    }
    if let Some(k) = p.idempotency_key.clone() {
        match earlier(&p, &k) {
            Earlier::Waits => return false,
            Earlier::Decided(first, same, status, decision, reason) => {
                let (status, decision, reason) = if same {
                    (status, decision, reason)
                } else {
                    ("refused".into(), None, Some(format!("idempotency key \"{k}\" was used by request {first} for another change")))
                };
                record_outcome(me, &p, Decided { status, decision, reason, decided_at: now_micros() });
                return true;
            }
            Earlier::None => {}
        }
    }
    let how = decide_function(l.rel, &p.target.column);
    if how == Decide::Missing {
        pgrx::warning!("converge: request {id} stays pending: the decide function of {}.{} no longer exists", l.name, p.target.column);
        return false;
    }
    let outcome = crate::apply::subtransaction(|| {
        // An xid for the subtransaction: pgrx runs SPI read-only (the
        // statement's snapshot, no writes) until the current one has one.
        unsafe { pg_sys::GetCurrentTransactionId() };
        let Some(old) = lock_row(&l, &p.target.key) else { return Step::NoRow };
        let decision = match &how {
            Decide::By(f) => call_decide(&l, f, &p.id),
            _ => Some(json!({ p.target.column.as_str(): p.value })),
        };
        if let Some(d) = &decision {
            write_decision(me, &l, &p.target.key, &old, d);
        }
        Step::Decided(decision)
    });
    let refused = |reason: String| Decided { status: "refused".into(), decision: None, reason: Some(reason), decided_at: now_micros() };
    let d = match outcome {
        Ok(Step::NoRow) => return false,
        Ok(Step::Decided(Some(d))) => Decided { status: "granted".into(), decision: Some(d), reason: None, decided_at: now_micros() },
        Ok(Step::Decided(None)) => refused("refused by the decide function".into()),
        Err(c) if ["53", "57", "58"].iter().any(|class| c.sqlstate.starts_with(class)) => raise(c.code, c.message),
        Err(c) if ["22", "23", "P0"].iter().any(|class| c.sqlstate.starts_with(class)) => refused(c.message),
        Err(c) => {
            pgrx::warning!("converge: request {id} stays pending: {} (SQLSTATE {})", c.message, c.sqlstate);
            return false;
        }
    };
    record_outcome(me, &p, d);
    true
}

/// Log the decision op and record the outcome here.
fn record_outcome(me: &str, p: &Pending, d: Decided) {
    let key = json!({ "request_id": p.id, "table": p.target.table, "key": p.target.key, "column": p.target.column });
    let decision_id = crate::local_ops::log_control_op(me, DECISION, key, "", d.to_bytes());
    store_decision(&p.id, &p.target, &d, &decision_id);
}

/// Call `decide(request)` as the table's owner; NULL refuses.
fn call_decide(l: &crate::apply::Layout, f: &str, id: &str) -> Option<Value> {
    let row = as_owner(|| fresh_text("SELECT q::text FROM converge.requests q WHERE q.request_id = $1", &[id.into()]))
        .unwrap_or_else(|| fail("the request is gone"));
    as_table_owner(l.rel, || {
        Spi::connect_mut(|c| c.update(&format!("SELECT {f}($1::converge.requests)"), Some(1), &[row.into()])?.first().get_one::<JsonB>())
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION, e.to_string()))
    .map(|j| j.0)
}

/// Lock the request's row as the table's owner; its values (as
/// `row_to_json` renders them), None if there is no such row yet.
fn lock_row(l: &crate::apply::Layout, key: &Value) -> Option<Map<String, Value>> {
    let sql = format!(
        "SELECT pg_catalog.row_to_json(t.*)::text FROM {0} t, pg_catalog.jsonb_populate_record(NULL::{0}, $1) v WHERE {1} FOR UPDATE OF t",
        l.name,
        keys_match(&l.keys)
    );
    let text = as_table_owner(l.rel, || fresh_text(&sql, &[JsonB(key.clone()).into()]))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// A decision the table cannot take: refuses the request (22023).
fn bad_decision(msg: String) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, msg)
}

/// Write a decision ({column: value} of plain columns) on the row as the
/// table's owner, and record it as this node's row op.
fn write_decision(me: &str, l: &crate::apply::Layout, key: &Value, old: &Map<String, Value>, decision: &Value) {
    let Value::Object(cols) = decision else { bad_decision("a decision must be a JSON object of columns (or NULL to refuse)".into()) };
    for c in cols.keys() {
        if l.keys.contains(c) {
            bad_decision(format!("a decision cannot change column \"{c}\", part of the row's key"));
        }
        if l.crdt.contains_key(c) {
            bad_decision(format!("a decision writes plain columns; \"{c}\" is a CRDT column"));
        }
        if !l.other.contains(c) {
            bad_decision(format!("a decision names column \"{c}\", which {} does not have", l.name));
        }
    }
    if cols.is_empty() {
        return;
    }
    let sets: Vec<String> = cols.keys().map(|c| format!("{0} = d.{0}", ident(c))).collect();
    let sql = format!(
        "UPDATE {0} t SET {1} FROM pg_catalog.jsonb_populate_record(NULL::{0}, $1) v, pg_catalog.jsonb_populate_record(NULL::{0}, $2) d
          WHERE {2} RETURNING pg_catalog.row_to_json(t.*)::text",
        l.name,
        sets.join(", "),
        keys_match(&l.keys)
    );
    // converge's op trigger stays quiet (the op is recorded below), and
    // nothing deferred is queued in the restricted operation. So does the
    // authority guard: the check below takes its place.
    crate::trigger::set_applying(true);
    let text = as_table_owner(l.rel, || fresh_text(&sql, &[JsonB(key.clone()).into(), JsonB(decision.clone()).into()]));
    crate::trigger::set_applying(false);
    let Some(Ok(Value::Object(new))) = text.map(|t| serde_json::from_str::<Value>(&t)) else {
        raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("{} has no row with key {key}", l.name))
    };
    // The row op puts every plain column the write changed (the table's
    // own triggers may have changed more than the decision named); none of
    // them may be another node's to decide (every other node would reject
    // the op, and this row alone would keep the change).
    let changed: Vec<&str> = l.other.iter().filter(|c| new.get(*c) != old.get(*c)).map(String::as_str).collect();
    for c in &changed {
        if let Some(node) = l.column_authority(c).filter(|n| n != me) {
            bad_decision(format!("a decision here cannot change column \"{c}\": node \"{node}\" decides it"));
        }
    }
    if changed.is_empty() {
        return;
    }
    let epoch = if l.table_authority.is_some() { crate::epochs::epoch_of(&l.name, key) } else { 0 };
    let ch = crate::row_ops::RowChange {
        rel: l.rel,
        table: &l.name,
        other: &l.other,
        changed,
        gone: Map::new(),
        crdt: &l.crdt,
        event: crate::row_ops::RowEvent::Update,
        key,
        new: None,
        check_json: false,
        version: l.row_version,
        epoch,
    };
    crate::row_ops::record_values(me, ch, new);
}
