-- removes_only on an ormap column (SPEC section 5): removing a key or an
-- element of a key's set is the authority's; adds, increments and assigns
-- stay local everywhere. On a node of its own (dublin), with an
-- application role that owns its table; virginia decides removals.
CREATE DATABASE converge_regress_kit;
\c converge_regress_kit
CREATE EXTENSION converge;
SET search_path = public, converge;
SELECT set_node('dublin') IS NOT NULL AS dublin_set;
CREATE ROLE cv_kit;
GRANT CREATE ON SCHEMA public TO cv_kit;
SET ROLE cv_kit;
CREATE TABLE kit (id int PRIMARY KEY, parts converge.ormap);
SELECT converge.replicate('kit');
SELECT converge.set_authority('kit', 'parts', 'virginia', removes_only => true);
SELECT target_table, target_column, node, removes_only FROM converge.authorities;
INSERT INTO kit VALUES (1, NULL), (2, NULL);

-- Local changes that remove nothing: a counter's increments, a set's adds
-- (an element added again included) and a register's assigns (an
-- overwrite included).
UPDATE kit SET parts = converge.incr(parts, 'gauze', 5) WHERE id = 1;
UPDATE kit SET parts = converge.add(parts, 'warnings', 'latex') WHERE id = 1;
UPDATE kit SET parts = converge.assign(parts, 'note', '"check seals"') WHERE id = 1;
UPDATE kit SET parts = converge.incr(parts, 'gauze', 2) WHERE id = 1;
UPDATE kit SET parts = converge.decr(parts, 'gauze', 1) WHERE id = 1;
UPDATE kit SET parts = converge.add(converge.add(parts, 'warnings', 'latex'), 'warnings', 'sharps') WHERE id = 1;
UPDATE kit SET parts = converge.assign(parts, 'note', '"seals checked"') WHERE id = 1;
SELECT converge.to_jsonb(parts) FROM kit WHERE id = 1;
RESET ROLE;
-- Each op says, per key, what it superseded and what kind that was: the
-- counter's earlier marker, the register's earlier value; an add
-- supersedes nothing. (An op with nothing to say keeps format version 1.)
SELECT counter, get_byte(delta, 0) AS format, (delta::converge.ormap)::text::jsonb -> 'covers' AS covers
  FROM converge.op_log WHERE target_column = 'parts' ORDER BY seq;
-- A node's ops of every ormap column say it (so that nothing about them
-- changes while a removes_only authority is being set on every node).
-- What clients and nodes before 0.2.0 pull, changes_since(frontier),
-- leaves it out (format version 1, which they read, and which merges the
-- same); peers of this version ask for it, changes_since(frontier, true).
SET ROLE cv_kit;
CREATE TABLE kit_log (id int PRIMARY KEY, seen converge.ormap);
SELECT converge.replicate('kit_log');
INSERT INTO kit_log VALUES (1, converge.assign(NULL::converge.ormap, 'by', '"ana"'));
UPDATE kit_log SET seen = converge.assign(seen, 'by', '"ben"') WHERE id = 1;
-- converge.delta says what an overwrite superseded; what merge returns is
-- a state, which never does.
WITH d AS (SELECT converge.delta(converge.assign(seen, 'by', '"cy"'), seen) AS d FROM kit_log)
SELECT get_byte(d::bytea, 0) AS delta_format, get_byte(converge.merge(NULL, d)::bytea, 0) AS merged_format,
       (SELECT get_byte(converge.merge_agg(d)::bytea, 0) FROM d) AS merge_agg_format
  FROM d;
RESET ROLE;
SELECT l.counter, get_byte(l.delta, 0) AS logged, get_byte(c.delta, 0) AS pulled, get_byte(p.delta, 0) AS to_peers
  FROM converge.op_log l JOIN converge.changes_since('{}') c USING (op_id) JOIN converge.changes_since('{}', true) p USING (op_id)
 WHERE l.target_column = 'seen' ORDER BY l.seq;
-- Such an op, applied where its row does not exist yet, makes the row a
-- state as a merge would (format 1, nothing superseded), not a copy of the
-- delta. (A device's op on row 2, carrying the overwrite above.)
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('tablet:1', 'tablet', 'public.kit_log', '{"id":2}', 'seen', 1, 0, '{}',
        (SELECT delta FROM converge.op_log WHERE target_column = 'seen' ORDER BY seq DESC LIMIT 1), NULL)::converge.op]);
SELECT k.id, converge.to_jsonb(k.seen) AS seen, get_byte(k.seen::bytea, 0) AS stored_format,
       k.seen = converge.merge(NULL, l.delta::converge.ormap) AS as_merged, k.seen = l.delta::converge.ormap AS as_sent
  FROM kit_log k, converge.op_log l WHERE k.id = 2 AND l.op_id = 'tablet:1';

