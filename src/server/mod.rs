//! `cairn server`: assembly of datastore, key manager, upstream authority, CA manager and the
//! gRPC services, and the `run(listeners, shutdown)` loop.

pub mod prune;
pub mod tls;
pub mod upstream_sync;

pub use upstream_sync::UpstreamStatus;

use crate::api::{ApiState, Svc};
use crate::ca::{CaConfig, CaManager};
use crate::config::server::ServerConfig;
use crate::datastore::{Change, Datastore};
use crate::net::{ConnLimits, Registry};
use crate::wire::pb::spire::api::server as spb;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tls::TlsState;
use tokio::net::{TcpListener, UnixListener};

/// The key manager and the upstream authority (if any) a server signs with.
type KeyCustody = (Arc<dyn crate::keymanager::KeyManager>, Option<Arc<dyn crate::upstream::UpstreamAuthority>>);

/// Largest gRPC message accepted (bounds memory per request; SPIRE's clients stay far below).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The datastore could not be opened.
    #[error("datastore: {0}")]
    Datastore(#[from] crate::datastore::DatastoreError),
    /// The key manager could not be opened.
    #[error("key manager: {0}")]
    KeyManager(#[from] crate::keymanager::KeyManagerError),
    /// The upstream authority is misconfigured.
    #[error("upstream authority: {0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    /// The CA could not be prepared.
    #[error("CA: {0}")]
    Ca(#[from] crate::ca::CaError),
    /// Sockets, files.
    #[error("{0}")]
    Io(String),
}

/// A built server, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    state: Arc<ApiState>,
    ca_manager: Arc<CaManager>,
    tls: Arc<TlsState>,
}

/// A stable id for this server's journal row, kept in `data_dir` so servers sharing a
/// database (HA) each find their own journal.
fn server_instance_id(data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join("server_id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            crate::fsutil::write_private_atomic(&path, id.as_bytes()).map_err(|e| ServerError::Io(format!("{}: {e}", path.display())))?;
            Ok(id)
        }
    }
}

impl Server {
    /// data_dir holds the server id, status and usually the datastore and keys: owner only.
    fn prepare_data_dir(config: &ServerConfig) -> Result<(), ServerError> {
        crate::fsutil::create_dir_all_mode(&config.data_dir, 0o700)
            .map_err(|e| ServerError::Io(format!("data_dir {}: {e}", config.data_dir.display())))
    }

    /// Opens everything the config names and brings up the CA (minting or resuming it).
    ///
    /// # Errors
    /// The first component that cannot start, with the reason.
    pub async fn build(config: ServerConfig) -> Result<Self, ServerError> {
        let keys = Self::open_key_custody(&config)?;
        Self::prepare_data_dir(&config)?;
        let datastore = crate::datastore::sql::open(
            &config.datastore.database_type,
            &config.datastore.connection_string,
            config.datastore.ro_connection_string.as_deref(),
            &config.datastore.settings,
        )
        .await?;
        Self::assemble(config, datastore, keys).await
    }

    /// The key manager and the upstream authority, opened before anything is written: a
    /// wrong PIN, a missing token or an unusable upstream key leaves no datastore behind.
    fn open_key_custody(config: &ServerConfig) -> Result<KeyCustody, ServerError> {
        let key_manager = crate::keymanager::build(&config.key_manager)?;
        let upstream = crate::upstream::build(config.upstream.as_ref(), &config.trust_domain)?;
        Ok((key_manager, upstream))
    }

    /// [`Server::build`] on a datastore the caller opened (and perhaps wrapped, as the
    /// benchmarks do to count datastore calls) instead of the one the config names.
    ///
    /// # Errors
    /// As [`Server::build`].
    pub async fn build_with_datastore(config: ServerConfig, datastore: Arc<dyn Datastore>) -> Result<Self, ServerError> {
        let keys = Self::open_key_custody(&config)?;
        Self::prepare_data_dir(&config)?;
        Self::assemble(config, datastore, keys).await
    }

