//! X509-SVID minting throughput: in process versus through `MintX509SVID` on a real server's
//! admin socket, with server CPU read from /proc. Run with `scripts/bench-mint.sh` (or
//! `cargo bench --bench mint`). Prints figures and ratios; asserts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "benchmark driver")]

mod common;
use common::csrs;

use cairn::ca::X509SvidRequest;
use cairn::keymanager::MemoryKeyManager;
use cairn::spiffe::SpiffeId;
use cairn::wire::pb::spire::api::server::svid::v1 as svidpb;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECS: f64 = 3.0;

/// The in-process baseline: the RPC's work (parse + verify the CSR, take its URI SAN, build,
/// sign) in a loop on this thread for `SECS`. Returns mints per second and per CPU-second of
/// this thread; the CPU figure is the one the server's is compared with, as neither counts time
/// the machine gave to someone else.
async fn in_process(csrs: &[Vec<u8>]) -> (f64, f64) {
    let m = common::ca_manager(Arc::new(MemoryKeyManager::new()), "bench").await;
    let ca = m.ca();
    let now = cairn::now_unix();
    let cpu0 = common::thread_cpu_seconds();
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed().as_secs_f64() < SECS {
        let csr = &csrs[n % csrs.len()];
        let parsed = cairn::pki::Csr::parse(csr).unwrap();
        let spki = parsed.public_key;
        let uri = parsed.uris.into_iter().next().unwrap();
        let id = SpiffeId::new(&uri).unwrap();
        let chain = ca.mint_x509_svid(&spki, &X509SvidRequest { id: &id, dns_names: &[], ttl: 0 }, now).await.unwrap();
        std::hint::black_box(chain);
        n += 1;
    }
    (n as f64 / start.elapsed().as_secs_f64(), n as f64 / (common::thread_cpu_seconds() - cpu0))
}

