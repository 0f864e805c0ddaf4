//! Copying a peer's state instead of its ops (SPEC section 4): when the
//! peer has compacted its log past this node's frontier (changes_since
//! answers 55000), a node that joins (add_peer) or rejoins after being
//! marked lost takes the peer's rows instead, read in one snapshot
//! together with the peer's frontier: every key's row clock and CRDT state
//! (`converge.rejoin_rows` on the peer: a deleted row's state is its
//! stash) and its row base, then the ops still in the peer's log (beyond
//! those bases) as ops, and every op up to the peer's frontier counts as
//! applied here (its state holds them), so later copies and dedupe start
//! from there.
//!
//! How the peer's rows meet this node's depends on why:
//! - **A rejoin merges them.** The peer marked this node lost, and from
//!   then on, until this node reports having applied every op the peer
//!   folded, it compacts only its log, never a tombstone or a value's
//!   metadata (compact()); before that it dropped only what this node had
//!   applied. So this node's rows hold nothing the peer removed and then
//!   forgot, and merging is safe. It is also needed: this node may have
//!   marked the peer lost too and folded its own ops that the peer never
//!   received into its rows; they are in no log any more, only in those
//!   rows. The bases are merged likewise (a row is its base plus the ops
//!   left in the log, on both sides).
//! - **A join replaces them.** A node added as a peer was in nobody's
//!   stable frontier: the peer may have forgotten removals it never saw,
//!   so its old rows would bring them back. Its rows become the peer's,
//!   every op of its log that the peer has not applied is merged again on
//!   top, its bases become the peer's, and keys the peer deleted and
//!   forgot (no op here that the peer lacks) go.

use super::libpq::Conn;
use super::pull::QUERY_TIMEOUT;
use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use std::collections::HashSet;

fn fail(peer: &str, m: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, format!("peer \"{peer}\": rejoining from a snapshot: {m}"))
}

/// The binary form of a CRDT value given as text (validated).
fn binary(ty: &str, text: &str) -> Option<Vec<u8>> {
    for_crdt_type!(ty, T => converge_core::from_text::<T>(text).ok().map(|v| converge_core::encode(&v)), _ => None)
}

/// This node's replicated tables: (qualified name, {column: type}).
fn local_tables() -> Vec<(String, serde_json::Map<String, serde_json::Value>)> {
    Spi::connect(|c| {
        c.select(
            "SELECT format('%I.%I', n.nspname, c.relname), r.crdt_columns FROM converge.replicated r
               JOIN pg_class c ON c.oid = r.table_name JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 1",
            None,
            &[],
        )
        .map(|t| {
            t.filter_map(|r| {
                let name = r.get::<String>(1).ok()??;
                let cols = match r.get::<JsonB>(2).ok()?? {
                    JsonB(serde_json::Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                Some((name, cols))
            })
            .collect()
        })
        .unwrap_or_default()
    })
}

/// The peer's connection, in the snapshot's transaction.
struct Snap<'a> {
    peer: &'a str,
    conn: &'a mut Conn,
    stop: &'a dyn Fn() -> bool,
}

impl Snap<'_> {
    fn q(&mut self, sql: &str, params: &[&str]) -> super::libpq::Rows {
        self.q_within(sql, params, QUERY_TIMEOUT)
    }

    fn q_within(&mut self, sql: &str, params: &[&str], timeout: std::time::Duration) -> super::libpq::Rows {
        self.conn.query(sql, params, false, timeout, self.stop).unwrap_or_else(|e| fail(self.peer, e))
    }

    /// The last column of each row of `sql` (one text parameter), in binary form.
    fn binary(&mut self, sql: &str, param: &str) -> Vec<Vec<u8>> {
        let rows = self.conn.query(sql, &[param], true, QUERY_TIMEOUT, self.stop).unwrap_or_else(|e| fail(self.peer, e));
        rows.rows.into_iter().filter_map(|mut r| r.pop().flatten()).collect()
    }
}

