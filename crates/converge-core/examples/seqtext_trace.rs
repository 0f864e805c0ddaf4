//! Replays an editing trace (josephg/editing-traces JSON, uncompressed) on a
//! seqtext the way the SQL functions do: every edit works on the stored
//! bytes (`seqtext::stream`) and produces new bytes. Prints time, edits/s,
//! sizes, before and after compaction (what converge.compact() does to a
//! value whose ops every node has).
//! `gzip -dc ../shared/data/seph-blog1.json.gz > /tmp/t.json &&
//!  cargo run -p converge-core --release --example seqtext_trace /tmp/t.json`
use converge_core::types::seqtext::stream;
use converge_core::{decode_trusted, encode, SeqText};
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("trace JSON path");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let end = j["endContent"].as_str().unwrap();
    let mut bytes = encode(&SeqText::default());
    let mut seq = 1u64;
    let mut edits = 0u64;
    let t0 = Instant::now();
    for txn in j["txns"].as_array().unwrap() {
        for p in txn["patches"].as_array().unwrap() {
            let (pos, del, ins) = (p[0].as_u64().unwrap(), p[1].as_u64().unwrap(), p[2].as_str().unwrap());
            if del > 0 {
                bytes = stream::delete(&bytes, pos, del).unwrap();
                edits += 1;
            }
            if !ins.is_empty() {
                bytes = match stream::insert(&bytes, pos, ins, "seph", seq).unwrap() {
                    Some(b) => b,
                    None => {
                        let mut t: SeqText = decode_trusted(&bytes).unwrap();
                        t.insert(pos, ins, "seph", seq).unwrap();
                        encode(&t)
                    }
                };
                seq += ins.chars().count() as u64;
                edits += 1;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let t: SeqText = decode_trusted(&bytes).unwrap();
    assert_eq!(t.value(), end, "final text differs");
    // How many runs continue the one before except for the deleted flag.
    let cont = t.runs.windows(2).filter(|w| {
        let (a, b) = (&w[0], &w[1]);
        a.0 == b.0 && b.1 == a.1 + a.2 && b.3 == a.3 + a.2 && b.4 == Some(converge_core::types::seqtext::CharId(a.0, a.1 + a.2 - 1))
    }).count();
    let deleted = t.runs.iter().filter(|r| r.5).count();
    println!("{cont} runs continue the previous one; {deleted} deleted runs");
    println!(
        "{edits} edits in {secs:.2} s ({:.0}/s); text {} chars / {} bytes; stored {} bytes ({:.2}x); {} runs",
        edits as f64 / secs,
        end.chars().count(),
        end.len(),
        bytes.len(),
        bytes.len() as f64 / end.len() as f64,
        t.runs.len()
    );
    let c = t.compacted();
    assert_eq!(c.value(), end, "compaction changed the text");
    let cb = encode(&c).len();
    println!(
        "compacted: {cb} bytes ({:.2}x); {} runs, {} of them deleted (ids the text still hangs on)",
        cb as f64 / end.len() as f64,
        c.runs.len(),
        c.runs.iter().filter(|r| r.5).count()
    );
}
