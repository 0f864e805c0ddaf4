-- converge 0.1.0 -> 0.2.0 (ALTER EXTENSION converge UPDATE): causal
-- stability, compaction, lost peers and the stats view (SPEC section 6).
-- Every value, op and peer is kept; tests/upgrade.sh checks that, and that
-- the result is the schema a fresh 0.2.0 install makes.
\echo Use "ALTER EXTENSION converge UPDATE TO '0.2.0'" to load this file. \quit

-- Room on each page for the entries' HOT updates (sql/ops.sql); pages
-- written from now on keep it.
ALTER TABLE converge.row_state SET (fillfactor = 75);

-- The buffered ops' table makes room for the view users read
-- (converge.pending, with age; created at the end).
ALTER TABLE converge.pending RENAME TO pending_ops;
ALTER INDEX converge.pending_pkey RENAME TO pending_ops_pkey;
COMMENT ON TABLE converge.pending_ops IS 'Ops buffered until the ops they depend on arrive; applied automatically then. Read them through converge.pending.';

-- New functions of the library.
CREATE FUNCTION converge."may_ask"(
	"table" TEXT,
	"column" TEXT
) RETURNS bool
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'may_ask_wrapper';
COMMENT ON FUNCTION converge.may_ask(text, text) IS 'Internal: whether the acting role may make a request of a column of a table (UPDATE on the column), for converge.retry_pending.';
CREATE FUNCTION converge."merge_deltas"(
	"ty" TEXT,
	"deltas" bytea[]
) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'merge_deltas_wrapper';
CREATE FUNCTION converge."compact_values"(
	"tbl" oid,
	"col" TEXT,
	"ty" TEXT
) RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'compact_values_wrapper';
CREATE FUNCTION converge."stable_form"(
	"ty" TEXT,
	"v" bytea,
	"stable" bytea
) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'stable_form_wrapper';
CREATE FUNCTION converge."base_form"(
	"ty" TEXT,
	"base" bytea,
	"pending" bytea[]
) RETURNS bytea
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'base_form_wrapper';
CREATE FUNCTION converge."set_authority_on"(
	"tbl" oid,
	"col" TEXT,
	"node" TEXT,
	"decide" oid,
	"removes_only" bool
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_authority_on_wrapper';
CREATE FUNCTION converge."op_signing_bytes_of"(
	"op" bytea
) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'op_signing_bytes_of_wrapper';
CREATE FUNCTION converge."register_actor"(
	"actor" TEXT,
	"public_key" bytea
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'register_actor_wrapper';
CREATE FUNCTION converge."revoke_actor"(
	"actor" TEXT,
	"after" bigint DEFAULT NULL
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'revoke_actor_wrapper';
CREATE FUNCTION converge."under_peer_origin"() RETURNS bool
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'under_peer_origin_sql_wrapper';
CREATE FUNCTION converge."applying_trusted"() RETURNS bool
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'applying_trusted_sql_wrapper';
CREATE FUNCTION converge."repair"(
	"supersedes" TEXT[],
	"reason" TEXT
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'repair_wrapper';
CREATE FUNCTION converge."set_schema_version_on"(
	"tbl" oid,
	"col" TEXT,
	"version" INT
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_schema_version_on_wrapper';
CREATE FUNCTION converge."set_client_writes_on"(
	"tbl" oid,
	"allowed" bool
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_client_writes_on_wrapper';

-- What the workers learn of each peer (causal stability, lost peers).
ALTER TABLE converge.peer_status
    ADD COLUMN frontier      jsonb,
    ADD COLUMN frontier_at   timestamptz,
    ADD COLUMN ops_shipped   bigint NOT NULL DEFAULT 0,
    ADD COLUMN bytes_shipped bigint NOT NULL DEFAULT 0,
    ADD COLUMN lost_at       timestamptz,
    ADD COLUMN rejoining     boolean NOT NULL DEFAULT false,
    ADD COLUMN their_slot    text,
    ADD COLUMN closed_tables jsonb;
-- Added by a role that is not superuser: every connection to the peer
-- must use the conninfo's password, as add_peer's own did.
ALTER TABLE converge.peer ADD COLUMN password_required boolean NOT NULL DEFAULT false;

-- (At or below its actor's contiguous frontier an op is applied even when
-- compaction has taken its log row: an op waiting for it must go on.)
CREATE OR REPLACE FUNCTION converge.is_applied(op_id text) RETURNS boolean
LANGUAGE sql STABLE STRICT AS $$
    SELECT EXISTS (SELECT 1 FROM converge.op_log l
                    WHERE l.actor = converge.op_id_actor($1) AND l.counter = converge.op_id_counter($1)
                      AND l.outcome = 'applied')
        OR EXISTS (SELECT 1 FROM converge.actor_frontier f
                    WHERE f.actor = converge.op_id_actor($1) AND converge.op_id_counter($1) <= f.contiguous)
$$;
COMMENT ON FUNCTION converge.is_applied(text) IS 'Whether the op with this op_id has been applied here: at or below its actor''s contiguous frontier (also once compacted), or in the op log as the caller sees it (its row security: ops of tables the caller may not read are not seen).';
-- How far a peer's ops are applied here (pg_replication_origin_progress is
-- for superusers; an LSN is no secret). Only for a peer's origin, and NULL
-- for one that is missing (dropped by hand), so that converge.peers still
-- answers.
CREATE OR REPLACE FUNCTION converge.origin_progress(origin text) RETURNS pg_lsn
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_replication_origin_progress(origin, false)
     WHERE EXISTS (SELECT 1 FROM converge.peer p WHERE p.origin_name OPERATOR(pg_catalog.=) origin)
       AND pg_catalog.pg_replication_origin_oid(origin) IS NOT NULL
$$;
COMMENT ON FUNCTION converge.origin_progress(text) IS 'The remote LSN up to which a peer''s replication origin''s changes are applied here (for converge.peers); NULL for any other name.';

CREATE OR REPLACE VIEW converge.peers AS
    SELECT p.name,
           regexp_replace(regexp_replace(p.conninfo, 'password\s*=\s*(''([^'']|\\'')*''|\S+)', 'password=********', 'g'),
                          '(://[^:/@]*:)[^@]*@', '\1********@') AS conninfo,
           CASE WHEN s.lost_at IS NOT NULL THEN 'lost' WHEN p.paused THEN 'paused' WHEN w.problem IS NOT NULL THEN 'no_worker'
                WHEN s.rejoining THEN 'rejoining' ELSE s.state END AS state,
           p.slot_name AS slot, s.confirmed_lsn, s.lag_bytes, s.lag_seconds, s.last_success,
           coalesce(w.problem, s.last_error) AS last_error,
           s.last_error_at, s.caught_up_at, s.ops_received, s.bytes_received, p.origin_name AS origin,
           converge.origin_progress(p.origin_name) AS origin_lsn,
           s.frontier, s.frontier_at, s.ops_shipped, s.bytes_shipped, s.lost_at,
           -- (what converge.max_peer_lag_bytes is compared with: the WAL
           -- the peer's slot here keeps, src/replication/lost.rs)
           (SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), r.restart_lsn)::bigint
              FROM pg_catalog.pg_replication_slots r
             WHERE r.slot_name OPERATOR(pg_catalog.=) s.their_slot AND r.database OPERATOR(pg_catalog.=) pg_catalog.current_database()) AS wal_held_bytes,
           s.closed_tables
      FROM converge.peer p LEFT JOIN converge.peer_status s USING (name)
           CROSS JOIN (SELECT converge.worker_problem_here() AS problem) w;
COMMENT ON VIEW converge.peers IS 'Each peer: state (new, ok, down, paused, lost, rejoining, no_worker), our slot there, confirmed LSN, lag in bytes and seconds, last success and last error (conninfo shown without its password), wal_held_bytes: the WAL its slot here keeps (compared with converge.max_peer_lag_bytes; NULL while it has none, or while its name is not known yet), and closed_tables: the tables clients may not write there, by its last report (compaction drops a table''s row tombstones only once every peer not lost lists it).';

-- converge.replicated remembers the names of dropped columns (sql/ddl.sql).
ALTER TABLE converge.replicated ADD COLUMN dropped_columns text[] NOT NULL DEFAULT '{}';
-- 0.1.0 did not follow dropped columns: the layout still names them.
UPDATE converge.replicated r
   SET dropped_columns = ARRAY(SELECT n FROM (SELECT jsonb_object_keys(r.crdt_columns) UNION SELECT unnest(r.other_columns)) x(n)
                                WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                                                   WHERE a.attrelid = r.table_name AND a.attname = x.n AND a.attnum > 0 AND NOT a.attisdropped)
                                ORDER BY n);
-- The key columns' types and collations, for the key widening
-- follow_layout allows (a key column gone here gets NULL: not checked).
ALTER TABLE converge.replicated ADD COLUMN key_types regtype[] NOT NULL DEFAULT '{}',
                                ADD COLUMN key_typmods int[] NOT NULL DEFAULT '{}',
                                ADD COLUMN key_collations text[] NOT NULL DEFAULT '{}';
-- The newest clock of the row tombstones compact() dropped (sql/ops.sql).
ALTER TABLE converge.replicated ADD COLUMN tombstone_clock converge.lwwmap;
-- Whether clients may write a table here (sql/ops.sql): they could in
-- 0.1.0, and 0.1.0 dropped no tombstone.
ALTER TABLE converge.replicated ADD COLUMN client_writes boolean NOT NULL DEFAULT true;

-- >>> sql/maintenance.sql (kept equal by .ci/sync-update-script)
-- Running for months (SPEC section 6): causal stability, compaction and the
-- counters an operator watches. docs/operations.md explains each piece.

-- The base of each row: the merge of the deltas of every op compacted away
-- (per column; '' holds the row ops' lwwmap). A row is rebuilt from its
-- base and its remaining ops (converge.rebuild); the coordination features
-- that must leave ops out of a row (revocation, repair) start from it.
CREATE TABLE converge.row_base (
    target_table  text NOT NULL,   -- qualified name, as ops name it
    target_key    jsonb NOT NULL,
    target_column text NOT NULL,   -- '' = the row ops (lwwmap of other columns and "$live")
    state         bytea NOT NULL,  -- binary form of the column's type
    PRIMARY KEY (target_table, target_key, target_column)
);
COMMENT ON TABLE converge.row_base IS 'Per row and column: the merge of the deltas of every op that converge.compact() removed from the log (the base a row is rebuilt from).';

-- What left the rows that converge.stats counts, so that its counters
-- never fall (it adds these to what is still there): op_log rows that
-- compaction removed, per outcome; applied ops that a repair, revocation
-- or freeze took out (under applied); the traffic of removed peers.
CREATE TABLE converge.retired (
    counter text PRIMARY KEY,
    total   bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE converge.retired IS 'Per counter of converge.stats, what has left the rows it counts: op_log rows converge.compact() removed (per outcome), applied ops a repair, revocation or freeze took out (applied), and removed peers'' traffic (ops_shipped, bytes_shipped, ops_received, bytes_received).';

CREATE TABLE converge.compactions (
    ran_at      timestamptz PRIMARY KEY DEFAULT clock_timestamp(),
    stable      jsonb NOT NULL,
    ops_removed bigint NOT NULL,
    tombstones_removed bigint NOT NULL,
    values_compacted bigint NOT NULL,
    bytes_before bigint NOT NULL,
    bytes_after bigint NOT NULL,
    duration    interval NOT NULL
);
COMMENT ON TABLE converge.compactions IS 'One row per converge.compact() run: the stable frontier it used and what it removed.';

SELECT pg_catalog.pg_extension_config_dump('converge.row_base', '');
SELECT pg_catalog.pg_extension_config_dump('converge.retired', '');
SELECT pg_catalog.pg_extension_config_dump('converge.compactions', '');

-- The stable frontier: per actor, the highest counter that this node and
-- every peer not lost have applied. A peer's frontier counts only once a
-- probe found everything the peer had committed when it reported applied
-- here (src/replication/worker.rs), so every op a peer made before it saw
-- an op of the stable frontier is here too.
CREATE FUNCTION converge.stable_frontier() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, converge, pg_temp AS $$
    WITH mine AS (SELECT converge.frontier() AS f),
         views AS (SELECT f FROM mine
                   UNION ALL
                   SELECT coalesce(s.frontier, '{}') FROM converge.peer p LEFT JOIN converge.peer_status s USING (name)
                    WHERE s.lost_at IS NULL)
    SELECT coalesce(jsonb_object_agg(a.actor, a.c ORDER BY a.actor), '{}')
      FROM (SELECT e.key AS actor, min(coalesce((v.f ->> e.key)::bigint, 0)) AS c
              FROM mine CROSS JOIN jsonb_each(mine.f) e CROSS JOIN views v
             GROUP BY e.key) a
     WHERE a.c > 0
$$;
COMMENT ON FUNCTION converge.stable_frontier() IS 'Per actor, the highest counter every node (this one and each peer not lost) has applied: what converge.compact() may fold away.';

-- The clocks of row tombstones dropped from a table (by compact(), a
-- join's rows the peer no longer has, a copy from a peer's snapshot),
-- merged into the table's floor: a key inserted again here writes newer
-- than them, as it did with the tombstones (src/row_ops.rs).
CREATE FUNCTION converge.raise_tombstone_floor(tbl regclass, clock converge.lwwmap) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, converge, pg_temp AS $$
    UPDATE converge.replicated r SET tombstone_clock = coalesce(r.tombstone_clock || $2, $2) WHERE r.table_name = $1
$$;
COMMENT ON FUNCTION converge.raise_tombstone_floor(regclass, converge.lwwmap) IS 'Internal (converge.compact, joins and copies from a snapshot): merge the clock of dropped row tombstones into the table''s converge.replicated.tombstone_clock.';
REVOKE ALL ON FUNCTION converge.raise_tombstone_floor(regclass, converge.lwwmap) FROM PUBLIC;

-- Whether offline clients (ops sent through converge.apply) may write a
-- table here: while they may, compact() keeps its row tombstones
-- (src/maintenance.rs, docs/operations.md).
CREATE FUNCTION converge.set_client_writes(tbl regclass, allowed boolean) RETURNS void
LANGUAGE sql AS $$ SELECT converge.set_client_writes_on(tbl::oid, allowed) $$;
COMMENT ON FUNCTION converge.set_client_writes(regclass, boolean) IS 'Whether ops sent through converge.apply (offline clients) may write the table here (default true); run it on every node alike, as the table''s owner. While they may, compact() keeps the table''s row tombstones and seqtext deleted characters, so that a client''s late edit finds them on every node; while they may not, such ops are rejected with client_writes_off, and compact() drops them once stable and once every peer not lost has reported the table closed too. Closing waits for the table''s writers.';
COMMENT ON FUNCTION converge.set_client_writes_on(oid, boolean) IS 'Internal: the body of converge.set_client_writes (checks that the caller owns the table).';

-- Whether every peer not lost says, in its last report, that clients may
-- not write the table there. The report is read with the peer's frontier,
-- after which everything it had applied was applied here: every client
-- op it took before saying so is here too.
CREATE FUNCTION converge.clients_off_at_peers(tbl regclass) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, converge, pg_temp AS $$
    SELECT NOT EXISTS (SELECT 1 FROM converge.peer p LEFT JOIN converge.peer_status s USING (name)
                        WHERE s.lost_at IS NULL
                          AND NOT coalesce(s.closed_tables ? (SELECT format('%I.%I', n.nspname, c.relname)
                                                                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                                               WHERE c.oid = $1), false))
$$;
COMMENT ON FUNCTION converge.clients_off_at_peers(regclass) IS 'Internal (converge.compact): whether every peer not lost last reported that clients may not write the table there.';
REVOKE ALL ON FUNCTION converge.clients_off_at_peers(regclass) FROM PUBLIC;

CREATE FUNCTION converge.compact()
RETURNS TABLE (ops_removed bigint, bytes_before bigint, bytes_after bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, converge, pg_temp AS $$
#variable_conflict use_column
DECLARE
    me     text := (SELECT name FROM converge.node_identity);
    stable jsonb;
    before bigint;
    n      bigint;
    dead   bigint;
    vals   bigint := 0;
    col    record;
    t0     timestamptz := clock_timestamp();
BEGIN
    -- One compaction at a time (row_base is written by nothing else).
    LOCK TABLE converge.row_base IN EXCLUSIVE MODE;
    stable := converge.stable_frontier();
    SELECT coalesce(sum(pg_column_size(l.*)), 0) INTO before FROM converge.op_log l;
    -- This node's counter lives in its newest op; once the log may hold
    -- none, actor_frontier keeps it (src/local_ops.rs reads it there).
    IF me IS NOT NULL AND stable ? me THEN
        INSERT INTO converge.actor_frontier AS f (actor, contiguous) VALUES (me, (stable ->> me)::bigint)
            ON CONFLICT (actor) DO UPDATE SET contiguous = greatest(f.contiguous, EXCLUDED.contiguous);
    END IF;
    -- Applied ops every node has, and the duplicate and buffered records
    -- of them, leave the log; applied deltas fold into the rows' bases.
    -- Rejected and quarantined ops stay (SPEC section 3: never dropped).
    WITH gone AS (
        DELETE FROM converge.op_log l USING jsonb_each_text(stable) s(actor, upto)
         WHERE l.actor = s.actor AND l.counter <= s.upto::bigint
           AND l.outcome IN ('applied', 'duplicate', 'buffered')
           -- A repair stays in the history with its reason (SPEC 5); a
           -- handover, for a node that rejoins from this log.
           AND l.target_table IS DISTINCT FROM 'converge.repair' AND l.target_table IS DISTINCT FROM 'converge.handover'
           -- A void stays, so that the op it gave up can take its place
           -- whenever it arrives (docs/operations-log.md, voids); so does an
           -- op a void contested, which changes_since gives to callers that
           -- may hold the void.
           AND l.target_table IS DISTINCT FROM 'converge.void'
           AND NOT EXISTS (SELECT 1 FROM converge.op_log v
                            WHERE v.target_table = 'converge.void' AND v.actor = l.actor AND v.counter = l.counter
                              -- (a void refused here contested nothing)
                              AND v.outcome IN ('applied', 'duplicate', 'superseded'))
        RETURNING l.*),
    folded AS (
        SELECT g.target_table, g.target_key, g.target_column,
               converge.merge_deltas(CASE WHEN g.target_column = '' THEN 'lwwmap'
                                          ELSE r.crdt_columns ->> g.target_column END,
                                     array_agg(g.delta ORDER BY g.seq)) AS state
          FROM gone g LEFT JOIN converge.replicated r ON r.table_name = to_regclass(g.target_table)
         WHERE g.outcome = 'applied' AND g.target_table IS NOT NULL AND r.table_name IS NOT NULL
           AND (g.target_column = '' OR r.crdt_columns ? g.target_column)
         GROUP BY g.target_table, g.target_key, g.target_column, r.crdt_columns ->> g.target_column),
    base AS (
        INSERT INTO converge.row_base AS b (target_table, target_key, target_column, state)
        SELECT f.target_table, f.target_key, f.target_column, f.state FROM folded f
            ON CONFLICT (target_table, target_key, target_column) DO UPDATE
           SET state = converge.merge_deltas(CASE WHEN b.target_column = '' THEN 'lwwmap'
                                                  ELSE (SELECT r.crdt_columns ->> b.target_column FROM converge.replicated r
                                                         WHERE r.table_name = to_regclass(b.target_table)) END,
                                             ARRAY[b.state, EXCLUDED.state])),
    horizon AS (
        INSERT INTO converge.log_horizon AS h (actor, upto)
        SELECT g.actor, max(g.counter) FROM gone g WHERE g.outcome = 'applied' GROUP BY g.actor
            ON CONFLICT (actor) DO UPDATE SET upto = greatest(h.upto, EXCLUDED.upto)),
    counted AS (
        INSERT INTO converge.retired AS c (counter, total)
        SELECT g.outcome, count(*) FROM gone g GROUP BY g.outcome
            ON CONFLICT (counter) DO UPDATE SET total = c.total + EXCLUDED.total)
    SELECT count(*) INTO n FROM gone;

    -- While a peer is lost, only the log and WAL are freed: its edits made
    -- while away are concurrent with what the others remove now, and may
    -- name a seqtext character, a dot or a deleted row that the metadata
    -- below would drop. The bases then hold ops it has not applied, so
    -- that metadata waits until every peer not lost reports having applied
    -- every op folded so far (the stable frontier covers the horizon): a
    -- peer that has just rejoined reports nothing until it has copied what
    -- it missed, and a rejoin merges its old rows with ours (rejoin.rs).
    -- Read now, in one statement: a peer may have come back during the
    -- fold, unseen by the stable frontier read above. A revoked actor's
    -- ops beyond its cut-off, folded before the revocation, are never
    -- applied elsewhere again: they count to the cut-off only (a
    -- revocation behind the horizon is a known divergence, coordination.md).
    IF EXISTS (SELECT 1 FROM converge.peer_status WHERE lost_at IS NOT NULL)
       OR EXISTS (SELECT 1 FROM (SELECT converge.stable_frontier() AS f) now_stable, converge.log_horizon h
                           LEFT JOIN converge.actor a ON a.actor = h.actor
                   WHERE least(h.upto, a.revoked_after) > coalesce((now_stable.f ->> h.actor)::bigint, 0)) THEN
        INSERT INTO converge.compactions (stable, ops_removed, tombstones_removed, values_compacted, bytes_before, bytes_after, duration)
        SELECT stable, n, 0, 0, before, coalesce(sum(pg_column_size(l.*)), 0), clock_timestamp() - t0 FROM converge.op_log l
        RETURNING compactions.ops_removed, compactions.bytes_before, compactions.bytes_after
             INTO ops_removed, bytes_before, bytes_after;
        RETURN NEXT;
        RETURN;
    END IF;

    -- Row tombstones whose every op has been folded: all nodes have applied
    -- the delete, and every op a node made before it saw the delete is
    -- here, so no peer's op can be concurrent with it any more. Only
    -- tombstones with an empty stash: a key inserted again resumes the
    -- CRDT state its tombstone kept, on every node, and nodes compact at
    -- different moments, so a stash dropped on one node and not on another
    -- would make the same insert resume on one and start afresh on the
    -- other (docs/operations.md). A tombstone without CRDT state can go: a
    -- later insert writes every other column with a newer clock anyway.
    -- Except a plain column with an authority, which an insert made
    -- elsewhere writes as a placeholder that the clock's older writes
    -- beat: the tombstones of such a table stay, as a stash does. And
    -- except in a table clients may write, here or at a peer not lost
    -- (converge.set_client_writes): no frontier covers what an offline
    -- client still holds, and its late edit of the row must find the
    -- tombstone on every node alike.
    -- Rows another transaction holds are left for the next compaction
    -- (SKIP LOCKED): compaction never waits on a writer, so it never
    -- deadlocks with one.
    WITH still AS (
        SELECT DISTINCT l.target_table, l.target_key FROM converge.op_log l WHERE l.outcome = 'applied'
        UNION
        SELECT (q.op).target_table, (q.op).target_key FROM converge.pending_ops q
        -- An op kept aside here may still be applied (replay, a version or
        -- freeze set, a registry change) after every other node took it:
        -- its row waits for it. (A client's op refused client_writes_off
        -- can only be refused again while the table stays closed.)
        UNION
        SELECT k.target_table, k.target_key FROM converge.quarantine k
         WHERE k.target_key IS NOT NULL AND k.reason IS DISTINCT FROM 'client_writes_off'),
    -- The tables whose floor (below) this compaction may raise: one whose
    -- layout another transaction holds keeps its tombstones this time.
    layouts AS (SELECT r.table_name FROM converge.replicated r WHERE NOT r.client_writes AND converge.clients_off_at_peers(r.table_name)
                 FOR NO KEY UPDATE SKIP LOCKED),
    cand AS (
        SELECT rs.ctid AS tid, format('%I.%I', ns.nspname, c.relname) AS target_table, rs.target_key
          FROM converge.row_state rs JOIN pg_class c ON c.oid = rs.tbl JOIN pg_namespace ns ON ns.oid = c.relnamespace
         WHERE NOT rs.live AND rs.stash = '{}' AND rs.tbl IN (SELECT l.table_name FROM layouts l)
           AND NOT EXISTS (SELECT 1 FROM converge.authority a JOIN converge.replicated r ON r.table_name = a.table_name
                            WHERE a.table_name = rs.tbl AND a.column_name <> '' AND NOT r.crdt_columns ? a.column_name)
           AND NOT EXISTS (SELECT 1 FROM still s
                            WHERE s.target_table = format('%I.%I', ns.nspname, c.relname) AND s.target_key = rs.target_key)
           FOR UPDATE OF rs SKIP LOCKED),
    dropped AS (
        DELETE FROM converge.row_state rs USING cand WHERE rs.ctid = cand.tid
        RETURNING cand.target_table, cand.target_key, rs.tbl, rs.clock),
    unbased AS (
        DELETE FROM converge.row_base b USING dropped d
         WHERE b.target_table = d.target_table AND b.target_key = d.target_key)
    -- Their clocks are kept, merged per table: a key inserted again here
    -- must write newer than its delete, as it did with the tombstone (a
    -- node that kept it compares with it), also when the delete came from
    -- a node whose clock runs ahead of this one (src/row_ops.rs).
    SELECT coalesce(sum(f.n), 0)::bigint INTO dead
      FROM (SELECT count(*) AS n, converge.raise_tombstone_floor(d.tbl, converge.merge_agg(d.clock)) FROM dropped d GROUP BY d.tbl) f;

    -- Metadata inside values, against each row's base (its stable ops):
    -- seqtext's deleted characters that nothing hangs on, the context dots
    -- of removed orset elements, overwritten mvreg values and removed
    -- ormap keys, elements and values. seqtext only where clients may not
    -- write: an offline client's insert may name a deleted character as
    -- its origin, and would be placed on a node that kept it and left
    -- invisible on one that dropped it.
    -- (The seqtext tables' settings locked as for the tombstones above.)
    FOR col IN SELECT r.table_name, c.key AS name, c.value AS ty FROM converge.replicated r, jsonb_each_text(r.crdt_columns) c
                WHERE c.value IN ('orset', 'mvreg', 'ormap') ORDER BY 1, 2 LOOP
        vals := vals + converge.compact_values(col.table_name, col.name, col.ty);
    END LOOP;
    FOR col IN SELECT r.table_name, c.key AS name, c.value AS ty FROM converge.replicated r, jsonb_each_text(r.crdt_columns) c
                WHERE c.value = 'seqtext' AND NOT r.client_writes AND converge.clients_off_at_peers(r.table_name)
                ORDER BY 1, 2 FOR NO KEY UPDATE OF r SKIP LOCKED LOOP
        vals := vals + converge.compact_values(col.table_name, col.name, col.ty);
    END LOOP;

    INSERT INTO converge.compactions (stable, ops_removed, tombstones_removed, values_compacted, bytes_before, bytes_after, duration)
    SELECT stable, n, dead, vals, before, coalesce(sum(pg_column_size(l.*)), 0), clock_timestamp() - t0 FROM converge.op_log l
    RETURNING compactions.ops_removed, compactions.bytes_before, compactions.bytes_after
         INTO ops_removed, bytes_before, bytes_after;
    RETURN NEXT;
END $$;
COMMENT ON FUNCTION converge.compact() IS 'Fold the ops every node not lost has applied into the rows'' bases and remove them from the op log; drop the row tombstones without CRDT state whose ops are all folded and none waits or is kept aside here, and compact seqtext (deleted characters), orset, mvreg and ormap values, seqtext and tombstones only in tables no client may write here or at a peer not lost (converge.set_client_writes); returns the ops removed and the log''s row bytes before and after (reclaiming the space is VACUUM''s). Runs only when called.';

-- A row's column as rebuilt from its base and its ops still in the log.
CREATE FUNCTION converge.rebuild(tbl regclass, key jsonb, col text) RETURNS bytea
LANGUAGE sql STABLE SET search_path = pg_catalog, converge, pg_temp AS $$
    WITH t AS (SELECT format('%I.%I', n.nspname, c.relname) AS name,
                      CASE WHEN col = '' THEN 'lwwmap' ELSE r.crdt_columns ->> col END AS ty
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN converge.replicated r ON r.table_name = c.oid
                WHERE c.oid = tbl)
    SELECT converge.merge_deltas(t.ty, array_agg(d ORDER BY o))
      FROM t, LATERAL (SELECT b.state AS d, 0::bigint AS o FROM converge.row_base b
                        WHERE b.target_table = t.name AND b.target_key = key AND b.target_column = col
                       UNION ALL
                       SELECT l.delta, l.seq FROM converge.op_log l
                        WHERE l.outcome = 'applied' AND l.target_table = t.name AND l.target_key = key
                          AND l.target_column = col) parts
     WHERE t.ty IS NOT NULL
     GROUP BY t.ty
$$;
COMMENT ON FUNCTION converge.rebuild(regclass, jsonb, text) IS 'The binary state of one column of one row rebuilt from its base (what compaction folded) and the applied ops still in the log; NULL when there are none.';

-- What a node joining or rejoining from a snapshot copies, when this node
-- has compacted its log past that node's frontier
-- (src/replication/rejoin.rs): every key of a replicated table with its
-- CRDT state (the row's, or the stash of a deleted row), its row clock,
-- whether it is live, and its base (column -> base64 of the binary state). For peer roles (converge.grant_peer) and superusers:
-- it reads the whole table, as replication does.
CREATE FUNCTION converge.rejoin_rows(tbl regclass)
RETURNS TABLE (target_key jsonb, crdt jsonb, clock text, live boolean, base jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, converge, pg_temp AS $$
DECLARE
    r    converge.replicated;
    keys text;
    cols text;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)
       AND NOT EXISTS (SELECT 1 FROM converge.peer_reader p WHERE pg_has_role(session_user, p.role, 'MEMBER')) THEN
        RAISE EXCEPTION 'permission denied: converge.rejoin_rows is for peer roles (converge.grant_peer)' USING ERRCODE = '42501';
    END IF;
    SELECT * INTO r FROM converge.replicated WHERE table_name = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not replicated', tbl USING ERRCODE = '55000';
    END IF;
    -- Each key as the op trigger names it (src/trigger.rs key_value): integers,
    -- booleans and numbers as JSON, any other type as its text form, made by
    -- its output function (format), so that no cast a table owner made (to
    -- json, or to text) runs here, as converge's owner.
    SELECT string_agg(format('%L, %s', k, CASE WHEN a.atttypid = ANY ('{int2,int4,int8,bool,numeric,float4,float8}'::regtype[])
                                             THEN format('t.%I', k) ELSE format('pg_catalog.format(''%%s'', t.%I)', k) END), ', ')
      INTO keys FROM unnest(r.key_columns) k JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = k;
    SELECT coalesce(string_agg(format('%L, t.%I::text', c, c), ', '), '') INTO cols FROM jsonb_object_keys(r.crdt_columns) c;
    RETURN QUERY EXECUTE format(
        'SELECT r.key, r.crdt, r.clock, r.live,
                (SELECT jsonb_object_agg(b.target_column, encode(b.state, ''base64'')) FROM converge.row_base b
                  WHERE b.target_table = $2 AND b.target_key = r.key)
           FROM (SELECT coalesce(rs.target_key, k.key) AS key, CASE WHEN k.key IS NULL THEN rs.stash ELSE k.crdt END AS crdt,
                        rs.clock::text AS clock, coalesce(rs.live, true) AS live
                   FROM (SELECT jsonb_build_object(%s) AS key, jsonb_strip_nulls(jsonb_build_object(%s)) AS crdt FROM %s t) k
                   FULL JOIN (SELECT * FROM converge.row_state s WHERE s.tbl = $1) rs ON rs.target_key = k.key) r', keys, cols, tbl)
        USING tbl, (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.oid = tbl);
END $$;
COMMENT ON FUNCTION converge.rejoin_rows(regclass) IS 'Every key of a replicated table with its CRDT state, row clock and liveness: what a peer copies to join or rejoin when the log was compacted past its frontier (peer roles only).';

-- One row, for a metrics exporter: cumulative outcome counts (compaction
-- does not reset them), traffic, the log's size, and the ages an operator
-- alerts on.
CREATE VIEW converge.stats AS
    WITH log AS (SELECT count(*) FILTER (WHERE outcome = 'applied') AS applied,
                        count(*) FILTER (WHERE outcome = 'duplicate') AS duplicate,
                        count(*) FILTER (WHERE outcome = 'buffered') AS buffered,
                        count(*) FILTER (WHERE outcome = 'rejected') AS rejected,
                        count(*) FILTER (WHERE outcome = 'quarantined') AS quarantined,
                        count(DISTINCT op_id) FILTER (WHERE outcome = 'superseded') AS superseded,
                        count(*) AS rows
                   FROM converge.op_log),
         gone AS (SELECT coalesce(sum(total) FILTER (WHERE counter = 'applied'), 0) AS applied,
                         coalesce(sum(total) FILTER (WHERE counter = 'duplicate'), 0) AS duplicate,
                         coalesce(sum(total) FILTER (WHERE counter = 'buffered'), 0) AS buffered,
                         coalesce(sum(total) FILTER (WHERE counter = 'ops_shipped'), 0) AS ops_shipped,
                         coalesce(sum(total) FILTER (WHERE counter = 'bytes_shipped'), 0) AS bytes_shipped,
                         coalesce(sum(total) FILTER (WHERE counter = 'ops_received'), 0) AS ops_received,
                         coalesce(sum(total) FILTER (WHERE counter = 'bytes_received'), 0) AS bytes_received
                    FROM converge.retired),
         peers AS (SELECT coalesce(sum(s.ops_shipped), 0) AS ops_shipped, coalesce(sum(s.bytes_shipped), 0) AS bytes_shipped,
                          coalesce(sum(s.ops_received), 0) AS ops_received, coalesce(sum(s.bytes_received), 0) AS bytes_received,
                          count(*) FILTER (WHERE s.lost_at IS NOT NULL) AS lost,
                          min(coalesce(s.frontier_at, p.added_at)) FILTER (WHERE s.lost_at IS NULL) AS oldest_report
                     FROM converge.peer p LEFT JOIN converge.peer_status s USING (name))
    SELECT (log.applied + gone.applied)::bigint AS applied,
           (log.duplicate + gone.duplicate)::bigint AS duplicate,
           (log.buffered + gone.buffered)::bigint AS buffered,
           log.rejected AS rejected,
           log.quarantined AS quarantined,
           log.superseded AS superseded,
           (peers.ops_shipped + gone.ops_shipped)::bigint AS ops_shipped,
           (peers.bytes_shipped + gone.bytes_shipped)::bigint AS bytes_shipped,
           (peers.ops_received + gone.ops_received)::bigint AS ops_received,
           (peers.bytes_received + gone.bytes_received)::bigint AS bytes_received,
           log.rows AS op_log_rows,
           pg_total_relation_size('converge.op_log') AS op_log_bytes,
           (SELECT count(*) FROM converge.pending_ops) AS pending,
           extract(epoch FROM clock_timestamp() - (SELECT min(received_at) FROM converge.pending_ops))::double precision
               AS oldest_pending_age_seconds,
           coalesce(extract(epoch FROM clock_timestamp() - peers.oldest_report), 0)::double precision
               AS stable_frontier_age_seconds,
           peers.lost AS lost_peers,
           (SELECT max(ran_at) FROM converge.compactions) AS last_compaction
      FROM log, gone, peers;
COMMENT ON VIEW converge.stats IS 'One row of cumulative counters for monitoring: ops applied, duplicate, buffered, rejected, quarantined and superseded (compaction does not reset them), ops and bytes shipped to and received from peers, the op log''s rows and bytes, pending ops and the oldest one''s age, the stable frontier''s age, lost peers, the last compaction.';
GRANT SELECT ON converge.stats TO PUBLIC;

REVOKE ALL ON FUNCTION converge.compact(), converge.rebuild(regclass, jsonb, text), converge.compact_values(oid, text, text) FROM PUBLIC;
COMMENT ON FUNCTION converge.compact_values(oid, text, text) IS 'Internal (converge.compact): give the values of a seqtext, orset, mvreg or ormap column, and their bases, their stable form against each row''s base.';
COMMENT ON FUNCTION converge.base_form(text, bytea, bytea[]) IS 'Internal (converge.compact): a row''s base (binary form of the named type) without what its stable ops removed, or NULL when it has nothing to drop or when an op still in the log (the third value: their deltas), alone or with the others, would merge differently into it.';
COMMENT ON FUNCTION converge.stable_form(text, bytea, bytea) IS 'Internal (converge.compact): a value (binary form of the named type) without the metadata of what its stable ops (the second value: the row''s base) removed and nothing needs any more, or NULL when it has none.';
REVOKE ALL ON converge.row_base, converge.retired FROM PUBLIC;
-- The runs' log names no table and no value: monitoring reads it.
GRANT SELECT ON converge.compactions TO PUBLIC;
COMMENT ON FUNCTION converge.merge_deltas(text, bytea[]) IS 'The merge of deltas of one converge type (by name), in binary form; NULL over no non-NULL input.';
-- <<< sql/maintenance.sql

-- >>> sql/coordination.sql (kept equal by .ci/sync-update-script)
-- Coordination boundaries (SPEC section 5): the few facts merging cannot
-- protect are decided by one named node, the authority. docs/coordination.md
-- explains each piece.

-- Set on every node alike with converge.set_authority (like replicate: it is
-- configuration, not data, so it does not replicate).
CREATE TABLE converge.authority (
    table_name    regclass NOT NULL,
    column_name   text NOT NULL,          -- '' = the table's authority
    node          text NOT NULL,
    decide        regprocedure,
    removes_only  boolean NOT NULL DEFAULT false,
    -- A plain column's constant default as JSON: an INSERT elsewhere may
    -- carry it (rows can be created anywhere). NULL: only NULL may.
    default_value jsonb,
    -- Moved by a handover (docs/coordination.md, "Moving an authority"):
    -- the node's ops with a counter above `since` are the authority's
    -- (NULL: handed over to it, not taken yet, so nobody holds it); and
    -- the earlier holders' terms, [{node, after, until}], whose ops with
    -- after < counter < until were. Every node applies the same handover
    -- ops, so every node judges an op alike (src/coordination.rs).
    since         bigint DEFAULT 0,
    earlier       jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (table_name, column_name)
);
COMMENT ON TABLE converge.authority IS 'Per replicated table and column, the node that decides it (set with converge.set_authority on every node; a change of node arrives as handover ops), since when, and the earlier holders'' terms.';
SELECT pg_catalog.pg_extension_config_dump('converge.authority', '');
GRANT SELECT ON converge.authority TO PUBLIC;

CREATE VIEW converge.authorities AS
    SELECT format('%I.%I', n.nspname, c.relname) AS target_table, nullif(a.column_name, '') AS target_column,
           a.node, a.decide, a.removes_only, a.since, a.earlier
      FROM converge.authority a JOIN pg_class c ON c.oid = a.table_name JOIN pg_namespace n ON n.oid = c.relnamespace;
COMMENT ON VIEW converge.authorities IS 'The authorities set on this node: per table (target_column NULL) or column, the node that decides it; since: its ops above that counter are the authority''s (NULL: handed over to it, not taken yet); earlier: the holders before it and their terms.';
GRANT SELECT ON converge.authorities TO PUBLIC;

-- Internal: validate and record an authority (run as converge's owner by
-- converge.set_authority once it has checked the caller owns the table).
CREATE FUNCTION converge.store_authority(tbl regclass, col text, node text, decide regprocedure, removes_only boolean)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, converge, pg_temp AS $$
DECLARE
    r   converge.replicated;
    ty  text;
    def jsonb;
    expr text;
BEGIN
    SELECT * INTO r FROM converge.replicated WHERE table_name = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not replicated', tbl USING ERRCODE = '55000',
            HINT = 'Run converge.replicate on it first.';
    END IF;
    IF node IS NULL OR node !~ '^[A-Za-z0-9_.-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid authority node "%": use 1-63 of A-Z a-z 0-9 _ . - (the node''s converge.node())', node
            USING ERRCODE = '22023';
    END IF;
    IF decide IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM pg_proc p WHERE p.oid = decide AND p.pronargs = 1 AND p.prokind = 'f' AND NOT p.proretset
              AND p.proargtypes[0] = 'converge.requests'::regtype AND p.prorettype = 'jsonb'::regtype) THEN
        RAISE EXCEPTION 'decide function % must take one converge.requests and return jsonb', decide USING ERRCODE = '42P13';
    END IF;
    IF col IS NOT NULL THEN
        IF col = ANY (r.key_columns) THEN
            RAISE EXCEPTION 'column "%" is part of the primary key of %', col, tbl USING ERRCODE = '0A000',
                HINT = 'A key column names the row; it cannot have an authority.';
        END IF;
        ty := r.crdt_columns ->> col;
        IF ty IS NULL AND NOT col = ANY (r.other_columns) THEN
            RAISE EXCEPTION 'column "%" of % does not exist', col, tbl USING ERRCODE = '42703';
        END IF;
        -- Only these types' removals can be told from their other changes
        -- by the op alone (every node must decide alike); a gset never
        -- removes.
        IF removes_only AND NOT coalesce(ty IN ('orset', 'gset', 'ormap'), false) THEN
            RAISE EXCEPTION 'removes_only needs an orset, gset or ormap column; "%" is %', col, coalesce(ty, 'a plain column')
                USING ERRCODE = '22023';
        END IF;
        IF ty IS NULL THEN
            -- A literal default can be carried by an insert made anywhere.
            -- Only a literal of a built-in type is evaluated: this runs as
            -- converge's owner, and any other expression (an operator, a
            -- function, a type's input function) would be the table
            -- owner's code running with those rights.
            SELECT pg_get_expr(d.adbin, d.adrelid) INTO expr
              FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
             WHERE d.adrelid = tbl AND a.attname = col;
            IF expr ~ '^''([^'']|'''')*''::(text|character varying|integer|bigint|smallint|numeric|boolean)$'
               OR expr ~ '^-?[0-9]+(\.[0-9]+)?$' OR expr IN ('true', 'false') THEN
                EXECUTE format('SELECT to_jsonb(%s)', expr) INTO def;
            END IF;
        END IF;
    ELSIF removes_only THEN
        RAISE EXCEPTION 'removes_only needs a column' USING ERRCODE = '22023';
    END IF;
    INSERT INTO converge.authority AS a (table_name, column_name, node, decide, removes_only, default_value)
    VALUES (tbl, coalesce(col, ''), node, decide, removes_only, def)
        ON CONFLICT (table_name, column_name) DO UPDATE
       SET node = EXCLUDED.node, decide = EXCLUDED.decide, removes_only = EXCLUDED.removes_only,
           default_value = EXCLUDED.default_value,
           -- Replacing a holder that is no peer here (src/handover.rs):
           -- every op of the node named counts, as for a first setting.
           since = CASE WHEN a.node = EXCLUDED.node THEN a.since ELSE 0 END;
END $$;
REVOKE ALL ON FUNCTION converge.store_authority(regclass, text, text, regprocedure, boolean) FROM PUBLIC;
COMMENT ON FUNCTION converge.store_authority(regclass, text, text, regprocedure, boolean) IS 'Internal (converge.set_authority): validate and record an authority.';

CREATE FUNCTION converge.set_authority(tbl regclass, col text, node text, decide regprocedure DEFAULT NULL,
                                       removes_only boolean DEFAULT false)
RETURNS void LANGUAGE sql AS $$ SELECT converge.set_authority_on(tbl::oid, col, node, decide::oid, removes_only) $$;
COMMENT ON FUNCTION converge.set_authority_on(oid, text, text, oid, boolean) IS 'Internal: the body of converge.set_authority (checks that the caller owns the table).';
COMMENT ON FUNCTION converge.set_authority(regclass, text, text, regprocedure, boolean) IS 'Name the node that decides a column of a replicated table (col NULL: the table''s authority). Run it on every node, as the table''s owner. Elsewhere a local change of that column fails with 42501, and an op of it made by another actor is rejected with not_authority. A second call naming another node hands the authority over: it starts on the node that holds it, replicates, and the new node takes it when it runs set_authority (docs/coordination.md, "Moving an authority").';

-- The guard on a table with authority columns (converge.set_authority
-- creates it, firing only for updates of those columns): on every node but
-- the authority, a local change of the column fails. An insert may leave
-- it NULL or at its constant default, so rows can be created anywhere.
-- Changes converge applies (ops already checked) do not fire it.
CREATE FUNCTION converge.guard_authority() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, converge, pg_temp AS $$
DECLARE
    me text := converge.node();
    a  record;
    n  jsonb := to_jsonb(NEW);
    o  jsonb := CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) END;
BEGIN
    FOR a IN SELECT x.column_name, x.node, x.default_value, x.decide FROM converge.authority x
              WHERE x.table_name = TG_RELID AND x.column_name <> '' AND NOT x.removes_only
                AND (x.node IS DISTINCT FROM me OR x.since IS NULL) LOOP
        IF NOT ((TG_OP = 'UPDATE' AND (n -> a.column_name) IS DISTINCT FROM (o -> a.column_name))
                OR (TG_OP = 'INSERT' AND (n -> a.column_name) <> 'null'
                    AND (n -> a.column_name) IS DISTINCT FROM a.default_value)) THEN
            CONTINUE;
        END IF;
        IF a.node = me THEN
            RAISE EXCEPTION 'column "%" of % was handed over to this node, which has not taken it', a.column_name, TG_RELID::regclass
                USING ERRCODE = '42501',
                      HINT = format('Take it with converge.set_authority(%L, %L, %L).', TG_RELID::regclass::text, a.column_name, me);
        ELSE
            RAISE EXCEPTION 'column "%" of % is decided by node "%"', a.column_name, TG_RELID::regclass, a.node
                USING ERRCODE = '42501',
                      HINT = CASE WHEN (SELECT r.crdt_columns ? a.column_name FROM converge.replicated r WHERE r.table_name = TG_RELID)
                                  THEN format('Change it on node "%s"%s.', a.node,
                                              CASE WHEN a.decide IS NOT NULL  -- a request for a CRDT column needs one
                                                   THEN format(', or ask node "%s" with converge.request(%L, key, %L, value), which its decide function decides',
                                                               a.node, TG_RELID::regclass::text, a.column_name) ELSE '' END)
                                  ELSE format('Ask node "%s" with converge.request(%L, key, %L, value).', a.node,
                                              TG_RELID::regclass::text, a.column_name) END;
        END IF;
    END LOOP;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION converge.guard_authority() IS 'Trigger of tables with authority columns: a local change of such a column on a node other than its authority fails with 42501.';
-- <<< sql/coordination.sql

-- >>> sql/actors.sql (kept equal by .ci/sync-update-script)
-- Actors (SPEC section 5): devices with registered ed25519 keys, and
-- revocation. src/actors.rs explains the rules; docs/coordination.md the use.

-- The registry, the same on every node: it changes only through ops of
-- nodes (register_actor, revoke_actor), which replicate like any op.
CREATE TABLE converge.actor (
    actor         text PRIMARY KEY,
    key_state     bytea,      -- lwwreg (binary) of {"key": hex, "after": n}: concurrent registrations settle on one
    public_key    bytea,      -- the key key_state holds (32 bytes)
    signed_after  bigint,     -- ops with a higher counter must be signed with it (earlier ones predate the key)
    revoked_after bigint,     -- ops with a higher counter are rejected ('revoked'); the least revocation holds
    changed_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE converge.actor IS 'Registered actors (devices): the ed25519 key their ops must be signed with, and the counter after which they are revoked. Changed by converge.register_actor and converge.revoke_actor on any node; the same on every node once synced.';
SELECT pg_catalog.pg_extension_config_dump('converge.actor', '');
-- Public keys and revocations are not secrets; writing is converge's own.
GRANT SELECT ON converge.actor TO PUBLIC;

CREATE VIEW converge.actors AS
    SELECT a.actor, a.public_key, a.signed_after, a.revoked_after, a.changed_at FROM converge.actor a;
COMMENT ON VIEW converge.actors IS 'Registered actors: the key each one''s ops with counters above signed_after must be signed with, and the counter after which it is revoked (NULL: not revoked).';
GRANT SELECT ON converge.actors TO PUBLIC;

CREATE FUNCTION converge.op_signing_bytes(op converge.op) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT converge.op_signing_bytes_of(converge.op_encode(op)) $$;
COMMENT ON FUNCTION converge.op_signing_bytes(converge.op) IS 'The bytes an actor signs with its ed25519 key: a fixed domain tag and the op''s binary form without its signature. Sign the op as nodes log it: target_table schema-qualified, target_key with integer and boolean key columns as JSON numbers and booleans.';
COMMENT ON FUNCTION converge.op_signing_bytes_of(bytea) IS 'Internal: the body of converge.op_signing_bytes (from the op''s binary form).';

COMMENT ON FUNCTION converge.register_actor(text, bytea) IS 'Register an actor''s ed25519 public key (32 bytes): on every node, its ops after those this node has applied without a gap (signed_after) must carry a signature by that key (else rejected with unsigned or bad_signature), also those applied elsewhere before the registration arrived. Replicates; returns the op''s id (NULL when the actor already has this key).';
COMMENT ON FUNCTION converge.revoke_actor(text, bigint) IS 'Revoke an actor: its ops with counters above after (default: the highest applied here) are rejected with revoked on every node, and those already applied are taken out of their rows (rebuilt from base and remaining ops, back to the compaction horizon). Replicates; returns the op''s id.';
REVOKE ALL ON FUNCTION converge.register_actor(text, bytea), converge.revoke_actor(text, bigint) FROM PUBLIC;

-- Repairs (SPEC section 5, src/repair.rs): which op each repair excluded.
-- Written only by converge when a repair op applies (here or from a peer).
CREATE TABLE converge.superseded (
    op_id     text PRIMARY KEY,
    repair_id text NOT NULL
);
COMMENT ON TABLE converge.superseded IS 'Ops excluded by a repair (converge.repair): outcome superseded wherever they are or arrive; repair_id is the repair op.';
SELECT pg_catalog.pg_extension_config_dump('converge.superseded', '');
GRANT SELECT ON converge.superseded TO PUBLIC;

-- Ops kept aside here (rejected or quarantined), one row per op_id: the
-- ones converge.replay takes (here, after converge.superseded, which it reads).
CREATE OR REPLACE VIEW converge.quarantine WITH (security_invoker = true) AS
    SELECT DISTINCT ON (l.op_id) l.* FROM converge.op_log l WHERE l.outcome IN ('rejected', 'quarantined')
       -- (a client's refused void is no op to replay: the refused op it
       -- named is; a peer's is, as the gap it leaves here)
       AND NOT (coalesce(l.target_table = 'converge.void', false) AND l.origin NOT LIKE 'peer:%')
       -- (a void hides its maker's op refused here, not a peer's delivery:
       -- that op was applied elsewhere, and takes the void's place here)
       AND NOT EXISTS (SELECT 1 FROM converge.op_log a WHERE a.actor = l.actor AND a.counter = l.counter
                          AND a.outcome = 'applied' AND (a.target_table <> 'converge.void' OR l.origin NOT LIKE 'peer:%'))
       -- (an op a repair superseded is no longer kept aside: a translated
       -- old_schema op, for one)
       AND NOT EXISTS (SELECT 1 FROM converge.superseded s WHERE s.op_id = l.op_id)
     -- (a peer's delivery first, as replay takes it: a client sending the
     -- same op id later must not hide where the op came from; the op before
     -- a void of it)
     ORDER BY l.op_id, l.origin LIKE 'peer:%' DESC, coalesce(l.target_table = 'converge.void', false), l.seq DESC;
COMMENT ON VIEW converge.quarantine IS 'Rejected and quarantined ops not applied since (nor voided, nor superseded by a repair), one row per op_id (its latest outcome, from a peer''s delivery of it if there is one: the row converge.replay(op_id) applies again; the log keeps every one). Voids refused from a client are not listed.';

-- Ops kept out for good that hold their actor's frontier back: an actor's
-- frontier stops below its first counter not applied, and compaction folds
-- its ops only up to the stable frontier, so every later op of that actor
-- stays in the log (on every node) until the op is replayed once its cause
-- is fixed, or given up with converge.repair. new_schema and new_epoch ops
-- are not listed: they are applied by themselves once their version or
-- freeze is set here.
CREATE VIEW converge.frontier_gaps WITH (security_invoker = true) AS
    SELECT q.actor, q.counter, q.op_id, q.outcome, q.reason, q.origin, q.received_at,
           (SELECT count(*) FROM converge.op_log a
             WHERE a.actor = q.actor AND a.counter > q.counter AND a.outcome = 'applied') AS ops_held
      FROM converge.quarantine q  -- (which leaves out ops a repair superseded)
     WHERE NOT (q.outcome = 'quarantined' AND q.reason IN ('new_schema', 'new_epoch'))
       -- (ops sent under this node's own name are refused node_actor: its
       -- counter is its log's, which they do not hold back)
       AND q.actor IS DISTINCT FROM (SELECT n.name FROM converge.node_identity n)
       AND q.counter > coalesce((SELECT f.contiguous FROM converge.actor_frontier f WHERE f.actor = q.actor), 0);
COMMENT ON VIEW converge.frontier_gaps IS 'Rejected and quarantined ops (not new_schema or new_epoch, which apply by themselves) above their actor''s frontier, neither applied since nor superseded: each holds its actor''s frontier, and the compaction of its later ops (ops_held here), back until it is replayed (converge.replay) or given up (converge.repair).';
GRANT SELECT ON converge.frontier_gaps TO PUBLIC;

COMMENT ON FUNCTION converge.repair(text[], text) IS 'Exclude ops on every node: they get the outcome superseded, the rows they touched are rebuilt without them (back to the compaction horizon), and ops named here that arrive later are superseded on arrival. An op of this node that replicates; it stays in converge.op_log with its reason. Returns its op_id.';
REVOKE ALL ON FUNCTION converge.repair(text[], text) FROM PUBLIC;
-- <<< sql/actors.sql

-- >>> sql/versions.sql (kept equal by .ci/sync-update-script)
-- Schema versions (SPEC section 5): which merge semantics a column follows.
-- Set on every node alike with converge.set_schema_version (configuration,
-- like set_authority: it does not replicate). src/coordination.rs.
CREATE TABLE converge.schema_version (
    table_name  regclass NOT NULL,
    column_name text NOT NULL,          -- '' = the row ops (the plain columns)
    version     int NOT NULL CHECK (version >= 1),
    PRIMARY KEY (table_name, column_name)
);
COMMENT ON TABLE converge.schema_version IS 'Per replicated table and column (empty: the row ops of its plain columns), the schema version of its merge semantics (set with converge.set_schema_version on every node; 1 when not set).';
SELECT pg_catalog.pg_extension_config_dump('converge.schema_version', '');
GRANT SELECT ON converge.schema_version TO PUBLIC;

-- Internal: validate and record a version (run as converge's owner by
-- converge.set_schema_version once it has checked the caller owns the table).
CREATE FUNCTION converge.store_schema_version(tbl regclass, col text, version int)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, converge, pg_temp AS $$
DECLARE r converge.replicated;
BEGIN
    SELECT * INTO r FROM converge.replicated WHERE table_name = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not replicated', tbl USING ERRCODE = '55000',
            HINT = 'Run converge.replicate on it first.';
    END IF;
    IF col IS NOT NULL AND NOT r.crdt_columns ? col THEN
        IF col = ANY (r.other_columns) OR col = ANY (r.key_columns) THEN
            RAISE EXCEPTION 'column "%" of % is not a CRDT column', col, tbl USING ERRCODE = '22023',
                HINT = 'Plain columns travel together as the row ops: pass NULL as the column to version them.';
        END IF;
        RAISE EXCEPTION 'column "%" of % does not exist', col, tbl USING ERRCODE = '42703';
    END IF;
    INSERT INTO converge.schema_version (table_name, column_name, version) VALUES (tbl, coalesce(col, ''), version)
        ON CONFLICT (table_name, column_name) DO UPDATE SET version = EXCLUDED.version;
END $$;
REVOKE ALL ON FUNCTION converge.store_schema_version(regclass, text, int) FROM PUBLIC;
COMMENT ON FUNCTION converge.store_schema_version(regclass, text, int) IS 'Internal: the body of converge.set_schema_version, run as converge''s owner.';

CREATE FUNCTION converge.set_schema_version(tbl regclass, col text, version int) RETURNS bigint
LANGUAGE sql AS $$ SELECT converge.set_schema_version_on(tbl::oid, col, version) $$;
COMMENT ON FUNCTION converge.set_schema_version_on(oid, text, integer) IS 'Internal: the body of converge.set_schema_version (checks that the caller owns the table).';
COMMENT ON FUNCTION converge.set_schema_version(regclass, text, integer) IS 'Declare the schema version of a CRDT column''s merge semantics (col NULL: the row ops of the plain columns). Run it on every node, as the table''s owner. Local ops carry it; an op made under an older version is quarantined with old_schema (kept aside until translated: converge.repair of the op and a change of your own), one made under a newer version with new_schema, and those of exactly this version are applied again now. Returns how many were.';
-- <<< sql/versions.sql

CREATE FUNCTION converge."freeze_on"(
	"tbl" oid,
	"key" jsonb
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'freeze_on_wrapper';
CREATE FUNCTION converge."epoch_on"(
	"tbl" oid,
	"key" jsonb
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'epoch_on_wrapper';

-- >>> sql/epochs.sql (kept equal by .ci/sync-update-script)
-- Epochs (SPEC section 5): converge.freeze, served by a table's authority,
-- starts a row's next epoch. Ops of older epochs that the freeze did not
-- include are quarantined with reason frozen on every node. src/epochs.rs.
CREATE TABLE converge.frozen (
    target_table text NOT NULL,          -- as ops name it (schema.table)
    target_key   jsonb NOT NULL,         -- as ops carry it
    epoch        bigint NOT NULL CHECK (epoch >= 1),
    freeze_id    text NOT NULL,          -- the freeze op
    -- What the row's state at the freeze includes: every op of an actor up
    -- to frontier ->> actor (the authority had them all), and these ops of
    -- the row it had applied beyond that.
    frontier     jsonb NOT NULL,
    extras       text[] NOT NULL,
    -- freeze_id too: two freezes of one epoch (an authority moved or
    -- restored from a backup) are both kept, alike on every node.
    PRIMARY KEY (target_table, target_key, epoch, freeze_id)
);
COMMENT ON TABLE converge.frozen IS 'Each freeze of a row (converge.freeze): the epoch it started and which ops the frozen state includes; ops of older epochs it does not include are quarantined (frozen).';
SELECT pg_catalog.pg_extension_config_dump('converge.frozen', '');
GRANT SELECT ON converge.frozen TO PUBLIC;

CREATE FUNCTION converge.freeze(tbl regclass, key jsonb) RETURNS bigint
LANGUAGE sql AS $$ SELECT converge.freeze_on(tbl::oid, key) $$;
COMMENT ON FUNCTION converge.freeze_on(oid, jsonb) IS 'Internal: the body of converge.freeze.';
REVOKE ALL ON FUNCTION converge.freeze(regclass, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION converge.freeze_on(oid, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION converge.freeze(regclass, jsonb) IS 'Start the next epoch of a row (administration: not granted to PUBLIC; served only by the table''s authority; needs SELECT and UPDATE on the table): its state as this node holds it is the frozen state, and ops of older epochs it does not include are quarantined with reason frozen on every node (rows rebuilt where they were applied). Later edits carry the new epoch and apply normally. Returns the new epoch.';

CREATE FUNCTION converge.epoch(tbl regclass, key jsonb) RETURNS bigint
LANGUAGE sql VOLATILE AS $$ SELECT converge.epoch_on(tbl::oid, key) $$;
COMMENT ON FUNCTION converge.epoch_on(oid, jsonb) IS 'Internal: the body of converge.epoch.';
COMMENT ON FUNCTION converge.epoch(regclass, jsonb) IS 'The epoch of a row of a replicated table: 0 until its first freeze, then the epoch the newest freeze started.';

-- Which quarantined ops a freeze keeps out, for converge.dep_done and
-- compaction (an op frozen out is done here: its counter is used up).
CREATE FUNCTION converge.frozen_out(op_id text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, converge, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM converge.op_log l
                    WHERE l.op_id = $1 AND l.outcome = 'quarantined' AND l.reason = 'frozen')
$$;
COMMENT ON FUNCTION converge.frozen_out(text) IS 'Whether this op is quarantined here because a freeze did not include it (its counter is used up, like a superseded op''s).';

-- An op's dependency is done here when it is applied, superseded by a
-- repair, or frozen out (an op waiting for one of the last two would wait
-- for ever on the nodes that excluded it on arrival, while nodes that had
-- applied it went on).
CREATE FUNCTION converge.dep_done(op_id text) RETURNS boolean
LANGUAGE sql STABLE STRICT AS $$
    SELECT converge.is_applied($1) OR EXISTS (SELECT 1 FROM converge.superseded s WHERE s.op_id = $1)
        OR converge.frozen_out($1)
$$;
COMMENT ON FUNCTION converge.dep_done(text) IS 'Whether an op a pending op depends on is done here: applied, superseded by a repair, or frozen out by a freeze.';
-- <<< sql/epochs.sql

CREATE FUNCTION converge."request_on"(
	"tbl" oid,
	"key" jsonb,
	"col" TEXT,
	"value" jsonb,
	"idempotency_key" TEXT
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'request_on_wrapper';
CREATE FUNCTION converge."decide_pending"() RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'decide_pending_wrapper';
CREATE FUNCTION converge."allocate"(
	"name" TEXT,
	"idempotency_key" TEXT
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'allocate_on_wrapper';
-- >>> sql/requests.sql (kept equal by .ci/sync-update-script)
-- Requests and unique allocation (SPEC section 5): src/requests.rs and
-- src/allocation.rs. Both travel as converge's own ops (targets
-- converge.request, converge.decision, converge.allocation), recorded
-- explicitly: these tables carry no triggers and are not replicated tables
-- (a restore copies their rows back without making ops of them).

-- Every request this node knows, the same rows on every node once synced.
-- A node can learn a request's decision before the request itself (they
-- travel by different paths): the row is made from whichever came first,
-- so the request's own columns may be NULL for a while.
CREATE SEQUENCE converge.request_arrival;
COMMENT ON SEQUENCE converge.request_arrival IS 'Internal: the order in which requests arrived on this node (converge.request_order.arrival).';
CREATE TABLE converge.requests (
    request_id      text PRIMARY KEY,      -- the request op's id
    target_table    text NOT NULL,         -- as ops name it (schema.table)
    target_key      jsonb NOT NULL,        -- canonical, as ops carry it
    target_column   text NOT NULL,
    value           jsonb,
    idempotency_key text,
    requested_by    text,
    requested_at    timestamptz,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'granted', 'refused')),
    decision        jsonb,
    reason          text,
    decided_at      timestamptz,
    decision_id     text                   -- the decision op (of two, the smaller id wins everywhere)
);
CREATE INDEX requests_pending ON converge.requests (request_id) WHERE status = 'pending';
CREATE INDEX requests_idempotency ON converge.requests (idempotency_key) WHERE idempotency_key IS NOT NULL;
COMMENT ON TABLE converge.requests IS 'Requests to change columns decided by an authority (converge.request): pending until the authority decides, then granted with the columns it wrote (decision) or refused with a reason. The same rows on every node once synced; each role sees the requests of tables it may SELECT.';
SELECT pg_catalog.pg_extension_config_dump('converge.requests', '');
SELECT pg_catalog.pg_extension_config_dump('converge.request_arrival', '');
-- The order in which requests arrived here (the authority decides in it),
-- kept apart: it differs from node to node, and converge.requests shows
-- the same rows on every node.
CREATE TABLE converge.request_order (
    request_id text PRIMARY KEY,
    arrival    bigint NOT NULL DEFAULT nextval('converge.request_arrival')
);
COMMENT ON TABLE converge.request_order IS 'Internal: the order in which the requests of converge.requests arrived on this node (the authority decides pending requests in it).';
SELECT pg_catalog.pg_extension_config_dump('converge.request_order', '');
GRANT SELECT ON converge.requests TO PUBLIC;
ALTER TABLE converge.requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY requests_readable ON converge.requests FOR SELECT USING (converge.may_read(target_table));
COMMENT ON POLICY requests_readable ON converge.requests IS 'A role reads the requests of the tables it may SELECT (converge.may_read); peer roles read every request.';

CREATE FUNCTION converge.request(tbl regclass, key jsonb, col text, value jsonb, idempotency_key text DEFAULT NULL)
RETURNS text LANGUAGE sql AS $$ SELECT converge.request_on(tbl::oid, key, col, value, idempotency_key) $$;
COMMENT ON FUNCTION converge.request_on(oid, jsonb, text, jsonb, text) IS 'Internal: the body of converge.request.';
COMMENT ON FUNCTION converge.request(regclass, jsonb, text, jsonb, text) IS 'Ask the authority of a column to change it on one row (needs UPDATE on the column, and the row as the caller may lock it for update). Returns the request''s id (an op_id); with an idempotency key this node knows, the known request''s id. The authority decides each request once, in arrival order: as proposed, or through its decide function. See converge.requests. Not granted to PUBLIC (a request holds this node''s op counter until its transaction ends, like every local write at commit): grant EXECUTE on it and on converge.request_on to the roles that ask.';
REVOKE ALL ON FUNCTION converge.request(regclass, jsonb, text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION converge.request_on(oid, jsonb, text, jsonb, text) FROM PUBLIC;

REVOKE ALL ON FUNCTION converge.decide_pending() FROM PUBLIC;
COMMENT ON FUNCTION converge.decide_pending() IS 'Decide, in arrival order, the pending requests this node is the authority of (the background worker does it after each batch and every few seconds). Returns how many were decided.';

-- Unique allocation: per allocator, the node that serves it.
CREATE TABLE converge.allocators (
    name  text PRIMARY KEY,
    node  text NOT NULL,
    start bigint NOT NULL DEFAULT 1
);
COMMENT ON TABLE converge.allocators IS 'Per allocator, the node that serves converge.allocate and its first number (set with converge.set_allocator on every node, like set_authority).';
SELECT pg_catalog.pg_extension_config_dump('converge.allocators', '');
GRANT SELECT ON converge.allocators TO PUBLIC;

CREATE TABLE converge.allocations (
    name            text NOT NULL,
    idempotency_key text NOT NULL,
    value           bigint NOT NULL,
    allocated_at    timestamptz NOT NULL,
    allocated_by    text NOT NULL,
    PRIMARY KEY (name, idempotency_key)
);
CREATE INDEX allocations_value ON converge.allocations (name, value);
COMMENT ON TABLE converge.allocations IS 'Every number converge.allocate handed out: per allocator and idempotency key, its value. The same rows on every node once synced.';
SELECT pg_catalog.pg_extension_config_dump('converge.allocations', '');
GRANT SELECT ON converge.allocations TO PUBLIC;

CREATE FUNCTION converge.set_allocator(name text, node text, start bigint DEFAULT 1) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, converge, pg_temp AS $$
BEGIN
    IF name IS NULL OR start IS NULL THEN
        RAISE EXCEPTION 'the allocator''s name and start must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF node IS NULL OR node !~ '^[A-Za-z0-9_.-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid allocator node "%": use 1-63 of A-Z a-z 0-9 _ . - (the node''s converge.node())', node
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO converge.allocators AS a (name, node, start) VALUES (set_allocator.name, set_allocator.node, set_allocator.start)
        ON CONFLICT ON CONSTRAINT allocators_pkey DO UPDATE SET node = EXCLUDED.node, start = EXCLUDED.start;
END $$;
REVOKE ALL ON FUNCTION converge.set_allocator(text, text, bigint) FROM PUBLIC;
COMMENT ON FUNCTION converge.set_allocator(text, text, bigint) IS 'Name the node that serves an allocator, and its first number (administration). Run it on every node alike.';

REVOKE ALL ON FUNCTION converge.allocate(text, text) FROM PUBLIC;
COMMENT ON FUNCTION converge.allocate(text, text) IS 'The number of an idempotency key in an allocator: the same key gets the same number forever (also after a crash), different keys distinct numbers increasing in allocation order. Served only on the allocator''s node (55000 elsewhere). Not granted to PUBLIC: grant EXECUTE to roles that allocate, and to owners of decide functions that do.';
-- <<< sql/requests.sql

-- Voids (src/apply/voids.rs), found by the op they give up.
CREATE INDEX op_log_voids ON converge.op_log (actor, counter) WHERE target_table = 'converge.void';
-- A client's own refusals, read at each push (ops.sql).
CREATE INDEX op_log_problems_by_actor ON converge.op_log (converge.op_id_actor(op_id)) WHERE outcome IN ('rejected', 'quarantined');
-- It raises nothing and shows nothing but its result, in a UTF-8
-- database (elsewhere reading non-ASCII text as a Rust string can raise):
-- there a condition on it may use op_log_problems_by_actor under op_log's
-- row security.
DO $$ BEGIN
    IF pg_catalog.getdatabaseencoding() = 'UTF8' THEN
        ALTER FUNCTION converge.op_id_actor(text) LEAKPROOF;
    END IF;
END $$;

-- converge.quarantine (one row per op_id, not superseded) is replaced in the
-- copy of sql/actors.sql above.

COMMENT ON FUNCTION converge.frontier() IS 'This node''s version vector: {actor: highest counter such that every op 1..counter of that actor is applied (or superseded by a repair) here}.';

-- Counters handed out are durable first (src/durable.rs).
CREATE FUNCTION converge."flush_visible"() RETURNS void
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'flush_visible_sql_wrapper';
COMMENT ON FUNCTION converge.flush_visible() IS 'Internal: flush the WAL of every commit this session can see (before converge hands counters out: frontier, changes_since).';
COMMENT ON FUNCTION converge.replicate(regclass) IS 'Mark a table (with a primary key) for the op log and replication: every later change to its CRDT columns, and every row insert, delete and change of its other columns (last writer wins), is recorded as an op of this node. Columns added, dropped or retyped later are followed (the event trigger converge_follow_columns).';

-- >>> sql/ddl.sql (kept equal by .ci/sync-update-script)
-- Schema changes of replicated tables (src/ddl.rs). converge's ops, the op
-- log, row bases and settings name a replicated table and its columns, here
-- and on every node: renames are refused, column changes are followed.

-- The types a column of `tbl` named in `cols` (NULL: every column) is made
-- of, with how deep each lies (0: the column's own type): through domains,
-- with `arrays` through arrays, and with `deep` also through ranges,
-- multiranges and the attributes of composite types. A key's text, or a
-- column's merge, is that of every type in it.
CREATE OR REPLACE FUNCTION converge.column_types_within(tbl regclass, cols text[], arrays boolean, deep boolean)
RETURNS TABLE (type_oid oid, depth int)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE ty(oid, depth) AS (
        SELECT a.atttypid, 0 FROM pg_attribute a
         WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND (cols IS NULL OR a.attname = ANY (cols))
        UNION
        SELECT inner_type, ty.depth + 1
          FROM ty JOIN pg_type t ON t.oid = ty.oid,
               LATERAL (SELECT t.typbasetype WHERE t.typtype = 'd'
                        UNION ALL SELECT t.typelem WHERE arrays AND t.typelem <> 0 AND t.typlen = -1
                        UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE deep AND r.rngtypid = t.oid
                        UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE deep AND r.rngmultitypid = t.oid
                        UNION ALL SELECT c.atttypid FROM pg_attribute c
                                   WHERE deep AND t.typtype = 'c' AND c.attrelid = t.typrelid AND c.attnum > 0
                                     AND NOT c.attisdropped) x(inner_type)
         WHERE ty.depth < 16)
    SELECT DISTINCT oid, depth FROM ty
$$;
COMMENT ON FUNCTION converge.column_types_within(regclass, text[], boolean, boolean) IS 'Internal: the types the named columns of a table are made of (through domains, arrays if asked, and with deep also ranges, multiranges, composites), with their depth.';

-- Whether a column of `tbl` named in `cols` (NULL: every column) holds a
-- converge type below its own type: under a domain, and with `deep` also
-- in an array, range, multirange or composite. Such a column would be
-- taken for a plain one (last writer wins).
CREATE OR REPLACE FUNCTION converge.holds_converge_type(tbl regclass, cols text[], deep boolean) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM converge.column_types_within(tbl, cols, deep, deep) w JOIN pg_type t ON t.oid = w.type_oid
                    WHERE w.depth > 0 AND t.typnamespace = 'converge'::regnamespace
                      AND t.typname IN ('gcounter', 'pncounter', 'bcounter', 'gset', 'orset', 'lwwreg', 'mvreg', 'lwwmap', 'ormap', 'seqtext'))
$$;
COMMENT ON FUNCTION converge.holds_converge_type(regclass, text[], boolean) IS 'Internal: whether a column of the table (of the named ones) holds a converge type under a domain (with deep also in an array, range or composite), which would make it a plain column.';

-- The layout half of converge.replicate (src/trigger.rs checks ownership,
-- creates the trigger as the table's owner and calls this as converge's
-- owner). OR REPLACE: the update script runs this file over 0.1.0's.
CREATE OR REPLACE FUNCTION converge.replicate_layout(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, converge, pg_temp AS $$
DECLARE
    keys  text[];
    crdt  jsonb;
    other text[];
    expr  text;
    populated boolean;
    first boolean;
    types regtype[];
    mods  int[];
    colls text[];
BEGIN
    -- The key columns, in the key's order, with their types and collations
    -- (a type by regtype, which follows a rename and dumps as its name).
    SELECT array_agg(k.attname::text ORDER BY k.pos), array_agg(k.atttypid::regtype ORDER BY k.pos),
           array_agg(k.atttypmod ORDER BY k.pos), array_agg(converge.collation_of(k.attcollation) ORDER BY k.pos)
      INTO keys, types, mods, colls
      FROM (SELECT a.*, array_position(i.indkey::int2[], a.attnum) AS pos
              FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
             WHERE i.indrelid = tbl AND i.indisprimary) k;
    IF keys IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key', tbl USING ERRCODE = '55000',
            HINT = 'converge replicates rows by primary key; add one first.';
    END IF;
    -- Every write must pass the table's own op trigger: a partitioned
    -- table's rows are in its partitions (their copies of the trigger find
    -- no layout), an inheritance parent's statements reach its children's
    -- rows, which its trigger does not record, a temporary table is one
    -- session's, and an unlogged one is emptied by a crash while its rows'
    -- clocks stay. (A child table, a partition, is a table of its own.)
    -- (Checked when the table is first replicated; a child added later
    -- is not caught: docs/replication.md.)
    first := NOT EXISTS (SELECT 1 FROM converge.replicated r WHERE r.table_name = tbl);
    IF first AND (SELECT c.relkind = 'p' FROM pg_class c WHERE c.oid = tbl) THEN
        RAISE EXCEPTION 'converge does not replicate partitioned table %', tbl USING ERRCODE = '0A000',
            HINT = 'Replicate each partition as a table of its own.';
    END IF;
    IF first AND EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = tbl) THEN
        RAISE EXCEPTION 'converge does not replicate table %, which has inheritance children', tbl
            USING ERRCODE = '0A000', HINT = 'Replicate the children, each a table of its own.';
    END IF;
    IF first AND (SELECT c.relpersistence <> 'p' FROM pg_class c WHERE c.oid = tbl) THEN
        RAISE EXCEPTION 'converge does not replicate temporary or unlogged table %', tbl USING ERRCODE = '0A000',
            HINT = 'An unlogged table can be made logged first: ALTER TABLE ... SET LOGGED.';
    END IF;
    -- Keys travel as JSON; the text of these types depends on session
    -- settings (TimeZone, DateStyle, IntervalStyle, bytea_output,
    -- extra_float_digits, search_path for the reg* types), so one row
    -- could get two keys; also under a domain or in an array, and (when
    -- first replicated: a table replicated before keeps working as it
    -- did) in a range or a composite type, and the reg* types.
    IF EXISTS (SELECT 1 FROM converge.column_types_within(tbl, keys, true, first) w
                WHERE w.type_oid IN ('date'::regtype, 'time'::regtype, 'timetz'::regtype, 'timestamp'::regtype,
                                     'timestamptz'::regtype, 'interval'::regtype, 'money'::regtype, 'bytea'::regtype,
                                     'real'::regtype, 'double precision'::regtype)
                   OR (first AND w.type_oid IN ('regclass'::regtype, 'regproc'::regtype, 'regprocedure'::regtype,
                                                'regoper'::regtype, 'regoperator'::regtype, 'regtype'::regtype,
                                                'regconfig'::regtype, 'regdictionary'::regtype, 'regnamespace'::regtype,
                                                'regrole'::regtype, 'regcollation'::regtype))) THEN
        RAISE EXCEPTION 'the primary key of % has a date, time, money, bytea, floating-point or object name (reg*) column', tbl
            USING ERRCODE = '0A000',
            HINT = 'Use integer, bigint, numeric, text or uuid key columns for replicated tables.';
    END IF;
    -- Nor can a key column whose equal values differ in text: two texts of
    -- one row would be two keys, each with its clock (citext, or a
    -- nondeterministic collation). Checked when the table is first
    -- replicated (a table replicated before keeps working as it did).
    IF first AND EXISTS (SELECT 1 FROM converge.column_types_within(tbl, keys, true, true) w JOIN pg_type t ON t.oid = w.type_oid
                          WHERE t.typname = 'citext'
                         UNION ALL
                         SELECT 1 FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation
                          WHERE a.attrelid = tbl AND a.attname = ANY (keys) AND NOT c.collisdeterministic) THEN
        RAISE EXCEPTION 'the primary key of % has a column whose equal values can differ in text (citext, or a nondeterministic collation)', tbl
            USING ERRCODE = '0A000',
            HINT = 'Use a key column with a deterministic collation, and store the key in one form (say lower-case text).';
    END IF;
    -- A column of a domain over a converge type would be taken for a plain
    -- column (last writer wins), and concurrent changes to it lost; so would
    -- an array or a composite of one (checked when first replicated).
    IF converge.holds_converge_type(tbl, NULL, first) THEN
        RAISE EXCEPTION 'table % has a column whose type holds a converge type (a domain over it, or an array, range or composite of it)', tbl
            USING ERRCODE = '0A000',
            HINT = 'Declare the column with the converge type itself.';
    END IF;
    SELECT coalesce(jsonb_object_agg(a.attname, t.typname), '{}') INTO crdt
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
       AND t.typnamespace = 'converge'::regnamespace
       AND t.typname IN ('gcounter', 'pncounter', 'bcounter', 'gset', 'orset', 'lwwreg', 'mvreg', 'lwwmap', 'ormap', 'seqtext');
    SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}'),
           coalesce(string_agg(format('%L, ($1).%I', a.attname, a.attname), ', ' ORDER BY a.attnum), '')
      INTO other, expr
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
       AND NOT a.attname = ANY (keys) AND NOT crdt ? a.attname;
    -- Rows already there are not ops: no peer receives them. Loud, not
    -- refused: loading the same rows on every node first is a way to start.
    IF first THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM ONLY %s)', tbl) INTO STRICT populated;
        IF populated THEN
            RAISE WARNING 'table % already has rows: they are not ops, and no peer receives them', tbl
                USING HINT = 'Load the same rows on every node, or insert them after converge.replicate.';
        END IF;
    END IF;
    INSERT INTO converge.replicated (table_name, key_columns, crdt_columns, other_columns, row_expr,
                                     key_types, key_typmods, key_collations)
    VALUES (tbl, keys, crdt, other, expr, types, mods, colls)
        ON CONFLICT (table_name) DO UPDATE SET key_columns = EXCLUDED.key_columns, crdt_columns = EXCLUDED.crdt_columns,
                                               other_columns = EXCLUDED.other_columns, row_expr = EXCLUDED.row_expr,
                                               key_types = EXCLUDED.key_types, key_typmods = EXCLUDED.key_typmods,
                                               key_collations = EXCLUDED.key_collations;
END $$;
COMMENT ON FUNCTION converge.replicate_layout(regclass) IS 'Internal: record the layout of a table marked by converge.replicate.';

-- The key's columns name rows in every op (as JSON): they may not be
-- dropped, and a key column may only widen, keeping every key's JSON and
-- its collation (which keys are equal); a USING clause other than a cast
-- of the column to the new type may change the values. Types are compared
-- with the layout's, so a change made while the event triggers were off is
-- caught too (a type not recorded is not).
CREATE FUNCTION converge.refuse_key_change(before converge.replicated, rewritten text[], dropped text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, converge, pg_temp AS $$
DECLARE
    tbl regclass := before.table_name;
    c   text;
BEGIN
    c := (SELECT k FROM unnest(dropped) k WHERE k = ANY (before.key_columns) LIMIT 1);
    IF c IS NOT NULL THEN
        RAISE EXCEPTION 'cannot drop key column "%" of replicated table %', c, tbl
            USING ERRCODE = '0A000', DETAIL = 'Every op names its row by the key''s values as JSON, here and on every other node.',
                  HINT = 'A replicated table keeps its key columns.';
    END IF;
    c := (SELECT k FROM unnest(rewritten) k WHERE k = ANY (before.key_columns) LIMIT 1);
    IF c IS NULL THEN
        c := (SELECT u.k FROM unnest(before.key_columns, before.key_types, before.key_typmods, before.key_collations)
                              WITH ORDINALITY u(k, t, m, coll, i)
                JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = u.k AND a.attnum > 0 AND NOT a.attisdropped
               WHERE u.t IS NOT NULL
                 AND (NOT converge.key_type_widens(format_type(u.t, u.m), format_type(a.atttypid, a.atttypmod))
                      OR u.coll IS DISTINCT FROM converge.collation_of(a.attcollation))
               ORDER BY u.i LIMIT 1);
    END IF;
    IF c IS NOT NULL THEN
        RAISE EXCEPTION 'cannot change the type of key column "%" of replicated table %', c, tbl
            USING ERRCODE = '0A000', DETAIL = 'Every op names its row by the key''s values as JSON, here and on every other node.',
                  HINT = 'A key column may only widen, keeping its collation, with a USING clause no more than a cast '
                         'of the column to the new type: smallint to integer or bigint, integer to bigint, varchar to a longer varchar or to text.';
    END IF;
END $$;
REVOKE ALL ON FUNCTION converge.refuse_key_change(converge.replicated, text[], text[]) FROM PUBLIC;
COMMENT ON FUNCTION converge.refuse_key_change(converge.replicated, text[], text[]) IS 'Internal (converge.follow_layout): refuse dropping a replicated table''s key column, or changing its type other than by widening it.';

-- After ALTER TABLE (the event trigger converge_follow_columns), after a
-- statement that dropped columns (converge_follow_drops, which knows
-- exactly which), and when converge.replicate runs again: the layout
-- again. A row is named by its key's columns in every op, and a column's
-- ops, history and settings are of its kind (a CRDT type, or plain), so
-- neither may change; a dropped column's name stays taken (ops made before
-- the drop, here or on nodes still sending them, and rows' bases name it).
-- True when authorities of dropped columns went (the caller makes the
-- guard trigger again). rewritten and dropped: the columns of this table
-- the statement retyped with a USING clause other than a cast of the
-- column to exactly the new type, and dropped.
CREATE FUNCTION converge.follow_layout(tbl regclass, rewritten text[], dropped text[]) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, converge, pg_temp AS $$
DECLARE
    before converge.replicated;
    after  converge.replicated;
    c      text;
    gone   int;
BEGIN
    SELECT * INTO before FROM converge.replicated WHERE table_name = tbl;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM converge.refuse_key_change(before, rewritten, dropped);
    -- The names of replicated columns dropped stay taken; a column of such
    -- a name now (added by the same statement, say) is refused.
    PERFORM converge.retire_columns(tbl, ARRAY(SELECT d FROM unnest(dropped) d
                                                WHERE before.crdt_columns ? d OR d = ANY (before.other_columns)));
    PERFORM converge.refuse_taken(tbl, (SELECT r.dropped_columns FROM converge.replicated r WHERE r.table_name = tbl));
    -- Without a primary key (dropped, or not restored yet) rows keep the
    -- names the layout's key gave them, until the same key is back; the
    -- authorities of columns dropped meanwhile go now.
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = tbl AND indisprimary) THEN
        DELETE FROM converge.authority a WHERE a.table_name = tbl AND a.column_name = ANY (dropped);
        GET DIAGNOSTICS gone = ROW_COUNT;
        RETURN gone > 0;
    END IF;
    PERFORM converge.replicate_layout(tbl);
    SELECT * INTO after FROM converge.replicated WHERE table_name = tbl;
    IF after.key_columns IS DISTINCT FROM before.key_columns THEN
        RAISE EXCEPTION 'cannot change the primary key of replicated table % from (%) to (%)', tbl,
              array_to_string(before.key_columns, ', '), array_to_string(after.key_columns, ', ')
            USING ERRCODE = '0A000', DETAIL = 'Every op names its row by the values of the key''s columns, here and on every other node.';
    END IF;
    c := (SELECT k FROM jsonb_object_keys(before.crdt_columns) k
           WHERE k = ANY (after.other_columns) OR after.crdt_columns ->> k <> before.crdt_columns ->> k
          UNION ALL
          SELECT o FROM unnest(before.other_columns) o WHERE after.crdt_columns ? o
          LIMIT 1);
    IF c IS NOT NULL THEN
        RAISE EXCEPTION 'cannot change column "%" of replicated table % from % to %', c, tbl,
              coalesce(before.crdt_columns ->> c, 'a plain column'), coalesce(after.crdt_columns ->> c, 'a plain column')
            USING ERRCODE = '0A000', DETAIL = 'Its ops, history and settings are of its kind, here and on every other node.',
                  HINT = 'Add a column of the new type and move the values to it (docs/replication.md, "Schema changes").';
    END IF;
    -- A plain column added since, whose type holds a converge type (an
    -- array, range or composite of one), would be taken for last writer
    -- wins, and concurrent changes to it lost: refused as replicate
    -- refuses it (which checks a table's columns this deep only when it is
    -- first replicated, so that tables replicated before keep working).
    IF converge.holds_converge_type(tbl, ARRAY(SELECT o FROM unnest(after.other_columns) o WHERE NOT o = ANY (before.other_columns)),
                                    true) THEN
        RAISE EXCEPTION 'cannot add to replicated table % a column whose type holds a converge type (an array, range or composite of it)', tbl
            USING ERRCODE = '0A000',
            HINT = 'Declare the column with the converge type itself.';
    END IF;
    -- Columns that left the layout unseen (the event triggers disabled).
    PERFORM converge.retire_columns(tbl, ARRAY(SELECT k FROM jsonb_object_keys(before.crdt_columns) k WHERE NOT after.crdt_columns ? k
                                               UNION ALL
                                               SELECT o FROM unnest(before.other_columns) o WHERE NOT o = ANY (after.other_columns)));
    DELETE FROM converge.authority a
     WHERE a.table_name = tbl AND a.column_name <> ''
       AND NOT (after.crdt_columns ? a.column_name OR a.column_name = ANY (after.other_columns));
    GET DIAGNOSTICS gone = ROW_COUNT;
    PERFORM converge.forget_layout(tbl::oid);
    RETURN gone > 0;
END $$;
REVOKE ALL ON FUNCTION converge.follow_layout(regclass, text[], text[]) FROM PUBLIC;
COMMENT ON FUNCTION converge.follow_layout(regclass, text[], text[]) IS 'Internal (the event triggers converge_follow_columns and converge_follow_drops, and converge.replicate run again): record a replicated table''s layout again, refusing a change of its key or of a column''s kind and the reuse of a dropped column''s name, and dropping the authorities of dropped columns.';

-- Whether a key column's type may change from old to new: only where
-- every key's JSON stays the same (converge's canonical key, src/apply/
-- target.rs) and every old value fits. NULL (a layout recorded before key
-- types were): no.
CREATE FUNCTION converge.key_type_widens(old text, new text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(old = new
        OR (old, new) IN (('smallint', 'integer'), ('smallint', 'bigint'), ('integer', 'bigint'),
                          ('text', 'character varying'), ('character varying', 'text'))
        OR (old ~ '^character varying\(\d+\)$'
            AND (new IN ('text', 'character varying')
                 OR (new ~ '^character varying\(\d+\)$'
                     AND substring(new FROM '\d+')::int >= substring(old FROM '\d+')::int))), false);
$$;
REVOKE ALL ON FUNCTION converge.key_type_widens(text, text) FROM PUBLIC;
COMMENT ON FUNCTION converge.key_type_widens(text, text) IS 'Internal: whether a replicated table''s key column may change from one type to another (integer and varchar widening: the keys'' JSON stays the same).';

-- A collation by name (NULL for none): the same after a dump and restore.
CREATE FUNCTION converge.collation_of(coll oid) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN coll <> 0 THEN coll::regcollation::text END;
$$;
REVOKE ALL ON FUNCTION converge.collation_of(oid) FROM PUBLIC;
COMMENT ON FUNCTION converge.collation_of(oid) IS 'Internal: a collation''s name as converge.replicated.key_collations records it.';

-- A column may not take the name of a dropped one: ops made before the
-- drop would be applied to it (generated columns are not replicated).
CREATE FUNCTION converge.refuse_taken(tbl regclass, taken text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, converge, pg_temp AS $$
DECLARE
    c text := (SELECT a.attname FROM pg_attribute a
                WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                  AND a.attname = ANY (taken)
                ORDER BY a.attnum LIMIT 1);
BEGIN
    IF c IS NOT NULL THEN
        RAISE EXCEPTION 'column "%" of replicated table % has the name of a dropped column', c, tbl
            USING ERRCODE = '0A000',
                  DETAIL = 'Ops made before the drop, here or on nodes still sending them, and the rows'' bases name it: '
                           'they would be applied to the new column.',
                  HINT = 'Give the new column another name.';
    END IF;
END $$;
REVOKE ALL ON FUNCTION converge.refuse_taken(regclass, text[]) FROM PUBLIC;
COMMENT ON FUNCTION converge.refuse_taken(regclass, text[]) IS 'Internal: refuse a column of a replicated table named like one of its dropped columns (converge.replicated.dropped_columns).';

CREATE FUNCTION converge.retire_columns(tbl regclass, cols text[]) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, converge, pg_temp AS $$
    UPDATE converge.replicated
       SET dropped_columns = ARRAY(SELECT DISTINCT d FROM unnest(dropped_columns || cols) d ORDER BY d)
     WHERE table_name = tbl AND cols <> '{}';
$$;
REVOKE ALL ON FUNCTION converge.retire_columns(regclass, text[]) FROM PUBLIC;
COMMENT ON FUNCTION converge.retire_columns(regclass, text[]) IS 'Internal: remember the names of a replicated table''s dropped columns (converge.replicated.dropped_columns), which a new column may not take.';

-- Names are identities (src/ddl.rs): ops, the log, row bases and settings
-- name a replicated table and its columns, here and on every node, so a
-- rename of the table, its schema or a replicated column is refused.
CREATE FUNCTION converge.keep_names() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'keep_names_wrapper';
COMMENT ON FUNCTION converge.keep_names() IS 'Internal: the event trigger converge_keep_names (refuses renaming a replicated table, its schema or one of its replicated columns).';
CREATE EVENT TRIGGER converge_keep_names ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER SCHEMA', 'ALTER INDEX', 'ALTER VIEW', 'ALTER MATERIALIZED VIEW',
                 'ALTER FOREIGN TABLE', 'ALTER SEQUENCE', 'ALTER TYPE', 'ALTER TRIGGER')
    EXECUTE FUNCTION converge.keep_names();
COMMENT ON EVENT TRIGGER converge_keep_names IS 'converge: refuses renaming a replicated table, moving it to another schema, renaming its schema or one of its replicated columns, or a value of an enum type a replicated key or plain column holds (ops and history name them); and, to roles other than superusers, switching off, renaming or dropping a replicated table''s converge triggers, or making it unlogged.';
CREATE FUNCTION converge.follow_columns() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'follow_columns_wrapper';
COMMENT ON FUNCTION converge.follow_columns() IS 'Internal: the event trigger converge_follow_columns (records a replicated table''s layout again after ALTER TABLE changes its columns or constraints).';
CREATE EVENT TRIGGER converge_follow_columns ON ddl_command_end WHEN TAG IN ('ALTER TABLE', 'ALTER TYPE')
    EXECUTE FUNCTION converge.follow_columns();
COMMENT ON EVENT TRIGGER converge_follow_columns IS 'converge: after ALTER TABLE (or ALTER TYPE of a typed table''s type) adds, drops or retypes a column of a replicated table or changes its primary key, records its layout again (as converge.replicate does); refuses a change of its key or of a column''s kind, and a new column taking a dropped column''s name.';
CREATE FUNCTION converge.follow_drops() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'follow_drops_wrapper';
COMMENT ON FUNCTION converge.follow_drops() IS 'Internal: the event trigger converge_follow_drops (records a replicated table''s layout again when a statement drops its columns; forgets a dropped replicated table).';
CREATE EVENT TRIGGER converge_follow_drops ON sql_drop
    EXECUTE FUNCTION converge.follow_drops();
COMMENT ON EVENT TRIGGER converge_follow_drops IS 'converge: after a statement drops columns of a replicated table (ALTER TABLE ... DROP COLUMN, or a DROP ... CASCADE of a domain, type, collation or extension), records its layout again and keeps their names taken; refuses it for a key column. A dropped replicated table''s layout, settings and row states go with it.';
-- <<< sql/ddl.sql
-- The key columns' types and collations of tables replicated under 0.1.0
-- (converge.collation_of is in the block above).
UPDATE converge.replicated r
   SET (key_types, key_typmods, key_collations) =
       (SELECT array_agg(a.atttypid::regtype ORDER BY k.i), array_agg(a.atttypmod ORDER BY k.i),
               array_agg(converge.collation_of(a.attcollation) ORDER BY k.i)
          FROM unnest(r.key_columns) WITH ORDINALITY k(name, i)
          LEFT JOIN pg_attribute a ON a.attrelid = r.table_name AND a.attname = k.name AND NOT a.attisdropped);

-- changes_since takes with_covers (0.2.0 peers ask for ormap deltas
-- with what they superseded per key); the one-argument form, which
-- clients and 0.1.0 nodes call, gives them without.
CREATE FUNCTION converge.without_covers(delta bytea) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'without_covers_wrapper';
COMMENT ON FUNCTION converge.without_covers(bytea) IS 'An op''s delta as readers before 0.2.0 take it: an ormap delta without what it superseded per key (it merges the same); any other delta as it is.';
CREATE FUNCTION converge.changes_since(frontier jsonb, with_covers boolean)
RETURNS SETOF converge.op
LANGUAGE plpgsql STABLE AS $$
DECLARE h record;
BEGIN
    IF frontier IS NULL OR jsonb_typeof(frontier) <> 'object' THEN
        RAISE EXCEPTION 'frontier must be a JSON object {actor: counter}' USING ERRCODE = '22023';
    END IF;
    FOR h IN SELECT * FROM converge.log_horizon LOOP
        IF coalesce((frontier ->> h.actor)::bigint, 0) < h.upto THEN
            RAISE EXCEPTION 'frontier is older than the compacted log of actor "%" (compacted through %)', h.actor, h.upto
                USING ERRCODE = '55000', HINT = 'Rejoin from a snapshot: converge.snapshot(table), then sync from its frontier.';
        END IF;
    END LOOP;
    -- The caller keeps the counters it gets: they must be durable here.
    PERFORM converge.flush_visible();
    -- Log order is apply order, and an op is applied only after its deps.
    RETURN QUERY
        SELECT l.op_id, l.actor, l.target_table, l.target_key, l.target_column, l.schema_version, l.epoch,
               -- (A signed op goes as signed: its signature covers the delta.)
               l.deps, CASE WHEN with_covers OR l.signature IS NOT NULL THEN l.delta ELSE converge.without_covers(l.delta) END,
               l.signature
          FROM converge.op_log l
         WHERE l.outcome = 'applied'
           AND (l.counter > coalesce((frontier ->> l.actor)::bigint, 0)
                -- An op a void contested here (the void arrived after it or
                -- gave way to it): a caller past its counter may hold that
                -- void instead, which the op takes the place of.
                OR (l.actor, l.counter) IN (SELECT v.actor, v.counter FROM converge.op_log v
                                              WHERE v.target_table = 'converge.void'
                                                AND v.outcome IN ('duplicate', 'superseded'))
                   AND l.target_table <> 'converge.void')
         ORDER BY l.seq;
END $$;
COMMENT ON FUNCTION converge.changes_since(jsonb, boolean) IS 'The applied ops a caller at this frontier lacks, in an order that respects deps; with_covers false: ormap deltas of unsigned ops without what they superseded per key, as readers before 0.2.0 take them. 55000 if the frontier predates a compaction (rejoin from converge.snapshot).';

-- What clients and nodes before 0.2.0 call.
CREATE OR REPLACE FUNCTION converge.changes_since(frontier jsonb)
RETURNS SETOF converge.op
LANGUAGE sql STABLE AS $$ SELECT * FROM converge.changes_since(frontier, false) $$;
COMMENT ON FUNCTION converge.changes_since(jsonb) IS 'changes_since(frontier, false): the applied ops a caller at this frontier lacks, in the form readers before 0.2.0 take (what the client crate pulls).';

-- Repairs give ops the outcome superseded.
ALTER TABLE converge.op_log DROP CONSTRAINT op_log_outcome_check,
    ADD CONSTRAINT op_log_outcome_check
        CHECK (outcome IN ('applied', 'duplicate', 'buffered', 'rejected', 'quarantined', 'superseded'));
COMMENT ON TABLE converge.op_log IS 'Every op this node made or received, with its outcome: applied, duplicate, buffered, rejected (with reason), quarantined or superseded (by a repair, whose id the reason names; a void a real op overtook, ''void overtaken''; an op of this node whose void a join took, ''void taken at join'').';

-- Ops clients sent wait out a peer's transaction (src/apply/mod.rs).
-- Pending ops whose deps are all applied, applied now.
CREATE OR REPLACE FUNCTION converge.retry_pending()
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE plpgsql SET search_path = pg_catalog, converge, pg_temp AS $$
#variable_conflict use_column
DECLARE p record; r record; passes int := 0; most int; touched text[]; last_pass text[];
BEGIN
    -- Pass after pass (ops a pass applies may make others ready): a chain
    -- of deps is applied by this loop, not by apply_ops calling back here,
    -- which nested one call per link and ran out of stack on long chains.
    -- After the first pass only ops missing one the last pass decided are
    -- looked at (an array overlap, before the per-dep checks). Every pass
    -- but the last takes ops out of pending for good, so there are at most
    -- as many passes as ops pending now, plus one.
    most := (SELECT count(*) FROM converge.pending_ops) + 1;
    LOOP
        IF NOT EXISTS (SELECT 1 FROM converge.pending_ops) OR passes >= most THEN
            RETURN;
        END IF;
        passes := passes + 1;
        touched := '{}';
        FOR p IN
            WITH ready AS (
                DELETE FROM converge.pending_ops q
                 WHERE (last_pass IS NULL OR q.missing && last_pass)
                   AND NOT EXISTS (SELECT 1 FROM unnest(q.missing) d WHERE NOT converge.dep_done(d))
                   -- (A request names its table in its key, and needs UPDATE on its column.)
                   AND CASE (q.op).target_table
                           WHEN 'converge.request' THEN converge.may_ask((q.op).target_key ->> 'table', (q.op).target_column)
                           ELSE converge.may_write((q.op).target_table, (q.op).target_column) END
                   -- Under a peer's origin nothing written is shipped: ops a
                   -- client sent here wait for a transaction of their own.
                   AND (q.origin LIKE 'peer:%' OR NOT converge.under_peer_origin())
                   -- A peer's ops only where its replication is trusted
                   -- (the worker): elsewhere a node's ops look forged.
                   AND (q.origin NOT LIKE 'peer:%' OR converge.applying_trusted())
                RETURNING q.op, q.origin, q.received_at)
            SELECT r.origin, array_agg(r.op ORDER BY r.received_at, (r.op).op_id) AS batch FROM ready r GROUP BY r.origin ORDER BY 1
        LOOP
            FOR r IN SELECT * FROM converge.apply_ops(p.batch, p.origin, false) LOOP
                touched := touched || r.op_id;
                op_id := r.op_id;
                outcome := r.outcome;
                reason := r.reason;
                RETURN NEXT;
            END LOOP;
        END LOOP;
        EXIT WHEN cardinality(touched) = 0;
        last_pass := touched;
    END LOOP;
END $$;
COMMENT ON FUNCTION converge.retry_pending() IS 'Apply every pending op whose deps are all applied (apply_batch does this first; also useful after a repair). Ops that came from peers are applied only where their replication is trusted (a peer''s batch, the worker''s retry every 5 s); ops clients sent, not under a peer''s origin (they wait for the worker''s next transaction, or the next apply_batch or retry_pending outside sync).';

COMMENT ON FUNCTION converge.under_peer_origin() IS 'Internal: whether this transaction applies a peer''s changes (a replication origin is set up), for converge.retry_pending.';
COMMENT ON FUNCTION converge.applying_trusted() IS 'Internal: whether converge applies what came through a peer''s replication (or retries for the worker), for converge.retry_pending.';

-- apply_batch reads its converge.op[] in Rust (no SQL wrapper unpacking it
-- into arrays for apply_ops_core).
CREATE OR REPLACE FUNCTION converge.apply_ops(ops converge.op[], origin text, top_level boolean)
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'apply_ops_wrapper';
COMMENT ON FUNCTION converge.apply_ops(converge.op[], text, boolean) IS 'Internal: the body of apply_batch (top_level: also retry the pending ops the batch unblocks).';
REVOKE ALL ON FUNCTION converge.apply_ops(converge.op[], text, boolean) FROM PUBLIC;
DROP FUNCTION converge.apply_ops_core(text[], text[], text[], jsonb[], text[], int[], bigint[], jsonb[], bytea[], bytea[], text, boolean);
CREATE OR REPLACE FUNCTION converge.apply_batch(ops converge.op[], origin text DEFAULT 'client')
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'apply_batch_wrapper';
COMMENT ON FUNCTION converge.apply_batch(converge.op[], text) IS 'Apply a batch of ops: first the pending ops whose deps are applied, then the batch: validate, deduplicate, buffer ops with missing deps, merge the rest set-wise. One row per op decided (an op buffered and then applied in the same call shows twice). Never aborts the batch for a bad op.';

-- An ormap delta may say per key what it superseded (format version 2).
COMMENT ON FUNCTION converge.ormap_recv(internal) IS 'Binary input of ormap: [format version, type tag, postcard body], validated and canonical (version 2: a delta that says per key what it superseded).';
COMMENT ON FUNCTION converge.delta(converge.ormap, converge.ormap) IS 'delta(new, old): the smallest ormap d with merge(old, d) = merge(old, new), saying per key what new superseded of old (covers); NULL old is empty, NULL new gives NULL.';

-- replay applies a peer's op again as that peer's (in SQL it was refused
-- as node_actor). 0.1.0 logged whatever origin an SQL caller named (and
-- ran triggers inside its trusted apply), so a "peer:" origin of its rows
-- not applied, or of what it left pending, proves nothing: marked, they
-- are never taken for a peer's (a peer's ops it refused are copied again
-- from that peer: docs/operations.md, "Upgrades").
UPDATE converge.op_log SET origin = 'v0.1.0 ' || origin WHERE origin LIKE 'peer:%' AND outcome <> 'applied';
UPDATE converge.pending_ops SET origin = 'v0.1.0 ' || origin WHERE origin LIKE 'peer:%';
CREATE OR REPLACE FUNCTION converge.replay(replay_op_id text)
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE c STRICT VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'replay_wrapper';
COMMENT ON FUNCTION converge.replay(text) IS 'Apply a rejected or quarantined op again once its cause is mended (a widened key, an added column, a repaired op it waited for); not one a repair superseded (55000). An op a peer sent is applied as that peer''s, which takes the owner of its table. The log keeps both outcomes.';

-- Buffered ops with their age, readable per table (sql/ops.sql, sql/finalize.sql).
CREATE VIEW converge.pending WITH (security_invoker = true) AS
    SELECT q.op_id, (q.op).actor, (q.op).target_table, (q.op).target_key, (q.op).target_column,
           q.missing, q.origin, q.received_at, clock_timestamp() - q.received_at AS age, q.op
      FROM converge.pending_ops q;
COMMENT ON VIEW converge.pending IS 'Ops buffered until the ops they depend on (missing) arrive, with how long each has waited (age); applied automatically then. Each role sees those of the tables it may SELECT.';
ALTER TABLE converge.pending_ops ENABLE ROW LEVEL SECURITY;
CREATE POLICY pending_ops_readable ON converge.pending_ops FOR SELECT USING (converge.may_read((op).target_table));
GRANT SELECT ON converge.pending_ops, converge.pending TO PUBLIC;

-- op_outcomes counts by the reason's code (sql/ops.sql).
CREATE OR REPLACE VIEW converge.op_outcomes AS
    SELECT outcome,
           CASE outcome WHEN 'applied' THEN NULL
                        WHEN 'superseded' THEN CASE reason WHEN 'void overtaken' THEN 'void_overtaken'
                                                   WHEN 'void taken at join' THEN 'void_taken_at_join' ELSE 'repair' END
                        ELSE substring(reason FROM '^[a-z_]+') END AS reason,
           count(*) AS ops
      FROM converge.op_log GROUP BY 1, 2;
COMMENT ON VIEW converge.op_outcomes IS 'converge.op_log counted by outcome and the code of its reason (the reason''s leading word, such as not_authority, invalid_delta, missing or error; repair for superseded ops, void_overtaken for voids a real op took the place of, void_taken_at_join for ops of a node that joined a peer whose void held their counter; none for applied ones, whose reason is a repair''s own text): a bounded set of rows for a metrics exporter. The full reasons are in op_log and quarantine.';

-- TRUNCATE fires no row trigger: the rows would go here and stay on every
-- other node, with their row states still live here. converge.replicate
-- puts this statement trigger on each table it marks.
CREATE FUNCTION converge.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, converge, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'cannot truncate replicated table %', TG_RELID::regclass
        USING ERRCODE = '0A000',
              DETAIL = 'TRUNCATE records no ops: the rows would be gone on this node only.',
              HINT = format('DELETE FROM %s deletes them on every node.', TG_RELID::regclass);
END $$;
COMMENT ON FUNCTION converge.refuse_truncate() IS 'Trigger of replicated tables (BEFORE TRUNCATE): TRUNCATE records no ops, so it is refused with 0A000; DELETE deletes rows on every node.';
DO $$
DECLARE t regclass;
BEGIN
    FOR t IN SELECT r.table_name FROM converge.replicated r LOOP
        EXECUTE format('CREATE TRIGGER converge_no_truncate BEFORE TRUNCATE ON %s FOR EACH STATEMENT
                        EXECUTE FUNCTION converge.refuse_truncate()', t);
    END LOOP;
END $$;

COMMENT ON FUNCTION converge.may_read(text) IS 'Internal (row security of converge.op_log, pending_ops and requests): whether the acting role may SELECT the table an op targets, with no row security of that table applying to it (peer roles read every op).';

-- Without the worker, wait_for_peers connects to the peers with their
-- stored credentials (sql/replication.sql).
REVOKE ALL ON FUNCTION converge.wait_for_peers(interval) FROM PUBLIC;

-- A NULL table or role gives NULL, not an error about a table named "t"
-- or a NOT NULL violation.
ALTER FUNCTION converge.snapshot(regclass) STRICT;
ALTER FUNCTION converge.grant_peer(regrole) STRICT;

-- The casts and the row security policies say what they are too.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['gcounter', 'pncounter', 'bcounter', 'gset', 'orset', 'lwwreg', 'mvreg', 'lwwmap', 'ormap', 'seqtext'] LOOP
        EXECUTE format('COMMENT ON CAST (converge.%I AS jsonb) IS %L', t,
                       format('The user-level value of a %s as jsonb (as converge.to_jsonb gives it).', t));
        EXECUTE format('COMMENT ON CAST (converge.%I AS bytea) IS %L', t,
                       format('The binary form of a %s: [format version, type tag, postcard body].', t));
        EXECUTE format('COMMENT ON CAST (bytea AS converge.%I) IS %L', t,
                       format('A %s from its binary form, validated as binary input is (22P03 on bad bytes).', t));
    END LOOP;
END $$;
COMMENT ON POLICY op_log_readable ON converge.op_log IS 'A role reads the ops of the tables it may SELECT (converge.may_read); peer roles read every op.';
COMMENT ON POLICY pending_ops_readable ON converge.pending_ops IS 'A role reads the waiting ops of the tables it may SELECT (converge.may_read); peer roles read every op.';

-- The worker of a database exits when the library and the extension
-- disagree on the version; start it again now that they agree.
SELECT converge.start_worker();
