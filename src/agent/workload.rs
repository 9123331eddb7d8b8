//! The SPIFFE Workload API (checklist §6), served to local workloads on a Unix socket.
//!
//! Who is calling is never taken from the request: the kernel reports the peer's uid, gid and
//! pid for the connection (`SO_PEERCRED`, captured by tonic when the connection is accepted),
//! and a [`WorkloadAttestor`] turns them into selectors on every call. The caller's identities
//! are then the snapshot's SVIDs whose entry selectors are all among those selectors
//! ([`Snapshot::svids_for`]).
//!
//! Behaviour follows SPIRE's agent (`pkg/agent/endpoints/middleware.go` and
//! `pkg/agent/endpoints/workload/handler.go`), because the real clients (go-spiffe, py-spiffe,
//! the Rust `spiffe` crate, Envoy) were written against it:
//!
//! | condition                                   | status                                   |
//! |---------------------------------------------|------------------------------------------|
//! | no `workload.spiffe.io: true` metadata      | `InvalidArgument` "security header missing from request" |
//! | a mandatory field empty, a bad SPIFFE ID    | `InvalidArgument`                        |
//! | caller cannot be attested                   | `Unavailable` "workload attestation failed" |
//! | no snapshot yet (first sync not done)       | `Unavailable`                            |
//! | caller has no identity (all but Validate)   | `PermissionDenied` "no identity issued"  |
//! | JWT-SVID rejected by `ValidateJWTSVID`      | `InvalidArgument` with the reason        |
//! | the WIT-SVID RPCs                           | `Unimplemented`                          |
//!
//! Streams send the complete state at once and again whenever what this caller would receive
//! changes; a stream whose caller lost its last identity ends with `PermissionDenied`, and
//! every stream ends with `Unavailable` when the server shuts down, so clients reconnect.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use serde_json::Value;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

mod status;

use crate::agent::cache::{FetchJwtError, Hold, Identity, Snapshot, WorkloadSource, X509SvidItem};
use crate::net::{ConnInfo, ConnLimits, Peer, Registry};
use crate::spiffe::Selector;
use crate::spiffe::{Bundle, JwtSvidError, SpiffeId, TrustDomain, validate_jwt_svid};
use crate::wire::pb::workload::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use crate::wire::pb::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest, ValidateJwtsvidResponse,
    WitBundlesRequest, WitBundlesResponse, WitsvidRequest, WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid,
    X509svidRequest, X509svidResponse,
};
pub use status::WorkloadError;

/// The metadata key every Workload API request must carry with the value `true` (WEP §3). It
/// proves the request was made on purpose by a SPIFFE client, not forged by something like a
/// server-side request forgery that can reach the socket but cannot set gRPC metadata.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Largest request message accepted. Workload API requests are tiny (the largest is a
/// JWT-SVID to validate, at most [`crate::spiffe::jwt::MAX_TOKEN_LEN`]); anything bigger is
/// refused by tonic before it is decoded.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Most audiences one `FetchJWTSVID` may ask for. Each becomes part of a token the server
/// mints and caches; real callers name one.
pub const MAX_AUDIENCES: usize = 64;

/// Longest audience value accepted, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 1024;

/// Claims of a token from another trust domain that `ValidateJWTSVID` passes on. SPIRE drops
/// the rest, since a foreign issuer's extra claims mean nothing here.
const FOREIGN_CLAIMS_KEPT: [&str; 3] = ["sub", "aud", "exp"];

/// Why a caller was not attested.
enum AttestFailure {
    /// The attestor could not describe it.
    Attestor(WorkloadAttestError),
    /// It is not the process that connected.
    Changed(crate::net::PeerChanged),
}

/// The caller of a Workload API request as the kernel reports it for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerInfo {
    /// The process id; `None` on platforms where the kernel does not report it.
    pub pid: Option<i32>,
    /// The effective user id.
    pub uid: u32,
    /// The effective group id.
    pub gid: u32,
}

