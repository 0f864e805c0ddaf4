#!/usr/bin/env bash
# A rolling upgrade, run for real: lisbon still on the released 0.1.0 and
# oslo on this version, peered both ways, each on its own server. What
# docs/operations.md ("Upgrades") promises for nodes updated one at a time:
#   - each copies the other's ops at add_peer (oslo asks a 0.1.0 peer with
#     the query 0.1.0 has; lisbon's `changes_since(frontier)` leaves out
#     what 0.1.0 cannot read);
#   - the edits this test makes (counter, orset, ormap, a plain column, row
#     inserts and deletes) travel between the versions, except an oslo
#     ormap op in format 2 (it lists what it superseded), which lisbon
#     rejects and keeps (`invalid_delta`), its frontier for oslo held below;
#   - lisbon updated (new library, restart, ALTER EXTENSION UPDATE), oslo
#     paused and added again there as documented: the held op applied,
#     both nodes end byte-identical;
#   - an op a 0.1.0 client logged under a node's name, naming a peer as
#     its origin (0.1.0 logged any origin it was given), is not applied as
#     that peer's by a replay after the update.
# 0.1.0 runs from a copy of this PostgreSQL installation that holds
# 0.1.0's files (PostgreSQL finds its library and share directories
# relative to its own binary); this version is the one installed already
# (run after `cargo pgrx install`); the system installation is not touched.
# Usage: bash tests/mixed_versions.sh DATA_DIR PORT  (uses PORT and PORT+1)
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/pg.sh
source tests/old_version.sh
DIR=$1 PORT=$2
NEW_VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
OLD_BUILD=${CONVERGE_OLD_BUILD:-$DIR/old-build}
OLD_PG=$DIR/pg-$OLD_VERSION
OLD_PGBIN=$OLD_PG/usr/lib/postgresql/15/bin
mkdir -p "$DIR"; chown postgres "$DIR"
pg_down "$DIR/lisbon"; pg_down "$DIR/oslo"; rm -rf "$DIR/lisbon" "$DIR/oslo"
[ -n "${KEEP:-}" ] || trap 'pg_down "$DIR/lisbon"; pg_down "$DIR/oslo"' EXIT
fail() { echo "mixed versions: $*"; exit 1; }
installed=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" /usr/share/postgresql/15/extension/converge.control || true)
[ -n "$installed" ] && [ "$installed" = "$NEW_VERSION" ] || fail "the installed converge is $installed, not $NEW_VERSION: run cargo pgrx install first"

# 1. A copy of the server installation with 0.1.0 in place of this version.
old_package "$OLD_BUILD"
rm -rf "$OLD_PG"; mkdir -p "$OLD_PG/usr/lib/postgresql" "$OLD_PG/usr/share/postgresql"
cp -a /usr/lib/postgresql/15 "$OLD_PG/usr/lib/postgresql/"
cp -a /usr/share/postgresql/15 "$OLD_PG/usr/share/postgresql/"
rm -rf "$OLD_PG"/usr/share/postgresql/15/extension/converge* "$OLD_PG/usr/lib/postgresql/15/lib/pgxs"
cp -r "$OLD_BUILD/pkg/usr" "$OLD_PG/"

PGBIN=$OLD_PGBIN pg_up "$DIR/lisbon" "$PORT"
pg_up "$DIR/oslo" $((PORT + 1))
port() { case $1 in lisbon) echo "$PORT" ;; oslo) echo $((PORT + 1)) ;; esac; }
conn() { echo "host=127.0.0.1 port=$(port "$1") user=postgres dbname=mix"; }
sql() { local n=$1; shift; pq "$(port "$n")" -d mix -At "$@"; }
for n in lisbon oslo; do
    pq "$(port $n)" -d postgres -c "CREATE DATABASE mix"
    sql $n >/dev/null <<SQL
CREATE EXTENSION converge;
SET search_path = public, converge;
SELECT set_node('$n');
CREATE TABLE kit (id int PRIMARY KEY, label text, uses gcounter, tags orset, parts ormap);
SELECT replicate('kit');
SQL
done
[ "$(sql lisbon -c "SELECT extversion FROM pg_extension WHERE extname = 'converge'")" = "$OLD_VERSION" ] || fail "lisbon is not on $OLD_VERSION"
[ "$(sql oslo -c "SELECT extversion FROM pg_extension WHERE extname = 'converge'")" = "$NEW_VERSION" ] || fail "oslo is not on $NEW_VERSION"

