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

fn text(n: &Node, sql: &str) -> String {
    n.client().query_one(sql, &[]).unwrap().get(0)
}

fn incr(phone: &mut Client, id: i32, by: i64) -> Op {
    phone
        .mutate("ctr", json!({ "id": id }), "g", move |v, ctx| match v {
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
               FROM converge.op_log WHERE actor = '{actor}' AND outcome <> 'duplicate'"
        ),
    )
}

#[test]
fn a_revoked_device_stops_counting_on_every_node() {
    let root = Scratch::new("actors");
    let nodes = mesh_of_three(&root.0, base_port());
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
    incr(&mut phone, 1, 1);
    incr(&mut phone, 1, 1);
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
    incr(&mut phone, 1, 50);
    incr(&mut phone, 2, 70);
    let out = phone.push(&mut nodes[0].client()).unwrap();
    assert!(out.iter().all(|o| o.outcome == "applied"), "{out:?}");
    nodes[0].kill9();
    nodes[0].start();
    // virginia, where the phone's counter 2 is the last applied, revokes it.
    let cut: String = text(&nodes[2], "SELECT converge.revoke_actor('phone-ana')");
    assert!(cut.starts_with("virginia:"), "{cut}");
    for n in &nodes {
        if n.name != "virginia" {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while text(n, "SELECT count(*)::text FROM converge.op_log WHERE actor = 'phone-ana' AND outcome = 'applied'") != "4" {
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
    let expect = "phone-ana:1 applied -, phone-ana:2 applied -, phone-ana:3 rejected revoked, phone-ana:4 rejected revoked";
    for n in &nodes {
        assert_eq!(outcomes(n, "phone-ana").replace(", phone-ana:3 rejected unsigned, phone-ana:3 rejected bad_signature", ""), expect, "{}", n.name);
        assert_eq!(text(n, "SELECT converge.value(g)::text FROM ctr WHERE id = 1"), "2", "{}", n.name);
        assert_eq!(text(n, "SELECT coalesce(converge.value(g), 0)::text FROM ctr WHERE id = 2"), "0", "{}", n.name);
        assert_eq!(text(n, "SELECT revoked_after::text FROM converge.actors WHERE actor = 'phone-ana'"), "2", "{}", n.name);
    }
    assert_identical(&nodes, &["ctr"]);
    // Its next push is refused wherever it lands.
    incr(&mut phone, 1, 5);
    let out = phone.push(&mut nodes[1].client()).unwrap();
    assert_eq!(out.last().and_then(|o| o.reason.clone()).as_deref(), Some("revoked"), "{out:?}");
}
