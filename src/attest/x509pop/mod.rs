//! `x509pop` node attestation: proof of possession of a node certificate's private key,
//! wire-compatible with SPIRE's plugin of the same name (agent half and server half).
//!
//! Everything here is a pure function of its inputs (plus fresh randomness for nonces); the
//! caller owns the gRPC stream, the clock and the configuration.
//!
//! # Exchange
//! ```text
//!  agent                                              server
//!  attestation_payload(chain) ── payload ──────────>  verify_payload(payload, roots, now, max)
//!                                                      └─ AttestedCert::make_challenge()
//!  challenge_response(key, ch) <── challenge ───────  (bytes, Challenge)
//!                              ── response ───────>  Challenge::verify_response(response)
//!                                                      AttestedCert::{agent_path, selectors}
//! ```
//!
//! # Wire format (SPIRE `pkg/common/plugin/x509pop/x509pop.go`)
//! All messages are Go `encoding/json`: a `[]byte` is standard base64 **with** padding, a nil
//! pointer is `null`, and every struct field is always written (so the unused challenge kind is an
//! explicit `null`).
//! - payload: `{"certificates":["<DER leaf>","<DER intermediate>",...]}`
//! - challenge: `{"rsa_signature":{"nonce":".."},"ecdsa_signature":null}` for an RSA leaf key,
//!   `{"rsa_signature":null,"ecdsa_signature":{"nonce":".."}}` for an ECDSA one.
//! - response: `{"rsa_signature":{"nonce":"..","signature":".."},"ecdsa_signature":null}` or
//!   `{"rsa_signature":null,"ecdsa_signature":{"nonce":"..","r":"..","s":".."}}`.
//!
//! Both nonces are exactly 32 bytes. The signed value is `SHA-256(challenge nonce || response
//! nonce)`, used directly as the digest: ECDSA signs those 32 bytes without hashing them again
//! (`r`, `s` are minimal unsigned big-endian integers), RSA uses RSASSA-PSS with SHA-256 and MGF1
//! SHA-256 over that digest. Go signs PSS with the maximal salt and verifies with an
//! auto-detected salt, so the verifier here accepts any salt length too.
//!
//! # Differences from SPIRE (all fail closed)
//! - Chains whose CA certificates carry name constraints over a certificate with SANs, or that
//!   require an explicit certificate policy, are rejected instead of evaluated.
//! - RSA keys of CA certificates must be at least 2048 bits (Go accepts 1024); P-224 and DSA keys
//!   are not supported anywhere.
//! - Agent path templates support field references only (no pipelines or functions).
//! - JSON member names must match exactly (Go's decoder also takes `"Nonce"` for `"nonce"`); SPIRE
//!   itself always writes the lowercase names.

#![warn(clippy::indexing_slicing)]

mod plugin;

pub use plugin::{KIND, X509PopAgent, X509PopFileError, X509PopServer, X509PopServerConfig, load_agent_files};

use aws_lc_rs::digest::{Digest, SHA256, SHA384};
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, RsaKeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

use crate::spiffe::x509::path::{Link, Mode, Origin, PathNode, PathRules, find_paths};
use crate::spiffe::x509::signature::{Curve, SpkiKey, classify_spki, strip_leading_zeros};

/// The plugin name: the attestation data type, the selector type and `.PluginName`.
pub const PLUGIN_NAME: &str = "x509pop";

/// Length in bytes of both the challenge nonce and the response nonce.
pub const NONCE_LEN: usize = 32;

/// SPIRE's default `max_intermediates`.
pub const DEFAULT_MAX_INTERMEDIATES: usize = 4;

/// SPIRE's default `max_rsa_key_size`: RSA keys of the leaf and of intermediates above this many
/// bits are refused before any signature work, so a huge modulus cannot cost the server CPU.
pub const MAX_RSA_KEY_BITS: u64 = 8192;

/// SPIRE's default `agent_path_template` in `external_pki` mode.
pub const DEFAULT_AGENT_PATH_TEMPLATE: &str = "/{{ .PluginName }}/{{ .Fingerprint }}";

/// Go's `maxChainSignatureChecks`: bounds the work of chain building over hostile pools.
const MAX_SIGNATURE_CHECKS: usize = 100;

/// Smallest RSA modulus accepted for a node key (Go's `crypto/rsa` refuses smaller ones).
const MIN_RSA_NODE_KEY_BITS: u64 = 1024;

/// Go's `base64.StdEncoding`: padded, padding required, but (unlike the strict base64 crate
/// default) non-zero trailing bits in the last symbol are tolerated, as Go does.
const GO_STD_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// Everything that can go wrong on either side of an `x509pop` attestation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X509PopError {
    /// The attestation payload is not the expected JSON document.
    #[error("malformed attestation payload: {0}")]
    MalformedPayload(String),
    /// The payload lists no certificate.
    #[error("no certificate to attest")]
    NoCertificates,
    /// More intermediates than allowed were presented.
    #[error("too many intermediate certificates: {count} exceeds the maximum of {max}")]
    TooManyIntermediates {
        /// Intermediates in the payload.
        count: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A presented certificate does not parse (or breaks a rule Go's parser enforces).
    #[error("unable to parse {what}: {reason}")]
    MalformedCertificate {
        /// `leaf certificate` or `intermediate certificate N`.
        what: String,
        /// Why.
        reason: String,
    },
    /// A configured trusted root does not parse.
    #[error("unable to parse trusted root {index}: {reason}")]
    MalformedRoot {
        /// Position in the roots list.
        index: usize,
        /// Why.
        reason: String,
    },
    /// An RSA key of the leaf or of an intermediate is larger than [`MAX_RSA_KEY_BITS`].
    #[error("{what} rsa key of {bits} bits exceeds the maximum of {max} bits")]
    RsaKeyTooLarge {
        /// `leaf certificate` or `intermediate certificate N`.
        what: String,
        /// The modulus size.
        bits: u64,
        /// The limit.
        max: u64,
    },
    /// No chain from the leaf through the presented intermediates to a trusted root is valid.
    #[error("certificate verification failed: no valid chain to the trusted roots: {0}")]
    ChainNotVerified(String),
    /// The leaf's KeyUsage lacks digitalSignature (an absent KeyUsage extension counts as lacking).
    #[error("certificate not intended for digital signature use: leaf key usage lacks digitalSignature")]
    MissingDigitalSignature,
    /// The leaf's (or the node private key's) algorithm cannot do this proof of possession.
    #[error("unsupported key type: {0}")]
    UnsupportedKeyType(String),
    /// The challenge received by the agent is not the expected JSON document.
    #[error("malformed challenge: {0}")]
    MalformedChallenge(String),
    /// The challenge response received by the server is not the expected JSON document.
    #[error("malformed challenge response: {0}")]
    MalformedResponse(String),
    /// The challenge lacks the member matching the node key's type.
    #[error("expecting {expected} challenge")]
    WrongChallengeKind {
        /// `rsa` or `ecdsa`.
        expected: &'static str,
    },
    /// The response lacks the member matching the leaf key's type.
    #[error("expecting {expected} response")]
    WrongResponseKind {
        /// `rsa` or `ecdsa`.
        expected: &'static str,
    },
    /// A nonce is not exactly [`NONCE_LEN`] bytes.
    #[error("invalid {which} nonce: expected 32 bytes, got {len}")]
    NonceLength {
        /// `challenge` or `response`.
        which: &'static str,
        /// The length received.
        len: usize,
    },
    /// The response's signature does not verify with the leaf's public key.
    #[error("challenge response verification failed: {kind} signature is invalid")]
    SignatureInvalid {
        /// `rsa` or `ecdsa`.
        kind: &'static str,
    },
    /// The node private key is not a usable key in a supported encoding.
    #[error("unable to parse node private key: expected pkcs#8, sec1 or pkcs#1 der of an ec p-256/p-384/p-521 or rsa key")]
    MalformedPrivateKey,
    /// The crypto library refused to sign.
    #[error("signing the challenge failed")]
    Signing,
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Rng,
    /// The agent path template uses a construct beyond field references.
    #[error("unsupported agent path template construct {0:?}: only field references such as {{{{ .Fingerprint }}}} are supported")]
    UnsupportedTemplate(String),
    /// The agent path template names a variable that does not exist.
    #[error("unknown agent path template variable {0:?}")]
    UnknownTemplateVariable(String),
    /// The rendered agent path is not a valid SPIFFE ID path.
    #[error("invalid agent path suffix {path:?}: {reason}")]
    InvalidAgentPath {
        /// The rendered template.
        path: String,
        /// Which SPIFFE path rule it breaks.
        reason: &'static str,
    },
}

/// The gRPC status class SPIRE answers with for an error (SPIRE's server plugin and agent plugin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusClass {
    /// `InvalidArgument`: the client sent something unusable.
    InvalidArgument,
    /// `PermissionDenied`: well-formed but not trusted.
    PermissionDenied,
    /// `Internal`: configuration, key type or local failure.
    Internal,
}

