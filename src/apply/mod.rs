//! The batch apply path: `converge.apply_ops` (the body of `apply_batch`)
//! in Rust. Classification (validation, duplicates, missing deps) happens in
//! memory; the database sees a handful of set-based statements per batch:
//! one lookup per distinct target table, one duplicate check, one dedupe
//! gate (an insert into op_log that skips what another session applied
//! first), one upsert per (table, column) with the deltas of each row
//! merged here first, and the outcome rows.
//!
//! The outcomes and reasons are those of SPEC section 3 and the pg_regress
//! contract (`ops`): rejected, duplicate, buffered, applied, in that order,
//! then whatever the batch unblocked in `converge.pending_ops`.

use crate::errors::raise;
use converge_core::{parse_op_id, Crdt};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use crate::jsonb::Jb;
use pgrx::PgSqlErrorCode;
use std::collections::{BTreeMap, HashMap, HashSet};

mod classify;
mod control;
mod entry;
mod merge;
mod keys;
mod replay;
mod target;
mod voids;
mod waiting;

pub use classify::{as_client, from_peer};
pub(crate) use classify::trusted as applying_trusted;
pub use entry::{apply_again, apply_decoded};
pub use target::{forget_resolved, layout_of, row_target, Layout};
pub use voids::VOID;
pub(crate) use voids::take_at_join;
pub use waiting::{note_deferred, take_deferred, under_peer_origin};
use classify::*;
use target::*;
use waiting::*;
pub use merge::{merge_states, replace_rows};
pub(crate) use keys::row_identity;
use merge::gate_and_merge;

/// One op of the batch, as given, with what classification found.
#[derive(Default)]
struct Item {
    n: usize,
    op_id: Option<String>,
    actor_given: Option<String>,
    table: Option<String>,
    key: Option<serde_json::Value>,
    /// The key as the caller's jsonb, while `key` is that same value (the
    /// log row stores it as given instead of encoding `key` again). It
    /// points into apply_batch's argument: valid only until it returns.
    key_datum: Option<pg_sys::Datum>,
    column: Option<String>,
    version: Option<i32>,
    epoch: Option<i64>,
    deps: Option<Vec<Option<String>>>,
    delta: Option<Vec<u8>>,
    signature: Option<Vec<u8>>,
    /// Parsed op_id.
    actor: Option<String>,
    counter: Option<i64>,
    target: Option<usize>,
    coltype: Option<String>,
    bad: Option<String>,
    /// The repair that excluded this op (it is `superseded`, repair.rs).
    superseded: Option<String>,
    /// Why it is kept aside (`quarantined`): made with another schema
    /// version of its column than this node's (`old_schema`, `new_schema`).
    quarantine: Option<String>,
    /// A client's op for a table clients may not write here: rejected
    /// (`client_writes_off`) unless it is a duplicate (classify.rs).
    client_closed: bool,
}

/// A replicated table as the batch found it.
#[derive(Clone)]
struct Target {
    rel: pg_sys::Oid,
    keys: Vec<String>,
    /// SQL types of the key columns, as `format_type` writes them.
    key_types: Vec<String>,
    /// The same, by their qualified names, without typmods: keys travel as
    /// text and are cast to these; the insert's own assignment refuses a
    /// value too long for varchar(n) (also in an array), where an explicit
    /// cast to varchar(n) would cut it to another row's key.
    key_casts: Vec<String>,
    /// The same, as type oids and typmods (`keys::io_form` reads a key's
    /// text with them, as the column stores it).
    key_oids: Vec<(pg_sys::Oid, i32)>,
    crdt: HashMap<String, String>,
    /// Non-CRDT, non-key columns (row ops write them).
    other: Vec<String>,
    /// The CRDT columns declared NOT NULL: a row made by a row op takes
    /// their empty value.
    not_null_crdt: Vec<String>,
    /// Whether the batch has row ops for it (they may delete rows).
    row_ops: bool,
    /// `schema.table`, quoted as needed: the name ops are logged under.
    name: String,
    /// Its authority columns (coordination.rs).
    authority: crate::coordination::Authorities,
    /// Schema versions set for its columns ('' for the row ops); 1 otherwise.
    versions: HashMap<String, i32>,
    /// The table's authority (set_authority with no column): it freezes
    /// rows (epochs.rs), so only then do ops need their row's freezes.
    table_authority: Option<crate::coordination::Authority>,
    /// Whether ops sent through `converge.apply` may write it here
    /// (`converge.set_client_writes`); as cached until `client_checked`,
    /// then as this transaction may rely on (classify::client_writes_now).
    client_writes: bool,
    client_checked: bool,
}

