#!/usr/bin/env bash
# Replicated updates with durable commits (fsync on, synchronous_commit on,
# PostgreSQL's defaults) against the same update of an unreplicated table,
# at 1, 2 and 16 clients, every side in the same run, each measured RUNS
# times. The local-update benchmark (local_update.sh) runs with commits
# that do not wait for the disk, to measure CPU; this one measures what a
# default server does when several sessions write.
#
#   counter  incr on a gcounter of a replicated table   vs  n = n + 1 on a bigint
#   note     a text column of a replicated table (row op) vs the same on a plain table
#
# Each node's ops take their counters under a lock held to the end of the
# transaction (they commit in counter order); src/durable.rs releases it
# before the commit's WAL flush. Without that, every replicated write of a
# node waited for the flush of the one before it.
# Usage: bash bench/durable_commits.sh [seconds per run, default 8] [runs, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/pg.sh
SECS=${1:-8} RUNS=${2:-3} ROWS=${ROWS:-10000} PORT=${PORT:-55477} CLIENTS=${CLIENTS:-"1 2 16"}
bench_up "$PORT" "shared_buffers = 512MB" "fsync = on" "synchronous_commit = on" "shared_preload_libraries = 'converge'"
pq "$PORT" -d postgres <<SQL
CREATE EXTENSION converge;
SELECT converge.set_node('bench') IS NOT NULL AS node_set;
CREATE TABLE plain_counter (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note text);
CREATE TABLE repl_counter (id int PRIMARY KEY, n converge.gcounter, note text);
INSERT INTO plain_counter (id) SELECT generate_series(1, $ROWS);
INSERT INTO repl_counter (id) SELECT generate_series(1, $ROWS);
SELECT converge.replicate('repl_counter');
VACUUM ANALYZE;
SQL
script() { printf '\\set id random(1, %s)\n\\set t random(1, 1000000)\n%s\n' "$ROWS" "$2" > "$BENCH_DIR/$1.sql"; }
script plain_counter "UPDATE plain_counter SET n = n + 1 WHERE id = :id;"
script repl_counter "UPDATE repl_counter SET n = converge.incr(n, 1) WHERE id = :id;"
script plain_note "UPDATE plain_counter SET note = 'n' || :t WHERE id = :id;"
script repl_note "UPDATE repl_counter SET note = 'n' || :t WHERE id = :id;"
tps() {
    local j=$(($2 < 2 ? $2 : 2))
    pgbench -h 127.0.0.1 -p "$PORT" -U postgres -n -c "$2" -j "$j" -T "$SECS" -f "$BENCH_DIR/$1.sql" postgres 2>/dev/null |
        awk '/^tps/ {print $3}'
}
stats() { sort -n | awk '{a[NR] = $1} END {printf "%.2f (%.2f-%.2f)", a[int((NR + 1) / 2)], a[1], a[NR]}'; }
declare -A R
for c in $CLIENTS; do
    for run in $(seq "$RUNS"); do
        for kind in counter note; do
            p=$(tps "plain_$kind" "$c")
            v=$(tps "repl_$kind" "$c")
            R[$kind.$c]+="$(echo "$p / $v" | bc -l) "
            printf 'run %s, %2s client(s): %-8s plain %8.0f tps, replicated %8.0f tps\n' "$run" "$c" "$kind" "$p" "$v"
        done
    done
done
echo
echo "Time per transaction, replicated / plain, durable commits: median (min-max) of $RUNS runs of ${SECS}s, $ROWS rows"
printf '| %-40s |' "update"; for c in $CLIENTS; do printf ' %s client(s) |' "$c"; done; echo
for k in counter note; do
    case $k in counter) l="incr on a replicated gcounter" ;; note) l="text column of a replicated table" ;; esac
    printf '| %-40s |' "$l"
    for c in $CLIENTS; do printf ' %s |' "$(echo "${R[$k.$c]}" | tr ' ' '\n' | grep . | stats)"; done
    echo
done
