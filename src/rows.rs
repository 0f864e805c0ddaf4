//! Rows of replicated tables: applying row ops (target_column '': an
//! lwwmap delta of the non-CRDT columns plus "$live"), stashing a deleted
//! row's CRDT state and resuming it when the key is inserted again.
//!
//! These steps touch both a user's table and converge.row_state, so they
//! run inside `as_owner` (row_state) and switch to the caller for every
//! statement on the user's table (`as_writer`, security.rs).

use crate::errors::raise;
use crate::direct::Table;
use crate::security::as_writer;
use converge_core::types::LwwMap;
use converge_core::Crdt;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use crate::jsonb::{Jb, Made};
use pgrx::PgSqlErrorCode;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// The columns an applied row op writes, from the apply's cached layout.
pub struct Written<'a> {
    /// Non-CRDT, non-key columns.
    pub other: &'a [String],
    /// CRDT columns declared NOT NULL: a row made here takes their empty value.
    pub not_null_crdt: &'a [String],
}

/// A replicated table as row code needs it.
pub struct RowTable<'a> {
    /// The table's name, qualified as needed (regclass text).
    pub name: String,
    pub rel: pg_sys::Oid,
    pub keys: &'a [String],
    /// CRDT column -> converge type name.
    pub crdt: &'a HashMap<String, String>,
}

fn fail(e: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("converge rows: {e}"))
}

/// Run a statement on a plan kept per backend (by its text): the apply
/// runs the same few statements for every row op of a table.
fn run(sql: &str, args: &[DatumWithOid]) {
    crate::spi::prepared(sql, args, |_| Ok(())).unwrap_or_else(|e| fail(e));
}

/// A quoted SQL identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `s` as an SQL string literal, read alike whatever the session's
/// `standard_conforming_strings` (as PostgreSQL's quote_literal writes it).
pub fn literal(s: &str) -> String {
    match s.contains('\\') {
        true => format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''")),
        false => format!("'{}'", s.replace('\'', "''")),
    }
}

/// `t.k1 = v.k1 AND ...`: row t has the key of record v (a key given as
/// JSON and read with jsonb_populate_record, so types compare as stored).
pub fn keys_match(keys: &[String]) -> String {
    keys.iter().map(|k| format!("t.{0} = v.{0}", ident(k))).collect::<Vec<_>>().join(" AND ")
}

