//! Running for months, on real nodes (SPEC section 6 and the lost-peer part
//! of section 4): compaction on a three-node mesh after thousands of ops
//! leaves every row byte-identical and replication working; a paused peer
//! holds the horizon back and loses nothing; a compacted node still answers
//! an offline client through `snapshot`; a peer down past
//! `converge.max_peer_lag_bytes` is marked lost, its slot dropped, the
//! others compact past it, and it rejoins by itself (from their rows) with
//! the edits the others never received; two sides that each marked the
//! other lost and compacted past it both keep every edit; a slot
//! PostgreSQL invalidated (`max_slot_wal_keep_size`) loses its peer too.
//!
//! Needs the extension installed (`cargo pgrx install`); `bash .ci/test`
//! runs it. Ports: CONVERGE_CLUSTER_PORT + 60..74 (test binaries run one
//! after another, so the last ones may be coordination.rs's too).

use converge_cluster_tests::lost::*;
use converge_cluster_tests::workload::*;
use converge_cluster_tests::*;
use std::time::{Duration, Instant};

fn base_port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710) + 60
}

#[test]
fn compaction_on_a_mesh_keeps_rows_and_replication_and_waits_for_a_paused_peer() {
    let root = Scratch::new("compact");
    let nodes = mesh_of_three(&root.0, base_port());
    // Only the nodes write item (step 5 has a client write ctr): its
    // tombstones and seqtext deleted characters are compacted.
    for n in &nodes {
        n.client().batch_execute("SELECT converge.set_client_writes('item', false)").unwrap();
    }
    let mut load = Load::new(0x2545f4914f6cdd1d);
    let mut clients: Vec<Option<postgres::Client>> = nodes.iter().map(|_| None).collect();
    load.run(&nodes, &mut clients, &[0, 1, 2], 3000);
    converge_all(&nodes, Duration::from_secs(120));
    wait_all_stable(&nodes);

    // 1. Compaction on a caught-up mesh: under 5% of the log stays, every
    //    row is what it was, and the same on every node.
    assert_identical(&nodes, &["ctr", "item"]);
    let before: Vec<String> = ["ctr", "item"].iter().map(|t| user_values(&nodes[0], t)).collect();
    let rows_before: Vec<i64> = nodes.iter().map(|n| count(n, "SELECT count(*) FROM converge.op_log")).collect();
    let removed = compact_all(&nodes);
    let rows_after: Vec<i64> = nodes.iter().map(|n| count(n, "SELECT count(*) FROM converge.op_log")).collect();
    eprintln!("op_log rows before {rows_before:?}, removed {removed:?}, after {rows_after:?}");
    for i in 0..3 {
        assert!(rows_after[i] * 20 < rows_before[i], "{}: {} of {} rows left", nodes[i].name, rows_after[i], rows_before[i]);
    }
    let after: Vec<String> = ["ctr", "item"].iter().map(|t| user_values(&nodes[0], t)).collect();
    assert_eq!(before, after, "compaction changed a value");
    // Compacted at the same point (everything stable), the full states agree too.
    assert_identical(&nodes, &["ctr", "item"]);
    let shrunk = count(&nodes[0], "SELECT coalesce(sum(values_compacted), 0)::int8 FROM converge.compactions");
    eprintln!("seqtext values compacted on madrid: {shrunk}");
    load.expect.check(&nodes);

    // 2. An offline client with an old cursor is sent to a snapshot, which works.
    let mut c = nodes[1].client();
    let err = c.query("SELECT * FROM converge.changes_since('{}')", &[]).unwrap_err();
    assert_eq!(err.code().map(|s| s.code()), Some("55000"), "{err:?}");
    let snap_rows: i64 = c
        .query_one("SELECT jsonb_array_length(converge.snapshot('item') -> 'rows')::int8", &[])
        .unwrap()
        .get(0);
    assert_eq!(snap_rows, count(&nodes[1], "SELECT count(*) FROM item"));

    // 3. Replication goes on after compaction.
    load.run(&nodes, &mut clients, &[0, 1, 2], 1000);
    converge_all(&nodes, Duration::from_secs(120));
    assert_identical(&nodes, &["ctr", "item"]);
    load.expect.check(&nodes);

    // 4. dublin and virginia partitioned: dublin's new ops are not at
    //    virginia, so dublin's compaction must keep them.
    pause(&nodes, 1, 2, true);
    load.run(&nodes, &mut clients, &[0, 1, 2], 600);
    std::thread::sleep(Duration::from_secs(2)); // the probes report meanwhile
    compact_all(&nodes);
    let virginia_has = count(&nodes[2], "SELECT coalesce((converge.frontier() ->> 'dublin')::int8, 0)");
    let dublin_made = count(&nodes[1], "SELECT (converge.frontier() ->> 'dublin')::int8");
    let horizon = count(&nodes[1], "SELECT coalesce((SELECT upto FROM converge.log_horizon WHERE actor = 'dublin'), 0)");
    let kept = count(&nodes[1], "SELECT count(*) FROM converge.op_log WHERE actor = 'dublin' AND outcome = 'applied'");
    eprintln!("paused: dublin made {dublin_made}, virginia has {virginia_has}, dublin's horizon {horizon}, kept {kept}");
    assert!(dublin_made > virginia_has, "dublin wrote while partitioned");
    assert!(horizon <= virginia_has, "dublin compacted ops virginia lacks");
    assert!(kept >= dublin_made - virginia_has, "dublin dropped ops virginia lacks");
    pause(&nodes, 1, 2, false);
    converge_all(&nodes, Duration::from_secs(120));
    // Nodes compacted seqtext values at different points: same text now,
    // the same full state once all compact with everything stable.
    assert_same_values(&nodes, &["ctr", "item"]);
    load.expect.check(&nodes);
    wait_all_stable(&nodes);
    compact_all(&nodes);
    assert_identical(&nodes, &["ctr", "item"]);
    let outcomes: i64 = nodes.iter().map(|n| count(n, "SELECT count(*) FROM converge.op_log WHERE outcome NOT IN ('applied', 'duplicate')")).sum();
    assert_eq!(outcomes, 0, "rejected or buffered ops");
    let applied: Vec<i64> = nodes.iter().map(|n| count(n, "SELECT applied FROM converge.stats")).collect();
    eprintln!("stats applied per node after compactions: {applied:?} (ops made: {})", load.done);
    assert!(applied.iter().all(|a| *a == applied[0]), "cumulative applied counts differ: {applied:?}");

    // 5. A client's late edit of a deleted row, sent to a node that has
    //    compacted while the others have not yet: ctr takes client writes
    //    (the default), so madrid kept the row's tombstone as the others
    //    did, and the edit leaves the row deleted on every node. Had madrid
    //    dropped it, it would take the edit as a new row and the others
    //    would keep the row deleted, for good.
    nodes[0].client().batch_execute("INSERT INTO ctr (id) VALUES (5000)").unwrap();
    nodes[0].client().batch_execute("DELETE FROM ctr WHERE id = 5000").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    wait_all_stable(&nodes);
    compact_all(&nodes[..1]);
    let tombstone = "SELECT count(*) FROM converge.row_state WHERE tbl = 'ctr'::regclass AND target_key = '{\"id\": 5000}'";
    assert_eq!(count(&nodes[0], tombstone), 1, "madrid dropped the tombstone of a table clients write");
    let late = "SELECT outcome FROM converge.apply(ROW('tablet9:1', 'tablet9', 'public.ctr', '{\"id\": 5000}', 'g', 1, 0,
                  '{}', '{\"counts\":{\"tablet9\":1}}'::converge.gcounter::bytea, NULL)::converge.op)";
    assert_eq!(text(&nodes[0], late), "applied");
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["ctr", "item"]);
    for n in &nodes {
        assert_eq!(count(n, "SELECT count(*) FROM ctr WHERE id = 5000"), 0, "{} brought the deleted row back", n.name);
    }

    // 6. Closing ctr to clients, node by node: madrid drops no tombstone
    //    while a peer may still take a client's edit, and drops it once
    //    both peers have reported the table closed with their frontiers.
    nodes[0].client().batch_execute("INSERT INTO ctr (id) VALUES (5001); DELETE FROM ctr WHERE id = 5001").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    wait_all_stable(&nodes);
    let closed = "SELECT converge.set_client_writes('ctr', false)";
    nodes[0].client().batch_execute(closed).unwrap();
    compact_all(&nodes[..1]);
    let tombstone = "SELECT count(*) FROM converge.row_state WHERE tbl = 'ctr'::regclass AND target_key = '{\"id\": 5001}'";
    assert_eq!(count(&nodes[0], tombstone), 1, "madrid dropped a tombstone while its peers took client writes");
    for n in &nodes[1..] {
        n.client().batch_execute(closed).unwrap();
    }
    let refused = "SELECT reason FROM converge.apply(ROW('tablet9:2', 'tablet9', 'public.ctr', '{\"id\": 5001}', 'g', 1, 0,
                   '{}', '{\"counts\":{\"tablet9\":2}}'::converge.gcounter::bytea, NULL)::converge.op)";
    assert_eq!(text(&nodes[1], refused), "client_writes_off");
    wait_for(&nodes[0], "SELECT count(*)::text FROM converge.peers WHERE closed_tables ? 'public.ctr'", "2", "the peers' reports of ctr closed");
    compact_all(&nodes[..1]);
    assert_eq!(count(&nodes[0], tombstone), 0, "madrid kept the tombstone once every node had closed ctr");
}

