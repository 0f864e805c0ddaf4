-- Schema versions (SPEC section 5): an op made under another version of a
-- column's merge semantics is kept aside (quarantined), never merged. On a
-- node of its own (oslo), with an application role owning its table.
CREATE DATABASE converge_regress_oslo;
\c converge_regress_oslo
CREATE EXTENSION converge;
SET search_path = public, converge;
-- Clients' writes below are timestamped far ahead so that they win over
-- this node's writes; the bound on clients' clocks (ops.sql) is lifted.
SET converge.max_clock_skew = -1;
SELECT set_node('oslo') IS NOT NULL AS oslo_set;
CREATE ROLE cv_plant;
CREATE ROLE cv_stranger;
GRANT CREATE ON SCHEMA public TO cv_plant;
SET ROLE cv_plant;
CREATE TABLE pump (id int PRIMARY KEY, state text, runs converge.gcounter);
CREATE TABLE spare (id int PRIMARY KEY, n converge.gcounter);
SELECT converge.replicate('pump');
INSERT INTO pump (id, state) VALUES (1, 'ok');

-- runs now follows version 2 of its semantics, the row ops version 3.
SELECT converge.set_schema_version('pump', 'runs', 2);
SELECT converge.set_schema_version('pump', NULL, 3);
SELECT table_name, column_name, version FROM converge.schema_version ORDER BY column_name;
-- Errors: no version 0, plain columns go with the row ops, unknown
-- columns, tables not replicated, and only the owner sets them.
SELECT converge.set_schema_version('pump', 'runs', 0);
SELECT converge.set_schema_version('pump', 'state', 2);
SELECT converge.set_schema_version('pump', 'nope', 2);
SELECT converge.set_schema_version('spare', 'n', 2);
SET ROLE cv_stranger;
SELECT converge.set_schema_version('pump', 'runs', 5);
SET ROLE cv_plant;

-- Local ops carry the versions.
UPDATE pump SET runs = converge.incr(runs, 1), state = 'running' WHERE id = 1;
SELECT target_column, schema_version FROM converge.op_log WHERE actor = 'oslo' ORDER BY seq;
RESET ROLE;

-- An old client (version 1 of runs) is kept aside; so is an op of a newer
-- version than this node knows; the current ones apply.
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('tab:1', 'tab', 'public.pump', '{"id":1}', 'runs', 1, 0, '{}',
        '{"counts":{"tab":5}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('tab:2', 'tab', 'public.pump', '{"id":1}', 'runs', 2, 0, '{}',
        '{"counts":{"tab":6}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('tab:3', 'tab', 'public.pump', '{"id":1}', 'runs', 3, 0, '{}',
        '{"counts":{"tab":8}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('tab:4', 'tab', 'public.pump', '{"id":1}', '', 3, 0, '{}',
        '{"entries":{"state":[[9999999999999,0,"tab"],{"put":"stopped"}]}}'::converge.lwwmap::bytea, NULL)::converge.op,
    ROW('tab:5', 'tab', 'public.pump', '{"id":1}', '', 0, 0, '{}',
        '{"entries":{"state":[[9999999999999,1,"tab"],{"put":"broken"}]}}'::converge.lwwmap::bytea, NULL)::converge.op]);
SELECT id, state, converge.value(runs) AS runs FROM pump;
SELECT op_id, schema_version, outcome, reason FROM converge.quarantine ORDER BY op_id;

-- Moving runs to version 3 applies what waited for it (tab:3); the old
-- client's op stays aside (it needs translating, below), also when
-- replayed.
SET ROLE cv_plant;
SELECT converge.set_schema_version('pump', 'runs', 3) AS applied_now;
RESET ROLE;
SELECT id, state, converge.value(runs) AS runs FROM pump;
SELECT op_id, outcome, reason FROM converge.replay('tab:1');
SELECT op_id, schema_version, outcome, reason FROM converge.quarantine ORDER BY op_id;

-- Translating an old op: tab, still on version 2 of the row ops, sends
-- state codes ('HALT') where version 3 writes words. An operator writes
-- what it meant as a change of this node, then supersedes the old op
-- with a repair (two transactions: docs/coordination.md): the op is kept
-- aside no more (out of the quarantine, replay refuses it), its log row
-- keeps the reason it was kept aside, and the repair's row says why.
SELECT op_id, outcome, reason FROM converge.apply(ROW('tab:6', 'tab', 'public.pump', '{"id":1}', '', 2, 0, '{}',
    '{"entries":{"state":[[9999999999999,2,"tab"],{"put":"HALT"}]}}'::converge.lwwmap::bytea, NULL)::converge.op);
SET ROLE cv_plant;
UPDATE pump SET state = 'halted' WHERE id = 1;
RESET ROLE;
SELECT converge.repair(ARRAY['tab:6'], 'translated: version 2 state codes') AS repair_id \gset
SELECT id, state FROM pump;
SELECT l.outcome, l.reason, s.repair_id = :'repair_id' AS by_the_repair, r.reason AS repair_reason
  FROM converge.op_log l, converge.superseded s, converge.op_log r
 WHERE l.op_id = 'tab:6' AND s.op_id = l.op_id AND r.op_id = s.repair_id;
SELECT op_id FROM converge.quarantine ORDER BY op_id;
SELECT * FROM converge.replay('tab:6');
-- Sent again, it is superseded on arrival.
SELECT op_id, outcome, reason = :'repair_id' AS by_the_repair FROM converge.apply(ROW('tab:6', 'tab', 'public.pump', '{"id":1}', '', 2, 0, '{}',
    '{"entries":{"state":[[9999999999999,2,"tab"],{"put":"HALT"}]}}'::converge.lwwmap::bytea, NULL)::converge.op);
SELECT id, state FROM pump;
-- tab:1, an old counter op, cannot be translated so: tab:2 and tab:3
-- carry tab's running total (6 and 8, with tab:1's 5), so its change is
-- in runs already. The repair says so.
SELECT converge.repair(ARRAY['tab:1'], 'translated: version 1 runs') IS NOT NULL AS repaired;
SELECT id, converge.value(runs) AS runs FROM pump;
-- A later op with a lower total does not carry the change: 'old' sent 50
-- under version 1, then 3 under version 3 (the 50 never counted), and
-- the repair of old:1 warns nothing.
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('old:1', 'old', 'public.pump', '{"id":1}', 'runs', 1, 0, '{}',
        '{"counts":{"old":50}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('old:2', 'old', 'public.pump', '{"id":1}', 'runs', 3, 0, '{}',
        '{"counts":{"old":3}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT converge.repair(ARRAY['old:1'], 'translated: nothing to add') IS NOT NULL AS repaired;
SELECT id, converge.value(runs) AS runs FROM pump;

\c regression
DROP DATABASE converge_regress_oslo;
DROP ROLE cv_plant;
DROP ROLE cv_stranger;
