-- Compaction, the stable frontier and the stats (SPEC section 6), on a node
-- of its own (a database with no peers: every op it has applied is stable).
CREATE DATABASE converge_regress_lisbon;
\c converge_regress_lisbon
CREATE EXTENSION converge;
SET search_path = public, converge;
SELECT set_node('lisbon') IS NOT NULL AS lisbon_set;
CREATE TABLE ticket (id int PRIMARY KEY, title text, tags orset, visits gcounter, notes seqtext);
SELECT replicate('ticket');

-- Some history: inserts, edits, deletes (row tombstones, one with CRDT
-- state), a client's ops, one of them rejected.
INSERT INTO ticket VALUES (1, 'pump', add(NULL::orset, 'urgent'), incr(NULL::gcounter, 1), insert(NULL::seqtext, 0, 'Pump stopped'));
INSERT INTO ticket VALUES (2, 'valve', NULL, incr(NULL::gcounter, 1), NULL);
INSERT INTO ticket (id, title) VALUES (3, 'filter');
UPDATE ticket SET visits = incr(visits, 2), tags = add(tags, 'pump') WHERE id = 1;
UPDATE ticket SET tags = remove(tags, 'urgent'), notes = delete(notes, 0, 5) WHERE id = 1;
UPDATE ticket SET notes = insert(notes, length(notes), ' at noon') WHERE id = 1;
UPDATE ticket SET notes = delete(notes, length(notes) - 8, 8) WHERE id = 1;   -- typed, then deleted again
UPDATE ticket SET title = 'valve (leaking)' WHERE id = 2;
DELETE FROM ticket WHERE id IN (2, 3);
SELECT outcome, reason FROM apply_batch(ARRAY[
    ROW('phone1:1', 'phone1', 'public.ticket', '{"id":1}', 'visits', 1, 0, '{}', '{"counts":{"phone1":4}}'::gcounter::bytea, NULL)::op,
    ROW('phone1:2', 'phone1', 'public.ticket', '{"id":1}', 'visits', 1, 0, '{}', '\x00'::bytea, NULL)::op]);
