//! Keys, key ids, record signatures and the body hash that chains a signer's records.
//!
//! Pure: no I/O. Every verification uses `ed25519-dalek`'s `verify_strict`, and public keys of
//! small order are refused when parsed, so a key that passes here can never verify a forged
//! signature that another strict verifier would refuse.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::fmt;
use std::str::FromStr;

/// Domain separator prefixed to a body before signing it.
pub const RECORD_CONTEXT: &[u8] = b"taizhang/v1/record\n";
/// Domain separator prefixed to a body before cosigning it.
pub const COSIGN_CONTEXT: &[u8] = b"taizhang/v1/cosign\n";
/// Domain separator for key ids.
pub const KEY_ID_CONTEXT: &[u8] = b"taizhang/v1/key\n";
/// Domain separator for the body hash carried as the next record's `signer_prev`.
pub const BODY_HASH_CONTEXT: &[u8] = b"taizhang/v1/body\n";
/// Domain separator of a signed query (authenticated RPC request).
pub const QUERY_CONTEXT: &[u8] = b"taizhang/v1/query\n";

/// Errors from key parsing and signature verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("{field}: expected {expected} bytes, got {got}")]
    Length {
        field: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{field}: not a valid, canonically encoded Ed25519 public key")]
    BadPublicKey { field: &'static str },
    #[error("{field}: public key has small order and is refused")]
    WeakPublicKey { field: &'static str },
    #[error("{field}: signature does not verify (Ed25519 verify_strict)")]
    BadSignature { field: &'static str },
    #[error("{field}: {reason}")]
    Format { field: &'static str, reason: String },
}

/// A key id: the first 16 bytes of `BLAKE3("taizhang/v1/key\n" || public_key)`.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// The key id of a public key.
    pub fn of(public_key: &VerifyingKey) -> KeyId {
        let mut h = blake3::Hasher::new();
        h.update(KEY_ID_CONTEXT);
        h.update(public_key.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize().as_bytes()[..16]);
        KeyId(id)
    }

    /// Parses a key id from its 16 raw bytes.
    pub fn from_slice(field: &'static str, bytes: &[u8]) -> Result<KeyId, CryptoError> {
        let arr: [u8; 16] = bytes.try_into().map_err(|_| CryptoError::Length {
            field,
            expected: 16,
            got: bytes.len(),
        })?;
        Ok(KeyId(arr))
    }

    /// Lowercase hex, as shown to people.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

impl FromStr for KeyId {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|e| CryptoError::Format {
            field: "key_id",
            reason: format!("not hex: {e}"),
        })?;
        KeyId::from_slice("key_id", &bytes)
    }
}

/// Parses a 32-byte Ed25519 public key, refusing malformed and small-order keys.
pub fn parse_public_key(field: &'static str, bytes: &[u8]) -> Result<VerifyingKey, CryptoError> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::Length {
        field,
        expected: 32,
        got: bytes.len(),
    })?;
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| CryptoError::BadPublicKey { field })?;
    // A non-canonical encoding (y >= p) names the same point as another byte string, and so
    // would give one key two key ids.
    if key.to_edwards().compress().to_bytes() != arr {
        return Err(CryptoError::BadPublicKey { field });
    }
    if key.is_weak() {
        return Err(CryptoError::WeakPublicKey { field });
    }
    Ok(key)
}

fn parse_signature(field: &'static str, bytes: &[u8]) -> Result<Signature, CryptoError> {
    Signature::from_slice(bytes).map_err(|_| CryptoError::Length {
        field,
        expected: 64,
        got: bytes.len(),
    })
}

fn message(context: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(context.len() + body.len());
    m.extend_from_slice(context);
    m.extend_from_slice(body);
    m
}

/// Signs a record body: Ed25519 over `"taizhang/v1/record\n" || body`.
pub fn sign_record(key: &SigningKey, body: &[u8]) -> [u8; 64] {
    key.sign(&message(RECORD_CONTEXT, body)).to_bytes()
}