impl X509PopError {
    /// The status code SPIRE uses for this failure, so the caller can answer exactly as SPIRE does.
    #[must_use]
    pub fn status_class(&self) -> StatusClass {
        match self {
            Self::MalformedPayload(_)
            | Self::NoCertificates
            | Self::TooManyIntermediates { .. }
            | Self::MalformedCertificate { .. }
            | Self::RsaKeyTooLarge { .. }
            | Self::MalformedResponse(_) => StatusClass::InvalidArgument,
            // SPIRE wraps every VerifyChallengeResponse error (kind, nonce, signature) in
            // PermissionDenied "challenge response verification failed".
            Self::ChainNotVerified(_) | Self::WrongResponseKind { .. } | Self::NonceLength { .. } | Self::SignatureInvalid { .. } => {
                StatusClass::PermissionDenied
            }
            _ => StatusClass::Internal,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON shapes
// ---------------------------------------------------------------------------------------------

/// A Go `[]byte` in JSON: a padded standard base64 string, or `null` for a nil slice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct GoBytes(Vec<u8>);

impl Serialize for GoBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&GO_STD_B64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for GoBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Go decodes `null` into a nil slice; later length checks then reject it, as in SPIRE.
        match Option::<String>::deserialize(d)? {
            None => Ok(Self::default()),
            Some(text) => GO_STD_B64.decode(text.as_bytes()).map(Self).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct AttestationData {
    // Absent or null both mean "no certificates", like a nil slice in Go.
    #[serde(default)]
    certificates: Option<Vec<GoBytes>>,
}

#[derive(Serialize, Deserialize)]
struct NonceOnly {
    #[serde(default)]
    nonce: GoBytes,
}

// Field order matters for byte-identical output: Go writes struct fields in declaration order,
// and serde_json does the same; `None` is written as `null`, matching Go's nil pointers.
#[derive(Serialize, Deserialize)]
struct ChallengeJson {
    #[serde(default)]
    rsa_signature: Option<NonceOnly>,
    #[serde(default)]
    ecdsa_signature: Option<NonceOnly>,
}

#[derive(Serialize, Deserialize)]
struct RsaResponseJson {
    #[serde(default)]
    nonce: GoBytes,
    #[serde(default)]
    signature: GoBytes,
}

#[derive(Serialize, Deserialize)]
struct EcdsaResponseJson {
    #[serde(default)]
    nonce: GoBytes,
    #[serde(default)]
    r: GoBytes,
    #[serde(default)]
    s: GoBytes,
}

#[derive(Serialize, Deserialize)]
struct ResponseJson {
    #[serde(default)]
    rsa_signature: Option<RsaResponseJson>,
    #[serde(default)]
    ecdsa_signature: Option<EcdsaResponseJson>,
}

/// Parses one of the protocol's JSON documents with Go `encoding/json` semantics where serde's
/// derive differs: a struct must be a JSON object (serde also takes an array), a top-level
/// `null` leaves every field empty, and a repeated member keeps its last value.
fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if value.is_null() {
        value = serde_json::Value::Object(serde_json::Map::new());
    }
    let Some(members) = value.as_object() else { return Err("expected a json object".into()) };
    for (name, member) in members {
        if (name == "rsa_signature" || name == "ecdsa_signature") && !(member.is_object() || member.is_null()) {
            return Err(format!("{name}: expected a json object or null"));
        }
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs (strings, options, vectors) into memory cannot fail; an
    // empty document would be rejected by the peer rather than panicking here.
    serde_json::to_vec(value).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Keys and signatures
// ---------------------------------------------------------------------------------------------

/// The leaf's public key, in the form the challenge needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeKey {
    /// Big-endian modulus and exponent, leading zeros stripped.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed SEC1 point.
    Ec { curve: Curve, point: Vec<u8> },
}

impl NodeKey {
    fn kind(&self) -> &'static str {
        match self {
            Self::Rsa { .. } => "rsa",
            Self::Ec { .. } => "ecdsa",
        }
    }
}

/// Left-pads `value` with zeros to `len` bytes; `None` if it does not fit.
fn left_pad(value: &[u8], len: usize) -> Option<Vec<u8>> {
    let value = strip_leading_zeros(value);
    let pad = len.checked_sub(value.len())?;
    let mut out = vec![0u8; pad];
    out.extend_from_slice(value);
    Some(out)
}

/// DER `ECDSA-Sig-Value` from Go-style minimal big-endian `r` and `s`. `None` when either is zero
/// or longer than any supported group order (such a value cannot verify anyway).
fn ecdsa_der_signature(r: &[u8], s: &[u8]) -> Option<Vec<u8>> {
    fn integer(v: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let v = strip_leading_zeros(v);
        if v.is_empty() || v.len() > 66 {
            return None;
        }
        let pad = v.first().is_some_and(|b| b & 0x80 != 0);
        out.push(0x02);
        out.push(u8::try_from(v.len() + usize::from(pad)).ok()?);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        Some(())
    }
    let mut body = Vec::with_capacity(2 * 69);
    integer(r, &mut body)?;
    integer(s, &mut body)?;
    let len = u8::try_from(body.len()).ok()?;
    let mut out = vec![0x30];
    if len >= 0x80 {
        out.push(0x81);
    }
    out.push(len);
    out.extend_from_slice(&body);
    Some(out)
}

/// `SHA-256(challenge_nonce || response_nonce)` after SPIRE's length checks (`combineNonces`).
fn combine_nonces(challenge: &[u8], response: &[u8]) -> Result<[u8; 32], X509PopError> {
    if challenge.len() != NONCE_LEN {
        return Err(X509PopError::NonceLength { which: "challenge", len: challenge.len() });
    }
    if response.len() != NONCE_LEN {
        return Err(X509PopError::NonceLength { which: "response", len: response.len() });
    }
    let mut h = sha2::Sha256::new();
    h.update(challenge);
    h.update(response);
    Ok(h.finalize().into())
}

fn fresh_nonce() -> Result<[u8; NONCE_LEN], X509PopError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| X509PopError::Rng)?;
    Ok(nonce)
}

/// MGF1 with SHA-256 (RFC 8017 B.2.1).
fn mgf1_sha256(seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut h = sha2::Sha256::new();
        h.update(seed);
        h.update(counter.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// RSASSA-PSS verification (RFC 8017 8.1.2 / 9.1.2) with SHA-256, MGF1-SHA-256, over an already
/// computed digest, with the salt length auto-detected.
///
/// Why not aws-lc-rs: its verifier only takes a fixed, compile-time salt length, while Go's
/// `rsa.SignPSS(.., nil)` (what a SPIRE agent sends) uses the maximal salt and SPIRE verifies with
/// `PSSSaltLengthAuto`; any signer's choice must verify here as it does in SPIRE. The RSA public
/// operation is on public data only, so a plain (non constant-time) bignum is fine.
fn verify_rsa_pss_auto(n: &[u8], e: &[u8], digest: &[u8; 32], signature: &[u8]) -> bool {
    const H_LEN: usize = 32;
    let n = BigUint::from_bytes_be(n);
    let e = BigUint::from_bytes_be(e);
    let mod_bits = n.bits();
    if mod_bits < 2 {
        return false;
    }
    let Ok(k) = usize::try_from(mod_bits.div_ceil(8)) else { return false };
    // Go: the signature must be exactly as long as the modulus.
    if signature.len() != k {
        return false;
    }
    let s = BigUint::from_bytes_be(signature);
    if s >= n {
        return false;
    }
    let m = s.modpow(&e, &n);
    let em_bits = mod_bits - 1;
    let Ok(em_len) = usize::try_from(em_bits.div_ceil(8)) else { return false };
    let Some(em) = left_pad(&m.to_bytes_be(), em_len) else { return false };

    // EMSA-PSS-VERIFY with sLen unknown.
    if em_len < H_LEN + 2 || em.last() != Some(&0xbc) {
        return false;
    }
    let db_len = em_len - H_LEN - 1;
    let (Some(masked_db), Some(h)) = (em.get(..db_len), em.get(db_len..em_len - 1)) else { return false };
    // The leftmost 8*emLen - emBits bits of the encoded message must be zero.
    let unused_bits = u32::try_from(8 * em_len as u64 - em_bits).unwrap_or(8);
    let top_mask = 0xffu8.checked_shr(unused_bits).unwrap_or(0);
    if masked_db.first().is_none_or(|b| b & !top_mask != 0) {
        return false;
    }
    let mut db: Vec<u8> = masked_db.iter().zip(mgf1_sha256(h, db_len)).map(|(a, b)| a ^ b).collect();
    if let Some(first) = db.first_mut() {
        *first &= top_mask;
    }
    // DB = PS (zeros) || 0x01 || salt; the first non-zero byte must be the 0x01 separator.
    let Some(sep) = db.iter().position(|b| *b != 0) else { return false };
    if db.get(sep) != Some(&0x01) {
        return false;
    }
    let salt = db.get(sep + 1..).unwrap_or_default();
    let mut hash = sha2::Sha256::new();
    hash.update([0u8; 8]);
    hash.update(digest);
    hash.update(salt);
    let computed: [u8; 32] = hash.finalize().into();
    computed.as_slice() == h
}

// ---------------------------------------------------------------------------------------------
// Agent side
// ---------------------------------------------------------------------------------------------

/// Agent side: the attestation payload `{"certificates":["<std b64 padded DER>", ...]}`, leaf
/// first, byte-identical to what SPIRE's agent plugin marshals.
#[must_use]
pub fn attestation_payload(chain_der: &[Vec<u8>]) -> Vec<u8> {
    to_json(&AttestationData { certificates: Some(chain_der.iter().map(|c| GoBytes(c.clone())).collect()) })
}

/// The node's private key, as the agent signs with it.
enum NodeSigner {
    Rsa(RsaKeyPair),
    Ec(Curve, EcdsaKeyPair),
}

impl NodeSigner {
    /// Accepts PKCS#8 DER and, like Go's `tls.LoadX509KeyPair`, SEC1 (`EC PRIVATE KEY`) and
    /// PKCS#1 (`RSA PRIVATE KEY`) DER.
    fn parse(der: &[u8]) -> Result<Self, X509PopError> {
        // Fixed-format signing: r and s come out as fixed-width halves that are easy to trim.
        // P-384 only has a SHA-384 signing variant in aws-lc-rs; `challenge_response` explains
        // why signing a zero-padded 32-byte digest with it is exactly what Go does.
        let curves: [(Curve, &'static sig::EcdsaSigningAlgorithm); 3] = [
            (Curve::P256, &sig::ECDSA_P256_SHA256_FIXED_SIGNING),
            (Curve::P384, &sig::ECDSA_P384_SHA384_FIXED_SIGNING),
            (Curve::P521, &sig::ECDSA_P521_SHA256_FIXED_SIGNING),
        ];
        for (curve, alg) in curves {
            if let Ok(pair) = EcdsaKeyPair::from_pkcs8(alg, der) {
                return Ok(Self::Ec(curve, pair));
            }
        }
        if let Ok(pair) = RsaKeyPair::from_pkcs8(der) {
            return Ok(Self::Rsa(pair));
        }
        for (curve, alg) in curves {
            if let Ok(pair) = EcdsaKeyPair::from_private_key_der(alg, der) {
                return Ok(Self::Ec(curve, pair));
            }
        }
        RsaKeyPair::from_der(der).map(Self::Rsa).map_err(|_| X509PopError::MalformedPrivateKey)
    }
}

/// Agent side: answers a server challenge with the node key (PKCS#8 DER of an EC P-256, P-384,
/// P-521 or RSA key; SEC1 and PKCS#1 DER are accepted too). Returns the JSON response bytes.
///
/// # Errors
/// Malformed key or challenge, a challenge for the other key type, a challenge nonce that is not
/// 32 bytes, or a failure of the random number generator or of signing.
pub fn challenge_response(private_key_pkcs8: &[u8], challenge: &[u8]) -> Result<Vec<u8>, X509PopError> {
    let challenge: ChallengeJson = from_json(challenge).map_err(X509PopError::MalformedChallenge)?;
    let signer = NodeSigner::parse(private_key_pkcs8)?;
    let response_nonce = fresh_nonce()?;
    match signer {
        NodeSigner::Rsa(pair) => {
            let ch = challenge.rsa_signature.ok_or(X509PopError::WrongChallengeKind { expected: "rsa" })?;
            let combined = combine_nonces(&ch.nonce.0, &response_nonce)?;
            let digest = Digest::import_less_safe(&combined, &SHA256).map_err(|_| X509PopError::Signing)?;
            let mut signature = vec![0u8; pair.public_modulus_len()];
            // Salt = hash length (aws-lc-rs default, FIPS-approved); SPIRE verifies any salt.
            pair.sign_digest(&sig::RSA_PSS_SHA256, &digest, &mut signature).map_err(|_| X509PopError::Signing)?;
            Ok(to_json(&ResponseJson {
                rsa_signature: Some(RsaResponseJson { nonce: GoBytes(response_nonce.to_vec()), signature: GoBytes(signature) }),
                ecdsa_signature: None,
            }))
        }
        NodeSigner::Ec(curve, pair) => {
            let ch = challenge.ecdsa_signature.ok_or(X509PopError::WrongChallengeKind { expected: "ecdsa" })?;
            let combined = combine_nonces(&ch.nonce.0, &response_nonce)?;
            // Go's ecdsa.Sign takes the 32 bytes as the digest and reads them as a big-endian
            // integer (truncated only when longer than the group order). For P-384, aws-lc-rs
            // only signs SHA-384-sized digests, so the 32 bytes are left-padded with zeros to
            // 48: the same integer, hence the same signature equation.
            let digest = match curve {
                Curve::P384 => {
                    let mut padded = [0u8; 48];
                    if let Some(tail) = padded.get_mut(16..) {
                        tail.copy_from_slice(&combined);
                    }
                    Digest::import_less_safe(&padded, &SHA384)
                }
                Curve::P256 | Curve::P521 => Digest::import_less_safe(&combined, &SHA256),
            }
            .map_err(|_| X509PopError::Signing)?;
            let fixed = pair.sign_digest(&digest).map_err(|_| X509PopError::Signing)?;
            let (r, s) = fixed.as_ref().split_at(curve.scalar_len().min(fixed.as_ref().len()));
            // Go's big.Int.Bytes(): minimal big-endian, no leading zeros.
            Ok(to_json(&ResponseJson {
                rsa_signature: None,
                ecdsa_signature: Some(EcdsaResponseJson {
                    nonce: GoBytes(response_nonce.to_vec()),
                    r: GoBytes(strip_leading_zeros(r).to_vec()),
                    s: GoBytes(strip_leading_zeros(s).to_vec()),
                }),
            }))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server side: payload and chain verification
// ---------------------------------------------------------------------------------------------

/// A node certificate whose chain verified against the trusted roots; the server's handle for
/// the challenge, the agent ID and the selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedCert {
    /// DER of the leaf (node) certificate.
    pub leaf_der: Vec<u8>,
    /// DER of the presented chain, leaf first (as received, intermediates in payload order).
    pub chain_der: Vec<Vec<u8>>,
    key: NodeKey,
    fingerprint: String,
    serial_hex: String,
    serial_decimal: String,
    subject_cn: String,
    subject_serial: String,
    issuer_cn: String,
    issuer_serial: String,
    /// SHA-1 fingerprints of every non-leaf certificate of every verified chain, de-duplicated.
    ca_fingerprints: Vec<String>,
    /// The leaf's URI SANs as written in the certificate.
    uri_sans: Vec<String>,
}

/// A parsed certificate plus what chain building needs from it.
struct Node<'a> {
    der: &'a [u8],
    cert: X509Certificate<'a>,
}

impl PathNode for Node<'_> {
    fn certificate(&self) -> &X509Certificate<'_> {
        &self.cert
    }
}

fn sha1_hex(der: &[u8]) -> String {
    crate::text::hex(&sha1::Sha1::digest(der))
}

/// One DER TLV as read by [`der_tlv`]: `(tag, whole TLV, contents, rest of the input)`.
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// Reads one DER TLV. Only definite, minimally encoded lengths are accepted (DER), which is
/// what makes an encoding unique.
fn der_tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, after_tag) = input.split_first()?;
    let (&first, mut after_len) = after_tag.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (len_bytes, rest) = after_len.split_at_checked(count)?;
        if len_bytes.first() == Some(&0) {
            return None;
        }
        let len = len_bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return None;
        }
        after_len = rest;
        len
    };
    let (contents, rest) = after_len.split_at_checked(len)?;
    let header = input.len().checked_sub(after_len.len())?;
    Some((tag, input.get(..header.checked_add(len)?)?, contents, rest))
}

/// Checks the unsigned outer layer of a certificate byte by byte, as Go's parser does.
///
/// x509-parser tolerates wrong tag classes there and a non-zero unused-bits count in the
/// signature BIT STRING. Those bytes are outside the signed TBSCertificate, and the default
/// agent ID is the SHA-1 of the whole DER, so that leniency would let one certificate yield
/// several agent IDs. Go also requires the outer AlgorithmIdentifier to be byte-identical to the
/// one inside the TBSCertificate.
fn check_outer_encoding(der: &[u8], tbs_raw: &[u8]) -> Result<(), String> {
    let bad = |what: &str| Err(format!("malformed certificate encoding: {what}"));
    let Some((0x30, _, body, [])) = der_tlv(der) else { return bad("certificate sequence") };
    let Some((0x30, tbs, tbs_body, rest)) = der_tlv(body) else { return bad("tbs certificate") };
    if tbs != tbs_raw {
        return bad("tbs certificate");
    }
    let Some((0x30, outer_alg, _, rest)) = der_tlv(rest) else { return bad("signature algorithm") };
    let Some((0x03, _, [0, ..], [])) = der_tlv(rest) else { return bad("signature value") };
    // TBSCertificate: [0] version (optional), serialNumber, signature AlgorithmIdentifier, ...
    let mut fields = tbs_body;
    if let Some((0xa0, _, _, rest)) = der_tlv(fields) {
        fields = rest;
    }
    let Some((0x02, _, _, rest)) = der_tlv(fields) else { return bad("serial number") };
    let Some((0x30, inner_alg, _, _)) = der_tlv(rest) else { return bad("tbs signature algorithm") };
    if inner_alg != outer_alg {
        return Err("inner and outer signature algorithm identifiers don't match".into());
    }
    Ok(())
}

/// Parses one DER certificate with the extra strictness of Go's `x509.ParseCertificate`.
fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err("trailing data".into());
    }
    check_outer_encoding(der, cert.tbs_certificate.as_ref())?;
    // Go (1.23+ default) refuses negative serial numbers.
    if cert.raw_serial().first().is_some_and(|b| b & 0x80 != 0) {
        return Err("negative serial number".into());
    }
    cert.extensions_map().map_err(|_| "certificate contains duplicate extensions".to_string())?;
    for ext in cert.extensions() {
        if let ParsedExtension::ParseError { error } = ext.parsed_extension() {
            return Err(format!("malformed extension {}: {error}", ext.oid.to_id_string()));
        }
    }
    classify_spki(cert.public_key()).map_err(|e| e.to_string())?;
    Ok(cert)
}

