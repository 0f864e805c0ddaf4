-- Replication (SPEC section 4): row ops, the output plugin's stream, and two
-- databases of this server replicating as two nodes (madrid here, dublin in
-- a second database) through real logical slots and replication origins.
SET search_path = public, converge;

-- Rows: an insert is a row op even with every CRDT column NULL; a change of
-- a non-CRDT column is a row op with that column only; a delete is a row
-- tombstone that keeps the CRDT state.
CREATE TABLE ticket (id int PRIMARY KEY, title text, severity int DEFAULT 3,
                       hits gcounter, tags orset);
SELECT replicate('ticket');
SELECT table_name, key_columns, crdt_columns, other_columns FROM replicated WHERE table_name = 'ticket'::regclass;
SELECT pg_create_logical_replication_slot('regress_slot', 'converge') IS NOT NULL AS slot_created;
INSERT INTO ticket (id, title) VALUES (1, 'fire');
UPDATE ticket SET hits = incr(hits, 2), title = 'big fire' WHERE id = 1;
UPDATE ticket SET hits = incr(hits, 1) WHERE id = 1;        -- CRDT column only: no row op
INSERT INTO ticket (id, title, tags) VALUES (2, 'flood', add(NULL::orset, 'pump'));
DELETE FROM ticket WHERE id = 2;
SELECT target_key, live, keys(clock) AS clock_keys, stash <> '{}' AS stashed
  FROM row_state WHERE tbl = 'ticket'::regclass ORDER BY target_key::text;
-- Back from the tombstone: the key resumes its CRDT state.
INSERT INTO ticket (id, title) VALUES (2, 'flood again');
SELECT id, title, severity, value(hits) AS hits, elements(tags) AS tags FROM ticket ORDER BY id;
UPDATE ticket SET id = 3 WHERE id = 1;

-- What a peer receives: one message per op, one per commit, in commit order.
SELECT d ->> 'op' AS op, d ->> 'column' AS col, d -> 'key' AS key, (d ->> 'bytes')::int < 200 AS small,
       d ? 'commit' AS is_commit
  FROM (SELECT describe_change(data) AS d FROM pg_logical_slot_peek_binary_changes('regress_slot', NULL, NULL)) s;
SELECT count(*) FROM pg_logical_slot_peek_binary_changes('regress_slot', NULL, NULL, 'origins', 'all');
SELECT count(*) FROM pg_logical_slot_peek_binary_changes('regress_slot', NULL, NULL, 'origins', 'elsewhere');
SELECT count(*) FROM pg_logical_slot_peek_binary_changes('regress_slot', NULL, NULL, 'format', 'json');
SELECT describe_change('\x5a00'::bytea);
SELECT pg_drop_replication_slot('regress_slot');

-- Peers: bad calls.
SELECT add_peer('bad name', 'dbname=x');
SELECT add_peer('madrid', 'dbname=x');
SELECT sync('nobody');
SELECT remove_peer('nobody');
SELECT pause_peer('nobody');
DO $$ BEGIN
    PERFORM add_peer('ghost', 'host=127.0.0.1 port=1 connect_timeout=2');
EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'unreachable peer: SQLSTATE %', SQLSTATE;
END $$;
SELECT wait_for_peers('1 second');   -- no peers: trivially caught up

-- A second node: database converge_regress_rdub plays dublin.
CREATE DATABASE converge_regress_rdub;
\c converge_regress_rdub
CREATE EXTENSION converge;
SET search_path = public, converge;
SELECT set_node('dublin') IS NOT NULL AS dublin_set;
CREATE TABLE ticket (id int PRIMARY KEY, title text, severity int DEFAULT 3, hits gcounter, tags orset);
SELECT replicate('ticket');
INSERT INTO ticket (id, title, hits) VALUES (7, 'made in dublin', incr(NULL::gcounter, 5));
SELECT add_peer('madrid', format('host=%s port=%s dbname=regression user=%s',
                                 current_setting('unix_socket_directories'), current_setting('port'), current_user));
