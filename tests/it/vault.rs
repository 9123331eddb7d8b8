#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! UpstreamAuthority "vault" against a real OpenBao (issue 11), replaying SPIRE's
//! `upstream-authority-vault` suite: OpenBao is set up with the suite's own commands (a root
//! on `pki`, an intermediate on `pki_int`, the `spire` policy), cairn is configured as the
//! suite configures SPIRE, and the suite's checks run on what `x509 mint` prints. What cairn
//! issues is checked with openssl against OpenBao's root alone.

use crate::common;

use common::openbao::{OpenBao, SPIRE_PKI_POLICY};
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn vault_block(addr: &str, mount: &str, auth: &str, extra: &str) -> String {
    format!(
        "UpstreamAuthority \"vault\" {{\n plugin_data {{\n  vault_addr = \"{addr}/\"\n  pki_mount_point = \"{mount}\"\n  {extra}\n  {auth}\n }}\n}}"
    )
}

fn opts(block: String, env: Vec<(String, String)>) -> ServerOpts {
    ServerOpts {
        extra_plugins: block,
        env,
        extra_server: "ca_ttl = \"12h\"\ndefault_x509_svid_ttl = \"1h\"".into(),
        ..ServerOpts::default()
    }
}

/// SPIRE's `03-verify-ca`: the URIs of the minted chain in order, and the root's URI.
fn verify_ca(s: &TestServer, dir: &Path, vault_root: &Path) {
    let out = s.cli_ok(&["x509", "mint", "-spiffeID", "spiffe://example.org/ns/foo/sa/bar"]);
    // The first PEM run is the SVID chain; the one after "Root CAs:" is the bundle.
    let (svid_part, roots_part) = out.split_once("Root CAs:").expect("x509 mint prints Root CAs:");
    let svid = dir.join("svid.pem");
    let pem_run = |text: &str| -> String {
        let start = text.find("-----BEGIN CERTIFICATE-----").unwrap();
        let rest = &text[start..];
        let end = rest.find("\n\n").unwrap_or(rest.len());
        format!("{}\n", rest[..end].trim_end())
    };
    std::fs::write(&svid, pem_run(svid_part)).unwrap();
    let bundle = dir.join("bundle.pem");
    std::fs::write(&bundle, pem_run(roots_part)).unwrap();
    let sh = format!(
        "openssl crl2pkcs7 -nocrl -certfile {} | openssl pkcs7 -print_certs -text -noout | grep -o 'URI:spiffe:[^ ,]*'",
        svid.display()
    );
    let uris = Command::new("sh").arg("-c").arg(sh).output().unwrap();
    let uris: Vec<String> = String::from_utf8_lossy(&uris.stdout).lines().map(str::to_owned).collect();
    assert_eq!(uris, ["URI:spiffe://example.org/ns/foo/sa/bar", "URI:spiffe://example.org", "URI:spiffe://intermediate-ca-vault"]);
    let root_uri = openssl_x509(&bundle, &["-ext", "subjectAltName"]);
    assert!(root_uri.contains("URI:spiffe://root-ca"), "{root_uri}");
    // Beyond the suite: the chain verifies against OpenBao's root alone (as read from OpenBao).
    let certs = split_pem(&svid, dir, "c");
    let (ok, text) = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(vault_root)
        .arg("-untrusted")
        .arg(&svid)
        .arg(&certs[0]));
    assert!(ok && text.contains(": OK"), "openssl verify against OpenBao's root: {text}");
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// The suite's token and AppRole steps (02) and its CA check (03) and renewal check (04),
/// with OpenBao in place of Vault. Token TTLs are 15 s instead of the suite's 1 min so that
/// two renewals fit in 30 s.
#[test]
fn token_and_approle_auth_chain_cairn_to_openbao() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let bao = OpenBao::dev(tmp.path());
    let root = bao.spire_suite_pki();
    bao.policy("spire", SPIRE_PKI_POLICY);

    // Token auth: the token comes from VAULT_TOKEN, as the suite's deployment passes it.
    let token = bao.token("spire", "15s");
    let sdir = tmp.path().join("token");
    std::fs::create_dir(&sdir).unwrap();
    let mut s =
        TestServer::start(&sdir, &opts(vault_block(&bao.addr, "pki_int", "token_auth {}", ""), vec![("VAULT_TOKEN".into(), token)]));
    verify_ca(&s, &sdir, &root);
    let deadline = Instant::now() + Duration::from_secs(40);
    while count(&s.log(), "Successfully renew auth token") < 2 {
        assert!(Instant::now() < deadline, "expected two token renewals:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    s.stop();

    // AppRole: role and secret IDs from the environment, as in the suite.
    let (role_id, secret_id) = bao.approle("spire", "spire", "1m");
    let adir = tmp.path().join("approle");
    std::fs::create_dir(&adir).unwrap();
    let env = vec![("VAULT_APPROLE_ID".into(), role_id.clone()), ("VAULT_APPROLE_SECRET_ID".into(), secret_id.clone())];
    let s = TestServer::start(&adir, &opts(vault_block(&bao.addr, "pki_int", "approle_auth {}", ""), env));
    verify_ca(&s, &adir, &root);
    let log = s.log();
    assert!(log.contains("logged in to Vault"), "{log}");
    assert!(!log.contains(secret_id.as_str()), "the AppRole secret ID reached the log");
}
