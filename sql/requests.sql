-- Requests and unique allocation (SPEC section 5): src/requests.rs and
-- src/allocation.rs. Both travel as converge's own ops (targets
-- converge.request, converge.decision, converge.allocation), recorded
-- explicitly: these tables carry no triggers and are not replicated tables
-- (a restore copies their rows back without making ops of them).

-- Every request this node knows, the same rows on every node once synced.
-- A node can learn a request's decision before the request itself (they
-- travel by different paths): the row is made from whichever came first,
-- so the request's own columns may be NULL for a while.
CREATE SEQUENCE converge.request_arrival;
COMMENT ON SEQUENCE converge.request_arrival IS 'Internal: the order in which requests arrived on this node (converge.request_order.arrival).';
CREATE TABLE converge.requests (
    request_id      text PRIMARY KEY,      -- the request op's id
    target_table    text NOT NULL,         -- as ops name it (schema.table)
    target_key      jsonb NOT NULL,        -- canonical, as ops carry it
    target_column   text NOT NULL,
    value           jsonb,
    idempotency_key text,
    requested_by    text,
    requested_at    timestamptz,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'granted', 'refused')),
    decision        jsonb,
    reason          text,
    decided_at      timestamptz,
    decision_id     text                   -- the decision op (of two, the smaller id wins everywhere)
);
CREATE INDEX requests_pending ON converge.requests (request_id) WHERE status = 'pending';
CREATE INDEX requests_idempotency ON converge.requests (idempotency_key) WHERE idempotency_key IS NOT NULL;
COMMENT ON TABLE converge.requests IS 'Requests to change columns decided by an authority (converge.request): pending until the authority decides, then granted with the columns it wrote (decision) or refused with a reason. The same rows on every node once synced; each role sees the requests of tables it may SELECT.';
SELECT pg_catalog.pg_extension_config_dump('converge.requests', '');
SELECT pg_catalog.pg_extension_config_dump('converge.request_arrival', '');
-- The order in which requests arrived here (the authority decides in it),
-- kept apart: it differs from node to node, and converge.requests shows
-- the same rows on every node.
CREATE TABLE converge.request_order (
    request_id text PRIMARY KEY,
    arrival    bigint NOT NULL DEFAULT nextval('converge.request_arrival')
);
COMMENT ON TABLE converge.request_order IS 'Internal: the order in which the requests of converge.requests arrived on this node (the authority decides pending requests in it).';
SELECT pg_catalog.pg_extension_config_dump('converge.request_order', '');
GRANT SELECT ON converge.requests TO PUBLIC;
ALTER TABLE converge.requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY requests_readable ON converge.requests FOR SELECT USING (converge.may_read(target_table));
COMMENT ON POLICY requests_readable ON converge.requests IS 'A role reads the requests of the tables it may SELECT (converge.may_read); peer roles read every request.';

CREATE FUNCTION converge.request(tbl regclass, key jsonb, col text, value jsonb, idempotency_key text DEFAULT NULL)
RETURNS text LANGUAGE sql AS $$ SELECT converge.request_on(tbl::oid, key, col, value, idempotency_key) $$;
COMMENT ON FUNCTION converge.request_on(oid, jsonb, text, jsonb, text) IS 'Internal: the body of converge.request.';
COMMENT ON FUNCTION converge.request(regclass, jsonb, text, jsonb, text) IS 'Ask the authority of a column to change it on one row (needs UPDATE on the column, and the row as the caller may lock it for update). Returns the request''s id (an op_id); with an idempotency key this node knows, the known request''s id. The authority decides each request once, in arrival order: as proposed, or through its decide function. See converge.requests. Not granted to PUBLIC (a request holds this node''s op counter until its transaction ends, like every local write at commit): grant EXECUTE on it and on converge.request_on to the roles that ask.';
REVOKE ALL ON FUNCTION converge.request(regclass, jsonb, text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION converge.request_on(oid, jsonb, text, jsonb, text) FROM PUBLIC;

REVOKE ALL ON FUNCTION converge.decide_pending() FROM PUBLIC;
COMMENT ON FUNCTION converge.decide_pending() IS 'Decide, in arrival order, the pending requests this node is the authority of (the background worker does it after each batch and every few seconds). Returns how many were decided.';

-- Unique allocation: per allocator, the node that serves it.
CREATE TABLE converge.allocators (
    name  text PRIMARY KEY,
    node  text NOT NULL,
    start bigint NOT NULL DEFAULT 1
);
COMMENT ON TABLE converge.allocators IS 'Per allocator, the node that serves converge.allocate and its first number (set with converge.set_allocator on every node, like set_authority).';
SELECT pg_catalog.pg_extension_config_dump('converge.allocators', '');
GRANT SELECT ON converge.allocators TO PUBLIC;

CREATE TABLE converge.allocations (
    name            text NOT NULL,
    idempotency_key text NOT NULL,
    value           bigint NOT NULL,
    allocated_at    timestamptz NOT NULL,
    allocated_by    text NOT NULL,
    PRIMARY KEY (name, idempotency_key)
);
CREATE INDEX allocations_value ON converge.allocations (name, value);
COMMENT ON TABLE converge.allocations IS 'Every number converge.allocate handed out: per allocator and idempotency key, its value. The same rows on every node once synced.';
SELECT pg_catalog.pg_extension_config_dump('converge.allocations', '');
GRANT SELECT ON converge.allocations TO PUBLIC;

CREATE FUNCTION converge.set_allocator(name text, node text, start bigint DEFAULT 1) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, converge, pg_temp AS $$
BEGIN
    IF name IS NULL OR start IS NULL THEN
        RAISE EXCEPTION 'the allocator''s name and start must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF node IS NULL OR node !~ '^[A-Za-z0-9_.-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid allocator node "%": use 1-63 of A-Z a-z 0-9 _ . - (the node''s converge.node())', node
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO converge.allocators AS a (name, node, start) VALUES (set_allocator.name, set_allocator.node, set_allocator.start)
        ON CONFLICT ON CONSTRAINT allocators_pkey DO UPDATE SET node = EXCLUDED.node, start = EXCLUDED.start;
END $$;
REVOKE ALL ON FUNCTION converge.set_allocator(text, text, bigint) FROM PUBLIC;
COMMENT ON FUNCTION converge.set_allocator(text, text, bigint) IS 'Name the node that serves an allocator, and its first number (administration). Run it on every node alike.';

REVOKE ALL ON FUNCTION converge.allocate(text, text) FROM PUBLIC;
COMMENT ON FUNCTION converge.allocate(text, text) IS 'The number of an idempotency key in an allocator: the same key gets the same number forever (also after a crash), different keys distinct numbers increasing in allocation order. Served only on the allocator''s node (55000 elsewhere). Not granted to PUBLIC: grant EXECUTE to roles that allocate, and to owners of decide functions that do.';
