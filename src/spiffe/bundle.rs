//! Trust bundles and their JSON forms (checklist §4).
//!
//! Two JSON forms exist:
//!
//! - the **SPIFFE bundle**, an RFC 7517 JWK Set whose keys carry `use`
//!   (`x509-svid` or `jwt-svid`) plus the `spiffe_sequence` and
//!   `spiffe_refresh_hint` members. Federation serves this form.
//!   [`Bundle::to_spiffe_json`] / [`Bundle::from_spiffe_json`].
//! - the **plain JWKS** that the Workload API's `FetchJWTBundles` serves:
//!   only JWT keys, no `use`, no `spiffe_*` members.
//!   [`Bundle::jwt_jwks_json`] / [`Bundle::from_jwks_json`].
//!
//! Parsing is strict where the standard says MUST and lenient where it says
//! ignore: duplicate JSON members are rejected at every level (`serde_json`
//! would silently keep the last one, letting two parsers disagree about a
//! bundle), while JWKs with an unknown `kty`, curve or `use` are skipped so
//! that a peer adding a new key type does not break federation.
//!
//! Supported key types: EC P-256, P-384 and P-521, RSA, and Ed25519 (the last
//! only useful for X.509 authorities: no JWT-SVID algorithm uses it).

use std::cell::Cell;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

use super::id::TrustDomain;

/// Largest bundle document we parse, in bytes.
///
/// Bundles come from federated peers over the network; a real one holds a
/// handful of keys and stays far below this.
pub const MAX_BUNDLE_LEN: usize = 1024 * 1024;

/// `use` value of a JWK holding an X.509 authority (TDB §4.2.2).
const USE_X509_SVID: &str = "x509-svid";
/// `use` value of a JWK holding a JWT authority (TDB §4.2.2).
const USE_JWT_SVID: &str = "jwt-svid";

