//! JWT key propagation across nested tiers: root -> region -> zone, each a separate `cairn
//! server` process, with one workload agent under each tier. A JWT key is published at the
//! leaf tier exactly as a zone-level downstream server prepares one (X509-SVID from the zone
//! agent's Workload API, mTLS to the zone, `PublishJWTAuthority`), and the bench records when
//! its key ID first shows up in every server's bundle (`GetBundle` on the admin socket, every
//! 5 ms) and in every agent's `FetchJWTBundles` stream.
//!
//! Two topologies run side by side, the runs interleaved:
//! - push: servers with the default `upstream_bundle_push = true`, agents `sync_interval = "1s"`;
//! - poll: servers `upstream_bundle_push = false`, `upstream_bundle_poll_interval = "5s"`
//!   (SPIRE's GetBundle poll), agents `sync_interval = "5s"` (SPIRE's default).
//!
//! The three workload agents' sync cycles are offset by a third of the interval from one
//! another, and each key is published at a random point of the cycle.
//!
//! Run with `scripts/bench-propagation.sh` (or `cargo bench --bench propagation`); `--runs N`
//! or `PROPAGATION_RUNS=N` sets the runs per configuration (default 10). Prints figures;
//! asserts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "benchmark driver")]

use cairn::agent::client::{self, ClientIdentity, ServerTrust};
use cairn::wire::pb::spire::api::server::bundle::v1 as bundlepb;
use cairn::wire::pb::spire::api::types::JwtKey;
use cairn::wire::pb::workload::{JwtBundlesRequest, X509svidRequest, spiffe_workload_api_client::SpiffeWorkloadApiClient};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");
const TD: &str = "spiffe://example.org";
const PUBLISHER_ID: &str = "spiffe://example.org/bench/zone-publisher";
/// Observers, in report order: three servers, then the agent under each.
const OBSERVERS: [&str; 6] = ["root", "region", "zone", "agent@root", "agent@region", "agent@zone"];

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process, stopped with SIGTERM (then SIGKILL after 10 s) when dropped.
struct Proc {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(name: &str, args: &[&str], config: &Path, log: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(CAIRN).args(args).arg(config).stdout(Stdio::null()).stderr(file).spawn().unwrap();
        Self { name: name.to_owned(), log, child: Some(child) }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("{} ignored SIGTERM for 10 s; killing it", self.name);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn wait_for(what: &str, timeout: Duration, proc: &mut Proc, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if let Some(status) = proc.exited() {
            panic!("{} exited with {status} while waiting for {what}:\n{}", proc.name, proc.log_tail());
        }
        if ready() {
            return;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}:\n{}", proc.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Server {
    socket: PathBuf,
    port: u16,
}

impl Server {
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(CAIRN).arg("server").args(args).arg("-socketPath").arg(&self.socket).output().unwrap();
        assert!(
            out.status.success(),
            "cairn server {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn token(&self, node: &str) -> String {
        self.cli(&["token", "generate", "-spiffeID", node, "-ttl", "600"]).trim().strip_prefix("Token: ").unwrap().to_owned()
    }

    fn entry(&self, parent: &str, id: &str, downstream: bool) {
        let sel = format!("unix:uid:{}", my_uid());
        let mut args = vec!["entry", "create", "-parentID", parent, "-spiffeID", id, "-selector", &sel];
        if downstream {
            args.push("-downstream");
        }
        self.cli(&args);
    }
}

/// How one topology propagates bundle changes.
#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    label: &'static str,
    /// `server.experimental` settings (besides the key timing ones).
    server_experimental: &'static str,
    sync_interval: Duration,
}

const PUSH: Mode = Mode {
    name: "push",
    label: "cairn push    (BundleWatch; agents sync 1s)",
    server_experimental: "upstream_bundle_push = true",
    sync_interval: Duration::from_secs(1),
};
const POLL: Mode = Mode {
    name: "poll",
    label: "SPIRE polling (GetBundle 5s; agents sync 5s)",
    server_experimental: "upstream_bundle_push = false\n upstream_bundle_poll_interval = \"5s\"",
    sync_interval: Duration::from_secs(5),
};

/// One running root -> region -> zone topology with a workload agent under each tier.
struct Topology {
    mode: Mode,
    /// Root, region, zone.
    servers: Vec<Server>,
    /// Workload agents' sockets under root, region, zone.
    agent_sockets: Vec<PathBuf>,
    /// Every process, in start order (stopped in reverse).
    procs: Vec<Proc>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.stop();
        }
    }
}

