-- Coordination boundaries (SPEC section 5): authorities, on a node of its
-- own (dublin), with an application role that owns its table.
CREATE DATABASE converge_regress_dublin;
\c converge_regress_dublin
CREATE EXTENSION converge;
SET search_path = public, converge;
SELECT set_node('dublin') IS NOT NULL AS dublin_set;
CREATE ROLE cv_clinic;
GRANT CREATE ON SCHEMA public TO cv_clinic;
SET ROLE cv_clinic;
CREATE TABLE incident (id int PRIMARY KEY, title text, status text DEFAULT 'open', audit_number bigint,
                       tags converge.orset, visits converge.gcounter);
SELECT converge.replicate('incident');
INSERT INTO incident (id, title) VALUES (1, 'pump stopped');

-- status and tags are decided by virginia; the table's authority too.
SELECT converge.set_authority('incident', 'status', 'virginia');
SELECT converge.set_authority('incident', 'tags', 'virginia');
SELECT converge.set_authority('incident', NULL, 'virginia');
SELECT * FROM converge.authorities ORDER BY target_column NULLS FIRST;

-- Here (dublin) a local change of an authority column fails, naming the
-- authority; other columns change as before.
UPDATE incident SET status = 'closed' WHERE id = 1;
UPDATE incident SET tags = converge.add(tags, 'warning') WHERE id = 1;
UPDATE incident SET title = 'pump stopped (basement)', visits = converge.incr(visits, 1) WHERE id = 1;
-- Rows can be created anywhere: an insert may leave an authority column
-- NULL or at its constant default, not set it.
INSERT INTO incident (id, title) VALUES (2, 'valve');
INSERT INTO incident (id, title, status) VALUES (3, 'filter', 'open');
INSERT INTO incident (id, title, status) VALUES (4, 'hose', 'closed');
SELECT id, title, status, tags, converge.value(visits) AS visits FROM incident ORDER BY id;
RESET ROLE;

-- Ops of other actors: phone1 may write title, not status or tags; its
-- insert may carry status's default. virginia is a peer node here, so its
-- ops come through replication, not apply (node_actor): the authority's
-- accepted ops are shown with an authority that is a client (phone2).
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone1:1', 'phone1', 'public.incident', '{"id":1}', '', 1, 0, '{}',
        converge.put(NULL::converge.lwwmap, 'status', '"closed"')::bytea, NULL)::converge.op,
    ROW('phone1:2', 'phone1', 'public.incident', '{"id":1}', 'tags', 1, 0, '{}',
        converge.add(NULL::converge.orset, 'stale')::bytea, NULL)::converge.op,
    ROW('phone1:3', 'phone1', 'public.incident', '{"id":1}', '', 1, 0, '{}',
        converge.put(NULL::converge.lwwmap, 'title', '"pump (phone)"')::bytea, NULL)::converge.op,
    ROW('phone1:4', 'phone1', 'public.incident', '{"id":5}', '', 1, 0, '{}',
        converge.put(converge.put(converge.put(NULL::converge.lwwmap, '$live', 'true'), 'title', '"seal"'),
                     'status', '"open"')::bytea, NULL)::converge.op,
    ROW('phone1:5', 'phone1', 'public.incident', '{"id":6}', '', 1, 0, '{}',
        converge.put(converge.put(NULL::converge.lwwmap, '$live', 'true'), 'status', '"closed"')::bytea, NULL)::converge.op]);
SELECT id, title, status FROM incident ORDER BY id;

-- A second set_authority replaces the first: phone2 now decides status.
SET ROLE cv_clinic;
SELECT converge.set_authority('incident', 'status', 'phone2');
RESET ROLE;
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone2:1', 'phone2', 'public.incident', '{"id":1}', '', 1, 0, '{}',
        converge.put(NULL::converge.lwwmap, 'status', '"closed"')::bytea, NULL)::converge.op,
    ROW('phone1:6', 'phone1', 'public.incident', '{"id":2}', '', 1, 0, '{}',
        converge.put(NULL::converge.lwwmap, 'status', '"closed"')::bytea, NULL)::converge.op]);
SELECT id, status FROM incident WHERE id IN (1, 2) ORDER BY id;
-- The node that is the authority changes its column locally.
SET ROLE cv_clinic;
SELECT converge.set_authority('incident', 'status', 'dublin');
UPDATE incident SET status = 'closed' WHERE id = 2;
SELECT id, status FROM incident WHERE id = 2;
SELECT target_column, node FROM converge.authorities ORDER BY target_column NULLS FIRST;

-- Bad calls.
\set VERBOSITY sqlstate
SELECT converge.set_authority('incident', 'nope', 'virginia');
SELECT converge.set_authority('incident', 'id', 'virginia');
SELECT converge.set_authority('incident', 'status', 'bad name');
SELECT converge.set_authority('incident', 'status', NULL);
SELECT converge.set_authority('incident', 'tags', 'virginia', removes_only => true);
CREATE TABLE plain (id int PRIMARY KEY, status text);
SELECT converge.set_authority('plain', 'status', 'virginia');
RESET ROLE;
CREATE ROLE cv_stranger;
SET ROLE cv_stranger;
SELECT converge.set_authority('incident', 'title', 'virginia');
\set VERBOSITY default
RESET ROLE;
SELECT converge.set_authority('incident', 'nope', 'virginia');
SELECT converge.set_authority('incident', 'id', 'virginia');


