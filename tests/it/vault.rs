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

fn server_dir(base: &Path, name: &str) -> std::path::PathBuf {
    let d = base.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts a server with `block` expecting it to refuse; returns its stderr.
fn refused(dir: &Path, block: String, env: Vec<(String, String)>) -> String {
    let config = write_config(dir, free_port(), &opts(block, env.clone()));
    start_fails(&config, &env)
}

/// The refusals an operator meets, each naming the Vault path and status; a Vault that is
/// down costs no key, and repeated failed starts reuse the one key they made.
#[test]
fn vault_refusals_are_named_and_cost_no_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let bao = OpenBao::dev(tmp.path());
    bao.spire_suite_pki();
    bao.policy("spire", SPIRE_PKI_POLICY);

    // Vault down: the address and the cause, twice, and no key made.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let d = server_dir(tmp.path(), "down");
    for _ in 0..2 {
        let err = refused(&d, vault_block(&dead, "pki_int", "token_auth { token = \"t\" }", ""), vec![]);
        assert!(err.contains(&format!("Vault at {dead} is unreachable")) && err.contains("Connection refused"), "{err}");
        assert!(!d.join("keys.json").exists(), "a key was made although Vault was down");
    }

    // A token Vault does not know.
    let d = server_dir(tmp.path(), "badtoken");
    let err = refused(&d, vault_block(&bao.addr, "pki_int", "token_auth { token = \"hvs.not-a-token\" }", ""), vec![]);
    assert!(err.contains("auth/token/lookup-self") && err.contains("HTTP 403") && err.contains("permission denied"), "{err}");
    assert!(!err.contains("hvs.not-a-token"), "the token was echoed: {err}");
    assert!(!d.join("keys.json").exists());

    // A policy without pki_int/root/sign-intermediate: refused by name; a second start reuses
    // the key the first one made.
    bao.policy("readonly", "path \"pki_int/cert/ca\" { capabilities = [\"read\"] }\n");
    let token = bao.token("readonly", "1h");
    let d = server_dir(tmp.path(), "nosign");
    let block = vault_block(&bao.addr, "pki_int", &format!("token_auth {{ token = \"{token}\" }}"), "");
    let err = refused(&d, block.clone(), vec![]);
    assert!(err.contains("POST pki_int/root/sign-intermediate") && err.contains("HTTP 403") && err.contains("policy"), "{err}");
    let keys = std::fs::read(d.join("keys.json")).unwrap();
    refused(&d, block, vec![]);
    assert_eq!(std::fs::read(d.join("keys.json")).unwrap(), keys, "the second failed start made another key");

    // A mount whose max_lease_ttl is below ca_ttl: Vault only warns and caps; cairn says so.
    bao.bao(&["secrets", "tune", "-max-lease-ttl=10m", "pki_int"]);
    let d = server_dir(tmp.path(), "capped");
    let s = TestServer::start(
        &d,
        &opts(vault_block(&bao.addr, "pki_int", &format!("token_auth {{ token = \"{}\" }}", bao.root_token), ""), vec![]),
    );
    let log = s.log();
    assert!(log.contains("max_lease_ttl caps it") && log.contains("secrets tune -max-lease-ttl=<ttl> pki_int"), "{log}");
    drop(s);
    bao.bao(&["secrets", "tune", "-max-lease-ttl=43800h", "pki_int"]);

    // A mount that does not exist.
    let d = server_dir(tmp.path(), "nomount");
    let err = refused(&d, vault_block(&bao.addr, "nope", &format!("token_auth {{ token = \"{}\" }}", bao.root_token), ""), vec![]);
    assert!(err.contains("nope/cert/ca") && err.contains("pki_mount_point"), "{err}");

    // A config without an auth method, and one with two.
    let d = server_dir(tmp.path(), "noauth");
    let err = refused(&d, vault_block(&bao.addr, "pki", "", ""), vec![]);
    assert!(err.contains("plugins.UpstreamAuthority.vault.plugin_data") && err.contains("authentication method"), "{err}");
    let err = refused(&d, vault_block(&bao.addr, "pki", "token_auth {} approle_auth {}", ""), vec![]);
    assert!(err.contains("only one authentication method") && err.contains("token_auth, approle_auth"), "{err}");
}

