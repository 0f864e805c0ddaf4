//! Requests (SPEC section 5): asking the authority of a column to change
//! it, from any node (or a client, through any node).
//!
//! A request is an op of its requester (target `converge.request`, key
//! `{"table": t, "key": k}`, the column, and a JSON delta `{"value",
//! "idempotency_key", "requested_at"}`); its id is that op's id. Every node
//! keeps it in `converge.requests`. The authority decides each pending
//! request once, in the order requests arrived there: through its `decide`
//! function or as proposed. The decision is written on the row as an
//! ordinary local change of the authority (a row op, recorded explicitly)
//! and its outcome is a second op of the authority (target
//! `converge.decision`, key `{"request_id", "table", "key", "column"}`,
//! delta `{"status", "decision", "reason", "decided_at"}`), both in one
//! transaction, so every node ends with the same rows and requests.
//!
//! Decisions are never made in a transaction that applies a peer's ops
//! (its writes carry that peer's origin and would never ship): requests a
//! peer brings are decided by the worker right after, in a transaction of
//! its own (`decide_pending`). The decide function and the decision's write
//! run as the table's owner in a security-restricted operation
//! (`as_table_owner`): the owner's code never gets the worker's rights, and
//! no deferred trigger is queued (the write records its op itself).

use crate::errors::raise;
use crate::rows::keys_match;
use crate::security::as_owner;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::{json, Value};
use std::cell::Cell;

pub(crate) mod decide;
pub use decide::decide_pending;

/// The `target_table` of request ops.
pub const REQUEST: &str = "converge.request";
/// The `target_table` of decision ops.
pub const DECISION: &str = "converge.decision";

fn fail(e: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("converge requests: {e}"))
}

/// Now, in microseconds since the Unix epoch (how ops carry times).
pub fn now_micros() -> i64 {
    (unsafe { pg_sys::GetCurrentTimestamp() }) + 946_684_800_000_000
}

/// A time an op carries, if it is one every node can store (1970 to 2286).
pub fn micros(v: Option<&Value>) -> Option<i64> {
    v?.as_i64().filter(|t| (0..=10_000_000_000_000_000).contains(t))
}

/// The delta of a request op.
pub struct Asked {
    pub value: Value,
    pub idempotency_key: Option<String>,
    pub requested_at: i64,
}

impl Asked {
    pub fn parse(delta: &[u8]) -> Option<Asked> {
        let v: Value = serde_json::from_slice(delta).ok()?;
        let m = v.as_object().filter(|m| m.len() == 3)?;
        let idempotency_key = match m.get("idempotency_key")? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            _ => return None,
        };
        Some(Asked { value: m.get("value")?.clone(), idempotency_key, requested_at: micros(m.get("requested_at"))? })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let v = json!({ "value": self.value, "idempotency_key": self.idempotency_key, "requested_at": self.requested_at });
        serde_json::to_vec(&v).unwrap_or_else(|e| fail(e))
    }
}

/// The delta of a decision op: the outcome of a request.
pub struct Decided {
    pub status: String,
    pub decision: Option<Value>,
    pub reason: Option<String>,
    pub decided_at: i64,
}

impl Decided {
    pub fn parse(delta: &[u8]) -> Option<Decided> {
        let v: Value = serde_json::from_slice(delta).ok()?;
        let m = v.as_object().filter(|m| m.len() == 4)?;
        let status = m.get("status")?.as_str().filter(|s| *s == "granted" || *s == "refused")?.to_string();
        let decision = match m.get("decision")? {
            Value::Null => None,
            d @ Value::Object(_) => Some(d.clone()),
            _ => return None,
        };
        let reason = match m.get("reason")? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            _ => return None,
        };
        Some(Decided { status, decision, reason, decided_at: micros(m.get("decided_at"))? })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let v = json!({ "status": self.status, "decision": self.decision, "reason": self.reason, "decided_at": self.decided_at });
        serde_json::to_vec(&v).unwrap_or_else(|e| fail(e))
    }
}

/// The row and column a request or decision op names.
pub struct Target {
    pub table: String,
    pub key: Value,
    pub column: String,
}

/// Check the table, key and column an op names against this node's
/// layout; Err is the op's rejection reason.
fn target_error(table: &str, key: &Value, column: &str) -> Result<crate::apply::Layout, &'static str> {
    let l = crate::apply::layout_of(table)?;
    if l.name != table || l.canonical(key).as_ref() != Some(key) {
        return Err("invalid_key");
    }
    if !(l.other.iter().any(|c| c == column) || l.crdt.contains_key(column)) {
        return Err("unknown_column");
    }
    Ok(l)
}

