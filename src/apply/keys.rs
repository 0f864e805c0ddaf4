//! Whether a key value an op names is stored as it is by its column. A cast
//! that rounds or cuts it (numeric(p,s), varchar(n), char(n), name,
//! "char", and the elements of arrays of them) would write the op's
//! changes to another row's key, so the apply refuses such a key
//! (`invalid_key`) instead.

use pgrx::pg_sys;

/// The length limit of a `character varying(n)` or `character(n)` type as
/// `format_type` writes it; None for any other type.
fn max_length(ty: &str) -> Option<usize> {
    let rest = ty.strip_prefix("character varying(").or_else(|| ty.strip_prefix("character("))?;
    rest.strip_suffix(')')?.parse().ok()
}

/// Whether a key given as text is stored as it is by a column of type `ty`
/// (as `format_type` writes it); an array's elements each.
pub(super) fn text_fits(ty: &str, text: &str) -> bool {
    match ty.strip_suffix("[]") {
        Some(element) => array_elements(text).is_some_and(|els| els.iter().flatten().all(|e| element_fits(element, e))),
        None => element_fits(ty, text),
    }
}

fn element_fits(ty: &str, text: &str) -> bool {
    if ty.starts_with("numeric(") {
        return not_a_number(text)
            || serde_json::from_str::<serde_json::Number>(text).is_ok_and(|n| numeric_fits(ty, &n));
    }
    match ty {
        "name" => text.len() < pg_sys::NAMEDATALEN as usize,
        // One byte, or the octal escape `"char"` prints a non-ASCII byte as.
        "\"char\"" => {
            text.len() <= 1
                || (text.len() == 4
                    && text.starts_with('\\')
                    && matches!(text.as_bytes()[1], b'2' | b'3')
                    && text[2..].bytes().all(|b| (b'0'..=b'7').contains(&b)))
        }
        _ => max_length(ty).is_none_or(|n| text.chars().count() <= n),
    }
}

/// A key's text in the one form its column of type `ty` (`oid`) prints
/// it, where a column reads one value from several texts: a uuid in lower
/// case with hyphens (PostgreSQL reads upper case, braces, hyphens after
/// any group of four digits), a `character(n)` padded with spaces to n,
/// any other base type but text, varchar and name, and arrays of base
/// types, through its own input and output (`io_form`: an array's
/// elements quoted or not, an inet with or without /32). None when its
/// column could not read it. (Two texts of one key made two clocks for
/// one row, and ops of both in one batch, or in one rebuild, failed it.)
pub(super) fn text_form(ty: &str, text: String, (oid, typmod): (pg_sys::Oid, i32)) -> Option<String> {
    if ty == "uuid" {
        return uuid_form(&text);
    }
    if let Some(n) = ty.strip_prefix("character(").and_then(|r| r.strip_suffix(')')).and_then(|n| n.parse::<usize>().ok()) {
        return Some(format!("{:<n$}", text.trim_end_matches(' ')));
    }
    // (A text is its own form; these are the types most keys have. An
    // enum's label is too, when it has one: the write refuses it if not.)
    let as_given = matches!(ty, "text" | "name" | "character varying") || ty.starts_with("character varying(") && !ty.ends_with("[]");
    if as_given || plainly_printed(ty, &text) || unsafe { pg_sys::type_is_enum(oid) } || !runs_no_users_code(oid) {
        Some(text)
    } else {
        io_form(oid, typmod, &text)
    }
}

/// Whether reading a type's text runs only code a superuser installed: a
/// base type, or an array of base types or of enums. A domain's check
/// (also as a composite's or a range's field, or an array's element) may
/// run any SQL of its owner's, which converge must not run for it here
/// (in the worker as a superuser); such keys are taken as given.
fn runs_no_users_code(oid: pg_sys::Oid) -> bool {
    let base = pg_sys::TYPTYPE_BASE as std::ffi::c_char;
    unsafe {
        if pg_sys::get_typtype(oid) != base {
            return false;
        }
        let element = pg_sys::get_element_type(oid);
        element == pg_sys::InvalidOid || pg_sys::get_typtype(element) == base || pg_sys::type_is_enum(element)
    }
}

