SET search_path = public, converge;
-- incr grants rights to this node; decr spends them.
SELECT value(c), rights(c), rights(c, 'madrid'), rights(c, 'dublin') FROM (SELECT incr(NULL::bcounter, 10) c) s;
SELECT value(decr(incr(NULL::bcounter, 10), 4)), rights(decr(incr(NULL::bcounter, 10), 4));
-- Transfer moves rights; the value does not change.
SELECT transfer(incr(NULL::bcounter, 10), 'dublin', 6) AS t;
SELECT value(t), rights(t), rights(t, 'dublin') FROM (SELECT transfer(incr(NULL::bcounter, 10), 'dublin', 6) t) s;
-- Dublin spends the rights it was given (its state as it would arrive here).
WITH here AS (SELECT transfer(incr(NULL::bcounter, 10), 'dublin', 6) AS c),
     there AS (SELECT '{"p":{"madrid":10},"n":{"dublin":5},"t":{"madrid":{"dublin":6}}}'::bcounter AS c)
SELECT value(here.c || there.c), rights(here.c || there.c), rights(here.c || there.c, 'dublin'),
       (here.c || there.c) = (there.c || here.c) AS commutative
  FROM here, there;
SELECT delta('{"p":{"a":5},"t":{"a":{"b":2}}}'::bcounter, '{"p":{"a":5}}');
SELECT '{"p":{"a":5},"n":{"a":2}}'::bcounter::jsonb;
SELECT value(merge_agg(c)) FROM (VALUES ('{"p":{"a":5}}'::bcounter), ('{"p":{"a":5},"n":{"a":1}}'), ('{"p":{"b":2}}')) v(c);
-- Spending beyond this node's rights fails with 55000 and says how many it holds.
\set VERBOSITY sqlstate
SELECT decr(incr(NULL::bcounter, 5), 6);
SELECT decr('{"p":{"dublin":100}}'::bcounter, 1);
SELECT transfer(incr(NULL::bcounter, 5), 'dublin', 6);
SELECT transfer(incr(NULL::bcounter, 5), 'madrid', 1);
SELECT decr(NULL::bcounter, -1);
\set VERBOSITY default
SELECT decr(incr(NULL::bcounter, 5), 6);
SELECT transfer(NULL::bcounter, 'dublin', 1);
SELECT '{"t":{"a":{"a":1}}}'::bcounter;