    /// Everything after the keys, the data directory and the datastore.
    async fn assemble(
        config: ServerConfig,
        datastore: Arc<dyn Datastore>,
        (key_manager, upstream): KeyCustody,
    ) -> Result<Self, ServerError> {
        let ca_config = CaConfig {
            trust_domain: config.trust_domain.clone(),
            ca_ttl: config.ca_ttl,
            default_x509_svid_ttl: config.default_x509_svid_ttl,
            default_jwt_svid_ttl: config.default_jwt_svid_ttl,
            ca_key_type: config.ca_key_type,
            jwt_key_type: config.jwt_key_type,
            ca_subject: config.ca_subject.clone(),
            jwt_issuer: config.jwt_issuer.clone(),
            journal_key: server_instance_id(&config.data_dir)?,
            jwt_publish_grace: config.jwt_publish_grace,
            disable_jwt_svids: config.disable_jwt_svids,
            ca_rotation_interval: config.ca_rotation_interval,
        };
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        if config.disable_jwt_svids {
            tracing::info!("JWT-SVID profile is disabled");
        }
        let ca_manager = Arc::new(CaManager::new(ca_config, key_manager, upstream.clone(), Arc::clone(&datastore)));
        ca_manager.initialize(crate::now_unix()).await?;
        let tls = Arc::new(
            TlsState::new(config.trust_domain.clone(), ca_manager.ca(), config.ca_key_type, config.default_x509_svid_ttl)
                .map_err(|e| ServerError::Io(e.to_string()))?,
        );
        tls.rotate_if_needed(crate::now_unix()).await?;
        if let Some(b) = datastore.get_bundle(&config.trust_domain).await? {
            tls.set_roots(&b.x509_authorities);
        }
        tls.set_admin_ids(&config.admin_ids);
        refresh_foreign_admin_roots(&tls, datastore.as_ref()).await;
        let entry_cache = Arc::new(
            crate::datastore::entrycache::EntryCache::new(config.trust_domain.clone()).map_err(|e| ServerError::Io(e.to_string()))?,
        );
        entry_cache.reload(datastore.as_ref()).await?;
        // Join tokens are built in, as in SPIRE: a `NodeAttestor "join_token"` block is accepted but
        // not required (SPIRE's own suites and walk-throughs rely on that).
        let mut attestors = crate::attest::ServerAttestorsConfig { join_token: true, x509pop: None };
        if let Some(x) = &config.x509pop {
            let mut roots = Vec::new();
            for p in &x.ca_bundle_paths {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ServerError::Io(format!("NodeAttestor x509pop ca_bundle_path {}: {e}", p.display())))?;
                roots.extend(
                    crate::spiffe::parse_pem_certs(&text)
                        .map_err(|e| ServerError::Io(format!("NodeAttestor x509pop ca_bundle_path {}: {e}", p.display())))?,
                );
            }
            attestors.x509pop =
                Some(crate::attest::x509pop::X509PopServerConfig { roots, agent_path_template: x.agent_path_template.clone() });
        }
        let attestors = crate::attest::ServerAttestors::new(
            &attestors,
            &config.trust_domain,
            Arc::new(crate::api::attest::DatastoreTokens(Arc::clone(&datastore))),
        );
        // Relationships from the config file and from the Trust Domain API.
        let federation = crate::federation::client::Refresher::new(Arc::clone(&datastore), config.federation.federates_with.clone());
        let state = Arc::new(ApiState {
            trust_domain: config.trust_domain.clone(),
            datastore,
            ca: ca_manager.ca(),
            ca_manager: Arc::clone(&ca_manager),
            admin_ids: config.admin_ids.clone(),
            ca_ttl: config.ca_ttl,
            ca_subject: config.ca_subject.clone(),
            started: std::time::Instant::now(),
            server_svid: Arc::clone(&tls.chain_out),
            entry_cache,
            agent_ttl: config.agent_ttl,
            attestors,
            upstream,
            upstream_status: Arc::new(std::sync::RwLock::new(UpstreamStatus::default())),
            watchers: Arc::default(),
            agent_streams: Arc::default(),
            attest_limiter: crate::api::limiter::FailureLimiter::default(),
            federation,
        });
        Ok(Self { config, state, ca_manager, tls })
    }

    /// The API state (tests and benchmarks use it in process).
    #[must_use]
    pub fn state(&self) -> Arc<ApiState> {
        Arc::clone(&self.state)
    }

    /// Serves the admin socket, the TLS gRPC port and (optionally) the health listener until
    /// `shutdown` resolves, while rotating the CA and the server SVID in the background.
    ///
    /// # Errors
    /// A listener failing.
    pub async fn run(
        self,
        tcp: TcpListener,
        uds: UnixListener,
        health: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let mut tasks = tokio::task::JoinSet::new();

        // CA rotation.
        let interval = Duration::from_secs(u64::try_from(self.config.ca_rotation_interval).unwrap_or(10));
        tasks.spawn(Arc::clone(&self.ca_manager).run(interval, stopped(stop_rx.clone())));

        // A downstream tier keeps its bundle in step with the upstream's. A CA on disk has no
        // bundle to follow, so a root tier (self-signed or under a disk CA) runs no sync loop.
        if let Some(up) = self.state.upstream.clone().filter(|u| u.is_trust_domain_tier()) {
            let sync = upstream_sync::run(
                up,
                Arc::clone(&self.state),
                Duration::from_secs(u64::try_from(self.config.upstream_poll_interval).unwrap_or(5)),
                self.config.upstream_bundle_push,
                stopped(stop_rx.clone()),
            );
            tasks.spawn(sync);
        }

        let nofile = crate::net::raise_nofile_limit();
        // Federation: the bundle endpoint, and one refresher loop per foreign trust domain.
        // Neither holds up start-up: a partner that is down is only retried (SPIRE #4445).
        let refresher = Arc::clone(&self.state.federation);
        tasks.spawn(Arc::clone(&refresher).run(stop_rx.clone()));
        if let Some(be) = self.config.federation.bundle_endpoint.clone() {
            let addr = format!("{}:{}", be.address, be.port);
            let listener = TcpListener::bind(&addr).await.map_err(|e| ServerError::Io(format!("bundle endpoint {addr}: {e}")))?;
            let tls = match &be.profile {
                crate::federation::EndpointProfile::HttpsSpiffe => self.tls.bundle_endpoint_config(),
                crate::federation::EndpointProfile::HttpsWeb { cert_file_path, key_file_path, file_sync_interval } => {
                    let files = crate::federation::endpoint::FileCert::open(cert_file_path, key_file_path).map_err(|e| {
                        ServerError::Io(format!("server.federation.bundle_endpoint.profile \"https_web\".serving_cert_file.{e}"))
                    })?;
                    let every = Duration::from_secs(u64::try_from(*file_sync_interval).unwrap_or(3600).max(1));
                    tasks.spawn(Arc::clone(&files).watch(every, stopped(stop_rx.clone())));
                    files.server_config()
                }
                crate::federation::EndpointProfile::HttpsWebAcme(acme) => {
                    let cert = crate::federation::acme::AcmeCert::open(acme.clone(), &self.config.data_dir)
                        .map_err(|e| ServerError::Io(format!("server.federation.bundle_endpoint ACME: {e}")))?;
                    tasks.spawn(Arc::clone(&cert).run(stopped(stop_rx.clone())));
                    cert.server_config()
                }
            }
            .map_err(|e| ServerError::Io(format!("bundle endpoint TLS: {e}")))?;
            tracing::info!(addr = %listener.local_addr().map_or(addr, |a| a.to_string()), refresh_hint = be.refresh_hint, "Serving bundle endpoint");
            let source: Arc<dyn crate::federation::endpoint::BundleSource> = Arc::new(OwnBundle(Arc::clone(&self.state)));
            let responder = Arc::new(crate::federation::endpoint::BundleResponder::new(source, be.refresh_hint));
            tasks.spawn(crate::federation::endpoint::serve(
                listener,
                Some(Arc::new(tls)),
                responder,
                "bundle endpoint",
                nofile,
                stopped(stop_rx.clone()),
            ));
        }

        // OIDC discovery and JWKS for JWT consumers.
        if let Some(oc) = self.config.oidc.clone() {
            let addr = format!("{}:{}", oc.address, oc.port);
            let listener = TcpListener::bind(&addr).await.map_err(|e| ServerError::Io(format!("oidc_discovery {addr}: {e}")))?;
            let tls = match &oc.tls {
                Some((cert, key, every)) => {
                    let files = crate::federation::endpoint::FileCert::open(cert, key)
                        .map_err(|e| ServerError::Io(format!("server.oidc_discovery.serving_cert_file.{e}")))?;
                    let every = Duration::from_secs(u64::try_from(*every).unwrap_or(60).max(1));
                    tasks.spawn(Arc::clone(&files).watch(every, stopped(stop_rx.clone())));
                    Some(Arc::new(files.server_config().map_err(|e| ServerError::Io(format!("oidc_discovery TLS: {e}")))?))
                }
                None => None,
            };
            tracing::info!(addr = %listener.local_addr().map_or(addr, |a| a.to_string()), issuer = %oc.issuer, https = tls.is_some(), "Serving OIDC discovery");
            let source: Arc<dyn crate::federation::endpoint::BundleSource> = Arc::new(OwnBundle(Arc::clone(&self.state)));
            let responder = Arc::new(crate::federation::endpoint::OidcResponder::new(source, oc.issuer));
            tasks.spawn(crate::federation::endpoint::serve(listener, tls, responder, "oidc discovery", nofile, stopped(stop_rx.clone())));
        }

        // A status file for `cairn tiers status` (and operators): slots, bundle, upstream sync,
        // federation.
        {
            let state = Arc::clone(&self.state);
            let path = self.config.data_dir.join("status.json");
            let stop = stopped(stop_rx.clone());
            tasks.spawn(async move {
                tokio::pin!(stop);
                loop {
                    write_status(&state, &path, &refresher).await;
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            });
        }

        // The agent-facing entry cache follows datastore changes.
        tasks.spawn(Arc::clone(&self.state.entry_cache).run(
            Arc::clone(&self.state.datastore),
            Duration::from_secs(300),
            stopped(stop_rx.clone()),
        ));

        // Expired registration entries are deleted periodically (they are refused before that).
        tasks.spawn(prune::run(
            Arc::clone(&self.state.datastore),
            Duration::from_secs(u64::try_from(self.config.entry_prune_interval).unwrap_or(300)),
            stopped(stop_rx.clone()),
        ));

        // Server SVID rotation and trust-bundle refresh for client verification.
        {
            let tls = Arc::clone(&self.tls);
            let ds = Arc::clone(&self.state.datastore);
            let cache = Arc::clone(&self.state.entry_cache);
            let td = self.config.trust_domain.clone();
            let mut changes = ds.watch_changes();
            let stop = stopped(stop_rx.clone());
            tasks.spawn(async move {
                tokio::pin!(stop);
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                let mut moves = crate::clock::moves();
                loop {
                    // A bundle change is read from the datastore at once; the periodic tick
                    // (SVID half-life checks) uses the in-memory copy and costs no query.
                    let changed = tokio::select! {
                        () = &mut stop => return,
                        _ = tick.tick() => false,
                        () = moves.next() => false,
                        c = changes.recv() => if matches!(c, Ok(Change::Bundle) | Err(_)) { true } else { continue },
                    };
                    if let Err(e) = tls.rotate_if_needed(crate::now_unix()).await {
                        tracing::warn!(error = %e, "server SVID rotation failed");
                    }
                    if !changed {
                        if let Some(b) = cache.bundle() {
                            tls.set_roots(&b.x509_authorities);
                        }
                        continue;
                    }
                    match ds.get_bundle(&td).await {
                        Ok(Some(b)) => tls.set_roots(&b.x509_authorities),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "reading the bundle for TLS failed"),
                    }
                    refresh_foreign_admin_roots(&tls, ds.as_ref()).await;
                }
            });
        }

        // Admin socket: every caller is local.
        {
            let svc = Svc::new(Arc::clone(&self.state), true);
            // SPIRE logs this once per listener; operators (and SPIRE's suites) count the lines.
            let addr = uds.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.display().to_string())).unwrap_or_default();
            tracing::info!(network = "unix", address = %addr, "Starting Server APIs");
            let incoming = crate::net::uds_incoming(uds, Registry::new(admin_limits(nofile)));
            let router = grpc_router(&svc)
                .add_service(spb::debug::v1::debug_server::DebugServer::new(svc.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
                .add_service(
                    crate::wire::pb::grpc::health::v1::health_server::HealthServer::new(ServerHealth(Arc::clone(&self.state)))
                        .max_decoding_message_size(MAX_MESSAGE_BYTES),
                );
            let stop = stopped(stop_rx.clone());
            tasks.spawn(async move {
                if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
                    tracing::error!(error = %e, "admin socket server failed");
                }
            });
        }

        // TLS gRPC port.
        {
            let svc = Svc::new(Arc::clone(&self.state), false);
            let router = grpc_router(&svc);
            // Agents reach the server here only; without it cairn agents poll as SPIRE's do.
            let router = if self.config.agent_push {
                router.add_service(
                    crate::wire::pb::cairn::api::agentsync::v1::agent_sync_server::AgentSyncServer::new(svc.clone())
                        .max_decoding_message_size(MAX_MESSAGE_BYTES),
                )
            } else {
                router
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(self.tls.server_config().map_err(|e| ServerError::Io(e.to_string()))?));
            tracing::info!(network = "tcp", address = %tcp.local_addr().map(|a| a.to_string()).unwrap_or_default(), "Starting Server APIs");
            let incoming = crate::net::tls_incoming(tcp, acceptor, Registry::new(tls_limits(nofile)));
            let stop = stopped(stop_rx.clone());
            tasks.spawn(async move {
                if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
                    tracing::error!(error = %e, "TLS gRPC server failed");
                }
            });
        }

        if let (Some(listener), Some(h)) = (health, self.config.health.clone()) {
            let state = Arc::clone(&self.state);
            tasks.spawn(crate::telemetry::health::serve(listener, h, state, nofile, stopped(stop_rx.clone())));
        }

        tracing::info!(trust_domain = %self.config.trust_domain, "cairn server is serving");
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
            tracing::warn!("some tasks did not stop within 10s");
        }
        Ok(())
    }
}

