//! SPIRE's server gRPC services (`spire.api.server.*.v1`), one file each, all thin: validate,
//! authorize, call the domain, convert. Errors become statuses only in [`status`].
//!
//! The same service values are mounted twice: on the admin Unix socket, where every caller is
//! "local", and on the TLS port, where the caller is whoever the client certificate names.

pub mod agent;
pub mod agentsync;
pub mod attest;
pub mod bundle;
pub mod bundlewatch;
pub mod convert;
pub mod debug;
pub mod entry;
pub mod limiter;
pub mod localauthority;
pub mod logger;
pub mod status;
pub mod svid;
pub mod trustdomain;

use crate::ca::{Ca, CaManager};
use crate::datastore::{Datastore, EntryFilter};
use crate::spiffe::{SpiffeId, TrustDomain};
use status::ApiError;
use std::sync::Arc;

/// Everything the handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// Trust domain served.
    pub trust_domain: TrustDomain,
    /// The datastore.
    pub datastore: Arc<dyn Datastore>,
    /// The signing CA.
    pub ca: Arc<Ca>,
    /// The CA manager (status, rotation).
    pub ca_manager: Arc<CaManager>,
    /// `admin_ids` from the config.
    pub admin_ids: Vec<SpiffeId>,
    /// Default TTL of downstream CAs (the server's `ca_ttl`).
    pub ca_ttl: i64,
    /// CA subject (downstream CAs copy it).
    pub ca_subject: crate::ca::CaSubject,
    /// When the server started.
    pub started: std::time::Instant,
    /// The server's own SVID chain, for debug output.
    pub server_svid: Arc<std::sync::RwLock<Vec<Vec<u8>>>>,
    /// Authorized entries per agent, kept in memory.
    pub entry_cache: Arc<crate::datastore::entrycache::EntryCache>,
    /// Lifetime of agent SVIDs, seconds.
    pub agent_ttl: i64,
    /// Node attestation settings.
    pub attestors: crate::attest::ServerAttestors,
    /// The upstream authority, when this server is not a self-signed root.
    pub upstream: Option<Arc<dyn crate::upstream::UpstreamAuthority>>,
    /// Last contact with the upstream (for status output).
    pub upstream_status: Arc<std::sync::RwLock<crate::upstream::UpstreamStatus>>,
    /// Open `BundleWatch` streams, capped.
    pub watchers: Arc<crate::api::bundlewatch::Watchers>,
    /// Open `AgentSync` change streams, capped per agent.
    pub agent_streams: Arc<crate::api::agentsync::AgentStreams>,
    /// Failed node attestations per peer address (throttling).
    pub attest_limiter: limiter::FailureLimiter,
    /// The federated bundle refresher (the Trust Domain API reloads and refreshes through it).
    pub federation: Arc<crate::federation::client::Refresher>,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Over the admin Unix socket.
    Local,
    /// Over TLS with an X509-SVID.
    Svid(SpiffeId, SvidInfo),
    /// Over TLS without a client certificate.
    Anonymous,
}

/// What the server needs from a caller's X509-SVID besides its ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidInfo {
    /// Serial number, decimal (as SPIRE records agent serials).
    pub serial: String,
    /// notAfter, unix seconds.
    pub not_after: i64,
}

impl Caller {
    /// The caller's SPIFFE ID, if it presented one.
    #[must_use]
    pub fn id(&self) -> Option<&SpiffeId> {
        match self {
            Self::Svid(id, _) => Some(id),
            _ => None,
        }
    }
}

/// Which callers a method admits (SPIRE's policy table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Anyone, authenticated or not.
    Any,
    /// Local callers and admins.
    LocalOrAdmin,
    /// Local callers only.
    LocalOnly,
    /// Callers whose ID has a `downstream` entry.
    Downstream,
    /// Attested, current, unbanned agents.
    Agent,
    /// Local callers, admins and agents.
    LocalAdminOrAgent,
}

/// A service mounted on one listener.
#[derive(Debug, Clone)]
pub struct Svc {
    state: Arc<ApiState>,
    local: bool,
}

impl Svc {
    /// A service for the admin socket (`local = true`) or the TLS port.
    #[must_use]
    pub fn new(state: Arc<ApiState>, local: bool) -> Self {
        Self { state, local }
    }

