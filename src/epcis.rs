//! GS1 EPCIS 2.0 (JSON-LD) for ledger movements, both ways. Pure: no I/O.
//!
//! Every movement record is one event, with CBV 2.0 business steps and dispositions:
//!
//! | record | event | action | bizStep | disposition |
//! |---|---|---|---|---|
//! | `Produce` | ObjectEvent | ADD | `commissioning` | `active` |
//! | `Import` | ObjectEvent | ADD | `arriving` | `active` |
//! | `Ship` | TransactionEvent | ADD | `shipping` | `in_transit` |
//! | `Receive` | ObjectEvent | OBSERVE | `receiving` | `in_progress` |
//! | `Export` | TransactionEvent | ADD | `departing` | `in_transit` |
//! | `StockTake` | ObjectEvent | OBSERVE | `cycle_counting` | — |
//! | `Consume` | TransformationEvent | — | `dispensing` (drugs), `urn:taizhang:bizstep:using` | — |
//! | `Destroy` | ObjectEvent | DELETE | `destroying` | `destroyed` |
//! | `LossReport` | ObjectEvent | OBSERVE | `urn:taizhang:bizstep:reporting-loss` | `stolen` / `unknown` / `damaged` |
//!
//! Identifiers are URNs: a lot is the class `urn:taizhang:lot:<substance>:<lot>`, a site
//! `urn:taizhang:site:<credit code>:<site>`, a party `urn:taizhang:party:<credit code>`, an entry
//! `urn:taizhang:entry:<index>:<leaf hash hex>` (the event's `eventID`, and the business
//! transactions a movement cites: its permits, licence or shipment). A permit may also be named
//! `urn:taizhang:permit:<number>` in a document written by hand; the importer resolves it.
//! Quantities are in the base unit (`MGM` milligram, `MLT` millilitre, `C62` dose). What EPCIS
//! has no field for is in the `tz:` extension namespace. Event shapes not in the table are
//! refused by name.

use crate::model::Catalogue;
use crate::pb::{self, record_body::Payload};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

/// The JSON-LD context: GS1's, and ours for the extension fields.
pub const TZ_NAMESPACE: &str = "https://taizhang.example/epcis/";
const GS1_CONTEXT: &str = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld";
const USING: &str = "urn:taizhang:bizstep:using";
const REPORTING_LOSS: &str = "urn:taizhang:bizstep:reporting-loss";
const BTT_PERMIT: &str = "urn:taizhang:btt:permit";
const BTT_TRANSPORT: &str = "urn:taizhang:btt:transport-permit";
const BTT_LICENCE: &str = "urn:taizhang:btt:licence";
const BTT_SHIPMENT: &str = "urn:taizhang:btt:shipment";

/// Characters kept as they are in a URN part (RFC 3986 unreserved, minus `:` which separates).
const PART: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn part(s: &str) -> String {
    utf8_percent_encode(s, PART).to_string()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {rule}")]
pub struct EpcisError {
    pub field: String,
    pub rule: String,
}

fn err(field: impl Into<String>, rule: impl Into<String>) -> EpcisError {
    EpcisError {
        field: field.into(),
        rule: rule.into(),
    }
}

/// One ledger entry to express as an event.
pub struct Entry<'a> {
    pub index: u64,
    pub leaf_hash: &'a [u8],
    pub integrated_time_ms: u64,
    /// The credit code of the enterprise whose key signed it.
    pub enterprise: &'a str,
    pub payload: &'a Payload,
    /// For a `Receive`: the substance and lot of the shipment it answers.
    pub shipped: Option<(&'a str, &'a str)>,
}

pub fn entry_urn(r: &pb::EntryRef) -> String {
    format!(
        "urn:taizhang:entry:{}:{}",
        r.index,
        hex::encode(&r.leaf_hash)
    )
}

fn lot_class(substance: &str, lot: &str) -> String {
    format!("urn:taizhang:lot:{}:{}", part(substance), part(lot))
}

fn site_urn(enterprise: &str, site: &str) -> String {
    format!("urn:taizhang:site:{}:{}", part(enterprise), part(site))
}

fn party_urn(enterprise: &str) -> String {
    format!("urn:taizhang:party:{}", part(enterprise))
}

fn uom(unit: i32) -> &'static str {
    match pb::Unit::try_from(unit) {
        Ok(pb::Unit::Millilitre) => "MLT",
        Ok(pb::Unit::Dose) => "C62",
        _ => "MGM",
    }
}

fn unit_of(uom: &str, field: &str) -> Result<i32, EpcisError> {
    Ok(match uom {
        "MGM" => pb::Unit::Milligram as i32,
        "MLT" => pb::Unit::Millilitre as i32,
        "C62" => pb::Unit::Dose as i32,
        other => {
            return Err(err(
                field,
                format!("unit `{other}` is not a base unit here (MGM, MLT or C62)"),
            ))
        }
    })
}

fn quantity(substance: &str, lot: &str, q: &Option<pb::Quantity>) -> Value {
    let q = q.unwrap_or_default();
    json!({"epcClass": lot_class(substance, lot), "quantity": q.amount, "uom": uom(q.unit)})
}