/// `grpc.health.v1.Health` on the admin socket, which `spire-server healthcheck` calls (SPIRE
/// registers it there only). SERVING once the tier can do its job: a bundle, an X.509 CA and,
/// unless JWT-SVIDs are disabled, an active JWT key, so a passing healthcheck means `x509 mint`
/// and `jwt mint` succeed.
struct ServerHealth(Arc<ApiState>);

#[tonic::async_trait]
impl crate::wire::pb::grpc::health::v1::health_server::Health for ServerHealth {
    async fn check(
        &self,
        req: tonic::Request<crate::wire::pb::grpc::health::v1::HealthCheckRequest>,
    ) -> Result<tonic::Response<crate::wire::pb::grpc::health::v1::HealthCheckResponse>, tonic::Status> {
        use crate::wire::pb::grpc::health::v1::health_check_response::ServingStatus;
        if !req.get_ref().service.is_empty() {
            return Err(tonic::Status::invalid_argument("per-service health is not supported"));
        }
        let ready = crate::telemetry::health::Readiness::ready(self.0.as_ref()).await;
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        Ok(tonic::Response::new(crate::wire::pb::grpc::health::v1::HealthCheckResponse { status: status as i32 }))
    }
}

/// What `status.json` holds.
#[derive(Debug, serde::Serialize)]
struct StatusFile {
    trust_domain: String,
    updated_at: i64,
    /// The configured `ca_ttl`, seconds.
    ca_ttl: i64,
    /// What the active X.509 CA actually lives (less than `ca_ttl` when capped upstream).
    effective_ca_ttl: Option<i64>,
    slots: Vec<crate::ca::manager::SlotStatus>,
    ca_chain: Vec<String>,
    bundle_sequence: u64,
    x509_roots: usize,
    jwt_key_ids: Vec<String>,
    upstream: Option<UpstreamStatus>,
    /// Each federation relationship: last refresh, the foreign bundle's sequence, last error.
    federation: Vec<crate::federation::client::RelationshipStatus>,
    /// The local X.509 authorities (active, prepared, old), as `localauthority x509 show`.
    x509_authorities: crate::ca::AuthorityStates,
    /// The local JWT authorities, as `localauthority jwt show`.
    jwt_authorities: crate::ca::AuthorityStates,
    /// Subject key IDs of the roots the bundle marks tainted.
    tainted_x509: Vec<String>,
    /// Key IDs of the JWT keys the bundle marks tainted.
    tainted_jwt: Vec<String>,
}

