#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "test code: a panic is a failed test")]

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, RsaKeySize, SanType, SignatureAlgorithm,
};
use serde_json::json;

use super::*;

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

/// A self-signed CA certificate for `spiffe://example.org`, as SPIRE makes
/// them, with a fresh key of the given algorithm.
fn ca_cert(alg: &'static SignatureAlgorithm) -> Vec<u8> {
    let key = new_key(alg);
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from("spiffe://example.org").unwrap())];
    params.self_signed(&key).unwrap().der().to_vec()
}

fn new_key(alg: &'static SignatureAlgorithm) -> KeyPair {
    if alg == &rcgen::PKCS_RSA_SHA256 {
        KeyPair::generate_rsa_for(alg, RsaKeySize::_2048).unwrap()
    } else {
        KeyPair::generate_for(alg).unwrap()
    }
}

fn jwt_key(alg: &'static SignatureAlgorithm) -> Vec<u8> {
    new_key(alg).subject_public_key_info()
}

fn full_bundle() -> Bundle {
    Bundle {
        trust_domain: td(),
        x509_authorities: vec![
            ca_cert(&rcgen::PKCS_ECDSA_P256_SHA256),
            ca_cert(&rcgen::PKCS_ECDSA_P384_SHA384),
            ca_cert(&rcgen::PKCS_RSA_SHA256),
            ca_cert(&rcgen::PKCS_ED25519),
        ],
        jwt_authorities: vec![
            authority("k256", jwt_key(&rcgen::PKCS_ECDSA_P256_SHA256)),
            authority("k384", jwt_key(&rcgen::PKCS_ECDSA_P384_SHA384)),
            authority("krsa", jwt_key(&rcgen::PKCS_RSA_SHA256)),
        ],
        refresh_hint: Some(300),
        sequence_number: 42,
        tainted_x509: vec![],
    }
}

fn authority(kid: &str, public_key: Vec<u8>) -> JwtAuthority {
    JwtAuthority { key_id: kid.to_owned(), public_key, expires_at: 0, tainted: false }
}

fn parse(json: &Value) -> Result<Bundle, BundleError> {
    Bundle::from_spiffe_json(td(), json.to_string().as_bytes())
}

/// The SPIFFE JSON of a one-certificate bundle, as a mutable value.
fn x509_json(der: &[u8]) -> Value {
    let bundle = Bundle { x509_authorities: vec![der.to_vec()], ..Bundle::new(td()) };
    serde_json::from_str(&bundle.to_spiffe_json()).unwrap()
}

/// A `jwt-svid` JWK for a fresh P-256 key.
fn jwt_jwk(kid: &str) -> Value {
    let bundle = Bundle { jwt_authorities: vec![authority(kid, jwt_key(&rcgen::PKCS_ECDSA_P256_SHA256))], ..Bundle::new(td()) };
    let json: Value = serde_json::from_str(&bundle.to_spiffe_json()).unwrap();
    json["keys"][0].clone()
}

#[test]
fn spiffe_json_round_trip() {
    let bundle = full_bundle();
    let json = bundle.to_spiffe_json();
    assert_eq!(Bundle::from_spiffe_json(td(), json.as_bytes()).unwrap(), bundle);
    assert_eq!(bundle.try_to_spiffe_json().unwrap(), json);
}

