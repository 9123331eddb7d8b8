//! CSR intake, the one way cairn reads a certificate signing request: size limit, parse,
//! key type, proof of possession, then the SANs and subject a CA needs. Every RPC that takes
//! a CSR (MintX509SVID, BatchNewX509SVID, NewDownstreamX509CA, AttestAgent, RenewAgent) and
//! every upstream authority goes through [`Csr::parse`].

use super::PkiError;
use super::template::CaSubject;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::x509::AttributeTypeAndValue;

/// Largest CSR accepted (a P-384 or RSA-4096 CSR with a few SANs is well under this).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// The size check alone, for RPCs that check the size before other fields (SPIRE's order).
///
/// # Errors
/// [`PkiError::CsrMissing`] or [`PkiError::CsrTooLarge`].
pub fn check_size(der: &[u8]) -> Result<(), PkiError> {
    if der.is_empty() {
        return Err(PkiError::CsrMissing);
    }
    if der.len() > MAX_CSR_BYTES {
        return Err(PkiError::CsrTooLarge { len: der.len() });
    }
    Ok(())
}

/// A CSR whose signature checked out, reduced to what a CA uses.
#[derive(Debug)]
pub struct Csr {
    /// The key to certify.
    pub public_key: rcgen::SubjectPublicKeyInfo,
    /// URI SANs requested, in order.
    pub uris: Vec<String>,
    /// DNS SANs requested, in order.
    pub dns_names: Vec<String>,
    /// The requested subject's C, O and CN (a downstream CA keeps them).
    pub subject: CaSubject,
}

impl Csr {
    /// Checks and reads a DER CSR.
    ///
    /// # Errors
    /// [`PkiError::CsrMissing`], [`PkiError::CsrTooLarge`], or `InvalidRequest` naming what is
    /// wrong with it (syntax, key type, signature).
    pub fn parse(der: &[u8]) -> Result<Self, PkiError> {
        check_size(der)?;
        let (public_key, csr) = csr_public_key(der)?;
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    match n {
                        GeneralName::URI(u) => uris.push((*u).to_owned()),
                        GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                        _ => {}
                    }
                }
            }
        }
        let name = &csr.certification_request_info.subject;
        let strings = |it: &mut dyn Iterator<Item = &AttributeTypeAndValue<'_>>| {
            it.filter_map(|a| a.as_str().ok().map(str::to_owned)).collect::<Vec<_>>()
        };
        let subject = CaSubject {
            country: strings(&mut name.iter_country()),
            organization: strings(&mut name.iter_organization()),
            common_name: strings(&mut name.iter_common_name()).into_iter().next(),
        };
        Ok(Self { public_key, uris, dns_names, subject })
    }
}

/// The SPKI of a CSR after checking its proof of possession, as rcgen public-key data.
///
/// # Errors
/// `InvalidRequest` naming what is wrong with the CSR.
fn csr_public_key(
    csr_der: &[u8],
) -> Result<(rcgen::SubjectPublicKeyInfo, x509_parser::certification_request::X509CertificationRequest<'_>), PkiError> {
    use x509_parser::prelude::FromDer;
    let (rest, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|_| PkiError::InvalidRequest("malformed CSR".into()))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidRequest("malformed CSR: trailing data".into()));
    }
    // The key type is checked first: a key the verifier cannot handle (P-521, RSA-1024) would
    // otherwise be reported as a bad signature, which sends the caller looking in the wrong place.
    check_csr_key(&csr.certification_request_info.subject_pki)?;
    csr.verify_signature().map_err(|_| PkiError::InvalidRequest("invalid CSR signature".into()))?;
    let spki = rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| PkiError::InvalidRequest(format!("CSR public key: {e}")))?;
    Ok((spki, csr))
}

/// The CSR keys cairn verifies and certifies, as said in errors.
pub const SUPPORTED_CSR_KEYS: &str = "EC P-256, EC P-384, RSA 2048-8192 bits, Ed25519";

/// Refuses a CSR key the signature verifier does not handle, naming it and what is supported.
fn check_csr_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), PkiError> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
    };
    let alg = &spki.algorithm.algorithm;
    let unsupported = |what: String| PkiError::InvalidRequest(format!("unsupported CSR key: {what} (supported: {SUPPORTED_CSR_KEYS})"));
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
            _ => return Err(PkiError::InvalidRequest("malformed CSR: RSA public key does not parse".into())),
        };
        return if (2048..=8192).contains(&bits) { Ok(()) } else { Err(unsupported(format!("RSA {bits} bits"))) };
    }
    if *alg == OID_SIG_ED25519 {
        return Ok(());
    }
    Err(unsupported(format!("key algorithm {alg}")))
}

/// Bit length of a big-endian RSA modulus (leading zero bytes and bits do not count).
pub(super) fn rsa_modulus_bits(modulus: &[u8]) -> usize {
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
pub fn spki_public_key(spki_der: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, PkiError> {
    rcgen::SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| PkiError::InvalidRequest(format!("public key: {e}")))
}
