//! Coordination mixed into the random workload (SPEC section 5): requests
//! to close or reopen incidents (virginia decides; closing allocates an
//! audit number), freezes of item rows by virginia (the table's
//! authority), ops of three devices sent through `converge.apply` to any
//! node (increments, and requests too), and revocations of those devices
//! made on any node.

use crate::{Node, Rng};

/// Run on every node once the mesh is up (rows inserted on one node).
pub const SETUP: &str = "
    CREATE TABLE incident (id int PRIMARY KEY, status text DEFAULT 'open', audit_number bigint);
    SELECT converge.replicate('incident');
    CREATE TABLE dev (id int PRIMARY KEY, hits converge.gcounter);
    SELECT converge.replicate('dev');
    CREATE FUNCTION close_or_reopen(r converge.requests) RETURNS jsonb LANGUAGE sql AS $$
        SELECT CASE WHEN r.value = '\"closed\"'
                    THEN jsonb_build_object('status', 'closed', 'audit_number', converge.allocate('audit', r.target_key::text))
                    ELSE jsonb_build_object('status', r.value #>> '{}') END $$;
    SELECT converge.set_allocator('audit', 'virginia', 1000);
    SELECT converge.set_authority('incident', 'status', 'virginia', 'close_or_reopen(converge.requests)');
    SELECT converge.set_authority('incident', 'audit_number', 'virginia');
    SELECT converge.set_authority('item', NULL, 'virginia');";

/// Run on one node after SETUP everywhere.
pub const ROWS: &str = "
    INSERT INTO incident (id) SELECT g FROM generate_series(1, 40) g;
    INSERT INTO dev (id) SELECT g FROM generate_series(1, 10) g;";

struct Device {
    name: String,
    counter: i64,
    total: i64,
    revoked: bool,
}

/// The coordination part of a workload.
pub struct Coordinated {
    devices: Vec<Device>,
    pub requests: usize,
    pub freezes: usize,
    pub device_ops: usize,
    pub revocations: usize,
}

impl Default for Coordinated {
    fn default() -> Self {
        let devices = (1..=3).map(|i| Device { name: format!("dev{i}"), counter: 0, total: 0, revoked: false }).collect();
        Coordinated { devices, requests: 0, freezes: 0, device_ops: 0, revocations: 0 }
    }
}

impl Coordinated {
    /// One coordination statement on node `n`.
    pub fn op(&mut self, r: &mut Rng, n: &Node, c: &mut postgres::Client) -> String {
        let id = 1 + r.below(40);
        match r.below(20) {
            0..=7 => {
                self.requests += 1;
                let (value, key) = if r.below(3) == 0 { ("open", "reopen") } else { ("closed", "close") };
                // A few keys per incident: the same key asked on several
                // nodes is decided once.
                format!(
                    "SELECT converge.request('incident', '{{\"id\": {id}}}', 'status', '\"{value}\"', '{key} {id} {}')",
                    r.below(3)
                )
            }
            8..=10 if n.name == "virginia" => {
                self.freezes += 1;
                // A peer's delete may take the row away first (P0002).
                format!(
                    "DO $$ BEGIN PERFORM converge.freeze('item', '{{\"id\": {id}}}'); EXCEPTION WHEN no_data_found THEN NULL; END $$"
                )
            }
            11 if !self.devices.iter().all(|d| d.revoked) => {
                // Rarely: revoke a device that is still active, on this node.
                let d = self.devices.iter_mut().find(|d| !d.revoked).unwrap();
                if r.below(8) != 0 {
                    return device_op(d, r, &mut self.device_ops, c);
                }
                d.revoked = true;
                self.revocations += 1;
                format!("SELECT converge.revoke_actor('{}')", d.name)
            }
            _ => {
                let i = r.below(self.devices.len() as u64) as usize;
                device_op(&mut self.devices[i], r, &mut self.device_ops, c)
            }
        }
    }
}

/// A device's op sent through `apply` to this node (after its revocation
/// too: those ops are rejected or undone): a gcounter increment of a `dev`
/// row, or now and then a request to close or reopen an incident.
fn device_op(d: &mut Device, r: &mut Rng, count: &mut usize, _c: &mut postgres::Client) -> String {
    *count += 1;
    d.counter += 1;
    if r.below(4) == 0 {
        let id = 1 + r.below(40);
        let value = if r.below(3) == 0 { "open" } else { "closed" };
        return format!(
            "SELECT converge.apply(ROW('{0}:{1}', '{0}', 'converge.request', '{{\"table\": \"public.incident\", \"key\": {{\"id\": {id}}}}}',
                    'status', 1, 0, '{{}}',
                    convert_to('{{\"value\": \"{value}\", \"idempotency_key\": \"{0} {1}\", \"requested_at\": 0}}', 'UTF8'), NULL)::converge.op)",
            d.name, d.counter
        );
    }
    d.total += 1 + r.below(3) as i64;
    let id = 1 + r.below(10);
    format!(
        "SELECT converge.apply(ROW('{0}:{1}', '{0}', 'public.dev', '{{\"id\": {id}}}', 'hits', 1, 0, '{{}}',
                '{{\"counts\":{{\"{0}\":{2}}}}}'::converge.gcounter::bytea, NULL)::converge.op)",
        d.name, d.counter, d.total
    )
}

