//! The `taizhang.v1.Audit` service: audit results (domain types from `audit`) as protobuf,
//! every entry index turned into an `EntryRef` with its leaf hash.

use super::auth::{Caller, Gate};
use super::status;
use crate::audit::access::{self, Access};
use crate::audit::{balance, losses, permits, picture, spot, trace, trade, AuditConfig};
use crate::ledger::views::Term;
use crate::ledger::views::{ClosedHow, PermitState};
use crate::ledger::Ledger;
use crate::pb;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct AuditService {
    ledger: Ledger,
    cfg: AuditConfig,
    gate: std::sync::Arc<Gate>,
}

/// The refusal for what is outside a reader's scope, worded the same whether or not it exists.
fn out_of_scope(field: &str, what: &str) -> Status {
    Status::permission_denied(format!(
        "{field}: {what} is not in your key's scope (an enterprise reads what it is party to, \
         an official its jurisdiction)"
    ))
}

/// For a scoped reader, "not found" becomes the out-of-scope refusal, so neither says whether
/// another party's permit or lot exists.
fn hide_absence(access: &Access, field: &str, what: &str, s: Status) -> Status {
    if !access.is_all() && s.code() == tonic::Code::NotFound {
        out_of_scope(field, what)
    } else {
        s
    }
}

