//! The datastore: registration entries, attested nodes, join tokens, bundles, federation
//! relationships and the CA journal.
//!
//! [`Datastore`] is the seam; [`sql::SqlDatastore`] implements it over sqlx, for any database
//! that has a [`sql::Backend`] (SQLite today; PostgreSQL and MySQL are a new dialect and a
//! migrations folder away, see [`sql`]). [`sql::open`] picks the backend from the config.
//!
//! Writes are announced on a [`feed::ChangeFeed`]; [`Datastore::watch_changes`] subscribes to it,
//! and the entry cache, the server's TLS roots and the bundle watchers follow it. Every bundle
//! change also bumps the bundle's `sequence_number`.
//!
//! What every implementation must do is pinned down by one contract suite (`contract.rs`, run
//! on every backend by its tests). [`counting::CountingDatastore`] wraps any datastore to count
//! calls, for benchmarks.

#[cfg(test)]
pub(crate) mod contract;
pub mod counting;
pub mod entrycache;
pub mod feed;
pub mod sql;

pub use feed::{ChangeEvent, ChangeFeed, ChangeReceiver, LocalFeed, RecvError, TryRecvError};

use crate::spiffe::federation::Relationship;
use crate::spiffe::{Bundle, JwtAuthority, SpiffeId, TrustDomain};
use async_trait::async_trait;

/// Errors from the datastore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatastoreError {
    /// The record does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A record with the same identity exists.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What kind of record.
        what: &'static str,
    },
    /// A stored value could not be decoded (the database was edited by hand or is damaged).
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What kind of record.
        what: &'static str,
        /// Why it could not be decoded.
        reason: String,
    },
    /// The database failed or cannot be reached.
    #[error("database: {0}")]
    Database(String),
    /// The configuration for the datastore is not usable.
    #[error("datastore config: {0}")]
    Config(String),
    /// The stored data does not allow the request (SPIRE's wording, e.g. "root CA is already
    /// tainted").
    #[error("{0}")]
    Refused(String),
    /// What the request names is not stored (SPIRE's wording, e.g. "no JWT Key found with
    /// provided key ID").
    #[error("{0}")]
    Missing(String),
}

pub use crate::spiffe::Selector;

/// A registration entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Unique id ([`new_entry_id`] unless given).
    pub id: String,
    /// The identity issued to matching workloads.
    pub spiffe_id: SpiffeId,
    /// The agent (or node alias) the entry lives under.
    pub parent_id: SpiffeId,
    /// Sorted, de-duplicated selectors.
    pub selectors: Vec<Selector>,
    /// X509-SVID TTL in seconds (0 = server default).
    pub x509_svid_ttl: i32,
    /// JWT-SVID TTL in seconds (0 = server default).
    pub jwt_svid_ttl: i32,
    /// Trust domains whose bundles workloads of this entry receive.
    pub federates_with: Vec<TrustDomain>,
    /// The identity may call admin APIs.
    pub admin: bool,
    /// The identity is a downstream tier (may call NewDownstreamX509CA).
    pub downstream: bool,
    /// DNS SANs (the first is also the subject CN).
    pub dns_names: Vec<String>,
    /// Unix seconds after which the entry is ignored (0 = never).
    pub expires_at: i64,
    /// Workload-facing hint.
    pub hint: String,
    /// SVID stored by the agent (SPIRE's `store_svid`).
    pub store_svid: bool,
    /// SPIRE's additional attribute: the agent mints the X509-SVID only once a workload asks.
    pub disable_x509_svid_prefetch: bool,
    /// SPIRE's additional attribute: JWT-SVIDs carry a fresh `jti` and agents do not cache them.
    pub jwt_svid_include_jti: bool,
    /// 0 at creation, +1 on every update.
    pub revision_number: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// A fresh entry id: a UUIDv7 (RFC 9562), 48 bits of milliseconds followed by 74 random bits.
///
/// Time-ordered, unlike SPIRE's UUIDv4, so that new ids land at the end of the primary-key
/// index instead of all over it: a batch of random ids dirtied a different B-tree page per
/// entry, and at a million entries that doubled SQLite's insert cost (WAL and checkpoint
/// writes). Still a UUID, as SPIRE tools expect; ids given by the caller are kept as given.
#[must_use]
pub fn new_entry_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Entry {
    /// Whether the entry has expired at `now` (unix seconds). An entry whose `expires_at` has
    /// come is not authorized for anything, even before the periodic prune deletes it: the prune
    /// runs every few minutes and the entry cache may be older than that.
    #[must_use]
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }
}

/// An attested agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedNode {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// `join_token`, `x509pop`, ...
    pub attestation_type: String,
    /// Decimal serial of the current agent SVID; empty when banned.
    pub cert_serial_number: String,
    /// Unix seconds.
    pub cert_not_after: i64,
    /// Serial of an SVID issued by RenewAgent but not used yet.
    pub new_cert_serial_number: String,
    /// Unix seconds.
    pub new_cert_not_after: i64,
    /// Whether the agent may attest again.
    pub can_reattest: bool,
    /// Node selectors from attestation.
    pub selectors: Vec<Selector>,
    /// Unix seconds.
    pub created_at: i64,
    /// The version the agent last reported (PostStatus); empty until it does.
    pub agent_version: String,
}

