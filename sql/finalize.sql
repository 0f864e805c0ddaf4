-- Objects pgrx does not generate: binary I/O, operators, casts,
-- aggregates, and a COMMENT on every type and function.
-- Runs last (finalize), after every type and function exists.

-- gcounter
ALTER TYPE gcounter SET (RECEIVE = gcounter_recv, SEND = gcounter_send);
CREATE OPERATOR = (LEFTARG = gcounter, RIGHTARG = gcounter, FUNCTION = gcounter_eq, COMMUTATOR = =, NEGATOR = <>, RESTRICT = eqsel, JOIN = eqjoinsel);
CREATE OPERATOR <> (LEFTARG = gcounter, RIGHTARG = gcounter, FUNCTION = gcounter_ne, COMMUTATOR = <>, NEGATOR = =, RESTRICT = neqsel, JOIN = neqjoinsel);
CREATE OPERATOR || (LEFTARG = gcounter, RIGHTARG = gcounter, FUNCTION = merge);
CREATE CAST (gcounter AS jsonb) WITH FUNCTION gcounter_to_jsonb(gcounter);
CREATE CAST (gcounter AS bytea) WITH FUNCTION gcounter_send(gcounter);
CREATE CAST (bytea AS gcounter) WITH FUNCTION gcounter_from_bytea(bytea);
COMMENT ON FUNCTION gcounter_from_bytea(bytea) IS 'bytea::gcounter: decode the binary form, with the same validation as binary input (22P03 on bad bytes).';
CREATE AGGREGATE merge_agg(gcounter) (
    SFUNC = gcounter_agg_trans, STYPE = internal, FINALFUNC = gcounter_agg_final,
    COMBINEFUNC = gcounter_agg_combine, SERIALFUNC = gcounter_agg_serial, DESERIALFUNC = gcounter_agg_deserial,
    PARALLEL = SAFE);
COMMENT ON TYPE gcounter IS 'converge CRDT: grow-only counter: one count per node, value is their sum. Text form is canonical JSON of the full state; the empty value is ''{}''.';
COMMENT ON FUNCTION gcounter_in(cstring) IS 'Text input of gcounter: strict canonical JSON of the full state.';
COMMENT ON FUNCTION gcounter_out(gcounter) IS 'Text output of gcounter: canonical JSON of the full state (equal states print equal text).';
COMMENT ON FUNCTION gcounter_recv(internal) IS 'Binary input of gcounter: [format version 1, type tag, postcard body], validated and canonical.';
COMMENT ON FUNCTION gcounter_send(gcounter) IS 'Binary output of gcounter: the stored form [format version, type tag, postcard body].';
COMMENT ON FUNCTION merge(gcounter, gcounter) IS 'Join of two gcounter states (commutative, associative, idempotent); NULL counts as empty, NULL with NULL is NULL.';
COMMENT ON FUNCTION delta(gcounter, gcounter) IS 'delta(new, old): the smallest gcounter d with merge(old, d) = merge(old, new); NULL old is empty, NULL new gives NULL.';
COMMENT ON FUNCTION gcounter_eq(gcounter, gcounter) IS 'Full-state equality of gcounter (support of =).';
COMMENT ON FUNCTION gcounter_ne(gcounter, gcounter) IS 'Full-state inequality of gcounter (support of <>).';
COMMENT ON FUNCTION gcounter_to_jsonb(gcounter) IS 'The user-level value of a gcounter as jsonb (support of the cast gcounter::jsonb).';
COMMENT ON FUNCTION gcounter_agg_trans(internal, gcounter) IS 'merge_agg(gcounter) transition: merges into an in-memory state, skipping NULLs.';
COMMENT ON FUNCTION gcounter_agg_combine(internal, internal) IS 'merge_agg(gcounter) combine step for parallel aggregation.';
COMMENT ON FUNCTION gcounter_agg_final(internal) IS 'merge_agg(gcounter) result; NULL when no non-NULL input.';
COMMENT ON FUNCTION gcounter_agg_serial(internal) IS 'merge_agg(gcounter) state serialization for parallel aggregation.';
COMMENT ON FUNCTION gcounter_agg_deserial(bytea, internal) IS 'merge_agg(gcounter) state deserialization for parallel aggregation.';
COMMENT ON AGGREGATE merge_agg(gcounter) IS 'Merge of all non-NULL gcounter values (NULL over no rows, like sum); parallel safe.';
COMMENT ON OPERATOR || (gcounter, gcounter) IS 'Merge of two gcounter values (same as merge(a, b)).';
COMMENT ON OPERATOR = (gcounter, gcounter) IS 'Full-state equality of gcounter.';
COMMENT ON OPERATOR <> (gcounter, gcounter) IS 'Full-state inequality of gcounter.';

-- pncounter
ALTER TYPE pncounter SET (RECEIVE = pncounter_recv, SEND = pncounter_send);
CREATE OPERATOR = (LEFTARG = pncounter, RIGHTARG = pncounter, FUNCTION = pncounter_eq, COMMUTATOR = =, NEGATOR = <>, RESTRICT = eqsel, JOIN = eqjoinsel);
CREATE OPERATOR <> (LEFTARG = pncounter, RIGHTARG = pncounter, FUNCTION = pncounter_ne, COMMUTATOR = <>, NEGATOR = =, RESTRICT = neqsel, JOIN = neqjoinsel);
CREATE OPERATOR || (LEFTARG = pncounter, RIGHTARG = pncounter, FUNCTION = merge);
CREATE CAST (pncounter AS jsonb) WITH FUNCTION pncounter_to_jsonb(pncounter);
CREATE CAST (pncounter AS bytea) WITH FUNCTION pncounter_send(pncounter);
CREATE CAST (bytea AS pncounter) WITH FUNCTION pncounter_from_bytea(bytea);
COMMENT ON FUNCTION pncounter_from_bytea(bytea) IS 'bytea::pncounter: decode the binary form, with the same validation as binary input (22P03 on bad bytes).';
CREATE AGGREGATE merge_agg(pncounter) (
    SFUNC = pncounter_agg_trans, STYPE = internal, FINALFUNC = pncounter_agg_final,
    COMBINEFUNC = pncounter_agg_combine, SERIALFUNC = pncounter_agg_serial, DESERIALFUNC = pncounter_agg_deserial,
    PARALLEL = SAFE);
