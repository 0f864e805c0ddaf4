//! Repair on real nodes (SPEC section 5): a wrong accepted op is repaired by
//! a new op, on every node alike, also where the wrong ops arrive after the
//! repair (through a partition and a kill -9), and the history says so.
//!
//! Needs the extension installed (`cargo pgrx install`); `bash .ci/test`
//! runs it. Ports: CONVERGE_CLUSTER_PORT + 90..92.

use converge_cluster_tests::workload::*;
use converge_cluster_tests::*;
use std::time::Duration;

fn base_port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710) + 90
}

/// A row op of `clerk` setting item `id`'s title, with a clock far ahead
/// (it wins over every node's own write; the bound on clients' clocks,
/// `converge.max_clock_skew`, is lifted for it).
fn wrong_title(n: &Node, counter: i32, id: i32, title: &str) {
    let mut c = n.client();
    c.batch_execute("SET converge.max_clock_skew = -1").unwrap();
    let sql = format!(
        "SELECT outcome FROM converge.apply(ROW('clerk:{counter}', 'clerk', 'public.item', '{{\"id\":{id}}}', '', 1, 0, '{{}}',
             '{{\"entries\":{{\"title\":[[9999999999999,{counter},\"clerk\"],{{\"put\":\"{title}\"}}]}}}}'::converge.lwwmap::bytea, NULL)::converge.op)"
    );
    assert_eq!(c.query_one(&sql, &[]).unwrap().get::<_, String>(0), "applied");
}

#[test]
fn a_repair_takes_wrong_ops_out_on_every_node() {
    let root = Scratch::new("repair");
    let nodes = mesh_of_three(&root.0, base_port());
    nodes[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'pump'), (2, 'valve')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    wrong_title(&nodes[0], 1, 1, "valve");
    converge_all(&nodes, Duration::from_secs(60));
    assert_eq!(text(&nodes[2], "SELECT title FROM item WHERE id = 1"), "valve");

    // virginia, cut off, repairs clerk:1 and clerk:2 (not made yet); meanwhile
    // madrid accepts clerk:2, which reaches dublin; dublin crashes.
    pause(&nodes, 2, 0, true);
    pause(&nodes, 2, 1, true);
    let repair = text(&nodes[2], "SELECT converge.repair(ARRAY['clerk:1', 'clerk:2'], 'tablet clock ran ahead')");
    assert_eq!(text(&nodes[2], "SELECT title FROM item WHERE id = 1"), "pump");
    wrong_title(&nodes[0], 2, 2, "pump");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while text(&nodes[1], "SELECT title FROM item WHERE id = 2") != "pump" {
        assert!(std::time::Instant::now() < deadline, "clerk:2 did not reach dublin");
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes[1].kill9();
    nodes[1].start();
    pause(&nodes, 2, 0, false);
    pause(&nodes, 2, 1, false);
    converge_all(&nodes, Duration::from_secs(60));

    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        assert_eq!(text(n, "SELECT string_agg(title, ',' ORDER BY id) FROM item WHERE id IN (1, 2)"), "pump,valve", "{}", n.name);
        let outcomes = text(
            n,
            "SELECT string_agg(DISTINCT format('%s %s %s', op_id, outcome, reason), ', ') FROM converge.op_log WHERE actor = 'clerk'",
        );
        assert_eq!(outcomes, format!("clerk:1 superseded {repair}, clerk:2 superseded {repair}"), "{}", n.name);
        let history = text(n, &format!("SELECT format('%s %s', outcome, reason) FROM converge.op_log WHERE op_id = '{repair}'"));
        assert_eq!(history, "applied tablet clock ran ahead", "{}", n.name);
        assert_eq!(text(n, "SELECT superseded::text FROM converge.stats"), "2", "{}", n.name);
    }
}
