-- Schema changes of replicated tables, on a node of its own (lagos).
-- Names are identities: ops, the op log, row bases and settings name a
-- replicated table and its columns, here and on every node. Renaming the
-- table, its schema or a replicated column would leave all of that behind
-- (an authority column would no longer be guarded), so it is refused, for
-- the table's owner as for anyone. Added, dropped and retyped columns are
-- followed: the layout is recorded again, with no replicate to forget.
CREATE DATABASE converge_regress_lagos;
\c converge_regress_lagos
CREATE EXTENSION converge;
SET search_path = public, converge;
SELECT set_node('lagos') IS NOT NULL AS lagos_set;
CREATE ROLE cv_names;
GRANT CREATE ON DATABASE converge_regress_lagos TO cv_names;
CREATE SCHEMA clinic AUTHORIZATION cv_names;
CREATE SCHEMA archive AUTHORIZATION cv_names;
SET ROLE cv_names;
CREATE TABLE clinic.incident (id int PRIMARY KEY, title text, status text DEFAULT 'open', tags converge.orset,
                              ref int GENERATED ALWAYS AS (id * 10) STORED);
SELECT converge.replicate('clinic.incident');
SELECT converge.set_authority('clinic.incident', 'status', 'virginia');
INSERT INTO clinic.incident (id, title) VALUES (1, 'pump stopped');

-- Refused: a key, a plain and a CRDT column, an authority column, the
-- table, its move to another schema, and its schema (0A000 each).
ALTER TABLE clinic.incident RENAME COLUMN id TO incident_id;
\set VERBOSITY terse
ALTER TABLE clinic.incident RENAME COLUMN title TO headline;
ALTER TABLE clinic.incident RENAME COLUMN tags TO labels;
ALTER TABLE clinic.incident RENAME COLUMN status TO state;
ALTER TABLE clinic.incident RENAME TO incidents;
ALTER TABLE clinic.incident SET SCHEMA archive;
ALTER SCHEMA clinic RENAME TO care;
-- The other ALTER commands that can rename a table or its columns.
ALTER VIEW clinic.incident RENAME COLUMN title TO headline;
ALTER MATERIALIZED VIEW clinic.incident RENAME COLUMN title TO headline;
ALTER INDEX clinic.incident RENAME TO incidents;
ALTER TYPE clinic.incident RENAME ATTRIBUTE title TO headline;
-- A composite type's attribute is a column of its typed tables.
CREATE TYPE clinic.visit AS (id int, note text);
CREATE TABLE clinic.visits OF clinic.visit (PRIMARY KEY (id));
SELECT converge.replicate('clinic.visits');
ALTER TYPE clinic.visit RENAME ATTRIBUTE note TO remark CASCADE;
\set VERBOSITY default
-- A plain column: the hint points to the way to move it.
ALTER TABLE clinic.incident RENAME COLUMN title TO headline;
-- A role that does not own the table gets PostgreSQL's own error first.
RESET ROLE;
CREATE ROLE cv_names_stranger;
GRANT USAGE ON SCHEMA clinic TO cv_names_stranger;
SET ROLE cv_names_stranger;
ALTER TABLE clinic.incident RENAME COLUMN title TO headline;
SET ROLE cv_names;
-- So the authority still guards its column here (42501), under its name.
UPDATE clinic.incident SET status = 'closed' WHERE id = 1;
SELECT target_table, target_column, node FROM converge.authorities;

-- Allowed: a generated column (not replicated), the primary key's
-- constraint, a table that is not replicated, a table that does not exist.
ALTER TABLE clinic.incident RENAME COLUMN ref TO reference;
ALTER TABLE clinic.incident RENAME CONSTRAINT incident_pkey TO incident_pk;
CREATE TABLE clinic.scratch (a int);
ALTER TABLE clinic.scratch RENAME COLUMN a TO b;
ALTER TABLE clinic.scratch RENAME TO notes;
ALTER TABLE clinic.notes SET SCHEMA archive;
ALTER SCHEMA archive RENAME TO old;
ALTER TABLE IF EXISTS clinic.nothing RENAME COLUMN a TO b;
-- A rename through a parent table reaches its replicated child's column.
CREATE TABLE clinic.base (id int PRIMARY KEY, v text);
CREATE TABLE clinic.part () INHERITS (clinic.base);
ALTER TABLE clinic.part ADD PRIMARY KEY (id);
SELECT converge.replicate('clinic.part');
ALTER TABLE clinic.base RENAME COLUMN v TO w;
-- The functions are the event triggers' only.
SELECT converge.keep_names();
SELECT converge.follow_columns();