COMMENT ON TYPE pncounter IS 'converge CRDT: counter that can go up and down (increments and decrements per node). Text form is canonical JSON of the full state; the empty value is ''{}''.';
COMMENT ON FUNCTION pncounter_in(cstring) IS 'Text input of pncounter: strict canonical JSON of the full state.';
COMMENT ON FUNCTION pncounter_out(pncounter) IS 'Text output of pncounter: canonical JSON of the full state (equal states print equal text).';
COMMENT ON FUNCTION pncounter_recv(internal) IS 'Binary input of pncounter: [format version 1, type tag, postcard body], validated and canonical.';
COMMENT ON FUNCTION pncounter_send(pncounter) IS 'Binary output of pncounter: the stored form [format version, type tag, postcard body].';
COMMENT ON FUNCTION merge(pncounter, pncounter) IS 'Join of two pncounter states (commutative, associative, idempotent); NULL counts as empty, NULL with NULL is NULL.';
COMMENT ON FUNCTION delta(pncounter, pncounter) IS 'delta(new, old): the smallest pncounter d with merge(old, d) = merge(old, new); NULL old is empty, NULL new gives NULL.';
COMMENT ON FUNCTION pncounter_eq(pncounter, pncounter) IS 'Full-state equality of pncounter (support of =).';
COMMENT ON FUNCTION pncounter_ne(pncounter, pncounter) IS 'Full-state inequality of pncounter (support of <>).';
COMMENT ON FUNCTION pncounter_to_jsonb(pncounter) IS 'The user-level value of a pncounter as jsonb (support of the cast pncounter::jsonb).';
COMMENT ON FUNCTION pncounter_agg_trans(internal, pncounter) IS 'merge_agg(pncounter) transition: merges into an in-memory state, skipping NULLs.';
COMMENT ON FUNCTION pncounter_agg_combine(internal, internal) IS 'merge_agg(pncounter) combine step for parallel aggregation.';
COMMENT ON FUNCTION pncounter_agg_final(internal) IS 'merge_agg(pncounter) result; NULL when no non-NULL input.';
COMMENT ON FUNCTION pncounter_agg_serial(internal) IS 'merge_agg(pncounter) state serialization for parallel aggregation.';
COMMENT ON FUNCTION pncounter_agg_deserial(bytea, internal) IS 'merge_agg(pncounter) state deserialization for parallel aggregation.';
COMMENT ON AGGREGATE merge_agg(pncounter) IS 'Merge of all non-NULL pncounter values (NULL over no rows, like sum); parallel safe.';
COMMENT ON OPERATOR || (pncounter, pncounter) IS 'Merge of two pncounter values (same as merge(a, b)).';
COMMENT ON OPERATOR = (pncounter, pncounter) IS 'Full-state equality of pncounter.';
COMMENT ON OPERATOR <> (pncounter, pncounter) IS 'Full-state inequality of pncounter.';

-- bcounter
ALTER TYPE bcounter SET (RECEIVE = bcounter_recv, SEND = bcounter_send);
CREATE OPERATOR = (LEFTARG = bcounter, RIGHTARG = bcounter, FUNCTION = bcounter_eq, COMMUTATOR = =, NEGATOR = <>, RESTRICT = eqsel, JOIN = eqjoinsel);
CREATE OPERATOR <> (LEFTARG = bcounter, RIGHTARG = bcounter, FUNCTION = bcounter_ne, COMMUTATOR = <>, NEGATOR = =, RESTRICT = neqsel, JOIN = neqjoinsel);
CREATE OPERATOR || (LEFTARG = bcounter, RIGHTARG = bcounter, FUNCTION = merge);
CREATE CAST (bcounter AS jsonb) WITH FUNCTION bcounter_to_jsonb(bcounter);
CREATE CAST (bcounter AS bytea) WITH FUNCTION bcounter_send(bcounter);
CREATE CAST (bytea AS bcounter) WITH FUNCTION bcounter_from_bytea(bytea);
COMMENT ON FUNCTION bcounter_from_bytea(bytea) IS 'bytea::bcounter: decode the binary form, with the same validation as binary input (22P03 on bad bytes).';
CREATE AGGREGATE merge_agg(bcounter) (
    SFUNC = bcounter_agg_trans, STYPE = internal, FINALFUNC = bcounter_agg_final,
    COMBINEFUNC = bcounter_agg_combine, SERIALFUNC = bcounter_agg_serial, DESERIALFUNC = bcounter_agg_deserial,
    PARALLEL = SAFE);
COMMENT ON TYPE bcounter IS 'converge CRDT: bounded (escrow) counter that never goes below zero: a node spends only rights it holds. Text form is canonical JSON of the full state; the empty value is ''{}''.';
COMMENT ON FUNCTION bcounter_in(cstring) IS 'Text input of bcounter: strict canonical JSON of the full state.';
COMMENT ON FUNCTION bcounter_out(bcounter) IS 'Text output of bcounter: canonical JSON of the full state (equal states print equal text).';
COMMENT ON FUNCTION bcounter_recv(internal) IS 'Binary input of bcounter: [format version 1, type tag, postcard body], validated and canonical.';
COMMENT ON FUNCTION bcounter_send(bcounter) IS 'Binary output of bcounter: the stored form [format version, type tag, postcard body].';
COMMENT ON FUNCTION merge(bcounter, bcounter) IS 'Join of two bcounter states (commutative, associative, idempotent); NULL counts as empty, NULL with NULL is NULL.';
COMMENT ON FUNCTION delta(bcounter, bcounter) IS 'delta(new, old): the smallest bcounter d with merge(old, d) = merge(old, new); NULL old is empty, NULL new gives NULL.';
COMMENT ON FUNCTION bcounter_eq(bcounter, bcounter) IS 'Full-state equality of bcounter (support of =).';
COMMENT ON FUNCTION bcounter_ne(bcounter, bcounter) IS 'Full-state inequality of bcounter (support of <>).';
COMMENT ON FUNCTION bcounter_to_jsonb(bcounter) IS 'The user-level value of a bcounter as jsonb (support of the cast bcounter::jsonb).';
COMMENT ON FUNCTION bcounter_agg_trans(internal, bcounter) IS 'merge_agg(bcounter) transition: merges into an in-memory state, skipping NULLs.';
COMMENT ON FUNCTION bcounter_agg_combine(internal, internal) IS 'merge_agg(bcounter) combine step for parallel aggregation.';
COMMENT ON FUNCTION bcounter_agg_final(internal) IS 'merge_agg(bcounter) result; NULL when no non-NULL input.';
COMMENT ON FUNCTION bcounter_agg_serial(internal) IS 'merge_agg(bcounter) state serialization for parallel aggregation.';
COMMENT ON FUNCTION bcounter_agg_deserial(bytea, internal) IS 'merge_agg(bcounter) state deserialization for parallel aggregation.';
COMMENT ON AGGREGATE merge_agg(bcounter) IS 'Merge of all non-NULL bcounter values (NULL over no rows, like sum); parallel safe.';
COMMENT ON OPERATOR || (bcounter, bcounter) IS 'Merge of two bcounter values (same as merge(a, b)).';
COMMENT ON OPERATOR = (bcounter, bcounter) IS 'Full-state equality of bcounter.';
COMMENT ON OPERATOR <> (bcounter, bcounter) IS 'Full-state inequality of bcounter.';

