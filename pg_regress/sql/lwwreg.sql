SET search_path = public, converge;
SELECT value(assign(NULL::lwwreg, '{"b":1,"a":[1,2]}'));
SELECT value(assign(assign(NULL::lwwreg, '"first"'), '"second"')) AS later_write_wins;
SELECT value('{}'::lwwreg) IS NULL AS empty_is_null;
-- A write made here after seeing dublin's far-future write still wins here:
-- the clock moves past every timestamp in the value.
SELECT value(assign('{"write":{"ts":[99999999999999,5,"dublin"],"value":"future"}}'::lwwreg, '"mine"'));
-- Concurrent writes: the later timestamp wins, ties by node name, in either order.
WITH v(a, b) AS (SELECT '{"write":{"ts":[1000,0,"dublin"],"value":"d"}}'::lwwreg,
                        '{"write":{"ts":[1000,0,"madrid"],"value":"m"}}'::lwwreg)
SELECT value(a || b), value(b || a), (a || a) = a AS idempotent FROM v;
SELECT delta('{"write":{"ts":[2,0,"a"],"value":1}}'::lwwreg, '{"write":{"ts":[1,0,"a"],"value":0}}');
SELECT delta('{"write":{"ts":[1,0,"a"],"value":0}}'::lwwreg, '{"write":{"ts":[2,0,"a"],"value":1}}');
SELECT '{"write":{"ts":[1,0,"a"],"value":{"k":null}}}'::lwwreg::jsonb;
SELECT value(merge_agg(r)) FROM (VALUES ('{"write":{"ts":[5,0,"a"],"value":5}}'::lwwreg),
                                        ('{"write":{"ts":[9,0,"b"],"value":9}}'), (NULL)) v(r);
SELECT assign(NULL::lwwreg, NULL);
SELECT '{"write":{"ts":[1,0,"a"]}}'::lwwreg;
SELECT '{"write":{"ts":[1,0,"bad node"],"value":1}}'::lwwreg;
-- A write after a value at the very end of the clock's range gets that
-- same time (the clock stays there; it wrapped to 0 and lost before): the
-- node name decides, so this node (madrid) wins over "a", not over "zz".
SELECT value(assign('{"write":{"ts":[18446744073709551615,4294967295,"a"],"value":"end"}}'::lwwreg, '"mine"'));
SELECT value(assign('{"write":{"ts":[18446744073709551615,4294967295,"zz"],"value":"end"}}'::lwwreg, '"mine"'));
