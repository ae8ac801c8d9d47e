//! The `taizhang.v1.Audit` service: audit results (domain types from `audit`) as protobuf,
//! every entry index turned into an `EntryRef` with its leaf hash.

use super::status;
use crate::audit::{permits, trade, AuditConfig};
use crate::ledger::views::{ClosedHow, PermitState};
use crate::ledger::Ledger;
use crate::pb;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct AuditService {
    ledger: Ledger,
    cfg: AuditConfig,
}

impl AuditService {
    pub fn new(ledger: Ledger, cfg: AuditConfig) -> Self {
        AuditService { ledger, cfg }
    }

    fn entry_ref(&self, index: u64) -> Result<pb::EntryRef, Status> {
        Refs::new(&self.ledger, &[index]).get(index)
    }

    fn as_of(ms: u64) -> u64 {
        if ms == 0 {
            crate::ledger::now_ms()
        } else {
            ms
        }
    }
}

pub fn state_pb(s: PermitState) -> pb::PermitState {
    match s {
        PermitState::Issued => pb::PermitState::Issued,
        PermitState::Active => pb::PermitState::Active,
        PermitState::PartiallyUsed => pb::PermitState::PartiallyUsed,
        PermitState::Exhausted => pb::PermitState::Exhausted,
        PermitState::Expired => pb::PermitState::Expired,
        PermitState::Revoked => pb::PermitState::Revoked,
        PermitState::WrittenOff => pb::PermitState::WrittenOff,
    }
}

fn state_from_pb(s: i32) -> Result<PermitState, Status> {
    Ok(match pb::PermitState::try_from(s) {
        Ok(pb::PermitState::Issued) => PermitState::Issued,
        Ok(pb::PermitState::Active) => PermitState::Active,
        Ok(pb::PermitState::PartiallyUsed) => PermitState::PartiallyUsed,
        Ok(pb::PermitState::Exhausted) => PermitState::Exhausted,
        Ok(pb::PermitState::Expired) => PermitState::Expired,
        Ok(pb::PermitState::Revoked) => PermitState::Revoked,
        Ok(pb::PermitState::WrittenOff) => PermitState::WrittenOff,
        _ => {
            return Err(Status::invalid_argument(format!(
                "states: {s} is not a permit state"
            )))
        }
    })
}

impl AuditService {
    fn summary_pb(&self, s: &permits::Summary) -> Result<pb::PermitSummary, Status> {
        let p = &s.permit;
        let unit = self
            .ledger
            .catalogue()
            .get(&p.substance)
            .map_or(pb::Unit::Unspecified, |x| x.unit);
        let closed = p.closed.as_ref();
        Ok(pb::PermitSummary {
            permit_no: p.permit_no.clone(),
            r#type: p.permit_type,
            holder: p.holder.clone(),
            counterparty: p.counterparty.clone(),
            substance: p.substance.clone(),
            unit: unit as i32,
            ceiling: p.ceiling,
            validity: Some(pb::Validity {
                not_before_ms: p.not_before_ms,
                not_after_ms: p.not_after_ms,
            }),
            single_use: p.single_use,
            state: state_pb(s.state) as i32,
            drawn: p.drawn,
            received: p.received,
            remaining: s.remaining,
            void: s.void,
            draw_downs: p.draws,
            issued_by: Some(self.entry_ref(p.issue_entry)?),
            closed_by: closed.map(|c| self.entry_ref(c.entry)).transpose()?,
            closed_reason: closed.map_or(String::new(), |c| match c.how {
                ClosedHow::SingleUse => "single use".into(),
                _ => c.reason.clone(),
            }),
            jurisdiction: p.jurisdiction.clone(),
            issuer_key: p.issuer.to_string(),
        })
    }
}

/// Entry references for a set of cited entries, their leaf hashes read under one lock.
struct Refs {
    origin: String,
    hashes: std::collections::HashMap<u64, [u8; 32]>,
}

impl Refs {
    fn new(ledger: &Ledger, indices: &[u64]) -> Refs {
        let hashes = indices
            .iter()
            .zip(ledger.leaf_hashes(indices))
            .filter_map(|(i, h)| Some((*i, h?)))
            .collect();
        Refs {
            origin: ledger.origin().to_string(),
            hashes,
        }
    }

    fn get(&self, index: u64) -> Result<pb::EntryRef, Status> {
        let h = self.hashes.get(&index).ok_or_else(|| {
            Status::internal(format!("entry {index} is cited but not in the tree"))
        })?;
        Ok(pb::EntryRef {
            origin: self.origin.clone(),
            index,
            leaf_hash: h.to_vec(),
        })
    }
}

fn draw_status(s: permits::DrawStatus) -> pb::DrawStatus {
    match s {
        permits::DrawStatus::Received => pb::DrawStatus::Received,
        permits::DrawStatus::Short => pb::DrawStatus::Short,
        permits::DrawStatus::InTransit => pb::DrawStatus::InTransit,
        permits::DrawStatus::Overdue => pb::DrawStatus::Overdue,
    }
}

