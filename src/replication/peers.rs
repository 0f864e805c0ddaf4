//! Peers: `add_peer`, `remove_peer`, `sync`, `wait_for_peers`,
//! `pause_peer`/`resume_peer`. The tables and the `converge.peers` view are
//! in sql/replication.sql.
//!
//! Names, per database so several databases of one server can each run
//! converge:
//! - our slot on the peer: `converge_<this node>_<8 hex of (system id, db)>`;
//! - the peer's replication origin here: `converge_<db oid>_<peer>`.

use super::libpq::{Conn, PeerError};
use super::pull::{apply_encoded, connect_peer, load_peers, origin_id, pull_round, QUERY_TIMEOUT};
use crate::errors::{raise, raise_hint};
use crate::node;
use crate::spi::read_one;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::time::{Duration, Instant};

fn interrupt() -> bool {
    pgrx::check_for_interrupts!();
    false
}

fn peer_failed(peer: &str, e: PeerError) -> ! {
    let code = match e.sqlstate.as_deref() {
        None => PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
        // (connect_peer's refusal of a connection without the password, or
        // a privilege the peer role lacks there.)
        Some("42501") => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        Some(_) => PgSqlErrorCode::ERRCODE_FDW_ERROR,
    };
    raise(code, format!("peer \"{peer}\": {}", e.message))
}

fn connect(peer: &str, conninfo: &str) -> Conn {
    Conn::connect(conninfo).unwrap_or_else(|e| peer_failed(peer, e))
}

/// A stable hash of a name (FNV-1a: the same in every process, unlike
/// std's randomized hasher): slot names and lock keys (locks.rs).
pub fn stable_hash(name: &str) -> i64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    (h >> 1) as i64
}

/// Serializes sync() rounds and remove_peer for one peer in this database
/// (a slot and an origin are used by one session at a time; the worker's
/// stream is ended by remove_peer itself).
fn lock_peer(peer: &str) {
    crate::locks::xact(crate::locks::Lock::PeerSync(stable_hash(peer) as u32), true);
}

fn validate_peer_name(name: &str) {
    if converge_core::validate_actor(name).is_err() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid peer name \"{}\": use 1-63 of A-Z a-z 0-9 _ . - (the peer's converge.node())", name.escape_default()),
        );
    }
}

/// A server's system identifier and the oid of the current database, as
/// text: what a node's slot names are made from.
const IDENTITY_SQL: &str =
    "SELECT system_identifier::text, (SELECT oid FROM pg_database WHERE datname = current_database())::text FROM pg_control_system()";

/// The name of the slots node `me` makes on its peers.
fn slot_name(me: &str) -> String {
    let (sysid, db) = Spi::connect(|c| {
        let r = c.select(IDENTITY_SQL, None, &[]).unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string())).first();
        (r.get::<String>(1).ok().flatten().unwrap_or_default(), r.get::<String>(2).ok().flatten().unwrap_or_default())
    });
    slot_name_for(me, &sysid, &db)
}

/// The slot name of node `node` whose server has system identifier `sysid`
/// and whose database has oid `db`: its name (as slot names allow, 40
/// characters) and a hash of all three, so that two nodes never share one.
fn slot_name_for(node: &str, sysid: &str, db: &str) -> String {
    let tag = stable_hash(&format!("{sysid}/{db}/{node}")) as u64;
    format!("converge_{}_{:08x}", slot_label(node), tag & 0xffff_ffff)
}

