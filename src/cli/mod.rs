//! The command line: each subcommand parses its flags into a library request and prints what
//! the library did. No domain logic lives here.

pub mod calibrate;
pub mod compare;
pub mod eval;
pub mod fid;
pub mod filter;
pub mod reference;
pub mod sample;

use clap::builder::{PossibleValuesParser, TypedValueParser};

/// Parses one of the library's named enums (`T::NAMES`); the names are listed in `--help` and
/// anything else is refused by clap as an invalid value.
pub fn named<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = wgsl_diff::Error> + Clone + Send + Sync + 'static,
{
    PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

/// A progress bar over `len` units of `unit` on standard error (drawn only on a terminal).
pub fn progress_bar(len: usize, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:40}} {{pos}}/{{len}} {unit}  [{{elapsed_precise}}<{{eta_precise}}]"
    )) {
        bar.set_style(style);
    }
    bar
}