/// Base64 as JWK members use it: URL-safe alphabet. Padding is forbidden by
/// RFC 7515 but some producers add it, and accepting it costs nothing.
const B64_URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_encode_padding(false).with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Base64 as `x5c` uses it: standard alphabet (RFC 7517 §4.7), padding
/// optional for the same reason as above.
const B64_STD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_encode_padding(true).with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a bundle or PEM document was rejected, or could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The document is larger than [`MAX_BUNDLE_LEN`].
    #[error("bundle is {len} bytes, larger than the limit of {max}")]
    TooLarge {
        /// Size of the rejected document.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The document is not valid JSON.
    #[error("bundle is not valid json: {reason}")]
    Malformed {
        /// The parser's description.
        reason: String,
    },
    /// A JSON object has the same member twice (TDB §5.1.1).
    #[error("duplicate json member {name:?}")]
    DuplicateMember {
        /// The repeated member name.
        name: String,
    },
    /// The required `keys` member is absent (TDB §4.1.3).
    #[error("bundle has no keys member")]
    MissingKeys,
    /// A top-level member has the wrong type or value.
    #[error("bundle member {member:?} is invalid: {reason}")]
    InvalidMember {
        /// The member name.
        member: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A JWK we would use is malformed.
    #[error("key {index} is invalid: {reason}")]
    InvalidJwk {
        /// Position of the JWK in `keys`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A `jwt-svid` JWK has no `kid` (JWT-SVID §6.1).
    #[error("key {index} is a jwt-svid key without a kid")]
    MissingKeyId {
        /// Position of the JWK in `keys`.
        index: usize,
    },
    /// Two JWT authorities share a `kid`.
    #[error("key id {kid:?} appears more than once")]
    DuplicateKeyId {
        /// The repeated key id.
        kid: String,
    },
    /// A certificate (in `x5c` or in PEM) does not parse.
    #[error("certificate {index} is invalid: {reason}")]
    InvalidCertificate {
        /// Position of the JWK in `keys`, or of the block in the PEM text.
        index: usize,
        /// The parser's description.
        reason: String,
    },
    /// The key parameters of an `x509-svid` JWK differ from its certificate's
    /// public key.
    #[error("key {index}: public key parameters do not match the x5c certificate")]
    KeyMismatch {
        /// Position of the JWK in `keys`.
        index: usize,
    },
    /// An authority cannot be written as a JWK (unparsable certificate or
    /// unsupported key type).
    #[error("authority cannot be written as a jwk: {reason}")]
    Unrepresentable {
        /// What is wrong with it.
        reason: String,
    },
    /// The PEM text is malformed.
    #[error("pem line {line}: {reason}")]
    PemMalformed {
        /// One-based line number.
        line: usize,
        /// What is wrong there.
        reason: &'static str,
    },
    /// A PEM block is not a certificate.
    #[error("pem block {label:?} is not a certificate")]
    PemNotCertificate {
        /// The block's label, e.g. `PRIVATE KEY`.
        label: String,
    },
    /// The PEM text holds no certificate at all.
    #[error("pem text contains no certificate")]
    NoCertificates,
}

/// A JWT signing authority of a trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    /// The key id (`kid`) tokens name in their header.
    pub key_id: String,
    /// The public key, as DER `SubjectPublicKeyInfo`.
    pub public_key: Vec<u8>,
    /// When the key stops being used, in unix seconds; 0 when unknown. The
    /// JSON forms do not carry it, so parsed bundles always have 0.
    pub expires_at: i64,
    /// Marked as suspected compromised (SPIRE's `tainted`): still valid until revoked, but
    /// every JWT-SVID it signed is to be replaced. The JSON forms do not carry it.
    pub tainted: bool,
}

/// The trust bundle of one trust domain: its X.509 and JWT authorities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The trust domain the bundle belongs to. The JSON forms do not carry
    /// it (TDB §3), so parsers take it from the caller.
    pub trust_domain: TrustDomain,
    /// Root CA certificates, DER.
    pub x509_authorities: Vec<Vec<u8>>,
    /// JWT signing keys.
    pub jwt_authorities: Vec<JwtAuthority>,
    /// How often consumers should refresh, in seconds.
    pub refresh_hint: Option<i64>,
    /// Increases whenever the content changes; 0 means unset.
    pub sequence_number: u64,
    /// The X.509 authorities (DER, each also in `x509_authorities`) marked as suspected
    /// compromised (SPIRE's `tainted`): still trusted until revoked, but every SVID they
    /// signed is to be replaced. The JSON forms do not carry it.
    pub tainted_x509: Vec<Vec<u8>>,
}

/// Splits a PEM document into DER certificates.
///
/// Only `CERTIFICATE` blocks and blank lines are allowed: any other block,
/// explanatory text or PEM header is rejected rather than skipped, because
/// this reads trust anchors and a half-understood file should not be trusted.
/// Every certificate must parse as X.509.
///
/// # Errors
///
/// [`BundleError::PemMalformed`], [`BundleError::PemNotCertificate`],
/// [`BundleError::InvalidCertificate`], or [`BundleError::NoCertificates`]
/// for a document without any certificate.
pub fn parse_pem_certs(pem: &str) -> Result<Vec<Vec<u8>>, BundleError> {
    let mut certs = Vec::new();
    let mut lines = pem.lines().enumerate().map(|(n, l)| (n + 1, l.trim()));
    while let Some((line, text)) = lines.next() {
        if text.is_empty() {
            continue;
        }
        let label = text
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .ok_or(BundleError::PemMalformed { line, reason: "text outside a pem block" })?;
        if label != "CERTIFICATE" {
            return Err(BundleError::PemNotCertificate { label: label.to_owned() });
        }
        let mut body = String::new();
        let mut closed = false;
        for (line, text) in lines.by_ref() {
            if text == "-----END CERTIFICATE-----" {
                closed = true;
                break;
            }
            if text.starts_with("-----") {
                return Err(BundleError::PemMalformed { line, reason: "unexpected boundary inside a certificate block" });
            }
            if text.contains(':') {
                return Err(BundleError::PemMalformed { line, reason: "pem headers are not allowed" });
            }
            body.push_str(text);
        }
        if !closed {
            return Err(BundleError::PemMalformed { line, reason: "certificate block is not terminated" });
        }
        let der =
            STANDARD.decode(&body).map_err(|_| BundleError::PemMalformed { line, reason: "certificate block is not valid base64" })?;
        parse_cert(&der).map_err(|reason| BundleError::InvalidCertificate { index: certs.len(), reason })?;
        certs.push(der);
    }
    if certs.is_empty() {
        return Err(BundleError::NoCertificates);
    }
    Ok(certs)
}

