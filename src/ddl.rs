//! Names are identities: converge's ops, the op log, row bases, tombstones
//! and settings (authorities, schema versions) name a replicated table as
//! `schema.table` and its columns by name, and so do the ops other nodes
//! send. Renaming such a table, its schema or one of its replicated
//! columns would leave all of those behind under the old name: the
//! renamed column's changes stop being recorded, its authority stops
//! guarding it, compaction finds no table for the old ops, and peers' ops
//! miss. So converge refuses those renames with 0A000: an event trigger at
//! `ddl_command_end`, after PostgreSQL's own checks and under the rename's
//! lock (so a `replicate` committing meanwhile is seen), which undoes the
//! statement by raising.
//!
//! Two more follow the columns: after an `ALTER TABLE` that adds, drops
//! or retypes a column or changes a constraint, and after any statement
//! that dropped columns (a `DROP DOMAIN ... CASCADE` too), each replicated
//! table reached gets its layout again (what `converge.replicate`
//! records), so a column added on a replicated table is recorded from its
//! first change, with no `replicate` to forget. The primary key's columns
//! name rows in every op: changing them is refused, and so is a column
//! taking a dropped column's name (sql/ddl.sql).

use crate::errors::{raise, raise_explained};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::ffi::CStr;

/// What a statement renames or moves.
enum Renamed {
    /// A column (or a composite type's attribute, which renames the
    /// columns of its typed tables), by its old name.
    Column(String),
    /// A relation (through any of the ALTER commands that can name one),
    /// by its old name as the statement wrote it.
    Relation(String),
    /// A relation moved to another schema.
    Moved(String),
    /// A schema, by its old name.
    Schema(String),
    /// A value of an enum type, by its old label: rows' keys and plain
    /// columns' values travel as their labels.
    EnumValue(String),
}