/// Does Go's parser leave this critical extension "unhandled" (which fails verification)?
fn has_unhandled_critical_extension(cert: &X509Certificate<'_>) -> Option<String> {
    for ext in cert.extensions().iter().filter(|e| e.critical) {
        let oid = ext.oid.to_id_string();
        let handled = match oid.as_str() {
            // SKID, KU, BC, CRL DP, policies, AKID, EKU, policy constraints/mappings,
            // inhibitAnyPolicy, AIA.
            "2.5.29.14" | "2.5.29.15" | "2.5.29.19" | "2.5.29.31" | "2.5.29.32" | "2.5.29.33" | "2.5.29.35" | "2.5.29.36" | "2.5.29.37"
            | "2.5.29.54" | "1.3.6.1.5.5.7.1.1" => true,
            // A critical SAN is handled only if it holds a DNS, email, IP or URI name.
            "2.5.29.17" => match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => san.general_names.iter().any(|n| {
                    matches!(n, GeneralName::DNSName(_) | GeneralName::RFC822Name(_) | GeneralName::IPAddress(_) | GeneralName::URI(_))
                }),
                _ => false,
            },
            // Name constraints are refused separately (see `check_candidate`).
            "2.5.29.30" => true,
            _ => false,
        };
        if !handled {
            return Some(oid);
        }
    }
    None
}

fn has_extension(cert: &X509Certificate<'_>, oid: &str) -> bool {
    cert.extensions().iter().any(|e| e.oid.to_id_string() == oid)
}

fn san_extension_value<'a>(cert: &X509Certificate<'a>) -> Option<&'a [u8]> {
    cert.extensions().iter().find(|e| e.oid.to_id_string() == "2.5.29.17").map(|e| e.value)
}

fn subject_raw<'a>(cert: &X509Certificate<'a>) -> &'a [u8] {
    cert.tbs_certificate.subject.as_raw()
}

/// Go's `isValid` checks shared by every certificate of a chain: unhandled critical extensions
/// and the validity window (inclusive at both ends).
fn check_validity(cert: &X509Certificate<'_>, now: i64) -> Result<(), String> {
    if let Some(oid) = has_unhandled_critical_extension(cert) {
        return Err(format!("unhandled critical extension {oid}"));
    }
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err("certificate is not yet valid".into());
    }
    if now > validity.not_after.timestamp() {
        return Err("certificate has expired".into());
    }
    Ok(())
}

/// Verifies `child`'s signature with `parent`'s key, as Go's `CheckSignatureFrom` does (parent
/// must be a CA, keyCertSign if it has a KeyUsage, no SHA-1 or MD5).
fn check_signature_from(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> Result<(), String> {
    let bc = parent.basic_constraints().map_err(|e| e.to_string())?;
    match bc {
        None if parent.version().0 >= 2 => return Err("parent is a v3 certificate without basic constraints".into()),
        Some(bc) if !bc.value.ca => return Err("parent is not a ca".into()),
        _ => {}
    }
    if let Some(ku) = parent.key_usage().map_err(|e| e.to_string())?
        && ku.value.flags != 0
        && !ku.value.key_cert_sign()
    {
        return Err("parent key usage lacks keyCertSign".into());
    }
    let key = classify_spki(parent.public_key()).map_err(|e| e.to_string())?;
    if let SpkiKey::Rsa { bits, .. } = key
        && bits < 2048
    {
        return Err(format!("rsa ca key of {bits} bits is below the supported 2048"));
    }
    crate::spiffe::x509::signature::check_signature(child, &key).map_err(|e| e.to_string())
}

/// Go's `alreadyInChain`: same subject, same key and same SAN extension as a certificate
/// already in the chain, which stops loops and pointless cross-signed detours.
fn already_in_chain(candidate: &X509Certificate<'_>, chain: &[Link<'_, Node<'_>>]) -> bool {
    chain.iter().map(|link| &link.node.cert).any(|cert| {
        subject_raw(cert) == subject_raw(candidate)
            && cert.public_key().raw == candidate.public_key().raw
            && san_extension_value(cert) == san_extension_value(candidate)
    })
}

/// Go's `isValid` for a candidate parent, given the chain below it.
fn check_candidate(cand: &X509Certificate<'_>, origin: Origin, chain: &[Link<'_, Node<'_>>], now: i64) -> Result<(), String> {
    check_validity(cand, now)?;
    // Go evaluates a CA's name constraints against every SAN below it; that evaluation is not
    // implemented, so such chains are refused rather than accepted unchecked.
    if has_extension(cand, "2.5.29.30") && chain.iter().any(|link| san_extension_value(&link.node.cert).is_some()) {
        return Err("name constraints are not supported".into());
    }
    let bc = cand.basic_constraints().map_err(|e| e.to_string())?;
    if matches!(origin, Origin::Intermediate(_)) && !bc.as_ref().is_some_and(|b| b.value.ca) {
        return Err("intermediate is not authorized to sign other certificates".into());
    }
    if let Some(max) = bc.and_then(|b| b.value.path_len_constraint) {
        let below = chain.len().saturating_sub(1);
        if u64::try_from(below).unwrap_or(u64::MAX) > u64::from(max) {
            return Err("too many intermediates for path length constraint".into());
        }
    }
    Ok(())
}

/// Go's `buildChains` rules for the shared path search: a candidate identical to one already
/// in the chain is passed over, every other one costs a signature check out of
/// [`MAX_SIGNATURE_CHECKS`], and a refusal (of the signature or of the candidate) is worded as
/// Go words it.
struct GoChainRules {
    now: i64,
    signature_checks: usize,
}

impl<'a> PathRules<Node<'a>> for GoChainRules {
    type Error = String;

    fn skip(&self, candidate: &Node<'a>, chain: &[Link<'_, Node<'a>>]) -> bool {
        already_in_chain(&candidate.cert, chain)
    }

    fn charge(&mut self) -> Result<(), String> {
        self.signature_checks += 1;
        if self.signature_checks > MAX_SIGNATURE_CHECKS {
            return Err("signature check attempts limit reached while verifying certificate chain".into());
        }
        Ok(())
    }

    fn check(&self, child: &Node<'a>, candidate: Link<'_, Node<'a>>, chain: &[Link<'_, Node<'a>>]) -> Result<bool, String> {
        check_signature_from(&child.cert, &candidate.node.cert)?;
        check_candidate(&candidate.node.cert, candidate.origin, chain, self.now)?;
        Ok(true)
    }

    fn unknown_authority(&self) -> String {
        "certificate signed by unknown authority".to_owned()
    }
}

/// Go's `policiesValid` can only fail when some certificate requires an explicit policy (no
/// initial policy set is configured); the policy tree is not evaluated here, so refuse those.
fn requires_explicit_policy(chain: &[&Node<'_>]) -> bool {
    // Go skips policy processing for a chain that is just the (trusted) leaf.
    chain.len() > 1
        && chain.iter().any(|n| n.cert.policy_constraints().ok().flatten().is_some_and(|pc| pc.value.require_explicit_policy.is_some()))
}

/// Decodes a directory string the way Go does for the attribute types it reads.
fn attribute_string(attr: &AttributeTypeAndValue<'_>) -> Option<String> {
    if let Ok(s) = attr.as_str() {
        return Some(s.to_owned());
    }
    let data = attr.as_slice();
    match attr.attr_value().tag().0 {
        // BMPString: UTF-16BE.
        30 => {
            if !data.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c.first().copied().unwrap_or(0), c.last().copied().unwrap_or(0)]))
                .collect();
            String::from_utf16(&units).ok()
        }
        // T61String: Go keeps the bytes as they are.
        20 => String::from_utf8(data.to_vec()).ok(),
        _ => None,
    }
}

/// The last value of an attribute (Go's `pkix.Name` keeps the last one it sees).
fn name_attribute(name: &X509Name<'_>, oid: &str) -> Result<String, String> {
    match name.iter_attributes().filter(|a| a.attr_type().to_id_string() == oid).last() {
        None => Ok(String::new()),
        Some(attr) => attribute_string(attr).ok_or_else(|| format!("undecodable name attribute {oid}")),
    }
}

/// Go's `SerialNumberHex`: lowercase hex, padded to an even number of digits.
fn serial_hex(raw_serial: &[u8]) -> String {
    let digits = strip_leading_zeros(raw_serial);
    if digits.is_empty() { "00".to_owned() } else { crate::text::hex(digits) }
}

fn what_cert(index: usize) -> String {
    match index.checked_sub(1) {
        None => "leaf certificate".to_owned(),
        Some(i) => format!("intermediate certificate {i}"),
    }
}

/// Server side: parses the payload and verifies the chain against `roots` (DER) at `now` (Unix
/// seconds), allowing at most `max_intermediates` intermediates; the leaf must carry the
/// digitalSignature key usage and an RSA or EC P-256/P-384/P-521 key.
///
/// Follows SPIRE's server plugin and Go's `Certificate.Verify` with `ExtKeyUsageAny`: every
/// chain from the leaf through the presented intermediates to a root is built; each certificate
/// must be within its validity window, CAs must be CAs (and have keyCertSign when they carry a
/// KeyUsage), path length constraints hold, and no SHA-1 or MD5 signatures are accepted.
///
/// # Errors
/// See [`X509PopError`]; [`X509PopError::status_class`] gives the status SPIRE would answer with.
pub fn verify_payload(payload: &[u8], roots: &[Vec<u8>], now: i64, max_intermediates: usize) -> Result<AttestedCert, X509PopError> {
    let data: AttestationData = from_json(payload).map_err(X509PopError::MalformedPayload)?;
    let certs: Vec<Vec<u8>> = data.certificates.unwrap_or_default().into_iter().map(|b| b.0).collect();
    if certs.is_empty() {
        return Err(X509PopError::NoCertificates);
    }
    // Counted before parsing anything, as SPIRE does, to bound the work a client can cause.
    let count = certs.len() - 1;
    if count > max_intermediates {
        return Err(X509PopError::TooManyIntermediates { count, max: max_intermediates });
    }

    let mut presented = Vec::with_capacity(certs.len());
    for (index, der) in certs.iter().enumerate() {
        let cert = parse_certificate(der).map_err(|reason| X509PopError::MalformedCertificate { what: what_cert(index), reason })?;
        if let Ok(SpkiKey::Rsa { bits, .. }) = classify_spki(cert.public_key())
            && bits > MAX_RSA_KEY_BITS
        {
            return Err(X509PopError::RsaKeyTooLarge { what: what_cert(index), bits, max: MAX_RSA_KEY_BITS });
        }
        presented.push(Node { der, cert });
    }
    let mut trusted: Vec<Node<'_>> = Vec::with_capacity(roots.len());
    for (index, der) in roots.iter().enumerate() {
        let cert = parse_certificate(der).map_err(|reason| X509PopError::MalformedRoot { index, reason })?;
        // A certificate pool holds each certificate once.
        if !trusted.iter().any(|n| n.der == der.as_slice()) {
            trusted.push(Node { der, cert });
        }
    }
    let mut presented = presented.into_iter();
    let Some(leaf) = presented.next() else { return Err(X509PopError::NoCertificates) };
    let mut intermediates: Vec<Node<'_>> = Vec::new();
    for node in presented {
        if !intermediates.iter().any(|n| n.der == node.der) {
            intermediates.push(node);
        }
    }

    check_validity(&leaf.cert, now).map_err(X509PopError::ChainNotVerified)?;
    let chains: Vec<Vec<&Node<'_>>> = if trusted.iter().any(|n| n.der == leaf.der) {
        // Go: a leaf that is itself a trusted root is its own (single-certificate) chain.
        vec![vec![&leaf]]
    } else {
        // Every chain, not just one: each CA on any of them yields a fingerprint selector.
        let mut rules = GoChainRules { now, signature_checks: 0 };
        find_paths(&leaf, &intermediates, &trusted, &mut rules, Mode::AllPaths)
            .map_err(X509PopError::ChainNotVerified)?
            .into_iter()
            .map(|chain| chain.into_iter().map(|link| link.node).collect())
            .collect()
    };
    let chains: Vec<_> = chains.into_iter().filter(|c| !requires_explicit_policy(c)).collect();
    if chains.is_empty() {
        return Err(X509PopError::ChainNotVerified("explicit certificate policies are not supported".into()));
    }

    // SPIRE's GenerateChallenge: digitalSignature first, then the key type.
    let ku = leaf.cert.key_usage().ok().flatten();
    if !ku.is_some_and(|k| k.value.digital_signature()) {
        return Err(X509PopError::MissingDigitalSignature);
    }
    let key = match classify_spki(leaf.cert.public_key()) {
        Ok(SpkiKey::Rsa { n, e, bits, .. }) => {
            let e_value = BigUint::from_bytes_be(&e);
            // Go's crypto/rsa: modulus >= 1024 bits, odd exponent in [3, 2^31-1].
            if bits < MIN_RSA_NODE_KEY_BITS || e_value.bits() > 31 || e_value < BigUint::from(3u8) || !e_value.bit(0) {
                return Err(X509PopError::UnsupportedKeyType(format!("rsa key of {bits} bits with exponent {e_value}")));
            }
            NodeKey::Rsa { n, e }
        }
        Ok(SpkiKey::Ec { curve, point }) => {
            // Reject points that are not on the curve now rather than at response time.
            let verifier: &'static sig::EcdsaVerificationAlgorithm = ec_verifier(curve);
            if UnparsedPublicKey::new(verifier, point).parse().is_err() {
                return Err(X509PopError::UnsupportedKeyType("ec public key is not a valid curve point".into()));
            }
            NodeKey::Ec { curve, point: point.to_vec() }
        }
        Ok(SpkiKey::Ed25519(_)) => return Err(X509PopError::UnsupportedKeyType("ed25519".into())),
        Err(e) => return Err(X509PopError::UnsupportedKeyType(e.to_string())),
    };

    let mut ca_fingerprints: Vec<String> = Vec::new();
    for chain in &chains {
        for node in chain.iter().skip(1) {
            let fp = sha1_hex(node.der);
            if !ca_fingerprints.contains(&fp) {
                ca_fingerprints.push(fp);
            }
        }
    }
    let uri_sans = match leaf.cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let malformed = |reason: String| X509PopError::MalformedCertificate { what: what_cert(0), reason };
    let subject = &leaf.cert.tbs_certificate.subject;
    let issuer = &leaf.cert.tbs_certificate.issuer;
    Ok(AttestedCert {
        leaf_der: leaf.der.to_vec(),
        chain_der: certs.clone(),
        key,
        fingerprint: sha1_hex(leaf.der),
        serial_hex: serial_hex(leaf.cert.raw_serial()),
        serial_decimal: BigUint::from_bytes_be(leaf.cert.raw_serial()).to_string(),
        subject_cn: name_attribute(subject, "2.5.4.3").map_err(malformed)?,
        subject_serial: name_attribute(subject, "2.5.4.5").map_err(malformed)?,
        issuer_cn: name_attribute(issuer, "2.5.4.3").map_err(malformed)?,
        issuer_serial: name_attribute(issuer, "2.5.4.5").map_err(malformed)?,
        ca_fingerprints,
        uri_sans,
    })
}