/// A node's name as its slot names carry it: lowercased, other characters
/// than letters and digits as '_', 40 of them.
pub fn slot_label(node: &str) -> String {
    node.chars().take(40).map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// The slot the peer behind `conn` reads from on this node (node `me`), as
/// the peer itself records it (`converge.peers` there, readable by every
/// role); None if it has not added this node as its peer.
pub fn their_slot(me: &str, conn: &mut Conn, stop: &dyn Fn() -> bool) -> Result<Option<String>, super::libpq::PeerError> {
    let r = conn.query("SELECT slot FROM converge.peers WHERE name = $1", &[me], false, QUERY_TIMEOUT, stop)?;
    Ok(r.text(0, 0))
}

fn origin_name(peer: &str) -> String {
    let db = read_one::<String>("SELECT oid::text FROM pg_database WHERE datname = current_database()", &[])
        .unwrap_or_default();
    format!("converge_{db}_{peer}")
}

/// Connect to a peer: create (or take over) our slot there and the peer's
/// origin here, bring over the ops the peer has that this node lacks, and
/// register it for pulling.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn add_peer(name: &str, conninfo: &str) {
    // (Asked of the caller, before converge acts as its tables' owner.)
    let su = unsafe { pg_sys::superuser() };
    // Peer administration writes converge.peer and origins as the owner
    // of converge's tables (so a superuser may grant it to an operator),
    // and applies what the peer sends for the caller, with its rights, as
    // apply_batch does (its tables written as the caller; a superuser's
    // as each table's owner). Under converge's fixed path, whatever the
    // database's settings say.
    crate::security::as_owner(|| add_peer_now(name, conninfo, su))
}

