//! `KeyManager "hashicorp_vault"`: CA and JWT keys held in a Vault (or OpenBao) transit engine,
//! as SPIRE's plugin of that name holds them.
//!
//! Keys are created non-exportable in transit and named `<server id>-<uuid>-<key id>` (SPIRE's
//! scheme: the server id, from `key_identifier_file` or `key_identifier_value`, keeps several
//! servers on one mount apart, and a fresh uuid per generation keeps a replacement from
//! colliding with the key it replaces). After a restart the mount is listed and the newest key
//! per id is taken; older ones are deleted. Signing sends a digest cairn computes
//! (`prehashed`) to `transit/sign/<name>/<hash>` and turns Vault's ASN.1 signature into the
//! form each use needs. Every signature is an HTTP round trip, so keys report
//! [`Key::may_block`] and sign from tokio's blocking pool.

use super::{Key, KeyManager, KeyManagerError, KeyType};
use crate::vault::{Method, VaultClient, VaultError, VaultSettings};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sha2::Digest as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the server id that prefixes this server's key names comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyIdentifier {
    /// `key_identifier_file`: a file holding a UUID, created (0600) when missing.
    File(PathBuf),
    /// `key_identifier_value`: the id itself.
    Value(String),
}

/// `plugin_data` of `KeyManager "hashicorp_vault"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultKeyManagerConfig {
    /// Connection and authentication.
    pub vault: VaultSettings,
    /// `transit_engine_path` (default `transit`; `VAULT_TRANSIT_ENGINE_PATH` wins, as in SPIRE).
    pub transit_engine_path: Option<String>,
    /// The server id.
    pub key_identifier: KeyIdentifier,
}

const CONFIG_PATH: &str = "plugins.KeyManager.hashicorp_vault.plugin_data";

impl From<VaultError> for KeyManagerError {
    fn from(e: VaultError) -> Self {
        Self::Vault(e.to_string())
    }
}

fn transit_type(kt: KeyType) -> &'static str {
    match kt {
        KeyType::EcP256 => "ecdsa-p256",
        KeyType::EcP384 => "ecdsa-p384",
        KeyType::Rsa2048 => "rsa-2048",
        KeyType::Rsa4096 => "rsa-4096",
    }
}

fn key_type_of(transit: &str) -> Option<KeyType> {
    match transit {
        "ecdsa-p256" => Some(KeyType::EcP256),
        "ecdsa-p384" => Some(KeyType::EcP384),
        "rsa-2048" => Some(KeyType::Rsa2048),
        "rsa-4096" => Some(KeyType::Rsa4096),
        _ => None,
    }
}

/// A key in transit.
pub struct VaultKey {
    id: String,
    name: String,
    key_type: KeyType,
    /// The public key as rcgen wants it (EC point or PKCS#1 RSA key).
    public_raw: Vec<u8>,
    spki: Vec<u8>,
    client: Arc<VaultClient>,
    transit: String,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKey").field("id", &self.id).field("name", &self.name).field("key_type", &self.key_type).finish_non_exhaustive()
    }
}

impl VaultKey {
    /// Vault's signature over `msg`: DER for ECDSA, PKCS#1 v1.5 bytes for RSA.
    fn transit_sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        let (hash, digest) = match self.key_type {
            KeyType::EcP384 => ("sha2-384", sha2::Sha384::digest(msg).to_vec()),
            _ => ("sha2-256", sha2::Sha256::digest(msg).to_vec()),
        };
        let mut body = json!({ "input": B64.encode(digest), "prehashed": true, "marshaling_algorithm": "asn1" });
        if self.key_type.is_rsa() {
            body["signature_algorithm"] = json!("pkcs1v15");
        }
        let path = format!("{}/sign/{}/{hash}", self.transit, self.name);
        let client = Arc::clone(&self.client);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let p = path.clone();
        // The HTTP exchange runs on the runtime; this (blocking-pool) thread waits for it.
        self.runtime.spawn(async move {
            let _ = tx.send(client.call(Method::Post, &p, Some(&body)).await);
        });
        let answer = rx.recv().map_err(|_| KeyManagerError::Crypto("Vault signing task ended".into()))??;
        let sig =
            answer.pointer("/data/signature").and_then(Value::as_str).and_then(|s| s.strip_prefix("vault:v1:")).ok_or_else(|| {
                VaultError::BadResponse { path: path.clone(), why: "no data.signature of the form vault:v1:<base64>".into() }
            })?;
        Ok(B64.decode(sig).map_err(|e| VaultError::BadResponse { path, why: format!("signature not base64: {e}") })?)
    }
}

impl rcgen::PublicKeyData for VaultKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_raw
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.key_type.rcgen_alg()
    }
}

impl rcgen::SigningKey for VaultKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.transit_sign(msg).map_err(|e| {
            tracing::error!(error = %e, key = %self.name, "Vault transit signature failed");
            rcgen::Error::RemoteKeyError
        })
    }
}

