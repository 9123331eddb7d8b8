//! Key custody for the server's CA and JWT signing keys.
//!
//! A [`KeyManager`] generates and finds keys by id (`x509-CA-A`, `JWT-Signer-B`, as SPIRE names
//! them). Keys never leave their manager as bytes: callers get a [`Key`], which signs through
//! rcgen's [`rcgen::SigningKey`] seam, so an HSM-held key (PKCS#11, a later issue) slots in
//! without touching the CA code.

mod disk;
mod local;
mod memory;

use std::fmt;
use std::sync::Arc;

pub use disk::DiskKeyManager;
pub use memory::MemoryKeyManager;

/// The key algorithms cairn generates (SPIRE's `ca_key_type` / `jwt_key_type` spellings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyType {
    /// NIST P-256 with SHA-256 (`ec-p256`, the default).
    EcP256,
    /// NIST P-384 with SHA-384 (`ec-p384`).
    EcP384,
}

/// Errors from a key manager.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyManagerError {
    /// The key type string is not one cairn supports.
    #[error("unsupported key type {0:?} (supported: ec-p256, ec-p384)")]
    UnsupportedKeyType(String),
    /// The crypto backend failed to generate, load or use a key.
    #[error("crypto backend: {0}")]
    Crypto(String),
    /// Reading or writing the key store failed.
    #[error("key store {path}: {reason}")]
    Store {
        /// The file involved.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// A private key held by a key manager. Signs; never exposes its private bytes.
pub trait Key: rcgen::SigningKey + Send + Sync + fmt::Debug {
    /// The id the key was generated under.
    fn id(&self) -> &str;
    /// Its algorithm.
    fn key_type(&self) -> KeyType;
    /// SubjectPublicKeyInfo DER of the public key.
    fn spki_der(&self) -> Vec<u8> {
        self.subject_public_key_info()
    }
    /// Signs `msg` for a JWS: ECDSA as fixed-width `r || s` (RFC 7518 §3.4), not DER.
    ///
    /// # Errors
    /// When the backend cannot sign.
    fn sign_jws(&self, msg: &[u8]) -> Result<Vec<u8>, KeyManagerError>;
}

/// Generates and finds keys by id. Generating under an existing id replaces that key.
pub trait KeyManager: Send + Sync + fmt::Debug {
    /// Generates a fresh key under `id`, replacing any key of that id.
    ///
    /// # Errors
    /// When the backend cannot generate or persist the key.
    fn generate_key(&self, id: &str, key_type: KeyType) -> Result<Arc<dyn Key>, KeyManagerError>;
    /// The key stored under `id`, if any.
    ///
    /// # Errors
    /// When the backend cannot be read.
    fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyManagerError>;
    /// Whether keys survive a restart (decides whether a restarted server can resume its CA).
    fn is_persistent(&self) -> bool;
    /// Where the keys are kept, for messages to the operator (the `disk` keys file).
    fn location(&self) -> Option<String> {
        None
    }
}

// === impl KeyType ===

impl KeyType {
    /// SPIRE's config spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
        }
    }

    /// The JWS `alg` that goes with this key.
    #[must_use]
    pub fn jws_alg(self) -> &'static str {
        match self {
            Self::EcP256 => "ES256",
            Self::EcP384 => "ES384",
        }
    }

    pub(crate) fn rcgen_alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }
}

impl std::str::FromStr for KeyType {
    type Err = KeyManagerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ec-p256" => Ok(Self::EcP256),
            "ec-p384" => Ok(Self::EcP384),
            other => Err(KeyManagerError::UnsupportedKeyType(other.to_owned())),
        }
    }
}

/// A cloneable handle that lets an `Arc<dyn Key>` be handed to rcgen, which wants an owned signer.
#[derive(Debug, Clone)]
pub struct KeyRef(pub Arc<dyn Key>);

impl rcgen::PublicKeyData for KeyRef {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl rcgen::SigningKey for KeyRef {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

#[cfg(test)]
mod tests;
