//! Step 5 of the apply: ops through the dedupe gate (a log row each) and
//! into their rows, one set-wise upsert per (table, column) with each
//! row's deltas merged here first; and merging full states for a rejoin.

use super::{
    canonical_key, deps_of, envelope_args, merge_bytes, reraise_if_transaction_error, resolve, row_table, run, spi_err, subtransaction, Item,
    Target,
};
use crate::errors::raise;
use crate::rows::ident as quote_ident;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use crate::jsonb::Jb;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::trigger::set_applying;

/// Merge the deltas of `ops` (all valid, all through the gate) into their
/// rows: row ops first, in batch order; then per (table, column) one upsert
/// with each row's deltas merged here first, rows in key order.
/// `classified`: the deltas passed the apply's classification (valid and
/// canonical), so a row's one delta may be stored as it came.
fn merge_into_rows(ops: &[&Item], targets: &[Target], classified: bool) {
    set_applying(true);
    let mut groups: BTreeMap<(u32, String), Vec<&Item>> = BTreeMap::new();
    // Registry ops have no target table (actors.rs merges them).
    for it in ops.iter().filter(|i| i.target.is_some()) {
        let t = &targets[it.target.expect("classified")];
        groups.entry((t.rel.to_u32(), it.column.clone().unwrap_or_default())).or_default().push(it);
    }
    for ((_, col), items) in &groups {
        let t = &targets[items[0].target.expect("classified")];
        let coltype = items[0].coltype.as_deref().expect("classified");
        let keys: Vec<String> = t.keys.iter().map(|k| quote_ident(k)).collect();
        if coltype == "row" {
            let ops: Vec<(serde_json::Value, Vec<u8>)> =
                items.iter().map(|i| (i.key.clone().unwrap_or_default(), i.delta.clone().unwrap_or_default())).collect();
            crate::rows::merge_row_ops(&row_table(t), &crate::rows::Written { other: &t.other, not_null_crdt: &t.not_null_crdt }, ops);
            continue;
        }
        // The deltas of one row, merged (the row's first spelling of its key).
        let mut per_key: BTreeMap<String, (&serde_json::Value, Vec<&[u8]>)> = BTreeMap::new();
        for it in items {
            let key = it.key.as_ref().unwrap_or(&serde_json::Value::Null);
            per_key.entry(super::keys::row_identity(key)).or_insert_with(|| (key, Vec::new())).1.push(it.delta.as_deref().unwrap_or_default());
        }
        // A row's one delta, valid and canonical (classified), is its own
        // merge as a state: merged into the empty value a value is itself
        // as a state (converge-core's laws), which `without_covers` makes
        // (only an ormap delta changes: it loses what it superseded).
        let (key_json, merged): (Vec<&serde_json::Value>, Vec<Vec<u8>>) = per_key
            .into_values()
            .map(|(k, ds)| match &ds[..] {
                [one] if classified => (k, converge_core::without_covers(one.to_vec())),
                _ => (k, merge_bytes(coltype, &ds)),
            })
            .unzip();
        let rel = t.name.clone();
        let cols = keys.join(", ");
        let qcol = quote_ident(col);
        // Rows deleted here (tombstones): their deltas go to the stash. The
        // tombstones are locked, so a concurrent local re-insert either sees
        // the stash grown or has made the row live first.
        let dead: HashSet<usize> = tombstones(t.rel, &key_json).into_iter().collect();
        if !dead.is_empty() {
            let pick = |v: &[Vec<u8>]| dead.iter().map(|&i| v[i].clone()).collect::<Vec<Vec<u8>>>();
            let keys_dead: Vec<Jb> = dead.iter().map(|&i| Jb(key_json[i].clone())).collect();
            run(
                &format!(
                    "UPDATE converge.row_state rs
                        SET stash = rs.stash || jsonb_build_object($4::text,
                            converge.merge(coalesce(rs.stash ->> $4, '{{}}')::converge.{coltype}, d.v::converge.{coltype})::text)
                       FROM unnest($2::jsonb[], $3::bytea[]) d(key, v)
                      WHERE rs.tbl = $1::oid::regclass AND rs.target_key = d.key"
                ),
                &[t.rel.into(), keys_dead.into(), pick(&merged).into(), col.clone().into()],
            );
        }
        if dead.len() == key_json.len() {
            continue;
        }
        let (live_keys, live_merged): (Vec<&serde_json::Value>, Vec<Vec<u8>>) = if dead.is_empty() {
            (key_json, merged)
        } else {
            key_json.into_iter().zip(merged).enumerate().filter(|(i, _)| !dead.contains(i)).map(|(_, km)| km).unzip()
        };
        // Keys travel as text per key column and are cast to the column's type.
        let mut args: Vec<DatumWithOid> = vec![t.rel.into(), typed_array(coltype, &live_merged)];
        let mut names = Vec::new();
        let mut casts = Vec::new();
        for (i, (k, ty)) in t.keys.iter().zip(&t.key_casts).enumerate() {
            let texts: Vec<Option<String>> = live_keys
                .iter()
                .map(|kv| match kv.get(k) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(other) => Some(other.to_string()),
                })
                .collect();
            args.push(texts.into());
            names.push(format!("k{i}"));
            casts.push(format!("u.k{i}::{ty}"));
        }
        let texts: Vec<String> = (0..t.keys.len()).map(|i| format!("pg_catalog.unnest(${}::text[])", i + 3)).collect();
        let upsert = format!(
                "INSERT INTO {rel} AS t ({cols}, {qcol})
                 SELECT {casts}, u.v
                   FROM ROWS FROM (pg_catalog.unnest($2::converge.{coltype}[]), {texts}) u(v, {names})
                  WHERE $1::oid IS NOT NULL
                  ORDER BY {order}
                 ON CONFLICT ({cols}) DO UPDATE SET {qcol} = converge.merge(t.{qcol}, EXCLUDED.{qcol})",
                casts = casts.join(", "),
                texts = texts.join(", "),
                names = names.join(", "),
                order = (1..=t.keys.len()).map(|i| i.to_string()).collect::<Vec<_>>().join(", "),
            );
        // The user's table is written as the caller (its rights, its triggers).
        crate::security::as_writer(t.rel, || run(&upsert, &args));
        // A local DELETE that committed while the upsert waited for it leaves
        // a tombstone: the upsert made that row again, so bury it (its state
        // joins the stash, as on every other node).
        let zombies = tombstones(t.rel, &live_keys);
        if !zombies.is_empty() {
            let keys: Vec<serde_json::Value> = zombies.iter().map(|&i| live_keys[i].clone()).collect();
            crate::rows::bury(&row_table(t), &keys);
        }
    }
    set_applying(false);
}

