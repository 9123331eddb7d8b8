#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "test code: a panic is a failed test")]

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SignatureAlgorithm, date_time_ymd,
};

use std::slice::from_ref;

use super::*;

/// 2025-01-01T00:00:00Z.
const NOW: i64 = 1_735_689_600;

/// A CA made with rcgen: its parameters and key sign what it issues.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: Vec<u8>,
}

fn uri(s: &str) -> SanType {
    SanType::URI(Ia5String::try_from(s).unwrap())
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![uri("spiffe://example.org")];
    params
}

fn root_with(alg: &'static SignatureAlgorithm, edit: impl FnOnce(&mut CertificateParams)) -> Ca {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = ca_params("root");
    edit(&mut params);
    let der = params.self_signed(&key).unwrap().der().to_vec();
    Ca { params, key, der }
}

fn new_root() -> Ca {
    root_with(&rcgen::PKCS_ECDSA_P256_SHA256, |_| {})
}

impl Ca {
    fn sign(&self, params: &CertificateParams, key: &KeyPair) -> Vec<u8> {
        let issuer = Issuer::from_params(&self.params, &self.key);
        params.signed_by(key, &issuer).unwrap().der().to_vec()
    }

    fn intermediate_with(&self, name: &str, edit: impl FnOnce(&mut CertificateParams)) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = ca_params(name);
        edit(&mut params);
        let der = self.sign(&params, &key);
        Ca { params, key, der }
    }

    fn intermediate(&self, name: &str) -> Ca {
        self.intermediate_with(name, |_| {})
    }

    /// A leaf as SPIRE issues it, changed by `edit`.
    fn leaf_with(&self, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = leaf_params();
        edit(&mut params);
        self.sign(&params, &key)
    }

    fn leaf(&self) -> Vec<u8> {
        self.leaf_with(|_| {})
    }
}

type Edit = Box<dyn FnOnce(&mut CertificateParams)>;

fn leaf_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "workload");
    params.subject_alt_names = vec![uri("spiffe://example.org/workload")];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment, KeyUsagePurpose::KeyAgreement];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params
}

#[test]
fn good_leaf() {
    let root = new_root();
    let leaf = root.leaf();
    let id = leaf_spiffe_id(&leaf).unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/workload");
    assert_eq!(validate_x509_svid_chain(from_ref(&leaf)).unwrap(), id);
    assert_eq!(verify_x509_svid(&[leaf], &[root.der], NOW).unwrap(), id);
}

#[test]
fn leaf_rules() {
    let root = new_root();
    let cases: Vec<(&str, Edit, X509SvidError)> = vec![
        ("ca leaf", Box::new(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)), X509SvidError::LeafIsCa),
        (
            "two uri sans",
            Box::new(|p| p.subject_alt_names.push(uri("spiffe://example.org/other"))),
            X509SvidError::MultipleUriSans { count: 2 },
        ),
        (
            "no uri san",
            Box::new(|p| {
                p.subject_alt_names = vec![SanType::DnsName(Ia5String::try_from("a.example").unwrap())];
            }),
            X509SvidError::NoUriSan,
        ),
        ("no san at all", Box::new(|p| p.subject_alt_names.clear()), X509SvidError::NoUriSan),
        (
            "root path id",
            Box::new(|p| p.subject_alt_names = vec![uri("spiffe://example.org")]),
            X509SvidError::LeafIdWithoutPath { id: SpiffeId::new("spiffe://example.org").unwrap() },
        ),
        (
            "not a spiffe uri",
            Box::new(|p| p.subject_alt_names = vec![uri("https://example.org/workload")]),
            X509SvidError::InvalidSpiffeId { uri: "https://example.org/workload".into(), source: SpiffeIdError::WrongScheme },
        ),
        (
            "invalid spiffe id",
            Box::new(|p| p.subject_alt_names = vec![uri("spiffe://example.org/a/")]),
            X509SvidError::InvalidSpiffeId { uri: "spiffe://example.org/a/".into(), source: SpiffeIdError::TrailingSlash },
        ),
        ("keyCertSign", Box::new(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)), X509SvidError::LeafKeyCertSign),
        ("cRLSign", Box::new(|p| p.key_usages.push(KeyUsagePurpose::CrlSign)), X509SvidError::LeafCrlSign),
        ("no key usage", Box::new(|p| p.key_usages.clear()), X509SvidError::MissingKeyUsage { position: CertPosition::Chain(0) }),
        (
            "no digitalSignature",
            Box::new(|p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]),
            X509SvidError::MissingDigitalSignature,
        ),
        (
            "key usage not critical",
            Box::new(|p| {
                p.key_usages.clear();
                // KeyUsage ::= BIT STRING { digitalSignature (0) }
                let ku = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x02, 0x07, 0x80]);
                p.custom_extensions.push(ku);
            }),
            X509SvidError::KeyUsageNotCritical,
        ),
    ];
    for (name, edit, expected) in cases {
        let leaf = root.leaf_with(edit);
        assert_eq!(leaf_spiffe_id(&leaf), Err(expected.clone()), "{name}");
        assert_eq!(validate_x509_svid_chain(&[leaf]), Err(expected), "{name}");
    }
}

