//! `KeyManager "pkcs11"`: CA and JWT signing keys generated and kept on a PKCS#11 token (an
//! HSM, or SoftHSM2 for tests), so private keys never exist outside it.
//!
//! Keys are EC P-256 or P-384 pairs created on the token as private, sensitive,
//! non-extractable token objects, labelled `<key_label_prefix><id>` (`cairn:x509-CA-A`) so a
//! restarted server finds them again and resumes its CA. Signing uses CKM_ECDSA over a digest
//! cairn computes (many tokens, SoftHSM among them, lack CKM_ECDSA_SHA256); the token's raw
//! `r || s` is DER-encoded for certificates and used as is for JWS. Every signature is a
//! round trip to the token, so these keys say [`Key::may_block`] and sign on tokio's blocking
//! pool. The cryptoki calls themselves are all in [`ffi`].

pub mod ffi;

use super::{Key, KeyManager, KeyManagerError, KeyType};
use cryptoki::object::ObjectHandle;
use cryptoki::types::AuthPin;
use std::path::PathBuf;
use std::sync::Arc;
use zeroize::Zeroizing;

pub use ffi::Token;

/// The default label prefix of cairn's keys on a token.
pub const DEFAULT_KEY_LABEL_PREFIX: &str = "cairn:";

/// Errors from the PKCS#11 backend; each names the module, token or key involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs11Error {
    /// `module_path` does not name a file.
    #[error("PKCS#11 module {path} not found (install the HSM's PKCS#11 library; SoftHSM2's is /usr/lib/softhsm/libsofthsm2.so)")]
    ModuleNotFound {
        /// The configured module path.
        path: PathBuf,
    },
    /// The module would not load or initialise.
    #[error("PKCS#11 module {path}: {reason}")]
    ModuleLoad {
        /// The configured module path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// No token carries the configured label.
    #[error("no PKCS#11 token labelled {label:?} (tokens present: {})", if present.is_empty() { "none".to_owned() } else { format!("{present:?}") })]
    TokenNotFound {
        /// The configured label.
        label: String,
        /// Labels of the tokens the module offers.
        present: Vec<String>,
    },
    /// Two tokens carry the label.
    #[error("more than one PKCS#11 token is labelled {label:?}; labels must be unique")]
    TokenAmbiguous {
        /// The configured label.
        label: String,
    },
    /// C_Login said the PIN is wrong.
    #[error("PKCS#11 token {token:?}: the user PIN is incorrect")]
    PinIncorrect {
        /// The token label.
        token: String,
    },
    /// The token locked its user PIN.
    #[error("PKCS#11 token {token:?}: the user PIN is locked (too many wrong PINs); the security officer must unlock it")]
    PinLocked {
        /// The token label.
        token: String,
    },
    /// The PIN could not be read from where the config says.
    #[error("PKCS#11 PIN: {0}")]
    PinSource(String),
    /// The token lacks a mechanism cairn needs.
    #[error("PKCS#11 token {token:?} does not support {mechanism}, which cairn needs for EC keys")]
    MechanismUnsupported {
        /// The token label.
        token: String,
        /// The mechanism.
        mechanism: &'static str,
    },
    /// A key object exists but cannot be used.
    #[error("PKCS#11 key {label:?}: {reason}")]
    KeyUnusable {
        /// The key's label.
        label: String,
        /// Why.
        reason: String,
    },
    /// A key cairn needs is not on the token.
    #[error("PKCS#11 token {token:?} holds no key labelled {label:?}")]
    KeyMissing {
        /// The token label.
        token: String,
        /// The key label.
        label: String,
    },
    /// Any other failed call.
    #[error("PKCS#11 token {token:?}: {op}: {reason}")]
    Call {
        /// The PKCS#11 function.
        op: &'static str,
        /// The token label (or module path before a token is chosen).
        token: String,
        /// The return value.
        reason: String,
    },
}