/// `converge.keep_names()`: the event trigger's function (declared in
/// sql/ddl.sql; the statement comes in the trigger's context).
#[pg_extern(sql = false, volatile, parallel_unsafe)]
fn keep_names(fcinfo: pg_sys::FunctionCallInfo) {
    let tree = unsafe { statement(fcinfo, "converge.keep_names()") };
    if unsafe { (*tree).type_ == pg_sys::NodeTag::T_AlterTableStmt } {
        keep_recording();
    }
    keep_trigger_names(tree);
    let Some(what) = (unsafe { renamed(tree) }) else { return };
    // The objects the statement changed: a relation, or a schema.
    let objects: Vec<pg_sys::Oid> = crate::security::as_owner(|| {
        Spi::connect(|c| {
            c.select("SELECT objid FROM pg_catalog.pg_event_trigger_ddl_commands()", None, &[])
                .map(|t| t.filter_map(|r| r.get::<pg_sys::Oid>(1).ok().flatten()).collect())
        })
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
    for oid in objects {
        match &what {
            Renamed::Column(col) => refuse_column(oid, col),
            Renamed::Relation(name) => refuse_relation(oid, &format!("rename replicated table {name}"), HINT_TABLE),
            Renamed::Moved(name) => refuse_relation(oid, &format!("move replicated table {name} to another schema"), HINT_MOVE),
            Renamed::Schema(name) => refuse_schema(oid, name),
            Renamed::EnumValue(label) => refuse_enum_value(oid, label),
        }
    }
}

/// Refuse an `ALTER TABLE` that switched off a replicated table's
/// converge triggers (`DISABLE TRIGGER`, `ENABLE REPLICA TRIGGER`, of one by
/// name or `ALL`/`USER`) or made it unlogged (a missing trigger is for
/// follow_drops: a restore adds the table's key before its triggers): its writes would commit with no
/// op (or a TRUNCATE with none), and reach no other node. A superuser may
/// (a data-only restore disables triggers); docs/replication.md.
fn keep_recording() {
    if unsafe { pg_sys::superuser() } {
        return;
    }
    let off = crate::security::as_owner(|| {
        crate::spi::read_one::<String>(
            "SELECT f.what
               FROM pg_catalog.pg_event_trigger_ddl_commands() d
               JOIN converge.replicated r ON r.table_name OPERATOR(pg_catalog.=) d.objid
               CROSS JOIN LATERAL (
                   SELECT pg_catalog.format('switch off trigger %s of replicated table %s', t.name, r.table_name) AS what
                     FROM (VALUES ('converge_record_ops', 'converge.record_local_ops'), ('converge_no_truncate', 'converge.refuse_truncate')) t(name, fn)
                    WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_trigger tg
                                   WHERE tg.tgrelid OPERATOR(pg_catalog.=) d.objid AND tg.tgname OPERATOR(pg_catalog.=) t.name
                                     AND tg.tgfoid OPERATOR(pg_catalog.=) t.fn::pg_catalog.regproc AND tg.tgenabled NOT IN ('O', 'A'))
                   UNION ALL
                   SELECT pg_catalog.format('make replicated table %s unlogged', r.table_name) FROM pg_catalog.pg_class c
                    WHERE c.oid OPERATOR(pg_catalog.=) d.objid AND c.relpersistence OPERATOR(pg_catalog.<>) 'p') f
              LIMIT 1",
            &[],
        )
    });
    if let Some(what) = off {
        raise_explained(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot {what}"),
            "converge's triggers record every write of a replicated table as an op (and refuse TRUNCATE), in the WAL: unrecorded, writes would reach no other node; unlogged, a crash would empty the table while its rows' clocks stay.",
            "Keep the table's converge triggers enabled and the table logged.",
        );
    }
}

/// Refuse `ALTER TRIGGER ... RENAME` of a replicated table's converge
/// trigger: the checks above, `converge.replicate` and pg_dump know them by
/// name (a renamed one could be switched off, or made twice).
fn keep_trigger_names(tree: *mut pg_sys::Node) {
    let renamed_trigger = unsafe {
        (*tree).type_ == pg_sys::NodeTag::T_RenameStmt
            && (*(tree as *mut pg_sys::RenameStmt)).renameType == pg_sys::ObjectType::OBJECT_TRIGGER
    };
    if !renamed_trigger || unsafe { pg_sys::superuser() } {
        return;
    }
    let held = crate::security::as_owner(|| {
        crate::spi::read_one::<String>(
            "SELECT r.table_name::pg_catalog.text
               FROM pg_catalog.pg_event_trigger_ddl_commands() d
               JOIN pg_catalog.pg_trigger tg ON tg.oid OPERATOR(pg_catalog.=) d.objid
               JOIN converge.replicated r ON r.table_name OPERATOR(pg_catalog.=) tg.tgrelid
              WHERE tg.tgfoid IN ('converge.record_local_ops'::pg_catalog.regproc, 'converge.refuse_truncate'::pg_catalog.regproc)
              LIMIT 1",
            &[],
        )
    });
    if let Some(table) = held {
        raise_explained(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot rename a converge trigger of replicated table {table}"),
            "converge finds its triggers by name.",
            "Keep the trigger's name.",
        );
    }
}

/// The statement an event trigger fires for.
unsafe fn statement(fcinfo: pg_sys::FunctionCallInfo, function: &str) -> *mut pg_sys::Node {
    let ctx = (*fcinfo).context;
    if ctx.is_null() || (*ctx).type_ != pg_sys::NodeTag::T_EventTriggerData {
        raise(PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED, format!("{function} must be called as an event trigger"));
    }
    (*(ctx as *mut pg_sys::EventTriggerData)).parsetree
}

unsafe fn renamed(tree: *mut pg_sys::Node) -> Option<Renamed> {
    use pg_sys::ObjectType::*;
    if tree.is_null() {
        return None;
    }
    let text = |p: *const std::ffi::c_char| (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned());
    let relation = |rv: *mut pg_sys::RangeVar| {
        if rv.is_null() {
            return String::new();
        }
        let name = pg_sys::quote_qualified_identifier((*rv).schemaname, (*rv).relname);
        text(name).unwrap_or_default()
    };
    match (*tree).type_ {
        pg_sys::NodeTag::T_RenameStmt => {
            let s = tree as *mut pg_sys::RenameStmt;
            match (*s).renameType {
                OBJECT_COLUMN | OBJECT_ATTRIBUTE => text((*s).subname).map(Renamed::Column),
                // ALTER INDEX, VIEW, ... RENAME also rename a table.
                OBJECT_TABLE | OBJECT_INDEX | OBJECT_VIEW | OBJECT_MATVIEW | OBJECT_FOREIGN_TABLE | OBJECT_SEQUENCE => {
                    Some(Renamed::Relation(relation((*s).relation)))
                }
                OBJECT_SCHEMA => text((*s).subname).map(Renamed::Schema),
                _ => None,
            }
        }
        pg_sys::NodeTag::T_AlterEnumStmt => text((*(tree as *mut pg_sys::AlterEnumStmt)).oldVal).map(Renamed::EnumValue),
        pg_sys::NodeTag::T_AlterObjectSchemaStmt => {
            let s = tree as *mut pg_sys::AlterObjectSchemaStmt;
            matches!((*s).objectType, OBJECT_TABLE | OBJECT_VIEW | OBJECT_MATVIEW | OBJECT_FOREIGN_TABLE | OBJECT_SEQUENCE)
                .then(|| Renamed::Moved(relation((*s).relation)))
        }
        _ => None,
    }
}

/// A replicated table among `rel` and the tables a column rename of `rel`
/// reaches (its inheritors and partitions; the typed tables of a
/// composite type), whose layout names column `col`.
fn refuse_column(rel: pg_sys::Oid, col: &str) {
    let hit = crate::security::as_owner(|| {
        crate::spi::read_one::<pgrx::JsonB>(
            &format!(
                "WITH RECURSIVE t(oid) AS (SELECT $1::oid {REACHES})
                 SELECT jsonb_build_object('table', r.table_name::text, 'named', $1::regclass::text, 'key', $2 = ANY (r.key_columns))
                   FROM converge.replicated r JOIN t ON t.oid = r.table_name
                  WHERE $2 = ANY (r.key_columns) OR r.crdt_columns ? $2 OR $2 = ANY (r.other_columns)
                  ORDER BY r.table_name::text LIMIT 1"
            ),
            &[rel.into(), col.into()],
        )
    });
    let Some(hit) = hit else { return };
    let field = |k: &str| hit.0.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let (table, named) = (field("table"), field("named"));
    let message = if table == named {
        format!("cannot rename column \"{col}\" of replicated table {table}")
    } else {
        format!("cannot rename column \"{col}\" of {named}: replicated table {table} has it")
    };
    let hint = if hit.0.get("key").and_then(|v| v.as_bool()) == Some(true) {
        "A key column names its rows in every op; keep its name (a view can show another)."
    } else {
        "Give it another name in a view, or move its values to a new column as docs/replication.md (\"Schema changes\") describes."
    };
    raise_explained(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        message,
        "converge's ops, op log, row bases and settings (authorities, schema versions) name the column, \
         here and on every other node; under a new name its changes would no longer be recorded or guarded.",
        hint,
    );
}

fn refuse_schema(schema: pg_sys::Oid, name: &str) {
    let held = crate::security::as_owner(|| {
        crate::spi::read_one::<String>(
            "SELECT min(c.relname::text) FROM converge.replicated r JOIN pg_catalog.pg_class c ON c.oid = r.table_name
              WHERE c.relnamespace = $1::oid",
            &[schema.into()],
        )
    });
    if let Some(t) = held {
        refuse(
            format!("cannot rename schema \"{name}\": it holds replicated tables (\"{t}\" among them)"),
            "a replicated table with its schema",
            "Keep the schema's name; views in another schema can show its tables under other names.",
        );
    }
}

/// A replicated column (key or plain) of enum type `ty`, or of an array of
/// it: its values travel as labels, in ops here and from other nodes.
fn refuse_enum_value(ty: pg_sys::Oid, label: &str) {
    let held = crate::security::as_owner(|| {
        crate::spi::read_one::<String>(
            "SELECT format('column %I of %s', a.attname, r.table_name)
               FROM converge.replicated r JOIN pg_catalog.pg_attribute a ON a.attrelid = r.table_name
               JOIN pg_catalog.pg_type t ON t.oid = $1::oid
              WHERE a.attnum > 0 AND NOT a.attisdropped AND a.atttypid IN (t.oid, t.typarray)
                AND (a.attname = ANY (r.key_columns) OR a.attname = ANY (r.other_columns))
              ORDER BY r.table_name::text, a.attnum LIMIT 1",
            &[ty.into()],
        )
    });
    if let Some(col) = held {
        raise_explained(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot rename value \"{label}\" of an enum type that replicated {col} holds"),
            "Ops carry its values by label, here and on every other node (a key's label names its row).",
            "Add the new value and move the rows to it instead.",
        );
    }
}