/// `values` (valid and canonical: classified deltas or what merge_bytes made) as an
/// array of converge's SQL type `coltype`, whose stored form they are: the
/// upsert takes them as they are, with no cast decoding and encoding each
/// again. The size limit the cast applied still holds (54000 fails the
/// whole batch, as the cast's did).
fn typed_array<'a>(coltype: &str, values: &[Vec<u8>]) -> DatumWithOid<'a> {
    values.iter().for_each(|v| crate::types::check_size(v.len(), coltype));
    let name = std::ffi::CString::new(format!("converge.{coltype}")).expect("a type name has no NUL");
    unsafe {
        let elem = pgrx::direct_function_call::<pg_sys::Oid>(pg_sys::regtypein, &[name.as_c_str().into_datum()])
            .unwrap_or_else(|| spi_err(format!("no type converge.{coltype}")));
        let (mut len, mut byval, mut align) = (0i16, false, 0 as std::ffi::c_char);
        pg_sys::get_typlenbyvalalign(elem, &mut len, &mut byval, &mut align);
        let mut datums: Vec<pg_sys::Datum> = values.iter().map(|v| v.as_slice().into_datum().expect("bytes make a datum")).collect();
        let arr = pg_sys::construct_array(datums.as_mut_ptr(), datums.len() as i32, elem, len as i32, byval, align);
        DatumWithOid::new(pg_sys::Datum::from(arr), pg_sys::get_array_type(elem))
    }
}

