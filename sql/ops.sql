-- Operation log and idempotent apply (SPEC section 3).
--
-- An op is an envelope around a delta. Applying = merging the delta into the
-- target row, so repeats are harmless; the op_id makes them visible
-- ('duplicate') and lets ops reaching a node by two paths be deduplicated.

CREATE TYPE converge.op AS (
    op_id          text,     -- 'actor:counter'
    actor          text,
    target_table   text,
    target_key     jsonb,    -- primary key columns -> values
    target_column  text,
    schema_version int,
    epoch          bigint,
    deps           text[],   -- op_ids this op depends on
    delta          bytea,    -- the delta in the column type's binary form
    signature      bytea
);
COMMENT ON TYPE converge.op IS 'An operation: envelope (who, what, causal context) plus a CRDT delta in binary form. op::text round-trips.';

CREATE TABLE converge.replicated (
    table_name   regclass PRIMARY KEY,
    key_columns  text[] NOT NULL,
    crdt_columns jsonb NOT NULL,          -- column name -> converge type name
    other_columns text[] NOT NULL DEFAULT '{}',  -- the rest: last writer wins, shipped as row ops
    row_expr     text NOT NULL DEFAULT '',      -- jsonb_build_object arguments reading other_columns from $1
    marked_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE converge.replicated IS 'Tables marked with converge.replicate(): their CRDT column changes are recorded as ops.';

-- Row-level state of replicated rows, the same on every node once the same
-- ops are applied. A row op (target_column '') carries an lwwmap delta: the
-- non-CRDT columns (last writer wins by hybrid logical clock) and "$live"
-- (true on INSERT, false on DELETE). A row is present while "$live" is not
-- false. A deleted row's CRDT state moves to `stash`, deltas that arrive
-- for it are merged there, and a later insert of the key resumes it: the
-- state of a key is the merge of every delta ever made to it, whichever
-- order the inserts, deletes and edits arrive in.
CREATE TABLE converge.row_state (
    tbl        regclass NOT NULL,
    target_key jsonb NOT NULL,
    clock      converge.lwwmap NOT NULL,
    live       boolean NOT NULL,
    stash      jsonb NOT NULL DEFAULT '{}',   -- column -> CRDT text, while deleted
    PRIMARY KEY (tbl, target_key)
);
COMMENT ON TABLE converge.row_state IS 'Per replicated row: last-writer-wins clock of its non-CRDT columns and liveness (row tombstones), and the CRDT state of deleted rows.';

CREATE TABLE converge.op_log (
    seq            bigserial PRIMARY KEY,  -- local order of recording (respects deps)
    op_id          text NOT NULL,
    actor          text NOT NULL,
    counter        bigint NOT NULL,
    target_table   text,
    target_key     jsonb,
    target_column  text,
    schema_version int,
    epoch          bigint,
    deps           text[],
    delta          bytea,
    signature      bytea,
    outcome        text NOT NULL CHECK (outcome IN ('applied', 'duplicate', 'buffered', 'rejected', 'quarantined')),
    reason         text,
    origin         text NOT NULL,          -- 'local' or who delivered it
    received_at    timestamptz NOT NULL DEFAULT now()
);
-- The dedupe gate: an op (actor, counter) is applied at most once.
CREATE UNIQUE INDEX op_log_applied_once ON converge.op_log (actor, counter) WHERE outcome = 'applied';
CREATE INDEX op_log_op_id ON converge.op_log (op_id);
COMMENT ON TABLE converge.op_log IS 'Every op this node made or received, with its outcome: applied, duplicate, buffered, rejected (with reason) or quarantined.';

CREATE TABLE converge.pending (
    op_id       text PRIMARY KEY,
    op          converge.op NOT NULL,
    missing     text[] NOT NULL,
    origin      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE converge.pending IS 'Ops buffered until the ops they depend on arrive; applied automatically then.';

CREATE TABLE converge.actor_frontier (
    actor      text PRIMARY KEY,
    contiguous bigint NOT NULL DEFAULT 0   -- every counter 1..contiguous is applied
);

-- Where the log was compacted: a cursor older than this must rejoin from a snapshot.
CREATE TABLE converge.log_horizon (
    actor text PRIMARY KEY,
    upto  bigint NOT NULL
);

-- Gap-free counter of this node's own ops. The row lock is held to commit, so
-- local ops commit in counter order and a frontier never skips one.
CREATE TABLE converge.local_op_counter (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    counter  bigint NOT NULL DEFAULT 0
);
-- (The row is created on first use, so a restored dump's row does not collide.)

SELECT pg_catalog.pg_extension_config_dump('converge.replicated', '');
SELECT pg_catalog.pg_extension_config_dump('converge.op_log', '');
SELECT pg_catalog.pg_extension_config_dump('converge.op_log_seq_seq', '');
SELECT pg_catalog.pg_extension_config_dump('converge.pending', '');
SELECT pg_catalog.pg_extension_config_dump('converge.actor_frontier', '');
SELECT pg_catalog.pg_extension_config_dump('converge.log_horizon', '');
SELECT pg_catalog.pg_extension_config_dump('converge.local_op_counter', '');
SELECT pg_catalog.pg_extension_config_dump('converge.row_state', '');

CREATE VIEW converge.op_outcomes AS
    SELECT outcome, reason, count(*) AS ops FROM converge.op_log GROUP BY outcome, reason;
COMMENT ON VIEW converge.op_outcomes IS 'converge.op_log counted by outcome and reason.';

CREATE VIEW converge.quarantine AS
    SELECT * FROM converge.op_log WHERE outcome IN ('rejected', 'quarantined')
       AND NOT EXISTS (SELECT 1 FROM converge.op_log a WHERE a.op_id = op_log.op_id AND a.outcome = 'applied');
COMMENT ON VIEW converge.quarantine IS 'Rejected and quarantined ops not applied since (kept, never dropped; converge.replay(op_id) retries one).';

CREATE FUNCTION converge.op_encode(o converge.op) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT converge.op_encode_fields(o.op_id, o.actor, o.target_table, o.target_key, o.target_column,
                                     o.schema_version, o.epoch, o.deps, o.delta, o.signature)
$$;
COMMENT ON FUNCTION converge.op_encode(converge.op) IS 'The binary form of an op (the one converge-core''s Op::encode writes): [format version, tag 64, postcard body].';
COMMENT ON FUNCTION converge.op_encode_fields(text, text, text, jsonb, text, int, bigint, text[], bytea, bytea) IS 'Internal: the binary form of an op from its fields (see op_encode).';

CREATE FUNCTION converge.op_decode(b bytea) RETURNS converge.op
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ROW(f.*)::converge.op FROM converge.op_decode_fields(b) f
$$;
COMMENT ON FUNCTION converge.op_decode(bytea) IS 'An op from its binary form; validated and canonical only (22P03 otherwise).';
COMMENT ON FUNCTION converge.op_decode_fields(bytea) IS 'Internal: the fields of an op in binary form (see op_decode).';

-- Split 'actor:counter'; NULLs when malformed.
CREATE FUNCTION converge.parse_op_id(op_id text, OUT actor text, OUT counter bigint)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT converge.op_id_actor(op_id), converge.op_id_counter(op_id)
$$;
COMMENT ON FUNCTION converge.parse_op_id(text) IS 'Split an op_id ''actor:counter'' into its parts (NULLs when malformed).';
COMMENT ON FUNCTION converge.op_id_actor(text) IS 'The actor of an op_id ''actor:counter'', or NULL when malformed.';
COMMENT ON FUNCTION converge.op_id_counter(text) IS 'The counter of an op_id ''actor:counter'', or NULL when malformed.';
COMMENT ON FUNCTION converge.delta_error(text, bytea) IS 'Why a delta is not a valid value of the named converge type (NULL when valid); never raises.';

CREATE FUNCTION converge.is_applied(op_id text) RETURNS boolean
LANGUAGE sql STABLE STRICT AS $$
    SELECT EXISTS (SELECT 1 FROM converge.op_log l
                    WHERE l.actor = converge.op_id_actor($1) AND l.counter = converge.op_id_counter($1)
                      AND l.outcome = 'applied')
$$;
COMMENT ON FUNCTION converge.is_applied(text) IS 'Whether the op with this op_id has been applied here.';

-- Move an actor's contiguous frontier forward past every applied counter.
CREATE FUNCTION converge.advance_frontier(a text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE cur bigint;
BEGIN
    INSERT INTO converge.actor_frontier (actor) VALUES (a) ON CONFLICT DO NOTHING;
    SELECT contiguous INTO cur FROM converge.actor_frontier WHERE actor = a FOR UPDATE;
    -- The applied counters above cur that continue it without a gap: the
    -- k-th of them (in order) is cur + k exactly while there is no gap.
    cur := cur + (SELECT count(*) FROM (
        SELECT l.counter, row_number() OVER (ORDER BY l.counter) AS k
          FROM converge.op_log l WHERE l.actor = a AND l.outcome = 'applied' AND l.counter > cur) s
        WHERE s.counter = cur + s.k);
    UPDATE converge.actor_frontier SET contiguous = cur WHERE actor = a AND contiguous < cur;
END $$;

-- One op with what apply_batch found out about it.
CREATE TYPE converge.op_check AS (
    op          converge.op,
    n           bigint,     -- position in the batch
    actor       text,       -- parsed from op_id
    counter     bigint,
    tbl         regclass,
    key_columns text[],
    coltype     text,
    bad         text        -- rejection reason, NULL when valid
);
COMMENT ON TYPE converge.op_check IS 'Internal: an op in a batch with its parsed id, target and rejection reason.';

CREATE FUNCTION converge.log_ops(checks converge.op_check[], outcome text, origin text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO converge.op_log (op_id, actor, counter, target_table, target_key, target_column, schema_version,
                                 epoch, deps, delta, signature, outcome, reason, origin)
    SELECT coalesce((x.op).op_id, ''), coalesce(x.actor, (x.op).actor, ''), coalesce(x.counter, 0), (x.op).target_table,
           (x.op).target_key, (x.op).target_column, (x.op).schema_version, (x.op).epoch, (x.op).deps, (x.op).delta,
           (x.op).signature, $2, x.bad, $3
      FROM unnest($1) x ORDER BY x.n
$$;
COMMENT ON FUNCTION converge.log_ops(converge.op_check[], text, text) IS 'Internal: record ops with one outcome (reason from each op''s bad field).';

-- 't.k1 = v.k1 AND ...': the row t whose primary key equals record v's.
CREATE FUNCTION converge.key_match(keys text[]) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT string_agg(format('t.%1$I = v.%1$I', k), ' AND ') FROM unnest(keys) k
$$;
COMMENT ON FUNCTION converge.key_match(text[]) IS 'Internal: SQL condition matching row t to record v on the given key columns.';

-- The CRDT columns of one row as {column: text}, from a row as jsonb of text values.
CREATE FUNCTION converge.crdt_values(tbl regclass, crdt jsonb, key jsonb, keys text[]) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    vals jsonb := '{}';
    col text;
    v text;
BEGIN
    FOR col IN SELECT jsonb_object_keys(crdt) LOOP
        EXECUTE format('SELECT t.%I::text FROM %s t, jsonb_populate_record(NULL::%s, $1) v WHERE %s', col, tbl, tbl,
                       converge.key_match(keys)) INTO v USING key;
        IF v IS NOT NULL THEN
            vals := vals || jsonb_build_object(col, v);
        END IF;
    END LOOP;
    RETURN vals;
END $$;
COMMENT ON FUNCTION converge.crdt_values(regclass, jsonb, jsonb, text[]) IS 'Internal: the CRDT column values (as text) of the row with this key.';

-- Merge two {column: CRDT text} objects column by column.
CREATE FUNCTION converge.merge_stash(a jsonb, b jsonb, crdt jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    out jsonb := coalesce(a, '{}');
    col text;
    v text;
BEGIN
    FOR col IN SELECT jsonb_object_keys(coalesce(b, '{}')) LOOP
        EXECUTE format('SELECT converge.merge(coalesce($1, ''{}'')::converge.%1$I, $2::converge.%1$I)::text', crdt ->> col)
            INTO v USING out ->> col, b ->> col;
        out := out || jsonb_build_object(col, v);
    END LOOP;
    RETURN out;
END $$;
COMMENT ON FUNCTION converge.merge_stash(jsonb, jsonb, jsonb) IS 'Internal: merge two {column: CRDT text} objects column by column.';

-- Apply row ops (target_column ''): merge each lwwmap delta into the row's
-- clock, then make the table agree with it: present with the winning
-- non-CRDT values while "$live" is not false, absent (state stashed) otherwise.
CREATE FUNCTION converge.merge_rows(checks converge.op_check[], rel regclass, keys text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    x       converge.op_check;
    r       converge.replicated;
    rs      converge.row_state;
    clk     converge.lwwmap;
    alive   boolean;
    vals    jsonb;
    sets    text;
    present boolean;
    col     text;
BEGIN
    SELECT * INTO r FROM converge.replicated WHERE table_name = rel;
    FOR x IN SELECT c.* FROM unnest(checks) c WHERE c.tbl = merge_rows.rel AND (c.op).target_column = ''
              ORDER BY (c.op).target_key::text, c.n LOOP
        -- Lock order as in local writes (the row, then its row_state), so a
        -- local UPDATE and this apply never wait on each other in a cycle.
        EXECUTE format('SELECT true FROM %1$s t, jsonb_populate_record(NULL::%1$s, $1) v WHERE %2$s FOR UPDATE OF t',
                       rel, converge.key_match(keys))
            INTO present USING (x.op).target_key;
        present := coalesce(present, false);
        SELECT * INTO rs FROM converge.row_state s WHERE s.tbl = merge_rows.rel AND s.target_key = (x.op).target_key FOR UPDATE;
        clk := converge.merge(coalesce(rs.clock, '{}'), (x.op).delta::converge.lwwmap);
        alive := coalesce((converge.get(clk, '$live'))::boolean, true);
        vals := (converge.to_jsonb(clk) - '$live') - r.key_columns;
        IF alive THEN
            IF NOT present THEN
                EXECUTE format('INSERT INTO %1$s SELECT * FROM jsonb_populate_record(NULL::%1$s, $1)', rel)
                    USING vals || (x.op).target_key;
                -- Back from a tombstone: resume the CRDT state it kept.
                FOR col IN SELECT jsonb_object_keys(coalesce(rs.stash, '{}')) LOOP
                    EXECUTE format('UPDATE %1$s t SET %2$I = converge.merge(coalesce(t.%2$I, ''{}''), $2::converge.%3$I)
                                      FROM jsonb_populate_record(NULL::%1$s, $1) v WHERE %4$s',
                                   rel, col, r.crdt_columns ->> col, converge.key_match(keys))
                        USING (x.op).target_key, rs.stash ->> col;
                END LOOP;
                rs.stash := '{}';
            ELSIF vals <> '{}' THEN
                SELECT string_agg(format('%I = w.%I', k, k), ', ') INTO sets
                  FROM jsonb_object_keys(vals) k WHERE k = ANY (r.other_columns);
                IF sets IS NOT NULL THEN
                    EXECUTE format('UPDATE %1$s t SET %2$s FROM jsonb_populate_record(NULL::%1$s, $1) v,
                                           jsonb_populate_record(NULL::%1$s, $2) w WHERE %3$s',
                                   rel, sets, converge.key_match(keys))
                        USING (x.op).target_key, vals;
                END IF;
            END IF;
        ELSIF present THEN
            rs.stash := converge.merge_stash(rs.stash, converge.crdt_values(rel, r.crdt_columns, (x.op).target_key, keys),
                                             r.crdt_columns);
            EXECUTE format('DELETE FROM %1$s t USING jsonb_populate_record(NULL::%1$s, $1) v WHERE %2$s', rel, converge.key_match(keys))
                USING (x.op).target_key;
        END IF;
        INSERT INTO converge.row_state AS s (tbl, target_key, clock, live, stash)
        VALUES (merge_rows.rel, (x.op).target_key, clk, alive, coalesce(rs.stash, '{}'))
        ON CONFLICT (tbl, target_key) DO UPDATE SET clock = EXCLUDED.clock, live = EXCLUDED.live, stash = EXCLUDED.stash;
    END LOOP;
END $$;
COMMENT ON FUNCTION converge.merge_rows(converge.op_check[], regclass, text[]) IS 'Internal: apply row ops (inserts, deletes, last-writer-wins columns) of one table.';

-- Merge one group's deltas (one table and column) into their rows: deltas
-- for the same row are merged first (merge_agg), then one upsert creates or
-- merges each row, in key order so concurrent batches lock rows in the same order.
-- Deltas for deleted rows go to their tombstone's stash instead.
CREATE FUNCTION converge.merge_group(checks converge.op_check[], tbl regclass, col text, coltype text, keys text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE cols text; kcols text;
BEGIN
    IF coltype = 'row' THEN
        PERFORM converge.merge_rows(checks, tbl, keys);
        RETURN;
    END IF;
    SELECT string_agg(quote_ident(k), ', '), string_agg('k.' || quote_ident(k) || ' AS ' || quote_ident(k), ', ')
      INTO cols, kcols FROM unnest(keys) k;
    IF EXISTS (SELECT 1 FROM converge.row_state rs WHERE rs.tbl = merge_group.tbl AND NOT rs.live) THEN
        EXECUTE format(
            'UPDATE converge.row_state rs
                SET stash = rs.stash || jsonb_build_object($3, converge.merge(coalesce(rs.stash ->> $3, ''{}'')::converge.%1$I, d.m)::text)
               FROM (SELECT (x.op).target_key AS key, converge.merge_agg((x.op).delta::converge.%1$I) AS m
                       FROM unnest($1) x WHERE x.tbl = $2 AND (x.op).target_column = $3 GROUP BY 1) d
              WHERE rs.tbl = $2 AND rs.target_key = d.key AND NOT rs.live', coltype)
        USING checks, tbl, col;
    END IF;
    EXECUTE format(
        'INSERT INTO %1$s AS t (%2$s, %4$I)
         SELECT %2$s, converge.merge_agg(d) FROM (
             SELECT %3$s, (x.op).delta::converge.%5$I AS d
               FROM unnest($1) x, jsonb_populate_record(NULL::%1$s, (x.op).target_key) k
              WHERE x.tbl = $2 AND (x.op).target_column = $3
                AND NOT EXISTS (SELECT 1 FROM converge.row_state rs
                                 WHERE rs.tbl = $2 AND rs.target_key = (x.op).target_key AND NOT rs.live)) w
          GROUP BY %2$s ORDER BY %2$s
         ON CONFLICT (%2$s) DO UPDATE SET %4$I = converge.merge(t.%4$I, EXCLUDED.%4$I)',
        tbl, cols, kcols, col, coltype)
    USING checks, tbl, col;
END $$;
COMMENT ON FUNCTION converge.merge_group(converge.op_check[], regclass, text, text, text[]) IS 'Internal: merge the deltas of one table column into their rows, creating rows when missing.';

-- Mark ops applied (the dedupe gate) and merge them. Returns the ops it
-- applied; ops another session applied first come back in `lost`.
CREATE FUNCTION converge.apply_checked(checks converge.op_check[], origin text, OUT won converge.op_check[], OUT lost converge.op_check[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    ids  text[];
    g    record;
    one  converge.op_check;
    inserted text;
BEGIN
    won := '{}'; lost := '{}';
    BEGIN
        -- Sorted by (actor, counter): concurrent batches take the gate in one order.
        WITH ins AS (
            INSERT INTO converge.op_log (op_id, actor, counter, target_table, target_key, target_column, schema_version,
                                         epoch, deps, delta, signature, outcome, origin)
            SELECT (x.op).op_id, x.actor, x.counter, (x.op).target_table, (x.op).target_key, (x.op).target_column,
                   (x.op).schema_version, (x.op).epoch, (x.op).deps, (x.op).delta, (x.op).signature, 'applied', origin
              FROM unnest(checks) x ORDER BY x.actor, x.counter
            ON CONFLICT (actor, counter) WHERE outcome = 'applied' DO NOTHING
            RETURNING op_id)
        SELECT coalesce(array_agg(op_id), '{}') INTO ids FROM ins;
        SELECT coalesce(array_agg(x ORDER BY (x).n) FILTER (WHERE ((x).op).op_id = ANY (ids)), '{}'),
               coalesce(array_agg(x ORDER BY (x).n) FILTER (WHERE NOT ((x).op).op_id = ANY (ids)), '{}')
          INTO won, lost FROM unnest(checks) x;
        PERFORM set_config('converge.applying', 'on', true);
        FOR g IN SELECT DISTINCT x.tbl, (x.op).target_column AS col, x.coltype, x.key_columns
                   FROM unnest(won) x ORDER BY 1, 2 LOOP
            PERFORM converge.merge_group(won, g.tbl, g.col, g.coltype, g.key_columns);
        END LOOP;
        PERFORM set_config('converge.applying', 'off', true);
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        -- A deadlock or serialization failure is the transaction's, not an
        -- op's: let it abort the batch so the caller retries it whole.
        IF SQLSTATE IN ('40P01', '40001') THEN
            RAISE;
        END IF;
        PERFORM set_config('converge.applying', 'off', true);
    END;
    -- Something in the batch failed (say a key value of the wrong type):
    -- apply op by op so only the culprit is rejected.
    won := '{}'; lost := '{}';
    FOR one IN SELECT x.* FROM unnest(checks) x ORDER BY x.tbl, (x.op).target_column, (x.op).target_key::text, x.n LOOP
        BEGIN
            inserted := NULL;
            INSERT INTO converge.op_log (op_id, actor, counter, target_table, target_key, target_column, schema_version,
                                         epoch, deps, delta, signature, outcome, origin)
            VALUES ((one.op).op_id, one.actor, one.counter, (one.op).target_table, (one.op).target_key,
                    (one.op).target_column, (one.op).schema_version, (one.op).epoch, (one.op).deps, (one.op).delta,
                    (one.op).signature, 'applied', origin)
            ON CONFLICT (actor, counter) WHERE outcome = 'applied' DO NOTHING
            RETURNING op_id INTO inserted;
            IF inserted IS NULL THEN
                lost := lost || one;
                CONTINUE;
            END IF;
            PERFORM set_config('converge.applying', 'on', true);
            PERFORM converge.merge_group(ARRAY[one], one.tbl, (one.op).target_column, one.coltype, one.key_columns);
            PERFORM set_config('converge.applying', 'off', true);
            won := won || one;
        EXCEPTION WHEN OTHERS THEN
            IF SQLSTATE IN ('40P01', '40001') THEN
                RAISE;
            END IF;
            PERFORM set_config('converge.applying', 'off', true);
            one.bad := CASE WHEN SQLSTATE IN ('22P02', '22P03', '22023', '22003', '22007', '22008') THEN 'invalid_key: ' || SQLERRM
                            ELSE 'error ' || SQLSTATE || ': ' || SQLERRM END;
            PERFORM converge.log_ops(ARRAY[one], 'rejected', origin);
        END;
    END LOOP;
END $$;
COMMENT ON FUNCTION converge.apply_checked(converge.op_check[], text) IS 'Internal: the dedupe gate and the merge of a batch of valid, unblocked ops.';

-- The ops of a batch (by position) that must wait: a dep is neither applied
-- here nor in the batch, or a dep in the batch must wait itself.
CREATE FUNCTION converge.blocked_ops(fresh converge.op_check[]) RETURNS bigint[]
LANGUAGE plpgsql STABLE AS $$
DECLARE blocked bigint[] := '{}';
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(fresh) c WHERE cardinality((c.op).deps) > 0) THEN
        WITH RECURSIVE f AS (SELECT c.n, (c.op).op_id AS id, (c.op).deps AS deps FROM unnest(fresh) c),
        dep AS (SELECT f.n, d FROM f, unnest(coalesce(f.deps, '{}')) d),
        edge AS (SELECT dep.n, f.n AS parent FROM dep JOIN f ON f.id = dep.d),
        missing AS (SELECT DISTINCT dep.n FROM dep LEFT JOIN f ON f.id = dep.d
                     WHERE f.n IS NULL AND NOT converge.is_applied(dep.d)),
        blk(n) AS (SELECT n FROM missing
                   UNION
                   SELECT edge.n FROM edge JOIN blk ON blk.n = edge.parent)
        SELECT coalesce(array_agg(n), '{}') INTO blocked FROM blk;
    END IF;
    RETURN blocked;
END $$;
COMMENT ON FUNCTION converge.blocked_ops(converge.op_check[]) IS 'Internal: positions of the ops in a batch whose deps are missing (directly or through another op of the batch).';

-- Pending ops whose deps are all applied, applied now.
CREATE FUNCTION converge.retry_pending()
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE p record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM converge.pending) THEN
        RETURN;
    END IF;
    FOR p IN
        WITH ready AS (
            DELETE FROM converge.pending q
             WHERE NOT EXISTS (SELECT 1 FROM unnest(q.missing) d WHERE NOT converge.is_applied(d))
            RETURNING q.op, q.origin, q.received_at)
        SELECT r.origin, array_agg(r.op ORDER BY r.received_at, (r.op).op_id) AS batch FROM ready r GROUP BY r.origin ORDER BY 1
    LOOP
        RETURN QUERY SELECT * FROM converge.apply_ops(p.batch, p.origin, false);
    END LOOP;
END $$;
COMMENT ON FUNCTION converge.retry_pending() IS 'Apply every pending op whose deps are all applied (apply_batch does this first; also useful after a repair).';

CREATE FUNCTION converge.apply_ops(ops converge.op[], origin text, top_level boolean)
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    checks   converge.op_check[];
    bad      converge.op_check[];
    dup      converge.op_check[];
    fresh    converge.op_check[];
    blocked  bigint[];
    res      record;
    a        text;
    p        record;
    pc       converge.op_check;
BEGIN
    -- 1. Validate every envelope and delta, without raising.
    SELECT coalesce(array_agg(c ORDER BY (c).n), '{}') INTO checks FROM (
        SELECT ROW(ROW(x.op_id, x.actor, x.target_table, x.target_key, x.target_column, x.schema_version, x.epoch,
                       x.deps, x.delta, x.signature)::converge.op,
                   x.n, i.a, i.c, t.rel, r.key_columns,
                   CASE WHEN x.target_column = '' THEN 'row' ELSE r.crdt_columns ->> x.target_column END,
                   CASE
                       WHEN i.a IS NULL THEN 'invalid_op_id'
                       WHEN x.actor IS DISTINCT FROM i.a THEN 'actor_mismatch'
                       WHEN x.schema_version IS DISTINCT FROM 1 THEN 'unsupported_schema_version'
                       WHEN EXISTS (SELECT 1 FROM unnest(x.deps) d WHERE converge.op_id_actor(d) IS NULL) THEN 'invalid_deps'
                       WHEN t.rel IS NULL THEN 'unknown_table'
                       WHEN r.table_name IS NULL THEN 'not_replicated'
                       WHEN x.target_column = '' THEN
                           CASE WHEN x.target_key IS NULL OR jsonb_typeof(x.target_key) <> 'object'
                                     OR NOT (x.target_key ?& r.key_columns) THEN 'invalid_key'
                                ELSE converge.delta_error('lwwmap', x.delta) END
                       WHEN r.crdt_columns ->> x.target_column IS NULL THEN
                           CASE WHEN EXISTS (SELECT 1 FROM pg_attribute pa WHERE pa.attrelid = t.rel AND pa.attname = x.target_column
                                                AND pa.attnum > 0 AND NOT pa.attisdropped)
                                THEN 'not_crdt_column' ELSE 'unknown_column' END
                       WHEN x.target_key IS NULL OR jsonb_typeof(x.target_key) <> 'object'
                            OR NOT (x.target_key ?& r.key_columns) THEN 'invalid_key'
                       ELSE converge.delta_error(r.crdt_columns ->> x.target_column, x.delta)
                   END)::converge.op_check AS c
          FROM unnest(ops) WITH ORDINALITY x(op_id, actor, target_table, target_key, target_column, schema_version,
                                             epoch, deps, delta, signature, n)
          CROSS JOIN LATERAL (SELECT converge.op_id_actor(x.op_id) AS a, converge.op_id_counter(x.op_id) AS c) i
          CROSS JOIN LATERAL (SELECT CASE WHEN x.target_table ~ '^[^.]+(\.[^.]+)?$' THEN to_regclass(x.target_table) END AS rel) t
          LEFT JOIN converge.replicated r ON r.table_name = t.rel) s;

    SELECT coalesce(array_agg(c ORDER BY (c).n), '{}') INTO bad FROM unnest(checks) c WHERE (c).bad IS NOT NULL;
    PERFORM converge.log_ops(bad, 'rejected', origin);
    RETURN QUERY SELECT (c.op).op_id, 'rejected'::text, c.bad FROM unnest(bad) c ORDER BY c.n;

    -- 2. Duplicates: applied already, waiting in pending, or earlier in this batch.
    SELECT coalesce(array_agg(s.chk ORDER BY (s.chk).n) FILTER (WHERE s.is_dup), '{}'),
           coalesce(array_agg(s.chk ORDER BY (s.chk).n) FILTER (WHERE NOT s.is_dup), '{}')
      INTO dup, fresh
      FROM (SELECT c AS chk,
                   (row_number() OVER (PARTITION BY c.actor, c.counter ORDER BY c.n) > 1
                    OR EXISTS (SELECT 1 FROM converge.op_log l WHERE l.actor = c.actor AND l.counter = c.counter AND l.outcome = 'applied')
                    OR EXISTS (SELECT 1 FROM converge.pending q WHERE q.op_id = (c.op).op_id)) AS is_dup
              FROM unnest(checks) c WHERE c.bad IS NULL) s;
    PERFORM converge.log_ops(dup, 'duplicate', origin);
    RETURN QUERY SELECT (c.op).op_id, 'duplicate'::text, NULL::text FROM unnest(dup) c ORDER BY c.n;

    -- 3. Ops whose deps are missing (not applied here, not in this batch), and
    --    ops that depend on those, wait in pending.
    blocked := converge.blocked_ops(fresh);
    -- Two sessions can race on an op D: one applying D, one buffering a child
    -- of D because D is not visible yet. Both lock D (sorted, before any row
    -- lock, so no deadlock), and the second re-checks after the first commits.
    -- Only the top-level call locks: the pass over pending ops that this
    -- batch unblocks takes no further locks (that would break the order).
    -- A child buffered while its parent is applied from pending by another
    -- session is picked up by the next batch (retry_pending).
    -- Locks are on 64 hash buckets (bounded per transaction): appliers take
    -- theirs shared and do not block each other; a session about to buffer
    -- on a missing dep takes that dep's bucket exclusive.
    PERFORM CASE WHEN z.excl THEN pg_advisory_xact_lock(7231, z.b) ELSE pg_advisory_xact_lock_shared(7231, z.b) END
       FROM (SELECT y.b, bool_or(y.excl) AS excl
               FROM (SELECT hashtext((c.op).op_id) & 63 AS b, false AS excl FROM unnest(fresh) c
                     UNION ALL
                     SELECT hashtext(d) & 63, true FROM unnest(fresh) c, unnest(coalesce((c.op).deps, '{}')) d
                      WHERE c.n = ANY (blocked)) y
              GROUP BY y.b ORDER BY y.b) z
      WHERE top_level;
    IF cardinality(blocked) > 0 THEN
        blocked := converge.blocked_ops(fresh);
    END IF;
    FOR p IN SELECT c, ARRAY(SELECT d FROM unnest(coalesce((c.op).deps, '{}')) d WHERE NOT converge.is_applied(d) ORDER BY d) AS miss
               FROM unnest(fresh) c WHERE c.n = ANY (blocked)
              ORDER BY (c.op).op_id LOOP  -- a fixed order: concurrent batches take pending keys alike
        pc := p.c;
        pc.bad := 'missing ' || array_to_string(p.miss, ', ');
        INSERT INTO converge.pending (op_id, op, missing, origin) VALUES ((pc.op).op_id, pc.op, p.miss, origin)
            ON CONFLICT DO NOTHING;
        PERFORM converge.log_ops(ARRAY[pc], 'buffered', origin);
        RETURN QUERY SELECT (pc.op).op_id, 'buffered'::text, pc.bad;
    END LOOP;

    -- 4. Everything else: through the dedupe gate, then merged.
    SELECT * INTO res FROM converge.apply_checked(
        ARRAY(SELECT c FROM unnest(fresh) c WHERE NOT c.n = ANY (blocked) ORDER BY c.n), origin);
    PERFORM converge.log_ops(res.lost, 'duplicate', origin);
    RETURN QUERY SELECT (c.op).op_id, 'duplicate'::text, NULL::text FROM unnest(res.lost) c ORDER BY c.n;
    RETURN QUERY SELECT (c.op).op_id, 'applied'::text, NULL::text FROM unnest(res.won) c ORDER BY c.n;
    FOR a IN SELECT DISTINCT c.actor FROM unnest(res.won) c ORDER BY 1 LOOP
        PERFORM converge.advance_frontier(a);
    END LOOP;

    -- 5. Pending ops whose deps are now all applied go through the same path
    --    (any of them, not only those waiting for this batch: self-healing).
    IF cardinality(res.won) > 0 THEN
        RETURN QUERY SELECT * FROM converge.retry_pending();
    END IF;
END $$;
COMMENT ON FUNCTION converge.apply_ops(converge.op[], text, boolean) IS 'Internal: the body of apply_batch.';

CREATE FUNCTION converge.apply_batch(ops converge.op[], origin text DEFAULT 'client')
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE sql AS $$
    -- First ops left pending although their deps are applied (see
    -- apply_ops), then the batch.
    SELECT * FROM converge.retry_pending()
    UNION ALL
    SELECT * FROM converge.apply_ops(ops, origin, true)
$$;
COMMENT ON FUNCTION converge.apply_batch(converge.op[], text) IS 'Apply a batch of ops: validate, deduplicate, buffer ops with missing deps, merge the rest set-wise. One row per op decided (an op buffered and then applied in the same call shows twice). Never aborts the batch for a bad op.';

CREATE FUNCTION converge.apply(op converge.op, origin text DEFAULT 'client')
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE sql AS $$ SELECT * FROM converge.apply_batch(ARRAY[op], origin) $$;
COMMENT ON FUNCTION converge.apply(converge.op, text) IS 'Apply one op (see apply_batch): validate, deduplicate, check deps (buffer if missing), merge into the target row. One row per op decided, including ops it unblocked.';

CREATE FUNCTION converge.replay(replay_op_id text)
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE o converge.op;
BEGIN
    SELECT l.op_id, l.actor, l.target_table, l.target_key, l.target_column, l.schema_version, l.epoch, l.deps,
           l.delta, l.signature INTO o
      FROM converge.op_log l WHERE l.op_id = replay_op_id AND l.outcome IN ('rejected', 'quarantined')
     ORDER BY l.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no rejected or quarantined op with op_id %', replay_op_id USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY SELECT * FROM converge.apply_batch(ARRAY[o], 'replay');
END $$;
COMMENT ON FUNCTION converge.replay(text) IS 'Apply a rejected or quarantined op again (after a repair); the log keeps both outcomes.';

CREATE FUNCTION converge.frontier() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_object_agg(actor, contiguous ORDER BY actor), '{}') FROM converge.actor_frontier WHERE contiguous > 0
$$;
COMMENT ON FUNCTION converge.frontier() IS 'This node''s version vector: {actor: highest counter such that every op 1..counter of that actor is applied here}.';

CREATE FUNCTION converge.changes_since(frontier jsonb)
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
    -- Log order is apply order, and an op is applied only after its deps.
    RETURN QUERY
        SELECT l.op_id, l.actor, l.target_table, l.target_key, l.target_column, l.schema_version, l.epoch,
               l.deps, l.delta, l.signature
          FROM converge.op_log l
         WHERE l.outcome = 'applied' AND l.counter > coalesce((frontier ->> l.actor)::bigint, 0)
         ORDER BY l.seq;
END $$;
COMMENT ON FUNCTION converge.changes_since(jsonb) IS 'The applied ops a caller at this frontier lacks, in an order that respects deps. 55000 if the frontier predates a compaction (rejoin from converge.snapshot).';

CREATE FUNCTION converge.snapshot(tbl regclass) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE rows jsonb;
BEGIN
    EXECUTE format('SELECT coalesce(jsonb_agg(to_jsonb(t)), ''[]'') FROM %s t', tbl) INTO rows;
    RETURN jsonb_build_object('table', tbl::text, 'frontier', converge.frontier(), 'rows', rows);
END $$;
COMMENT ON FUNCTION converge.snapshot(regclass) IS 'Every row of a table (CRDT columns as their full-state text) with the frontier it reflects; a client rejoins from it.';

-- Record local changes of replicated tables as ops of this node: one op per
-- changed CRDT column (its delta), and a row op (target_column '') when the
-- row is inserted or deleted or a non-CRDT column changes.
CREATE FUNCTION converge.record_local_ops() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r     converge.replicated;
    col   text;
    typ   text;
    d     bytea;
    empty boolean;
    key   jsonb;
    c     bigint;
    me    text;
    tname text := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    nnew  jsonb := '{}';
    nold  jsonb := '{}';
    rs    converge.row_state;
    clk   converge.lwwmap;
    k     text;
    stash jsonb;
    v     text;
    gone  jsonb := '{}';
    logged boolean := false;
BEGIN
    IF current_setting('converge.applying', true) = 'on' THEN
        RETURN NULL;  -- the change came from converge.apply, which logged the op itself
    END IF;
    SELECT * INTO r FROM converge.replicated WHERE table_name = TG_RELID;
    me := converge.node();
    IF me IS NULL THEN
        RAISE EXCEPTION 'converge node identity is not set' USING ERRCODE = '55000',
            HINT = 'Run SELECT converge.set_node(''<name>'') once in this database.';
    END IF;
    IF TG_OP = 'DELETE' THEN
        SELECT jsonb_object_agg(kc, to_jsonb(OLD) -> kc) INTO key FROM unnest(r.key_columns) kc;
    ELSE
        SELECT jsonb_object_agg(kc, to_jsonb(NEW) -> kc) INTO key FROM unnest(r.key_columns) kc;
    END IF;
    IF TG_OP = 'UPDATE' AND key IS DISTINCT FROM (SELECT jsonb_object_agg(kc, to_jsonb(OLD) -> kc) FROM unnest(r.key_columns) kc) THEN
        RAISE EXCEPTION 'the primary key of replicated table % cannot be changed', TG_RELID::regclass
            USING ERRCODE = '0A000', HINT = 'Delete the row and insert it with the new key.';
    END IF;
    IF TG_OP <> 'DELETE' THEN
        FOR col, typ IN SELECT * FROM jsonb_each_text(r.crdt_columns) LOOP
            IF TG_OP = 'INSERT' THEN
                EXECUTE format('SELECT x::bytea, x OPERATOR(converge.=) ''{}''::converge.%2$I
                                  FROM converge.delta(($1).%1$I, NULL::converge.%2$I) x', col, typ)
                    INTO d, empty USING NEW;
            ELSE
                EXECUTE format('SELECT x::bytea, x OPERATOR(converge.=) ''{}''::converge.%2$I
                                  FROM converge.delta(($1).%1$I, ($2).%1$I) x', col, typ)
                    INTO d, empty USING NEW, OLD;
            END IF;
            CONTINUE WHEN d IS NULL OR empty;
            INSERT INTO converge.local_op_counter AS l VALUES (true, 1)
                ON CONFLICT (only_row) DO UPDATE SET counter = l.counter + 1 RETURNING l.counter INTO c;
            INSERT INTO converge.op_log (op_id, actor, counter, target_table, target_key, target_column, schema_version,
                                         epoch, deps, delta, outcome, origin)
            VALUES (me || ':' || c, me, c, tname, key, col, 1, 0, '{}', d, 'applied', 'local');
            logged := true;
        END LOOP;
    END IF;
    -- The row: liveness and the non-CRDT columns, last writer wins.
    IF cardinality(r.other_columns) > 0 THEN
        IF TG_OP <> 'DELETE' THEN
            EXECUTE 'SELECT jsonb_build_object(' || r.row_expr || ')' INTO nnew USING NEW;
        END IF;
        IF TG_OP = 'UPDATE' THEN
            EXECUTE 'SELECT jsonb_build_object(' || r.row_expr || ')' INTO nold USING OLD;
        END IF;
    END IF;
    IF TG_OP = 'UPDATE' AND nnew = nold THEN
        IF logged THEN
            PERFORM converge.advance_frontier(me);
        END IF;
        RETURN NULL;
    END IF;
    SELECT * INTO rs FROM converge.row_state s WHERE s.tbl = TG_RELID AND s.target_key = key FOR UPDATE;
    clk := coalesce(rs.clock, '{}');
    stash := coalesce(rs.stash, '{}');
    IF TG_OP = 'DELETE' THEN
        clk := converge.put(clk, '$live', 'false');
        -- The row is gone: its CRDT state moves to the tombstone.
        FOR col IN SELECT jsonb_object_keys(r.crdt_columns) LOOP
            EXECUTE format('SELECT ($1).%I::text', col) INTO v USING OLD;
            IF v IS NOT NULL THEN
                gone := gone || jsonb_build_object(col, v);
            END IF;
        END LOOP;
        stash := converge.merge_stash(stash, gone, r.crdt_columns);
    ELSE
        FOR k IN SELECT e.key FROM jsonb_each(nnew) e WHERE e.value IS DISTINCT FROM nold -> e.key OR TG_OP = 'INSERT' LOOP
            clk := converge.put(clk, k, nnew -> k);
        END LOOP;
        IF TG_OP = 'INSERT' THEN
            clk := converge.put(clk, '$live', 'true');
            IF stash <> '{}' THEN
                -- The key comes back from a tombstone: it resumes the CRDT
                -- state the tombstone kept (every node does the same).
                PERFORM set_config('converge.applying', 'on', true);
                FOR col IN SELECT jsonb_object_keys(stash) LOOP
                    EXECUTE format('UPDATE %1$s t SET %2$I = converge.merge(coalesce(t.%2$I, ''{}''), $2::converge.%3$I)
                                      FROM jsonb_populate_record(NULL::%1$s, $1) v WHERE %4$s',
                                   TG_RELID::regclass, col, r.crdt_columns ->> col, converge.key_match(r.key_columns))
                        USING key, stash ->> col;
                END LOOP;
                PERFORM set_config('converge.applying', 'off', true);
                stash := '{}';
            END IF;
        END IF;
    END IF;
    INSERT INTO converge.local_op_counter AS l VALUES (true, 1)
        ON CONFLICT (only_row) DO UPDATE SET counter = l.counter + 1 RETURNING l.counter INTO c;
    INSERT INTO converge.op_log (op_id, actor, counter, target_table, target_key, target_column, schema_version,
                                 epoch, deps, delta, outcome, origin)
    VALUES (me || ':' || c, me, c, tname, key, '', 1, 0, '{}',
            converge.delta(clk, coalesce(rs.clock, '{}'))::bytea, 'applied', 'local');
    INSERT INTO converge.row_state AS s (tbl, target_key, clock, live, stash)
    VALUES (TG_RELID, key, clk, TG_OP <> 'DELETE', stash)
    ON CONFLICT (tbl, target_key) DO UPDATE SET clock = EXCLUDED.clock, live = EXCLUDED.live, stash = EXCLUDED.stash;
    PERFORM converge.advance_frontier(me);
    RETURN NULL;
END $$;

CREATE FUNCTION converge.replicate(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    keys  text[];
    crdt  jsonb;
    other text[];
    expr  text;
BEGIN
    SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))
      INTO keys
      FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = tbl AND i.indisprimary;
    IF keys IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key', tbl USING ERRCODE = '55000',
            HINT = 'converge replicates rows by primary key; add one first.';
    END IF;
    SELECT coalesce(jsonb_object_agg(a.attname, t.typname), '{}') INTO crdt
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
       AND t.typnamespace = 'converge'::regnamespace
       AND t.typname IN ('gcounter', 'pncounter', 'bcounter', 'gset', 'orset', 'lwwreg', 'mvreg', 'lwwmap', 'ormap');
    SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}'),
           coalesce(string_agg(format('%L, ($1).%I', a.attname, a.attname), ', ' ORDER BY a.attnum), '')
      INTO other, expr
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
       AND NOT a.attname = ANY (keys) AND NOT crdt ? a.attname;
    INSERT INTO converge.replicated (table_name, key_columns, crdt_columns, other_columns, row_expr)
    VALUES (tbl, keys, crdt, other, expr)
        ON CONFLICT (table_name) DO UPDATE SET key_columns = EXCLUDED.key_columns, crdt_columns = EXCLUDED.crdt_columns,
                                               other_columns = EXCLUDED.other_columns, row_expr = EXCLUDED.row_expr;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'converge_record_ops') THEN
        EXECUTE format('CREATE TRIGGER converge_record_ops AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION converge.record_local_ops()', tbl);
    END IF;
END $$;
COMMENT ON FUNCTION converge.replicate(regclass) IS 'Mark a table (with a primary key) for the op log and replication: every later change to its CRDT columns, and every row insert, delete and change of its other columns (last writer wins), is recorded as an op of this node. Run again after changing its columns.';

COMMENT ON FUNCTION converge.advance_frontier(text) IS 'Internal: move an actor''s contiguous frontier past every applied counter.';
COMMENT ON FUNCTION converge.record_local_ops() IS 'Trigger of replicated tables: records each local change of a CRDT column, and each row insert, delete or change of other columns, as an op of this node.';
