//! Import and export, and their counterparts: customs' clearance of what crossed the border and
//! the importing country's endorsement (or objection) of an export. Each import or export draws
//! on the enterprise's licence the way a shipment draws on a permit; the two-way check
//! (进出口双向核查) is `audit::trade`, over the `mv/` views written here.

use super::error::Refusal;
use super::permits::{self, Draw};
use super::rules::{
    entry_ref, ident, invalid, licensed_for, lot_of, moved, new_lot, precondition, quantity,
    regulator_covers, se, substance, text, Ctx, Moved,
};
use super::stock::{self, Change};
use super::views::*;
use crate::crypto::KeyId;
use crate::model::regulation::{self, Class, Movement};
use crate::pb::{self, Activity, Agency, PermitType};

fn country(field: &str, c: &str) -> Result<(), Refusal> {
    if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(
            field,
            format!("`{c}` is not an ISO 3166-1 alpha-2 country code"),
        ));
    }
    if c == "CN" {
        return Err(invalid(field, "the other country cannot be China"));
    }
    Ok(())
}

fn party(field: &str, p: &str) -> Result<(), Refusal> {
    if p.trim().is_empty() {
        return Err(invalid(field, "must name the foreign party"));
    }
    text(field, p, 256)
}

pub fn import(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    id: &KeyId,
    signer: &KeyInfo,
    p: &pb::Import,
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
        "import",
        &p.site_id,
        &p.substance,
        p.quantity.as_ref(),
        &p.lot,
    )?;
    country("import.country", &p.country)?;
    party("import.exporter", &p.exporter)?;
    licensed_for(v, &ent, s, Activity::Import, ctx.now_ms)?;
    new_lot(v, "import.lot", &p.lot)?;
    super::custody::two_person(ctx, v, signer, s, "import")?;
    let licence = permits::cited(ctx, v, "import.licence", p.licence.as_ref())?;
    permits::check_draw(
        ctx,
        &licence,
        &Draw {
            field: "import.licence",
            movement: Movement::Import,
            holder: &ent.credit_code,
            counterparty: &p.exporter,
            substance: s,
            quantity: q,
            quantity_field: "import.quantity.amount",
        },
    )?;
    let h = Holding {
        enterprise: &ent.credit_code,
        site: &p.site_id,
        substance: &s.id,
        lot: &p.lot,
    };
    let posting = stock::prepare_new_lot(
        ctx,
        v,
        &h,
        Change::Move {
            term: Term::Imported,
            quantity: q,
            shipment: None,
        },
        "import.quantity.amount",
        LotView {
            substance: s.id.clone(),
            created_by: ent.credit_code.clone(),
            created_by_entry: ctx.index,
            site: p.site_id.clone(),
            derived_from: None,
            book: Book::default(),
        },
    )?;
    let licence_entry = licence.issue_entry;
    posting.write(v);
    permits::put_drawn(ctx, v, licence, q);
    put_movement(
        ctx,
        v,
        MovementView {
            entry: ctx.index,
            export: false,
            enterprise: ent.credit_code.clone(),
            site: p.site_id.clone(),
            substance: s.id.clone(),
            lot: p.lot.clone(),
            quantity: q,
            licence: licence_entry,
            country: p.country.clone(),
            counterparty: p.exporter.clone(),
            pen_reference: String::new(),
            at_ms: ctx.now_ms,
            clearance: None,
            endorsement: None,
        },
    );
    Ok(())
}

pub fn export(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    id: &KeyId,
    signer: &KeyInfo,
    p: &pb::Export,
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
        "export",
        &p.site_id,
        &p.substance,
        p.quantity.as_ref(),
        &p.lot,
    )?;
    country("export.country", &p.country)?;
    party("export.importer", &p.importer)?;
    ident("export.pen_reference", &p.pen_reference).map_err(|_| {
        invalid(
            "export.pen_reference",
            "an export cites its pre-export notification (PEN)",
        )
    })?;
    lot_of(v, "export.lot", &p.lot, s)?;
    super::custody::two_person(ctx, v, signer, s, "export")?;
    licensed_for(v, &ent, s, Activity::Export, ctx.now_ms)?;
    let licence = permits::cited(ctx, v, "export.licence", p.licence.as_ref())?;
    permits::check_draw(
        ctx,
        &licence,
        &Draw {
            field: "export.licence",
            movement: Movement::Export,
            holder: &ent.credit_code,
            counterparty: &p.importer,
            substance: s,
            quantity: q,
            quantity_field: "export.quantity.amount",
        },
    )?;
    let h = Holding {
        enterprise: &ent.credit_code,
        site: &p.site_id,
        substance: &s.id,
        lot: &p.lot,
    };
    let posting = stock::prepare(
        ctx,
        v,
        &h,
        Change::Move {
            term: Term::Exported,
            quantity: q,
            shipment: None,
        },
        "export.quantity.amount",
    )?;
    let licence_entry = licence.issue_entry;
    posting.write(v);
    permits::put_drawn(ctx, v, licence, q);
    put_movement(
        ctx,
        v,
        MovementView {
            entry: ctx.index,
            export: true,
            enterprise: ent.credit_code.clone(),
            site: p.site_id.clone(),
            substance: s.id.clone(),
            lot: p.lot.clone(),
            quantity: q,
            licence: licence_entry,
            country: p.country.clone(),
            counterparty: p.importer.clone(),
            pen_reference: p.pen_reference.clone(),
            at_ms: ctx.now_ms,
            clearance: None,
            endorsement: None,
        },
    );
    Ok(())
}

