//! Who converge acts for, on real nodes serving a database of an ordinary
//! role (docs/security.md): the paths converge's own sessions run with
//! cannot be chosen by a database owner who is no superuser, and an op a
//! peer sent is replayed as that peer's by the table's owner only; a peer
//! that an operator (no superuser) added must ask for the conninfo's
//! password on every connection, not only on add_peer's.
//!
//! Needs the extension installed (`cargo pgrx install`); `bash .ci/test`
//! runs it. Ports: CONVERGE_CLUSTER_PORT + 150..153.

use converge_cluster_tests::fieldcare::*;
use converge_cluster_tests::*;
use std::time::{Duration, Instant};

fn base_port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710) + 150
}

fn text(c: &mut postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[]).unwrap().get(0)
}

fn wait_for(c: &mut postgres::Client, sql: &str, want: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = text(c, sql);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {got}, not {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `app` owns the database `fieldcare` on both nodes and sets its default
/// search_path to a schema of its own (`ALTER DATABASE ... SET`, which a
/// database owner may do), where a function shadows one that converge's
/// SQL calls unqualified. Neither the peer connections that read
/// `changes_since` from lisbon nor oslo's background worker (a superuser,
/// applying lisbon's ops with its trust) run it: the first set an empty
/// path, the second converge's fixed one, which a trigger of `app`'s fired
/// by the worker sees. Then lisbon's op for a column oslo lacks is
/// rejected there, sent again by `app` as a client's (refused), replayed:
/// refused for a mere writer (42501), applied as lisbon's for `app`, the
/// table's owner, once the column exists.
#[test]
fn a_database_owner_cannot_steer_converge_and_replays_a_peer_op_as_the_peers() {
    let Fieldcare { _root, nodes, mut lisbon, oslo, .. } = fieldcare_pair("trust", base_port(), false);
    let admin = |n: &Node| postgres::Client::connect(&n.conninfo_as("postgres", "fieldcare"), postgres::NoTls).unwrap();
    for n in &nodes {
        admin(n).batch_execute("ALTER DATABASE fieldcare OWNER TO app").unwrap();
        let mut app = n.client_as("app", "fieldcare");
        app.batch_execute(
            "CREATE SCHEMA mine; GRANT USAGE ON SCHEMA mine TO PUBLIC;
             CREATE FUNCTION mine.jsonb_typeof(jsonb) RETURNS text LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'mine.jsonb_typeof ran as %', current_user; END $$;
             CREATE TABLE public.seen (session_role text, path text);
             CREATE FUNCTION public.note_seen() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO public.seen VALUES (session_user, pg_catalog.current_setting('search_path'));
                 RETURN NULL;
             END $$;
             CREATE TRIGGER note_seen AFTER INSERT OR UPDATE ON public.note FOR EACH ROW EXECUTE FUNCTION public.note_seen();
             ALTER DATABASE fieldcare SET search_path = mine, pg_catalog;",
        )
        .unwrap();
        // What a session under that path runs (so the checks below can fail).
        let planted = n.client_as("app", "fieldcare").query("SELECT converge.changes_since('{}')", &[]).unwrap_err();
        let said = planted.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
        assert_eq!(said, "mine.jsonb_typeof ran as app", "changes_since under the database's path on {}", n.name);
    }
    // oslo's worker starts again, now under the database's setting.
    drop(oslo);
    nodes[1].stop_immediate();
    nodes[1].start();
    let mut oslo = nodes[1].client_as("app", "fieldcare");
    oslo.batch_execute("SET search_path = public").unwrap();

    // oslo copies from lisbon again (add_peer, as the upgrade recipe does):
    // changes_since runs there for the peer role, which mine's default
    // path would send to mine.jsonb_typeof.
    let mut oslo_admin = admin(&nodes[1]);
    // (The admin's session keeps the database's path: add_peer reads and
    // applies here under converge's own.)
    oslo_admin.batch_execute("SELECT converge.pause_peer('lisbon')").unwrap();
    let conninfo = nodes[0].peer_conninfo("fieldcare");
    oslo_admin.execute("SELECT converge.add_peer('lisbon', $1)", &[&conninfo]).unwrap_or_else(|e| {
        panic!("add_peer lisbon again: {}", e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()))
    });

    // lisbon's app adds a row, then a column, and counts with it; oslo
    // lacks the column.
    lisbon.batch_execute("INSERT INTO note (id, body) VALUES (1, 'pump')").unwrap();
    wait_for(&mut oslo, "SELECT count(*)::text FROM note", "1", "row 1 on oslo");
    lisbon
        .batch_execute("ALTER TABLE note ADD COLUMN visits converge.gcounter; UPDATE note SET visits = converge.incr(visits, 7) WHERE id = 1;")
        .unwrap();
    let op_id = text(&mut lisbon, "SELECT op_id FROM converge.op_log WHERE target_column = 'visits'");
    let kept = format!("SELECT coalesce(string_agg(format('%s %s', reason, origin), ', '), '') FROM converge.quarantine WHERE op_id = '{op_id}'");
    wait_for(&mut oslo, &kept, "unknown_column peer:lisbon", "lisbon's visits op on oslo");
    let worker_paths = "SELECT coalesce(string_agg(DISTINCT path, ' | '), '') FROM seen WHERE session_role = 'postgres'";
    assert_eq!(text(&mut oslo, worker_paths), "pg_catalog, converge, pg_temp", "the path oslo's worker applied row 1 with");

    // app sends the same op as a client's: refused too (a node's op), and
    // the quarantine still shows lisbon's delivery, the one replay takes.
    let resent = oslo
        .query_one(
            "SELECT string_agg(r.outcome || ' ' || r.reason, ', ')
               FROM converge.apply_batch(ARRAY(SELECT ROW(op_id, actor, target_table, target_key, target_column, schema_version,
                                                          epoch, deps, delta, signature)::converge.op
                                                 FROM converge.op_log WHERE op_id = $1), 'client') r",
            &[&op_id],
        )
        .unwrap()
        .get::<_, String>(0);
    assert!(resent.starts_with("rejected "), "the client's copy: {resent}");
    assert_eq!(text(&mut oslo, &kept), "unknown_column peer:lisbon", "the quarantine after a client sent the op again");

    // A writer of note may not apply a peer's op as the peer's.
    oslo_admin.batch_execute("CREATE ROLE clerk LOGIN; GRANT SELECT, INSERT, UPDATE ON public.note TO clerk").unwrap();
    let mut clerk = nodes[1].client_as("clerk", "fieldcare");
    let refused = clerk.query(&format!("SELECT * FROM converge.replay('{op_id}')"), &[]).unwrap_err();
    assert_eq!(refused.code().map(|c| c.code()), Some("42501"), "clerk's replay: {:?}", refused.as_db_error());

    // app, the owner (no superuser), adds the column and replays.
    oslo.batch_execute("ALTER TABLE note ADD COLUMN visits converge.gcounter").unwrap();
    let replayed = text(&mut oslo, &format!("SELECT string_agg(outcome, ', ') FROM converge.replay('{op_id}')"));
    assert_eq!(replayed, "applied", "app's replay on oslo");
    let applied = format!("SELECT string_agg(origin, ', ') FROM converge.op_log WHERE op_id = '{op_id}' AND outcome = 'applied'");
    assert_eq!(text(&mut oslo, &applied), "peer:lisbon", "applied once, as lisbon's");
    assert_eq!(text(&mut oslo, &kept), "", "nothing of it left in the quarantine");
    let frontier = "SELECT converge.frontier() ->> 'lisbon'";
    assert_eq!(text(&mut oslo, frontier), text(&mut lisbon, frontier), "oslo's frontier for lisbon");

    // Both ways still replicate, and end identical.
    oslo.batch_execute("UPDATE note SET visits = converge.incr(visits, 5) WHERE id = 1").unwrap();
    let row = "SELECT format('%s %s %s', id, body, visits::jsonb) FROM note";
    wait_for(&mut lisbon, row, "1 pump 12", "oslo's increment on lisbon");
    assert_eq!(text(&mut oslo, row), "1 pump 12");
    assert_eq!(text(&mut oslo, worker_paths), "pg_catalog, converge, pg_temp");
    let su: bool = oslo_admin.query_one("SELECT bool_or(rolsuper) FROM pg_roles WHERE rolname IN ('app', 'clerk', 'converge_peer')", &[]).unwrap().get(0);
    assert!(!su, "no role of the test but the admin is a superuser");
}

/// A peer added by a role that is not superuser must ask for the password
/// of its conninfo on every connection, as on add_peer's: later
/// connections (the worker's, a superuser's) keep to that. lisbon's
/// operator, no superuser but granted the peer administration, is refused
/// a conninfo without a password, and then (before a slot is made there)
/// the peer while it may not read and write the replicated table (oslo's
/// ops are applied with its rights, as apply_batch applies a caller's);
/// granted them, it adds the peer, and
/// pauses, resumes, waits for and syncs it. When oslo stops asking for
/// the peer role's password (its pg_hba says trust), the worker refuses
/// the connection and says why, nothing more arrives, and the operator's
/// remove_peer still removes the peer here.
#[test]
fn a_peer_an_operator_added_must_ask_for_the_password_every_time() {
    let root = Scratch::new("operator-peer");
    let nodes: Vec<Node> = ["lisbon", "oslo"].iter().enumerate().map(|(i, n)| Node::new(&root.0, n, base_port() + 2 + i as u16, true)).collect();
    for n in &nodes {
        let mut c = n.client();
        c.batch_execute("CREATE EXTENSION converge; CREATE TABLE note (id int PRIMARY KEY, n converge.gcounter)").unwrap();
        c.execute("SELECT converge.set_node($1)", &[&n.name]).unwrap();
        c.batch_execute("SELECT converge.replicate('note')").unwrap();
        Node::grant_peer(&mut c);
    }
    let (lisbon, oslo) = (&nodes[0], &nodes[1]);
    lisbon
        .client()
        .batch_execute(
            "CREATE ROLE operator LOGIN;
             GRANT EXECUTE ON FUNCTION converge.add_peer(text, text), converge.remove_peer(text), converge.sync(text),
                                       converge.pause_peer(text), converge.resume_peer(text), converge.wait_for_peers(interval)
                TO operator",
        )
        .unwrap();
    let mut at_oslo = oslo.client();
    at_oslo.batch_execute("INSERT INTO note VALUES (1, converge.incr(NULL::converge.gcounter, 1))").unwrap();
    let mut operator = lisbon.client_as("operator", "postgres");
    let code_and_message = |e: postgres::Error| e.as_db_error().map(|e| format!("{} {}", e.code().code(), e.message())).unwrap_or_default();
    let refused = code_and_message(operator.execute("SELECT converge.add_peer('oslo', $1)", &[&oslo.conninfo_as(PEER_ROLE, "postgres")]).unwrap_err());
    assert!(refused.starts_with("42501 ") && refused.contains("without a password"), "{refused}");
    let refused = code_and_message(operator.execute("SELECT converge.add_peer('oslo', $1)", &[&oslo.peer_conninfo("postgres")]).unwrap_err());
    assert!(refused.starts_with("42501 ") && refused.contains("permission denied for table note"), "{refused}");
    // (Checked before anything is made on the peer: a copy from its rows
    // may write every replicated table.)
    assert_eq!(text(&mut at_oslo, "SELECT count(*)::text FROM pg_replication_slots"), "0", "a slot made for a refused add_peer");
    let mut at_lisbon = lisbon.client();
    at_lisbon.batch_execute("GRANT SELECT, INSERT, UPDATE, DELETE ON note TO operator").unwrap();
    operator.execute("SELECT converge.add_peer('oslo', $1)", &[&oslo.peer_conninfo("postgres")]).unwrap();
    assert_eq!(text(&mut at_lisbon, "SELECT count(*)::text FROM note"), "1", "oslo's row, copied by the operator's add_peer");
    assert_eq!(text(&mut at_lisbon, "SELECT password_required::text FROM converge.peer WHERE name = 'oslo'"), "true");
    operator.batch_execute("SELECT converge.pause_peer('oslo')").unwrap();
    assert_eq!(text(&mut at_lisbon, "SELECT state FROM converge.peers WHERE name = 'oslo'"), "paused");
    operator.batch_execute("SELECT converge.resume_peer('oslo')").unwrap();
    at_oslo.batch_execute("INSERT INTO note VALUES (2, converge.incr(NULL::converge.gcounter, 1))").unwrap();
    let caught_up: bool = operator.query_one("SELECT converge.wait_for_peers('30 seconds')", &[]).unwrap().get(0);
    assert!(caught_up, "the operator's wait_for_peers");
    operator.batch_execute("SELECT converge.sync('oslo')").unwrap();
    assert_eq!(text(&mut at_lisbon, "SELECT count(*)::text FROM note"), "2", "oslo's second row at lisbon");
    // oslo trusts the peer role from now on; the worker's stream ends and
    // its next connection does not use the password.
    let hba = std::fs::read_to_string(oslo.dir.join("pg_hba.conf")).unwrap();
    std::fs::write(oslo.dir.join("pg_hba.conf"), format!("host all {PEER_ROLE} 127.0.0.1/32 trust\nhost replication {PEER_ROLE} 127.0.0.1/32 trust\n{hba}")).unwrap();
    at_oslo
        .batch_execute(&format!(
            "SELECT pg_reload_conf(); SELECT pg_sleep(0.2);
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{PEER_ROLE}'"
        ))
        .unwrap();
    at_oslo.batch_execute("INSERT INTO note VALUES (3, converge.incr(NULL::converge.gcounter, 1))").unwrap();
    wait_for(
        &mut at_lisbon,
        "SELECT (coalesce(last_error, '') LIKE '%did not use the password in its conninfo%')::text FROM converge.peers WHERE name = 'oslo'",
        "true",
        "lisbon's worker refusing a connection without the password",
    );
    assert_eq!(text(&mut at_lisbon, "SELECT count(*)::text FROM note"), "2", "a row came through a connection without the password");
    operator.batch_execute("SELECT converge.remove_peer('oslo')").unwrap();
    assert_eq!(text(&mut at_lisbon, "SELECT count(*)::text FROM converge.peer"), "0", "the operator's remove_peer");
}