/// Turns a caller into selectors (the agent wires the unix workload attestor in here).
///
/// It is called on the blocking thread pool, once per RPC, since attestors read `/proc` and
/// may hash a binary. An error means the caller could not be attested at all; a caller that
/// simply matches no entry is an `Ok` with selectors that match nothing.
pub trait WorkloadAttestor: Send + Sync + 'static {
    /// The selectors of `caller`.
    ///
    /// # Errors
    ///
    /// Why the caller could not be attested (logged, not sent to it), with the attestor's own
    /// error as the source.
    fn attest(&self, caller: &CallerInfo) -> Result<Vec<Selector>, WorkloadAttestError>;
}

/// A workload attestor's failure, kept with its cause (e.g. `UnixAttestorError`).
pub type WorkloadAttestError = Box<dyn std::error::Error + Send + Sync>;

impl<F> WorkloadAttestor for F
where
    F: Fn(&CallerInfo) -> Result<Vec<Selector>, WorkloadAttestError> + Send + Sync + 'static,
{
    fn attest(&self, caller: &CallerInfo) -> Result<Vec<Selector>, WorkloadAttestError> {
        self(caller)
    }
}

/// The Workload API service; hand it to [`serve`].
#[derive(Clone)]
pub struct WorkloadApi {
    source: Arc<dyn WorkloadSource>,
    attestor: Arc<dyn WorkloadAttestor>,
    /// Set to `true` when the server shuts down, so open streams end instead of keeping the
    /// graceful shutdown waiting forever.
    stop: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApi").finish_non_exhaustive()
    }
}

impl WorkloadApi {
    /// A service reading identities from `source` and attesting callers with `attestor`.
    #[must_use]
    pub fn new(source: Arc<dyn WorkloadSource>, attestor: Arc<dyn WorkloadAttestor>) -> Self {
        Self { source, attestor, stop: Arc::new(watch::Sender::new(false)) }
    }

    /// Attests the caller of `req` from the peer credentials of its connection, then checks
    /// that the process attested is still the one that connected (see [`crate::net::peer`]):
    /// otherwise a connection handed to a setuid program, or left behind for a pid to be
    /// reused, would be served the new process's identities.
    async fn attest<T>(&self, req: &Request<T>) -> Result<Vec<Selector>, Status> {
        // Absent only when the connection is not one of our Unix socket connections: such a
        // caller cannot be identified, so it gets nothing.
        let Some(peer) = req.extensions().get::<ConnInfo>().and_then(|info| match &info.peer {
            Peer::Unix(p) => Some(p.clone()),
            Peer::Tls { .. } => None,
        }) else {
            tracing::warn!("workload API caller has no peer credentials");
            return Err(WorkloadError::AttestationFailed.into());
        };
        let cred = peer.cred();
        let caller = CallerInfo { pid: cred.pid, uid: cred.uid, gid: cred.gid };
        let attestor = Arc::clone(&self.attestor);
        let result = tokio::task::spawn_blocking(move || {
            // Attestation may fail because the process changed (it now runs as someone else, or
            // is gone); that is the peer check's verdict to give, so it is consulted either way.
            let selectors = attestor.attest(&caller);
            peer.verify().map_err(AttestFailure::Changed)?;
            selectors.map_err(AttestFailure::Attestor)
        })
        .await;
        match result {
            Ok(Ok(selectors)) => {
                tracing::debug!(pid = ?caller.pid, uid = caller.uid, selectors = selectors.len(), "workload attested");
                Ok(selectors)
            }
            Ok(Err(AttestFailure::Changed(e))) => {
                tracing::warn!(
                    pid = ?caller.pid, uid = caller.uid, gid = caller.gid, error = %e,
                    "workload refused: the calling process changed since it connected"
                );
                Err(WorkloadError::PeerChanged.into())
            }
            Ok(Err(AttestFailure::Attestor(e))) => {
                tracing::warn!(pid = ?caller.pid, uid = caller.uid, error = %e, "workload attestation failed");
                Err(WorkloadError::AttestationFailed.into())
            }
            Err(e) => {
                tracing::error!(pid = ?caller.pid, uid = caller.uid, error = %e, "workload attestor did not complete");
                Err(WorkloadError::AttestationFailed.into())
            }
        }
    }

