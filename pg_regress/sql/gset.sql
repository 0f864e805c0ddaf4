SET search_path = public, converge;
SELECT add(add(add(NULL::gset, 'b'), 'a'), 'b') AS s;
SELECT elements(s), contains(s, 'a'), contains(s, 'z'), size(s) FROM (SELECT add(add(NULL::gset, 'b'), 'a') s) v;
SELECT '{}'::gset, size('{}'::gset), elements('{}'::gset);
WITH v(a, b) AS (SELECT add(NULL::gset, 'x'), '{"elements":["y","x"]}'::gset)
SELECT a || b, (a || b) = (b || a) AS commutative, (a || a) = a AS idempotent FROM v;
SELECT delta('{"elements":["a","b","c"]}'::gset, '{"elements":["b"]}');
SELECT '{"elements":["b","a"]}'::gset::jsonb;
SELECT g, merge_agg(s) FROM (VALUES (1, '{"elements":["a"]}'::gset), (1, '{"elements":["b"]}'), (2, '{"elements":["c"]}')) v(g, s)
 GROUP BY g ORDER BY g;
SELECT add(NULL::gset, NULL);
SELECT '{"elements":"a"}'::gset;
SELECT '{"elements":["a"]'::gset;
