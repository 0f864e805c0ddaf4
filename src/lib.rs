//! converge: CRDT column types for PostgreSQL.
//!
//! The algebra lives in `converge-core`; this crate is the SQL layer over it:
//! types, functions, operators, aggregates and the node identity.

use pgrx::prelude::*;

/// Run `$body` with the type alias `$T` bound to the converge-core type of
/// the converge SQL type named `$name` (a `&str`); `$other` for any other
/// name. One place that maps names to types for code that gets them at run
/// time (the apply path, the op trigger, delta validation).
macro_rules! for_crdt_type {
    ($name:expr, $T:ident => $body:expr, _ => $other:expr) => {{
        #[allow(unused_imports)]
        use converge_core::types::*;
        match $name {
            "gcounter" => { type $T = GCounter; $body }
            "pncounter" => { type $T = PnCounter; $body }
            "bcounter" => { type $T = BCounter; $body }
            "gset" => { type $T = GSet; $body }
            "orset" => { type $T = OrSet; $body }
            "lwwreg" => { type $T = LwwReg; $body }
            "mvreg" => { type $T = MvReg; $body }
            "lwwmap" => { type $T = LwwMap; $body }
            "ormap" => { type $T = OrMap; $body }
            "seqtext" => { type $T = SeqText; $body }
            _ => $other,
        }
    }};
}

mod actors;
mod allocation;
mod apply;
mod coordination;
mod commit_ops;
mod counter_cache;
mod direct;
mod ddl;
mod durable;
mod epochs;
mod handover;
mod errors;
mod jsonb;
mod local_ops;
mod locks;
mod maintenance;
mod node;
mod ops;
mod rebuild;
mod repair;
mod replication;
mod requests;
mod row_ops;
mod row_state;
mod rows;
mod security;
mod spi;
mod trigger;
mod types;

