//! A client rejoining from a server's rows (its cursor behind the server's
//! compacted log) while a server holds some of its ops: against real
//! servers (CONVERGE_TEST_DSN, as the other client tests).

mod common;

use common::*;
use converge_client::*;
use serde_json::json;

fn incr(c: &mut Client, n: i64) -> Op {
    c.mutate("incident", json!({"id": 1}), "visits", move |v, ctx| {
        let AnyCrdt::GCounter(x) = v else { unreachable!() };
        Ok(AnyCrdt::GCounter(x.incr(ctx.actor, n)?))
    })
    .unwrap()
}

fn visits(c: &Client) -> i64 {
    match c.value("incident", &json!({"id": 1}), "visits") {
        Some(AnyCrdt::GCounter(x)) => x.value().unwrap(),
        other => panic!("{other:?}"),
    }
}

fn server_visits(db: &mut postgres::Client) -> i64 {
    db.query_one("SELECT converge.value(visits) FROM incident WHERE id = 1", &[]).unwrap().get(0)
}

/// A device's counter op that a server holds (buffered: the op before it
/// went to another server) has left the outbox. The device then rejoins
/// from that server's rows, which do not have it yet. Its own total must
/// not fall back below the held op's: the next increment would carry the
/// lower total, and once the held op applies, max would keep the held
/// op's total and lose the increment, on every node.
#[test]
fn a_rejoin_from_snapshots_keeps_the_counter_ops_a_server_holds() {
    let mut dublin = fresh_node("converge_client_held_dublin", "dublin");
    let mut madrid = fresh_node("converge_client_held_madrid", "madrid");
    for db in [&mut dublin, &mut madrid] {
        db.batch_execute("INSERT INTO incident (id) VALUES (1)").unwrap();
    }
    let dir = workdir("held");
    let mut tab = open(&dir, "tab9");
    let first = incr(&mut tab, 1);
    incr(&mut tab, 10);
    // tab9:1 goes to madrid alone; dublin gets tab9:2 and holds it.
    let sent = tab.push_with(&mut madrid, |ops| ops.into_iter().filter(|o| o.op_id == "tab9:1").collect()).unwrap();
    assert_eq!(outcome_lines(sent), ["tab9:1 applied "]);
    assert_eq!(outcome_lines(tab.push(&mut dublin).unwrap()), ["tab9:2 buffered missing tab9:1"]);
    assert!(tab.outbox().is_empty(), "{:?}", tab.outbox());
    // (What the device keeps of a held op survives a restart.)
    drop(tab);
    let mut tab = open(&dir, "tab9");
    // dublin counts too, and compacts past the device's cursor: the
    // device's next pull from dublin takes its rows.
    dublin.batch_execute("UPDATE incident SET visits = converge.incr(visits, 1000) WHERE id = 1").unwrap();
    let removed: i64 = dublin.query_one("SELECT ops_removed FROM converge.compact()", &[]).unwrap().get(0);
    assert!(removed > 0, "nothing compacted");
    tab.pull(&mut dublin).unwrap();
    let dublins: i64 = dublin.query_one("SELECT (converge.frontier() ->> 'dublin')::int8", &[]).unwrap().get(0);
    assert_eq!(tab.frontier().get("dublin").copied(), Some(dublins as u64), "not taken from the snapshot");
    assert_eq!(visits(&tab), 1011, "the device's own 11 stay in its view");
    // The next increment, held too (it follows tab9:2); then tab9:1
    // reaches dublin and all three apply.
    incr(&mut tab, 100);
    assert_eq!(outcome_lines(tab.push(&mut dublin).unwrap()), ["tab9:3 buffered missing tab9:2"]);
    assert_eq!(outcome_lines(send_ops(&mut dublin, &[first], "tab9").unwrap())[0], "tab9:1 applied ");
    assert_eq!(server_visits(&mut dublin), 1111, "an increment lost on the server");
    tab.pull(&mut dublin).unwrap();
    assert_eq!(visits(&tab), 1111);
    let _ = std::fs::remove_dir_all(&dir);
}
