//! The row op of a local insert, delete or change of a non-CRDT column of a
//! replicated table (SPEC section 4): an lwwmap delta of the changed
//! non-CRDT columns plus "$live", kept per row in `converge.row_state`.
//!
//! Everything here stays out of SQL (this replaced a PL/pgSQL function of
//! about ten statements per row, then two planned statements per row):
//! the new row becomes JSON through `row_to_json` called directly, an
//! update puts only the columns whose stored values changed (the trigger
//! compares them), the clock is computed here, the row's row_state entry
//! is read, locked and rewritten in place (`row_state`), and the op row
//! goes straight into the log (`local_ops`). Only the first row op of a
//! key inserts its entry with a statement; when another transaction wrote
//! that entry first, the row op is computed again against it.
//!
//! A column listed in the layout but absent from the row (a schema change
//! the layout did not follow) is skipped; one dot is drawn per row op.

use crate::errors::raise;
use converge_core::types::lwwmap::{LwwEntry, LwwSlot};
use converge_core::types::LwwMap;
use crate::direct::Table;
use converge_core::{decode_trusted, encode, to_text, Crdt, Json, Timestamp};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::{Map, Value};
use std::collections::HashMap;

#[derive(Clone, Copy, PartialEq)]
pub enum RowEvent {
    Insert,
    Update,
    Delete,
}

/// What the row op needs from the trigger.
pub struct RowChange<'a> {
    pub rel: pg_sys::Oid,
    /// The table's qualified name, as ops name it.
    pub table: &'a str,
    pub other: &'a [String],
    /// An update's non-CRDT columns whose stored values changed.
    pub changed: Vec<&'a str>,
    /// The deleted row's CRDT columns as (column, text form).
    pub gone: Map<String, Value>,
    pub crdt: &'a HashMap<String, String>,
    pub event: RowEvent,
    pub key: &'a Value,
    /// The new row (insert, update) as a composite datum.
    pub new: Option<pg_sys::Datum>,
    /// Whether its JSON must be checked by jsonb (see `row_values`).
    pub check_json: bool,
    /// The schema version of the row ops (`set_schema_version` with no column).
    pub version: i32,
    /// The row's epoch (epochs.rs): the newest freeze's, 0 before any.
    pub epoch: i64,
    /// Called with the row op's delta before it is logged (the trigger's
    /// authority check, which raises).
    pub guard: Option<&'a dyn Fn(&[u8])>,
    /// Non-CRDT columns decided by another node (authorities): an insert
    /// writes them with a placeholder timestamp (`Timestamp::placeholder`),
    /// which every real write beats. Read on inserts only.
    pub decided_elsewhere: Vec<&'a str>,
}

/// What the new row of an insert takes over after its row op: the CRDT
/// state a re-inserted key resumes (its tombstone's stash), and the values
/// of columns decided elsewhere that the authority wrote before.
#[derive(Default)]
pub struct Resume {
    pub crdt: Map<String, Value>,
    pub decided: Map<String, Value>,
}

fn fail(e: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("recording a row op: {e}"))
}

/// The row's columns as JSON values, {column: value}, as `row_to_json`
/// renders them: as `to_jsonb` does, except that `json` values and float
/// exponents keep their text form (every node writes the same text back
/// through jsonb, so all reach the same value). A `json` value jsonb
/// refuses (a \u0000 escape, a number beyond numeric's range) would be
/// refused by the other nodes only: with `check` (the table has `json`,
/// composite or range columns) the row goes through `jsonb_in` here first,
/// and such a write fails here as it did with `to_jsonb`.
fn row_values(row: Option<pg_sys::Datum>, check: bool) -> Map<String, Value> {
    let Some(row) = row else { return Map::new() };
    let text = unsafe {
        let json = pgrx::direct_function_call_as_datum(pg_sys::row_to_json, &[Some(row)]).expect("row_to_json");
        let cstr = pg_sys::text_to_cstring(json.cast_mut_ptr());
        if check {
            pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(pg_sys::Datum::from(cstr))]);
        }
        std::ffi::CStr::from_ptr(cstr).to_string_lossy().into_owned()
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => Map::new(),
        Err(e) => fail(e),
    }
}

/// Record the row op of `ch`; returns what the new row takes over.
pub fn record(me: &str, ch: RowChange) -> Resume {
    let new = row_values(ch.new, ch.check_json);
    record_values(me, ch, new)
}

