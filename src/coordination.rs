//! Coordination boundaries (SPEC section 5): authorities. A column with an
//! authority is written only by that node: elsewhere a local change fails
//! (the guard trigger, sql/coordination.sql), and an op of it made by any
//! other actor is rejected with `not_authority` (`authority_error`, called
//! by the apply's classification).

use crate::errors::{raise, raise_hint};
use std::collections::HashMap;
pub use converge_core::authority::{parse, Authorities, Authority};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// Why an op writes an authority column it may not (None: it may), by
/// converge-core's rules: an op that came through replication by
/// `violation`, one a client sends through `apply` by the stricter
/// `client_violation` (an insert carries authority columns only under
/// placeholder timestamps; the reason then says so).
pub fn authority_error(auth: &Authorities, column: &str, actor: &str, counter: i64, delta: &[u8], from_peer: bool) -> Option<String> {
    use converge_core::authority::{client_violation, violation};
    if violation(auth, column, actor, Some(counter), delta).is_some() {
        return Some("not_authority".into());
    }
    if from_peer {
        return None;
    }
    let (col, _) = client_violation(auth, column, actor, Some(counter), delta)?;
    Some(format!("not_authority: a client's insert carries {col} only under a placeholder timestamp"))
}

/// A local change of a column with an authority elsewhere fails here, by
/// the rule the other nodes apply to this node's op (`violation` in
/// converge-core), so a change this node keeps is never rejected by them.
/// The guard trigger (sql/coordination.sql) stops most such changes
/// earlier; this also catches one it cannot see (a user's BEFORE trigger
/// setting the column outside the UPDATE's SET list).
pub fn guard_local(auth: &Authorities, table: &str, crdt_types: &HashMap<String, String>, column: &str, me: &str, delta: &[u8]) {
    use converge_core::authority::{removal, violation, Removal};
    if auth.is_empty() {
        return;
    }
    let Some((name, a)) = violation(&auth, column, me, None, delta) else {
        // Held here. A transaction whose snapshot is older than a handover
        // committed since passed the guards: checked again when it takes
        // its counters (commit_ops::note_held). A newer snapshot sees the
        // handover (its table lock made this wait).
        if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
            let held = converge_core::authority::held_written(&auth, column, me, delta);
            if !held.is_empty() {
                crate::commit_ops::note_held(table, &held);
            }
        }
        return;
    };
    if a.node == me {
        raise_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("column \"{name}\" of {} was handed over to this node, which has not taken it", table),
            format!("Take it with converge.set_authority('{}', '{}', '{me}').", table.replace('\'', "''"), name.replace('\'', "''")),
        );
    }
    let node = &a.node;
    let lit = |x: &str| x.replace('\'', "''");
    // A request for a CRDT column needs a decide function (requests/mod.rs).
    let ask = if crate::requests::decide::has_decide_function(table, name) {
        format!(", or ask node \"{node}\" with converge.request('{}', key, '{}', value), which its decide function decides", lit(table), lit(name))
    } else {
        String::new()
    };
    let (message, hint) = match (a.removes_only, removal(delta, me)) {
        // As the guard trigger says it. (`(true, None)` does not happen:
        // violation holds on a removes_only column only when removal does.)
        (false, _) | (true, None) => (
            format!("column \"{name}\" of {} is decided by node \"{node}\"", table),
            if crdt_types.contains_key(name) {
                format!("Change it on node \"{node}\"{ask}.")
            } else {
                format!("Ask node \"{node}\" with converge.request('{}', key, '{}', value).", lit(table), lit(name))
            },
        ),
        (true, Some(Removal::Covers)) => (
            format!("removals from column \"{name}\" of {} are decided by node \"{node}\"", table),
            match crdt_types.get(name).map(String::as_str) {
                Some("ormap") => format!("Adds, increments and assigns stay local everywhere; remove it on node \"{node}\"{ask}."),
                _ => format!("Adds stay local everywhere; remove it on node \"{node}\"{ask}."),
            },
        ),
        // Copying elements made elsewhere would reuse their dots, which is
        // also how a forged op would replace an element (see `removal`).
        (true, Some(Removal::OtherDots)) => (
            format!(
                "elements added by other nodes or devices cannot be copied into column \"{name}\" of {} here: node \"{node}\" decides its removals",
                table
            ),
            "Add the elements here with converge.add, or copy the value on that node.".to_string(),
        ),
    };
    raise_hint(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, message, hint)
}