-- add_peer copied what madrid had:
SELECT id, title, value(hits) AS hits, elements(tags) AS tags FROM ticket ORDER BY id;
\c regression
SET search_path = public, converge;
SELECT add_peer('madrid', 'dbname=x');   -- this node's own name
SELECT add_peer('dublin', format('host=%s port=%s dbname=converge_regress_rdub user=%s',
                                 current_setting('unix_socket_directories'), current_setting('port'), current_user));
SELECT id, title, value(hits) AS hits FROM ticket ORDER BY id;
SELECT add_peer('virginia', format('host=%s port=%s dbname=converge_regress_rdub user=%s',
                                   current_setting('unix_socket_directories'), current_setting('port'), current_user));
SELECT name, state, slot LIKE 'converge_madrid_%' AS slot_named, lag_bytes IS NULL OR lag_bytes >= 0 AS lag_ok FROM peers;

-- Concurrent edits on both nodes, then one pull round each way.
UPDATE ticket SET hits = incr(hits, 10), tags = add(tags, 'm') WHERE id = 1;
UPDATE ticket SET title = 'madrid title' WHERE id = 7;
DELETE FROM ticket WHERE id = 2;
\c converge_regress_rdub
SET search_path = public, converge;
UPDATE ticket SET hits = incr(hits, 100), tags = add(tags, 'd') WHERE id = 1;
UPDATE ticket SET title = 'dublin title' WHERE id = 7;   -- later: wins
UPDATE ticket SET tags = add(tags, 'late') WHERE id = 2; -- concurrent with the delete: delete wins
SELECT sync('madrid') > 0 AS pulled;
\c regression
SET search_path = public, converge;
SELECT sync('dublin') > 0 AS pulled;
SELECT sync('dublin') AS nothing_left;
SELECT wait_for_peers('5 seconds');
SELECT id, title, severity, value(hits) AS hits, elements(tags) AS tags FROM ticket ORDER BY id;
SELECT string_agg(format('%s|%s|%s|%s|%s', id, title, severity, hits, tags), E'\n' ORDER BY id) AS madrid_rows FROM ticket \gset
\c converge_regress_rdub
SET search_path = public, converge;
SELECT id, title, severity, value(hits) AS hits, elements(tags) AS tags FROM ticket ORDER BY id;
SELECT string_agg(format('%s|%s|%s|%s|%s', id, title, severity, hits, tags), E'\n' ORDER BY id) = :'madrid_rows' AS identical
  FROM ticket;
-- Nothing came back to the node that made it.
SELECT count(*) AS own_ops_received FROM op_log WHERE actor = node() AND origin <> 'local';
SELECT name, state, ops_received > 0 AS received, last_error FROM peers;
\c regression
SET search_path = public, converge;
SELECT count(*) AS own_ops_received FROM op_log WHERE actor = node() AND origin <> 'local';

-- Without the worker, wait_for_peers looks at the slots: after a round of
-- more than one peek's worth (20 000 changes), a later op is still seen
-- (and the next sync takes it).
CREATE TABLE bulk (id int PRIMARY KEY, n gcounter);
SELECT replicate('bulk');
\c converge_regress_rdub
SET search_path = public, converge;
CREATE TABLE bulk (id int PRIMARY KEY, n gcounter);
SELECT replicate('bulk');
INSERT INTO bulk (id) SELECT generate_series(1, 20001);
\c regression
SET search_path = public, converge;
SELECT sync('dublin') AS pulled;
\c converge_regress_rdub
SET search_path = public, converge;
UPDATE bulk SET n = incr(n, 1) WHERE id = 1;
\c regression
SET search_path = public, converge;
SELECT wait_for_peers('1 second') AS caught_up;
SELECT sync('dublin') AS pulled;
SELECT wait_for_peers('1 second') AS caught_up;
SELECT count(*) AS rows, sum(value(n)) AS n FROM bulk;
-- A conninfo may also be a URI, as libpq takes it (add_peer again with it).
SELECT add_peer('dublin', format('postgresql://%s:%s/converge_regress_rdub?user=%s',
                                 replace(current_setting('unix_socket_directories'), '/', '%2F'),
                                 current_setting('port'), current_user));
