//! The agent's admin socket (`admin_socket_path`): SPIRE's agent Debug API (GetInfo) and
//! Logger API (get, set and reset the log level at run time).
//!
//! As in SPIRE the socket is off unless configured, and it may not sit in the Workload API
//! socket's directory (that one is open to every local uid). Unlike SPIRE, cairn makes the
//! socket itself owner-only (0600): the APIs here are for the agent's operator, and the
//! Delegated Identity API, whose callers are other local users, is not served.

use super::manager::Agent;
use crate::net::{ConnLimits, Registry};
use crate::wire::convert::{id_to_proto, log_level_request, logger_to_proto};
use crate::wire::pb::spire::agent::debug::v1 as debugpb;
use crate::wire::pb::spire::api::agent::logger::v1 as loggerpb;
use crate::wire::pb::spire::api::types as pt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The admin socket's services.
#[derive(Clone)]
pub struct AdminApi {
    agent: Arc<Agent>,
    started: Instant,
}

impl AdminApi {
    /// The services for `agent`; uptime counts from now.
    #[must_use]
    pub fn new(agent: Arc<Agent>) -> Self {
        Self { agent, started: Instant::now() }
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[tonic::async_trait]
impl debugpb::debug_server::Debug for AdminApi {
    async fn get_info(&self, _req: Request<debugpb::GetInfoRequest>) -> Result<Response<debugpb::GetInfoResponse>, Status> {
        let info = self.agent.debug_info().await;
        let svid_chain = info
            .svid_chain
            .iter()
            .filter_map(|der| {
                let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
                let id = crate::spiffe::x509::leaf_spiffe_id(der).ok().or_else(|| crate::spiffe::x509::ca_spiffe_id(der).ok().flatten());
                Some(debugpb::get_info_response::Cert {
                    id: id.as_ref().map(id_to_proto),
                    expires_at: c.validity().not_after.timestamp(),
                    subject: c.subject().to_string(),
                })
            })
            .collect();
        Ok(Response::new(debugpb::GetInfoResponse {
            svid_chain,
            uptime: i32::try_from(self.started.elapsed().as_secs()).unwrap_or(i32::MAX),
            svids_count: count(info.x509_svids),
            last_sync_success: info.last_sync_success,
            cached_x509_svids_count: count(info.x509_svids),
            cached_jwt_svids_count: count(info.jwt_svids),
            cached_svidstore_x509_svids_count: 0,
        }))
    }
}

fn logger_answer(r: Result<(&str, &str), String>) -> Result<Response<pt::Logger>, Status> {
    let (current, launch) = r.map_err(Status::internal)?;
    Ok(Response::new(logger_to_proto(current, launch)))
}

#[tonic::async_trait]
impl loggerpb::logger_server::Logger for AdminApi {
    async fn get_logger(&self, _req: Request<loggerpb::GetLoggerRequest>) -> Result<Response<pt::Logger>, Status> {
        tracing::info!("GetLogger Called");
        logger_answer(crate::telemetry::log_levels().ok_or_else(|| "logging is not set up in this process".to_owned()))
    }

    async fn set_log_level(&self, req: Request<loggerpb::SetLogLevelRequest>) -> Result<Response<pt::Logger>, Status> {
        let level = log_level_request(req.get_ref().new_level).map_err(Status::invalid_argument)?;
        tracing::info!(new_log_level = level, "SetLogLevel Called");
        logger_answer(crate::telemetry::set_log_level(Some(level)))
    }

    async fn reset_log_level(&self, _req: Request<loggerpb::ResetLogLevelRequest>) -> Result<Response<pt::Logger>, Status> {
        let r = crate::telemetry::set_log_level(None);
        if let Ok((_, launch)) = &r {
            tracing::info!(launch_log_level = launch, "ResetLogLevel Called");
        }
        logger_answer(r)
    }
}

/// Binds the admin socket owner-only, under a staging name renamed into place once it takes
/// connections (as the Workload API socket is).
///
/// # Errors
/// The directory or socket cannot be made, or a running agent holds it.
pub async fn bind(path: &Path) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let what = |e: &dyn std::fmt::Display| format!("agent.admin_socket_path {}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::create_dir_all_mode(dir, 0o700).map_err(|e| what(&e))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(what(&"in use by a running agent"));
        }
        std::fs::remove_file(path).map_err(|e| what(&e))?;
    }
    let staging = path.with_file_name(format!(".{}.admin.sock", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let l = tokio::net::UnixListener::bind(&staging).map_err(|e| what(&e))?;
    let ready = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600)).and_then(|()| std::fs::rename(&staging, path));
    if let Err(e) = ready {
        let _ = std::fs::remove_file(&staging);
        return Err(what(&e));
    }
    Ok(l)
}

/// Serves the admin APIs on `listener` until `shutdown`.
///
/// # Errors
/// The gRPC server failed.
pub async fn serve(
    api: AdminApi,
    listener: tokio::net::UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let limits = ConnLimits {
        name: "agent admin socket",
        first_request_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
        max_connections: 64,
        max_per_peer: 64,
    };
    crate::net::grpc_server()
        .add_service(debugpb::debug_server::DebugServer::new(api.clone()).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(loggerpb::logger_server::LoggerServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(crate::net::uds_incoming(listener, Registry::new(limits)), shutdown)
        .await
}
