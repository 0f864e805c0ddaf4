-- Operation log and idempotent apply (SPEC section 3).
--
-- An op is an envelope around a delta. Applying = merging the delta into the
-- target row, so repeats are harmless; the op_id makes them visible
-- ('duplicate') and lets ops reaching a node by two paths be deduplicated.

CREATE TYPE converge.op AS (
    op_id          text,     -- 'actor:counter'
    actor          text,
    target_table   text,
    target_key     jsonb,    -- primary key columns -> values
    target_column  text,
    schema_version int,
    epoch          bigint,
    deps           text[],   -- op_ids this op depends on
    delta          bytea,    -- the delta in the column type's binary form
    signature      bytea
);
COMMENT ON TYPE converge.op IS 'An operation: envelope (who, what, causal context) plus a CRDT delta in binary form. op::text round-trips.';

CREATE TABLE converge.replicated (
    table_name   regclass PRIMARY KEY,
    key_columns  text[] NOT NULL,
    crdt_columns jsonb NOT NULL,          -- column name -> converge type name
    other_columns text[] NOT NULL DEFAULT '{}',  -- the rest: last writer wins, shipped as row ops
    row_expr     text NOT NULL DEFAULT '',      -- jsonb_build_object arguments reading other_columns from $1
    marked_at    timestamptz NOT NULL DEFAULT now(),
    dropped_columns text[] NOT NULL DEFAULT '{}', -- names ops and bases may still use (sql/ddl.sql)
    key_types    regtype[] NOT NULL DEFAULT '{}',   -- of key_columns (sql/ddl.sql: a key may only widen)
    key_typmods  int[] NOT NULL DEFAULT '{}',
    key_collations text[] NOT NULL DEFAULT '{}',
    -- The newest clock of the row tombstones compact() dropped: a local
    -- write of a key with no row state writes newer (src/row_ops.rs).
    tombstone_clock converge.lwwmap,
    -- Whether ops sent through converge.apply (offline clients) may write
    -- it here; while they may, here or at a peer, compact() keeps its row
    -- tombstones and seqtext deleted characters (converge.set_client_writes,
    -- docs/operations.md).
    client_writes boolean NOT NULL DEFAULT true
);
COMMENT ON TABLE converge.replicated IS 'Tables marked with converge.replicate(): their CRDT column changes are recorded as ops.';

-- Row-level state of replicated rows, the same on every node once the same
-- ops are applied. A row op (target_column '') carries an lwwmap delta: the
-- non-CRDT columns (last writer wins by hybrid logical clock) and "$live"
-- (true on INSERT, false on DELETE). A row is present while "$live" is not
-- false. A deleted row's CRDT state moves to `stash`, deltas that arrive
-- for it are merged there, and a later insert of the key resumes it: the
-- state of a key is the merge of every delta ever made to it, whichever
-- order the inserts, deletes and edits arrive in.
CREATE TABLE converge.row_state (
    tbl        regclass NOT NULL,
    target_key jsonb NOT NULL,
    clock      converge.lwwmap NOT NULL,
    live       boolean NOT NULL,
    stash      jsonb NOT NULL DEFAULT '{}',   -- column -> CRDT text, while deleted
    PRIMARY KEY (tbl, target_key)
) WITH (fillfactor = 75);
-- Every row op rewrites its row's entry: room left on each page keeps
-- those updates HOT (no new entry in the jsonb-keyed primary key).
-- Finds a table's tombstones at once (most tables have none).
CREATE INDEX row_state_dead ON converge.row_state (tbl) WHERE NOT live;
COMMENT ON TABLE converge.row_state IS 'Per replicated row: last-writer-wins clock of its non-CRDT columns and liveness (row tombstones), and the CRDT state of deleted rows.';

