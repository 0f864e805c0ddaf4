#!/usr/bin/env bash
# Soak (issue 11, SPEC section 6): steady writes on three nodes (full mesh,
# background workers) for several minutes, converge.compact() on every node
# every COMPACT_EVERY seconds. Every SAMPLE seconds each node's op_log rows
# and bytes, the replicated table and converge's row tables, and the WAL its
# slots hold are recorded. Prints the samples, the compactions (time, ops
# removed) and the write rate inside and outside compaction windows, and
# draws bench/soak.png (matplotlib) when python3-matplotlib is installed.
#
# Load per node (pgbench -R RATE): 9 in 10 transactions update a random row
# of 1 000 (gcounter incr, orset add or remove, seqtext typing at the end
# and deleting from the end, a plain column); 1 in 10 deletes a row and
# inserts it again.
# Usage: bash bench/soak.sh [seconds, default 360] [rate per node, default 100]
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/pg.sh
SECS=${1:-360} RATE=${2:-100} COMPACT_EVERY=${COMPACT_EVERY:-60} SAMPLE=${SAMPLE:-10}
three_nodes 55531
for n in "${NODES[@]}"; do
    pq "${PORT[$n]}" -d postgres >/dev/null <<SQL
CREATE EXTENSION converge;
SELECT converge.set_node('$n');
CREATE TABLE ticket (id int PRIMARY KEY, title text, visits converge.gcounter, tags converge.orset, notes converge.seqtext);
SELECT converge.replicate('ticket');
-- Only the nodes write it (no offline client): compact() may drop its
-- tombstones and deleted characters once every node has said so.
SELECT converge.set_client_writes('ticket', false);
SQL
done
pq "${PORT[madrid]}" -d postgres -c "INSERT INTO ticket (id, title) SELECT g, 'new' FROM generate_series(1, 1000) g" >/dev/null
for a in "${NODES[@]}"; do
    for b in "${NODES[@]}"; do
        [ "$a" = "$b" ] || pq "${PORT[$a]}" -d postgres -c "SELECT converge.add_peer('$b', '$(conninfo "$b")')" >/dev/null
    done
done
for n in "${NODES[@]}"; do pq "${PORT[$n]}" -d postgres -Atc "SELECT converge.wait_for_peers('60 s')" >/dev/null; done

cat >"$BENCH_DIR/update.sql" <<'SQL'
\set id random(1, 1000)
\set k random(1, 10)
\set w random(1, 6)
UPDATE ticket SET visits = converge.incr(visits, :k),
       tags = CASE WHEN :k > 5 THEN converge.add(tags, 'w' || :w) ELSE converge.remove(tags, 'w' || :w) END,
       notes = CASE WHEN coalesce(converge.length(notes), 0) > 40
                    THEN converge.delete(notes, converge.length(notes) - 10, 10)
                    ELSE converge.insert(notes, coalesce(converge.length(notes), 0), 'typed') END,
       title = 'edit ' || :k
 WHERE id = :id;
