//! Witnessing checkpoints (docs/protocol.md §14), pure: what a witness decides about a new
//! checkpoint given the last one it cosigned, and what a verifier's witness policy accepts.
//!
//! A witness (another department's service) holds the last checkpoint of the ledger it cosigned.
//! Offered a new one with a consistency proof from that size, it cosigns (C2SP
//! `cosignature/v1`) only if the ledger signed it and it extends the old tree; it refuses a
//! smaller size (a rollback), a different root at the same size, and anything the proof does not
//! connect (a fork). It sees checkpoints and proofs only, never a payload.

use crate::checkpoint::{
    self, open_checkpoint, Checkpoint, NoteSignature, NoteVerifier, SignedNote,
};
use crate::merkle::{self, Blake3Hasher, Hash};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// Why a witness refused a checkpoint, or a policy a note.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    #[error("checkpoint: {0}")]
    Note(String),
    #[error(
        "checkpoint: size {size} is smaller than the {cosigned} already cosigned (a rollback)"
    )]
    Rollback { size: u64, cosigned: u64 },
    #[error("checkpoint: root at size {size} differs from the one already cosigned (a fork)")]
    Fork { size: u64 },
    #[error("consistency_proof: does not prove size {to} extends the cosigned size {from} ({why}): the ledger forked")]
    Inconsistent { from: u64, to: u64, why: String },
    #[error("policy: {0}")]
    Policy(String),
}

/// The last checkpoint a witness cosigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosigned {
    pub size: u64,
    pub root: Hash,
}

/// What a witness does with an offered checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Cosign it and remember this as the new state.
    Cosign(Checkpoint),
    /// The offer was made from another size than the witness's: tell the ledger its size, so it
    /// can send a proof from there (C2SP tlog-witness "409 Conflict").
    Conflict { witness_size: u64 },
}

/// Decides on `note`, offered with a consistency proof from `old_size`, when the witness last
/// cosigned `state` (none: it has never cosigned this ledger, and trusts the first checkpoint it
/// is shown).
pub fn decide(
    ledger: &NoteVerifier,
    state: Option<&Cosigned>,
    note: &str,
    old_size: u64,
    proof: &[Hash],
) -> Result<Decision, WitnessError> {
    let (cp, _) = open_checkpoint(note, ledger).map_err(|e| WitnessError::Note(e.to_string()))?;
    let (size, root) = state.map_or((0, [0; 32]), |s| (s.size, s.root));
    if old_size != size {
        return Ok(Decision::Conflict { witness_size: size });
    }
    if cp.size < size {
        return Err(WitnessError::Rollback {
            size: cp.size,
            cosigned: size,
        });
    }
    if size > 0 {
        if cp.size == size && cp.root != root {
            return Err(WitnessError::Fork { size });
        }
        merkle::verify_consistency::<Blake3Hasher, _>(size, cp.size, &root, &cp.root, proof)
            .map_err(|e| WitnessError::Inconsistent {
                from: size,
                to: cp.size,
                why: e.to_string(),
            })?;
    }
    Ok(Decision::Cosign(cp))
}

/// The cosignature/v1 line a witness named `name` adds to `note`'s checkpoint at `now_secs`.
pub fn cosign_line(
    note: &str,
    name: &str,
    key: &SigningKey,
    now_secs: u64,
) -> Result<String, WitnessError> {
    let signed = SignedNote::parse(note).map_err(|e| WitnessError::Note(e.to_string()))?;
    let sig = checkpoint::cosign(&signed.text, name, key, now_secs)
        .map_err(|e| WitnessError::Note(e.to_string()))?;
    Ok(sig.to_line())
}

/// Which witnesses a verifier trusts, and how many of them must have cosigned.
#[derive(Debug, Clone)]
pub struct Policy {
    /// (name, key) of each trusted witness.
    pub witnesses: Vec<(String, VerifyingKey)>,
    /// How many distinct witnesses must have cosigned (the ledger's own signature is always
    /// required besides).
    pub quorum: usize,
}

impl Policy {
    /// A policy from witness verifier keys (`name+hash+base64`, the tlog-cosignature vkey form).
    pub fn from_vkeys(vkeys: &[String], quorum: usize) -> Result<Policy, WitnessError> {
        let mut witnesses = Vec::with_capacity(vkeys.len());
        for v in vkeys {
            let (name, key) = checkpoint::parse_cosigner_vkey(v)
                .map_err(|e| WitnessError::Policy(format!("witness key `{v}`: {e}")))?;
            if witnesses
                .iter()
                .any(|(n, _): &(String, VerifyingKey)| *n == name)
            {
                return Err(WitnessError::Policy(format!(
                    "witness `{name}` named twice"
                )));
            }
            witnesses.push((name, key));
        }
        if quorum > witnesses.len() {
            return Err(WitnessError::Policy(format!(
                "quorum {quorum} exceeds the {} witnesses named",
                witnesses.len()
            )));
        }
        Ok(Policy { witnesses, quorum })
    }

    /// Checks that `note` carries valid cosignatures of at least `quorum` trusted witnesses;
    /// returns the names of those that cosigned. (The ledger's signature is checked apart.)
    pub fn check(&self, note: &SignedNote) -> Result<Vec<String>, WitnessError> {
        let mut ok = Vec::new();
        for (name, key) in &self.witnesses {
            if checkpoint::verify_cosignature(note, name, key).is_ok() {
                ok.push(name.clone());
            }
        }
        if ok.len() < self.quorum {
            return Err(WitnessError::Policy(format!(
                "{} of the {} trusted witnesses cosigned ({}), the policy needs {}",
                ok.len(),
                self.witnesses.len(),
                if ok.is_empty() {
                    "none".to_string()
                } else {
                    ok.join(", ")
                },
                self.quorum
            )));
        }
        Ok(ok)
    }
}

