#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! `ca_key_type` / `jwt_key_type` accept SPIRE's `rsa-2048` and `rsa-4096` (issue 8 item 4): the
//! X.509 CA key is RSA (certificates sha256WithRSAEncryption), JWT-SVIDs are RS256. openssl
//! verifies the X509-SVID chain; PyJWT verifies the JWT-SVID with the key from the SPIFFE bundle.

use crate::common;

use base64::Engine as _;
use common::{ServerOpts, TestServer, openssl_x509, require, run, split_pem};
use std::process::Command;

const PYJWT_RS256: &str = r#"
import json, sys, jwt
from jwt.algorithms import RSAAlgorithm
token, bundle_path, aud = sys.argv[1:4]
doc = json.load(open(bundle_path))
header = jwt.get_unverified_header(token)
assert header["alg"] == "RS256", header
jwk = next(k for k in doc["keys"] if k.get("kid") == header["kid"])
assert jwk["kty"] == "RSA", jwk
claims = jwt.decode(token, RSAAlgorithm.from_jwk(json.dumps(jwk)), algorithms=["RS256"], audience=aud)
print("OK", claims["sub"])
"#;

fn check(key_type: &str, bits: &str, jwt_bits: usize, opts_extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let opts = ServerOpts { extra_server: opts_extra.to_owned(), ..Default::default() };
    let server = TestServer::start(dir.path(), &opts);

    let out = dir.path().join("x509");
    server.cli_ok(&["x509", "mint", "-spiffeID", "spiffe://example.org/rsa", "-write", out.to_str().unwrap()]);
    let parts = split_pem(&out.join("svid.pem"), dir.path(), "chain-");
    // A self-signed root tier: the CA is the bundle's root (the chain is the leaf alone).
    let roots = split_pem(&out.join("bundle.pem"), dir.path(), "root-");
    // The CA certificate holds an RSA key of the configured size and signs with SHA-256.
    let ca = openssl_x509(&roots[0], &["-text"]);
    assert!(
        ca.contains(&format!("Public-Key: ({bits} bit)")) && ca.contains("rsaEncryption"),
        "{key_type}: CA key is not RSA {bits}:\n{ca}"
    );
    let leaf = openssl_x509(&parts[0], &["-text"]);
    assert!(leaf.contains("Signature Algorithm: sha256WithRSAEncryption"), "{key_type}: leaf not signed with RSA:\n{leaf}");
    let (ok, v) = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(out.join("bundle.pem"))
        .arg("-untrusted")
        .arg(out.join("svid.pem"))
        .arg(&parts[0]));
    assert!(ok && v.contains(": OK"), "{key_type}: openssl verify: {v}");

    let token = server.cli_ok(&["jwt", "mint", "-spiffeID", "spiffe://example.org/rsa", "-audience", "db"]);
    let bundle = dir.path().join("bundle.json");
    std::fs::write(&bundle, server.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let (ok, py) = run(Command::new("python3").arg("-c").arg(PYJWT_RS256).arg(token.trim()).arg(&bundle).arg("db"));
    assert!(ok && py.contains("OK spiffe://example.org/rsa"), "{key_type}: PyJWT: {py}");
    // The JWT key in the bundle has the size jwt_key_type asks for.
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let jwk = doc["keys"].as_array().unwrap().iter().find(|k| k["use"] == "jwt-svid").unwrap();
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    assert_eq!(n.len() * 8, jwt_bits, "{key_type}: JWT key size");
}

#[test]
fn rsa_2048_ca_and_jwt_keys() {
    require("openssl");
    require("python3");
    check("rsa-2048", "2048", 2048, "ca_key_type = \"rsa-2048\"");
}

#[test]
fn rsa_4096_jwt_key_beside_an_rsa_2048_ca() {
    require("openssl");
    require("python3");
    // jwt_key_type on its own: the CA stays as ca_key_type says.
    check("rsa-2048/rsa-4096", "2048", 4096, "ca_key_type = \"rsa-2048\"\n jwt_key_type = \"rsa-4096\"");
}
