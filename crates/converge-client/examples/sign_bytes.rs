//! Sign bytes with an ed25519 key given by its 32-byte seed, both in hex:
//! what a device does with `converge.op_signing_bytes(op)` when the op was
//! not made by the client crate (which signs its ops itself). Also prints
//! the public key to pass to `converge.register_actor`.
//!
//!     cargo run -p converge-client --example sign_bytes -- <seed hex> [<bytes hex>]

use converge_core::signing::SigningKey;
use ed25519_dalek::Signer;

fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim().trim_start_matches("\\x");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seed: [u8; 32] = unhex(args.first().expect("usage: sign_bytes <seed hex> [<bytes hex>]")).try_into().expect("a 32-byte seed");
    let key = SigningKey::from_bytes(&seed);
    println!("public_key \\x{}", hex(key.verifying_key().as_bytes()));
    if let Some(bytes) = args.get(1) {
        println!("signature \\x{}", hex(&key.sign(&unhex(bytes)).to_bytes()));
    }
}
