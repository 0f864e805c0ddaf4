//! The commands that need a database to themselves, on a database where
//! converge's background worker runs: `DROP DATABASE` (with and without
//! `FORCE`), `ALTER DATABASE ... RENAME` and `CREATE DATABASE ... TEMPLATE`.
//! Each failed after 5 s ("being accessed by other users") while the worker
//! was connected, and after a drop that terminated it, the worker was
//! started again every 2 s for ever, failing to connect.
//!
//! Needs the extension installed (`cargo pgrx install`); `bash .ci/test`
//! runs it. Ports come from CONVERGE_CLUSTER_PORT (default 5710).

use converge_cluster_tests::*;
use std::time::Duration;

fn base_port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710) + 160
}

/// Create database `db` with converge in it and wait for its worker.
fn with_worker(n: &Node, db: &str, extra: &str) {
    n.client().batch_execute(&format!("CREATE DATABASE {db} {extra}")).unwrap();
    n.client_as("postgres", db).batch_execute("CREATE EXTENSION converge").unwrap();
    let sql = format!("SELECT (count(*) > 0)::text FROM pg_stat_activity WHERE backend_type = 'converge worker' AND datname = '{db}'");
    wait_for(n, &sql, "true", &format!("{db}'s worker started"));
}

/// How many times a worker failed to connect to a database that is gone.
fn failed_connects(n: &Node) -> usize {
    let log = std::fs::read_to_string(n.dir.join("server.log")).unwrap_or_default();
    log.lines().filter(|l| l.contains("FATAL:  database") && l.contains("does not exist")).count()
}

#[test]
fn a_database_with_converge_can_be_dropped_renamed_and_copied() {
    let root = Scratch::new("databases");
    let node = Node::new(&root.0, "madrid", base_port(), true);

    // A copy of it as a template, then a rename: each waits for the worker
    // to leave, and the worker comes back.
    with_worker(&node, "depot", "");
    node.client().batch_execute("CREATE DATABASE depot_copy TEMPLATE depot").unwrap();
    node.client().batch_execute("ALTER DATABASE depot RENAME TO warehouse").unwrap();
    let sql = "SELECT (count(*) > 0)::text FROM pg_stat_activity WHERE backend_type = 'converge worker' AND datname = 'warehouse'";
    wait_for(&node, sql, "true", "the worker back in the renamed database");
    let sql = "SELECT (count(*) > 0)::text FROM pg_stat_activity WHERE backend_type = 'converge worker' AND datname = 'depot_copy'";
    wait_for(&node, sql, "true", "a worker in the copy");

    // Dropped, without and with FORCE: no worker is left, and none is
    // started again (a worker that cannot connect would show in the log
    // every 2 s).
    node.client().batch_execute("DROP DATABASE warehouse").unwrap();
    node.client().batch_execute("DROP DATABASE depot_copy WITH (FORCE)").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let after_drops = failed_connects(&node);
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(failed_connects(&node), after_drops, "a worker of a dropped database is started again and again");
    assert!(after_drops <= 2, "{after_drops} failed connections to the dropped databases");
    let left = node
        .client()
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'converge worker'", &[])
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(left, 0, "workers left after both databases were dropped");

    // A database in a tablespace of its own still gets its worker (the
    // worker looks for its database's directory there too).
    let space = Scratch::new("databases-space");
    node.client().batch_execute(&format!("CREATE TABLESPACE depot_space LOCATION '{}'", space.0.display())).unwrap();
    with_worker(&node, "remote_depot", "TABLESPACE depot_space");
    node.client().batch_execute("DROP DATABASE remote_depot").unwrap();
    node.client().batch_execute("DROP TABLESPACE depot_space").unwrap();
}
