-- Key columns of replicated tables, on a node of its own (kano). Every op
-- names its row by the key's values as JSON, so a key column may only
-- change where that JSON stays the same (docs/replication.md, "Schema
-- changes"); the rest of schema changes is in ddl.sql.
CREATE DATABASE converge_regress_kano;
\c converge_regress_kano
CREATE EXTENSION converge;
SELECT converge.set_node('kano') IS NOT NULL AS kano_set;
CREATE ROLE cv_keys;
GRANT CREATE ON DATABASE converge_regress_kano TO cv_keys;
CREATE SCHEMA clinic AUTHORIZATION cv_keys;
SET ROLE cv_keys;

-- A key column may widen, keeping every key's JSON: integers to a larger
-- integer type, varchar to a longer varchar or to text. Rows keep their
-- names in ops (a key's JSON is the same), here and on every node.
CREATE TABLE clinic.room (ward int, code varchar(4), PRIMARY KEY (ward, code));
SELECT converge.replicate('clinic.room');
INSERT INTO clinic.room VALUES (1, 'a1');
ALTER TABLE clinic.room ALTER COLUMN ward TYPE bigint, ALTER COLUMN code TYPE varchar(8);
-- A key longer than the column holds is refused, not cut to another
-- row's key (as on a node not widened yet).
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone9:1', 'phone9', 'clinic.room', '{"ward": 2, "code": "abcdefghij"}', '', 1, 0, '{}',
        converge.put(NULL::converge.lwwmap, '$live', 'true')::bytea, NULL)::converge.op,
    ROW('phone9:2', 'phone9', 'clinic.room', '{"ward": 2, "code": "abcdefgh"}', '', 1, 0, '{}',
        converge.put(NULL::converge.lwwmap, '$live', 'true')::bytea, NULL)::converge.op]);
ALTER TABLE clinic.room ALTER COLUMN code TYPE text;
SELECT key_columns, key_types, key_typmods, key_collations FROM converge.replicated WHERE table_name = 'clinic.room'::regclass;
-- Not back, nor to a type whose values read otherwise, nor with a USING
-- or COLLATE clause (0A000).
ALTER TABLE clinic.room ALTER COLUMN ward TYPE integer;
ALTER TABLE clinic.room ALTER COLUMN code TYPE varchar(8);
ALTER TABLE clinic.room ALTER COLUMN ward TYPE numeric;
ALTER TABLE clinic.room ALTER COLUMN ward TYPE bigint USING ward + 1;
ALTER TABLE clinic.room ALTER COLUMN code TYPE text COLLATE "C";
-- A USING clause that only casts the column is a plain retype (Django
-- writes every retype so), and a collation may be kept by naming it.
CREATE TABLE clinic.seat (id integer, code varchar(4) COLLATE "C", PRIMARY KEY (id, code));
SELECT converge.replicate('clinic.seat');
ALTER TABLE clinic.seat ALTER COLUMN id TYPE bigint USING "id"::bigint;
ALTER TABLE clinic.seat ALTER COLUMN id TYPE bigint USING id::oid;
ALTER TABLE clinic.seat ALTER COLUMN code TYPE text;
ALTER TABLE clinic.seat ALTER COLUMN code TYPE text COLLATE "C";
SELECT key_types, key_collations FROM converge.replicated WHERE table_name = 'clinic.seat'::regclass;
-- An array key's elements too: one too long is refused, not cut (also
-- when only spaces are past the limit, which a cast would drop).
CREATE TABLE clinic.shelf (labels varchar(5)[] PRIMARY KEY, n converge.gcounter);
SELECT converge.replicate('clinic.shelf');
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone9:3', 'phone9', 'clinic.shelf', '{"labels": "{ab,cd}"}', 'n', 1, 0, '{}',
        '{"counts":{"phone9":1}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone9:4', 'phone9', 'clinic.shelf', '{"labels": "{abcdefg}"}', 'n', 1, 0, '{}',
        '{"counts":{"phone9":1}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone9:14', 'phone9', 'clinic.shelf', '{"labels": "{\"a b\",ef}"}', 'n', 1, 0, '{}',
        '{"counts":{"phone9":1}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone9:15', 'phone9', 'clinic.shelf', '{"labels": "{\"abcde  \"}"}', 'n', 1, 0, '{}',
        '{"counts":{"phone9":1}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT labels FROM clinic.shelf;
-- Two spellings of one array key in one batch are one row's ops, as in
-- separate batches; both are logged under the key as the column prints it
-- (as the op trigger writes it), the one form of the row's key everywhere.
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone9:16', 'phone9', 'clinic.shelf', '{"labels": "{ab,cd}"}', 'n', 1, 0, '{}',
        '{"counts":{"phone9":2}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone9:17', 'phone9', 'clinic.shelf', '{"labels": "{\"ab\",cd}"}', 'n', 1, 0, '{}',
        '{"counts":{"phone9":3}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT labels, converge.value(n) AS n FROM clinic.shelf ORDER BY labels;