/// Take the peer's rows (merged into this node's on a `rejoin`, replacing
/// them on a join); returns the keys taken.
pub fn copy_snapshot(peer: &str, conn: &mut Conn, origin: pg_sys::RepOriginId, stop: &dyn Fn() -> bool, rejoin: bool) -> usize {
    let mut snap = Snap { peer, conn, stop };
    snap.q("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", &[]);
    snap.q(NO_PEER_TIMEOUTS, &[]);
    let frontier = snap.q("SELECT converge.frontier()::text", &[]).text(0, 0).unwrap_or_else(|| "{}".into());
    let state = State::read(&mut snap);
    let merged = local_tables().into_iter().map(|(table, cols)| copy_rows(&mut snap, &table, &cols, &frontier, rejoin)).sum();
    // The ops still in the peer's log (those beyond its rows' bases): they
    // are in the rows just copied, and applied here as ops too, so this
    // node's bases fold them when they are stable, as the peer's will.
    let horizon = snap
        .q("SELECT coalesce(jsonb_object_agg(actor, upto), '{}')::text FROM converge.log_horizon", &[])
        .text(0, 0)
        .unwrap_or_else(|| "{}".into());
    let query = super::peers::changes_query(snap.conn, stop).unwrap_or_else(|e| fail(peer, e));
    let mut left = snap.binary(query, &horizon);
    // After the ops they may contest, so that a void of an op applied
    // here is a duplicate, as it is there.
    let (more, held) = voids(&mut snap, &horizon);
    // (changes_since gives applied ops only: its voids hold their counters there.)
    let given = left.len();
    left.extend(more);
    snap.q("COMMIT", &[]);
    state.store();
    if !rejoin {
        let held: Vec<Vec<u8>> = left.iter().enumerate().filter(|(i, b)| *i < given || held.contains(*b)).map(|(_, b)| b.clone()).collect();
        let taken = take_at_join(held, &frontier, peer, origin);
        // (Only the voids: the op itself, contested there, is given too.)
        left.retain(|b| converge_core::Op::decode(b).map_or(true, |o| o.target_table != crate::apply::VOID || !taken.contains(&o.op_id)));
    }
    super::pull::apply_encoded(left, peer, origin, 0, 0);
    note_copied(peer, &horizon, &frontier);
    pgrx::log!("converge: merged {merged} keys from the snapshot of peer \"{peer}\" (its log is compacted past our frontier)");
    merged
}

/// A join: of the peer's ops `held`, the voids that hold their counter
/// there (applied, at or below its `frontier`, which the join's rows
/// stand for). Where this node had applied the op itself, the join
/// dropped its effect with the rows, so it gives way to the void here
/// too (apply/voids.rs `take_at_join`, under the peer's origin, as the
/// copy's other writes). Returns the op_ids of the voids so applied.
fn take_at_join(held: Vec<Vec<u8>>, frontier: &str, peer: &str, origin: pg_sys::RepOriginId) -> HashSet<String> {
    let upto: serde_json::Map<String, serde_json::Value> = serde_json::from_str(frontier).unwrap_or_default();
    let mut seen = HashSet::new();
    let voids: Vec<Vec<u8>> = held
        .into_iter()
        .filter(|b| {
            converge_core::Op::decode(b).is_ok_and(|o| {
                let covered = o.counter() as i64 <= upto.get(&o.actor).and_then(|v| v.as_i64()).unwrap_or(0);
                o.target_table == crate::apply::VOID && covered && seen.insert(o.op_id)
            })
        })
        .collect();
    if voids.is_empty() {
        return HashSet::new();
    }
    super::pull::setup_origin(origin, 0, 0);
    crate::apply::take_at_join(&voids, &format!("peer:{peer}"))
}

