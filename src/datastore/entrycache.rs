//! The in-memory entry cache that answers agent syncs.
//!
//! Agents sync every few seconds; answering each sync with datastore queries is what made
//! SPIRE's datastore the bottleneck at scale (spire-notes §9). This cache holds every entry
//! and every agent's node selectors, indexed by parent; it is rebuilt from the datastore when
//! the datastore reports a change (entries or nodes), so steady-state syncs cost the datastore
//! nothing. Authorization follows SPIRE's crawl: entries parented to the agent or to a node
//! alias whose selectors the agent has, and, transitively, their descendants.

use crate::datastore::{AttestedNode, Change, Datastore, DatastoreError, Entry, RecvError, Selector};
use crate::spiffe::Bundle;
use crate::spiffe::{SpiffeId, TrustDomain};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Debug, Default)]
struct Index {
    by_id: HashMap<String, Arc<Entry>>,
    by_parent: HashMap<SpiffeId, Vec<Arc<Entry>>>,
    /// Entries parented to the server: node aliases.
    aliases: Vec<Arc<Entry>>,
    node_selectors: HashMap<SpiffeId, Vec<Selector>>,
    nodes: HashMap<SpiffeId, AttestedNode>,
}

/// How many times what agents sync has changed, by kind; agents' change streams follow it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generation {
    /// Entry or node changes applied to the index (whether they concern an agent is for the
    /// agent's stream to work out).
    pub entries: u64,
    /// Bundle changes (the trust domain's or a federated one).
    pub bundles: u64,
}

/// The cache.
#[derive(Debug)]
pub struct EntryCache {
    trust_domain: TrustDomain,
    server_id: SpiffeId,
    index: RwLock<Arc<Index>>,
    bundle: RwLock<Option<Arc<Bundle>>>,
    reloads: AtomicU64,
    generation: tokio::sync::watch::Sender<Generation>,
}

impl EntryCache {
    /// An empty cache for `trust_domain`; call [`EntryCache::reload`] before use.
    ///
    /// # Errors
    /// Never in practice (the server ID is always a valid ID).
    pub fn new(trust_domain: TrustDomain) -> Result<Self, crate::spiffe::SpiffeIdError> {
        let server_id = SpiffeId::from_segments(&trust_domain, &["spire", "server"])?;
        Ok(Self {
            trust_domain,
            server_id,
            index: RwLock::new(Arc::new(Index::default())),
            bundle: RwLock::new(None),
            reloads: AtomicU64::new(0),
            generation: tokio::sync::watch::Sender::new(Generation::default()),
        })
    }

