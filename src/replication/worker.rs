//! The background worker: one per database where converge is installed
//! (started by the launcher, launcher.rs). It streams from every
//! unpaused peer over the replication protocol (`START_REPLICATION` on our
//! slot there, from this node's origin progress), applies each batch of
//! complete transactions as soon as it has them, and then confirms that
//! position to the peer (standby status update), so the slot keeps
//! everything not committed here. A second, normal connection probes the
//! peer's WAL position to tell when we are caught up (`wait_for_peers`).
//! A peer that cannot be reached is retried with exponential backoff (up to
//! 30 s) and shown as `down` in `converge.peers`; it never holds up the
//! others beyond one connect timeout.

use super::libpq::{poll_fds, Conn};
use super::decoder;
use super::pull::{self, PeerRow};
use batches::{apply, apply_lock_timeout, decide_requests, retry_ready};
use probe::{caught_up, Probe};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

mod batches;
mod database;
mod probe;

struct Link {
    peer: PeerRow,
    /// Replication connection, streaming.
    stream: Option<Conn>,
    /// Normal connection: probes of the peer's WAL position.
    probe_conn: Option<Conn>,
    /// Ops of the transaction being received.
    txn: Vec<Vec<u8>>,
    /// Ops of complete transactions received and not applied yet.
    ready: Vec<Vec<u8>>,
    ready_lsn: u64,
    ready_time: i64,
    ready_txns: usize,
    ready_bytes: usize,
    /// Remote commit LSN applied and committed here (our origin's progress).
    flushed: u64,
    /// How far the peer has decoded our slot (keepalives).
    sent_ptr: u64,
    /// What we confirm to the peer: `flushed`, or further while caught up
    /// (WAL with nothing for us need not be kept).
    reported: u64,
    /// A probe in flight: the peer's insert LSN and our clock when asked.
    probe: Option<Probe>,
    next_probe: Instant,
    last_feedback: Instant,
    next_connect: Instant,
    backoff: Duration,
    /// Batches rolled back in a row because a lock they needed was held
    /// (`hold`): the wait before the next try doubles with each. Since when.
    held: u32,
    held_since: Option<Instant>,
}

impl Link {
    fn new(peer: PeerRow, now: Instant) -> Link {
        Link {
            peer,
            stream: None,
            probe_conn: None,
            txn: Vec::new(),
            ready: Vec::new(),
            ready_lsn: 0,
            ready_time: 0,
            ready_txns: 0,
            ready_bytes: 0,
            flushed: 0,
            sent_ptr: 0,
            reported: 0,
            probe: None,
            next_probe: now,
            last_feedback: now,
            next_connect: now,
            backoff: Duration::from_millis(500),
            held: 0,
            held_since: None,
        }
    }

    /// No batch of this peer is held any more (one applied, or a copy or
    /// the stream brought everything there was).
    fn unhold(&mut self) {
        self.held = 0;
        self.held_since = None;
    }

    fn disconnect(&mut self) {
        self.stream = None;
        self.probe_conn = None;
        self.txn.clear();
        self.ready.clear();
        self.ready_lsn = 0;
        self.ready_txns = 0;
        self.ready_bytes = 0;
        self.probe = None;
    }
}

/// Run `f` in a transaction of its own; a PostgreSQL error rolls it back and
/// comes back as Err (the worker logs it in converge.peers and goes on,
/// instead of exiting and waiting to be restarted).
fn in_transaction<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, String> {
    in_transaction_coded(f).map_err(|(message, _)| message)
}

