//! Custody after goods arrive: use (`Consume`), supervised destruction (`Destroy`, with an
//! inspector's co-signature), losses (`LossReport`), the carrier's legs of a shipment
//! (`TransportLeg`), inspectors' counts (`Inspection`), corrections (`Correction`: they never
//! edit, they add), and two-person control (双人双锁) over stock in and out.

use super::error::Refusal;
use super::rules::{
    enterprise_of, entry_ref, ident, invalid, licensed, licensed_for, lot_of, moved, precondition,
    quantity, se, site, substance, text, Ctx, Moved,
};
use super::stock::{self, Change, Counted};
use super::views::*;
use crate::crypto::KeyId;
use crate::model::ids::within;
use crate::pb::{self, record_body::Payload, Activity, LegKind, LossKind, Role};

/// Records that entry `ctx.index` posted `q` to `term` of `h`, so a correction can amend it.
pub(super) fn posted(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    kind: &str,
    term: Term,
    h: &Holding<'_>,
    q: u64,
) {
    v.put(
        key::posted(ctx.index),
        &PostedView {
            kind: kind.to_string(),
            term,
            enterprise: h.enterprise.to_string(),
            site: h.site.to_string(),
            substance: h.substance.to_string(),
            lot: h.lot.to_string(),
            quantity: q,
            at_ms: ctx.now_ms,
            corrected_by: Vec::new(),
        },
    );
}

/// Takes `q` out of holding `h` for a `kind` record (use, destruction, loss), and records the
/// posting so a correction can amend it.
fn take_out(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    kind: &str,
    term: Term,
    h: &Holding<'_>,
    q: u64,
) -> Result<(), Refusal> {
    stock::prepare(
        ctx,
        v,
        h,
        Change::Move {
            term,
            quantity: q,
            shipment: None,
        },
        &format!("{kind}.quantity.amount"),
    )?
    .write(v);
    posted(ctx, v, kind, term, h, q);
    Ok(())
}

/// The cosigners' keys.
fn cosigners(ctx: &Ctx<'_>, v: &Views<'_>) -> Result<Vec<(KeyId, KeyInfo)>, Refusal> {
    ctx.cosigners
        .iter()
        .map(|id| {
            v.get::<KeyInfo>(&key::key(id))
                .map_err(se)?
                .map(|k| (*id, k))
                .ok_or_else(|| Refusal::internal(format!("cosigner {id} is not registered")))
        })
        .collect()
}

/// Two-person control (双人双锁): a stock-in or stock-out of a substance whose category the
/// ledger's policy names carries the co-signature of a second registered person of the same
/// enterprise — another key of the enterprise, held by someone else.
pub(super) fn two_person(
    ctx: &Ctx<'_>,
    v: &Views<'_>,
    signer: &KeyInfo,
    s: &crate::model::Substance,
    kind: &str,
) -> Result<(), Refusal> {
    let Some(classes) = ctx.two_person else {
        return Ok(());
    };
    if !classes.contains(&(s.category as i32)) {
        return Ok(());
    }
    let ok = cosigners(ctx, v)?.iter().any(|(_, k)| {
        k.role == Role::Enterprise as i32
            && k.enterprise == signer.enterprise
            && !same_person(&k.holder, &signer.holder)
    });
    if !ok {
        return Err(Refusal::permission_denied(format!(
            "record.cosignatures: `{kind}` of {} ({}) is under two-person control: it needs the co-signature of a second registered person of {} (another enterprise key, another holder than `{}`)",
            s.id,
            s.category.as_str_name(),
            signer.enterprise,
            signer.holder
        )));
    }
    Ok(())
}