\c converge_regress_rdub
SET search_path = public, converge;
UPDATE bulk SET n = incr(n, 1) WHERE id = 2;
\c regression
SET search_path = public, converge;
SELECT sync('dublin') AS pulled;
SELECT name, state, conninfo LIKE 'postgresql://%' AS uri FROM peers ORDER BY name;

-- A node restored from an older backup (here: its own ops taken out of
-- its log) and added again before it writes: the peer's copy brings its
-- newer ops back (they are its own, not a client's under its name, and
-- add_peer takes them), and its next op goes on after them.
\c converge_regress_rdub
SET search_path = public, converge;
SELECT count(*) AS own_ops FROM op_log WHERE actor = 'dublin' \gset
SELECT pause_peer('madrid');
DELETE FROM op_log WHERE actor = 'dublin';
SELECT coalesce(frontier() ->> 'dublin', 'none') AS restored_counter;
SELECT add_peer('madrid', format('host=%s port=%s dbname=regression user=%s',
                                 current_setting('unix_socket_directories'), current_setting('port'), current_user));
SELECT count(*) = :own_ops AS own_ops_back FROM op_log WHERE actor = 'dublin';
UPDATE ticket SET hits = incr(hits, 1) WHERE id = 7;
SELECT op_id = 'dublin:' || (:own_ops + 1) AS next_op_after_them FROM op_log WHERE actor = 'dublin' ORDER BY counter DESC LIMIT 1;
\c regression
SET search_path = public, converge;

-- Peer administration a superuser granted to an operator role writes
-- converge's tables and origins as their owner: the operator needs no
-- right on them. What a peer sends is applied for the operator, with its
-- rights: one that may not read bulk (the writes read the row) is
-- refused the whole round, and nothing of it is applied; granted SELECT,
-- it applies it all.
\c converge_regress_rdub
SET search_path = public, converge;
UPDATE bulk SET n = incr(n, 1) WHERE id = 3;
\c regression
SET search_path = public, converge;
CREATE ROLE cv_operator;
GRANT EXECUTE ON FUNCTION sync(text), pause_peer(text), remove_peer(text) TO cv_operator;
GRANT SELECT, INSERT, UPDATE, DELETE ON ticket TO cv_operator;
GRANT INSERT, UPDATE ON bulk TO cv_operator;
SET ROLE cv_operator;
SELECT sync('dublin') AS pulled;
RESET ROLE;
GRANT SELECT ON bulk TO cv_operator;
SET ROLE cv_operator;
SELECT sync('dublin') AS pulled;
RESET ROLE;
SELECT value(n) AS n FROM bulk WHERE id = 3;
-- remove_peer drops the slot on the peer and the origin here.
SET ROLE cv_operator;
SELECT pause_peer('dublin');
SELECT name, state FROM peers;
SELECT remove_peer('dublin');
RESET ROLE;
DROP OWNED BY cv_operator;
DROP ROLE cv_operator;
SELECT count(*) AS slots FROM pg_replication_slots WHERE slot_name LIKE 'converge_madrid_%';
SELECT count(*) AS origins FROM pg_replication_origin WHERE roname LIKE 'converge_%_dublin';
\c converge_regress_rdub
SELECT converge.remove_peer('madrid');
\c regression
SELECT count(*) AS slots_left FROM pg_replication_slots;
SELECT count(*) AS origins_left FROM pg_replication_origin;
DROP DATABASE converge_regress_rdub;

-- A node's op ids are its name and a counter from 1. A name a client has
-- already used (here, while no node had it) is refused as a peer's, both
-- ways: the new node's own ops would reuse the client's op ids and every
-- node would drop them as duplicates.
CREATE TABLE visit (id int PRIMARY KEY, n converge.gcounter);
SELECT converge.replicate('visit');
-- (A caller's origin 'local', which marks a node's own ops, is only claimed.)
SELECT outcome FROM converge.apply(ROW('kiosk:1', 'kiosk', 'visit', '{"id": 1}', 'n', 1, 0, '{}',
                                       '{"counts":{"kiosk":1}}'::converge.gcounter::bytea, NULL)::converge.op, 'local');
