#!/usr/bin/env bash
# pg_dump a database holding every converge type, restore it into a fresh
# database, and require identical text for every value (and a working node
# identity and dot counter after the restore).
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/pg.sh
DIR=$1 PORT=$2
pg_up "$DIR" "$PORT"
trap 'pg_down "$DIR"' EXIT

pq "$PORT" -d postgres -c "DROP DATABASE IF EXISTS dump_src" -c "DROP DATABASE IF EXISTS dump_dst" -c "CREATE DATABASE dump_src" -c "CREATE DATABASE dump_dst"
pq "$PORT" -d dump_src <<'SQL'
CREATE EXTENSION converge;
SET search_path = public, converge;
SELECT set_node('madrid');
CREATE TABLE everything (
    id int PRIMARY KEY, g gcounter, pn pncounter, b bcounter, gs gset, os orset,
    lr lwwreg, mv mvreg, lm lwwmap, om ormap, st seqtext);
SELECT replicate('everything');   -- so the op log has history to carry too
INSERT INTO everything
SELECT i, incr(NULL::gcounter, i), decr(incr(NULL::pncounter, i), 2), transfer(incr(NULL::bcounter, 100), 'dublin', i),
       add(add(NULL::gset, 'g' || i), 'x'), remove(add(add(NULL::orset, 'a' || i), 'b'), 'b'),
       assign(NULL::lwwreg, jsonb_build_object('i', i)), assign(assign(NULL::mvreg, to_jsonb(i)), '"t"'),
       remove(put(put(NULL::lwwmap, 'k', to_jsonb(i)), 'gone', 'null'), 'gone'),
       assign(add(incr(NULL::ormap, 'n', i), 's', 'e'), 'r', '[1,2]'),
       delete(insert(insert(NULL::seqtext, 0, 'note ' || i), 0, 'the '), 2, 3)
  FROM generate_series(1, 50) i;
INSERT INTO everything (id) VALUES (0);
SELECT set_authority('everything', 'lr', 'virginia');   -- carried over with its guard
-- A device's key and a revocation (seed 07 x 32: see pg_regress/sql/actors.sql).
SELECT register_actor('phone7', '\xea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c') IS NOT NULL;
SELECT revoke_actor('phone8', 0) IS NOT NULL;
SELECT set_schema_version('everything', 'os', 2);
SELECT repair(ARRAY['phone9:1'], 'known bad import') IS NOT NULL;
SELECT set_authority('everything', NULL, node());   -- this node freezes rows
SELECT freeze('everything', '{"id": 1}');
-- Requests (one granted here, one pending for dublin) and an allocation.
-- Constraints named to sort before the primary key: the restore adds them
-- while the table has no key yet (converge_follow_columns must let it).
CREATE TABLE ask (id int PRIMARY KEY, status text, note text, code int CONSTRAINT ask_code_key UNIQUE);
ALTER TABLE ask ADD CONSTRAINT ask_id_check CHECK (id > 0) NOT VALID;
SELECT replicate('ask');
INSERT INTO ask VALUES (1, 'open', NULL);
SELECT set_authority('ask', 'status', 'dublin');
SELECT set_authority('ask', 'note', node());
SELECT request('ask', '{"id": 1}', 'status', '"closed"', 'close 1') IS NOT NULL;
SELECT request('ask', '{"id": 1}', 'note', '"seen"') IS NOT NULL;
SELECT set_allocator('audit', node(), 100);
SELECT allocate('audit', 'k1') = 100;
SQL
pg_dump -h 127.0.0.1 -p "$PORT" -U postgres dump_src > "$DIR.dump.sql"
pq "$PORT" -d dump_dst -f "$DIR.dump.sql" >/dev/null

snapshot() {
    pq "$PORT" -d "$1" -At -c "SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', id, g, pn, b, gs, os, lr, mv, lm, om, st), E'\n' ORDER BY id) FROM everything"
}
a=$(snapshot dump_src); b=$(snapshot dump_dst)
if [ "$a" != "$b" ]; then
    echo "restored values differ"; diff <(echo "$a") <(echo "$b") | head -20; exit 1
fi
echo "$(echo "$a" | wc -l) rows identical after dump and restore"

log() { pq "$PORT" -d "$1" -At -c "SELECT count(*), converge.frontier() FROM converge.op_log"; }
[ "$(log dump_src)" = "$(log dump_dst)" ] || { echo "op log differs: $(log dump_src) vs $(log dump_dst)"; exit 1; }
echo "op log and frontier identical: $(log dump_dst)"