impl Topology {
    fn start(base: &Path, mode: Mode) -> Self {
        let mut t = Self { mode, servers: Vec::new(), agent_sockets: Vec::new(), procs: Vec::new() };
        // Long CA lifetimes so no tier rotates during the bench; each tier's ca_ttl stays within
        // 1/6 of the one above, and SVID TTLs within 1/6 of their tier's.
        t.start_server(base, "root", "ca_ttl = \"168h\"\n default_x509_svid_ttl = \"1h\"", None);
        t.start_server(base, "region", "ca_ttl = \"24h\"\n default_x509_svid_ttl = \"1h\"\n default_jwt_svid_ttl = \"5m\"", Some(0));
        t.start_server(base, "zone", "ca_ttl = \"3h\"\n default_x509_svid_ttl = \"30m\"\n default_jwt_svid_ttl = \"5m\"", Some(1));
        // The workload agents' sync cycles are spread evenly over one interval, in both
        // configurations alike: agents started together would sync in lockstep, which makes
        // "every agent has it" look like "one agent has it".
        let first = Instant::now();
        for (i, tier) in ["root", "region", "zone"].into_iter().enumerate() {
            let at = first + mode.sync_interval * u32::try_from(i).unwrap() / 3;
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let socket = t.start_agent(base, &format!("agent-{tier}"), i);
            t.servers[i].entry(&format!("{TD}/nodes/agent-{tier}"), &format!("{TD}/workload/{tier}"), false);
            t.agent_sockets.push(socket);
        }
        // This process acts as a downstream of the zone, identified by the zone-level agent.
        t.servers[2].entry(&format!("{TD}/nodes/agent-zone"), PUBLISHER_ID, true);
        t
    }

    fn dir(base: &Path, mode: Mode, name: &str) -> PathBuf {
        let d = base.join(mode.name).join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A server; with `upstream = Some(i)`, a downstream of server `i` authenticated by a new
    /// agent of server `i` (registered with a `-downstream` entry for this tier's identity).
    fn start_server(&mut self, base: &Path, name: &str, extra: &str, upstream: Option<usize>) {
        let dir = Self::dir(base, self.mode, name);
        let plugins = match upstream {
            None => String::new(),
            Some(u) => {
                self.servers[u].entry(&format!("{TD}/nodes/{name}-upstream-agent"), &format!("{TD}/{name}"), true);
                let socket = self.start_agent(base, &format!("{name}-upstream-agent"), u);
                format!(
                    "UpstreamAuthority \"spire\" {{ plugin_data {{ server_address = \"127.0.0.1\" server_port = \"{}\" workload_api_socket = \"{}\" }} }}",
                    self.servers[u].port,
                    socket.display()
                )
            }
        };
        let port = free_port();
        let socket = dir.join("api.sock");
        let conf = dir.join("server.conf");
        std::fs::write(
            &conf,
            format!(
                r#"server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{socket}"
    trust_domain = "example.org"
    data_dir = "{d}"
    log_level = "INFO"
    {extra}
    experimental {{
        jwt_publish_grace = "1s"
        ca_rotation_interval = "1s"
        {exp}
    }}
}}
plugins {{
    DataStore "sql" {{ plugin_data {{ database_type = "sqlite3" connection_string = "{d}/datastore.sqlite3" }} }}
    KeyManager "disk" {{ plugin_data {{ keys_path = "{d}/keys.json" }} }}
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    {plugins}
}}
"#,
                socket = socket.display(),
                d = dir.display(),
                exp = self.mode.server_experimental,
            ),
        )
        .unwrap();
        let mut p = Proc::spawn(&format!("{} {name} server", self.mode.name), &["server", "run", "-config"], &conf, dir.join("server.log"));
        let server = Server { socket, port };
        wait_for(&format!("{name} server to become healthy"), Duration::from_secs(60), &mut p, || {
            server.socket.exists()
                && Command::new(CAIRN)
                    .args(["server", "healthcheck", "-socketPath"])
                    .arg(&server.socket)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        });
        self.procs.push(p);
        self.servers.push(server);
    }

    /// An agent of server `s` attested with a join token for `{TD}/nodes/{name}`; returns its
    /// Workload API socket.
    fn start_agent(&mut self, base: &Path, name: &str, s: usize) -> PathBuf {
        let dir = Self::dir(base, self.mode, name);
        let server = &self.servers[s];
        let token = server.token(&format!("{TD}/nodes/{name}"));
        let bundle = dir.join("bootstrap.pem");
        std::fs::write(&bundle, server.cli(&["bundle", "show"])).unwrap();
        let socket = dir.join("agent.sock");
        let conf = dir.join("agent.conf");
        std::fs::write(
            &conf,
            format!(
                r#"agent {{
    data_dir = "{d}"
    log_level = "INFO"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{socket}"
    trust_bundle_path = "{bundle}"
    trust_domain = "example.org"
    join_token = "{token}"
    experimental {{ sync_interval = "{sync}s" }}
}}
plugins {{
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    KeyManager "disk" {{ plugin_data {{ directory = "{d}/keys" }} }}
    WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
"#,
                d = dir.display(),
                port = server.port,
                socket = socket.display(),
                bundle = bundle.display(),
                sync = self.mode.sync_interval.as_secs(),
            ),
        )
        .unwrap();
        let mut p = Proc::spawn(&format!("{} {name}", self.mode.name), &["agent", "run", "-config"], &conf, dir.join("agent.log"));
        wait_for(&format!("{name} to open its Workload API"), Duration::from_secs(60), &mut p, || socket.exists());
        self.procs.push(p);
        socket
    }
}

