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
    assert!(wal <= 550.0, "WAL per applied op grew to {wal:.0} bytes");
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
    assert_eq!(ops, 6 + 2 * 200, "every committed update and only those logged an op");
}

/// A transaction that records ops commits without holding the op counter
/// across its WAL flush (src/durable.rs): it commits asynchronously and
/// flushes after. COMMIT must still return only once the commit is flushed,
/// the session's setting must be what it was, and a frontier or
/// changes_since read must not count an op a crash could lose. The WAL
/// writer is slowed to one round per 10 s, so that little else flushes.
/// (An immediate stop keeps what was written to the OS; that the flush
/// reached the disk is not something a test here can see.)
#[test]
fn a_replicated_commit_is_durable_when_commit_returns() {
    let scratch = Scratch::new("durable");
    let node = Node::new(&scratch.0, "madrid", port() + 2, true);
    let mut c = node.client();
    c.batch_execute("ALTER SYSTEM SET wal_writer_delay = '10s'").unwrap();
    c.batch_execute(
        "SELECT pg_reload_conf();
         CREATE EXTENSION converge; SELECT converge.set_node('madrid');
         CREATE TABLE t (id int PRIMARY KEY, n converge.gcounter, note text);
         INSERT INTO t (id) SELECT generate_series(1, 50);
         SELECT converge.replicate('t');",
    )
    .unwrap();
    let flushed = |c: &mut postgres::Client, lsn: &str| -> bool {
        c.query_one("SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn", &[&lsn]).unwrap().get(0)
    };
    let level = |c: &mut postgres::Client| -> String { c.query_one("SHOW synchronous_commit", &[]).unwrap().get(0) };
    for i in 1..=20 {
        let sql = if i % 2 == 0 { "UPDATE t SET n = converge.incr(n, 1) WHERE id = $1" } else { "UPDATE t SET note = 'x' || $1 WHERE id = $1" };
        let mut tx = c.transaction().unwrap();
        tx.execute(sql, &[&i]).unwrap();
        let lsn: String = tx.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).unwrap().get(0);
        tx.commit().unwrap();
        assert!(flushed(&mut c, &lsn), "commit {i} returned before its WAL ({lsn}) was flushed");
        assert_eq!(level(&mut c), "on", "the session's synchronous_commit after commit {i}");
    }
    // Settings made in the transaction after the op was recorded are
    // unwound as usual, to the session's level.
    c.batch_execute("BEGIN; UPDATE t SET note = 'y' WHERE id = 40; SET LOCAL synchronous_commit = local; COMMIT").unwrap();
    assert_eq!(level(&mut c), "on", "after SET LOCAL in a recording transaction");
    c.batch_execute("BEGIN; UPDATE t SET note = 'z' WHERE id = 41; SET synchronous_commit = local; SET CONSTRAINTS ALL IMMEDIATE; ROLLBACK")
        .unwrap();
    assert_eq!(level(&mut c), "on", "after SET and ROLLBACK in a recording transaction");
    // An asynchronous commit by the session's own choice, not flushed yet:
    // frontier() and changes_since() flush it before they count its op.
    let mut lazy = node.client();
    lazy.batch_execute("SET synchronous_commit = off").unwrap();
    let mut unflushed = || -> String {
        for _ in 0..10 {
            lazy.batch_execute("UPDATE t SET n = converge.incr(n, 1) WHERE id = 30").unwrap();
            let lsn: String = lazy.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).unwrap().get(0);
            if !flushed(&mut lazy, &lsn) {
                return lsn;
            }
        }
        panic!("every asynchronous commit was flushed at once: this test cannot see the reader's flush");
    };
    let lsn = unflushed();
    let counted: i64 = c.query_one("SELECT (converge.frontier() ->> 'madrid')::int8", &[]).unwrap().get(0);
    assert!(flushed(&mut c, &lsn), "frontier() counted op {counted} before its commit ({lsn}) was flushed");
    let lsn = unflushed();
    let sent: i64 = c.query_one("SELECT count(*) FROM converge.changes_since('{}')", &[]).unwrap().get(0);
    assert!(flushed(&mut c, &lsn), "changes_since() gave out {sent} ops before the last one's commit ({lsn}) was flushed");
    // The last commit survives an immediate stop (no shutdown flush).
    c.batch_execute("UPDATE t SET note = 'last' WHERE id = 50").unwrap();
    let ops: i64 = c.query_one("SELECT count(*) FROM converge.op_log WHERE actor = 'madrid'", &[]).unwrap().get(0);
    node.stop_immediate();
    node.start();
    let mut c = node.client();
    let note: String = c.query_one("SELECT note FROM t WHERE id = 50", &[]).unwrap().get(0);
    assert_eq!(note, "last");
    let r = c.query_one("SELECT count(*), (converge.frontier() ->> 'madrid')::int8 FROM converge.op_log WHERE actor = 'madrid'", &[]).unwrap();
    let (after, frontier): (i64, i64) = (r.get(0), r.get(1));
    assert_eq!((after, frontier), (ops, ops), "every committed op, gapless, after crash recovery");
}

