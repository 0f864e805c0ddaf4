//! converge-client: an offline-first replica for a converge server.
//!
//! A client (a phone, an edge box) keeps its own CRDT state and a durable
//! outbox of ops in a directory. It mutates locally with the same algebra as
//! the server (`converge-core`), pushes its outbox with
//! `converge.apply_batch`, and pulls what it lacks with
//! `converge.changes_since(frontier)`. Every step is crash-safe:
//!
//! - mutate: the op is appended (fsync) to the outbox before the state is
//!   saved; on open, outbox ops are merged into the state again (merge is
//!   idempotent), so a kill between the two loses nothing.
//! - push: ops leave the outbox only after the server answered; a kill in
//!   between sends them again, and the server reports `duplicate`.
//! - pull: state and frontier are saved together (atomic rename); a kill
//!   before that pulls the same ops again, and merging them twice is harmless.

pub mod any;
mod chain;
mod freezes;
mod send;
mod snapshot;
mod voids;

pub use any::AnyCrdt;
pub use send::{send_ops, Outcome};
pub use voids::VOID;
use converge_core::{Dot, Hlc, Json, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum ClientError {
    Io(std::io::Error),
    Core(converge_core::Error),
    Db(postgres::Error),
    Format(String),
    /// Another open `Client` (this process's or another's) holds the
    /// directory: two would hand out the same op counters.
    InUse(PathBuf),
    /// A simulated crash (test hook): the process "died" at this point.
    Crashed(CrashPoint),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "io: {e}"),
            ClientError::Core(e) => write!(f, "{e}"),
            ClientError::Db(e) => write!(f, "database: {e}"),
            ClientError::Format(e) => write!(f, "bad client file: {e}"),
            ClientError::InUse(d) => write!(f, "{} is open in another Client (this process or another)", d.display()),
            ClientError::Crashed(p) => write!(f, "simulated crash at {p:?}"),
        }
    }
}
impl std::error::Error for ClientError {}
impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}
impl From<converge_core::Error> for ClientError {
    fn from(e: converge_core::Error) -> Self {
        ClientError::Core(e)
    }
}
impl From<postgres::Error> for ClientError {
    fn from(e: postgres::Error) -> Self {
        ClientError::Db(e)
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Where a test can make the client "die" (the caller then drops it and
/// opens the directory again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    AfterOutboxAppend,
    AfterPushBeforeAck,
    AfterPullBeforeSave,
}

/// An op: converge-core's envelope, the same the server decodes.
pub use converge_core::Op;

/// The `target_table` of request ops (`Client::request`).
pub const REQUEST: &str = "converge.request";



/// A cell: one CRDT column of one row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CellId {
    pub table: String,
    /// Canonical JSON of the primary key.
    pub key: String,
    pub column: String,
}

impl CellId {
    pub fn new(table: &str, key: &serde_json::Value, column: &str) -> CellId {
        CellId { table: table.into(), key: Json::from_value(key).as_str().to_string(), column: column.into() }
    }

