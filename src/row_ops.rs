//! The row op of a local insert, delete or change of a non-CRDT column of a
//! replicated table (SPEC section 4): an lwwmap delta of the changed
//! non-CRDT columns plus "$live", kept per row in `converge.row_state`.
//!
//! This replaced a PL/pgSQL function called through SPI (about ten
//! statements per row). Now: the rows become jsonb through one prepared
//! `to_jsonb` per table (as the caller: the row's own values), the clock is
//! computed here, row_state is read and written with two prepared
//! statements as converge's owner, and the op row goes straight into the
//! log (`local_ops`). The owner's statements name every object and
//! operator with its schema, so they run without a search_path switch.
//!
//! Differences from the PL/pgSQL version it replaced: a column's change is
//! detected on the JSON values as serde sees them, so a numeric that only
//! changed scale (1.5 to 1.50) now ships as a change; a column listed in
//! the layout but absent from the row (renamed without running replicate
//! again) is skipped instead of put as null; one dot is drawn per row op.

use crate::errors::raise;
use converge_core::types::LwwMap;
use converge_core::{decode_trusted, encode, from_text, to_text, Crdt, Json};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
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
    pub rowtype: pg_sys::Oid,
    /// The table's qualified name, as ops name it.
    pub table: &'a str,
    pub other: &'a [String],
    /// The deleted row's CRDT columns as (column, text form).
    pub gone: Map<String, Value>,
    pub crdt: &'a HashMap<String, String>,
    pub event: RowEvent,
    pub key: &'a Value,
    pub new: Option<DatumWithOid<'a>>,
    pub old: Option<DatumWithOid<'a>>,
}

fn fail(e: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("recording a row op: {e}"))
}

/// `to_jsonb` of rows of one table, as the caller: {column: value}.
fn row_json(rowtype: pg_sys::Oid, rows: [Option<DatumWithOid>; 2]) -> [Map<String, Value>; 2] {
    let [a, b] = rows;
    let (a_null, b_null) = (a.is_none(), b.is_none());
    let args = [a.unwrap_or_else(|| DatumWithOid::null_oid(rowtype)), b.unwrap_or_else(|| DatumWithOid::null_oid(rowtype))];
    // Prepared per row type (the helper keys plans by argument types).
    let out = crate::spi::prepared("SELECT pg_catalog.to_jsonb($1), pg_catalog.to_jsonb($2)", &args, |t| {
        let r = t.first();
        Ok((r.get::<JsonB>(1)?, r.get::<JsonB>(2)?))
    })
    .unwrap_or_else(|e| fail(e));
    let obj = |j: Option<JsonB>, null: bool| match j {
        Some(JsonB(Value::Object(m))) if !null => m,
        _ => Map::new(),
    };
    [obj(out.0, a_null), obj(out.1, b_null)]
}

/// Record the row op of `ch`; returns the CRDT state a re-inserted key
/// resumes (its tombstone's stash), empty otherwise.
pub fn record(me: &str, ch: RowChange) -> Map<String, Value> {
    let [new, old] = row_json(ch.rowtype, [ch.new, ch.old]);
    let pick = |row: &Map<String, Value>| -> Map<String, Value> {
        ch.other.iter().filter_map(|o| row.get(o).map(|v| (o.clone(), v.clone()))).collect()
    };
    let (nnew, nold) = (pick(&new), pick(&old));
    let key = ch.key;
    let (clock0, stash0) = crate::security::as_owner_id(|| read_state(ch.rel, key));
    let mut clock = clock0.clone().unwrap_or_default();
    let mut stash = stash0.unwrap_or_default();
    let mut resume = Map::new();
    let (_, _) = crate::node::mutation(); // a row op is data written by this node
    let put = |clock: &mut LwwMap, k: &str, v: &Value| {
        let ts = crate::node::timestamp(me, clock.max_timestamp());
        clock.put(k, Json::from_value(v), ts);
    };
    if ch.event == RowEvent::Delete {
        put(&mut clock, "$live", &Value::Bool(false));
        // The row is gone: its CRDT state moves to the tombstone.
        stash = crate::rows::merge_stash(&stash, &ch.gone, ch.crdt);
    } else {
        for (k, v) in &nnew {
            if ch.event == RowEvent::Insert || nold.get(k) != Some(v) {
                put(&mut clock, k, v);
            }
        }
        if ch.event == RowEvent::Insert {
            put(&mut clock, "$live", &Value::Bool(true));
            // The key comes back from a tombstone: it resumes the CRDT
            // state the tombstone kept (every node does the same).
            resume = std::mem::take(&mut stash);
        }
    }
    let before = clock0.unwrap_or_default();
    if clock == before {
        return resume;
    }
    let delta = encode(&LwwMap::delta(&clock, &before));
    crate::local_ops::log_local_ops(me, ch.table, ch.key, &[String::new()], vec![delta]);
    let live = ch.event != RowEvent::Delete;
    crate::security::as_owner_id(|| write_state(ch.rel, key, &clock, live, stash));
    resume
}