/// Where the user PIN comes from. Exactly one is configured; the value is never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum PinSource {
    /// `pin = "..."` in the config.
    Value(Zeroizing<String>),
    /// `pin_file`: a file holding the PIN (a trailing newline is ignored); it must not be
    /// readable by group or others.
    File(PathBuf),
    /// `pin_env`: the name of an environment variable holding the PIN.
    Env(String),
}

impl std::fmt::Debug for PinSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(_) => f.write_str("Value(<redacted>)"),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Env(v) => f.debug_tuple("Env").field(v).finish(),
        }
    }
}

impl PinSource {
    /// Reads the PIN.
    ///
    /// # Errors
    /// The file is missing, unreadable, empty or too open; the variable is unset or empty.
    pub fn resolve(&self) -> Result<AuthPin, Pkcs11Error> {
        let pin: Zeroizing<String> = match self {
            Self::Value(v) => v.clone(),
            Self::File(path) => {
                use std::os::unix::fs::PermissionsExt as _;
                let bad = |what: String| Pkcs11Error::PinSource(format!("pin_file {}: {what}", path.display()));
                let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(bad(format!("is readable by group or others (mode {mode:o}); chmod 600 it")));
                }
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?);
                Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned())
            }
            Self::Env(var) => Zeroizing::new(
                std::env::var(var).map_err(|_| Pkcs11Error::PinSource(format!("pin_env: environment variable {var} is not set")))?,
            ),
        };
        if pin.is_empty() {
            return Err(Pkcs11Error::PinSource("the PIN is empty".into()));
        }
        Ok(AuthPin::from(pin.as_str()))
    }
}

/// Which token, and how to log in: shared by the key manager and the `pkcs11` upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// `module_path`: the PKCS#11 library.
    pub module_path: PathBuf,
    /// `token_label`: the token, by label (slot numbers change).
    pub token_label: String,
    /// `pin`, `pin_file` or `pin_env`.
    pub pin: PinSource,
    /// `max_sessions`: at most this many sessions in use at once (signing, generating,
    /// finding); callers beyond it wait for one to come back. Tokens limit sessions per
    /// application, and a burst of concurrent mints would otherwise open one each.
    pub max_sessions: usize,
}

/// `max_sessions` when the config does not say.
pub const DEFAULT_MAX_SESSIONS: usize = 32;

impl TokenConfig {
    /// Opens the token and logs in.
    ///
    /// # Errors
    /// See [`Pkcs11Error`].
    pub fn open(&self) -> Result<Token, Pkcs11Error> {
        Token::open(&self.module_path, &self.token_label, self.pin.resolve()?, self.max_sessions)
    }
}

/// `plugin_data` of `KeyManager "pkcs11"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// The token.
    pub token: TokenConfig,
    /// `key_label_prefix`: prepended to the key ids to form CKA_LABEL (default `cairn:`).
    /// Servers that share a token need different prefixes.
    pub key_label_prefix: String,
}

/// The curves cairn uses on a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
}

/// DER of the namedCurve OIDs, as CKA_EC_PARAMS holds them.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

impl Curve {
    /// The curve for a key type; RSA is not offered on tokens.
    ///
    /// # Errors
    /// An RSA key type.
    pub fn for_key_type(kt: KeyType) -> Result<Self, KeyManagerError> {
        match kt {
            KeyType::EcP256 => Ok(Self::P256),
            KeyType::EcP384 => Ok(Self::P384),
            other => Err(KeyManagerError::UnsupportedKeyType(format!(
                "{} (the pkcs11 key manager keeps ec-p256 and ec-p384 keys)",
                other.as_str()
            ))),
        }
    }

    /// The key type.
    #[must_use]
    pub fn key_type(self) -> KeyType {
        match self {
            Self::P256 => KeyType::EcP256,
            Self::P384 => KeyType::EcP384,
        }
    }

