//! Building and signing records as a client does: keeps a key's chain position
//! (`signer_seq`, `signer_prev`) and turns a payload into a `SignedRecord`. Pure: no I/O.

use crate::codec;
use crate::crypto::{self, KeyId};
use crate::pb::{self, record_body::Payload};
use ed25519_dalek::SigningKey;

/// A signing key with its chain position on one ledger.
#[derive(Clone)]
pub struct RecordSigner {
    key: SigningKey,
    id: KeyId,
    origin: String,
    next_seq: u64,
    prev: [u8; 32],
}

impl RecordSigner {
    /// A signer at the start of its chain (seq 0).
    pub fn new(key: SigningKey, origin: &str) -> Self {
        let id = KeyId::of(&key.verifying_key());
        RecordSigner {
            key,
            id,
            origin: origin.to_string(),
            next_seq: 0,
            prev: [0; 32],
        }
    }

    /// Resumes at a chain position (from `GetSignerHead`).
    pub fn resume(mut self, next_seq: u64, prev: [u8; 32]) -> Self {
        self.next_seq = next_seq;
        self.prev = prev;
        self
    }

    pub fn key_id(&self) -> KeyId {
        self.id
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The body for the next record with `payload`, without advancing the chain.
    pub fn body(&self, payload: Payload, client_time_ms: u64) -> pb::RecordBody {
        pb::RecordBody {
            ledger_origin: self.origin.clone(),
            signer: self.id.0.to_vec(),
            signer_seq: self.next_seq,
            signer_prev: self.prev.to_vec(),
            client_time_ms,
            payload: Some(payload),
        }
    }

    /// Signs the next record and advances the chain.
    pub fn sign(&mut self, payload: Payload, client_time_ms: u64) -> pb::SignedRecord {
        let body = codec::encode_body(&self.body(payload, client_time_ms));
        self.sign_bytes(body, &[])
    }

    /// Signs the next record without advancing the chain: for a record that may be refused
    /// (a refused record takes no seq, so the next one must reuse it).
    pub fn sign_detached(&self, payload: Payload, client_time_ms: u64) -> pb::SignedRecord {
        let body = codec::encode_body(&self.body(payload, client_time_ms));
        pb::SignedRecord {
            signature: crypto::sign_record(&self.key, &body).to_vec(),
            body,
            cosignatures: vec![],
        }
    }

    /// Signs given body bytes (which must carry this signer's next seq and prev), with
    /// cosignatures by `cosigners`, and advances the chain.
    pub fn sign_bytes(&mut self, body: Vec<u8>, cosigners: &[&SigningKey]) -> pb::SignedRecord {
        let signature = crypto::sign_record(&self.key, &body).to_vec();
        let cosignatures = cosigners
            .iter()
            .map(|k| pb::Cosignature {
                key_id: KeyId::of(&k.verifying_key()).0.to_vec(),
                signature: crypto::cosign_record(k, &body).to_vec(),
            })
            .collect();
        self.next_seq += 1;
        self.prev = crypto::body_hash(&body);
        pb::SignedRecord {
            body,
            signature,
            cosignatures,
        }
    }
}

/// A quantity in milligrams.
pub fn mg(amount: u64) -> pb::Quantity {
    pb::Quantity {
        amount,
        unit: pb::Unit::Milligram as i32,
    }
}

/// A reference to an entry of `origin`.
pub fn entry_ref(origin: &str, index: u64, leaf_hash: &[u8]) -> pb::EntryRef {
    pb::EntryRef {
        origin: origin.to_string(),
        index,
        leaf_hash: leaf_hash.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_advances_and_links_bodies() {
        let mut s = RecordSigner::new(SigningKey::from_bytes(&[1; 32]), "o");
        let p = Payload::StockTake(pb::StockTake {
            site_id: "s".into(),
            counts: vec![],
        });
        let a = s.sign(p.clone(), 1);
        let b = s.sign(p, 2);
        let ba = codec::decode_body(&a.body).unwrap();
        let bb = codec::decode_body(&b.body).unwrap();
        assert_eq!((ba.signer_seq, bb.signer_seq), (0, 1));
        assert_eq!(ba.signer_prev, vec![0; 32]);
        assert_eq!(bb.signer_prev, crypto::body_hash(&a.body).to_vec());
        let vk = s.key().verifying_key();
        crypto::verify_record(&vk, &b.body, &b.signature).unwrap();
    }
}
