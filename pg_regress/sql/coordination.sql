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
-- status's literal default may be carried by an insert made anywhere; a
-- default that is an expression is never evaluated (only NULL may then).
SELECT column_name, default_value FROM converge.authority ORDER BY column_name;
CREATE TABLE shift (id int PRIMARY KEY, lead text DEFAULT 'a' || 'b');
SELECT converge.replicate('shift');
SELECT converge.set_authority('shift', 'lead', 'virginia');
SELECT default_value IS NULL AS not_evaluated FROM converge.authority WHERE table_name = 'shift'::regclass;
INSERT INTO shift (id) VALUES (1);
INSERT INTO shift (id, lead) VALUES (2, NULL);
SELECT * FROM shift;
-- A number default matches by value: the row carries it as its type
-- renders it (0.00 for numeric(10,2), 1.5 for float8 1.50).
CREATE TABLE ledger (id int PRIMARY KEY, amount numeric(10,2) DEFAULT 0, rate float8 DEFAULT 1.50);
SELECT converge.replicate('ledger');
SELECT converge.set_authority('ledger', 'amount', 'virginia');
SELECT converge.set_authority('ledger', 'rate', 'virginia');
INSERT INTO ledger (id) VALUES (1);
INSERT INTO ledger (id, amount, rate) VALUES (2, 0.0, 1.5);
INSERT INTO ledger (id, amount) VALUES (3, 0.01);
SELECT * FROM ledger ORDER BY id;
DROP TABLE ledger;

-- Here (dublin) a local change of an authority column fails, naming the
-- authority; other columns change as before.
UPDATE incident SET status = 'closed' WHERE id = 1;
UPDATE incident SET tags = converge.add(tags, 'warning') WHERE id = 1;
-- (with the SQLSTATE SPEC section 5 names: 42501)
\set VERBOSITY sqlstate
UPDATE incident SET status = 'closed' WHERE id = 1;
\set VERBOSITY default
UPDATE incident SET title = 'pump stopped (basement)', visits = converge.incr(visits, 1) WHERE id = 1;
-- Rows can be created anywhere: an insert may leave an authority column
-- NULL or at its constant default, not set it.
INSERT INTO incident (id, title) VALUES (2, 'valve');
INSERT INTO incident (id, title, status) VALUES (3, 'filter', 'open');
INSERT INTO incident (id, title, status) VALUES (4, 'hose', 'closed');
SELECT id, title, status, tags, converge.value(visits) AS visits FROM incident ORDER BY id;
-- Such an insert writes status as a placeholder: at physical time 0 (its
-- timestamp is [0, 1, its node]), which every write of virginia's beats.
-- So a row deleted and inserted again here keeps virginia's value instead
-- of resetting it everywhere (tests/cluster/tests/coordination.rs shows it
-- on real nodes, pg_regress compaction on one).
SELECT target_key, (delta::lwwmap::text::jsonb) -> 'entries' -> 'status' AS status_entry
  FROM converge.op_log WHERE target_table = 'public.incident' AND target_column = ''
   AND target_key ->> 'id' IN ('2', '3') ORDER BY seq;
-- The application's own BEFORE triggers cannot slip a change past: one
-- that sets status outside the UPDATE's SET list (so the guard trigger,
-- UPDATE OF status, does not fire), one that fires after the guard on an
-- insert, one that adds a tag. Each change fails here, by the rule the
-- other nodes would apply to its op.
CREATE FUNCTION auto_close() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.status := 'closed'; RETURN NEW; END $$;
CREATE FUNCTION auto_tag() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.tags := converge.add(NEW.tags, 'auto'); RETURN NEW; END $$;
CREATE TRIGGER a_close BEFORE UPDATE ON incident FOR EACH ROW EXECUTE FUNCTION auto_close();
UPDATE incident SET title = 'pump stopped (again)' WHERE id = 1;
DROP TRIGGER a_close ON incident;
CREATE TRIGGER zz_close BEFORE INSERT ON incident FOR EACH ROW EXECUTE FUNCTION auto_close();
INSERT INTO incident (id, title) VALUES (5, 'gauge');
DROP TRIGGER zz_close ON incident;
CREATE TRIGGER a_tag BEFORE UPDATE ON incident FOR EACH ROW EXECUTE FUNCTION auto_tag();
UPDATE incident SET title = 'pump stopped (again)' WHERE id = 1;
DROP TRIGGER a_tag ON incident;
SELECT id, title, status, tags FROM incident WHERE id IN (1, 5) ORDER BY id;
RESET ROLE;

