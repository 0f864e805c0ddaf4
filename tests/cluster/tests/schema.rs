//! Schema changes on real nodes (docs/replication.md, "Schema changes"):
//! columns added to a replicated table on every node replicate from their
//! first change with no `converge.replicate` run again, through a
//! partition too, and a dropped column leaves the others replicating; an
//! op for a column one node added first is replayed where it was missing.
//!
//! Needs the extension installed (`cargo pgrx install`); `bash .ci/test`
//! runs it. Ports: CONVERGE_CLUSTER_PORT + 140..145.

use converge_cluster_tests::workload::*;
use converge_cluster_tests::*;
use std::time::Duration;

fn base_port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710) + 140
}

#[test]
fn columns_added_on_every_node_replicate_with_no_replicate_call() {
    let root = Scratch::new("schema");
    let nodes = mesh_of_three(&root.0, base_port());
    nodes[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'pump'), (2, 'valve')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    for n in &nodes {
        n.client()
            .batch_execute("ALTER TABLE item ADD COLUMN visits converge.gcounter, ADD COLUMN ward text")
            .unwrap();
    }
    // Each node counts visits to row 1; madrid names its ward; virginia,
    // cut off from the others, counts more and names row 2's.
    pause(&nodes, 2, 0, true);
    pause(&nodes, 2, 1, true);
    for (i, n) in nodes.iter().enumerate() {
        n.client()
            .batch_execute(&format!("UPDATE item SET visits = converge.incr(visits, {}) WHERE id = 1", i + 1))
            .unwrap();
    }
    nodes[0].client().batch_execute("UPDATE item SET ward = 'east' WHERE id = 1").unwrap();
    nodes[2].client().batch_execute("UPDATE item SET ward = 'west', visits = converge.incr(visits, 10) WHERE id = 2").unwrap();
    pause(&nodes, 2, 0, false);
    pause(&nodes, 2, 1, false);
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        let rows = text(n, "SELECT string_agg(format('%s %s %s', id, visits::jsonb, ward), ', ' ORDER BY id) FROM item");
        assert_eq!(rows, "1 6 east, 2 10 west", "on {}", n.name);
        let refused = text(n, "SELECT count(*)::text FROM converge.op_log WHERE outcome <> 'applied'");
        assert_eq!(refused, "0", "{} rejected or buffered ops", n.name);
    }

    // ward dropped everywhere: the other columns go on replicating.
    for n in &nodes {
        n.client().batch_execute("ALTER TABLE item DROP COLUMN ward").unwrap();
    }
    nodes[1].client().batch_execute("UPDATE item SET visits = converge.incr(visits, 100), sev = 1 WHERE id = 2").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    assert_eq!(text(&nodes[2], "SELECT format('%s %s', visits::jsonb, sev) FROM item WHERE id = 2"), "110 1");
}

/// A column added on one node first (docs/replication.md: "Add a column on
/// every node before anyone writes it"): its op is rejected elsewhere with
/// `unknown_column` and kept; once the column exists there,
/// `converge.replay` applies it, as the op of the peer that sent it.
#[test]
fn an_op_for_a_column_not_yet_added_is_replayed_once_it_is() {
    let root = Scratch::new("schema-replay");
    let nodes = mesh_of_three(&root.0, base_port() + 3);
    nodes[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'pump')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    nodes[0].client().batch_execute("ALTER TABLE item ADD COLUMN visits converge.gcounter").unwrap();
    nodes[0].client().batch_execute("UPDATE item SET visits = converge.incr(visits, 7) WHERE id = 1").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    // (virginia may hold it twice: dublin's replay below is a local
    // transaction, so dublin ships the op on once it applied it.)
    let kept = "SELECT string_agg(DISTINCT op_id || ' ' || reason || ' ' || (origin LIKE 'peer:%')::text, ', ')
                  FROM converge.op_log WHERE outcome = 'rejected'";
    let op_id = text(&nodes[0], "SELECT op_id FROM converge.op_log WHERE target_column = 'visits'");
    for n in &nodes[1..] {
        assert_eq!(text(n, kept), format!("{op_id} unknown_column true"), "on {}", n.name);
        n.client().batch_execute("ALTER TABLE item ADD COLUMN visits converge.gcounter").unwrap();
        let replayed = text(n, &format!("SELECT string_agg(outcome, ', ') FROM converge.replay('{op_id}')"));
        // (virginia may have applied dublin's copy already: duplicate.)
        assert!(replayed == "applied" || replayed == "duplicate", "replay on {}: {replayed}", n.name);
        let applied = format!("SELECT count(*)::text FROM converge.op_log WHERE op_id = '{op_id}' AND outcome = 'applied'");
        assert_eq!(text(n, &applied), "1", "{op_id} applied once on {}", n.name);
    }
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        assert_eq!(text(n, "SELECT visits::jsonb::text FROM item WHERE id = 1"), "7", "on {}", n.name);
        let frontier = "SELECT (converge.frontier() ->> 'madrid')";
        assert_eq!(text(n, frontier), text(&nodes[0], frontier), "{}'s frontier for madrid", n.name);
    }
}
