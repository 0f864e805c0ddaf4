//! A small, safe wrapper over the few libpq calls converge needs to talk to a
//! peer: connect, run a query with a deadline, stream from a logical slot.
//!
//! libpq is what dblink and postgres_fdw use inside a backend; it is the
//! client PostgreSQL itself ships, so it speaks every auth method the peer may
//! require, and the replication protocol. Queries are sent asynchronously and
//! waited on with poll(), so a hung peer costs at most the deadline and a
//! user can cancel `sync()`.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::time::{Duration, Instant};

#[allow(non_camel_case_types)]
type PGconn = c_void;
#[allow(non_camel_case_types)]
type PGresult = c_void;


const CONNECTION_OK: c_int = 0;
const PGRES_COMMAND_OK: c_int = 1;
const PGRES_TUPLES_OK: c_int = 2;
const PGRES_COPY_BOTH: c_int = 8;
const PG_DIAG_SQLSTATE: c_int = b'C' as c_int;

#[link(name = "pq")]
extern "C" {
    fn PQconnectdbParams(keywords: *const *const c_char, values: *const *const c_char, expand_dbname: c_int) -> *mut PGconn;
    fn PQstatus(conn: *const PGconn) -> c_int;
    fn PQerrorMessage(conn: *const PGconn) -> *const c_char;
    fn PQfinish(conn: *mut PGconn);
    fn PQsocket(conn: *const PGconn) -> c_int;
    fn PQsendQueryParams(
        conn: *mut PGconn,
        command: *const c_char,
        n_params: c_int,
        param_types: *const c_uint,
        param_values: *const *const c_char,
        param_lengths: *const c_int,
        param_formats: *const c_int,
        result_format: c_int,
    ) -> c_int;
    fn PQconsumeInput(conn: *mut PGconn) -> c_int;
    fn PQisBusy(conn: *mut PGconn) -> c_int;
    fn PQflush(conn: *mut PGconn) -> c_int;
    fn PQsetnonblocking(conn: *mut PGconn, arg: c_int) -> c_int;
    fn PQgetResult(conn: *mut PGconn) -> *mut PGresult;
    fn PQresultStatus(res: *const PGresult) -> c_int;
    fn PQresultErrorMessage(res: *const PGresult) -> *const c_char;
    fn PQresultErrorField(res: *const PGresult, field: c_int) -> *const c_char;
    fn PQntuples(res: *const PGresult) -> c_int;
    fn PQnfields(res: *const PGresult) -> c_int;
    fn PQgetvalue(res: *const PGresult, row: c_int, col: c_int) -> *const c_char;
    fn PQgetlength(res: *const PGresult, row: c_int, col: c_int) -> c_int;
    fn PQgetisnull(res: *const PGresult, row: c_int, col: c_int) -> c_int;
    fn PQclear(res: *mut PGresult);
    fn PQsendQuery(conn: *mut PGconn, command: *const c_char) -> c_int;
    fn PQgetCopyData(conn: *mut PGconn, buffer: *mut *mut c_char, is_async: c_int) -> c_int;
    fn PQputCopyData(conn: *mut PGconn, buffer: *const c_char, nbytes: c_int) -> c_int;
    fn PQfreemem(ptr: *mut c_void);
    fn PQconnectionUsedPassword(conn: *const PGconn) -> c_int;
    fn PQconninfoParse(conninfo: *const c_char, errmsg: *mut *mut c_char) -> *mut ConninfoOption;
    fn PQconninfoFree(options: *mut ConninfoOption);
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(p) }.to_string_lossy().trim_end().to_string()
    }
}

