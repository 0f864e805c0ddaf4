#!/usr/bin/env bash
# SPEC section 8, rows 1 and 2: a local update with converge against the same
# plain-SQL update of an unreplicated table, with pgbench on the same table
# size, on one throwaway server (converge preloaded, as a replicating node
# runs it), every side in the same run, each measured RUNS times.
#
#   counter   incr on a gcounter            vs  n = n + 1 on a bigint
#   tags      add on an orset               vs  array remove + append on text[]
#   plaincol  a text column of a replicated table  vs  the same on a plain table
#   auth      incr on a gcounter of a replicated table that has an authority
#             column (decided by another node; SPEC section 5)  vs  n = n + 1
#
# "unreplicated" CRDT tables are plain tables with converge columns;
# "replicated" ones are marked with converge.replicate, so every update also
# records its op. The ratio is time per transaction, converge / plain
# (plain tps / converge tps); the table prints the median and the spread.
# With one client, the server and pgbench run on one CPU (PIN=0 turns
# that off): on this 2-core VM an unpinned single client lands either on
# the same core as its backend or on the other, and each round trip then
# costs a cross-core wake-up or not, so the same plain update ran at 4 820
# or at 15 894 tps from one 3-second run to the next. Pinned, the runs agree and
# the ratio is the CPU cost. Two clients use every CPU.
# Usage: bash bench/local_update.sh [seconds per run, default 10] [runs, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/pg.sh
SECS=${1:-10} RUNS=${2:-3} ROWS=${ROWS:-10000} PORT=${PORT:-55499} CLIENTS=${CLIENTS:-"1 2"}
bench_up "$PORT" "shared_buffers = 512MB" "synchronous_commit = off" "shared_preload_libraries = 'converge'"
pq "$PORT" -d postgres <<SQL
CREATE EXTENSION converge;
SELECT converge.set_node('bench') IS NOT NULL AS node_set;
CREATE TABLE plain_counter (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note text);
CREATE TABLE plain_tags (id int PRIMARY KEY, tags text[] NOT NULL DEFAULT '{}');
CREATE TABLE crdt_counter (id int PRIMARY KEY, n converge.gcounter, note text);
CREATE TABLE crdt_tags (id int PRIMARY KEY, tags converge.orset);
CREATE TABLE repl_counter (id int PRIMARY KEY, n converge.gcounter, note text);
CREATE TABLE repl_tags (id int PRIMARY KEY, tags converge.orset);
CREATE TABLE repl_auth (id int PRIMARY KEY, n converge.gcounter, note text, status text);
INSERT INTO plain_counter (id) SELECT generate_series(1, $ROWS);
INSERT INTO plain_tags (id) SELECT generate_series(1, $ROWS);
INSERT INTO crdt_counter (id) SELECT generate_series(1, $ROWS);
INSERT INTO crdt_tags (id) SELECT generate_series(1, $ROWS);
INSERT INTO repl_counter (id) SELECT generate_series(1, $ROWS);
INSERT INTO repl_tags (id) SELECT generate_series(1, $ROWS);
INSERT INTO repl_auth (id) SELECT generate_series(1, $ROWS);
SELECT converge.replicate('repl_counter'), converge.replicate('repl_tags'), converge.replicate('repl_auth');
SELECT converge.set_authority('repl_auth', 'status', 'elsewhere');
VACUUM ANALYZE;
SQL
script() { printf '\\set id random(1, %s)\n\\set t random(1, 20)\n%s\n' "$ROWS" "$2" > "$BENCH_DIR/$1.sql"; }
script plain_counter "UPDATE plain_counter SET n = n + 1 WHERE id = :id;"
script crdt_counter "UPDATE crdt_counter SET n = converge.incr(n, 1) WHERE id = :id;"
script repl_counter "UPDATE repl_counter SET n = converge.incr(n, 1) WHERE id = :id;"
script plain_tags "UPDATE plain_tags SET tags = array_append(array_remove(tags, 'tag' || :t), 'tag' || :t) WHERE id = :id;"
script crdt_tags "UPDATE crdt_tags SET tags = converge.add(tags, 'tag' || :t) WHERE id = :id;"
script repl_tags "UPDATE repl_tags SET tags = converge.add(tags, 'tag' || :t) WHERE id = :id;"
script plain_note "UPDATE plain_counter SET note = 'n' || :t WHERE id = :id;"
script repl_note "UPDATE repl_counter SET note = 'n' || :t WHERE id = :id;"
script plain_auth "UPDATE plain_counter SET n = n + 1 WHERE id = :id;"
script repl_auth "UPDATE repl_auth SET n = converge.incr(n, 1) WHERE id = :id;"
CPUS="0-$(($(nproc) - 1))"
# pin CPUS: the server's processes, the backends it forks from now on, and
# pgbench (tps) run on these CPUs.
pin() {
    CPUS=$1
    local pm
    pm=$(head -1 "$BENCH_DIR/pg/postmaster.pid")
    # (|| true: a process may exit between pgrep and taskset)
    for p in $pm $(pgrep -P "$pm"); do taskset -pc "$CPUS" "$p" >/dev/null || true; done
}
tps() {
    taskset -c "$CPUS" pgbench -h 127.0.0.1 -p "$PORT" -U postgres -n -c "$2" -j "$2" -T "$SECS" -f "$BENCH_DIR/$1.sql" postgres 2>/dev/null |
        awk '/^tps/ {print $3}'
}
# ratio PLAIN_TPS CONVERGE_TPS: time per transaction, converge / plain
ratio() { echo "$1 / $2" | bc -l; }
stats() { sort -n | awk '{a[NR] = $1} END {printf "%.2f (%.2f-%.2f)", a[int((NR + 1) / 2)], a[1], a[NR]}'; }
declare -A R
for c in $CLIENTS; do
    if [ "$c" = 1 ] && [ "${PIN:-1}" = 1 ]; then pin 0; else pin "0-$(($(nproc) - 1))"; fi
    for run in $(seq "$RUNS"); do
        for kind in counter tags note auth; do
            p=$(tps "plain_$kind" "$c")
            for side in crdt repl; do
                [ "$kind" = note ] || [ "$kind" = auth ] && [ "$side" = crdt ] && continue
                v=$(tps "${side}_$kind" "$c")
                R[$side.$kind.$c]+="$(ratio "$p" "$v") "
                printf 'run %s, %s client(s): %-14s plain %8.0f tps, converge %8.0f tps\n' "$run" "$c" "${side}_$kind" "$p" "$v"
            done
        done
    done
done
echo
echo "Time per transaction, converge / plain: median (min-max) of $RUNS runs of ${SECS}s, $ROWS rows (1 client pinned to one CPU: ${PIN:-1})"
printf '| %-44s |' "update"; for c in $CLIENTS; do printf ' %s client(s) |' "$c"; done; echo
label() {
    case $1 in
        crdt.counter) echo "incr, unreplicated table" ;; crdt.tags) echo "add, unreplicated table" ;;
        repl.counter) echo "incr, replicated table (op recorded)" ;; repl.tags) echo "add, replicated table (op recorded)" ;;
        repl.note) echo "text column of a replicated table (row op)" ;;
        repl.auth) echo "incr, replicated, authority column elsewhere" ;;
    esac
}
for k in crdt.counter crdt.tags repl.counter repl.tags repl.note repl.auth; do
    printf '| %-44s |' "$(label "$k")"
    for c in $CLIENTS; do printf ' %s |' "$(echo "${R[$k.$c]}" | tr ' ' '\n' | grep . | stats)"; done
    echo
done
