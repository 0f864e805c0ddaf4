//! Which table an op names: resolving a target name to a replicated table
//! (cached across batches, cleared by relcache invalidations) and the
//! canonical form of a row key.

use super::keys::{not_a_number, numeric_fits, text_fits, text_form};
use super::*;

thread_local! {
    /// resolve()'s answers across calls, by (role, search_path, name): the
    /// role matters ("$user" in the path, schemas it may not use). A worker
    /// or a client names the same few tables batch after batch. Cleared
    /// on any relcache invalidation (DDL, converge.replicate, ANALYZE)
    /// and on any change of a schema (trigger::watch_relcache).
    static RESOLVED: std::cell::RefCell<HashMap<(pg_sys::Oid, String, String), Result<Target, &'static str>>> =
        std::cell::RefCell::new(HashMap::new());
    /// Bumped by every clear: an answer read before a clear is not kept.
    static GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

pub fn forget_resolved() {
    RESOLVED.with(|r| r.borrow_mut().clear());
    GENERATION.with(|g| g.set(g.get() + 1));
}

/// Resolve a target table name to a replicated table (cached per batch,
/// and across batches in RESOLVED).
pub(super) fn resolve(name: &str, targets: &mut Vec<Target>, cache: &mut HashMap<String, Result<usize, &'static str>>) -> Result<usize, &'static str> {
    if let Some(r) = cache.get(name) {
        return *r;
    }
    // (The caller's own path: the one the name is resolved under.)
    let key = (unsafe { pg_sys::GetUserId() }, crate::security::callers_path().to_string_lossy().into_owned(), name.to_string());
    // A table created in a transaction that rolled back sent no
    // invalidation: an answer whose table is gone is not used.
    let alive = |k: &Result<Target, &'static str>| k.as_ref().map_or(true, |t| !unsafe { pg_sys::get_rel_name(t.rel) }.is_null());
    if let Some(known) = RESOLVED.with(|r| r.borrow().get(&key).cloned()).filter(alive) {
        let r = known.map(|t| {
            targets.push(t);
            targets.len() - 1
        });
        cache.insert(name.to_string(), r);
        return r;
    }
    crate::trigger::watch_relcache();
    let generation = GENERATION.with(|g| g.get());
    let r = resolve_now(name, targets);
    // An unknown name is not kept: creating that table later sends no
    // invalidation that would clear it. Nor is an answer that an
    // invalidation processed while it was read may have outdated.
    if r != Err("unknown_table") && GENERATION.with(|g| g.get()) == generation {
        RESOLVED.with(|m| m.borrow_mut().insert(key, r.map(|i| targets[i].clone())));
    }
    cache.insert(name.to_string(), r);
    r
}

pub(super) fn resolve_now(name: &str, targets: &mut Vec<Target>) -> Result<usize, &'static str> {
    // The name as the caller would resolve it (its search_path), and only
    // that: the rest is read under converge's fixed path. to_regclass
    // raises on some malformed names: a subtransaction keeps that an op's
    // rejection, not the batch's error. A name is one or two parts.
    let plausible = !name.is_empty() && name.split('.').count() <= 2 && name.split('.').all(|p| !p.is_empty());
    let rel = match plausible {
        true => subtransaction(|| {
            crate::security::in_callers_path(|| {
                crate::spi::read_one::<pg_sys::Oid>("SELECT pg_catalog.to_regclass($1)::pg_catalog.oid", &[name.into()])
            })
        }),
        false => Ok(None),
    };
    // (Outside an apply, for freeze, epoch and request, too.)
    let found = rel.and_then(|rel| subtransaction(|| crate::security::in_fixed_path(|| {
        Spi::connect(|c| {
            let sql = format!(
                "SELECT t.rel::oid, r.table_name IS NOT NULL, r.key_columns, r.crdt_columns::text, r.other_columns,
                        (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE c.oid = t.rel),
                        ARRAY(SELECT format_type(a.atttypid, a.atttypmod)
                                FROM unnest(r.key_columns) WITH ORDINALITY k(name, i)
                                JOIN pg_attribute a ON a.attrelid = t.rel AND a.attname = k.name ORDER BY k.i),
                        ARRAY(SELECT format('%I.%I', tn.nspname, ty.typname)
                                FROM unnest(r.key_columns) WITH ORDINALITY k(name, i)
                                JOIN pg_attribute a ON a.attrelid = t.rel AND a.attname = k.name
                                JOIN pg_type ty ON ty.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = ty.typnamespace
                               ORDER BY k.i),
                        ARRAY(SELECT a.attname::text FROM pg_attribute a
                               WHERE a.attrelid = t.rel AND a.attnotnull AND NOT a.attisdropped AND r.crdt_columns ? a.attname::text),
                        coalesce(r.client_writes, true),
                        ARRAY(SELECT a.atttypid FROM unnest(r.key_columns) WITH ORDINALITY k(name, i)
                                JOIN pg_attribute a ON a.attrelid = t.rel AND a.attname = k.name ORDER BY k.i),
                        ARRAY(SELECT a.atttypmod FROM unnest(r.key_columns) WITH ORDINALITY k(name, i)
                                JOIN pg_attribute a ON a.attrelid = t.rel AND a.attname = k.name ORDER BY k.i)
                   FROM (SELECT $1::oid::regclass AS rel) t
                   LEFT JOIN converge.replicated r ON r.table_name = t.rel"
            );
            let t = c.select(&sql, Some(1), &[rel.into()])?;
            let row = t.first();
            Ok::<_, pgrx::spi::SpiError>((
                row.get::<pg_sys::Oid>(1)?,
                row.get::<bool>(2)?.unwrap_or(false),
                row.get::<Vec<String>>(3)?,
                row.get::<String>(4)?,
                row.get::<Vec<String>>(7)?,
                row.get::<Vec<String>>(5)?,
                row.get::<String>(6)?,
                row.get::<Vec<String>>(8)?,
                row.get::<Vec<String>>(9)?,
                row.get::<bool>(10)?.unwrap_or(true),
                row.get::<Vec<pg_sys::Oid>>(11)?,
                row.get::<Vec<i32>>(12)?,
            ))
        })
    })));
    let r = match found {
        Ok(Ok((Some(rel), true, Some(keys), Some(crdt), key_types, other, name, key_casts, not_null_crdt, client_writes, key_oids, key_typmods))) => {
            let crdt: HashMap<String, String> = serde_json::from_str(&crdt).unwrap_or_default();
            let other = other.unwrap_or_default();
            let name = name.unwrap_or_default();
            // (The authorities are read here, outside the subtransaction:
            // there reads see the statement's start, not a setting changed
            // since in this statement, as set_authority applying the
            // freezes it refused, or a batch after a handover it applied.)
            let (versions, authority, table_authority) = crate::security::in_fixed_path(|| {
                use crate::coordination::{authorities_sql, parse, table_authority_sql};
                let r = "$1::oid::regclass";
                let sql = format!("SELECT ARRAY[{}, {}]", authorities_sql(r), table_authority_sql(r));
                let [columns, table]: [Option<String>; 2] = crate::spi::read_one::<Vec<Option<String>>>(&sql, &[rel.into()])
                    .and_then(|v| v.try_into().ok())
                    .unwrap_or_default();
                (schema_versions(rel), parse(columns), parse(table).remove(""))
            });
            targets.push(Target {
                rel,
                keys,
                key_types: key_types.unwrap_or_default(),
                key_casts: key_casts.unwrap_or_default(),
                key_oids: key_oids.unwrap_or_default().into_iter().zip(key_typmods.unwrap_or_default()).collect(),
                crdt,
                other,
                not_null_crdt: not_null_crdt.unwrap_or_default(),
                row_ops: false,
                name,
                authority,
                versions,
                table_authority,
                client_writes,
                client_checked: false,
            });
            Ok(targets.len() - 1)
        }
        Ok(Ok((Some(_), _, _, _, _, _, _, _, _, _, _, _))) => Err("not_replicated"),
        Ok(Ok(_)) | Ok(Err(_)) => Err("unknown_table"),
        Err(c) => {
            reraise_if_transaction_error(&c);
            Err("unknown_table")
        }
    };
    r
}

/// A key object with exactly the key columns, each value as the op trigger
/// renders it: integers and booleans as JSON, numeric and floating point as
/// JSON numbers, anything else as a string in the one form its column
/// prints (`keys::text_form`; through the type's own input and output
/// where that reads one value from several texts, `keys::io_form`); each
/// one the column stores as it is (`keys::text_fits`,
/// `keys::numeric_fits`). None if it cannot be.
pub(super) fn canonical_key(key: &serde_json::Value, t: &Target) -> Option<serde_json::Value> {
    key_as_logged(key, &t.keys, &t.key_types, Some(&t.key_oids))
}

/// `canonical_key`, with the text of a key as given unless `respell` (the
/// key columns' types and typmods): a signed op's signature covers its key as its
/// device wrote it (ops signed before this node respelled keys included).
pub(super) fn key_as_logged(key: &serde_json::Value, names: &[String], types: &[String], respell: Option<&[(pg_sys::Oid, i32)]>) -> Option<serde_json::Value> {
    use serde_json::Value;
    let obj = key.as_object()?;
    if obj.len() != names.len() {
        return None;
    }
    let mut out = serde_json::Map::new();
    for (i, (name, full)) in names.iter().zip(types).enumerate() {
        let v = obj.get(name)?;
        // An array key is its text form, whatever its element type.
        let ty = if full.ends_with("[]") { "" } else { full.split('(').next().unwrap_or("").trim() };
        let canon = match ty {
            "smallint" | "integer" | "bigint" => match v {
                Value::Number(n) => n.as_i64().map(Value::from)?,
                Value::String(s) => Value::from(s.trim().parse::<i64>().ok()?),
                _ => return None,
            },
            "boolean" => match v {
                Value::Bool(b) => Value::Bool(*b),
                Value::String(s) if s == "true" || s == "false" => Value::Bool(s == "true"),
                _ => return None,
            },
            "numeric" | "real" | "double precision" => match v {
                // As the trigger renders the values that are not numbers.
                Value::String(s) if not_a_number(s) => v.clone(),
                Value::Number(n) if numeric_fits(full, n) => v.clone(),
                Value::String(s) => match serde_json::from_str::<Value>(s).ok()? {
                    Value::Number(n) if numeric_fits(full, &n) => Value::Number(n),
                    _ => return None,
                },
                _ => return None,
            },
            _ => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                if !text_fits(full, &text) {
                    return None;
                }
                Value::String(match respell {
                    Some(types) => text_form(full, text, *types.get(i)?)?,
                    None => text,
                })
            }
        };
        out.insert(name.clone(), canon);
    }
    Some(Value::Object(out))
}

