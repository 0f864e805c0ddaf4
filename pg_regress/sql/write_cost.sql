-- What replication costs, counted rather than timed (SPEC section 8): the
-- rows each kind of change writes, table by table. A later change that
-- doubles the work of a replicated update or of an applied op shows here.
-- A case's counts are the tables' cumulative counts (pg_stat_all_tables)
-- after its transaction less those before it (mark()): this node's op
-- rows enter the log at the commit. flush() has the session send its
-- counts to the statistics before its next statement, which reads them
-- fresh (stats_fetch_consistency = none).
SET search_path = public, converge;
CREATE TABLE cost_t (id int PRIMARY KEY, n gcounter, note text);
SELECT replicate('cost_t');
INSERT INTO cost_t (id) SELECT generate_series(1, 100);
SET stats_fetch_consistency = none;
CREATE TEMP TABLE counted AS SELECT relid, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_all_tables;
CREATE PROCEDURE pg_temp.flush() LANGUAGE sql AS $$ SELECT pg_stat_force_next_flush() $$;
CREATE PROCEDURE pg_temp.mark() LANGUAGE sql AS $$
    DELETE FROM counted;
    INSERT INTO counted SELECT relid, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_all_tables;
$$;
CREATE TEMP VIEW written AS
    SELECT s.schemaname || '.' || s.relname AS "table", s.n_tup_ins - c.n_tup_ins AS inserted,
           s.n_tup_upd - c.n_tup_upd AS updated, s.n_tup_del - c.n_tup_del AS deleted
      FROM pg_stat_all_tables s JOIN counted c USING (relid)
     WHERE (s.n_tup_ins, s.n_tup_upd, s.n_tup_del) <> (c.n_tup_ins, c.n_tup_upd, c.n_tup_del)
       AND s.schemaname NOT IN ('pg_catalog', 'pg_toast') AND s.schemaname NOT LIKE 'pg\_temp%'
     ORDER BY 1;

-- incr of a CRDT column: the row itself and one op.
CALL pg_temp.flush();
CALL pg_temp.mark();
BEGIN;
UPDATE cost_t SET n = incr(n, 1) WHERE id = 1;
COMMIT;
CALL pg_temp.flush();
SELECT * FROM written;

-- A plain column of a replicated table: the row, one op (the row op) and
-- the row's last-writer-wins clock.
CALL pg_temp.flush();
CALL pg_temp.mark();
BEGIN;
UPDATE cost_t SET note = 'checked' WHERE id = 2;
COMMIT;
CALL pg_temp.flush();
SELECT * FROM written;

-- Both in one statement: two ops.
CALL pg_temp.flush();
CALL pg_temp.mark();
BEGIN;
UPDATE cost_t SET n = incr(n, 1), note = 'both' WHERE id = 3;
COMMIT;
CALL pg_temp.flush();
SELECT * FROM written;

-- An insert and a delete: one row op each, and the clock.
CALL pg_temp.flush();
CALL pg_temp.mark();
BEGIN;
INSERT INTO cost_t (id) VALUES (101);
DELETE FROM cost_t WHERE id = 4;
COMMIT;
CALL pg_temp.flush();
SELECT * FROM written;

-- A batch of 100 ops of a peer, one per row: one log row per op and one
-- write per row; row 4 was deleted above, so its op goes to the stash of
-- its tombstone (row_state) instead. The peer's frontier is written once
-- per batch.
CALL pg_temp.flush();
CALL pg_temp.mark();
BEGIN;
SELECT outcome, count(*) FROM apply_batch(ARRAY(
    SELECT ROW('costpeer:' || i, 'costpeer', 'cost_t', jsonb_build_object('id', i), 'n', 1, 0, '{}'::text[],
               format('{"counts":{"costpeer":%s}}', i)::gcounter::bytea, NULL)::op
      FROM generate_series(1, 100) i), 'costpeer') GROUP BY 1;
COMMIT;
CALL pg_temp.flush();
SELECT * FROM written;

-- 100 ops on 10 rows: one write per row (9 rows and the stash of row 4).
CREATE TEMP TABLE ten_rows AS SELECT ARRAY(
    SELECT ROW('costpeer:' || i, 'costpeer', 'cost_t', jsonb_build_object('id', i % 10 + 1), 'n', 1, 0, '{}'::text[],
               format('{"counts":{"costpeer":%s}}', i)::gcounter::bytea, NULL)::op
      FROM generate_series(101, 200) i) AS ops;
CALL pg_temp.flush();
CALL pg_temp.mark();
BEGIN;
SELECT outcome, count(*) FROM ten_rows, apply_batch(ten_rows.ops, 'costpeer') GROUP BY 1;
COMMIT;
CALL pg_temp.flush();
SELECT * FROM written;

-- The same batch again: duplicates, one log row each, no row written.
CALL pg_temp.flush();
CALL pg_temp.mark();
BEGIN;
SELECT outcome, count(*) FROM ten_rows, apply_batch(ten_rows.ops, 'costpeer') GROUP BY 1;
COMMIT;
CALL pg_temp.flush();
SELECT * FROM written;

