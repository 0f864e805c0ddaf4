SET search_path = public, converge;
SELECT all_values(r), is_conflict(r) FROM (SELECT assign(assign(NULL::mvreg, '"draft"'), '"final"') r) v;
SELECT all_values('{}'::mvreg), is_conflict('{}'::mvreg);
-- Concurrent titles from two nodes are both kept...
CREATE TEMP TABLE m AS SELECT assign(NULL::mvreg, '"Pump failure"') AS here,
    '{"context":{"dublin":[[3,3]]},"entries":[["dublin",3,"Pump leak"]]}'::mvreg AS there;
SELECT all_values(here || there), is_conflict(here || there), (here || there) = (there || here) AS commutative FROM m;
-- ...until a write that has seen both supersedes them.
SELECT all_values(assign(here || there, '"Pump leak, bay 4"')) FROM m;
-- The same value written concurrently shows once.
SELECT all_values(r), is_conflict(r) FROM (SELECT '{"context":{"a":[[1,1]],"b":[[1,1]]},"entries":[["a",1,"x"],["b",1,"x"]]}'::mvreg r) v;
SELECT (here || there)::jsonb, delta(here || there, here) = there AS delta_is_theirs FROM m;
SELECT all_values(merge_agg(r)) FROM (SELECT here FROM m UNION ALL SELECT there FROM m) v(r);
SELECT '{"entries":[["a",1,"x"]]}'::mvreg;