/// The peer's voids that `changes_since(horizon)` does not give
/// (apply/voids.rs): those applied at or below the horizon, each holding
/// its counter there (a real op that comes later takes its place, here as
/// there), and those that gave way to an op or came after it, which mark
/// the op as contested (changes_since gives it to a caller past its
/// counter). Compaction keeps them all. None from a peer before 0.2.0.
/// Also, of those, the ones applied there.
fn voids(q: &mut Snap, horizon: &str) -> (Vec<Vec<u8>>, HashSet<Vec<u8>>) {
    if q.q("SELECT to_regclass('converge.op_log_voids') IS NOT NULL", &[]).text(0, 0).as_deref() != Some("t") {
        return Default::default();
    }
    let sql = "SELECT converge.op_encode(ROW(l.op_id, l.actor, l.target_table, l.target_key, l.target_column, l.schema_version,
                                             l.epoch, l.deps, l.delta, l.signature)::converge.op), l.outcome = 'applied'
                 FROM (SELECT DISTINCT ON (v.op_id) v.* FROM converge.op_log v
                        WHERE v.target_table = 'converge.void' AND v.outcome IN ('applied', 'duplicate', 'superseded')
                          AND (v.outcome <> 'applied' OR v.counter <= coalesce(($1::jsonb ->> v.actor)::int8, 0))
                        ORDER BY v.op_id, v.seq) l";
    let rows = q.conn.query(sql, &[horizon], true, QUERY_TIMEOUT, q.stop).unwrap_or_else(|e| fail(q.peer, e));
    let (mut all, mut applied) = (Vec::new(), HashSet::new());
    for mut r in rows.rows {
        // (A bool in binary form is one byte, 1 for true.)
        let held = r.pop().flatten().is_some_and(|b| b == [1]);
        if let Some(op) = r.pop().flatten() {
            if held {
                applied.insert(op.clone());
            }
            all.push(op);
        }
    }
    (all, applied)
}

/// converge's own state on the peer, copied as state: its ops may be
/// compacted away there, or lie below the horizon a copy starts from. A
/// peer of an older release may lack a table (then nothing is copied).
struct State {
    /// The actor registry.
    registry: Vec<(Option<String>, Option<String>, Option<String>)>,
    /// The repairs.
    superseded: Vec<(String, String)>,
    /// The freezes: the rows copied are frozen there, and this node's own
    /// ops they keep out must be kept out here.
    freezes: Vec<(String, serde_json::Value, i64, String, serde_json::Value, Vec<String>)>,
    /// Requests (an outcome is state) and allocations.
    requests: Vec<Vec<Option<String>>>,
    allocations: Vec<Vec<Option<String>>>,
    /// Handovers of authorities.
    handovers: Vec<(String, String, String, Option<i64>, String)>,
    /// The clocks of the row tombstones the peer dropped, per table (a
    /// key inserted again here must write newer than them too).
    floors: Vec<Vec<Option<String>>>,
}

