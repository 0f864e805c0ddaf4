-- The operation log and idempotent apply (SPEC section 3).
SET search_path = public, converge;
CREATE TABLE incident (id int PRIMARY KEY, title text DEFAULT 'untitled', tags orset, visits gcounter, note lwwreg);
CREATE TABLE unmarked (id int PRIMARY KEY, visits gcounter);
CREATE TABLE no_pk (visits gcounter);
SELECT replicate('no_pk');
SELECT replicate('incident');
SELECT table_name, key_columns, crdt_columns FROM replicated;

-- Local changes become ops of this node, whatever path they take.
INSERT INTO incident (id, tags) VALUES (1, add(NULL::orset, 'pump'));
UPDATE incident SET visits = incr(visits, 2) WHERE id = 1;
UPDATE incident SET visits = visits || '{"counts":{"dublin":5}}' WHERE id = 1;
UPDATE incident SET title = 'renamed' WHERE id = 1;   -- a plain column: a row op (last writer wins)
-- The trigger works whatever the search_path (names inside are qualified).
SET search_path = public;
UPDATE incident SET visits = converge.incr(visits, 0) WHERE id = 1;   -- no change: no op
UPDATE incident SET tags = converge.add(tags, 'valve') WHERE id = 1;
UPDATE incident SET tags = converge.remove(tags, 'valve') WHERE id = 1;
SET search_path = public, converge;
SELECT op_id, target_key, target_column,
       CASE WHEN target_column = '' THEN 'row: ' || array_to_string(keys(delta::lwwmap), ', ') ELSE delta::text END AS delta,
       outcome, origin
  FROM op_log ORDER BY seq;
SELECT frontier();
-- A transaction that rolls back gives its op counters back, and so does a
-- rolled-back savepoint: the next op continues the sequence, no gap.
BEGIN;
UPDATE incident SET visits = incr(visits, 1) WHERE id = 1;
SET CONSTRAINTS ALL IMMEDIATE;   -- the op trigger fires now; its op waits for the commit
ROLLBACK;
BEGIN;
SAVEPOINT s;
UPDATE incident SET title = 'not kept' WHERE id = 1;
SET CONSTRAINTS ALL IMMEDIATE;
ROLLBACK TO s;
COMMIT;
SELECT count(*) AS ops, max(counter) AS last_counter, frontier() AS frontier FROM op_log;

-- An op's text form round-trips.
SELECT o::text, o::text::op = o AS round_trips
  FROM (SELECT ROW('phone1:1', 'phone1', 'incident', '{"id":2}', 'visits', 1, 0, '{}',
                   '{"counts":{"phone1":3}}'::gcounter::bytea, NULL)::op AS o) s;

