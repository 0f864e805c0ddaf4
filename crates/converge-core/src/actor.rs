//! Node (actor) identities as they appear inside CRDT states.

use crate::error::{Error, Result};

/// The name of a node, device or user agent that makes changes.
pub type Actor = String;

/// Longest accepted actor name, in bytes (PostgreSQL's NAMEDATALEN - 1).
pub const MAX_ACTOR_LEN: usize = 63;

/// Actor names are short identifiers: they are stored in every dot and
/// timestamp, and `op_id` is `actor:counter`, so ':' and whitespace are out.
pub fn validate_actor(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_ACTOR_LEN {
        return Err(Error::param(format!(
            "node name must be 1 to {MAX_ACTOR_LEN} bytes, got {}",
            name.len()
        )));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') {
        return Err(Error::param(format!(
            "node name \"{}\" may contain only ASCII letters, digits, '_', '-' and '.'",
            name.escape_default()
        )));
    }
    Ok(())
}
