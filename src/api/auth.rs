//! Authenticated queries (docs/protocol.md §13).
//!
//! Every RPC but the public ones carries four metadata entries: `tz-key` (the caller's key id,
//! hex), `tz-time` (ms since the epoch), `tz-nonce` (16 random bytes, hex) and `tz-signature`
//! (hex Ed25519 over [`crypto::query_message`]: the gRPC path, the time, the nonce and the
//! BLAKE3 of the serialized request). The server checks the key is registered, of a role that
//! reads, valid and not revoked at this moment; the time is inside its window; the signature
//! verifies (`verify_strict`) over the request it decoded, re-serialized; and that it has not
//! seen this (key, nonce) before. [`Signed`] does the client's half over any tonic channel.
//!
//! Public, with no signature: submissions (the record's own signature authenticates them),
//! checkpoints, inclusion and consistency proofs, health and reflection.

use crate::audit::access::Access;
use crate::crypto::{self, KeyId};
use crate::ledger::Ledger;
use crate::pb;
use ed25519_dalek::SigningKey;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::body::Body;
use tonic::codegen::{http, Bytes, Service, StdError};
use tonic::{Request, Status};

pub const KEY_HEADER: &str = "tz-key";
pub const TIME_HEADER: &str = "tz-time";
pub const NONCE_HEADER: &str = "tz-nonce";
pub const SIGNATURE_HEADER: &str = "tz-signature";

/// Default replay window: a query's `tz-time` may differ from the server's clock by this much.
pub const DEFAULT_WINDOW_MS: u64 = 300_000;
/// Most (key, nonce) pairs remembered; past it, queries are refused until old ones expire.
pub const MAX_NONCES: usize = 1_000_000;

/// The RPCs anyone may call without signing.
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/taizhang.v1.Ledger/Submit"
            | "/taizhang.v1.Ledger/SubmitBatch"
            | "/taizhang.v1.Ledger/SubmitStream"
            | "/taizhang.v1.Ledger/GetCheckpoint"
            | "/taizhang.v1.Ledger/GetInclusionProof"
            | "/taizhang.v1.Ledger/GetConsistencyProof"
    ) || path.starts_with("/grpc.health.v1.")
        || path.starts_with("/grpc.reflection.")
}

/// Who is asking: a registered key and what it may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key: KeyId,
    pub role: pb::Role,
    pub access: Access,
}

/// Checks query signatures and remembers the nonces seen inside the window.
pub struct Gate {
    ledger: Ledger,
    window_ms: u64,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// BLAKE3(key id || nonce) → the query's time.
    at: HashMap<[u8; 32], u64>,
    /// The oldest time that may still be in `at` (pruning runs when the map has grown).
    pruned_at: u64,
}

fn unauthenticated(header: &str, rule: impl std::fmt::Display) -> Status {
    Status::unauthenticated(format!("{header}: {rule}"))
}

fn header<'a, T>(req: &'a Request<T>, name: &str) -> Result<&'a str, Status> {
    let v = req.metadata().get(name).ok_or_else(|| {
        unauthenticated(
            name,
            "required: this RPC needs a signed query (docs/protocol.md §13)",
        )
    })?;
    v.to_str()
        .map_err(|_| unauthenticated(name, "not printable ASCII"))
}

fn hex_exact<const N: usize>(name: &str, text: &str) -> Result<[u8; N], Status> {
    let bytes =
        hex::decode(text).map_err(|e| unauthenticated(name, format!("not lowercase hex: {e}")))?;
    bytes.as_slice().try_into().map_err(|_| {
        unauthenticated(
            name,
            format!(
                "must be {N} bytes ({} hex digits), found {}",
                2 * N,
                bytes.len()
            ),
        )
    })
}

