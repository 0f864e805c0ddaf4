//! Two identities (SPEC section 7). Statements on a user's table run as the
//! calling role, so its privileges, row security and the table's own
//! triggers apply as for any write of that role. Statements on converge's
//! internal tables (op_log, row_state, pending_ops, actor_frontier, ...) run as
//! the role that owns them, through `as_owner`, with a fixed search_path:
//! no role gets write access to them, and nothing a caller defines (a
//! function or operator earlier in its search_path, a trigger) runs with
//! the owner's rights. Inside `as_owner`, `as_caller` goes back to the
//! caller's identity (under the fixed path: only a table name the caller
//! gives is resolved under its own, `in_callers_path`).

use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::ffi::CString;

/// The search_path of internal statements.
const FIXED_PATH: &std::ffi::CStr = c"pg_catalog, converge, pg_temp";

struct Frame {
    user: pg_sys::Oid,
    sec: i32,
    path: CString,
}

thread_local! {
    static OWNER: RefCell<Option<pg_sys::Oid>> = const { RefCell::new(None) };
    /// The callers `as_owner` switched away from, innermost last.
    static CALLERS: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
    /// The search_paths of the callers `as_caller` acts for, innermost last.
    static CALLER_PATHS: RefCell<Vec<CString>> = const { RefCell::new(Vec::new()) };
}

/// The owner of converge's internal tables (who ran CREATE EXTENSION).
fn owner() -> pg_sys::Oid {
    if let Some(o) = OWNER.with(|c| *c.borrow()) {
        return o;
    }
    let o = crate::spi::read_one::<pg_sys::Oid>("SELECT relowner FROM pg_catalog.pg_class WHERE oid = 'converge.op_log'::pg_catalog.regclass", &[])
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, "converge.op_log is missing"));
    OWNER.with(|c| *c.borrow_mut() = Some(o));
    o
}

/// The role on whose behalf converge acts: the caller of the outermost
/// `as_owner`, or the current role outside one.
pub fn caller() -> pg_sys::Oid {
    CALLERS.with(|c| c.borrow().first().map(|f| f.user)).unwrap_or_else(|| unsafe { pg_sys::GetUserId() })
}

fn current_path() -> CString {
    let p = unsafe { pg_sys::GetConfigOption(c"search_path".as_ptr(), false, false) };
    if p.is_null() {
        return CString::default();
    }
    unsafe { std::ffi::CStr::from_ptr(p) }.to_owned()
}

/// The background worker's whole session runs with converge's fixed
/// search_path (as PostgreSQL's own logical replication apply worker runs
/// with an empty one): a path from the database's or the role's settings,
/// which the database owner may set, must never choose what the worker,
/// a superuser that also applies peers' ops with their trust, calls.
pub fn fix_session_path() {
    unsafe {
        pg_sys::SetConfigOption(c"search_path".as_ptr(), FIXED_PATH.as_ptr(), pg_sys::GucContext::PGC_SUSET, pg_sys::GucSource::PGC_S_OVERRIDE)
    };
}

/// The identity acting now: (user, security context).
fn current() -> (pg_sys::Oid, i32) {
    let (mut user, mut sec) = (pg_sys::InvalidOid, 0i32);
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut sec) };
    (user, sec)
}

/// The security context of a switch to another role for converge's step:
/// a local user-id change in a security-restricted operation (as
/// PostgreSQL runs index expressions and maintenance as a table's owner).
const RESTRICTED: i32 = (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32;

/// Act as `to` (user, security context; None: as now) under `path` until
/// the guard drops, which puts back the identity of now and the path.
fn enter(to: Option<(pg_sys::Oid, i32)>, path: &std::ffi::CStr, popped: bool, undo_settings: bool) -> Restore {
    let (user, sec) = current();
    if let Some((u, s)) = to {
        unsafe { pg_sys::SetUserIdAndSecContext(u, s) };
    }
    let nest = set_path(path);
    Restore { user, sec, nest, popped, undo_settings }
}

fn set_path(path: &std::ffi::CStr) -> i32 {
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    crate::spi::set_guc(c"search_path", path, pg_sys::GucContext::PGC_USERSET, pg_sys::GucAction::GUC_ACTION_SAVE);
    nest
}

/// Restores identity (always) and search_path (on success; an error's
/// (sub)transaction abort resets the GUC nest level itself). Around
/// users' code (`undo_settings`) every setting made inside is undone, a
/// plain `SET` too, as PostgreSQL does around an index build: a trigger's
/// `SET search_path` must not outlive converge's write (in the worker it
/// would choose what the superuser worker calls next).
struct Restore {
    user: pg_sys::Oid,
    sec: i32,
    nest: i32,
    popped: bool,
    undo_settings: bool,
}

impl Drop for Restore {
    fn drop(&mut self) {
        unsafe {
            if !std::thread::panicking() {
                pg_sys::AtEOXact_GUC(!self.undo_settings, self.nest);
            }
            pg_sys::SetUserIdAndSecContext(self.user, self.sec);
        }
        if self.popped {
            CALLERS.with(|c| c.borrow_mut().pop());
        }
    }
}

/// Run `f` as the owner of converge's internal tables, with a fixed
/// search_path and as a security-restricted operation.
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = owner();
    let (user, sec) = current();
    CALLERS.with(|c| c.borrow_mut().push(Frame { user, sec, path: current_path() }));
    let _restore = enter(Some((owner, sec | RESTRICTED)), FIXED_PATH, true, false);
    f()
}