    /// How many times the cache was rebuilt from the datastore (each rebuild is two queries).
    #[must_use]
    pub fn reload_count(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Follows [`Generation`]: moves after the index or the bundles changed, once the cache
    /// answers with the change.
    #[must_use]
    pub fn watch_generation(&self) -> tokio::sync::watch::Receiver<Generation> {
        self.generation.subscribe()
    }

    /// Rebuilds the index from the datastore.
    ///
    /// # Errors
    /// The datastore failed; the previous index stays in use.
    pub async fn reload(&self, ds: &dyn Datastore) -> Result<(), DatastoreError> {
        let (entries, nodes) = ds.cache_snapshot().await?;
        let mut idx = Index::default();
        for e in entries {
            if !e.spiffe_id.is_member_of(&self.trust_domain) || !e.parent_id.is_member_of(&self.trust_domain) {
                continue;
            }
            let e = Arc::new(e);
            idx.by_id.insert(e.id.clone(), Arc::clone(&e));
            if e.parent_id == self.server_id {
                idx.aliases.push(Arc::clone(&e));
            }
            idx.by_parent.entry(e.parent_id.clone()).or_default().push(e);
        }
        for n in nodes {
            // A banned agent's selectors must not alias it into anything.
            if !n.cert_serial_number.is_empty() {
                idx.node_selectors.insert(n.spiffe_id.clone(), n.selectors.clone());
            }
            idx.nodes.insert(n.spiffe_id.clone(), n);
        }
        if let Ok(mut g) = self.index.write() {
            *g = Arc::new(idx);
        }
        let before = self.bundle();
        self.reload_bundle(ds).await?;
        let bundle_moved = before != self.bundle();
        self.reloads.fetch_add(1, Ordering::Relaxed);
        self.generation.send_modify(|g| {
            g.entries += 1;
            if bundle_moved {
                g.bundles += 1;
            }
        });
        Ok(())
    }

    /// Re-reads the trust domain's bundle.
    ///
    /// # Errors
    /// The datastore failed; the previous bundle stays in use.
    pub async fn reload_bundle(&self, ds: &dyn Datastore) -> Result<(), DatastoreError> {
        let b = ds.get_bundle(&self.trust_domain).await?;
        if let Ok(mut g) = self.bundle.write() {
            *g = b.map(Arc::new);
        }
        Ok(())
    }

    /// The trust domain's bundle as of the last change event.
    #[must_use]
    pub fn bundle(&self) -> Option<Arc<Bundle>> {
        self.bundle.read().ok().and_then(|g| g.clone())
    }

    /// An attested node as of the last change event.
    #[must_use]
    pub fn node(&self, id: &SpiffeId) -> Option<AttestedNode> {
        self.index.read().ok().and_then(|g| g.nodes.get(id).cloned())
    }

    /// Keeps the cache current: rebuilds after every entry or node change (bursts coalesce),
    /// and every `full_reload` as a safety net, until `shutdown`.
    pub async fn run(self: Arc<Self>, ds: Arc<dyn Datastore>, full_reload: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut changes = ds.watch_changes();
        let mut tick = tokio::time::interval(full_reload);
        tick.tick().await;
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
                c = changes.recv() => match c {
                    // A lagged receiver missed events: treat it as "everything changed".
                    Ok(Change::Entries | Change::Nodes) | Err(RecvError::Lagged { .. }) => {
                        // Let a burst (a batch create) finish before rebuilding once.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        changes.drain();
                    }
                    Ok(Change::Bundle) => {
                        if let Err(e) = self.reload_bundle(ds.as_ref()).await {
                            tracing::warn!(error = %e, "bundle cache reload failed");
                        }
                        // Federated bundles are not cached here, but agents fetch them: any
                        // bundle change is news to them.
                        self.generation.send_modify(|g| g.bundles += 1);
                        continue;
                    }
                    Ok(Change::Relationships) => continue,
                    Err(RecvError::Closed) => return,
                },
            }
            if let Err(e) = self.reload(ds.as_ref()).await {
                tracing::warn!(error = %e, "entry cache reload failed; serving the previous one");
            }
        }
    }

    /// The entries `agent` may get SVIDs for at `now` (unix seconds), sorted by id.
    ///
    /// Expired entries are left out, and so is everything reachable only through one (an
    /// expired node alias or parent entry authorizes nothing): the index is rebuilt only on
    /// changes, and entries expire with time alone, so expiry is decided here, at each use.
    #[must_use]
    pub fn authorized_entries(&self, agent: &SpiffeId, now: i64) -> Vec<Arc<Entry>> {
        let Ok(idx) = self.index.read().map(|g| Arc::clone(&g)) else { return Vec::new() };
        let mut roots: Vec<SpiffeId> = vec![agent.clone()];
        if let Some(sel) = idx.node_selectors.get(agent) {
            for alias in &idx.aliases {
                if !alias.is_expired(now) && !alias.selectors.is_empty() && alias.selectors.iter().all(|s| sel.contains(s)) {
                    roots.push(alias.spiffe_id.clone());
                }
            }
        }
        let mut out: Vec<Arc<Entry>> = Vec::new();
        let mut seen_entries: HashSet<&str> = HashSet::new();
        let mut visited: HashSet<SpiffeId> = HashSet::new();
        let mut queue: VecDeque<SpiffeId> = roots.into();
        while let Some(parent) = queue.pop_front() {
            if !visited.insert(parent.clone()) {
                continue;
            }
            for e in idx.by_parent.get(&parent).into_iter().flatten().filter(|e| !e.is_expired(now)) {
                if seen_entries.insert(e.id.as_str()) {
                    out.push(Arc::clone(e));
                }
                queue.push_back(e.spiffe_id.clone());
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// One entry by id that `agent` is authorized for at `now`.
    #[must_use]
    pub fn authorized_entry(&self, agent: &SpiffeId, entry_id: &str, now: i64) -> Option<Arc<Entry>> {
        self.authorized_entries(agent, now).into_iter().find(|e| e.id == entry_id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use crate::datastore::{AttestedNode, sql::SqliteDatastore};

    const NOW: i64 = 1_800_000_000;

    fn entry(id: &str, spiffe: &str, parent: &str, sel: &[(&str, &str)]) -> Entry {
        Entry {
            id: id.into(),
            spiffe_id: SpiffeId::new(spiffe).unwrap(),
            parent_id: SpiffeId::new(parent).unwrap(),
            selectors: sel.iter().map(|(k, v)| Selector { kind: (*k).into(), value: (*v).into() }).collect(),
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: vec![],
            admin: false,
            downstream: false,
            dns_names: vec![],
            expires_at: 0,
            hint: String::new(),
            store_svid: false,
            disable_x509_svid_prefetch: false,
            jwt_svid_include_jti: false,
            revision_number: 0,
            created_at: 0,
        }
    }

    fn node(agent: &str, selectors: &[(&str, &str)]) -> AttestedNode {
        AttestedNode {
            spiffe_id: SpiffeId::new(agent).unwrap(),
            attestation_type: "join_token".into(),
            cert_serial_number: "1".into(),
            cert_not_after: 0,
            new_cert_serial_number: String::new(),
            new_cert_not_after: 0,
            can_reattest: false,
            selectors: selectors.iter().map(|(k, v)| Selector { kind: (*k).into(), value: (*v).into() }).collect(),
            created_at: 0,
            agent_version: String::new(),
        }
    }

    fn expiring(mut e: Entry, expires_at: i64) -> Entry {
        e.expires_at = expires_at;
        e
    }

    /// The cache is loaded once, before the entries expire; asking later must not return them,
    /// nor anything reachable only through them.
    #[tokio::test]
    async fn expired_entries_authorize_nothing_once_their_time_passes() {
        let ds = SqliteDatastore::connect("sqlite::memory:").await.unwrap();
        let agent = "spiffe://example.org/spire/agent/join_token/t";
        for e in [
            expiring(entry("1", "spiffe://example.org/a", agent, &[("unix", "uid:1")]), NOW + 100),
            entry("2", "spiffe://example.org/a-child", "spiffe://example.org/a", &[("unix", "uid:2")]),
            expiring(entry("3", "spiffe://example.org/alias", "spiffe://example.org/spire/server", &[("x509pop", "cn:n1")]), NOW + 100),
            entry("4", "spiffe://example.org/via-alias", "spiffe://example.org/alias", &[("unix", "uid:3")]),
            expiring(entry("5", "spiffe://example.org/later", agent, &[("unix", "uid:4")]), NOW + 1000),
            entry("6", "spiffe://example.org/never", agent, &[("unix", "uid:5")]),
        ] {
            ds.create_entry(&e).await.unwrap();
        }
        ds.create_attested_node(&node(agent, &[("x509pop", "cn:n1")])).await.unwrap();
        let cache = EntryCache::new(TrustDomain::new("example.org").unwrap()).unwrap();
        cache.reload(&ds).await.unwrap();
        let agent = SpiffeId::new(agent).unwrap();
        let ids = |now| cache.authorized_entries(&agent, now).iter().map(|e| e.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(NOW), ["1", "2", "4", "5", "6"]);
        assert_eq!(ids(NOW + 100), ["5", "6"], "at its expires_at an entry, its children and an alias's children are gone");
        assert_eq!(ids(NOW + 1000), ["6"]);
        assert!(cache.authorized_entry(&agent, "1", NOW + 100).is_none());
        assert!(cache.authorized_entry(&agent, "1", NOW + 99).is_some());
    }

    #[tokio::test]
    async fn crawl_follows_parents_aliases_and_descendants() {
        let ds = SqliteDatastore::connect("sqlite::memory:").await.unwrap();
        let agent = "spiffe://example.org/spire/agent/join_token/t";
        for e in [
            entry("1", "spiffe://example.org/direct", agent, &[("unix", "uid:1")]),
            entry("2", "spiffe://example.org/child", "spiffe://example.org/direct", &[("unix", "uid:2")]),
            entry("3", "spiffe://example.org/alias", "spiffe://example.org/spire/server", &[("x509pop", "subject:cn:n1")]),
            entry("4", "spiffe://example.org/via-alias", "spiffe://example.org/alias", &[("unix", "uid:3")]),
            entry("5", "spiffe://example.org/other", "spiffe://example.org/spire/agent/join_token/u", &[("unix", "uid:4")]),
            entry("6", "spiffe://example.org/cycle", "spiffe://example.org/child", &[("unix", "uid:5")]),
            entry("7", "spiffe://example.org/direct", "spiffe://example.org/cycle", &[("unix", "uid:6")]),
        ] {
            ds.create_entry(&e).await.unwrap();
        }
        ds.create_attested_node(&AttestedNode {
            spiffe_id: SpiffeId::new(agent).unwrap(),
            attestation_type: "join_token".into(),
            cert_serial_number: "1".into(),
            cert_not_after: 0,
            new_cert_serial_number: String::new(),
            new_cert_not_after: 0,
            can_reattest: false,
            selectors: vec![Selector { kind: "x509pop".into(), value: "subject:cn:n1".into() }],
            created_at: 0,
            agent_version: String::new(),
        })
        .await
        .unwrap();
        let cache = EntryCache::new(TrustDomain::new("example.org").unwrap()).unwrap();
        cache.reload(&ds).await.unwrap();
        let ids: Vec<String> = cache.authorized_entries(&SpiffeId::new(agent).unwrap(), NOW).iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids, ["1", "2", "4", "6", "7"], "alias itself and the other agent's entry are excluded; cycles end");
        assert!(cache.authorized_entry(&SpiffeId::new(agent).unwrap(), "5", NOW).is_none());
        // Unknown agent: nothing.
        assert!(cache.authorized_entries(&SpiffeId::new("spiffe://example.org/spire/agent/x").unwrap(), NOW).is_empty());
    }
}