-- Ops of other actors: phone1 may write title, not status or tags; its
-- insert may carry status's default under a placeholder timestamp, as a
-- node's insert does (phone1:4). The authority's own ops come through
-- replication (tests/cluster/tests/coordination.rs): a client sending ops
-- under an authority's name is refused as node_actor, like one sending
-- under a peer's name.
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone1:1', 'phone1', 'public.incident', '{"id":1}', '', 1, 0, '{}',
        converge.put(NULL::converge.lwwmap, 'status', '"closed"')::bytea, NULL)::converge.op,
    ROW('phone1:2', 'phone1', 'public.incident', '{"id":1}', 'tags', 1, 0, '{}',
        converge.add(NULL::converge.orset, 'stale')::bytea, NULL)::converge.op,
    ROW('phone1:3', 'phone1', 'public.incident', '{"id":1}', '', 1, 0, '{}',
        converge.put(NULL::converge.lwwmap, 'title', '"pump (phone)"')::bytea, NULL)::converge.op,
    ROW('phone1:4', 'phone1', 'public.incident', '{"id":5}', '', 1, 0, '{}',
        ('{"entries":{"$live":[[1767225600000,0,"phone1"],{"put":true}],"title":[[1767225600000,0,"phone1"],{"put":"seal"}],'
         '"status":[[0,1,"phone1"],{"put":"open"}]}}')::converge.lwwmap::bytea, NULL)::converge.op,
    ROW('phone1:5', 'phone1', 'public.incident', '{"id":6}', '', 1, 0, '{}',
        converge.put(converge.put(NULL::converge.lwwmap, '$live', 'true'), 'status', '"closed"')::bytea, NULL)::converge.op]);
SELECT id, title, status FROM incident ORDER BY id;
-- The same insert with status under a real timestamp is refused: it would
-- beat virginia's older value wherever the row is (live, or in its
-- tombstone) and reset it on every node. Ops that nodes send are not held
-- to this (a node writes real timestamps until its own set_authority has
-- run), and only applied ops travel, so this refusal holds everywhere.
SELECT op_id, outcome, reason FROM converge.apply(ROW('phone1:11', 'phone1', 'public.incident', '{"id":7}', '', 1, 0, '{}',
    converge.put(converge.put(converge.put(NULL::converge.lwwmap, '$live', 'true'), 'title', '"seal"'),
                 'status', '"open"')::bytea, NULL)::converge.op);
SELECT count(*) AS row_7 FROM incident WHERE id = 7;

-- A second set_authority replaces the first: phone2 now decides status,
-- and a client can no longer send ops as phone2.
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