fn put_movement(ctx: &Ctx<'_>, v: &mut Views<'_>, m: MovementView) {
    v.put_raw(
        [
            key::licence_movements(m.licence),
            ctx.index.to_be_bytes().to_vec(),
        ]
        .concat(),
        Vec::new(),
    );
    v.put(key::movement(m.entry), &m);
}

/// The import or export an `EntryRef` cites, and the jurisdiction of its enterprise.
fn cited_movement(
    ctx: &Ctx<'_>,
    v: &Views<'_>,
    field: &str,
    r: Option<&pb::EntryRef>,
) -> Result<(MovementView, String), Refusal> {
    let i = entry_ref(ctx, field, r)?;
    let m = v
        .get::<MovementView>(&key::movement(i))
        .map_err(se)?
        .ok_or_else(|| precondition(field, format!("entry {i} is not an import or export")))?;
    let ent = v
        .get::<EnterpriseView>(&key::enterprise(&m.enterprise))
        .map_err(se)?
        .ok_or_else(|| Refusal::internal(format!("enterprise of movement {i}")))?;
    Ok((m, ent.jurisdiction))
}

pub fn customs_clearance(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer: &KeyInfo,
    p: &pb::CustomsClearance,
) -> Result<(), Refusal> {
    if signer.agency != Agency::Customs as i32 {
        return Err(Refusal::permission_denied(
            "customs_clearance: only a customs (AGENCY_CUSTOMS) key states what crossed the border"
                .into(),
        ));
    }
    let (mut m, jurisdiction) =
        cited_movement(ctx, v, "customs_clearance.movement", p.movement.as_ref())?;
    regulator_covers(signer, &jurisdiction, "customs_clearance.movement")?;
    ident("customs_clearance.declaration_no", &p.declaration_no)?;
    let s = substance(ctx, "customs_clearance.movement", &m.substance)?;
    let q = quantity("customs_clearance.quantity", p.quantity.as_ref(), s, true)?;
    if let Some(c) = &m.clearance {
        return Err(Refusal::already_exists(format!(
            "customs_clearance.movement: entry {} was cleared by entry {}",
            m.entry, c.entry
        )));
    }
    m.clearance = Some(ClearanceView {
        entry: ctx.index,
        declaration_no: p.declaration_no.clone(),
        quantity: q,
        cleared_ms: if p.cleared_ms == 0 {
            ctx.now_ms
        } else {
            p.cleared_ms
        },
    });
    v.put(key::movement(m.entry), &m);
    Ok(())
}

pub fn foreign_endorsement(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer: &KeyInfo,
    p: &pb::ForeignEndorsement,
) -> Result<(), Refusal> {
    let (mut m, jurisdiction) =
        cited_movement(ctx, v, "foreign_endorsement.export", p.export.as_ref())?;
    if !m.export {
        return Err(precondition(
            "foreign_endorsement.export",
            format!("entry {} is an import, not an export", m.entry),
        ));
    }
    let s = substance(ctx, "foreign_endorsement.export", &m.substance)?;
    // The importing country answers the authority that authorised the export.
    let agency = regulation::issuer(PermitType::ExportLicence, Class::of(s))
        .ok_or_else(|| Refusal::internal("export licence issuer".into()))?;
    if signer.agency != agency as i32 {
        return Err(Refusal::permission_denied(format!(
            "foreign_endorsement: a {} export is endorsed to {}, the agency that licensed it",
            Class::of(s).name(),
            agency.as_str_name()
        )));
    }
    regulator_covers(signer, &jurisdiction, "foreign_endorsement.export")?;
    if p.country != m.country {
        return Err(precondition(
            "foreign_endorsement.country",
            format!(
                "`{}`: export {} went to `{}`",
                p.country, m.entry, m.country
            ),
        ));
    }
    if p.pen_reference != m.pen_reference {
        return Err(precondition(
            "foreign_endorsement.pen_reference",
            format!(
                "`{}`: export {} cites pre-export notification `{}`",
                p.pen_reference, m.entry, m.pen_reference
            ),
        ));
    }
    let q = quantity("foreign_endorsement.quantity", p.quantity.as_ref(), s, true)?;
    text(
        "foreign_endorsement.objection_reason",
        &p.objection_reason,
        1024,
    )?;
    if p.objection && p.objection_reason.trim().is_empty() {
        return Err(invalid(
            "foreign_endorsement.objection_reason",
            "an objection says why",
        ));
    }
    if p.objection && q != 0 {
        return Err(invalid(
            "foreign_endorsement.quantity",
            "an objection endorses no quantity",
        ));
    }
    if let Some(e) = &m.endorsement {
        return Err(Refusal::already_exists(format!(
            "foreign_endorsement.export: export {} was endorsed by entry {}",
            m.entry, e.entry
        )));
    }
    m.endorsement = Some(EndorsementView {
        entry: ctx.index,
        country: p.country.clone(),
        pen_reference: p.pen_reference.clone(),
        quantity: q,
        endorsed_ms: if p.endorsed_ms == 0 {
            ctx.now_ms
        } else {
            p.endorsed_ms
        },
        objection: p.objection,
        objection_reason: p.objection_reason.clone(),
        at_ms: ctx.now_ms,
    });
    v.put(key::movement(m.entry), &m);
    Ok(())
}