/// `in_transaction`, with the error's SQLSTATE kept.
fn in_transaction_coded<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, (String, Option<PgSqlErrorCode>)> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    // The commit inside the try: an error it raises (a deferred constraint
    // of the user's, a lock it waits on past lock_timeout) rolls back and
    // is reported like any other, instead of ending the worker.
    let r = PgTryBuilder::new(|| {
        let r = f();
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(r)
    })
    .catch_others(|e| {
        Err(match e {
            pg_sys::panic::CaughtError::PostgresError(r) | pg_sys::panic::CaughtError::ErrorReport(r) => {
                (format!("{} ({:?})", r.message(), r.sql_error_code()), Some(r.sql_error_code()))
            }
            pg_sys::panic::CaughtError::RustPanic { ereport, .. } => (ereport.message().to_string(), None),
        })
    })
    .execute();
    if r.is_err() {
        unsafe { pg_sys::AbortCurrentTransaction() };
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
pub extern "C-unwind" fn converge_worker_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SIGTERM as for any backend (die): a long apply is cancelled at its next
    // CHECK_FOR_INTERRUPTS and the worker exits, so shutdown never waits on it.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
    }
    let dboid = pg_sys::Oid::from(arg.value() as u32);
    if !database::on_disk(dboid.to_u32()) {
        return; // dropped: exit 0, not restarted
    }
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(dboid), None);
    crate::security::fix_session_path();
    if !claim_database() {
        return; // exit 0: not restarted
    }
    let mut links: HashMap<String, Link> = HashMap::new();
    let mut step_aside = false;
    let mut next_refresh = Instant::now();
    let mut next_lost_check = Instant::now();
    while !stop_requested() {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let now = Instant::now();
        if now >= next_refresh {
            next_refresh = now + Duration::from_secs(1);
            if !BackgroundWorker::transaction(installed_and_allowed) {
                break; // DROP EXTENSION, or converge.databases excludes us now: exit 0
            }
            if BackgroundWorker::transaction(database::wanted_alone) {
                step_aside = true;
                break;
            }
            let peers = BackgroundWorker::transaction(|| pull::load_peers(None));
            // (A link whose peer was added again with other credentials, or
            // by another kind of role, starts over with the new row.)
            links.retain(|name, l| {
                peers.iter().any(|p| p.name == *name && p.conninfo == l.peer.conninfo && p.password_required == l.peer.password_required)
            });
            for p in peers {
                links.entry(p.name.clone()).or_insert_with(|| Link::new(p, now));
            }
        }
        if now >= next_lost_check {
            next_lost_check = now + Duration::from_secs(5);
            if let Err(e) = in_transaction(super::lost::check_lost_peers) {
                pgrx::warning!("converge: checking for lost peers: {e}");
            }
            // Requests left pending (their row had not arrived, or the
            // authority was set after them) are tried again, and so are
            // ops made ready outside an apply (a freeze reached the epoch
            // they waited for, epochs.rs).
            decide_requests();
            retry_ready();
        }
        for link in links.values_mut() {
            if stop_requested() {
                break;
            }
            step(link);
        }
        let sockets: Vec<i32> = links.values().filter_map(|l| l.stream.as_ref().map(|c| c.socket())).collect();
        let _ = poll_fds(&sockets, false, Duration::from_millis(50));
        for link in links.values_mut() {
            if link.stream.is_some() {
                drain(link);
            }
        }
        // Also notices postmaster death and SIGTERM.
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(0))) {
            break;
        }
    }
    if step_aside {
        drop(links);
        pgrx::log!("converge: the worker leaves database {} while another session needs it alone (DROP, ALTER or a copy of the database); it starts again in 2 s", dboid.to_u32());
        unsafe { pg_sys::proc_exit(1) };
    }
}

/// converge is installed here, at this library's version, and
/// converge.databases allows this database.
fn installed_and_allowed() -> bool {
    let db = unsafe { std::ffi::CStr::from_ptr(pg_sys::get_database_name(pg_sys::MyDatabaseId)) };
    super::launcher::database_allowed(&db.to_string_lossy()) && same_version() && installed_here()
}

/// The library was updated and the extension not yet (or the reverse):
/// the worker stops until they agree (ALTER EXTENSION converge UPDATE
/// starts it again), rather than run new code on the old schema.
fn same_version() -> bool {
    match crate::node::extension_version() {
        Some(v) if v != env!("CARGO_PKG_VERSION") => {
            pgrx::warning!(
                "converge: the extension here is version {v} and the library is {}; replication waits for ALTER EXTENSION converge UPDATE",
                env!("CARGO_PKG_VERSION")
            );
            false
        }
        _ => true,
    }
}

fn installed_here() -> bool {
    crate::spi::read_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'converge')
                AND to_regclass('converge.peer') IS NOT NULL
                -- never hold a template open (CREATE DATABASE copies it)
                AND (SELECT datallowconn AND NOT datistemplate FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .unwrap_or(false)
}