-- Removals here fail, naming the authority: an element, a key, and an
-- element added and removed in one statement.
SET ROLE cv_kit;
UPDATE kit SET parts = converge.remove(parts, 'warnings', 'latex') WHERE id = 1;
UPDATE kit SET parts = converge.remove(parts, 'note') WHERE id = 1;
UPDATE kit SET parts = converge.remove(converge.add(parts, 'spare', 'x'), 'spare', 'x') WHERE id = 1;
-- So does a statement that changes one counter or register twice: the
-- first change's marker, superseded by the second, is in neither the row
-- before nor the row after, and no one can say what it marked. Make such
-- changes one per statement (or one incr of the sum).
UPDATE kit SET parts = converge.decr(converge.incr(parts, 'gauze', 2), 'gauze', 1) WHERE id = 1;
SELECT converge.to_jsonb(parts) FROM kit WHERE id = 1;
RESET ROLE;

-- Ops of another actor (phone1, tagging its changes with its own dots as
-- the client crate does): an add applies; an overwrite of the note that
-- says it superseded the note's value applies; the same overwrite without
-- saying so is not_authority (its context covers a dot it does not
-- account for, which could be any key's).
SELECT e ->> 1 AS note_dot FROM kit, jsonb_array_elements(parts::text::jsonb -> 'entries' -> 'note' -> 'kinds') e
 WHERE id = 1 \gset
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone1:1', 'phone1', 'public.kit', '{"id":1}', 'parts', 1, 0, '{}',
        '{"entries": {"warnings": {"kinds": [["phone1", 1, "orset"]], "set": [["phone1", 1, "gloves"]]}},
          "context": {"phone1": [[1, 1]]}}'::converge.ormap::bytea, NULL)::converge.op,
    ROW('phone1:2', 'phone1', 'public.kit', '{"id":1}', 'parts', 1, 0, '{"phone1:1"}',
        format('{"entries": {"note": {"kinds": [["phone1", 2, "mvreg"]], "reg": [["phone1", 2, "seals broken"]]}},
                 "context": {"dublin": [[%s, %s]], "phone1": [[2, 2]]}, "covers": {"note": [["dublin", %s, "mvreg"]]}}',
               :note_dot, :note_dot, :note_dot)::converge.ormap::bytea, NULL)::converge.op,
    ROW('phone1:3', 'phone1', 'public.kit', '{"id":1}', 'parts', 1, 0, '{"phone1:2"}',
        format('{"entries": {"note": {"kinds": [["phone1", 3, "mvreg"]], "reg": [["phone1", 3, "seals broken"]]}},
                 "context": {"dublin": [[%s, %s]], "phone1": [[3, 3]]}}', :note_dot, :note_dot)::converge.ormap::bytea,
        NULL)::converge.op]) ORDER BY op_id;
SELECT converge.to_jsonb(parts) FROM kit WHERE id = 1;
-- Copying a whole value into another row is refused too: its context
-- covers what was superseded before (the counter's and the note's earlier
-- markers), which the copy cannot account for.
SET ROLE cv_kit;
UPDATE kit SET parts = (SELECT parts FROM kit WHERE id = 1) WHERE id = 2;

-- On the authority, removals are ordinary local changes. The same key
-- removal sent by phone1 is not_authority.
SELECT converge.set_authority('kit', 'parts', 'dublin', removes_only => true);
UPDATE kit SET parts = converge.remove(parts, 'warnings', 'latex') WHERE id = 1;
UPDATE kit SET parts = converge.remove(parts, 'note') WHERE id = 1;
SELECT converge.to_jsonb(parts) FROM kit WHERE id = 1;
RESET ROLE;
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone1:4', 'phone1', 'public.kit', '{"id":1}', 'parts', 1, 0, '{"phone1:3"}',
        (SELECT delta FROM converge.op_log WHERE target_column = 'parts' AND origin = 'local' ORDER BY seq DESC LIMIT 1),
        NULL)::converge.op]);

-- Bad calls: removes_only for a column of another type (22023).
SET ROLE cv_kit;
CREATE TABLE shelf (id int PRIMARY KEY, stock converge.pncounter, label text);
SELECT converge.replicate('shelf');
\set VERBOSITY sqlstate
SELECT converge.set_authority('shelf', 'stock', 'virginia', removes_only => true);
SELECT converge.set_authority('shelf', 'label', 'virginia', removes_only => true);
\set VERBOSITY default
RESET ROLE;
\c postgres
DROP DATABASE converge_regress_kit;
DROP ROLE cv_kit;