/// Holders are names of people: compared without case and surrounding space, so "Alice" and
/// "alice " are one person.
fn same_person(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

/// A destruction is witnessed: an inspector covering the enterprise's jurisdiction cosigns it.
fn inspector_cosigned(
    ctx: &Ctx<'_>,
    v: &Views<'_>,
    ent: &EnterpriseView,
    field: &str,
) -> Result<KeyId, Refusal> {
    cosigners(ctx, v)?
        .into_iter()
        .find(|(_, k)| k.role == Role::Inspector as i32 && within(&k.jurisdiction, &ent.jurisdiction))
        .map(|(id, _)| id)
        .ok_or_else(|| {
            Refusal::permission_denied(format!(
                "{field}: a destruction needs the co-signature of an inspector covering `{}` over the same body; none of its {} cosignatures is one",
                ent.jurisdiction,
                ctx.cosigners.len()
            ))
        })
}

pub(super) fn consume(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    id: &KeyId,
    signer: &KeyInfo,
    p: &pb::Consume,
) -> Result<(), Refusal> {
    let Moved {
        ent,
        substance: s,
        quantity: q,
    } = moved(
        ctx,
        v,
        id,
        signer,
        "consume",
        &p.site_id,
        &p.substance,
        p.quantity.as_ref(),
        &p.lot,
    )?;
    lot_of(v, "consume.lot", &p.lot, s)?;
    // Used in production (a producer) or used / dispensed (a user).
    if licensed_for(v, &ent, s, Activity::Produce, ctx.now_ms).is_err() {
        licensed_for(v, &ent, s, Activity::Use, ctx.now_ms)?;
    }
    required_text("consume.purpose", &p.purpose, 256)?;
    two_person(ctx, v, signer, s, "consume")?;
    let h = Holding {
        enterprise: &ent.credit_code,
        site: &p.site_id,
        substance: &s.id,
        lot: &p.lot,
    };
    take_out(ctx, v, "consume", Term::Consumed, &h, q)?;
    Ok(())
}

fn required_text(field: &str, t: &str, max: usize) -> Result<(), Refusal> {
    if t.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    text(field, t, max)
}

pub(super) fn destroy(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    id: &KeyId,
    signer: &KeyInfo,
    p: &pb::Destroy,
) -> Result<(), Refusal> {
    let Moved {
        ent,
        substance: s,
        quantity: q,
    } = moved(
        ctx,
        v,
        id,
        signer,
        "destroy",
        &p.site_id,
        &p.substance,
        p.quantity.as_ref(),
        &p.lot,
    )?;
    lot_of(v, "destroy.lot", &p.lot, s)?;
    required_text("destroy.method", &p.method, 256)?;
    required_text("destroy.application_ref", &p.application_ref, 128)?;
    inspector_cosigned(ctx, v, &ent, "record.cosignatures")?;
    two_person(ctx, v, signer, s, "destroy")?;
    let h = Holding {
        enterprise: &ent.credit_code,
        site: &p.site_id,
        substance: &s.id,
        lot: &p.lot,
    };
    take_out(ctx, v, "destroy", Term::Destroyed, &h, q)?;
    Ok(())
}

fn loss_particulars(field: &str, kind: i32, police_ref: &str) -> Result<(), Refusal> {
    let k = LossKind::try_from(kind)
        .ok()
        .filter(|k| *k != LossKind::Unspecified)
        .ok_or_else(|| {
            invalid(
                &format!("{field}.kind"),
                format!("{kind} is not THEFT, ROBBERY, DISAPPEARANCE or SPILLAGE"),
            )
        })?;
    if k != LossKind::Spillage && police_ref.trim().is_empty() {
        return Err(invalid(
            &format!("{field}.police_report_ref"),
            format!(
                "a {} is reported to public security at once: the police report reference is required",
                k.as_str_name().trim_start_matches("LOSS_KIND_").to_lowercase()
            ),
        ));
    }
    text(&format!("{field}.police_report_ref"), police_ref, 128)
}

pub(super) fn loss_report(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    id: &KeyId,
    signer: &KeyInfo,
    p: &pb::LossReport,
) -> Result<(), Refusal> {
    let Moved {
        ent,
        substance: s,
        quantity: q,
    } = moved(
        ctx,
        v,
        id,
        signer,
        "loss_report",
        &p.site_id,
        &p.substance,
        p.quantity.as_ref(),
        &p.lot,
    )?;
    lot_of(v, "loss_report.lot", &p.lot, s)?;
    loss_particulars("loss_report", p.kind, &p.police_report_ref)?;
    // A loss takes stock out like any stock-out: under two-person control, two people say so.
    two_person(ctx, v, signer, s, "loss_report")?;
    let h = Holding {
        enterprise: &ent.credit_code,
        site: &p.site_id,
        substance: &s.id,
        lot: &p.lot,
    };
    take_out(ctx, v, "loss_report", Term::Lost, &h, q)?;
    v.put(
        key::loss(&ent.credit_code, ctx.index),
        &LossView {
            entry: ctx.index,
            kind: p.kind,
            police_report_ref: p.police_report_ref.clone(),
            site: p.site_id.clone(),
            substance: s.id.clone(),
            lot: p.lot.clone(),
            quantity: q,
            at_ms: ctx.now_ms,
        },
    );
    Ok(())
}

/// Writes a shipment and every permit's copy of it.
pub(super) fn put_shipment(v: &mut Views<'_>, shipment: &ShipmentView) {
    for &permit in &shipment.permits {
        v.put(key::draw(permit, shipment.ship_entry), shipment);
    }
    v.put(key::shipment(shipment.ship_entry), shipment);
}

pub(super) fn shipment_at(v: &Views<'_>, field: &str, ship: u64) -> Result<ShipmentView, Refusal> {
    v.get::<ShipmentView>(&key::shipment(ship))
        .map_err(se)?
        .ok_or_else(|| precondition(field, format!("entry {ship} is not a shipment")))
}

pub(super) fn transport_leg(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    id: &KeyId,
    signer: &KeyInfo,
    p: &pb::TransportLeg,
) -> Result<(), Refusal> {
    let ent = enterprise_of(v, signer, id)?;
    let ship = entry_ref(ctx, "transport_leg.ship", p.ship.as_ref())?;
    let mut shipment = shipment_at(v, "transport_leg.ship", ship)?;
    let kind = LegKind::try_from(p.kind)
        .ok()
        .filter(|k| *k != LegKind::Unspecified)
        .ok_or_else(|| {
            invalid(
                "transport_leg.kind",
                format!("{} is not PICKUP, HANDOVER or DELIVERY", p.kind),
            )
        })?;
    required_text("transport_leg.location", &p.location, 256)?;
    if p.seal_numbers.is_empty() || p.seal_numbers.len() > 32 {
        return Err(invalid(
            "transport_leg.seal_numbers",
            "must name 1 to 32 seals",
        ));
    }
    for (i, seal) in p.seal_numbers.iter().enumerate() {
        ident(&format!("transport_leg.seal_numbers[{i}]"), seal)?;
    }
    if kind != LegKind::Handover && !p.next_carrier.is_empty() {
        return Err(invalid(
            "transport_leg.next_carrier",
            "only a handover names a next carrier",
        ));
    }
    let pickup = shipment.legs.first().cloned();
    let delivered = shipment
        .legs
        .iter()
        .find(|l| l.kind == LegKind::Delivery as i32)
        .map(|l| l.entry);
    if shipment.carrier.is_empty() {
        return Err(precondition(
            "transport_leg.ship",
            format!("shipment {ship} names no carrier"),
        ));
    }
    if let (Some(r), LegKind::Pickup | LegKind::Handover) = (&shipment.received, kind) {
        return Err(precondition(
            "transport_leg.ship",
            format!(
                "shipment {ship} was received by entry {}; its transport is over",
                r.receive_entry
            ),
        ));
    }
    match (kind, &pickup, delivered) {
        (LegKind::Pickup, Some(first), _) => {
            return Err(Refusal::already_exists(format!(
                "transport_leg.kind: shipment {ship} was picked up by entry {}",
                first.entry
            )))
        }
        (LegKind::Handover | LegKind::Delivery, None, _) => {
            return Err(precondition(
                "transport_leg.kind",
                format!("shipment {ship} has not been picked up"),
            ))
        }
        (LegKind::Delivery, Some(_), Some(d)) => {
            return Err(Refusal::already_exists(format!(
                "transport_leg.kind: shipment {ship} was delivered by entry {d}"
            )))
        }
        (LegKind::Handover, Some(_), Some(d)) => {
            return Err(precondition(
                "transport_leg.kind",
                format!("shipment {ship} was delivered by entry {d}"),
            ))
        }
        _ => {}
    }
    let custodian = shipment.custodian().to_string();
    if ent.credit_code != custodian {
        return Err(Refusal::permission_denied(format!(
            "transport_leg.ship: shipment {ship} is in the custody of carrier {custodian}; {} may not record its legs",
            ent.credit_code
        )));
    }
    if kind == LegKind::Handover {
        if p.next_carrier == custodian {
            return Err(invalid(
                "transport_leg.next_carrier",
                "a handover passes the goods to another carrier",
            ));
        }
        let next = v
            .get::<EnterpriseView>(&key::enterprise(&p.next_carrier))
            .map_err(se)?
            .ok_or_else(|| {
                precondition(
                    "transport_leg.next_carrier",
                    format!("`{}` is not an enrolled enterprise", p.next_carrier),
                )
            })?;
        let s = substance(ctx, "transport_leg.ship", &shipment.substance)?;
        licensed(&next, s.category, Activity::Transport, ctx.now_ms).map_err(|r| {
            Refusal::precondition(format!("transport_leg.next_carrier: {}", r.message))
        })?;
    }
    let mut seals = p.seal_numbers.clone();
    seals.sort();
    let seals_changed = pickup.as_ref().is_some_and(|first| {
        let mut at_pickup = first.seals.clone();
        at_pickup.sort();
        at_pickup != seals
    });
    shipment.legs.push(LegView {
        entry: ctx.index,
        kind: kind as i32,
        carrier: ent.credit_code.clone(),
        location: p.location.clone(),
        seals: p.seal_numbers.clone(),
        next_carrier: p.next_carrier.clone(),
        at_ms: ctx.now_ms,
        seals_changed,
    });
    put_shipment(v, &shipment);
    Ok(())
}

pub(super) fn inspection(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer: &KeyInfo,
    p: &pb::Inspection,
) -> Result<(), Refusal> {
    let ent = v
        .get::<EnterpriseView>(&key::enterprise(&p.enterprise))
        .map_err(se)?
        .ok_or_else(|| {
            precondition(
                "inspection.enterprise",
                format!("`{}` is not an enrolled enterprise", p.enterprise),
            )
        })?;
    if !within(&signer.jurisdiction, &ent.jurisdiction) {
        return Err(Refusal::permission_denied(format!(
            "inspection.enterprise: {} (`{}`) is outside the inspector's jurisdiction `{}`",
            ent.credit_code, ent.jurisdiction, signer.jurisdiction
        )));
    }
    site(&ent, "inspection.site_id", &p.site_id)?;
    for (i, seal) in p.seals_checked.iter().enumerate() {
        ident(&format!("inspection.seals_checked[{i}]"), seal)?;
    }
    text("inspection.notes", &p.notes, 4000)?;
    if p.counts.is_empty() && p.seals_checked.is_empty() && p.notes.trim().is_empty() {
        return Err(invalid(
            "inspection",
            "records a finding: counts, seals checked or notes",
        ));
    }
    let counts = checked_counts(ctx, v, "inspection.counts", &p.counts)?;
    if !counts.is_empty() {
        stock::count(ctx, v, &ent.credit_code, &p.site_id, &counts, true)?;
    }
    Ok(())
}

/// The counts of a stock take or inspection, checked: known substances, base units, each lot
/// once, at most 1000.
pub(super) fn checked_counts<'p>(
    ctx: &Ctx<'_>,
    v: &Views<'_>,
    field: &str,
    counts: &'p [pb::StockCount],
) -> Result<Vec<Counted<'p>>, Refusal> {
    if counts.len() > 1000 {
        return Err(invalid(field, "at most 1000 counts per record"));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(counts.len());
    for (i, c) in counts.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let s = substance(ctx, &format!("{f}.substance"), &c.substance)?;
        let q = quantity(&format!("{f}.quantity"), c.quantity.as_ref(), s, true)?;
        ident(&format!("{f}.lot"), &c.lot)?;
        if let Some(l) = v.get::<LotView>(&key::lot(&c.lot)).map_err(se)? {
            if l.substance != s.id {
                return Err(invalid(
                    &format!("{f}.lot"),
                    format!("lot `{}` is {}, not {}", c.lot, l.substance, s.id),
                ));
            }
        }
        if !seen.insert((c.substance.as_str(), c.lot.as_str())) {
            return Err(invalid(
                &f,
                format!("{} lot `{}` counted twice", c.substance, c.lot),
            ));
        }
        out.push(Counted {
            substance: &c.substance,
            lot: &c.lot,
            quantity: q,
        });
    }
    Ok(out)
}

