#!/usr/bin/env bash
# SPEC section 7, fourth row: remote delta apply throughput, one core, in
# batches of 1 000 ops (converge.apply_batch), next to the plain-SQL
# equivalent (an INSERT .. ON CONFLICT DO UPDATE of a bigint per op) on the
# same rows, in one run on one throwaway server. Each batch commits.
# Then the same for row ops (a text column of a replicated table, last
# writer wins; ROW_OPS of them, default OPS / 5) against an upsert of text
# (ROW_MIX, ROW_ABSENT: see row_batches below).
# Usage: bash bench/apply_throughput.sh [ops, default 50000]
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/pg.sh
OPS=${1:-50000} PORT=${PORT:-55497}
ROW_OPS=${ROW_OPS:-$((OPS / 5))} ROW_MIX=${ROW_MIX:-0} ROW_ABSENT=${ROW_ABSENT:-0}
bench_up "$PORT" "shared_buffers = 512MB" "synchronous_commit = off"
pq "$PORT" -d postgres <<SQL
CREATE EXTENSION converge;
SELECT converge.set_node('bench') IS NOT NULL AS node_set;
CREATE TABLE counters (id int PRIMARY KEY, n converge.gcounter);
CREATE TABLE plain (id int PRIMARY KEY, n bigint);
SELECT converge.replicate('counters');
CREATE TABLE notes (id int PRIMARY KEY, note text);
CREATE TABLE plain_notes (id int PRIMARY KEY, note text);
SELECT converge.replicate('notes');
-- Row ops of one remote actor: an lwwmap delta putting the text column.
-- With ROW_MIX=N, after the first batch one op in N is for a new key: an
-- insert ("\$live" put), or with ROW_ABSENT=1 an op that only puts the
-- column, for a key with no row and no row state here (it makes the row).
CREATE TABLE row_batches AS
SELECT (i - 1) / 1000 AS b,
       array_agg(ROW('tablet:' || i, 'tablet', 'notes', jsonb_build_object('id', CASE WHEN new THEN 100000 + i ELSE i % 1000 END),
                     '', 1, 0, '{}'::text[],
                     CASE WHEN new AND $ROW_ABSENT = 0
                          THEN converge.put(converge.put(NULL::converge.lwwmap, '\$live', 'true'), 'note', to_jsonb('note ' || i))
                          ELSE converge.put(NULL::converge.lwwmap, 'note', to_jsonb('note ' || i)) END::bytea, NULL)::converge.op
                 ORDER BY i) AS ops
  FROM generate_series(1, $ROW_OPS) i, LATERAL (SELECT $ROW_MIX > 0 AND i > 1000 AND i % greatest($ROW_MIX, 1) = 0 AS new) m
 GROUP BY 1;
-- Ops from one remote actor, 1 000 rows, in batches of 1 000.
CREATE TABLE batches AS
SELECT (i - 1) / 1000 AS b,
       array_agg(ROW('phone:' || i, 'phone', 'counters', jsonb_build_object('id', i % 1000), 'n', 1, 0, '{}'::text[],
                     format('{"counts":{"phone":%s}}', i)::converge.gcounter::bytea, NULL)::converge.op ORDER BY i) AS ops
  FROM generate_series(1, $OPS) i GROUP BY 1;
-- Each batch in its own transaction, as a puller or a client would send it.
CREATE TABLE timing (what text, secs float8);
CREATE PROCEDURE run_batches() LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz; b record;
BEGIN
    t0 := clock_timestamp();
    FOR b IN SELECT x.ops FROM batches x ORDER BY x.b LOOP
        PERFORM count(*) FROM converge.apply_batch(b.ops, 'bench');
        COMMIT;
    END LOOP;
    INSERT INTO timing VALUES ('converge', extract(epoch FROM clock_timestamp() - t0));
    COMMIT;
    t0 := clock_timestamp();
    FOR b IN SELECT x.ops FROM batches x ORDER BY x.b LOOP
        INSERT INTO plain SELECT (o.target_key->>'id')::int, 1 FROM unnest(b.ops) o
            ON CONFLICT (id) DO UPDATE SET n = plain.n + 1;
        COMMIT;
    END LOOP;
    INSERT INTO timing VALUES ('plain', extract(epoch FROM clock_timestamp() - t0));
    COMMIT;
    t0 := clock_timestamp();
    FOR b IN SELECT x.ops FROM row_batches x ORDER BY x.b LOOP
        PERFORM count(*) FROM converge.apply_batch(b.ops, 'bench');
        COMMIT;
    END LOOP;
    INSERT INTO timing VALUES ('converge rows', extract(epoch FROM clock_timestamp() - t0));
    COMMIT;
    t0 := clock_timestamp();
    FOR b IN SELECT x.ops FROM row_batches x ORDER BY x.b LOOP
        INSERT INTO plain_notes SELECT (o.target_key->>'id')::int, o.op_id FROM unnest(b.ops) o
            ON CONFLICT (id) DO UPDATE SET note = EXCLUDED.note;
        COMMIT;
    END LOOP;
    INSERT INTO timing VALUES ('plain rows', extract(epoch FROM clock_timestamp() - t0));
END \$\$;
CALL run_batches();
SELECT format('apply_batch: %s ops in %s s = %s ops/s; plain upsert of the same rows: %s rows/s',
              $OPS, round(c.secs::numeric, 2), round($OPS / c.secs), round($OPS / p.secs)) AS result
  FROM timing c, timing p WHERE c.what = 'converge' AND p.what = 'plain';
SELECT format('apply_batch of row ops: %s ops in %s s = %s ops/s; plain upsert of text on the same rows: %s rows/s',
              $ROW_OPS, round(c.secs::numeric, 2), round($ROW_OPS / c.secs), round($ROW_OPS / p.secs)) AS result
  FROM timing c, timing p WHERE c.what = 'converge rows' AND p.what = 'plain rows';
SELECT count(*) FILTER (WHERE outcome = 'applied') AS applied FROM converge.op_log WHERE origin = 'bench';
SELECT count(*) AS rows_with_the_last_note FROM notes WHERE note LIKE 'note %' AND id = (substr(note, 6)::int % 1000);
SQL