-- gset
ALTER TYPE gset SET (RECEIVE = gset_recv, SEND = gset_send);
CREATE OPERATOR = (LEFTARG = gset, RIGHTARG = gset, FUNCTION = gset_eq, COMMUTATOR = =, NEGATOR = <>, RESTRICT = eqsel, JOIN = eqjoinsel);
CREATE OPERATOR <> (LEFTARG = gset, RIGHTARG = gset, FUNCTION = gset_ne, COMMUTATOR = <>, NEGATOR = =, RESTRICT = neqsel, JOIN = neqjoinsel);
CREATE OPERATOR || (LEFTARG = gset, RIGHTARG = gset, FUNCTION = merge);
CREATE CAST (gset AS jsonb) WITH FUNCTION gset_to_jsonb(gset);
CREATE CAST (gset AS bytea) WITH FUNCTION gset_send(gset);
CREATE CAST (bytea AS gset) WITH FUNCTION gset_from_bytea(bytea);
COMMENT ON FUNCTION gset_from_bytea(bytea) IS 'bytea::gset: decode the binary form, with the same validation as binary input (22P03 on bad bytes).';
CREATE AGGREGATE merge_agg(gset) (
    SFUNC = gset_agg_trans, STYPE = internal, FINALFUNC = gset_agg_final,
    COMBINEFUNC = gset_agg_combine, SERIALFUNC = gset_agg_serial, DESERIALFUNC = gset_agg_deserial,
    PARALLEL = SAFE);
COMMENT ON TYPE gset IS 'converge CRDT: grow-only set of text. Text form is canonical JSON of the full state; the empty value is ''{}''.';
COMMENT ON FUNCTION gset_in(cstring) IS 'Text input of gset: strict canonical JSON of the full state.';
COMMENT ON FUNCTION gset_out(gset) IS 'Text output of gset: canonical JSON of the full state (equal states print equal text).';
COMMENT ON FUNCTION gset_recv(internal) IS 'Binary input of gset: [format version 1, type tag, postcard body], validated and canonical.';
COMMENT ON FUNCTION gset_send(gset) IS 'Binary output of gset: the stored form [format version, type tag, postcard body].';
COMMENT ON FUNCTION merge(gset, gset) IS 'Join of two gset states (commutative, associative, idempotent); NULL counts as empty, NULL with NULL is NULL.';
COMMENT ON FUNCTION delta(gset, gset) IS 'delta(new, old): the smallest gset d with merge(old, d) = merge(old, new); NULL old is empty, NULL new gives NULL.';
COMMENT ON FUNCTION gset_eq(gset, gset) IS 'Full-state equality of gset (support of =).';
COMMENT ON FUNCTION gset_ne(gset, gset) IS 'Full-state inequality of gset (support of <>).';
COMMENT ON FUNCTION gset_to_jsonb(gset) IS 'The user-level value of a gset as jsonb (support of the cast gset::jsonb).';
COMMENT ON FUNCTION gset_agg_trans(internal, gset) IS 'merge_agg(gset) transition: merges into an in-memory state, skipping NULLs.';
COMMENT ON FUNCTION gset_agg_combine(internal, internal) IS 'merge_agg(gset) combine step for parallel aggregation.';
COMMENT ON FUNCTION gset_agg_final(internal) IS 'merge_agg(gset) result; NULL when no non-NULL input.';
COMMENT ON FUNCTION gset_agg_serial(internal) IS 'merge_agg(gset) state serialization for parallel aggregation.';
COMMENT ON FUNCTION gset_agg_deserial(bytea, internal) IS 'merge_agg(gset) state deserialization for parallel aggregation.';
COMMENT ON AGGREGATE merge_agg(gset) IS 'Merge of all non-NULL gset values (NULL over no rows, like sum); parallel safe.';
COMMENT ON OPERATOR || (gset, gset) IS 'Merge of two gset values (same as merge(a, b)).';
COMMENT ON OPERATOR = (gset, gset) IS 'Full-state equality of gset.';
COMMENT ON OPERATOR <> (gset, gset) IS 'Full-state inequality of gset.';

-- orset
ALTER TYPE orset SET (RECEIVE = orset_recv, SEND = orset_send);
CREATE OPERATOR = (LEFTARG = orset, RIGHTARG = orset, FUNCTION = orset_eq, COMMUTATOR = =, NEGATOR = <>, RESTRICT = eqsel, JOIN = eqjoinsel);
CREATE OPERATOR <> (LEFTARG = orset, RIGHTARG = orset, FUNCTION = orset_ne, COMMUTATOR = <>, NEGATOR = =, RESTRICT = neqsel, JOIN = neqjoinsel);
CREATE OPERATOR || (LEFTARG = orset, RIGHTARG = orset, FUNCTION = merge);
CREATE CAST (orset AS jsonb) WITH FUNCTION orset_to_jsonb(orset);
CREATE CAST (orset AS bytea) WITH FUNCTION orset_send(orset);
CREATE CAST (bytea AS orset) WITH FUNCTION orset_from_bytea(bytea);
COMMENT ON FUNCTION orset_from_bytea(bytea) IS 'bytea::orset: decode the binary form, with the same validation as binary input (22P03 on bad bytes).';
CREATE AGGREGATE merge_agg(orset) (
    SFUNC = orset_agg_trans, STYPE = internal, FINALFUNC = orset_agg_final,
    COMBINEFUNC = orset_agg_combine, SERIALFUNC = orset_agg_serial, DESERIALFUNC = orset_agg_deserial,
    PARALLEL = SAFE);
