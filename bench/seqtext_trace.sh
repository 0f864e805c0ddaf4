#!/usr/bin/env bash
# SPEC section 8, seqtext row: a real typing trace (../shared/data/
# seph-blog1.json.gz: 137 993 patches, 140 876 insert/delete calls) replayed
# as SQL edits on a PL/pgSQL variable in one loop, next to the same edits
# with overlay() on a plain text variable, in one run on one throwaway
# server. Checks the final text against the trace's endContent, and
# reports the stored size of the final value in a replicated table, before
# and after converge.compact() (one node, no peers: every op is stable).
# Usage: bash bench/seqtext_trace.sh [runs, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/pg.sh
RUNS=${1:-3} PORT=${PORT:-55498}
TRACE=${TRACE:-../shared/data/seph-blog1.json.gz}
bench_up "$PORT"
DATA="$BENCH_DIR/trace"; mkdir -p "$DATA"
python3 - "$TRACE" "$DATA" <<'PY'
import csv, gzip, json, sys
d = json.load(gzip.open(sys.argv[1]))
with open(sys.argv[2] + "/patches.csv", "w", newline="") as f:
    w = csv.writer(f)
    i = 0
    for t in d["txns"]:
        for pos, dele, ins in t["patches"]:
            i += 1
            w.writerow([i, pos, dele, ins])
open(sys.argv[2] + "/end.txt", "w").write(d["endContent"])
PY
chmod -R a+r "$DATA"; chmod a+x "$DATA"
pq "$PORT" -d postgres >/dev/null <<SQL
CREATE EXTENSION converge;
SELECT converge.set_node('seph');
CREATE TABLE patch (i int PRIMARY KEY, pos int, del int, ins text);
\copy patch FROM '$DATA/patches.csv' WITH (FORMAT csv)
CREATE TABLE want (body text);
INSERT INTO want SELECT pg_read_file('$DATA/end.txt');
CREATE TABLE result (run int, kind text, secs float8, ok boolean, edits int);
CREATE TABLE note (id int PRIMARY KEY, body converge.seqtext);
SELECT converge.replicate('note');
-- The same value in a column compressed with lz4 (pglz gives up on it:
-- it finds no repeat in the first kilobyte).
CREATE TABLE note_lz4 (id int PRIMARY KEY, body converge.seqtext COMPRESSION lz4);
SELECT converge.replicate('note_lz4');
-- Only this node writes them: compact() may drop deleted characters
-- (tables offline clients may write keep them, docs/operations.md).
SELECT converge.set_client_writes('note', false);
SELECT converge.set_client_writes('note_lz4', false);
SQL
for run in $(seq 1 "$RUNS"); do
    pq "$PORT" -d postgres >/dev/null <<SQL
DO \$\$
DECLARE doc converge.seqtext; s text := ''; p record; t0 timestamptz; n int := 0;
BEGIN
    t0 := clock_timestamp();
    FOR p IN SELECT * FROM patch ORDER BY i LOOP
        IF p.del > 0 THEN doc := converge.delete(doc, p.pos, p.del); n := n + 1; END IF;
        IF p.ins <> '' THEN doc := converge.insert(doc, p.pos, p.ins); n := n + 1; END IF;
    END LOOP;
    INSERT INTO result SELECT $run, 'seqtext', extract(epoch FROM clock_timestamp() - t0), converge.value(doc) = w.body, n FROM want w;
    IF $run = 1 THEN INSERT INTO note VALUES (1, doc); INSERT INTO note_lz4 VALUES (1, doc); END IF;
    t0 := clock_timestamp(); n := 0;
    FOR p IN SELECT * FROM patch ORDER BY i LOOP
        IF p.del > 0 THEN s := overlay(s PLACING '' FROM p.pos + 1 FOR p.del); n := n + 1; END IF;
        IF p.ins <> '' THEN s := overlay(s PLACING p.ins FROM p.pos + 1 FOR 0); n := n + 1; END IF;
    END LOOP;
    INSERT INTO result SELECT $run, 'overlay', extract(epoch FROM clock_timestamp() - t0), s = w.body, n FROM want w;
END \$\$;
SQL
done
pq "$PORT" -d postgres <<'SQL'
SELECT kind, count(*) AS runs, bool_and(ok) AS final_text_equals_trace, min(edits) AS edits,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY secs)::numeric, 1) AS median_s,
       round(min(secs)::numeric, 1) AS min_s, round(max(secs)::numeric, 1) AS max_s,
       round(min(edits) / percentile_cont(0.5) WITHIN GROUP (ORDER BY secs)) AS edits_per_s
  FROM result GROUP BY kind ORDER BY kind DESC;
CREATE TEMP VIEW size AS
SELECT octet_length(w.body) AS text_bytes, octet_length(n.body::bytea) AS value_bytes,
       round(octet_length(n.body::bytea)::numeric / octet_length(w.body), 2) AS value_over_text,
       pg_column_size(n.body) AS stored_default, pg_column_size(z.body) AS stored_lz4,
       round(pg_column_size(z.body)::numeric / octet_length(w.body), 2) AS lz4_over_text,
       jsonb_array_length((n.body::text)::jsonb -> 'runs') AS runs, converge.value(n.body) = w.body AS text_ok
  FROM note n, note_lz4 z, want w;
SELECT 'before compact()' AS "when", * FROM size;
SELECT ops_removed FROM converge.compact();
SELECT 'after compact()' AS "when", * FROM size;
SQL
