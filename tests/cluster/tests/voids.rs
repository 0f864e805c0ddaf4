//! Voids on real nodes (docs/operations-log.md, "Offline clients"): two
//! nodes judge one op of a device apart (their bounds on clients' clocks
//! differ). One applies it; the other refuses it and then takes the
//! device's void of it. A real op beats a void: every node ends with the op
//! applied, and the void where it was applied gives way.
//!
//! Needs the extension installed (`cargo pgrx install`); `bash .ci/test`
//! runs it. Ports: CONVERGE_CLUSTER_PORT + 170..187.

use converge_client::{AnyCrdt, Client};
use converge_cluster_tests::lost::*;
use converge_cluster_tests::workload::*;
use converge_cluster_tests::*;
use serde_json::json;
use std::time::Duration;

fn base_port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710) + 170
}

/// madrid's write of item 1's title (a row op), far ahead of the clock,
/// under schema version `version` of the row ops, and its void.
fn title_op(version: i32) -> String {
    format!(
        "ROW('clerk:1', 'clerk', 'public.item', '{{\"id\":1}}', '', {version}, 0, '{{}}',
             '{{\"entries\":{{\"title\":[[9999999999999,1,\"clerk\"],{{\"put\":\"valve\"}}]}}}}'::converge.lwwmap::bytea,
             NULL)::converge.op"
    )
}
const VOID: &str = "ROW('clerk:1', 'clerk', 'converge.void', '{}', '', 1, 0, '{}', '', NULL)::converge.op";

/// Send `op` (a `converge.op` literal) as a client to `n`; its outcome and reason.
fn send(n: &Node, op: &str, lift_bound: bool) -> String {
    let mut c = n.client();
    if lift_bound {
        c.batch_execute("SET converge.max_clock_skew = -1").unwrap();
    }
    let row = c.query_one(&format!("SELECT outcome, coalesce(left(reason, 10), '') FROM converge.apply({op}, 'clerk')"), &[]).unwrap();
    format!("{} {}", row.get::<_, String>(0), row.get::<_, String>(1)).trim().to_string()
}

#[test]
fn an_op_applied_on_one_node_beats_its_void_from_another() {
    let root = Scratch::new("voids");
    let nodes = mesh_of_three(&root.0, base_port());
    nodes[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'pump')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));

    // madrid is cut off from both others.
    pause(&nodes, 0, 1, true);
    pause(&nodes, 0, 2, true);
    let (title, void) = (&title_op(1), VOID);
    // madrid, whose bound is lifted, applies the write; the device does not
    // hear back and sends it to dublin, which refuses it, and gives it up there.
    assert_eq!(send(&nodes[0], title, true), "applied");
    assert_eq!(send(&nodes[1], title, false), "rejected clock_skew");
    assert_eq!(send(&nodes[1], void, false), "applied");
    wait_for(
        &nodes[2],
        "SELECT count(*)::text FROM converge.op_log WHERE op_id = 'clerk:1' AND outcome = 'applied'",
        "1",
        "dublin's void reaches virginia",
    );
    assert_eq!(text(&nodes[2], "SELECT converge.frontier() ->> 'clerk'"), "1");
    assert_eq!(text(&nodes[2], "SELECT title FROM item WHERE id = 1"), "pump");

    pause(&nodes, 0, 1, false);
    pause(&nodes, 0, 2, false);
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    for (n, void_became) in nodes.iter().zip(["duplicate ", "superseded void overtaken", "superseded void overtaken"]) {
        assert_eq!(text(n, "SELECT title FROM item WHERE id = 1"), "valve", "{}", n.name);
        let applied = text(n, "SELECT string_agg(target_table, ',') FROM converge.op_log WHERE op_id = 'clerk:1' AND outcome = 'applied'");
        assert_eq!(applied, "public.item", "{}", n.name);
        let void = text(
            n,
            "SELECT string_agg(format('%s %s', outcome, reason), ',') FROM converge.op_log
              WHERE op_id = 'clerk:1' AND target_table = 'converge.void'",
        );
        assert_eq!(void, void_became, "{}", n.name);
        assert_eq!(text(n, "SELECT converge.frontier() ->> 'clerk'"), "1", "{}", n.name);
        assert_eq!(text(n, "SELECT count(*)::text FROM converge.frontier_gaps"), "0", "{}", n.name);
        // A caller whose frontier is past clerk:1 may hold the void: every
        // node knows the contest and gives it the op.
        let given = text(n, "SELECT coalesce(string_agg(target_table, ','), 'nothing') FROM converge.changes_since('{\"clerk\": 1}') WHERE op_id = 'clerk:1'");
        assert_eq!(given, "public.item", "{}", n.name);
    }
    // Compaction, once every peer reported clerk:1, keeps the voids (the op
    // can still take their place) and the op they contested (changes_since
    // still gives it to a caller that may hold a void).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for n in &nodes {
        while text(n, "SELECT (converge.stable_frontier() = converge.frontier())::text") != "true" {
            assert!(std::time::Instant::now() < deadline, "{}: the frontier never became stable", n.name);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for n in &nodes {
        n.client().batch_execute("SELECT converge.compact()").unwrap();
        let left = text(
            n,
            "SELECT coalesce(string_agg(target_table, ',' ORDER BY target_table), 'nothing') FROM converge.op_log
              WHERE op_id = 'clerk:1' AND outcome <> 'rejected'",
        );
        assert_eq!(left, "converge.void,public.item", "{}", n.name);
        let folded = text(n, "SELECT (SELECT count(*) FROM converge.log_horizon)::text");
        assert_ne!(folded, "0", "{}: compaction folded nothing", n.name);
        let given = text(
            n,
            "SELECT coalesce(string_agg(target_table, ','), 'nothing') FROM converge.changes_since(converge.frontier()) WHERE op_id = 'clerk:1'",
        );
        assert_eq!(given, "public.item", "{}", n.name);
    }
    assert_identical(&nodes, &["item"]);
}

