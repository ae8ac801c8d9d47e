//! Signed ledger checkpoints.
//!
//! A checkpoint commits to the ledger's Merkle tree head. It is encoded as a
//! C2SP `tlog-checkpoint` body (<https://c2sp.org/tlog-checkpoint>):
//!
//! ```text
//! <origin>\n<decimal tree size>\n<base64 root hash>\n[<extension line>\n ...]
//! ```
//!
//! wrapped in a C2SP signed note (<https://c2sp.org/signed-note>): the text,
//! a blank line, then one or more signature lines
//! `— <key name> <base64(4-byte key hash || signature)>\n` (U+2014 EM DASH,
//! space). The log signs with Ed25519 (signature type `0x01`); witnesses add
//! C2SP `tlog-cosignature` (<https://c2sp.org/tlog-cosignature>)
//! `cosignature/v1` lines (signature type `0x04`).
//!
//! The encodings follow the Go reference implementation
//! `golang.org/x/mod/sumdb/note` (key strings `<name>+<hash>+<base64>` and
//! `PRIVATE+KEY+<name>+<hash>+<base64>`, note layout, 100-signature limit), and
//! its test vectors are reproduced byte for byte in the tests below.
//!
//! Parsing is strict and total: every function here returns an error instead
//! of panicking, whatever the input, and only canonical encodings are accepted
//! (no leading zeros, canonical padded standard base64, lowercase hex key
//! hashes), so any successfully parsed value re-encodes to exactly its input.
//! All Ed25519 verification uses `VerifyingKey::verify_strict`.
//!
//! Verification follows the signed-note spec: signature lines whose
//! (name, key hash) pair does not match the key being checked are kept and
//! ignored; every line that does match must verify, otherwise the whole note
//! is rejected.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Largest signed note (or checkpoint text) accepted or produced, in bytes (1 MiB).
pub const MAX_NOTE_BYTES: usize = 1 << 20;

/// Largest number of signature lines accepted in one note (the Go reference limit).
pub const MAX_SIGNATURES: usize = 100;

/// Largest timestamp a `cosignature/v1` may carry (2^63 - 1, per tlog-cosignature).
pub const MAX_COSIGNATURE_TIMESTAMP: u64 = i64::MAX as u64;

/// Signature type byte for plain Ed25519 note signatures.
const ALG_ED25519: u8 = 0x01;
/// Signature type byte for timestamped Ed25519 witness cosignatures.
const ALG_COSIGNATURE_V1: u8 = 0x04;
/// Prefix of every signature line: U+2014 EM DASH and a space.
const SIG_PREFIX: &str = "\u{2014} ";
/// Prefix of Go-format signer key strings.
const SIGNER_KEY_PREFIX: &str = "PRIVATE+KEY+";
/// Length of an Ed25519 signature.
const ED25519_SIG_LEN: usize = 64;
/// Length of a cosignature/v1 signature body: u64 timestamp plus Ed25519 signature.
const COSIGNATURE_V1_LEN: usize = 8 + ED25519_SIG_LEN;

/// Errors from parsing, signing and verifying checkpoints and signed notes.
///
/// Messages name the field and the rule that was broken. They never include
/// secret key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// The input is longer than [`MAX_NOTE_BYTES`].
    #[error("{field}: {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Which input was too large.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An ASCII control character other than newline was found.
    #[error("{field}: control character U+{code:04X} at byte {offset}; only newline (U+000A) is allowed")]
    ControlCharacter {
        /// Which input held it.
        field: &'static str,
        /// Byte offset of the character.
        offset: usize,
        /// The character's code point.
        code: u32,
    },
    /// A text that must end in a newline does not.
    #[error("{field}: must be non-empty and end with a newline (U+000A)")]
    MissingFinalNewline {
        /// Which text.
        field: &'static str,
    },
    /// The note has no blank line separating the text from the signatures.
    #[error("note: no blank line separating the text from the signature lines")]
    MissingSeparator,
    /// The note's signature block is empty.
    #[error("note: signature block is empty; at least one signature line is required")]
    NoSignatures,
    /// The note has more than [`MAX_SIGNATURES`] signature lines.
    #[error("note: more than {max} signature lines")]
    TooManySignatures {
        /// The limit.
        max: usize,
    },
    /// A signature line is malformed.
    #[error("note signature line {line}: {reason}")]
    MalformedSignatureLine {
        /// 1-based index of the line within the signature block.
        line: usize,
        /// The rule that was broken.
        reason: &'static str,
    },
    /// A key name is empty or contains whitespace, `+` or control characters.
    #[error("{field}: key name must be non-empty and contain no Unicode whitespace, '+' (U+002B) or control characters")]
    InvalidKeyName {
        /// Which name.
        field: &'static str,
    },
    /// The checkpoint origin line is empty.
    #[error("checkpoint origin: must be non-empty")]
    EmptyOrigin,
    /// The checkpoint text has fewer than the three mandatory lines.
    #[error("checkpoint: text must have at least three lines (origin, tree size, root hash)")]
    CheckpointTooShort,
    /// The checkpoint tree size line is not canonical decimal.
    #[error("checkpoint tree size: {reason}")]
    InvalidTreeSize {
        /// The rule that was broken.
        reason: &'static str,
    },
    /// The checkpoint root hash line is invalid.
    #[error("checkpoint root hash: {reason}")]
    InvalidRootHash {
        /// The rule that was broken.
        reason: &'static str,
    },
    /// A checkpoint extension line is empty.
    #[error("checkpoint extension line {index}: must be non-empty")]
    EmptyExtensionLine {
        /// 1-based index among the extension lines.
        index: usize,
    },
    /// A checkpoint field contains a newline, so it cannot be encoded as one line.
    #[error("{field}: must not contain a newline")]
    EmbeddedNewline {
        /// Which field.
        field: &'static str,
    },
    /// A verifier, signer or cosigner key string is malformed.
    #[error("{field}: {reason}")]
    MalformedKey {
        /// Which kind of key string.
        field: &'static str,
        /// The rule that was broken.
        reason: &'static str,
    },
    /// A key string names a signature type other than the one expected.
    #[error("{field}: unsupported signature type 0x{alg:02x} (expected 0x{expected:02x})")]
    UnknownKeyAlgorithm {
        /// Which kind of key string.
        field: &'static str,
        /// The type byte found.
        alg: u8,
        /// The type byte required.
        expected: u8,
    },
    /// A key string's key hash does not match its name and key.
    #[error("{field}: key hash {found} does not match the name and key (computed {computed})")]
    KeyHashMismatch {
        /// Which kind of key string.
        field: &'static str,
        /// The hash written in the string, as 8 hex digits.
        found: String,
        /// The hash computed from name and key, as 8 hex digits.
        computed: String,
    },
    /// An Ed25519 public key is unusable.
    #[error("Ed25519 public key: {reason}")]
    InvalidPublicKey {
        /// The rule that was broken.
        reason: &'static str,
    },
    /// No signature line matches the key's name and key hash.
    #[error("note: no signature by key {name}+{key_hash}")]
    NoMatchingSignature {
        /// The key name looked for.
        name: String,
        /// The key hash looked for, as 8 hex digits.
        key_hash: String,
    },
    /// A signature line matching the key's name and key hash failed to verify.
    #[error("note: invalid signature for key {name}+{key_hash}")]
    InvalidSignature {
        /// The key name.
        name: String,
        /// The key hash, as 8 hex digits.
        key_hash: String,
    },
    /// The checkpoint origin differs from the log key name.
    #[error("checkpoint origin {origin:?} does not match the log key name {key_name:?}")]
    OriginMismatch {
        /// The checkpoint's origin line.
        origin: String,
        /// The key name.
        key_name: String,
    },
    /// A cosignature timestamp exceeds [`MAX_COSIGNATURE_TIMESTAMP`].
    #[error("cosignature timestamp: {timestamp} exceeds 2^63-1")]
    InvalidTimestamp {
        /// The timestamp found.
        timestamp: u64,
    },
    /// A cosignature/v1 signature has the wrong length.
    #[error("cosignature/v1 signature: must be 72 bytes (8-byte timestamp and 64-byte Ed25519 signature), found {len}")]
    MalformedCosignature {
        /// The length found (after the 4-byte key hash).
        len: usize,
    },
}

// ---------------------------------------------------------------------------
// Shared helpers.
// ---------------------------------------------------------------------------

/// Key hash: first 4 bytes of SHA-256(name || "\n" || type byte || public key).
fn compute_key_hash(name: &str, alg: u8, public_key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([alg]);
    h.update(public_key);
    let [a, b, c, d, ..] = <[u8; 32]>::from(h.finalize());
    [a, b, c, d]
}

/// Reports whether `name` is a valid key name: non-empty, no Unicode
/// whitespace (the same set as Go's `unicode.IsSpace`), no `+`, and no ASCII
/// control characters (which a note may not contain anyway).
fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c < ' ')
}

fn check_key_name(field: &'static str, name: &str) -> Result<(), NoteError> {
    if is_valid_key_name(name) {
        Ok(())
    } else {
        Err(NoteError::InvalidKeyName { field })
    }
}

fn check_size(field: &'static str, s: &str) -> Result<(), NoteError> {
    if s.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLarge {
            field,
            len: s.len(),
            max: MAX_NOTE_BYTES,
        });
    }
    Ok(())
}

/// Rejects ASCII control characters other than newline. Scanning bytes is
/// exact for UTF-8: bytes below 0x80 only ever encode ASCII characters.
fn check_control_chars(field: &'static str, s: &str) -> Result<(), NoteError> {
    match s.bytes().enumerate().find(|&(_, b)| b < 0x20 && b != b'\n') {
        Some((offset, b)) => Err(NoteError::ControlCharacter {
            field,
            offset,
            code: u32::from(b),
        }),
        None => Ok(()),
    }
}

/// Validates a note text: bounded, newline-terminated, no control characters.
fn check_note_text(field: &'static str, text: &str) -> Result<(), NoteError> {
    check_size(field, text)?;
    if !text.ends_with('\n') {
        return Err(NoteError::MissingFinalNewline { field });
    }
    check_control_chars(field, text)
}

/// Decodes padded standard base64, accepting only the canonical encoding
/// (so that re-encoding reproduces the input exactly).
fn decode_base64_canonical(s: &str) -> Option<Vec<u8>> {
    let bytes = BASE64.decode(s).ok()?;
    (BASE64.encode(&bytes) == s).then_some(bytes)
}

