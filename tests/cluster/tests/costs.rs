//! A guard on the cost of the paths every write takes, counted, not timed:
//! rows written to converge's tables and WAL bytes per replicated update
//! and per applied op, on a real server with converge preloaded. A later
//! change that quietly doubles the work fails here, on any machine.
//!
//! The WAL bounds are the bytes measured when the fast paths landed
//! (printed by the test) with a margin for version-to-version drift;
//! raise one only with a note of why the extra bytes are worth it.

use converge_cluster_tests::*;

fn port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710) + 40
}

/// Rows written (inserted, updated, deleted) to converge's tables so far,
/// as this backend's statistics see them after a flush.
fn converge_rows(c: &mut postgres::Client) -> i64 {
    c.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
    c.batch_execute("SELECT 1").unwrap();
    c.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
    c.query_one(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::int8 FROM pg_stat_user_tables WHERE schemaname = 'converge'",
        &[],
    )
    .unwrap()
    .get(0)
}

fn lsn(c: &mut postgres::Client) -> i64 {
    c.query_one("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8", &[]).unwrap().get(0)
}

fn op_rows(c: &mut postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM converge.op_log", &[]).unwrap().get(0)
}

/// Per statement (each its own transaction) of `n` runs of `sql` with $1 =
/// n+1..2n, after a warm-up with 1..n: (op_log rows, rows written to
/// converge's tables, WAL bytes).
fn per_statement(c: &mut postgres::Client, sql: &str, n: i32) -> (f64, f64, f64) {
    // Warm up: first touches after a checkpoint log full pages.
    for i in 1..=n {
        c.execute(sql, &[&i]).unwrap();
    }
    let (ops0, rows0, wal0) = (op_rows(c), converge_rows(c), lsn(c));
    for i in n + 1..=2 * n {
        c.execute(sql, &[&i]).unwrap();
    }
    let (ops1, wal1) = (op_rows(c), lsn(c));
    let rows1 = converge_rows(c);
    let n = n as f64;
    ((ops1 - ops0) as f64 / n, (rows1 - rows0) as f64 / n, (wal1 - wal0) as f64 / n)
}

#[test]
fn work_per_replicated_update_and_per_applied_op_stays_put() {
    let scratch = Scratch::new("costs");
    let node = Node::new(&scratch.0, "madrid", port(), true);
    let mut c = node.client();
    // No autovacuum or autoanalyze writing WAL inside a measured window.
    for setting in ["checkpoint_timeout = '1h'", "max_wal_size = '10GB'", "autovacuum = off"] {
        c.execute(&format!("ALTER SYSTEM SET {setting}"), &[]).unwrap();
    }
    c.batch_execute(
        "SELECT pg_reload_conf();
         CREATE EXTENSION converge; SELECT converge.set_node('madrid');
         CREATE TABLE plain (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note text);
         CREATE TABLE repl (id int PRIMARY KEY, n converge.gcounter, tags converge.orset, note text);
         INSERT INTO plain (id) SELECT generate_series(1, 200);
         INSERT INTO repl (id) SELECT generate_series(1, 200);
         SELECT converge.replicate('repl');",
    )
    .unwrap();
    let n = 200;
    let (_, _, plain_wal) = per_statement(&mut c, "UPDATE plain SET n = n + 1 WHERE id = 1 + $1 % 200", n);
    let (ops, rows, incr_wal) = per_statement(&mut c, "UPDATE repl SET n = converge.incr(n, 1) WHERE id = 1 + $1 % 200", n);
    println!("incr on a replicated table: {ops} op rows, {rows} converge rows, {incr_wal:.0} WAL bytes (plain update {plain_wal:.0})");
    assert_eq!(ops, 1.0, "one op row per CRDT update");
    assert_eq!(rows, 1.0, "the op row is the only converge row an update writes");
    assert!(incr_wal <= 650.0, "WAL per replicated incr grew to {incr_wal:.0} bytes");

    let (ops, rows, add_wal) = per_statement(&mut c, "UPDATE repl SET tags = converge.add(tags, 'x' || $1) WHERE id = 1 + $1 % 200", n);
    println!("add on a replicated table: {ops} op rows, {rows} converge rows, {add_wal:.0} WAL bytes");
    assert_eq!((ops, rows), (1.0, 1.0));
    assert!(add_wal <= 750.0, "WAL per replicated add grew to {add_wal:.0} bytes");

    let (_, _, plain_note) = per_statement(&mut c, "UPDATE plain SET note = 'v' || $1 WHERE id = 1 + $1 % 200", n);
    let (ops, rows, note_wal) = per_statement(&mut c, "UPDATE repl SET note = 'v' || $1 WHERE id = 1 + $1 % 200", n);
    println!("text column of a replicated table: {ops} op rows, {rows} converge rows, {note_wal:.0} WAL bytes (plain {plain_note:.0})");
    assert_eq!(ops, 1.0, "one row op per changed row");
    assert_eq!(rows, 2.0, "the row op and the row's last-writer-wins clock");
    assert!(note_wal <= 1050.0, "WAL per row op grew to {note_wal:.0} bytes");

    // Applying 1 000 ops of another node in one batch.
    c.batch_execute(
        "CREATE TABLE batch AS SELECT array_agg(ROW('dublin:' || i, 'dublin', 'public.repl', jsonb_build_object('id', 1 + i % 200),
                'n', 1, 0, '{}'::text[], format('{\"counts\":{\"dublin\":%s}}', i)::converge.gcounter::bytea, NULL)::converge.op
                ORDER BY i) AS ops FROM generate_series(1, 1000) i",
    )
    .unwrap();
    let (ops0, rows0, wal0) = (op_rows(&mut c), converge_rows(&mut c), lsn(&mut c));
    let applied: i64 = c
        .query_one("SELECT count(*) FROM batch, converge.apply_batch(batch.ops, 'dublin') a WHERE a.outcome = 'applied'", &[])
        .unwrap()
        .get(0);
    let (ops1, wal1) = (op_rows(&mut c), lsn(&mut c));
    let rows1 = converge_rows(&mut c);
    let (ops, rows, wal) = ((ops1 - ops0) as f64 / 1000.0, (rows1 - rows0) as f64 / 1000.0, (wal1 - wal0) as f64 / 1000.0);
    println!("apply_batch of 1 000 ops: {applied} applied; per op {ops} op rows, {rows} converge rows, {wal:.0} WAL bytes");
    assert_eq!(applied, 1000);
    assert_eq!(ops, 1.0, "one op row per applied op");
    assert!(rows <= 1.01, "apply writes the op row and the actor's frontier once per batch, got {rows} rows per op");
    // 433 with one heap record per op row; 386 since they go in a page at
    // a time. The bound is under the first, so that path going back fails.
    assert!(wal <= 420.0, "WAL per applied op grew to {wal:.0} bytes");
}

