//! The derived views and their keys: what the writer reads while validating and writes after
//! each durable group. Every value here can be rebuilt from the log (`reindex`).
//!
//! Reads go through an overlay holding the current group's uncommitted changes, so a record can
//! rely on an earlier record of the same group (a key registered, then used); if the group fails
//! to become durable the overlay is dropped and nothing derived changed.

use crate::crypto::KeyId;
use crate::pb;
use crate::store::{Location, Position, Range, StoreError, ViewBatch, ViewRead, ViewStore};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;

/// Key of the log position the views reflect.
pub const META_POSITION: &[u8] = b"meta/position";
/// Key of the ledger's identity (origin, ledger key, catalogue), from Genesis.
pub const META_GENESIS: &[u8] = b"meta/genesis";
/// Key of the format the views are written in (a `u32`, written with Genesis). Views in any
/// other format are rebuilt from the log at open.
pub const META_FORMAT: &[u8] = b"meta/format";
/// The views' format: 2 = entry index blocks of fixed-width entries; 3 = permits, shipments
/// that name the permits they drew on.
/// 6 = a signer's head carries its current seq-index block; a lot's view, its first holding's
/// totals; a produce has no `po/` until corrected. 7 = the roots of the tree's 32-leaf runs
/// (`xr/`). 8 = journals packed in blocks, their first rows inline in the book ([`Book`]);
/// no entry index blocks (`x/`), only the latest run's entries (`xt/`); 64 run roots to a key.
pub const VIEW_FORMAT: u32 = 8;

/// A registered key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub public_key: [u8; 32],
    /// `pb::Role` as i32.
    pub role: i32,
    /// Credit code, for enterprise keys.
    pub enterprise: String,
    /// Jurisdiction code prefix, for regulator and inspector keys.
    pub jurisdiction: String,
    /// `pb::Agency` as i32, for regulator keys.
    pub agency: i32,
    pub holder: String,
    pub not_before_ms: u64,
    /// 0 = open-ended.
    pub not_after_ms: u64,
    pub revoked_at_ms: Option<u64>,
    pub revoked_by_entry: Option<u64>,
    pub registered_by_entry: u64,
}

/// Where a signer's chain stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Head {
    pub next_seq: u64,
    pub prev_body_hash: [u8; 32],
    pub last_index: Option<u64>,
    /// The entry indices of the seqs of the current seq-index block (from
    /// `next_seq - next_seq % BLOCK`), 8 bytes big-endian each: the head carries them until
    /// the block is full and moves to its own key, so advancing a chain is one view write.
    #[serde(with = "serde_bytes")]
    pub block: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenceView {
    pub licence_no: String,
    pub category: i32,
    pub activities: Vec<i32>,
    pub not_before_ms: u64,
    pub not_after_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteView {
    pub site_id: String,
    pub name: String,
    pub address: String,
}

/// An enrolled enterprise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnterpriseView {
    pub credit_code: String,
    pub name: String,
    pub jurisdiction: String,
    pub licences: Vec<LicenceView>,
    pub sites: Vec<SiteView>,
    pub enrolled_by_entry: u64,
    pub amended_by_entry: Vec<u64>,
}

impl EnterpriseView {
    pub fn has_site(&self, site: &str) -> bool {
        self.sites.iter().any(|s| s.site_id == site)
    }
}

/// A lot: where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LotView {
    pub substance: String,
    /// Enterprise that created the lot (producer, importer, or receiver that re-lotted it).
    pub created_by: String,
    pub created_by_entry: u64,
    /// The site where it came into existence (its first holding, which `lh/` does not list).
    pub site: String,
    /// For a lot created on receipt: the lot it was received from.
    pub derived_from: Option<String>,
    /// The book of its first holding (`created_by` × `site` × `substance`), kept here rather
    /// than under `b/` like every other holding's: a lot's creation is then one view write,
    /// not three (totals, journal row, lot).
    pub book: Book,
}

impl LotView {
    /// Whether `h` is this lot's first holding (whose totals the lot view keeps).
    pub fn is_first_holding(&self, h: &Holding<'_>) -> bool {
        self.created_by == h.enterprise && self.site == h.site && self.substance == h.substance
    }
}

/// A read of one view key, from whatever reads the views.
pub type RawGet<'a> = &'a dyn Fn(&[u8]) -> Result<Option<Vec<u8>>, StoreError>;

/// A lot holding's running totals from whatever reads the views: the lot's view for its
/// first holding, `b/` for any other.
pub fn holding_totals(get: RawGet<'_>, h: &Holding<'_>) -> Result<Option<Totals>, StoreError> {
    Ok(holding_book(get, h)?.map(|b| b.totals))
}

/// A lot holding's book: in the lot's view for its first holding, under `b/` for any other.
pub fn holding_book(get: RawGet<'_>, h: &Holding<'_>) -> Result<Option<Book>, StoreError> {
    let lot_key = key::lot(h.lot);
    if let Some(b) = get(&lot_key)? {
        let lot: LotView = decode(&lot_key, &b)?;
        if lot.is_first_holding(h) {
            return Ok(Some(lot.book));
        }
    }
    let k = key::balance(h);
    get(&k)?.map(|b| decode(&k, &b)).transpose()
}

/// A shipment, open until received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentView {
    pub ship_entry: u64,
    pub from_enterprise: String,
    pub from_site: String,
    pub to_enterprise: String,
    pub to_site: String,
    pub substance: String,
    pub lot: String,
    pub quantity: u64,
    pub shipped_at_ms: u64,
    pub expected_delivery_ms: u64,
    pub received: Option<ReceivedView>,
    /// The carrier named by the shipment ("" for none).
    pub carrier: String,
    /// The carrier's pickup, handovers and delivery, in order.
    pub legs: Vec<LegView>,
    /// IssuePermit entries this shipment drew on (the buyer's permit, the transport permit).
    pub permits: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedView {
    pub receive_entry: u64,
    pub site: String,
    pub lot: String,
    pub quantity: u64,
    pub at_ms: u64,
    /// Corrections of the receipt, oldest first (`quantity` is the latest's).
    pub corrected_by: Vec<u64>,
}

/// How a permit was closed before it ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClosedHow {
    Revoked,
    WrittenOff,
    /// A single-use permit at its first use.
    SingleUse,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermitClosure {
    pub how: ClosedHow,
    /// The entry that closed it (a RevokePermit, a WriteOffPermit, or the Ship that used it).
    pub entry: u64,
    pub at_ms: u64,
    pub reason: String,
    /// What remained of the ceiling and became void.
    pub void: u64,
}

/// A permit (purchase permit or filing, transport permit or filing, import or export licence,
/// seal card, production or operating licence), as issued and as drawn since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermitView {
    pub issue_entry: u64,
    pub permit_no: String,
    /// `pb::PermitType` as i32.
    pub permit_type: i32,
    pub issuer: KeyId,
    /// The holder's administrative division when issued.
    pub jurisdiction: String,
    pub holder: String,
    pub counterparty: String,
    pub substance: String,
    /// 0 = no quantity ceiling (seal cards, licences).
    pub ceiling: u64,
    pub not_before_ms: u64,
    pub not_after_ms: u64,
    pub single_use: bool,
    pub origin_site: String,
    pub destination_site: String,
    pub consignee: String,
    pub carrier: String,
    pub issued_at_ms: u64,
    /// Seller side: the sum shipped under the permit, and how many shipments.
    pub drawn: u64,
    pub draws: u32,
    /// Buyer side: the sum received of those shipments.
    pub received: u64,
    pub closed: Option<PermitClosure>,
}

