-- Security (SPEC section 7), as real roles: an application role that owns
-- its table, an intruder with no rights on it, and a peer role.
SET search_path = public, converge;
\set VERBOSITY sqlstate
DROP TABLE IF EXISTS sec_incident, sec_later, sec_seen;
DROP ROLE IF EXISTS cv_app;
DROP ROLE IF EXISTS cv_intruder;
DROP ROLE IF EXISTS cv_peer;
\set VERBOSITY default
CREATE ROLE cv_app LOGIN;
CREATE ROLE cv_intruder LOGIN;
CREATE ROLE cv_peer LOGIN REPLICATION;
GRANT CREATE ON SCHEMA public TO cv_app;

-- Everyday use by the application role: its own replicated table, mutators,
-- plain columns, the op log of its table.
SET ROLE cv_app;
CREATE TABLE sec_incident (id int PRIMARY KEY, visits gcounter, tags orset, status text);
CREATE TABLE sec_seen (who text, what text);
SELECT replicate('sec_incident');
INSERT INTO sec_incident VALUES (1, NULL, NULL, 'open');
UPDATE sec_incident SET visits = incr(visits, 1), tags = add(tags, 'pump');
UPDATE sec_incident SET status = 'closed';
SELECT id, value(visits), elements(tags), status FROM sec_incident;
SELECT target_column, outcome FROM op_log WHERE target_table = 'public.sec_incident' ORDER BY seq;
-- A client's op, applied as this role: the table's own trigger runs as it.
CREATE FUNCTION seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO sec_seen VALUES (current_user, TG_OP); RETURN NEW; END $$;
CREATE TRIGGER sec_seen BEFORE UPDATE ON sec_incident FOR EACH ROW EXECUTE FUNCTION seen();
SELECT * FROM apply(ROW('phone:1', 'phone', 'sec_incident', '{"id":1}', 'visits', 1, 0, '{}',
                        '{"counts":{"phone":4}}'::gcounter::bytea, NULL)::op);
SELECT value(visits) FROM sec_incident;
SELECT * FROM sec_seen;
-- An op may not claim op ids of this node (or of a peer): rejected.
SELECT * FROM apply(ROW('madrid:900000', 'madrid', 'sec_incident', '{"id":1}', 'visits', 1, 0, '{}',
                        '{"counts":{"madrid":1}}'::gcounter::bytea, NULL)::op);
-- An op waiting for another it depends on: this role sees it in
-- converge.pending, with how long it has waited.
SELECT * FROM apply(ROW('phone:9', 'phone', 'sec_incident', '{"id":1}', 'visits', 1, 0, '{phone:8}',
                        '{"counts":{"phone":12}}'::gcounter::bytea, NULL)::op);
SELECT op_id, actor, target_table, target_key, missing, origin, age >= interval '0' AS waited FROM pending
 WHERE target_table = 'public.sec_incident';
-- Op recording is converge's to switch off, not a role's.
\set VERBOSITY sqlstate
SET converge.applying = on;
\set VERBOSITY default
-- A function in the caller's search_path never runs with converge's rights:
-- converge's internal statements use a fixed search_path.
CREATE FUNCTION hijack(jsonb, text, jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN RAISE NOTICE 'hijacked, running as %', current_user; RETURN $1; END $$;
CREATE AGGREGATE jsonb_object_agg(text, jsonb) (sfunc = hijack, stype = jsonb, initcond = '{}');
SET search_path = public, pg_catalog, converge;
UPDATE sec_incident SET status = 'reopened';
SET search_path = public, converge;
DROP AGGREGATE jsonb_object_agg(text, jsonb);
SELECT status FROM sec_incident;

-- It cannot write converge's internal tables, nor run administration.
\set VERBOSITY sqlstate
INSERT INTO op_log (op_id, actor, counter, outcome, origin) VALUES ('x:1', 'x', 1, 'applied', 'local');
UPDATE row_state SET live = false;
DELETE FROM actor_frontier;
INSERT INTO pending (op_id, op, missing, origin) VALUES ('x:1', NULL, '{}', 'x');
SELECT nextval('converge.dot_seq');
SELECT set_node('elsewhere');
SELECT add_peer('dublin', 'host=127.0.0.1 dbname=postgres');
SELECT remove_peer('dublin');
SELECT pause_peer('dublin');
SELECT resume_peer('dublin');
SELECT sync('dublin');
SELECT wait_for_peers('1 second');
SELECT grant_peer('cv_app');
SELECT retry_pending();
SELECT * FROM apply_ops('{}', 'client', false);
\set VERBOSITY default
-- The messages are plain.
SELECT set_node('elsewhere');
RESET ROLE;

-- A superuser's apply (the background worker's, a sync) writes the table as
-- its owner: the table's trigger never runs with superuser rights.
SELECT * FROM apply(ROW('phone:3', 'phone', 'sec_incident', '{"id":1}', 'visits', 1, 0, '{}',
                        '{"counts":{"phone":6}}'::gcounter::bytea, NULL)::op);
