#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! Every TTL flag takes SPIRE's duration syntax (`1h`, `90s`) as well as plain seconds (issue 8
//! item 7). SPIRE's `x509 mint -ttl` and `jwt mint -ttl` are Go durations, its `token generate
//! -ttl` and entry `-x509SVIDTTL`/`-jwtSVIDTTL` are integers: cairn takes both forms on each.

use crate::common;

use base64::Engine as _;
use common::{ServerOpts, TestServer, openssl_x509, require};

fn not_after_minus_not_before(pem: &std::path::Path) -> i64 {
    let dates = openssl_x509(pem, &["-dates"]);
    let field = |name: &str| {
        let v = dates.lines().find_map(|l| l.strip_prefix(name)).unwrap();
        let out = std::process::Command::new("date").args(["-u", "-d", v, "+%s"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().parse::<i64>().unwrap()
    };
    field("notAfter=") - field("notBefore=")
}

#[test]
fn ttl_flags_accept_durations_and_seconds() {
    require("openssl");
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &ServerOpts::default());

    // x509 mint -ttl 90s: the SVID lives 90 s (plus the server's notBefore back-dating, if any).
    for (flag, want) in [("90s", 90), ("120", 120)] {
        let out = dir.path().join(format!("x509-{flag}"));
        server.cli_ok(&["x509", "mint", "-spiffeID", "spiffe://example.org/ttl", "-ttl", flag, "-write", out.to_str().unwrap()]);
        let life = not_after_minus_not_before(&out.join("svid.pem"));
        assert!((want..=want + 60).contains(&life), "x509 mint -ttl {flag}: lifetime {life}s");
    }

    // jwt mint -ttl: exp - iat is the TTL.
    for (flag, want) in [("90s", 90), ("1m", 60), ("45", 45)] {
        let token = server.cli_ok(&["jwt", "mint", "-spiffeID", "spiffe://example.org/ttl", "-audience", "a", "-ttl", flag]);
        let claims = token.trim().split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        let life = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
        assert_eq!(life, want, "jwt mint -ttl {flag}");
    }

    // token generate -ttl 1h: the token is accepted and the server reports an expiry ~1h away.
    let out = server.cli_ok(&["token", "generate", "-ttl", "1h"]);
    assert!(out.starts_with("Token: "), "{out}");
    let out = server.cli_ok(&["token", "generate", "-ttl", "600"]);
    assert!(out.starts_with("Token: "), "{out}");

    // Entry TTLs: durations on create, seconds and durations on update.
    let created = server.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/node",
        "-spiffeID",
        "spiffe://example.org/ttl-entry",
        "-selector",
        "unix:uid:4242",
        "-x509SVIDTTL",
        "1h",
        "-jwtSVIDTTL",
        "90s",
        "-output",
        "json",
    ]);
    let show = server.cli_ok(&["entry", "show", "-spiffeID", "spiffe://example.org/ttl-entry", "-output", "json"]);
    assert!(show.contains("\"x509_svid_ttl\": 3600") || show.contains("\"x509_svid_ttl\":3600"), "{created}\n{show}");
    assert!(show.contains("\"jwt_svid_ttl\": 90") || show.contains("\"jwt_svid_ttl\":90"), "{show}");

    // A bad value names the flag and the value.
    let out = server.cli(&["jwt", "mint", "-spiffeID", "spiffe://example.org/ttl", "-audience", "a", "-ttl", "1d"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--ttl") && err.contains("1d"), "{err}");
}
