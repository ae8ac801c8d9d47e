//! Offline verification: a receipt against its checkpoint, and a whole export against a
//! checkpoint, with nothing but the ledger's public key. Pure: callers read the files.
//!
//! An export is the framed entries `u32 BE len || leaf || leaf_hash` from index 0. Verifying it
//! checks every frame hash, index and chain link, rebuilds the Merkle tree, compares its root at
//! the checkpoint's size, and replays the key registry from the log itself (Genesis,
//! RegisterAuthority, RegisterKey, RevokeKey) to check every signature and cosignature with
//! `verify_strict`, and every signer chain (`signer_seq`, `signer_prev`).

use crate::checkpoint::{open_checkpoint, Checkpoint, NoteVerifier};
use crate::codec::{self, scan_frames, Cosig, Leaf};
use crate::crypto::{self, KeyId};
use crate::merkle::{self, Blake3Hasher, Hash, MemoryTree};
use crate::pb::record_body::Payload;
use ed25519_dalek::VerifyingKey;
use std::collections::HashMap;
use std::sync::Arc;

/// Why verification failed; every variant says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("receipt: {0}")]
    Receipt(String),
    #[error("export: {0}")]
    Export(String),
    #[error("entry {index}: {what}")]
    Entry { index: u64, what: String },
}

/// The parts of a receipt needed offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptParts {
    pub index: u64,
    pub leaf_hash: Hash,
    pub integrated_time_ms: u64,
    pub prev_leaf_hash: Hash,
    pub checkpoint: String,
    pub tree_size: u64,
    pub inclusion_proof: Vec<Hash>,
}

/// Opens a checkpoint note signed by the ledger key (note name = origin).
pub fn open_ledger_checkpoint(
    note: &str,
    ledger_key: &VerifyingKey,
) -> Result<Checkpoint, VerifyError> {
    let origin = note.lines().next().unwrap_or("");
    let verifier = NoteVerifier::new(origin, *ledger_key)
        .map_err(|e| VerifyError::Checkpoint(e.to_string()))?;
    open_checkpoint(note, &verifier)
        .map(|(cp, _)| cp)
        .map_err(|e| VerifyError::Checkpoint(e.to_string()))
}

/// Verifies that a signed record is entry `receipt.index` of the ledger whose key signed the
/// receipt's checkpoint: rebuilds the leaf, checks its hash and the inclusion proof.
pub fn verify_receipt(
    body: &[u8],
    signature: &[u8; 64],
    cosignatures: &[Cosig],
    receipt: &ReceiptParts,
    ledger_key: &VerifyingKey,
) -> Result<Checkpoint, VerifyError> {
    let cp = open_ledger_checkpoint(&receipt.checkpoint, ledger_key)?;
    if cp.size != receipt.tree_size {
        return Err(VerifyError::Receipt(format!(
            "tree_size {} differs from the checkpoint's size {}",
            receipt.tree_size, cp.size
        )));
    }
    let leaf = Leaf {
        index: receipt.index,
        integrated_time_ms: receipt.integrated_time_ms,
        prev_leaf_hash: receipt.prev_leaf_hash,
        body: body.to_vec(),
        signature: *signature,
        cosignatures: cosignatures.to_vec(),
    };
    if leaf.hash() != receipt.leaf_hash {
        return Err(VerifyError::Receipt(
            "the record does not hash to the receipt's leaf_hash".into(),
        ));
    }
    let decoded = codec::decode_body(body).map_err(|e| VerifyError::Receipt(e.to_string()))?;
    if decoded.ledger_origin != cp.origin {
        return Err(VerifyError::Receipt(format!(
            "the record names ledger `{}`, the checkpoint is `{}`",
            decoded.ledger_origin, cp.origin
        )));
    }
    merkle::verify_inclusion::<Blake3Hasher, _>(
        receipt.index,
        cp.size,
        &receipt.leaf_hash,
        &receipt.inclusion_proof,
        &cp.root,
    )
    .map_err(|e| VerifyError::Receipt(format!("inclusion proof: {e}")))?;
    Ok(cp)
}

/// What verifying a checkpoint under a witness policy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointReport {
    pub checkpoint: Checkpoint,
    /// The trusted witnesses whose cosignatures verified.
    pub witnesses: Vec<String>,
    /// The size of the previously trusted checkpoint it was proven consistent with.
    pub consistent_from: Option<u64>,
}

