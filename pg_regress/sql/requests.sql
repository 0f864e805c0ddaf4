-- Requests and unique allocation (SPEC section 5): converge.request asks
-- the authority of a column to change it; the authority decides each
-- request once, in arrival order, as proposed or through its decide
-- function, and converge.allocate hands out one number per idempotency key.
-- On a node of its own (virginia, the authority), with an application role
-- owning its table. tests/cluster/tests/requests.rs shows two regions
-- closing one incident while cut off.
CREATE DATABASE converge_regress_requests;
\c converge_regress_requests
CREATE EXTENSION converge;
SET search_path = public, converge;
SELECT set_node('virginia') IS NOT NULL AS virginia_set;
CREATE ROLE cv_clerk;
CREATE ROLE cv_asker;
CREATE ROLE cv_nobody;
GRANT CREATE ON SCHEMA public TO cv_clerk;
-- allocate is not granted to PUBLIC: the clerk's decide function uses it.
GRANT EXECUTE ON FUNCTION converge.allocate(text, text) TO cv_clerk;
-- Nor is request (it holds this node's op counter until its transaction
-- ends): granted to the roles that ask.
GRANT EXECUTE ON FUNCTION converge.request(regclass, jsonb, text, jsonb, text),
                          converge.request_on(oid, jsonb, text, jsonb, text) TO cv_clerk, cv_asker, cv_nobody;
SELECT converge.set_allocator('audit', 'virginia', 1000);
SELECT converge.set_allocator('dublin-tickets', 'dublin');
SET ROLE cv_clerk;
CREATE TABLE incident (id int PRIMARY KEY, title text, status text DEFAULT 'open', audit_number bigint,
                       tags converge.orset, contractor text);
SELECT converge.replicate('incident');
INSERT INTO incident (id, title) VALUES (1, 'pump stopped'), (2, 'valve'), (3, 'fan');
GRANT SELECT, UPDATE (title, status, tags) ON incident TO cv_asker;
-- Each call of the decide function is counted here.
CREATE TABLE decide_calls (request_id text);
-- Closing allocates the incident's audit number; "reopened" is refused
-- (NULL); "lost" fails with a message; "rename" writes a column the table
-- does not have; "hire" writes a column dublin decides. converge runs
-- decide functions with its own search_path: this one sets the one it
-- needs.
CREATE FUNCTION close_incident(r converge.requests) RETURNS jsonb
LANGUAGE plpgsql SET search_path = public AS $$
BEGIN
    INSERT INTO decide_calls VALUES (r.request_id);
    CASE r.value #>> '{}'
        WHEN 'closed' THEN
            RETURN jsonb_build_object('status', 'closed', 'audit_number', converge.allocate('audit', r.target_key::text));
        WHEN 'lost' THEN
            RAISE EXCEPTION 'incident % cannot be lost', r.target_key ->> 'id';
        WHEN 'rename' THEN
            RETURN '{"name": "x"}';
        WHEN 'hire' THEN
            RETURN '{"status": "contracted", "contractor": "acme"}';
        ELSE
            RETURN NULL;
    END CASE;
END $$;
CREATE FUNCTION not_a_decider(x int) RETURNS jsonb LANGUAGE sql AS $$ SELECT NULL::jsonb $$;

-- A decide function takes one converge.requests and returns jsonb.
SELECT converge.set_authority('incident', 'status', 'virginia', 'not_a_decider(int)');
SELECT converge.set_authority('incident', 'status', 'virginia', 'close_incident(converge.requests)');
SELECT converge.set_authority('incident', 'title', 'virginia');
SELECT converge.set_authority('incident', 'audit_number', 'virginia');
SELECT converge.set_authority('incident', 'tags', 'virginia', removes_only => true);
SELECT converge.set_authority('incident', 'contractor', 'dublin');
SELECT target_table, target_column, node, decide, removes_only FROM converge.authorities ORDER BY target_column;
RESET ROLE;

-- As proposed (no decide function): the authority writes the value, as
-- its own local change, in the request's transaction.
SET ROLE cv_asker;
SELECT converge.request('incident', '{"id": 2}', 'title', '"valve (replaced)"');
SELECT id, title, status FROM incident ORDER BY id;
SELECT request_id, target_table, target_key, target_column, value, requested_by, status, decision, reason
  FROM converge.requests;
