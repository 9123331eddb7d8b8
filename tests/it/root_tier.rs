#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! End-to-end tests of `cairn server` as a root tier: the real binary, checked with openssl
//! and PyJWT rather than with cairn's own parsers.

use crate::common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn mint_x509(s: &TestServer, id: &str, extra: &[&str], dir: &std::path::Path) {
    let mut args = vec!["x509", "mint", "-spiffeID", id, "-write"];
    let d = dir.display().to_string();
    args.push(&d);
    args.extend_from_slice(extra);
    s.cli_ok(&args);
}

#[test]
fn x509_svids_and_ca_verify_with_openssl_and_match_the_profile() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(tmp.path(), &ServerOpts::default());
    let bundle = tmp.path().join("bundle.pem");
    std::fs::write(&bundle, s.cli_ok(&["bundle", "show", "-format", "pem"])).unwrap();
    let out = tmp.path().join("svid");
    mint_x509(&s, "spiffe://example.org/ns/prod/web", &["-dns", "web.example.org"], &out);
    let svid = out.join("svid.pem");

    for purpose in ["sslclient", "sslserver"] {
        let (ok, text) =
            run(Command::new("openssl").args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"]).arg(&bundle).arg(&svid));
        assert!(ok && text.contains(": OK"), "openssl verify ({purpose}) failed: {text}");
    }
    // Leaf profile, read by openssl.
    let ext = openssl_x509(
        &svid,
        &["-ext", "subjectAltName,basicConstraints,keyUsage,extendedKeyUsage,subjectKeyIdentifier,authorityKeyIdentifier"],
    );
    assert!(ext.contains("URI:spiffe://example.org/ns/prod/web"), "{ext}");
    assert_eq!(ext.matches("URI:").count(), 1, "exactly one URI SAN: {ext}");
    assert!(ext.contains("DNS:web.example.org"), "{ext}");
    assert!(ext.contains("CA:FALSE"), "{ext}");
    assert!(ext.contains("X509v3 Key Usage: critical") && ext.contains("Digital Signature"), "{ext}");
    assert!(!ext.contains("Certificate Sign") && !ext.contains("CRL Sign"), "{ext}");
    assert!(ext.contains("TLS Web Server Authentication") && ext.contains("TLS Web Client Authentication"), "{ext}");
    assert!(ext.contains("Subject Key Identifier") && ext.contains("Authority Key Identifier"), "{ext}");
    // The leaf's AKI is the CA's SKI.
    let ca_ext = openssl_x509(&bundle, &["-ext", "subjectAltName,basicConstraints,keyUsage,subjectKeyIdentifier"]);
    let ski = ca_ext.lines().skip_while(|l| !l.contains("Subject Key Identifier")).nth(1).unwrap().trim().to_owned();
    assert!(ext.contains(&ski), "leaf AKI should be the CA SKI {ski}: {ext}");
    // CA profile.
    assert!(ca_ext.contains("CA:TRUE"), "{ca_ext}");
    assert!(ca_ext.contains("Certificate Sign") && ca_ext.contains("CRL Sign") && !ca_ext.contains("Digital Signature"), "{ca_ext}");
    assert!(ca_ext.contains("URI:spiffe://example.org"), "{ca_ext}");
    // The private key matches the certificate and is private on disk.
    let (_, cert_pub) = run(Command::new("openssl").args(["x509", "-noout", "-pubkey", "-in"]).arg(&svid));
    let (_, key_pub) = run(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(out.join("key.pem")));
    assert_eq!(cert_pub, key_pub);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(out.join("key.pem")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(tmp.path().join("keys.json")).unwrap().permissions().mode() & 0o777, 0o600);
    // A wrong root does not verify it.
    let other = tempfile::tempdir().unwrap();
    let s2 = TestServer::start(other.path(), &ServerOpts::default());
    let other_bundle = other.path().join("bundle.pem");
    std::fs::write(&other_bundle, s2.cli_ok(&["bundle", "show"])).unwrap();
    let (ok, _) = run(Command::new("openssl").args(["verify", "-CAfile"]).arg(&other_bundle).arg(&svid));
    assert!(!ok, "an SVID must not verify against another server's root");
}

