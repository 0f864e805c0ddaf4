//! The background worker: one per database listed in `converge.databases`
//! (needs `shared_preload_libraries = 'converge'`). It keeps a connection to
//! every unpaused peer, LISTENs there for `converge_ops` (sent when ops are
//! committed), and pulls a round when woken, when a round left more, or once
//! a second. A peer that cannot be reached is retried with exponential
//! backoff (up to 30 s) and shown as `down` in `converge.peers`; it never
//! holds up the others beyond one connect timeout.

use super::libpq::{poll_fds, Conn};
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

fn stop_requested() -> bool {
    BackgroundWorker::sigterm_received()
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn converge_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    let mut links: HashMap<String, Link> = HashMap::new();
    let mut next_refresh = Instant::now();
    while !stop_requested() {
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
    BackgroundWorker::transaction(move || pull::record_error(&name, &msg));
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
    let mut conn = link.conn.take().expect("connected");
    let (conn, result) = BackgroundWorker::transaction(move || {
        if !lock_peer(&peer.name, false) {
            return (conn, Ok(None)); // a sync() or remove_peer is at it
        }
        let r = pull_round(&peer, &mut conn, &stop_requested, false);
        (conn, r.map(Some))
    });
    link.conn = Some(conn);
    match result {
        Ok(Some(round)) => {
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