    /// A receiver on the source, with the snapshot it currently holds marked as seen.
    fn subscribe(&self) -> Result<(SnapshotRx, Arc<Snapshot>), Status> {
        let mut rx = self.source.subscribe();
        let snapshot = rx.borrow_and_update().clone().ok_or_else(not_ready)?;
        Ok((rx, snapshot))
    }

    /// [`WorkloadApi::subscribe`] for a caller with `selectors`: when the caller is entitled
    /// to identities with no SVID held now (prefetch disabled, or beyond the SVID cache's
    /// size), they are asked for and the
    /// snapshot that has them is awaited (a few seconds at most; the caller then gets what
    /// there is, and the stream delivers the rest when it comes).
    async fn subscribe_for(&self, selectors: &[Selector]) -> Result<(SnapshotRx, Arc<Snapshot>), Status> {
        let (mut rx, mut snapshot) = self.subscribe()?;
        let wanted = snapshot.unminted_for(selectors);
        if wanted.is_empty() {
            return Ok((rx, snapshot));
        }
        self.source.request_svids(wanted);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !snapshot.unminted_for(selectors).is_empty() {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {
                    if let Some(s) = rx.borrow_and_update().clone() {
                        snapshot = s;
                    }
                }
                _ => break,
            }
        }
        Ok((rx, snapshot))
    }

    /// The start of every streaming RPC: attest, take the current snapshot, refuse a caller
    /// with no identity, and build the stream that follows the snapshot from there on.
    async fn open_stream<T, M>(&self, req: &Request<T>, compose: Compose<M>) -> Result<Response<UpdateStream<M>>, Status>
    where
        M: PartialEq + Clone + Send + Sync + 'static,
    {
        let selectors = self.attest(req).await?;
        // Held before asking for missing SVIDs, so the sync that mints them does not evict
        // this caller's others to make room.
        let hold = self.source.hold(&selectors);
        let (rx, snapshot) = self.subscribe_for(&selectors).await?;
        let identities = caller_identities(&snapshot, &selectors);
        if identities.is_empty() {
            tracing::info!(selectors = ?selectors, "no identity issued to workload");
            return Err(WorkloadError::NoIdentity.into());
        }
        let first = compose(&snapshot, &identities);
        let stream = updates(Follow {
            rx,
            stop: self.stop.subscribe(),
            selectors,
            compose,
            pending: Some(first),
            last: None,
            done: false,
            _hold: hold,
        });
        Ok(Response::new(stream))
    }
}

/// The source's snapshot channel.
type SnapshotRx = watch::Receiver<Option<Arc<Snapshot>>>;

/// Builds one streaming RPC's message from a snapshot and the caller's identities.
type Compose<M> = fn(&Snapshot, &[Arc<X509SvidItem>]) -> M;

/// The response stream of every streaming RPC.
type UpdateStream<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send + 'static>>;

/// Serves the Workload API on `listener` until `shutdown` completes.
///
/// Each connection's peer is pinned when it is accepted, and the caller is attested again on
/// every request (and checked to still be that process). Connections are capped and reaped
/// as `limits` says. When `shutdown` completes the listener is closed, open streams end with
/// `Unavailable`, and the call returns once in-flight requests finished.
///
/// # Errors
///
/// A transport error from tonic.
pub async fn serve(
    api: WorkloadApi,
    listener: UnixListener,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let stop = Arc::clone(&api.stop);
    let signal = async move {
        shutdown.await;
        stop.send_replace(true);
    };
    let health = AgentHealth { source: Arc::clone(&api.source) };
    let service =
        InterceptedService::new(SpiffeWorkloadApiServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES), check_security_header);
    crate::net::grpc_server()
        .add_service(service)
        .add_service(
            crate::wire::pb::grpc::health::v1::health_server::HealthServer::new(health).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(crate::net::uds_incoming(listener, Registry::new(limits)), signal)
        .await
}

