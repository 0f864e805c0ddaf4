//! Replays a real typing trace through candidate sequence-CRDT crates (issue 12).
//! Build one or more candidates with `--features diamond,yrs,loro,automerge` (or `all`).
use std::io::Read;
use std::time::{Duration, Instant};

#[derive(serde::Deserialize)]
struct Txn {
    patches: Vec<(usize, usize, String)>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Trace {
    start_content: String,
    end_content: String,
    txns: Vec<Txn>,
}

/// What the benchmark needs from a candidate. `Version` is the crate's own notion of "what a
/// peer has" (state vector, version vector, heads, remote frontier).
trait Candidate: Sized {
    const NAME: &'static str;
    type Version;
    fn new(peer: u64) -> Self;
    /// One trace transaction: each patch deletes `.1` chars at `.0`, then inserts `.2` there.
    fn edit(&mut self, patches: &[(usize, usize, String)]);
    fn text(&mut self) -> String;
    /// The crate's full-state encoding (snapshot / save).
    fn encode(&mut self) -> Vec<u8>;
    fn decode(peer: u64, bytes: &[u8]) -> Self;
    fn version(&mut self) -> Self::Version;
    /// Delta since `v`; None if the crate cannot produce one.
    fn encode_since(&mut self, v: &Self::Version) -> Option<Vec<u8>>;
    fn apply(&mut self, bytes: &[u8]);
    /// Size after the crate's own history compaction / GC, if it has one.
    fn compacted(&mut self) -> Option<usize> {
        None
    }
    /// `edit`, also returning the update the crate itself emits for that transaction, if any.
    fn edit_returning_update(&mut self, patches: &[(usize, usize, String)]) -> Option<Vec<u8>> {
        self.edit(patches);
        None
    }
}

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (T, Duration) {
    let mut best = (None, Duration::MAX);
    for _ in 0..n {
        let t0 = Instant::now();
        let r = f();
        let d = t0.elapsed();
        if d < best.1 {
            best = (Some(r), d);
        }
    }
    (best.0.unwrap(), best.1)
}

fn replay<C: Candidate>(trace: &Trace) -> C {
    let mut doc = C::new(1);
    if !trace.start_content.is_empty() {
        doc.edit(&[(0, 0, trace.start_content.clone())]);
    }
    for t in &trace.txns {
        doc.edit(&t.patches);
    }
    doc
}

/// Two peers edit concurrently; four replicas receive the same updates in different orders.
/// Returns (texts converge, partition of the four full encodings: "AAAA" = all byte-identical).
fn canonical<C: Candidate>(same_peer: bool) -> (bool, String) {
    let mut a = C::new(1);
    a.edit(&[(0, 0, "hello world, this is a note".into())]);
    let base = a.encode();
    let mut b = C::decode(2, &base);
    let (va, vb) = (a.version(), b.version());
    a.edit(&[(5, 0, " big".into()), (0, 1, "H".into())]);
    a.edit(&[(10, 3, String::new())]);
    b.edit(&[(11, 0, "!!".into()), (20, 4, "memo".into())]);
    let ua = a.encode_since(&va).expect("delta a");
    let ub = b.encode_since(&vb).expect("delta b");
    a.apply(&ub);
    b.apply(&ua);
    let mut c = C::decode(3, &base);
    c.apply(&ua);
    c.apply(&ub);
    let mut d = C::decode(if same_peer { 3 } else { 4 }, &base);
    d.apply(&ub);
    d.apply(&ua);
    let texts = [a.text(), b.text(), c.text(), d.text()];
    let encs = [a.encode(), b.encode(), c.encode(), d.encode()];
    let class = |e: &Vec<u8>| (b'A' + encs.iter().position(|f| f == e).unwrap() as u8) as char;
    (texts.iter().all(|t| *t == texts[0]), encs.iter().map(class).collect())
}

fn run<C: Candidate>(trace: &Trace, version: &str, n_patches: usize) {
    let (mut doc, t) = best_of(3, || replay::<C>(trace));
    let text = doc.text();
    let text_ok = text == trace.end_content;
    let full = doc.encode();
    let compacted = doc.compacted();
    let mid = text.chars().count() / 2;
    // A stored value edited by one SQL statement: decode, read, one keystroke, encode again.
    let (_, t_load) = best_of(3, || C::decode(9, &full).text().len());
    let (_, t_sql) = best_of(3, || {
        let mut d = C::decode(9, &full);
        d.edit(&[(mid, 0, "x".into())]);
        d.encode().len()
    });
    // One keystroke in the middle of the final document, shipped as a delta since the version
    // the other replica (restored from `full`) has; the replica must then equal the original.
    let v = doc.version();
    let txn_update = doc.edit_returning_update(&[(mid, 0, "x".into())]);
    let delta = doc.encode_since(&v);
    let mut big_canon = "n/a";
    let mut ks = match &delta {
        Some(d) => {
            let mut replica = C::decode(7, &full);
            replica.apply(d);
            let ok = replica.text() == doc.text();
            big_canon = if replica.encode() == doc.encode() { "yes" } else { "no" };
            format!("{}{}", d.len(), if ok { "" } else { " (WRONG on apply)" })
        }
        None => "n/a".into(),
    };
    if let Some(u) = txn_update {
        ks += &format!(" (txn's own update: {})", u.len());
    }
    let (conv, canon) = canonical::<C>(false);
    let (_, canon_same) = canonical::<C>(true);
    let tb = trace.end_content.len() as f64;
    println!(
        "| {} {} | {:.1} | {:.0} | {} | {} ({:.2}×) | {} | {:.2} | {:.2} | {} | {} | {} {} / {}; trace: {} |",
        C::NAME,
        version,
        t.as_secs_f64() * 1e3,
        n_patches as f64 / t.as_secs_f64(),
        if text_ok { "yes" } else { "NO" },
        full.len(),
        full.len() as f64 / tb,
        compacted.map_or("n/a".into(), |c| format!("{c} ({:.2}×)", c as f64 / tb)),
        t_load.as_secs_f64() * 1e3,
        t_sql.as_secs_f64() * 1e3,
        ks,
        if delta.is_some() { "yes" } else { "no" },
        match (conv, canon == "AAAA" && canon_same == "AAAA" && big_canon != "no") {
            (false, _) => "DIVERGED",
            (true, ok) =>
                if ok {
                    "yes"
                } else {
                    "no"
                },
        },
        canon,
        canon_same,
        big_canon,
    );
}

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "../../../shared/data/seph-blog1.json.gz".into());
    let mut json = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).expect("open trace"))
        .read_to_string(&mut json)
        .expect("gunzip trace");
    let trace: Trace = serde_json::from_str(&json).expect("parse trace");
    let n_patches: usize = trace.txns.iter().map(|t| t.patches.len()).sum();
    // yrs only counts UTF-8 bytes or UTF-16 units; UTF-16 equals code points when all are in the BMP.
    let bmp_only =
        trace.txns.iter().flat_map(|t| &t.patches).all(|p| p.2.chars().all(|c| (c as u32) < 0x10000));
    println!(
        "trace {path}: {} txns, {n_patches} patches, final text {} chars / {} bytes, BMP only: {bmp_only}\n",
        trace.txns.len(),
        trace.end_content.chars().count(),
        trace.end_content.len()
    );
    println!("| crate | replay ms (best of 3) | patches/s | final = endContent | snapshot bytes (÷ text bytes) | compacted bytes | load+read ms | SQL-style edit ms | keystroke delta bytes | delta since version | canonical encoding (4 replicas; same local id; trace doc vs its replica) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    #[cfg(feature = "diamond")]
    run::<dt::Dt>(&trace, "1.0.0", n_patches);
    #[cfg(feature = "yrs")]
    {
        assert!(bmp_only, "yrs run indexes by UTF-16 units: trace must be BMP-only");
        run::<y::Y>(&trace, "0.28.1", n_patches);
    }
    #[cfg(feature = "loro")]
    run::<lo::Lo>(&trace, "1.17.1", n_patches);
    #[cfg(feature = "automerge")]
    run::<am::Am>(&trace, "0.12.0", n_patches);
}

