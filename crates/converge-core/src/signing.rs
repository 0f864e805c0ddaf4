//! Signed ops (SPEC section 5, actors). A device with a registered ed25519
//! key signs each op it makes; every node checks the signature against the
//! key, so a stolen device's forged ops, or ops changed on the way, are
//! rejected everywhere alike.
//!
//! What is signed is `signing_bytes`: a fixed domain tag and the op's
//! canonical binary form (`Op::encode`) without its signature. The op is
//! signed as nodes log and ship it: `target_table` schema-qualified
//! (`public.ticket`) and `target_key` in the server's canonical form
//! (integer and boolean key columns as JSON numbers and booleans, numeric
//! as numbers, anything else as strings), because a node checks the op it
//! forwards, not the text a client first sent.

use crate::error::{Error, Result};
use crate::op::Op;
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use ed25519_dalek::{Signature, Signer};

/// Length of a public key (an ed25519 verifying key), in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of a signature, in bytes.
pub const SIGNATURE_LEN: usize = 64;
/// Put before the op's bytes, so that a signature of an op can never be
/// passed off as a signature of anything else made with the same key.
pub const SIGNING_DOMAIN: &[u8] = b"converge op signature v1\0";

/// What checking an op's signature found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    Valid,
    /// The op carries no signature.
    Unsigned,
    /// A signature that is not the key's signature of this op.
    Bad,
}

impl SignatureCheck {
    /// The op_log reason of a failed check (None when valid).
    pub fn reason(self) -> Option<&'static str> {
        match self {
            SignatureCheck::Valid => None,
            SignatureCheck::Unsigned => Some("unsigned"),
            SignatureCheck::Bad => Some("bad_signature"),
        }
    }
}

/// A 32-byte ed25519 public key, checked: a valid curve point and not of
/// small order (such a key would accept signatures nobody had to forge).
pub fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey> {
    let arr: [u8; PUBLIC_KEY_LEN] = bytes
        .try_into()
        .map_err(|_| Error::param(format!("an ed25519 public key is {PUBLIC_KEY_LEN} bytes, got {}", bytes.len())))?;
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| Error::param("not a valid ed25519 public key"))?;
    if key.is_weak() {
        return Err(Error::param("not a usable ed25519 public key (small order point)"));
    }
    Ok(key)
}

impl Op {
    /// The bytes an actor signs: the domain tag and the op's canonical
    /// binary form with no signature.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature = None;
        let mut out = SIGNING_DOMAIN.to_vec();
        out.extend(unsigned.encode());
        out
    }

    /// Sign the op with the device's key (replacing any signature).
    pub fn sign(&mut self, key: &SigningKey) {
        self.signature = Some(key.sign(&self.signing_bytes()).to_bytes().to_vec());
    }

    /// Check the op's signature against `key`. Strict verification (no
    /// malleable or non-canonical signatures), so that every node and
    /// every release decides alike.
    pub fn check_signature(&self, key: &VerifyingKey) -> SignatureCheck {
        let Some(sig) = self.signature.as_deref() else { return SignatureCheck::Unsigned };
        let Ok(sig) = Signature::from_slice(sig) else { return SignatureCheck::Bad };
        match key.verify_strict(&self.signing_bytes(), &sig) {
            Ok(()) => SignatureCheck::Valid,
            Err(_) => SignatureCheck::Bad,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> Op {
        Op::new("phone-7", 4, "public.ticket", &serde_json::json!({"id": 1}), "notes", vec![], vec![1, 5, 0, 0])
    }

    #[test]
    fn signed_ops_verify_and_any_change_breaks_them() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key();
        let mut o = op();
        assert_eq!(o.check_signature(&public), SignatureCheck::Unsigned);
        o.sign(&key);
        assert_eq!(o.check_signature(&public), SignatureCheck::Valid);
        assert_eq!(o.signature.as_ref().map(Vec::len), Some(SIGNATURE_LEN));
        // The signature does not cover itself.
        assert_eq!(o.signing_bytes(), op().signing_bytes());
        let changes: Vec<fn(&mut Op)> = vec![
            |o| o.delta[3] = 1,
            |o| o.target_table = "ticket".into(),
            |o| o.target_key = crate::Json::from_value(&serde_json::json!({"id": 2})),
            |o| o.target_column = "tags".into(),
            |o| o.epoch = 1,
            |o| o.deps = vec!["phone-7:3".into()],
            |o| o.schema_version = 2,
        ];
        for change in changes {
            let mut forged = o.clone();
            change(&mut forged);
            assert_eq!(forged.check_signature(&public), SignatureCheck::Bad);
        }
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert_eq!(o.check_signature(&other), SignatureCheck::Bad);
        let mut short = o.clone();
        short.signature = Some(vec![0; 10]);
        assert_eq!(short.check_signature(&public), SignatureCheck::Bad);
    }

    #[test]
    fn public_keys_are_checked() {
        let good = SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes();
        assert!(parse_public_key(&good).is_ok());
        assert!(parse_public_key(&good[..31]).is_err());
        // The identity point has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(parse_public_key(&identity).is_err());
    }
}
