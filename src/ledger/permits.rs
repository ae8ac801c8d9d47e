//! Permit rules: issuing, revoking and writing off permits, and drawing on them. Which
//! movement needs which permit, and who may issue it, is `model::regulation`'s table; this file
//! only applies it. A draw-down happens inside the single writer, so the sum drawn on a permit
//! can never pass its ceiling, whoever draws on it and however concurrently.

use super::error::Refusal;
use super::rules::{
    entry_ref, ident, invalid, precondition, quantity, regulator_covers, se, substance, text,
    validity, Ctx,
};
use super::views::*;
use crate::crypto::KeyId;
use crate::model::regulation::{self, Class, Movement, Unless};
use crate::model::Substance;
use crate::pb::{self, Activity, Agency, PermitType, Role};

fn permit_type(t: i32) -> Option<PermitType> {
    PermitType::try_from(t)
        .ok()
        .filter(|t| *t != PermitType::Unspecified)
}

fn agency_name(a: i32) -> &'static str {
    Agency::try_from(a)
        .map(|a| a.as_str_name().trim_start_matches("AGENCY_"))
        .unwrap_or("UNKNOWN")
}

fn unit_name(s: &Substance) -> &'static str {
    match s.unit {
        pb::Unit::Milligram => "mg",
        pb::Unit::Millilitre => "ml",
        pb::Unit::Dose => "doses",
        pb::Unit::Unspecified => "units",
    }
}

/// `permit P-1 (entry 12)`, the way every message names a permit.
pub fn name(p: &PermitView) -> String {
    format!("permit {} (entry {})", p.permit_no, p.issue_entry)
}

fn enrolled(v: &Views<'_>, field: &str, code: &str) -> Result<EnterpriseView, Refusal> {
    v.get::<EnterpriseView>(&key::enterprise(code))
        .map_err(se)?
        .ok_or_else(|| precondition(field, format!("`{code}` is not an enrolled enterprise")))
}

/// The regulator `signer` may issue (or revoke) permits of type `t` for substances of `class`
/// held in `region`.
fn may_issue(
    signer: &KeyInfo,
    t: PermitType,
    class: Class,
    region: &str,
    field: &str,
) -> Result<(), Refusal> {
    let Some(agency) = regulation::issuer(t, class) else {
        return Err(invalid(
            field,
            format!(
                "a {} is not issued for a {}",
                regulation::type_name(t),
                class.name()
            ),
        ));
    };
    if signer.agency != agency as i32 {
        return Err(Refusal::permission_denied(format!(
            "{field}: a {} for a {} is issued by {}, not by a {} key",
            regulation::type_name(t),
            class.name(),
            agency_name(agency as i32),
            agency_name(signer.agency)
        )));
    }
    regulator_covers(signer, region, field)
}