/// A permit's lifecycle state at a moment, derived from its view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum PermitState {
    Issued,
    Active,
    PartiallyUsed,
    Exhausted,
    Expired,
    Revoked,
    WrittenOff,
}

impl PermitState {
    pub fn name(self) -> &'static str {
        match self {
            PermitState::Issued => "issued (not valid yet)",
            PermitState::Active => "active",
            PermitState::PartiallyUsed => "partially used",
            PermitState::Exhausted => "exhausted",
            PermitState::Expired => "expired",
            PermitState::Revoked => "revoked",
            PermitState::WrittenOff => "written off",
        }
    }
}

impl PermitView {
    pub fn state(&self, now_ms: u64) -> PermitState {
        match self.closed.as_ref().map(|c| c.how) {
            Some(ClosedHow::Revoked) => PermitState::Revoked,
            Some(ClosedHow::WrittenOff | ClosedHow::SingleUse) => PermitState::WrittenOff,
            None if self.ceiling > 0 && self.drawn >= self.ceiling => PermitState::Exhausted,
            None if self.not_after_ms != 0 && now_ms >= self.not_after_ms => PermitState::Expired,
            None if now_ms < self.not_before_ms => PermitState::Issued,
            None if self.drawn > 0 => PermitState::PartiallyUsed,
            None => PermitState::Active,
        }
    }

    /// What may still be drawn (`u64::MAX` without a ceiling); 0 once closed.
    pub fn remaining(&self) -> u64 {
        if self.closed.is_some() {
            0
        } else if self.ceiling == 0 {
            u64::MAX
        } else {
            self.ceiling.saturating_sub(self.drawn)
        }
    }
}

/// Customs' clearance of an import or export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearanceView {
    pub entry: u64,
    pub declaration_no: String,
    pub quantity: u64,
    pub cleared_ms: u64,
}

/// The importing country's endorsement of an export, or its objection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndorsementView {
    pub entry: u64,
    pub country: String,
    pub pen_reference: String,
    pub quantity: u64,
    pub endorsed_ms: u64,
    pub objection: bool,
    pub objection_reason: String,
    /// When the endorsement reached the ledger.
    pub at_ms: u64,
}

/// An import or export, with its counterparts as they arrive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovementView {
    pub entry: u64,
    pub export: bool,
    pub enterprise: String,
    pub site: String,
    pub substance: String,
    pub lot: String,
    pub quantity: u64,
    pub licence: u64,
    pub country: String,
    /// The foreign exporter (imports) or importer (exports).
    pub counterparty: String,
    pub pen_reference: String,
    pub at_ms: u64,
    pub clearance: Option<ClearanceView>,
    pub endorsement: Option<EndorsementView>,
}

impl ShipmentView {
    /// Who holds the goods in transit now: the last handover's next carrier, else the named
    /// carrier.
    pub fn custodian(&self) -> &str {
        self.legs
            .iter()
            .rev()
            .find(|l| l.kind == pb::LegKind::Handover as i32)
            .map_or(self.carrier.as_str(), |l| l.next_carrier.as_str())
    }
}

/// A carrier's record of a shipment changing hands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegView {
    pub entry: u64,
    /// `LegKind`.
    pub kind: i32,
    /// The carrier that signed it.
    pub carrier: String,
    pub location: String,
    pub seals: Vec<String>,
    pub next_carrier: String,
    pub at_ms: u64,
    /// The seals differ from the pickup's (a seal was broken or replaced in transit).
    pub seals_changed: bool,
}

/// A mass-balance term: what moves quantity into or out of a holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Term {
    Produced,
    Received,
    Imported,
    /// A count's variance accepted into the books by a correction (a surplus).
    AdjustedIn,
    Shipped,
    Exported,
    Consumed,
    Destroyed,
    Lost,
    /// A count's variance accepted into the books by a correction (a shortfall).
    AdjustedOut,
}

impl Term {
    pub const ALL: [Term; 10] = [
        Term::Produced,
        Term::Received,
        Term::Imported,
        Term::AdjustedIn,
        Term::Shipped,
        Term::Exported,
        Term::Consumed,
        Term::Destroyed,
        Term::Lost,
        Term::AdjustedOut,
    ];
    /// Whether the term adds to the holding.
    pub fn inflow(self) -> bool {
        matches!(
            self,
            Term::Produced | Term::Received | Term::Imported | Term::AdjustedIn
        )
    }
    pub fn name(self) -> &'static str {
        match self {
            Term::Produced => "produced",
            Term::Received => "received",
            Term::Imported => "imported",
            Term::AdjustedIn => "adjusted_in",
            Term::Shipped => "shipped",
            Term::Exported => "exported",
            Term::Consumed => "consumed",
            Term::Destroyed => "destroyed",
            Term::Lost => "lost",
            Term::AdjustedOut => "adjusted_out",
        }
    }
}

/// Running totals of every term of a holding since it began. A journal row carries the totals
/// after its entry, so the terms over any period are differences of two rows. Lifetime totals
/// are u128 (a holding's stock, their difference, fits u64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals(pub [u128; 10]);

impl Totals {
    pub fn get(&self, t: Term) -> u128 {
        self.0[t as usize]
    }
    pub fn get_mut(&mut self, t: Term) -> &mut u128 {
        &mut self.0[t as usize]
    }
    /// Everything in minus everything out (never negative: ingest refuses what would make it so).
    pub fn balance(&self) -> i128 {
        Term::ALL
            .iter()
            .map(|&t| {
                let q = self.get(t) as i128;
                if t.inflow() {
                    q
                } else {
                    -q
                }
            })
            .sum()
    }
}

/// What one entry did to a holding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A movement: `quantity` added to `term`; `shipment` is the Ship entry for a shipment or a
    /// receipt.
    Move {
        term: Term,
        quantity: u64,
        shipment: Option<u64>,
    },
    /// A correction of entry `corrects`: `term` changed by `delta`.
    Correct {
        term: Term,
        corrects: u64,
        delta: i64,
    },
    /// A signed physical count (by the enterprise, or by an inspector) and the book at that
    /// moment.
    Count {
        counted: u64,
        book: u64,
        inspector: bool,
    },
}

/// A row of a holding's journal (`j/`, per lot, and `js/`, per substance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRow {
    pub entry: u64,
    pub at_ms: u64,
    pub lot: String,
    pub event: Event,
    /// The holding's totals after this row.
    pub totals: Totals,
}

/// A journal's rows beyond those its book holds inline are packed in blocks appended in place,
/// each at the key of its first row (`key::at(journal, at_ms, entry)`): a busy journal costs
/// the view store one write per flush, not one new key per row. A block takes rows until the
/// next would take it past this many bytes.
pub const JOURNAL_BLOCK_BYTES: usize = 2048;

/// A journal's first rows ride in its book (which every posting rewrites anyway) until the
/// next would take them past this many bytes: a lot produced and shipped, or a holding
/// received and shipped on, costs no journal key at all.
pub const INLINE_JOURNAL_BYTES: usize = 512;

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Where a journal's newest block is and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalHead {
    /// The time and entry of the block's first row (its key's suffix).
    pub at_ms: u64,
    pub entry: u64,
    /// The block's length in bytes.
    pub len: u32,
}

