//! X509-SVID rules (checklist §2): what a leaf and its signing certificates
//! must look like, and path validation from a leaf to a bundle's roots.
//!
//! Two separate checks, usually run together (see [`verify_x509_svid`]):
//!
//! - [`validate_x509_svid_chain`] looks at each certificate on its own:
//!   the leaf must be a proper SVID (one URI SAN holding a SPIFFE ID with a
//!   path, `cA=false`, critical key usage with `digitalSignature` and without
//!   `keyCertSign`/`cRLSign`, EKU if present with both `serverAuth` and
//!   `clientAuth`), and every later certificate must be a CA with
//!   `keyCertSign`. This is stricter than go-spiffe's `Verify`, which skips
//!   the non-root-path, KU-criticality and EKU checks.
//! - [`verify_chain`] does RFC 5280 path validation: signatures, validity at
//!   a given time, CA flags, key usage and path length, from the leaf through
//!   the presented intermediates (in any order) to one of the given roots.
//!   Certificates with a critical extension we do not process (name
//!   constraints, policies, ...) are refused rather than half-checked.
//!   The search itself lives in `path`, shared with x509pop node
//!   attestation, which collects every path under Go's rules instead.
//!
//! Not checked: SAN criticality when the subject is empty (an issuer rule),
//! key-usage criticality on CA certificates, and the URI SAN of CA
//! certificates (see [`ca_spiffe_id`]).
//!
//! The roots must be the bundle of the leaf's own trust domain; pooling roots
//! of several trust domains would let one domain's CA vouch for another's IDs
//! (checklist §2 item 22).

use std::fmt;

use x509_parser::oid_registry::{
    OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA, OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::{ASN1Time, FromDer, GeneralName, ParsedExtension, X509Certificate, X509Error};

use self::path::{Link, Mode, Origin};
use super::id::{SpiffeId, SpiffeIdError};

pub(crate) mod path;
pub mod signature;

/// Most certificates a presented chain may hold, leaf included.
///
/// Path building backtracks over the intermediates, so their number must be
/// small; real SPIFFE chains hold the leaf and at most a few intermediates.
pub const MAX_CHAIN_LEN: usize = 8;

/// Where a certificate named in an error sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertPosition {
    /// In the presented chain, 0 being the leaf.
    Chain(usize),
    /// In the trusted roots.
    Root(usize),
}

