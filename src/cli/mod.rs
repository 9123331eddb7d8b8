//! Command line: `cairn server ...`, `cairn agent ...`, with SPIRE's flag spelling.

use std::process::ExitCode;

/// Runs the CLI with the process arguments.
#[must_use]
pub fn main() -> ExitCode {
    eprintln!("cairn: not yet wired");
    ExitCode::FAILURE
}
