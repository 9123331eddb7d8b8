//! JWT-SVID validation, and the two halves of JWT-SVID signing around the
//! CA's signature (checklist §3).
//!
//! Validation follows the order go-spiffe and SPIRE use (§3 item 14), so a
//! bad token fails with the same class of error there and here:
//!
//! 1. size limit, compact form with exactly three parts, header JSON, then
//!    the `alg` allow-list before anything else is looked at;
//! 2. header members: only `alg`, `kid`, `typ`; `kid` required; `typ`, if
//!    present, `JWT` or `JOSE`;
//! 3. claims: `sub` and `exp` present, `aud` a string or a non-empty array,
//!    `iat`/`nbf`/`iss` of the right type;
//! 4. `sub` parsed as a SPIFFE ID;
//! 5. the key looked up by `sub`'s trust domain and `kid`;
//! 6. the signature, with `alg` required to match the key's type and curve;
//! 7. audience, then expiry, not-before and issued-at with
//!    [`CLOCK_LEEWAY_SECS`] of leeway.
//!
//! Only the JWS compact form is accepted: JSON serialization and JWE both
//! fail the three-part check.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::bundle::{Bundle, Curve, KeyParams, StrictJsonError, parse_strict_json};
use super::id::{SpiffeId, SpiffeIdError, TrustDomain};

/// Largest token we look at, in bytes.
///
/// A JWT-SVID is a few hundred bytes; the limit keeps a hostile caller from
/// making us decode and parse megabytes before any check can fail.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
///
/// 60 s is go-jose's default, which go-spiffe and SPIRE inherit (JWT-SVID
/// §3.3 allows "a small leeway"); using the same value keeps verdicts equal
/// across implementations.
pub const CLOCK_LEEWAY_SECS: i64 = 60;

/// Header members a JWT-SVID may carry (JWT-SVID §2): any other, `jku` or
/// `x5u` in particular, could make a careless validator fetch keys named by
/// the token itself.
const ALLOWED_HEADERS: [&str; 3] = ["alg", "kid", "typ"];