pub(crate) const PYJWT_CHECK: &str = r#"
import json, sys, jwt
from jwt.algorithms import ECAlgorithm
token, bundle_path, aud, want_sub = sys.argv[1:5]
doc = json.load(open(bundle_path))
header = jwt.get_unverified_header(token)
assert header["typ"] == "JWT", header
keys = [k for k in doc["keys"] if k.get("use") == "jwt-svid" and k.get("kid") == header["kid"]]
assert len(keys) == 1, ("kid not in bundle", header, doc)
key = ECAlgorithm.from_jwk(json.dumps(keys[0]))
claims = jwt.decode(token, key, algorithms=[header["alg"]], audience=aud)
assert claims["sub"] == want_sub, claims
try:
    jwt.decode(token, key, algorithms=[header["alg"]], audience="someone-else")
    raise SystemExit("wrong audience accepted")
except jwt.InvalidAudienceError:
    pass
print("OK", claims["sub"], header["alg"])
"#;

#[test]
fn jwt_svids_verify_with_pyjwt_against_the_spiffe_bundle() {
    require("python3");
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(
        tmp.path(),
        &ServerOpts { extra_server: "jwt_issuer = \"https://issuer.example.org\"".into(), ..ServerOpts::default() },
    );
    let token = s.cli_ok(&["jwt", "mint", "-spiffeID", "spiffe://example.org/api", "-audience", "db", "-ttl", "120"]).trim().to_owned();
    let bundle = tmp.path().join("bundle.json");
    std::fs::write(&bundle, s.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let (ok, out) =
        run(Command::new("python3").arg("-c").arg(PYJWT_CHECK).arg(&token).arg(&bundle).arg("db").arg("spiffe://example.org/api"));
    assert!(ok && out.contains("OK spiffe://example.org/api ES256"), "PyJWT rejected the JWT-SVID: {out}");
    // A tampered token fails.
    let mut bad = token.clone();
    bad.pop();
    bad.push(if token.ends_with('A') { 'B' } else { 'A' });
    let (ok, _) = run(Command::new("python3").arg("-c").arg(PYJWT_CHECK).arg(&bad).arg(&bundle).arg("db").arg("spiffe://example.org/api"));
    assert!(!ok, "a tampered token must not verify");
    // Minting refuses nonsense.
    let out = s.cli(&["jwt", "mint", "-spiffeID", "spiffe://example.org/api"]);
    assert!(!out.status.success());
    let out = s.cli(&["jwt", "mint", "-spiffeID", "spiffe://other.org/api", "-audience", "x"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("InvalidArgument"), "{out:?}");
}

#[test]
fn restart_with_disk_keys_resumes_the_same_ca() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(tmp.path(), &ServerOpts::default());
    let before = s.cli_ok(&["bundle", "show", "-format", "spiffe"]);
    let before_pem = s.cli_ok(&["bundle", "show"]);
    s.stop();
    s.spawn();
    let after = s.cli_ok(&["bundle", "show", "-format", "spiffe"]);
    assert_eq!(before, after, "bundle (roots, JWT keys, sequence) must not change across a restart with disk keys");
    let bundle = tmp.path().join("bundle.pem");
    std::fs::write(&bundle, before_pem).unwrap();
    let out = tmp.path().join("svid");
    mint_x509(&s, "spiffe://example.org/after-restart", &[], &out);
    let (ok, text) = run(Command::new("openssl").args(["verify", "-CAfile"]).arg(&bundle).arg(out.join("svid.pem")));
    assert!(ok, "SVID after restart must verify against the bundle from before: {text}");
}

#[test]
fn restart_with_memory_keys_mints_a_new_ca_and_keeps_the_old_root() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(tmp.path(), &ServerOpts { key_manager: "memory", ..ServerOpts::default() });
    let first = tmp.path().join("first.pem");
    std::fs::write(&first, s.cli_ok(&["bundle", "show"])).unwrap();
    let old_svid = tmp.path().join("old");
    mint_x509(&s, "spiffe://example.org/w", &[], &old_svid);
    s.stop();
    s.spawn();
    let both = tmp.path().join("both.pem");
    std::fs::write(&both, s.cli_ok(&["bundle", "show"])).unwrap();
    let roots = split_pem(&both, tmp.path(), "root");
    assert_eq!(roots.len(), 2, "old root kept beside the new one");
    let first_fp = openssl_x509(&first, &["-fingerprint", "-sha256"]);
    assert!(roots.iter().any(|r| openssl_x509(r, &["-fingerprint", "-sha256"]) == first_fp), "the old root is still in the bundle");
    let new_svid = tmp.path().join("new");
    mint_x509(&s, "spiffe://example.org/w", &[], &new_svid);
    // The new SVID does not chain to the old root alone, but verifies with the bundle; the old
    // SVID still verifies with the bundle too.
    let (ok, _) = run(Command::new("openssl").args(["verify", "-CAfile"]).arg(&first).arg(new_svid.join("svid.pem")));
    assert!(!ok, "new CA expected after a memory-key restart");
    for svid in [old_svid.join("svid.pem"), new_svid.join("svid.pem")] {
        let (ok, text) = run(Command::new("openssl").args(["verify", "-CAfile"]).arg(&both).arg(&svid));
        assert!(ok, "{}: {text}", svid.display());
    }
}