/// The op reaches the nodes that hold its void while they keep it aside
/// (a schema version of the row ops they have not set yet): it stays
/// listed in `quarantine` there, and when they set that version it is
/// released and takes the void's place.
#[test]
fn an_op_kept_aside_where_its_void_was_applied_takes_its_place_when_released() {
    let root = Scratch::new("voids-aside");
    let nodes = mesh_of_three(&root.0, base_port() + 3);
    nodes[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'pump')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    pause(&nodes, 0, 1, true);
    pause(&nodes, 0, 2, true);
    nodes[0].client().batch_execute("SELECT converge.set_schema_version('item', NULL, 2)").unwrap();
    assert_eq!(send(&nodes[0], &title_op(2), true), "applied");
    assert_eq!(send(&nodes[1], &title_op(2), false), "rejected clock_skew");
    assert_eq!(send(&nodes[1], VOID, false), "applied");
    wait_for(&nodes[2], "SELECT count(*)::text FROM converge.op_log WHERE op_id = 'clerk:1' AND outcome = 'applied'", "1", "the void reaches virginia");
    pause(&nodes, 0, 1, false);
    pause(&nodes, 0, 2, false);
    for n in &nodes[1..] {
        wait_for(
            n,
            "SELECT coalesce(string_agg(format('%s %s', outcome, reason), ','), '') FROM converge.quarantine WHERE op_id = 'clerk:1' AND origin LIKE 'peer:%'",
            "quarantined new_schema",
            "madrid's op is kept aside, and listed, where the void holds its counter",
        );
        assert_eq!(text(n, "SELECT title FROM item WHERE id = 1"), "pump", "{}", n.name);
        n.client().batch_execute("SELECT converge.set_schema_version('item', NULL, 2)").unwrap();
    }
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        assert_eq!(text(n, "SELECT title FROM item WHERE id = 1"), "valve", "{}", n.name);
        let applied = text(n, "SELECT string_agg(target_table, ',') FROM converge.op_log WHERE op_id = 'clerk:1' AND outcome = 'applied'");
        assert_eq!(applied, "public.item", "{}", n.name);
        assert_eq!(text(n, "SELECT count(*)::text FROM converge.quarantine WHERE op_id = 'clerk:1'"), "0", "{}", n.name);
    }
}