SQL
cat >"$BENCH_DIR/churn.sql" <<'SQL'
\set id random(1, 1000)
DELETE FROM ticket WHERE id = :id;
INSERT INTO ticket (id, title) VALUES (:id, 'again') ON CONFLICT (id) DO NOTHING;
SQL
chmod a+r "$BENCH_DIR"/*.sql

sample() {  # t node: one CSV line
    pq "${PORT[$2]}" -d postgres -At -F, <<SQL
SELECT $1, '$2', (SELECT count(*) FROM converge.op_log), pg_total_relation_size('converge.op_log'),
       pg_total_relation_size('ticket'), pg_total_relation_size('converge.row_state') + pg_total_relation_size('converge.row_base'),
       coalesce((SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)) FROM pg_replication_slots), 0)::bigint,
       (SELECT applied FROM converge.stats),
       (SELECT round(avg(octet_length(tags::bytea))) FROM ticket), (SELECT round(avg(octet_length(notes::bytea))) FROM ticket)
SQL
}

echo "soak: ${SECS}s, $RATE transactions/s per node, compact() every ${COMPACT_EVERY}s, samples every ${SAMPLE}s"
START=$(date +%s)
for n in "${NODES[@]}"; do
    (cd "$BENCH_DIR" && as_pg pgbench -h 127.0.0.1 -p "${PORT[$n]}" -U postgres -n -c 2 -j 1 -R "$RATE" -T "$SECS" \
        -f update.sql@9 -f churn.sql@1 -l --log-prefix="pgbench_$n" --aggregate-interval=1 postgres \
        >"$BENCH_DIR/pgbench_$n.out" 2>&1) &
done
echo "t,node,op_log_rows,op_log_bytes,table_bytes,rows_bytes,slot_wal_bytes,applied,tags_bytes,notes_bytes" >"$BENCH_DIR/samples.csv"
next_compact=$COMPACT_EVERY
while :; do
    t=$(( $(date +%s) - START ))
    [ "$t" -gt "$SECS" ] && break
    for n in "${NODES[@]}"; do sample "$t" "$n" >>"$BENCH_DIR/samples.csv"; done
    if [ "$t" -ge "$next_compact" ]; then
        for n in "${NODES[@]}"; do pq "${PORT[$n]}" -d postgres -Atc "SELECT converge.compact()" >/dev/null; done
        next_compact=$((next_compact + COMPACT_EVERY))
    fi
    sleep "$SAMPLE"
done
wait
for n in "${NODES[@]}"; do pq "${PORT[$n]}" -d postgres -Atc "SELECT converge.wait_for_peers('60 s')" >/dev/null; done
t=$(( $(date +%s) - START ))
for n in "${NODES[@]}"; do sample "$t" "$n" >>"$BENCH_DIR/samples.csv"; done
for n in "${NODES[@]}"; do
    pq "${PORT[$n]}" -d postgres -At -F, -c "SELECT '$n', extract(epoch FROM ran_at - duration), extract(epoch FROM duration), ops_removed, values_compacted, tombstones_removed FROM converge.compactions ORDER BY ran_at"
done >"$BENCH_DIR/compactions.csv"
# What users read (full states may differ where nodes compacted at different moments).
same=$(for n in "${NODES[@]}"; do pq "${PORT[$n]}" -d postgres -Atc "SELECT md5(string_agg(jsonb_build_object('id', id, 'title', title, 'visits', visits::jsonb, 'tags', tags::jsonb, 'notes', notes::jsonb)::text, ',' ORDER BY id)) FROM ticket"; done | sort -u | wc -l)

# Debian's python3 has python3-matplotlib (a pyenv python3 first in PATH may not).
PY=${PYTHON:-$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3 )}
"$PY" - "$BENCH_DIR" "$START" "$same" <<'PY'
import csv, glob, os, sys
d, start, same = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = list(csv.DictReader(open(f"{d}/samples.csv")))
comp = [r.split(",") for r in open(f"{d}/compactions.csv").read().split()]
print("\nsamples (per node): t s | op_log rows | op_log MB | ticket MB | row_state + row_base MB | slot WAL MB | applied | avg tags / notes bytes")
for r in rows:
    print(f"{int(r['t']):>5} {r['node']:>8} | {int(r['op_log_rows']):>7} | {int(r['op_log_bytes'])/2**20:7.2f} | "
          f"{int(r['table_bytes'])/2**20:7.2f} | {int(r['rows_bytes'])/2**20:7.2f} | {int(r['slot_wal_bytes'])/2**20:7.2f} | "
          f"{int(r['applied']):>8} | {r['tags_bytes']:>6} / {r['notes_bytes']:>6}")
print("\ncompactions: node | at s | took ms | ops removed | values compacted (seqtext, orset) | tombstones removed")
for node, at, took, ops, vals, dead in comp:
    print(f"{node:>8} | {float(at) - start:6.1f} | {float(took) * 1000:7.1f} | {ops:>7} | {vals:>5} | {dead:>5}")
# Write rate (pgbench, per second) inside compaction windows vs outside, per node.
print("\nwrite rate: node | tps outside compactions (median) | tps in seconds a compaction ran on that node (median) | seconds")
for node in ("madrid", "dublin", "virginia"):
    per_s = {}
    for f in glob.glob(f"{d}/pgbench_{node}*"):
        if f.endswith(".out"):
            continue
        for line in open(f):
            p = line.split()
            per_s[int(p[0])] = per_s.get(int(p[0]), 0) + int(p[1])
    wins = [(float(at), float(at) + float(took)) for n, at, took, *_ in comp if n == node]
    inside = [v for s, v in per_s.items() if any(a - 1 < s <= b for a, b in wins)]
    outside = [v for s, v in per_s.items() if not any(a - 1 < s <= b for a, b in wins)]
    med = lambda xs: sorted(xs)[len(xs) // 2] if xs else float("nan")
    print(f"{node:>8} | {med(outside):6} | {med(inside):6} | {len(outside)} / {len(inside)}")
print(f"\nafter the run: {'identical' if same == '1' else 'DIFFERENT'} tables on the three nodes (as users read them)")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("no matplotlib: no chart (apt install python3-matplotlib)")
    sys.exit(0)
fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
panels = [("op_log_rows", "op_log rows", 1), ("op_log_bytes", "op_log size (MB)", 2**20),
          (("table_bytes", "rows_bytes"), "ticket (solid), row_state + row_base (dashed) (MB)", 2**20),
          ("slot_wal_bytes", "WAL held by slots (MB)", 2**20)]
colors = {"madrid": "tab:blue", "dublin": "tab:orange", "virginia": "tab:green"}
for ax, (cols, title, scale) in zip(axes.flat, panels):
    for node in ("madrid", "dublin", "virginia"):
        for i, col in enumerate(cols if isinstance(cols, tuple) else (cols,)):
            pts = [(int(r["t"]), int(r[col]) / scale) for r in rows if r["node"] == node]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[node], linestyle="--" if i else "-",
                    label=node if i == 0 else None)
    for node, at, *_ in comp:
        ax.axvline(float(at) - start, color="grey", alpha=0.2)
    ax.set_title(title)
    ax.set_ylim(bottom=0)
for ax in axes[1]:
    ax.set_xlabel("seconds (grey lines: compact())")
axes[0][0].legend()
applied = max(int(r["applied"]) for r in rows)
fig.suptitle(f"converge soak: 3 nodes, steady writes, compact() every minute ({applied} ops applied per node)")
fig.tight_layout()
out = os.path.join(os.getcwd(), "bench", "soak.png")
fig.savefig(out, dpi=80)
print(f"chart: {out}")
PY
