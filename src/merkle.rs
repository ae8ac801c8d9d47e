//! Merkle tree of the transparency log: tree hashing, inclusion and consistency proofs.
//!
//! This is exactly the tree of RFC 9162 §2.1: the Merkle Tree Hash (MTH) of `n > 1` leaves splits
//! at the largest power of two `k < n`, leaves hash as `H(0x00 || data)`, interior nodes as
//! `H(0x01 || left || right)`, and the empty tree's root is `H("")`. Proof generation follows the
//! recursive `PATH` and `SUBPROOF` definitions of §2.1.3.1/§2.1.4.1; verification is the iterative
//! algorithm of §2.1.3.2/§2.1.4.2, with the input checks of the transparency-dev/merkle Go
//! implementation (and two stricter conventions: a consistency proof from size 0 is refused, and
//! every hash must be 32 bytes, which is checked rather than left to a failed comparison).
//!
//! The code is generic over [`TreeHasher`]: the ledger uses [`Blake3Hasher`]; [`Sha256Hasher`]
//! makes it RFC 6962 and lets the tests run the transparency-dev vectors against it.
//! Everything here is pure (no I/O), and verification never panics and never allocates: proofs,
//! indices and sizes are untrusted input.

use std::marker::PhantomData;

use sha2::{Digest, Sha256};

/// A tree hash (leaf, interior node or root).
pub type Hash = [u8; 32];

/// The hash function of the tree, with the RFC 9162 domain separation built in.
pub trait TreeHasher {
    /// Root of the empty tree: `H("")`.
    fn empty() -> Hash;
    /// Leaf hash: `H(0x00 || data)`.
    fn leaf(data: &[u8]) -> Hash;
    /// Interior node hash: `H(0x01 || left || right)`.
    fn node(left: &Hash, right: &Hash) -> Hash;
}

/// BLAKE3 tree hasher: the hash of the ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Blake3Hasher;

impl TreeHasher for Blake3Hasher {
    fn empty() -> Hash {
        *blake3::hash(b"").as_bytes()
    }
    fn leaf(data: &[u8]) -> Hash {
        *blake3::Hasher::new()
            .update(&[0x00])
            .update(data)
            .finalize()
            .as_bytes()
    }
    fn node(left: &Hash, right: &Hash) -> Hash {
        *blake3::Hasher::new()
            .update(&[0x01])
            .update(left)
            .update(right)
            .finalize()
            .as_bytes()
    }
}

/// SHA-256 tree hasher: RFC 6962 / RFC 9162 with SHA-256, used to check against their vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sha256Hasher;

impl TreeHasher for Sha256Hasher {
    fn empty() -> Hash {
        Sha256::digest(b"").into()
    }
    fn leaf(data: &[u8]) -> Hash {
        Sha256::new()
            .chain_update([0x00])
            .chain_update(data)
            .finalize()
            .into()
    }
    fn node(left: &Hash, right: &Hash) -> Hash {
        Sha256::new()
            .chain_update([0x01])
            .chain_update(left)
            .chain_update(right)
            .finalize()
            .into()
    }
}

/// Why a proof could not be generated or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// Inclusion: the leaf index is not inside the tree.
    #[error("leaf index {index} is out of range for tree size {size} (need index < size)")]
    IndexOutOfRange {
        /// The leaf index given.
        index: u64,
        /// The tree size given.
        size: u64,
    },
    /// Consistency: the old size is larger than the new size.
    #[error("consistency from size {from} to size {to} is out of range (need from <= to)")]
    SizeOutOfRange {
        /// The old (first) tree size.
        from: u64,
        /// The new (second) tree size.
        to: u64,
    },
    /// Consistency from the empty tree: refused as meaningless (every tree extends it).
    #[error("consistency from size 0 is refused: the empty tree is a prefix of every tree")]
    EmptyFromSize,
    /// The proof does not have the number of hashes that the index and sizes require.
    #[error("proof has {got} hashes, but the index and sizes require exactly {expected}")]
    WrongProofLength {
        /// The length that the index and sizes require.
        expected: usize,
        /// The length of the proof given.
        got: usize,
    },
    /// A leaf hash or root is not 32 bytes long.
    #[error("{what} is {len} bytes long, but a tree hash must be 32 bytes")]
    BadHashLength {
        /// Which input: `"leaf hash"`, `"root"`, `"root1"` or `"root2"`.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A proof element is not 32 bytes long.
    #[error("proof element {position} is {len} bytes long, but a tree hash must be 32 bytes")]
    BadProofElementLength {
        /// Position of the element in the proof (0-based).
        position: usize,
        /// Its length.
        len: usize,
    },
    /// The root computed from the proof is not the expected root (`root2` for consistency).
    #[error("the root computed from the proof does not match the expected root")]
    RootMismatch,
    /// Consistency: the old root computed from the proof is not `root1`.
    #[error("the old root (root1) computed from the consistency proof does not match root1")]
    OldRootMismatch,
    /// Generation: the node source has no hash for a subtree the proof needs.
    #[error("the node source cannot provide the hash of leaves [{lo}, {hi})")]
    MissingNode {
        /// First leaf of the subtree.
        lo: u64,
        /// One past its last leaf.
        hi: u64,
    },
}

/// Source of hashes of complete, aligned subtrees: `node(level, index)` = MTH of leaves
/// `[index << level, (index + 1) << level)`; level 0 = leaf hashes.
///
/// Returns `None` when the node is not (yet) complete or not stored.
pub trait NodeSource {
    /// Hash of the complete subtree of `2^level` leaves starting at leaf `index << level`.
    fn complete_node(&self, level: u32, index: u64) -> Option<Hash>;
}

/// The RFC's `k`: the largest power of two strictly less than `n`, for `n >= 2` (1 below that).
fn split_point(n: u64) -> u64 {
    1 << n.saturating_sub(1).checked_ilog2().unwrap_or(0)
}

/// Reference MTH of a list of leaf hashes, straight from the recursive definition of RFC 9162.
#[must_use]
pub fn root_from_leaves<H: TreeHasher>(leaf_hashes: &[Hash]) -> Hash {
    match leaf_hashes {
        [] => H::empty(),
        [leaf] => *leaf,
        _ => {
            let n = leaf_hashes.len();
            let k = 1 << (n - 1).ilog2(); // n >= 2 in this arm
            let (left, right) = leaf_hashes.split_at(k);
            H::node(&root_from_leaves::<H>(left), &root_from_leaves::<H>(right))
        }
    }
}

/// `MTH(D[lo:hi])` computed from complete nodes.
///
/// `hi - lo` leaves decompose into complete subtrees whose sizes are the set bits of `hi - lo`,
/// largest first; this needs `lo` to be a multiple of the largest, which holds for every range
/// that occurs in RFC 9162 proofs and roots. Returns `None` for an empty or misaligned range, or
/// when the source lacks one of the nodes.
pub fn subtree_hash<H: TreeHasher, S: NodeSource + ?Sized>(
    src: &S,
    lo: u64,
    hi: u64,
) -> Option<Hash> {
    let n = hi.checked_sub(lo).filter(|&n| n > 0)?;
    let top = n.ilog2(); // n > 0
    if lo & ((1u64 << top) - 1) != 0 {
        return None;
    }
    // Fold the complete subtrees from the right edge (smallest) to the left (largest):
    // MTH = node(c_top, node(.., node(c_1, c_0))).
    let mut acc: Option<Hash> = None;
    let mut end = hi;
    for level in (0..=top).filter(|&l| (n >> l) & 1 == 1) {
        let start = end - (1 << level);
        let piece = src.complete_node(level, start >> level)?;
        acc = Some(match acc {
            None => piece,
            Some(right) => H::node(&piece, &right),
        });
        end = start;
    }
    acc
}

/// Root of the tree of size `size` computed from the node source (`H::empty()` for size 0).
pub fn root_at<H: TreeHasher, S: NodeSource + ?Sized>(src: &S, size: u64) -> Option<Hash> {
    if size == 0 {
        Some(H::empty())
    } else {
        subtree_hash::<H, S>(src, 0, size)
    }
}

