//! Coordination boundaries on real nodes (SPEC section 5): a column with an
//! authority is changed only by that node, through a partition too, and
//! every node ends with the authority's value; the other columns of the
//! same rows keep merging everywhere.
//!
//! Needs the extension installed (`cargo pgrx install`); `bash .ci/test`
//! runs it. Ports: CONVERGE_CLUSTER_PORT + 70..81.

use converge_cluster_tests::workload::*;
use converge_cluster_tests::*;
use std::time::Duration;

fn base_port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710) + 70
}

/// Apply a tablet's first op on `column` of item 1, its delta given in
/// hex: its outcome and reason.
fn apply_from_tablet(n: &Node, tablet: &str, column: &str, hex: &str) -> (String, Option<String>) {
    let row = n
        .client()
        .query_one(
            &format!(
                "SELECT outcome, reason FROM converge.apply(ROW('{tablet}:1', '{tablet}', 'public.item', '{{\"id\":1}}', '{column}', 1, 0, '{{}}',
                     decode('{hex}', 'hex'), NULL)::converge.op)"
            ),
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// The ops a node did not apply, with their reasons.
fn not_applied(n: &Node) -> String {
    text(n, "SELECT coalesce(string_agg(op_id || ' ' || reason, ','), '') FROM converge.op_log WHERE outcome <> 'applied'")
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

    // Deleted everywhere, then inserted again on madrid with title NULL:
    // the insert writes title as a placeholder that virginia's writes
    // beat, so the row keeps virginia's title, on madrid when the insert
    // commits (taken from the tombstone's clock) and everywhere after;
    // sev is madrid's.
    nodes[0].client().batch_execute("DELETE FROM item WHERE id = 1").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    nodes[0].client().batch_execute("INSERT INTO item (id, sev) VALUES (1, 7)").unwrap();
    let back = "SELECT format('%s | %s', coalesce(title, 'NULL'), sev) FROM item WHERE id = 1";
    assert_eq!(text(&nodes[0], back), "pump stopped (valve) | 7");
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    // virginia still decides it, and every node follows.
    nodes[2].client().batch_execute("UPDATE item SET title = 'reopened' WHERE id = 1").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        assert_eq!(text(n, back), "reopened | 7", "on {}", n.name);
    }
}

/// A client's insert of an existing row writes an authority column only
/// under a placeholder timestamp, which the authority's value beats; under
/// a real one it would reset that value on every node, so its entry node
/// refuses it, and only applied ops travel.
#[test]
fn a_clients_insert_cannot_reset_the_authoritys_value() {
    let root = Scratch::new("authority-insert");
    let nodes = mesh_of_three(&root.0, base_port());
    for n in &nodes {
        n.client().batch_execute("SELECT converge.set_authority('item', 'title', 'virginia')").unwrap();
    }
    nodes[0].client().batch_execute("INSERT INTO item (id, sev) VALUES (1, 2)").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    nodes[2].client().batch_execute("UPDATE item SET title = 'closed by virginia' WHERE id = 1").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    // An insert with title NULL under the tablet's clock (put's timestamp
    // is now, after virginia's write) and one with title under a
    // placeholder, both with sev under a real timestamp.
    let real = "encode(converge.put(converge.put(converge.put(NULL::converge.lwwmap, '$live', 'true'), 'title', 'null'),
                                    'sev', '5')::bytea, 'hex')";
    let placeholder = "encode(format('{\"entries\":{\"$live\":[[%1$s,0,\"tab10\"],{\"put\":true}],\"title\":[[0,1,\"tab10\"],{\"put\":null}],\"sev\":[[%1$s,0,\"tab10\"],{\"put\":6}]}}',
                                       (extract(epoch FROM clock_timestamp()) * 1000)::bigint)::converge.lwwmap::bytea, 'hex')";
    let hex = |sql: &str| text(&nodes[1], &format!("SELECT {sql}"));
    let why = "not_authority: a client's insert carries title only under a placeholder timestamp";
    assert_eq!(apply_from_tablet(&nodes[1], "tab9", "", &hex(real)), ("rejected".into(), Some(why.into())));
    assert_eq!(item_1(&nodes[1]), "closed by virginia | 2");
    assert_eq!(apply_from_tablet(&nodes[1], "tab10", "", &hex(placeholder)), ("applied".into(), None));
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        assert_eq!(item_1(n), "closed by virginia | 6", "on {}", n.name);
        assert_eq!(not_applied(n), if n.name == "dublin" { format!("tab9:1 {why}") } else { String::new() }, "on {}", n.name);
    }
}

