//! Requests (SPEC section 5): asking the authority of a column to change it.
//!
//! A request is a row of `converge.requests`, a table converge replicates
//! like any other, so it travels as ops. On the authority, a deferred
//! trigger decides each new pending request once, at the commit that
//! brought it there (a local request, or an apply of a peer's ops): in
//! arrival order, through the authority's `decide` function or as proposed.
//! The decision is written as ordinary local changes of the authority (the
//! row of the user's table, then the request's status), so it replicates
//! like every change and every node ends with the same rows.

use crate::apply::subtransaction;
use crate::errors::raise;
use crate::rows::ident;
use crate::security::{as_owner, as_owner_writing, as_role};
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::{json, Value};

fn fail(e: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("converge requests: {e}"))
}

/// What a request needs to know of its table, read as converge's owner.
struct Layout {
    name: String,
    keys: Vec<String>,
    crdt: bool,
    exists: bool,
    authority: Option<String>,
}

fn layout(tbl: pg_sys::Oid, col: &str) -> Option<Layout> {
    as_owner(|| {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT format('%I.%I', n.nspname, c.relname), r.key_columns, r.crdt_columns ? $2, $2 = ANY (r.other_columns),
                        (SELECT x.node FROM converge.authority x WHERE x.table_name = r.table_name
                            AND x.column_name IN ($2, '') ORDER BY x.column_name DESC LIMIT 1)
                   FROM converge.replicated r JOIN pg_class c ON c.oid = r.table_name
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE r.table_name = $1::oid::regclass",
                Some(1),
                &[tbl.into(), col.into()],
            )?;
            if t.is_empty() {
                return Ok(None);
            }
            let r = t.first();
            Ok(Some(Layout {
                name: r.get::<String>(1)?.unwrap_or_default(),
                keys: r.get::<Vec<String>>(2)?.unwrap_or_default(),
                crdt: r.get::<bool>(3)?.unwrap_or(false),
                exists: r.get::<bool>(4)?.unwrap_or(false),
                authority: r.get::<String>(5)?,
            }))
        })
    })
    .unwrap_or_else(|e: pgrx::spi::SpiError| fail(e))
}

/// `converge.request`: check, then record the request as converge's owner.
#[pg_extern(volatile, parallel_unsafe)]
fn request_on(
    tbl: Option<pg_sys::Oid>,
    key: Option<JsonB>,
    col: Option<&str>,
    value: Option<JsonB>,
    idempotency_key: Option<&str>,
) -> String {
    let (Some(tbl), Some(JsonB(key)), Some(col)) = (tbl, key, col) else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "the table, the key and the column must not be NULL")
    };
    let Some(l) = layout(tbl, col) else {
        raise(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "that table is not replicated")
    };
    if l.crdt {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("column \"{col}\" of {} is a CRDT column: requests change plain columns for now", l.name),
        );
    }
    if !l.exists {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN, format!("column \"{col}\" of {} does not exist", l.name));
    }
    let Some(authority) = l.authority else {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("no authority decides column \"{col}\" of {}", l.name),
        )
    };
    let key_ok = matches!(&key, Value::Object(m) if m.len() == l.keys.len() && l.keys.iter().all(|k| m.contains_key(k)));
    if !key_ok {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("the key must be an object with the primary key columns of {} ({})", l.name, l.keys.join(", ")),
        );
    }
    let may = Spi::get_one_with_args::<bool>("SELECT pg_catalog.has_column_privilege($1::oid, $2, 'UPDATE')", &[tbl.into(), col.into()])
        .unwrap_or_else(|e| fail(e));
    if may != Some(true) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for column \"{col}\" of {}: a request needs UPDATE on it", l.name),
        );
    }
    if let Some(k) = idempotency_key {
        let known = as_owner(|| {
            crate::spi::read_one::<String>(
                "SELECT request_id FROM converge.requests WHERE idempotency_key = $1 ORDER BY requested_at, request_id LIMIT 1",
                &[k.into()],
            )
        });
        if let Some(id) = known {
            return id;
        }
    }
    let (node, dot) = crate::node::mutation();
    let id = converge_core::format_op_id(&node, dot.counter);
    let _ = authority; // decided where it is the authority (decide_requests)
    as_owner_writing(|| {
        Spi::run_with_args(
            "INSERT INTO converge.requests (request_id, target_table, target_key, target_column, value, idempotency_key,
                                            requested_by, requested_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, pg_catalog.clock_timestamp())",
            &[id.as_str().into(), l.name.as_str().into(), JsonB(key).into(), col.into(), value.into(), idempotency_key.into(), node.as_str().into()],
        )
    })
    .unwrap_or_else(|e| fail(e));
    id
}