CREATE TABLE converge.op_log (
    seq            bigserial PRIMARY KEY,  -- local order of recording (respects deps)
    op_id          text NOT NULL,
    actor          text NOT NULL,
    counter        bigint NOT NULL,
    target_table   text,
    target_key     jsonb,
    target_column  text,
    schema_version int,
    epoch          bigint,
    deps           text[],
    delta          bytea,
    signature      bytea,
    outcome        text NOT NULL CHECK (outcome IN ('applied', 'duplicate', 'buffered', 'rejected', 'quarantined', 'superseded')),
    reason         text,
    origin         text NOT NULL,          -- 'local' or who delivered it
    received_at    timestamptz NOT NULL DEFAULT now()
);
-- The dedupe gate: an op (actor, counter) is applied at most once.
CREATE UNIQUE INDEX op_log_applied_once ON converge.op_log (actor, counter) WHERE outcome = 'applied';
-- Rejected and quarantined ops, found by op_id for replay and the quarantine view.
CREATE INDEX op_log_problems ON converge.op_log (op_id) WHERE outcome IN ('rejected', 'quarantined');
-- The same by actor, for a client that reads its own refusals at each
-- push (crates/converge-client, learn_refusals): the quarantine view
-- takes a condition on its op_id's actor into its scan.
CREATE INDEX op_log_problems_by_actor ON converge.op_log (converge.op_id_actor(op_id)) WHERE outcome IN ('rejected', 'quarantined');
-- Voids (src/apply/voids.rs), found by the op they give up.
CREATE INDEX op_log_voids ON converge.op_log (actor, counter) WHERE target_table = 'converge.void';
COMMENT ON TABLE converge.op_log IS 'Every op this node made or received, with its outcome: applied, duplicate, buffered, rejected (with reason), quarantined or superseded (by a repair, whose id the reason names; a void a real op overtook, ''void overtaken''; an op of this node whose void a join took, ''void taken at join'').';