#[cfg(feature = "diamond")]
mod dt {
    use diamond_types::list::encoding::{ENCODE_FULL, ENCODE_PATCH};
    use diamond_types::list::remote_ids::RemoteId;
    use diamond_types::list::ListCRDT;
    use diamond_types::AgentId;

    pub struct Dt(ListCRDT, AgentId);
    impl super::Candidate for Dt {
        const NAME: &'static str = "diamond-types";
        type Version = Vec<RemoteId>; // (agent name, seq) pairs: meaningful on any peer
        fn new(peer: u64) -> Self {
            let mut d = ListCRDT::new();
            let a = d.oplog.get_or_create_agent_id(&format!("peer{peer}"));
            Dt(d, a)
        }
        fn edit(&mut self, patches: &[(usize, usize, String)]) {
            for (pos, del, ins) in patches {
                if *del > 0 {
                    self.0.delete(self.1, *pos..*pos + *del);
                }
                if !ins.is_empty() {
                    self.0.insert(self.1, *pos, ins);
                }
            }
        }
        fn text(&mut self) -> String {
            self.0.branch.content().to_string()
        }
        fn encode(&mut self) -> Vec<u8> {
            self.0.oplog.encode(ENCODE_FULL)
        }
        fn decode(peer: u64, bytes: &[u8]) -> Self {
            let mut d = ListCRDT::load_from(bytes).expect("dt decode");
            let a = d.oplog.get_or_create_agent_id(&format!("peer{peer}"));
            Dt(d, a)
        }
        fn version(&mut self) -> Self::Version {
            self.0.oplog.remote_version().to_vec()
        }
        fn encode_since(&mut self, v: &Self::Version) -> Option<Vec<u8>> {
            let local = self.0.oplog.remote_to_local_version(v.iter());
            Some(self.0.oplog.encode_from(ENCODE_PATCH, &local))
        }
        fn apply(&mut self, bytes: &[u8]) {
            self.0.merge_data_and_ff(bytes).expect("dt apply");
        }
    }
}

