//! Replication between nodes (SPEC section 4): the `converge` output plugin
//! turns committed ops into a compact stream; peers pull it over libpq from
//! a logical slot and apply it under a replication origin.

pub mod decoder;
pub mod launcher;
pub mod libpq;
pub mod lost;
pub mod peers;
pub mod pull;
pub mod rejoin;
pub mod worker;