/// The bundle endpoint serves the tier's bundle as the entry cache holds it (kept current by
/// datastore change events), so a GET costs no datastore round trip, and the same `Arc` until
/// the bundle changes, so it is serialized once per change.
struct OwnBundle(Arc<ApiState>);

#[async_trait::async_trait]
impl crate::federation::endpoint::BundleSource for OwnBundle {
    async fn bundle(&self) -> Result<Arc<crate::spiffe::Bundle>, String> {
        self.0.entry_cache.bundle().ok_or_else(|| "trust domain bundle not found".to_owned())
    }
}

async fn write_status(state: &ApiState, path: &Path, refresher: &crate::federation::client::Refresher) {
    let bundle = state.entry_cache.bundle();
    let chain = state
        .ca
        .x509_authority()
        .map(|a| {
            std::iter::once(a.cert_der.clone())
                .chain(a.chain.iter().skip(1).cloned())
                .filter_map(|d| {
                    x509_parser::parse_x509_certificate(&d)
                        .ok()
                        .map(|(_, c)| format!("{} (issuer {}; until {})", c.subject(), c.issuer(), c.validity().not_after))
                })
                .collect()
        })
        .unwrap_or_default();
    let slots = state.ca_manager.status().await;
    let effective_ca_ttl = slots.iter().find(|s| s.kind == "x509" && s.role == "current").map(|s| s.not_after - s.issued_at);
    let status = StatusFile {
        trust_domain: state.trust_domain.to_string(),
        updated_at: crate::now_unix(),
        ca_ttl: state.ca_ttl,
        effective_ca_ttl,
        slots,
        ca_chain: chain,
        bundle_sequence: bundle.as_ref().map_or(0, |b| b.sequence_number),
        x509_roots: bundle.as_ref().map_or(0, |b| b.x509_authorities.len()),
        jwt_key_ids: bundle.as_ref().map(|b| b.jwt_authorities.iter().map(|k| k.key_id.clone()).collect()).unwrap_or_default(),
        upstream: state
            .upstream
            .as_ref()
            .filter(|u| u.is_trust_domain_tier())
            .and_then(|_| state.upstream_status.read().ok().map(|s| s.clone())),
        federation: refresher.status(),
        x509_authorities: state.ca_manager.x509_states().await,
        jwt_authorities: state.ca_manager.jwt_states().await,
        tainted_x509: bundle
            .as_ref()
            .map(|b| b.tainted_x509.iter().filter_map(|d| crate::spiffe::x509::subject_key_id_hex(d)).collect())
            .unwrap_or_default(),
        tainted_jwt: bundle
            .as_ref()
            .map(|b| b.jwt_authorities.iter().filter(|k| k.tainted).map(|k| k.key_id.clone()).collect())
            .unwrap_or_default(),
    };
    if let Ok(text) = serde_json::to_vec_pretty(&status) {
        let _ = crate::fsutil::write_private_atomic(path, &text);
    }
}

