//! The ingest rules for each payload kind: who may sign it and what must hold for it to be
//! appended, and the view changes it makes when it is.
//!
//! Every rule function checks everything first and writes only after the last check, so a
//! refused record leaves the views exactly as they were. Time is the ledger's integrated time of
//! the entry, never the client's clock.

use super::custody;
use super::error::Refusal;
use super::permits::{self, Draw};
use super::stock::{self, Change};
use super::views::*;
use crate::crypto::{parse_public_key, KeyId};
use crate::merkle::Hash;
use crate::model::ids::{check_credit_code, check_region_code, within};
use crate::model::regulation::Movement;
use crate::model::Catalogue;
use crate::pb::{self, record_body::Payload, Activity, Category, Role};
use crate::store::StoreError;

/// What the rules can see besides the views.
pub struct Ctx<'a> {
    pub origin: &'a str,
    pub catalogue: &'a Catalogue,
    /// Index this entry will have.
    pub index: u64,
    /// Integrated time of this entry.
    pub now_ms: u64,
    /// Leaf hash of an existing entry (`index` < this entry's index).
    pub leaf_hash: &'a dyn Fn(u64) -> Option<Hash>,
    /// An earlier entry (`index` < this entry's index), from the log or from a group not yet
    /// durable: for the rare rule that needs what an entry said rather than what the views
    /// keep of it (a correction of a produce).
    pub leaf_of: &'a dyn Fn(u64) -> Result<crate::codec::Leaf, Refusal>,
    /// Keys that cosigned the record (their signatures are checked before the rules run).
    pub cosigners: &'a [KeyId],
    /// Categories under two-person control (`Category` values), checked at ingest; `None` at
    /// replay, where an admission policy is not re-applied to history (like signatures).
    pub two_person: Option<&'a [i32]>,
}

/// The name of a payload kind, as used in messages.
pub fn kind_name(p: &Payload) -> &'static str {
    match p {
        Payload::Genesis(_) => "genesis",
        Payload::RegisterAuthority(_) => "register_authority",
        Payload::EnrolEnterprise(_) => "enrol_enterprise",
        Payload::RegisterKey(_) => "register_key",
        Payload::RevokeKey(_) => "revoke_key",
        Payload::IssuePermit(_) => "issue_permit",
        Payload::RevokePermit(_) => "revoke_permit",
        Payload::CustomsClearance(_) => "customs_clearance",
        Payload::ForeignEndorsement(_) => "foreign_endorsement",
        Payload::CatalogueUpdate(_) => "catalogue_update",
        Payload::WriteOffPermit(_) => "write_off_permit",
        Payload::Produce(_) => "produce",
        Payload::Ship(_) => "ship",
        Payload::Receive(_) => "receive",
        Payload::TransportLeg(_) => "transport_leg",
        Payload::Import(_) => "import",
        Payload::Export(_) => "export",
        Payload::Consume(_) => "consume",
        Payload::Destroy(_) => "destroy",
        Payload::StockTake(_) => "stock_take",
        Payload::LossReport(_) => "loss_report",
        Payload::Correction(_) => "correction",
        Payload::Inspection(_) => "inspection",
    }
}

/// Roles that may sign each kind. Kinds whose rules are not built yet return `None`.
pub fn allowed_roles(p: &Payload) -> Option<&'static [Role]> {
    const REG: &[Role] = &[Role::RootRegulator, Role::Regulator];
    const ENT: &[Role] = &[Role::Enterprise];
    match p {
        Payload::Genesis(_) => Some(&[Role::Ledger]),
        Payload::RegisterAuthority(_) => Some(&[Role::RootRegulator]),
        Payload::EnrolEnterprise(_)
        | Payload::RegisterKey(_)
        | Payload::RevokeKey(_)
        | Payload::IssuePermit(_)
        | Payload::RevokePermit(_)
        | Payload::CustomsClearance(_)
        | Payload::ForeignEndorsement(_) => Some(REG),
        Payload::WriteOffPermit(_) => {
            Some(&[Role::RootRegulator, Role::Regulator, Role::Enterprise])
        }
        Payload::Produce(_)
        | Payload::Ship(_)
        | Payload::Receive(_)
        | Payload::TransportLeg(_)
        | Payload::StockTake(_)
        | Payload::Import(_)
        | Payload::Export(_)
        | Payload::Consume(_)
        | Payload::Destroy(_)
        | Payload::LossReport(_)
        | Payload::Correction(_) => Some(ENT),
        Payload::Inspection(_) => Some(&[Role::Inspector]),
        Payload::CatalogueUpdate(_) => None,
    }
}

fn role_name(role: i32) -> &'static str {
    Role::try_from(role)
        .map(|r| r.as_str_name())
        .unwrap_or("ROLE_UNKNOWN")
}

/// Checks the signer's key: role for this kind, validity at `now`, not revoked.
pub fn check_signer(key: &KeyInfo, id: &KeyId, payload: &Payload, now: u64) -> Result<(), Refusal> {
    let kind = kind_name(payload);
    let Some(roles) = allowed_roles(payload) else {
        return Err(Refusal::unimplemented(format!(
            "body.payload: `{kind}` records are defined in the protocol but this ledger has no ingest rules for them yet"
        )));
    };
    if let Some(at) = key.revoked_at_ms {
        if at <= now {
            return Err(Refusal::permission_denied(format!(
                "body.signer: key {id} was revoked at {at} ms"
            )));
        }
    }
    if now < key.not_before_ms || (key.not_after_ms != 0 && now >= key.not_after_ms) {
        return Err(Refusal::permission_denied(format!(
            "body.signer: key {id} is not valid now ({now} ms; valid {}..{})",
            key.not_before_ms,
            if key.not_after_ms == 0 {
                "open".to_string()
            } else {
                key.not_after_ms.to_string()
            }
        )));
    }
    if !roles.iter().any(|r| *r as i32 == key.role) {
        return Err(Refusal::permission_denied(format!(
            "body.signer: a {} key may not sign `{kind}` records",
            role_name(key.role)
        )));
    }
    Ok(())
}

