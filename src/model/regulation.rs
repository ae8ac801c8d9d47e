//! The regulations' table as data: which permit each movement of a controlled substance needs,
//! which agency may issue each permit type, and the constraints a permit of each type must meet.
//! The rules in `ledger::rules` consult these tables; no permit rule is an `if` elsewhere.
//!
//! Sources: 易制毒化学品管理条例 (State Council Order 445) and 麻醉药品和精神药品管理条例 (Order 442),
//! summarised in `shared/domain/REGULATIONS.md`:
//!
//! | activity  | category 1             | category 2          | category 3          |
//! |-----------|------------------------|---------------------|---------------------|
//! | purchase  | purchase permit        | purchase filing     | purchase filing     |
//! | transport | transport permit, single use | transport permit | transport filing |
//! | import / export | import / export licence (商务部) | same | same             |
//!
//! Pharmaceutical precursors (药品类: the ephedrines, ergot alkaloids) follow the category-1 rows,
//! but the drug regulator (药监) issues their purchase permits and licences. Narcotics and class I
//! psychotropics are bought by medical institutions with a purchase seal card (印鉴卡); designated
//! wholesalers buy under their wholesale licence; class II psychotropics need no per-purchase
//! permit. Their transport certificates (运输证明) are outside this table.

use super::Substance;
use crate::pb::{Agency, Category, PermitType};

/// The regulatory class of a substance: category, split by who regulates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Class {
    Precursor1,
    /// Category 1, pharmaceutical (药品类易制毒化学品).
    Precursor1Pharma,
    Precursor2,
    Precursor3,
    Narcotic,
    Psychotropic1,
    Psychotropic2,
}

impl Class {
    pub fn of(s: &Substance) -> Class {
        match s.category {
            Category::Precursor1 if s.pharmaceutical => Class::Precursor1Pharma,
            Category::Precursor1 => Class::Precursor1,
            Category::Precursor2 => Class::Precursor2,
            Category::Precursor3 => Class::Precursor3,
            Category::Narcotic => Class::Narcotic,
            Category::Psychotropic1 => Class::Psychotropic1,
            // INVARIANT: the catalogue only holds the categories above and PSYCHOTROPIC_2.
            _ => Class::Psychotropic2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Precursor1 => "category 1 precursor",
            Class::Precursor1Pharma => "category 1 pharmaceutical precursor",
            Class::Precursor2 => "category 2 precursor",
            Class::Precursor3 => "category 3 precursor",
            Class::Narcotic => "narcotic drug",
            Class::Psychotropic1 => "class I psychotropic",
            Class::Psychotropic2 => "class II psychotropic",
        }
    }

    fn is_drug(self) -> bool {
        matches!(
            self,
            Class::Narcotic | Class::Psychotropic1 | Class::Psychotropic2
        )
    }
}

/// A movement that may need a permit of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Movement {
    /// A sale to another enterprise: the buyer's permit, cited by the seller's `Ship`.
    Purchase,
    /// Goods moved between sites (any `Ship`): the consignor's transport permit.
    Transport,
    Import,
    Export,
}

impl Movement {
    pub fn name(self) -> &'static str {
        match self {
            Movement::Purchase => "purchase",
            Movement::Transport => "transport",
            Movement::Import => "import",
            Movement::Export => "export",
        }
    }
}

/// When a row's requirement is waived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unless {
    Never,
    /// The buyer holds a valid SELL licence for the category (a designated wholesaler).
    BuyerIsWholesaler,
}

/// One row of the movement table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub class: Class,
    pub movement: Movement,
    /// Permit types any one of which satisfies the row; empty = no permit needed.
    pub needs: &'static [PermitType],
    pub unless: Unless,
}

const fn row(
    class: Class,
    movement: Movement,
    needs: &'static [PermitType],
    unless: Unless,
) -> Row {
    Row {
        class,
        movement,
        needs,
        unless,
    }
}

use Class::*;
use Movement::*;
use PermitType as T;

