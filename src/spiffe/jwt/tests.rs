#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "test code: a panic is a failed test")]

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair, EcdsaSigningAlgorithm,
    KeyPair as _, RSA_PKCS1_SHA256, RSA_PSS_SHA384, RsaEncoding, RsaKeyPair,
};
use serde_json::json;

use super::*;
use crate::spiffe::bundle::JwtAuthority;

const NOW: i64 = 1_750_000_000;
const AUDIENCE: &str = "spiffe://example.org/service";

/// A signing key the tests mint tokens with, playing the CA.
enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair, &'static dyn RsaEncoding),
}

impl Signer {
    fn ec(alg: &'static EcdsaSigningAlgorithm) -> Self {
        Self::Ec(EcdsaKeyPair::generate(alg).unwrap())
    }

    fn rsa(padding: &'static dyn RsaEncoding) -> Self {
        Self::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap(), padding)
    }

    fn spki(&self) -> Vec<u8> {
        let der: PublicKeyX509Der<'static> = match self {
            Self::Ec(key) => key.public_key().as_der().unwrap(),
            Self::Rsa(key, _) => key.public_key().as_der().unwrap(),
        };
        der.as_ref().to_vec()
    }

    fn sign(&self, input: &str) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Ec(key) => key.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Self::Rsa(key, padding) => {
                let mut sig = vec![0; key.public_modulus_len()];
                key.sign(*padding, &rng, input.as_bytes(), &mut sig).unwrap();
                sig
            }
        }
    }

    /// A token through the public signing API.
    fn token(&self, alg: JwtAlg, kid: &str, claims: &Value) -> String {
        let input = signing_input(alg, kid, claims);
        assemble(&input, &self.sign(&input))
    }

    /// A token with an arbitrary header, for the header checks.
    fn raw_token(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        assemble(&input, &self.sign(&input))
    }
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn claims() -> Value {
    json!({
        "sub": "spiffe://example.org/workload",
        "aud": [AUDIENCE],
        "exp": NOW + 300,
        "iat": NOW,
    })
}

fn with_claim(name: &str, value: Value) -> Value {
    let mut c = claims();
    c[name] = value;
    c
}

fn without_claim(name: &str) -> Value {
    let mut c = claims();
    c.as_object_mut().unwrap().remove(name);
    c
}

fn bundles_for(signer: &Signer, kid: &str) -> Vec<Bundle> {
    let mut bundle = Bundle::new(td("example.org"));
    bundle.jwt_authorities.push(JwtAuthority { key_id: kid.to_owned(), public_key: signer.spki(), expires_at: 0, tainted: false });
    vec![bundle, Bundle::new(td("other.org"))]
}

fn validate(token: &str, bundles: &[Bundle]) -> Result<JwtSvidClaims, JwtSvidError> {
    validate_jwt_svid(token, &[AUDIENCE], NOW, bundle_keys(bundles))
}

#[test]
fn valid_token_all_algorithms() {
    let cases: [(JwtAlg, Signer); 5] = [
        (JwtAlg::ES256, Signer::ec(&ECDSA_P256_SHA256_FIXED_SIGNING)),
        (JwtAlg::ES384, Signer::ec(&ECDSA_P384_SHA384_FIXED_SIGNING)),
        (JwtAlg::ES512, Signer::ec(&ECDSA_P521_SHA512_FIXED_SIGNING)),
        (JwtAlg::RS256, Signer::rsa(&RSA_PKCS1_SHA256)),
        (JwtAlg::PS384, Signer::rsa(&RSA_PSS_SHA384)),
    ];
    for (alg, signer) in cases {
        let bundles = bundles_for(&signer, "k1");
        let token = signer.token(alg, "k1", &claims());
        let got = validate(&token, &bundles).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(got.subject.as_str(), "spiffe://example.org/workload");
        assert_eq!(got.audience, [AUDIENCE]);
        assert_eq!(got.expiry, NOW + 300);
        assert_eq!(got.issued_at, Some(NOW));
        assert_eq!(got.issuer, None);
        assert_eq!(got.key_id, "k1");
        assert_eq!(Value::Object(got.raw), claims());
    }
}

