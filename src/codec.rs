//! The leaf encoding and the decoding of signed record bodies.
//!
//! The leaf is the ledger's own deterministic byte format (not protobuf, which is not canonical):
//! what the Merkle tree and the hash chain commit to. docs/protocol.md gives it byte by byte.
//!
//! ```text
//! leaf = version            u8   (0x01)
//!        index              u64 BE
//!        integrated_time_ms u64 BE
//!        prev_leaf_hash     [32]
//!        body               u32 BE length || bytes
//!        signature          u32 BE length || bytes   (64)
//!        cosignature count  u32 BE
//!        per cosignature:   u32 BE length || key_id (16) || u32 BE length || signature (64)
//! leaf_hash = BLAKE3(0x00 || leaf)
//! ```
//!
//! This module is also the one place (besides the gRPC layer) that decodes protobuf: the record
//! body bytes are the signed contract, so turning them into messages is part of the pure core.

use crate::crypto::KeyId;
use crate::merkle::{Blake3Hasher, Hash, TreeHasher};
use crate::pb;
use prost::Message;

/// Leaf format version written by this code.
pub const LEAF_VERSION: u8 = 1;
/// Largest record body the ledger accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most cosignatures a record may carry.
pub const MAX_COSIGNATURES: usize = 8;
/// Largest encoded leaf: body, signature and cosignatures with their framing.
pub const MAX_LEAF_BYTES: usize =
    1 + 8 + 8 + 32 + 4 + MAX_BODY_BYTES + 4 + 64 + 4 + MAX_COSIGNATURES * (4 + 16 + 4 + 64);

/// Errors decoding a leaf or a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("leaf: truncated at byte {at} reading {what}")]
    Truncated { at: usize, what: &'static str },
    #[error("leaf: unsupported version {0}")]
    Version(u8),
    #[error("leaf: {what} length {len} exceeds the limit {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("leaf: {0} trailing bytes after the last field")]
    Trailing(usize),
    #[error("{field}: expected {expected} bytes, got {got}")]
    FieldLength {
        field: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("body: not a valid RecordBody protobuf: {0}")]
    Protobuf(String),
}

/// One cosignature on a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosig {
    pub key_id: KeyId,
    pub signature: [u8; 64],
}

/// A leaf of the log: a signed record as the ledger integrated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub index: u64,
    pub integrated_time_ms: u64,
    pub prev_leaf_hash: Hash,
    pub body: Vec<u8>,
    pub signature: [u8; 64],
    pub cosignatures: Vec<Cosig>,
}

impl Leaf {
    /// The deterministic leaf bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            1 + 8 + 8 + 32 + 4 + self.body.len() + 4 + 64 + 4 + self.cosignatures.len() * 88,
        );
        out.push(LEAF_VERSION);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.integrated_time_ms.to_be_bytes());
        out.extend_from_slice(&self.prev_leaf_hash);
        put_bytes(&mut out, &self.body);
        put_bytes(&mut out, &self.signature);
        put_u32(&mut out, self.cosignatures.len());
        for c in &self.cosignatures {
            put_bytes(&mut out, &c.key_id.0);
            put_bytes(&mut out, &c.signature);
        }
        out
    }

    /// Decodes leaf bytes strictly: every length is bounded, nothing may trail.
    pub fn decode(bytes: &[u8]) -> Result<Leaf, CodecError> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.take(1, "version")?[0];
        if version != LEAF_VERSION {
            return Err(CodecError::Version(version));
        }
        let index = r.u64("index")?;
        let integrated_time_ms = r.u64("integrated_time_ms")?;
        let prev_leaf_hash = r.array::<32>("prev_leaf_hash")?;
        let body = r.bytes("body", MAX_BODY_BYTES)?.to_vec();
        let signature = fixed::<64>("signature", r.bytes("signature", 64)?)?;
        let count = r.u32("cosignature count")? as usize;
        if count > MAX_COSIGNATURES {
            return Err(CodecError::TooLong {
                what: "cosignatures",
                len: count,
                max: MAX_COSIGNATURES,
            });
        }
        let mut cosignatures = Vec::with_capacity(count);
        for _ in 0..count {
            let key_id = KeyId(fixed::<16>("cosignatures.key_id", r.bytes("key_id", 16)?)?);
            let signature = fixed::<64>("cosignatures.signature", r.bytes("cosignature", 64)?)?;
            cosignatures.push(Cosig { key_id, signature });
        }
        if r.at != bytes.len() {
            return Err(CodecError::Trailing(bytes.len() - r.at));
        }
        Ok(Leaf {
            index,
            integrated_time_ms,
            prev_leaf_hash,
            body,
            signature,
            cosignatures,
        })
    }

    /// `BLAKE3(0x00 || leaf bytes)`.
    pub fn hash(&self) -> Hash {
        leaf_hash(&self.encode())
    }
}