impl Key for VaultKey {
    fn id(&self) -> &str {
        &self.id
    }
    fn key_type(&self) -> KeyType {
        self.key_type
    }
    fn spki_der(&self) -> Vec<u8> {
        self.spki.clone()
    }
    fn sign_jws(&self, msg: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        let sig = self.transit_sign(msg)?;
        let bad = |e: String| KeyManagerError::Crypto(format!("Vault's ECDSA signature: {e}"));
        Ok(match self.key_type {
            KeyType::EcP256 => p256::ecdsa::Signature::from_der(&sig).map_err(|e| bad(e.to_string()))?.to_bytes().to_vec(),
            KeyType::EcP384 => p384::ecdsa::Signature::from_der(&sig).map_err(|e| bad(e.to_string()))?.to_bytes().to_vec(),
            KeyType::Rsa2048 | KeyType::Rsa4096 => sig,
        })
    }
    fn may_block(&self) -> bool {
        true
    }
}

/// A key as listed on the mount.
struct Found {
    name: String,
    created: String,
    key: VaultKey,
}

/// The `hashicorp_vault` key manager.
pub struct VaultKeyManager {
    client: Arc<VaultClient>,
    transit: String,
    server_id: String,
    /// This server's keys by id, loaded from the mount on first use.
    keys: tokio::sync::OnceCell<tokio::sync::Mutex<HashMap<String, Arc<VaultKey>>>>,
}

impl std::fmt::Debug for VaultKeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKeyManager")
            .field("vault", &self.client)
            .field("transit", &self.transit)
            .field("server_id", &self.server_id)
            .finish()
    }
}

/// Reads the server id from `key_identifier_file`, creating it (a fresh UUID, 0600) if missing.
fn server_id(id: &KeyIdentifier) -> Result<String, KeyManagerError> {
    match id {
        KeyIdentifier::Value(v) => Ok(v.clone()),
        KeyIdentifier::File(path) => {
            let store =
                |reason: String| KeyManagerError::Store { path: format!("{CONFIG_PATH}.key_identifier_file {}", path.display()), reason };
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let id = text.trim();
                    uuid::Uuid::parse_str(id).map_err(|e| store(format!("not a UUID: {e}")))?;
                    Ok(id.to_owned())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let id = uuid::Uuid::new_v4().to_string();
                    crate::fsutil::write_private_atomic(path, id.as_bytes()).map_err(|e| store(e.to_string()))?;
                    Ok(id)
                }
                Err(e) => Err(store(e.to_string())),
            }
        }
    }
}

/// `vault:` creation times (RFC 3339 with up to nine fraction digits) in an order that sorts.
fn sortable_time(t: &str) -> String {
    let t = t.trim_end_matches('Z');
    let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
    format!("{secs}.{frac:0<9}")
}

impl VaultKeyManager {
    /// Reads the settings and the server id; Vault is first contacted on first use.
    ///
    /// # Errors
    /// Missing credentials, unreadable TLS files, an unusable key identifier file.
    pub fn open(config: &VaultKeyManagerConfig) -> Result<Self, KeyManagerError> {
        let env = |k: &str| std::env::var(k).ok();
        let settings = config.vault.resolve(CONFIG_PATH, &env)?;
        let transit = env("VAULT_TRANSIT_ENGINE_PATH")
            .filter(|s| !s.is_empty())
            .or_else(|| config.transit_engine_path.clone())
            .unwrap_or_else(|| "transit".into())
            .trim_matches('/')
            .to_owned();
        if settings.insecure_skip_verify {
            tracing::warn!("TLS verification of Vault certificates is skipped. This is only recommended for test environments.");
        }
        let client = VaultClient::new(settings)?;
        if tokio::runtime::Handle::try_current().is_ok() {
            client.spawn_renewer();
        }
        Ok(Self { client, transit, server_id: server_id(&config.key_identifier)?, keys: tokio::sync::OnceCell::new() })
    }