/// A scalar subquery giving the authority columns of the table that the
/// SQL expression `rel` names, as text that `parse` reads (NULL: none).
/// The row trigger's layout and the apply's targets both read it.
pub fn authorities_sql(rel: &str) -> String {
    authority_sql(rel, "a.column_name <> ''")
}

/// The same for the table's authority (under the name `""`).
pub fn table_authority_sql(rel: &str) -> String {
    authority_sql(rel, "a.column_name = ''")
}

fn authority_sql(rel: &str, which: &str) -> String {
    format!(
        "(SELECT jsonb_object_agg(a.column_name, jsonb_build_array(a.node, a.default_value, a.removes_only, a.since, a.earlier))::text
            FROM converge.authority a WHERE a.table_name = {rel} AND {which})"
    )
}

/// (Re)make the guard trigger of table `tbl` (as the caller, its owner)
/// for its current authority columns, or drop it when none is left.
pub fn make_guard(tbl: pg_sys::Oid) {
    let err = |e: pgrx::spi::SpiError| -> ! { raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()) };
    let Some(name) = crate::spi::read_one::<String>("SELECT $1::oid::regclass::text", &[tbl.into()]) else { return };
    let columns: Vec<String> = crate::security::as_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT column_name FROM converge.authority WHERE table_name = $1::oid::regclass AND column_name <> '' AND NOT removes_only
                  ORDER BY column_name",
                None,
                &[tbl.into()],
            )
            .map(|t| t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
        })
    })
    .unwrap_or_else(|e| err(e));
    let cols: Vec<String> = columns.iter().map(|c| crate::rows::ident(c)).collect();
    // The guard's columns now (None: no guard). Unchanged, no DDL: it
    // would lock the table against readers (a handover runs this).
    let guarded = crate::spi::read_one::<Vec<String>>(
        "SELECT ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(t.tgattr) k JOIN pg_catalog.pg_attribute a
                        ON a.attrelid = t.tgrelid AND a.attnum = k ORDER BY 1)
           FROM pg_catalog.pg_trigger t WHERE t.tgrelid = $1 AND t.tgname = 'converge_authority_guard'",
        &[tbl.into()],
    );
    if guarded.as_ref() == Some(&columns) || (guarded.is_none() && columns.is_empty()) {
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(tbl) };
        return;
    }
    if guarded.is_some() {
        Spi::run(&format!("DROP TRIGGER converge_authority_guard ON {name}")).unwrap_or_else(|e| err(e));
    }
    if !cols.is_empty() {
        Spi::run(&format!(
            "CREATE TRIGGER converge_authority_guard BEFORE INSERT OR UPDATE OF {} ON {name}
             FOR EACH ROW WHEN (NOT converge.applying()) EXECUTE FUNCTION converge.guard_authority()",
            cols.join(", ")
        ))
        .unwrap_or_else(|e| err(e));
    }
    // Sessions cache the table as the apply resolved it (with its authorities).
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(tbl) };
}