#[cfg(feature = "yrs")]
mod y {
    use yrs::updates::decoder::Decode;
    use yrs::{
        ClientID, Doc, GetString, OffsetKind, Options, ReadTxn, StateVector, Text, TextRef, Transact,
        TransactionMut, Update,
    };

    pub struct Y(Doc, TextRef);
    impl Y {
        fn edit_txn(&mut self, patches: &[(usize, usize, String)]) -> TransactionMut<'_> {
            let mut txn = self.0.transact_mut();
            for (pos, del, ins) in patches {
                if *del > 0 {
                    self.1.remove_range(&mut txn, *pos as u32, *del as u32);
                }
                if !ins.is_empty() {
                    self.1.insert(&mut txn, *pos as u32, ins);
                }
            }
            txn
        }
    }
    impl super::Candidate for Y {
        const NAME: &'static str = "yrs";
        type Version = StateVector;
        fn new(peer: u64) -> Self {
            let opts =
                Options { offset_kind: OffsetKind::Utf16, ..Options::with_client_id(ClientID::new(peer)) };
            let doc = Doc::with_options(opts);
            let t = doc.get_or_insert_text("t");
            Y(doc, t)
        }
        fn edit(&mut self, patches: &[(usize, usize, String)]) {
            self.edit_txn(patches);
        }
        fn edit_returning_update(&mut self, patches: &[(usize, usize, String)]) -> Option<Vec<u8>> {
            Some(self.edit_txn(patches).encode_update_v1())
        }
        fn text(&mut self) -> String {
            self.1.get_string(&self.0.transact())
        }
        fn encode(&mut self) -> Vec<u8> {
            self.0.transact().encode_state_as_update_v1(&StateVector::default())
        }
        fn decode(peer: u64, bytes: &[u8]) -> Self {
            let mut y = Self::new(peer);
            y.apply(bytes);
            y
        }
        fn version(&mut self) -> StateVector {
            self.0.transact().state_vector()
        }
        fn encode_since(&mut self, v: &StateVector) -> Option<Vec<u8>> {
            Some(self.0.transact().encode_state_as_update_v1(v))
        }
        fn apply(&mut self, bytes: &[u8]) {
            let u = Update::decode_v1(bytes).expect("yrs decode");
            self.0.transact_mut().apply_update(u).expect("yrs apply");
        }
    }
}

#[cfg(feature = "loro")]
mod lo {
    use loro::{ExportMode, LoroDoc, LoroText, VersionVector};