    /// The key id encoded in a key name of this server, if it is one.
    fn id_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        let rest = name.strip_prefix(&self.server_id)?.strip_prefix('-')?;
        // `<36-char uuid>-<id>`
        (rest.len() > 37 && rest.as_bytes().get(36) == Some(&b'-')).then(|| &rest[37..])
    }

    async fn read_key(&self, id: &str, name: &str) -> Result<Found, KeyManagerError> {
        let path = format!("{}/keys/{name}", self.transit);
        let answer = self.client.call(Method::Get, &path, None).await?;
        let bad = |why: String| KeyManagerError::from(VaultError::BadResponse { path: path.clone(), why });
        let ty = answer.pointer("/data/type").and_then(Value::as_str).unwrap_or_default();
        let key_type = key_type_of(ty).ok_or_else(|| bad(format!("key type {ty:?} is not one cairn signs with")))?;
        if answer.pointer("/data/exportable").and_then(Value::as_bool) != Some(false) {
            return Err(bad("the key is exportable: cairn only uses non-exportable transit keys".into()));
        }
        let version = answer.pointer("/data/latest_version").map(|v| v.to_string()).unwrap_or_default();
        let entry = answer.pointer(&format!("/data/keys/{version}")).ok_or_else(|| bad(format!("no data.keys.{version}")))?;
        let pem = entry.get("public_key").and_then(Value::as_str).ok_or_else(|| bad("no public_key".into()))?;
        let block = ::pem::parse(pem).map_err(|e| bad(format!("public_key: {e}")))?;
        if block.tag() != "PUBLIC KEY" {
            return Err(bad(format!("public_key is a {:?} PEM block", block.tag())));
        }
        let spki = block.contents().to_vec();
        let public_raw = {
            use x509_parser::prelude::FromDer as _;
            let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki).map_err(|e| bad(format!("public_key: {e}")))?;
            info.subject_public_key.data.to_vec()
        };
        let created = entry.get("creation_time").and_then(Value::as_str).map(sortable_time).unwrap_or_default();
        let key = VaultKey {
            id: id.to_owned(),
            name: name.to_owned(),
            key_type,
            public_raw,
            spki,
            client: Arc::clone(&self.client),
            transit: self.transit.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        Ok(Found { name: name.to_owned(), created, key })
    }

    /// This server's keys on the mount, newest per id; older duplicates are deleted.
    async fn load(&self) -> Result<tokio::sync::Mutex<HashMap<String, Arc<VaultKey>>>, KeyManagerError> {
        let path = format!("{}/keys?list=true", self.transit);
        let names: Vec<String> = match self.client.call(Method::Get, &path, None).await {
            Ok(answer) => answer
                .pointer("/data/keys")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
            // An empty mount answers 404 to LIST.
            Err(VaultError::Refused { status: 404, message, .. }) if !message.contains("no handler for route") => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut best: HashMap<String, Found> = HashMap::new();
        for name in names {
            let Some(id) = self.id_of(&name) else { continue };
            let found = self.read_key(id, &name).await?;
            match best.remove(id) {
                Some(other) => {
                    let (keep, stale) = if other.created >= found.created { (other, found) } else { (found, other) };
                    tracing::warn!(key = %stale.name, "Stale key found on startup, scheduling for deletion");
                    self.delete_later(stale.name);
                    best.insert(id.to_owned(), keep);
                }
                None => {
                    best.insert(id.to_owned(), found);
                }
            }
        }
        Ok(tokio::sync::Mutex::new(best.into_iter().map(|(id, f)| (id, Arc::new(f.key))).collect()))
    }

    async fn keys(&self) -> Result<&tokio::sync::Mutex<HashMap<String, Arc<VaultKey>>>, KeyManagerError> {
        self.keys.get_or_try_init(|| self.load()).await
    }

    /// Deletes a replaced key in the background (transit refuses until `deletion_allowed`),
    /// retrying with backoff; a key left behind is deleted at the next start.
    fn delete_later(&self, name: String) {
        let client = Arc::clone(&self.client);
        let transit = self.transit.clone();
        tokio::spawn(async move {
            let mut wait = 1;
            for _ in 0..8 {
                let config =
                    client.call(Method::Post, &format!("{transit}/keys/{name}/config"), Some(&json!({ "deletion_allowed": true }))).await;
                let deleted = match config {
                    Ok(_) => client.call(Method::Delete, &format!("{transit}/keys/{name}"), None).await,
                    Err(e) => Err(e),
                };
                match deleted {
                    Ok(_) => {
                        tracing::debug!(key = %name, "Key deleted");
                        return;
                    }
                    Err(e) => tracing::warn!(key = %name, error = %e, "deleting a replaced Vault transit key failed; retrying"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
                wait = (wait * 2).min(60);
            }
        });
    }
}

#[async_trait::async_trait]
impl KeyManager for VaultKeyManager {
    async fn generate_key(&self, id: &str, key_type: KeyType) -> Result<Arc<dyn Key>, KeyManagerError> {
        let keys = self.keys().await?;
        let name = format!("{}-{}-{id}", self.server_id, uuid::Uuid::new_v4());
        let path = format!("{}/keys/{name}", self.transit);
        let body = json!({ "type": transit_type(key_type), "exportable": false, "allow_plaintext_backup": false, "auto_rotate_period": 0 });
        self.client.call(Method::Post, &path, Some(&body)).await?;
        let found = self.read_key(id, &name).await?;
        if found.key.key_type != key_type {
            return Err(VaultError::BadResponse {
                path,
                why: format!("asked for {}, got {}", key_type.as_str(), found.key.key_type.as_str()),
            }
            .into());
        }
        let key = Arc::new(found.key);
        if let Some(old) = keys.lock().await.insert(id.to_owned(), Arc::clone(&key)) {
            self.delete_later(old.name.clone());
        }
        tracing::info!(id, key = %name, key_type = key_type.as_str(), "created a key in Vault's transit engine");
        Ok(key)
    }

    async fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyManagerError> {
        Ok(self.keys().await?.lock().await.get(id).map(|k| Arc::clone(k) as Arc<dyn Key>))
    }

    fn is_persistent(&self) -> bool {
        true
    }

    fn location(&self) -> Option<String> {
        Some(format!("Vault transit engine {:?} at {} (keys named {}-<uuid>-<id>)", self.transit, self.client.addr(), self.server_id))
    }
}

#[cfg(test)]
mod tests;