/// Positions (in `keys`) of the rows of `rel` that are tombstones here,
/// locked (a lock that had to wait re-reads the row as last committed).
fn tombstones(rel: pg_sys::Oid, keys: &[&serde_json::Value]) -> Vec<usize> {
    // Most tables have no tombstone at all: one probe of a partial index.
    let any = keys.is_empty()
        || crate::direct::any_row(c"row_state", c"row_state_dead", Some((pg_sys::Datum::from(rel), pg_sys::F_OIDEQ.into())));
    if keys.is_empty() || !any {
        return Vec::new();
    }
    let keys: Vec<Jb> = keys.iter().map(|k| Jb((*k).clone())).collect();
    crate::spi::prepared(
        "SELECT u.i FROM unnest($2::jsonb[]) WITH ORDINALITY u(k, i)
               JOIN converge.row_state rs ON rs.tbl = $1::oid::regclass AND rs.target_key = u.k
              WHERE NOT rs.live ORDER BY u.i FOR UPDATE OF rs",
        &[rel.into(), keys.into()],
        |t| Ok(t.filter_map(|r| r.get::<i64>(1).ok().flatten().map(|i| i as usize - 1)).collect()),
    )
    .unwrap_or_else(|e| spi_err(e))
}

/// The gate's fast path: `items` (sorted by actor and counter) go into the
/// log as applied, straight into its heap and indexes (`direct`): no
/// arrays to build, no statement to plan. A duplicate violates the log's
/// unique (actor, counter) index and fails the batch's subtransaction,
/// which then goes op by op through the guarded SQL insert.
fn insert_applied(items: &[&Item], origin: &str) {
    use crate::direct::{int4, int8, text, OpLog};
    const ENVELOPE: [&str; 12] = [
        "op_id", "actor", "counter", "target_table", "target_key", "target_column",
        "schema_version", "epoch", "deps", "delta", "signature", "origin",
    ];
    let mut log = OpLog::open();
    // Most ops have no deps: one empty array serves them all.
    let no_deps = Vec::<String>::new().into_datum();
    log.append_all(&ENVELOPE, items.iter().map(|it| {
        vec![
            it.op_id.as_deref().and_then(text),
            it.actor.as_deref().and_then(text),
            it.counter.and_then(int8),
            it.table.as_deref().and_then(text),
            it.key_datum.or_else(|| it.key.as_ref().map(crate::jsonb::datum)),
            it.column.as_deref().and_then(text),
            it.version.and_then(int4),
            it.epoch.and_then(int8),
            it.deps.as_ref().and_then(|_| match deps_of(it) {
                d if d.is_empty() => no_deps,
                d => d.into_datum(),
            }),
            it.delta.as_deref().and_then(|d| d.into_datum()),
            it.signature.as_deref().and_then(|d| d.into_datum()),
            text(origin),
        ]
    }));
    log.close();
}

