//! SPIRE's server gRPC services (`spire.api.server.*.v1`), one file each, all thin: validate,
//! authorize, call the domain, convert. Errors become statuses only in [`status`].
//!
//! The same service values are mounted twice: on the admin Unix socket, where every caller is
//! "local", and on the TLS port, where the caller is whoever the client certificate names.

pub mod agent;
pub mod bundle;
pub mod convert;
pub mod debug;
pub mod entry;
pub mod pb;
pub mod status;
pub mod svid;

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
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Over the admin Unix socket.
    Local,
    /// Over TLS with an X509-SVID.
    Svid(SpiffeId),
    /// Over TLS without a client certificate.
    Anonymous,
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
        let Some(certs) = req.peer_certs() else { return Ok(Caller::Anonymous) };
        let Some(leaf) = certs.first() else { return Ok(Caller::Anonymous) };
        crate::spiffe::x509::leaf_spiffe_id(leaf.as_ref())
            .map(Caller::Svid)
            .map_err(|e| ApiError::Unauthenticated(format!("client certificate: {e}")))
    }

    /// Checks `policy` for the caller of `req`; returns the caller.
    ///
    /// # Errors
    /// `PermissionDenied` naming the method when the caller is not admitted.
    pub async fn authorize<T>(&self, req: &tonic::Request<T>, policy: Policy, method: &'static str) -> Result<Caller, ApiError> {
        let caller = self.caller(req)?;
        let ok = match (&caller, policy) {
            (_, Policy::Any) | (Caller::Local, Policy::LocalOrAdmin | Policy::LocalOnly) => true,
            (Caller::Svid(id), Policy::LocalOrAdmin) => {
                self.state.admin_ids.contains(id) || self.entries_for(id).await?.iter().any(|e| e.admin)
            }
            (Caller::Svid(id), Policy::Downstream) => self.entries_for(id).await?.iter().any(|e| e.downstream),
            _ => false,
        };
        if ok {
            Ok(caller)
        } else {
            tracing::info!(method, caller = ?caller, "authorization denied");
            Err(ApiError::PermissionDenied(method))
        }
    }

    async fn entries_for(&self, id: &SpiffeId) -> Result<Vec<crate::datastore::Entry>, ApiError> {
        Ok(self.state.datastore.list_entries(&EntryFilter { spiffe_id: Some(id.clone()), ..EntryFilter::default() }).await?)
    }

    /// The shared state.
    #[must_use]
    pub fn state(&self) -> &ApiState {
        &self.state
    }
}

/// Current unix time (handlers take `now` from here; domain code takes it as a parameter).
pub(crate) fn now() -> i64 {
    crate::now_unix()
}
