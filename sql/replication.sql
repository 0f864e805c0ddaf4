-- Replication between nodes (SPEC section 4): peers, their status, and the
-- wake-up signal for pullers. The output plugin, the pull and the worker
-- are in src/replication/.

CREATE TABLE converge.peer (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,63}$'),
    conninfo    text NOT NULL,
    slot_name   text NOT NULL,     -- our logical slot on the peer
    origin_name text NOT NULL,     -- the peer's replication origin here
    paused      boolean NOT NULL DEFAULT false,
    added_at    timestamptz NOT NULL DEFAULT now(),
    -- Added by a role that is not superuser: every connection to the peer
    -- must use the conninfo's password, as add_peer's own did.
    password_required boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE converge.peer IS 'Peers this node pulls from (converge.add_peer). Not dumped: a restored node re-adds its peers.';

CREATE TABLE converge.peer_status (
    name           text PRIMARY KEY REFERENCES converge.peer ON DELETE CASCADE,
    state          text NOT NULL DEFAULT 'new',  -- new, ok, down
    peer_lsn       pg_lsn,                       -- the peer's WAL position at the last round
    confirmed_lsn  pg_lsn,                       -- how far this node has consumed our slot there
    lag_bytes      bigint,                       -- WAL the peer holds for us
    lag_seconds    double precision,             -- age of the newest change applied by the last round (0 when nothing was pending)
    last_success   timestamptz,
    last_error     text,
    last_error_at  timestamptz,
    caught_up_at   timestamptz,                  -- start of the last round that found nothing left
    ops_received   bigint NOT NULL DEFAULT 0,
    bytes_received bigint NOT NULL DEFAULT 0,
    -- Causal stability (SPEC section 6): the peer's frontier (what it has
    -- applied), as read by a probe after which everything the peer had
    -- committed was applied here; and what it has received from us.
    frontier       jsonb,
    frontier_at    timestamptz,
    ops_shipped    bigint NOT NULL DEFAULT 0,
    bytes_shipped  bigint NOT NULL DEFAULT 0,
    -- Set when its slot here held more than converge.max_peer_lag_bytes and
    -- was dropped; cleared once it has rejoined.
    lost_at        timestamptz,
    rejoining      boolean NOT NULL DEFAULT false,
    -- The slot the peer reads from on this node, as the peer records it
    -- (its converge.peers row for us), read at add_peer, at each
    -- connection and with each probe: how its slot is told from another's.
    their_slot     text,
    -- The peer's tables that clients may not write there (qualified
    -- names), read with its frontier: a table's row tombstones go only
    -- once every peer not lost says so (converge.set_client_writes).
    closed_tables  jsonb
);
COMMENT ON TABLE converge.peer_status IS 'Internal: what the last pull rounds found, per peer (read converge.peers).';

-- How far a peer's ops are applied here (pg_replication_origin_progress is
-- for superusers; an LSN is no secret). Only for a peer's origin, and NULL
-- for one that is missing (dropped by hand), so that converge.peers still
-- answers.
CREATE FUNCTION converge.origin_progress(origin text) RETURNS pg_lsn
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_replication_origin_progress(origin, false)
     WHERE EXISTS (SELECT 1 FROM converge.peer p WHERE p.origin_name OPERATOR(pg_catalog.=) origin)
       AND pg_catalog.pg_replication_origin_oid(origin) IS NOT NULL
$$;
COMMENT ON FUNCTION converge.origin_progress(text) IS 'The remote LSN up to which a peer''s replication origin''s changes are applied here (for converge.peers); NULL for any other name.';

-- Readable by every role (monitoring): the conninfo without its password.
-- no_worker: no background worker can serve this database (and says why).
CREATE VIEW converge.peers AS
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
GRANT SELECT ON converge.peers TO PUBLIC;

-- Roles peers connect as (converge.grant_peer): they may read the ops and
-- snapshots of every replicated table, also of tables replicated later.
CREATE TABLE converge.peer_reader (
    role       regrole PRIMARY KEY,
    granted_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE converge.peer_reader IS 'Roles given converge.grant_peer: converge.replicate grants them SELECT on each table it marks.';

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

CREATE FUNCTION converge.grant_peer(role regrole) RETURNS void
LANGUAGE plpgsql STRICT SET search_path = pg_catalog, converge, pg_temp AS $$
DECLARE t record;
BEGIN
    INSERT INTO converge.peer_reader (role) VALUES (grant_peer.role) ON CONFLICT DO NOTHING;
    EXECUTE format('GRANT USAGE ON SCHEMA converge TO %s', role);
    FOR t IN SELECT r.table_name, n.nspname FROM converge.replicated r
               JOIN pg_class c ON c.oid = r.table_name JOIN pg_namespace n ON n.oid = c.relnamespace LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %s', t.nspname, role);
        EXECUTE format('GRANT SELECT ON %s TO %s', t.table_name, role);
    END LOOP;
END $$;
COMMENT ON FUNCTION converge.grant_peer(regrole) IS 'Let a role (LOGIN REPLICATION, not superuser) serve as the role peers connect as: it may read the ops and snapshots of every replicated table, also of tables replicated later.';

REVOKE ALL ON converge.peer, converge.peer_status, converge.peer_reader FROM PUBLIC;
REVOKE ALL ON FUNCTION converge.grant_peer(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION converge.add_peer(text, text), converge.remove_peer(text), converge.sync(text),
               converge.pause_peer(text), converge.resume_peer(text) FROM PUBLIC;
-- Without the worker it connects to the peers with their stored
-- credentials to read their slots: administration too.
REVOKE ALL ON FUNCTION converge.wait_for_peers(interval) FROM PUBLIC;


COMMENT ON FUNCTION converge.add_peer(text, text) IS 'Connect to a peer: create our logical slot there (plugin converge) and its replication origin here, copy the ops it has that this node lacks, then pull continuously (background worker) or on converge.sync().';
COMMENT ON FUNCTION converge.remove_peer(text) IS 'Stop replicating with a peer: drop our slot on it and its replication origin here.';
COMMENT ON FUNCTION converge.sync(text) IS 'One pull round from a peer now, in this transaction (run it in a transaction of its own). Returns the number of ops received.';
COMMENT ON FUNCTION converge.wait_for_peers(interval) IS 'True once every unpaused peer is caught up (everything each had committed when the call started is applied here); false on timeout.';
COMMENT ON FUNCTION converge.pause_peer(text) IS 'Stop pulling from a peer; its slot keeps what this node has not read.';
COMMENT ON FUNCTION converge.resume_peer(text) IS 'Resume pulling from a paused peer.';
COMMENT ON FUNCTION converge.describe_change(bytea) IS 'A readable description (jsonb) of one message of the converge output plugin''s stream, as returned by pg_logical_slot_peek_binary_changes.';
