//! The witness side: `taizhang.v1.Witness`, a service another department runs. It keeps the
//! last checkpoint it cosigned (`store::witness`), cosigns a new one only if it extends that one
//! (`witness::decide`), persists the new state before it answers, and never sees a payload.

use crate::checkpoint::{self, NoteVerifier};
use crate::merkle::Hash;
use crate::pb::{self, witness_server::WitnessServer};
use crate::store::witness::WitnessFile;
use crate::witness::{self, Cosigned, Decision, WitnessError};
use ed25519_dalek::SigningKey;
use std::sync::Mutex;
use tonic::{Request, Response, Status};

/// A witness: its key and name, the ledger it watches, and its state.
pub struct WitnessService {
    name: String,
    key: SigningKey,
    ledger: NoteVerifier,
    file: WitnessFile,
    /// The last cosigned checkpoint and its note; the lock orders concurrent offers.
    state: Mutex<Option<(Cosigned, String)>>,
}

impl WitnessService {
    /// A witness named `name` (its cosigner key name) watching the ledger whose checkpoints
    /// `ledger` verifies, with its state in `file`.
    pub fn open(
        name: &str,
        key: SigningKey,
        ledger: NoteVerifier,
        file: WitnessFile,
    ) -> Result<WitnessService, String> {
        checkpoint::cosigner_vkey(name, &key.verifying_key()).map_err(|e| format!("name: {e}"))?;
        let state = match file.load().map_err(|e| format!("state: {e}"))? {
            None => None,
            Some(note) => {
                let (cp, _) = checkpoint::open_checkpoint(&note, &ledger).map_err(|e| {
                    format!("state: the saved checkpoint does not open with the ledger key: {e}")
                })?;
                Some((
                    Cosigned {
                        size: cp.size,
                        root: cp.root,
                    },
                    note,
                ))
            }
        };
        Ok(WitnessService {
            name: name.to_string(),
            key,
            ledger,
            file,
            state: Mutex::new(state),
        })
    }

    /// This witness's verifier key (`name+hash+base64`).
    pub fn vkey(&self) -> String {
        checkpoint::cosigner_vkey(&self.name, &self.key.verifying_key()).expect("checked at open")
    }

    /// Handles one offer (the RPC without the transport).
    pub fn offer(
        &self,
        note: &str,
        old_size: u64,
        proof: &[Hash],
        now_secs: u64,
    ) -> Result<pb::AddCheckpointResponse, Status> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| Status::internal("witness state poisoned"))?;
        let current = state.as_ref().map(|(c, _)| c.clone());
        let refused = |e: WitnessError| match e {
            WitnessError::Note(_) => Status::invalid_argument(e.to_string()),
            _ => Status::failed_precondition(e.to_string()),
        };
        match witness::decide(&self.ledger, current.as_ref(), note, old_size, proof)
            .map_err(refused)?
        {
            Decision::Conflict { witness_size } => Ok(pb::AddCheckpointResponse {
                cosignature: String::new(),
                conflict: true,
                witness_size,
            }),
            Decision::Cosign(cp) => {
                let line =
                    witness::cosign_line(note, &self.name, &self.key, now_secs).map_err(refused)?;
                let cosigned = witness::add_cosignature(note, &line).map_err(refused)?;
                // Durable before the answer: a witness never forgets what it has cosigned.
                self.file
                    .save(&cosigned)
                    .map_err(|e| Status::unavailable(format!("saving the witness state: {e}")))?;
                *state = Some((
                    Cosigned {
                        size: cp.size,
                        root: cp.root,
                    },
                    cosigned,
                ));
                Ok(pb::AddCheckpointResponse {
                    cosignature: line,
                    conflict: false,
                    witness_size: cp.size,
                })
            }
        }
    }
}

#[tonic::async_trait]
impl pb::witness_server::Witness for std::sync::Arc<WitnessService> {
    async fn add_checkpoint(
        &self,
        req: Request<pb::AddCheckpointRequest>,
    ) -> Result<Response<pb::AddCheckpointResponse>, Status> {
        let r = req.into_inner();
        let mut proof = Vec::with_capacity(r.consistency_proof.len());
        for (i, h) in r.consistency_proof.iter().enumerate() {
            proof.push(<Hash>::try_from(h.as_slice()).map_err(|_| {
                Status::invalid_argument(format!(
                    "consistency_proof[{i}]: must be 32 bytes, found {}",
                    h.len()
                ))
            })?);
        }
        let now = crate::ledger::now_ms() / 1000;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.offer(&r.checkpoint, r.old_size, &proof, now))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
    }

    async fn get_witness_state(
        &self,
        _req: Request<pb::GetWitnessStateRequest>,
    ) -> Result<Response<pb::WitnessState>, Status> {
        let state = self
            .state
            .lock()
            .map_err(|_| Status::internal("witness state poisoned"))?;
        let (size, root, note) = match state.as_ref() {
            Some((c, n)) => (c.size, c.root.to_vec(), n.clone()),
            None => (0, vec![], String::new()),
        };
        Ok(Response::new(pb::WitnessState {
            origin: self.ledger.name().to_string(),
            size,
            root,
            note,
            vkey: self.vkey(),
        }))
    }
}

/// Serves a witness on `listener` until `shutdown`.
pub async fn serve(
    svc: std::sync::Arc<WitnessService>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<WitnessServer<std::sync::Arc<WitnessService>>>()
        .await;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(WitnessServer::new(svc))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await?;
    Ok(())
}