/// Run `f` as the owner of converge's tables without touching the
/// search_path: only for direct C calls that resolve no names (nextval of
/// converge's own sequence by oid), where `as_owner`'s GUC work would be
/// pure cost on every mutator call.
pub fn as_owner_id<R>(f: impl FnOnce() -> R) -> R {
    let owner = owner();
    let (mut user, mut sec) = (pg_sys::InvalidOid, 0i32);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
        pg_sys::SetUserIdAndSecContext(owner, sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    struct Back(pg_sys::Oid, i32);
    impl Drop for Back {
        fn drop(&mut self) {
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let _back = Back(user, sec);
    f()
}

/// Run `f` as the caller (inside `as_owner`: as the caller again), with the
/// apply's trust off, under converge's fixed search_path: the caller's
/// privileges apply to what converge reads for it (a table's layout and
/// authorities), but no function or operator of the caller's chooses what
/// that is. Only the name of the table an op names is resolved under the
/// caller's own path (`in_callers_path`), as the caller would resolve it.
pub fn as_caller<R>(f: impl FnOnce() -> R) -> R {
    // The outermost caller: a nested as_owner (an apply inside an apply)
    // still acts for the role that started it.
    let (user, sec, path) = outermost();
    let _restore = enter(Some((user, sec)), FIXED_PATH, false, false);
    CALLER_PATHS.with(|p| p.borrow_mut().push(path));
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            CALLER_PATHS.with(|p| p.borrow_mut().pop());
        }
    }
    let _pop = Pop;
    crate::apply::as_client(f)
}

/// The caller of the outermost `as_owner` (outside one, who acts now),
/// with its search_path.
fn outermost() -> (pg_sys::Oid, i32, CString) {
    CALLERS.with(|c| c.borrow().first().map(|f| (f.user, f.sec, f.path.clone()))).unwrap_or_else(|| {
        let (user, sec) = current();
        (user, sec, current_path())
    })
}

/// The search_path of the caller `as_caller` acts for (outside one, the
/// current path).
pub fn callers_path() -> CString {
    CALLER_PATHS.with(|p| p.borrow().last().cloned()).unwrap_or_else(current_path)
}

/// Inside `as_caller`: `f` under the caller's own search_path. Only for a
/// statement that resolves a table name the caller gave and calls nothing
/// by an unqualified name (`pg_catalog.to_regclass($1)`).
pub fn in_callers_path<R>(f: impl FnOnce() -> R) -> R {
    with_path(&callers_path(), f)
}

/// `f` under converge's fixed search_path, as whoever acts now: for what
/// converge reads with SQL in a user's session (a table's layout, the name
/// its ops carry), which no function, operator or temporary table of the
/// user's (a temporary `pg_namespace` comes first on a path that does not
/// list `pg_temp`) may change.
pub fn in_fixed_path<R>(f: impl FnOnce() -> R) -> R {
    with_path(FIXED_PATH, f)
}

fn with_path<R>(path: &std::ffi::CStr, f: impl FnOnce() -> R) -> R {
    let _restore = enter(None, path, false, false);
    f()
}

/// Run a statement on the user's table `rel` as the role converge acts for
/// (with its search_path). When that role is a superuser (the background
/// worker, an administrator's `sync`), run it as the table's owner in a
/// security-restricted operation instead: the table's triggers, defaults
/// and expressions are its owner's code and never get superuser rights
/// (what PostgreSQL 16 does for logical replication apply).
pub fn as_writer<R>(rel: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let (user, sec, path) = outermost();
    let (role, sec) = if unsafe { pg_sys::superuser_arg(user) } {
        let owner = relowner(rel).unwrap_or(user);
        (owner, if owner == user { sec } else { sec | RESTRICTED })
    } else {
        (user, sec)
    };
    let _restore = enter(Some((role, sec)), &path, false, true);
    // The table's triggers and defaults are its owner's code: a converge
    // call they make acts for the role they run as, and is never trusted
    // as a peer's (the apply around them may be).
    users_code(f)
}

/// Run `f`, code that is not converge's, with converge's caller frames
/// set aside (inside, converge acts for the role `f` runs as) and the
/// apply's trust off.
fn users_code<R>(f: impl FnOnce() -> R) -> R {
    struct Callers(Vec<Frame>);
    impl Drop for Callers {
        fn drop(&mut self) {
            CALLERS.with(|c| *c.borrow_mut() = std::mem::take(&mut self.0));
        }
    }
    let _callers = Callers(CALLERS.with(|c| std::mem::take(&mut *c.borrow_mut())));
    struct Paths(Vec<CString>);
    impl Drop for Paths {
        fn drop(&mut self) {
            CALLER_PATHS.with(|p| *p.borrow_mut() = std::mem::take(&mut self.0));
        }
    }
    let _paths = Paths(CALLER_PATHS.with(|p| std::mem::take(&mut *p.borrow_mut())));
    crate::apply::as_client(f)
}

/// Run `f` as the owner of table `rel`, in a security-restricted
/// operation with converge's fixed search_path, whoever calls: a decide
/// function and the decision's write (requests.rs) are that owner's code,
/// acting for converge, never with the caller's (or the worker's) rights.
pub fn as_table_owner<R>(rel: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let owner = relowner(rel).unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, "the table is gone"));
    let _restore = enter(Some((owner, current().1 | RESTRICTED)), FIXED_PATH, false, true);
    // Inside, converge acts for the owner (caller() is the owner), not for
    // whoever called converge around it.
    users_code(f)
}

