SET search_path = public, converge;
-- Every function of gcounter.
SELECT incr(NULL::gcounter, 0) AS zero, value(incr(NULL::gcounter, 0));
SELECT value(incr(incr(NULL::gcounter, 5), 2));
SELECT '{}'::gcounter AS empty, value('{}'::gcounter);
-- A value made on another node (as its text would arrive) merges.
SELECT '{"counts":{"dublin":3}}'::gcounter || '{"counts":{"madrid":4}}'::gcounter AS merged;
SELECT merge('{"counts":{"dublin":3}}', '{"counts":{"dublin":5,"madrid":1}}'::gcounter);
-- Commutative, idempotent, NULL as empty.
WITH v(a, b) AS (SELECT '{"counts":{"dublin":3}}'::gcounter, incr(NULL::gcounter, 4))
SELECT merge(a, b) = merge(b, a) AS commutative, merge(a, a) = a AS idempotent,
       merge(a, NULL) = a AS null_is_empty, merge(NULL::gcounter, NULL) IS NULL AS null_null FROM v;
-- delta(new, old)
SELECT delta('{"counts":{"a":5,"b":2}}'::gcounter, '{"counts":{"a":3,"b":2}}'::gcounter);
SELECT delta('{"counts":{"a":5}}'::gcounter, NULL), delta(NULL::gcounter, '{}') IS NULL AS null_new;
-- jsonb, bytea, equality
SELECT '{"counts":{"a":5,"b":2}}'::gcounter::jsonb;
SELECT '{"counts":{"a":5}}'::gcounter::bytea;
SELECT '\x010100'::bytea::gcounter;
SELECT '{"counts":{"a":5}}'::gcounter = '{"counts":{"a":5}}', '{"counts":{"a":5}}'::gcounter <> '{"counts":{"a":6}}';
-- A table, UPDATE on a NULL column, merge_agg over GROUP BY.
CREATE TABLE page_views (page text, region text, views gcounter);
INSERT INTO page_views VALUES ('home', 'madrid', NULL), ('home', 'dublin', '{"counts":{"dublin":7}}'),
    ('about', 'madrid', NULL), ('about', 'virginia', '{"counts":{"virginia":2}}');
UPDATE page_views SET views = incr(views, 3) WHERE region = 'madrid';
SELECT page, merge_agg(views), value(merge_agg(views)) FROM page_views GROUP BY page ORDER BY page;
-- merge_agg equals the fold of merge, skips NULLs, is NULL over no rows.
SELECT merge_agg(views) = (SELECT '{"counts":{"dublin":7}}'::gcounter || '{"counts":{"madrid":3}}' || '{"counts":{"virginia":2}}')
  FROM page_views;
SELECT merge_agg(x) FROM (VALUES (NULL::gcounter), (NULL)) v(x);
SELECT merge_agg(views) FROM page_views WHERE false;
-- Errors: negative increment, overflow, NULL amount.
SELECT incr(NULL::gcounter, -1);
SELECT incr('{"counts":{"madrid":9223372036854775807}}'::gcounter, 1);
SELECT value('{"counts":{"a":9223372036854775807,"b":1}}'::gcounter);
SELECT incr(NULL::gcounter, NULL);
DROP TABLE page_views;
