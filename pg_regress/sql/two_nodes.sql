-- Two real node identities: a second database plays dublin. Values travel
-- as text (as they would in a dump or an op), and merge the same in both orders.
SET search_path = public, converge;
CREATE DATABASE converge_regress_dublin;
\c converge_regress_dublin
CREATE EXTENSION converge;
SET search_path = public, converge;
SELECT set_node('dublin') IS NOT NULL AS dublin_set;
SELECT incr(NULL::gcounter, 4) AS g, decr(incr(NULL::pncounter, 9), 2) AS pn,
       transfer(incr(NULL::bcounter, 10), 'madrid', 3) AS b, add(NULL::gset, 'd') AS gs,
       remove(add(add(NULL::orset, 'shared'), 'd1'), 'shared') AS os,
       assign(NULL::mvreg, '"Dublin title"') AS mv,
       put(NULL::lwwmap, 'owner', '"dublin"') AS lm,
       add(incr(NULL::ormap, 'hits', 2), 'tags', 'd') AS om
\gset d_
\c regression
SET search_path = public, converge;
SELECT node();
CREATE TEMP TABLE here AS SELECT incr(NULL::gcounter, 1) AS g, incr(NULL::pncounter, 1) AS pn,
       incr(NULL::bcounter, 5) AS b, add(NULL::gset, 'm') AS gs, add(NULL::orset, 'm1') AS os,
       assign(NULL::mvreg, '"Madrid title"') AS mv, put(NULL::lwwmap, 'status', '"open"') AS lm,
       add(incr(NULL::ormap, 'hits', 1), 'tags', 'm') AS om;
CREATE TEMP TABLE there AS SELECT :'d_g'::gcounter AS g, :'d_pn'::pncounter AS pn, :'d_b'::bcounter AS b,
       :'d_gs'::gset AS gs, :'d_os'::orset AS os, :'d_mv'::mvreg AS mv, :'d_lm'::lwwmap AS lm, :'d_om'::ormap AS om;
SELECT value(h.g || t.g) AS g, (h.g || t.g) = (t.g || h.g) AS g_comm,
       value(h.pn || t.pn) AS pn, (h.pn || t.pn) = (t.pn || h.pn) AS pn_comm,
       value(h.b || t.b) AS b, rights(h.b || t.b) AS my_rights, (h.b || t.b) = (t.b || h.b) AS b_comm,
       elements(h.gs || t.gs) AS gs, (h.gs || t.gs) = (t.gs || h.gs) AS gs_comm
  FROM here h, there t;
SELECT elements(h.os || t.os) AS os, (h.os || t.os) = (t.os || h.os) AS os_comm,
       all_values(h.mv || t.mv) AS mv, is_conflict(h.mv || t.mv), (h.mv || t.mv) = (t.mv || h.mv) AS mv_comm
  FROM here h, there t;
SELECT to_jsonb(h.lm || t.lm) AS lm, (h.lm || t.lm) = (t.lm || h.lm) AS lm_comm,
       to_jsonb(h.om || t.om) AS om, (h.om || t.om) = (t.om || h.om) AS om_comm,
       (h.om || h.om) = h.om AS om_idem
  FROM here h, there t;
DROP DATABASE converge_regress_dublin;
