//! Key custody for the server's CA and JWT signing keys.
//!
//! A [`KeyManager`] generates and finds keys by id (`x509-CA-A`, `JWT-Signer-B`, as SPIRE names
//! them). Keys never leave their manager as bytes: callers get a [`Key`], which signs through
//! rcgen's [`rcgen::SigningKey`] seam, so an HSM-held key ([`pkcs11`]) or one in Vault's
//! transit engine ([`vault`]) slots in
//! without touching the CA code.
//!
//! Nothing here stalls the async runtime: the managers are async, key generation runs on
//! tokio's blocking pool (an RSA-4096 key takes seconds), and a key whose backend may block
//! (an HSM round trip) says so with [`Key::may_block`], which makes [`sign_off_runtime`] move
//! its signatures to the blocking pool too. Keys in process memory sign inline, so the minting
//! hot path pays nothing for the seam.

mod disk;
mod local;
mod memory;
pub mod pkcs11;
pub mod vault;

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
    /// RSA 2048-bit, certificates signed with SHA-256 (PKCS#1 v1.5), JWTs as RS256 (`rsa-2048`).
    Rsa2048,
    /// RSA 4096-bit, as `rsa-2048` otherwise (`rsa-4096`).
    Rsa4096,
}

/// Errors from a key manager.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyManagerError {
    /// The key type string is not one cairn supports.
    #[error("unsupported key type {0:?} (supported: ec-p256, ec-p384, rsa-2048, rsa-4096)")]
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
    /// The PKCS#11 token refused or is unusable.
    #[error(transparent)]
    Pkcs11(#[from] pkcs11::Pkcs11Error),
    /// Vault (KeyManager "hashicorp_vault") refused or is unusable.
    #[error("{0}")]
    Vault(String),
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
    /// Whether a signature may wait on I/O (an HSM or a remote service). Such keys are used
    /// from tokio's blocking pool ([`sign_off_runtime`]); keys in memory sign inline.
    fn may_block(&self) -> bool {
        false
    }
}

/// Runs `sign`, a closure that signs with `key`: inline when the key signs in memory, and
/// otherwise so that an HSM round trip never holds up other tasks.
///
/// On a multi-threaded runtime that is `block_in_place`: this thread signs at once while its
/// other tasks move to another worker. Handing the call to the blocking pool instead
/// (`spawn_blocking`) costs two thread wake-ups per signature, which on a small VM took longer
/// than SoftHSM's signature itself (`scripts/bench-hsm.sh`). A current-thread runtime has no
/// worker to hand tasks to, so there the blocking pool signs.
///
/// # Errors
/// When the blocking task cannot run to completion (the runtime is shutting down).
pub async fn sign_off_runtime<T: Send + 'static>(key: &dyn Key, sign: impl FnOnce() -> T + Send + 'static) -> Result<T, KeyManagerError> {
    if !key.may_block() {
        return Ok(sign());
    }
    if tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread) {
        return Ok(tokio::task::block_in_place(sign));
    }
    tokio::task::spawn_blocking(sign).await.map_err(|e| KeyManagerError::Crypto(format!("signing task: {e}")))
}

/// Runs CPU-heavy key work (generation) on the blocking pool.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> Result<T, KeyManagerError> + Send + 'static) -> Result<T, KeyManagerError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| KeyManagerError::Crypto(format!("key task: {e}")))?
}

/// A key loaded from a PEM private key file (PKCS#8, SEC1 or PKCS#1), held in memory: the
/// `disk` upstream authority's CA key goes through the same [`Key`] seam as the server's own
/// keys, so an HSM-held upstream key is one more implementation of [`Key`].
///
/// # Errors
/// The PEM is not a private key of a type cairn signs with (EC P-256/P-384, RSA 2048/4096).
pub fn key_from_pem(id: &str, pem: &str) -> Result<Arc<dyn Key>, KeyManagerError> {
    Ok(Arc::new(local::LocalKey::from_pem(id, pem)?))
}