/// What a replacement states: site, substance, lot and quantity of a movement of the kind it
/// replaces.
struct Restated {
    kind: &'static str,
    site: String,
    substance: String,
    lot: String,
    quantity: Option<pb::Quantity>,
}

fn replacement(p: &pb::Correction) -> Result<Option<Payload>, Refusal> {
    if p.replacement.is_empty() {
        return Ok(None);
    }
    let body = crate::codec::decode_body(&p.replacement).map_err(|e| {
        invalid(
            "correction.replacement",
            format!("is not a serialized RecordBody: {e}"),
        )
    })?;
    if !body.ledger_origin.is_empty()
        || !body.signer.is_empty()
        || body.signer_seq != 0
        || !body.signer_prev.is_empty()
        || body.client_time_ms != 0
    {
        return Err(invalid(
            "correction.replacement",
            "carries only the payload (origin, signer, seq, prev and time come from the correction itself)",
        ));
    }
    body.payload
        .map(Some)
        .ok_or_else(|| invalid("correction.replacement", "has no payload"))
}

fn restated(r: &Payload) -> Option<Restated> {
    let (kind, site, substance, lot, quantity) = match r {
        Payload::Produce(m) => ("produce", &m.site_id, &m.substance, &m.lot, m.quantity),
        Payload::Consume(m) => ("consume", &m.site_id, &m.substance, &m.lot, m.quantity),
        Payload::Destroy(m) => ("destroy", &m.site_id, &m.substance, &m.lot, m.quantity),
        Payload::LossReport(m) => ("loss_report", &m.site_id, &m.substance, &m.lot, m.quantity),
        _ => return None,
    };
    Some(Restated {
        kind,
        site: site.clone(),
        substance: substance.clone(),
        lot: lot.clone(),
        quantity,
    })
}

