-- seqtext: collaborative text (SPEC section 2).
SET search_path = public, converge;
-- Edits by position; positions count characters (code points) from 0.
SELECT value(t), length(t) FROM (SELECT insert(NULL::seqtext, 0, 'Pump failure') t) v;
SELECT value(insert(insert(NULL::seqtext, 0, 'Pump failure'), 4, ' house')) AS inserted,
       value(insert(insert(NULL::seqtext, 0, 'Pump'), 4, ', bay 4')) AS appended,
       value(delete(insert(NULL::seqtext, 0, 'Pump failure'), 4, 8)) AS deleted,
       value(delete(insert(NULL::seqtext, 0, 'abc'), 3, 0)) AS empty_delete_at_end;
SELECT value(t), length(t), octet_length(value(t)) FROM (SELECT insert(insert(NULL::seqtext, 0, 'añb€'), 2, 'ü') t) v;
-- NULL is the empty text for mutators; readers of NULL are NULL.
SELECT value(delete(NULL::seqtext, 0, 0)), value(NULL::seqtext), length(NULL::seqtext);
SELECT '{}'::seqtext = delete(NULL::seqtext, 0, 0) AS empty, insert(NULL::seqtext, 0, '')::text AS empty_insert;
-- Typing: one character at a time is one run in the stored form.
WITH RECURSIVE typed(i, t) AS (SELECT 0, NULL::seqtext
    UNION ALL SELECT i + 1, insert(t, i, substr('hello', i + 1, 1)) FROM typed WHERE i < 5)
SELECT value(t), jsonb_array_length((t::text)::jsonb -> 'runs') AS runs FROM typed WHERE i = 5;
-- Outside the text (22023), NULL arguments (22004).
\set VERBOSITY sqlstate
SELECT insert(insert(NULL::seqtext, 0, 'abc'), 4, 'x');
SELECT insert(NULL::seqtext, -1, 'x');
SELECT delete(insert(NULL::seqtext, 0, 'abc'), 2, 2);
SELECT delete(insert(NULL::seqtext, 0, 'abc'), 4, 0);
SELECT delete(NULL::seqtext, 0, -1);
SELECT insert(NULL::seqtext, 0, NULL);
SELECT insert(NULL::seqtext, NULL, 'x');
\set VERBOSITY default
SELECT insert(insert(NULL::seqtext, 0, 'abc'), 4, 'x');
SELECT delete(insert(NULL::seqtext, 0, 'abc'), 2, 2);

-- Concurrent inserts at one place (lisbon typed "ab"; oslo inserted "12"
-- after the a, madrid "XYZ" after the a): all kept, each run unbroken, the
-- same order whichever way the merge goes.
CREATE TEMP TABLE st AS SELECT
    '{"lamport":2,"nodes":["lisbon"],"runs":[[0,1,2,1,null,false,"ab"]]}'::seqtext AS base,
    '{"lamport":4,"nodes":["lisbon","oslo"],"runs":[[0,1,1,1,null,false,"a"],[1,1,2,3,[0,1],false,"12"],[0,2,1,2,[0,1],false,"b"]]}'::seqtext AS oslo;
SELECT value(oslo) AS oslo, value(madrid) AS madrid, value(madrid || oslo) AS merged,
       (madrid || oslo) = (oslo || madrid) AS same_both_ways
  FROM (SELECT oslo, insert(base, 1, 'XYZ') AS madrid FROM st OFFSET 0) v;
-- A delete removes exactly what its node saw: oslo's concurrent "XY"
-- inside the deleted range survives.
SELECT value(delete(b, 1, 4)) AS madrid, value(o) AS oslo, value(delete(b, 1, 4) || o) AS merged,
       (delete(b, 1, 4) || o) = (o || delete(b, 1, 4)) AS same_both_ways
  FROM (SELECT '{"lamport":6,"nodes":["lisbon"],"runs":[[0,1,6,1,null,false,"abcdef"]]}'::seqtext b,
               '{"lamport":8,"nodes":["lisbon","oslo"],"runs":[[0,1,3,1,null,false,"abc"],[1,1,2,7,[0,3],false,"XY"],[0,4,3,4,[0,3],false,"def"]]}'::seqtext o) v;

-- merge, ||, delta, merge_agg, =, jsonb.
SELECT value(merge(NULL, insert(NULL::seqtext, 0, 'x'))), merge(NULL::seqtext, NULL) IS NULL AS null_null;
SELECT insert(NULL::seqtext, 0, 'note')::jsonb;
SELECT value(merge(old, delta(new, old))) = value(new) AS delta_merges, delta(new, new)::text AS no_change
  FROM (SELECT t AS old, insert(t, 3, '!') AS new FROM (SELECT insert(NULL::seqtext, 0, 'abc') t) v) w;
SELECT value(merge_agg(t)) FROM (SELECT oslo t FROM st UNION ALL SELECT base FROM st UNION ALL SELECT NULL) v;
SELECT merge_agg(t) IS NULL AS none FROM (SELECT NULL::seqtext t) v;
-- One keystroke in a 100 000-character note: its delta is a few dozen bytes.
CREATE TEMP TABLE big AS SELECT insert(NULL::seqtext, 0, repeat('x', 100000)) AS t;
SELECT length(t), octet_length(delta(insert(t, 50000, 'k'), t)::bytea) < 200 AS keystroke_under_200_bytes,
       octet_length(delete(t, 50000, 1)::bytea) - octet_length(t::bytea) < 200 AS delete_grows_little
  FROM big;

-- Text and binary input are strict.
\set VERBOSITY sqlstate
SELECT '{"runs":[[0,1,1,1,null,false,"a"]]}'::seqtext;
SELECT '{"lamport":1,"nodes":["lisbon"],"runs":[[0,1,2,1,null,false,"a"]]}'::seqtext;
SELECT '{"lamport":2,"nodes":["lisbon"],"runs":[[0,1,1,1,null,false,"a"],[0,2,1,2,[0,1],false,"b"]]}'::seqtext;
SELECT '{"lamport":2,"nodes":["lisbon"],"runs":[[0,1,2,1,null,true,"ab"]]}'::seqtext;
SELECT '{"lamport":2,"nodes":["lisbon"],"runs":[[0,1,2,1,null,false,"ab"]],"extra":1}'::seqtext;
SELECT '\x010a00'::bytea::seqtext;
SELECT '\x0109'::bytea::seqtext;
\set VERBOSITY default
SELECT '{"lamport":2,"nodes":["lisbon"],"runs":[[0,1,1,1,null,false,"a"],[0,2,1,2,[0,1],false,"b"]]}'::seqtext;
SELECT value(insert(NULL::seqtext, 0, 'round trip')::bytea::seqtext), value(insert(NULL::seqtext, 0, 'round trip')::text::seqtext);

-- In a replicated table every edit is an op whose delta is the edit.
CREATE TABLE note (id int PRIMARY KEY, body seqtext);
SELECT replicate('note');
INSERT INTO note VALUES (1, insert(NULL::seqtext, 0, 'Pump leaks'));
UPDATE note SET body = insert(body, 4, ' still') WHERE id = 1;
UPDATE note SET body = delete(body, 0, 5) WHERE id = 1;
SELECT value(body) FROM note;
SELECT target_column, octet_length(delta) < 80 AS small FROM op_log WHERE target_table = 'public.note' ORDER BY seq;
\set VERBOSITY sqlstate
UPDATE note SET body = '{}' WHERE id = 1;
\set VERBOSITY default
DROP TABLE note;