fn item_1(n: &Node) -> String {
    text(n, "SELECT format('%s | %s', coalesce(title, 'NULL'), sev) FROM item WHERE id = 1")
}

/// Apply one op of the client `tab` to `ctr.g` on `n` with this schema version.
fn tab_op(n: &Node, counter: i32, version: i32, total: i32) -> (String, Option<String>) {
    let row = n
        .client()
        .query_one(
            &format!(
                "SELECT outcome, reason FROM converge.apply(ROW('tab:{counter}', 'tab', 'public.ctr', '{{\"id\":1}}', 'g', {version}, 0, '{{}}',
                     '{{\"counts\":{{\"tab\":{total}}}}}'::converge.gcounter::bytea, NULL)::converge.op)"
            ),
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// An old client's op is kept aside (`old_schema`) wherever it arrives,
/// and a newer client's (`new_schema`) until the node moves to its
/// version; through a partition and a kill -9 of the nodes holding them.
#[test]
fn an_old_schema_op_is_kept_aside_on_every_node() {
    let root = Scratch::new("versions");
    let nodes = mesh_of_three(&root.0, base_port() + 3);
    for n in &nodes {
        n.client().batch_execute("SELECT converge.set_schema_version('ctr', 'g', 2)").unwrap();
    }
    // Local ops carry version 2.
    nodes[0].client().batch_execute("UPDATE ctr SET g = converge.incr(g, 1) WHERE id = 1").unwrap();
    // An old client's op is kept aside where it arrives; a current one applies.
    assert_eq!(tab_op(&nodes[1], 1, 1, 50), ("quarantined".into(), Some("old_schema".into())));
    assert_eq!(tab_op(&nodes[2], 2, 2, 7), ("applied".into(), None));
    // A client already on version 3 while virginia is cut off: madrid keeps
    // its op aside until the nodes move to version 3, then applies and
    // ships it, and virginia (moved while cut off) gets it after healing.
    pause(&nodes, 2, 0, true);
    pause(&nodes, 2, 1, true);
    assert_eq!(tab_op(&nodes[0], 3, 3, 9), ("quarantined".into(), Some("new_schema".into())));
    // madrid and dublin crash with those ops kept aside, and come back.
    for i in [0, 1] {
        nodes[i].kill9();
        nodes[i].start();
    }
    // madrid last: the others already know version 3 when its op arrives.
    let applied: Vec<i64> = [1, 2, 0]
        .iter()
        .map(|&i| nodes[i].client().query_one("SELECT converge.set_schema_version('ctr', 'g', 3)", &[]).unwrap().get(0))
        .collect();
    assert_eq!(applied, [0, 0, 1]);
    pause(&nodes, 2, 0, false);
    pause(&nodes, 2, 1, false);
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["ctr"]);
    for n in &nodes {
        assert_eq!(text(n, "SELECT converge.value(g)::text FROM ctr WHERE id = 1"), "10", "{}", n.name);
        let versions = text(n, "SELECT string_agg(DISTINCT schema_version::text, ',') FROM converge.op_log WHERE actor = 'madrid' AND target_column = 'g'");
        assert_eq!(versions, "1,2", "{}", n.name);
    }
    let aside = text(&nodes[1], "SELECT string_agg(op_id || ' ' || reason, ',') FROM converge.quarantine");
    assert_eq!(aside, "tab:1 old_schema");
    // dublin translates it: what it meant (5 under version 3) as its own
    // change, then, in a transaction of its own, a repair superseding it.
    // (tab's later totals, 7 and 9, do not carry tab:1's 50: nothing of it
    // is in g.) Every node then counts the translation, the op is aside
    // nowhere, and sent again anywhere it is superseded on arrival.
    let mut dublin = nodes[1].client();
    dublin.batch_execute("UPDATE ctr SET g = converge.incr(g, 5) WHERE id = 1").unwrap();
    dublin.batch_execute("SELECT converge.repair(ARRAY['tab:1'], 'translated: version 1 counted tens')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["ctr"]);
    let repair = text(&nodes[1], "SELECT op_id FROM converge.op_log WHERE target_table = 'converge.repair'");
    for n in &nodes {
        assert_eq!(text(n, "SELECT converge.value(g)::text FROM ctr WHERE id = 1"), "15", "{}", n.name);
        assert_eq!(text(n, "SELECT count(*)::text FROM converge.quarantine"), "0", "{}", n.name);
        assert_eq!(text(n, "SELECT string_agg(op_id || ' ' || repair_id, ',') FROM converge.superseded"), format!("tab:1 {repair}"), "{}", n.name);
    }
    assert_eq!(text(&nodes[1], "SELECT string_agg(outcome || ' ' || reason, ',') FROM converge.op_log WHERE op_id = 'tab:1'"), "quarantined old_schema");
    assert_eq!(tab_op(&nodes[2], 1, 1, 50), ("superseded".into(), Some(repair)));
}

