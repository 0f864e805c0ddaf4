//! seqtext: collaborative text. Edits work on the stored bytes
//! (converge_core's `seqtext::stream`): no decode of the whole value per
//! keystroke.

use super::{check_size, crdt_type};
use crate::errors::{raise_core, required, OrRaise};
use crate::node;
use converge_core::types::seqtext::stream;
use converge_core::{decode_trusted, encode, Error, SeqText};
use pgrx::pgrx_sql_entity_graph::metadata::{ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin};
use pgrx::prelude::*;

crdt_type!(seqtext, converge_core::SeqText);

/// A seqtext result already in its stored form.
pub struct SeqTextBytes(Vec<u8>);

unsafe impl SqlTranslatable for SeqTextBytes {
    const TYPE_IDENT: &'static str = <seqtext as SqlTranslatable>::TYPE_IDENT;
    const TYPE_ORIGIN: TypeOrigin = <seqtext as SqlTranslatable>::TYPE_ORIGIN;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = <seqtext as SqlTranslatable>::ARGUMENT_SQL;
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> = <seqtext as SqlTranslatable>::RETURN_SQL;
}

unsafe impl pgrx::callconv::BoxRet for SeqTextBytes {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut pgrx::callconv::FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        check_size(self.0.len(), "seqtext");
        fcinfo.return_raw_datum(pgrx::rust_byte_slice_to_bytea(&self.0).into_pg().into())
    }
}

fn stored(t: &Option<seqtext_bytes>) -> Vec<u8> {
    match t {
        Some(t) => t.bytes().to_vec(),
        None => encode(&SeqText::default()),
    }
}

fn position(v: Option<i64>, what: &str) -> u64 {
    let v = required(v, what);
    u64::try_from(v).unwrap_or_else(|_| raise_core(Error::param(format!("seqtext {what} must not be negative, got {v}"))))
}

/// Insert `s` before the character at `pos` (0-based, in characters;
/// `pos = length(t)` appends). 22023 for a position outside the text.
#[pg_extern(volatile, parallel_unsafe, name = "insert")]
fn seqtext_insert(t: Option<seqtext_bytes>, pos: Option<i64>, s: Option<&str>) -> SeqTextBytes {
    let pos = position(pos, "position");
    let s = required(s, "text");
    let mut bytes = stored(&t);
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        // Nothing to add, but the position is still checked.
        return SeqTextBytes(stream::insert(&bytes, pos, "", "", 0).or_raise().unwrap_or(bytes));
    }
    let (me, seqs) = node::dots(chars.len());
    // One insert per stretch of consecutive dots (one run when typed alone).
    let mut i = 0;
    while i < chars.len() {
        let mut j = i + 1;
        while j < chars.len() && seqs[j] == seqs[j - 1] + 1 {
            j += 1;
        }
        let piece: String = chars[i..j].iter().collect();
        let at = pos + i as u64;
        bytes = match stream::insert(&bytes, at, &piece, &me, seqs[i]).or_raise() {
            Some(b) => b,
            None => {
                let mut v: SeqText = decode_trusted(&bytes).or_raise();
                v.insert(at, &piece, &me, seqs[i]).or_raise();
                encode(&v)
            }
        };
        i = j;
    }
    SeqTextBytes(bytes)
}

/// Delete `n` characters from `pos`. 22023 for a range outside the text.
#[pg_extern(immutable, parallel_safe, name = "delete")]
fn seqtext_delete(t: Option<seqtext_bytes>, pos: Option<i64>, n: Option<i64>) -> SeqTextBytes {
    let pos = position(pos, "position");
    let n = position(n, "length");
    SeqTextBytes(stream::delete(&stored(&t), pos, n).or_raise())
}

/// The text.
#[pg_extern(immutable, strict, parallel_safe, name = "value")]
fn seqtext_value(t: seqtext) -> String {
    t.0.value()
}

/// The text's length in characters (code points).
#[pg_extern(immutable, strict, parallel_safe, name = "length")]
fn seqtext_length(t: seqtext) -> i64 {
    t.0.length() as i64
}

