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
