//! The domain vocabulary: substances and their catalogue, identifiers of enterprises and
//! regions, quantities. Pure: no I/O.

pub mod catalogue;
pub mod ids;
pub mod regulation;

pub use catalogue::{Catalogue, Substance};
pub use ids::{check_credit_code, check_region_code, credit_code_check_char};