fn openssl(args: &[&str], dir: &Path) {
    let (ok, out) = run(Command::new("openssl").args(args).current_dir(dir));
    assert!(ok, "openssl {args:?}: {out}");
}

/// SPIRE's suite cert-auth material in `c`: a CA (`ca.pem`, URI spiffe://cert-auth-ca) and, per
/// `(name, subject)`, a client certificate `<name>.pem` / `<name>.key` it signed.
fn cert_auth_material(c: &Path, clients: &[(&str, &str)]) {
    std::fs::write(
        c.join("v3.cnf"),
        "[v3]\nsubjectAltName=URI:spiffe://cert-auth-ca\nbasicConstraints=CA:true\n[leaf]\nsubjectAltName=URI:spiffe://cert-auth-client\n",
    )
    .unwrap();
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"], c);
    openssl(
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/C=US/O=SPIFFE",
            "-extensions",
            "v3",
            "-config",
            "v3.cnf",
        ],
        c,
    );
    for (name, subj) in clients {
        openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("{name}.key")], c);
        openssl(&["req", "-new", "-key", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", subj, "-config", "v3.cnf"], c);
        openssl(
            &[
                "x509",
                "-req",
                "-days",
                "10",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-in",
                &format!("{name}.csr"),
                "-out",
                &format!("{name}.pem"),
                "-extensions",
                "leaf",
                "-extfile",
                "v3.cnf",
            ],
            c,
        );
    }
}

/// The suite's cert-auth step over TLS: a client certificate (with a CN, which OpenBao needs)
/// from the suite's own CA logs in; `ca_cert_path` pins OpenBao's TLS CA. Without it (and
/// without insecure_skip_verify) the TLS failure is named; a CN-less certificate, a plain
/// X509-SVID, is refused by OpenBao with its own words.
#[test]
fn cert_auth_over_tls() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let bao = OpenBao::dev_tls(tmp.path());
    let root = bao.spire_suite_pki();
    bao.policy("spire", SPIRE_PKI_POLICY);
    let c = tmp.path();
    cert_auth_material(c, &[("client", "/C=US/O=SPIFFE/CN=Cert Auth Client"), ("nocn", "/C=US/O=SPIFFE")]);
    bao.bao(&["auth", "enable", "cert"]);
    bao.bao(&[
        "write",
        "auth/cert/certs/my-role",
        "display_name=spire",
        "token_ttl=1m",
        "policies=spire",
        &format!("certificate=@{}", c.join("ca.pem").display()),
    ]);
    let ca = bao.tls_ca.clone().unwrap();
    let cert_auth = |name: &str| {
        format!(
            "cert_auth {{ client_cert_path = \"{}\" client_key_path = \"{}\" }}",
            c.join(format!("{name}.pem")).display(),
            c.join(format!("{name}.key")).display()
        )
    };
    let d = server_dir(c, "cert");
    let s = TestServer::start(
        &d,
        &opts(vault_block(&bao.addr, "pki_int", &cert_auth("client"), &format!("ca_cert_path = \"{}\"", ca.display())), vec![]),
    );
    verify_ca(&s, &d, &root);
    assert!(s.log().contains("logged in to Vault"), "{}", s.log());

    // VAULT_CACERT does what ca_cert_path does; without either, the TLS failure is named.
    let d = server_dir(c, "cacert-env");
    let s2 = TestServer::start(
        &d,
        &opts(vault_block(&bao.addr, "pki_int", &cert_auth("client"), ""), vec![("VAULT_CACERT".into(), ca.display().to_string())]),
    );
    drop(s2);
    let d = server_dir(c, "untrusted");
    let err = refused(&d, vault_block(&bao.addr, "pki_int", &cert_auth("client"), ""), vec![]);
    assert!(err.contains(&bao.addr) && err.to_lowercase().contains("certificate"), "{err}");
    // insecure_skip_verify accepts OpenBao's certificate without roots.
    let d = server_dir(c, "insecure");
    drop(TestServer::start(&d, &opts(vault_block(&bao.addr, "pki_int", &cert_auth("client"), "insecure_skip_verify = true"), vec![])));

    // OpenBao's limit: no CN, no login.
    let d = server_dir(c, "nocn");
    let err = refused(&d, vault_block(&bao.addr, "pki_int", &cert_auth("nocn"), &format!("ca_cert_path = \"{}\"", ca.display())), vec![]);
    assert!(err.contains("auth/cert/login") && err.contains("missing name in alias"), "{err}");
}