-- A column added to a replicated table is recorded from its first change.
ALTER TABLE clinic.incident ADD COLUMN visits converge.gcounter, ADD COLUMN ward text;
SELECT crdt_columns, other_columns FROM converge.replicated WHERE table_name = 'clinic.incident'::regclass;
UPDATE clinic.incident SET visits = converge.incr(visits, 2), ward = 'east' WHERE id = 1;
SELECT target_column, CASE WHEN target_column = '' THEN (delta::converge.lwwmap)::jsonb
                           ELSE (delta::converge.gcounter)::jsonb END AS change
  FROM converge.op_log WHERE target_table = 'clinic.incident' ORDER BY seq DESC LIMIT 2;
-- A dropped one leaves the layout; a column of a parent reaches its
-- replicated child.
ALTER TABLE clinic.incident DROP COLUMN ward;
ALTER TABLE clinic.base ADD COLUMN extra int;
SELECT table_name, other_columns FROM converge.replicated WHERE table_name IN ('clinic.incident'::regclass, 'clinic.part'::regclass)
 ORDER BY table_name::text;
-- Its name stays taken: ops made before the drop (here, or from a node
-- that has not dropped it yet) and the rows' bases name it (0A000).
SELECT dropped_columns FROM converge.replicated WHERE table_name = 'clinic.incident'::regclass;
ALTER TABLE clinic.incident ADD COLUMN ward converge.pncounter;
ALTER TABLE clinic.incident ADD COLUMN ward text;
-- Also when one statement drops a column and adds one of that name.
ALTER TABLE clinic.incident DROP COLUMN visits, ADD COLUMN visits converge.gcounter;
-- A generated column made plain is replicated from then on.
ALTER TABLE clinic.incident ALTER COLUMN reference DROP EXPRESSION;
SELECT other_columns FROM converge.replicated WHERE table_name = 'clinic.incident'::regclass;
-- An attribute added to a composite type is a column of its typed tables.
ALTER TYPE clinic.visit ADD ATTRIBUTE seen date CASCADE;
SELECT other_columns FROM converge.replicated WHERE table_name = 'clinic.visits'::regclass;
-- A plain column may take another plain type.
ALTER TABLE clinic.incident ALTER COLUMN title TYPE varchar(200);
-- The key names rows in every op, and a column's ops are of its kind:
-- neither may change (0A000).
ALTER TABLE clinic.incident DROP CONSTRAINT incident_pk, ADD PRIMARY KEY (id, title);
CREATE TABLE clinic.ward (id int PRIMARY KEY, name text);
SELECT converge.replicate('clinic.ward');
ALTER TABLE clinic.ward ALTER COLUMN id TYPE numeric;
ALTER TABLE clinic.ward ALTER COLUMN id TYPE text;
ALTER TABLE clinic.incident ALTER COLUMN tags TYPE jsonb USING tags::jsonb;
ALTER TABLE clinic.ward ALTER COLUMN name TYPE converge.lwwreg USING NULL;
-- A key column may widen: ddl_keys.sql.
-- A key dropped (as pg_restore --clean does before dropping the table)
-- leaves the layout as it was, and the same key may come back; its
-- columns may not change meanwhile, nor go.
ALTER TABLE clinic.incident DROP CONSTRAINT incident_pk;
ALTER TABLE clinic.ward DROP CONSTRAINT ward_pkey;
ALTER TABLE clinic.ward ALTER COLUMN id TYPE text;
ALTER TABLE clinic.ward DROP COLUMN id;
ALTER TABLE clinic.incident ADD PRIMARY KEY (id);
-- A column dropped meanwhile: its name is taken too.
ALTER TABLE clinic.ward DROP COLUMN name, ADD COLUMN name int;
ALTER TABLE clinic.ward DROP COLUMN name;
ALTER TABLE clinic.ward ADD COLUMN name int;
SELECT dropped_columns FROM converge.replicated WHERE table_name = 'clinic.ward'::regclass;
ALTER TABLE clinic.ward ADD PRIMARY KEY (id);
-- An inheritance child keeps a column it defines itself when its parent's
-- goes (also a key column), and merges it with the parent's when that
-- comes back: neither is refused, and nothing is dropped from the child.
CREATE TABLE clinic.kin_parent (id int, note text);
CREATE TABLE clinic.kin (id int PRIMARY KEY, note text) INHERITS (clinic.kin_parent);
SELECT converge.replicate('clinic.kin');
ALTER TABLE clinic.kin_parent DROP COLUMN note, ADD COLUMN note text;
ALTER TABLE clinic.kin_parent DROP COLUMN note, DROP COLUMN id;
SELECT key_columns, other_columns, dropped_columns FROM converge.replicated WHERE table_name = 'clinic.kin'::regclass;
-- The same for a column a child inherits from two parents, and for a
-- grandchild that inherits a column its parent defines itself.
ALTER TABLE clinic.kin_parent ADD COLUMN note text;
CREATE TABLE clinic.kin_other (note text);
CREATE TABLE clinic.twin (id int PRIMARY KEY) INHERITS (clinic.kin_parent, clinic.kin_other);
CREATE TABLE clinic.grandkin () INHERITS (clinic.kin);
ALTER TABLE clinic.grandkin ADD PRIMARY KEY (id);
SELECT converge.replicate('clinic.twin'), converge.replicate('clinic.grandkin');
ALTER TABLE clinic.kin_parent DROP COLUMN note, ADD COLUMN note text;
SELECT table_name, other_columns, dropped_columns FROM converge.replicated
 WHERE table_name IN ('clinic.twin'::regclass, 'clinic.grandkin'::regclass) ORDER BY 1;
