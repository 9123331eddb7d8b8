//! What the agent knows, as one immutable snapshot the Workload API serves from.
//!
//! The sync loop builds a new [`Snapshot`] whenever entries, SVIDs or bundles change and
//! publishes it on a `tokio::sync::watch` channel; every open Workload API stream holds a
//! receiver and re-sends to its caller when the part it sees changed. JWT-SVIDs are minted on
//! demand (through [`WorkloadSource::fetch_jwt_svid`]) and cached by the source.
//!
//! Not every authorized identity has an X509-SVID at every moment: the agent's SVID cache is
//! bounded (SPIRE's `x509_svid_cache_max_size`) and entries may opt out of pre-fetching. Those
//! are listed as [`Snapshot::unminted`]; a workload entitled to one asks for it
//! ([`WorkloadSource::request_svids`]) and, while its stream is open, holds it
//! ([`WorkloadSource::hold`]) so the cache does not evict it.

use crate::spiffe::Selector;
use crate::spiffe::{Bundle, SpiffeId, TrustDomain};
use std::collections::BTreeMap;
use std::sync::Arc;
use zeroize::Zeroizing;

/// One identity a registration entry grants, whether or not an X509-SVID is held for it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The registration entry it comes from.
    pub entry_id: String,
    /// The identity.
    pub spiffe_id: SpiffeId,
    /// The entry's selectors: a caller has this identity when all of them are among its own.
    pub selectors: Vec<Selector>,
    /// The entry's hint.
    pub hint: String,
    /// Trust domains whose bundles callers of this identity receive.
    pub federates_with: Vec<TrustDomain>,
    /// The entry's expiry, unix seconds (0 = never).
    pub entry_expires_at: i64,
}

impl Identity {
    /// Whether a caller with `caller`'s selectors has this identity at `now`: every entry
    /// selector is among the caller's (SPIRE's subset match) and the entry has not expired.
    #[must_use]
    pub fn granted_to(&self, caller: &[Selector], now: i64) -> bool {
        (self.entry_expires_at == 0 || self.entry_expires_at > now)
            && !self.selectors.is_empty()
            && self.selectors.iter().all(|s| caller.contains(s))
    }
}

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
    /// Leaf notBefore, unix seconds: with `not_after`, when the SVID is due for renewal, read
    /// once here rather than from the certificate at every sync.
    pub not_before: i64,
    /// Leaf notAfter, unix seconds.
    pub not_after: i64,
    /// The entry's expiry, unix seconds (0 = never); past it the SVID is not served even if the
    /// next sync has not happened yet.
    pub entry_expires_at: i64,
}

impl X509SvidItem {
    /// The identity this SVID is for (everything but the certificate and key).
    #[must_use]
    pub fn identity(&self) -> Identity {
        Identity {
            entry_id: self.entry_id.clone(),
            spiffe_id: self.spiffe_id.clone(),
            selectors: self.selectors.clone(),
            hint: self.hint.clone(),
            federates_with: self.federates_with.clone(),
            entry_expires_at: self.entry_expires_at,
        }
    }
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
    /// Authorized identities with no X509-SVID held now: the entry opted out of pre-fetching
    /// (SPIRE's `disable_x509_svid_prefetch`), or the SVID cache is full
    /// (`x509_svid_cache_max_size`). Minted when a workload entitled to them asks.
    pub unminted: Vec<Arc<Identity>>,
}

impl Snapshot {
    /// The entry IDs of the unminted identities a caller with `caller`'s selectors has.
    #[must_use]
    pub fn unminted_for(&self, caller: &[Selector]) -> Vec<String> {
        let now = crate::now_unix();
        self.unminted.iter().filter(|i| i.granted_to(caller, now)).map(|i| i.entry_id.clone()).collect()
    }

    /// Every identity a caller with `caller`'s selectors has, minted or not (a JWT-SVID needs
    /// no X509-SVID): those with SVIDs first, in [`Snapshot::svids_for`]'s order.
    #[must_use]
    pub fn identities_for(&self, caller: &[Selector]) -> Vec<Identity> {
        let now = crate::now_unix();
        self.svids_for_at(caller, now)
            .iter()
            .map(|s| s.identity())
            .chain(self.unminted.iter().filter(|i| i.granted_to(caller, now)).map(|i| (**i).clone()))
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
            .filter(|s| {
                (s.entry_expires_at == 0 || s.entry_expires_at > now)
                    && !s.selectors.is_empty()
                    && s.selectors.iter().all(|sel| caller.contains(sel))
            })
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
    /// A JWT-SVID for `identity` and `audience` (from cache until half-life, else minted by
    /// the server). Returns the token and its `exp`.
    async fn fetch_jwt_svid(&self, identity: &Identity, audience: &[String]) -> Result<(String, i64), FetchJwtError>;
    /// A workload asked for identities that have no X509-SVID now: mint them now. The snapshot
    /// that has them follows on the channel.
    fn request_svids(&self, _entry_ids: Vec<String>) {}
    /// A workload with `selectors` has a stream open: the SVIDs it receives stay cached (and
    /// count as just used) until the returned guard is dropped, whatever the cache's size.
    fn hold(&self, _selectors: &[Selector]) -> Hold {
        Hold(None)
    }
}

/// Keeps a workload's identities in the agent's SVID cache while it lives (see
/// [`WorkloadSource::hold`]); dropping it releases them.
pub struct Hold(pub Option<Box<dyn FnOnce() + Send + Sync>>);

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold").field("held", &self.0.is_some()).finish()
    }
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
            not_before: 0,
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
            unminted: vec![],
        };
        let caller = [Selector { kind: "unix".into(), value: "uid:1".into() }];
        let ids = |now| snap.svids_for_at(&caller, now).iter().map(|s| s.entry_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(999), ["expiring", "never"]);
        assert_eq!(ids(1000), ["never"]);
    }
}