#[test]
fn leaf_eku_rules() {
    let root = new_root();
    let cases: Vec<(&str, Edit, X509SvidError)> = vec![
        (
            "serverAuth only",
            Box::new(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]),
            X509SvidError::IncompleteExtendedKeyUsage,
        ),
        (
            "clientAuth only",
            Box::new(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]),
            X509SvidError::IncompleteExtendedKeyUsage,
        ),
        (
            "any eku only",
            Box::new(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Any]),
            X509SvidError::IncompleteExtendedKeyUsage,
        ),
    ];
    for (name, edit, expected) in cases {
        assert_eq!(leaf_spiffe_id(&root.leaf_with(edit)), Err(expected), "{name}");
    }
}

#[test]
fn leaf_without_eku_is_fine() {
    let leaf = new_root().leaf_with(|p| p.extended_key_usages.clear());
    assert!(leaf_spiffe_id(&leaf).is_ok());
    // Other SAN types next to the URI play no part.
    let leaf = new_root().leaf_with(|p| {
        p.subject_alt_names.push(SanType::DnsName(Ia5String::try_from("a.example").unwrap()));
    });
    assert!(leaf_spiffe_id(&leaf).is_ok());
}

#[test]
fn signing_certificate_rules() {
    let root = new_root();
    let int = root.intermediate("int");
    let leaf = int.leaf();
    assert!(validate_x509_svid_chain(&[leaf.clone(), int.der.clone()]).is_ok());

    let not_ca = root.leaf();
    assert_eq!(validate_x509_svid_chain(&[leaf.clone(), not_ca]), Err(X509SvidError::NotCa { position: CertPosition::Chain(1) }));
    let no_cert_sign = root.intermediate_with("int", |p| p.key_usages = vec![KeyUsagePurpose::CrlSign]);
    assert_eq!(
        validate_x509_svid_chain(&[leaf.clone(), int.der.clone(), no_cert_sign.der]),
        Err(X509SvidError::MissingKeyCertSign { position: CertPosition::Chain(2) })
    );
    let no_ku = root.intermediate_with("int", |p| p.key_usages.clear());
    assert_eq!(validate_x509_svid_chain(&[leaf, no_ku.der]), Err(X509SvidError::MissingKeyCertSign { position: CertPosition::Chain(1) }));
    assert_eq!(validate_x509_svid_chain(&[]), Err(X509SvidError::EmptyChain));
    assert!(matches!(validate_x509_svid_chain(&[b"garbage".to_vec()]), Err(X509SvidError::Parse { position: CertPosition::Chain(0), .. })));
}

#[test]
fn ca_ids() {
    let root = new_root();
    assert_eq!(ca_spiffe_id(&root.der).unwrap(), Some(SpiffeId::new("spiffe://example.org").unwrap()));
    let bare = root_with(&rcgen::PKCS_ECDSA_P256_SHA256, |p| {
        p.subject_alt_names.clear();
    });
    assert_eq!(ca_spiffe_id(&bare.der).unwrap(), None);
    let with_path = root.intermediate_with("int", |p| {
        p.subject_alt_names = vec![uri("spiffe://example.org/ca")];
    });
    assert_eq!(ca_spiffe_id(&with_path.der), Err(X509SvidError::CaIdWithPath { id: SpiffeId::new("spiffe://example.org/ca").unwrap() }));
    let two = root.intermediate_with("int", |p| p.subject_alt_names.push(uri("spiffe://b")));
    assert_eq!(ca_spiffe_id(&two.der), Err(X509SvidError::MultipleUriSans { count: 2 }));
}

