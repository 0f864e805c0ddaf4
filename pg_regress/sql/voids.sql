-- Voids (SPEC section 3, "Offline clients" in docs/operations-log.md): a
-- client gives up an op a server refused with an op under the same op_id
-- that changes nothing, target converge.void. Until then the refused
-- counter holds its actor's frontier, and the compaction of every later op
-- of the actor, back on every node. On a node of its own (oslo), as an
-- application role.
CREATE DATABASE converge_regress_voids;
\c converge_regress_voids
CREATE EXTENSION converge;
SET search_path = public, converge;
SELECT set_node('oslo') IS NOT NULL AS oslo_set;
CREATE ROLE cv_clerk;
CREATE ROLE cv_viewer;
GRANT CREATE ON SCHEMA public TO cv_clerk;
SET ROLE cv_clerk;
CREATE TABLE job (id int PRIMARY KEY, title text, n converge.gcounter);
SELECT replicate('job');
GRANT SELECT ON job TO cv_viewer;
INSERT INTO job (id, title) VALUES (1, 'inspect pump');

-- A tablet's three ops; the second, written by a clock in 2100, is refused.
SELECT op_id, outcome, left(reason, 10) AS reason FROM apply_batch(ARRAY[
    ROW('t1:1', 't1', 'job', '{"id":1}', 'n', 1, 0, '{}', '{"counts":{"t1":1}}'::gcounter::bytea, NULL)::op,
    ROW('t1:2', 't1', 'job', '{"id":1}', '', 1, 0, '{t1:1}',
        '{"entries":{"title":[[4102444800000,0,"t1"],{"put":"from 2100"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('t1:3', 't1', 'job', '{"id":1}', 'n', 1, 0, '{t1:1}', '{"counts":{"t1":2}}'::gcounter::bytea, NULL)::op], 't1')
 ORDER BY op_id;
-- t1:2 holds t1's frontier at 1: t1:3 cannot be compacted.
SELECT op_id, outcome, left(reason, 10) AS reason, ops_held FROM frontier_gaps;
SELECT frontier() -> 't1' AS t1_frontier;

-- The tablet gives t1:2 up: its void is applied and uses the counter up.
SELECT * FROM apply(ROW('t1:2', 't1', 'converge.void', '{}', '', 1, 0, '{}', '', NULL)::op, 't1');
SELECT count(*) AS gaps FROM frontier_gaps;
SELECT frontier() -> 't1' AS t1_frontier;
SELECT count(*) AS in_quarantine FROM quarantine WHERE actor = 't1';
-- Nothing else changed: the title is the row's own, the count t1:1 and t1:3's.
SELECT title, value(n) AS n FROM job;
SELECT op_id, target_table, outcome, left(reason, 10) AS reason, origin FROM op_log WHERE actor = 't1' ORDER BY seq;
-- The void sent again is a duplicate. The op it gave up, replayed, is
-- judged again (refused again here); with the bound raised so that it
-- passes, it takes the void's place: a real op beats a void, wherever the
-- two meet (a peer's copy of an op it applied does the same).
SELECT * FROM apply(ROW('t1:2', 't1', 'converge.void', '{}', '', 1, 0, '{}', '', NULL)::op, 't1');
SELECT op_id, outcome, left(reason, 10) AS reason FROM replay('t1:2');
RESET ROLE;
SET converge.max_clock_skew = -1;
SET ROLE cv_clerk;
SELECT op_id, outcome, left(reason, 10) AS reason FROM replay('t1:2');
SELECT title FROM job;
SELECT target_table, outcome, left(reason, 14) AS reason, origin FROM op_log WHERE op_id = 't1:2' ORDER BY seq;
SELECT reason, ops FROM op_outcomes WHERE outcome = 'superseded';
-- If the op's write then fails, the void keeps the counter.
ALTER TABLE job ADD CONSTRAINT no_drafts CHECK (title <> 'draft');
RESET ROLE;
RESET converge.max_clock_skew;
SET ROLE cv_clerk;
SELECT op_id, outcome, left(reason, 10) AS reason FROM apply(ROW('t6:1', 't6', 'job', '{"id":1}', '', 1, 0, '{}',
    '{"entries":{"title":[[4102444800000,0,"t6"],{"put":"draft"}]}}'::lwwmap::bytea, NULL)::op, 't6');
SELECT op_id, outcome FROM apply(ROW('t6:1', 't6', 'converge.void', '{}', '', 1, 0, '{}', '', NULL)::op, 't6');
RESET ROLE;
SET converge.max_clock_skew = -1;
SET ROLE cv_clerk;
SELECT op_id, outcome, left(reason, 9) AS reason FROM replay('t6:1');
RESET ROLE;
RESET converge.max_clock_skew;
SET ROLE cv_clerk;
SELECT target_table, outcome, left(reason, 10) AS reason FROM op_log WHERE op_id = 't6:1' ORDER BY seq;
SELECT frontier() -> 't6' AS t6_frontier, title FROM job;

-- An op refused without a table is listed, and can be given up.
SELECT op_id, outcome, reason FROM apply(ROW('t7:1', 't7', NULL, '{"id":1}', 'n', 1, 0, '{}', '\x00', NULL)::op, 't7');
SELECT op_id, outcome, reason FROM quarantine WHERE actor = 't7';
SELECT op_id, outcome FROM apply(ROW('t7:1', 't7', 'converge.void', '{}', '', 1, 0, '{}', '', NULL)::op, 't7');
SELECT count(*) AS t7_listed FROM quarantine WHERE actor = 't7';
-- A batch with a void and the op it gives up (sent again, and passing
-- now): the op is applied, the void is a duplicate.
SELECT op_id, outcome, left(reason, 10) AS reason FROM apply(ROW('t8:1', 't8', 'job', '{"id":1}', '', 1, 0, '{}',
    '{"entries":{"title":[[4102444800000,0,"t8"],{"put":"t8 was here"}]}}'::lwwmap::bytea, NULL)::op, 't8');
RESET ROLE;
SET converge.max_clock_skew = -1;
SET ROLE cv_clerk;
SELECT op_id, outcome FROM apply_batch(ARRAY[
    ROW('t8:1', 't8', 'converge.void', '{}', '', 1, 0, '{}', '', NULL)::op,
    ROW('t8:1', 't8', 'job', '{"id":1}', '', 1, 0, '{}',
        '{"entries":{"title":[[4102444800000,0,"t8"],{"put":"t8 was here"}]}}'::lwwmap::bytea, NULL)::op], 't8') ORDER BY outcome;
RESET ROLE;
RESET converge.max_clock_skew;
SET ROLE cv_clerk;
SELECT target_table, outcome, left(reason, 10) AS reason FROM op_log WHERE op_id = 't8:1' ORDER BY seq;
SELECT title FROM job;

-- Voids that are refused. Only an op this node refused from a client can
-- be given up, and the void has one form: an empty key, column '', an
-- empty delta, no deps.
SELECT op_id, outcome, reason FROM apply_batch(ARRAY[
    ROW('t1:9', 't1', 'converge.void', '{}', '', 1, 0, '{}', '', NULL)::op,
    ROW('t1:3', 't1', 'converge.void', '{}', '', 1, 0, '{}', '', NULL)::op,
    ROW('t2:1', 't2', 'converge.void', '{"id":1}', '', 1, 0, '{}', '', NULL)::op,
    ROW('t2:2', 't2', 'converge.void', '{}', 'n', 1, 0, '{}', '', NULL)::op,
    ROW('t2:3', 't2', 'converge.void', '{}', '', 1, 0, '{}', '\x00', NULL)::op,
    ROW('t2:4', 't2', 'converge.void', '{}', '', 1, 0, '{t2:1}', '', NULL)::op], 't2')
 ORDER BY op_id;
-- A void refused here is no op refused here: sent again, it is refused again.
SELECT op_id, outcome, reason FROM apply(ROW('t1:9', 't1', 'converge.void', '{}', '', 1, 0, '{}', '', NULL)::op, 't1');
-- An op kept aside as new_schema applies by itself once this node reaches
-- that version: it cannot be given up.
SELECT op_id, outcome, reason FROM apply(ROW('t3:1', 't3', 'job', '{"id":1}', 'n', 2, 0, '{}',
    '{"counts":{"t3":5}}'::gcounter::bytea, NULL)::op, 't3');
SELECT op_id, outcome, reason FROM apply(ROW('t3:1', 't3', 'converge.void', '{}', '', 1, 0, '{}', '', NULL)::op, 't3');
-- A role that may not write the table cannot give its ops up.
SELECT op_id, outcome, reason FROM apply(ROW('t4:1', 't4', 'job', '{"id":1}', 'title', 1, 0, '{}',
    '{"counts":{"t4":1}}'::gcounter::bytea, NULL)::op, 't4');
SET ROLE cv_viewer;
SELECT op_id, outcome, reason FROM apply(ROW('t4:1', 't4', 'converge.void', '{}', '', 1, 0, '{}', '', NULL)::op, 't4');
-- (Sent again: refused again; its refused void is no refused op.)
SELECT op_id, outcome, reason FROM apply(ROW('t4:1', 't4', 'converge.void', '{}', '', 1, 0, '{}', '', NULL)::op, 't4');
SET ROLE cv_clerk;
-- A registered device's void is signed as its other ops are.
RESET ROLE;
SELECT register_actor('t5', '\xea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c') IS NOT NULL AS registered;
SET ROLE cv_clerk;
SELECT op_id, outcome, reason FROM apply(ROW('t5:1', 't5', 'converge.void', '{}', '', 1, 0, '{}', '', NULL)::op, 't5');
-- A refused void is not listed in quarantine: t4:1 shows as refused,
-- and replay takes the op, not its void.
SELECT op_id, target_table, outcome, reason FROM quarantine WHERE actor IN ('t1', 't2', 't3', 't4') ORDER BY op_id;
SELECT op_id, outcome, reason FROM replay('t4:1');
-- The refused void of t4:1 holds nothing back: its actor's gap is t4:1 itself.
SELECT op_id, ops_held FROM frontier_gaps ORDER BY op_id;

-- Compaction folds t1's applied ops, except t1:2, which a void contested
-- (it gave way to the op): the op stays for callers that may hold the
-- void. t1:3's void was refused here (nothing to void): it contested
-- nothing, and t1:3 folds.
RESET ROLE;
SELECT ops_removed > 0 AS compacted FROM compact();
SELECT op_id, target_table, outcome, left(reason, 14) AS reason FROM op_log WHERE actor = 't1' ORDER BY seq;
\c regression
DROP DATABASE converge_regress_voids;
DROP ROLE cv_clerk;
DROP ROLE cv_viewer;
