//! Epochs on real nodes (SPEC section 5): edits made after an incident was
//! frozen are quarantined, not silently applied, on every node, also on a
//! node that had applied such an edit before the freeze reached it (it
//! rebuilds the row), through a partition and a kill -9.
//!
//! Needs the extension installed (`cargo pgrx install`); `bash .ci/test`
//! runs it. Ports: CONVERGE_CLUSTER_PORT + 100..102.

use converge_cluster_tests::workload::*;
use converge_cluster_tests::*;
use std::time::Duration;

fn base_port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710) + 100
}

#[test]
fn a_late_edit_after_a_freeze_is_quarantined_everywhere() {
    let root = Scratch::new("epochs");
    let nodes = mesh_of_three(&root.0, base_port());
    for n in &nodes {
        n.client().batch_execute("SELECT converge.set_authority('item', NULL, 'virginia')").unwrap();
    }
    nodes[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'pump stopped'), (2, 'valve')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    nodes[1].client().batch_execute("UPDATE item SET tags = converge.add(tags, 'checked power') WHERE id = 1").unwrap();
    converge_all(&nodes, Duration::from_secs(60));

    // virginia, cut off from both, closes incident 1 (freezes it); madrid,
    // not knowing, edits it; the edit reaches dublin, which applies it.
    pause(&nodes, 2, 0, true);
    pause(&nodes, 2, 1, true);
    assert_eq!(text(&nodes[2], "SELECT converge.freeze('item', '{\"id\":1}')::text"), "1");
    nodes[0]
        .client()
        .batch_execute("UPDATE item SET title = 'pump stopped (late)', tags = converge.add(tags, 'late note') WHERE id = 1")
        .unwrap();
    let late = text(&nodes[0], "SELECT string_agg(op_id, ',' ORDER BY seq) FROM converge.op_log WHERE actor = 'madrid' AND epoch = 0 AND seq > (SELECT max(seq) - 2 FROM converge.op_log WHERE actor = 'madrid')");
    assert_eq!(late.split(',').count(), 2, "{late}");
    wait_for(&nodes[1], "SELECT title FROM item WHERE id = 1", "pump stopped (late)", "the late edit did not reach dublin");
    // An edit of the other row, in epoch 0, is not affected.
    nodes[0].client().batch_execute("UPDATE item SET title = 'valve (madrid)' WHERE id = 2").unwrap();
    // dublin crashes and comes back; then the partition heals.
    nodes[1].kill9();
    nodes[1].start();
    pause(&nodes, 2, 0, false);
    pause(&nodes, 2, 1, false);
    converge_all(&nodes, Duration::from_secs(60));
    // After the freeze reached it, dublin amends the closed incident:
    // epoch 1, applied everywhere.
    wait_for(&nodes[1], "SELECT converge.epoch('item', '{\"id\":1}')::text", "1", "the freeze did not reach dublin");
    nodes[1].client().batch_execute("UPDATE item SET tags = converge.add(tags, 'amended') WHERE id = 1").unwrap();
    converge_all(&nodes, Duration::from_secs(60));

    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        let row = text(n, "SELECT format('%s | %s', title, tags::jsonb) FROM item WHERE id = 1");
        assert_eq!(row, "pump stopped | [\"amended\", \"checked power\"]", "{}", n.name);
        assert_eq!(text(n, "SELECT title FROM item WHERE id = 2"), "valve (madrid)", "{}", n.name);
        assert_eq!(text(n, "SELECT converge.epoch('item', '{\"id\":1}')::text"), "1", "{}", n.name);
        // Each late op's last outcome here: quarantined, frozen.
        let outcomes = text(
            n,
            &format!(
                "SELECT string_agg(DISTINCT format('%s %s', outcome, reason), ', ') FROM
                   (SELECT DISTINCT ON (op_id) outcome, reason FROM converge.op_log
                     WHERE op_id = ANY (string_to_array('{late}', ',')) ORDER BY op_id, seq DESC) o"
            ),
        );
        assert_eq!(outcomes, "quarantined frozen", "{}", n.name);
        // The late ops' counters are used up: madrid's frontier is past them.
        let frontier: i64 = text(n, "SELECT (converge.frontier() ->> 'madrid')").parse().unwrap();
        let last: i64 = late.rsplit(':').next().unwrap().parse().unwrap();
        assert!(frontier > last, "{}: madrid's frontier {frontier} stops at the late ops (last {last})", n.name);
    }
}

