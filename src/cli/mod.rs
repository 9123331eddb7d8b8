//! Command line: `cairn server ...`, `cairn agent ...` (and, through links named
//! `spire-server` / `spire-agent`, the same with SPIRE's program names) and `cairn tiers ...`
//! (the local multi-tier demo). SPIRE's flag spelling (`-spiffeID`) works beside `--spiffe-id`.

/// `println!` for command output. `println!` panics when stdout is a closed pipe
/// (`cairn ... | head`); this exits quietly instead (see [`write_stdout`]).
macro_rules! outln {
    () => { $crate::cli::write_stdout(format_args!(""), true) };
    ($($t:tt)*) => { $crate::cli::write_stdout(format_args!($($t)*), true) };
}

/// `print!` for command output (see `outln!`).
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::write_stdout(format_args!($($t)*), false) };
}

pub mod agent;
pub mod argv;
pub mod client;
pub mod entry;
pub mod federation;
pub mod hsm;
pub mod localauthority;
pub mod logger;
pub mod server;
pub mod tiers;

use clap::{Parser, Subcommand};
use std::io::Write as _;
use std::process::ExitCode;

/// cairn: a SPIFFE certificate authority (root tier, downstream tiers, agent).
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// The CA server (SPIRE's spire-server).
    Server {
        #[command(subcommand)]
        command: server::ServerCommand,
    },
    /// The node agent and Workload API clients (SPIRE's spire-agent).
    Agent {
        #[command(subcommand)]
        command: agent::AgentCommand,
    },
    /// PKCS#11 custody: list tokens and keys, the root key ceremony, a config dry run.
    Hsm {
        #[command(subcommand)]
        command: hsm::HsmCommand,
    },
    /// A local multi-tier demo: root, downstream servers and agents from a topology file.
    Tiers {
        #[command(subcommand)]
        command: tiers::TiersCommand,
    },
}

/// Runs the CLI with the process arguments.
#[must_use]
pub fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    let program = args
        .first()
        .map(|a| std::path::Path::new(a).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default())
        .unwrap_or_default();
    // Invoked as spire-server or spire-agent: behave as `cairn server` / `cairn agent`.
    if program == "spire-server" {
        args.insert(1, "server".into());
    } else if program == "spire-agent" {
        args.insert(1, "agent".into());
    }
    let args = argv::normalize(args);
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Top::Server { command } => server::run(command).await,
            Top::Agent { command } => agent::run(command, |config| Box::pin(crate::agent::run::run(config))).await,
            Top::Tiers { command } => tiers::run(command).await,
            Top::Hsm { command } => hsm::run(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Value parser for every TTL flag (`-ttl`, `-x509SVIDTTL`, `-jwtSVIDTTL`): plain seconds, as
/// SPIRE's integer flags take, or a Go duration (`1h`, `90s`, `1h30m`), as its `x509 mint` and
/// `jwt mint` take. SPIRE accepts only one form per flag; cairn accepts both everywhere so a
/// command copied from either half of SPIRE's docs works. The duration grammar is the config
/// file's ([`crate::config::parse_duration`]), so flags and files agree.
///
/// # Errors
/// A message naming the bad value (clap prefixes the flag).
pub fn parse_ttl(s: &str) -> Result<i32, String> {
    let t = s.trim();
    let secs = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<i64>().map_err(|_| format!("{t:?} is too large for a TTL"))?
    } else {
        crate::config::parse_duration(t).map_err(|e| e.to_string())?
    };
    i32::try_from(secs).map_err(|_| format!("{t:?} is too long for a TTL (at most {} seconds)", i32::MAX))
}

/// Writes command output to stdout and flushes it, so a closed stdout is seen at once.
///
/// When the reader has gone (`EPIPE`, e.g. `cairn server bundle show | head -c1`), everything
/// it wanted has been delivered: the process exits with status 0 and prints nothing, as a
/// Unix tool killed by SIGPIPE would (Rust ignores SIGPIPE, so `println!` panicked instead).
/// Streaming commands (`agent api watch`) stop here too rather than run on unread. Any other
/// write error is reported on stderr and ends the process with status 1.
pub fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    let result = {
        let mut stdout = std::io::stdout().lock();
        stdout.write_fmt(args).and_then(|()| if newline { stdout.write_all(b"\n") } else { Ok(()) }).and_then(|()| stdout.flush())
    };
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "cairn: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttl_flags_take_seconds_and_durations() {
        for (input, want) in [("600", 600), ("0", 0), ("90s", 90), ("1h", 3600), ("1h30m", 5400), ("5m", 300)] {
            assert_eq!(parse_ttl(input), Ok(want), "{input}");
        }
        for bad in ["", "-5", "1d", "abc", "99999999999", "1000000h"] {
            assert!(parse_ttl(bad).is_err(), "{bad} accepted");
        }
    }
}