/// Whether `text` is already the form a one-dimensional array of text,
/// varchar or name prints: braces around elements that need no quotes
/// (none empty, NULL, or with a quote, backslash, brace, comma or space).
/// The arrays converge's own ops and peers send are so, and need no
/// subtransaction (`io_form`'s cost: 4 to 11 µs an op, measured).
fn plainly_printed(ty: &str, text: &str) -> bool {
    let Some(element) = ty.strip_suffix("[]") else { return false };
    let texts = matches!(element, "text" | "name" | "character varying") || element.starts_with("character varying(");
    let Some(body) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else { return false };
    texts
        && body.split(',').all(|e| {
            !e.is_empty()
                && !e.eq_ignore_ascii_case("NULL")
                && !e.bytes().any(|b| matches!(b, b'"' | b'\\' | b'{' | b'}' | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        })
}

/// The text a column of type `oid` and `typmod` prints for the value it
/// stores from `text` (an array of character(n) pads its elements;
/// `text_fits` has refused what the typmod would cut or round: the types
/// here are base types and arrays of them); None if the type's input
/// refuses it. In a subtransaction: an input function
/// reports bad text by raising.
fn io_form(oid: pg_sys::Oid, typmod: i32, text: &str) -> Option<String> {
    let given = std::ffi::CString::new(text).ok()?;
    let r = super::subtransaction(|| unsafe {
        let (mut input, mut param, mut output, mut varlena) = (pg_sys::InvalidOid, pg_sys::InvalidOid, pg_sys::InvalidOid, false);
        pg_sys::getTypeInputInfo(oid, &mut input, &mut param);
        pg_sys::getTypeOutputInfo(oid, &mut output, &mut varlena);
        let value = pg_sys::OidInputFunctionCall(input, given.as_ptr() as *mut std::ffi::c_char, param, typmod);
        let printed = pg_sys::OidOutputFunctionCall(output, value);
        let form = std::ffi::CStr::from_ptr(printed).to_str().map(String::from).ok();
        pg_sys::pfree(printed.cast());
        form
    });
    match r {
        Ok(form) => form,
        Err(c) => {
            super::reraise_if_transaction_error(&c);
            None
        }
    }
}

fn uuid_form(text: &str) -> Option<String> {
    let body = match text.strip_prefix('{') {
        Some(rest) => rest.strip_suffix('}')?,
        None => text,
    };
    let mut digits = String::with_capacity(32);
    let mut hyphen_ok = false;
    for c in body.chars() {
        if c == '-' && hyphen_ok {
            hyphen_ok = false;
        } else if c.is_ascii_hexdigit() {
            digits.push(c.to_ascii_lowercase());
            hyphen_ok = digits.len() % 4 == 0 && digits.len() < 32;
        } else {
            return None;
        }
    }
    (digits.len() == 32).then(|| format!("{}-{}-{}-{}-{}", &digits[..8], &digits[8..12], &digits[12..16], &digits[16..20], &digits[20..]))
}

/// A numeric value that is not a JSON number, as PostgreSQL prints it (and
/// the trigger renders it: a string).
pub(super) fn not_a_number(text: &str) -> bool {
    ["NaN", "Infinity", "-Infinity"].contains(&text)
}

/// Whether a numeric key is stored exactly by a `numeric(p,s)` column: one
/// with more fractional digits than `s` would be rounded to another row's
/// key (and one with more than `p - s` integer digits does not fit). An
/// unconstrained numeric, real and double keep what the trigger renders.
pub(super) fn numeric_fits(ty: &str, n: &serde_json::Number) -> bool {
    let Some(mods) = ty.strip_prefix("numeric(").and_then(|r| r.strip_suffix(')')) else { return true };
    let (p, s) = match mods.split_once(',') {
        Some((p, s)) => (p.trim().parse::<i64>(), s.trim().parse::<i64>()),
        None => (mods.trim().parse::<i64>(), Ok(0)),
    };
    let (Ok(p), Ok(s), Some((_, digits, exp))) = (p, s, converge_core::json::decimal(&n.to_string())) else { return false };
    digits.is_empty() || (exp >= -s && (digits.len() as i64).checked_add(exp).is_some_and(|int| int <= p - s))
}

/// The elements of an array's text form (`{a,"b c",NULL,{d}}`, with or
/// without a `[1:2]=` dimension prefix), unquoted; NULL elements as None.
/// None if the text is not an array's.
fn array_elements(text: &str) -> Option<Vec<Option<String>>> {
    let body = if text.starts_with('[') { text.split_once('=')?.1 } else { text };
    let body = body.trim_start().strip_prefix('{')?;
    let (mut out, mut cur) = (Vec::new(), String::new());
    let (mut quoted, mut started, mut was_quoted) = (false, false, false);
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (_, '\\') => cur.push(chars.next()?),
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') => (quoted, started, was_quoted) = (true, true, true),
            (false, '{' | '}' | ',') => {
                if started {
                    let null = !was_quoted && cur.trim().eq_ignore_ascii_case("NULL");
                    out.push((!null).then(|| if was_quoted { cur.clone() } else { cur.trim_end().to_string() }));
                }
                cur.clear();
                (started, was_quoted) = (false, false);
            }
            (false, c) if c.is_whitespace() && !started => {}
            (false, c) => {
                cur.push(c);
                started = true;
            }
        }
    }
    (!quoted).then_some(out)
}

