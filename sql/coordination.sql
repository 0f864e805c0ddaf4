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
