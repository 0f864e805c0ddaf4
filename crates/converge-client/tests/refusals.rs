//! Refused ops of an offline client (docs/operations-log.md, "Offline
//! clients"): the edits made after one go on, and each refused counter is
//! given up with a void, on the node that refused it, wherever the client
//! pushes next.

mod common;
use common::*;
use converge_client::*;
use converge_core::*;
use serde_json::json;

/// A device's edits made after one the server refuses are not held back
/// by it: the server refuses them with it (`dependency_rejected`), and
/// the client sends them again, under the same op ids, after the op
/// before the refused one. Also when the refused op was lost on the way
/// the first time and its successor waits on the server: that copy gives
/// way to the one sent again. The refused counters are given up with voids,
/// so that they hold nothing back (docs/operations-log.md).
#[test]
fn a_devices_edits_after_a_refused_one_are_applied() {
    let mut db = fresh_node("converge_client_refused_dep", "dublin");
    db.batch_execute(
        "SELECT converge.set_authority('incident', 'tags', 'virginia', removes_only => true);
         INSERT INTO incident (id) VALUES (1), (2);",
    )
    .unwrap();
    let dir = workdir("refused-dep");
    let (set, tags, seen) = (edit_tags, tags_of, outcome_lines);

    let mut tab = open(&dir, "tab5");
    set(&mut tab, 1, |x, d| x.add("warning", d.clone()));
    set(&mut tab, 1, |x, _| x.remove("warning"));
    set(&mut tab, 1, |x, d| x.add("gloves", d.clone()));
    set(&mut tab, 1, |x, d| x.add("sharps", d.clone()));
    assert_eq!(
        seen(tab.push(&mut db).unwrap()),
        vec![
            "tab5:2 rejected not_authority",
            "tab5:3 rejected dependency_rejected: tab5:2",
            "tab5:4 rejected dependency_rejected: tab5:3",
            "tab5:1 applied ",
            "tab5:3 applied ",
            "tab5:4 applied ",
        ]
    );
    assert_eq!(tags(&mut db, 1), "[\"gloves\", \"sharps\", \"warning\"]");
    assert_eq!(tab.rejected().iter().map(|(op, r)| format!("{} {r}", op.op_id)).collect::<Vec<_>>(), vec!["tab5:2 not_authority"]);
    assert!(tab.outbox().is_empty());
    // The next edit follows the last one the server has.
    let op = set(&mut tab, 1, |x, d| x.add("mask", d.clone()));
    assert_eq!(op.deps, vec!["tab5:4"]);
    assert_eq!(seen(tab.push(&mut db).unwrap()), vec!["tab5:5 applied "]);
    // After a refused last op, the next one follows the op before it.
    set(&mut tab, 1, |x, _| x.remove("gloves"));
    assert_eq!(seen(tab.push(&mut db).unwrap()), vec!["tab5:6 rejected not_authority"]);
    let op = set(&mut tab, 1, |x, d| x.add("apron", d.clone()));
    assert_eq!(op.deps, vec!["tab5:5"]);
    assert_eq!(seen(tab.push(&mut db).unwrap()), vec!["tab5:7 applied "]);
    // Each push gave its refused counter up with a void (the voids' outcomes
    // are not among the edits'): no gap is left in tab5's ops on the node.
    assert!(tab.voids_pending().is_empty());
    let frontier: i64 = db.query_one("SELECT (converge.frontier() ->> 'tab5')::int8", &[]).unwrap().get(0);
    assert_eq!(frontier, 7);
    let voids: String = db
        .query_one("SELECT string_agg(op_id, ',' ORDER BY counter) FROM converge.op_log WHERE target_table = 'converge.void'", &[])
        .unwrap()
        .get(0);
    assert_eq!(voids, "tab5:2,tab5:6");

    // The refused op lost on the way: its successor waits on the server,
    // and stays in the outbox while the op before it does.
    let mut tab = open(&dir, "tab6");
    set(&mut tab, 2, |x, d| x.add("warning", d.clone()));
    set(&mut tab, 2, |x, _| x.remove("warning"));
    set(&mut tab, 2, |x, d| x.add("gloves", d.clone()));
    let first = tab.push_with(&mut db, |ops| ops.into_iter().filter(|o| o.op_id != "tab6:2").collect()).unwrap();
    assert_eq!(seen(first), vec!["tab6:3 buffered missing tab6:2", "tab6:1 applied "]);
    assert_eq!(tab.outbox().len(), 2);
    assert_eq!(
        seen(tab.push(&mut db).unwrap()),
        vec!["tab6:2 rejected not_authority", "tab6:3 duplicate ", "tab6:3 applied "]
    );
    assert_eq!(tags(&mut db, 2), "[\"gloves\", \"warning\"]");
    assert!(tab.outbox().is_empty());
    let pending: i64 = db.query_one("SELECT count(*) FROM converge.pending", &[]).unwrap().get(0);
    assert_eq!(pending, 0, "the copy that waited gave way");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Set incident 1's note to `text` at a time a year ahead of the device's clock.
fn note_a_year_ahead(c: &mut Client, text: &str) {
    let value = Json::from_value(&json!(text));
    c.mutate("incident", json!({"id": 1}), "note", move |v, ctx| {
        let AnyCrdt::LwwReg(x) = v else { unreachable!() };
        let now = ctx.timestamp(x.max_timestamp());
        let ahead = Timestamp(now.ms() + 365 * 24 * 3600 * 1000, 0, now.node().to_string());
        Ok(AnyCrdt::LwwReg(x.assign(value, ahead)))
    })
    .unwrap();
}

/// A device whose clock runs a year ahead: the server refuses its register
/// write (`clock_skew`, converge.max_clock_skew) and applies the counter
/// edit made after it, which the refused write does not hold back.
#[test]
fn a_write_from_a_clock_a_year_ahead_is_refused_and_holds_nothing_back() {
    let mut db = fresh_node("converge_client_skew", "dublin");
    db.batch_execute("INSERT INTO incident (id) VALUES (1)").unwrap();
    let dir = workdir("skew");
    let mut tab = open(&dir, "tab9");
    note_a_year_ahead(&mut tab, "from next year");
    tab.mutate("incident", json!({"id": 1}), "visits", |v, ctx| {
        let AnyCrdt::GCounter(x) = v else { unreachable!() };
        Ok(AnyCrdt::GCounter(x.incr(ctx.actor, 2)?))
    })
    .unwrap();
    let lines = outcome_lines(tab.push(&mut db).unwrap());
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("tab9:1 rejected clock_skew: timestamp "), "{lines:?}");
    assert_eq!(lines[1..], ["tab9:2 rejected dependency_rejected: tab9:1", "tab9:2 applied "]);
    let row = db.query_one("SELECT note IS NULL, converge.value(visits) FROM incident WHERE id = 1", &[]).unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, i64>(1)), (true, 2));
    assert_eq!(tab.rejected().iter().map(|(op, _)| op.op_id.as_str()).collect::<Vec<_>>(), ["tab9:1"]);
    assert!(tab.outbox().is_empty());
    // Given up with a void: the node's frontier for tab9 is past it.
    let row = db.query_one("SELECT (converge.frontier() ->> 'tab9')::int8, (SELECT count(*) FROM converge.frontier_gaps)", &[]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 0));

    // A device with a registered key signs its voids as its other ops.
    let key = converge_core::signing::SigningKey::from_bytes(&[9; 32]);
    db.execute("SELECT converge.register_actor('tab10', $1)", &[&key.verifying_key().to_bytes().to_vec()]).unwrap();
    let mut signed = open(&dir, "tab10");
    signed.sign_with(key, "public");
    note_a_year_ahead(&mut signed, "signed, from next year");
    let lines = outcome_lines(signed.push(&mut db).unwrap());
    assert!(lines[0].starts_with("tab10:1 rejected clock_skew"), "{lines:?}");
    let void = db
        .query_one("SELECT outcome, signature IS NOT NULL FROM converge.op_log WHERE op_id = 'tab10:1' AND target_table = 'converge.void'", &[])
        .unwrap();
    assert_eq!((void.get::<_, String>(0), void.get::<_, bool>(1)), ("applied".to_string(), true));
    assert!(signed.voids_pending().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A void that could not be sent where its op was refused (here the
/// server failed it; a dropped connection does the same) goes with the
/// next push, to another node: that node refused no such op and declines
/// it (`nothing_to_void`), once. It stays to send, and the next push to
/// the node that refused the op gives it up there.
#[test]
fn a_void_another_node_declines_waits_for_the_node_that_refused_the_op() {
    let (mut dublin, mut madrid, mut at_dublin, mut at_madrid) = two_nodes("converge_client_void_a", "converge_client_void_b");
    // The void cannot be sent to dublin after the push (the client cannot
    // read which node it is for a moment: its first step).
    dublin.batch_execute("REVOKE SELECT ON converge.node_identity FROM PUBLIC").unwrap();
    let dir = workdir("void-elsewhere");
    let mut tab = open(&dir, "tab11");
    note_a_year_ahead(&mut tab, "from next year");
    let lines = outcome_lines(tab.push(&mut at_dublin).unwrap());
    assert!(lines[0].starts_with("tab11:1 rejected clock_skew"), "{lines:?}");
    assert_eq!(tab.voids_pending().into_iter().collect::<Vec<_>>(), [1]);
    dublin.batch_execute("GRANT SELECT ON converge.node_identity TO PUBLIC").unwrap();

    let voids_at = |db: &mut postgres::Client| voids_of(db, "tab11:1");
    for _ in 0..2 {
        tab.push(&mut at_madrid).unwrap();
    }
    assert_eq!(voids_at(&mut madrid), "rejected nothing_to_void", "madrid is asked once");
    assert_eq!(tab.voids_pending().into_iter().collect::<Vec<_>>(), [1], "still to send");
    // Reopened (the declining node is saved with the state), then back at dublin.
    drop(tab);
    let mut tab = open(&dir, "tab11");
    tab.push(&mut at_madrid).unwrap();
    assert_eq!(voids_at(&mut madrid), "rejected nothing_to_void");
    tab.push(&mut at_dublin).unwrap();
    assert!(tab.voids_pending().is_empty());
    assert_eq!(voids_at(&mut dublin), "applied ");
    let row = dublin.query_one("SELECT (converge.frontier() ->> 'tab11')::int8, (SELECT count(*) FROM converge.frontier_gaps)", &[]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The node that declined a void may refuse the op later: it held the op
/// waiting for the one before it (lost on the way there) when the void
/// came, and judged it when that one arrived. Its refusal, learned at the
/// next push there, makes it the node to take the void.
#[test]
fn a_node_that_declined_a_void_takes_it_once_it_refuses_the_op() {
    let (mut dublin, mut madrid, mut at_dublin, mut at_madrid) = two_nodes("converge_client_undecline_a", "converge_client_undecline_b");
    let dir = workdir("void-undecline");
    let mut tab = open(&dir, "tab12");
    edit_tags(&mut tab, 1, |x, d| x.add("warning", d.clone()));
    edit_tags(&mut tab, 1, |x, _| x.remove("warning"));
    // Madrid gets the second op only: it holds it, unjudged.
    let first = tab.push_with(&mut at_madrid, |ops| ops.into_iter().filter(|o| o.op_id != "tab12:1").collect()).unwrap();
    assert_eq!(outcome_lines(first), vec!["tab12:2 buffered missing tab12:1"]);
    // Removals become the authority's, on both nodes. Dublin refuses the
    // removal; the void cannot be sent there after the push.
    for db in [&mut dublin, &mut madrid] {
        db.batch_execute("SELECT converge.set_authority('incident', 'tags', 'virginia', removes_only => true)").unwrap();
    }
    dublin.batch_execute("REVOKE SELECT ON converge.node_identity FROM PUBLIC").unwrap();
    let mut lines = outcome_lines(tab.push(&mut at_dublin).unwrap());
    lines.sort();
    assert!(lines.len() == 2 && lines[0] == "tab12:1 applied " && lines[1].starts_with("tab12:2 rejected not_authority"), "{lines:?}");
    dublin.batch_execute("GRANT SELECT ON converge.node_identity TO PUBLIC").unwrap();
    let voids_at = |db: &mut postgres::Client| voids_of(db, "tab12:2");
    // Madrid refused no tab12:2 yet: it declines the void.
    tab.push(&mut at_madrid).unwrap();
    assert_eq!(voids_at(&mut madrid), "rejected nothing_to_void");
    assert_eq!(tab.voids_pending().into_iter().collect::<Vec<_>>(), [2]);
    // tab12:1 reaches madrid (applied here directly; replication from
    // dublin would bring it too): the op madrid held is judged, and refused.
    let op: Vec<u8> = dublin
        .query_one(
            "SELECT converge.op_encode(ROW(op_id, actor, target_table, target_key, target_column, schema_version, epoch, deps, delta,
                    signature)::converge.op) FROM converge.op_log WHERE op_id = 'tab12:1'",
            &[],
        )
        .unwrap()
        .get(0);
    let released: String = madrid
        .query_one(
            "SELECT string_agg(concat_ws(' ', op_id, outcome, split_part(reason, ':', 1)), ', ' ORDER BY op_id)
               FROM converge.apply(converge.op_decode($1), 'tab12')",
            &[&op],
        )
        .unwrap()
        .get(0);
    assert_eq!(released, "tab12:1 applied, tab12:2 rejected not_authority");
    // The next push there learns that refusal and gives the op up there.
    tab.push(&mut at_madrid).unwrap();
    assert_eq!(voids_at(&mut madrid), "rejected nothing_to_void, applied ");
    assert!(tab.voids_pending().is_empty());
    let row = madrid.query_one("SELECT (converge.frontier() ->> 'tab12')::int8, (SELECT count(*) FROM converge.frontier_gaps)", &[]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 0));
    let rejected: Vec<String> = tab.rejected().iter().map(|(op, r)| format!("{} {}", op.op_id, r.split(':').next().unwrap_or(""))).collect();
    assert_eq!(rejected, vec!["tab12:2 not_authority"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An op the server holds waiting (its dep was lost on the way), refused
/// when it is sent again after an authority was set meanwhile: the op
/// made after it is chained again and applied, and the waiting copy is
/// refused as well when its dep arrives (nothing is left waiting).
#[test]
fn an_op_refused_after_it_waited_holds_nothing_back() {
    let mut db = fresh_node("converge_client_refused_later", "dublin");
    db.batch_execute("INSERT INTO incident (id) VALUES (1);").unwrap();
    let dir = workdir("refused-later");
    let set = |c: &mut Client, f: TagEdit| edit_tags(c, 1, f);
    let seen = outcome_lines;
    let mut tab = open(&dir, "tab7");
    set(&mut tab, |x, d| x.add("warning", d.clone()));
    set(&mut tab, |x, _| x.remove("warning"));
    let first = tab.push_with(&mut db, |ops| ops.into_iter().filter(|o| o.op_id != "tab7:1").collect()).unwrap();
    assert_eq!(seen(first), vec!["tab7:2 buffered missing tab7:1"]);
    // Removals are the authority's from now on; the device adds one more.
    db.batch_execute("SELECT converge.set_authority('incident', 'tags', 'virginia', removes_only => true);").unwrap();
    set(&mut tab, |x, d| x.add("gloves", d.clone()));
    let outcomes = seen(tab.push(&mut db).unwrap());
    assert!(outcomes.contains(&"tab7:2 rejected not_authority".to_string()), "{outcomes:?}");
    assert_eq!(outcomes.last().map(String::as_str), Some("tab7:3 applied "), "{outcomes:?}");
    assert_eq!(tab.rejected().iter().map(|(op, r)| format!("{} {r}", op.op_id)).collect::<Vec<_>>(), vec!["tab7:2 not_authority"]);
    assert!(tab.outbox().is_empty());
    assert_eq!(tags_of(&mut db, 1), "[\"gloves\", \"warning\"]");
    let pending: i64 = db.query_one("SELECT count(*) FROM converge.pending", &[]).unwrap().get(0);
    assert_eq!(pending, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The voids of `op_id` in `db`'s log, in order: "outcome reason-code, ...".
fn voids_of(db: &mut postgres::Client, op_id: &str) -> String {
    db.query_one(
        "SELECT coalesce(string_agg(outcome || ' ' || coalesce(split_part(reason, ':', 1), ''), ', ' ORDER BY seq), 'none')
           FROM converge.op_log WHERE op_id = $1 AND target_table = 'converge.void'",
        &[&op_id],
    )
    .unwrap()
    .get(0)
}
