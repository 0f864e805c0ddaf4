//! Lost peers (SPEC sections 4 and 6): a peer whose slot here holds more
//! WAL than `converge.max_peer_lag_bytes` while it is not streaming loses
//! the slot and is marked lost; the mark goes when it streams again. So
//! does a peer whose slot PostgreSQL invalidated (past
//! `max_slot_wal_keep_size`, whatever converge's limit): that slot can
//! never be read again, and without the mark the peer would never rejoin.
//!
//! A peer's slot here is the one the peer records for this node
//! (`their_slot`: its `converge.peers` row for us, read when we add it,
//! when the worker connects to it and with every probe). Until that is
//! known, its slots are found by the name they carry (lowercased, other
//! characters as '_', 40 of them), unless another peer's name reads the
//! same. A slot that carries the name of a peer whose slot is known, and
//! is no peer's slot, is left from an earlier setup (of that peer, or of a
//! node that is no longer a peer): it is dropped once past the limit, and
//! no one is marked lost for it.

use super::peers::slot_label;
use crate::maintenance::MAX_PEER_LAG;
use pgrx::prelude::*;
use std::collections::HashSet;

struct Peer {
    name: String,
    lost: bool,
    slot: Option<String>,
}

struct Slot {
    name: String,
    active: bool,
    held: i64,
    /// PostgreSQL removed WAL it needed (`wal_status` 'lost').
    invalidated: bool,
}

impl Slot {
    /// Why it is over the limit, for the log.
    fn why(&self) -> String {
        if self.invalidated {
            "invalidated by PostgreSQL (max_slot_wal_keep_size)".into()
        } else {
            format!("holding {} bytes of WAL", self.held)
        }
    }
}

