//! The random workload the multi-node tests share: a schema with every
//! CRDT type, ordinary SQL statements on random rows, and the checks that
//! nodes ended identical.

use crate::{Node, Rng};
use std::collections::BTreeMap;

pub const NAMES: [&str; 3] = ["madrid", "dublin", "virginia"];


pub const SCHEMA: &str = "
    CREATE EXTENSION converge;
    CREATE TABLE ctr (id int PRIMARY KEY, g converge.gcounter, pn converge.pncounter);
    CREATE TABLE item (id int PRIMARY KEY, title text, sev int DEFAULT 3,
                       tags converge.orset, seen converge.gset, owner converge.lwwreg, headline converge.mvreg,
                       meta converge.lwwmap, inv converge.ormap, budget converge.bcounter, notes converge.seqtext);
    SELECT converge.replicate('ctr');
    SELECT converge.replicate('item');";

/// What the test expects the counters to sum to: only acknowledged writes.
#[derive(Default)]
pub struct Expect {
    pub g: BTreeMap<i32, i64>,
    pub pn: BTreeMap<i32, i64>,
}

pub struct Load {
    pub rng: Rng,
    pub expect: Expect,
    pub done: usize,
    pub retries: usize,
    pub by_node: BTreeMap<String, usize>,
    /// Requests, freezes, device ops and revocations mixed in (about one
    /// op in eight), when set.
    pub coord: Option<crate::coordinated::Coordinated>,
}

impl Load {
    /// One random operation on node `n` (an ordinary SQL statement).
    pub fn op(&mut self, n: &Node, c: &mut postgres::Client) {
        if let Some(co) = self.coord.as_mut() {
            if self.rng.below(8) == 0 {
                let sql = co.op(&mut self.rng, n, c);
                self.execute(n, c, &sql);
                self.done += 1;
                *self.by_node.entry(n.name.clone()).or_default() += 1;
                return;
            }
        }
        let r = &mut self.rng;
        let id = 1 + r.below(40) as i32;
        let k = 1 + r.below(5) as i64;
        let word = ["a", "b", "c", "d", "e", "f"][r.below(6) as usize];
        let f = r.below(101) as f64 / 100.0;
        let len = "coalesce(converge.length(notes), 0)";
        let (sql, counted): (String, Option<(bool, i64)>) = match r.below(18) {
            0..=2 => (format!("UPDATE ctr SET g = converge.incr(g, {k}) WHERE id = {id}"), Some((true, k))),
            3 => (format!("UPDATE ctr SET pn = converge.incr(pn, {k}) WHERE id = {id}"), Some((false, k))),
            4 => (format!("UPDATE ctr SET pn = converge.decr(pn, {k}) WHERE id = {id}"), Some((false, -k))),
            5 => (format!("INSERT INTO item (id, title) VALUES ({id}, 'new {word}') ON CONFLICT (id) DO NOTHING"), None),
            6 => (format!("DELETE FROM item WHERE id = {id}"), None),
            7 => (format!("UPDATE item SET title = '{} {word}' WHERE id = {id}", n.name), None),
            8 => (format!("UPDATE item SET tags = converge.add(tags, '{word}') WHERE id = {id}"), None),
            9 => (format!("UPDATE item SET tags = converge.remove(tags, '{word}') WHERE id = {id}"), None),
            10 => (format!("UPDATE item SET seen = converge.add(seen, '{}') WHERE id = {id}", n.name), None),
            11 => (format!("UPDATE item SET owner = converge.assign(owner, '\"{}\"') WHERE id = {id}", n.name), None),
            12 => (format!("UPDATE item SET headline = converge.assign(headline, '\"{word}\"'), sev = {k} WHERE id = {id}"), None),
            13 => (format!("UPDATE item SET meta = converge.put(meta, '{word}', '{k}') WHERE id = {id}"), None),
            14 => (format!("UPDATE item SET inv = converge.add(converge.incr(inv, 'n', {k}), 'tags', '{word}') WHERE id = {id}"), None),
            15 => (format!("UPDATE item SET budget = converge.incr(budget, {k}) WHERE id = {id}"), None),
            16 => (format!("UPDATE item SET notes = converge.insert(notes, ({len} * {f})::bigint, '{} {word} ') WHERE id = {id}", n.name), None),
            _ => (
                format!("UPDATE item SET notes = converge.delete(notes, ({len} * {f})::bigint, least({k}, {len} - ({len} * {f})::bigint)) WHERE id = {id}"),
                None,
            ),
        };
        let id_rows = self.execute(n, c, &sql);
        // Acknowledged (committed, autocommit) increments are what must survive.
        if let Some((is_g, amount)) = counted {
            if id_rows == 1 {
                let m = if is_g { &mut self.expect.g } else { &mut self.expect.pn };
                *m.entry(id).or_default() += amount;
            }
        }
        self.done += 1;
        *self.by_node.entry(n.name.clone()).or_default() += 1;
    }