pub(super) fn correction(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    id: &KeyId,
    signer: &KeyInfo,
    p: &pb::Correction,
) -> Result<(), Refusal> {
    let ent = enterprise_of(v, signer, id)?;
    let corrects = entry_ref(ctx, "correction.corrects", p.corrects.as_ref())?;
    required_text("correction.reason", &p.reason, 1000)?;
    required_text("correction.approver", &p.approver, 128)?;
    let r = replacement(p)?;
    let posted = match v.get::<PostedView>(&key::posted(corrects)).map_err(se)? {
        Some(posted) => Some(posted),
        None => produced(ctx, v, corrects)?,
    };
    if let Some(posted) = posted {
        if posted.enterprise != ent.credit_code {
            return Err(not_correctable(corrects, &ent));
        }
        return correct_posted(ctx, v, signer, &ent, corrects, posted, r.as_ref());
    }
    if let Some(counted) = v.get::<CountedView>(&key::counted(corrects)).map_err(se)? {
        if counted.enterprise != ent.credit_code {
            return Err(not_correctable(corrects, &ent));
        }
        return accept_count(ctx, v, signer, corrects, counted, r.is_some());
    }
    match r {
        Some(Payload::Receive(rcv)) => correct_receipt(ctx, v, signer, &ent, corrects, &rcv),
        _ => Err(not_correctable(corrects, &ent)),
    }
}