/// Number of hashes in the inclusion proof of leaf `index` in a tree of `size`; needs
/// `index < size`. The path splits where the paths to `index` and `size - 1` diverge: below, one
/// sibling per level; above, one left sibling per set bit of what remains of `index`.
fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner + border) as usize
}

/// Number of hashes in the consistency proof from `from` to `to`; needs `0 < from < to`.
/// It is the inclusion proof of leaf `from - 1` in the tree of `to`, less the levels below the
/// complete subtree that ends at `from`, plus that subtree's hash unless it is the whole old tree.
fn consistency_proof_len(from: u64, to: u64) -> usize {
    let shift = from.trailing_zeros();
    let inner = 64 - ((from - 1) ^ (to - 1)).leading_zeros();
    let border = (from - 1).checked_shr(inner).unwrap_or(0).count_ones();
    // `inner > shift` whenever from < to (the low `shift` bits of from - 1 are all ones), so
    // this never saturates.
    let len = inner.saturating_sub(shift) + border + u32::from(!from.is_power_of_two());
    len as usize
}

fn subtree<H: TreeHasher, S: NodeSource + ?Sized>(
    src: &S,
    lo: u64,
    hi: u64,
) -> Result<Hash, ProofError> {
    subtree_hash::<H, S>(src, lo, hi).ok_or(ProofError::MissingNode { lo, hi })
}