/// The Workload API's connection limits for a process allowed `nofile` descriptors: most of
/// them (it is the agent's main listener), half at most for one uid, so one local user cannot
/// take every slot from the others.
#[must_use]
pub fn default_limits(nofile: u64) -> ConnLimits {
    let max = crate::net::fd_budget(nofile, 60, 100_000);
    ConnLimits {
        name: "Workload API",
        first_request_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
        max_connections: max,
        max_per_peer: (max / 2).max(8),
    }
}

/// `grpc.health.v1.Health` on the Workload API socket, which `spire-agent healthcheck` calls:
/// serving once the agent has synced with its server at least once.
struct AgentHealth {
    source: Arc<dyn WorkloadSource>,
}

#[tonic::async_trait]
impl crate::wire::pb::grpc::health::v1::health_server::Health for AgentHealth {
    async fn check(
        &self,
        _req: Request<crate::wire::pb::grpc::health::v1::HealthCheckRequest>,
    ) -> Result<Response<crate::wire::pb::grpc::health::v1::HealthCheckResponse>, Status> {
        use crate::wire::pb::grpc::health::v1::health_check_response::ServingStatus;
        let ready = self.source.subscribe().borrow().is_some();
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        Ok(Response::new(crate::wire::pb::grpc::health::v1::HealthCheckResponse { status: status as i32 }))
    }
}

/// SPIRE's rule: exactly one `workload.spiffe.io` value, and it is `true`. Applied to every
/// method of the service, the unimplemented WIT ones included.
fn check_security_header(req: Request<()>) -> Result<Request<()>, Status> {
    let mut values = req.metadata().get_all(SECURITY_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(value), None) if value.as_bytes() == b"true" => Ok(req),
        _ => Err(WorkloadError::MissingHeader.into()),
    }
}