fn time(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

fn btx(kind: &str, r: &Option<pb::EntryRef>) -> Option<Value> {
    r.as_ref()
        .map(|r| json!({"type": kind, "bizTransaction": entry_urn(r)}))
}

/// The event for one entry, or `None` for records that are not movements (enrolments, keys,
/// permits, clearances, corrections, inspections, transport legs).
pub fn event(e: &Entry<'_>, catalogue: &Catalogue) -> Option<Value> {
    let here = |site: &str| json!({"id": site_urn(e.enterprise, site)});
    let mut v = Map::new();
    let mut set = |k: &str, x: Value| {
        v.insert(k.to_string(), x);
    };
    match e.payload {
        Payload::Produce(p) => {
            set("type", json!("ObjectEvent"));
            set("action", json!("ADD"));
            set("bizStep", json!("commissioning"));
            set("disposition", json!("active"));
            set(
                "quantityList",
                json!([quantity(&p.substance, &p.lot, &p.quantity)]),
            );
            set("readPoint", here(&p.site_id));
            set("bizLocation", here(&p.site_id));
        }
        Payload::Import(p) => {
            set("type", json!("ObjectEvent"));
            set("action", json!("ADD"));
            set("bizStep", json!("arriving"));
            set("disposition", json!("active"));
            set(
                "quantityList",
                json!([quantity(&p.substance, &p.lot, &p.quantity)]),
            );
            set("readPoint", here(&p.site_id));
            set("bizLocation", here(&p.site_id));
            set(
                "bizTransactionList",
                json!(btx(BTT_LICENCE, &p.licence).into_iter().collect::<Vec<_>>()),
            );
            set("tz:country", json!(p.country));
            set("tz:exporter", json!(p.exporter));
        }
        Payload::Ship(p) => {
            // A transaction event needs a business transaction; a shipment that draws on no
            // permit (to a designated wholesaler, of a class II psychotropic) is an object event.
            let cited = p.permit.is_some() || p.transport_permit.is_some();
            set(
                "type",
                json!(if cited {
                    "TransactionEvent"
                } else {
                    "ObjectEvent"
                }),
            );
            set("action", json!(if cited { "ADD" } else { "OBSERVE" }));
            set("bizStep", json!("shipping"));
            set("disposition", json!("in_transit"));
            set(
                "quantityList",
                json!([quantity(&p.substance, &p.lot, &p.quantity)]),
            );
            set("readPoint", here(&p.site_id));
            let list: Vec<Value> = [
                btx(BTT_PERMIT, &p.permit),
                btx(BTT_TRANSPORT, &p.transport_permit),
            ]
            .into_iter()
            .flatten()
            .collect();
            if cited {
                set("bizTransactionList", json!(list));
            }
            set(
                "sourceList",
                json!([
                    {"type": "owning_party", "source": party_urn(e.enterprise)},
                    {"type": "location", "source": site_urn(e.enterprise, &p.site_id)}
                ]),
            );
            set(
                "destinationList",
                json!([
                    {"type": "owning_party", "destination": party_urn(&p.consignee)},
                    {"type": "location", "destination": site_urn(&p.consignee, &p.consignee_site)}
                ]),
            );
            if !p.carrier.is_empty() {
                set("tz:carrier", json!(party_urn(&p.carrier)));
            }
            if p.expected_delivery_ms > 0 {
                set("tz:expectedDelivery", json!(time(p.expected_delivery_ms)));
                set("tz:expectedDeliveryMs", json!(p.expected_delivery_ms));
            }
            set("tz:paymentMethod", json!(p.payment_method));
        }
        Payload::Receive(p) => {
            set("type", json!("ObjectEvent"));
            set("action", json!("OBSERVE"));
            set("bizStep", json!("receiving"));
            set("disposition", json!("in_progress"));
            let (substance, lot) = e.shipped.unwrap_or(("", ""));
            set(
                "quantityList",
                json!([quantity(substance, lot, &p.quantity)]),
            );
            set("readPoint", here(&p.site_id));
            set("bizLocation", here(&p.site_id));
            set(
                "bizTransactionList",
                json!(btx(BTT_SHIPMENT, &p.ship).into_iter().collect::<Vec<_>>()),
            );
            if !p.lot.is_empty() {
                set("tz:receivedLot", json!(p.lot));
            }
        }
        Payload::Export(p) => {
            set("type", json!("TransactionEvent"));
            set("action", json!("ADD"));
            set("bizStep", json!("departing"));
            set("disposition", json!("in_transit"));
            set(
                "quantityList",
                json!([quantity(&p.substance, &p.lot, &p.quantity)]),
            );
            set("readPoint", here(&p.site_id));
            set(
                "bizTransactionList",
                json!(btx(BTT_LICENCE, &p.licence).into_iter().collect::<Vec<_>>()),
            );
            set("tz:country", json!(p.country));
            set("tz:importer", json!(p.importer));
            set("tz:penReference", json!(p.pen_reference));
        }
        Payload::StockTake(p) => {
            set("type", json!("ObjectEvent"));
            set("action", json!("OBSERVE"));
            set("bizStep", json!("cycle_counting"));
            let list: Vec<Value> = p
                .counts
                .iter()
                .map(|c| quantity(&c.substance, &c.lot, &c.quantity))
                .collect();
            set("quantityList", json!(list));
            set("readPoint", here(&p.site_id));
            set("bizLocation", here(&p.site_id));
        }
        Payload::Consume(p) => {
            let drug = catalogue.get(&p.substance).is_some_and(|s| {
                matches!(
                    s.category,
                    pb::Category::Narcotic
                        | pb::Category::Psychotropic1
                        | pb::Category::Psychotropic2
                )
            });
            set("type", json!("TransformationEvent"));
            set("bizStep", json!(if drug { "dispensing" } else { USING }));
            set(
                "inputQuantityList",
                json!([quantity(&p.substance, &p.lot, &p.quantity)]),
            );
            set("readPoint", here(&p.site_id));
            set("bizLocation", here(&p.site_id));
            set("tz:purpose", json!(p.purpose));
        }
        Payload::Destroy(p) => {
            set("type", json!("ObjectEvent"));
            set("action", json!("DELETE"));
            set("bizStep", json!("destroying"));
            set("disposition", json!("destroyed"));
            set(
                "quantityList",
                json!([quantity(&p.substance, &p.lot, &p.quantity)]),
            );
            set("readPoint", here(&p.site_id));
            set("tz:method", json!(p.method));
            set("tz:applicationRef", json!(p.application_ref));
        }
        Payload::LossReport(p) => {
            let kind = pb::LossKind::try_from(p.kind).unwrap_or(pb::LossKind::Unspecified);
            set("type", json!("ObjectEvent"));
            set("action", json!("OBSERVE"));
            set("bizStep", json!(REPORTING_LOSS));
            set(
                "disposition",
                json!(match kind {
                    pb::LossKind::Theft | pb::LossKind::Robbery => "stolen",
                    pb::LossKind::Spillage => "damaged",
                    _ => "unknown",
                }),
            );
            set(
                "quantityList",
                json!([quantity(&p.substance, &p.lot, &p.quantity)]),
            );
            set("readPoint", here(&p.site_id));
            set(
                "tz:lossKind",
                json!(kind.as_str_name().trim_start_matches("LOSS_KIND_")),
            );
            set("tz:policeReportRef", json!(p.police_report_ref));
        }
        _ => return None,
    }
    v.insert(
        "eventID".into(),
        json!(format!(
            "urn:taizhang:entry:{}:{}",
            e.index,
            hex::encode(e.leaf_hash)
        )),
    );
    v.insert("eventTime".into(), json!(time(e.integrated_time_ms)));
    v.insert("eventTimeZoneOffset".into(), json!("+08:00"));
    Some(Value::Object(v))
}

/// An EPCIS 2.0 document around `events`.
pub fn document(origin: &str, created_ms: u64, events: Vec<Value>) -> Value {
    json!({
        "@context": [GS1_CONTEXT, {"tz": TZ_NAMESPACE}],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": time(created_ms),
        "tz:ledger": origin,
        "epcisBody": {"eventList": events}
    })
}

/// A reference an imported event makes, resolved before signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cited {
    /// An entry, exactly (`urn:taizhang:entry:<index>:<hash>`).
    Entry(pb::EntryRef),
    /// A permit or licence by its number, to be looked up.
    PermitNo(String),
}

