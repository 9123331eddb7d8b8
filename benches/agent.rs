//! Agent-side figures, everything in one process on 127.0.0.1: a real server (`Server::build`
//! then `run`, SQLite datastore in a tempdir, mTLS on its TCP port) and in-process agents
//! (`Agent::start`, join tokens from the admin socket).
//!
//! 1. Workload API latency served from one agent's cache over a real Unix socket with a tonic
//!    client (FetchX509SVID time to first message, FetchJWTSVID cached and uncached).
//! 2. One agent syncing 10,000 entries: first sync (mints them all) and steady-state syncs,
//!    with the server's datastore calls and entry-cache reloads in each window.
//! 3. `BENCH_AGENTS` agents (default 100) with `BENCH_ENTRIES_PER_AGENT` entries each
//!    (default 1,000): all first syncs concurrently, then one steady-state round.
//!
//! `BENCH_DATASTORE` (the DataStore's plugin_data body) runs it on PostgreSQL or MySQL
//! (`scripts/bench-datastore.sh`); `BENCH_SKIP_WORKLOAD_API` skips part 1,
//! `BENCH_ONE_AGENT_ENTRIES` sizes part 2.
//!
//! Run with `scripts/bench-agent.sh` (or `cargo bench --bench agent`). Prints figures; asserts
//! nothing about them (it does fail if an RPC fails, so no figure measures an error path).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "benchmark driver")]

mod common;

