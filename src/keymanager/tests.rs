#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
use super::*;
use std::os::unix::fs::PermissionsExt;

/// One contract, run against every key manager.
fn conformance(km: &dyn KeyManager) {
    // RSA last: the disk test below reopens the file and reloads this RSA key.
    for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
        let key = km.generate_key("x509-CA-A", kt).unwrap();
        assert_eq!(key.key_type(), kt);
        let again = km.get_key("x509-CA-A").unwrap().unwrap();
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
    let a = km.generate_key("JWT-Signer-A", KeyType::EcP256).unwrap();
    let b = km.generate_key("JWT-Signer-A", KeyType::EcP256).unwrap();
    assert_ne!(a.spki_der(), b.spki_der());
    assert_eq!(km.get_key("JWT-Signer-A").unwrap().unwrap().spki_der(), b.spki_der());
    assert!(km.get_key("missing").unwrap().is_none());
}

use x509_parser::prelude::FromDer;

#[test]
fn memory_conformance() {
    conformance(&MemoryKeyManager::new());
}

#[test]
fn disk_conformance_and_persistence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let km = DiskKeyManager::open(&path).unwrap();
    conformance(&km);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file must be private");
    let spki = km.get_key("JWT-Signer-A").unwrap().unwrap().spki_der();
    drop(km);
    let reopened = DiskKeyManager::open(&path).unwrap();
    assert_eq!(reopened.get_key("JWT-Signer-A").unwrap().unwrap().spki_der(), spki);
    assert_eq!(reopened.get_key("x509-CA-A").unwrap().unwrap().key_type(), KeyType::Rsa2048);
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

#[test]
fn key_debug_redacts() {
    let km = MemoryKeyManager::new();
    let k = km.generate_key("k", KeyType::EcP256).unwrap();
    let dbg = format!("{k:?}");
    assert!(dbg.contains("\"k\"") && !dbg.contains("pkcs8"), "{dbg}");
}

#[test]
fn rsa_key_types_parse_and_have_their_size() {
    assert_eq!("rsa-2048".parse::<KeyType>().unwrap(), KeyType::Rsa2048);
    assert_eq!("rsa-4096".parse::<KeyType>().unwrap(), KeyType::Rsa4096);
    assert_eq!(KeyType::Rsa4096.jws_alg(), "RS256");
    let k = MemoryKeyManager::new().generate_key("x509-CA-B", KeyType::Rsa4096).unwrap();
    assert_eq!(k.sign_jws(b"m").unwrap().len(), 512, "a 4096-bit key signs 512-byte signatures");
}
