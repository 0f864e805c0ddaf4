//! Read-only SPI helpers (and `set_guc`, which needs no statement).
//! pgrx's `Spi::get_one` runs its query as a possibly-writing statement
//! and so assigns the transaction an xid; a read must not (a logical slot
//! being created elsewhere waits for every transaction that has one, and
//! xids are not free).

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

/// The first column of `sql`'s first row as text, read with the latest
/// snapshot (other sessions' commits up to now, also in a REPEATABLE READ
/// transaction, and this one's own changes). `args`: $1, $2, ... as
/// non-NULL values of their types. A statement that fails to run raises
/// (nothing reads as "no row" then).
pub fn read_latest_text(sql: &str, args: &[(pg_sys::Oid, pg_sys::Datum)]) -> Option<String> {
    let fail = || crate::errors::raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("converge could not run: {sql}"));
    let c = std::ffi::CString::new(sql).unwrap_or_else(|_| fail());
    let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.0).collect();
    let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.1).collect();
    let nulls = vec![b' ' as std::ffi::c_char; args.len()];
    unsafe {
        pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            pg_sys::PopActiveSnapshot();
            fail();
        }
        // read_only = true: SPI runs it under the active snapshot.
        let rc = pg_sys::SPI_execute_with_args(
            c.as_ptr(),
            args.len() as i32,
            types.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_ptr(),
            true,
            1,
        );
        let mut out = None;
        if rc == pg_sys::SPI_OK_SELECT as i32 && pg_sys::SPI_processed == 1 {
            let tt = pg_sys::SPI_tuptable;
            let v = pg_sys::SPI_getvalue(*(*tt).vals, (*tt).tupdesc, 1);
            if !v.is_null() {
                out = Some(std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned());
            }
        }
        pg_sys::SPI_finish();
        pg_sys::PopActiveSnapshot();
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            fail();
        }
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

/// Set GUC `name` to `value` without a statement, at `context`'s right
/// (PGC_SUSET: converge's own setting, whoever calls) and for `action`'s
/// span (GUC_ACTION_LOCAL: the transaction; GUC_ACTION_SAVE: the current
/// GUC nest level).
pub fn set_guc(name: &std::ffi::CStr, value: &std::ffi::CStr, context: pgrx::pg_sys::GucContext::Type, action: pgrx::pg_sys::GucAction::Type) {
    unsafe {
        pgrx::pg_sys::set_config_option(name.as_ptr(), value.as_ptr(), context, pgrx::pg_sys::GucSource::PGC_S_SESSION, action, true, 0, false);
    }
}
