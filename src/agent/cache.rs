//! What the agent knows, as one immutable snapshot the Workload API serves from.
//!
//! The sync loop builds a new [`Snapshot`] whenever entries, SVIDs or bundles change and
//! publishes it on a `tokio::sync::watch` channel; every open Workload API stream holds a
//! receiver and re-sends to its caller when the part it sees changed. JWT-SVIDs are minted on
//! demand (through [`WorkloadSource::fetch_jwt_svid`]) and cached by the source.

use crate::spiffe::Selector;
use crate::spiffe::{Bundle, SpiffeId, TrustDomain};
use std::collections::BTreeMap;
use std::sync::Arc;
use zeroize::Zeroizing;

/// One workload identity the agent holds an X509-SVID for.
#[derive(Clone)]
pub struct X509SvidItem {
    /// The registration entry it comes from.
    pub entry_id: String,
    /// The identity.
    pub spiffe_id: SpiffeId,
    /// The entry's selectors: a caller gets this SVID when all of them are among its own.
    pub selectors: Vec<Selector>,
    /// Leaf first, then intermediates (DER), exactly as the server returned them.
    pub chain: Vec<Vec<u8>>,
    /// The private key, PKCS#8 DER.
    pub key_pkcs8: Arc<Zeroizing<Vec<u8>>>,
    /// The entry's hint.
    pub hint: String,
    /// Trust domains whose bundles callers of this identity receive.
    pub federates_with: Vec<TrustDomain>,
    /// Leaf notAfter, unix seconds.
    pub not_after: i64,
    /// The entry's expiry, unix seconds (0 = never); past it the SVID is not served even if the
    /// next sync has not happened yet.
    pub entry_expires_at: i64,
}

impl std::fmt::Debug for X509SvidItem {
    // The key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509SvidItem")
            .field("entry_id", &self.entry_id)
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Everything the Workload API needs, at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The agent's trust domain.
    pub trust_domain: TrustDomain,
    /// The agent's own trust domain bundle (X.509 roots and JWT keys).
    pub bundle: Bundle,
    /// Bundles of other trust domains the agent's entries federate with.
    pub federated: BTreeMap<TrustDomain, Bundle>,
    /// Identities with SVIDs, in a stable order (the first matching one is a caller's default).
    pub svids: Vec<Arc<X509SvidItem>>,
    /// Entries whose X509-SVID is minted only once a workload asks (SPIRE's
    /// `disable_x509_svid_prefetch`) and has not been yet: entry ID and selectors.
    pub deferred: Vec<(String, Vec<Selector>)>,
}

impl Snapshot {
    /// The deferred entries a caller with `caller`'s selectors is entitled to (same subset
    /// match as [`Snapshot::svids_for`]).
    #[must_use]
    pub fn deferred_for(&self, caller: &[Selector]) -> Vec<String> {
        self.deferred
            .iter()
            .filter(|(_, sel)| !sel.is_empty() && sel.iter().all(|s| caller.contains(s)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The identities whose entry selectors are all among `caller` (SPIRE's subset match),
    /// leaving out those whose entry has expired by now.
    #[must_use]
    pub fn svids_for(&self, caller: &[Selector]) -> Vec<Arc<X509SvidItem>> {
        self.svids_for_at(caller, crate::now_unix())
    }

    /// [`Snapshot::svids_for`] at `now` (unix seconds). A snapshot lives until the next sync
    /// changes something, so an entry that expires in between is dropped here, at use.
    #[must_use]
    pub fn svids_for_at(&self, caller: &[Selector], now: i64) -> Vec<Arc<X509SvidItem>> {
        self.svids
            .iter()
            .filter(|s| s.entry_expires_at == 0 || s.entry_expires_at > now)
            .filter(|s| !s.selectors.is_empty() && s.selectors.iter().all(|sel| caller.contains(sel)))
            .cloned()
            .collect()
    }
}

/// Why a JWT-SVID could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchJwtError {
    /// The server refused (bad audience and the like): do not retry.
    #[error("{0}")]
    InvalidArgument(String),
    /// The server or the connection to it failed: try again later.
    #[error("{0}")]
    Unavailable(String),
}

/// What the Workload API reads from; the agent's sync loop implements it.
#[tonic::async_trait]
pub trait WorkloadSource: Send + Sync + 'static {
    /// The current snapshot and its updates. `None` until the first sync completed.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Arc<Snapshot>>>;
    /// A JWT-SVID for `svid`'s identity and `audience` (from cache until half-life, else minted
    /// by the server). Returns the token and its `exp`.
    async fn fetch_jwt_svid(&self, svid: &X509SvidItem, audience: &[String]) -> Result<(String, i64), FetchJwtError>;
    /// A workload asked for identities whose SVIDs are deferred: mint them now. The snapshot
    /// that has them follows on the channel.
    fn request_svids(&self, _entry_ids: Vec<String>) {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn item(entry_id: &str, entry_expires_at: i64) -> Arc<X509SvidItem> {
        Arc::new(X509SvidItem {
            entry_id: entry_id.to_owned(),
            spiffe_id: SpiffeId::new(&format!("spiffe://example.org/{entry_id}")).unwrap(),
            selectors: vec![Selector { kind: "unix".into(), value: "uid:1".into() }],
            chain: vec![],
            key_pkcs8: Arc::new(Zeroizing::new(vec![])),
            hint: String::new(),
            federates_with: vec![],
            not_after: 5000,
            entry_expires_at,
        })
    }

    #[test]
    fn an_entry_that_expires_after_the_snapshot_was_built_is_not_served() {
        let td = TrustDomain::new("example.org").unwrap();
        let snap = Snapshot {
            bundle: Bundle {
                trust_domain: td.clone(),
                x509_authorities: vec![],
                jwt_authorities: vec![],
                refresh_hint: None,
                sequence_number: 0,
                tainted_x509: vec![],
            },
            trust_domain: td,
            federated: BTreeMap::new(),
            svids: vec![item("expiring", 1000), item("never", 0)],
            deferred: vec![],
        };
        let caller = [Selector { kind: "unix".into(), value: "uid:1".into() }];
        let ids = |now| snap.svids_for_at(&caller, now).iter().map(|s| s.entry_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(999), ["expiring", "never"]);
        assert_eq!(ids(1000), ["never"]);
    }
}
