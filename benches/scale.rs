//! Scale and change propagation, process level: a `cairn server` on SQLite with one `cairn
//! agent`, loaded with `SCALE_ENTRIES` registration entries (default 10,000) spread over 1,000
//! parent IDs, created through `entry create -data -` (SPIRE's JSON, 1,000 per batch).
//!
//! Figures, for two servers side by side in the same run:
//! - push: the default (`agent_push = true`: the agent follows cairn's change stream);
//! - poll: `experimental { agent_push = false }`, so the agent polls every 5 s, SPIRE's
//!   default `sync_interval` (and SPIRE's behaviour).
//!
//! Both agents use `sync_interval = "5s"`. Reported: entry creation rate, server RSS growth
//! per entry, restart-to-ready time, and, over `SCALE_RUNS` runs (default 20), the time from
//! `entry create` returning to the new SVID arriving on a workload's open Workload API stream
//! (the `spiffe` crate's client), p50 and p99; runs alternate between the two servers.
//!
//! Run with `scripts/bench-scale.sh`. Prints figures; asserts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "benchmark driver")]

use futures::StreamExt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");
const PARENTS: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn uid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

struct Server {
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn start(dir: &Path, push: bool) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let exp = if push { "" } else { "experimental { agent_push = false }" };
        let text = format!(
            r#"server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{d}/api.sock"
    trust_domain = "example.org"
    data_dir = "{d}"
    log_level = "WARN"
    {exp}
}}
plugins {{
    DataStore "sql" {{ plugin_data {{ database_type = "sqlite3" connection_string = "{d}/datastore.sqlite3" }} }}
    KeyManager "disk" {{ plugin_data {{ keys_path = "{d}/keys.json" }} }}
    NodeAttestor "join_token" {{ plugin_data {{}} }}
}}
"#,
            d = dir.display()
        );
        let config = dir.join("server.conf");
        std::fs::write(&config, text).unwrap();
        let mut s = Self { dir: dir.to_owned(), config, child: None };
        s.spawn();
        s
    }

    /// Starts the process; returns how long until its admin socket answered a health check.
    fn spawn(&mut self) -> Duration {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).unwrap();
        let start = Instant::now();
        self.child = Some(
            Command::new(CAIRN).args(["server", "run", "-config"]).arg(&self.config).stdout(Stdio::null()).stderr(log).spawn().unwrap(),
        );
        let sock = self.dir.join("api.sock");
        loop {
            let ok = Command::new(CAIRN)
                .args(["server", "healthcheck", "-socketPath"])
                .arg(&sock)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(120), "server did not become healthy: see {}", self.dir.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let mut cmd = Command::new(CAIRN);
        cmd.arg("server").args(&args[..1]).args(&args[1..2]).arg("-socketPath").arg(self.dir.join("api.sock")).args(&args[2..]);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(data) = stdin {
            child.stdin.take().unwrap().write_all(data).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap();
        kb * 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn start_agent(server: &Server, dir: &Path) -> Agent {
    std::fs::create_dir_all(dir).unwrap();
    let token = server.cli(&["token", "generate", "-spiffeID", "spiffe://example.org/node1"], None);
    let token = token.split_whitespace().nth(1).unwrap().to_owned();
    let bundle = dir.join("bootstrap.pem");
    std::fs::write(&bundle, server.cli(&["bundle", "show"], None)).unwrap();
    let port = std::fs::read_to_string(&server.config)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("bind_port = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let text = format!(
        r#"agent {{
    data_dir = "{d}"
    log_level = "WARN"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{d}/agent.sock"
    trust_bundle_path = "{b}"
    trust_domain = "example.org"
    join_token = "{token}"
    experimental {{ sync_interval = "5s" }}
}}
plugins {{
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    KeyManager "disk" {{ plugin_data {{ directory = "{d}/keys" }} }}
    WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
"#,
        d = dir.display(),
        b = bundle.display()
    );
    let config = dir.join("agent.conf");
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = Command::new(CAIRN).args(["agent", "run", "-config"]).arg(&config).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let socket = dir.join("agent.sock");
    let start = Instant::now();
    while !socket.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "agent did not start: see {}", dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    Agent { child, socket }
}

/// Creates `n` entries (1,000 parents, one uid selector each) from SPIRE's JSON on stdin;
/// returns entries per second.
fn load(server: &Server, n: usize) -> f64 {
    const BATCH: usize = 20_000;
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let upto = (done + BATCH).min(n);
        let entries: Vec<serde_json::Value> = (done..upto)
            .map(|i| {
                serde_json::json!({
                    "parent_id": format!("spiffe://example.org/agent/p{}", i % PARENTS),
                    "spiffe_id": format!("spiffe://example.org/w/{i}"),
                    "selectors": [{"type": "unix", "value": format!("uid:{}", 100_000 + i)}],
                })
            })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "entries": entries })).unwrap();
        server.cli(&["entry", "create", "-data", "-"], Some(&body));
        done = upto;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

