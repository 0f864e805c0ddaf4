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
    PRIMARY KEY (table_name, column_name)
);
COMMENT ON TABLE converge.authority IS 'Per replicated table and column, the node that decides it (set with converge.set_authority on every node).';
SELECT pg_catalog.pg_extension_config_dump('converge.authority', '');
GRANT SELECT ON converge.authority TO PUBLIC;

CREATE VIEW converge.authorities AS
    SELECT format('%I.%I', n.nspname, c.relname) AS target_table, nullif(a.column_name, '') AS target_column,
           a.node, a.decide, a.removes_only
      FROM converge.authority a JOIN pg_class c ON c.oid = a.table_name JOIN pg_namespace n ON n.oid = c.relnamespace;
COMMENT ON VIEW converge.authorities IS 'The authorities set on this node: per table (target_column NULL) or column, the node that decides it.';
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
           SELECT 1 FROM pg_proc p WHERE p.oid = decide AND p.pronargs = 1
              AND p.proargtypes[0] = 'converge.requests'::regtype AND p.prorettype = 'jsonb'::regtype AND p.prokind = 'f') THEN
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
        IF removes_only THEN
            RAISE EXCEPTION 'removes_only is not supported yet' USING ERRCODE = '0A000',
                DETAIL = 'Set the column''s authority without it: every change then goes through converge.request.';
        END IF;
        IF ty IS NULL THEN
            -- A constant default can be carried by an insert made anywhere.
            SELECT pg_get_expr(d.adbin, d.adrelid) INTO expr
              FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
             WHERE d.adrelid = tbl AND a.attname = col
               AND NOT EXISTS (SELECT 1 FROM pg_depend p WHERE p.classid = 'pg_attrdef'::regclass AND p.objid = d.oid
                                  AND p.refclassid = 'pg_proc'::regclass
                                  AND (SELECT provolatile FROM pg_proc WHERE oid = p.refobjid) = 'v');
            IF expr IS NOT NULL THEN
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
           default_value = EXCLUDED.default_value;
END $$;
REVOKE ALL ON FUNCTION converge.store_authority(regclass, text, text, regprocedure, boolean) FROM PUBLIC;
COMMENT ON FUNCTION converge.store_authority(regclass, text, text, regprocedure, boolean) IS 'Internal (converge.set_authority): validate and record an authority.';

CREATE FUNCTION converge.set_authority(tbl regclass, col text, node text, decide regprocedure DEFAULT NULL,
                                       removes_only boolean DEFAULT false)
RETURNS void LANGUAGE sql AS $$ SELECT converge.set_authority_on(tbl::oid, col, node, decide::oid, removes_only) $$;
COMMENT ON FUNCTION converge.set_authority_on(oid, text, text, oid, boolean) IS 'Internal: the body of converge.set_authority (checks that the caller owns the table).';
COMMENT ON FUNCTION converge.set_authority(regclass, text, text, regprocedure, boolean) IS 'Name the node that decides a column of a replicated table (col NULL: the table''s authority). Run it on every node, as the table''s owner. Elsewhere a local change of that column fails with 42501, and an op of it made by another actor is rejected with not_authority. A second call for the same table and column replaces the first.';

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
    FOR a IN SELECT x.column_name, x.node, x.default_value FROM converge.authority x
              WHERE x.table_name = TG_RELID AND x.column_name <> '' AND x.node IS DISTINCT FROM me LOOP
        IF (TG_OP = 'UPDATE' AND (n -> a.column_name) IS DISTINCT FROM (o -> a.column_name))
           OR (TG_OP = 'INSERT' AND (n -> a.column_name) <> 'null'
               AND (n -> a.column_name) IS DISTINCT FROM a.default_value) THEN
            RAISE EXCEPTION 'column "%" of % is decided by node "%"', a.column_name, TG_RELID::regclass, a.node
                USING ERRCODE = '42501',
                      HINT = CASE WHEN (SELECT r.crdt_columns ? a.column_name FROM converge.replicated r WHERE r.table_name = TG_RELID)
                                  THEN format('Change it on node "%s".', a.node)
                                  ELSE format('Ask node "%s" with converge.request(%L, key, %L, value).', a.node,
                                              TG_RELID::regclass::text, a.column_name) END;
        END IF;
    END LOOP;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION converge.guard_authority() IS 'Trigger of tables with authority columns: a local change of such a column on a node other than its authority fails with 42501.';

-- Requests: a change of an authority column asked for from any node. A
-- request is a row of this replicated table (so it travels as ops, like
-- every change); the authority decides it once, at the commit that brings
-- it there (src/requests.rs), and its decision is written on that row as
-- an ordinary local change of the authority.
-- Columns may be NULL: a node can receive the authority's decision (an
-- update of the row) before the request itself (an insert from another
-- node), and the row is made from what arrived first.
CREATE TABLE converge.requests (
    request_id      text PRIMARY KEY,
    target_table    text,
    target_key      jsonb,
    target_column   text,
    value           jsonb,
    idempotency_key text,
    requested_by    text,
    requested_at    timestamptz,
    status          text DEFAULT 'pending' CHECK (status IN ('pending', 'granted', 'refused')),
    decision        jsonb,
    reason          text,
    decided_at      timestamptz
);
CREATE INDEX requests_idempotency ON converge.requests (idempotency_key) WHERE idempotency_key IS NOT NULL;
COMMENT ON TABLE converge.requests IS 'Requests to change authority columns (converge.request): pending until the authority decides, then granted with the columns it wrote, or refused with a reason. The same rows on every node once synced.';
GRANT SELECT ON converge.requests TO PUBLIC;

