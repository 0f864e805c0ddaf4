//! Lost peers, rejoin and compaction on a test mesh: the steps the
//! operations and voids tests share.

use crate::workload::{mesh_of_three, pause};
use crate::{converge_all, text, Node};
use std::time::{Duration, Instant};

/// The first column of the first row of `sql` on `n`, a bigint.
pub fn count(n: &Node, sql: &str) -> i64 {
    n.client().query_one(sql, &[]).unwrap().get(0)
}

/// Wait until every node's stable frontier is its whole frontier: each
/// peer has reported having everything (what the workers' probes learn).
pub fn wait_all_stable(nodes: &[Node]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in nodes {
        while count(n, "SELECT (converge.stable_frontier() = converge.frontier())::int::int8") != 1 {
            assert!(Instant::now() < deadline, "{} never saw its frontier stable: {}", n.name,
                    text(n, "SELECT converge.stable_frontier()::text || ' vs ' || converge.frontier()::text"));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Wait until every node shows every peer `ok` (no lost mark left).
pub fn wait_all_ok(nodes: &[Node]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes.iter().any(|n| count(n, "SELECT count(*) FROM converge.peers WHERE state <> 'ok'") > 0) {
        let states: Vec<String> = nodes.iter().map(|n| text(n, "SELECT coalesce(string_agg(name || ' ' || state, ', '), '') FROM converge.peers")).collect();
        assert!(Instant::now() < deadline, "a peer is still not ok: {states:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// compact() on each node: the ops it removed.
pub fn compact_all(nodes: &[Node]) -> Vec<i64> {
    nodes.iter().map(|n| count(n, "SELECT ops_removed FROM converge.compact()")).collect()
}

/// A mesh of three whose nodes mark a peer lost once its slot holds 1MB.
pub fn mesh_losing_peers_past_1mb(root: &std::path::Path, port: u16) -> Vec<Node> {
    let nodes = mesh_of_three(root, port);
    for n in &nodes {
        let mut c = n.client();
        c.batch_execute("ALTER SYSTEM SET converge.max_peer_lag_bytes = '1MB'").unwrap();
        c.batch_execute("SELECT pg_reload_conf()").unwrap();
    }
    nodes
}

/// Cut node `cut` off from every other node, both ways (or heal it).
pub fn isolate(nodes: &[Node], cut: usize, paused: bool) {
    for i in (0..nodes.len()).filter(|&i| i != cut) {
        pause(nodes, cut, i, paused);
    }
}

/// More than 1MB of WAL on `n` (a 2.5MB table named `table`): its
/// non-streaming peers' slots pass the test meshes' limit.
pub fn fill_wal(n: &Node, table: &str) {
    n.client()
        .batch_execute(&format!("CREATE TABLE {table} AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 5000) g"))
        .unwrap();
}

/// Wait until each (node, peer) pair shows the peer `lost` on that node.
pub fn wait_lost(nodes: &[Node], pairs: &[(usize, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for &(i, peer) in pairs {
        while text(&nodes[i], &format!("SELECT state FROM converge.peers WHERE name = '{peer}'")) != "lost" {
            assert!(Instant::now() < deadline, "{} never marked {peer} lost", nodes[i].name);
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Cut virginia (nodes[2]) off, stop it, and wait until madrid and dublin
/// (nodes[0], nodes[1]) mark it lost (their WAL past the 1MB limit).
pub fn lose_virginia(nodes: &[Node]) {
    isolate(nodes, 2, true);
    nodes[2].stop_immediate();
    for n in &nodes[..2] {
        n.client().execute("SELECT converge.resume_peer('virginia')", &[]).unwrap();
        fill_wal(n, "filler");
    }
    wait_lost(nodes, &[(0, "virginia"), (1, "virginia")]);
}

/// Start virginia again and let it catch up: it rejoins from a snapshot
/// (the others compacted past it), which its server log shows.
pub fn bring_virginia_back(nodes: &[Node]) {
    nodes[2].start();
    nodes[2].client().execute("SELECT converge.resume_peer('madrid')", &[]).unwrap();
    nodes[2].client().execute("SELECT converge.resume_peer('dublin')", &[]).unwrap();
    converge_all(nodes, Duration::from_secs(120));
    let log = std::fs::read_to_string(nodes[2].dir.join("server.log")).unwrap_or_default();
    assert!(log.contains("from the snapshot of peer"), "virginia did not rejoin from a snapshot");
}