/// This node's op counters stay gapless and unique, and frontier() agrees,
/// through every way a transaction that took counters can end: commit,
/// rollback, a rolled-back savepoint, PREPARE then ROLLBACK PREPARED or
/// COMMIT PREPARED, and two sessions writing at once (converge preloaded,
/// so the shared-memory counter is the one under test).
#[test]
fn op_counters_stay_gapless_through_rollbacks_savepoints_and_prepared_transactions() {
    let scratch = Scratch::new("counters");
    let node = Node::new(&scratch.0, "madrid", port() + 1, true);
    let mut c = node.client();
    c.execute("ALTER SYSTEM SET max_prepared_transactions = 4", &[]).unwrap();
    node.stop_immediate();
    node.start();
    let mut c = node.client();
    c.batch_execute(
        "CREATE EXTENSION converge; SELECT converge.set_node('madrid');
         CREATE TABLE t (id int PRIMARY KEY, n converge.gcounter, note text);
         INSERT INTO t (id) SELECT generate_series(1, 50);
         SELECT converge.replicate('t');",
    )
    .unwrap();
    let check = |c: &mut postgres::Client, what: &str| {
        let row = c
            .query_one(
                "SELECT count(*), coalesce(max(counter), 0), count(DISTINCT counter),
                        coalesce((converge.frontier() ->> 'madrid')::int8, 0)
                   FROM converge.op_log WHERE actor = 'madrid'",
                &[],
            )
            .unwrap();
        let (n, max, distinct, frontier): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!((n, distinct, frontier), (max, max, max), "after {what}: ops {n}, max counter {max}, frontier {frontier}");
    };
    c.batch_execute("UPDATE t SET n = converge.incr(n, 1) WHERE id = 1").unwrap();
    check(&mut c, "a commit");
    c.batch_execute("BEGIN; UPDATE t SET n = converge.incr(n, 1) WHERE id = 2; SET CONSTRAINTS ALL IMMEDIATE; ROLLBACK")
        .unwrap();
    c.batch_execute("UPDATE t SET note = 'after rollback' WHERE id = 2").unwrap();
    check(&mut c, "a rollback after counters were taken");
    c.batch_execute(
        "BEGIN; SAVEPOINT s; UPDATE t SET n = converge.incr(n, 1) WHERE id = 3; SET CONSTRAINTS ALL IMMEDIATE;
         ROLLBACK TO s; UPDATE t SET n = converge.incr(n, 1) WHERE id = 4; COMMIT",
    )
    .unwrap();
    check(&mut c, "a rolled-back savepoint");
    // An op recorded in a subtransaction waits for the commit with it: kept
    // when the savepoint is released, dropped when its parent rolls back.
    c.batch_execute(
        "BEGIN; SAVEPOINT a; UPDATE t SET n = converge.incr(n, 1) WHERE id = 7; SET CONSTRAINTS ALL IMMEDIATE; RELEASE a; COMMIT;
         BEGIN; SAVEPOINT a; SAVEPOINT b; UPDATE t SET n = converge.incr(n, 1) WHERE id = 8; SET CONSTRAINTS ALL IMMEDIATE;
         RELEASE b; ROLLBACK TO a; COMMIT",
    )
    .unwrap();
    check(&mut c, "released and rolled-back nested savepoints");
    let logged: String = c
        .query_one("SELECT string_agg(target_key ->> 'id', ',' ORDER BY counter) FROM converge.op_log WHERE actor = 'madrid'", &[])
        .unwrap()
        .get(0);
    assert_eq!(logged, "1,2,4,7", "ops of the rows whose changes committed");
    c.batch_execute("BEGIN; UPDATE t SET n = converge.incr(n, 1) WHERE id = 5; PREPARE TRANSACTION 'p1'").unwrap();
    c.batch_execute("ROLLBACK PREPARED 'p1'").unwrap();
    c.batch_execute("UPDATE t SET n = converge.incr(n, 1) WHERE id = 5").unwrap();
    check(&mut c, "ROLLBACK PREPARED");
    c.batch_execute("BEGIN; UPDATE t SET n = converge.incr(n, 1) WHERE id = 6; PREPARE TRANSACTION 'p2'").unwrap();
    c.batch_execute("COMMIT PREPARED 'p2'").unwrap();
    c.batch_execute("UPDATE t SET n = converge.incr(n, 1) WHERE id = 6").unwrap();
    check(&mut c, "COMMIT PREPARED");
    // Two sessions, each rolling back every third transaction.
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let info = node.conninfo();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&info, postgres::NoTls).unwrap();
                for i in 0..300 {
                    let id = 1 + (i * 7 + w * 13) % 50;
                    let end = if i % 3 == 0 { "ROLLBACK" } else { "COMMIT" };
                    c.batch_execute(&format!(
                        "BEGIN; UPDATE t SET n = converge.incr(n, 1) WHERE id = {id}; SET CONSTRAINTS ALL IMMEDIATE; {end}"
                    ))
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    check(&mut c, "two concurrent writers with rollbacks");
    let ops: i64 = c.query_one("SELECT count(*) FROM converge.op_log WHERE actor = 'madrid'", &[]).unwrap().get(0);
    assert_eq!(ops, 7 + 2 * 200, "every committed update and only those logged an op");

    // An op recorded before a savepoint in which a control op (an
    // allocation) writes what waits: rolling the savepoint back leaves it
    // waiting, and the commit logs it.
    c.batch_execute("SELECT converge.set_allocator('tickets', 'madrid')").unwrap();
    // A counter taken in mid-transaction (an allocation), then a rollback.
    c.batch_execute("BEGIN; SELECT converge.allocate('tickets', 'rolled back'); ROLLBACK").unwrap();
    c.batch_execute("UPDATE t SET n = converge.incr(n, 1) WHERE id = 10").unwrap();
    check(&mut c, "a rollback after an allocation took a counter");
    let before = ops_of(&mut c);
    c.batch_execute(
        "BEGIN; UPDATE t SET n = converge.incr(n, 1) WHERE id = 9; SET CONSTRAINTS ALL IMMEDIATE;
         SAVEPOINT s; SELECT converge.allocate('tickets', 'k1'); ROLLBACK TO s; COMMIT",
    )
    .unwrap();
    check(&mut c, "a control op in a rolled-back savepoint");
    assert_eq!(ops_of(&mut c) - before, 1, "the update's op, not the allocation's");

    // Transactions that take a counter in mid-transaction (an allocation)
    // and write a replicated table, against two writers that record at
    // their commits: every commit goes through (no wait the deadlock
    // detector cannot see), counters stay gapless. (An allocating
    // transaction that then updates a row another writer holds, while
    // that writer waits at its commit for the counter, is a deadlock
    // PostgreSQL detects: the client retries, as it would for any.)
    let before = ops_of(&mut c);
    let (done, finished) = std::sync::mpsc::channel();
    for w in 0..3 {
        let (info, done) = (node.conninfo(), done.clone());
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&info, postgres::NoTls).unwrap();
            for i in 0..100 {
                let id = 1 + (i * 7 + w * 13) % 50;
                let sql = if w == 0 {
                    format!("BEGIN; SELECT converge.allocate('tickets', 'w{i}'); UPDATE t SET n = converge.incr(n, 1) WHERE id = {id}; COMMIT")
                } else {
                    format!("UPDATE t SET n = converge.incr(n, 1) WHERE id = {id}")
                };
                while let Err(e) = c.batch_execute(&sql) {
                    assert_eq!(e.code(), Some(&postgres::error::SqlState::T_R_DEADLOCK_DETECTED), "{e}");
                    c.batch_execute("ROLLBACK").unwrap();
                }
            }
            done.send(()).unwrap();
        });
    }
    drop(done); // a writer that panics ends the wait below at once
    for _ in 0..3 {
        finished.recv_timeout(std::time::Duration::from_secs(120)).expect("writers still waiting after 120 s");
    }
    check(&mut c, "allocations and updates at once");
    assert_eq!(ops_of(&mut c) - before, 100 + 300, "an allocation and an update per mixed transaction, an update per other");
}

fn ops_of(c: &mut postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM converge.op_log WHERE actor = 'madrid'", &[]).unwrap().get(0)
}