/// The op-counter lock is released before the commit waits for its WAL
/// flush. Every flush is made to sleep 100 ms (commit_delay, fsync on), so
/// a writer spends nearly all its time in its commits' flushes; a third
/// session samples whether it holds the lock. Holding it across the flush,
/// as before src/durable.rs, shows in nearly every sample; released
/// before it, in almost none (only while its trigger runs).
#[test]
fn a_commit_waits_for_its_flush_without_the_op_counter_lock() {
    let scratch = Scratch::new("unlocked");
    let node = Node::new(&scratch.0, "madrid", port() + 3, true);
    let mut c = node.client();
    for set in ["fsync = on", "commit_delay = 100000", "commit_siblings = 0"] {
        c.batch_execute(&format!("ALTER SYSTEM SET {set}")).unwrap();
    }
    c.batch_execute(
        "SELECT pg_reload_conf();
         CREATE EXTENSION converge; SELECT converge.set_node('madrid');
         CREATE TABLE t (id int PRIMARY KEY, n converge.gcounter);
         INSERT INTO t (id) SELECT generate_series(1, 10);
         SELECT converge.replicate('t');",
    )
    .unwrap();
    let info = node.conninfo();
    let writer = std::thread::spawn(move || {
        let mut w = postgres::Client::connect(&info, postgres::NoTls).unwrap();
        w.batch_execute("SET application_name = 'writer'").unwrap();
        let start = std::time::Instant::now();
        for i in 1..=20 {
            w.execute("UPDATE t SET n = converge.incr(n, 1) WHERE id = $1", &[&(1 + i % 10)]).unwrap();
        }
        start.elapsed()
    });
    // The counter lock: an object lock on actor_frontier's pg_class entry,
    // sub-object 1 (src/local_ops.rs).
    let (mut active, mut locked) = (0, 0);
    while !writer.is_finished() {
        let r = c
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE EXISTS (
                            SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'object' AND l.granted
                               AND l.classid = 'pg_class'::regclass AND l.objid = 'converge.actor_frontier'::regclass
                               AND l.objsubid = 1))
                   FROM pg_stat_activity a WHERE a.application_name = 'writer' AND a.state = 'active'",
                &[],
            )
            .unwrap();
        active += r.get::<_, i64>(0);
        locked += r.get::<_, i64>(1);
    }
    let took = writer.join().unwrap();
    assert!(took >= std::time::Duration::from_secs(2), "20 commits took {took:?}: the flushes did not sleep, the test saw nothing");
    assert!(active >= 10, "only {active} samples of the writer at work");
    assert!(locked * 4 < active, "the writer held the op-counter lock in {locked} of {active} samples: across its flushes");
}
