SET search_path = public, converge;
SELECT elements(s), contains(s, 'a'), size(s) FROM (SELECT add(add(NULL::orset, 'b'), 'a') s) v;
SELECT elements(remove(add(add(NULL::orset, 'b'), 'a'), 'a'));
SELECT remove('{}'::orset, 'absent') = '{}'::orset AS remove_absent_is_noop;
-- Two values built from NULL in different statements never share a dot.
SELECT (SELECT add(NULL::orset, 'x')) <> (SELECT add(NULL::orset, 'x')) AS distinct_dots;
-- Add wins: dublin re-added 'a' concurrently with our remove of the 'a' we saw.
CREATE TEMP TABLE o AS SELECT '{"context":{"dublin":[[1,1]]},"entries":[["dublin",1,"a"]]}'::orset AS base;
SELECT elements(here || there), elements(there || here), (here || there) = (there || here) AS commutative
  FROM (SELECT remove(base, 'a') AS here,
               base || '{"context":{"dublin":[[7,7]]},"entries":[["dublin",7,"a"]]}'::orset AS there FROM o) v;
-- A remove of what was observed wins over the old add.
SELECT elements(remove(base, 'a') || base) FROM o;
SELECT delta(remove(base, 'a'), base) FROM o;
SELECT base::jsonb, base::bytea::orset = base FROM o;
SELECT elements(merge_agg(s)) FROM (VALUES ('{"context":{"a":[[1,1]]},"entries":[["a",1,"x"]]}'::orset),
                                           ('{"context":{"b":[[1,2]]},"entries":[["b",2,"y"]]}'), (NULL)) v(s);
-- Invalid states are refused: a dot that is not in the context, broken ranges.
SELECT '{"entries":[["a",1,"x"]]}'::orset;
SELECT '{"context":{"a":[[3,1]]}}'::orset;
SELECT '{"context":{"a":[[1,2],[3,4]]}}'::orset;
SELECT '{"context":{"a":[[0,1]]}}'::orset;