/// Through the dedupe gate (an op_log row per op, unless another session
/// applied it first) and into the rows. Returns (won, lost, rejected with reason).
#[allow(clippy::type_complexity)]
pub(super) fn gate_and_merge<'a>(
    ops: &[&'a Item],
    targets: &[Target],
    origin: &str,
) -> (Vec<&'a Item>, Vec<&'a Item>, Vec<(&'a Item, String)>) {
    // The gate: one op_log row per op. `guarded` (ON CONFLICT .. DO NOTHING)
    // skips ops another session applied first; the fast path inserts plainly
    // (cheaper) and falls back to op by op on a unique violation.
    let gate = |items: &[&Item], guarded: bool| -> HashSet<String> {
        // In (actor, counter) order: concurrent batches take the gate alike.
        let mut sorted: Vec<&Item> = items.to_vec();
        sorted.sort_by(|a, b| (&a.actor, a.counter).cmp(&(&b.actor, b.counter)));
        if !guarded {
            insert_applied(&sorted, origin);
            return sorted.iter().filter_map(|i| i.op_id.clone()).collect();
        }
        let mut args = envelope_args(&sorted, None);
        args.push(origin.to_string().into());
        // Valid deps are op_ids, which never contain a comma.
        args.push(sorted.iter().map(|i| i.deps.as_ref().map(|_| deps_of(i).join(","))).collect::<Vec<Option<String>>>().into());
        let sql = "INSERT INTO converge.op_log (op_id, actor, counter, target_table, target_key, target_column, schema_version,
                                         epoch, deps, delta, signature, outcome, origin)
             SELECT u.op_id, u.actor, u.counter, u.tbl, u.key, u.col, u.ver, u.ep,
                    string_to_array(u.deps_text, ','), u.delta, u.sig, 'applied', $12
               FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::jsonb[], $6::text[], $7::int[],
                           $8::int8[], $9::jsonb[], $10::bytea[], $11::bytea[], $13::text[])
                    WITH ORDINALITY u(op_id, actor, counter, tbl, key, col, ver, ep, deps, delta, sig, deps_text, ord)
              ORDER BY u.ord
             ON CONFLICT (actor, counter) WHERE outcome = 'applied' DO NOTHING RETURNING op_id";
        Spi::connect_mut(|c| {
            c.update(sql, None, &args).map(|t| t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
        })
        .unwrap_or_else(|e| spi_err(e))
    };
    let fast = subtransaction(|| {
        let won_ids = gate(ops, false);
        let (won, lost): (Vec<&Item>, Vec<&Item>) =
            ops.iter().partition(|i| i.op_id.as_ref().is_some_and(|id| won_ids.contains(id)));
        merge_into_rows(&won, targets, true);
        (won, lost)
    });
    match fast {
        Ok((won, lost)) => return (won, lost, Vec::new()),
        // Two spellings of one key (`{ab,cd}` and `{"ab",cd}` of an array
        // key) are two rows of one upsert that the table sees as one row
        // (21000); op by op they are one row's ops, as in separate batches.
        Err(c) if c.code == PgSqlErrorCode::ERRCODE_CARDINALITY_VIOLATION => {}
        Err(c) => reraise_if_transaction_error(&c),
    }
    // Something in the batch failed (say a key value of the wrong type):
    // op by op, so only the culprit is rejected.
    let (mut won, mut lost, mut rejected) = (Vec::new(), Vec::new(), Vec::new());
    let mut order: Vec<&Item> = ops.to_vec();
    order.sort_by(|a, b| {
        let rel = |i: &Item| i.target.map_or(0, |t| targets[t].rel.to_u32());
        let ka = (rel(a), &a.column, a.key.as_ref().map(|k| k.to_string()), a.n);
        let kb = (rel(b), &b.column, b.key.as_ref().map(|k| k.to_string()), b.n);
        ka.cmp(&kb)
    });
    // In-batch parents before their children, so a child whose parent is
    // rejected here is rejected too (a peer could never apply it).
    let ids: HashSet<&str> = order.iter().filter_map(|i| i.op_id.as_deref()).collect();
    let mut done: HashSet<&str> = HashSet::new();
    let mut failed: HashSet<String> = HashSet::new();
    while !order.is_empty() {
        let pos = order
            .iter()
            .position(|i| deps_of(i).iter().all(|d| !ids.contains(d.as_str()) || done.contains(d.as_str())))
            .unwrap_or(0);
        let it = order.remove(pos);
        if let Some(id) = it.op_id.as_deref() {
            done.insert(id);
        }
        if let Some(d) = deps_of(it).into_iter().find(|d| failed.contains(d)) {
            failed.insert(it.op_id.clone().unwrap_or_default());
            rejected.push((it, format!("dependency_rejected: {d}")));
            continue;
        }
        match subtransaction(|| {
            let ok = !gate(&[it], true).is_empty();
            if ok {
                merge_into_rows(&[it], targets, true);
            }
            ok
        }) {
            Ok(true) => won.push(it),
            Ok(false) => lost.push(it),
            Err(c) => {
                reraise_if_transaction_error(&c);
                let reason = if ["22P02", "22P03", "22023", "22003", "22007", "22008"].contains(&c.sqlstate.as_str()) {
                    format!("invalid_key: {}", c.message)
                } else {
                    format!("error {}: {}", c.sqlstate, c.message)
                };
                failed.insert(it.op_id.clone().unwrap_or_default());
                rejected.push((it, reason));
            }
        }
    }
    won.sort_by_key(|i| i.n);
    lost.sort_by_key(|i| i.n);
    (won, lost, rejected)
}


