//! Audit queries: what inspectors ask of the ledger, answered from the views (never a scan of
//! the log) through one consistent snapshot, each figure citing the entries it rests on.
//!
//! Results are domain types; `api` turns them into protobuf and entry indices into
//! `EntryRef`s with their leaf hashes.

pub mod permits;
pub mod trade;

use crate::ledger::Refusal;
use crate::store::StoreError;

/// Settings of the audit queries (configuration, not constants: DESIGN §6, issue #4).
#[derive(Debug, Clone, Copy)]
pub struct AuditConfig {
    /// A shipment without an expected delivery time is overdue this long after it left.
    pub receipt_deadline_ms: u64,
    /// An import or export without customs' clearance this long after it is an exception.
    pub clearance_deadline_ms: u64,
    /// An export without the importing country's endorsement this long after it is an
    /// exception.
    pub endorsement_deadline_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            receipt_deadline_ms: 7 * 86_400_000,
            clearance_deadline_ms: 30 * 86_400_000,
            endorsement_deadline_ms: 90 * 86_400_000,
        }
    }
}

fn se(e: StoreError) -> Refusal {
    Refusal::from(e)
}