/// A journal's rows as its book keeps them: the first ones inline, then blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Encoded `JournalRow`s, back to back, oldest first (as bytes: the same encoding as a
    /// sequence of `u8`, without a call per byte).
    #[serde(with = "serde_bytes")]
    pub inline: Vec<u8>,
    /// The newest block, once the rows no longer fit inline.
    pub head: Option<JournalHead>,
}

impl Journal {
    /// Adds `row` to a journal whose blocks are under `prefix`; `get` reads the views. Returns
    /// the block to write, unless the row went inline.
    pub fn push(
        &mut self,
        prefix: &[u8],
        row: &JournalRow,
        get: RawGet<'_>,
    ) -> Result<Option<KeyValue>, StoreError> {
        let bytes = encode(row);
        if self.head.is_none() && self.inline.len() + bytes.len() <= INLINE_JOURNAL_BYTES {
            self.inline.extend_from_slice(&bytes);
            return Ok(None);
        }
        if let Some(head) = &mut self.head {
            if head.len as usize + bytes.len() <= JOURNAL_BLOCK_BYTES {
                let k = key::at(prefix, head.at_ms, head.entry);
                let mut block = get(&k)?.unwrap_or_default();
                if block.len() != head.len as usize {
                    return Err(StoreError::Views(format!(
                        "journal block {} holds {} bytes, its book says {}",
                        packed_name(&k),
                        block.len(),
                        head.len
                    )));
                }
                block.extend_from_slice(&bytes);
                head.len = block.len() as u32;
                return Ok(Some((k, block)));
            }
        }
        self.head = Some(JournalHead {
            at_ms: row.at_ms,
            entry: row.entry,
            len: bytes.len() as u32,
        });
        Ok(Some((key::at(prefix, row.at_ms, row.entry), bytes)))
    }
}

/// A holding's (`b/`, or its lot's view for the first holding) or a site × substance's
/// (`bs/`) book: its running totals and its journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Book {
    pub totals: Totals,
    pub journal: Journal,
    /// Whether the holding is in the lot's holdings index (`lh/`), or the stock in the
    /// enterprise's (`es/`): a book that only a count opened is not.
    pub listed: bool,
}

/// Decodes rows packed back to back (a block, or a book's inline rows).
pub fn decode_rows(key: &[u8], mut bytes: &[u8]) -> Result<Vec<JournalRow>, StoreError> {
    let mut rows = Vec::new();
    while !bytes.is_empty() {
        let (row, rest) = postcard::take_from_bytes::<JournalRow>(bytes).map_err(|e| {
            StoreError::Views(format!(
                "journal rows at {} do not decode: {e}",
                packed_name(key)
            ))
        })?;
        rows.push(row);
        bytes = rest;
    }
    Ok(rows)
}

/// A journal to read: a lot holding's (`j/`) or a site × substance's (`js/`).
#[derive(Debug, Clone)]
pub enum JournalOf<'a> {
    Holding(Holding<'a>),
    Stock(Stock<'a>),
}

/// A row's place in its journal: (time, entry).
pub type RowAt = (u64, u64);

impl JournalOf<'_> {
    /// The key prefix of its blocks.
    pub fn prefix(&self) -> Vec<u8> {
        match self {
            JournalOf::Holding(h) => key::journal(h),
            JournalOf::Stock(s) => key::stock_journal(s),
        }
    }

    fn inline_rows(&self, r: &dyn ViewRead) -> Result<Vec<JournalRow>, StoreError> {
        let book = match self {
            JournalOf::Holding(h) => holding_book(&|k| r.get(k), h)?,
            JournalOf::Stock(s) => {
                let k = key::stock(s);
                r.get(&k)?.map(|b| decode::<Book>(&k, &b)).transpose()?
            }
        };
        match book {
            Some(b) => decode_rows(&self.prefix(), &b.journal.inline),
            None => Ok(Vec::new()),
        }
    }

    /// Its rows at or after `from` and before `to`, oldest first, at most `limit`.
    pub fn rows(
        &self,
        r: &dyn ViewRead,
        from: RowAt,
        to: RowAt,
        limit: usize,
    ) -> Result<Vec<JournalRow>, StoreError> {
        let inside =
            |row: &JournalRow| (row.at_ms, row.entry) >= from && (row.at_ms, row.entry) < to;
        let mut out: Vec<JournalRow> = self.inline_rows(r)?.into_iter().filter(inside).collect();
        let prefix = self.prefix();
        let mut start = key::at(&prefix, from.0, from.1);
        let end = key::at(&prefix, to.0, to.1);
        // The block that begins before `from` may hold rows after it.
        if let Some((k, v)) = r.range(&Range::backward(&prefix, &start, 1))?.first() {
            out.extend(decode_rows(k, v)?.into_iter().filter(inside));
        }
        while out.len() < limit {
            const PAGE: usize = 16;
            let blocks = r.range(&Range::forward(&start, &end, PAGE))?;
            for (k, v) in &blocks {
                out.extend(decode_rows(k, v)?.into_iter().filter(inside));
            }
            match blocks.last() {
                Some((k, _)) if blocks.len() == PAGE => start = [k.as_slice(), &[0]].concat(),
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Its last row before `before`.
    pub fn last_before(
        &self,
        r: &dyn ViewRead,
        before: RowAt,
    ) -> Result<Option<JournalRow>, StoreError> {
        let prefix = self.prefix();
        let end = key::at(&prefix, before.0, before.1);
        let earlier = |rows: Vec<JournalRow>| {
            rows.into_iter()
                .rfind(|row| (row.at_ms, row.entry) < before)
        };
        if let Some((k, v)) = r.range(&Range::backward(&prefix, &end, 1))?.first() {
            if let Some(row) = earlier(decode_rows(k, v)?) {
                return Ok(Some(row));
            }
        }
        Ok(earlier(self.inline_rows(r)?))
    }
}

/// A movement entry that a `Correction` may amend: where it posted and what it now counts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedView {
    /// The payload kind (`produce`, `consume`, `destroy`, `loss_report`). A produce has one
    /// only once corrected; before, its lot describes it.
    pub kind: String,
    pub term: Term,
    pub enterprise: String,
    pub site: String,
    pub substance: String,
    pub lot: String,
    /// The quantity in force: the original, or the latest correction's.
    pub quantity: u64,
    pub at_ms: u64,
    /// Correction entries, oldest first.
    pub corrected_by: Vec<u64>,
}

/// A count entry (StockTake, Inspection): per substance, what was counted against the book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountedView {
    pub enterprise: String,
    pub site: String,
    pub at_ms: u64,
    pub inspector: bool,
    /// (substance, lot, counted, book of the lot).
    pub lots: Vec<(String, String, u64, u64)>,
    /// The correction that accepted this count's variances into the books.
    pub accepted_by: Option<u64>,
}

/// A loss report, for loss finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossView {
    pub entry: u64,
    /// `LossKind`.
    pub kind: i32,
    pub police_report_ref: String,
    pub site: String,
    pub substance: String,
    pub lot: String,
    /// As reported, or as the latest correction restated it.
    pub quantity: u64,
    pub at_ms: u64,
}

/// The latest signed physical count for a holding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountView {
    pub quantity: u64,
    pub entry: u64,
    pub at_ms: u64,
}

/// The ledger's identity, fixed by Genesis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisView {
    pub origin: String,
    pub ledger_key: KeyId,
    pub ledger_public_key: [u8; 32],
    pub catalogue_version: String,
    pub catalogue_digest: [u8; 32],
}