/// Whether `slot` is named as peer `peer` names its slots (peers.rs
/// slot_name_for: the name part, then 8 hex digits of a hash).
fn carries_name(slot: &str, peer: &str) -> bool {
    slot.strip_prefix("converge_")
        .and_then(|s| s.strip_prefix(slot_label(peer).as_str()))
        .and_then(|s| s.strip_prefix('_'))
        .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn load() -> (Vec<Peer>, Vec<Slot>) {
    let peers = Spi::connect(|c| {
        c.select(
            "SELECT p.name, s.lost_at IS NOT NULL, s.their_slot FROM converge.peer p JOIN converge.peer_status s USING (name)",
            None,
            &[],
        )
        .map(|t| {
            t.filter_map(|r| Some(Peer { name: r.get(1).ok()??, lost: r.get(2).ok()??, slot: r.get(3).ok()? })).collect()
        })
        .unwrap_or_default()
    });
    let slots = Spi::connect(|c| {
        c.select(
            "SELECT slot_name::text, active, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint,
                    coalesce(wal_status = 'lost' AND restart_lsn IS NULL, false)
               FROM pg_replication_slots WHERE database = current_database() AND plugin = 'converge'",
            None,
            &[],
        )
        .map(|t| {
            t.filter_map(|r| {
                Some(Slot { name: r.get(1).ok()??, active: r.get(2).ok()??, held: r.get(3).ok()??, invalidated: r.get(4).ok()?? })
            })
            .collect()
        })
        .unwrap_or_default()
    });
    (peers, slots)
}

/// Mark peers lost whose slot here holds more than the limit while they
/// do not stream, dropping the slot; clear the mark of a lost peer that
/// has made its slot again and streams; drop slots left from an earlier
/// setup of a peer. Run by the worker every few seconds, in a transaction
/// of its own.
pub fn check_lost_peers() {
    let limit = MAX_PEER_LAG.get() as i64 * 1024;
    let over = |s: &Slot| s.invalidated || (limit >= 0 && s.held > limit);
    let (peers, slots) = load();
    let known: HashSet<&str> = peers.iter().filter_map(|p| p.slot.as_deref()).collect();
    // The slots carrying `name` that are no peer's known slot.
    let carrying = |name: &str| -> Vec<&Slot> {
        slots.iter().filter(|s| !known.contains(s.name.as_str()) && carries_name(&s.name, name)).collect()
    };
    // Whether a peer whose slot is not known yet may own slot `s`.
    let unsure = |s: &Slot| peers.iter().any(|q| q.slot.is_none() && carries_name(&s.name, &q.name));
    for peer in &peers {
        let theirs: Vec<&Slot> = match &peer.slot {
            Some(exact) => slots.iter().filter(|s| &s.name == exact).collect(),
            None => {
                if peers.iter().any(|q| q.name != peer.name && slot_label(&q.name) == slot_label(&peer.name)) {
                    pgrx::warning!(
                        "converge: peer \"{}\" has a name another peer shares in slot names, and its slot here is not known yet; it is not judged",
                        peer.name
                    );
                    continue;
                }
                carrying(&peer.name)
            }
        };
        if peer.lost {
            // Only its own slot clears the mark: a slot that merely carries
            // its name may be another node's. (If it records a new slot, the
            // next probe of it says so.)
            // (An invalidated slot is active a moment whenever a read of it
            // fails: that is no stream.)
            if theirs.iter().any(|s| s.active && !s.invalidated) {
                let _ = Spi::run_with_args(&super::pull::status_update("lost_at = NULL"), &[peer.name.as_str().into()]);
                pgrx::log!("converge: peer \"{}\" has rejoined (it streams from a new slot here)", peer.name);
            } else {
                // A slot it made again to rejoin, then left (its copy
                // failed, or it went down again), holds WAL like any:
                // dropped past the limit; it stays lost.
                for s in theirs.into_iter().filter(|s| over(s)) {
                    if drop_slot(&s.name) {
                        pgrx::log!("converge: lost peer \"{}\" left its slot \"{}\" idle {}; slot dropped", peer.name, s.name, s.why());
                    }
                }
            }
            continue;
        }
        for s in theirs.into_iter().filter(|s| !s.active && over(s)) {
            // The mark goes with the drop; not while add_peer holds the row
            // (the next pass judges again).
            if super::pull::claim_status(&peer.name) && drop_slot(&s.name) {
                let _ = Spi::run_with_args(
                    "UPDATE converge.peer_status SET lost_at = clock_timestamp(), frontier = NULL, closed_tables = NULL WHERE name = $1",
                    &[peer.name.as_str().into()],
                );
                if s.invalidated {
                    pgrx::log!(
                        "converge: peer \"{}\" is lost: PostgreSQL invalidated its slot \"{}\" (max_slot_wal_keep_size); slot dropped",
                        peer.name,
                        s.name
                    );
                } else {
                    pgrx::log!(
                        "converge: peer \"{}\" is lost: its slot \"{}\" held {} bytes of WAL (converge.max_peer_lag_bytes = {}kB); slot dropped",
                        peer.name,
                        s.name,
                        s.held,
                        limit / 1024
                    );
                }
            }
        }
    }
    // A slot that a peer whose slot is not known yet may own is not stale.
    // (One that a peer has recorded since our last probe of it may be
    // dropped here: that peer then rejoins by itself.)
    for peer in peers.iter().filter(|p| p.slot.is_some()) {
        for s in carrying(&peer.name).into_iter().filter(|s| !unsure(s)) {
            if !s.active && over(s) && drop_slot(&s.name) {
                pgrx::log!(
                    "converge: slot \"{}\" is {} and is no peer's slot: it carries the name of peer \"{}\", whose slot is \"{}\" (left from an earlier setup of it, or of a node that is no longer a peer); dropped",
                    s.name,
                    s.why(),
                    peer.name,
                    peer.slot.as_deref().unwrap_or_default()
                );
            }
        }
    }
}

/// Drop a slot; false if that fails (the peer started streaming from it
/// meanwhile: then it is not lost).
fn drop_slot(slot: &str) -> bool {
    crate::apply::subtransaction(|| Spi::run_with_args("SELECT pg_drop_replication_slot($1)", &[slot.into()]).is_ok()).unwrap_or(false)
}
