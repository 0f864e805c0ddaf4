#!/usr/bin/env bash
# ALTER EXTENSION converge UPDATE from the released 0.1.0 to this version:
# build and install 0.1.0 from its commit, make two nodes (two databases
# that are each other's peer) with every type, ops and history, install
# this version, restart, update both, and require every value, op and peer
# kept, replication and compaction working, and the updated schema equal to
# a fresh install's (every function, table, column, index, view, policy,
# grant and comment). Leaves this version installed.
# Usage: bash tests/upgrade.sh DATA_DIR PORT
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source .ci/pg.sh
DIR=$1 PORT=$2
source tests/old_version.sh
NEW_VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
mkdir -p "$DIR"; chown postgres "$DIR"
trap 'pg_down "$DIR/data"' EXIT

# 1. The released version, built from its own sources (tests/old_version.sh;
#    CONVERGE_OLD_BUILD: a build directory shared with tests/mixed_versions.sh)
#    and installed over this one.
OLD_BUILD=${CONVERGE_OLD_BUILD:-$DIR/old-build}
old_package "$OLD_BUILD"
cp -r "$OLD_BUILD/pkg/usr" /

pg_up "$DIR/data" "$PORT"
pq "$PORT" -d postgres -c "DROP DATABASE IF EXISTS up_madrid" -c "DROP DATABASE IF EXISTS up_dublin" \
   -c "DROP DATABASE IF EXISTS up_fresh" -c "CREATE DATABASE up_madrid" -c "CREATE DATABASE up_dublin"
conn() { echo "host=127.0.0.1 port=$PORT user=postgres dbname=up_$1"; }
for node in madrid dublin; do
    pq "$PORT" -d "up_$node" <<SQL
CREATE EXTENSION converge VERSION '$OLD_VERSION';
SET search_path = public, converge;
SELECT set_node('$node');
CREATE TABLE everything (
    id int PRIMARY KEY, title text, g gcounter, pn pncounter, b bcounter, gs gset, os orset,
    lr lwwreg, mv mvreg, lm lwwmap, om ormap, st seqtext);
SELECT replicate('everything');
SQL
done
# 0.1.0 did not follow dropped columns; the update learns their names.
pq "$PORT" -d up_madrid -c "CREATE TABLE shrinking (id int PRIMARY KEY, kept text, gone text)" \
   -c "SELECT converge.replicate('shrinking')" -c "ALTER TABLE shrinking DROP COLUMN gone"
pq "$PORT" -d up_madrid -c "SELECT converge.add_peer('dublin', '$(conn dublin)')"
pq "$PORT" -d up_dublin -c "SELECT converge.add_peer('madrid', '$(conn madrid)')"
fill() {  # fill NODE FIRST_ID: rows and edits of every type, a delete
    pq "$PORT" -d "up_$1" <<SQL
SET search_path = public, converge;
INSERT INTO everything
SELECT i, '$1 ' || i, incr(NULL::gcounter, i), decr(incr(NULL::pncounter, i), 2), incr(NULL::bcounter, 100),
       add(NULL::gset, 'g' || i), add(add(NULL::orset, 'a' || i), 'b'), assign(NULL::lwwreg, to_jsonb(i)),
       assign(NULL::mvreg, to_jsonb(i)), put(NULL::lwwmap, 'k', to_jsonb(i)), add(incr(NULL::ormap, 'n', i), 's', 'e'),
       insert(NULL::seqtext, 0, 'note ' || i)
  FROM generate_series($2, $2 + 19) i;
UPDATE everything SET g = incr(g, 1), os = remove(os, 'b'), st = delete(insert(st, length(st), ' typo'), length(st), 5),
       title = title || ' edited' WHERE id % 3 = 0 AND id BETWEEN $2 AND $2 + 19;
DELETE FROM everything WHERE id = $2 + 19;
SQL
}
sync_both() {
    pq "$PORT" -d up_madrid -c "SELECT converge.sync('dublin')" >/dev/null
    pq "$PORT" -d up_dublin -c "SELECT converge.sync('madrid')" >/dev/null
}
fill madrid 1; fill dublin 101; sync_both

