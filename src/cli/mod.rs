pub mod filter;
pub mod report;
pub mod sample;