COMMENT ON TYPE orset IS 'converge CRDT: observed-remove set of text: an add wins over a concurrent remove. Text form is canonical JSON of the full state; the empty value is ''{}''.';
COMMENT ON FUNCTION orset_in(cstring) IS 'Text input of orset: strict canonical JSON of the full state.';
COMMENT ON FUNCTION orset_out(orset) IS 'Text output of orset: canonical JSON of the full state (equal states print equal text).';
COMMENT ON FUNCTION orset_recv(internal) IS 'Binary input of orset: [format version 1, type tag, postcard body], validated and canonical.';
COMMENT ON FUNCTION orset_send(orset) IS 'Binary output of orset: the stored form [format version, type tag, postcard body].';
COMMENT ON FUNCTION merge(orset, orset) IS 'Join of two orset states (commutative, associative, idempotent); NULL counts as empty, NULL with NULL is NULL.';
COMMENT ON FUNCTION delta(orset, orset) IS 'delta(new, old): the smallest orset d with merge(old, d) = merge(old, new); NULL old is empty, NULL new gives NULL.';
COMMENT ON FUNCTION orset_eq(orset, orset) IS 'Full-state equality of orset (support of =).';
COMMENT ON FUNCTION orset_ne(orset, orset) IS 'Full-state inequality of orset (support of <>).';
COMMENT ON FUNCTION orset_to_jsonb(orset) IS 'The user-level value of a orset as jsonb (support of the cast orset::jsonb).';
COMMENT ON FUNCTION orset_agg_trans(internal, orset) IS 'merge_agg(orset) transition: merges into an in-memory state, skipping NULLs.';
COMMENT ON FUNCTION orset_agg_combine(internal, internal) IS 'merge_agg(orset) combine step for parallel aggregation.';
COMMENT ON FUNCTION orset_agg_final(internal) IS 'merge_agg(orset) result; NULL when no non-NULL input.';
COMMENT ON FUNCTION orset_agg_serial(internal) IS 'merge_agg(orset) state serialization for parallel aggregation.';
COMMENT ON FUNCTION orset_agg_deserial(bytea, internal) IS 'merge_agg(orset) state deserialization for parallel aggregation.';
COMMENT ON AGGREGATE merge_agg(orset) IS 'Merge of all non-NULL orset values (NULL over no rows, like sum); parallel safe.';
COMMENT ON OPERATOR || (orset, orset) IS 'Merge of two orset values (same as merge(a, b)).';
COMMENT ON OPERATOR = (orset, orset) IS 'Full-state equality of orset.';
COMMENT ON OPERATOR <> (orset, orset) IS 'Full-state inequality of orset.';

-- lwwreg
ALTER TYPE lwwreg SET (RECEIVE = lwwreg_recv, SEND = lwwreg_send);
CREATE OPERATOR = (LEFTARG = lwwreg, RIGHTARG = lwwreg, FUNCTION = lwwreg_eq, COMMUTATOR = =, NEGATOR = <>, RESTRICT = eqsel, JOIN = eqjoinsel);
CREATE OPERATOR <> (LEFTARG = lwwreg, RIGHTARG = lwwreg, FUNCTION = lwwreg_ne, COMMUTATOR = <>, NEGATOR = =, RESTRICT = neqsel, JOIN = neqjoinsel);
CREATE OPERATOR || (LEFTARG = lwwreg, RIGHTARG = lwwreg, FUNCTION = merge);
CREATE CAST (lwwreg AS jsonb) WITH FUNCTION lwwreg_to_jsonb(lwwreg);
CREATE CAST (lwwreg AS bytea) WITH FUNCTION lwwreg_send(lwwreg);
CREATE CAST (bytea AS lwwreg) WITH FUNCTION lwwreg_from_bytea(bytea);
COMMENT ON FUNCTION lwwreg_from_bytea(bytea) IS 'bytea::lwwreg: decode the binary form, with the same validation as binary input (22P03 on bad bytes).';
CREATE AGGREGATE merge_agg(lwwreg) (
    SFUNC = lwwreg_agg_trans, STYPE = internal, FINALFUNC = lwwreg_agg_final,
    COMBINEFUNC = lwwreg_agg_combine, SERIALFUNC = lwwreg_agg_serial, DESERIALFUNC = lwwreg_agg_deserial,
    PARALLEL = SAFE);
COMMENT ON TYPE lwwreg IS 'converge CRDT: last-writer-wins register holding one jsonb value (hybrid logical clock, ties by node). Text form is canonical JSON of the full state; the empty value is ''{}''.';
COMMENT ON FUNCTION lwwreg_in(cstring) IS 'Text input of lwwreg: strict canonical JSON of the full state.';
COMMENT ON FUNCTION lwwreg_out(lwwreg) IS 'Text output of lwwreg: canonical JSON of the full state (equal states print equal text).';
COMMENT ON FUNCTION lwwreg_recv(internal) IS 'Binary input of lwwreg: [format version 1, type tag, postcard body], validated and canonical.';
COMMENT ON FUNCTION lwwreg_send(lwwreg) IS 'Binary output of lwwreg: the stored form [format version, type tag, postcard body].';
COMMENT ON FUNCTION merge(lwwreg, lwwreg) IS 'Join of two lwwreg states (commutative, associative, idempotent); NULL counts as empty, NULL with NULL is NULL.';
COMMENT ON FUNCTION delta(lwwreg, lwwreg) IS 'delta(new, old): the smallest lwwreg d with merge(old, d) = merge(old, new); NULL old is empty, NULL new gives NULL.';
COMMENT ON FUNCTION lwwreg_eq(lwwreg, lwwreg) IS 'Full-state equality of lwwreg (support of =).';
COMMENT ON FUNCTION lwwreg_ne(lwwreg, lwwreg) IS 'Full-state inequality of lwwreg (support of <>).';
COMMENT ON FUNCTION lwwreg_to_jsonb(lwwreg) IS 'The user-level value of a lwwreg as jsonb (support of the cast lwwreg::jsonb).';
COMMENT ON FUNCTION lwwreg_agg_trans(internal, lwwreg) IS 'merge_agg(lwwreg) transition: merges into an in-memory state, skipping NULLs.';
COMMENT ON FUNCTION lwwreg_agg_combine(internal, internal) IS 'merge_agg(lwwreg) combine step for parallel aggregation.';
COMMENT ON FUNCTION lwwreg_agg_final(internal) IS 'merge_agg(lwwreg) result; NULL when no non-NULL input.';
COMMENT ON FUNCTION lwwreg_agg_serial(internal) IS 'merge_agg(lwwreg) state serialization for parallel aggregation.';
COMMENT ON FUNCTION lwwreg_agg_deserial(bytea, internal) IS 'merge_agg(lwwreg) state deserialization for parallel aggregation.';
COMMENT ON AGGREGATE merge_agg(lwwreg) IS 'Merge of all non-NULL lwwreg values (NULL over no rows, like sum); parallel safe.';
COMMENT ON OPERATOR || (lwwreg, lwwreg) IS 'Merge of two lwwreg values (same as merge(a, b)).';
COMMENT ON OPERATOR = (lwwreg, lwwreg) IS 'Full-state equality of lwwreg.';
COMMENT ON OPERATOR <> (lwwreg, lwwreg) IS 'Full-state inequality of lwwreg.';