/// A device's op that a node held waiting (the op before it had not
/// arrived there yet) and that a retry refused once it had: the device is
/// not told (the op left its outbox), and the node held the device's next
/// op behind it. At its next push the device finds the refusal in the
/// node's log and gives the op up, which lets the held op go on.
#[test]
fn an_op_refused_after_it_left_the_outbox_is_given_up_and_frees_the_ops_behind_it() {
    let root = Scratch::new("voids-later");
    let nodes = mesh_of_three(&root.0, base_port() + 6);
    nodes[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'pump')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    let mut tab = Client::open(root.0.join("tab"), "tab").unwrap();
    tab.declare("ctr", "g", "gcounter").unwrap();
    tab.declare("item", "owner", "lwwreg").unwrap();
    let incr = |c: &mut Client, n: i64| {
        c.mutate("ctr", json!({"id": 1}), "g", move |v, ctx| {
            let AnyCrdt::GCounter(x) = v else { unreachable!() };
            Ok(AnyCrdt::GCounter(x.incr(ctx.actor, n)?))
        })
        .unwrap();
    };
    // dublin does not have tab:1 yet when the next two reach it, under a
    // bound on clocks lifted for that session only.
    pause(&nodes, 0, 1, true);
    incr(&mut tab, 1);
    assert!(tab.push(&mut nodes[0].client()).unwrap().iter().all(|o| o.outcome == "applied"));
    tab.mutate("item", json!({"id": 1}), "owner", |v, ctx| {
        let AnyCrdt::LwwReg(x) = v else { unreachable!() };
        let now = ctx.timestamp(x.max_timestamp());
        let ahead = converge_core::Timestamp(now.ms() + 600_000, 0, now.node().to_string());
        Ok(AnyCrdt::LwwReg(x.assign(converge_core::Json::parse("\"ten minutes ahead\"")?, ahead)))
    })
    .unwrap();
    incr(&mut tab, 2);
    let mut lifted = nodes[1].client();
    lifted.batch_execute("SET converge.max_clock_skew = -1").unwrap();
    let held: Vec<String> = tab.push(&mut lifted).unwrap().into_iter().map(|o| format!("{} {}", o.op_id, o.outcome)).collect();
    assert_eq!(held, ["tab:2 buffered", "tab:3 buffered"]);
    assert!(tab.outbox().is_empty(), "held by the node, they left the outbox");
    // tab:1 arrives; dublin's retry judges tab:2's clock under its own bound.
    pause(&nodes, 0, 1, false);
    wait_for(&nodes[1], "SELECT count(*)::text FROM converge.op_log WHERE op_id = 'tab:2' AND outcome = 'rejected'", "1", "the retry refuses tab:2");
    assert_eq!(text(&nodes[1], "SELECT string_agg(op_id, ',') FROM converge.pending"), "tab:3");
    incr(&mut tab, 4);
    tab.push(&mut nodes[1].client()).unwrap();
    let refused: Vec<String> = tab.rejected().iter().map(|(op, r)| format!("{} {}", op.op_id, &r[..10])).collect();
    assert_eq!(refused, ["tab:2 clock_skew"]);
    assert!(tab.voids_pending().is_empty());
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["ctr", "item"]);
    for n in &nodes {
        assert_eq!(text(n, "SELECT converge.value(g)::text FROM ctr WHERE id = 1"), "7", "{}", n.name);
        assert_eq!(text(n, "SELECT (owner IS NULL)::text FROM item WHERE id = 1"), "true", "{}", n.name);
        assert_eq!(text(n, "SELECT converge.frontier() ->> 'tab'"), "4", "{}", n.name);
        assert_eq!(text(n, "SELECT count(*)::text FROM converge.pending"), "0", "{}", n.name);
    }
}

