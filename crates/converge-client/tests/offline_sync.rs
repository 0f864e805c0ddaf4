//! Offline clients against a real converge server (CONVERGE_TEST_DSN, a
//! conninfo without dbname; `bash .ci/test` starts a server and sets it).
//!
//! Five clients make 1 000 random ops offline and sync through a flaky
//! network: batches arrive reordered (children before parents) with about
//! 20% of ops delivered twice, and clients are killed between any two steps
//! of a mutation, a push or a pull. In the end every client and the server
//! hold identical values, those equal a fold of every op, and the op log
//! shows each op applied exactly once.

use converge_client::*;
use converge_core::*;
use serde_json::json;
use std::collections::BTreeMap;

mod common;
use common::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One random mutation of one cell.
fn random_mutation(c: &mut Client, rng: &mut Rng) -> converge_client::Result<Op> {
    let id = rng.below(4) as i64 + 1;
    let (column, _) = COLUMNS[rng.below(COLUMNS.len() as u64) as usize];
    let e = format!("e{}", rng.below(5));
    let k = format!("k{}", rng.below(3));
    let n = rng.below(10) as i64;
    let choice = rng.below(2);
    c.mutate("incident", json!({ "id": id }), column, move |v, ctx| {
        let actor = ctx.actor.to_string();
        let dot = ctx.dot.clone();
        Ok(match v {
            AnyCrdt::GCounter(x) => AnyCrdt::GCounter(x.incr(&actor, n)?),
            AnyCrdt::PnCounter(x) => AnyCrdt::PnCounter(if choice == 0 { x.incr(&actor, n)? } else { x.decr(&actor, n)? }),
            AnyCrdt::OrSet(x) => AnyCrdt::OrSet(if choice == 0 { x.add(&e, dot) } else { x.remove(&e) }),
            AnyCrdt::MvReg(x) => AnyCrdt::MvReg(x.assign(Json::parse(&format!("\"{e}\""))?, dot)),
            AnyCrdt::LwwReg(x) => {
                let ts = ctx.timestamp(x.max_timestamp());
                AnyCrdt::LwwReg(x.assign(Json::parse(&n.to_string())?, ts))
            }
            AnyCrdt::LwwMap(x) => {
                let ts = ctx.timestamp(x.max_timestamp());
                AnyCrdt::LwwMap(if choice == 0 { x.put(&k, Json::parse(&n.to_string())?, ts) } else { x.remove(&k, ts) })
            }
            AnyCrdt::OrMap(x) => AnyCrdt::OrMap(if choice == 0 { x.incr(&k, &actor, n, dot)? } else { x.remove_key(&k) }),
            AnyCrdt::GSet(x) => AnyCrdt::GSet(x.add(&e)),
            AnyCrdt::BCounter(x) => AnyCrdt::BCounter(x.incr(&actor, n)?),
            // One character per op: the mutation has one dot to give it.
            AnyCrdt::SeqText(x) => {
                let len = x.length();
                AnyCrdt::SeqText(if choice == 0 || len == 0 {
                    x.insert(n as u64 % (len + 1), &e[1..], &actor, dot.counter)?
                } else {
                    x.delete(n as u64 % len, 1)?
                })
            }
        })
    })
}

/// The server's cells as text.
fn server_cells(db: &mut postgres::Client) -> BTreeMap<CellId, String> {
    let mut out = BTreeMap::new();
    for (n, _) in COLUMNS {
        for r in db.query(&format!("SELECT id, {n}::text FROM incident WHERE {n} IS NOT NULL"), &[]).unwrap() {
            let id: i32 = r.get(0);
            out.insert(CellId::new("incident", &json!({ "id": id }), n), r.get::<_, String>(1));
        }
    }
    out
}