SELECT op_id, target_key, outcome FROM converge.op_log WHERE op_id IN ('phone9:16', 'phone9:17') ORDER BY op_id;
-- So a rebuild of the row (what a revocation or a repair makes) takes
-- them all: the value it makes is the one the table holds.
RESET ROLE;
SELECT converge.value(converge.rebuild('clinic.shelf', '{"labels": "{ab,cd}"}', 'n')::converge.gcounter) AS rebuilt,
       converge.value(n) AS held FROM clinic.shelf WHERE labels = '{ab,cd}';
SET ROLE cv_keys;
-- What a peer copies from here when it joins or rejoins past the
-- compacted log (converge.rejoin_rows) names each row by the same key as
-- its ops: an array key by its text form, one row per key.
SELECT target_key, crdt, live FROM converge.rejoin_rows('clinic.shelf') ORDER BY target_key::text;
-- And it runs no cast the table's owner made: a key of a type of its own
-- is its text form there too.
CREATE TYPE clinic.shade AS ENUM ('red', 'amber');
CREATE FUNCTION clinic.shade_json(s clinic.shade) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'the owner''s cast ran as a superuser';
    END IF;
    RETURN to_json(s::text);
END $$;
CREATE CAST (clinic.shade AS json) WITH FUNCTION clinic.shade_json(clinic.shade);
CREATE TABLE clinic.lamp (shade clinic.shade PRIMARY KEY, n converge.gcounter);
SELECT converge.replicate('clinic.lamp');
INSERT INTO clinic.lamp VALUES ('amber', converge.incr(NULL::converge.gcounter, 2));
SELECT target_key, crdt, live FROM converge.rejoin_rows('clinic.lamp');
DROP TABLE clinic.seat, clinic.shelf, clinic.lamp;
DROP TYPE clinic.shade CASCADE;
-- Any key a column would store changed is refused, not rounded or cut to
-- another row's: more decimals than a numeric(p,s) keeps (or more integer
-- digits than it holds), a name over 63 bytes, more than one character for
-- "char", an array element of numeric(p,s) with more decimals. A
-- numeric(p,s) array key, a numeric that is not a number and keys that fit
-- apply.
CREATE TABLE clinic.bin (price numeric(5,2), label name, grade "char", sizes numeric(4,1)[],
                         PRIMARY KEY (price, label, grade, sizes), n converge.gcounter);
SELECT converge.replicate('clinic.bin');
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY(
    SELECT ROW(format('phone9:%s', 4 + i), 'phone9', 'clinic.bin',
               format('{"price": %s, "label": %s, "grade": %s, "sizes": "{1.5,2.0}"}', p, l, g)::jsonb,
               'n', 1, 0, '{}', '{"counts":{"phone9":1}}'::converge.gcounter::bytea, NULL)::converge.op
      FROM (VALUES (1, '1.5', '"gauze"', '"a"'), (2, '1.50', '"gauze"', '"b"'), (3, '"NaN"', '"gauze"', '"a"'),
                   (4, '1.234', '"gauze"', '"a"'), (5, '1234.5', '"gauze"', '"a"'),
                   (6, '1', to_json(repeat('x', 64))::text, '"a"'), (7, '1', '"gauze"', '"ab"')) v(i, p, l, g)
     ORDER BY i)) ORDER BY length(op_id), op_id;
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('phone9:12', 'phone9', 'clinic.bin', '{"price": 2, "label": "gauze", "grade": "a", "sizes": "{1.55}"}', 'n', 1, 0, '{}',
        '{"counts":{"phone9":1}}'::converge.gcounter::bytea, NULL)::converge.op,
    ROW('phone9:13', 'phone9', 'clinic.bin', '{"price": 2, "label": "gauze", "grade": "a", "sizes": "{NULL,-1.5}"}', 'n', 1, 0, '{}',
        '{"counts":{"phone9":1}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT price, label, grade, sizes, n::jsonb FROM clinic.bin ORDER BY price, grade;
SELECT target_key FROM converge.rejoin_rows('clinic.bin') ORDER BY target_key::text;
DROP TABLE clinic.bin;
-- A change made while the event triggers were off is refused when
-- replicate runs again, and any ALTER of the table until it is undone.
RESET ROLE;
ALTER EVENT TRIGGER converge_follow_columns DISABLE;
ALTER TABLE clinic.room ALTER COLUMN ward TYPE numeric;
ALTER EVENT TRIGGER converge_follow_columns ENABLE;
SET ROLE cv_keys;
SELECT converge.replicate('clinic.room');
ALTER TABLE clinic.room ADD COLUMN floor int;
ALTER TABLE clinic.room ALTER COLUMN ward TYPE bigint;
SELECT converge.replicate('clinic.room');
INSERT INTO clinic.room VALUES (3000000000, 'b2');
DELETE FROM clinic.room WHERE ward = 1;
SELECT target_key, outcome, (delta::converge.lwwmap)::jsonb AS change
  FROM converge.op_log WHERE target_table = 'clinic.room' ORDER BY seq;
DROP TABLE clinic.room;
RESET ROLE;
\c regression
DROP DATABASE converge_regress_kano;
DROP ROLE cv_keys;
