#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! UpstreamAuthority "disk": an upstream CA made with openssl signs cairn's CA; SVIDs verify
//! through the chain; truncated or mismatched files are refused at start with a clear error.

use crate::common;

use common::*;
use std::path::Path;
use std::process::Command;

/// An upstream root CA (and optionally an intermediate under it) made by openssl.
fn openssl_ca(dir: &Path) {
    let sh = format!(
        r#"set -e
cd {d}
openssl ecparam -name prime256v1 -genkey -noout -out root.key
openssl req -new -x509 -key root.key -subj "/C=US/O=Upstream Root" -days 30 -out root.crt \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectAltName=URI:spiffe://example.org"
openssl ecparam -name prime256v1 -genkey -noout -out int.key
openssl req -new -key int.key -subj "/C=US/O=Upstream Intermediate" -out int.csr
printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectAltName=URI:spiffe://example.org\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' > int.ext
openssl x509 -req -in int.csr -CA root.crt -CAkey root.key -CAcreateserial -days 20 -extfile int.ext -out int.crt
"#,
        d = dir.display()
    );
    let (ok, out) = run(Command::new("sh").arg("-c").arg(sh));
    assert!(ok, "openssl CA setup failed: {out}");
}

fn upstream_block(cert: &Path, key: &Path, bundle: Option<&Path>) -> String {
    let b = bundle.map(|b| format!("bundle_file_path = \"{}\"", b.display())).unwrap_or_default();
    format!(
        "UpstreamAuthority \"disk\" {{ plugin_data {{ cert_file_path = \"{}\" key_file_path = \"{}\" {b} }} }}",
        cert.display(),
        key.display()
    )
}

#[test]
fn self_signed_upstream_root_signs_the_server_ca() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    std::fs::create_dir(&ca).unwrap();
    openssl_ca(&ca);
    let sdir = tmp.path().join("server");
    std::fs::create_dir(&sdir).unwrap();
    let opts = ServerOpts { extra_plugins: upstream_block(&ca.join("root.crt"), &ca.join("root.key"), None), ..ServerOpts::default() };
    let s = TestServer::start(&sdir, &opts);
    let bundle = tmp.path().join("bundle.pem");
    std::fs::write(&bundle, s.cli_ok(&["bundle", "show"])).unwrap();
    // The trust bundle is the upstream root, nothing else.
    assert_eq!(openssl_x509(&bundle, &["-fingerprint", "-sha256"]), openssl_x509(&ca.join("root.crt"), &["-fingerprint", "-sha256"]));
    let out = tmp.path().join("svid");
    s.cli_ok(&["x509", "mint", "-spiffeID", "spiffe://example.org/w", "-write", out.to_str().unwrap()]);
    let certs = split_pem(&out.join("svid.pem"), tmp.path(), "c");
    assert_eq!(certs.len(), 2, "leaf + cairn's CA (signed by the upstream root)");
    let (ok, text) = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&bundle)
        .arg("-untrusted")
        .arg(&certs[1])
        .arg(&certs[0]));
    assert!(ok, "{text}");
    let ca_ext = openssl_x509(&certs[1], &["-ext", "basicConstraints,keyUsage,subjectAltName", "-issuer"]);
    assert!(ca_ext.contains("CA:TRUE") && ca_ext.contains("Certificate Sign") && ca_ext.contains("URI:spiffe://example.org"), "{ca_ext}");
    assert!(ca_ext.contains("Upstream Root"), "{ca_ext}");
}

#[test]
fn intermediate_upstream_with_bundle_file() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    std::fs::create_dir(&ca).unwrap();
    openssl_ca(&ca);
    let sdir = tmp.path().join("server");
    std::fs::create_dir(&sdir).unwrap();
    let opts = ServerOpts {
        extra_plugins: upstream_block(&ca.join("int.crt"), &ca.join("int.key"), Some(&ca.join("root.crt"))),
        ..ServerOpts::default()
    };
    let s = TestServer::start(&sdir, &opts);
    let out = tmp.path().join("svid");
    s.cli_ok(&["x509", "mint", "-spiffeID", "spiffe://example.org/w", "-write", out.to_str().unwrap()]);
    let certs = split_pem(&out.join("svid.pem"), tmp.path(), "c");
    assert_eq!(certs.len(), 3, "leaf + cairn CA + upstream intermediate");
    let untrusted = tmp.path().join("untrusted.pem");
    std::fs::write(&untrusted, [std::fs::read_to_string(&certs[1]).unwrap(), std::fs::read_to_string(&certs[2]).unwrap()].concat())
        .unwrap();
    let (ok, text) = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(ca.join("root.crt"))
        .arg("-untrusted")
        .arg(&untrusted)
        .arg(&certs[0]));
    assert!(ok, "{text}");
}

