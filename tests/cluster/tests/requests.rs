//! Requests and unique allocation on real nodes (SPEC section 5): closing
//! an incident creates exactly one audit number, however many regions ask
//! at once, through a partition and a kill -9 of the authority; a safety
//! warning a tablet's node may not remove is removed by the authority's
//! decision on its request.
//!
//! Needs the extension installed (`cargo pgrx install`); `bash .ci/test`
//! runs it. Ports: CONVERGE_CLUSTER_PORT + 110..115.

use converge_cluster_tests::workload::*;
use converge_cluster_tests::*;
use std::time::Duration;

fn base_port() -> u16 {
    std::env::var("CONVERGE_CLUSTER_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5710) + 110
}

const SETUP: &str = "
    CREATE TABLE incident (id int PRIMARY KEY, title text, status text DEFAULT 'open', audit_number bigint);
    SELECT converge.replicate('incident');
    -- Closing allocates the incident's audit number (one per incident,
    -- whoever asks and however often); anything else is refused. Each
    -- call is counted (a table of this node only). converge runs it with
    -- its own search_path: the function names the one it needs.
    CREATE TABLE decide_calls (request_id text);
    CREATE FUNCTION close_incident(r converge.requests) RETURNS jsonb LANGUAGE plpgsql SET search_path = public AS $$
    BEGIN
        INSERT INTO decide_calls VALUES (r.request_id);
        IF r.value IS DISTINCT FROM '\"closed\"' THEN
            RETURN NULL;
        END IF;
        RETURN jsonb_build_object('status', 'closed', 'audit_number', converge.allocate('audit', r.target_key::text));
    END $$;
    SELECT converge.set_allocator('audit', 'virginia', 1000);
    SELECT converge.set_authority('incident', 'status', 'virginia', 'close_incident(converge.requests)');
    SELECT converge.set_authority('incident', 'audit_number', 'virginia');";

/// Every request as a line, in request_id order.
const REQUESTS: &str = "SELECT coalesce(string_agg(format('%s %s %s %s %s %s %s %s', request_id, target_key, target_column, value,
                                 idempotency_key, requested_by, status, coalesce(decision::text, reason)), E'\\n' ORDER BY request_id), '')
                          FROM converge.requests";
/// The same, whole rows (every column): converge.requests shows the same
/// rows on every node once synced.
const WHOLE_REQUESTS: &str = "SELECT coalesce(string_agg(r::text, E'\\n' ORDER BY r.request_id), '') FROM converge.requests r";
const ALLOCATIONS: &str = "SELECT coalesce(string_agg(format('%s %s %s %s', name, idempotency_key, value, allocated_by), E'\\n'
                                 ORDER BY name, idempotency_key), '')
                             FROM converge.allocations";

