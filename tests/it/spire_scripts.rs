#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! SPIRE's integration suites run as SPIRE runs them: their own step scripts, unmodified,
//! executed in order by `tests/spire-harness/run-suite` (SPIRE's test-one.sh, minus its Go
//! toolchain set-up), with `docker` being `tests/spire-harness/docker`: each compose service is
//! a "container" made of Linux namespaces around the cairn binary at
//! `/opt/spire/bin/spire-server` / `spire-agent`. Every `grep`, `jq` and exit code in the
//! scripts is SPIRE's own check; a suite passes only if every step exits 0.
//!
//! The harness needs root (namespaces and bind mounts), util-linux (`unshare`, `setpriv`),
//! iproute2, jq, python3 with PyYAML: `scripts/install-test-deps.sh` installs them.

use crate::common::CAIRN;
use std::path::PathBuf;
use std::process::Command;

fn harness() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/spire-harness")
}

/// Runs one suite of `tests/fixtures/spire-suites/suites` and fails with its whole output if
/// any step fails.
fn replay(suite: &str) {
    for (tool, package) in [("unshare", "util-linux"), ("setpriv", "util-linux"), ("ip", "iproute2"), ("jq", "jq")] {
        assert!(
            Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().unwrap().status.success(),
            "the SPIRE suite harness needs {tool}: install {package} (scripts/install-test-deps.sh does)"
        );
    }
    // A hung suite fails the test rather than the whole run (SPIRE's suites bound each wait
    // themselves; this bounds the rest).
    let out = Command::new("timeout")
        .args(["--kill-after=30", "1200"])
        .arg(harness().join("run-suite"))
        .arg(suite)
        .env("CAIRN_BIN", CAIRN)
        .env("TERM", "dumb")
        .output()
        .unwrap_or_else(|e| panic!("run-suite {suite}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "SPIRE suite {suite} failed against cairn:\n{text}");
    assert!(text.contains(&format!("\"{suite}\" test suite succeeded.")), "no success line:\n{text}");
}

#[test]
fn spire_server_cli_suite() {
    replay("spire-server-cli");
}

#[test]
fn agent_cli_suite() {
    replay("agent-cli");
}

#[test]
fn sync_authorized_entries_suite() {
    replay("sync-authorized-entries");
}

#[test]
fn debug_endpoints_suite() {
    replay("debug-endpoints");
}

#[test]
fn entries_suite() {
    replay("entries");
}

#[test]
fn fetch_x509_svids_suite() {
    replay("fetch-x509-svids");
}

#[test]
fn fetch_jwt_svids_suite() {
    replay("fetch-jwt-svids");
}

#[test]
fn admin_endpoints_suite() {
    replay("admin-endpoints");
}
