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
    marked_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE converge.replicated IS 'Tables marked with converge.replicate(): their CRDT column changes are recorded as ops.';

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
INSERT INTO converge.local_op_counter DEFAULT VALUES;

SELECT pg_catalog.pg_extension_config_dump('converge.replicated', '');
SELECT pg_catalog.pg_extension_config_dump('converge.op_log', '');
SELECT pg_catalog.pg_extension_config_dump('converge.op_log_seq_seq', '');
SELECT pg_catalog.pg_extension_config_dump('converge.pending', '');
SELECT pg_catalog.pg_extension_config_dump('converge.actor_frontier', '');
SELECT pg_catalog.pg_extension_config_dump('converge.log_horizon', '');
SELECT pg_catalog.pg_extension_config_dump('converge.local_op_counter', '');

CREATE VIEW converge.op_outcomes AS
    SELECT outcome, reason, count(*) AS ops FROM converge.op_log GROUP BY outcome, reason;
COMMENT ON VIEW converge.op_outcomes IS 'converge.op_log counted by outcome and reason.';

CREATE VIEW converge.quarantine AS
    SELECT * FROM converge.op_log WHERE outcome IN ('rejected', 'quarantined')
       AND NOT EXISTS (SELECT 1 FROM converge.op_log a WHERE a.op_id = op_log.op_id AND a.outcome = 'applied');
COMMENT ON VIEW converge.quarantine IS 'Rejected and quarantined ops not applied since (kept, never dropped; converge.replay(op_id) retries one).';

-- Split 'actor:counter'; NULL when malformed.
CREATE FUNCTION converge.parse_op_id(op_id text, OUT actor text, OUT counter bigint)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT m[1], m[2]::bigint FROM regexp_match(op_id, '^([A-Za-z0-9_.-]{1,63}):([1-9][0-9]{0,17})$') m
$$;
COMMENT ON FUNCTION converge.parse_op_id(text) IS 'Split an op_id ''actor:counter'' into its parts (NULLs when malformed).';

CREATE FUNCTION converge.is_applied(op_id text) RETURNS boolean
LANGUAGE sql STABLE STRICT AS $$
    SELECT EXISTS (SELECT 1 FROM converge.op_log l, converge.parse_op_id($1) p
                    WHERE l.actor = p.actor AND l.counter = p.counter AND l.outcome = 'applied')
$$;
COMMENT ON FUNCTION converge.is_applied(text) IS 'Whether the op with this op_id has been applied here.';

