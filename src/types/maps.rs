//! lwwmap, ormap.

use super::{crdt_type, or_empty};
use crate::errors::{required, OrRaise};
use crate::node;
use converge_core::Json;
use pgrx::prelude::*;
use pgrx::JsonB;

crdt_type!(lwwmap, converge_core::LwwMap);
crdt_type!(ormap, converge_core::OrMap);

#[pg_extern(volatile, parallel_unsafe, name = "put")]
fn lwwmap_put(m: Option<lwwmap>, k: Option<&str>, v: Option<JsonB>) -> lwwmap {
    let k = required(k, "key");
    let v = required(v, "value");
    let (me, _) = node::mutation();
    let mut s = or_empty(m.map(|x| x.0));
    let ts = node::timestamp(&me, s.max_timestamp());
    s.put(k, Json::from_value(&v.0), ts);
    lwwmap(s)
}

#[pg_extern(volatile, parallel_unsafe, name = "remove")]
fn lwwmap_remove(m: Option<lwwmap>, k: Option<&str>) -> lwwmap {
    let k = required(k, "key");
    let (me, _) = node::mutation();
    let mut s = or_empty(m.map(|x| x.0));
    let ts = node::timestamp(&me, s.max_timestamp());
    s.remove(k, ts);
    lwwmap(s)
}

#[pg_extern(immutable, strict, parallel_safe, name = "get")]
fn lwwmap_get(m: lwwmap, k: &str) -> Option<JsonB> {
    m.0.get(k).map(|j| JsonB(j.to_value()))
}

#[pg_extern(immutable, strict, parallel_safe, name = "keys")]
fn lwwmap_keys(m: lwwmap) -> Vec<String> {
    m.0.keys()
}

#[pg_extern(immutable, strict, parallel_safe, name = "to_jsonb")]
fn lwwmap_to_jsonb_fn(m: lwwmap) -> JsonB {
    use converge_core::Crdt;
    JsonB(m.0.to_user_json().or_raise())
}

#[pg_extern(volatile, parallel_unsafe, name = "incr")]
fn ormap_incr(m: Option<ormap>, k: Option<&str>, n: Option<i64>) -> ormap {
    let k = required(k, "key");
    let n = required(n, "increment");
    let (me, dot) = node::mutation();
    let mut s = or_empty(m.map(|x| x.0));
    s.incr(k, &me, n, dot).or_raise();
    ormap(s)
}

#[pg_extern(volatile, parallel_unsafe, name = "decr")]
fn ormap_decr(m: Option<ormap>, k: Option<&str>, n: Option<i64>) -> ormap {
    let k = required(k, "key");
    let n = required(n, "decrement");
    let (me, dot) = node::mutation();
    let mut s = or_empty(m.map(|x| x.0));
    s.decr(k, &me, n, dot).or_raise();
    ormap(s)
}

#[pg_extern(volatile, parallel_unsafe, name = "add")]
fn ormap_add(m: Option<ormap>, k: Option<&str>, e: Option<&str>) -> ormap {
    let k = required(k, "key");
    let e = required(e, "element");
    let (_, dot) = node::mutation();
    let mut s = or_empty(m.map(|x| x.0));
    s.add(k, e, dot).or_raise();
    ormap(s)
}

#[pg_extern(volatile, parallel_unsafe, name = "remove")]
fn ormap_remove_element(m: Option<ormap>, k: Option<&str>, e: Option<&str>) -> ormap {
    let k = required(k, "key");
    let e = required(e, "element");
    let (_, dot) = node::mutation();
    let mut s = or_empty(m.map(|x| x.0));
    s.remove_element(k, e, dot).or_raise();
    ormap(s)
}

#[pg_extern(volatile, parallel_unsafe, name = "assign")]
fn ormap_assign(m: Option<ormap>, k: Option<&str>, v: Option<JsonB>) -> ormap {
    let k = required(k, "key");
    let v = required(v, "value");
    let (_, dot) = node::mutation();
    let mut s = or_empty(m.map(|x| x.0));
    s.assign(k, Json::from_value(&v.0), dot).or_raise();
    ormap(s)
}

#[pg_extern(volatile, parallel_unsafe, name = "remove")]
fn ormap_remove_key(m: Option<ormap>, k: Option<&str>) -> ormap {
    let k = required(k, "key");
    let _ = node::mutation();
    let mut s = or_empty(m.map(|x| x.0));
    s.remove_key(k);
    ormap(s)
}

#[pg_extern(immutable, strict, parallel_safe, name = "get")]
fn ormap_get(m: ormap, k: &str) -> Option<JsonB> {
    m.0.get(k).or_raise().map(JsonB)
}

#[pg_extern(immutable, strict, parallel_safe, name = "keys")]
fn ormap_keys(m: ormap) -> Vec<String> {
    m.0.keys()
}

#[pg_extern(immutable, strict, parallel_safe, name = "to_jsonb")]
fn ormap_to_jsonb_fn(m: ormap) -> JsonB {
    use converge_core::Crdt;
    JsonB(m.0.to_user_json().or_raise())
}