impl State {
    fn read(q: &mut Snap) -> State {
        let mut has = |sql: &str| q.q(sql, &[]).text(0, 0).as_deref() == Some("t");
        let table = |t: &str| format!("SELECT to_regclass('{t}') IS NOT NULL");
        let (registry, superseded, freezes, requests, allocations) = (
            has(&table("converge.actor")),
            has(&table("converge.superseded")),
            has(&table("converge.frozen")),
            has(&table("converge.requests")),
            has(&table("converge.allocations")),
        );
        let column = |t: &str, c: &str| format!("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('{t}') AND attname = '{c}')");
        let handovers = has(&column("converge.authority", "earlier"));
        let floors = has(&column("converge.replicated", "tombstone_clock"));
        let micros = |c: &str| format!("(extract(epoch FROM {c}) * 1000000)::int8::text");
        let all = |q: &mut Snap, sql: &str, n: usize| -> Vec<Vec<Option<String>>> {
            let r = q.q(sql, &[]);
            (0..r.rows.len()).map(|i| (0..n).map(|c| r.text(i, c)).collect()).collect()
        };
        let mut state =
            State { registry: vec![], superseded: vec![], freezes: vec![], requests: vec![], allocations: vec![], handovers: vec![], floors: vec![] };
        if registry {
            let rows = all(q, "SELECT actor, encode(key_state, 'hex'), revoked_after::text FROM converge.actor", 3);
            state.registry = rows.into_iter().map(|mut r| (r.remove(0), r.remove(0), r.remove(0))).collect();
        }
        if superseded {
            let rows = all(q, "SELECT op_id, repair_id FROM converge.superseded", 2);
            state.superseded = rows.into_iter().filter_map(|mut r| Some((r.remove(0)?, r.remove(0)?))).collect();
        }
        if freezes {
            let sql = "SELECT target_table, target_key::text, epoch::text, freeze_id, frontier::text, array_to_json(extras)::text FROM converge.frozen";
            state.freezes = all(q, sql, 6).into_iter().filter_map(|r| freeze(&r)).collect();
        }
        if requests {
            let sql = format!(
                "SELECT request_id, target_table, target_key::text, target_column, value::text, idempotency_key, requested_by, {},
                        status, decision::text, reason, {}, decision_id
                   FROM converge.requests ORDER BY requested_at, request_id",
                micros("requested_at"),
                micros("decided_at")
            );
            state.requests = all(q, &sql, 13);
        }
        if allocations {
            let sql = format!("SELECT name, idempotency_key, value::text, {}, allocated_by FROM converge.allocations", micros("allocated_at"));
            state.allocations = all(q, &sql, 5);
        }
        if handovers {
            let sql = "SELECT format('%I.%I', n.nspname, c.relname), a.column_name, a.node, a.since::text, a.earlier::text
                         FROM converge.authority a JOIN pg_class c ON c.oid = a.table_name JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE a.earlier <> '[]'";
            state.handovers = all(q, sql, 5)
                .into_iter()
                .filter_map(|mut r| {
                    let since = r[3].take().and_then(|s| s.parse().ok());
                    Some((r[0].take()?, r[1].take()?, r[2].take()?, since, r[4].take()?))
                })
                .collect();
        }
        if floors {
            let sql = "SELECT format('%I.%I', n.nspname, c.relname), r.tombstone_clock::text
                         FROM converge.replicated r JOIN pg_class c ON c.oid = r.table_name JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE r.tombstone_clock IS NOT NULL";
            state.floors = all(q, sql, 2);
        }
        state
    }

    /// Stored here (after the peer's transaction ended).
    fn store(self) {
        crate::actors::merge_registry_state(self.registry);
        if !self.superseded.is_empty() {
            crate::actors::lock_registry(true);
            crate::repair::supersede(self.superseded);
        }
        if !self.freezes.is_empty() {
            crate::actors::lock_registry(true);
            crate::epochs::copy_freezes(self.freezes);
        }
        crate::handover::copy_handovers(self.handovers);
        crate::requests::copy_requests(self.requests);
        crate::allocation::copy_allocations(self.allocations);
        for floor in self.floors {
            if let [Some(table), Some(clock)] = &floor[..] {
                Spi::run_with_args(
                    "SELECT converge.raise_tombstone_floor(pg_catalog.to_regclass($1), $2::converge.lwwmap)",
                    &[table.as_str().into(), clock.as_str().into()],
                )
                .unwrap_or_else(|e| fail(table, e));
            }
        }
    }
}

/// One row of `converge.frozen` as `copy_freezes` takes it.
fn freeze(r: &[Option<String>]) -> Option<(String, serde_json::Value, i64, String, serde_json::Value, Vec<String>)> {
    let json = |c: usize| r[c].as_deref().and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok());
    let extras = json(5)?.as_array()?.iter().filter_map(|x| x.as_str().map(String::from)).collect();
    Some((r[0].clone()?, json(1)?, r[2].as_deref()?.parse().ok()?, r[3].clone()?, json(4)?, extras))
}