/// Run `f`, converge's own statement on the user's table `rel` that makes
/// a row agree with its merged state (a row inserted again taking the
/// values its authorities decided, trigger.rs), as `as_table_owner` does
/// (the owner, security-restricted, converge's fixed search_path): a
/// committing role that may insert but not update that column, or not see
/// the row under row security, cannot stop it. The table's ordinary
/// triggers are off (`session_replication_role = replica`, as logical
/// replication applies): no trigger changes the row here in a way no op
/// carries.
pub fn as_merger<R>(rel: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    as_table_owner(rel, || {
        // Saved at as_table_owner's GUC nest level: its Restore puts it back.
        crate::spi::set_guc(c"session_replication_role", c"replica", pg_sys::GucContext::PGC_SUSET, pg_sys::GucAction::GUC_ACTION_SAVE);
        f()
    })
}

/// The owner of table `rel`, from the relcache (no statement: the worker
/// asks once per applied batch).
fn relowner(rel: pg_sys::Oid) -> Option<pg_sys::Oid> {
    unsafe {
        let r = pg_sys::RelationIdGetRelation(rel);
        if r.is_null() {
            return None;
        }
        let owner = (*(*r).rd_rel).relowner;
        pg_sys::RelationClose(r);
        Some(owner)
    }
}

fn table_name(rel: pg_sys::Oid) -> String {
    let n = unsafe { pg_sys::get_rel_name(rel) };
    if n.is_null() {
        return format!("{}", rel.to_u32());
    }
    unsafe { std::ffi::CStr::from_ptr(n) }.to_string_lossy().into_owned()
}

/// Whether `role` holds every privilege in `modes` on table `rel`.
pub fn has_rights(role: pg_sys::Oid, rel: pg_sys::Oid, modes: &[pg_sys::AclMode]) -> bool {
    modes.iter().all(|m| unsafe { pg_sys::pg_class_aclcheck(rel, role, *m) } == pg_sys::AclResult::ACLCHECK_OK)
}

/// 42501 naming the table unless the caller holds every privilege in `modes`.
pub fn require_rights(rel: pg_sys::Oid, modes: &[(pg_sys::AclMode, &str)]) {
    let role = caller();
    for (m, name) in modes {
        if !has_rights(role, rel, &[*m]) {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("permission denied for table {}: converge needs {name} on it to apply ops there", table_name(rel)),
            );
        }
    }
}

/// A client's row ops need every row of `rel` in sight: under row
/// security a row hidden from the caller is not deleted here, yet its
/// delete would be applied on every other node (as the table's owner).
pub fn require_rows_visible(rel: pg_sys::Oid) {
    if rows_hidden_from(caller(), rel) {
        crate::errors::raise_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("row security of table {} applies to this role: converge applies no row ops of it for this role", table_name(rel)),
            "A row this role cannot see would be left here and changed on every other node. Apply them as a role row security does not restrict.",
        );
    }
}

