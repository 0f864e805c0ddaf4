-- Actors (SPEC section 5): registered device keys, signed ops, revocation,
-- on a node of its own (faro), with an application role owning its table.
-- Signatures below were made with the seed 07 x 32 (phone7's key) by
-- `cargo run -p converge-client --example sign_bytes -- <seed> <bytes>`
-- over converge.op_signing_bytes of the op: ed25519 signatures are
-- deterministic, so these bytes are the contract of the signed form.
CREATE DATABASE converge_regress_faro;
\c converge_regress_faro
CREATE EXTENSION converge;
SET search_path = public, converge;
-- Clients' writes below are timestamped far ahead so that they win over
-- this node's writes; the bound on clients' clocks (ops.sql) is lifted.
SET converge.max_clock_skew = -1;
SELECT set_node('faro') IS NOT NULL AS faro_set;
CREATE ROLE cv_field;
GRANT CREATE ON SCHEMA public TO cv_field;
SET ROLE cv_field;
CREATE TABLE reading (id int PRIMARY KEY, note text, hits converge.gcounter);
SELECT converge.replicate('reading');
INSERT INTO reading (id, note) VALUES (1, 'meter A');
-- Registering is administration: not for an application role.
SELECT converge.register_actor('phone7', '\xea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c');
SELECT converge.revoke_actor('phone8');
-- Everyone may read the registry (public keys are not secrets).
SELECT count(*) AS registered FROM converge.actors;
RESET ROLE;

-- Bad keys and names: a key is 32 bytes and a valid, usable curve point;
-- a node is trusted through its connection and is never registered.
SELECT converge.register_actor('phone7', '\x0102');
SELECT converge.register_actor('phone7', '\x0100000000000000000000000000000000000000000000000000000000000000');
SELECT converge.register_actor('faro', '\xea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c');
SELECT converge.register_actor('no good', '\xea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c');
-- A NULL key is an error, not a registration that did nothing (NULL is
-- its answer when the actor already has the key).
SELECT converge.register_actor('phone7', NULL);
SELECT converge.revoke_actor('phone8', -1);
SELECT converge.revoke_actor(NULL);

-- phone7 registers; the registration is an op of this node (it replicates).
SELECT converge.register_actor('phone7', '\xea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c') AS op_id;
SELECT actor, encode(public_key, 'hex') AS public_key, revoked_after FROM converge.actors;
SELECT op_id, actor, target_table, target_key, target_column, outcome FROM converge.op_log WHERE target_table = 'converge.actor';
-- The same key again changes nothing; another key is refused (a key is the
-- device's identity: a new key is a new actor).
SELECT converge.register_actor('phone7', '\xea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c') IS NULL AS unchanged;
SELECT converge.register_actor('phone7', '\x1398f62c6d1a457c51ba6a4b5f3dbd2f69fca93216218dc8997e416bd17d93ca');

-- What is signed: a fixed domain tag and the op's binary form without the
-- signature (so the same op signed or not has the same signing bytes).
WITH o(op) AS (SELECT ROW('phone7:1', 'phone7', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}',
                          '{"counts":{"phone7":2}}'::converge.gcounter::bytea, NULL)::converge.op)
SELECT convert_from(substr(converge.op_signing_bytes(op), 1, 24), 'UTF8') AS domain,
       length(converge.op_signing_bytes(op)) AS bytes,
       converge.op_signing_bytes(op) = converge.op_signing_bytes(ROW((op).op_id, (op).actor, (op).target_table,
           (op).target_key, (op).target_column, (op).schema_version, (op).epoch, (op).deps, (op).delta, '\x00')::converge.op)
           AS signature_not_covered,
       converge.op_signing_bytes(op) = converge.op_signing_bytes(ROW((op).op_id, (op).actor, 'reading',
           (op).target_key, (op).target_column, (op).schema_version, (op).epoch, (op).deps, (op).delta, NULL)::converge.op)
           AS bare_table_name_is_another_op
  FROM o;
SELECT converge.op_signing_bytes(ROW('phone7:1', 'phone7', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}', '\x01', NULL)::converge.op);

-- phone7's ops: unsigned, signed by another op's signature, and signed.
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone7:1', 'phone7', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}',
        '{"counts":{"phone7":2}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone7:1', 'phone7', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}',
        '{"counts":{"phone7":2}}'::converge.gcounter::bytea,
        '\xcae6ff18528d3703c471c0407528263ccd4276d7efe584f28d496a0d92fd3bffca68d8145dee0a19fcab9233cf5b40abed1d0052cd6bd343c959bf8e433fa701')::converge.op,
    ROW('phone7:1', 'phone7', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}',
        '{"counts":{"phone7":9}}'::converge.gcounter::bytea,
        '\xb30bee15e7e97267b8823f43c07912ff905ab2ccf7e5024d581232bf1f4735f71743419e078ec7adb3b52ccc0ab3ec5ec4e6329b94307c33ed1f62509c02f703')::converge.op,
    ROW('phone7:1', 'phone7', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}',
        '{"counts":{"phone7":2}}'::converge.gcounter::bytea,
        '\xb30bee15e7e97267b8823f43c07912ff905ab2ccf7e5024d581232bf1f4735f71743419e078ec7adb3b52ccc0ab3ec5ec4e6329b94307c33ed1f62509c02f703')::converge.op,
    ROW('phone7:2', 'phone7', 'public.reading', '{"id":1}', 'hits', 1, 0, '{phone7:1}',
        '{"counts":{"phone7":5}}'::converge.gcounter::bytea,
        '\xcae6ff18528d3703c471c0407528263ccd4276d7efe584f28d496a0d92fd3bffca68d8145dee0a19fcab9233cf5b40abed1d0052cd6bd343c959bf8e433fa701')::converge.op]);