pub(super) fn se(e: StoreError) -> Refusal {
    Refusal::from(e)
}

pub(super) fn invalid(field: &str, rule: impl std::fmt::Display) -> Refusal {
    Refusal::invalid(format!("{field}: {rule}"))
}

pub(super) fn precondition(field: &str, rule: impl std::fmt::Display) -> Refusal {
    Refusal::precondition(format!("{field}: {rule}"))
}

/// Identifiers become view keys: no NUL, not empty, bounded.
pub(super) fn ident(field: &str, v: &str) -> Result<(), Refusal> {
    if v.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if v.len() > 128 || v.contains('\0') || v.chars().any(char::is_control) {
        return Err(invalid(
            field,
            "must be 1–128 characters without control characters",
        ));
    }
    Ok(())
}

pub(super) fn text(field: &str, v: &str, max: usize) -> Result<(), Refusal> {
    if v.len() > max {
        return Err(invalid(field, format!("longer than {max} bytes")));
    }
    Ok(())
}

pub(super) fn validity(field: &str, v: Option<&pb::Validity>) -> Result<(u64, u64), Refusal> {
    let v = v.cloned().unwrap_or_default();
    if v.not_after_ms != 0 && v.not_after_ms <= v.not_before_ms {
        return Err(invalid(
            field,
            "not_after_ms must be 0 (open) or after not_before_ms",
        ));
    }
    Ok((v.not_before_ms, v.not_after_ms))
}

pub(super) fn regulator_covers(signer: &KeyInfo, region: &str, field: &str) -> Result<(), Refusal> {
    if !within(&signer.jurisdiction, region) {
        return Err(Refusal::permission_denied(format!(
            "{field}: `{region}` is outside the signer's jurisdiction `{}`",
            signer.jurisdiction
        )));
    }
    Ok(())
}

/// A quantity in the substance's base unit, > 0 unless `zero_ok`.
pub(super) fn quantity(
    field: &str,
    q: Option<&pb::Quantity>,
    substance: &crate::model::Substance,
    zero_ok: bool,
) -> Result<u64, Refusal> {
    let q = q.ok_or_else(|| invalid(field, "is required"))?;
    if q.unit != substance.unit as i32 {
        let got = pb::Unit::try_from(q.unit)
            .map(|u| u.as_str_name().to_string())
            .unwrap_or_else(|_| format!("unknown unit {}", q.unit));
        return Err(invalid(
            &format!("{field}.unit"),
            format!(
                "{got} is not the base unit of {} ({})",
                substance.id,
                substance.unit.as_str_name()
            ),
        ));
    }
    if q.amount == 0 && !zero_ok {
        return Err(invalid(
            &format!("{field}.amount"),
            "must be greater than 0",
        ));
    }
    Ok(q.amount)
}

pub(super) fn substance<'c>(
    ctx: &Ctx<'c>,
    field: &str,
    id: &str,
) -> Result<&'c crate::model::Substance, Refusal> {
    ctx.catalogue.get(id).ok_or_else(|| {
        invalid(
            field,
            format!(
                "`{id}` is not in the substance catalogue {}",
                ctx.catalogue.version()
            ),
        )
    })
}

pub(super) fn enterprise_of(
    v: &Views<'_>,
    key: &KeyInfo,
    id: &KeyId,
) -> Result<EnterpriseView, Refusal> {
    v.get::<EnterpriseView>(&key::enterprise(&key.enterprise))
        .map_err(se)?
        .ok_or_else(|| {
            Refusal::internal(format!(
                "key {id} names enterprise {} which is not enrolled",
                key.enterprise
            ))
        })
}

pub(super) fn site(ent: &EnterpriseView, field: &str, site: &str) -> Result<(), Refusal> {
    ident(field, site)?;
    if !ent.has_site(site) {
        return Err(precondition(
            field,
            format!("enterprise {} has no site `{site}`", ent.credit_code),
        ));
    }
    Ok(())
}

fn category_name(c: Category) -> &'static str {
    c.as_str_name().trim_start_matches("CATEGORY_")
}

fn activity_name(a: Activity) -> &'static str {
    a.as_str_name().trim_start_matches("ACTIVITY_")
}

/// The enterprise holds a licence (or filing) for `activity` on `category`, valid at `now`.
pub(super) fn licensed(
    ent: &EnterpriseView,
    category: Category,
    activity: Activity,
    now: u64,
) -> Result<(), Refusal> {
    let ok = ent.licences.iter().any(|l| {
        l.category == category as i32
            && l.activities.contains(&(activity as i32))
            && l.not_before_ms <= now
            && (l.not_after_ms == 0 || now < l.not_after_ms)
    });
    if !ok {
        return Err(Refusal::precondition(format!(
            "licence: enterprise {} holds no licence valid now for {} × {}",
            ent.credit_code,
            category_name(category),
            activity_name(activity)
        )));
    }
    Ok(())
}

