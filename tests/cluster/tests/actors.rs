//! Actors on real nodes (SPEC section 5): a device with a registered key
//! signs its ops (the client crate does), unsigned or forged ops are
//! rejected, and a stolen device stops affecting state once revoked, on
//! every node alike: also on nodes that had applied its later ops before
//! the revocation reached them (they take them out and rebuild the rows),
//! through a partition and a kill -9.
//!
//! Needs the extension installed (`cargo pgrx install`); `bash .ci/test`
//! runs it. Ports: CONVERGE_CLUSTER_PORT + 80..82.

use converge_client::{AnyCrdt, Client};
use converge_cluster_tests::workload::*;
use converge_cluster_tests::*;
use converge_core::signing::SigningKey;
use converge_core::Op;
use serde_json::json;
use std::time::Duration;

fn base_port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710) + 80
}

fn incr(phone: &mut Client, table: &str, id: i32, by: i64) -> Op {
    phone
        .mutate(table, json!({ "id": id }), "g", move |v, ctx| match v {
            AnyCrdt::GCounter(c) => Ok(AnyCrdt::GCounter(c.incr(ctx.actor, by)?)),
            _ => unreachable!(),
        })
        .unwrap()
}

/// Each op of `actor` on `n`, as `op_id outcome reason`, in counter order.
fn outcomes(n: &Node, actor: &str) -> String {
    text(
        n,
        &format!(
            "SELECT string_agg(format('%s %s %s', op_id, outcome, coalesce(reason, '-')), ', ' ORDER BY counter, seq)
               FROM converge.op_log WHERE actor = '{actor}' AND outcome NOT IN ('duplicate', 'buffered')"
        ),
    )
}

