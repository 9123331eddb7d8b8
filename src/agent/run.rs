//! `cairn agent run`: config -> attestation -> sync loop + Workload API, until a signal.

use super::client::ServerTrust;
use super::manager::{Agent, AgentSettings, NodeAttestation};
use super::unix_attestor::{self, PeerCred, UnixAttestorConfig};
use super::workload::{self, CallerInfo, WorkloadApi};
use crate::config::agent::{
    AgentConfig, AgentKeyManagerConfig, NodeAttestorConfig, TrustBundleFormat, TrustBundleSource, WorkloadAttestorConfig,
};
use crate::spiffe::Bundle;
use crate::spiffe::Selector;
use std::sync::Arc;
use std::time::Duration;

async fn bootstrap_roots(config: &AgentConfig) -> Result<ServerTrust, String> {
    match &config.trust_bundle {
        TrustBundleSource::InsecureBootstrap => {
            tracing::warn!(
                "insecure_bootstrap is set: the server's identity is checked but its certificate chain is not, until the first bundle arrives"
            );
            Ok(ServerTrust::InsecureBootstrap)
        }
        TrustBundleSource::Path(p, format) => {
            let data = std::fs::read(p).map_err(|e| format!("agent.trust_bundle_path {}: {e}", p.display()))?;
            let roots = match format {
                TrustBundleFormat::Pem => {
                    let text = String::from_utf8(data).map_err(|_| format!("agent.trust_bundle_path {}: not a PEM file", p.display()))?;
                    crate::spiffe::parse_pem_certs(&text).map_err(|e| format!("agent.trust_bundle_path {}: {e}", p.display()))?
                }
                TrustBundleFormat::Spiffe => {
                    Bundle::from_spiffe_json(config.trust_domain.clone(), &data)
                        .map_err(|e| format!("agent.trust_bundle_path {}: {e}", p.display()))?
                        .x509_authorities
                }
            };
            if roots.is_empty() {
                return Err(format!("agent.trust_bundle_path {}: no certificates", p.display()));
            }
            Ok(ServerTrust::Roots(roots))
        }
        TrustBundleSource::Url(u, format) => Ok(ServerTrust::Roots(
            super::bootstrap::fetch_roots(u, matches!(format, TrustBundleFormat::Spiffe), &config.trust_domain).await?,
        )),
    }
}

fn node_attestation(config: &AgentConfig) -> Result<NodeAttestation, String> {
    match &config.node_attestor {
        NodeAttestorConfig::JoinToken => Ok(NodeAttestation::JoinToken(config.join_token.clone())),
        NodeAttestorConfig::X509Pop { private_key_path, certificate_path, intermediates_path } => {
            crate::attest::x509pop::load_agent_files(private_key_path, certificate_path, intermediates_path.as_deref())
                .map_err(|e| format!("plugins.NodeAttestor.x509pop.plugin_data.{e}"))
        }
    }
}

/// Binds the Workload API socket. The socket is world-connectable on purpose: callers are
/// identified by workload attestation, not by file permissions. As SPIRE's agent does
/// (`cmd/spire-agent/cli/run/run_posix.go` creates the directory 0755,
/// `pkg/agent/endpoints/endpoints_posix.go` sets the socket to 0777), a directory cairn creates
/// for it is 0755: every local uid must reach the socket, nobody else may add files there.
async fn bind_workload_socket(path: &std::path::Path) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::create_dir_all_mode(dir, 0o755).map_err(|e| format!("agent.socket_path directory {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(format!("agent.socket_path {} is in use by a running agent", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("removing stale socket {}: {e}", path.display()))?;
    }
    // The socket file appears at bind(2) but takes connections only after listen(2); a client
    // that waits for the file (scripts, tests, SPIRE's own `api watch` loops) could connect in
    // between and be refused. So the socket is bound and made world-connectable under a
    // private name in the same directory, and renamed into place ready.
    let staging = path.with_file_name(format!(".{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let l = tokio::net::UnixListener::bind(&staging).map_err(|e| format!("agent.socket_path {}: {e}", path.display()))?;
    let ready = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o777)).and_then(|()| std::fs::rename(&staging, path));
    if let Err(e) = ready {
        let _ = std::fs::remove_file(&staging);
        return Err(format!("agent.socket_path {}: {e}", path.display()));
    }
    Ok(l)
}