/// For a copy's transaction on the peer, which waits idle while each
/// fetch is applied here, and whose first fetch may run long: the peer's
/// own limits (`idle_in_transaction_session_timeout`, often a minute,
/// `statement_timeout`) would end it; this node's timeouts bound it.
pub(super) const NO_PEER_TIMEOUTS: &str =
    "SELECT set_config('idle_in_transaction_session_timeout', '0', true), set_config('statement_timeout', '0', true)";

/// Rows of `rejoin_rows` read per fetch: each fetch has a timeout of its
/// own, and this node holds one batch at a time.
const FETCH: usize = 2000;

/// How long the peer may take to read one table for a copy.
pub(super) const COPY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The peer's rows of one table, merged into this node's (a rejoin) or
/// replacing them (a join), a batch of keys at a time (each key whole);
/// returns the keys taken.
fn copy_rows(q: &mut Snap, table: &str, cols: &serde_json::Map<String, serde_json::Value>, frontier: &str, rejoin: bool) -> usize {
    let sql = "SELECT target_key::text, crdt::text, clock, live, base::text FROM converge.rejoin_rows";
    q.q(&format!("DECLARE converge_rows NO SCROLL CURSOR FOR {sql}({}::regclass)", crate::rows::literal(table)), &[]);
    // A join needs the peer's keys (forget_missing); a rejoin counts them.
    let (mut theirs, mut merged): (HashSet<String>, usize) = (HashSet::new(), 0);
    let mut first = true;
    loop {
        // The first fetch runs rejoin_rows, which reads the whole table
        // before it returns a row: it may take longer than a query.
        let within = if std::mem::take(&mut first) { COPY_TIMEOUT } else { QUERY_TIMEOUT };
        let rows = q.q_within(&format!("FETCH {FETCH} FROM converge_rows"), &[], within);
        if rows.rows.is_empty() {
            break;
        }
        let (entries, bases) = read_rows(q.peer, &rows, table, cols);
        merged += rows.rows.len();
        if rejoin {
            crate::apply::merge_states(table, entries, false);
            merge_bases(table, bases);
        } else {
            // A join takes the peer's rows as they are there.
            theirs.extend(crate::apply::merge_states(table, entries, true).iter().map(|k| k.to_string()));
            adopt_bases(table, bases);
        }
    }
    q.q("CLOSE converge_rows", &[]);
    if !rejoin {
        // Then every op of ours the peer has not applied, again.
        crate::apply::merge_states(table, ours_beyond(table, frontier), false);
        forget_missing(table, &theirs, frontier);
    }
    merged
}

/// One fetch of `rejoin_rows` as entries (key, column, binary state: the
/// row clock under "") and row bases.
fn read_rows(
    peer: &str,
    rows: &super::libpq::Rows,
    table: &str,
    cols: &serde_json::Map<String, serde_json::Value>,
) -> (Vec<(serde_json::Value, String, Vec<u8>)>, Vec<(serde_json::Value, serde_json::Value)>) {
    let mut entries = Vec::new();
    let mut bases = Vec::new();
    for i in 0..rows.rows.len() {
        let key: serde_json::Value = serde_json::from_str(&rows.text(i, 0).unwrap_or_default()).unwrap_or_default();
        if let Some(clock) = rows.text(i, 2).and_then(|c| binary("lwwmap", &c)) {
            entries.push((key.clone(), String::new(), clock));
        }
        if let Some(b) = rows.text(i, 4).and_then(|b| serde_json::from_str(&b).ok()) {
            bases.push((key.clone(), b));
        }
        let crdt: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&rows.text(i, 1).unwrap_or_default()).unwrap_or_default();
        for (col, v) in crdt {
            let (Some(ty), Some(text)) = (cols.get(&col).and_then(|t| t.as_str()), v.as_str()) else { continue };
            match binary(ty, text) {
                Some(b) => entries.push((key.clone(), col, b)),
                None => fail(peer, format!("{table}.{col} of {key} is not a valid {ty}")),
            }
        }
    }
    (entries, bases)
}