pub(super) fn column_exists(rel: pg_sys::Oid, col: &str) -> bool {
    crate::spi::read_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped)",
        &[rel.into(), col.into()],
    )
    .unwrap_or(false)
}


/// The schema versions set for a table's columns (converge.set_schema_version):
/// column ('' for the row ops) -> version.
fn schema_versions(rel: pg_sys::Oid) -> HashMap<String, i32> {
    crate::spi::read_one::<String>(
        "SELECT jsonb_object_agg(v.column_name, v.version)::text FROM converge.schema_version v WHERE v.table_name = $1::oid::regclass",
        &[rel.into()],
    )
    .and_then(|j| serde_json::from_str(&j).ok())
    .unwrap_or_default()
}

/// The row an SQL call names (converge.freeze, converge.epoch): the table
/// as ops name it, the key in canonical form (as ops carry it), and the
/// table's authority. Err: `not_replicated`, `unknown_table`, `invalid_key`.
pub fn row_target(rel: pg_sys::Oid, key: &serde_json::Value) -> Result<(String, serde_json::Value, Option<crate::coordination::Authority>), &'static str> {
    let name = crate::security::in_fixed_path(|| {
        crate::spi::read_one::<String>(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[rel.into()],
        )
    })
    .ok_or("unknown_table")?;
    let mut targets = Vec::new();
    let i = resolve_now(&name, &mut targets)?;
    let t = &targets[i];
    let key = canonical_key(key, t).ok_or("invalid_key")?;
    Ok((t.name.clone(), key, t.table_authority.clone()))
}

