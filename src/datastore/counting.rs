//! A datastore wrapper that counts calls, for benchmarks that show which paths reach the
//! datastore at all (the target for steady-state agent syncs is zero). Counting lives here
//! rather than in the trait or a backend so that every backend is measured the same way and
//! the production path carries no benchmark code.

use super::{AttestedNode, ChangeReceiver, Datastore, DatastoreError, Entry, EntryFilter};
use crate::spiffe::federation::Relationship;
use crate::spiffe::{Bundle, JwtAuthority, SpiffeId, TrustDomain};
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// `inner`, with a count of the calls made to it.
#[derive(Debug)]
pub struct CountingDatastore {
    inner: Arc<dyn Datastore>,
    calls: AtomicU64,
}

// === impl CountingDatastore ===

impl CountingDatastore {
    /// Wraps `inner`; the count starts at zero.
    #[must_use]
    pub fn new(inner: Arc<dyn Datastore>) -> Self {
        Self { inner, calls: AtomicU64::new(0) }
    }

    /// Datastore calls made so far (each trait method call counts once, whatever it runs
    /// underneath; subscribing to changes does not count).
    #[must_use]
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn count(&self) -> &dyn Datastore {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.as_ref()
    }
}

#[async_trait]
impl Datastore for CountingDatastore {
    async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>, DatastoreError> {
        self.count().get_bundle(td).await
    }
    async fn taint_x509_authority(&self, td: &TrustDomain, ski: &str) -> Result<Bundle, DatastoreError> {
        self.count().taint_x509_authority(td, ski).await
    }
    async fn revoke_x509_authority(&self, td: &TrustDomain, ski: &str) -> Result<Bundle, DatastoreError> {
        self.count().revoke_x509_authority(td, ski).await
    }
    async fn taint_jwt_authority(&self, td: &TrustDomain, kid: &str) -> Result<Bundle, DatastoreError> {
        self.count().taint_jwt_authority(td, kid).await
    }
    async fn revoke_jwt_authority(&self, td: &TrustDomain, kid: &str) -> Result<Bundle, DatastoreError> {
        self.count().revoke_jwt_authority(td, kid).await
    }
    async fn get_entries(&self, ids: &[String]) -> Result<Vec<Entry>, DatastoreError> {
        self.count().get_entries(ids).await
    }
    async fn cache_snapshot(&self) -> Result<(Vec<Entry>, Vec<AttestedNode>), DatastoreError> {
        self.count().cache_snapshot().await
    }
    async fn list_bundles(&self) -> Result<Vec<Bundle>, DatastoreError> {
        self.count().list_bundles().await
    }
    async fn append_bundle(&self, td: &TrustDomain, x509: &[Vec<u8>], jwt: &[JwtAuthority]) -> Result<Bundle, DatastoreError> {
        self.count().append_bundle(td, x509, jwt).await
    }
    async fn set_bundle(&self, bundle: &Bundle) -> Result<Bundle, DatastoreError> {
        self.count().set_bundle(bundle).await
    }
    async fn create_bundle(&self, bundle: &Bundle) -> Result<Bundle, DatastoreError> {
        self.count().create_bundle(bundle).await
    }
    async fn delete_bundle(&self, td: &TrustDomain) -> Result<(), DatastoreError> {
        self.count().delete_bundle(td).await
    }
    async fn prune_bundle(&self, td: &TrustDomain, before: i64) -> Result<bool, DatastoreError> {
        self.count().prune_bundle(td, before).await
    }
    async fn create_entry(&self, entry: &Entry) -> Result<Entry, DatastoreError> {
        self.count().create_entry(entry).await
    }
    async fn update_entries(&self, entries: &[Entry]) -> Vec<Result<Entry, DatastoreError>> {
        self.count().update_entries(entries).await
    }
    async fn delete_entries(&self, ids: &[String]) -> Vec<Result<Entry, DatastoreError>> {
        self.count().delete_entries(ids).await
    }
    async fn create_entries(&self, entries: &[Entry]) -> Vec<Result<Entry, DatastoreError>> {
        self.count().create_entries(entries).await
    }
    async fn find_similar_entry(&self, entry: &Entry) -> Result<Option<Entry>, DatastoreError> {
        self.count().find_similar_entry(entry).await
    }
    async fn get_entry(&self, id: &str) -> Result<Option<Entry>, DatastoreError> {
        self.count().get_entry(id).await
    }
    async fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>, DatastoreError> {
        self.count().list_entries(filter).await
    }
    async fn update_entry(&self, entry: &Entry) -> Result<Entry, DatastoreError> {
        self.count().update_entry(entry).await
    }
    async fn delete_entry(&self, id: &str) -> Result<Entry, DatastoreError> {
        self.count().delete_entry(id).await
    }
    async fn count_entries(&self) -> Result<i64, DatastoreError> {
        self.count().count_entries().await
    }
    async fn prune_entries(&self, expires_before: i64) -> Result<Vec<Entry>, DatastoreError> {
        self.count().prune_entries(expires_before).await
    }
    async fn create_join_token(&self, token: &str, expires_at: i64) -> Result<(), DatastoreError> {
        self.count().create_join_token(token, expires_at).await
    }
    async fn take_join_token(&self, token: &str) -> Result<Option<i64>, DatastoreError> {
        self.count().take_join_token(token).await
    }
    async fn create_attested_node(&self, node: &AttestedNode) -> Result<(), DatastoreError> {
        self.count().create_attested_node(node).await
    }
    async fn get_attested_node(&self, id: &SpiffeId) -> Result<Option<AttestedNode>, DatastoreError> {
        self.count().get_attested_node(id).await
    }
    async fn list_attested_nodes(&self) -> Result<Vec<AttestedNode>, DatastoreError> {
        self.count().list_attested_nodes().await
    }
    async fn update_attested_node(&self, node: &AttestedNode) -> Result<(), DatastoreError> {
        self.count().update_attested_node(node).await
    }
    async fn delete_attested_node(&self, id: &SpiffeId) -> Result<AttestedNode, DatastoreError> {
        self.count().delete_attested_node(id).await
    }
    async fn get_ca_journal(&self, server_key: &str) -> Result<Option<String>, DatastoreError> {
        self.count().get_ca_journal(server_key).await
    }
    async fn set_ca_journal(&self, server_key: &str, data: &str) -> Result<(), DatastoreError> {
        self.count().set_ca_journal(server_key, data).await
    }
    async fn get_federation_relationship(&self, td: &TrustDomain) -> Result<Option<Relationship>, DatastoreError> {
        self.count().get_federation_relationship(td).await
    }
    async fn list_federation_relationships(&self) -> Result<Vec<Relationship>, DatastoreError> {
        self.count().list_federation_relationships().await
    }
    async fn create_federation_relationship(&self, rel: &Relationship, bundle: Option<&Bundle>) -> Result<Relationship, DatastoreError> {
        self.count().create_federation_relationship(rel, bundle).await
    }
    async fn update_federation_relationship(&self, rel: &Relationship, bundle: Option<&Bundle>) -> Result<Relationship, DatastoreError> {
        self.count().update_federation_relationship(rel, bundle).await
    }
    async fn delete_federation_relationship(&self, td: &TrustDomain) -> Result<(), DatastoreError> {
        self.count().delete_federation_relationship(td).await
    }
    fn watch_changes(&self) -> ChangeReceiver {
        self.inner.watch_changes()
    }
}