/// The posting of entry `entry` if it is a produce not corrected before: a produce creates its
/// lot, so the lot's view and the first row of its first holding's journal say all a
/// `PostedView` would (one view write fewer for every produce). A corrected produce has its
/// `PostedView`, written by the correction.
fn produced(ctx: &Ctx<'_>, v: &Views<'_>, entry: u64) -> Result<Option<PostedView>, Refusal> {
    let leaf = (ctx.leaf_of)(entry)?;
    let body = crate::codec::decode_body(&leaf.body)
        .map_err(|e| Refusal::internal(format!("entry {entry}: {e}")))?;
    let Some(Payload::Produce(p)) = body.payload else {
        return Ok(None);
    };
    let lot = v
        .get::<LotView>(&key::lot(&p.lot))
        .map_err(se)?
        .filter(|l| l.created_by_entry == entry)
        .ok_or_else(|| Refusal::internal(format!("entry {entry}: its lot `{}`", p.lot)))?;
    let h = Holding {
        enterprise: &lot.created_by,
        site: &lot.site,
        substance: &lot.substance,
        lot: &p.lot,
    };
    // The produce is the first row of its lot's first holding: inline in the lot's book, or
    // (a row too long to go inline) the first row of the block at its own key.
    let row = match lot.book.journal.inline.is_empty() {
        false => decode_rows(&key::lot(&p.lot), &lot.book.journal.inline),
        true => {
            let k = key::at(&key::journal(&h), leaf.integrated_time_ms, entry);
            match v.raw_get(&k).map_err(se)? {
                Some(block) => decode_rows(&k, &block),
                None => Ok(Vec::new()),
            }
        }
    }
    .map_err(se)?
    .into_iter()
    .next()
    .filter(|r| r.entry == entry);
    let Some(JournalRow {
        event:
            Event::Move {
                term: Term::Produced,
                quantity,
                ..
            },
        ..
    }) = row
    else {
        return Err(Refusal::internal(format!(
            "entry {entry}: the journal row of its produce"
        )));
    };
    Ok(Some(PostedView {
        kind: "produce".into(),
        term: Term::Produced,
        enterprise: lot.created_by.clone(),
        site: lot.site.clone(),
        substance: lot.substance.clone(),
        lot: p.lot.clone(),
        quantity,
        at_ms: leaf.integrated_time_ms,
        corrected_by: Vec::new(),
    }))
}