pub fn issue_permit(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer_id: &KeyId,
    signer: &KeyInfo,
    p: &pb::IssuePermit,
) -> Result<(), Refusal> {
    ident("issue_permit.permit_no", &p.permit_no)?;
    let t = permit_type(p.r#type)
        .ok_or_else(|| invalid("issue_permit.type", "must name a permit type"))?;
    let s = substance(ctx, "issue_permit.substance", &p.substance)?;
    let class = Class::of(s);
    let holder = enrolled(v, "issue_permit.holder", &p.holder)?;
    may_issue(signer, t, class, &holder.jurisdiction, "issue_permit.type")?;
    let shape = regulation::shape(t, class);
    let ceiling = quantity("issue_permit.ceiling", p.ceiling.as_ref(), s, true)?;
    if shape.ceiling_required && ceiling == 0 {
        return Err(invalid(
            "issue_permit.ceiling.amount",
            format!(
                "a {} must state a quantity ceiling greater than 0",
                regulation::type_name(t)
            ),
        ));
    }
    let (not_before_ms, not_after_ms) = validity("issue_permit.validity", p.validity.as_ref())?;
    if not_after_ms == 0 {
        return Err(invalid(
            "issue_permit.validity.not_after_ms",
            "a permit must expire (0 = open-ended is for keys and enrolment licences only)",
        ));
    }
    if shape.single_use_required && !p.single_use {
        return Err(invalid(
            "issue_permit.single_use",
            format!(
                "a {} for a {} is single use",
                regulation::type_name(t),
                class.name()
            ),
        ));
    }
    text("issue_permit.counterparty", &p.counterparty, 256)?;
    if shape.transport && !p.counterparty.is_empty() {
        return Err(invalid(
            "issue_permit.counterparty",
            "a transport permit names its consignee (and carrier), not a counterparty",
        ));
    }
    if !p.counterparty.is_empty() && shape.counterparty_enrolled {
        enrolled(v, "issue_permit.counterparty", &p.counterparty)?;
        if p.counterparty == p.holder {
            return Err(invalid(
                "issue_permit.counterparty",
                "the counterparty cannot be the holder",
            ));
        }
    }
    let transport_fields = [
        ("issue_permit.origin_site", &p.origin_site),
        ("issue_permit.destination_site", &p.destination_site),
        ("issue_permit.owner", &p.owner),
        ("issue_permit.consignee", &p.consignee),
        ("issue_permit.carrier", &p.carrier),
    ];
    if shape.transport {
        if !p.owner.is_empty() && p.owner != p.holder {
            return Err(invalid(
                "issue_permit.owner",
                "a transport permit is held by the owner (consignor) of the goods",
            ));
        }
        if !p.origin_site.is_empty() && !holder.has_site(&p.origin_site) {
            return Err(precondition(
                "issue_permit.origin_site",
                format!("{} has no site `{}`", holder.credit_code, p.origin_site),
            ));
        }
        if p.consignee.is_empty() {
            return Err(invalid(
                "issue_permit.consignee",
                "a transport permit names its consignee",
            ));
        }
        let consignee = enrolled(v, "issue_permit.consignee", &p.consignee)?;
        if !p.destination_site.is_empty() && !consignee.has_site(&p.destination_site) {
            return Err(precondition(
                "issue_permit.destination_site",
                format!(
                    "{} has no site `{}`",
                    consignee.credit_code, p.destination_site
                ),
            ));
        }
        if !p.carrier.is_empty() {
            enrolled(v, "issue_permit.carrier", &p.carrier)?;
        }
    } else if let Some((field, _)) = transport_fields.iter().find(|(_, v)| !v.is_empty()) {
        return Err(invalid(field, "only transport permits and filings name it"));
    }
    if let Some(i) = v.get::<u64>(&key::permit_no(&p.permit_no)).map_err(se)? {
        return Err(Refusal::already_exists(format!(
            "issue_permit.permit_no: `{}` was issued by entry {i}",
            p.permit_no
        )));
    }
    let view = PermitView {
        issue_entry: ctx.index,
        permit_no: p.permit_no.clone(),
        permit_type: t as i32,
        issuer: *signer_id,
        jurisdiction: holder.jurisdiction.clone(),
        holder: holder.credit_code.clone(),
        counterparty: p.counterparty.clone(),
        substance: s.id.clone(),
        ceiling,
        not_before_ms,
        not_after_ms,
        single_use: p.single_use,
        origin_site: p.origin_site.clone(),
        destination_site: p.destination_site.clone(),
        consignee: p.consignee.clone(),
        carrier: p.carrier.clone(),
        issued_at_ms: ctx.now_ms,
        drawn: 0,
        draws: 0,
        received: 0,
        closed: None,
    };
    let e = ctx.index.to_be_bytes();
    if let Some(activity) = shape.licence_for {
        let k = key::licence_permits(&view.holder, activity as i32, &view.substance);
        let mut list: Vec<u64> = v.get(&k).map_err(se)?.unwrap_or_default();
        list.push(ctx.index);
        v.put(k, &list);
    }
    v.put(key::permit_no(&p.permit_no), &ctx.index);
    v.put_raw(
        [key::permits_of_holder(&view.holder), e.to_vec()].concat(),
        Vec::new(),
    );
    v.put_raw(
        [
            key::permits_of_jurisdiction(&view.jurisdiction),
            b"\0".to_vec(),
            e.to_vec(),
        ]
        .concat(),
        Vec::new(),
    );
    v.put(key::permit(ctx.index), &view);
    Ok(())
}

/// Looks up the permit an `EntryRef` cites.
pub fn cited(
    ctx: &Ctx<'_>,
    v: &Views<'_>,
    field: &str,
    r: Option<&pb::EntryRef>,
) -> Result<PermitView, Refusal> {
    let i = entry_ref(ctx, field, r)?;
    v.get::<PermitView>(&key::permit(i))
        .map_err(se)?
        .ok_or_else(|| precondition(field, format!("entry {i} is not a permit")))
}

fn close(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    mut permit: PermitView,
    how: ClosedHow,
    field: &str,
    reason: &str,
) -> Result<(), Refusal> {
    if let Some(c) = &permit.closed {
        return Err(precondition(
            field,
            format!(
                "{} is already {} (entry {})",
                name(&permit),
                permit.state(ctx.now_ms).name(),
                c.entry
            ),
        ));
    }
    permit.closed = Some(PermitClosure {
        how,
        entry: ctx.index,
        at_ms: ctx.now_ms,
        reason: reason.to_string(),
        void: permit.ceiling.saturating_sub(permit.drawn),
    });
    v.put(key::permit(permit.issue_entry), &permit);
    Ok(())
}

pub fn revoke_permit(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer: &KeyInfo,
    p: &pb::RevokePermit,
) -> Result<(), Refusal> {
    text("revoke_permit.reason", &p.reason, 1024)?;
    if p.reason.trim().is_empty() {
        return Err(invalid("revoke_permit.reason", "must say why"));
    }
    let permit = cited(ctx, v, "revoke_permit.permit", p.permit.as_ref())?;
    let t = permit_type(permit.permit_type)
        .ok_or_else(|| Refusal::internal("stored permit type".into()))?;
    let s = substance(ctx, "revoke_permit.permit", &permit.substance)?;
    may_issue(
        signer,
        t,
        Class::of(s),
        &permit.jurisdiction,
        "revoke_permit.permit",
    )?;
    close(
        ctx,
        v,
        permit,
        ClosedHow::Revoked,
        "revoke_permit.permit",
        &p.reason,
    )
}

pub fn write_off_permit(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer: &KeyInfo,
    p: &pb::WriteOffPermit,
) -> Result<(), Refusal> {
    text("write_off_permit.reason", &p.reason, 1024)?;
    let permit = cited(ctx, v, "write_off_permit.permit", p.permit.as_ref())?;
    if signer.role == Role::Enterprise as i32 {
        if signer.enterprise != permit.holder {
            return Err(Refusal::permission_denied(format!(
                "write_off_permit.permit: {} is held by {}, not by {}",
                name(&permit),
                permit.holder,
                signer.enterprise
            )));
        }
    } else {
        // As for revocation: the agency that issues this type for this substance.
        let t = permit_type(permit.permit_type)
            .ok_or_else(|| Refusal::internal("stored permit type".into()))?;
        let s = substance(ctx, "write_off_permit.permit", &permit.substance)?;
        may_issue(
            signer,
            t,
            Class::of(s),
            &permit.jurisdiction,
            "write_off_permit.permit",
        )?;
    }
    close(
        ctx,
        v,
        permit,
        ClosedHow::WrittenOff,
        "write_off_permit.permit",
        &p.reason,
    )
}

/// What a movement must check of a permit it draws on.
pub struct Draw<'a> {
    pub field: &'a str,
    pub movement: Movement,
    /// Who must hold the permit.
    pub holder: &'a str,
    /// The party on the other side, checked against the permit's counterparty.
    pub counterparty: &'a str,
    pub substance: &'a Substance,
    pub quantity: u64,
    /// The field the quantity came from, for an overdraw message.
    pub quantity_field: &'a str,
}

