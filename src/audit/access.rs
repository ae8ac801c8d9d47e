//! Who may read what: the parties of an entry, and whether a reader's scope covers them.
//!
//! An enterprise reads what its enterprise is party to (as signer, counterparty, consignee,
//! carrier, holder of the permit, subject of the enrolment or inspection). An inspector or a
//! regulator reads its jurisdiction: anything a party of which is enrolled in a division whose
//! code starts with the reader's prefix ("" = national). The entries every verifier needs
//! (genesis, catalogue updates) are readable by every authenticated reader.

use crate::codec::{self, Leaf};
use crate::crypto::KeyId;
use crate::ledger::views::{key, EnterpriseView, KeyInfo};
use crate::ledger::{Ledger, Refusal};
use crate::pb;
use crate::pb::record_body::Payload;
use crate::store::ViewRead;
use std::collections::BTreeSet;

/// The reading scope of an authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Everything (an inspector or regulator of national scope).
    All,
    /// What this enterprise (credit code) is party to.
    Enterprise(String),
    /// What parties enrolled in divisions under this code prefix (non-empty) are party to.
    Jurisdiction(String),
}

/// The parties of an entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parties {
    /// Readable by every authenticated reader (genesis, catalogue updates).
    pub public: bool,
    /// Credit codes of the enterprises party to it.
    pub enterprises: BTreeSet<String>,
    /// Division code (prefixes) of the officials it concerns (authority and inspector keys,
    /// inspections), beside the enterprises' own.
    pub jurisdictions: BTreeSet<String>,
}

/// How deep cited entries are followed (a correction of a receipt of a shipment).
const MAX_DEPTH: u32 = 3;

impl Access {
    /// Whether the scope covers everything.
    pub fn is_all(&self) -> bool {
        matches!(self, Access::All)
    }

    /// Whether this reader may read the data of enterprise `code`. An enterprise not enrolled
    /// is covered only by [`Access::All`].
    pub fn covers_enterprise(&self, r: &dyn ViewRead, code: &str) -> Result<bool, Refusal> {
        Ok(match self {
            Access::All => true,
            Access::Enterprise(own) => own == code,
            Access::Jurisdiction(prefix) => {
                jurisdiction_of(r, code)?.is_some_and(|j| j.starts_with(prefix.as_str()))
            }
        })
    }

    /// Whether a query over division `code` (a prefix, "" = national) stays inside this
    /// reader's scope. Enterprises have no jurisdiction queries.
    pub fn covers_jurisdiction(&self, code: &str) -> bool {
        match self {
            Access::All => true,
            Access::Enterprise(_) => false,
            Access::Jurisdiction(prefix) => code.starts_with(prefix.as_str()),
        }
    }

