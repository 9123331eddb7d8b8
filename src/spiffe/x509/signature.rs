//! Certificate signatures: the one place cairn checks that a certificate was signed by an
//! issuer's key, for every chain it verifies (SVID chains and bundles, the disk upstream's CA
//! files, x509pop node certificates).
//!
//! The accepted algorithms are Go's (`crypto/x509`, which SPIRE uses): ECDSA with SHA-256, SHA-384
//! or SHA-512 on P-256, P-384 or P-521; RSA PKCS#1 v1.5 with SHA-256/384/512; RSASSA-PSS with
//! SHA-256/384/512; Ed25519. SHA-1 and MD5 are refused. x509-parser's own `verify_signature` has
//! no ECDSA-with-SHA-512 (SPIRE's `conf/server/dummy_upstream_ca.crt` is signed that way), which
//! is why cairn does not use it.

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};
use x509_parser::certificate::X509Certificate;
use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Why a certificate signature was not accepted; the texts are Go's, as x509pop reports them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The issuer's public key is malformed or of an unsupported type.
    #[error("{0}")]
    Key(String),
    /// SHA-1, MD5 or DSA, which Go refuses for certificate signatures.
    #[error("insecure signature algorithm {0}")]
    InsecureAlgorithm(String),
    /// An algorithm that does not go with the issuer's key type.
    #[error("unsupported signature algorithm {0} for the parent's key type")]
    UnsupportedAlgorithm(String),
    /// RSASSA-PSS with parameters Go does not accept.
    #[error("unsupported rsassa-pss parameters")]
    PssParameters,
    /// The signature is wrong.
    #[error("signature does not verify with the parent's key")]
    Mismatch,
}

/// A NIST curve Go accepts in certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// Byte length of a field element (and of the group order).
    pub(crate) fn scalar_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }

    pub(crate) fn from_oid(oid: &str) -> Option<Self> {
        match oid {
            "1.2.840.10045.3.1.7" => Some(Self::P256),
            "1.3.132.0.34" => Some(Self::P384),
            "1.3.132.0.35" => Some(Self::P521),
            _ => None,
        }
    }
}

/// A public key as found in a SubjectPublicKeyInfo, classified for signature verification.
pub(crate) enum SpkiKey<'a> {
    /// `pkcs1` is the RSAPublicKey DER aws-lc-rs verifies with.
    Rsa {
        pkcs1: &'a [u8],
        n: Vec<u8>,
        e: Vec<u8>,
        bits: u64,
    },
    Ec {
        curve: Curve,
        point: &'a [u8],
    },
    Ed25519(&'a [u8]),
}

pub(crate) fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or_default()
}