SELECT who, count(*) FROM sec_seen GROUP BY who ORDER BY who;

-- The intruder: no rights on the table, so none through converge either.
SET ROLE cv_intruder;
\set VERBOSITY sqlstate
SELECT * FROM sec_incident;
UPDATE sec_incident SET visits = incr(visits, 1);
SELECT replicate('sec_incident');
SELECT snapshot('sec_incident');
\set VERBOSITY default
SELECT * FROM apply(ROW('phone:2', 'phone', 'sec_incident', '{"id":1}', 'visits', 1, 0, '{}',
                        '{"counts":{"phone":9}}'::gcounter::bytea, NULL)::op);
-- (with its SQLSTATE, SPEC section 7: 42501)
\set VERBOSITY sqlstate
SELECT * FROM apply(ROW('phone:2', 'phone', 'sec_incident', '{"id":1}', 'visits', 1, 0, '{}',
                        '{"counts":{"phone":9}}'::gcounter::bytea, NULL)::op);
\set VERBOSITY default
SELECT replicate('sec_incident');
-- It sees no op of a table it may not read.
SELECT count(*) FROM op_log WHERE target_table = 'public.sec_incident';
SELECT count(*) FROM changes_since('{}') WHERE target_table = 'public.sec_incident';
SELECT count(*) FROM pending WHERE target_table = 'public.sec_incident';
SELECT count(*) FROM pending_ops WHERE (op).target_table = 'public.sec_incident';
-- Nor through an operator of its own that makes the table's name match a
-- table it owns: converge finds an op's table in the catalog directly.
RESET ROLE;
CREATE SCHEMA sec_mine AUTHORIZATION cv_intruder;
SET ROLE cv_intruder;
CREATE TABLE sec_mine.sec_own (id int);
CREATE FUNCTION sec_mine.name_is(name, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN $2 OPERATOR(pg_catalog.=) 'public' THEN $1 OPERATOR(pg_catalog.=) 'sec_mine'::name
                WHEN $2 OPERATOR(pg_catalog.=) 'sec_incident' THEN $1 OPERATOR(pg_catalog.=) 'sec_own'::name
                ELSE $1 OPERATOR(pg_catalog.=) $2::name END $$;
CREATE OPERATOR sec_mine.= (LEFTARG = name, RIGHTARG = text, FUNCTION = sec_mine.name_is);
SET search_path = sec_mine, public, pg_catalog, converge;
SELECT count(*) FROM op_log WHERE target_table = 'public.sec_incident';
SET search_path = public, converge;
-- (A rejected envelope that names no table carries no table's data: it is
-- everyone's to see, as the regress ops file leaves one.)
SELECT count(*) FROM quarantine WHERE target_table IS NOT NULL;
-- Types, mutators, readers and the monitoring views are everyone's.
SELECT value(incr(NULL::gcounter, 2)), elements(add(NULL::orset, 'x'));
SELECT count(*) >= 0 AS readable FROM peers;
SELECT count(*) >= 0 AS readable FROM op_outcomes;
SELECT count(*) >= 0 AS readable FROM compactions;
RESET ROLE;
-- Nothing of the refused call was recorded.
SELECT count(*) FROM op_log WHERE op_id = 'phone:2';
SELECT value(visits) FROM sec_incident;
-- A temporary table of the same name does not open another table's ops.
SET ROLE cv_intruder;
CREATE TEMP TABLE sec_incident (id int);
SELECT count(*) FROM op_log WHERE target_table LIKE '%sec_incident%';
DROP TABLE sec_incident;
RESET ROLE;

-- The peer role: reads every replicated table's ops and snapshots, also of
-- tables replicated later, and writes nothing.
SELECT grant_peer('cv_peer');
SELECT grant_peer(NULL) IS NULL AS no_role_nothing_granted;
SET ROLE cv_peer;
SELECT count(*) > 0 AS reads_ops FROM changes_since('{}') WHERE target_table = 'public.sec_incident';
SELECT snapshot('sec_incident') -> 'rows' -> 0 ->> 'status' AS status;
\set VERBOSITY sqlstate
UPDATE sec_incident SET status = 'peer';
\set VERBOSITY default
RESET ROLE;
SET ROLE cv_app;
CREATE TABLE sec_later (id int PRIMARY KEY, n gcounter);
SELECT replicate('sec_later');
INSERT INTO sec_later VALUES (1, incr(NULL::gcounter, 5));
RESET ROLE;
SET ROLE cv_peer;
SELECT id, value(n) FROM sec_later;
SELECT count(*) AS later_ops FROM changes_since('{}') WHERE target_table = 'public.sec_later';
RESET ROLE;

-- replay applies an op that came through a peer's replication as that
-- peer's: the table's owner may, another writer of the table may not. (The
-- row stands for what the worker logs: peer sec-peer's own op, refused
-- while the column it names was missing here.)
INSERT INTO op_log (op_id, actor, counter, target_table, target_key, target_column, schema_version, epoch, deps, delta,
                    outcome, reason, origin)
VALUES ('sec-peer:1', 'sec-peer', 1, 'public.sec_incident', '{"id": 1}', 'visits', 1, 0, '{}',
        '{"counts":{"sec-peer":4}}'::gcounter::bytea, 'rejected', 'unknown_column', 'peer:sec-peer');
GRANT SELECT, INSERT, UPDATE ON sec_incident TO cv_intruder;
SET ROLE cv_intruder;
SELECT * FROM replay('sec-peer:1');
RESET ROLE;
REVOKE ALL ON sec_incident FROM cv_intruder;
SET ROLE cv_app;
SELECT * FROM replay('sec-peer:1');
SELECT value(visits) FROM sec_incident WHERE id = 1;
SELECT op_id, outcome, reason, origin FROM op_log WHERE op_id = 'sec-peer:1' ORDER BY seq;
-- What converge resolves as the caller is the name of the op's table,
-- under the caller's search_path, by pg_catalog's to_regclass: a function
-- of the caller's own of that name never runs (nor would an op it sent
-- under this node's name be trusted as the peer's: refused, node_actor).
CREATE FUNCTION public.to_regclass(t text) RETURNS regclass LANGUAGE plpgsql AS $$
BEGIN
    PERFORM converge.apply_batch(ARRAY[ROW(n.name || ':9000', n.name, 'public.sec_incident', '{"id": 1}', 'visits', 1, 0, '{}',
                                           converge.incr(NULL::converge.gcounter, 1000)::bytea, NULL)::converge.op], 'peer:sec-peer')
       FROM converge.node_identity n;
    RETURN pg_catalog.to_regclass(t);
END $$;
-- Nor does what converge reads about the table as the caller (its layout,
-- its authorities) run the caller's functions: that is read under the
-- fixed search_path.
CREATE FUNCTION public.format(f text, a name, b name) RETURNS text LANGUAGE plpgsql AS $$
BEGIN RAISE NOTICE 'the caller''s format ran'; RETURN pg_catalog.format(f, a, b); END $$;
RESET ROLE;
INSERT INTO op_log (op_id, actor, counter, target_table, target_key, target_column, schema_version, epoch, deps, delta,
                    outcome, reason, origin)
VALUES ('sec-peer:2', 'sec-peer', 2, 'public.sec_incident', '{"id": 1}', 'visits', 1, 0, '{}',
        '{"counts":{"sec-peer":5}}'::gcounter::bytea, 'rejected', 'unknown_column', 'peer:sec-peer');
SET ROLE cv_app;
SET search_path = public, pg_catalog, converge;
SELECT * FROM replay('sec-peer:2');
SET search_path = public, converge;
SELECT outcome, reason, origin FROM op_log WHERE op_id LIKE '%:9000';
SELECT value(visits) FROM sec_incident WHERE id = 1;
DROP FUNCTION public.to_regclass(text), public.format(text, name, name);
RESET ROLE;
-- What a table's own code sets while converge writes the table does not
-- outlive that write (in the background worker it would choose what the
-- worker, a superuser, runs next).
SET ROLE cv_app;
CREATE FUNCTION sec_sets_path() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'public, pg_catalog', false);
    RAISE NOTICE 'the trigger set search_path to %', pg_catalog.current_setting('search_path');
    RETURN NEW;