/// Parses exactly 8 lowercase hex digits.
fn parse_key_hash_hex(s: &str) -> Option<[u8; 4]> {
    if s.len() != 8 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 4];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Checks that an Ed25519 public key is a canonical encoding of a point that
/// is not of small order.
fn check_public_key(key: &VerifyingKey) -> Result<(), NoteError> {
    if key.to_edwards().compress().to_bytes() != key.to_bytes() {
        return Err(NoteError::InvalidPublicKey {
            reason: "non-canonical point encoding",
        });
    }
    if key.is_weak() {
        return Err(NoteError::InvalidPublicKey {
            reason: "small-order (weak) point",
        });
    }
    Ok(())
}

fn decode_public_key(bytes: &[u8; 32]) -> Result<VerifyingKey, NoteError> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| NoteError::InvalidPublicKey {
        reason: "not a valid compressed Edwards point",
    })?;
    check_public_key(&key)?;
    Ok(key)
}

/// Derives the Ed25519 public key bytes from a 32-byte seed.
fn seed_to_public_key(seed: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

/// The parts of a `<name>+<hash>+<base64(type || key)>` string, with the key
/// hash already checked against the name and key.
struct KeyParts<'a> {
    name: &'a str,
    key: [u8; 32],
}

/// What the 32 key bytes of a key string are.
#[derive(Clone, Copy)]
enum KeyMaterial {
    /// An Ed25519 public key (verifier keys).
    Public,
    /// An Ed25519 seed (signer keys); the key hash covers the derived public key.
    Seed,
}

/// Parses `<name>+<8 lowercase hex>+<base64(alg || 32 bytes)>` and checks the
/// key hash against `SHA-256(name || "\n" || alg || public key)[:4]`.
fn parse_key_parts<'a>(
    field: &'static str,
    s: &'a str,
    alg: u8,
    material: KeyMaterial,
) -> Result<KeyParts<'a>, NoteError> {
    let malformed = |reason| NoteError::MalformedKey { field, reason };
    let (name, rest) = s
        .split_once('+')
        .ok_or_else(|| malformed("expected <name>+<key hash>+<base64 key>"))?;
    let (hash_hex, key_b64) = rest
        .split_once('+')
        .ok_or_else(|| malformed("expected <name>+<key hash>+<base64 key>"))?;
    check_key_name(field, name)?;
    let key_hash = parse_key_hash_hex(hash_hex)
        .ok_or_else(|| malformed("key hash must be exactly 8 lowercase hex digits"))?;
    let raw = decode_base64_canonical(key_b64)
        .ok_or_else(|| malformed("key must be canonical padded standard base64"))?;
    let (&found_alg, key_bytes) = raw
        .split_first()
        .ok_or_else(|| malformed("key must not be empty"))?;
    if found_alg != alg {
        return Err(NoteError::UnknownKeyAlgorithm {
            field,
            alg: found_alg,
            expected: alg,
        });
    }
    let key: [u8; 32] = key_bytes
        .try_into()
        .map_err(|_| malformed("Ed25519 key must be 32 bytes after the type byte"))?;
    let public = match material {
        KeyMaterial::Public => key,
        KeyMaterial::Seed => seed_to_public_key(&key),
    };
    let computed = compute_key_hash(name, alg, &public);
    if computed != key_hash {
        return Err(NoteError::KeyHashMismatch {
            field,
            found: hex::encode(key_hash),
            computed: hex::encode(computed),
        });
    }
    Ok(KeyParts { name, key })
}

fn format_key_parts(name: &str, key_hash: [u8; 4], alg: u8, key: &[u8; 32]) -> String {
    let mut raw = Vec::with_capacity(33);
    raw.push(alg);
    raw.extend_from_slice(key);
    format!("{name}+{}+{}", hex::encode(key_hash), BASE64.encode(raw))
}

// ---------------------------------------------------------------------------
// Checkpoint body.
// ---------------------------------------------------------------------------

/// A C2SP tlog-checkpoint body: the note text a log signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Unique identifier of the log; also the log's signing key name.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// Merkle tree root hash (RFC 9162 tree shape; BLAKE3 for this ledger) at `size`.
    pub root: [u8; 32],
    /// Optional, opaque, non-empty extension lines (without newlines).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// Encodes the checkpoint as note text: origin, size, base64 root and any
    /// extension lines, each followed by a newline.
    ///
    /// This does not validate; [`Checkpoint::validate`] reports whether the
    /// result will parse back to `self`.
    pub fn to_text(&self) -> String {
        let mut text = String::with_capacity(
            self.origin.len() + 66 + self.extensions.iter().map(|e| e.len() + 1).sum::<usize>(),
        );
        text.push_str(&self.origin);
        text.push('\n');
        text.push_str(&self.size.to_string());
        text.push('\n');
        text.push_str(&BASE64.encode(self.root));
        text.push('\n');
        for extension in &self.extensions {
            text.push_str(extension);
            text.push('\n');
        }
        text
    }

    /// Parses checkpoint note text strictly.
    ///
    /// Rules: at most [`MAX_NOTE_BYTES`]; ends with a newline; no control
    /// characters other than newline; non-empty origin; tree size in ASCII
    /// decimal without sign or leading zeros (except `0`) that fits a `u64`;
    /// root hash in canonical padded standard base64 decoding to exactly 32
    /// bytes; extension lines non-empty.
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        const FIELD: &str = "checkpoint text";
        check_note_text(FIELD, text)?;
        let body = text
            .strip_suffix('\n')
            .ok_or(NoteError::MissingFinalNewline { field: FIELD })?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(NoteError::EmptyOrigin);
        }
        let size_line = lines.next().ok_or(NoteError::CheckpointTooShort)?;
        let root_line = lines.next().ok_or(NoteError::CheckpointTooShort)?;
        let size = parse_tree_size(size_line)?;
        let root = parse_root_hash(root_line)?;
        let mut extensions = Vec::new();
        for (i, line) in lines.enumerate() {
            if line.is_empty() {
                return Err(NoteError::EmptyExtensionLine { index: i + 1 });
            }
            extensions.push(line.to_owned());
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// Checks that [`Checkpoint::to_text`] yields text that parses back to
    /// exactly `self` (no newlines inside fields, non-empty origin and
    /// extensions, no control characters, within the size limit).
    pub fn validate(&self) -> Result<(), NoteError> {
        if self.origin.contains('\n') {
            return Err(NoteError::EmbeddedNewline {
                field: "checkpoint origin",
            });
        }
        if self.extensions.iter().any(|e| e.contains('\n')) {
            return Err(NoteError::EmbeddedNewline {
                field: "checkpoint extension line",
            });
        }
        let parsed = Checkpoint::parse(&self.to_text())?;
        // With no embedded newlines the encoding is injective, so this holds;
        // it is checked rather than assumed.
        if parsed != *self {
            return Err(NoteError::EmbeddedNewline {
                field: "checkpoint",
            });
        }
        Ok(())
    }
}

fn parse_tree_size(line: &str) -> Result<u64, NoteError> {
    let invalid = |reason| NoteError::InvalidTreeSize { reason };
    if line.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if !line.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            "must contain only ASCII digits 0-9 (no sign or spaces)",
        ));
    }
    if line.len() > 1 && line.starts_with('0') {
        return Err(invalid("must not have leading zeros"));
    }
    line.bytes().try_fold(0u64, |acc, b| {
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| invalid("must fit in an unsigned 64-bit integer"))
    })
}

fn parse_root_hash(line: &str) -> Result<[u8; 32], NoteError> {
    let bytes = decode_base64_canonical(line).ok_or(NoteError::InvalidRootHash {
        reason: "must be canonical padded standard base64",
    })?;
    bytes.try_into().map_err(|_| NoteError::InvalidRootHash {
        reason: "must decode to exactly 32 bytes",
    })
}

// ---------------------------------------------------------------------------
// Signed note.
// ---------------------------------------------------------------------------

/// One signature line of a signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key hash (big-endian key ID).
    pub key_hash: [u8; 4],
    /// Signature bytes following the key hash (64 bytes for Ed25519,
    /// 72 for cosignature/v1; other lengths are kept for unknown keys).
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// Encodes the signature line, `— <name> <base64(key hash || signature)>\n`.
    pub fn to_line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.key_hash);
        raw.extend_from_slice(&self.signature);
        format!("{SIG_PREFIX}{} {}\n", self.name, BASE64.encode(raw))
    }

    /// Parses one signature line (without its final newline).
    pub fn parse_line(line: &str) -> Result<NoteSignature, &'static str> {
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or("must start with an em dash (U+2014) and a space")?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or("missing space between key name and signature")?;
        if !is_valid_key_name(name) {
            return Err("key name must be non-empty and contain no Unicode whitespace or '+'");
        }
        if b64.is_empty() {
            return Err("signature must not be empty");
        }
        let raw = decode_base64_canonical(b64)
            .ok_or("signature must be canonical padded standard base64")?;
        if raw.len() < 5 {
            return Err("signature must be at least 5 bytes (4-byte key hash and signature)");
        }
        let (key_hash, signature) = raw
            .split_first_chunk::<4>()
            .ok_or("signature shorter than its 4-byte key hash")?;
        Ok(NoteSignature {
            name: name.to_owned(),
            key_hash: *key_hash,
            signature: signature.to_vec(),
        })
    }

    fn matches(&self, name: &str, key_hash: &[u8; 4]) -> bool {
        self.name == name && self.key_hash == *key_hash
    }
}

/// A C2SP signed note: text plus signature lines (verified or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    /// The signed text, including its final newline.
    pub text: String,
    /// All signature lines, in order, including ones from unknown keys.
    pub signatures: Vec<NoteSignature>,
}