/// Why a JWT-SVID was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtSvidError {
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token is {len} bytes, longer than the limit of {max}")]
    TooLarge {
        /// Length of the token.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The token is not three dot-separated parts (JWS compact form).
    #[error("token has {parts} parts, expected 3")]
    WrongPartCount {
        /// How many parts there were.
        parts: usize,
    },
    /// A part is not unpadded base64url.
    #[error("token {part} is not valid base64url")]
    InvalidBase64 {
        /// `header`, `claims` or `signature`.
        part: &'static str,
    },
    /// The header or claims are not a JSON object.
    #[error("token {part} is not a json object: {reason}")]
    InvalidJson {
        /// `header` or `claims`.
        part: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The header or claims repeat a member.
    #[error("token {part} repeats member {name:?}")]
    DuplicateMember {
        /// `header` or `claims`.
        part: &'static str,
        /// The repeated member.
        name: String,
    },
    /// The header has no `alg`.
    #[error("token header missing algorithm")]
    MissingAlgorithm,
    /// `alg` is not one of the nine JWT-SVID algorithms.
    #[error("unsupported token signature algorithm {alg:?}")]
    UnsupportedAlgorithm {
        /// The value found, as JSON text if it was not a string.
        alg: String,
    },
    /// The header has a member other than `alg`, `kid` and `typ`.
    #[error("token header has forbidden member {name:?}")]
    UnexpectedHeader {
        /// The member name.
        name: String,
    },
    /// A header member has the wrong JSON type.
    #[error("token header member {name:?} is not a string")]
    InvalidHeader {
        /// The member name.
        name: &'static str,
    },
    /// The header has no `kid`, or an empty one.
    #[error("token header missing key id")]
    MissingKeyId,
    /// `typ` is present but neither `JWT` nor `JOSE`.
    #[error("token header type {typ:?} not equal to either JWT or JOSE")]
    InvalidType {
        /// The value found.
        typ: String,
    },
    /// No `sub` claim, or an empty one.
    #[error("token missing subject claim")]
    MissingSubject,
    /// `sub` is not a valid SPIFFE ID.
    #[error("token has an invalid subject claim")]
    InvalidSubject {
        /// Why the ID was rejected.
        #[source]
        source: SpiffeIdError,
    },
    /// No `exp` claim.
    #[error("token missing exp claim")]
    MissingExpiry,
    /// No `aud` claim, or an empty array.
    #[error("token missing audience claim")]
    MissingAudience,
    /// A registered claim has the wrong JSON type.
    #[error("token claim {claim:?} is invalid: {reason}")]
    InvalidClaim {
        /// The claim name.
        claim: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// No bundle for the subject's trust domain. Key callbacks return this.
    #[error("no bundle found for trust domain \"{trust_domain}\"")]
    NoBundle {
        /// The subject's trust domain.
        trust_domain: TrustDomain,
    },
    /// The trust domain's bundle has no JWT authority with this `kid`.
    #[error("no jwt authority {kid:?} found for trust domain \"{trust_domain}\"")]
    UnknownKeyId {
        /// The subject's trust domain.
        trust_domain: TrustDomain,
        /// The key id from the header.
        kid: String,
    },
    /// The authority's public key could not be read.
    #[error("jwt authority key is unusable: {reason}")]
    InvalidKey {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `alg` does not fit the authority's key type or curve (RFC 7518).
    #[error("algorithm {alg} does not match the authority's key type")]
    AlgorithmKeyMismatch {
        /// The token's algorithm.
        alg: JwtAlg,
    },
    /// The signature does not verify.
    #[error("error in cryptographic primitive")]
    InvalidSignature,
    /// The validator was given no audience to expect.
    #[error("no expected audience given")]
    NoExpectedAudience,
    /// None of the expected audiences is in `aud`.
    #[error("token audience {audience:?} does not include an expected audience")]
    AudienceMismatch {
        /// The token's audiences.
        audience: Vec<String>,
    },
    /// `exp` is in the past, beyond the leeway.
    #[error("token has expired (exp {expiry}, now {now})")]
    Expired {
        /// The `exp` claim.
        expiry: i64,
        /// The validation time.
        now: i64,
    },
    /// `nbf` is in the future, beyond the leeway.
    #[error("token is not valid yet (nbf {not_before}, now {now})")]
    NotYetValid {
        /// The `nbf` claim.
        not_before: i64,
        /// The validation time.
        now: i64,
    },
    /// `iat` is in the future, beyond the leeway.
    #[error("token issued in the future (iat {issued_at}, now {now})")]
    IssuedInFuture {
        /// The `iat` claim.
        issued_at: i64,
        /// The validation time.
        now: i64,
    },
}

/// The nine signature algorithms JWT-SVIDs may use (JWT-SVID §2.1).
///
/// Not `#[non_exhaustive]`: the standard fixes the list, and JWT-SVID
/// validators must reject anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlg {
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// ECDSA P-521 with SHA-512.
    ES512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
}

/// The claims of a validated JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSvidClaims {
    /// `sub`: the workload's SPIFFE ID.
    pub subject: SpiffeId,
    /// `aud`, always as a list.
    pub audience: Vec<String>,
    /// `exp`, unix seconds.
    pub expiry: i64,
    /// `iat`, unix seconds, if present.
    pub issued_at: Option<i64>,
    /// `iss`, if present.
    pub issuer: Option<String>,
    /// The header's `kid`.
    pub key_id: String,
    /// Every claim as sent, registered ones included.
    pub raw: Map<String, Value>,
}

/// Validates a JWT-SVID and returns its claims.
///
/// `audiences` are the values the caller answers to; the token must name at
/// least one. `now` is unix seconds. `keys(td, kid)` returns the DER
/// `SubjectPublicKeyInfo` of `td`'s JWT authority `kid`, `Ok(None)` if there
/// is none, or `Err(JwtSvidError::NoBundle { .. })` when it has no bundle for
/// `td` ([`bundle_keys`] builds one from bundles).
///
/// # Errors
///
/// [`JwtSvidError`] naming the first failed check, in the order given in the
/// module docs, or whatever `keys` returns.
pub fn validate_jwt_svid(
    token: &str,
    audiences: &[&str],
    now: i64,
    keys: impl Fn(&TrustDomain, &str) -> Result<Option<Vec<u8>>, JwtSvidError>,
) -> Result<JwtSvidClaims, JwtSvidError> {
    // 1 and 2.
    let parsed = ParsedToken::parse(token)?;
    // 3.
    let unverified = UnverifiedClaims::read(&parsed.claims)?;
    // 4.
    let subject = SpiffeId::new(unverified.subject).map_err(|source| JwtSvidError::InvalidSubject { source })?;
    // 5. The key comes from the subject's own trust domain only.
    let trust_domain = subject.trust_domain();
    let spki = keys(trust_domain, &parsed.key_id)?
        .ok_or_else(|| JwtSvidError::UnknownKeyId { trust_domain: trust_domain.clone(), kid: parsed.key_id.clone() })?;
    // 6.
    verify_signature(parsed.alg, &spki, parsed.signed.as_bytes(), &parsed.signature)?;
    // 7.
    unverified.check(audiences, now)?;
    let UnverifiedClaims { audience, expiry, issued_at, issuer, .. } = unverified;
    Ok(JwtSvidClaims { subject, audience, expiry, issued_at, issuer, key_id: parsed.key_id, raw: parsed.claims })
}

/// A token split and decoded, with its header checked.
struct ParsedToken<'t> {
    alg: JwtAlg,
    key_id: String,
    claims: Map<String, Value>,
    /// The token's own text up to the second dot: what was signed. Taken
    /// from the input rather than re-encoded, since re-encoding JSON need
    /// not give back the same bytes.
    signed: &'t str,
    signature: Vec<u8>,
}

