//! The one contract every CRDT type fulfils, and its two encodings.
//!
//! Binary: `[format version, type tag, postcard body]`. Text: canonical JSON
//! (sorted keys, empty members left out, the empty value is `{}`).
//!
//! Every type writes [`FORMAT_VERSION`] except where its form grew: an
//! ormap delta that records what it supersedes per key is version 2, and a
//! value without that record keeps version 1 and its bytes (so stored
//! values and every other op read the same as before).

use crate::error::{Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version byte of the binary form. 0 and unknown versions are rejected.
pub const FORMAT_VERSION: u8 = 1;

/// The postcard body of a value, appended to `out` (cannot fail on our own
/// structs in memory).
pub(crate) fn write_postcard<S: Serialize + ?Sized>(v: &S, out: &mut Vec<u8>) {
    out.extend(postcard::to_stdvec(v).expect("postcard encoding of a CRDT state"));
}

/// A join-semilattice with deltas: `merge` is commutative, associative and
/// idempotent; `delta(new, old)` is what `old` lacks to become `merge(old, new)`.
pub trait Crdt: Sized + Clone + PartialEq + Default + Serialize + DeserializeOwned {
    /// Second byte of the binary form; distinct per type.
    const TAG: u8;
    /// SQL type name.
    const NAME: &'static str;

    /// The newest binary format version this type reads (and writes).
    const LATEST_VERSION: u8 = FORMAT_VERSION;

    fn merge(&mut self, other: &Self);

    fn delta(new: &Self, old: &Self) -> Self;

    /// The format version [`encode`] writes this value in, and its body.
    /// The default: [`FORMAT_VERSION`] and the value as it serializes.
    fn write_binary(&self, out: &mut Vec<u8>) -> u8 {
        write_postcard(self, out);
        FORMAT_VERSION
    }

    /// The value from the body of format `version` (one that
    /// `check_header` let through), and the bytes after it.
    fn read_binary(version: u8, body: &[u8]) -> std::result::Result<(Self, &[u8]), postcard::Error> {
        let _ = version;
        postcard::take_from_bytes::<Self>(body)
    }

    /// Check every invariant that `merge` relies on. Run on untrusted input.
    fn validate(&self) -> Result<()>;

    /// The user-level value (what `::jsonb` shows).
    fn to_user_json(&self) -> Result<serde_json::Value>;

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The value without the metadata that only ops not yet everywhere
    /// could need, or None when there is none to drop. `stable` is the
    /// merge of this value's causally stable ops (every node has applied
    /// them, and every op made before a node saw one is here): only what
    /// they removed may go (converge.compact(), with the row's base). The
    /// user-level value is unchanged.
    fn stable_form(&self, _stable: &Self) -> Option<Self> {
        None
    }

    /// A row's base (the merge of its compacted ops) in its stable form, or
    /// None when it should stay as it is. `pending` are the row's ops
    /// still in the log. Ops become stable in no causal order: a removal
    /// can be folded into the base before the add it removed (every node
    /// has the removal, one still lacks the add). The add is then pending;
    /// a base that forgot the removal would take the removed element back
    /// when the add is folded. And any pending op may yet be taken out (a
    /// repair, a revocation, a freeze: the row is rebuilt from its base and
    /// the ops left), such as another removal of that element that hid the
    /// add when merged with it, or an add of it that kept it in sight. So
    /// the base is compacted only if each pending op, and all of them
    /// merged, make the same state (in stable form: what a user reads and
    /// every entry that could show once ops are taken out) merged into it
    /// as into the base as it is.
    fn base_form(&self, pending: &[Self]) -> Option<Self> {
        let compacted = self.stable_form(self)?;
        let same_state = |p: &Self| {
            let (mut before, mut after) = (self.clone(), compacted.clone());
            before.merge(p);
            after.merge(p);
            let stable = |v: Self| v.stable_form(self).unwrap_or(v);
            stable(before) == stable(after)
        };
        let mut all = Self::default();
        for p in pending {
            if !same_state(p) {
                return None;
            }
            all.merge(p);
        }
        // (For orset, mvreg and ormap the ops alone imply this; kept for
        // types whose merges could combine into what none makes alone.)
        (pending.len() < 2 || same_state(&all)).then_some(compacted)
    }

    /// Merge a value given in its stored binary form. The default decodes it;
    /// types on the hot path of `merge_agg` override it to merge without
    /// building the other value. Must equal `merge(decode_trusted(bytes))`.
    fn merge_encoded(&mut self, bytes: &[u8]) -> Result<()> {
        let other: Self = decode_trusted(bytes)?;
        self.merge(&other);
        Ok(())
    }

    /// Drop what only a delta carries (an ormap's `covers`): a value a
    /// merge function returns is a state, also when it passed one value
    /// through unmerged (`merge(NULL, d)`, an aggregate's first row).
    fn as_state(&mut self) {}

    fn merged(&self, other: &Self) -> Self {
        let mut m = self.clone();
        m.merge(other);
        m
    }

    /// Called on the JSON of the full state before it is printed; the default
    /// drops empty top-level members so `{}` is the empty value.
    fn prune_text(v: &mut serde_json::Value) {
        prune_empty_members(v);
    }
}

/// Remove object members whose value is null, `{}` or `[]`.
pub fn prune_empty_members(v: &mut serde_json::Value) {
    if let serde_json::Value::Object(m) = v {
        m.retain(|_, x| match x {
            serde_json::Value::Null => false,
            serde_json::Value::Object(o) => !o.is_empty(),
            serde_json::Value::Array(a) => !a.is_empty(),
            _ => true,
        });
    }
}

pub fn encode<T: Crdt>(v: &T) -> Vec<u8> {
    let mut out = vec![0, T::TAG];
    out[0] = v.write_binary(&mut out);
    out
}

/// The format version and the body of a `T`'s binary form.
pub(crate) fn check_header<T: Crdt>(bytes: &[u8]) -> Result<(u8, &[u8])> {
    match bytes {
        [] | [_] => Err(Error::binary(format!("{} value is truncated", T::NAME))),
        [0, ..] => Err(Error::binary(format!("{} value has format version 0, which is not supported", T::NAME))),
        [v, ..] if *v > T::LATEST_VERSION => Err(Error::binary(format!(
            "{} value has unknown format version {v} (this build reads versions up to {})",
            T::NAME,
            T::LATEST_VERSION
        ))),
        [_, tag, ..] if *tag != T::TAG => Err(Error::binary(format!(
            "value is not a {} (type tag {tag}, expected {})",
            T::NAME,
            T::TAG
        ))),
        [v, _, body @ ..] => Ok((*v, body)),
    }
}

fn whole<T: Crdt, V>(read: std::result::Result<(V, &[u8]), postcard::Error>) -> Result<V> {
    let (v, rest) = read.map_err(|e| Error::binary(format!("corrupt {} value: {e}", T::NAME)))?;
    if !rest.is_empty() {
        return Err(Error::binary(format!("corrupt {} value: {} trailing bytes", T::NAME, rest.len())));
    }
    Ok(v)
}

/// Decode a borrowed view `V` of a `T` body (for zero-copy merges; only
/// for types with one format version).
pub(crate) fn decode_view<'a, T: Crdt, V: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<V> {
    let (_, body) = check_header::<T>(bytes)?;
    whole::<T, V>(postcard::take_from_bytes::<V>(body))
}

