//! The certificate toolkit shared by every tier's CA and every upstream authority: X.509
//! templates for CAs and SVIDs ([`template`]) and CSR intake ([`csr`]). Pure functions over
//! DER; signing goes through rcgen's `SigningKey`, so any key backend fits.

pub mod csr;
pub mod template;

pub use csr::{Csr, MAX_CSR_BYTES, SUPPORTED_CSR_KEYS, spki_public_key};
pub use template::{CaSubject, MAX_COMMON_NAME_LEN, NOT_BEFORE_CUSHION, num_to_decimal};
pub(crate) use template::{ca_params, key_id, self_signed_ca, svid_params};

/// Errors building or checking certificates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The request cannot be served as asked (bad CSR, bad DNS name ...).
    #[error("{0}")]
    InvalidRequest(String),
    /// A certificate template could not be built.
    #[error("certificate template: {0}")]
    Template(String),
    /// Signing failed in the key's backend.
    #[error("signing: {0}")]
    Signing(String),
    /// An empty CSR.
    #[error("missing CSR")]
    CsrMissing,
    /// A CSR over [`MAX_CSR_BYTES`].
    #[error("CSR is {len} bytes; at most {MAX_CSR_BYTES} are accepted")]
    CsrTooLarge {
        /// Its size.
        len: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::csr::rsa_modulus_bits;
    use super::template::{num_to_decimal, random_serial};

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
