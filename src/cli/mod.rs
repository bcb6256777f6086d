pub mod eval;
pub mod filter;
pub mod report;
pub mod sample;