const HINT_TABLE: &str = "Keep the table's name; a view can show it under another.";
const HINT_MOVE: &str = "Keep the table in its schema; a view in the other schema can show it there.";

fn refuse_relation(rel: pg_sys::Oid, message: &str, hint: &str) {
    let table = crate::security::as_owner(|| {
        crate::spi::read_one::<bool>("SELECT true FROM converge.replicated WHERE table_name = $1::oid", &[rel.into()])
    });
    if table.is_some() {
        refuse(format!("cannot {message}"), "the table as schema.table", hint);
    }
}

/// Refuse a rename of what converge's state names (`named`: how it names it).
fn refuse(message: String, named: &str, hint: &str) -> ! {
    raise_explained(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        message,
        &format!("converge's ops, op log, row bases and settings name {named}, here and on every other node."),
        hint,
    )
}

/// `converge.follow_columns()`: the event trigger that keeps replicated
/// tables' layouts current (declared in sql/ddl.sql).
#[pg_extern(sql = false, volatile, parallel_unsafe)]
fn follow_columns(fcinfo: pg_sys::FunctionCallInfo) {
    let Some(rewritten) = (unsafe { layout_change(statement(fcinfo, "converge.follow_columns()")) }) else { return };
    // (follow_layout in the select list: a WHERE clause would be pushed
    // down to every replicated table.)
    let sql = format!(
        "WITH RECURSIVE t(oid) AS (
             SELECT objid FROM pg_catalog.pg_event_trigger_ddl_commands()
              WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass {REACHES})
         SELECT r.table_name::oid, converge.follow_layout(r.table_name, $1, '{{}}')
           FROM converge.replicated r JOIN t ON t.oid OPERATOR(pg_catalog.=) r.table_name"
    );
    follow(&sql, vec![rewritten.into()]);
}

