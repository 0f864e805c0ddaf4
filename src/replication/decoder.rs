//! The logical decoding output plugin `converge`.
//!
//! It decodes inserts into `converge.op_log` whose outcome is `applied`, and
//! nothing else: every change to a replicated table's CRDT columns, and every
//! row insert or delete, is already an op there with its small delta, so what
//! travels is proportional to the change, not to the value (PostgreSQL 15
//! logs only the new row of a user table, so decoding the table itself could
//! only ship whole states).
//!
//! Transactions that were applied under a replication origin (that is, what a
//! peer sent us) are filtered out by `filter_by_origin_cb`, so nothing is
//! shipped back or around (PostgreSQL 15 has no `origin = none`).
//!
//! Stream (binary output), one message per row of
//! `pg_logical_slot_peek_binary_changes`:
//! - `'O'` followed by the op in converge-core's binary form (`Op::encode`);
//! - `'C'` + commit end LSN (u64, big endian) + commit time (i64 µs since
//!   2000-01-01, big endian), after the ops of a transaction that had any.
//!
//! Options (none needed): `origins` = `local` (default: only changes made on
//! this node) or `all` (everything, for inspection).

use converge_core::{Json, Op};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{JsonB, PgTupleDesc};
use std::collections::HashSet;
use std::ffi::CStr;

pub const MSG_OP: u8 = b'O';
pub const MSG_COMMIT: u8 = b'C';

const FIELDS: [&str; 11] = [
    "op_id",
    "actor",
    "target_table",
    "target_key",
    "target_column",
    "schema_version",
    "epoch",
    "deps",
    "delta",
    "signature",
    "outcome",
];

struct State {
    mcxt: pg_sys::MemoryContext,
    only_local: bool,
    op_log: Option<pg_sys::Oid>,
    not_op_log: HashSet<pg_sys::Oid>,
    /// Attribute index (0-based) of each of FIELDS in op_log's tuple.
    attrs: Option<[usize; 11]>,
    txn_has_ops: bool,
}

unsafe fn state<'a>(ctx: *mut pg_sys::LogicalDecodingContext) -> &'a mut State {
    &mut *((*ctx).output_plugin_private as *mut State)
}

/// # Safety
/// Called by PostgreSQL when a slot using the `converge` plugin is decoded.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn _PG_output_plugin_init(cb: *mut pg_sys::OutputPluginCallbacks) {
    (*cb).startup_cb = Some(startup);
    (*cb).begin_cb = Some(begin);
    (*cb).change_cb = Some(change);
    (*cb).commit_cb = Some(commit);
    (*cb).filter_by_origin_cb = Some(filter_by_origin);
    (*cb).shutdown_cb = Some(shutdown);
}

#[pg_guard]
unsafe extern "C-unwind" fn startup(
    ctx: *mut pg_sys::LogicalDecodingContext,
    opt: *mut pg_sys::OutputPluginOptions,
    _is_init: bool,
) {
    (*opt).output_type = pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_BINARY_OUTPUT;
    (*opt).receive_rewrites = false;
    let mut only_local = true;
    let options = pgrx::PgList::<pg_sys::DefElem>::from_pg((*ctx).output_plugin_options);
    for def in options.iter_ptr() {
        let name = CStr::from_ptr((*def).defname).to_string_lossy();
        let value = if (*def).arg.is_null() {
            String::new()
        } else {
            CStr::from_ptr(pg_sys::defGetString(def)).to_string_lossy().into_owned()
        };
        match (name.as_ref(), value.as_str()) {
            ("origins", "local") => only_local = true,
            ("origins", "all") => only_local = false,
            ("origins", other) => crate::errors::raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("option \"origins\" must be \"local\" or \"all\", not \"{other}\""),
            ),
            (other, _) => crate::errors::raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("option \"{other}\" is not known to the converge output plugin (it takes \"origins\")"),
            ),
        }
    }
    let mcxt = pg_sys::AllocSetContextCreateExtended(
        (*ctx).context,
        c"converge decoding".as_ptr(),
        pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
        pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
        pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
    );
    let st = Box::new(State { mcxt, only_local, op_log: None, not_op_log: HashSet::new(), attrs: None, txn_has_ops: false });
    (*ctx).output_plugin_private = Box::into_raw(st) as *mut std::ffi::c_void;
}

