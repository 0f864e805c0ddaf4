//! One background worker applies every peer of a database. A user's
//! transaction that holds a row for a long time must hold up only the
//! batches that need that row, not the node's whole replication: the
//! worker waits for a lock at most `converge.apply_lock_timeout` (default
//! 1 s), rolls the batch back, serves its other peers, and applies the
//! batch again later. With the setting at 0 it follows the server's
//! `lock_timeout` (none here) and waits as long as it takes.
//!
//! Needs the extension installed (`cargo pgrx install`); `bash .ci/test`
//! runs it. Ports come from CONVERGE_CLUSTER_PORT (default 5710).

use converge_cluster_tests::fieldcare::*;
use converge_cluster_tests::workload::*;
use converge_cluster_tests::*;
use std::time::{Duration, Instant};

fn base_port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710)
}

const WAITING: &str = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'converge worker' AND wait_event_type = 'Lock'";

fn g(n: &Node, id: i32) -> i64 {
    n.client().query_one("SELECT converge.value(g) FROM ctr WHERE id = $1", &[&id]).unwrap().get(0)
}

/// Until `within` is over, look every 20 ms whether `n`'s worker waits on
/// a lock; true at the first look that it does.
fn worker_waits(n: &Node, within: Duration) -> bool {
    let mut c = n.client();
    let until = Instant::now() + within;
    while Instant::now() < until {
        if c.query_one(WAITING, &[]).unwrap().get::<_, i64>(0) > 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_row_a_user_holds_holds_up_only_the_batches_that_need_it() {
    let root = Scratch::new("heldrow");
    let nodes = mesh_of_three(&root.0, base_port());
    let (madrid, dublin, virginia) = (&nodes[0], &nodes[1], &nodes[2]);
    let (one, two) = (g(madrid, 1), g(madrid, 2));

    let mut holder = madrid.client();
    holder.batch_execute("BEGIN; SELECT * FROM ctr WHERE id = 1 FOR UPDATE").unwrap();
    dublin.client().batch_execute("UPDATE ctr SET g = converge.incr(g, 5) WHERE id = 1").unwrap();
    assert!(worker_waits(madrid, Duration::from_secs(20)), "madrid's worker never waited on the row held there");
    virginia.client().batch_execute("UPDATE ctr SET g = converge.incr(g, 7) WHERE id = 2").unwrap();
    let since = Instant::now();
    while g(madrid, 2) != two + 7 {
        assert!(since.elapsed() < Duration::from_secs(20), "virginia's increment of row 2 is held up behind dublin's of the held row 1");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("virginia's increment reached madrid in {:?} while row 1 was held", since.elapsed());
    assert_eq!(g(madrid, 1), one, "dublin's increment waits for the row");
    let row = madrid.client().query_one("SELECT state, coalesce(last_error, '') FROM converge.peers WHERE name = 'dublin'", &[]).unwrap();
    let (state, error): (String, String) = (row.get(0), row.get(1));
    eprintln!("madrid's peers row for dublin: {state}: {error}");
    assert_eq!(state, "ok", "dublin is reachable; only its batch waits");
    assert!(error.contains("lock timeout") && error.contains("applied again in"), "the error says why: {error}");
    // Held for long, the peer is shown down (its batches do not apply).
    wait_for(madrid, "SELECT state FROM converge.peers WHERE name = 'dublin'", "down", "dublin shown down after 10 s of held batches");
    // and stays down through the next reconnect: a new walsender on dublin,
    // then the second it takes the batch to wait again.
    const STREAM: &str = "SELECT coalesce(max(active_pid), 0) FROM pg_replication_slots WHERE slot_name LIKE 'converge\\_madrid\\_%'";
    let (mut m, mut d) = (madrid.client(), dublin.client());
    let first: i32 = d.query_one(STREAM, &[]).unwrap().get(0);
    let since = Instant::now();
    let mut until: Option<Instant> = None;
    while until.is_none_or(|u| Instant::now() < u) {
        assert!(since.elapsed() < Duration::from_secs(60), "madrid's worker never streamed from dublin again");
        let state: String = m.query_one("SELECT state FROM converge.peers WHERE name = 'dublin'", &[]).unwrap().get(0);
        assert_eq!(state, "down", "dublin's batches still do not apply");
        let pid: i32 = d.query_one(STREAM, &[]).unwrap().get(0);
        if until.is_none() && pid != 0 && pid != first {
            until = Some(Instant::now() + Duration::from_millis(1500));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    holder.batch_execute("COMMIT").unwrap();
    wait_for(madrid, "SELECT converge.value(g)::text FROM ctr WHERE id = 1", &(one + 5).to_string(), "dublin's increment after the commit");
    wait_for(madrid, "SELECT state FROM converge.peers WHERE name = 'dublin'", "ok", "dublin ok again once its batch applied");

    // 0: the worker waits as long as it takes (and its other peers wait).
    let mut admin = madrid.client();
    admin.batch_execute("ALTER SYSTEM SET converge.apply_lock_timeout = 0").unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    // (The idle worker reloads within one turn of its loop, 50 ms.)
    std::thread::sleep(Duration::from_secs(2));
    let (three, four) = (g(madrid, 3), g(madrid, 4));
    holder.batch_execute("BEGIN; SELECT * FROM ctr WHERE id = 3 FOR UPDATE").unwrap();
    dublin.client().batch_execute("UPDATE ctr SET g = converge.incr(g, 5) WHERE id = 3").unwrap();
    assert!(worker_waits(madrid, Duration::from_secs(20)), "madrid's worker never waited on row 3");
    virginia.client().batch_execute("UPDATE ctr SET g = converge.incr(g, 7) WHERE id = 4").unwrap();
    let mut c = madrid.client();
    for _ in 0..40 {
        assert_eq!(c.query_one(WAITING, &[]).unwrap().get::<_, i64>(0), 1, "with no limit the worker keeps waiting");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(g(madrid, 4), four, "with no limit virginia's batch waits behind dublin's");
    holder.batch_execute("COMMIT").unwrap();
    wait_for(madrid, "SELECT converge.value(g)::text FROM ctr WHERE id = 3", &(three + 5).to_string(), "row 3 after the commit");
    wait_for(madrid, "SELECT converge.value(g)::text FROM ctr WHERE id = 4", &(four + 7).to_string(), "row 4 after the commit");
}

/// For `secs` seconds, `n`'s worker never waits on a lock.
fn never_waits(n: &Node, secs: u64, who: &str) {
    let mut c = n.client();
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        assert_eq!(c.query_one(WAITING, &[]).unwrap().get::<_, i64>(0), 0, "{who} waits on a lock");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A session of `n` holding `peer`'s status row there (as `add_peer` does
/// while it adds that peer again) until it ends.
fn hold_status(n: &Node, peer: &str) -> postgres::Client {
    let mut c = n.client();
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT 1 FROM converge.peer_status WHERE name = $1 FOR UPDATE", &[&peer]).unwrap();
    c
}

/// The worker's own writes to a peer's status row (its probe's report, a
/// lost mark, a rejoin) are put off, never waited for, while another
/// transaction holds that row: the worker serves every peer of the
/// database, so a wait there would hold all of them up.
#[test]
fn the_worker_never_waits_on_a_held_status_row() {
    let root = Scratch::new("heldstatus");
    let nodes = mesh_of_three(&root.0, base_port() + 3);
    for n in &nodes {
        let mut c = n.client();
        c.batch_execute("ALTER SYSTEM SET converge.max_peer_lag_bytes = '1MB'").unwrap();
        c.batch_execute("SELECT pg_reload_conf()").unwrap();
    }
    let (madrid, virginia) = (&nodes[0], &nodes[2]);
    const CAUGHT_UP: &str = "SELECT caught_up_at::text FROM converge.peers WHERE name = 'dublin'";

    // The probe: dublin is idle and caught up, so madrid's worker reports
    // it every 200 ms or so; held, the report is skipped.
    let holder = hold_status(madrid, "dublin");
    let held_at = text(madrid, CAUGHT_UP);
    never_waits(madrid, 3, "madrid's worker, its probe of dublin held");
    assert_eq!(text(madrid, CAUGHT_UP), held_at, "no probe report while the row is held");
    drop(holder);
    let since = Instant::now();
    while text(madrid, CAUGHT_UP) == held_at {
        assert!(since.elapsed() < Duration::from_secs(20), "madrid's probes of dublin never reported again");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The lost mark: virginia cut off, madrid's slot for it past the limit.
    isolate(&nodes, 2);
    let holder = hold_status(madrid, "virginia");
    madrid.client().batch_execute("CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 5000) g").unwrap();
    never_waits(madrid, 12, "madrid's worker, its lost mark of virginia held");
    assert_eq!(text(madrid, "SELECT state FROM converge.peers WHERE name = 'virginia'"), "paused", "not marked lost while held");
    drop(holder);
    wait_for(madrid, "SELECT (lost_at IS NOT NULL)::text FROM converge.peer_status WHERE name = 'virginia'", "true", "madrid marks virginia lost once the row is free");

    // The rejoin: virginia finds its slot on madrid gone; it rejoins only
    // once its own status row for madrid is free.
    let holder = hold_status(virginia, "madrid");
    for (a, b) in [(2, 0), (0, 2), (2, 1), (1, 2)] {
        nodes[a].client().execute("SELECT converge.resume_peer($1)", &[&nodes[b].name]).unwrap();
    }
    never_waits(virginia, 6, "virginia's worker, its rejoin of madrid held");
    drop(holder);
    wait_for(madrid, "SELECT state FROM converge.peers WHERE name = 'virginia'", "ok", "virginia rejoined madrid");
    virginia.client().batch_execute("UPDATE ctr SET g = converge.incr(g, 3) WHERE id = 9").unwrap();
    let want = text(virginia, "SELECT converge.value(g)::text FROM ctr WHERE id = 9");
    wait_for(madrid, "SELECT converge.value(g)::text FROM ctr WHERE id = 9", &want, "virginia's increment after the rejoin");
}

/// Pause node `cut`'s links with every other node, both ways.
fn isolate(nodes: &[Node], cut: usize) {
    for i in (0..nodes.len()).filter(|&i| i != cut) {
        pause(nodes, cut, i, true);
    }
}

/// An error the commit of an applied batch raises (here a deferred foreign
/// key whose check waits on a parent row a user holds, past the timeout)
/// rolls the batch back like any other: the worker goes on serving its
/// peers, and the batch applies once the row is free.
#[test]
fn an_error_at_the_commit_of_a_batch_does_not_end_the_worker() {
    let root = Scratch::new("heldcommit");
    let nodes = mesh_of_three(&root.0, base_port() + 6);
    for n in &nodes {
        n.client()
            .batch_execute(
                "CREATE TABLE parent (id int PRIMARY KEY);
                 INSERT INTO parent VALUES (1);
                 CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);
                 SELECT converge.replicate('child');",
            )
            .unwrap();
    }
    let (madrid, dublin, virginia) = (&nodes[0], &nodes[1], &nodes[2]);
    const WORKER: &str = "SELECT coalesce(max(pid), 0)::int8 FROM pg_stat_activity WHERE backend_type = 'converge worker'";
    let worker = count(madrid, WORKER);
    assert!(worker != 0, "madrid has a worker");
    let mut holder = madrid.client();
    holder.batch_execute("BEGIN; SELECT * FROM parent WHERE id = 1 FOR UPDATE").unwrap();
    dublin.client().batch_execute("INSERT INTO child VALUES (1, 1)").unwrap();
    let since = Instant::now();
    loop {
        let error = text(madrid, "SELECT coalesce(last_error, '') FROM converge.peers WHERE name = 'dublin'");
        if error.contains("lock timeout") {
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(30), "madrid never reported dublin's batch held (last_error {error:?})");
        std::thread::sleep(Duration::from_millis(100));
    }
    let two = count(madrid, "SELECT converge.value(g) FROM ctr WHERE id = 2");
    virginia.client().batch_execute("UPDATE ctr SET g = converge.incr(g, 7) WHERE id = 2").unwrap();
    wait_for(madrid, "SELECT converge.value(g)::text FROM ctr WHERE id = 2", &(two + 7).to_string(), "virginia's increment while the parent row is held");
    assert_eq!(count(madrid, "SELECT count(*) FROM child"), 0, "dublin's child row waits for its parent");
    assert_eq!(count(madrid, WORKER), worker, "the same worker serves madrid");
    holder.batch_execute("COMMIT").unwrap();
    wait_for(madrid, "SELECT count(*)::text FROM child", "1", "dublin's child row after the parent is free");
}

/// As users run it: an ordinary role (`app`, no superuser) holds a row of
/// its own table in its database; the peer's change of that row waits,
/// `app` reads why in `converge.peers`, and the change applies once `app`
/// commits.
#[test]
fn an_ordinary_role_holding_a_row_sees_the_batch_held_and_then_applied() {
    let Fieldcare { _root, nodes, mut lisbon, mut oslo, .. } = fieldcare_pair("heldapp", base_port() + 9, false);
    lisbon.batch_execute("INSERT INTO note (id, body) VALUES (1, 'pump')").unwrap();
    const BODY: &str = "SELECT coalesce((SELECT body FROM note WHERE id = 1), '')";
    let since = Instant::now();
    while oslo.query_one(BODY, &[]).unwrap().get::<_, String>(0) != "pump" {
        assert!(since.elapsed() < Duration::from_secs(60), "row 1 never reached oslo");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut holder = nodes[1].client_as("app", "fieldcare");
    holder.batch_execute("BEGIN; SELECT * FROM note WHERE id = 1 FOR UPDATE").unwrap();
    lisbon.batch_execute("UPDATE note SET body = 'valve' WHERE id = 1").unwrap();
    let since = Instant::now();
    loop {
        let error: String = oslo.query_one("SELECT coalesce(last_error, '') FROM converge.peers WHERE name = 'lisbon'", &[]).unwrap().get(0);
        if error.contains("lock timeout") {
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(30), "app on oslo never saw lisbon's batch held (last_error {error:?})");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(oslo.query_one(BODY, &[]).unwrap().get::<_, String>(0), "pump", "lisbon's change waits for app's row");
    holder.batch_execute("COMMIT").unwrap();
    let since = Instant::now();
    while oslo.query_one(BODY, &[]).unwrap().get::<_, String>(0) != "valve" {
        assert!(since.elapsed() < Duration::from_secs(60), "lisbon's change never applied after app's commit");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(n: &Node, sql: &str) -> i64 {
    n.client().query_one(sql, &[]).unwrap().get(0)
}

/// A row op of `actor` (its counter: `id`) applied to key `id` of table t: the
/// row's "$live" (and its note, if one is given) put at time `ts`.
const ROW_OP: &str = "
    CREATE FUNCTION row_op(actor text, id int, live bool, ts int8, note text) RETURNS text LANGUAGE sql AS $$
        SELECT outcome FROM converge.apply(ROW(actor || ':' || id, actor, 'public.t', jsonb_build_object('id', id), '', 1, 0, '{}',
            jsonb_build_object('entries', jsonb_build_object('$live', jsonb_build_array(jsonb_build_array(ts, 0, actor), jsonb_build_object('put', live)))
                || CASE WHEN note IS NULL THEN '{}'::jsonb
                        ELSE jsonb_build_object('note', jsonb_build_array(jsonb_build_array(ts, 0, actor), jsonb_build_object('put', note))) END
            )::text::converge.lwwmap::bytea, NULL)::converge.op)
    $$";

/// Run `sql` on a connection of its own in a thread, once `first` (which
/// holds a key's uncommitted first row_state entry) has made it wait for
/// that entry; then commit `first` and let it finish. An apply that had
/// written the row before it met the entry fails with 40001 and is run
/// again, as the worker runs a batch again.
fn second_writer_waits(node: &Node, first: &mut postgres::Client, sql: &'static str) {
    let mut c = node.client();
    let second = std::thread::spawn(move || {
        if let Err(e) = c.batch_execute(sql) {
            assert_eq!(e.code(), Some(&postgres::error::SqlState::T_R_SERIALIZATION_FAILURE), "{e}");
            eprintln!("the second writer is run again after: {e}");
            c.batch_execute(sql).unwrap();
        }
    });
    let since = std::time::Instant::now();
    while count(node, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()") == 0 {
        assert!(!second.is_finished(), "the second writer ended without waiting: {:?}", second.join().err());
        assert!(since.elapsed() < Duration::from_secs(20), "the second writer never waited for the first's entry");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.batch_execute("COMMIT").unwrap();
    second.join().unwrap();
}

/// Two transactions each writing the first row_state entry of one key (two
/// peers' ops applied by two sessions, or a local insert and an applied
/// op): the second waits for the first's entry and then works against it.
/// It used to overwrite it, so that this node alone lost the first's clock:
/// here an applied delete that a later-applied, older insert undid, and a
/// far-ahead delete that a local insert wrote under instead of over (every
/// other node kept that row deleted).
#[test]
fn the_second_first_writer_of_a_key_works_against_the_first() {
    let root = Scratch::new("firstwriters");
    let node = Node::new(&root.0, "madrid", base_port() + 12, true);
    let mut first = node.client();
    first.batch_execute("CREATE EXTENSION converge; CREATE TABLE t (id int PRIMARY KEY, note text); SELECT converge.replicate('t'); SELECT converge.set_node('madrid')").unwrap();
    first.batch_execute(ROW_OP).unwrap();

    // x deleted key 1 at 2000; y inserted it at 1000: the delete wins.
    first.batch_execute("BEGIN; SELECT row_op('x', 1, false, 2000, NULL)").unwrap();
    second_writer_waits(&node, &mut first, "SELECT row_op('y', 1, true, 1000, 'late')");
    assert_eq!(count(&node, "SELECT count(*) FROM t WHERE id = 1"), 0, "y's older insert undid x's newer delete");
    let clock = text(&node, "SELECT clock::text FROM converge.row_state WHERE target_key = '{\"id\": 1}'");
    assert!(clock.contains("\"x\"") && clock.contains("late"), "both ops are in the row's clock: {clock}");

    // The other way round: y inserted key 3 at 1000, x deleted it at 2000;
    // the delete finds the row the insert made once it is committed.
    first.batch_execute("BEGIN; SELECT row_op('y', 3, true, 1000, 'early')").unwrap();
    second_writer_waits(&node, &mut first, "SELECT row_op('x', 3, false, 2000, NULL)");
    assert_eq!(count(&node, "SELECT count(*) FROM t WHERE id = 3"), 0, "x's newer delete left y's row in place");
    assert_eq!(text(&node, "SELECT live::text FROM converge.row_state WHERE target_key = '{\"id\": 3}'"), "false");

    // z deleted key 2 with a clock far ahead (the bound on clients' clocks
    // lifted for it); this node inserts it after.
    first.batch_execute("BEGIN; SET LOCAL converge.max_clock_skew = -1; SELECT row_op('z', 2, false, 9999999999999, NULL)").unwrap();
    second_writer_waits(&node, &mut first, "INSERT INTO t VALUES (2, 'mine')");
    let row = node
        .client()
        .query_one(
            "SELECT (e #>> '{0,0}')::int8, e #>> '{0,2}', e #>> '{1,put}'
               FROM (SELECT clock::text::jsonb #> '{entries,$live}' AS e FROM converge.row_state WHERE target_key = '{\"id\": 2}') s",
            &[],
        )
        .unwrap();
    let (at, by, put): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
    assert!(
        at >= 9_999_999_999_999 && by == "madrid" && put == "true",
        "the row is live by madrid's insert, written newer than the delete it waited for (at {at} by {by}: {put})"
    );
    assert_eq!(count(&node, "SELECT count(*) FROM t WHERE id = 2"), 1);
}

/// A reload starts no second worker for a database whose worker runs (the
/// launcher started one for every database on each reload, and it waited
/// about 10 s for the first one's lock, holding a worker slot).
#[test]
fn a_reload_starts_no_second_worker() {
    let root = Scratch::new("reload");
    let node = Node::new(&root.0, "madrid", base_port() + 13, true);
    node.client().batch_execute("CREATE EXTENSION converge; SELECT converge.set_node('madrid')").unwrap();
    const WORKERS: &str = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'converge worker' AND datname = current_database()";
    wait_for(&node, &format!("SELECT ({WORKERS})::text"), "1", "madrid's worker started");
    for _ in 0..3 {
        node.client().batch_execute("SELECT pg_reload_conf()").unwrap();
        let since = std::time::Instant::now();
        while since.elapsed() < Duration::from_secs(2) {
            assert_eq!(count(&node, WORKERS), 1, "one worker for the database after a reload");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A REPEATABLE READ transaction whose snapshot is older than the
/// converge.replicate of its table fails at commit (40001) instead of
/// committing a write that no op records: every other node would lack it,
/// and the session kept skipping the table's writes after it.
#[test]
fn a_write_under_a_snapshot_older_than_replicate_fails_instead_of_going_unrecorded() {
    let root = Scratch::new("rrlayout");
    let node = Node::new(&root.0, "madrid", base_port() + 14, true);
    let mut admin = node.client();
    admin.batch_execute("CREATE EXTENSION converge; SELECT converge.set_node('madrid'); CREATE TABLE r (id int PRIMARY KEY, v text)").unwrap();
    let mut w = node.client();
    w.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM r").unwrap();
    admin.batch_execute("SELECT converge.replicate('r')").unwrap();
    let e = w.batch_execute("INSERT INTO r VALUES (1, 'x'); COMMIT").expect_err("a commit that records no op");
    assert_eq!(e.code(), Some(&postgres::error::SqlState::T_R_SERIALIZATION_FAILURE), "{e}");
    assert_eq!(count(&node, "SELECT count(*) FROM r"), 0);
    w.batch_execute("INSERT INTO r VALUES (2, 'y')").unwrap();
    let ops = count(&node, "SELECT count(*) FROM converge.op_log WHERE target_table = 'public.r' AND target_key = '{\"id\": 2}'");
    assert_eq!(ops, 1, "the session's next write is recorded");
    // The same for a column added after the snapshot: the op would leave
    // it out, and so would the session's later ops.
    // (The snapshot is taken with no lock on r, which the ALTER would wait for.)
    w.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1").unwrap();
    admin.batch_execute("ALTER TABLE r ADD COLUMN c int").unwrap();
    let e = w.batch_execute("INSERT INTO r VALUES (3, 'z', 5); COMMIT").expect_err("a commit whose op leaves out c");
    assert_eq!(e.code(), Some(&postgres::error::SqlState::T_R_SERIALIZATION_FAILURE), "{e}");
    w.batch_execute("INSERT INTO r VALUES (4, 'w', 6)").unwrap();
    let named = count(
        &node,
        "SELECT count(*) FROM converge.op_log WHERE target_table = 'public.r' AND target_key = '{\"id\": 4}'
            AND delta::converge.lwwmap::text LIKE '%\"c\"%'",
    );
    assert_eq!(named, 1, "the session's next write names c");
    // A layout row written again with the same columns (replicate run
    // again; compact() raising the table's tombstone floor) is no change.
    w.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1").unwrap();
    admin.batch_execute("SELECT converge.replicate('r')").unwrap();
    w.batch_execute("INSERT INTO r VALUES (5, 'v', 7); COMMIT").expect("the same layout: the commit goes through");
}

/// A client's op for key `id` of table t, as `actor` with counter `c`.
fn client_op(actor: &str, c: i32, id: i32) -> String {
    format!(
        "SELECT outcome FROM converge.apply(ROW('{actor}:{c}', '{actor}', 'public.t', '{{\"id\": {id}}}', 'n', 1, 0, '{{}}',
             '{{\"counts\":{{\"{actor}\":{c}}}}}'::converge.gcounter::bytea, NULL)::converge.op)"
    )
}

/// Closing a table to clients (`set_client_writes(t, false)`) waits for a
/// client's apply that found it open, so that op is committed before the
/// switch is; a client's apply under a REPEATABLE READ snapshot older than
/// the switch fails with 40001 instead of taking its op; one after the
/// switch is refused with client_writes_off.
#[test]
fn closing_a_table_to_clients_waits_for_the_applies_that_found_it_open() {
    let root = Scratch::new("closing");
    let node = Node::new(&root.0, "madrid", base_port() + 15, true);
    node.client()
        .batch_execute("CREATE EXTENSION converge; SELECT converge.set_node('madrid');
                        CREATE TABLE t (id int PRIMARY KEY, n converge.gcounter); SELECT converge.replicate('t')")
        .unwrap();
    let mut old_snapshot = node.client();
    old_snapshot.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1").unwrap();
    // A READ COMMITTED session that has found the table open before (its
    // answer cached).
    let mut later = node.client();
    assert_eq!(later.query_one(client_op("ink", 1, 3).as_str(), &[]).unwrap().get::<_, String>(0), "applied");
    let mut open_apply = node.client();
    open_apply.batch_execute("BEGIN").unwrap();
    assert_eq!(open_apply.query_one(client_op("tab", 1, 1).as_str(), &[]).unwrap().get::<_, String>(0), "applied");
    let waiting = |n: i64, what: &str, busy: &dyn Fn() -> bool| {
        let since = Instant::now();
        let sql = "SELECT count(*) FROM pg_stat_activity
                    WHERE wait_event_type = 'Lock' AND datname = current_database() AND backend_type = 'client backend'";
        while count(&node, sql) < n {
            assert!(!busy(), "{what} did not wait");
            assert!(since.elapsed() < Duration::from_secs(20), "{what} never waited");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut c = node.client();
    let switch = std::thread::spawn(move || c.batch_execute("SELECT converge.set_client_writes('t', false)").unwrap());
    waiting(1, "the switch (for the apply that found the table open)", &|| switch.is_finished());
    // Its next apply waits for the switch, and then reads it.
    let next = std::thread::spawn(move || later.query_one(client_op("ink", 2, 3).as_str(), &[]).unwrap().get::<_, String>(0));
    waiting(2, "the cached session's next apply (for the switch)", &|| next.is_finished());
    open_apply.batch_execute("COMMIT").unwrap();
    switch.join().unwrap();
    assert_eq!(next.join().unwrap(), "rejected", "an apply that waited for the switch took its op");
    // (Another actor and key: nothing the first apply wrote is in its way.)
    let e = old_snapshot.query_one(client_op("pad", 1, 2).as_str(), &[]).expect_err("an apply under a snapshot older than the switch");
    assert_eq!(e.code(), Some(&postgres::error::SqlState::T_R_SERIALIZATION_FAILURE), "{e}");
    old_snapshot.batch_execute("ROLLBACK").unwrap();
    assert_eq!(old_snapshot.query_one(client_op("pad", 1, 2).as_str(), &[]).unwrap().get::<_, String>(0), "rejected");
    assert_eq!(text(&node, "SELECT reason FROM converge.op_log WHERE op_id = 'pad:1'"), "client_writes_off");
    assert_eq!(count(&node, "SELECT count(*) FROM t"), 2, "only the ops taken before the switch made rows");
    assert_eq!(count(&node, "SELECT converge.value(n) FROM t WHERE id = 3"), 1, "the op refused after the switch does not count");
}