/// Parses one DER certificate, refusing trailing bytes.
fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok((rest, _)) if !rest.is_empty() => Err("trailing data after certificate".to_owned()),
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(e.to_string()),
    }
}

// === strict JSON ===

/// Why [`parse_strict_json`] failed.
#[derive(Debug)]
pub(super) enum StrictJsonError {
    /// An object repeats a member name.
    Duplicate(String),
    /// Not valid JSON.
    Malformed(String),
}

/// Parses JSON like `serde_json::from_slice::<Value>`, but fails on a
/// repeated object member instead of keeping the last one.
///
/// JWS (RFC 7515 §4) and the bundle map (TDB §5.1.1) both ask for this:
/// if two parsers resolve a duplicate differently, a document can mean one
/// thing to the validator and another to the producer.
pub(super) fn parse_strict_json(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    let duplicate = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = StrictValue { duplicate: &duplicate }.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    parsed.map_err(|e| match duplicate.take() {
        Some(name) => StrictJsonError::Duplicate(name),
        None => StrictJsonError::Malformed(e.to_string()),
    })
}

/// Seed that builds a [`Value`] and records the first repeated member name.
///
/// The name travels out through the cell because serde errors only carry
/// text, and callers need to tell a duplicate from plain bad syntax.
#[derive(Clone, Copy)]
struct StrictValue<'a> {
    duplicate: &'a Cell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any json value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                let message = format!("duplicate member {name:?}");
                self.duplicate.set(Some(name));
                return Err(de::Error::custom(message));
            }
            let value = map.next_value_seed(self)?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

// === key parameters ===

/// Elliptic curves we can carry in a JWK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Curve {
    P256,
    P384,
    P521,
}

/// The public half of a key, in the terms a JWK uses.
///
/// This is the bridge between the JWK form (bundles) and the DER
/// `SubjectPublicKeyInfo` form (certificates, [`JwtAuthority`]); comparing two
/// of these is how an `x509-svid` JWK is matched against its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyParams {
    /// `kty: EC`; coordinates at the curve's full length.
    Ec { curve: Curve, x: Vec<u8>, y: Vec<u8> },
    /// `kty: RSA`; big-endian integers without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// `kty: OKP, crv: Ed25519`.
    Ed25519 { x: Vec<u8> },
}

/// Outcome of reading key parameters from a JWK.
enum JwkKey {
    /// A key type we understand.
    Known(KeyParams),
    /// `kty` or `crv` we do not support: the JWK is to be skipped.
    Unsupported,
}

impl Curve {
    fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "P-256" => Some(Self::P256),
            "P-384" => Some(Self::P384),
            "P-521" => Some(Self::P521),
            _ => None,
        }
    }

    /// Byte length of one coordinate (RFC 7518 §6.2.1.2: always full length).
    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }
}