    /// The cell an op targets.
    pub fn of(op: &Op) -> CellId {
        CellId { table: op.target_table.clone(), key: op.target_key.as_str().to_string(), column: op.target_column.clone() }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Saved {
    actor: String,
    next_counter: u64,
    /// "table.column" -> SQL type name.
    columns: BTreeMap<String, String>,
    /// Cell -> full-state text.
    cells: Vec<(CellId, String)>,
    /// Highest contiguous counter received per actor.
    frontier: BTreeMap<String, u64>,
    /// Counters received above the contiguous frontier.
    seen_above: BTreeMap<String, BTreeSet<u64>>,
    /// Ops the server rejected (kept for inspection, never resent).
    rejected: Vec<(Op, String)>,
    /// Largest LWW timestamp this client issued (so its clock never goes back).
    clock: Option<Timestamp>,
    /// Each frozen row's epoch (its newest freeze on the server at the last
    /// pull), under "table\0key" with the table both qualified and bare:
    /// ops made here carry it.
    #[serde(default)]
    epochs: BTreeMap<String, i64>,
    /// "table.column" of the columns declared with a `removes_only`
    /// authority.
    #[serde(default)]
    removes_only: BTreeSet<String>,
    /// This client's ops that a server refused (rejected, or quarantined
    /// under an older schema version), each with the last op before it
    /// that was not refused (0: none): ops made after one are chained again
    /// after that op.
    #[serde(default)]
    dead: BTreeMap<u64, u64>,
    /// Counters of `dead` whose void is not settled yet (a server took it,
    /// or refused it other than as `nothing_to_void`, settles it;
    /// voids.rs). None in a state saved before voids.
    #[serde(default)]
    voids: Option<BTreeSet<u64>>,
    /// Of `voids`, the nodes that answered they refused no op under that
    /// counter (`nothing_to_void`): it goes to the other nodes only.
    #[serde(default)]
    void_declined: BTreeMap<u64, BTreeSet<String>>,
    /// This client's ops that left the outbox while a server held them
    /// (buffered, or quarantined `new_epoch`/`new_schema`): merged again
    /// over a snapshot's rows, which may not have them yet, until a
    /// snapshot's frontier shows them applied or a server refused them
    /// (snapshot.rs): the client does not pull its own ops, so without
    /// them their effect would leave its view. Only shrunk at a rejoin:
    /// it grows with the ops servers held, which are few.
    #[serde(default)]
    held: Vec<Op>,
}

/// The table's name without its schema, as a client may declare it:
/// `public.incident` → `incident`, `public."Incident"` → `Incident`.
fn bare_name(qualified: &str) -> Option<String> {
    let mut quoted = false;
    let dot = qualified.char_indices().find(|(_, c)| {
        if *c == '"' {
            quoted = !quoted;
        }
        *c == '.' && !quoted
    })?;
    let t = &qualified[dot.0 + 1..];
    Some(match t.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => t.to_string(),
    })
}

/// The key of `Saved::epochs`.
fn row_name(table: &str, key: &serde_json::Value) -> String {
    format!("{table}\u{0}{}", converge_core::Json::from_value(key).as_str())
}

/// Context a mutation gets: who is mutating, a fresh dot, and a clock.
pub struct MutCtx<'a> {
    pub actor: &'a str,
    pub dot: Dot,
    clock: &'a mut Hlc,
    issued: &'a mut Option<Timestamp>,
}

impl MutCtx<'_> {
    /// A timestamp newer than `floor` and than anything issued before.
    pub fn timestamp(&mut self, floor: Option<&Timestamp>) -> Timestamp {
        if let Some(f) = floor {
            self.clock.observe(f);
        }
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let ts = self.clock.tick(wall, self.actor);
        *self.issued = Some(ts.clone());
        ts
    }
}

pub struct Client {
    dir: PathBuf,
    saved: Saved,
    cells: BTreeMap<CellId, AnyCrdt>,
    outbox: Vec<Op>,
    clock: Hlc,
    /// Test hook: fail with `Crashed` at this point, leaving files as a
    /// killed process would.
    pub crash: Option<CrashPoint>,
    /// The device's key and the schema of its tables, when its ops are signed.
    signer: Option<(converge_core::signing::SigningKey, String)>,
    /// An exclusive lock on the directory's `lock` file while this Client
    /// is open (None once a simulated crash "killed" it).
    lock: Option<File>,
}