/// Generates and finds keys by id. Generating under an existing id replaces that key.
#[async_trait::async_trait]
pub trait KeyManager: Send + Sync + fmt::Debug {
    /// Generates a fresh key under `id`, replacing any key of that id.
    ///
    /// # Errors
    /// When the backend cannot generate or persist the key.
    async fn generate_key(&self, id: &str, key_type: KeyType) -> Result<Arc<dyn Key>, KeyManagerError>;
    /// The key stored under `id`, if any.
    ///
    /// # Errors
    /// When the backend cannot be read.
    async fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyManagerError>;
    /// Whether keys survive a restart (decides whether a restarted server can resume its CA).
    fn is_persistent(&self) -> bool;
    /// Where the keys are kept, for messages to the operator (`keys file <path>`, a token).
    fn location(&self) -> Option<String> {
        None
    }
}

/// The key manager plugin (`KeyManager "<name>"` in server.conf), parsed by `config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyManagerConfig {
    /// `KeyManager "memory"`.
    Memory,
    /// `KeyManager "disk" { plugin_data { keys_path } }`.
    Disk {
        /// The key file.
        keys_path: std::path::PathBuf,
    },
    /// `KeyManager "pkcs11" { plugin_data { module_path, token_label, pin | pin_file | pin_env, key_label_prefix } }`.
    Pkcs11(pkcs11::Pkcs11Config),
    /// `KeyManager "hashicorp_vault"`: keys in a Vault/OpenBao transit engine.
    HashicorpVault(vault::VaultKeyManagerConfig),
}

/// The key manager `config` names (`KeyManager "<name>"` in server.conf): the one place a
/// key backend is chosen. A new backend is a new file here and one arm below.
///
/// # Errors
/// The backend cannot open its store.
pub fn build(config: &KeyManagerConfig) -> Result<Arc<dyn KeyManager>, KeyManagerError> {
    Ok(match config {
        KeyManagerConfig::Memory => Arc::new(MemoryKeyManager::new()),
        KeyManagerConfig::Disk { keys_path } => Arc::new(DiskKeyManager::open(keys_path)?),
        KeyManagerConfig::Pkcs11(c) => Arc::new(pkcs11::Pkcs11KeyManager::open(c)?),
        KeyManagerConfig::HashicorpVault(c) => Arc::new(vault::VaultKeyManager::open(c)?),
    })
}

// === impl KeyType ===

impl KeyType {
    /// SPIRE's config spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    /// The JWS `alg` that goes with this key.
    #[must_use]
    pub fn jws_alg(self) -> &'static str {
        match self {
            Self::EcP256 => "ES256",
            Self::EcP384 => "ES384",
            // SPIRE signs JWT-SVIDs with RSA keys as RS256 (PKCS#1 v1.5, SHA-256).
            Self::Rsa2048 | Self::Rsa4096 => "RS256",
        }
    }

    /// The JWS algorithm as cairn's JWT code names it.
    #[must_use]
    pub fn jwt_alg(self) -> crate::spiffe::JwtAlg {
        match self {
            Self::EcP256 => crate::spiffe::JwtAlg::ES256,
            Self::EcP384 => crate::spiffe::JwtAlg::ES384,
            Self::Rsa2048 | Self::Rsa4096 => crate::spiffe::JwtAlg::RS256,
        }
    }

    /// Whether this is an RSA key type.
    #[must_use]
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa4096)
    }

    pub(crate) fn rcgen_alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            // SPIRE (Go's x509) signs with SHA256WithRSA whatever the RSA key size.
            Self::Rsa2048 | Self::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// A fresh key pair of this type, for rcgen. rcgen's `generate_for` makes RSA keys of
    /// 2048 bits only, so the size is passed explicitly for RSA.
    ///
    /// # Errors
    /// When the crypto backend cannot generate the key.
    pub fn generate_key_pair(self) -> Result<rcgen::KeyPair, KeyManagerError> {
        let pair = match self {
            Self::EcP256 | Self::EcP384 => rcgen::KeyPair::generate_for(self.rcgen_alg()),
            Self::Rsa2048 => rcgen::KeyPair::generate_rsa_for(self.rcgen_alg(), rcgen::RsaKeySize::_2048),
            Self::Rsa4096 => rcgen::KeyPair::generate_rsa_for(self.rcgen_alg(), rcgen::RsaKeySize::_4096),
        };
        pair.map_err(|e| KeyManagerError::Crypto(format!("generating a {} key: {e}", self.as_str())))
    }
}

impl std::str::FromStr for KeyType {
    type Err = KeyManagerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ec-p256" => Ok(Self::EcP256),
            "ec-p384" => Ok(Self::EcP384),
            "rsa-2048" => Ok(Self::Rsa2048),
            "rsa-4096" => Ok(Self::Rsa4096),
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
