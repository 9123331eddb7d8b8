//! `KeyManager "disk"` (SPIRE's `keys_path`): keys persist in one JSON file, mode 0600.

use super::local::LocalKey;
use super::{Key, KeyManager, KeyManagerError, KeyType};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// Keys kept in a JSON file so a restarted server resumes the same CA.
#[derive(Debug)]
pub struct DiskKeyManager {
    path: PathBuf,
    keys: Mutex<BTreeMap<String, Arc<LocalKey>>>,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    key_type: String,
    pkcs8: String,
}

#[derive(Serialize, Deserialize, Default)]
struct KeyFile {
    keys: BTreeMap<String, FileEntry>,
}

impl DiskKeyManager {
    /// Opens (or starts) the key file at `path`, loading every key in it.
    ///
    /// # Errors
    /// When the file exists but cannot be read or holds a bad key: nothing is overwritten then.
    pub fn open(path: &Path) -> Result<Self, KeyManagerError> {
        let err = |reason: String| KeyManagerError::Store { path: path.display().to_string(), reason };
        let mut keys = BTreeMap::new();
        match std::fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| err(format!("not a cairn key file: {e}")))?;
                for (id, entry) in file.keys {
                    let key_type: KeyType = entry.key_type.parse()?;
                    let pkcs8 = Zeroizing::new(
                        base64::engine::general_purpose::STANDARD
                            .decode(entry.pkcs8.as_bytes())
                            .map_err(|e| err(format!("key {id}: {e}")))?,
                    );
                    keys.insert(id.clone(), Arc::new(LocalKey::from_pkcs8(&id, key_type, &pkcs8)?));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e.to_string())),
        }
        Ok(Self { path: path.to_owned(), keys: Mutex::new(keys) })
    }

    fn persist(&self, keys: &BTreeMap<String, Arc<LocalKey>>) -> Result<(), KeyManagerError> {
        let file = KeyFile {
            keys: keys
                .iter()
                .map(|(id, k)| {
                    (
                        id.clone(),
                        FileEntry {
                            key_type: k.key_type().as_str().to_owned(),
                            pkcs8: base64::engine::general_purpose::STANDARD.encode(k.pkcs8()),
                        },
                    )
                })
                .collect(),
        };
        let json = Zeroizing::new(serde_json::to_vec_pretty(&file).map_err(|e| KeyManagerError::Crypto(e.to_string()))?);
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::fsutil::create_dir_all_mode(dir, 0o700)
                .map_err(|e| KeyManagerError::Store { path: dir.display().to_string(), reason: e.to_string() })?;
        }
        crate::fsutil::write_private_atomic(&self.path, &json)
            .map_err(|e| KeyManagerError::Store { path: self.path.display().to_string(), reason: e.to_string() })
    }
}

#[async_trait::async_trait]
impl KeyManager for DiskKeyManager {
    async fn generate_key(&self, id: &str, key_type: KeyType) -> Result<Arc<dyn Key>, KeyManagerError> {
        let owned = id.to_owned();
        let key = Arc::new(super::off_runtime(move || LocalKey::generate(&owned, key_type)).await?);
        let mut keys = self.keys.lock().map_err(|_| KeyManagerError::Crypto("key table lock poisoned".into()))?;
        let mut next = keys.clone();
        next.insert(id.to_owned(), Arc::clone(&key));
        // Persist first: the in-memory table only changes once the file holds the new key.
        self.persist(&next)?;
        *keys = next;
        Ok(key)
    }

    async fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyManagerError> {
        let keys = self.keys.lock().map_err(|_| KeyManagerError::Crypto("key table lock poisoned".into()))?;
        Ok(keys.get(id).map(|k| Arc::clone(k) as Arc<dyn Key>))
    }

    fn is_persistent(&self) -> bool {
        true
    }

    fn location(&self) -> Option<String> {
        Some(format!("keys file {}", self.path.display()))
    }
}
