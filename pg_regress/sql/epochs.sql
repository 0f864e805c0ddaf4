-- Epochs (SPEC section 5): converge.freeze, served by a table's authority,
-- starts a row's next epoch; ops of older epochs it did not include are
-- quarantined (frozen). On a node of its own (virginia, the authority),
-- with an application role owning its table. tests/cluster/tests/epochs.rs
-- shows the same on three nodes, a late edit included.
CREATE DATABASE converge_regress_virginia;
\c converge_regress_virginia
CREATE EXTENSION converge;
SET search_path = public, converge;
SELECT set_node('virginia') IS NOT NULL AS virginia_set;
CREATE ROLE cv_ward;
CREATE ROLE cv_reader;
GRANT CREATE ON SCHEMA public TO cv_ward;
-- freeze is administration (it holds this node's op counter to commit):
-- granted to the ward's role, not to PUBLIC.
GRANT EXECUTE ON FUNCTION converge.freeze(regclass, jsonb), converge.freeze_on(oid, jsonb) TO cv_ward;
SET ROLE cv_ward;
CREATE TABLE incident (id int PRIMARY KEY, title text, notes converge.orset, visits converge.gcounter);
SELECT converge.replicate('incident');
SELECT converge.set_authority('incident', NULL, 'virginia');
GRANT SELECT ON incident TO cv_reader;
INSERT INTO incident (id, title) VALUES (1, 'pump stopped'), (2, 'valve');
UPDATE incident SET notes = converge.add(notes, 'checked power') WHERE id = 1;
SELECT converge.epoch('incident', '{"id":1}') AS epoch;
RESET ROLE;

-- A tablet's edit made before the freeze applies.
SELECT op_id, outcome, reason FROM converge.apply(
    ROW('tab:1', 'tab', 'public.incident', '{"id":1}', 'visits', 1, 0, '{}',
        '{"counts":{"tab":1}}'::converge.gcounter::bytea, NULL)::converge.op);

-- Closing the incident freezes it: epoch 1. The freeze is an op of this
-- node; it records what the frozen state includes (every op up to each
-- actor's frontier here).
SET ROLE cv_ward;
SELECT converge.freeze('incident', '{"id": 1}') AS epoch;
SELECT converge.epoch('incident', '{"id":1}') AS epoch, converge.epoch('incident', '{"id":2}') AS other_row;
RESET ROLE;
SELECT op_id, target_key, epoch, convert_from(delta, 'UTF8') AS included
  FROM converge.op_log WHERE target_table = 'converge.freeze';

-- A late edit made in epoch 0 (the tablet had not seen the freeze) is
-- quarantined; one made in epoch 1 applies, and so does one that depends
-- on the quarantined op (it is done here: its counter is used up).
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('tab:2', 'tab', 'public.incident', '{"id":1}', 'visits', 1, 0, '{}',
        '{"counts":{"tab":5}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('tab:3', 'tab', 'public.incident', '{"id":1}', 'notes', 1, 1, '{tab:2}',
        converge.add(NULL::converge.orset, 'amended after close')::bytea, NULL)::converge.op,
    ROW('tab:4', 'tab', 'public.incident', '{"id":2}', 'visits', 1, 0, '{}',
        '{"counts":{"tab":9}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT id, title, converge.elements(notes) AS notes, converge.value(visits) AS visits FROM incident ORDER BY id;
SELECT op_id, epoch, outcome, reason FROM converge.quarantine ORDER BY op_id;
SELECT converge.frontier() -> 'tab' AS tab_frontier;

-- Local edits after the freeze carry the new epoch and apply normally.
SET ROLE cv_ward;
UPDATE incident SET title = 'pump stopped (closed)' WHERE id = 1;
RESET ROLE;
SELECT target_column, epoch FROM converge.op_log WHERE actor = 'virginia' ORDER BY seq DESC LIMIT 1;
-- A second freeze starts epoch 2.
SET ROLE cv_ward;
SELECT converge.freeze('incident', '{"id":1}') AS epoch;
RESET ROLE;
SELECT target_key, epoch, freeze_id FROM converge.frozen ORDER BY epoch;

-- An edit that claims an epoch this node has not reached (3: the row is
-- at 2) waits for that freeze, quarantined with new_epoch: a made-up epoch
-- must not escape the freezes before it. An epoch below 0 is invalid.
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('tab:6', 'tab', 'public.incident', '{"id":1}', 'visits', 1, 3, '{}',
        '{"counts":{"tab":7}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('tab:7', 'tab', 'public.incident', '{"id":2}', 'visits', 1, -1, '{}',
        '{"counts":{"tab":10}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT id, converge.value(visits) AS visits FROM incident ORDER BY id;
-- Once the row reaches epoch 3, the op is ready: the next apply (or the
-- worker's next pass, every 5 s) applies it. The tablet's count of 7
-- includes the 5 quarantined as frozen: counters carry running totals.
SET ROLE cv_ward;
SELECT converge.freeze('incident', '{"id":1}') AS epoch;
RESET ROLE;
SELECT op_id, missing FROM converge.pending;
SELECT * FROM converge.retry_pending();
SELECT op_id, outcome, reason FROM converge.op_log WHERE op_id = 'tab:6' ORDER BY seq;
SELECT id, converge.value(visits) AS visits FROM incident ORDER BY id;

-- Only a node's replication brings freezes: a client's is not_authority.
SELECT op_id, outcome, reason FROM converge.apply(
    ROW('tab:5', 'tab', 'converge.freeze', '{"table":"public.incident","key":{"id":2}}', '', 1, 1, '{}',
        convert_to('{"frontier":{},"extras":[]}', 'UTF8'), NULL)::converge.op);

-- Errors.
\set VERBOSITY sqlstate
SET ROLE cv_ward;
SELECT converge.freeze('incident', '{"id":3}');
SELECT converge.freeze('incident', '{"nope":1}');
SELECT converge.freeze('incident', NULL);
CREATE TABLE shift (id int PRIMARY KEY, lead text);
SELECT converge.freeze('shift', '{"id":1}');
SELECT converge.replicate('shift');
INSERT INTO shift VALUES (1, 'ana');
SELECT converge.freeze('shift', '{"id":1}');
SELECT converge.set_authority('shift', NULL, 'dublin');
SELECT converge.freeze('shift', '{"id":1}');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT converge.freeze('incident', '{"id":2}');
ROLLBACK;
SET ROLE cv_reader;
SELECT converge.freeze('incident', '{"id":2}');
RESET ROLE;
GRANT EXECUTE ON FUNCTION converge.freeze(regclass, jsonb), converge.freeze_on(oid, jsonb) TO cv_reader;
SET ROLE cv_reader;
SELECT converge.freeze('incident', '{"id":2}');
SELECT converge.epoch('incident', '{"id":1}') AS reader_sees_epoch;
\set VERBOSITY default
SET ROLE cv_ward;
SELECT converge.freeze('shift', '{"id":1}');
SELECT converge.freeze('incident', '{"id":3}');
SELECT converge.freeze('incident', '{"nope":1}');
DROP TABLE shift;
CREATE TABLE shift (id int PRIMARY KEY, lead text);
SELECT converge.freeze('shift', '{"id":1}');
RESET ROLE;

\c regression
DROP DATABASE converge_regress_virginia;
DROP ROLE cv_ward;
DROP ROLE cv_reader;