/// Inclusion proof of leaf `index` in the tree of size `size` (RFC 9162 §2.1.3.1 `PATH`),
/// ordered from the leaf's sibling up to the child of the root.
///
/// # Errors
/// [`ProofError::IndexOutOfRange`] unless `index < size`; [`ProofError::MissingNode`] when the
/// source does not hold the tree of that size.
pub fn inclusion_proof<H: TreeHasher, S: NodeSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    // Walk down from the root, collecting the sibling of the subtree holding `index`.
    let mut proof = Vec::with_capacity(inclusion_proof_len(index, size));
    let (mut lo, mut hi) = (0, size);
    while hi - lo > 1 {
        let mid = lo + split_point(hi - lo);
        if index < mid {
            proof.push(subtree::<H, S>(src, mid, hi)?);
            hi = mid;
        } else {
            proof.push(subtree::<H, S>(src, lo, mid)?);
            lo = mid;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Consistency proof from the tree of size `from` to the tree of size `to`
/// (RFC 9162 §2.1.4.1 `PROOF`), ordered bottom-up. Empty when `from == to`.
///
/// # Errors
/// [`ProofError::SizeOutOfRange`] unless `from <= to`; [`ProofError::EmptyFromSize`] for
/// `from == 0`; [`ProofError::MissingNode`] when the source does not hold the tree of size `to`.
pub fn consistency_proof<H: TreeHasher, S: NodeSource + ?Sized>(
    src: &S,
    from: u64,
    to: u64,
) -> Result<Vec<Hash>, ProofError> {
    if from > to {
        return Err(ProofError::SizeOutOfRange { from, to });
    }
    if from == 0 {
        return Err(ProofError::EmptyFromSize);
    }
    if from == to {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[lo:hi], b), walked down from the root.
    let mut proof = Vec::with_capacity(consistency_proof_len(from, to));
    let (mut lo, mut hi, mut whole_old_tree) = (0, to, true);
    while hi != from {
        let mid = lo + split_point(hi - lo);
        if from <= mid {
            proof.push(subtree::<H, S>(src, mid, hi)?);
            hi = mid;
        } else {
            proof.push(subtree::<H, S>(src, lo, mid)?);
            lo = mid;
            whole_old_tree = false;
        }
    }
    if !whole_old_tree {
        proof.push(subtree::<H, S>(src, lo, hi)?);
    }
    proof.reverse();
    Ok(proof)
}

fn to_hash<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a Hash, ProofError> {
    bytes.try_into().map_err(|_| ProofError::BadHashLength {
        what,
        len: bytes.len(),
    })
}

fn proof_element<P: AsRef<[u8]>>(position: usize, element: &P) -> Result<&Hash, ProofError> {
    let bytes = element.as_ref();
    bytes
        .try_into()
        .map_err(|_| ProofError::BadProofElementLength {
            position,
            len: bytes.len(),
        })
}

fn check_proof_len<P>(proof: &[P], expected: usize) -> Result<(), ProofError> {
    if proof.len() == expected {
        Ok(())
    } else {
        Err(ProofError::WrongProofLength {
            expected,
            got: proof.len(),
        })
    }
}

/// Shifts `fn_` and `sn` right together until the low bit of `fn_` is set or `fn_` is 0.
fn skip_right_border(fn_: &mut u64, sn: &mut u64) {
    while *fn_ != 0 && *fn_ & 1 == 0 {
        *fn_ >>= 1;
        *sn >>= 1;
    }
}

/// Verifies that `leaf_hash` is leaf `index` of the tree of size `size` whose root is `root`
/// (RFC 9162 §2.1.3.2). Every hash must be 32 bytes long.
///
/// # Errors
/// Any [`ProofError`] but the generation-only `MissingNode` and the consistency-only ones: a bad
/// index, a wrong hash length, a proof of the wrong length, or a root that does not match.
pub fn verify_inclusion<H: TreeHasher, P: AsRef<[u8]>>(
    index: u64,
    size: u64,
    leaf_hash: &[u8],
    proof: &[P],
    root: &[u8],
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let leaf_hash = to_hash("leaf hash", leaf_hash)?;
    let root = to_hash("root", root)?;
    let expected = inclusion_proof_len(index, size);
    check_proof_len(proof, expected)?;

    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf_hash;
    for (position, p) in proof.iter().enumerate() {
        let p = proof_element(position, p)?;
        if sn == 0 {
            // Unreachable after the length check; kept as the RFC's step 4a.
            return Err(ProofError::WrongProofLength {
                expected,
                got: proof.len(),
            });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = H::node(p, &r);
            skip_right_border(&mut fn_, &mut sn);
        } else {
            r = H::node(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongProofLength {
            expected,
            got: proof.len(),
        });
    }
    if r == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Verifies that the tree of size `from` with root `root1` is a prefix of the tree of size `to`
/// with root `root2` (RFC 9162 §2.1.4.2). `from == to` needs an empty proof and equal roots;
/// `from == 0` is refused. Every hash must be 32 bytes long.
///
/// # Errors
/// Any [`ProofError`] but the generation-only `MissingNode` and `IndexOutOfRange`: bad sizes, a
/// wrong hash length, a proof of the wrong length, or a computed root that does not match.
pub fn verify_consistency<H: TreeHasher, P: AsRef<[u8]>>(
    from: u64,
    to: u64,
    root1: &[u8],
    root2: &[u8],
    proof: &[P],
) -> Result<(), ProofError> {
    if from > to {
        return Err(ProofError::SizeOutOfRange { from, to });
    }
    if from == 0 {
        return Err(ProofError::EmptyFromSize);
    }
    if from == to {
        // Equal sizes: the proof is empty and the roots must be the same bytes. As in the
        // reference implementation (and its vector `sizes-are-equal-one-and-proof-is-empty`),
        // no length is imposed here: equal byte strings are consistent with themselves, and a
        // root's length is checked where it is parsed (checkpoints carry exactly 32 bytes).
        check_proof_len(proof, 0)?;
        return if root1 == root2 {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    let root1 = to_hash("root1", root1)?;
    let root2 = to_hash("root2", root2)?;
    let expected = consistency_proof_len(from, to);
    check_proof_len(proof, expected)?;

    // Step 2: when `from` is a power of two the old root is the first hash of the path.
    let (seed, first_position) = if from.is_power_of_two() {
        (root1, 0)
    } else {
        match proof.first() {
            Some(p) => (proof_element(0, p)?, 1),
            // Unreachable: `expected >= 1` when from < to.
            None => return Err(ProofError::WrongProofLength { expected, got: 0 }),
        }
    };
    let (mut fn_, mut sn) = (from - 1, to - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*seed, *seed);
    for (position, c) in proof.iter().enumerate().skip(first_position) {
        let c = proof_element(position, c)?;
        if sn == 0 {
            // Unreachable after the length check; kept as the RFC's step 6a.
            return Err(ProofError::WrongProofLength {
                expected,
                got: proof.len(),
            });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = H::node(c, &fr);
            sr = H::node(c, &sr);
            skip_right_border(&mut fn_, &mut sn);
        } else {
            sr = H::node(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongProofLength {
            expected,
            got: proof.len(),
        });
    }
    if fr != *root1 {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *root2 {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// In-memory tree: all levels of complete nodes (`levels[0]` = leaf hashes). Append-only.
///
/// Level `l` holds exactly `size >> l` nodes, so every complete aligned subtree is stored and
/// any root, subtree hash or proof is a handful of lookups.
pub struct MemoryTree<H: TreeHasher> {
    levels: Vec<Vec<Hash>>,
    hasher: PhantomData<fn() -> H>,
}

impl<H: TreeHasher> MemoryTree<H> {
    /// An empty tree.
    #[must_use]
    pub fn new() -> Self {
        Self {
            levels: Vec::new(),
            hasher: PhantomData,
        }
    }

    /// Appends a leaf hash, computing every node it completes.
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut hash = leaf_hash;
        for nodes in &mut self.levels {
            nodes.push(hash);
            match nodes.as_slice() {
                // An even count means the push completed a pair: their parent goes up a level.
                [.., left, right] if nodes.len() % 2 == 0 => hash = H::node(left, right),
                _ => return,
            }
        }
        // Every level completed a pair (or the tree was empty): start a new top level.
        self.levels.push(vec![hash]);
    }

    /// Number of leaves.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// Root of the whole current tree (`H::empty()` when the tree is empty).
    #[must_use]
    pub fn root(&self) -> Hash {
        // The last node of every level with an odd count is one of the complete subtrees along
        // the right edge; fold them from the smallest (lowest level) up.
        let mut acc: Option<Hash> = None;
        for nodes in self.levels.iter().filter(|nodes| nodes.len() % 2 == 1) {
            if let Some(piece) = nodes.last() {
                acc = Some(match acc {
                    None => *piece,
                    Some(right) => H::node(piece, &right),
                });
            }
        }
        acc.unwrap_or_else(H::empty)
    }

    /// Leaf hash at `index`, if the tree has it.
    #[must_use]
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.complete_node(0, index)
    }

    /// Drops the leaves at `size` and beyond, with every node that covers them (used when a torn
    /// tail is cut). No-op when the tree has no more than `size` leaves.
    pub fn truncate(&mut self, size: u64) {
        for (level, nodes) in (0u32..).zip(self.levels.iter_mut()) {
            let keep = usize::try_from(size.checked_shr(level).unwrap_or(0)).unwrap_or(usize::MAX);
            nodes.truncate(keep);
        }
        while self.levels.last().is_some_and(Vec::is_empty) {
            self.levels.pop();
        }
    }
}

impl<H: TreeHasher> Default for MemoryTree<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: TreeHasher> Clone for MemoryTree<H> {
    fn clone(&self) -> Self {
        Self {
            levels: self.levels.clone(),
            hasher: PhantomData,
        }
    }
}

impl<H: TreeHasher> std::fmt::Debug for MemoryTree<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTree")
            .field("size", &self.size())
            .field("levels", &self.levels.len())
            .finish()
    }
}

impl<H: TreeHasher> NodeSource for MemoryTree<H> {
    fn complete_node(&self, level: u32, index: u64) -> Option<Hash> {
        let nodes = self.levels.get(usize::try_from(level).ok()?)?;
        nodes.get(usize::try_from(index).ok()?).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
    use serde::Deserialize;
    use std::path::{Path, PathBuf};

    // ---------------------------------------------------------------------------------------
    // RFC 6962 vectors (transparency-dev/merkle testdata), run against the SHA-256 instance.

    const VECTORS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rfc6962");

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct InclusionCase {
        leaf_idx: u64,
        tree_size: u64,
        root: String,
        leaf_hash: String,
        proof: Option<Vec<String>>,
        desc: String,
        want_err: bool,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ConsistencyCase {
        size1: u64,
        size2: u64,
        root1: String,
        root2: String,
        proof: Option<Vec<String>>,
        desc: String,
        #[serde(rename = "wantErr")]
        want_err: bool,
    }

    fn json_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "json") {
                    out.push(path);
                }
            }
        }
        out.sort();
        out
    }

    fn b64(s: &str) -> Vec<u8> {
        BASE64.decode(s).unwrap()
    }

    fn b64_proof(proof: &Option<Vec<String>>) -> Vec<Vec<u8>> {
        proof.iter().flatten().map(|s| b64(s)).collect()
    }

    #[test]
    fn rfc6962_vectors() {
        let files = json_files(Path::new(VECTORS_DIR));
        let (mut inclusion, mut consistency, mut want_err) = (0, 0, 0);
        let mut failures = Vec::new();
        for path in &files {
            let text = std::fs::read_to_string(path).unwrap();
            let rel = path
                .strip_prefix(VECTORS_DIR)
                .unwrap()
                .display()
                .to_string();
            let (desc, want, got) = if rel.starts_with("inclusion/") {
                let c: InclusionCase = serde_json::from_str(&text).unwrap();
                inclusion += 1;
                let got = verify_inclusion::<Sha256Hasher, _>(
                    c.leaf_idx,
                    c.tree_size,
                    &b64(&c.leaf_hash),
                    &b64_proof(&c.proof),
                    &b64(&c.root),
                );
                (c.desc, c.want_err, got)
            } else if rel.starts_with("consistency/") {
                let c: ConsistencyCase = serde_json::from_str(&text).unwrap();
                consistency += 1;
                let got = verify_consistency::<Sha256Hasher, _>(
                    c.size1,
                    c.size2,
                    &b64(&c.root1),
                    &b64(&c.root2),
                    &b64_proof(&c.proof),
                );
                (c.desc, c.want_err, got)
            } else {
                panic!("unexpected vector file {rel}");
            };
            want_err += usize::from(want);
            if got.is_ok() == want {
                failures.push(format!("{rel} ({desc}): wantErr={want}, got {got:?}"));
            }
        }
        eprintln!(
            "rfc6962 vectors: {inclusion} inclusion + {consistency} consistency, \
             {want_err} expected to fail"
        );
        assert!(
            failures.is_empty(),
            "failing vectors:\n{}",
            failures.join("\n")
        );
        assert!(
            inclusion > 0 && consistency > 0,
            "no vectors found in {VECTORS_DIR}"
        );
        assert_eq!(inclusion + consistency, files.len());
    }

    // ---------------------------------------------------------------------------------------
    // Independent reference: RFC 9162 §2.1.1 MTH, §2.1.3.1 PATH and §2.1.4.1 PROOF/SUBPROOF,
    // transcribed recursively on slices of leaf hashes.

    /// Largest power of two strictly less than `n` (n > 1), by counting up.
    fn ref_k(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    fn ref_mth<H: TreeHasher>(d: &[Hash]) -> Hash {
        match d.len() {
            0 => H::empty(),
            1 => d[0],
            n => {
                let k = ref_k(n);
                H::node(&ref_mth::<H>(&d[..k]), &ref_mth::<H>(&d[k..]))
            }
        }
    }

    fn ref_path<H: TreeHasher>(m: usize, d: &[Hash]) -> Vec<Hash> {
        let n = d.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = ref_k(n);
        if m < k {
            let mut p = ref_path::<H>(m, &d[..k]);
            p.push(ref_mth::<H>(&d[k..]));
            p
        } else {
            let mut p = ref_path::<H>(m - k, &d[k..]);
            p.push(ref_mth::<H>(&d[..k]));
            p
        }
    }

    fn ref_proof<H: TreeHasher>(m: usize, d: &[Hash]) -> Vec<Hash> {
        ref_subproof::<H>(m, d, true)
    }

    fn ref_subproof<H: TreeHasher>(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if b { Vec::new() } else { vec![ref_mth::<H>(d)] };
        }
        let k = ref_k(n);
        if m <= k {
            let mut p = ref_subproof::<H>(m, &d[..k], b);
            p.push(ref_mth::<H>(&d[k..]));
            p
        } else {
            let mut p = ref_subproof::<H>(m - k, &d[k..], false);
            p.push(ref_mth::<H>(&d[..k]));
            p
        }
    }

    // ---------------------------------------------------------------------------------------
    // Helpers.

    type B3 = Blake3Hasher;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Leaf hashes of the golden trees: leaf i has the data `leaf-{i}`.
    fn golden_leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| B3::leaf(format!("leaf-{i}").as_bytes()))
            .collect()
    }

    fn tree_of<H: TreeHasher>(leaves: &[Hash]) -> MemoryTree<H> {
        let mut t = MemoryTree::new();
        for &l in leaves {
            t.push(l);
        }
        t
    }

    fn u(n: usize) -> u64 {
        n as u64
    }

    // ---------------------------------------------------------------------------------------
    // Golden BLAKE3 vectors: pinned bytes, so that any change to the tree or hashing is caught.
    // Also kept as tests/data/merkle-blake3-golden.json (rewrite it with MERKLE_WRITE_GOLDEN=1).
    // Every value was cross-checked with an independent Python RFC 9162 implementation over
    // Python's `blake3` (docs/protocol.md §12).

    /// MTH of the first `size` golden leaves.
    const GOLDEN_ROOTS: &[(u64, &str)] = &[
        (
            0,
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        ),
        (
            1,
            "13edb6c9983e00ef6588db1c23b3c1d3203826bea8253f49dbd77636fa3561ac",
        ),
        (
            2,
            "4469e9c1c99a67417a567e7e3cb252ac0381a92b86a3b22fcf2987d9eb401669",
        ),
        (
            3,
            "7ad5599016ac74620483c327a0a8223031f6749290915ee1a19ae78663ee2b2d",
        ),
        (
            7,
            "457ee5fb7830a0bfab4028a8840f883735279ae74c5fe6f4500dc05843f79de4",
        ),
        (
            8,
            "c6c42a3a113779070638d4a77db44a714e64cdca00503c58b19070db5a680767",
        ),
        (
            9,
            "24148f45cdd6fd2e0f5ac2929f286749c550839c54ae058cf870085472bf4c4d",
        ),
        (
            1000,
            "dbd008d12b2e3534f63428fbd0a833d929936c94a6aba30a8af29ad22ecc1ec5",
        ),
    ];
    /// (index, size, inclusion proof).
    const GOLDEN_INCLUSION: &[(u64, u64, &[&str])] = &[
        (0, 1, &[]),
        (
            0,
            7,
            &[
                "8b7888c5188d559463a0ac498187c72ba6d48f7b7bbd68d4f10b4829902dda95",
                "10d7d7d576fd62087439ae88b8bfdbd688856c2e6969217949774b8547cf5932",
                "cf3e77d0963916622e8f3fe74a58ff565d52c0dc92932fbdd27a2764e29a252a",
            ],
        ),
        (
            3,
            7,
            &[
                "5eb77589bed15dd79a64dca092d84400dbc09215d356749fd0b2e4de0a9d6463",
                "4469e9c1c99a67417a567e7e3cb252ac0381a92b86a3b22fcf2987d9eb401669",
                "cf3e77d0963916622e8f3fe74a58ff565d52c0dc92932fbdd27a2764e29a252a",
            ],
        ),
        (
            6,
            7,
            &[
                "4a226a2ce16fe48dab9257e7bba6e824aa66d79ca5cd84da4a89a7db2ecbfdc6",
                "d5c37bb73429be70ad709b1d4009a68fd7b191a6569aaabeeaee3764819b437e",
            ],
        ),
        (
            8,
            9,
            &["c6c42a3a113779070638d4a77db44a714e64cdca00503c58b19070db5a680767"],
        ),
        (
            0,
            1000,
            &[
                "8b7888c5188d559463a0ac498187c72ba6d48f7b7bbd68d4f10b4829902dda95",
                "10d7d7d576fd62087439ae88b8bfdbd688856c2e6969217949774b8547cf5932",
                "a74e3eaf1516579a48b7bf51d807428ed9825b08c702486092093db7e52237c5",
                "5e1790742185d8c29122facb246ce331f66f26ba1312cc624fb2c45befadd1e8",
                "99960dec0dd0ba75a9c220df300136c882cab38a9d5abf699e4217f3a4b816e2",
                "20f720ae67ea04bf446b04014434b142ee59a7897b1014fafb1c16df3a2c28a2",
                "f847a26bd3f96f88a836a0b8e63c49ac54b77c8ed172aa3af779534a3738c420",
                "bfa2ee896b73bc98b4b2f8083297b43b8088910721cb870b6de66d68b36f0409",
                "f16511b18b04a4fbea3fd1f444f5c755f312096885c8ecdd13d52ecf568fb6fe",
                "48b2ae3f66902a8c10a6e7cc9316613a866c2d5f2c913d7141061bcbe6910278",
            ],
        ),
        (
            500,
            1000,
            &[
                "acc1776bb63a3c77945b7c9285b376810479d8bcf438e2f715b7f4999988c0fa",
                "639ce10d370f52b5a1a8f91c689be0cb49f5fa857aa3fc5eb0b1d1cc95085d8c",
                "3444939c726d715718d3676223a592088f5404dc6b1189b07d4d450f5b3a5e3e",
                "a015f23c8129453012239193f3332a32985112a292ef916666ae2f18dcffea46",
                "228737f8f53db90b48619465f535f9631d13bf36f93e828bd0fdb6e4e264a490",
                "4b43f5dfc44b90d6a152bfa6494decc6c6ad2c76ae00c885a1b9e047d00c33da",
                "d0b26bcafb4ebed1f8876fc7b15ac0248e19e2584f9a93af84384682d615343c",
                "d3ad5784b9257fee7a470f1b64250ecfef4d8a09a9d47e33a27c064bfddc3ac9",
                "acc5b39168e59da2667b68f6acc2b46c7a7adeffbb8e46d1bb9c4bc9a0acdaac",
                "48b2ae3f66902a8c10a6e7cc9316613a866c2d5f2c913d7141061bcbe6910278",
            ],
        ),
        (
            999,
            1000,
            &[
                "af265051e094b8e0a17d54315fe9ed76668b1009354c0831a9609ba6451f5449",
                "d2a279aa47e21b58aa95c238b2d46a9ee4eba2d5f15a27a5318af42b6cd02141",
                "28cff150319a830e9a4b3a08d6faa2f149700c700fa08c7240cffc66ec7d1181",
                "385fc6a441b4926c3155303f3ea2cbb48d3226746328e92dc70d6734498e071b",
                "781d451837305ac79988be2f624ae1d4736c5ed6c083d573d0c96b2493c1c70c",
                "cdec626aca2294e1bb09345a588c00428e0be84e7e71ab2df0a7a8d780d1bda6",
                "94212ec9522f8c14345e79eec169931171cbb26c4b0c51abd0332193f9a6c896",
                "816474bc5a83256cba3e8f9d88aad0d45fd419974ee11aa23728b0d4797a322d",
            ],
        ),
        (
            0,
            2,
            &["8b7888c5188d559463a0ac498187c72ba6d48f7b7bbd68d4f10b4829902dda95"],
        ),
        (
            1,
            2,
            &["13edb6c9983e00ef6588db1c23b3c1d3203826bea8253f49dbd77636fa3561ac"],
        ),
        (
            2,
            3,
            &["4469e9c1c99a67417a567e7e3cb252ac0381a92b86a3b22fcf2987d9eb401669"],
        ),
        (
            5,
            8,
            &[
                "eaa1473c9c1bc0654ec132c7d3a14dab0d335f26f0eb628571440d19efcd71de",
                "7b4374cb5bf0067992cd47557995c2a82f2ae776f2ae89c9e5f1fe2fbde85184",
                "d5c37bb73429be70ad709b1d4009a68fd7b191a6569aaabeeaee3764819b437e",
            ],
        ),
        (
            7,
            8,
            &[
                "b171ff8c11ea31812573bc253b368766f3eaf5e5c66599c4bdceb093ed3abdf6",
                "4a226a2ce16fe48dab9257e7bba6e824aa66d79ca5cd84da4a89a7db2ecbfdc6",
                "d5c37bb73429be70ad709b1d4009a68fd7b191a6569aaabeeaee3764819b437e",
            ],
        ),
    ];
    /// (from, to, consistency proof).
    const GOLDEN_CONSISTENCY: &[(u64, u64, &[&str])] = &[
        (
            1,
            8,
            &[
                "8b7888c5188d559463a0ac498187c72ba6d48f7b7bbd68d4f10b4829902dda95",
                "10d7d7d576fd62087439ae88b8bfdbd688856c2e6969217949774b8547cf5932",
                "a74e3eaf1516579a48b7bf51d807428ed9825b08c702486092093db7e52237c5",
            ],
        ),
        (
            3,
            7,
            &[
                "5eb77589bed15dd79a64dca092d84400dbc09215d356749fd0b2e4de0a9d6463",
                "172294e4b65a0f57041bd97751f758602f48201924ca97832c9a15bc893be72a",
                "4469e9c1c99a67417a567e7e3cb252ac0381a92b86a3b22fcf2987d9eb401669",
                "cf3e77d0963916622e8f3fe74a58ff565d52c0dc92932fbdd27a2764e29a252a",
            ],
        ),
        (
            7,
            9,
            &[
                "b171ff8c11ea31812573bc253b368766f3eaf5e5c66599c4bdceb093ed3abdf6",
                "1cdff6b9eec369efcdf52c21d05fe545ef3dadd97122fab4861aadca7eb11bc0",
                "4a226a2ce16fe48dab9257e7bba6e824aa66d79ca5cd84da4a89a7db2ecbfdc6",
                "d5c37bb73429be70ad709b1d4009a68fd7b191a6569aaabeeaee3764819b437e",
                "77d20a9c0a765ed67ab2f1e194a4b4f835e37b4e1dadc6ced95f1cb88f5159e0",
            ],
        ),
        (
            8,
            1000,
            &[
                "5e1790742185d8c29122facb246ce331f66f26ba1312cc624fb2c45befadd1e8",
                "99960dec0dd0ba75a9c220df300136c882cab38a9d5abf699e4217f3a4b816e2",
                "20f720ae67ea04bf446b04014434b142ee59a7897b1014fafb1c16df3a2c28a2",
                "f847a26bd3f96f88a836a0b8e63c49ac54b77c8ed172aa3af779534a3738c420",
                "bfa2ee896b73bc98b4b2f8083297b43b8088910721cb870b6de66d68b36f0409",
                "f16511b18b04a4fbea3fd1f444f5c755f312096885c8ecdd13d52ecf568fb6fe",
                "48b2ae3f66902a8c10a6e7cc9316613a866c2d5f2c913d7141061bcbe6910278",
            ],
        ),
        (
            999,
            1000,
            &[
                "af265051e094b8e0a17d54315fe9ed76668b1009354c0831a9609ba6451f5449",
                "dd5203e8a9c788fd6f3cc34c0d0ca341ae64254bf447a90e65e1117f8d5302bd",
                "d2a279aa47e21b58aa95c238b2d46a9ee4eba2d5f15a27a5318af42b6cd02141",
                "28cff150319a830e9a4b3a08d6faa2f149700c700fa08c7240cffc66ec7d1181",
                "385fc6a441b4926c3155303f3ea2cbb48d3226746328e92dc70d6734498e071b",
                "781d451837305ac79988be2f624ae1d4736c5ed6c083d573d0c96b2493c1c70c",
                "cdec626aca2294e1bb09345a588c00428e0be84e7e71ab2df0a7a8d780d1bda6",
                "94212ec9522f8c14345e79eec169931171cbb26c4b0c51abd0332193f9a6c896",
                "816474bc5a83256cba3e8f9d88aad0d45fd419974ee11aa23728b0d4797a322d",
            ],
        ),
        (
            1,
            2,
            &["8b7888c5188d559463a0ac498187c72ba6d48f7b7bbd68d4f10b4829902dda95"],
        ),
        (
            2,
            3,
            &["5eb77589bed15dd79a64dca092d84400dbc09215d356749fd0b2e4de0a9d6463"],
        ),
        (
            1,
            3,
            &[
                "8b7888c5188d559463a0ac498187c72ba6d48f7b7bbd68d4f10b4829902dda95",
                "5eb77589bed15dd79a64dca092d84400dbc09215d356749fd0b2e4de0a9d6463",
            ],
        ),
        (
            2,
            8,
            &[
                "10d7d7d576fd62087439ae88b8bfdbd688856c2e6969217949774b8547cf5932",
                "a74e3eaf1516579a48b7bf51d807428ed9825b08c702486092093db7e52237c5",
            ],
        ),
        (
            3,
            8,
            &[
                "5eb77589bed15dd79a64dca092d84400dbc09215d356749fd0b2e4de0a9d6463",
                "172294e4b65a0f57041bd97751f758602f48201924ca97832c9a15bc893be72a",
                "4469e9c1c99a67417a567e7e3cb252ac0381a92b86a3b22fcf2987d9eb401669",
                "a74e3eaf1516579a48b7bf51d807428ed9825b08c702486092093db7e52237c5",
            ],
        ),
        (
            8,
            9,
            &["77d20a9c0a765ed67ab2f1e194a4b4f835e37b4e1dadc6ced95f1cb88f5159e0"],
        ),
        (
            2,
            1000,
            &[
                "10d7d7d576fd62087439ae88b8bfdbd688856c2e6969217949774b8547cf5932",
                "a74e3eaf1516579a48b7bf51d807428ed9825b08c702486092093db7e52237c5",
                "5e1790742185d8c29122facb246ce331f66f26ba1312cc624fb2c45befadd1e8",
                "99960dec0dd0ba75a9c220df300136c882cab38a9d5abf699e4217f3a4b816e2",
                "20f720ae67ea04bf446b04014434b142ee59a7897b1014fafb1c16df3a2c28a2",
                "f847a26bd3f96f88a836a0b8e63c49ac54b77c8ed172aa3af779534a3738c420",
                "bfa2ee896b73bc98b4b2f8083297b43b8088910721cb870b6de66d68b36f0409",
                "f16511b18b04a4fbea3fd1f444f5c755f312096885c8ecdd13d52ecf568fb6fe",
                "48b2ae3f66902a8c10a6e7cc9316613a866c2d5f2c913d7141061bcbe6910278",
            ],
        ),
    ];

    const GOLDEN_JSON: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/merkle-blake3-golden.json"
    );

    fn hexes(proof: &[Hash]) -> Vec<String> {
        proof.iter().map(|h| hex(h)).collect()
    }

    #[test]
    fn golden_blake3() {
        let leaves = golden_leaves(1000);
        let t = tree_of::<B3>(&leaves);
        let root = |size: u64| root_at::<B3, _>(&t, size).unwrap();

        let mut roots = Vec::new();
        for &(size, want) in GOLDEN_ROOTS {
            let prefix = &leaves[..size as usize];
            assert_eq!(hex(&root(size)), want, "root of size {size}");
            assert_eq!(root_from_leaves::<B3>(prefix), root(size));
            assert_eq!(ref_mth::<B3>(prefix), root(size));
            roots.push(serde_json::json!({ "size": size, "root": want }));
        }
        assert_eq!(t.root(), root(1000));

        let mut inclusion = Vec::new();
        for &(index, size, want) in GOLDEN_INCLUSION {
            let proof = inclusion_proof::<B3, _>(&t, index, size).unwrap();
            assert_eq!(hexes(&proof), want, "inclusion proof {index} in {size}");
            let prefix = &leaves[..size as usize];
            assert_eq!(proof, ref_path::<B3>(index as usize, prefix));
            let leaf = leaves[index as usize];
            verify_inclusion::<B3, _>(index, size, &leaf, &proof, &root(size)).unwrap();
            inclusion.push(serde_json::json!({
                "index": index, "size": size, "leaf_data": format!("leaf-{index}"),
                "leaf_hash": hex(&leaf), "root": hex(&root(size)), "proof": want,
            }));
        }

        let mut consistency = Vec::new();
        for &(from, to, want) in GOLDEN_CONSISTENCY {
            let proof = consistency_proof::<B3, _>(&t, from, to).unwrap();
            assert_eq!(hexes(&proof), want, "consistency proof {from} -> {to}");
            let prefix = &leaves[..to as usize];
            assert_eq!(proof, ref_proof::<B3>(from as usize, prefix));
            verify_consistency::<B3, _>(from, to, &root(from), &root(to), &proof).unwrap();
            consistency.push(serde_json::json!({
                "from": from, "to": to, "root1": hex(&root(from)), "root2": hex(&root(to)),
                "proof": want,
            }));
        }

        let doc = serde_json::json!({
            "about": "Golden vectors of the taizhang ledger's Merkle tree (src/merkle.rs): RFC 9162 \
                §2.1 with BLAKE3. leaf_hash = BLAKE3(0x00 || data), node = BLAKE3(0x01 || left || \
                right), the empty tree's root = BLAKE3(\"\"). The tree of size n has the n leaves \
                whose data are the ASCII strings \"leaf-0\" .. \"leaf-{n-1}\". All hashes are \
                lowercase hex. Proofs are RFC 9162 inclusion paths and consistency proofs, ordered \
                bottom-up as in the RFC. Pinned by the unit test merkle::tests::golden_blake3.",
            "roots": roots,
            "inclusion": inclusion,
            "consistency": consistency,
        });
        if std::env::var_os("MERKLE_WRITE_GOLDEN").is_some() {
            let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
            std::fs::write(GOLDEN_JSON, text).unwrap();
        }
        let on_disk: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(GOLDEN_JSON).unwrap()).unwrap();
        assert_eq!(
            on_disk, doc,
            "{GOLDEN_JSON} is stale: rerun with MERKLE_WRITE_GOLDEN=1"
        );
    }

    // ---------------------------------------------------------------------------------------
    // Hashers and basic shapes.

    #[test]
    fn hashers_domain_separation() {
        // SHA-256("") and the RFC 6962 hash of the empty leaf.
        assert_eq!(
            hex(&Sha256Hasher::empty()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&Sha256Hasher::leaf(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(B3::empty(), *blake3::hash(b"").as_bytes());
        assert_eq!(B3::leaf(b"ab"), *blake3::hash(b"\x00ab").as_bytes());
        let (l, r) = ([1u8; 32], [2u8; 32]);
        assert_eq!(
            B3::node(&l, &r),
            *blake3::hash(&[&[1u8][..], &l, &r].concat()).as_bytes()
        );
        assert_eq!(
            Sha256Hasher::node(&l, &r),
            <[u8; 32]>::from(Sha256::digest([&[1u8][..], &l, &r].concat()))
        );
    }

    #[test]
    fn subtree_hash_ranges() {
        let leaves = golden_leaves(40);
        let t = tree_of::<B3>(&leaves);
        for lo in 0..=40u64 {
            for hi in lo..=41u64 {
                let got = subtree_hash::<B3, _>(&t, lo, hi);
                let n = hi - lo;
                let aligned = n > 0 && lo % (1 << n.ilog2()) == 0;
                if hi <= 40 && aligned {
                    let want = ref_mth::<B3>(&leaves[lo as usize..hi as usize]);
                    assert_eq!(got, Some(want), "[{lo}, {hi})");
                } else {
                    assert_eq!(got, None, "[{lo}, {hi})");
                }
            }
        }
        assert_eq!(subtree_hash::<B3, _>(&t, 5, 3), None);
        assert_eq!(subtree_hash::<B3, _>(&t, 0, u64::MAX), None);
        assert_eq!(subtree_hash::<B3, _>(&t, 1 << 63, u64::MAX), None);
        assert_eq!(root_at::<B3, _>(&t, 41), None);
    }

    /// Sizes 0, 1, 2^k - 1, 2^k, 2^k + 1 for k = 1..=10: roots, proofs against the reference.
    #[test]
    fn edge_sizes() {
        let mut sizes = vec![0usize, 1];
        for k in 1..=10 {
            sizes.extend([(1 << k) - 1, 1 << k, (1 << k) + 1]);
        }
        sizes.sort_unstable();
        sizes.dedup();
        let leaves = golden_leaves(*sizes.last().unwrap());
        let mut t = MemoryTree::<B3>::new();
        for &n in &sizes {
            while t.size() < u(n) {
                t.push(leaves[t.size() as usize]);
            }
            let d = &leaves[..n];
            let root = t.root();
            assert_eq!(root, root_from_leaves::<B3>(d), "size {n}");
            assert_eq!(root, ref_mth::<B3>(d), "size {n}");
            assert_eq!(root_at::<B3, _>(&t, u(n)), Some(root));

            let indices: Vec<usize> = if n <= 33 {
                (0..n).collect()
            } else {
                vec![0, 1, n / 2 - 1, n / 2, n - 2, n - 1]
            };
            for i in indices {
                let proof = inclusion_proof::<B3, _>(&t, u(i), u(n)).unwrap();
                assert_eq!(proof, ref_path::<B3>(i, d), "path {i} in {n}");
                verify_inclusion::<B3, _>(u(i), u(n), &d[i], &proof, &root).unwrap();
            }
            assert_eq!(
                inclusion_proof::<B3, _>(&t, u(n), u(n)),
                Err(ProofError::IndexOutOfRange {
                    index: u(n),
                    size: u(n)
                })
            );

            for &m in sizes.iter().filter(|&&m| m <= n) {
                if m == 0 {
                    assert_eq!(
                        consistency_proof::<B3, _>(&t, 0, u(n)),
                        Err(ProofError::EmptyFromSize)
                    );
                    let none: &[Hash] = &[];
                    assert_eq!(
                        verify_consistency::<B3, _>(0, u(n), &B3::empty(), &root, none),
                        Err(ProofError::EmptyFromSize)
                    );
                    continue;
                }
                let proof = consistency_proof::<B3, _>(&t, u(m), u(n)).unwrap();
                assert_eq!(proof, ref_proof::<B3>(m, d), "proof {m} -> {n}");
                let old = root_from_leaves::<B3>(&d[..m]);
                verify_consistency::<B3, _>(u(m), u(n), &old, &root, &proof).unwrap();
            }
        }
    }

    #[test]
    fn consistency_equal_sizes() {
        let leaves = golden_leaves(5);
        let t = tree_of::<B3>(&leaves);
        let none: &[Hash] = &[];
        for n in 1..=5 {
            let r = root_at::<B3, _>(&t, n).unwrap();
            assert_eq!(consistency_proof::<B3, _>(&t, n, n), Ok(vec![]));
            verify_consistency::<B3, _>(n, n, &r, &r, none).unwrap();
            assert_eq!(
                verify_consistency::<B3, _>(n, n, &r, &r, &[r]),
                Err(ProofError::WrongProofLength {
                    expected: 0,
                    got: 1
                })
            );
            assert_eq!(
                verify_consistency::<B3, _>(n, n, &r, &B3::empty(), none),
                Err(ProofError::RootMismatch)
            );
        }
        let e = B3::empty();
        assert_eq!(
            verify_consistency::<B3, _>(0, 0, &e, &e, none),
            Err(ProofError::EmptyFromSize)
        );
        assert_eq!(
            verify_consistency::<B3, _>(3, 2, &e, &e, none),
            Err(ProofError::SizeOutOfRange { from: 3, to: 2 })
        );
        assert_eq!(
            consistency_proof::<B3, _>(&t, 3, 2),
            Err(ProofError::SizeOutOfRange { from: 3, to: 2 })
        );
    }

    #[test]
    fn hash_lengths_are_checked_not_compared() {
        let leaves = golden_leaves(3);
        let t = tree_of::<B3>(&leaves);
        let root = t.root();
        let proof = inclusion_proof::<B3, _>(&t, 1, 3).unwrap();
        let short = &root[..31];
        let err = |what, len| Err(ProofError::BadHashLength { what, len });
        assert_eq!(
            verify_inclusion::<B3, _>(1, 3, short, &proof, &root),
            err("leaf hash", 31)
        );
        assert_eq!(
            verify_inclusion::<B3, _>(1, 3, &leaves[1], &proof, &[]),
            err("root", 0)
        );
        let mut long = proof.iter().map(|h| h.to_vec()).collect::<Vec<_>>();
        long[1].push(0);
        assert_eq!(
            verify_inclusion::<B3, _>(1, 3, &leaves[1], &long, &root),
            Err(ProofError::BadProofElementLength {
                position: 1,
                len: 33
            })
        );
        let cproof = consistency_proof::<B3, _>(&t, 2, 3).unwrap();
        let r2 = root_at::<B3, _>(&t, 2).unwrap();
        assert_eq!(
            verify_consistency::<B3, _>(2, 3, short, &root, &cproof),
            err("root1", 31)
        );
        assert_eq!(
            verify_consistency::<B3, _>(2, 3, &r2, short, &cproof),
            err("root2", 31)
        );
        // Equal sizes compare bytes, as the reference implementation does (see verify_consistency).
        assert_eq!(
            verify_consistency::<B3, _>(2, 2, short, short, &[] as &[Hash]),
            Ok(())
        );
        assert_eq!(
            verify_consistency::<B3, _>(2, 2, short, &r2, &[] as &[Hash]),
            Err(ProofError::RootMismatch)
        );
        let msg = ProofError::BadHashLength {
            what: "root1",
            len: 31,
        }
        .to_string();
        assert!(
            msg.contains("root1") && msg.contains("31") && msg.contains("32"),
            "{msg}"
        );
    }

    /// Extreme sizes and indices: errors, never panics or overflows.
    #[test]
    fn extreme_sizes_do_not_panic() {
        let t = tree_of::<B3>(&golden_leaves(9));
        let h = [7u8; 32];
        for (i, n) in [
            (u64::MAX - 1, u64::MAX),
            (0, u64::MAX),
            (1 << 63, u64::MAX),
            ((1 << 63) - 1, 1 << 63),
        ] {
            let len = inclusion_proof_len(i, n);
            assert!(len <= 128, "{len}");
            let proof = vec![h; len];
            assert_eq!(
                verify_inclusion::<B3, _>(i, n, &h, &proof, &h),
                Err(ProofError::RootMismatch)
            );
            assert!(matches!(
                inclusion_proof::<B3, _>(&t, i, n),
                Err(ProofError::MissingNode { .. })
            ));
        }
        for (m, n) in [
            (1, u64::MAX),
            (u64::MAX - 1, u64::MAX),
            (1 << 63, u64::MAX),
            ((1 << 63) - 1, u64::MAX),
            (3, 1 << 63),
        ] {
            let len = consistency_proof_len(m, n);
            assert!(len <= 128, "{len}");
            let proof = vec![h; len];
            assert!(matches!(
                verify_consistency::<B3, _>(m, n, &h, &h, &proof),
                Err(ProofError::OldRootMismatch | ProofError::RootMismatch)
            ));
            assert!(matches!(
                consistency_proof::<B3, _>(&t, m, n),
                Err(ProofError::MissingNode { .. })
            ));
        }
        assert_eq!(t.leaf(u64::MAX), None);
        assert_eq!(t.complete_node(u32::MAX, 0), None);
        let mut t2 = t.clone();
        t2.truncate(u64::MAX);
        assert_eq!(t2.root(), t.root());
    }

    #[test]
    fn memory_tree_basics() {
        let mut t = MemoryTree::<B3>::default();
        assert_eq!((t.size(), t.root(), t.leaf(0)), (0, B3::empty(), None));
        assert_eq!(root_at::<B3, _>(&t, 0), Some(B3::empty()));
        assert_eq!(
            inclusion_proof::<B3, _>(&t, 0, 0),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        let leaves = golden_leaves(13);
        for (i, &l) in leaves.iter().enumerate() {
            t.push(l);
            assert_eq!(t.size(), u(i + 1));
            assert_eq!(t.leaf(u(i)), Some(l));
            assert_eq!(t.root(), ref_mth::<B3>(&leaves[..=i]));
        }
        // Level l holds exactly size >> l complete nodes.
        for level in 0..5u32 {
            let count = 13u64 >> level;
            for index in 0..count {
                let lo = (index << level) as usize;
                let want = ref_mth::<B3>(&leaves[lo..lo + (1 << level)]);
                assert_eq!(t.complete_node(level, index), Some(want));
            }
            assert_eq!(t.complete_node(level, count), None);
        }
        t.truncate(0);
        assert_eq!((t.size(), t.root()), (0, B3::empty()));
        assert_eq!(format!("{t:?}"), "MemoryTree { size: 0, levels: 0 }");
    }

    /// The inclusion check binds (index, size) only through the shape of the path; the root is
    /// what binds the size. A proof for leaf 0 of 3 has the same shape as one for leaf 0 of 4.
    #[test]
    fn size_is_bound_by_the_root() {
        let leaves = golden_leaves(4);
        let t = tree_of::<B3>(&leaves);
        let root3 = root_at::<B3, _>(&t, 3).unwrap();
        let proof = inclusion_proof::<B3, _>(&t, 0, 3).unwrap();
        verify_inclusion::<B3, _>(0, 4, &leaves[0], &proof, &root3).unwrap();
        assert_eq!(
            verify_inclusion::<B3, _>(0, 4, &leaves[0], &proof, &t.root()),
            Err(ProofError::RootMismatch)
        );
    }

    // ---------------------------------------------------------------------------------------
    // Property tests.

    mod props {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;

        fn leaves_strategy() -> impl Strategy<Value = Vec<Hash>> {
            proptest::collection::vec(any::<[u8; 32]>(), 1..300)
        }

        /// The `k`-th value of 0, 1, 2, .. that is not `avoid`.
        fn skip(k: usize, avoid: usize) -> usize {
            if k < avoid {
                k
            } else {
                k + 1
            }
        }

        /// Flips bit `bit` (0..256) of a hash.
        fn flipped(mut h: Hash, bit: usize) -> Hash {
            h[bit / 8] ^= 1 << (bit % 8);
            h
        }

        proptest! {
            #[test]
            fn inclusion(
                all in leaves_strategy(),
                n in any::<Index>(),
                picks in proptest::collection::vec(any::<Index>(), 8),
                bit in 0..256usize,
            ) {
                check_inclusion(&all, n, &picks, bit)?;
            }

            #[test]
            fn consistency(
                all in leaves_strategy(),
                m in any::<Index>(),
                n in any::<Index>(),
                pick in any::<Index>(),
                bit in 0..256usize,
            ) {
                check_consistency(&all, m, n, pick, bit)?;
            }

            #[test]
            fn truncate_then_repush(all in leaves_strategy(), cut in any::<Index>()) {
                check_truncate(&all, cut)?;
            }

            /// Arbitrary untrusted input: verification returns an answer, whatever it is given.
            #[test]
            fn verify_never_panics(
                index in prop_oneof![any::<u64>(), 0..20u64, (u64::MAX - 20)..=u64::MAX],
                size in prop_oneof![any::<u64>(), 0..20u64, (u64::MAX - 20)..=u64::MAX],
                exact_len in any::<bool>(),
                proof in proptest::collection::vec(
                    proptest::collection::vec(any::<u8>(), 31..=33),
                    0..70,
                ),
                leaf in proptest::collection::vec(any::<u8>(), 31..=33),
                root in proptest::collection::vec(any::<u8>(), 31..=33),
            ) {
                check_no_panic(index, size, exact_len, &proof, &leaf, &root);
            }
        }

        /// The tree is `n` leaves of a longer log `all`, so that wrong sizes can come with their
        /// genuine roots. Every index of small trees is checked, a sample of larger ones.
        fn check_inclusion(
            all: &[Hash],
            n: Index,
            picks: &[Index],
            bit: usize,
        ) -> Result<(), TestCaseError> {
            let t = tree_of::<B3>(all);
            let n = n.index(all.len()) + 1;
            let d = &all[..n];
            let root = root_at::<B3, _>(&t, u(n)).unwrap();
            prop_assert_eq!(root, root_from_leaves::<B3>(d));
            let indices: Vec<usize> = if n <= 64 {
                (0..n).collect()
            } else {
                picks.iter().map(|p| p.index(n)).chain([0, n - 1]).collect()
            };
            for (j, &i) in indices.iter().enumerate() {
                let pick = picks[j % picks.len()];
                let proof = inclusion_proof::<B3, _>(&t, u(i), u(n)).unwrap();
                prop_assert_eq!(&proof, &ref_path::<B3>(i, d));
                let verify = |index: usize, size: usize, leaf: &Hash, p: &[Hash], r: &Hash| {
                    verify_inclusion::<B3, _>(u(index), u(size), leaf, p, r)
                };
                prop_assert_eq!(verify(i, n, &d[i], &proof, &root), Ok(()));
                if !proof.is_empty() {
                    let pos = pick.index(proof.len());
                    let mut bad = proof.clone();
                    bad[pos] = flipped(bad[pos], bit);
                    prop_assert_eq!(
                        verify(i, n, &d[i], &bad, &root),
                        Err(ProofError::RootMismatch)
                    );
                    let mut dropped = proof.clone();
                    dropped.remove(pos);
                    prop_assert!(verify(i, n, &d[i], &dropped, &root).is_err());
                }
                let mut added = proof.clone();
                added.insert(pick.index(proof.len() + 1), d[i]);
                prop_assert!(verify(i, n, &d[i], &added, &root).is_err());
                prop_assert_eq!(
                    verify(i, n, &d[i], &proof, &flipped(root, bit)),
                    Err(ProofError::RootMismatch)
                );
                prop_assert!(verify(i, n, &flipped(d[i], bit), &proof, &root).is_err());
                // Wrong index: any other, inside the tree or not.
                let other = skip(pick.index(n), i);
                prop_assert!(verify(other, n, &d[i], &proof, &root).is_err());
                // Wrong size in (i, all.len()], with that size's genuine root.
                if all.len() - i > 1 {
                    let other = i + 1 + skip(pick.index(all.len() - i - 1), n - i - 1);
                    let other_root = root_at::<B3, _>(&t, u(other)).unwrap();
                    prop_assert!(verify(i, other, &d[i], &proof, &other_root).is_err());
                }
            }
            Ok(())
        }

        /// Consistency from `m` to `n` within the log `all`, with 1 <= m <= n <= all.len().
        fn check_consistency(
            all: &[Hash],
            m: Index,
            n: Index,
            pick: Index,
            bit: usize,
        ) -> Result<(), TestCaseError> {
            let t = tree_of::<B3>(all);
            let n = n.index(all.len()) + 1;
            let m = m.index(n) + 1;
            let root = |size: usize| root_at::<B3, _>(&t, u(size)).unwrap();
            let proof = consistency_proof::<B3, _>(&t, u(m), u(n)).unwrap();
            prop_assert_eq!(&proof, &ref_proof::<B3>(m, &all[..n]));
            let verify = |from: usize, to: usize, r1: &Hash, r2: &Hash, p: &[Hash]| {
                verify_consistency::<B3, _>(u(from), u(to), r1, r2, p)
            };
            let (r1, r2) = (root(m), root(n));
            prop_assert_eq!(verify(m, n, &r1, &r2, &proof), Ok(()));
            if !proof.is_empty() {
                let pos = pick.index(proof.len());
                let mut bad = proof.clone();
                bad[pos] = flipped(bad[pos], bit);
                prop_assert!(verify(m, n, &r1, &r2, &bad).is_err());
                let mut dropped = proof.clone();
                dropped.remove(pos);
                prop_assert!(verify(m, n, &r1, &r2, &dropped).is_err());
            }
            let mut added = proof.clone();
            added.insert(pick.index(proof.len() + 1), r1);
            prop_assert!(verify(m, n, &r1, &r2, &added).is_err());
            prop_assert!(verify(m, n, &flipped(r1, bit), &r2, &proof).is_err());
            prop_assert!(verify(m, n, &r1, &flipped(r2, bit), &proof).is_err());
            // Wrong sizes, each with its genuine root: from in [1, n], to in [m, all.len()].
            if n > 1 {
                let other = 1 + skip(pick.index(n - 1), m - 1);
                prop_assert!(verify(other, n, &root(other), &r2, &proof).is_err());
            }
            if all.len() > m {
                let other = m + skip(pick.index(all.len() - m), n - m);
                prop_assert!(verify(m, other, &r1, &root(other), &proof).is_err());
            }
            Ok(())
        }

        /// Truncating to any size gives the tree of that prefix; pushing the rest back gives the
        /// same roots as the first time.
        fn check_truncate(all: &[Hash], cut: Index) -> Result<(), TestCaseError> {
            let mut t = MemoryTree::<B3>::new();
            let mut roots = Vec::new();
            for &l in all {
                t.push(l);
                roots.push(t.root());
            }
            let cut = cut.index(all.len() + 1);
            t.truncate(u(cut));
            prop_assert_eq!(t.size(), u(cut));
            prop_assert_eq!(t.root(), root_from_leaves::<B3>(&all[..cut]));
            let fresh = tree_of::<B3>(&all[..cut]);
            for level in 0..10 {
                for index in 0..=(u(all.len()) >> level) {
                    let (got, want) = (
                        t.complete_node(level, index),
                        fresh.complete_node(level, index),
                    );
                    prop_assert_eq!(got, want);
                }
            }
            for (i, &l) in all.iter().enumerate().skip(cut) {
                t.push(l);
                prop_assert_eq!(t.root(), roots[i]);
            }
            Ok(())
        }

        /// Sometimes the proof has exactly the expected length, so the hashing loops run on
        /// extreme indices and sizes too.
        fn check_no_panic(
            index: u64,
            size: u64,
            exact_len: bool,
            proof: &[Vec<u8>],
            leaf: &[u8],
            root: &[u8],
        ) {
            let (lo, hi) = (index.min(size), index.max(size));
            let fit = |len: usize| -> Vec<Hash> {
                (0..len)
                    .map(|j| {
                        let h = proof.get(j).and_then(|p| p.as_slice().try_into().ok());
                        h.unwrap_or([j as u8; 32])
                    })
                    .collect()
            };
            let incl = if exact_len && index < size {
                fit(inclusion_proof_len(index, size))
            } else {
                fit(proof.len())
            };
            let cons = if exact_len && 0 < lo && lo < hi {
                fit(consistency_proof_len(lo, hi))
            } else {
                fit(proof.len())
            };
            let _ = verify_inclusion::<B3, _>(index, size, leaf, &incl, root);
            let _ = verify_inclusion::<B3, _>(index, size, leaf, proof, root);
            let _ = verify_consistency::<B3, _>(lo, hi, leaf, root, &cons);
            let _ = verify_consistency::<B3, _>(index, size, leaf, root, proof);
        }
    }
}