/// Why a request op is not valid (None: valid). Any actor may ask (its
/// signature and revocation are checked as for every op); a caller that
/// sends one through `apply` needs UPDATE on the column, as `request` does.
pub fn request_op_error(from_peer: bool, key: Option<&Value>, column: Option<&str>, delta: &[u8]) -> Option<String> {
    let Some(Value::Object(k)) = key else { return Some("invalid_key".into()) };
    let (Some(Value::String(table)), Some(row), 2) = (k.get("table"), k.get("key"), k.len()) else {
        return Some("invalid_key".into());
    };
    let column = column.unwrap_or_default();
    let l = match target_error(table, row, column) {
        Ok(l) => l,
        Err(reason) => return Some(reason.into()),
    };
    if Asked::parse(delta).is_none() {
        return Some("invalid_delta".into());
    }
    if !from_peer {
        require_column_update(l.rel, &l.name, column);
    }
    None
}

/// Why a decision op is not valid: only nodes make them (an authority), and
/// only a peer's replication brings them. The decider is not checked
/// against this node's setting: while an authority moves, nodes that moved
/// first would reject the old one's decisions that the others keep.
pub fn decision_op_error(from_peer: bool, key: Option<&Value>, column: Option<&str>, delta: &[u8]) -> Option<String> {
    if !from_peer {
        return Some("not_authority".into());
    }
    if column != Some("") {
        return Some("unknown_column".into());
    }
    let Some(t) = decision_target(key) else { return Some("invalid_key".into()) };
    if let Err(reason) = target_error(&t.table, &t.key, &t.column) {
        return Some(reason.into());
    }
    Decided::parse(delta).is_none().then(|| "invalid_delta".into())
}

/// The request a decision op's key names: (request_id, its target).
fn decision_target(key: Option<&Value>) -> Option<Target> {
    let k = key?.as_object().filter(|k| k.len() == 4)?;
    k.get("request_id")?.as_str().and_then(converge_core::parse_op_id)?;
    Some(Target {
        table: k.get("table")?.as_str()?.to_string(),
        key: k.get("key")?.clone(),
        column: k.get("column")?.as_str()?.to_string(),
    })
}

fn require_column_update(rel: pg_sys::Oid, name: &str, column: &str) {
    let may = crate::spi::read_one::<bool>(
        "SELECT pg_catalog.has_column_privilege($1, $2::oid, $3, 'UPDATE')",
        &[crate::security::caller().into(), rel.into(), column.into()],
    );
    if may != Some(true) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for column \"{column}\" of {name}: a request needs UPDATE on it"),
        );
    }
}

thread_local! {
    /// This transaction recorded requests (the worker then decides).
    static ARRIVED: Cell<bool> = const { Cell::new(false) };
}

/// Whether requests arrived since the last call (and forget it).
pub fn take_arrived() -> bool {
    ARRIVED.with(|a| a.replace(false))
}

/// Record a request (as converge's owner).
fn store_request(id: &str, actor: &str, t: &Target, asked: &Asked) {
    as_owner(|| {
        Spi::run_with_args(
            "WITH arrived AS (INSERT INTO converge.request_order (request_id) VALUES ($1) ON CONFLICT DO NOTHING)
             INSERT INTO converge.requests AS q (request_id, target_table, target_key, target_column, value, idempotency_key,
                                                 requested_by, requested_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, pg_catalog.to_timestamp($8::float8 / 1e6))
             ON CONFLICT (request_id) DO UPDATE
                SET value = EXCLUDED.value, idempotency_key = EXCLUDED.idempotency_key,
                    requested_by = EXCLUDED.requested_by, requested_at = EXCLUDED.requested_at",
            &[
                id.into(),
                t.table.as_str().into(),
                JsonB(t.key.clone()).into(),
                t.column.as_str().into(),
                JsonB(asked.value.clone()).into(),
                asked.idempotency_key.clone().into(),
                actor.into(),
                asked.requested_at.into(),
            ],
        )
    })
    .unwrap_or_else(|e| fail(e));
}