RESET ROLE;
-- The request, the row op of the decision and the decision op, each an op
-- of this node.
SELECT op_id, target_table, target_column, outcome FROM converge.op_log ORDER BY seq;

-- Through the decide function: closing allocates one audit number.
SET ROLE cv_asker;
SELECT converge.request('incident', '{"id": 1}', 'status', '"closed"', 'close incident 1') AS first_close \gset
-- A retry with the same idempotency key returns the known request.
SELECT converge.request('incident', '{"id": 1}', 'status', '"closed"', 'close incident 1') = :'first_close' AS same_request;
SELECT converge.request('incident', '{"id": 3}', 'status', '"reopened"');
SELECT converge.request('incident', '{"id": 3}', 'status', '"lost"');
SELECT converge.request('incident', '{"id": 3}', 'status', '"rename"');
SELECT converge.request('incident', '{"id": 3}', 'status', '"hire"');
SELECT id, title, status, audit_number FROM incident ORDER BY id;
SELECT request_id, target_key, value, idempotency_key, status, decision, reason FROM converge.requests ORDER BY requested_at, request_id;
RESET ROLE;
-- Every column of converge.requests travels with the request and its
-- decision, so every node shows the same rows (the order requests arrived
-- in, which differs from node to node, is kept apart).
SELECT string_agg(attname, ', ' ORDER BY attnum) AS request_columns
  FROM pg_attribute WHERE attrelid = 'converge.requests'::regclass AND attnum > 0 AND NOT attisdropped;
SELECT name, idempotency_key, value, allocated_by FROM converge.allocations;