SELECT id, note, converge.value(hits) AS hits FROM reading ORDER BY id;
-- Its signature is checked before its delta is decoded: an unsigned op with
-- bytes that are no gcounter is unsigned, not invalid_delta.
SELECT op_id, outcome, reason FROM converge.apply(ROW('phone7:3', 'phone7', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}',
    '\x01020304', NULL)::converge.op);

-- phone8 has no key: its ops need no signature. It counts, changes a
-- note (with a clock far ahead, so it wins) and creates a row.
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone8:1', 'phone8', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}',
        '{"counts":{"phone8":1}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone8:2', 'phone8', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}',
        '{"counts":{"phone8":40}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone8:3', 'phone8', 'public.reading', '{"id":1}', '', 1, 0, '{}',
        '{"entries":{"note":[[9999999999999,0,"phone8"],{"put":"tampered"}]}}'::converge.lwwmap::bytea, NULL)::converge.op,
    ROW('phone8:4', 'phone8', 'public.reading', '{"id":9}', '', 1, 0, '{}',
        '{"entries":{"$live":[[9999999999999,0,"phone8"],{"put":true}],"note":[[9999999999999,0,"phone8"],{"put":"ghost"}]}}'::converge.lwwmap::bytea,
        NULL)::converge.op,
    ROW('phone8:5', 'phone8', 'public.reading', '{"id":9}', 'hits', 1, 0, '{}',
        '{"counts":{"phone8":41}}'::converge.gcounter::bytea, NULL)::converge.op]);
-- A row this node made after phone8's row, before the revocation.
UPDATE reading SET hits = converge.incr(hits, 3) WHERE id = 9;
SELECT id, note, converge.value(hits) AS hits FROM reading ORDER BY id;