/// Merge full states or deltas into the rows of `table`, recording no op
/// (a rejoin from a peer's snapshot, replication/rejoin.rs): per key its row
/// clock (column "", an lwwmap) and its CRDT columns' states, each a
/// validated binary value. Deleted rows take the states into their stash,
/// as for any delta. With `reset`, each key's CRDT columns and row state
/// are emptied first, so the row becomes exactly what is merged. Returns
/// the canonical keys merged.
pub fn merge_states(table: &str, entries: Vec<(serde_json::Value, String, Vec<u8>)>, reset: bool) -> Vec<serde_json::Value> {
    let (targets, ti, items, keys) = state_items(table, entries);
    if reset && !keys.is_empty() {
        empty_rows(&targets[ti], &keys, &[], &items);
    }
    let refs: Vec<&Item> = items.iter().collect();
    crate::security::as_owner(|| merge_into_rows(&refs, &targets, false));
    keys
}

/// Make these rows of `table` exactly the merge of `entries` (a rebuild,
/// rebuild.rs), recording no op: their CRDT columns and row state are
/// emptied and the rows in `gone` deleted first. Keys are canonical (as
/// the log holds them).
pub fn replace_rows(table: &str, keys: &[serde_json::Value], entries: Vec<(serde_json::Value, String, Vec<u8>)>, gone: &[serde_json::Value]) {
    let (targets, ti, items, _) = state_items(table, entries);
    if !keys.is_empty() {
        empty_rows(&targets[ti], keys, gone, &items);
    }
    let refs: Vec<&Item> = items.iter().collect();
    crate::security::as_owner(|| merge_into_rows(&refs, &targets, false));
}

/// The entries (key, column, state) as items of one target table, and
/// their canonical keys.
fn state_items(table: &str, entries: Vec<(serde_json::Value, String, Vec<u8>)>) -> (Vec<Target>, usize, Vec<Item>, Vec<serde_json::Value>) {
    let mut targets = Vec::new();
    let mut cache = HashMap::new();
    let ti = crate::security::as_caller(|| resolve(table, &mut targets, &mut cache))
        .unwrap_or_else(|why| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("merging states into {table}: {why}")));
    let (mut keys, mut items) = (Vec::new(), Vec::new());
    // (A key's entries come together, one per column: read it once.)
    let mut last: Option<(serde_json::Value, serde_json::Value)> = None;
    for (n, (key, col, delta)) in entries.into_iter().enumerate() {
        let t = &targets[ti];
        let key = match last.as_ref().filter(|(given, _)| *given == key) {
            Some((_, canon)) => canon.clone(),
            None => {
                let Some(canon) = canonical_key(&key, t) else {
                    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("merging states into {table}: key {key} does not fit its columns"))
                };
                last = Some((key, canon.clone()));
                canon
            }
        };
        let coltype = if col.is_empty() { "row".to_string() } else if let Some(c) = t.crdt.get(&col) { c.clone() } else { continue };
        keys.push(key.clone());
        items.push(Item {
            n,
            table: Some(table.to_string()),
            key: Some(key),
            column: Some(col),
            delta: Some(delta),
            target: Some(ti),
            coltype: Some(coltype),
            ..Item::default()
        });
    }
    targets[ti].row_ops = items.iter().any(|i| i.coltype.as_deref() == Some("row"));
    keys.dedup();
    (targets, ti, items, keys)
}