/// `converge.follow_drops()`: the event trigger for columns dropped, by
/// `ALTER TABLE` (PostgreSQL lists exactly which columns of which tables:
/// an inheritance child keeps a column it also defines itself, or
/// inherits from another parent) or along with what they depend on by a
/// `DROP ... CASCADE` (a domain, a type, a collation, an extension).
#[pg_extern(sql = false, volatile, parallel_unsafe)]
fn follow_drops(fcinfo: pg_sys::FunctionCallInfo) {
    unsafe { statement(fcinfo, "converge.follow_drops()") };
    // A converge trigger dropped from a table that stays replicated (a
    // dropped table takes them along): as keep_recording. A superuser may
    // (pg_restore --clean drops triggers before their tables).
    let kept = (!unsafe { pg_sys::superuser() }).then(|| crate::security::as_owner(|| {
        crate::spi::read_one::<Vec<String>>(
            "SELECT ARRAY[r.table_name::pg_catalog.text, o.address_names[3]] FROM pg_catalog.pg_event_trigger_dropped_objects() o
               JOIN converge.replicated r
                 ON r.table_name OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.format('%I.%I', o.address_names[1], o.address_names[2]))
              WHERE o.object_type OPERATOR(pg_catalog.=) 'trigger'
                AND o.address_names[3] IN ('converge_record_ops', 'converge_no_truncate')
              LIMIT 1",
            &[],
        )
    })).flatten();
    if let Some([table, trigger]) = kept.as_deref() {
        raise_explained(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot drop trigger {trigger} of replicated table {table}"),
            "converge's triggers record every write of a replicated table as an op (and refuse TRUNCATE): without them, writes would reach no other node.",
            "Keep the trigger.",
        );
    }
    // A dropped replicated table takes its layout, settings and row states
    // along: a table made later may get its oid.
    crate::security::as_owner(|| {
        crate::errors::plain_errors(|| {
            for (table, column) in FORGET_DROPPED {
                Spi::run(&format!(
                    "DELETE FROM converge.{table} x USING pg_catalog.pg_event_trigger_dropped_objects() o
                      WHERE o.object_type OPERATOR(pg_catalog.=) 'table' AND x.{column} OPERATOR(pg_catalog.=) o.objid"
                ))?;
            }
            // Row bases go by the table's name, which a later table may take.
            Spi::run(
                "DELETE FROM converge.row_base x USING pg_catalog.pg_event_trigger_dropped_objects() o
                  WHERE o.object_type OPERATOR(pg_catalog.=) 'table'
                    AND x.target_table OPERATOR(pg_catalog.=) pg_catalog.format('%I.%I', o.schema_name, o.object_name)",
            )?;
            Ok::<_, pgrx::spi::SpiError>(())
        })
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
    follow(FOLLOW_DROPS, Vec::new());
}

/// What converge keeps by a table's oid (table, its oid column), for the
/// tables a statement dropped.
const FORGET_DROPPED: [(&str, &str); 4] =
    [("row_state", "tbl"), ("authority", "table_name"), ("schema_version", "table_name"), ("replicated", "table_name")];

/// The replicated tables that lost columns (a table dropped as a whole is
/// gone from the catalog), with `follow_layout`'s answer.
const FOLLOW_DROPS: &str = "SELECT d.tbl, converge.follow_layout(d.tbl::pg_catalog.regclass, '{}', d.cols)
      FROM (SELECT o.objid AS tbl, pg_catalog.array_agg(o.address_names[3]) AS cols
              FROM pg_catalog.pg_event_trigger_dropped_objects() o
              JOIN converge.replicated r ON r.table_name OPERATOR(pg_catalog.=) o.objid
             WHERE o.object_type OPERATOR(pg_catalog.=) 'table column'
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) o.objid)
             GROUP BY o.objid) d";