/// The row's clock and stash, locked (None when the row has no state yet).
///
/// Planned afresh on every call (CURSOR_OPT_CUSTOM_PLAN): a generic plan
/// made while row_state is still empty is a sequential scan, and it would
/// stay one, a full scan per row op, until the table is next analyzed.
fn read_state(rel: pg_sys::Oid, key: &Value) -> (Option<LwwMap>, Option<Map<String, Value>>) {
    let rows = crate::spi::planned_rows(
        c"SELECT s.clock::pg_catalog.text, s.stash FROM converge.row_state s
           WHERE s.tbl OPERATOR(pg_catalog.=) $1::pg_catalog.regclass
             AND s.target_key OPERATOR(pg_catalog.=) $2 FOR UPDATE",
        pg_sys::CURSOR_OPT_CUSTOM_PLAN,
        &[pg_sys::OIDOID, pg_sys::JSONBOID],
        vec![Some(pg_sys::Datum::from(rel)), JsonB(key.clone()).into_datum()],
        |tup, desc| unsafe {
            let (mut n1, mut n2) = (false, false);
            let clock = String::from_datum(pg_sys::SPI_getbinval(tup, desc, 1, &mut n1), n1);
            let stash = JsonB::from_datum(pg_sys::SPI_getbinval(tup, desc, 2, &mut n2), n2);
            (clock, stash)
        },
    );
    let Some((clock, stash)) = rows.into_iter().next() else { return (None, None) };
    let clock = clock.map(|t| from_text::<LwwMap>(&t).unwrap_or_else(|e| fail(e))).unwrap_or_default();
    let stash = match stash {
        Some(JsonB(Value::Object(m))) => m,
        _ => Map::new(),
    };
    (Some(clock), Some(stash))
}

fn write_state(rel: pg_sys::Oid, key: &Value, clock: &LwwMap, live: bool, stash: Map<String, Value>) {
    let args: Vec<DatumWithOid> =
        vec![rel.into(), JsonB(key.clone()).into(), to_text(clock).into(), live.into(), JsonB(Value::Object(stash)).into()];
    crate::spi::prepared(
        "INSERT INTO converge.row_state AS s (tbl, target_key, clock, live, stash)
         VALUES ($1::pg_catalog.regclass, $2, $3::converge.lwwmap, $4, $5)
         ON CONFLICT (tbl, target_key) DO UPDATE
            SET clock = EXCLUDED.clock, live = EXCLUDED.live, stash = EXCLUDED.stash",
        &args,
        |_| Ok(()),
    )
    .unwrap_or_else(|e| fail(e));
}

/// The text form of a stored CRDT value of type `kind` (for the stash).
pub fn crdt_text(kind: &str, bytes: &[u8]) -> Option<String> {
    fn go<T: Crdt>(b: &[u8]) -> Option<String> {
        decode_trusted::<T>(b).ok().map(|v| to_text(&v))
    }
    for_crdt_type!(kind, T => go::<T>(bytes), _ => None)
}