/// `licensed`, or a production / operating licence issued as a permit for this very substance.
pub(super) fn licensed_for(
    v: &Views<'_>,
    ent: &EnterpriseView,
    s: &crate::model::Substance,
    activity: Activity,
    now: u64,
) -> Result<(), Refusal> {
    match licensed(ent, s.category, activity, now) {
        Ok(()) => Ok(()),
        Err(e) => {
            if matches!(activity, Activity::Produce | Activity::Sell)
                && permits::licence_permit_valid(v, &ent.credit_code, activity, &s.id, now)?
            {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// What every movement of goods at one of the signer's sites states: the enterprise, the site,
/// the substance, the quantity (> 0) and the lot, each checked; `kind` names the fields.
pub(super) struct Moved<'c> {
    pub ent: EnterpriseView,
    pub substance: &'c crate::model::Substance,
    pub quantity: u64,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn moved<'c>(
    ctx: &Ctx<'c>,
    v: &Views<'_>,
    id: &KeyId,
    signer: &KeyInfo,
    kind: &str,
    site_id: &str,
    substance_id: &str,
    q: Option<&pb::Quantity>,
    lot: &str,
) -> Result<Moved<'c>, Refusal> {
    let ent = enterprise_of(v, signer, id)?;
    site(&ent, &format!("{kind}.site_id"), site_id)?;
    let s = substance(ctx, &format!("{kind}.substance"), substance_id)?;
    let quantity = quantity(&format!("{kind}.quantity"), q, s, false)?;
    ident(&format!("{kind}.lot"), lot)?;
    Ok(Moved {
        ent,
        substance: s,
        quantity,
    })
}

/// A lot id that must be new (a lot comes into existence here).
pub(super) fn new_lot(v: &Views<'_>, field: &str, lot: &str) -> Result<(), Refusal> {
    if let Some(l) = v.get::<LotView>(&key::lot(lot)).map_err(se)? {
        return Err(Refusal::already_exists(format!(
            "{field}: lot `{lot}` already exists (created by entry {})",
            l.created_by_entry
        )));
    }
    Ok(())
}

/// An existing lot of substance `s`.
pub(super) fn lot_of(
    v: &Views<'_>,
    field: &str,
    lot: &str,
    s: &crate::model::Substance,
) -> Result<LotView, Refusal> {
    let l = v
        .get::<LotView>(&key::lot(lot))
        .map_err(se)?
        .ok_or_else(|| precondition(field, format!("lot `{lot}` does not exist")))?;
    if l.substance != s.id {
        return Err(precondition(
            field,
            format!("lot `{lot}` is {}, not {}", l.substance, s.id),
        ));
    }
    Ok(l)
}

/// Resolves a reference to an entry of this ledger.
pub fn entry_ref(ctx: &Ctx<'_>, field: &str, r: Option<&pb::EntryRef>) -> Result<u64, Refusal> {
    let r = r.ok_or_else(|| invalid(field, "is required"))?;
    if r.origin != ctx.origin {
        return Err(precondition(
            &format!("{field}.origin"),
            format!(
                "`{}` is not this ledger (`{}`); cross-ledger references are not accepted yet",
                r.origin, ctx.origin
            ),
        ));
    }
    if r.index >= ctx.index {
        return Err(precondition(
            &format!("{field}.index"),
            format!(
                "entry {} does not exist (the log has {} entries)",
                r.index, ctx.index
            ),
        ));
    }
    let want = (ctx.leaf_hash)(r.index)
        .ok_or_else(|| Refusal::internal(format!("leaf hash of entry {} unavailable", r.index)))?;
    if r.leaf_hash.as_slice() != want.as_slice() {
        return Err(precondition(
            &format!("{field}.leaf_hash"),
            format!("does not match entry {}", r.index),
        ));
    }
    Ok(r.index)
}

/// Applies the payload's rules; on success the view changes are in `v`.
pub fn apply(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer_id: &KeyId,
    signer: &KeyInfo,
    payload: &Payload,
) -> Result<(), Refusal> {
    match payload {
        Payload::Genesis(_) => Err(Refusal::precondition(
            "body.payload: genesis is entry 0 only; this ledger already has one".into(),
        )),
        Payload::RegisterAuthority(p) => register_authority(ctx, v, signer, p),
        Payload::EnrolEnterprise(p) => enrol_enterprise(ctx, v, signer, p),
        Payload::RegisterKey(p) => register_key(ctx, v, signer, p),
        Payload::RevokeKey(p) => revoke_key(ctx, v, signer_id, signer, p),
        Payload::IssuePermit(p) => permits::issue_permit(ctx, v, signer_id, signer, p),
        Payload::RevokePermit(p) => permits::revoke_permit(ctx, v, signer, p),
        Payload::WriteOffPermit(p) => permits::write_off_permit(ctx, v, signer, p),
        Payload::CustomsClearance(p) => super::trade::customs_clearance(ctx, v, signer, p),
        Payload::ForeignEndorsement(p) => super::trade::foreign_endorsement(ctx, v, signer, p),
        Payload::Import(p) => super::trade::import(ctx, v, signer_id, signer, p),
        Payload::Export(p) => super::trade::export(ctx, v, signer_id, signer, p),
        Payload::Produce(p) => produce(ctx, v, signer_id, signer, p),
        Payload::Ship(p) => ship(ctx, v, signer_id, signer, p),
        Payload::Receive(p) => receive(ctx, v, signer_id, signer, p),
        Payload::StockTake(p) => stock_take(ctx, v, signer_id, signer, p),
        Payload::TransportLeg(p) => custody::transport_leg(ctx, v, signer_id, signer, p),
        Payload::Consume(p) => custody::consume(ctx, v, signer_id, signer, p),
        Payload::Destroy(p) => custody::destroy(ctx, v, signer_id, signer, p),
        Payload::LossReport(p) => custody::loss_report(ctx, v, signer_id, signer, p),
        Payload::Correction(p) => custody::correction(ctx, v, signer_id, signer, p),
        Payload::Inspection(p) => custody::inspection(ctx, v, signer, p),
        other => Err(Refusal::unimplemented(format!(
            "body.payload: `{}` records have no ingest rules yet",
            kind_name(other)
        ))),
    }
}

/// Registers the keys named in Genesis (entry 0, built by the ledger itself).
pub fn apply_genesis(
    v: &mut Views<'_>,
    ledger_id: &KeyId,
    g: &pb::Genesis,
    body_bytes: &[u8],
) -> Result<(), Refusal> {
    let ledger_pk = parse_public_key("genesis.ledger_public_key", &g.ledger_public_key)
        .map_err(|e| Refusal::invalid(e.to_string()))?;
    if KeyId::of(&ledger_pk) != *ledger_id {
        return Err(invalid(
            "genesis.ledger_public_key",
            "is not the key that signed genesis",
        ));
    }
    let digest: [u8; 32] = g
        .catalogue_digest
        .as_slice()
        .try_into()
        .map_err(|_| invalid("genesis.catalogue_digest", "must be 32 bytes"))?;
    v.put(META_FORMAT.to_vec(), &VIEW_FORMAT);
    v.put(
        META_GENESIS.to_vec(),
        &GenesisView {
            origin: g.origin.clone(),
            ledger_key: *ledger_id,
            ledger_public_key: ledger_pk.to_bytes(),
            catalogue_version: g.catalogue_version.clone(),
            catalogue_digest: digest,
        },
    );
    v.put(
        key::key(ledger_id),
        &KeyInfo {
            public_key: ledger_pk.to_bytes(),
            role: Role::Ledger as i32,
            enterprise: String::new(),
            jurisdiction: String::new(),
            agency: 0,
            holder: g.origin.clone(),
            not_before_ms: 0,
            not_after_ms: 0,
            revoked_at_ms: None,
            revoked_by_entry: None,
            registered_by_entry: 0,
        },
    );
    for (i, a) in g.root_regulators.iter().enumerate() {
        let info = authority_info(
            &format!("genesis.root_regulators[{i}]"),
            a,
            Role::RootRegulator,
            0,
        )?;
        let id = KeyId::of(
            &ed25519_dalek::VerifyingKey::from_bytes(&info.public_key)
                .map_err(|_| invalid("genesis.root_regulators", "bad key"))?,
        );
        if v.get::<KeyInfo>(&key::key(&id)).map_err(se)?.is_some() {
            return Err(invalid(
                &format!("genesis.root_regulators[{i}]"),
                "key listed twice",
            ));
        }
        v.put(key::key(&id), &info);
    }
    v.advance_head(
        ledger_id,
        &Head::default(),
        0,
        crate::crypto::body_hash(body_bytes),
    )
    .map_err(se)?;
    Ok(())
}

fn authority_info(
    field: &str,
    a: &pb::AuthorityKey,
    role: Role,
    entry: u64,
) -> Result<KeyInfo, Refusal> {
    let pk = parse_public_key("public_key", &a.public_key)
        .map_err(|e| invalid(&format!("{field}.public_key"), e))?;
    check_region_code(&a.jurisdiction, true)
        .map_err(|e| invalid(&format!("{field}.jurisdiction"), e))?;
    if pb::Agency::try_from(a.agency).unwrap_or(pb::Agency::Unspecified) == pb::Agency::Unspecified
    {
        return Err(invalid(&format!("{field}.agency"), "must name an agency"));
    }
    text(&format!("{field}.name"), &a.name, 256)?;
    let (nb, na) = validity(&format!("{field}.validity"), a.validity.as_ref())?;
    Ok(KeyInfo {
        public_key: pk.to_bytes(),
        role: role as i32,
        enterprise: String::new(),
        jurisdiction: a.jurisdiction.clone(),
        agency: a.agency,
        holder: a.name.clone(),
        not_before_ms: nb,
        not_after_ms: na,
        revoked_at_ms: None,
        revoked_by_entry: None,
        registered_by_entry: entry,
    })
}

fn new_key_id(v: &Views<'_>, field: &str, pk: &[u8; 32]) -> Result<KeyId, Refusal> {
    // INVARIANT: callers parsed `pk` with parse_public_key already.
    let vk = ed25519_dalek::VerifyingKey::from_bytes(pk).map_err(|_| invalid(field, "bad key"))?;
    let id = KeyId::of(&vk);
    if v.get::<KeyInfo>(&key::key(&id)).map_err(se)?.is_some() {
        return Err(Refusal::already_exists(format!(
            "{field}: key {id} is already registered"
        )));
    }
    Ok(id)
}

fn register_authority(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer: &KeyInfo,
    p: &pb::RegisterAuthority,
) -> Result<(), Refusal> {
    let a = p
        .authority
        .as_ref()
        .ok_or_else(|| invalid("register_authority.authority", "is required"))?;
    let info = authority_info(
        "register_authority.authority",
        a,
        Role::Regulator,
        ctx.index,
    )?;
    regulator_covers(
        signer,
        &info.jurisdiction,
        "register_authority.authority.jurisdiction",
    )?;
    let id = new_key_id(
        v,
        "register_authority.authority.public_key",
        &info.public_key,
    )?;
    v.put(key::key(&id), &info);
    Ok(())
}

fn enrol_enterprise(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer: &KeyInfo,
    p: &pb::EnrolEnterprise,
) -> Result<(), Refusal> {
    check_credit_code(&p.credit_code).map_err(|e| invalid("enrol_enterprise.credit_code", e))?;
    if p.name.trim().is_empty() {
        return Err(invalid("enrol_enterprise.name", "must not be empty"));
    }
    text("enrol_enterprise.name", &p.name, 256)?;
    check_region_code(&p.jurisdiction, false)
        .map_err(|e| invalid("enrol_enterprise.jurisdiction", e))?;
    regulator_covers(signer, &p.jurisdiction, "enrol_enterprise.jurisdiction")?;
    let mut licences = Vec::new();
    for (i, l) in p.licences.iter().enumerate() {
        let f = format!("enrol_enterprise.licences[{i}]");
        ident(&format!("{f}.licence_no"), &l.licence_no)?;
        if Category::try_from(l.category).unwrap_or(Category::Unspecified) == Category::Unspecified
        {
            return Err(invalid(&format!("{f}.category"), "must name a category"));
        }
        if l.activities.is_empty() {
            return Err(invalid(
                &format!("{f}.activities"),
                "must name at least one activity",
            ));
        }
        for a in &l.activities {
            if Activity::try_from(*a).unwrap_or(Activity::Unspecified) == Activity::Unspecified {
                return Err(invalid(
                    &format!("{f}.activities"),
                    format!("unknown activity {a}"),
                ));
            }
        }
        let (nb, na) = validity(&format!("{f}.validity"), l.validity.as_ref())?;
        licences.push(LicenceView {
            licence_no: l.licence_no.clone(),
            category: l.category,
            activities: l.activities.clone(),
            not_before_ms: nb,
            not_after_ms: na,
        });
    }
    let mut sites: Vec<SiteView> = Vec::new();
    for (i, s) in p.sites.iter().enumerate() {
        ident(&format!("enrol_enterprise.sites[{i}].site_id"), &s.site_id)?;
        text(&format!("enrol_enterprise.sites[{i}].name"), &s.name, 256)?;
        text(
            &format!("enrol_enterprise.sites[{i}].address"),
            &s.address,
            512,
        )?;
        if sites.iter().any(|x| x.site_id == s.site_id) {
            return Err(invalid(
                &format!("enrol_enterprise.sites[{i}].site_id"),
                format!("`{}` listed twice", s.site_id),
            ));
        }
        sites.push(SiteView {
            site_id: s.site_id.clone(),
            name: s.name.clone(),
            address: s.address.clone(),
        });
    }
    let k = key::enterprise(&p.credit_code);
    let existing = v.get::<EnterpriseView>(&k).map_err(se)?;
    let view = match existing {
        Some(mut e) => {
            regulator_covers(signer, &e.jurisdiction, "enrol_enterprise.credit_code")?;
            // Sites that hold stock or have history stay: an amendment may not drop a site.
            for s in &e.sites {
                if !sites.iter().any(|x| x.site_id == s.site_id) {
                    return Err(precondition(
                        "enrol_enterprise.sites",
                        format!("an amendment may not remove site `{}`", s.site_id),
                    ));
                }
            }
            e.name = p.name.clone();
            e.jurisdiction = p.jurisdiction.clone();
            e.licences = licences;
            e.sites = sites;
            e.amended_by_entry.push(ctx.index);
            e
        }
        None => EnterpriseView {
            credit_code: p.credit_code.clone(),
            name: p.name.clone(),
            jurisdiction: p.jurisdiction.clone(),
            licences,
            sites,
            enrolled_by_entry: ctx.index,
            amended_by_entry: Vec::new(),
        },
    };
    v.put(k, &view);
    Ok(())
}

fn register_key(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer: &KeyInfo,
    p: &pb::RegisterKey,
) -> Result<(), Refusal> {
    let pk = parse_public_key("public_key", &p.public_key)
        .map_err(|e| invalid("register_key.public_key", e))?;
    let role = Role::try_from(p.role).unwrap_or(Role::Unspecified);
    let (nb, na) = validity("register_key.validity", p.validity.as_ref())?;
    text("register_key.holder", &p.holder, 256)?;
    let (enterprise, jurisdiction) = match role {
        Role::Enterprise => {
            let ent = v
                .get::<EnterpriseView>(&key::enterprise(&p.enterprise))
                .map_err(se)?
                .ok_or_else(|| precondition("register_key.enterprise", format!("`{}` is not enrolled", p.enterprise)))?;
            regulator_covers(signer, &ent.jurisdiction, "register_key.enterprise")?;
            (ent.credit_code, ent.jurisdiction)
        }
        Role::Inspector | Role::Witness => {
            check_region_code(&p.jurisdiction, true).map_err(|e| invalid("register_key.jurisdiction", e))?;
            regulator_covers(signer, &p.jurisdiction, "register_key.jurisdiction")?;
            if !p.enterprise.is_empty() {
                return Err(invalid("register_key.enterprise", "only enterprise keys name an enterprise"));
            }
            (String::new(), p.jurisdiction.clone())
        }
        _ => {
            return Err(invalid(
                "register_key.role",
                "must be ROLE_ENTERPRISE, ROLE_INSPECTOR or ROLE_WITNESS (regulator keys use register_authority)",
            ))
        }
    };
    let id = new_key_id(v, "register_key.public_key", &pk.to_bytes())?;
    v.put(
        key::key(&id),
        &KeyInfo {
            public_key: pk.to_bytes(),
            role: role as i32,
            enterprise,
            jurisdiction,
            agency: 0,
            holder: p.holder.clone(),
            not_before_ms: nb,
            not_after_ms: na,
            revoked_at_ms: None,
            revoked_by_entry: None,
            registered_by_entry: ctx.index,
        },
    );
    Ok(())
}

fn revoke_key(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    signer_id: &KeyId,
    signer: &KeyInfo,
    p: &pb::RevokeKey,
) -> Result<(), Refusal> {
    let id = KeyId::from_slice("revoke_key.key_id", &p.key_id)
        .map_err(|e| invalid("revoke_key.key_id", e))?;
    text("revoke_key.reason", &p.reason, 1024)?;
    let mut info = v
        .get::<KeyInfo>(&key::key(&id))
        .map_err(se)?
        .ok_or_else(|| {
            Refusal::not_found(format!("revoke_key.key_id: key {id} is not registered"))
        })?;
    if info.revoked_at_ms.is_some() {
        return Err(precondition(
            "revoke_key.key_id",
            format!("key {id} is already revoked"),
        ));
    }
    let role = Role::try_from(info.role).unwrap_or(Role::Unspecified);
    match role {
        Role::Ledger => {
            return Err(Refusal::permission_denied(
                "revoke_key.key_id: the ledger key cannot be revoked by a record".into(),
            ))
        }
        Role::RootRegulator | Role::Regulator if signer.role != Role::RootRegulator as i32 => {
            return Err(Refusal::permission_denied(
                "revoke_key.key_id: only a root regulator revokes regulator keys".into(),
            ))
        }
        _ => {}
    }
    if &id == signer_id {
        return Err(precondition(
            "revoke_key.key_id",
            "a key may not revoke itself",
        ));
    }
    regulator_covers(signer, &info.jurisdiction, "revoke_key.key_id")?;
    info.revoked_at_ms = Some(ctx.now_ms);
    info.revoked_by_entry = Some(ctx.index);
    v.put(key::key(&id), &info);
    Ok(())
}

fn produce(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    id: &KeyId,
    signer: &KeyInfo,
    p: &pb::Produce,
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
        "produce",
        &p.site_id,
        &p.substance,
        p.quantity.as_ref(),
        &p.lot,
    )?;
    licensed_for(v, &ent, s, Activity::Produce, ctx.now_ms)?;
    new_lot(v, "produce.lot", &p.lot)?;
    custody::two_person(ctx, v, signer, s, "produce")?;
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
            term: Term::Produced,
            quantity: q,
            shipment: None,
        },
        "produce.quantity.amount",
        LotView {
            substance: s.id.clone(),
            created_by: ent.credit_code.clone(),
            created_by_entry: ctx.index,
            site: p.site_id.clone(),
            derived_from: None,
            book: Book::default(),
        },
    )?;
    // No `PostedView`: a correction finds the produce through its lot (`custody::produced`).
    posting.write(v);
    Ok(())
}