-- Move an actor's contiguous frontier forward past every applied counter.
CREATE FUNCTION converge.advance_frontier(a text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE cur bigint;
BEGIN
    INSERT INTO converge.actor_frontier (actor) VALUES (a) ON CONFLICT DO NOTHING;
    SELECT contiguous INTO cur FROM converge.actor_frontier WHERE actor = a FOR UPDATE;
    WHILE EXISTS (SELECT 1 FROM converge.op_log WHERE actor = a AND counter = cur + 1 AND outcome = 'applied') LOOP
        cur := cur + 1;
    END LOOP;
    UPDATE converge.actor_frontier SET contiguous = cur WHERE actor = a AND contiguous < cur;
END $$;

CREATE FUNCTION converge.log_op(o converge.op, outcome text, reason text, origin text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO converge.op_log (op_id, actor, counter, target_table, target_key, target_column, schema_version,
                                 epoch, deps, delta, signature, outcome, reason, origin)
    SELECT o.op_id, coalesce(p.actor, o.actor, ''), coalesce(p.counter, 0), o.target_table, o.target_key,
           o.target_column, o.schema_version, o.epoch, o.deps, o.delta, o.signature, outcome, reason, origin
      FROM converge.parse_op_id(o.op_id) p
$$;

-- Merge one op's delta into its target row. Raises on anything invalid;
-- the caller turns that into a 'rejected' outcome.
CREATE FUNCTION converge.merge_op(o converge.op) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r       converge.replicated;
    rel     regclass;
    coltype text;
    cols    text;
    vals    text;
BEGIN
    rel := to_regclass(o.target_table);
    IF rel IS NULL THEN
        RAISE EXCEPTION 'unknown_table' USING ERRCODE = 'CV001';
    END IF;
    SELECT * INTO r FROM converge.replicated WHERE table_name = rel;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'not_replicated' USING ERRCODE = 'CV001';
    END IF;
    coltype := r.crdt_columns ->> o.target_column;
    IF coltype IS NULL THEN
        IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = rel AND attname = o.target_column AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'not_crdt_column' USING ERRCODE = 'CV001';
        END IF;
        RAISE EXCEPTION 'unknown_column' USING ERRCODE = 'CV001';
    END IF;
    IF o.target_key IS NULL OR jsonb_typeof(o.target_key) <> 'object'
       OR NOT (o.target_key ?& r.key_columns) THEN
        RAISE EXCEPTION 'invalid_key' USING ERRCODE = 'CV001';
    END IF;
    IF o.delta IS NULL THEN
        RAISE EXCEPTION 'invalid_delta' USING ERRCODE = 'CV001';
    END IF;
    SELECT string_agg(quote_ident(k), ', '), string_agg('k.' || quote_ident(k), ', ')
      INTO cols, vals FROM unnest(r.key_columns) k;
    -- Creates the row (other columns take their defaults) or merges into it.
    EXECUTE format(
        'INSERT INTO %1$s AS t (%2$s, %4$I) SELECT %3$s, $2::converge.%5$I FROM jsonb_populate_record(NULL::%1$s, $1) k
         ON CONFLICT (%2$s) DO UPDATE SET %4$I = converge.merge(t.%4$I, EXCLUDED.%4$I)',
        rel, cols, vals, o.target_column, coltype)
    USING o.target_key, o.delta;
END $$;

CREATE FUNCTION converge.validate_envelope(o converge.op) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE p record;
BEGIN
    SELECT * INTO p FROM converge.parse_op_id(o.op_id);
    IF o.op_id IS NULL OR p.actor IS NULL THEN RETURN 'invalid_op_id'; END IF;
    IF o.actor IS DISTINCT FROM p.actor THEN RETURN 'actor_mismatch'; END IF;
    IF o.schema_version IS DISTINCT FROM 1 THEN RETURN 'unsupported_schema_version'; END IF;
    IF o.deps IS NOT NULL AND EXISTS (SELECT 1 FROM unnest(o.deps) d WHERE (converge.parse_op_id(d)).actor IS NULL) THEN
        RETURN 'invalid_deps';
    END IF;
    RETURN NULL;
END $$;

-- Apply one op (and whatever pending ops it unblocks); one row per op decided.
CREATE FUNCTION converge.apply_one(o converge.op, origin text)
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    bad      text;
    p        record;
    missing  text[];
    won      boolean;
    unblocked converge.pending;
BEGIN
    bad := converge.validate_envelope(o);
    IF bad IS NOT NULL THEN
        PERFORM converge.log_op(o, 'rejected', bad, origin);
        RETURN QUERY SELECT o.op_id, 'rejected'::text, bad;
        RETURN;
    END IF;
    SELECT * INTO p FROM converge.parse_op_id(o.op_id);
    IF converge.is_applied(o.op_id) OR EXISTS (SELECT 1 FROM converge.pending q WHERE q.op_id = o.op_id) THEN
        PERFORM converge.log_op(o, 'duplicate', NULL, origin);
        RETURN QUERY SELECT o.op_id, 'duplicate'::text, NULL::text;
        RETURN;
    END IF;
    SELECT coalesce(array_agg(d ORDER BY d), '{}') INTO missing
      FROM unnest(coalesce(o.deps, '{}')) d WHERE NOT converge.is_applied(d);
    IF cardinality(missing) > 0 THEN
        INSERT INTO converge.pending (op_id, op, missing, origin) VALUES (o.op_id, o, missing, origin)
            ON CONFLICT DO NOTHING;
        PERFORM converge.log_op(o, 'buffered', 'missing ' || array_to_string(missing, ', '), origin);
        RETURN QUERY SELECT o.op_id, 'buffered'::text, 'missing ' || array_to_string(missing, ', ');
        RETURN;
    END IF;
    BEGIN
        -- The gate: whoever inserts the applied row first owns the op; a
        -- concurrent session waits here and then sees a conflict.
        INSERT INTO converge.op_log (op_id, actor, counter, target_table, target_key, target_column, schema_version,
                                     epoch, deps, delta, signature, outcome, origin)
        VALUES (o.op_id, p.actor, p.counter, o.target_table, o.target_key, o.target_column, o.schema_version,
                o.epoch, o.deps, o.delta, o.signature, 'applied', origin)
        ON CONFLICT (actor, counter) WHERE outcome = 'applied' DO NOTHING
        RETURNING true INTO won;
        IF won IS NULL THEN
            PERFORM converge.log_op(o, 'duplicate', NULL, origin);
            RETURN QUERY SELECT o.op_id, 'duplicate'::text, NULL::text;
            RETURN;
        END IF;
        PERFORM set_config('converge.applying', 'on', true);
        PERFORM converge.merge_op(o);
        PERFORM set_config('converge.applying', 'off', true);
    EXCEPTION WHEN OTHERS THEN
        PERFORM set_config('converge.applying', 'off', true);
        bad := CASE WHEN SQLSTATE = 'CV001' THEN SQLERRM
                    WHEN SQLSTATE IN ('22P02', '22P03') THEN 'invalid_delta: ' || SQLERRM
                    WHEN SQLSTATE = '54000' THEN 'too_large: ' || SQLERRM
                    ELSE 'error ' || SQLSTATE || ': ' || SQLERRM END;
        PERFORM converge.log_op(o, 'rejected', bad, origin);
        RETURN QUERY SELECT o.op_id, 'rejected'::text, bad;
        RETURN;
    END;
    PERFORM converge.advance_frontier(p.actor);
    RETURN QUERY SELECT o.op_id, 'applied'::text, NULL::text;
    -- Ops that waited for this one.
    FOR unblocked IN SELECT * FROM converge.pending q WHERE o.op_id = ANY (q.missing) ORDER BY q.received_at, q.op_id LOOP
        UPDATE converge.pending q SET missing = array_remove(q.missing, o.op_id) WHERE q.op_id = unblocked.op_id
            RETURNING q.missing INTO missing;
        IF cardinality(missing) = 0 THEN
            DELETE FROM converge.pending q WHERE q.op_id = unblocked.op_id;
            RETURN QUERY SELECT * FROM converge.apply_one(unblocked.op, unblocked.origin);
        END IF;
    END LOOP;
END $$;

CREATE FUNCTION converge.apply(op converge.op, origin text DEFAULT 'client')
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE sql AS $$ SELECT * FROM converge.apply_one(op, origin) $$;
COMMENT ON FUNCTION converge.apply(converge.op, text) IS 'Apply one op: authenticate, validate, deduplicate, check deps (buffer if missing), merge into the target row. One row per op decided (including ops it unblocked).';

CREATE FUNCTION converge.apply_batch(ops converge.op[], origin text DEFAULT 'client')
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE o converge.op;
BEGIN
    -- A fixed order (target row, then op_id) so concurrent batches lock rows
    -- in the same order and cannot deadlock; deps are honoured regardless,
    -- because an op that comes before its parent is buffered and applied
    -- as soon as the parent is.
    FOR o IN SELECT x.* FROM unnest(ops) x
              ORDER BY x.target_table, x.target_key::text, x.target_column, x.op_id LOOP
        RETURN QUERY SELECT * FROM converge.apply_one(o, origin);
    END LOOP;
END $$;
COMMENT ON FUNCTION converge.apply_batch(converge.op[], text) IS 'Apply a batch of ops; one row per op (op_id, outcome, reason). Never aborts the batch for a bad op.';

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
    RETURN QUERY SELECT * FROM converge.apply_one(o, 'replay');
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

-- Record local changes to CRDT columns as ops of this node.
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
BEGIN
    IF current_setting('converge.applying', true) = 'on' THEN
        RETURN NULL;  -- the change came from converge.apply, which logged the op itself
    END IF;
    SELECT * INTO r FROM converge.replicated WHERE table_name = TG_RELID;
    FOR col, typ IN SELECT * FROM jsonb_each_text(r.crdt_columns) LOOP
        IF TG_OP = 'INSERT' THEN
            EXECUTE format('SELECT converge.delta(($1).%1$I, NULL::converge.%2$I)::bytea, converge.delta(($1).%1$I, NULL::converge.%2$I) = ''{}''::converge.%2$I', col, typ)
                INTO d, empty USING NEW;
        ELSE
            EXECUTE format('SELECT converge.delta(($1).%1$I, ($2).%1$I)::bytea, converge.delta(($1).%1$I, ($2).%1$I) = ''{}''::converge.%2$I', col, typ)
                INTO d, empty USING NEW, OLD;
        END IF;
        CONTINUE WHEN d IS NULL OR empty;
        IF key IS NULL THEN
            SELECT jsonb_object_agg(k, to_jsonb(NEW) -> k) INTO key FROM unnest(r.key_columns) k;
            me := converge.node();
            IF me IS NULL THEN
                RAISE EXCEPTION 'converge node identity is not set' USING ERRCODE = '55000';
            END IF;
        END IF;
        UPDATE converge.local_op_counter SET counter = counter + 1 RETURNING counter INTO c;
        INSERT INTO converge.op_log (op_id, actor, counter, target_table, target_key, target_column, schema_version,
                                     epoch, deps, delta, outcome, origin)
        VALUES (me || ':' || c, me, c, TG_RELID::regclass::text, key, col, 1, 0, '{}', d, 'applied', 'local');
        PERFORM converge.advance_frontier(me);
    END LOOP;
    RETURN NULL;
END $$;

CREATE FUNCTION converge.replicate(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    keys text[];
    crdt jsonb;
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
    INSERT INTO converge.replicated (table_name, key_columns, crdt_columns) VALUES (tbl, keys, crdt)
        ON CONFLICT (table_name) DO UPDATE SET key_columns = EXCLUDED.key_columns, crdt_columns = EXCLUDED.crdt_columns;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'converge_record_ops') THEN
        EXECUTE format('CREATE TRIGGER converge_record_ops AFTER INSERT OR UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION converge.record_local_ops()', tbl);
    END IF;
END $$;
COMMENT ON FUNCTION converge.replicate(regclass) IS 'Mark a table (with a primary key) for the op log: every later change to its CRDT columns is recorded as an op of this node. Run again after adding CRDT columns.';

COMMENT ON FUNCTION converge.advance_frontier(text) IS 'Internal: move an actor''s contiguous frontier past every applied counter.';
COMMENT ON FUNCTION converge.log_op(converge.op, text, text, text) IS 'Internal: record an op outcome in converge.op_log.';
COMMENT ON FUNCTION converge.merge_op(converge.op) IS 'Internal: merge an op''s delta into its target row, creating the row when missing.';
COMMENT ON FUNCTION converge.validate_envelope(converge.op) IS 'Internal: the rejection reason for a malformed envelope, or NULL.';
COMMENT ON FUNCTION converge.apply_one(converge.op, text) IS 'Internal: apply one op and the pending ops it unblocks.';
COMMENT ON FUNCTION converge.record_local_ops() IS 'Trigger of replicated tables: records each local change of a CRDT column as an op of this node.';
