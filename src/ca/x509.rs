//! Certificate templates: the X.509 CA and X509-SVID profiles of the SPIFFE checklist, with
//! SPIRE's choices where the spec leaves room (10 s backdating, SHA-1 key ids, subjects).

use super::CaError;
use crate::spiffe::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber, SigningKey,
};
use sha1::Digest as _;
use time::OffsetDateTime;

/// Every certificate starts this many seconds in the past, to absorb clock skew between tiers.
pub const NOT_BEFORE_CUSHION: i64 = 10;

/// RFC 5280's `ub-common-name`: a CN longer than this is not a valid X.520 name.
pub const MAX_COMMON_NAME_LEN: usize = 64;

/// A subject for CA certificates (`ca_subject` in server.conf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSubject {
    /// `C=` values.
    pub country: Vec<String>,
    /// `O=` values.
    pub organization: Vec<String>,
    /// `CN=`, if any.
    pub common_name: Option<String>,
}

impl Default for CaSubject {
    fn default() -> Self {
        Self { country: vec!["US".into()], organization: vec!["SPIFFE".into()], common_name: None }
    }
}

/// 128 random bits with the top bit clear: positive, and as SPIRE does, never zero.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    loop {
        // aws-lc's system RNG; failing to read randomness is not recoverable.
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            continue;
        }
        if let Some(first) = bytes.first_mut() {
            *first &= 0x7f;
        }
        if bytes.iter().any(|b| *b != 0) {
            return SerialNumber::from_slice(&bytes);
        }
    }
}

/// SHA-1 over the subjectPublicKey bits (RFC 5280 §4.2.1.2 method 1, as SPIRE computes it).
pub(crate) fn key_id(public_key: &impl PublicKeyData) -> Vec<u8> {
    sha1::Sha1::digest(public_key.der_bytes()).to_vec()
}

pub(crate) fn ts(unix: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|e| CaError::Template(format!("time {unix}: {e}")))
}

fn spiffe_uri(id: &str) -> Result<SanType, CaError> {
    Ok(SanType::URI(id.try_into().map_err(|e: rcgen::Error| CaError::Template(e.to_string()))?))
}

/// Parameters of a signing (CA) certificate for trust domain `td`.
pub(crate) fn ca_params(
    td: &TrustDomain,
    subject: &CaSubject,
    extra_ou: Option<&str>,
    public_key: &impl PublicKeyData,
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    let serial = random_serial();
    let mut dn = DistinguishedName::new();
    for c in &subject.country {
        dn.push(DnType::CountryName, c.as_str());
    }
    for o in &subject.organization {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    if let Some(ou) = extra_ou {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    if let Some(cn) = &subject.common_name {
        dn.push(DnType::CommonName, cn.as_str());
    }
    // SPIRE adds the serial as a serialNumber RDN so successive CAs have distinct subjects.
    dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), num_to_decimal(serial.as_ref()));
    p.distinguished_name = dn;
    p.serial_number = Some(serial);
    p.subject_alt_names = vec![spiffe_uri(&td.id_string())?];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_id(public_key));
    p.use_authority_key_identifier_extension = true;
    p.not_before = ts(not_before)?;
    p.not_after = ts(not_after)?;
    Ok(p)
}

/// Parameters of an X509-SVID (leaf) for `id`.
pub(crate) fn svid_params(
    id: &SpiffeId,
    dns_names: &[String],
    public_key: &impl PublicKeyData,
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "SPIRE");
    // As SPIRE, the first DNS name doubles as the CN, but only when it fits RFC 5280's
    // ub-common-name (64): SPIRE copies longer names too and so issues non-conforming
    // subjects. A longer name stays in the SAN, which is what TLS clients match against.
    if let Some(first) = dns_names.first().filter(|d| d.len() <= MAX_COMMON_NAME_LEN) {
        dn.push(DnType::CommonName, first.as_str());
    }
    p.distinguished_name = dn;
    p.serial_number = Some(random_serial());
    let mut sans = vec![spiffe_uri(id.as_str())?];
    for name in dns_names {
        sans.push(SanType::DnsName(
            name.as_str().try_into().map_err(|e: rcgen::Error| CaError::InvalidRequest(format!("dns name {name:?}: {e}")))?,
        ));
    }
    p.subject_alt_names = sans;
    // ExplicitNoCa writes basicConstraints CA:FALSE and the subject key identifier.
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment, KeyUsagePurpose::KeyAgreement];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_id(public_key));
    p.use_authority_key_identifier_extension = true;
    p.not_before = ts(not_before)?;
    p.not_after = ts(not_after)?;
    Ok(p)
}

/// Self-signs a root CA certificate with `key`.
pub(crate) fn self_signed_ca(key: &impl SigningKey, td: &TrustDomain, subject: &CaSubject, now: i64, ttl: i64) -> Result<Vec<u8>, CaError> {
    let params = ca_params(td, subject, None, key, now - NOT_BEFORE_CUSHION, now + ttl)?;
    Ok(params.self_signed(key).map_err(|e| CaError::Signing(e.to_string()))?.der().to_vec())
}