/// Decode bytes this extension wrote itself (stored datums): structure only.
pub fn decode_trusted<T: Crdt>(bytes: &[u8]) -> Result<T> {
    let (version, body) = check_header::<T>(bytes)?;
    whole::<T, T>(T::read_binary(version, body))
}

/// Decode bytes from outside (binary COPY, `recv`, ops from peers): the state
/// must satisfy every invariant and be in canonical form, so a stored value
/// can never break merge or compare unequal to its own re-encoding.
pub fn decode<T: Crdt>(bytes: &[u8]) -> Result<T> {
    let v: T = decode_trusted(bytes)?;
    v.validate().map_err(|e| Error::binary(format!("invalid {} value: {}", T::NAME, e.message)))?;
    if encode(&v) != bytes {
        return Err(Error::binary(format!("{} value is not in canonical form", T::NAME)));
    }
    Ok(v)
}

pub fn to_text<T: Crdt>(v: &T) -> String {
    let mut j = serde_json::to_value(v).expect("JSON form of a CRDT state");
    T::prune_text(&mut j);
    j.to_string()
}

pub fn from_text<T: Crdt>(s: &str) -> Result<T> {
    let syntax = |e: serde_json::Error| Error::text(format!("invalid input syntax for type {}: {e}", T::NAME));
    let j: serde_json::Value = serde_json::from_str(s).map_err(syntax)?;
    // serde would also take a struct written as an array; the text form is an object.
    if !j.is_object() {
        return Err(Error::text(format!("invalid input syntax for type {}: expected a JSON object", T::NAME)));
    }
    let v: T = serde_json::from_value(j).map_err(syntax)?;
    v.validate().map_err(|e| {
        Error::new(
            if e.kind == ErrorKind::InvalidBinary { ErrorKind::InvalidText } else { e.kind },
            format!("invalid input for type {}: {}", T::NAME, e.message),
        )
    })?;
    Ok(v)
}
