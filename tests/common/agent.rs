//! Running `cairn agent` processes in tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "test code: a failed unwrap is a failed test; each test binary uses part of it"
)]

use super::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestAgent {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
}

pub fn agent_config(dir: &Path, server: &TestServer, node_attestor: &str, join_token: Option<&str>) -> PathBuf {
    agent_config_for(dir, server.port, || server.cli_ok(&["bundle", "show"]), node_attestor, join_token, true)
}

/// `agent_config` for a server known by its port and a way to read its bundle (PEM).
/// `discover_workload_path` makes the unix attestor hash the caller's binary.
pub fn agent_config_for(
    dir: &Path,
    port: u16,
    bundle_pem: impl FnOnce() -> String,
    node_attestor: &str,
    join_token: Option<&str>,
    discover_workload_path: bool,
) -> PathBuf {
    let bundle = dir.join("bootstrap.pem");
    if !bundle.exists() {
        std::fs::write(&bundle, bundle_pem()).unwrap();
    }
    let token = join_token.map(|t| format!("join_token = \"{t}\"")).unwrap_or_default();
    let text = format!(
        r#"
agent {{
    data_dir = "{d}"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{d}/agent.sock"
    trust_bundle_path = "{bundle}"
    trust_domain = "example.org"
    {token}
    experimental {{ sync_interval = "1s" }}
}}
plugins {{
    {node_attestor}
    KeyManager "disk" {{ plugin_data {{ directory = "{d}/keys" }} }}
    WorkloadAttestor "unix" {{ plugin_data {{ discover_workload_path = {discover_workload_path} }} }}
}}
"#,
        d = dir.display(),
        bundle = bundle.display(),
    );
    let path = dir.join("agent.conf");
    std::fs::write(&path, text).unwrap();
    path
}

impl TestAgent {
    pub fn start(dir: &Path, config: PathBuf) -> Self {
        let mut a = Self { dir: dir.to_owned(), socket: dir.join("agent.sock"), config, child: None };
        a.spawn();
        a
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log")).unwrap();
        self.child = Some(
            Command::new(CAIRN).args(["agent", "run", "-config"]).arg(&self.config).stdout(Stdio::null()).stderr(log).spawn().unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("agent exited with {status}:\n{}", self.log());
            }
            if self.socket.exists() {
                return;
            }
            assert!(Instant::now() < deadline, "agent did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c, Duration::from_secs(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn api(&self, args: &[&str]) -> std::process::Output {
        let mut a = vec!["agent", "api"];
        a.extend_from_slice(args);
        let sock = self.socket.display().to_string();
        a.push("-socketPath");
        a.push(&sock);
        Command::new(CAIRN).args(&a).output().unwrap()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn token(server: &TestServer, alias: &str, ttl: &str) -> String {
    let out = server.cli_ok(&["token", "generate", "-spiffeID", alias, "-ttl", ttl]);
    out.trim().strip_prefix("Token: ").unwrap().to_owned()
}

/// A server (with `server_extra` in its `server` block) and one agent attested with a join
/// token aliased `spiffe://example.org/node1`, syncing every `sync_interval`, with one entry
/// `spiffe://example.org/web` for `unix:uid:<uid>` under that alias.
pub fn server_and_agent(tmp: &Path, uid: u32, server_extra: &str, sync_interval: &str) -> (TestServer, TestAgent) {
    let sdir = tmp.join("server");
    std::fs::create_dir(&sdir).unwrap();
    let s = TestServer::start(&sdir, &ServerOpts { extra_server: server_extra.to_owned(), ..ServerOpts::default() });
    let t = token(&s, "spiffe://example.org/node1", "600");
    s.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/node1",
        "-spiffeID",
        "spiffe://example.org/web",
        "-selector",
        &format!("unix:uid:{uid}"),
    ]);
    let adir = tmp.join("agent");
    std::fs::create_dir(&adir).unwrap();
    let config = agent_config(&adir, &s, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t));
    if sync_interval != "1s" {
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains("sync_interval = \"1s\""), "the agent config template changed: {text}");
        std::fs::write(&config, text.replace("sync_interval = \"1s\"", &format!("sync_interval = \"{sync_interval}\""))).unwrap();
    }
    let a = TestAgent::start(&adir, config);
    (s, a)
}

/// A channel to a server's TLS port as an agent before attestation has (server ID checked,
/// chain not: `insecure_bootstrap`).
pub fn bootstrap_channel(port: u16) -> tonic::transport::Channel {
    let server_id = cairn::spiffe::SpiffeId::new("spiffe://example.org/spire/server").unwrap();
    cairn::agent::client::connect(&format!("127.0.0.1:{port}"), cairn::agent::client::ServerTrust::InsecureBootstrap, server_id, None)
        .unwrap()
}

/// One join_token AttestAgent exchange with `csr` for the agent key: the first response, or
/// the refusal.
pub async fn attest_with_join_token(
    ch: &tonic::transport::Channel,
    token: &str,
    csr: Vec<u8>,
) -> Result<cairn::wire::pb::spire::api::server::agent::v1::AttestAgentResponse, tonic::Status> {
    use cairn::wire::pb::spire::api::server::agent::v1 as agentpb;
    use cairn::wire::pb::spire::api::types as pt;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(agentpb::AttestAgentRequest {
        step: Some(agentpb::attest_agent_request::Step::Params(agentpb::attest_agent_request::Params {
            data: Some(pt::AttestationData { r#type: "join_token".into(), payload: token.as_bytes().to_vec() }),
            params: Some(agentpb::AgentX509svidParams { csr }),
        })),
    })
    .await
    .unwrap();
    let mut stream = agentpb::agent_client::AgentClient::new(ch.clone())
        .attest_agent(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    stream.message().await?.ok_or_else(|| tonic::Status::unknown("stream closed without a response"))
}