#[test]
fn spiffe_json_shape() {
    let bundle = full_bundle();
    let json: Value = serde_json::from_str(&bundle.to_spiffe_json()).unwrap();
    assert_eq!(json["spiffe_sequence"], 42);
    assert_eq!(json["spiffe_refresh_hint"], 300);
    let keys = json["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 7);
    let expect = [
        ("x509-svid", "EC", Some("P-256")),
        ("x509-svid", "EC", Some("P-384")),
        ("x509-svid", "RSA", None),
        ("x509-svid", "OKP", Some("Ed25519")),
        ("jwt-svid", "EC", Some("P-256")),
        ("jwt-svid", "EC", Some("P-384")),
        ("jwt-svid", "RSA", None),
    ];
    for (key, (usage, kty, crv)) in keys.iter().zip(expect) {
        assert_eq!(key["use"], usage);
        assert_eq!(key["kty"], kty);
        assert_eq!(key["crv"].as_str(), crv);
        if kty == "RSA" {
            assert!(key["n"].is_string() && key["e"] == "AQAB");
        } else {
            assert!(key["x"].is_string());
        }
        if usage == "x509-svid" {
            assert!(key.get("kid").is_none(), "x509-svid keys must not carry kid");
            let x5c = key["x5c"].as_array().unwrap();
            assert_eq!(x5c.len(), 1);
            // Standard alphabet with padding, not base64url.
            assert!(STANDARD.decode(x5c[0].as_str().unwrap()).is_ok());
        } else {
            assert!(key["kid"].is_string());
            assert!(key.get("x5c").is_none());
        }
    }
}

#[test]
fn unset_sequence_and_hint_are_omitted() {
    let json: Value = serde_json::from_str(&Bundle::new(td()).to_spiffe_json()).unwrap();
    assert_eq!(json, json!({ "keys": [] }));
    let parsed = parse(&json).unwrap();
    assert_eq!(parsed, Bundle::new(td()));
}

#[test]
fn jwks_form() {
    let bundle = full_bundle();
    let json: Value = serde_json::from_str(&bundle.jwt_jwks_json()).unwrap();
    let root = json.as_object().unwrap();
    assert_eq!(root.len(), 1, "only keys: {json}");
    let keys = root["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    for key in keys {
        assert!(key.get("use").is_none());
        assert!(key.get("x5c").is_none());
        assert!(key["kid"].is_string());
    }
    let parsed = Bundle::from_jwks_json(td(), json.to_string().as_bytes()).unwrap();
    assert_eq!(parsed.jwt_authorities, bundle.jwt_authorities);
    assert!(parsed.x509_authorities.is_empty());
    // The SPIFFE form ignores keys without `use`.
    let strict = Bundle::from_spiffe_json(td(), json.to_string().as_bytes()).unwrap();
    assert!(strict.jwt_authorities.is_empty());
    // The JWKS form also reads a full SPIFFE bundle.
    let full = Bundle::from_jwks_json(td(), bundle.to_spiffe_json().as_bytes()).unwrap();
    assert_eq!(full, bundle);
}

#[test]
fn jwks_form_still_requires_kid() {
    let mut jwk = jwt_jwk("k");
    jwk.as_object_mut().unwrap().remove("kid");
    jwk.as_object_mut().unwrap().remove("use");
    let json = json!({ "keys": [jwk] }).to_string();
    assert_eq!(Bundle::from_jwks_json(td(), json.as_bytes()), Err(BundleError::MissingKeyId { index: 0 }));
}

#[test]
fn p521_jwt_key_round_trip() {
    let key = aws_lc_rs::signature::EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P521_SHA512_FIXED_SIGNING).unwrap();
    let spki =
        aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(aws_lc_rs::signature::KeyPair::public_key(&key))
            .unwrap();
    let bundle = Bundle { jwt_authorities: vec![authority("k521", spki.as_ref().to_vec())], ..Bundle::new(td()) };
    let json: Value = serde_json::from_str(&bundle.to_spiffe_json()).unwrap();
    assert_eq!(json["keys"][0]["crv"], "P-521");
    assert_eq!(parse(&json).unwrap(), bundle);
}

#[test]
fn own_ec_encoder_matches_p256() {
    use p256::pkcs8::EncodePublicKey as _;
    let spki = jwt_key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let KeyParams::Ec { x, y, .. } = KeyParams::from_spki(&spki).unwrap() else {
        panic!("not an ec key");
    };
    let point = [&[0x04][..], &x, &y].concat();
    let p256_oid = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let ours = ec_spki_der(&p256_oid, &point);
    let theirs = p256::PublicKey::from_sec1_bytes(&point).unwrap().to_public_key_der().unwrap();
    assert_eq!(ours, theirs.as_bytes());
    assert_eq!(ours, spki);
}