-- A CRDT column's decision is merged in (it only changes by merge): here
-- the removal of a safety warning (removals of tags are virginia's,
-- removes_only). A request for a CRDT column needs a decide function: a
-- value as proposed would be the asker's whole copy. This one removes the
-- named element from the value the authority holds.
SET ROLE cv_clerk;
SELECT converge.request('incident', '{"id": 1}', 'tags', '"warning"');
CREATE FUNCTION remove_tag(r converge.requests) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('tags', converge.remove(i.tags, r.value #>> '{}')::text)
      FROM public.incident i WHERE i.id = (r.target_key ->> 'id')::int $$;
SELECT converge.set_authority('incident', 'tags', 'virginia', 'remove_tag(converge.requests)', removes_only => true);
UPDATE incident SET tags = converge.add(converge.add(tags, 'warning'), 'sharps') WHERE id = 1;
SET ROLE cv_asker;
SELECT converge.request('incident', '{"id": 1}', 'tags', '"warning"') AS removal \gset
SELECT status, decision ? 'tags' AS tags_decided FROM converge.requests WHERE request_id = :'removal';
SELECT converge.elements(tags) AS tags FROM incident WHERE id = 1;
RESET ROLE;
SELECT target_table, target_column, outcome FROM converge.op_log WHERE actor = 'virginia' ORDER BY seq DESC LIMIT 3;

-- Another node's request with the same idempotency key (here sent by a
-- tablet through apply): it gets the first one's outcome, without a
-- second call of the decide function. Requests that arrive through apply
-- are decided by the worker's next pass (within 5 seconds), not in the
-- sender's transaction; decide_pending does it now.
SELECT op_id, outcome, reason FROM converge.apply(
    ROW('tab:1', 'tab', 'converge.request', '{"table": "public.incident", "key": {"id": 1}}', 'status', 1, 0, '{}',
        convert_to('{"value": "closed", "idempotency_key": "close incident 1", "requested_at": 1796000000000000}', 'UTF8'),
        NULL)::converge.op);
SELECT status FROM converge.requests WHERE request_id = 'tab:1';
SELECT converge.decide_pending() AS decided;
SELECT request_id, requested_by, status, decision FROM converge.requests WHERE idempotency_key = 'close incident 1' ORDER BY request_id;
-- (Calls that failed rolled back with their decision: "lost", "rename".)
SELECT request_id AS decide_called_for FROM decide_calls ORDER BY 1;

-- A request for a row that has not arrived here yet waits, pending, and
-- is decided once the row exists (the worker tries again every few
-- seconds; decide_pending does it now).
SELECT op_id, outcome FROM converge.apply(
    ROW('tab:2', 'tab', 'converge.request', '{"table": "public.incident", "key": {"id": 4}}', 'title', 1, 0, '{}',
        convert_to('{"value": "boiler", "idempotency_key": null, "requested_at": 1796000000000000}', 'UTF8'),
        NULL)::converge.op);
SELECT request_id, status FROM converge.requests WHERE request_id = 'tab:2';
SELECT converge.decide_pending() AS decided;
INSERT INTO incident (id) VALUES (4);
SELECT converge.decide_pending() AS decided;
SELECT request_id, status, decision FROM converge.requests WHERE request_id = 'tab:2';
SELECT id, title FROM incident WHERE id = 4;
-- A tablet's requests are chained like its other ops: one sent before
-- the op it follows (which took another way) waits, buffered, and goes on
-- in the call that brings that op, made by a role that may ask (UPDATE on
-- the column).
SET ROLE cv_asker;
SELECT op_id, outcome, reason FROM converge.apply(
    ROW('tab:9', 'tab', 'converge.request', '{"table": "public.incident", "key": {"id": 2}}', 'title', 1, 0, '{tab:8}',
        convert_to('{"value": "valve (stuck)", "idempotency_key": null, "requested_at": 1796000000000000}', 'UTF8'),
        NULL)::converge.op);
SELECT op_id, outcome, reason FROM converge.apply(
    ROW('tab:8', 'tab', 'converge.request', '{"table": "public.incident", "key": {"id": 3}}', 'title', 1, 0, '{}',
        convert_to('{"value": "fan (noisy)", "idempotency_key": null, "requested_at": 1796000000000000}', 'UTF8'),
        NULL)::converge.op);
RESET ROLE;
SELECT count(*) AS still_pending FROM converge.pending;
SELECT converge.decide_pending() AS decided;
SELECT request_id, status FROM converge.requests WHERE request_id IN ('tab:8', 'tab:9') ORDER BY request_id;
SELECT id, title FROM incident WHERE id IN (2, 3) ORDER BY id;

-- Only a peer's replication brings decisions and allocations, and only
-- from the authority: sent any other way they are rejected.
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('tab:3', 'tab', 'converge.decision', '{"request_id": "tab:2", "table": "public.incident", "key": {"id": 4}, "column": "title"}',
        '', 1, 0, '{}', convert_to('{"status": "refused", "decision": null, "reason": "no", "decided_at": 0}', 'UTF8'), NULL)::converge.op,
    ROW('tab:4', 'tab', 'converge.allocation', '{"name": "audit", "idempotency_key": "x"}', '', 1, 0, '{}',
        convert_to('{"value": 1, "allocated_at": 0}', 'UTF8'), NULL)::converge.op,
    ROW('tab:5', 'tab', 'converge.request', '{"table": "public.incident", "key": {"id": 1}}', 'status', 1, 0, '{}',
        convert_to('{"value": "closed"}', 'UTF8'), NULL)::converge.op,
    ROW('tab:6', 'tab', 'converge.request', '{"table": "public.incident", "key": {"id": 1}}', 'nope', 1, 0, '{}',
        convert_to('{"value": 1, "idempotency_key": null, "requested_at": 0}', 'UTF8'), NULL)::converge.op]);

-- Errors.
SET ROLE cv_asker;
SELECT converge.request('incident', NULL, 'status', '"closed"');
SELECT converge.request('incident', '{"id": "one"}', 'status', '"closed"');
SELECT converge.request('incident', '{"id": 9}', 'status', '"closed"');
SELECT converge.request('incident', '{"id": 1}', 'id', '5');
SELECT converge.request('incident', '{"id": 1}', 'priority', '5');
SELECT converge.request('incident', '{"id": 1}', 'audit_number', '5');
SELECT converge.request('decide_calls', '{"id": 1}', 'request_id', '"x"');
SET ROLE cv_nobody;
SELECT converge.request('incident', '{"id": 1}', 'status', '"closed"');
-- A tablet's request through apply needs the caller's UPDATE on the column too.
SELECT op_id, outcome FROM converge.apply(
    ROW('tab:7', 'tab', 'converge.request', '{"table": "public.incident", "key": {"id": 1}}', 'status', 1, 0, '{}',
        convert_to('{"value": "closed", "idempotency_key": null, "requested_at": 0}', 'UTF8'), NULL)::converge.op);