impl RowTable<'_> {
    /// `t.k1 = v.k1 AND ...`: row t has record v's key.
    fn key_match(&self) -> String {
        keys_match(self.keys)
    }

    /// `FROM <table> t, jsonb_populate_record(NULL::<table>, $1) v WHERE <key>`.
    fn key_source(&self) -> String {
        format!("{0} t, pg_catalog.jsonb_populate_record(NULL::{0}, $1) v WHERE {1}", self.name, self.key_match())
    }

    fn update(&self, sql: &str, args: &[DatumWithOid]) -> Vec<Option<Jb>> {
        as_writer(self.rel, || crate::spi::prepared(sql, args, |t| Ok(t.map(|r| r.get::<Jb>(1).ok().flatten()).collect())))
            .unwrap_or_else(|e| fail(e))
    }

    /// Lock the row with this key (as the caller); whether it exists.
    fn lock(&self, key: &Value) -> bool {
        !self.lock_all(std::slice::from_ref(key)).is_empty()
    }

    /// The row's key columns as stored (`t.k1, ...`, which name a row: 1
    /// and 1.0 of a numeric key alike) and as given (`v.k1, ...`, the
    /// table's key order).
    fn stored_and_order(&self) -> (String, String) {
        let list = |alias: &str| self.keys.iter().map(|k| format!("{alias}.{}", ident(k))).collect::<Vec<_>>().join(", ");
        (list("t"), list("v"))
    }

    /// The keys' positions in the order the table sorts them (as the column
    /// upserts of merge.rs lock rows), each with its row's key as the table
    /// holds it if the row exists (as the caller, no lock; the key columns
    /// only, which the lock needs the right to read anyway).
    fn existing(&self, keys: &[Value]) -> Vec<(usize, Option<String>)> {
        let (stored, order) = self.stored_and_order();
        let sql = format!(
            "SELECT u.i, (SELECT ROW({2})::text FROM {0} t WHERE {1})
               FROM pg_catalog.unnest($1::jsonb[]) WITH ORDINALITY u(k, i),
                    LATERAL pg_catalog.jsonb_populate_record(NULL::{0}, u.k) v
              ORDER BY {3}, u.i",
            self.name,
            self.key_match(),
            stored,
            order
        );
        let json: Vec<Jb> = keys.iter().cloned().map(Jb).collect();
        as_writer(self.rel, || {
            crate::spi::prepared(&sql, &[json.into()], |t| {
                Ok(t.filter_map(|r| Some((r.get::<i64>(1).ok()?? as usize - 1, r.get::<String>(2).ok()?))).collect())
            })
        })
        .unwrap_or_else(|e| fail(e))
    }

    /// Lock the rows with these keys (as the caller) in the table's key
    /// order (ties in the order given: a run of `existing`'s keys is locked
    /// in its own order); each one found with its position and its key as
    /// the table holds it.
    fn lock_rows(&self, keys: &[Value]) -> Vec<(usize, String)> {
        let (stored, order) = self.stored_and_order();
        let sql = format!(
            "SELECT u.i, ROW({2})::text FROM pg_catalog.unnest($1::jsonb[]) WITH ORDINALITY u(k, i),
                    LATERAL pg_catalog.jsonb_populate_record(NULL::{0}, u.k) v, {0} t
              WHERE {1} ORDER BY {3}, u.i FOR UPDATE OF t",
            self.name,
            self.key_match(),
            stored,
            order
        );
        let json: Vec<Jb> = keys.iter().cloned().map(Jb).collect();
        as_writer(self.rel, || {
            crate::spi::prepared(&sql, &[json.into()], |t| {
                Ok(t.filter_map(|r| Some((r.get::<i64>(1).ok()?? as usize - 1, r.get::<String>(2).ok()??))).collect())
            })
        })
        .unwrap_or_else(|e| fail(e))
    }

    /// The common case of a batch of row ops, edits of rows that exist:
    /// when every key names a row of its own, lock them all in one
    /// statement, in the order `existing` gives, and hand their positions
    /// in that order to `write`, in the same subtransaction (so that the
    /// rows are locked and written by one transaction id: no MultiXact).
    /// Otherwise false, with nothing left locked or written (the
    /// subtransaction is rolled back), for `existing`'s path.
    fn with_all_present(&self, keys: &[Value], write: impl FnOnce(Vec<usize>)) -> bool {
        crate::apply::tentatively(|| {
            let rows = self.lock_rows(keys);
            let rows_named: HashSet<&str> = rows.iter().map(|(_, r)| r.as_str()).collect();
            if rows.len() != keys.len() || rows_named.len() != rows.len() {
                return None;
            }
            write(rows.into_iter().map(|(i, _)| i).collect());
            Some(())
        })
        .is_some()
    }

    /// Lock the rows with these keys (as the caller); the positions of
    /// those that exist.
    fn lock_all(&self, keys: &[Value]) -> HashSet<usize> {
        self.lock_rows(keys).into_iter().map(|(i, _)| i).collect()
    }

    /// Write each row's winning non-CRDT values (as the caller): one
    /// UPDATE per set of columns the rows' clocks hold.
    fn update_all(&self, cols: &Written, rows: &[Update]) {
        // Keys as the row_state lookup made them (no second conversion).
        let mut by_columns: std::collections::BTreeMap<Vec<String>, (Vec<Made>, Vec<Jb>)> = Default::default();
        for r in rows {
            let vals = values_of(self, &r.clock);
            let names: Vec<String> = vals.keys().filter(|k| cols.other.contains(k)).cloned().collect();
            if names.is_empty() {
                continue;
            }
            let e = by_columns.entry(names).or_default();
            e.0.push(Made(r.key_datum));
            e.1.push(Jb(Value::Object(vals)));
        }
        for (names, (keys, vals)) in by_columns {
            let sets: Vec<String> = names.iter().map(|k| format!("{0} = w.{0}", ident(k))).collect();
            let sql = format!(
                "UPDATE {0} t SET {1} FROM ROWS FROM (pg_catalog.unnest($1::jsonb[]), pg_catalog.unnest($2::jsonb[])) u(k, vals),
                        LATERAL pg_catalog.jsonb_populate_record(NULL::{0}, u.k) v,
                        LATERAL pg_catalog.jsonb_populate_record(NULL::{0}, u.vals) w
                  WHERE {2}",
                self.name,
                sets.join(", "),
                self.key_match()
            );
            as_writer(self.rel, || run(&sql, &[keys.into(), vals.into()]));
        }
    }

    /// The row's CRDT values as {column: text} (as the caller).
    fn crdt_values(&self, key: &Value) -> Map<String, Value> {
        if self.crdt.is_empty() {
            return Map::new();
        }
        // Sorted: the statement's text is its plan's key (spi::prepared).
        let mut names: Vec<&String> = self.crdt.keys().collect();
        names.sort();
        let cols: Vec<String> = names.iter().map(|c| format!("{}, t.{}::text", literal(c), ident(c))).collect();
        let sql = format!("SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object({})) FROM {}", cols.join(", "), self.key_source());
        match self.update(&sql, &[Jb(key.clone()).into()]).pop().flatten() {
            Some(Jb(Value::Object(m))) => m,
            _ => Map::new(),
        }
    }

    /// Set the row's non-CRDT columns `vals` ({column: JSON value}, as
    /// `jsonb_populate_record` reads them) in one UPDATE (as the caller).
    fn set_values(&self, key: &Value, vals: &Map<String, Value>) {
        if vals.is_empty() {
            return;
        }
        let sql = format!(
            "UPDATE {0} t SET {1} FROM pg_catalog.jsonb_populate_record(NULL::{0}, $1) v,
                    pg_catalog.jsonb_populate_record(NULL::{0}, $2) w WHERE {2}",
            self.name,
            sets_from_w(vals),
            self.key_match()
        );
        as_writer(self.rel, || run(&sql, &[Jb(key.clone()).into(), Jb(Value::Object(vals.clone())).into()]));
    }

    /// The same for the row version at `tid`, in the role and search_path
    /// the caller set (every name qualified: no operator of a schema on
    /// the path is ever chosen).
    pub fn set_values_at(&self, tid: pg_sys::ItemPointerData, vals: &Map<String, Value>) {
        let sql = format!(
            "UPDATE {0} t SET {1} FROM pg_catalog.jsonb_populate_record(NULL::{0}, $1) w
              WHERE t.ctid OPERATOR(pg_catalog.=) $2::pg_catalog.tid",
            self.name,
            sets_from_w(vals)
        );
        let (block, offset) = pgrx::itemptr::item_pointer_get_both(tid);
        let tid_text = format!("({block},{offset})");
        let written = crate::spi::prepared(&format!("{sql} RETURNING 1"), &[Jb(Value::Object(vals.clone())).into(), tid_text.into()], |t| {
            Ok(t.len())
        })
        .unwrap_or_else(|e| fail(e));
        if written != 1 {
            // Only row security forced on the owner hides a row from it here.
            crate::errors::raise_hint(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("converge could not write the decided values into the new row of {}", self.name),
                "Only a row security policy forced on the table's owner hides the row from it here.",
            );
        }
    }

    /// Merge a stash ({column: CRDT text}) into the row (as the caller).
    pub fn resume(&self, key: &Value, stash: &Map<String, Value>) {
        for (col, v) in stash {
            let Some(ty) = self.crdt.get(col) else { continue };
            let sql = format!(
                "UPDATE {0} t SET {1} = converge.merge(coalesce(t.{1}, '{{}}'), $2::converge.{2})
                   FROM pg_catalog.jsonb_populate_record(NULL::{0}, $1) v WHERE {3}",
                self.name,
                ident(col),
                ident(ty),
                self.key_match()
            );
            let text = v.as_str().unwrap_or("{}").to_string();
            as_writer(self.rel, || run(&sql, &[Jb(key.clone()).into(), text.into()]));
        }
    }

    /// Delete the row (as the caller); its CRDT state is returned for the stash.
    fn delete(&self, key: &Value) -> Map<String, Value> {
        let state = self.crdt_values(key);
        let sql = format!("DELETE FROM {0} t USING pg_catalog.jsonb_populate_record(NULL::{0}, $1) v WHERE {1}", self.name, self.key_match());
        as_writer(self.rel, || run(&sql, &[Jb(key.clone()).into()]));
        state
    }
}