/// An op made in an epoch a node has not reached waits there for the
/// freeze (`new_epoch`) instead of escaping it, and a freeze that reached a
/// node before it knew the table's authority is applied once it does, also
/// from a copy a third node forwarded. Only virginia knows it is the
/// table's authority at first, and virginia and madrid are cut off from
/// each other: virginia freezes an incident; dublin, told the authority
/// after the freeze reached it, applies it (and forwards it to madrid, which
/// refuses it), then amends the incident (epoch 1), which waits at madrid;
/// madrid makes a late edit (epoch 0), then is told the authority.
#[test]
fn an_edit_of_an_epoch_not_reached_waits_for_its_freeze() {
    let root = Scratch::new("epochs-wait");
    let nodes = mesh_of_three(&root.0, base_port() + 3);
    let set_authority = |n: &Node| n.client().batch_execute("SELECT converge.set_authority('item', NULL, 'virginia')").unwrap();
    set_authority(&nodes[2]);
    nodes[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'pump stopped'), (2, 'valve')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    // An op's last outcome here other than `duplicate` (a node forwards an
    // op it applied outside a peer's replication: a second copy).
    let last = |id: &str| format!("SELECT coalesce((SELECT outcome || ' ' || coalesce(reason, '') FROM converge.op_log WHERE op_id = '{id}' AND outcome <> 'duplicate' ORDER BY seq DESC LIMIT 1), 'none')");
    let refused = "rejected not_authority: virginia is not the authority of public.item here";

    pause(&nodes, 2, 0, true);
    assert_eq!(text(&nodes[2], "SELECT converge.freeze('item', '{\"id\":1}')::text"), "1");
    let freeze = text(&nodes[2], "SELECT op_id FROM converge.op_log WHERE target_table = 'converge.freeze'");
    wait_for(&nodes[1], &last(&freeze), refused, "virginia's freeze did not reach dublin");
    set_authority(&nodes[1]);
    assert_eq!(text(&nodes[1], &last(&freeze)), "applied ", "set_authority applies the freeze that came first");
    assert_eq!(text(&nodes[1], "SELECT converge.epoch('item', '{\"id\":1}')::text"), "1");
    wait_for(&nodes[0], &last(&freeze), refused, "dublin did not forward the freeze to madrid");

    nodes[1].client().batch_execute("UPDATE item SET tags = converge.add(tags, 'amended') WHERE id = 1").unwrap();
    let amended = text(&nodes[1], "SELECT op_id FROM converge.op_log WHERE actor = 'dublin' ORDER BY seq DESC LIMIT 1");
    wait_for(&nodes[0], &last(&amended), "quarantined new_epoch", "dublin's amendment did not wait at madrid");
    nodes[0].client().batch_execute("UPDATE item SET tags = converge.add(tags, 'late note') WHERE id = 1").unwrap();
    let late = text(&nodes[0], "SELECT op_id FROM converge.op_log WHERE actor = 'madrid' ORDER BY seq DESC LIMIT 1");
    assert_eq!(text(&nodes[0], "SELECT converge.elements(tags)::text FROM item WHERE id = 1"), "{\"late note\"}");

    // Told the authority, madrid applies the forwarded freeze: the
    // amendment applies and the late note is taken out, still cut off
    // from virginia.
    set_authority(&nodes[0]);
    assert_eq!(text(&nodes[0], &last(&freeze)), "applied ");
    assert_eq!(text(&nodes[0], &last(&amended)), "applied ");
    assert_eq!(text(&nodes[0], &last(&late)), "quarantined frozen");
    assert_eq!(text(&nodes[0], "SELECT converge.elements(tags)::text FROM item WHERE id = 1"), "{amended}");

    pause(&nodes, 2, 0, false);
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        assert_eq!(text(n, "SELECT converge.elements(tags)::text FROM item WHERE id = 1"), "{amended}", "{}", n.name);
        assert_eq!(text(n, &last(&amended)), "applied ", "{}: the amendment", n.name);
        assert_eq!(text(n, &last(&late)), "quarantined frozen", "{}: madrid's late note", n.name);
        assert_eq!(text(n, "SELECT converge.epoch('item', '{\"id\":1}')::text"), "1", "{}", n.name);
    }
}