fn add_peer_now(name: &str, conninfo: &str, su: bool) {
    validate_peer_name(name);
    let me = node::local_node();
    if me == name {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("\"{name}\" is this node; a node is not its own peer"));
    }
    let slot = slot_name(&me);
    let origin = origin_name(name);
    // A role that is not superuser must not make this server connect with
    // credentials it does not hold (trust, the server's .pgpass or
    // environment): the conninfo itself must carry the password, name no
    // password file, and the peer must ask for the password.
    if !su {
        let v = super::libpq::conninfo_values(conninfo).unwrap_or_default();
        if v.get("password").is_none_or(|p| p.is_empty()) || v.get("passfile").is_some_and(|p| !p.is_empty()) {
            raise_hint(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("peer \"{name}\": only a superuser may add a peer without a password in the conninfo"),
                "Give the peer role's password in the conninfo (password=...); passfile is not allowed.",
            );
        }
    }
    let mut conn = connect(name, conninfo);
    if !su && !conn.used_password() {
        raise_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("peer \"{name}\": only a superuser may add a peer whose connection does not use a password from the conninfo"),
            "Give the peer role's password in the conninfo (password=...) and have the peer ask for it (pg_hba.conf: scram-sha-256).",
        );
    }
    let q = |conn: &mut Conn, sql: &str, params: &[&str], binary: bool| {
        conn.query(sql, params, binary, QUERY_TIMEOUT, &interrupt).unwrap_or_else(|e| peer_failed(name, e))
    };
    let who = q(
        &mut conn,
        "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'converge'),
                CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'converge') THEN converge.node() END",
        &[],
        false,
    );
    if who.text(0, 0).is_none() {
        raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("peer \"{name}\" does not have the converge extension in that database"),
            "Run CREATE EXTENSION converge and converge.set_node() there first.",
        );
    }
    match who.text(0, 1) {
        Some(n) if n == name => {}
        Some(n) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("the server at that conninfo is converge node \"{n}\", not \"{name}\""),
        ),
        None => raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("peer \"{name}\" has no node identity"),
            "Run SELECT converge.set_node(...) on the peer first.",
        ),
    }
    if !su {
        // Its copy may write every replicated table (from the peer's rows,
        // when its log is compacted past ours): the rights for all first.
        let tables = read_one::<Vec<pg_sys::Oid>>("SELECT coalesce(array_agg(table_name::oid), '{}') FROM converge.replicated", &[]);
        for rel in tables.unwrap_or_default() {
            crate::security::require_peer_rights(rel, true);
        }
    }
    refuse_a_used_name(name, &me, &mut conn);
    warn_of_client_writes_that_differ(name, &mut conn);
    // Unknown until the peer adds this node too: its slots are found by
    // the name they carry meanwhile (lost.rs).
    let theirs = their_slot(&me, &mut conn, &interrupt).ok().flatten();
    ensure_slot(name, &mut conn, &slot, &origin, &interrupt);
    let oid = match origin_id(&origin) {
        Some(o) => {
            // A peer added again (pause_peer, then add_peer: the upgrade
            // recipe): its origin is taken before this transaction writes
            // the peer's rows, since the worker, mid-batch under it, writes
            // them too before it lets go (taken after, each would wait for
            // the other).
            super::pull::take_origin(o);
            o
        }
        None => {
            Spi::run_with_args("SELECT pg_replication_origin_create($1)", &[origin.clone().into()])
                .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
            origin_id(&origin).unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "origin not created"))
        }
    };
    Spi::run_with_args(
        "INSERT INTO converge.peer (name, conninfo, slot_name, origin_name, password_required) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET conninfo = EXCLUDED.conninfo, slot_name = EXCLUDED.slot_name,
                                          origin_name = EXCLUDED.origin_name, paused = false,
                                          password_required = EXCLUDED.password_required",
        &[name.into(), conninfo.into(), slot.clone().into(), origin.into(), (!su).into()],
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
    Spi::run_with_args(
        "INSERT INTO converge.peer_status (name, their_slot) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET state = 'new', last_error = NULL, lost_at = NULL, rejoining = false,
                                          their_slot = EXCLUDED.their_slot",
        &[name.into(), theirs.into()],
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
    copy_missing(name, &mut conn, oid, &interrupt, false);
    super::launcher::start_worker();
}

/// A node's op ids are its name and a counter from 1. A client may have
/// used that name for its ops while no node had it (a node refuses
/// clients' ops only under names it knows as nodes', `node_actor`); the
/// node's own ops would then reuse those op ids, and every node would drop
/// them as duplicates. So a peer is refused, before anything is written,
/// if the first or the last op it applied under this node's name was sent
/// to it by a client, or the first or last this node applied under the
/// peer's (two index lookups a side: a client that used the name before
/// the node has its counter 1 there; one still writing under it, the
/// highest). The node's own ops are no such ops (`local`, or `peer:<name>`
/// where replication or a copy brought them): a node restored from an
/// older backup gets its own newer ops back from its peers' copies. Ops
/// applied again by `replay` (`replay`) may be anyone's, and do not count.
fn refuse_a_used_name(peer: &str, me: &str, conn: &mut Conn) {
    const SQL: &str = "SELECT format('%s from a client (origin \"%s\")', e.op_id, e.origin)
          FROM ((SELECT op_id, origin FROM converge.op_log WHERE actor = $1 AND outcome = 'applied' ORDER BY counter LIMIT 1)
                UNION ALL
                (SELECT op_id, origin FROM converge.op_log WHERE actor = $1 AND outcome = 'applied' ORDER BY counter DESC LIMIT 1)) e
         WHERE e.origin NOT LIKE 'peer:%' AND e.origin NOT IN ('local', 'replay')
         LIMIT 1";
    let there = conn.query(SQL, &[me], false, QUERY_TIMEOUT, &interrupt).unwrap_or_else(|e| peer_failed(peer, e));
    if let Some(op) = there.text(0, 0) {
        used(&format!("peer \"{peer}\""), me, &op);
    }
    // (read_one is read-only: an xid taken here would make the slot made on
    // the peer next wait for this transaction, when the peer is this server.)
    if let Some(op) = crate::security::as_owner(|| read_one::<String>(SQL, &[peer.into()])) {
        used("this node", peer, &op);
    }
}

/// Tables whose client writes (`set_client_writes`) differ between the
/// peer and this node. Where one side closed a table, it may have dropped
/// row tombstones and seqtext deleted characters before it knew of the
/// other, and no copy or compaction brings them back: a client's late
/// edit taken where the table is open could re-create what the closed side
/// forgot. A warning, not an error: the operator aligns the settings. Only
/// tables replicated on both sides at this moment are compared.
fn warn_of_client_writes_that_differ(peer: &str, conn: &mut Conn) {
    // (A peer of an earlier version has no such setting: all open there.)
    const THERE: &str = "SELECT coalesce(jsonb_agg(x.t) FILTER (WHERE x.closed), '[]')::text,
                                coalesce(jsonb_agg(x.t) FILTER (WHERE NOT x.closed), '[]')::text
          FROM (SELECT format('%I.%I', n.nspname, c.relname) AS t, coalesce(to_jsonb(r) ->> 'client_writes' = 'false', false) AS closed
                  FROM converge.replicated r JOIN pg_class c ON c.oid = r.table_name JOIN pg_namespace n ON n.oid = c.relnamespace) x";
    let there = conn.query(THERE, &[], false, QUERY_TIMEOUT, &interrupt).unwrap_or_else(|e| peer_failed(peer, e));
    let (Some(closed_there), Some(open_there)) = (there.text(0, 0), there.text(0, 1)) else { return };
    if let Some(tables) = replicated_here(&closed_there, true) {
        crate::errors::warn_hint(
            format!("peer \"{peer}\" lets no client write {tables}, which clients may write here"),
            "Close them here too (converge.set_client_writes(t, false)) before clients write them here: the peer may have dropped row tombstones and seqtext deleted characters a client's late edit needs.",
        );
    }
    if let Some(tables) = replicated_here(&open_there, false) {
        crate::errors::warn_hint(
            format!("peer \"{peer}\" lets clients write {tables}, which no client may write here"),
            "Close them there too (converge.set_client_writes(t, false) on that node; a node of version 0.1.0 has no such setting and takes client writes everywhere: update it first) before clients write them there: this node may have dropped row tombstones and seqtext deleted characters a client's late edit needs.",
        );
    }
}

/// Of `names` (a jsonb array of qualified names as the peer formats them),
/// those replicated here with client writes `open` (or closed), listed.
fn replicated_here(names: &str, open: bool) -> Option<String> {
    crate::security::as_owner(|| {
        read_one::<String>(
            "SELECT string_agg(t, ', ' ORDER BY t) FROM jsonb_array_elements_text($1::jsonb) t
              WHERE t IN (SELECT format('%I.%I', n.nspname, c.relname)
                            FROM converge.replicated r JOIN pg_class c ON c.oid = r.table_name
                            JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE r.client_writes = $2)",
            &[names.into(), open.into()],
        )
    })
}

/// Raise: `at` applied `op` ("<op_id> from a client (origin ...)") under
/// node `node`'s name.
fn used(at: &str, node: &str, op: &str) -> ! {
    raise_hint(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("{at} has applied op {op}, not from node \"{node}\": a client used that node's name"),
        "The node's own ops would reuse that client's op ids and be dropped as duplicates. Give the node a name no client has used (converge.set_node, before it writes data).",
    )
}

/// Make our slot on the peer, or take over one left from an earlier setup.
/// Before this transaction writes anything: a logical slot waits for every
/// transaction running on its server, and the peer may be this server.
/// A slot made here starts the peer's stream anew: `origin`'s progress
/// goes to the slot's start (also backwards, for a peer rebuilt with a new
/// WAL history, whose old progress would skip its first changes), and the
/// copy that follows covers everything before it.
pub fn ensure_slot(name: &str, conn: &mut Conn, slot: &str, origin: &str, stop: &dyn Fn() -> bool) {
    let mut q = |sql: &str, params: &[&str]| {
        conn.query(sql, params, false, QUERY_TIMEOUT, stop).unwrap_or_else(|e| peer_failed(name, e))
    };
    let existing = q("SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1", &[slot]);
    match existing.text(0, 0) {
        Some(p) if p == "converge" => {} // left from an earlier setup: take it over
        Some(p) => raise(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("peer \"{name}\" already has a slot \"{slot}\" using plugin \"{p}\"; drop it there first"),
        ),
        None => {
            let start = q("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'converge')", &[slot]).text(0, 0);
            if let (Some(start), Some(_)) = (start, origin_id(origin)) {
                let reset = crate::apply::subtransaction(|| {
                    Spi::run_with_args("SELECT pg_replication_origin_advance($1, $2::pg_lsn)", &[origin.into(), start.as_str().into()])
                });
                let failed = match reset {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(c) => Some(c.message),
                };
                if let Some(why) = failed {
                    // (The slot goes too: one taken over later would keep
                    // the progress this reset did not make.)
                    q("SELECT pg_drop_replication_slot($1)", &[slot]);
                    raise(PgSqlErrorCode::ERRCODE_OBJECT_IN_USE, format!("peer \"{name}\": setting origin {origin} to the new slot's start: {why}; try again"));
                }
            }
        }
    }
}

/// Copy the applied ops the peer has and this node lacks, under the peer's
/// origin (or its rows, when it has compacted past our frontier: rejoin.rs). After ensure_slot: everything the peer commits from then on is
/// kept for us, and the copy covers everything before (overlap is
/// deduplicated). add_peer and a rejoin after being marked lost both do
/// this (`rejoin`: this node's rows are merged with the peer's, not
/// replaced, rejoin.rs). Returns the number of ops copied.
pub fn copy_missing(name: &str, conn: &mut Conn, origin: pg_sys::RepOriginId, stop: &dyn Fn() -> bool, rejoin: bool) -> usize {
    let frontier = read_one::<String>("SELECT converge.frontier()::text", &[]).unwrap_or("{}".into());
    let query = changes_query(conn, stop).unwrap_or_else(|e| peer_failed(name, e));
    let mut q = |sql: &str, params: &[&str], within: Duration| conn.query(sql, params, true, within, stop);
    // Through a cursor, a batch of ops at a time: a backlog of any size
    // copies (one query had 30 s to send it all, and it was held here whole).
    q("BEGIN READ ONLY", &[], QUERY_TIMEOUT).unwrap_or_else(|e| peer_failed(name, e));
    q(super::rejoin::NO_PEER_TIMEOUTS, &[], QUERY_TIMEOUT).unwrap_or_else(|e| peer_failed(name, e));
    q(&format!("DECLARE converge_ops NO SCROLL CURSOR FOR {query}"), &[&frontier], QUERY_TIMEOUT).unwrap_or_else(|e| peer_failed(name, e));
    let (mut copied, mut first) = (0, true);
    loop {
        // The first fetch runs changes_since, which reads every op the
        // copy takes before it returns one.
        let within = if first { super::rejoin::COPY_TIMEOUT } else { QUERY_TIMEOUT };
        let ops = match q(&format!("FETCH {COPY_FETCH} FROM converge_ops"), &[], within) {
            Ok(ops) => ops,
            // The peer compacted its log past our frontier: copy its rows.
            Err(e) if e.sqlstate.as_deref() == Some("55000") && first => {
                q("ROLLBACK", &[], QUERY_TIMEOUT).unwrap_or_else(|e| peer_failed(name, e));
                return super::rejoin::copy_snapshot(name, conn, origin, stop, rejoin);
            }
            Err(e) => peer_failed(name, e),
        };
        first = false;
        let ops: Vec<Vec<u8>> = ops.rows.into_iter().filter_map(|mut r| r.pop().flatten()).collect();
        if ops.is_empty() {
            break;
        }
        // (In log order, which respects deps: each batch's deps are here.)
        copied += apply_encoded(ops, name, origin, 0, 0);
    }
    q("COMMIT", &[], QUERY_TIMEOUT).unwrap_or_else(|e| peer_failed(name, e));
    copied
}

/// Ops of a copy read per fetch: each fetch has a timeout of its own, and
/// this node holds one batch at a time.
const COPY_FETCH: usize = 5000;

/// The query for the ops a peer has beyond a frontier ($1), as this
/// version applies them: ormap deltas with what they superseded per key
/// (what `removes_only` reads), from a peer that has it (0.2.0 and later;
/// a 0.1.0 peer's own ops never carry it).
pub(crate) fn changes_query(conn: &mut Conn, stop: &dyn Fn() -> bool) -> Result<&'static str, PeerError> {
    let has = conn
        .query("SELECT to_regprocedure('converge.changes_since(jsonb,boolean)') IS NOT NULL", &[], false, QUERY_TIMEOUT, stop)?
        .text(0, 0);
    Ok(if has.as_deref() == Some("t") {
        "SELECT converge.op_encode(o) FROM converge.changes_since($1::jsonb, true) o"
    } else {
        "SELECT converge.op_encode(o) FROM converge.changes_since($1::jsonb) o"
    })
}