/// Become this database's only worker: converge installed and allowed,
/// and the database's worker lock held for the life of this process. A
/// worker started while the previous one is still exiting waits a little.
fn claim_database() -> bool {
    if !BackgroundWorker::transaction(installed_and_allowed) {
        return false;
    }
    for _ in 0..20 {
        if BackgroundWorker::transaction(|| crate::locks::try_session(crate::locks::Lock::Worker)) {
            return true;
        }
        // A worker left over from before (the launcher's or CREATE
        // EXTENSION's) waits here connected: not while a DROP waits.
        if stop_requested() || BackgroundWorker::transaction(database::wanted_alone) {
            return false;
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(500))) {
            return false;
        }
    }
    false
}

fn fail(link: &mut Link, message: &str) {
    link.disconnect();
    link.next_connect = Instant::now() + link.backoff;
    link.backoff = (link.backoff * 2).min(Duration::from_secs(30));
    let name = link.peer.name.clone();
    let msg = message.to_string();
    let _ = in_transaction(move || pull::record_error(&name, &msg));
}

/// Connect and start streaming when not streaming (after the backoff).
fn step(link: &mut Link) {
    if link.stream.is_some() || Instant::now() < link.next_connect {
        return;
    }
    let peer = link.peer.clone();
    // A rejoin that failed half way (its new slot made, the copy not
    // committed) is done again before streaming from that slot.
    let unfinished = in_transaction(|| {
        crate::spi::read_one::<bool>("SELECT rejoining FROM converge.peer_status WHERE name = $1", &[peer.name.as_str().into()])
    });
    if matches!(unfinished, Ok(Some(true))) {
        if let Err(m) = rejoin(&peer) {
            return fail(link, &format!("rejoining: {m}"));
        }
        link.unhold();
    }
    let progress = in_transaction(|| pull::origin_id(&peer.origin).map(|o| unsafe { pg_sys::replorigin_get_progress(o, true) }));
    let progress = match progress {
        Ok(Some(p)) => p,
        Ok(None) => return fail(link, &format!("replication origin \"{}\" is missing; run converge.add_peer again", peer.origin)),
        Err(e) => return fail(link, &e),
    };
    let started = pull::connect_peer(&peer, true).and_then(|mut c| {
        c.start_copy_both(
            &format!("START_REPLICATION SLOT \"{}\" LOGICAL {}", peer.slot.replace('"', ""), pull::fmt_lsn(progress)),
            pull::QUERY_TIMEOUT,
            &stop_requested,
        )
        .map(|_| c)
    });
    // Our slot there was dropped: the peer marked us lost while we were
    // away. Rejoin (copy what we miss, make a new slot), then stream.
    let started = match started {
        Err(e) if slot_missing(&e) => match rejoin(&peer) {
            Ok(()) => return link.unhold(),
            Err(m) => return fail(link, &format!("rejoining: {m}")),
        },
        other => other,
    };
    let probe = pull::connect_peer(&peer, false);
    match (started, probe) {
        (Ok(s), Ok(mut p)) => {
            // Which slot the peer reads from here (lost.rs); the probes keep
            // it current.
            let me = in_transaction(|| crate::node::local_node_if_set().unwrap_or_default()).unwrap_or_default();
            let theirs = super::peers::their_slot(&me, &mut p, &stop_requested).ok().flatten();
            link.stream = Some(s);
            link.probe_conn = Some(p);
            link.flushed = progress;
            link.reported = progress;
            link.sent_ptr = 0;
            // (The backoff is reset once a batch applies or the link has
            // caught up, not here: a batch that fails each time it is
            // streamed again must not be retried twice a second.)
            link.next_probe = Instant::now();
            let name = peer.name.clone();
            // A peer shown down because its batches keep meeting a held
            // lock (batches.rs, `hold`) stays down until one applies.
            let held_long = link.held_since.is_some_and(|t| t.elapsed() > batches::HELD_DOWN_AFTER);
            let _ = in_transaction(move || {
                let _ = Spi::run_with_args(
                    &pull::status_update(
                        "state = CASE WHEN $3 AND s.state = 'down' THEN 'down' ELSE 'ok' END, last_success = clock_timestamp(), their_slot = coalesce($2, s.their_slot)",
                    ),
                    &[name.as_str().into(), theirs.into(), held_long.into()],
                );
            });
        }
        (Err(e), _) | (_, Err(e)) => fail(link, &e.message),
    }
}

fn slot_missing(e: &super::libpq::PeerError) -> bool {
    e.sqlstate.as_deref() == Some("42704") && e.message.contains("replication slot")
}