    fn params_der(self) -> &'static [u8] {
        match self {
            Self::P256 => P256_PARAMS,
            Self::P384 => P384_PARAMS,
        }
    }

    fn from_params_der(der: &[u8]) -> Option<Self> {
        match der {
            P256_PARAMS => Some(Self::P256),
            P384_PARAMS => Some(Self::P384),
            _ => None,
        }
    }

    /// Field size in bytes.
    fn size(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }

    /// The uncompressed point from CKA_EC_POINT, which PKCS#11 defines as a DER OCTET STRING
    /// (some tokens return the bare point): checked to be a point on the curve.
    fn point_from_ec_point(self, raw: &[u8]) -> Option<Vec<u8>> {
        let len = 1 + 2 * self.size();
        let point = if raw.len() == len {
            raw
        } else if raw.len() == len + 2 && raw.first() == Some(&0x04) && usize::from(raw[1]) == len {
            &raw[2..]
        } else {
            return None;
        };
        let ok = match self {
            Self::P256 => p256::PublicKey::from_sec1_bytes(point).is_ok(),
            Self::P384 => p384::PublicKey::from_sec1_bytes(point).is_ok(),
        };
        ok.then(|| point.to_vec())
    }

    /// The digest CKM_ECDSA signs: SHA-256 for P-256, SHA-384 for P-384 (as ES256/ES384 and
    /// Go's x509 pair them).
    fn digest(self, msg: &[u8]) -> Vec<u8> {
        use sha2::Digest as _;
        match self {
            Self::P256 => sha2::Sha256::digest(msg).to_vec(),
            Self::P384 => sha2::Sha384::digest(msg).to_vec(),
        }
    }

    /// A raw `r || s` from the token as the DER `ECDSA-Sig-Value` certificates carry.
    fn raw_to_der(self, raw: &[u8]) -> Option<Vec<u8>> {
        match self {
            Self::P256 => p256::ecdsa::Signature::from_slice(raw).ok().map(|s| s.to_der().as_bytes().to_vec()),
            Self::P384 => p384::ecdsa::Signature::from_slice(raw).ok().map(|s| s.to_der().as_bytes().to_vec()),
        }
    }
}

/// A key on the token. Holds the handle and the public point; the private value stays there.
pub struct Pkcs11Key {
    id: String,
    label: String,
    token: Arc<Token>,
    object: ffi::KeyObject,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key").field("id", &self.id).field("label", &self.label).field("token", &self.token.label()).finish()
    }
}

impl Pkcs11Key {
    /// The key labelled `label` on `token` (an upstream root key, named by its full label).
    ///
    /// # Errors
    /// No such key, or it is unusable.
    pub fn find(token: Arc<Token>, label: &str) -> Result<Self, Pkcs11Error> {
        match token.find_key(label)? {
            Some(object) => Ok(Self { id: label.to_owned(), label: label.to_owned(), token, object }),
            None => Err(Pkcs11Error::KeyMissing { token: token.label().to_owned(), label: label.to_owned() }),
        }
    }

    /// Generates a key pair labelled `label` on `token`, replacing any key of that label only
    /// once the new one exists (see [`replace_key`]).
    ///
    /// # Errors
    /// The token refuses.
    pub fn generate(token: Arc<Token>, label: &str, curve: Curve) -> Result<Self, Pkcs11Error> {
        let object = replace_key(&token, label, curve)?;
        Ok(Self { id: label.to_owned(), label: label.to_owned(), token, object })
    }

    fn raw_signature(&self, msg: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let raw = self.token.sign_ecdsa(self.object.private, &self.object.curve.digest(msg))?;
        if raw.len() != 2 * self.object.curve.size() {
            return Err(Pkcs11Error::KeyUnusable {
                label: self.label.clone(),
                reason: format!("the token returned a {}-byte ECDSA signature", raw.len()),
            });
        }
        Ok(raw)
    }

    /// The private key's handle (for tests that inspect the object with other tools).
    #[must_use]
    pub fn handle(&self) -> ObjectHandle {
        self.object.private
    }
}

