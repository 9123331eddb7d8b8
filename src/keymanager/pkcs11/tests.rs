#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! The key-manager contract and the error cases, on a real SoftHSM2 token.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, when the module is initialised, and a test cannot set
//! an environment variable in a running test process (edition 2024 makes that unsafe, and
//! cairn forbids unsafe code). So each test here re-runs itself in a child process, with its
//! own token directory in `SOFTHSM2_CONF`; the parent asserts that the child ran and passed.

use super::*;
use std::path::Path;
use std::process::Command;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "1234";
const CHILD: &str = "CAIRN_SOFTHSM_CHILD";

/// In the parent: makes a token directory with `tokens` initialised (PIN 1234), runs `test`
/// in a child with `SOFTHSM2_CONF` pointing there, asserts it passed, and returns `false`.
/// In the child: returns `true`, and the caller runs the test body.
fn in_softhsm(test: &str, tokens: &[&str]) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    assert!(
        Path::new(MODULE).is_file(),
        "{MODULE} is missing: install SoftHSM2 and OpenSC (apt-get install softhsm2 opensc, or bash scripts/install-test-deps.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            dir.path().display()
        ),
    )
    .unwrap();
    for t in tokens {
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", t, "--pin", PIN, "--so-pin", "5678"])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .expect("softhsm2-util (apt-get install softhsm2)");
        assert!(out.status.success(), "softhsm2-util: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child test {test} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 passed"), "child did not run {test}:\n{stdout}");
    false
}

fn config(token: &str, prefix: &str) -> Pkcs11Config {
    Pkcs11Config {
        token: TokenConfig {
            module_path: MODULE.into(),
            token_label: token.into(),
            pin: PinSource::Value(Zeroizing::new(PIN.into())),
            max_sessions: DEFAULT_MAX_SESSIONS,
        },
        key_label_prefix: prefix.into(),
    }
}