/// Cosigns a record body: Ed25519 over `"taizhang/v1/cosign\n" || body`.
pub fn cosign_record(key: &SigningKey, body: &[u8]) -> [u8; 64] {
    key.sign(&message(COSIGN_CONTEXT, body)).to_bytes()
}

/// Verifies a record signature with `verify_strict`.
pub fn verify_record(key: &VerifyingKey, body: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    let field = "signature";
    let sig = parse_signature(field, signature)?;
    key.verify_strict(&message(RECORD_CONTEXT, body), &sig)
        .map_err(|_| CryptoError::BadSignature { field })
}

/// Verifies a cosignature with `verify_strict`.
pub fn verify_cosignature(
    key: &VerifyingKey,
    body: &[u8],
    signature: &[u8],
) -> Result<(), CryptoError> {
    let field = "cosignatures.signature";
    let sig = parse_signature(field, signature)?;
    key.verify_strict(&message(COSIGN_CONTEXT, body), &sig)
        .map_err(|_| CryptoError::BadSignature { field })
}

/// What a query signature covers:
/// `"taizhang/v1/query\n" || method || "\n" || time_ms (decimal) || "\n" || hex(nonce) || "\n"
/// || BLAKE3(request)`, where `method` is the gRPC path (`/taizhang.v1.Ledger/GetEntry`) and
/// `request` the serialized request message.
pub fn query_message(method: &str, time_ms: u64, nonce: &[u8; 16], request: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(QUERY_CONTEXT.len() + method.len() + 90);
    m.extend_from_slice(QUERY_CONTEXT);
    m.extend_from_slice(method.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(time_ms.to_string().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(hex::encode(nonce).as_bytes());
    m.push(b'\n');
    m.extend_from_slice(blake3::hash(request).as_bytes());
    m
}

/// Signs a query: Ed25519 over [`query_message`].
pub fn sign_query(
    key: &SigningKey,
    method: &str,
    time_ms: u64,
    nonce: &[u8; 16],
    request: &[u8],
) -> [u8; 64] {
    key.sign(&query_message(method, time_ms, nonce, request))
        .to_bytes()
}

/// Verifies a query signature with `verify_strict`.
pub fn verify_query(
    key: &VerifyingKey,
    method: &str,
    time_ms: u64,
    nonce: &[u8; 16],
    request: &[u8],
    signature: &[u8],
) -> Result<(), CryptoError> {
    let field = "tz-signature";
    let sig = parse_signature(field, signature)?;
    key.verify_strict(&query_message(method, time_ms, nonce, request), &sig)
        .map_err(|_| CryptoError::BadSignature { field })
}

/// `BLAKE3("taizhang/v1/body\n" || body)`: what the signer's next record carries as `signer_prev`.
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(BODY_HASH_CONTEXT);
    h.update(body);
    *h.finalize().as_bytes()
}

/// A fresh signing key from the operating system's random source.
pub fn generate_key() -> Result<SigningKey, CryptoError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| CryptoError::Format {
        field: "seed",
        reason: format!("no randomness: {e}"),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Text form of a secret key file: `taizhang-ed25519-secret <hex seed>\n`.
pub fn secret_key_text(key: &SigningKey) -> String {
    format!("taizhang-ed25519-secret {}\n", hex::encode(key.to_bytes()))
}

/// Text form of a public key file: `taizhang-ed25519-public <hex key> <key id>\n`.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!(
        "taizhang-ed25519-public {} {}\n",
        hex::encode(key.as_bytes()),
        KeyId::of(key)
    )
}

fn parse_key_line(text: &str, tag: &str, field: &'static str) -> Result<[u8; 32], CryptoError> {
    let mut words = text.split_whitespace();
    if words.next() != Some(tag) {
        return Err(CryptoError::Format {
            field,
            reason: format!("expected a line starting with `{tag}`"),
        });
    }
    let hexed = words.next().ok_or(CryptoError::Format {
        field,
        reason: "missing key material".into(),
    })?;
    let bytes = hex::decode(hexed).map_err(|e| CryptoError::Format {
        field,
        reason: format!("not hex: {e}"),
    })?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::Length {
            field,
            expected: 32,
            got: bytes.len(),
        })
}