/// Run `sql`, whose rows are (a replicated table, what `follow_layout`
/// returned for it), as converge's owner, and make the guard trigger again
/// where authorities of dropped columns went: `DROP COLUMN ... CASCADE`
/// took it along for every authority column. As the table's owner: the
/// owner of a dropped domain need not own the tables it reached.
fn follow(sql: &str, args: Vec<pgrx::datum::DatumWithOid>) {
    let unguarded: Vec<pg_sys::Oid> = crate::security::as_owner(|| {
        crate::errors::plain_errors(|| {
            Spi::connect_mut(|c| {
                let mut unguarded = Vec::new();
                // Most DDL is of databases, or tables, converge has no part in.
                if c.select("SELECT 1 FROM converge.replicated LIMIT 1", Some(1), &[])?.is_empty() {
                    return Ok(unguarded);
                }
                for r in c.update(sql, None, &args)? {
                    if let (Some(tbl), Some(true)) = (r.get::<pg_sys::Oid>(1)?, r.get::<bool>(2)?) {
                        unguarded.push(tbl);
                    }
                }
                Ok::<_, pgrx::spi::SpiError>(unguarded)
            })
        })
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()));
    for tbl in unguarded {
        crate::security::as_table_owner(tbl, || crate::coordination::make_guard(tbl));
    }
}

/// The recursive step of a query `t(oid)` of the tables an ALTER reaches
/// from the relations it names: their inheritors and partitions, and the
/// typed tables of a composite type (a column of those is theirs too). One
/// list of (parent, child) links, joined by equality: no scan per table.
const REACHES: &str = "UNION
    SELECT l.child FROM t JOIN (
        SELECT i.inhparent AS parent, i.inhrelid AS child FROM pg_catalog.pg_inherits i
        UNION ALL
        SELECT p.oid, c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_class p ON p.reltype OPERATOR(pg_catalog.=) c.reloftype
         WHERE c.reloftype OPERATOR(pg_catalog.<>) 0) l ON l.parent OPERATOR(pg_catalog.=) t.oid";