fn not_ready() -> Status {
    WorkloadError::NotReady.into()
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = UpdateStream<X509svidResponse>;
    type FetchX509BundlesStream = UpdateStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = UpdateStream<JwtBundlesResponse>;
    type FetchWITSVIDStream = UpdateStream<WitsvidResponse>;
    type FetchWITBundlesStream = UpdateStream<WitBundlesResponse>;

    async fn fetch_x509svid(&self, req: Request<X509svidRequest>) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        self.open_stream(&req, x509_svid_response).await
    }

    async fn fetch_x509_bundles(&self, req: Request<X509BundlesRequest>) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.open_stream(&req, x509_bundles_response).await
    }

    async fn fetch_jwt_bundles(&self, req: Request<JwtBundlesRequest>) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.open_stream(&req, jwt_bundles_response).await
    }

    async fn fetch_jwtsvid(&self, req: Request<JwtsvidRequest>) -> Result<Response<JwtsvidResponse>, Status> {
        // Arguments are checked before attesting, as SPIRE does: a malformed request is the
        // caller's bug whoever it is.
        let JwtsvidRequest { audience, spiffe_id } = req.get_ref();
        check_audiences(audience)?;
        let requested = if spiffe_id.is_empty() {
            None
        } else {
            Some(
                SpiffeId::new(spiffe_id)
                    .map_err(|e| Status::from(WorkloadError::InvalidArgument(format!("invalid requested SPIFFE ID: {e}"))))?,
            )
        };

        let selectors = self.attest(&req).await?;
        // A JWT-SVID needs no X509-SVID: identities the SVID cache holds no certificate for
        // get their tokens too, without minting one (as SPIRE's LRU cache does).
        let (_, snapshot) = self.subscribe()?;
        let identities: Vec<_> = dedup_hints(snapshot.identities_for(&selectors))
            .into_iter()
            .filter(|item| requested.as_ref().is_none_or(|id| item.spiffe_id == *id))
            .collect();
        if identities.is_empty() {
            tracing::info!(selectors = ?selectors, requested = spiffe_id.as_str(), "no JWT-SVID identity issued to workload");
            return Err(WorkloadError::NoIdentity.into());
        }

        let mut svids = Vec::with_capacity(identities.len());
        for item in &identities {
            let (token, expiry) = self.source.fetch_jwt_svid(item, audience).await.map_err(|e| match e {
                FetchJwtError::InvalidArgument(m) => Status::from(WorkloadError::InvalidArgument(format!("could not fetch JWT-SVID: {m}"))),
                FetchJwtError::Unavailable(m) => Status::from(WorkloadError::Unavailable(format!("could not fetch JWT-SVID: {m}"))),
            })?;
            // SPIRE's debug line for each JWT-SVID handed out (operators grep for the method).
            tracing::debug!(
                method = "FetchJWTSVID",
                spiffe_id = %item.spiffe_id,
                ttl = expiry.saturating_sub(crate::now_unix()),
                "Fetched JWT SVID"
            );
            svids.push(Jwtsvid { spiffe_id: item.spiffe_id.to_string(), svid: token, hint: item.hint.clone() });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn validate_jwtsvid(&self, req: Request<ValidateJwtsvidRequest>) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let ValidateJwtsvidRequest { audience, svid } = req.get_ref();
        if audience.is_empty() {
            return Err(Status::from(WorkloadError::InvalidArgument("audience must be specified".into())));
        }
        if svid.is_empty() {
            return Err(Status::from(WorkloadError::InvalidArgument("svid must be specified".into())));
        }

        // Validation needs no identity of its own (a pure verifier may call it), but the
        // caller is still attested: which foreign trust domains it may trust follows from its
        // entries, exactly as for the bundles it would fetch.
        let selectors = self.attest(&req).await?;
        let (_, snapshot) = self.subscribe()?;
        let identities = dedup_hints(snapshot.identities_for(&selectors));
        let trusted = federated_bundles(&snapshot, identities.iter().map(|i| i.federates_with.as_slice()));

        // Keys come only from the bundle of the token subject's trust domain (checklist §3
        // item 12); a trust domain the caller does not federate with has no bundle here.
        let keys = |td: &TrustDomain, kid: &str| -> Result<Option<Vec<u8>>, JwtSvidError> {
            let bundle = if *td == snapshot.trust_domain { Some(&snapshot.bundle) } else { trusted.get(td).copied() };
            let bundle = bundle.ok_or_else(|| JwtSvidError::NoBundle { trust_domain: td.clone() })?;
            Ok(bundle.jwt_authority(kid).map(|a| a.public_key.clone()))
        };
        let claims = validate_jwt_svid(svid, &[audience.as_str()], crate::now_unix(), keys).map_err(|e| {
            tracing::debug!(error = %e, "JWT-SVID rejected");
            Status::from(WorkloadError::InvalidArgument(e.to_string()))
        })?;

        let mut raw = claims.raw;
        if !claims.subject.is_member_of(&snapshot.trust_domain) {
            raw.retain(|name, _| FOREIGN_CLAIMS_KEPT.contains(&name.as_str()));
        }
        // `aud` may be a single string in the token; SPIRE always answers with a list and
        // clients rely on that.
        raw.insert("aud".to_owned(), Value::Array(claims.audience.into_iter().map(Value::String).collect()));

        Ok(Response::new(ValidateJwtsvidResponse { spiffe_id: claims.subject.to_string(), claims: Some(json_object_to_struct(raw)) }))
    }

    async fn fetch_witsvid(&self, _req: Request<WitsvidRequest>) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::from(WorkloadError::Unimplemented("fetching WIT-SVIDs is not implemented")))
    }

    async fn fetch_wit_bundles(&self, _req: Request<WitBundlesRequest>) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::from(WorkloadError::Unimplemented("fetching WIT bundles is not implemented")))
    }
}