-- mvreg
ALTER TYPE mvreg SET (RECEIVE = mvreg_recv, SEND = mvreg_send);
CREATE OPERATOR = (LEFTARG = mvreg, RIGHTARG = mvreg, FUNCTION = mvreg_eq, COMMUTATOR = =, NEGATOR = <>, RESTRICT = eqsel, JOIN = eqjoinsel);
CREATE OPERATOR <> (LEFTARG = mvreg, RIGHTARG = mvreg, FUNCTION = mvreg_ne, COMMUTATOR = <>, NEGATOR = =, RESTRICT = neqsel, JOIN = neqjoinsel);
CREATE OPERATOR || (LEFTARG = mvreg, RIGHTARG = mvreg, FUNCTION = merge);
CREATE CAST (mvreg AS jsonb) WITH FUNCTION mvreg_to_jsonb(mvreg);
CREATE CAST (mvreg AS bytea) WITH FUNCTION mvreg_send(mvreg);
CREATE CAST (bytea AS mvreg) WITH FUNCTION mvreg_from_bytea(bytea);
COMMENT ON FUNCTION mvreg_from_bytea(bytea) IS 'bytea::mvreg: decode the binary form, with the same validation as binary input (22P03 on bad bytes).';
CREATE AGGREGATE merge_agg(mvreg) (
    SFUNC = mvreg_agg_trans, STYPE = internal, FINALFUNC = mvreg_agg_final,
    COMBINEFUNC = mvreg_agg_combine, SERIALFUNC = mvreg_agg_serial, DESERIALFUNC = mvreg_agg_deserial,
    PARALLEL = SAFE);
COMMENT ON TYPE mvreg IS 'converge CRDT: multi-value register: concurrent writes are all kept until a later write supersedes them. Text form is canonical JSON of the full state; the empty value is ''{}''.';
COMMENT ON FUNCTION mvreg_in(cstring) IS 'Text input of mvreg: strict canonical JSON of the full state.';
COMMENT ON FUNCTION mvreg_out(mvreg) IS 'Text output of mvreg: canonical JSON of the full state (equal states print equal text).';
COMMENT ON FUNCTION mvreg_recv(internal) IS 'Binary input of mvreg: [format version 1, type tag, postcard body], validated and canonical.';
COMMENT ON FUNCTION mvreg_send(mvreg) IS 'Binary output of mvreg: the stored form [format version, type tag, postcard body].';
COMMENT ON FUNCTION merge(mvreg, mvreg) IS 'Join of two mvreg states (commutative, associative, idempotent); NULL counts as empty, NULL with NULL is NULL.';
COMMENT ON FUNCTION delta(mvreg, mvreg) IS 'delta(new, old): the smallest mvreg d with merge(old, d) = merge(old, new); NULL old is empty, NULL new gives NULL.';
COMMENT ON FUNCTION mvreg_eq(mvreg, mvreg) IS 'Full-state equality of mvreg (support of =).';
COMMENT ON FUNCTION mvreg_ne(mvreg, mvreg) IS 'Full-state inequality of mvreg (support of <>).';
COMMENT ON FUNCTION mvreg_to_jsonb(mvreg) IS 'The user-level value of a mvreg as jsonb (support of the cast mvreg::jsonb).';
COMMENT ON FUNCTION mvreg_agg_trans(internal, mvreg) IS 'merge_agg(mvreg) transition: merges into an in-memory state, skipping NULLs.';
COMMENT ON FUNCTION mvreg_agg_combine(internal, internal) IS 'merge_agg(mvreg) combine step for parallel aggregation.';
COMMENT ON FUNCTION mvreg_agg_final(internal) IS 'merge_agg(mvreg) result; NULL when no non-NULL input.';
COMMENT ON FUNCTION mvreg_agg_serial(internal) IS 'merge_agg(mvreg) state serialization for parallel aggregation.';
COMMENT ON FUNCTION mvreg_agg_deserial(bytea, internal) IS 'merge_agg(mvreg) state deserialization for parallel aggregation.';
COMMENT ON AGGREGATE merge_agg(mvreg) IS 'Merge of all non-NULL mvreg values (NULL over no rows, like sum); parallel safe.';
COMMENT ON OPERATOR || (mvreg, mvreg) IS 'Merge of two mvreg values (same as merge(a, b)).';
COMMENT ON OPERATOR = (mvreg, mvreg) IS 'Full-state equality of mvreg.';
COMMENT ON OPERATOR <> (mvreg, mvreg) IS 'Full-state inequality of mvreg.';

-- lwwmap
ALTER TYPE lwwmap SET (RECEIVE = lwwmap_recv, SEND = lwwmap_send);
CREATE OPERATOR = (LEFTARG = lwwmap, RIGHTARG = lwwmap, FUNCTION = lwwmap_eq, COMMUTATOR = =, NEGATOR = <>, RESTRICT = eqsel, JOIN = eqjoinsel);
CREATE OPERATOR <> (LEFTARG = lwwmap, RIGHTARG = lwwmap, FUNCTION = lwwmap_ne, COMMUTATOR = <>, NEGATOR = =, RESTRICT = neqsel, JOIN = neqjoinsel);
CREATE OPERATOR || (LEFTARG = lwwmap, RIGHTARG = lwwmap, FUNCTION = merge);
CREATE CAST (lwwmap AS jsonb) WITH FUNCTION lwwmap_to_jsonb(lwwmap);
CREATE CAST (lwwmap AS bytea) WITH FUNCTION lwwmap_send(lwwmap);
CREATE CAST (bytea AS lwwmap) WITH FUNCTION lwwmap_from_bytea(bytea);
COMMENT ON FUNCTION lwwmap_from_bytea(bytea) IS 'bytea::lwwmap: decode the binary form, with the same validation as binary input (22P03 on bad bytes).';
CREATE AGGREGATE merge_agg(lwwmap) (
    SFUNC = lwwmap_agg_trans, STYPE = internal, FINALFUNC = lwwmap_agg_final,
    COMBINEFUNC = lwwmap_agg_combine, SERIALFUNC = lwwmap_agg_serial, DESERIALFUNC = lwwmap_agg_deserial,
    PARALLEL = SAFE);