/// Why an X509-SVID or its chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X509SvidError {
    /// The chain holds no certificate.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// The chain holds more than [`MAX_CHAIN_LEN`] certificates.
    #[error("certificate chain has {len} certificates, more than the limit of {max}")]
    ChainTooLong {
        /// Number of certificates presented.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A certificate does not parse.
    #[error("{position} does not parse: {reason}")]
    Parse {
        /// Which certificate.
        position: CertPosition,
        /// The parser's description.
        reason: String,
    },
    /// An extension is repeated or does not parse.
    #[error("{position} has a malformed extension: {reason}")]
    MalformedExtension {
        /// Which certificate.
        position: CertPosition,
        /// What is wrong.
        reason: String,
    },
    /// The leaf has no URI SAN.
    #[error("certificate contains no URI SAN")]
    NoUriSan,
    /// The certificate has more than one URI SAN.
    #[error("certificate contains {count} URI SANs, expected one")]
    MultipleUriSans {
        /// How many there are.
        count: usize,
    },
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a valid spiffe id")]
    InvalidSpiffeId {
        /// The URI as found.
        uri: String,
        /// Why it was rejected.
        #[source]
        source: SpiffeIdError,
    },
    /// The leaf's ID is a trust domain's own ID (X509-SVID §3.1, §5.2).
    #[error("leaf certificate spiffe id {id} has no path")]
    LeafIdWithoutPath {
        /// The ID found.
        id: SpiffeId,
    },
    /// The leaf has `cA=true`.
    #[error("leaf certificate with CA flag set to true")]
    LeafIsCa,
    /// No key usage extension.
    #[error("{position} has no key usage extension")]
    MissingKeyUsage {
        /// Which certificate.
        position: CertPosition,
    },
    /// The leaf's key usage extension is not critical (X509-SVID §4.3).
    #[error("leaf certificate key usage extension is not critical")]
    KeyUsageNotCritical,
    /// The leaf's key usage lacks `digitalSignature`.
    #[error("leaf certificate must have 'digitalSignature' set as key usage")]
    MissingDigitalSignature,
    /// The leaf's key usage has `keyCertSign`.
    #[error("leaf certificate must not have 'keyCertSign' set as key usage")]
    LeafKeyCertSign,
    /// The leaf's key usage has `cRLSign`.
    #[error("leaf certificate must not have 'cRLSign' set as key usage")]
    LeafCrlSign,
    /// The leaf's EKU lacks `serverAuth` or `clientAuth` (X509-SVID §4.4).
    #[error("leaf certificate extended key usage must include both serverAuth and clientAuth")]
    IncompleteExtendedKeyUsage,
    /// A signing certificate lacks `cA=true`.
    #[error("{position}: signing certificate must have CA flag set to true")]
    NotCa {
        /// Which certificate.
        position: CertPosition,
    },
    /// A signing certificate lacks `keyCertSign`.
    #[error("{position}: signing certificate must have 'keyCertSign' set as key usage")]
    MissingKeyCertSign {
        /// Which certificate.
        position: CertPosition,
    },
    /// A CA certificate's SPIFFE ID has a path (X509-SVID §3.2).
    #[error("signing certificate spiffe id {id} must not have a path")]
    CaIdWithPath {
        /// The ID found.
        id: SpiffeId,
    },
    /// A critical extension we do not process.
    #[error("{position} has unsupported critical extension {oid}")]
    UnsupportedCriticalExtension {
        /// Which certificate.
        position: CertPosition,
        /// The extension's OID, dotted.
        oid: String,
    },
    /// A certificate on the path has expired.
    #[error("{position} has expired")]
    Expired {
        /// Which certificate.
        position: CertPosition,
    },
    /// A certificate on the path is not valid yet.
    #[error("{position} is not valid yet")]
    NotYetValid {
        /// Which certificate.
        position: CertPosition,
    },
    /// An issuer's `pathLenConstraint` is exceeded.
    #[error("{position}: path length constraint exceeded")]
    PathLenExceeded {
        /// The constraining certificate.
        position: CertPosition,
    },
    /// A presented certificate is signed with SHA-1, which no longer
    /// resists collisions; `x509-parser` would still verify it.
    #[error("{position} is signed with sha-1")]
    WeakSignatureAlgorithm {
        /// Which certificate.
        position: CertPosition,
    },
    /// `now` cannot be represented as a certificate time.
    #[error("time {now} is out of range")]
    InvalidTime {
        /// The rejected time.
        now: i64,
    },
    /// No path from the leaf to any of the roots.
    #[error("certificate signed by unknown authority")]
    UnknownAuthority,
}

/// The subject key identifier of certificate `der` as lowercase hex (SPIRE's X.509 authority
/// id), or `None` when it does not parse or has none.
#[must_use]
pub fn subject_key_id_hex(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(lower_hex(k.0)),
        _ => None,
    })
}

/// The authority key identifier of certificate `der` as lowercase hex (the id of the
/// authority that signed it), or `None`.
#[must_use]
pub fn authority_key_id_hex(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(k) => k.key_identifier.as_ref().map(|k| lower_hex(k.0)),
        _ => None,
    })
}

