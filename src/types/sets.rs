//! gset, orset.

use super::{crdt_type, or_empty};
use crate::errors::required;
use crate::node;
use pgrx::prelude::*;

crdt_type!(gset, converge_core::GSet);
crdt_type!(orset, converge_core::OrSet);

#[pg_extern(volatile, parallel_unsafe, name = "add")]
fn gset_add(s: Option<gset>, e: Option<&str>) -> gset {
    let e = required(e, "element");
    let _ = node::mutation();
    let mut s = or_empty(s.map(|x| x.0));
    s.add(e);
    gset(s)
}

#[pg_extern(immutable, strict, parallel_safe, name = "elements")]
fn gset_elements(s: gset) -> Vec<String> {
    s.0.elements()
}

#[pg_extern(immutable, strict, parallel_safe, name = "contains")]
fn gset_contains(s: gset, e: &str) -> bool {
    s.0.contains(e)
}

#[pg_extern(immutable, strict, parallel_safe, name = "size")]
fn gset_size(s: gset) -> i64 {
    s.0.elements.len() as i64
}

#[pg_extern(volatile, parallel_unsafe, name = "add")]
fn orset_add(s: Option<orset>, e: Option<&str>) -> orset {
    let e = required(e, "element");
    let (_, dot) = node::mutation();
    let mut s = or_empty(s.map(|x| x.0));
    s.add(e, dot);
    orset(s)
}

#[pg_extern(volatile, parallel_unsafe, name = "remove")]
fn orset_remove(s: Option<orset>, e: Option<&str>) -> orset {
    let e = required(e, "element");
    let _ = node::mutation();
    let mut s = or_empty(s.map(|x| x.0));
    s.remove(e);
    orset(s)
}

#[pg_extern(immutable, strict, parallel_safe, name = "elements")]
fn orset_elements(s: orset) -> Vec<String> {
    s.0.elements()
}

#[pg_extern(immutable, strict, parallel_safe, name = "contains")]
fn orset_contains(s: orset, e: &str) -> bool {
    s.0.contains(e)
}

#[pg_extern(immutable, strict, parallel_safe, name = "size")]
fn orset_size(s: orset) -> i64 {
    s.0.elements().len() as i64
}