/// Makes `label` name a fresh key pair with as little exposure to a crash as PKCS#11 allows:
/// the pair is generated under `<label>.pending`, then the old pair is destroyed, then the new
/// one renamed. A crash before the rename leaves the old key (generation did not finish) or,
/// after the destroy, only the pending pair, which [`find_or_promote`] adopts.
fn replace_key(token: &Token, label: &str, curve: Curve) -> Result<ffi::KeyObject, Pkcs11Error> {
    let pending = format!("{label}.pending");
    token.destroy_labelled(&pending)?;
    let id = uuid::Uuid::new_v4().as_bytes().to_vec();
    let object = token.generate_ec(curve, &pending, &id)?;
    token.destroy_labelled(label)?;
    token.relabel(&pending, label)?;
    Ok(object)
}

/// The key labelled `label`, or a pending one left by a crash between destroying the old pair
/// and renaming the new one.
fn find_or_promote(token: &Token, label: &str) -> Result<Option<ffi::KeyObject>, Pkcs11Error> {
    if let Some(k) = token.find_key(label)? {
        return Ok(Some(k));
    }
    let pending = format!("{label}.pending");
    if token.find_key(&pending)?.is_none() {
        return Ok(None);
    }
    tracing::warn!(label, "adopting a key pair whose generation was interrupted after the old pair was destroyed");
    token.relabel(&pending, label)?;
    token.find_key(label)
}

impl rcgen::PublicKeyData for Pkcs11Key {
    fn der_bytes(&self) -> &[u8] {
        &self.object.point
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.object.curve.key_type().rcgen_alg()
    }
}

impl rcgen::SigningKey for Pkcs11Key {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let raw = self.raw_signature(msg).map_err(|e| {
            tracing::error!(error = %e, "PKCS#11 signature failed");
            rcgen::Error::RemoteKeyError
        })?;
        self.object.curve.raw_to_der(&raw).ok_or(rcgen::Error::RemoteKeyError)
    }
}

impl Key for Pkcs11Key {
    fn id(&self) -> &str {
        &self.id
    }
    fn key_type(&self) -> KeyType {
        self.object.curve.key_type()
    }
    fn sign_jws(&self, msg: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        Ok(self.raw_signature(msg)?)
    }
    fn may_block(&self) -> bool {
        true
    }
}

/// The PKCS#11 key manager.
#[derive(Debug)]
pub struct Pkcs11KeyManager {
    token: Arc<Token>,
    prefix: String,
    module: PathBuf,
}

impl Pkcs11KeyManager {
    /// Opens the configured token and logs in.
    ///
    /// # Errors
    /// See [`Pkcs11Error`].
    pub fn open(config: &Pkcs11Config) -> Result<Self, Pkcs11Error> {
        Ok(Self {
            token: Arc::new(config.token.open()?),
            prefix: config.key_label_prefix.clone(),
            module: config.token.module_path.clone(),
        })
    }

    fn label(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }
}

#[async_trait::async_trait]
impl KeyManager for Pkcs11KeyManager {
    async fn generate_key(&self, id: &str, key_type: KeyType) -> Result<Arc<dyn Key>, KeyManagerError> {
        let curve = Curve::for_key_type(key_type)?;
        let (token, label, id) = (Arc::clone(&self.token), self.label(id), id.to_owned());
        super::off_runtime(move || {
            let object = replace_key(&token, &label, curve)?;
            Ok(Arc::new(Pkcs11Key { id, label, token, object }) as Arc<dyn Key>)
        })
        .await
    }

    async fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyManagerError> {
        let (token, label, id) = (Arc::clone(&self.token), self.label(id), id.to_owned());
        super::off_runtime(move || {
            Ok(find_or_promote(&token, &label)?.map(|object| Arc::new(Pkcs11Key { id, label, token, object }) as Arc<dyn Key>))
        })
        .await
    }

    fn is_persistent(&self) -> bool {
        true
    }

    fn location(&self) -> Option<String> {
        Some(format!("PKCS#11 token {:?} (module {}, key labels {}<id>)", self.token.label(), self.module.display(), self.prefix))
    }
}

#[cfg(test)]
mod tests;
