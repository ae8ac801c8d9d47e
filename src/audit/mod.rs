//! Audit queries: what inspectors ask of the ledger, answered from the views (never a scan of
//! the log) through one consistent snapshot, each figure citing the entries it rests on.
//!
//! Results are domain types; `api` turns them into protobuf and entry indices into
//! `EntryRef`s with their leaf hashes.

pub mod access;
pub mod balance;
pub mod losses;
pub mod permits;
pub mod picture;
pub mod reports;
pub mod spot;
pub mod trace;
pub mod trade;

use crate::ledger::Refusal;
use crate::store::StoreError;

/// Settings of the audit queries (configuration, not constants: DESIGN §6, issue #4).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// A shipment without an expected delivery time is overdue this long after it left.
    pub receipt_deadline_ms: u64,
    /// An import or export without customs' clearance this long after it is an exception.
    pub clearance_deadline_ms: u64,
    /// An export without the importing country's endorsement this long after it is an
    /// exception.
    pub endorsement_deadline_ms: u64,
    /// Measurement bands by substance id, in parts per million of the book (of the shipped
    /// quantity, for in-transit gaps). Absent = 0: no implicit tolerance, which is the rule for
    /// category 1 precursors and narcotics.
    pub tolerance_ppm: std::collections::BTreeMap<String, u32>,
    /// This many gaps (or count shortfalls) sharing a receiver, a route, a carrier or a site make
    /// a pattern (at least 2).
    pub pattern_min_events: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            receipt_deadline_ms: 7 * 86_400_000,
            clearance_deadline_ms: 30 * 86_400_000,
            endorsement_deadline_ms: 90 * 86_400_000,
            tolerance_ppm: Default::default(),
            pattern_min_events: 3,
        }
    }
}

/// 12345678 → "12,345,678" (for the people reading reports and pictures).
pub fn thousands(n: u128) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn se(e: StoreError) -> Refusal {
    Refusal::from(e)
}