/// A mesh where virginia was lost while dublin refused clerk:1 and took
/// its void (which reached madrid), and then madrid and dublin folded the
/// device's later op: their horizon passes the void, so `changes_since`
/// from it does not give the void. With `replay_first`, dublin replays
/// clerk:1 (its bound raised) before the fold: it takes the void's place
/// there and on madrid. Then virginia comes back and rejoins from a
/// snapshot.
fn rejoin_past_a_void(root: &Scratch, port: u16, replay_first: bool) -> Vec<Node> {
    let nodes = mesh_losing_peers_past_1mb(&root.0, port);
    nodes[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'pump')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    lose_virginia(&nodes);
    assert_eq!(send(&nodes[1], &title_op(1), false), "rejected clock_skew");
    assert_eq!(send(&nodes[1], VOID, false), "applied");
    // The device's next op (an old clock: it changes nothing), for compaction to fold.
    let next = title_op(1).replace("clerk:1", "clerk:2").replace("9999999999999", "1000");
    assert_eq!(send(&nodes[1], &next, false), "applied");
    if replay_first {
        replay_on_dublin(&nodes);
    }
    let (want, what) = if replay_first { ("3", "the void, the op and the next one reach madrid") } else { ("2", "the void and the next op reach madrid") };
    wait_for(&nodes[0], "SELECT count(*)::text FROM converge.op_log WHERE actor = 'clerk' AND outcome IN ('applied', 'superseded')", want, what);
    wait_all_stable(&nodes[..2]);
    compact_all(&nodes[..2]);
    for n in &nodes[..2] {
        let horizon = "SELECT coalesce((SELECT upto::text FROM converge.log_horizon WHERE actor = 'clerk'), 'none')";
        assert_eq!(text(n, horizon), "2", "{}", n.name);
    }
    bring_virginia_back(&nodes);
    nodes
}

/// dublin replays clerk:1 with its bound raised: applied in the void's place.
fn replay_on_dublin(nodes: &[Node]) {
    let mut c = nodes[1].client();
    c.batch_execute("SET converge.max_clock_skew = -1").unwrap();
    let replayed = c.query_one("SELECT outcome FROM converge.replay('clerk:1')", &[]).unwrap().get::<_, String>(0);
    assert_eq!(replayed, "applied");
}

const APPLIED_VOID: &str =
    "SELECT count(*)::text FROM converge.op_log WHERE op_id = 'clerk:1' AND target_table = 'converge.void' AND outcome = 'applied'";

/// The rejoined node takes the void with the rows (the frontier alone
/// would make the op a duplicate there), so that when the op is replayed
/// later it takes the void's place there too.
#[test]
fn a_node_that_rejoins_from_a_snapshot_takes_the_voids_below_the_horizon() {
    let root = Scratch::new("voids-rejoin");
    let nodes = rejoin_past_a_void(&root, base_port() + 9, false);
    assert_eq!(text(&nodes[2], APPLIED_VOID), "1", "virginia holds the void");
    replay_on_dublin(&nodes);
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        assert_eq!(text(n, "SELECT title FROM item WHERE id = 1"), "valve", "{}", n.name);
        assert_eq!(text(n, APPLIED_VOID), "0", "{}: the void still holds the counter", n.name);
    }
}

/// The void had given way before the fold: the rejoined node takes the op
/// and, from the void, that it was contested, so that it gives the op to
/// a caller past its counter (who may hold the void) as the others do.
#[test]
fn a_node_that_rejoins_from_a_snapshot_knows_which_ops_a_void_contested() {
    let root = Scratch::new("voids-rejoin-contest");
    let nodes = rejoin_past_a_void(&root, base_port() + 12, true);
    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        assert_eq!(text(n, "SELECT title FROM item WHERE id = 1"), "valve", "{}", n.name);
        assert_eq!(text(n, APPLIED_VOID), "0", "{}", n.name);
        let given = text(n, "SELECT coalesce(string_agg(target_table, ','), 'nothing') FROM converge.changes_since(converge.frontier()) WHERE op_id = 'clerk:1'");
        assert_eq!(given, "public.item", "{}", n.name);
    }
}