async fn over_rpc(socket: &std::path::Path, pid: u32, callers: usize, csrs: Arc<Vec<Vec<u8>>>) -> (f64, f64) {
    let ch = cairn::cli::client::connect_admin(socket).await.unwrap();
    // Warm up.
    let mut c = svidpb::svid_client::SvidClient::new(ch.clone());
    for csr in csrs.iter().take(50) {
        c.mint_x509svid(svidpb::MintX509svidRequest { csr: csr.clone(), ttl: 0 }).await.unwrap();
    }
    let cpu0 = common::cpu_seconds(Some(pid));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(SECS);
    let mut tasks = Vec::new();
    for t in 0..callers {
        let mut c = svidpb::svid_client::SvidClient::new(ch.clone());
        let csrs = Arc::clone(&csrs);
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < deadline {
                let csr = csrs[(t * 7919 + n) % csrs.len()].clone();
                c.mint_x509svid(svidpb::MintX509svidRequest { csr, ttl: 0 }).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0usize;
    for t in tasks {
        total += t.await.unwrap();
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = common::cpu_seconds(Some(pid)) - cpu0;
    (total as f64 / wall, total as f64 / cpu)
}

/// A server of `binary` (memory key, SQLite) in a fresh directory, up and answering on its
/// admin socket.
struct BenchServer {
    dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    port: u16,
    binary: std::path::PathBuf,
    child: std::process::Child,
}

impl BenchServer {
    async fn start(binary: &std::path::Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = dir.path().join("server.conf");
        std::fs::write(
            &conf,
            format!(
                r#"server {{ bind_address = "127.0.0.1" bind_port = "{port}" socket_path = "{sock}" trust_domain = "example.org" data_dir = "{d}" log_level = "WARN" }}
plugins {{ DataStore "sql" {{ plugin_data {{ database_type = "sqlite3" connection_string = "{d}/ds.sqlite3" }} }} KeyManager "memory" {{}} NodeAttestor "join_token" {{ plugin_data {{}} }} }}"#,
                sock = socket.display(),
                d = dir.path().display()
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(binary);
        cmd.args(["server", "run", "-config"]).arg(&conf).stderr(std::process::Stdio::null());
        // BENCH_SERVER_WORKERS=n runs the server with n tokio workers (TOKIO_WORKER_THREADS).
        if let Ok(w) = std::env::var("BENCH_SERVER_WORKERS") {
            cmd.env("TOKIO_WORKER_THREADS", w);
        }
        let child = cmd.spawn().unwrap();
        let t0 = Instant::now();
        while !socket.exists() || cairn::cli::client::connect_admin(&socket).await.is_err() {
            assert!(t0.elapsed() < Duration::from_secs(30), "server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { dir, socket, port, binary: binary.to_owned(), child }
    }

    /// Runs this build's CLI against the server; its stdout.
    fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        use std::io::Write as _;
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("server").args(args).arg("-socketPath").arg(&self.socket);
        cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(data) = stdin {
            child.stdin.take().unwrap().write_all(data).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "cairn server {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// MintX509SVID rates (1 and 16 callers; per second and per server CPU-second) of the
/// server binary at `binary`.
async fn rpc_figures(binary: &std::path::Path, pool: &Arc<Vec<Vec<u8>>>) -> (f64, f64, f64, f64) {
    let server = BenchServer::start(binary).await;
    let (r1, c1) = over_rpc(&server.socket, server.child.id(), 1, Arc::clone(pool)).await;
    let (r16, c16) = over_rpc(&server.socket, server.child.id(), 16, Arc::clone(pool)).await;
    (r1, c1, r16, c16)
}

/// BatchNewX509SVID figures from one server of `binary` holding `n` entries for one agent.
struct BatchFigures {
    /// A real agent's first sync: SVIDs per second, from the agent's start to its debug API
    /// counting `n` SVIDs, and per server CPU-second over that window (which also holds the
    /// attestation and the entry sync).
    agent: (f64, f64),
    /// BatchNewX509SVID alone: the bench, holding the agent's SVID after that agent stopped,
    /// sends the agent's calls (500 CSRs each, one at a time) for about `SECS`; SVIDs per second
    /// and per server CPU-second.
    direct: (f64, f64),
}

/// BatchNewX509SVID as agents use it: a real agent of `binary` attests with a join token and
/// fetches the X509-SVIDs of `n` entries (500 CSRs per call); then the bench, with that agent's
/// SVID, sends the same calls itself.
async fn agent_batch_figures(binary: &std::path::Path, n: usize) -> BatchFigures {
    use cairn::wire::pb::spire::agent::debug::v1 as debugpb;
    let server = BenchServer::start(binary).await;
    let entries: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "parent_id": "spiffe://example.org/node1",
                "spiffe_id": format!("spiffe://example.org/batch/{i}"),
                "selectors": [{"type": "unix", "value": format!("uid:{}", 100_000 + i)}],
            })
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({ "entries": entries })).unwrap();
    server.cli(&["entry", "create", "-data", "-"], Some(&body));
    let token = server.cli(&["token", "generate", "-spiffeID", "spiffe://example.org/node1"], None);
    let token = token.split_whitespace().nth(1).unwrap().to_owned();
    let d = server.dir.path().join("agent");
    // SPIRE's rule, which cairn keeps: the admin socket is not beside the Workload API's.
    std::fs::create_dir_all(d.join("workload")).unwrap();
    std::fs::write(d.join("bootstrap.pem"), server.cli(&["bundle", "show"], None)).unwrap();
    let admin = d.join("admin.sock");
    let config = d.join("agent.conf");
    std::fs::write(
        &config,
        format!(
            r#"agent {{
    data_dir = "{d}"
    log_level = "WARN"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{d}/workload/agent.sock"
    admin_socket_path = "{admin}"
    trust_bundle_path = "{d}/bootstrap.pem"
    trust_domain = "example.org"
    join_token = "{token}"
    x509_svid_cache_max_size = {n}
}}
plugins {{
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    KeyManager "disk" {{ plugin_data {{ directory = "{d}/keys" }} }}
    WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
"#,
            d = d.display(),
            port = server.port,
            admin = admin.display()
        ),
    )
    .unwrap();
    // Let the server's entry cache settle before the window opens.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = common::cpu_seconds(Some(server.child.id()));
    let start = Instant::now();
    let log = d.join("agent.log");
    /// Stops the agent however the measurement ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _agent = Killed(
        std::process::Command::new(binary)
            .args(["agent", "run", "-config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let count = loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the agent did not fetch {n} SVIDs in 120 s; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        if let Ok(ch) = cairn::cli::client::connect_admin(&admin).await {
            let mut c = debugpb::debug_client::DebugClient::new(ch);
            if let Ok(info) = c.get_info(debugpb::GetInfoRequest {}).await {
                let count = usize::try_from(info.into_inner().svids_count).unwrap_or(0);
                if count >= n {
                    break count;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let wall = start.elapsed().as_secs_f64();
    let cpu = common::cpu_seconds(Some(server.child.id())) - cpu0;
    let agent = (count as f64 / wall, count as f64 / cpu);
    drop(_agent);
    let direct = direct_batches(&d.join("keys").join("agent-svid.json"), server.port, server.child.id()).await;
    BatchFigures { agent, direct }
}

/// BatchNewX509SVID calls as the agent whose persisted SVID is at `svid_json` makes them: its
/// authorized entries in calls of 500 (entry ID + a fresh P-256 CSR each), one call at a time,
/// for about `SECS`. Every result must be an SVID. Returns SVIDs per second and per CPU-second
/// of the server `pid`.
async fn direct_batches(svid_json: &std::path::Path, port: u16, pid: u32) -> (f64, f64) {
    use base64::Engine as _;
    use cairn::wire::pb::spire::api::server::entry::v1 as entrypb;
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
    let persisted: serde_json::Value = serde_json::from_slice(&std::fs::read(svid_json).unwrap()).unwrap();
    let identity = cairn::agent::client::ClientIdentity {
        chain: persisted["chain"].as_array().unwrap().iter().map(b64).collect(),
        key_pkcs8: Arc::new(zeroize::Zeroizing::new(b64(&persisted["key"]))),
    };
    let roots = persisted["bundle"].as_array().unwrap().iter().map(b64).collect();
    let ch = cairn::agent::client::connect(
        &format!("127.0.0.1:{port}"),
        cairn::agent::client::ServerTrust::Roots(roots),
        SpiffeId::new("spiffe://example.org/spire/server").unwrap(),
        Some(&identity),
    )
    .unwrap();
    let entries = entrypb::entry_client::EntryClient::new(ch.clone())
        .get_authorized_entries(entrypb::GetAuthorizedEntriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let pool = csrs(500);
    let calls: Vec<svidpb::BatchNewX509svidRequest> = entries
        .chunks(500)
        .map(|chunk| svidpb::BatchNewX509svidRequest {
            params: chunk
                .iter()
                .zip(pool.iter())
                .map(|(e, csr)| svidpb::NewX509svidParams { entry_id: e.id.clone(), csr: csr.clone() })
                .collect(),
        })
        .collect();
    let mut c = svidpb::svid_client::SvidClient::new(ch).max_decoding_message_size(64 << 20);
    let mut send = async |req: &svidpb::BatchNewX509svidRequest| {
        let results = c.batch_new_x509svid(req.clone()).await.unwrap().into_inner().results;
        assert!(results.iter().all(|r| r.svid.is_some()), "a BatchNewX509SVID result was not an SVID");
        results.len()
    };
    send(&calls[0]).await;
    let cpu0 = common::cpu_seconds(Some(pid));
    let start = Instant::now();
    let mut count = 0usize;
    'window: loop {
        for req in &calls {
            count += send(req).await;
            if start.elapsed().as_secs_f64() >= SECS {
                break 'window;
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = common::cpu_seconds(Some(pid)) - cpu0;
    (count as f64 / wall, count as f64 / cpu)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let pool = Arc::new(csrs(256));
        // Measured at the start and again at the end; the higher is the baseline.
        let (inproc_wall, mut inproc) = in_process(&pool).await;

        // BENCH_BASELINE_BIN=<path of another cairn build> measures that server too, in the
        // same run, interleaved with this tree's (best of two rounds each), for before/after.
        let baseline = std::env::var_os("BENCH_BASELINE_BIN").map(std::path::PathBuf::from);
        let this = std::path::PathBuf::from(env!("CARGO_BIN_EXE_cairn"));
        let mut ours = (0.0, 0.0, 0.0, 0.0);
        let mut theirs = (0.0, 0.0, 0.0, 0.0);
        let best = |a: (f64, f64, f64, f64), b: (f64, f64, f64, f64)| (a.0.max(b.0), a.1.max(b.1), a.2.max(b.2), a.3.max(b.3));
        for _ in 0..if baseline.is_some() { 2 } else { 1 } {
            ours = best(ours, rpc_figures(&this, &pool).await);
            if let Some(b) = &baseline {
                theirs = best(theirs, rpc_figures(b, &pool).await);
            }
        }
        let (r1, c1, r16, c16) = ours;
        let workers = std::env::var("BENCH_SERVER_WORKERS").ok();
        // OpenBao pki/sign on these machines: ~1,000 certs per bao CPU-second
        // (shared/reference/perf-anchors.md §5; BENCH_OPENBAO_RATE overrides with a fresh figure).
        let bao: f64 = std::env::var("BENCH_OPENBAO_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(1000.0);
        let n = std::env::var("BENCH_AGENT_SVIDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
        let BatchFigures { agent: (ar, ac), direct: (dr, dc) } = agent_batch_figures(&this, n).await;
        let baseline_batches = match &baseline {
            Some(b) => Some(agent_batch_figures(b, n).await),
            None => None,
        };
        let (_, again) = in_process(&pool).await;
        let first = inproc;
        inproc = inproc.max(again);
        println!(
            "X509-SVID minting from a CSR (parse + verify CSR, build, sign; EC P-256, aws-lc-rs); server tokio workers: {}",
            workers.as_deref().unwrap_or("default (one per core)")
        );
        println!(
            "  in-process, 1 thread            : {inproc_wall:>9.0} /s   {first:>9.0} per thread CPU-s, at the end {again:.0} (baseline: the higher)"
        );
        println!("  MintX509SVID, 1 caller          : {r1:>9.0} /s   {c1:>9.0} per server CPU-s");
        println!("  MintX509SVID, 16 callers        : {r16:>9.0} /s   {c16:>9.0} per server CPU-s");
        println!("  ratio per-CPU-s / in-process    : 1 caller {:.2}   16 callers {:.2}   (target >= 0.50)", c1 / inproc, c16 / inproc);
        println!("  ratio per-CPU-s / OpenBao ({bao:.0}): 1 caller {:.1}x  16 callers {:.1}x  (target >= 5x)", c1 / bao, c16 / bao);
        println!("  BatchNewX509SVID, one agent's first sync of {n} SVIDs (500 per call): {ar:>7.0} /s   {ac:>9.0} per server CPU-s");
        println!("  BatchNewX509SVID alone (500 per call, one call at a time): {dr:>7.0} /s   {dc:>9.0} per server CPU-s");
        println!(
            "  ratio per-CPU-s / in-process    : BatchNewX509SVID alone {:.2}, first sync with attestation {:.2}   (target >= 0.90)",
            dc / inproc,
            ac / inproc
        );
        if let Some(b) = &baseline {
            let (b1, bc1, b16, bc16) = theirs;
            println!("  baseline server {}:", b.display());
            println!("    MintX509SVID, 1 caller        : {b1:>9.0} /s   {bc1:>9.0} per server CPU-s");
            println!("    MintX509SVID, 16 callers      : {b16:>9.0} /s   {bc16:>9.0} per server CPU-s");
            if let Some(BatchFigures { agent: (bar, bac), direct: (bdr, bdc) }) = baseline_batches {
                println!("    BatchNewX509SVID, first sync  : {bar:>9.0} /s   {bac:>9.0} per server CPU-s");
                println!("    BatchNewX509SVID alone        : {bdr:>9.0} /s   {bdc:>9.0} per server CPU-s");
                println!(
                    "  this tree / baseline, batches   : first sync {:.2} (/s) {:.2} (per CPU-s)   alone {:.2} (/s) {:.2} (per CPU-s)",
                    ar / bar,
                    ac / bac,
                    dr / bdr,
                    dc / bdc
                );
            }
            println!(
                "  this tree / baseline            : 1 caller {:.2} (/s) {:.2} (per CPU-s)   16 callers {:.2} (/s) {:.2} (per CPU-s)",
                r1 / b1,
                c1 / bc1,
                r16 / b16,
                c16 / bc16
            );
        }
    });
}
