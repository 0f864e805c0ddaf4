//! The trigger that `converge.replicate(table)` installs: every local change
//! of a replicated table becomes ops of this node.
//!
//! The hot path (an UPDATE that changes CRDT columns only) stays in Rust:
//! the table's layout is cached per backend (dropped on relcache
//! invalidation), each changed column's delta is computed from the stored
//! bytes with converge-core, and the op rows go straight into the log
//! (`local_ops`: the op counter, locked to commit, so this node's ops
//! commit in counter order). Row ops (INSERT, DELETE, a change of a
//! non-CRDT column) are recorded by `row_ops`.

use crate::errors::raise_hint;
use crate::node;
use crate::row_ops::{RowChange, RowEvent};
use converge_core::authority::Authorities;
use converge_core::{decode_trusted, encode, Crdt};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

struct Column {
    index: usize,
    name: String,
    kind: String,
}

/// What the trigger needs to know about a replicated table.
struct Meta {
    name: String,
    keys: Vec<Column>,
    crdt: Vec<Column>,
    /// CRDT column -> converge type name.
    crdt_types: HashMap<String, String>,
    /// The non-CRDT columns present in the table: (index, name).
    other: Vec<(usize, String)>,
    other_names: Vec<String>,
    /// Some non-CRDT column may render JSON that jsonb refuses (row_ops).
    check_json: bool,
    /// Schema versions set with converge.set_schema_version: column (''
    /// for the row ops) -> version; 1 for any other.
    versions: HashMap<String, i32>,
    /// The table's authority columns (converge-core's `Authorities`): a
    /// local op of one fails here by the rule the other nodes apply to it.
    auth: Authorities,
    /// The table has an authority (set_authority with no column), so its
    /// rows can be frozen: local ops carry the row's epoch (epochs.rs).
    freezable: bool,
}