/// Trigger of converge.requests (deferred, AFTER INSERT): decide it here if
/// this node is its authority.
#[pg_trigger]
fn decide_requests<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    let Some(new) = trigger.new() else { return Ok(None) };
    if let Ok(Some(id)) = new.get_by_name::<String>("request_id") {
        if crate::replication::pull::applying_peer_ops() {
            if pending(&id).is_some() {
                as_owner(|| {
                    Spi::run_with_args(
                        "INSERT INTO converge.request_arrival (request_id) VALUES ($1) ON CONFLICT DO NOTHING",
                        &[id.as_str().into()],
                    )
                })
                .unwrap_or_else(|e| fail(e));
            }
        } else {
            decide(&id);
        }
    }
    Ok(None)
}

/// `converge.decide_arrived`: decide, each in turn, the requests peers
/// brought here (converge.request_arrival), in arrival order.
#[pg_extern(volatile, parallel_unsafe)]
pub fn decide_arrived() -> i64 {
    let waiting = as_owner(|| crate::spi::read_one::<bool>("SELECT EXISTS (SELECT 1 FROM converge.request_arrival)", &[]));
    if waiting != Some(true) {
        return 0;
    }
    let ids: Vec<String> = as_owner(|| {
        Spi::connect_mut(|c| {
            c.update("DELETE FROM converge.request_arrival RETURNING seq, request_id", None, &[])
                .map(|t| {
                    let mut v: Vec<(i64, String)> =
                        t.filter_map(|r| Some((r.get::<i64>(1).ok()??, r.get::<String>(2).ok()??))).collect();
                    v.sort();
                    v.into_iter().map(|(_, id)| id).collect()
                })
        })
    })
    .unwrap_or_else(|e| fail(e));
    for id in &ids {
        decide(id);
    }
    ids.len() as i64
}

/// A pending request as its authority sees it.
struct Pending {
    owner: pg_sys::Oid,
    name: String,
    key: Value,
    column: String,
    value: Option<Value>,
    idempotency_key: Option<String>,
    decide: Option<String>,
}

/// The request `id` if it is pending and this node decides it, locked.
fn pending(id: &str) -> Option<Pending> {
    as_owner(|| {
        Spi::connect_mut(|c| {
            let t = c.update(
                "SELECT c.relowner, q.target_table, q.target_key, q.target_column, q.value, q.idempotency_key,
                        (SELECT format('%I.%I', pn.nspname, p.proname) FROM pg_proc p JOIN pg_namespace pn ON pn.oid = p.pronamespace
                          WHERE p.oid = a.decide)
                   FROM converge.requests q
                   JOIN pg_class c ON c.oid = to_regclass(q.target_table)
                   JOIN LATERAL (SELECT x.node, x.decide FROM converge.authority x
                                  WHERE x.table_name = c.oid AND x.column_name IN (q.target_column, '')
                                  ORDER BY x.column_name DESC LIMIT 1) a ON true
                  WHERE q.request_id = $1 AND q.status = 'pending' AND a.node = converge.node()
                    FOR UPDATE OF q",
                Some(1),
                &[id.into()],
            )?;
            if t.is_empty() {
                return Ok(None);
            }
            let r = t.first();
            Ok(Some(Pending {
                owner: r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                name: r.get::<String>(2)?.unwrap_or_default(),
                key: r.get::<JsonB>(3)?.map(|j| j.0).unwrap_or(Value::Null),
                column: r.get::<String>(4)?.unwrap_or_default(),
                value: r.get::<JsonB>(5)?.map(|j| j.0),
                idempotency_key: r.get::<String>(6)?,
                decide: r.get::<String>(7)?,
            }))
        })
    })
    .unwrap_or_else(|e: pgrx::spi::SpiError| fail(e))
}