/// Classifies a SubjectPublicKeyInfo, applying the checks Go's `x509.ParseCertificate` makes
/// (positive RSA modulus and exponent, uncompressed EC points).
pub(crate) fn classify_spki<'a>(spki: &'a SubjectPublicKeyInfo<'_>) -> Result<SpkiKey<'a>, SignatureError> {
    let alg = spki.algorithm.algorithm.to_id_string();
    let bits: &'a [u8] = &spki.subject_public_key.data;
    match alg.as_str() {
        "1.2.840.113549.1.1.1" => {
            let (rest, key) = x509_parser::public_key::RSAPublicKey::from_der(bits)
                .map_err(|e| SignatureError::Key(format!("invalid rsa public key: {e}")))?;
            if !rest.is_empty() {
                return Err(SignatureError::Key("trailing data after rsa public key".into()));
            }
            // DER INTEGERs are two's complement: a set top bit on the first byte is negative.
            let negative = |v: &[u8]| v.first().is_some_and(|b| b & 0x80 != 0);
            if negative(key.modulus) || strip_leading_zeros(key.modulus).is_empty() {
                return Err(SignatureError::Key("rsa modulus is not a positive number".into()));
            }
            if negative(key.exponent) || strip_leading_zeros(key.exponent).is_empty() {
                return Err(SignatureError::Key("rsa public exponent is not a positive number".into()));
            }
            let n = strip_leading_zeros(key.modulus).to_vec();
            let mod_bits = BigUint::from_bytes_be(&n).bits();
            Ok(SpkiKey::Rsa { pkcs1: bits, n, e: strip_leading_zeros(key.exponent).to_vec(), bits: mod_bits })
        }
        "1.2.840.10045.2.1" => {
            let curve_oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .ok_or_else(|| SignatureError::Key("ec public key without a named curve".into()))?;
            let curve =
                Curve::from_oid(&curve_oid).ok_or_else(|| SignatureError::Key(format!("unsupported elliptic curve {curve_oid}")))?;
            // Go only accepts the uncompressed form (0x04 || X || Y).
            if bits.len() != 1 + 2 * curve.scalar_len() || bits.first() != Some(&0x04) {
                return Err(SignatureError::Key("ec public key is not an uncompressed point".into()));
            }
            Ok(SpkiKey::Ec { curve, point: bits })
        }
        "1.3.101.112" => Ok(SpkiKey::Ed25519(bits)),
        other => Err(SignatureError::Key(format!("unsupported public key algorithm {other}"))),
    }
}

/// Verifies `child`'s signature with `issuer`'s public key. Only the signature: whether the
/// issuer may issue (CA flag, key usage, validity) is the caller's path-validation business.
///
/// # Errors
/// The issuer's key is unusable, the algorithm is not one Go accepts, or the signature is wrong.
pub(crate) fn verify_signed_by(child: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Result<(), SignatureError> {
    let key = classify_spki(issuer.public_key())?;
    check_signature(child, &key)
}

/// [`verify_signed_by`] with the issuer's key already classified.
pub(crate) fn check_signature(child: &X509Certificate<'_>, key: &SpkiKey<'_>) -> Result<(), SignatureError> {
    let alg = child.signature_algorithm.algorithm.to_id_string();
    let verifier: &'static dyn sig::VerificationAlgorithm = match (alg.as_str(), key) {
        ("1.2.840.113549.1.1.11", SpkiKey::Rsa { .. }) => &sig::RSA_PKCS1_2048_8192_SHA256,
        ("1.2.840.113549.1.1.12", SpkiKey::Rsa { .. }) => &sig::RSA_PKCS1_2048_8192_SHA384,
        ("1.2.840.113549.1.1.13", SpkiKey::Rsa { .. }) => &sig::RSA_PKCS1_2048_8192_SHA512,
        ("1.2.840.113549.1.1.10", SpkiKey::Rsa { .. }) => pss_verifier(child)?,
        ("1.2.840.10045.4.3.2", SpkiKey::Ec { curve, .. }) => match curve {
            Curve::P256 => &sig::ECDSA_P256_SHA256_ASN1,
            Curve::P384 => &sig::ECDSA_P384_SHA256_ASN1,
            Curve::P521 => &sig::ECDSA_P521_SHA256_ASN1,
        },
        ("1.2.840.10045.4.3.3", SpkiKey::Ec { curve, .. }) => match curve {
            Curve::P256 => &sig::ECDSA_P256_SHA384_ASN1,
            Curve::P384 => &sig::ECDSA_P384_SHA384_ASN1,
            Curve::P521 => &sig::ECDSA_P521_SHA384_ASN1,
        },
        ("1.2.840.10045.4.3.4", SpkiKey::Ec { curve, .. }) => match curve {
            Curve::P256 => &sig::ECDSA_P256_SHA512_ASN1,
            Curve::P384 => &sig::ECDSA_P384_SHA512_ASN1,
            Curve::P521 => &sig::ECDSA_P521_SHA512_ASN1,
        },
        ("1.3.101.112", SpkiKey::Ed25519(_)) => &sig::ED25519,
        // Go refuses these for certificate signatures (InsecureAlgorithmError).
        ("1.2.840.113549.1.1.5" | "1.3.14.3.2.29" | "1.2.840.10045.4.1" | "1.2.840.113549.1.1.4" | "1.2.840.10040.4.3", _) => {
            return Err(SignatureError::InsecureAlgorithm(alg));
        }
        _ => return Err(SignatureError::UnsupportedAlgorithm(alg)),
    };
    let key_bytes: &[u8] = match key {
        SpkiKey::Rsa { pkcs1, .. } => pkcs1,
        SpkiKey::Ec { point, .. } => point,
        SpkiKey::Ed25519(raw) => raw,
    };
    UnparsedPublicKey::new(verifier, key_bytes)
        .verify(child.tbs_certificate.as_ref(), &child.signature_value.data)
        .map_err(|_| SignatureError::Mismatch)
}