/// An entry's place in the segments and its leaf hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub location: Location,
    pub leaf_hash: [u8; 32],
}

impl EntryView {
    /// Bytes of one entry in the run tail: segment u64, offset u64, len u32 (all big-endian),
    /// leaf hash.
    pub const WIDTH: usize = 8 + 8 + 4 + 32;

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.location.segment.to_be_bytes());
        out.extend_from_slice(&self.location.offset.to_be_bytes());
        out.extend_from_slice(&self.location.len.to_be_bytes());
        out.extend_from_slice(&self.leaf_hash);
    }

    fn decode(b: &[u8]) -> EntryView {
        // INVARIANT: callers pass exactly WIDTH bytes (chunks_exact).
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        EntryView {
            location: Location {
                segment: u64_at(0),
                offset: u64_at(8),
                len: u32::from_be_bytes(b[16..20].try_into().expect("4 bytes")),
            },
            leaf_hash: b[20..52].try_into().expect("32 bytes"),
        }
    }
}

/// The entries of the run tail (`xt/`, see [`EntryView::WIDTH`]).
pub fn decode_run_tail(key: &[u8], bytes: &[u8]) -> Result<Vec<EntryView>, StoreError> {
    if !bytes.len().is_multiple_of(EntryView::WIDTH)
        || bytes.len() / EntryView::WIDTH > RUN as usize
    {
        return Err(StoreError::Views(format!(
            "run tail {} holds {} bytes, not whole entries of one run",
            String::from_utf8_lossy(key),
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(EntryView::WIDTH)
        .map(EntryView::decode)
        .collect())
}

/// A packed index key (a prefix, then a big-endian `u64`) as text: `x/12`.
pub fn packed_name(k: &[u8]) -> String {
    let (prefix, n) = k.split_at(k.len().saturating_sub(8));
    match <[u8; 8]>::try_from(n) {
        Ok(n) => format!(
            "{}{}",
            String::from_utf8_lossy(prefix),
            u64::from_be_bytes(n)
        ),
        Err(_) => String::from_utf8_lossy(k).into_owned(),
    }
}

/// A complete run of the tree, as `xr/` keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunView {
    pub root: [u8; 32],
    /// Where the run's first entry is (its `len` is not kept: 0).
    pub start: Location,
}

impl RunView {
    /// Bytes of one run in an `xr/` value.
    pub const WIDTH: usize = 32 + 8 + 8;

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.start.segment.to_be_bytes());
        out.extend_from_slice(&self.start.offset.to_be_bytes());
    }
}

/// The runs of an `xr/` key (see [`key::run_roots`]).
pub fn decode_run_roots(key: &[u8], bytes: &[u8]) -> Result<Vec<RunView>, StoreError> {
    if !bytes.len().is_multiple_of(RunView::WIDTH)
        || bytes.len() / RunView::WIDTH > ROOTS_PER_KEY as usize
    {
        return Err(StoreError::Views(format!(
            "run roots {} hold {} bytes, not whole runs",
            packed_name(key),
            bytes.len()
        )));
    }
    let u64_at = |c: &[u8], i: usize| u64::from_be_bytes(c[i..i + 8].try_into().expect("8 bytes"));
    Ok(bytes
        .chunks_exact(RunView::WIDTH)
        .map(|c| RunView {
            root: c[..32].try_into().expect("32 bytes"),
            start: Location {
                segment: u64_at(c, 32),
                offset: u64_at(c, 40),
                len: 0,
            },
        })
        .collect())
}

/// A holding: enterprise × site × substance × lot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holding<'a> {
    pub enterprise: &'a str,
    pub site: &'a str,
    pub substance: &'a str,
    pub lot: &'a str,
}

fn holding_key(prefix: &[u8], h: &Holding<'_>) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for part in [h.enterprise, h.site, h.substance, h.lot] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k
}

/// A site × substance of an enterprise (the sum over its lots).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stock<'a> {
    pub enterprise: &'a str,
    pub site: &'a str,
    pub substance: &'a str,
}

fn stock_key(prefix: &[u8], s: &Stock<'_>) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for part in [s.enterprise, s.site, s.substance] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k
}

fn timed(mut k: Vec<u8>, at_ms: u64, entry: u64) -> Vec<u8> {
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&entry.to_be_bytes());
    k
}

/// A key's seq → entry index is packed in blocks of this many,
/// so a record costs the view store no write of its own for them; blocks are fixed by index, so
/// a reindex writes exactly the same keys and values.
pub const BLOCK: u64 = 256;

/// The Merkle tree's leaves are grouped in aligned runs of this many (`2^RUN_LEVEL`): the
/// root of each complete run and where its first entry is in the segments are kept in the
/// views (`xr/`, [`ROOTS_PER_KEY`] to a key, appended in place), so a ledger reopens holding
/// only the tree above the runs, and computes a run's inner nodes from its frames in the log
/// (one read) when a proof needs them.
pub const RUN_LEVEL: u32 = 5;
/// Leaves per run.
pub const RUN: u64 = 1 << RUN_LEVEL;
/// Run roots per `xr/` key.
pub const ROOTS_PER_KEY: u64 = 64;