/// The SPEC's promise for removes_only: a safety warning does not disappear
/// because a stale tablet removed it. Adds stay local everywhere; only
/// virginia removes, and an add made concurrently with its removal wins;
/// through a partition and a kill -9 of the node that refused the removal
/// and of the authority.
#[test]
fn a_stale_tablet_cannot_remove_a_warning_tag() {
    let root = Scratch::new("removes_only");
    let nodes = mesh_of_three(&root.0, base_port() + 6);
    for n in &nodes {
        n.client().batch_execute("SELECT converge.set_authority('item', 'tags', 'virginia', removes_only => true)").unwrap();
    }
    nodes[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'ventilator')").unwrap();
    nodes[0].client().batch_execute("UPDATE item SET tags = converge.add(tags, 'warning') WHERE id = 1").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    // The tablet's stale copy of the row, taken before the partition.
    let stale = text(&nodes[1], "SELECT encode(converge.remove(tags, 'warning')::bytea, 'hex') FROM item WHERE id = 1");

    pause(&nodes, 2, 0, true);
    pause(&nodes, 2, 1, true);
    // The tablet's removal reaches dublin: rejected, and the warning stays.
    assert_eq!(apply_from_tablet(&nodes[1], "tab7", "tags", &stale), ("rejected".into(), Some("not_authority".into())));
    // A local removal on madrid fails, naming the authority; adds do not.
    let err = nodes[0].client().batch_execute("UPDATE item SET tags = converge.remove(tags, 'warning') WHERE id = 1").unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err:?}");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("virginia")), "{err:?}");
    nodes[1].client().batch_execute("UPDATE item SET tags = converge.add(tags, 'checked') WHERE id = 1").unwrap();
    // virginia removes the warning while madrid, cut off from it, raises it
    // again: the new add is concurrent with the removal, so it wins.
    nodes[2].client().batch_execute("UPDATE item SET tags = converge.remove(tags, 'warning') WHERE id = 1").unwrap();
    nodes[0].client().batch_execute("UPDATE item SET tags = converge.add(tags, 'warning') WHERE id = 1").unwrap();
    // dublin (which holds the refusal and an add virginia has not seen)
    // and virginia (whose removal has not shipped) crash and come back
    // before the partition heals: nothing they committed is lost.
    for i in [1, 2] {
        nodes[i].kill9();
        nodes[i].start();
    }
    assert_eq!(not_applied(&nodes[1]), "tab7:1 not_authority");
    assert_eq!(text(&nodes[2], "SELECT tags::jsonb::text FROM item WHERE id = 1"), "[]");
    pause(&nodes, 2, 0, false);
    pause(&nodes, 2, 1, false);
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    assert_eq!(text(&nodes[2], "SELECT tags::jsonb::text FROM item WHERE id = 1"), "[\"checked\", \"warning\"]");
    // Once virginia removes what it has seen, the warning is gone everywhere.
    nodes[2].client().batch_execute("UPDATE item SET tags = converge.remove(tags, 'warning') WHERE id = 1").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        assert_eq!(text(n, "SELECT tags::jsonb::text FROM item WHERE id = 1"), "[\"checked\"]", "{}", n.name);
        assert_eq!(not_applied(n), if n.name == "dublin" { "tab7:1 not_authority" } else { "" }, "{}", n.name);
    }
}

