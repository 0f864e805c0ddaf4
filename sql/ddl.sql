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