fn ship(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    id: &KeyId,
    signer: &KeyInfo,
    p: &pb::Ship,
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
        "ship",
        &p.site_id,
        &p.substance,
        p.quantity.as_ref(),
        &p.lot,
    )?;
    lot_of(v, "ship.lot", &p.lot, s)?;
    custody::two_person(ctx, v, signer, s, "ship")?;
    let same_enterprise = p.consignee == ent.credit_code;
    if !same_enterprise {
        payment_method("ship.payment_method", &p.payment_method)?;
        licensed_for(v, &ent, s, Activity::Sell, ctx.now_ms)?;
    }
    let consignee = v
        .get::<EnterpriseView>(&key::enterprise(&p.consignee))
        .map_err(se)?
        .ok_or_else(|| {
            precondition(
                "ship.consignee",
                format!("`{}` is not an enrolled enterprise", p.consignee),
            )
        })?;
    site(&consignee, "ship.consignee_site", &p.consignee_site)?;
    if same_enterprise && p.consignee_site == p.site_id {
        return Err(invalid(
            "ship.consignee_site",
            "a shipment must go to another site",
        ));
    }
    if !same_enterprise {
        licensed(&consignee, s.category, Activity::Purchase, ctx.now_ms)
            .map_err(|r| Refusal::precondition(format!("ship.consignee: {}", r.message)))?;
    }
    if !p.carrier.is_empty() {
        let carrier = v
            .get::<EnterpriseView>(&key::enterprise(&p.carrier))
            .map_err(se)?
            .ok_or_else(|| {
                precondition(
                    "ship.carrier",
                    format!("`{}` is not an enrolled enterprise", p.carrier),
                )
            })?;
        licensed(&carrier, s.category, Activity::Transport, ctx.now_ms)
            .map_err(|r| Refusal::precondition(format!("ship.carrier: {}", r.message)))?;
    }
    // The buyer's permit (a sale) and the consignor's transport permit, as the table says.
    let purchase_needs: &[pb::PermitType] = if same_enterprise {
        &[]
    } else {
        permits::purchase_needs(v, &consignee, s, ctx.now_ms)?
    };
    let transport_needs = crate::model::regulation::needs(
        crate::model::regulation::Class::of(s),
        Movement::Transport,
    )
    .needs;
    let mut draws = Vec::new();
    for (field, r, needs, draw) in [
        (
            "ship.permit",
            &p.permit,
            purchase_needs,
            Draw {
                field: "ship.permit",
                movement: Movement::Purchase,
                holder: &consignee.credit_code,
                counterparty: &ent.credit_code,
                substance: s,
                quantity: q,
                quantity_field: "ship.quantity.amount",
            },
        ),
        (
            "ship.transport_permit",
            &p.transport_permit,
            transport_needs,
            Draw {
                field: "ship.transport_permit",
                movement: Movement::Transport,
                holder: &ent.credit_code,
                counterparty: "",
                substance: s,
                quantity: q,
                quantity_field: "ship.quantity.amount",
            },
        ),
    ] {
        let class = crate::model::regulation::Class::of(s);
        match (r, needs.is_empty()) {
            (None, true) => continue,
            (None, false) => {
                return Err(precondition(
                    field,
                    format!(
                        "a {} {} needs a {}{}; none cited",
                        class.name(),
                        draw.movement.name(),
                        crate::model::regulation::type_names(needs),
                        if draw.movement == Movement::Purchase {
                            format!(" held by the buyer {}", consignee.credit_code)
                        } else {
                            String::new()
                        }
                    ),
                ))
            }
            (Some(_), true) => {
                return Err(invalid(
                    field,
                    if same_enterprise && draw.movement == Movement::Purchase {
                        "a transfer between one enterprise's sites draws on no purchase permit"
                            .to_string()
                    } else {
                        format!(
                            "a {} {} needs no permit",
                            class.name(),
                            draw.movement.name()
                        )
                    },
                ))
            }
            (Some(_), false) => {}
        }
        let permit = permits::cited(ctx, v, field, r.as_ref())?;
        permits::check_draw(ctx, &permit, &draw)?;
        if draw.movement == Movement::Transport {
            let mismatch = |what: &str, want: &str, got: &str| {
                precondition(
                    field,
                    format!(
                        "{} names {what} `{want}`, the shipment `{got}`",
                        permits::name(&permit)
                    ),
                )
            };
            if permit.consignee != consignee.credit_code {
                return Err(mismatch(
                    "consignee",
                    &permit.consignee,
                    &consignee.credit_code,
                ));
            }
            if !permit.carrier.is_empty() && permit.carrier != p.carrier {
                return Err(mismatch("carrier", &permit.carrier, &p.carrier));
            }
            if !permit.origin_site.is_empty() && permit.origin_site != p.site_id {
                return Err(mismatch("origin site", &permit.origin_site, &p.site_id));
            }
            if !permit.destination_site.is_empty() && permit.destination_site != p.consignee_site {
                return Err(mismatch(
                    "destination site",
                    &permit.destination_site,
                    &p.consignee_site,
                ));
            }
        }
        if draws
            .iter()
            .any(|(d, _): &(PermitView, Draw)| d.issue_entry == permit.issue_entry)
        {
            return Err(invalid(field, "the same permit is cited twice"));
        }
        draws.push((permit, draw));
    }
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
            term: Term::Shipped,
            quantity: q,
            shipment: Some(ctx.index),
        },
        "ship.quantity.amount",
    )?;
    let shipment = ShipmentView {
        ship_entry: ctx.index,
        from_enterprise: ent.credit_code.clone(),
        from_site: p.site_id.clone(),
        to_enterprise: consignee.credit_code.clone(),
        to_site: p.consignee_site.clone(),
        substance: s.id.clone(),
        lot: p.lot.clone(),
        quantity: q,
        shipped_at_ms: ctx.now_ms,
        expected_delivery_ms: p.expected_delivery_ms,
        received: None,
        carrier: p.carrier.clone(),
        legs: Vec::new(),
        permits: draws.iter().map(|(d, _)| d.issue_entry).collect(),
    };
    posting.write(v);
    v.put_raw(
        [
            key::shipments_from(&shipment.from_enterprise),
            ctx.index.to_be_bytes().to_vec(),
        ]
        .concat(),
        Vec::new(),
    );
    v.put_raw(
        [
            key::shipments_to(&shipment.to_enterprise),
            ctx.index.to_be_bytes().to_vec(),
        ]
        .concat(),
        Vec::new(),
    );
    for (permit, draw) in draws {
        permits::apply_draw(ctx, v, permit, &draw, &shipment);
    }
    v.put(key::shipment(ctx.index), &shipment);
    Ok(())
}