/// Stop replicating with a peer: drop our slot on it and its origin here.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn remove_peer(name: &str) {
    crate::security::as_owner(|| remove_peer_now(name))
}

fn remove_peer_now(name: &str) {
    let Some(peer) = load_peers(Some(name)).pop() else {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("no peer named \"{name}\""));
    };
    lock_peer(name);
    // Before the slot on the peer goes (that cannot be rolled back).
    if let Some(origin) = origin_id(&peer.origin) {
        super::pull::let_go_of(origin, name);
    }
    match connect_peer(&peer, false) {
        Ok(mut conn) => {
            // The worker may be streaming from the slot: end that session
            // (it reconnects only after backoff, and finds the peer gone).
            let mut tries = 0;
            loop {
                let r = conn.query(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    &[&peer.slot],
                    false,
                    QUERY_TIMEOUT,
                    &interrupt,
                )
                .and_then(|_| {
                    conn.query(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                        &[&peer.slot],
                        false,
                        QUERY_TIMEOUT,
                        &interrupt,
                    )
                });
                match r {
                    Ok(_) => break,
                    Err(e) if e.sqlstate.as_deref() == Some("55006") && tries < 50 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => peer_failed(name, e),
                }
            }
        }
        Err(e) => pgrx::warning!(
            "peer \"{name}\" is unreachable ({e}); its slot \"{}\" is left there: drop it on the peer with SELECT pg_drop_replication_slot('{}')",
            peer.slot,
            peer.slot
        ),
    }
    if origin_id(&peer.origin).is_some() {
        Spi::run_with_args("SELECT pg_replication_origin_drop($1)", &[peer.origin.clone().into()])
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_OBJECT_IN_USE, e.to_string()));
    }
    // Its traffic stays in converge.stats' totals (they never fall).
    Spi::run_with_args(
        "WITH kept AS (INSERT INTO converge.retired AS r (counter, total)
                       SELECT t.counter, t.total FROM converge.peer_status s,
                              LATERAL (VALUES ('ops_shipped', s.ops_shipped), ('bytes_shipped', s.bytes_shipped),
                                              ('ops_received', s.ops_received), ('bytes_received', s.bytes_received)) t(counter, total)
                        WHERE s.name = $1 AND t.total > 0
                           ON CONFLICT (counter) DO UPDATE SET total = r.total + EXCLUDED.total)
         DELETE FROM converge.peer WHERE name = $1",
        &[name.into()],
    )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
}