/// Parses a secret key file's text.
pub fn parse_secret_key_text(text: &str) -> Result<SigningKey, CryptoError> {
    let seed = parse_key_line(text, "taizhang-ed25519-secret", "secret key")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Parses a public key file's text (the key id, if present, must match).
pub fn parse_public_key_text(text: &str) -> Result<VerifyingKey, CryptoError> {
    let bytes = parse_key_line(text, "taizhang-ed25519-public", "public key")?;
    let key = parse_public_key("public key", &bytes)?;
    if let Some(id) = text.split_whitespace().nth(2) {
        if id != KeyId::of(&key).to_hex() {
            return Err(CryptoError::Format {
                field: "public key",
                reason: format!("key id {id} does not match the key"),
            });
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 8032 §7.1 tests 1–3: (secret, public, message, signature).
    const RFC8032: [(&str, &str, &str, &str); 3] = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];

    #[test]
    fn rfc8032_vectors_sign_and_verify_strict() {
        for (sk, pk, msg, sig) in RFC8032 {
            let key = SigningKey::from_bytes(&h(sk).try_into().unwrap());
            assert_eq!(key.verifying_key().as_bytes().to_vec(), h(pk));
            let s = key.sign(&h(msg)).to_bytes();
            assert_eq!(s.to_vec(), h(sig));
            let vk = parse_public_key("pk", &h(pk)).unwrap();
            vk.verify_strict(&h(msg), &Signature::from_slice(&h(sig)).unwrap())
                .unwrap();
            // One flipped bit anywhere in the signature fails.
            for i in 0..64 {
                let mut bad = h(sig);
                bad[i] ^= 0x01;
                let bad = Signature::from_slice(&bad).unwrap();
                assert!(vk.verify_strict(&h(msg), &bad).is_err(), "bit {i}");
            }
        }
    }

    #[test]
    fn key_id_golden() {
        // Key id of RFC 8032 test 1's public key.
        let vk = parse_public_key("pk", &h(RFC8032[0].1)).unwrap();
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"taizhang/v1/key\n");
        hasher.update(vk.as_bytes());
        let full = hasher.finalize();
        assert_eq!(KeyId::of(&vk).0.to_vec(), full.as_bytes()[..16].to_vec());
        assert_eq!(KeyId::of(&vk).to_hex(), GOLDEN_KEY_ID);
        assert_eq!(GOLDEN_KEY_ID.parse::<KeyId>().unwrap(), KeyId::of(&vk));
    }

    // Cross-checked with Python `blake3` (docs/protocol.md).
    const GOLDEN_KEY_ID: &str = "f1c7d101add65932578729a292184890";

    #[test]
    fn record_signature_golden_and_domain_separated() {
        let key = SigningKey::from_bytes(&h(RFC8032[0].0).try_into().unwrap());
        let body = b"example body";
        let sig = sign_record(&key, body);
        assert_eq!(hex::encode(sig), GOLDEN_RECORD_SIG);
        verify_record(&key.verifying_key(), body, &sig).unwrap();
        // A record signature is not a cosignature, and vice versa.
        assert!(verify_cosignature(&key.verifying_key(), body, &sig).is_err());
        let co = cosign_record(&key, body);
        assert!(verify_record(&key.verifying_key(), body, &co).is_err());
        verify_cosignature(&key.verifying_key(), body, &co).unwrap();
        assert_eq!(
            verify_record(&key.verifying_key(), body, &sig[..63]),
            Err(CryptoError::Length {
                field: "signature",
                expected: 64,
                got: 63
            })
        );
    }

    // Cross-checked with Python `cryptography` Ed25519.
    const GOLDEN_RECORD_SIG: &str = "e07d31315a324744b9fbf2d72842a63962c2df2433aaf09111e4b1f23af36840c849aac537284afe1af96586c68107aee1eea4423f7f0795aae261a3613b590d";

    #[test]
    fn small_order_keys_are_refused() {
        // The identity point (y = 1) has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            parse_public_key("public_key", &identity),
            Err(CryptoError::WeakPublicKey {
                field: "public_key"
            })
        );
        assert!(matches!(
            parse_public_key("public_key", &[0u8; 31]),
            Err(CryptoError::Length { .. })
        ));
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        // y = p + 3 (on the curve, not of small order) encodes the same point as y = 3;
        // p = 2^255 - 19 is ed ff .. ff 7f little-endian, so p + 3 is f0 ff .. ff 7f.
        let p_plus_3 = {
            let mut b = [0xffu8; 32];
            b[0] = 0xf0;
            b[31] = 0x7f;
            b
        };
        assert_eq!(
            parse_public_key("public_key", &p_plus_3),
            Err(CryptoError::BadPublicKey {
                field: "public_key"
            })
        );
    }

    #[test]
    fn key_files_round_trip() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let back = parse_secret_key_text(&secret_key_text(&key)).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
        let vk = parse_public_key_text(&public_key_text(&key.verifying_key())).unwrap();
        assert_eq!(vk, key.verifying_key());
        let wrong_id = format!(
            "taizhang-ed25519-public {} {}\n",
            hex::encode(vk.as_bytes()),
            "00".repeat(16)
        );
        assert!(parse_public_key_text(&wrong_id).is_err());
        assert!(parse_secret_key_text("nonsense").is_err());
    }

    #[test]
    fn body_hash_is_domain_separated_blake3() {
        let mut h = blake3::Hasher::new();
        h.update(b"taizhang/v1/body\n");
        h.update(b"x");
        assert_eq!(body_hash(b"x"), *h.finalize().as_bytes());
        assert_ne!(body_hash(b"x"), *blake3::hash(b"x").as_bytes());
    }
}