/// A replicated table as requests see it (requests.rs): who decides each
/// column, and what a decision may write.
pub struct Layout {
    pub rel: pg_sys::Oid,
    /// `schema.table`, as ops name it.
    pub name: String,
    pub keys: Vec<String>,
    key_types: Vec<String>,
    pub crdt: HashMap<String, String>,
    /// Non-CRDT, non-key columns.
    pub other: Vec<String>,
    /// The row ops' schema version.
    pub row_version: i32,
    pub table_authority: Option<crate::coordination::Authority>,
    authority: crate::coordination::Authorities,
    versions: HashMap<String, i32>,
}

impl Layout {
    /// The node that decides requests for `col`: its column authority,
    /// else the table's.
    pub fn decider(&self, col: &str) -> Option<String> {
        self.authority.get(col).or(self.table_authority.as_ref()).map(|a| a.node.clone())
    }

    /// Whether `me` decides requests for `col` now (not while the authority
    /// is handed over to it and not taken: handover.rs).
    pub fn decides_now(&self, col: &str, me: &str) -> bool {
        self.authority.get(col).or(self.table_authority.as_ref()).is_some_and(|a| a.holds(me, None))
    }

    /// The node that decides `col` itself (a column authority that is not
    /// `removes_only`), if `me` does not hold it now.
    pub fn column_authority(&self, col: &str, me: &str) -> Option<String> {
        self.authority.get(col).filter(|a| !a.removes_only && !a.holds(me, None)).map(|a| a.node.clone())
    }