#[test]
fn a_peer_down_past_the_limit_is_lost_and_rejoins_with_its_unsent_edits() {
    let root = Scratch::new("lost");
    let nodes = mesh_losing_peers_past_1mb(&root.0, base_port() + 3);
    let mut load = Load::new(0x853c49e6748fea9b);
    let mut clients: Vec<Option<postgres::Client>> = nodes.iter().map(|_| None).collect();
    load.run(&nodes, &mut clients, &[0, 1, 2], 500);
    // Only nodes write item here, so compaction may drop its tombstones.
    for n in &nodes {
        n.client().batch_execute("SELECT converge.set_client_writes('item', false)").unwrap();
    }
    // A row with no CRDT state: its tombstone is what compaction drops.
    nodes[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1000, 'plain')").unwrap();
    // A table keyed by an array: its rows are copied too (a key is named
    // alike in ops and copies).
    for n in &nodes {
        n.client()
            .batch_execute("CREATE TABLE shelf (labels text[] PRIMARY KEY, id int, n converge.gcounter); SELECT converge.replicate('shelf')")
            .unwrap();
    }
    nodes[0]
        .client()
        .batch_execute("INSERT INTO shelf SELECT ARRAY['bay ' || g, 'b'], g, converge.incr(NULL::converge.gcounter, g) FROM generate_series(1, 20) g")
        .unwrap();
    converge_all(&nodes, Duration::from_secs(60));

    // virginia is cut off, writes what nobody else receives, and goes down.
    isolate(&nodes, 2, true);
    // Its slot on madrid and dublin keeps the WAL it does not take (here a
    // table's creation, far below the limit), and converge.peers says how
    // much: the number the limit is compared with.
    for i in [0, 1] {
        let idle = "SELECT coalesce((SELECT (NOT r.active)::text FROM pg_replication_slots r JOIN converge.peer_status s ON r.slot_name = s.their_slot
                                      WHERE s.name = 'virginia'), 'no slot')";
        wait_for(&nodes[i], idle, "true", "virginia's slot idle once she is cut off");
        let before = text(&nodes[i], "SELECT pg_current_wal_lsn()::text");
        nodes[i].client().batch_execute("CREATE TABLE held_probe (x int)").unwrap();
        let held = format!(
            "SELECT coalesce((pg_current_wal_lsn() > '{before}' AND wal_held_bytes >= pg_wal_lsn_diff(pg_current_wal_lsn(), '{before}'))::text, 'null')
               FROM converge.peers WHERE name = 'virginia'"
        );
        assert_eq!(text(&nodes[i], &held), "true", "{} shows at least the WAL written since virginia was cut off", nodes[i].name);
    }
    load.run(&nodes, &mut clients, &[2], 300);
    load.run(&nodes, &mut clients, &[0, 1], 300);
    for i in [0, 2] {
        nodes[i].client().batch_execute("UPDATE shelf SET n = converge.incr(n, 100) WHERE id <= 10").unwrap();
    }
    let unsent = count(&nodes[2], "SELECT (converge.frontier() ->> 'virginia')::int8");
    let virginia_had = count(&nodes[2], "SELECT (converge.frontier() ->> 'madrid')::int8");
    // virginia itself marks nobody lost (read when it starts again): the
    // rejoin checked below must not meet madrid's slot there past the limit.
    nodes[2].client().batch_execute("ALTER SYSTEM SET converge.max_peer_lag_bytes = -1").unwrap();
    nodes[2].stop_immediate();
    clients[2] = None;
    for i in [0, 1] {
        nodes[i].client().execute("SELECT converge.resume_peer('virginia')", &[]).unwrap();
    }
    // More than 1MB of WAL on madrid and dublin while virginia is away.
    for i in [0, 1] {
        fill_wal(&nodes[i], "filler");
    }
    wait_lost(&nodes, &[(0, "virginia"), (1, "virginia")]);
    for i in [0, 1] {
        let slots = count(&nodes[i], "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'converge_virginia_%'");
        assert_eq!(slots, 0, "{} still holds virginia's slot (and its WAL)", nodes[i].name);
        assert_eq!(count(&nodes[i], "SELECT lost_peers FROM converge.stats"), 1);
        assert_eq!(text(&nodes[i], "SELECT (wal_held_bytes IS NULL)::text FROM converge.peers WHERE name = 'virginia'"), "true");
    }
    // A slot virginia makes again to rejoin and then leaves idle (its copy
    // failed, or it went down again) holds WAL like any: dropped past the
    // limit, virginia still lost.
    let slot = text(&nodes[0], "SELECT their_slot FROM converge.peer_status WHERE name = 'virginia'");
    assert!(slot.starts_with("converge_virginia_"), "{slot}");
    nodes[0].client().execute("SELECT pg_create_logical_replication_slot($1, 'converge')", &[&slot]).unwrap();
    fill_wal(&nodes[0], "refiller");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&nodes[0], &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'")) > 0 {
        assert!(Instant::now() < deadline, "madrid keeps the idle slot {slot} of lost virginia");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(text(&nodes[0], "SELECT state FROM converge.peers WHERE name = 'virginia'"), "lost");
    // A lost peer no longer holds the horizon back: with virginia's report
    // counted, madrid's and dublin's newest ops could never be stable.
    load.run(&nodes, &mut clients, &[0, 1], 100);
    nodes[0].client().batch_execute("DELETE FROM item WHERE id = 1000").unwrap();
    wait_all_stable(&nodes[..2]);
    // So madrid and dublin compact past what virginia has: its rejoin must
    // copy their rows, not their ops, and forget the row deleted meanwhile.
    compact_all(&nodes[..2]);
    let horizon = count(&nodes[0], "SELECT upto FROM converge.log_horizon WHERE actor = 'madrid'");
    assert!(horizon > virginia_had, "madrid compacted through {horizon}, virginia has up to {virginia_had}");
    // While virginia is lost, its edits made meanwhile may be concurrent
    // with what the others remove: tombstones and in-value metadata stay.
    assert_eq!(count(&nodes[0], "SELECT count(*) FROM converge.row_state WHERE target_key = '{\"id\": 1000}'"), 1);
    assert_eq!(count(&nodes[0], "SELECT values_compacted + tombstones_removed FROM converge.compactions ORDER BY ran_at DESC LIMIT 1"), 0);

    // virginia comes back: it finds its slots gone, rejoins, and everything
    // it wrote while cut off reaches the others.
    nodes[2].start();
    // While a user's transaction on virginia holds the tables its copy of
    // madrid's rows must write, the rejoin cannot finish: virginia shows
    // madrid `rejoining` (and the lock wait as its error), madrid still shows
    // virginia `lost`. Once the lock goes, the unfinished rejoin is done again.
    let mut holder = nodes[2].client();
    let mut held = holder.transaction().unwrap();
    held.batch_execute("LOCK TABLE ctr, item, shelf IN SHARE MODE").unwrap();
    nodes[2].client().execute("SELECT converge.resume_peer('madrid')", &[]).unwrap();
    wait_for(&nodes[2], "SELECT state FROM converge.peers WHERE name = 'madrid'", "rejoining", "virginia shows madrid rejoining while its copy waits");
    let why = "SELECT coalesce(last_error LIKE 'rejoining: %lock timeout%', false)::text FROM converge.peers WHERE name = 'madrid'";
    wait_for(&nodes[2], why, "true", "virginia says why the rejoin waits");
    assert_eq!(text(&nodes[2], "SELECT state FROM converge.peers WHERE name = 'madrid'"), "rejoining");
    assert_eq!(text(&nodes[0], "SELECT state FROM converge.peers WHERE name = 'virginia'"), "lost");
    held.rollback().unwrap();
    wait_for(&nodes[2], "SELECT state FROM converge.peers WHERE name = 'madrid'", "ok", "virginia's rejoin of madrid done once the lock goes");
    nodes[2].client().execute("SELECT converge.resume_peer('dublin')", &[]).unwrap();
    load.run(&nodes, &mut clients, &[0, 1, 2], 200);
    converge_all(&nodes, Duration::from_secs(120));
    // madrid and dublin compacted seqtext values virginia has not: same text,
    // and the same full state once all compact with everything stable.
    assert_same_values(&nodes, &["ctr", "item"]);
    load.expect.check(&nodes);
    for i in [0, 1] {
        let has = count(&nodes[i], "SELECT (converge.frontier() ->> 'virginia')::int8");
        assert!(has >= unsent, "{} has virginia's ops up to {has}, virginia made {unsent} while cut off", nodes[i].name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while text(&nodes[i], "SELECT state FROM converge.peers WHERE name = 'virginia'") != "ok" {
            assert!(Instant::now() < deadline, "{} still sees virginia as {}", nodes[i].name,
                    text(&nodes[i], "SELECT state FROM converge.peers WHERE name = 'virginia'"));
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    wait_all_stable(&nodes);
    compact_all(&nodes);
    assert_identical(&nodes, &["ctr", "item", "shelf"]);
    assert_eq!(count(&nodes[0], "SELECT sum(converge.value(n))::int8 FROM shelf"), 210 + 2000);
    for n in &nodes {
        // Rejoined and stable: the deleted row's tombstone goes everywhere.
        assert_eq!(count(n, "SELECT count(*) FROM converge.row_state WHERE target_key = '{\"id\": 1000}'"), 0, "{}", n.name);
    }
    let log = std::fs::read_to_string(nodes[2].dir.join("server.log")).unwrap_or_default();
    assert!(log.contains("rejoined peer \"madrid\"") && log.contains("rejoined peer \"dublin\""), "virginia's log shows no rejoin");
    let ours: Vec<&str> = log.lines().filter(|l| l.contains("converge")).collect();
    // The first peer it rejoins sends its rows (both compacted past it);
    // that brings virginia's frontier up to date, so the second may send ops.
    assert!(log.contains("from the snapshot of peer"), "virginia did not rejoin from a snapshot: {ours:#?}");
    assert_eq!(count(&nodes[2], "SELECT count(*) FROM item WHERE id = 1000"), 0, "virginia kept the row deleted while it was lost");
}

/// Two sides that each marked the other lost, and each compacted past the
/// other: virginia is cut off from madrid and dublin (both ways) while all
/// three write; each side's slots for the other hold more than the limit,
/// so each marks the other lost and folds its own ops the other never
/// received into its rows. When the link comes back, each side rejoins
/// the other from its rows, at the same time, and neither may lose what
/// the other wrote while they were apart.
#[test]
fn two_sides_that_marked_each_other_lost_both_keep_their_edits() {
    let root = Scratch::new("lost-both");
    let nodes = mesh_losing_peers_past_1mb(&root.0, base_port() + 6);
    let mut load = Load::new(0x9e3779b97f4a7c15);
    let mut clients: Vec<Option<postgres::Client>> = nodes.iter().map(|_| None).collect();
    load.run(&nodes, &mut clients, &[0, 1, 2], 300);
    // Rows the load never touches, for removals made while apart: merging
    // the other side's old copy must not bring them back.
    nodes[0]
        .client()
        .batch_execute(
            "INSERT INTO item (id, title) VALUES (2000, 'kept');
             UPDATE item SET tags = converge.add(converge.add(tags, 'm-removes'), 'v-removes'),
                             notes = converge.insert(notes, 0, 'hello world') WHERE id = 2000;
             INSERT INTO item (id, title) VALUES (3000, 'deleted while apart');",
        )
        .unwrap();
    converge_all(&nodes, Duration::from_secs(60));

    // The link between virginia and the others goes; both sides write.
    isolate(&nodes, 2, true);
    nodes[0]
        .client()
        .batch_execute(
            "UPDATE item SET tags = converge.remove(tags, 'm-removes'), notes = converge.delete(notes, 0, 6) WHERE id = 2000;
             DELETE FROM item WHERE id = 3000;",
        )
        .unwrap();
    nodes[2].client().batch_execute("UPDATE item SET tags = converge.remove(tags, 'v-removes') WHERE id = 2000").unwrap();
    load.run(&nodes, &mut clients, &[2], 300);
    load.run(&nodes, &mut clients, &[0, 1], 300);
    let apart = count(&nodes[2], "SELECT (converge.frontier() ->> 'virginia')::int8");
    let madrid_apart = count(&nodes[0], "SELECT (converge.frontier() ->> 'madrid')::int8");
    // More than 1MB of WAL on every node: each side's slots for the other
    // go, and each side marks the other lost.
    for n in &nodes {
        fill_wal(n, "filler");
    }
    wait_lost(&nodes, &[(0, "virginia"), (1, "virginia"), (2, "madrid"), (2, "dublin")]);
    // Each side compacts past the other: virginia folds its own ops that
    // madrid and dublin never received, and they fold theirs.
    load.run(&nodes, &mut clients, &[2], 100);
    load.run(&nodes, &mut clients, &[0, 1], 100);
    wait_all_stable(&nodes[..2]);
    compact_all(&nodes);
    let folded = count(&nodes[2], "SELECT upto FROM converge.log_horizon WHERE actor = 'virginia'");
    assert!(folded > apart, "virginia compacted its own ops through {folded}; it made up to {apart} before it was cut off");
    let folded = count(&nodes[0], "SELECT upto FROM converge.log_horizon WHERE actor = 'madrid'");
    assert!(folded > madrid_apart, "madrid compacted its own ops through {folded}; it made up to {madrid_apart} before the cut");

    // The link comes back: each side finds its slots on the other gone and
    // rejoins from the other's rows.
    isolate(&nodes, 2, false);
    load.run(&nodes, &mut clients, &[0, 1, 2], 100);
    converge_all(&nodes, Duration::from_secs(120));
    assert_same_values(&nodes, &["ctr", "item"]);
    load.expect.check(&nodes);
    // Every lost mark cleared (each node's check, every 5 s, sees the
    // peer stream from its new slot): a node that still marks a peer lost
    // keeps the metadata the others drop, so the compactions would differ.
    wait_all_ok(&nodes);
    wait_all_stable(&nodes);
    compact_all(&nodes);
    assert_identical(&nodes, &["ctr", "item"]);
    for n in &nodes {
        let kept = text(n, "SELECT converge.elements(tags)::text || ' ' || converge.value(notes) FROM item WHERE id = 2000");
        assert_eq!(kept, "{} world", "{}: a removal made while apart came back", n.name);
        assert_eq!(count(n, "SELECT count(*) FROM item WHERE id = 3000"), 0, "{}: the row deleted while apart came back", n.name);
    }
    for i in [0, 2] {
        let log = std::fs::read_to_string(nodes[i].dir.join("server.log")).unwrap_or_default();
        assert!(log.contains("from the snapshot of peer"), "{} did not rejoin from a snapshot", nodes[i].name);
    }
}

/// Partitions past the limit, again and again, each cutting off another
/// node while every node writes and compacts: after each heal every
/// acknowledged increment is counted once everywhere and the rows are
/// identical.
#[test]
fn repeated_partitions_past_the_limit_lose_nothing() {
    let root = Scratch::new("lost-again");
    let nodes = mesh_losing_peers_past_1mb(&root.0, base_port() + 9);
    let mut load = Load::new(0x2545f4914f6cdd1d);
    let mut clients: Vec<Option<postgres::Client>> = nodes.iter().map(|_| None).collect();
    load.run(&nodes, &mut clients, &[0, 1, 2], 200);
    converge_all(&nodes, Duration::from_secs(60));
    for (round, cut) in [2usize, 0, 1].into_iter().enumerate() {
        let rest: Vec<usize> = (0..3).filter(|&i| i != cut).collect();
        isolate(&nodes, cut, true);
        load.run(&nodes, &mut clients, &[cut], 200);
        load.run(&nodes, &mut clients, &rest, 200);
        for n in &nodes {
            fill_wal(n, &format!("filler{round}"));
        }
        let (name, others) = (nodes[cut].name.as_str(), [nodes[rest[0]].name.as_str(), nodes[rest[1]].name.as_str()]);
        wait_lost(&nodes, &[(rest[0], name), (rest[1], name), (cut, others[0]), (cut, others[1])]);
        load.run(&nodes, &mut clients, &[cut], 100);
        load.run(&nodes, &mut clients, &rest, 100);
        for &i in &rest {
            wait_all_stable(std::slice::from_ref(&nodes[i]));
        }
        compact_all(&nodes);
        isolate(&nodes, cut, false);
        load.run(&nodes, &mut clients, &[0, 1, 2], 100);
        converge_all(&nodes, Duration::from_secs(120));
        load.expect.check(&nodes);
        assert_same_values(&nodes, &["ctr", "item"]);
        // Every lost mark cleared before the next round.
        wait_all_ok(&nodes);
    }
    wait_all_stable(&nodes);
    compact_all(&nodes);
    assert_identical(&nodes, &["ctr", "item"]);
    for n in &nodes {
        let log = std::fs::read_to_string(n.dir.join("server.log")).unwrap_or_default();
        assert!(log.contains("from the snapshot of peer"), "{} never rejoined from a snapshot", n.name);
    }
}

/// Two peers whose names read the same in slot names (`eu-west` and
/// `eu_west`) are told apart by the slot each records for this node:
/// one down past the limit is marked lost and the other, streaming, is
/// not; a slot left from an earlier setup of one of them is dropped
/// without anyone being marked lost.
#[test]
fn peers_whose_names_read_alike_are_told_apart_by_their_slots() {
    let root = Scratch::new("alike");
    let port = base_port() + 12;
    let nodes: Vec<Node> = ["eu-west", "eu_west", "us"].iter().enumerate().map(|(i, n)| Node::new(&root.0, n, port + i as u16, true)).collect();
    for n in &nodes {
        let mut c = n.client();
        c.batch_execute(SCHEMA).unwrap();
        c.execute("SELECT converge.set_node($1)", &[&n.name]).unwrap();
    }
    full_mesh(&nodes);
    converge_all(&nodes, Duration::from_secs(60));
    let mut us = nodes[2].client();
    us.batch_execute("ALTER SYSTEM SET converge.max_peer_lag_bytes = '1MB'").unwrap();
    us.batch_execute("SELECT pg_reload_conf()").unwrap();
    // us has learned how each names its slot, and the two names differ.
    let slots: Vec<String> = us
        .query("SELECT their_slot FROM converge.peer_status ORDER BY name", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect();
    assert!(slots.len() == 2 && slots[0].starts_with("converge_eu_west_") && slots[1].starts_with("converge_eu_west_") && slots[0] != slots[1],
            "us knows these slots of its peers: {slots:?}");
    // A slot of an earlier setup of eu_west (another server, so another hash).
    us.batch_execute("SELECT pg_create_logical_replication_slot('converge_eu_west_0badc0de', 'converge')").unwrap();

    nodes[0].stop_immediate();
    fill_wal(&nodes[2], "filler");
    wait_lost(&nodes, &[(2, "eu-west")]);
    assert_eq!(text(&nodes[2], "SELECT state FROM converge.peers WHERE name = 'eu_west'"), "ok", "eu_west streams and is not lost");
    let left: Vec<String> = us
        .query("SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'converge_eu_west_%' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec![slots[1].clone()], "only eu_west's own slot is left on us");
    let log = std::fs::read_to_string(nodes[2].dir.join("server.log")).unwrap_or_default();
    assert!(log.contains("\"converge_eu_west_0badc0de\"") && log.contains("left from an earlier setup"), "us's log does not explain the stale slot");

    // eu-west comes back and rejoins.
    nodes[0].start();
    converge_all(&nodes, Duration::from_secs(120));
    let deadline = Instant::now() + Duration::from_secs(60);
    while text(&nodes[2], "SELECT state FROM converge.peers WHERE name = 'eu-west'") != "ok" {
        assert!(Instant::now() < deadline, "us still sees eu-west as lost");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A node lost while an authority moved rejoins from a peer's snapshot
/// (the others compacted past it) and takes the handover as state: it then
/// judges the new holder's writes as the others do.
#[test]
fn a_node_lost_while_an_authority_moved_takes_the_move_when_it_rejoins() {
    let root = Scratch::new("lost-handover");
    let nodes = mesh_losing_peers_past_1mb(&root.0, base_port() + 3);
    for n in &nodes {
        n.client().batch_execute("SELECT converge.set_authority('item', 'title', 'madrid')").unwrap();
    }
    nodes[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'open')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));

    lose_virginia(&nodes);
    // madrid hands title over to dublin, which takes it and writes it.
    nodes[0].client().batch_execute("SELECT converge.set_authority('item', 'title', 'dublin')").unwrap();
    let setting = "SELECT format('%s %s %s', node, coalesce(since::text, 'untaken'), earlier) FROM converge.authorities WHERE target_column = 'title'";
    wait_for(&nodes[1], setting, &text(&nodes[0], setting), "madrid's handover");
    nodes[1].client().batch_execute("SELECT converge.set_authority('item', 'title', 'dublin')").unwrap();
    nodes[1].client().batch_execute("UPDATE item SET title = 'dublin decides' WHERE id = 1").unwrap();
    wait_all_stable(&nodes[..2]);
    compact_all(&nodes[..2]);
    assert_eq!(text(&nodes[0], setting), text(&nodes[1], setting));

    bring_virginia_back(&nodes);
    // dublin decides after the rejoin, and virginia follows.
    nodes[1].client().batch_execute("UPDATE item SET title = 'closed' WHERE id = 1").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        assert_eq!(text(n, setting), text(&nodes[1], setting), "the setting on {}", n.name);
        assert_eq!(text(n, "SELECT title FROM item WHERE id = 1"), "closed", "on {}", n.name);
        let refused = count(n, "SELECT count(*) FROM converge.op_log WHERE reason LIKE 'not\\_authority%'");
        assert_eq!(refused, 0, "{} refused ops as not_authority", n.name);
    }
}

/// A peer's slot that PostgreSQL invalidated (it removed WAL the slot
/// needed, past `max_slot_wal_keep_size`) can never be read again: the
/// peer is marked lost and the slot dropped, whatever converge's own limit
/// (off on madrid here, far above the WAL written on dublin), so the peer
/// rejoins by itself with the edits nobody received.
#[test]
fn a_slot_postgresql_invalidated_marks_the_peer_lost_and_it_rejoins() {
    let root = Scratch::new("invalidated");
    let nodes = mesh_of_three(&root.0, base_port() + 6);
    nodes[0].client().batch_execute("ALTER SYSTEM SET converge.max_peer_lag_bytes = -1").unwrap();
    nodes[0].client().batch_execute("SELECT pg_reload_conf()").unwrap();
    let mut load = Load::new(0x9e3779b97f4a7c15);
    let mut clients: Vec<Option<postgres::Client>> = nodes.iter().map(|_| None).collect();
    load.run(&nodes, &mut clients, &[0, 1, 2], 200);
    converge_all(&nodes, Duration::from_secs(60));
    isolate(&nodes, 2, true);
    load.run(&nodes, &mut clients, &[2], 200);
    nodes[2].client().batch_execute("ALTER SYSTEM SET converge.max_peer_lag_bytes = -1").unwrap();
    nodes[2].stop_immediate();
    clients[2] = None;
    for i in [0, 1] {
        let n = &nodes[i];
        n.client().execute("SELECT converge.resume_peer('virginia')", &[]).unwrap();
        n.client()
            .batch_execute("CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 100000) g")
            .unwrap();
        // The streaming peers' slots catch up (a checkpoint logs where they
        // may restart); virginia's stays behind, over 40MB of WAL.
        let caught_up = "SELECT (bool_and(active = (slot_name NOT LIKE 'converge_virginia_%'))
                                 AND bool_and(NOT active OR pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) < 16 * 1024 * 1024))::text
                           FROM pg_replication_slots";
        let deadline = Instant::now() + Duration::from_secs(60);
        while text(n, caught_up) != "true" {
            assert!(Instant::now() < deadline, "{}'s streaming slots never caught up", n.name);
            n.client().batch_execute("CHECKPOINT").unwrap();
            std::thread::sleep(Duration::from_millis(250));
        }
        n.client().batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '32MB'").unwrap();
        n.client().batch_execute("SELECT pg_reload_conf()").unwrap();
        // (Until the checkpointer has the setting; the worker may drop the
        // slot as soon as it is invalidated.)
        let status = "SELECT coalesce(string_agg(wal_status, ','), 'dropped') FROM pg_replication_slots WHERE slot_name LIKE 'converge_virginia_%'";
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            n.client().batch_execute("SELECT pg_switch_wal(); CHECKPOINT").unwrap();
            if ["lost", "dropped"].contains(&text(n, status).as_str()) {
                break;
            }
            assert!(Instant::now() < deadline, "{}: PostgreSQL did not invalidate virginia's slot", n.name);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    wait_lost(&nodes, &[(0, "virginia"), (1, "virginia")]);
    for n in &nodes[..2] {
        let log = std::fs::read_to_string(n.dir.join("server.log")).unwrap_or_default();
        assert!(log.contains("PostgreSQL invalidated its slot"), "{} did not say why virginia is lost", n.name);
        assert_eq!(count(n, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'converge_virginia_%'"), 0);
    }
    nodes[2].start();
    for peer in ["madrid", "dublin"] {
        nodes[2].client().execute("SELECT converge.resume_peer($1)", &[&peer]).unwrap();
    }
    load.run(&nodes, &mut clients, &[0, 1, 2], 100);
    converge_all(&nodes, Duration::from_secs(120));
    load.expect.check(&nodes);
    assert_same_values(&nodes, &["ctr", "item"]);
    wait_all_ok(&nodes);
}
