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