/// Payment methods a sale may record. Cash and barter are forbidden by the regulations;
/// anything unlisted is refused too, so that no variant spelling of either slips through.
pub const PAYMENT_METHODS: &[&str] = &[
    "bank_transfer",
    "electronic_payment",
    "cheque",
    "letter_of_credit",
    "bank_acceptance_bill",
];

const FORBIDDEN_PAYMENT: &[&str] = &["cash", "barter", "现金", "以物易物", "易货", "物物交换"];

/// Checks a sale's payment method, normalised: trimmed, lowercase, spaces and hyphens as `_`.
fn payment_method(field: &str, raw: &str) -> Result<(), Refusal> {
    let m: String = raw
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| if c == ' ' || c == '-' { '_' } else { c })
        .collect();
    if FORBIDDEN_PAYMENT.iter().any(|f| m.contains(f)) {
        return Err(precondition(
            field,
            format!("`{raw}`: cash and barter trades are forbidden"),
        ));
    }
    if !PAYMENT_METHODS.contains(&m.as_str()) {
        return Err(invalid(
            field,
            format!(
                "`{raw}` is not a recorded payment method (one of {})",
                PAYMENT_METHODS.join(", ")
            ),
        ));
    }
    Ok(())
}

fn receive(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    id: &KeyId,
    signer: &KeyInfo,
    p: &pb::Receive,
) -> Result<(), Refusal> {
    let ent = enterprise_of(v, signer, id)?;
    let ship_index = entry_ref(ctx, "receive.ship", p.ship.as_ref())?;
    let mut shipment = v
        .get::<ShipmentView>(&key::shipment(ship_index))
        .map_err(se)?
        .filter(|s| s.to_enterprise == ent.credit_code)
        .ok_or_else(|| {
            precondition(
                "receive.ship",
                format!(
                    "entry {ship_index} is not a shipment to {}",
                    ent.credit_code
                ),
            )
        })?;
    if let Some(r) = &shipment.received {
        return Err(Refusal::already_exists(format!(
            "receive.ship: shipment {ship_index} was already received by entry {}",
            r.receive_entry
        )));
    }
    site(&ent, "receive.site_id", &p.site_id)?;
    if p.site_id != shipment.to_site {
        return Err(precondition(
            "receive.site_id",
            format!(
                "shipment {ship_index} is consigned to site `{}`",
                shipment.to_site
            ),
        ));
    }
    let s = substance(ctx, "receive.substance", &shipment.substance)?;
    custody::two_person(ctx, v, signer, s, "receive")?;
    let q = quantity("receive.quantity", p.quantity.as_ref(), s, false)?;
    if q > shipment.quantity {
        return Err(precondition(
            "receive.quantity.amount",
            format!(
                "{q} exceeds the {} shipped by entry {ship_index}",
                shipment.quantity
            ),
        ));
    }
    // No licence check here: the buyer's PURCHASE licence was checked when the seller shipped,
    // and a receipt records what physically arrived — refusing it because a licence lapsed in
    // transit would leave the goods unaccounted for.
    let lot_id = if p.lot.is_empty() {
        shipment.lot.clone()
    } else {
        p.lot.clone()
    };
    ident("receive.lot", &lot_id)?;
    let new_lot = if lot_id != shipment.lot {
        match v.get::<LotView>(&key::lot(&lot_id)).map_err(se)? {
            Some(l) if l.substance != s.id => {
                return Err(precondition(
                    "receive.lot",
                    format!("lot `{lot_id}` is {}, not {}", l.substance, s.id),
                ))
            }
            Some(l) if l.created_by != ent.credit_code => {
                return Err(precondition(
                    "receive.lot",
                    format!(
                        "lot `{lot_id}` belongs to {}; goods may be merged only into the receiver's own lots",
                        l.created_by
                    ),
                ))
            }
            Some(_) => None,
            None => Some(LotView {
                substance: s.id.clone(),
                created_by: ent.credit_code.clone(),
                created_by_entry: ctx.index,
                site: p.site_id.clone(),
                derived_from: Some(shipment.lot.clone()),
                book: Book::default(),
            }),
        }
    } else {
        None
    };
    let h = Holding {
        enterprise: &ent.credit_code,
        site: &p.site_id,
        substance: &s.id,
        lot: &lot_id,
    };
    let change = Change::Move {
        term: Term::Received,
        quantity: q,
        shipment: Some(ship_index),
    };
    let posting = if let Some(lot) = new_lot {
        stock::prepare_new_lot(ctx, v, &h, change, "receive.quantity.amount", lot)?
    } else {
        stock::prepare(ctx, v, &h, change, "receive.quantity.amount")?
    };
    // Each permit the shipment drew on learns what its buyer side received.
    let mut permits_received = Vec::new();
    for &i in &shipment.permits {
        let mut permit = v
            .get::<PermitView>(&key::permit(i))
            .map_err(se)?
            .ok_or_else(|| Refusal::internal(format!("permit {i} of shipment {ship_index}")))?;
        permit.received = permit.received.checked_add(q).ok_or_else(|| {
            precondition("receive.quantity.amount", "permit total would overflow u64")
        })?;
        permits_received.push(permit);
    }
    posting.write(v);
    shipment.received = Some(ReceivedView {
        receive_entry: ctx.index,
        site: p.site_id.clone(),
        lot: lot_id.clone(),
        quantity: q,
        at_ms: ctx.now_ms,
        corrected_by: Vec::new(),
    });
    for permit in permits_received {
        v.put(key::draw(permit.issue_entry, ship_index), &shipment);
        v.put(key::permit(permit.issue_entry), &permit);
    }
    v.put(key::shipment(ship_index), &shipment);
    Ok(())
}

fn stock_take(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    id: &KeyId,
    signer: &KeyInfo,
    p: &pb::StockTake,
) -> Result<(), Refusal> {
    let ent = enterprise_of(v, signer, id)?;
    site(&ent, "stock_take.site_id", &p.site_id)?;
    if p.counts.is_empty() {
        return Err(invalid(
            "stock_take.counts",
            "must count at least one substance × lot",
        ));
    }
    let counts = custody::checked_counts(ctx, v, "stock_take.counts", &p.counts)?;
    stock::count(ctx, v, &ent.credit_code, &p.site_id, &counts, false)
}
