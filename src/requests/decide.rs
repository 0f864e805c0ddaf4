//! The authority's side of requests: deciding each pending request once,
//! in arrival order, and writing the decision.
//!
//! Each request is decided in a subtransaction of its own, so that one
//! request never holds up the others: an error that is the request's (its
//! data, or the decide function refusing by raising: classes 22, 23, 54
//! (a program limit, say a value too large), P0)
//! refuses it; any other error (a privilege or setting the decide function
//! lacks, a deadlock) leaves it pending with a WARNING, to be tried again
//! by the worker's next pass (a row another session holds leaves it
//! pending too, skipped without a warning); only errors of the
//! whole session (out of memory, a cancel, a shutdown) are raised. Nothing
//! here waits for a lock another session holds, but this node's op counter
//! (the worker's pass gives up on it after its lock_timeout).

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
                "SELECT q.request_id FROM converge.requests q JOIN converge.request_order o USING (request_id)
                  WHERE q.status = 'pending' AND q.requested_by IS NOT NULL
                    -- (not while it is handed over and not taken)
                    AND (SELECT CASE WHEN a.since IS NOT NULL THEN a.node END FROM converge.authority a
                          WHERE a.table_name = to_regclass(q.target_table) AND a.column_name IN (q.target_column, '')
                          ORDER BY a.column_name DESC LIMIT 1) = $1
                  ORDER BY o.arrival",
                None,
                &[me.as_str().into()],
            )
            .map(|t| t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
        })
    })
    .unwrap_or_else(|e: pgrx::spi::SpiError| fail(e));
    let mut decided = 0;
    for id in &ids {
        match decide_one(&me, id) {
            Done::Decided => decided += 1,
            Done::Pending => {}
            Done::Stop => break,
        }
    }
    decided
}