fn row_table(t: &Target) -> crate::rows::RowTable<'_> {
    // Qualified: the statements run with the caller's search_path, which
    // need not hold the table's schema.
    crate::rows::RowTable { name: t.name.clone(), rel: t.rel, keys: &t.keys, crdt: &t.crdt }
}

type Outcome = (String, String, Option<String>);

fn spi_err(e: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("converge apply: {e}"))
}

fn run(sql: &str, args: &[DatumWithOid]) {
    crate::spi::prepared(sql, args, |_| Ok(())).unwrap_or_else(|e| spi_err(e));
}

/// A PostgreSQL error caught by `subtransaction`.
pub struct Caught {
    pub sqlstate: String,
    pub code: PgSqlErrorCode,
    pub message: String,
}

/// Run `f` in a subtransaction: on a PostgreSQL error its work is rolled
/// back and the error returned (what PL/pgSQL's BEGIN .. EXCEPTION does).
pub fn subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, Caught> {
    in_subtransaction(f, |_| true).map_err(|e| {
        use pg_sys::panic::CaughtError::*;
        let (code, message) = match e {
            PostgresError(r) | ErrorReport(r) => (r.sql_error_code(), r.message().to_string()),
            RustPanic { ereport, .. } => (ereport.sql_error_code(), ereport.message().to_string()),
        };
        let sqlstate = unsafe { std::ffi::CStr::from_ptr(pg_sys::unpack_sql_state(code as i32)) }.to_string_lossy().into_owned();
        Caught { sqlstate, code, message }
    })
}

/// Run `f` in a subtransaction kept only when it returns Some: None rolls
/// its work back (row locks included). An error is raised again after the
/// rollback, with its code, message, detail and hint.
pub fn tentatively<R>(f: impl FnOnce() -> Option<R>) -> Option<R> {
    in_subtransaction(f, |r| r.is_some()).unwrap_or_else(|e| e.rethrow())
}

fn in_subtransaction<R>(f: impl FnOnce() -> R, keep: impl FnOnce(&R) -> bool) -> Result<R, pg_sys::panic::CaughtError> {
    unsafe {
        let cxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cxt);
        let r = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| Ok(f()))).catch_others(Err).execute();
        match &r {
            Ok(v) if keep(v) => pg_sys::ReleaseCurrentSubTransaction(),
            _ => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(cxt);
        pg_sys::CurrentResourceOwner = owner;
        r
    }
}

/// Only errors about the op's own data (classes 22 data, 23 integrity, 42
/// names and privileges) reject an op. Anything else (a deadlock or
/// serialization failure, a cancel or timeout, out of memory or disk)
/// belongs to the transaction: the whole batch aborts and is retried, rather
/// than rejecting ops for good.
fn reraise_if_transaction_error(c: &Caught) {
    if !["22", "23", "42"].iter().any(|class| c.sqlstate.starts_with(class)) {
        raise(c.code, c.message.clone());
    }
}

fn merge_all<T: Crdt>(deltas: &[&[u8]]) -> Vec<u8> {
    let mut acc = T::default();
    for d in deltas {
        // Validated when the batch was classified.
        acc.merge(&converge_core::decode_trusted::<T>(d).unwrap_or_else(|e| spi_err(e.message)));
    }
    converge_core::encode(&acc)
}

/// Merge several encoded deltas of the named type into one.
pub(crate) fn merge_bytes(coltype: &str, deltas: &[&[u8]]) -> Vec<u8> {
    for_crdt_type!(coltype, T => merge_all::<T>(deltas), _ => spi_err(format!("not a converge type: {coltype}")))
}