#[pg_guard]
unsafe extern "C-unwind" fn shutdown(ctx: *mut pg_sys::LogicalDecodingContext) {
    if !(*ctx).output_plugin_private.is_null() {
        drop(Box::from_raw((*ctx).output_plugin_private as *mut State));
        (*ctx).output_plugin_private = std::ptr::null_mut();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn filter_by_origin(ctx: *mut pg_sys::LogicalDecodingContext, origin_id: pg_sys::RepOriginId) -> bool {
    state(ctx).only_local && origin_id != pg_sys::InvalidRepOriginId as pg_sys::RepOriginId
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(ctx: *mut pg_sys::LogicalDecodingContext, _txn: *mut pg_sys::ReorderBufferTXN) {
    state(ctx).txn_has_ops = false;
}

unsafe fn is_op_log(st: &mut State, rel: pg_sys::Relation) -> bool {
    let oid = (*rel).rd_id;
    if st.op_log == Some(oid) {
        return true;
    }
    if st.not_op_log.contains(&oid) {
        return false;
    }
    let relname = CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr());
    let nsp = pg_sys::get_namespace_name((*(*rel).rd_rel).relnamespace);
    let yes = !nsp.is_null() && CStr::from_ptr(nsp).to_bytes() == b"converge" && relname.to_bytes() == b"op_log";
    if yes {
        st.op_log = Some(oid);
        let desc = PgTupleDesc::from_pg_unchecked((*rel).rd_att);
        let mut attrs = [usize::MAX; 11];
        for (i, a) in desc.iter().enumerate() {
            if let Some(k) = FIELDS.iter().position(|f| *f == a.name()) {
                attrs[k] = i;
            }
        }
        st.attrs = attrs.iter().all(|a| *a != usize::MAX).then_some(attrs);
    } else {
        st.not_op_log.insert(oid);
    }
    yes
}

unsafe fn get<T: FromDatum>(values: &[pg_sys::Datum], nulls: &[bool], i: usize) -> Option<T> {
    T::from_datum(values[i], nulls[i])
}

#[pg_guard]
unsafe extern "C-unwind" fn change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    rel: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    let st = state(ctx);
    if (*change).action != pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_INSERT || !is_op_log(st, rel) {
        return;
    }
    let Some(attrs) = st.attrs else { return };
    let newtuple = (*change).data.tp.newtuple;
    if newtuple.is_null() {
        return;
    }
    let old = pg_sys::MemoryContextSwitchTo(st.mcxt);
    let desc = (*rel).rd_att;
    let natts = (*desc).natts as usize;
    let mut values = vec![pg_sys::Datum::from(0usize); natts];
    let mut nulls = vec![true; natts];
    pg_sys::heap_deform_tuple(&mut (*newtuple).tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
    let (v, n) = (&values[..], &nulls[..]);
    let outcome: Option<String> = get(v, n, attrs[10]);
    let bytes = if outcome.as_deref() == Some("applied") {
        let op = Op {
            op_id: get(v, n, attrs[0]).unwrap_or_default(),
            actor: get(v, n, attrs[1]).unwrap_or_default(),
            target_table: get(v, n, attrs[2]).unwrap_or_default(),
            target_key: Json::from_value(&get::<JsonB>(v, n, attrs[3]).map(|j| j.0).unwrap_or_default()),
            target_column: get(v, n, attrs[4]).unwrap_or_default(),
            schema_version: get(v, n, attrs[5]).unwrap_or(1),
            epoch: get(v, n, attrs[6]).unwrap_or(0),
            deps: get::<Vec<Option<String>>>(v, n, attrs[7])
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .collect(),
            delta: get(v, n, attrs[8]).unwrap_or_default(),
            signature: get(v, n, attrs[9]),
        };
        let mut b = Vec::with_capacity(64);
        b.push(MSG_OP);
        b.extend(op.encode());
        Some(b)
    } else {
        None
    };
    pg_sys::MemoryContextSwitchTo(old);
    pg_sys::MemoryContextReset(st.mcxt);
    if let Some(b) = bytes {
        st.txn_has_ops = true;
        write(ctx, &b);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    _commit_lsn: pg_sys::XLogRecPtr,
) {
    if !state(ctx).txn_has_ops {
        return;
    }
    let mut b = Vec::with_capacity(17);
    b.push(MSG_COMMIT);
    b.extend(((*txn).end_lsn).to_be_bytes());
    b.extend((*txn).xact_time.commit_time.to_be_bytes());
    write(ctx, &b);
}

unsafe fn write(ctx: *mut pg_sys::LogicalDecodingContext, bytes: &[u8]) {
    pg_sys::OutputPluginPrepareWrite(ctx, true);
    pg_sys::appendBinaryStringInfo((*ctx).out, bytes.as_ptr() as *const std::ffi::c_char, bytes.len() as i32);
    pg_sys::OutputPluginWrite(ctx, true);
}

/// One message of the stream, parsed.
pub enum Message {
    Op(Vec<u8>),
    Commit { end_lsn: u64, commit_time: i64 },
}

pub fn parse_message(b: &[u8]) -> Result<Message, String> {
    match b.split_first() {
        Some((&MSG_OP, rest)) => Ok(Message::Op(rest.to_vec())),
        Some((&MSG_COMMIT, rest)) if rest.len() == 16 => Ok(Message::Commit {
            end_lsn: u64::from_be_bytes(rest[..8].try_into().unwrap()),
            commit_time: i64::from_be_bytes(rest[8..].try_into().unwrap()),
        }),
        Some((t, _)) => Err(format!("unknown converge stream message (type byte {t}, {} bytes)", b.len())),
        None => Err("empty converge stream message".into()),
    }
}

/// A readable description of one message of the converge stream, as read
/// from `pg_logical_slot_peek_binary_changes` on a slot of this plugin.
#[pg_extern(immutable, strict, parallel_safe)]
fn describe_change(data: &[u8]) -> pgrx::JsonB {
    use crate::errors::{raise, OrRaise};
    let m = parse_message(data).unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION, e));
    JsonB(match m {
        Message::Op(bytes) => {
            let op = Op::decode(&bytes).or_raise();
            serde_json::json!({
                "op": op.op_id, "table": op.target_table, "key": op.target_key.to_value(),
                "column": op.target_column, "deps": op.deps, "delta_bytes": op.delta.len(), "bytes": data.len(),
            })
        }
        Message::Commit { end_lsn, .. } => serde_json::json!({
            "commit": format!("{:X}/{:X}", end_lsn >> 32, end_lsn & 0xffff_ffff), "bytes": data.len(),
        }),
    })
}