/// What `decide_one` did with a request.
pub(super) enum Done {
    Decided,
    /// It stays pending (see `decide_one`).
    Pending,
    /// It stays pending, and so do the rest of this pass: a lock this node's
    /// deciding needs (its op counter) is held elsewhere.
    Stop,
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
                "SELECT q.target_table, q.target_key, q.target_column, q.value, q.idempotency_key, o.arrival
                   FROM converge.requests q JOIN converge.request_order o USING (request_id)
                  WHERE q.request_id = $1 AND q.status = 'pending' AND q.requested_by IS NOT NULL FOR UPDATE OF q SKIP LOCKED",
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

/// What the requests that arrived here before `p` say about it.
enum Earlier {
    None,
    /// One for the same row and column is still pending: it is decided first.
    Waits,
    /// One with the same idempotency key was decided: its outcome.
    Decided(String, Option<Value>, Option<String>),
    /// One with the same idempotency key asks another change: this request_id.
    Other(String),
}

fn earlier(p: &Pending) -> Earlier {
    as_owner(|| {
        Spi::connect_mut(|c| {
            // Arrival order per row and column: an earlier request of the
            // target still pending (its decision failed, say) goes first.
            let t = c.update(
                "SELECT 1 FROM converge.requests q JOIN converge.request_order o USING (request_id)
                  WHERE q.status = 'pending' AND q.requested_by IS NOT NULL
                    AND q.target_table = $1 AND q.target_key = $2 AND q.target_column = $3 AND o.arrival < $4 LIMIT 1",
                Some(1),
                &[p.target.table.as_str().into(), JsonB(p.target.key.clone()).into(), p.target.column.as_str().into(), p.arrival.into()],
            )?;
            if !t.is_empty() {
                return Ok(Earlier::Waits);
            }
            let Some(k) = &p.idempotency_key else { return Ok(Earlier::None) };
            // The same key: the first such request here decides. One for
            // the same change gives this one its outcome once decided (or
            // makes it wait); one for another change refuses it if it
            // arrived first or was granted (whoever decided it), not if it
            // was refused, maybe because of this one.
            let t = c.update(
                "SELECT request_id, status, decision, reason, same
                   FROM (SELECT r.*, o.arrival, r.target_table = $3 AND r.target_key = $4 AND r.target_column = $5 AS same
                           FROM converge.requests r JOIN converge.request_order o USING (request_id)
                          WHERE r.idempotency_key = $1 AND r.request_id <> $2 AND r.requested_by IS NOT NULL) q
                  WHERE arrival < $6 OR status = 'granted' OR (same AND status <> 'pending')
                  ORDER BY arrival, decision_id COLLATE \"C\" LIMIT 1",
                Some(1),
                &[
                    k.as_str().into(),
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
            let first = r.get::<String>(1)?.unwrap_or_default();
            if !r.get::<bool>(5)?.unwrap_or(false) {
                return Ok(Earlier::Other(first));
            }
            if r.get::<String>(2)?.as_deref() == Some("pending") {
                return Ok(Earlier::Waits);
            }
            Ok(Earlier::Decided(r.get::<String>(2)?.unwrap_or_default(), r.get::<JsonB>(3)?.map(|j| j.0), r.get::<String>(4)?))
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

/// Whether a request for column `col` of the table named `table` would be
/// decided by a decide function (for the guards' hints: a request for a
/// CRDT column needs one).
pub(crate) fn has_decide_function(table: &str, col: &str) -> bool {
    let rel = crate::spi::read_one::<pg_sys::Oid>("SELECT $1::regclass::oid", &[table.into()]);
    rel.is_some_and(|rel| decide_function(rel, col) != Decide::AsProposed)
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

/// Decide request `id` once, if this node decides it and it is pending.
/// It stays pending while its table is not replicated here, its row does
/// not exist yet (or another session holds it), an earlier request for the
/// same row and column or with its idempotency key is pending, or deciding
/// it failed for a reason that is not the request's.
pub(super) fn decide_one(me: &str, id: &str) -> Done {
    let Some(p) = lock_pending(id) else { return Done::Pending };
    let Ok(l) = crate::apply::layout_of(&p.target.table) else { return Done::Pending };
    if !l.decides_now(&p.target.column, me) {
        return Done::Pending;
    }
    let how = decide_function(l.rel, &p.target.column);
    if how == Decide::Missing {
        pgrx::warning!(
            "converge: request {id} stays pending: the decide function of {}.{} no longer exists (run converge.set_authority again)",
            l.name,
            p.target.column
        );
        return Done::Pending;
    }
    // A cheap look first (no lock, no transaction id): most requests that
    // wait, wait for their row.
    if !row_exists(&l, &p.target.key) {
        return Done::Pending;
    }
    let step = crate::apply::subtransaction(|| {
        // An xid for the subtransaction: pgrx runs SPI read-only (the
        // statement's snapshot, no writes) until the current one has one.
        unsafe { pg_sys::GetCurrentTransactionId() };
        decide_now(me, &p, &l, &how)
    });
    let refusal = match step {
        Ok(done) => return done,
        Err(c) if ["53", "57", "58"].iter().any(|class| c.sqlstate.starts_with(class)) => raise(c.code, c.message),
        Err(c) if ["22", "23", "54", "P0"].iter().any(|class| c.sqlstate.starts_with(class)) => c.message,
        Err(c) => return left_pending(id, c),
    };
    let d = Decided { status: "refused".into(), decision: None, reason: Some(refusal), decided_at: now_micros() };
    match crate::apply::subtransaction(|| record_outcome(me, &l, &p, d)) {
        Ok(()) => Done::Decided,
        Err(c) => left_pending(id, c),
    }
}

/// A request whose deciding failed for a reason that is not its own.
fn left_pending(id: &str, c: crate::apply::Caught) -> Done {
    pgrx::warning!("converge: request {id} stays pending: {} (SQLSTATE {})", c.message, c.sqlstate);
    if c.sqlstate == "55P03" { Done::Stop } else { Done::Pending }
}

/// The decision itself, in the caller's subtransaction: an idempotency
/// copy, or the row locked, `decide` called (or the value as proposed),
/// the decision written, and the outcome recorded.
fn decide_now(me: &str, p: &Pending, l: &crate::apply::Layout, how: &Decide) -> Done {
    let outcome = |status: &str, decision, reason| Decided { status: status.into(), decision, reason, decided_at: now_micros() };
    match earlier(p) {
        Earlier::Waits => return Done::Pending,
        Earlier::Decided(status, decision, reason) => {
            record_outcome(me, l, p, outcome(&status, decision, reason));
            return Done::Decided;
        }
        Earlier::Other(first) => {
            let k = p.idempotency_key.clone().unwrap_or_default();
            let why = format!("idempotency key \"{k}\" was used by request {first} for another change");
            record_outcome(me, l, p, outcome("refused", None, Some(why)));
            return Done::Decided;
        }
        Earlier::None => {}
    }
    let Some(old) = lock_row(l, &p.target.key) else { return Done::Pending };
    let decision = match how {
        Decide::By(f) => call_decide(l, f, &p.id),
        // A CRDT column's request (made before its decide function was
        // unset, or sent through apply) is not merged as proposed.
        _ if l.crdt.contains_key(&p.target.column) => {
            bad_decision(format!("column \"{}\" is a CRDT column: its requests need a decide function", p.target.column))
        }
        _ => Some(json!({ p.target.column.as_str(): p.value })),
    };
    match decision {
        Some(d) => {
            write_decision(me, l, &p.target.key, &old, &d);
            record_outcome(me, l, p, outcome("granted", Some(d), None));
        }
        None => record_outcome(me, l, p, outcome("refused", None, Some("refused by the decide function".into()))),
    }
    Done::Decided
}

/// Whether the request's row exists here (read as the table's owner, no lock).
fn row_exists(l: &crate::apply::Layout, key: &Value) -> bool {
    let sql = format!(
        "SELECT 'yes' FROM {0} t, pg_catalog.jsonb_populate_record(NULL::{0}, $1) v WHERE {1}",
        l.name,
        keys_match(&l.keys)
    );
    // A key that does not fit the table's types fails here: the decision
    // step below meets the same error and refuses the request.
    crate::apply::subtransaction(|| as_table_owner(l.rel, || crate::spi::read_one::<String>(&sql, &[JsonB(key.clone()).into()])))
        .map_or(true, |found| found.is_some())
}

/// Log the decision op and record the outcome here.
fn record_outcome(me: &str, l: &crate::apply::Layout, p: &Pending, d: Decided) {
    // Decided here: checked again under the op counter, which a handover
    // of the column may have taken first (dropped with a subtransaction
    // that rolls back).
    crate::commit_ops::note_held(&l.name, &[l.deciding(&p.target.column)]);
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

/// Lock the request's row as the table's owner, without waiting (a row
/// another session holds is skipped: the request waits for the next pass,
/// and the pass goes on with the others); its values (as `row_to_json`
/// renders them), None if there is no such row or it is held.
fn lock_row(l: &crate::apply::Layout, key: &Value) -> Option<Map<String, Value>> {
    let sql = format!(
        "SELECT pg_catalog.row_to_json(t.*)::text FROM {0} t, pg_catalog.jsonb_populate_record(NULL::{0}, $1) v WHERE {1} FOR UPDATE OF t SKIP LOCKED",
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

/// Write a decision ({column: value}) on the row as the table's owner, and
/// record it as this node's ops. A plain column takes the value; a CRDT
/// column merges it in (it only changes by merge, on every node alike: a
/// value that removes an element removes what it covers, add wins).
fn write_decision(me: &str, l: &crate::apply::Layout, key: &Value, old: &Map<String, Value>, decision: &Value) {
    let Value::Object(cols) = decision else { bad_decision("a decision must be a JSON object of columns (or NULL to refuse)".into()) };
    for c in cols.keys() {
        if l.keys.contains(c) {
            bad_decision(format!("a decision cannot change column \"{c}\", part of the row's key"));
        }
        if !l.other.contains(c) && !l.crdt.contains_key(c) {
            bad_decision(format!("a decision names column \"{c}\", which {} does not have", l.name));
        }
    }
    if cols.is_empty() {
        return;
    }
    // Checked again under the op counter, in case a handover of them
    // commits first.
    let held: Vec<&str> = cols.keys().map(String::as_str).filter(|c| l.holds(c, me)).collect();
    if !held.is_empty() {
        crate::commit_ops::note_held(&l.name, &held);
    }
    let sets: Vec<String> = cols
        .keys()
        .map(|c| match l.crdt.contains_key(c) {
            false => format!("{0} = d.{0}", ident(c)),
            // (merge with NULL: what a decision returns is stored as a state.)
            true => format!(
                "{0} = CASE WHEN d.{0} IS NULL THEN t.{0} WHEN t.{0} IS NULL THEN converge.merge(d.{0}, NULL) ELSE t.{0} OPERATOR(converge.||) d.{0} END",
                ident(c)
            ),
        })
        .collect();
    let sql = format!(
        "UPDATE {0} t SET {1} FROM pg_catalog.jsonb_populate_record(NULL::{0}, $1) v, pg_catalog.jsonb_populate_record(NULL::{0}, $2) d
          WHERE {2} RETURNING pg_catalog.row_to_json(t.*)::text",
        l.name,
        sets.join(", "),
        keys_match(&l.keys)
    );
    let crdt: Vec<String> = { let mut v: Vec<String> = l.crdt.keys().cloned().collect(); v.sort(); v };
    let before = crdt_bytes(l, key, &crdt);
    // converge's op trigger stays quiet (the ops are recorded below), and
    // nothing deferred is queued in the restricted operation. So does the
    // authority guard: the checks below take its place.
    crate::trigger::set_applying(true);
    let text = as_table_owner(l.rel, || fresh_text(&sql, &[JsonB(key.clone()).into(), JsonB(decision.clone()).into()]));
    crate::trigger::set_applying(false);
    let Some(Ok(Value::Object(new))) = text.map(|t| serde_json::from_str::<Value>(&t)) else {
        raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("{} has no row with key {key}", l.name))
    };
    let after = crdt_bytes(l, key, &crdt);
    let epoch = if l.table_authority.is_some() { crate::epochs::epoch_of(&l.name, key) } else { 0 };
    record_crdt_ops(me, l, key, epoch, &crdt, &before, &after);
    record_row_op(me, l, key, epoch, old, new);
}

/// The row's CRDT columns (`names`) as stored bytes, read as the table's owner.
fn crdt_bytes(l: &crate::apply::Layout, key: &Value, names: &[String]) -> Vec<Option<Vec<u8>>> {
    if names.is_empty() {
        return Vec::new();
    }
    let cols: Vec<String> = names.iter().map(|c| format!("t.{}::bytea", ident(c))).collect();
    let sql = format!(
        "SELECT {1} FROM {0} t, pg_catalog.jsonb_populate_record(NULL::{0}, $1) v WHERE {2}",
        l.name,
        cols.join(", "),
        keys_match(&l.keys)
    );
    as_table_owner(l.rel, || {
        Spi::connect_mut(|c| {
            let t = c.update(&sql, Some(1), &[JsonB(key.clone()).into()])?;
            if t.is_empty() {
                return Ok(vec![None; names.len()]);
            }
            let r = t.first();
            (1..=names.len()).map(|i| r.get::<Vec<u8>>(i)).collect::<Result<Vec<_>, _>>()
        })
    })
    .unwrap_or_else(|e| fail(e))
}

/// The ops of the CRDT columns the write changed (merged in, or changed by
/// the table's own triggers): none may be another node's to decide.
fn record_crdt_ops(me: &str, l: &crate::apply::Layout, key: &Value, epoch: i64, names: &[String], before: &[Option<Vec<u8>>], after: &[Option<Vec<u8>>]) {
    let (mut cols, mut versions, mut deltas) = (Vec::new(), Vec::new(), Vec::new());
    for ((c, b), a) in names.iter().zip(before).zip(after) {
        if a.is_none() && b.is_some() {
            bad_decision(format!("a decision cannot set CRDT column \"{c}\" to NULL"));
        }
        let Some(a) = a.as_deref().filter(|a| Some(*a) != b.as_deref()) else { continue };
        let delta = match crate::trigger::delta_bytes(&l.crdt[c], a, b.as_deref()) {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(()) => bad_decision(format!("a decision cannot drop state from CRDT column \"{c}\"")),
        };
        if let Some(node) = l.column_authority(c, me) {
            bad_decision(format!("a decision here cannot change column \"{c}\": node \"{node}\" decides it"));
        }
        if let Some(node) = l.removes_only_node(c, me) {
            use converge_core::authority::{removal, Removal};
            match removal(&delta, me) {
                None => {}
                Some(Removal::Covers) => {
                    bad_decision(format!("a decision here cannot remove from column \"{c}\": node \"{node}\" decides removals"))
                }
                Some(Removal::OtherDots) => bad_decision(format!(
                    "a decision here cannot copy elements added by other nodes or devices into column \"{c}\": node \"{node}\" decides its removals"
                )),
            }
        }
        cols.push(c.clone());
        versions.push(l.version(c));
        deltas.push(delta);
    }
    if !cols.is_empty() {
        let key_datum = JsonB(key.clone()).into_datum().expect("jsonb");
        crate::commit_ops::record(me, &l.name, key_datum, &cols, &versions, epoch, deltas);
    }
}

/// The row op of the plain columns the write changed (the decision's, and
/// any the table's own triggers changed): none may be another node's to
/// decide (every other node would reject the op, and this row alone would
/// keep the change).
fn record_row_op(me: &str, l: &crate::apply::Layout, key: &Value, epoch: i64, old: &Map<String, Value>, new: Map<String, Value>) {
    let changed: Vec<&str> = l.other.iter().filter(|c| new.get(*c) != old.get(*c)).map(String::as_str).collect();
    for c in &changed {
        if let Some(node) = l.column_authority(c, me) {
            bad_decision(format!("a decision here cannot change column \"{c}\": node \"{node}\" decides it"));
        }
    }
    if changed.is_empty() {
        return;
    }
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
        // Checked above, with the decision's own messages.
        guard: None,
        // An update: only inserts write columns decided elsewhere.
        decided_elsewhere: Vec::new(),
    };
    crate::row_ops::record_values(me, ch, new);
}