pgrx::pg_module_magic!();

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/ops.sql",
    name = "ops",
    requires = [
        "bootstrap",
        types::maps::lwwmap,
        ops::op_id_actor,
        ops::op_id_counter,
        ops::delta_error,
        ops::without_covers,
        ops::op_encode_fields,
        ops::op_decode_fields,
        apply::waiting::under_peer_origin_sql,
        apply::waiting::applying_trusted_sql,
        trigger::record_local_ops,
        trigger::forget_layout,
        trigger::replicate_table,
        trigger::applying,
        local_ops::last_op_counter,
        durable::flush_visible_sql,
        security::may_write,
        security::may_ask
    ]
);
extension_sql_file!(
    "../sql/replication.sql",
    name = "replication",
    requires = [
        "ops",
        replication::peers::add_peer,
        replication::peers::remove_peer,
        replication::peers::sync,
        replication::peers::wait_for_peers,
        replication::peers::pause_peer,
        replication::peers::resume_peer,
        replication::decoder::describe_change,
        replication::launcher::worker_problem_here
    ]
);
extension_sql_file!(
    "../sql/maintenance.sql",
    name = "maintenance",
    requires = [
        "replication",
        maintenance::merge_deltas,
        maintenance::compact_values,
        maintenance::stable_form,
        maintenance::base_form,
        maintenance::set_client_writes_on
    ]
);
extension_sql_file!("../sql/coordination.sql", name = "coordination", requires = ["maintenance", coordination::set_authority_on]);
extension_sql_file!(
    "../sql/actors.sql",
    name = "actors",
    requires = ["coordination", actors::register_actor, actors::revoke_actor, actors::op_signing_bytes_of, repair::repair]
);
extension_sql_file!("../sql/versions.sql", name = "versions", requires = ["actors", coordination::set_schema_version_on]);
extension_sql_file!("../sql/epochs.sql", name = "epochs", requires = ["versions", epochs::freeze_on, epochs::epoch_on]);
extension_sql_file!(
    "../sql/requests.sql",
    name = "requests",
    requires = ["epochs", requests::request_on, requests::decide::decide_pending, allocation::allocate_on, security::may_read]
);
extension_sql_file!("../sql/ddl.sql", name = "ddl", requires = ["requests"]);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    types::register_gucs();
    maintenance::register_gucs();
    node::register_gucs();
    trigger::register_guc();
    replication::launcher::register();
    counter_cache::init();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn one<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(sql: &str) -> T {
        Spi::get_one::<T>(sql).expect("query").expect("non-NULL result")
    }

    #[pg_test]
    fn dots_never_repeat_across_rows_or_statements() {
        Spi::run("SELECT converge.set_node('t1')").unwrap();
        let distinct: i64 = one(
            "SELECT count(DISTINCT converge.add(NULL::converge.orset, 'x')::text) FROM generate_series(1, 500)",
        );
        assert_eq!(distinct, 500);
        let a: String = one("SELECT converge.add(NULL::converge.orset, 'x')::text");
        let b: String = one("SELECT converge.add(NULL::converge.orset, 'x')::text");
        assert_ne!(a, b);
    }

    #[pg_test]
    fn lww_timestamps_strictly_increase_within_one_statement() {
        Spi::run("SELECT converge.set_node('t2')").unwrap();
        let ok: bool = one(
            "WITH w AS (SELECT i, converge.assign(NULL::converge.lwwreg, to_jsonb(i))::text::jsonb -> 'write' -> 'ts' AS ts
                          FROM generate_series(1, 2000) i),
                  k AS (SELECT i, ((ts->>0)::numeric * 4294967296 + (ts->>1)::numeric) AS t FROM w)
             SELECT bool_and(t > prev) FROM (SELECT t, lag(t) OVER (ORDER BY i) AS prev FROM k) z WHERE prev IS NOT NULL",
        );
        assert!(ok);
    }

    #[pg_test]
    fn merge_agg_in_parallel_equals_serial_fold() {
        Spi::run("SELECT converge.set_node('t3')").unwrap();
        Spi::run(
            "CREATE TABLE pv AS SELECT i % 7 AS g, converge.incr(NULL::converge.gcounter, i) AS c,
                    converge.add(NULL::converge.orset, (i % 50)::text) AS s
               FROM generate_series(1, 20000) i",
        )
        .unwrap();
        Spi::run("ANALYZE pv").unwrap();
        for setting in [
            "SET parallel_setup_cost = 0",
            "SET parallel_tuple_cost = 0",
            "SET min_parallel_table_scan_size = 0",
            "SET max_parallel_workers_per_gather = 2",
            "SET force_parallel_mode = on",
        ] {
            Spi::run(setting).unwrap();
        }
        let plan: String = Spi::connect(|c| {
            c.select("EXPLAIN SELECT converge.merge_agg(c) FROM pv", None, &[])
                .expect("explain")
                .map(|row| row.get::<String>(1).ok().flatten().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        });
        assert!(plan.contains("Partial Aggregate"), "expected a parallel plan, got:\n{plan}");
        let parallel: String = one("SELECT converge.merge_agg(c)::text FROM pv");
        let sets: i64 = one("SELECT converge.size(converge.merge_agg(s)) FROM pv");
        Spi::run("SET max_parallel_workers_per_gather = 0").unwrap();
        let serial: String = one("SELECT converge.merge_agg(c)::text FROM pv");
        assert_eq!(parallel, serial);
        assert_eq!(sets, 50);
        let value: i64 = one("SELECT converge.value(converge.merge_agg(c)) FROM pv");
        // Every row is a state of one node's count, so merge keeps the largest:
        // merge_agg joins replicas of a value, it does not sum separate counters.
        assert_eq!(value, 20000);
    }

    #[pg_test(error = "converge node identity is not set")]
    fn mutator_needs_node_identity() {
        Spi::run("SELECT converge.incr(NULL::converge.gcounter, 1)").unwrap();
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