/// What went wrong talking to a peer: its SQLSTATE when the peer sent one.
#[derive(Debug, Clone)]
pub struct PeerError {
    pub sqlstate: Option<String>,
    pub message: String,
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn err(message: impl Into<String>) -> PeerError {
    PeerError { sqlstate: None, message: message.into() }
}

/// One query result, copied out of libpq (rows of optional byte strings).
pub struct Rows {
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
}

impl Rows {
    pub fn text(&self, row: usize, col: usize) -> Option<String> {
        self.rows.get(row)?.get(col)?.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

pub struct Conn {
    raw: *mut PGconn,
}

// The connection is only ever used from the backend's one thread.
unsafe impl Send for Conn {}

impl Drop for Conn {
    fn drop(&mut self) {
        unsafe { PQfinish(self.raw) }
    }
}

/// Polled while waiting, so the caller can honour cancel/terminate
/// requests: true means give up.
pub type Interrupt<'a> = &'a dyn Fn() -> bool;

impl Conn {
    /// Connect (blocking, bounded by `connect_timeout`: 5 s unless the
    /// conninfo sets it). `conninfo` in either form libpq takes (key=value
    /// or a `postgresql://` URI).
    pub fn connect(conninfo: &str) -> Result<Conn, PeerError> {
        Self::connect_with(conninfo, None)
    }

    /// The same as a replication connection (`replication=database`,
    /// whatever the conninfo says), for streaming from a slot.
    pub fn connect_replication(conninfo: &str) -> Result<Conn, PeerError> {
        Self::connect_with(conninfo, Some("database"))
    }

    fn connect_with(conninfo: &str, replication: Option<&str>) -> Result<Conn, PeerError> {
        // Settings as keywords around the conninfo, which libpq expands in
        // place (expand_dbname): a later keyword overrides what it says, an
        // earlier one is overridden by it. So the conninfo may set its own
        // connect_timeout, and never replication.
        let mut pairs: Vec<(&str, &str)> = vec![("connect_timeout", "5"), ("dbname", conninfo)];
        if let Some(r) = replication {
            pairs.push(("replication", r));
        }
        let owned: Vec<(CString, CString)> = pairs
            .iter()
            .map(|(k, v)| Ok((CString::new(*k).expect("a keyword"), CString::new(*v)?)))
            .collect::<Result<_, std::ffi::NulError>>()
            .map_err(|_| err("conninfo contains a NUL byte"))?;
        let mut keywords: Vec<*const c_char> = owned.iter().map(|(k, _)| k.as_ptr()).collect();
        let mut values: Vec<*const c_char> = owned.iter().map(|(_, v)| v.as_ptr()).collect();
        keywords.push(std::ptr::null());
        values.push(std::ptr::null());
        let raw = unsafe { PQconnectdbParams(keywords.as_ptr(), values.as_ptr(), 1) };
        if raw.is_null() {
            return Err(err("out of memory allocating a libpq connection"));
        }
        let mut conn = Conn { raw };
        if unsafe { PQstatus(raw) } != CONNECTION_OK {
            return Err(err(format!("could not connect to peer: {}", cstr(unsafe { PQerrorMessage(raw) }))));
        }
        unsafe { PQsetnonblocking(raw, 1) };
        // An empty search_path for the session, as PostgreSQL's own
        // walreceiver sets on its connections: a path from the peer's
        // database or role settings must not choose what converge's
        // functions there call (the ops they return are applied here with
        // that peer's trust). Every name converge sends is qualified.
        let interrupt = || {
            pgrx::check_for_interrupts!();
            false
        };
        conn.exec_simple("SELECT pg_catalog.set_config('search_path', '', false)", Duration::from_secs(30), &interrupt)
            .map_err(|e| PeerError { message: format!("could not set the peer session's search_path: {}", e.message), ..e })?;
        Ok(conn)
    }

    /// Whether the server asked for the password and got it.
    pub fn used_password(&self) -> bool {
        unsafe { PQconnectionUsedPassword(self.raw) != 0 }
    }

    pub fn socket(&self) -> c_int {
        unsafe { PQsocket(self.raw) }
    }

    /// Run one statement with text parameters; `binary` asks for binary
    /// results. Waits at most `timeout`, calling `interrupt` meanwhile.
    pub fn query(
        &mut self,
        sql: &str,
        params: &[&str],
        binary: bool,
        timeout: Duration,
        interrupt: Interrupt,
    ) -> Result<Rows, PeerError> {
        let sql = CString::new(sql).map_err(|_| err("query contains a NUL byte"))?;
        let owned: Vec<CString> =
            params.iter().map(|p| CString::new(*p)).collect::<Result<_, _>>().map_err(|_| err("NUL in parameter"))?;
        let ptrs: Vec<*const c_char> = owned.iter().map(|p| p.as_ptr()).collect();
        let sent = unsafe {
            PQsendQueryParams(
                self.raw,
                sql.as_ptr(),
                ptrs.len() as c_int,
                std::ptr::null(),
                ptrs.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                binary as c_int,
            )
        };
        if sent == 0 {
            return Err(err(format!("could not send query to peer: {}", cstr(unsafe { PQerrorMessage(self.raw) }))));
        }
        let deadline = Instant::now() + timeout;
        self.flush_all(deadline, interrupt)?;
        let mut out: Option<Result<Rows, PeerError>> = None;
        loop {
            self.wait_result(deadline, interrupt)?;
            let res = unsafe { PQgetResult(self.raw) };
            if res.is_null() {
                break;
            }
            let r = unsafe { Self::take(res) };
            unsafe { PQclear(res) };
            if out.is_none() || r.is_err() {
                out = Some(r);
            }
        }
        out.unwrap_or_else(|| Err(err("peer returned no result")))
    }

    fn lost(&self) -> PeerError {
        err(format!("lost connection to peer: {}", cstr(unsafe { PQerrorMessage(self.raw) })))
    }

    /// Send what libpq could not send at once.
    fn flush_all(&mut self, deadline: Instant, interrupt: Interrupt) -> Result<(), PeerError> {
        loop {
            match unsafe { PQflush(self.raw) } {
                0 => return Ok(()),
                f if f < 0 => return Err(self.lost()),
                _ => self.wait(true, deadline, interrupt)?,
            }
        }
    }

    /// Wait until libpq holds a whole result.
    fn wait_result(&mut self, deadline: Instant, interrupt: Interrupt) -> Result<(), PeerError> {
        while unsafe { PQisBusy(self.raw) } != 0 {
            self.wait(false, deadline, interrupt)?;
            if unsafe { PQconsumeInput(self.raw) } == 0 {
                return Err(self.lost());
            }
        }
        Ok(())
    }

    unsafe fn take(res: *mut PGresult) -> Result<Rows, PeerError> {
        match PQresultStatus(res) {
            PGRES_TUPLES_OK | PGRES_COMMAND_OK => {
                let (n, m) = (PQntuples(res), PQnfields(res));
                let mut rows = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let mut row = Vec::with_capacity(m as usize);
                    for j in 0..m {
                        if PQgetisnull(res, i, j) != 0 {
                            row.push(None);
                        } else {
                            let p = PQgetvalue(res, i, j) as *const u8;
                            let len = PQgetlength(res, i, j) as usize;
                            row.push(Some(std::slice::from_raw_parts(p, len).to_vec()));
                        }
                    }
                    rows.push(row);
                }
                Ok(Rows { rows })
            }
            _ => {
                let code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                Err(PeerError {
                    sqlstate: (!code.is_null()).then(|| cstr(code)),
                    message: format!("peer: {}", cstr(PQresultErrorMessage(res))),
                })
            }
        }
    }

    fn wait(&mut self, write: bool, deadline: Instant, interrupt: Interrupt) -> Result<(), PeerError> {
        loop {
            if interrupt() {
                return Err(err("interrupted"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(err("peer did not answer in time"));
            }
            let slice = (deadline - now).min(Duration::from_millis(100));
            match poll_fds(&[self.socket()], write, slice) {
                Ok(true) => return Ok(()),
                Ok(false) => continue,
                Err(e) => return Err(err(format!("poll failed: {e}"))),
            }
        }
    }

    /// Start streaming on a replication connection (`replication=database`):
    /// `START_REPLICATION ...` goes over the simple protocol and leaves the
    /// connection in COPY BOTH mode.
/// Run `sql` with the simple protocol (what a replication connection
    /// takes), bounded by `timeout` and `interrupt`, every result checked.
    fn exec_simple(&mut self, sql: &str, timeout: Duration, interrupt: Interrupt) -> Result<(), PeerError> {
        let c = CString::new(sql).map_err(|_| err("query contains a NUL byte"))?;
        if unsafe { PQsendQuery(self.raw, c.as_ptr()) } == 0 {
            return Err(err(format!("could not send to peer: {}", cstr(unsafe { PQerrorMessage(self.raw) }))));
        }
        let deadline = Instant::now() + timeout;
        self.flush_all(deadline, interrupt)?;
        let mut out = Ok(());
        loop {
            self.wait_result(deadline, interrupt)?;
            let res = unsafe { PQgetResult(self.raw) };
            if res.is_null() {
                return out;
            }
            if let Err(e) = unsafe { Self::take(res) } {
                out = Err(e);
            }
            unsafe { PQclear(res) };
        }
    }

    pub fn start_copy_both(&mut self, command: &str, timeout: Duration, interrupt: Interrupt) -> Result<(), PeerError> {
        let c = CString::new(command).map_err(|_| err("command contains a NUL byte"))?;
        if unsafe { PQsendQuery(self.raw, c.as_ptr()) } == 0 {
            return Err(err(format!("could not send to peer: {}", cstr(unsafe { PQerrorMessage(self.raw) }))));
        }
        let deadline = Instant::now() + timeout;
        self.flush_all(deadline, interrupt)?;
        self.wait_result(deadline, interrupt)?;
        let res = unsafe { PQgetResult(self.raw) };
        if res.is_null() {
            return Err(err("peer returned no result"));
        }
        let status = unsafe { PQresultStatus(res) };
        let out = if status == PGRES_COPY_BOTH { Ok(()) } else { unsafe { Self::take(res) }.map(|_| ()) };
        unsafe { PQclear(res) };
        match out {
            Ok(()) if status == PGRES_COPY_BOTH => Ok(()),
            Ok(()) => Err(err("peer did not start streaming")),
            Err(e) => Err(e),
        }
    }

    /// Read what arrived (non-blocking) and return the complete COPY
    /// messages; Err when the stream or the connection ended.
    pub fn read_copy(&mut self) -> Result<Vec<Vec<u8>>, PeerError> {
        if unsafe { PQconsumeInput(self.raw) } == 0 {
            return Err(self.lost());
        }
        let mut out = Vec::new();
        loop {
            let mut buf: *mut c_char = std::ptr::null_mut();
            let n = unsafe { PQgetCopyData(self.raw, &mut buf, 1) };
            if n > 0 {
                out.push(unsafe { std::slice::from_raw_parts(buf as *const u8, n as usize) }.to_vec());
                unsafe { PQfreemem(buf as *mut c_void) };
            } else if n == 0 {
                return Ok(out);
            } else {
                let msg = cstr(unsafe { PQerrorMessage(self.raw) });
                return Err(err(if msg.is_empty() { "peer ended the stream".to_string() } else { msg }));
            }
        }
    }

    /// Send one COPY message (a standby status update) and flush it.
    pub fn write_copy(&mut self, data: &[u8]) -> Result<(), PeerError> {
        if unsafe { PQputCopyData(self.raw, data.as_ptr() as *const c_char, data.len() as c_int) } != 1 {
            return Err(err(format!("could not send to peer: {}", cstr(unsafe { PQerrorMessage(self.raw) }))));
        }
        if unsafe { PQflush(self.raw) } < 0 {
            return Err(err(format!("could not send to peer: {}", cstr(unsafe { PQerrorMessage(self.raw) }))));
        }
        Ok(())
    }
}

/// poll() on sockets for readability (or writability); true if any is ready.
#[repr(C)]
struct ConninfoOption {
    keyword: *mut c_char,
    envvar: *mut c_char,
    compiled: *mut c_char,
    val: *mut c_char,
    label: *mut c_char,
    dispchar: *mut c_char,
    dispsize: c_int,
}

/// The values a conninfo string sets itself (keyword -> value), or None if
/// libpq cannot parse it.
pub fn conninfo_values(conninfo: &str) -> Option<std::collections::HashMap<String, String>> {
    let c = std::ffi::CString::new(conninfo).ok()?;
    let mut err: *mut c_char = std::ptr::null_mut();
    let opts = unsafe { PQconninfoParse(c.as_ptr(), &mut err) };
    if !err.is_null() {
        unsafe { PQfreemem(err as *mut c_void) };
    }
    if opts.is_null() {
        return None;
    }
    let mut out = std::collections::HashMap::new();
    let mut p = opts;
    unsafe {
        while !(*p).keyword.is_null() {
            if !(*p).val.is_null() {
                let k = std::ffi::CStr::from_ptr((*p).keyword).to_string_lossy().into_owned();
                out.insert(k, std::ffi::CStr::from_ptr((*p).val).to_string_lossy().into_owned());
            }
            p = p.add(1);
        }
        PQconninfoFree(opts);
    }
    Some(out)
}

pub fn poll_fds(fds: &[c_int], write: bool, timeout: Duration) -> std::io::Result<bool> {
    let events = if write { libc_pollout() } else { libc_pollin() };
    let mut p: Vec<PollFd> = fds.iter().filter(|f| **f >= 0).map(|&fd| PollFd { fd, events, revents: 0 }).collect();
    if p.is_empty() {
        std::thread::sleep(timeout);
        return Ok(false);
    }
    let r = unsafe { poll(p.as_mut_ptr(), p.len() as u64, timeout.as_millis() as c_int) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(r > 0)
}

#[repr(C)]
struct PollFd {
    fd: c_int,
    events: i16,
    revents: i16,
}

extern "C" {
    fn poll(fds: *mut PollFd, nfds: u64, timeout: c_int) -> c_int;
}

const fn libc_pollin() -> i16 {
    0x001
}
const fn libc_pollout() -> i16 {
    0x004
}