/// Whether `role` holds what `require_peer_rights` asks for on `rel`.
fn holds_peer_rights(role: pg_sys::Oid, rel: pg_sys::Oid, deletes: bool) -> bool {
    let modes: &[pg_sys::AclMode] = if deletes { &[SELECT, INSERT, UPDATE, DELETE] } else { &[SELECT, INSERT, UPDATE] };
    let su = unsafe { pg_sys::superuser_arg(role) };
    su || has_rights(role, rel, modes) && !rows_hidden_from(role, rel)
}

/// What a role that is not superuser (an operator granted `add_peer` or
/// `sync`) needs on `rel` to apply a peer's ops there: every right the
/// writes use (their upserts read the row: SELECT; DELETE with row ops,
/// `deletes`), and every row in sight. Without them the write of a
/// peer's op fails as the op's error: it is logged rejected, the peer's
/// stream moves past it, and this node keeps the row as it was. So the
/// whole call fails (42501) instead. A superuser (the worker) needs none.
pub fn require_peer_rights(rel: pg_sys::Oid, deletes: bool) {
    let role = caller();
    if unsafe { pg_sys::superuser_arg(role) } {
        return;
    }
    require_rights(rel, &[(SELECT, "SELECT"), (INSERT, "INSERT"), (UPDATE, "UPDATE")]);
    if deletes {
        require_rights(rel, &[(DELETE, "DELETE (row ops delete rows)")]);
    }
    if rows_hidden_from(role, rel) {
        crate::errors::raise_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("row security of table {} applies to this role: converge applies no peer's ops of it for this role", table_name(rel)),
            "A row this role cannot see would be left as it is here. Run it as a role row security does not restrict.",
        );
    }
}

pub const INSERT: pg_sys::AclMode = pg_sys::ACL_INSERT as pg_sys::AclMode;
pub const UPDATE: pg_sys::AclMode = pg_sys::ACL_UPDATE as pg_sys::AclMode;
pub const DELETE: pg_sys::AclMode = pg_sys::ACL_DELETE as pg_sys::AclMode;
pub const SELECT: pg_sys::AclMode = pg_sys::ACL_SELECT as pg_sys::AclMode;

/// The role converge acts for (the caller of the outermost internal step).
#[pg_extern(stable, parallel_safe)]
fn acting_role() -> pg_sys::Oid {
    caller()
}

/// Whether the acting role may read ops of `table` (a name as in an op):
/// it may SELECT that table (converge.grant_peer grants that on every
/// replicated table), and the table's row security does not apply to it
/// (peer roles aside). Row security of converge.op_log, pending_ops and
/// requests uses it; it never raises, and a name it cannot resolve
/// exactly is not readable.
#[pg_extern(stable, parallel_safe)]
fn may_read(table: Option<&str>) -> bool {
    let Some(t) = table else { return true };
    // Repairs carry no row data (op_ids and a reason): every reader of the
    // log, peers above all, must see them (the registry is public anyway).
    if t == crate::repair::REPAIR || t == crate::actors::REGISTRY {
        return true;
    }
    // A freeze carries a table's name and a row's key, no values (a
    // handover a table's and a column's name, and nodes'): every
    // reader of the log sees it, as converge.frozen (docs/security.md).
    // A void (apply/voids.rs) carries an op_id and nothing else.
    if t == crate::epochs::FREEZE || t == crate::allocation::ALLOCATION || t == crate::handover::HANDOVER || t == crate::apply::VOID {
        return true;
    }
    // Requests and decisions carry values of a row: their rows of
    // converge.requests are shown by the right on that table instead. Peer
    // roles read them (they read every replicated table's ops).
    if t == crate::requests::REQUEST || t == crate::requests::DECISION {
        let role = caller();
        return unsafe { pg_sys::superuser_arg(role) } || is_peer_reader_now(role);
    }
    let Some(rel) = lookup(t) else { return false };
    let role = caller();
    has_rights(role, rel, &[SELECT]) && (!rows_hidden_from(role, rel) || is_peer_reader_now(role))
}

thread_local! {
    /// `is_peer_reader` of one role in one transaction: row security asks
    /// it for each op row read.
    static PEER_READER: std::cell::Cell<Option<(pg_sys::LocalTransactionId, pg_sys::Oid, bool)>> =
        const { std::cell::Cell::new(None) };
}