fn lower_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Checks one certificate against all the X509-SVID leaf rules (see the
/// module docs) and returns its SPIFFE ID.
///
/// # Errors
///
/// [`X509SvidError`] naming the first rule broken (see the module docs).
pub fn leaf_spiffe_id(der: &[u8]) -> Result<SpiffeId, X509SvidError> {
    let position = CertPosition::Chain(0);
    let cert = parse(der, position)?;
    check_leaf(&cert, position)
}

/// Checks a presented chain (leaf first) against the X509-SVID rules:
/// leaf rules on the first certificate, CA flag and `keyCertSign` on every
/// later one. Signatures are not checked: see [`verify_chain`].
///
/// # Errors
///
/// [`X509SvidError::EmptyChain`], or the first rule broken.
pub fn validate_x509_svid_chain(chain: &[Vec<u8>]) -> Result<SpiffeId, X509SvidError> {
    let (leaf, signers) = chain.split_first().ok_or(X509SvidError::EmptyChain)?;
    let id = leaf_spiffe_id(leaf)?;
    for (index, der) in signers.iter().enumerate() {
        let position = CertPosition::Chain(index + 1);
        check_ca(&parse(der, position)?, position)?;
    }
    Ok(id)
}

/// Validates the certification path from `chain[0]` (the leaf) through the
/// other certificates of `chain` to one of `roots`, at unix time `now`.
///
/// Checks signatures (SHA-1 ones refused), validity periods of every
/// certificate on the path (roots included), `cA=true` and `keyCertSign` (when key usage is present)
/// on every issuer, `pathLenConstraint`, and refuses unsupported critical
/// extensions. Names are chained by exact DER equality. The intermediates
/// may come in any order; unused ones are ignored. At each step the roots
/// are tried before the intermediates, each intermediate at most once per
/// path, and the first path found wins.
///
/// # Errors
///
/// [`X509SvidError::UnknownAuthority`] when no issuer verifies, or the
/// specific problem (expired, not a CA, ...) of an issuer whose signature
/// did verify; parse errors for any certificate given.
pub fn verify_chain(chain: &[Vec<u8>], roots: &[Vec<u8>], now: i64) -> Result<(), X509SvidError> {
    if chain.is_empty() {
        return Err(X509SvidError::EmptyChain);
    }
    if chain.len() > MAX_CHAIN_LEN {
        return Err(X509SvidError::ChainTooLong { len: chain.len(), max: MAX_CHAIN_LEN });
    }
    let time = ASN1Time::from_timestamp(now).map_err(|_| X509SvidError::InvalidTime { now })?;
    let certs = chain.iter().enumerate().map(|(i, der)| parse(der, CertPosition::Chain(i))).collect::<Result<Vec<_>, _>>()?;
    let roots = roots.iter().enumerate().map(|(i, der)| parse(der, CertPosition::Root(i))).collect::<Result<Vec<_>, _>>()?;
    for (index, cert) in certs.iter().enumerate() {
        let alg = &cert.signature_algorithm.algorithm;
        if *alg == OID_PKCS1_SHA1WITHRSA || *alg == OID_SHA1_WITH_RSA {
            return Err(X509SvidError::WeakSignatureAlgorithm { position: CertPosition::Chain(index) });
        }
    }
    let leaf_position = CertPosition::Chain(0);
    let (leaf, intermediates) = certs.split_first().ok_or(X509SvidError::EmptyChain)?;
    check_validity(leaf, leaf_position, time)?;
    check_critical_extensions(leaf, leaf_position)?;

    path::find_paths(leaf, intermediates, &roots, &mut SvidPathRules { time }, Mode::FirstPath).map(|_| ())
}

/// Runs [`validate_x509_svid_chain`] and then [`verify_chain`]: the full
/// check of a peer's X509-SVID against its trust domain's roots.
///
/// # Errors
///
/// As the two functions.
pub fn verify_x509_svid(chain: &[Vec<u8>], roots: &[Vec<u8>], now: i64) -> Result<SpiffeId, X509SvidError> {
    let id = validate_x509_svid_chain(chain)?;
    verify_chain(chain, roots, now)?;
    Ok(id)
}

/// The SPIFFE ID in a signing certificate's URI SAN, if it has one.
///
/// A signing certificate should carry its trust domain's ID and must not
/// carry a path (X509-SVID §3.2).
///
/// # Errors
///
/// Parse errors, more than one URI SAN, a URI that is not a SPIFFE ID, or
/// [`X509SvidError::CaIdWithPath`].
pub fn ca_spiffe_id(der: &[u8]) -> Result<Option<SpiffeId>, X509SvidError> {
    let position = CertPosition::Chain(0);
    let cert = parse(der, position)?;
    let Some(id) = single_uri_san(&cert, position)? else {
        return Ok(None);
    };
    if !id.is_trust_domain_id() {
        return Err(X509SvidError::CaIdWithPath { id });
    }
    Ok(Some(id))
}

fn parse(der: &[u8], position: CertPosition) -> Result<X509Certificate<'_>, X509SvidError> {
    match X509Certificate::from_der(der) {
        Ok(([], _)) if !outer_der_is_strict(der) => {
            Err(X509SvidError::Parse { position, reason: "certificate is not strict der outside the signed part".to_owned() })
        }
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(X509SvidError::Parse { position, reason: "trailing data after certificate".to_owned() }),
        Err(e) => Err(X509SvidError::Parse { position, reason: e.to_string() }),
    }
}