impl<'t> ParsedToken<'t> {
    fn parse(token: &'t str) -> Result<Self, JwtSvidError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtSvidError::TooLarge { len: token.len(), max: MAX_TOKEN_LEN });
        }
        let parts: Vec<&str> = token.split('.').collect();
        let &[header_b64, claims_b64, signature_b64] = parts.as_slice() else {
            return Err(JwtSvidError::WrongPartCount { parts: parts.len() });
        };
        let header = decode_object(header_b64, "header")?;
        // The allow-list comes before anything else is decoded (§3 item 2).
        let alg = match header.get("alg") {
            None => return Err(JwtSvidError::MissingAlgorithm),
            Some(Value::String(alg)) => JwtAlg::parse(alg)?,
            Some(other) => {
                return Err(JwtSvidError::UnsupportedAlgorithm { alg: other.to_string() });
            }
        };
        let claims = decode_object(claims_b64, "claims")?;
        let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| JwtSvidError::InvalidBase64 { part: "signature" })?;

        if let Some(name) = header.keys().find(|k| !ALLOWED_HEADERS.contains(&k.as_str())) {
            return Err(JwtSvidError::UnexpectedHeader { name: name.clone() });
        }
        let key_id = match header.get("kid") {
            None => return Err(JwtSvidError::MissingKeyId),
            Some(Value::String(kid)) if kid.is_empty() => return Err(JwtSvidError::MissingKeyId),
            Some(Value::String(kid)) => kid.clone(),
            Some(_) => return Err(JwtSvidError::InvalidHeader { name: "kid" }),
        };
        match header.get("typ") {
            None => {}
            Some(Value::String(typ)) if typ == "JWT" || typ == "JOSE" => {}
            Some(Value::String(typ)) => {
                return Err(JwtSvidError::InvalidType { typ: typ.clone() });
            }
            Some(other) => {
                return Err(JwtSvidError::InvalidType { typ: other.to_string() });
            }
        }
        let signed = token.get(..header_b64.len() + 1 + claims_b64.len()).ok_or(JwtSvidError::WrongPartCount { parts: 3 })?;
        Ok(Self { alg, key_id, claims, signed, signature })
    }
}

/// The registered claims, read and type-checked but not yet trusted.
struct UnverifiedClaims<'c> {
    subject: &'c str,
    audience: Vec<String>,
    expiry: i64,
    not_before: Option<i64>,
    issued_at: Option<i64>,
    issuer: Option<String>,
}

