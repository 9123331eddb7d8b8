//! CSR intake: parse, check the key type, verify the proof of possession.

use super::PkiError;

/// The SPKI of a CSR after checking its proof of possession, as rcgen public-key data.
///
/// # Errors
/// `InvalidRequest` naming what is wrong with the CSR.
pub fn csr_public_key(
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

