//! jsonb datums made from serde values directly, with PostgreSQL's own
//! jsonb builder (`pushJsonbValue`), instead of printing the value and
//! parsing it again with `jsonb_in` (what `pgrx::JsonB` does). Row ops
//! turn keys and values into jsonb several times per op, and the parse
//! was a tenth of an applied row op's time (perf of
//! bench/apply_throughput.sh).
//!
//! The result is byte for byte what `jsonb_in` makes of serde's text:
//! numbers go through `numeric_in` from their own text (serde keeps it:
//! `arbitrary_precision`), objects are sorted and deduplicated by the
//! builder as by the parser, and a string `jsonb_in` would refuse (one
//! holding U+0000) is refused with its SQLSTATE.

use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::{Map, Value};
use std::ffi::CString;

type State = *mut pg_sys::JsonbParseState;

/// A serde value that becomes a jsonb datum through the builder, and is
/// read from one through the iterator.
pub struct Jb(pub Value);

impl IntoDatum for Jb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(datum(&self.0))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

impl FromDatum for Jb {
    unsafe fn from_polymorphic_datum(d: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Jb> {
        (!is_null).then(|| Jb(value(d)))
    }
}

/// A jsonb datum already made (by `datum`), passed on again as it is.
pub struct Made(pub pg_sys::Datum);

impl IntoDatum for Made {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

/// The jsonb datum of `v` (palloc'd in the current memory context).
pub fn datum(v: &Value) -> pg_sys::Datum {
    unsafe {
        let mut state: State = std::ptr::null_mut();
        let root = match v {
            Value::Array(_) | Value::Object(_) => push(&mut state, v),
            // A scalar alone is a one-element "raw scalar" array in jsonb.
            scalar => {
                let mut open: pg_sys::JsonbValue = std::mem::zeroed();
                open.type_ = pg_sys::jbvType::jbvArray;
                open.val.array.rawScalar = true;
                pg_sys::pushJsonbValue(&mut state, pg_sys::JsonbIteratorToken::WJB_BEGIN_ARRAY, &mut open);
                let mut s = scalar_value(scalar);
                pg_sys::pushJsonbValue(&mut state, pg_sys::JsonbIteratorToken::WJB_ELEM, &mut s);
                pg_sys::pushJsonbValue(&mut state, pg_sys::JsonbIteratorToken::WJB_END_ARRAY, std::ptr::null_mut())
            }
        };
        pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(root))
    }
}

/// Push a container and everything in it; the finished container's value
/// when it is the outermost one.
unsafe fn push(state: &mut State, v: &Value) -> *mut pg_sys::JsonbValue {
    use pg_sys::JsonbIteratorToken::*;
    // Recursion, as in jsonb_in: PostgreSQL's own check of the stack.
    pg_sys::check_stack_depth();
    match v {
        Value::Object(m) => {
            pg_sys::pushJsonbValue(state, WJB_BEGIN_OBJECT, std::ptr::null_mut());
            for (k, item) in m {
                let mut key = string_value(k);
                pg_sys::pushJsonbValue(state, WJB_KEY, &mut key);
                member(state, WJB_VALUE, item);
            }
            pg_sys::pushJsonbValue(state, WJB_END_OBJECT, std::ptr::null_mut())
        }
        Value::Array(items) => {
            pg_sys::pushJsonbValue(state, WJB_BEGIN_ARRAY, std::ptr::null_mut());
            for item in items {
                member(state, WJB_ELEM, item);
            }
            pg_sys::pushJsonbValue(state, WJB_END_ARRAY, std::ptr::null_mut())
        }
        _ => unreachable!("push is given containers only"),
    }
}

unsafe fn member(state: &mut State, token: pg_sys::JsonbIteratorToken::Type, v: &Value) {
    match v {
        Value::Array(_) | Value::Object(_) => {
            push(state, v);
        }
        scalar => {
            let mut s = scalar_value(scalar);
            pg_sys::pushJsonbValue(state, token, &mut s);
        }
    }
}

unsafe fn scalar_value(v: &Value) -> pg_sys::JsonbValue {
    let mut out: pg_sys::JsonbValue = std::mem::zeroed();
    match v {
        Value::Null => out.type_ = pg_sys::jbvType::jbvNull,
        Value::Bool(b) => {
            out.type_ = pg_sys::jbvType::jbvBool;
            out.val.boolean = *b;
        }
        Value::Number(n) => {
            out.type_ = pg_sys::jbvType::jbvNumeric;
            out.val.numeric = numeric(&n.to_string());
        }
        Value::String(s) => out = string_value(s),
        Value::Array(_) | Value::Object(_) => unreachable!("scalars only"),
    }
    out
}

/// A string as jsonb holds it: its bytes, copied into palloc'd memory.
unsafe fn string_value(s: &str) -> pg_sys::JsonbValue {
    if s.contains('\0') {
        // jsonb_in's error for "\u0000", message and detail alike.
        pgrx::pg_sys::panic::ErrorReport::new(PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER, "unsupported Unicode escape sequence", "converge")
            .set_detail("\\u0000 cannot be converted to text.")
            .report(pgrx::PgLogLevel::ERROR);
    }
    // jsonb's limit on one string (checkStringLen in jsonb.c).
    if s.len() > pg_sys::JENTRY_OFFLENMASK as usize {
        raise(PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, format!("string too long to represent as jsonb string ({} bytes)", s.len()));
    }
    let copy = pg_sys::palloc(s.len().max(1)) as *mut u8;
    std::ptr::copy_nonoverlapping(s.as_ptr(), copy, s.len());
    let mut out: pg_sys::JsonbValue = std::mem::zeroed();
    out.type_ = pg_sys::jbvType::jbvString;
    out.val.string.len = s.len() as i32;
    out.val.string.val = copy as *mut std::ffi::c_char;
    out
}

/// A JSON number's text through `numeric_in`, as `jsonb_in` reads it.
unsafe fn numeric(text: &str) -> pg_sys::Numeric {
    let c = CString::new(text).expect("a number's text has no NUL");
    let d = pgrx::direct_function_call_as_datum(
        pg_sys::numeric_in,
        &[Some(pg_sys::Datum::from(c.as_ptr())), Some(pg_sys::Datum::from(pg_sys::InvalidOid)), Some(pg_sys::Datum::from(-1i32))],
    )
    .expect("numeric_in returns a value");
    d.cast_mut_ptr()
}

/// How deep `value` reads: as deep as serde_json's own parser reads (127
/// levels), where reading through jsonb_out's text stopped; the serde
/// value's drop and printing recurse.
const MAX_DEPTH: usize = 127;

/// The serde value of a jsonb datum, read with jsonb's iterator instead
/// of printing it (`jsonb_out`) and parsing the text (`pgrx::JsonB`).
/// Numbers keep `numeric_out`'s text, as they would through the text.
///
/// # Safety
/// `d` must be a jsonb datum (possibly toasted).
pub unsafe fn value(d: pg_sys::Datum) -> Value {
    let jb = pg_sys::pg_detoast_datum(d.cast_mut_ptr()) as *mut pg_sys::Jsonb;
    let value = read(jb);
    // The copy detoasting made (most stored values: short header), freed
    // as pgrx::JsonB freed its text.
    if jb as *mut pg_sys::varlena != d.cast_mut_ptr::<pg_sys::varlena>() {
        pg_sys::pfree(jb.cast());
    }
    value
}

unsafe fn read(jb: *mut pg_sys::Jsonb) -> Value {
    use pg_sys::JsonbIteratorToken::*;
    let mut it = pg_sys::JsonbIteratorInit(&mut (*jb).root);
    let mut v: pg_sys::JsonbValue = std::mem::zeroed();
    // Open containers: (array or object, the key its next value goes under, raw scalar).
    let mut open: Vec<(Value, Option<String>, bool)> = Vec::new();
    let mut done = Value::Null;
    loop {
        let token = pg_sys::JsonbIteratorNext(&mut it, &mut v, false);
        let finished = match token {
            WJB_BEGIN_ARRAY | WJB_BEGIN_OBJECT if open.len() >= MAX_DEPTH => raise(
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!("a jsonb value nested more than {MAX_DEPTH} levels deep cannot be read here"),
            ),
            WJB_BEGIN_ARRAY => {
                open.push((Value::Array(Vec::new()), None, v.val.array.rawScalar));
                None
            }
            WJB_BEGIN_OBJECT => {
                open.push((Value::Object(Map::new()), None, false));
                None
            }
            WJB_KEY => {
                if let Some(top) = open.last_mut() {
                    top.1 = Some(text_of(&v));
                }
                None
            }
            WJB_VALUE | WJB_ELEM => Some(scalar_of(&v)),
            WJB_END_ARRAY | WJB_END_OBJECT => open.pop().map(|(c, _, raw)| match c {
                Value::Array(mut items) if raw => items.pop().unwrap_or(Value::Null),
                c => c,
            }),
            _ => break,
        };
        if let Some(x) = finished {
            match open.last_mut() {
                Some((Value::Array(items), _, _)) => items.push(x),
                Some((Value::Object(m), key, _)) => {
                    m.insert(key.take().unwrap_or_default(), x);
                }
                _ => done = x,
            }
        }
    }
    done
}

unsafe fn text_of(v: &pg_sys::JsonbValue) -> String {
    let s = v.val.string;
    let bytes = std::slice::from_raw_parts(s.val as *const u8, s.len as usize);
    String::from_utf8(bytes.to_vec()).unwrap_or_else(|_| {
        raise(PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE, "a jsonb string that is not UTF-8: converge needs a database in UTF-8")
    })
}

unsafe fn scalar_of(v: &pg_sys::JsonbValue) -> Value {
    match v.type_ {
        pg_sys::jbvType::jbvString => Value::String(text_of(v)),
        pg_sys::jbvType::jbvBool => Value::Bool(v.val.boolean),
        pg_sys::jbvType::jbvNumeric => {
            // numeric_out returns a C string (palloc'd), not a text datum.
            let out = pgrx::direct_function_call_as_datum(pg_sys::numeric_out, &[Some(pg_sys::Datum::from(v.val.numeric))])
                .expect("numeric_out returns a string");
            let ptr = out.cast_mut_ptr::<std::ffi::c_char>();
            let text = std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned();
            pg_sys::pfree(ptr.cast());
            // jsonb holds finite numbers only, which numeric_out writes as JSON numbers.
            Value::Number(text.parse().unwrap_or_else(|_| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("jsonb number {text} is no JSON number"))))
        }
        _ => Value::Null,
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    /// The next number below `n` of a simple generator (xorshift), so
    /// that a failure is repeatable.
    fn next(seed: &mut u64, n: u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed % n
    }

    const NUMBERS: [&str; 12] =
        ["0", "-0", "1", "-17", "1.50", "0.000", "1e5", "-2.5E-3", "123456789012345678901234567890.125", "9223372036854775808", "3.0", "1E+2"];
    const TEXTS: [&str; 9] = ["", "a", "id", "key with spaces", "\"quoted\" \\ slash", "tab\there\nline", "ñandú €", "😀 emoji", "ab"];

    fn text(seed: &mut u64) -> String {
        TEXTS[next(seed, TEXTS.len() as u64) as usize].to_string()
    }

    /// A value of many shapes, nested up to `depth`.
    fn any(seed: &mut u64, depth: u32) -> Value {
        match next(seed, if depth == 0 { 4 } else { 6 }) {
            0 => [Value::Null, Value::Bool(true), Value::Bool(false)][next(seed, 3) as usize].clone(),
            1 => Value::Number(NUMBERS[next(seed, NUMBERS.len() as u64) as usize].parse().unwrap()),
            2 | 3 => Value::String(text(seed)),
            4 => Value::Array((0..next(seed, 4)).map(|_| any(seed, depth - 1)).collect()),
            _ => Value::Object((0..next(seed, 5)).map(|_| (text(seed), any(seed, depth - 1))).collect()),
        }
    }

    unsafe fn bytes(d: pg_sys::Datum) -> Vec<u8> {
        let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
        let len = pgrx::varsize_any_exhdr(v);
        std::slice::from_raw_parts(pgrx::vardata_any(v) as *const u8, len).to_vec()
    }

    /// The builder makes exactly what jsonb_in makes of serde's text, and
    /// the reader gives back what parsing jsonb_out's text gives.
    #[pg_test]
    fn built_jsonb_is_what_jsonb_in_makes() {
        let mut seed = 0x5eed_u64;
        for i in 0..3000 {
            let v = any(&mut seed, 3);
            let text = v.to_string();
            let parsed = pgrx::JsonB(v.clone()).into_datum().expect("jsonb_in");
            let built = datum(&v);
            unsafe {
                assert_eq!(bytes(built), bytes(parsed), "value {i}: {text}");
                let through_text = pgrx::JsonB::from_datum(parsed, false).expect("jsonb").0;
                assert_eq!(value(built), through_text, "value {i} read back: {text}");
                assert_eq!(value(built).to_string(), through_text.to_string(), "value {i} as text: {text}");
            }
        }
    }

    #[pg_test(error = "unsupported Unicode escape sequence")]
    fn a_nul_in_a_string_is_refused_as_by_jsonb_in() {
        datum(&serde_json::json!({"id": "a\u{0}b"}));
    }

    unsafe fn parsed(text: &str) -> pg_sys::Datum {
        let c = CString::new(text).unwrap();
        pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(pg_sys::Datum::from(c.as_ptr()))]).unwrap()
    }

    #[pg_test]
    fn a_value_nested_as_deep_as_serde_reads_reads_back() {
        let text = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(unsafe { value(parsed(&text)) }.to_string(), text);
    }

    #[pg_test(error = "a jsonb value nested more than 127 levels deep cannot be read here")]
    fn a_value_nested_deeper_is_refused() {
        let depth = MAX_DEPTH + 1;
        unsafe { value(parsed(&format!("{}{}", "[".repeat(depth), "]".repeat(depth)))) };
    }

    /// Values as a table stores them (short headers, compressed, toasted
    /// out of line) read back through SPI, and arrays with NULLs sent.
    #[pg_test]
    fn stored_values_read_back_and_arrays_keep_their_nulls() {
        Spi::run("CREATE TEMP TABLE j (i int, v jsonb)").unwrap();
        Spi::run("ALTER TABLE j ALTER v SET STORAGE EXTERNAL").unwrap();
        Spi::run(
            "INSERT INTO j VALUES (1, '{\"id\": 1}'),
                                  (2, jsonb_build_object('long', repeat('x', 5000))),
                                  (3, (SELECT jsonb_agg(g) FROM generate_series(1, 3000) g))",
        )
        .unwrap();
        Spi::run("INSERT INTO j SELECT 4, to_jsonb(repeat('compressible ', 3000))").unwrap();
        Spi::run("ALTER TABLE j ALTER v SET STORAGE MAIN").unwrap();
        Spi::run("INSERT INTO j SELECT 5, jsonb_build_object('c', repeat('compressible ', 3000))").unwrap();
        for i in 1..=5 {
            let read = Spi::get_one::<Jb>(&format!("SELECT v FROM j WHERE i = {i}")).unwrap().unwrap().0;
            let text = Spi::get_one::<String>(&format!("SELECT v::text FROM j WHERE i = {i}")).unwrap().unwrap();
            assert_eq!(read, serde_json::from_str::<Value>(&text).unwrap(), "row {i}");
        }
        let sent: Vec<Option<Jb>> = vec![Some(Jb(serde_json::json!({"id": 2}))), None, Some(Jb(serde_json::json!("s")))];
        let back = Spi::get_one_with_args::<String>("SELECT $1::jsonb[]::text", &[sent.into()]).unwrap().unwrap();
        assert_eq!(back, r#"{"{\"id\": 2}",NULL,"\"s\""}"#);
    }
}