thread_local! {
    static META: RefCell<HashMap<pg_sys::Oid, Option<Rc<Meta>>>> = RefCell::new(HashMap::new());
    static CALLBACK: RefCell<bool> = const { RefCell::new(false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_meta(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    crate::direct::forget_oid(relid);
    crate::apply::forget_resolved();
    // set_node invalidates node_identity (and a rollback replays that here).
    crate::node::forget_name();
    META.with(|m| {
        if relid == pg_sys::InvalidOid {
            m.borrow_mut().clear();
        } else {
            m.borrow_mut().remove(&relid);
        }
    });
}

/// Drop this backend's caches of converge's layouts and oids whenever the
/// relcache entry of a table is invalidated (registered once per backend).
pub fn watch_relcache() {
    CALLBACK.with(|c| {
        if !*c.borrow() {
            unsafe {
                pg_sys::CacheRegisterRelcacheCallback(Some(forget_meta), pg_sys::Datum::from(0));
                // A renamed schema changes the names of its tables, a
                // renamed type the casts of key values.
                for cache in [pg_sys::SysCacheIdentifier::NAMESPACEOID, pg_sys::SysCacheIdentifier::TYPEOID] {
                    pg_sys::CacheRegisterSyscacheCallback(cache as i32, Some(forget_all), pg_sys::Datum::from(0));
                }
            }
            *c.borrow_mut() = true;
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_all(_arg: pg_sys::Datum, _cache: std::ffi::c_int, _hash: u32) {
    forget_meta(pg_sys::Datum::from(0), pg_sys::InvalidOid);
}

fn meta(rel: pg_sys::Relation) -> Option<Rc<Meta>> {
    let relid = unsafe { (*rel).rd_id };
    if let Some(m) = META.with(|m| m.borrow().get(&relid).cloned()) {
        return m;
    }
    watch_relcache();
    crate::node::require_current_schema();
    // (The writer's search_path must not choose the name its ops carry:
    // a temporary pg_namespace would, and the ops of this node are applied
    // on every peer as the node's.)
    let row = crate::security::in_fixed_path(|| Spi::connect(|c| {
        let sql = format!(
            "SELECT format('%I.%I', n.nspname, c.relname), r.key_columns, r.crdt_columns::text, r.other_columns,
                    (SELECT jsonb_object_agg(v.column_name, v.version)::text FROM converge.schema_version v
                      WHERE v.table_name = r.table_name),
                    {},
                    EXISTS (SELECT 1 FROM converge.authority a WHERE a.table_name = r.table_name AND a.column_name = '')
               FROM converge.replicated r JOIN pg_class c ON c.oid = r.table_name JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE r.table_name = $1::oid::regclass",
            crate::coordination::authorities_sql("r.table_name")
        );
        let t = c.select(
            &sql,
            Some(1),
            &[relid.into()],
        )?;
        if t.is_empty() {
            return Ok::<_, pgrx::spi::SpiError>(None);
        }
        let r = t.first();
        Ok(Some((
            r.get::<String>(1)?.unwrap_or_default(),
            r.get::<Vec<String>>(2)?.unwrap_or_default(),
            r.get::<String>(3)?.unwrap_or_default(),
            r.get::<Vec<String>>(4)?.unwrap_or_default(),
            r.get::<String>(5)?.unwrap_or_default(),
            r.get::<String>(6)?,
            r.get::<bool>(7)?.unwrap_or(false),
        )))
    }))
    .unwrap_or_else(|e| crate::errors::raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
    // The trigger fired, so the table is replicated; under REPEATABLE READ
    // or SERIALIZABLE the transaction's snapshot may be older than the
    // converge.replicate that made it so, or than an ALTER TABLE that
    // changed its layout: recording nothing, or the old columns, would
    // lose the write (or part of it) on every other node, and a cached
    // answer every later write of this session.
    let snapshot_per_transaction = unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32;
    let seen = row.as_ref().map(|r| (r.1.clone(), serde_json::from_str::<serde_json::Value>(&r.2).unwrap_or_default(), r.3.clone()));
    if snapshot_per_transaction && seen != crate::row_state::layout_now(relid) {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            "could not serialize access: the table's converge layout changed (converge.replicate, ALTER TABLE) after this transaction's snapshot",
        );
    }
    let m = row.map(|(name, keys, crdt, other, versions, auth, freezable)| {
        let desc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked((*rel).rd_att) };
        let index_of = |n: &str| desc.iter().position(|a| a.name() == n && !a.is_dropped());
        let crdt: HashMap<String, String> = serde_json::from_str(&crdt).unwrap_or_default();
        let col = |n: &String, kind: String| index_of(n).map(|index| Column { index, name: n.clone(), kind });
        let mut crdt_cols: Vec<Column> = crdt.iter().filter_map(|(n, t)| col(n, t.clone())).collect();
        crdt_cols.sort_by(|a, b| a.name.cmp(&b.name));
        let check_json = other.iter().filter_map(|n| index_of(n)).any(|i| unsafe { json_unchecked(attr((*rel).rd_att, i).atttypid) });
        Rc::new(Meta {
            check_json,
            name,
            keys: keys.iter().filter_map(|k| col(k, String::new())).collect(),
            crdt: crdt_cols,
            crdt_types: crdt.clone(),
            other: other.iter().filter_map(|n| index_of(n).map(|i| (i, n.clone()))).collect(),
            other_names: other.clone(),
            versions: serde_json::from_str(&versions).unwrap_or_default(),
            auth: converge_core::authority::parse(auth),
            freezable,
        })
    });
    if m.is_none() {
        return None;
    }
    META.with(|c| c.borrow_mut().insert(relid, m.clone()));
    m
}

/// Whether values of type `typid` may hold `json` text that `row_to_json`
/// passes through unchecked: json itself, or a composite or range (which
/// may hold json), directly, in an array or under a domain.
unsafe fn json_unchecked(typid: pg_sys::Oid) -> bool {
    let base = pg_sys::getBaseType(typid);
    let elem = pg_sys::get_element_type(base);
    let t = if elem == pg_sys::InvalidOid { base } else { pg_sys::getBaseType(elem) };
    t == pg_sys::JSONOID || matches!(pg_sys::get_typtype(t) as u8, b'c' | b'r' | b'm')
}

/// Drop every session's cached layout of `tbl` (converge.replicate calls it
/// after changing what it records).
#[pg_extern(volatile, strict, parallel_unsafe)]
fn forget_layout(tbl: pg_sys::Oid) {
    // (No such relation: no session caches it.)
    if unsafe { pg_sys::get_rel_relkind(tbl) } != 0 {
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(tbl) };
    }
}

pub static APPLYING: pgrx::guc::GucSetting<bool> = pgrx::guc::GucSetting::<bool>::new(false);

/// `converge.applying`: superuser-only, so no role can turn op recording off
/// for its own writes; converge sets it itself (`set_applying`).
pub fn register_guc() {
    pgrx::guc::GucRegistry::define_bool_guc(
        c"converge.applying",
        c"Internal: on while converge merges changes that are already ops (an apply, a resumed row).",
        c"Set by converge only; the op trigger skips rows changed while it is on.",
        &APPLYING,
        pgrx::guc::GucContext::Suset,
        pgrx::guc::GucFlags::NO_SHOW_ALL | pgrx::guc::GucFlags::NO_RESET_ALL,
    );
}

/// Turn `converge.applying` on or off for the rest of the transaction (or
/// the current function's GUC level), whoever the caller is.
pub fn set_applying(on: bool) {
    let value = if on { c"on" } else { c"off" };
    crate::spi::set_guc(c"converge.applying", value, pg_sys::GucContext::PGC_SUSET, pg_sys::GucAction::GUC_ACTION_LOCAL);
}

/// Whether `converge.applying` is on: converge is merging changes that are
/// already ops. The op trigger's WHEN clause calls it (a function of this
/// library, so the library, and with it the superuser-only setting, is
/// loaded before the value is read: a value a role set before that is
/// discarded, not trusted).
#[pg_extern(volatile, parallel_safe)]
fn applying() -> bool {
    APPLYING.get()
}

struct Row {
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

unsafe fn deform(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> Row {
    let n = (*desc).natts as usize;
    let mut values = vec![pg_sys::Datum::from(0usize); n];
    let mut nulls = vec![true; n];
    pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
    Row { values, nulls }
}

/// The row as a composite datum with only the columns its row op puts
/// (`row_ops::plan`): an insert's non-CRDT columns, or the columns an
/// update `changed`; the others NULL. The row op renders it
/// (`row_to_json`), and any other value can be large (a long seqtext's
/// text form is several times its characters, a long document beside a
/// status), fetched out of TOAST and rendered for nothing on every change.
unsafe fn row_for_op(meta: &Meta, desc: pg_sys::TupleDesc, row: &Row, changed: Option<&[&str]>) -> pg_sys::Datum {
    let mut nulls = vec![true; row.nulls.len()];
    for (i, name) in &meta.other {
        if changed.is_none_or(|c| c.contains(&name.as_str())) {
            nulls[*i] = row.nulls[*i];
        }
    }
    let tuple = pg_sys::heap_form_tuple(desc, row.values.as_ptr().cast_mut(), nulls.as_mut_ptr());
    let datum = pg_sys::heap_copy_tuple_as_datum(tuple, desc);
    pg_sys::heap_freetuple(tuple);
    datum
}

/// Whether column `i` holds the same stored value in both rows, compared
/// as stored, before any detoasting: a value an UPDATE did not touch keeps
/// its bytes, or its TOAST pointer (a new value gets a new one).
unsafe fn same_stored(n: &Row, o: &Row, i: usize) -> bool {
    !n.nulls[i] && !o.nulls[i] && same_varlena_bytes(n.values[i], o.values[i])
}

/// Whether two varlena datums are stored alike (inline bytes, or TOAST
/// pointer), read without detoasting either.
unsafe fn same_varlena_bytes(x: pg_sys::Datum, y: pg_sys::Datum) -> bool {
    let raw = |d: pg_sys::Datum| {
        let p = d.cast_mut_ptr::<u8>();
        std::slice::from_raw_parts(p, pgrx::varlena::varsize_any(p.cast()))
    };
    raw(x) == raw(y)
}

unsafe fn bytes_of<'a>(row: &Row, i: usize) -> Option<&'a [u8]> {
    if row.nulls[i] {
        return None;
    }
    let v = pg_sys::pg_detoast_datum_packed(row.values[i].cast_mut_ptr());
    Some(pgrx::varlena::varlena_to_byte_slice(v))
}

/// A key column's value as JSON: numbers and booleans as themselves,
/// anything else as its text form. The same on every node, so keys compare.
unsafe fn key_value(row: &Row, i: usize, typid: pg_sys::Oid) -> serde_json::Value {
    if row.nulls[i] {
        return serde_json::Value::Null;
    }
    let d = row.values[i];
    match typid {
        pg_sys::INT2OID => serde_json::json!(i16::from_datum(d, false)),
        pg_sys::INT4OID => serde_json::json!(i32::from_datum(d, false)),
        pg_sys::INT8OID => serde_json::json!(i64::from_datum(d, false)),
        pg_sys::BOOLOID => serde_json::json!(bool::from_datum(d, false)),
        _ => {
            let mut out = pg_sys::InvalidOid;
            let mut varlena = false;
            pg_sys::getTypeOutputInfo(typid, &mut out, &mut varlena);
            let text = std::ffi::CStr::from_ptr(pg_sys::OidOutputFunctionCall(out, d)).to_string_lossy().into_owned();
            if typid == pg_sys::NUMERICOID || typid == pg_sys::FLOAT4OID || typid == pg_sys::FLOAT8OID {
                if let Ok(n @ serde_json::Value::Number(_)) = serde_json::from_str::<serde_json::Value>(&text) {
                    return n;
                }
            }
            serde_json::Value::String(text)
        }
    }
}

unsafe fn attr<'a>(desc: pg_sys::TupleDesc, i: usize) -> &'a pg_sys::FormData_pg_attribute {
    &(*desc).attrs.as_slice((*desc).natts as usize)[i]
}

/// Binary equality of two non-NULL values of one column (a changed detector:
/// equal values with different bytes only cost an extra row op).
unsafe fn same_value(a: &pg_sys::FormData_pg_attribute, x: pg_sys::Datum, y: pg_sys::Datum) -> bool {
    if a.attbyval {
        return x == y;
    }
    match a.attlen {
        // Stored alike first: a long value the UPDATE did not touch keeps
        // its TOAST pointer, and is not fetched to be compared.
        -1 if same_varlena_bytes(x, y) => true,
        -1 => {
            let bx = pgrx::varlena::varlena_to_byte_slice(pg_sys::pg_detoast_datum_packed(x.cast_mut_ptr()));
            let by = pgrx::varlena::varlena_to_byte_slice(pg_sys::pg_detoast_datum_packed(y.cast_mut_ptr()));
            bx == by
        }
        -2 => std::ffi::CStr::from_ptr(x.cast_mut_ptr()) == std::ffi::CStr::from_ptr(y.cast_mut_ptr()),
        n => {
            let n = n as usize;
            std::slice::from_raw_parts(x.cast_mut_ptr::<u8>(), n) == std::slice::from_raw_parts(y.cast_mut_ptr::<u8>(), n)
        }
    }
}

unsafe fn key_of(meta: &Meta, row: &Row, desc: pg_sys::TupleDesc) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for k in &meta.keys {
        let typid = attr(desc, k.index).atttypid;
        m.insert(k.name.clone(), key_value(row, k.index, typid));
    }
    serde_json::Value::Object(m)
}

/// The delta that takes `old` to `new`: None when nothing changed. A
/// replicated CRDT column only grows by merge (every node must reach the
/// same state from the ops), so a change that drops state is refused.
fn delta_of<T: Crdt>(new: &[u8], old: Option<&[u8]>) -> Result<Option<Vec<u8>>, ()> {
    let Ok(n) = decode_trusted::<T>(new) else { return Ok(None) };
    let Some(ob) = old else {
        // NULL to a value, even the empty one: the other nodes store it too.
        return Ok(Some(encode(&T::delta(&n, &T::default()))));
    };
    let Ok(o) = decode_trusted::<T>(ob) else { return Ok(None) };
    if !T::delta(&o, &n).is_empty() {
        return Err(());
    }
    let d = T::delta(&n, &o);
    Ok((!d.is_empty()).then(|| encode(&d)))
}

pub(crate) fn delta_bytes(kind: &str, new: &[u8], old: Option<&[u8]>) -> Result<Option<Vec<u8>>, ()> {
    for_crdt_type!(kind, T => delta_of::<T>(new, old), _ => Ok(None))
}

fn refuse_overwrite(table: &str, column: &str, what: &str) -> ! {
    raise_hint(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("column \"{column}\" of replicated table {table} cannot be {what}"),
        "A replicated CRDT column only changes by merge, so that every node reaches the same value: use its \
         mutators (remove, decr, assign, ...) or merge into it (c = c || other).",
    )
}

/// A local change of a column with an authority elsewhere fails here
/// (coordination.rs `guard_local`).
fn guard_column(meta: &Meta, column: &str, me: &str, delta: &[u8]) {
    crate::coordination::guard_local(&meta.auth, &meta.name, &meta.crdt_types, column, me, delta);
}

/// Trigger of replicated tables (AFTER INSERT OR UPDATE OR DELETE, per row).
#[pg_trigger]
fn record_local_ops<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    if APPLYING.get() {
        return Ok(None);
    }
    let td = trigger.trigger_data();
    let rel = td.tg_relation;
    let Some(meta) = meta(rel) else { return Ok(None) };
    let desc = unsafe { (*rel).rd_att };
    let event = match td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK {
        pg_sys::TRIGGER_EVENT_INSERT => RowEvent::Insert,
        pg_sys::TRIGGER_EVENT_DELETE => RowEvent::Delete,
        _ => RowEvent::Update,
    };
    // tg_trigtuple: the inserted row, or the old row of an UPDATE/DELETE.
    let first = unsafe { deform(td.tg_trigtuple, desc) };
    let (new, old) = match event {
        RowEvent::Insert => (Some(first), None),
        RowEvent::Delete => (None, Some(first)),
        RowEvent::Update => (Some(unsafe { deform(td.tg_newtuple, desc) }), Some(first)),
    };
    let me = node::local_node();
    let key = unsafe { key_of(&meta, new.as_ref().or(old.as_ref()).expect("a row"), desc) };
    if let (Some(n), Some(o)) = (&new, &old) {
        refuse_key_change(&meta, desc, n, o);
    }
    let epoch = epoch_of(&meta, &key, event);
    if let Some(n) = &new {
        record_crdt_ops(&meta, &me, &key, epoch, n, old.as_ref());
    }
    // The row itself: inserted, deleted, or a non-CRDT column changed.
    let changed = match (&new, &old) {
        (Some(n), Some(o)) => changed_columns(&meta, desc, n, o),
        _ => Vec::new(),
    };
    if event != RowEvent::Update || !changed.is_empty() {
        let only = (event == RowEvent::Update).then_some(&changed[..]);
        let newrow = new.as_ref().map(|n| unsafe { row_for_op(&meta, desc, n, only) });
        let change = RowChange {
            rel: unsafe { (*rel).rd_id },
            table: &meta.name,
            other: &meta.other_names,
            changed,
            gone: old.as_ref().filter(|_| event == RowEvent::Delete).map(|o| crdt_state(&meta, o)).unwrap_or_default(),
            crdt: &meta.crdt_types,
            event,
            key: &key,
            new: newrow,
            check_json: meta.check_json,
            version: meta.versions.get("").copied().unwrap_or(1),
            epoch,
            guard: Some(&|delta| guard_column(&meta, "", &me, delta)),
            decided_elsewhere: match event {
                RowEvent::Insert => meta.auth.iter().filter(|(_, a)| !a.holds(&me, None)).map(|(c, _)| c.as_str()).collect(),
                _ => Vec::new(),
            },
        };
        let resumed = crate::row_ops::record(&me, change);
        if !resumed.crdt.is_empty() || !resumed.decided.is_empty() {
            let inserted = unsafe { (*td.tg_trigtuple).t_self };
            resume(&meta, unsafe { (*rel).rd_id }, &key, inserted, &resumed);
        }
    }
    Ok(None)
}

/// A changed key (compared as stored values: no second JSON rendering)
/// is refused.
fn refuse_key_change(meta: &Meta, desc: pg_sys::TupleDesc, n: &Row, o: &Row) {
    if meta.keys.iter().any(|k| unsafe { !same_value(attr(desc, k.index), n.values[k.index], o.values[k.index]) }) {
        raise_hint(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("the primary key of replicated table {} cannot be changed", meta.name),
            "Delete the row and insert it with the new key.",
        );
    }
}

/// The epoch the ops carry: read as last committed, after this row's
/// lock (a freeze applied meanwhile locked it first, epochs.rs). A new
/// row has no lock a freeze could take: its key's insert lock instead.
fn epoch_of(meta: &Meta, key: &serde_json::Value, event: RowEvent) -> i64 {
    if !meta.freezable {
        return 0;
    }
    if event == RowEvent::Insert {
        crate::epochs::lock_insert(&meta.name, key, pg_sys::ShareLock);
    }
    crate::epochs::epoch_of(&meta.name, key)
}

/// One op per CRDT column that grew (a column set to NULL, or to a value
/// that lacks part of its state, is refused).
fn record_crdt_ops(meta: &Meta, me: &str, key: &serde_json::Value, epoch: i64, n: &Row, old: Option<&Row>) {
    let (mut cols, mut deltas) = (Vec::new(), Vec::new());
    for c in &meta.crdt {
        // Unchanged (the UPDATE set other columns): no delta to compute,
        // which for a long seqtext is a full decode of both values.
        if old.is_some_and(|o| unsafe { same_stored(n, o, c.index) }) {
            continue;
        }
        let ob = old.and_then(|o| unsafe { bytes_of(o, c.index) });
        let Some(nb) = (unsafe { bytes_of(n, c.index) }) else {
            if ob.is_some() {
                refuse_overwrite(&meta.name, &c.name, "set to NULL");
            }
            continue;
        };
        if ob == Some(nb) {
            continue; // the same value, stored another way
        }
        match delta_bytes(&c.kind, nb, ob) {
            Ok(Some(d)) => {
                guard_column(meta, &c.name, me, &d);
                cols.push(c.name.clone());
                deltas.push(d);
            }
            Ok(None) => {}
            Err(()) => refuse_overwrite(&meta.name, &c.name, "overwritten with a value that lacks part of its state"),
        }
    }
    if !cols.is_empty() {
        let key = crate::jsonb::datum(key);
        let versions: Vec<i32> = cols.iter().map(|c| meta.versions.get(c).copied().unwrap_or(1)).collect();
        crate::commit_ops::record(me, &meta.name, key, &cols, &versions, epoch, deltas);
    }
}

/// The non-CRDT columns an UPDATE changed.
fn changed_columns<'m>(meta: &'m Meta, desc: pg_sys::TupleDesc, n: &Row, o: &Row) -> Vec<&'m str> {
    meta.other
        .iter()
        .filter(|(i, _)| unsafe {
            let i = *i;
            n.nulls[i] != o.nulls[i] || (!n.nulls[i] && !same_value(attr(desc, i), n.values[i], o.values[i]))
        })
        .map(|(_, name)| name.as_str())
        .collect()
}

/// A deleted row's CRDT state, for its tombstone: column -> text form.
fn crdt_state(meta: &Meta, o: &Row) -> serde_json::Map<String, serde_json::Value> {
    meta.crdt
        .iter()
        .filter_map(|c| {
            let b = unsafe { bytes_of(o, c.index) }?;
            crate::row_ops::crdt_text(&c.kind, b).map(|t| (c.name.clone(), serde_json::Value::String(t)))
        })
        .collect()
}

/// A key inserted again resumes the CRDT state its tombstone kept (merged
/// into the new row as the caller; already logged as ops, so not again),
/// and takes the values the authorities of its columns decided before
/// (security.rs `as_merger`: as the table's owner, its triggers off).
/// `inserted` is the insert's row version: the row is found from it, with
/// no statement, no operator and no privilege.
fn resume(meta: &Meta, rel: pg_sys::Oid, key: &serde_json::Value, inserted: pg_sys::ItemPointerData, resumed: &crate::row_ops::Resume) {
    let Some(now) = crate::direct::newest_version(rel, inserted) else {
        // Deleted again in this transaction before this (deferred) event:
        // the stash goes back for the delete's event to extend. The clock
        // already holds the decided values.
        if !resumed.crdt.is_empty() {
            crate::row_ops::restash(rel, &meta.crdt_types, key, &resumed.crdt);
        }
        return;
    };
    let keys: Vec<String> = meta.keys.iter().map(|k| k.name.clone()).collect();
    let t = crate::rows::RowTable { name: meta.name.clone(), rel, keys: &keys, crdt: &meta.crdt_types };
    set_applying(true);
    // The decided values first, at the version found (resume makes another).
    if !resumed.decided.is_empty() {
        crate::security::as_merger(rel, || t.set_values_at(now, &resumed.decided));
    }
    t.resume(key, &resumed.crdt);
    set_applying(false);
}

/// Run `create` (a CREATE TRIGGER) unless table `tbl` has a trigger named
/// `trigger` already (replicate runs again on a replicated table).
fn make_trigger(tbl: pg_sys::Oid, trigger: &str, create: &str) {
    let exists = crate::spi::read_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2)",
        &[tbl.into(), trigger.into()],
    );
    if exists != Some(true) {
        Spi::run(create).unwrap_or_else(|e| crate::errors::raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
    }
}

/// `converge.replicate(t)`: only the table's owner may mark it. The layout
/// is recorded as converge's owner; the trigger is created, and SELECT
/// granted to the peer roles (converge.grant_peer), as the table's owner.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn replicate_table(tbl: pg_sys::Oid) {
    let name = crate::spi::read_one::<String>("SELECT $1::oid::regclass::text", &[tbl.into()])
        .unwrap_or_else(|| crate::errors::raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, "no such table"));
    if !unsafe { pg_sys::pg_class_ownercheck(tbl, pg_sys::GetUserId()) } {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of table {name} to replicate it"),
        );
    }
    let err = |e: pgrx::spi::SpiError| -> ! { crate::errors::raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()) };
    // An ALTER TABLE waits for this, or this for it: its change is then
    // seen here, or followed by converge_follow_columns (src/ddl.rs). (The
    // lock CREATE TRIGGER takes; this table only, not its children.)
    unsafe { pg_sys::LockRelationOid(tbl, pg_sys::ShareRowExclusiveLock as pg_sys::LOCKMODE) };
    let (unguarded, readers): (bool, Vec<String>) = crate::security::as_owner(|| {
        // Run again: what the event triggers did not see (they were
        // disabled) is checked and followed as they would have (false for
        // a table not replicated yet).
        let unguarded = crate::errors::plain_errors(|| {
            Spi::get_one_with_args::<bool>("SELECT converge.follow_layout($1::oid::regclass, '{}', '{}')", &[tbl.into()])
        })?;
        let unguarded = unguarded.unwrap_or(false);
        // Records a table not replicated yet, and raises 55000 for one
        // without a primary key (which follow_layout lets pass, for ALTER
        // TABLE); for the rest, the layout follow_layout just recorded.
        crate::errors::plain_errors(|| Spi::run_with_args("SELECT converge.replicate_layout($1::oid::regclass)", &[tbl.into()]))?;
        Spi::connect(|c| {
            // Roles dropped since grant_peer are skipped.
            c.select("SELECT r.role::text FROM converge.peer_reader r JOIN pg_catalog.pg_roles g ON g.oid = r.role", None, &[])
                .map(|t| (unguarded, t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect()))
        })
    })
    .unwrap_or_else(|e| err(e));
    if unguarded {
        crate::coordination::make_guard(tbl);
    }
    // The WHEN clause keeps converge.apply's own changes (already logged
    // as the op being applied) from even queueing a trigger event.
    // Deferred to commit: the node's op counter is locked from then to
    // the end of commit only, not for the whole transaction.
    make_trigger(
        tbl,
        "converge_record_ops",
        &format!(
            "CREATE CONSTRAINT TRIGGER converge_record_ops AFTER INSERT OR UPDATE OR DELETE ON {name}
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
             WHEN (NOT converge.applying())
             EXECUTE FUNCTION converge.record_local_ops()"
        ),
    );
    // TRUNCATE fires no row trigger: it would record nothing.
    make_trigger(
        tbl,
        "converge_no_truncate",
        &format!("CREATE TRIGGER converge_no_truncate BEFORE TRUNCATE ON {name} FOR EACH STATEMENT EXECUTE FUNCTION converge.refuse_truncate()"),
    );
    for role in readers {
        Spi::run(&format!("GRANT SELECT ON {name} TO {role}")).unwrap_or_else(|e| err(e));
    }
    // Sessions cache the table's layout in the trigger: make them read it again.
    forget_layout(tbl);
}
