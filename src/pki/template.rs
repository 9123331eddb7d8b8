//! Certificate templates: the X.509 CA and X509-SVID profiles of the SPIFFE checklist, with
//! SPIRE's choices where the spec leaves room (10 s backdating, SHA-1 key ids, subjects).

use super::PkiError;
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

pub(crate) fn ts(unix: i64) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|e| PkiError::Template(format!("time {unix}: {e}")))
}

fn spiffe_uri(id: &str) -> Result<SanType, PkiError> {
    Ok(SanType::URI(id.try_into().map_err(|e: rcgen::Error| PkiError::Template(e.to_string()))?))
}

/// Parameters of a signing (CA) certificate for trust domain `td`.
pub(crate) fn ca_params(
    td: &TrustDomain,
    subject: &CaSubject,
    extra_ou: Option<&str>,
    public_key: &impl PublicKeyData,
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, PkiError> {
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
) -> Result<CertificateParams, PkiError> {
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
            name.as_str().try_into().map_err(|e: rcgen::Error| PkiError::InvalidRequest(format!("dns name {name:?}: {e}")))?,
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
pub(crate) fn self_signed_ca(
    key: &impl SigningKey,
    td: &TrustDomain,
    subject: &CaSubject,
    now: i64,
    ttl: i64,
) -> Result<Vec<u8>, PkiError> {
    let params = ca_params(td, subject, None, key, now - NOT_BEFORE_CUSHION, now + ttl)?;
    Ok(params.self_signed(key).map_err(|e| PkiError::Signing(e.to_string()))?.der().to_vec())
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
