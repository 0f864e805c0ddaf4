-- Repair (SPEC section 5): converge.repair excludes named ops on every node
-- (outcome superseded, their rows rebuilt without them) and stays in the
-- log with its reason. On a node of its own (lagos), with an application
-- role owning its table.
CREATE DATABASE converge_regress_lagos;
\c converge_regress_lagos
CREATE EXTENSION converge;
SET search_path = public, converge;
-- Clients' writes below are timestamped far ahead so that they win over
-- this node's writes; the bound on clients' clocks (ops.sql) is lifted.
SET converge.max_clock_skew = -1;
SELECT set_node('lagos') IS NOT NULL AS lagos_set;
CREATE ROLE cv_depot;
GRANT CREATE ON SCHEMA public TO cv_depot;
SET ROLE cv_depot;
CREATE TABLE task (id int PRIMARY KEY, title text, n converge.gcounter);
SELECT converge.replicate('task');
INSERT INTO task (id, title) VALUES (1, 'inspect pump'), (2, 'order seal');
-- Repairing is administration.
SELECT converge.repair(ARRAY['phone1:1'], 'wrong task');
RESET ROLE;

-- A tablet typed a title into the wrong task and counted on it.
SELECT op_id, outcome FROM converge.apply_batch(ARRAY[
    ROW('phone1:1', 'phone1', 'public.task', '{"id":1}', '', 1, 0, '{}',
        '{"entries":{"title":[[9999999999999,0,"phone1"],{"put":"order seal"}]}}'::converge.lwwmap::bytea, NULL)::converge.op,
    ROW('phone1:2', 'phone1', 'public.task', '{"id":2}', 'n', 1, 0, '{}',
        '{"counts":{"phone1":3}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT id, title, converge.value(n) AS n FROM task ORDER BY id;

-- The repair: the title op is excluded, task 1 has its title back; the
-- history keeps the op (superseded, naming the repair) and the repair with
-- its reason.
SELECT applied AS applied_before FROM converge.stats \gset
SELECT converge.repair(ARRAY['phone1:1'], 'title typed into the wrong task') AS repair_id;
-- converge.stats counts one more applied op, the repair's own: the op it
-- took out was applied, and the counter never falls.
SELECT applied - :applied_before AS applied_since FROM converge.stats;
-- op_outcomes counts by the code of a reason: the repair's own text (on
-- its applied op) and its op id (on the op it superseded) are not codes.
SELECT outcome, reason FROM converge.op_outcomes WHERE outcome IN ('applied', 'superseded') ORDER BY 1;
SELECT id, title, converge.value(n) AS n FROM task ORDER BY id;
SELECT op_id, actor, target_table, outcome, reason FROM converge.op_log WHERE actor = 'phone1' OR target_table = 'converge.repair' ORDER BY seq;
SELECT * FROM converge.superseded;

-- An op named before it arrives is superseded on arrival, wherever.
SELECT converge.repair(ARRAY['phone1:9', 'phone2:1'], 'bad import') IS NOT NULL AS recorded;
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone1:9', 'phone1', 'public.task', '{"id":2}', 'n', 1, 0, '{}',
        '{"counts":{"phone1":40}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT id, title, converge.value(n) AS n FROM task ORDER BY id;
SELECT superseded FROM converge.stats;
-- A superseded op uses up its counter: the actor's frontier goes past it
-- (phone1 stays at 2 although its first op was taken out; phone2 reaches 2
-- although its first op was never applied).
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone2:1', 'phone2', 'public.task', '{"id":2}', 'n', 1, 0, '{}',
        '{"counts":{"phone2":1}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone2:2', 'phone2', 'public.task', '{"id":2}', 'n', 1, 0, '{}',
        '{"counts":{"phone2":2}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT converge.frontier() - 'lagos' AS frontier;

-- A counter op holds its actor's running totals: phone4 counted 1, then 10
-- by mistake (total 11), then 1 (total 12). Taking out the mistake alone
-- leaves its 10 in the value, carried by phone4:3, and the repair says so
-- (WARNING); the op is superseded all the same (a gcounter cannot count
-- down: counts that need correcting belong in a pncounter). A repair that
-- also names the later ops that carry a change takes it out, with no
-- warning: here phone4's first and last ops (phone4:3 carries phone4:1's
-- count).
SELECT op_id, outcome FROM converge.apply_batch(ARRAY[
    ROW('phone4:1', 'phone4', 'public.task', '{"id":1}', 'n', 1, 0, '{}',
        '{"counts":{"phone4":1}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone4:2', 'phone4', 'public.task', '{"id":1}', 'n', 1, 0, '{}',
        '{"counts":{"phone4":11}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone4:3', 'phone4', 'public.task', '{"id":1}', 'n', 1, 0, '{}',
        '{"counts":{"phone4":12}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT converge.repair(ARRAY['phone4:2'], 'ten counted by mistake') IS NOT NULL AS recorded;
SELECT converge.value(n) AS n FROM task WHERE id = 1;
SELECT converge.repair(ARRAY['phone4:1', 'phone4:3'], 'counted on the wrong task') IS NOT NULL AS recorded;
SELECT converge.value(n) AS n FROM task WHERE id = 1;
-- A pncounter op carries only the part it changed: phone5 counted 5 up,
-- 10 up by mistake, then 2 down. The decrement does not carry the
-- increments, so the mistake comes out (5 - 2 = 3), with no warning.
SET ROLE cv_depot;
CREATE TABLE part (id int PRIMARY KEY, stock converge.pncounter);
SELECT converge.replicate('part') IS NOT NULL AS replicated;
INSERT INTO part (id) VALUES (1);
RESET ROLE;
SELECT op_id, outcome FROM converge.apply_batch(ARRAY[
    ROW('phone5:1', 'phone5', 'public.part', '{"id":1}', 'stock', 1, 0, '{}',
        '{"p":{"phone5":5}}'::converge.pncounter::bytea, NULL)::converge.op,
    ROW('phone5:2', 'phone5', 'public.part', '{"id":1}', 'stock', 1, 0, '{}',
        '{"p":{"phone5":15}}'::converge.pncounter::bytea, NULL)::converge.op,
    ROW('phone5:3', 'phone5', 'public.part', '{"id":1}', 'stock', 1, 0, '{}',
        '{"n":{"phone5":2}}'::converge.pncounter::bytea, NULL)::converge.op]);
SELECT converge.value(stock) AS stock FROM part;
SELECT converge.repair(ARRAY['phone5:2'], 'ten parts counted twice') IS NOT NULL AS recorded;
SELECT converge.value(stock) AS stock FROM part;

-- Only nodes repair, through replication: a client's repair op is refused.
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone3:1', 'phone3', 'converge.repair', '{"reason":"mine"}', '', 1, 0, '{}',
        '\x0100', NULL)::converge.op]);

-- Errors: nothing to supersede, not an op_id, no reason; an op of a node
-- that is not applied here (its node would apply it regardless).
SELECT converge.repair('{}', 'nothing');
SELECT converge.repair(ARRAY['not an op'], 'typo');
SELECT converge.repair(ARRAY['phone1:2'], ' ');
SELECT converge.repair(ARRAY['phone1:2'], NULL);
SELECT converge.repair(NULL, 'nothing named');
SELECT converge.repair(ARRAY['lagos:99'], 'not made yet');

-- Compaction keeps the repairs (the history) and the superseded ops; an op
-- folded into a base can no longer be taken out.
SELECT ops_removed > 0 AS compacted FROM converge.compact();
SELECT op_id, outcome, reason FROM converge.op_log ORDER BY seq;
SELECT converge.repair(ARRAY['phone1:2'], 'too late');

\c regression
DROP DATABASE converge_regress_lagos;
DROP ROLE cv_depot;