impl KeyParams {
    /// Reads a DER `SubjectPublicKeyInfo`.
    ///
    /// Only uncompressed EC points are supported: that is what every CA and
    /// JWK producer we know of emits.
    pub(super) fn from_spki(der: &[u8]) -> Result<Self, &'static str> {
        let Ok(([], spki)) = SubjectPublicKeyInfo::from_der(der) else {
            return Err("malformed subject public key info");
        };
        Self::from_parsed_spki(&spki)
    }

    fn from_parsed_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, &'static str> {
        let alg = &spki.algorithm.algorithm;
        let key = spki.subject_public_key.data.as_ref();
        if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve_oid = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).ok_or("ec key without a named curve")?;
            let curve = if curve_oid == OID_EC_P256 {
                Curve::P256
            } else if curve_oid == OID_NIST_EC_P384 {
                Curve::P384
            } else if curve_oid == OID_NIST_EC_P521 {
                Curve::P521
            } else {
                return Err("unsupported elliptic curve");
            };
            let len = curve.coordinate_len();
            match key.split_first() {
                Some((0x04, xy)) if xy.len() == 2 * len => {
                    let (x, y) = xy.split_at(len);
                    Ok(Self::Ec { curve, x: x.to_vec(), y: y.to_vec() })
                }
                _ => Err("ec point is not an uncompressed point of the curve's size"),
            }
        } else if *alg == OID_PKCS1_RSAENCRYPTION {
            match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                    let n = strip_leading_zeros(rsa.modulus);
                    let e = strip_leading_zeros(rsa.exponent);
                    if n.is_empty() || e.is_empty() {
                        return Err("rsa key with a zero modulus or exponent");
                    }
                    Ok(Self::Rsa { n: n.to_vec(), e: e.to_vec() })
                }
                _ => Err("malformed rsa public key"),
            }
        } else if *alg == OID_SIG_ED25519 {
            if key.len() != 32 {
                return Err("ed25519 key is not 32 bytes");
            }
            Ok(Self::Ed25519 { x: key.to_vec() })
        } else {
            Err("unsupported public key algorithm")
        }
    }

    /// Reads the key members of a JWK whose `kty` is already known to be a
    /// string.
    fn from_jwk(jwk: &Map<String, Value>, kty: &str) -> Result<JwkKey, String> {
        let params = match kty {
            "EC" => {
                let Some(curve) = jwk.get("crv").and_then(Value::as_str).and_then(Curve::from_name) else {
                    return Ok(JwkKey::Unsupported);
                };
                let x = jwk_bytes(jwk, "x")?;
                let y = jwk_bytes(jwk, "y")?;
                let len = curve.coordinate_len();
                if x.len() != len || y.len() != len {
                    return Err(format!("{} coordinates must be {len} bytes", curve.name()));
                }
                Self::Ec { curve, x, y }
            }
            "RSA" => {
                let n = strip_leading_zeros(&jwk_bytes(jwk, "n")?).to_vec();
                let e = strip_leading_zeros(&jwk_bytes(jwk, "e")?).to_vec();
                if n.is_empty() || e.is_empty() {
                    return Err("rsa modulus and exponent must be non-zero".to_owned());
                }
                Self::Rsa { n, e }
            }
            "OKP" => {
                if jwk.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                    return Ok(JwkKey::Unsupported);
                }
                let x = jwk_bytes(jwk, "x")?;
                if x.len() != 32 {
                    return Err("ed25519 key must be 32 bytes".to_owned());
                }
                Self::Ed25519 { x }
            }
            _ => return Ok(JwkKey::Unsupported),
        };
        Ok(JwkKey::Known(params))
    }

    /// Encodes the key as DER `SubjectPublicKeyInfo`.
    ///
    /// P-256 and P-384 points go through the `p256`/`p384` crates, which also
    /// reject points that are not on the curve; the other types are encoded
    /// here since no crate in our dependency set covers them.
    pub(super) fn to_spki_der(&self) -> Result<Vec<u8>, &'static str> {
        use p256::pkcs8::EncodePublicKey as _;
        match self {
            Self::Ec { curve, x, y } => {
                let point = [&[0x04][..], x, y].concat();
                match curve {
                    Curve::P256 => p256::PublicKey::from_sec1_bytes(&point)
                        .map_err(|_| "point is not on the p-256 curve")?
                        .to_public_key_der()
                        .map(|doc| doc.as_bytes().to_vec())
                        .map_err(|_| "cannot encode p-256 key"),
                    Curve::P384 => p384::PublicKey::from_sec1_bytes(&point)
                        .map_err(|_| "point is not on the p-384 curve")?
                        .to_public_key_der()
                        .map(|doc| doc.as_bytes().to_vec())
                        .map_err(|_| "cannot encode p-384 key"),
                    Curve::P521 => Ok(ec_spki_der(&OID_DER_SECP521R1, &point)),
                }
            }
            Self::Rsa { .. } => {
                let rsa_key = self.verification_bytes();
                let alg = der_tlv(0x30, &[&OID_DER_RSA_ENCRYPTION[..], &DER_NULL].concat());
                Ok(der_tlv(0x30, &[alg, der_bit_string(&rsa_key)].concat()))
            }
            Self::Ed25519 { x } => {
                let alg = der_tlv(0x30, &OID_DER_ED25519);
                Ok(der_tlv(0x30, &[alg, der_bit_string(x)].concat()))
            }
        }
    }

    /// The key in the form `aws-lc-rs` verifies with: the uncompressed point
    /// for EC, the PKCS#1 `RSAPublicKey` DER for RSA, the raw key for Ed25519.
    pub(super) fn verification_bytes(&self) -> Vec<u8> {
        match self {
            Self::Ec { x, y, .. } => [&[0x04][..], x, y].concat(),
            Self::Rsa { n, e } => der_tlv(0x30, &[der_uint(n), der_uint(e)].concat()),
            Self::Ed25519 { x } => x.clone(),
        }
    }

    /// Writes `kty` and the key members into a JWK object.
    fn write_jwk(&self, jwk: &mut Map<String, Value>) {
        let b64 = |bytes: &[u8]| Value::String(URL_SAFE_NO_PAD.encode(bytes));
        match self {
            Self::Ec { curve, x, y } => {
                jwk.insert("kty".to_owned(), "EC".into());
                jwk.insert("crv".to_owned(), curve.name().into());
                jwk.insert("x".to_owned(), b64(x));
                jwk.insert("y".to_owned(), b64(y));
            }
            Self::Rsa { n, e } => {
                jwk.insert("kty".to_owned(), "RSA".into());
                jwk.insert("n".to_owned(), b64(n));
                jwk.insert("e".to_owned(), b64(e));
            }
            Self::Ed25519 { x } => {
                jwk.insert("kty".to_owned(), "OKP".into());
                jwk.insert("crv".to_owned(), "Ed25519".into());
                jwk.insert("x".to_owned(), b64(x));
            }
        }
    }
}