/// Filters for listing entries (all optional, combined with AND).
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    /// Exact SPIFFE ID.
    pub spiffe_id: Option<SpiffeId>,
    /// Exact parent ID.
    pub parent_id: Option<SpiffeId>,
    /// Entries whose selector set equals this one (SPIRE's `MATCH_EXACT`).
    pub selectors_exact: Option<Vec<Selector>>,
    /// Downstream flag.
    pub downstream: Option<bool>,
}

/// What changed, for subscribers that keep caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Registration entries.
    Entries,
    /// A bundle (own or federated).
    Bundle,
    /// Attested nodes.
    Nodes,
    /// Federation relationships (the refresher reloads them).
    Relationships,
}

/// The storage seam. Implementations are shared by every API handler.
#[async_trait]
pub trait Datastore: Send + Sync + std::fmt::Debug {
    /// The bundle of `td`, if stored.
    async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>, DatastoreError>;
    /// Every stored bundle.
    async fn list_bundles(&self) -> Result<Vec<Bundle>, DatastoreError>;
    /// Adds X.509 roots and JWT keys to `td`'s bundle (creating it), skipping ones already
    /// present; bumps the sequence number when something was added. Returns the result.
    async fn append_bundle(&self, td: &TrustDomain, x509: &[Vec<u8>], jwt: &[JwtAuthority]) -> Result<Bundle, DatastoreError>;
    /// Replaces `bundle.trust_domain`'s bundle with `bundle`'s authorities; bumps the sequence
    /// number when the content changed. Returns what is stored.
    async fn set_bundle(&self, bundle: &Bundle) -> Result<Bundle, DatastoreError>;
    /// Creates a bundle; fails if one exists.
    async fn create_bundle(&self, bundle: &Bundle) -> Result<Bundle, DatastoreError>;
    /// Deletes `td`'s bundle.
    async fn delete_bundle(&self, td: &TrustDomain) -> Result<(), DatastoreError>;
    /// Marks `td`'s X.509 authority whose subject key ID is `ski` (lowercase hex) tainted and
    /// bumps the sequence number. `Refused` when it is tainted already, `Missing` when no root
    /// has that key ID (SPIRE's `TaintX509CA`).
    async fn taint_x509_authority(&self, td: &TrustDomain, ski: &str) -> Result<Bundle, DatastoreError>;
    /// Removes `td`'s tainted X.509 authority whose subject key ID is `ski` and bumps the
    /// sequence number. `Refused` when it is not tainted, `Missing` when there is none
    /// (SPIRE's `RevokeX509CA`).
    async fn revoke_x509_authority(&self, td: &TrustDomain, ski: &str) -> Result<Bundle, DatastoreError>;
    /// Marks `td`'s JWT key `kid` tainted (SPIRE's `TaintJWTKey`).
    async fn taint_jwt_authority(&self, td: &TrustDomain, kid: &str) -> Result<Bundle, DatastoreError>;
    /// Removes `td`'s tainted JWT key `kid` (SPIRE's `RevokeJWTKey`).
    async fn revoke_jwt_authority(&self, td: &TrustDomain, kid: &str) -> Result<Bundle, DatastoreError>;
    /// Drops X.509 roots and JWT keys of `td` that expired before `before` (unix seconds).
    async fn prune_bundle(&self, td: &TrustDomain, before: i64) -> Result<bool, DatastoreError>;