-- The binary form (converge-core's Op::encode, what converge-client sends).
SELECT op_decode(op_encode(o)) = o AS binary_round_trip, length(op_encode(o)) AS bytes
  FROM (SELECT ROW('phone1:1', 'phone1', 'incident', '{"id":2}', 'visits', 1, 0, '{}',
                   '{"counts":{"phone1":3}}'::gcounter::bytea, NULL)::op AS o) s;
SELECT op_decode('\x0140'::bytea);
SELECT op_decode('\x0105'::bytea);
SELECT op_encode(ROW('phone1:0', 'phone1', 'incident', '{"id":2}', 'visits', 1, 0, '{}', '\x00'::bytea, NULL)::op);

-- applied, then duplicate.
SELECT * FROM apply(ROW('phone1:1', 'phone1', 'incident', '{"id":2}', 'visits', 1, 0, '{}',
                        '{"counts":{"phone1":3}}'::gcounter::bytea, NULL)::op);
SELECT * FROM apply(ROW('phone1:1', 'phone1', 'incident', '{"id":2}', 'visits', 1, 0, '{}',
                        '{"counts":{"phone1":3}}'::gcounter::bytea, NULL)::op);
-- A child before its parent is buffered...
SELECT * FROM apply(ROW('phone1:3', 'phone1', 'incident', '{"id":2}', 'visits', 1, 0, '{phone1:2}',
                        '{"counts":{"phone1":9}}'::gcounter::bytea, NULL)::op);
SELECT op_id, missing FROM pending;
-- ...and applied, without any extra command, when the parent arrives.
SELECT * FROM apply(ROW('phone1:2', 'phone1', 'incident', '{"id":2}', 'tags', 1, 0, '{phone1:1}',
                        '{"context":{"phone1":[[2,2]]},"entries":[["phone1",2,"x"]]}'::orset::bytea, NULL)::op);
SELECT count(*) AS still_pending FROM pending;
-- The row was created by apply (other columns take their defaults), and the
-- applied ops were not recorded again as local ops.
SELECT id, title, elements(tags), value(visits) FROM incident ORDER BY id;
SELECT op_id, outcome, reason, origin FROM op_log WHERE origin <> 'local' ORDER BY seq;
SELECT frontier();

-- Pushing the same batch twice: the second time every op is a duplicate.
CREATE TEMP TABLE batch AS SELECT ARRAY[
    ROW('phone2:1', 'phone2', 'incident', '{"id":1}', 'tags', 1, 0, '{}',
        '{"context":{"phone2":[[1,1]]},"entries":[["phone2",1,"leak"]]}'::orset::bytea, NULL)::op,
    ROW('phone2:2', 'phone2', 'incident', '{"id":1}', 'note', 1, 0, '{phone2:1}',
        '{"write":{"ts":[1700000000000,0,"phone2"],"value":"seen at 3am"}}'::lwwreg::bytea, NULL)::op] AS ops;
SELECT * FROM apply_batch((SELECT ops FROM batch));
SELECT * FROM apply_batch((SELECT ops FROM batch));
SELECT elements(tags), value(note) FROM incident WHERE id = 1;

-- Malformed envelopes are rejected with a reason; the batch goes on.
SELECT * FROM apply_batch(ARRAY[
    ROW('no-counter', 'x', 'incident', '{"id":2}', 'visits', 1, 0, '{}', '\x010100'::bytea, NULL)::op,
    ROW('phone3:1', 'phone3', 'nosuch', '{"id":2}', 'visits', 1, 0, '{}', '\x010100'::bytea, NULL)::op,
    ROW('phone3:2', 'phone3', 'unmarked', '{"id":2}', 'visits', 1, 0, '{}', '\x010100'::bytea, NULL)::op,
    ROW('phone3:3', 'phone3', 'incident', '{"id":2}', 'title', 1, 0, '{}', '\x010100'::bytea, NULL)::op,
    ROW('phone3:4', 'phone3', 'incident', '{"id":2}', 'nope', 1, 0, '{}', '\x010100'::bytea, NULL)::op,
    ROW('phone3:5', 'phone3', 'incident', '{"id":2}', 'visits', 1, 0, '{}', '\x0101ff'::bytea, NULL)::op,
    ROW('phone3:6', 'phone3', 'incident', '{"id":2}', 'visits', 1, 0, '{}', '{"elements":["a"]}'::gset::bytea, NULL)::op,
    ROW('phone3:7', 'phone3', 'incident', '{"zz":2}', 'visits', 1, 0, '{}', '\x010100'::bytea, NULL)::op,
    ROW('phone3:8', 'other', 'incident', '{"id":2}', 'visits', 1, 0, '{}', '\x010100'::bytea, NULL)::op,
    ROW('phone3:9', 'phone3', 'incident', '{"id":2}', 'visits', 0, 0, '{}', '\x010100'::bytea, NULL)::op,
    ROW('phone3:10', 'phone3', 'incident', '{"id":2}', 'visits', 1, 0, '{not an id}', '\x010100'::bytea, NULL)::op,
    ROW('phone3:11', 'phone3', 'incident', '{"id":2}', 'visits', 1, 0, '{}', NULL, NULL)::op,
    ROW('phone3:12', 'phone3', 'incident', '{"id":2}', 'visits', 1, 0, '{}', '\x010101067068', NULL)::op
]::op[]) ORDER BY op_id;
SELECT * FROM op_outcomes ORDER BY outcome, reason;
SELECT count(*) AS kept_in_quarantine FROM quarantine;

-- A rejected op is kept and can be replayed after a repair.
SELECT replicate('unmarked');
SELECT * FROM replay('phone3:2');
SELECT value(visits) FROM unmarked;
SELECT * FROM replay('phone1:1');

-- Sync by frontier: what a client at this cursor lacks, parents first.
SELECT op_id, target_column FROM changes_since('{"madrid":2,"phone1":1}');
-- phone3:1 was rejected, so phone3's contiguous frontier is still 0 and the
-- applied phone3:2 is offered again: a frontier never claims a gap.
SELECT op_id FROM changes_since(frontier());
SELECT changes_since('[1]');
-- A cursor from before a compaction gets a clear answer, not a gap.
INSERT INTO log_horizon VALUES ('phone1', 2);
SELECT * FROM changes_since('{"phone1":1}');
\set VERBOSITY sqlstate
SELECT * FROM changes_since('{"phone1":1}');
\set VERBOSITY default
SELECT count(*) FROM changes_since('{"phone1":2,"madrid":3}');
DELETE FROM log_horizon;
SELECT s -> 'frontier' AS frontier, jsonb_array_length(s -> 'rows') AS rows FROM (SELECT snapshot('incident') s) v;
SELECT snapshot(NULL) IS NULL AS no_table_no_snapshot;

-- A long chain arriving backwards: each op waits for the one before it,
-- and the first one's arrival applies all 1 000 (pass after pass, not by
-- one nested call per link, which ran out of stack).
CREATE TABLE chain (id int PRIMARY KEY, visits gcounter);
SELECT replicate('chain');
SELECT outcome, count(*) FROM apply_batch(ARRAY(
    SELECT ROW('chain:' || g, 'chain', 'chain', '{"id":1}', 'visits', 1, 0, ARRAY['chain:' || (g - 1)],
               format('{"counts":{"chain":%s}}', g)::gcounter::bytea, NULL)::op
      FROM generate_series(1000, 2, -1) g))
 GROUP BY outcome;
