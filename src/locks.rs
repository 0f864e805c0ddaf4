//! The locks converge's own processes take turns on: appliers, a peer's
//! sync, the actor registry and the database's worker. (The op counter's,
//! an allocator's and an idempotency key's are object locks on converge's
//! pg_class rows, local_ops.rs: taken to the end of a transaction only.)
//!
//! They are advisory lock tags that no SQL function can make: the SQL
//! advisory functions set the tag's fourth field to 1 (one int8 key) or 2
//! (two int4 keys), converge's are 3 and up, with converge's `op_log` oid
//! in the second. So no role can take one and hold it to keep the worker
//! out or stall replication, as it could the plain advisory keys converge
//! used before. The advisory lock method is kept for what it does: a
//! session lock (the worker's) survives an aborted transaction and is
//! released when the process exits. `pg_locks` shows them as locktype
//! `advisory`, objid the key, objsubid 2 + the kind below.

use pgrx::pg_sys;

#[derive(Clone, Copy, Debug)]
pub enum Lock {
    /// One of the 64 op_id buckets of a database (apply, step 3).
    OpIds(u32),
    /// A peer's sync rounds and remove_peer, by a hash of its name.
    PeerSync(u32),
    /// An actor's contiguous frontier, by a hash of its name.
    Frontier(u32),
    /// The actor registry: batches read it (shared), changes write it.
    Registry,
    /// The database's worker, held for its life.
    Worker,
}

impl Lock {
    fn tag(self) -> pg_sys::LOCKTAG {
        let (kind, key) = match self {
            Lock::OpIds(b) => (1, b),
            Lock::PeerSync(h) => (2, h),
            Lock::Frontier(h) => (3, h),
            Lock::Registry => (4, 0),
            Lock::Worker => (5, 0),
        };
        pg_sys::LOCKTAG {
            locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
            locktag_field2: crate::direct::relid(c"op_log").to_u32(),
            locktag_field3: key,
            locktag_field4: 2 + kind,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        }
    }
}

/// Take `lock` to the end of the transaction, shared or exclusive, waiting
/// as long as `lock_timeout` allows.
pub fn xact(lock: Lock, exclusive: bool) {
    let mode = if exclusive { pg_sys::ExclusiveLock } else { pg_sys::ShareLock };
    let tag = lock.tag();
    unsafe { pg_sys::LockAcquire(&tag, mode as pg_sys::LOCKMODE, false, false) };
}

/// Take `lock` for the rest of this session, unless another holds it.
pub fn try_session(lock: Lock) -> bool {
    let tag = lock.tag();
    let got = unsafe { pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, true, true) };
    got != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}