fn pkcs11_tool(args: &[&str]) -> (bool, String) {
    let out = Command::new("pkcs11-tool").arg("--module").arg(MODULE).args(args).output().expect("pkcs11-tool (apt-get install opensc)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn contract_persistence_and_custody_on_softhsm() {
    if !in_softhsm("keymanager::pkcs11::tests::contract_persistence_and_custody_on_softhsm", &["cairn-km"]) {
        return;
    }
    let km = Pkcs11KeyManager::open(&config("cairn-km", "cairn:")).unwrap();
    crate::keymanager::tests::conformance(&km, &[KeyType::EcP256, KeyType::EcP384]).await;
    let key = km.get_key("x509-CA-A").await.unwrap().unwrap();
    assert!(key.may_block(), "an HSM key signs off the async runtime");
    assert_eq!(key.key_type(), KeyType::EcP384);

    // A second manager (as after a restart) finds the same keys by label.
    let again = Pkcs11KeyManager::open(&config("cairn-km", "cairn:")).unwrap();
    assert_eq!(again.get_key("x509-CA-A").await.unwrap().unwrap().spki_der(), key.spki_der());
    // Another prefix (another server on the same token) sees none of them.
    let other = Pkcs11KeyManager::open(&config("cairn-km", "other:")).unwrap();
    assert!(other.get_key("x509-CA-A").await.unwrap().is_none());

    // Custody, as OpenSC's pkcs11-tool (not cairn) sees it: one private key per id, sensitive
    // and never extractable, and reading its value fails.
    let (ok, listing) = pkcs11_tool(&["--token-label", "cairn-km", "--login", "--pin", PIN, "--list-objects", "--type", "privkey"]);
    assert!(ok, "{listing}");
    for label in ["cairn:x509-CA-A", "cairn:JWT-Signer-A"] {
        let block = listing
            .split("Private Key Object")
            .find(|b| b.contains(&format!("label:      {label}\n")))
            .unwrap_or_else(|| panic!("{label} not listed:\n{listing}"));
        assert!(block.contains("sensitive") && block.contains("never extractable"), "{label} is not sensitive/non-extractable:\n{block}");
        assert!(!block.contains("Access:       local, extractable"), "{block}");
    }
    assert_eq!(listing.matches("Private Key Object").count(), 2, "replaced keys are destroyed, not left behind:\n{listing}");
    // CKA_VALUE, asked for through cryptoki directly (not cairn's code): the token answers
    // that it is sensitive and returns no bytes.
    {
        use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
        let ctx = cryptoki::context::Pkcs11::new(MODULE).unwrap();
        // cairn already initialised the module in this process; that answer is expected.
        let _ = ctx.initialize(cryptoki::context::CInitializeArgs::new(cryptoki::context::CInitializeFlags::OS_LOCKING_OK));
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "cairn-km")
            .unwrap();
        let session = ctx.open_ro_session(slot).unwrap();
        let _ = session.login(cryptoki::session::UserType::User, Some(&AuthPin::from(PIN)));
        let found =
            session.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(b"cairn:x509-CA-A".to_vec())]).unwrap();
        let [private] = found.as_slice() else { panic!("expected one private key, found {}", found.len()) };
        let info = session.get_attribute_info(*private, &[AttributeType::Value]).unwrap();
        assert!(matches!(info.as_slice(), [AttributeInfo::Sensitive]), "CKA_VALUE must not be retrievable: {info:?}");
        let attrs = session.get_attributes(*private, &[AttributeType::Value, AttributeType::Extractable]).unwrap();
        assert!(!attrs.iter().any(|a| matches!(a, Attribute::Value(_))), "CKA_VALUE was returned");
        assert!(attrs.iter().any(|a| matches!(a, Attribute::Extractable(false))), "{attrs:?}");
    }

    // RSA is refused with a message that says what the token keeps.
    let err = km.generate_key("x509-CA-B", KeyType::Rsa2048).await.unwrap_err().to_string();
    assert!(err.contains("ec-p256 and ec-p384"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_cap_of_one_serves_every_concurrent_signer_on_one_session() {
    if !in_softhsm("keymanager::pkcs11::tests::a_session_cap_of_one_serves_every_concurrent_signer_on_one_session", &["cairn-cap"]) {
        return;
    }
    let mut cfg = config("cairn-cap", "c:");
    cfg.token.max_sessions = 1;
    let km = Pkcs11KeyManager::open(&cfg).unwrap();
    let key = km.generate_key("JWT-Signer-A", KeyType::EcP256).await.unwrap();
    let point = {
        let spki = key.spki_der();
        x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki).unwrap().1.subject_public_key.data.to_vec()
    };
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let key = Arc::clone(&key);
            tokio::spawn(async move {
                let mut sigs = Vec::new();
                for j in 0..10 {
                    let msg = format!("capped {i}.{j}").into_bytes();
                    let (k, m) = (Arc::clone(&key), msg.clone());
                    sigs.push((msg, crate::keymanager::sign_off_runtime(key.as_ref(), move || k.sign_jws(&m)).await.unwrap().unwrap()));
                }
                sigs
            })
        })
        .collect();
    let mut n = 0;
    for t in tasks {
        for (msg, sig) in t.await.unwrap() {
            aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED, &point)
                .verify(&msg, &sig)
                .unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 80);

    // The cap itself, seen from inside the PKCS#11 calls: with `max_sessions = 2`, 8 threads
    // that each hold a session for a while never hold more than 2 at once, and do reach 2.
    let mut cfg = config("cairn-cap", "c:");
    cfg.token.max_sessions = 2;
    let token = cfg.token.open().unwrap();
    let (inside, most) = (std::sync::atomic::AtomicUsize::new(0), std::sync::atomic::AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..10 {
                    token
                        .with_session("C_GetSessionInfo", |session| {
                            let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                            most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(2));
                            inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            session.get_session_info().map(|_| ())
                        })
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(most.into_inner(), 2, "sessions in use at once under max_sessions = 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_signatures_all_verify() {
    if !in_softhsm("keymanager::pkcs11::tests::concurrent_signatures_all_verify", &["cairn-conc"]) {
        return;
    }
    let km = Pkcs11KeyManager::open(&config("cairn-conc", "c:")).unwrap();
    let key = km.generate_key("JWT-Signer-A", KeyType::EcP256).await.unwrap();
    let spki = key.spki_der();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let key = Arc::clone(&key);
        tasks.push(tokio::spawn(async move {
            let mut sigs = Vec::new();
            for j in 0..20 {
                let msg = format!("message {i}.{j}").into_bytes();
                let k = Arc::clone(&key);
                let m = msg.clone();
                let jws = crate::keymanager::sign_off_runtime(key.as_ref(), move || k.sign_jws(&m)).await.unwrap().unwrap();
                let k = Arc::clone(&key);
                let m = msg.clone();
                let der = crate::keymanager::sign_off_runtime(key.as_ref(), move || rcgen::SigningKey::sign(k.as_ref(), &m))
                    .await
                    .unwrap()
                    .unwrap();
                sigs.push((msg, jws, der));
            }
            sigs
        }));
    }
    let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki).unwrap();
    let point = parsed.subject_public_key.data.to_vec();
    let mut n = 0;
    for t in tasks {
        for (msg, jws, der) in t.await.unwrap() {
            aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED, &point)
                .verify(&msg, &jws)
                .unwrap();
            aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1, &point).verify(&msg, &der).unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 320);
}

