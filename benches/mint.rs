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

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

async fn in_process(csrs: &[Vec<u8>]) -> f64 {
    let m = common::ca_manager(Arc::new(MemoryKeyManager::new()), "bench").await;
    let ca = m.ca();
    let now = cairn::now_unix();
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed().as_secs_f64() < SECS {
        let csr = &csrs[n % csrs.len()];
        // The same work the RPC does: parse + verify the CSR, take its URI SAN, build, sign.
        let parsed = cairn::pki::Csr::parse(csr).unwrap();
        let spki = parsed.public_key;
        let uri = parsed.uris.into_iter().next().unwrap();
        let id = SpiffeId::new(&uri).unwrap();
        let chain = ca.mint_x509_svid(&spki, &X509SvidRequest { id: &id, dns_names: &[], ttl: 0 }, now).await.unwrap();
        std::hint::black_box(chain);
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn over_rpc(socket: &std::path::Path, pid: u32, callers: usize, csrs: Arc<Vec<Vec<u8>>>) -> (f64, f64) {
    let ch = cairn::cli::client::connect_admin(socket).await.unwrap();
    // Warm up.
    let mut c = svidpb::svid_client::SvidClient::new(ch.clone());
    for csr in csrs.iter().take(50) {
        c.mint_x509svid(svidpb::MintX509svidRequest { csr: csr.clone(), ttl: 0 }).await.unwrap();
    }
    let cpu0 = cpu_seconds(pid);
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
    let cpu = cpu_seconds(pid) - cpu0;
    (total as f64 / wall, total as f64 / cpu)
}

/// MintX509SVID rates (1 and 16 callers; per second and per server CPU-second) of the
/// server binary at `binary`.
async fn rpc_figures(binary: &std::path::Path, pool: &Arc<Vec<Vec<u8>>>) -> (f64, f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.path().join("server.conf");
    std::fs::write(
        &conf,
        format!(
            r#"server {{ bind_address = "127.0.0.1" bind_port = "{port}" socket_path = "{sock}" trust_domain = "example.org" data_dir = "{d}" log_level = "WARN" }}
plugins {{ DataStore "sql" {{ plugin_data {{ database_type = "sqlite3" connection_string = "{d}/ds.sqlite3" }} }} KeyManager "memory" {{}} }}"#,
            sock = socket.display(),
            d = dir.path().display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(binary);
    cmd.args(["server", "run", "-config"]).arg(&conf).stderr(std::process::Stdio::null());
    // BENCH_SERVER_WORKERS=n runs the server with n tokio workers (TOKIO_WORKER_THREADS).
    let workers = std::env::var("BENCH_SERVER_WORKERS").ok();
    if let Some(w) = &workers {
        cmd.env("TOKIO_WORKER_THREADS", w);
    }
    let mut child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    while !socket.exists() || cairn::cli::client::connect_admin(&socket).await.is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (r1, c1) = over_rpc(&socket, child.id(), 1, Arc::clone(pool)).await;
    let (r16, c16) = over_rpc(&socket, child.id(), 16, Arc::clone(pool)).await;
    let _ = child.kill();
    let _ = child.wait();
    (r1, c1, r16, c16)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let pool = Arc::new(csrs(256));
        let inproc = in_process(&pool).await;

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
        println!(
            "X509-SVID minting from a CSR (parse + verify CSR, build, sign; EC P-256, aws-lc-rs); server tokio workers: {}",
            workers.as_deref().unwrap_or("default (one per core)")
        );
        println!("  in-process, 1 thread            : {inproc:>9.0} /s   (baseline)");
        println!("  MintX509SVID, 1 caller          : {r1:>9.0} /s   {c1:>9.0} per server CPU-s");
        println!("  MintX509SVID, 16 callers        : {r16:>9.0} /s   {c16:>9.0} per server CPU-s");
        println!("  ratio per-CPU-s / in-process    : 1 caller {:.2}   16 callers {:.2}   (target >= 0.50)", c1 / inproc, c16 / inproc);
        println!("  ratio per-CPU-s / OpenBao ({bao:.0}): 1 caller {:.1}x  16 callers {:.1}x  (target >= 5x)", c1 / bao, c16 / bao);
        if let Some(b) = &baseline {
            let (b1, bc1, b16, bc16) = theirs;
            println!("  baseline server {}:", b.display());
            println!("    MintX509SVID, 1 caller        : {b1:>9.0} /s   {bc1:>9.0} per server CPU-s");
            println!("    MintX509SVID, 16 callers      : {b16:>9.0} /s   {bc16:>9.0} per server CPU-s");
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