/// Lock `dir` for one open Client: a second one (a second process, or the
/// same process opening it again) would take the same op counters, and
/// two different ops under one id lose one of them everywhere. The lock
/// goes with the Client (or the process).
fn lock_dir(dir: &Path) -> Result<File> {
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(ClientError::InUse(dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(ClientError::Io(e)),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Client {
    /// Open (or create) the client stored in `dir` for `actor`.
    pub fn open(dir: impl AsRef<Path>, actor: &str) -> Result<Client> {
        converge_core::validate_actor(actor)?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let lock = lock_dir(&dir)?;
        let state_path = dir.join("state.json");
        let saved: Saved = if state_path.exists() {
            serde_json::from_slice(&fs::read(&state_path)?).map_err(|e| ClientError::Format(e.to_string()))?
        } else {
            Saved { actor: actor.to_string(), next_counter: 1, ..Default::default() }
        };
        if saved.actor != actor {
            return Err(ClientError::Format(format!("{} belongs to actor \"{}\"", dir.display(), saved.actor)));
        }
        let (outbox, torn) = read_outbox(&dir.join("outbox.jsonl"))?;
        let mut c = Client { dir, saved, cells: BTreeMap::new(), outbox, clock: Hlc::new(), crash: None, signer: None, lock: Some(lock) };
        if torn {
            // The next op is appended after the last whole line, not glued
            // to the torn one (which the next open would drop with it).
            c.rewrite_outbox()?;
        }
        if let Some(ts) = c.saved.clock.clone() {
            c.clock.observe(&ts);
        }
        for (id, text) in std::mem::take(&mut c.saved.cells) {
            let ty = c.column_type(&id.table, &id.column)?;
            let v = AnyCrdt::empty(&ty)?.parse_like(&text)?;
            c.cells.insert(id, v);
        }
        // Recovery: ops in the outbox may be newer than the saved state
        // (not those a freeze pulled since keeps out: freezes.rs).
        for op in c.outbox.clone() {
            c.saved.next_counter = c.saved.next_counter.max(op.counter() + 1);
            if !c.kept_out(&op) {
                c.merge_delta(&op)?;
            }
            c.mark_seen(&op.actor, op.counter());
        }
        Ok(c)
    }

    /// Sign every op pushed from now on with the device's ed25519 key (its
    /// public key registered on the server with `converge.register_actor`).
    /// A table declared without a schema is signed and sent as
    /// `schema.table`: nodes check the op as they log and forward it, under
    /// its qualified name. `schema` is the schema's name as it is, unquoted
    /// (it is quoted as the server quotes it). The key is kept in memory only, never in `dir`.
    pub fn sign_with(&mut self, key: converge_core::signing::SigningKey, schema: &str) {
        self.signer = Some((key, schema.to_string()));
    }

    /// The op as it is sent: signed, under its qualified table name, when
    /// this client signs. The name is written as the server writes it
    /// (`format('%I.%I')`), which the signature covers: a part that is not
    /// all lower-case letters, digits and underscores is double-quoted. (A
    /// table named by an SQL keyword, such as `order`, must be declared as
    /// the server writes it: `public."order"`.)
    fn outgoing(&self, mut op: Op) -> Op {
        if let Some((key, schema)) = &self.signer {
            if !op.target_table.contains('.') {
                op.target_table = format!("{}.{}", quote_ident(schema), quote_ident(&op.target_table));
            }
            op.sign(key);
        }
        op
    }

    pub fn actor(&self) -> &str {
        &self.saved.actor
    }

    /// Say which converge type a column has (the client only syncs these).
    pub fn declare(&mut self, table: &str, column: &str, type_name: &str) -> Result<()> {
        AnyCrdt::empty(type_name)?;
        self.saved.columns.insert(format!("{table}.{column}"), type_name.to_string());
        self.save()
    }

    /// Say that a declared column has a `removes_only` authority
    /// (`converge.set_authority(..., removes_only => true)`). Its ormap ops
    /// then say what they supersede at each key, so that the servers tell
    /// this client's increments and assigns from removals (SPEC 5); an
    /// ormap op of another column leaves that out and stays in the format
    /// servers and clients before 0.2.0 read.
    pub fn declare_removes_only(&mut self, table: &str, column: &str) -> Result<()> {
        self.column_type(table, column)?;
        self.saved.removes_only.insert(format!("{table}.{column}"));
        self.save()
    }

    fn column_type(&self, table: &str, column: &str) -> Result<String> {
        self.saved
            .columns
            .get(&format!("{table}.{column}"))
            .cloned()
            .ok_or_else(|| ClientError::Format(format!("column {table}.{column} was not declared")))
    }

    pub fn value(&self, table: &str, key: &serde_json::Value, column: &str) -> Option<&AnyCrdt> {
        self.cells.get(&CellId::new(table, key, column))
    }

    pub fn cells(&self) -> &BTreeMap<CellId, AnyCrdt> {
        &self.cells
    }

    pub fn outbox(&self) -> &[Op] {
        &self.outbox
    }

    pub fn frontier(&self) -> &BTreeMap<String, u64> {
        &self.saved.frontier
    }

    pub fn rejected(&self) -> &[(Op, String)] {
        &self.saved.rejected
    }

    fn merge_delta(&mut self, op: &Op) -> Result<()> {
        let ty = self.column_type(&op.target_table, &op.target_column)?;
        let id = CellId::of(op);
        let cell = match self.cells.get_mut(&id) {
            Some(c) => c,
            None => self.cells.entry(id).or_insert(AnyCrdt::empty(&ty)?),
        };
        cell.merge_bytes(&op.delta)?;
        Ok(())
    }

    fn mark_seen(&mut self, actor: &str, counter: u64) {
        let f = self.saved.frontier.entry(actor.to_string()).or_insert(0);
        if counter <= *f {
            return;
        }
        let above = self.saved.seen_above.entry(actor.to_string()).or_default();
        above.insert(counter);
        while above.remove(&(*f + 1)) {
            *f += 1;
        }
        if above.is_empty() {
            self.saved.seen_above.remove(actor);
        }
    }

    /// Every op of `actor` up to `counter` is seen (a snapshot reflects them).
    fn seen_through(&mut self, actor: &str, counter: u64) {
        let f = self.saved.frontier.entry(actor.to_string()).or_insert(0);
        *f = (*f).max(counter);
        let mut next = *f;
        if let Some(above) = self.saved.seen_above.get_mut(actor) {
            above.retain(|c| *c > next);
            while above.remove(&(next + 1)) {
                next += 1;
            }
            if above.is_empty() {
                self.saved.seen_above.remove(actor);
            }
        }
        self.saved.frontier.insert(actor.to_string(), next);
    }

    /// The test hook's crash at `p`: as a killed process, this Client
    /// holds the directory no more.
    fn crashed(&mut self, p: CrashPoint) -> ClientError {
        self.lock = None;
        ClientError::Crashed(p)
    }

    fn save(&mut self) -> Result<()> {
        self.saved.cells = self.cells.iter().map(|(k, v)| (k.clone(), v.to_text())).collect();
        let bytes = serde_json::to_vec(&self.saved).map_err(|e| ClientError::Format(e.to_string()))?;
        self.saved.cells.clear();
        write_atomic(&self.dir.join("state.json"), &bytes)
    }

    fn rewrite_outbox(&self) -> Result<()> {
        let mut buf = Vec::new();
        for op in &self.outbox {
            serde_json::to_writer(&mut buf, op).map_err(|e| ClientError::Format(e.to_string()))?;
            buf.push(b'\n');
        }
        write_atomic(&self.dir.join("outbox.jsonl"), &buf)
    }

    /// Change one cell offline. `f` gets the current value (empty if none)
    /// and a context, mutates the value and returns the delta. The op is in
    /// the durable outbox when this returns.
    pub fn mutate(
        &mut self,
        table: &str,
        key: serde_json::Value,
        column: &str,
        f: impl FnOnce(&mut AnyCrdt, &mut MutCtx) -> converge_core::Result<AnyCrdt>,
    ) -> Result<Op> {
        let ty = self.column_type(table, column)?;
        let id = CellId::new(table, &key, column);
        let counter = self.saved.next_counter;
        let actor = self.saved.actor.clone();
        let mut value = self.cells.get(&id).cloned().unwrap_or(AnyCrdt::empty(&ty)?);
        let mut issued = None;
        let delta = {
            let mut ctx = MutCtx { actor: &actor, dot: Dot::new(actor.clone(), counter), clock: &mut self.clock, issued: &mut issued };
            f(&mut value, &mut ctx)?
        };
        // Each op follows this client's previous one (that was not refused).
        let deps = self.chain_deps();
        let mut delta = delta.encode();
        if !self.saved.removes_only.contains(&format!("{table}.{column}")) {
            delta = converge_core::without_covers(delta);
        }
        let mut op = Op::new(&actor, counter, table, &key, column, deps, delta);
        op.epoch = self.epoch(table, &key);
        self.append_outbox(&op)?;
        self.cells.insert(id, value);
        if issued.is_some() {
            self.saved.clock = issued;
        }
        self.save()?;
        Ok(op)
    }

    /// Put `op` (this client's next) in the durable outbox and count it.
    fn append_outbox(&mut self, op: &Op) -> Result<()> {
        let mut line = serde_json::to_vec(op).map_err(|e| ClientError::Format(e.to_string()))?;
        line.push(b'\n');
        {
            let mut f = OpenOptions::new().create(true).append(true).open(self.dir.join("outbox.jsonl"))?;
            f.write_all(&line)?;
            f.sync_all()?;
        }
        if self.crash == Some(CrashPoint::AfterOutboxAppend) {
            return Err(self.crashed(CrashPoint::AfterOutboxAppend));
        }
        self.outbox.push(op.clone());
        let counter = op.counter();
        self.saved.next_counter = counter + 1;
        let actor = self.saved.actor.clone();
        self.mark_seen(&actor, counter);
        Ok(())
    }

    /// Ask the authority of `column` to change it on one row, offline
    /// (SPEC section 5, what `converge.request` does on a server): a
    /// request op in the durable outbox, sent with the next push. `table`
    /// is schema-qualified as the server names it (`public.incident`) and
    /// `key` has exactly its primary key columns. The request's id is the
    /// op's id; its outcome shows in the server's `converge.requests`
    /// once the authority decided. Requests with one `idempotency_key` are
    /// decided once, wherever they were made.
    pub fn request(
        &mut self,
        table: &str,
        key: serde_json::Value,
        column: &str,
        value: serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<Op> {
        let counter = self.saved.next_counter;
        let actor = self.saved.actor.clone();
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
        let delta = serde_json::json!({ "value": value, "idempotency_key": idempotency_key, "requested_at": at });
        let deps = self.chain_deps();
        let target = serde_json::json!({ "table": table, "key": key });
        let delta = serde_json::to_vec(&delta).map_err(|e| ClientError::Format(e.to_string()))?;
        let op = Op::new(&actor, counter, REQUEST, &target, column, deps, delta);
        self.append_outbox(&op)?;
        self.save()?;
        Ok(op)
    }

    /// Push the whole outbox in order.
    pub fn push(&mut self, db: &mut postgres::Client) -> Result<Vec<Outcome>> {
        self.push_with(db, |ops| ops)
    }

    fn changes_since(&self, db: &mut postgres::Client) -> Result<Vec<postgres::Row>> {
        let frontier = serde_json::to_string(&self.saved.frontier).map_err(|e| ClientError::Format(e.to_string()))?;
        Ok(db.query("SELECT converge.op_encode(o) FROM converge.changes_since($1::text::jsonb) o", &[&frontier])?)
    }

    /// Pull what this client lacks and merge it, from the server's log, or
    /// from its tables' snapshots when it compacted the part of the log
    /// this client's cursor points into. Returns the number of ops pulled
    /// from the log.
    pub fn pull(&mut self, db: &mut postgres::Client) -> Result<usize> {
        // Read before the ops: an epoch edits will carry never claims more
        // than the ops pulled show.
        let risen = self.pull_epochs(db)?;
        let rows = match self.changes_since(db) {
            // The log before this client's cursor was compacted there: the
            // tables' rows instead, then what came after them.
            Err(ClientError::Db(e)) if e.code() == Some(&postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) => {
                self.rejoin_from_snapshots(db)?;
                self.changes_since(db)?
            }
            other => other?,
        };
        let n = rows.len();
        for r in rows {
            let mut op = Op::decode(r.get::<_, &[u8]>(0))?;
            // The server logs ops under the qualified table name
            // (schema.table); a client may have declared the bare name.
            let declared = |t: &str| self.saved.columns.contains_key(&format!("{t}.{}", op.target_column));
            if !declared(&op.target_table) {
                if let Some(bare) = bare_name(&op.target_table) {
                    if declared(&bare) {
                        op.target_table = bare;
                    }
                }
            }
            if self.saved.columns.contains_key(&format!("{}.{}", op.target_table, op.target_column)) {
                self.merge_delta(&op)?;
            }

            self.mark_seen(&op.actor, op.counter());
        }
        self.take_frozen_rows(db, &risen)?;
        if self.crash == Some(CrashPoint::AfterPullBeforeSave) {
            return Err(self.crashed(CrashPoint::AfterPullBeforeSave));
        }
        self.save()?;
        Ok(n)
    }
}

/// The ops of the outbox file at `path`, and whether something unreadable
/// was dropped: a torn last line (a write cut short: killed, or the disk
/// full; it has no newline and was never acknowledged), or a whole line
/// that does not parse (one an older release glued to a torn line), whose
/// neighbours are kept. Read as bytes: a tear may split a character.
fn read_outbox(path: &Path) -> Result<(Vec<Op>, bool)> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(e.into()),
    };
    let mut ops = Vec::new();
    let mut dropped = false;
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else { return Ok((ops, true)) };
        match serde_json::from_slice::<Op>(&rest[..end]) {
            Ok(op) => ops.push(op),
            Err(_) => dropped = true,
        }
        rest = &rest[end + 1..];
    }
    Ok((ops, dropped))
}

/// An identifier as PostgreSQL's `quote_ident` writes it, keywords aside:
/// double-quoted unless it is all lower-case letters, digits and
/// underscores, not starting with a digit.
fn quote_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bare_names_drop_the_schema_and_the_quotes() {
        assert_eq!(super::bare_name("public.incident").as_deref(), Some("incident"));
        assert_eq!(super::bare_name("public.\"Incident\"").as_deref(), Some("Incident"));
        assert_eq!(super::bare_name("\"a.b\".\"c.d\"").as_deref(), Some("c.d"));
        assert_eq!(super::bare_name("s.\"say \"\"hi\"\"\"").as_deref(), Some("say \"hi\""));
        assert_eq!(super::bare_name("incident"), None);
    }

    #[test]
    fn a_directory_is_open_in_one_client_at_a_time() {
        let dir = std::env::temp_dir().join(format!("converge-client-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = super::Client::open(&dir, "tab9").unwrap();
        let second = super::Client::open(&dir, "tab9");
        assert!(matches!(second, Err(super::ClientError::InUse(_))), "a second Client of one directory is refused");
        drop(first);
        super::Client::open(&dir, "tab9").expect("open again once the first is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_are_quoted_as_the_server_writes_them() {
        assert_eq!(super::quote_ident("ward_2"), "ward_2");
        assert_eq!(super::quote_ident("Ward Notes"), "\"Ward Notes\"");
        assert_eq!(super::quote_ident("2nd"), "\"2nd\"");
        assert_eq!(super::quote_ident("say\"hi"), "\"say\"\"hi\"");
    }
}