/// `c1 = w.c1, ...` for the columns of `vals`.
fn sets_from_w(vals: &Map<String, Value>) -> String {
    vals.keys().map(|k| format!("{0} = w.{0}", ident(k))).collect::<Vec<_>>().join(", ")
}

/// Merge two stashes column by column (CRDT merge of the text forms).
pub fn merge_stash(a: &Map<String, Value>, b: &Map<String, Value>, crdt: &HashMap<String, String>) -> Map<String, Value> {
    let mut out = a.clone();
    for (col, v) in b {
        let (Some(ty), Some(bt)) = (crdt.get(col), v.as_str()) else { continue };
        let merged = match out.get(col).and_then(Value::as_str) {
            None => bt.to_string(),
            Some(at) => merge_text(ty, at, bt),
        };
        out.insert(col.clone(), Value::String(merged));
    }
    out
}

fn merge_text(ty: &str, a: &str, b: &str) -> String {
    fn go<T: converge_core::Crdt>(a: &str, b: &str) -> String {
        let mut x = converge_core::from_text::<T>(a).unwrap_or_else(|e| fail(e));
        x.merge(&converge_core::from_text::<T>(b).unwrap_or_else(|e| fail(e)));
        converge_core::to_text(&x)
    }
    for_crdt_type!(ty, T => go::<T>(a, b), _ => fail(format!("unknown type {ty}")))
}