/// madrid and dublin meshed, virginia apart: virginia applies clerk:1
/// (and, with `madrid_too`, madrid does, cut off from dublin meanwhile);
/// dublin refuses it and takes its void; the device's next op is applied;
/// madrid and dublin compact. Then virginia joins them (from a snapshot:
/// its rows replaced by a peer's), and they add it after.
fn join_past_a_void(root: &Scratch, port: u16, madrid_too: bool) -> Vec<Node> {
    let nodes: Vec<Node> = NAMES.iter().enumerate().map(|(i, name)| Node::new(&root.0, name, port + i as u16, true)).collect();
    for n in &nodes {
        let mut c = n.client();
        c.batch_execute(SCHEMA).unwrap();
        c.execute("SELECT converge.set_node($1)", &[&n.name]).unwrap();
        Node::grant_peer(&mut c);
    }
    let (meshed, virginia) = (&nodes[..2], &nodes[2]);
    full_mesh(meshed);
    meshed[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'pump')").unwrap();
    converge_all(meshed, Duration::from_secs(60));
    assert_eq!(send(virginia, &title_op(1), true), "applied");
    pause(meshed, 0, 1, true);
    if madrid_too {
        assert_eq!(send(&meshed[0], &title_op(1), true), "applied");
    }
    assert_eq!(send(&meshed[1], &title_op(1), false), "rejected clock_skew");
    assert_eq!(send(&meshed[1], VOID, false), "applied");
    pause(meshed, 0, 1, false);
    let next = title_op(1).replace("clerk:1", "clerk:2").replace("9999999999999", "1000");
    assert_eq!(send(&meshed[1], &next, false), "applied");
    converge_all(meshed, Duration::from_secs(60));
    wait_all_stable(meshed);
    compact_all(meshed);
    for (a, b) in [(virginia, &meshed[0]), (virginia, &meshed[1]), (&meshed[0], virginia), (&meshed[1], virginia)] {
        a.client().execute("SELECT converge.add_peer($1, $2)", &[&b.name, &b.peer_conninfo("postgres")]).unwrap();
    }
    converge_all(&nodes, Duration::from_secs(120));
    let log = std::fs::read_to_string(virginia.dir.join("server.log")).unwrap_or_default();
    assert!(log.contains("from the snapshot of peer"), "virginia did not join from a snapshot");
    assert_identical(&nodes, &["item"]);
    nodes
}

/// A node that joins after it applied an op that the mesh refused and
/// gave up: the join drops the op's effect there (the peer's frontier
/// covers it), so the op gives way to the peer's void there too. When the
/// op is replayed where it was refused, it takes the void's place on
/// every node.
#[test]
fn a_node_that_joins_after_applying_an_op_the_mesh_gave_up_gives_it_up_too() {
    let root = Scratch::new("voids-join");
    let nodes = join_past_a_void(&root, base_port() + 15, false);
    let rows = "SELECT string_agg(format('%s %s %s', target_table, outcome, reason), ', ' ORDER BY seq) FROM converge.op_log WHERE op_id = 'clerk:1'";
    assert_eq!(text(&nodes[2], rows), "public.item superseded void taken at join, converge.void applied ");
    for n in &nodes {
        assert_eq!(text(n, "SELECT title FROM item WHERE id = 1"), "pump", "{}", n.name);
    }
    replay_on_dublin(&nodes);
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        assert_eq!(text(n, "SELECT title FROM item WHERE id = 1"), "valve", "{}", n.name);
    }
}

/// The same where the void gave way on the mesh (madrid applied the op
/// too): the joining node keeps the op applied, as every node has it.
#[test]
fn a_node_that_joins_after_applying_an_op_the_mesh_applied_over_its_void_keeps_it() {
    let root = Scratch::new("voids-join-kept");
    let nodes = join_past_a_void(&root, base_port() + 15, true);
    for n in &nodes {
        assert_eq!(text(n, "SELECT title FROM item WHERE id = 1"), "valve", "{}", n.name);
        let applied = "SELECT string_agg(target_table, ',') FROM converge.op_log WHERE op_id = 'clerk:1' AND outcome = 'applied'";
        assert_eq!(text(n, applied), "public.item", "{}", n.name);
        let taken = "SELECT count(*)::text FROM converge.op_log WHERE op_id = 'clerk:1' AND reason = 'void taken at join'";
        assert_eq!(text(n, taken), "0", "{}: the op gave way to a void the peer did not apply", n.name);
    }
}
