//! Why the ledger refused or failed a request: one code per outcome class, and a message that
//! names the field and the rule. The gRPC layer maps `Code` to a status in one place.

use crate::store::StoreError;

/// Outcome classes (mirroring the gRPC codes they map to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum Code {
    InvalidArgument,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    AlreadyExists,
    NotFound,
    OutOfRange,
    Unimplemented,
    DataLoss,
    Unavailable,
    Internal,
}

/// A refused record or request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: Code,
    pub message: String,
}

impl Refusal {
    pub fn new(code: Code, message: String) -> Self {
        Refusal { code, message }
    }
    pub fn invalid(message: String) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    pub fn precondition(message: String) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }
    pub fn permission_denied(message: String) -> Self {
        Self::new(Code::PermissionDenied, message)
    }
    pub fn unauthenticated(message: String) -> Self {
        Self::new(Code::Unauthenticated, message)
    }
    pub fn already_exists(message: String) -> Self {
        Self::new(Code::AlreadyExists, message)
    }
    pub fn not_found(message: String) -> Self {
        Self::new(Code::NotFound, message)
    }
    pub fn out_of_range(message: String) -> Self {
        Self::new(Code::OutOfRange, message)
    }
    pub fn unimplemented(message: String) -> Self {
        Self::new(Code::Unimplemented, message)
    }
    pub fn unavailable(message: String) -> Self {
        Self::new(Code::Unavailable, message)
    }
    pub fn internal(message: String) -> Self {
        Self::new(Code::Internal, message)
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DataLoss { .. } => Refusal::new(Code::DataLoss, e.to_string()),
            StoreError::Io { .. } => Refusal::unavailable(format!("storage unavailable: {e}")),
            StoreError::Views(_) => Refusal::internal(format!("view store: {e}")),
        }
    }
}