/// One pull round from a peer, now. Without the background worker it reads
/// the slot and applies in this transaction (run it in a transaction of its
/// own: the whole transaction is marked as the peer's). With the worker
/// streaming from the peer, it waits (up to 30 s) until the worker has
/// caught up with what the peer had committed when the call started.
/// Returns the number of ops received.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn sync(name: &str) -> i64 {
    crate::security::as_owner(|| sync_now(name))
}

fn sync_now(name: &str) -> i64 {
    let Some(peer) = load_peers(Some(name)).pop() else {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("no peer named \"{name}\""));
    };
    if worker_running() {
        let quoted = name.replace('\'', "''");
        let received = format!("SELECT ops_received FROM converge.peer_status WHERE name = '{quoted}'");
        let before = crate::spi::read_fresh_i64(&received).unwrap_or(0);
        if !wait_until_caught_up(Some(name), Duration::from_secs(30)) {
            raise(
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
                format!("the background worker did not catch up with peer \"{name}\" within 30 s; see converge.peers"),
            );
        }
        return crate::spi::read_fresh_i64(&received).unwrap_or(0) - before;
    }
    lock_peer(name);
    let mut conn = connect_peer(&peer, false).unwrap_or_else(|e| peer_failed(name, e));
    match pull_round(&peer, &mut conn, &interrupt, false) {
        Ok(r) => r.ops as i64,
        Err(e) => peer_failed(name, e),
    }
}