SELECT key_columns FROM converge.replicated WHERE table_name = 'clinic.incident'::regclass;
-- A dropped authority column takes its authority along; the guard trigger
-- (dropped with it by CASCADE) comes back for the other authority columns.
SELECT converge.set_authority('clinic.incident', 'title', 'virginia');
ALTER TABLE clinic.incident DROP COLUMN status;
ALTER TABLE clinic.incident DROP COLUMN status CASCADE;
SELECT target_column, node FROM converge.authorities;
SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'converge_authority_guard';
UPDATE clinic.incident SET title = 'pump fixed' WHERE id = 1;
-- A column dropped by DROP DOMAIN ... CASCADE is followed too
-- (converge_follow_drops): its authority goes, and the guard trigger,
-- dropped with it, comes back for the other authority columns.
CREATE DOMAIN clinic.code AS text;
ALTER TABLE clinic.incident ADD COLUMN code clinic.code;
SELECT converge.set_authority('clinic.incident', 'code', 'virginia');
DROP DOMAIN clinic.code CASCADE;
SELECT target_column FROM converge.authorities ORDER BY 1;
SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'converge_authority_guard';
SELECT dropped_columns FROM converge.replicated WHERE table_name = 'clinic.incident'::regclass;
-- A key column's domain cannot go that way (0A000).
CREATE DOMAIN clinic.bed_no AS int;
CREATE TABLE clinic.bed (no clinic.bed_no PRIMARY KEY, ward text);
SELECT converge.replicate('clinic.bed');
DROP DOMAIN clinic.bed_no CASCADE;
-- Dropping a replicated table stays allowed; its layout and row states
-- go with it (a table made later may get its oid).
INSERT INTO clinic.bed VALUES (1, 'east');
SELECT 'clinic.bed'::regclass::oid AS bed \gset
RESET ROLE;
SELECT (SELECT count(*) FROM converge.replicated WHERE table_name::oid = :bed) AS layouts,
       (SELECT count(*) FROM converge.row_state WHERE tbl::oid = :bed) AS row_states;
