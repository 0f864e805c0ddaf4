//! One place that turns algebra errors into PostgreSQL errors with the
//! SQLSTATE users can match on.

use converge_core::{Error, ErrorKind};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub fn sqlstate(kind: ErrorKind) -> PgSqlErrorCode {
    match kind {
        ErrorKind::InvalidText => PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
        ErrorKind::InvalidBinary => PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
        ErrorKind::InvalidParameter => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::OutOfRange => PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
        ErrorKind::InsufficientRights => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        ErrorKind::WrongType => PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
        ErrorKind::TooLarge => PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
    }
}

/// Raise `msg` as an ERROR with `code`. Never returns.
pub fn raise(code: PgSqlErrorCode, msg: impl Into<String>) -> ! {
    ErrorReport::new(code, msg.into(), "converge").report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raise an ERROR with a hint. Never returns.
pub fn raise_hint(code: PgSqlErrorCode, msg: impl Into<String>, hint: impl Into<String>) -> ! {
    ErrorReport::new(code, msg.into(), "converge").set_hint(hint.into()).report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raise an ERROR with a detail and a hint. Never returns.
pub fn raise_explained(code: PgSqlErrorCode, msg: impl Into<String>, detail: &str, hint: &str) -> ! {
    ErrorReport::new(code, msg.into(), "converge").set_detail(detail).set_hint(hint).report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Report `msg` as a WARNING (SQLSTATE 01000) with a hint, and go on.
pub fn warn_hint(msg: impl Into<String>, hint: impl Into<String>) {
    ErrorReport::new(PgSqlErrorCode::ERRCODE_WARNING, msg.into(), "converge").set_hint(hint.into()).report(PgLogLevel::WARNING);
}

pub fn raise_core(e: Error) -> ! {
    raise(sqlstate(e.kind), e.message)
}

/// Unwrap an algebra result or raise it as a PostgreSQL error.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, Error> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise_core(e),
        }
    }
}

/// Arguments other than the CRDT state may not be NULL (22004).
pub fn required<T>(v: Option<T>, what: &str) -> T {
    match v {
        Some(v) => v,
        None => raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{what} must not be NULL")),
    }
}

/// Run `f`; a PostgreSQL error raised inside it (say by a statement run
/// through SPI) is raised again as itself (code, message, detail, hint),
/// without the Rust backtrace pgrx would attach on its way through.
pub fn plain_errors<R>(f: impl FnOnce() -> R) -> R {
    use pgrx::pg_sys::panic::CaughtError;
    pgrx::PgTryBuilder::new(std::panic::AssertUnwindSafe(f))
        .catch_others(|e| match e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
                let mut n = ErrorReport::new(r.sql_error_code(), r.message().to_string(), "converge");
                if let Some(d) = r.detail().filter(|d| !d.trim().is_empty()) {
                    n = n.set_detail(d.to_string());
                }
                if let Some(h) = r.hint() {
                    n = n.set_hint(h.to_string());
                }
                n.report(PgLogLevel::ERROR);
                unreachable!("ERROR does not return")
            }
            other => other.rethrow(),
        })
        .execute()
}