/// Requests whose ops (by their op_log seq) were taken out of the history
/// by a revocation (a repair leaves converge's own ops alone) are
/// withdrawn, so that every node ends with the same `converge.requests`: a
/// node the revocation reached first rejected the op and never had the
/// request. Pending, it goes (the authority never decides it); decided
/// already, its row keeps only the decision, as a node that learns the
/// decision alone has it. The decision's write stays: it is the
/// authority's own change.
pub fn withdraw(seqs: &[i64]) {
    // Two statements: a decision committed while the DELETE waited for the
    // row (the authority deciding it) is seen by the UPDATE's snapshot.
    const GONE: &str = "SELECT l.op_id FROM converge.op_log l WHERE l.seq = ANY ($1) AND l.target_table = $2";
    as_owner(|| {
        Spi::run_with_args(
            &format!(
                "WITH gone AS (DELETE FROM converge.requests q WHERE q.request_id IN ({GONE}) AND q.decision_id IS NULL RETURNING q.request_id)
                 DELETE FROM converge.request_order o USING gone WHERE o.request_id = gone.request_id"
            ),
            &[seqs.into(), REQUEST.into()],
        )?;
        Spi::run_with_args(
            &format!(
                "UPDATE converge.requests q SET value = NULL, idempotency_key = NULL, requested_by = NULL, requested_at = NULL
                  WHERE q.request_id IN ({GONE}) AND q.decision_id IS NOT NULL"
            ),
            &[seqs.into(), REQUEST.into()],
        )
    })
    .unwrap_or_else(|e| fail(e));
}

/// Record a request's outcome: of two decisions of one request (an
/// authority moved while it was pending), the smaller decision id wins on
/// every node, whatever the order they arrive in.
fn store_decision(id: &str, t: &Target, d: &Decided, decision_id: &str) {
    as_owner(|| {
        Spi::run_with_args(
            "WITH arrived AS (INSERT INTO converge.request_order (request_id) VALUES ($1) ON CONFLICT DO NOTHING)
             INSERT INTO converge.requests AS q (request_id, target_table, target_key, target_column, status, decision, reason,
                                                 decided_at, decision_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, pg_catalog.to_timestamp($8::float8 / 1e6), $9)
             ON CONFLICT (request_id) DO UPDATE
                SET status = EXCLUDED.status, decision = EXCLUDED.decision, reason = EXCLUDED.reason,
                    decided_at = EXCLUDED.decided_at, decision_id = EXCLUDED.decision_id
              WHERE q.decision_id IS NULL OR EXCLUDED.decision_id COLLATE \"C\" < q.decision_id COLLATE \"C\"",
            &[
                id.into(),
                t.table.as_str().into(),
                JsonB(t.key.clone()).into(),
                t.column.as_str().into(),
                d.status.as_str().into(),
                d.decision.clone().map(JsonB).into(),
                d.reason.clone().into(),
                d.decided_at.into(),
                decision_id.into(),
            ],
        )
    })
    .unwrap_or_else(|e| fail(e));
}

/// Merge request ops (op_id, actor, key, column, delta) that passed the gate.
pub fn merge_request_ops(ops: Vec<(String, String, Value, String, Vec<u8>)>) {
    ARRIVED.with(|a| a.set(true));
    for (id, actor, key, column, delta) in ops {
        let asked = Asked::parse(&delta).unwrap_or_else(|| fail("invalid request op"));
        let t = Target { table: key["table"].as_str().unwrap_or_default().to_string(), key: key["key"].clone(), column };
        store_request(&id, &actor, &t, &asked);
    }
}

/// Merge decision ops (op_id, key, delta) that passed the gate.
pub fn merge_decision_ops(ops: Vec<(String, Value, Vec<u8>)>) {
    for (decision_id, key, delta) in ops {
        let d = Decided::parse(&delta).unwrap_or_else(|| fail("invalid decision op"));
        let t = decision_target(Some(&key)).unwrap_or_else(|| fail("invalid decision op"));
        store_decision(key["request_id"].as_str().unwrap_or_default(), &t, &d, &decision_id);
    }
}