#[test]
fn truncated_or_mismatched_upstream_files_are_refused_clearly() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    std::fs::create_dir(&ca).unwrap();
    openssl_ca(&ca);
    let full = std::fs::read_to_string(ca.join("root.crt")).unwrap();
    std::fs::write(ca.join("truncated.crt"), &full[..full.len() / 2]).unwrap();
    let cases = [
        (ca.join("truncated.crt"), ca.join("root.key"), None, "cert_file_path"),
        (ca.join("root.crt"), ca.join("int.key"), None, "does not match"),
        (ca.join("int.crt"), ca.join("int.key"), None, "self-signed"),
        (ca.join("missing.crt"), ca.join("root.key"), None, "cert_file_path"),
        (ca.join("root.crt"), ca.join("root.crt"), None, "key_file_path"),
        (ca.join("root.crt"), ca.join("root.key"), Some(ca.join("int.crt")), "root in bundle_file_path"),
    ];
    for (i, (cert, key, bundle, want)) in cases.iter().enumerate() {
        let sdir = tmp.path().join(format!("s{i}"));
        std::fs::create_dir(&sdir).unwrap();
        let opts = ServerOpts { extra_plugins: upstream_block(cert, key, bundle.as_deref()), ..ServerOpts::default() };
        let conf = write_config(&sdir, free_port(), &opts);
        let out = Command::new(CAIRN).args(["server", "run", "-config"]).arg(&conf).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} started");
        assert!(err.contains(want), "case {i}: {want:?} not in {err}");
        assert!(!err.contains("panicked"), "{err}");
        // Nothing half-written: no key file, no CA in a journal.
        assert!(
            !sdir.join("keys.json").exists()
                || !String::from_utf8_lossy(&std::fs::read(sdir.join("keys.json")).unwrap()).contains("x509-CA"),
            "case {i}: key left behind"
        );
    }
}

/// GET `path` on 127.0.0.1:`port`; the HTTP status code.
fn http_status(port: u16, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// SPIRE's stock server.conf (memory keys, UpstreamAuthority "disk"): once `healthcheck`
/// passes, `jwt mint` works at once (nothing above a disk CA must learn the key first), the
/// health listener says ready, and no upstream bundle sync runs (a CA on disk has no bundle).
#[test]
fn jwt_mint_works_as_soon_as_healthcheck_passes() {
    require("openssl");
    require("python3");
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    std::fs::create_dir(&ca).unwrap();
    openssl_ca(&ca);
    let sdir = tmp.path().join("server");
    std::fs::create_dir(&sdir).unwrap();
    let health = free_port();
    let opts = ServerOpts {
        key_manager: "memory",
        extra_plugins: upstream_block(&ca.join("root.crt"), &ca.join("root.key"), None),
        health_port: Some(health),
        ..ServerOpts::default()
    };
    // TestServer::start returns as soon as `healthcheck` passes.
    let s = TestServer::start(&sdir, &opts);
    let out = s.cli(&["jwt", "mint", "-spiffeID", "spiffe://example.org/w", "-audience", "db"]);
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && token.split('.').count() == 3,
        "jwt mint right after a passing healthcheck: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(http_status(health, "/ready"), 200);
    // The token verifies with PyJWT against the server's own bundle.
    let bundle = tmp.path().join("bundle.json");
    std::fs::write(&bundle, s.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let py = r#"
import json, sys, jwt
from jwt.algorithms import ECAlgorithm
token, path = sys.argv[1:3]
kid = jwt.get_unverified_header(token)["kid"]
key = ECAlgorithm.from_jwk(json.dumps(next(k for k in json.load(open(path))["keys"] if k.get("kid") == kid)))
print("OK", jwt.decode(token, key, algorithms=["ES256"], audience="db")["sub"])
"#;
    let (ok, text) = run(Command::new("python3").arg("-c").arg(py).arg(&token).arg(&bundle));
    assert!(ok && text.contains("OK spiffe://example.org/w"), "{text}");
    // No bundle-sync loop against a CA on disk (it used to warn every 500 ms).
    std::thread::sleep(std::time::Duration::from_secs(2));
    let log = s.log();
    assert!(!log.contains("upstream bundle sync failed") && !log.contains("polling GetBundle"), "{log}");
}