impl<'c> UnverifiedClaims<'c> {
    fn read(claims: &'c Map<String, Value>) -> Result<Self, JwtSvidError> {
        let subject = match claims.get("sub") {
            None | Some(Value::Null) => return Err(JwtSvidError::MissingSubject),
            Some(Value::String(sub)) if sub.is_empty() => return Err(JwtSvidError::MissingSubject),
            Some(Value::String(sub)) => sub.as_str(),
            Some(_) => return Err(invalid_claim("sub", "not a string")),
        };
        let expiry = match claims.get("exp") {
            None | Some(Value::Null) => return Err(JwtSvidError::MissingExpiry),
            Some(v) => numeric_date(v).ok_or(invalid_claim("exp", "not a number"))?,
        };
        let audience = audience_claim(claims.get("aud"))?;
        let not_before = optional_date(claims, "nbf")?;
        let issued_at = optional_date(claims, "iat")?;
        let issuer = match claims.get("iss") {
            None | Some(Value::Null) => None,
            Some(Value::String(iss)) => Some(iss.clone()),
            Some(_) => return Err(invalid_claim("iss", "not a string")),
        };
        Ok(Self { subject, audience, expiry, not_before, issued_at, issuer })
    }

    /// Audience, then times, each with [`CLOCK_LEEWAY_SECS`].
    fn check(&self, audiences: &[&str], now: i64) -> Result<(), JwtSvidError> {
        // With nothing to match, any token would pass: go-jose skips the
        // check in that case, which is an easy way to accept tokens meant
        // for another service.
        if audiences.is_empty() {
            return Err(JwtSvidError::NoExpectedAudience);
        }
        if !self.audience.iter().any(|a| audiences.contains(&a.as_str())) {
            return Err(JwtSvidError::AudienceMismatch { audience: self.audience.clone() });
        }
        if now.saturating_sub(CLOCK_LEEWAY_SECS) > self.expiry {
            return Err(JwtSvidError::Expired { expiry: self.expiry, now });
        }
        if let Some(not_before) = self.not_before
            && now.saturating_add(CLOCK_LEEWAY_SECS) < not_before
        {
            return Err(JwtSvidError::NotYetValid { not_before, now });
        }
        if let Some(issued_at) = self.issued_at
            && now.saturating_add(CLOCK_LEEWAY_SECS) < issued_at
        {
            return Err(JwtSvidError::IssuedInFuture { issued_at, now });
        }
        Ok(())
    }
}

/// A key callback for [`validate_jwt_svid`] over a set of bundles: it
/// answers only from the bundle of the asked trust domain, never pooling
/// keys across trust domains (checklist §3 item 12).
pub fn bundle_keys(bundles: &[Bundle]) -> impl Fn(&TrustDomain, &str) -> Result<Option<Vec<u8>>, JwtSvidError> + '_ {
    move |trust_domain, kid| {
        let bundle = bundles
            .iter()
            .find(|b| b.trust_domain == *trust_domain)
            .ok_or_else(|| JwtSvidError::NoBundle { trust_domain: trust_domain.clone() })?;
        Ok(bundle.jwt_authority(kid).map(|a| a.public_key.clone()))
    }
}

/// The `kid` in a compact JWS's header, without checking anything else (to sort cached tokens
/// by the key that signed them).
#[must_use]
pub fn header_kid(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("kid")?.as_str().map(str::to_owned)
}

/// The text the CA signs: base64url of the header
/// `{"alg":..,"kid":..,"typ":"JWT"}`, a dot, base64url of `claims`.
///
/// The CA signs its bytes and passes the signature to [`assemble`]; ECDSA
/// signatures must be in the fixed `r || s` form, not ASN.1.
#[must_use]
pub fn signing_input(alg: JwtAlg, kid: &str, claims: &Value) -> String {
    let mut header = Map::new();
    header.insert("alg".to_owned(), alg.as_str().into());
    header.insert("kid".to_owned(), kid.into());
    header.insert("typ".to_owned(), "JWT".into());
    let header = Value::Object(header).to_string();
    format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// The compact token: `signing_input` `.` base64url of the signature.
#[must_use]
pub fn assemble(signing_input: &str, signature_fixed: &[u8]) -> String {
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature_fixed))
}

fn invalid_claim(claim: &'static str, reason: &'static str) -> JwtSvidError {
    JwtSvidError::InvalidClaim { claim, reason }
}

