//! Coordination boundaries on real nodes (SPEC section 5): a column with an
//! authority is changed only by that node, through a partition too, and
//! every node ends with the authority's value; the other columns of the
//! same rows keep merging everywhere.
//!
//! Needs the extension installed (`cargo pgrx install`); `bash .ci/test`
//! runs it. Ports: CONVERGE_CLUSTER_PORT + 70..72.

use converge_cluster_tests::workload::*;
use converge_cluster_tests::*;
use std::time::Duration;

fn base_port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710) + 70
}

fn text(n: &Node, sql: &str) -> String {
    n.client().query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn only_the_authority_changes_its_column_through_a_partition() {
    let root = Scratch::new("authority");
    let nodes = mesh_of_three(&root.0, base_port());
    for n in &nodes {
        n.client().batch_execute("SELECT converge.set_authority('item', 'title', 'virginia')").unwrap();
    }
    // Rows are created anywhere: an insert leaves title NULL.
    nodes[0].client().batch_execute("INSERT INTO item (id, sev) VALUES (1, 2)").unwrap();
    nodes[0]
        .client()
        .batch_execute("INSERT INTO item (id, title) VALUES (2, 'not mine')")
        .expect_err("madrid set an authority column on insert");
    converge_all(&nodes, Duration::from_secs(60));
    nodes[2].client().batch_execute("UPDATE item SET title = 'pump stopped' WHERE id = 1").unwrap();
    converge_all(&nodes, Duration::from_secs(60));

    // virginia cut off from madrid and dublin.
    pause(&nodes, 2, 0, true);
    pause(&nodes, 2, 1, true);
    for i in [0, 1] {
        let err = nodes[i].client().batch_execute("UPDATE item SET title = 'closed here' WHERE id = 1").unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err:?}");
        assert!(err.as_db_error().is_some_and(|e| e.message().contains("virginia")), "{err:?}");
        // Everything else about the row still changes anywhere.
        nodes[i]
            .client()
            .batch_execute(&format!(
                "UPDATE item SET sev = {i}, tags = converge.add(tags, 'seen by {}') WHERE id = 1",
                nodes[i].name
            ))
            .unwrap();
    }
    nodes[2].client().batch_execute("UPDATE item SET title = 'pump stopped (valve)' WHERE id = 1").unwrap();
    pause(&nodes, 2, 0, false);
    pause(&nodes, 2, 1, false);
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    let row = text(&nodes[0], "SELECT format('%s | %s', title, tags::jsonb) FROM item WHERE id = 1");
    assert_eq!(row, "pump stopped (valve) | [\"seen by dublin\", \"seen by madrid\"]");
    for n in &nodes {
        let rejected = text(n, "SELECT count(*)::text FROM converge.op_log WHERE outcome <> 'applied'");
        assert_eq!(rejected, "0", "{} rejected or buffered ops", n.name);
    }
}