fn not_correctable(entry: u64, ent: &EnterpriseView) -> Refusal {
    precondition(
        "correction.corrects",
        format!(
            "entry {entry} is not a produce, consume, destroy, loss report or count of {}, nor (with a replacement Receive) its receipt; shipments, imports, exports and regulator records are not corrected by an enterprise",
            ent.credit_code
        ),
    )
}

fn correct_posted(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer: &KeyInfo,
    ent: &EnterpriseView,
    corrects: u64,
    mut posted: PostedView,
    r: Option<&Payload>,
) -> Result<(), Refusal> {
    let s = substance(ctx, "correction.corrects", &posted.substance)?;
    let new_q = match r {
        None => 0,
        Some(r) => {
            let st = restated(r)
                .filter(|st| st.kind == posted.kind)
                .ok_or_else(|| {
                    invalid(
                        "correction.replacement",
                        format!(
                            "entry {corrects} is a `{}`; its replacement must be one too",
                            posted.kind
                        ),
                    )
                })?;
            if (st.site.as_str(), st.substance.as_str(), st.lot.as_str())
                != (
                    posted.site.as_str(),
                    posted.substance.as_str(),
                    posted.lot.as_str(),
                )
            {
                return Err(invalid(
                    "correction.replacement",
                    format!(
                        "a correction amends what entry {corrects} states, not where: it must keep site `{}`, substance {} and lot `{}` (record a new movement instead)",
                        posted.site, posted.substance, posted.lot
                    ),
                ));
            }
            let q = quantity(
                &format!("correction.replacement.{}.quantity", posted.kind),
                st.quantity.as_ref(),
                s,
                false,
            )?;
            match r {
                Payload::Consume(c) => {
                    required_text("correction.replacement.consume.purpose", &c.purpose, 256)?
                }
                Payload::Destroy(d) => {
                    required_text("correction.replacement.destroy.method", &d.method, 256)?;
                    required_text(
                        "correction.replacement.destroy.application_ref",
                        &d.application_ref,
                        128,
                    )?;
                }
                Payload::LossReport(l) => loss_particulars(
                    "correction.replacement.loss_report",
                    l.kind,
                    &l.police_report_ref,
                )?,
                _ => {}
            }
            q
        }
    };
    let delta = new_q as i128 - posted.quantity as i128;
    if posted.term == Term::Destroyed {
        inspector_cosigned(ctx, v, ent, "record.cosignatures")?;
    }
    if matches!(
        posted.term,
        Term::Produced | Term::Consumed | Term::Destroyed
    ) {
        two_person(ctx, v, signer, s, "correction")?;
    }
    let loss = if posted.term == Term::Lost {
        let k = key::loss(&posted.enterprise, corrects);
        let mut loss = v
            .get::<LossView>(&k)
            .map_err(se)?
            .ok_or_else(|| Refusal::internal(format!("loss report {corrects} has no view")))?;
        loss.quantity = new_q;
        if let Some(Payload::LossReport(l)) = r {
            loss.kind = l.kind;
            loss.police_report_ref = l.police_report_ref.clone();
        }
        Some((k, loss))
    } else {
        None
    };
    let h = Holding {
        enterprise: &posted.enterprise,
        site: &posted.site,
        substance: &posted.substance,
        lot: &posted.lot,
    };
    if let Some((k, loss)) = loss {
        v.put(k, &loss);
    }
    if delta != 0 {
        let delta = i64::try_from(delta)
            .map_err(|_| invalid("correction.replacement", "the change exceeds i64"))?;
        stock::prepare(
            ctx,
            v,
            &h,
            Change::Correct {
                term: posted.term,
                corrects,
                delta,
            },
            "correction.replacement",
        )?
        .write(v);
    }
    posted.quantity = new_q;
    posted.corrected_by.push(ctx.index);
    v.put(key::posted(corrects), &posted);
    Ok(())
}