/// Verifies a checkpoint note: the ledger's signature; under `policy`, at least its quorum of
/// trusted witness cosignatures; and, given a previously trusted checkpoint note with a
/// consistency proof from its size, that the new one extends it (never a rollback or a fork).
pub fn verify_checkpoint(
    note: &str,
    ledger_key: &VerifyingKey,
    policy: Option<&crate::witness::Policy>,
    trusted: Option<(&str, &[Hash])>,
) -> Result<CheckpointReport, VerifyError> {
    let checkpoint = open_ledger_checkpoint(note, ledger_key)?;
    let witnesses = match policy {
        Some(p) => {
            let signed = crate::checkpoint::SignedNote::parse(note)
                .map_err(|e| VerifyError::Checkpoint(e.to_string()))?;
            p.check(&signed)
                .map_err(|e| VerifyError::Checkpoint(e.to_string()))?
        }
        None => vec![],
    };
    let consistent_from = match trusted {
        None => None,
        Some((old_note, proof)) => {
            let old = open_ledger_checkpoint(old_note, ledger_key)
                .map_err(|e| VerifyError::Checkpoint(format!("trusted checkpoint: {e}")))?;
            check_extends(&old, &checkpoint, |_| {
                merkle::verify_consistency::<Blake3Hasher, _>(
                    old.size,
                    checkpoint.size,
                    &old.root,
                    &checkpoint.root,
                    proof,
                )
                .map_err(|e| format!("consistency proof: {e}"))
            })?;
            Some(old.size)
        }
    };
    Ok(CheckpointReport {
        checkpoint,
        witnesses,
        consistent_from,
    })
}

/// Checks `new` extends `old` (same origin, not smaller, same root at the same size), with
/// `prove` for the strictly larger case.
fn check_extends(
    old: &Checkpoint,
    new: &Checkpoint,
    prove: impl FnOnce(&Checkpoint) -> Result<(), String>,
) -> Result<(), VerifyError> {
    let bad = |m: String| {
        VerifyError::Checkpoint(format!("not consistent with the trusted checkpoint: {m}"))
    };
    if old.origin != new.origin {
        return Err(bad(format!(
            "origin `{}` is not `{}`",
            new.origin, old.origin
        )));
    }
    if new.size < old.size {
        return Err(bad(format!(
            "size {} is smaller than the trusted {} (a rollback)",
            new.size, old.size
        )));
    }
    if old.size == 0 {
        return Ok(());
    }
    if new.size == old.size {
        return if new.root == old.root {
            Ok(())
        } else {
            Err(bad(format!(
                "a different root at the same size {} (a fork)",
                old.size
            )))
        };
    }
    prove(new).map_err(bad)
}

/// What verifying an export found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    pub entries: u64,
    pub checkpoint_size: u64,
    pub root: Hash,
    pub signatures_checked: u64,
    pub keys: usize,
}

struct KeyState {
    key: VerifyingKey,
    next_seq: u64,
    prev: Hash,
    revoked_at_ms: Option<u64>,
}

/// Verifies an export (framed entries from index 0) against a checkpoint signed by the ledger key.
/// The export must hold at least the checkpoint's entries; entries beyond it are checked for
/// chain and signatures but are not covered by the checkpoint.
pub fn verify_export(
    data: &[u8],
    checkpoint_note: &str,
    ledger_key: &VerifyingKey,
) -> Result<ExportReport, VerifyError> {
    verify_export_with(data, checkpoint_note, ledger_key, None, None)
}

/// As [`verify_export`]; under `policy` the checkpoint must carry the quorum's cosignatures,
/// and with `trusted` (a previously trusted checkpoint note) the export's tree at the trusted
/// size must have the trusted root (the log has only grown since).
pub fn verify_export_with(
    data: &[u8],
    checkpoint_note: &str,
    ledger_key: &VerifyingKey,
    policy: Option<&crate::witness::Policy>,
    trusted: Option<&str>,
) -> Result<ExportReport, VerifyError> {
    verify_export_progress(
        data,
        checkpoint_note,
        ledger_key,
        policy,
        trusted,
        &mut |_| {},
    )
}