CREATE TABLE converge.pending_ops (
    op_id       text PRIMARY KEY,
    op          converge.op NOT NULL,
    missing     text[] NOT NULL,
    origin      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE converge.pending_ops IS 'Ops buffered until the ops they depend on arrive; applied automatically then. Read them through converge.pending.';
-- What users read (SPEC section 6): the buffered ops with their age, each
-- role those of the tables it may SELECT (row security of pending_ops,
-- sql/finalize.sql).
CREATE VIEW converge.pending WITH (security_invoker = true) AS
    SELECT q.op_id, (q.op).actor, (q.op).target_table, (q.op).target_key, (q.op).target_column,
           q.missing, q.origin, q.received_at, clock_timestamp() - q.received_at AS age, q.op
      FROM converge.pending_ops q;
COMMENT ON VIEW converge.pending IS 'Ops buffered until the ops they depend on (missing) arrive, with how long each has waited (age); applied automatically then. Each role sees those of the tables it may SELECT.';

CREATE TABLE converge.actor_frontier (
    actor      text PRIMARY KEY,
    contiguous bigint NOT NULL DEFAULT 0   -- every counter 1..contiguous is applied
);

COMMENT ON TABLE converge.actor_frontier IS 'Per actor, the highest counter c such that every op 1..c of that actor is applied here (converge.frontier()); this node''s own counter is its newest op in the log (converge.frontier() shows both).';

-- Where the log was compacted: a cursor older than this must rejoin from a snapshot.
CREATE TABLE converge.log_horizon (
    actor text PRIMARY KEY,
    upto  bigint NOT NULL
);
COMMENT ON TABLE converge.log_horizon IS 'Per actor, up to which counter the log was compacted; changes_since from an older cursor answers 55000 (rejoin from a snapshot).';


SELECT pg_catalog.pg_extension_config_dump('converge.replicated', '');
SELECT pg_catalog.pg_extension_config_dump('converge.op_log', '');
SELECT pg_catalog.pg_extension_config_dump('converge.op_log_seq_seq', '');
SELECT pg_catalog.pg_extension_config_dump('converge.pending_ops', '');
SELECT pg_catalog.pg_extension_config_dump('converge.actor_frontier', '');
SELECT pg_catalog.pg_extension_config_dump('converge.log_horizon', '');
SELECT pg_catalog.pg_extension_config_dump('converge.row_state', '');

-- By the reason's code, not its text: a reason may name ops, columns or
-- errors (missing phone1:2, not_authority: ..., a repair's op id), and a
-- metrics exporter takes each distinct value for a series of its own.
CREATE VIEW converge.op_outcomes AS
    SELECT outcome,
           CASE outcome WHEN 'applied' THEN NULL
                        WHEN 'superseded' THEN CASE reason WHEN 'void overtaken' THEN 'void_overtaken'
                                                   WHEN 'void taken at join' THEN 'void_taken_at_join' ELSE 'repair' END
                        ELSE substring(reason FROM '^[a-z_]+') END AS reason,
           count(*) AS ops
      FROM converge.op_log GROUP BY 1, 2;
COMMENT ON VIEW converge.op_outcomes IS 'converge.op_log counted by outcome and the code of its reason (the reason''s leading word, such as not_authority, invalid_delta, missing or error; repair for superseded ops, void_overtaken for voids a real op took the place of, void_taken_at_join for ops of a node that joined a peer whose void held their counter; none for applied ones, whose reason is a repair''s own text): a bounded set of rows for a metrics exporter. The full reasons are in op_log and quarantine.';

-- converge.quarantine is defined in sql/actors.sql (it reads converge.superseded).

CREATE FUNCTION converge.op_encode(o converge.op) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT converge.op_encode_fields(o.op_id, o.actor, o.target_table, o.target_key, o.target_column,
                                     o.schema_version, o.epoch, o.deps, o.delta, o.signature)
$$;
COMMENT ON FUNCTION converge.op_encode(converge.op) IS 'The binary form of an op (the one converge-core''s Op::encode writes): [format version, tag 64, postcard body].';
COMMENT ON FUNCTION converge.op_encode_fields(text, text, text, jsonb, text, int, bigint, text[], bytea, bytea) IS 'Internal: the binary form of an op from its fields (see op_encode).';

CREATE FUNCTION converge.op_decode(b bytea) RETURNS converge.op
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ROW(f.*)::converge.op FROM converge.op_decode_fields(b) f
$$;
COMMENT ON FUNCTION converge.op_decode(bytea) IS 'An op from its binary form; validated and canonical only (22P03 otherwise).';
COMMENT ON FUNCTION converge.op_decode_fields(bytea) IS 'Internal: the fields of an op in binary form (see op_decode).';

-- Split 'actor:counter'; NULLs when malformed.
CREATE FUNCTION converge.parse_op_id(op_id text, OUT actor text, OUT counter bigint)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT converge.op_id_actor(op_id), converge.op_id_counter(op_id)
$$;
COMMENT ON FUNCTION converge.parse_op_id(text) IS 'Split an op_id ''actor:counter'' into its parts (NULLs when malformed).';
COMMENT ON FUNCTION converge.op_id_actor(text) IS 'The actor of an op_id ''actor:counter'', or NULL when malformed.';
-- It raises nothing and shows nothing but its result, in a UTF-8
-- database (elsewhere reading non-ASCII text as a Rust string can raise):
-- there a condition on it may use op_log_problems_by_actor under op_log's
-- row security.
DO $$ BEGIN
    IF pg_catalog.getdatabaseencoding() = 'UTF8' THEN
        ALTER FUNCTION converge.op_id_actor(text) LEAKPROOF;
    END IF;
END $$;
COMMENT ON FUNCTION converge.op_id_counter(text) IS 'The counter of an op_id ''actor:counter'', or NULL when malformed.';
COMMENT ON FUNCTION converge.without_covers(bytea) IS 'An op''s delta as readers before 0.2.0 take it: an ormap delta without what it superseded per key (it merges the same); any other delta as it is.';
COMMENT ON FUNCTION converge.delta_error(text, bytea) IS 'Why a delta is not a valid value of the named converge type (NULL when valid); never raises.';

-- (At or below its actor's contiguous frontier an op is applied even when
-- compaction has taken its log row: an op waiting for it must go on.)
CREATE FUNCTION converge.is_applied(op_id text) RETURNS boolean
LANGUAGE sql STABLE STRICT AS $$
    SELECT EXISTS (SELECT 1 FROM converge.op_log l
                    WHERE l.actor = converge.op_id_actor($1) AND l.counter = converge.op_id_counter($1)
                      AND l.outcome = 'applied')
        OR EXISTS (SELECT 1 FROM converge.actor_frontier f
                    WHERE f.actor = converge.op_id_actor($1) AND converge.op_id_counter($1) <= f.contiguous)
$$;
COMMENT ON FUNCTION converge.is_applied(text) IS 'Whether the op with this op_id has been applied here: at or below its actor''s contiguous frontier (also once compacted), or in the op log as the caller sees it (its row security: ops of tables the caller may not read are not seen).';


-- Pending ops whose deps are all applied, applied now.
CREATE FUNCTION converge.retry_pending()
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE plpgsql SET search_path = pg_catalog, converge, pg_temp AS $$
#variable_conflict use_column
DECLARE p record; r record; passes int := 0; most int; touched text[]; last_pass text[];
BEGIN
    -- Pass after pass (ops a pass applies may make others ready): a chain
    -- of deps is applied by this loop, not by apply_ops calling back here,
    -- which nested one call per link and ran out of stack on long chains.
    -- After the first pass only ops missing one the last pass decided are
    -- looked at (an array overlap, before the per-dep checks). Every pass
    -- but the last takes ops out of pending for good, so there are at most
    -- as many passes as ops pending now, plus one.
    most := (SELECT count(*) FROM converge.pending_ops) + 1;
    LOOP
        IF NOT EXISTS (SELECT 1 FROM converge.pending_ops) OR passes >= most THEN
            RETURN;
        END IF;
        passes := passes + 1;
        touched := '{}';
        FOR p IN
            WITH ready AS (
                DELETE FROM converge.pending_ops q
                 WHERE (last_pass IS NULL OR q.missing && last_pass)
                   AND NOT EXISTS (SELECT 1 FROM unnest(q.missing) d WHERE NOT converge.dep_done(d))
                   -- (A request names its table in its key, and needs UPDATE on its column.)
                   AND CASE (q.op).target_table
                           WHEN 'converge.request' THEN converge.may_ask((q.op).target_key ->> 'table', (q.op).target_column)
                           ELSE converge.may_write((q.op).target_table, (q.op).target_column) END
                   -- Under a peer's origin nothing written is shipped: ops a
                   -- client sent here wait for a transaction of their own.
                   AND (q.origin LIKE 'peer:%' OR NOT converge.under_peer_origin())
                   -- A peer's ops only where its replication is trusted
                   -- (the worker): elsewhere a node's ops look forged.
                   AND (q.origin NOT LIKE 'peer:%' OR converge.applying_trusted())
                RETURNING q.op, q.origin, q.received_at)
            SELECT r.origin, array_agg(r.op ORDER BY r.received_at, (r.op).op_id) AS batch FROM ready r GROUP BY r.origin ORDER BY 1
        LOOP
            FOR r IN SELECT * FROM converge.apply_ops(p.batch, p.origin, false) LOOP
                touched := touched || r.op_id;
                op_id := r.op_id;
                outcome := r.outcome;
                reason := r.reason;
                RETURN NEXT;
            END LOOP;
        END LOOP;
        EXIT WHEN cardinality(touched) = 0;
        last_pass := touched;
    END LOOP;
END $$;
COMMENT ON FUNCTION converge.retry_pending() IS 'Apply every pending op whose deps are all applied (apply_batch does this first; also useful after a repair). Ops that came from peers are applied only where their replication is trusted (a peer''s batch, the worker''s retry every 5 s); ops clients sent, not under a peer''s origin (they wait for the worker''s next transaction, or the next apply_batch or retry_pending outside sync).';

-- apply_batch is Rust (src/apply/entry.rs), reading the converge.op[] it is
-- given directly; apply_ops is the same body for retry_pending's passes.
CREATE FUNCTION converge.apply_ops(ops converge.op[], origin text, top_level boolean)
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'apply_ops_wrapper';
COMMENT ON FUNCTION converge.apply_ops(converge.op[], text, boolean) IS 'Internal: the body of apply_batch (top_level: also retry the pending ops the batch unblocks).';

CREATE FUNCTION converge.apply_batch(ops converge.op[], origin text DEFAULT 'client')
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'apply_batch_wrapper';
COMMENT ON FUNCTION converge.apply_batch(converge.op[], text) IS 'Apply a batch of ops: first the pending ops whose deps are applied, then the batch: validate, deduplicate, buffer ops with missing deps, merge the rest set-wise. One row per op decided (an op buffered and then applied in the same call shows twice). Never aborts the batch for a bad op.';

CREATE FUNCTION converge.apply(op converge.op, origin text DEFAULT 'client')
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE sql AS $$ SELECT * FROM converge.apply_batch(ARRAY[op], origin) $$;
COMMENT ON FUNCTION converge.apply(converge.op, text) IS 'Apply one op (see apply_batch): validate, deduplicate, check deps (buffer if missing), merge into the target row. One row per op decided, including ops it unblocked.';

-- replay is Rust (src/apply/replay.rs): an op a peer sent is applied again
-- as that peer's, which no SQL caller of apply_batch can ask for.
CREATE FUNCTION converge.replay(replay_op_id text)
RETURNS TABLE (op_id text, outcome text, reason text)
LANGUAGE c STRICT VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'replay_wrapper';
COMMENT ON FUNCTION converge.replay(text) IS 'Apply a rejected or quarantined op again once its cause is mended (a widened key, an added column, a repaired op it waited for); not one a repair superseded (55000). An op a peer sent is applied as that peer''s, which takes the owner of its table. The log keeps both outcomes.';

-- This node's own entry is its highest op counter (converge.last_op_counter):
-- recording an op does not update a frontier row.
CREATE FUNCTION converge.frontier() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_object_agg(actor, c ORDER BY actor), '{}')
      FROM (SELECT actor, contiguous AS c FROM converge.actor_frontier
             WHERE actor IS DISTINCT FROM (SELECT name FROM converge.node_identity)
            UNION ALL
            SELECT name, converge.last_op_counter(name) FROM converge.node_identity) f
     WHERE c > 0
$$;
COMMENT ON FUNCTION converge.frontier() IS 'This node''s version vector: {actor: highest counter such that every op 1..counter of that actor is applied (or superseded by a repair) here}.';

CREATE FUNCTION converge.changes_since(frontier jsonb, with_covers boolean)
RETURNS SETOF converge.op
LANGUAGE plpgsql STABLE AS $$
DECLARE h record;
BEGIN
    IF frontier IS NULL OR jsonb_typeof(frontier) <> 'object' THEN
        RAISE EXCEPTION 'frontier must be a JSON object {actor: counter}' USING ERRCODE = '22023';
    END IF;
    FOR h IN SELECT * FROM converge.log_horizon LOOP
        IF coalesce((frontier ->> h.actor)::bigint, 0) < h.upto THEN
            RAISE EXCEPTION 'frontier is older than the compacted log of actor "%" (compacted through %)', h.actor, h.upto
                USING ERRCODE = '55000', HINT = 'Rejoin from a snapshot: converge.snapshot(table), then sync from its frontier.';
        END IF;
    END LOOP;
    -- The caller keeps the counters it gets: they must be durable here.
    PERFORM converge.flush_visible();
    -- Log order is apply order, and an op is applied only after its deps.
    RETURN QUERY
        SELECT l.op_id, l.actor, l.target_table, l.target_key, l.target_column, l.schema_version, l.epoch,
               -- (A signed op goes as signed: its signature covers the delta.)
               l.deps, CASE WHEN with_covers OR l.signature IS NOT NULL THEN l.delta ELSE converge.without_covers(l.delta) END,
               l.signature
          FROM converge.op_log l
         WHERE l.outcome = 'applied'
           AND (l.counter > coalesce((frontier ->> l.actor)::bigint, 0)
                -- An op a void contested here (the void arrived after it or
                -- gave way to it): a caller past its counter may hold that
                -- void instead, which the op takes the place of.
                OR (l.actor, l.counter) IN (SELECT v.actor, v.counter FROM converge.op_log v
                                              WHERE v.target_table = 'converge.void'
                                                AND v.outcome IN ('duplicate', 'superseded'))
                   AND l.target_table <> 'converge.void')
         ORDER BY l.seq;
END $$;
COMMENT ON FUNCTION converge.changes_since(jsonb, boolean) IS 'The applied ops a caller at this frontier lacks, in an order that respects deps; with_covers false: ormap deltas of unsigned ops without what they superseded per key, as readers before 0.2.0 take them. 55000 if the frontier predates a compaction (rejoin from converge.snapshot).';

-- What clients and nodes before 0.2.0 call.
CREATE FUNCTION converge.changes_since(frontier jsonb)
RETURNS SETOF converge.op
LANGUAGE sql STABLE AS $$ SELECT * FROM converge.changes_since(frontier, false) $$;
COMMENT ON FUNCTION converge.changes_since(jsonb) IS 'changes_since(frontier, false): the applied ops a caller at this frontier lacks, in the form readers before 0.2.0 take (what the client crate pulls).';

CREATE FUNCTION converge.snapshot(tbl regclass) RETURNS jsonb
LANGUAGE plpgsql STABLE STRICT AS $$
DECLARE rows jsonb;
BEGIN
    EXECUTE format('SELECT coalesce(jsonb_agg(to_jsonb(t)), ''[]'') FROM %s t', tbl) INTO rows;
    RETURN jsonb_build_object('table', tbl::text, 'frontier', converge.frontier(), 'rows', rows);
END $$;
COMMENT ON FUNCTION converge.snapshot(regclass) IS 'Every row of a table (CRDT columns as their full-state text) with the frontier it reflects; a client rejoins from it.';


CREATE FUNCTION converge.replicate(tbl regclass) RETURNS void
LANGUAGE sql AS $$ SELECT converge.replicate_table(tbl::oid) $$;
COMMENT ON FUNCTION converge.replicate(regclass) IS 'Mark a table (with a primary key) for the op log and replication: every later change to its CRDT columns, and every row insert, delete and change of its other columns (last writer wins), is recorded as an op of this node. Columns added, dropped or retyped later are followed (the event trigger converge_follow_columns).';

COMMENT ON FUNCTION converge.forget_layout(oid) IS 'Internal: make every session re-read the replicated layout of a table (relcache invalidation).';
COMMENT ON FUNCTION converge.under_peer_origin() IS 'Internal: whether this transaction applies a peer''s changes (a replication origin is set up), for converge.retry_pending.';
COMMENT ON FUNCTION converge.applying_trusted() IS 'Internal: whether converge applies what came through a peer''s replication (or retries for the worker), for converge.retry_pending.';
COMMENT ON FUNCTION converge.flush_visible() IS 'Internal: flush the WAL of every commit this session can see (before converge hands counters out: frontier, changes_since).';
COMMENT ON FUNCTION converge.last_op_counter(text) IS 'Internal: the highest op counter of this node (its newest op in the log), for converge.frontier().';
COMMENT ON FUNCTION converge.record_local_ops() IS 'Trigger of replicated tables: records each local change of a CRDT column, and each row insert, delete or change of other columns, as an op of this node.';