/// A key as rows are told apart within a batch: numbers by value, so that
/// 1, 1.0 and 10e-1 are one row, as they are to a numeric key column and
/// to row_state's jsonb keys. (Ops of one row under two spellings made the
/// column upsert touch the row twice, 21000, and the whole batch failed.)
pub(crate) fn row_identity(key: &serde_json::Value) -> String {
    let mut out = String::new();
    write_identity(key, &mut out);
    out
}

fn write_identity(key: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    use std::fmt::Write;
    match key {
        Value::Number(n) => match n.as_i64() {
            // The same form, without printing and reading the number.
            Some(i) => integer_form(i, out),
            None => number_form(&n.to_string(), out),
        },
        Value::Object(m) => {
            out.push('{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    // Nothing to escape: as JSON writes it.
                    out.push('"');
                    out.push_str(k);
                    out.push_str("\":");
                } else {
                    let _ = write!(out, "{}:", Value::from(k.as_str()));
                }
                write_identity(v, out);
            }
            out.push('}');
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// `number_form` of an integer's text.
fn integer_form(i: i64, out: &mut String) {
    use std::fmt::Write;
    if i == 0 {
        out.push('0');
        return;
    }
    let (mut m, mut exp) = (i.unsigned_abs(), 0);
    while m % 10 == 0 {
        m /= 10;
        exp += 1;
    }
    let _ = write!(out, "{}{m}e{exp}", if i < 0 { "-" } else { "" });
}

/// A JSON number's text in one form per value (`converge_core::json::decimal`:
/// digits and a power of ten), or as it is when it is no plain number.
fn number_form(text: &str, out: &mut String) {
    use std::fmt::Write;
    match converge_core::json::decimal(text) {
        Some((_, digits, _)) if digits.is_empty() => out.push('0'),
        Some((neg, digits, exp)) => {
            let _ = write!(out, "{}{digits}e{exp}", if neg { "-" } else { "" });
        }
        None => out.push_str(text),
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn spellings_of_one_uuid_or_padded_key_are_one_key() {
        use super::text_form;
        let canon = Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_string());
        for given in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        ] {
            assert_eq!(text_form("uuid", given.to_string(), (pg_sys::UUIDOID, -1)), canon, "{given}");
        }
        // What uuid_in refuses: a hyphen not after a group of four digits,
        // at either end, one brace, too few or too many digits.
        for given in ["a0eeb-c999c0b4ef8bb6d6bb9bd380a11", "-a0eebc999c0b4ef8bb6d6bb9bd380a11", "a0eebc999c0b4ef8bb6d6bb9bd380a11-",
                      "{a0eebc999c0b4ef8bb6d6bb9bd380a11", "a0eebc99", "a0eebc999c0b4ef8bb6d6bb9bd380a1100", "g0eebc999c0b4ef8bb6d6bb9bd380a11"] {
            assert_eq!(text_form("uuid", given.to_string(), (pg_sys::UUIDOID, -1)), None, "{given}");
        }
        assert_eq!(text_form("character(4)", "ab".into(), (pg_sys::BPCHAROID, 8)).as_deref(), Some("ab  "));
        assert_eq!(text_form("character(4)", "ab  ".into(), (pg_sys::BPCHAROID, 8)).as_deref(), Some("ab  "));
        assert_eq!(text_form("character(2)", "é".into(), (pg_sys::BPCHAROID, 6)).as_deref(), Some("é "));
        assert_eq!(text_form("text", "AB ".into(), (pg_sys::TEXTOID, -1)).as_deref(), Some("AB "));
    }

    #[pg_test]
    fn spellings_of_one_array_inet_or_char_key_are_one_key() {
        use super::text_form;
        let form = |ty: &str, oid, given: &str| text_form(ty, given.to_string(), (oid, -1));
        // (A typmod is the length plus 4.)
        let padded = |given: &str| text_form("character(4)[]", given.to_string(), (pg_sys::BPCHARARRAYOID, 8));
        // As the column prints them (what the op trigger writes).
        assert_eq!(padded("{ab}").as_deref(), Some("{\"ab  \"}"));
        assert_eq!(padded("{\"ab  \",cd}").as_deref(), Some("{\"ab  \",\"cd  \"}"));
        for given in ["{ab,cd}", "{\"ab\",cd}", "{ ab , \"cd\" }", "[1:2]={ab,cd}"] {
            assert_eq!(form("text[]", pg_sys::TEXTARRAYOID, given).as_deref(), Some("{ab,cd}"), "{given}");
        }
        assert_eq!(form("text[]", pg_sys::TEXTARRAYOID, "[0:1]={ab,cd}").as_deref(), Some("[0:1]={ab,cd}"));
        assert_eq!(form("integer[]", pg_sys::INT4ARRAYOID, "{1, +2,03}").as_deref(), Some("{1,2,3}"));
        assert_eq!(form("inet", pg_sys::INETOID, "10.0.0.1/32").as_deref(), Some("10.0.0.1"));
        assert_eq!(form("\"char\"", pg_sys::CHAROID, "\\101").as_deref(), Some("A"));
        // What the type's input refuses is no key of it.
        for (ty, oid, given) in [("text[]", pg_sys::TEXTARRAYOID, "{ab"), ("inet", pg_sys::INETOID, "10.0.0.300"), ("integer[]", pg_sys::INT4ARRAYOID, "{x}")] {
            assert_eq!(form(ty, oid, given), None, "{given}");
        }
        // Arrays already in printed form are taken as they are (no round
        // trip); the others are printed, as each element needs.
        for (given, printed) in [("{ab,cd}", "{ab,cd}"), ("{}", "{}"), ("{\"\",x}", "{\"\",x}"), ("{null}", "{NULL}"), ("{\"null\"}", "{\"null\"}"),
                                 ("{a\\,b}", "{\"a,b\"}"), ("{ a}", "{a}"), ("{\"a b\"}", "{\"a b\"}"), ("{é,x}", "{é,x}")] {
            assert_eq!(form("text[]", pg_sys::TEXTARRAYOID, given).as_deref(), Some(printed), "{given}");
            assert_eq!(super::plainly_printed("text[]", given), given == printed && given != "{}" && !given.contains('"'), "{given}");
        }
        // A domain (its check may run its owner's SQL) is taken as given,
        // and so are arrays and composites that may hold one.
        Spi::run("CREATE DOMAIN pg_temp.short_code AS text CHECK (length(VALUE) < 3); CREATE TYPE pg_temp.pair AS (a int, b int)").unwrap();
        let domain = Spi::get_one::<pg_sys::Oid>("SELECT 'pg_temp.short_code'::regtype::oid").unwrap().unwrap();
        let pair = Spi::get_one::<pg_sys::Oid>("SELECT 'pg_temp.pair'::regtype::oid").unwrap().unwrap();
        let domains = Spi::get_one::<pg_sys::Oid>("SELECT 'pg_temp._short_code'::regtype::oid").unwrap().unwrap();
        assert_eq!(form("short_code", domain, "toolong").as_deref(), Some("toolong"));
        assert_eq!(form("pair", pair, "( 1,2)").as_deref(), Some("( 1,2)"));
        assert_eq!(form("short_code[]", domains, "{\"ab\"}").as_deref(), Some("{\"ab\"}"));
        // text, varchar and name are taken as given (no round trip).
        assert_eq!(form("character varying(5)", pg_sys::VARCHAROID, " a").as_deref(), Some(" a"));
    }

    #[pg_test]
    fn spellings_of_one_number_are_one_row() {
        let number_form = |t: &str| {
            let mut out = String::new();
            super::number_form(t, &mut out);
            out
        };
        for (a, b) in [("1", "1.0"), ("1.50", "15e-1"), ("-0.0", "0"), ("100", "1E2"), ("0.001", "1e-3"), ("-2.10", "-21e-1")] {
            assert_eq!(number_form(a), number_form(b), "{a} and {b}");
        }
        for (a, b) in [("1", "10"), ("1.5", "-1.5"), ("0.1", "0.01"), ("123", "1230e-2"), ("1", "1e99999999999999999999")] {
            assert_ne!(number_form(a), number_form(b), "{a} and {b}");
        }
        // Integers take a shorter way to the same form.
        for i in [0i64, 1, -1, 7, 10, -10, 100, 120, -1200, 1005, i64::MAX, i64::MIN, i64::MIN + 1, 9_000_000_000_000_000_000] {
            let mut fast = String::new();
            super::integer_form(i, &mut fast);
            assert_eq!(fast, number_form(&i.to_string()), "{i}");
            assert_eq!(super::row_identity(&serde_json::json!(i)), fast, "{i}");
        }
        // Numbers as parsed from text take the shortcut or the long way
        // (serde_json's integers are those without a point or exponent).
        for t in ["-0", "0", "10", "-10", "1E2", "10.0", "100e-1", "9223372036854775807", "9223372036854775808", "-9223372036854775809", "1e30"] {
            let parsed: serde_json::Value = serde_json::from_str(t).unwrap();
            assert_eq!(super::row_identity(&parsed), number_form(t), "{t}");
        }
        // Field names are written as JSON writes them, escaped or not.
        let key = serde_json::json!({"id": 10, "ré gion": "a\"b", "q\"x": [1.50], "": null});
        assert_eq!(super::row_identity(&key), r#"{"":null,"id":1e1,"q\"x":[1.5],"ré gion":"a\"b"}"#);
    }
}