COMMENT ON TYPE lwwmap IS 'converge CRDT: map text -> jsonb, each key last-writer-wins; removes are timestamped tombstones. Text form is canonical JSON of the full state; the empty value is ''{}''.';
COMMENT ON FUNCTION lwwmap_in(cstring) IS 'Text input of lwwmap: strict canonical JSON of the full state.';
COMMENT ON FUNCTION lwwmap_out(lwwmap) IS 'Text output of lwwmap: canonical JSON of the full state (equal states print equal text).';
COMMENT ON FUNCTION lwwmap_recv(internal) IS 'Binary input of lwwmap: [format version 1, type tag, postcard body], validated and canonical.';
COMMENT ON FUNCTION lwwmap_send(lwwmap) IS 'Binary output of lwwmap: the stored form [format version, type tag, postcard body].';
COMMENT ON FUNCTION merge(lwwmap, lwwmap) IS 'Join of two lwwmap states (commutative, associative, idempotent); NULL counts as empty, NULL with NULL is NULL.';
COMMENT ON FUNCTION delta(lwwmap, lwwmap) IS 'delta(new, old): the smallest lwwmap d with merge(old, d) = merge(old, new); NULL old is empty, NULL new gives NULL.';
COMMENT ON FUNCTION lwwmap_eq(lwwmap, lwwmap) IS 'Full-state equality of lwwmap (support of =).';
COMMENT ON FUNCTION lwwmap_ne(lwwmap, lwwmap) IS 'Full-state inequality of lwwmap (support of <>).';
COMMENT ON FUNCTION lwwmap_to_jsonb(lwwmap) IS 'The user-level value of a lwwmap as jsonb (support of the cast lwwmap::jsonb).';
COMMENT ON FUNCTION lwwmap_agg_trans(internal, lwwmap) IS 'merge_agg(lwwmap) transition: merges into an in-memory state, skipping NULLs.';
COMMENT ON FUNCTION lwwmap_agg_combine(internal, internal) IS 'merge_agg(lwwmap) combine step for parallel aggregation.';
COMMENT ON FUNCTION lwwmap_agg_final(internal) IS 'merge_agg(lwwmap) result; NULL when no non-NULL input.';
COMMENT ON FUNCTION lwwmap_agg_serial(internal) IS 'merge_agg(lwwmap) state serialization for parallel aggregation.';
COMMENT ON FUNCTION lwwmap_agg_deserial(bytea, internal) IS 'merge_agg(lwwmap) state deserialization for parallel aggregation.';
COMMENT ON AGGREGATE merge_agg(lwwmap) IS 'Merge of all non-NULL lwwmap values (NULL over no rows, like sum); parallel safe.';
COMMENT ON OPERATOR || (lwwmap, lwwmap) IS 'Merge of two lwwmap values (same as merge(a, b)).';
COMMENT ON OPERATOR = (lwwmap, lwwmap) IS 'Full-state equality of lwwmap.';
COMMENT ON OPERATOR <> (lwwmap, lwwmap) IS 'Full-state inequality of lwwmap.';

-- ormap
ALTER TYPE ormap SET (RECEIVE = ormap_recv, SEND = ormap_send);
CREATE OPERATOR = (LEFTARG = ormap, RIGHTARG = ormap, FUNCTION = ormap_eq, COMMUTATOR = =, NEGATOR = <>, RESTRICT = eqsel, JOIN = eqjoinsel);
CREATE OPERATOR <> (LEFTARG = ormap, RIGHTARG = ormap, FUNCTION = ormap_ne, COMMUTATOR = <>, NEGATOR = =, RESTRICT = neqsel, JOIN = neqjoinsel);
CREATE OPERATOR || (LEFTARG = ormap, RIGHTARG = ormap, FUNCTION = merge);
CREATE CAST (ormap AS jsonb) WITH FUNCTION ormap_to_jsonb(ormap);
CREATE CAST (ormap AS bytea) WITH FUNCTION ormap_send(ormap);
CREATE CAST (bytea AS ormap) WITH FUNCTION ormap_from_bytea(bytea);
COMMENT ON FUNCTION ormap_from_bytea(bytea) IS 'bytea::ormap: decode the binary form, with the same validation as binary input (22P03 on bad bytes).';
CREATE AGGREGATE merge_agg(ormap) (
    SFUNC = ormap_agg_trans, STYPE = internal, FINALFUNC = ormap_agg_final,
    COMBINEFUNC = ormap_agg_combine, SERIALFUNC = ormap_agg_serial, DESERIALFUNC = ormap_agg_deserial,
    PARALLEL = SAFE);
COMMENT ON TYPE ormap IS 'converge CRDT: observed-remove map text -> nested pncounter, orset or mvreg. Text form is canonical JSON of the full state; the empty value is ''{}''.';
COMMENT ON FUNCTION ormap_in(cstring) IS 'Text input of ormap: strict canonical JSON of the full state.';
COMMENT ON FUNCTION ormap_out(ormap) IS 'Text output of ormap: canonical JSON of the full state (equal states print equal text).';
COMMENT ON FUNCTION ormap_recv(internal) IS 'Binary input of ormap: [format version, type tag, postcard body], validated and canonical (version 2: a delta that says per key what it superseded).';
COMMENT ON FUNCTION ormap_send(ormap) IS 'Binary output of ormap: the stored form [format version, type tag, postcard body].';
COMMENT ON FUNCTION merge(ormap, ormap) IS 'Join of two ormap states (commutative, associative, idempotent); NULL counts as empty, NULL with NULL is NULL.';
COMMENT ON FUNCTION delta(ormap, ormap) IS 'delta(new, old): the smallest ormap d with merge(old, d) = merge(old, new), saying per key what new superseded of old (covers); NULL old is empty, NULL new gives NULL.';
COMMENT ON FUNCTION ormap_eq(ormap, ormap) IS 'Full-state equality of ormap (support of =).';
COMMENT ON FUNCTION ormap_ne(ormap, ormap) IS 'Full-state inequality of ormap (support of <>).';
COMMENT ON FUNCTION ormap_to_jsonb(ormap) IS 'The user-level value of a ormap as jsonb (support of the cast ormap::jsonb).';
COMMENT ON FUNCTION ormap_agg_trans(internal, ormap) IS 'merge_agg(ormap) transition: merges into an in-memory state, skipping NULLs.';
COMMENT ON FUNCTION ormap_agg_combine(internal, internal) IS 'merge_agg(ormap) combine step for parallel aggregation.';
COMMENT ON FUNCTION ormap_agg_final(internal) IS 'merge_agg(ormap) result; NULL when no non-NULL input.';
COMMENT ON FUNCTION ormap_agg_serial(internal) IS 'merge_agg(ormap) state serialization for parallel aggregation.';
COMMENT ON FUNCTION ormap_agg_deserial(bytea, internal) IS 'merge_agg(ormap) state deserialization for parallel aggregation.';
COMMENT ON AGGREGATE merge_agg(ormap) IS 'Merge of all non-NULL ormap values (NULL over no rows, like sum); parallel safe.';
COMMENT ON OPERATOR || (ormap, ormap) IS 'Merge of two ormap values (same as merge(a, b)).';
COMMENT ON OPERATOR = (ormap, ormap) IS 'Full-state equality of ormap.';
COMMENT ON OPERATOR <> (ormap, ormap) IS 'Full-state inequality of ormap.';