/// removes_only on an ormap column: a stale tablet cannot remove a key, and
/// a node cut off from the authority still increments and overwrites (its
/// ops say what they superseded, so every node tells them from removals
/// alike). virginia's key removal loses to an add made concurrently.
#[test]
fn a_stale_tablet_cannot_remove_an_ormap_key() {
    let root = Scratch::new("removes_only_ormap");
    let nodes = mesh_of_three(&root.0, base_port() + 9);
    for n in &nodes {
        n.client().batch_execute("SELECT converge.set_authority('item', 'inv', 'virginia', removes_only => true)").unwrap();
    }
    nodes[0]
        .client()
        .batch_execute(
            "INSERT INTO item (id, title) VALUES (1, 'kit');
             UPDATE item SET inv = converge.add(inv, 'warnings', 'latex') WHERE id = 1;
             UPDATE item SET inv = converge.incr(inv, 'gauze', 5) WHERE id = 1;
             UPDATE item SET inv = converge.assign(inv, 'note', '\"check seals\"') WHERE id = 1;",
        )
        .unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    // The tablet's removal of the key, made from its stale copy of the row.
    let stale = text(&nodes[1], "SELECT encode(converge.delta(converge.remove(inv, 'warnings'), inv)::bytea, 'hex') FROM item WHERE id = 1");

    pause(&nodes, 2, 0, true);
    pause(&nodes, 2, 1, true);
    assert_eq!(apply_from_tablet(&nodes[1], "tab8", "inv", &stale), ("rejected".into(), Some("not_authority".into())));
    // Cut off from virginia, madrid cannot remove the key or an element,
    // but it increments and overwrites.
    for remove in ["converge.remove(inv, 'warnings')", "converge.remove(inv, 'warnings', 'latex')"] {
        let err = nodes[0].client().batch_execute(&format!("UPDATE item SET inv = {remove} WHERE id = 1")).unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{remove}: {err:?}");
    }
    nodes[0]
        .client()
        .batch_execute(
            "UPDATE item SET inv = converge.incr(inv, 'gauze', 1) WHERE id = 1;
             UPDATE item SET inv = converge.assign(inv, 'note', '\"seals checked\"') WHERE id = 1;",
        )
        .unwrap();
    // virginia removes the warnings key while dublin, cut off from it,
    // adds to it: the add is concurrent with the removal, so it stays.
    nodes[2].client().batch_execute("UPDATE item SET inv = converge.remove(inv, 'warnings') WHERE id = 1").unwrap();
    nodes[1].client().batch_execute("UPDATE item SET inv = converge.add(inv, 'warnings', 'sharps') WHERE id = 1").unwrap();
    pause(&nodes, 2, 0, false);
    pause(&nodes, 2, 1, false);
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        assert_eq!(
            text(n, "SELECT converge.to_jsonb(inv)::text FROM item WHERE id = 1"),
            r#"{"note": ["seals checked"], "gauze": 6, "warnings": ["sharps"]}"#,
            "{}",
            n.name
        );
        assert_eq!(not_applied(n), if n.name == "dublin" { "tab8:1 not_authority" } else { "" }, "{}", n.name);
    }
}

