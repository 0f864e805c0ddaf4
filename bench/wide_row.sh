#!/usr/bin/env bash
# A change of a plain column of a replicated table whose rows also hold a
# long seqtext (a ticket's status beside its notes), against the same update
# of a plain table whose rows hold the same text as a text column; and the
# same pair with a short text, so that the two ratios show whether the cost
# of the row op grows with the CRDT value beside it (before 2026-12-07 it
# did: the trigger rendered and decoded the whole seqtext on every change).
# pgbench, one client, server and client pinned to one CPU (as
# local_update.sh pins them), RUNS runs of SECS seconds, on one throwaway
# server (converge preloaded).
# Usage: bash bench/wide_row.sh [seconds per run, default 5] [runs, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/pg.sh
SECS=${1:-5} RUNS=${2:-3} ROWS=${ROWS:-100} CHARS=${CHARS:-20000} PORT=${PORT:-55496}
bench_up "$PORT" "shared_buffers = 512MB" "synchronous_commit = off" "shared_preload_libraries = 'converge'"
pq "$PORT" -d postgres >/dev/null <<SQL
CREATE EXTENSION converge;
SELECT converge.set_node('bench');
CREATE TABLE plain_long (id int PRIMARY KEY, status text, notes text);
CREATE TABLE repl_long (id int PRIMARY KEY, status text, notes converge.seqtext);
CREATE TABLE plain_short (id int PRIMARY KEY, status text, notes text);
CREATE TABLE repl_short (id int PRIMARY KEY, status text, notes converge.seqtext);
SELECT converge.replicate('repl_long'), converge.replicate('repl_short');
INSERT INTO repl_long SELECT i, 'new', converge.insert(NULL, 0, 'notes') FROM generate_series(1, $ROWS) i;
INSERT INTO repl_short SELECT i, 'new', converge.insert(NULL, 0, repeat('n', 50)) FROM generate_series(1, $ROWS) i;
-- Each long text typed as 100-character pieces at random places (many runs,
-- as a note edited over time has).
DO \$\$ BEGIN
    FOR k IN 1..($CHARS / 100) LOOP
        UPDATE repl_long SET notes = converge.insert(notes, (random() * converge.length(notes))::int,
                                                      left(md5(k || '.' || id) || md5(id || '.' || k) || md5(k::text) || md5(id::text), 100));
    END LOOP;
END \$\$;
INSERT INTO plain_long SELECT id, status, converge.value(notes) FROM repl_long;
INSERT INTO plain_short SELECT id, status, converge.value(notes) FROM repl_short;
VACUUM ANALYZE;
SQL
pq "$PORT" -d postgres -At -c "SELECT format('%s rows; long: %s characters, %s bytes stored (%s as text form); short: %s characters',
    count(*), max(converge.length(notes)), max(pg_column_size(notes)), max(length(notes::text)),
    (SELECT max(converge.length(notes)) FROM repl_short)) FROM repl_long"
for t in plain_long repl_long plain_short repl_short; do
    printf '\\set id random(1, %s)\n\\set s random(1, 20)\nUPDATE %s SET status = %s WHERE id = :id;\n' "$ROWS" "$t" "'s' || :s" > "$BENCH_DIR/$t.sql"
done
pm=$(head -1 "$BENCH_DIR/pg/postmaster.pid")
for p in $pm $(pgrep -P "$pm"); do taskset -pc 0 "$p" >/dev/null || true; done
tps() { taskset -c 0 pgbench -h 127.0.0.1 -p "$PORT" -U postgres -n -c 1 -T "$SECS" -f "$BENCH_DIR/$1.sql" postgres 2>/dev/null | awk '/^tps/ {print $3}'; }
stats() { sort -n | awk '{a[NR] = $1} END {printf "%.2f (%.2f-%.2f)", a[int((NR + 1) / 2)], a[1], a[NR]}'; }
declare -A R
for run in $(seq "$RUNS"); do
    for size in long short; do
        p=$(tps "plain_$size") v=$(tps "repl_$size")
        R[$size]+="$(echo "$p / $v" | bc -l) "
        printf 'run %s, %-5s: plain %8.0f tps, replicated %8.0f tps\n' "$run" "$size" "$p" "$v"
    done
done
for size in long short; do
    printf 'status update beside a %s text, replicated / plain time per transaction: %s\n' "$size" "$(echo "${R[$size]}" | tr ' ' '\n' | grep . | stats)"
done