/// Arrays for one op_log insert of the given items.
fn log_rows(items: &[&Item], outcome: &str, reasons: &[Option<String>], origin: &str) {
    if items.is_empty() {
        return;
    }
    run(
        "INSERT INTO converge.op_log (op_id, actor, counter, target_table, target_key, target_column, schema_version,
                                     epoch, deps, delta, signature, outcome, reason, origin)
         SELECT u.op_id, u.actor, u.counter, u.tbl, u.key, u.col, u.ver, u.ep,
                CASE WHEN u.deps IS NOT NULL THEN ARRAY(SELECT jsonb_array_elements_text(u.deps)) END,
                u.delta, u.sig, $12, u.reason, $13
           FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::jsonb[], $6::text[], $7::int[], $8::int8[],
                       $9::jsonb[], $10::bytea[], $11::bytea[], $14::text[])
                WITH ORDINALITY u(op_id, actor, counter, tbl, key, col, ver, ep, deps, delta, sig, reason, ord)
          ORDER BY u.ord",
        &envelope_args(items, Some((outcome, reasons, origin))),
    );
}

/// The 11 envelope arrays ($1..$11), plus outcome, origin and reasons.
fn envelope_args<'a>(items: &[&Item], extra: Option<(&str, &[Option<String>], &str)>) -> Vec<DatumWithOid<'a>> {
    let mut a: Vec<DatumWithOid<'a>> = vec![
        items.iter().map(|i| i.op_id.clone().unwrap_or_default()).collect::<Vec<String>>().into(),
        items
            .iter()
            .map(|i| i.actor.clone().or_else(|| i.actor_given.clone()).unwrap_or_default())
            .collect::<Vec<String>>()
            .into(),
        items.iter().map(|i| i.counter.unwrap_or(0)).collect::<Vec<i64>>().into(),
        items.iter().map(|i| i.table.clone()).collect::<Vec<Option<String>>>().into(),
        items.iter().map(|i| i.key.clone().map(Jb)).collect::<Vec<Option<Jb>>>().into(),
        items.iter().map(|i| i.column.clone()).collect::<Vec<Option<String>>>().into(),
        items.iter().map(|i| i.version).collect::<Vec<Option<i32>>>().into(),
        items.iter().map(|i| i.epoch).collect::<Vec<Option<i64>>>().into(),
        items
            .iter()
            .map(|i| i.deps.clone().map(|d| Jb(serde_json::json!(d))))
            .collect::<Vec<Option<Jb>>>()
            .into(),
        items.iter().map(|i| i.delta.clone()).collect::<Vec<Option<Vec<u8>>>>().into(),
        items.iter().map(|i| i.signature.clone()).collect::<Vec<Option<Vec<u8>>>>().into(),
    ];
    if let Some((outcome, reasons, origin)) = extra {
        a.push(outcome.to_string().into());
        a.push(origin.to_string().into());
        a.push(reasons.to_vec().into());
    }
    a
}

fn deps_of(it: &Item) -> Vec<String> {
    it.deps.iter().flatten().flatten().cloned().collect()
}

/// Of these op_ids, the ones applied here: per actor, its contiguous
/// frontier (every counter up to it is applied) and one range scan of the
/// log's index of applied ops above it, read directly (a prepared
/// statement kept the plan it got while the log was empty, a sequential
/// scan of the whole log per batch, until the next ANALYZE).
///
/// Both reads see every committed row and this transaction's own, not a
/// snapshot: an op another session applied since is a duplicate here too.
fn applied_set(ids: &[String]) -> HashSet<String> {
    let mut by_actor: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for id in ids {
        if let Some((a, c)) = parse_op_id(id) {
            by_actor.entry(a).or_default().push(c);
        }
    }
    let mut found: HashSet<(&str, u64)> = HashSet::new();
    for (actor, counters) in &by_actor {
        let (lo, hi) = (*counters.iter().min().unwrap() as i64, *counters.iter().max().unwrap() as i64);
        let upto = crate::local_ops::contiguous(actor);
        found.extend(counters.iter().filter(|c| **c as i64 <= upto).map(|c| (*actor, *c)));
        if hi > upto {
            let above = crate::local_ops::applied_between(actor, lo.max(upto + 1), hi);
            found.extend(above.into_iter().map(|c| (*actor, c as u64)));
        }
    }
    ids.iter().filter(|id| parse_op_id(id).is_some_and(|(a, c)| found.contains(&(a, c)))).cloned().collect()
}