#[test]
fn two_regions_closing_one_incident_while_cut_off_get_one_audit_number() {
    let root = Scratch::new("requests");
    let nodes = mesh_of_three(&root.0, base_port());
    for n in &nodes {
        n.client().batch_execute(SETUP).unwrap();
    }
    nodes[0].client().batch_execute("INSERT INTO incident (id, title) VALUES (1, 'pump stopped'), (2, 'valve')").unwrap();
    converge_all(&nodes, Duration::from_secs(60));

    // Outside virginia the status is not written locally, but asked for.
    let err = nodes[0].client().batch_execute("UPDATE incident SET status = 'closed' WHERE id = 1").unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err:?}");
    assert!(err.as_db_error().and_then(|e| e.hint()).is_some_and(|h| h.contains("converge.request")), "{err:?}");

    // All three cut off from each other; madrid and dublin both ask to
    // close incident 1 with the same idempotency key, and dublin asks
    // again (a retry).
    pause(&nodes, 2, 0, true);
    pause(&nodes, 2, 1, true);
    pause(&nodes, 0, 1, true);
    let ask = "SELECT converge.request('incident', '{\"id\": 1}', 'status', '\"closed\"', 'close incident 1')";
    let from_madrid = text(&nodes[0], ask);
    let from_dublin = text(&nodes[1], ask);
    assert_ne!(from_madrid, from_dublin, "the nodes had not seen each other's request");
    assert_eq!(text(&nodes[1], ask), from_dublin, "a retry returns the known request");
    // dublin also asks to reopen incident 2, which the decide function refuses.
    let reopen = text(&nodes[1], "SELECT converge.request('incident', '{\"id\": 2}', 'status', '\"reopened\"')");
    // What users see meanwhile: pending, and the row unchanged.
    for n in &nodes[..2] {
        assert_eq!(text(n, "SELECT string_agg(DISTINCT status, ',') FROM converge.requests"), "pending", "{}", n.name);
        assert_eq!(text(n, "SELECT status FROM incident WHERE id = 1"), "open", "{}", n.name);
    }

    // madrid's request reaches virginia first: decided there, once.
    pause(&nodes, 2, 0, false);
    wait_for(&nodes[2], &format!("SELECT status FROM converge.requests WHERE request_id = '{from_madrid}'"), "granted", "madrid's request not decided");
    // virginia crashes right after deciding, and comes back.
    nodes[2].kill9();
    nodes[2].start();
    assert_eq!(text(&nodes[2], "SELECT converge.allocate('audit', '{\"id\": 1}')::text"), "1000", "the same key, the same number after a crash");
    pause(&nodes, 2, 1, false);
    pause(&nodes, 0, 1, false);
    converge_all(&nodes, Duration::from_secs(60));
    for n in &nodes {
        wait_for(n, "SELECT count(*)::text FROM converge.requests WHERE status = 'pending'", "0", "requests left pending");
    }
    converge_all(&nodes, Duration::from_secs(60));

    assert_identical(&nodes, &["incident"]);
    let requests = text(&nodes[0], REQUESTS);
    let allocations = text(&nodes[0], ALLOCATIONS);
    for n in &nodes {
        assert_eq!(text(n, REQUESTS), requests, "converge.requests differs on {}", n.name);
        assert_eq!(text(n, WHOLE_REQUESTS), text(&nodes[0], WHOLE_REQUESTS), "converge.requests differs on {}", n.name);
        assert_eq!(text(n, ALLOCATIONS), allocations, "converge.allocations differs on {}", n.name);
        assert_eq!(text(n, "SELECT format('%s %s', status, audit_number) FROM incident WHERE id = 1"), "closed 1000", "{}", n.name);
        assert_eq!(text(n, "SELECT status FROM incident WHERE id = 2"), "open", "{}", n.name);
    }
    // One audit number; both requests granted with the one decision;
    // the refusal says why.
    assert_eq!(allocations, "audit {\"id\": 1} 1000 virginia");
    let decision = "{\"status\": \"closed\", \"audit_number\": 1000}";
    for id in [&from_madrid, &from_dublin] {
        let line = requests.lines().find(|l| l.starts_with(&format!("{id} "))).unwrap();
        assert!(line.ends_with(&format!("granted {decision}")), "{line}");
    }
    let line = requests.lines().find(|l| l.starts_with(&format!("{reopen} "))).unwrap();
    assert!(line.ends_with("refused refused by the decide function"), "{line}");
    // virginia decided twice (madrid's close, dublin's reopen): dublin's
    // close got madrid's outcome without a call, and incident 1 was
    // written once.
    let calls = text(&nodes[2], "SELECT string_agg(request_id, ' ' ORDER BY request_id) FROM decide_calls");
    let mut want = vec![from_madrid.clone(), reopen.clone()];
    want.sort();
    assert_eq!(calls, want.join(" "), "decide function calls");
    let writes = text(&nodes[2], "SELECT count(*)::text FROM converge.op_log WHERE actor = 'virginia' AND target_table = 'public.incident'");
    assert_eq!(writes, "1", "virginia's writes of incident rows");

    // A row another session holds on virginia holds up only its own
    // requests: the pass skips it and decides the others.
    let mut holder = nodes[2].client();
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("SELECT 1 FROM incident WHERE id = 1 FOR UPDATE").unwrap();
    let held = text(&nodes[0], "SELECT converge.request('incident', '{\"id\": 1}', 'status', '\"reopened\"')");
    let free = text(&nodes[0], "SELECT converge.request('incident', '{\"id\": 2}', 'status', '\"reopened\"')");
    let status = |id: &str| format!("SELECT status FROM converge.requests WHERE request_id = '{id}'");
    wait_for(&nodes[2], &status(&free), "refused", "the request for a row nobody holds");
    assert_eq!(text(&nodes[2], &status(&held)), "pending");
    tx.commit().unwrap();
    wait_for(&nodes[2], &status(&held), "refused", "the request once its row is free");
}