-- mutators, readers and node identity
COMMENT ON FUNCTION set_node(text) IS 'Set this database''s node identity (stored durably with a uuid). Same name again: no-op; another name after data exists: error.';
COMMENT ON FUNCTION node() IS 'This database''s node name, or NULL if converge.set_node has not been called.';
COMMENT ON FUNCTION incr(gcounter, bigint) IS 'Add n (>= 0) for this node; NULL state counts as empty. 22023 for negative n, 22003 past bigint.';
COMMENT ON FUNCTION value(gcounter) IS 'The counter value (sum over nodes).';
COMMENT ON FUNCTION incr(pncounter, bigint) IS 'Add n for this node (a negative n decrements). 22003 past bigint.';
COMMENT ON FUNCTION decr(pncounter, bigint) IS 'Subtract n for this node (a negative n increments). 22003 past bigint.';
COMMENT ON FUNCTION value(pncounter) IS 'The counter value (increments minus decrements).';
COMMENT ON FUNCTION incr(bcounter, bigint) IS 'Add n (>= 0) and grant this node n rights to spend.';
COMMENT ON FUNCTION decr(bcounter, bigint) IS 'Subtract n, spending this node''s rights; 55000 unless this node holds n rights.';
COMMENT ON FUNCTION transfer(bcounter, text, bigint) IS 'transfer(c, to_node, n): move n of this node''s rights to to_node; 55000 without enough rights.';
COMMENT ON FUNCTION value(bcounter) IS 'The counter value (never below zero for states built by converge mutators).';
COMMENT ON FUNCTION rights(bcounter) IS 'Rights this node may still spend.';
COMMENT ON FUNCTION rights(bcounter, text) IS 'Rights the named node may still spend.';
COMMENT ON FUNCTION add(gset, text) IS 'Add an element.';
COMMENT ON FUNCTION elements(gset) IS 'The elements, sorted.';
COMMENT ON FUNCTION contains(gset, text) IS 'Whether the element is in the set.';
COMMENT ON FUNCTION size(gset) IS 'Number of elements.';
COMMENT ON FUNCTION add(orset, text) IS 'Add an element under a fresh dot of this node.';
COMMENT ON FUNCTION remove(orset, text) IS 'Remove the element as observed here; a concurrent add elsewhere survives. Absent element: no-op.';
COMMENT ON FUNCTION elements(orset) IS 'The elements, sorted.';
COMMENT ON FUNCTION contains(orset, text) IS 'Whether the element is in the set.';
COMMENT ON FUNCTION size(orset) IS 'Number of distinct elements.';
COMMENT ON FUNCTION assign(lwwreg, jsonb) IS 'Write a value with a hybrid-logical-clock timestamp newer than any in the register.';
COMMENT ON FUNCTION value(lwwreg) IS 'The current value (NULL for an empty register).';
COMMENT ON FUNCTION assign(mvreg, jsonb) IS 'Write a value that supersedes every value observed here.';
COMMENT ON FUNCTION all_values(mvreg) IS 'The distinct current values, sorted.';
COMMENT ON FUNCTION is_conflict(mvreg) IS 'True when more than one distinct value is current.';
COMMENT ON FUNCTION put(lwwmap, text, jsonb) IS 'Set key k to v with a fresh timestamp.';
COMMENT ON FUNCTION remove(lwwmap, text) IS 'Write a timestamped tombstone for k (even if absent here, so it beats older puts elsewhere).';
COMMENT ON FUNCTION get(lwwmap, text) IS 'The value at k, or NULL.';
COMMENT ON FUNCTION keys(lwwmap) IS 'The present keys, sorted.';
COMMENT ON FUNCTION to_jsonb(lwwmap) IS 'The map as a jsonb object.';
COMMENT ON FUNCTION incr(ormap, text, bigint) IS 'Add n to the counter at key k (creating it). 42804 if k holds another nested type.';
COMMENT ON FUNCTION decr(ormap, text, bigint) IS 'Subtract n from the counter at key k. 42804 if k holds another nested type.';
COMMENT ON FUNCTION add(ormap, text, text) IS 'Add an element to the set at key k. 42804 if k holds another nested type.';
COMMENT ON FUNCTION remove(ormap, text, text) IS 'Remove an element from the set at key k as observed here. 42804 if k holds another nested type.';
COMMENT ON FUNCTION assign(ormap, text, jsonb) IS 'Write the register at key k. 42804 if k holds another nested type.';
COMMENT ON FUNCTION remove(ormap, text) IS 'Remove key k as observed here; concurrent updates elsewhere keep it alive with only those updates.';
COMMENT ON FUNCTION get(ormap, text) IS 'The nested value at k as jsonb (counter: number; set: sorted array; register: sorted array of values; concurrent types: {"conflict": {...}}), or NULL.';
COMMENT ON FUNCTION keys(ormap) IS 'The present keys, sorted.';
COMMENT ON FUNCTION to_jsonb(ormap) IS 'The map as a jsonb object of get(m, k) for every key.';

-- seqtext
ALTER TYPE seqtext SET (RECEIVE = seqtext_recv, SEND = seqtext_send);
CREATE OPERATOR = (LEFTARG = seqtext, RIGHTARG = seqtext, FUNCTION = seqtext_eq, COMMUTATOR = =, NEGATOR = <>, RESTRICT = eqsel, JOIN = eqjoinsel);
CREATE OPERATOR <> (LEFTARG = seqtext, RIGHTARG = seqtext, FUNCTION = seqtext_ne, COMMUTATOR = <>, NEGATOR = =, RESTRICT = neqsel, JOIN = neqjoinsel);
CREATE OPERATOR || (LEFTARG = seqtext, RIGHTARG = seqtext, FUNCTION = merge);
CREATE CAST (seqtext AS jsonb) WITH FUNCTION seqtext_to_jsonb(seqtext);
CREATE CAST (seqtext AS bytea) WITH FUNCTION seqtext_send(seqtext);
CREATE CAST (bytea AS seqtext) WITH FUNCTION seqtext_from_bytea(bytea);
COMMENT ON FUNCTION seqtext_from_bytea(bytea) IS 'bytea::seqtext: decode the binary form, with the same validation as binary input (22P03 on bad bytes).';
CREATE AGGREGATE merge_agg(seqtext) (
    SFUNC = seqtext_agg_trans, STYPE = internal, FINALFUNC = seqtext_agg_final,
    COMBINEFUNC = seqtext_agg_combine, SERIALFUNC = seqtext_agg_serial, DESERIALFUNC = seqtext_agg_deserial,
    PARALLEL = SAFE);