-- phone8 was stolen after its first op: revoke everything after counter 1.
-- Its ops 2-5 are taken out: row 1 counts phone8's first op only and has
-- its note back; row 9 (made by phone8) keeps only this node's increment
-- (a CRDT op of a row makes the row, as on a node that never saw phone8).
SELECT converge.revoke_actor('phone8', 1) AS op_id;
SELECT actor, revoked_after FROM converge.actors ORDER BY actor;
SELECT op_id, outcome, reason FROM converge.op_log WHERE actor = 'phone8' ORDER BY seq;
SELECT id, note, converge.value(hits) AS hits FROM reading ORDER BY id;
-- Later ops of phone8 are rejected on arrival; earlier ones still apply.
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone8:6', 'phone8', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}',
        '{"counts":{"phone8":50}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone8:1', 'phone8', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}',
        '{"counts":{"phone8":1}}'::converge.gcounter::bytea, NULL)::converge.op]);
-- A second revocation with a later cut-off changes nothing: the least holds.
SELECT converge.revoke_actor('phone8', 3) IS NOT NULL AS recorded;
SELECT actor, revoked_after FROM converge.actors WHERE actor = 'phone8';
-- Without a cut-off, revoking takes the highest counter applied here.
SELECT converge.revoke_actor('phone7') IS NOT NULL AS recorded;
SELECT actor, revoked_after FROM converge.actors WHERE actor = 'phone7';

-- Only nodes change the registry, through replication: a client's op on it
-- is refused, also one under this node's name.
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone9:1', 'phone9', 'converge.actor', '{"actor":"phone9"}', 'revoked_after', 1, 0, '{}',
        '\x0000000000000000', NULL)::converge.op,
    ROW('faro:99', 'faro', 'converge.actor', '{"actor":"phone8"}', 'revoked_after', 1, 0, '{}',
        '\x0000000000000000', NULL)::converge.op]);
SELECT outcome, reason, count(*) FROM converge.op_log GROUP BY 1, 2 ORDER BY 1, 2;

-- A key registered after an actor's first ops: those stay valid (they
-- predate the key, as this node had them without a gap: signed_after),
-- every later op must be signed.
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone6:1', 'phone6', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}',
        '{"counts":{"phone6":1}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone6:2', 'phone6', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}',
        '{"counts":{"phone6":2}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT converge.register_actor('phone6', '\x1398f62c6d1a457c51ba6a4b5f3dbd2f69fca93216218dc8997e416bd17d93ca') IS NOT NULL AS registered;
SELECT actor, signed_after, revoked_after FROM converge.actors WHERE actor = 'phone6';
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone6:3', 'phone6', 'public.reading', '{"id":1}', 'hits', 1, 0, '{}',
        '{"counts":{"phone6":3}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT op_id, outcome FROM converge.op_log WHERE actor = 'phone6' ORDER BY seq;

-- Rows are rebuilt in place: a CRDT column declared NOT NULL never goes
-- through NULL (phone5's second increment is taken out, its first stays).
SET ROLE cv_field;
CREATE TABLE meter (id int PRIMARY KEY, n converge.gcounter NOT NULL DEFAULT '{}');
SELECT converge.replicate('meter');
INSERT INTO meter (id) VALUES (1);
RESET ROLE;
SELECT op_id, outcome FROM converge.apply_batch(ARRAY[
    ROW('phone5:1', 'phone5', 'public.meter', '{"id":1}', 'n', 1, 0, '{}',
        '{"counts":{"phone5":4}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone5:2', 'phone5', 'public.meter', '{"id":1}', 'n', 1, 0, '{}',
        '{"counts":{"phone5":9}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT converge.revoke_actor('phone5', 1) IS NOT NULL AS revoked;
SELECT id, n FROM meter;

-- Compacted ops cannot be taken out: a cut-off behind this node's horizon
-- is refused (one at or after it is taken).
SELECT ops_removed > 0 AS compacted FROM converge.compact();
SELECT converge.revoke_actor('phone6', 1);
SELECT converge.revoke_actor('phone6', 2) IS NOT NULL AS revoked;
SELECT id, note, converge.value(hits) AS hits FROM reading ORDER BY id;

\c regression
DROP DATABASE converge_regress_faro;
DROP ROLE cv_field;