/// `BLAKE3(0x00 || leaf_bytes)`.
pub fn leaf_hash(leaf_bytes: &[u8]) -> Hash {
    Blake3Hasher::leaf(leaf_bytes)
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // INVARIANT: every length written is bounded by MAX_LEAF_BYTES, far below u32::MAX.
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

fn fixed<const N: usize>(field: &'static str, b: &[u8]) -> Result<[u8; N], CodecError> {
    b.try_into().map_err(|_| CodecError::FieldLength {
        field,
        expected: N,
        got: b.len(),
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(CodecError::Truncated { at: self.at, what })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CodecError> {
        fixed::<N>(what, self.take(N, what)?)
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array::<8>(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array::<4>(what)?))
    }
    fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], CodecError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(CodecError::TooLong { what, len, max });
        }
        self.take(len, what)
    }
}

/// Decodes a record body (size-checked) into its protobuf message.
pub fn decode_body(body: &[u8]) -> Result<pb::RecordBody, CodecError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(CodecError::TooLong {
            what: "body",
            len: body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    pb::RecordBody::decode(body).map_err(|e| CodecError::Protobuf(e.to_string()))
}

/// Serializes a record body (for clients that build records).
pub fn encode_body(body: &pb::RecordBody) -> Vec<u8> {
    body.encode_to_vec()
}

// ---------------------------------------------------------------------------------------------
// Frames: how segments and exports store leaves, `u32 BE len || leaf || leaf_hash`.
// ---------------------------------------------------------------------------------------------

/// Bytes of framing around a leaf: length prefix and trailing hash.
pub const FRAME_OVERHEAD: usize = 4 + 32;
/// The same, as u64 for file offsets.
pub const FRAME_OVERHEAD_U64: u64 = FRAME_OVERHEAD as u64;

pub(crate) fn frame_into(buf: &mut Vec<u8>, leaf: &[u8], hash: &Hash) {
    buf.extend_from_slice(&(leaf.len() as u32).to_be_bytes());
    buf.extend_from_slice(leaf);
    buf.extend_from_slice(hash);
}

/// Frames leaves the way segments and exports store them.
pub fn frame(leaf: &[u8], hash: &Hash) -> Vec<u8> {
    let mut buf = Vec::with_capacity(leaf.len() + FRAME_OVERHEAD);
    frame_into(&mut buf, leaf, hash);
    buf
}

pub(crate) enum FrameError {
    Incomplete,
    Damaged(String),
}

impl FrameError {
    pub(crate) fn describe(&self) -> String {
        match self {
            FrameError::Incomplete => "frame cut short".into(),
            FrameError::Damaged(s) => s.clone(),
        }
    }
}

/// Checks the frame at `off`: length, hash, leaf decoding, index and chain.
pub(crate) fn check_frame<'a>(
    data: &'a [u8],
    off: usize,
    index: u64,
    prev: &Hash,
) -> Result<(&'a [u8], Hash), FrameError> {
    let rest = &data[off..];
    if rest.len() < 4 {
        return Err(FrameError::Incomplete);
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len > MAX_LEAF_BYTES {
        return Err(FrameError::Damaged(format!(
            "frame length {len} exceeds the leaf limit"
        )));
    }
    if rest.len() < 4 + len + 32 {
        return Err(FrameError::Incomplete);
    }
    let leaf = &rest[4..4 + len];
    let mut stored = [0u8; 32];
    stored.copy_from_slice(&rest[4 + len..4 + len + 32]);
    let hash = leaf_hash(leaf);
    if hash != stored {
        return Err(FrameError::Damaged("leaf does not match its hash".into()));
    }
    let decoded = Leaf::decode(leaf).map_err(|e| FrameError::Damaged(e.to_string()))?;
    if decoded.index != index {
        return Err(FrameError::Damaged(format!(
            "leaf index {} where {index} was expected (entry missing, repeated or moved)",
            decoded.index
        )));
    }
    if &decoded.prev_leaf_hash != prev {
        return Err(FrameError::Damaged(
            "prev_leaf_hash does not match the previous entry (chain broken)".into(),
        ));
    }
    Ok((leaf, hash))
}

/// Checks a whole framed stream (an export or a segment file's bytes) from `from`, calling
/// `visit` for each entry. Unlike `open`, nothing is forgiven: any incomplete or damaged frame
/// is an error naming its offset and index.
pub fn scan_frames(
    data: &[u8],
    first_index: u64,
    prev_hash: Hash,
    mut visit: impl FnMut(u64, &[u8], Hash) -> Result<(), String>,
) -> Result<(u64, Hash), String> {
    let mut pos = ScanPos {
        entries: first_index,
        last_hash: prev_hash,
    };
    let mut off = 0usize;
    while off < data.len() {
        match check_frame(data, off, pos.entries, &pos.last_hash) {
            Ok((leaf, hash)) => {
                visit(pos.entries, leaf, hash)?;
                off += leaf.len() + FRAME_OVERHEAD;
                pos.entries += 1;
                pos.last_hash = hash;
            }
            Err(e) => {
                return Err(format!(
                    "offset {off} (entry {}): {}",
                    pos.entries,
                    e.describe()
                ))
            }
        }
    }
    Ok((pos.entries, pos.last_hash))
}

struct ScanPos {
    entries: u64,
    last_hash: Hash,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample_leaf() -> Leaf {
        Leaf {
            index: 7,
            integrated_time_ms: 1_767_225_600_000,
            prev_leaf_hash: [0xab; 32],
            body: b"body-bytes".to_vec(),
            signature: [0x11; 64],
            cosignatures: vec![Cosig {
                key_id: KeyId([0x22; 16]),
                signature: [0x33; 64],
            }],
        }
    }

    #[test]
    fn leaf_encoding_golden() {
        let leaf = sample_leaf();
        let bytes = leaf.encode();
        let mut want = String::new();
        want.push_str("01");
        want.push_str("0000000000000007");
        want.push_str("0000019b76daa800");
        want.push_str(&"ab".repeat(32));
        want.push_str("0000000a");
        want.push_str(&hex::encode(b"body-bytes"));
        want.push_str("00000040");
        want.push_str(&"11".repeat(64));
        want.push_str("00000001");
        want.push_str("00000010");
        want.push_str(&"22".repeat(16));
        want.push_str("00000040");
        want.push_str(&"33".repeat(64));
        assert_eq!(hex::encode(&bytes), want);
        let mut h = blake3::Hasher::new();
        h.update(&[0]);
        h.update(&bytes);
        assert_eq!(leaf.hash(), *h.finalize().as_bytes());
        assert_eq!(hex::encode(leaf.hash()), GOLDEN_LEAF_HASH);
        assert_eq!(Leaf::decode(&bytes).unwrap(), leaf);
    }

    // Cross-checked with Python `blake3`.
    const GOLDEN_LEAF_HASH: &str =
        "2a30885cf6722d4e896aab074960b2dc94811d7292e5a74d64efb16d6ee40189";

    #[test]
    fn decode_refuses_trailing_truncated_and_oversize() {
        let bytes = sample_leaf().encode();
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Leaf::decode(&long), Err(CodecError::Trailing(1)));
        for cut in 0..bytes.len() {
            assert!(Leaf::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(Leaf::decode(&v2), Err(CodecError::Version(2)));
        // A body length claiming 4 GiB is refused before any allocation.
        let mut huge = bytes[..49].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Leaf::decode(&huge),
            Err(CodecError::TooLong { what: "body", .. })
        ));
    }

    proptest! {
        #[test]
        fn leaf_round_trips(index: u64, t: u64, prev: [u8; 32],
                            body in proptest::collection::vec(any::<u8>(), 0..512),
                            ncos in 0usize..4) {
            let leaf = Leaf {
                index, integrated_time_ms: t, prev_leaf_hash: prev, body,
                signature: [5; 64],
                cosignatures: (0..ncos).map(|i| Cosig { key_id: KeyId([i as u8; 16]), signature: [9; 64] }).collect(),
            };
            prop_assert_eq!(Leaf::decode(&leaf.encode()).unwrap(), leaf);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Leaf::decode(&bytes);
            let _ = decode_body(&bytes);
        }
    }
}