/// View keys. Strings are NUL-terminated (ingest refuses NUL in identifiers).
pub mod key {
    use super::*;
    pub fn key(id: &KeyId) -> Vec<u8> {
        [b"k/".as_slice(), &id.0].concat()
    }
    pub fn head(id: &KeyId) -> Vec<u8> {
        [b"h/".as_slice(), &id.0].concat()
    }
    /// Entry indices of a key's seqs `[block * BLOCK, (block + 1) * BLOCK)`.
    pub fn signer_seq_block(id: &KeyId, block: u64) -> Vec<u8> {
        [b"q/".as_slice(), &id.0, &block.to_be_bytes()].concat()
    }
    pub fn enterprise(code: &str) -> Vec<u8> {
        [b"e/".as_slice(), code.as_bytes()].concat()
    }
    pub fn lot(lot: &str) -> Vec<u8> {
        [b"l/".as_slice(), lot.as_bytes()].concat()
    }
    pub fn shipment(ship_entry: u64) -> Vec<u8> {
        [b"s/".as_slice(), &ship_entry.to_be_bytes()].concat()
    }
    pub fn balance(h: &Holding<'_>) -> Vec<u8> {
        holding_key(b"b/", h)
    }
    pub fn count(h: &Holding<'_>) -> Vec<u8> {
        holding_key(b"c/", h)
    }
    /// A site × substance's running totals (over all lots).
    pub fn stock(s: &Stock<'_>) -> Vec<u8> {
        stock_key(b"bs/", s)
    }
    /// A lot holding's journal blocks: `j/<holding><at_ms><entry>` → the rows from that one
    /// on, packed (see [`Journal`]; the first rows are inline in the holding's book).
    pub fn journal(h: &Holding<'_>) -> Vec<u8> {
        holding_key(b"j/", h)
    }
    /// A site × substance's journal blocks: `js/<stock><at_ms><entry>` → packed rows, as `j/`.
    pub fn stock_journal(s: &Stock<'_>) -> Vec<u8> {
        stock_key(b"js/", s)
    }
    /// Where a lot is held, besides the site it was created at (`LotView::site`):
    /// `lh/<lot>\0<enterprise>\0<site>\0` → ().
    pub fn lot_holdings(lot: &str) -> Vec<u8> {
        [b"lh/".as_slice(), lot.as_bytes(), b"\0"].concat()
    }
    pub fn lot_holding(lot: &str, enterprise: &str, site: &str) -> Vec<u8> {
        [
            lot_holdings(lot).as_slice(),
            enterprise.as_bytes(),
            b"\0",
            site.as_bytes(),
            b"\0",
        ]
        .concat()
    }
    /// Stocks of an enterprise: `es/<enterprise>\0<site>\0<substance>\0` → ().
    pub fn enterprise_stocks(enterprise: &str) -> Vec<u8> {
        [b"es/".as_slice(), enterprise.as_bytes(), b"\0"].concat()
    }
    pub fn enterprise_stock(s: &Stock<'_>) -> Vec<u8> {
        stock_key(b"es/", s)
    }
    /// A correctable movement: `po/<entry>` → `PostedView`.
    pub fn posted(entry: u64) -> Vec<u8> {
        [b"po/".as_slice(), &entry.to_be_bytes()].concat()
    }
    /// A count entry: `ct/<entry>` → `CountedView`.
    pub fn counted(entry: u64) -> Vec<u8> {
        [b"ct/".as_slice(), &entry.to_be_bytes()].concat()
    }
    /// Loss reports of an enterprise: `lr/<enterprise>\0<entry>` → `LossView`.
    pub fn losses(enterprise: &str) -> Vec<u8> {
        [b"lr/".as_slice(), enterprise.as_bytes(), b"\0"].concat()
    }
    pub fn loss(enterprise: &str, entry: u64) -> Vec<u8> {
        [losses(enterprise).as_slice(), &entry.to_be_bytes()].concat()
    }
    /// A lot holding's counts: `cl/<holding><at_ms><entry>` → `JournalRow` (also in `j/`).
    pub fn lot_counts(h: &Holding<'_>) -> Vec<u8> {
        holding_key(b"cl/", h)
    }
    /// A site × substance's counts: `cs/<stock><at_ms><entry>` → `JournalRow` (also in `js/`).
    pub fn stock_counts(s: &Stock<'_>) -> Vec<u8> {
        stock_key(b"cs/", s)
    }
    /// `prefix` followed by a time and an entry: a journal or count row key.
    pub fn at(prefix: &[u8], at_ms: u64, entry: u64) -> Vec<u8> {
        timed(prefix.to_vec(), at_ms, entry)
    }
    /// Shipments by sender and receiver: `sf/<enterprise>\0<ship>`, `st/<enterprise>\0<ship>`
    /// → ().
    pub fn shipments_from(enterprise: &str) -> Vec<u8> {
        [b"sf/".as_slice(), enterprise.as_bytes(), b"\0"].concat()
    }
    pub fn shipments_to(enterprise: &str) -> Vec<u8> {
        [b"st/".as_slice(), enterprise.as_bytes(), b"\0"].concat()
    }
    /// A permit issued by an `IssuePermit` entry.
    pub fn permit(issue_entry: u64) -> Vec<u8> {
        [b"p/".as_slice(), &issue_entry.to_be_bytes()].concat()
    }
    /// A permit's issue entry by its number.
    pub fn permit_no(no: &str) -> Vec<u8> {
        [b"pn/".as_slice(), no.as_bytes()].concat()
    }
    /// Prefix of a permit's draw-downs: `d/<permit><ship>` → the shipment as drawn (and
    /// received), in ship order, so a reconciliation is one range scan.
    pub fn draws(permit_entry: u64) -> Vec<u8> {
        [b"d/".as_slice(), &permit_entry.to_be_bytes()].concat()
    }
    pub fn draw(permit_entry: u64, ship_entry: u64) -> Vec<u8> {
        [
            b"d/".as_slice(),
            &permit_entry.to_be_bytes(),
            &ship_entry.to_be_bytes(),
        ]
        .concat()
    }
    /// Permits of a holder: `ph/<credit code>\0<issue entry>` → ().
    pub fn permits_of_holder(holder: &str) -> Vec<u8> {
        [b"ph/".as_slice(), holder.as_bytes(), b"\0"].concat()
    }
    /// Permits by the holder's jurisdiction: `pj/<division code>\0<issue entry>` → (); a scan of
    /// `pj/<prefix>` covers a region.
    pub fn permits_of_jurisdiction(code: &str) -> Vec<u8> {
        [b"pj/".as_slice(), code.as_bytes()].concat()
    }
    /// An import or export entry: `mv/<entry>` → its `MovementView`.
    pub fn movement(entry: u64) -> Vec<u8> {
        [b"mv/".as_slice(), &entry.to_be_bytes()].concat()
    }
    /// Movements under a licence: `ml/<licence entry><movement entry>` → ().
    pub fn licence_movements(licence_entry: u64) -> Vec<u8> {
        [b"ml/".as_slice(), &licence_entry.to_be_bytes()].concat()
    }
    /// Production and operating licences issued as permits: `pl/<holder>\0<activity>\0<substance>`
    /// → the issue entries.
    pub fn licence_permits(holder: &str, activity: i32, substance: &str) -> Vec<u8> {
        [
            b"pl/".as_slice(),
            holder.as_bytes(),
            b"\0",
            &activity.to_be_bytes(),
            b"\0",
            substance.as_bytes(),
        ]
        .concat()
    }
    /// Locations and leaf hashes of the entries of the latest run, complete or not: entries
    /// `[(n - 1) / RUN * RUN, n)` of a ledger of `n`.
    pub fn run_tail() -> Vec<u8> {
        b"xt/".to_vec()
    }
    /// Runs `[k * ROOTS_PER_KEY, (k + 1) * ROOTS_PER_KEY)`: each its root (32 bytes) and its
    /// first entry's segment and offset (u64 big-endian each); see [`RunView`].
    pub fn run_roots(k: u64) -> Vec<u8> {
        [b"xr/".as_slice(), &k.to_be_bytes()].concat()
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // INVARIANT: postcard serializes these plain structs into a Vec without error.
    postcard::to_allocvec(v).expect("postcard encodes view values")
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| {
        StoreError::Views(format!(
            "view value at {} does not decode: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

/// A group's view changes: key → new value (`None` deletes).
pub type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Typed access to the views through the current group's overlay, and beneath it the overlays
/// of earlier groups that are written but not yet durable (so not yet in the store).
pub struct Views<'s> {
    store: &'s dyn ViewStore,
    /// Earlier groups' overlays, oldest first.
    staged: Vec<&'s Overlay>,
    overlay: Overlay,
    /// The open record's changes, between `begin` and `commit` / `rollback`.
    txn: Option<Overlay>,
}

impl<'s> Views<'s> {
    pub fn new(store: &'s dyn ViewStore) -> Self {
        Self::staged(store, Vec::new())
    }

    /// Views over `store` as changed by `staged` (oldest first).
    pub fn staged(store: &'s dyn ViewStore, staged: Vec<&'s Overlay>) -> Self {
        Views {
            store,
            staged,
            overlay: BTreeMap::new(),
            txn: None,
        }
    }

    /// Starts a record's changes: until `commit` they can be dropped whole with `rollback`, so a
    /// refused record changes nothing whatever its rule wrote before refusing.
    pub fn begin(&mut self) {
        self.txn = Some(BTreeMap::new());
    }

    pub fn commit(&mut self) {
        if let Some(t) = self.txn.take() {
            self.overlay.extend(t);
        }
    }

    pub fn rollback(&mut self) {
        self.txn = None;
    }

    /// Where writes go now: the open record's changes, else the group's.
    fn top(&mut self) -> &mut Overlay {
        match &mut self.txn {
            Some(t) => t,
            None => &mut self.overlay,
        }
    }

    pub fn raw_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.txn.as_ref().and_then(|t| t.get(key)) {
            return Ok(v.clone());
        }
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        for o in self.staged.iter().rev() {
            if let Some(v) = o.get(key) {
                return Ok(v.clone());
            }
        }
        self.store.get(key)
    }

    pub fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.raw_get(key)? {
            Some(b) => decode(key, &b).map(Some),
            None => Ok(None),
        }
    }

    pub fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) {
        self.top().insert(key, Some(encode(value)));
    }

    pub fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.top().insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.top().insert(key, None);
    }