/// Big-endian unsigned bytes to a decimal string (SPIRE records serials in decimal).
#[must_use]
pub fn num_to_decimal(be: &[u8]) -> String {
    let mut digits: Vec<u8> = vec![0];
    for byte in be {
        let mut carry = u32::from(*byte);
        for d in &mut digits {
            let v = u32::from(*d) * 256 + carry;
            *d = u8::try_from(v % 10).unwrap_or(0);
            carry = v / 10;
        }
        while carry > 0 {
            digits.push(u8::try_from(carry % 10).unwrap_or(0));
            carry /= 10;
        }
    }
    while digits.len() > 1 && digits.last() == Some(&0) {
        digits.pop();
    }
    digits.iter().rev().map(|d| char::from(b'0' + d)).collect()
}

/// The SPKI of a CSR after checking its proof of possession, as rcgen public-key data.
///
/// # Errors
/// `InvalidRequest` naming what is wrong with the CSR.
pub fn csr_public_key(
    csr_der: &[u8],
) -> Result<(rcgen::SubjectPublicKeyInfo, x509_parser::certification_request::X509CertificationRequest<'_>), CaError> {
    use x509_parser::prelude::FromDer;
    let (rest, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|_| CaError::InvalidRequest("malformed CSR".into()))?;
    if !rest.is_empty() {
        return Err(CaError::InvalidRequest("malformed CSR: trailing data".into()));
    }
    // The key type is checked first: a key the verifier cannot handle (P-521, RSA-1024) would
    // otherwise be reported as a bad signature, which sends the caller looking in the wrong place.
    check_csr_key(&csr.certification_request_info.subject_pki)?;
    csr.verify_signature().map_err(|_| CaError::InvalidRequest("invalid CSR signature".into()))?;
    let spki = rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| CaError::InvalidRequest(format!("CSR public key: {e}")))?;
    Ok((spki, csr))
}

/// The CSR keys cairn verifies and certifies, as said in errors.
pub const SUPPORTED_CSR_KEYS: &str = "EC P-256, EC P-384, RSA 2048-8192 bits, Ed25519";

/// Refuses a CSR key the signature verifier does not handle, naming it and what is supported.
fn check_csr_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), CaError> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
    };
    let alg = &spki.algorithm.algorithm;
    let unsupported = |what: String| CaError::InvalidRequest(format!("unsupported CSR key: {what} (supported: {SUPPORTED_CSR_KEYS})"));
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
            Some(c) if c == OID_NIST_EC_P521 => Err(unsupported("EC P-521".into())),
            Some(c) => Err(unsupported(format!("EC curve {c}"))),
            None => Err(unsupported("EC key without a named curve".into())),
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa_modulus_bits(rsa.modulus),
            _ => return Err(CaError::InvalidRequest("malformed CSR: RSA public key does not parse".into())),
        };
        return if (2048..=8192).contains(&bits) { Ok(()) } else { Err(unsupported(format!("RSA {bits} bits"))) };
    }
    if *alg == OID_SIG_ED25519 {
        return Ok(());
    }
    Err(unsupported(format!("key algorithm {alg}")))
}

/// Bit length of a big-endian RSA modulus (leading zero bytes and bits do not count).
fn rsa_modulus_bits(modulus: &[u8]) -> usize {
    let trimmed: &[u8] = match modulus.iter().position(|b| *b != 0) {
        Some(i) => modulus.get(i..).unwrap_or_default(),
        None => &[],
    };
    trimmed.first().map_or(0, |first| trimmed.len() * 8 - first.leading_zeros() as usize)
}

/// Parses a SubjectPublicKeyInfo (for the CSR-less path).
///
/// # Errors
/// `InvalidRequest` when it does not parse.
pub fn spki_public_key(spki_der: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, CaError> {
    rcgen::SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| CaError::InvalidRequest(format!("public key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_serials() {
        assert_eq!(num_to_decimal(&[0]), "0");
        assert_eq!(num_to_decimal(&[1, 0]), "256");
        assert_eq!(num_to_decimal(&[0xff, 0xff, 0xff, 0xff]), "4294967295");
        assert_eq!(num_to_decimal(&[0x7f; 16]), "169473963133173273960190490760135540607");
    }

    #[test]
    fn rsa_modulus_bits_ignore_leading_zeros() {
        assert_eq!(rsa_modulus_bits(&[]), 0);
        assert_eq!(rsa_modulus_bits(&[0, 0x80, 0]), 16);
        assert_eq!(rsa_modulus_bits(&[0x01, 0]), 9);
        let mut m = vec![0u8; 257];
        m[1] = 0xc1;
        assert_eq!(rsa_modulus_bits(&m), 2048);
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial();
        let b = random_serial();
        assert_ne!(a.as_ref(), b.as_ref());
        assert!(a.as_ref().first().is_some_and(|f| *f < 0x80));
    }
}
