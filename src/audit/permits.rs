//! Permit reconciliation (核销) and the permit lists.
//!
//! A permit's figures live in its view (ceiling, drawn, received, closure); its draw-downs are
//! the `d/<permit>` range, one shipment each with the buyer's receipt folded in when it comes.
//! So a reconciliation is one get and one range scan, whatever the size of the ledger.

use super::{se, AuditConfig};
use crate::ledger::views::{self, key, PermitState, PermitView, ShipmentView};
use crate::ledger::Refusal;
use crate::pb;
use crate::store::ViewRead;

/// How a draw-down stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrawStatus {
    Received,
    Short,
    InTransit,
    Overdue,
}

/// One shipment drawn on a permit, as the seller shipped it and the buyer received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawDown {
    pub shipment: ShipmentView,
    pub deadline_ms: u64,
    pub gap: u64,
    pub status: DrawStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchKind {
    QuantityGap,
    NotReceived,
    ReceivedLate,
    ReceivedWithoutShipment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub kind: MismatchKind,
    pub ship_entry: Option<u64>,
    pub receive_entry: Option<u64>,
    pub shipped: u64,
    pub received: u64,
    pub gap: u64,
    pub detail: String,
}

/// A permit's state and figures at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub permit: PermitView,
    pub state: PermitState,
    /// ceiling − drawn while open (0 without a ceiling, or once closed).
    pub remaining: u64,
    /// What closing it voided.
    pub void: u64,
}