fn jwk_bytes(jwk: &Map<String, Value>, member: &str) -> Result<Vec<u8>, String> {
    let text = jwk.get(member).and_then(Value::as_str).ok_or_else(|| format!("member {member:?} is missing or not a string"))?;
    B64_URL_LENIENT.decode(text).map_err(|_| format!("member {member:?} is not valid base64url"))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

// Minimal DER writer: only what SubjectPublicKeyInfo needs.

/// id-ecPublicKey, 1.2.840.10045.2.1.
const OID_DER_EC_PUBLIC_KEY: [u8; 9] = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// secp521r1, 1.3.132.0.35.
const OID_DER_SECP521R1: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
/// rsaEncryption, 1.2.840.113549.1.1.1.
const OID_DER_RSA_ENCRYPTION: [u8; 11] = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-Ed25519, 1.3.101.112.
const OID_DER_ED25519: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
const DER_NULL: [u8; 2] = [0x05, 0x00];

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        // Fits in the short form: lengths below 128 are one byte.
        out.extend(u8::try_from(len).ok());
    } else {
        let bytes = len.to_be_bytes();
        let significant = strip_leading_zeros(&bytes);
        // At most size_of::<usize>() bytes, so the count fits in the low bits.
        let count = u8::try_from(significant.len()).unwrap_or(0x7f);
        out.push(0x80 | count);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

/// A non-negative INTEGER from big-endian magnitude bytes.
fn der_uint(magnitude: &[u8]) -> Vec<u8> {
    let digits = strip_leading_zeros(magnitude);
    let mut content = Vec::with_capacity(digits.len() + 1);
    // A set top bit would read as negative, so it gets a zero byte in front.
    if digits.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(digits);
    der_tlv(0x02, &content)
}

fn der_bit_string(bytes: &[u8]) -> Vec<u8> {
    der_tlv(0x03, &[&[0u8][..], bytes].concat())
}

fn ec_spki_der(curve_oid: &[u8], point: &[u8]) -> Vec<u8> {
    let alg = der_tlv(0x30, &[&OID_DER_EC_PUBLIC_KEY[..], curve_oid].concat());
    der_tlv(0x30, &[alg, der_bit_string(point)].concat())
}

// === impl Bundle ===

/// Which JSON form a document is read as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// SPIFFE bundle: JWKs without `use` are skipped.
    Spiffe,
    /// Plain JWKS: JWKs without `use` are JWT authorities.
    Jwks,
}