/// Whether any op was ever excluded here without being applied: superseded
/// by a repair, or kept out by a freeze (a probe of each, once per call).
/// Such an op's counter is used up like an applied one's.
struct UsedUp {
    repairs: bool,
    freezes: bool,
}

impl UsedUp {
    fn probe() -> UsedUp {
        UsedUp { repairs: crate::repair::any_superseded(), freezes: crate::epochs::any_frozen() }
    }

    fn any(&self) -> bool {
        self.repairs || self.freezes
    }

    fn used_up(&self, op_id: &str) -> bool {
        (self.repairs && crate::repair::superseded_by(op_id).is_some()) || (self.freezes && crate::epochs::frozen_out(op_id))
    }
}

/// Of these deps, the ones done here: applied, or superseded by a repair
/// (an op that waits for a superseded op would wait for ever on the nodes
/// that superseded it on arrival, while nodes that had applied it went on).
fn deps_done(ids: &[String]) -> HashSet<String> {
    let mut done = applied_set(ids);
    let excluded = UsedUp::probe();
    if excluded.any() {
        done.extend(ids.iter().filter(|id| !done.contains(*id) && excluded.used_up(id)).cloned().collect::<Vec<_>>());
    }
    done
}

/// Positions (n) of the fresh ops that must wait: a dep neither applied
/// here nor among the fresh ops, or a dep that waits itself.
fn blocked(fresh: &[&Item]) -> HashSet<usize> {
    let all_deps: Vec<String> = fresh.iter().flat_map(|i| deps_of(i)).collect::<HashSet<_>>().into_iter().collect();
    if all_deps.is_empty() {
        return HashSet::new();
    }
    let applied = deps_done(&all_deps);
    let by_id: HashMap<&str, usize> = fresh.iter().filter_map(|i| i.op_id.as_deref().map(|id| (id, i.n))).collect();
    let mut blocked: HashSet<usize> = HashSet::new();
    // Fixed point: an op waits if one of its deps is missing or waits.
    loop {
        let before = blocked.len();
        for it in fresh {
            if blocked.contains(&it.n) {
                continue;
            }
            let waits = deps_of(it).iter().any(|d| match by_id.get(d.as_str()) {
                Some(parent) => blocked.contains(parent),
                None => !applied.contains(d),
            });
            if waits {
                blocked.insert(it.n);
            }
        }
        if blocked.len() == before {
            return blocked;
        }
    }
}

/// Move `actor`'s contiguous frontier past the counters just applied
/// (`won`, sorted) and any applied earlier out of order.
pub(crate) fn advance_frontier(actor: &str, won: &[i64]) {
    // Appliers of one actor take turns here to the end of their
    // transactions (a lock on the actor's hash, locks.rs: no statement, no
    // row version), so each reads what the one before it committed: two
    // batches of one actor applied at once cannot leave the frontier short
    // of what both applied.
    crate::locks::xact(crate::locks::Lock::Frontier(crate::replication::peers::stable_hash(actor) as u32), true);
    let cur = crate::local_ops::contiguous(actor);
    let mut next = cur;
    for c in won.iter().copied().skip_while(|c| *c <= cur) {
        if c != next + 1 {
            break;
        }
        next = c;
    }
    let excluded = UsedUp::probe();
    loop {
        // Counters applied by earlier batches (out of order) may continue the
        // run: a probe of the unique index first, a range read only if so.
        while !crate::local_ops::applied_between(actor, next + 1, next + 1).is_empty() {
            let more = crate::local_ops::applied_between(actor, next + 1, next + 1000);
            for c in &more {
                if *c != next + 1 {
                    break;
                }
                next = *c;
            }
            if more.len() < 1000 || more.last() != Some(&next) {
                break;
            }
        }
        // A counter a repair superseded is used up: the run goes on past it
        // (or the actor's frontier, and compaction with it, would stop there).
        if excluded.used_up(&format!("{actor}:{}", next + 1)) {
            next += 1;
            continue;
        }
        break;
    }
    if next > cur {
        run(
            "INSERT INTO converge.actor_frontier AS f (actor, contiguous) VALUES ($1, $2)
                 ON CONFLICT (actor) DO UPDATE SET contiguous = greatest(f.contiguous, EXCLUDED.contiguous)",
            &[actor.into(), next.into()],
        );
    }
}