/// Checks that `permit` may carry this draw (type, parties, substance, state, remaining).
pub fn check_draw(ctx: &Ctx<'_>, permit: &PermitView, d: &Draw<'_>) -> Result<(), Refusal> {
    let class = Class::of(d.substance);
    let row = regulation::needs(class, d.movement);
    let t = permit_type(permit.permit_type).unwrap_or(PermitType::Unspecified);
    if !row.needs.contains(&t) {
        return Err(precondition(
            d.field,
            format!(
                "{} is a {}; a {} {} needs a {}",
                name(permit),
                regulation::type_name(t),
                class.name(),
                d.movement.name(),
                regulation::type_names(row.needs)
            ),
        ));
    }
    if permit.holder != d.holder {
        return Err(precondition(
            d.field,
            format!(
                "{} is held by {}, not {}",
                name(permit),
                permit.holder,
                d.holder
            ),
        ));
    }
    if !permit.counterparty.is_empty() && permit.counterparty != d.counterparty {
        return Err(precondition(
            d.field,
            format!(
                "{} names counterparty {}, not {}",
                name(permit),
                permit.counterparty,
                d.counterparty
            ),
        ));
    }
    if permit.substance != d.substance.id {
        return Err(precondition(
            d.field,
            format!(
                "{} is for {}, not {}",
                name(permit),
                permit.substance,
                d.substance.id
            ),
        ));
    }
    let state = permit.state(ctx.now_ms);
    match state {
        PermitState::Active | PermitState::PartiallyUsed => {}
        PermitState::Issued => {
            return Err(precondition(
                d.field,
                format!(
                    "{} is not valid before {} ms (now {} ms)",
                    name(permit),
                    permit.not_before_ms,
                    ctx.now_ms
                ),
            ))
        }
        PermitState::Expired => {
            return Err(precondition(
                d.field,
                format!(
                    "{} expired at {} ms (now {} ms)",
                    name(permit),
                    permit.not_after_ms,
                    ctx.now_ms
                ),
            ))
        }
        PermitState::Exhausted => {
            return Err(precondition(
                d.field,
                format!(
                    "{} is exhausted: {} of {} {} drawn",
                    name(permit),
                    permit.drawn,
                    permit.ceiling,
                    unit_name(d.substance)
                ),
            ))
        }
        PermitState::Revoked | PermitState::WrittenOff => {
            let c = permit.closed.as_ref();
            return Err(precondition(
                d.field,
                format!(
                    "{} is {} (entry {}{})",
                    name(permit),
                    state.name(),
                    c.map_or(0, |c| c.entry),
                    match c.map(|c| c.how) {
                        Some(ClosedHow::SingleUse) => ": single use, used",
                        _ => "",
                    }
                ),
            ));
        }
    }
    let remaining = permit.remaining();
    if d.quantity > remaining {
        return Err(precondition(
            d.quantity_field,
            format!(
                "{} exceeds {} remaining {} {}",
                d.quantity,
                name(permit),
                remaining,
                unit_name(d.substance)
            ),
        ));
    }
    Ok(())
}