SELECT origin FROM converge.op_log WHERE op_id = 'kiosk:1';
CREATE DATABASE converge_regress_rkiosk;
\c converge_regress_rkiosk
CREATE EXTENSION converge;
SELECT converge.set_node('kiosk') IS NOT NULL AS kiosk_set;
SELECT converge.add_peer('madrid', format('host=%s port=%s dbname=regression user=%s',
                                          current_setting('unix_socket_directories'), current_setting('port'), current_user));
\c regression
SELECT converge.add_peer('kiosk', format('host=%s port=%s dbname=converge_regress_rkiosk user=%s',
                                         current_setting('unix_socket_directories'), current_setting('port'), current_user));
SELECT count(*) AS slots, (SELECT count(*) FROM converge.peers) AS peers FROM pg_replication_slots;
DROP DATABASE converge_regress_rkiosk;
DROP TABLE visit;

-- A node that joins a peer whose tables' client writes differ from its own
-- is warned, both ways: the side that closed a table may have dropped row
-- tombstones a client's late edit would need. madrid closed desk and
-- shelf; lima closed shelf and stool: desk and stool are named.
CREATE TABLE desk (id int PRIMARY KEY, n converge.gcounter);
CREATE TABLE shelf (id int PRIMARY KEY, n converge.gcounter);
CREATE TABLE stool (id int PRIMARY KEY, n converge.gcounter);
SELECT converge.replicate('desk'), converge.replicate('shelf'), converge.replicate('stool');
SELECT converge.set_client_writes('desk', false);
SELECT converge.set_client_writes('shelf', false);
CREATE DATABASE converge_regress_rlima;
\c converge_regress_rlima
CREATE EXTENSION converge;
SELECT converge.set_node('lima') IS NOT NULL AS lima_set;
CREATE TABLE desk (id int PRIMARY KEY, n converge.gcounter);
CREATE TABLE shelf (id int PRIMARY KEY, n converge.gcounter);
CREATE TABLE stool (id int PRIMARY KEY, n converge.gcounter);
SELECT converge.replicate('desk'), converge.replicate('shelf'), converge.replicate('stool');
SELECT converge.set_client_writes('shelf', false);
SELECT converge.set_client_writes('stool', false);
SELECT converge.add_peer('madrid', format('host=%s port=%s dbname=regression user=%s',
                                          current_setting('unix_socket_directories'), current_setting('port'), current_user));
SELECT converge.remove_peer('madrid');
\c regression
DROP DATABASE converge_regress_rlima;
DROP TABLE desk, shelf, stool;

-- Keys have one JSON form per key column type, whoever wrote the op.
SET search_path = public, converge;
SELECT outcome, reason FROM apply(ROW('phone9:1', 'phone9', 'ticket', '{"id": "7"}', 'hits', 1, 0, '{}',
                                      '{"counts":{"phone9":2}}'::gcounter::bytea, NULL)::op);
SELECT target_key FROM op_log WHERE op_id = 'phone9:1';
SELECT outcome, reason FROM apply(ROW('phone9:2', 'phone9', 'ticket', '{"id": 7, "extra": 1}', 'hits', 1, 0, '{}',
                                      '{"counts":{"phone9":3}}'::gcounter::bytea, NULL)::op);
SELECT outcome, reason FROM apply(ROW('phone9:3', 'phone9', 'ticket', '{"id": "seven"}', 'hits', 1, 0, '{}',
                                      '{"counts":{"phone9":4}}'::gcounter::bytea, NULL)::op);
SELECT value(hits) FROM ticket WHERE id = 7;
-- A row op's "$live" is true or false; anything else is refused, so no two
-- nodes (or releases) can read it differently. The row stays as it was.
SELECT outcome, reason FROM apply(ROW('phone9:4', 'phone9', 'ticket', '{"id": 7}', '', 1, 0, '{}',
                                      put(NULL::lwwmap, '$live', '0')::bytea, NULL)::op);
