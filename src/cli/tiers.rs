//! `cairn tiers up|status|down`: a local multi-tier demo (see [`crate::tiers`]).

use crate::tiers::{DEFAULT_BASE_PORT, DEFAULT_DATA_DIR, DEFAULT_DIR, UpOptions};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// `cairn tiers` subcommands.
#[derive(Debug, Subcommand)]
pub enum TiersCommand {
    /// Start every tier of DIR/topology.conf (root, downstream servers, agents), wire them,
    /// show the tree, CA chains and JWT keys, and run until Ctrl-C (or return with --detach).
    Up(UpArgs),
    /// Per tier of a running demo: CA expiry, active and prepared slots, bundle, upstream sync.
    Status(DataDirArgs),
    /// Stop a demo (detached or not); configs and logs stay.
    Down(DataDirArgs),
}

/// `tiers up` flags.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory holding topology.conf (or the topology file itself).
    #[arg(default_value = DEFAULT_DIR)]
    dir: PathBuf,
    #[command(flatten)]
    data: DataDirArgs,
    /// First port to try for the servers; busy ports are skipped.
    #[arg(long, default_value_t = DEFAULT_BASE_PORT)]
    base_port: u16,
    /// Leave the tiers running and return (pids in DATA_DIR/tiers.json; cairn tiers down stops them).
    #[arg(long)]
    detach: bool,
    /// Keep every server's CA and JWT keys on a SoftHSM2 token made for the demo (needs softhsm2).
    #[arg(long)]
    softhsm: bool,
}

/// Where the demo's configs, state, sockets and logs live.
#[derive(Debug, Args)]
pub struct DataDirArgs {
    /// The demo's data directory.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

/// Runs one `cairn tiers` subcommand.
///
/// # Errors
/// A message for the operator.
pub async fn run(cmd: TiersCommand) -> Result<(), String> {
    match cmd {
        TiersCommand::Up(a) => {
            crate::tiers::up(&UpOptions {
                dir: a.dir,
                data_dir: a.data.data_dir,
                base_port: a.base_port,
                detach: a.detach,
                softhsm: a.softhsm,
            })
            .await
        }
        TiersCommand::Status(d) => crate::tiers::status(&d.data_dir).await,
        TiersCommand::Down(d) => crate::tiers::down(&d.data_dir).await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: TiersCommand,
    }

    fn parse(args: &[&str]) -> TiersCommand {
        let argv = std::iter::once("tiers".to_owned()).chain(args.iter().map(|s| (*s).to_owned())).collect();
        T::try_parse_from(crate::cli::argv::normalize(argv)).map(|t| t.cmd).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn flags_parse_in_both_spellings() {
        let TiersCommand::Up(a) = parse(&["up"]) else { panic!("not up") };
        assert_eq!(
            (a.dir.as_path(), a.data.data_dir.as_path(), a.base_port, a.detach),
            (std::path::Path::new(DEFAULT_DIR), std::path::Path::new(DEFAULT_DATA_DIR), DEFAULT_BASE_PORT, false)
        );
        let TiersCommand::Up(a) = parse(&["up", "tiers/three-level", "-dataDir", "/d", "-basePort", "20000", "-detach"]) else {
            panic!("not up")
        };
        assert_eq!(
            (a.dir.as_path(), a.data.data_dir.as_path(), a.base_port, a.detach),
            (std::path::Path::new("tiers/three-level"), std::path::Path::new("/d"), 20000, true)
        );
        let TiersCommand::Down(d) = parse(&["down", "--data-dir", "/x"]) else { panic!("not down") };
        assert_eq!(d.data_dir, PathBuf::from("/x"));
        assert!(matches!(parse(&["status"]), TiersCommand::Status(_)));
    }
}