COMMENT ON TYPE seqtext IS 'converge CRDT: collaborative text (a sequence CRDT): concurrent inserts are all kept, typed runs never interleave, a delete removes exactly the characters its node saw. Positions count characters. Text form is canonical JSON of the full state; the empty value is ''{}''.';
COMMENT ON FUNCTION seqtext_in(cstring) IS 'Text input of seqtext: strict canonical JSON of the full state.';
COMMENT ON FUNCTION seqtext_out(seqtext) IS 'Text output of seqtext: canonical JSON of the full state (equal states print equal text).';
COMMENT ON FUNCTION seqtext_recv(internal) IS 'Binary input of seqtext: [format version 1, type tag, postcard body], validated and canonical.';
COMMENT ON FUNCTION seqtext_send(seqtext) IS 'Binary output of seqtext: the stored form [format version, type tag, postcard body].';
COMMENT ON FUNCTION merge(seqtext, seqtext) IS 'Join of two seqtext states (commutative, associative, idempotent); NULL counts as empty, NULL with NULL is NULL.';
COMMENT ON FUNCTION delta(seqtext, seqtext) IS 'delta(new, old): the smallest seqtext d with merge(old, d) = merge(old, new); NULL old is empty, NULL new gives NULL.';
COMMENT ON FUNCTION seqtext_eq(seqtext, seqtext) IS 'Full-state equality of seqtext (support of =).';
COMMENT ON FUNCTION seqtext_ne(seqtext, seqtext) IS 'Full-state inequality of seqtext (support of <>).';
COMMENT ON FUNCTION seqtext_to_jsonb(seqtext) IS 'The user-level value of a seqtext (its text) as jsonb (support of the cast seqtext::jsonb).';
COMMENT ON FUNCTION seqtext_agg_trans(internal, seqtext) IS 'merge_agg(seqtext) transition: merges into an in-memory state, skipping NULLs.';
COMMENT ON FUNCTION seqtext_agg_combine(internal, internal) IS 'merge_agg(seqtext) combine step for parallel aggregation.';
COMMENT ON FUNCTION seqtext_agg_final(internal) IS 'merge_agg(seqtext) result; NULL when no non-NULL input.';
COMMENT ON FUNCTION seqtext_agg_serial(internal) IS 'merge_agg(seqtext) state serialization for parallel aggregation.';
COMMENT ON FUNCTION seqtext_agg_deserial(bytea, internal) IS 'merge_agg(seqtext) state deserialization for parallel aggregation.';
COMMENT ON AGGREGATE merge_agg(seqtext) IS 'Merge of all non-NULL seqtext values (NULL over no rows, like sum); parallel safe.';
COMMENT ON OPERATOR || (seqtext, seqtext) IS 'Merge of two seqtext values (same as merge(a, b)).';
COMMENT ON OPERATOR = (seqtext, seqtext) IS 'Full-state equality of seqtext.';
COMMENT ON OPERATOR <> (seqtext, seqtext) IS 'Full-state inequality of seqtext.';

COMMENT ON FUNCTION insert(seqtext, bigint, text) IS 'insert(t, pos, s): insert s before the character at pos (0-based, in characters; pos = length(t) appends). One dot per character. 22023 for a position outside the text.';
COMMENT ON FUNCTION delete(seqtext, bigint, bigint) IS 'delete(t, pos, n): delete n characters from pos; text inserted concurrently elsewhere inside the range survives. 22023 for a range outside the text.';
COMMENT ON FUNCTION value(seqtext) IS 'The text.';
COMMENT ON FUNCTION length(seqtext) IS 'The length of the text in characters (code points).';

-- Security (SPEC section 7; docs/security.md). Everyday use needs no
-- superuser: the schema, the types and their functions belong to PUBLIC.
-- converge's internal tables are written only as their owner, by
-- converge's own code (src/security.rs); readers of them get what they may.
GRANT USAGE ON SCHEMA converge TO PUBLIC;
GRANT SELECT ON converge.node_identity, converge.replicated, converge.actor_frontier, converge.log_horizon,
                converge.op_outcomes TO PUBLIC;
-- The op log: each role sees the ops of the tables it may SELECT.
ALTER TABLE converge.op_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY op_log_readable ON converge.op_log FOR SELECT USING (converge.may_read(target_table));
GRANT SELECT ON converge.op_log TO PUBLIC;
GRANT SELECT ON converge.quarantine TO PUBLIC;
-- Buffered ops, the same way.
ALTER TABLE converge.pending_ops ENABLE ROW LEVEL SECURITY;
CREATE POLICY pending_ops_readable ON converge.pending_ops FOR SELECT USING (converge.may_read((op).target_table));
GRANT SELECT ON converge.pending_ops, converge.pending TO PUBLIC;
-- Administration and internal steps: not for PUBLIC.
REVOKE ALL ON FUNCTION converge.set_node(text), converge.start_worker(), converge.retry_pending(),
    converge.replicate_layout(regclass), converge.forget_layout(oid) FROM PUBLIC;
-- apply_batch's body without its locks and retry (top_level false), for
-- retry_pending's passes only.
REVOKE ALL ON FUNCTION converge.apply_ops(converge.op[], text, boolean) FROM PUBLIC;

COMMENT ON FUNCTION converge.may_read(text) IS 'Internal (row security of converge.op_log, pending_ops and requests): whether the acting role may SELECT the table an op targets, with no row security of that table applying to it (peer roles read every op).';
COMMENT ON FUNCTION converge.may_write(text, text) IS 'Internal: whether the acting role may apply ops of a column to a table (INSERT and UPDATE; DELETE too for row ops).';
COMMENT ON FUNCTION converge.may_ask(text, text) IS 'Internal: whether the acting role may make a request of a column of a table (UPDATE on the column), for converge.retry_pending.';
COMMENT ON FUNCTION converge.applying() IS 'Internal: whether converge is merging changes that are already ops (the op trigger''s WHEN clause skips those rows).';
COMMENT ON FUNCTION converge.acting_role() IS 'The role converge acts for: the caller of the current converge function, also inside converge''s internal steps.';
COMMENT ON FUNCTION converge.worker_problem_here() IS 'Why no background worker can serve this database (the no_worker state of converge.peers), or NULL.';
COMMENT ON FUNCTION converge.start_worker() IS 'Internal: start this database''s background worker when the transaction commits (CREATE EXTENSION and add_peer do).';
COMMENT ON FUNCTION converge.replicate_table(oid) IS 'Internal: the body of converge.replicate (checks that the caller owns the table).';

-- The casts and the row security policies say what they are too.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['gcounter', 'pncounter', 'bcounter', 'gset', 'orset', 'lwwreg', 'mvreg', 'lwwmap', 'ormap', 'seqtext'] LOOP
        EXECUTE format('COMMENT ON CAST (converge.%I AS jsonb) IS %L', t,
                       format('The user-level value of a %s as jsonb (as converge.to_jsonb gives it).', t));
        EXECUTE format('COMMENT ON CAST (converge.%I AS bytea) IS %L', t,
                       format('The binary form of a %s: [format version, type tag, postcard body].', t));
        EXECUTE format('COMMENT ON CAST (bytea AS converge.%I) IS %L', t,
                       format('A %s from its binary form, validated as binary input is (22P03 on bad bytes).', t));
    END LOOP;
END $$;
COMMENT ON POLICY op_log_readable ON converge.op_log IS 'A role reads the ops of the tables it may SELECT (converge.may_read); peer roles read every op.';
COMMENT ON POLICY pending_ops_readable ON converge.pending_ops IS 'A role reads the waiting ops of the tables it may SELECT (converge.may_read); peer roles read every op.';

-- This database gets its background worker as soon as CREATE EXTENSION commits.
SELECT converge.start_worker();
