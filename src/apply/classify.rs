//! Step 1 of the apply: classifying each op of a batch in memory (its
//! envelope, target, key and delta; authorities, the actor registry and
//! repairs), and who may send ops under a node's name.

use super::*;

thread_local! {
    static TRUSTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` (an apply of ops that came through a peer's replication) with
/// the ops of node actors accepted: a node's own ops travel that way only.
pub fn from_peer<R>(f: impl FnOnce() -> R) -> R {
    with_trust(true, f)
}

/// Run `f` with the trust flag set to `trusted`, restored after (also when
/// `f` raises).
fn with_trust<R>(trusted: bool, f: impl FnOnce() -> R) -> R {
    let before = TRUSTED.with(|t| t.replace(trusted));
    struct Back(bool);
    impl Drop for Back {
        fn drop(&mut self) {
            TRUSTED.with(|t| t.set(self.0));
        }
    }
    let _back = Back(before);
    f()
}

/// Run `f` as an apply of ops that did not come through a peer's
/// replication (a retry, within a trusted pass, of ops clients sent), or
/// as code that is not converge's (a table's triggers and defaults, a
/// decide function: security.rs): nothing in it is trusted as a peer's.
pub fn as_client<R>(f: impl FnOnce() -> R) -> R {
    with_trust(false, f)
}

/// This node's name, its peers' and the authorities' (set_authority):
/// actors whose ops a client may not send (they would take over op ids
/// the node or a peer issues, or write what only an authority may).
pub(super) fn node_actors() -> HashSet<String> {
    if TRUSTED.with(|t| t.get()) {
        return HashSet::new();
    }
    crate::security::as_owner(|| {
        const SQL: &str = "SELECT name FROM converge.node_identity UNION SELECT name FROM converge.peer
                           UNION SELECT node FROM converge.authority
                           UNION SELECT e ->> 'node' FROM converge.authority, jsonb_array_elements(earlier) e";
        crate::spi::prepared(SQL, &[], |t| {
            Ok(t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
        })
    })
    .unwrap_or_else(|e| spi_err(e))
}

pub(super) fn classify(
    it: &mut Item,
    targets: &mut Vec<Target>,
    cache: &mut HashMap<String, Result<usize, &'static str>>,
    nodes: &HashSet<String>,
    registry: &crate::actors::Registry,
    (from_peer, entering, client): (bool, bool, bool),
) {
    let op_id = it.op_id.clone();
    let parsed = op_id.as_deref().and_then(parse_op_id);
    it.actor = parsed.map(|(a, _)| a.to_string());
    it.counter = parsed.map(|(_, c)| c as i64);
    let Some((actor, _)) = parsed else {
        it.bad = Some("invalid_op_id".into());
        return;
    };
    if let Some(reason) = envelope_error(it, actor, nodes) {
        it.bad = Some(reason.into());
        return;
    }
    if super::control::classify_control(it, from_peer, actor, targets, cache, registry) {
        return;
    }
    let coltype = match place(it, targets, cache) {
        Ok(coltype) => coltype,
        Err(reason) => {
            it.bad = Some(reason.into());
            return;
        }
    };
    let at = it.target.expect("placed");
    if client && targets[at].client_writes && !targets[at].client_checked {
        targets[at].client_writes = client_writes_now(targets[at].rel);
        targets[at].client_checked = true;
    }
    let target = &targets[at];
    // A table clients may not write keeps no tombstone a client's late
    // edit could need (compact() in sql/maintenance.sql): a client's op is
    // refused where it enters, unless it is a duplicate (mod.rs).
    it.client_closed = client && !target.client_writes;
    it.bad = judge(it, target, &coltype, actor, registry, from_peer)
        .or_else(|| if entering { clock_error(&coltype, it.delta.as_deref().unwrap_or_default()) } else { None });
    if it.bad.is_none() {
        it.quarantine = kept_aside(it, target);
        if registry.repairs {
            it.superseded = crate::repair::superseded_by(it.op_id.as_deref().unwrap_or_default());
        }
    }
    it.coltype = Some(coltype);
}

/// What is wrong with the op's envelope, if anything: its actor, schema
/// version, epoch and deps.
fn envelope_error(it: &Item, actor: &str, nodes: &HashSet<String>) -> Option<&'static str> {
    if it.actor_given.as_deref() != Some(actor) {
        Some("actor_mismatch")
    } else if nodes.contains(actor) {
        Some("node_actor")
    } else if it.version.is_none_or(|v| v < 1) {
        Some("unsupported_schema_version")
    } else if it.epoch.is_some_and(|e| e < 0) {
        Some("invalid_epoch")
    } else if it.deps.iter().flatten().any(|d| d.as_deref().and_then(parse_op_id).is_none()) {
        Some("invalid_deps")
    } else {
        None
    }
}

/// The op's table, column and key as this node has them: sets its target,
/// its table's qualified name and its canonical key; returns the column's
/// CRDT type ("row" for a row op).
fn place(it: &mut Item, targets: &mut Vec<Target>, cache: &mut HashMap<String, Result<usize, &'static str>>) -> Result<String, &'static str> {
    let t = resolve(it.table.as_deref().ok_or("unknown_table")?, targets, cache)?;
    it.target = Some(t);
    let target = &targets[t];
    // Logged (and shipped) under its qualified name, so that readers find
    // it whatever their search_path, and no other table can stand in.
    it.table = Some(target.name.clone());
    let coltype = match it.column.as_deref().ok_or("unknown_column")? {
        "" => "row".to_string(),
        c => match target.crdt.get(c) {
            Some(ty) => ty.clone(),
            None => return Err(if column_exists(target.rel, c) { "not_crdt_column" } else { "unknown_column" }),
        },
    };
    let key = match &it.key {
        Some(k @ serde_json::Value::Object(m)) if target.keys.iter().all(|k| m.contains_key(k)) => k,
        _ => return Err("invalid_key"),
    };
    // The key in the form the op trigger writes (src/trigger.rs), so that the
    // same row has one key everywhere (row_state, tombstones).
    let respell = it.signature.is_none().then_some(&target.key_oids[..]);
    let k = key_as_logged(key, &target.keys, &target.key_types, respell).ok_or("invalid_key")?;
    if it.key.as_ref() != Some(&k) {
        it.key_datum = None;
    }
    it.key = Some(k);
    Ok(coltype)
}

/// Why the op is rejected, if it is: authenticated first (SPEC section 3:
/// signature, then revocation), so that a forged or revoked op is rejected
/// as such, its delta never decoded; then its delta and the authorities.
fn judge(it: &Item, target: &Target, coltype: &str, actor: &str, registry: &crate::actors::Registry, from_peer: bool) -> Option<String> {
    if !registry.is_empty() {
        if let Some(reason) = registry.refuse(&as_op(it)) {
            return Some(reason.into());
        }
    }
    let delta = it.delta.as_deref().unwrap_or_default();
    let check_as = if coltype == "row" { "lwwmap" } else { coltype };
    crate::ops::delta_error(Some(check_as), it.delta.as_deref())
        .or_else(|| if coltype == "row" { live_error(delta) } else { None })
        .or_else(|| {
            let column = it.column.as_deref().unwrap_or_default();
            crate::coordination::authority_error(&target.authority, column, actor, it.counter.unwrap_or_default(), delta, from_peer)
        })
}

/// A client's last-writer-wins write timestamped too far ahead of this
/// node's clock (`node::skew_error`), judged after the rest (the delta
/// decodes) where the op enters from a client.
fn clock_error(coltype: &str, delta: &[u8]) -> Option<String> {
    use converge_core::types::{LwwMap, LwwReg};
    let newest = match coltype {
        "lwwreg" => converge_core::decode::<LwwReg>(delta).ok()?.max_timestamp()?.ms(),
        "lwwmap" | "row" => converge_core::decode::<LwwMap>(delta).ok()?.max_timestamp()?.ms(),
        _ => return None,
    };
    crate::node::skew_error(newest)
}

/// Whether clients may still write table `rel`, as a client's op taken in
/// this transaction may rely on. The table is locked as its writers lock
/// it, which `set_client_writes(t, false)` waits for: an apply that found
/// the table open commits before the switch does (so the op is in the
/// frontier the peers report with the switch, sql/maintenance.sql), and
/// one that comes after reads the switch. The setting is read again past
/// the cache: under READ COMMITTED a new statement sees the switch; under
/// REPEATABLE READ it is read locked, and a switch committed after the
/// snapshot is a serialization failure (40001, the caller retries).
/// Unreadable, it counts as closed.
fn client_writes_now(rel: pg_sys::Oid) -> bool {
    unsafe { pg_sys::LockRelationOid(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
    let snapshot_held = unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32;
    let lock = if snapshot_held { " FOR SHARE" } else { "" };
    crate::security::as_owner(|| {
        Spi::get_one_with_args::<bool>(
            &format!("SELECT client_writes FROM converge.replicated WHERE table_name = $1::oid::regclass{lock}"),
            &[rel.into()],
        )
    })
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Why the op is kept aside (quarantined), if it is.
fn kept_aside(it: &Item, target: &Target) -> Option<String> {
    // A column's merge semantics are those of its schema version here: an
    // op made under another version is kept aside, not merged.
    let declared = target.versions.get(it.column.as_deref().unwrap_or_default()).copied().unwrap_or(1);
    match it.version.unwrap_or(1).cmp(&declared) {
        std::cmp::Ordering::Less => return Some("old_schema".into()),
        std::cmp::Ordering::Greater => return Some("new_schema".into()),
        std::cmp::Ordering::Equal => {}
    }
    // Epochs (epochs.rs): an op made in an epoch this node has not reached
    // waits for that freeze (`new_epoch`; else a made-up epoch would escape
    // every freeze up to it); one made before a freeze that did not include
    // it is kept out (`frozen`). Rows are frozen only in tables with a table
    // authority, and only ops claiming an epoch can be ahead.
    let epoch = it.epoch.unwrap_or(0);
    if target.table_authority.is_none() && epoch == 0 {
        return None;
    }
    // A signed op's key is logged as written; its row's freezes are found
    // under the key as the row's own ops name it.
    let key = it.key.as_ref().expect("placed");
    // (An unsigned op's key is canonical already: `place` made it so.)
    let row = it.signature.as_ref().and_then(|_| canonical_key(key, target));
    let freezes = crate::epochs::freezes_of(&target.name, row.as_ref().unwrap_or(key));
    if epoch > crate::epochs::newest(&freezes) {
        Some("new_epoch".into())
    } else if crate::epochs::kept_out(&freezes, it.op_id.as_deref().unwrap_or_default(), epoch) {
        Some("frozen".into())
    } else {
        None
    }
}

/// The op as it will be logged and shipped (what its signature covers).
pub(super) fn as_op(it: &Item) -> converge_core::Op {
    converge_core::Op {
        op_id: it.op_id.clone().unwrap_or_default(),
        actor: it.actor.clone().unwrap_or_default(),
        target_table: it.table.clone().unwrap_or_default(),
        target_key: converge_core::Json::from_value(it.key.as_ref().unwrap_or(&serde_json::Value::Null)),
        target_column: it.column.clone().unwrap_or_default(),
        schema_version: it.version.unwrap_or(0),
        epoch: it.epoch.unwrap_or(0),
        deps: deps_of(it),
        delta: it.delta.clone().unwrap_or_default(),
        signature: it.signature.clone(),
    }
}

/// A row op's "$live", when it carries one, is true or false: every node
/// reads it alike (a number or a string would read differently in
/// releases that cast it through text).
pub(super) fn live_error(delta: &[u8]) -> Option<String> {
    let map = converge_core::decode::<converge_core::types::LwwMap>(delta).ok()?;
    match map.get("$live").map(|j| j.to_value()) {
        None | Some(serde_json::Value::Bool(_)) => None,
        Some(other) => Some(format!("invalid_delta: \"$live\" must be true or false, not {other}")),
    }
}


/// Whether this apply came through a peer's replication (from_peer).
pub(crate) fn trusted() -> bool {
    TRUSTED.with(|t| t.get())
}