use cairn::agent::cache::WorkloadSource;
use cairn::agent::client::ServerTrust;
use cairn::agent::manager::{Agent, AgentSettings, NodeAttestation};
use cairn::agent::workload::{CallerInfo, SECURITY_HEADER, WorkloadApi, default_limits, serve};
use cairn::api::ApiState;
use cairn::config::server::{ServerConfig, ServerOverrides};
use cairn::datastore::counting::CountingDatastore;
use cairn::datastore::{Datastore, Selector};
use cairn::spiffe::{SpiffeId, TrustDomain};
use cairn::wire::pb::spire::api::server::{agent::v1 as agentpb, bundle::v1 as bundlepb, entry::v1 as entrypb};
use cairn::wire::pb::spire::api::types as pt;
use cairn::wire::pb::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use cairn::wire::pb::workload::{JwtsvidRequest, X509svidRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

const TD: &str = "example.org";
/// Workload API iterations per measurement (after a warm-up of `WARMUP`), cut short by
/// `BUDGET` so that a slow path (uncached JWT-SVIDs) cannot stretch the run.
const ITERS: usize = 2_000;
const WARMUP: usize = 200;
const BUDGET: Duration = Duration::from_secs(30);
/// Entries per BatchCreateEntry call.
const CREATE_BATCH: usize = 500;
/// Entries of the single agent in part 2.
const ONE_AGENT_ENTRIES: usize = 10_000;
const STEADY_SYNCS: usize = 10;
/// Idle window used to measure the server's own timer-driven datastore calls (two periods of the
/// slowest timer that runs in it: CA rotation, every 10 s).
const IDLE_WINDOW: Duration = Duration::from_secs(20);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn pct(sorted: &[Duration], p: usize) -> f64 {
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e6
}

fn sid(path: &str) -> pt::Spiffeid {
    pt::Spiffeid { trust_domain: TD.into(), path: path.into() }
}

/// The server's datastore call and entry-cache reload counters.
#[derive(Clone, Copy)]
struct Counters {
    queries: u64,
    reloads: u64,
}

impl Counters {
    fn read(b: &Bench) -> Self {
        Self { queries: b.datastore.calls(), reloads: b.state.entry_cache.reload_count() }
    }
    fn since(self, b: &Bench) -> Self {
        let now = Self::read(b);
        Self { queries: now.queries - self.queries, reloads: now.reloads - self.reloads }
    }
}

/// A measured window: wall time and the server's counters over it.
struct Window {
    start: Instant,
    counters: Counters,
}

impl Window {
    fn open(b: &Bench) -> Self {
        Self { start: Instant::now(), counters: Counters::read(b) }
    }
    /// Opens the window just after one of the server's timer calls (they come every few
    /// seconds), so that a short window usually holds none and a call in it stands out.
    async fn open_after_timer(b: &Bench) -> Self {
        let before = b.datastore.calls();
        let t0 = Instant::now();
        while b.datastore.calls() == before && t0.elapsed() < Duration::from_secs(6) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The CA check makes two calls back to back; let the second land too.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Self::open(b)
    }
    fn close(self, b: &Bench) -> (Duration, Counters) {
        (self.start.elapsed(), self.counters.since(b))
    }
}

struct Bench {
    state: Arc<ApiState>,
    /// The server's datastore, counting the calls made to it.
    datastore: Arc<CountingDatastore>,
    /// Datastore calls per second the idle server makes on its own timers.
    idle_rate: f64,
    port: u16,
    admin: Channel,
    roots: Vec<Vec<u8>>,
    uid: u32,
}

impl Bench {
    async fn start(dir: &std::path::Path) -> (Self, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let socket = dir.join("api.sock");
        let conf = dir.join("server.conf");
        std::fs::write(
            &conf,
            format!(
                r#"server {{ bind_address = "127.0.0.1" bind_port = "{port}" socket_path = "{sock}" trust_domain = "{TD}" data_dir = "{d}" log_level = "WARN" }}
plugins {{
    DataStore "sql" {{ plugin_data {{ {datastore} }} }}
    KeyManager "memory" {{}}
    NodeAttestor "join_token" {{ plugin_data {{}} }}
}}"#,
                sock = socket.display(),
                d = dir.display(),
                datastore = std::env::var("BENCH_DATASTORE")
                    .unwrap_or_else(|_| format!("database_type = \"sqlite3\" connection_string = \"{}/datastore.sqlite3\"", dir.display())),
            ),
        )
        .unwrap();
        let config = ServerConfig::load(&conf, false, &ServerOverrides::default()).unwrap();
        let uds = cairn::server::bind_admin_socket(&socket).await.unwrap();
        // The server gets its datastore through a counting wrapper, kept here to read the count.
        let inner = cairn::datastore::sql::open(
            &config.datastore.database_type,
            &config.datastore.connection_string,
            config.datastore.ro_connection_string.as_deref(),
            &config.datastore.settings,
        )
        .await
        .unwrap();
        let datastore = Arc::new(CountingDatastore::new(inner));
        let server = cairn::server::Server::build_with_datastore(config, Arc::clone(&datastore) as Arc<dyn Datastore>).await.unwrap();
        let state = server.state();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(tcp, uds, None, async move {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
        let t0 = Instant::now();
        let admin = loop {
            if let Ok(ch) = cairn::cli::client::connect_admin(&socket).await {
                break ch;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let b = bundlepb::bundle_client::BundleClient::new(admin.clone()).get_bundle(bundlepb::GetBundleRequest::default()).await.unwrap();
        let roots = b.into_inner().x509_authorities.into_iter().map(|a| a.asn1).collect();
        (Self { state, datastore, idle_rate: 0.0, port, admin, roots, uid: my_uid() }, stop_tx, task)
    }

    /// A join token and the agent ID it attests to.
    async fn token(&self) -> (String, String) {
        let t = agentpb::agent_client::AgentClient::new(self.admin.clone())
            .create_join_token(agentpb::CreateJoinTokenRequest { ttl: 3600, token: String::new(), agent_id: None })
            .await
            .unwrap()
            .into_inner()
            .value;
        let path = format!("/spire/agent/join_token/{t}");
        (t, path)
    }

    async fn agent(&self) -> (Arc<Agent>, SpiffeId) {
        let (token, path) = self.token().await;
        let agent = Agent::start(AgentSettings {
            trust_domain: TrustDomain::new(TD).unwrap(),
            server_addr: format!("127.0.0.1:{}", self.port),
            bootstrap: ServerTrust::Roots(self.roots.clone()),
            attestation: NodeAttestation::JoinToken(Some(token)),
            state_dir: None,
            sync_interval: Duration::from_secs(5),
            x509_svid_cache_max_size: None,
            jwt_svid_cache_max_size: None,
        })
        .await
        .unwrap();
        (agent, SpiffeId::new(&format!("spiffe://{TD}{path}")).unwrap())
    }

    /// Creates `n` entries under `parent` through BatchCreateEntry on the admin socket.
    async fn create_entries(&self, parent: &SpiffeId, n: usize, tag: &str) {
        let mut client = entrypb::entry_client::EntryClient::new(self.admin.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let selector = pt::Selector { r#type: "unix".into(), value: format!("uid:{}", self.uid) };
        for start in (0..n).step_by(CREATE_BATCH) {
            let entries = (start..n.min(start + CREATE_BATCH))
                .map(|i| pt::Entry {
                    spiffe_id: Some(sid(&format!("/bench/{tag}/w{i}"))),
                    parent_id: Some(sid(parent.path())),
                    selectors: vec![selector.clone()],
                    ..pt::Entry::default()
                })
                .collect();
            let r = client.batch_create_entry(entrypb::BatchCreateEntryRequest { entries, output_mask: None }).await.unwrap().into_inner();
            for res in r.results {
                let code = res.status.map_or(-1, |s| s.code);
                assert_eq!(code, 0, "BatchCreateEntry refused an entry");
            }
        }
    }

    /// Waits until every agent's authorized entries are in the server's entry cache and the
    /// cache has stopped rebuilding, so that no reload triggered by the creation lands in a
    /// measured window. Returns how long one rebuild takes.
    async fn settle(&self, agents: &[(SpiffeId, usize)]) -> Duration {
        let t0 = Instant::now();
        loop {
            if agents.iter().all(|(id, n)| self.state.entry_cache.authorized_entries(id, cairn::now_unix()).len() == *n) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(300), "entry cache never caught up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // How long one rebuild takes now (one extra reload, outside every measured window).
        let r0 = Instant::now();
        self.state.entry_cache.reload(self.state.datastore.as_ref()).await.unwrap();
        let reload = r0.elapsed();
        // Quiet: no rebuild finished for three rebuild times, so none was running either. (The
        // call count cannot be the test: the server's timers call the datastore every few
        // seconds.)
        let window = (reload * 3).max(Duration::from_secs(1));
        loop {
            let before = self.state.entry_cache.reload_count();
            tokio::time::sleep(window).await;
            if self.state.entry_cache.reload_count() == before {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(600), "the entry cache keeps rebuilding");
        }
        reload
    }
}

/// Most datastore calls the server's own timers can make in `wall`: the server-SVID/bundle refresh
/// (one `get_bundle` every 5 s) and the CA rotation check (`set_ca_journal` + `prune_bundle`
/// every 10 s), each possibly ticking at both ends of the window.
fn timer_bound(wall: Duration) -> u64 {
    let s = wall.as_secs();
    (s / 5 + 1) + 2 * (s / 10 + 1)
}

/// One line of datastore figures, with what the server's timers account for in the window
/// (expected from the idle rate, and at most), to tell them apart from what the syncs caused.
fn print_counts(b: &Bench, label: &str, wall: Duration, c: Counters, target: &str) {
    println!(
        "  {label:<50}: {:>6} datastore calls ({target}; timers in these {:.1} s: ~{:.1}, at most {}), {} entry-cache reloads",
        c.queries,
        wall.as_secs_f64(),
        b.idle_rate * wall.as_secs_f64(),
        timer_bound(wall),
        c.reloads
    );
}

fn workload_req<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(SECURITY_HEADER, "true".parse().unwrap());
    r
}

async fn x509_ttfm(client: &mut SpiffeWorkloadApiClient<Channel>) -> Duration {
    let t = Instant::now();
    let mut stream = client.fetch_x509svid(workload_req(X509svidRequest {})).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("stream ended before the first message");
    let d = t.elapsed();
    assert!(!first.svids.is_empty(), "no X509-SVID in the first message");
    drop(stream);
    d
}

async fn jwt(client: &mut SpiffeWorkloadApiClient<Channel>, audience: String) -> Duration {
    let t = Instant::now();
    let r = client.fetch_jwtsvid(workload_req(JwtsvidRequest { audience: vec![audience], spiffe_id: String::new() })).await.unwrap();
    let d = t.elapsed();
    assert!(!r.into_inner().svids.is_empty(), "no JWT-SVID returned");
    d
}

fn summary(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let mean = v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64 * 1e6;
    let cut = if v.len() < ITERS { format!(", cut at {} s", BUDGET.as_secs()) } else { String::new() };
    println!("  {label:<50}: p50 {:>9.1} us  p99 {:>9.1} us  mean {mean:>9.1} us  (n = {}{cut})", pct(&v, 50), pct(&v, 99), v.len());
}

/// Runs `f` `ITERS` times or until `BUDGET` is spent, returning each duration.
async fn sample<F, Fut>(mut f: F) -> Vec<Duration>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let start = Instant::now();
    let mut v = Vec::with_capacity(ITERS);
    for i in 0..ITERS {
        v.push(f(i).await);
        if start.elapsed() > BUDGET {
            break;
        }
    }
    v
}

async fn part1_workload_api(b: &Bench, dir: &std::path::Path) {
    let (agent, agent_id) = b.agent().await;
    b.create_entries(&agent_id, 1, "wl").await;
    b.settle(&[(agent_id, 1)]).await;
    agent.sync_once().await.unwrap();
    assert_eq!(agent.subscribe().borrow().as_ref().map(|s| s.svids.len()), Some(1), "the agent holds the workload SVID");

    let path = dir.join("workload.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    // The caller's uid from SO_PEERCRED becomes unix:uid:<uid>; no /proc reads or hashing.
    let attestor = |c: &CallerInfo| -> Result<Vec<Selector>, cairn::agent::workload::WorkloadAttestError> {
        Ok(vec![Selector { kind: "unix".into(), value: format!("uid:{}", c.uid) }])
    };
    let api = WorkloadApi::new(Arc::clone(&agent) as Arc<dyn WorkloadSource>, Arc::new(attestor));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(serve(api, listener, default_limits(cairn::net::raise_nofile_limit()), async move {
        let _ = stop_rx.await;
    }));
    let channel = Endpoint::from_shared(format!("unix:{}", path.display())).unwrap().connect().await.unwrap();
    let client = SpiffeWorkloadApiClient::new(channel);

    let w = Window::open_after_timer(b).await;
    for i in 0..WARMUP {
        x509_ttfm(&mut client.clone()).await;
        jwt(&mut client.clone(), "bench-cached".into()).await;
        if i < 20 {
            jwt(&mut client.clone(), format!("warmup-{i}")).await;
        }
    }
    let x = sample(|_| {
        let mut c = client.clone();
        async move { x509_ttfm(&mut c).await }
    })
    .await;
    let jc = sample(|_| {
        let mut c = client.clone();
        async move { jwt(&mut c, "bench-cached".into()).await }
    })
    .await;
    let ju = sample(|i| {
        let mut c = client.clone();
        async move { jwt(&mut c, format!("bench-fresh-{i}")).await }
    })
    .await;
    let (wall, during) = w.close(b);

    println!("1. Workload API on a Unix socket, served from the agent's cache (tonic client, one HTTP/2 connection)");
    summary("FetchX509SVID, time to first message (new stream)", x);
    summary("FetchJWTSVID, cached (same audience)", jc);
    summary("FetchJWTSVID, uncached (agent -> NewJWTSVID, mTLS)", ju);
    print_counts(b, "server datastore during part 1", wall, during, "target 0");
    println!();

    let _ = stop_tx.send(());
    let _ = serving.await;
}

async fn part2_one_agent(b: &Bench) {
    let one_agent_entries = env_usize("BENCH_ONE_AGENT_ENTRIES", ONE_AGENT_ENTRIES);
    let (agent, agent_id) = b.agent().await;
    let t = Instant::now();
    b.create_entries(&agent_id, one_agent_entries, "one").await;
    let created = t.elapsed();
    let reload = b.settle(&[(agent_id, one_agent_entries)]).await;

    let w = Window::open_after_timer(b).await;
    agent.sync_once().await.unwrap();
    let (first, first_c) = w.close(b);
    let held = agent.subscribe().borrow().as_ref().map_or(0, |s| s.svids.len());
    assert_eq!(held, one_agent_entries, "the first sync minted every SVID");

    let w = Window::open_after_timer(b).await;
    let mut per = Vec::with_capacity(STEADY_SYNCS);
    for _ in 0..STEADY_SYNCS {
        let t = Instant::now();
        agent.sync_once().await.unwrap();
        per.push(t.elapsed());
    }
    let (steady, steady_c) = w.close(b);
    per.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    println!("2. One agent, {one_agent_entries} entries (BENCH_ONE_AGENT_ENTRIES)");
    println!(
        "  {:<50}: {:>9.2} s    (admin socket, BatchCreateEntry x {}; setup, not a sync)",
        "creating the entries",
        created.as_secs_f64(),
        one_agent_entries.div_ceil(CREATE_BATCH)
    );
    println!("  {:<50}: {:>9.1} ms   (list_entries + list_attested_nodes + get_bundle)", "one server entry-cache rebuild", ms(reload));
    println!(
        "  {:<50}: {:>9.2} s    ({:.0} SVIDs/s; BatchNewX509SVID x {} of 500)",
        "first sync (mints every X509-SVID)",
        first.as_secs_f64(),
        one_agent_entries as f64 / first.as_secs_f64(),
        one_agent_entries.div_ceil(500)
    );
    print_counts(b, "  datastore during the first sync", first, first_c, "target 0");
    println!(
        "  {:<50}: {:>9.1} ms   per sync (mean; min {:.1}, max {:.1}; {STEADY_SYNCS} syncs)",
        "steady-state sync",
        ms(steady) / STEADY_SYNCS as f64,
        ms(per[0]),
        ms(per[per.len() - 1])
    );
    print_counts(b, "  datastore during the steady-state syncs", steady, steady_c, "target 0");
    println!();
}

async fn part3_many_agents(b: &Bench, n_agents: usize, per_agent: usize) -> Vec<(Arc<Agent>, SpiffeId)> {
    let mut agents = Vec::with_capacity(n_agents);
    let t = Instant::now();
    for _ in 0..n_agents {
        agents.push(b.agent().await);
    }
    let attested = t.elapsed();
    let t = Instant::now();
    for (i, (_, id)) in agents.iter().enumerate() {
        b.create_entries(id, per_agent, &format!("a{i}")).await;
    }
    let created = t.elapsed();
    let expect: Vec<(SpiffeId, usize)> = agents.iter().map(|(_, id)| (id.clone(), per_agent)).collect();
    let reload = b.settle(&expect).await;

    // Every agent syncs at once; the window closes when the last one is done.
    let round = |agents: &[(Arc<Agent>, SpiffeId)]| {
        let tasks: Vec<_> = agents
            .iter()
            .map(|(a, _)| {
                let a = Arc::clone(a);
                tokio::spawn(async move { a.sync_once().await })
            })
            .collect();
        async move {
            for task in tasks {
                task.await.unwrap().unwrap();
            }
        }
    };
    let w = Window::open_after_timer(b).await;
    round(&agents).await;
    let (first, first_c) = w.close(b);
    for (a, _) in &agents {
        assert_eq!(a.subscribe().borrow().as_ref().map_or(0, |s| s.svids.len()), per_agent, "every agent got every SVID");
    }
    let w = Window::open_after_timer(b).await;
    round(&agents).await;
    let (steady, steady_c) = w.close(b);
    let total = n_agents * per_agent;
    let in_ds = b.state.datastore.count_entries().await.unwrap();

    println!("3. {n_agents} agents x {per_agent} entries = {total} entries (BENCH_AGENTS, BENCH_ENTRIES_PER_AGENT)");
    println!(
        "  {:<50}: {:>9.2} s    ({:.1} ms each: CreateJoinToken + AttestAgent + GetBundle)",
        "attesting the agents, one after another",
        attested.as_secs_f64(),
        attested.as_secs_f64() * 1e3 / n_agents as f64
    );
    println!(
        "  {:<50}: {:>9.2} s    (admin socket, BatchCreateEntry x {}; setup, not a sync)",
        "creating the entries",
        created.as_secs_f64(),
        n_agents * per_agent.div_ceil(CREATE_BATCH)
    );
    println!("  {:<50}: {:>9.1} ms   ({in_ds} entries in the datastore)", "one server entry-cache rebuild", reload.as_secs_f64() * 1e3);
    println!(
        "  {:<50}: {:>9.2} s    ({:.0} SVIDs/s, agents' key generation included)",
        format!("{n_agents} first syncs, concurrently"),
        first.as_secs_f64(),
        total as f64 / first.as_secs_f64()
    );
    print_counts(b, "  datastore during the first syncs", first, first_c, "target 0");
    println!(
        "  {:<50}: {:>9.1} ms   for the round ({:.2} ms of wall per agent)",
        format!("{n_agents} steady-state syncs, concurrently"),
        steady.as_secs_f64() * 1e3,
        steady.as_secs_f64() * 1e3 / n_agents as f64
    );
    print_counts(b, "  datastore during the steady-state round", steady, steady_c, "target 0");
    agents
}

/// Part 4: the agents of part 3 hold their change streams (cairn's AgentSync) and `changes`
/// entries are created, one at a time, under the first agent. Each change wakes every stream;
/// a stream crawls its agent's entries again only when the change touched an ID its last
/// crawl visited. Baseline, same run: the crawls every stream made for every change before
/// (one authorized-entries crawl and digest per agent).
async fn part4_change_fanout(b: &Bench, agents: &[(Arc<Agent>, SpiffeId)], per_agent: usize, changes: usize) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut runs = Vec::new();
    for (a, _) in agents {
        let (a, mut stop) = (Arc::clone(a), stop_rx.clone());
        runs.push(tokio::spawn(async move {
            let _ = a
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        }));
    }
    let t0 = Instant::now();
    while b.state.agent_streams.open() < agents.len() {
        assert!(t0.elapsed() < Duration::from_secs(60), "only {} of {} change streams opened", b.state.agent_streams.open(), agents.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (first, first_id) = &agents[0];
    let count = |a: &Agent| a.subscribe().borrow().as_ref().map_or(0, |s| s.svids.len());
    let crawls0 = b.state.agent_streams.crawls();
    let cpu0 = common::cpu_seconds(None);
    let start = Instant::now();
    for k in 0..changes {
        b.create_entries(first_id, 1, &format!("fanout{k}")).await;
        let t = Instant::now();
        while count(first) < per_agent + k + 1 {
            assert!(t.elapsed() < Duration::from_secs(30), "change {k} did not reach the agent");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let wall = start.elapsed();
    let cpu = common::cpu_seconds(None) - cpu0;
    let crawls = b.state.agent_streams.crawls() - crawls0;
    // The baseline: what each change cost the streams when every one of them crawled.
    let now = cairn::now_unix();
    let t = Instant::now();
    let mut held = 0usize;
    for (_, id) in agents {
        held += std::hint::black_box(b.state.entry_cache.authorized_entries(id, now)).len();
    }
    let all_crawls = t.elapsed();
    let _ = stop_tx.send(true);
    for r in runs {
        let _ = r.await;
    }
    println!("4. {} agents holding change streams; {changes} entries created one at a time under one agent", agents.len());
    println!(
        "  {:<50}: {:>9.2} ms   (create -> the agent holds the new SVID; process CPU {:.2} ms per change)",
        "per change, end to end",
        wall.as_secs_f64() * 1e3 / changes as f64,
        cpu * 1e3 / changes as f64
    );
    println!(
        "  {:<50}: {:>9.2}      (baseline: {} per change, one per stream)",
        "stream crawls per change",
        crawls as f64 / changes as f64,
        agents.len()
    );
    println!(
        "  {:<50}: {:>9.2} ms   ({} crawls over {held} authorized entries, the baseline's work per change)",
        "every stream crawling once",
        all_crawls.as_secs_f64() * 1e3,
        agents.len()
    );
}

fn main() {
    let n_agents = env_usize("BENCH_AGENTS", 100);
    let per_agent = env_usize("BENCH_ENTRIES_PER_AGENT", 1_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let begin = Instant::now();
        let (mut b, stop, server) = Bench::start(dir.path()).await;

        // The server's own timers (server SVID/bundle refresh every 5 s: get_bundle; CA
        // rotation check every 10 s: set_ca_journal + prune_bundle; entry-cache safety reload
        // every 300 s) read the datastore whatever the agents do. Measure them with nothing
        // else running, to tell them apart from calls caused by syncs.
        tokio::time::sleep(Duration::from_secs(1)).await; // past the timers' first, immediate ticks
        let w = Window::open(&b);
        tokio::time::sleep(IDLE_WINDOW).await;
        let (idle_wall, idle) = w.close(&b);
        b.idle_rate = idle.queries as f64 / idle_wall.as_secs_f64();

        println!();
        println!("cairn agent benchmark: server and agents in one process on 127.0.0.1 (agent -> server over mTLS),");
        println!(
            "{} datastore, {} CPUs shared by server, agents and clients",
            std::env::var("BENCH_DATASTORE").ok().and_then(|d| d.split('"').nth(1).map(str::to_owned)).unwrap_or_else(|| "sqlite3".into()),
            std::thread::available_parallelism().map_or(0, usize::from)
        );
        println!();
        println!("Datastore figures count the server's datastore calls in each window. The server's own timers make");
        println!("some whatever the agents do; each line says how many of them the window can hold. Measured windows");
        println!("open just after a timer call, so a short one usually holds none.");
        println!();
        println!("0. Idle server (background timers, no agents)");
        print_counts(&b, &format!("datastore in {} s of idle", IDLE_WINDOW.as_secs()), idle_wall, idle, "baseline");
        println!();

        if std::env::var_os("BENCH_SKIP_WORKLOAD_API").is_none() {
            part1_workload_api(&b, dir.path()).await;
        }
        part2_one_agent(&b).await;
        let agents = part3_many_agents(&b, n_agents, per_agent).await;
        println!();
        part4_change_fanout(&b, &agents, per_agent, env_usize("BENCH_FANOUT_CHANGES", 50)).await;
        println!();
        println!("total run time {:.0} s", begin.elapsed().as_secs_f64());

        let _ = stop.send(());
        let _ = server.await;
    });
}