END $$;
CREATE TRIGGER sec_sets_path BEFORE INSERT OR UPDATE ON sec_incident FOR EACH ROW EXECUTE FUNCTION sec_sets_path();
SELECT outcome, reason FROM apply(ROW('sec-phone:1', 'sec-phone', 'public.sec_incident', '{"id": 1}', 'visits', 1, 0, '{}',
                              '{"counts":{"sec-phone":1}}'::gcounter::bytea, NULL)::op);
SHOW search_path;
SELECT value(visits) FROM sec_incident WHERE id = 1;
DROP TRIGGER sec_sets_path ON sec_incident;
DROP FUNCTION sec_sets_path();
RESET ROLE;
-- The table a local change's op names is not the writer's to choose: a
-- temporary table named pg_namespace (searched first on a search_path that
-- does not list pg_temp) does not change it, so peers apply the op to
-- this table and no other.
SET ROLE cv_app;
CREATE TABLE sec_named (id int PRIMARY KEY, n gcounter);
SELECT replicate('sec_named');
CREATE TEMP TABLE pg_namespace AS SELECT oid, 'forged'::name AS nspname FROM pg_catalog.pg_namespace;
INSERT INTO sec_named VALUES (1, incr(NULL::gcounter, 1));
DROP TABLE pg_temp.pg_namespace;
RESET ROLE;
SELECT target_table, target_column FROM op_log WHERE target_table LIKE '%sec_named' ORDER BY seq;
-- epoch, freeze and request read the table's settings (its schema
-- versions here; its authority by the same path) under the fixed path
-- too: an = of the caller's own for regclass (PostgreSQL has none, so it
-- would be chosen) never runs.
SET ROLE cv_app;
SELECT set_schema_version('sec_named', 'n', 1);
CREATE FUNCTION public.regclass_eq(regclass, regclass) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN RAISE NOTICE 'the caller''s = ran'; RETURN $1::oid OPERATOR(pg_catalog.=) $2::oid; END $$;
CREATE OPERATOR public.= (LEFTARG = regclass, RIGHTARG = regclass, FUNCTION = public.regclass_eq);
SELECT epoch('sec_named', '{"id": 1}');
DROP OPERATOR public.= (regclass, regclass);
DROP FUNCTION public.regclass_eq(regclass, regclass);
RESET ROLE;

