-- Actors (SPEC section 5): devices with registered ed25519 keys, and
-- revocation. src/actors.rs explains the rules; docs/coordination.md the use.

-- The registry, the same on every node: it changes only through ops of
-- nodes (register_actor, revoke_actor), which replicate like any op.
CREATE TABLE converge.actor (
    actor         text PRIMARY KEY,
    key_state     bytea,      -- lwwreg (binary) of {"key": hex, "after": n}: concurrent registrations settle on one
    public_key    bytea,      -- the key key_state holds (32 bytes)
    signed_after  bigint,     -- ops with a higher counter must be signed with it (earlier ones predate the key)
    revoked_after bigint,     -- ops with a higher counter are rejected ('revoked'); the least revocation holds
    changed_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE converge.actor IS 'Registered actors (devices): the ed25519 key their ops must be signed with, and the counter after which they are revoked. Changed by converge.register_actor and converge.revoke_actor on any node; the same on every node once synced.';
SELECT pg_catalog.pg_extension_config_dump('converge.actor', '');
-- Public keys and revocations are not secrets; writing is converge's own.
GRANT SELECT ON converge.actor TO PUBLIC;

CREATE VIEW converge.actors AS
    SELECT a.actor, a.public_key, a.signed_after, a.revoked_after, a.changed_at FROM converge.actor a;
COMMENT ON VIEW converge.actors IS 'Registered actors: the key each one''s ops with counters above signed_after must be signed with, and the counter after which it is revoked (NULL: not revoked).';
GRANT SELECT ON converge.actors TO PUBLIC;

CREATE FUNCTION converge.op_signing_bytes(op converge.op) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT converge.op_signing_bytes_of(converge.op_encode(op)) $$;
COMMENT ON FUNCTION converge.op_signing_bytes(converge.op) IS 'The bytes an actor signs with its ed25519 key: a fixed domain tag and the op''s binary form without its signature. Sign the op as nodes log it: target_table schema-qualified, target_key with integer and boolean key columns as JSON numbers and booleans.';
COMMENT ON FUNCTION converge.op_signing_bytes_of(bytea) IS 'Internal: the body of converge.op_signing_bytes (from the op''s binary form).';

COMMENT ON FUNCTION converge.register_actor(text, bytea) IS 'Register an actor''s ed25519 public key (32 bytes): on every node, its ops after those this node has applied without a gap (signed_after) must carry a signature by that key (else rejected with unsigned or bad_signature), also those applied elsewhere before the registration arrived. Replicates; returns the op''s id (NULL when the actor already has this key).';
COMMENT ON FUNCTION converge.revoke_actor(text, bigint) IS 'Revoke an actor: its ops with counters above after (default: the highest applied here) are rejected with revoked on every node, and those already applied are taken out of their rows (rebuilt from base and remaining ops, back to the compaction horizon). Replicates; returns the op''s id.';
REVOKE ALL ON FUNCTION converge.register_actor(text, bytea), converge.revoke_actor(text, bigint) FROM PUBLIC;

-- Repairs (SPEC section 5, src/repair.rs): which op each repair excluded.
-- Written only by converge when a repair op applies (here or from a peer).
CREATE TABLE converge.superseded (
    op_id     text PRIMARY KEY,
    repair_id text NOT NULL
);
COMMENT ON TABLE converge.superseded IS 'Ops excluded by a repair (converge.repair): outcome superseded wherever they are or arrive; repair_id is the repair op.';
SELECT pg_catalog.pg_extension_config_dump('converge.superseded', '');
GRANT SELECT ON converge.superseded TO PUBLIC;

-- Ops kept aside here (rejected or quarantined), one row per op_id: the
-- ones converge.replay takes (here, after converge.superseded, which it reads).
CREATE OR REPLACE VIEW converge.quarantine WITH (security_invoker = true) AS
    SELECT DISTINCT ON (l.op_id) l.* FROM converge.op_log l WHERE l.outcome IN ('rejected', 'quarantined')
       -- (a client's refused void is no op to replay: the refused op it
       -- named is; a peer's is, as the gap it leaves here)
       AND NOT (coalesce(l.target_table = 'converge.void', false) AND l.origin NOT LIKE 'peer:%')
       -- (a void hides its maker's op refused here, not a peer's delivery:
       -- that op was applied elsewhere, and takes the void's place here)
       AND NOT EXISTS (SELECT 1 FROM converge.op_log a WHERE a.actor = l.actor AND a.counter = l.counter
                          AND a.outcome = 'applied' AND (a.target_table <> 'converge.void' OR l.origin NOT LIKE 'peer:%'))
       -- (an op a repair superseded is no longer kept aside: a translated
       -- old_schema op, for one)
       AND NOT EXISTS (SELECT 1 FROM converge.superseded s WHERE s.op_id = l.op_id)
     -- (a peer's delivery first, as replay takes it: a client sending the
     -- same op id later must not hide where the op came from; the op before
     -- a void of it)
     ORDER BY l.op_id, l.origin LIKE 'peer:%' DESC, coalesce(l.target_table = 'converge.void', false), l.seq DESC;
COMMENT ON VIEW converge.quarantine IS 'Rejected and quarantined ops not applied since (nor voided, nor superseded by a repair), one row per op_id (its latest outcome, from a peer''s delivery of it if there is one: the row converge.replay(op_id) applies again; the log keeps every one). Voids refused from a client are not listed.';

-- Ops kept out for good that hold their actor's frontier back: an actor's
-- frontier stops below its first counter not applied, and compaction folds
-- its ops only up to the stable frontier, so every later op of that actor
-- stays in the log (on every node) until the op is replayed once its cause
-- is fixed, or given up with converge.repair. new_schema and new_epoch ops
-- are not listed: they are applied by themselves once their version or
-- freeze is set here.
CREATE VIEW converge.frontier_gaps WITH (security_invoker = true) AS
    SELECT q.actor, q.counter, q.op_id, q.outcome, q.reason, q.origin, q.received_at,
           (SELECT count(*) FROM converge.op_log a
             WHERE a.actor = q.actor AND a.counter > q.counter AND a.outcome = 'applied') AS ops_held
      FROM converge.quarantine q  -- (which leaves out ops a repair superseded)
     WHERE NOT (q.outcome = 'quarantined' AND q.reason IN ('new_schema', 'new_epoch'))
       -- (ops sent under this node's own name are refused node_actor: its
       -- counter is its log's, which they do not hold back)
       AND q.actor IS DISTINCT FROM (SELECT n.name FROM converge.node_identity n)
       AND q.counter > coalesce((SELECT f.contiguous FROM converge.actor_frontier f WHERE f.actor = q.actor), 0);
COMMENT ON VIEW converge.frontier_gaps IS 'Rejected and quarantined ops (not new_schema or new_epoch, which apply by themselves) above their actor''s frontier, neither applied since nor superseded: each holds its actor''s frontier, and the compaction of its later ops (ops_held here), back until it is replayed (converge.replay) or given up (converge.repair).';
GRANT SELECT ON converge.frontier_gaps TO PUBLIC;

COMMENT ON FUNCTION converge.repair(text[], text) IS 'Exclude ops on every node: they get the outcome superseded, the rows they touched are rebuilt without them (back to the compaction horizon), and ops named here that arrive later are superseded on arrival. An op of this node that replicates; it stays in converge.op_log with its reason. Returns its op_id.';
REVOKE ALL ON FUNCTION converge.repair(text[], text) FROM PUBLIC;