    pub fn is_dirty(&self) -> bool {
        !self.overlay.is_empty() || self.txn.as_ref().is_some_and(|t| !t.is_empty())
    }

    /// The overlay as a batch, with the log position it brings the views to.
    pub fn into_batch(self, position: &Position) -> ViewBatch {
        self.into_overlay(position).into_iter().collect()
    }

    /// The overlay, with the log position it brings the views to.
    pub fn into_overlay(mut self, position: &Position) -> Overlay {
        self.commit();
        self.overlay
            .insert(META_POSITION.to_vec(), Some(encode(position)));
        self.overlay
    }

    /// Advances key `id`'s chain from `head` by one record: entry `index`, whose body hashes
    /// to `body_hash`. The seq index rides in the head until its block is full (one view
    /// write per record); a full block is written to its own key, where it never changes.
    pub fn advance_head(
        &mut self,
        id: &KeyId,
        head: &Head,
        index: u64,
        body_hash: [u8; 32],
    ) -> Result<(), StoreError> {
        let seq = head.next_seq;
        if head.block.len() != (seq % BLOCK) as usize * 8 {
            return Err(StoreError::Views(format!(
                "seq index of key {id}: the head at seq {seq} holds {} bytes of its block",
                head.block.len()
            )));
        }
        let mut block = Vec::with_capacity(head.block.len() + 8);
        block.extend_from_slice(&head.block);
        block.extend_from_slice(&index.to_be_bytes());
        let next = Head {
            next_seq: seq + 1,
            prev_body_hash: body_hash,
            last_index: Some(index),
            block: if (seq + 1).is_multiple_of(BLOCK) {
                self.put_raw(key::signer_seq_block(id, seq / BLOCK), block);
                Vec::new()
            } else {
                block
            },
        };
        self.put(key::head(id), &next);
        Ok(())
    }

    /// Where key `id`'s chain stands (the default for a key that has signed nothing).
    pub fn head(&self, id: &KeyId) -> Result<Head, StoreError> {
        Ok(self.get(&key::head(id))?.unwrap_or_default())
    }

    /// The entry holding `seq` of key `id`.
    pub fn signer_seq_index(&self, id: &KeyId, seq: u64) -> Result<Option<u64>, StoreError> {
        let head = self.head(id)?;
        if seq >= head.next_seq {
            return Ok(None);
        }
        let at = (seq % BLOCK) as usize * 8;
        let from = |block: &[u8]| {
            block
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        };
        if seq / BLOCK == head.next_seq / BLOCK {
            return Ok(from(&head.block));
        }
        Ok(self
            .raw_get(&key::signer_seq_block(id, seq / BLOCK))?
            .as_deref()
            .and_then(from))
    }

    /// Records entries `first..first + entries.len()` (appended in order). The latest run's
    /// entries are kept in the run tail (`xt/`, [`EntryView::WIDTH`] bytes each, appended in
    /// place); each run the entries complete appends its root and start to its `xr/` key, and
    /// the next run's first entry starts the tail afresh.
    pub fn push_entries(&mut self, first: u64, entries: &[EntryView]) -> Result<(), StoreError> {
        for (i, e) in entries.iter().enumerate() {
            let index = first + i as u64;
            if index.is_multiple_of(RUN) {
                self.put_raw(key::run_tail(), Vec::new());
            }
            let want = (index % RUN) as usize * EntryView::WIDTH;
            let tail = self.append_in_place(key::run_tail(), want, |b| e.encode_into(b))?;
            if (index + 1).is_multiple_of(RUN) {
                let run = index / RUN;
                let entries: Vec<EntryView> = tail
                    .chunks_exact(EntryView::WIDTH)
                    .map(EntryView::decode)
                    .collect();
                let leaves: Vec<[u8; 32]> = entries.iter().map(|e| e.leaf_hash).collect();
                let run_view = RunView {
                    root: crate::merkle::root_from_leaves::<crate::merkle::Blake3Hasher>(&leaves),
                    start: Location {
                        len: 0,
                        ..entries[0].location
                    },
                };
                let want = (run % ROOTS_PER_KEY) as usize * RunView::WIDTH;
                self.append_in_place(key::run_roots(run / ROOTS_PER_KEY), want, |b| {
                    run_view.encode_into(b)
                })?;
            }
        }
        Ok(())
    }

    /// Appends to the packed value at `k`, which must hold exactly `want` bytes; returns the
    /// value after.
    fn append_in_place(
        &mut self,
        k: Vec<u8>,
        want: usize,
        append: impl FnOnce(&mut Vec<u8>),
    ) -> Result<&Vec<u8>, StoreError> {
        if !self.top().contains_key(&k) {
            let current = self.raw_get(&k)?.unwrap_or_default();
            self.top().insert(k.clone(), Some(current));
        }
        let held = match self.top().get(&k) {
            Some(Some(value)) => value.len(),
            _ => 0,
        };
        match self.top().get_mut(&k) {
            Some(Some(value)) if held == want => {
                append(value);
                Ok(value)
            }
            _ => Err(StoreError::Views(format!(
                "packed index {} holds {held} bytes, {want} expected: the next entry does not follow",
                packed_name(&k)
            ))),
        }
    }

    /// A lot holding's running totals.
    pub fn totals(&self, h: &Holding<'_>) -> Result<Totals, StoreError> {
        Ok(holding_totals(&|k| self.raw_get(k), h)?.unwrap_or_default())
    }