/// `converge.request(tbl, key, col, value, idempotency_key)`.
///
/// Locks, in the order every writer of the row takes them: the row (as the
/// caller, so its row security applies), the idempotency key, then this
/// node's op counter (held to commit, as for every local op).
#[pg_extern(volatile, parallel_unsafe)]
fn request_on(tbl: Option<pg_sys::Oid>, key: Option<JsonB>, col: Option<&str>, value: Option<JsonB>, idempotency_key: Option<&str>) -> String {
    let (Some(tbl), Some(key), Some(col)) = (tbl, key, col) else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "the table, the key and the column must not be NULL")
    };
    let (table, key, _) = crate::epochs::row_of(tbl, &key.0);
    let l = crate::apply::layout_of(&table).unwrap_or_else(|e| fail(e));
    if l.keys.iter().any(|k| k == col) {
        raise(PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED, format!("column \"{col}\" is part of the primary key of {table}"));
    }
    if !(l.other.iter().any(|c| c == col) || l.crdt.contains_key(col)) {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN, format!("column \"{col}\" of {table} does not exist"));
    }
    let Some(decider) = l.decider(col) else {
        crate::errors::raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("no authority decides column \"{col}\" of {table}"),
            format!("Run SELECT converge.set_authority('{table}', '{col}', '<node>') on every node first."),
        )
    };
    // A CRDT column's value as proposed would be the requester's whole
    // copy, merged in as the authority's own op: removals it covers,
    // increments or registers it made up. Its authority's decide function
    // says what to write instead (e.g. the removal of one element from the
    // authority's current value).
    if l.crdt.contains_key(col) && decide::decide_function(l.rel, col) == decide::Decide::AsProposed {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("column \"{col}\" of {table} is a CRDT column: a request for it needs a decide function of its authority"),
        );
    }
    require_column_update(tbl, &table, col);
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "converge.request runs in READ COMMITTED transactions only (it must see every request with its idempotency key)",
        );
    }
    // The row, as the caller would lock it to update it: a row its row
    // security hides is no row. A typo'd key would otherwise wait for ever.
    let exists = format!(
        "SELECT 'yes' FROM {0} t, pg_catalog.jsonb_populate_record(NULL::{0}, $1) v WHERE {1} FOR UPDATE OF t",
        l.name,
        keys_match(&l.keys)
    );
    if fresh_text(&exists, &[JsonB(key.clone()).into()]).is_none() {
        raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("table {table} has no row with key {key}"));
    }
    if let Some(k) = idempotency_key {
        // One request per key on this node, also from concurrent sessions.
        crate::local_ops::private_lock(c"requests", k);
        let known = as_owner(|| {
            fresh_text(
                "SELECT q.request_id FROM converge.requests q JOIN converge.request_order o USING (request_id)
                  WHERE q.idempotency_key = $1 AND q.requested_by IS NOT NULL ORDER BY o.arrival LIMIT 1",
                &[k.into()],
            )
        });
        if let Some(id) = known {
            crate::durable::flush_visible(); // (as allocate does)
            return id;
        }
    }
    let me = crate::node::local_node();
    let asked = Asked { value: value.map(|j| j.0).unwrap_or(Value::Null), idempotency_key: idempotency_key.map(String::from), requested_at: now_micros() };
    let t = Target { table, key, column: col.to_string() };
    let op_key = json!({ "table": t.table, "key": t.key });
    let id = crate::local_ops::log_control_op(&me, REQUEST, op_key, col, asked.to_bytes());
    store_request(&id, &me, &t, &asked);
    if decider == me && !crate::apply::under_peer_origin() {
        let _ = decide::decide_one(&me, &id);
    }
    id
}

/// One text value of a statement run with a snapshot of its own (it sees
/// what this transaction wrote so far, and what committed before).
fn fresh_text(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Option<String> {
    Spi::connect_mut(|c| {
        let t = c.update(sql, Some(1), args)?;
        if t.is_empty() { Ok(None) } else { t.first().get_one::<String>() }
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION, e.to_string()))
}

/// A node that rejoins from a peer's snapshot copies its requests (the
/// columns of `converge.requests`, times in microseconds, as text).
pub fn copy_requests(rows: Vec<Vec<Option<String>>>) {
    let json = |t: &Option<String>| t.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok());
    let int = |t: &Option<String>| t.as_deref().and_then(|t| t.parse::<i64>().ok());
    for r in rows {
        let [id, table, key, column, value, idem, by, at, status, decision, reason, decided_at, decision_id] = &r[..] else { continue };
        let (Some(id), Some(table), Some(key), Some(column)) = (id, table.clone(), json(key), column.clone()) else { continue };
        let t = Target { table, key, column };
        if let (Some(by), Some(at)) = (by, int(at)) {
            store_request(id, by, &t, &Asked { value: json(value).unwrap_or(Value::Null), idempotency_key: idem.clone(), requested_at: at });
        }
        if let (Some(status), Some(decided_at), Some(decision_id)) = (status, int(decided_at), decision_id) {
            let d = Decided { status: status.clone(), decision: json(decision), reason: reason.clone(), decided_at };
            store_decision(id, &t, &d, decision_id);
        }
    }
}