// ---------------------------------------------------------------------------------------------
// Observers: when each key ID was first seen, per observer.

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn record(seen: &Seen, kids: impl IntoIterator<Item = String>, at: Instant) {
    let mut m = seen.lock().unwrap();
    for k in kids {
        m.entry(k).or_insert(at);
    }
}

async fn uds_channel(path: PathBuf) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move { tokio::net::UnixStream::connect(p).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
}

fn workload_request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
    req
}

/// Polls a server's `GetBundle` on its admin socket every 5 ms.
async fn watch_server(socket: PathBuf, seen: Seen) {
    let ch = cairn::cli::client::connect_admin(&socket).await.unwrap();
    let mut c = bundlepb::bundle_client::BundleClient::new(ch);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Ok(b) = c.get_bundle(bundlepb::GetBundleRequest::default()).await {
            let at = Instant::now();
            record(&seen, b.into_inner().jwt_authorities.into_iter().map(|k| k.key_id), at);
        }
    }
}

/// Follows an agent's `FetchJWTBundles` stream (reopening it if it ends).
async fn watch_agent(socket: PathBuf, seen: Seen) {
    loop {
        if let Ok(ch) = uds_channel(socket.clone()).await
            && let Ok(resp) = SpiffeWorkloadApiClient::new(ch).fetch_jwt_bundles(workload_request(JwtBundlesRequest {})).await
        {
            let mut stream = resp.into_inner();
            while let Ok(Some(msg)) = stream.message().await {
                let at = Instant::now();
                let Some(jwks) = msg.bundles.get(TD) else { continue };
                let doc: serde_json::Value = serde_json::from_slice(jwks).unwrap_or_default();
                let kids = doc["keys"].as_array().into_iter().flatten().filter_map(|k| k["kid"].as_str().map(str::to_owned));
                record(&seen, kids, at);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Publishing a key at the leaf tier, as a zone-level downstream server does.

fn split_der(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(data).unwrap();
        out.push(data[..data.len() - rest.len()].to_vec());
        data = rest;
    }
    out
}

/// The publisher's X509-SVID (chain, PKCS#8 key) and bundle from the zone agent.
async fn publisher_svid(agent_socket: &Path, timeout: Duration) -> (ClientIdentity, Vec<Vec<u8>>) {
    let start = Instant::now();
    loop {
        if let Ok(ch) = uds_channel(agent_socket.to_owned()).await
            && let Ok(resp) = SpiffeWorkloadApiClient::new(ch).fetch_x509svid(workload_request(X509svidRequest {})).await
        {
            let mut stream = resp.into_inner();
            while let Ok(Ok(Some(msg))) = tokio::time::timeout(timeout.saturating_sub(start.elapsed()), stream.message()).await {
                if let Some(s) = msg.svids.into_iter().find(|s| s.spiffe_id == PUBLISHER_ID) {
                    let id =
                        ClientIdentity { chain: split_der(&s.x509_svid), key_pkcs8: Arc::new(zeroize::Zeroizing::new(s.x509_svid_key)) };
                    return (id, split_der(&s.bundle));
                }
            }
        }
        assert!(start.elapsed() < timeout, "the zone agent never served {PUBLISHER_ID}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes a fresh EC P-256 key as `kid` to the zone server; returns when the RPC was sent
/// (the clock starts there: TLS handshake included, SVID fetch excluded) and how long it took.
async fn publish(t: &Topology, kid: &str) -> (Instant, Duration) {
    let (identity, roots) = publisher_svid(&t.agent_sockets[2], Duration::from_secs(60)).await;
    let server_id = cairn::spiffe::SpiffeId::new("spiffe://example.org/spire/server").unwrap();
    let ch = client::connect(&format!("127.0.0.1:{}", t.servers[2].port), ServerTrust::Roots(roots), server_id, Some(&identity)).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let req = bundlepb::PublishJwtAuthorityRequest {
        jwt_authority: Some(JwtKey {
            public_key: rcgen::PublicKeyData::subject_public_key_info(&key),
            key_id: kid.to_owned(),
            expires_at: cairn::now_unix() + 3600,
            tainted: false,
        }),
    };
    let t0 = Instant::now();
    bundlepb::bundle_client::BundleClient::new(ch).publish_jwt_authority(req).await.unwrap();
    (t0, t0.elapsed())
}

// ---------------------------------------------------------------------------------------------
// Runs

struct Live {
    topo: Topology,
    /// One per entry of `OBSERVERS`.
    seen: Vec<Seen>,
}

struct RunResult {
    rpc: Duration,
    /// Arrival per observer; `None` = not seen before the timeout.
    arrival: Vec<Option<Duration>>,
}

impl RunResult {
    fn all(&self, range: std::ops::Range<usize>) -> Option<Duration> {
        self.arrival[range].iter().copied().try_fold(Duration::ZERO, |m, a| a.map(|a| m.max(a)))
    }
}

fn observe(topo: Topology) -> Live {
    let seen: Vec<Seen> = (0..OBSERVERS.len()).map(|_| Seen::default()).collect();
    for (i, s) in topo.servers.iter().enumerate() {
        tokio::spawn(watch_server(s.socket.clone(), Arc::clone(&seen[i])));
    }
    for (i, a) in topo.agent_sockets.iter().enumerate() {
        tokio::spawn(watch_agent(a.clone(), Arc::clone(&seen[3 + i])));
    }
    Live { topo, seen }
}

async fn wait_seen(live: &Live, kid: &str, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout && !live.seen.iter().all(|s| s.lock().unwrap().contains_key(kid)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run_once(live: &Live, kid: &str) -> RunResult {
    let (t0, rpc) = publish(&live.topo, kid).await;
    wait_seen(live, kid, live.topo.mode.sync_interval * 4 + Duration::from_secs(10)).await;
    let arrival = live.seen.iter().map(|s| s.lock().unwrap().get(kid).map(|at| at.saturating_duration_since(t0))).collect();
    RunResult { rpc, arrival }
}

/// A pseudo-random pause of up to `max`, so publications land at random points of the agents'
/// sync cycles.
async fn jitter(max: Duration) {
    let r = u64::from(uuid::Uuid::new_v4().as_bytes()[0]);
    tokio::time::sleep(max * u32::try_from(r).unwrap() / 256).await;
}

// ---------------------------------------------------------------------------------------------
// Report

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "timeout".to_owned(), |d| format!("{:.3}", d.as_secs_f64()))
}

/// (median, min, max) of the values seen; `None` if there are none.
fn stats(values: impl IntoIterator<Item = Option<Duration>>) -> Option<(f64, f64, f64, usize)> {
    let mut v: Vec<f64> = values.into_iter().flatten().map(|d| d.as_secs_f64()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { f64::midpoint(v[n / 2 - 1], v[n / 2]) };
    Some((median, v[0], v[n - 1], n))
}

fn stat_cell(s: Option<(f64, f64, f64, usize)>, runs: usize) -> String {
    match s {
        None => "no data".to_owned(),
        Some((med, min, max, n)) => {
            let missing = if n < runs { format!(" ({} timeouts)", runs - n) } else { String::new() };
            format!("{med:.3} [{min:.3} .. {max:.3}]{missing}")
        }
    }
}

fn runs_wanted() -> usize {
    let args: Vec<String> = std::env::args().collect();
    let from_args = args.iter().position(|a| a == "--runs").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok());
    from_args.or_else(|| std::env::var("PROPAGATION_RUNS").ok().and_then(|v| v.parse().ok())).unwrap_or(10).max(1)
}

fn main() {
    let runs = runs_wanted();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_owned();
    let started = Instant::now();

    // Both topologies come up side by side.
    let (push, poll) = std::thread::scope(|s| {
        let a = s.spawn(|| Topology::start(&base, PUSH));
        let b = s.spawn(|| Topology::start(&base, POLL));
        (a.join().unwrap(), b.join().unwrap())
    });
    let setup = started.elapsed();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let results = rt.block_on(async {
        let lives = [observe(push), observe(poll)];
        // Warm up: one unmeasured key per topology, and every observer caught up with it.
        for live in &lives {
            let kid = format!("bench-{}-warmup-{}", live.topo.mode.name, uuid::Uuid::new_v4().simple());
            publish(&live.topo, &kid).await;
            wait_seen(live, &kid, Duration::from_secs(60)).await;
            let missing: Vec<&str> =
                OBSERVERS.iter().zip(&live.seen).filter(|(_, s)| !s.lock().unwrap().contains_key(&kid)).map(|(o, _)| *o).collect();
            assert!(missing.is_empty(), "{} topology: warm-up key never reached {missing:?}", live.topo.mode.name);
        }
        println!("JWT key propagation, root -> region -> zone; key published at the zone (leaf) tier");
        println!("setup {:.1}s; {runs} runs per configuration, interleaved; seconds from PublishJWTAuthority sent", setup.as_secs_f64());
        println!("workload agents' sync cycles offset by sync_interval/3 from one another; publications at random points of the cycle");
        println!();
        println!(
            "{:<6}{:>4} {:>8} {:>8} {:>8} {:>8} {:>11} {:>13} {:>11}",
            "config", "run", "rpc", "root", "region", "zone", "agent@root", "agent@region", "agent@zone"
        );
        let mut results: [Vec<RunResult>; 2] = [Vec::new(), Vec::new()];
        for i in 0..runs {
            for (live, out) in lives.iter().zip(results.iter_mut()) {
                jitter(live.topo.mode.sync_interval).await;
                let kid = format!("bench-{}-{i}-{}", live.topo.mode.name, uuid::Uuid::new_v4().simple());
                let r = run_once(live, &kid).await;
                println!(
                    "{:<6}{:>4} {:>8.3} {:>8} {:>8} {:>8} {:>11} {:>13} {:>11}",
                    live.topo.mode.name,
                    i + 1,
                    r.rpc.as_secs_f64(),
                    secs(r.arrival[0]),
                    secs(r.arrival[1]),
                    secs(r.arrival[2]),
                    secs(r.arrival[3]),
                    secs(r.arrival[4]),
                    secs(r.arrival[5])
                );
                out.push(r);
            }
        }
        results
    });

    let modes = [PUSH, POLL];
    println!();
    println!("Until the key is everywhere, median [min .. max] seconds:");
    println!("  {:<46} {:<34} {:<34}", "", "all 3 server bundles", "all 3 agents' FetchJWTBundles");
    for (m, r) in modes.iter().zip(&results) {
        println!(
            "  {:<46} {:<34} {:<34}",
            m.label,
            stat_cell(stats(r.iter().map(|x| x.all(0..3))), runs),
            stat_cell(stats(r.iter().map(|x| x.all(3..6))), runs)
        );
    }
    let ratio = |range: std::ops::Range<usize>| {
        let med = |r: &Vec<RunResult>| stats(r.iter().map(|x| x.all(range.clone()))).map(|s| s.0);
        match (med(&results[0]), med(&results[1])) {
            (Some(push), Some(poll)) if push > 0.0 => format!("{:.1}x", poll / push),
            _ => "n/a".to_owned(),
        }
    };
    println!("  ratio polling / push (medians): server bundles {}   agents {}", ratio(0..3), ratio(3..6));
    println!();
    println!("Arrival per tier, median [min .. max] seconds:");
    for (m, r) in modes.iter().zip(&results) {
        println!("  {}", m.label);
        println!("    {:<22} {}", "PublishJWTAuthority", stat_cell(stats(r.iter().map(|x| Some(x.rpc))), runs));
        for (o, name) in OBSERVERS.iter().enumerate() {
            let what = if o < 3 { format!("{name} bundle") } else { format!("{name} stream") };
            println!("    {what:<22} {}", stat_cell(stats(r.iter().map(|x| x.arrival[o])), runs));
        }
    }
    println!();
    println!("total {:.1}s", started.elapsed().as_secs_f64());
    drop(rt);
}
