#!/usr/bin/env bash
# SPEC section 7, first row: a local CRDT update (incr on a gcounter, add on
# an orset) against the same plain-SQL update (bigint + 1, text[] append),
# with pgbench on the same table size, in one run on one throwaway server.
# Both sides write on every transaction (the plain set update removes then
# appends, so it keeps set semantics and never skips the write).
# Usage: bash bench/local_update.sh [seconds per run, default 20]
#        REPLICATE=1 bash bench/local_update.sh ...   also marks the converge
#        tables with converge.replicate, so every update records an op too.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/pg.sh
SECS=${1:-20} ROWS=${ROWS:-10000} PORT=${PORT:-55499}
bench_up "$PORT" "shared_buffers = 512MB" "synchronous_commit = off"
pq "$PORT" -d postgres <<SQL
CREATE EXTENSION converge;
SELECT converge.set_node('bench');
CREATE TABLE plain_counter (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE TABLE crdt_counter  (id int PRIMARY KEY, n converge.gcounter);
CREATE TABLE plain_tags (id int PRIMARY KEY, tags text[] NOT NULL DEFAULT '{}');
CREATE TABLE crdt_tags  (id int PRIMARY KEY, tags converge.orset);
INSERT INTO plain_counter (id) SELECT generate_series(1, $ROWS);
INSERT INTO crdt_counter (id) SELECT generate_series(1, $ROWS);
INSERT INTO plain_tags (id) SELECT generate_series(1, $ROWS);
INSERT INTO crdt_tags (id) SELECT generate_series(1, $ROWS);
VACUUM ANALYZE;
SQL
if [ "${REPLICATE:-0}" = 1 ]; then
    pq "$PORT" -d postgres -c "SELECT converge.replicate('crdt_counter'), converge.replicate('crdt_tags')" >/dev/null
    echo "(converge tables marked with converge.replicate: every update also records an op)"
fi
cat > "$BENCH_DIR/plain_counter.sql" <<SQL
\set id random(1, $ROWS)
UPDATE plain_counter SET n = n + 1 WHERE id = :id;
SQL
cat > "$BENCH_DIR/crdt_counter.sql" <<SQL
\set id random(1, $ROWS)
UPDATE crdt_counter SET n = converge.incr(n, 1) WHERE id = :id;
SQL
cat > "$BENCH_DIR/plain_tags.sql" <<SQL
\set id random(1, $ROWS)
\set t random(1, 20)
UPDATE plain_tags SET tags = array_append(array_remove(tags, 'tag' || :t), 'tag' || :t) WHERE id = :id;
SQL
cat > "$BENCH_DIR/crdt_tags.sql" <<SQL
\set id random(1, $ROWS)
\set t random(1, 20)
UPDATE crdt_tags SET tags = converge.add(tags, 'tag' || :t) WHERE id = :id;
SQL
tps() { pgbench -h 127.0.0.1 -p "$PORT" -U postgres -n -c 2 -j 2 -T "$SECS" -f "$BENCH_DIR/$1.sql" postgres 2>/dev/null | awk '/^tps/ {print $3}'; }
echo "pgbench, 2 clients, ${SECS}s each, $ROWS rows"
for pair in counter tags; do
    p=$(tps plain_$pair); c=$(tps crdt_$pair)
    printf '%-8s plain %10.0f tps   converge %10.0f tps   time ratio converge/plain %.2f\n' "$pair" "$p" "$c" "$(echo "$p / $c" | bc -l)"
done