impl Summary {
    pub fn of(permit: PermitView, as_of_ms: u64) -> Summary {
        let state = permit.state(as_of_ms);
        let remaining = if permit.ceiling == 0 {
            0
        } else {
            permit.remaining()
        };
        let void = permit.closed.as_ref().map_or(0, |c| c.void);
        Summary {
            permit,
            state,
            remaining,
            void,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    pub summary: Summary,
    pub draw_downs: Vec<DrawDown>,
    pub mismatches: Vec<Mismatch>,
    pub as_of_ms: u64,
}

/// The issue entry of the permit numbered `no`.
pub fn find(r: &dyn ViewRead, no: &str) -> Result<Option<u64>, Refusal> {
    match r.get(&key::permit_no(no)).map_err(se)? {
        Some(b) => Ok(Some(views::decode(b"pn/", &b).map_err(se)?)),
        None => Ok(None),
    }
}

pub fn permit(r: &dyn ViewRead, issue_entry: u64) -> Result<Option<PermitView>, Refusal> {
    match r.get(&key::permit(issue_entry)).map_err(se)? {
        Some(b) => Ok(Some(views::decode(b"p/", &b).map_err(se)?)),
        None => Ok(None),
    }
}

/// Reconciles the permit issued by entry `issue_entry` as of `as_of_ms`.
pub fn reconcile(
    r: &dyn ViewRead,
    cfg: &AuditConfig,
    issue_entry: u64,
    as_of_ms: u64,
) -> Result<Reconciliation, Refusal> {
    let p = permit(r, issue_entry)?.ok_or_else(|| {
        Refusal::not_found(format!("permit: entry {issue_entry} is not a permit"))
    })?;
    // Imports and exports draw on a licence without shipments: the two-way check is theirs.
    if matches!(
        pb::PermitType::try_from(p.permit_type),
        Ok(pb::PermitType::ImportLicence | pb::PermitType::ExportLicence)
    ) {
        return Err(Refusal::precondition(format!(
            "permit: {} is an import or export licence; its movements are reconciled by \
             ReconcileImportExport (taizhang audit trade {})",
            p.permit_no, p.permit_no
        )));
    }
    let mut draw_downs = Vec::with_capacity(p.draws as usize);
    let mut mismatches = Vec::new();
    for (k, v) in r.scan_prefix(&key::draws(issue_entry)).map_err(se)? {
        let s: ShipmentView = views::decode(&k, &v).map_err(se)?;
        let deadline_ms = if s.expected_delivery_ms > 0 {
            s.expected_delivery_ms
        } else {
            s.shipped_at_ms.saturating_add(cfg.receipt_deadline_ms)
        };
        let (gap, status) = match &s.received {
            Some(rv) if rv.quantity < s.quantity => {
                mismatches.push(Mismatch {
                    kind: MismatchKind::QuantityGap,
                    ship_entry: Some(s.ship_entry),
                    receive_entry: Some(rv.receive_entry),
                    shipped: s.quantity,
                    received: rv.quantity,
                    gap: s.quantity - rv.quantity,
                    detail: format!(
                        "shipment {} of {} received as {}: {} missing",
                        s.ship_entry,
                        s.quantity,
                        rv.quantity,
                        s.quantity - rv.quantity
                    ),
                });
                (s.quantity - rv.quantity, DrawStatus::Short)
            }
            Some(_) => (0, DrawStatus::Received),
            None if as_of_ms > deadline_ms => {
                mismatches.push(Mismatch {
                    kind: MismatchKind::NotReceived,
                    ship_entry: Some(s.ship_entry),
                    receive_entry: None,
                    shipped: s.quantity,
                    received: 0,
                    gap: s.quantity,
                    detail: format!(
                        "shipment {} of {} not received {} ms after its deadline",
                        s.ship_entry,
                        s.quantity,
                        as_of_ms - deadline_ms
                    ),
                });
                (s.quantity, DrawStatus::Overdue)
            }
            None => (s.quantity, DrawStatus::InTransit),
        };
        if let Some(rv) = &s.received {
            if rv.at_ms > deadline_ms {
                mismatches.push(Mismatch {
                    kind: MismatchKind::ReceivedLate,
                    ship_entry: Some(s.ship_entry),
                    receive_entry: Some(rv.receive_entry),
                    shipped: s.quantity,
                    received: rv.quantity,
                    gap: s.quantity.saturating_sub(rv.quantity),
                    detail: format!(
                        "shipment {} received {} ms after its deadline",
                        s.ship_entry,
                        rv.at_ms - deadline_ms
                    ),
                });
            }
        }
        draw_downs.push(DrawDown {
            shipment: s,
            deadline_ms,
            gap,
            status,
        });
    }
    let drawn: u64 = draw_downs.iter().map(|d| d.shipment.quantity).sum();
    let received: u64 = draw_downs
        .iter()
        .filter_map(|d| d.shipment.received.as_ref().map(|r| r.quantity))
        .sum();
    if received > drawn || p.received > p.drawn {
        mismatches.push(Mismatch {
            kind: MismatchKind::ReceivedWithoutShipment,
            ship_entry: None,
            receive_entry: None,
            shipped: drawn,
            received,
            gap: 0,
            detail: "the buyer's side holds more than the seller's".into(),
        });
    }
    if drawn != p.drawn || received != p.received || draw_downs.len() != p.draws as usize {
        // The permit's totals and its draw-down rows are written by the same entries; they can
        // only disagree if the views no longer match the log.
        return Err(Refusal::internal(format!(
            "permit {}: totals (drawn {}, received {}, {} draws) disagree with its draw-downs (drawn {drawn}, received {received}, {} rows); reindex the views",
            p.permit_no,
            p.drawn,
            p.received,
            p.draws,
            draw_downs.len()
        )));
    }
    Ok(Reconciliation {
        summary: Summary::of(p, as_of_ms),
        draw_downs,
        mismatches,
        as_of_ms,
    })
}

/// Which permits to list.
#[derive(Debug, Clone)]
pub enum Scope {
    Holder(String),
    /// An administrative division code or a prefix of one ("44" = Guangdong).
    Jurisdiction(String),
}

/// The permits in `scope`, in issue order, with state and remaining; at most `limit`, and
/// whether more matched.
pub fn list(
    r: &dyn ViewRead,
    scope: &Scope,
    as_of_ms: u64,
    states: &[PermitState],
    limit: usize,
) -> Result<(Vec<Summary>, bool), Refusal> {
    let prefix = match scope {
        Scope::Holder(h) => key::permits_of_holder(h),
        Scope::Jurisdiction(j) => key::permits_of_jurisdiction(j),
    };
    let mut out = Vec::new();
    let mut entries: Vec<u64> = r
        .scan_prefix(&prefix)
        .map_err(se)?
        .into_iter()
        .filter_map(|(k, _)| {
            let tail: [u8; 8] = k.get(k.len().checked_sub(8)?..)?.try_into().ok()?;
            Some(u64::from_be_bytes(tail))
        })
        .collect();
    entries.sort_unstable();
    let mut truncated = false;
    for e in entries {
        let Some(p) = permit(r, e)? else {
            continue;
        };
        let s = Summary::of(p, as_of_ms);
        if !states.is_empty() && !states.contains(&s.state) {
            continue;
        }
        if out.len() == limit {
            truncated = true;
            break;
        }
        out.push(s);
    }
    Ok((out, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyId;
    use crate::ledger::views::{encode, ReceivedView};
    use crate::store::{MemoryViews, ViewStore};

    fn permit(drawn: u64, received: u64, draws: u32) -> PermitView {
        PermitView {
            issue_entry: 5,
            permit_no: "P-1".into(),
            permit_type: crate::pb::PermitType::PurchaseFiling as i32,
            issuer: KeyId([1; 16]),
            jurisdiction: "440305".into(),
            holder: "B".into(),
            counterparty: String::new(),
            substance: "67-64-1".into(),
            ceiling: 1_000,
            not_before_ms: 0,
            not_after_ms: 1_000_000,
            single_use: false,
            origin_site: String::new(),
            destination_site: String::new(),
            consignee: String::new(),
            carrier: String::new(),
            issued_at_ms: 0,
            drawn,
            draws,
            received,
            closed: None,
        }
    }

    fn shipment(entry: u64, quantity: u64, received: Option<u64>) -> ShipmentView {
        ShipmentView {
            ship_entry: entry,
            from_enterprise: "S".into(),
            from_site: "s".into(),
            to_enterprise: "B".into(),
            to_site: "b".into(),
            substance: "67-64-1".into(),
            lot: "L".into(),
            quantity,
            shipped_at_ms: 100,
            expected_delivery_ms: 0,
            received: received.map(|q| ReceivedView {
                receive_entry: entry + 1,
                site: "b".into(),
                lot: "L".into(),
                quantity: q,
                at_ms: 200,
                corrected_by: vec![],
            }),
            carrier: String::new(),
            legs: vec![],
            permits: vec![5],
        }
    }

    fn store(p: &PermitView, rows: &[ShipmentView]) -> MemoryViews {
        let v = MemoryViews::default();
        let mut batch = vec![(key::permit(5), Some(encode(p)))];
        for s in rows {
            batch.push((key::draw(5, s.ship_entry), Some(encode(s))));
        }
        v.apply(batch).unwrap();
        v
    }

    /// The ledger refuses a receipt larger than its shipment, so this can only come from views
    /// that no longer match the log: the reconciliation must still say so.
    #[test]
    fn a_buyer_side_larger_than_the_seller_side_is_reported() {
        let rows = [shipment(10, 100, Some(120))];
        let v = store(&permit(100, 120, 1), &rows);
        let r = reconcile(v.snapshot().as_ref(), &AuditConfig::default(), 5, 300).unwrap();
        let kinds: Vec<_> = r.mismatches.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, vec![MismatchKind::ReceivedWithoutShipment]);
        assert_eq!(r.mismatches[0].shipped, 100);
        assert_eq!(r.mismatches[0].received, 120);
    }

    #[test]
    fn totals_that_disagree_with_the_draw_downs_are_an_error_not_an_answer() {
        let rows = [shipment(10, 100, None), shipment(20, 50, None)];
        // The permit says 100 drawn in one draw; its rows say 150 in two.
        let v = store(&permit(100, 0, 1), &rows);
        let e = reconcile(v.snapshot().as_ref(), &AuditConfig::default(), 5, 300).unwrap_err();
        assert!(e.message.contains("reindex"), "{}", e.message);
    }

    #[test]
    fn every_draw_status_and_deadline() {
        let cfg = AuditConfig {
            receipt_deadline_ms: 1_000,
            ..AuditConfig::default()
        };
        let mut late = shipment(40, 10, Some(10));
        late.expected_delivery_ms = 150; // received at 200
        let rows = [
            shipment(10, 10, Some(10)),
            shipment(20, 10, Some(7)),
            shipment(30, 10, None),
            late,
        ];
        let v = store(&permit(40, 27, 4), &rows);
        // At 500: shipment 30 left at 100, deadline 1,100: in transit.
        let r = reconcile(v.snapshot().as_ref(), &cfg, 5, 500).unwrap();
        let st: Vec<_> = r.draw_downs.iter().map(|d| d.status).collect();
        use DrawStatus::*;
        assert_eq!(st, vec![Received, Short, InTransit, Received]);
        assert_eq!(r.draw_downs[2].deadline_ms, 1_100);
        assert_eq!(r.draw_downs[3].deadline_ms, 150);
        let kinds: Vec<_> = r.mismatches.iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            vec![MismatchKind::QuantityGap, MismatchKind::ReceivedLate]
        );
        // At 2,000 it is overdue.
        let r = reconcile(v.snapshot().as_ref(), &cfg, 5, 2_000).unwrap();
        assert_eq!(r.draw_downs[2].status, Overdue);
        assert!(r
            .mismatches
            .iter()
            .any(|m| m.kind == MismatchKind::NotReceived && m.ship_entry == Some(30)));
        assert_eq!(r.summary.remaining, 960);
        assert_eq!(r.summary.state, PermitState::PartiallyUsed);
    }
}
