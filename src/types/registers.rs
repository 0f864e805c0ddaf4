//! lwwreg, mvreg.

use super::{crdt_type, or_empty};
use crate::errors::required;
use crate::node;
use converge_core::Json;
use pgrx::prelude::*;
use pgrx::JsonB;

crdt_type!(lwwreg, converge_core::LwwReg);
crdt_type!(mvreg, converge_core::MvReg);

#[pg_extern(volatile, parallel_unsafe, name = "assign")]
fn lwwreg_assign(r: Option<lwwreg>, v: Option<JsonB>) -> lwwreg {
    let v = required(v, "value");
    let (me, _) = node::mutation();
    let mut s = or_empty(r.map(|x| x.0));
    let ts = node::timestamp(&me, s.max_timestamp());
    s.assign(Json::from_value(&v.0), ts);
    lwwreg(s)
}

/// The current value; NULL for an empty register.
#[pg_extern(immutable, strict, parallel_safe, name = "value")]
fn lwwreg_value(r: lwwreg) -> Option<JsonB> {
    r.0.value().map(|j| JsonB(j.to_value()))
}

#[pg_extern(volatile, parallel_unsafe, name = "assign")]
fn mvreg_assign(r: Option<mvreg>, v: Option<JsonB>) -> mvreg {
    let v = required(v, "value");
    let (_, dot) = node::mutation();
    let mut s = or_empty(r.map(|x| x.0));
    s.assign(Json::from_value(&v.0), dot);
    mvreg(s)
}

#[pg_extern(immutable, strict, parallel_safe, name = "all_values")]
fn mvreg_all_values(r: mvreg) -> Vec<JsonB> {
    r.0.values().iter().map(|j| JsonB(j.to_value())).collect()
}

#[pg_extern(immutable, strict, parallel_safe, name = "is_conflict")]
fn mvreg_is_conflict(r: mvreg) -> bool {
    r.0.is_conflict()
}
