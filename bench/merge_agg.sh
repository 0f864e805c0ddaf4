#!/usr/bin/env bash
# SPEC section 7, third row: merge_agg over 1 M rows against sum(bigint) over
# the same rows, in one run on one throwaway server (best of 5 each, default
# parallel settings, so both use the same number of workers).
# Usage: bash bench/merge_agg.sh [rows, default 1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/pg.sh
ROWS=${1:-1000000} PORT=${PORT:-55498}
bench_up "$PORT" "shared_buffers = 1GB" "work_mem = 256MB"
pq "$PORT" -d postgres >/dev/null <<SQL
CREATE EXTENSION converge;
-- Each row: a gcounter touched by three nodes, and a bigint beside it.
CREATE TABLE t AS
SELECT i AS id, (i % 1000)::bigint AS n,
       format('{"counts":{"dublin":%s,"madrid":%s,"virginia":%s}}', i % 1000 + 1, i % 777 + 1, i % 555 + 1)::converge.gcounter AS c
  FROM generate_series(1, $ROWS) i;
VACUUM ANALYZE t;
SQL
best() {  # best wall time in ms of a query, over 5 runs, from EXPLAIN ANALYZE
    for _ in 1 2 3 4 5; do
        pq "$PORT" -d postgres -At -c "EXPLAIN (ANALYZE, FORMAT JSON) $1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])'
    done | sort -n | head -1
}
s=$(best "SELECT sum(n) FROM t")
m=$(best "SELECT converge.merge_agg(c) FROM t")
printf 'rows %s   sum(bigint) %.1f ms   merge_agg(gcounter) %.1f ms   ratio %.2f\n' "$ROWS" "$s" "$m" "$(echo "$m / $s" | bc -l)"