-- A role that may SELECT a table only through row security reads none of
-- its ops: an op names its row's key and carries its values, also of rows
-- the policy hides. The owner (not subject to the policy) reads them all.
SET ROLE cv_app;
CREATE TABLE sec_rls (id int PRIMARY KEY, who name, n gcounter);
SELECT replicate('sec_rls');
INSERT INTO sec_rls VALUES (1, 'cv_app', incr(NULL::gcounter, 1)), (2, 'cv_intruder', incr(NULL::gcounter, 2));
ALTER TABLE sec_rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON sec_rls FOR SELECT USING (who = current_user);
GRANT SELECT ON sec_rls TO cv_intruder;
SELECT count(*) AS ops_the_owner_reads FROM op_log WHERE target_table = 'public.sec_rls';
SET ROLE cv_intruder;
SELECT id FROM sec_rls;
SELECT count(*) FROM op_log WHERE target_table = 'public.sec_rls';
SELECT count(*) FROM changes_since('{}') WHERE target_table = 'public.sec_rls';
-- Nor does it apply row ops there, even with the rights to write: a row it
-- cannot see would stay here and be deleted on every other node (42501,
-- nothing recorded).
RESET ROLE;
GRANT INSERT, UPDATE, DELETE ON sec_rls TO cv_intruder;
SET ROLE cv_intruder;
SELECT op_id, outcome FROM apply(ROW('phone5:1', 'phone5', 'public.sec_rls', '{"id": 1}', '', 1, 0, '{}',
                                     put(NULL::lwwmap, '$live', 'false')::bytea, NULL)::op);
RESET ROLE;
SELECT id, who FROM sec_rls ORDER BY id;
SELECT count(*) AS logged FROM op_log WHERE op_id = 'phone5:1';
DROP TABLE sec_rls;

-- Clean up (the roles are cluster-wide).
DELETE FROM peer_reader WHERE role::text = 'cv_peer';
DROP TABLE sec_incident, sec_later, sec_seen, sec_named;
DELETE FROM converge.pending_ops WHERE op_id = 'phone:9';
DROP OWNED BY cv_app, cv_intruder, cv_peer;
DROP ROLE cv_app;
DROP ROLE cv_intruder;
DROP ROLE cv_peer;