-- Unique allocation: one number per idempotency key, forever; served only
-- by its node.
RESET ROLE;
SELECT converge.set_allocator('audit', 'dublin', 1000);
SELECT converge.set_allocator('remote', 'virginia');
GRANT EXECUTE ON FUNCTION converge.set_allocator(text, text, bigint) TO cv_clinic;
SET ROLE cv_clinic;
SELECT converge.allocate('audit', 'incident-7') AS first, converge.allocate('audit', 'incident-7') AS again,
       converge.allocate('audit', 'incident-8') AS next;
SELECT name, idempotency_key, value, allocated_by FROM converge.allocations ORDER BY value;
\set VERBOSITY sqlstate
SELECT converge.allocate('remote', 'x');
SELECT converge.allocate('nobody', 'x');
SELECT converge.allocate('audit', NULL);
\set VERBOSITY default
SELECT converge.allocate('remote', 'x');

-- Requests. status is decided here (dublin) by a decide function that
-- closes an incident with one audit number, and refuses to reopen one.
CREATE FUNCTION close_incident(r converge.requests) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF r.value = '"closed"' THEN
        RETURN jsonb_build_object('status', 'closed',
                                  'audit_number', converge.allocate('audit', 'incident-' || (r.target_key ->> 'id')));
    ELSIF r.value = '"open"' THEN
        RETURN NULL;                                  -- refused
    END IF;
    RAISE EXCEPTION 'status % is not one this clinic uses', r.value;
END $$;
SELECT converge.set_authority('incident', 'status', 'dublin', 'close_incident(converge.requests)');
-- Asked twice with one idempotency key: one request, decided once at commit.
BEGIN;
SELECT converge.request('incident', '{"id":1}', 'status', '"closed"', 'close-1') AS req \gset
SELECT converge.request('incident', '{"id":1}', 'status', '"closed"', 'close-1') = :'req' AS same_request;
SELECT status FROM converge.requests WHERE request_id = :'req';   -- pending until commit
COMMIT;
SELECT status, decision, reason FROM converge.requests WHERE request_id = :'req';
SELECT id, status, audit_number FROM incident WHERE id = 1;
-- Refused by decide (NULL), and by its error: nothing written, no number used.
SELECT converge.request('incident', '{"id":2}', 'status', '"open"') AS refused \gset
SELECT converge.request('incident', '{"id":3}', 'status', '"archived"') AS failed \gset
SELECT request_id = :'refused' AS refused_one, status, decision, reason FROM converge.requests
 WHERE request_id IN (:'refused', :'failed') ORDER BY request_id = :'refused' DESC;
SELECT id, status, audit_number FROM incident WHERE id IN (2, 3) ORDER BY id;
SELECT count(*) AS numbers_used FROM converge.allocations WHERE name = 'audit';
-- A column another node decides: the request waits for it (pending here).
SELECT converge.set_authority('incident', 'title', 'virginia');
SELECT converge.request('incident', '{"id":2}', 'title', '"valve (leaking)"') AS elsewhere \gset
SELECT status FROM converge.requests WHERE request_id = :'elsewhere';
-- Every request and decision is an op of this node, for the peers.
SELECT target_table, count(*) FROM converge.op_log WHERE target_table IN ('converge.requests', 'converge.allocations')
 GROUP BY 1 ORDER BY 1;
RESET ROLE;
-- A request made on another node (here: arriving through apply) with a key
-- already decided here takes that decision, without deciding again.
SELECT outcome FROM converge.apply(ROW('phone1:7', 'phone1', 'converge.requests', '{"request_id":"madrid:99"}', '', 1, 0, '{}',
    converge.put(converge.put(converge.put(converge.put(converge.put(converge.put(converge.put(converge.put(
        NULL::converge.lwwmap, '$live', 'true'), 'target_table', '"public.incident"'), 'target_key', '{"id":1}'),
        'target_column', '"status"'), 'value', '"closed"'), 'idempotency_key', '"close-1"'), 'requested_by', '"madrid"'),
        'status', '"pending"')::bytea, NULL)::converge.op);
SELECT status, decision = (SELECT decision FROM converge.requests WHERE request_id = :'req') AS same_decision
  FROM converge.requests WHERE request_id = 'madrid:99';
SELECT count(*) AS numbers_used FROM converge.allocations WHERE name = 'audit';

-- Bad requests.
SET ROLE cv_clinic;
\set VERBOSITY sqlstate
SELECT converge.request('incident', '{"id":1}', 'visits', '1');
SELECT converge.request('incident', '{"id":1}', 'nope', '1');
CREATE TABLE loose (id int PRIMARY KEY, s text);
SELECT converge.replicate('loose');
SELECT converge.request('loose', '{"id":1}', 's', '"x"');
SELECT converge.request('incident', '{"nr":1}', 'status', '"closed"');
SELECT converge.request('plain', '{"id":1}', 'status', '"closed"');
SELECT converge.request('incident', NULL, 'status', '"closed"');
SELECT converge.set_authority('incident', 'status', 'dublin', 'pg_catalog.now()'::regprocedure);
RESET ROLE;
SET ROLE cv_stranger;
SELECT converge.request('incident', '{"id":1}', 'status', '"closed"');
SELECT converge.set_allocator('x', 'dublin');
\set VERBOSITY default
RESET ROLE;
SELECT converge.request('loose', '{"id":1}', 's', '"x"');
SELECT converge.request('incident', '{"id":1}', 'visits', '1');

\c regression
DROP DATABASE converge_regress_dublin;
DROP OWNED BY cv_clinic;
DROP ROLE cv_clinic;
DROP ROLE cv_stranger;