fn decode_object(part: &str, name: &'static str) -> Result<Map<String, Value>, JwtSvidError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtSvidError::InvalidBase64 { part: name })?;
    match parse_strict_json(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(JwtSvidError::InvalidJson { part: name, reason: "not an object".to_owned() }),
        Err(StrictJsonError::Duplicate(member)) => Err(JwtSvidError::DuplicateMember { part: name, name: member }),
        Err(StrictJsonError::Malformed(reason)) => Err(JwtSvidError::InvalidJson { part: name, reason }),
    }
}

/// Reads an RFC 7519 `NumericDate`: any JSON number, fractions truncated
/// (go-jose accepts them too), values beyond `i64` clamped.
fn numeric_date(value: &Value) -> Option<i64> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    if n.as_u64().is_some() {
        return Some(i64::MAX);
    }
    let f = n.as_f64()?;
    #[allow(clippy::cast_possible_truncation, reason = "`as` saturates, which is the clamping we want; f64 cannot be NaN in JSON")]
    Some(f.trunc() as i64)
}

fn optional_date(claims: &Map<String, Value>, claim: &'static str) -> Result<Option<i64>, JwtSvidError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => numeric_date(v).map(Some).ok_or(invalid_claim(claim, "not a number")),
    }
}

/// `aud` as a list: RFC 7519 allows a single string or an array.
fn audience_claim(value: Option<&Value>) -> Result<Vec<String>, JwtSvidError> {
    match value {
        None | Some(Value::Null) => Err(JwtSvidError::MissingAudience),
        Some(Value::String(aud)) => Ok(vec![aud.clone()]),
        Some(Value::Array(items)) if items.is_empty() => Err(JwtSvidError::MissingAudience),
        Some(Value::Array(items)) => {
            items.iter().map(|item| item.as_str().map(str::to_owned).ok_or(invalid_claim("aud", "array holds a non-string"))).collect()
        }
        Some(_) => Err(invalid_claim("aud", "neither a string nor an array")),
    }
}

fn verify_signature(alg: JwtAlg, spki: &[u8], signed: &[u8], signature: &[u8]) -> Result<(), JwtSvidError> {
    let key = KeyParams::from_spki(spki).map_err(|reason| JwtSvidError::InvalidKey { reason })?;
    let fits = match (&key, alg) {
        (KeyParams::Ec { curve, .. }, JwtAlg::ES256) => *curve == Curve::P256,
        (KeyParams::Ec { curve, .. }, JwtAlg::ES384) => *curve == Curve::P384,
        (KeyParams::Ec { curve, .. }, JwtAlg::ES512) => *curve == Curve::P521,
        (KeyParams::Rsa { .. }, alg) => !alg.is_ecdsa(),
        _ => false,
    };
    if !fits {
        return Err(JwtSvidError::AlgorithmKeyMismatch { alg });
    }
    UnparsedPublicKey::new(alg.verification_algorithm(), key.verification_bytes())
        .verify(signed, signature)
        .map_err(|_| JwtSvidError::InvalidSignature)
}

// === impl JwtAlg ===

impl JwtAlg {
    /// The JOSE name, e.g. `ES256`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::ES512 => "ES512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
        }
    }

    /// Parses a JOSE name; case-sensitive, as RFC 7515 requires.
    ///
    /// # Errors
    ///
    /// [`JwtSvidError::UnsupportedAlgorithm`] for any other name, `none` and
    /// `HS256` included.
    pub fn parse(name: &str) -> Result<Self, JwtSvidError> {
        Ok(match name {
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            "ES512" => Self::ES512,
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "PS256" => Self::PS256,
            "PS384" => Self::PS384,
            "PS512" => Self::PS512,
            _ => {
                return Err(JwtSvidError::UnsupportedAlgorithm { alg: name.to_owned() });
            }
        })
    }

    fn is_ecdsa(self) -> bool {
        matches!(self, Self::ES256 | Self::ES384 | Self::ES512)
    }

    fn verification_algorithm(self) -> &'static dyn VerificationAlgorithm {
        match self {
            Self::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            Self::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
            Self::ES512 => &signature::ECDSA_P521_SHA512_FIXED,
            Self::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Self::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Self::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Self::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Self::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            Self::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        }
    }
}

impl fmt::Display for JwtAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JwtAlg {
    type Err = JwtSvidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests;