/// `converge.set_authority`: only the table's owner may set one. The
/// setting is recorded as converge's owner; the guard trigger is made again
/// (as the table's owner) for the table's current authority columns.
#[pg_extern(volatile, parallel_unsafe)]
fn set_authority_on(
    tbl: Option<pg_sys::Oid>,
    col: Option<&str>,
    node: Option<&str>,
    decide: Option<pg_sys::Oid>,
    removes_only: Option<bool>,
) {
    let Some(tbl) = tbl else { raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "the table must not be NULL") };
    let name = crate::spi::read_one::<String>("SELECT $1::oid::regclass::text", &[tbl.into()])
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, "no such table"));
    if !unsafe { pg_sys::pg_class_ownercheck(tbl, pg_sys::GetUserId()) } {
        raise(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("must be owner of table {name} to set its authority"));
    }
    use crate::handover::Plan;
    if let Some(n) = node.filter(|n| converge_core::actor::validate_actor(n).is_err()) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid authority node \"{n}\": use 1-63 of A-Z a-z 0-9 _ . - (the node's converge.node())"),
        );
    }
    let plan = node.map_or(Plan::Store, |node| crate::handover::plan(tbl, &name, col, node));
    // A handover keeps the holder in the setting until it is recorded (and
    // a refusal, raised once the arguments are checked, changes nothing).
    let stored = match &plan {
        Plan::End { .. } => crate::node::local_node_if_set(),
        Plan::Refuse { holder, .. } => Some(holder.clone()),
        _ => node.map(String::from),
    };
    crate::security::as_owner(|| {
        crate::errors::plain_errors(|| {
            Spi::run_with_args(
                "SELECT converge.store_authority($1::oid::regclass, $2, $3, $4::oid::regprocedure, $5)",
                &[tbl.into(), col.into(), stored.into(), decide.into(), removes_only.unwrap_or(false).into()],
            )
        })
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
    if let Plan::Refuse { message, hint, .. } = plan {
        crate::errors::raise_hint(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, message, hint);
    }
    // (Before a handover takes the op counter: no DDL while it is held.)
    make_guard(tbl);
    unsafe { pg_sys::CommandCounterIncrement() };
    match plan {
        Plan::End { since, earlier } => crate::handover::end(tbl, &name, col, node.expect("named"), since, earlier),
        Plan::Take { earlier } => {
            crate::handover::take(tbl, col, earlier);
            unsafe { pg_sys::CommandCounterIncrement() };
            // Requests that waited while nobody held it.
            crate::requests::decide_pending();
        }
        Plan::Store => {
            if let (None, Some(node)) = (col, node) {
                reapply(freezes_refused(tbl, node));
            }
            settle_handovers(tbl, &name, col);
        }
        Plan::Refuse { .. } => unreachable!("raised above"),
    }
}

/// Handovers of (table `tbl`, `col`) that came through replication before
/// this node had a setting they follow (rejected `not_authority`): applied
/// now if they follow this one. One that still does not would leave this
/// node judging the column apart from the others: refused (the setting
/// is not recorded).
fn settle_handovers(tbl: pg_sys::Oid, name: &str, col: Option<&str>) {
    let refused = || {
        kept_aside(
            "l.target_table = 'converge.handover' AND l.reason LIKE 'not\\_authority: %' AND l.origin LIKE 'peer:%'
             AND l.target_key ->> 'column' = coalesce($2, '')
             AND l.target_key ->> 'table' = (SELECT format('%I.%I', n.nspname, k.relname) FROM pg_class k
                                              JOIN pg_namespace n ON n.oid = k.relnamespace WHERE k.oid = $1)",
            "true",
            &[tbl.into(), col.into()],
        )
    };
    let waiting = refused();
    if waiting.is_empty() {
        return;
    }
    reapply(waiting);
    unsafe { pg_sys::CommandCounterIncrement() };
    if !refused().is_empty() {
        let what = col.map_or(format!("table {name}"), |c| format!("column \"{c}\" of {name}"));
        crate::errors::raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("a handover of the authority of {what} reached this node before this setting, and does not follow it"),
            "Set it here as it was set on the other nodes before the handover (their converge.authorities show its terms), then again.",
        );
    }
}

/// Freezes of the table by `node` that its replication brought before this
/// node knew `node` as the table's authority (rejected `not_authority`
/// then, and applied by nothing since): set_authority applies them now.
fn freezes_refused(tbl: pg_sys::Oid, node: &str) -> Vec<(Vec<u8>, String)> {
    // Any copy that came through replication (the reason says so: a
    // client's freeze is plain not_authority), also one a third node
    // forwarded after applying it.
    kept_aside(
        "l.target_table = 'converge.freeze' AND l.actor = $2 AND l.reason LIKE 'not\\_authority: %'
         AND l.origin LIKE 'peer:%'
         AND l.target_key ->> 'table' = (SELECT format('%I.%I', n.nspname, k.relname) FROM pg_class k
                                          JOIN pg_namespace n ON n.oid = k.relnamespace WHERE k.oid = $1)",
        "true",
        &[tbl.into(), node.into()],
    )
}

