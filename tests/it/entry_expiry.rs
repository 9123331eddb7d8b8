#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! Registration entry expiry (`-entryExpiry`) end to end: an expired entry is served to no
//! workload, an SVID never outlives its entry, and expired entries are pruned.

use crate::common;

use base64::Engine as _;
use common::agent::*;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn now() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

fn entry_id(create_output: &str) -> String {
    create_output.lines().find_map(|l| l.strip_prefix("Entry ID")).unwrap().trim_start_matches([' ', ':']).trim().to_owned()
}

fn jwt_exp(token: &str) -> i64 {
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["exp"].as_i64().unwrap()
}

#[test]
fn expired_entries_are_not_served_svids_stop_at_the_entry_expiry_and_expired_entries_are_pruned() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let sdir = tmp.path().join("server");
    std::fs::create_dir(&sdir).unwrap();
    // SPIRE's 5-minute prune cadence: nothing is pruned while the first half of the test runs,
    // so what keeps the expired entry from workloads is the expiry check itself.
    let mut s = TestServer::start(&sdir, &ServerOpts::default());
    let t = token(&s, "spiffe://example.org/node1", "600");
    let uid = format!("unix:uid:{}", my_uid());
    let expired = s.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/node1",
        "-spiffeID",
        "spiffe://example.org/expired",
        "-selector",
        &uid,
        "-entryExpiry",
        "1000",
    ]);
    let expired_id = entry_id(&expired);
    let expiry = now() + 120;
    s.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/node1",
        "-spiffeID",
        "spiffe://example.org/short-lived",
        "-selector",
        &uid,
        "-entryExpiry",
        &expiry.to_string(),
        "-x509SVIDTTL",
        "3600",
        "-jwtSVIDTTL",
        "3600",
    ]);

    let adir = tmp.path().join("agent");
    std::fs::create_dir(&adir).unwrap();
    let cfg = agent_config(&adir, &s, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t));
    let a = TestAgent::start(&adir, cfg);
    let out_dir = tmp.path().join("svids");
    let deadline = Instant::now() + Duration::from_secs(30);
    let listing = loop {
        let out = a.api(&["fetch", "x509", "-write", out_dir.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("spiffe://example.org/short-lived") {
            break text;
        }
        assert!(Instant::now() < deadline, "no SVID for the short-lived entry:\n{text}\nagent log:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(!listing.contains("spiffe://example.org/expired"), "an entry that expired in 1970 was served:\n{listing}");
    assert!(listing.contains("Received 1 svid"), "{listing}");

    // notAfter, read by openssl: within the entry's life (not the 1h TTL), and not empty.
    let svid = out_dir.join("svid.0.pem");
    assert!(openssl_x509(&svid, &["-subject", "-ext", "subjectAltName"]).contains("spiffe://example.org/short-lived"));
    let end = openssl_x509(&svid, &["-enddate"]);
    let left = expiry - now();
    let (beyond, _) = run(Command::new("openssl").args(["x509", "-noout", "-checkend", &(left + 1).to_string(), "-in"]).arg(&svid));
    assert!(!beyond, "X509-SVID {end} outlives the entry expiry {expiry} (TTL 3600)");
    let (alive, _) = run(Command::new("openssl").args(["x509", "-noout", "-checkend", &(left - 30).to_string(), "-in"]).arg(&svid));
    assert!(alive, "X509-SVID {end} ends well before the entry expiry {expiry}");

    // The JWT-SVID minted through the agent (NewJWTSVID, bound to the entry) stops there too.
    let out = a.api(&["fetch", "jwt", "-audience", "db"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && text.contains("token(spiffe://example.org/short-lived)"), "{text}");
    let token = text.lines().skip_while(|l| !l.starts_with("token(")).nth(1).unwrap().trim();
    let exp = jwt_exp(token);
    assert!(exp <= expiry && exp > now() + 60, "JWT-SVID exp {exp} vs entry expiry {expiry} (TTL 3600)");

    // Not pruned yet (5-minute cadence), yet refused above.
    assert!(s.cli_ok(&["entry", "show", "-entryID", &expired_id]).contains("spiffe://example.org/expired"));

    // With a short prune interval the server deletes expired entries: the one left from before
    // the restart, and one that expires while it runs.
    s.stop();
    let opts = ServerOpts { extra_server: "experimental { entry_prune_interval = \"1s\" }".into(), ..ServerOpts::default() };
    write_config(&sdir, s.port, &opts);
    s.spawn();
    let soon = now() + 2;
    let later = entry_id(&s.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/node1",
        "-spiffeID",
        "spiffe://example.org/expires-soon",
        "-selector",
        "unix:uid:424242",
        "-entryExpiry",
        &soon.to_string(),
    ]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let gone = |id: &str| !s.cli(&["entry", "show", "-entryID", id]).status.success();
        if gone(&expired_id) && gone(&later) {
            break;
        }
        assert!(Instant::now() < deadline, "expired entries were not pruned:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(s.log().contains("pruned an expired registration entry"), "{}", s.log());
    // The entry that does not expire yet is still there.
    assert!(s.cli_ok(&["entry", "show", "-spiffeID", "spiffe://example.org/short-lived"]).contains("short-lived"));
}