SELECT outcome, count(*) FROM apply(ROW('chain:1', 'chain', 'chain', '{"id":1}', 'visits', 1, 0, '{}',
                                        '{"counts":{"chain":1}}'::gcounter::bytea, NULL)::op)
 GROUP BY outcome ORDER BY outcome;
SELECT value(visits) AS visits, (SELECT count(*) FROM pending) AS still_pending,
       frontier() -> 'chain' AS chain_frontier FROM chain;
-- An SQL caller naming a peer's origin proves nothing: the op is logged
-- (and would wait in pending) as claimed, never retried as that peer's.
SELECT * FROM apply(ROW('claimer:1', 'claimer', 'chain', '{"id":2}', 'visits', 1, 0, '{}',
                        '{"counts":{"claimer":1}}'::gcounter::bytea, NULL)::op, 'peer:dublin');
SELECT op_id, outcome, origin FROM op_log WHERE op_id = 'claimer:1';
-- apply_batch reads the op array itself: an empty or NULL array decides
-- nothing, a NULL origin is an error (the batch is not quietly dropped);
-- a NULL element or a deps array that is no list
-- is rejected with the rest of the batch applied; a key is logged in its
-- canonical form whatever form it came in.
SELECT count(*) AS decided FROM apply_batch('{}');
SELECT count(*) AS decided FROM apply_batch(NULL);
SELECT count(*) AS decided FROM apply_batch(ARRAY[ROW('claimer:2', 'claimer', 'chain', '{"id":2}', 'visits', 1, 0, '{}',
                                                      '{"counts":{"claimer":2}}'::gcounter::bytea, NULL)::op], NULL);
SELECT * FROM apply_batch(ARRAY[
    NULL::op,
    ROW('shape:1', 'shape', 'chain', '{"id":3}', 'visits', 1, 0, '{{a,b},{c,d}}', '{"counts":{"shape":1}}'::gcounter::bytea, NULL)::op,
    ROW('shape:2', 'shape', 'chain', '{"id": "3"}', 'visits', 1, 0, NULL, '{"counts":{"shape":2}}'::gcounter::bytea, NULL)::op,
    ROW('shape:3', 'shape', 'chain', '{"id": 4}', 'visits', 1, 0, '{}', '{"counts":{"shape":3}}'::gcounter::bytea, NULL)::op]);