/// A safety warning on a `removes_only` column: a tablet's node asks for
/// its removal while virginia, which decides removals (through a decide
/// function that removes the named element from the value it holds), is
/// cut off; a tag added meanwhile elsewhere stays; once virginia decides,
/// the warning is gone on every node.
#[test]
fn a_warning_removal_asked_for_is_made_by_the_authority() {
    let root = Scratch::new("removal");
    let nodes = mesh_of_three(&root.0, base_port() + 3);
    // virginia removes the named element from the value it holds.
    for n in &nodes {
        n.client()
            .batch_execute(
                "CREATE FUNCTION remove_tag(r converge.requests) RETURNS jsonb LANGUAGE sql AS $$
                     SELECT jsonb_build_object('tags', converge.remove(i.tags, r.value #>> '{}')::text)
                       FROM public.item i WHERE i.id = (r.target_key ->> 'id')::int $$;
                 SELECT converge.set_authority('item', 'tags', 'virginia', 'remove_tag(converge.requests)', removes_only => true);",
            )
            .unwrap();
    }
    nodes[0].client().batch_execute("INSERT INTO item (id, title, tags) VALUES (1, 'sharps bin', converge.add(NULL::converge.orset, 'warning'))").unwrap();
    converge_all(&nodes, Duration::from_secs(60));

    pause(&nodes, 2, 0, true);
    pause(&nodes, 2, 1, true);
    // madrid may not remove it itself; it asks.
    let err = nodes[0].client().batch_execute("UPDATE item SET tags = converge.remove(tags, 'warning') WHERE id = 1").unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err:?}");
    let asked = text(&nodes[0], "SELECT converge.request('item', '{\"id\": 1}', 'tags', '\"warning\"')");
    nodes[1].client().batch_execute("UPDATE item SET tags = converge.add(tags, 'sharps') WHERE id = 1").unwrap();
    // Until virginia decides, the warning stays (pending).
    assert_eq!(text(&nodes[0], "SELECT ('warning' = ANY (converge.elements(tags)))::text FROM item WHERE id = 1"), "true");
    assert_eq!(text(&nodes[0], &format!("SELECT status FROM converge.requests WHERE request_id = '{asked}'")), "pending");

    pause(&nodes, 2, 0, false);
    pause(&nodes, 2, 1, false);
    for n in &nodes {
        wait_for(n, &format!("SELECT status FROM converge.requests WHERE request_id = '{asked}'"), "granted", "the removal not decided");
    }
    converge_all(&nodes, Duration::from_secs(60));
    assert_identical(&nodes, &["item"]);
    for n in &nodes {
        assert_eq!(text(n, "SELECT array_to_string(converge.elements(tags), ',') FROM item WHERE id = 1"), "sharps", "{}", n.name);
        // virginia's removal applied everywhere (not rejected as not_authority).
        let rejected = text(n, "SELECT count(*)::text FROM converge.op_log WHERE outcome = 'rejected'");
        assert_eq!(rejected, "0", "{}", n.name);
    }
}