-- removes_only: a safety warning does not disappear because a stale
-- tablet removed it. Virginia decides removals from tags; adds stay local
-- everywhere, adding an element again included.
SET ROLE cv_clinic;
SELECT converge.set_authority('incident', 'tags', 'virginia', removes_only => true);
SELECT target_column, node, removes_only FROM converge.authorities WHERE target_column = 'tags';
UPDATE incident SET tags = converge.add(tags, 'warning') WHERE id = 1;
UPDATE incident SET tags = converge.add(converge.add(tags, 'warning'), 'sharps') WHERE id = 1;
-- (adding 'warning' again gave it a second dot: an add covers only its own)
SELECT jsonb_array_length(tags::text::jsonb -> 'entries') AS dots FROM incident WHERE id = 1;
UPDATE incident SET tags = converge.remove(tags, 'sharps') WHERE id = 1;
UPDATE incident SET tags = converge.remove(converge.add(tags, 'fresh'), 'fresh') WHERE id = 1;
SELECT id, converge.elements(tags) AS tags FROM incident WHERE id = 1;
RESET ROLE;
-- With a decide function there, the hint also names the request that asks
-- virginia (a request for a CRDT column needs one).
CREATE FUNCTION keep_tags(r converge.requests) RETURNS jsonb LANGUAGE sql AS $$ SELECT NULL::jsonb $$;
SELECT converge.set_authority('incident', 'tags', 'virginia', 'keep_tags(converge.requests)', removes_only => true);
UPDATE incident SET tags = converge.remove(tags, 'sharps') WHERE id = 1;
SELECT converge.set_authority('incident', 'tags', 'virginia', removes_only => true);
DROP FUNCTION keep_tags(converge.requests);
-- Ops of other actors: phone1's add (tagged with phone1's own dot, as
-- the client crate makes it) applies; its removal, made from the row as
-- phone1 saw it, is not_authority, and so is an add whose context covers
-- the warning's dots (a removal dressed as an add).
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone1:7', 'phone1', 'public.incident', '{"id":1}', 'tags', 1, 0, '{}',
        '{"entries": [["phone1", 7, "checked"]], "context": {"phone1": [[7, 7]]}}'::converge.orset::bytea,
        NULL)::converge.op,
    ROW('phone1:8', 'phone1', 'public.incident', '{"id":1}', 'tags', 1, 0, '{}',
        converge.remove((SELECT tags FROM incident WHERE id = 1), 'warning')::bytea, NULL)::converge.op,
    ROW('phone1:9', 'phone1', 'public.incident', '{"id":1}', 'tags', 1, 0, '{}',
        converge.add(converge.remove((SELECT tags FROM incident WHERE id = 1), 'warning'), 'ok')::bytea,
        NULL)::converge.op]);
SELECT id, converge.elements(tags) AS tags FROM incident WHERE id = 1;
-- An op carrying the warning's own dots (dublin's) with a larger element
-- covers nothing it does not carry, yet merging it would replace the
-- warning (the same dot keeps the larger element): it is not_authority.
SELECT converge.merge_agg(format('{"entries": [["dublin", %s, "zzz"]], "context": {"dublin": [[%s, %s]]}}',
                                  e ->> 1, e ->> 1, e ->> 1)::converge.orset)::text AS forged
FROM incident, jsonb_array_elements(tags::text::jsonb -> 'entries') e
WHERE id = 1 AND e ->> 2 = 'warning' \gset
SELECT converge.elements(converge.merge(tags, :'forged'::converge.orset)) AS if_merged FROM incident WHERE id = 1;
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone1:10', 'phone1', 'public.incident', '{"id":1}', 'tags', 1, 0, '{}',
        (:'forged'::converge.orset)::bytea, NULL)::converge.op]);
