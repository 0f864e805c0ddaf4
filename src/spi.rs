//! Read-only SPI helpers. pgrx's `Spi::get_one` runs its query as a
//! possibly-writing statement and so assigns the transaction an xid; a read
//! must not (a logical slot being created elsewhere waits for every
//! transaction that has one, and xids are not free).

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// The first column of the first row of a read-only query (None if no row
/// or NULL). Errors in the query are raised.
pub fn read_one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    Spi::connect(|c| {
        let t = c.select(sql, Some(1), args)?;
        if t.is_empty() {
            Ok(None)
        } else {
            t.first().get_one::<T>()
        }
    })
        .unwrap_or_else(|e| crate::errors::raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{sql}: {e}")))
}

/// Like `read_one` for a bigint, but with a fresh snapshot each call (so a
/// polling loop sees other sessions' commits) and still without an xid.
pub fn read_fresh_i64(sql: &str) -> Option<i64> {
    let c = std::ffi::CString::new(sql).ok()?;
    unsafe {
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            return None;
        }
        // read_only = false: SPI takes a new snapshot for the statement.
        let rc = pg_sys::SPI_execute(c.as_ptr(), false, 1);
        let mut out = None;
        if rc == pg_sys::SPI_OK_SELECT as i32 && pg_sys::SPI_processed == 1 {
            let tt = pg_sys::SPI_tuptable;
            let mut isnull = false;
            let d = pg_sys::SPI_getbinval(*(*tt).vals, (*tt).tupdesc, 1, &mut isnull);
            out = i64::from_datum(d, isnull);
        }
        pg_sys::SPI_finish();
        out
    }
}

thread_local! {
    /// Plans of statements run often (by SQL text and argument types),
    /// prepared once per backend.
    static PLANS: std::cell::RefCell<std::collections::HashMap<(String, Vec<u32>), pgrx::spi::OwnedPreparedStatement>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Run `sql` through a plan prepared once per backend (parse and analysis
/// once; PostgreSQL's plan cache then picks custom or generic plans, and
/// replans after invalidations and search_path changes), and read its
/// result with `read`. For statements of the apply path that run per
/// batch: planning them every time cost more than running them.
pub fn prepared<R>(
    sql: &str,
    args: &[DatumWithOid],
    read: impl FnOnce(pgrx::spi::SpiTupleTable) -> Result<R, pgrx::spi::SpiError>,
) -> Result<R, pgrx::spi::SpiError> {
    let key = (sql.to_string(), args.iter().map(|a| a.oid().to_u32()).collect::<Vec<u32>>());
    // Taken out while it runs: a statement may reach this function again
    // (a user's trigger fired by an upsert), and then prepares its own.
    let cached = PLANS.with(|p| p.borrow_mut().remove(&key));
    Spi::connect_mut(|c| {
        let plan = match cached {
            Some(plan) => plan,
            None => {
                let types: Vec<pgrx::PgOid> = args.iter().map(|a| pgrx::PgOid::from(a.oid())).collect();
                c.prepare_mut(sql, &types)?.keep()
            }
        };
        let out = c.update(&plan, None, args).and_then(read);
        PLANS.with(|p| p.borrow_mut().insert(key, plan));
        out
    })
}

thread_local! {
    static KEPT: std::cell::RefCell<std::collections::HashMap<usize, pg_sys::SPIPlanPtr>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Run `sql` through a plan kept per backend and prepared with cursor
/// options `opts`: CURSOR_OPT_GENERIC_PLAN for a statement whose best plan
/// does not depend on its arguments but whose custom plans PostgreSQL would
/// prefer (arrays of unknown length) and redo on every call;
/// CURSOR_OPT_CUSTOM_PLAN for one whose cached generic plan could go bad
/// (made while a table was empty). `read` copies each row out before SPI
/// frees it. `types` and `args` are the parameters.
pub fn planned_rows<T>(
    sql: &'static std::ffi::CStr,
    opts: u32,
    types: &[pg_sys::Oid],
    args: Vec<Option<pg_sys::Datum>>,
    read: impl Fn(pg_sys::HeapTuple, pg_sys::TupleDesc) -> T,
) -> Vec<T> {
    let fail = |what: &str| -> ! { crate::errors::raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{what}: {}", sql.to_string_lossy())) };
    unsafe {
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            fail("SPI_connect failed");
        }
        let key = sql.as_ptr() as usize;
        let mut plan = KEPT.with(|g| g.borrow().get(&key).copied()).unwrap_or(std::ptr::null_mut());
        if plan.is_null() {
            let mut t = types.to_vec();
            plan = pg_sys::SPI_prepare_cursor(sql.as_ptr(), t.len() as i32, t.as_mut_ptr(), opts as i32);
            if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                fail("could not prepare");
            }
            KEPT.with(|g| g.borrow_mut().insert(key, plan));
        }
        let nulls: Vec<std::ffi::c_char> = args.iter().map(|a| if a.is_some() { b' ' } else { b'n' } as std::ffi::c_char).collect();
        let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.unwrap_or(pg_sys::Datum::from(0usize))).collect();
        let rc = pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0);
        if rc < 0 {
            fail("execution failed");
        }
        let tt = pg_sys::SPI_tuptable;
        let n = pg_sys::SPI_processed as usize;
        let out = (0..n).map(|i| read(*(*tt).vals.add(i), (*tt).tupdesc)).collect();
        pg_sys::SPI_finish();
        out
    }
}