/// Whether the parts of a certificate outside the signed `tbsCertificate`
/// are in strict DER: `SEQUENCE { tbsCertificate, signatureAlgorithm,
/// BIT STRING }` with nothing after, minimal lengths, no unused bits in the
/// signature, and `signatureAlgorithm` byte-for-byte the `signature` field
/// inside `tbsCertificate` (RFC 5280 §4.1.1.2).
///
/// The signature does not cover these bytes, and `x509-parser` reads them
/// leniently (wrong tags pass), so without this check a mangled copy of a
/// certificate would still verify: two byte strings, one certificate.
fn outer_der_is_strict(der: &[u8]) -> bool {
    let check = || -> Option<bool> {
        let certificate = DerElement::read_tagged(der, SEQUENCE)?;
        let tbs = DerElement::read_tagged(certificate.content, SEQUENCE)?;
        let outer = DerElement::read_tagged(tbs.rest, SEQUENCE)?;
        let signature = DerElement::read_tagged(outer.rest, BIT_STRING)?;
        let strict_shape = certificate.rest.is_empty() && signature.rest.is_empty() && signature.content.first() == Some(&0);
        // tbsCertificate: [0] version (optional), serialNumber, signature.
        let mut field = DerElement::read(tbs.content)?;
        if field.tag == VERSION_TAG {
            field = DerElement::read(field.rest)?;
        }
        if field.tag != INTEGER {
            return None;
        }
        let inner = DerElement::read_tagged(field.rest, SEQUENCE)?;
        Some(strict_shape && inner.whole == outer.whole)
    };
    check().unwrap_or(false)
}

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;
const INTEGER: u8 = 0x02;
const VERSION_TAG: u8 = 0xa0;

/// One DER element split off the front of a byte string.
struct DerElement<'a> {
    tag: u8,
    content: &'a [u8],
    /// Tag, length and content.
    whole: &'a [u8],
    /// What follows the element.
    rest: &'a [u8],
}

impl<'a> DerElement<'a> {
    fn read(input: &'a [u8]) -> Option<Self> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            // Long form; four length bytes are plenty for a certificate. DER
            // wants the shortest form: no leading zero byte, no long form
            // for lengths below 128.
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return None;
            }
            let (len_bytes, rest) = rest.split_at_checked(count)?;
            if len_bytes.first() == Some(&0) {
                return None;
            }
            let len = len_bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            if len < 0x80 {
                return None;
            }
            (len, rest)
        };
        let header_len = input.len() - rest.len();
        let (content, rest) = rest.split_at_checked(len)?;
        let whole = input.get(..header_len + len)?;
        Some(Self { tag, content, whole, rest })
    }

    fn read_tagged(input: &'a [u8], tag: u8) -> Option<Self> {
        Self::read(input).filter(|e| e.tag == tag)
    }
}

fn malformed(position: CertPosition, e: &X509Error) -> X509SvidError {
    X509SvidError::MalformedExtension { position, reason: e.to_string() }
}

/// The one URI SAN parsed as a SPIFFE ID; `None` without URI SANs.
fn single_uri_san(cert: &X509Certificate<'_>, position: CertPosition) -> Result<Option<SpiffeId>, X509SvidError> {
    let san = cert.subject_alternative_name().map_err(|e| malformed(position, &e))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Ok(None),
        [uri] => SpiffeId::new(uri).map(Some).map_err(|source| X509SvidError::InvalidSpiffeId { uri: (*uri).to_owned(), source }),
        more => Err(X509SvidError::MultipleUriSans { count: more.len() }),
    }
}

fn check_leaf(cert: &X509Certificate<'_>, position: CertPosition) -> Result<SpiffeId, X509SvidError> {
    let id = single_uri_san(cert, position)?.ok_or(X509SvidError::NoUriSan)?;
    if id.is_trust_domain_id() {
        return Err(X509SvidError::LeafIdWithoutPath { id });
    }
    let constraints = cert.basic_constraints().map_err(|e| malformed(position, &e))?;
    if constraints.is_some_and(|bc| bc.value.ca) {
        return Err(X509SvidError::LeafIsCa);
    }
    let usage = cert.key_usage().map_err(|e| malformed(position, &e))?.ok_or(X509SvidError::MissingKeyUsage { position })?;
    if !usage.critical {
        return Err(X509SvidError::KeyUsageNotCritical);
    }
    if !usage.value.digital_signature() {
        return Err(X509SvidError::MissingDigitalSignature);
    }
    if usage.value.key_cert_sign() {
        return Err(X509SvidError::LeafKeyCertSign);
    }
    if usage.value.crl_sign() {
        return Err(X509SvidError::LeafCrlSign);
    }
    let extended = cert.extended_key_usage().map_err(|e| malformed(position, &e))?;
    if let Some(eku) = extended
        && !(eku.value.server_auth && eku.value.client_auth)
    {
        return Err(X509SvidError::IncompleteExtendedKeyUsage);
    }
    Ok(id)
}

