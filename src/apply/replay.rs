//! `converge.replay(op_id)`: an op kept aside (rejected or quarantined)
//! applied again from its log row, once what kept it aside was mended (a
//! repair, a widened key, a column added).
//!
//! An op that came through a peer's replication is applied as that peer's,
//! as `set_schema_version` applies the ops it releases: as a client's, a
//! node's own op would be refused (`node_actor`). Only rows this version
//! logged say truthfully where an op came from (an SQL caller's `peer:`
//! origin is logged as `claimed peer:...`). 0.1.0 logged whatever origin
//! its caller named, so the update to 0.2.0 marks its rows `v0.1.0 ...`
//! and replay never trusts them: such ops are copied again from their peer
//! (docs/operations.md, "Upgrades"). Trust is a right the caller does not
//! have by itself: replaying an op as a peer's takes the ownership of the
//! op's table (or a superuser, for ops of converge's own tables).

use super::*;

/// The fields of the log row replay reads, in the order `Item` takes them:
/// the op's last delivery, one through a peer's replication first (a
/// client sending the same op id later must not hide it; the
/// `converge.quarantine` view shows the same row). A void a client sent
/// is no op to replay (voids.rs): the op it named is; a peer's is.
const ROW: &str = "SELECT l.op_id, l.actor, l.target_table, l.target_key, l.target_column, l.schema_version, l.epoch,
                          l.deps, l.delta, l.signature, l.origin
                     FROM converge.op_log l
                    WHERE l.op_id OPERATOR(pg_catalog.=) $1 AND l.outcome OPERATOR(pg_catalog.=) ANY ('{rejected,quarantined}'::pg_catalog.text[])
                      AND l.origin OPERATOR(pg_catalog.<>) 'replay'
                      AND NOT (coalesce(l.target_table OPERATOR(pg_catalog.=) 'converge.void', false)
                               AND l.origin OPERATOR(pg_catalog.!~~) 'peer:%')
                    ORDER BY l.origin OPERATOR(pg_catalog.~~) 'peer:%' DESC,
                             coalesce(l.target_table OPERATOR(pg_catalog.=) 'converge.void', false), l.seq DESC LIMIT 1";

/// Declared in sql/ops.sql.
#[pg_extern(sql = false, volatile, strict, parallel_unsafe)]
fn replay(replay_op_id: &str) -> TableIterator<'static, (name!(op_id, String), name!(outcome, String), name!(reason, Option<String>))> {
    // A repair gave it up for good (a translated old_schema op, for one).
    if let Some(by) = crate::repair::superseded_by(replay_op_id) {
        crate::errors::raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("op {replay_op_id} was superseded by repair {by}: it is not replayed"),
            "converge.superseded lists what each repair gave up; the repair's reason is on its row in converge.op_log.",
        );
    }
    // The row as the caller sees it (the log's row security), trust off.
    let found = as_client(|| {
        Spi::connect(|c| {
            let t = c.select(ROW, Some(1), &[replay_op_id.into()])?;
            if t.is_empty() {
                return Ok(None);
            }
            let r = t.first();
            let item = Item {
                op_id: r.get(1)?,
                actor_given: r.get(2)?,
                table: r.get(3)?,
                key: r.get::<crate::jsonb::Jb>(4)?.map(|j| j.0),
                column: r.get(5)?,
                version: r.get(6)?,
                epoch: r.get(7)?,
                deps: r.get::<Vec<Option<String>>>(8)?,
                delta: r.get(9)?,
                signature: r.get(10)?,
                ..Item::default()
            };
            let origin: String = r.get(11)?.unwrap_or_default();
            Ok::<_, pgrx::spi::SpiError>(Some((item, origin)))
        })
    })
    .unwrap_or_else(|e| spi_err(e));
    let Some((item, origin)) = found else {
        raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("no rejected or quarantined op with op_id {replay_op_id}"));
    };
    if let Some(peer) = origin.strip_prefix("peer:") {
        let name = item.table.as_deref().unwrap_or_default();
        may_replay_as_peer(crate::security::lookup(name), peer, name);
    }
    let outcomes = entry::again(vec![item], &origin);
    TableIterator::new(outcomes)
}

/// Applying an op as a peer's is the table owner's call (as for
/// `set_schema_version`); for ops of converge's own tables (no user
/// table), a superuser's.
fn may_replay_as_peer(table: Option<pg_sys::Oid>, peer: &str, name: &str) {
    let user = unsafe { pg_sys::GetUserId() };
    let (allowed, who, hint) = unsafe {
        match table {
            Some(rel) if pg_sys::get_rel_namespace(rel) != pg_sys::get_namespace_oid(c"converge".as_ptr(), false) => (
                pg_sys::pg_class_ownercheck(rel, user),
                format!("the owner of {name} (or a member of its role)"),
                "Writers of the table may replay ops that clients sent; an op that came from a peer is its owner's to replay.",
            ),
            _ => (
                pg_sys::superuser_arg(user),
                "a superuser".to_string(),
                "Ops of converge's own tables (registry, repairs, freezes, requests) are replayed as a peer's by a superuser only.",
            ),
        }
    };
    if !allowed {
        crate::errors::raise_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("replaying an op that came from peer \"{peer}\" applies it as that peer's: only {who} may"),
            hint,
        );
    }
}
