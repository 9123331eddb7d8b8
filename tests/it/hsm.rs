#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! HSM custody on a real SoftHSM2 token (issue 10): a server whose CA and JWT keys are on the
//! token, a root key on the token (UpstreamAuthority "pkcs11") made by `cairn hsm init-root`,
//! and the errors an operator meets. What cairn issues is checked with openssl and PyJWT; what
//! is on the token with OpenSC's pkcs11-tool.

use crate::common;

use common::softhsm::{MODULE, SoftHsm};
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn verify_svid(s: &TestServer, dir: &Path, id: &str, roots: &Path) {
    let out = dir.join(format!("svid-{}", id.rsplit('/').next().unwrap()));
    s.cli_ok(&["x509", "mint", "-spiffeID", id, "-write", out.to_str().unwrap()]);
    let certs = split_pem(&out.join("svid.pem"), dir, "c");
    let mut cmd = Command::new("openssl");
    cmd.args(["verify", "-x509_strict", "-CAfile"]).arg(roots);
    if certs.len() > 1 {
        cmd.arg("-untrusted").arg(out.join("svid.pem"));
    }
    let (ok, text) = run(cmd.arg(&certs[0]));
    assert!(ok && text.contains(": OK"), "openssl verify {id}: {text}");
    let san = openssl_x509(&certs[0], &["-ext", "subjectAltName"]);
    assert!(san.contains(&format!("URI:{id}")), "{san}");
}