fn as_map(v: Option<Jb>) -> Map<String, Value> {
    match v {
        Some(Jb(Value::Object(m))) => m,
        _ => Map::new(),
    }
}

/// A row the batch only updates: present, and live after each of its ops.
struct Update {
    key: Value,
    key_datum: pg_sys::Datum,
    entry: Option<crate::row_state::Locked>,
    clock: LwwMap,
}

fn decoded(delta: &[u8]) -> LwwMap {
    // Validated by the apply's classification.
    converge_core::decode::<LwwMap>(delta).unwrap_or_else(|e| fail(e.message))
}

pub(crate) fn is_alive(clock: &LwwMap) -> bool {
    clock.get("$live").map(|j| j.to_value()).and_then(|v| v.as_bool()).unwrap_or(true)
}

/// The row's non-CRDT, non-key values as its clock has them.
fn values_of(t: &RowTable, clock: &LwwMap) -> Map<String, Value> {
    let mut vals = match clock.to_user_json() {
        Ok(Value::Object(m)) => m,
        Ok(_) => Map::new(),
        Err(e) => fail(e.message),
    };
    vals.remove("$live");
    for k in t.keys {
        vals.remove(k);
    }
    vals
}

type Group = (Value, Vec<Vec<u8>>);

/// Apply row ops of one table, in key order then batch order: merge each
/// lwwmap delta into the row's clock, then make the table agree with it:
/// present with the winning non-CRDT values while "$live" is not false,
/// absent (CRDT state stashed) otherwise. Runs inside `as_owner`.
///
/// Set-wise where it can: when every key names an existing row of its own
/// (batches of edits, most of them), all are locked in one statement;
/// otherwise each run of keys whose rows exist is. The locked rows that
/// stay live through all their ops (edits of existing rows, most row ops)
/// are written with one UPDATE per set of columns, each row's deltas
/// merged here first (the clock's winners are what updates op by op would
/// leave). Absent keys (inserts), rows that die
/// or come back, and keys naming a row another key of the batch names too
/// (equal as the table compares them, e.g. 1 and 1.0) go op by op. Rows
/// are locked in key order, as op by op: an insert, which may wait for
/// another session's insert of its key, holds no later row; except a row
/// deleted between the probe and the lock of its run, inserted again after
/// the run (a deadlock PostgreSQL then detects is possible there). Key
/// order is the table's order of its key columns, the order in which the
/// column upserts (merge.rs) lock rows too.
/// (A user's trigger sees one UPDATE of many rows, not one per row.)
pub fn merge_row_ops(t: &RowTable, cols: &Written, ops: Vec<(Value, Vec<u8>)>) {
    // Grouped by row (stable: batch order within a row), under the row's
    // first spelling of its key.
    let mut ops: Vec<(String, Value, Vec<u8>)> = ops.into_iter().map(|(k, d)| (crate::apply::row_identity(&k), k, d)).collect();
    ops.sort_by(|a, b| a.0.cmp(&b.0));
    let mut groups: Vec<Group> = Vec::new();
    let mut last: Option<String> = None;
    for (row, key, delta) in ops {
        match groups.last_mut() {
            Some((_, ds)) if last.as_ref() == Some(&row) => ds.push(delta),
            _ => groups.push((key, vec![delta])),
        }
        last = Some(row);
    }
    let keys: Vec<Value> = groups.iter().map(|(k, _)| k.clone()).collect();
    // Batches of edits take one statement; a batch that inserts, deletes
    // or brings back a row (its ops put "$live"; a value that merely holds
    // the text only sends the batch this way) would lock every existing
    // row to roll back, so it takes the probe's path at once, as does a
    // single key (the op-by-op fallback: no subtransaction for one row).
    let edits = groups.len() > 1 && !groups.iter().flat_map(|(_, ds)| ds).any(|d| d.windows(5).any(|w| w == b"$live"));
    let mut pending = Some(groups);
    if edits
        && t.with_all_present(&keys, |order| {
            let mut slots: Vec<Option<Group>> = pending.take().expect("the groups are taken once").into_iter().map(Some).collect();
            let run: Vec<Group> = order.iter().filter_map(|&i| slots[i].take()).collect();
            let all = (0..run.len()).collect();
            merge_locked(t, cols, run, all);
        })
    {
        return;
    }
    let groups = pending.take().expect("the groups are taken once");
    let rows = t.existing(&keys);
    let mut named: HashMap<&str, usize> = HashMap::new();
    for row in rows.iter().filter_map(|(_, r)| r.as_deref()) {
        *named.entry(row).or_default() += 1;
    }
    let mut slots: Vec<Option<Group>> = groups.into_iter().map(Some).collect();
    let mut run: Vec<Group> = Vec::new();
    for (i, row) in &rows {
        let Some(g) = slots[*i].take() else { continue };
        if row.as_deref().is_some_and(|c| named[c] == 1) {
            run.push(g);
            continue;
        }
        merge_run(t, cols, std::mem::take(&mut run));
        merge_one_by_one(t, cols, g.1.into_iter().map(|d| (g.0.clone(), d)).collect());
    }
    merge_run(t, cols, run);
    // (The probe returns every key; should one be missing, it still applies.)
    for g in slots.into_iter().flatten() {
        merge_one_by_one(t, cols, g.1.into_iter().map(|d| (g.0.clone(), d)).collect());
    }
}