/// A change of authority is atomic (docs/coordination.md, "Moving an
/// authority"): virginia hands title over to dublin while madrid is cut
/// off from virginia, so madrid gets dublin's take and write before
/// virginia's last write and its handover. Each op is judged by its actor
/// and counter, so every node applies every op, and every node ends with
/// the same setting and rows.
#[test]
fn an_authority_moves_atomically_through_a_partition() {
    let root = Scratch::new("handover");
    let nodes = mesh_of_three(&root.0, base_port());
    for n in &nodes {
        n.client().batch_execute("SELECT converge.set_authority('item', 'title', 'virginia')").unwrap();
    }
    nodes[0].client().batch_execute("INSERT INTO item (id, sev) VALUES (1, 2)").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    let code = |r: Result<(), postgres::Error>| r.unwrap_err().code().map(|c| c.code().to_string());

    pause(&nodes, 2, 0, true);
    nodes[2].client().batch_execute("UPDATE item SET title = 'virginia''s last' WHERE id = 1").unwrap();
    // A move starts on the holder (virginia, a peer here).
    let here = nodes[0].client().batch_execute("SELECT converge.set_authority('item', 'title', 'dublin')");
    assert_eq!(code(here), Some("55000".into()));
    // A transaction of virginia whose snapshot is older than the handover
    // passes the guards, which read with it; it fails when it takes its
    // counters, which would come after virginia's term.
    let mut stale = nodes[2].client();
    let mut tx = stale.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().unwrap();
    tx.batch_execute("SELECT 1").unwrap();
    // One whose write of the column was rolled back to a savepoint (its
    // op trigger fired there) wrote nothing the handover concerns: it
    // commits.
    let mut undone = nodes[2].client();
    let mut tx2 = undone.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().unwrap();
    tx2.batch_execute(
        "SAVEPOINT s; SET CONSTRAINTS ALL IMMEDIATE; UPDATE item SET title = 'undone' WHERE id = 1; ROLLBACK TO SAVEPOINT s;
         UPDATE ctr SET g = converge.incr(g, 1) WHERE id = 1",
    )
    .unwrap();
    nodes[2].client().batch_execute("SELECT converge.set_authority('item', 'title', 'dublin')").unwrap();
    tx.batch_execute("UPDATE item SET title = 'stale snapshot' WHERE id = 1").unwrap();
    assert_eq!(code(tx.commit()), Some("40001".into()));
    tx2.commit().unwrap();
    let after = nodes[2].client().batch_execute("UPDATE item SET title = 'too late' WHERE id = 1");
    assert_eq!(code(after), Some("42501".into()));
    // dublin gets the handover; it decides only once it has taken it.
    let setting = "SELECT format('%s %s %s', node, coalesce(since::text, 'untaken'), earlier) FROM converge.authorities WHERE target_column = 'title'";
    let handed = text(&nodes[2], setting);
    assert!(handed.starts_with("dublin untaken [{\"node\": \"virginia\", \"after\": 0, \"until\": "), "{handed}");
    wait_for(&nodes[1], setting, &handed, "virginia's handover");
    let early = nodes[1].client().batch_execute("UPDATE item SET title = 'early' WHERE id = 1");
    assert_eq!(code(early), Some("42501".into()));
    // A request made meanwhile waits: nobody holds the column.
    let asked: String = nodes[0]
        .client()
        .query_one("SELECT converge.request('item', '{\"id\": 1}', 'title', '\"asked meanwhile\"')", &[])
        .unwrap()
        .get(0);
    let status = format!("SELECT status FROM converge.requests WHERE request_id = '{asked}'");
    wait_for(&nodes[1], &status, "pending", "madrid's request");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(text(&nodes[1], &status), "pending", "decided before dublin took the column");
    assert_eq!(text(&nodes[1], "SELECT title FROM item WHERE id = 1"), "virginia's last");
    // Taking it decides what waited (then, or in the worker's next pass
    // if the worker held the request's row at that moment). madrid, cut
    // off from dublin meanwhile too, gets dublin's take and its writes in
    // one batch, and judges the writes after the take.
    pause(&nodes, 1, 0, true);
    nodes[1].client().batch_execute("SELECT converge.set_authority('item', 'title', 'dublin')").unwrap();
    wait_for(&nodes[1], &status, "granted", "the request decided once dublin took the column");
    assert_eq!(text(&nodes[1], "SELECT title FROM item WHERE id = 1"), "asked meanwhile");
    nodes[1].client().batch_execute("UPDATE item SET title = 'dublin decides' WHERE id = 1").unwrap();
    pause(&nodes, 1, 0, false);
    // madrid has dublin's take and write, not yet virginia's last write.
    wait_for(&nodes[0], "SELECT coalesce(title, 'NULL') FROM item WHERE id = 1", "dublin decides", "dublin's write");
    assert!(!text(&nodes[0], setting).contains("untaken"));

    pause(&nodes, 2, 0, false);
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    let taken = text(&nodes[1], setting);
    for n in &nodes {
        assert_eq!(not_applied(n), "", "on {}", n.name);
        assert_eq!(text(n, "SELECT title FROM item WHERE id = 1"), "dublin decides", "on {}", n.name);
        assert_eq!(text(n, setting), taken, "the setting on {}", n.name);
        assert_eq!(text(n, &status), "granted", "madrid's request on {}", n.name);
        let last = "SELECT count(*)::text FROM converge.op_log WHERE actor = 'virginia' AND target_table = 'public.item' AND outcome = 'applied'";
        if n.name != "virginia" {
            assert_eq!(text(n, last), "1", "virginia's last write on {}", n.name);
        }
    }
}