/// The admin socket's limits: callers are local administrators and scripts; a quarter of the
/// descriptors, any of them for one uid (usually every caller is root).
fn admin_limits(nofile: u64) -> ConnLimits {
    let max = crate::net::fd_budget(nofile, 20, 4096);
    ConnLimits {
        name: "admin socket",
        first_request_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
        max_connections: max,
        max_per_peer: max,
    }
}

/// The TLS port's limits: agents and downstream tiers, most of the descriptors, half at most
/// for one address. Agents sync every few seconds, so two idle minutes means gone.
fn tls_limits(nofile: u64) -> ConnLimits {
    let max = crate::net::fd_budget(nofile, 55, 100_000);
    ConnLimits {
        name: "TLS port",
        first_request_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
        max_connections: max,
        max_per_peer: (max / 2).max(8),
    }
}

/// Re-reads the bundles of the trust domains foreign `admin_ids` belong to, for the TLS port's
/// client verification.
async fn refresh_foreign_admin_roots(tls: &TlsState, ds: &dyn Datastore) {
    for td in tls.foreign_admin_trust_domains() {
        match ds.get_bundle(&td).await {
            Ok(b) => tls.set_foreign_roots(&td, b.as_ref().map_or(&[][..], |b| &b.x509_authorities[..])),
            Err(e) => tracing::warn!(error = %e, trust_domain = %td, "reading a foreign admin's bundle for TLS failed"),
        }
    }
}

