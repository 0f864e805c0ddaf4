//! User values (jsonb) held inside registers and maps.
//!
//! A value is kept as its canonical compact JSON text (object keys sorted), so
//! that equal values have equal bytes on every node and ties can be broken by
//! plain string comparison.

use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Json(String);

impl Json {
    pub fn from_value(v: &serde_json::Value) -> Json {
        // serde_json's Map is a BTreeMap (no preserve_order), so keys come out sorted.
        Json(v.to_string())
    }

    pub fn parse(text: &str) -> Result<Json> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::text(format!("invalid JSON value: {e}")))?;
        Ok(Json::from_value(&v))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn to_value(&self) -> serde_json::Value {
        // The text was produced by serde_json itself (or checked by `validate`).
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }

    /// True when the text is valid JSON in canonical form.
    pub fn validate(&self) -> Result<()> {
        let canon = Json::parse(&self.0).map_err(|e| Error::binary(e.message))?;
        if canon.0 != self.0 {
            return Err(Error::binary("JSON value is not in canonical form"));
        }
        Ok(())
    }
}

impl PartialOrd for Json {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Json {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            // Text form: the JSON value itself, so dumps stay readable.
            self.to_value().serialize(s)
        } else {
            s.serialize_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        if d.is_human_readable() {
            let v = serde_json::Value::deserialize(d)?;
            Ok(Json::from_value(&v))
        } else {
            // Checked by `validate` on untrusted input.
            Ok(Json(String::deserialize(d)?))
        }
    }
}

/// A JSON number as (negative, significant digits, exponent of the last
/// digit): one form per value (zero is `(false, "", 0)`).
pub fn decimal(s: &str) -> Option<(bool, String, i64)> {
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i64>().ok()?),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let significant = digits.trim_start_matches('0').trim_end_matches('0');
    if significant.is_empty() {
        return Some((false, String::new(), 0));
    }
    let trailing = (digits.len() - digits.trim_end_matches('0').len()) as i64;
    Some((neg, significant.to_string(), exp.checked_sub(frac.len() as i64)?.checked_add(trailing)?))
}
