SET search_path = public, converge;
SELECT incr(NULL::pncounter, 5) AS s, value(decr(incr(NULL::pncounter, 5), 8));
SELECT value(incr(NULL::pncounter, -4)) AS negative_incr, value(decr(NULL::pncounter, -4)) AS negative_decr;
SELECT '{}'::pncounter, value('{}'::pncounter);
-- Two nodes, merged in both orders.
WITH v(a, b) AS (SELECT decr(incr(NULL::pncounter, 10), 3), '{"p":{"dublin":4},"n":{"dublin":9}}'::pncounter)
SELECT value(a || b), (a || b) = (b || a) AS commutative, (a || a) = a AS idempotent FROM v;
SELECT delta('{"p":{"a":5},"n":{"a":2}}'::pncounter, '{"p":{"a":5},"n":{"a":1}}');
SELECT '{"p":{"a":5},"n":{"b":2}}'::pncounter::jsonb;
SELECT '{"p":{"a":5}}'::pncounter::bytea::pncounter;
SELECT r, value(merge_agg(c)) FROM (VALUES ('x', '{"p":{"a":5}}'::pncounter), ('x', '{"n":{"b":7}}'), ('y', NULL)) v(r, c)
 GROUP BY r ORDER BY r;
SELECT decr('{"n":{"madrid":9223372036854775807}}'::pncounter, 1);
SELECT value('{"p":{"a":9223372036854775807},"n":{"b":9223372036854775807}}'::pncounter);
SELECT '{"p":{"a":-1}}'::pncounter;