#[test]
fn verify_paths() {
    let root = new_root();
    let int1 = root.intermediate("int1");
    let int2 = int1.intermediate("int2");
    let leaf = int2.leaf();
    let roots = [root.der.clone()];

    assert_eq!(verify_chain(&[root.leaf()], &roots, NOW), Ok(()));
    let full = [leaf.clone(), int2.der.clone(), int1.der.clone()];
    assert_eq!(verify_chain(&full, &roots, NOW), Ok(()));
    // Intermediates in any order; extra unrelated ones ignored.
    let unrelated = root.intermediate("unrelated").der;
    let shuffled = [leaf.clone(), unrelated, int1.der.clone(), int2.der.clone()];
    assert_eq!(verify_chain(&shuffled, &roots, NOW), Ok(()));
    // The root itself may travel in the chain.
    let with_root = [leaf.clone(), int2.der.clone(), int1.der.clone(), root.der.clone()];
    assert_eq!(verify_chain(&with_root, &roots, NOW), Ok(()));
    // Trust anchored at an intermediate works too.
    assert_eq!(verify_chain(from_ref(&leaf), from_ref(&int2.der), NOW), Ok(()));
    // A root among several.
    let other = root_with(&rcgen::PKCS_ECDSA_P384_SHA384, |p| {
        p.distinguished_name.push(DnType::CommonName, "other");
    });
    let two_roots = [other.der.clone(), root.der.clone()];
    assert_eq!(verify_chain(&full, &two_roots, NOW), Ok(()));
    // P-384 root signing a P-256 leaf.
    assert_eq!(verify_chain(&[other.leaf()], from_ref(&other.der), NOW), Ok(()));

    // Missing intermediate.
    assert_eq!(verify_chain(&[leaf.clone(), int2.der.clone()], &roots, NOW), Err(X509SvidError::UnknownAuthority));
    // Same name, different key.
    let impostor = new_root();
    assert_eq!(verify_chain(&full, &[impostor.der], NOW), Err(X509SvidError::UnknownAuthority));
    assert_eq!(verify_chain(&full, &[], NOW), Err(X509SvidError::UnknownAuthority));
    assert_eq!(verify_chain(&[], &roots, NOW), Err(X509SvidError::EmptyChain));
    let too_long = vec![leaf; MAX_CHAIN_LEN + 1];
    assert_eq!(verify_chain(&too_long, &roots, NOW), Err(X509SvidError::ChainTooLong { len: MAX_CHAIN_LEN + 1, max: MAX_CHAIN_LEN }));
    assert!(matches!(verify_chain(&full, &[b"junk".to_vec()], NOW), Err(X509SvidError::Parse { position: CertPosition::Root(0), .. })));
}

#[test]
fn verify_validity_periods() {
    let old = |p: &mut CertificateParams| {
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    };
    let future = |p: &mut CertificateParams| {
        p.not_before = date_time_ymd(2030, 1, 1);
        p.not_after = date_time_ymd(2031, 1, 1);
    };
    let root = new_root();
    let roots = [root.der.clone()];

    let expired_leaf = root.leaf_with(old);
    assert_eq!(verify_chain(from_ref(&expired_leaf), &roots, NOW), Err(X509SvidError::Expired { position: CertPosition::Chain(0) }));
    // 2020-06-01: inside its validity.
    assert_eq!(verify_chain(&[expired_leaf], &roots, 1_590_969_600), Ok(()));
    assert_eq!(verify_chain(&[root.leaf_with(future)], &roots, NOW), Err(X509SvidError::NotYetValid { position: CertPosition::Chain(0) }));

    let old_int = root.intermediate_with("int", old);
    assert_eq!(
        verify_chain(&[old_int.leaf(), old_int.der.clone()], &roots, NOW),
        Err(X509SvidError::Expired { position: CertPosition::Chain(1) })
    );
    let old_root = root_with(&rcgen::PKCS_ECDSA_P256_SHA256, old);
    assert_eq!(
        verify_chain(&[old_root.leaf()], from_ref(&old_root.der), NOW),
        Err(X509SvidError::Expired { position: CertPosition::Root(0) })
    );
    assert_eq!(verify_chain(&[root.leaf()], &roots, i64::MAX), Err(X509SvidError::InvalidTime { now: i64::MAX }));
}