#[cfg(test)]
mod query_tests {
    use super::*;

    /// The golden query signature of docs/protocol.md §13.4: RFC 8032 test key 1 signs a
    /// `GetEntry` for index 7 (request bytes `08 07`) at 1767225600000 ms with nonce 00..0f.
    #[test]
    fn query_signature_golden_vector() {
        let key = SigningKey::from_bytes(
            &hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let nonce: [u8; 16] = core::array::from_fn(|i| i as u8);
        let method = "/taizhang.v1.Ledger/GetEntry";
        let request = [0x08, 0x07];
        let m = query_message(method, 1_767_225_600_000, &nonce, &request);
        let mut want = b"taizhang/v1/query\n/taizhang.v1.Ledger/GetEntry\n1767225600000\n000102030405060708090a0b0c0d0e0f\n".to_vec();
        want.extend_from_slice(blake3::hash(&request).as_bytes());
        assert_eq!(m, want);
        let sig = sign_query(&key, method, 1_767_225_600_000, &nonce, &request);
        assert_eq!(hex::encode(sig), GOLDEN_QUERY_SIGNATURE);
        let vk = key.verifying_key();
        verify_query(&vk, method, 1_767_225_600_000, &nonce, &request, &sig).unwrap();
        // Every input is covered.
        for (m2, t2, n2, r2) in [
            (
                "/taizhang.v1.Ledger/ExportEntries",
                1_767_225_600_000,
                nonce,
                &request[..],
            ),
            (method, 1_767_225_600_001, nonce, &request[..]),
            (method, 1_767_225_600_000, [0; 16], &request[..]),
            (method, 1_767_225_600_000, nonce, &[0x08, 0x08][..]),
        ] {
            assert!(verify_query(&vk, m2, t2, &n2, r2, &sig).is_err());
        }
    }

    const GOLDEN_QUERY_SIGNATURE: &str = "26e210295696c58dd9737c0e92939bf31d9ac7a90069482dd641d8ee51047bcb859072a1c590381fce07e6c1285947ddba3e504bc87205907bc3fddb6ab85c0e";
}