/// Wait until the worker reports the peer (or every unpaused peer) caught up
/// as of a moment after this call started.
fn wait_until_caught_up(peer: Option<&str>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let start = read_one::<String>("SELECT clock_timestamp()::text", &[]).unwrap_or_default();
    let only = peer.map(|p| format!(" AND p.name = '{}'", p.replace('\'', "''"))).unwrap_or_default();
    let poll = format!(
        "SELECT count(*) FROM converge.peer p LEFT JOIN converge.peer_status s USING (name)
          WHERE NOT p.paused AND (s.caught_up_at IS NULL OR s.caught_up_at < '{}'::timestamptz){only}",
        start.replace('\'', "")
    );
    loop {
        if crate::spi::read_fresh_i64(&poll).unwrap_or(1) == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
        pgrx::check_for_interrupts!();
    }
}

fn worker_running() -> bool {
    read_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'converge worker' AND datname = current_database())",
        &[],
    )
    .unwrap_or(false)
}

/// True once every (unpaused) peer is caught up: everything each peer had
/// committed when this call started is applied here. False on timeout.
/// With the background worker running it waits for the worker; without it
/// it only checks each peer's slot (pull with converge.sync() meanwhile).
#[pg_extern(volatile, parallel_unsafe)]
fn wait_for_peers(timeout: default!(pgrx::datum::Interval, "'10 seconds'")) -> bool {
    crate::security::as_owner(|| wait_now(timeout))
}