/// `record` with the new row given as its JSON values (`row_to_json`'s).
pub fn record_values(me: &str, ch: RowChange, new: Map<String, Value>) -> Resume {
    let key_datum = crate::jsonb::datum(ch.key);
    let mut state = Table::open(c"row_state");
    let (_, _) = crate::node::mutation(); // a row op is data written by this node
    loop {
        let locked = crate::row_state::lock(&state, ch.rel, key_datum);
        let before = locked.as_ref().map(|l| l.clock.clone()).unwrap_or_default();
        if locked.is_none() && ch.event == RowEvent::Insert {
            // Its tombstone may have been dropped (compact()): write newer
            // than it still, or a node that kept it would keep the row deleted.
            if let Some(ts) = crate::row_state::dropped_floor(ch.rel).as_ref().and_then(|f| f.max_timestamp()) {
                crate::node::observe(ts);
            }
        }
        let stash = locked.as_ref().map(|l| l.stash.clone()).unwrap_or_default();
        let Planned { clock, stash, resume, placeholders } = plan(me, &ch, &new, &before, stash);
        if clock == before {
            state.close();
            return resume;
        }
        // A placeholder that lost to the tombstone's older write travels too:
        // a node that no longer has that tombstone takes it, not NULL.
        let mut delta = LwwMap::delta(&clock, &before);
        delta.merge(&placeholders);
        let delta = encode(&delta);
        if let Some(guard) = ch.guard {
            guard(&delta);
        }
        let live = ch.event != RowEvent::Delete;
        match locked {
            Some(entry) => crate::row_state::rewrite(&mut state, entry, ch.rel, key_datum, &clock, live, stash),
            None => {
                if !crate::row_state::try_insert(ch.rel, ch.key, &clock, live, stash) {
                    // Another transaction wrote the key's first entry and
                    // committed: this row op is computed again against it.
                    continue;
                }
            }
        }
        crate::commit_ops::record(me, ch.table, key_datum, &[String::new()], &[ch.version], ch.epoch, vec![delta]);
        state.close();
        return resume;
    }
}

/// What a row op writes: the row's new clock and stash, what the new row
/// takes over, and the placeholders put for columns decided elsewhere.
struct Planned {
    clock: LwwMap,
    stash: Map<String, Value>,
    resume: Resume,
    placeholders: LwwMap,
}

/// The row op of `ch` against the row's clock `before` and stash.
fn plan(me: &str, ch: &RowChange, new: &Map<String, Value>, before: &LwwMap, mut stash: Map<String, Value>) -> Planned {
    let mut clock = before.clone();
    let mut resume = Resume::default();
    let mut placeholders = LwwMap::default();
    let put = |clock: &mut LwwMap, k: &str, v: &Value| {
        let ts = crate::node::timestamp(me, clock.max_timestamp());
        clock.put(k, Json::from_value(v), ts);
    };
    match ch.event {
        RowEvent::Delete => {
            put(&mut clock, "$live", &Value::Bool(false));
            // The row is gone: its CRDT state moves to the tombstone.
            stash = crate::rows::merge_stash(&stash, &ch.gone, ch.crdt);
        }
        RowEvent::Update => {
            for k in &ch.changed {
                if let Some(v) = new.get(*k) {
                    put(&mut clock, k, v);
                }
            }
        }
        RowEvent::Insert => {
            for k in ch.other {
                let Some(v) = new.get(k) else { continue };
                if ch.decided_elsewhere.contains(&k.as_str()) {
                    if let Some(won) = put_placeholder(&mut clock, &mut placeholders, me, k, v) {
                        resume.decided.insert(k.clone(), won);
                    }
                } else {
                    put(&mut clock, k, v);
                }
            }
            put(&mut clock, "$live", &Value::Bool(true));
            // The key comes back from a tombstone: it resumes the CRDT
            // state the tombstone kept (every node does the same).
            resume.crdt = std::mem::take(&mut stash);
        }
    }
    Planned { clock, stash, resume, placeholders }
}

/// Put an insert's value `v` (NULL or the default: the guard allows no
/// other) of column `k`, decided by another node, into `clock` with a
/// placeholder timestamp, which every real write beats: a value for the
/// row, not a decision. The write also goes into `put` (it travels in the
/// op even when it loses). Returns the winner when an older write of the
/// tombstone's wins, for the new row to take.
fn put_placeholder(clock: &mut LwwMap, put: &mut LwwMap, me: &str, k: &str, v: &Value) -> Option<Value> {
    let ts = Timestamp::placeholder(me, clock.entries.get(k).map(|e| &e.0));
    put.merge(&clock.put(k, Json::from_value(v), ts));
    let won = match clock.entries.get(k) {
        Some(LwwEntry(_, LwwSlot::Put(w))) => w.to_value(),
        _ => Value::Null, // a removal: the apply leaves such a column NULL
    };
    (won != *v).then_some(won)
}

/// Give `stash` back to the row_state entry of `key`: its insert took it
/// to resume, and the row was deleted again in the same transaction before
/// that insert's (deferred) op was recorded. The delete then stashes it
/// with the row's own state, as every node applying the two ops does.
pub fn restash(rel: pg_sys::Oid, crdt: &HashMap<String, String>, key: &Value, stash: &Map<String, Value>) {
    let key_datum = crate::jsonb::datum(key);
    let mut state = Table::open(c"row_state");
    if let Some(entry) = crate::row_state::lock(&state, rel, key_datum) {
        let merged = crate::rows::merge_stash(&entry.stash, stash, crdt);
        let clock = entry.clock.clone();
        let live = crate::rows::is_alive(&clock);
        crate::row_state::rewrite(&mut state, entry, rel, key_datum, &clock, live, merged);
    }
    state.close();
}

/// The text form of a stored CRDT value of type `kind` (for the stash).
pub fn crdt_text(kind: &str, bytes: &[u8]) -> Option<String> {
    fn go<T: Crdt>(b: &[u8]) -> Option<String> {
        decode_trusted::<T>(b).ok().map(|v| to_text(&v))
    }
    for_crdt_type!(kind, T => go::<T>(bytes), _ => None)
}
