//! A harness for tests with several real PostgreSQL 15 servers on loopback:
//! each node is its own data directory and postmaster, with the installed
//! converge extension, `wal_level = logical` and (optionally) the converge
//! background worker. Nodes are stopped when dropped, also when a test panics.
//!
//! Runs as the `postgres` user (initdb refuses root): when started as root it
//! calls the server binaries through `runuser -u postgres`.

pub mod coordinated;
pub mod fieldcare;
pub mod lost;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const PGBIN: &str = "/usr/lib/postgresql/15/bin";

/// The role peers connect as: LOGIN REPLICATION plus converge.grant_peer,
/// never superuser (docs/security.md).
pub const PEER_ROLE: &str = "converge_peer";
const PEER_PASSWORD: &str = "peer-secret";

fn as_postgres(bin: &str) -> Command {
    let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &format!("{PGBIN}/{bin}")]);
        c
    } else {
        Command::new(format!("{PGBIN}/{bin}"))
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// A scratch directory owned by postgres, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("converge-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown").args(["postgres", dir.to_str().unwrap()]).status();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Node {
    pub name: String,
    pub port: u16,
    pub dir: PathBuf,
}

impl Node {
    /// initdb and start a node; `worker` preloads converge so its background
    /// worker pulls from peers continuously.
    pub fn new(root: &Path, name: &str, port: u16, worker: bool) -> Node {
        let dir = root.join(name);
        let mut c = as_postgres("initdb");
        c.args(["-D", dir.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        run(c, "initdb");
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = logical\n\
             fsync = off\nmax_replication_slots = 20\nmax_wal_senders = 20\n\
             output_plugin_libraries = 'pgoutput, test_decoding, converge'\n\
             shared_preload_libraries = '{}'\n",
            root.display(),
            if worker { "converge" } else { "" }
        );
        let path = dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&conf);
        std::fs::write(&path, text).unwrap();
        // Peers connect as the least-privilege role, with a password the
        // server asks for; the test's own admin and app connections trust.
        let hba = format!(
            "local all all trust\n\
             host all {PEER_ROLE} 127.0.0.1/32 scram-sha-256\n\
             host replication {PEER_ROLE} 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 trust\n"
        );
        std::fs::write(dir.join("pg_hba.conf"), hba).unwrap();
        let node = Node { name: name.to_string(), port, dir };
        node.start();
        node
    }

    pub fn start(&self) {
        let log = self.dir.join("server.log");
        // After a kill -9 the old backends may still hold shared memory for a
        // moment; retry until the postmaster starts.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut c = as_postgres("pg_ctl");
            c.args(["-D", self.dir.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"]);
            let ok = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "node {} did not start; see {}", self.name, log.display());
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `pg_ctl stop -m immediate`: no shutdown checkpoint, crash recovery at start.
    pub fn stop_immediate(&self) {
        let mut c = as_postgres("pg_ctl");
        c.args(["-D", self.dir.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
        let _ = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
    }

    /// kill -9 the postmaster and every process of this node.
    pub fn kill9(&self) {
        let pid = self.postmaster_pid().expect("node is running");
        let _ = Command::new("pkill").args(["-9", "-P", &pid.to_string()]).status();
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn conninfo(&self) -> String {
        self.conninfo_as("postgres", "postgres")
    }

    pub fn conninfo_as(&self, user: &str, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname={db}", self.port)
    }

    /// How a peer reaches this node's database `db`: the peer role, by password.
    pub fn peer_conninfo(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={PEER_ROLE} password={PEER_PASSWORD} dbname={db}", self.port)
    }

    /// Create the peer role (once per node) and grant it converge's peer
    /// rights in the database `c` is connected to.
    pub fn grant_peer(c: &mut postgres::Client) {
        c.batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {PEER_ROLE} LOGIN REPLICATION PASSWORD '{PEER_PASSWORD}';
                  EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             SELECT converge.grant_peer('{PEER_ROLE}');"
        ))
        .unwrap();
    }

    /// A client connection to database `db` as `user`.
    pub fn client_as(&self, user: &str, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.conninfo_as(user, db), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {} as {user}: {e}", self.name))
    }

    /// A client connection, retried while the server comes up.
    pub fn client(&self) -> postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match postgres::Client::connect(&self.conninfo(), postgres::NoTls) {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("connect to {}: {e}", self.name),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}

/// The first column of the one row `sql` returns on `n`, as text.
pub fn text(n: &Node, sql: &str) -> String {
    n.client().query_one(sql, &[]).unwrap().get(0)
}

/// Poll `sql` on `n` (the first column of its row as text, "" for no row)
/// until it reads `want`, for up to 60 s; `what` names the wait.
pub fn wait_for(n: &Node, sql: &str, want: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: String = n.client().query_opt(sql, &[]).unwrap().map(|r| r.get(0)).unwrap_or_default();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what} on {} (it shows {got:?})", n.name);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every node adds every other as a peer (one at a time: creating a slot on
/// a server waits for its running transactions).
pub fn full_mesh(nodes: &[Node]) {
    for a in nodes {
        Node::grant_peer(&mut a.client());
    }
    for a in nodes {
        let mut c = a.client();
        for b in nodes.iter().filter(|b| b.name != a.name) {
            c.execute("SELECT converge.add_peer($1, $2)", &[&b.name, &b.peer_conninfo("postgres")]).unwrap();
        }
    }
}

/// Wait until every node reports every peer caught up (true from
/// converge.wait_for_peers on all nodes in one pass).
pub fn converge_all(nodes: &[Node], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let all = nodes.iter().all(|n| {
            n.client().query_one("SELECT converge.wait_for_peers('5 seconds')", &[]).map(|r| r.get::<_, bool>(0)).unwrap_or(false)
        });
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "nodes did not converge within {within:?}");
    }
}

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
