//! The ledger side of witnessing: after checkpoints, offer the latest to each configured
//! witness with a consistency proof from what that witness last cosigned, check the
//! cosignatures that come back, and publish the checkpoint once the policy's quorum has cosigned
//! it (`Ledger::publish_witnessed`, served by `GetCheckpoint { witnessed: true }`).

use crate::checkpoint::{self, SignedNote};
use crate::crypto::KeyId;
use crate::ledger::Ledger;
use crate::pb::{self, witness_client::WitnessClient};
use ed25519_dalek::VerifyingKey;
use std::time::Duration;
use tonic::transport::Channel;

/// A witness the ledger asks: where it is and who it is.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    /// Its cosigner key name and key (from its verifier key, `name+hash+base64`).
    pub name: String,
    pub key: VerifyingKey,
}

impl Target {
    /// Parses `VKEY@URL`.
    pub fn parse(s: &str) -> Result<Target, String> {
        let (vkey, url) = s.split_once('@').ok_or_else(|| {
            format!("`{s}`: expected VKEY@URL (the witness's verifier key, then its address)")
        })?;
        let (name, key) = checkpoint::parse_cosigner_vkey(vkey)
            .map_err(|e| format!("`{vkey}`: not a witness verifier key: {e}"))?;
        Ok(Target {
            url: url.to_string(),
            name,
            key,
        })
    }
}

/// The witnesses, the quorum, how often to ask.
#[derive(Debug, Clone)]
pub struct Witnessing {
    pub targets: Vec<Target>,
    pub quorum: usize,
    pub interval: Duration,
}

struct Peer {
    target: Target,
    client: Option<WitnessClient<Channel>>,
    /// The size this witness last cosigned, as far as the ledger knows.
    size: u64,
}

/// Asks the witnesses every `interval` while the ledger grows, until `stop` fires.
pub async fn run(ledger: Ledger, w: Witnessing, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut peers: Vec<Peer> = w
        .targets
        .iter()
        .map(|t| Peer {
            target: t.clone(),
            client: None,
            size: 0,
        })
        .collect();
    let mut published = ledger.witnessed().map_or(0, |(_, s)| s);
    loop {
        if let Ok((note, size, _)) = ledger.checkpoint() {
            if size > published {
                let mut lines = Vec::new();
                for p in &mut peers {
                    match offer(&ledger, p, &note, size).await {
                        Ok(line) => lines.push(line),
                        Err(e) => {
                            tracing::warn!(witness = %p.target.name, url = %p.target.url, "{e}")
                        }
                    }
                }
                if lines.len() >= w.quorum {
                    match publish(&ledger, &note, &lines) {
                        Ok(()) => published = size,
                        Err(e) => tracing::error!("publishing the witnessed checkpoint: {e}"),
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(w.interval) => {}
            _ = stop.changed() => return,
        }
    }
}

fn publish(ledger: &Ledger, note: &str, lines: &[String]) -> Result<(), String> {
    let mut n = note.to_string();
    for l in lines {
        n = crate::witness::add_cosignature(&n, l).map_err(|e| e.to_string())?;
    }
    ledger.publish_witnessed(&n).map_err(|e| e.to_string())
}

/// Offers `note` (of `size`) to one witness; returns its checked cosignature line.
async fn offer(ledger: &Ledger, p: &mut Peer, note: &str, size: u64) -> Result<String, String> {
    // Only a witness registered on the ledger, and not revoked, counts.
    let id = KeyId::of(&p.target.key);
    match ledger.key_info(&id).map_err(|e| e.to_string())? {
        Some(k) if k.role == pb::Role::Witness as i32 && k.revoked_at_ms.is_none() => {}
        Some(_) => return Err(format!("key {id} is not a live witness key on this ledger")),
        None => return Err(format!("key {id} is not registered on this ledger")),
    }
    if p.client.is_none() {
        let ep = tonic::transport::Endpoint::from_shared(p.target.url.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        let ch = super::coalesce::connect_endpoint(&ep)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        p.client = Some(WitnessClient::new(ch));
    }
    for _ in 0..2 {
        let proof = if p.size > 0 && p.size < size {
            ledger
                .consistency_proof(p.size, size)
                .map_err(|e| e.to_string())?
                .1
                .iter()
                .map(|h| h.to_vec())
                .collect()
        } else {
            vec![]
        };
        let client = p.client.as_mut().expect("connected above");
        let r = match client
            .add_checkpoint(pb::AddCheckpointRequest {
                old_size: p.size,
                consistency_proof: proof,
                checkpoint: note.to_string(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => {
                if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown {
                    p.client = None;
                }
                return Err(format!("refused: {:?}: {}", s.code(), s.message()));
            }
        };
        if r.conflict {
            if r.witness_size > size {
                return Err(format!(
                    "the witness has cosigned size {} but this ledger is at {size}",
                    r.witness_size
                ));
            }
            p.size = r.witness_size;
            continue;
        }
        let cosigned = crate::witness::add_cosignature(note, &r.cosignature)
            .map_err(|e| format!("its answer: {e}"))?;
        let parsed = SignedNote::parse(&cosigned).map_err(|e| e.to_string())?;
        checkpoint::verify_cosignature(&parsed, &p.target.name, &p.target.key)
            .map_err(|e| format!("its cosignature does not verify: {e}"))?;
        p.size = size;
        return Ok(r.cosignature);
    }
    Err("the witness's size kept changing".into())
}