/// Refuses an audience list that is empty, or so long or with values so large that minting it
/// would only burden the server.
fn check_audiences(audience: &[String]) -> Result<(), Status> {
    if audience.is_empty() {
        return Err(Status::from(WorkloadError::InvalidArgument("audience must be specified".into())));
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(Status::from(WorkloadError::InvalidArgument(format!(
            "too many audiences: {} (at most {MAX_AUDIENCES})",
            audience.len()
        ))));
    }
    if audience.iter().any(String::is_empty) {
        return Err(Status::from(WorkloadError::InvalidArgument("audience values must not be empty".into())));
    }
    if audience.iter().any(|a| a.len() > MAX_AUDIENCE_LEN) {
        return Err(Status::from(WorkloadError::InvalidArgument(format!("audience value longer than {MAX_AUDIENCE_LEN} bytes"))));
    }
    Ok(())
}

/// The identities a caller with `selectors` receives, default first.
///
/// Hints must be unique within a response (checklist §6 item 23); of several identities with
/// the same hint only the first in snapshot order is kept, as SPIRE keeps the oldest entry.
fn caller_identities(snapshot: &Snapshot, selectors: &[Selector]) -> Vec<Arc<X509SvidItem>> {
    let mut seen_hints = HashSet::new();
    snapshot.svids_for(selectors).into_iter().filter(|item| item.hint.is_empty() || seen_hints.insert(item.hint.clone())).collect()
}

/// [`caller_identities`]' hint rule, for identities with or without an SVID.
fn dedup_hints(identities: Vec<Identity>) -> Vec<Identity> {
    let mut seen_hints = HashSet::new();
    identities.into_iter().filter(|i| i.hint.is_empty() || seen_hints.insert(i.hint.clone())).collect()
}

/// Bundles of the foreign trust domains the identities (given by their `federates_with`)
/// federate with that the agent has. The own trust domain is never among them: it is served as
/// the SVIDs' own bundle.
fn federated_bundles<'s, 'i>(
    snapshot: &'s Snapshot,
    federates_with: impl Iterator<Item = &'i [TrustDomain]>,
) -> BTreeMap<&'s TrustDomain, &'s Bundle> {
    let wanted: BTreeSet<&TrustDomain> = federates_with.flatten().collect();
    snapshot.federated.iter().filter(|(td, _)| **td != snapshot.trust_domain && wanted.contains(td)).collect()
}

/// DER certificates back to back, the Workload API's encoding of chains and bundles.
fn concat_der(certs: &[Vec<u8>]) -> Vec<u8> {
    certs.concat()
}

fn x509_svid_response(snapshot: &Snapshot, identities: &[Arc<X509SvidItem>]) -> X509svidResponse {
    // SPIRE's debug line for each X509-SVID sent (operators grep for the method).
    let now = crate::now_unix();
    for item in identities {
        tracing::debug!(
            method = "FetchX509SVID",
            count = identities.len(),
            spiffe_id = %item.spiffe_id,
            ttl = item.not_after.saturating_sub(now),
            "Fetched X.509 SVID"
        );
    }
    let bundle = concat_der(&snapshot.bundle.x509_authorities);
    let svids = identities
        .iter()
        .map(|item| X509svid {
            spiffe_id: item.spiffe_id.to_string(),
            x509_svid: concat_der(&item.chain),
            x509_svid_key: item.key_pkcs8.as_slice().to_vec(),
            bundle: bundle.clone(),
            hint: item.hint.clone(),
        })
        .collect();
    let federated_bundles = federated_bundles(snapshot, identities.iter().map(|i| i.federates_with.as_slice()))
        .into_iter()
        .map(|(td, b)| (td.id_string(), concat_der(&b.x509_authorities)))
        .collect();
    X509svidResponse { svids, crl: Vec::new(), federated_bundles }
}

fn x509_bundles_response(snapshot: &Snapshot, identities: &[Arc<X509SvidItem>]) -> X509BundlesResponse {
    let mut bundles: HashMap<String, Vec<u8>> = federated_bundles(snapshot, identities.iter().map(|i| i.federates_with.as_slice()))
        .into_iter()
        .map(|(td, b)| (td.id_string(), concat_der(&b.x509_authorities)))
        .collect();
    bundles.insert(snapshot.trust_domain.id_string(), concat_der(&snapshot.bundle.x509_authorities));
    X509BundlesResponse { crl: Vec::new(), bundles }
}