impl SignedNote {
    /// Parses a signed note strictly, without verifying any signature.
    ///
    /// Rules: at most [`MAX_NOTE_BYTES`]; no control characters other than
    /// newline; text and signature block split at the last blank line; 1 to
    /// [`MAX_SIGNATURES`] newline-terminated signature lines, each
    /// `— <valid key name> <canonical base64 of at least 5 bytes>`.
    /// Every signature line is kept, so [`SignedNote::to_note_string`]
    /// reproduces the input exactly.
    pub fn parse(note: &str) -> Result<SignedNote, NoteError> {
        check_size("note", note)?;
        check_control_chars("note", note)?;
        let split = note.rfind("\n\n").ok_or(NoteError::MissingSeparator)?;
        // `split` starts a two-byte ASCII match, so both bounds are in range
        // and on character boundaries; `get` keeps this total regardless.
        let text = note.get(..split + 1).ok_or(NoteError::MissingSeparator)?;
        let sigs = note.get(split + 2..).ok_or(NoteError::MissingSeparator)?;
        if sigs.is_empty() {
            return Err(NoteError::NoSignatures);
        }
        let sigs = sigs
            .strip_suffix('\n')
            .ok_or(NoteError::MissingFinalNewline {
                field: "note signature block",
            })?;
        let mut signatures = Vec::new();
        for (i, line) in sigs.split('\n').enumerate() {
            if i >= MAX_SIGNATURES {
                return Err(NoteError::TooManySignatures {
                    max: MAX_SIGNATURES,
                });
            }
            let sig = NoteSignature::parse_line(line).map_err(|reason| {
                NoteError::MalformedSignatureLine {
                    line: i + 1,
                    reason,
                }
            })?;
            signatures.push(sig);
        }
        Ok(SignedNote {
            text: text.to_owned(),
            signatures,
        })
    }

    /// Encodes the note: text, a blank line, then each signature line.
    pub fn to_note_string(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 1 + 128 * self.signatures.len());
        out.push_str(&self.text);
        out.push('\n');
        for sig in &self.signatures {
            out.push_str(&sig.to_line());
        }
        out
    }

    /// Appends `sig`, first removing any existing line with the same key name
    /// and key hash (as Go's `note.Sign` does when re-signing).
    pub fn add_signature(&mut self, sig: NoteSignature) {
        self.signatures
            .retain(|s| !s.matches(&sig.name, &sig.key_hash));
        self.signatures.push(sig);
    }

    /// Verifies the note against one Ed25519 note key.
    ///
    /// Lines from other keys are ignored. At least one line must match the
    /// verifier's name and key hash, and every matching line must be a valid
    /// signature of the text under `verify_strict`.
    pub fn verify(&self, verifier: &NoteVerifier) -> Result<(), NoteError> {
        let mut found = false;
        for sig in self
            .signatures
            .iter()
            .filter(|s| s.matches(&verifier.name, &verifier.key_hash))
        {
            found = true;
            let valid = <[u8; ED25519_SIG_LEN]>::try_from(sig.signature.as_slice())
                .map(|bytes| {
                    verifier
                        .key
                        .verify_strict(self.text.as_bytes(), &Signature::from_bytes(&bytes))
                        .is_ok()
                })
                .unwrap_or(false);
            if !valid {
                return Err(NoteError::InvalidSignature {
                    name: verifier.name.clone(),
                    key_hash: hex::encode(verifier.key_hash),
                });
            }
        }
        if found {
            Ok(())
        } else {
            Err(NoteError::NoMatchingSignature {
                name: verifier.name.clone(),
                key_hash: hex::encode(verifier.key_hash),
            })
        }
    }
}

// ---------------------------------------------------------------------------
// Ed25519 note keys.
// ---------------------------------------------------------------------------

/// An Ed25519 note signing key with its name (signature type `0x01`).
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    key_hash: [u8; 4],
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_hash", &hex::encode(self.key_hash))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// Creates a signer; `name` must be a valid key name.
    pub fn new(name: &str, key: SigningKey) -> Result<Self, NoteError> {
        check_key_name("signer key name", name)?;
        let key_hash = compute_key_hash(name, ALG_ED25519, key.verifying_key().as_bytes());
        Ok(NoteSigner {
            name: name.to_owned(),
            key,
            key_hash,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key hash: `SHA-256(name || "\n" || 0x01 || public key)[:4]`.
    pub fn key_hash(&self) -> [u8; 4] {
        self.key_hash
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
            key_hash: self.key_hash,
        }
    }

    /// Signs a note text, which must end with a newline, contain no control
    /// characters other than newline, and be at most [`MAX_NOTE_BYTES`].
    pub fn sign(&self, text: &str) -> Result<NoteSignature, NoteError> {
        check_note_text("note text", text)?;
        Ok(NoteSignature {
            name: self.name.clone(),
            key_hash: self.key_hash,
            signature: self.key.sign(text.as_bytes()).to_bytes().to_vec(),
        })
    }

    /// Parses a Go-format signer key, `PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>`.
    /// The hash must match the public key derived from the seed.
    pub fn from_key_string(s: &str) -> Result<Self, NoteError> {
        const FIELD: &str = "signer key";
        let rest = s
            .strip_prefix(SIGNER_KEY_PREFIX)
            .ok_or(NoteError::MalformedKey {
                field: FIELD,
                reason: "must start with PRIVATE+KEY+",
            })?;
        let parts = parse_key_parts(FIELD, rest, ALG_ED25519, KeyMaterial::Seed)?;
        NoteSigner::new(parts.name, SigningKey::from_bytes(&parts.key))
    }

    /// Encodes the signer key as `PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>`.
    /// The result is secret.
    pub fn key_string(&self) -> String {
        format!(
            "{SIGNER_KEY_PREFIX}{}",
            format_key_parts(&self.name, self.key_hash, ALG_ED25519, self.key.as_bytes())
        )
    }
}

/// An Ed25519 note verifier key with its name (signature type `0x01`).
#[derive(Clone, Debug)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
    key_hash: [u8; 4],
}

impl NoteVerifier {
    /// Creates a verifier; `name` must be a valid key name and `key` a
    /// canonical, non-small-order Ed25519 point.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        check_key_name("verifier key name", name)?;
        check_public_key(&key)?;
        Ok(NoteVerifier {
            name: name.to_owned(),
            key_hash: compute_key_hash(name, ALG_ED25519, key.as_bytes()),
            key,
        })
    }

    /// Parses a verifier key, `<name>+<hash>+<base64(0x01 || public key)>`.
    pub fn from_vkey(s: &str) -> Result<Self, NoteError> {
        let parts = parse_key_parts("verifier key", s, ALG_ED25519, KeyMaterial::Public)?;
        NoteVerifier::new(parts.name, decode_public_key(&parts.key)?)
    }

    /// Encodes the verifier key, `<name>+<hash>+<base64(0x01 || public key)>`.
    pub fn vkey(&self) -> String {
        format_key_parts(&self.name, self.key_hash, ALG_ED25519, self.key.as_bytes())
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key hash: `SHA-256(name || "\n" || 0x01 || public key)[:4]`.
    pub fn key_hash(&self) -> [u8; 4] {
        self.key_hash
    }

    /// The Ed25519 public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }
}

// ---------------------------------------------------------------------------
// Checkpoint signing and opening.
// ---------------------------------------------------------------------------

/// Signs a checkpoint: returns the full signed note text.
///
/// The checkpoint must pass [`Checkpoint::validate`], its origin must equal
/// the signer's key name, and the note must fit in [`MAX_NOTE_BYTES`].
pub fn sign_checkpoint(cp: &Checkpoint, signer: &NoteSigner) -> Result<String, NoteError> {
    cp.validate()?;
    if cp.origin != signer.name {
        return Err(NoteError::OriginMismatch {
            origin: cp.origin.clone(),
            key_name: signer.name.clone(),
        });
    }
    let text = cp.to_text();
    let sig = signer.sign(&text)?;
    let note = SignedNote {
        text,
        signatures: vec![sig],
    }
    .to_note_string();
    check_size("note", &note)?;
    Ok(note)
}

/// Opens a signed checkpoint note: parse, require a valid signature by
/// `verifier` (whose name must equal the checkpoint origin), return the
/// checkpoint and the parsed note.
///
/// The signature is verified before the text is interpreted. Signature lines
/// from other keys (e.g. witness cosignatures) are kept in the returned note.
pub fn open_checkpoint(
    note: &str,
    verifier: &NoteVerifier,
) -> Result<(Checkpoint, SignedNote), NoteError> {
    let signed = SignedNote::parse(note)?;
    signed.verify(verifier)?;
    let checkpoint = Checkpoint::parse(&signed.text)?;
    if checkpoint.origin != verifier.name {
        return Err(NoteError::OriginMismatch {
            origin: checkpoint.origin,
            key_name: verifier.name.clone(),
        });
    }
    Ok((checkpoint, signed))
}

// ---------------------------------------------------------------------------
// Witness cosignatures (cosignature/v1).
// ---------------------------------------------------------------------------

/// A decoded `cosignature/v1` signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignatureV1 {
    /// Cosigner (witness) key name.
    pub name: String,
    /// Key hash: `SHA-256(name || "\n" || 0x04 || public key)[:4]`.
    pub key_hash: [u8; 4],
    /// POSIX seconds at which the cosignature was made (at most 2^63 - 1).
    pub timestamp: u64,
    /// Ed25519 signature over the cosignature/v1 message.
    pub signature: [u8; 64],
}

impl CosignatureV1 {
    /// Decodes a note signature line as a cosignature/v1: the signature must
    /// be 72 bytes (big-endian u64 timestamp, Ed25519 signature) and the
    /// timestamp at most 2^63 - 1. Does not verify anything.
    pub fn from_note_signature(sig: &NoteSignature) -> Result<Self, NoteError> {
        let malformed = NoteError::MalformedCosignature {
            len: sig.signature.len(),
        };
        let (ts, signature) = sig
            .signature
            .split_first_chunk::<8>()
            .ok_or_else(|| malformed.clone())?;
        let signature: [u8; 64] = signature.try_into().map_err(|_| malformed)?;
        let timestamp = u64::from_be_bytes(*ts);
        if timestamp > MAX_COSIGNATURE_TIMESTAMP {
            return Err(NoteError::InvalidTimestamp { timestamp });
        }
        Ok(CosignatureV1 {
            name: sig.name.clone(),
            key_hash: sig.key_hash,
            timestamp,
            signature,
        })
    }

    /// Encodes as a note signature (key hash || timestamp || signature).
    pub fn to_note_signature(&self) -> NoteSignature {
        let mut signature = Vec::with_capacity(COSIGNATURE_V1_LEN);
        signature.extend_from_slice(&self.timestamp.to_be_bytes());
        signature.extend_from_slice(&self.signature);
        NoteSignature {
            name: self.name.clone(),
            key_hash: self.key_hash,
            signature,
        }
    }
}