impl Gate {
    pub fn new(ledger: Ledger, window_ms: u64) -> Gate {
        Gate {
            ledger,
            window_ms,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Authenticates the query `req` to `method` (its gRPC path) at the server's clock.
    pub fn check<T: prost::Message>(
        &self,
        req: &Request<T>,
        method: &str,
    ) -> Result<Caller, Status> {
        self.check_at(req, method, crate::ledger::now_ms())
    }

    /// As [`Gate::check`], at `now_ms`.
    pub fn check_at<T: prost::Message>(
        &self,
        req: &Request<T>,
        method: &str,
        now_ms: u64,
    ) -> Result<Caller, Status> {
        let key = KeyId(hex_exact::<16>(KEY_HEADER, header(req, KEY_HEADER)?)?);
        let time_text = header(req, TIME_HEADER)?;
        let time: u64 = time_text.parse().map_err(|_| {
            unauthenticated(
                TIME_HEADER,
                "must be milliseconds since the epoch, in decimal",
            )
        })?;
        let nonce = hex_exact::<16>(NONCE_HEADER, header(req, NONCE_HEADER)?)?;
        let sig = hex_exact::<64>(SIGNATURE_HEADER, header(req, SIGNATURE_HEADER)?)?;
        if time.abs_diff(now_ms) > self.window_ms {
            return Err(unauthenticated(
                TIME_HEADER,
                format!(
                    "{time} is {} s from the server's clock; queries must be signed within ±{} s",
                    time.abs_diff(now_ms) / 1000,
                    self.window_ms / 1000
                ),
            ));
        }
        let info = self
            .ledger
            .key_info(&key)
            .map_err(super::status)?
            .ok_or_else(|| unauthenticated(KEY_HEADER, format!("key {key} is not registered")))?;
        if let Some(at) = info.revoked_at_ms.filter(|t| *t <= now_ms) {
            return Err(unauthenticated(
                KEY_HEADER,
                format!(
                    "key {key} was revoked at {at} ms (entry {})",
                    info.revoked_by_entry.unwrap_or_default()
                ),
            ));
        }
        if now_ms < info.not_before_ms || (info.not_after_ms != 0 && now_ms > info.not_after_ms) {
            return Err(unauthenticated(
                KEY_HEADER,
                format!(
                    "key {key} is not valid now (valid {}..{})",
                    info.not_before_ms,
                    if info.not_after_ms == 0 {
                        "open-ended".to_string()
                    } else {
                        info.not_after_ms.to_string()
                    }
                ),
            ));
        }
        let vk = crypto::parse_public_key("public_key", &info.public_key)
            .map_err(|e| Status::internal(format!("registered key {key}: {e}")))?;
        crypto::verify_query(
            &vk,
            method,
            time,
            &nonce,
            &req.get_ref().encode_to_vec(),
            &sig,
        )
        .map_err(|_| {
            unauthenticated(
                SIGNATURE_HEADER,
                format!("does not verify for key {key} over this method, time, nonce and request"),
            )
        })?;
        let role = pb::Role::try_from(info.role).unwrap_or(pb::Role::Unspecified);
        let access = match role {
            pb::Role::Enterprise => Access::Enterprise(info.enterprise.clone()),
            pb::Role::Inspector | pb::Role::Regulator | pb::Role::RootRegulator => {
                if info.jurisdiction.is_empty() {
                    Access::All
                } else {
                    Access::Jurisdiction(info.jurisdiction.clone())
                }
            }
            pb::Role::Witness => {
                return Err(Status::permission_denied(format!(
                    "{KEY_HEADER}: key {key} is a witness key; witnesses only cosign checkpoints"
                )))
            }
            _ => {
                return Err(Status::permission_denied(format!(
                    "{KEY_HEADER}: key {key} has role {} which reads nothing",
                    role.as_str_name()
                )))
            }
        };
        self.remember(&key, &nonce, time, now_ms)?;
        Ok(Caller { key, role, access })
    }

    /// Records (key, nonce); refuses one already seen inside the window.
    fn remember(
        &self,
        key: &KeyId,
        nonce: &[u8; 16],
        time: u64,
        now_ms: u64,
    ) -> Result<(), Status> {
        let id = *blake3::Hasher::new()
            .update(&key.0)
            .update(nonce)
            .finalize()
            .as_bytes();
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| Status::internal("replay cache poisoned"))?;
        let oldest = now_ms.saturating_sub(self.window_ms);
        if seen.at.len() >= MAX_NONCES / 2 && seen.pruned_at < oldest {
            seen.at.retain(|_, t| *t >= oldest);
            seen.pruned_at = oldest;
        }
        if seen.at.contains_key(&id) {
            return Err(unauthenticated(
                NONCE_HEADER,
                format!("this nonce was already used by key {key}: a replayed query"),
            ));
        }
        if seen.at.len() >= MAX_NONCES {
            return Err(Status::unavailable(
                "too many queries inside the replay window; retry shortly",
            ));
        }
        seen.at.insert(id, time);
        Ok(())
    }
}

/// The client's half: signs every non-public request sent through it with `key`.
#[derive(Clone)]
pub struct Signed<S> {
    inner: S,
    key: Arc<SigningKey>,
}

/// A tonic channel that signs queries.
pub type SignedChannel = Signed<tonic::transport::Channel>;

impl<S> Signed<S> {
    pub fn new(inner: S, key: SigningKey) -> Signed<S> {
        Signed {
            inner,
            key: Arc::new(key),
        }
    }
}

/// Connects to `url` and signs queries with `key`.
pub async fn connect(
    url: impl Into<String>,
    key: SigningKey,
) -> Result<SignedChannel, tonic::transport::Error> {
    connect_tls(url, key, None).await
}

/// As [`connect`]; an `https://` URL is reached over TLS, trusting the PEM certificate
/// `ca_pem` (a CA or the server's own self-signed certificate).
pub async fn connect_tls(
    url: impl Into<String>,
    key: SigningKey,
    ca_pem: Option<&[u8]>,
) -> Result<SignedChannel, tonic::transport::Error> {
    Ok(Signed::new(
        super::coalesce::channel(url, ca_pem).await?,
        key,
    ))
}

/// The metadata for a query to `method` with serialized request `request`, signed now.
/// Fails only if the operating system's random source does.
pub fn query_headers(
    key: &SigningKey,
    method: &str,
    request: &[u8],
) -> Result<[(&'static str, String); 4], Status> {
    let mut nonce = [0u8; 16];
    getrandom::getrandom(&mut nonce)
        .map_err(|e| Status::internal(format!("signing a query: no nonce from the OS: {e}")))?;
    let time = crate::ledger::now_ms();
    let sig = crypto::sign_query(key, method, time, &nonce, request);
    Ok([
        (KEY_HEADER, KeyId::of(&key.verifying_key()).to_hex()),
        (TIME_HEADER, time.to_string()),
        (NONCE_HEADER, hex::encode(nonce)),
        (SIGNATURE_HEADER, hex::encode(sig)),
    ])
}

/// `message` as a request to `method` signed by `key` (for calling a service in-process, or a
/// client that is not a [`Signed`] channel).
pub fn signed_request<T: prost::Message>(
    key: &SigningKey,
    method: &str,
    message: T,
) -> Result<Request<T>, Status> {
    let headers = query_headers(key, method, &message.encode_to_vec())?;
    let mut req = Request::new(message);
    for (name, value) in headers {
        let value = value
            .parse()
            .map_err(|e| Status::internal(format!("{name}: {e}")))?;
        req.metadata_mut().insert(name, value);
    }
    Ok(req)
}

/// The message of a one-message gRPC request body (a 5-byte frame header, then the message).
fn grpc_message(body: &Bytes) -> Result<Bytes, Status> {
    if body.len() < 5 || body[0] != 0 {
        return Err(Status::internal(
            "signing a query: the request is not one uncompressed gRPC message",
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err(Status::internal(
            "signing a query: the request is not exactly one gRPC message",
        ));
    }
    Ok(body.slice(5..))
}

impl<S> Service<http::Request<Body>> for Signed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<StdError>,
{
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, StdError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), StdError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The ready service goes into the future; a fresh clone waits for the next call.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let key = self.key.clone();
        Box::pin(async move {
            if is_public(req.uri().path()) {
                return inner.call(req).await.map_err(Into::into);
            }
            let (mut parts, body) = req.into_parts();
            let bytes = body.collect().await?.to_bytes();
            let message = grpc_message(&bytes)?;
            for (name, value) in query_headers(&key, parts.uri.path(), &message)? {
                let value = http::HeaderValue::from_str(&value)
                    .map_err(|e| Status::internal(format!("{name}: {e}")))?;
                parts.headers.insert(name, value);
            }
            let req = http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)));
            inner.call(req).await.map_err(Into::into)
        })
    }
}