/// A correction of a count accepts its variances into the books (an explained difference, with
/// a reason and an approver); a miscount is fixed by counting again, not by a correction.
fn accept_count(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer: &KeyInfo,
    corrects: u64,
    mut counted: CountedView,
    with_replacement: bool,
) -> Result<(), Refusal> {
    if with_replacement {
        return Err(invalid(
            "correction.replacement",
            format!("entry {corrects} is a count: a miscount is fixed by a new count; a correction of a count carries no replacement and accepts its variances into the books"),
        ));
    }
    if let Some(by) = counted.accepted_by {
        return Err(Refusal::already_exists(format!(
            "correction.corrects: the variances of count {corrects} were accepted by entry {by}"
        )));
    }
    let mut any = false;
    // Each lot's posting is written before the next is prepared: lots of one substance share
    // the site × substance totals. (A refusal part-way rolls the whole record back.)
    for (substance, lot, count, book) in &counted.lots {
        if count == book {
            continue;
        }
        let s = super::rules::substance(ctx, "correction.corrects", substance)?;
        two_person(ctx, v, signer, s, "correction")?;
        let h = Holding {
            enterprise: &counted.enterprise,
            site: &counted.site,
            substance,
            lot,
        };
        // The variance is measured against the book at the count; if another count's variance
        // was accepted into this lot since, that book is gone and this count says nothing more.
        let at_count = v
            .get::<JournalRow>(&key::at(&key::lot_counts(&h), counted.at_ms, corrects))
            .map_err(se)?
            .map(|r| r.totals)
            .unwrap_or_default();
        let now = v.totals(&h).map_err(se)?;
        let adjusted = |t: &Totals| (t.get(Term::AdjustedIn), t.get(Term::AdjustedOut));
        if adjusted(&at_count) != adjusted(&now) {
            return Err(precondition(
                "correction.corrects",
                format!(
                    "lot `{lot}` was adjusted by another count's acceptance after count {corrects}: count again"
                ),
            ));
        }
        let (term, delta) = if count > book {
            if v.get::<LotView>(&key::lot(lot)).map_err(se)?.is_none() {
                return Err(precondition(
                    "correction.corrects",
                    format!(
                        "count {corrects} found {} of lot `{lot}`, which does not exist: goods of unknown origin are not booked by a correction",
                        count - book
                    ),
                ));
            }
            (Term::AdjustedIn, count - book)
        } else {
            (Term::AdjustedOut, book - count)
        };
        let delta = i64::try_from(delta)
            .map_err(|_| invalid("correction.corrects", "the variance exceeds i64"))?;
        stock::prepare(
            ctx,
            v,
            &h,
            Change::Correct {
                term,
                corrects,
                delta,
            },
            "correction.corrects",
        )?
        .write(v);
        any = true;
    }
    if !any {
        return Err(precondition(
            "correction.corrects",
            format!("count {corrects} agrees with the book: there is no variance to accept"),
        ));
    }
    counted.accepted_by = Some(ctx.index);
    v.put(key::counted(corrects), &counted);
    Ok(())
}