/// What the copy brought, noted: ops up to the peer's horizon are in this
/// node's rows, not its log (an older cursor must get 55000 here too), and
/// every op up to the peer's frontier is in this node's state.
fn note_copied(peer: &str, horizon: &str, frontier: &str) {
    Spi::run_with_args(
        "INSERT INTO converge.log_horizon AS h (actor, upto)
         SELECT e.key, e.value::int8 FROM jsonb_each_text($1::jsonb) e
             ON CONFLICT (actor) DO UPDATE SET upto = greatest(h.upto, EXCLUDED.upto)",
        &[horizon.into()],
    )
    .unwrap_or_else(|e| fail(peer, e));
    let me = crate::node::local_node_if_set().unwrap_or_default();
    Spi::run_with_args(
        "INSERT INTO converge.actor_frontier AS f (actor, contiguous)
         SELECT e.key, e.value::int8 FROM jsonb_each_text($1::jsonb) e WHERE e.key <> $2
             ON CONFLICT (actor) DO UPDATE SET contiguous = greatest(f.contiguous, EXCLUDED.contiguous)",
        &[frontier.into(), me.as_str().into()],
    )
    .unwrap_or_else(|e| fail(peer, e));
}

/// The peer's row bases merged into ours (a rejoin): our row is our base
/// and our log, the peer's copied into it is its base and its log (whose
/// ops are applied here next), so the merged row is the merged base and
/// the ops left in our log.
fn merge_bases(table: &str, bases: Vec<(serde_json::Value, serde_json::Value)>) {
    let keys: Vec<JsonB> = bases.iter().map(|(k, _)| JsonB(k.clone())).collect();
    let states: Vec<JsonB> = bases.into_iter().map(|(_, b)| JsonB(b)).collect();
    Spi::run_with_args(
        "INSERT INTO converge.row_base AS b (target_table, target_key, target_column, state)
         SELECT $1, u.key, e.key, decode(e.value, 'base64')
           FROM unnest($2::jsonb[], $3::jsonb[]) u(key, base), jsonb_each_text(u.base) e, converge.replicated r
          -- A base of a column that is no CRDT column here any more has no
          -- type to merge by (compact() skips those ops likewise).
          WHERE r.table_name = to_regclass($1) AND (e.key = '' OR r.crdt_columns ? e.key)
             ON CONFLICT (target_table, target_key, target_column) DO UPDATE
            SET state = converge.merge_deltas(CASE WHEN b.target_column = '' THEN 'lwwmap'
                                                   ELSE (SELECT r.crdt_columns ->> b.target_column FROM converge.replicated r
                                                          WHERE r.table_name = to_regclass(b.target_table)) END,
                                              ARRAY[b.state, EXCLUDED.state])",
        &[table.into(), keys.into(), states.into()],
    )
    .unwrap_or_else(|e| fail(table, e));
}

/// The peer's row bases replace ours for its keys: every op it folded is
/// stable and is now in our rows too, so a row here is again its base and
/// the ops in our log beyond it (converge.rebuild, and what compaction may
/// drop, rely on that).
fn adopt_bases(table: &str, bases: Vec<(serde_json::Value, serde_json::Value)>) {
    let keys: Vec<JsonB> = bases.iter().map(|(k, _)| JsonB(k.clone())).collect();
    let states: Vec<JsonB> = bases.into_iter().map(|(_, b)| JsonB(b)).collect();
    // Two statements: a data-modifying CTE's DELETE would not be seen by
    // the INSERT of the same statement.
    let keys2: Vec<JsonB> = keys.iter().map(|k| JsonB(k.0.clone())).collect();
    Spi::run_with_args(
        "DELETE FROM converge.row_base b WHERE b.target_table = $1 AND b.target_key = ANY ($2::jsonb[])",
        &[table.into(), keys2.into()],
    )
    .unwrap_or_else(|e| fail(table, e));
    Spi::run_with_args(
        "INSERT INTO converge.row_base (target_table, target_key, target_column, state)
         SELECT $1, u.key, e.key, decode(e.value, 'base64') FROM unnest($2::jsonb[], $3::jsonb[]) u(key, base), jsonb_each_text(u.base) e",
        &[table.into(), keys.into(), states.into()],
    )
    .unwrap_or_else(|e| fail(table, e));
}