-- Requests are shown to roles that may read their table.
SELECT count(*) AS requests_seen FROM converge.requests;
SELECT converge.decide_pending();
SET ROLE cv_asker;
SELECT count(*) AS requests_seen FROM converge.requests;
-- Request and decision ops carry row values: in the op log only peer roles
-- (which read every replicated table's ops, to catch up) see them.
SELECT count(*) AS request_ops_seen FROM converge.op_log WHERE target_table IN ('converge.request', 'converge.decision');
RESET ROLE;
CREATE ROLE cv_peer LOGIN REPLICATION;
SELECT converge.grant_peer('cv_peer');
SET ROLE cv_peer;
SELECT count(*) AS request_ops_seen FROM converge.op_log WHERE target_table IN ('converge.request', 'converge.decision');
SET ROLE cv_asker;
-- Unique allocation: administration, served on the allocator's node only.
SELECT converge.allocate('audit', 'x');
SELECT converge.set_allocator('mine', 'virginia');
SET ROLE cv_clerk;
SELECT converge.allocate('audit', 'second') AS second, converge.allocate('audit', 'third') AS third,
       converge.allocate('audit', 'second') AS second_again;
SELECT converge.allocate('dublin-tickets', 'a');
-- (with the SQLSTATE SPEC section 5 names: 55000)
\set VERBOSITY sqlstate
SELECT converge.allocate('dublin-tickets', 'a');
\set VERBOSITY default
SELECT converge.allocate('no such', 'a');
SELECT converge.allocate('audit', NULL);
RESET ROLE;
SELECT converge.set_allocator('audit', 'not a node!');
SELECT converge.set_allocator(NULL, 'virginia');
SELECT name, node, start FROM converge.allocators ORDER BY name;
SELECT name, idempotency_key, value FROM converge.allocations ORDER BY value;

-- A decide function that no longer exists decides nothing: its requests
-- wait (with a warning) until set_authority names one again.
SET ROLE cv_clerk;
DROP FUNCTION close_incident(converge.requests);
SET ROLE cv_asker;
SELECT converge.request('incident', '{"id": 2}', 'status', '"closed"') AS waiting \gset
SELECT status FROM converge.requests WHERE request_id = :'waiting';
SELECT status FROM incident WHERE id = 2;
RESET ROLE;

-- Two requests with one idempotency key for different rows: the first to
-- arrive decides. The second is refused, naming the first; the first,
-- decided once its row arrives, is not refused in turn.
SELECT op_id, outcome FROM converge.apply_batch(ARRAY[
    ROW('tab:50', 'tab', 'converge.request', '{"table": "public.incident", "key": {"id": 6}}', 'title', 1, 0, '{}',
        convert_to('{"value": "first", "idempotency_key": "one key", "requested_at": 1796000000000000}', 'UTF8'), NULL)::converge.op,
    ROW('tab:51', 'tab', 'converge.request', '{"table": "public.incident", "key": {"id": 1}}', 'title', 1, 0, '{}',
        convert_to('{"value": "second", "idempotency_key": "one key", "requested_at": 1796000000000000}', 'UTF8'), NULL)::converge.op]);
SELECT converge.decide_pending() AS decided;
INSERT INTO incident (id) VALUES (6);
SELECT converge.decide_pending() AS decided;
SELECT request_id, status, coalesce(decision::text, reason) AS outcome
  FROM converge.requests WHERE idempotency_key = 'one key' ORDER BY request_id;
SELECT id, title FROM incident WHERE id IN (1, 6) ORDER BY id;

\c regression
DROP DATABASE converge_regress_requests;
DROP ROLE cv_clerk;
DROP ROLE cv_asker;
DROP ROLE cv_nobody;
DROP ROLE cv_peer;