SELECT id, title, elements(tags) AS tags, value(visits) AS visits, value(notes) AS notes FROM ticket ORDER BY id;
SELECT frontier(), stable_frontier() = frontier() AS all_stable_without_peers;
SELECT outcome, count(*) FROM op_log GROUP BY outcome ORDER BY outcome;
SELECT applied, duplicate, rejected, op_log_rows, pending, lost_peers, last_compaction FROM stats;
SELECT octet_length(notes::bytea) AS notes_bytes FROM ticket WHERE id = 1 \gset
-- From here on only nodes write ticket (said on every node alike, by the
-- table's owner): compaction may drop its row tombstones and the deleted
-- characters of its text. (Tables clients may write keep them: below.)
SELECT set_client_writes('ticket', false);

-- compact() folds every applied op into the rows' bases and removes it; the
-- rejected op stays (never dropped), and so do the values.
SELECT ops_removed, bytes_after < bytes_before AS smaller FROM compact();
-- (Internal steps take what names nothing as nothing to do, not an error.)
SELECT converge.base_form(NULL, NULL, NULL) IS NULL AS nothing_to_drop;
SELECT converge.forget_layout(0);
SELECT op_id, outcome, reason FROM op_log ORDER BY seq;
SELECT id, title, elements(tags) AS tags, value(visits) AS visits, value(notes) AS notes FROM ticket ORDER BY id;
SELECT * FROM log_horizon ORDER BY actor;
-- The notes lost the deleted ' at noon' (nothing hangs on it); 'Pump ',
-- deleted too, stays: the rest of the text is placed after it.
SELECT value(notes), octet_length(notes::bytea) < :notes_bytes AS smaller FROM ticket WHERE id = 1;
-- Row 3's tombstone is gone: every op on it was folded and it kept no CRDT
-- state. Row 2's stays with its stash: a key inserted again resumes that
-- state on every node, and another node may not have compacted yet.
SELECT target_key, live FROM row_state ORDER BY target_key::text;
SELECT target_key, target_column FROM row_base ORDER BY target_key::text, target_column;
-- A row rebuilt from its base equals the row.
SELECT rebuild('ticket', '{"id":1}', 'visits')::gcounter = visits AS visits_rebuilt,
       rebuild('ticket', '{"id":1}', 'tags')::orset = tags AS tags_rebuilt,
       rebuild('ticket', '{"id":1}', 'notes')::seqtext = notes AS notes_rebuilt
  FROM ticket WHERE id = 1;
-- The counts survive compaction.
SELECT applied, duplicate, rejected, op_log_rows FROM stats;
SELECT ops_removed, tombstones_removed, values_compacted, stable FROM compactions;

-- An op compacted away that arrives again is still a duplicate.
SELECT outcome FROM apply(ROW('phone1:1', 'phone1', 'public.ticket', '{"id":1}', 'visits', 1, 0, '{}',
                              '{"counts":{"phone1":4}}'::gcounter::bytea, NULL)::op);
SELECT value(visits) FROM ticket WHERE id = 1;
-- A client whose cursor predates the compaction is sent to a snapshot; one
-- at the frontier is told there is nothing new.
\set VERBOSITY sqlstate
SELECT * FROM changes_since('{}');
\set VERBOSITY default
SELECT * FROM changes_since('{"lisbon":2}');
SELECT count(*) FROM changes_since(frontier());

-- This node's counter goes on after its ops left the log: no op id is reused.
UPDATE ticket SET visits = incr(visits, 1) WHERE id = 1;
SELECT op_id FROM op_log WHERE actor = 'lisbon' ORDER BY seq;
SELECT frontier();
-- Deleted keys inserted again: row 2 resumes its CRDT state (as it would
-- on every node), row 3 had none and starts afresh.
INSERT INTO ticket (id, title) VALUES (2, 'valve again'), (3, 'filter again');
SELECT id, title, elements(tags) AS tags, value(visits) AS visits FROM ticket WHERE id IN (2, 3) ORDER BY id;
-- A second compaction takes only what is new: the three ops since (an
-- increment and two inserts) and the record of the duplicate.
SELECT ops_removed FROM compact();
SELECT count(*) AS ops_left FROM op_log WHERE outcome = 'applied';
-- With none of its ops left in the log, the node still counts on.
UPDATE ticket SET visits = incr(visits, 1) WHERE id = 2;
SELECT op_id FROM op_log WHERE actor = 'lisbon' ORDER BY seq;
SELECT rebuild('ticket', '{"id":1}', 'visits')::gcounter = visits AS still_rebuilt FROM ticket WHERE id = 1;

-- A table owned by an ordinary role is compacted too (its rows are written
-- as their owner, converge's bases read as compact()'s caller).
CREATE ROLE cv_owner;
GRANT USAGE ON SCHEMA public TO cv_owner;
GRANT CREATE ON SCHEMA public TO cv_owner;
SET ROLE cv_owner;
CREATE TABLE owned (id int PRIMARY KEY, tags converge.orset);
SELECT converge.replicate('owned');
-- Its owner says only nodes write it (as the owner replicates it).
SELECT converge.set_client_writes('owned', false);
INSERT INTO owned VALUES (1, converge.add(NULL::converge.orset, 'a'));
UPDATE owned SET tags = converge.remove(converge.add(tags, 'b'), 'a');
RESET ROLE;
SELECT client_writes FROM replicated WHERE table_name = 'owned'::regclass;
SELECT ops_removed FROM compact();
SELECT values_compacted FROM compactions ORDER BY ran_at DESC LIMIT 1;
SELECT elements(tags) FROM owned;
SELECT count(*) AS bases FROM row_base WHERE target_table = 'public.owned';
DROP TABLE owned;
-- Its rows' bases go with it: a table made later under its name starts with none.
SELECT count(*) AS bases FROM row_base WHERE target_table = 'public.owned';
DROP OWNED BY cv_owner;
DROP ROLE cv_owner;

-- Tables clients may write (the default) keep what a client's late edit
-- may need: no frontier covers what an offline client holds, and nodes
-- compact at different moments. Row 2 of visit comes and goes, and the
-- last character of row 1's note is deleted; all of it is folded, and
-- both stay: the tombstone and the deleted 'b'.
CREATE TABLE visit (id int PRIMARY KEY, n gcounter, note seqtext);
SELECT replicate('visit');
INSERT INTO visit VALUES (1, NULL, insert(NULL::seqtext, 0, 'ab')), (2, NULL, NULL);
UPDATE visit SET note = delete(note, 1, 1) WHERE id = 1;
DELETE FROM visit WHERE id = 2;
SELECT octet_length(note::bytea) AS note_bytes FROM visit WHERE id = 1 \gset
SELECT ops_removed > 0 AS folded FROM compact();
SELECT tombstones_removed, values_compacted FROM compactions ORDER BY ran_at DESC LIMIT 1;
SELECT value(note), octet_length(note::bytea) = :note_bytes AS same_bytes FROM visit WHERE id = 1;
-- phone2, offline meanwhile, counts a visit on row 2. The tombstone is
-- here, as on every node, so the edit joins its stash and row 2 stays
-- deleted everywhere. (Had compact() dropped it here and not yet on
-- another node, this node would take the edit as a new row 2 and the
-- other would keep it deleted, for good; an insert typed after 'b' would
-- likewise show on a node that kept 'b' and stay invisible on one that
-- dropped it.)
SELECT outcome, reason FROM apply(ROW('phone2:1', 'phone2', 'public.visit', '{"id":2}', 'n', 1, 0, '{}',
                                      '{"counts":{"phone2":1}}'::gcounter::bytea, NULL)::op);
SELECT count(*) AS row2_back FROM visit WHERE id = 2;
SELECT live, stash FROM row_state WHERE tbl = 'visit'::regclass AND target_key = '{"id": 2}';
-- Row 3 comes and goes too, and phone5, made under version 2 of n (not
-- declared here yet), counts a visit on it: kept aside (new_schema).
INSERT INTO visit (id) VALUES (3);
DELETE FROM visit WHERE id = 3;
SELECT outcome, reason FROM apply(ROW('phone5:1', 'phone5', 'public.visit', '{"id":3}', 'n', 2, 0, '{}',
                                      '{"counts":{"phone5":1}}'::gcounter::bytea, NULL)::op);
-- phone6, under version 2 of note, types in row 1's note: kept aside
-- too, and it may be anchored on the deleted 'b'.
SELECT outcome, reason FROM apply(ROW('phone6:1', 'phone6', 'public.visit', '{"id":1}', 'note', 2, 0, '{}',
                                      insert(NULL::seqtext, 0, 'z')::bytea, NULL)::op);
-- phone4 sends an op that waits for its dep.
SELECT outcome, reason FROM apply(ROW('phone4:2', 'phone4', 'public.visit', '{"id":1}', 'n', 1, 0, '{phone4:1}',
                                      '{"counts":{"phone4":2}}'::gcounter::bytea, NULL)::op);
-- Once only nodes write visit (on every node alike), an op a client sends
-- is refused where it enters. Row 2's tombstone stays, as it now keeps
-- CRDT state, and the deleted 'b' waits for phone6's op (below).
SELECT set_client_writes('visit', false);
SELECT table_name, client_writes FROM replicated ORDER BY table_name::text;
SELECT outcome, reason FROM apply(ROW('phone2:2', 'phone2', 'public.visit', '{"id":1}', 'n', 1, 0, '{}',
                                      '{"counts":{"phone2":2}}'::gcounter::bytea, NULL)::op);
SELECT value(n) FROM visit WHERE id = 1;
-- An op that follows such a refused op in the same batch would wait for
-- it for ever: it is refused with it (dependency_rejected), as behind any
-- op refused there, and the client sends it again after its other ops.
CREATE TABLE cart (id int PRIMARY KEY, n gcounter);
SELECT replicate('cart');
SELECT op_id, outcome, reason FROM apply_batch(ARRAY[
    ROW('phone7:1', 'phone7', 'public.visit', '{"id":1}', 'n', 1, 0, '{}', '{"counts":{"phone7":1}}'::gcounter::bytea, NULL)::op,
    ROW('phone7:2', 'phone7', 'public.cart', '{"id":1}', 'n', 1, 0, '{phone7:1}', '{"counts":{"phone7":1}}'::gcounter::bytea, NULL)::op]);
SELECT count(*) AS phone7_waiting FROM pending WHERE op_id LIKE 'phone7:%';
DROP TABLE cart;
-- phone4's waiting op, sent before the switch and taken in after it by a
-- change of its registry entry (a revocation after its counter 5), is a
-- client's op all the same: refused too.
SELECT revoke_actor('phone4', 5) IS NOT NULL AS revoked;
SELECT op_id, outcome, reason, origin FROM op_log WHERE actor = 'phone4' ORDER BY seq;
SELECT count(*) AS phone4_waiting FROM pending WHERE op_id = 'phone4:2';
SELECT ops_removed FROM compact();
SELECT tombstones_removed, values_compacted FROM compactions ORDER BY ran_at DESC LIMIT 1;
SELECT value(note), octet_length(note::bytea) < :note_bytes AS smaller FROM visit WHERE id = 1;
SELECT count(*) AS row2_tombstone FROM row_state WHERE tbl = 'visit'::regclass AND target_key = '{"id": 2}';
-- Row 3's tombstone waits for phone5's op, kept aside here: a version
-- set here would apply it. Set, the ops of both versions are taken in as
-- clients' ops (origin replay), so refused now (the table is closed);
-- the tombstone and the deleted 'b' go.
SELECT count(*) AS row3_tombstone FROM row_state WHERE tbl = 'visit'::regclass AND target_key = '{"id": 3}';
SELECT set_schema_version('visit', 'n', 2), set_schema_version('visit', 'note', 2);
SELECT op_id, outcome, reason, origin FROM op_log WHERE actor IN ('phone5', 'phone6') ORDER BY seq;
SELECT ops_removed FROM compact();
SELECT tombstones_removed, values_compacted FROM compactions ORDER BY ran_at DESC LIMIT 1;
SELECT count(*) AS row3_tombstone FROM row_state WHERE tbl = 'visit'::regclass AND target_key = '{"id": 3}';
SELECT value(note), octet_length(note::bytea) < :note_bytes AS smaller FROM visit WHERE id = 1;
-- The table's owner sets it (as for replicate), for a replicated table.
CREATE ROLE cv_clerk;
SET ROLE cv_clerk;
\set VERBOSITY sqlstate
SELECT set_client_writes('visit', true);
\set VERBOSITY default
SELECT set_client_writes('visit', true);
RESET ROLE;
DROP ROLE cv_clerk;
CREATE TABLE scratch (id int PRIMARY KEY);
SELECT set_client_writes('scratch', false);
SELECT set_client_writes('visit', NULL);
DROP TABLE scratch, visit;

-- An ormap forgets the dots of the keys, elements and values removed: the
-- same map, in fewer bytes. A removed counter key keeps its counts (a
-- node's next increment sends its running total).
CREATE TABLE asset (id int PRIMARY KEY, attrs ormap);
SELECT replicate('asset');
INSERT INTO asset VALUES (1, assign(add(add(incr(NULL::ormap, 'hours', 5), 'tags', 'red'), 'tags', 'old'), 'owner', '"ana"'));
UPDATE asset SET attrs = remove(attrs, 'tags', 'old');
UPDATE asset SET attrs = assign(attrs, 'owner', '"bo"');
UPDATE asset SET attrs = remove(remove(attrs, 'hours'), 'spare');
UPDATE asset SET attrs = add(attrs, 'spare', 'x');
UPDATE asset SET attrs = remove(attrs, 'spare');
SELECT attrs::jsonb AS before, octet_length(attrs::bytea) AS asset_bytes FROM asset \gset
SELECT ops_removed FROM compact();
SELECT attrs::jsonb = :'before'::jsonb AS same_map, octet_length(attrs::bytea) < :asset_bytes AS smaller,
       attrs::jsonb AS map FROM asset;
SELECT rebuild('asset', '{"id":1}', 'attrs')::ormap::jsonb = attrs::jsonb AS rebuilt FROM asset;

-- A peer lost, then back: tombstones and value metadata wait until every
-- peer not lost has reported having applied every op folded so far. (The
-- peer oslo is written into converge's tables here as add_peer and the
-- worker would leave it, but paused, so that no worker connects to it.)
SELECT frontier() AS before_oslo \gset
INSERT INTO converge.peer (name, conninfo, slot_name, origin_name, paused) VALUES ('oslo', 'host=invalid', 'none', 'none', true);
INSERT INTO converge.peer_status (name, lost_at) VALUES ('oslo', now());
-- (Its origin was never made: converge.peers still answers, with no LSN;
-- origin_progress answers for peers' origins only.)
SELECT name, state, origin, origin_lsn FROM converge.peers;
SELECT converge.origin_progress('converge_none') AS not_a_peers_origin;
INSERT INTO ticket (id, title) VALUES (5, 'gauge');
DELETE FROM ticket WHERE id = 5;
UPDATE ticket SET notes = insert(notes, length(notes), '!') WHERE id = 1;
UPDATE ticket SET notes = delete(notes, length(notes) - 1, 1) WHERE id = 1;   -- a deleted character, a leaf
-- While oslo is lost, lisbon's ops on row 5 are folded, and the row's
-- tombstone stays.
SELECT ops_removed > 0 AS folded FROM compact();
SELECT count(*) AS row5_tombstone FROM row_state WHERE target_key = '{"id": 5}';
-- oslo is back (lost_at cleared, as when it streams again) but has not
-- reported yet: the ops folded while it was away may be ones it lacks, and
-- its rows, merged here when we rejoin it, may still hold row 5 live.
UPDATE converge.peer_status SET lost_at = NULL WHERE name = 'oslo';
SELECT ops_removed FROM compact();
SELECT tombstones_removed, values_compacted FROM compactions ORDER BY ran_at DESC LIMIT 1;
SELECT count(*) AS row5_tombstone FROM row_state WHERE target_key = '{"id": 5}';
-- Its report from before row 5 is not enough either.
UPDATE converge.peer_status SET frontier = :'before_oslo' WHERE name = 'oslo';
SELECT ops_removed FROM compact();
SELECT tombstones_removed FROM compactions ORDER BY ran_at DESC LIMIT 1;
-- oslo reports having applied everything, but not that clients may not
-- write ticket there: a client's late edit of row 5, or a late insert
-- after the deleted '!', may still reach it, and come here from it. The
-- tombstone and the character stay.
UPDATE converge.peer_status SET frontier = frontier() WHERE name = 'oslo';
SELECT ops_removed FROM compact();
SELECT tombstones_removed, values_compacted FROM compactions ORDER BY ran_at DESC LIMIT 1;
-- Its report says so too (as the worker reads it with oslo's frontier):
-- both go.
UPDATE converge.peer_status SET closed_tables = '["public.ticket"]' WHERE name = 'oslo';
SELECT ops_removed FROM compact();
SELECT tombstones_removed, values_compacted FROM compactions ORDER BY ran_at DESC LIMIT 1;
SELECT count(*) AS row5_tombstone FROM row_state WHERE target_key = '{"id": 5}';
-- An actor revoked behind what was folded here (a revocation made on a
-- node that had not compacted; written here as its arrival would leave
-- it): its ops past the cut-off are never applied anywhere again, so only
-- those up to the cut-off must be reported. Without that, oslo's report
-- of phone1 (0, as that node rejected phone1:1) would hold row 6's
-- tombstone forever.
INSERT INTO ticket (id, title) VALUES (6, 'meter');
DELETE FROM ticket WHERE id = 6;
UPDATE converge.peer_status SET frontier = frontier() || '{"phone1": 0}' WHERE name = 'oslo';
SELECT ops_removed FROM compact();
SELECT tombstones_removed FROM compactions ORDER BY ran_at DESC LIMIT 1;
INSERT INTO converge.actor (actor, revoked_after) VALUES ('phone1', 0);
SELECT ops_removed FROM compact();
SELECT tombstones_removed FROM compactions ORDER BY ran_at DESC LIMIT 1;
DELETE FROM converge.actor WHERE actor = 'phone1';
DELETE FROM converge.peer WHERE name = 'oslo';

-- A key inserted again once its tombstone was dropped writes newer than
-- its delete, also when the delete came from a clock running ahead (an
-- hour here): compact() keeps the newest clock of the tombstones it drops
-- (replicated.tombstone_clock) and an insert of a key with no row state
-- writes newer than it. Otherwise a node that kept the tombstone would
-- keep the row deleted while this one has it.
-- (A client stands in for that node here: a peer's ops cannot be sent
-- from SQL. It may write ticket for that moment only; opening the table
-- to clients again warns, since tombstones were dropped here.)
INSERT INTO ticket (id, title) VALUES (8, 'hose');
SET converge.max_clock_skew = '2h'; -- a client an hour ahead passes it
SELECT format('{"entries":{"$live":[[%s,0,"phone3"],{"put":false}]}}', (extract(epoch FROM now()) * 1000)::int8 + 3600000)
    AS ahead \gset
SELECT set_client_writes('ticket', true);
SELECT outcome FROM apply(ROW('phone3:1', 'phone3', 'public.ticket', '{"id":8}', '', 1, 0, '{}', :'ahead'::lwwmap::bytea, NULL)::op);
SELECT set_client_writes('ticket', false);
SELECT ops_removed > 0 AS folded FROM compact();
SELECT count(*) AS row8_tombstone FROM row_state WHERE target_key = '{"id": 8}';
SELECT tombstone_clock || :'ahead'::lwwmap = tombstone_clock AS floor_has_the_delete FROM replicated WHERE table_name = 'ticket'::regclass;
INSERT INTO ticket (id, title) VALUES (8, 'hose again');
-- Merged with the tombstone another node may still have, the row is live.
SELECT get(clock || :'ahead'::lwwmap, '$live') AS live_where_the_tombstone_stayed FROM row_state WHERE target_key = '{"id": 8}';

-- A plain column with an authority: an insert made away from it writes
-- the column as a placeholder that the row's older writes beat, so the
-- tombstones of such a table stay like ones with a stash (with one gone
-- here and kept on a node that has not compacted, the same insert would
-- take the placeholder here and the older value there). Row 7's table has
-- no such column: its tombstone goes. Here lisbon closes desk 1 while it
-- decides status, then hands it over to oslo (a peer for that moment),
-- and the row is deleted.
CREATE TABLE desk (id int PRIMARY KEY, status text DEFAULT 'open');
SELECT replicate('desk');
SELECT set_client_writes('desk', false);   -- only nodes write it: its tombstones go but for the authority
SELECT set_authority('desk', 'status', 'lisbon');
INSERT INTO desk (id) VALUES (1);
UPDATE desk SET status = 'closed';
INSERT INTO converge.peer (name, conninfo, slot_name, origin_name, paused) VALUES ('oslo', 'host=invalid', 'none', 'none', true);
SELECT set_authority('desk', 'status', 'oslo');
DELETE FROM converge.peer WHERE name = 'oslo';
DELETE FROM desk;
INSERT INTO ticket (id, title) VALUES (7, 'gasket');
DELETE FROM ticket WHERE id = 7;
SELECT ops_removed FROM compact();
SELECT tombstones_removed FROM compactions ORDER BY ran_at DESC LIMIT 1;
SELECT tbl, target_key, live FROM row_state WHERE tbl = 'desk'::regclass OR target_key = '{"id": 7}';
-- Inserted again here, at its default, by a role that may insert but not
-- update status: the row takes the decided status from its tombstone when
-- the transaction commits (converge writes it as the table's owner, with
-- the table's own triggers off: the one below would have set note, and no
-- op would carry that), and the insert's op carries only the placeholder.
ALTER TABLE desk ADD COLUMN note text;
SELECT replicate('desk');
CREATE FUNCTION desk_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.note := 'touched'; RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE UPDATE ON desk FOR EACH ROW EXECUTE FUNCTION desk_touch();
CREATE ROLE cv_desk;
GRANT SELECT, INSERT, UPDATE (note) ON desk TO cv_desk;
-- The role's search_path puts an = of its own before pg_catalog's: what
-- converge runs as the owner never picks it (it would fail here).
CREATE SCHEMA cv_trap;
CREATE FUNCTION cv_trap.int_eq(int, int) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the caller''s = ran as %', current_user; END $$;
CREATE OPERATOR cv_trap.= (LEFTARG = int, RIGHTARG = int, FUNCTION = cv_trap.int_eq);
GRANT USAGE ON SCHEMA cv_trap TO cv_desk;
SET ROLE cv_desk;
SET search_path = cv_trap, public, converge, pg_catalog;
INSERT INTO desk (id) VALUES (1);
RESET search_path;
RESET ROLE;
SET search_path = public, converge;
DROP SCHEMA cv_trap CASCADE;
SELECT * FROM desk;
SELECT (delta::lwwmap::text::jsonb) -> 'entries' -> 'status' AS status_entry
  FROM op_log WHERE target_table = 'public.desk' ORDER BY seq DESC LIMIT 1;
DROP TABLE desk;
DROP FUNCTION desk_touch();
DROP ROLE cv_desk;
-- The decided values are written as the table's owner. A row security
-- policy forced on the owner that hides the new row from its UPDATE would
-- leave the row behind its clock on this node only: the insert fails at
-- commit instead, and nothing of it stays.
CREATE ROLE cv_owner;
GRANT USAGE ON SCHEMA converge TO cv_owner;
CREATE TABLE post (id int PRIMARY KEY, status text DEFAULT 'open');
ALTER TABLE post OWNER TO cv_owner;
SET ROLE cv_owner;
SELECT replicate('post');
RESET ROLE;
SELECT set_authority('post', 'status', 'lisbon');
INSERT INTO post (id) VALUES (1);
UPDATE post SET status = 'closed';
INSERT INTO converge.peer (name, conninfo, slot_name, origin_name, paused) VALUES ('oslo', 'host=invalid', 'none', 'none', true);
SELECT set_authority('post', 'status', 'oslo');
DELETE FROM converge.peer WHERE name = 'oslo';
DELETE FROM post;
ALTER TABLE post ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY everything ON post USING (true);
CREATE POLICY no_updates ON post AS RESTRICTIVE FOR UPDATE USING (false);
SET ROLE cv_owner;
INSERT INTO post (id) VALUES (1);
\set VERBOSITY sqlstate
INSERT INTO post (id) VALUES (1);
\set VERBOSITY default
RESET ROLE;
SELECT count(*) AS rows_left FROM post;
-- Without the forced policy the same insert takes lisbon's decision.
ALTER TABLE post NO FORCE ROW LEVEL SECURITY;
SET ROLE cv_owner;
INSERT INTO post (id) VALUES (1);
RESET ROLE;
SELECT * FROM post;
DROP TABLE post;
REVOKE USAGE ON SCHEMA converge FROM cv_owner;
DROP ROLE cv_owner;

-- An op waiting for one that compaction folded since goes on: compaction
-- folds only ops applied here (up to their actor's contiguous frontier).
-- Here the op it waits for comes from a role that may not write the
-- waiting op's table (its call leaves that op waiting), and compact()
-- folds it before a role that may retries.
CREATE TABLE shelf (id int PRIMARY KEY, stock gcounter);
CREATE TABLE bin (id int PRIMARY KEY, stock gcounter);
SELECT replicate('shelf'), replicate('bin');
CREATE ROLE cv_shelf;
CREATE ROLE cv_bin;
GRANT SELECT, INSERT, UPDATE ON shelf TO cv_shelf;
GRANT SELECT, INSERT, UPDATE ON bin TO cv_bin;
SET ROLE cv_shelf;
SELECT op_id, outcome, reason FROM apply(
    ROW('cart:2', 'cart', 'public.shelf', '{"id":1}', 'stock', 1, 0, '{cart:1}', '{"counts":{"cart":2}}'::gcounter::bytea, NULL)::op);
SET ROLE cv_bin;
SELECT op_id, outcome, reason FROM apply(
    ROW('cart:1', 'cart', 'public.bin', '{"id":1}', 'stock', 1, 0, '{}', '{"counts":{"cart":1}}'::gcounter::bytea, NULL)::op);
RESET ROLE;
SELECT op_id, missing FROM pending;
SELECT ops_removed > 0 AS folded FROM compact();
SELECT op_id, outcome FROM op_log WHERE actor = 'cart' ORDER BY seq;
SET ROLE cv_shelf;
-- (The call retries what waits first, then takes the cart's next op.)
SELECT op_id, outcome, reason FROM apply(
    ROW('cart:3', 'cart', 'public.shelf', '{"id":1}', 'stock', 1, 0, '{cart:2}', '{"counts":{"cart":3}}'::gcounter::bytea, NULL)::op);
RESET ROLE;
SELECT id, value(stock) AS stock FROM shelf;
SELECT count(*) AS still_pending FROM pending;
DROP TABLE shelf, bin;
DROP ROLE cv_shelf, cv_bin;

-- An op kept aside here was not counted by the stability that lets a
-- removal's dots go: its row keeps them until it is applied or given up.
-- phone8 adds a long tag, refused here (too large for this session's
-- limit); a tablet's removal of it (made where the add was applied) is
-- applied and folded. Replayed later, the add stays removed.
CREATE TABLE crate (id int PRIMARY KEY, tags orset);
SELECT replicate('crate');
SELECT format('{"context":{"phone8":[[1,1]]},"entries":[["phone8",1,"%s"]]}', repeat('x', 1100))::orset::bytea AS long_add \gset
SET converge.max_value_bytes = 1024;
SELECT op_id, outcome, split_part(reason, ':', 1) AS reason FROM apply(
    ROW('phone8:1', 'phone8', 'public.crate', '{"id":1}', 'tags', 1, 0, '{}', :'long_add'::bytea, NULL)::op);
RESET converge.max_value_bytes;
SELECT op_id, outcome, reason FROM apply(
    ROW('tab8:1', 'tab8', 'public.crate', '{"id":1}', 'tags', 1, 0, '{}', '{"context":{"phone8":[[1,1]]}}'::orset::bytea, NULL)::op);
SELECT ops_removed > 0 AS folded FROM compact();
SELECT tags::text AS kept FROM crate;   -- (the removal's context stays)
SELECT op_id, outcome FROM replay('phone8:1');
SELECT id, cardinality(elements(tags)) AS tags FROM crate;
DROP TABLE crate;

-- Settings and rights.
SHOW converge.max_peer_lag_bytes;
SHOW converge.apply_lock_timeout;
CREATE ROLE cv_compactor;
SET ROLE cv_compactor;
\set VERBOSITY sqlstate
SELECT * FROM compact();
\set VERBOSITY default
SELECT applied > 0 AS counted FROM stats;   -- readable by everyone
RESET ROLE;
DROP ROLE cv_compactor;
\c regression
DROP DATABASE converge_regress_lisbon;
