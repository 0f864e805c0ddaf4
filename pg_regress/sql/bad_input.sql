SET search_path = public, converge;
-- Every kind of bad input is an ERROR with a SQLSTATE; the server keeps running.
\set VERBOSITY sqlstate
-- Malformed text (22P02).
SELECT 'not json'::gcounter;
SELECT '{"counts":{"a":1}} trailing'::gcounter;
SELECT '{"counts":{"a":"one"}}'::gcounter;
SELECT '{"unknown":1}'::orset;
SELECT '[]'::lwwmap;
SELECT ''::mvreg;
-- Hostile bytes through the binary form (22P03): empty, truncated, version 0,
-- unknown version, another type's tag, garbage body, trailing bytes, non-canonical.
SELECT '\x'::bytea::gcounter;
SELECT '\x01'::bytea::gcounter;
SELECT '\x000100'::bytea::gcounter;
SELECT '\x020100'::bytea::gcounter;
SELECT '\x010500'::bytea::gcounter;
SELECT '\x0101ffffffffff'::bytea::gcounter;
SELECT '\x01010000'::bytea::gcounter;
SELECT '\x010402016101620161'::bytea::gset;
SELECT '\x0105000101610101020202'::bytea::orset;
-- The same bytes through a real binary COPY (the type's recv function).
CREATE TABLE bin_src (b bytea);
INSERT INTO bin_src VALUES ('\x0101ffffffffff');
COPY bin_src TO '/tmp/converge_regress_hostile.bin' (FORMAT binary);
CREATE TABLE bin_dst (c gcounter);
COPY bin_dst FROM '/tmp/converge_regress_hostile.bin' (FORMAT binary);
TRUNCATE bin_src;
INSERT INTO bin_src VALUES ('\x010101016164'::bytea);
COPY bin_src TO '/tmp/converge_regress_ok.bin' (FORMAT binary);
\set VERBOSITY default
COPY bin_dst FROM '/tmp/converge_regress_ok.bin' (FORMAT binary);
SELECT c, value(c) FROM bin_dst;
COPY bin_dst TO '/tmp/converge_regress_out.bin' (FORMAT binary);
TRUNCATE bin_dst;
COPY bin_dst FROM '/tmp/converge_regress_out.bin' (FORMAT binary);
SELECT c FROM bin_dst;
\set VERBOSITY sqlstate
-- Arguments (22023, 22004) and range (22003).
SELECT incr(NULL::gcounter, -5);
SELECT add(NULL::orset, NULL);
SELECT incr('{"counts":{"madrid":9223372036854775800}}'::gcounter, 100);
-- Rights (55000).
SELECT decr(incr(NULL::bcounter, 1), 2);
-- Size limit (54000), on mutation and on input.
SET converge.max_value_bytes = 1024;
SELECT add(NULL::orset, repeat('x', 2000));
SELECT ('{"elements":["' || repeat('y', 2000) || '"]}')::gset;
RESET converge.max_value_bytes;
\set VERBOSITY default
SELECT 'still running' AS server;
DROP TABLE bin_src, bin_dst;
