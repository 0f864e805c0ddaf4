//! Stored size of a seqtext after replaying an editing trace, before and
//! after compaction (what converge.compact() does to a stable value).
//! Usage: zcat ../shared/data/seph-blog1.json.gz > /tmp/trace.json;
//!        cargo run --release -p converge-core --example trace_size /tmp/trace.json

use converge_core::{encode, SeqText};

fn main() {
    let path = std::env::args().nth(1).expect("trace JSON path");
    let trace: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut t = SeqText::default();
    let mut seq = 1u64;
    let mut edits = 0u64;
    for txn in trace["txns"].as_array().unwrap() {
        for p in txn["patches"].as_array().unwrap() {
            let (pos, del, ins) = (p[0].as_u64().unwrap(), p[1].as_u64().unwrap(), p[2].as_str().unwrap());
            if del > 0 {
                t.delete(pos, del).unwrap();
                edits += 1;
            }
            if !ins.is_empty() {
                t.insert(pos, ins, "author", seq).unwrap();
                seq += ins.chars().count() as u64;
                edits += 1;
            }
        }
    }
    let text = t.value();
    assert_eq!(text, trace["endContent"].as_str().unwrap(), "replay gives the final text");
    let c = t.compacted();
    assert_eq!(c.value(), text);
    let (b, a) = (encode(&t).len(), encode(&c).len());
    println!(
        "{edits} edits; text {} bytes; value {b} bytes ({:.2}x), {} runs ({} deleted); compacted {a} bytes ({:.2}x), {} runs ({} deleted)",
        text.len(),
        b as f64 / text.len() as f64,
        t.runs.len(),
        t.runs.iter().filter(|r| r.5).count(),
        a as f64 / text.len() as f64,
        c.runs.len(),
        c.runs.iter().filter(|r| r.5).count()
    );
}
