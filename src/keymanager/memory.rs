//! `KeyManager "memory"`: keys live only as long as the process (tests, development).

use super::local::LocalKey;
use super::{Key, KeyManager, KeyManagerError, KeyType};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Keys in process memory; a restart loses them, so the CA is re-minted on every start.
#[derive(Debug, Default)]
pub struct MemoryKeyManager {
    keys: RwLock<HashMap<String, Arc<LocalKey>>>,
}

impl MemoryKeyManager {
    /// An empty key manager.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl KeyManager for MemoryKeyManager {
    async fn generate_key(&self, id: &str, key_type: KeyType) -> Result<Arc<dyn Key>, KeyManagerError> {
        let owned = id.to_owned();
        let key = Arc::new(super::off_runtime(move || LocalKey::generate(&owned, key_type)).await?);
        let mut keys = self.keys.write().map_err(|_| KeyManagerError::Crypto("key table lock poisoned".into()))?;
        keys.insert(id.to_owned(), Arc::clone(&key));
        Ok(key)
    }

    async fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyManagerError> {
        let keys = self.keys.read().map_err(|_| KeyManagerError::Crypto("key table lock poisoned".into()))?;
        Ok(keys.get(id).map(|k| Arc::clone(k) as Arc<dyn Key>))
    }

    fn is_persistent(&self) -> bool {
        false
    }
}