/// Which permit each movement needs, by class. Every class × movement has exactly one row
/// (a test checks it).
pub const MOVEMENTS: &[Row] = &[
    row(Precursor1, Purchase, &[T::PurchasePermit], Unless::Never),
    row(
        Precursor1Pharma,
        Purchase,
        &[T::PurchasePermit],
        Unless::Never,
    ),
    row(Precursor2, Purchase, &[T::PurchaseFiling], Unless::Never),
    row(Precursor3, Purchase, &[T::PurchaseFiling], Unless::Never),
    row(
        Narcotic,
        Purchase,
        &[T::PurchaseSealCard],
        Unless::BuyerIsWholesaler,
    ),
    row(
        Psychotropic1,
        Purchase,
        &[T::PurchaseSealCard],
        Unless::BuyerIsWholesaler,
    ),
    row(Psychotropic2, Purchase, &[], Unless::Never),
    row(Precursor1, Transport, &[T::TransportPermit], Unless::Never),
    row(
        Precursor1Pharma,
        Transport,
        &[T::TransportPermit],
        Unless::Never,
    ),
    row(Precursor2, Transport, &[T::TransportPermit], Unless::Never),
    row(Precursor3, Transport, &[T::TransportFiling], Unless::Never),
    row(Narcotic, Transport, &[], Unless::Never),
    row(Psychotropic1, Transport, &[], Unless::Never),
    row(Psychotropic2, Transport, &[], Unless::Never),
    row(Precursor1, Import, &[T::ImportLicence], Unless::Never),
    row(Precursor1Pharma, Import, &[T::ImportLicence], Unless::Never),
    row(Precursor2, Import, &[T::ImportLicence], Unless::Never),
    row(Precursor3, Import, &[T::ImportLicence], Unless::Never),
    row(Narcotic, Import, &[T::ImportLicence], Unless::Never),
    row(Psychotropic1, Import, &[T::ImportLicence], Unless::Never),
    row(Psychotropic2, Import, &[T::ImportLicence], Unless::Never),
    row(Precursor1, Export, &[T::ExportLicence], Unless::Never),
    row(Precursor1Pharma, Export, &[T::ExportLicence], Unless::Never),
    row(Precursor2, Export, &[T::ExportLicence], Unless::Never),
    row(Precursor3, Export, &[T::ExportLicence], Unless::Never),
    row(Narcotic, Export, &[T::ExportLicence], Unless::Never),
    row(Psychotropic1, Export, &[T::ExportLicence], Unless::Never),
    row(Psychotropic2, Export, &[T::ExportLicence], Unless::Never),
];

/// The row for a class and movement.
pub fn needs(class: Class, movement: Movement) -> Row {
    // INVARIANT: MOVEMENTS covers every class × movement (tested).
    *MOVEMENTS
        .iter()
        .find(|r| r.class == class && r.movement == movement)
        .expect("every class × movement has a row")
}

/// The agency that issues a permit type for a class, or `None` when the type does not apply
/// to that class at all (a purchase filing for a category-1 substance, say).
pub fn issuer(t: PermitType, class: Class) -> Option<Agency> {
    use Agency as A;
    match (t, class) {
        (T::PurchasePermit, Precursor1) => Some(A::PublicSecurity),
        (T::PurchasePermit, Precursor1Pharma) => Some(A::DrugRegulation),
        (T::PurchaseFiling, Precursor2 | Precursor3) => Some(A::PublicSecurity),
        (T::TransportPermit, Precursor1 | Precursor1Pharma | Precursor2) => Some(A::PublicSecurity),
        (T::TransportFiling, Precursor3) => Some(A::PublicSecurity),
        (T::ImportLicence | T::ExportLicence, c) if c.is_drug() => Some(A::DrugRegulation),
        (T::ImportLicence | T::ExportLicence, _) => Some(A::Commerce),
        (T::PurchaseSealCard, Narcotic | Psychotropic1) => Some(A::DrugRegulation),
        // Production and operating licences: safety supervision (应急管理) for non-pharmaceutical
        // category-1 precursors, the drug regulator for pharmaceutical ones and for drugs.
        // Categories 2 and 3 are filed (备案), not licensed: their filings are the licences on
        // the enterprise's enrolment.
        (T::ProductionLicence | T::OperatingLicence, Precursor1) => Some(A::Emergency),
        (T::ProductionLicence | T::OperatingLicence, c) if c == Precursor1Pharma || c.is_drug() => {
            Some(A::DrugRegulation)
        }
        _ => None,
    }
}

/// Constraints on a permit of type `t` for class `class` at issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The permit must state a quantity ceiling > 0.
    pub ceiling_required: bool,
    /// The permit must be single use.
    pub single_use_required: bool,
    /// A transport permit: names a consignee, maybe a carrier and sites.
    pub transport: bool,
    /// The counterparty is an enrolled enterprise (credit code); else free text (foreign party).
    pub counterparty_enrolled: bool,
    /// The licence activity it grants, for production and operating licences.
    pub licence_for: Option<crate::pb::Activity>,
}

