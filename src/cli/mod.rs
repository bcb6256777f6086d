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

/// A progress bar over `len` units of `unit` on standard error, drawn only on a terminal and
/// never with `--quiet`, as `sample` draws its own.
pub fn progress_bar(len: usize, unit: &str, quiet: bool) -> indicatif::ProgressBar {
    let bar = match quiet {
        true => indicatif::ProgressBar::hidden(),
        false => indicatif::ProgressBar::new(len as u64),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:40}} {{pos}}/{{len}} {unit}  [{{elapsed_precise}}<{{eta_precise}}]"
    )) {
        bar.set_style(style);
    }
    bar
}

/// Moves `bar` to `done` of `total` (the total may grow, as when a second set is read).
pub fn advance(bar: &indicatif::ProgressBar, done: usize, total: usize) {
    bar.set_length(total as u64);
    bar.set_position(done as u64);
}