fn mismatch_kind(k: permits::MismatchKind) -> pb::MismatchKind {
    match k {
        permits::MismatchKind::QuantityGap => pb::MismatchKind::QuantityGap,
        permits::MismatchKind::NotReceived => pb::MismatchKind::NotReceived,
        permits::MismatchKind::ReceivedLate => pb::MismatchKind::ReceivedLate,
        permits::MismatchKind::ReceivedWithoutShipment => pb::MismatchKind::ReceivedWithoutShipment,
    }
}

fn exception_kind(k: trade::ExceptionKind) -> pb::TradeExceptionKind {
    use pb::TradeExceptionKind as P;
    match k {
        trade::ExceptionKind::ClearanceMissing => P::ClearanceMissing,
        trade::ExceptionKind::ClearanceMismatch => P::ClearanceMismatch,
        trade::ExceptionKind::EndorsementMissing => P::EndorsementMissing,
        trade::ExceptionKind::EndorsementMismatch => P::EndorsementMismatch,
        trade::ExceptionKind::Objection => P::Objection,
        trade::ExceptionKind::ExportAfterObjection => P::ExportAfterObjection,
    }
}

impl AuditService {
    /// The issue entry a request names, by number or by `EntryRef`.
    fn permit_entry(
        &self,
        snap: &dyn crate::store::ViewRead,
        no: Option<String>,
        entry: Option<pb::EntryRef>,
    ) -> Result<u64, Status> {
        match (no, entry) {
            (Some(no), _) => permits::find(snap, &no).map_err(status)?.ok_or_else(|| {
                Status::not_found(format!("permit_no: no permit `{no}` on this ledger"))
            }),
            (None, Some(e)) => {
                if e.origin != self.ledger.origin() {
                    return Err(Status::invalid_argument(format!(
                        "entry.origin: `{}` is not this ledger",
                        e.origin
                    )));
                }
                if self.ledger.leaf_hash(e.index).map(|h| h.to_vec()) != Some(e.leaf_hash) {
                    return Err(Status::not_found(format!(
                        "entry: no entry {} with that leaf hash",
                        e.index
                    )));
                }
                Ok(e.index)
            }
            (None, None) => Err(Status::invalid_argument(
                "permit: name a permit_no or an entry",
            )),
        }
    }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn reconcile_import_export(
        &self,
        req: Request<pb::ReconcileImportExportRequest>,
    ) -> Result<Response<pb::TradeReconciliation>, Status> {
        use pb::reconcile_import_export_request::Licence;
        let r = req.into_inner();
        let as_of = Self::as_of(r.as_of_ms);
        let ledger_size: u64;
        let rec = {
            let snap = self.ledger.snapshot();
            // Read after the snapshot: the tree is extended before the views, so every entry
            // the snapshot shows is below this size.
            ledger_size = self.ledger.size();
            let (no, entry) = match r.licence {
                Some(Licence::PermitNo(n)) => (Some(n), None),
                Some(Licence::Entry(e)) => (None, Some(e)),
                None => (None, None),
            };
            let e = self.permit_entry(snap.as_ref(), no, entry)?;
            trade::reconcile(snap.as_ref(), &self.cfg, e, as_of).map_err(status)?
        };
        let cited: Vec<u64> = rec
            .movements
            .iter()
            .flat_map(|m| {
                [
                    Some(m.entry),
                    m.clearance.as_ref().map(|c| c.entry),
                    m.endorsement.as_ref().map(|e| e.entry),
                ]
            })
            .flatten()
            .chain(rec.exceptions.iter().filter_map(|e| e.counterpart))
            .collect();
        let refs = Refs::new(&self.ledger, &cited);
        let mut movements = Vec::with_capacity(rec.movements.len());
        for m in &rec.movements {
            let c = m.clearance.as_ref();
            let e = m.endorsement.as_ref();
            movements.push(pb::TradeMovement {
                entry: Some(refs.get(m.entry)?),
                export: m.export,
                enterprise: m.enterprise.clone(),
                site: m.site.clone(),
                substance: m.substance.clone(),
                lot: m.lot.clone(),
                declared: m.quantity,
                at_ms: m.at_ms,
                country: m.country.clone(),
                counterparty: m.counterparty.clone(),
                pen_reference: m.pen_reference.clone(),
                clearance: c.map(|c| refs.get(c.entry)).transpose()?,
                declaration_no: c.map_or(String::new(), |c| c.declaration_no.clone()),
                cleared: c.map_or(0, |c| c.quantity),
                cleared_ms: c.map_or(0, |c| c.cleared_ms),
                endorsement: e.map(|e| refs.get(e.entry)).transpose()?,
                endorsed: e.map_or(0, |e| e.quantity),
                endorsed_ms: e.map_or(0, |e| e.endorsed_ms),
                objection: e.is_some_and(|e| e.objection),
                objection_reason: e.map_or(String::new(), |e| e.objection_reason.clone()),
            });
        }
        let mut exceptions = Vec::with_capacity(rec.exceptions.len());
        for x in &rec.exceptions {
            exceptions.push(pb::TradeException {
                kind: exception_kind(x.kind) as i32,
                movement: Some(refs.get(x.movement)?),
                counterpart: x.counterpart.map(|i| refs.get(i)).transpose()?,
                declared: x.declared,
                counterpart_quantity: x.counterpart_quantity,
                detail: x.detail.clone(),
            });
        }
        Ok(Response::new(pb::TradeReconciliation {
            licensed: rec.licence.permit.ceiling,
            licence: Some(self.summary_pb(&rec.licence)?),
            declared: rec.declared,
            cleared: rec.cleared,
            endorsed: rec.endorsed,
            movements,
            exceptions,
            as_of_ms: as_of,
            ledger_size,
        }))
    }

