SET search_path = public, converge;
SELECT keys(m), get(m, 'a'), get(m, 'b'), get(m, 'zz'), to_jsonb(m), m::jsonb
  FROM (SELECT put(put(NULL::lwwmap, 'b', '"x"'), 'a', '1') m) v;
SELECT keys(remove(put(NULL::lwwmap, 'a', '1'), 'a')), get(remove(put(NULL::lwwmap, 'a', '1'), 'a'), 'a');
-- remove writes a tombstone even for an absent key...
SELECT remove('{}'::lwwmap, 'k') <> '{}'::lwwmap AS tombstone_written;
-- ...so it beats an older put made elsewhere, in either merge order.
WITH v(here, there) AS (SELECT remove('{}'::lwwmap, 'k'), '{"entries":{"k":[[1000,0,"dublin"],{"put":"old"}]}}'::lwwmap)
SELECT keys(here || there), keys(there || here) FROM v;
-- Per key the later write wins.
WITH v(a, b) AS (SELECT '{"entries":{"x":[[5,0,"a"],{"put":1}],"y":[[1,0,"a"],{"put":1}]}}'::lwwmap,
                        '{"entries":{"x":[[3,0,"b"],{"put":2}],"y":[[2,0,"b"],"del"]}}'::lwwmap)
SELECT to_jsonb(a || b), (a || b) = (b || a) AS commutative FROM v;
SELECT delta('{"entries":{"x":[[5,0,"a"],{"put":1}],"y":[[1,0,"a"],{"put":1}]}}'::lwwmap,
             '{"entries":{"y":[[1,0,"a"],{"put":1}]}}');
SELECT to_jsonb(merge_agg(m)) FROM (VALUES ('{"entries":{"x":[[5,0,"a"],{"put":1}]}}'::lwwmap),
                                           ('{"entries":{"z":[[5,0,"a"],{"put":null}]}}')) v(m);
SELECT put(NULL::lwwmap, NULL, '1');
SELECT '{"entries":{"x":[[5,0,"a"],{"set":1}]}}'::lwwmap;