# 2. Edits on each before they know each other. oslo's second increment of
#    a key supersedes its first: format 2 in oslo's log.
edit() {  # edit NODE FIRST_ID
    sql "$1" <<SQL
SET search_path = public, converge;
INSERT INTO kit SELECT i, '$1 ' || i, incr(NULL::gcounter, i), add(NULL::orset, 'new'), incr(NULL::ormap, 'filter', 1)
  FROM generate_series($2, $2 + 2) i;
UPDATE kit SET parts = incr(parts, 'filter', 1), tags = add(tags, 'checked') WHERE id = $2;
SQL
}
edit lisbon 1; edit oslo 11
v2=$(sql oslo -c "SELECT count(*) FROM converge.op_log WHERE actor = 'oslo' AND target_column = 'parts' AND get_byte(delta, 0) = 2")
[ "$v2" -ge 1 ] || fail "oslo logged no ormap op in format 2 (the test needs one)"

# 3. Peering both ways: each copies what the other has (oslo's copy asks a
#    0.1.0 peer, which has only changes_since(frontier)).
sql oslo -c "SELECT converge.add_peer('lisbon', '$(conn lisbon)')" >/dev/null
sql lisbon -c "SELECT converge.add_peer('oslo', '$(conn oslo)')" >/dev/null
rows() { sql "$1" -c "SELECT string_agg(t::text, E'\n' ORDER BY id) FROM kit t"; }
same_rows() {  # same_rows WHEN: both nodes' rows, read (a failed read stops the test), equal
    local a b
    a=$(rows lisbon); b=$(rows oslo)
    [ -n "$a" ] && [ "$a" = "$b" ] || fail "the nodes differ $1"$'\n'"$a"$'\n--\n'"$b"
}
rejected() { sql "$1" -c "SELECT count(*) FROM converge.op_log WHERE outcome = 'rejected'"; }
[ "$(rejected lisbon)" = 0 ] || fail "lisbon rejected ops copied at add_peer: $(sql lisbon -c "SELECT op_id, reason FROM converge.op_log WHERE outcome = 'rejected'")"
[ "$(rejected oslo)" = 0 ] || fail "oslo rejected ops copied at add_peer"
same_rows "after add_peer"
[ "$(sql oslo -c "SELECT count(*) FROM kit")" = 6 ] || fail "oslo does not hold both nodes' rows"

# 4. Edits that travel through replication (each node's slot on the other).
sql lisbon -c "UPDATE kit SET parts = converge.incr(parts, 'filter', 5), label = 'lisbon again' WHERE id = 11" >/dev/null
sql oslo -c "UPDATE kit SET parts = converge.incr(parts, 'valve', 1) WHERE id = 2" >/dev/null
sql oslo -c "UPDATE kit SET parts = converge.incr(parts, 'valve', 2), uses = converge.incr(uses, 10), tags = converge.add(tags, 'sealed'), label = 'oslo again' WHERE id = 2" >/dev/null
sql oslo -c "DELETE FROM kit WHERE id = 3" >/dev/null
sql lisbon -c "DELETE FROM kit WHERE id = 13" >/dev/null
# A client of lisbon sends an op under oslo's name and names oslo's
# replication as its origin: 0.1.0 refuses it (node_actor) and logs the
# origin it was given.
sql lisbon >/dev/null <<'SQL'
SELECT * FROM converge.apply_batch(ARRAY[ROW('oslo:900', 'oslo', 'public.kit', '{"id": 1}', 'uses', 1, 0, '{}',
       converge.incr(NULL::converge.gcounter, 1000)::bytea, NULL)::converge.op], 'peer:oslo');
SQL
[ "$(sql lisbon -c "SELECT outcome || ' ' || reason || ' ' || origin FROM converge.op_log WHERE op_id = 'oslo:900'")" = "rejected node_actor peer:oslo" ] \
    || fail "0.1.0 did not log the client's op under oslo's name as expected"