/// Ops kept aside here that `pick` (SQL over `q`) chooses among those of
/// `scope` (SQL over op_log `l`) whose last outcome is rejected or
/// quarantined and that were not applied since, oldest first: each op's
/// binary form and where it came from (for `reapply`).
pub(crate) fn kept_aside(scope: &str, pick: &str, args: &[pgrx::datum::DatumWithOid]) -> Vec<(Vec<u8>, String)> {
    let sql = format!(
        "SELECT converge.op_encode(ROW(q.op_id, q.actor, q.target_table, q.target_key, q.target_column, q.schema_version,
                                       q.epoch, q.deps, q.delta, q.signature)::converge.op), q.origin
           FROM (SELECT DISTINCT ON (l.op_id) l.* FROM converge.op_log l
                  WHERE l.outcome IN ('rejected', 'quarantined') AND {scope}
                  -- (a peer's delivery first: a client sending the op id later must not hide it)
                  ORDER BY l.op_id, l.origin LIKE 'peer:%' DESC, l.seq DESC) q
          WHERE {pick}
            AND NOT EXISTS (SELECT 1 FROM converge.op_log a WHERE a.actor = q.actor AND a.counter = q.counter AND a.outcome = 'applied'
                              -- (a peer's delivery takes a void's place: apply/voids.rs)
                              AND (a.target_table <> 'converge.void' OR q.origin NOT LIKE 'peer:%'))
            -- (nor given up by a repair: applied again, it would be superseded)
            AND NOT EXISTS (SELECT 1 FROM converge.superseded s WHERE s.op_id = q.op_id)
          ORDER BY q.seq"
    );
    crate::security::as_owner(|| {
        Spi::connect(|c| {
            c.select(&sql, None, args)
                .map(|t| t.filter_map(|r| Some((r.get::<Vec<u8>>(1).ok()??, r.get::<String>(2).ok()??))).collect())
        })
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))
}

/// `converge.set_schema_version(tbl, col, version)`: the merge semantics
/// column `col` (NULL: the row ops of the plain columns) now follows. Run
/// on every node, by the table's owner, like set_authority. Local ops carry
/// it; ops made under another version are kept aside (`quarantined`,
/// `old_schema` or `new_schema`, apply/classify.rs). Ops kept aside as
/// `new_schema` that carry this version are applied again now.
#[pg_extern(volatile, parallel_unsafe)]
fn set_schema_version_on(tbl: Option<pg_sys::Oid>, col: Option<&str>, version: Option<i32>) -> i64 {
    let Some(tbl) = tbl else { raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "the table must not be NULL") };
    let Some(version) = version.filter(|v| *v >= 1) else {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "a schema version is 1 or more")
    };
    let name = crate::spi::read_one::<String>("SELECT $1::oid::regclass::text", &[tbl.into()])
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, "no such table"));
    if !unsafe { pg_sys::pg_class_ownercheck(tbl, pg_sys::GetUserId()) } {
        raise(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("must be owner of table {name} to set its schema versions"));
    }
    let err = |e: pgrx::spi::SpiError| -> ! { raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()) };
    crate::security::as_owner(|| {
        crate::errors::plain_errors(|| {
            Spi::run_with_args(
                "SELECT converge.store_schema_version($1::oid::regclass, $2, $3)",
                &[tbl.into(), col.into(), version.into()],
            )
        })
    })
    .unwrap_or_else(|e| err(e));
    // Sessions cache the versions (the op trigger, the apply).
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(tbl) };
    unsafe { pg_sys::CommandCounterIncrement() };
    // The ops kept aside as new_schema that carry this version, with where
    // they came from: a peer's own ops are applied as that peer's (a client
    // may not send ops under a node's name), the others as the caller's.
    let waiting = kept_aside(
        "l.target_table = (SELECT format('%I.%I', n.nspname, k.relname) FROM pg_class k
                            JOIN pg_namespace n ON n.oid = k.relnamespace WHERE k.oid = $1)
         AND l.target_column = coalesce($2, '')",
        "q.outcome = 'quarantined' AND q.reason = 'new_schema' AND q.schema_version = $3",
        &[tbl.into(), col.into(), version.into()],
    );
    let n = waiting.len() as i64;
    reapply(waiting);
    n
}

/// Apply again ops kept aside here (each op's binary form and where it
/// came from), now that what they waited for is here: a peer's own ops as
/// that peer's (a client may not send ops under a node's name), the others
/// as the caller's. Not under a peer's origin (what is written there is
/// never shipped).
pub(crate) fn reapply(waiting: Vec<(Vec<u8>, String)>) {
    let decode = |b: &Vec<u8>| converge_core::Op::decode(b).unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, e.message));
    let mut by_origin: std::collections::BTreeMap<&str, Vec<converge_core::Op>> = std::collections::BTreeMap::new();
    for (b, origin) in &waiting {
        by_origin.entry(origin.as_str()).or_default().push(decode(b));
    }
    for (origin, ops) in by_origin {
        crate::apply::apply_again(ops, origin);
    }
}