/// CA flag and `keyCertSign`, as go-spiffe requires of every certificate
/// after the leaf; a missing key usage extension counts as no `keyCertSign`.
fn check_ca(cert: &X509Certificate<'_>, position: CertPosition) -> Result<(), X509SvidError> {
    let constraints = cert.basic_constraints().map_err(|e| malformed(position, &e))?;
    if !constraints.is_some_and(|bc| bc.value.ca) {
        return Err(X509SvidError::NotCa { position });
    }
    let usage = cert.key_usage().map_err(|e| malformed(position, &e))?;
    if !usage.is_some_and(|ku| ku.value.key_cert_sign()) {
        return Err(X509SvidError::MissingKeyCertSign { position });
    }
    Ok(())
}

fn check_validity(cert: &X509Certificate<'_>, position: CertPosition, time: ASN1Time) -> Result<(), X509SvidError> {
    let validity = cert.validity();
    if time < validity.not_before {
        return Err(X509SvidError::NotYetValid { position });
    }
    if time > validity.not_after {
        return Err(X509SvidError::Expired { position });
    }
    Ok(())
}

/// Refuses critical extensions we do not process, and unparsable ones that
/// are critical or that we rely on: ignoring either would accept a
/// certificate under rules weaker than its issuer meant.
fn check_critical_extensions(cert: &X509Certificate<'_>, position: CertPosition) -> Result<(), X509SvidError> {
    let handled = [OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME];
    for ext in cert.extensions() {
        let known = handled.contains(&ext.oid);
        if let ParsedExtension::ParseError { error } = ext.parsed_extension()
            && (known || ext.critical)
        {
            return Err(X509SvidError::MalformedExtension { position, reason: format!("extension {}: {error}", ext.oid) });
        }
        if ext.critical && !known {
            return Err(X509SvidError::UnsupportedCriticalExtension { position, oid: ext.oid.to_id_string() });
        }
    }
    Ok(())
}

/// What [`verify_chain`] asks of each issuer on the path (see its docs),
/// as rules for the shared [`path`] search.
struct SvidPathRules {
    time: ASN1Time,
}

impl path::PathRules<X509Certificate<'_>> for SvidPathRules {
    type Error = X509SvidError;

    /// `Ok(false)` when `issuer` did not sign `child`; `Err` when it did but
    /// may not issue it.
    fn check(
        &self,
        child: &X509Certificate<'_>,
        issuer: Link<'_, X509Certificate<'_>>,
        path: &[Link<'_, X509Certificate<'_>>],
    ) -> Result<bool, X509SvidError> {
        if signature::verify_signed_by(child, issuer.node).is_err() {
            return Ok(false);
        }
        let position = match issuer.origin {
            Origin::Leaf => CertPosition::Chain(0),
            Origin::Intermediate(index) => CertPosition::Chain(index.saturating_add(1)),
            Origin::Root(index) => CertPosition::Root(index),
        };
        let issuer = issuer.node;
        check_validity(issuer, position, self.time)?;
        check_critical_extensions(issuer, position)?;
        let constraints = issuer.basic_constraints().map_err(|e| malformed(position, &e))?;
        let Some(constraints) = constraints.filter(|bc| bc.value.ca) else {
            return Err(X509SvidError::NotCa { position });
        };
        let usage = issuer.key_usage().map_err(|e| malformed(position, &e))?;
        if usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(X509SvidError::MissingKeyCertSign { position });
        }
        // The path holds the leaf and the intermediates between it and `issuer`.
        let intermediates_below = u32::try_from(path.len().saturating_sub(1)).unwrap_or(u32::MAX);
        if let Some(max) = constraints.value.path_len_constraint
            && intermediates_below > max
        {
            return Err(X509SvidError::PathLenExceeded { position });
        }
        Ok(true)
    }

    fn unknown_authority(&self) -> X509SvidError {
        X509SvidError::UnknownAuthority
    }
}

// === impl CertPosition ===

impl fmt::Display for CertPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Chain(0) => f.write_str("leaf certificate"),
            Self::Chain(i) => write!(f, "chain certificate {i}"),
            Self::Root(i) => write!(f, "root certificate {i}"),
        }
    }
}

#[cfg(test)]
mod tests;
