SET search_path = public, converge;
-- One map, three nested kinds.
CREATE TEMP TABLE om AS
SELECT assign(add(add(incr(incr(NULL::ormap, 'filters', 2), 'filters', 2), 'tags', 'pump'), 'tags', 'urgent'),
              'owner', '"ana"') AS m;
SELECT keys(m), get(m, 'filters') AS counter, get(m, 'tags') AS set, get(m, 'owner') AS register,
       get(m, 'nope') IS NULL AS absent, to_jsonb(m), m::jsonb = to_jsonb(m) AS cast_equal FROM om;
SELECT get(decr(m, 'filters', 5), 'filters'), get(remove(m, 'tags', 'pump'), 'tags'),
       get(remove(m, 'tags', 'absent'), 'tags') FROM om;
-- A key stays until it is removed, even when its set is empty.
SELECT keys(remove(m, 'tags', 'pump') ) FROM (SELECT add(NULL::ormap, 'tags', 'pump') m) v;
SELECT keys(remove(m, 'tags')), get(remove(m, 'tags'), 'tags') FROM om;
SELECT remove('{}'::ormap, 'absent') = '{}'::ormap AS remove_absent_is_noop;
-- Adding to a set at a key keeps what the key held, also elements another
-- node put there (dublin's 'seal', merged in before this node adds 'gasket').
SELECT get(add(m || '{"context":{"dublin":[[5,5]]},"entries":{"tags":{"kinds":[["dublin",5,"orset"]],"set":[["dublin",5,"seal"]]}}}',
               'tags', 'gasket'), 'tags') FROM om;
-- Removing one element keeps the others.
SELECT get(remove(add(add(NULL::ormap, 'b', 'x'), 'b', 'y'), 'b', 'x'), 'b');
-- Another kind's mutator on a key is an error (42804).
\set VERBOSITY sqlstate
SELECT incr(m, 'tags', 1) FROM om;
SELECT add(m, 'filters', 'x') FROM om;
SELECT assign(m, 'tags', '1') FROM om;
\set VERBOSITY default
SELECT incr(m, 'tags', 1) FROM om;
-- Observed-remove: dublin saw filters=4 (2+2 by madrid), removed the key;
-- meanwhile madrid added 3 more. The key survives with only the unseen 3.
CREATE TEMP TABLE om2 AS SELECT m AS before FROM om;
SELECT get(merged, 'filters') AS filters_after_remove, keys(merged)
  FROM (SELECT remove(before, 'filters') || incr(before, 'filters', 3) AS merged FROM om2) v;
-- Concurrent different kinds at one key: both survive, shown as a conflict.
WITH v(a, b) AS (SELECT incr(NULL::ormap, 'k', 1), '{"context":{"dublin":[[5,5]]},"entries":{"k":{"kinds":[["dublin",5,"orset"]],"set":[["dublin",5,"x"]]}}}'::ormap)
SELECT get(a || b, 'k'), to_jsonb(b || a), (a || b) = (b || a) AS commutative FROM v;
SELECT delta(incr(m, 'filters', 1), m) FROM (SELECT '{}'::ormap m) v;
SELECT to_jsonb(merge_agg(m)) FROM (SELECT m FROM om UNION ALL SELECT incr(NULL::ormap, 'other', 1)) v(m);
SELECT '{"entries":{"k":{}}}'::ormap;
SELECT '{"entries":{"k":{"kinds":[["a",1,"map"]]}},"context":{"a":[[1,1]]}}'::ormap;