sync_both() {
    sql lisbon -c "SELECT converge.sync('oslo')" >/dev/null
    sql oslo -c "SELECT converge.sync('lisbon')" >/dev/null
}
sync_both
[ "$(rejected oslo)" = 0 ] || fail "oslo rejected a 0.1.0 op"
# lisbon applies every oslo op but the format-2 one, and keeps that one.
held=$(sql lisbon -c "SELECT count(*) FROM converge.op_log WHERE outcome = 'rejected' AND reason LIKE 'invalid_delta:%format version 2%'")
[ "$held" = 1 ] || fail "lisbon holds $held ops rejected for their format, not 1: $(sql lisbon -c "SELECT op_id, outcome, reason FROM converge.op_log WHERE actor = 'oslo' ORDER BY seq")"
[ "$(rejected lisbon)" = 2 ] || fail "lisbon rejected ops other than the format-2 one and the client's"
# Row 2 on lisbon: every change of oslo's but the second valve increment.
row2() { sql "$1" -c "SELECT label, uses::text, tags::text, converge.get(parts, 'valve') FROM kit WHERE id = 2"; }
got=$(row2 lisbon); want=$(row2 oslo)
[ "${got%|*}" = "${want%|*}" ] && [ -n "${want%|*}" ] || fail "row 2's other columns differ: $got / $want"
[ "${got##*|}|${want##*|}" = "1|3" ] || fail "row 2's valve count is ${got##*|} on lisbon and ${want##*|} on oslo, not 1 and 3"
[ "$(sql lisbon -c "SELECT count(*) FROM kit WHERE id IN (3, 13)")" = 0 ] || fail "a delete did not travel to lisbon"
[ "$(sql oslo -c "SELECT count(*) FROM kit WHERE id IN (3, 13)")" = 0 ] || fail "a delete did not travel to oslo"
held_at=$(sql lisbon -c "SELECT counter FROM converge.op_log WHERE outcome = 'rejected' AND reason LIKE 'invalid_delta:%'")
seen=$(sql lisbon -c "SELECT (converge.frontier()->>'oslo')::bigint")
[ "$seen" -lt "$held_at" ] || fail "lisbon's frontier for oslo ($seen) passed the op it holds ($held_at)"

# 5. lisbon updated: this version's library (its server restarted from the
#    system installation), ALTER EXTENSION UPDATE, then oslo paused and
#    added again, as docs/operations.md gives.
pg_down "$DIR/lisbon"
pg_up "$DIR/lisbon" "$PORT"
sql lisbon -c "ALTER EXTENSION converge UPDATE" >/dev/null
[ "$(sql lisbon -c "SELECT extversion FROM pg_extension WHERE extname = 'converge'")" = "$NEW_VERSION" ] || fail "lisbon did not update"
# What docs/operations.md gives: pause the peer and add it again (its
# ops beyond lisbon's frontier, the held one first, copied through its
# replication).
held_id=$(sql lisbon -c "SELECT op_id FROM converge.op_log WHERE outcome = 'rejected' AND reason LIKE 'invalid_delta:%'")
sql lisbon >/dev/null <<'SQL'
SELECT converge.pause_peer('oslo');
SELECT converge.add_peer(name, conninfo) FROM converge.peer WHERE name = 'oslo';
SQL
applied=$(sql lisbon -c "SELECT count(*) FROM converge.op_log WHERE op_id = '$held_id' AND outcome = 'applied'")
[ -n "$held_id" ] && [ "$applied" = 1 ] || fail "adding oslo again did not apply the held op '$held_id' (applied rows: $applied)"
[ "$(sql lisbon -c "SELECT paused FROM converge.peer WHERE name = 'oslo'")" = f ] || fail "add_peer left oslo paused"
# The client's op is not the peer's: a replay refuses it again (0.1.0's
# rows are marked, never trusted).
forged=$(sql lisbon -c "SELECT outcome || ' ' || reason FROM converge.replay('oslo:900')")
[ "$forged" = "rejected node_actor" ] || fail "a replay of the op a 0.1.0 client logged under oslo's name gave '$forged'"
[ "$(sql lisbon -c "SELECT (converge.frontier()->>'oslo')::bigint")" = "$(sql oslo -c "SELECT (converge.frontier()->>'oslo')::bigint")" ] \
    || fail "after oslo was added again, lisbon's frontier for oslo is not oslo's own"
sql lisbon -c "UPDATE kit SET parts = converge.incr(parts, 'valve', 1) WHERE id = 12" >/dev/null
sql oslo -c "UPDATE kit SET parts = converge.incr(parts, 'filter', 1) WHERE id = 1" >/dev/null
sync_both
[ "$(rejected oslo)" = 0 ] || fail "oslo rejected an op of the updated lisbon"
same_rows "after the update"
echo "mixed versions $OLD_VERSION and $NEW_VERSION: ops copied and streamed both ways, the format-2 op held by $OLD_VERSION and copied again after its update, rows identical; a $OLD_VERSION client's op under a node's name stays refused"