/// The cosignature/v1 signed message:
/// `"cosignature/v1\ntime <decimal seconds>\n" || checkpoint text`.
fn cosignature_v1_message(timestamp: u64, checkpoint_text: &str) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{checkpoint_text}").into_bytes()
}

/// The cosigner key hash: `SHA-256(name || "\n" || 0x04 || public key)[:4]`.
pub fn cosigner_key_hash(name: &str, key: &VerifyingKey) -> [u8; 4] {
    compute_key_hash(name, ALG_COSIGNATURE_V1, key.as_bytes())
}

/// Produces a witness cosignature/v1 line over `checkpoint_text`.
///
/// `checkpoint_text` must be a valid checkpoint body ([`Checkpoint::parse`]),
/// `name` a valid key name, and `timestamp_secs` at most 2^63 - 1.
pub fn cosign(
    checkpoint_text: &str,
    name: &str,
    key: &SigningKey,
    timestamp_secs: u64,
) -> Result<NoteSignature, NoteError> {
    check_key_name("cosigner key name", name)?;
    if timestamp_secs > MAX_COSIGNATURE_TIMESTAMP {
        return Err(NoteError::InvalidTimestamp {
            timestamp: timestamp_secs,
        });
    }
    Checkpoint::parse(checkpoint_text)?;
    let sig = key.sign(&cosignature_v1_message(timestamp_secs, checkpoint_text));
    Ok(CosignatureV1 {
        name: name.to_owned(),
        key_hash: cosigner_key_hash(name, &key.verifying_key()),
        timestamp: timestamp_secs,
        signature: sig.to_bytes(),
    }
    .to_note_signature())
}

/// Verifies the cosignature/v1 by (`name`, `key`) on a signed checkpoint note
/// and returns its timestamp.
///
/// The note text must be a valid checkpoint. Lines from other keys are
/// ignored; at least one line must match the cosigner's name and key hash, and
/// every matching line must verify (with `verify_strict`). If several match,
/// the first one's timestamp is returned.
pub fn verify_cosignature(
    note: &SignedNote,
    name: &str,
    key: &VerifyingKey,
) -> Result<u64, NoteError> {
    check_key_name("cosigner key name", name)?;
    Checkpoint::parse(&note.text)?;
    let key_hash = cosigner_key_hash(name, key);
    let mut first = None;
    for sig in note
        .signatures
        .iter()
        .filter(|s| s.matches(name, &key_hash))
    {
        let cosig = CosignatureV1::from_note_signature(sig)?;
        let message = cosignature_v1_message(cosig.timestamp, &note.text);
        if key
            .verify_strict(&message, &Signature::from_bytes(&cosig.signature))
            .is_err()
        {
            return Err(NoteError::InvalidSignature {
                name: name.to_owned(),
                key_hash: hex::encode(key_hash),
            });
        }
        first.get_or_insert(cosig.timestamp);
    }
    first.ok_or_else(|| NoteError::NoMatchingSignature {
        name: name.to_owned(),
        key_hash: hex::encode(key_hash),
    })
}

/// Encodes a cosigner verifier key, `<name>+<hash>+<base64(0x04 || public key)>`
/// (the tlog-cosignature vkey form).
pub fn cosigner_vkey(name: &str, key: &VerifyingKey) -> Result<String, NoteError> {
    check_key_name("cosigner key name", name)?;
    check_public_key(key)?;
    Ok(format_key_parts(
        name,
        cosigner_key_hash(name, key),
        ALG_COSIGNATURE_V1,
        key.as_bytes(),
    ))
}

