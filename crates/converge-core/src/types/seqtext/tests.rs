use super::*;
use crate::codec::{decode, encode, from_text, to_text};

fn typed(t: &mut SeqText, node: &str, seq: &mut u64, pos: u64, s: &str) -> SeqText {
    let d = t.insert(pos, s, node, *seq).unwrap();
    *seq += s.chars().count() as u64;
    d
}

#[test]
fn typing_forward_is_one_run() {
    let mut t = SeqText::default();
    let mut q = 1;
    for (i, c) in "hello".chars().enumerate() {
        typed(&mut t, "madrid", &mut q, i as u64, &c.to_string());
    }
    assert_eq!(t.value(), "hello");
    assert_eq!(t.runs.len(), 1);
    assert_eq!(decode::<SeqText>(&encode(&t)).unwrap(), t);
    assert_eq!(from_text::<SeqText>(&to_text(&t)).unwrap(), t);
}

#[test]
fn delta_of_an_edit_merges_into_the_old_value() {
    let mut t = SeqText::default();
    let mut q = 1;
    typed(&mut t, "madrid", &mut q, 0, "hello world");
    let old = t.clone();
    let d = typed(&mut t, "madrid", &mut q, 5, ",");
    assert_eq!(old.merged(&d), t);
    assert_eq!(SeqText::delta(&t, &old), d);
    let old = t.clone();
    let d = t.delete(0, 2).unwrap();
    assert_eq!(t.value(), "llo, world");
    assert_eq!(old.merged(&d), t);
    assert_eq!(SeqText::delta(&t, &old), d);
    d.validate().unwrap();
}

#[test]
fn concurrent_inserts_at_one_place_stay_unbroken_and_ordered_alike() {
    let mut base = SeqText::default();
    let (mut qm, mut qd) = (1, 1000);
    typed(&mut base, "madrid", &mut qm, 0, "ab");
    let (mut m, mut d) = (base.clone(), base.clone());
    for (i, c) in "XYZ".chars().enumerate() {
        typed(&mut m, "madrid", &mut qm, 1 + i as u64, &c.to_string());
    }
    for (i, c) in "123".chars().enumerate() {
        typed(&mut d, "dublin", &mut qd, 1 + i as u64, &c.to_string());
    }
    let (md, dm) = (m.merged(&d), d.merged(&m));
    assert_eq!(md, dm);
    let v = md.value();
    assert!(v == "aXYZ123b" || v == "a123XYZb", "{v}");
}

#[test]
fn a_delete_keeps_text_inserted_concurrently_inside_its_range() {
    let mut base = SeqText::default();
    let (mut qm, mut qd) = (1, 1000);
    typed(&mut base, "madrid", &mut qm, 0, "abcdef");
    let (mut m, mut d) = (base.clone(), base.clone());
    m.delete(1, 4).unwrap(); // "af"
    typed(&mut d, "dublin", &mut qd, 3, "XY"); // "abcXYdef"
    assert_eq!(m.merged(&d).value(), "aXYf");
    assert_eq!(d.merged(&m).value(), "aXYf");
}

#[test]
fn deltas_out_of_order_wait_as_orphans() {
    let mut t = SeqText::default();
    let mut q = 1;
    let d1 = typed(&mut t, "madrid", &mut q, 0, "ab");
    let d2 = typed(&mut t, "madrid", &mut q, 1, "X");
    let d3 = t.delete(0, 1).unwrap();
    let late = SeqText::default().merged(&d3).merged(&d2);
    assert_eq!(late.value(), "");
    assert!(!late.orphans.is_empty());
    late.validate().unwrap();
    assert_eq!(late.merged(&d1), t);
    assert_eq!(t.value(), "Xb");
}

#[test]
fn positions_outside_the_text_are_refused() {
    let mut t = SeqText::default();
    assert!(t.insert(1, "x", "madrid", 1).is_err());
    t.insert(0, "abc", "madrid", 1).unwrap();
    assert!(t.delete(2, 2).is_err());
    assert!(t.delete(3, 0).is_ok());
    assert!(t.insert(3, "!", "madrid", 10).is_ok());
    assert_eq!(t.value(), "abc!");
}

#[test]
fn unicode_positions_count_code_points() {
    let mut t = SeqText::default();
    t.insert(0, "añb€", "madrid", 1).unwrap();
    t.insert(2, "ü", "madrid", 10).unwrap();
    assert_eq!(t.value(), "añüb€");
    assert_eq!(t.length(), 5);
    t.delete(4, 1).unwrap();
    assert_eq!(t.value(), "añüb");
}

/// Found by the decoder fuzzer: an orphan whose origin is the start of the
/// text waits for nothing, so it is not canonical (a merge with itself
/// integrated it, a merge with the empty value kept it aside: two values).
#[test]
fn an_orphan_with_no_origin_is_refused() {
    let s = SeqText {
        nodes: vec!["virginia".into()],
        lamport: 3,
        runs: vec![],
        orphans: vec![Run(0, 3, 1, 3, None, false, "a".into())],
        tombs: vec![],
    };
    assert!(s.validate().is_err());
    assert!(decode::<SeqText>(&encode(&s)).is_err());
    // The same character as a run is a value.
    let ok = SeqText { runs: s.orphans.clone(), orphans: vec![], ..s };
    ok.validate().unwrap();
    assert_eq!(ok.merged(&ok), ok.merged(&SeqText::default()));
}