fn ec_verifier(curve: Curve) -> &'static sig::EcdsaVerificationAlgorithm {
    // The response digest is SHA-256 sized whatever the curve (see `challenge_response`).
    match curve {
        Curve::P256 => &sig::ECDSA_P256_SHA256_ASN1,
        Curve::P384 => &sig::ECDSA_P384_SHA256_ASN1,
        Curve::P521 => &sig::ECDSA_P521_SHA256_ASN1,
    }
}

// ---------------------------------------------------------------------------------------------
// Server side: agent ID, selectors, challenge
// ---------------------------------------------------------------------------------------------

/// Percent-decodes a URI path as Go's `url.Parse` does; `None` on a bad escape or non-UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let text = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(text, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// SPIRE's `parseUriSanSelectors`: URI SANs `x509pop://<td>/<key>/<value>` become key -> value
/// (a later SAN with the same key wins, as with Go's map). Keys are returned sorted.
fn uri_san_selectors(uri_sans: &[String], trust_domain: &str) -> Vec<(String, String)> {
    let mut map: Vec<(String, String)> = Vec::new();
    for uri in uri_sans {
        // Go compares `url.String()`, whose scheme is lower-cased, against the prefix.
        let Some((scheme, rest)) = uri.split_once("://") else { continue };
        if !scheme.eq_ignore_ascii_case(PLUGIN_NAME) {
            continue;
        }
        let Some(rest) = rest.strip_prefix(trust_domain) else { continue };
        if !rest.starts_with('/') {
            continue;
        }
        let raw_path = rest.split(['?', '#']).next().unwrap_or_default();
        let Some(path) = percent_decode(raw_path) else { continue };
        let Some((key, value)) = path.trim_matches('/').split_once('/') else { continue };
        match map.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_owned(),
            None => map.push((key.to_owned(), value.to_owned())),
        }
    }
    map.sort();
    map
}

/// One piece of a parsed agent path template.
enum TemplatePart {
    Text(String),
    Field(Vec<String>),
}

/// Parses the subset of Go's text/template used for agent paths: literal text and field
/// references (`{{ .A }}`, `{{ .A.B }}`), with `{{-`/`-}}` whitespace trimming and comments.
fn parse_template(text: &str) -> Result<Vec<TemplatePart>, X509PopError> {
    let mut parts = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while !rest.is_empty() {
        let (literal, after) = match rest.find("{{") {
            Some(at) => (rest.get(..at).unwrap_or_default(), Some(rest.get(at + 2..).unwrap_or_default())),
            None => (rest, None),
        };
        let mut literal = if trim_next { literal.trim_start() } else { literal };
        trim_next = false;
        let Some(after) = after else {
            parts.push(TemplatePart::Text(literal.to_owned()));
            break;
        };
        // "{{- " trims the whitespace before the action (the dash must be followed by a space).
        let mut action_src = after;
        if let Some(stripped) = after.strip_prefix('-').filter(|s| s.starts_with(char::is_whitespace)) {
            literal = literal.trim_end();
            action_src = stripped;
        }
        parts.push(TemplatePart::Text(literal.to_owned()));
        let Some(end) = action_src.find("}}") else {
            return Err(X509PopError::UnsupportedTemplate("unclosed action".into()));
        };
        let mut action = action_src.get(..end).unwrap_or_default();
        rest = action_src.get(end + 2..).unwrap_or_default();
        if let Some(stripped) = action.strip_suffix('-').filter(|s| s.ends_with(char::is_whitespace)) {
            action = stripped;
            trim_next = true;
        }
        let action = action.trim();
        if action.starts_with("/*") && action.ends_with("*/") && action.len() >= 4 {
            continue;
        }
        let field = action
            .strip_prefix('.')
            .map(|chain| chain.split('.').map(str::to_owned).collect::<Vec<_>>())
            .filter(|names| {
                names.iter().all(|n| {
                    n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
            })
            .ok_or_else(|| X509PopError::UnsupportedTemplate(action.to_owned()))?;
        parts.push(TemplatePart::Field(field));
    }
    Ok(parts)
}

/// go-spiffe's `ValidatePath` (an empty path is allowed).
fn validate_spiffe_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else { return Err("path must have a leading slash") };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            "" if i == last => return Err("path cannot have a trailing slash"),
            "" => return Err("path cannot contain empty segments"),
            "." | ".." => return Err("path cannot contain dot segments"),
            _ => {}
        }
        if !segment.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_')) {
            return Err("path segment characters are limited to letters, numbers, dots, dashes, and underscores");
        }
    }
    Ok(())
}

impl AttestedCert {
    /// Lowercase hex SHA-1 of the leaf DER: SPIRE's default agent ID is
    /// `spiffe://<td>/spire/agent/x509pop/<fingerprint>`.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// The leaf serial number as SPIRE's `SerialNumberHex` (lowercase, even number of digits).
    #[must_use]
    pub fn serial_number_hex(&self) -> &str {
        &self.serial_hex
    }

    /// Agent ID path (without the trust domain) from SPIRE's `agent_path_template`; `None` means
    /// SPIRE's `external_pki` default [`DEFAULT_AGENT_PATH_TEMPLATE`]. The rendered suffix must
    /// be a valid SPIFFE path and is prefixed with `/spire/agent`, e.g.
    /// `/spire/agent/x509pop/<fingerprint>`.
    ///
    /// Template variables (as in SPIRE): `.PluginName`, `.Fingerprint`, `.TrustDomain`,
    /// `.SerialNumberHex`, `.SVIDPathTrimmed` (empty in `external_pki` mode),
    /// `.URISanSelectors.<key>`, and the Go `x509.Certificate` fields `.SerialNumber` (decimal),
    /// `.Subject.CommonName`, `.Subject.SerialNumber`, `.Issuer.CommonName`,
    /// `.Issuer.SerialNumber`. `trust_domain` is the server's trust domain name (no scheme).
    ///
    /// # Errors
    /// Unknown variables (including a missing `.URISanSelectors` key, as Go's
    /// `missingkey=error`), template constructs beyond field references, or an invalid path.
    pub fn agent_path(&self, trust_domain: &str, template: Option<&str>) -> Result<String, X509PopError> {
        let parts = parse_template(template.unwrap_or(DEFAULT_AGENT_PATH_TEMPLATE))?;
        let sans = uri_san_selectors(&self.uri_sans, trust_domain);
        let mut suffix = String::new();
        for part in parts {
            match part {
                TemplatePart::Text(t) => suffix.push_str(&t),
                TemplatePart::Field(names) => {
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    let value = match refs.as_slice() {
                        ["PluginName"] => PLUGIN_NAME,
                        ["Fingerprint"] => &self.fingerprint,
                        ["TrustDomain"] => trust_domain,
                        ["SerialNumberHex"] => &self.serial_hex,
                        ["SVIDPathTrimmed"] => "",
                        ["SerialNumber"] => &self.serial_decimal,
                        ["Subject", "CommonName"] => &self.subject_cn,
                        ["Subject", "SerialNumber"] => &self.subject_serial,
                        ["Issuer", "CommonName"] => &self.issuer_cn,
                        ["Issuer", "SerialNumber"] => &self.issuer_serial,
                        ["URISanSelectors", key] => sans
                            .iter()
                            .find(|(k, _)| k == key)
                            .map(|(_, v)| v.as_str())
                            .ok_or_else(|| X509PopError::UnknownTemplateVariable(format!(".URISanSelectors.{key}")))?,
                        _ => return Err(X509PopError::UnknownTemplateVariable(format!(".{}", names.join(".")))),
                    };
                    suffix.push_str(value);
                }
            }
        }
        validate_spiffe_path(&suffix).map_err(|reason| X509PopError::InvalidAgentPath { path: suffix.clone(), reason })?;
        Ok(format!("/spire/agent{suffix}"))
    }

    /// The full agent SPIFFE ID, `spiffe://<trust_domain>` + [`Self::agent_path`].
    ///
    /// # Errors
    /// As [`Self::agent_path`].
    pub fn agent_id(&self, trust_domain: &str, template: Option<&str>) -> Result<String, X509PopError> {
        Ok(format!("spiffe://{trust_domain}{}", self.agent_path(trust_domain, template)?))
    }

    /// SPIRE's x509pop selectors as (type, value), type always `x509pop`: `subject:cn:<CN>` (when
    /// the CN is not empty), `ca:fingerprint:<sha1 hex>` for each distinct non-leaf certificate
    /// of every verified chain (root included), `serialnumber:<hex>`, and `san:<key>:<value>` for
    /// each leaf URI SAN `x509pop://<trust_domain>/<key>/<value>`. SPIRE's core sorts and
    /// de-duplicates them afterwards, so the order here carries no meaning.
    #[must_use]
    pub fn selectors(&self, trust_domain: &str) -> Vec<(String, String)> {
        let mut values = Vec::new();
        if !self.subject_cn.is_empty() {
            values.push(format!("subject:cn:{}", self.subject_cn));
        }
        values.extend(self.ca_fingerprints.iter().map(|fp| format!("ca:fingerprint:{fp}")));
        values.push(format!("serialnumber:{}", self.serial_hex));
        values.extend(uri_san_selectors(&self.uri_sans, trust_domain).into_iter().map(|(k, v)| format!("san:{k}:{v}")));
        values.into_iter().map(|v| (PLUGIN_NAME.to_owned(), v)).collect()
    }

    /// Server side: makes a challenge (fresh 32-byte nonce) for this leaf's key type; returns
    /// the challenge bytes to send and the state to verify the answer with.
    ///
    /// # Errors
    /// Only if the random number generator fails.
    pub fn make_challenge(&self) -> Result<(Vec<u8>, Challenge), X509PopError> {
        let challenge = Challenge { nonce: fresh_nonce()?, key: self.key.clone() };
        Ok((challenge.to_json(), challenge))
    }
}

/// The server's record of an issued challenge, to check the agent's answer against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    nonce: [u8; NONCE_LEN],
    key: NodeKey,
}

impl Challenge {
    fn to_json(&self) -> Vec<u8> {
        let nonce = || Some(NonceOnly { nonce: GoBytes(self.nonce.to_vec()) });
        to_json(&match self.key {
            NodeKey::Rsa { .. } => ChallengeJson { rsa_signature: nonce(), ecdsa_signature: None },
            NodeKey::Ec { .. } => ChallengeJson { rsa_signature: None, ecdsa_signature: nonce() },
        })
    }

    /// Checks the agent's response: the member for the leaf's key type must be present, its
    /// nonce 32 bytes, and its signature over `SHA-256(challenge nonce || response nonce)` valid
    /// for the leaf's public key.
    ///
    /// # Errors
    /// [`X509PopError::MalformedResponse`] for bad JSON (SPIRE: InvalidArgument); wrong kind,
    /// nonce length or a bad signature otherwise (SPIRE: PermissionDenied).
    pub fn verify_response(&self, response: &[u8]) -> Result<(), X509PopError> {
        let response: ResponseJson = from_json(response).map_err(X509PopError::MalformedResponse)?;
        match &self.key {
            NodeKey::Rsa { n, e } => {
                let r = response.rsa_signature.ok_or(X509PopError::WrongResponseKind { expected: "rsa" })?;
                let combined = combine_nonces(&self.nonce, &r.nonce.0)?;
                if verify_rsa_pss_auto(n, e, &combined, &r.signature.0) {
                    Ok(())
                } else {
                    Err(X509PopError::SignatureInvalid { kind: "rsa" })
                }
            }
            NodeKey::Ec { curve, point } => {
                let r = response.ecdsa_signature.ok_or(X509PopError::WrongResponseKind { expected: "ecdsa" })?;
                let combined = combine_nonces(&self.nonce, &r.nonce.0)?;
                let invalid = X509PopError::SignatureInvalid { kind: "ecdsa" };
                let der = ecdsa_der_signature(&r.r.0, &r.s.0).ok_or_else(|| invalid.clone())?;
                let digest = Digest::import_less_safe(&combined, &SHA256).map_err(|_| invalid.clone())?;
                UnparsedPublicKey::new(ec_verifier(*curve), point).verify_digest(&digest, &der).map_err(|_| invalid)
            }
        }
    }

    /// The key type this challenge is for: `rsa` or `ecdsa`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        self.key.kind()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests assert by panicking")]

