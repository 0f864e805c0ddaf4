//! This instance's node identity, its durable dot counter and its clock.
//!
//! The identity is one row in `converge.node_identity`; dots come from the
//! sequence `converge.dot_seq`, so two values built from NULL in different
//! rows or statements never share a dot. Both are dumped by pg_dump (they are
//! extension configuration), so a restored node keeps counting where it was.

use crate::errors::{raise, raise_hint, OrRaise};
use converge_core::{validate_actor, Dot, Hlc, Timestamp};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;

/// `converge.max_clock_skew`, in seconds (-1: no bound).
pub static MAX_CLOCK_SKEW: GucSetting<i32> = GucSetting::<i32>::new(300);

pub fn register_gucs() {
    // Superuser-set: it guards every node's clocks against what clients
    // send, so a client's own session must not lift it.
    GucRegistry::define_int_guc(
        c"converge.max_clock_skew",
        c"How far ahead of this node's clock a client's op may be timestamped (-1: no bound).",
        c"A last-writer-wins write (lwwreg, lwwmap, a row op) sent to converge.apply by a client with a timestamp further ahead is rejected with reason clock_skew. Ops peers replicate are not checked: their entry node did.",
        &MAX_CLOCK_SKEW,
        -1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
}

thread_local! {
    static NODE: RefCell<Option<String>> = const { RefCell::new(None) };
    static CLOCK: RefCell<Hlc> = RefCell::new(Hlc::new());
    static DOT_SEQ: RefCell<Option<pg_sys::Oid>> = const { RefCell::new(None) };
    static SCHEMA_CURRENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// This library records ops in its own version's schema. Between installing
/// a new library (and restarting) and `ALTER EXTENSION converge UPDATE` in
/// this database, a write of a replicated table fails here with 55000
/// saying so, not with an error about a table the old schema lacks. Asked
/// once per session once the versions agree.
pub(crate) fn require_current_schema() {
    if SCHEMA_CURRENT.get() {
        return;
    }
    let library = env!("CARGO_PKG_VERSION");
    match extension_version() {
        Some(v) if v != library => raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("converge's library is version {library}, and the extension in this database is version {v}"),
            "Run ALTER EXTENSION converge UPDATE in this database: writes to replicated tables wait for it (other tables are not affected).",
        ),
        Some(_) => SCHEMA_CURRENT.set(true),
        None => {}
    }
}

/// The version of converge installed in this database, if any.
pub(crate) fn extension_version() -> Option<String> {
    crate::spi::read_one::<String>("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'converge'", &[])
}

fn dot_seq_oid() -> pg_sys::Oid {
    if let Some(oid) = DOT_SEQ.with(|c| *c.borrow()) {
        return oid;
    }
    let oid = crate::spi::read_one::<pg_sys::Oid>("SELECT 'converge.dot_seq'::regclass::oid", &[])
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, "sequence converge.dot_seq is missing"));
    DOT_SEQ.with(|c| *c.borrow_mut() = Some(oid));
    oid
}

fn next_counter() -> u64 {
    // nextval is durable and never repeats a value a committed transaction used.
    // Callers need no right on the sequence.
    crate::direct::nextval(dot_seq_oid()) as u64
}

/// The local node name, or an error telling the user to set it.
pub fn local_node() -> String {
    local_node_if_set().unwrap_or_else(|| {
        raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "converge node identity is not set",
            "Run SELECT converge.set_node('<name>') once in this database before using a mutator.",
        )
    })
}

/// Drop the cached node name (relcache invalidation: set_node sends one
/// for node_identity, and an aborted set_node replays it locally).
pub fn forget_name() {
    NODE.with(|c| *c.borrow_mut() = None);
}

/// The local node name, or None when it is not set.
pub fn local_node_if_set() -> Option<String> {
    if let Some(n) = NODE.with(|c| c.borrow().clone()) {
        return Some(n);
    }
    crate::trigger::watch_relcache();
    let name = crate::spi::read_one::<String>("SELECT name FROM converge.node_identity", &[])?;
    NODE.with(|c| *c.borrow_mut() = Some(name.clone()));
    Some(name)
}