SET ROLE cv_names;
DROP TABLE clinic.bed;
RESET ROLE;
SELECT (SELECT count(*) FROM converge.replicated WHERE table_name::oid = :bed) AS layouts,
       (SELECT count(*) FROM converge.row_state WHERE tbl::oid = :bed) AS row_states;
SET ROLE cv_names;
-- An ALTER ... IF EXISTS of a missing table names types that need not exist.
ALTER TABLE IF EXISTS clinic.nothing ALTER COLUMN x TYPE clinic.no_type USING x::clinic.no_type;
-- Enum labels travel in ops: a value of an enum a replicated key or plain
-- column holds keeps its label (0A000); others may be renamed.
CREATE TYPE clinic.level AS ENUM ('low', 'high');
CREATE TYPE clinic.mood AS ENUM ('calm', 'busy');
CREATE TABLE clinic.alarm (id int PRIMARY KEY, level clinic.level);
SELECT converge.replicate('clinic.alarm');
ALTER TYPE clinic.level RENAME VALUE 'low' TO 'minor';
ALTER TYPE clinic.mood RENAME VALUE 'busy' TO 'hectic';
DROP TABLE clinic.alarm;
-- The owner of a domain may drop it with a column of another role's
-- table: the guard trigger comes back as the table's owner.
RESET ROLE;
GRANT CREATE ON SCHEMA clinic TO cv_names_stranger;
SET ROLE cv_names_stranger;
CREATE DOMAIN clinic.grade AS text;
GRANT USAGE ON DOMAIN clinic.grade TO cv_names;
SET ROLE cv_names;
ALTER TABLE clinic.incident ADD COLUMN grade clinic.grade;
SELECT converge.set_authority('clinic.incident', 'grade', 'virginia');
SET ROLE cv_names_stranger;
DROP DOMAIN clinic.grade CASCADE;
SET ROLE cv_names;
SELECT target_column FROM converge.authorities ORDER BY 1;
SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'converge_authority_guard';
-- The event triggers' functions are theirs only.
SELECT converge.follow_drops();

-- A row another node inserted is made here with the columns its ops
-- name: a NOT NULL CRDT column starts empty (its own op merges in), a
-- generated column is computed here, and an identity column takes the
-- value sent; no default of this node stands in for what the inserting
-- node wrote. (Identity BY DEFAULT: docs/replication.md.) A later edit
-- applies too.
CREATE TABLE clinic.page (id int PRIMARY KEY, seq int GENERATED BY DEFAULT AS IDENTITY,
                          views converge.gcounter NOT NULL DEFAULT '{}', title text,
                          half int GENERATED ALWAYS AS (id / 2) STORED);
SELECT converge.replicate('clinic.page');
SELECT op_id, outcome, reason FROM converge.apply_batch(ARRAY[
    ROW('tab:1', 'tab', 'clinic.page', '{"id": 4}', '', 1, 0, '{}',
        converge.put(converge.put(converge.put(NULL::converge.lwwmap, '$live', 'true'), 'title', '"home"'), 'seq', '7')::bytea,
        NULL)::converge.op,
    ROW('tab:2', 'tab', 'clinic.page', '{"id": 4}', 'views', 1, 0, '{}', '{"counts":{"tab":3}}'::converge.gcounter::bytea, NULL)::converge.op]);
SELECT id, seq, converge.value(views) AS views, title, half FROM clinic.page;
SELECT op_id, outcome, reason FROM converge.apply(
    ROW('tab:3', 'tab', 'clinic.page', '{"id": 4}', '', 1, 0, '{}', converge.put(NULL::converge.lwwmap, 'title', '"home page"')::bytea,
        NULL)::converge.op);
SELECT id, seq, converge.value(views) AS views, title, half FROM clinic.page;
RESET ROLE;
\c regression
DROP DATABASE converge_regress_lagos;
DROP ROLE cv_names;
DROP ROLE cv_names_stranger;