SELECT id, converge.elements(tags) AS tags FROM incident WHERE id = 1;
-- By the same rule, a local change here may not copy elements made
-- elsewhere (row 1 holds phone1's 'checked') into the column.
SET ROLE cv_clinic;
UPDATE incident SET tags = (SELECT tags FROM incident WHERE id = 1) WHERE id = 2;
-- On the authority, the removal is an ordinary local change.
SELECT converge.set_authority('incident', 'tags', 'dublin', removes_only => true);
UPDATE incident SET tags = converge.remove(tags, 'warning') WHERE id = 1;
SELECT id, converge.elements(tags) AS tags FROM incident WHERE id = 1;

-- Moving an authority (docs/coordination.md, "Moving an authority"): on
-- the node that holds it, set_authority ends its term with a handover op
-- (replicated; the new node takes it when it runs set_authority there).
-- virginia is made a peer here, as add_peer would (paused: nothing
-- connects to it).
RESET ROLE;
INSERT INTO converge.peer (name, conninfo, slot_name, origin_name, paused) VALUES ('virginia', 'host=invalid', 'none', 'none', true);
SET ROLE cv_clinic;
CREATE TABLE handed (id int PRIMARY KEY, owner text);
SELECT converge.replicate('handed');
SELECT converge.set_authority('handed', 'owner', 'dublin');
INSERT INTO handed VALUES (1, 'ana');
UPDATE handed SET owner = 'bo' WHERE id = 1;
\set VERBOSITY sqlstate
SELECT converge.set_authority('handed', 'owner', 'oslo');       -- no peer of this node: 55000
\set VERBOSITY default
-- A change of the column in the transaction that hands it over is
-- recorded at the commit, after the handover: the commit fails.
BEGIN;
UPDATE handed SET owner = 'di' WHERE id = 1;
SELECT converge.set_authority('handed', 'owner', 'virginia');
COMMIT;
SELECT node, since FROM converge.authorities WHERE target_table = 'public.handed';
SELECT converge.set_authority('handed', 'owner', 'virginia');
SELECT node, since, earlier -> 0 ->> 'node' AS held_by, (earlier -> 0 ->> 'after')::int AS after
  FROM converge.authorities WHERE target_table = 'public.handed';
SELECT target_key, convert_from(delta, 'UTF8')::jsonb - 'until' - 'earlier' AS handover,
       (convert_from(delta, 'UTF8')::jsonb ->> 'until')::bigint = counter AS ends_at_its_own_counter,
       convert_from(delta, 'UTF8')::jsonb -> 'earlier' = (SELECT earlier FROM converge.authorities WHERE target_table = 'public.handed') AS terms_as_here
  FROM converge.op_log WHERE target_table = 'converge.handover';
UPDATE handed SET owner = 'cy' WHERE id = 1;
-- virginia, a peer, holds it now: only it hands it on (back here included).
SELECT converge.set_authority('handed', 'owner', 'dublin');
-- A holder that is no peer (removed for good) may be replaced directly.
RESET ROLE;
DELETE FROM converge.peer WHERE name = 'virginia';
SET ROLE cv_clinic;
SELECT converge.set_authority('handed', 'owner', 'dublin');
SELECT node, since, jsonb_array_length(earlier) AS earlier_terms FROM converge.authorities WHERE target_table = 'public.handed';
UPDATE handed SET owner = 'cy' WHERE id = 1;
SELECT * FROM handed;

-- Bad calls.
\set VERBOSITY sqlstate
SELECT converge.set_authority('incident', 'nope', 'virginia');
SELECT converge.set_authority('incident', 'id', 'virginia');
SELECT converge.set_authority('incident', 'status', 'bad name');
SELECT converge.set_authority('incident', 'status', NULL);
SELECT converge.set_authority('incident', 'status', 'virginia', removes_only => true);
SELECT converge.set_authority('incident', 'visits', 'virginia', removes_only => true);
SELECT converge.set_authority('incident', NULL, 'virginia', removes_only => true);
SELECT converge.set_authority('incident', 'status', 'virginia', 'pg_catalog.now()'::regprocedure);
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

-- A CRDT column whose name has a backslash, in a session with
-- standard_conforming_strings off: a peer's delete of its row stashes the
-- column's state under its own name (converge quotes it for either
-- setting), and an insert of the key again resumes it.
SET search_path = public, converge;
SET standard_conforming_strings = off;
-- (The peer's delete is timestamped far ahead; the bound on clients'
-- clocks, ops.sql, is lifted for it.)
SET converge.max_clock_skew = -1;
CREATE TABLE odd (id int PRIMARY KEY, "a\b" gcounter);
SELECT replicate('odd');
INSERT INTO odd VALUES (1, incr(NULL::gcounter, 2));
SELECT outcome, reason FROM apply(ROW('phone9:1', 'phone9', 'public.odd', '{"id":1}', '', 1, 0, '{}',
    '{"entries":{"$live":[[9999999999999,0,"phone9"],{"put":false}]}}'::lwwmap::bytea, NULL)::op);
SELECT count(*) AS rows_left, (SELECT stash FROM row_state WHERE tbl = 'odd'::regclass) AS stash FROM odd;
INSERT INTO odd (id) VALUES (1);
SELECT id, value("a\b") AS resumed FROM odd;
RESET standard_conforming_strings;
DROP TABLE odd;

\c regression
DROP DATABASE converge_regress_dublin;
DROP ROLE cv_clinic;
DROP ROLE cv_stranger;