/// Records a checked draw: the permit's drawn sum, its draw-down entry, and — for a single-use
/// permit — its closing, the remainder void.
pub fn apply_draw(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    permit: PermitView,
    d: &Draw<'_>,
    shipment: &ShipmentView,
) {
    v.put(key::draw(permit.issue_entry, ctx.index), shipment);
    put_drawn(ctx, v, permit, d.quantity);
}

/// The permit with one more draw of `quantity` (closed if single use), written back.
pub fn put_drawn(ctx: &Ctx<'_>, v: &mut Views<'_>, mut permit: PermitView, quantity: u64) {
    // INVARIANT: check_draw passed, so drawn + quantity <= ceiling (or there is no ceiling).
    permit.drawn = permit.drawn.saturating_add(quantity);
    permit.draws += 1;
    if permit.single_use {
        permit.closed = Some(PermitClosure {
            how: ClosedHow::SingleUse,
            entry: ctx.index,
            at_ms: ctx.now_ms,
            reason: "single use".into(),
            void: permit.ceiling.saturating_sub(permit.drawn),
        });
    }
    v.put(key::permit(permit.issue_entry), &permit);
}

/// The buyer-side permit a sale of `s` to `buyer` needs, if any: the row's permit types, or
/// none when the row needs none or waives it for this buyer (a wholesaler: a SELL licence on
/// its enrolment, or an OPERATING_LICENCE permit for the substance).
pub fn purchase_needs(
    v: &Views<'_>,
    buyer: &EnterpriseView,
    s: &Substance,
    now: u64,
) -> Result<&'static [PermitType], Refusal> {
    let row = regulation::needs(Class::of(s), Movement::Purchase);
    Ok(match row.unless {
        Unless::BuyerIsWholesaler
            if super::rules::licensed_for(v, buyer, s, Activity::Sell, now).is_ok() =>
        {
            &[]
        }
        _ => row.needs,
    })
}

/// A production or operating licence issued as a permit, valid now, for this substance.
pub fn licence_permit_valid(
    v: &Views<'_>,
    holder: &str,
    activity: Activity,
    substance: &str,
    now: u64,
) -> Result<bool, Refusal> {
    let list: Vec<u64> = v
        .get(&key::licence_permits(holder, activity as i32, substance))
        .map_err(se)?
        .unwrap_or_default();
    for i in list {
        if let Some(p) = v.get::<PermitView>(&key::permit(i)).map_err(se)? {
            if matches!(
                p.state(now),
                PermitState::Active | PermitState::PartiallyUsed
            ) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
