//! converge-core: the CRDT algebra of converge.
//!
//! Delta-state CRDTs (every mutator returns the delta it applied), their merge,
//! `delta(new, old)`, a hybrid logical clock, dots and causal contexts, and a
//! versioned binary form plus a canonical JSON text form. No PostgreSQL
//! dependency: the extension and offline clients embed the same code, so they
//! cannot disagree about what a value means.

pub mod actor;
pub mod authority;
pub mod clock;
pub mod codec;
pub mod dots;
pub mod error;
pub mod json;
pub mod op;
pub mod signing;
pub mod types;

pub use actor::{validate_actor, Actor};
pub use clock::{Hlc, Timestamp};
pub use codec::{decode, decode_trusted, encode, from_text, to_text, Crdt, FORMAT_VERSION};
pub use dots::{Dot, DotMap, DotSet};
pub use error::{Error, ErrorKind, Result};
pub use json::Json;
pub use op::{format_op_id, parse_op_id, Op, OP_TAG, SCHEMA_VERSION};
pub use signing::SignatureCheck;
pub use types::ormap::without_covers;
pub use types::*;