/// Runs the agent until SIGINT/SIGTERM.
///
/// # Errors
/// A message for the operator (bad files, attestation refused, banned).
pub async fn run(config: AgentConfig) -> Result<(), String> {
    let signal = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    run_until(config, signal).await
}

/// Runs the agent until `shutdown` resolves (tests run agents in process this way).
///
/// # Errors
/// As [`run`].
pub async fn run_until(config: AgentConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), String> {
    // Logging is set up by the caller (`cli::agent`), which owns the log file and SIGUSR2.
    let nofile = crate::net::raise_nofile_limit();
    let trust = bootstrap_roots(&config).await?;
    let attestation = node_attestation(&config)?;
    // SPIRE's agent creates its data_dir at start too; cairn makes it owner-only whatever the
    // umask, as it is where agent state (and usually the disk key manager's directory) lives.
    crate::fsutil::create_dir_all_mode(&config.data_dir, 0o700)
        .map_err(|e| format!("agent.data_dir {}: {e}", config.data_dir.display()))?;
    let state_dir = match &config.key_manager {
        AgentKeyManagerConfig::Memory => None,
        AgentKeyManagerConfig::Disk { directory } => Some(directory.clone()),
    };
    let unix = config.workload_attestors.iter().map(|w| match w {
        WorkloadAttestorConfig::Unix(u) => *u,
    });
    let unix_cfgs: Vec<UnixAttestorConfig> = unix
        .map(|u| UnixAttestorConfig {
            discover_workload_path: u.discover_workload_path,
            workload_size_limit: u.workload_size_limit,
            ..UnixAttestorConfig::default()
        })
        .collect();
    let settings = AgentSettings {
        trust_domain: config.trust_domain.clone(),
        server_addr: format!("{}:{}", config.server_address, config.server_port),
        bootstrap: trust,
        attestation,
        state_dir,
        sync_interval: config.sync_interval,
        x509_svid_cache_max_size: Some(config.x509_svid_cache_max_size),
        jwt_svid_cache_max_size: Some(config.jwt_svid_cache_max_size),
    };
    let agent = Agent::start(settings).await.map_err(|e| e.to_string())?;
    if let Some(id) = agent.agent_id().await {
        tracing::info!(agent_id = %id, "agent identity");
    }
    // First sync before serving, so the first Workload API answer already has SVIDs.
    for attempt in 0..5 {
        match agent.sync_once().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, attempt, "initial sync failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    // The socket appears once the agent has an identity and a first sync, as SPIRE's does.
    let listener = bind_workload_socket(&config.socket_path).await?;
    let attestor = move |c: &CallerInfo| -> Result<Vec<Selector>, workload::WorkloadAttestError> {
        let peer = PeerCred { pid: c.pid, uid: c.uid, gid: c.gid };
        let mut out = Vec::new();
        for cfg in &unix_cfgs {
            for (kind, value) in unix_attestor::attest(&peer, cfg)? {
                out.push(Selector { kind, value });
            }
        }
        Ok(out)
    };
    let api = WorkloadApi::new(Arc::clone(&agent) as Arc<dyn super::cache::WorkloadSource>, Arc::new(attestor));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let serve = tokio::spawn(workload::serve(api, listener, workload::default_limits(nofile), stopped(stop_rx.clone())));
    if let Some(h) = config.health.clone().filter(|h| h.listener_enabled) {
        let addr = format!("{}:{}", h.bind_address, h.bind_port);
        let l = tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("health_checks {addr}: {e}"))?;
        tokio::spawn(crate::telemetry::health::serve(l, h, Arc::clone(&agent), nofile, stopped(stop_rx.clone())));
    }
    if let Some(path) = &config.admin_socket_path {
        let l = super::admin::bind(path).await?;
        tracing::info!(socket = %path.display(), "Starting admin APIs");
        let api = super::admin::AdminApi::new(Arc::clone(&agent));
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = super::admin::serve(api, l, stop).await {
                tracing::error!(error = %e, "agent admin socket server failed");
            }
        });
    }
    let sync = tokio::spawn(Arc::clone(&agent).run(stopped(stop_rx.clone())));
    let socket = config.socket_path.clone();
    tracing::info!(socket = %socket.display(), "Starting agent APIs");
    tokio::pin!(sync);
    let result = tokio::select! {
        () = shutdown => Ok(()),
        r = &mut sync => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        },
    };
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), serve).await;
    let _ = std::fs::remove_file(&socket);
    if let Some(path) = &config.admin_socket_path {
        let _ = std::fs::remove_file(path);
    }
    result
}