type Contexts = std::pin::Pin<Box<dyn futures::Stream<Item = Result<spiffe::X509Context, spiffe::WorkloadApiError>> + Send>>;

/// The workload's stream, once its first identity has arrived (the agent's first sync may
/// come before the server's cache has the agent's alias).
async fn open(agent: &Agent) -> Contexts {
    let start = Instant::now();
    loop {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", agent.socket.display())).await.unwrap();
        if let Ok(stream) = client.stream_x509_contexts().await {
            let mut s: Contexts = Box::pin(stream);
            if let Some(Ok(_)) = s.next().await {
                return s;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the workload got no identity in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn until(stream: &mut Contexts, want: impl Fn(&spiffe::X509Context) -> bool) {
    loop {
        let ctx = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.expect("no update in 60 s").unwrap().unwrap();
        if want(&ctx) {
            return;
        }
    }
}

/// Seconds from `entry create` returning to the SVID on the open stream.
async fn one_run(server: &Server, stream: &mut Contexts, run: usize) -> f64 {
    let id = format!("spiffe://example.org/probe/{run}");
    let sel = format!("unix:uid:{}", uid());
    // A random point of the agent's poll cycle, so polling is measured fairly.
    tokio::time::sleep(Duration::from_millis(rand_ms(5000))).await;
    let out = tokio::task::block_in_place(|| {
        server.cli(&["entry", "create", "-parentID", "spiffe://example.org/node1", "-spiffeID", &id, "-selector", &sel], None)
    });
    let start = Instant::now();
    until(stream, |c| c.svids().iter().any(|s| s.spiffe_id().to_string() == id)).await;
    let took = start.elapsed().as_secs_f64();
    let entry =
        out.lines().find_map(|l| l.strip_prefix("Entry ID").and_then(|r| r.split_once(": ")).map(|(_, v)| v.trim().to_owned())).unwrap();
    tokio::task::block_in_place(|| server.cli(&["entry", "delete", "-entryID", &entry], None));
    until(stream, |c| !c.svids().iter().any(|s| s.spiffe_id().to_string() == id)).await;
    took
}

fn rand_ms(max: u64) -> u64 {
    let b = uuid::Uuid::new_v4();
    u64::from(u16::from_le_bytes([b.as_bytes()[0], b.as_bytes()[1]])) % max
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_usize("SCALE_ENTRIES", 10_000);
    let runs = env_usize("SCALE_RUNS", 20);
    let tmp = tempfile::tempdir().unwrap();
    println!("scale bench: {n} entries over {PARENTS} parents, {runs} propagation runs per mode");
    let mut results = Vec::new();
    let mut setups = Vec::new();
    for (mode, push) in [("push", true), ("poll", false)] {
        let dir = tmp.path().join(mode);
        let mut server = Server::start(&dir.join("server"), push);
        let rss0 = server.rss_bytes();
        let rate = load(&server, n);
        let rss1 = server.rss_bytes();
        server.stop();
        let ready = server.spawn();
        let rss2 = server.rss_bytes();
        let uid_sel = format!("unix:uid:{}", uid());
        server.cli(
            &["entry", "create", "-parentID", "spiffe://example.org/node1", "-spiffeID", "spiffe://example.org/web", "-selector", &uid_sel],
            None,
        );
        let agent = start_agent(&server, &dir.join("agent"));
        println!(
            "{mode}: created {rate:.0} entries/s; server RSS {:.0} MB after load ({:.0} bytes/entry over the empty server's {:.0} MB); restart to ready {:.2} s, RSS after restart {:.0} MB",
            rss1 as f64 / 1e6,
            (rss1.saturating_sub(rss0)) as f64 / n.max(1) as f64,
            rss0 as f64 / 1e6,
            ready.as_secs_f64(),
            rss2 as f64 / 1e6,
        );
        setups.push((mode, server, agent));
    }
    let mut streams = Vec::new();
    for (_, _, agent) in &setups {
        streams.push(open(agent).await);
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    for run in 0..runs {
        for (i, (_, server, _)) in setups.iter().enumerate() {
            times[i].push(one_run(server, &mut streams[i], run).await);
        }
    }
    for (i, (mode, _, _)) in setups.iter().enumerate() {
        let t = &mut times[i];
        let (p50, p99) = (pct(t, 0.5), pct(t, 0.99));
        println!("{mode}: entry create -> workload stream: p50 {:.3} s, p99 {:.3} s ({} runs)", p50, p99, t.len());
        results.push((p50, p99));
    }
    if let [(push50, push99), (poll50, poll99)] = results[..] {
        println!("push/poll ratio: p50 {:.3}, p99 {:.3} (lower is faster)", push50 / poll50, push99 / poll99);
    }
}