    use super::*;
    use aws_lc_rs::signature::RsaPssSaltLength;
    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, DnType, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        NameConstraints, RsaKeySize, SanType, SerialNumber,
    };

    /// 2027-01-15: inside every test certificate's validity unless a test says otherwise.
    const NOW: i64 = 1_800_000_000;
    const TD: &str = "example.org";

    // Golden interop fixture, made once with Go 1.19's crypto/x509, crypto/ecdsa, crypto/rsa and
    // encoding/json following SPIRE's x509pop code: roots A and B, one intermediate key
    // cross-signed by both (INTER_A, INTER_B), leaves signed by INTER_A. GO_RESPONSE_* answer
    // the challenge nonce 00 01 .. 1f with response nonce a0 a1 .. bf, exactly as a SPIRE agent
    // does (`ecdsa.Sign` over the combined digest; `rsa.SignPSS(.., nil)`, i.e. maximal salt).
    // The P-384 leaf carries URI SANs x509pop://example.org/datacenter/us-east-1,
    // x509pop://example.org/rack/r%2F7/b, x509pop://other.org/ignored/x, spiffe://example.org/host,
    // x509pop://example.org/onlykey, X509POP://example.org/datacenter/us-west-2; subject
    // serialNumber attributes are "SN-<cn>". Validity 2020-01-01 .. 2120-01-01.
    const GO_ROOT_A: &str = "MIIBizCCATGgAwIBAgIBATAKBggqhkjOPQQDAjAsMQ4wDAYDVQQKEwVjYWlybjEaMBgGA1UEAxMRY2Fpcm4gdGVzdCByb290IEEwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMCwxDjAMBgNVBAoTBWNhaXJuMRowGAYDVQQDExFjYWlybiB0ZXN0IHJvb3QgQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABPHXpYM8ARXcLOHnjDdEjhOiXRXIo+hSneVzQ6T/TWhUXmDpMPVjM3uzNrfsVeoKyRpkcAuqvYELU8uICMZkx2ejQjBAMA4GA1UdDwEB/wQEAwIBBjAPBgNVHRMBAf8EBTADAQH/MB0GA1UdDgQWBBSbFLTcH9eCLSffq4bjPhOQRXHeQjAKBggqhkjOPQQDAgNIADBFAiEAkHnrtTBfL6v9lyxhdEfcZeN9xVzVw/CLbqSbHrI+n0wCIDy8Fut5ln+ZISblJan6iPqfbvlE15Irqb1lvi/7la96";
    const GO_ROOT_B: &str = "MIIBijCCATGgAwIBAgIBAjAKBggqhkjOPQQDAjAsMQ4wDAYDVQQKEwVjYWlybjEaMBgGA1UEAxMRY2Fpcm4gdGVzdCByb290IEIwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMCwxDjAMBgNVBAoTBWNhaXJuMRowGAYDVQQDExFjYWlybiB0ZXN0IHJvb3QgQjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABMWAqpTbdPDjh2BeaMeWC/yEOxpu+7TddxTKysT1PMPC+9s5F0aeXYbgvBemUR8uKfvmEYUw0f176lUHjYL6ylSjQjBAMA4GA1UdDwEB/wQEAwIBBjAPBgNVHRMBAf8EBTADAQH/MB0GA1UdDgQWBBTjW5me+q1QsgsqlUHVSjKomA1ftTAKBggqhkjOPQQDAgNHADBEAiBUrP9JbuX+y1Et0mYE3zRD50IPQthwjMX69qM7SUR7QwIgdHtoc5ucC8rUYP2FWA82FuiWmDHSlcmC7BNTMEuTixA=";
    const GO_INTER_A: &str = "MIIBsjCCAVigAwIBAgIBAzAKBggqhkjOPQQDAjAsMQ4wDAYDVQQKEwVjYWlybjEaMBgGA1UEAxMRY2Fpcm4gdGVzdCByb290IEEwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMDIxDjAMBgNVBAoTBWNhaXJuMSAwHgYDVQQDExdjYWlybiB0ZXN0IGludGVybWVkaWF0ZTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABP6rqYLec7DLkenvpEOMvRKabmbNBl/rhJOtw/FyWqRITcu4MnhrC8l9N9+kxBihHd6iUtHEXzGEKrAqXtgZrvyjYzBhMA4GA1UdDwEB/wQEAwIBBjAPBgNVHRMBAf8EBTADAQH/MB0GA1UdDgQWBBQiIeWWVp7zkO3jGu5wuSRDYq/9hjAfBgNVHSMEGDAWgBSbFLTcH9eCLSffq4bjPhOQRXHeQjAKBggqhkjOPQQDAgNIADBFAiEAhi0ssUVqw7jQRDmttjeGoeqFtKdavYyrKSPaSSj92KICICufQzjMCh3QqJLG7PM87GY+EoFH3hXnDOFXOU3tvvCk";
    const GO_INTER_B: &str = "MIIBsTCCAVigAwIBAgIBBDAKBggqhkjOPQQDAjAsMQ4wDAYDVQQKEwVjYWlybjEaMBgGA1UEAxMRY2Fpcm4gdGVzdCByb290IEIwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMDIxDjAMBgNVBAoTBWNhaXJuMSAwHgYDVQQDExdjYWlybiB0ZXN0IGludGVybWVkaWF0ZTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABP6rqYLec7DLkenvpEOMvRKabmbNBl/rhJOtw/FyWqRITcu4MnhrC8l9N9+kxBihHd6iUtHEXzGEKrAqXtgZrvyjYzBhMA4GA1UdDwEB/wQEAwIBBjAPBgNVHRMBAf8EBTADAQH/MB0GA1UdDgQWBBQiIeWWVp7zkO3jGu5wuSRDYq/9hjAfBgNVHSMEGDAWgBTjW5me+q1QsgsqlUHVSjKomA1ftTAKBggqhkjOPQQDAgNHADBEAiBSNP43diY4hcNwpGgbvBy2p3jrgxgLZVW9CKuRkYTaUwIgOM2IIi3tIOfpL4HkXb3pwjrbdY0xrpKchgyv/Kz38b8=";
    const GO_LEAF_P256: &str = "MIIBlzCCAT6gAwIBAgIDAI8BMAoGCCqGSM49BAMCMDIxDjAMBgNVBAoTBWNhaXJuMSAwHgYDVQQDExdjYWlybiB0ZXN0IGludGVybWVkaWF0ZTAgFw0yMDAxMDEwMDAwMDBaGA8yMTIwMDEwMTAwMDAwMFowKzESMBAGA1UEAxMJbm9kZS1wMjU2MRUwEwYDVQQFEwxTTi1ub2RlLXAyNTYwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAR8siXuL25zPVPYcqRaageTVHx4qoL+C/2NrJpHU34GA7aeCRgBuY+64T4eXWL+Ay5wznSFEQzXZudztqiTyM+co0gwRjAOBgNVHQ8BAf8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwIwHwYDVR0jBBgwFoAUIiHlllae85Dt4xrucLkkQ2Kv/YYwCgYIKoZIzj0EAwIDRwAwRAIgPoUx8vSj+HO2RdkVgMhuVx1ECChIiNAgpAQlUY0Ab0UCIEPZGCovAl36Lchhl0AFY+XDL/LX+TI+Zi2dK/Pl34CA";
    const GO_LEAF_P384: &str = "MIICuDCCAl2gAwIBAgIGChssPU5fMAoGCCqGSM49BAMCMDIxDjAMBgNVBAoTBWNhaXJuMSAwHgYDVQQDExdjYWlybiB0ZXN0IGludGVybWVkaWF0ZTAgFw0yMDAxMDEwMDAwMDBaGA8yMTIwMDEwMTAwMDAwMFowQzEeMBwGA1UEAxMVbm9kZS1wMzg0LmV4YW1wbGUub3JnMSEwHwYDVQQFExhTTi1ub2RlLXAzODQuZXhhbXBsZS5vcmcwdjAQBgcqhkjOPQIBBgUrgQQAIgNiAASgf4qPNEMz7VjMyUGuhnTGohzBqv1ATZzrQmd/n2KwO35x8OwJm3DxKP1+r7a3ikBv3n1o7re6igJPqWv7PRnDu2uUdpClAkqhSUebNOfuc2iadlcCx+P1YdE7Mz38dKejggEtMIIBKTAOBgNVHQ8BAf8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwIwHwYDVR0jBBgwFoAUIiHlllae85Dt4xrucLkkQ2Kv/YYwgeAGA1UdEQSB2DCB1YYqeDUwOXBvcDovL2V4YW1wbGUub3JnL2RhdGFjZW50ZXIvdXMtZWFzdC0xhiJ4NTA5cG9wOi8vZXhhbXBsZS5vcmcvcmFjay9yJTJGNy9ihh14NTA5cG9wOi8vb3RoZXIub3JnL2lnbm9yZWQveIYZc3BpZmZlOi8vZXhhbXBsZS5vcmcvaG9zdIYdeDUwOXBvcDovL2V4YW1wbGUub3JnL29ubHlrZXmGKng1MDlwb3A6Ly9leGFtcGxlLm9yZy9kYXRhY2VudGVyL3VzLXdlc3QtMjAKBggqhkjOPQQDAgNJADBGAiEA5mOJnKyOi/1sLZarqxoEaV5Gitblim5+AXWeU6k6dx0CIQCP8rRmqUwIVxqf3yq6LphZjc9Aa3OoHaGVM05PuWTXxQ==";
    const GO_LEAF_RSA: &str = "MIICYDCCAgWgAwIBAgIBBjAKBggqhkjOPQQDAjAyMQ4wDAYDVQQKEwVjYWlybjEgMB4GA1UEAxMXY2Fpcm4gdGVzdCBpbnRlcm1lZGlhdGUwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMCkxETAPBgNVBAMTCG5vZGUtcnNhMRQwEgYDVQQFEwtTTi1ub2RlLXJzYTCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBALBx/6rkMWZ/vxnfE+j+jSNkFlnQ/y0P/m8ZYJ8XaRDY/r54NKSUoA+2ywqf4Fs+TYFKOM7TYYfhb8fKrLB6AympTcJw13vFtxlK693oa9/TtdRb/oKwcVKu9c1NWXzQ3DvzmSQxHg0YO3G6OYCa/GF6gvXlCT+1hibK8lV/0XIdqTW4rrny0a7naixCLwPlw9dfViAT6gvskvHDaXo7hS8hJCk+/Z1zDb2ERVI2alckJQEvjZNZrP3+IJZmoJymK+1A57hVGyh2O4oL7tgv+1IdCdPk++2d6NSBWvW/0BrSC1NPiqNrVp2CxYfGK/geCZemRhsWTM1nRfbw/lJsLOsCAwEAAaNIMEYwDgYDVR0PAQH/BAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMCMB8GA1UdIwQYMBaAFCIh5ZZWnvOQ7eMa7nC5JENir/2GMAoGCCqGSM49BAMCA0kAMEYCIQC5b33LqPDdyDlR0PE0kzlMHnH87wsQogwuYpaLHt38ewIhAJb7xJBE2cwn4P5qJSAKfrfENvowHgbUZ9wk79mqVK2C";
    const GO_RESPONSE_P256: &str = r#"{"rsa_signature":null,"ecdsa_signature":{"nonce":"oKGio6SlpqeoqaqrrK2ur7CxsrO0tba3uLm6u7y9vr8=","r":"7RlBYYjSTMyvCjBzRUFMl8/926G0O+c+2PiGg9uKSms=","s":"tqGVULBoEkuu24P/swp2IQ0yBa+yBXVQ1fFIA91W1mI="}}"#;
    const GO_RESPONSE_P384: &str = r#"{"rsa_signature":null,"ecdsa_signature":{"nonce":"oKGio6SlpqeoqaqrrK2ur7CxsrO0tba3uLm6u7y9vr8=","r":"pt7yKG4w7KgVgM+fStq5HYeqM+aK8XSWnR+2dWJkGozPooPIYYXg6cypUDrK9ro8","s":"BFHM+n5AGGpguO9F6M5xX/kJYOoqZ0zlh1dydIe9dBkf5CUyUmH3MyBk3Q06Ddtk"}}"#;
    const GO_RESPONSE_RSA: &str = r#"{"rsa_signature":{"nonce":"oKGio6SlpqeoqaqrrK2ur7CxsrO0tba3uLm6u7y9vr8=","signature":"Vhne1a+Hgumngeef42LwbmU0Qi1InCl8Ica1ecDyMgFG3CzpYZdFehGSB2fL4cZsFv4XuPaKC20UZo0LEEdcd1KnGJTcvpP9LIDmiGXnOGCKd9csfw7zuY2N8JiOZDFRcIpymnpyT8BkUoxplS7AziGxjyZUXYGHvTxZTqwTCjt/YFGivdu2fWa5AKJv4VAychsRBxaKFlwvON8+ukjqVPtdNJC2r5dhLadZ9QTcZeWwXVCxqrQI2V0Vu8vhQm5FumQnvOnVsht/0DRfPHWu/RSV6wTpYFY+iRG5pf1cwf6VX5Ec7d6CvIYlBgeXTUGvL30VbGmg2oo+ew90n7gqrA=="},"ecdsa_signature":null}"#;

    fn b64(text: &str) -> Vec<u8> {
        GO_STD_B64.decode(text).unwrap()
    }

    fn go_roots() -> Vec<Vec<u8>> {
        vec![b64(GO_ROOT_A), b64(GO_ROOT_B)]
    }

    fn go_payload(leaf: &str) -> Vec<u8> {
        attestation_payload(&[b64(leaf), b64(GO_INTER_A), b64(GO_INTER_B)])
    }

    fn sorted_values(att: &AttestedCert) -> Vec<String> {
        let mut values: Vec<String> = att
            .selectors(TD)
            .into_iter()
            .map(|(kind, value)| {
                assert_eq!(kind, "x509pop");
                value
            })
            .collect();
        values.sort();
        values
    }

    /// Go's four CA fingerprints: both roots and both cross-signed intermediates are on a chain.
    const GO_CA_SELECTORS: [&str; 4] = [
        "ca:fingerprint:5114922f1e0a21beac75c79d5e555039ea24347a",
        "ca:fingerprint:9a305589a3f022af28036bb0f4bc6d8005fc9775",
        "ca:fingerprint:9bb1f0c3897db429b2bbce397b0174b105e49cb2",
        "ca:fingerprint:fa8c321a3b9f4d94554680ce783999201ccdee12",
    ];

    fn fixed_challenge(att: &AttestedCert) -> Challenge {
        Challenge { nonce: std::array::from_fn(|i| u8::try_from(i).unwrap()), key: att.key.clone() }
    }

    // ---- test PKI -----------------------------------------------------------------------

    #[derive(Clone, Copy)]
    enum Alg {
        P256,
        P384,
        P521,
        Rsa,
    }

    fn key_for(alg: Alg) -> KeyPair {
        match alg {
            Alg::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            Alg::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
            Alg::P521 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap(),
            Alg::Rsa => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap(),
        }
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    }

    fn leaf_params() -> CertificateParams {
        let mut p = CertificateParams::new(vec!["node-1.example.org".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "node-1");
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.serial_number = Some(SerialNumber::from(vec![0x0a, 0x1b, 0x2c]));
        p.subject_alt_names.push(SanType::URI("x509pop://example.org/datacenter/dc-1".try_into().unwrap()));
        p
    }

    type Tweak = fn(&mut CertificateParams);

    struct Spec {
        leaf: Alg,
        ca: Alg,
        intermediates: usize,
        root: Tweak,
        intermediate: Tweak,
        leaf_tweak: Tweak,
    }

    impl Default for Spec {
        fn default() -> Self {
            Self { leaf: Alg::P256, ca: Alg::P256, intermediates: 1, root: |_| {}, intermediate: |_| {}, leaf_tweak: |_| {} }
        }
    }

    struct Pki {
        roots: Vec<Vec<u8>>,
        /// Leaf first, then intermediates from the leaf's issuer upwards.
        chain: Vec<Vec<u8>>,
        leaf_key: Vec<u8>,
    }

    impl Pki {
        fn payload(&self) -> Vec<u8> {
            attestation_payload(&self.chain)
        }

        fn verify(&self) -> Result<AttestedCert, X509PopError> {
            verify_payload(&self.payload(), &self.roots, NOW, DEFAULT_MAX_INTERMEDIATES)
        }
    }

    fn make_pki(spec: Spec) -> Pki {
        let root_key = key_for(spec.ca);
        let mut root_params = ca_params("test root");
        (spec.root)(&mut root_params);
        let root = root_params.self_signed(&root_key).unwrap();
        let mut issuer = Issuer::new(root_params, root_key);
        let mut cas = Vec::new();
        for depth in 0..spec.intermediates {
            let key = key_for(spec.ca);
            let mut params = ca_params(&format!("test intermediate {depth}"));
            (spec.intermediate)(&mut params);
            cas.push(params.signed_by(&key, &issuer).unwrap().der().to_vec());
            issuer = Issuer::new(params, key);
        }
        let leaf_key = key_for(spec.leaf);
        let mut params = leaf_params();
        (spec.leaf_tweak)(&mut params);
        let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
        cas.reverse();
        let mut chain = vec![leaf.der().to_vec()];
        chain.extend(cas);
        Pki { roots: vec![root.der().to_vec()], chain, leaf_key: leaf_key.serialize_der() }
    }

    fn round_trip(leaf: Alg, ca: Alg) {
        let pki = make_pki(Spec { leaf, ca, ..Spec::default() });
        let att = pki.verify().unwrap();
        assert_eq!(att.leaf_der, pki.chain[0]);
        assert_eq!(att.chain_der, pki.chain);
        let (challenge_bytes, challenge) = att.make_challenge().unwrap();
        let response = challenge_response(&pki.leaf_key, &challenge_bytes).unwrap();
        challenge.verify_response(&response).unwrap();
        // A second challenge has a fresh nonce: the old response does not answer it.
        let (other_bytes, other) = att.make_challenge().unwrap();
        assert_ne!(other_bytes, challenge_bytes);
        assert!(matches!(other.verify_response(&response), Err(X509PopError::SignatureInvalid { .. })));

        let fingerprint = att.fingerprint();
        assert_eq!(fingerprint, crate::text::hex(&sha1::Sha1::digest(&pki.chain[0])));
        assert_eq!(att.agent_path(TD, None).unwrap(), format!("/spire/agent/x509pop/{fingerprint}"));
        assert_eq!(att.agent_id(TD, None).unwrap(), format!("spiffe://example.org/spire/agent/x509pop/{fingerprint}"));
        let mut want = vec![
            "subject:cn:node-1".to_owned(),
            format!("ca:fingerprint:{}", crate::text::hex(&sha1::Sha1::digest(&pki.chain[1]))),
            format!("ca:fingerprint:{}", crate::text::hex(&sha1::Sha1::digest(&pki.roots[0]))),
            "serialnumber:0a1b2c".to_owned(),
            "san:datacenter:dc-1".to_owned(),
        ];
        want.sort();
        assert_eq!(sorted_values(&att), want);
    }

    // ---- round trips ----------------------------------------------------------------------

    #[test]
    fn round_trip_ec_p256() {
        round_trip(Alg::P256, Alg::P256);
    }

    #[test]
    fn round_trip_ec_p384() {
        round_trip(Alg::P384, Alg::P384);
    }

    #[test]
    fn round_trip_ec_p521() {
        round_trip(Alg::P521, Alg::P256);
    }

    #[test]
    fn round_trip_rsa_2048_with_rsa_cas() {
        round_trip(Alg::Rsa, Alg::Rsa);
    }

    #[test]
    fn agent_accepts_sec1_ec_key() {
        use aws_lc_rs::encoding::AsDer as _;
        let pki = make_pki(Spec::default());
        let pair = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &pki.leaf_key).unwrap();
        let sec1 = pair.private_key().as_der().unwrap();
        let att = pki.verify().unwrap();
        let (bytes, challenge) = att.make_challenge().unwrap();
        challenge.verify_response(&challenge_response(sec1.as_ref(), &bytes).unwrap()).unwrap();
    }

    // ---- interop with Go / SPIRE ------------------------------------------------------------

    #[test]
    fn go_agent_responses_verify() {
        for (leaf, response) in [(GO_LEAF_P256, GO_RESPONSE_P256), (GO_LEAF_P384, GO_RESPONSE_P384), (GO_LEAF_RSA, GO_RESPONSE_RSA)] {
            let att = verify_payload(&go_payload(leaf), &go_roots(), NOW, 4).unwrap();
            let challenge = fixed_challenge(&att);
            challenge.verify_response(response.as_bytes()).unwrap();
            // Any other challenge nonce, or a flipped signature bit, fails.
            let other = Challenge { nonce: [7; 32], key: att.key.clone() };
            assert!(matches!(other.verify_response(response.as_bytes()), Err(X509PopError::SignatureInvalid { .. })));
            let mut doc: serde_json::Value = serde_json::from_str(response).unwrap();
            let member = if att.key.kind() == "rsa" { ("rsa_signature", "signature") } else { ("ecdsa_signature", "s") };
            let field = doc[member.0][member.1].as_str().unwrap().to_owned();
            let mut raw = b64(&field);
            raw[5] ^= 0x01;
            doc[member.0][member.1] = GO_STD_B64.encode(&raw).into();
            assert!(matches!(challenge.verify_response(doc.to_string().as_bytes()), Err(X509PopError::SignatureInvalid { .. })));
        }
    }

    #[test]
    fn go_rsa_response_uses_maximal_salt() {
        // Documents why PSS is verified with auto-detected salt: Go's nil options sign with
        // emLen - hLen - 2 = 222 bytes of salt for a 2048-bit key, which a fixed-salt (32)
        // verifier would refuse.
        let att = verify_payload(&go_payload(GO_LEAF_RSA), &go_roots(), NOW, 4).unwrap();
        let NodeKey::Rsa { n, e } = &att.key else { panic!("rsa leaf") };
        let doc: serde_json::Value = serde_json::from_str(GO_RESPONSE_RSA).unwrap();
        let signature = b64(doc["rsa_signature"]["signature"].as_str().unwrap());
        let em = BigUint::from_bytes_be(&signature).modpow(&BigUint::from_bytes_be(e), &BigUint::from_bytes_be(n)).to_bytes_be();
        let db: Vec<u8> =
            em[..em.len() - 33].iter().zip(mgf1_sha256(&em[em.len() - 33..em.len() - 1], em.len() - 33)).map(|(a, b)| a ^ b).collect();
        let separator = db.iter().position(|b| *b & 0x7f != 0).unwrap();
        assert_eq!(db.len() - separator - 1, 222);
    }

    #[test]
    fn rsa_pss_any_salt_length_verifies() {
        let pki = make_pki(Spec { leaf: Alg::Rsa, ..Spec::default() });
        let att = pki.verify().unwrap();
        let challenge = fixed_challenge(&att);
        let pair = RsaKeyPair::from_pkcs8(&pki.leaf_key).unwrap();
        let response_nonce = [0x5a; 32];
        let combined = combine_nonces(&challenge.nonce, &response_nonce).unwrap();
        let digest = Digest::import_less_safe(&combined, &SHA256).unwrap();
        let encodings: [&'static sig::RsaSignatureEncoding; 4] = [
            &const { sig::RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Custom(0)) },
            &const { sig::RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Custom(20)) },
            &sig::RSA_PSS_SHA256,
            &const { sig::RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Max) },
        ];
        for encoding in encodings {
            let mut signature = vec![0; pair.public_modulus_len()];
            pair.sign_digest(encoding, &digest, &mut signature).unwrap();
            let response = to_json(&ResponseJson {
                rsa_signature: Some(RsaResponseJson { nonce: GoBytes(response_nonce.to_vec()), signature: GoBytes(signature.clone()) }),
                ecdsa_signature: None,
            });
            challenge.verify_response(&response).unwrap();
            // PKCS#1 v1.5 is not what SPIRE signs with, and must not pass as PSS.
            pair.sign_digest(&sig::RSA_PKCS1_SHA256, &digest, &mut signature).unwrap();
            let response = to_json(&ResponseJson {
                rsa_signature: Some(RsaResponseJson { nonce: GoBytes(response_nonce.to_vec()), signature: GoBytes(signature) }),
                ecdsa_signature: None,
            });
            assert!(challenge.verify_response(&response).is_err());
        }
    }

    #[test]
    fn go_selectors_and_agent_paths() {
        let att = verify_payload(&go_payload(GO_LEAF_P384), &go_roots(), NOW, 4).unwrap();
        let mut want: Vec<String> = GO_CA_SELECTORS.iter().map(|s| (*s).to_owned()).collect();
        want.extend(
            ["san:datacenter:us-west-2", "san:rack:r/7/b", "serialnumber:0a1b2c3d4e5f", "subject:cn:node-p384.example.org"]
                .map(str::to_owned),
        );
        assert_eq!(sorted_values(&att), want);
        assert_eq!(att.fingerprint(), "98a8ba71edb5dd2bce2d50094ab152aa68ea2679");
        assert_eq!(att.serial_number_hex(), "0a1b2c3d4e5f");
        // Outputs of Go's text/template (missingkey=error) over SPIRE's template data.
        assert_eq!(att.agent_path(TD, None).unwrap(), "/spire/agent/x509pop/98a8ba71edb5dd2bce2d50094ab152aa68ea2679");
        assert_eq!(att.agent_path(TD, Some("/cn/{{ .Subject.CommonName }}")).unwrap(), "/spire/agent/cn/node-p384.example.org");
        assert_eq!(
            att.agent_path(TD, Some("/{{ .TrustDomain }}/{{ .SerialNumberHex }}/{{ .SerialNumber }}")).unwrap(),
            "/spire/agent/example.org/0a1b2c3d4e5f/11111822610015"
        );
        assert_eq!(
            att.agent_path(TD, Some("/x/{{ .Subject.SerialNumber }}{{/* c */}}")).unwrap(),
            "/spire/agent/x/SN-node-p384.example.org"
        );
        assert_eq!(att.agent_path(TD, Some("/dc/{{.URISanSelectors.datacenter}}")).unwrap(), "/spire/agent/dc/us-west-2");
        // Go renders "/dc/us-west-2/cairn test intermediate"; SPIRE's AgentID then rejects it.
        assert_eq!(
            att.agent_path(TD, Some("/dc/{{ .URISanSelectors.datacenter }}/{{- .Issuer.CommonName -}}")),
            Err(X509PopError::InvalidAgentPath {
                path: "/dc/us-west-2/cairn test intermediate".into(),
                reason: "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
            })
        );
        assert_eq!(
            att.agent_path(TD, Some("/{{ .URISanSelectors.nope }}")),
            Err(X509PopError::UnknownTemplateVariable(".URISanSelectors.nope".into()))
        );
        // SAN selectors are per trust domain.
        assert!(!att.selectors("other.org").iter().any(|(_, v)| v.starts_with("san:datacenter")));
        assert!(att.selectors("other.org").iter().any(|(_, v)| v == "san:ignored:x"));

        let att = verify_payload(&go_payload(GO_LEAF_P256), &go_roots(), NOW, 4).unwrap();
        // A serial whose DER needs a leading zero byte (0x008f01) is still "8f01".
        assert!(sorted_values(&att).contains(&"serialnumber:8f01".to_owned()));
        assert_eq!(att.agent_path(TD, Some("/{{ .SerialNumberHex }}/{{ .SerialNumber }}")).unwrap(), "/spire/agent/8f01/36609");
        let att = verify_payload(&go_payload(GO_LEAF_RSA), &go_roots(), NOW, 4).unwrap();
        assert!(sorted_values(&att).contains(&"serialnumber:06".to_owned()));
    }

    #[test]
    fn agent_path_template_errors() {
        let att = verify_payload(&go_payload(GO_LEAF_P256), &go_roots(), NOW, 4).unwrap();
        let path = |t: &str| att.agent_path(TD, Some(t));
        assert!(matches!(path("/{{ .Nope }}"), Err(X509PopError::UnknownTemplateVariable(v)) if v == ".Nope"));
        assert!(matches!(path("/{{ .Subject.Organization }}"), Err(X509PopError::UnknownTemplateVariable(_))));
        assert!(matches!(path("/{{ .Fingerprint | upper }}"), Err(X509PopError::UnsupportedTemplate(_))));
        assert!(matches!(path("/{{ printf \"%s\" .Fingerprint }}"), Err(X509PopError::UnsupportedTemplate(_))));
        assert!(matches!(path("/{{ .Fingerprint "), Err(X509PopError::UnsupportedTemplate(_))));
        assert!(matches!(path("/{{ }}"), Err(X509PopError::UnsupportedTemplate(_))));
        // SPIRE's default has a leading slash; without one the suffix is not a valid path.
        assert!(matches!(
            path("{{ .PluginName }}/{{ .Fingerprint }}"),
            Err(X509PopError::InvalidAgentPath { reason: "path must have a leading slash", .. })
        ));
        assert!(matches!(path("/a/"), Err(X509PopError::InvalidAgentPath { reason: "path cannot have a trailing slash", .. })));
        assert!(matches!(path("/a//b"), Err(X509PopError::InvalidAgentPath { reason: "path cannot contain empty segments", .. })));
        assert!(matches!(path("/a/../b"), Err(X509PopError::InvalidAgentPath { reason: "path cannot contain dot segments", .. })));
        assert_eq!(path("").unwrap(), "/spire/agent");
        assert_eq!(path("/n/{{- \n .PluginName}}").unwrap(), "/spire/agent/n/x509pop");
        assert_eq!(path("/{{.PluginName -}}  /x").unwrap(), "/spire/agent/x509pop/x");
        assert_eq!(path("/{{ .SVIDPathTrimmed }}x").unwrap(), "/spire/agent/x");
    }

    // ---- golden wire format -----------------------------------------------------------------

    #[test]
    fn golden_payload_json() {
        // Byte-for-byte what Go's json.Marshal(AttestationData{...}) produced.
        assert_eq!(attestation_payload(&[vec![1, 2, 3], vec![0xff], vec![]]), br#"{"certificates":["AQID","/w==",""]}"#);
        assert_eq!(attestation_payload(&[]), br#"{"certificates":[]}"#);
    }

    #[test]
    fn golden_challenge_json() {
        let ec = verify_payload(&go_payload(GO_LEAF_P256), &go_roots(), NOW, 4).unwrap();
        let rsa = verify_payload(&go_payload(GO_LEAF_RSA), &go_roots(), NOW, 4).unwrap();
        // Byte-for-byte what Go's json.Marshal(x509pop.Challenge{...}) produced.
        assert_eq!(
            fixed_challenge(&ec).to_json(),
            br#"{"rsa_signature":null,"ecdsa_signature":{"nonce":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}}"#
        );
        assert_eq!(
            fixed_challenge(&rsa).to_json(),
            br#"{"rsa_signature":{"nonce":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="},"ecdsa_signature":null}"#
        );
        for (att, kind) in [(&ec, "ecdsa"), (&rsa, "rsa")] {
            let (bytes, challenge) = att.make_challenge().unwrap();
            assert_eq!(challenge.kind(), kind);
            let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let obj = doc.as_object().unwrap();
            assert_eq!(obj.keys().collect::<Vec<_>>(), ["ecdsa_signature", "rsa_signature"]);
            let (used, unused) = if kind == "rsa" { ("rsa_signature", "ecdsa_signature") } else { ("ecdsa_signature", "rsa_signature") };
            assert!(obj[unused].is_null());
            assert_eq!(b64(obj[used]["nonce"].as_str().unwrap()).len(), 32);
        }
    }

    #[test]
    fn golden_response_json_shape() {
        let pki = make_pki(Spec::default());
        let (bytes, _) = pki.verify().unwrap().make_challenge().unwrap();
        let response = String::from_utf8(challenge_response(&pki.leaf_key, &bytes).unwrap()).unwrap();
        assert!(response.starts_with(r#"{"rsa_signature":null,"ecdsa_signature":{"nonce":""#), "{response}");
        let doc: serde_json::Value = serde_json::from_str(&response).unwrap();
        let ec = &doc["ecdsa_signature"];
        assert_eq!(b64(ec["nonce"].as_str().unwrap()).len(), 32);
        // Minimal big-endian integers, as Go's big.Int.Bytes().
        for part in ["r", "s"] {
            let raw = b64(ec[part].as_str().unwrap());
            assert!(!raw.is_empty() && raw.len() <= 32 && raw[0] != 0);
        }
        let pki = make_pki(Spec { leaf: Alg::Rsa, ..Spec::default() });
        let (bytes, _) = pki.verify().unwrap().make_challenge().unwrap();
        let response = String::from_utf8(challenge_response(&pki.leaf_key, &bytes).unwrap()).unwrap();
        assert!(response.starts_with(r#"{"rsa_signature":{"nonce":""#) && response.ends_with(r#""},"ecdsa_signature":null}"#));
        let doc: serde_json::Value = serde_json::from_str(&response).unwrap();
        assert_eq!(b64(doc["rsa_signature"]["signature"].as_str().unwrap()).len(), 256);
    }

    // ---- chain rejections -------------------------------------------------------------------

    #[test]
    fn cert_from_another_ca_is_rejected() {
        let ours = make_pki(Spec::default());
        let theirs = make_pki(Spec::default());
        let err = verify_payload(&theirs.payload(), &ours.roots, NOW, 4).unwrap_err();
        assert!(matches!(err, X509PopError::ChainNotVerified(_)), "{err}");
        assert_eq!(err.status_class(), StatusClass::PermissionDenied);
        // Their intermediate next to our root does not help, nor does presenting no intermediate.
        let mixed = attestation_payload(&[theirs.chain[0].clone(), ours.chain[1].clone()]);
        assert!(matches!(verify_payload(&mixed, &ours.roots, NOW, 4), Err(X509PopError::ChainNotVerified(_))));
        let bare = attestation_payload(&ours.chain[..1]);
        assert!(matches!(verify_payload(&bare, &ours.roots, NOW, 4), Err(X509PopError::ChainNotVerified(_))));
        assert!(matches!(verify_payload(&ours.payload(), &[], NOW, 4), Err(X509PopError::ChainNotVerified(_))));
    }

    #[test]
    fn expired_or_not_yet_valid_certificates_are_rejected() {
        let expired = make_pki(Spec { leaf_tweak: |p| p.not_after = rcgen::date_time_ymd(2021, 1, 1), ..Spec::default() });
        let err = expired.verify().unwrap_err();
        assert_eq!(err, X509PopError::ChainNotVerified("certificate has expired".into()));
        let future = make_pki(Spec { leaf_tweak: |p| p.not_before = rcgen::date_time_ymd(2100, 1, 1), ..Spec::default() });
        assert_eq!(future.verify().unwrap_err(), X509PopError::ChainNotVerified("certificate is not yet valid".into()));
        let inter = make_pki(Spec { intermediate: |p| p.not_after = rcgen::date_time_ymd(2021, 1, 1), ..Spec::default() });
        assert!(matches!(inter.verify(), Err(X509PopError::ChainNotVerified(_))));
        let root = make_pki(Spec { root: |p| p.not_after = rcgen::date_time_ymd(2021, 1, 1), ..Spec::default() });
        assert!(matches!(root.verify(), Err(X509PopError::ChainNotVerified(_))));
        // The window is inclusive at both ends, as Go's Before/After comparisons are.
        let leaf = X509Certificate::from_der(&expired.chain[0]).unwrap().1;
        let not_after = leaf.validity().not_after.timestamp();
        assert!(verify_payload(&expired.payload(), &expired.roots, not_after, 4).is_ok());
        assert!(verify_payload(&expired.payload(), &expired.roots, not_after + 1, 4).is_err());
    }

    #[test]
    fn leaf_without_digital_signature_is_rejected() {
        let pki1 = make_pki(Spec { leaf_tweak: |p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment], ..Spec::default() });
        let err = pki1.verify().unwrap_err();
        assert_eq!(err, X509PopError::MissingDigitalSignature);
        assert_eq!(err.status_class(), StatusClass::Internal);
        // An absent KeyUsage extension counts as lacking it.
        let pki2 = make_pki(Spec { leaf_tweak: |p| p.key_usages = Vec::new(), ..Spec::default() });
        assert_eq!(pki2.verify().unwrap_err(), X509PopError::MissingDigitalSignature);
    }

    #[test]
    fn too_many_intermediates_are_rejected() {
        let deep = make_pki(Spec { intermediates: 5, ..Spec::default() });
        let err = deep.verify().unwrap_err();
        assert_eq!(err, X509PopError::TooManyIntermediates { count: 5, max: 4 });
        assert_eq!(err.status_class(), StatusClass::InvalidArgument);
        assert!(verify_payload(&deep.payload(), &deep.roots, NOW, 5).is_ok());
        let one = make_pki(Spec::default());
        assert_eq!(
            verify_payload(&one.payload(), &one.roots, NOW, 0).unwrap_err(),
            X509PopError::TooManyIntermediates { count: 1, max: 0 }
        );
        // The count is checked before parsing: garbage beyond the limit is not even looked at.
        let mut chain = one.chain.clone();
        chain.extend(std::iter::repeat_n(vec![0u8; 3], 10));
        assert!(matches!(verify_payload(&attestation_payload(&chain), &one.roots, NOW, 4), Err(X509PopError::TooManyIntermediates { .. })));
    }

    #[test]
    fn ca_constraints_are_enforced() {
        // An intermediate that is not a CA cannot sign.
        let not_ca = make_pki(Spec { intermediate: |p| p.is_ca = IsCa::ExplicitNoCa, ..Spec::default() });
        assert!(matches!(not_ca.verify(), Err(X509PopError::ChainNotVerified(_))));
        // A CA whose KeyUsage lacks keyCertSign cannot sign.
        let no_cert_sign = make_pki(Spec { intermediate: |p| p.key_usages = vec![KeyUsagePurpose::CrlSign], ..Spec::default() });
        assert!(matches!(no_cert_sign.verify(), Err(X509PopError::ChainNotVerified(_))));
        // pathLenConstraint 0 on the root forbids an intermediate below it.
        let path_len = make_pki(Spec { root: |p| p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0)), ..Spec::default() });
        assert!(matches!(path_len.verify(), Err(X509PopError::ChainNotVerified(_))));
        let direct = make_pki(Spec { root: |p| p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0)), intermediates: 0, ..Spec::default() });
        let att = direct.verify().unwrap();
        assert_eq!(att.selectors(TD).iter().filter(|(_, v)| v.starts_with("ca:fingerprint:")).count(), 1);
    }

    #[test]
    fn unsupported_constraints_fail_closed() {
        let constrained = make_pki(Spec {
            intermediate: |p| {
                p.name_constraints = Some(NameConstraints {
                    permitted_subtrees: vec![GeneralSubtree::DnsName("example.org".into())],
                    excluded_subtrees: Vec::new(),
                });
            },
            ..Spec::default()
        });
        assert!(matches!(constrained.verify(), Err(X509PopError::ChainNotVerified(m)) if m.contains("name constraints")));
        // PolicyConstraints { requireExplicitPolicy 0 }.
        let policy = make_pki(Spec {
            intermediate: |p| {
                p.custom_extensions.push(CustomExtension::from_oid_content(&[2, 5, 29, 36], vec![0x30, 0x03, 0x80, 0x01, 0x00]))
            },
            ..Spec::default()
        });
        assert!(matches!(policy.verify(), Err(X509PopError::ChainNotVerified(m)) if m.contains("polic")));
        // An unknown critical extension on the leaf.
        let critical = make_pki(Spec {
            leaf_tweak: |p| {
                let mut ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00]);
                ext.set_criticality(true);
                p.custom_extensions.push(ext);
            },
            ..Spec::default()
        });
        assert!(matches!(critical.verify(), Err(X509PopError::ChainNotVerified(m)) if m.contains("critical")));
    }

    #[test]
    fn leaf_that_is_a_trusted_root_is_its_own_chain() {
        let key = key_for(Alg::P256);
        let mut params = leaf_params();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let att = verify_payload(&attestation_payload(std::slice::from_ref(&der)), &[der], NOW, 4).unwrap();
        assert!(!att.selectors(TD).iter().any(|(_, v)| v.starts_with("ca:fingerprint:")));
        let (bytes, challenge) = att.make_challenge().unwrap();
        challenge.verify_response(&challenge_response(&key.serialize_der(), &bytes).unwrap()).unwrap();
    }

    #[test]
    fn unsupported_leaf_key_is_rejected() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ca_key = key_for(Alg::P256);
        let ca = ca_params("root");
        let root = ca.self_signed(&ca_key).unwrap().der().to_vec();
        let leaf = leaf_params().signed_by(&key, &Issuer::new(ca, ca_key)).unwrap().der().to_vec();
        let err = verify_payload(&attestation_payload(&[leaf]), &[root], NOW, 4).unwrap_err();
        assert_eq!(err, X509PopError::UnsupportedKeyType("ed25519".into()));
    }

    // ---- wrong keys ---------------------------------------------------------------------------

    #[test]
    fn wrong_key_answering_is_rejected() {
        let pki1 = make_pki(Spec::default());
        let att = pki1.verify().unwrap();
        let (bytes, challenge) = att.make_challenge().unwrap();
        // Another P-256 key: well-formed, wrong signature.
        let stranger = key_for(Alg::P256).serialize_der();
        let err = challenge.verify_response(&challenge_response(&stranger, &bytes).unwrap()).unwrap_err();
        assert_eq!(err, X509PopError::SignatureInvalid { kind: "ecdsa" });
        assert_eq!(err.status_class(), StatusClass::PermissionDenied);
        // A P-384 key answering (signature on the wrong curve).
        let p384 = key_for(Alg::P384).serialize_der();
        assert!(challenge.verify_response(&challenge_response(&p384, &bytes).unwrap()).is_err());
        // An RSA key cannot even answer an ECDSA challenge.
        let rsa = key_for(Alg::Rsa).serialize_der();
        assert_eq!(challenge_response(&rsa, &bytes).unwrap_err(), X509PopError::WrongChallengeKind { expected: "rsa" });
        // And an RSA challenge answered with an ECDSA response is the wrong kind.
        let rsa_pki = make_pki(Spec { leaf: Alg::Rsa, ..Spec::default() });
        let (rsa_bytes, rsa_challenge) = rsa_pki.verify().unwrap().make_challenge().unwrap();
        assert_eq!(challenge_response(&pki1.leaf_key, &rsa_bytes).unwrap_err(), X509PopError::WrongChallengeKind { expected: "ecdsa" });
        let ec_response = challenge_response(&pki1.leaf_key, &bytes).unwrap();
        assert_eq!(rsa_challenge.verify_response(&ec_response).unwrap_err(), X509PopError::WrongResponseKind { expected: "rsa" });
        let wrong_rsa = challenge_response(&rsa, &rsa_bytes).unwrap();
        assert_eq!(rsa_challenge.verify_response(&wrong_rsa).unwrap_err(), X509PopError::SignatureInvalid { kind: "rsa" });
    }

    // ---- hostile input never panics -------------------------------------------------------------

    #[test]
    fn garbage_payloads_are_errors() {
        let pki = make_pki(Spec::default());
        type Expect = fn(&X509PopError) -> bool;
        let cases: [(&[u8], Expect); 11] = [
            (b"", |e| matches!(e, X509PopError::MalformedPayload(_))),
            (b"null", |e| *e == X509PopError::NoCertificates),
            (b"\xff\xfe", |e| matches!(e, X509PopError::MalformedPayload(_))),
            (b"[]", |e| matches!(e, X509PopError::MalformedPayload(_))),
            (b"{}", |e| *e == X509PopError::NoCertificates),
            (br#"{"certificates":null}"#, |e| *e == X509PopError::NoCertificates),
            (br#"{"certificates":[]}"#, |e| *e == X509PopError::NoCertificates),
            (br#"{"certificates":["!!!!"]}"#, |e| matches!(e, X509PopError::MalformedPayload(_))),
            (br#"{"certificates":["AQID"]}"#, |e| matches!(e, X509PopError::MalformedCertificate { .. })),
            (br#"{"certificates":[null]}"#, |e| matches!(e, X509PopError::MalformedCertificate { .. })),
            (br#"{"certificates":[1]}"#, |e| matches!(e, X509PopError::MalformedPayload(_))),
        ];
        for (payload, expected) in cases {
            let err = verify_payload(payload, &pki.roots, NOW, 4).unwrap_err();
            assert!(expected(&err), "{:?} -> {err:?}", String::from_utf8_lossy(payload));
        }
        // Unpadded base64 is refused, as by Go's StdEncoding.
        let der = GO_STD_B64.encode(&pki.chain[0]);
        let unpadded = format!(r#"{{"certificates":["{}"]}}"#, der.trim_end_matches('='));
        if der.ends_with('=') {
            assert!(matches!(verify_payload(unpadded.as_bytes(), &pki.roots, NOW, 4), Err(X509PopError::MalformedPayload(_))));
        }
        // Deep nesting hits serde_json's recursion limit, not the stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(verify_payload(deep.as_bytes(), &pki.roots, NOW, 4).is_err());
        // Every truncation of a valid payload is an error.
        let payload = pki.payload();
        for end in 0..payload.len() {
            assert!(verify_payload(&payload[..end], &pki.roots, NOW, 4).is_err());
        }
        // A trailing byte after a certificate, and a malformed root.
        let mut padded = pki.chain.clone();
        padded[0].push(0);
        assert!(matches!(
            verify_payload(&attestation_payload(&padded), &pki.roots, NOW, 4),
            Err(X509PopError::MalformedCertificate { .. })
        ));
        assert!(matches!(verify_payload(&pki.payload(), &[vec![1, 2, 3]], NOW, 4), Err(X509PopError::MalformedRoot { index: 0, .. })));
    }

    #[test]
    fn every_corruption_of_the_leaf_is_rejected() {
        // Includes the unsigned outer layer (tags, algorithm, unused bits): one certificate must
        // not have several accepted encodings, since the agent ID is the SHA-1 of the DER.
        let pki = make_pki(Spec::default());
        for i in 0..pki.chain[0].len() {
            for flip in [0x01u8, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80] {
                let mut chain = pki.chain.clone();
                chain[0][i] ^= flip;
                assert!(verify_payload(&attestation_payload(&chain), &pki.roots, NOW, 4).is_err(), "byte {i} ^ {flip:#x}");
            }
        }
    }

    #[test]
    fn garbage_challenges_are_errors() {
        let pki = make_pki(Spec::default());
        let key = &pki.leaf_key;
        let nonce31 = GO_STD_B64.encode([0u8; 31]);
        let nonce33 = GO_STD_B64.encode([0u8; 33]);
        let unpadded = GO_STD_B64.encode([0u8; 32]).trim_end_matches('=').to_owned();
        let cases = [
            String::new(),
            "null".into(),
            "{}".into(),
            r#"{"rsa_signature":null,"ecdsa_signature":null}"#.into(),
            r#"{"ecdsa_signature":{}}"#.into(),
            r#"{"ecdsa_signature":{"nonce":null}}"#.into(),
            format!(r#"{{"ecdsa_signature":{{"nonce":"{nonce31}"}}}}"#),
            format!(r#"{{"ecdsa_signature":{{"nonce":"{nonce33}"}}}}"#),
            format!(r#"{{"ecdsa_signature":{{"nonce":"{unpadded}"}}}}"#),
            r#"{"ecdsa_signature":{"nonce":7}}"#.into(),
            r#"{"ecdsa_signature":"x"}"#.into(),
        ];
        for case in &cases {
            assert!(challenge_response(key, case.as_bytes()).is_err(), "{case}");
        }
        assert_eq!(
            challenge_response(key, format!(r#"{{"ecdsa_signature":{{"nonce":"{nonce31}"}}}}"#).as_bytes()).unwrap_err(),
            X509PopError::NonceLength { which: "challenge", len: 31 }
        );
        let good = pki.verify().unwrap().make_challenge().unwrap().0;
        for end in 0..good.len() {
            assert!(challenge_response(key, &good[..end]).is_err());
        }
        // Garbage keys.
        for bad_key in [&b""[..], b"\x30\x03\x02\x01\x00", &key[..key.len() - 1]] {
            assert_eq!(challenge_response(bad_key, &good).unwrap_err(), X509PopError::MalformedPrivateKey);
        }
    }

    #[test]
    fn garbage_responses_are_errors() {
        let ec = verify_payload(&go_payload(GO_LEAF_P256), &go_roots(), NOW, 4).unwrap();
        let challenge = fixed_challenge(&ec);
        let good: serde_json::Value = serde_json::from_str(GO_RESPONSE_P256).unwrap();
        let r = good["ecdsa_signature"]["r"].as_str().unwrap().to_owned();
        let s = good["ecdsa_signature"]["s"].as_str().unwrap().to_owned();
        let nonce = good["ecdsa_signature"]["nonce"].as_str().unwrap().to_owned();
        let with = |nonce: &str, r: &str, s: &str| format!(r#"{{"ecdsa_signature":{{"nonce":"{nonce}","r":"{r}","s":"{s}"}}}}"#);
        // Leading zero bytes on r and s do not change the integers (Go's SetBytes).
        let padded_r = GO_STD_B64.encode([&[0u8, 0][..], &b64(&r)].concat());
        challenge.verify_response(with(&nonce, &padded_r, &s).as_bytes()).unwrap();

        let zero = GO_STD_B64.encode([0u8; 32]);
        let huge = GO_STD_B64.encode([0xffu8; 1000]);
        let short_nonce = GO_STD_B64.encode([0u8; 31]);
        let cases: Vec<(String, X509PopError)> = vec![
            (with(&short_nonce, &r, &s), X509PopError::NonceLength { which: "response", len: 31 }),
            (with(&nonce, "", &s), X509PopError::SignatureInvalid { kind: "ecdsa" }),
            (with(&nonce, &r, &zero), X509PopError::SignatureInvalid { kind: "ecdsa" }),
            (with(&nonce, &huge, &s), X509PopError::SignatureInvalid { kind: "ecdsa" }),
            (with(&nonce, &s, &r), X509PopError::SignatureInvalid { kind: "ecdsa" }),
            (r#"{"ecdsa_signature":null}"#.into(), X509PopError::WrongResponseKind { expected: "ecdsa" }),
            ("{}".into(), X509PopError::WrongResponseKind { expected: "ecdsa" }),
            (r#"{"ecdsa_signature":{}}"#.into(), X509PopError::NonceLength { which: "response", len: 0 }),
        ];
        for (response, want) in cases {
            assert_eq!(challenge.verify_response(response.as_bytes()).unwrap_err(), want, "{response}");
        }
        // Go decodes `null` into an empty struct: no member of the expected kind.
        assert_eq!(challenge.verify_response(b"null").unwrap_err(), X509PopError::WrongResponseKind { expected: "ecdsa" });
        for bad in
            [&b""[..], b"[", b"[]", br#"{"ecdsa_signature":[]}"#, br#"{"ecdsa_signature":7}"#, br#"{"ecdsa_signature":{"nonce":"%%%"}}"#]
        {
            let err = challenge.verify_response(bad).unwrap_err();
            assert!(matches!(err, X509PopError::MalformedResponse(_)), "{err:?}");
            assert_eq!(err.status_class(), StatusClass::InvalidArgument);
        }
        for end in 0..GO_RESPONSE_P256.len() {
            assert!(challenge.verify_response(&GO_RESPONSE_P256.as_bytes()[..end]).is_err());
        }

        // RSA: wrong lengths, zero, the modulus itself, and garbage all fail without panicking.
        let rsa = verify_payload(&go_payload(GO_LEAF_RSA), &go_roots(), NOW, 4).unwrap();
        let challenge = fixed_challenge(&rsa);
        let NodeKey::Rsa { n, .. } = &rsa.key else { panic!("rsa leaf") };
        let rsa_with = |sig: &[u8]| format!(r#"{{"rsa_signature":{{"nonce":"{nonce}","signature":"{}"}}}}"#, GO_STD_B64.encode(sig));
        let mut above = n.clone();
        above[255] = above[255].wrapping_add(1);
        for sig in [vec![], vec![0u8; 255], vec![0u8; 256], vec![0u8; 257], vec![0xff; 256], n.clone(), above, vec![1u8; 256]] {
            assert_eq!(challenge.verify_response(rsa_with(&sig).as_bytes()).unwrap_err(), X509PopError::SignatureInvalid { kind: "rsa" });
        }
        for end in 0..GO_RESPONSE_RSA.len() {
            assert!(challenge.verify_response(&GO_RESPONSE_RSA.as_bytes()[..end]).is_err());
        }
    }

    /// EMSA-PSS-ENCODE (RFC 8017 9.1.1) with SHA-256, for a modulus of `mod_bits` bits.
    fn pss_encode(digest: &[u8; 32], salt: &[u8], mod_bits: usize) -> Vec<u8> {
        let em_bits = mod_bits - 1;
        let em_len = em_bits.div_ceil(8);
        let h: [u8; 32] = sha2::Sha256::new().chain_update([0u8; 8]).chain_update(digest).chain_update(salt).finalize().into();
        let db_len = em_len - 33;
        let mut db = vec![0u8; db_len - salt.len() - 1];
        db.push(0x01);
        db.extend_from_slice(salt);
        let mut em: Vec<u8> = db.iter().zip(mgf1_sha256(&h, db_len)).map(|(a, b)| a ^ b).collect();
        em[0] &= 0xff >> (8 * em_len - em_bits);
        em.extend_from_slice(&h);
        em.push(0xbc);
        em
    }

    #[test]
    fn pss_decoder_checks_every_rule() {
        // With e = 1 the RSA operation is the identity, so encoded messages can be crafted
        // directly and each EMSA-PSS-VERIFY rule broken on its own.
        let n = vec![0xffu8; 256];
        let digest = [0x42u8; 32];
        for salt_len in [0usize, 20, 32, 64, 222] {
            let em = pss_encode(&digest, &vec![0x5a; salt_len], 2048);
            assert!(verify_rsa_pss_auto(&n, &[1], &digest, &em), "salt {salt_len}");
            assert!(!verify_rsa_pss_auto(&n, &[1], &[0x43; 32], &em), "other digest, salt {salt_len}");
        }
        let good = pss_encode(&digest, &[0x5a; 32], 2048);
        let broken = |f: fn(&mut Vec<u8>)| {
            let mut em = good.clone();
            f(&mut em);
            verify_rsa_pss_auto(&n, &[1], &digest, &em)
        };
        assert!(!broken(|em| *em.last_mut().unwrap() = 0xbd), "trailer byte");
        assert!(!broken(|em| em[0] |= 0x80), "bit beyond emBits");
        assert!(!broken(|em| em[200] ^= 0x01), "salt bit (hash mismatch)");
        assert!(!broken(|em| em[240] ^= 0x01), "hash bit");
        assert!(!broken(|em| em[10] ^= 0x02), "non-zero padding byte");
        assert!(!broken(|em| em.truncate(255)), "short signature");
        assert!(!broken(|em| em.insert(0, 0)), "long signature");
        // No 0x01 separator at all: a DB that unmasks to zeros.
        let h = [0x11u8; 32];
        let mut em: Vec<u8> = mgf1_sha256(&h, 256 - 33);
        em[0] &= 0x7f;
        em.extend_from_slice(&h);
        em.push(0xbc);
        assert!(!verify_rsa_pss_auto(&n, &[1], &digest, &em));
        // A modulus of 8k+1 bits: the signature is one byte longer than the encoded message,
        // whose leading byte must then be zero.
        let mut n2049 = vec![0x01u8];
        n2049.extend_from_slice(&[0xff; 256]);
        let em = pss_encode(&digest, &[7; 32], 2049);
        assert_eq!(em.len(), 256);
        let mut signature = vec![0u8];
        signature.extend_from_slice(&em);
        assert!(verify_rsa_pss_auto(&n2049, &[1], &digest, &signature));
        signature[0] = 0x01;
        assert!(!verify_rsa_pss_auto(&n2049, &[1], &digest, &signature));
        // Signatures not below the modulus, and degenerate moduli.
        assert!(!verify_rsa_pss_auto(&n, &[1], &digest, &[0xff; 256]));
        assert!(!verify_rsa_pss_auto(&[], &[1], &digest, &[]));
        assert!(!verify_rsa_pss_auto(&[1], &[1], &digest, &[0]));
        assert!(!verify_rsa_pss_auto(&[0x7f, 0xff], &[3], &digest, &[0x00, 0x02]));
    }

    #[test]
    fn go_base64_flavour() {
        // Padded standard alphabet on output; non-canonical trailing bits tolerated on input.
        assert_eq!(GO_STD_B64.encode([0xfb, 0xff]), "+/8=");
        assert_eq!(GO_STD_B64.decode("AB==").unwrap(), [0x00]);
        assert!(GO_STD_B64.decode("AA").is_err());
        assert!(GO_STD_B64.decode("-_8=").is_err());
    }

    #[test]
    fn bmp_string_common_name_is_decoded_like_go() {
        let pki = make_pki(Spec {
            leaf_tweak: |p| {
                p.distinguished_name = rcgen::DistinguishedName::new();
                let bmp = rcgen::string::BmpString::try_from("n\u{f6}de-1").unwrap();
                p.distinguished_name.push(DnType::CommonName, rcgen::DnValue::BmpString(bmp));
            },
            ..Spec::default()
        });
        let att = pki.verify().unwrap();
        assert!(att.selectors(TD).contains(&("x509pop".to_owned(), "subject:cn:n\u{f6}de-1".to_owned())));
        assert_eq!(
            att.agent_path(TD, Some("/{{ .Subject.CommonName }}")).unwrap_err(),
            X509PopError::InvalidAgentPath {
                path: "/n\u{f6}de-1".into(),
                reason: "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
            }
        );
    }

    #[test]
    fn uri_san_parsing_follows_go() {
        let sans: Vec<String> = [
            "x509pop://example.org/a/1",
            "x509pop://example.org/a/2",
            "x509pop://example.org//b//c/d/",
            "x509pop://example.org/enc%2Fkey/v%41",
            "x509pop://example.org/bad/%zz",
            "x509pop://user@example.org/u/1",
            "x509pop://example.org:8443/p/1",
            "x509pop://example.orgx/q/1",
            "x509pop:example.org/o/1",
            "x509pop://example.org/q/v?query#frag",
        ]
        .map(str::to_owned)
        .to_vec();
        let got = uri_san_selectors(&sans, TD);
        let want: Vec<(String, String)> =
            [("a", "2"), ("b", "/c/d"), ("enc", "key/vA"), ("q", "v")].iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        assert_eq!(got, want);
    }
}