/// Decide request `id` once, if this node is its authority and it is
/// still pending: the first request of its idempotency key decided here
/// gives its outcome to the others; otherwise `decide` (or the proposed
/// value) says which columns to write, and they are written as a local
/// change of this node, as the table's owner. Any error of `decide` or of
/// the write refuses the request with its message, and undoes both.
fn decide(id: &str) {
    let Some(p) = pending(id) else { return };
    if let Some(k) = &p.idempotency_key {
        let copied = as_owner_writing(|| {
            Spi::connect_mut(|c| {
                c.update(
                    "WITH first AS (SELECT status, decision, reason FROM converge.requests
                                     WHERE idempotency_key = $2 AND request_id <> $1 AND status <> 'pending'
                                     ORDER BY decided_at, request_id LIMIT 1)
                     UPDATE converge.requests q SET status = f.status, decision = f.decision, reason = f.reason,
                            decided_at = pg_catalog.clock_timestamp()
                       FROM first f WHERE q.request_id = $1 RETURNING true",
                    None,
                    &[id.into(), k.as_str().into()],
                )
                .map(|t| !t.is_empty())
            })
        })
        .unwrap_or_else(|e| fail(e));
        if copied {
            return;
        }
    }
    let outcome = subtransaction(|| {
        let decision = match &p.decide {
            None => Some(json!({ p.column.as_str(): p.value.clone().unwrap_or(Value::Null) })),
            Some(f) => as_role(p.owner, || {
                Spi::connect_mut(|c| {
                    let t = c.update(&format!("SELECT {f}(q) FROM converge.requests q WHERE q.request_id = $1"), None, &[id.into()])?;
                    if t.is_empty() { Ok(None) } else { t.first().get_one::<JsonB>() }
                })
            })
            .unwrap_or_else(|e| fail(e))
            .map(|j| j.0),
        };
        if let Some(d) = &decision {
            write(&p, d);
        }
        decision
    });
    let (status, decision, reason) = match outcome {
        Ok(Some(d)) => ("granted", Some(d), None),
        Ok(None) => ("refused", None, Some("refused by the decide function".to_string())),
        Err(c) if ["40", "53", "57", "58", "XX"].iter().any(|class| c.sqlstate.starts_with(class)) => raise(c.code, c.message),
        Err(c) => ("refused", None, Some(c.message)),
    };
    as_owner_writing(|| {
        Spi::run_with_args(
            "UPDATE converge.requests SET status = $2, decision = $3, reason = $4, decided_at = pg_catalog.clock_timestamp()
              WHERE request_id = $1",
            &[id.into(), status.into(), decision.map(JsonB).into(), reason.into()],
        )
    })
    .unwrap_or_else(|e| fail(e));
}

/// Write a decision ({column: value} of plain columns) on the request's
/// row, as the table's owner, recorded as this node's ops.
fn write(p: &Pending, decision: &Value) {
    let Value::Object(cols) = decision else {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "a decision must be a JSON object of columns")
    };
    if cols.is_empty() {
        return;
    }
    let keys: Vec<String> = p.key.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    let sets: Vec<String> = cols.keys().map(|c| format!("{0} = d.{0}", ident(c))).collect();
    let sql = format!(
        "UPDATE {0} t SET {1} FROM pg_catalog.jsonb_populate_record(NULL::{0}, $1) v,
                pg_catalog.jsonb_populate_record(NULL::{0}, $2) d WHERE {2} RETURNING 1",
        p.name,
        sets.join(", "),
        crate::rows::keys_match(&keys)
    );
    if cols.keys().any(|c| keys.contains(c)) {
        raise(PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED, "a decision cannot change the row's key");
    }
    let n = as_role(p.owner, || {
        Spi::connect_mut(|c| c.update(&sql, None, &[JsonB(p.key.clone()).into(), JsonB(decision.clone()).into()]).map(|t| t.len()))
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION, e.to_string()));
    if n == 0 {
        raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("no row of {} has the key {}", p.name, p.key));
    }
}