fn wait_now(timeout: pgrx::datum::Interval) -> bool {
    let micros = timeout.as_micros().max(0) as u64;
    let deadline = Instant::now() + Duration::from_micros(micros);
    let peers = load_peers(None);
    if peers.is_empty() {
        return true;
    }
    if !worker_running() {
        loop {
            let all = peers.iter().all(|peer| {
                connect_peer(peer, false)
                    .and_then(|mut c| pull_round(peer, &mut c, &interrupt, true))
                    .map(|r| r.txns == 0 && !r.more)
                    .unwrap_or(false)
            });
            if all || Instant::now() >= deadline {
                return all;
            }
            std::thread::sleep(Duration::from_millis(50));
            pgrx::check_for_interrupts!();
        }
    }
    wait_until_caught_up(None, Duration::from_micros(micros))
}

/// Stop pulling from a peer (its slot keeps what we have not read).
#[pg_extern(volatile, strict, parallel_unsafe)]
fn pause_peer(name: &str) {
    set_paused(name, true)
}

/// Resume pulling from a paused peer.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn resume_peer(name: &str) {
    set_paused(name, false)
}

fn set_paused(name: &str, paused: bool) {
    let n = crate::security::as_owner(|| Spi::get_one_with_args::<i64>(
        "WITH u AS (UPDATE converge.peer SET paused = $2 WHERE name = $1 RETURNING 1) SELECT count(*) FROM u",
        &[name.into(), paused.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0));
    if n == 0 {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("no peer named \"{name}\""));
    }
}