SELECT id, title FROM ticket WHERE id = 7;
-- Date and time keys are refused: their text depends on session settings.
CREATE TABLE dated (day date PRIMARY KEY, n gcounter);
SELECT replicate('dated');
DROP TABLE dated;
-- So are bytea and floating-point keys (bytea_output, extra_float_digits),
-- and such types under a domain or in an array.
CREATE DOMAIN day AS date;
CREATE TABLE days (d day[] PRIMARY KEY);
SELECT replicate('days');
CREATE TABLE blob (k bytea PRIMARY KEY);
SELECT replicate('blob');
CREATE TABLE reading_at (k float8 PRIMARY KEY);
SELECT replicate('reading_at');
DROP TABLE days, blob, reading_at;
DROP DOMAIN day;
-- When a table is first replicated, also such types in a range or a
-- composite type, and the object name types (reg*: their text depends on
-- search_path).
CREATE TABLE booking (during daterange PRIMARY KEY);
SELECT replicate('booking');
CREATE TYPE stamped AS (n int, at timestamptz);
CREATE TABLE stamped_rows (k stamped PRIMARY KEY);
SELECT replicate('stamped_rows');
CREATE TABLE per_table (t regclass PRIMARY KEY);
SELECT replicate('per_table');
DROP TABLE booking, stamped_rows, per_table;
DROP TYPE stamped;
-- Tables whose writes would not all pass their own op trigger are refused:
-- partitioned, with inheritance children, temporary or unlogged. A
-- partition, or a child, is a table of its own, and can be replicated.
CREATE TABLE parted (id int PRIMARY KEY, note text) PARTITION BY RANGE (id);
CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100);
SELECT replicate('parted');
SELECT replicate('parted_low');
INSERT INTO parted VALUES (1, 'through the parent');
SELECT target_table, target_key FROM op_log WHERE target_table LIKE '%parted%' ORDER BY seq;
CREATE TABLE kin (id int PRIMARY KEY);
CREATE TABLE kin_child (extra text) INHERITS (kin);
SELECT replicate('kin');
ALTER TABLE kin_child ADD PRIMARY KEY (id);
SELECT replicate('kin_child');
CREATE TEMP TABLE scratch (id int PRIMARY KEY);
SELECT replicate('scratch');
CREATE UNLOGGED TABLE fast (id int PRIMARY KEY);
SELECT replicate('fast');
-- A domain over a converge type would be taken for a plain column, whose
-- concurrent changes overwrite each other: refused too.
CREATE DOMAIN tally AS gcounter;
CREATE TABLE tallied (id int PRIMARY KEY, n tally);
SELECT replicate('tallied');
-- So would an array of one (checked when the table is first replicated).
CREATE TABLE tallies (id int PRIMARY KEY, n gcounter, m gcounter[]);
SELECT replicate('tallies');
-- And a column of one added to a replicated table.
ALTER TABLE tallies DROP COLUMN m;
SELECT replicate('tallies');
ALTER TABLE tallies ADD COLUMN m gcounter[];
ALTER TABLE tallies ADD COLUMN note text, ADD COLUMN spans int4range;
SELECT crdt_columns, other_columns FROM replicated WHERE table_name = 'tallies'::regclass;
DROP TABLE parted, kin, kin_child, scratch, fast, tallied, tallies;
DROP DOMAIN tally;
-- A replicated table's converge triggers stay on, and the table logged:
-- switching one off, renaming or dropping it, or SET UNLOGGED, is refused
-- to its owner (the writes would reach no other node). A superuser may (a
-- restore does).
CREATE ROLE regress_keeper;
CREATE TABLE logbook (id int PRIMARY KEY, note text);
ALTER TABLE logbook OWNER TO regress_keeper;
SELECT replicate('logbook');
SET ROLE regress_keeper;
ALTER TABLE logbook DISABLE TRIGGER converge_record_ops;
ALTER TABLE logbook DISABLE TRIGGER USER;
ALTER TABLE logbook ENABLE REPLICA TRIGGER converge_record_ops;
ALTER TABLE logbook DISABLE TRIGGER converge_no_truncate;
ALTER TRIGGER converge_record_ops ON logbook RENAME TO quiet;
DROP TRIGGER converge_record_ops ON logbook;
DROP TRIGGER converge_no_truncate ON logbook;
ALTER TABLE logbook SET UNLOGGED;
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'logbook'::regclass ORDER BY 1;
ALTER TABLE logbook ENABLE ALWAYS TRIGGER converge_record_ops;
ALTER TABLE logbook ENABLE TRIGGER converge_record_ops;
ALTER TABLE logbook ADD COLUMN seen bool;
RESET ROLE;
ALTER TABLE logbook DISABLE TRIGGER USER;
ALTER TABLE logbook ENABLE TRIGGER USER;
DROP TABLE logbook;
DROP ROLE regress_keeper;
-- A table that has rows already: replicate warns, once (rows made before
-- are not ops, and no peer receives them).
CREATE TABLE seeded (id int PRIMARY KEY);
INSERT INTO seeded VALUES (1);
SELECT replicate('seeded');
SELECT replicate('seeded');
DROP TABLE seeded;
DROP TABLE ticket;

