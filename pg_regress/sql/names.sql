-- Names are identities: ops, the op log, row bases and settings name a
-- replicated table and its columns, here and on every node. Renaming the
-- table, its schema or a replicated column would leave all of that behind
-- (an authority column would no longer be guarded), so it is refused, for
-- the table's owner as for anyone. On a node of its own (lagos).
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
-- The function is the event trigger's only.
SELECT converge.keep_names();
RESET ROLE;
\c regression
DROP DATABASE converge_regress_lagos;
DROP ROLE cv_names;
DROP ROLE cv_names_stranger;
