//! A client rejoining from a server's rows (its cursor behind the server's
//! compacted log) while a server holds some of its ops: against real
//! servers (CONVERGE_TEST_DSN, as the other client tests), the device
//! connecting as an application role.

mod common;

use common::*;
use converge_client::*;
use serde_json::json;

fn incr(c: &mut Client, n: i64) -> Op {
    incr_row(c, 1, n)
}

fn incr_row(c: &mut Client, id: i64, n: i64) -> Op {
    c.mutate("incident", json!({"id": id}), "visits", move |v, ctx| {
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

/// Pull from `db`, whose log was compacted past the device's cursor: the
/// device takes its rows (no op comes through the log) and its frontier.
fn rejoin(c: &mut Client, db: &mut postgres::Client) {
    assert_eq!(c.pull(db).unwrap(), 0, "ops pulled: no rejoin from the server's rows");
    let theirs: i64 = db.query_one("SELECT (converge.frontier() ->> converge.node())::int8", &[]).unwrap().get(0);
    assert_eq!(c.frontier().get(&db.query_one("SELECT converge.node()", &[]).unwrap().get::<_, String>(0)).copied(), Some(theirs as u64));
}

/// Nodes dublin and madrid (not peers), each with row 1; the device's
/// connection to each, as an application role (cv_device); and the device.
struct Setup {
    dublin: postgres::Client,
    dublin_dev: postgres::Client,
    madrid_dev: postgres::Client,
    dir: std::path::PathBuf,
    tab: Client,
}

fn two_nodes_and_a_device(name: &str, actor: &str) -> Setup {
    let (a, b) = (format!("converge_client_{name}_dublin"), format!("converge_client_{name}_madrid"));
    let (dublin, _madrid, dublin_dev, madrid_dev) = two_nodes(&a, &b);
    let dir = workdir(name);
    let tab = open(&dir, actor);
    Setup { dublin, dublin_dev, madrid_dev, dir, tab }
}

/// dublin counts and compacts: a device's next pull from it rejoins.
fn count_and_compact(dublin: &mut postgres::Client, n: i64) {
    dublin.batch_execute(&format!("UPDATE incident SET visits = converge.incr(visits, {n}) WHERE id = 1")).unwrap();
    let removed: i64 = dublin.query_one("SELECT ops_removed FROM converge.compact()", &[]).unwrap().get(0);
    assert!(removed > 0, "nothing compacted");
}

/// A device's counter op that a server holds (buffered: the op before it
/// went to another server) has left the outbox. The device then rejoins
/// from that server's rows, which do not have it yet. Its own total must
/// not fall back below the held op's: the next increment would carry the
/// lower total, and once the held op applies, max would keep the held
/// op's total and lose the increment, on every node.
#[test]
fn a_rejoin_from_snapshots_keeps_the_counter_ops_a_server_holds() {
    let Setup { mut dublin, mut dublin_dev, mut madrid_dev, dir, mut tab } = two_nodes_and_a_device("held", "tab9");
    let first = incr(&mut tab, 1);
    incr(&mut tab, 10);
    edit_tags(&mut tab, 1, |x, d| x.add("held", d.clone()));
    // tab9:1 goes to madrid alone; dublin gets tab9:2 and tab9:3 and holds them.
    let sent = tab.push_with(&mut madrid_dev, |ops| ops.into_iter().filter(|o| o.op_id == "tab9:1").collect()).unwrap();
    assert_eq!(outcome_lines(sent), ["tab9:1 applied "]);
    assert_eq!(outcome_lines(tab.push(&mut dublin_dev).unwrap()), ["tab9:2 buffered missing tab9:1", "tab9:3 buffered missing tab9:2"]);
    assert!(tab.outbox().is_empty(), "{:?}", tab.outbox());
    // (What the device keeps of a held op survives a restart.)
    drop(tab);
    let mut tab = open(&dir, "tab9");
    // dublin counts too, and compacts past the device's cursor: the
    // device's next pull from dublin takes its rows.
    count_and_compact(&mut dublin, 1000);
    rejoin(&mut tab, &mut dublin_dev);
    assert_eq!(visits(&tab), 1011, "the device's own 11 stay in its view");
    let tags = |c: &Client| c.value("incident", &json!({"id": 1}), "tags").map(|t| t.to_text()).unwrap_or_default();
    assert!(tags(&tab).contains("held"), "the held add left the device's view: {}", tags(&tab));
    // The next increment, held too (it follows tab9:3); then tab9:1
    // reaches dublin and all four apply.
    incr(&mut tab, 100);
    assert_eq!(outcome_lines(tab.push(&mut dublin_dev).unwrap()), ["tab9:4 buffered missing tab9:3"]);
    assert_eq!(outcome_lines(send_ops(&mut dublin_dev, &[first], "tab9").unwrap())[0], "tab9:1 applied ");
    assert_eq!(server_visits(&mut dublin), 1111, "an increment lost on the server");
    tab.pull(&mut dublin_dev).unwrap();
    assert_eq!(visits(&tab), 1111);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same when the op went to another server and was applied there: the
/// server the device rejoins from has not received it yet (replication
/// lags), and applies it later.
#[test]
fn a_rejoin_from_snapshots_keeps_the_counts_applied_on_another_server() {
    let Setup { mut dublin, mut dublin_dev, mut madrid_dev, dir, mut tab } = two_nodes_and_a_device("elsewhere", "tab10");
    // Row 2, counted by dublin alone, which the device pulls; dublin then
    // deletes it: the rejoin takes it out of the device's view (no count of
    // the device's own to keep).
    dublin.batch_execute("INSERT INTO incident (id, visits) VALUES (2, converge.incr(NULL::converge.gcounter, 5))").unwrap();
    tab.pull(&mut dublin_dev).unwrap();
    let row2 = |c: &Client| c.value("incident", &json!({"id": 2}), "visits").map(|v| v.to_text());
    assert!(row2(&tab).is_some());
    let first = incr(&mut tab, 1);
    // Row 3, which the device makes on madrid by counting: dublin has no
    // row 3, and the device's cell keeps its own count.
    let second = incr_row(&mut tab, 3, 7);
    assert_eq!(outcome_lines(tab.push(&mut madrid_dev).unwrap()), ["tab10:1 applied ", "tab10:2 applied "]);
    dublin.batch_execute("DELETE FROM incident WHERE id = 2").unwrap();
    count_and_compact(&mut dublin, 1000);
    rejoin(&mut tab, &mut dublin_dev);
    assert_eq!(visits(&tab), 1001, "the device's own 1 stays in its view");
    assert_eq!(row2(&tab), None, "a deleted row the device never counted on leaves its view");
    let row3 = |c: &Client| match c.value("incident", &json!({"id": 3}), "visits") {
        Some(AnyCrdt::GCounter(x)) => x.value().unwrap(),
        other => panic!("row 3: {other:?}"),
    };
    assert_eq!(row3(&tab), 7, "the device's own count of a row dublin lacks");
    incr(&mut tab, 10);
    assert_eq!(outcome_lines(tab.push(&mut dublin_dev).unwrap()), ["tab10:3 buffered missing tab10:2"]);
    // tab10:1 and tab10:2 reach dublin (as madrid would forward them).
    assert_eq!(outcome_lines(send_ops(&mut dublin_dev, &[first, second], "tab10").unwrap())[0], "tab10:1 applied ");
    assert_eq!(server_visits(&mut dublin), 1011, "an increment lost on the server");
    let _ = std::fs::remove_dir_all(&dir);
}