#[test]
fn random_offline_histories_converge() {
    let mut db = fresh_node("converge_client_random", "server");
    let dir = workdir("random");
    let actors = ["phone1", "phone2", "phone3", "phone4", "phone5"];
    let mut clients: Vec<Client> = actors.iter().map(|a| open(&dir, a)).collect();
    let mut rng = Rng(0x5eed_c0de_2026);
    let mut all_ops: BTreeMap<String, Op> = BTreeMap::new();
    let (mut crashes, mut delivered, mut repeats) = (0, 0, 0);

    let mut made = 0;
    while made < 1000 {
        let i = rng.below(5) as usize;
        if rng.chance(5) {
            clients[i].crash = Some(CrashPoint::AfterOutboxAppend);
        }
        match random_mutation(&mut clients[i], &mut rng) {
            Ok(op) => {
                all_ops.insert(op.op_id.clone(), op);
                made += 1;
            }
            Err(ClientError::Crashed(_)) => {
                // Killed after the outbox write: the op must survive the restart.
                crashes += 1;
                clients[i] = open(&dir, actors[i]);
                let op = clients[i].outbox().last().cloned().expect("op kept in the outbox");
                all_ops.insert(op.op_id.clone(), op);
                made += 1;
            }
            Err(e) => panic!("mutation failed: {e}"),
        }
        if rng.chance(8) {
            let j = rng.below(5) as usize;
            let seed = rng.next();
            let crash_push = rng.chance(15);
            let crash_pull = rng.chance(15);
            clients[j].crash = crash_push.then_some(CrashPoint::AfterPushBeforeAck);
            let mut r = Rng(seed | 1);
            let res = clients[j].push_with(&mut db, |mut ops| {
                // A flaky network: ~25% lost this time (parents too, so
                // children arrive first), shuffled, ~20% twice.
                ops.retain(|_| !r.chance(25));
                let twice: Vec<Op> = ops.iter().filter(|_| r.chance(25)).cloned().collect();
                repeats += twice.len();
                ops.extend(twice);
                for k in (1..ops.len()).rev() {
                    ops.swap(k, r.below(k as u64 + 1) as usize);
                }
                delivered += ops.len();
                ops
            });
            match res {
                Ok(_) => {}
                Err(ClientError::Crashed(_)) => {
                    crashes += 1;
                    clients[j] = open(&dir, actors[j]);
                }
                Err(e) => panic!("push failed: {e}"),
            }
            clients[j].crash = crash_pull.then_some(CrashPoint::AfterPullBeforeSave);
            match clients[j].pull(&mut db) {
                Ok(_) => {}
                Err(ClientError::Crashed(_)) => {
                    crashes += 1;
                    clients[j] = open(&dir, actors[j]);
                }
                Err(e) => panic!("pull failed: {e}"),
            }
            clients[j].crash = None;
        }
    }
    // Everyone comes online for good.
    for c in clients.iter_mut() {
        c.crash = None;
        let outcomes = c.push(&mut db).unwrap();
        assert!(outcomes.iter().all(|o| o.outcome != "rejected"), "{outcomes:?}");
        assert!(c.outbox().is_empty());
    }
    for c in clients.iter_mut() {
        c.pull(&mut db).unwrap();
    }
    eprintln!("1000 ops, {delivered} deliveries ({repeats} repeated on purpose), {crashes} simulated crashes");
    assert_eq!(all_ops.len(), 1000);
    assert!(crashes > 20 && repeats > 50, "the history did not exercise crashes and repeats");

    // The server equals a fold of every op.
    let server = server_cells(&mut db);
    let mut folded: BTreeMap<CellId, AnyCrdt> = BTreeMap::new();
    for op in all_ops.values() {
        let ty = COLUMNS.iter().find(|(n, _)| *n == op.target_column).unwrap().1;
        let cell = folded.entry(CellId::of(op)).or_insert(AnyCrdt::empty(ty).unwrap());
        cell.merge_bytes(&op.delta).unwrap();
    }
    let folded_text: BTreeMap<CellId, String> = folded.iter().map(|(k, v)| (k.clone(), v.to_text())).collect();
    assert_eq!(server, folded_text, "server differs from the fold of all ops");
    // Every client equals the server.
    for c in &clients {
        let mine: BTreeMap<CellId, String> = c.cells().iter().map(|(k, v)| (k.clone(), v.to_text())).collect();
        assert_eq!(mine, server, "client {} differs from the server", c.actor());
    }
    // Each op applied exactly once; the repeats were seen as duplicates.
    let twice = db
        .query("SELECT op_id FROM converge.op_log WHERE outcome = 'applied' GROUP BY op_id HAVING count(*) > 1", &[])
        .unwrap();
    assert!(twice.is_empty(), "ops applied more than once: {}", twice.len());
    let applied: i64 = db
        .query_one("SELECT count(DISTINCT op_id) FROM converge.op_log WHERE outcome = 'applied' AND origin <> 'local'", &[])
        .unwrap()
        .get(0);
    assert_eq!(applied, 1000);
    let counts: BTreeMap<String, i64> = db
        .query("SELECT outcome, count(*) FROM converge.op_log GROUP BY outcome", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    eprintln!("op_log outcomes: {counts:?}");
    assert!(counts.get("duplicate").copied().unwrap_or(0) > 0 && counts.get("buffered").copied().unwrap_or(0) > 0);
    let pending: i64 = db.query_one("SELECT count(*) FROM converge.pending", &[]).unwrap().get(0);
    assert_eq!(pending, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client whose cursor points into a part of the log the server
/// compacted away (55000 from changes_since) rejoins from the declared
/// tables' snapshots and goes on from the frontier they reflect (SPEC
/// section 3). A client that had pulled before takes the snapshot's
/// state, not a merge with its own: compaction no longer marks what was
/// removed, and a merge would bring it back. Its unsent ops stay.
#[test]
fn a_client_behind_a_compacted_log_rejoins_from_snapshots() {
    let mut db = fresh_node("converge_client_snapshot", "server");
    // Also a table whose key is an array: ops name its rows by the key's
    // text ("{1,2}"), and so must a row taken from a snapshot.
    db.batch_execute("CREATE TABLE shelf (k int[] PRIMARY KEY, tags converge.orset); SELECT converge.replicate('shelf');").unwrap();
    let dir = workdir("snapshot");
    let mut rng = Rng(7);
    let mut phone = open(&dir, "phone1");
    let mut tablet = open(&dir, "tablet1");
    let mine = |c: &Client| -> BTreeMap<CellId, String> { c.cells().iter().map(|(k, v)| (k.clone(), v.to_text())).collect() };
    for _ in 0..200 {
        random_mutation(&mut phone, &mut rng).unwrap();
    }
    let shelf = json!({"k": "{1,2}"});
    for c in [&mut phone, &mut tablet] {
        c.declare("shelf", "tags", "orset").unwrap();
    }
    edit_tags_of(&mut phone, "shelf", shelf.clone(), |x, d| x.add("gloves", d.clone()));
    assert!(phone.push(&mut db).unwrap().iter().all(|o| o.outcome == "applied"));
    tablet.pull(&mut db).unwrap();
    let incident = |c: &Client| -> BTreeMap<CellId, String> { mine(c).into_iter().filter(|(id, _)| id.table == "incident").collect() };
    assert_eq!(incident(&tablet), server_cells(&mut db));
    // The phone goes on (removing some of what the tablet saw), the tablet
    // makes an edit it has not sent, and the server compacts.
    for _ in 0..200 {
        random_mutation(&mut phone, &mut rng).unwrap();
    }
    phone.push(&mut db).unwrap();
    random_mutation(&mut tablet, &mut rng).unwrap();
    let removed: i64 = db.query_one("SELECT ops_removed FROM converge.compact()", &[]).unwrap().get(0);
    assert!(removed > 0, "nothing compacted");
    let err = db.query("SELECT * FROM converge.changes_since('{\"phone1\": 200}')", &[]).unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("55000"), "{err:?}");

    tablet.pull(&mut db).unwrap();
    assert_eq!(tablet.frontier().get("phone1"), Some(&401));
    assert_eq!(tablet.outbox().len(), 1, "the unsent edit stays");
    tablet.push(&mut db).unwrap();
    tablet.pull(&mut db).unwrap();
    assert_eq!(incident(&tablet), server_cells(&mut db), "the tablet differs from the server after its rejoin");
    // A new client rejoins the same way; later ops come through the log.
    let mut laptop = open(&dir, "laptop1");
    laptop.declare("shelf", "tags", "orset").unwrap();
    laptop.pull(&mut db).unwrap();
    let on_shelf = laptop.value("shelf", &shelf, "tags").map(|v| v.to_text());
    assert_eq!(on_shelf, phone.value("shelf", &shelf, "tags").map(|v| v.to_text()), "the array-keyed row under the key its ops name");
    assert_eq!(incident(&laptop), server_cells(&mut db));
    for _ in 0..20 {
        random_mutation(&mut phone, &mut rng).unwrap();
    }
    phone.push(&mut db).unwrap();
    assert_eq!(laptop.pull(&mut db).unwrap(), 20);
    assert_eq!(incident(&laptop), server_cells(&mut db));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn same_op_reaching_two_nodes_by_two_paths() {
    // phone -> madrid, phone -> dublin directly, and madrid forwarding to dublin.
    let mut madrid = fresh_node("converge_client_madrid", "madrid");
    let mut dublin = fresh_node("converge_client_dublin", "dublin");
    let dir = workdir("paths");
    let mut phone = open(&dir, "phone1");
    let mut rng = Rng(42);
    for _ in 0..50 {
        random_mutation(&mut phone, &mut rng).unwrap();
    }
    let ops = phone.outbox().to_vec();
    let first = send_ops(&mut madrid, &ops, "phone1").unwrap();
    let direct = send_ops(&mut dublin, &ops, "phone1").unwrap();
    let forwarded = send_ops(&mut dublin, &ops, "madrid").unwrap();
    assert!(first.iter().chain(&direct).all(|o| o.outcome == "applied" || o.outcome == "buffered"));
    assert!(forwarded.iter().all(|o| o.outcome == "duplicate"), "{forwarded:?}");
    assert_eq!(server_cells(&mut madrid), server_cells(&mut dublin));
    for db in [&mut madrid, &mut dublin] {
        let applied: i64 =
            db.query_one("SELECT count(*) FROM converge.op_log WHERE outcome = 'applied' AND origin <> 'local'", &[]).unwrap().get(0);
        assert_eq!(applied, 50);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_batches_on_the_same_rows() {
    // Four sessions push overlapping, differently shuffled batches of the
    // same 400 ops, all aimed at 4 rows: no deadlock, no error, no op lost
    // or applied twice.
    let mut db = fresh_node("converge_client_concurrent", "server");
    let dir = workdir("concurrent");
    let mut ops = Vec::new();
    for (i, actor) in ["tab1", "tab2", "tab3", "tab4"].iter().enumerate() {
        let mut c = open(&dir, actor);
        let mut rng = Rng(1000 + i as u64);
        for _ in 0..100 {
            random_mutation(&mut c, &mut rng).unwrap();
        }
        ops.extend(c.outbox().to_vec());
    }
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let mut mine = ops.clone();
            std::thread::spawn(move || {
                let mut r = Rng(77 + t);
                let mut db = connect("converge_client_concurrent");
                for k in (1..mine.len()).rev() {
                    mine.swap(k, r.below(k as u64 + 1) as usize);
                }
                for chunk in mine.chunks(57) {
                    send_ops(&mut db, chunk, &format!("session{t}")).expect("a batch failed (deadlock?)");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("session thread");
    }
    // The next sync of any client: a child buffered while its parent was
    // being applied from pending by another session is picked up here.
    db.query("SELECT * FROM converge.apply_batch('{}')", &[]).unwrap();
    let twice = db
        .query("SELECT op_id FROM converge.op_log WHERE outcome = 'applied' GROUP BY op_id HAVING count(*) > 1", &[])
        .unwrap();
    assert!(twice.is_empty());
    let applied: i64 = db
        .query_one("SELECT count(*) FROM converge.op_log WHERE outcome = 'applied' AND origin <> 'local'", &[])
        .unwrap()
        .get(0);
    let pending: i64 = db.query_one("SELECT count(*) FROM converge.pending", &[]).unwrap().get(0);
    assert_eq!((applied, pending), (400, 0));
    let mut folded: BTreeMap<CellId, AnyCrdt> = BTreeMap::new();
    for op in &ops {
        let ty = COLUMNS.iter().find(|(n, _)| *n == op.target_column).unwrap().1;
        folded.entry(CellId::of(op)).or_insert(AnyCrdt::empty(ty).unwrap()).merge_bytes(&op.delta).unwrap();
    }
    let folded_text: BTreeMap<CellId, String> = folded.iter().map(|(k, v)| (k.clone(), v.to_text())).collect();
    assert_eq!(server_cells(&mut db), folded_text);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client asks the authority for a change it may not make itself
/// (SPEC section 5): the request travels in its outbox like an op; the
/// server, the authority here, decides it once; a second request with the
/// same idempotency key (a retry made offline) gets the same outcome.
#[test]
fn a_client_request_is_decided_once_by_the_authority() {
    let mut db = fresh_node("converge_client_request", "virginia");
    db.batch_execute(
        "CREATE TABLE ticket (id int PRIMARY KEY, status text DEFAULT 'open');
         SELECT converge.replicate('ticket');
         SELECT converge.set_authority('ticket', 'status', 'virginia');
         INSERT INTO ticket (id) VALUES (1);",
    )
    .unwrap();
    let dir = workdir("request");
    let mut c = Client::open(dir.join("tab7"), "tab7").unwrap();
    let first = c.request("public.ticket", json!({"id": 1}), "status", json!("closed"), Some("close ticket 1")).unwrap();
    let retry = c.request("public.ticket", json!({"id": 1}), "status", json!("closed"), Some("close ticket 1")).unwrap();
    assert_eq!(c.outbox().len(), 2, "both requests wait in the outbox");
    let outcomes = c.push(&mut db).unwrap();
    assert!(outcomes.iter().all(|o| o.outcome == "applied"), "{outcomes:?}");
    assert!(c.outbox().is_empty());
    // The worker's next pass decides requests that came through apply
    // (this server runs none: decide now).
    let decided: i64 = db.query_one("SELECT converge.decide_pending()", &[]).unwrap().get(0);
    assert_eq!(decided, 2);
    let status: String = db.query_one("SELECT status FROM ticket WHERE id = 1", &[]).unwrap().get(0);
    assert_eq!(status, "closed");
    let rows: Vec<(String, String, String)> = db
        .query("SELECT request_id, requested_by, status || ' ' || decision::text FROM converge.requests ORDER BY request_id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let granted = "granted {\"status\": \"closed\"}".to_string();
    assert_eq!(
        rows,
        vec![(first.op_id.clone(), "tab7".into(), granted.clone()), (retry.op_id.clone(), "tab7".into(), granted)]
    );
    // The authority wrote the row once.
    let writes: i64 = db
        .query_one("SELECT count(*) FROM converge.op_log WHERE actor = 'virginia' AND target_table = 'public.ticket' AND target_column = ''", &[])
        .unwrap()
        .get(0);
    assert_eq!(writes, 2, "the insert and one decision");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client learns a row's epoch from the freeze it pulls (SPEC section 5):
/// its edits made after that carry the new epoch and apply, while a client
/// that had not pulled the freeze makes a late edit, kept out (`frozen`).
#[test]
fn a_client_edit_carries_the_epoch_of_the_freeze_it_pulled() {
    let mut db = fresh_node("converge_client_epoch", "virginia");
    db.batch_execute(
        "SELECT converge.set_authority('incident', NULL, 'virginia');
         INSERT INTO incident (id) VALUES (1), (2);",
    )
    .unwrap();
    let dir = workdir("epoch");
    let (mut seen, mut stale) = (open(&dir, "tab1"), open(&dir, "tab2"));
    seen.pull(&mut db).unwrap();
    stale.pull(&mut db).unwrap();
    let epoch: i64 = db.query_one("SELECT converge.freeze('incident', '{\"id\": 1}')", &[]).unwrap().get(0);
    assert_eq!(epoch, 1);
    seen.pull(&mut db).unwrap();
    assert_eq!(seen.epoch("incident", &json!({"id": 1})), 1);
    // Kept under the name the client declared the table by (here bare).
    assert_eq!(seen.epoch("public.incident", &json!({"id": 1})), 0);
    assert_eq!(seen.epoch("incident", &json!({"id": 2})), 0, "only the frozen row");
    let add = |c: &mut Client, e: &'static str| {
        c.mutate("incident", json!({"id": 1}), "tags", move |v, ctx| {
            let AnyCrdt::OrSet(x) = v else { unreachable!() };
            Ok(AnyCrdt::OrSet(x.add(e, ctx.dot.clone())))
        })
        .unwrap()
    };
    assert_eq!(add(&mut seen, "amended").epoch, 1);
    assert_eq!(add(&mut stale, "late").epoch, 0);
    let outcomes: Vec<(String, Option<String>)> =
        [seen.push(&mut db).unwrap(), stale.push(&mut db).unwrap()].concat().into_iter().map(|o| (o.outcome, o.reason)).collect();
    assert_eq!(outcomes, vec![("applied".into(), None), ("quarantined".into(), Some("frozen".into()))]);
    let tags: String = db.query_one("SELECT tags::jsonb::text FROM incident WHERE id = 1", &[]).unwrap().get(0);
    assert_eq!(tags, "[\"amended\"]");
    // The epoch is kept with the client's state.
    drop(seen);
    assert_eq!(open(&dir, "tab1").epoch("incident", &json!({"id": 1})), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A device that increments a counter and tags a row after it was frozen,
/// without knowing: the server keeps those edits out (`frozen`). Once the
/// device pulls the freeze, its cells of the row are the frozen state, so
/// its next increment (a running total) does not carry the kept-out ones
/// back in, and its own view drops the kept-out tag.
#[test]
fn a_devices_edits_after_a_freeze_it_pulled_leave_its_frozen_ones_out() {
    let mut db = fresh_node("converge_client_frozen_counter", "virginia");
    db.batch_execute(
        "SELECT converge.set_authority('incident', NULL, 'virginia');
         INSERT INTO incident (id) VALUES (1);",
    )
    .unwrap();
    let dir = workdir("frozen-counter");
    let mut tab = open(&dir, "tab8");
    let incr = |c: &mut Client, n: i64| {
        c.mutate("incident", json!({"id": 1}), "visits", move |v, ctx| {
            let AnyCrdt::GCounter(x) = v else { unreachable!() };
            Ok(AnyCrdt::GCounter(x.incr(ctx.actor, n)?))
        })
        .unwrap()
    };
    let visits = |c: &Client| match c.value("incident", &json!({"id": 1}), "visits") {
        Some(AnyCrdt::GCounter(x)) => x.value().unwrap(),
        other => panic!("{other:?}"),
    };
    incr(&mut tab, 2);
    assert_eq!(outcome_lines(tab.push(&mut db).unwrap()), ["tab8:1 applied "]);
    db.batch_execute("SELECT converge.freeze('incident', '{\"id\": 1}')").unwrap();
    // Made before the device pulled the freeze, and still in its outbox
    // when it pulls: kept out, also from its view, also after a restart.
    incr(&mut tab, 3);
    edit_tags(&mut tab, 1, |x, d| x.add("late", d.clone()));
    assert_eq!(visits(&tab), 5);
    tab.pull(&mut db).unwrap();
    assert_eq!(tab.epoch("incident", &json!({"id": 1})), 1);
    let late_tag = |c: &Client| c.value("incident", &json!({"id": 1}), "tags").map(|t| t.to_text()).is_some_and(|t| t.contains("late"));
    assert_eq!((visits(&tab), late_tag(&tab)), (2, false), "the frozen state");
    drop(tab);
    let mut tab = open(&dir, "tab8");
    assert_eq!((visits(&tab), late_tag(&tab)), (2, false), "the frozen state, after a restart");
    assert_eq!(outcome_lines(tab.push(&mut db).unwrap()), ["tab8:2 quarantined frozen", "tab8:3 quarantined frozen"]);
    // Made after: applied, on top of the frozen state only.
    assert_eq!(incr(&mut tab, 1).epoch, 1);
    assert_eq!(outcome_lines(tab.push(&mut db).unwrap()), ["tab8:4 applied "]);
    let n: i64 = db.query_one("SELECT converge.value(visits) FROM incident WHERE id = 1", &[]).unwrap().get(0);
    assert_eq!((n, visits(&tab)), (3, 3));
    // Listed once each, and not given up (a frozen op's counter is used up).
    let refused: Vec<String> = tab.rejected().iter().map(|(op, r)| format!("{} {r}", op.op_id)).collect();
    assert_eq!(refused, ["tab8:2 frozen", "tab8:3 frozen"]);
    assert!(tab.voids_pending().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A device's ops on a `removes_only` column (SPEC 5): its adds, tagged by
/// the client crate with its op id as their one dot, apply on a node that
/// is not the authority; its removal is `not_authority` and the warning
/// stays. (The node checks that an op carries no dot but its own.)
#[test]
fn a_device_adds_to_a_removes_only_column_but_does_not_remove() {
    let mut db = fresh_node("converge_client_removes_only", "dublin");
    db.batch_execute(
        "SELECT converge.set_authority('incident', 'tags', 'virginia', removes_only => true);
         INSERT INTO incident (id) VALUES (1);",
    )
    .unwrap();
    let dir = workdir("removes-only");
    let mut tab = open(&dir, "tab3");
    let set = |c: &mut Client, f: fn(&mut converge_core::OrSet, &converge_core::Dot) -> converge_core::OrSet| {
        c.mutate("incident", json!({"id": 1}), "tags", move |v, ctx| {
            let AnyCrdt::OrSet(x) = v else { unreachable!() };
            Ok(AnyCrdt::OrSet(f(x, &ctx.dot)))
        })
        .unwrap()
    };
    set(&mut tab, |x, d| x.add("warning", d.clone()));
    set(&mut tab, |x, d| x.add("warning", d.clone()));
    set(&mut tab, |x, d| x.add("sharps", d.clone()));
    let outcomes: Vec<String> = tab.push(&mut db).unwrap().into_iter().map(|o| o.outcome).collect();
    assert_eq!(outcomes, vec!["applied"; 3]);
    set(&mut tab, |x, _| x.remove("warning"));
    let outcomes: Vec<(String, Option<String>)> = tab.push(&mut db).unwrap().into_iter().map(|o| (o.outcome, o.reason)).collect();
    assert_eq!(outcomes, vec![("rejected".into(), Some("not_authority".into()))]);
    let tags: String = db.query_one("SELECT tags::jsonb::text FROM incident WHERE id = 1", &[]).unwrap().get(0);
    assert_eq!(tags, "[\"sharps\", \"warning\"]");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same on an ormap column: a device's increments and assigns, which
/// supersede its earlier ones, apply on a node that is not the authority
/// (each op says what it superseded and what kind that was); removing an
/// element or a key is `not_authority`.
#[test]
fn a_device_counts_and_assigns_in_a_removes_only_ormap_but_does_not_remove() {
    let mut db = fresh_node("converge_client_removes_only_ormap", "dublin");
    db.batch_execute(
        "SELECT converge.set_authority('incident', 'items', 'virginia', removes_only => true);
         INSERT INTO incident (id) VALUES (1);",
    )
    .unwrap();
    let dir = workdir("removes-only-ormap");
    let mut tab = open(&dir, "tab4");
    tab.declare_removes_only("incident", "items").unwrap();
    type Change = fn(&mut converge_core::OrMap, &converge_core::Dot) -> converge_core::OrMap;
    let change = |c: &mut Client, f: Change| {
        c.mutate("incident", json!({"id": 1}), "items", move |v, ctx| {
            let AnyCrdt::OrMap(x) = v else { unreachable!() };
            Ok(AnyCrdt::OrMap(f(x, &ctx.dot)))
        })
        .unwrap()
    };
    fn note(s: &str) -> converge_core::Json {
        converge_core::Json::parse(&format!("\"{s}\"")).unwrap()
    }
    change(&mut tab, |x, d| x.add("warnings", "latex", d.clone()).unwrap());
    change(&mut tab, |x, d| x.incr("gauze", "tab4", 5, d.clone()).unwrap());
    change(&mut tab, |x, d| x.incr("gauze", "tab4", 2, d.clone()).unwrap());
    change(&mut tab, |x, d| x.assign("note", note("check seals"), d.clone()).unwrap());
    change(&mut tab, |x, d| x.assign("note", note("seals checked"), d.clone()).unwrap());
    // The overwrite says what it superseded (format version 2).
    assert_eq!(tab.outbox().iter().map(|op| op.delta[0]).collect::<Vec<_>>(), vec![1, 1, 2, 1, 2]);
    let outcomes: Vec<String> = tab.push(&mut db).unwrap().into_iter().map(|o| o.outcome).collect();
    assert_eq!(outcomes, vec!["applied"; 5]);
    change(&mut tab, |x, d| x.remove_element("warnings", "latex", d.clone()).unwrap());
    change(&mut tab, |x, _| x.remove_key("note"));
    let outcomes: Vec<(String, Option<String>)> = tab.push(&mut db).unwrap().into_iter().map(|o| (o.outcome, o.reason)).collect();
    assert_eq!(outcomes, vec![("rejected".into(), Some("not_authority".into())); 2]);
    let items: String = db.query_one("SELECT converge.to_jsonb(items)::text FROM incident WHERE id = 1", &[]).unwrap().get(0);
    assert_eq!(items, r#"{"note": ["seals checked"], "gauze": 7, "warnings": ["latex"]}"#);
    // A client that was not told (or one before 0.2.0) sends its overwrite
    // without saying what it superseded: the server cannot tell it from a
    // removal, and it is not_authority.
    let mut other = open(&dir, "tab5");
    other.pull(&mut db).unwrap();
    change(&mut other, |x, d| x.assign("note", note("seals broken"), d.clone()).unwrap());
    assert_eq!(other.outbox()[0].delta[0], 1);
    let outcomes: Vec<(String, Option<String>)> = other.push(&mut db).unwrap().into_iter().map(|o| (o.outcome, o.reason)).collect();
    assert_eq!(outcomes, vec![("rejected".into(), Some("not_authority".into()))]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A signed device op that says what it superseded goes out of
/// `changes_since(frontier)` as it was signed (its signature covers the
/// delta), while the server's own ops of the same column lose the list
/// there for older readers.
#[test]
fn a_signed_op_keeps_its_covers_in_changes_since() {
    let mut db = fresh_node("converge_client_signed_covers", "dublin");
    let key = converge_core::signing::SigningKey::from_bytes(&[21; 32]);
    db.execute("SELECT converge.register_actor('tab6', $1)", &[&key.verifying_key().to_bytes().to_vec()]).unwrap();
    db.batch_execute(
        "SELECT converge.set_authority('incident', 'items', 'virginia', removes_only => true);
         INSERT INTO incident (id) VALUES (1);
         UPDATE incident SET items = converge.assign(items, 'by', '\"ana\"') WHERE id = 1;
         UPDATE incident SET items = converge.assign(items, 'by', '\"ben\"') WHERE id = 1;",
    )
    .unwrap();
    let dir = workdir("signed-covers");
    let mut tab = open(&dir, "tab6");
    tab.declare_removes_only("incident", "items").unwrap();
    tab.sign_with(key.clone(), "public");
    tab.pull(&mut db).unwrap();
    tab.mutate("incident", json!({"id": 1}), "items", |v, ctx| {
        let AnyCrdt::OrMap(x) = v else { unreachable!() };
        Ok(AnyCrdt::OrMap(x.assign("by", Json::parse("\"cy\"").unwrap(), ctx.dot.clone())?))
    })
    .unwrap();
    let outcomes: Vec<String> = tab.push(&mut db).unwrap().into_iter().map(|o| o.outcome).collect();
    assert_eq!(outcomes, vec!["applied"]);
    let pulled: Vec<Op> = db
        .query("SELECT converge.op_encode(o) FROM converge.changes_since('{}') o WHERE o.target_column = 'items'", &[])
        .unwrap()
        .iter()
        .map(|r| Op::decode(r.get::<_, &[u8]>(0)).unwrap())
        .collect();
    let forms: Vec<(String, u8)> = pulled.iter().map(|op| (op.actor.clone(), op.delta[0])).collect();
    assert_eq!(forms, vec![("dublin".into(), 1), ("dublin".into(), 1), ("tab6".into(), 2)]);
    assert_eq!(pulled[2].check_signature(&key.verifying_key()), SignatureCheck::Valid);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A signed op names its table as the server writes it (`format('%I.%I')`,
/// which the signature covers): a table whose name needs quotes is sent
/// quoted, and its ops are applied (sent unquoted, they were rejected).
#[test]
fn a_signed_op_on_a_table_whose_name_needs_quotes_is_applied() {
    let mut db = fresh_node("converge_client_signed_quoted", "dublin");
    let key = converge_core::signing::SigningKey::from_bytes(&[22; 32]);
    db.execute("SELECT converge.register_actor('tab7', $1)", &[&key.verifying_key().to_bytes().to_vec()]).unwrap();
    db.batch_execute("CREATE TABLE \"Ward Notes\" (id int PRIMARY KEY, n converge.gcounter); SELECT converge.replicate('\"Ward Notes\"');")
        .unwrap();
    let dir = workdir("signed-quoted");
    let mut tab = Client::open(dir.join("tab7"), "tab7").unwrap();
    tab.declare("Ward Notes", "n", "gcounter").unwrap();
    tab.sign_with(key, "public");
    tab.mutate("Ward Notes", json!({"id": 1}), "n", |v, ctx| {
        let AnyCrdt::GCounter(x) = v else { unreachable!() };
        Ok(AnyCrdt::GCounter(x.incr(ctx.actor, 2)?))
    })
    .unwrap();
    let outcomes: Vec<(String, Option<String>)> = tab.push(&mut db).unwrap().into_iter().map(|o| (o.outcome, o.reason)).collect();
    assert_eq!(outcomes, vec![("applied".into(), None)]);
    let n: i64 = db.query_one("SELECT converge.value(n) FROM \"Ward Notes\" WHERE id = 1", &[]).unwrap().get(0);
    assert_eq!(n, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A write cut short leaves a torn last line in the outbox (here with a
/// character split in two). Opening drops it and rewrites the outbox, so
/// the next op is a line of its own and survives the next open.
#[test]
fn an_op_written_after_a_torn_outbox_line_survives() {
    let dir = workdir("torn-outbox");
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut c = open(&dir, "tab8");
    for _ in 0..2 {
        random_mutation(&mut c, &mut rng).unwrap();
    }
    drop(c);
    let path = dir.join("tab8").join("outbox.jsonl");
    let mut torn = std::fs::read(&path).unwrap();
    torn.extend_from_slice(b"{\"op_id\":\"tab8:3\",\"note\":\"caf\xc3");
    std::fs::write(&path, torn).unwrap();
    let mut c = open(&dir, "tab8");
    assert_eq!(c.outbox().len(), 2);
    let third = random_mutation(&mut c, &mut rng).unwrap();
    drop(c);
    let c = open(&dir, "tab8");
    let ids: Vec<String> = c.outbox().iter().map(|op| op.op_id.clone()).collect();
    assert_eq!(ids, vec!["tab8:1".to_string(), "tab8:2".to_string(), third.op_id.clone()]);
    let _ = std::fs::remove_dir_all(&dir);
}