    /// Creates an entry; a similar entry (same SPIFFE ID, parent and selector set) makes this
    /// fail with `AlreadyExists` (`find_similar_entry` returns it). The check and the insert are
    /// atomic: of concurrent creators of similar entries, exactly one succeeds.
    async fn create_entry(&self, entry: &Entry) -> Result<Entry, DatastoreError>;
    /// Creates several entries, each checked as [`Datastore::create_entry`] checks one, one
    /// result per entry in order: an entry that fails (a similar entry exists, its id is taken)
    /// fails alone. Backends write the batch in one transaction (bulk loads), which is why this
    /// is not a loop in the caller.
    async fn create_entries(&self, entries: &[Entry]) -> Vec<Result<Entry, DatastoreError>> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push(self.create_entry(e).await);
        }
        out
    }
    /// The similar entry (same SPIFFE ID, parent, selector set), if any.
    async fn find_similar_entry(&self, entry: &Entry) -> Result<Option<Entry>, DatastoreError>;
    /// One entry by id.
    async fn get_entry(&self, id: &str) -> Result<Option<Entry>, DatastoreError>;
    /// Entries matching `filter`, ordered by id.
    async fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>, DatastoreError>;
    /// Replaces an entry (by id), incrementing its revision number.
    async fn update_entry(&self, entry: &Entry) -> Result<Entry, DatastoreError>;
    /// [`Datastore::update_entry`] for several entries, one result each, in order; backends
    /// write the batch in one transaction.
    async fn update_entries(&self, entries: &[Entry]) -> Vec<Result<Entry, DatastoreError>> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push(self.update_entry(e).await);
        }
        out
    }
    /// Deletes an entry, returning it.
    async fn delete_entry(&self, id: &str) -> Result<Entry, DatastoreError>;
    /// [`Datastore::delete_entry`] for several IDs, one result each, in order; backends write
    /// the batch in one transaction.
    async fn delete_entries(&self, ids: &[String]) -> Vec<Result<Entry, DatastoreError>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.delete_entry(id).await);
        }
        out
    }
    /// Number of entries.
    async fn count_entries(&self) -> Result<i64, DatastoreError>;
    /// Deletes the entries that expired before `expires_before` (unix seconds; entries with
    /// `expires_at = 0` never expire), returning them (SPIRE's `PruneRegistrationEntries`).
    async fn prune_entries(&self, expires_before: i64) -> Result<Vec<Entry>, DatastoreError>;

    /// Stores a join token. Only its SHA-256 is stored, so the datastore never holds a token
    /// that could be used to attest.
    async fn create_join_token(&self, token: &str, expires_at: i64) -> Result<(), DatastoreError>;
    /// Deletes a join token (found by its hash) and returns its expiry (single use: it is gone
    /// either way).
    async fn take_join_token(&self, token: &str) -> Result<Option<i64>, DatastoreError>;

    /// Creates an attested node record.
    async fn create_attested_node(&self, node: &AttestedNode) -> Result<(), DatastoreError>;
    /// One node by SPIFFE ID.
    async fn get_attested_node(&self, id: &SpiffeId) -> Result<Option<AttestedNode>, DatastoreError>;
    /// Every node.
    async fn list_attested_nodes(&self) -> Result<Vec<AttestedNode>, DatastoreError>;
    /// Replaces a node record.
    async fn update_attested_node(&self, node: &AttestedNode) -> Result<(), DatastoreError>;
    /// Deletes a node record, returning it.
    async fn delete_attested_node(&self, id: &SpiffeId) -> Result<AttestedNode, DatastoreError>;

    /// The CA journal stored under `server_key`.
    async fn get_ca_journal(&self, server_key: &str) -> Result<Option<String>, DatastoreError>;
    /// Stores the CA journal under `server_key`.
    async fn set_ca_journal(&self, server_key: &str, data: &str) -> Result<(), DatastoreError>;

    /// The stored federation relationship with `td`.
    async fn get_federation_relationship(&self, td: &TrustDomain) -> Result<Option<Relationship>, DatastoreError>;
    /// Every stored federation relationship, ordered by trust domain.
    async fn list_federation_relationships(&self) -> Result<Vec<Relationship>, DatastoreError>;
    /// Stores a new relationship and, when given, `bundle` as that trust domain's bundle, in one
    /// transaction. `AlreadyExists` when one with that trust domain is stored.
    async fn create_federation_relationship(&self, rel: &Relationship, bundle: Option<&Bundle>) -> Result<Relationship, DatastoreError>;
    /// Replaces the stored relationship with `rel.trust_domain` and, when given, that trust
    /// domain's bundle, in one transaction. `NotFound` when there is none.
    async fn update_federation_relationship(&self, rel: &Relationship, bundle: Option<&Bundle>) -> Result<Relationship, DatastoreError>;
    /// Deletes the relationship with `td` (its bundle stays, as in SPIRE). `NotFound` when
    /// there is none.
    async fn delete_federation_relationship(&self, td: &TrustDomain) -> Result<(), DatastoreError>;

    /// The entries among `ids` that exist, in no particular order: what the entry cache reads
    /// to apply a change event that names its entries.
    ///
    /// # Errors
    /// The datastore failed.
    async fn get_entries(&self, ids: &[String]) -> Result<Vec<Entry>, DatastoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.get_entry(id).await?);
        }
        Ok(out)
    }

    /// Every entry and every attested node, for the entry cache. This read tolerates staleness
    /// (SPIRE's `TolerateStale`): a datastore with a read replica serves it from the replica,
    /// but only once the replica has applied every change committed before the call, so a cache
    /// rebuilt after a change event always includes that change.
    async fn cache_snapshot(&self) -> Result<(Vec<Entry>, Vec<AttestedNode>), DatastoreError> {
        Ok((self.list_entries(&EntryFilter::default()).await?, self.list_attested_nodes().await?))
    }

    /// A receiver of every change from now on (a receiver that falls behind is told so, and
    /// should then assume that everything changed).
    fn watch_changes(&self) -> ChangeReceiver;
}

#[cfg(test)]
mod entry_id_tests {
    /// New ids are UUIDs in the hyphenated form SPIRE prints, and each sorts after the one
    /// before (what keeps inserts at the end of the index), even within one millisecond.
    #[test]
    fn new_entry_ids_are_uuids_in_creation_order() {
        let ids: Vec<String> = (0..2000).map(|_| super::new_entry_id()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
        let parsed = uuid::Uuid::parse_str(&ids[0]).unwrap_or_else(|e| panic!("{}: {e}", ids[0]));
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(parsed.hyphenated().to_string(), ids[0]);
    }
}