/// Whether an `ALTER COLUMN ... TYPE`'s USING expression keeps the values:
/// none, the column itself, or a cast of it to exactly the new type
/// (`TYPE bigint USING "id"::bigint`, as Django writes every retype). A
/// cast to another type could change them on the way (`USING id::oid`,
/// `USING code::varchar(2)`). The new type itself is checked apart.
unsafe fn plain_using(def: *mut pg_sys::ColumnDef, col: Option<&str>) -> bool {
    let mut e = (*def).raw_default;
    if e.is_null() {
        return true;
    }
    if (*e).type_ == pg_sys::NodeTag::T_TypeCast {
        let cast = e as *mut pg_sys::TypeCast;
        if !same_type((*cast).typeName, (*def).typeName) {
            return false;
        }
        e = (*cast).arg;
    }
    if e.is_null() || (*e).type_ != pg_sys::NodeTag::T_ColumnRef {
        return false;
    }
    let fields = pgrx::PgList::<pg_sys::Node>::from_pg((*(e as *mut pg_sys::ColumnRef)).fields);
    let [field] = fields.iter_ptr().collect::<Vec<_>>()[..] else { return false };
    if field.is_null() || (*field).type_ != pg_sys::NodeTag::T_String {
        return false;
    }
    let sval = (*(field as *mut pg_sys::String)).sval;
    !sval.is_null() && col.is_some_and(|c| CStr::from_ptr(sval).to_string_lossy() == c)
}

/// Whether two type names name the same type and typmod. A name that no
/// longer resolves (`ALTER TABLE IF EXISTS` of a missing table fires the
/// trigger too) is not the same.
unsafe fn same_type(a: *mut pg_sys::TypeName, b: *mut pg_sys::TypeName) -> bool {
    let (Some(x), Some(y)) = (type_of(a), type_of(b)) else { return false };
    x == y
}

unsafe fn type_of(t: *mut pg_sys::TypeName) -> Option<(pg_sys::Oid, i32)> {
    if t.is_null() {
        return None;
    }
    let mut typmod = -1i32;
    let tup = pg_sys::LookupTypeName(std::ptr::null_mut(), t, &mut typmod, true);
    if tup.is_null() {
        return None;
    }
    let oid = pg_sys::typeTypeId(tup);
    pg_sys::ReleaseSysCache(tup);
    Some((oid, typmod))
}

/// Whether an `ALTER TABLE` (or `ALTER TYPE` of a composite type) may
/// change what a replicated table's layout records: its columns, their
/// types, or its primary key. Some: the columns it retypes with a `USING`
/// clause that may change their values. (Types and collations are
/// compared with the layout's; dropped columns are followed by
/// `follow_drops`, which knows which went.)
unsafe fn layout_change(tree: *mut pg_sys::Node) -> Option<Vec<String>> {
    use pg_sys::AlterTableType as T;
    if tree.is_null() || (*tree).type_ != pg_sys::NodeTag::T_AlterTableStmt {
        return None;
    }
    let cmds = pgrx::PgList::<pg_sys::AlterTableCmd>::from_pg((*(tree as *mut pg_sys::AlterTableStmt)).cmds);
    let (mut changes, mut rewritten) = (false, Vec::new());
    let name = |c: *mut pg_sys::AlterTableCmd| (!(*c).name.is_null()).then(|| CStr::from_ptr((*c).name).to_string_lossy().into_owned());
    for c in cmds.iter_ptr() {
        if c.is_null() || (*c).type_ != pg_sys::NodeTag::T_AlterTableCmd {
            continue;
        }
        changes |= match (*c).subtype {
            T::AT_AddColumn | T::AT_DropColumn | T::AT_DropExpression | T::AT_DropConstraint => true,
            T::AT_AlterColumnType => {
                let def = (*c).def as *mut pg_sys::ColumnDef;
                let col = name(c);
                if !def.is_null() && (*def).type_ == pg_sys::NodeTag::T_ColumnDef && !plain_using(def, col.as_deref()) {
                    rewritten.extend(col);
                }
                true
            }
            // Only a primary key: a restore adds the others (unique, check,
            // foreign keys) before it, while the table has none.
            T::AT_AddConstraint => {
                let con = (*c).def as *mut pg_sys::Constraint;
                !con.is_null()
                    && (*con).type_ == pg_sys::NodeTag::T_Constraint
                    && (*con).contype == pg_sys::ConstrType::CONSTR_PRIMARY
            }
            _ => false,
        };
    }
    changes.then_some(rewritten)
}