    /// Identifies the caller of `req`.
    ///
    /// # Errors
    /// `Unauthenticated` when the client certificate does not carry exactly one SPIFFE ID.
    pub fn caller<T>(&self, req: &tonic::Request<T>) -> Result<Caller, ApiError> {
        if self.local {
            return Ok(Caller::Local);
        }
        let Some(certs) = req.extensions().get::<crate::net::ConnInfo>().and_then(crate::net::ConnInfo::peer_certs) else {
            return Ok(Caller::Anonymous);
        };
        let Some(leaf) = certs.first() else { return Ok(Caller::Anonymous) };
        let id = crate::spiffe::x509::leaf_spiffe_id(leaf.as_ref())
            .map_err(|e| ApiError::Unauthenticated(format!("client certificate: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|_| ApiError::Unauthenticated("client certificate does not parse".into()))?;
        let info = SvidInfo { serial: crate::pki::num_to_decimal(cert.raw_serial()), not_after: cert.validity().not_after.timestamp() };
        Ok(Caller::Svid(id, info))
    }

    /// Checks `policy` for the caller of `req`; returns the caller.
    ///
    /// # Errors
    /// `PermissionDenied` naming the method when the caller is not admitted.
    pub async fn authorize<T>(&self, req: &tonic::Request<T>, policy: Policy, method: &'static str) -> Result<Caller, ApiError> {
        let caller = self.caller(req)?;
        let ok = match (&caller, policy) {
            (_, Policy::Any) | (Caller::Local, Policy::LocalOrAdmin | Policy::LocalOnly | Policy::LocalAdminOrAgent) => true,
            (Caller::Svid(id, _), Policy::LocalOrAdmin) => self.is_admin(id).await?,
            (Caller::Svid(id, info), Policy::LocalAdminOrAgent) => {
                self.is_admin(id).await? || self.check_agent(id, info, method).await.is_ok()
            }
            (Caller::Svid(id, _), Policy::Downstream) => self.entries_for(id).await?.iter().any(|e| e.downstream),
            (Caller::Svid(id, info), Policy::Agent) => {
                self.check_agent(id, info, method).await?;
                true
            }
            _ => false,
        };
        if ok {
            Ok(caller)
        } else {
            tracing::info!(method, caller = ?caller, "authorization denied");
            Err(ApiError::PermissionDenied(method))
        }
    }

    async fn is_admin(&self, id: &SpiffeId) -> Result<bool, ApiError> {
        Ok(self.state.admin_ids.contains(id) || self.entries_for(id).await?.iter().any(|e| e.admin))
    }

    /// SPIRE's agent check: an attested node record exists, is not banned, and the caller
    /// presents the current (or the freshly renewed) SVID, which is then promoted.
    async fn check_agent(&self, id: &SpiffeId, info: &SvidInfo, method: &'static str) -> Result<(), ApiError> {
        use crate::wire::pb::spire::api::types::permission_denied_details::Reason;
        let deny = |reason: Reason, detail: String| ApiError::AgentDenied { method, reason: reason as i32, detail };
        if info.not_after < now() {
            return Err(deny(Reason::AgentExpired, format!("agent {id} SVID has expired")));
        }
        // The common case, the current SVID of an unbanned agent, is answered from memory; any
        // other answer is confirmed against the datastore, so a change the cache has not seen
        // yet (a renewal, an eviction) is never decided on stale data.
        if let Some(n) = self.state.entry_cache.node(id)
            && !n.cert_serial_number.is_empty()
            && n.cert_serial_number == info.serial
        {
            return Ok(());
        }
        let ds = &self.state.datastore;
        let Some(mut node) = ds.get_attested_node(id).await? else {
            return Err(deny(Reason::AgentNotAttested, format!("agent {id} is not attested")));
        };
        if node.cert_serial_number.is_empty() {
            return Err(deny(Reason::AgentBanned, format!("agent {id} is banned")));
        }
        if node.cert_serial_number == info.serial {
            return Ok(());
        }
        if !node.new_cert_serial_number.is_empty() && node.new_cert_serial_number == info.serial {
            node.cert_serial_number = std::mem::take(&mut node.new_cert_serial_number);
            node.cert_not_after = node.new_cert_not_after;
            node.new_cert_not_after = 0;
            ds.update_attested_node(&node).await?;
            return Ok(());
        }
        Err(deny(
            Reason::AgentNotActive,
            format!("agent {id} expected to have serial number {}; has {}", node.cert_serial_number, info.serial),
        ))
    }

    /// The unexpired entries naming `id`: an expired `admin` or `downstream` entry grants nothing,
    /// even before the prune deletes it.
    async fn entries_for(&self, id: &SpiffeId) -> Result<Vec<crate::datastore::Entry>, ApiError> {
        let mut entries = self.state.datastore.list_entries(&EntryFilter { spiffe_id: Some(id.clone()), ..EntryFilter::default() }).await?;
        let now = now();
        entries.retain(|e| !e.is_expired(now));
        Ok(entries)
    }

    /// The shared state.
    #[must_use]
    pub fn state(&self) -> &ApiState {
        &self.state
    }

    /// The shared state, owned (for spawned tasks).
    #[must_use]
    pub fn state_arc(&self) -> Arc<ApiState> {
        Arc::clone(&self.state)
    }
}

/// Current unix time (handlers take `now` from here; domain code takes it as a parameter).
pub(crate) fn now() -> i64 {
    crate::now_unix()
}

#[async_trait::async_trait]
impl crate::telemetry::health::Readiness for ApiState {
    /// A server is ready when it can sign X.509 and (unless `disable_jwt_svids`) JWT-SVIDs
    /// and its datastore answers.
    async fn ready(&self) -> bool {
        self.ca.can_sign(crate::now_unix()) && self.datastore.count_entries().await.is_ok()
    }

    fn warnings(&self) -> Vec<String> {
        self.ca.rotation_problem().into_iter().collect()
    }
}
