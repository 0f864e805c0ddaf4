//! What the client test files share: a converge server from
//! CONVERGE_TEST_DSN (`bash .ci/test` starts one and sets it), a fresh
//! database per test as a node, clients in temporary directories.
// (Each test file uses some of these.)
#![allow(dead_code)]

use converge_client::*;
use serde_json::json;
use std::path::PathBuf;

pub const COLUMNS: [(&str, &str); 9] = [
    ("visits", "gcounter"),
    ("stock", "pncounter"),
    ("tags", "orset"),
    ("title", "mvreg"),
    ("note", "lwwreg"),
    ("notes", "lwwmap"),
    ("items", "ormap"),
    ("seen", "gset"),
    ("body", "seqtext"),
];

pub fn dsn() -> String {
    std::env::var("CONVERGE_TEST_DSN")
        .expect("CONVERGE_TEST_DSN must be the conninfo (without dbname) of a server with converge installed; bash .ci/test sets it")
}

pub fn connect(db: &str) -> postgres::Client {
    postgres::Client::connect(&format!("{} dbname={db}", dsn()), postgres::NoTls).expect("connect")
}

pub fn fresh_node(db: &str, node: &str) -> postgres::Client {
    let mut admin = connect("postgres");
    // Separate statements: a multi-statement string runs as one transaction.
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    let mut c = connect(db);
    let cols: Vec<String> = COLUMNS.iter().map(|(n, t)| format!("{n} converge.{t}")).collect();
    c.batch_execute(&format!(
        "CREATE EXTENSION converge;
         SELECT converge.set_node('{node}');
         CREATE TABLE incident (id int PRIMARY KEY, {});
         SELECT converge.replicate('incident');",
        cols.join(", ")
    ))
    .unwrap();
    c
}

pub fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("converge-client-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub fn open(dir: &PathBuf, actor: &str) -> Client {
    let mut c = Client::open(dir.join(actor), actor).unwrap();
    for (n, t) in COLUMNS {
        c.declare("incident", n, t).unwrap();
    }
    c
}

pub type TagEdit = fn(&mut converge_core::OrSet, &converge_core::Dot) -> converge_core::OrSet;

/// One edit of row `id`'s `tags` (an orset) by client `c`.
pub fn edit_tags(c: &mut Client, id: i64, f: TagEdit) -> Op {
    edit_tags_of(c, "incident", json!({"id": id}), f)
}

/// The same on any table with an orset column `tags`.
pub fn edit_tags_of(c: &mut Client, table: &str, key: serde_json::Value, f: TagEdit) -> Op {
    c.mutate(table, key, "tags", move |v, ctx| {
        let AnyCrdt::OrSet(x) = v else { unreachable!() };
        Ok(AnyCrdt::OrSet(f(x, &ctx.dot)))
    })
    .unwrap()
}

pub fn tags_of(db: &mut postgres::Client, id: i32) -> String {
    db.query_one("SELECT tags::jsonb::text FROM incident WHERE id = $1", &[&id]).unwrap().get(0)
}

/// "op_id outcome reason" per outcome, in the server's order.
pub fn outcome_lines(outcomes: Vec<converge_client::Outcome>) -> Vec<String> {
    outcomes.into_iter().map(|o| format!("{} {} {}", o.op_id, o.outcome, o.reason.unwrap_or_default())).collect()
}

/// Two nodes, dublin in database `a` and madrid in `b`, each with row 1,
/// and a device's connection to each, as an application role.
pub fn two_nodes(a: &str, b: &str) -> (postgres::Client, postgres::Client, postgres::Client, postgres::Client) {
    let mut dublin = fresh_node(a, "dublin");
    let mut madrid = fresh_node(b, "madrid");
    for db in [&mut dublin, &mut madrid] {
        db.batch_execute(
            "DO $$ BEGIN CREATE ROLE cv_device LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT SELECT, INSERT, UPDATE, DELETE ON incident TO cv_device;
             INSERT INTO incident (id) VALUES (1);",
        )
        .unwrap();
    }
    let device = |db: &str| postgres::Client::connect(&format!("{} dbname={db} user=cv_device", dsn()), postgres::NoTls).unwrap();
    (dublin, madrid, device(a), device(b))
}