state() {  # what must survive: values, ops, peers, frontier
    pq "$PORT" -d "up_$1" -At <<'SQL'
SELECT string_agg(t::text, E'\n' ORDER BY id) FROM everything t;
SELECT count(*), count(DISTINCT op_id), max(seq) FROM converge.op_log;
-- every field of every op but its origin (the update marks 0.1.0's origins)
SELECT md5(string_agg(concat_ws('|', seq, op_id, actor, counter, target_table, target_key, target_column, schema_version, epoch,
                                deps, encode(delta, 'hex'), encode(signature, 'hex'), outcome, reason), E'\n' ORDER BY seq))
  FROM converge.op_log;
-- rows' clocks, liveness (tombstones) and the stashes of deleted rows
SELECT md5(string_agg(concat_ws('|', tbl::regclass, target_key, clock, live, stash), E'\n' ORDER BY tbl::regclass::text, target_key))
  FROM converge.row_state;
SELECT string_agg(name || ' ' || slot || ' ' || origin, ',' ORDER BY name) FROM converge.peers;
SELECT converge.frontier();
SQL
}
for node in madrid dublin; do state $node > "$DIR/before.$node"; done
cmp -s <(head -1 "$DIR/before.madrid") <(head -1 "$DIR/before.dublin") || { echo "the two nodes differ before the update"; exit 1; }

# 2. This version: install, restart (no old library left in memory), update.
(cd "$ROOT" && cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null)
as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m fast -w restart -l "$DIR/data/server.log" >/dev/null
# Until the update, a write of a replicated table fails and says why (the
# new library cannot record ops in the old schema); other tables work.
pq "$PORT" -d up_madrid -c "CREATE TABLE unreplicated (id int PRIMARY KEY)" -c "INSERT INTO unreplicated VALUES (1)" >/dev/null
if out=$(pq "$PORT" -d up_madrid -c "UPDATE everything SET title = 'between' WHERE id = 1" 2>&1); then
    echo "a write of a replicated table worked before ALTER EXTENSION UPDATE"; exit 1
fi
grep -q "ALTER EXTENSION converge UPDATE" <<<"$out" || { echo "the write before the update failed without saying why: $out"; exit 1; }
pq "$PORT" -d up_madrid -c "DROP TABLE unreplicated" >/dev/null
for node in madrid dublin; do
    pq "$PORT" -d "up_$node" -c "ALTER EXTENSION converge UPDATE"
    v=$(pq "$PORT" -d "up_$node" -Atc "SELECT extversion FROM pg_extension WHERE extname = 'converge'")
    [ "$v" = "$NEW_VERSION" ] || { echo "up_$node is at $v after the update, not $NEW_VERSION"; exit 1; }
    state $node > "$DIR/after.$node"
    diff "$DIR/before.$node" "$DIR/after.$node" || { echo "the update changed what up_$node holds"; exit 1; }
done

# A table replicated under the old version refuses TRUNCATE now, as one
# replicated from now on does (it would record no ops).
if out=$(pq "$PORT" -d up_madrid -c "TRUNCATE everything" 2>&1); then
    echo "after the update, TRUNCATE of a table replicated under $OLD_VERSION worked"; exit 1
fi
grep -q "cannot truncate replicated table" <<<"$out" || { echo "TRUNCATE after the update failed otherwise: $out"; exit 1; }
taken=$(pq "$PORT" -d up_madrid -Atc "SELECT dropped_columns FROM converge.replicated WHERE table_name = 'shrinking'::regclass")
[ "$taken" = "{gone}" ] || { echo "after the update, shrinking's dropped columns are '$taken', not {gone}"; exit 1; }
if pq "$PORT" -d up_madrid -c "ALTER TABLE shrinking ADD COLUMN gone int" 2>/dev/null; then
    echo "after the update, a column took the name of a column dropped under $OLD_VERSION"; exit 1
fi
# The key's type is learnt too: it may widen, not change otherwise.
pq "$PORT" -d up_madrid -c "ALTER TABLE shrinking ALTER COLUMN id TYPE bigint" >/dev/null
if pq "$PORT" -d up_madrid -c "ALTER TABLE shrinking ALTER COLUMN id TYPE text" 2>/dev/null; then
    echo "after the update, a key column of a table replicated under $OLD_VERSION changed to text"; exit 1
fi

# 3. The updated nodes go on: more edits replicate, compaction works.
fill madrid 201; fill dublin 301; sync_both
for node in madrid dublin; do pq "$PORT" -d "up_$node" -Atc "SELECT string_agg(t::text, E'\n' ORDER BY id) FROM everything t" > "$DIR/rows.$node"; done
cmp -s "$DIR/rows.madrid" "$DIR/rows.dublin" || { echo "the nodes differ after replicating post-update edits"; exit 1; }
pq "$PORT" -d up_madrid -Atc "SELECT ops_removed > 0 FROM converge.compact()" | grep -qx t
pq "$PORT" -d up_madrid -Atc "SELECT applied > 0 AND op_log_rows >= 0 FROM converge.stats" | grep -qx t

# 4. The updated schema is exactly a fresh install's.
pq "$PORT" -d postgres -c "CREATE DATABASE up_fresh"
pq "$PORT" -d up_fresh -c "CREATE EXTENSION converge"
signature() {
    pq "$PORT" -d "$1" -At <<'SQL'
WITH ns AS (SELECT 'converge'::regnamespace AS oid)
SELECT 'function ' || p.oid::regprocedure || ' -> ' || pg_get_function_result(p.oid) || ' ' || p.provolatile::text || p.proisstrict::text
       || p.proparallel::text || p.prosecdef::text || p.proleakproof::text || coalesce(array_to_string(p.proconfig, ','), '') || ' ' || md5(p.prosrc)
       || ' acl ' || coalesce(p.proacl::text, '') || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '')
  FROM pg_proc p, ns WHERE p.pronamespace = ns.oid
UNION ALL
SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' acl ' || coalesce(c.relacl::text, '') || ' rls ' || c.relrowsecurity::text
       || ' opts ' || coalesce(array_to_string(c.reloptions, ','), '') || ' comment ' || coalesce(obj_description(c.oid, 'pg_class'), '')
       || CASE WHEN c.relkind = 'v' THEN ' view ' || pg_get_viewdef(c.oid) ELSE '' END
  FROM pg_class c, ns WHERE c.relnamespace = ns.oid
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attnum || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || ' notnull ' || a.attnotnull::text || ' default ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_class c JOIN ns ON c.relnamespace = ns.oid JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
UNION ALL
SELECT 'index ' || regexp_replace(pg_get_indexdef(i.indexrelid), 'INDEX \S+ ON', 'INDEX ON') FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid, ns WHERE c.relnamespace = ns.oid
UNION ALL
SELECT 'constraint ' || r.conrelid::regclass || ' ' || pg_get_constraintdef(r.oid) FROM pg_constraint r, ns WHERE r.connamespace = ns.oid
UNION ALL
SELECT 'policy ' || pol.polrelid::regclass || ' ' || pol.polname || ' ' || pol.polcmd::text || ' ' || coalesce(pg_get_expr(pol.polqual, pol.polrelid), '')
  FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid, ns WHERE c.relnamespace = ns.oid
UNION ALL
SELECT 'type ' || t.typname || ' ' || t.typtype::text || ' comment ' || coalesce(obj_description(t.oid, 'pg_type'), '') FROM pg_type t, ns
 WHERE t.typnamespace = ns.oid AND t.typtype <> 'c' AND t.typname NOT LIKE '\_%'
UNION ALL
SELECT 'operator ' || o.oid::regoperator || ' ' || o.oprcode || ' comment ' || coalesce(obj_description(o.oid, 'pg_operator'), '')
  FROM pg_operator o, ns WHERE o.oprnamespace = ns.oid
UNION ALL
SELECT 'event trigger ' || t.evtname || ' ' || t.evtevent || ' ' || t.evtfoid::regproc || ' ' || t.evtenabled::text
       || ' ' || coalesce(array_to_string(t.evttags, ','), '') || ' comment ' || coalesce(obj_description(t.oid, 'pg_event_trigger'), '')
  FROM pg_event_trigger t JOIN pg_depend d ON d.classid = 'pg_event_trigger'::regclass AND d.objid = t.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'converge'
UNION ALL
SELECT 'config ' || x::regclass FROM pg_extension e, unnest(e.extconfig) x WHERE e.extname = 'converge'
UNION ALL
SELECT 'member ' || pg_describe_object(d.classid, d.objid, 0) FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'converge'
ORDER BY 1;
SQL
}
signature up_madrid > "$DIR/schema.updated"
signature up_fresh > "$DIR/schema.fresh"
if ! diff "$DIR/schema.fresh" "$DIR/schema.updated"; then
    echo "the schema after ALTER EXTENSION UPDATE differs from a fresh install (< fresh, > updated)"; exit 1
fi
# 5. The monitoring queries of docs/postgres_exporter.yml run on the updated node.
python3 - "$ROOT/docs/postgres_exporter.yml" > "$DIR/exporter.sql" <<'PY'
import sys
lines, out, cur = open(sys.argv[1]).read().splitlines(), [], None
for l in lines:
    if l.strip() == "query: |":
        cur = []
    elif cur is not None and l.startswith("    "):
        cur.append(l.strip())
    elif cur is not None:
        out.append(" ".join(cur) + ";")
        cur = None
print("\n".join(out))
PY
[ "$(grep -c ';$' "$DIR/exporter.sql")" -eq 4 ] || { echo "expected 4 exporter queries"; exit 1; }
pq "$PORT" -d up_madrid -f "$DIR/exporter.sql" >/dev/null

echo "upgrade $OLD_VERSION -> $NEW_VERSION: values, ops and peers kept; replication and compaction work; schema equals a fresh install ($(wc -l < "$DIR/schema.fresh") objects compared)"