impl AuditService {
    /// A balance as the wire has it, every entry it rests on cited (origin, index, leaf hash).
    fn balance_pb(
        &self,
        b: &balance::Balance,
        r: pb::MassBalanceRequest,
        ledger_size: u64,
    ) -> Result<pb::MassBalanceResponse, Status> {
        let cited: Vec<u64> = b
            .postings
            .iter()
            .flat_map(|p| [Some(p.entry), p.shipment, p.corrects])
            .flatten()
            .chain(b.count.as_ref().map(|c| c.entry))
            .collect();
        let refs = Refs::new(&self.ledger, &cited);
        let mut postings = Vec::with_capacity(b.postings.len());
        for p in &b.postings {
            postings.push(pb::BalancePosting {
                entry: Some(refs.get(p.entry)?),
                at_ms: p.at_ms,
                lot: p.lot.clone(),
                term: term_pb(p.term) as i32,
                quantity: sint(p.quantity)?,
                // A shipment's own row is the Ship entry: cite it once.
                shipment: p
                    .shipment
                    .filter(|&i| i != p.entry)
                    .map(|i| refs.get(i))
                    .transpose()?,
                corrects: p.corrects.map(|i| refs.get(i)).transpose()?,
            });
        }
        let count = match &b.count {
            Some(c) => Some(pb::CountFigure {
                entry: Some(refs.get(c.entry)?),
                at_ms: c.at_ms,
                counted: c.counted,
                book: c.book,
                variance: sint(c.variance)?,
                inspector: c.inspector,
            }),
            None => None,
        };
        let terms = b
            .terms
            .iter()
            .map(|(t, q)| {
                Ok(pb::TermFigure {
                    term: term_pb(*t) as i32,
                    quantity: sint(*q)?,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(pb::MassBalanceResponse {
            unit: self.unit(&r.substance),
            query: Some(r),
            opening: b.opening,
            terms,
            expected_closing: b.expected_closing,
            count,
            after_count: sint(b.after_count)?,
            tolerance: b.tolerance,
            status: balance_status(b.status) as i32,
            postings,
            truncated: b.truncated,
            ledger_size,
        })
    }

    pub fn new(ledger: Ledger, cfg: AuditConfig, gate: std::sync::Arc<Gate>) -> Self {
        AuditService { ledger, cfg, gate }
    }

    fn caller<T: prost::Message>(&self, req: &Request<T>, method: &str) -> Result<Caller, Status> {
        self.gate
            .check(req, &format!("/taizhang.v1.Audit/{method}"))
    }

    fn require_enterprise(&self, access: &Access, field: &str, code: &str) -> Result<(), Status> {
        let snap = self.ledger.snapshot();
        if access
            .covers_enterprise(snap.as_ref(), code)
            .map_err(status)?
        {
            Ok(())
        } else {
            Err(out_of_scope(field, &format!("enterprise `{code}`")))
        }
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

/// A drawn spot-check sample as protobuf; `entry` makes the `EntryRef` of a cited entry (the
/// server from its tree, an offline verifier from the export).
pub fn spot_pb(
    sample: &spot::Sample,
    note: &str,
    size: u64,
    root: &[u8; 32],
    cosignatures: u32,
    entry: &dyn Fn(u64) -> Result<pb::EntryRef, Status>,
) -> Result<pb::SelectSpotChecksResponse, Status> {
    let mut out = Vec::with_capacity(sample.drawn.len());
    for (i, ((enterprise, site), risk, weight)) in sample.drawn.iter().enumerate() {
        out.push(pb::SpotCheck {
            rank: i as u32 + 1,
            enterprise: enterprise.clone(),
            site: site.clone(),
            weight: *weight,
            volume: clamp64(risk.volume),
            category_factor: risk.category_factor,
            open_losses: risk.open_losses,
            variances: risk.variances,
            entries: risk
                .entries
                .iter()
                .map(|&e| entry(e))
                .collect::<Result<_, _>>()?,
        });
    }
    Ok(pb::SelectSpotChecksResponse {
        checkpoint: note.to_string(),
        size,
        root: root.to_vec(),
        seed: sample.seed.to_vec(),
        population: sample.population as u32,
        total_weight: sample.total_weight,
        sample: out,
        cosignatures,
    })
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

fn term_pb(t: Term) -> pb::BalanceTerm {
    match t {
        Term::Produced => pb::BalanceTerm::Produced,
        Term::Received => pb::BalanceTerm::Received,
        Term::Imported => pb::BalanceTerm::Imported,
        Term::AdjustedIn => pb::BalanceTerm::AdjustedIn,
        Term::Shipped => pb::BalanceTerm::Shipped,
        Term::Exported => pb::BalanceTerm::Exported,
        Term::Consumed => pb::BalanceTerm::Consumed,
        Term::Destroyed => pb::BalanceTerm::Destroyed,
        Term::Lost => pb::BalanceTerm::Lost,
        Term::AdjustedOut => pb::BalanceTerm::AdjustedOut,
    }
}

fn balance_status(s: balance::Status) -> pb::BalanceStatus {
    match s {
        balance::Status::Balanced => pb::BalanceStatus::Balanced,
        balance::Status::WithinTolerance => pb::BalanceStatus::WithinTolerance,
        balance::Status::Shortfall => pb::BalanceStatus::Shortfall,
        balance::Status::Surplus => pb::BalanceStatus::Surplus,
        balance::Status::NotCounted => pb::BalanceStatus::NotCounted,
    }
}

fn pattern_kind(k: losses::PatternKind) -> pb::PatternKind {
    match k {
        losses::PatternKind::Holder => pb::PatternKind::Holder,
        losses::PatternKind::Route => pb::PatternKind::Route,
        losses::PatternKind::Carrier => pb::PatternKind::Carrier,
        losses::PatternKind::Counts => pb::PatternKind::Counts,
    }
}

fn sint(q: i128) -> Result<i64, Status> {
    i64::try_from(q).map_err(|_| Status::out_of_range(format!("figure {q} exceeds sint64")))
}

fn clamp64(q: u128) -> u64 {
    u64::try_from(q).unwrap_or(u64::MAX)
}

fn required(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: is required")));
    }
    Ok(())
}

impl AuditService {
    fn unit(&self, substance: &str) -> i32 {
        self.ledger
            .catalogue()
            .get(substance)
            .map_or(pb::Unit::Unspecified, |x| x.unit) as i32
    }

    /// Runs `f` on one consistent snapshot; the ledger size is read after it, so every entry the
    /// snapshot shows is below it.
    fn on_snapshot<T>(
        &self,
        f: impl FnOnce(&dyn crate::store::ViewRead) -> Result<T, crate::ledger::Refusal>,
    ) -> Result<(T, u64), Status> {
        let snap = self.ledger.snapshot();
        let size = self.ledger.size();
        Ok((f(snap.as_ref()).map_err(status)?, size))
    }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn mass_balance(
        &self,
        req: Request<pb::MassBalanceRequest>,
    ) -> Result<Response<pb::MassBalanceResponse>, Status> {
        let access = self.caller(&req, "MassBalance")?.access;
        let mut r = req.into_inner();
        required("enterprise", &r.enterprise)?;
        self.require_enterprise(&access, "enterprise", &r.enterprise)?;
        required("site", &r.site)?;
        required("substance", &r.substance)?;
        if self.ledger.catalogue().get(&r.substance).is_none() {
            return Err(Status::invalid_argument(format!(
                "substance: `{}` is not in the catalogue",
                r.substance
            )));
        }
        if r.to_ms == 0 {
            r.to_ms = crate::ledger::now_ms() + 1;
        }
        if r.limit == 0 {
            r.limit = 1000;
        }
        if r.limit > 10_000 {
            return Err(Status::invalid_argument("limit: at most 10000"));
        }
        let q = balance::Query {
            enterprise: r.enterprise.clone(),
            site: r.site.clone(),
            substance: r.substance.clone(),
            lot: (!r.lot.is_empty()).then(|| r.lot.clone()),
            from_ms: r.from_ms,
            to_ms: r.to_ms,
            limit: r.limit as usize,
        };
        let (b, ledger_size) = self.on_snapshot(|snap| balance::balance(snap, &self.cfg, q))?;
        Ok(Response::new(self.balance_pb(&b, r, ledger_size)?))
    }

    async fn trace_lot(
        &self,
        req: Request<pb::TraceLotRequest>,
    ) -> Result<Response<pb::TraceLotResponse>, Status> {
        let access = self.caller(&req, "TraceLot")?.access;
        let r = req.into_inner();
        required("lot", &r.lot)?;
        let direction = match pb::TraceDirection::try_from(r.direction) {
            Ok(pb::TraceDirection::Both) => trace::Direction::Both,
            Ok(pb::TraceDirection::Forward) => trace::Direction::Forward,
            Ok(pb::TraceDirection::Backward) => trace::Direction::Backward,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "direction: {} is not a trace direction",
                    r.direction
                )))
            }
        };
        let max_edges = if r.max_edges == 0 {
            10_000
        } else {
            r.max_edges as usize
        };
        let what = format!("lot `{}`", r.lot);
        let (g, ledger_size) = self
            .on_snapshot(|snap| {
                let mut g = trace::trace(snap, &r.lot, direction, max_edges)?;
                if access.is_all() {
                    return Ok(Some(g));
                }
                let mut covers = |c: &str| access.covers_enterprise(snap, c);
                Ok(access::restrict_graph(&mut g, &mut covers)?.then_some(g))
            })
            .map_err(|s| hide_absence(&access, "lot", &what, s))?;
        let g = g.ok_or_else(|| out_of_scope("lot", &what))?;
        let cited: Vec<u64> = g
            .edges
            .iter()
            .flat_map(|e| {
                std::iter::once(e.ship_entry)
                    .chain(e.receive_entry)
                    .chain(e.legs.iter().copied())
            })
            .chain(g.nodes.iter().flat_map(|n| n.entries.iter().copied()))
            .collect();
        let refs = Refs::new(&self.ledger, &cited);
        let fig = |n: &trace::Node, t: Term| clamp64(n.figures.get(t.name()).copied().unwrap_or(0));
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for n in &g.nodes {
            nodes.push(pb::TraceNode {
                enterprise: n.enterprise.clone(),
                site: n.site.clone(),
                name: n.name.clone(),
                lots: n.lots.clone(),
                produced: fig(n, Term::Produced),
                received: fig(n, Term::Received),
                imported: fig(n, Term::Imported),
                shipped: fig(n, Term::Shipped),
                exported: fig(n, Term::Exported),
                consumed: fig(n, Term::Consumed),
                destroyed: fig(n, Term::Destroyed),
                lost: fig(n, Term::Lost),
                on_hand: n.on_hand,
                entries: n
                    .entries
                    .iter()
                    .map(|&i| refs.get(i))
                    .collect::<Result<_, _>>()?,
            });
        }
        let mut edges = Vec::with_capacity(g.edges.len());
        for e in &g.edges {
            edges.push(pb::TraceEdge {
                ship: Some(refs.get(e.ship_entry)?),
                from: e.from as u32,
                to: e.to as u32,
                lot: e.lot.clone(),
                shipped: e.shipped,
                shipped_at_ms: e.shipped_at_ms,
                receive: e.receive_entry.map(|i| refs.get(i)).transpose()?,
                received_lot: e.received_lot.clone().unwrap_or_default(),
                received: e.received.unwrap_or(0),
                received_at_ms: e.received_at_ms.unwrap_or(0),
                missing: e.missing,
                carrier: e.carrier.clone(),
                legs: e
                    .legs
                    .iter()
                    .map(|&i| refs.get(i))
                    .collect::<Result<_, _>>()?,
                seals_changed: e.seals_changed,
            });
        }
        Ok(Response::new(pb::TraceLotResponse {
            dot: picture::dot(&g),
            svg: picture::svg(&g),
            unit: self.unit(&g.substance),
            lot: g.lot,
            substance: g.substance,
            nodes,
            edges,
            lots: g.lots,
            truncated: g.truncated,
            ledger_size,
        }))
    }

    async fn find_losses(
        &self,
        req: Request<pb::FindLossesRequest>,
    ) -> Result<Response<pb::FindLossesResponse>, Status> {
        use pb::find_losses_request::Scope as S;
        let access = self.caller(&req, "FindLosses")?.access;
        let r = req.into_inner();
        let scope = match r.scope {
            Some(S::Enterprise(e)) if !e.is_empty() => losses::Scope::Enterprise(e),
            Some(S::Lot(l)) if !l.is_empty() => losses::Scope::Lot(l),
            Some(S::Jurisdiction(j)) if !j.is_empty() => losses::Scope::Jurisdiction(j),
            _ => {
                return Err(Status::invalid_argument(
                    "scope: name an enterprise, a lot or a jurisdiction",
                ))
            }
        };
        match &scope {
            losses::Scope::Enterprise(e) => {
                self.require_enterprise(&access, "scope.enterprise", e)?
            }
            losses::Scope::Jurisdiction(j) if !access.covers_jurisdiction(j) => {
                return Err(out_of_scope(
                    "scope.jurisdiction",
                    &format!("division `{j}`"),
                ))
            }
            _ => {}
        }
        let as_of = Self::as_of(r.as_of_ms);
        let to_ms = if r.to_ms == 0 { u64::MAX } else { r.to_ms };
        if to_ms <= r.from_ms {
            return Err(Status::invalid_argument(format!(
                "to_ms: {} must be after from_ms {}",
                r.to_ms, r.from_ms
            )));
        }
        let (f, ledger_size) = self.on_snapshot(|snap| {
            let mut f = losses::find(
                snap,
                &self.cfg,
                self.ledger.catalogue(),
                &scope,
                r.from_ms,
                to_ms,
                as_of,
            )?;
            if !access.is_all() {
                let mut covers = |c: &str| access.covers_enterprise(snap, c);
                access::restrict_losses(&mut f, &mut covers)?;
            }
            Ok(f)
        })?;
        let cited: Vec<u64> = f
            .losses
            .iter()
            .flat_map(|l| l.entries.iter().copied().chain(l.explained_by))
            .collect();
        let refs = Refs::new(&self.ledger, &cited);
        let mut out = Vec::with_capacity(f.losses.len());
        for (i, l) in f.losses.iter().enumerate() {
            let (kind, loss_kind) = match l.kind {
                losses::Kind::InTransitGap => (pb::LossPointKind::InTransitGap, 0),
                losses::Kind::NotReceived => (pb::LossPointKind::NotReceived, 0),
                losses::Kind::CountShortfall => (pb::LossPointKind::CountShortfall, 0),
                losses::Kind::Reported(k) => (pb::LossPointKind::Reported, k),
            };
            out.push(pb::LossPoint {
                kind: kind as i32,
                loss_kind,
                substance: l.substance.clone(),
                category: l.category,
                unit: self.unit(&l.substance),
                lot: l.lot.clone(),
                enterprise: l.enterprise.clone(),
                site: l.site.clone(),
                counterparty: l.counterparty.clone(),
                counterparty_site: l.counterparty_site.clone(),
                carrier: l.carrier.clone(),
                quantity: l.quantity,
                at_ms: l.at_ms,
                entries: l
                    .entries
                    .iter()
                    .map(|&e| refs.get(e))
                    .collect::<Result<_, _>>()?,
                detail: l.detail.clone(),
                explained_by: l.explained_by.map(|e| refs.get(e)).transpose()?,
                rank: i as u32 + 1,
            });
        }
        let patterns = f
            .patterns
            .iter()
            .map(|p| pb::LossPattern {
                kind: pattern_kind(p.kind) as i32,
                subject: p.subject.clone(),
                substance: p.substance.clone(),
                events: p.events as u32,
                quantity: p.quantity,
                losses: p.losses.iter().map(|&i| i as u32).collect(),
            })
            .collect();
        Ok(Response::new(pb::FindLossesResponse {
            losses: out,
            patterns,
            as_of_ms: as_of,
            ledger_size,
        }))
    }

    async fn reconcile_import_export(
        &self,
        req: Request<pb::ReconcileImportExportRequest>,
    ) -> Result<Response<pb::TradeReconciliation>, Status> {
        use pb::reconcile_import_export_request::Licence;
        let access = self.caller(&req, "ReconcileImportExport")?.access;
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
            let what = match (&no, &entry) {
                (Some(n), _) => format!("licence `{n}`"),
                (None, Some(e)) => format!("entry {}", e.index),
                _ => "the licence".into(),
            };
            let e = self
                .permit_entry(snap.as_ref(), no, entry)
                .map_err(|s| hide_absence(&access, "licence", &what, s))?;
            let rec = trade::reconcile(snap.as_ref(), &self.cfg, e, as_of)
                .map_err(|r| hide_absence(&access, "licence", &what, status(r)))?;
            let p = &rec.licence.permit;
            if !access
                .covers_any(snap.as_ref(), [p.holder.as_str()])
                .map_err(status)?
            {
                return Err(out_of_scope("licence", &what));
            }
            rec
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
        let access = self.caller(&req, "ReconcilePermit")?.access;
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
            let what = match (&no, &entry) {
                (Some(n), _) => format!("permit `{n}`"),
                (None, Some(e)) => format!("entry {}", e.index),
                _ => "the permit".into(),
            };
            let issue_entry = self
                .permit_entry(snap.as_ref(), no, entry)
                .map_err(|s| hide_absence(&access, "permit", &what, s))?;
            let rec = permits::reconcile(snap.as_ref(), &self.cfg, issue_entry, as_of)
                .map_err(|r| hide_absence(&access, "permit", &what, status(r)))?;
            let p = &rec.summary.permit;
            if !access
                .covers_any(
                    snap.as_ref(),
                    [
                        p.holder.as_str(),
                        p.counterparty.as_str(),
                        p.consignee.as_str(),
                        p.carrier.as_str(),
                    ],
                )
                .map_err(status)?
            {
                return Err(out_of_scope("permit", &what));
            }
            rec
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

    async fn select_spot_checks(
        &self,
        req: Request<pb::SelectSpotChecksRequest>,
    ) -> Result<Response<pb::SelectSpotChecksResponse>, Status> {
        let access = self.caller(&req, "SelectSpotChecks")?.access;
        let r = req.into_inner();
        if !r.jurisdiction.is_empty() {
            crate::model::check_region_code(&r.jurisdiction, true)
                .map_err(|e| Status::invalid_argument(format!("jurisdiction: {e}")))?;
        }
        if !access.covers_jurisdiction(&r.jurisdiction) {
            return Err(out_of_scope(
                "jurisdiction",
                &format!("division `{}`", r.jurisdiction),
            ));
        }
        if r.sample_size == 0 || r.sample_size > 1000 {
            return Err(Status::invalid_argument("sample_size: must be 1..=1000"));
        }
        let note = if r.checkpoint.is_empty() {
            self.ledger.witnessed().map(|(n, _)| n).ok_or_else(|| {
                Status::failed_precondition(
                    "checkpoint: no checkpoint has been witnessed yet; name one (a signed \
                         note of this ledger)",
                )
            })?
        } else {
            r.checkpoint.clone()
        };
        let verifier = crate::checkpoint::NoteVerifier::new(
            self.ledger.origin(),
            self.ledger.ledger_public_key(),
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        let (cp, signed) = crate::checkpoint::open_checkpoint(&note, &verifier)
            .map_err(|e| Status::invalid_argument(format!("checkpoint: {e}")))?;
        if self.ledger.root_at(cp.size) != Some(cp.root) {
            return Err(Status::invalid_argument(format!(
                "checkpoint: size {} with that root is not this ledger's log",
                cp.size
            )));
        }
        let ledger = self.ledger.clone();
        // The documented constant, not this server's setting: anyone must recompute the same.
        let deadline = spot::DEFAULT_RECEIPT_DEADLINE_MS;
        let size = cp.size;
        let j = r.jurisdiction.clone();
        let k = r.sample_size;
        let origin = cp.origin.clone();
        let root = cp.root;
        let sample = tokio::task::spawn_blocking(move || {
            let f = spot::gather(&ledger, ledger.catalogue(), size, deadline)?;
            Ok::<_, crate::ledger::Refusal>(spot::draw(
                f.population(&j),
                &origin,
                size,
                &root,
                &j,
                k,
            ))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)?;
        let cited: Vec<u64> = sample
            .drawn
            .iter()
            .flat_map(|(_, r, _)| r.entries.iter().copied())
            .collect();
        let refs = Refs::new(&self.ledger, &cited);
        let cosignatures = signed.signatures.len().saturating_sub(1) as u32;
        spot_pb(&sample, &note, size, &root, cosignatures, &|i| refs.get(i)).map(Response::new)
    }

    async fn sales_report(
        &self,
        req: Request<pb::SalesReportRequest>,
    ) -> Result<Response<pb::SalesReportResponse>, Status> {
        let access = self.caller(&req, "SalesReport")?.access;
        let r = req.into_inner();
        required("enterprise", &r.enterprise)?;
        self.require_enterprise(&access, "enterprise", &r.enterprise)?;
        let to_ms = if r.to_ms == 0 {
            crate::ledger::now_ms() + 1
        } else {
            r.to_ms
        };
        let (rep, _) = self.on_snapshot(|snap| {
            crate::audit::reports::sales(
                snap,
                self.ledger.catalogue(),
                &r.enterprise,
                r.from_ms,
                to_ms,
            )
        })?;
        let cited: Vec<u64> = rep.sales.iter().map(|s| s.shipment.ship_entry).collect();
        let refs = Refs::new(&self.ledger, &cited);
        let mut sales = Vec::with_capacity(rep.sales.len());
        for x in &rep.sales {
            let s = &x.shipment;
            sales.push(pb::Sale {
                ship: Some(refs.get(s.ship_entry)?),
                shipped_at_ms: s.shipped_at_ms,
                substance: s.substance.clone(),
                category: x.category,
                lot: s.lot.clone(),
                quantity: s.quantity,
                unit: self.unit(&s.substance),
                from_site: s.from_site.clone(),
                buyer: s.to_enterprise.clone(),
                buyer_name: x.buyer_name.clone(),
                buyer_site: s.to_site.clone(),
                permit_nos: x.permit_nos.clone(),
                carrier: s.carrier.clone(),
                received: s.received.as_ref().map(|v| v.quantity),
                due_ms: x.due_ms,
            });
        }
        Ok(Response::new(pb::SalesReportResponse {
            enterprise: rep.enterprise,
            name: rep.name,
            from_ms: r.from_ms,
            to_ms,
            sales,
            due_ms: rep.due_ms,
            excluded: rep.excluded as u32,
        }))
    }

    async fn annual_report(
        &self,
        req: Request<pb::AnnualReportRequest>,
    ) -> Result<Response<pb::AnnualReportResponse>, Status> {
        let access = self.caller(&req, "AnnualReport")?.access;
        let r = req.into_inner();
        required("enterprise", &r.enterprise)?;
        self.require_enterprise(&access, "enterprise", &r.enterprise)?;
        let (from_ms, to_ms, due_ms) =
            crate::audit::reports::annual_period(r.year).map_err(status)?;
        let limit = match r.limit {
            0 => 10_000,
            n if n > 10_000 => return Err(Status::invalid_argument("limit: at most 10000")),
            n => n,
        };
        let catalogue = self.ledger.catalogue();
        // One snapshot for every line, so the report is of one ledger state.
        let ((stocks, balances), ledger_size) = self.on_snapshot(|snap| {
            let stocks = crate::audit::reports::annual_stocks(snap, catalogue, &r.enterprise)?;
            let mut out = Vec::new();
            for (site, substance) in &stocks.stocks {
                let q = balance::Query {
                    enterprise: r.enterprise.clone(),
                    site: site.clone(),
                    substance: substance.clone(),
                    lot: None,
                    from_ms,
                    to_ms,
                    limit: limit as usize,
                };
                let b = balance::balance(snap, &self.cfg, q)?;
                if b.opening > 0 || b.terms.iter().any(|(_, q)| *q != 0) || b.count.is_some() {
                    out.push(b);
                }
            }
            Ok((stocks, out))
        })?;
        let mut lines = Vec::with_capacity(balances.len());
        for b in &balances {
            let q = pb::MassBalanceRequest {
                enterprise: r.enterprise.clone(),
                site: b.query.site.clone(),
                substance: b.query.substance.clone(),
                lot: String::new(),
                from_ms,
                to_ms,
                limit,
            };
            lines.push(self.balance_pb(b, q, ledger_size)?);
        }
        Ok(Response::new(pb::AnnualReportResponse {
            enterprise: r.enterprise,
            name: stocks.name,
            year: r.year,
            from_ms,
            to_ms,
            due_ms,
            lines,
            excluded: stocks.excluded as u32,
            ledger_size,
        }))
    }

    async fn list_permits(
        &self,
        req: Request<pb::ListPermitsRequest>,
    ) -> Result<Response<pb::ListPermitsResponse>, Status> {
        let access = self.caller(&req, "ListPermits")?.access;
        let r = req.into_inner();
        let scope = match r.scope {
            Some(pb::list_permits_request::Scope::Holder(h)) if !h.is_empty() => {
                self.require_enterprise(&access, "holder", &h)?;
                permits::Scope::Holder(h)
            }
            Some(pb::list_permits_request::Scope::Jurisdiction(j)) => {
                crate::model::check_region_code(&j, true)
                    .map_err(|e| Status::invalid_argument(format!("jurisdiction: {e}")))?;
                if !access.covers_jurisdiction(&j) {
                    return Err(out_of_scope("jurisdiction", &format!("division `{j}`")));
                }
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
