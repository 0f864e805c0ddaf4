//! gcounter, pncounter, bcounter.

use super::{crdt_type, or_empty};
use crate::errors::{required, OrRaise};
use crate::node;
use pgrx::prelude::*;

crdt_type!(gcounter, converge_core::GCounter);
crdt_type!(pncounter, converge_core::PnCounter);
crdt_type!(bcounter, converge_core::BCounter);

#[pg_extern(volatile, parallel_unsafe, name = "incr")]
fn gcounter_incr(c: Option<gcounter>, n: Option<i64>) -> gcounter {
    let n = required(n, "increment");
    let (me, _) = node::mutation();
    let mut s = or_empty(c.map(|x| x.0));
    s.incr(&me, n).or_raise();
    gcounter(s)
}

#[pg_extern(immutable, strict, parallel_safe, name = "value")]
fn gcounter_value(c: gcounter) -> i64 {
    c.0.value().or_raise()
}

#[pg_extern(volatile, parallel_unsafe, name = "incr")]
fn pncounter_incr(c: Option<pncounter>, n: Option<i64>) -> pncounter {
    let n = required(n, "increment");
    let (me, _) = node::mutation();
    let mut s = or_empty(c.map(|x| x.0));
    s.incr(&me, n).or_raise();
    pncounter(s)
}

#[pg_extern(volatile, parallel_unsafe, name = "decr")]
fn pncounter_decr(c: Option<pncounter>, n: Option<i64>) -> pncounter {
    let n = required(n, "decrement");
    let (me, _) = node::mutation();
    let mut s = or_empty(c.map(|x| x.0));
    s.decr(&me, n).or_raise();
    pncounter(s)
}

#[pg_extern(immutable, strict, parallel_safe, name = "value")]
fn pncounter_value(c: pncounter) -> i64 {
    c.0.value().or_raise()
}

#[pg_extern(volatile, parallel_unsafe, name = "incr")]
fn bcounter_incr(c: Option<bcounter>, n: Option<i64>) -> bcounter {
    let n = required(n, "increment");
    let (me, _) = node::mutation();
    let mut s = or_empty(c.map(|x| x.0));
    s.incr(&me, n).or_raise();
    bcounter(s)
}

#[pg_extern(volatile, parallel_unsafe, name = "decr")]
fn bcounter_decr(c: Option<bcounter>, n: Option<i64>) -> bcounter {
    let n = required(n, "decrement");
    let (me, _) = node::mutation();
    let mut s = or_empty(c.map(|x| x.0));
    s.decr(&me, n).or_raise();
    bcounter(s)
}

#[pg_extern(volatile, parallel_unsafe, name = "transfer")]
fn bcounter_transfer(c: Option<bcounter>, to_node: Option<&str>, n: Option<i64>) -> bcounter {
    let to_node = required(to_node, "to_node");
    let n = required(n, "amount");
    let (me, _) = node::mutation();
    let mut s = or_empty(c.map(|x| x.0));
    s.transfer(&me, to_node, n).or_raise();
    bcounter(s)
}

#[pg_extern(immutable, strict, parallel_safe, name = "value")]
fn bcounter_value(c: bcounter) -> i64 {
    c.0.value().or_raise()
}

/// Rights this node holds (depends on the node identity, so not immutable).
#[pg_extern(stable, strict, parallel_safe, name = "rights")]
fn bcounter_rights_local(c: bcounter) -> i64 {
    c.0.rights(&node::local_node()).or_raise()
}

#[pg_extern(immutable, strict, parallel_safe, name = "rights")]
fn bcounter_rights(c: bcounter, node: &str) -> i64 {
    c.0.rights(node).or_raise()
}