    /// Whether any of these enterprises is covered.
    pub fn covers_any<'a>(
        &self,
        r: &dyn ViewRead,
        codes: impl IntoIterator<Item = &'a str>,
    ) -> Result<bool, Refusal> {
        for c in codes {
            if !c.is_empty() && self.covers_enterprise(r, c)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether this reader may read entry `index`.
    pub fn covers_entry(
        &self,
        ledger: &Ledger,
        r: &dyn ViewRead,
        index: u64,
    ) -> Result<bool, Refusal> {
        if self.is_all() {
            return Ok(true);
        }
        let p = parties(ledger, r, index)?;
        if p.public || self.covers_any(r, p.enterprises.iter().map(String::as_str))? {
            return Ok(true);
        }
        Ok(match self {
            Access::Jurisdiction(prefix) => p
                .jurisdictions
                .iter()
                .any(|j| j.starts_with(prefix.as_str())),
            _ => false,
        })
    }
}

/// The division an enterprise is enrolled in, if it is.
pub fn jurisdiction_of(r: &dyn ViewRead, code: &str) -> Result<Option<String>, Refusal> {
    let Some(bytes) = r.get(&key::enterprise(code))? else {
        return Ok(None);
    };
    let e: EnterpriseView = crate::ledger::views::decode(b"e/", &bytes)?;
    Ok(Some(e.jurisdiction))
}

fn add(p: &mut Parties, code: &str) {
    if !code.is_empty() {
        p.enterprises.insert(code.to_string());
    }
}

fn key_info(r: &dyn ViewRead, id: &[u8]) -> Result<Option<KeyInfo>, Refusal> {
    let Ok(id) = KeyId::from_slice("key_id", id) else {
        return Ok(None);
    };
    Ok(match r.get(&key::key(&id))? {
        Some(b) => Some(crate::ledger::views::decode(b"k/", &b)?),
        None => None,
    })
}

/// The parties of entry `index`.
pub fn parties(ledger: &Ledger, r: &dyn ViewRead, index: u64) -> Result<Parties, Refusal> {
    let mut p = Parties::default();
    collect(ledger, r, index, MAX_DEPTH, &mut p)?;
    Ok(p)
}

fn collect(
    ledger: &Ledger,
    r: &dyn ViewRead,
    index: u64,
    depth: u32,
    p: &mut Parties,
) -> Result<(), Refusal> {
    let (bytes, _) = ledger.entry(index)?;
    let leaf =
        Leaf::decode(&bytes).map_err(|e| Refusal::internal(format!("entry {index}: {e}")))?;
    let body = codec::decode_body(&leaf.body)
        .map_err(|e| Refusal::internal(format!("entry {index}: {e}")))?;
    // The signer: an enterprise key's enterprise, an official's jurisdiction.
    if let Some(k) = key_info(r, &body.signer)? {
        if !k.enterprise.is_empty() {
            p.enterprises.insert(k.enterprise.clone());
        } else if k.role != pb::Role::Ledger as i32 {
            p.jurisdictions.insert(k.jurisdiction.clone());
        }
    }
    let cite = |e: &Option<pb::EntryRef>, p: &mut Parties| -> Result<(), Refusal> {
        match e {
            Some(e) if depth > 0 && e.index < index => collect(ledger, r, e.index, depth - 1, p),
            _ => Ok(()),
        }
    };
    match body.payload {
        Some(Payload::Genesis(_)) | Some(Payload::CatalogueUpdate(_)) => p.public = true,
        Some(Payload::RegisterAuthority(a)) => {
            if let Some(a) = a.authority {
                p.jurisdictions.insert(a.jurisdiction);
            }
        }
        Some(Payload::EnrolEnterprise(e)) => add(p, &e.credit_code),
        Some(Payload::RegisterKey(k)) => {
            add(p, &k.enterprise);
            if k.enterprise.is_empty() && !k.jurisdiction.is_empty() {
                p.jurisdictions.insert(k.jurisdiction);
            }
        }
        Some(Payload::RevokeKey(k)) => {
            if let Some(k) = key_info(r, &k.key_id)? {
                if k.enterprise.is_empty() {
                    p.jurisdictions.insert(k.jurisdiction);
                } else {
                    p.enterprises.insert(k.enterprise);
                }
            }
        }
        Some(Payload::IssuePermit(x)) => {
            for c in [&x.holder, &x.counterparty, &x.consignee, &x.carrier] {
                add(p, c);
            }
        }
        Some(Payload::Ship(s)) => {
            add(p, &s.consignee);
            add(p, &s.carrier);
        }
        Some(Payload::TransportLeg(l)) => {
            add(p, &l.next_carrier);
            cite(&l.ship, p)?;
        }
        Some(Payload::Inspection(i)) => add(p, &i.enterprise),
        Some(Payload::RevokePermit(x)) => cite(&x.permit, p)?,
        Some(Payload::WriteOffPermit(x)) => cite(&x.permit, p)?,
        Some(Payload::CustomsClearance(x)) => cite(&x.movement, p)?,
        Some(Payload::ForeignEndorsement(x)) => cite(&x.export, p)?,
        Some(Payload::Receive(x)) => cite(&x.ship, p)?,
        Some(Payload::Correction(x)) => cite(&x.corrects, p)?,
        Some(Payload::Produce(_))
        | Some(Payload::Import(_))
        | Some(Payload::Export(_))
        | Some(Payload::Consume(_))
        | Some(Payload::Destroy(_))
        | Some(Payload::StockTake(_))
        | Some(Payload::LossReport(_))
        | None => {}
    }
    Ok(())
}

/// Cuts a custody graph down to what a reader sees: the shipments it is party to (as sender,
/// consignee or carrier) and the holdings it covers. A holding it does not cover stays only as
/// the far end of such a shipment, named but without figures, entries or lots. Returns whether
/// anything is left.
pub fn restrict_graph(
    g: &mut crate::audit::trace::Graph,
    covers: &mut dyn FnMut(&str) -> Result<bool, Refusal>,
) -> Result<bool, Refusal> {
    let mut seen = Vec::with_capacity(g.nodes.len());
    for n in &g.nodes {
        seen.push(covers(&n.enterprise)?);
    }
    let mut edges = Vec::with_capacity(g.edges.len());
    for e in std::mem::take(&mut g.edges) {
        if seen[e.from] || seen[e.to] || (!e.carrier.is_empty() && covers(&e.carrier)?) {
            edges.push(e);
        }
    }
    let keep: Vec<bool> = (0..g.nodes.len())
        .map(|i| seen[i] || edges.iter().any(|e| e.from == i || e.to == i))
        .collect();
    let mut renumber = vec![usize::MAX; g.nodes.len()];
    let mut nodes = Vec::new();
    for (i, mut n) in std::mem::take(&mut g.nodes).into_iter().enumerate() {
        if !keep[i] {
            continue;
        }
        if !seen[i] {
            n.lots.clear();
            n.figures.clear();
            n.on_hand = 0;
            n.entries.clear();
        }
        renumber[i] = nodes.len();
        nodes.push(n);
    }
    for e in &mut edges {
        e.from = renumber[e.from];
        e.to = renumber[e.to];
    }
    let mut lots: BTreeSet<&str> = BTreeSet::new();
    for n in &nodes {
        lots.extend(n.lots.iter().map(String::as_str));
    }
    for e in &edges {
        lots.insert(&e.lot);
        if let Some(l) = &e.received_lot {
            lots.insert(l);
        }
    }
    let followed: Vec<String> = g
        .lots
        .iter()
        .filter(|l| lots.contains(l.as_str()))
        .cloned()
        .collect();
    g.lots = followed;
    g.nodes = nodes;
    g.edges = edges;
    Ok(!g.nodes.is_empty())
}

/// Keeps the losses a reader sees (it covers the enterprise where it happened, the
/// counterparty or the carrier), and the patterns made only of those, renumbered.
pub fn restrict_losses(
    f: &mut crate::audit::losses::Findings,
    covers: &mut dyn FnMut(&str) -> Result<bool, Refusal>,
) -> Result<(), Refusal> {
    let mut renumber = vec![None; f.losses.len()];
    let mut kept = Vec::new();
    for (i, l) in std::mem::take(&mut f.losses).into_iter().enumerate() {
        let mut visible = false;
        for c in [&l.enterprise, &l.counterparty, &l.carrier] {
            if !c.is_empty() && covers(c)? {
                visible = true;
                break;
            }
        }
        if visible {
            renumber[i] = Some(kept.len());
            kept.push(l);
        }
    }
    f.losses = kept;
    f.patterns.retain_mut(|p| {
        let mapped: Option<Vec<usize>> = p.losses.iter().map(|&i| renumber[i]).collect();
        match mapped {
            Some(m) => {
                p.losses = m;
                true
            }
            None => false,
        }
    });
    Ok(())
}