-- Unique allocation: numbers served by one node per allocator, one per
-- idempotency key forever. Allocations replicate as rows too.
CREATE TABLE converge.allocators (
    name  text PRIMARY KEY,
    node  text NOT NULL,
    start bigint NOT NULL DEFAULT 1
);
COMMENT ON TABLE converge.allocators IS 'Per allocator, the node that serves converge.allocate and its first number (set with converge.set_allocator on every node).';
GRANT SELECT ON converge.allocators TO PUBLIC;

CREATE TABLE converge.allocations (
    name            text NOT NULL,
    idempotency_key text NOT NULL,
    value           bigint NOT NULL,
    allocated_at    timestamptz NOT NULL,
    allocated_by    text NOT NULL,
    PRIMARY KEY (name, idempotency_key)
);
CREATE UNIQUE INDEX allocations_value ON converge.allocations (name, value);
COMMENT ON TABLE converge.allocations IS 'Every number converge.allocate has handed out: per allocator and idempotency key, its value. The same rows on every node once synced.';
GRANT SELECT ON converge.allocations TO PUBLIC;

SELECT converge.replicate('converge.requests');
SELECT converge.replicate('converge.allocations');
SELECT pg_catalog.pg_extension_config_dump('converge.requests', '');
SELECT pg_catalog.pg_extension_config_dump('converge.allocators', '');
SELECT pg_catalog.pg_extension_config_dump('converge.allocations', '');
-- CREATE EXTENSION marks these two itself: a restore must not add them again.
SELECT pg_catalog.pg_extension_config_dump('converge.replicated',
    'WHERE table_name NOT IN (''converge.requests''::regclass, ''converge.allocations''::regclass)');

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
COMMENT ON FUNCTION converge.set_allocator(text, text, bigint) IS 'Name the node that serves an allocator, and its first number. Run it on every node (for the extension''s owner and roles it grants EXECUTE).';

CREATE FUNCTION converge.allocate(name text, idempotency_key text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, converge, pg_temp AS $$
DECLARE
    a  converge.allocators;
    v  bigint;
    me text := converge.node();
BEGIN
    IF name IS NULL OR idempotency_key IS NULL THEN
        RAISE EXCEPTION 'the allocator''s name and the idempotency key must not be NULL' USING ERRCODE = '22004';
    END IF;
    -- One allocation of an allocator at a time: a second one with the same
    -- key waits here, then finds the first one's number.
    SELECT * INTO a FROM converge.allocators x WHERE x.name = allocate.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no allocator named "%"', name USING ERRCODE = '42704',
            HINT = 'Create it on every node with converge.set_allocator.';
    END IF;
    IF a.node IS DISTINCT FROM me THEN
        RAISE EXCEPTION 'allocator "%" is served by node "%", not by this node (%)', name, a.node, coalesce(me, 'no identity')
            USING ERRCODE = '55000';
    END IF;
    SELECT x.value INTO v FROM converge.allocations x WHERE x.name = allocate.name AND x.idempotency_key = allocate.idempotency_key;
    IF FOUND THEN
        RETURN v;
    END IF;
    SELECT greatest(coalesce(max(x.value) + 1, a.start), a.start) INTO v FROM converge.allocations x WHERE x.name = allocate.name;
    INSERT INTO converge.allocations (name, idempotency_key, value, allocated_at, allocated_by)
    VALUES (allocate.name, allocate.idempotency_key, v, clock_timestamp(), me);
    RETURN v;
END $$;
COMMENT ON FUNCTION converge.allocate(text, text) IS 'The number of this idempotency key in an allocator: the same key gets the same number forever, different keys distinct increasing numbers. Served only on the allocator''s node (55000 elsewhere).';

CREATE FUNCTION converge.request(tbl regclass, key jsonb, col text, value jsonb, idempotency_key text DEFAULT NULL)
RETURNS text LANGUAGE sql AS $$ SELECT converge.request_on(tbl::oid, key, col, value, idempotency_key) $$;
COMMENT ON FUNCTION converge.request(regclass, jsonb, text, jsonb, text) IS 'Ask the authority of a column to change it on one row (needs UPDATE on the column). Returns the request''s id; with an idempotency key this node knows, the known request''s id. The authority decides once: as proposed, or through its decide function. See converge.requests.';
COMMENT ON FUNCTION converge.request_on(oid, jsonb, text, jsonb, text) IS 'Internal: the body of converge.request (checks the caller''s UPDATE right on the column).';
COMMENT ON FUNCTION converge.decide_requests() IS 'Trigger of converge.requests: on the authority, decide each new request once, at commit, in arrival order.';

-- Requests that arrived here from a peer, this node deciding them, in
-- arrival order: a decision made in the transaction that applies a peer's
-- ops would be filtered out of this node's stream with that transaction
-- (its replication origin), so the worker decides them right after, in a
-- transaction of its own (converge.decide_arrived).
CREATE TABLE converge.request_arrival (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id text NOT NULL UNIQUE
);
COMMENT ON TABLE converge.request_arrival IS 'Requests a peer brought that this node, their authority, has yet to decide (in arrival order).';
SELECT pg_catalog.pg_extension_config_dump('converge.request_arrival', '');
REVOKE ALL ON converge.request_arrival FROM PUBLIC;
REVOKE ALL ON FUNCTION converge.decide_arrived() FROM PUBLIC;
COMMENT ON FUNCTION converge.decide_arrived() IS 'Decide the requests peers brought to this node, their authority, in arrival order (the background worker does it after each batch; after converge.sync, call it yourself). Returns how many.';

CREATE CONSTRAINT TRIGGER converge_decide AFTER INSERT ON converge.requests
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION converge.decide_requests();