    /// A lot holding's book stock.
    pub fn balance(&self, h: &Holding<'_>) -> Result<u64, StoreError> {
        Ok(self.totals(h)?.balance() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit(ceiling: u64, not_before_ms: u64, not_after_ms: u64) -> PermitView {
        PermitView {
            issue_entry: 7,
            permit_no: "P-1".into(),
            permit_type: 1,
            issuer: KeyId([0; 16]),
            jurisdiction: "440305".into(),
            holder: "H".into(),
            counterparty: String::new(),
            substance: "S".into(),
            ceiling,
            not_before_ms,
            not_after_ms,
            single_use: false,
            origin_site: String::new(),
            destination_site: String::new(),
            consignee: String::new(),
            carrier: String::new(),
            issued_at_ms: 0,
            drawn: 0,
            draws: 0,
            received: 0,
            closed: None,
        }
    }

    #[test]
    fn permit_states_follow_the_lifecycle() {
        let mut p = permit(100, 10, 20);
        assert_eq!(p.state(9), PermitState::Issued);
        assert_eq!(p.state(10), PermitState::Active);
        assert_eq!(p.remaining(), 100);
        p.drawn = 40;
        assert_eq!(p.state(15), PermitState::PartiallyUsed);
        assert_eq!(p.remaining(), 60);
        // Expiry is exclusive at not_after.
        assert_eq!(p.state(19), PermitState::PartiallyUsed);
        assert_eq!(p.state(20), PermitState::Expired);
        p.drawn = 100;
        assert_eq!(p.state(15), PermitState::Exhausted);
        assert_eq!(
            p.state(25),
            PermitState::Exhausted,
            "exhausted outranks expired"
        );
        assert_eq!(p.remaining(), 0);
        for (how, state) in [
            (ClosedHow::Revoked, PermitState::Revoked),
            (ClosedHow::WrittenOff, PermitState::WrittenOff),
            (ClosedHow::SingleUse, PermitState::WrittenOff),
        ] {
            let mut c = permit(100, 10, 20);
            c.drawn = 30;
            c.closed = Some(PermitClosure {
                how,
                entry: 9,
                at_ms: 12,
                reason: "r".into(),
                void: 70,
            });
            assert_eq!(c.state(15), state);
            assert_eq!(c.state(25), state, "a closure outranks expiry");
            assert_eq!(c.remaining(), 0);
        }
        // Without a ceiling (seal cards, licences): never exhausted, nothing to remain.
        let mut card = permit(0, 0, 20);
        card.drawn = 1_000_000;
        assert_eq!(card.state(5), PermitState::PartiallyUsed);
        assert_eq!(card.remaining(), u64::MAX);
    }

    #[test]
    fn a_rolled_back_record_leaves_the_group_overlay_as_it_was() {
        let store = crate::store::MemoryViews::default();
        let mut v = Views::new(&store);
        let id = KeyId([1; 16]);
        v.begin();
        v.put(b"x/kept".to_vec(), &1u64);
        v.advance_head(&id, &Head::default(), 10, [1; 32]).unwrap();
        v.commit();
        v.begin();
        v.put(b"x/kept".to_vec(), &2u64);
        v.put(b"x/new".to_vec(), &3u64);
        v.delete(b"x/kept".to_vec());
        let h1 = v.head(&id).unwrap();
        v.advance_head(&id, &h1, 11, [2; 32]).unwrap();
        assert_eq!(
            v.get::<u64>(b"x/new").unwrap(),
            Some(3),
            "the record sees its own writes"
        );
        v.rollback();
        assert_eq!(v.get::<u64>(b"x/kept").unwrap(), Some(1));
        assert_eq!(v.get::<u64>(b"x/new").unwrap(), None);
        assert_eq!(v.signer_seq_index(&id, 0).unwrap(), Some(10));
        assert_eq!(v.signer_seq_index(&id, 1).unwrap(), None);
        // The next record appends where the committed one left off.
        v.begin();
        assert_eq!(v.head(&id).unwrap(), h1);
        v.advance_head(&id, &h1, 12, [3; 32]).unwrap();
        v.commit();
        assert_eq!(v.signer_seq_index(&id, 1).unwrap(), Some(12));
    }

    /// The head carries its block until it is full: across block boundaries every seq is
    /// found, full blocks have their own keys, and a head that does not match its block is
    /// refused.
    #[test]
    fn the_seq_index_rides_in_the_head_until_its_block_is_full() {
        let store = crate::store::MemoryViews::default();
        let mut v = Views::new(&store);
        let id = KeyId([7; 16]);
        let n = 2 * BLOCK + 3;
        for seq in 0..n {
            let head = v.head(&id).unwrap();
            assert_eq!(head.next_seq, seq);
            assert_eq!(head.block.len(), (seq % BLOCK) as usize * 8);
            v.advance_head(&id, &head, 1000 + 2 * seq, [seq as u8; 32])
                .unwrap();
        }
        for seq in 0..n {
            assert_eq!(v.signer_seq_index(&id, seq).unwrap(), Some(1000 + 2 * seq));
        }
        assert_eq!(v.signer_seq_index(&id, n).unwrap(), None);
        for b in 0..2 {
            let block = v.raw_get(&key::signer_seq_block(&id, b)).unwrap().unwrap();
            assert_eq!(block.len(), BLOCK as usize * 8);
        }
        assert_eq!(v.raw_get(&key::signer_seq_block(&id, 2)).unwrap(), None);
        let head = v.head(&id).unwrap();
        assert_eq!(
            (head.next_seq, head.last_index),
            (n, Some(1000 + 2 * (n - 1)))
        );
        let mut wrong = head.clone();
        wrong.block.pop();
        assert!(v.advance_head(&id, &wrong, 1, [0; 32]).is_err());
    }

    #[test]
    fn totals_balance_is_inflows_minus_outflows() {
        let mut t = Totals::default();
        *t.get_mut(Term::Produced) = 100;
        *t.get_mut(Term::Received) = 50;
        *t.get_mut(Term::AdjustedIn) = 1;
        *t.get_mut(Term::Shipped) = 30;
        *t.get_mut(Term::Lost) = 20;
        *t.get_mut(Term::AdjustedOut) = 1;
        assert_eq!(t.balance(), 100);
        assert_eq!(
            Term::ALL.iter().filter(|t| t.inflow()).count(),
            4,
            "produced, received, imported, adjusted_in"
        );
    }

    #[test]
    fn the_run_tail_round_trips_and_refuses_partial_entries_or_more_than_a_run() {
        let e = EntryView {
            location: Location {
                segment: 3,
                offset: 1 << 40,
                len: 77,
            },
            leaf_hash: [9; 32],
        };
        let mut b = Vec::new();
        e.encode_into(&mut b);
        e.encode_into(&mut b);
        assert_eq!(b.len(), 2 * EntryView::WIDTH);
        assert_eq!(decode_run_tail(b"xt/", &b).unwrap(), vec![e, e]);
        b.pop();
        assert!(decode_run_tail(b"xt/", &b).is_err());
        let mut run = Vec::new();
        for _ in 0..RUN {
            e.encode_into(&mut run);
        }
        assert_eq!(decode_run_tail(b"xt/", &run).unwrap().len(), RUN as usize);
        e.encode_into(&mut run);
        assert!(decode_run_tail(b"xt/", &run).is_err());
    }

    /// Rows `at` (time step, lot name length) pushed to `j` in order, the book kept at
    /// `book_key` (a lot view's for `lot`, else a `Book`), written to `store` as a group
    /// would be; returns the rows.
    fn post_rows(
        store: &crate::store::MemoryViews,
        j: &JournalOf<'_>,
        lot: Option<&LotView>,
        rows: &[(u64, usize)],
    ) -> Vec<JournalRow> {
        let book_key = match (j, lot) {
            (JournalOf::Holding(h), Some(_)) => key::lot(h.lot),
            (JournalOf::Holding(h), None) => key::balance(h),
            (JournalOf::Stock(s), _) => key::stock(s),
        };
        let mut at_ms = 1_000;
        let mut out = Vec::new();
        for (i, &(step, name)) in rows.iter().enumerate() {
            at_ms += step;
            let mut book = match lot {
                Some(_) => store
                    .get(&book_key)
                    .unwrap()
                    .map(|b| decode::<LotView>(&book_key, &b).unwrap().book),
                None => store
                    .get(&book_key)
                    .unwrap()
                    .map(|b| decode::<Book>(&book_key, &b).unwrap()),
            }
            .unwrap_or_default();
            let row = JournalRow {
                entry: 10 + i as u64,
                at_ms,
                lot: "L".repeat(name),
                event: Event::Move {
                    term: Term::Produced,
                    quantity: i as u64,
                    shipment: None,
                },
                totals: Totals([i as u128; 10]),
            };
            book.totals = row.totals;
            let block = book
                .journal
                .push(&j.prefix(), &row, &|k| store.get(k))
                .unwrap();
            let book_value = match lot {
                Some(l) => encode(&LotView { book, ..l.clone() }),
                None => encode(&book),
            };
            let mut batch: ViewBatch = vec![(book_key.clone(), Some(book_value))];
            batch.extend(block.map(|(k, v)| (k, Some(v))));
            store.apply(batch).unwrap();
            out.push(row);
        }
        out
    }

    fn stock() -> Stock<'static> {
        Stock {
            enterprise: "E",
            site: "s",
            substance: "S",
        }
    }

    proptest::proptest! {
        /// Whatever the rows' sizes and times, a journal read through its inline rows and
        /// blocks answers as the list of its rows would: every range, every limit, every
        /// "last before".
        #[test]
        fn packed_journals_read_as_their_rows(
            rows in proptest::collection::vec((0u64..3, 0usize..700), 1..120),
            cuts in proptest::collection::vec((0u64..400, 0u64..140, 0u64..400, 0u64..140, 1usize..50), 1..12),
        ) {
            let store = crate::store::MemoryViews::default();
            let j = JournalOf::Stock(stock());
            let all = post_rows(&store, &j, None, &rows);
            let at = |r: &JournalRow| (r.at_ms, r.entry);
            proptest::prop_assert_eq!(
                j.rows(&*store.snapshot(), (0, 0), (u64::MAX, u64::MAX), usize::MAX).unwrap(),
                all.clone()
            );
            for (fa, fe, ta, te, limit) in cuts {
                let from = (1_000 + fa, fe);
                let to = (1_000 + ta, te);
                let want: Vec<JournalRow> = all
                    .iter()
                    .filter(|r| at(r) >= from && at(r) < to)
                    .take(limit)
                    .cloned()
                    .collect();
                proptest::prop_assert_eq!(j.rows(&*store.snapshot(), from, to, limit).unwrap(), want);
                let last = all.iter().rfind(|r| at(r) < from).cloned();
                proptest::prop_assert_eq!(j.last_before(&*store.snapshot(), from).unwrap(), last);
            }
        }
    }

    #[test]
    fn small_rows_share_blocks_and_the_first_ride_inline() {
        let store = crate::store::MemoryViews::default();
        let j = JournalOf::Stock(stock());
        let all = post_rows(&store, &j, None, &[(1, 8); 400]);
        let blocks = store.scan_prefix(&j.prefix()).unwrap();
        let lens: Vec<usize> = all.iter().map(|r| encode(r).len()).collect();
        let longest = *lens.iter().max().unwrap();
        // The first rows that fit ride inline...
        let inline = lens
            .iter()
            .scan(0, |sum, l| {
                *sum += l;
                Some(*sum)
            })
            .take_while(|&sum| sum <= INLINE_JOURNAL_BYTES)
            .count();
        assert!(inline >= 2, "rows of {lens:?} bytes");
        let book: Book =
            decode(b"bs/", &store.get(&key::stock(&stock())).unwrap().unwrap()).unwrap();
        assert_eq!(
            decode_rows(b"bs/", &book.journal.inline).unwrap(),
            all[..inline]
        );
        // ...and the rest fill blocks: every block but the last to within a row.
        assert!(blocks.len() < 400 / 8, "{} blocks", blocks.len());
        let mut n = inline;
        for (i, (k, v)) in blocks.iter().enumerate() {
            let rows = decode_rows(k, v).unwrap();
            assert_eq!(*k, key::at(&j.prefix(), rows[0].at_ms, rows[0].entry));
            assert_eq!(rows, all[n..n + rows.len()]);
            n += rows.len();
            assert!(v.len() <= JOURNAL_BLOCK_BYTES);
            assert!(i + 1 == blocks.len() || v.len() + longest > JOURNAL_BLOCK_BYTES);
        }
        assert_eq!(n, all.len());
        let head = book.journal.head.unwrap();
        let (last_key, last_block) = blocks.last().unwrap();
        assert_eq!(*last_key, key::at(&j.prefix(), head.at_ms, head.entry));
        assert_eq!(last_block.len(), head.len as usize);
    }

    #[test]
    fn a_lot_s_first_holding_keeps_its_journal_in_the_lot_view() {
        let store = crate::store::MemoryViews::default();
        let h = Holding {
            enterprise: "E",
            site: "s",
            substance: "S",
            lot: "L-1",
        };
        let lot = LotView {
            substance: "S".into(),
            created_by: "E".into(),
            created_by_entry: 10,
            site: "s".into(),
            derived_from: None,
            book: Book::default(),
        };
        let j = JournalOf::Holding(h.clone());
        let all = post_rows(&store, &j, Some(&lot), &[(1, 8); 3]);
        assert_eq!(store.scan_prefix(b"j/").unwrap(), vec![], "no journal key");
        assert_eq!(store.get(&key::balance(&h)).unwrap(), None);
        assert_eq!(
            j.rows(&*store.snapshot(), (0, 0), (u64::MAX, u64::MAX), 10)
                .unwrap(),
            all
        );
        assert_eq!(
            j.last_before(&*store.snapshot(), (all[2].at_ms, 0))
                .unwrap(),
            Some(all[1].clone())
        );
        // Another holding of the same lot reads nothing from the lot's view.
        let other = JournalOf::Holding(Holding { site: "t", ..h });
        assert_eq!(
            other
                .rows(&*store.snapshot(), (0, 0), (u64::MAX, u64::MAX), 10)
                .unwrap(),
            vec![]
        );
    }

    #[test]
    fn a_block_shorter_than_its_book_says_is_refused() {
        let store = crate::store::MemoryViews::default();
        let j = JournalOf::Stock(stock());
        post_rows(&store, &j, None, &[(1, 600); 2]);
        let (k, mut v) = store.scan_prefix(&j.prefix()).unwrap().pop().unwrap();
        v.pop();
        store.apply(vec![(k, Some(v))]).unwrap();
        let mut book: Book =
            decode(b"bs/", &store.get(&key::stock(&stock())).unwrap().unwrap()).unwrap();
        let row = JournalRow {
            entry: 99,
            at_ms: 5_000,
            lot: String::new(),
            event: Event::Count {
                counted: 0,
                book: 0,
                inspector: false,
            },
            totals: Totals::default(),
        };
        let e = book
            .journal
            .push(&j.prefix(), &row, &|k| store.get(k))
            .unwrap_err();
        assert!(e.to_string().contains("its book says"), "{e}");
    }

    #[test]
    fn byte_fields_encode_as_a_sequence_of_u8_would() {
        #[derive(Serialize)]
        struct AsSeq {
            next_seq: u64,
            prev_body_hash: [u8; 32],
            last_index: Option<u64>,
            block: Vec<u8>,
        }
        let block: Vec<u8> = (0..=255u8).chain(0..40).collect();
        let head = Head {
            next_seq: 300,
            prev_body_hash: [7; 32],
            last_index: Some(299),
            block: block.clone(),
        };
        let seq = AsSeq {
            next_seq: 300,
            prev_body_hash: [7; 32],
            last_index: Some(299),
            block,
        };
        assert_eq!(encode(&head), encode(&seq));
        assert_eq!(decode::<Head>(b"h/", &encode(&seq)).unwrap(), head);
    }
}