    async fn reconcile_permit(
        &self,
        req: Request<pb::ReconcilePermitRequest>,
    ) -> Result<Response<pb::PermitReconciliation>, Status> {
        let r = req.into_inner();
        let as_of = Self::as_of(r.as_of_ms);
        let ledger_size: u64;
        let rec = {
            let snap = self.ledger.snapshot();
            // Read after the snapshot: the tree is extended before the views, so every entry
            // the snapshot shows is below this size.
            ledger_size = self.ledger.size();
            let (no, entry) = match r.permit {
                Some(pb::reconcile_permit_request::Permit::PermitNo(n)) => (Some(n), None),
                Some(pb::reconcile_permit_request::Permit::Entry(e)) => (None, Some(e)),
                None => (None, None),
            };
            let issue_entry = self.permit_entry(snap.as_ref(), no, entry)?;
            permits::reconcile(snap.as_ref(), &self.cfg, issue_entry, as_of).map_err(status)?
        };
        let cited: Vec<u64> = rec
            .draw_downs
            .iter()
            .flat_map(|d| {
                std::iter::once(d.shipment.ship_entry)
                    .chain(d.shipment.received.as_ref().map(|r| r.receive_entry))
            })
            .collect();
        let refs = Refs::new(&self.ledger, &cited);
        let mut draw_downs = Vec::with_capacity(rec.draw_downs.len());
        for d in &rec.draw_downs {
            let s = &d.shipment;
            let rv = s.received.as_ref();
            draw_downs.push(pb::DrawDown {
                ship: Some(refs.get(s.ship_entry)?),
                seller: s.from_enterprise.clone(),
                seller_site: s.from_site.clone(),
                consignee: s.to_enterprise.clone(),
                consignee_site: s.to_site.clone(),
                lot: s.lot.clone(),
                shipped: s.quantity,
                shipped_at_ms: s.shipped_at_ms,
                deadline_ms: d.deadline_ms,
                receive: rv.map(|r| refs.get(r.receive_entry)).transpose()?,
                received: rv.map_or(0, |r| r.quantity),
                received_at_ms: rv.map_or(0, |r| r.at_ms),
                gap: d.gap,
                status: draw_status(d.status) as i32,
            });
        }
        let mut mismatches = Vec::with_capacity(rec.mismatches.len());
        for m in &rec.mismatches {
            mismatches.push(pb::Mismatch {
                kind: mismatch_kind(m.kind) as i32,
                ship: m.ship_entry.map(|i| refs.get(i)).transpose()?,
                receive: m.receive_entry.map(|i| refs.get(i)).transpose()?,
                shipped: m.shipped,
                received: m.received,
                gap: m.gap,
                detail: m.detail.clone(),
            });
        }
        Ok(Response::new(pb::PermitReconciliation {
            permit: Some(self.summary_pb(&rec.summary)?),
            draw_downs,
            mismatches,
            as_of_ms: as_of,
            ledger_size,
        }))
    }

    async fn list_permits(
        &self,
        req: Request<pb::ListPermitsRequest>,
    ) -> Result<Response<pb::ListPermitsResponse>, Status> {
        let r = req.into_inner();
        let scope = match r.scope {
            Some(pb::list_permits_request::Scope::Holder(h)) if !h.is_empty() => {
                permits::Scope::Holder(h)
            }
            Some(pb::list_permits_request::Scope::Jurisdiction(j)) => {
                crate::model::check_region_code(&j, true)
                    .map_err(|e| Status::invalid_argument(format!("jurisdiction: {e}")))?;
                permits::Scope::Jurisdiction(j)
            }
            _ => {
                return Err(Status::invalid_argument(
                    "scope: name a holder or a jurisdiction",
                ))
            }
        };
        let states = r
            .states
            .iter()
            .map(|s| state_from_pb(*s))
            .collect::<Result<Vec<_>, _>>()?;
        let limit = match r.limit {
            0 => 1000,
            n => n.min(10_000) as usize,
        };
        let (list, truncated) = {
            let snap = self.ledger.snapshot();
            permits::list(
                snap.as_ref(),
                &scope,
                Self::as_of(r.as_of_ms),
                &states,
                limit,
            )
            .map_err(status)?
        };
        Ok(Response::new(pb::ListPermitsResponse {
            permits: list
                .iter()
                .map(|s| self.summary_pb(s))
                .collect::<Result<_, _>>()?,
            truncated,
        }))
    }
}