pub fn shape(t: PermitType, class: Class) -> Shape {
    use crate::pb::Activity;
    let transport = matches!(t, T::TransportPermit | T::TransportFiling);
    Shape {
        ceiling_required: !matches!(
            t,
            T::PurchaseSealCard | T::ProductionLicence | T::OperatingLicence
        ),
        // Category 1 purchase permits and transport permits are single use (Order 445); a
        // purchase *filing* may be multi-use after a clean record, so filings are not.
        single_use_required: matches!(t, T::TransportPermit | T::PurchasePermit)
            && matches!(class, Precursor1 | Precursor1Pharma),
        transport,
        counterparty_enrolled: !matches!(t, T::ImportLicence | T::ExportLicence),
        licence_for: match t {
            T::ProductionLicence => Some(Activity::Produce),
            T::OperatingLicence => Some(Activity::Sell),
            _ => None,
        },
    }
}

/// Names of permit types for messages: `PURCHASE_PERMIT or PURCHASE_FILING`.
pub fn type_names(types: &[PermitType]) -> String {
    types
        .iter()
        .map(|t| type_name(*t))
        .collect::<Vec<_>>()
        .join(" or ")
}

pub fn type_name(t: PermitType) -> &'static str {
    t.as_str_name().trim_start_matches("PERMIT_TYPE_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Catalogue;

    const CLASSES: [Class; 7] = [
        Precursor1,
        Precursor1Pharma,
        Precursor2,
        Precursor3,
        Narcotic,
        Psychotropic1,
        Psychotropic2,
    ];

    #[test]
    fn every_class_and_movement_has_exactly_one_row() {
        for c in CLASSES {
            for m in [Purchase, Transport, Import, Export] {
                let n = MOVEMENTS
                    .iter()
                    .filter(|r| r.class == c && r.movement == m)
                    .count();
                assert_eq!(n, 1, "{c:?} × {m:?}");
            }
        }
    }

    #[test]
    fn every_required_permit_has_an_issuer_for_its_class() {
        for r in MOVEMENTS {
            for t in r.needs {
                assert!(
                    issuer(*t, r.class).is_some(),
                    "{:?} needs {t:?} but nobody issues it",
                    r.class
                );
            }
        }
    }

    #[test]
    fn the_table_follows_the_regulations() {
        let cat = Catalogue::embedded();
        let class = |id: &str| Class::of(cat.get(id).unwrap());
        // P2P (category 1), ephedrine (category 1, pharmaceutical), acetic anhydride (2),
        // acetone (3), morphine (narcotic), ketamine (psychotropic I), diazepam (II).
        assert_eq!(class("103-79-7"), Precursor1);
        assert_eq!(class("299-42-3"), Precursor1Pharma);
        assert_eq!(class("108-24-7"), Precursor2);
        assert_eq!(class("67-64-1"), Precursor3);
        assert_eq!(class("57-27-2"), Narcotic);
        assert_eq!(class("6740-88-1"), Psychotropic1);
        assert_eq!(class("439-14-5"), Psychotropic2);
        assert_eq!(needs(Precursor1, Purchase).needs, &[T::PurchasePermit]);
        assert_eq!(needs(Precursor2, Purchase).needs, &[T::PurchaseFiling]);
        assert_eq!(needs(Precursor3, Purchase).needs, &[T::PurchaseFiling]);
        assert_eq!(needs(Precursor3, Transport).needs, &[T::TransportFiling]);
        assert!(needs(Psychotropic2, Purchase).needs.is_empty());
        assert_eq!(needs(Narcotic, Purchase).unless, Unless::BuyerIsWholesaler);
        assert_eq!(
            issuer(T::PurchasePermit, Precursor1Pharma),
            Some(Agency::DrugRegulation)
        );
        assert_eq!(
            issuer(T::PurchasePermit, Precursor1),
            Some(Agency::PublicSecurity)
        );
        assert_eq!(issuer(T::PurchaseFiling, Precursor1), None);
        assert_eq!(issuer(T::ImportLicence, Precursor2), Some(Agency::Commerce));
        assert_eq!(
            issuer(T::ImportLicence, Narcotic),
            Some(Agency::DrugRegulation)
        );
        assert_eq!(issuer(T::PurchaseSealCard, Psychotropic2), None);
        assert!(shape(T::TransportPermit, Precursor1).single_use_required);
        assert!(shape(T::PurchasePermit, Precursor1Pharma).single_use_required);
        assert!(!shape(T::PurchaseFiling, Precursor2).single_use_required);
        assert!(!shape(T::TransportPermit, Precursor2).single_use_required);
        assert!(!shape(T::PurchaseSealCard, Narcotic).ceiling_required);
    }
}