use x509_parser::prelude::FromDer as _;

#[tokio::test]
async fn each_failure_has_its_clear_error() {
    if !in_softhsm("keymanager::pkcs11::tests::each_failure_has_its_clear_error", &["cairn-err", "cairn-pin"]) {
        return;
    }
    let msg = |c: &Pkcs11Config| Pkcs11KeyManager::open(c).unwrap_err().to_string();

    let mut c = config("cairn-err", "e:");
    c.token.module_path = "/nonexistent/libpkcs11.so".into();
    let err = msg(&c);
    assert!(err.contains("/nonexistent/libpkcs11.so") && err.contains("not found"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let not_a_module = dir.path().join("lib.so");
    std::fs::write(&not_a_module, b"not a shared object").unwrap();
    c.token.module_path = not_a_module.clone();
    let err = msg(&c);
    assert!(err.contains(&not_a_module.display().to_string()), "{err}");

    let err = msg(&config("no-such-token", "e:"));
    assert!(err.contains("no-such-token") && err.contains("cairn-err") && err.contains("cairn-pin"), "lists what is present: {err}");

    // The wrong PIN, on a token nobody in this process has logged into.
    let mut c = config("cairn-pin", "e:");
    c.token.pin = PinSource::Value(Zeroizing::new("0000".into()));
    let err = msg(&c);
    assert!(err.contains("cairn-pin") && err.contains("PIN is incorrect"), "{err}");
    assert!(!err.contains("0000"), "the PIN is never shown: {err}");
    assert!(!format!("{c:?}").contains("0000"), "the config's Debug hides the PIN");

    // PIN sources: a file (0600, newline ignored), an unset variable, an open file.
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    std::fs::set_permissions(&pin_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    c.token.pin = PinSource::File(pin_file.clone());
    let km = Pkcs11KeyManager::open(&c).unwrap();
    std::fs::set_permissions(&pin_file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let err = msg(&c);
    assert!(err.contains("chmod 600") && err.contains(&pin_file.display().to_string()), "{err}");
    c.token.pin = PinSource::Env("CAIRN_TEST_UNSET_PIN_VARIABLE".into());
    let err = msg(&c);
    assert!(err.contains("CAIRN_TEST_UNSET_PIN_VARIABLE") && err.contains("not set"), "{err}");

    // A missing key is `None` (the CA manager turns that into its "keys missing" refusal,
    // naming the token), and the location names the token, module and labels.
    assert!(km.get_key("x509-CA-A").await.unwrap().is_none());
    let loc = km.location().unwrap();
    assert!(loc.contains("cairn-pin") && loc.contains(MODULE) && loc.contains("e:<id>"), "{loc}");
    let token = Arc::new(c_token("cairn-pin"));
    let err = Pkcs11Key::find(token, "root-key").unwrap_err().to_string();
    assert!(err.contains("cairn-pin") && err.contains("root-key"), "{err}");
}

fn c_token(label: &str) -> Token {
    TokenConfig {
        module_path: MODULE.into(),
        token_label: label.into(),
        pin: PinSource::Value(Zeroizing::new(PIN.into())),
        max_sessions: DEFAULT_MAX_SESSIONS,
    }
    .open()
    .unwrap()
}

#[tokio::test]
async fn an_interrupted_replacement_is_adopted() {
    if !in_softhsm("keymanager::pkcs11::tests::an_interrupted_replacement_is_adopted", &["cairn-crash"]) {
        return;
    }
    let token = c_token("cairn-crash");
    // A crash after the old pair was destroyed and before the rename leaves only the pending pair.
    let object = token.generate_ec(Curve::P256, "k:x509-CA-A.pending", b"id-1").unwrap();
    let km = Pkcs11KeyManager::open(&config("cairn-crash", "k:")).unwrap();
    let key = km.get_key("x509-CA-A").await.unwrap().expect("the pending pair is adopted");
    assert_eq!(rcgen::PublicKeyData::der_bytes(key.as_ref()), object.point.as_slice());
    assert!(token.find_key("k:x509-CA-A.pending").unwrap().is_none());
    // A crash before the old pair was destroyed: the old key stays the key; the next generate
    // clears the stale pending pair.
    token.generate_ec(Curve::P256, "k:x509-CA-A.pending", b"id-2").unwrap();
    assert_eq!(km.get_key("x509-CA-A").await.unwrap().unwrap().spki_der(), key.spki_der());
    let fresh = km.generate_key("x509-CA-A", KeyType::EcP256).await.unwrap();
    assert_ne!(fresh.spki_der(), key.spki_der());
    let listed = token.list_keys("k:").unwrap();
    assert_eq!(listed.len(), 2, "one pair, nothing pending: {listed:?}");
    assert!(listed.iter().all(|o| o.label == "k:x509-CA-A"), "{listed:?}");
    let private = listed.iter().find(|o| o.class == "private").unwrap();
    assert_eq!((private.sensitive, private.extractable, private.never_extractable), (Some(true), Some(false), Some(true)));
    assert_eq!(private.key_type, "ec-p256");
}

#[test]
fn signature_and_point_conversions() {
    // CKA_EC_POINT as a DER OCTET STRING and bare; garbage refused.
    use aws_lc_rs::signature::KeyPair as _;
    let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = pair.public_key().as_ref().to_vec();
    assert_eq!(point.len(), 65);
    let mut wrapped = vec![0x04, 65];
    wrapped.extend_from_slice(&point);
    assert_eq!(Curve::P256.point_from_ec_point(&wrapped).unwrap(), point);
    assert_eq!(Curve::P256.point_from_ec_point(&point).unwrap(), point);
    assert!(Curve::P384.point_from_ec_point(&wrapped).is_none());
    let mut bad = point.clone();
    bad[10] ^= 1;
    assert!(Curve::P256.point_from_ec_point(&bad).is_none(), "a point off the curve is refused");
    // r || s to DER: the length must be right.
    assert!(Curve::P256.raw_to_der(&[1u8; 64]).unwrap().starts_with(&[0x30]));
    assert!(Curve::P256.raw_to_der(&[1u8; 63]).is_none());
    assert_eq!(Curve::from_params_der(Curve::P384.params_der()), Some(Curve::P384));
    assert!(format!("{:?}", PinSource::Value(Zeroizing::new("9876".into()))).contains("redacted"));
}