/// SPKI DER of a PEM certificate's public key, by openssl.
fn cert_spki(cert: &Path) -> Vec<u8> {
    let sh = format!("openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform DER", cert.display());
    let out = Command::new("sh").arg("-c").arg(sh).output().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn a_server_with_its_ca_and_jwt_keys_on_the_token() {
    require("openssl");
    require("python3");
    let tmp = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(tmp.path(), &["cairn-server"]);
    let sdir = tmp.path().join("server");
    std::fs::create_dir(&sdir).unwrap();
    let opts = ServerOpts { key_manager_block: Some(hsm.key_manager("cairn-server", "root:")), env: hsm.env(), ..ServerOpts::default() };
    let mut s = TestServer::start(&sdir, &opts);
    let roots = tmp.path().join("bundle.pem");
    std::fs::write(&roots, s.cli_ok(&["bundle", "show"])).unwrap();
    verify_svid(&s, tmp.path(), "spiffe://example.org/hsm-a", &roots);

    // The CA's public key is the token's key (pkcs11-tool reads it; P-256 here), and the
    // private half is sensitive and never extractable.
    let pubkey = tmp.path().join("token-pub.der");
    let (ok, text) = hsm
        .pkcs11_tool("cairn-server", &["--read-object", "--type", "pubkey", "--label", "root:x509-CA-A", "-o", pubkey.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert_eq!(std::fs::read(&pubkey).unwrap(), cert_spki(&roots), "the root in the bundle is not the token's key");
    let (ok, listing) = hsm.pkcs11_tool("cairn-server", &["--list-objects", "--type", "privkey"]);
    assert!(ok, "{listing}");
    for label in ["root:x509-CA-A", "root:JWT-Signer-A"] {
        let block =
            listing.split("Private Key Object").find(|b| b.contains(label)).unwrap_or_else(|| panic!("{label} missing:\n{listing}"));
        assert!(block.contains("never extractable") && block.contains("sensitive"), "{block}");
    }
    // No key material on disk: no keys file was written.
    assert!(!sdir.join("keys.json").exists());

    // A JWT-SVID signed on the token verifies with PyJWT against the bundle's key.
    let token = s.cli_ok(&["jwt", "mint", "-spiffeID", "spiffe://example.org/hsm-a", "-audience", "db"]).trim().to_owned();
    let bundle_json = tmp.path().join("bundle.json");
    std::fs::write(&bundle_json, s.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let check = || {
        run(Command::new("python3")
            .arg("-c")
            .arg(crate::root_tier::PYJWT_CHECK)
            .arg(&token)
            .arg(&bundle_json)
            .arg("db")
            .arg("spiffe://example.org/hsm-a"))
    };
    let (ok, out) = check();
    assert!(ok && out.contains("OK spiffe://example.org/hsm-a ES256"), "PyJWT: {out}");

    // After a restart the server resumes the same CA and JWT key from the token.
    s.stop();
    s.spawn();
    assert!(s.log().contains("resumed X.509 CA from the journal"), "{}", s.log());
    let again = tmp.path().join("bundle-again.pem");
    std::fs::write(&again, s.cli_ok(&["bundle", "show"])).unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&roots).unwrap(), "the restarted server has another root");
    verify_svid(&s, tmp.path(), "spiffe://example.org/hsm-b", &roots);
    std::fs::write(&bundle_json, s.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let (ok, out) = check();
    assert!(ok, "the JWT-SVID minted before the restart no longer verifies: {out}");

    // Keys deleted from the token: the restart is refused, naming the token and the key, and
    // no new CA is minted in silence.
    s.stop();
    let (ok, text) = hsm.pkcs11_tool("cairn-server", &["--delete-object", "--type", "privkey", "--label", "root:x509-CA-A"]);
    assert!(ok, "{text}");
    let err = start_fails(&s.config, &hsm.env());
    assert!(err.contains("x509-CA-A") && err.contains("PKCS#11 token \"cairn-server\""), "{err}");
    let (_, listing) = hsm.pkcs11_tool("cairn-server", &["--list-objects", "--type", "privkey"]);
    assert!(!listing.contains("root:x509-CA-A"), "a refused start generated a key:\n{listing}");
}

#[test]
fn a_root_key_on_the_token_signs_a_tiers_ca() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(tmp.path(), &["cairn-root"]);
    let root = tmp.path().join("root.pem");
    let ceremony = |extra: &[&str]| {
        let mut c = hsm.cmd(CAIRN);
        c.args(["hsm", "init-root", "-module", MODULE, "-tokenLabel", "cairn-root", "-pinFile"]).arg(&hsm.pin_file);
        c.args(["-keyLabel", "org-root", "-keyType", "ec-p384", "-trustDomain", "example.org", "-certOut"]).arg(&root);
        run(c.args(extra))
    };
    let (ok, out) = ceremony(&[]);
    assert!(ok, "init-root: {out}");
    assert!(out.contains("SHA-256 fingerprint"), "{out}");
    // The root is a self-signed CA for the trust domain, on P-384.
    let text = openssl_x509(&root, &["-text"]);
    assert!(text.contains("CA:TRUE") && text.contains("URI:spiffe://example.org") && text.contains("secp384r1"), "{text}");
    let (ok, v) = run(Command::new("openssl").args(["verify", "-x509_strict", "-CAfile"]).arg(&root).arg(&root));
    assert!(ok, "the root is not validly self-signed: {v}");
    // A second ceremony with the same label is refused and leaves the certificate alone.
    let before = std::fs::read(&root).unwrap();
    std::fs::remove_file(&root).unwrap();
    let (ok, out) = ceremony(&[]);
    assert!(!ok && out.contains("already holds a key labelled \"org-root\""), "{out}");
    assert!(!root.exists());
    std::fs::write(&root, &before).unwrap();
    // The key on the token cannot be read off it.
    let (ok, listing) = hsm.pkcs11_tool("cairn-root", &["--list-objects", "--type", "privkey"]);
    assert!(ok && listing.contains("org-root") && listing.contains("never extractable"), "{listing}");

    // A tier chained to that root.
    let sdir = tmp.path().join("server");
    std::fs::create_dir(&sdir).unwrap();
    let upstream = format!(
        "UpstreamAuthority \"pkcs11\" {{ plugin_data {{ module_path = \"{MODULE}\" token_label = \"cairn-root\" pin_file = \"{}\" key_label = \"org-root\" cert_file_path = \"{}\" }} }}",
        hsm.pin_file.display(),
        root.display()
    );
    let opts = ServerOpts { extra_plugins: upstream, env: hsm.env(), ..ServerOpts::default() };
    let s = TestServer::start(&sdir, &opts);
    let bundle = tmp.path().join("bundle.pem");
    std::fs::write(&bundle, s.cli_ok(&["bundle", "show"])).unwrap();
    assert_eq!(
        openssl_x509(&bundle, &["-fingerprint", "-sha256"]),
        openssl_x509(&root, &["-fingerprint", "-sha256"]),
        "the bundle is the token root"
    );
    verify_svid(&s, tmp.path(), "spiffe://example.org/under-hsm-root", &root);

    // `cairn hsm list` and `cairn hsm check` see the same.
    let (ok, json) =
        run(hsm.cmd(CAIRN).args(["hsm", "list", "-tokenLabel", "cairn-root", "-pinFile"]).arg(&hsm.pin_file).args(["-output", "json"]));
    assert!(ok, "{json}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let private = doc["keys"].as_array().unwrap().iter().find(|k| k["label"] == "org-root" && k["class"] == "private").unwrap();
    assert_eq!((private["extractable"].as_bool(), private["key_type"].as_str()), (Some(false), Some("ec-p384")), "{private}");
    let (ok, out) = run(hsm.cmd(CAIRN).args(["hsm", "list"]));
    assert!(ok && out.contains("Token \"cairn-root\""), "{out}");
    let (ok, out) = run(hsm.cmd(CAIRN).args(["hsm", "check", "-config"]).arg(&s.config));
    assert!(ok && out.contains("UpstreamAuthority \"pkcs11\"") && out.contains("OK"), "{out}");
}

#[test]
fn token_errors_are_clear_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(tmp.path(), &["cairn-errs"]);
    let case_with = |name: &str, km: String, extra_server: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let opts = ServerOpts { key_manager_block: Some(km), extra_server: extra_server.to_owned(), ..ServerOpts::default() };
        let config = write_config(&dir, free_port(), &opts);
        let err = start_fails(&config, &hsm.env());
        // Nothing was written: no datastore, no keys, no socket.
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(left, ["server.conf"], "{name}: files written on a refused start: {left:?}\n{err}");
        err
    };
    let case = |name: &str, km: String| case_with(name, km, "");
    let km = |module: &str, token: &str, pin: &str| {
        format!("KeyManager \"pkcs11\" {{ plugin_data {{ module_path = \"{module}\" token_label = \"{token}\" {pin} }} }}")
    };
    let pin_file = format!("pin_file = \"{}\"", hsm.pin_file.display());

    let err = case("module", km("/nonexistent/libpkcs11.so", "cairn-errs", &pin_file));
    assert!(err.contains("/nonexistent/libpkcs11.so") && err.contains("not found"), "{err}");
    let err = case("token", km(MODULE, "no-such-token", &pin_file));
    assert!(err.contains("no PKCS#11 token labelled \"no-such-token\"") && err.contains("cairn-errs"), "{err}");
    let err = case("pin", km(MODULE, "cairn-errs", "pin = \"987654\""));
    assert!(err.contains("PIN is incorrect") && !err.contains("987654"), "{err}");
    let err = case("twopins", km(MODULE, "cairn-errs", &format!("pin = \"1\" {pin_file}")));
    assert!(err.contains("plugins.KeyManager.pkcs11.plugin_data.pin") && err.contains("exactly one"), "{err}");
    let err = case("slot", km(MODULE, "cairn-errs", &format!("{pin_file} slot = 0")));
    assert!(err.contains("slot") && err.contains("token_label"), "{err}");
    let err = case_with("rsa", km(MODULE, "cairn-errs", &pin_file), "ca_key_type = \"rsa-2048\"");
    assert!(err.contains("ec-p256 and ec-p384"), "{err}");
    // A token that does not offer CKM_ECDSA (SoftHSM told to offer only keygen and SHA-256).
    let crippled = tmp.path().join("no-ecdsa.conf");
    std::fs::write(
        &crippled,
        format!("{}slots.mechanisms = CKM_EC_KEY_PAIR_GEN,CKM_SHA256\n", std::fs::read_to_string(&hsm.conf).unwrap()),
    )
    .unwrap();
    let dir = tmp.path().join("mechanism");
    std::fs::create_dir(&dir).unwrap();
    let config = write_config(
        &dir,
        free_port(),
        &ServerOpts { key_manager_block: Some(km(MODULE, "cairn-errs", &pin_file)), ..ServerOpts::default() },
    );
    let err = start_fails(&config, &[("SOFTHSM2_CONF".to_owned(), crippled.display().to_string())]);
    assert!(err.contains("does not support CKM_ECDSA") && err.contains("cairn-errs"), "{err}");

    // No failed start created keys on the token.
    let (_, listing) = hsm.pkcs11_tool("cairn-errs", &["--list-objects"]);
    assert!(!listing.contains("cairn:"), "a refused start created keys:\n{listing}");
}

/// Item 3: a nested tree whose every key is on the token. The root's upstream key (from the
/// key ceremony) and its CA and JWT keys, and a downstream's CA and JWT keys, share one token
/// under different label prefixes. The downstream behaves as one with disk keys: its workloads'
/// X509-SVIDs chain to the token root, and its JWT key, published upward, validates a JWT-SVID
/// from under it at an agent of the root tier and with PyJWT.
#[test]
fn a_nested_tree_with_every_key_on_the_token() {
    use crate::nested::{PYJWT_ROOT, downstream_setup, fetch_x509, jwt_kids, own_kid, wait_until, workload_agent};
    require("openssl");
    require("python3");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let hsm = SoftHsm::new(base, &["cairn-tree"]);
    let root_pem = base.join("org-root.pem");
    let (ok, out) = run(hsm
        .cmd(CAIRN)
        .args(["hsm", "init-root", "-module", MODULE, "-tokenLabel", "cairn-tree", "-pinFile"])
        .arg(&hsm.pin_file)
        .args(["-keyLabel", "org-root", "-keyType", "ec-p256", "-trustDomain", "example.org", "-certOut"])
        .arg(&root_pem));
    assert!(ok, "{out}");
    let rdir = base.join("root");
    std::fs::create_dir(&rdir).unwrap();
    let root_opts = ServerOpts {
        key_manager_block: Some(hsm.key_manager("cairn-tree", "root:")),
        extra_plugins: format!(
            "UpstreamAuthority \"pkcs11\" {{ plugin_data {{ module_path = \"{MODULE}\" token_label = \"cairn-tree\" pin_file = \"{}\" key_label = \"org-root\" cert_file_path = \"{}\" }} }}",
            hsm.pin_file.display(),
            root_pem.display()
        ),
        env: hsm.env(),
        ..ServerOpts::default()
    };
    let root = TestServer::start(&rdir, &root_opts);
    let (mut opts, _upstream_agent) =
        downstream_setup(base, "region1", &root, "experimental { jwt_publish_grace = \"1s\" ca_rotation_interval = \"1s\" }");
    opts.key_manager_block = Some(hsm.key_manager("cairn-tree", "region1:"));
    opts.env = hsm.env();
    let d1 = TestServer::start(&base.join("region1"), &opts);
    let a1 = workload_agent(base, "agent1", &d1, "spiffe://example.org/region1/web");
    let a0 = workload_agent(base, "agent0", &root, "spiffe://example.org/hq/api");

    // Every key is on the token, none on disk.
    let (_, listing) = hsm.pkcs11_tool("cairn-tree", &["--list-objects", "--type", "privkey"]);
    for label in ["org-root", "root:x509-CA-A", "root:JWT-Signer-A", "region1:x509-CA-A", "region1:JWT-Signer-A"] {
        assert!(listing.contains(&format!("label:      {label}\n")), "{label} not on the token:\n{listing}");
    }
    assert!(!rdir.join("keys.json").exists() && !base.join("region1/keys.json").exists());

    // The workload under region1 gets an SVID that chains to the token root.
    let w1 = fetch_x509(&a1, &base.join("w1"));
    let (chain, _) = crate::nested::verify_through_chain(base, &w1.join("svid.0.pem"), &root_pem, "w1");
    assert!(chain.len() >= 3, "leaf + region1 CA + root tier CA");

    // region1's JWT key (on the token) reaches the root; a JWT-SVID from under region1
    // validates at the root tier's agent and with PyJWT against the root's bundle.
    let k_d1 = own_kid(&d1);
    wait_until("region1's JWT key at the root", Duration::from_secs(20), || jwt_kids(&root).contains(&k_d1));
    let out = a1.api(&["fetch", "jwt", "-audience", "orders"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let token = text.lines().skip_while(|l| !l.starts_with("token(")).nth(1).unwrap().trim().to_owned();
    wait_until("agent0 to validate region1's JWT-SVID", Duration::from_secs(20), || {
        let out = a0.api(&["validate", "jwt", "-audience", "orders", "-svid", &token]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/region1/web")
    });
    let bundle = base.join("root-bundle.json");
    std::fs::write(&bundle, root.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let (ok, out) = run(Command::new("python3").arg("-c").arg(PYJWT_ROOT).arg(&token).arg(&bundle).arg("orders"));
    assert!(ok && out.contains("OK spiffe://example.org/region1/web"), "{out}");
}
