#!/usr/bin/env bash
# SPEC section 7, last row: replication lag on three local instances under a
# steady write load, converge next to PostgreSQL's native logical
# replication (publication/subscription of an equivalent plain table), in
# the same run on the same three servers.
#
# madrid updates random rows of a 1 000-row probe table at a fixed rate
# (pgbench -R): a counter increment plus the write time, clock_timestamp().
# converge: hits is a gcounter and sent an lwwreg (two CRDT deltas per
# update); native: hits bigint + 1 and sent timestamptz. dublin and virginia
# record, in an ALWAYS trigger on UPDATE OF sent, clock_timestamp() - sent
# when the update arrives (one machine, one clock). converge runs as a full
# mesh with the background worker woken by NOTIFY; native: madrid publishes
# probe_native, dublin and virginia subscribe.
# Then a burst: BURST (default 10 000, 0 to skip) updates as fast as madrid takes them.
# Usage: bash bench/replication_lag.sh [seconds per rate, default 20] [rates, default "200 1000"]
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/pg.sh
SECS=${1:-20} RATES=${2:-"200 1000"} BURST=${BURST:-10000}
three_nodes 55521
for n in "${NODES[@]}"; do
    pq "${PORT[$n]}" -d postgres >/dev/null <<SQL
CREATE EXTENSION converge;
SELECT converge.set_node('$n');
CREATE TABLE probe (id bigint PRIMARY KEY, sent converge.lwwreg, hits converge.gcounter);
SELECT converge.replicate('probe');
CREATE TABLE probe_native (id bigint PRIMARY KEY, sent timestamptz, hits bigint NOT NULL DEFAULT 0);
CREATE TABLE lag (system text, rate int, ms double precision);
CREATE FUNCTION note_converge() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    INSERT INTO public.lag VALUES ('converge', NULL,
        extract(epoch FROM clock_timestamp() - (converge.value(NEW.sent) #>> '{}')::timestamptz) * 1000);
    RETURN NULL;
END \$\$;
CREATE FUNCTION note_native() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    INSERT INTO public.lag VALUES ('native', NULL, extract(epoch FROM clock_timestamp() - NEW.sent) * 1000);
    RETURN NULL;
END \$\$;
SQL
done
pq "${PORT[madrid]}" -d postgres -c "INSERT INTO probe (id) SELECT generate_series(1, 1000)" \
    -c "INSERT INTO probe_native (id) SELECT generate_series(1, 1000)" >/dev/null
for n in dublin virginia; do  # receivers only: the write path on madrid is the same for both
    pq "${PORT[$n]}" -d postgres >/dev/null <<'SQL'
CREATE TRIGGER note_lag AFTER UPDATE OF sent ON probe FOR EACH ROW EXECUTE FUNCTION note_converge();
CREATE TRIGGER note_lag AFTER UPDATE OF sent ON probe_native FOR EACH ROW EXECUTE FUNCTION note_native();
ALTER TABLE probe ENABLE ALWAYS TRIGGER note_lag;
ALTER TABLE probe_native ENABLE ALWAYS TRIGGER note_lag;
SQL
done
for a in "${NODES[@]}"; do for b in "${NODES[@]}"; do
    [ "$a" = "$b" ] || pq "${PORT[$a]}" -d postgres -c "SELECT converge.add_peer('$b', '$(conninfo "$b")')" >/dev/null
done; done
pq "${PORT[madrid]}" -d postgres -c "CREATE PUBLICATION native_pub FOR TABLE probe_native" >/dev/null
for n in dublin virginia; do
    pq "${PORT[$n]}" -d postgres -c "CREATE SUBSCRIPTION native_sub_$n CONNECTION '$(conninfo madrid)' PUBLICATION native_pub" >/dev/null
done
sleep 3   # initial copies done

cat > "$BENCH_DIR/converge.sql" <<'SQL'
\set id random(1, 1000)
UPDATE probe SET hits = converge.incr(hits, 1), sent = converge.assign(sent, to_jsonb(clock_timestamp()::text)) WHERE id = :id;
SQL
cat > "$BENCH_DIR/native.sql" <<'SQL'
\set id random(1, 1000)
UPDATE probe_native SET hits = hits + 1, sent = clock_timestamp() WHERE id = :id;
SQL

echo "madrid writes; dublin and virginia measure arrival (ms); ${SECS}s per rate; same servers, same run"
for rate in $RATES; do
    for sys in converge native; do
        pgbench -h 127.0.0.1 -p "${PORT[madrid]}" -U postgres -n -c 1 -j 1 -R "$rate" -T "$SECS" -f "$BENCH_DIR/$sys.sql" postgres \
            >"$BENCH_DIR/pgbench.$sys.$rate.log" 2>&1 || { cat "$BENCH_DIR/pgbench.$sys.$rate.log"; exit 1; }
        echo "$sys at $rate rows/s: $(grep -E 'actually processed' "$BENCH_DIR/pgbench.$sys.$rate.log")"
        sleep 3   # let the last rows arrive, then label them with the rate
        for n in dublin virginia; do pq "${PORT[$n]}" -d postgres -c "UPDATE lag SET rate = $rate WHERE rate IS NULL" >/dev/null; done
    done
done
# A burst: BURST updates as fast as madrid takes them (two pgbench
# clients, no rate limit; about a second or two here), then time for every
# row to arrive. Labelled rate 0 ("burst" below).
if [ "$BURST" -gt 0 ]; then
    for sys in converge native; do
        pgbench -h 127.0.0.1 -p "${PORT[madrid]}" -U postgres -n -c 2 -j 2 -t $((BURST / 2)) -f "$BENCH_DIR/$sys.sql" postgres \
            >"$BENCH_DIR/pgbench.$sys.burst.log" 2>&1 || { cat "$BENCH_DIR/pgbench.$sys.burst.log"; exit 1; }
        echo "$sys burst: $(grep -E 'actually processed|^tps' "$BENCH_DIR/pgbench.$sys.burst.log" | tr '\n' ' ')"
        sleep 10
        for n in dublin virginia; do pq "${PORT[$n]}" -d postgres -c "UPDATE lag SET rate = 0 WHERE rate IS NULL" >/dev/null; done
    done
fi
echo
printf '%-9s %-9s %9s %8s %9s %9s %9s\n' system receiver "rows/s" rows p50_ms p99_ms max_ms
for n in dublin virginia; do
    pq "${PORT[$n]}" -d postgres -At -F ' ' -c "
        SELECT system, '$n', rate, count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2),
               round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 2), round(max(ms)::numeric, 2)
          FROM lag GROUP BY system, rate"
done | sort -k3,3n -k1,1 -k2,2 |
    awk '{if ($3 == 0) $3 = "burst"; printf "%-9s %-9s %9s %8s %9s %9s %9s\n", $1, $2, $3, $4, $5, $6, $7}'