/// A run of keys whose rows existed a moment ago: locked at once, the rows
/// that only change written set-wise, the others op by op.
fn merge_run(t: &RowTable, cols: &Written, run: Vec<Group>) {
    if run.is_empty() {
        return;
    }
    let present = t.lock_all(&run.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>());
    merge_locked(t, cols, run, present);
}

/// A run whose rows at the positions `present` this transaction holds
/// locked: those that stay live written set-wise, the others op by op.
fn merge_locked(t: &RowTable, cols: &Written, run: Vec<Group>, present: HashSet<usize>) {
    let mut state = Table::open(c"row_state");
    let mut probe = crate::row_state::Probe::open(&state);
    let (mut updates, mut slow) = (Vec::new(), Vec::new());
    for (i, (key, deltas)) in run.into_iter().enumerate() {
        if present.contains(&i) {
            let key_datum = crate::jsonb::datum(&key);
            let entry = probe.lock(&state, t.rel, key_datum);
            let mut clock = entry.as_ref().map(|e| e.clock.clone()).unwrap_or_default();
            let mut alive = true;
            for d in &deltas {
                clock.merge(&decoded(d));
                alive &= is_alive(&clock);
            }
            if alive {
                updates.push(Update { key, key_datum, entry, clock });
                continue;
            }
        }
        slow.extend(deltas.into_iter().map(|d| (key.clone(), d)));
    }
    probe.close();
    t.update_all(cols, &updates);
    for u in updates {
        match u.entry {
            Some(e) => {
                let stash = e.stash.clone();
                crate::row_state::rewrite(&mut state, e, t.rel, u.key_datum, &u.clock, true, stash)
            }
            // (The row was locked and present with no entry: a first entry
            // another transaction wrote meanwhile is not expected; the batch
            // is tried again should it happen.)
            None if crate::row_state::try_insert(t.rel, &u.key, &u.clock, true, Map::new()) => {}
            None => raise(
                PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                format!("another transaction wrote the row state of {} {} first", t.name, u.key),
            ),
        }
    }
    state.close();
    merge_one_by_one(t, cols, slow);
}

/// The op-by-op path of `merge_row_ops` (ops sorted by key).
fn merge_one_by_one(t: &RowTable, cols: &Written, ops: Vec<(Value, Vec<u8>)>) {
    for (key, delta) in ops {
        let delta = decoded(&delta);
        while !merge_one(t, cols, &key, &delta) {}
    }
}