-- A batch of row ops: rows that stay present and live are written
-- set-wise, each row's ops merged first (per column the newest write wins,
-- whatever the batch order; an older write loses to what the row has);
-- rows that die, come back or are new go op by op, in batch order.
-- (These writes are timestamped in 2100, so that they are newer than this
-- node's; the bound on clients' clocks, ops.sql, is lifted for them.)
SET converge.max_clock_skew = -1;
CREATE TABLE board (id int PRIMARY KEY, title text, owner text);
SELECT replicate('board');
INSERT INTO board VALUES (1, 'one', 'ann'), (2, 'two', 'bo'), (3, 'three', 'cy'), (5, 'five', 'di');
DELETE FROM board WHERE id = 5;
SELECT op_id, outcome, reason FROM apply_batch(ARRAY[
    ROW('tab:1', 'tab', 'board', '{"id":1}', '', 1, 0, '{}',
        '{"entries":{"title":[[4102444800000,0,"tab"],{"put":"one, newest"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:2', 'tab', 'board', '{"id":1}', '', 1, 0, '{}',
        '{"entries":{"title":[[4102444700000,0,"tab"],{"put":"one, newer"}],
                     "owner":[[4102444700000,0,"tab"],{"put":"eve"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:3', 'tab', 'board', '{"id":2}', '', 1, 0, '{}',
        '{"entries":{"title":[[1000,0,"tab"],{"put":"stale"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:4', 'tab', 'board', '{"id":3}', '', 1, 0, '{}',
        '{"entries":{"title":[[4102444700000,0,"tab"],{"put":"three, edited"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:5', 'tab', 'board', '{"id":3}', '', 1, 0, '{}',
        '{"entries":{"$live":[[4102444800000,0,"tab"],{"put":false}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:6', 'tab', 'board', '{"id":4}', '', 1, 0, '{}',
        '{"entries":{"title":[[4102444700000,0,"tab"],{"put":"four"}],
                     "owner":[[4102444700000,0,"tab"],{"put":"fay"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:7', 'tab', 'board', '{"id":5}', '', 1, 0, '{}',
        '{"entries":{"$live":[[4102444800000,0,"tab"],{"put":true}],
                     "title":[[4102444800000,0,"tab"],{"put":"five again"}]}}'::lwwmap::bytea, NULL)::op
]) ORDER BY op_id;
SELECT * FROM board ORDER BY id;
SELECT target_key, live FROM row_state WHERE tbl = 'board'::regclass ORDER BY target_key;
-- A batch whose keys all name existing rows (edits, the common case) locks
-- and writes them with one statement each; each row takes its own ops.
SELECT op_id, outcome, reason FROM apply_batch(ARRAY[
    ROW('tab:10', 'tab', 'board', '{"id":4}', '', 1, 0, '{}',
        '{"entries":{"title":[[4102444900000,0,"tab"],{"put":"four, edited"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:11', 'tab', 'board', '{"id":2}', '', 1, 0, '{}',
        '{"entries":{"owner":[[4102444900000,0,"tab"],{"put":"gil"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:12', 'tab', 'board', '{"id":5}', '', 1, 0, '{}',
        '{"entries":{"owner":[[4102444900000,0,"tab"],{"put":"hal"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:13', 'tab', 'board', '{"id":1}', '', 1, 0, '{}',
        '{"entries":{"title":[[4102444900000,0,"tab"],{"put":"one, last"}]}}'::lwwmap::bytea, NULL)::op
]) ORDER BY op_id;
SELECT * FROM board ORDER BY id;
-- Edits where one key has no row here: that lock is given up (no row
-- stays locked) and the batch goes the way of inserts; the row is made
-- with the columns its op puts.
SELECT op_id, outcome, reason FROM apply_batch(ARRAY[
    ROW('tab:14', 'tab', 'board', '{"id":2}', '', 1, 0, '{}',
        '{"entries":{"title":[[4102445000000,0,"tab"],{"put":"two, edited"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:15', 'tab', 'board', '{"id":9}', '', 1, 0, '{}',
        '{"entries":{"title":[[4102445000000,0,"tab"],{"put":"nine"}]}}'::lwwmap::bytea, NULL)::op
]) ORDER BY op_id;
SELECT * FROM board ORDER BY id;
-- An edit the table refuses (a CHECK) fails the batch's one statement;
-- then op by op, only that op is rejected and the others apply.
ALTER TABLE board ADD CONSTRAINT board_title_check CHECK (title <> 'forbidden');
SELECT op_id, outcome, reason FROM apply_batch(ARRAY[
    ROW('tab:16', 'tab', 'board', '{"id":1}', '', 1, 0, '{}',
        '{"entries":{"title":[[4102445100000,0,"tab"],{"put":"forbidden"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:17', 'tab', 'board', '{"id":4}', '', 1, 0, '{}',
        '{"entries":{"title":[[4102445100000,0,"tab"],{"put":"four, allowed"}]}}'::lwwmap::bytea, NULL)::op
]) ORDER BY op_id;
SELECT * FROM board ORDER BY id;
SELECT target_key, live FROM row_state WHERE tbl = 'board'::regclass ORDER BY target_key;
DROP TABLE board;
-- Two keys naming one row (a numeric key: 1 and 1.0 are equal) are one
-- row's ops: the row and its clock take both, and the newest label wins.
CREATE TABLE gauge (id numeric PRIMARY KEY, label text, n gcounter);
SELECT replicate('gauge');
INSERT INTO gauge VALUES (1, 'first');
SELECT op_id, outcome, reason FROM apply_batch(ARRAY[
    ROW('tab:8', 'tab', 'gauge', '{"id":1.0}', '', 1, 0, '{}',
        '{"entries":{"label":[[4102444800000,0,"tab"],{"put":"newest"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:9', 'tab', 'gauge', '{"id":1}', '', 1, 0, '{}',
        '{"entries":{"label":[[4102444700000,0,"tab"],{"put":"older"}]}}'::lwwmap::bytea, NULL)::op
]) ORDER BY op_id;
SELECT id, label FROM gauge;
SELECT count(*) AS clocks FROM row_state WHERE tbl = 'gauge'::regclass;
-- So do a CRDT column's: tab's 2 and pad's 5 make 7, written to the row
-- once.
SELECT op_id, outcome, reason FROM apply_batch(ARRAY[
    ROW('tab:18', 'tab', 'gauge', '{"id":1.0}', 'n', 1, 0, '{}', '{"counts":{"tab":2}}'::gcounter::bytea, NULL)::op,
    ROW('pad:1', 'pad', 'gauge', '{"id":1}', 'n', 1, 0, '{}', '{"counts":{"pad":5}}'::gcounter::bytea, NULL)::op
]) ORDER BY op_id;
SELECT id, label, value(n) AS n FROM gauge;
DROP TABLE gauge;
-- So are a uuid in capitals or braces and its lower-case form, and a
-- character(n) key with and without its padding: logged in the form the
-- column prints (which the local insert's op has too), one clock each.
CREATE TABLE badge (id uuid PRIMARY KEY, label text);
SELECT replicate('badge');
INSERT INTO badge VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'first');
SELECT op_id, outcome, reason FROM apply_batch(ARRAY[
    ROW('tab:30', 'tab', 'badge', '{"id":"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"}', '', 1, 0, '{}',
        '{"entries":{"label":[[4102444800000,0,"tab"],{"put":"newest"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:31', 'tab', 'badge', '{"id":"{a0eebc999c0b4ef8bb6d6bb9bd380a11}"}', '', 1, 0, '{}',
        '{"entries":{"label":[[4102444700000,0,"tab"],{"put":"older"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:32', 'tab', 'badge', '{"id":"a0eebc99-9c0b"}', '', 1, 0, '{}',
        '{"entries":{"label":[[4102444700000,0,"tab"],{"put":"no uuid"}]}}'::lwwmap::bytea, NULL)::op
]) ORDER BY op_id;
SELECT id, label FROM badge;
SELECT target_key FROM row_state WHERE tbl = 'badge'::regclass;
SELECT DISTINCT target_key FROM op_log WHERE target_table = 'public.badge' AND outcome = 'applied';
DROP TABLE badge;
CREATE TABLE tag (code char(4) PRIMARY KEY, label text);
SELECT replicate('tag');
INSERT INTO tag VALUES ('ab', 'first');
SELECT op_id, outcome, reason FROM apply_batch(ARRAY[
    ROW('tab:33', 'tab', 'tag', '{"code":"ab"}', '', 1, 0, '{}',
        '{"entries":{"label":[[4102444800000,0,"tab"],{"put":"newest"}]}}'::lwwmap::bytea, NULL)::op,
    ROW('tab:34', 'tab', 'tag', '{"code":"ab  "}', '', 1, 0, '{}',
        '{"entries":{"label":[[4102444700000,0,"tab"],{"put":"older"}]}}'::lwwmap::bytea, NULL)::op
]) ORDER BY op_id;
SELECT code, label FROM tag;
SELECT target_key FROM row_state WHERE tbl = 'tag'::regclass;
DROP TABLE tag;
-- Keys whose equal values differ in text (citext, a nondeterministic
-- collation) are refused when a table is first replicated.
CREATE COLLATION nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE person (name text COLLATE nocase PRIMARY KEY);
SELECT replicate('person');
DROP TABLE person;
DROP COLLATION nocase;
CREATE EXTENSION citext;
CREATE TABLE handle (h citext PRIMARY KEY);
SELECT replicate('handle');
DROP TABLE handle;
DROP EXTENSION citext;

-- A key inserted again and deleted in one transaction keeps its stash: the
-- insert resumes it, the delete stashes it again with the row's own state,
-- as every node applying the two ops does; a later insert resumes it.
CREATE TABLE meter (id int PRIMARY KEY, tags orset);
SELECT replicate('meter');
INSERT INTO meter VALUES (1, add(NULL::orset, 'first'));
DELETE FROM meter;
BEGIN;
INSERT INTO meter VALUES (1, add(NULL::orset, 'second'));
DELETE FROM meter;
COMMIT;
SELECT live, stash <> '{}' AS stashed FROM row_state WHERE tbl = 'meter'::regclass;
INSERT INTO meter (id) VALUES (1);
SELECT id, elements(tags) AS tags FROM meter;
-- The same with an update between (the insert's row version is followed
-- to the deleted one), and with the delete rolled back to a savepoint
-- (the row stays, and resumes).
INSERT INTO meter VALUES (2, add(NULL::orset, 'p')), (3, add(NULL::orset, 's'));
DELETE FROM meter WHERE id IN (2, 3);
BEGIN;
INSERT INTO meter VALUES (2, add(NULL::orset, 'q'));
UPDATE meter SET tags = add(tags, 'r') WHERE id = 2;
DELETE FROM meter WHERE id = 2;
INSERT INTO meter VALUES (3, add(NULL::orset, 't'));
SAVEPOINT keep;
DELETE FROM meter WHERE id = 3;
ROLLBACK TO keep;
COMMIT;
INSERT INTO meter (id) VALUES (2);
SELECT id, elements(tags) AS tags FROM meter ORDER BY id;
-- TRUNCATE records no ops (it fires no row trigger): refused, and nothing
-- is gone. DELETE deletes on every node.
TRUNCATE meter;
SELECT count(*) FROM meter;
DROP TABLE meter;
