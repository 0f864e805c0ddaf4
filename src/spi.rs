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