fn jwt_bundles_response(snapshot: &Snapshot, identities: &[Arc<X509SvidItem>]) -> JwtBundlesResponse {
    let mut bundles: HashMap<String, Vec<u8>> = federated_bundles(snapshot, identities.iter().map(|i| i.federates_with.as_slice()))
        .into_iter()
        .map(|(td, b)| (td.id_string(), b.jwt_jwks_json().into_bytes()))
        .collect();
    bundles.insert(snapshot.trust_domain.id_string(), snapshot.bundle.jwt_jwks_json().into_bytes());
    JwtBundlesResponse { bundles }
}

/// The state of one open stream.
struct Follow<M> {
    rx: SnapshotRx,
    stop: watch::Receiver<bool>,
    /// The caller's selectors, attested when the stream was opened (as SPIRE does: a stream
    /// belongs to the process that opened it).
    selectors: Vec<Selector>,
    compose: Compose<M>,
    /// The first message, not yet sent.
    pending: Option<M>,
    /// The last message sent. Messages are compared rather than their encodings: prost writes
    /// map fields in `HashMap` order, which differs between two equal maps.
    last: Option<M>,
    /// The stream has sent its final status.
    done: bool,
    /// Keeps the caller's SVIDs cached while the stream is open.
    _hold: Hold,
}

/// The messages of one stream: the first one, then one per change of what the caller sees.
fn updates<M>(follow: Follow<M>) -> UpdateStream<M>
where
    M: PartialEq + Clone + Send + Sync + 'static,
{
    Box::pin(futures::stream::unfold(follow, |mut st| async move {
        if let Some(first) = st.pending.take() {
            st.last = Some(first.clone());
            return Some((Ok(first), st));
        }
        if st.done {
            return None;
        }
        let item = next_update(&mut st).await;
        if item.is_err() {
            st.done = true;
        }
        Some((item, st))
    }))
}

/// Waits for the next message worth sending, or the status that ends the stream.
async fn next_update<M: PartialEq + Clone>(st: &mut Follow<M>) -> Result<M, Status> {
    loop {
        tokio::select! {
            // `Err` means the server is gone altogether, which also ends the stream.
            _ = st.stop.wait_for(|stopped| *stopped) => {
                return Err(Status::from(WorkloadError::Unavailable("workload API is shutting down".into())));
            }
            changed = st.rx.changed() => {
                if changed.is_err() {
                    return Err(Status::from(WorkloadError::Unavailable("the agent's cache is no longer updated".into())));
                }
            }
        }
        // The watch only keeps the newest snapshot, so a burst of changes is sent once.
        let Some(snapshot) = st.rx.borrow_and_update().clone() else {
            continue;
        };
        let identities = caller_identities(&snapshot, &st.selectors);
        if identities.is_empty() {
            tracing::info!(selectors = ?st.selectors, "workload lost its last identity; ending stream");
            return Err(WorkloadError::NoIdentity.into());
        }
        let message = (st.compose)(&snapshot, &identities);
        if st.last.as_ref() != Some(&message) {
            st.last = Some(message.clone());
            return Ok(message);
        }
    }
}

/// A JSON object as a `google.protobuf.Struct`, the way protojson maps it (numbers become
/// doubles).
fn json_object_to_struct(object: serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct { fields: object.into_iter().map(|(k, v)| (k, json_to_value(v))).collect() }
}

fn json_to_value(value: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(b),
        // Without serde_json's arbitrary precision every number has an f64 form; the string
        // fallback only keeps this total.
        Value::Number(n) => n.as_f64().map_or_else(|| Kind::StringValue(n.to_string()), Kind::NumberValue),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue { values: items.into_iter().map(json_to_value).collect() }),
        Value::Object(object) => Kind::StructValue(json_object_to_struct(object)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests;
