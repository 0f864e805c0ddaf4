//! Commits of transactions that record ops (src/durable.rs): they commit
//! asynchronously, without holding the op-counter lock across the WAL
//! flush, and flush before COMMIT returns; readers that hand counters out
//! flush what they see. On real servers; the WAL writer is slowed to one
//! round per 10 s, so that little else flushes while a test looks.

use converge_cluster_tests::*;

fn port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710) + 130
}

/// A node with converge, table t (50 rows) replicated, a slow WAL writer.
fn node_with_table(scratch: &Scratch, offset: u16) -> (Node, postgres::Client) {
    let node = Node::new(&scratch.0, "madrid", port() + offset, true);
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
    (node, c)
}

fn flushed(c: &mut postgres::Client, lsn: &str) -> bool {
    c.query_one("SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn", &[&lsn]).unwrap().get(0)
}

fn level(c: &mut postgres::Client) -> String {
    c.query_one("SHOW synchronous_commit", &[]).unwrap().get(0)
}

/// COMMIT returns once the commit is flushed, and the session's setting is
/// what it was, also after settings made in the transaction. (These hold
/// without src/durable.rs too: they guard what it must keep.)
#[test]
fn a_recording_commit_is_flushed_when_it_returns_and_keeps_the_setting() {
    let scratch = Scratch::new("durable-commit");
    let (_node, mut c) = node_with_table(&scratch, 0);
    for i in 1..=20 {
        let sql = if i % 2 == 0 { "UPDATE t SET n = converge.incr(n, 1) WHERE id = $1" } else { "UPDATE t SET note = 'x' || $1 WHERE id = $1" };
        let mut tx = c.transaction().unwrap();
        tx.execute(sql, &[&i]).unwrap();
        let lsn: String = tx.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).unwrap().get(0);
        tx.commit().unwrap();
        assert!(flushed(&mut c, &lsn), "commit {i} returned before its WAL ({lsn}) was flushed");
        assert_eq!(level(&mut c), "on", "the session's synchronous_commit after commit {i}");
    }
    c.batch_execute("BEGIN; UPDATE t SET note = 'y' WHERE id = 40; SET LOCAL synchronous_commit = local; COMMIT").unwrap();
    assert_eq!(level(&mut c), "on", "after SET LOCAL in a recording transaction");
    // A commit that fails after PRE_COMMIT (a serialization failure found
    // at commit) aborts: the level must come back all the same.
    let mut other = _node.client();
    c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT sum(id) FROM t WHERE id <= 10; UPDATE t SET note = 'a' WHERE id = 11").unwrap();
    other.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT sum(id) FROM t WHERE id > 10; UPDATE t SET note = 'b' WHERE id = 1; COMMIT").unwrap();
    let failed = c.batch_execute("COMMIT");
    assert!(failed.is_err(), "the write-skew commit should fail with 40001");
    assert_eq!(level(&mut c), "on", "after a recording commit that failed");
}

/// An asynchronous commit by the session's own choice, not flushed yet:
/// frontier() and changes_since() flush it before they count its op, so no
/// counter they hand out can be lost and reused.
#[test]
fn frontier_and_changes_since_flush_the_commits_they_count() {
    let scratch = Scratch::new("durable-readers");
    let (node, mut c) = node_with_table(&scratch, 1);
    let mut lazy = node.client();
    lazy.batch_execute("SET synchronous_commit = off").unwrap();
    // The position is read inside the transaction, before its commit
    // record (after it, at a page start, it would point past a header).
    let mut unflushed = || -> String {
        for _ in 0..10 {
            let mut tx = lazy.transaction().unwrap();
            tx.execute("UPDATE t SET n = converge.incr(n, 1) WHERE id = 30", &[]).unwrap();
            let lsn: String = tx.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).unwrap().get(0);
            tx.commit().unwrap();
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
}

/// The last commit survives an immediate stop (no shutdown flush), with a
/// gapless frontier. (This proves the WAL was written to the OS; that it
/// reached the disk is not something a test here can see.)
#[test]
fn the_last_recording_commit_survives_an_immediate_stop() {
    let scratch = Scratch::new("durable-stop");
    let (node, mut c) = node_with_table(&scratch, 2);
    for i in 1..=5 {
        c.execute("UPDATE t SET n = converge.incr(n, 1) WHERE id = $1", &[&i]).unwrap();
    }
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
    assert!(took >= std::time::Duration::from_millis(1500), "20 commits took {took:?}: the flushes did not sleep, the test saw nothing");
    assert!(active >= 10, "only {active} samples of the writer at work");
    assert!(locked * 4 < active, "the writer held the op-counter lock in {locked} of {active} samples: across its flushes");
}

/// A batch the worker applied is confirmed to its peer only once its
/// commit is on disk here (worker/batches.rs). dublin commits
/// asynchronously (`synchronous_commit = off`, its WAL writer slowed to
/// 10 s): without the flush, an immediate stop after dublin confirmed the
/// batch would lose it, and madrid, whose slot has let it go, would never
/// send it again.
#[test]
fn an_applied_batch_survives_an_immediate_stop_under_asynchronous_commit() {
    let scratch = Scratch::new("durable-apply");
    let nodes: Vec<Node> = ["madrid", "dublin"].iter().enumerate().map(|(i, n)| Node::new(&scratch.0, n, port() + 10 + i as u16, true)).collect();
    for n in &nodes {
        n.client()
            .batch_execute(&format!(
                "CREATE EXTENSION converge; SELECT converge.set_node('{}');
                 CREATE TABLE t (id int PRIMARY KEY, note text); SELECT converge.replicate('t');",
                n.name
            ))
            .unwrap();
    }
    let mut dublin = nodes[1].client();
    for setting in ["ALTER SYSTEM SET wal_writer_delay = '10s'", "ALTER SYSTEM SET synchronous_commit = off", "SELECT pg_reload_conf()"] {
        dublin.batch_execute(setting).unwrap();
    }
    drop(dublin);
    // One way only (dublin pulls from madrid, serves nobody): with a full
    // mesh, dublin's WAL was found flushed before the stop in our runs
    // (by its walsender for madrid, presumably), and the case did not show.
    Node::grant_peer(&mut nodes[0].client());
    nodes[1].client().execute("SELECT converge.add_peer('madrid', $1)", &[&nodes[0].peer_conninfo("postgres")]).unwrap();
    nodes[0].client().batch_execute("INSERT INTO t VALUES (1, 'sent once')").unwrap();
    wait_for(&nodes[1], "SELECT note FROM t WHERE id = 1", "sent once", "madrid's insert");
    // dublin's feedback reaches madrid (every 200 ms while idle).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    nodes[1].stop_immediate();
    nodes[1].start();
    wait_for(&nodes[1], "SELECT note FROM t WHERE id = 1", "sent once", "madrid's insert after dublin's crash");
}