/// What every node must agree on after a history with coordination: the
/// ops applied, the requests and their outcomes, the allocations, and one
/// audit number per incident ever closed.
pub fn check(nodes: &[Node]) {
    let q = |n: &Node, sql: &str| -> String { n.client().query_one(sql, &[]).unwrap().get(0) };
    const APPLIED: &str = "SELECT md5(coalesce(string_agg(op_id, ',' ORDER BY op_id), '')) FROM
        (SELECT DISTINCT ON (op_id) op_id, outcome FROM converge.op_log WHERE outcome <> 'duplicate' ORDER BY op_id, seq DESC) o
        WHERE outcome = 'applied'";
    // Whole rows: converge.requests shows the same rows on every node.
    const REQUESTS: &str = "SELECT coalesce(string_agg(r::text, E'\\n' ORDER BY r.request_id), '') FROM converge.requests r";
    const ALLOCATIONS: &str = "SELECT coalesce(string_agg(format('%s %s %s', idempotency_key, value, allocated_by), E'\\n'
                                      ORDER BY idempotency_key), '') FROM converge.allocations";
    let (applied, requests, allocations) = (q(&nodes[0], APPLIED), q(&nodes[0], REQUESTS), q(&nodes[0], ALLOCATIONS));
    for n in nodes {
        assert_eq!(q(n, APPLIED), applied, "the ops applied on {} differ from {}'s", n.name, nodes[0].name);
        assert_eq!(q(n, REQUESTS), requests, "converge.requests on {} differs", n.name);
        assert_eq!(q(n, ALLOCATIONS), allocations, "converge.allocations on {} differs", n.name);
        assert_eq!(q(n, "SELECT count(*)::text FROM converge.requests WHERE status = 'pending'"), "0", "pending on {}", n.name);
        // One audit number per incident ever closed, never two; a closed
        // incident carries its own.
        let bad = q(
            n,
            "SELECT count(*)::text FROM incident i LEFT JOIN converge.allocations a ON a.idempotency_key = jsonb_build_object('id', i.id)::text
              WHERE (i.status = 'closed' AND a.value IS DISTINCT FROM i.audit_number)
                 OR (i.audit_number IS NOT NULL AND a.value IS DISTINCT FROM i.audit_number)",
        );
        assert_eq!(bad, "0", "incidents without their audit number on {}", n.name);
    }
    let distinct = q(&nodes[0], "SELECT (count(*) = count(DISTINCT value))::text FROM converge.allocations");
    assert_eq!(distinct, "true", "an audit number given twice");
}