#[test]
fn verify_issuer_constraints() {
    // A non-CA certificate as trust anchor cannot issue.
    let not_ca = root_with(&rcgen::PKCS_ECDSA_P256_SHA256, |p| {
        p.is_ca = IsCa::ExplicitNoCa;
    });
    assert_eq!(verify_chain(&[not_ca.leaf()], from_ref(&not_ca.der), NOW), Err(X509SvidError::NotCa { position: CertPosition::Root(0) }));
    // A CA whose key usage lacks keyCertSign cannot issue.
    let root = new_root();
    let no_sign = root.intermediate_with("int", |p| p.key_usages = vec![KeyUsagePurpose::CrlSign]);
    assert_eq!(
        verify_chain(&[no_sign.leaf(), no_sign.der.clone()], from_ref(&root.der), NOW),
        Err(X509SvidError::MissingKeyCertSign { position: CertPosition::Chain(1) })
    );
    // pathLenConstraint 0 allows no intermediate below.
    let strict = root_with(&rcgen::PKCS_ECDSA_P256_SHA256, |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    });
    let int = strict.intermediate("int");
    assert_eq!(verify_chain(&[strict.leaf()], from_ref(&strict.der), NOW), Ok(()));
    assert_eq!(
        verify_chain(&[int.leaf(), int.der.clone()], from_ref(&strict.der), NOW),
        Err(X509SvidError::PathLenExceeded { position: CertPosition::Root(0) })
    );
    // An unknown critical extension is refused, on the leaf or an issuer.
    let critical = || {
        let mut ext = CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![0x05, 0x00]);
        ext.set_criticality(true);
        ext
    };
    let leaf = root.leaf_with(|p| p.custom_extensions.push(critical()));
    assert_eq!(
        verify_chain(&[leaf], from_ref(&root.der), NOW),
        Err(X509SvidError::UnsupportedCriticalExtension { position: CertPosition::Chain(0), oid: "1.2.3.4".into() })
    );
    let odd_int = root.intermediate_with("int", |p| p.custom_extensions.push(critical()));
    assert_eq!(
        verify_chain(&[odd_int.leaf(), odd_int.der.clone()], from_ref(&root.der), NOW),
        Err(X509SvidError::UnsupportedCriticalExtension { position: CertPosition::Chain(1), oid: "1.2.3.4".into() })
    );
    // A non-critical unknown extension is fine.
    let mut plain = CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![0x05, 0x00]);
    plain.set_criticality(false);
    let leaf = root.leaf_with(|p| p.custom_extensions.push(plain));
    assert_eq!(verify_chain(&[leaf], from_ref(&root.der), NOW), Ok(()));
}

#[test]
fn sha1_signatures_refused() {
    let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    let mut params = ca_params("rsa root");
    params.subject_alt_names.clear();
    let der = params.self_signed(&key).unwrap().der().to_vec();
    let rsa = Ca { params, key, der };
    let leaf = rsa.leaf();
    assert_eq!(verify_chain(from_ref(&leaf), from_ref(&rsa.der), NOW), Ok(()));
    // sha256WithRSAEncryption -> sha1WithRSAEncryption: same length, so
    // the DER stays well-formed.
    let sha256 = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    let mut sha1_leaf = leaf.clone();
    let mut replaced = 0;
    let mut i = 0;
    while i + sha256.len() <= sha1_leaf.len() {
        if sha1_leaf[i..i + sha256.len()] == sha256 {
            sha1_leaf[i + sha256.len() - 1] = 0x05;
            replaced += 1;
        }
        i += 1;
    }
    assert_eq!(replaced, 2, "tbs and outer signature algorithm");
    assert_eq!(
        verify_chain(&[sha1_leaf], from_ref(&rsa.der), NOW),
        Err(X509SvidError::WeakSignatureAlgorithm { position: CertPosition::Chain(0) })
    );
}

