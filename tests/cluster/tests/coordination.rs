//! Coordination boundaries on real nodes (SPEC section 5): a column with an
//! authority is changed only by that node, through a partition too, and
//! every node ends with the authority's value; the other columns of the
//! same rows keep merging everywhere. Two regions asking to close one
//! incident while cut off from its authority get one decision and one
//! audit number, the same on every node.
//!
//! Needs the extension installed (`cargo pgrx install`); `bash .ci/test`
//! runs it. Ports: CONVERGE_CLUSTER_PORT + 70..75.

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

#[test]
fn two_regions_closing_one_incident_while_cut_off_get_one_audit_number() {
    let root = Scratch::new("audit");
    let nodes = mesh_of_three(&root.0, base_port() + 3);
    for n in &nodes {
        n.client()
            .batch_execute(
                "CREATE TABLE incident (id int PRIMARY KEY, title text, status text DEFAULT 'open', audit_number bigint);
                 SELECT converge.replicate('incident');
                 CREATE FUNCTION close_incident(r converge.requests) RETURNS jsonb LANGUAGE sql AS $$
                     SELECT jsonb_build_object('status', 'closed',
                                               'audit_number', converge.allocate('audit', 'incident-' || (r.target_key ->> 'id')))
                 $$;
                 SELECT converge.set_allocator('audit', 'virginia');
                 SELECT converge.set_authority('incident', 'status', 'virginia', 'close_incident(converge.requests)');
                 SELECT converge.set_authority('incident', 'audit_number', 'virginia');",
            )
            .unwrap();
    }
    nodes[0].client().batch_execute("INSERT INTO incident (id, title) VALUES (1, 'pump stopped')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));

    // Madrid and Dublin both ask to close while cut off from Virginia.
    pause(&nodes, 2, 0, true);
    pause(&nodes, 2, 1, true);
    for i in [0, 1] {
        let id: String = nodes[i]
            .client()
            .query_one("SELECT converge.request('incident', '{\"id\": 1}', 'status', '\"closed\"')", &[])
            .unwrap()
            .get(0);
        assert_eq!(text(&nodes[i], &format!("SELECT status FROM converge.requests WHERE request_id = '{id}'")), "pending");
        assert_eq!(text(&nodes[i], "SELECT status FROM incident WHERE id = 1"), "open", "{} closed on its own", nodes[i].name);
    }
    pause(&nodes, 2, 0, false);
    pause(&nodes, 2, 1, false);
    converge_all(&nodes, Duration::from_secs(60));
    // Virginia's decisions travel back; wait for them everywhere.
    converge_all(&nodes, Duration::from_secs(60));
    for n in &nodes {
        eprintln!(
            "{}: {} | {}",
            n.name,
            text(n, "SELECT format('%s %s', status, audit_number) FROM incident WHERE id = 1"),
            text(n, "SELECT coalesce(string_agg(format('%s %s %s %s', request_id, status, decision, reason), '; ' ORDER BY request_id), '') FROM converge.requests")
        );
    }
    for n in &nodes {
        assert_eq!(text(n, "SELECT format('%s %s', status, audit_number) FROM incident WHERE id = 1"), "closed 1", "{}", n.name);
        assert_eq!(text(n, "SELECT string_agg(status, ',' ORDER BY request_id) FROM converge.requests"), "granted,granted", "{}", n.name);
        assert_eq!(text(n, "SELECT count(*)::text || ' ' || max(value)::text FROM converge.allocations"), "1 1", "{}", n.name);
    }
    let requests = |n: &Node| {
        text(n, "SELECT string_agg(format('%s|%s|%s|%s', request_id, requested_by, status, decision), E'\\n' ORDER BY request_id) FROM converge.requests")
    };
    assert_eq!(requests(&nodes[0]), requests(&nodes[1]));
    assert_eq!(requests(&nodes[0]), requests(&nodes[2]));
    assert_identical(&nodes, &["incident"]);
}