/// Which reference field of the payload a [`Cited`] fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Permit,
    TransportPermit,
    Licence,
    Shipment,
}

/// An imported event: the record it becomes, and the references still to fill in.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub payload: Payload,
    pub cites: Vec<(Slot, Cited)>,
    /// The enterprise the event's `readPoint` names: it must be the signer's.
    pub site_owner: String,
}

impl Imported {
    /// Puts the resolved entry into its field.
    pub fn fill(&mut self, slot: Slot, r: pb::EntryRef) {
        match (&mut self.payload, slot) {
            (Payload::Ship(s), Slot::Permit) => s.permit = Some(r),
            (Payload::Ship(s), Slot::TransportPermit) => s.transport_permit = Some(r),
            (Payload::Import(s), Slot::Licence) => s.licence = Some(r),
            (Payload::Export(s), Slot::Licence) => s.licence = Some(r),
            (Payload::Receive(s), Slot::Shipment) => s.ship = Some(r),
            _ => {}
        }
    }
}

struct Ev<'a> {
    v: &'a Map<String, Value>,
    at: String,
}

impl Ev<'_> {
    fn f(&self, k: &str) -> String {
        format!("{}.{k}", self.at)
    }
    fn str(&self, k: &str) -> Result<String, EpcisError> {
        match self.v.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(err(self.f(k), "must be a string")),
            None => Err(err(self.f(k), "is required")),
        }
    }
    fn opt_str(&self, k: &str) -> Result<String, EpcisError> {
        match self.v.get(k) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(_) => self.str(k),
        }
    }
    /// `readPoint` / `bizLocation` → (the enterprise named, the site id).
    fn site(&self, k: &str) -> Result<(String, String), EpcisError> {
        let id = match self.v.get(k).and_then(|x| x.get("id")) {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(err(
                    format!("{}.id", self.f(k)),
                    "is required (urn:taizhang:site:CODE:SITE)",
                ))
            }
        };
        site_parts(&id).ok_or_else(|| {
            err(
                format!("{}.id", self.f(k)),
                format!("`{id}` is not urn:taizhang:site:<credit code>:<site>"),
            )
        })
    }
    fn quantities(&self, k: &str) -> Result<Vec<(String, String, pb::Quantity)>, EpcisError> {
        let list = match self.v.get(k) {
            Some(Value::Array(a)) => a,
            _ => return Err(err(self.f(k), "is required (a list)")),
        };
        let mut out = Vec::new();
        for (i, q) in list.iter().enumerate() {
            let at = format!("{}[{i}]", self.f(k));
            let class = q
                .get("epcClass")
                .and_then(Value::as_str)
                .ok_or_else(|| err(format!("{at}.epcClass"), "is required"))?;
            let (substance, lot) = lot_parts(class).ok_or_else(|| {
                err(
                    format!("{at}.epcClass"),
                    format!("`{class}` is not urn:taizhang:lot:<substance>:<lot>"),
                )
            })?;
            let amount = q.get("quantity").and_then(Value::as_u64).ok_or_else(|| {
                err(
                    format!("{at}.quantity"),
                    "must be a whole number of the base unit",
                )
            })?;
            // Without a unit EPCIS means a count of items, which is not a base unit here.
            let uom = q
                .get("uom")
                .and_then(Value::as_str)
                .ok_or_else(|| err(format!("{at}.uom"), "is required (MGM, MLT or C62)"))?;
            let unit = unit_of(uom, &format!("{at}.uom"))?;
            out.push((substance, lot, pb::Quantity { amount, unit }));
        }
        Ok(out)
    }
    fn one(&self, k: &str) -> Result<(String, String, pb::Quantity), EpcisError> {
        let mut q = self.quantities(k)?;
        if q.len() != 1 {
            return Err(err(
                self.f(k),
                format!("must hold exactly one quantity, holds {}", q.len()),
            ));
        }
        Ok(q.remove(0))
    }
    fn cites(&self, kinds: &[(&str, Slot)]) -> Result<Vec<(Slot, Cited)>, EpcisError> {
        let mut out = Vec::new();
        let Some(list) = self.v.get("bizTransactionList") else {
            return Ok(out);
        };
        let list = list
            .as_array()
            .ok_or_else(|| err(self.f("bizTransactionList"), "must be a list"))?;
        for (i, b) in list.iter().enumerate() {
            let at = format!("{}[{i}]", self.f("bizTransactionList"));
            let t = b.get("type").and_then(Value::as_str).unwrap_or("");
            let Some(&(_, slot)) = kinds.iter().find(|(k, _)| *k == t) else {
                return Err(err(
                    format!("{at}.type"),
                    format!(
                        "`{t}` is not a business transaction this event cites (expected {})",
                        kinds
                            .iter()
                            .map(|(k, _)| *k)
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                ));
            };
            let id = b
                .get("bizTransaction")
                .and_then(Value::as_str)
                .ok_or_else(|| err(format!("{at}.bizTransaction"), "is required"))?;
            out.push((slot, cited(id).ok_or_else(|| {
                err(
                    format!("{at}.bizTransaction"),
                    format!("`{id}` is neither urn:taizhang:entry:<index>:<leaf hash> nor urn:taizhang:permit:<number>"),
                )
            })?));
        }
        Ok(out)
    }
}