SELECT op_id, target_key, outcome, reason FROM op_log WHERE actor IN ('shape', '') ORDER BY seq;
SELECT id, value(visits) FROM chain WHERE id IN (3, 4) ORDER BY id;
-- converge.max_value_bytes holds for what a batch merges into one row:
-- two ops within the limit each but over it together make the batch fail
-- (54000), and nothing of it is applied or logged.
CREATE TABLE big (id int PRIMARY KEY, tags gset);
SELECT replicate('big');
SET converge.max_value_bytes = 1024;
SELECT op_id, outcome, reason FROM apply_batch(ARRAY[
    ROW('big:1', 'big', 'big', '{"id":1}', 'tags', 1, 0, '{}', ('{"elements":["' || repeat('a', 600) || '"]}')::gset::bytea, NULL)::op,
    ROW('big:2', 'big', 'big', '{"id":1}', 'tags', 1, 0, '{}', ('{"elements":["' || repeat('b', 600) || '"]}')::gset::bytea, NULL)::op]);
RESET converge.max_value_bytes;
SELECT (SELECT count(*) FROM big) AS rows, (SELECT count(*) FROM op_log WHERE actor = 'big') AS logged;
-- A client's op behind one this node refuses in the same batch is refused
-- with it (dependency_rejected) instead of waiting for ever. The client
-- sends it again, under the same op_id, after the op before the refused
-- one, and it applies (visits goes from 1 to 3); the refused op's counter
-- stays a gap in the actor's frontier. A copy that waits in pending is a
-- duplicate when sent again as it is, and gives way to the same op sent
-- under other deps.
SELECT op_id, outcome, reason FROM apply_batch(ARRAY[
    ROW('orphan:1', 'orphan', 'chain', '{"id":5}', 'visits', 1, 0, '{}', '{"counts":{"orphan":1}}'::gcounter::bytea, NULL)::op,
    ROW('orphan:2', 'orphan', 'chain', '{"id":5}', 'nope', 1, 0, '{orphan:1}', '{"counts":{"orphan":2}}'::gcounter::bytea, NULL)::op,
    ROW('orphan:3', 'orphan', 'chain', '{"id":5}', 'visits', 1, 0, '{orphan:2}', '{"counts":{"orphan":3}}'::gcounter::bytea, NULL)::op]);
SELECT value(visits) AS visits FROM chain WHERE id = 5;
SELECT op_id, outcome, reason FROM apply(ROW('orphan:3', 'orphan', 'chain', '{"id":5}', 'visits', 1, 0, '{orphan:1}',
                                             '{"counts":{"orphan":3}}'::gcounter::bytea, NULL)::op);
SELECT value(visits) AS visits FROM chain WHERE id = 5;
SELECT op_id, outcome, reason FROM apply(ROW('orphan:5', 'orphan', 'chain', '{"id":5}', 'visits', 1, 0, '{orphan:4}',
                                             '{"counts":{"orphan":5}}'::gcounter::bytea, NULL)::op);
SELECT op_id, outcome, reason FROM apply(ROW('orphan:5', 'orphan', 'chain', '{"id":5}', 'visits', 1, 0, '{orphan:4}',
                                             '{"counts":{"orphan":5}}'::gcounter::bytea, NULL)::op);
SELECT op_id, outcome, reason FROM apply(ROW('orphan:5', 'orphan', 'chain', '{"id":5}', 'visits', 1, 0, '{orphan:3}',
                                             '{"counts":{"orphan":5}}'::gcounter::bytea, NULL)::op);
SELECT count(*) AS still_pending FROM pending WHERE op_id LIKE 'orphan:%';
SELECT op_id, outcome, reason FROM op_log WHERE actor = 'orphan' ORDER BY seq;
SELECT value(visits) AS visits, frontier() -> 'orphan' AS orphan_frontier FROM chain WHERE id = 5;
-- A client whose clock runs ahead: a last-writer-wins write (an lwwreg,
-- an lwwmap, a row op) timestamped more than converge.max_clock_skew
-- (5 minutes unless set) ahead of this node's clock is refused,
-- clock_skew. Merged, it would win over every write made elsewhere
-- until then, and drag every clock that saw it as far ahead. A write a
-- minute ahead, or from the past, applies; ops without a timestamp (a
-- counter) are not concerned.
SHOW converge.max_clock_skew;
SELECT (extract(epoch FROM now()) * 1000)::int8 + 60000 AS minute_ahead,
       (extract(epoch FROM now()) * 1000)::int8 + 600000 AS ten_minutes_ahead \gset
