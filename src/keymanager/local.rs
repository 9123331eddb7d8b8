//! A key held in process memory (used by the `memory` and `disk` managers).

use super::{Key, KeyManagerError, KeyType};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use zeroize::Zeroizing;

/// An in-memory private key. Two parsed forms of the same PKCS#8 are kept: rcgen's (DER ECDSA
/// signatures, for certificates) and aws-lc's fixed-signature pair (for JWS), so neither path
/// converts signatures on the hot path.
pub(crate) struct LocalKey {
    id: String,
    key_type: KeyType,
    cert_signer: rcgen::KeyPair,
    jws_signer: EcdsaKeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for LocalKey {
    // Never print key material: only what identifies the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKey").field("id", &self.id).field("key_type", &self.key_type).finish_non_exhaustive()
    }
}

impl LocalKey {
    pub(crate) fn generate(id: &str, key_type: KeyType) -> Result<Self, KeyManagerError> {
        let pair = rcgen::KeyPair::generate_for(key_type.rcgen_alg()).map_err(|e| KeyManagerError::Crypto(e.to_string()))?;
        let pkcs8 = Zeroizing::new(pair.serialize_der());
        Self::from_pkcs8(id, key_type, &pkcs8)
    }

    pub(crate) fn from_pkcs8(id: &str, key_type: KeyType, pkcs8: &[u8]) -> Result<Self, KeyManagerError> {
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.to_vec());
        let cert_signer = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, key_type.rcgen_alg())
            .map_err(|e| KeyManagerError::Crypto(format!("key {id}: {e}")))?;
        let alg = match key_type {
            KeyType::EcP256 => &ECDSA_P256_SHA256_FIXED_SIGNING,
            KeyType::EcP384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
        };
        let jws_signer = EcdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|e| KeyManagerError::Crypto(format!("key {id}: {e}")))?;
        Ok(Self { id: id.to_owned(), key_type, cert_signer, jws_signer, pkcs8: Zeroizing::new(pkcs8.to_vec()) })
    }

    pub(crate) fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }
}

impl rcgen::PublicKeyData for LocalKey {
    fn der_bytes(&self) -> &[u8] {
        self.cert_signer.der_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.cert_signer.algorithm()
    }
}

impl rcgen::SigningKey for LocalKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.cert_signer.sign(msg)
    }
}

impl Key for LocalKey {
    fn id(&self) -> &str {
        &self.id
    }
    fn key_type(&self) -> KeyType {
        self.key_type
    }
    fn sign_jws(&self, msg: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        let sig = self.jws_signer.sign(&SystemRandom::new(), msg).map_err(|e| KeyManagerError::Crypto(e.to_string()))?;
        Ok(sig.as_ref().to_vec())
    }
}