fn decode(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

fn lot_parts(class: &str) -> Option<(String, String)> {
    let rest = class.strip_prefix("urn:taizhang:lot:")?;
    let (s, l) = rest.split_once(':')?;
    Some((decode(s)?, decode(l)?))
}

fn site_parts(id: &str) -> Option<(String, String)> {
    let rest = id.strip_prefix("urn:taizhang:site:")?;
    let (e, s) = rest.split_once(':')?;
    Some((decode(e)?, decode(s)?))
}

fn party(id: &str) -> Option<String> {
    decode(id.strip_prefix("urn:taizhang:party:")?)
}

fn cited(id: &str) -> Option<Cited> {
    if let Some(rest) = id.strip_prefix("urn:taizhang:entry:") {
        let (i, h) = rest.split_once(':')?;
        let hash = hex::decode(h).ok().filter(|h| h.len() == 32)?;
        return Some(Cited::Entry(pb::EntryRef {
            origin: String::new(),
            index: i.parse().ok()?,
            leaf_hash: hash,
        }));
    }
    id.strip_prefix("urn:taizhang:permit:")
        .and_then(decode)
        .filter(|n| !n.is_empty())
        .map(Cited::PermitNo)
}

/// The events of an EPCIS 2.0 document as records, in document order. Refuses, naming the
/// field, any event whose shape has no record here.
pub fn parse(doc: &Value) -> Result<Vec<Imported>, EpcisError> {
    if doc.get("type").and_then(Value::as_str) != Some("EPCISDocument") {
        return Err(err("type", "must be `EPCISDocument`"));
    }
    match doc.get("schemaVersion").and_then(Value::as_str) {
        Some(v) if v.starts_with("2.") => {}
        Some(v) => {
            return Err(err(
                "schemaVersion",
                format!("`{v}`: only EPCIS 2.x is read"),
            ))
        }
        None => return Err(err("schemaVersion", "is required")),
    }
    let list = doc
        .pointer("/epcisBody/eventList")
        .and_then(Value::as_array)
        .ok_or_else(|| err("epcisBody.eventList", "is required (a list)"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, e) in list.iter().enumerate() {
        let at = format!("epcisBody.eventList[{i}]");
        let v = e.as_object().ok_or_else(|| err(&at, "must be an object"))?;
        out.push(one(&Ev { v, at })?);
    }
    Ok(out)
}

fn one(e: &Ev<'_>) -> Result<Imported, EpcisError> {
    let ty = e.str("type")?;
    let action = e.opt_str("action")?;
    let step = e.opt_str("bizStep")?;
    let step = step
        .strip_prefix("https://ref.gs1.org/cbv/BizStep-")
        .unwrap_or(&step)
        .to_string();
    let mut cites = Vec::new();
    // Every movement happens at a site of the enterprise that records it.
    let (owner, here) = match ty.as_str() {
        "ObjectEvent" | "TransactionEvent" | "TransformationEvent" => e.site("readPoint")?,
        _ => Default::default(),
    };
    let payload = match (ty.as_str(), action.as_str(), step.as_str()) {
        ("ObjectEvent", "ADD", "commissioning") => {
            let (substance, lot, q) = e.one("quantityList")?;
            Payload::Produce(pb::Produce {
                site_id: here.clone(),
                substance,
                lot,
                quantity: Some(q),
            })
        }
        ("ObjectEvent", "ADD", "arriving") => {
            let (substance, lot, q) = e.one("quantityList")?;
            cites = e.cites(&[(BTT_LICENCE, Slot::Licence)])?;
            Payload::Import(pb::Import {
                site_id: here.clone(),
                substance,
                lot,
                quantity: Some(q),
                licence: None,
                country: e.str("tz:country")?,
                exporter: e.str("tz:exporter")?,
            })
        }
        ("TransactionEvent", "ADD", "shipping") | ("ObjectEvent", "OBSERVE", "shipping") => {
            let (substance, lot, q) = e.one("quantityList")?;
            cites = e.cites(&[(BTT_PERMIT, Slot::Permit), (BTT_TRANSPORT, Slot::TransportPermit)])?;
            let dest = e
                .v
                .get("destinationList")
                .and_then(Value::as_array)
                .ok_or_else(|| err(e.f("destinationList"), "is required: the consignee and its site"))?;
            let find = |t: &str| {
                dest.iter()
                    .find(|d| d.get("type").and_then(Value::as_str) == Some(t))
                    .and_then(|d| d.get("destination").and_then(Value::as_str))
                    .map(str::to_string)
            };
            let consignee = find("owning_party").and_then(|p| party(&p)).ok_or_else(|| {
                err(e.f("destinationList"), "needs an owning_party urn:taizhang:party:<credit code>")
            })?;
            let (_, consignee_site) = find("location").and_then(|l| site_parts(&l)).ok_or_else(|| {
                err(e.f("destinationList"), "needs a location urn:taizhang:site:<credit code>:<site>")
            })?;
            let carrier = match e.opt_str("tz:carrier")? {
                c if c.is_empty() => String::new(),
                c => party(&c).ok_or_else(|| err(e.f("tz:carrier"), "must be urn:taizhang:party:<credit code>"))?,
            };
            Payload::Ship(pb::Ship {
                site_id: here.clone(),
                substance,
                lot,
                quantity: Some(q),
                consignee,
                consignee_site,
                permit: None,
                carrier,
                transport_permit: None,
                expected_delivery_ms: e.v.get("tz:expectedDeliveryMs").and_then(Value::as_u64).unwrap_or(0),
                payment_method: e.str("tz:paymentMethod")?,
            })
        }
        ("ObjectEvent", "OBSERVE", "receiving") => {
            let (_, _, q) = e.one("quantityList")?;
            cites = e.cites(&[(BTT_SHIPMENT, Slot::Shipment)])?;
            if !cites.iter().any(|(s, _)| *s == Slot::Shipment) {
                return Err(err(e.f("bizTransactionList"), format!("a receipt cites its shipment ({BTT_SHIPMENT})")));
            }
            Payload::Receive(pb::Receive {
                ship: None,
                site_id: here.clone(),
                quantity: Some(q),
                lot: e.opt_str("tz:receivedLot")?,
            })
        }
        ("TransactionEvent", "ADD", "departing") | ("ObjectEvent", "OBSERVE", "departing") => {
            let (substance, lot, q) = e.one("quantityList")?;
            cites = e.cites(&[(BTT_LICENCE, Slot::Licence)])?;
            Payload::Export(pb::Export {
                site_id: here.clone(),
                substance,
                lot,
                quantity: Some(q),
                licence: None,
                country: e.str("tz:country")?,
                importer: e.str("tz:importer")?,
                pen_reference: e.str("tz:penReference")?,
            })
        }
        ("ObjectEvent", "OBSERVE", "cycle_counting") => Payload::StockTake(pb::StockTake {
            site_id: here.clone(),
            counts: e
                .quantities("quantityList")?
                .into_iter()
                .map(|(substance, lot, q)| pb::StockCount {
                    substance,
                    lot,
                    quantity: Some(q),
                })
                .collect(),
        }),
        ("TransformationEvent", "", "dispensing" | USING) => {
            let (substance, lot, q) = e.one("inputQuantityList")?;
            if e.v.get("outputQuantityList").is_some() || e.v.get("outputEPCList").is_some() {
                return Err(err(e.f("outputQuantityList"), "a use has no outputs here (produce them with a commissioning event)"));
            }
            Payload::Consume(pb::Consume {
                site_id: here.clone(),
                substance,
                lot,
                quantity: Some(q),
                purpose: e.opt_str("tz:purpose")?,
            })
        }
        ("ObjectEvent", "DELETE", "destroying") => {
            let (substance, lot, q) = e.one("quantityList")?;
            Payload::Destroy(pb::Destroy {
                site_id: here.clone(),
                substance,
                lot,
                quantity: Some(q),
                method: e.str("tz:method")?,
                application_ref: e.opt_str("tz:applicationRef")?,
            })
        }
        ("ObjectEvent", "OBSERVE", REPORTING_LOSS) => {
            let (substance, lot, q) = e.one("quantityList")?;
            let k = e.str("tz:lossKind")?;
            let kind = pb::LossKind::from_str_name(&format!("LOSS_KIND_{k}"))
                .filter(|k| *k != pb::LossKind::Unspecified)
                .ok_or_else(|| err(e.f("tz:lossKind"), format!("`{k}` is not THEFT, ROBBERY, DISAPPEARANCE or SPILLAGE")))?;
            Payload::LossReport(pb::LossReport {
                site_id: here.clone(),
                substance,
                lot,
                quantity: Some(q),
                kind: kind as i32,
                police_report_ref: e.opt_str("tz:policeReportRef")?,
            })
        }
        ("AggregationEvent" | "AssociationEvent", _, _) => {
            return Err(err(
                e.f("type"),
                format!("`{ty}` is not supported: the ledger records quantities of lots, not containment"),
            ))
        }
        ("ObjectEvent" | "TransactionEvent" | "TransformationEvent", _, _) => {
            return Err(err(
                e.f("bizStep"),
                format!(
                    "a {ty} with action `{action}` and bizStep `{step}` has no Taizhang record (supported: ObjectEvent ADD commissioning | arriving, OBSERVE receiving | cycle_counting | {REPORTING_LOSS}, DELETE destroying; TransactionEvent ADD shipping | departing; TransformationEvent dispensing | {USING})"
                ),
            ))
        }
        _ => return Err(err(e.f("type"), format!("`{ty}` is not an EPCIS 2.0 event type"))),
    };
    Ok(Imported {
        payload,
        cites,
        site_owner: owner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(amount: u64) -> Option<pb::Quantity> {
        Some(pb::Quantity {
            amount,
            unit: pb::Unit::Milligram as i32,
        })
    }

    fn r(index: u64) -> Option<pb::EntryRef> {
        Some(pb::EntryRef {
            origin: String::new(),
            index,
            leaf_hash: vec![index as u8; 32],
        })
    }

    /// One of every movement the mapping covers, with awkward text (CJK, `:` and `/` in ids).
    fn movements() -> Vec<Payload> {
        vec![
            Payload::Produce(pb::Produce {
                site_id: "厂区:1".into(),
                substance: "299-42-3".into(),
                lot: "EPH/2026:01".into(),
                quantity: q(5_000),
            }),
            Payload::Import(pb::Import {
                site_id: "port".into(),
                substance: "108-24-7".into(),
                lot: "AA-1".into(),
                quantity: q(9),
                licence: r(3),
                country: "DE".into(),
                exporter: "Rheinchem GmbH".into(),
            }),
            Payload::Ship(pb::Ship {
                site_id: "厂区:1".into(),
                substance: "299-42-3".into(),
                lot: "EPH/2026:01".into(),
                quantity: q(2_000),
                consignee: "91440300MA5BUYER1X".into(),
                consignee_site: "wh 1".into(),
                permit: r(4),
                carrier: "91440300MA5KHNAT1Y".into(),
                transport_permit: r(5),
                expected_delivery_ms: 1_800_000_000_000,
                payment_method: "bank_transfer".into(),
            }),
            Payload::Ship(pb::Ship {
                site_id: "s".into(),
                substance: "439-14-5".into(),
                lot: "D".into(),
                quantity: q(1),
                consignee: "91440300MA5BUYER1X".into(),
                consignee_site: "w".into(),
                payment_method: "bank_transfer".into(),
                ..Default::default()
            }),
            Payload::Receive(pb::Receive {
                ship: r(6),
                site_id: "wh 1".into(),
                quantity: q(1_999),
                lot: "B-LOT".into(),
            }),
            Payload::Export(pb::Export {
                site_id: "port".into(),
                substance: "108-24-7".into(),
                lot: "AA-1".into(),
                quantity: q(4),
                licence: r(7),
                country: "GB".into(),
                importer: "Albion".into(),
                pen_reference: "PEN-1".into(),
            }),
            Payload::StockTake(pb::StockTake {
                site_id: "wh 1".into(),
                counts: vec![
                    pb::StockCount {
                        substance: "67-64-1".into(),
                        lot: "A".into(),
                        quantity: q(7),
                    },
                    pb::StockCount {
                        substance: "108-88-3".into(),
                        lot: "T".into(),
                        quantity: q(0),
                    },
                ],
            }),
            Payload::Consume(pb::Consume {
                site_id: "pharmacy".into(),
                substance: "57-27-2".into(),
                lot: "M".into(),
                quantity: q(10),
                purpose: "处方 RX-1".into(),
            }),
            Payload::Consume(pb::Consume {
                site_id: "plant".into(),
                substance: "67-64-1".into(),
                lot: "A".into(),
                quantity: q(10),
                purpose: String::new(),
            }),
            Payload::Destroy(pb::Destroy {
                site_id: "plant".into(),
                substance: "57-27-2".into(),
                lot: "M".into(),
                quantity: q(3),
                method: "incineration".into(),
                application_ref: "APP-1".into(),
            }),
            Payload::LossReport(pb::LossReport {
                site_id: "pharmacy".into(),
                substance: "57-27-2".into(),
                lot: "M".into(),
                quantity: q(2),
                kind: pb::LossKind::Robbery as i32,
                police_report_ref: "深公".into(),
            }),
        ]
    }

    #[test]
    fn every_movement_round_trips_through_a_document() {
        let cat = Catalogue::embedded();
        let ps = movements();
        let hash = [0xab; 32];
        let events: Vec<Value> = ps
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let e = Entry {
                    index: 100 + i as u64,
                    leaf_hash: &hash,
                    integrated_time_ms: 1_796_000_000_000,
                    enterprise: "91440300MA5PRDCR1C",
                    payload: p,
                    shipped: Some(("299-42-3", "EPH/2026:01")),
                };
                event(&e, &cat).expect("a movement has an event")
            })
            .collect();
        // Through text, as a file would carry it.
        let text = serde_json::to_string(&document("o", 0, events)).unwrap();
        let back = parse(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back.len(), ps.len());
        for (want, mut got) in ps.into_iter().zip(back) {
            for (slot, c) in got.cites.clone() {
                match c {
                    Cited::Entry(r) => got.fill(slot, r),
                    Cited::PermitNo(n) => panic!("an export cites entries, not `{n}`"),
                }
            }
            assert_eq!(got.payload, want);
        }
    }

    #[test]
    fn events_carry_the_cbv_steps_and_dispositions() {
        let cat = Catalogue::embedded();
        let shape = |p: &Payload| {
            let e = Entry {
                index: 1,
                leaf_hash: &[1; 32],
                integrated_time_ms: 0,
                enterprise: "E",
                payload: p,
                shipped: None,
            };
            let v = event(&e, &cat).unwrap();
            let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            (s("type"), s("action"), s("bizStep"), s("disposition"))
        };
        let got: Vec<_> = movements().iter().map(shape).collect();
        let t = |a: &str, b: &str, c: &str, d: &str| (a.into(), b.into(), c.into(), d.into());
        assert_eq!(
            got,
            vec![
                t("ObjectEvent", "ADD", "commissioning", "active"),
                t("ObjectEvent", "ADD", "arriving", "active"),
                t("TransactionEvent", "ADD", "shipping", "in_transit"),
                t("ObjectEvent", "OBSERVE", "shipping", "in_transit"),
                t("ObjectEvent", "OBSERVE", "receiving", "in_progress"),
                t("TransactionEvent", "ADD", "departing", "in_transit"),
                t("ObjectEvent", "OBSERVE", "cycle_counting", ""),
                t("TransformationEvent", "", "dispensing", ""),
                t("TransformationEvent", "", USING, ""),
                t("ObjectEvent", "DELETE", "destroying", "destroyed"),
                t("ObjectEvent", "OBSERVE", REPORTING_LOSS, "stolen"),
            ]
        );
        // Records that are not movements have no event.
        let p = Payload::StockTake(Default::default());
        assert!(shape(&p).0 == "ObjectEvent");
        let enrol = Payload::EnrolEnterprise(Default::default());
        let e = Entry {
            index: 0,
            leaf_hash: &[0; 32],
            integrated_time_ms: 0,
            enterprise: "",
            payload: &enrol,
            shipped: None,
        };
        assert!(event(&e, &cat).is_none());
    }

    fn refuse(doc: Value) -> EpcisError {
        parse(&doc).expect_err("refused")
    }

    fn doc(ev: Value) -> Value {
        json!({"type": "EPCISDocument", "schemaVersion": "2.0", "epcisBody": {"eventList": [ev]}})
    }

    #[test]
    fn unknown_or_unsupported_shapes_are_refused_by_field() {
        let site = json!({"id": "urn:taizhang:site:E:s"});
        let ql = json!([{"epcClass": "urn:taizhang:lot:67-64-1:A", "quantity": 5, "uom": "MGM"}]);
        let cases = [
            (
                json!({"type": "EPCISQueryDocument"}),
                "type",
                "must be `EPCISDocument`",
            ),
            (
                json!({"type": "EPCISDocument", "schemaVersion": "1.2", "epcisBody": {}}),
                "schemaVersion",
                "only EPCIS 2.x",
            ),
            (
                doc(json!({"type": "AggregationEvent", "action": "ADD"})),
                "epcisBody.eventList[0].type",
                "not supported",
            ),
            (
                doc(json!({"type": "SensorEvent"})),
                "epcisBody.eventList[0].type",
                "not an EPCIS 2.0 event type",
            ),
            (
                doc(
                    json!({"type": "ObjectEvent", "action": "OBSERVE", "bizStep": "inspecting", "quantityList": ql, "readPoint": site}),
                ),
                "epcisBody.eventList[0].bizStep",
                "has no Taizhang record",
            ),
            (
                doc(
                    json!({"type": "ObjectEvent", "action": "ADD", "bizStep": "commissioning", "readPoint": site,
                    "quantityList": [{"epcClass": "urn:taizhang:lot:67-64-1:A", "quantity": 1.5}]}),
                ),
                "epcisBody.eventList[0].quantityList[0].quantity",
                "whole number",
            ),
            (
                doc(
                    json!({"type": "ObjectEvent", "action": "ADD", "bizStep": "commissioning", "readPoint": site,
                    "quantityList": [{"epcClass": "urn:epc:class:lgtin:4012345.012345.998877", "quantity": 1}]}),
                ),
                "epcisBody.eventList[0].quantityList[0].epcClass",
                "is not urn:taizhang:lot",
            ),
            (
                doc(
                    json!({"type": "ObjectEvent", "action": "ADD", "bizStep": "commissioning", "readPoint": site,
                    "quantityList": [{"epcClass": "urn:taizhang:lot:67-64-1:A", "quantity": 1, "uom": "KGM"}]}),
                ),
                "epcisBody.eventList[0].quantityList[0].uom",
                "not a base unit",
            ),
            (
                doc(
                    json!({"type": "ObjectEvent", "action": "ADD", "bizStep": "commissioning", "readPoint": site,
                    "quantityList": [{"epcClass": "urn:taizhang:lot:67-64-1:A", "quantity": 5}]}),
                ),
                "epcisBody.eventList[0].quantityList[0].uom",
                "is required",
            ),
            (
                doc(
                    json!({"type": "ObjectEvent", "action": "OBSERVE", "bizStep": "receiving", "quantityList": ql, "readPoint": site}),
                ),
                "epcisBody.eventList[0].bizTransactionList",
                "cites its shipment",
            ),
            (
                doc(
                    json!({"type": "TransactionEvent", "action": "ADD", "bizStep": "shipping", "quantityList": ql,
                    "readPoint": site, "tz:paymentMethod": "bank_transfer",
                    "bizTransactionList": [{"type": "urn:taizhang:btt:permit", "bizTransaction": "PO-1"}],
                    "destinationList": [{"type": "owning_party", "destination": "urn:taizhang:party:B"},
                                        {"type": "location", "destination": "urn:taizhang:site:B:w"}]}),
                ),
                "epcisBody.eventList[0].bizTransactionList[0].bizTransaction",
                "neither urn:taizhang:entry",
            ),
            (
                doc(
                    json!({"type": "TransactionEvent", "action": "ADD", "bizStep": "shipping", "quantityList": ql,
                    "readPoint": site, "tz:paymentMethod": "bank_transfer"}),
                ),
                "epcisBody.eventList[0].destinationList",
                "is required",
            ),
        ];
        for (d, field, rule) in cases {
            let e = refuse(d);
            assert_eq!(e.field, field, "{e}");
            assert!(e.rule.contains(rule), "{e}");
        }
    }

    #[test]
    fn a_hand_written_document_may_name_permits_by_number_and_use_cbv_uris() {
        let d = doc(json!({
            "type": "TransactionEvent", "action": "ADD",
            "bizStep": "https://ref.gs1.org/cbv/BizStep-shipping",
            "quantityList": [{"epcClass": "urn:taizhang:lot:67-64-1:A%2F1", "quantity": 5, "uom": "MGM"}],
            "readPoint": {"id": "urn:taizhang:site:E:s"},
            "tz:paymentMethod": "bank_transfer",
            "bizTransactionList": [{"type": "urn:taizhang:btt:permit", "bizTransaction": "urn:taizhang:permit:%E6%B7%B1-1"}],
            "destinationList": [{"type": "owning_party", "destination": "urn:taizhang:party:B"},
                                {"type": "location", "destination": "urn:taizhang:site:B:w"}]
        }));
        let got = parse(&d).unwrap();
        assert_eq!(
            got[0].cites,
            vec![(Slot::Permit, Cited::PermitNo("深-1".into()))]
        );
        match &got[0].payload {
            Payload::Ship(s) => {
                assert_eq!(
                    (
                        s.lot.as_str(),
                        s.consignee.as_str(),
                        s.consignee_site.as_str()
                    ),
                    ("A/1", "B", "w")
                );
                assert_eq!(
                    s.quantity.as_ref().unwrap().unit,
                    pb::Unit::Milligram as i32
                );
            }
            p => panic!("{p:?}"),
        }
    }
}
