//! Three real nodes (madrid, dublin, virginia) in a full mesh, each with the
//! converge background worker, take 10 000 random operations over every
//! CRDT type, row inserts, deletes and last-writer-wins columns, with
//! coordination mixed in (about one op in eight: requests that virginia
//! decides, closing incidents with an audit number; freezes of item rows
//! by virginia; ops of three devices sent to any node; revocations of those
//! devices), through:
//! a partition (pulls paused both ways), a kill -9 of a node while the
//! others write and its worker is pulling, and a node down for a long
//! stretch (stop -m immediate) then back. In the end every row is
//! byte-identical on all nodes (text output), every counter equals the sum
//! of the increments that were acknowledged, no op came back to the node
//! that made it, every node applied the same ops and holds the same
//! requests, decisions and allocations (one audit number per incident ever
//! closed), and remove_peer leaves no slot or origin behind.
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

#[test]
fn three_regions_converge_through_partition_kill9_and_long_outage() {
    let started = Instant::now();
    let root = Scratch::new("cluster");
    let port = base_port();
    let nodes = mesh_of_three(&root.0, port);
    for n in &nodes {
        let rows: i64 = n.client().query_one("SELECT count(*) FROM ctr", &[]).unwrap().get(0);
        assert_eq!(rows, 40, "{} has the counter rows after add_peer", n.name);
    }

    // Coordination mixed in: requests (virginia decides, closing allocates
    // an audit number), freezes of item rows by virginia, device ops sent
    // to any node, and revocations of the devices (src/coordinated.rs).
    for n in &nodes {
        n.client().batch_execute(converge_cluster_tests::coordinated::SETUP).unwrap();
    }
    nodes[0].client().batch_execute(converge_cluster_tests::coordinated::ROWS).unwrap();
    converge_all(&nodes, Duration::from_secs(60));

    let mut load = Load::new(0x9e3779b97f4a7c15);
    load.coord = Some(Default::default());
    let mut clients: Vec<Option<postgres::Client>> = nodes.iter().map(|_| None).collect();

    // 1. All connected.
    load.run(&nodes, &mut clients, &[0, 1, 2], 3000);

    // 2. Partition: virginia cut off from both (pulls stopped both ways), and
    //    everyone keeps writing.
    pause(&nodes, 2, 0, true);
    pause(&nodes, 2, 1, true);
    load.run(&nodes, &mut clients, &[0, 1, 2], 2000);
    pause(&nodes, 2, 0, false);
    pause(&nodes, 2, 1, false);

    // 3. kill -9 dublin while madrid and virginia write and dublin's worker
    //    is pulling their ops; restart it (crash recovery) and go on.
    load.run(&nodes, &mut clients, &[0, 2], 1000);
    // A burst dublin's worker is busy applying when the kill lands: every
    // counter row incremented in one transaction on each writer.
    for i in [0, 2] {
        let c = clients[i].get_or_insert_with(|| nodes[i].client());
        // A multi-row update can deadlock with the apply of a peer's ops on
        // the same rows (as with any two writers); retry, as a client would.
        let mut tries = 0;
        let n = loop {
            match c.execute("UPDATE ctr SET g = converge.incr(g, 1)", &[]) {
                Ok(n) => break n,
                Err(e) if tries < 5 && e.code().map(|s| s.code()) == Some("40P01") => {
                    tries += 1;
                    load.retries += 1;
                }
                Err(e) => panic!("burst on {}: {e:?}", nodes[i].name),
            }
        };
        assert_eq!(n, 40);
        for id in 1..=40 {
            *load.expect.g.entry(id).or_default() += 1;
        }
    }
    nodes[1].kill9();
    clients[1] = None;
    load.run(&nodes, &mut clients, &[0, 2], 200);
    nodes[1].start();
    load.run(&nodes, &mut clients, &[0, 1, 2], 800);

    // 4. virginia down for a long stretch (immediate stop), then back.
    nodes[2].stop_immediate();
    clients[2] = None;
    load.run(&nodes, &mut clients, &[0, 1], 2000);
    // The others report it down (and keep working).
    for i in [0, 1] {
        let row = nodes[i]
            .client()
            .query_one("SELECT state, last_error IS NOT NULL FROM converge.peers WHERE name = 'virginia'", &[])
            .unwrap();
        let (state, has_error): (String, bool) = (row.get(0), row.get(1));
        assert_eq!((state.as_str(), has_error), ("down", true), "{} sees virginia down", nodes[i].name);
    }
    nodes[2].start();
    load.run(&nodes, &mut clients, &[0, 1, 2], 1000);
    assert_eq!(load.done, 10_000);

    let converge_start = Instant::now();
    converge_all(&nodes, Duration::from_secs(180));
    let converge_time = converge_start.elapsed();

    // Requests still pending where they were made are decided once the
    // worker's next pass reaches them.
    for n in &nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
        while n.client().query_one("SELECT count(*) FROM converge.requests WHERE status = 'pending'", &[]).unwrap().get::<_, i64>(0) > 0 {
            assert!(Instant::now() < deadline, "requests left pending on {}", n.name);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    converge_all(&nodes, Duration::from_secs(60));
    // Every row byte-identical on every node (canonical text output).
    assert_identical(&nodes, &["ctr", "item", "incident", "dev"]);
    converge_cluster_tests::coordinated::check(&nodes);
    // The notes were really edited concurrently: text survives in many rows.
    let (notes, chars): (i64, Option<i64>) = {
        let r = nodes[0]
            .client()
            .query_one("SELECT count(*) FILTER (WHERE converge.length(notes) > 0), sum(converge.length(notes))::int8 FROM item", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    eprintln!("seqtext notes: {notes} rows with text, {chars:?} characters in all");
    assert!(notes > 5, "only {notes} rows have notes");
    // Every acknowledged increment, exactly once, everywhere.
    load.expect.check(&nodes);
    // No op shipped back to the node that made it; every peer caught up.
    let mut report = Vec::new();
    for n in &nodes {
        let mut c = n.client();
        let back: i64 = c
            .query_one("SELECT count(*) FROM converge.op_log WHERE actor = converge.node() AND origin <> 'local'", &[])
            .unwrap()
            .get(0);
        assert_eq!(back, 0, "ops that came back to {}", n.name);
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE outcome = 'applied' AND origin = 'local'),
                        count(*) FILTER (WHERE outcome = 'applied' AND origin <> 'local'),
                        count(*) FILTER (WHERE outcome = 'duplicate'),
                        (SELECT count(*) FROM converge.pending),
                        (SELECT string_agg(format('%s %s %s', n, outcome, reason), ', ' ORDER BY outcome, reason)
                           FROM (SELECT outcome, reason, count(*) n FROM converge.quarantine GROUP BY 1, 2) q)
                   FROM converge.op_log",
                &[],
            )
            .unwrap();
        let (local, remote, dup, other): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(other, 0, "ops left pending on {}", n.name);
        let peers: i64 = c
            .query_one("SELECT count(*) FROM converge.peers WHERE state = 'ok' AND lag_bytes >= 0", &[])
            .unwrap()
            .get(0);
        assert_eq!(peers, 2, "peers of {} all ok", n.name);
        let aside: Option<String> = row.get(4);
        report.push(format!(
            "{}: {local} local ops, {remote} received, {dup} duplicates (redelivered); kept out: {}",
            n.name,
            aside.unwrap_or_else(|| "none".into())
        ));
    }
    // (Each node holds the same applied ops: coordinated::check.)

    // remove_peer leaves no slot or origin behind, and converge.stats keeps
    // the removed peers' traffic (its counters never fall).
    let traffic = "SELECT ARRAY[ops_received, bytes_received, ops_shipped, bytes_shipped] FROM converge.stats";
    let mut before = Vec::new();
    for n in &nodes {
        let mut c = n.client();
        before.push(c.query_one(traffic, &[]).unwrap().get::<_, Vec<i64>>(0));
        for other in NAMES.iter().filter(|o| **o != n.name) {
            c.execute("SELECT converge.remove_peer($1)", &[other]).unwrap();
        }
    }
    for (n, before) in nodes.iter().zip(&before) {
        let mut c = n.client();
        let after: Vec<i64> = c.query_one(traffic, &[]).unwrap().get(0);
        assert!(before[0] > 0 && after.iter().zip(before).all(|(a, b)| a >= b), "traffic on {}: {before:?}, then {after:?}", n.name);
        let slots: i64 = c.query_one("SELECT count(*) FROM pg_replication_slots", &[]).unwrap().get(0);
        let origins: i64 = c.query_one("SELECT count(*) FROM pg_replication_origin", &[]).unwrap().get(0);
        assert_eq!((slots, origins), (0, 0), "slots and origins left on {}", n.name);
    }
    let co = load.coord.as_ref().unwrap();
    eprintln!(
        "cluster: 10000 ops ({:?}; {} requests, {} freezes, {} device ops, {} revocations; {} statements retried after 40P01); converged {:.1}s after the last write; total {:.0}s\n  {}",
        load.by_node,
        co.requests,
        co.freezes,
        co.device_ops,
        co.revocations,
        load.retries,
        converge_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        report.join("\n  ")
    );
}

/// Bytes a peer receives for one keystroke in a 100 000-character seqtext,
/// measured from the slot: independent of the note's size.
#[test]
fn a_keystroke_in_a_100k_note_ships_under_200_bytes() {
    let root = Scratch::new("keystroke");
    let node = Node::new(&root.0, "madrid", base_port() + 11, false);
    let mut c = node.client();
    c.batch_execute(
        "CREATE EXTENSION converge;
         SELECT converge.set_node('madrid');
         CREATE TABLE note (id int PRIMARY KEY, body converge.seqtext);
         SELECT converge.replicate('note');
         INSERT INTO note VALUES (1, converge.insert(NULL::converge.seqtext, 0, repeat('lorem ipsum ', 8334)));
         UPDATE note SET body = converge.delete(body, 100000, converge.length(body) - 100000) WHERE id = 1;",
    )
    .unwrap();
    let n: i64 = c.query_one("SELECT converge.length(body) FROM note", &[]).unwrap().get(0);
    assert_eq!(n, 100_000);
    let (messages, total) = shipped(&mut c, "UPDATE note SET body = converge.insert(body, 50000, 'k') WHERE id = 1", "one keystroke in a 100 000-character note");
    assert_eq!(messages, 2, "one op and one commit");
    assert!(total < 200, "{total} bytes shipped for one keystroke");
}

/// Bytes a peer receives for one `add` to an orset of 10 000 elements,
/// measured from the slot: independent of the set's size.
#[test]
fn add_to_a_10k_orset_ships_a_few_dozen_bytes() {
    let root = Scratch::new("bytes");
    let node = Node::new(&root.0, "madrid", base_port() + 10, false);
    let mut c = node.client();
    c.batch_execute(
        "CREATE EXTENSION converge;
         SELECT converge.set_node('madrid');
         CREATE TABLE big (id int PRIMARY KEY, s converge.orset);
         SELECT converge.replicate('big');
         INSERT INTO big VALUES (1, (SELECT converge.merge_agg(converge.add(NULL::converge.orset, 'e' || g)) FROM generate_series(1, 10000) g));",
    )
    .unwrap();
    let n: i32 = c.query_one("SELECT cardinality(converge.elements(s)) FROM big", &[]).unwrap().get(0);
    assert_eq!(n, 10_000);
    let (messages, total) = shipped(&mut c, "UPDATE big SET s = converge.add(s, 'one more') WHERE id = 1", "add to a 10k orset");
    assert_eq!(messages, 2, "one op and one commit");
    assert!(total < 200, "{total} bytes shipped for one add");
}

/// Two nodes in the `postgres` database, each with converge, its node
/// name, and `ddl` run (not yet peers).
fn two_nodes(root: &Scratch, names: [&str; 2], port: u16, worker: bool, ddl: &str) -> Vec<Node> {
    let nodes: Vec<Node> = names.iter().enumerate().map(|(i, n)| Node::new(&root.0, n, port + i as u16, worker)).collect();
    for n in &nodes {
        let mut c = n.client();
        c.batch_execute("CREATE EXTENSION converge").unwrap();
        c.execute("SELECT converge.set_node($1)", &[&n.name]).unwrap();
        c.batch_execute(ddl).unwrap();
    }
    nodes
}

/// Run `sql` and read what a peer's slot gets for it: (messages, bytes).
fn shipped(c: &mut postgres::Client, sql: &str, what: &str) -> (i64, i64) {
    c.batch_execute("SELECT pg_create_logical_replication_slot('measure', 'converge')").unwrap();
    c.batch_execute(sql).unwrap();
    let row = c
        .query_one(
            "SELECT count(*), sum(length(data))::int8, max(length(data)) FILTER (WHERE get_byte(data, 0) = 79)
               FROM pg_logical_slot_peek_binary_changes('measure', NULL, NULL)",
            &[],
        )
        .unwrap();
    let (messages, total, op): (i64, i64, Option<i32>) = (row.get(0), row.get(1), row.get(2));
    eprintln!("{what}: {messages} messages, {total} bytes in all (op message {op:?} bytes)");
    c.batch_execute("SELECT pg_drop_replication_slot('measure')").unwrap();
    (messages, total)
}

fn count(c: &mut postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// A database other than `postgres`, with no setting naming it, used by an
/// ordinary application role and replicated by peers that connect as the
/// least-privilege peer role with a password: the worker of each node finds
/// the database by itself. No-op mutators on NULL columns leave every node
/// with the same row text (NULL and '{}' must not diverge).
#[test]
fn a_new_database_replicates_for_ordinary_roles_with_no_setting() {
    // The advisory locks `app` holds for the whole test stall nothing:
    // converge's own are tags no SQL function can make (src/locks.rs).
    let Fieldcare { _root, nodes, mut lisbon, mut oslo, squatters } = fieldcare_pair("newdb", base_port() + 20, true);
    // The application role writes on both nodes, with no-op mutators on NULL columns.
    lisbon
        .batch_execute(
            "INSERT INTO note VALUES (1, 'pump', NULL, NULL, NULL);
             UPDATE note SET tags = converge.remove(tags, 'nothing'), parts = converge.remove(parts, 'k') WHERE id = 1;
             UPDATE note SET parts = converge.remove(parts, 'k', 'e'), n = converge.incr(n, 0) WHERE id = 1;",
        )
        .unwrap();
    oslo.batch_execute(
        "INSERT INTO note VALUES (2, 'valve', NULL, NULL, NULL);
         UPDATE note SET tags = converge.add(tags, 'urgent'), parts = converge.add(converge.add(parts, 'seals', 'a'), 'seals', 'b') WHERE id = 2;",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let dump = |c: &mut postgres::Client| -> String {
        c.query_one("SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY id), '') FROM note t", &[]).unwrap().get(0)
    };
    loop {
        let (a, b) = (dump(&mut lisbon), dump(&mut oslo));
        if a == b && a.lines().count() == 2 {
            eprintln!("fieldcare on both nodes:\n{a}");
            // The no-op mutators stored empty values, not NULL, on every node.
            let first = a.lines().next().unwrap();
            assert!(first.starts_with("(1,pump,{},{},") && !first.ends_with(",)"), "row 1: {first}");
            break;
        }
        assert!(Instant::now() < deadline, "fieldcare did not converge:\nlisbon:\n{a}\noslo:\n{b}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let parts: String = oslo.query_one("SELECT converge.get(parts, 'seals')::text FROM note WHERE id = 2", &[]).unwrap().get(0);
    assert_eq!(parts, r#"["a", "b"]"#);
    // Both peers report ok: a worker serves this database.
    for n in &nodes {
        let mut admin = postgres::Client::connect(&n.conninfo_as("postgres", "fieldcare"), postgres::NoTls).unwrap();
        let states: Vec<String> = admin.query("SELECT state FROM converge.peers", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(states, vec!["ok".to_string()], "{}: peers of fieldcare", n.name);
        // The peer role is no superuser and the app role wrote without one.
        let su: bool = admin.query_one("SELECT bool_or(rolsuper) FROM pg_roles WHERE rolname IN ('app', 'converge_peer')", &[]).unwrap().get(0);
        assert!(!su);
    }
    drop(squatters);
}

/// A worker keeps its database's lock through a failed transaction: an
/// application trigger on oslo refuses lisbon's next row until it is
/// dropped, and a reload meanwhile (the launcher starts a worker for every
/// database again) must not bring a second worker to fieldcare.
#[test]
fn a_worker_keeps_its_database_through_a_failed_transaction() {
    let Fieldcare { _root, nodes, mut lisbon, mut oslo, .. } = fieldcare_pair("workerlock", base_port() + 25, false);
    lisbon.batch_execute("INSERT INTO note VALUES (1, 'pump', NULL, NULL, NULL), (2, 'valve', NULL, NULL, NULL)").unwrap();
    notes_reach(&mut oslo, 2, "lisbon's rows did not reach oslo");
    let mut oslo_admin = postgres::Client::connect(&nodes[1].conninfo_as("postgres", "fieldcare"), postgres::NoTls).unwrap();
    oslo_admin
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'not now'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON note FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .unwrap();
    lisbon.batch_execute("INSERT INTO note VALUES (3, 'hose', NULL, NULL, NULL)").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&mut oslo_admin, "SELECT count(*) FROM converge.peers WHERE last_error LIKE '%not now%'") == 0 {
        assert!(Instant::now() < deadline, "oslo's worker did not fail on the refused row");
        std::thread::sleep(Duration::from_millis(200));
    }
    const WORKERS: &str = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'converge worker' AND datname = 'fieldcare'";
    const LOCKS: &str = "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                          WHERE l.locktype = 'advisory' AND l.objsubid = 7 AND l.granted AND d.datname = 'fieldcare'";
    assert_eq!(count(&mut oslo_admin, LOCKS), 1, "oslo's worker holds its lock after its transaction failed");
    // The workers a reload starts try for 10 s to take the lock, then leave.
    oslo_admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&mut oslo_admin, WORKERS) != 1 {
        assert_eq!(count(&mut oslo_admin, LOCKS), 1, "one worker holds fieldcare's lock on oslo");
        assert!(Instant::now() < deadline, "the workers a reload started for fieldcare on oslo did not leave");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(count(&mut oslo_admin, LOCKS), 1, "one worker holds fieldcare's lock on oslo");
    oslo_admin.batch_execute("DROP TRIGGER refuse ON note").unwrap();
    notes_reach(&mut oslo, 3, "lisbon's row 3 did not reach oslo once the trigger was gone");
}

/// The upgrade recipe's `pause_peer` and `add_peer` right after it: the
/// copy waits while another process has the peer's replication origin (the
/// worker, in the middle of one of its batches; here a session that holds
/// it for 2 s, then writes the peer's status row as the worker does before
/// it lets go) instead of failing with 55006.
#[test]
fn add_peer_waits_while_the_peers_origin_is_busy() {
    let Fieldcare { _root, nodes, mut lisbon, mut oslo, .. } = fieldcare_pair("busyorigin", base_port() + 27, false);
    let admin = || postgres::Client::connect(&nodes[1].conninfo_as("postgres", "fieldcare"), postgres::NoTls).unwrap();
    lisbon.batch_execute("INSERT INTO note VALUES (1, 'pump', NULL, NULL, NULL)").unwrap();
    notes_reach(&mut oslo, 1, "row 1 did not reach oslo");
    let mut oslo_admin = admin();
    oslo_admin.batch_execute("SELECT converge.pause_peer('lisbon')").unwrap();
    // Row 2 is for add_peer's copy to apply, under lisbon's origin.
    lisbon.batch_execute("INSERT INTO note VALUES (2, 'valve', NULL, NULL, NULL)").unwrap();
    let origin: String = oslo_admin.query_one("SELECT origin_name FROM converge.peer WHERE name = 'lisbon'", &[]).unwrap().get(0);
    let mut holder = admin();
    let deadline = Instant::now() + Duration::from_secs(30);
    // (The worker may still be applying under it.)
    while let Err(e) = holder.execute("SELECT pg_replication_origin_session_setup($1)", &[&origin]) {
        assert!(e.code().map(|c| c.code()) == Some("55006") && Instant::now() < deadline, "taking {origin}: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        // As the worker ends a batch: its peer_status row, the commit, then
        // the origin (add_peer must not hold that row while it waits).
        holder
            .batch_execute(
                "BEGIN; UPDATE converge.peer_status SET last_error = NULL WHERE name = 'lisbon'; COMMIT;
                 SELECT pg_replication_origin_session_reset()",
            )
            .unwrap();
        holder
    });
    let started = Instant::now();
    let added = oslo_admin.execute("SELECT converge.add_peer('lisbon', $1)", &[&nodes[0].peer_conninfo("fieldcare")]);
    let waited = started.elapsed();
    let _holder = release.join().unwrap();
    if let Err(e) = added {
        panic!("add_peer while the origin was busy: {}", e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()));
    }
    assert!(waited >= Duration::from_millis(1500), "add_peer returned after {waited:?}, before the origin was free");
    assert_eq!(count(&mut oslo, "SELECT count(*) FROM note"), 2, "row 2 copied by add_peer");
}

/// `sync` whose apply is rolled back (a savepoint, a PL/pgSQL exception
/// block) must not let the commit record the peer's progress: the next
/// round would skip ops this node never kept. A rolled-back first sync also
/// leaves the rest of the transaction this node's own (shipped), and one
/// rolled back after a kept sync goes back to the kept sync's progress.
/// Then a peer added again and removed in one transaction.
#[test]
fn a_sync_rolled_back_in_a_savepoint_loses_nothing() {
    let root = Scratch::new("syncsavepoint");
    let nodes = two_nodes(&root, ["madrid", "dublin"], base_port() + 33, false, "CREATE TABLE t (id int PRIMARY KEY, g converge.gcounter); SELECT converge.replicate('t');");
    full_mesh(&nodes);
    let (mut madrid, mut dublin) = (nodes[0].client(), nodes[1].client());
    let rows = |c: &mut postgres::Client| -> String {
        c.query_one("SELECT coalesce(string_agg(id || '=' || converge.value(g), ' ' ORDER BY id), '') FROM t", &[]).unwrap().get(0)
    };
    madrid.batch_execute("INSERT INTO t VALUES (1, converge.incr(NULL::converge.gcounter, 5)), (2, converge.incr(NULL::converge.gcounter, 7))").unwrap();

    dublin.batch_execute("BEGIN; SAVEPOINT s; SELECT converge.sync('madrid'); ROLLBACK TO s; INSERT INTO t VALUES (9, converge.incr(NULL::converge.gcounter, 1)); COMMIT").unwrap();
    assert_eq!(rows(&mut dublin), "9=1", "the rolled-back sync kept nothing");
    dublin.batch_execute("DO $$ BEGIN PERFORM converge.sync('madrid'); RAISE EXCEPTION 'undo'; EXCEPTION WHEN raise_exception THEN NULL; END $$").unwrap();
    assert_eq!(rows(&mut dublin), "9=1", "the sync in the exception block kept nothing");
    let got: i64 = dublin.query_one("SELECT converge.sync('madrid')", &[]).unwrap().get(0);
    assert_eq!(rows(&mut dublin), "1=5 2=7 9=1", "the next sync brings madrid's rows ({got} ops)");
    // Row 9 was written after the rollback: dublin's own, shipped to madrid.
    madrid.batch_execute("SELECT converge.sync('dublin')").unwrap();
    assert_eq!(rows(&mut madrid), "1=5 2=7 9=1", "dublin's row 9 reached madrid");

    // A kept sync, then one rolled back: the commit records the first's progress.
    madrid.batch_execute("UPDATE t SET g = converge.incr(g, 10) WHERE id = 1").unwrap();
    dublin.batch_execute("BEGIN; SELECT converge.sync('madrid'); SAVEPOINT s").unwrap();
    madrid.batch_execute("UPDATE t SET g = converge.incr(g, 100) WHERE id = 2").unwrap();
    dublin.batch_execute("SELECT converge.sync('madrid'); ROLLBACK TO s; COMMIT").unwrap();
    assert_eq!(rows(&mut dublin), "1=15 2=7 9=1", "the first sync kept, the second undone");
    let got: i64 = dublin.query_one("SELECT converge.sync('madrid')", &[]).unwrap().get(0);
    assert_eq!(got, 1, "the next round starts after the kept sync (not before it)");
    assert_eq!(rows(&mut dublin), "1=15 2=107 9=1", "the undone sync's op arrives with the next");
    madrid.batch_execute("SELECT converge.sync('dublin')").unwrap();
    assert_eq!(rows(&mut madrid), rows(&mut dublin));

    // A peer added again and removed in one transaction: the origin the
    // re-add holds is let go (it was refused with 55006, in use), unless
    // the copy applied ops under it.
    let conninfo = nodes[0].peer_conninfo("postgres");
    madrid.batch_execute("UPDATE t SET g = converge.incr(g, 1000) WHERE id = 1").unwrap();
    dublin.batch_execute("BEGIN").unwrap();
    dublin.execute("SELECT converge.add_peer('madrid', $1)", &[&conninfo]).unwrap();
    let err = dublin.batch_execute("SELECT converge.remove_peer('madrid')").unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!((db.code().code(), db.message()), ("55006", "peer \"madrid\"'s ops were applied in this transaction; remove it in a transaction of its own"));
    dublin.batch_execute("ROLLBACK").unwrap();
    dublin.batch_execute("SELECT converge.sync('madrid')").unwrap();
    assert_eq!(rows(&mut dublin), "1=1015 2=107 9=1");
    dublin.batch_execute("BEGIN").unwrap();
    dublin.execute("SELECT converge.add_peer('madrid', $1)", &[&conninfo]).unwrap();
    dublin.batch_execute("SELECT converge.remove_peer('madrid'); COMMIT").unwrap();
    assert_eq!(count(&mut dublin, "SELECT count(*) FROM converge.peer"), 0, "madrid removed on dublin");
    assert_eq!(count(&mut dublin, "SELECT count(*) FROM pg_replication_origin"), 0, "its origin dropped");
    assert_eq!(count(&mut madrid, "SELECT count(*) FROM pg_replication_slots"), 0, "dublin's slot on madrid dropped");
    assert_eq!(count(&mut dublin, "SELECT count(*) FROM pg_replication_slots"), 1, "madrid's slot on dublin stays");
}

/// While an administrator adds a peer again (holding its origin and its
/// status row until commit), the worker's failed batches for that peer
/// (the origin is in use) do not wait on the status row: a worker stuck
/// there would hold up every other peer of the database.
#[test]
fn a_worker_does_not_wait_on_a_peer_being_added_again() {
    let Fieldcare { _root, nodes, mut lisbon, mut oslo, .. } = fieldcare_pair("readd", base_port() + 35, false);
    lisbon.batch_execute("INSERT INTO note VALUES (1, 'pump', NULL, NULL, NULL)").unwrap();
    notes_reach(&mut oslo, 1, "row 1 did not reach oslo");
    let mut admin = postgres::Client::connect(&nodes[1].conninfo_as("postgres", "fieldcare"), postgres::NoTls).unwrap();
    let mut watch = postgres::Client::connect(&nodes[1].conninfo_as("postgres", "fieldcare"), postgres::NoTls).unwrap();
    let mut lisbon_admin = nodes[0].client();
    // The worker that serves fieldcare holds its lock (another one that a
    // commit started may be waiting for it a few seconds, then leaves).
    const WORKER: &str = "SELECT coalesce(string_agg(l.pid::text, ' '), '') FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                           WHERE l.locktype = 'advisory' AND l.objsubid = 7 AND l.granted AND d.datname = 'fieldcare'";
    const STREAMING: &str = "SELECT coalesce(max(active_pid), 0)::int8 FROM pg_replication_slots WHERE slot_name LIKE 'converge\\_oslo\\_%'";
    let worker: String = watch.query_one(WORKER, &[]).unwrap().get(0);
    assert!(!worker.is_empty(), "oslo has a worker for fieldcare");
    admin.batch_execute("BEGIN").unwrap();
    admin.execute("SELECT converge.add_peer('lisbon', $1)", &[&nodes[0].peer_conninfo("fieldcare")]).unwrap();
    // The worker now puts back each batch of lisbon's (the status row and
    // the origin are held) and tries it again every 0.5 s.
    lisbon.batch_execute("INSERT INTO note VALUES (2, 'valve', NULL, NULL, NULL)").unwrap();
    let mut streams = std::collections::BTreeSet::new();
    never_waits(&mut watch, "oslo's worker, while lisbon is added again", || {
        streams.insert(count(&mut lisbon_admin, STREAMING));
    });
    // The worker kept going: each failed batch ends its stream from lisbon
    // and it streams again (a new walsender there), row 2 never applied.
    streams.remove(&0);
    eprintln!("worker {worker}; walsenders on lisbon for it during the re-add: {streams:?}");
    assert!(streams.len() >= 2, "oslo's worker streamed from lisbon again after failed batches (walsenders {streams:?})");
    assert_eq!(count(&mut oslo, "SELECT count(*) FROM note"), 1, "row 2 waits for the re-add");
    let now: String = watch.query_one(WORKER, &[]).unwrap().get(0);
    assert_eq!(now, worker, "the same worker");
    admin.batch_execute("COMMIT").unwrap();
    notes_reach(&mut oslo, 2, "row 2 did not reach oslo after the re-add");
}

/// Wait up to 60 s until `c` sees `n` rows in `note` (`what` names them).
fn notes_reach(c: &mut postgres::Client, n: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(c, "SELECT count(*) FROM note") != n {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// For 6 s, no converge worker of `c`'s server waits on a lock (`also`
/// runs at each look).
fn never_waits(c: &mut postgres::Client, who: &str, mut also: impl FnMut()) {
    const STUCK: &str = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'converge worker' AND wait_event_type = 'Lock'";
    const WAITS_ON: &str = "SELECT string_agg(l.locktype || ' ' || l.mode || ' ' || coalesce(l.relation::regclass::text, l.transactionid::text, ''), ', ')
                              FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted WHERE a.backend_type = 'converge worker'";
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        if count(c, STUCK) != 0 {
            let on: Option<String> = c.query_one(WAITS_ON, &[]).unwrap().get(0);
            panic!("{who} waits on a lock: {on:?}");
        }
        also();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two peers added again in one transaction: the second takes its origin
/// and lets go of the first's, so the worker can apply the first peer's
/// batch under it, while the transaction still holds that peer's status
/// row. The batch must wait for the commit without the worker waiting.
#[test]
fn a_worker_does_not_wait_on_two_peers_added_again_in_one_transaction() {
    let root = Scratch::new("readdtwo");
    let nodes = mesh_of_three(&root.0, base_port() + 37);
    let mut admin = nodes[0].client();
    let mut watch = nodes[0].client();
    const G1: &str = "SELECT converge.value(g)::text FROM ctr WHERE id = 1";
    let before = text(&nodes[0], G1);
    admin.batch_execute("BEGIN").unwrap();
    for n in &nodes[1..] {
        admin.execute("SELECT converge.add_peer($1, $2)", &[&n.name, &n.peer_conninfo("postgres")]).unwrap();
    }
    nodes[1].client().batch_execute("UPDATE ctr SET g = converge.incr(g, 5) WHERE id = 1").unwrap();
    never_waits(&mut watch, "madrid's worker, while dublin and virginia are added again", || {});
    assert_eq!(text(&nodes[0], G1), before, "dublin's increment waits for the re-adds");
    admin.batch_execute("COMMIT").unwrap();
    let want = (before.parse::<i64>().unwrap() + 5).to_string();
    wait_for(&nodes[0], G1, &want, "dublin's increment after the re-adds");
}

/// SPEC section 2's seqtext examples on real servers: two regions cut off
/// from each other type at the same place, one keystroke per statement,
/// and one deletes a range while the other inserts inside it. After the
/// partition heals both hold the same text, each typed run unbroken, and
/// the text typed inside the deleted range survives.
#[test]
fn seqtext_concurrent_edits_on_two_real_nodes() {
    let root = Scratch::new("seqtext");
    let ddl = "CREATE TABLE note (id int PRIMARY KEY, body converge.seqtext); SELECT converge.replicate('note');";
    let nodes = two_nodes(&root, ["lisbon", "oslo"], base_port() + 30, true, ddl);
    nodes[0].client().batch_execute("INSERT INTO note VALUES (1, converge.insert(NULL, 0, 'Pump [] stopped; valve ok.'))").unwrap();
    full_mesh(&nodes);
    converge_all(&nodes, Duration::from_secs(60));
    pause(&nodes, 0, 1, true);
    // Both type inside the brackets (position 6), a character per statement.
    for (i, ch) in "LEFT".chars().enumerate() {
        nodes[0].client().execute(&format!("UPDATE note SET body = converge.insert(body, {}, '{ch}')", 6 + i), &[]).unwrap();
    }
    for (i, ch) in "right".chars().enumerate() {
        nodes[1].client().execute(&format!("UPDATE note SET body = converge.insert(body, {}, '{ch}')", 6 + i), &[]).unwrap();
    }
    // lisbon deletes "valve ok" while oslo inserts inside it.
    let text = |n: &Node| -> String { n.client().query_one("SELECT converge.value(body) FROM note", &[]).unwrap().get(0) };
    let at = text(&nodes[0]).find("valve").unwrap() as i64;
    nodes[0].client().execute("UPDATE note SET body = converge.delete(body, $1, 8)", &[&at]).unwrap();
    let at = text(&nodes[1]).find("valve").unwrap() as i64;
    nodes[1].client().execute("UPDATE note SET body = converge.insert(body, $1, 'new ')", &[&(at + 6)]).unwrap();
    eprintln!("during the partition:\n  lisbon: {}\n  oslo:   {}", text(&nodes[0]), text(&nodes[1]));
    pause(&nodes, 0, 1, false);
    converge_all(&nodes, Duration::from_secs(60));
    let (a, b) = (text(&nodes[0]), text(&nodes[1]));
    eprintln!("after healing:\n  lisbon: {a}\n  oslo:   {b}");
    assert_eq!(a, b);
    assert!(a == "Pump [LEFTright] stopped; new ." || a == "Pump [rightLEFT] stopped; new .", "{a}");
    let rows: Vec<String> = nodes.iter().map(|n| n.client().query_one("SELECT body::text FROM note", &[]).unwrap().get(0)).collect();
    assert_eq!(rows[0], rows[1], "the full states are identical");
}