/// Bytes outside the signed part are not covered by the signature, so they
/// must be exactly as DER wants them or the same certificate gets several
/// encodings.
#[test]
fn unsigned_bytes_must_be_strict_der() {
    let root = new_root();
    let leaf = root.leaf();
    let certificate = DerElement::read(&leaf).unwrap();
    let tbs = DerElement::read(certificate.content).unwrap();
    let outer_alg = DerElement::read(tbs.rest).unwrap();
    let alg_at = leaf.len() - tbs.rest.len();
    let sig_at = leaf.len() - outer_alg.rest.len();
    let mangle = |at: usize, byte: u8| {
        let mut der = leaf.clone();
        der[at] = byte;
        der
    };
    let cases = [
        ("signature tag", mangle(sig_at, 0x83)),
        ("signature unused bits", mangle(sig_at + 2, 0x01)),
        ("outer algorithm oid tag", mangle(alg_at + 2, 0x04)),
        ("outer algorithm oid", mangle(alg_at + 11, 0x03)),
    ];
    assert_eq!(verify_chain(from_ref(&leaf), from_ref(&root.der), NOW), Ok(()));
    for (name, der) in cases {
        assert!(matches!(verify_chain(from_ref(&der), from_ref(&root.der), NOW), Err(X509SvidError::Parse { .. })), "{name}");
        assert!(leaf_spiffe_id(&der).is_err(), "{name}");
    }
    assert!(DerElement::read(&[0x30, 0x81, 0x05, 0, 0, 0, 0, 0]).is_none(), "long form below 128");
    assert!(DerElement::read(&[0x30, 0x82, 0x00, 0x80]).is_none(), "leading zero length byte");
    assert!(DerElement::read(&[0x30, 0x05, 0]).is_none(), "truncated");
}

#[test]
fn full_check_rejects_ca_presented_as_leaf() {
    let root = new_root();
    let int = root.intermediate("int");
    // Path-valid, but a CA is not an SVID.
    assert_eq!(verify_chain(from_ref(&int.der), from_ref(&root.der), NOW), Ok(()));
    assert!(matches!(verify_x509_svid(from_ref(&int.der), from_ref(&root.der), NOW), Err(X509SvidError::LeafIdWithoutPath { .. })));
    let with_path = root.intermediate_with("int", |p| {
        p.subject_alt_names = vec![uri("spiffe://example.org/ca")];
    });
    assert_eq!(verify_x509_svid(from_ref(&with_path.der), from_ref(&root.der), NOW), Err(X509SvidError::LeafIsCa));
}

#[test]
fn positions_display() {
    assert_eq!(CertPosition::Chain(0).to_string(), "leaf certificate");
    assert_eq!(CertPosition::Chain(2).to_string(), "chain certificate 2");
    assert_eq!(CertPosition::Root(1).to_string(), "root certificate 1");
    let e = X509SvidError::Expired { position: CertPosition::Root(0) };
    assert_eq!(e.to_string(), "root certificate 0 has expired");
}

#[test]
fn never_panics_on_mangled_input() {
    let root = new_root();
    let int = root.intermediate("int");
    let leaf = int.leaf();
    let mut state = 0x853c_49e6_748f_ea9b_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % 1_000_003).unwrap()
    };
    // FUZZ_ROUNDS=300000 cargo test --release never_panics: a deeper run.
    let rounds: usize = std::env::var("FUZZ_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    for _ in 0..rounds {
        let mut bytes = leaf.clone();
        let pos = next() % bytes.len();
        if next() % 2 == 0 {
            bytes[pos] ^= 1 << (next() % 8);
        } else {
            bytes.truncate(pos);
        }
        let _ = leaf_spiffe_id(&bytes);
        let _ = ca_spiffe_id(&bytes);
        let chain = [bytes, int.der.clone()];
        if verify_x509_svid(&chain, from_ref(&root.der), NOW).is_ok() {
            assert_eq!(chain[0], leaf, "a changed leaf must not verify");
        }
    }
}
