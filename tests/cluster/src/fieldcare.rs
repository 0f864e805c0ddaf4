//! Two real nodes serving a database of an ordinary role: what users
//! run, with converge created by a superuser and everything else done by
//! the application's role, and peers connecting as the least-privilege
//! peer role.

use crate::{Node, Scratch};

/// Two nodes, lisbon and oslo, each with a database `fieldcare` where the
/// superuser created converge and the ordinary role `app` made and
/// replicated table `note`; each the other's peer; `app` connected to both.
/// With `squat`, `app` first takes the advisory locks converge took before
/// (the worker's, the registry's, an op_id bucket's), held by `squatters`.
/// (Bind `_root, nodes` first when taking it apart: bindings drop in
/// reverse order, so the servers stop before their files go.)
pub struct Fieldcare {
    pub squatters: Vec<postgres::Client>,
    pub lisbon: postgres::Client,
    pub oslo: postgres::Client,
    pub nodes: Vec<Node>,
    pub _root: Scratch,
}

pub fn fieldcare_pair(tag: &str, port: u16, squat: bool) -> Fieldcare {
    let root = Scratch::new(tag);
    let nodes: Vec<Node> = ["lisbon", "oslo"].iter().enumerate().map(|(i, n)| Node::new(&root.0, n, port + i as u16, true)).collect();
    let mut squatters = Vec::new();
    for n in &nodes {
        let mut pg = n.client();
        pg.batch_execute("CREATE DATABASE fieldcare").unwrap();
        pg.batch_execute("CREATE ROLE app LOGIN").unwrap();
        if squat {
            let mut squatter = n.client_as("app", "fieldcare");
            squatter.batch_execute("SELECT pg_advisory_lock(7233, 0), pg_advisory_lock(7234, 0), pg_advisory_lock(7231, 0)").unwrap();
            squatters.push(squatter);
        }
        let mut admin = postgres::Client::connect(&n.conninfo_as("postgres", "fieldcare"), postgres::NoTls).unwrap();
        admin.batch_execute("CREATE EXTENSION converge; GRANT CREATE ON SCHEMA public TO app").unwrap();
        admin.execute("SELECT converge.set_node($1)", &[&n.name]).unwrap();
        let mut app = n.client_as("app", "fieldcare");
        app.batch_execute(
            "CREATE TABLE note (id int PRIMARY KEY, body text, tags converge.orset, parts converge.ormap, n converge.gcounter);
             SELECT converge.replicate('note');",
        )
        .unwrap();
        Node::grant_peer(&mut admin);
    }
    for (a, b) in [(0, 1), (1, 0)] {
        let mut admin = postgres::Client::connect(&nodes[a].conninfo_as("postgres", "fieldcare"), postgres::NoTls).unwrap();
        admin.execute("SELECT converge.add_peer($1, $2)", &[&nodes[b].name, &nodes[b].peer_conninfo("fieldcare")]).unwrap();
    }
    let (lisbon, oslo) = (nodes[0].client_as("app", "fieldcare"), nodes[1].client_as("app", "fieldcare"));
    Fieldcare { squatters, lisbon, oslo, nodes, _root: root }
}

