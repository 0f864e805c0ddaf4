//! The background worker: one per database listed in `converge.databases`
//! (needs `shared_preload_libraries = 'converge'`). It keeps a connection to
//! every unpaused peer, LISTENs there for `converge_ops` (sent when ops are
//! committed), and pulls a round when woken, when a round left more, or once
//! a second. A peer that cannot be reached is retried with exponential
//! backoff (up to 30 s) and shown as `down` in `converge.peers`; it never
//! holds up the others beyond one connect timeout.

use super::libpq::{poll_fds, Conn, PeerError};
use super::peers::lock_peer;
use super::pull::{self, confirm, pull_round, PeerRow};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::ffi::CString;
use std::time::{Duration, Instant};

pub static DATABASES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));

pub fn register() {
    GucRegistry::define_string_guc(
        c"converge.databases",
        c"Databases (comma separated) in which the converge background worker pulls from peers.",
        c"One worker per database, started with the server (a change needs a restart); it needs shared_preload_libraries = 'converge'. Empty: no worker.",
        &DATABASES,
        GucContext::Sighup, // read at startup only; Postmaster GUCs cannot be defined by a library loaded later
        GucFlags::default(),
    );
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    let dbs = DATABASES.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
    for db in dbs.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        BackgroundWorkerBuilder::new(&format!("converge worker {db}"))
            .set_type("converge worker")
            .set_library("converge")
            .set_function("converge_worker_main")
            .set_extra(db)
            .enable_spi_access()
            .set_restart_time(Some(Duration::from_secs(2)))
            .load();
    }
}

struct Link {
    peer: PeerRow,
    conn: Option<Conn>,
    due: bool,
    next_round: Instant,
    next_connect: Instant,
    backoff: Duration,
}

/// Run `f` in a transaction of its own; a PostgreSQL error rolls it back and
/// comes back as Err (the worker logs it in converge.peers and goes on,
/// instead of exiting and waiting to be restarted).
fn in_transaction<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, String> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let r = PgTryBuilder::new(|| Ok(f()))
        .catch_others(|e| {
            Err(match e {
                pg_sys::panic::CaughtError::PostgresError(r) | pg_sys::panic::CaughtError::ErrorReport(r) => {
                    format!("{} ({:?})", r.message(), r.sql_error_code())
                }
                pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
            })
        })
        .execute();
    unsafe {
        match &r {
            Ok(_) => {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
            Err(_) => pg_sys::AbortCurrentTransaction(),
        }
    }
    r
}

extern "C-unwind" {
    /// PostgreSQL's own SIGTERM handler for backends (pgrx wraps the Rust
    /// binding in a guard; a signal handler needs the C symbol itself).
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
}

fn stop_requested() -> bool {
    // die() only sets the flag; exit through the normal FATAL path.
    if unsafe { pg_sys::ProcDiePending } != 0 {
        pgrx::check_for_interrupts!();
    }
    false
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn converge_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SIGTERM as for any backend (die): a long apply is cancelled at its next
    // CHECK_FOR_INTERRUPTS and the worker exits, so shutdown never waits on it.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
    }
    let db = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    let mut links: HashMap<String, Link> = HashMap::new();
    let mut next_refresh = Instant::now();
    while !stop_requested() {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let now = Instant::now();
        if now >= next_refresh {
            next_refresh = now + Duration::from_secs(1);
            let installed = BackgroundWorker::transaction(|| {
                crate::spi::read_one::<bool>(
                    "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'converge')
                        AND to_regclass('converge.peer') IS NOT NULL",
                    &[],
                )
                .unwrap_or(false)
            });
            let peers = if installed { BackgroundWorker::transaction(|| pull::load_peers(None)) } else { Vec::new() };
            links.retain(|name, l| peers.iter().any(|p| p.name == *name && p.conninfo == l.peer.conninfo));
            for p in peers {
                links.entry(p.name.clone()).or_insert(Link {
                    peer: p,
                    conn: None,
                    due: true,
                    next_round: now,
                    next_connect: now,
                    backoff: Duration::from_millis(500),
                });
            }
        }
        for link in links.values_mut() {
            if stop_requested() {
                break;
            }
            step(link);
        }
        let sockets: Vec<i32> = links.values().filter_map(|l| l.conn.as_ref().map(|c| c.socket())).collect();
        let busy = links.values().any(|l| l.conn.is_some() && l.due);
        let wait = if busy { Duration::ZERO } else { Duration::from_millis(100) };
        let _ = poll_fds(&sockets, false, wait);
        for link in links.values_mut() {
            if let Some(c) = link.conn.as_mut() {
                match c.take_notifications() {
                    Ok(true) => link.due = true,
                    Ok(false) => {}
                    Err(e) => fail(link, &e.message),
                }
            }
        }
        // Also notices postmaster death and SIGTERM.
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(0))) {
            break;
        }
    }
}

fn fail(link: &mut Link, message: &str) {
    link.conn = None;
    link.next_connect = Instant::now() + link.backoff;
    link.backoff = (link.backoff * 2).min(Duration::from_secs(30));
    let name = link.peer.name.clone();
    let msg = message.to_string();
    let _ = in_transaction(move || pull::record_error(&name, &msg));
}

fn step(link: &mut Link) {
    let now = Instant::now();
    if link.conn.is_none() {
        if now < link.next_connect {
            return;
        }
        match Conn::connect(&link.peer.conninfo).and_then(|mut c| {
            c.query("LISTEN converge_ops", &[], false, pull::QUERY_TIMEOUT, &stop_requested).map(|_| c)
        }) {
            Ok(c) => {
                link.conn = Some(c);
                link.due = true;
            }
            Err(e) => return fail(link, &e.message),
        }
    }
    if !link.due && now < link.next_round {
        return;
    }
    let peer = link.peer.clone();
    let conn = link.conn.take().expect("connected");
    let t0 = Instant::now();
    let cell = std::cell::RefCell::new(Some(conn));
    let result = in_transaction(std::panic::AssertUnwindSafe(|| {
        if !lock_peer(&peer.name, false) {
            return Ok(None); // a sync() or remove_peer is at it
        }
        // Paused (or removed) since the last refresh of the peer list.
        let active = crate::spi::read_one::<bool>(
            "SELECT NOT paused FROM converge.peer WHERE name = $1",
            &[peer.name.as_str().into()],
        );
        if active != Some(true) {
            return Ok(None);
        }
        let mut c = cell.borrow_mut();
        pull_round(&peer, c.as_mut().expect("connection"), &stop_requested, false).map(Some)
    }))
    .unwrap_or_else(|e| Err(PeerError { sqlstate: None, message: format!("applying: {e}") }));
    let conn = cell.into_inner().expect("connection");
    link.conn = Some(conn);
    match result {
        Ok(Some(round)) => {
            if round.txns > 0 {
                pgrx::debug1!(
                    "converge: pulled {} ops ({} transactions, {} bytes) from peer \"{}\" in {:.1} ms",
                    round.ops,
                    round.txns,
                    round.bytes,
                    link.peer.name,
                    t0.elapsed().as_secs_f64() * 1000.0
                );
            }
            link.backoff = Duration::from_millis(500);
            link.due = round.more;
            link.next_round = Instant::now() + Duration::from_secs(1);
            if round.applied_lsn > 0 {
                let peer = link.peer.clone();
                confirm(&peer, link.conn.as_mut().expect("connected"), round.applied_lsn, &stop_requested);
            }
        }
        Ok(None) => {
            link.due = false;
            link.next_round = Instant::now() + Duration::from_millis(50);
        }
        Err(e) => fail(link, &e.message),
    }
}
