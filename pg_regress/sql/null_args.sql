-- No function of the extension fails with an internal error (XX000) when
-- given NULL: every function that is not STRICT (it has an optional
-- argument) is called with NULL for every argument, as a superuser (who
-- may call them all), each in its own subtransaction. Each must return or
-- raise a clear error (22004 "... must not be NULL" and the like). A Rust
-- argument that is not an Option in such a function fails here.
SET search_path = public, converge;
CREATE TEMP TABLE null_call (fn text, sqlstate text);
DO $$
DECLARE
    f record;
    state text;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure::text AS fn,
               format('SELECT %s(%s)', p.oid::regproc,
                      (SELECT string_agg(format('NULL::%s', format_type(t, NULL)), ', ' ORDER BY i)
                         FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY a(t, i))) AS call
          FROM pg_proc p
         WHERE p.pronamespace = 'converge'::regnamespace AND p.prokind = 'f' AND NOT p.proisstrict
           AND p.pronargs > 0
           AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)
           -- (aggregate support functions: PostgreSQL calls them, never with a NULL state type)
           AND NOT 'internal'::regtype = ANY (p.proargtypes::oid[])
         ORDER BY 1
    LOOP
        state := 'ok';
        BEGIN
            EXECUTE f.call;
        EXCEPTION WHEN OTHERS THEN
            state := SQLSTATE;
        END;
        INSERT INTO null_call VALUES (f.fn, state);
    END LOOP;
END $$;
SELECT count(*) > 50 AS swept FROM null_call;
SELECT fn AS internal_error_on_null FROM null_call WHERE sqlstate LIKE 'XX%' ORDER BY 1;