/// Parses a cosigner verifier key, `<name>+<hash>+<base64(0x04 || public key)>`,
/// returning the name and public key.
pub fn parse_cosigner_vkey(s: &str) -> Result<(String, VerifyingKey), NoteError> {
    let parts = parse_key_parts("cosigner key", s, ALG_COSIGNATURE_V1, KeyMaterial::Public)?;
    Ok((parts.name.to_owned(), decode_public_key(&parts.key)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // --- Reference vectors from golang.org/x/mod/sumdb/note (note.go, note_test.go). ---
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n";
    const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    // --- Our own golden vectors (cross-checked with an independent
    // pyca/cryptography script, not generated by this code). ---
    const LOG_NAME: &str = "taizhang.example/dev";
    const LOG_SEED: [u8; 32] = [0x07; 32];
    const LOG_VKEY: &str =
        "taizhang.example/dev+95e6eaa9+AepKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs";
    const LOG_SKEY: &str =
        "PRIVATE+KEY+taizhang.example/dev+95e6eaa9+AQcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH";
    const GOLDEN_TEXT: &str =
        "taizhang.example/dev\n8\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";
    const GOLDEN_NOTE: &str = "taizhang.example/dev\n\
        8\n\
        AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\
        \n\
        \u{2014} taizhang.example/dev lebqqcNZBjC/2a5TO6+S1rUmqNi80/pcbYLdRLamCQOFoOQNTznzbLZLRUaPe2QStMGXcLzODjZk4FegCIKk8s9y+QI=\n";
    const WITNESS_NAME: &str = "witness.taizhang.example/w1";
    const WITNESS_SEED: [u8; 32] = [0x09; 32];
    const WITNESS_TS: u64 = 1_700_000_000;
    const WITNESS_VKEY: &str =
        "witness.taizhang.example/w1+b2a96108+BP0XJDhaoMdbZPt4zWAvodmR/ev3axPFjtcC6sg16fYY";
    const GOLDEN_COSIG_LINE: &str = "\u{2014} witness.taizhang.example/w1 sqlhCAAAAABlU/EAzpDzn5Y038Y/ifRHdaZs2HBduZZ7mesLP78Nm+vOfmD+2KbzLL49Y0vMxGoHOX/yNpQemzoy6dosNRUjy7g0CQ==\n";

    fn golden_root() -> [u8; 32] {
        let mut root = [0u8; 32];
        for (i, b) in root.iter_mut().enumerate() {
            *b = i as u8;
        }
        root
    }

    fn golden_checkpoint() -> Checkpoint {
        Checkpoint {
            origin: LOG_NAME.to_owned(),
            size: 8,
            root: golden_root(),
            extensions: vec![],
        }
    }

    fn log_signer() -> NoteSigner {
        NoteSigner::new(LOG_NAME, SigningKey::from_bytes(&LOG_SEED)).unwrap()
    }

    fn witness_key() -> SigningKey {
        SigningKey::from_bytes(&WITNESS_SEED)
    }

    fn golden_cosigned_note() -> String {
        format!("{GOLDEN_NOTE}{GOLDEN_COSIG_LINE}")
    }

    // ----------------------------------------------------------------------
    // Go reference vectors.
    // ----------------------------------------------------------------------

    #[test]
    fn go_verifier_keys_parse_and_reencode() {
        let peter = NoteVerifier::from_vkey(PETER_VKEY).unwrap();
        assert_eq!(peter.name(), "PeterNeumann");
        assert_eq!(peter.key_hash(), [0xc7, 0x4f, 0x20, 0xa3]);
        assert_eq!(peter.vkey(), PETER_VKEY);
        let enoch = NoteVerifier::from_vkey(ENOCH_VKEY).unwrap();
        assert_eq!(enoch.key_hash(), [0xaf, 0x0c, 0xfe, 0x78]);
        assert_eq!(enoch.vkey(), ENOCH_VKEY);
        let rebuilt = NoteVerifier::new("PeterNeumann", *peter.verifying_key()).unwrap();
        assert_eq!(rebuilt.vkey(), PETER_VKEY);
    }

    #[test]
    fn go_signer_key_parses_and_reencodes() {
        let signer = NoteSigner::from_key_string(PETER_SKEY).unwrap();
        assert_eq!(signer.name(), "PeterNeumann");
        assert_eq!(signer.key_hash(), [0xc7, 0x4f, 0x20, 0xa3]);
        assert_eq!(signer.key_string(), PETER_SKEY);
        assert_eq!(signer.verifier().vkey(), PETER_VKEY);
        // Debug never shows the seed.
        let dbg = format!("{signer:?}");
        assert!(
            dbg.contains("PeterNeumann") && !dbg.contains("AYEK"),
            "{dbg}"
        );
    }

    #[test]
    fn go_sign_reproduces_reference_note() {
        let signer = NoteSigner::from_key_string(PETER_SKEY).unwrap();
        let sig = signer.sign(GO_TEXT).unwrap();
        assert_eq!(sig.to_line(), PETER_SIG);
        let note = SignedNote {
            text: GO_TEXT.to_owned(),
            signatures: vec![sig],
        };
        assert_eq!(note.to_note_string(), format!("{GO_TEXT}\n{PETER_SIG}"));
        // Short text without final newline is refused (Go: "malformed note").
        assert_eq!(
            signer.sign("abc"),
            Err(NoteError::MissingFinalNewline { field: "note text" })
        );
    }

    #[test]
    fn go_resigning_replaces_existing_signature() {
        let signer = NoteSigner::from_key_string(PETER_SKEY).unwrap();
        let mut note = SignedNote {
            text: GO_TEXT.to_owned(),
            signatures: vec![NoteSignature {
                name: "PeterNeumann".into(),
                key_hash: [0xc7, 0x4f, 0x20, 0xa3],
                signature: b"BADSIGN".to_vec(),
            }],
        };
        note.add_signature(signer.sign(GO_TEXT).unwrap());
        assert_eq!(note.to_note_string(), format!("{GO_TEXT}\n{PETER_SIG}"));
    }

    #[test]
    fn go_open_one_known_one_unknown_and_both_known() {
        let msg = format!("{GO_TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        let note = SignedNote::parse(&msg).unwrap();
        assert_eq!(note.text, GO_TEXT);
        assert_eq!(note.signatures.len(), 2);
        assert_eq!(note.signatures[1].name, "EnochRoot");
        assert_eq!(note.signatures[1].key_hash, [0xaf, 0x0c, 0xfe, 0x78]);
        assert_eq!(note.to_note_string(), msg);
        note.verify(&NoteVerifier::from_vkey(PETER_VKEY).unwrap())
            .unwrap();
        note.verify(&NoteVerifier::from_vkey(ENOCH_VKEY).unwrap())
            .unwrap();
    }

    #[test]
    fn go_verifier_key_manglings_rejected() {
        let b = PETER_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if i != 0 || j != b.len() {
                    let s = std::str::from_utf8(&b[i..j]).unwrap();
                    assert!(NoteVerifier::from_vkey(s).is_err(), "accepted {s:?}");
                }
            }
        }
        let mut m = b.to_vec();
        for i in 0..m.len() {
            m[i] += 1;
            let s = std::str::from_utf8(&m).unwrap();
            assert!(NoteVerifier::from_vkey(s).is_err(), "accepted {s:?}");
            m[i] -= 1;
        }
        // Wrong length key, with adjusted key hash.
        assert!(matches!(
            NoteVerifier::from_vkey(
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
            ),
            Err(NoteError::MalformedKey { .. })
        ));
        // Unknown algorithm, with adjusted key hash.
        assert_eq!(
            NoteVerifier::from_vkey(
                "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            )
            .unwrap_err(),
            NoteError::UnknownKeyAlgorithm {
                field: "verifier key",
                alg: 0x65,
                expected: 0x01
            }
        );
    }

    #[test]
    fn go_signer_key_manglings_rejected() {
        let b = PETER_SKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if i != 0 || j != b.len() {
                    let s = std::str::from_utf8(&b[i..j]).unwrap();
                    assert!(NoteSigner::from_key_string(s).is_err(), "accepted {s:?}");
                }
            }
        }
        let mut m = b.to_vec();
        for i in 0..m.len() {
            m[i] += 1;
            let s = std::str::from_utf8(&m).unwrap();
            assert!(NoteSigner::from_key_string(s).is_err(), "accepted {s:?}");
            m[i] -= 1;
        }
    }

    #[test]
    fn go_bad_messages_rejected() {
        let bad = [
            GO_TEXT.to_owned(),
            format!("{GO_TEXT}\n"),
            format!("{GO_TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
            format!("\x01{GO_TEXT}\n{PETER_SIG}"),
            format!("{GO_TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="),
            format!("{GO_TEXT}\n{PETER_SIG}Unexpected line.\n"),
        ];
        for msg in &bad {
            assert!(SignedNote::parse(msg).is_err(), "accepted {msg:?}");
        }
        // Go's "\xff" + text case cannot arise: a &str is always valid UTF-8.
    }

    #[test]
    fn go_signature_count_limit() {
        let ok = format!("{GO_TEXT}\n{}", PETER_SIG.repeat(MAX_SIGNATURES));
        let note = SignedNote::parse(&ok).unwrap();
        assert_eq!(note.signatures.len(), MAX_SIGNATURES);
        note.verify(&NoteVerifier::from_vkey(PETER_VKEY).unwrap())
            .unwrap();
        let too_many = format!("{GO_TEXT}\n{}", PETER_SIG.repeat(MAX_SIGNATURES + 1));
        assert_eq!(
            SignedNote::parse(&too_many),
            Err(NoteError::TooManySignatures { max: 100 })
        );
    }

    #[test]
    fn go_invalid_signature_rejected() {
        let msg = format!("{GO_TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        let note = SignedNote::parse(&msg).unwrap();
        let err = note
            .verify(&NoteVerifier::from_vkey(PETER_VKEY).unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "note: invalid signature for key PeterNeumann+c74f20a3"
        );
    }

    #[test]
    fn go_duplicate_signatures() {
        let enoch_abcd = format!("{}ABCD{}", &ENOCH_SIG[..60], &ENOCH_SIG[60..]);
        let msg = format!("{GO_TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}{enoch_abcd}");
        let note = SignedNote::parse(&msg).unwrap();
        assert_eq!(note.signatures.len(), 5);
        // Duplicated valid lines by the verified key are fine; Enoch's lines
        // are unknown to Peter's verifier and ignored.
        note.verify(&NoteVerifier::from_vkey(PETER_VKEY).unwrap())
            .unwrap();
        // Every line matching a known key must verify (C2SP signed-note);
        // unlike Go, a later corrupt duplicate is not skipped.
        assert!(matches!(
            note.verify(&NoteVerifier::from_vkey(ENOCH_VKEY).unwrap()),
            Err(NoteError::InvalidSignature { .. })
        ));
    }

    #[test]
    fn go_misnamed_or_rehashed_signature_does_not_match() {
        let peter = NoteVerifier::from_vkey(PETER_VKEY).unwrap();
        let misnamed = PETER_SIG.replace("PeterNeumann", "CarmenSandiego");
        let note = SignedNote::parse(&format!("{GO_TEXT}\n{misnamed}")).unwrap();
        assert!(matches!(
            note.verify(&peter),
            Err(NoteError::NoMatchingSignature { .. })
        ));
        let wrong_hash = PETER_SIG.replace("x08g", "xxxx");
        let note = SignedNote::parse(&format!("{GO_TEXT}\n{wrong_hash}")).unwrap();
        assert!(matches!(
            note.verify(&peter),
            Err(NoteError::NoMatchingSignature { .. })
        ));
    }

    // ----------------------------------------------------------------------
    // Vectors from the C2SP specs and transparency-dev/formats.
    // ----------------------------------------------------------------------

    #[test]
    fn c2sp_checkpoint_example_parses() {
        let note = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\
            \u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n\
            \u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n";
        let signed = SignedNote::parse(note).unwrap();
        assert_eq!(signed.to_note_string(), note);
        let cp = Checkpoint::parse(&signed.text).unwrap();
        assert_eq!(cp.origin, "example.com/behind-the-sofa");
        assert_eq!(cp.size, 20_852_163);
        assert!(cp.extensions.is_empty());
        let cosig = CosignatureV1::from_note_signature(&signed.signatures[1]).unwrap();
        assert_eq!(cosig.key_hash, [0x8d, 0x66, 0xcf, 0x3f]);
        assert_eq!(cosig.timestamp, 1_679_315_147); // "time 1679315147" in the spec
        assert_eq!(cosig.to_note_signature(), signed.signatures[1]);
    }

    #[test]
    fn c2sp_signed_note_example_with_blank_line_in_text() {
        let note = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n\n\
            \u{2014} quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";
        let signed = SignedNote::parse(note).unwrap();
        assert_eq!(
            signed.text,
            "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n"
        );
        assert_eq!(signed.signatures[0].key_hash, [0x36, 0x7b, 0xa0, 0x4b]);
        assert_eq!(signed.to_note_string(), note);
    }

    #[test]
    fn transparency_dev_key_vectors() {
        // Native cosignature/v1 (0x04) vkey from note_cosigv1_test.go.
        let vkey = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2";
        let (name, key) = parse_cosigner_vkey(vkey).unwrap();
        assert_eq!(name, "remora.n621.de");
        assert_eq!(cosigner_key_hash(&name, &key), [0xda, 0x77, 0xad, 0xe7]);
        assert_eq!(cosigner_vkey(&name, &key).unwrap(), vkey);
        // A 0x04 key is not a note (0x01) verifier key, and vice versa.
        assert!(matches!(
            NoteVerifier::from_vkey(vkey),
            Err(NoteError::UnknownKeyAlgorithm { alg: 4, .. })
        ));
        let plain = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6";
        assert_eq!(NoteVerifier::from_vkey(plain).unwrap().vkey(), plain);
        assert!(parse_cosigner_vkey(plain).is_err());
        // Bad vkeys from the same test.
        for bad in [
            "bananas.sigstore.dev+12344556",
            "rekor.sigstore.dev+12345678+THIS_IS_NOT_BASE64!",
            "rekor.sigstore.dev+12345678+AwEB",
        ] {
            assert!(NoteVerifier::from_vkey(bad).is_err(), "{bad}");
            assert!(parse_cosigner_vkey(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn transparency_dev_cosignature_timestamp_vectors() {
        let decode = |b64: &str| {
            let raw = BASE64.decode(b64).unwrap();
            NoteSignature {
                name: "w".into(),
                key_hash: raw[..4].try_into().unwrap(),
                signature: raw[4..].to_vec(),
            }
        };
        let ok = decode("ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA==");
        assert_eq!(
            CosignatureV1::from_note_signature(&ok).unwrap().timestamp,
            1_727_964_367
        );
        // A plain Ed25519 note signature is not a cosignature.
        let plain = decode("eQjRQm6eSKzFoiYalgwCPXu2y3ijtg68is9M46JKxuZB+dRfTmeQeDBoXnvxZx2ugnkyV+MUMLXpWs1hPb/W/4xkNQY=");
        assert_eq!(
            CosignatureV1::from_note_signature(&plain),
            Err(NoteError::MalformedCosignature { len: 64 })
        );
    }

    // ----------------------------------------------------------------------
    // Our golden vectors.
    // ----------------------------------------------------------------------

    #[test]
    fn golden_keys() {
        let signer = log_signer();
        assert_eq!(signer.key_string(), LOG_SKEY);
        assert_eq!(signer.verifier().vkey(), LOG_VKEY);
        assert_eq!(
            NoteSigner::from_key_string(LOG_SKEY).unwrap().key_string(),
            LOG_SKEY
        );
        assert_eq!(NoteVerifier::from_vkey(LOG_VKEY).unwrap().vkey(), LOG_VKEY);
        let witness = witness_key().verifying_key();
        assert_eq!(cosigner_vkey(WITNESS_NAME, &witness).unwrap(), WITNESS_VKEY);
        assert_eq!(
            cosigner_key_hash(WITNESS_NAME, &witness),
            [0xb2, 0xa9, 0x61, 0x08]
        );
    }

    #[test]
    fn golden_checkpoint_note() {
        let cp = golden_checkpoint();
        assert_eq!(cp.to_text(), GOLDEN_TEXT);
        let note = sign_checkpoint(&cp, &log_signer()).unwrap();
        assert_eq!(note, GOLDEN_NOTE);
        let verifier = NoteVerifier::from_vkey(LOG_VKEY).unwrap();
        let (opened, signed) = open_checkpoint(GOLDEN_NOTE, &verifier).unwrap();
        assert_eq!(opened, cp);
        assert_eq!(signed.text, GOLDEN_TEXT);
        assert_eq!(signed.to_note_string(), GOLDEN_NOTE);
    }

    #[test]
    fn golden_cosignature_line() {
        let sig = cosign(GOLDEN_TEXT, WITNESS_NAME, &witness_key(), WITNESS_TS).unwrap();
        assert_eq!(sig.to_line(), GOLDEN_COSIG_LINE);
        let cosig = CosignatureV1::from_note_signature(&sig).unwrap();
        assert_eq!(cosig.timestamp, WITNESS_TS);
        assert_eq!(cosig.name, WITNESS_NAME);
        let note = SignedNote::parse(&golden_cosigned_note()).unwrap();
        let witness = witness_key().verifying_key();
        assert_eq!(
            verify_cosignature(&note, WITNESS_NAME, &witness),
            Ok(WITNESS_TS)
        );
    }

    #[test]
    fn cosigned_note_opens_and_keeps_unknown_lines() {
        let verifier = NoteVerifier::from_vkey(LOG_VKEY).unwrap();
        let (_, mut note) = open_checkpoint(GOLDEN_NOTE, &verifier).unwrap();
        note.add_signature(cosign(&note.text, WITNESS_NAME, &witness_key(), WITNESS_TS).unwrap());
        // An unrelated witness and an unknown signature type are kept and ignored.
        let other = SigningKey::from_bytes(&[0x0b; 32]);
        note.add_signature(cosign(&note.text, "other.example/w", &other, 5).unwrap());
        note.signatures.push(NoteSignature {
            name: "mystery.example".into(),
            key_hash: [1, 2, 3, 4],
            signature: vec![0xee; 200],
        });
        let s = note.to_note_string();
        assert!(s.starts_with(&golden_cosigned_note()));
        let (cp, reparsed) = open_checkpoint(&s, &verifier).unwrap();
        assert_eq!(cp, golden_checkpoint());
        assert_eq!(reparsed, note);
        assert_eq!(reparsed.to_note_string(), s);
        let witness = witness_key().verifying_key();
        assert_eq!(
            verify_cosignature(&reparsed, WITNESS_NAME, &witness),
            Ok(WITNESS_TS)
        );
        assert_eq!(
            verify_cosignature(&reparsed, "other.example/w", &other.verifying_key()),
            Ok(5)
        );
        // Re-cosigning replaces the witness's earlier line.
        let mut again = reparsed.clone();
        again.add_signature(
            cosign(&again.text, WITNESS_NAME, &witness_key(), WITNESS_TS + 60).unwrap(),
        );
        assert_eq!(again.signatures.len(), reparsed.signatures.len());
        assert_eq!(
            verify_cosignature(&again, WITNESS_NAME, &witness),
            Ok(WITNESS_TS + 60)
        );
    }

    #[test]
    fn checkpoint_with_extensions_round_trips() {
        let mut cp = golden_checkpoint();
        cp.extensions = vec!["— ext one".into(), "台账 two".into()];
        let text = cp.to_text();
        assert_eq!(Checkpoint::parse(&text).unwrap(), cp);
        let note = sign_checkpoint(&cp, &log_signer()).unwrap();
        let (opened, _) = open_checkpoint(&note, &log_signer().verifier()).unwrap();
        assert_eq!(opened, cp);
        // Cosignatures cover extension lines too.
        let sig = cosign(&text, WITNESS_NAME, &witness_key(), 1).unwrap();
        let mut signed = SignedNote::parse(&note).unwrap();
        signed.add_signature(sig);
        signed.text = signed.text.replace("two", "tw0");
        assert!(matches!(
            verify_cosignature(&signed, WITNESS_NAME, &witness_key().verifying_key()),
            Err(NoteError::InvalidSignature { .. })
        ));
    }

    // ----------------------------------------------------------------------
    // Rejections.
    // ----------------------------------------------------------------------

    const ROOT_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn checkpoint_parse_rejections() {
        let cases: Vec<(String, NoteError)> = vec![
            (
                String::new(),
                NoteError::MissingFinalNewline {
                    field: "checkpoint text",
                },
            ),
            (
                format!("o\n8\n{ROOT_B64}"),
                NoteError::MissingFinalNewline {
                    field: "checkpoint text",
                },
            ),
            (format!("\n8\n{ROOT_B64}\n"), NoteError::EmptyOrigin),
            ("o\n".into(), NoteError::CheckpointTooShort),
            ("o\n8\n".into(), NoteError::CheckpointTooShort),
            (
                format!("o\n8\n{ROOT_B64}\n\n"),
                NoteError::EmptyExtensionLine { index: 1 },
            ),
            (
                format!("o\n8\n{ROOT_B64}\na\n\nb\n"),
                NoteError::EmptyExtensionLine { index: 2 },
            ),
            (
                format!("o\r\n8\n{ROOT_B64}\n"),
                NoteError::ControlCharacter {
                    field: "checkpoint text",
                    offset: 1,
                    code: 13,
                },
            ),
            (
                format!("o\n8\n{ROOT_B64}\nx\ty\n"),
                NoteError::ControlCharacter {
                    field: "checkpoint text",
                    offset: 50,
                    code: 9,
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Checkpoint::parse(&text), Err(want), "{text:?}");
        }
        for size in [
            "",
            "08",
            "00",
            "+8",
            "-8",
            " 8",
            "8 ",
            "0x8",
            "1e3",
            "8.0",
            "\u{ff18}",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            let text = format!("o\n{size}\n{ROOT_B64}\n");
            assert!(
                matches!(
                    Checkpoint::parse(&text),
                    Err(NoteError::InvalidTreeSize { .. })
                ),
                "size {size:?}"
            );
        }
        for (size, want) in [("0", 0), ("18446744073709551615", u64::MAX)] {
            let cp = Checkpoint::parse(&format!("o\n{size}\n{ROOT_B64}\n")).unwrap();
            assert_eq!(cp.size, want);
        }
        let b64_31 = BASE64.encode([0u8; 31]);
        let b64_33 = BASE64.encode([0u8; 33]);
        for root in [
            "",
            b64_31.as_str(),
            b64_33.as_str(),
            ROOT_B64.trim_end_matches('='),                 // unpadded
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=", // non-zero trailing bits
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8==",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= ",
            "-_ECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", // URL-safe alphabet
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        ] {
            let text = format!("o\n8\n{root}\n");
            assert!(
                matches!(
                    Checkpoint::parse(&text),
                    Err(NoteError::InvalidRootHash { .. })
                ),
                "root {root:?}"
            );
        }
        let big = format!("o\n8\n{ROOT_B64}\n{}\n", "x".repeat(MAX_NOTE_BYTES));
        assert!(matches!(
            Checkpoint::parse(&big),
            Err(NoteError::TooLarge { .. })
        ));
    }

    #[test]
    fn checkpoint_validate_and_sign_rejections() {
        let signer = log_signer();
        let mut cp = golden_checkpoint();
        cp.origin = "taizhang.example/dev\n9".into();
        assert_eq!(
            cp.validate(),
            Err(NoteError::EmbeddedNewline {
                field: "checkpoint origin"
            })
        );
        assert!(sign_checkpoint(&cp, &signer).is_err());
        let mut cp = golden_checkpoint();
        cp.extensions = vec!["a\nb".into()];
        assert!(sign_checkpoint(&cp, &signer).is_err());
        cp.extensions = vec![String::new()];
        assert_eq!(
            sign_checkpoint(&cp, &signer),
            Err(NoteError::EmptyExtensionLine { index: 1 })
        );
        cp.extensions = vec!["tab\there".into()];
        assert!(matches!(
            sign_checkpoint(&cp, &signer),
            Err(NoteError::ControlCharacter { .. })
        ));
        let mut cp = golden_checkpoint();
        cp.origin = String::new();
        assert_eq!(sign_checkpoint(&cp, &signer), Err(NoteError::EmptyOrigin));
        let mut cp = golden_checkpoint();
        cp.origin = "someone.else/log".into();
        assert!(matches!(
            sign_checkpoint(&cp, &signer),
            Err(NoteError::OriginMismatch { .. })
        ));
        let mut cp = golden_checkpoint();
        cp.extensions = vec!["x".repeat(MAX_NOTE_BYTES - 80)];
        assert!(matches!(
            sign_checkpoint(&cp, &signer),
            Err(NoteError::TooLarge { .. })
        ));
    }

    #[test]
    fn signed_note_parse_rejections() {
        let sig_b64 = PETER_SIG
            .trim_start_matches("\u{2014} PeterNeumann ")
            .trim_end();
        let bad_lines = [
            format!("- PeterNeumann {sig_b64}"),
            format!("-- PeterNeumann {sig_b64}"),
            format!("\u{2013} PeterNeumann {sig_b64}"), // en dash
            format!("\u{2014}PeterNeumann {sig_b64}"),
            format!("\u{2014}  PeterNeumann {sig_b64}"),
            format!("\u{2014} PeterNeumann  {sig_b64}"),
            format!("\u{2014} PeterNeumann {sig_b64} "),
            format!("\u{2014} Peter+Neumann {sig_b64}"),
            format!("\u{2014} Peter\u{a0}Neumann {sig_b64}"),
            "\u{2014} PeterNeumann".to_owned(),
            "\u{2014} PeterNeumann ".to_owned(),
            "\u{2014}  x08go/ZJ".to_owned(),
            format!("\u{2014} PeterNeumann {}", sig_b64.trim_end_matches('=')),
            format!("\u{2014} PeterNeumann {}", sig_b64.replace("nAM=", "nAN=")), // trailing bits
            "\u{2014} PeterNeumann AAAAAA==".to_owned(), // 4 bytes: key hash only
        ];
        for line in &bad_lines {
            let msg = format!("{GO_TEXT}\n{line}\n");
            assert!(
                matches!(
                    SignedNote::parse(&msg),
                    Err(NoteError::MalformedSignatureLine { line: 1, .. })
                ),
                "{line:?}"
            );
        }
        assert_eq!(SignedNote::parse(""), Err(NoteError::MissingSeparator));
        assert_eq!(
            SignedNote::parse(&format!("{GO_TEXT}{PETER_SIG}")),
            Err(NoteError::MissingSeparator)
        );
        assert_eq!(
            SignedNote::parse(&format!("{GO_TEXT}\n")),
            Err(NoteError::NoSignatures)
        );
        assert_eq!(
            SignedNote::parse(&format!("{GO_TEXT}\n{PETER_SIG}\n")),
            Err(NoteError::NoSignatures)
        );
        assert_eq!(
            SignedNote::parse(&format!("{GO_TEXT}\n{}", PETER_SIG.trim_end())),
            Err(NoteError::MissingFinalNewline {
                field: "note signature block"
            })
        );
        assert!(matches!(
            SignedNote::parse(&format!("{GO_TEXT}\n{PETER_SIG}{PETER_SIG}x\n")),
            Err(NoteError::MalformedSignatureLine { line: 3, .. })
        ));
        assert!(matches!(
            SignedNote::parse(&format!("a\u{7}b\n\n{PETER_SIG}")),
            Err(NoteError::ControlCharacter {
                field: "note",
                offset: 1,
                code: 7
            })
        ));
        assert!(matches!(
            SignedNote::parse(&format!("{GO_TEXT}\r\n\n{PETER_SIG}")),
            Err(NoteError::ControlCharacter { .. })
        ));
        let big = format!("{}\n\n{PETER_SIG}", "x".repeat(MAX_NOTE_BYTES));
        assert!(matches!(
            SignedNote::parse(&big),
            Err(NoteError::TooLarge { field: "note", .. })
        ));
    }

    #[test]
    fn wrong_key_or_name_fails() {
        let cp_note = GOLDEN_NOTE;
        // Same name, different key: its key hash differs, so no line matches.
        let other = NoteSigner::new(LOG_NAME, SigningKey::from_bytes(&[0x08; 32])).unwrap();
        assert!(matches!(
            open_checkpoint(cp_note, &other.verifier()),
            Err(NoteError::NoMatchingSignature { .. })
        ));
        // Same key, different name.
        let renamed = NoteVerifier::new(
            "taizhang.example/prod",
            *log_signer().verifier().verifying_key(),
        )
        .unwrap();
        assert!(matches!(
            open_checkpoint(cp_note, &renamed),
            Err(NoteError::NoMatchingSignature { .. })
        ));
        // A validly signed note whose origin is not the key name.
        let impostor =
            NoteSigner::new("impostor.example", SigningKey::from_bytes(&LOG_SEED)).unwrap();
        let note = SignedNote {
            text: GOLDEN_TEXT.into(),
            signatures: vec![impostor.sign(GOLDEN_TEXT).unwrap()],
        }
        .to_note_string();
        assert_eq!(
            open_checkpoint(&note, &impostor.verifier()),
            Err(NoteError::OriginMismatch {
                origin: LOG_NAME.into(),
                key_name: "impostor.example".into()
            })
        );
        // A valid signature over a note text that is not a checkpoint.
        let note = SignedNote {
            text: "hello\n".into(),
            signatures: vec![log_signer().sign("hello\n").unwrap()],
        }
        .to_note_string();
        assert_eq!(
            open_checkpoint(&note, &log_signer().verifier()),
            Err(NoteError::CheckpointTooShort)
        );
    }

    #[test]
    fn colliding_name_and_key_hash_with_different_key_fails() {
        // An attacker labels its own signature with the log's name and key hash.
        let attacker = SigningKey::from_bytes(&[0x66; 32]);
        let forged = NoteSignature {
            name: LOG_NAME.into(),
            key_hash: log_signer().key_hash(),
            signature: attacker.sign(GOLDEN_TEXT.as_bytes()).to_bytes().to_vec(),
        };
        let note = SignedNote {
            text: GOLDEN_TEXT.into(),
            signatures: vec![forged.clone()],
        };
        let verifier = NoteVerifier::from_vkey(LOG_VKEY).unwrap();
        assert!(matches!(
            open_checkpoint(&note.to_note_string(), &verifier),
            Err(NoteError::InvalidSignature { .. })
        ));
        // Even next to the genuine signature, the forged line rejects the note.
        let mut both = SignedNote::parse(GOLDEN_NOTE).unwrap();
        both.signatures.push(forged);
        assert!(matches!(
            open_checkpoint(&both.to_note_string(), &verifier),
            Err(NoteError::InvalidSignature { .. })
        ));
        // Same for cosignatures.
        let mut cosigned = SignedNote::parse(GOLDEN_NOTE).unwrap();
        let witness = witness_key().verifying_key();
        let mut fake = cosign(GOLDEN_TEXT, WITNESS_NAME, &attacker, WITNESS_TS).unwrap();
        fake.key_hash = cosigner_key_hash(WITNESS_NAME, &witness);
        cosigned.signatures.push(fake);
        assert!(matches!(
            verify_cosignature(&cosigned, WITNESS_NAME, &witness),
            Err(NoteError::InvalidSignature { .. })
        ));
    }

    #[test]
    fn wrong_length_signature_for_known_key_fails() {
        let mut note = SignedNote::parse(GOLDEN_NOTE).unwrap();
        note.signatures[0].signature.push(0);
        assert!(matches!(
            note.verify(&log_signer().verifier()),
            Err(NoteError::InvalidSignature { .. })
        ));
    }

    #[test]
    fn every_bit_flip_in_signed_note_fails() {
        let verifier = NoteVerifier::from_vkey(LOG_VKEY).unwrap();
        let witness = witness_key().verifying_key();
        let original = golden_cosigned_note();
        let bytes = original.as_bytes();
        let mut checked = 0;
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut m = bytes.to_vec();
                m[i] ^= 1 << bit;
                let Ok(s) = String::from_utf8(m) else {
                    continue;
                };
                checked += 1;
                let log_ok = open_checkpoint(&s, &verifier).is_ok();
                let wit_ok = SignedNote::parse(&s)
                    .map(|n| verify_cosignature(&n, WITNESS_NAME, &witness).is_ok())
                    .unwrap_or(false);
                // A flip inside the log's line may leave the witness line valid and
                // vice versa, but never both, and never the line that was hit.
                let in_witness_line = i >= GOLDEN_NOTE.len();
                if in_witness_line {
                    assert!(!wit_ok, "witness accepted flip at byte {i} bit {bit}");
                } else {
                    assert!(!log_ok, "log accepted flip at byte {i} bit {bit}");
                }
                assert!(!(log_ok && wit_ok), "both accepted flip at {i}/{bit}");
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn cosignature_rejections() {
        let key = witness_key();
        let vk = key.verifying_key();
        // Timestamps above 2^63 - 1.
        assert_eq!(
            cosign(GOLDEN_TEXT, WITNESS_NAME, &key, 1 << 63),
            Err(NoteError::InvalidTimestamp { timestamp: 1 << 63 })
        );
        assert!(cosign(GOLDEN_TEXT, WITNESS_NAME, &key, MAX_COSIGNATURE_TIMESTAMP).is_ok());
        let mut sig = cosign(GOLDEN_TEXT, WITNESS_NAME, &key, 1).unwrap();
        sig.signature[0] = 0x80;
        assert_eq!(
            CosignatureV1::from_note_signature(&sig),
            Err(NoteError::InvalidTimestamp {
                timestamp: (1 << 63) + 1
            })
        );
        // Not a checkpoint, bad names.
        assert!(cosign("hello\n", WITNESS_NAME, &key, 1).is_err());
        assert!(cosign(GOLDEN_TEXT, "bad name", &key, 1).is_err());
        assert!(cosign(GOLDEN_TEXT, "", &key, 1).is_err());
        // Tampered timestamp: signature no longer verifies.
        let mut note = SignedNote::parse(&golden_cosigned_note()).unwrap();
        note.signatures[1].signature[7] ^= 1;
        assert!(matches!(
            verify_cosignature(&note, WITNESS_NAME, &vk),
            Err(NoteError::InvalidSignature { .. })
        ));
        // Wrong length for a matching line.
        let mut note = SignedNote::parse(&golden_cosigned_note()).unwrap();
        note.signatures[1].signature.pop();
        assert_eq!(
            verify_cosignature(&note, WITNESS_NAME, &vk),
            Err(NoteError::MalformedCosignature { len: 71 })
        );
        // Wrong key, wrong name, no cosignature at all.
        let note = SignedNote::parse(&golden_cosigned_note()).unwrap();
        let other = SigningKey::from_bytes(&[0x0a; 32]).verifying_key();
        assert!(matches!(
            verify_cosignature(&note, WITNESS_NAME, &other),
            Err(NoteError::NoMatchingSignature { .. })
        ));
        assert!(matches!(
            verify_cosignature(&note, "witness.taizhang.example/w2", &vk),
            Err(NoteError::NoMatchingSignature { .. })
        ));
        let plain = SignedNote::parse(GOLDEN_NOTE).unwrap();
        assert!(matches!(
            verify_cosignature(&plain, WITNESS_NAME, &vk),
            Err(NoteError::NoMatchingSignature { .. })
        ));
        // A cosignature is not a log signature, even with the same key and name.
        let same_key_signer = NoteSigner::new(WITNESS_NAME, key.clone()).unwrap();
        assert!(matches!(
            note.verify(&same_key_signer.verifier()),
            Err(NoteError::NoMatchingSignature { .. })
        ));
        // The log's Ed25519 note signature is not a cosignature either.
        let log_vk = *log_signer().verifier().verifying_key();
        assert!(matches!(
            verify_cosignature(&note, LOG_NAME, &log_vk),
            Err(NoteError::NoMatchingSignature { .. })
        ));
        // Note text that is not a checkpoint.
        let mut not_cp = note.clone();
        not_cp.text = "hello\n".into();
        assert_eq!(
            verify_cosignature(&not_cp, WITNESS_NAME, &vk),
            Err(NoteError::CheckpointTooShort)
        );
    }

    #[test]
    fn key_name_and_key_rejections() {
        let key = SigningKey::from_bytes(&[1; 32]);
        for name in [
            "",
            "a b",
            "a+b",
            "a\tb",
            "a\nb",
            "a\u{1}b",
            "a\u{a0}b",
            "a\u{85}b",
            "a\u{2028}b",
            "a\u{3000}b",
            " ",
        ] {
            assert!(
                matches!(
                    NoteSigner::new(name, key.clone()),
                    Err(NoteError::InvalidKeyName { .. })
                ),
                "{name:?}"
            );
            assert!(
                NoteVerifier::new(name, key.verifying_key()).is_err(),
                "{name:?}"
            );
            assert!(
                cosigner_vkey(name, &key.verifying_key()).is_err(),
                "{name:?}"
            );
        }
        assert!(NoteSigner::new("台账.example/ok-name_1", key.clone()).is_ok());
        // Identity point (small order).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        assert_eq!(
            NoteVerifier::new("w", weak).unwrap_err(),
            NoteError::InvalidPublicKey {
                reason: "small-order (weak) point"
            }
        );
        // Non-canonical encoding of y = 1 (p + 1) and an invalid point in vkeys.
        let mut noncanonical = [0xffu8; 32];
        noncanonical[0] = 0xee;
        noncanonical[31] = 0x7f;
        let mut invalid = [0u8; 32];
        invalid[0] = 2;
        for raw in [identity, noncanonical, invalid] {
            let mut alg_key = vec![ALG_ED25519];
            alg_key.extend_from_slice(&raw);
            let vkey = format!(
                "w+{}+{}",
                hex::encode(compute_key_hash("w", ALG_ED25519, &raw)),
                BASE64.encode(&alg_key)
            );
            assert!(
                matches!(
                    NoteVerifier::from_vkey(&vkey),
                    Err(NoteError::InvalidPublicKey { .. })
                ),
                "{vkey}"
            );
        }
        // Uppercase hex key hash is not canonical.
        let upper = PETER_VKEY.replace("c74f20a3", "C74F20A3");
        assert!(matches!(
            NoteVerifier::from_vkey(&upper),
            Err(NoteError::MalformedKey { .. })
        ));
        // Hash mismatch is reported as such.
        let wrong = PETER_VKEY.replace("c74f20a3", "c74f20a4");
        assert_eq!(
            NoteVerifier::from_vkey(&wrong).unwrap_err(),
            NoteError::KeyHashMismatch {
                field: "verifier key",
                found: "c74f20a4".into(),
                computed: "c74f20a3".into()
            }
        );
        // Signer text checks.
        let signer = log_signer();
        assert!(signer.sign("").is_err());
        assert!(signer.sign("a\u{0}\n").is_err());
        assert!(signer
            .sign(&format!("{}\n", "x".repeat(MAX_NOTE_BYTES)))
            .is_err());
    }

    #[test]
    fn error_messages_name_field_and_rule() {
        let msg = |r: Result<Checkpoint, NoteError>| r.unwrap_err().to_string();
        assert_eq!(
            msg(Checkpoint::parse(&format!("o\n08\n{ROOT_B64}\n"))),
            "checkpoint tree size: must not have leading zeros"
        );
        assert_eq!(
            msg(Checkpoint::parse("o\n8\nAAAA\n")),
            "checkpoint root hash: must decode to exactly 32 bytes"
        );
        assert_eq!(
            msg(Checkpoint::parse("o\n8")),
            "checkpoint text: must be non-empty and end with a newline (U+000A)"
        );
        let e = SignedNote::parse(&format!("{GO_TEXT}\n- x y\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "note signature line 1: must start with an em dash (U+2014) and a space"
        );
        let e = NoteSigner::from_key_string(LOG_VKEY).unwrap_err();
        assert_eq!(e.to_string(), "signer key: must start with PRIVATE+KEY+");
    }

    // ----------------------------------------------------------------------
    // Property tests.
    // ----------------------------------------------------------------------

    fn key_name() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z0-9._/-]{1,24}", "[a-zé台账—./:-]{1,12}",]
    }

    fn checkpoint_strategy() -> impl Strategy<Value = Checkpoint> {
        (
            key_name(),
            any::<u64>(),
            any::<[u8; 32]>(),
            prop::collection::vec("[^\\x00-\\x1f]{1,16}", 0..4),
        )
            .prop_map(|(origin, size, root, extensions)| Checkpoint {
                origin,
                size,
                root,
                extensions,
            })
    }

    /// Strings built from whole lines and fragments of the grammar, so that
    /// many of them are valid (or nearly valid) checkpoints, notes and keys.
    fn grammar_string() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "\u{2014} ",
            "\u{2014}",
            " ",
            "+",
            "=",
            "==",
            "/",
            "0",
            "8",
            "A",
            "AAAA",
            "a",
            "\u{a0}",
            "\r",
            "\t",
            "\n",
            "o",
            LOG_NAME,
            ROOT_B64,
            "PRIVATE+KEY+",
            "c74f20a3",
        ]);
        let fragment = prop::collection::vec(piece, 0..4).prop_map(|v| v.concat());
        let whole = prop::sample::select(vec![
            LOG_NAME,
            "8",
            "0",
            "08",
            "18446744073709551615",
            "18446744073709551616",
            ROOT_B64,
            "",
            "ext",
            GOLDEN_NOTE.lines().last().unwrap_or_default(),
            GOLDEN_COSIG_LINE.trim_end(),
            PETER_SIG.trim_end(),
            "\u{2014} w AAAAAA==",
            "\u{2014} w AAAAAAA=",
            PETER_VKEY,
            LOG_SKEY,
            WITNESS_VKEY,
        ])
        .prop_map(str::to_owned);
        let line = prop_oneof![3 => whole, 1 => fragment];
        (prop::collection::vec(line, 0..8), any::<bool>()).prop_map(|(lines, newline)| {
            let mut s = lines.join("\n");
            if newline {
                s.push('\n');
            }
            s
        })
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Replace(usize, u8),
        Insert(usize, u8),
        Delete(usize),
        InsertStr(usize, &'static str),
    }

    fn edit_strategy() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Replace(i, b)),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
            any::<usize>().prop_map(Edit::Delete),
            (
                any::<usize>(),
                prop::sample::select(vec!["\n", "\n\n", "\u{2014} ", " ", "=", "A", "0", "+"])
            )
                .prop_map(|(i, s)| Edit::InsertStr(i, s)),
        ]
    }

    fn apply_edits(original: &str, edits: &[Edit]) -> String {
        let mut b = original.as_bytes().to_vec();
        for e in edits {
            let len = b.len();
            match *e {
                Edit::Replace(i, x) if len > 0 => b[i % len] = x,
                Edit::Insert(i, x) => b.insert(i % (len + 1), x),
                Edit::Delete(i) if len > 0 => {
                    b.remove(i % len);
                }
                Edit::InsertStr(i, s) => {
                    let at = i % (len + 1);
                    b.splice(at..at, s.bytes());
                }
                _ => {}
            }
        }
        String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    fn exercise_all_parsers(s: &str) {
        let verifier = NoteVerifier::from_vkey(LOG_VKEY).unwrap();
        let _ = Checkpoint::parse(s);
        let _ = NoteVerifier::from_vkey(s);
        let _ = NoteSigner::from_key_string(s);
        let _ = parse_cosigner_vkey(s);
        let _ = open_checkpoint(s, &verifier);
        if let Ok(note) = SignedNote::parse(s) {
            let _ = note.verify(&verifier);
            let _ = verify_cosignature(&note, WITNESS_NAME, &witness_key().verifying_key());
            for sig in &note.signatures {
                let _ = CosignatureV1::from_note_signature(sig);
            }
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_arbitrary_strings(s in any::<String>()) {
            exercise_all_parsers(&s);
        }

        #[test]
        fn parsers_never_panic_and_are_canonical_on_grammar_strings(s in grammar_string()) {
            exercise_all_parsers(&s);
            if let Ok(note) = SignedNote::parse(&s) {
                prop_assert_eq!(note.to_note_string(), s.clone());
            }
            if let Ok(cp) = Checkpoint::parse(&s) {
                prop_assert_eq!(cp.to_text(), s.clone());
            }
            if let Ok(v) = NoteVerifier::from_vkey(&s) {
                prop_assert_eq!(v.vkey(), s.clone());
            }
            if let Ok(k) = NoteSigner::from_key_string(&s) {
                prop_assert_eq!(k.key_string(), s.clone());
            }
        }

        #[test]
        fn mutated_notes_never_panic_or_verify_differently(
            edits in prop::collection::vec(edit_strategy(), 1..5)
        ) {
            let original = golden_cosigned_note();
            let s = apply_edits(&original, &edits);
            exercise_all_parsers(&s);
            let verifier = NoteVerifier::from_vkey(LOG_VKEY).unwrap();
            if let Ok((cp, note)) = open_checkpoint(&s, &verifier) {
                prop_assert_eq!(cp, golden_checkpoint());
                prop_assert_eq!(&note.text, GOLDEN_TEXT);
            }
            if let Ok(note) = SignedNote::parse(&s) {
                prop_assert_eq!(note.to_note_string(), s.clone());
                if let Ok(ts) =
                    verify_cosignature(&note, WITNESS_NAME, &witness_key().verifying_key())
                {
                    prop_assert_eq!(ts, WITNESS_TS);
                    prop_assert_eq!(&note.text, GOLDEN_TEXT);
                }
            }
        }

        #[test]
        fn checkpoint_text_round_trips(cp in checkpoint_strategy()) {
            prop_assert_eq!(cp.validate(), Ok(()));
            prop_assert_eq!(Checkpoint::parse(&cp.to_text()), Ok(cp));
        }

        #[test]
        fn sign_open_cosign_round_trip(
            cp in checkpoint_strategy(),
            seed in any::<[u8; 32]>(),
            witness_seed in any::<[u8; 32]>(),
            witness in key_name(),
            ts in 0..=MAX_COSIGNATURE_TIMESTAMP,
        ) {
            let signer = NoteSigner::new(&cp.origin, SigningKey::from_bytes(&seed)).unwrap();
            let reloaded = NoteSigner::from_key_string(&signer.key_string()).unwrap();
            prop_assert_eq!(reloaded.key_string(), signer.key_string());
            let verifier = NoteVerifier::from_vkey(&signer.verifier().vkey()).unwrap();
            let note = sign_checkpoint(&cp, &reloaded).unwrap();
            let (opened, mut signed) = open_checkpoint(&note, &verifier).unwrap();
            prop_assert_eq!(&opened, &cp);
            let wkey = SigningKey::from_bytes(&witness_seed);
            signed.add_signature(cosign(&signed.text, &witness, &wkey, ts).unwrap());
            let cosigned = signed.to_note_string();
            let (_, reparsed) = open_checkpoint(&cosigned, &verifier).unwrap();
            let (wname, wvk) =
                parse_cosigner_vkey(&cosigner_vkey(&witness, &wkey.verifying_key()).unwrap())
                    .unwrap();
            prop_assert_eq!(verify_cosignature(&reparsed, &wname, &wvk), Ok(ts));
        }
    }
}
