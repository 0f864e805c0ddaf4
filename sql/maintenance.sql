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
