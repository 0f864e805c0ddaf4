-- Every object of the extension says what it is (COMMENT ON): functions,
-- aggregates, types, tables and views of schema converge.
SELECT p.oid::regprocedure AS uncommented_function
  FROM pg_proc p
 WHERE p.pronamespace = 'converge'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL
 ORDER BY 1::text;
SELECT t.oid::regtype AS uncommented_type
  FROM pg_type t
 WHERE t.typnamespace = 'converge'::regnamespace AND t.typcategory <> 'A'
   AND (t.typtype = 'b' OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
   AND obj_description(t.oid, 'pg_type') IS NULL
 ORDER BY 1::text;
SELECT c.oid::regclass AS uncommented_relation
  FROM pg_class c
 WHERE c.relnamespace = 'converge'::regnamespace AND c.relkind IN ('r', 'v')
   AND obj_description(c.oid, 'pg_class') IS NULL
 ORDER BY 1::text;
SELECT c.castsource::regtype AS uncommented_cast_from, c.casttarget::regtype AS to_type
  FROM pg_cast c
 WHERE EXISTS (SELECT 1 FROM pg_type t WHERE t.oid IN (c.castsource, c.casttarget) AND t.typnamespace = 'converge'::regnamespace)
   AND obj_description(c.oid, 'pg_cast') IS NULL
 ORDER BY 1::text, 2::text;
SELECT p.polname AS uncommented_policy
  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
 WHERE c.relnamespace = 'converge'::regnamespace AND obj_description(p.oid, 'pg_policy') IS NULL
 ORDER BY 1;