/// Log these ops as rejected, each with its reason, and report them.
fn reject(ops: &[(&Item, String)], origin: &str, out: &mut Vec<Outcome>) {
    if ops.is_empty() {
        return;
    }
    let (items, reasons): (Vec<&Item>, Vec<Option<String>>) = ops.iter().map(|(i, r)| (*i, Some(r.clone()))).unzip();
    log_rows(&items, "rejected", &reasons, origin);
    out.extend(items.iter().zip(&reasons).map(|(i, r)| (i.op_id.clone().unwrap_or_default(), "rejected".to_string(), r.clone())));
}

/// Steps 2-5 of the apply, on converge's internal tables as their owner
/// (the user's tables are written as the caller, in merge_into_rows).
fn apply_classified(items: &[Item], targets: &[Target], origin: &str, top_level: bool, t0: std::time::Instant) -> Vec<Outcome> {
    let mut out: Vec<Outcome> = Vec::new();
    let origin = origin.to_string();
    let bad: Vec<&Item> = items.iter().filter(|i| i.bad.is_some()).collect();
    log_rows(&bad, "rejected", &bad.iter().map(|i| i.bad.clone()).collect::<Vec<_>>(), &origin);
    out.extend(bad.iter().map(|i| (i.op_id.clone().unwrap_or_default(), "rejected".to_string(), i.bad.clone())));

    // Ops a repair excluded (repair.rs): superseded wherever they arrive.
    let gone: Vec<&Item> = items.iter().filter(|i| i.bad.is_none() && i.superseded.is_some()).collect();
    log_rows(&gone, "superseded", &gone.iter().map(|i| i.superseded.clone()).collect::<Vec<_>>(), &origin);
    out.extend(gone.iter().map(|i| (i.op_id.clone().unwrap_or_default(), "superseded".to_string(), i.superseded.clone())));
    // Ops of another schema version of their column: kept aside for replay.
    let aside: Vec<&Item> = items.iter().filter(|i| i.bad.is_none() && i.superseded.is_none() && i.quarantine.is_some()).collect();
    log_rows(&aside, "quarantined", &aside.iter().map(|i| i.quarantine.clone()).collect::<Vec<_>>(), &origin);
    out.extend(aside.iter().map(|i| (i.op_id.clone().unwrap_or_default(), "quarantined".to_string(), i.quarantine.clone())));

    let t_classify = t0.elapsed();
    // 2. Duplicates: applied already, waiting in pending, or earlier in this batch.
    let valid: Vec<&Item> = items.iter().filter(|i| i.bad.is_none() && i.superseded.is_none() && i.quarantine.is_none()).collect();
    let ids: Vec<String> = valid.iter().filter_map(|i| i.op_id.clone()).collect();
    // A copy that waits here may give way to this one (Waiting::gives_way_to):
    // it is taken out of pending in step 3, under the op_id locks.
    let mut stale: Vec<String> = Vec::new();
    // An op whose counter a void holds here takes it (voids.rs).
    let mut overtaking: HashSet<String> = HashSet::new();
    let known: HashSet<String> = if ids.is_empty() {
        HashSet::new()
    } else {
        let mut s = applied_set(&ids);
        let real: Vec<&Item> = valid.iter().copied().filter(|i| !voids::is_void(i) && s.contains(i.op_id.as_deref().unwrap_or(""))).collect();
        overtaking = voids::held_by_void(&real);
        s.retain(|id| !overtaking.contains(id));
        let void_ids: Vec<String> = valid.iter().filter(|i| voids::is_void(i)).filter_map(|i| i.op_id.clone()).collect();
        if !void_ids.is_empty() {
            s.extend(voids::held_by_peer_delivery(&void_ids));
        }
        let waits = if pending_any() { waiting_copies(&ids) } else { HashMap::new() };
        for i in &valid {
            let id = i.op_id.clone().unwrap_or_default();
            if !s.contains(&id) && waits.get(&id).is_some_and(|w| w.gives_way_to(i)) && !stale.contains(&id) {
                stale.push(id);
            }
        }
        s.extend(waits.into_keys().filter(|id| !stale.contains(id)));
        s
    };
    // The first op of each counter in the batch goes on, unless it is a void
    // and the batch also has the real op (voids.rs).
    let mut first: HashMap<(String, i64), usize> = HashMap::new();
    let (mut dup, mut fresh): (Vec<&Item>, Vec<&Item>) = (Vec::new(), Vec::new());
    for it in valid {
        if known.contains(it.op_id.as_deref().unwrap_or("")) {
            dup.push(it);
            continue;
        }
        match first.entry((it.actor.clone().unwrap_or_default(), it.counter.unwrap_or(0))) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(fresh.len());
                fresh.push(it);
            }
            std::collections::hash_map::Entry::Occupied(e) if voids::is_void(fresh[*e.get()]) && !voids::is_void(it) => {
                dup.push(std::mem::replace(&mut fresh[*e.get()], it));
            }
            std::collections::hash_map::Entry::Occupied(_) => dup.push(it),
        }
    }
    log_rows(&dup, "duplicate", &vec![None; dup.len()], &origin);
    out.extend(dup.iter().map(|i| (i.op_id.clone().unwrap_or_default(), "duplicate".to_string(), None)));
    // A client's op for a table clients may not write: refused, but one
    // already here is still a duplicate (a client sending it again after a
    // lost answer is told it arrived).
    let (closed, mut fresh): (Vec<&Item>, Vec<&Item>) = fresh.into_iter().partition(|i| i.client_closed);
    reject(&closed.iter().map(|i| (*i, "client_writes_off".to_string())).collect::<Vec<_>>(), &origin, &mut out);

    // 3. Ops whose deps are missing (not applied here, not in this batch),
    //    and ops that depend on those, wait in pending. Two sessions can race
    //    on an op D: one applying D, one buffering a child of D because D is
    //    not visible yet. Both lock D's bucket (sorted, before any row lock,
    //    so no deadlock); appliers share theirs, a session about to buffer
    //    takes it exclusive, and re-checks after the other commits. Only the
    //    top-level call locks (retry_pending's pass takes no further locks).
    let mut waiting = blocked(&fresh);
    if top_level && !fresh.is_empty() {
        let mut lock_ids: Vec<String> = Vec::new();
        let mut lock_excl: Vec<bool> = Vec::new();
        for it in &fresh {
            lock_ids.push(it.op_id.clone().unwrap_or_default());
            lock_excl.push(false);
            if waiting.contains(&it.n) {
                for d in deps_of(it) {
                    lock_ids.push(d);
                    lock_excl.push(true);
                }
            }
        }
        lock_buckets(&lock_ids, &lock_excl);
        if !waiting.is_empty() {
            waiting = blocked(&fresh);
        }
    }
    if !stale.is_empty() {
        run("DELETE FROM converge.pending_ops WHERE op_id = ANY ($1)", &[stale.into()]);
    }
    // A client's ops behind a dep refused here would wait for ever.
    let orphaned = if trusted() || waiting.is_empty() { Vec::new() } else { orphans(items, &closed, &fresh, &waiting) };
    if !orphaned.is_empty() {
        reject(&orphaned, &origin, &mut out);
        for (i, _) in &orphaned {
            waiting.remove(&i.n);
        }
        fresh.retain(|i| !orphaned.iter().any(|(o, _)| o.n == i.n));
    }
    let mut buffered: Vec<&Item> = fresh.iter().copied().filter(|i| waiting.contains(&i.n)).collect();
    buffered.sort_by(|a, b| a.op_id.cmp(&b.op_id));
    if !buffered.is_empty() {
        let all: Vec<String> = buffered.iter().flat_map(|i| deps_of(i)).collect();
        let applied = deps_done(&all);
        let missing: Vec<Vec<String>> = buffered
            .iter()
            .map(|i| {
                let mut m: Vec<String> = deps_of(i).into_iter().filter(|d| !applied.contains(d)).collect();
                m.sort();
                m.dedup();
                m
            })
            .collect();
        let reasons: Vec<Option<String>> = missing.iter().map(|m| Some(format!("missing {}", m.join(", ")))).collect();
        let mut args = envelope_args(&buffered, None);
        args.push(missing.iter().map(|m| Jb(serde_json::json!(m))).collect::<Vec<Jb>>().into());
        args.push(origin.clone().into());
        run(
            "INSERT INTO converge.pending_ops (op_id, op, missing, origin)
             SELECT u.op_id,
                    ROW(u.op_id, u.actor, u.tbl, u.key, u.col, u.ver, u.ep,
                        CASE WHEN u.deps IS NOT NULL THEN ARRAY(SELECT jsonb_array_elements_text(u.deps)) END,
                        u.delta, u.sig)::converge.op,
                    ARRAY(SELECT jsonb_array_elements_text(u.missing)), $13
               FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::jsonb[], $6::text[], $7::int[],
                           $8::int8[], $9::jsonb[], $10::bytea[], $11::bytea[], $12::jsonb[])
                    u(op_id, actor, counter, tbl, key, col, ver, ep, deps, delta, sig, missing)
             ON CONFLICT DO NOTHING",
            &args,
        );
        log_rows(&buffered, "buffered", &reasons, &origin);
        out.extend(buffered.iter().zip(&reasons).map(|(i, r)| (i.op_id.clone().unwrap_or_default(), "buffered".to_string(), r.clone())));
    }

    let t_dups = t0.elapsed();
    // 4. Everything else: through the dedupe gate, then merged.
    let ready: Vec<&Item> = fresh.iter().copied().filter(|i| !waiting.contains(&i.n)).collect();
    let (won, lost, rejected) = if ready.is_empty() { Default::default() } else { voids::through_gate(&ready, &overtaking, targets, &origin) };
    control::merge_control(&won);
    // This node's own ops, sent back by a peer (to a node restored from a
    // backup), entered the log outside the op trigger's counter. The lock
    // is taken after the rows are merged: taken before, it would wait on a
    // local writer that holds one of those rows and waits for the lock.
    if let Some(me) = crate::node::local_node_if_set() {
        if won.iter().any(|i| i.actor.as_deref() == Some(me.as_str())) {
            crate::local_ops::own_ops_arrive();
        }
    }
    reject(&rejected, &origin, &mut out);
    log_rows(&lost, "duplicate", &vec![None; lost.len()], &origin);
    out.extend(lost.iter().map(|i| (i.op_id.clone().unwrap_or_default(), "duplicate".to_string(), None)));
    out.extend(won.iter().map(|i| (i.op_id.clone().unwrap_or_default(), "applied".to_string(), None)));
    let t_merge = t0.elapsed();
    // Superseded and frozen-out ops use up their counters too (advance_frontier).
    let frozen = aside.iter().filter(|i| i.quarantine.as_deref() == Some("frozen"));
    let actors: std::collections::BTreeSet<String> = won.iter().chain(gone.iter()).chain(frozen).filter_map(|i| i.actor.clone()).collect();
    for a in actors {
        let mut mine: Vec<i64> = won.iter().filter(|i| i.actor.as_deref() == Some(a.as_str())).filter_map(|i| i.counter).collect();
        mine.sort_unstable();
        advance_frontier(&a, &mine);
    }

    pgrx::debug1!(
        "converge apply: {} ops: classify {:?}, dups+deps {:?}, gate+merge {:?}, frontier {:?}",
        items.len(),
        t_classify,
        t_dups - t_classify,
        t_merge - t_dups,
        t0.elapsed() - t_merge
    );
    // 5. Pending ops whose deps are now all applied go through the same path
    //    (retry_pending's passes: an apply it makes does not call it again).
    if top_level && !won.is_empty() {
        let more = retry_pending();
        out.extend(more);
    }
    if top_level {
        // (Requests a client sent here are decided by the worker's next
        // pass, not in the client's transaction: deciding takes this node's
        // op counter, and rows the batch does not touch.)
        note_deferred();
    }
    out
}

