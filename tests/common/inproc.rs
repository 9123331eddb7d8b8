//! cairn's server and agent run inside the test process (`Server::run`, `agent::run::run_until`)
//! rather than as the real binary, for tests that drive time with a manual clock
//! (`cairn::clock`): a separate process would read the system clock. Clients stay what they are
//! elsewhere: the real binary's `cairn server ...` commands on the admin socket, and gRPC on the
//! Workload API socket.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "test code: a failed unwrap is a failed test; each test binary uses part of it"
)]

use super::*;
use cairn::clock::ManualClock;
use cairn::wire::pb::workload as wl;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a settled step may take before the test gives up (a loop stuck elsewhere).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Moves the clock `secs` seconds, one second at a time, letting every loop act on each second.
pub async fn step(clock: &ManualClock, secs: i64) {
    for _ in 0..secs {
        clock.advance(1);
        assert!(clock.settle(SETTLE_TIMEOUT).await, "the server and agent loops did not settle at {}", clock.now());
    }
}

// === logs ===

static LOG_FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match LOG_FILE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
            Some(f) => f.write(buf),
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the logs of every in-process server and agent to `path` (one file for all of them,
/// as they share the process). `CAIRN_LOG` sets the filter, as for the binary.
pub fn log_to(path: &Path) {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,cairn=info"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(|| LogWriter).try_init();
    });
    *LOG_FILE.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::fs::File::create(path).unwrap());
}

/// The last `lines` lines of the log file, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    if let Some(f) = LOG_FILE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
        let _ = f.flush();
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// === InProcServer ===

/// A cairn server on a task of the test's runtime: `Server::build` then `Server::run`.
pub struct InProcServer {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    pub state: Arc<cairn::api::ApiState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcServer {
    /// Builds and runs a server from the same config file `TestServer` writes, then moves the
    /// clock a second at a time until `healthcheck` passes, as time would pass while a real
    /// server gets ready (a downstream's first JWT key waits out its publication grace).
    pub async fn start(dir: &Path, opts: &ServerOpts, clock: &ManualClock) -> Self {
        let port = free_port();
        let path = write_config(dir, port, opts);
        let config = cairn::config::server::ServerConfig::load(&path, false, &cairn::config::server::ServerOverrides::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let uds = cairn::server::bind_admin_socket(&config.socket_path).await.unwrap();
        let server =
            cairn::server::Server::build(config).await.unwrap_or_else(|e| panic!("server in {} did not start: {e}", dir.display()));
        let state = server.state();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(tcp, uds, None, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        let s = Self { dir: dir.to_owned(), socket: dir.join("api.sock"), port, state, stop: Some(tx), task: Some(task) };
        let start = clock.now();
        while !s.cli(&["healthcheck"]).status.success() {
            assert!(clock.now() - start < 30, "server in {} not healthy after 30 s of its clock", dir.display());
            step(clock, 1).await;
        }
        s
    }

    /// `cairn server <args> -socketPath <sock>`, the real binary as a client.
    pub fn cli(&self, args: &[&str]) -> Output {
        tokio::task::block_in_place(|| server_cli(&self.socket, args))
    }

    /// Like `cli` but asserts success and returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        tokio::task::block_in_place(|| server_cli_ok(&self.socket, args))
    }

    /// The id of the active X.509 CA (`status.json`'s `slots`, read at the source).
    pub async fn current_x509_ca(&self) -> Option<String> {
        self.state.ca_manager.status().await.into_iter().find(|s| s.kind == "x509" && s.role == "current").map(|s| s.id)
    }

    /// Stops it and waits until it has.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

impl Drop for InProcServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

// === InProcAgent ===

type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
type WorkloadClient = wl::spiffe_workload_api_client::SpiffeWorkloadApiClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Interceptor>,
>;

/// The header every Workload API request carries.
#[allow(clippy::unnecessary_wraps, reason = "the interceptor signature")]
fn workload_header(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
    Ok(req)
}

/// A cairn agent on a task of the test's runtime (`agent::run::run_until`).
pub struct InProcAgent {
    pub dir: PathBuf,
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl InProcAgent {
    /// Runs the agent of `config` and returns once its Workload API socket is up.
    pub async fn start(dir: &Path, config: &Path) -> Self {
        let cfg = cairn::config::agent::AgentConfig::load(config, false, &cairn::config::agent::AgentOverrides::default())
            .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        let socket = cfg.socket_path.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(cairn::agent::run::run_until(cfg, async {
            let _ = rx.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(!task.is_finished(), "agent in {} stopped: {:?}", dir.display(), task.await);
            assert!(Instant::now() < deadline, "agent in {} did not start", dir.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { dir: dir.to_owned(), socket, stop: Some(tx), task: Some(task) }
    }

    async fn client(&self) -> WorkloadClient {
        let ch = cairn::net::dial::unix_channel(&self.socket, Some(Duration::from_secs(5))).await.unwrap();
        wl::spiffe_workload_api_client::SpiffeWorkloadApiClient::with_interceptor(ch, workload_header as Interceptor)
    }

    /// The first answer of `FetchX509SVID`.
    pub async fn fetch_x509(&self) -> Result<wl::X509svidResponse, tonic::Status> {
        let mut stream = self.client().await.fetch_x509svid(wl::X509svidRequest {}).await?.into_inner();
        stream.message().await?.ok_or_else(|| tonic::Status::unknown("the X509-SVID stream closed without an answer"))
    }

    /// A JWT-SVID for `audience` (the first identity's).
    pub async fn fetch_jwt(&self, audience: &str) -> Result<String, tonic::Status> {
        let resp =
            self.client().await.fetch_jwtsvid(wl::JwtsvidRequest { audience: vec![audience.into()], spiffe_id: String::new() }).await?;
        resp.into_inner().svids.into_iter().next().map(|s| s.svid).ok_or_else(|| tonic::Status::unknown("no JWT-SVID in the answer"))
    }

    /// `ValidateJWTSVID` at this agent.
    pub async fn validate_jwt(&self, audience: &str, token: &str) -> Result<wl::ValidateJwtsvidResponse, tonic::Status> {
        self.client()
            .await
            .validate_jwtsvid(wl::ValidateJwtsvidRequest { audience: audience.into(), svid: token.into() })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Stops it and waits until it has.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

impl Drop for InProcAgent {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

// === certificates ===

/// Concatenated DER certificates (the Workload API's encoding), one DER each.
pub fn split_der(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(data).unwrap();
        out.push(data[..data.len() - rest.len()].to_vec());
        data = rest;
    }
    out
}

/// DER certificates as one PEM file.
pub fn write_pem(path: &Path, ders: &[Vec<u8>]) {
    let text: String = ders.iter().map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone()))).collect();
    std::fs::write(path, text).unwrap();
}

/// `openssl verify -attime <at> -CAfile <ca> [-untrusted <inter>] <cert>`: certificates are
/// judged at the manual clock's time, not the system's.
pub fn openssl_verify_at(at: i64, ca: &Path, untrusted: Option<&Path>, cert: &Path) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["verify", "-attime", &at.to_string(), "-CAfile"]).arg(ca);
    if let Some(u) = untrusted {
        cmd.arg("-untrusted").arg(u);
    }
    cmd.arg(cert);
    tokio::task::block_in_place(|| run(&mut cmd))
}