#[test]
fn a_revoked_device_stops_counting_on_every_node() {
    let root = Scratch::new("actors");
    let nodes = mesh_of_three(&root.0, base_port());
    // A ticket whose status madrid decides and whose note virginia does.
    for n in &nodes {
        n.client()
            .batch_execute(
                "CREATE TABLE ticket (id int PRIMARY KEY, status text DEFAULT 'open', note text);
                 SELECT converge.replicate('ticket');
                 SELECT converge.set_authority('ticket', 'status', 'madrid');
                 SELECT converge.set_authority('ticket', 'note', 'virginia');",
            )
            .unwrap();
    }
    nodes[0].client().batch_execute("INSERT INTO ticket (id) VALUES (1)").unwrap();
    let key = SigningKey::from_bytes(&[11; 32]);
    let public = key.verifying_key().to_bytes().to_vec();
    nodes[2].client().execute("SELECT converge.register_actor('phone-ana', $1)", &[&public]).unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    for n in &nodes {
        let k: Vec<u8> = n.client().query_one("SELECT public_key FROM converge.actors WHERE actor = 'phone-ana'", &[]).unwrap().get(0);
        assert_eq!(k, public, "{} has phone-ana's key", n.name);
    }

    // The phone signs what it pushes (the client crate); madrid applies it.
    let dir = root.0.join("phone-ana");
    let mut phone = Client::open(&dir, "phone-ana").unwrap();
    phone.declare("ctr", "g", "gcounter").unwrap();
    phone.sign_with(key, "public");
    incr(&mut phone, "ctr", 1, 1);
    incr(&mut phone, "ctr", 1, 1);
    let out = phone.push(&mut nodes[0].client()).unwrap();
    assert!(out.iter().all(|o| o.outcome == "applied"), "{out:?}");
    // Someone without the key: unsigned, and signed by another key.
    let mut forged = Op::new("phone-ana", 3, "public.ctr", &json!({ "id": 1 }), "g", vec![], vec![]);
    forged.delta = converge_core::encode(&converge_core::types::GCounter::default().incr("phone-ana", 900).unwrap());
    let unsigned = forged.clone();
    forged.sign(&SigningKey::from_bytes(&[12; 32]));
    let out = converge_client::send_ops(&mut nodes[1].client(), &[unsigned, forged], "thief").unwrap();
    let reasons: Vec<String> = out.iter().map(|o| o.reason.clone().unwrap_or_default()).collect();
    assert_eq!(reasons, ["unsigned", "bad_signature"]);
    converge_all(&nodes, Duration::from_secs(60));

    // virginia is cut off; the phone, stolen, keeps pushing to madrid, which
    // applies and forwards to dublin; madrid crashes and comes back.
    pause(&nodes, 2, 0, true);
    pause(&nodes, 2, 1, true);
    incr(&mut phone, "ctr", 1, 50);
    incr(&mut phone, "ctr", 2, 70);
    // It also asks to close the ticket, which madrid grants at once, and
    // to change its note, which waits for virginia.
    phone.request("public.ticket", json!({ "id": 1 }), "status", json!("closed"), None).unwrap();
    phone.request("public.ticket", json!({ "id": 1 }), "note", json!("stolen"), None).unwrap();
    let out = phone.push(&mut nodes[0].client()).unwrap();
    assert!(out.iter().all(|o| o.outcome == "applied"), "{out:?}");
    // (madrid's worker may have decided it already.)
    text(&nodes[0], "SELECT converge.decide_pending()::text");
    assert_eq!(text(&nodes[0], "SELECT string_agg(status, ' ' ORDER BY request_id) FROM converge.requests"), "granted pending");
    nodes[0].kill9();
    nodes[0].start();
    // virginia, where the phone's counter 2 is the last applied, revokes it.
    let cut: String = text(&nodes[2], "SELECT converge.revoke_actor('phone-ana')");
    assert!(cut.starts_with("virginia:"), "{cut}");
    for n in &nodes {
        if n.name != "virginia" {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while text(n, "SELECT count(*)::text FROM converge.op_log WHERE actor = 'phone-ana' AND outcome = 'applied'") != "6" {
                assert!(std::time::Instant::now() < deadline, "{} did not get the phone's ops", n.name);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    assert_eq!(text(&nodes[1], "SELECT converge.value(g)::text FROM ctr WHERE id = 1"), "52");

    pause(&nodes, 2, 0, false);
    pause(&nodes, 2, 1, false);
    converge_all(&nodes, Duration::from_secs(60));
    // After the phone's counter 2, nothing of it counts anywhere.
    let expect = "phone-ana:1 applied -, phone-ana:2 applied -, phone-ana:3 rejected revoked, phone-ana:4 rejected revoked, \
                  phone-ana:5 rejected revoked, phone-ana:6 rejected revoked";
    for n in &nodes {
        assert_eq!(outcomes(n, "phone-ana").replace(", phone-ana:3 rejected unsigned, phone-ana:3 rejected bad_signature", ""), expect, "{}", n.name);
        assert_eq!(text(n, "SELECT converge.value(g)::text FROM ctr WHERE id = 1"), "2", "{}", n.name);
        assert_eq!(text(n, "SELECT coalesce(converge.value(g), 0)::text FROM ctr WHERE id = 2"), "0", "{}", n.name);
        assert_eq!(text(n, "SELECT revoked_after::text FROM converge.actors WHERE actor = 'phone-ana'"), "2", "{}", n.name);
    }
    assert_identical(&nodes, &["ctr", "ticket"]);
    // Its requests are withdrawn everywhere alike (virginia rejected them
    // on arrival): the one still pending is gone, and of the one madrid had
    // granted only the decision is left, whose write stays (madrid's own).
    let requests = "SELECT string_agg(format('%s %s %s %s %s', request_id, status, decision, coalesce(value::text, '-'),
                                              coalesce(requested_by, '-')), ', ' ORDER BY request_id)
                      FROM converge.requests";
    for n in &nodes {
        assert_eq!(text(n, requests), r#"phone-ana:5 granted {"status": "closed"} - -"#, "{}", n.name);
        assert_eq!(text(n, "SELECT status || ' ' || coalesce(note, '-') FROM ticket WHERE id = 1"), "closed -", "{}", n.name);
    }
    // Its next push is refused wherever it lands.
    incr(&mut phone, "ctr", 1, 5);
    let out = phone.push(&mut nodes[1].client()).unwrap();
    assert_eq!(out.last().and_then(|o| o.reason.clone()).as_deref(), Some("revoked"), "{out:?}");
}

/// One signed device of the random history: its client, and per row of
/// `dev` the running total of its increments after each of its ops.
struct Device {
    client: Client,
    totals: std::collections::BTreeMap<i32, Vec<(u64, i64)>>,
}

impl Device {
    /// Its share of row `id` once its ops above `cut` are out.
    fn share(&self, id: i32, cut: Option<i64>) -> i64 {
        let admitted = |c: u64| cut.is_none_or(|cut| c as i64 <= cut);
        self.totals.get(&id).and_then(|t| t.iter().rev().find(|(c, _)| admitted(*c))).map_or(0, |(_, total)| *total)
    }
}

/// Random history: the nodes' own random writes (`Load`) and three signed
/// devices counting on `dev` through random nodes, under partitions, a kill
/// -9 and two revocations made on nodes that had not seen all of the
/// device's ops. In the end every node has the same rows, the same outcome
/// for every device op, and each `dev` counter is what the admitted ops
/// alone add up to (a model of the counters, not a comparison of nodes).
#[test]
fn random_history_with_devices_and_revocations_converges() {
    let root = Scratch::new("actors-random");
    let nodes = mesh_of_three(&root.0, base_port() + 3);
    for n in &nodes {
        n.client().batch_execute("CREATE TABLE dev (id int PRIMARY KEY, g converge.gcounter); SELECT converge.replicate('dev');").unwrap();
    }
    nodes[0].client().batch_execute("INSERT INTO dev SELECT g, '{}' FROM generate_series(1, 10) g").unwrap();
    let names = ["tab-1", "tab-2", "tab-3"];
    let mut devices: Vec<Device> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let key = SigningKey::from_bytes(&[20 + i as u8; 32]);
        let public = key.verifying_key().to_bytes().to_vec();
        nodes[i].client().execute("SELECT converge.register_actor($1, $2)", &[name, &public]).unwrap();
        let mut client = Client::open(root.0.join(name), name).unwrap();
        client.declare("dev", "g", "gcounter").unwrap();
        client.sign_with(key, "public");
        devices.push(Device { client, totals: Default::default() });
    }
    converge_all(&nodes, Duration::from_secs(60));

    let mut load = Load::new(0x5eed_1234_abcd_0001);
    let mut clients: Vec<Option<postgres::Client>> = nodes.iter().map(|_| None).collect();
    let mut rng = Rng(0xdead_beef_1234_5678);
    let device_round = |devices: &mut Vec<Device>, rng: &mut Rng, live: &[usize]| {
        for _ in 0..20 {
            let d = rng.below(3) as usize;
            let id = 1 + rng.below(10) as i32;
            let by = 1 + rng.below(9) as i64;
            let op = incr(&mut devices[d].client, "dev", id, by);
            let own = devices[d].totals.get(&id).and_then(|t| t.last()).map_or(0, |t| t.1) + by;
            devices[d].totals.entry(id).or_default().push((op.counter(), own));
            if rng.below(3) == 0 {
                let at = live[rng.below(live.len() as u64) as usize];
                devices[d].client.push(&mut nodes[at].client()).unwrap_or_else(|e| panic!("push to {}: {e:?}", nodes[at].name));
            }
        }
    };

    for round in 0..12 {
        let live: Vec<usize> = match round % 4 {
            // virginia cut off, or madrid-dublin cut, or all connected.
            1 => {
                pause(&nodes, 2, 0, true);
                pause(&nodes, 2, 1, true);
                vec![0, 1, 2]
            }
            2 => {
                pause(&nodes, 2, 0, false);
                pause(&nodes, 2, 1, false);
                pause(&nodes, 0, 1, true);
                vec![0, 1, 2]
            }
            3 => {
                pause(&nodes, 0, 1, false);
                vec![0, 1, 2]
            }
            _ => vec![0, 1, 2],
        };
        load.run(&nodes, &mut clients, &live, 150);
        device_round(&mut devices, &mut rng, &live);
        match round {
            // Revoked on a node cut off from some of the device's ops.
            5 => drop(nodes[2].client().query_one("SELECT converge.revoke_actor('tab-1')", &[]).unwrap()),
            6 => {
                let cut = devices[1].client.outbox().first().map_or(3, |o| o.counter() as i64 / 2);
                nodes[0].client().execute("SELECT converge.revoke_actor('tab-2', $1)", &[&cut]).unwrap();
            }
            8 => {
                nodes[1].kill9();
                clients[1] = None;
                nodes[1].start();
            }
            _ => {}
        }
    }
    pause(&nodes, 0, 1, false);
    pause(&nodes, 2, 0, false);
    pause(&nodes, 2, 1, false);
    for d in devices.iter_mut() {
        let _ = d.client.push(&mut nodes[0].client()).unwrap();
    }
    converge_all(&nodes, Duration::from_secs(120));
    // Client ops that waited for a peer's ops are applied in a transaction
    // of their own right after that peer's batch, then shipped: peers being
    // caught up does not mean that transaction has run yet. Give it time,
    // then let what it shipped arrive.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while nodes.iter().any(|n| text(n, "SELECT count(*)::text FROM converge.pending") != "0") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    converge_all(&nodes, Duration::from_secs(120));
    for n in &nodes {
        assert_eq!(text(n, "SELECT count(*)::text FROM converge.pending"), "0", "ops left waiting on {}", n.name);
    }
    assert_identical(&nodes, &["ctr", "item", "dev"]);
    load.expect.check(&nodes);
    // Every node applied the same ops of each device; an op a node saw and
    // another did not was rejected where it arrived (rejected ops are not
    // forwarded); an op two nodes saw has the same last outcome on both.
    for name in names {
        let last = |n: &Node| -> std::collections::BTreeMap<String, String> {
            n.client()
                .query(
                    "SELECT DISTINCT ON (op_id) op_id, outcome || ' ' || coalesce(reason, '-') FROM converge.op_log
                      WHERE actor = $1 AND outcome NOT IN ('duplicate', 'buffered') ORDER BY op_id, seq DESC",
                    &[&name],
                )
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        };
        let applied = |m: &std::collections::BTreeMap<String, String>| -> Vec<String> {
            m.iter().filter(|(_, o)| o.starts_with("applied")).map(|(id, _)| id.clone()).collect()
        };
        let reference = last(&nodes[0]);
        for n in &nodes[1..] {
            let other = last(n);
            assert_eq!(applied(&other), applied(&reference), "{name}'s applied ops on {} and {}", nodes[0].name, n.name);
            for (id, outcome) in &other {
                if let Some(r) = reference.get(id) {
                    assert_eq!(outcome, r, "{id} on {} and {}", n.name, nodes[0].name);
                } else {
                    assert!(outcome.starts_with("rejected"), "{id} only on {}: {outcome}", n.name);
                }
            }
        }
    }
    let cuts: Vec<Option<i64>> = names
        .iter()
        .map(|name| {
            nodes[0].client().query_one("SELECT revoked_after FROM converge.actors WHERE actor = $1", &[name]).unwrap().get(0)
        })
        .collect();
    assert!(cuts[0].is_some() && cuts[1].is_some() && cuts[2].is_none(), "{cuts:?}");
    for n in &nodes {
        for id in 1..=10 {
            let expect: i64 = devices.iter().zip(&cuts).map(|(d, cut)| d.share(id, *cut)).sum();
            let got: i64 = n.client().query_one("SELECT converge.value(g) FROM dev WHERE id = $1", &[&id]).unwrap().get(0);
            assert_eq!(got, expect, "dev {id} on {}", n.name);
        }
        let late: i64 = n
            .client()
            .query_one(
                "SELECT count(*) FROM converge.op_log l JOIN converge.actors a USING (actor)
                  WHERE l.outcome = 'applied' AND l.counter > a.revoked_after",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(late, 0, "ops past a cut-off applied on {}", n.name);
    }
}

/// A table's trigger that fires while converge applies a peer's batch is
/// the table owner's code, not the peer's: a converge call it makes is not
/// trusted. Here it forges an op under virginia's name with virginia's
/// origin; it is refused (`node_actor`) and logged as a claimed origin.
#[test]
fn a_trigger_fired_by_a_peers_batch_is_not_trusted_as_that_peer() {
    let root = Scratch::new("trust");
    let nodes = mesh_of_three(&root.0, base_port() + 6);
    nodes[1]
        .client()
        .batch_execute(
            "CREATE FUNCTION forge() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM * FROM converge.apply(ROW('virginia:900000', 'virginia', 'public.ctr', '{\"id\": 40}', 'g', 1, 0, '{}',
                                                   '{\"counts\":{\"virginia\":1000}}'::converge.gcounter::bytea, NULL)::converge.op,
                                               'peer:virginia');
                 RETURN NEW;
             END $$;
             CREATE TRIGGER forge AFTER INSERT ON item FOR EACH ROW EXECUTE FUNCTION forge();
             ALTER TABLE item ENABLE ALWAYS TRIGGER forge;",
        )
        .unwrap();
    nodes[0].client().batch_execute("INSERT INTO item (id, title) VALUES (1, 'pump')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));
    assert_eq!(text(&nodes[1], "SELECT title FROM item WHERE id = 1"), "pump");
    let forged = text(
        &nodes[1],
        "SELECT coalesce(string_agg(format('%s %s, %s', outcome, reason, origin), '; '), 'none') FROM converge.op_log WHERE op_id = 'virginia:900000'",
    );
    assert_eq!(forged, "rejected node_actor, claimed peer:virginia");
    assert_eq!(text(&nodes[1], "SELECT converge.value(g)::text FROM ctr WHERE id = 40"), "0");
}