#[test]
fn der_lengths() {
    assert_eq!(der_tlv(0x04, &[]), [0x04, 0x00]);
    assert_eq!(der_tlv(0x04, &[0; 127])[..2], [0x04, 0x7f]);
    assert_eq!(der_tlv(0x04, &[0; 128])[..3], [0x04, 0x81, 0x80]);
    assert_eq!(der_tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    assert_eq!(der_uint(&[0x00, 0x01]), [0x02, 0x01, 0x01]);
    assert_eq!(der_uint(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
    assert_eq!(der_uint(&[]), [0x02, 0x01, 0x00]);
}

#[test]
fn keys_member_rules() {
    assert_eq!(parse(&json!({})), Err(BundleError::MissingKeys));
    assert_eq!(parse(&json!({ "spiffe_sequence": 1 })), Err(BundleError::MissingKeys));
    assert!(matches!(parse(&json!({ "keys": {} })), Err(BundleError::InvalidMember { member: "keys", .. })));
    // An empty key set is valid: every key has been revoked.
    let empty = parse(&json!({ "keys": [], "spiffe_sequence": 3, "unknown": true })).unwrap();
    assert!(empty.x509_authorities.is_empty() && empty.jwt_authorities.is_empty());
    assert_eq!(empty.sequence_number, 3);
}

#[test]
fn spiffe_member_types() {
    let cases = [
        (json!({ "keys": [], "spiffe_sequence": -1 }), "spiffe_sequence"),
        (json!({ "keys": [], "spiffe_sequence": "1" }), "spiffe_sequence"),
        (json!({ "keys": [], "spiffe_sequence": 1.5 }), "spiffe_sequence"),
        (json!({ "keys": [], "spiffe_refresh_hint": "60" }), "spiffe_refresh_hint"),
        (json!({ "keys": [], "spiffe_refresh_hint": null }), "spiffe_refresh_hint"),
    ];
    for (doc, member) in cases {
        match parse(&doc) {
            Err(BundleError::InvalidMember { member: m, .. }) => assert_eq!(m, member, "{doc}"),
            other => panic!("{doc}: {other:?}"),
        }
    }
    let ok = parse(&json!({ "keys": [], "spiffe_sequence": u64::MAX, "spiffe_refresh_hint": 60 })).unwrap();
    assert_eq!(ok.sequence_number, u64::MAX);
    assert_eq!(ok.refresh_hint, Some(60));
}

#[test]
fn skipped_jwks() {
    let good = jwt_jwk("good");
    let with = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut jwk = good.clone();
        f(jwk.as_object_mut().unwrap());
        jwk
    };
    let skipped = [
        // Unknown or missing kty.
        with(&|j| drop(j.insert("kty".into(), "oct".into()))),
        with(&|j| drop(j.insert("kty".into(), json!(7)))),
        with(&|j| drop(j.remove("kty"))),
        // Unsupported curve.
        with(&|j| drop(j.insert("crv".into(), "secp256k1".into()))),
        json!({ "use": "jwt-svid", "kid": "x", "kty": "OKP", "crv": "X25519", "x": "AA" }),
        // Missing or unknown use.
        with(&|j| drop(j.remove("use"))),
        with(&|j| drop(j.insert("use".into(), "wit-svid".into()))),
        with(&|j| drop(j.insert("use".into(), "JWT-SVID".into()))),
        with(&|j| drop(j.insert("use".into(), json!(["jwt-svid"])))),
    ];
    for jwk in skipped {
        let bundle = parse(&json!({ "keys": [jwk, good] })).unwrap();
        assert_eq!(bundle.jwt_authorities.len(), 1, "{jwk}");
        assert_eq!(bundle.jwt_authorities[0].key_id, "good");
    }
}

#[test]
fn jwt_key_errors() {
    let good = jwt_jwk("k");
    let with = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut jwk = good.clone();
        f(jwk.as_object_mut().unwrap());
        json!({ "keys": [jwk] })
    };
    assert_eq!(parse(&with(&|j| drop(j.remove("kid")))), Err(BundleError::MissingKeyId { index: 0 }));
    assert_eq!(parse(&with(&|j| drop(j.insert("kid".into(), "".into())))), Err(BundleError::MissingKeyId { index: 0 }));
    let invalid = [
        with(&|j| drop(j.remove("x"))),
        with(&|j| drop(j.insert("x".into(), "!!".into()))),
        // Coordinate of the wrong length.
        with(&|j| drop(j.insert("x".into(), URL_SAFE_NO_PAD.encode([1u8; 31]).into()))),
        // Point not on the curve.
        with(&|j| drop(j.insert("y".into(), URL_SAFE_NO_PAD.encode([1u8; 32]).into()))),
        json!({ "keys": [{ "use": "jwt-svid", "kid": "r", "kty": "RSA", "n": "AA", "e": "AQAB" }] }),
        json!({ "keys": ["not an object"] }),
    ];
    for doc in invalid {
        assert!(matches!(parse(&doc), Err(BundleError::InvalidJwk { index: 0, .. })), "{doc}: {:?}", parse(&doc));
    }
}

#[test]
fn duplicate_kid_rejected() {
    let doc = json!({ "keys": [jwt_jwk("same"), jwt_jwk("other"), jwt_jwk("same")] });
    assert_eq!(parse(&doc), Err(BundleError::DuplicateKeyId { kid: "same".to_owned() }));
}

#[test]
fn duplicate_members_rejected() {
    let jwk = jwt_jwk("k").to_string();
    let cases = [
        (r#"{"keys":[],"keys":[]}"#.to_owned(), "keys"),
        (format!(r#"{{"keys":[{jwk}],"spiffe_sequence":1,"spiffe_sequence":2}}"#), "spiffe_sequence"),
        (format!(r#"{{"keys":[{}]}}"#, jwk.replacen('{', r#"{"kty":"EC","#, 1)), "kty"),
        (r#"{"keys":[{"use":"jwt-svid","a":{"b":1,"b":2}}]}"#.to_owned(), "b"),
    ];
    for (doc, name) in cases {
        assert_eq!(Bundle::from_spiffe_json(td(), doc.as_bytes()), Err(BundleError::DuplicateMember { name: name.to_owned() }), "{doc}");
    }
}

#[test]
fn malformed_and_oversized() {
    let cases: &[&[u8]] = &[b"", b"{", b"[]", b"\"keys\"", b"{\"keys\":[]} trailing", b"\xff"];
    for doc in cases {
        assert!(matches!(Bundle::from_spiffe_json(td(), doc), Err(BundleError::Malformed { .. })), "{doc:?}");
    }
    let mut big = br#"{"keys":[],"pad":""#.to_vec();
    big.resize(MAX_BUNDLE_LEN + 1, b' ');
    assert_eq!(Bundle::from_spiffe_json(td(), &big), Err(BundleError::TooLarge { len: MAX_BUNDLE_LEN + 1, max: MAX_BUNDLE_LEN }));
    // Deep nesting hits serde_json's recursion limit instead of the stack.
    let deep = format!("{{\"keys\":[],\"x\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(matches!(Bundle::from_spiffe_json(td(), deep.as_bytes()), Err(BundleError::Malformed { .. })));
}

#[test]
fn x5c_rules() {
    let first = ca_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
    let second = ca_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
    let mut doc = x509_json(&first);

    // Two certificates: the first is used, the rest ignored.
    doc["keys"][0]["x5c"] = json!([STANDARD.encode(&first), STANDARD.encode(&second)]);
    assert_eq!(parse(&doc).unwrap().x509_authorities, vec![first.clone()]);

    // Missing or empty x5c: skipped.
    doc["keys"][0]["x5c"] = json!([]);
    assert!(parse(&doc).unwrap().x509_authorities.is_empty());
    doc["keys"][0].as_object_mut().unwrap().remove("x5c");
    assert!(parse(&doc).unwrap().x509_authorities.is_empty());

    // Key members from one certificate, x5c from another.
    doc["keys"][0]["x5c"] = json!([STANDARD.encode(&second)]);
    assert_eq!(parse(&doc), Err(BundleError::KeyMismatch { index: 0 }));

    // RSA members against an EC certificate.
    let rsa = x509_json(&ca_cert(&rcgen::PKCS_RSA_SHA256));
    let mut mixed = rsa.clone();
    mixed["keys"][0]["x5c"] = json!([STANDARD.encode(&first)]);
    assert_eq!(parse(&mixed), Err(BundleError::KeyMismatch { index: 0 }));

    // Padding-free base64 is tolerated.
    let mut unpadded = x509_json(&first);
    let text = STANDARD.encode(&first);
    unpadded["keys"][0]["x5c"] = json!([text.trim_end_matches('=')]);
    assert_eq!(parse(&unpadded).unwrap().x509_authorities, vec![first.clone()]);

    let mut bad = x509_json(&first);
    bad["keys"][0]["x5c"] = json!(["not base64!"]);
    assert!(matches!(parse(&bad), Err(BundleError::InvalidJwk { index: 0, .. })));
    bad["keys"][0]["x5c"] = json!([STANDARD.encode(b"garbage")]);
    assert!(matches!(parse(&bad), Err(BundleError::InvalidCertificate { index: 0, .. })));
    let mut trailing = first.clone();
    trailing.push(0);
    bad["keys"][0]["x5c"] = json!([STANDARD.encode(&trailing)]);
    assert!(matches!(parse(&bad), Err(BundleError::InvalidCertificate { index: 0, .. })));
    bad["keys"][0]["x5c"] = json!("single string");
    assert!(matches!(parse(&bad), Err(BundleError::InvalidJwk { index: 0, .. })));
    bad["keys"][0]["x5c"] = json!([1]);
    assert!(matches!(parse(&bad), Err(BundleError::InvalidJwk { index: 0, .. })));
}

#[test]
fn unrepresentable_authorities() {
    let bundle = Bundle {
        x509_authorities: vec![b"garbage".to_vec(), ca_cert(&rcgen::PKCS_ECDSA_P256_SHA256)],
        jwt_authorities: vec![authority("bad", b"garbage".to_vec())],
        ..Bundle::new(td())
    };
    let json: Value = serde_json::from_str(&bundle.to_spiffe_json()).unwrap();
    assert_eq!(json["keys"].as_array().unwrap().len(), 1);
    assert!(matches!(bundle.try_to_spiffe_json(), Err(BundleError::Unrepresentable { .. })));
    let jwks: Value = serde_json::from_str(&bundle.jwt_jwks_json()).unwrap();
    assert_eq!(jwks, json!({ "keys": [] }));
}

#[test]
fn pem_round_trip() {
    let bundle = full_bundle();
    let pem = bundle.x509_pem();
    assert!(pem.lines().all(|l| l.len() <= 64));
    assert_eq!(parse_pem_certs(&pem).unwrap(), bundle.x509_authorities);
    // CRLF line endings and surrounding blank lines are fine.
    let crlf = format!("\r\n{}\r\n", pem.replace('\n', "\r\n"));
    assert_eq!(parse_pem_certs(&crlf).unwrap(), bundle.x509_authorities);
}

#[test]
fn pem_rejections() {
    let cert = Bundle { x509_authorities: vec![ca_cert(&rcgen::PKCS_ECDSA_P256_SHA256)], ..Bundle::new(td()) }.x509_pem();
    let key_pem = new_key(&rcgen::PKCS_ECDSA_P256_SHA256).serialize_pem();
    let body: String = cert.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(parse_pem_certs(""), Err(BundleError::NoCertificates));
    assert_eq!(parse_pem_certs("\n\n"), Err(BundleError::NoCertificates));
    assert_eq!(parse_pem_certs(&format!("{cert}{key_pem}")), Err(BundleError::PemNotCertificate { label: "PRIVATE KEY".to_owned() }));
    let malformed = [
        format!("garbage\n{cert}"),
        format!("{cert}trailing garbage\n"),
        cert.replace("-----END CERTIFICATE-----\n", ""),
        cert.replace("-----END CERTIFICATE-----", "-----END PRIVATE KEY-----"),
        format!("-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n{body}\n-----END CERTIFICATE-----\n"),
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_owned(),
    ];
    for text in malformed {
        assert!(matches!(parse_pem_certs(&text), Err(BundleError::PemMalformed { .. })), "{text}");
    }
    let not_a_cert = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", STANDARD.encode(b"not a certificate"));
    assert!(matches!(parse_pem_certs(&not_a_cert), Err(BundleError::InvalidCertificate { index: 0, .. })));
}

#[test]
fn error_messages_are_lowercase() {
    let errors = [
        BundleError::MissingKeys.to_string(),
        BundleError::NoCertificates.to_string(),
        BundleError::KeyMismatch { index: 1 }.to_string(),
        BundleError::DuplicateKeyId { kid: "k".into() }.to_string(),
    ];
    for e in errors {
        assert!(e.chars().next().is_some_and(char::is_lowercase), "{e}");
    }
}

#[test]
fn never_panics_on_mangled_input() {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % 1_000_003).unwrap()
    };
    let seed = full_bundle().to_spiffe_json().into_bytes();
    let pem = full_bundle().x509_pem().into_bytes();
    for _ in 0..2000 {
        for original in [&seed, &pem] {
            let mut bytes = original.clone();
            for _ in 0..=next() % 4 {
                if bytes.is_empty() {
                    break;
                }
                let pos = next() % bytes.len();
                match next() % 3 {
                    0 => bytes[pos] = u8::try_from(next() % 256).unwrap(),
                    1 => drop(bytes.remove(pos)),
                    _ => bytes.truncate(pos.max(1)),
                }
            }
            let _ = Bundle::from_spiffe_json(td(), &bytes);
            let _ = Bundle::from_jwks_json(td(), &bytes);
            let _ = parse_pem_certs(&String::from_utf8_lossy(&bytes));
        }
    }
}