    /// Run `sql` on `n`. A deadlock with the apply of a peer's ops on the
    /// same row (40P01) rolls the statement back, as for any client: retry it.
    fn execute(&mut self, n: &Node, c: &mut postgres::Client, sql: &str) -> u64 {
        let mut tries = 0;
        loop {
            match c.execute(sql, &[]) {
                Ok(n) => return n,
                Err(e) if tries < 5 && matches!(e.code().map(|s| s.code()), Some("40P01") | Some("40001")) => {
                    tries += 1;
                    self.retries += 1;
                }
                Err(e) => panic!(
                    "{sql} on {}: {}",
                    n.name,
                    e.as_db_error().map(|d| format!("{} {} {:?}", d.code().code(), d.message(), d.where_())).unwrap_or(e.to_string())
                ),
            }
        }
    }

    /// `count` ops spread over the nodes whose index is in `live`.
    pub fn run(&mut self, nodes: &[Node], clients: &mut [Option<postgres::Client>], live: &[usize], count: usize) {
        for _ in 0..count {
            let i = live[self.rng.below(live.len() as u64) as usize];
            let c = clients[i].get_or_insert_with(|| nodes[i].client());
            self.op(&nodes[i], c);
        }
    }
}

pub fn dump(n: &Node, table: &str) -> String {
    n.client()
        .query_one(&format!("SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY id), '') FROM {table} t"), &[])
        .unwrap()
        .get(0)
}

pub fn pause(nodes: &[Node], a: usize, b: usize, paused: bool) {
    let f = if paused { "pause_peer" } else { "resume_peer" };
    nodes[a].client().execute(&format!("SELECT converge.{f}($1)"), &[&nodes[b].name]).unwrap();
    nodes[b].client().execute(&format!("SELECT converge.{f}($1)"), &[&nodes[a].name]).unwrap();
}


impl Load {
    pub fn new(seed: u64) -> Load {
        Load { rng: Rng(seed), expect: Expect::default(), done: 0, retries: 0, by_node: BTreeMap::new(), coord: None }
    }
}

/// The rows of `table` as users read them: every CRDT column as its user
/// value (compaction may shorten a full state, never what users read).
pub fn user_values(n: &Node, table: &str) -> String {
    let row = if table == "item" {
        "jsonb_build_object('id', id, 'title', title, 'sev', sev, 'tags', tags::jsonb, 'seen', seen::jsonb,
                            'owner', owner::jsonb, 'headline', headline::jsonb, 'meta', meta::jsonb, 'inv', inv::jsonb,
                            'budget', budget::jsonb, 'notes', notes::jsonb)::text"
    } else {
        "t::text"
    };
    n.client()
        .query_one(&format!("SELECT coalesce(string_agg({row}, E'\\n' ORDER BY id), '') FROM {table} t"), &[])
        .unwrap()
        .get(0)
}

/// Every row of `tables` the same on every node as users read it.
pub fn assert_same_values(nodes: &[Node], tables: &[&str]) {
    for table in tables {
        let reference = user_values(&nodes[0], table);
        for n in &nodes[1..] {
            assert_eq!(user_values(n, table), reference, "{table} reads differently on {} and {}", nodes[0].name, n.name);
        }
    }
}

/// Every row of `tables` byte-identical on every node (canonical text
/// output); on a difference, the rows only one side has.
pub fn assert_identical(nodes: &[Node], tables: &[&str]) {
    for table in tables {
        let reference = dump(&nodes[0], table);
        assert!(!reference.is_empty(), "{table} is not empty");
        for n in &nodes[1..] {
            let other = dump(n, table);
            if other != reference {
                let a: Vec<&str> = reference.lines().collect();
                let b: Vec<&str> = other.lines().collect();
                let only_a: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
                let only_b: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).collect();
                panic!("{table} differs between {} and {}:\n{}: {only_a:#?}\n{}: {only_b:#?}", nodes[0].name, n.name, nodes[0].name, n.name);
            }
        }
    }
}

impl Expect {
    /// Every acknowledged increment, exactly once, on every node.
    pub fn check(&self, nodes: &[Node]) {
        for n in nodes {
            let mut c = n.client();
            for row in c.query("SELECT id, converge.value(g), converge.value(pn) FROM ctr ORDER BY id", &[]).unwrap() {
                let id: i32 = row.get(0);
                let g: Option<i64> = row.get(1);
                let pn: Option<i64> = row.get(2);
                assert_eq!(g.unwrap_or(0), self.g.get(&id).copied().unwrap_or(0), "g of row {id} on {}", n.name);
                assert_eq!(pn.unwrap_or(0), self.pn.get(&id).copied().unwrap_or(0), "pn of row {id} on {}", n.name);
            }
        }
    }
}

/// Three nodes with the worker, the schema, the counter rows, a full mesh.
pub fn mesh_of_three(root: &std::path::Path, port: u16) -> Vec<Node> {
    let nodes: Vec<Node> = NAMES.iter().enumerate().map(|(i, name)| Node::new(root, name, port + i as u16, true)).collect();
    for n in &nodes {
        let mut c = n.client();
        c.batch_execute(SCHEMA).unwrap();
        c.execute("SELECT converge.set_node($1)", &[&n.name]).unwrap();
    }
    // The counter rows exist before replication starts: add_peer copies them.
    nodes[0].client().batch_execute("INSERT INTO ctr SELECT g, '{}', '{}' FROM generate_series(1, 40) g").unwrap();
    crate::full_mesh(&nodes);
    crate::converge_all(&nodes, std::time::Duration::from_secs(60));
    nodes
}
