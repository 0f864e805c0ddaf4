-- Replication between nodes (SPEC section 4): peers, their status, and the
-- wake-up signal for pullers. The output plugin, the pull and the worker
-- are in src/replication/.

CREATE TABLE converge.peer (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,63}$'),
    conninfo    text NOT NULL,
    slot_name   text NOT NULL,     -- our logical slot on the peer
    origin_name text NOT NULL,     -- the peer's replication origin here
    paused      boolean NOT NULL DEFAULT false,
    added_at    timestamptz NOT NULL DEFAULT now()
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
    bytes_received bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE converge.peer_status IS 'Internal: what the last pull rounds found, per peer (read converge.peers).';

CREATE VIEW converge.peers AS
    SELECT p.name, p.conninfo, CASE WHEN p.paused THEN 'paused' ELSE s.state END AS state,
           p.slot_name AS slot, s.confirmed_lsn, s.lag_bytes, s.lag_seconds, s.last_success, s.last_error,
           s.last_error_at, s.caught_up_at, s.ops_received, s.bytes_received, p.origin_name AS origin,
           pg_replication_origin_progress(p.origin_name, false) AS origin_lsn
      FROM converge.peer p LEFT JOIN converge.peer_status s USING (name);
COMMENT ON VIEW converge.peers IS 'Each peer: state (new, ok, down, paused), our slot there, confirmed LSN, lag in bytes and seconds, last success and last error.';

-- conninfo may hold a password: peers are for superusers (and whom they grant).
REVOKE ALL ON converge.peer, converge.peer_status, converge.peers FROM PUBLIC;
REVOKE ALL ON FUNCTION converge.add_peer(text, text), converge.remove_peer(text), converge.sync(text),
               converge.pause_peer(text), converge.resume_peer(text) FROM PUBLIC;


COMMENT ON FUNCTION converge.add_peer(text, text) IS 'Connect to a peer: create our logical slot there (plugin converge) and its replication origin here, copy the ops it has that this node lacks, then pull continuously (background worker) or on converge.sync().';
COMMENT ON FUNCTION converge.remove_peer(text) IS 'Stop replicating with a peer: drop our slot on it and its replication origin here.';
COMMENT ON FUNCTION converge.sync(text) IS 'One pull round from a peer now, in this transaction (run it in a transaction of its own). Returns the number of ops received.';
COMMENT ON FUNCTION converge.wait_for_peers(interval) IS 'True once every unpaused peer is caught up (everything each had committed when the call started is applied here); false on timeout.';
COMMENT ON FUNCTION converge.pause_peer(text) IS 'Stop pulling from a peer; its slot keeps what this node has not read.';
COMMENT ON FUNCTION converge.resume_peer(text) IS 'Resume pulling from a paused peer.';
COMMENT ON FUNCTION converge.describe_change(bytea) IS 'A readable description (jsonb) of one message of the converge output plugin''s stream, as returned by pg_logical_slot_peek_binary_changes.';