// `rotation_with_a_short_ca_ttl_prepares_then_activates_with_both_roots_in_the_bundle` runs in
// `tests/clock.rs`, on a manual clock instead of 25 s of real time.

#[test]
fn bad_config_is_refused_with_every_key_named() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("bad.conf");
    std::fs::write(
        &conf,
        r#"
server {
    trust_domain = "Bad Domain"
    ca_ttl = "1h"
    default_x509_svid_ttl = "2h"
    bind_port = "http"
}
plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" } }
    KeyManager "vault" {}
}
"#,
    )
    .unwrap();
    let (ok, out) = run(Command::new(CAIRN).args(["server", "validate", "-config"]).arg(&conf));
    assert!(!ok, "{out}");
    for path in
        ["server.trust_domain", "server.bind_port", "plugins.DataStore.sql.plugin_data.connection_string", "plugins.KeyManager.vault"]
    {
        assert!(out.contains(path), "missing {path} in:\n{out}");
    }
    // An SVID TTL longer than the CA's works, as in SPIRE (SVIDs are capped at the CA's expiry).
    assert!(!out.contains("server.default_x509_svid_ttl"), "{out}");
    // run refuses the same file before touching anything.
    let (ok, out) = run(Command::new(CAIRN).args(["server", "run", "-config"]).arg(&conf));
    assert!(!ok && out.contains("server.trust_domain"), "{out}");
    assert!(!tmp.path().join("datastore.sqlite3").exists());
    // A good config validates; --kebab-case spelling works too.
    let good = write_config(tmp.path(), free_port(), &ServerOpts::default());
    let (ok, out) = run(Command::new(CAIRN).args(["server", "validate", "--config"]).arg(&good));
    assert!(ok && out.contains("valid"), "{out}");
}