/// `is_peer_reader`, asked once per role and transaction.
fn is_peer_reader_now(role: pg_sys::Oid) -> bool {
    let lxid = unsafe { (*pg_sys::MyProc).lxid };
    match PEER_READER.get() {
        Some((x, r, answer)) if x == lxid && r == role => answer,
        _ => {
            let answer = is_peer_reader(role);
            PEER_READER.set(Some((lxid, role, answer)));
            answer
        }
    }
}

/// Whether row security of `rel` applies to `role` (it may hide rows): an
/// op names its row's key and carries its values, so such a role reads
/// none of the table's ops. Peer roles read every op regardless.
fn rows_hidden_from(role: pg_sys::Oid, rel: pg_sys::Oid) -> bool {
    unsafe { pg_sys::check_enable_rls(rel, role, true) == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 }
}

/// Whether `role` is (a member of) a role given converge.grant_peer.
fn is_peer_reader(role: pg_sys::Oid) -> bool {
    as_owner(|| {
        crate::spi::read_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM converge.peer_reader p WHERE pg_catalog.pg_has_role($1, p.role, 'MEMBER'))",
            &[role.into()],
        )
    })
    .unwrap_or(false)
}

/// Whether the acting role may apply ops of `column` to `table` (INSERT
/// and UPDATE, and DELETE for row ops), as `apply` requires.
#[pg_extern(stable, parallel_safe)]
pub(crate) fn may_write(table: Option<&str>, column: Option<&str>) -> bool {
    let Some(t) = table else { return true };
    let mut modes = vec![INSERT, UPDATE];
    if column == Some("") {
        modes.push(DELETE);
    }
    match lookup(t) {
        // (Row ops also need every row in sight: require_rows_visible. A
        // peer's ops, applied for a role that is not superuser, need what
        // require_peer_rights asks, or they would fail its whole call.)
        Some(rel) => {
            has_rights(caller(), rel, &modes)
                && !(column == Some("") && rows_hidden_from(caller(), rel))
                && (!crate::apply::applying_trusted() || holds_peer_rights(caller(), rel, column == Some("")))
        }
        None => false,
    }
}

/// Whether the acting role may make a request of `column` of `table`, as
/// `request` requires: UPDATE on the column (requests/mod.rs), if the
/// column is there.
#[pg_extern(stable, parallel_safe)]
pub(crate) fn may_ask(table: Option<&str>, column: Option<&str>) -> bool {
    match (table.and_then(lookup), column) {
        (Some(rel), Some(column)) => may_update_column(rel, column),
        _ => false,
    }
}

/// Whether the acting role has UPDATE on `column` of `rel` (true when the
/// column is not there: what needs it fails on its own).
pub(crate) fn may_update_column(rel: pg_sys::Oid, column: &str) -> bool {
    crate::spi::read_one::<bool>(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = $2 AND a.attname = $3 AND NOT a.attisdropped)
                     THEN pg_catalog.has_column_privilege($1, $2, $3, 'UPDATE') ELSE true END",
        &[caller().into(), rel.into(), column.into()],
    ) == Some(true)
}

/// `schema.table` (each part plain or double-quoted, as `format('%I.%I')`
/// writes it) split into its two names; None for anything else.
fn parse_qualified(s: &str) -> Option<(String, String)> {
    let mut parts = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        let mut id = String::new();
        if it.peek() == Some(&'"') {
            it.next();
            loop {
                match it.next()? {
                    '"' if it.peek() == Some(&'"') => {
                        it.next();
                        id.push('"');
                    }
                    '"' => break,
                    c => id.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c == '.' {
                    break;
                }
                id.push(c.to_ascii_lowercase());
                it.next();
            }
        }
        if id.is_empty() {
            return None;
        }
        parts.push(id);
        match it.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return None,
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) => Some((schema, table)),
        Err(_) => None,
    }
}

/// The table an op names: its qualified name looked up in the catalog
/// directly (no search_path, so a temporary table cannot stand in for it,
/// and no SQL, so no operator of the caller's can answer for another
/// table; no error for a bad name or a schema the reader may not use).
pub fn lookup(name: &str) -> Option<pg_sys::Oid> {
    let (schema, table) = parse_qualified(name)?;
    let (schema, table) = (CString::new(schema).ok()?, CString::new(table).ok()?);
    unsafe {
        let nsp = pg_sys::get_namespace_oid(schema.as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        let rel = pg_sys::get_relname_relid(table.as_ptr(), nsp);
        (rel != pg_sys::InvalidOid).then_some(rel)
    }
}