auth() { pq "$PORT" -d "$1" -At -c "SELECT string_agg(format('%s.%s=%s', target_table, target_column, node), ',' ORDER BY target_column NULLS FIRST) FROM converge.authorities"; }
[ "$(auth dump_dst)" = "public.everything.=madrid,public.everything.lr=virginia,public.ask.note=madrid,public.ask.status=dublin" ] || { echo "authorities not restored: $(auth dump_dst)"; exit 1; }
out=$(pq "$PORT" -d dump_dst -c "UPDATE everything SET lr = converge.assign(lr, '1'::jsonb) WHERE id = 1" 2>&1 || true)
echo "$out" | grep -q 'decided by node "virginia"' || { echo "the restored authority guard did not stop a change: $out"; exit 1; }
echo "authority and its guard restored"

reg() { pq "$PORT" -d "$1" -At -c "SELECT string_agg(format('%s %s %s %s', actor, encode(public_key, 'hex'), signed_after, revoked_after), ',' ORDER BY actor) FROM converge.actors"; }
[ -n "$(reg dump_src)" ] && [ "$(reg dump_src)" = "$(reg dump_dst)" ] || { echo "actor registry not restored: $(reg dump_src) vs $(reg dump_dst)"; exit 1; }
out=$(pq "$PORT" -d dump_dst -At -c "SELECT reason FROM converge.apply(ROW('phone7:1', 'phone7', 'public.everything', '{\"id\":1}', 'g', 1, 0, '{}', '{\"counts\":{\"phone7\":1}}'::converge.gcounter::bytea, NULL)::converge.op)")
[ "$out" = "unsigned" ] || { echo "the restored registry did not reject an unsigned op: $out"; exit 1; }
echo "actor registry restored: $(reg dump_dst)"
ctl() { pq "$PORT" -d "$1" -At -c "SELECT (SELECT string_agg(format('%s.%s=%s', table_name, column_name, version), ',') FROM converge.schema_version) || ' ' || (SELECT string_agg(op_id || '<' || repair_id, ',') FROM converge.superseded) || ' ' || (SELECT string_agg(format('%s %s epoch %s', target_table, target_key, epoch), ',') FROM converge.frozen)"; }
[ "$(ctl dump_dst)" = "$(ctl dump_src)" ] && [ "$(ctl dump_dst)" = "everything.os=2 phone9:1<$(pq "$PORT" -d dump_src -At -c "SELECT op_id FROM converge.op_log WHERE target_table = 'converge.repair'") public.everything {\"id\": 1} epoch 1" ] \
    || { echo "schema versions, repairs or freezes not restored: $(ctl dump_src) vs $(ctl dump_dst)"; exit 1; }
out=$(pq "$PORT" -d dump_dst -At -c "SELECT reason FROM converge.apply(ROW('tab:1', 'tab', 'public.everything', '{\"id\":1}', 'g', 1, 0, '{}', '{\"counts\":{\"tab\":1}}'::converge.gcounter::bytea, NULL)::converge.op)")
[ "$out" = "frozen" ] || { echo "the restored freeze did not keep out a late op: $out"; exit 1; }
echo "schema versions, repairs and freezes restored: $(ctl dump_dst)"
req() { pq "$PORT" -d "$1" -At -c "SELECT string_agg(format('%s %s %s %s %s', request_id, target_column, status, decision, idempotency_key), ',' ORDER BY request_id) || ' ' || (SELECT string_agg(format('%s %s %s', name, idempotency_key, value), ',') FROM converge.allocations) || ' ' || (SELECT note FROM ask) FROM converge.requests"; }
[ "$(req dump_dst)" = "$(req dump_src)" ] && [ "$(pq "$PORT" -d dump_dst -At -c "SELECT string_agg(status, ',' ORDER BY status) FROM converge.requests")" = "granted,pending" ] \
    || { echo "requests or allocations not restored: $(req dump_src) vs $(req dump_dst)"; exit 1; }
out=$(pq "$PORT" -d dump_dst -At -c "SELECT converge.allocate('audit', 'k1'), converge.allocate('audit', 'k2'), converge.request('ask', '{\"id\": 1}', 'status', '\"closed\"', 'close 1') = (SELECT request_id FROM converge.requests WHERE idempotency_key = 'close 1')")
[ "$out" = "100|101|t" ] || { echo "the restored allocations or requests did not hold: $out"; exit 1; }
echo "requests and allocations restored: $(req dump_dst)"

# The restored node keeps its identity, never reissues a dot or an op_id.
pq "$PORT" -d dump_dst -At <<'SQL' | tee "$DIR.after"
SET search_path = public, converge;
SELECT node();
SELECT (SELECT last_value FROM dot_seq) >= 50 * 5;
UPDATE everything SET g = incr(g, 1) WHERE id = 7 RETURNING value(g) = 8;
SELECT count(*) = 1 FROM op_log WHERE op_id = (SELECT 'madrid:' || max(counter) FROM op_log WHERE actor = 'madrid');
SQL
[ "$(cat "$DIR.after")" = "$(printf 'madrid\nt\nt\nt')" ] || { echo "restored node state is wrong"; exit 1; }
echo "pg_dump round trip: ok"