/// Adds a cosignature line (as a witness returned it) to a signed note.
pub fn add_cosignature(note: &str, line: &str) -> Result<String, WitnessError> {
    let mut signed = SignedNote::parse(note).map_err(|e| WitnessError::Note(e.to_string()))?;
    let sig = NoteSignature::parse_line(line.trim_end_matches('\n'))
        .map_err(|e| WitnessError::Note(format!("cosignature line: {e}")))?;
    signed.add_signature(sig);
    Ok(signed.to_note_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{sign_checkpoint, NoteSigner};
    use crate::merkle::{consistency_proof, MemoryTree};

    const ORIGIN: &str = "witness.test/ledger";

    fn tree(n: u64, salt: u8) -> MemoryTree<Blake3Hasher> {
        let mut t = MemoryTree::new();
        for i in 0..n {
            t.push(*blake3::hash(&[salt, i as u8]).as_bytes());
        }
        t
    }

    fn note(t: &MemoryTree<Blake3Hasher>, key: &SigningKey) -> String {
        sign_checkpoint(
            &Checkpoint {
                origin: ORIGIN.into(),
                size: t.size(),
                root: t.root(),
                extensions: vec![],
            },
            &NoteSigner::new(ORIGIN, key.clone()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn decide_covers_first_use_conflict_growth_rollback_and_forks() {
        let lk = SigningKey::from_bytes(&[1; 32]);
        let v = NoteVerifier::new(ORIGIN, lk.verifying_key()).unwrap();
        let (t5, t9, fork9) = (tree(5, 0), tree(9, 0), tree(9, 1));
        let at5 = Cosigned {
            size: 5,
            root: t5.root(),
        };
        // First use: any checkpoint the ledger signed.
        assert!(matches!(
            decide(&v, None, &note(&t5, &lk), 0, &[]),
            Ok(Decision::Cosign(c)) if c.size == 5
        ));
        // Offered from a size the witness is not at.
        assert_eq!(
            decide(&v, Some(&at5), &note(&t9, &lk), 0, &[]),
            Ok(Decision::Conflict { witness_size: 5 })
        );
        let proof = consistency_proof::<Blake3Hasher, _>(&t9, 5, 9).unwrap();
        assert!(matches!(
            decide(&v, Some(&at5), &note(&t9, &lk), 5, &proof),
            Ok(Decision::Cosign(c)) if c.size == 9
        ));
        // The same size again is fine with the same root, a fork with another.
        assert!(decide(&v, Some(&at5), &note(&t5, &lk), 5, &[]).is_ok());
        let other5 = tree(5, 1);
        assert_eq!(
            decide(&v, Some(&at5), &note(&other5, &lk), 5, &[]),
            Err(WitnessError::Fork { size: 5 })
        );
        // A proof from the fork's own tree does not connect to what was cosigned.
        let fork_proof = consistency_proof::<Blake3Hasher, _>(&fork9, 5, 9).unwrap();
        assert!(matches!(
            decide(&v, Some(&at5), &note(&fork9, &lk), 5, &fork_proof),
            Err(WitnessError::Inconsistent { from: 5, to: 9, .. })
        ));
        assert!(matches!(
            decide(&v, Some(&at5), &note(&t9, &lk), 5, &[]),
            Err(WitnessError::Inconsistent { .. })
        ));
        // Smaller: a rollback.
        assert_eq!(
            decide(&v, Some(&at5), &note(&tree(3, 0), &lk), 5, &[]),
            Err(WitnessError::Rollback {
                size: 3,
                cosigned: 5
            })
        );
        // Signed by another key.
        let other = SigningKey::from_bytes(&[2; 32]);
        assert!(matches!(
            decide(&v, Some(&at5), &note(&t9, &other), 5, &proof),
            Err(WitnessError::Note(_))
        ));
    }

    #[test]
    fn a_policy_counts_distinct_trusted_cosigners() {
        let lk = SigningKey::from_bytes(&[1; 32]);
        let n = note(&tree(4, 0), &lk);
        let ws: Vec<(String, SigningKey)> = (0..3)
            .map(|i| (format!("w{i}"), SigningKey::from_bytes(&[10 + i; 32])))
            .collect();
        let vkeys: Vec<String> = ws
            .iter()
            .map(|(name, k)| checkpoint::cosigner_vkey(name, &k.verifying_key()).unwrap())
            .collect();
        let mut cosigned = n.clone();
        for (name, k) in &ws[..2] {
            let line = cosign_line(&n, name, k, 1_700_000_000).unwrap();
            cosigned = add_cosignature(&cosigned, &line).unwrap();
        }
        // The same witness twice still counts once.
        let again = cosign_line(&n, &ws[0].0, &ws[0].1, 1_700_000_001).unwrap();
        let doubled = add_cosignature(&cosigned, &again).unwrap();
        let parse = |s: &str| SignedNote::parse(s).unwrap();
        let p2 = Policy::from_vkeys(&vkeys, 2).unwrap();
        let p3 = Policy::from_vkeys(&vkeys, 3).unwrap();
        assert_eq!(p2.check(&parse(&cosigned)).unwrap(), vec!["w0", "w1"]);
        assert!(p3.check(&parse(&doubled)).is_err());
        assert!(p2.check(&parse(&n)).is_err());
        assert!(Policy::from_vkeys(&vkeys, 4).is_err());
        assert!(Policy::from_vkeys(&[vkeys[0].clone(), vkeys[0].clone()], 1).is_err());
    }
}
