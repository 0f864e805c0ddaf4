//! converge: CRDT column types for PostgreSQL.
//!
//! The algebra lives in `converge-core`; this crate is the SQL layer over it:
//! types, functions, operators, aggregates and the node identity.

use pgrx::prelude::*;

mod errors;
mod node;
mod types;

pgrx::pg_module_magic!();

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    types::register_gucs();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    mod unit;
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