fn correct_receipt(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer: &KeyInfo,
    ent: &EnterpriseView,
    corrects: u64,
    r: &pb::Receive,
) -> Result<(), Refusal> {
    let ship = entry_ref(ctx, "correction.replacement.receive.ship", r.ship.as_ref())?;
    let mut shipment = shipment_at(v, "correction.replacement.receive.ship", ship)?;
    let Some(received) = shipment
        .received
        .clone()
        .filter(|rv| rv.receive_entry == corrects && shipment.to_enterprise == ent.credit_code)
    else {
        return Err(not_correctable(corrects, ent));
    };
    let lot = if r.lot.is_empty() {
        shipment.lot.clone()
    } else {
        r.lot.clone()
    };
    if r.site_id != received.site || lot != received.lot {
        return Err(invalid(
            "correction.replacement",
            format!(
                "a correction of receipt {corrects} keeps its site `{}` and lot `{}`",
                received.site, received.lot
            ),
        ));
    }
    let s = substance(ctx, "correction.replacement", &shipment.substance)?;
    let q = quantity(
        "correction.replacement.receive.quantity",
        r.quantity.as_ref(),
        s,
        false,
    )?;
    if q > shipment.quantity {
        return Err(precondition(
            "correction.replacement.receive.quantity.amount",
            format!(
                "{q} exceeds the {} shipped by entry {ship}",
                shipment.quantity
            ),
        ));
    }
    two_person(ctx, v, signer, s, "correction")?;
    let delta = q as i64 - received.quantity as i64;
    let mut permits = Vec::new();
    for &i in &shipment.permits {
        let mut permit = v
            .get::<PermitView>(&key::permit(i))
            .map_err(se)?
            .ok_or_else(|| Refusal::internal(format!("permit {i} of shipment {ship}")))?;
        permit.received = (permit.received as i128 + delta as i128) as u64;
        permits.push(permit);
    }
    if delta != 0 {
        let h = Holding {
            enterprise: &ent.credit_code,
            site: &received.site,
            substance: &s.id,
            lot: &received.lot,
        };
        stock::prepare(
            ctx,
            v,
            &h,
            Change::Correct {
                term: Term::Received,
                corrects,
                delta,
            },
            "correction.replacement.receive.quantity.amount",
        )?
        .write(v);
    }
    for permit in permits {
        v.put(key::permit(permit.issue_entry), &permit);
    }
    if let Some(rv) = shipment.received.as_mut() {
        rv.quantity = q;
        rv.corrected_by.push(ctx.index);
    }
    put_shipment(v, &shipment);
    Ok(())
}