/// Set the CRDT columns of these rows to the states `items` give them
/// (NULL where none), delete the rows in `gone`, and forget their row state
/// (clock, tombstone, stash), recording no op.
fn empty_rows(t: &Target, keys: &[serde_json::Value], gone: &[serde_json::Value], items: &[Item]) {
    let json: Vec<Jb> = keys.iter().cloned().map(Jb).collect();
    if !gone.is_empty() {
        let sql = format!(
            "DELETE FROM {name} t USING pg_catalog.unnest($1::jsonb[]) k(key), LATERAL pg_catalog.jsonb_populate_record(NULL::{name}, k.key) v
              WHERE {matched}",
            name = t.name,
            matched = crate::rows::keys_match(&t.keys),
        );
        let gone: Vec<Jb> = gone.iter().cloned().map(Jb).collect();
        set_applying(true);
        crate::security::as_writer(t.rel, || run(&sql, &[gone.into()]));
        set_applying(false);
    }
    if !t.crdt.is_empty() {
        // Each CRDT column set straight to the state it ends with (NULL
        // when none): never NULL on the way (a NOT NULL column would fail),
        // and the merge that follows finds it there already.
        let mut cols: Vec<(&String, &String)> = t.crdt.iter().collect();
        cols.sort();
        let mut finals: BTreeMap<String, HashMap<&str, &[u8]>> = BTreeMap::new();
        for it in items.iter().filter(|i| i.coltype.as_deref() != Some("row")) {
            let key = it.key.as_ref().map(|k| k.to_string()).unwrap_or_default();
            let col = it.column.as_deref().unwrap_or_default();
            finals.entry(key).or_default().insert(col, it.delta.as_deref().unwrap_or_default());
        }
        let mut args: Vec<DatumWithOid> = vec![json.iter().map(|j| Jb(j.0.clone())).collect::<Vec<_>>().into()];
        for (col, _) in &cols {
            let values: Vec<Option<Vec<u8>>> =
                keys.iter().map(|k| finals.get(&k.to_string()).and_then(|m| m.get(col.as_str())).map(|d| d.to_vec())).collect();
            args.push(values.into());
        }
        let sets: Vec<String> =
            cols.iter().enumerate().map(|(i, (c, ty))| format!("{} = u.c{i}::converge.{}", quote_ident(c), quote_ident(ty))).collect();
        let arrays: Vec<String> = (0..cols.len()).map(|i| format!("pg_catalog.unnest(${}::bytea[])", i + 2)).collect();
        let names: Vec<String> = (0..cols.len()).map(|i| format!("c{i}")).collect();
        let sql = format!(
            "UPDATE {name} t SET {sets} FROM ROWS FROM (pg_catalog.unnest($1::jsonb[]), {arrays}) u(key, {names}),
                    LATERAL pg_catalog.jsonb_populate_record(NULL::{name}, u.key) v
              WHERE {matched}",
            name = t.name,
            sets = sets.join(", "),
            arrays = arrays.join(", "),
            names = names.join(", "),
            matched = crate::rows::keys_match(&t.keys),
        );
        set_applying(true);
        crate::security::as_writer(t.rel, || run(&sql, &args));
        set_applying(false);
    }
    crate::security::as_owner(|| {
        run("DELETE FROM converge.row_state WHERE tbl = $1::oid::regclass AND target_key = ANY ($2::jsonb[])", &[t.rel.into(), json.into()])
    });
}