/// RSASSA-PSS certificate signatures: Go only accepts SHA-256/384/512 with MGF1 of the same hash,
/// salt length equal to the hash length and trailer field 1, which is exactly aws-lc-rs's form.
fn pss_verifier(cert: &X509Certificate<'_>) -> Result<&'static dyn sig::VerificationAlgorithm, SignatureError> {
    let bad = || SignatureError::PssParameters;
    let Some(x509_parser::signature_algorithm::SignatureAlgorithm::RSASSA_PSS(params)) =
        x509_parser::signature_algorithm::SignatureAlgorithm::try_from(&cert.signature_algorithm).ok()
    else {
        return Err(bad());
    };
    let hash = params.hash_algorithm_oid().to_id_string();
    let mgf = params.mask_gen_algorithm().map_err(|_| bad())?;
    if mgf.mgf.to_id_string() != "1.2.840.113549.1.1.8" || mgf.hash.to_id_string() != hash || params.trailer_field() != 1 {
        return Err(bad());
    }
    match (hash.as_str(), params.salt_length()) {
        ("2.16.840.1.101.3.4.2.1", 32) => Ok(&sig::RSA_PSS_2048_8192_SHA256),
        ("2.16.840.1.101.3.4.2.2", 48) => Ok(&sig::RSA_PSS_2048_8192_SHA384),
        ("2.16.840.1.101.3.4.2.3", 64) => Ok(&sig::RSA_PSS_2048_8192_SHA512),
        _ => Err(bad()),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::parse_x509_certificate;

    /// SPIRE's own `conf/server/dummy_upstream_ca.crt`: P-384, self-signed with ecdsa-with-SHA512.
    const SPIRE_DUMMY_CA: &str = include_str!("../../../tests/fixtures/spire-1.15/dummy_upstream_ca.crt");

    fn der(pem_text: &str) -> Vec<u8> {
        ::pem::parse(pem_text).unwrap().into_contents()
    }

    #[test]
    fn spire_dummy_ca_signed_with_ecdsa_sha512_verifies() {
        let der = der(SPIRE_DUMMY_CA);
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        assert_eq!(cert.signature_algorithm.algorithm.to_id_string(), "1.2.840.10045.4.3.4", "fixture is ecdsa-with-SHA512");
        assert_eq!(verify_signed_by(&cert, &cert), Ok(()));
        // The SVID path validator uses the same check: the CA is its own trust anchor.
        let now = 1_750_000_000; // 2025-06, inside the fixture's validity (2023-05 .. 2028-05)
        assert_eq!(crate::spiffe::verify_chain(std::slice::from_ref(&der), std::slice::from_ref(&der), now), Ok(()));
    }

    #[test]
    fn a_tampered_signature_is_refused() {
        let mut der = der(SPIRE_DUMMY_CA);
        // The signature BIT STRING is at the end; flip a bit in it.
        let last = der.len() - 2;
        der[last] ^= 0x01;
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        assert!(verify_signed_by(&cert, &cert).is_err());
    }
}