impl Bundle {
    /// An empty bundle for `trust_domain`.
    #[must_use]
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            refresh_hint: None,
            sequence_number: 0,
            tainted_x509: Vec::new(),
        }
    }

    /// Whether the X.509 authority `der` is marked tainted.
    #[must_use]
    pub fn is_tainted_x509(&self, der: &[u8]) -> bool {
        self.tainted_x509.iter().any(|t| t == der)
    }

    /// The X.509 authorities marked tainted, and the JWT keys marked tainted (their kids).
    #[must_use]
    pub fn has_taint(&self) -> bool {
        !self.tainted_x509.is_empty() || self.jwt_authorities.iter().any(|k| k.tainted)
    }

    /// Finds a JWT authority by key id.
    #[must_use]
    pub fn jwt_authority(&self, key_id: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.key_id == key_id)
    }

    /// Writes the SPIFFE bundle JSON (TDB §4): one `x509-svid` JWK per X.509
    /// authority (key members derived from the certificate, the certificate
    /// in `x5c`), one `jwt-svid` JWK per JWT authority, plus
    /// `spiffe_sequence` (omitted when 0) and `spiffe_refresh_hint` (omitted
    /// when unset).
    ///
    /// An authority that cannot be written (certificate that does not parse,
    /// unsupported key type) is left out; use [`Bundle::try_to_spiffe_json`]
    /// to get an error instead.
    #[must_use]
    pub fn to_spiffe_json(&self) -> String {
        self.marshal(Form::Spiffe, false).unwrap_or_else(|_| Value::Object(Map::new())).to_string()
    }

    /// Like [`Bundle::to_spiffe_json`], but fails instead of leaving out an
    /// authority it cannot write.
    ///
    /// # Errors
    ///
    /// [`BundleError::Unrepresentable`] for an X.509 authority that does not
    /// parse or a key of an unsupported type.
    pub fn try_to_spiffe_json(&self) -> Result<String, BundleError> {
        self.marshal(Form::Spiffe, true).map(|v| v.to_string())
    }

    /// Writes the plain JWKS that the Workload API's `FetchJWTBundles`
    /// serves (checklist §4 item 18): JWT authorities only, with `kid` and
    /// key members but no `use`, and no `spiffe_*` members. Keys of an
    /// unsupported type are left out.
    #[must_use]
    pub fn jwt_jwks_json(&self) -> String {
        self.marshal(Form::Jwks, false).unwrap_or_else(|_| Value::Object(Map::new())).to_string()
    }

    /// Parses a SPIFFE bundle (TDB §4) for `trust_domain`.
    ///
    /// `keys` is required but may be empty (every key revoked). JWKs with an
    /// unknown or missing `kty`/`use` or an unsupported curve are skipped.
    /// An `x509-svid` JWK without `x5c` certificates is skipped; with several,
    /// the first is used (X509-SVID §6.2; go-spiffe rejects those).
    ///
    /// # Errors
    ///
    /// [`BundleError`] for oversized or malformed JSON, repeated members,
    /// a missing `keys`, bad `spiffe_*` members, a `jwt-svid` key without
    /// `kid`, repeated kids, an unparsable certificate, key members that do
    /// not match the certificate, or malformed key members.
    pub fn from_spiffe_json(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        Self::parse(trust_domain, json, Form::Spiffe)
    }

    /// Parses the plain JWKS form served by `FetchJWTBundles`: like
    /// [`Bundle::from_spiffe_json`], except that a JWK without `use` is read
    /// as a JWT authority.
    ///
    /// # Errors
    ///
    /// As [`Bundle::from_spiffe_json`]; every JWT key needs a `kid`.
    pub fn from_jwks_json(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        Self::parse(trust_domain, json, Form::Jwks)
    }

    /// The X.509 authorities as concatenated PEM `CERTIFICATE` blocks.
    #[must_use]
    pub fn x509_pem(&self) -> String {
        let mut out = String::new();
        for der in &self.x509_authorities {
            out.push_str("-----BEGIN CERTIFICATE-----\n");
            let b64 = STANDARD.encode(der);
            // RFC 7468 lines are 64 characters; base64 output is ASCII, so
            // byte chunks are char chunks.
            for chunk in b64.as_bytes().chunks(64) {
                out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
        }
        out
    }

    fn marshal(&self, form: Form, strict: bool) -> Result<Value, BundleError> {
        let mut keys = Vec::new();
        if form == Form::Spiffe {
            for der in &self.x509_authorities {
                let params = parse_cert(der).map_err(|reason| BundleError::Unrepresentable { reason }).and_then(|cert| {
                    KeyParams::from_parsed_spki(cert.public_key())
                        .map_err(|reason| BundleError::Unrepresentable { reason: reason.to_owned() })
                });
                let params = match params {
                    Ok(params) => params,
                    Err(e) if strict => return Err(e),
                    Err(_) => continue,
                };
                let mut jwk = Map::new();
                jwk.insert("use".to_owned(), USE_X509_SVID.into());
                params.write_jwk(&mut jwk);
                jwk.insert("x5c".to_owned(), vec![STANDARD.encode(der)].into());
                keys.push(Value::Object(jwk));
            }
        }
        for authority in &self.jwt_authorities {
            let params = match KeyParams::from_spki(&authority.public_key) {
                Ok(params) => params,
                Err(reason) if strict => {
                    return Err(BundleError::Unrepresentable { reason: format!("jwt authority {:?}: {reason}", authority.key_id) });
                }
                Err(_) => continue,
            };
            let mut jwk = Map::new();
            if form == Form::Spiffe {
                jwk.insert("use".to_owned(), USE_JWT_SVID.into());
            }
            jwk.insert("kid".to_owned(), authority.key_id.clone().into());
            params.write_jwk(&mut jwk);
            keys.push(Value::Object(jwk));
        }
        let mut root = Map::new();
        root.insert("keys".to_owned(), Value::Array(keys));
        if form == Form::Spiffe {
            if self.sequence_number != 0 {
                root.insert("spiffe_sequence".to_owned(), self.sequence_number.into());
            }
            if let Some(hint) = self.refresh_hint {
                root.insert("spiffe_refresh_hint".to_owned(), hint.into());
            }
        }
        Ok(Value::Object(root))
    }

    fn parse(trust_domain: TrustDomain, json: &[u8], form: Form) -> Result<Self, BundleError> {
        if json.len() > MAX_BUNDLE_LEN {
            return Err(BundleError::TooLarge { len: json.len(), max: MAX_BUNDLE_LEN });
        }
        let root = parse_strict_json(json).map_err(|e| match e {
            StrictJsonError::Duplicate(name) => BundleError::DuplicateMember { name },
            StrictJsonError::Malformed(reason) => BundleError::Malformed { reason },
        })?;
        let Value::Object(root) = root else {
            return Err(BundleError::Malformed { reason: "top level is not a json object".to_owned() });
        };
        let keys = match root.get("keys") {
            None => return Err(BundleError::MissingKeys),
            Some(Value::Array(keys)) => keys,
            Some(_) => {
                return Err(BundleError::InvalidMember { member: "keys", reason: "not an array" });
            }
        };
        let sequence_number = match root.get("spiffe_sequence") {
            None => 0,
            Some(v) => {
                v.as_u64().ok_or(BundleError::InvalidMember { member: "spiffe_sequence", reason: "not an unsigned 64-bit integer" })?
            }
        };
        let refresh_hint = match root.get("spiffe_refresh_hint") {
            None => None,
            Some(v) => {
                Some(v.as_i64().ok_or(BundleError::InvalidMember { member: "spiffe_refresh_hint", reason: "not a 64-bit integer" })?)
            }
        };
        let mut bundle = Self { refresh_hint, sequence_number, ..Self::new(trust_domain) };
        for (index, jwk) in keys.iter().enumerate() {
            bundle.add_jwk(index, jwk, form)?;
        }
        Ok(bundle)
    }

    /// Adds the authority one JWK describes, or skips the JWK as TDB §4.2
    /// asks for unknown key types and uses.
    fn add_jwk(&mut self, index: usize, jwk: &Value, form: Form) -> Result<(), BundleError> {
        let invalid = |reason: String| BundleError::InvalidJwk { index, reason };
        let Value::Object(jwk) = jwk else {
            return Err(invalid("not a json object".to_owned()));
        };
        let usage = match jwk.get("use") {
            None if form == Form::Jwks => USE_JWT_SVID,
            Some(Value::String(usage)) => usage.as_str(),
            // Missing in the SPIFFE form, or not even a string: unknown use.
            _ => return Ok(()),
        };
        if usage != USE_X509_SVID && usage != USE_JWT_SVID {
            return Ok(());
        }
        let Some(kty) = jwk.get("kty").and_then(Value::as_str) else {
            return Ok(());
        };
        if usage == USE_X509_SVID {
            self.add_x509_jwk(index, jwk, kty)
        } else {
            let JwkKey::Known(params) = KeyParams::from_jwk(jwk, kty).map_err(invalid)? else {
                return Ok(());
            };
            let key_id = match jwk.get("kid") {
                Some(Value::String(kid)) if !kid.is_empty() => kid.clone(),
                _ => return Err(BundleError::MissingKeyId { index }),
            };
            if self.jwt_authority(&key_id).is_some() {
                return Err(BundleError::DuplicateKeyId { kid: key_id });
            }
            let public_key = params.to_spki_der().map_err(|reason| invalid(reason.to_owned()))?;
            self.jwt_authorities.push(JwtAuthority { key_id, public_key, expires_at: 0, tainted: false });
            Ok(())
        }
    }

    fn add_x509_jwk(&mut self, index: usize, jwk: &Map<String, Value>, kty: &str) -> Result<(), BundleError> {
        let invalid = |reason: String| BundleError::InvalidJwk { index, reason };
        let first = match jwk.get("x5c") {
            None => return Ok(()),
            Some(Value::Array(chain)) => match chain.first() {
                None => return Ok(()),
                Some(Value::String(first)) => first,
                Some(_) => return Err(invalid("x5c entries must be strings".to_owned())),
            },
            Some(_) => return Err(invalid("x5c is not an array".to_owned())),
        };
        let JwkKey::Known(params) = KeyParams::from_jwk(jwk, kty).map_err(invalid)? else {
            return Ok(());
        };
        let der = B64_STD_LENIENT.decode(first).map_err(|_| invalid("x5c certificate is not valid base64".to_owned()))?;
        let cert = parse_cert(&der).map_err(|reason| BundleError::InvalidCertificate { index, reason })?;
        let cert_params = KeyParams::from_parsed_spki(cert.public_key())
            .map_err(|reason| BundleError::InvalidCertificate { index, reason: reason.to_owned() })?;
        if cert_params != params {
            return Err(BundleError::KeyMismatch { index });
        }
        self.x509_authorities.push(der);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