fn ready_body(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    use std::io::{Read, Write};
    let _ = s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// OpenBao stopped mid-run, then back (sealed, then unsealed): the running tier keeps issuing
/// under its CA, reports the failing rotation in /ready and its log, and rotates once OpenBao
/// is back.
#[test]
fn openbao_outage_mid_run() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let mut bao = OpenBao::persistent(tmp.path());
    let root = bao.spire_suite_pki();
    bao.policy("spire", SPIRE_PKI_POLICY);
    let (role_id, secret_id) = bao.approle("spire", "spire", "1m");
    let d = server_dir(tmp.path(), "server");
    let health = free_port();
    let auth = format!("approle_auth {{ approle_id = \"{role_id}\" approle_secret_id = \"{secret_id}\" }}");
    let mut o = opts(vault_block(&bao.addr, "pki_int", &auth, ""), vec![]);
    // A CA of 36 s is prepared again after 18 s; rotation checks every second.
    o.extra_server = "ca_ttl = \"36s\"\ndefault_x509_svid_ttl = \"5s\"\nexperimental { ca_rotation_interval = \"1s\" }".into();
    o.health_port = Some(health);
    let s = TestServer::start(&d, &o);
    let signed = |s: &TestServer| count(&s.log(), "Vault signed this tier's CA");
    assert_eq!(signed(&s), 1);
    bao.stop();
    // Still issuing, and verifiable against OpenBao's root.
    let out = s.cli_ok(&["x509", "mint", "-spiffeID", "spiffe://example.org/during-outage", "-write", d.join("svid").to_str().unwrap()]);
    drop(out);
    let certs = split_pem(&d.join("svid").join("svid.pem"), &d, "o");
    let (ok, text) = run(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(d.join("svid").join("svid.pem"))
        .arg(&certs[0]));
    assert!(ok, "{text}");
    // The failing rotation shows in /ready (still ready: the current CA signs) and the log.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let body = ready_body(health);
        if body.contains("200 OK") && body.contains("warning: CA rotation failing") && body.contains(&bao.addr) {
            break;
        }
        assert!(Instant::now() < deadline, "no rotation warning in /ready: {body}\n{}", s.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(s.log().contains("CA rotation failed; keeping the current credentials and retrying"));
    // Back, but sealed: named as such.
    bao.restart();
    let deadline = Instant::now() + Duration::from_secs(40);
    while !s.log().contains("sealed") {
        assert!(Instant::now() < deadline, "the sealed Vault was not reported:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    bao.unseal();
    let deadline = Instant::now() + Duration::from_secs(40);
    while signed(&s) < 2 {
        assert!(Instant::now() < deadline, "no new CA after OpenBao came back:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready_body(health).contains("warning:") {
        assert!(Instant::now() < deadline, "the warning stayed after recovery");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// SPIRE's `key-manager-vault/conf/spire.hcl`.
const SPIRE_TRANSIT_POLICY: &str = "path \"transit/keys/*\" {\n  capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\"]\n}\npath \"transit/sign/*\" {\n  capabilities = [\"update\"]\n}\n";

fn km_block(bao: &OpenBao, auth: &str, id_file: &Path) -> String {
    format!(
        "KeyManager \"hashicorp_vault\" {{\n plugin_data {{\n  vault_addr = \"{}/\"\n  ca_cert_path = \"{}\"\n  key_identifier_file = \"{}\"\n  {auth}\n }}\n}}",
        bao.addr,
        bao.tls_ca.as_ref().unwrap().display(),
        id_file.display()
    )
}

/// SPIRE's `key-manager-vault` suite against OpenBao over TLS: transit set up with the suite's
/// commands and policy; a server per auth method (AppRole from the environment, cert auth,
/// a 1-minute token from VAULT_TOKEN) comes up ready (step 02); the token is renewed (step
/// 04, with a 15 s token). Beyond the suite: what the server issues with its CA and JWT keys in
/// transit verifies with openssl and PyJWT, a restart resumes the same CA from transit, and
/// the keys are non-exportable by OpenBao's own account.
#[test]
fn key_manager_in_transit_replays_spires_suite() {
    require("openssl");
    require("python3");
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path();
    let bao = OpenBao::dev_tls(c);
    bao.bao(&["secrets", "enable", "transit"]);
    bao.bao(&["secrets", "tune", "-max-lease-ttl=8760h", "transit"]);
    bao.policy("spire", SPIRE_TRANSIT_POLICY);

    // AppRole, credentials from the environment as the suite's deployment passes them.
    let (role_id, secret_id) = bao.approle("spire", "spire", "1m");
    let d = server_dir(c, "approle");
    let o = ServerOpts {
        key_manager_block: Some(km_block(&bao, "approle_auth {}", &d.join("vault-key-identifier"))),
        env: vec![("VAULT_APPROLE_ID".into(), role_id), ("VAULT_APPROLE_SECRET_ID".into(), secret_id.clone())],
        ..ServerOpts::default()
    };
    let mut s = TestServer::start(&d, &o);
    let roots = d.join("bundle.pem");
    std::fs::write(&roots, s.cli_ok(&["bundle", "show"])).unwrap();
    let out = d.join("svid");
    s.cli_ok(&["x509", "mint", "-spiffeID", "spiffe://example.org/transit", "-write", out.to_str().unwrap()]);
    let (ok, text) = run(Command::new("openssl").args(["verify", "-x509_strict", "-CAfile"]).arg(&roots).arg(out.join("svid.pem")));
    assert!(ok && text.contains(": OK"), "{text}");
    // The CA's key is a transit key of this server (the id file names it).
    let id = std::fs::read_to_string(d.join("vault-key-identifier")).unwrap();
    let listed = bao.bao(&["list", "-format=json", "transit/keys"]);
    let names: Vec<String> = serde_json::from_str(&listed).unwrap();
    let ca_key =
        names.iter().find(|n| n.starts_with(id.trim()) && n.ends_with("-x509-CA-A")).unwrap_or_else(|| panic!("{names:?}")).clone();
    let info: serde_json::Value = serde_json::from_str(&bao.bao(&["read", "-format=json", &format!("transit/keys/{ca_key}")])).unwrap();
    assert_eq!(info["data"]["exportable"], false);
    assert_eq!(info["data"]["type"], "ecdsa-p256");
    let pem = info["data"]["keys"]["1"]["public_key"].as_str().unwrap().to_owned();
    let ca_pub = d.join("ca-pub.pem");
    std::fs::write(&ca_pub, &pem).unwrap();
    let sh = format!("openssl x509 -in {} -pubkey -noout | diff - {}", roots.display(), ca_pub.display());
    let (same, diff) = run(Command::new("sh").arg("-c").arg(sh));
    assert!(same, "the root's key is not the transit key: {diff}");
    let export = Command::new(common::openbao::bao_bin())
        .args(["read", &format!("transit/export/signing-key/{ca_key}")])
        .env("BAO_ADDR", &bao.addr)
        .env("BAO_TOKEN", &bao.root_token)
        .env("BAO_CACERT", bao.tls_ca.as_ref().unwrap())
        .output()
        .unwrap();
    assert!(!export.status.success(), "OpenBao exported the CA key");
    // JWT-SVID signed in transit, verified by PyJWT.
    let token = s.cli_ok(&["jwt", "mint", "-spiffeID", "spiffe://example.org/transit", "-audience", "db"]).trim().to_owned();
    let bundle_json = d.join("bundle.json");
    std::fs::write(&bundle_json, s.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let (ok, text) = run(Command::new("python3")
        .arg("-c")
        .arg(crate::root_tier::PYJWT_CHECK)
        .arg(&token)
        .arg(&bundle_json)
        .arg("db")
        .arg("spiffe://example.org/transit"));
    assert!(ok && text.contains("OK spiffe://example.org/transit ES256"), "PyJWT: {text}");
    // Restart: the same CA, from transit.
    s.stop();
    s.spawn();
    assert!(s.log().contains("resumed X.509 CA from the journal"), "{}", s.log());
    assert_eq!(s.cli_ok(&["bundle", "show"]), std::fs::read_to_string(&roots).unwrap());
    assert!(!s.log().contains(&secret_id), "the secret ID reached the log");
    s.stop();

    // Cert auth, as in the suite (default mount, no role name).
    cert_auth_material(c, &[("client", "/C=US/O=SPIFFE/CN=Cert Auth Client")]);
    bao.bao(&["auth", "enable", "cert"]);
    bao.bao(&[
        "write",
        "auth/cert/certs/my-role",
        "display_name=spire",
        "token_ttl=1m",
        "policies=spire",
        &format!("certificate=@{}", c.join("ca.pem").display()),
    ]);
    let d = server_dir(c, "cert");
    let auth = format!(
        "cert_auth {{ client_cert_path = \"{}\" client_key_path = \"{}\" }}",
        c.join("client.pem").display(),
        c.join("client.key").display()
    );
    let o = ServerOpts { key_manager_block: Some(km_block(&bao, &auth, &d.join("vault-key-identifier"))), ..ServerOpts::default() };
    drop(TestServer::start(&d, &o));

    // Token auth with a short token: renewed twice (the suite's step 04).
    let d = server_dir(c, "token");
    let o = ServerOpts {
        key_manager_block: Some(km_block(&bao, "token_auth {}", &d.join("vault-key-identifier"))),
        env: vec![("VAULT_TOKEN".into(), bao.token("spire", "15s"))],
        ..ServerOpts::default()
    };
    let s = TestServer::start(&d, &o);
    let deadline = Instant::now() + Duration::from_secs(40);
    while count(&s.log(), "Successfully renew auth token") < 2 {
        assert!(Instant::now() < deadline, "expected two token renewals:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    // Three servers, three identities: none sees another's keys.
    let listed: Vec<String> = serde_json::from_str(&bao.bao(&["list", "-format=json", "transit/keys"])).unwrap();
    let ids: std::collections::BTreeSet<&str> = listed.iter().map(|n| &n[..36]).collect();
    assert_eq!(ids.len(), 3, "{listed:?}");
}

fn jwt_of(agent: &common::agent::TestAgent, aud: &str) -> String {
    let out = agent.api(&["fetch", "jwt", "-audience", aud]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().skip_while(|l| !l.starts_with("token(")).nth(1).unwrap_or_else(|| panic!("{text}")).trim().to_owned()
}

/// Beyond SPIRE (whose vault upstream cannot carry JWT keys): a cairn root chained to OpenBao
/// with two nested tiers below it (root -> region1 -> region2). Every tier's JWT key reaches
/// every tier, JWT-SVIDs cross the tree both ways, and an X509-SVID from the deepest tier
/// verifies against OpenBao's root alone.
#[test]
fn a_vault_chained_root_relays_jwt_keys_through_two_nested_tiers() {
    use crate::nested::{downstream_setup, fetch_x509, jwt_kids, own_kid, verify_through_chain, wait_until, workload_agent};
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let bao = OpenBao::dev(base);
    let vault_root = bao.simple_pki("pki", "8760h");
    bao.policy("spire", SPIRE_PKI_POLICY);
    let rdir = server_dir(base, "root");
    let fast = "experimental { jwt_publish_grace = \"1s\" ca_rotation_interval = \"1s\" }";
    let mut ro = opts(vault_block(&bao.addr, "pki", &format!("token_auth {{ token = \"{}\" }}", bao.token("spire", "1h")), ""), vec![]);
    ro.extra_server = format!("ca_ttl = \"12h\"\n{fast}");
    let root = TestServer::start(&rdir, &ro);
    let (o1, _ua1) = downstream_setup(base, "region1", &root, &format!("ca_ttl = \"6h\"\n{fast}"));
    let r1 = TestServer::start(&base.join("region1"), &o1);
    let (o2, _ua2) = downstream_setup(base, "region2", &r1, &format!("ca_ttl = \"3h\"\n{fast}"));
    let r2 = TestServer::start(&base.join("region2"), &o2);
    let a0 = workload_agent(base, "agent0", &root, "spiffe://example.org/hq/api");
    let a2 = workload_agent(base, "agent2", &r2, "spiffe://example.org/region2/web");

    // Every tier's key in every tier's bundle.
    let kids = [own_kid(&root), own_kid(&r1), own_kid(&r2)];
    for (name, s) in [("root", &root), ("region1", &r1), ("region2", &r2)] {
        wait_until(&format!("all three JWT keys at {name}"), Duration::from_secs(30), || {
            let have = jwt_kids(s);
            kids.iter().all(|k| have.contains(k))
        });
    }
    // A JWT-SVID from region2 validates at the root's agent, and one from the root at region2's.
    let t2 = jwt_of(&a2, "orders");
    wait_until("agent0 to validate region2's JWT-SVID", Duration::from_secs(20), || {
        let out = a0.api(&["validate", "jwt", "-audience", "orders", "-svid", &t2]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/region2/web")
    });
    let t0 = jwt_of(&a0, "billing");
    wait_until("agent2 to validate the root's JWT-SVID", Duration::from_secs(20), || {
        let out = a2.api(&["validate", "jwt", "-audience", "billing", "-svid", &t0]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/hq/api")
    });
    // region2's workload: leaf, region2 CA, region1 CA, root tier CA, up to OpenBao's root.
    let w2 = fetch_x509(&a2, &base.join("w2"));
    let (chain, _) = verify_through_chain(base, &w2.join("svid.0.pem"), &vault_root, "w2");
    assert_eq!(chain.len(), 4, "leaf + three tier CAs");
}

/// A stand-in for the Kubernetes API's TokenReview endpoint (OpenBao's kubernetes auth asks it
/// whether a service account token is valid): accepts exactly `TOKEN` as spire/spire-server
/// and counts the reviews it answered in `reviews`.
const KUBE_STUB: &str = r#"
import base64, json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port, token, reviews = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        ok = self.path == '/apis/authentication.k8s.io/v1/tokenreviews' and body['spec']['token'] == token
        status = {'authenticated': True, 'user': {'username': 'system:serviceaccount:spire:spire-server', 'uid': 'uid-1', 'groups': ['system:serviceaccounts']}} if ok else {'authenticated': False, 'error': 'invalid token'}
        open(reviews, 'a').write('ok\n' if ok else 'refused\n')
        out = json.dumps({'apiVersion': 'authentication.k8s.io/v1', 'kind': 'TokenReview', 'status': status}).encode()
        self.send_response(201); self.send_header('Content-Type', 'application/json'); self.send_header('Content-Length', str(len(out))); self.end_headers(); self.wfile.write(out)
HTTPServer(('127.0.0.1', port), H).serve_forever()
"#;

fn b64url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The suite's k8s-auth step: OpenBao's kubernetes auth with SPIRE's role settings, the
/// service account token read from `token_path`, reviewed by a TokenReview endpoint.
#[test]
fn k8s_auth_with_a_token_review_endpoint() {
    require("openssl");
    require("python3");
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path();
    let bao = OpenBao::dev(c);
    let root = bao.spire_suite_pki();
    bao.policy("spire", SPIRE_PKI_POLICY);
    let claims = serde_json::json!({
        "iss": "kubernetes/serviceaccount",
        "sub": "system:serviceaccount:spire:spire-server",
        "kubernetes.io/serviceaccount/namespace": "spire",
        "kubernetes.io/serviceaccount/service-account.name": "spire-server",
        "kubernetes.io/serviceaccount/service-account.uid": "uid-1",
    });
    let jwt =
        format!("{}.{}.{}", b64url(br#"{"alg":"RS256","typ":"JWT"}"#), b64url(claims.to_string().as_bytes()), b64url(b"not-checked-here"));
    let token_path = c.join("sa-token");
    std::fs::write(&token_path, format!("{jwt}\n")).unwrap();
    let port = free_port();
    let reviews = c.join("reviews");
    let _stub = KillOnDrop(
        Command::new("python3")
            .arg("-c")
            .arg(KUBE_STUB)
            .arg(port.to_string())
            .arg(&jwt)
            .arg(&reviews)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    bao.bao(&["auth", "enable", "kubernetes"]);
    // The CA is required with disable_local_ca_jwt but unused over plain http.
    bao.bao(&[
        "write",
        "auth/kubernetes/config",
        &format!("kubernetes_host=http://127.0.0.1:{port}"),
        "disable_local_ca_jwt=true",
        &format!("kubernetes_ca_cert=@{}", root.display()),
    ]);
    bao.bao(&[
        "write",
        "auth/kubernetes/role/my-role",
        "bound_service_account_names=spire-server",
        "bound_service_account_namespaces=spire",
        "token_ttl=1m",
        "policies=spire",
    ]);
    let d = server_dir(c, "k8s");
    let auth = format!("k8s_auth {{ k8s_auth_role_name = \"my-role\" token_path = \"{}\" }}", token_path.display());
    let s = TestServer::start(&d, &opts(vault_block(&bao.addr, "pki_int", &auth, ""), vec![]));
    verify_ca(&s, &d, &root);
    assert!(std::fs::read_to_string(&reviews).unwrap().starts_with("ok"), "OpenBao never reviewed the token");
    assert!(!s.log().contains(&jwt), "the service account token reached the log");
    drop(s);
    // A token the cluster does not vouch for is refused, by path.
    let forged = jwt.replace(&b64url(b"not-checked-here"), &b64url(b"forged"));
    assert_ne!(forged, jwt);
    std::fs::write(&token_path, forged).unwrap();
    let d = server_dir(c, "k8s-bad");
    let err = refused(&d, vault_block(&bao.addr, "pki_int", &auth, ""), vec![]);
    assert!(err.contains("auth/kubernetes/login") && err.contains("HTTP 403"), "{err}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Non-renewable (batch) AppRole tokens: never renewed, and a fresh login when the next mint
/// finds the token lapsed.
#[test]
fn non_renewable_tokens_are_replaced_by_a_fresh_login() {
    let tmp = tempfile::tempdir().unwrap();
    let bao = OpenBao::dev(tmp.path());
    bao.spire_suite_pki();
    bao.policy("spire", SPIRE_PKI_POLICY);
    bao.bao(&["auth", "enable", "approle"]);
    bao.bao(&["write", "auth/approle/role/batch", "token_type=batch", "token_ttl=4s", "token_max_ttl=4s", "policies=spire"]);
    let role_id = bao.bao(&["read", "-field=role_id", "auth/approle/role/batch/role-id"]).trim().to_owned();
    let secret_id = bao.bao(&["write", "-f", "-field=secret_id", "auth/approle/role/batch/secret-id"]).trim().to_owned();
    let d = server_dir(tmp.path(), "server");
    let auth = format!("approle_auth {{ approle_id = \"{role_id}\" approle_secret_id = \"{secret_id}\" }}");
    let mut o = opts(vault_block(&bao.addr, "pki_int", &auth, ""), vec![]);
    // A 36 s CA is prepared again after 18 s, long after the 4 s token lapsed.
    o.extra_server = "ca_ttl = \"36s\"\nexperimental { ca_rotation_interval = \"1s\" }".into();
    let s = TestServer::start(&d, &o);
    let deadline = Instant::now() + Duration::from_secs(40);
    while count(&s.log(), "Vault signed this tier's CA") < 2 {
        assert!(Instant::now() < deadline, "no second CA:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = s.log();
    assert!(count(&log, "logged in to Vault") >= 2, "{log}");
    assert!(log.contains("renewable=false"), "{log}");
    assert!(!log.contains("Successfully renew auth token") && !log.contains("CA rotation failed"), "{log}");
}