/// A handover that reaches a node before that node has the setting is
/// rejected there, and applied when the setting is recorded; a setting
/// the handover does not follow is refused.
#[test]
fn a_handover_that_came_before_the_setting_is_applied_with_it() {
    let root = Scratch::new("handover-late");
    let nodes = mesh_of_three(&root.0, base_port() + 3);
    for n in &nodes[1..] {
        n.client().batch_execute("SELECT converge.set_authority('item', 'title', 'virginia')").unwrap();
    }
    nodes[2].client().batch_execute("SELECT converge.set_authority('item', 'title', 'dublin')").unwrap();
    let setting = "SELECT coalesce((SELECT format('%s %s', node, coalesce(since::text, 'untaken')) FROM converge.authorities WHERE target_column = 'title'), 'none')";
    wait_for(&nodes[1], setting, "dublin untaken", "virginia's handover");
    nodes[1].client().batch_execute("SELECT converge.set_authority('item', 'title', 'dublin')").unwrap();
    let taken = text(&nodes[1], setting);
    let refused = "SELECT count(*)::text FROM converge.op_log WHERE target_table = 'converge.handover' AND outcome = 'rejected'";
    wait_for(&nodes[0], refused, "2", "the handovers rejected on madrid, which has no setting");
    // Set as dublin (the holder now) directly: the handovers do not follow it.
    let err = nodes[0].client().batch_execute("SELECT converge.set_authority('item', 'title', 'dublin')").unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("55000"), "{err:?}");
    assert_eq!(text(&nodes[0], setting), "none");
    // Set as the others had it before the move: the handovers follow.
    nodes[0].client().batch_execute("SELECT converge.set_authority('item', 'title', 'virginia')").unwrap();
    assert_eq!(text(&nodes[0], setting), taken);
    nodes[1].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'dublin decides')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    assert_eq!(text(&nodes[0], "SELECT title FROM item WHERE id = 1"), "dublin decides");
}