#[test]
fn signing_input_shape() {
    let input = signing_input(JwtAlg::ES256, "kid-1", &json!({ "sub": "x" }));
    let (header, body) = input.split_once('.').unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header, json!({ "alg": "ES256", "kid": "kid-1", "typ": "JWT" }));
    assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap(), br#"{"sub":"x"}"#);
    assert_eq!(assemble("a.b", &[0xfb, 0xff]), "a.b.-_8");
}

#[test]
fn accepted_variants() {
    let signer = Signer::ec(&ECDSA_P256_SHA256_FIXED_SIGNING);
    let bundles = bundles_for(&signer, "k1");
    let ok_claims = [
        with_claim("aud", json!(AUDIENCE)),
        with_claim("aud", json!(["other", AUDIENCE])),
        with_claim("iss", json!("https://issuer")),
        with_claim("exp", json!(NOW - 59)),
        with_claim("exp", json!(1.750_000_300_5e9)),
        with_claim("nbf", json!(NOW + 59)),
        with_claim("iat", json!(NOW + 59)),
        with_claim("jti", json!("abc")),
        without_claim("iat"),
    ];
    for c in ok_claims {
        let token = signer.token(JwtAlg::ES256, "k1", &c);
        assert!(validate(&token, &bundles).is_ok(), "{c}");
    }
    for typ in ["JWT", "JOSE"] {
        let header = json!({ "alg": "ES256", "kid": "k1", "typ": typ });
        assert!(validate(&signer.raw_token(&header, &claims()), &bundles).is_ok());
    }
    let no_typ = json!({ "alg": "ES256", "kid": "k1" });
    assert!(validate(&signer.raw_token(&no_typ, &claims()), &bundles).is_ok());
    let many = validate_jwt_svid(&signer.token(JwtAlg::ES256, "k1", &claims()), &["x", AUDIENCE], NOW, bundle_keys(&bundles));
    assert!(many.is_ok());
}

/// A signer whose key is in the `example.org` bundle as `k1`, another that
/// is in no bundle, and helpers to mint tokens for the rejection tables.
struct Fixture {
    signer: Signer,
    other: Signer,
    bundles: Vec<Bundle>,
}