/// Rejoin a peer that dropped our slot (SPEC section 4): shown as
/// `rejoining` until done; the copy and the new slot are add_peer's.
fn rejoin(peer: &PeerRow) -> Result<(), String> {
    let name = peer.name.clone();
    let marked = in_transaction(move || {
        pull::claim_status(&name)
            && Spi::run_with_args("UPDATE converge.peer_status SET rejoining = true WHERE name = $1", &[name.as_str().into()]).is_ok()
    });
    if marked != Ok(true) {
        return Err("the peer's status row is held by another transaction (add_peer?) or gone; trying later".into());
    }
    pgrx::log!("converge: rejoining peer \"{}\" (our slot there was dropped: it marked us lost)", peer.name);
    let peer = peer.clone();
    in_transaction(std::panic::AssertUnwindSafe(move || {
        apply_lock_timeout();
        let origin = pull::origin_id(&peer.origin);
        let Some(origin) = origin else { return Err(format!("replication origin \"{}\" is missing", peer.origin)) };
        // The slot before any row lock here (which takes a transaction id
        // that a slot made on this same server would wait for).
        let mut conn = pull::connect_peer(&peer, false).map_err(|e| e.message)?;
        super::peers::ensure_slot(&peer.name, &mut conn, &peer.slot, &peer.origin, &stop_requested);
        if !pull::claim_status(&peer.name) {
            return Err("the peer's status row is held by another transaction (add_peer?) or gone; trying later".into());
        }
        let copied = super::peers::copy_missing(&peer.name, &mut conn, origin, &stop_requested, true);
        let _ = crate::spi::prepared(
            "UPDATE converge.peer_status SET rejoining = false, state = 'ok', last_error = NULL, last_success = clock_timestamp()
              WHERE name = $1",
            &[peer.name.as_str().into()],
            |_| Ok(()),
        );
        pgrx::log!("converge: rejoined peer \"{}\" ({copied} ops copied)", peer.name);
        Ok(())
    }))?
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// A standby status update: everything up to `flushed` is applied here.
fn feedback(link: &mut Link, reply: bool) {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut m = Vec::with_capacity(34);
    m.push(b'r');
    link.reported = link.reported.max(link.flushed);
    for _ in 0..3 {
        m.extend(link.reported.to_be_bytes());
    }
    m.extend(now.to_be_bytes());
    m.push(reply as u8);
    let r = link.stream.as_mut().map(|s| s.write_copy(&m));
    link.last_feedback = Instant::now();
    if let Some(Err(e)) = r {
        fail(link, &e.message);
    }
}

/// Read what the peer sent, apply complete transactions, confirm them.
fn drain(link: &mut Link) {
    let msgs = match link.stream.as_mut().expect("streaming").read_copy() {
        Ok(m) => m,
        Err(e) => return fail(link, &e.message),
    };
    let mut reply = false;
    for m in msgs {
        match m.first() {
            // XLogData: 'w', start LSN, end of WAL, send time, then our message.
            Some(b'w') if m.len() >= 25 => {
                let data = &m[25..];
                match decoder::parse_message(data) {
                    Ok(decoder::Message::Op(op)) => link.txn.push(op),
                    Ok(decoder::Message::Commit { end_lsn, commit_time }) => {
                        if end_lsn > link.flushed {
                            link.ready.append(&mut link.txn);
                            link.ready_lsn = end_lsn;
                            link.ready_time = commit_time;
                            link.ready_txns += 1;
                        } else {
                            link.txn.clear(); // applied before a reconnect
                        }
                        link.sent_ptr = link.sent_ptr.max(end_lsn);
                    }
                    Err(e) => return fail(link, &e),
                }
                link.ready_bytes += data.len();
            }
            // Keepalive: 'k', how far the peer has decoded, send time, reply requested.
            Some(b'k') if m.len() >= 18 => {
                link.sent_ptr = link.sent_ptr.max(be_u64(&m[1..9]));
                reply |= m[17] == 1;
            }
            _ => {}
        }
    }
    if !link.ready.is_empty() {
        if !apply(link) {
            return;
        }
        reply = true;
    }
    if link.txn.is_empty() && link.ready.is_empty() {
        caught_up(link);
    }
    if link.stream.is_some() && (reply || link.last_feedback.elapsed() >= Duration::from_secs(1)) {
        feedback(link, false);
    }
}