/// As [`verify_export_with`], telling `progress` how many entries are checked, every 1,024.
pub fn verify_export_progress(
    data: &[u8],
    checkpoint_note: &str,
    ledger_key: &VerifyingKey,
    policy: Option<&crate::witness::Policy>,
    trusted: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<ExportReport, VerifyError> {
    let cp = verify_checkpoint(checkpoint_note, ledger_key, policy, None)?.checkpoint;
    let old = trusted
        .map(|t| {
            open_ledger_checkpoint(t, ledger_key)
                .map_err(|e| VerifyError::Checkpoint(format!("trusted checkpoint: {e}")))
        })
        .transpose()?;
    let mut root_at_old = None;
    let mut tree = MemoryTree::<Blake3Hasher>::new();
    let mut keys: HashMap<KeyId, KeyState> = HashMap::new();
    let mut sigs = 0u64;
    let mut root_at_cp = if cp.size == 0 {
        Some(tree.root())
    } else {
        None
    };
    let ledger_id = KeyId::of(ledger_key);
    let mut last_time = 0u64;
    let mut signatures = Rounds::default();
    scan_frames(data, 0, [0; 32], |index, leaf_bytes, hash| {
        let leaf = Leaf::decode(leaf_bytes).map_err(|e| format!("entry {index}: {e}"))?;
        if leaf.integrated_time_ms < last_time {
            return Err(format!(
                "entry {index}: integrated_time_ms {} goes back before {last_time}",
                leaf.integrated_time_ms
            ));
        }
        last_time = leaf.integrated_time_ms;
        let checked = check_entry(
            index,
            &leaf,
            &cp.origin,
            &ledger_id,
            ledger_key,
            &mut keys,
            &mut signatures.current,
        );
        if let Err(w) = checked {
            // A signature of an earlier entry may be bad too: the first fault wins.
            signatures.finish()?;
            return Err(format!("entry {index}: {w}"));
        }
        if signatures.current.len() >= SIGNATURES_PER_ROUND {
            signatures.send()?;
        }
        sigs += 1 + leaf.cosignatures.len() as u64;
        tree.push(hash);
        if tree.size().is_multiple_of(1024) {
            progress(tree.size());
        }
        if tree.size() == cp.size {
            root_at_cp = Some(tree.root());
        }
        if old.as_ref().is_some_and(|o| o.size == tree.size()) {
            root_at_old = Some(tree.root());
        }
        Ok(())
    })
    .and_then(|end| signatures.finish().map(|()| end))
    .map_err(VerifyError::Export)?;
    let Some(root) = root_at_cp else {
        return Err(VerifyError::Export(format!(
            "the export holds {} entries, fewer than the checkpoint's {}",
            tree.size(),
            cp.size
        )));
    };
    if root != cp.root {
        return Err(VerifyError::Export(format!(
            "the root of the first {} entries differs from the checkpoint's root",
            cp.size
        )));
    }
    if let Some(o) = &old {
        check_extends(o, &cp, |_| {
            if root_at_old == Some(o.root) {
                Ok(())
            } else {
                Err(format!(
                    "the export's first {} entries do not have the trusted root",
                    o.size
                ))
            }
        })?;
    }
    Ok(ExportReport {
        entries: tree.size(),
        checkpoint_size: cp.size,
        root,
        signatures_checked: sigs,
        keys: keys.len(),
    })
}

/// Signatures are checked in rounds of this many, spread over every core; everything else
/// about an entry is checked in order as it is read.
const SIGNATURES_PER_ROUND: usize = if cfg!(test) { 8 } else { 4096 };

/// Signatures in rounds: a full round is checked on the rayon pool while the entries of the
/// next are read and checked in order; results are taken in order, so the first bad entry is
/// still the one named.
#[derive(Default)]
struct Rounds {
    current: Vec<SignatureCheck>,
    in_flight: Option<std::sync::mpsc::Receiver<Result<(), String>>>,
}

impl Rounds {
    /// Sends the current round off, once the round before it has passed.
    fn send(&mut self) -> Result<(), String> {
        self.wait()?;
        let mut round =
            std::mem::replace(&mut self.current, Vec::with_capacity(SIGNATURES_PER_ROUND));
        let (tx, rx) = std::sync::mpsc::channel();
        rayon::spawn(move || {
            let _ = tx.send(check_signatures(&mut round));
        });
        self.in_flight = Some(rx);
        Ok(())
    }

    fn wait(&mut self) -> Result<(), String> {
        match self.in_flight.take() {
            Some(rx) => rx
                .recv()
                .unwrap_or_else(|_| Err("checking signatures failed unexpectedly".into())),
            None => Ok(()),
        }
    }

    /// Checks everything collected: the round in flight, then the rest.
    fn finish(&mut self) -> Result<(), String> {
        self.wait()?;
        check_signatures(&mut self.current)
    }
}

/// A signature an entry carries, checked later in a round (`check_signatures`).
struct SignatureCheck {
    index: u64,
    key: VerifyingKey,
    body: Arc<[u8]>,
    signature: [u8; 64],
    /// `None` for the signer's signature, else the cosignature's position.
    cosignature: Option<usize>,
}

/// Checks the signatures collected so far on every core, then forgets them. The error names
/// the earliest entry with a bad one.
fn check_signatures(checks: &mut Vec<SignatureCheck>) -> Result<(), String> {
    use rayon::prelude::*;
    let bad = checks
        .par_iter()
        .filter_map(|c| {
            let checked = match c.cosignature {
                None => crypto::verify_record(&c.key, &c.body, &c.signature),
                Some(_) => crypto::verify_cosignature(&c.key, &c.body, &c.signature),
            };
            checked.err().map(|e| (c.index, c.cosignature, e))
        })
        .min_by_key(|(index, cosignature, _)| (*index, cosignature.map_or(0, |i| i + 1)));
    checks.clear();
    match bad {
        None => Ok(()),
        Some((index, _, e)) => Err(format!("entry {index}: {e}")),
    }
}

fn check_entry(
    index: u64,
    leaf: &Leaf,
    origin: &str,
    ledger_id: &KeyId,
    ledger_key: &VerifyingKey,
    keys: &mut HashMap<KeyId, KeyState>,
    signatures: &mut Vec<SignatureCheck>,
) -> Result<(), String> {
    let body = codec::decode_body(&leaf.body).map_err(|e| e.to_string())?;
    if body.ledger_origin != origin {
        return Err(format!(
            "ledger_origin `{}` is not `{origin}`",
            body.ledger_origin
        ));
    }
    let signer = KeyId::from_slice("signer", &body.signer).map_err(|e| e.to_string())?;
    let payload = body.payload.as_ref().ok_or("no payload")?;
    if index == 0 {
        let Payload::Genesis(g) = payload else {
            return Err("entry 0 is not genesis".into());
        };
        if signer != *ledger_id || g.ledger_public_key != ledger_key.as_bytes() {
            return Err("genesis is not signed by the checkpoint's ledger key".into());
        }
        keys.insert(
            signer,
            KeyState {
                key: *ledger_key,
                next_seq: 0,
                prev: [0; 32],
                revoked_at_ms: None,
            },
        );
        for a in &g.root_regulators {
            add_key(keys, &a.public_key)?;
        }
    }
    let st = keys
        .get_mut(&signer)
        .ok_or_else(|| format!("signer {signer} is not registered before this entry"))?;
    if st
        .revoked_at_ms
        .is_some_and(|t| t <= leaf.integrated_time_ms)
    {
        return Err(format!("signer {signer} was revoked"));
    }
    if body.signer_seq != st.next_seq || body.signer_prev.as_slice() != st.prev {
        return Err(format!(
            "signer {signer} chain broken at seq {} (expected {})",
            body.signer_seq, st.next_seq
        ));
    }
    let shared_body: Arc<[u8]> = Arc::from(leaf.body.as_slice());
    signatures.push(SignatureCheck {
        index,
        key: st.key,
        body: shared_body.clone(),
        signature: leaf.signature,
        cosignature: None,
    });
    st.next_seq += 1;
    st.prev = crypto::body_hash(&leaf.body);
    for (i, c) in leaf.cosignatures.iter().enumerate() {
        if c.key_id == signer {
            return Err(format!("signer {signer} cosigns its own record"));
        }
        let ck = keys
            .get(&c.key_id)
            .ok_or_else(|| format!("cosigner {} is not registered", c.key_id))?;
        if ck
            .revoked_at_ms
            .is_some_and(|t| t <= leaf.integrated_time_ms)
        {
            return Err(format!("cosigner {} was revoked", c.key_id));
        }
        signatures.push(SignatureCheck {
            index,
            key: ck.key,
            body: shared_body.clone(),
            signature: c.signature,
            cosignature: Some(i),
        });
    }
    match payload {
        Payload::RegisterAuthority(p) => {
            if let Some(a) = &p.authority {
                add_key(keys, &a.public_key)?;
            }
        }
        Payload::RegisterKey(p) => add_key(keys, &p.public_key)?,
        Payload::RevokeKey(p) => {
            let id = KeyId::from_slice("key_id", &p.key_id).map_err(|e| e.to_string())?;
            if let Some(k) = keys.get_mut(&id) {
                k.revoked_at_ms = Some(leaf.integrated_time_ms);
            }
        }
        _ => {}
    }
    Ok(())
}

fn add_key(keys: &mut HashMap<KeyId, KeyState>, pk: &[u8]) -> Result<(), String> {
    let vk = crypto::parse_public_key("public_key", pk).map_err(|e| e.to_string())?;
    keys.entry(KeyId::of(&vk)).or_insert(KeyState {
        key: vk,
        next_seq: 0,
        prev: [0; 32],
        revoked_at_ms: None,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{sign_checkpoint, NoteSigner};
    use crate::client::RecordSigner;
    use crate::codec::frame;
    use crate::pb;
    use ed25519_dalek::SigningKey;

    const ORIGIN: &str = "verify.test/ledger";

    /// Builds an export and a checkpoint over it from (record, time) pairs.
    fn export(ledger: &SigningKey, records: &[(pb::SignedRecord, u64)]) -> (Vec<u8>, String) {
        let mut data = Vec::new();
        let mut tree = MemoryTree::<Blake3Hasher>::new();
        let mut prev = [0u8; 32];
        for (i, (r, t)) in records.iter().enumerate() {
            let leaf = Leaf {
                index: i as u64,
                integrated_time_ms: *t,
                prev_leaf_hash: prev,
                body: r.body.clone(),
                signature: r.signature.as_slice().try_into().unwrap(),
                cosignatures: r
                    .cosignatures
                    .iter()
                    .map(|c| Cosig {
                        key_id: KeyId::from_slice("k", &c.key_id).unwrap(),
                        signature: c.signature.as_slice().try_into().unwrap(),
                    })
                    .collect(),
            };
            let hash = leaf.hash();
            data.extend(frame(&leaf.encode(), &hash));
            tree.push(hash);
            prev = hash;
        }
        let signer = NoteSigner::new(ORIGIN, ledger.clone()).unwrap();
        let note = sign_checkpoint(
            &Checkpoint {
                origin: ORIGIN.into(),
                size: tree.size(),
                root: tree.root(),
                extensions: vec![],
            },
            &signer,
        )
        .unwrap();
        (data, note)
    }

    fn register(k: &SigningKey) -> Payload {
        Payload::RegisterKey(pb::RegisterKey {
            public_key: k.verifying_key().to_bytes().to_vec(),
            role: pb::Role::Enterprise as i32,
            ..Default::default()
        })
    }

    /// Genesis (ledger key, one root regulator), then the regulator registers `keys`.
    fn base(
        ledger: &SigningKey,
        reg: &SigningKey,
        keys: &[&SigningKey],
    ) -> (Vec<(pb::SignedRecord, u64)>, RecordSigner) {
        let mut l = RecordSigner::new(ledger.clone(), ORIGIN);
        let genesis = l.sign(
            Payload::Genesis(pb::Genesis {
                origin: ORIGIN.into(),
                ledger_public_key: ledger.verifying_key().to_bytes().to_vec(),
                root_regulators: vec![pb::AuthorityKey {
                    public_key: reg.verifying_key().to_bytes().to_vec(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            0,
        );
        let mut r = RecordSigner::new(reg.clone(), ORIGIN);
        let mut out = vec![(genesis, 1000)];
        for (i, k) in keys.iter().enumerate() {
            out.push((r.sign(register(k), 0), 1001 + i as u64));
        }
        (out, r)
    }

    fn stock_take() -> Payload {
        Payload::StockTake(pb::StockTake::default())
    }

    #[test]
    fn a_well_formed_export_verifies() {
        let (ledger, reg, k) = keys();
        let (mut recs, _) = base(&ledger, &reg, &[&k]);
        let mut ks = RecordSigner::new(k.clone(), ORIGIN);
        recs.push((ks.sign(stock_take(), 0), 2000));
        let (data, note) = export(&ledger, &recs);
        let r = verify_export(&data, &note, &ledger.verifying_key()).unwrap();
        assert_eq!(r.entries, 3);
    }

    /// Signatures are checked in rounds, in parallel, after the entry's other checks: the
    /// error still names the first bad entry, whichever round and fault finds it.
    #[test]
    fn the_first_bad_signature_is_named_across_rounds_and_before_a_later_fault() {
        let (ledger, reg, k) = keys();
        let (base_recs, _) = base(&ledger, &reg, &[&k]);
        let n = 5 * SIGNATURES_PER_ROUND as u64;
        for bad in [3, 9, n - 1] {
            for later_fault in [false, true] {
                let mut recs = base_recs.clone();
                let mut ks = RecordSigner::new(k.clone(), ORIGIN);
                for i in 0..n {
                    let mut r = ks.sign(stock_take(), 0);
                    if i + 2 == bad {
                        r.signature[7] ^= 1;
                    }
                    recs.push((r, 2000 + i));
                }
                if later_fault {
                    // A record out of its signer's chain after the bad one.
                    let mut other = RecordSigner::new(k.clone(), ORIGIN);
                    recs.push((other.sign(stock_take(), 0), 9_000_000));
                }
                let (data, note) = export(&ledger, &recs);
                let e = verify_export(&data, &note, &ledger.verifying_key()).unwrap_err();
                assert!(
                    e.to_string().contains(&format!("entry {bad}: ")),
                    "bad {bad}, later fault {later_fault}: {e}"
                );
            }
        }
        // And with nothing bad, every signature is counted once.
        let mut recs = base_recs.clone();
        let mut ks = RecordSigner::new(k.clone(), ORIGIN);
        for i in 0..n {
            recs.push((ks.sign(stock_take(), 0), 2000 + i));
        }
        let (data, note) = export(&ledger, &recs);
        let r = verify_export(&data, &note, &ledger.verifying_key()).unwrap();
        assert_eq!(r.signatures_checked, recs.len() as u64);
    }

    fn keys() -> (SigningKey, SigningKey, SigningKey) {
        (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
            SigningKey::from_bytes(&[3; 32]),
        )
    }

    #[test]
    fn time_going_backwards_is_refused() {
        let (ledger, reg, k) = keys();
        let (mut recs, _) = base(&ledger, &reg, &[&k]);
        let mut ks = RecordSigner::new(k.clone(), ORIGIN);
        recs.push((ks.sign(stock_take(), 0), 500)); // before the previous entry's 1001
        let (data, note) = export(&ledger, &recs);
        let e = verify_export(&data, &note, &ledger.verifying_key()).unwrap_err();
        assert!(e.to_string().contains("goes back"), "{e}");
    }

    #[test]
    fn cosignature_by_a_revoked_key_or_by_the_signer_is_refused() {
        let (ledger, reg, k) = keys();
        let c = SigningKey::from_bytes(&[4; 32]);
        let (mut recs, mut r) = base(&ledger, &reg, &[&k, &c]);
        recs.push((
            r.sign(
                Payload::RevokeKey(pb::RevokeKey {
                    key_id: KeyId::of(&c.verifying_key()).0.to_vec(),
                    reason: "test".into(),
                }),
                0,
            ),
            3000,
        ));
        let mut ks = RecordSigner::new(k.clone(), ORIGIN);
        let body = crate::codec::encode_body(&ks.body(stock_take(), 0));
        recs.push((ks.sign_bytes(body, &[&c]), 4000));
        let (data, note) = export(&ledger, &recs);
        let e = verify_export(&data, &note, &ledger.verifying_key()).unwrap_err();
        assert!(e.to_string().contains("was revoked"), "{e}");

        let (mut recs, _) = base(&ledger, &reg, &[&k]);
        let mut ks = RecordSigner::new(k.clone(), ORIGIN);
        let body = crate::codec::encode_body(&ks.body(stock_take(), 0));
        recs.push((ks.sign_bytes(body, &[&k]), 4000));
        let (data, note) = export(&ledger, &recs);
        let e = verify_export(&data, &note, &ledger.verifying_key()).unwrap_err();
        assert!(e.to_string().contains("cosigns its own"), "{e}");
    }
}