/// Merge one row op into its row and clock. False, with nothing written,
/// when another transaction wrote the key's first clock after this one
/// looked: the op is merged again, against it and the row as they are now.
fn merge_one(t: &RowTable, cols: &Written, key: &Value, delta: &LwwMap) -> bool {
    // Lock order as in local writes: the row, then its row_state.
    let present = t.lock(key);
    // The row's clock and stash, locked in their newest version, and the
    // delta merged in (row_state.rs: no statement).
    let key_datum = crate::jsonb::datum(key);
    let probe = Table::open(c"row_state");
    let entry = crate::row_state::lock(&probe, t.rel, key_datum);
    probe.close();
    // A row and its first clock another transaction committed between the
    // two looks: the row is there now (the clock's lock keeps it so).
    let present = present || (entry.is_some() && t.lock(key));
    let mut clock = entry.as_ref().map(|e| e.clock.clone()).unwrap_or_default();
    let mut stash = entry.as_ref().map(|e| e.stash.clone()).unwrap_or_default();
    clock.merge(delta);
    let alive = is_alive(&clock);
    if entry.is_none() && !alive && !present {
        // A key new here that stays deleted: its first clock is all there is.
        return crate::row_state::try_insert(t.rel, key, &clock, false, stash);
    }
    let vals = values_of(t, &clock);
    if alive && !present {
        insert_row(t, cols, key, vals);
        t.resume(key, &stash); // back from a tombstone: resume the state it kept
        stash.clear();
    } else if alive {
        let vals: Map<String, Value> = vals.into_iter().filter(|(k, _)| cols.other.contains(k)).collect();
        t.set_values(key, &vals);
    } else if present {
        let gone = t.delete(key);
        stash = merge_stash(&stash, &gone, t.crdt);
    }
    match entry {
        Some(e) => {
            let mut state = Table::open(c"row_state");
            crate::row_state::rewrite(&mut state, e, t.rel, key_datum, &clock, alive, stash);
            state.close();
        }
        // The row was written first, as a local writer does (a local insert
        // of the key holds its row and takes the clock at its commit). A
        // first clock another transaction wrote meanwhile would have to be
        // merged with what this one did to the row: the batch is applied
        // again instead (rare: two first writers of one key at once).
        None if crate::row_state::try_insert(t.rel, key, &clock, alive, stash) => {}
        None => raise(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            format!("another transaction wrote the row state of {} {} first; apply the batch again", t.name, key),
        ),
    }
    true
}

/// Create the row of `key` from the clock's values `vals` (its non-CRDT
/// columns), as the caller: every column it names, and its CRDT columns
/// empty (NULL, or the empty value where the column is NOT NULL: their
/// ops merge in), so no default of this node's stands in for a value the
/// inserting node wrote. Columns the clock does not name yet take their
/// defaults; generated columns are computed, identity ones take the value
/// sent.
fn insert_row(t: &RowTable, cols: &Written, key: &Value, mut row: Map<String, Value>) {
    // (A column dropped here that older ops still name is not written.)
    row.retain(|c, _| cols.other.contains(c));
    if let Value::Object(k) = key {
        row.extend(k.clone());
    }
    for c in t.crdt.keys() {
        let empty = if cols.not_null_crdt.contains(c) { Value::String("{}".into()) } else { Value::Null };
        row.insert(c.clone(), empty);
    }
    let mut names: Vec<String> = row.keys().map(|c| ident(c)).collect();
    names.sort();
    let names = names.join(", ");
    let sql = format!("INSERT INTO {0} ({names}) OVERRIDING SYSTEM VALUE SELECT {names} FROM pg_catalog.jsonb_populate_record(NULL::{0}, $1)", t.name);
    as_writer(t.rel, || run(&sql, &[Jb(Value::Object(row)).into()]));
}

/// Rows the apply re-created while a local DELETE of them committed: their
/// CRDT state joins the tombstone's stash and they are deleted again.
pub fn bury(t: &RowTable, keys: &[Value]) {
    for key in keys {
        let gone = t.delete(key);
        let stash = Spi::connect_mut(|c| {
            c.update(
                "SELECT stash FROM converge.row_state WHERE tbl = $1::oid::regclass AND target_key = $2 FOR UPDATE",
                Some(1),
                &[t.rel.into(), Jb(key.clone()).into()],
            )
            .and_then(|r| if r.is_empty() { Ok(None) } else { r.first().get::<Jb>(1) })
        })
        .unwrap_or_else(|e| fail(e));
        let merged = merge_stash(&as_map(stash), &gone, t.crdt);
        Spi::run_with_args(
            "UPDATE converge.row_state SET stash = $3 WHERE tbl = $1::oid::regclass AND target_key = $2",
            &[t.rel.into(), Jb(key.clone()).into(), Jb(Value::Object(merged)).into()],
        )
        .unwrap_or_else(|e| fail(e));
    }
}
