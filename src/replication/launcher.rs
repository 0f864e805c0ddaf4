//! Which databases get a worker, with no setting to edit.
//!
//! The shape of mature replication extensions: one static **launcher**
//! (registered when the library is in `shared_preload_libraries`) connects to
//! no database, lists `pg_database` at start and every few seconds, and
//! starts a dynamic **worker** (worker.rs) for each database it has not seen
//! yet. A worker that finds no converge in its database exits cleanly (and is
//! not restarted); `CREATE EXTENSION converge` and `add_peer` start one for
//! their database when their transaction commits, so a new database is
//! served within seconds and without a restart. One worker per database: a
//! worker holds a session lock for its database (locks.rs), and a second one
//! gives up. `converge.databases`, when set, restricts the workers to a list.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set in `_PG_init` while the postmaster preloads the library; every
/// backend forked from it inherits the value.
static PRELOADED: AtomicBool = AtomicBool::new(false);

pub static DATABASES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `converge.apply_lock_timeout`, in ms (0: the server's lock_timeout).
pub static APPLY_LOCK_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(1000);

pub fn register() {
    GucRegistry::define_string_guc(
        c"converge.databases",
        c"Optional: the only databases (comma separated) where converge's background worker runs.",
        c"Empty (the default): every database where the extension is installed gets a worker. Takes effect on reload.",
        &DATABASES,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // One worker applies every peer of a database: a batch waiting on a row
    // a user holds would hold up all of them, so it waits only this long.
    GucRegistry::define_int_guc(
        c"converge.apply_lock_timeout",
        c"How long the background worker waits for a lock while applying a peer's batch (0: the server's lock_timeout, by default no limit).",
        c"Past it the batch is rolled back and applied again later (0.5 s, doubling to 30 s), and the worker serves its other peers meanwhile. Takes effect on reload.",
        &APPLY_LOCK_TIMEOUT,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    PRELOADED.store(true, Ordering::Relaxed);
    BackgroundWorkerBuilder::new("converge launcher")
        .set_type("converge launcher")
        .set_library("converge")
        .set_function("converge_launcher_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Why no worker can serve the current database (None: one can).
pub fn worker_problem(dbname: &str) -> Option<String> {
    if !PRELOADED.load(Ordering::Relaxed) {
        return Some(
            "no background worker can run: converge is not in shared_preload_libraries. Add it \
             (shared_preload_libraries = 'converge') and restart the server; meanwhile converge.sync(peer) pulls by hand"
                .into(),
        );
    }
    if !database_allowed(dbname) {
        return Some(format!(
            "converge.databases does not list database \"{dbname}\": add it to the setting (or empty it) and reload"
        ));
    }
    None
}

/// Whether `converge.databases` (if set) lets a worker serve `dbname`.
pub fn database_allowed(dbname: &str) -> bool {
    let list = DATABASES.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
    let names: Vec<&str> = list.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    names.is_empty() || names.contains(&dbname)
}

/// Why no worker can serve this database, or NULL (the `no_worker` state
/// of converge.peers).
#[pg_extern(stable, parallel_safe)]
fn worker_problem_here() -> Option<String> {
    let db = unsafe { std::ffi::CStr::from_ptr(pg_sys::get_database_name(pg_sys::MyDatabaseId)) };
    worker_problem(&db.to_string_lossy())
}

fn start_worker_for(db: pg_sys::Oid) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("converge worker for database {}", db.to_u32()))
        .set_type("converge worker")
        .set_library("converge")
        .set_function("converge_worker_main")
        .set_argument(Some(pg_sys::Datum::from(db.to_u32())))
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(2)))
        .set_notify_pid(0)
        .load_dynamic()
        .ok()
}

/// Start this database's worker once the current transaction commits (so
/// it sees what the transaction made). Nothing if one is running already,
/// or if no worker can run here (see worker_problem).
#[pg_extern(volatile, parallel_unsafe)]
pub fn start_worker() -> bool {
    if !PRELOADED.load(Ordering::Relaxed) {
        return false;
    }
    let running = crate::security::in_fixed_path(|| {
        crate::spi::read_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'converge worker' AND datid = $1)
                 OR (SELECT datistemplate OR NOT datallowconn FROM pg_database WHERE oid = $1)",
            &[unsafe { pg_sys::MyDatabaseId }.into()],
        )
    });
    if running == Some(true) {
        return true;
    }
    let db = unsafe { pg_sys::MyDatabaseId };
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        let _ = start_worker_for(db);
    });
    true
}

/// Databases that accept connections (not templates), read from the shared
/// catalog directly: the launcher connects to no database, so it never
/// blocks CREATE DATABASE from a template or DROP DATABASE.
fn list_databases() -> Vec<pg_sys::Oid> {
    let mut out = Vec::new();
    unsafe {
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as _);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tup = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tup.is_null() {
                break;
            }
            let data = (*tup).t_data;
            let form = (data as *mut u8).add((*data).t_hoff as usize) as *const pg_sys::FormData_pg_database;
            if (*form).datallowconn && !(*form).datistemplate {
                out.push((*form).oid);
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
    }
    out
}

/// Databases a converge worker runs in now, from the backends' status
/// (as pg_stat_activity shows them; read in a transaction, which drops
/// the copy it makes).
fn served_databases() -> HashSet<pg_sys::Oid> {
    let mut out = HashSet::new();
    unsafe {
        for i in 1..=pg_sys::pgstat_fetch_stat_numbackends() {
            let local = pg_sys::pgstat_fetch_stat_local_beentry(i);
            if local.is_null() {
                continue;
            }
            let be = &(*local).backendStatus;
            if be.st_backendType != pg_sys::BackendType::B_BG_WORKER {
                continue;
            }
            let ty = pg_sys::GetBackgroundWorkerTypeByPid(be.st_procpid);
            if !ty.is_null() && std::ffi::CStr::from_ptr(ty) == c"converge worker" {
                out.insert(be.st_databaseid);
            }
        }
    }
    out
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn converge_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    // The worker started for each database seen (its handle, in the
    // launcher's top memory context).
    let mut seen: HashMap<pg_sys::Oid, DynamicBackgroundWorker> = HashMap::new();
    loop {
        if BackgroundWorker::sigterm_received() {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            // A database may have been added to converge.databases: those
            // with no worker get one again. A database a worker serves (the
            // launcher's, or one CREATE EXTENSION started) gets no second
            // one: it waited for the first one's lock and exited, holding a
            // worker slot meanwhile, on every reload.
            let served = BackgroundWorker::transaction(served_databases);
            seen.retain(|db, w| {
                served.contains(db) || !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied))
            });
        }
        let dbs = BackgroundWorker::transaction(list_databases);
        for db in dbs {
            // A worker that finds no converge exits; it is tried again only
            // for a new database (CREATE EXTENSION starts its own).
            if !seen.contains_key(&db) {
                if let Some(w) = start_worker_for(db) {
                    seen.insert(db, w);
                }
            }
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(5))) {
            break;
        }
    }
}