/// Who is mutating, with a fresh dot. Every mutator takes one, so the dot
/// sequence also records that this node has written data.
pub fn mutation() -> (String, Dot) {
    let c = next_counter();
    let node = local_node();
    let dot = Dot::new(node.clone(), c);
    (node, dot)
}

/// Who is mutating, with `n` fresh dots (one per character a seqtext
/// insert adds). Consecutive when no other session drew dots meanwhile,
/// so typed text forms one run.
pub fn dots(n: usize) -> (String, Vec<u64>) {
    let node = local_node();
    let seq = dot_seq_oid();
    let v = (0..n).map(|_| crate::direct::nextval(seq) as u64).collect();
    (node, v)
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Why a client's write timestamped `ms` is refused, if it is: further
/// ahead of this node's clock than `converge.max_clock_skew`. Every clock
/// that merges such a write moves past it (SPEC section 2), so one device
/// with a clock a year ahead would drag the cluster's clocks, and with them
/// its other rows' writes, a year ahead; near the end of the clock's range
/// later writes would no longer win. The entry node decides alone: a
/// refused op is never shipped, an applied one is not checked again.
pub fn skew_error(ms: u64) -> Option<String> {
    let bound = MAX_CLOCK_SKEW.get();
    if bound < 0 || ms <= wall_ms().saturating_add(bound as u64 * 1000) {
        return None;
    }
    Some(format!(
        "clock_skew: timestamp {ms} (ms since 1970) is more than converge.max_clock_skew ({bound} s) ahead of this node's clock"
    ))
}

/// The timestamps this backend issues from now on are newer than `ts`.
pub fn observe(ts: &Timestamp) {
    CLOCK.with(|c| c.borrow_mut().observe(ts));
}

/// A timestamp newer than `floor` and than anything this backend issued.
pub fn timestamp(node: &str, floor: Option<&Timestamp>) -> Timestamp {
    CLOCK.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(f) = floor {
            c.observe(f);
        }
        c.tick(wall_ms(), node)
    })
}

/// Set this database's node identity. Setting the same name again is a
/// no-op; a different name is refused once the node has written data.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn set_node(name: &str) -> pgrx::Uuid {
    crate::security::in_fixed_path(|| set_node_now(name))
}

fn set_node_now(name: &str) -> pgrx::Uuid {
    validate_actor(name).or_raise();
    let current = Spi::get_two::<String, pgrx::Uuid>(
        "SELECT name, node_uuid FROM converge.node_identity FOR UPDATE",
    );
    let used = Spi::get_one::<bool>("SELECT is_called FROM converge.dot_seq").ok().flatten().unwrap_or(false);
    let uuid = match current {
        Ok((Some(old), Some(uuid))) if old == name => uuid,
        Ok((Some(old), Some(_))) => {
            if used {
                raise(
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("node identity is already \"{old}\"; it cannot change after this node has written data"),
                );
            }
            Spi::get_one_with_args::<pgrx::Uuid>(
                "UPDATE converge.node_identity SET name = $1, node_uuid = gen_random_uuid(), set_at = now() RETURNING node_uuid",
                &[name.into()],
            )
            .ok()
            .flatten()
            .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "could not update node identity"))
        }
        _ => Spi::get_one_with_args::<pgrx::Uuid>(
            "INSERT INTO converge.node_identity (name) VALUES ($1) RETURNING node_uuid",
            &[name.into()],
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "could not store node identity")),
    };
    // Every session reads the name again after this commits (or this one
    // after it rolls back): the cached names are dropped by invalidation.
    NODE.with(|c| *c.borrow_mut() = None);
    crate::trigger::watch_relcache();
    if let Some(rel) = crate::spi::read_one::<pg_sys::Oid>("SELECT 'converge.node_identity'::regclass::oid", &[]) {
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(rel) };
    }
    uuid
}

/// This database's node name, or NULL if it is not set yet.
#[pg_extern(stable, parallel_safe)]
fn node() -> Option<String> {
    let name = crate::spi::read_one::<String>("SELECT name FROM converge.node_identity", &[])?;
    NODE.with(|c| *c.borrow_mut() = Some(name.clone()));
    Some(name)
}
