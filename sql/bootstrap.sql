-- Node identity and the durable dot counter. Both are extension
-- configuration, so pg_dump carries them and a restored node continues
-- where it was (a dot must never be issued twice).
CREATE TABLE converge.node_identity (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    name       text NOT NULL,
    node_uuid  uuid NOT NULL DEFAULT gen_random_uuid(),
    set_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE converge.node_identity IS 'This database''s converge node identity (one row, set by converge.set_node).';

CREATE SEQUENCE converge.dot_seq AS bigint MINVALUE 1 NO CYCLE;
COMMENT ON SEQUENCE converge.dot_seq IS 'Durable per-node counter: every local mutation draws one dot (node, counter) from it.';

SELECT pg_catalog.pg_extension_config_dump('converge.node_identity', '');
SELECT pg_catalog.pg_extension_config_dump('converge.dot_seq', '');