SELECT op_id, outcome, reason FROM apply_batch(ARRAY[
    ROW('skewed:1', 'skewed', 'incident', '{"id":7}', 'note', 1, 0, '{}',
        '{"write":{"ts":[4102444800000,0,"skewed"],"value":"from 2100"}}'::lwwreg::bytea, NULL)::op,
    ROW('skewed:2', 'skewed', 'incident', '{"id":7}', '', 1, 0, '{}',
        '{"entries":{"title":[[4102444800000,0,"skewed"],{"put":"from 2100"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('skewed:3', 'skewed', 'incident', '{"id":7}', 'visits', 1, 0, '{}', '{"counts":{"skewed":1}}'::gcounter::bytea, NULL)::op,
    ROW('skewed:4', 'skewed', 'incident', '{"id":7}', '', 1, 0, '{}',
        format('{"entries":{"title":[[%s,0,"skewed"],{"put":"a minute ahead"}]}}', :minute_ahead)::lwwmap::bytea, NULL)::op,
    ROW('skewed:5', 'skewed', 'incident', '{"id":7}', 'note', 1, 0, '{}',
        '{"write":{"ts":[1000,0,"skewed"],"value":"from 1970"}}'::lwwreg::bytea, NULL)::op]) ORDER BY op_id;
SELECT title, value(note) AS note, value(visits) AS visits FROM incident WHERE id = 7;
-- Only a superuser sets it (a client's own session must not lift it).
CREATE ROLE regress_skewed;
SET ROLE regress_skewed;
SET converge.max_clock_skew = -1;
RESET ROLE;
DROP ROLE regress_skewed;
-- A write ten minutes ahead is refused under the default and replayed
-- once the bound allows it (here raised to an hour; or once the wall
-- clock has caught up).
SELECT op_id, outcome, left(reason, 10) AS reason FROM apply(ROW('skewed:6', 'skewed', 'incident', '{"id":7}', 'note', 1, 0, '{}',
    format('{"write":{"ts":[%s,0,"skewed"],"value":"ten minutes ahead"}}', :ten_minutes_ahead)::lwwreg::bytea, NULL)::op);
SET converge.max_clock_skew = '1h';
SELECT op_id, outcome, reason FROM replay('skewed:6');
RESET converge.max_clock_skew;
SELECT title, value(note) AS note FROM incident WHERE id = 7;
-- Each refused op holds its actor's frontier back, and with it the
-- compaction of the actor's later ops (ops_held), until it is replayed or
-- given up: converge.frontier_gaps lists them (orphan:2 above too).
SELECT actor, counter, op_id, outcome, left(reason, 14) AS reason, ops_held FROM frontier_gaps
 WHERE actor IN ('orphan', 'skewed') ORDER BY actor, counter;
SELECT repair(ARRAY['skewed:1', 'skewed:2'], 'written by a clock a century ahead') IS NOT NULL AS given_up;
SELECT op_id FROM frontier_gaps WHERE actor IN ('orphan', 'skewed') ORDER BY op_id;
SELECT frontier() -> 'skewed' AS skewed_frontier;
-- An op taken back in when its actor's registry entry changes is not
-- judged for its clock again (it may have come from a peer, whose node
-- judged it): late:2, accepted while the bound was lifted, still waits for
-- late:1 after a revocation that spares it.
SET converge.max_clock_skew = -1;
SELECT op_id, outcome, reason FROM apply(ROW('late:2', 'late', 'incident', '{"id":7}', 'note', 1, 0, '{late:1}',
    '{"write":{"ts":[4102444800000,0,"late"],"value":"far"}}'::lwwreg::bytea, NULL)::op);
RESET converge.max_clock_skew;
SELECT revoke_actor('late', 5) IS NOT NULL AS revoked;
SELECT op_id, outcome, reason FROM op_log WHERE actor = 'late' ORDER BY seq;
SELECT op_id, missing FROM pending WHERE actor = 'late';
-- A caller naming that origin itself only claims it, and is judged.
SELECT op_id, outcome, left(reason, 10) AS reason FROM apply(ROW('late:3', 'late', 'incident', '{"id":7}', 'note', 1, 0, '{}',
    '{"write":{"ts":[4102444800000,0,"late"],"value":"far"}}'::lwwreg::bytea, NULL)::op, 'reverify');
SELECT origin FROM op_log WHERE op_id = 'late:3';
DROP TABLE incident, unmarked, no_pk, chain, big;