#[test]
fn entries_crud_and_bad_input_is_refused_without_side_effects() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(tmp.path(), &ServerOpts::default());
    let bad: &[(&[&str], &str)] = &[
        (&["-spiffeID", "spiffe://example.org/a//b", "-parentID", "spiffe://example.org/agent", "-selector", "unix:uid:0"], "SPIFFE ID"),
        (&["-spiffeID", "spiffe://Example.org/a", "-parentID", "spiffe://example.org/agent", "-selector", "unix:uid:0"], "SPIFFE ID"),
        (&["-spiffeID", "spiffe://example.org/a", "-parentID", "spiffe://example.org/agent", "-selector", "unix"], "selector"),
        (&["-spiffeID", "spiffe://example.org/a", "-parentID", "spiffe://example.org/agent", "-selector", ":uid"], "selector"),
        (&["-spiffeID", "spiffe://example.org/a", "-parentID", "spiffe://example.org/agent"], "selector"),
        (&["-spiffeID", "spiffe://example.org/a", "-selector", "unix:uid:0"], "parent"),
        (&["-spiffeID", "spiffe://other.org/a", "-parentID", "spiffe://example.org/agent", "-selector", "unix:uid:0"], "trust domain"),
        (
            &["-spiffeID", "spiffe://example.org/spire/agent/x", "-parentID", "spiffe://example.org/agent", "-selector", "unix:uid:0"],
            "reserved",
        ),
        (
            &[
                "-spiffeID",
                "spiffe://example.org/a",
                "-parentID",
                "spiffe://example.org/agent",
                "-selector",
                "unix:uid:0",
                "-dns",
                "bad_name!",
            ],
            "DNS",
        ),
        (
            &[
                "-spiffeID",
                "spiffe://example.org/a",
                "-parentID",
                "spiffe://example.org/agent",
                "-selector",
                "unix:uid:0",
                "-federatesWith",
                "nowhere.org",
            ],
            "federated bundle",
        ),
    ];
    for (args, want) in bad {
        let mut a = vec!["entry", "create"];
        a.extend_from_slice(args);
        let out = s.cli(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.to_lowercase().contains(&want.to_lowercase()), "{args:?}: error does not mention {want}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(s.cli_ok(&["entry", "count"]).starts_with("0 "));
    // The good one, in SPIRE spelling and in kebab case.
    let out = s.cli_ok(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/web",
        "-parentID",
        "spiffe://example.org/spire/agent/join_token/t",
        "-selector",
        "unix:uid:1000",
        "-x509SVIDTTL",
        "600",
        "-downstream",
    ]);
    assert!(
        out.contains("spiffe://example.org/web")
            && out.contains("Downstream              : true")
            && out.contains("X509-SVID TTL           : 600"),
        "{out}"
    );
    let id = out.lines().find_map(|l| l.strip_prefix("Entry ID").and_then(|r| r.split_once(": ")).map(|(_, v)| v)).unwrap().to_owned();
    let dup = s.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/spire/agent/join_token/t",
        "--selector",
        "unix:uid:1000",
    ]);
    assert!(!dup.status.success() && String::from_utf8_lossy(&dup.stderr).contains("AlreadyExists"), "{dup:?}");
    let shown = s.cli_ok(&["entry", "show", "-spiffeID", "spiffe://example.org/web", "-output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["entries"][0]["id"], id.as_str());
    assert_eq!(v["entries"][0]["selectors"][0]["value"], "uid:1000");
    // SPIRE's update replaces the entry: what is not given (here -downstream) is cleared, and
    // the fields `entry create` needs are needed here too.
    let partial = s.cli(&["entry", "update", "-entryID", &id, "-x509SVIDTTL", "900"]);
    assert!(String::from_utf8_lossy(&partial.stderr).contains("at least one selector is required"), "{partial:?}");
    let upd = s.cli_ok(&[
        "entry",
        "update",
        "-entryID",
        &id,
        "-spiffeID",
        "spiffe://example.org/web",
        "-parentID",
        "spiffe://example.org/spire/agent/join_token/t",
        "-selector",
        "unix:uid:1000",
        "-x509SVIDTTL",
        "900",
    ]);
    assert!(
        upd.contains("Revision                : 1") && upd.contains("X509-SVID TTL           : 900") && upd.contains("unix:uid:1000"),
        "{upd}"
    );
    assert!(!upd.contains("Downstream"), "update kept a flag it was not given:\n{upd}");
    s.cli_ok(&["entry", "delete", "-entryID", &id]);
    let gone = s.cli(&["entry", "delete", "-entryID", &id]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"), "{gone:?}");
    assert!(s.cli_ok(&["entry", "count"]).starts_with("0 "));
}

#[test]
fn join_tokens_and_agents_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(tmp.path(), &ServerOpts::default());
    let out = s.cli_ok(&["token", "generate", "-spiffeID", "spiffe://example.org/nodes/downstream", "-ttl", "600"]);
    let token = out.trim().strip_prefix("Token: ").unwrap().to_owned();
    assert_eq!(token.len(), 36, "UUIDv4 token: {out}");
    // The alias entry: parented to the agent-to-be, selector spiffe_id:<agent id>.
    let shown = s.cli_ok(&["entry", "show", "-spiffeID", "spiffe://example.org/nodes/downstream"]);
    assert!(shown.contains(&format!("spiffe://example.org/spire/agent/join_token/{token}")), "{shown}");
    assert!(shown.contains(&format!("spiffe_id:spiffe://example.org/spire/agent/join_token/{token}")), "{shown}");
    let bad = s.cli(&["token", "generate", "-spiffeID", "spiffe://example.org/spire/x"]);
    assert!(!bad.status.success(), "reserved alias must be refused");
    let bad = s.cli(&["token", "generate", "-ttl", "0"]);
    assert!(!bad.status.success());
    assert!(s.cli_ok(&["agent", "count"]).starts_with("0 "));
    assert_eq!(s.cli_ok(&["agent", "list"]), "No attested agents found\n", "SPIRE's words for none");
    let none: serde_json::Value = serde_json::from_str(&s.cli_ok(&["agent", "list", "-output", "json"])).unwrap();
    assert_eq!(none, serde_json::json!({"agents": [], "next_page_token": ""}));
    let missing = s.cli(&["agent", "show", "-spiffeID", "spiffe://example.org/spire/agent/join_token/nope"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"), "{missing:?}");
    let wrong = s.cli(&["agent", "ban", "-spiffeID", "spiffe://example.org/not-an-agent"]);
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("InvalidArgument"), "{wrong:?}");
    // SPIRE's -instance: the instance name fills %i of $SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE.
    let dir = s.socket.parent().unwrap().display().to_string();
    let name = s.socket.file_name().unwrap().to_string_lossy().into_owned();
    let via = |envs: &[(&str, String)], args: &[&str]| {
        let mut c = Command::new(CAIRN);
        c.args(["server", "agent", "count"]).args(args).env_remove("SPIRE_SERVER_PRIVATE_SOCKET");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let o = via(&[("SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE", format!("{dir}/%i"))], &["-instance", &name]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("0 "), "{o:?}");
    let o = via(&[], &["-instance", &name]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("you must define SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE"), "{o:?}");
    let o = via(&[("SPIRE_SERVER_PRIVATE_SOCKET", s.socket.display().to_string())], &[]);
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn federated_bundles_set_list_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let a = TestServer::start(tmp.path(), &ServerOpts::default());
    // A bundle of another trust domain, as an operator would paste it.
    let other_dir = tempfile::tempdir().unwrap();
    let b = TestServer::start(other_dir.path(), &ServerOpts::default());
    let foreign = other_dir.path().join("foreign.json");
    std::fs::write(&foreign, b.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let set: serde_json::Value = serde_json::from_str(&a.cli_ok(&[
        "bundle",
        "set",
        "-id",
        "spiffe://partner.org",
        "-path",
        foreign.to_str().unwrap(),
        "-format",
        "spiffe",
        "-output",
        "json",
    ]))
    .unwrap();
    assert_eq!(set["results"][0]["status"]["code"], 0, "{set}");
    assert_eq!(set["results"][0]["bundle"]["trust_domain"], "partner.org", "{set}");
    assert!(a.cli_ok(&["bundle", "count"]).starts_with("2 "));
    assert_eq!(a.cli_ok(&["bundle", "count", "-output", "json"]).trim(), r#"{"count":2}"#);
    let listed = a.cli_ok(&["bundle", "list", "-format", "spiffe"]);
    assert!(listed.contains("partner.org") && listed.contains("\"x509-svid\""), "{listed}");
    // SPIRE's `-output json`: the list reply, and one bundle with `-id`.
    let listed: serde_json::Value = serde_json::from_str(&a.cli_ok(&["bundle", "list", "-output", "json"])).unwrap();
    assert_eq!(listed["bundles"][0]["trust_domain"], "partner.org", "{listed}");
    assert_eq!(listed["bundles"][0]["x509_authorities"][0]["tainted"], false, "{listed}");
    let one: serde_json::Value = serde_json::from_str(&a.cli_ok(&["bundle", "list", "-id", "partner.org", "-output", "json"])).unwrap();
    assert_eq!(one, listed["bundles"][0]);
    let garbage = tmp.path().join("garbage.json");
    std::fs::write(&garbage, "{\"keys\": [], \"keys\": []}").unwrap();
    let bad = a.cli(&["bundle", "set", "-id", "partner2.org", "-path", garbage.to_str().unwrap(), "-format", "spiffe"]);
    assert!(!bad.status.success(), "duplicate keys must be refused");
    let own = a.cli(&["bundle", "set", "-id", "example.org", "-path", foreign.to_str().unwrap(), "-format", "spiffe"]);
    assert!(!own.status.success(), "own trust domain cannot be overwritten as a federated bundle");
    // SPIRE's delete modes: restrict (the default) refuses while an entry federates with the
    // bundle; dissociate takes the trust domain out of the entry; delete removes the entry.
    let mk = |path: &str| {
        let out = a.cli_ok(&[
            "entry",
            "create",
            "-spiffeID",
            &format!("spiffe://example.org/{path}"),
            "-parentID",
            "spiffe://example.org/node",
            "-selector",
            "unix:uid:7",
            "-federatesWith",
            "spiffe://partner.org",
        ]);
        out.lines().find_map(|l| l.strip_prefix("Entry ID").and_then(|r| r.split_once(": ")).map(|(_, v)| v.to_owned())).unwrap()
    };
    let kept = mk("fed-kept");
    let refused = a.cli(&["bundle", "delete", "-id", "partner.org"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("FailedPrecondition") && err.contains("federated with 1 registration entries"),
        "{err}"
    );
    a.cli_ok(&["bundle", "delete", "-id", "partner.org", "-mode", "dissociate"]);
    let shown = a.cli_ok(&["entry", "show", "-entryID", &kept]);
    assert!(!shown.contains("FederatesWith"), "dissociate left the federation:\n{shown}");
    a.cli_ok(&["bundle", "set", "-id", "spiffe://partner.org", "-path", foreign.to_str().unwrap(), "-format", "spiffe"]);
    let gone = mk("fed-gone");
    let del: serde_json::Value =
        serde_json::from_str(&a.cli_ok(&["bundle", "delete", "-id", "partner.org", "-mode", "delete", "-output", "json"])).unwrap();
    assert_eq!(del, serde_json::json!({"results": [{"status": {"code": 0, "message": "OK"}, "trust_domain": "partner.org"}]}));
    assert!(!a.cli(&["entry", "show", "-entryID", &gone]).status.success(), "mode delete kept the entry");
    assert!(a.cli(&["entry", "show", "-entryID", &kept]).status.success(), "mode delete removed an unrelated entry");
    assert!(a.cli_ok(&["bundle", "count"]).starts_with("1 "));
}

#[test]
fn health_endpoints_and_spire_server_link() {
    let tmp = tempfile::tempdir().unwrap();
    let hp = free_port();
    let s = TestServer::start(tmp.path(), &ServerOpts { health_port: Some(hp), ..ServerOpts::default() });
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", hp)).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        r
    };
    assert!(get("/live").starts_with("HTTP/1.1 200"));
    assert!(get("/ready").starts_with("HTTP/1.1 200"));
    assert!(get("/nope").starts_with("HTTP/1.1 404"));
    let link = tmp.path().join("spire-server");
    std::os::unix::fs::symlink(CAIRN, &link).unwrap();
    let (ok, out) = run(Command::new(&link).args(["healthcheck", "-socketPath"]).arg(&s.socket));
    assert!(ok && out.contains("Server is healthy."), "{out}");
    let (ok, out) = run(Command::new(CAIRN).args(["server", "healthcheck", "-socketPath"]).arg(tmp.path().join("nope.sock")));
    assert!(!ok && out.contains("unhealthy"), "{out}");
}

#[test]
fn cli_output_into_a_closed_pipe_ends_quietly() {
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(tmp.path(), &ServerOpts::default());
    let sock = s.socket.display().to_string();
    let config = s.config.display().to_string();
    // As `cairn ... | head -c0`: the reader is gone before the command writes anything.
    for args in [
        vec!["server", "bundle", "show", "-socketPath", &sock],
        vec!["server", "entry", "show", "-socketPath", &sock],
        vec!["server", "validate", "-config", &config],
    ] {
        let mut child = Command::new(CAIRN).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?} panicked on a closed stdout: {stderr}");
        assert!(stderr.is_empty(), "{args:?} complained about the closed stdout: {stderr}");
        assert!(out.status.success(), "{args:?} exited with {}: {stderr}", out.status);
    }
}

/// `disable_jwt_svids = true` (SPIRE 1.14+): no JWT key in the bundle, `jwt mint` refused with
/// SPIRE's Unimplemented message, the server healthy, X.509 unaffected; and SPIRE's warning
/// for SVID TTLs over ca_ttl/6 is logged while the server starts anyway.
#[test]
fn disable_jwt_svids_mints_no_jwt_and_publishes_no_key() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let opts = ServerOpts {
        extra_server: "ca_ttl = \"20m\"\n default_x509_svid_ttl = \"10m\"\n disable_jwt_svids = true".into(),
        ..ServerOpts::default()
    };
    let s = TestServer::start(tmp.path(), &opts);
    let out = s.cli(&["jwt", "mint", "-spiffeID", "spiffe://example.org/w", "-audience", "db"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("JWT functionality is disabled"), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&s.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let keys = doc["keys"].as_array().unwrap();
    assert!(keys.iter().all(|k| k["use"] != "jwt-svid"), "{doc}");
    assert!(keys.iter().any(|k| k["use"] == "x509-svid"), "{doc}");
    let bundle = tmp.path().join("bundle.pem");
    std::fs::write(&bundle, s.cli_ok(&["bundle", "show"])).unwrap();
    let dir = tmp.path().join("svid");
    mint_x509(&s, "spiffe://example.org/w", &[], &dir);
    let (ok, text) = run(Command::new("openssl").args(["verify", "-x509_strict", "-CAfile"]).arg(&bundle).arg(dir.join("svid.pem")));
    assert!(ok, "{text}");
    // A workload asking its agent gets the server's answer inside the agent's, as from
    // SPIRE's agent (SPIRE's nested-rotation suite greps for exactly this).
    let node = "spiffe://example.org/nodes/n1";
    let t = common::agent::token(&s, node, "600");
    s.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        node,
        "-spiffeID",
        "spiffe://example.org/w",
        "-selector",
        &format!("unix:uid:{}", common::agent::my_uid()),
    ]);
    let adir = tmp.path().join("agent");
    std::fs::create_dir(&adir).unwrap();
    let agent = common::agent::TestAgent::start(
        &adir,
        common::agent::agent_config(&adir, &s, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t)),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let out = agent.api(&["fetch", "jwt", "-audience", "db"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a JWT-SVID came out of a tier with JWT disabled: {text}");
        if !text.contains("no identity issued") && !text.contains("PermissionDenied") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(text.contains("code = Unimplemented desc = JWT functionality is disabled"), "{text}");
    let log = s.log();
    assert!(log.contains("JWT-SVID profile is disabled"), "{log}");
    assert!(
        log.contains("default_x509_svid_ttl is too high for the configured ca_ttl value.")
            && log.contains("Please set default_x509_svid_ttl to 3m20s or less, or the ca_ttl to 1h or more"),
        "{log}"
    );
}

/// `agent list|count` filters and `agent purge`, as SPIRE's CLI spells and prints them, on two
/// real agents (one banned).
#[test]
fn agent_list_and_count_filters_and_purge() {
    use common::agent::{TestAgent, agent_config, token};
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(tmp.path(), &ServerOpts::default());
    let mut ids = Vec::new();
    let mut agents = Vec::new();
    for n in ["a1", "a2"] {
        let dir = tmp.path().join(n);
        std::fs::create_dir_all(&dir).unwrap();
        let t = token(&s, &format!("spiffe://example.org/nodes/{n}"), "600");
        agents.push(TestAgent::start(&dir, agent_config(&dir, &s, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t))));
        ids.push(format!("spiffe://example.org/spire/agent/join_token/{t}"));
    }
    s.cli_ok(&["agent", "ban", "-spiffeID", &ids[0]]);
    let count = |args: &[&str]| {
        let mut a = vec!["agent", "count"];
        a.extend_from_slice(args);
        s.cli_ok(&a).trim().to_owned()
    };
    assert_eq!(count(&[]), "2 attested agents");
    assert_eq!(count(&["-attestationType", "join_token"]), "2 attested agents");
    assert_eq!(count(&["-attestationType", "x509pop"]), "0 attested agents");
    assert_eq!(count(&["-banned", "true"]), "1 attested agent");
    assert_eq!(count(&["-banned", "false"]), "1 attested agent");
    assert_eq!(count(&["-banned", "whatever"]), "2 attested agents", "SPIRE: any other value means all");
    assert_eq!(count(&["-canReattest", "true"]), "0 attested agents", "join-token agents cannot re-attest");
    assert_eq!(count(&["-expiresBefore", "2099-01-01 00:00:00 +0000 UTC"]), "2 attested agents");
    assert_eq!(count(&["-expiresBefore", "2000-01-01 00:00:00 +0000 UTC"]), "0 attested agents");
    let bad = s.cli(&["agent", "list", "-expiresBefore", "tomorrow"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("date is not valid"), "{bad:?}");
    let banned = s.cli_ok(&["agent", "list", "-banned", "true"]);
    assert!(banned.starts_with("Found 1 attested agent:") && banned.contains(&ids[0]) && !banned.contains(&ids[1]), "{banned}");
    let json: serde_json::Value = serde_json::from_str(&s.cli_ok(&["agent", "list", "-banned", "false", "-output", "json"])).unwrap();
    assert_eq!(json["agents"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["agents"][0]["id"]["path"], ids[1].strip_prefix("spiffe://example.org").unwrap(), "{json}");
    // Join-token agents cannot re-attest, so purge (which only removes those that can) leaves them.
    assert_eq!(s.cli_ok(&["agent", "purge", "-dryRun"]), "No agents to purge.\n");
    assert_eq!(s.cli_ok(&["agent", "purge", "-expiredFor", "1s", "-output", "json"]).trim(), r#"{"expired_agents":[]}"#);
    assert_eq!(count(&[]), "2 attested agents");
    drop(agents);

    // Evicting a join-token agent removes the alias entry attestation made for it (SPIRE's
    // cascade), and only that: an operator's entry under the agent stays.
    let alias = |id: &str| s.cli_ok(&["entry", "count", "-parentID", id, "-selector", &format!("spiffe_id:{id}")]).trim().to_owned();
    assert_eq!(alias(&ids[1]), "1 registration entry");
    s.cli_ok(&["entry", "create", "-parentID", &ids[1], "-spiffeID", "spiffe://example.org/kept", "-selector", "unix:uid:7"]);
    s.cli_ok(&["agent", "evict", "-spiffeID", &ids[1]]);
    assert_eq!(alias(&ids[1]), "0 registration entries");
    assert_eq!(s.cli_ok(&["entry", "count", "-parentID", &ids[1]]).trim(), "1 registration entry");
    assert_eq!(alias(&ids[0]), "1 registration entry", "the other agent's alias stays");
}

/// Entry import and export at scale: 2,000 entries created from SPIRE's registration JSON on
/// stdin, exported with `entry show -output json`, deleted with `entry delete -file`, and
/// re-imported from the export: the same entries come back (IDs included).
#[test]
fn thousands_of_entries_round_trip_through_data_files() {
    use std::io::Write as _;
    const N: usize = 2_000;
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(tmp.path(), &ServerOpts::default());
    let entries: Vec<serde_json::Value> = (0..N)
        .map(|i| {
            serde_json::json!({
                "spiffe_id": format!("spiffe://example.org/bulk/{i}"),
                "parent_id": "spiffe://example.org/node",
                "selectors": [{"type": "unix", "value": format!("uid:{i}")}],
                "x509_svid_ttl": 300 + i,
                "dns_names": if i % 2 == 0 { vec![format!("w{i}.example.org")] } else { vec![] },
                "hint": if i % 3 == 0 { "three" } else { "" },
            })
        })
        .collect();
    let data = serde_json::json!({ "entries": entries }).to_string();
    let stdin_cli = |args: &[&str], input: &str| {
        let mut a: Vec<&str> = vec!["server"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-socketPath", s.socket.to_str().unwrap()]);
        let mut child = Command::new(CAIRN)
            .args(&a)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let created = stdin_cli(&["entry", "create", "-data", "-", "-output", "json"], &data);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["results"].as_array().unwrap().len(), N);
    assert!(created["results"].as_array().unwrap().iter().all(|r| r["status"]["code"] == 0), "a create failed");
    assert_eq!(s.cli_ok(&["entry", "count"]).trim(), format!("{N} registration entries"));
    assert_eq!(s.cli_ok(&["entry", "count", "-hint", "three"]).trim(), format!("{} registration entries", N.div_ceil(3)));

    let export = s.cli_ok(&["entry", "show", "-output", "json"]);
    let exported: serde_json::Value = serde_json::from_str(&export).unwrap();
    let list = exported["entries"].as_array().unwrap();
    assert_eq!(list.len(), N);
    let ids: Vec<&str> = list.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let file = tmp.path().join("ids.json");
    std::fs::write(&file, serde_json::json!({ "ids": ids }).to_string()).unwrap();
    let deleted = s.cli_ok(&["entry", "delete", "-file", file.to_str().unwrap()]);
    assert!(deleted.ends_with(&format!("Deleted {N} entries successfully")), "{}", &deleted[deleted.len().saturating_sub(200)..]);
    assert_eq!(s.cli_ok(&["entry", "count"]).trim(), "0 registration entries");

    let export_file = tmp.path().join("export.json");
    std::fs::write(&export_file, &export).unwrap();
    s.cli_ok(&["entry", "create", "-data", export_file.to_str().unwrap()]);
    let again: serde_json::Value = serde_json::from_str(&s.cli_ok(&["entry", "show", "-output", "json"])).unwrap();
    // Same entries, same IDs; only what the server stamps (creation time) may differ.
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        for e in v["entries"].as_array_mut().unwrap() {
            e.as_object_mut().unwrap().remove("created_at");
        }
        v
    };
    assert_eq!(strip(&again), strip(&exported), "the re-imported entries differ from the export");
    // Importing the same file again: every entry already exists, reported per entry.
    let dup = s.cli(&["entry", "create", "-data", export_file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&dup.stderr);
    assert!(
        !dup.status.success() && err.contains("AlreadyExists") && err.contains("failed to create one or more entries"),
        "{}",
        &err[..err.len().min(500)]
    );
}