-- 100 row ops (a plain column) of a peer on 10 rows: the rows only
-- change, so each row's ops are merged first and the row and its clock
-- are written once (set-wise); the newest note of each row wins. The rows
-- are locked and written by one transaction id: no row version gets a
-- MultiXact as its xmax (one per row would wear down the MultiXact space
-- and cost a lookup on each later read).
CREATE TEMP TABLE ten_row_ops AS SELECT ARRAY(
    SELECT ROW('costpeer:' || i, 'costpeer', 'cost_t', jsonb_build_object('id', i % 10 + 11), '', 1, 0, '{}'::text[],
               put(NULL::lwwmap, 'note', to_jsonb('note ' || i))::bytea, NULL)::op
      FROM generate_series(201, 300) i) AS ops;
CREATE EXTENSION pageinspect;
CALL pg_temp.flush();
CALL pg_temp.mark();
BEGIN;
SELECT outcome, count(*) FROM ten_row_ops, apply_batch(ten_row_ops.ops, 'costpeer') GROUP BY 1;
SELECT count(*) AS multixact_xmax
  FROM generate_series(0, pg_relation_size('cost_t') / current_setting('block_size')::int - 1) p,
       heap_page_items(get_raw_page('cost_t', p::int))
 WHERE t_infomask & 4096 <> 0;  -- HEAP_XMAX_IS_MULTI
COMMIT;
CALL pg_temp.flush();
SELECT * FROM written;
DROP EXTENSION pageinspect;
SELECT string_agg(note, ', ' ORDER BY id) AS notes FROM cost_t WHERE id BETWEEN 11 AND 20;

DROP TABLE cost_t;

-- A plain column beside long values stored out of line (a ticket's status
-- beside its notes, a CRDT value, and its details, a plain one): the row
-- op reads none of them. The trigger neither decodes a CRDT column the
-- UPDATE left as it was nor renders any column but those the row op puts
-- (counted as the blocks of the table's TOAST data the two updates read:
-- 24 with 4cea300's build, 12 with ecb9277's, which still compared and
-- rendered the details). Each row op carries the status alone, as before.
CREATE TABLE cost_doc (id int PRIMARY KEY, status text, details text, notes seqtext);
SELECT replicate('cost_doc');
INSERT INTO cost_doc SELECT 1, 'new', d, insert(NULL::seqtext, 0, d)
  FROM (SELECT string_agg(md5(i::text), ' ') AS d FROM generate_series(1, 300) i) t;
SELECT length(notes) AS characters, pg_column_size(details) > 2000 AND pg_column_size(notes) > 2000 AS both_long,
       pg_relation_size(reltoastrelid) > 0 AS stored_out_of_line
  FROM cost_doc, pg_class WHERE oid = 'cost_doc'::regclass;
CREATE TEMP VIEW toast_read AS
    SELECT coalesce(toast_blks_read, 0) + coalesce(toast_blks_hit, 0) AS blocks FROM pg_statio_all_tables WHERE relid = 'cost_doc'::regclass;
CALL pg_temp.flush();
CREATE TEMP TABLE toast_before AS SELECT blocks FROM toast_read;
BEGIN;
UPDATE cost_doc SET status = 'closed' WHERE id = 1;
COMMIT;
BEGIN;
UPDATE cost_doc SET status = 'reopened', notes = notes WHERE id = 1;
COMMIT;
CALL pg_temp.flush();
SELECT r.blocks - b.blocks AS toast_blocks_read FROM toast_read r, toast_before b;
SELECT target_column, to_jsonb(delta::lwwmap) AS row_op FROM converge.op_log
 WHERE target_table = 'public.cost_doc' AND counter > (SELECT min(counter) + 1 FROM converge.op_log WHERE target_table = 'public.cost_doc')
 ORDER BY counter;
-- An edit of the notes themselves: the mutator reads the value it edits,
-- and the trigger reads the old and the new value once each to make the
-- op's delta. Counted as above, which here also counts the UPDATE's own
-- TOAST work (the new value's chunks written, the old value's deleted),
-- most of the number: 25 with 4cea300's build, 29 with ecb9277's, which
-- read the notes twice and compared the details by their content.
CALL pg_temp.flush();
DELETE FROM toast_before;
INSERT INTO toast_before SELECT blocks FROM toast_read;
BEGIN;
UPDATE cost_doc SET notes = insert(notes, 0, 'Seen: ') WHERE id = 1;
COMMIT;
CALL pg_temp.flush();
SELECT r.blocks - b.blocks AS toast_blocks_read FROM toast_read r, toast_before b;
SELECT target_column, length(delta) < 200 AS a_small_delta FROM converge.op_log
 WHERE target_table = 'public.cost_doc' ORDER BY counter DESC LIMIT 1;
DROP VIEW toast_read;
DROP TABLE cost_doc;
