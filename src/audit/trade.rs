//! The two-way import / export check (进出口双向核查): per licence, what was licensed, what the
//! enterprise declared, what customs cleared and what the importing country endorsed — every
//! inequality, every counterpart missing after its deadline, every objection, and every export
//! made after the foreign side had objected to an earlier one under the same licence.

use super::permits::{permit, Summary};
use super::{se, AuditConfig};
use crate::ledger::views::{self, key, MovementView};
use crate::ledger::Refusal;
use crate::pb::PermitType;
use crate::store::ViewRead;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExceptionKind {
    /// No customs clearance after the deadline.
    ClearanceMissing,
    /// Customs cleared another quantity than was declared.
    ClearanceMismatch,
    /// An export with no endorsement from the importing country after the deadline.
    EndorsementMissing,
    /// The importing country endorsed another quantity than was exported.
    EndorsementMismatch,
    /// The importing country objected to the export.
    Objection,
    /// An export under this licence after the foreign side objected to an earlier one.
    ExportAfterObjection,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub kind: ExceptionKind,
    pub movement: u64,
    /// The clearance or endorsement entry (or, for an export after an objection, the
    /// objection's entry), when there is one.
    pub counterpart: Option<u64>,
    pub declared: u64,
    pub counterpart_quantity: u64,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeReconciliation {
    pub licence: Summary,
    pub declared: u64,
    pub cleared: u64,
    pub endorsed: u64,
    pub movements: Vec<MovementView>,
    pub exceptions: Vec<Exception>,
    pub as_of_ms: u64,
}

pub fn reconcile(
    r: &dyn ViewRead,
    cfg: &AuditConfig,
    licence_entry: u64,
    as_of_ms: u64,
) -> Result<TradeReconciliation, Refusal> {
    let p = permit(r, licence_entry)?.ok_or_else(|| {
        Refusal::not_found(format!("licence: entry {licence_entry} is not a permit"))
    })?;
    let t = PermitType::try_from(p.permit_type).unwrap_or(PermitType::Unspecified);
    if !matches!(t, PermitType::ImportLicence | PermitType::ExportLicence) {
        return Err(Refusal::invalid(format!(
            "licence: {} (entry {licence_entry}) is a {}, not an import or export licence",
            p.permit_no,
            t.as_str_name()
        )));
    }
    let mut movements = Vec::new();
    for (k, _) in r
        .scan_prefix(&key::licence_movements(licence_entry))
        .map_err(se)?
    {
        let Some(tail) = k.get(k.len().saturating_sub(8)..) else {
            continue;
        };
        let i = u64::from_be_bytes(tail.try_into().unwrap_or([0; 8]));
        let b = r
            .get(&key::movement(i))
            .map_err(se)?
            .ok_or_else(|| Refusal::internal(format!("movement {i} of licence {licence_entry}")))?;
        movements.push(views::decode::<MovementView>(b"mv/", &b).map_err(se)?);
    }
    movements.sort_by_key(|m| m.entry);
    let mut exceptions = Vec::new();
    let mut objected: Option<(u64, u64)> = None; // (endorsement entry, when it reached the ledger)
    for m in &movements {
        if let Some((e, at)) = objected.filter(|(_, at)| m.export && m.at_ms > *at) {
            exceptions.push(Exception {
                kind: ExceptionKind::ExportAfterObjection,
                movement: m.entry,
                counterpart: Some(e),
                declared: m.quantity,
                counterpart_quantity: 0,
                detail: format!(
                    "export {} was made {} ms after the objection recorded by entry {e}",
                    m.entry,
                    m.at_ms - at
                ),
            });
        }
        match &m.clearance {
            None if as_of_ms > m.at_ms.saturating_add(cfg.clearance_deadline_ms) => {
                exceptions.push(Exception {
                    kind: ExceptionKind::ClearanceMissing,
                    movement: m.entry,
                    counterpart: None,
                    declared: m.quantity,
                    counterpart_quantity: 0,
                    detail: format!(
                        "no customs clearance of entry {} after the deadline",
                        m.entry
                    ),
                });
            }
            Some(c) if c.quantity != m.quantity => exceptions.push(Exception {
                kind: ExceptionKind::ClearanceMismatch,
                movement: m.entry,
                counterpart: Some(c.entry),
                declared: m.quantity,
                counterpart_quantity: c.quantity,
                detail: format!(
                    "declared {}, customs cleared {} (declaration {})",
                    m.quantity, c.quantity, c.declaration_no
                ),
            }),
            _ => {}
        }
        if !m.export {
            continue;
        }
        match &m.endorsement {
            None if as_of_ms > m.at_ms.saturating_add(cfg.endorsement_deadline_ms) => {
                exceptions.push(Exception {
                    kind: ExceptionKind::EndorsementMissing,
                    movement: m.entry,
                    counterpart: None,
                    declared: m.quantity,
                    counterpart_quantity: 0,
                    detail: format!(
                        "no endorsement from {} of export {} after the deadline",
                        m.country, m.entry
                    ),
                });
            }
            Some(e) if e.objection => {
                exceptions.push(Exception {
                    kind: ExceptionKind::Objection,
                    movement: m.entry,
                    counterpart: Some(e.entry),
                    declared: m.quantity,
                    counterpart_quantity: 0,
                    detail: format!("{} objected: {}", e.country, e.objection_reason),
                });
                if objected.is_none() {
                    objected = Some((e.entry, e.at_ms));
                }
            }
            Some(e) if e.quantity != m.quantity => exceptions.push(Exception {
                kind: ExceptionKind::EndorsementMismatch,
                movement: m.entry,
                counterpart: Some(e.entry),
                declared: m.quantity,
                counterpart_quantity: e.quantity,
                detail: format!(
                    "exported {}, {} endorsed {} as imported",
                    m.quantity, e.country, e.quantity
                ),
            }),
            _ => {}
        }
    }
    let declared = movements.iter().map(|m| m.quantity).sum();
    let cleared = movements
        .iter()
        .filter_map(|m| m.clearance.as_ref().map(|c| c.quantity))
        .sum();
    let endorsed = movements
        .iter()
        .filter_map(|m| m.endorsement.as_ref().map(|e| e.quantity))
        .sum();
    Ok(TradeReconciliation {
        licence: Summary::of(p, as_of_ms),
        declared,
        cleared,
        endorsed,
        movements,
        exceptions,
        as_of_ms,
    })
}
