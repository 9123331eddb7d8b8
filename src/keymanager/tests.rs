#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
use super::*;
use std::os::unix::fs::PermissionsExt;

/// One contract, run against every key manager.
/// The contract a key manager must keep; PKCS#11 and Vault transit run it too.
pub(crate) async fn conformance(km: &dyn KeyManager, key_types: &[KeyType]) {
    // RSA last: the disk test below reopens the file and reloads this RSA key.
    for &kt in key_types {
        let key = km.generate_key("x509-CA-A", kt).await.unwrap();
        assert_eq!(key.key_type(), kt);
        let again = km.get_key("x509-CA-A").await.unwrap().unwrap();
        assert_eq!(again.spki_der(), key.spki_der());
        // A JWS signature verifies with an independent verifier (aws-lc's public-key API on the SPKI).
        let msg = b"header.claims";
        let sig = key.sign_jws(msg).unwrap();
        let (alg, len): (&dyn aws_lc_rs::signature::VerificationAlgorithm, usize) = match kt {
            KeyType::EcP256 => (&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED, 64),
            KeyType::EcP384 => (&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED, 96),
            // RS256: PKCS#1 v1.5 with SHA-256, as long as the modulus.
            KeyType::Rsa2048 => (&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, 256),
            other => panic!("not in this loop: {other:?}"),
        };
        assert_eq!(sig.len(), len);
        let spki_der = key.spki_der();
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki_der).unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref()).verify(msg, &sig).unwrap();
        assert!(aws_lc_rs::signature::UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref()).verify(b"other", &sig).is_err());
    }
    // Regenerating an id replaces the key.
    let a = km.generate_key("JWT-Signer-A", KeyType::EcP256).await.unwrap();
    let b = km.generate_key("JWT-Signer-A", KeyType::EcP256).await.unwrap();
    assert_ne!(a.spki_der(), b.spki_der());
    assert_eq!(km.get_key("JWT-Signer-A").await.unwrap().unwrap().spki_der(), b.spki_der());
    assert!(km.get_key("missing").await.unwrap().is_none());
}

use x509_parser::prelude::FromDer;

/// What memory and disk keep: every type, RSA last.
const ALL_TYPES: &[KeyType] = &[KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048];

#[tokio::test]
async fn memory_conformance() {
    conformance(&MemoryKeyManager::new(), ALL_TYPES).await;
}

#[tokio::test]
async fn disk_conformance_and_persistence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let km = DiskKeyManager::open(&path).unwrap();
    conformance(&km, ALL_TYPES).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file must be private");
    let spki = km.get_key("JWT-Signer-A").await.unwrap().unwrap().spki_der();
    drop(km);
    let reopened = DiskKeyManager::open(&path).unwrap();
    assert_eq!(reopened.get_key("JWT-Signer-A").await.unwrap().unwrap().spki_der(), spki);
    assert_eq!(reopened.get_key("x509-CA-A").await.unwrap().unwrap().key_type(), KeyType::Rsa2048);
    // No temp files are left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn disk_rejects_corrupt_file_without_touching_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    std::fs::write(&path, b"{\"keys\": {\"a\": {\"key_type\": \"ec-p256\", \"pkcs8\": \"AAAA\"}}}").unwrap();
    let err = DiskKeyManager::open(&path).unwrap_err().to_string();
    assert!(err.contains("key a"), "{err}");
    std::fs::write(&path, b"garbage").unwrap();
    let err = DiskKeyManager::open(&path).unwrap_err().to_string();
    assert!(err.contains("not a cairn key file"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"garbage");
}

#[tokio::test]
async fn key_debug_redacts() {
    let km = MemoryKeyManager::new();
    let k = km.generate_key("k", KeyType::EcP256).await.unwrap();
    let dbg = format!("{k:?}");
    assert!(dbg.contains("\"k\"") && !dbg.contains("pkcs8"), "{dbg}");
}

#[tokio::test]
async fn rsa_key_types_parse_and_have_their_size() {
    assert_eq!("rsa-2048".parse::<KeyType>().unwrap(), KeyType::Rsa2048);
    assert_eq!("rsa-4096".parse::<KeyType>().unwrap(), KeyType::Rsa4096);
    assert_eq!(KeyType::Rsa4096.jws_alg(), "RS256");
    let k = MemoryKeyManager::new().generate_key("x509-CA-B", KeyType::Rsa4096).await.unwrap();
    assert_eq!(k.sign_jws(b"m").unwrap().len(), 512, "a 4096-bit key signs 512-byte signatures");
}

#[tokio::test]
async fn a_pem_key_goes_through_the_key_seam() {
    for (alg, kt) in [(&rcgen::PKCS_ECDSA_P256_SHA256, KeyType::EcP256), (&rcgen::PKCS_ECDSA_P384_SHA384, KeyType::EcP384)] {
        let pair = rcgen::KeyPair::generate_for(alg).unwrap();
        let key = key_from_pem("upstream", &pair.serialize_pem()).unwrap();
        assert_eq!(key.key_type(), kt);
        assert_eq!(key.spki_der(), rcgen::PublicKeyData::subject_public_key_info(&pair));
        assert!(!key.may_block(), "keys in memory sign inline");
    }
    let rsa = KeyType::Rsa4096.generate_key_pair().unwrap();
    assert_eq!(key_from_pem("u", &rsa.serialize_pem()).unwrap().key_type(), KeyType::Rsa4096);
    // SEC1 and PKCS#1 files, as openssl writes them, load too.
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let sec1 = openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout"]);
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
    assert_eq!(key_from_pem("u", &sec1).unwrap().key_type(), KeyType::EcP256);
    let pkcs1 = openssl(&["genrsa", "-traditional", "2048"]);
    assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"), "{pkcs1}");
    assert_eq!(key_from_pem("u", &pkcs1).unwrap().key_type(), KeyType::Rsa2048);
    let sec1 = rcgen_sec1_p384();
    assert_eq!(key_from_pem("u", &sec1).unwrap().key_type(), KeyType::EcP384);
    let err = key_from_pem("u", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap_err().to_string();
    assert!(err.contains("cannot load private key"), "{err}");
}

/// A key whose backend blocks: its signature must be taken off the async worker.
#[derive(Debug)]
struct BlockingKey(Arc<dyn Key>);

impl rcgen::PublicKeyData for BlockingKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl rcgen::SigningKey for BlockingKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

impl Key for BlockingKey {
    fn id(&self) -> &str {
        self.0.id()
    }
    fn key_type(&self) -> KeyType {
        self.0.key_type()
    }
    fn sign_jws(&self, msg: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        self.0.sign_jws(msg)
    }
    fn may_block(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_keys_sign_off_the_runtime_and_memory_keys_inline() {
    let inner = MemoryKeyManager::new().generate_key("k", KeyType::EcP256).await.unwrap();
    let runtime_thread = std::thread::current().id();
    let here = sign_off_runtime(inner.as_ref(), move || std::thread::current().id()).await.unwrap();
    assert_eq!(here, runtime_thread, "a memory key signs on the calling worker");
    let blocking = BlockingKey(inner);
    let there = sign_off_runtime(&blocking, move || std::thread::current().id()).await.unwrap();
    assert_ne!(there, runtime_thread, "a blocking key signs on the blocking pool");
}

/// A P-384 key in SEC1 form (`EC PRIVATE KEY`), converted by aws-lc from a fresh key.
fn rcgen_sec1_p384() -> String {
    let out = std::process::Command::new("openssl").args(["ecparam", "-name", "secp384r1", "-genkey", "-noout"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}