    /// The node whose removals alone count on `col` (removes_only), if `me`
    /// does not hold it now.
    pub fn removes_only_node(&self, col: &str, me: &str) -> Option<String> {
        self.authority.get(col).filter(|a| a.removes_only && !a.holds(me, None)).map(|a| a.node.clone())
    }

    /// The authority that decides requests for `col`: `col` if it has
    /// one of its own, else `""` (the table's).
    pub fn deciding<'a>(&self, col: &'a str) -> &'a str {
        if self.authority.contains_key(col) { col } else { "" }
    }

    /// Whether `col` has an authority of its own that `me` holds now.
    pub fn holds(&self, col: &str, me: &str) -> bool {
        self.authority.get(col).is_some_and(|a| a.holds(me, None))
    }

    /// The schema version of `col`'s ops here.
    pub fn version(&self, col: &str) -> i32 {
        self.versions.get(col).copied().unwrap_or(1)
    }

    /// `key` in canonical form, if it is a key of this table; a uuid's or
    /// character(n)'s text as given (requests name rows as their makers
    /// wrote them, as they did before keys were respelled).
    pub fn canonical(&self, key: &serde_json::Value) -> Option<serde_json::Value> {
        key_as_logged(key, &self.keys, &self.key_types, None)
    }
}

/// The layout of the replicated table an op or a call names (qualified).
/// Err: `not_replicated`, `unknown_table`.
pub fn layout_of(name: &str) -> Result<Layout, &'static str> {
    let mut targets = Vec::new();
    let i = resolve_now(name, &mut targets)?;
    let t = targets.swap_remove(i);
    Ok(Layout {
        rel: t.rel,
        row_version: t.versions.get("").copied().unwrap_or(1),
        name: t.name,
        keys: t.keys,
        key_types: t.key_types,
        crdt: t.crdt,
        other: t.other,
        table_authority: t.table_authority,
        authority: t.authority,
        versions: t.versions,
    })
}
