-- Extension and node identity. Every later file runs in this database.
CREATE EXTENSION converge;
SET search_path = public, converge;
SELECT node();
-- A mutator before the node identity is set is a clear error.
SELECT incr(NULL::gcounter, 1);
SELECT length(set_node('madrid')::text);
SELECT node();
-- Same name again: a no-op that returns the same uuid.
SELECT set_node('madrid') = (SELECT node_uuid FROM node_identity);
-- Bad names.
SELECT set_node('');
SELECT set_node('has space');
SELECT set_node('a:b');
-- Once this node has written data the identity cannot change.
SELECT value(incr(NULL::gcounter, 1));
SELECT set_node('dublin');
SELECT node();
