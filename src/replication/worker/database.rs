//! The worker and the commands that need its database to themselves.
//!
//! `DROP DATABASE`, `ALTER DATABASE ... RENAME` / `SET TABLESPACE` and
//! `CREATE DATABASE ... TEMPLATE` fail when another session stays
//! connected to the database for 5 s, and a background worker is such a
//! session. The worker leaves when one of them waits (exit code 1: the
//! postmaster starts it again 2 s later, and its connection then waits
//! until the command is done), and a worker whose database is gone exits
//! cleanly instead of failing to connect and being started again every
//! 2 s for ever (also after `DROP DATABASE ... WITH (FORCE)`, which
//! terminates it).

use pgrx::prelude::*;

/// Whether another session holds or waits for a lock on this database
/// that those commands take: exclusive (drop, rename, move) or share (a
/// copy of it as a template). Asked as a connection asks, without waiting:
/// the lock a new session takes on its database (row exclusive) conflicts
/// with exactly those, held or queued.
pub(super) fn wanted_alone() -> bool {
    let tag = pg_sys::LOCKTAG {
        locktag_field1: 0, // a shared object: no database
        locktag_field2: pg_sys::DatabaseRelationId.to_u32(),
        locktag_field3: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field4: 0,
        locktag_type: pg_sys::LockTagType::LOCKTAG_OBJECT as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    };
    let mode = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    let got = unsafe { pg_sys::LockAcquire(&tag, mode, false, true) };
    if got == pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL {
        return true;
    }
    unsafe { pg_sys::LockRelease(&tag, mode, false) };
    false
}

/// Whether database `db` still has its directory, in `base/` or in a
/// tablespace (the worker runs in the data directory). A database has one
/// in its default tablespace for as long as it exists; checked before
/// connecting, since a connection to a dropped database is a FATAL error,
/// which the postmaster answers by starting the worker again.
pub(super) fn on_disk(db: u32) -> bool {
    let name = db.to_string();
    let has = |dir: &std::path::Path| dir.join(&name).is_dir();
    if has(std::path::Path::new("base")) {
        return true;
    }
    let entries = |p: &std::path::Path| std::fs::read_dir(p).into_iter().flatten().flatten().map(|e| e.path());
    entries(std::path::Path::new("pg_tblspc")).any(|space| entries(&space).any(|version| has(&version)))
}