type GrpcRouter = tonic::transport::server::Router<tower::layer::util::Stack<crate::net::ActivityLayer, tower::layer::util::Identity>>;

fn grpc_router(svc: &Svc) -> GrpcRouter {
    let m = MAX_MESSAGE_BYTES;
    crate::net::grpc_server()
        .max_connection_age(Duration::from_secs(180))
        .add_service(spb::bundle::v1::bundle_server::BundleServer::new(svc.clone()).max_decoding_message_size(m))
        .add_service(spb::entry::v1::entry_server::EntryServer::new(svc.clone()).max_decoding_message_size(m))
        .add_service(spb::svid::v1::svid_server::SvidServer::new(svc.clone()).max_decoding_message_size(m))
        .add_service(spb::agent::v1::agent_server::AgentServer::new(svc.clone()).max_decoding_message_size(m))
        .add_service(spb::trustdomain::v1::trust_domain_server::TrustDomainServer::new(svc.clone()).max_decoding_message_size(m))
        .add_service(spb::localauthority::v1::local_authority_server::LocalAuthorityServer::new(svc.clone()).max_decoding_message_size(m))
        .add_service(spb::logger::v1::logger_server::LoggerServer::new(svc.clone()).max_decoding_message_size(m))
        .add_service(
            crate::wire::pb::cairn::api::bundlewatch::v1::bundle_watch_server::BundleWatchServer::new(svc.clone())
                .max_decoding_message_size(m),
        )
}

/// Binds the admin socket: creates its directory, removes a stale socket left by a crashed
/// server, and refuses to steal one a live server is using.
///
/// Modes follow SPIRE's server (`pkg/server/endpoints/endpoints_posix.go`): the directory is
/// created 0750 and the socket set to 0770, so the server's user and group can call the admin
/// API and nobody else can reach it. Unlike SPIRE, the directory mode is set exactly rather
/// than left to the umask.
///
/// # Errors
/// The socket is in use or cannot be created.
pub async fn bind_admin_socket(path: &Path) -> Result<UnixListener, ServerError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::create_dir_all_mode(dir, 0o750)
            .map_err(|e| ServerError::Io(format!("socket_path directory {}: {e}", dir.display())))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::Io(format!("socket_path {} is in use by a running server", path.display())));
        }
        std::fs::remove_file(path).map_err(|e| ServerError::Io(format!("removing stale socket {}: {e}", path.display())))?;
    }
    let l = UnixListener::bind(path).map_err(|e| ServerError::Io(format!("socket_path {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o770))
        .map_err(|e| ServerError::Io(format!("socket_path {}: {e}", path.display())))?;
    Ok(l)
}