/// The deltas of the applied ops of `table` in this node's log that the
/// peer (at `frontier`) has not applied, in log order.
fn ours_beyond(table: &str, frontier: &str) -> Vec<(serde_json::Value, String, Vec<u8>)> {
    Spi::connect(|c| {
        c.select(
            "SELECT l.target_key, l.target_column, l.delta FROM converge.op_log l
              WHERE l.target_table = $1 AND l.outcome = 'applied' AND l.delta IS NOT NULL
                AND l.counter > coalesce(($2::jsonb ->> l.actor)::int8, 0)
              ORDER BY l.seq",
            None,
            &[table.into(), frontier.into()],
        )
        .map(|t| {
            t.filter_map(|r| Some((r.get::<JsonB>(1).ok()??.0, r.get::<String>(2).ok()??, r.get::<Vec<u8>>(3).ok()??)))
                .collect()
        })
        .unwrap_or_default()
    })
}

/// Keys of `table` that have converge state here and are not among the
/// peer's (`theirs`), with no op here that the peer lacks (beyond its
/// `frontier`): the peer deleted them and forgot the tombstone, so the row
/// and its state go (no op recorded: the others have forgotten it too).
fn forget_missing(table: &str, theirs: &HashSet<String>, frontier: &str) {
    let candidates: Vec<JsonB> = Spi::connect(|c| {
        c.select(
            "SELECT rs.target_key FROM converge.row_state rs WHERE rs.tbl = $1::regclass
                AND NOT EXISTS (SELECT 1 FROM converge.op_log l
                                 WHERE l.target_table = $1 AND l.target_key = rs.target_key AND l.outcome = 'applied'
                                   AND l.counter > coalesce(($2::jsonb ->> l.actor)::int8, 0))",
            None,
            &[table.into(), frontier.into()],
        )
        .map(|t| t.filter_map(|r| r.get::<JsonB>(1).ok().flatten()).collect())
        .unwrap_or_default()
    });
    let gone: Vec<JsonB> = candidates.into_iter().filter(|k| !theirs.contains(&k.0.to_string())).collect();
    if gone.is_empty() {
        return;
    }
    let sql = format!(
        "WITH k AS (SELECT unnest($1::jsonb[]) AS key)
         DELETE FROM {table} t USING k, LATERAL pg_catalog.jsonb_populate_record(NULL::{table}, k.key) v WHERE {}",
        key_match(table)
    );
    let rel = crate::spi::read_one::<pg_sys::Oid>("SELECT $1::regclass::oid", &[table.into()]).unwrap_or(pg_sys::InvalidOid);
    crate::trigger::set_applying(true);
    let keys = || gone.iter().map(|k| JsonB(k.0.clone())).collect::<Vec<JsonB>>();
    crate::security::as_writer(rel, || Spi::run_with_args(&sql, &[keys().into()])).unwrap_or_else(|e| fail(table, e));
    crate::trigger::set_applying(false);
    // Their clocks stay, in the table's floor (compact() in maintenance.sql).
    Spi::run_with_args(
        "WITH gone AS (DELETE FROM converge.row_state WHERE tbl = $1::regclass AND target_key = ANY ($2::jsonb[]) RETURNING tbl, clock)
         SELECT converge.raise_tombstone_floor(tbl, converge.merge_agg(clock)) FROM gone GROUP BY tbl",
        &[table.into(), keys().into()],
    )
    .unwrap_or_else(|e| fail(table, e));
}

/// `t.k = v.k AND ...` over the key columns of `table`.
fn key_match(table: &str) -> String {
    let keys = crate::spi::read_one::<Vec<String>>(
        "SELECT key_columns FROM converge.replicated WHERE table_name = $1::regclass",
        &[table.into()],
    )
    .unwrap_or_default();
    crate::rows::keys_match(&keys)
}