type Case = (&'static str, String, JwtSvidError);

impl Fixture {
    fn new() -> Self {
        let signer = Signer::ec(&ECDSA_P256_SHA256_FIXED_SIGNING);
        let bundles = bundles_for(&signer, "k1");
        Self { signer, other: Signer::ec(&ECDSA_P256_SHA256_FIXED_SIGNING), bundles }
    }

    fn es256(&self, claims: &Value) -> String {
        self.signer.token(JwtAlg::ES256, "k1", claims)
    }

    fn with_header(&self, header: &Value) -> String {
        self.signer.raw_token(header, &claims())
    }

    /// A valid token's signing input (header and claims, no signature).
    fn good_input(&self) -> String {
        let good = self.es256(&claims());
        good.rsplit_once('.').unwrap().0.to_owned()
    }

    fn check(&self, cases: Vec<Case>) {
        for (name, token, expected) in cases {
            assert_eq!(validate(&token, &self.bundles), Err(expected), "{name}");
        }
    }
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// Every negative case of checklist §3 item 17.
#[test]
fn rejections_checklist() {
    let f = Fixture::new();
    f.check(vec![
        ("malformed", "not-a-token".into(), JwtSvidError::WrongPartCount { parts: 1 }),
        (
            "hs256",
            format!("{}.{}.c2ln", b64(r#"{"alg":"HS256","kid":"k1","typ":"JWT"}"#), b64(&claims().to_string())),
            JwtSvidError::UnsupportedAlgorithm { alg: "HS256".into() },
        ),
        ("missing sub", f.es256(&without_claim("sub")), JwtSvidError::MissingSubject),
        ("missing exp", f.es256(&without_claim("exp")), JwtSvidError::MissingExpiry),
        ("expired", f.es256(&with_claim("exp", json!(NOW - 61))), JwtSvidError::Expired { expiry: NOW - 61, now: NOW }),
        (
            "wrong audience",
            f.es256(&with_claim("aud", json!(["someone-else"]))),
            JwtSvidError::AudienceMismatch { audience: vec!["someone-else".into()] },
        ),
        (
            "invalid sub",
            f.es256(&with_claim("sub", json!("https://example.org/workload"))),
            JwtSvidError::InvalidSubject { source: SpiffeIdError::WrongScheme },
        ),
        ("missing kid", f.with_header(&json!({ "alg": "ES256", "typ": "JWT" })), JwtSvidError::MissingKeyId),
        (
            "no bundle",
            f.es256(&with_claim("sub", json!("spiffe://unknown.org/w"))),
            JwtSvidError::NoBundle { trust_domain: td("unknown.org") },
        ),
        (
            "unknown kid",
            f.signer.token(JwtAlg::ES256, "k2", &claims()),
            JwtSvidError::UnknownKeyId { trust_domain: td("example.org"), kid: "k2".into() },
        ),
        ("signed by another key", f.other.token(JwtAlg::ES256, "k1", &claims()), JwtSvidError::InvalidSignature),
        (
            "invalid typ",
            f.with_header(&json!({ "alg": "ES256", "kid": "k1", "typ": "xyz" })),
            JwtSvidError::InvalidType { typ: "xyz".into() },
        ),
    ]);
}

#[test]
fn rejections_header() {
    let f = Fixture::new();
    let unsupported = |alg: &str| JwtSvidError::UnsupportedAlgorithm { alg: alg.into() };
    f.check(vec![
        ("alg none", format!("{}.{}.", b64(r#"{"alg":"none","kid":"k1"}"#), b64(&claims().to_string())), unsupported("none")),
        ("alg lowercase", f.with_header(&json!({ "alg": "es256", "kid": "k1" })), unsupported("es256")),
        ("alg EdDSA", f.with_header(&json!({ "alg": "EdDSA", "kid": "k1" })), unsupported("EdDSA")),
        ("alg not a string", f.with_header(&json!({ "alg": 256, "kid": "k1" })), unsupported("256")),
        ("alg missing", f.with_header(&json!({ "kid": "k1" })), JwtSvidError::MissingAlgorithm),
        (
            "jku header",
            f.with_header(&json!({ "alg": "ES256", "kid": "k1", "jku": "https://evil" })),
            JwtSvidError::UnexpectedHeader { name: "jku".into() },
        ),
        (
            "crit header",
            f.with_header(&json!({ "alg": "ES256", "kid": "k1", "crit": ["exp"] })),
            JwtSvidError::UnexpectedHeader { name: "crit".into() },
        ),
        ("empty kid", f.with_header(&json!({ "alg": "ES256", "kid": "" })), JwtSvidError::MissingKeyId),
        ("kid not a string", f.with_header(&json!({ "alg": "ES256", "kid": 1 })), JwtSvidError::InvalidHeader { name: "kid" }),
        (
            "typ not a string",
            f.with_header(&json!({ "alg": "ES256", "kid": "k1", "typ": 1 })),
            JwtSvidError::InvalidType { typ: "1".into() },
        ),
        (
            "header not an object",
            format!("{}.{}.c2ln", b64("[1]"), b64("{}")),
            JwtSvidError::InvalidJson { part: "header", reason: "not an object".into() },
        ),
        (
            "duplicate header member",
            format!("{}.{}.c2ln", b64(r#"{"alg":"ES256","alg":"HS256","kid":"k1"}"#), b64(&claims().to_string())),
            JwtSvidError::DuplicateMember { part: "header", name: "alg".into() },
        ),
    ]);
}

#[test]
fn rejections_claims() {
    let f = Fixture::new();
    let invalid = |claim, reason| JwtSvidError::InvalidClaim { claim, reason };
    f.check(vec![
        ("empty sub", f.es256(&with_claim("sub", json!(""))), JwtSvidError::MissingSubject),
        ("sub not a string", f.es256(&with_claim("sub", json!(["spiffe://example.org/w"]))), invalid("sub", "not a string")),
        (
            "sub with trailing slash",
            f.es256(&with_claim("sub", json!("spiffe://example.org/w/"))),
            JwtSvidError::InvalidSubject { source: SpiffeIdError::TrailingSlash },
        ),
        ("exp as string", f.es256(&with_claim("exp", json!("1750000300"))), invalid("exp", "not a number")),
        ("exp null", f.es256(&with_claim("exp", Value::Null)), JwtSvidError::MissingExpiry),
        ("aud missing", f.es256(&without_claim("aud")), JwtSvidError::MissingAudience),
        ("aud empty", f.es256(&with_claim("aud", json!([]))), JwtSvidError::MissingAudience),
        ("aud number", f.es256(&with_claim("aud", json!(5))), invalid("aud", "neither a string nor an array")),
        ("aud mixed array", f.es256(&with_claim("aud", json!([AUDIENCE, 5]))), invalid("aud", "array holds a non-string")),
        ("iss number", f.es256(&with_claim("iss", json!(5))), invalid("iss", "not a string")),
        ("nbf string", f.es256(&with_claim("nbf", json!("soon"))), invalid("nbf", "not a number")),
        ("nbf in the future", f.es256(&with_claim("nbf", json!(NOW + 61))), JwtSvidError::NotYetValid { not_before: NOW + 61, now: NOW }),
        ("iat in the future", f.es256(&with_claim("iat", json!(NOW + 61))), JwtSvidError::IssuedInFuture { issued_at: NOW + 61, now: NOW }),
        (
            "duplicate claim",
            {
                let body = r#"{"sub":"spiffe://example.org/a","sub":"spiffe://example.org/b"}"#;
                let input = format!("{}.{}", b64(r#"{"alg":"ES256","kid":"k1"}"#), b64(body));
                assemble(&input, &f.signer.sign(&input))
            },
            JwtSvidError::DuplicateMember { part: "claims", name: "sub".into() },
        ),
    ]);
}

#[test]
fn claims_not_json() {
    let f = Fixture::new();
    let token = format!("{}.{}.c2ln", b64(r#"{"alg":"ES256","kid":"k1"}"#), b64("sub=x"));
    assert!(matches!(validate(&token, &f.bundles), Err(JwtSvidError::InvalidJson { part: "claims", .. })));
}

#[test]
fn rejections_structure() {
    let f = Fixture::new();
    let good_input = f.good_input();
    let good = f.es256(&claims());
    let parts = |parts| JwtSvidError::WrongPartCount { parts };
    f.check(vec![
        (
            "100 KiB",
            format!("{good_input}.{}", "A".repeat(100 * 1024)),
            JwtSvidError::TooLarge { len: good_input.len() + 1 + 100 * 1024, max: MAX_TOKEN_LEN },
        ),
        ("2 parts", good_input.clone(), parts(2)),
        ("4 parts", format!("{good}.x"), parts(4)),
        ("jwe", "a.b.c.d.e".into(), parts(5)),
        ("json serialization", r#"{"payload":"x","signatures":[]}"#.into(), parts(1)),
        ("empty", String::new(), parts(1)),
        ("non-base64 header", format!("!!!{good}"), JwtSvidError::InvalidBase64 { part: "header" }),
        ("padded header", good.replacen('.', "=.", 1), JwtSvidError::InvalidBase64 { part: "header" }),
        ("non-base64 signature", format!("{good_input}.*"), JwtSvidError::InvalidBase64 { part: "signature" }),
    ]);
}

#[test]
fn rejections_signature() {
    let f = Fixture::new();
    let good_input = f.good_input();
    let asn1 = [0x30u8, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01];
    f.check(vec![
        ("empty signature", format!("{good_input}."), JwtSvidError::InvalidSignature),
        ("truncated signature", format!("{good_input}.{}", URL_SAFE_NO_PAD.encode([0u8; 63])), JwtSvidError::InvalidSignature),
        ("asn1 signature", format!("{good_input}.{}", URL_SAFE_NO_PAD.encode(asn1)), JwtSvidError::InvalidSignature),
        (
            "claims swapped after signing",
            {
                let sig = f.es256(&claims()).rsplit_once('.').unwrap().1.to_owned();
                let forged = signing_input(JwtAlg::ES256, "k1", &with_claim("sub", json!("spiffe://example.org/admin")));
                format!("{forged}.{sig}")
            },
            JwtSvidError::InvalidSignature,
        ),
        ("alg of another curve", f.signer.token(JwtAlg::ES384, "k1", &claims()), JwtSvidError::AlgorithmKeyMismatch { alg: JwtAlg::ES384 }),
        (
            "rsa alg on ec key",
            f.with_header(&json!({ "alg": "RS256", "kid": "k1" })),
            JwtSvidError::AlgorithmKeyMismatch { alg: JwtAlg::RS256 },
        ),
        (
            "unknown kid in an empty bundle",
            f.es256(&with_claim("sub", json!("spiffe://other.org/w"))),
            JwtSvidError::UnknownKeyId { trust_domain: td("other.org"), kid: "k1".into() },
        ),
    ]);
    // An RSA key refuses ECDSA algorithms.
    let rsa = Signer::rsa(&RSA_PKCS1_SHA256);
    let bundles = bundles_for(&rsa, "k1");
    let token = f.signer.token(JwtAlg::ES256, "k1", &claims());
    assert_eq!(validate(&token, &bundles), Err(JwtSvidError::AlgorithmKeyMismatch { alg: JwtAlg::ES256 }));
}

#[test]
fn check_order() {
    let signer = Signer::ec(&ECDSA_P256_SHA256_FIXED_SIGNING);
    let other = Signer::ec(&ECDSA_P256_SHA256_FIXED_SIGNING);
    let bundles = bundles_for(&signer, "k1");
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    // The allow-list comes before the header and claims are examined.
    let hs = format!("{}.{}.x", b64(r#"{"alg":"HS256","jku":"x"}"#), b64("not json"));
    assert!(matches!(validate(&hs, &bundles), Err(JwtSvidError::UnsupportedAlgorithm { .. })));
    // Claims are checked before the key lookup...
    let token = signer.token(JwtAlg::ES256, "unknown", &without_claim("sub"));
    assert_eq!(validate(&token, &bundles), Err(JwtSvidError::MissingSubject));
    // ...the key before the signature...
    let token = other.token(JwtAlg::ES256, "unknown", &claims());
    assert!(matches!(validate(&token, &bundles), Err(JwtSvidError::UnknownKeyId { .. })));
    // ...and the signature before audience and time.
    let late = json!({ "sub": "spiffe://example.org/w", "aud": ["x"], "exp": 1 });
    let token = other.token(JwtAlg::ES256, "k1", &late);
    assert_eq!(validate(&token, &bundles), Err(JwtSvidError::InvalidSignature));
    // No expected audience is refused rather than matching anything.
    let token = signer.token(JwtAlg::ES256, "k1", &claims());
    assert_eq!(validate_jwt_svid(&token, &[], NOW, bundle_keys(&bundles)), Err(JwtSvidError::NoExpectedAudience));
}

#[test]
fn key_callback_errors_and_bad_keys() {
    let signer = Signer::ec(&ECDSA_P256_SHA256_FIXED_SIGNING);
    let token = signer.token(JwtAlg::ES256, "k1", &claims());
    let garbage = validate_jwt_svid(&token, &[AUDIENCE], NOW, |_, _| Ok(Some(b"junk".to_vec())));
    assert!(matches!(garbage, Err(JwtSvidError::InvalidKey { .. })));
    let asked = std::cell::RefCell::new(Vec::new());
    let _ = validate_jwt_svid(&token, &[AUDIENCE], NOW, |td, kid| {
        asked.borrow_mut().push((td.to_string(), kid.to_owned()));
        Ok(None)
    });
    assert_eq!(asked.into_inner(), [("example.org".to_owned(), "k1".to_owned())]);
}

#[test]
fn alg_names() {
    let all = [
        JwtAlg::ES256,
        JwtAlg::ES384,
        JwtAlg::ES512,
        JwtAlg::RS256,
        JwtAlg::RS384,
        JwtAlg::RS512,
        JwtAlg::PS256,
        JwtAlg::PS384,
        JwtAlg::PS512,
    ];
    for alg in all {
        assert_eq!(alg.as_str().parse::<JwtAlg>(), Ok(alg));
        assert_eq!(alg.to_string(), alg.as_str());
    }
    for bad in ["none", "HS256", "EdDSA", "ES256K", "es256", ""] {
        assert_eq!(JwtAlg::parse(bad), Err(JwtSvidError::UnsupportedAlgorithm { alg: bad.to_owned() }));
    }
}

/// Our tokens decode with an independent JOSE library, and its tokens
/// validate here.
#[test]
fn cross_check_with_jsonwebtoken() {
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let signer = Signer::Ec(key);
    let bundles = bundles_for(&signer, "k1");

    // Ours -> jsonwebtoken.
    let token = signer.token(JwtAlg::ES256, "k1", &claims());
    let point = signer_point(&signer);
    let (x, y) = point[1..].split_at(32);
    let decoding = DecodingKey::from_ec_components(&URL_SAFE_NO_PAD.encode(x), &URL_SAFE_NO_PAD.encode(y)).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[AUDIENCE]);
    validation.validate_exp = false;
    let decoded = jsonwebtoken::decode::<Value>(&token, &decoding, &validation).unwrap();
    assert_eq!(decoded.header.kid.as_deref(), Some("k1"));
    assert_eq!(decoded.claims, claims());

    // jsonwebtoken -> ours.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".to_owned());
    let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
    let theirs = jsonwebtoken::encode(&header, &claims(), &encoding).unwrap();
    let got = validate(&theirs, &bundles).unwrap();
    assert_eq!(got.subject.as_str(), "spiffe://example.org/workload");
}

fn signer_point(signer: &Signer) -> Vec<u8> {
    match signer {
        Signer::Ec(key) => key.public_key().as_ref().to_vec(),
        Signer::Rsa(..) => unreachable!("ec only"),
    }
}

#[test]
fn error_messages_are_lowercase() {
    let errors = [
        JwtSvidError::MissingSubject.to_string(),
        JwtSvidError::InvalidSignature.to_string(),
        JwtSvidError::NoBundle { trust_domain: td("x") }.to_string(),
        JwtSvidError::UnknownKeyId { trust_domain: td("x"), kid: "k".into() }.to_string(),
    ];
    for e in errors {
        assert!(e.chars().next().is_some_and(char::is_lowercase), "{e}");
        assert!(!e.ends_with('.'), "{e}");
    }
    assert_eq!(JwtSvidError::NoBundle { trust_domain: td("x") }.to_string(), "no bundle found for trust domain \"x\"");
}

#[test]
fn never_panics_on_mangled_input() {
    let f = Fixture::new();
    let seed = f.es256(&claims()).into_bytes();
    let mut state = 0xd1b5_4a32_d192_ed03_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % 1_000_003).unwrap()
    };
    let alphabet = b".-_=+/Aa0{}\"\xff";
    for _ in 0..3000 {
        let mut bytes = seed.clone();
        for _ in 0..=next() % 3 {
            let pos = next() % bytes.len();
            match next() % 3 {
                0 => bytes[pos] = alphabet[next() % alphabet.len()],
                1 => drop(bytes.remove(pos)),
                _ => bytes.insert(pos, alphabet[next() % alphabet.len()]),
            }
        }
        let token = String::from_utf8_lossy(&bytes);
        // A mangled token must never validate unless it is unchanged.
        if validate(&token, &f.bundles).is_ok() {
            assert_eq!(token.as_bytes(), seed.as_slice());
        }
    }
}