    pub struct Lo(LoroDoc, LoroText);
    impl super::Candidate for Lo {
        const NAME: &'static str = "loro";
        type Version = VersionVector;
        fn new(peer: u64) -> Self {
            let doc = LoroDoc::new();
            doc.set_peer_id(peer).unwrap();
            let t = doc.get_text("t");
            Lo(doc, t)
        }
        fn edit(&mut self, patches: &[(usize, usize, String)]) {
            for (pos, del, ins) in patches {
                if *del > 0 {
                    self.1.delete(*pos, *del).unwrap();
                }
                if !ins.is_empty() {
                    self.1.insert(*pos, ins).unwrap();
                }
            }
            self.0.commit();
        }
        fn text(&mut self) -> String {
            self.1.to_string()
        }
        fn encode(&mut self) -> Vec<u8> {
            self.0.export(ExportMode::Snapshot).unwrap()
        }
        fn decode(peer: u64, bytes: &[u8]) -> Self {
            let l = Self::new(peer);
            l.0.import(bytes).unwrap();
            l
        }
        fn version(&mut self) -> VersionVector {
            self.0.oplog_vv()
        }
        fn encode_since(&mut self, v: &VersionVector) -> Option<Vec<u8>> {
            Some(self.0.export(ExportMode::updates(v)).unwrap())
        }
        fn apply(&mut self, bytes: &[u8]) {
            self.0.import(bytes).unwrap();
        }
        fn compacted(&mut self) -> Option<usize> {
            // History dropped up to now: state plus a minimal history (shallow snapshot, depth 1).
            let b = self.0.export(ExportMode::StateOnly(None)).unwrap();
            let back = LoroDoc::new();
            back.import(&b).unwrap();
            assert_eq!(back.get_text("t").to_string(), self.1.to_string());
            // The compacted replica still merges a later edit made on the full-history doc.
            let f = self.0.fork();
            let v = f.oplog_vv();
            f.get_text("t").insert(0, "y").unwrap();
            f.commit();
            back.import(&f.export(ExportMode::updates(&v)).unwrap()).unwrap();
            assert_eq!(back.get_text("t").to_string(), f.get_text("t").to_string());
            Some(b.len())
        }
    }
}

#[cfg(feature = "automerge")]
mod am {
    use automerge::transaction::Transactable;
    use automerge::{
        ActorId, AutoCommit, ChangeHash, LoadOptions, ObjId, ObjType, ReadDoc, TextEncoding, ROOT,
    };

    pub struct Am(AutoCommit, Option<ObjId>);
    impl Am {
        /// The text object; created by the first peer, found in the doc by the others.
        fn obj(&mut self) -> ObjId {
            if self.1.is_none() {
                let found = self.0.get(ROOT, "t").unwrap().map(|(_, id)| id);
                let id = found.unwrap_or_else(|| self.0.put_object(ROOT, "t", ObjType::Text).unwrap());
                self.1 = Some(id);
            }
            self.1.clone().unwrap()
        }
        fn with_actor(doc: AutoCommit, peer: u64) -> Self {
            Am(doc.with_actor(ActorId::from(peer.to_be_bytes().to_vec())), None)
        }
    }
    impl super::Candidate for Am {
        const NAME: &'static str = "automerge";
        type Version = Vec<ChangeHash>;
        fn new(peer: u64) -> Self {
            Self::with_actor(AutoCommit::new_with_encoding(TextEncoding::UnicodeCodePoint), peer)
        }
        fn edit(&mut self, patches: &[(usize, usize, String)]) {
            let obj = self.obj();
            for (pos, del, ins) in patches {
                self.0.splice_text(&obj, *pos, *del as isize, ins).unwrap();
            }
            self.0.commit();
        }
        fn text(&mut self) -> String {
            let obj = self.obj();
            self.0.text(&obj).unwrap()
        }
        fn encode(&mut self) -> Vec<u8> {
            self.0.save()
        }
        fn decode(peer: u64, bytes: &[u8]) -> Self {
            let opts = LoadOptions::new().text_encoding(TextEncoding::UnicodeCodePoint);
            Self::with_actor(AutoCommit::load_with_options(bytes, opts).unwrap(), peer)
        }
        fn version(&mut self) -> Vec<ChangeHash> {
            self.0.get_heads()
        }
        fn encode_since(&mut self, v: &Vec<ChangeHash>) -> Option<Vec<u8>> {
            Some(self.0.save_after(v))
        }
        fn apply(&mut self, bytes: &[u8]) {
            self.0.load_incremental(bytes).unwrap();
        }
    }
}
