//! `cairn tiers`: a local multi-tier demo of one trust domain, brought up from a small
//! `topology.conf` (see [`topology`]).
//!
//! `up` writes every tier's config under the data dir, starts each tier with this same binary,
//! and wires nested tiers the way an operator would by hand:
//!
//! ```text
//!   root server ──── root-tier agent "region-a/upstream-agent" (join token, alias nodes/region-a)
//!        │                 │ serves the X509-SVID of the -downstream entry spiffe://td/region-a
//!        │                 ▼
//!        └──────── region-a server (UpstreamAuthority "spire": its CA is signed by root)
//!                          │
//!                          └── agent node-a (join token on region-a; entry spiffe://td/region-a/workload)
//! ```
//!
//! It then shows the tree, each tier's CA chain and which JWT keys each tier sees, and waits
//! until every tier (servers through their `status.json`, agents through the Workload API)
//! sees every tier's key. Ports, sockets and pids go to `<data-dir>/tiers.json`, which
//! `status` and `down` read.

/// `println!` that cannot panic: with `cairn tiers up | head`, stdout closes while the tiers
/// run, and a panic there would end `up` without stopping them. Write errors are ignored.
macro_rules! say {
    () => { $crate::tiers::emit(&mut std::io::stdout(), format_args!("")) };
    ($($t:tt)*) => { $crate::tiers::emit(&mut std::io::stdout(), format_args!($($t)*)) };
}

/// `eprintln!` that cannot panic (see `say!`).
macro_rules! warn_line {
    ($($t:tt)*) => { $crate::tiers::emit(&mut std::io::stderr(), format_args!($($t)*)) };
}

pub mod probe;
pub mod procs;
mod report;
pub mod topology;

use crate::config::format_duration;
use crate::spiffe::SpiffeId;
use probe::ServerStatus;
use procs::Supervisor;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use topology::{ServerSpec, Topology};

/// Default topology directory of `cairn tiers up`.
pub const DEFAULT_DIR: &str = "tiers/demo";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = ".data/demo";
/// Default first port tried.
pub const DEFAULT_BASE_PORT: u16 = 19100;
/// How long every tier gets to see every tier's JWT key before `up` says it did not converge.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one process gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest Unix socket path accepted everywhere (macOS allows 104 bytes, Linux 108).
const MAX_SOCKET_PATH: usize = 103;
/// The record of a demo in its data dir.
const STATE_FILE: &str = "tiers.json";

/// What `cairn tiers up` was asked to do.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Directory with `topology.conf` (or the topology file itself).
    pub dir: PathBuf,
    /// Where configs, databases, keys, sockets and logs go.
    pub data_dir: PathBuf,
    /// First port tried for the servers.
    pub base_port: u16,
    /// Leave the tiers running and return.
    pub detach: bool,
    /// Keep every server's CA and JWT keys on a SoftHSM2 token made for the demo.
    pub softhsm: bool,
}

/// Under the data dir: the demo's SoftHSM2 token store, config and PIN file (`--softhsm`).
const SOFTHSM_DIR: &str = "softhsm";
/// The PKCS#11 module `--softhsm` uses.
const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The demo token's label.
const SOFTHSM_TOKEN: &str = "cairn-demo";

/// The demo's token: `SOFTHSM2_CONF` for the children and the PIN file the configs name.
#[derive(Debug, Clone)]
struct DemoToken {
    conf: PathBuf,
    pin_file: PathBuf,
}

/// Makes a fresh SoftHSM2 token store under the data dir with one token, PIN in a 0600 file.
fn prepare_softhsm(data_dir: &Path) -> Result<DemoToken, String> {
    if !Path::new(SOFTHSM_MODULE).is_file() {
        return Err(format!("--softhsm needs SoftHSM2 ({SOFTHSM_MODULE} is missing): apt-get install softhsm2"));
    }
    let dir = data_dir.join(SOFTHSM_DIR);
    let tokens = dir.join("tokens");
    crate::fsutil::create_dir_all_mode(&tokens, 0o700).map_err(|e| format!("{}: {e}", tokens.display()))?;
    let conf = dir.join("softhsm2.conf");
    write_file(
        &conf,
        &format!(
            "directories.tokendir = {}
objectstore.backend = file
log.level = ERROR
slots.removable = false
",
            tokens.display()
        ),
    )?;
    // A random PIN per demo, in a file only this user reads; the SO PIN is not kept.
    let pin = crate::text::hex(uuid::Uuid::new_v4().as_bytes());
    let so_pin = crate::text::hex(uuid::Uuid::new_v4().as_bytes());
    let pin_file = dir.join("user.pin");
    crate::fsutil::write_private_atomic(&pin_file, pin.as_bytes()).map_err(|e| format!("{}: {e}", pin_file.display()))?;
    let out = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", SOFTHSM_TOKEN, "--pin", &pin, "--so-pin", &so_pin])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .map_err(|e| format!("--softhsm: cannot run softhsm2-util (apt-get install softhsm2): {e}"))?;
    if !out.status.success() {
        return Err(format!("softhsm2-util --init-token: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(DemoToken { conf, pin_file })
}

/// `<data-dir>/tiers.json`: what `up` started, for `status` and `down`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// The trust domain of every tier.
    pub trust_domain: String,
    /// The topology file.
    pub topology: PathBuf,
    /// The data dir (absolute).
    pub data_dir: PathBuf,
    /// Unix seconds when `up` started.
    pub started_at: i64,
    /// Whether `up` left the tiers running and returned.
    pub detached: bool,
    /// The foreground `cairn tiers up` that supervises the tiers, while it runs.
    pub supervisor_pid: Option<u32>,
    /// Servers, root first.
    pub servers: Vec<ServerState>,
    /// Agents: each downstream server's upstream agent, then the workload agents.
    pub agents: Vec<AgentState>,
}

/// One server of the demo.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServerState {
    /// Its name in the topology.
    pub name: String,
    /// The server above it (none for the root).
    pub upstream: Option<String>,
    /// 0 for the root.
    pub depth: usize,
    /// TLS gRPC port on 127.0.0.1 (agents and downstream servers).
    pub port: u16,
    /// Admin socket.
    pub socket: PathBuf,
    /// Its data dir (datastore, keys, status.json).
    pub dir: PathBuf,
    /// server.conf.
    pub config: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
    /// Where it writes its status each second.
    pub status_file: PathBuf,
    /// ca_ttl, seconds.
    pub ca_ttl: i64,
    /// Its pid, once started.
    pub pid: Option<u32>,
}

/// One agent of the demo.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AgentState {
    /// Its name: the topology's for workload agents, `<server>/upstream-agent` for the
    /// agent that gives a downstream server its identity.
    pub name: String,
    /// `workload` or `upstream`.
    pub role: String,
    /// The server it attests to.
    pub server: String,
    /// For an upstream agent: the downstream server it serves.
    pub serves: Option<String>,
    /// Its node alias (the join token's agent ID).
    pub node_id: String,
    /// The SPIFFE ID its entry issues to processes of this user.
    pub spiffe_id: String,
    /// Workload API socket.
    pub socket: PathBuf,
    /// Its data dir.
    pub dir: PathBuf,
    /// agent.conf.
    pub config: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
    /// Its pid, once started.
    pub pid: Option<u32>,
}

impl State {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(STATE_FILE)
    }

    /// Reads `<data_dir>/tiers.json`.
    ///
    /// # Errors
    /// No demo there, or an unreadable file.
    pub fn load(data_dir: &Path) -> Result<Self, String> {
        let path = Self::path(data_dir);
        let text = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "no demo in {}: {} is missing (start one with cairn tiers up, or pass --data-dir)",
                    data_dir.display(),
                    path.display()
                )
            } else {
                format!("cannot read {}: {e}", path.display())
            }
        })?;
        serde_json::from_slice(&text).map_err(|e| format!("{} is not a cairn tiers record: {e}", path.display()))
    }

    fn save(&self) -> Result<(), String> {
        let path = Self::path(&self.data_dir);
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        crate::fsutil::write_private_atomic(&path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Every recorded process as (label, pid, marker), in the order to stop them: agents of
    /// the lowest tiers first, the root last.
    fn processes(&self) -> Vec<(String, u32, String)> {
        let agents =
            self.agents.iter().rev().filter_map(|a| a.pid.map(|p| (format!("agent {}", a.name), p, a.config.display().to_string())));
        let servers =
            self.servers.iter().rev().filter_map(|s| s.pid.map(|p| (format!("server {}", s.name), p, s.config.display().to_string())));
        agents.chain(servers).collect()
    }

    fn live_processes(&self) -> Vec<(String, u32, String)> {
        self.processes().into_iter().filter(|(_, pid, m)| procs::is_ours(*pid, m)).collect()
    }

    fn clear_pids(&mut self) {
        self.servers.iter_mut().for_each(|s| s.pid = None);
        self.agents.iter_mut().for_each(|a| a.pid = None);
        self.supervisor_pid = None;
    }

    fn server(&self, name: &str) -> Result<&ServerState, String> {
        self.servers.iter().find(|s| s.name == name).ok_or_else(|| format!("{STATE_FILE} has no server {name:?}"))
    }

    fn trust_domain_id(&self) -> String {
        format!("spiffe://{}", self.trust_domain)
    }
}

/// SIGINT and SIGTERM, installed before any child starts so that neither can end `up`
/// without it stopping what it started.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let err = |e: std::io::Error| format!("cannot install signal handlers: {e}");
        Ok(Self { int: signal(SignalKind::interrupt()).map_err(err)?, term: signal(SignalKind::terminate()).map_err(err)? })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupt",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// Writes one line, ignoring errors (see `say!`).
pub(crate) fn emit(w: &mut impl std::io::Write, args: std::fmt::Arguments<'_>) {
    let _ = w.write_fmt(args);
    let _ = w.write_all(b"\n");
    let _ = w.flush();
}

// ---------------------------------------------------------------------------------------------
// up

/// `cairn tiers up`.
///
/// # Errors
/// A message for the operator; every process started before the failure is stopped.
pub async fn up(opts: &UpOptions) -> Result<(), String> {
    let topo_path = if opts.dir.is_file() { opts.dir.clone() } else { opts.dir.join("topology.conf") };
    let topo = Topology::load(&topo_path)?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this cairn binary to start the tiers with: {e}"))?;
    let mut signals = Signals::new()?;
    let data_dir = prepare_data_dir(&opts.data_dir)?;
    let topo_abs = std::fs::canonicalize(&topo_path).unwrap_or(topo_path);
    let token = if opts.softhsm { Some(prepare_softhsm(&data_dir)?) } else { None };
    let mut state = plan(&topo, &topo_abs, &data_dir, opts.base_port)?;
    state.supervisor_pid = (!opts.detach).then(std::process::id);
    state.save()?;
    // Files this process creates belong to its effective uid: the uid the unix workload
    // attestor sees on our Workload API calls, and so the uid every entry selects.
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(State::path(&data_dir)).map_err(|e| format!("{}: {e}", data_dir.display()))?.uid()
    };
    say!(
        "cairn tiers: {} servers and {} agents of {} from {}; data in {}",
        topo.servers.len(),
        topo.agents.len(),
        topo.trust_domain,
        topo_abs.display(),
        data_dir.display()
    );

    let mut sup = Supervisor::new(exe);
    if let Some(t) = &token {
        sup.set_env("SOFTHSM2_CONF", t.conf.as_os_str());
        say!("  keys: every server's CA and JWT keys on SoftHSM2 token {SOFTHSM_TOKEN:?} ({})", t.conf.display());
    }
    let outcome = tokio::select! {
        r = async {
            setup(&topo, &mut state, &mut sup, uid, token.as_ref()).await?;
            let (obs, converged_in) = converge(&state).await;
            report::print_up(&topo, &state, &obs, converged_in);
            Ok::<_, String>(converged_in.is_some())
        } => r,
        s = signals.recv() => Err(format!("{s} received before the demo was up")),
    };
    let converged = match outcome {
        Ok(c) => c,
        Err(e) => {
            if !sup.is_empty() {
                warn_line!("cairn tiers: stopping the {} processes started so far", sup.len());
                sup.stop_all().await;
            }
            state.clear_pids();
            let _ = state.save();
            return Err(e);
        }
    };
    let dd = data_dir.display();
    if opts.detach {
        sup.detach();
        state.detached = true;
        state.save()?;
        say!("\nLeft running (pids in {dd}/{STATE_FILE}).");
        say!("  cairn tiers status --data-dir {dd}");
        say!("  cairn tiers down --data-dir {dd}");
        if !converged {
            return Err(format!(
                "the tiers did not all see every JWT key within {}s; they are left running for inspection (logs in {dd}/*/*.log)",
                CONVERGENCE_TIMEOUT.as_secs()
            ));
        }
        return Ok(());
    }

    say!("\nRunning. Ctrl-C stops every tier (so does cairn tiers down --data-dir {dd}); cairn tiers status --data-dir {dd} shows them.");
    let reason = loop {
        tokio::select! {
            s = signals.recv() => break s,
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                for (label, status, log) in sup.newly_exited() {
                    warn_line!("cairn tiers: {label} exited ({status}); see {}", log.display());
                }
            }
        }
    };
    say!("\n{reason}: stopping {} processes", sup.len());
    let killed = sup.stop_all().await;
    state.clear_pids();
    let _ = state.save();
    if killed > 0 {
        say!("stopped ({killed} needed SIGKILL)");
    } else {
        say!("stopped");
    }
    Ok(())
}

/// Creates the data dir, or reuses the one of an earlier demo that is no longer running
/// (removing that demo's tier directories; databases, keys and spent join tokens from an
/// earlier run would not match the fresh registrations). Returns its absolute path.
fn prepare_data_dir(dir: &Path) -> Result<PathBuf, String> {
    // Every tier's keys and datastore live under it; the demo's workloads run as this user.
    crate::fsutil::create_dir_all_mode(dir, 0o700).map_err(|e| format!("--data-dir {}: {e}", dir.display()))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("--data-dir {}: {e}", dir.display()))?;
    if State::path(&dir).exists() {
        let old = State::load(&dir)?;
        if old.supervisor_pid.is_some_and(|p| procs::is_ours(p, "tiers")) || !old.live_processes().is_empty() {
            return Err(format!(
                "a demo is already running in {d}; stop it with cairn tiers down --data-dir {d}, or choose another --data-dir",
                d = dir.display()
            ));
        }
        // Only directories inside the data dir are removed, whatever the record says.
        for d in old.servers.iter().map(|s| &s.dir).chain(old.agents.iter().map(|a| &a.dir)) {
            if d.starts_with(&dir) && d != &dir && d.exists() {
                std::fs::remove_dir_all(d).map_err(|e| format!("removing the earlier demo's {}: {e}", d.display()))?;
            }
        }
        let token_store = dir.join(SOFTHSM_DIR);
        if token_store.exists() {
            std::fs::remove_dir_all(&token_store).map_err(|e| format!("removing the earlier demo's {}: {e}", token_store.display()))?;
        }
        std::fs::remove_file(State::path(&dir)).map_err(|e| format!("removing {}: {e}", State::path(&dir).display()))?;
    }
    let mut entries = std::fs::read_dir(&dir).map_err(|e| format!("--data-dir {}: {e}", dir.display()))?;
    if let Some(Ok(e)) = entries.next() {
        return Err(format!(
            "--data-dir {} is not empty ({} and maybe more) and holds no {STATE_FILE}; choose an empty or new directory",
            dir.display(),
            e.file_name().to_string_lossy()
        ));
    }
    Ok(dir)
}

/// Ports, paths and names for every process, before anything starts.
fn plan(topo: &Topology, topo_path: &Path, data_dir: &Path, base_port: u16) -> Result<State, String> {
    let ports = procs::free_ports(base_port, topo.servers.len())?;
    let td = &topo.trust_domain;
    let id = |path: &str| SpiffeId::new(&format!("spiffe://{td}/{path}")).map(|i| i.to_string()).map_err(|e| format!("{path}: {e}"));
    let mut servers = Vec::new();
    let mut agents = Vec::new();
    for (s, port) in topo.servers.iter().zip(ports) {
        let dir = data_dir.join(&s.name);
        servers.push(ServerState {
            name: s.name.clone(),
            upstream: s.upstream.clone(),
            depth: s.depth,
            port,
            socket: dir.join("api.sock"),
            config: dir.join("server.conf"),
            log: dir.join("server.log"),
            status_file: dir.join("status.json"),
            dir: dir.clone(),
            ca_ttl: s.ca_ttl,
            pid: None,
        });
        if let Some(up) = &s.upstream {
            let adir = dir.join("upstream-agent");
            agents.push(AgentState {
                name: format!("{}/upstream-agent", s.name),
                role: "upstream".into(),
                server: up.clone(),
                serves: Some(s.name.clone()),
                node_id: id(&format!("nodes/{}", s.name))?,
                spiffe_id: id(&s.name)?,
                socket: dir.join("upstream-agent.sock"),
                config: adir.join("agent.conf"),
                log: adir.join("agent.log"),
                dir: adir,
                pid: None,
            });
        }
    }
    for a in &topo.agents {
        let dir = data_dir.join(&a.name);
        agents.push(AgentState {
            name: a.name.clone(),
            role: "workload".into(),
            server: a.server.clone(),
            serves: None,
            node_id: id(&format!("nodes/{}", a.name))?,
            spiffe_id: id(&format!("{}/workload", a.server))?,
            socket: dir.join("agent.sock"),
            config: dir.join("agent.conf"),
            log: dir.join("agent.log"),
            dir,
            pid: None,
        });
    }
    for sock in servers.iter().map(|s| &s.socket).chain(agents.iter().map(|a| &a.socket)) {
        let len = sock.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(format!(
                "the socket path {} is {len} bytes, longer than Unix sockets allow ({MAX_SOCKET_PATH}); use a shorter --data-dir or shorter tier names",
                sock.display()
            ));
        }
    }
    Ok(State {
        trust_domain: td.to_string(),
        topology: topo_path.to_owned(),
        data_dir: data_dir.to_owned(),
        started_at: crate::now_unix(),
        detached: false,
        supervisor_pid: None,
        servers,
        agents,
    })
}

/// Starts and registers every tier: for each server root first, its upstream agent (after
/// registering it and the `-downstream` entry on the upstream), then the server; then the
/// workload agents, each after its token and entry.
async fn setup(topo: &Topology, state: &mut State, sup: &mut Supervisor, uid: u32, token: Option<&DemoToken>) -> Result<(), String> {
    let td = state.trust_domain.clone();
    for spec in &topo.servers {
        let si = state.servers.iter().position(|s| s.name == spec.name).ok_or("internal: server missing from the plan")?;
        let upstream = match &spec.upstream {
            None => None,
            Some(up) => {
                let ai =
                    state.agents.iter().position(|a| a.serves.as_deref() == Some(&spec.name)).ok_or("internal: upstream agent missing")?;
                start_agent(state, sup, ai, uid).await?;
                Some((state.server(up)?.port, state.agents.get(ai).map(|a| a.socket.clone()).unwrap_or_default()))
            }
        };
        let s = state.servers.get(si).cloned().ok_or("internal: server missing from the plan")?;
        crate::fsutil::create_dir_all_mode(&s.dir, 0o700).map_err(|e| format!("{}: {e}", s.dir.display()))?;
        write_file(&s.config, &server_conf(&td, &s, spec, upstream.as_ref().map(|(p, sock)| (*p, sock.as_path())), token))?;
        crate::config::server::ServerConfig::load(&s.config, false, &crate::config::server::ServerOverrides::default())
            .map_err(|e| format!("internal: the generated {} is not valid:\n{e}", s.config.display()))?;
        let t0 = Instant::now();
        let idx = sup.spawn(
            &format!("server {}", s.name),
            &[OsStr::new("server"), OsStr::new("run"), OsStr::new("-config"), s.config.as_os_str()],
            &s.dir,
            &s.log,
        )?;
        let pid = sup.get(idx).map(procs::Proc::pid);
        if let Some(st) = state.servers.get_mut(si) {
            st.pid = pid;
        }
        state.save()?;
        wait_ready(sup, idx, &format!("server {}", s.name), || probe::server_healthy(&s.socket)).await?;
        say!(
            "  server {:<28} {:<18} pid {:<7}  healthy in {:.1}s",
            s.name,
            format!("127.0.0.1:{}", s.port),
            pid.unwrap_or_default(),
            t0.elapsed().as_secs_f64()
        );
    }
    let workload: Vec<usize> = state.agents.iter().enumerate().filter(|(_, a)| a.role == "workload").map(|(i, _)| i).collect();
    for ai in workload {
        start_agent(state, sup, ai, uid).await?;
    }
    Ok(())
}

/// Registers agent `ai` on its server (token + entry), writes its config and bootstrap
/// bundle, starts it, and waits until its Workload API hands this process the entry's SVID.
async fn start_agent(state: &mut State, sup: &mut Supervisor, ai: usize, uid: u32) -> Result<(), String> {
    let a = state.agents.get(ai).cloned().ok_or("internal: agent missing from the plan")?;
    let server = state.server(&a.server)?.clone();
    let node = SpiffeId::new(&a.node_id).map_err(|e| e.to_string())?;
    let issued = SpiffeId::new(&a.spiffe_id).map_err(|e| e.to_string())?;
    let token = probe::register_node(&server.socket, &node, &issued, uid, a.role == "upstream")
        .await
        .map_err(|e| format!("registering agent {} on server {}: {e}", a.name, server.name))?;
    crate::fsutil::create_dir_all_mode(&a.dir, 0o700).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    let bootstrap = a.dir.join("bootstrap.pem");
    write_file(&bootstrap, &probe::bundle_pem(&server.socket).await?)?;
    write_file(&a.config, &agent_conf(&state.trust_domain, &a, server.port, &bootstrap, &token))?;
    crate::config::agent::AgentConfig::load(&a.config, false, &crate::config::agent::AgentOverrides::default())
        .map_err(|e| format!("internal: the generated {} is not valid:\n{e}", a.config.display()))?;
    let label = format!("agent {}", a.name);
    let t0 = Instant::now();
    let idx = sup.spawn(&label, &[OsStr::new("agent"), OsStr::new("run"), OsStr::new("-config"), a.config.as_os_str()], &a.dir, &a.log)?;
    let pid = sup.get(idx).map(procs::Proc::pid);
    if let Some(st) = state.agents.get_mut(ai) {
        st.pid = pid;
    }
    state.save()?;
    // The socket appears after the agent's first sync; the SVID proves the entry reached it.
    wait_ready(sup, idx, &label, || async {
        if !a.socket.exists() {
            return Err(format!("no socket {} yet", a.socket.display()));
        }
        let ids = probe::x509_svid_ids(&a.socket).await?;
        if ids.contains(&a.spiffe_id) { Ok(()) } else { Err(format!("FetchX509SVID gives {ids:?}, not {}", a.spiffe_id)) }
    })
    .await?;
    say!(
        "  agent  {:<28} {:<18} pid {:<7}  ready in {:.1}s, serves {}",
        a.name,
        format!("on {}", server.name),
        pid.unwrap_or_default(),
        t0.elapsed().as_secs_f64(),
        a.spiffe_id
    );
    Ok(())
}

/// Polls `ready` until it holds, the process exits (an error with the end of its log), or
/// [`READY_TIMEOUT`] passes (an error with the last reason `ready` gave and the log's end).
async fn wait_ready<F, Fut>(sup: &mut Supervisor, idx: usize, label: &str, mut ready: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(msg) = sup.exit_message(idx) {
            return Err(msg);
        }
        let why = match ready().await {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if Instant::now() > deadline {
            let log = sup.get(idx).map(|p| p.log.clone()).unwrap_or_default();
            return Err(format!(
                "{label} was not ready within {}s ({why}); end of {}:\n{}",
                READY_TIMEOUT.as_secs(),
                log.display(),
                procs::log_tail(&log, 15)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes a file readable by this user only: agent configs carry join tokens.
fn write_file(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        crate::fsutil::create_dir_all_mode(dir, 0o700).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    crate::fsutil::write_private_atomic(path, text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A string as an HCL literal.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn qp(p: &Path) -> String {
    q(&p.display().to_string())
}

fn server_conf(td: &str, s: &ServerState, spec: &ServerSpec, upstream: Option<(u16, &Path)>, token: Option<&DemoToken>) -> String {
    let key_manager = match token {
        // One token for the whole demo; each server's keys under its own label prefix.
        Some(t) => format!(
            "    KeyManager \"pkcs11\" {{\n        plugin_data {{\n            module_path = {}\n            token_label = {}\n            pin_file = {}\n            key_label_prefix = {}\n        }}\n    }}",
            q(SOFTHSM_MODULE),
            q(SOFTHSM_TOKEN),
            qp(&t.pin_file),
            q(&format!("{}:", s.name))
        ),
        None => format!(
            "    KeyManager \"disk\" {{\n        plugin_data {{\n            keys_path = {}\n        }}\n    }}",
            qp(&s.dir.join("keys.json"))
        ),
    };
    let (experimental, upstream_plugin) = match upstream {
        None => (String::new(), String::new()),
        Some((port, socket)) => (
            // A downstream's new JWT key waits jwt_publish_grace after being published
            // upstream before it signs (SPIRE's 5 s would only slow the demo), and is activated
            // by the next rotation check after that: checking each second instead of every
            // 10 s has a fresh tier signing JWTs about 2 s after it starts.
            "    experimental {\n        jwt_publish_grace = \"2s\"\n        ca_rotation_interval = \"1s\"\n    }\n".to_owned(),
            format!(
                "    UpstreamAuthority \"spire\" {{\n        plugin_data {{\n            server_address = \"127.0.0.1\"\n            server_port = \"{port}\"\n            workload_api_socket = {}\n        }}\n    }}\n",
                qp(socket)
            ),
        ),
    };
    format!(
        r#"# Server {name} of the cairn tiers demo (written by cairn tiers up; rewritten on every up).
server {{
    trust_domain = {td}
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = {socket}
    data_dir = {dir}
    log_level = "INFO"
    ca_ttl = "{ca_ttl}"
    default_x509_svid_ttl = "{x509}"
    default_jwt_svid_ttl = "{jwt}"
    ca_subject = {{
        country = ["US"]
        organization = ["cairn tiers demo"]
    }}
{experimental}}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = {db}
        }}
    }}
{key_manager}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
{upstream_plugin}}}
"#,
        name = s.name,
        td = q(td),
        port = s.port,
        socket = qp(&s.socket),
        dir = qp(&s.dir),
        ca_ttl = format_duration(spec.ca_ttl),
        x509 = format_duration(spec.x509_svid_ttl),
        jwt = format_duration(spec.jwt_svid_ttl),
        db = qp(&s.dir.join("datastore.sqlite3")),
    )
}

fn agent_conf(td: &str, a: &AgentState, server_port: u16, bootstrap: &Path, token: &str) -> String {
    let what = match &a.serves {
        Some(down) => format!("gives server {down} its identity on server {}", a.server),
        None => format!("attests to server {}", a.server),
    };
    format!(
        r#"# Agent {name} of the cairn tiers demo: {what} (written by cairn tiers up).
agent {{
    trust_domain = {td}
    server_address = "127.0.0.1"
    server_port = "{server_port}"
    socket_path = {socket}
    data_dir = {dir}
    trust_bundle_path = {bootstrap}
    join_token = {token}
    log_level = "INFO"
    experimental {{
        # Entry and bundle changes reach workloads within a second.
        sync_interval = "1s"
    }}
}}

plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            directory = {keys}
        }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"#,
        name = a.name,
        td = q(td),
        socket = qp(&a.socket),
        dir = qp(&a.dir),
        bootstrap = qp(bootstrap),
        token = q(token),
        keys = qp(&a.dir.join("keys")),
    )
}

// ---------------------------------------------------------------------------------------------
// Convergence: who sees which JWT key

/// One tier's view of the JWT keys.
#[derive(Debug)]
struct View {
    /// `server root`, `agent node-a`.
    label: String,
    kids: Result<BTreeSet<String>, String>,
}

/// Every server's status and every tier's view, read once.
#[derive(Debug, Default)]
struct Observation {
    statuses: BTreeMap<String, Result<ServerStatus, String>>,
    /// kid -> the tier that owns it (`region-a`, or `region-a (prepared)` for a next key).
    owners: BTreeMap<String, String>,
    /// The owned kids in server order (root first), for printing.
    order: Vec<String>,
    views: Vec<View>,
}

impl Observation {
    async fn read(state: &State) -> Self {
        let mut obs = Self::default();
        for s in &state.servers {
            let st = ServerStatus::read(&s.status_file);
            if let Ok(st) = &st {
                for slot in st.slots_of("jwt") {
                    let owner = if slot.role == "current" { s.name.clone() } else { format!("{} (prepared)", s.name) };
                    obs.owners.insert(slot.id.clone(), owner);
                    obs.order.push(slot.id.clone());
                }
            }
            obs.views.push(View {
                label: format!("server {}", s.name),
                kids: st.as_ref().map(|st| st.jwt_key_ids.iter().cloned().collect()).map_err(Clone::clone),
            });
            obs.statuses.insert(s.name.clone(), st);
        }
        let td_id = state.trust_domain_id();
        for a in &state.agents {
            obs.views.push(View { label: format!("agent {}", a.name), kids: probe::jwt_bundle_kids(&a.socket, &td_id).await });
        }
        obs
    }

    /// Every server signs with an active JWT key and every tier sees every server's keys
    /// (active and prepared).
    fn converged(&self) -> bool {
        let own_keys = self.statuses.values().all(|s| s.as_ref().is_ok_and(|s| s.slots_of("jwt").any(|k| k.role == "current")));
        own_keys && self.views.iter().all(|v| v.kids.as_ref().is_ok_and(|k| self.owners.keys().all(|o| k.contains(o))))
    }
}

/// Waits up to [`CONVERGENCE_TIMEOUT`] for every tier to see every key; returns the last
/// observation and, when it converged, how long that took.
async fn converge(state: &State) -> (Observation, Option<Duration>) {
    let start = Instant::now();
    loop {
        let obs = Observation::read(state).await;
        if obs.converged() {
            return (obs, Some(start.elapsed()));
        }
        if start.elapsed() > CONVERGENCE_TIMEOUT {
            return (obs, None);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// status, down

/// `cairn tiers status`.
///
/// # Errors
/// No demo in `data_dir`.
pub async fn status(data_dir: &Path) -> Result<(), String> {
    let state = State::load(data_dir)?;
    let obs = Observation::read(&state).await;
    report::print_status(&state, &obs);
    Ok(())
}

/// `cairn tiers down`.
///
/// # Errors
/// No demo in `data_dir`, or its record cannot be updated.
pub async fn down(data_dir: &Path) -> Result<(), String> {
    let mut state = State::load(data_dir)?;
    // A foreground `up` stops its own children on SIGTERM, leaves first; the loop below
    // covers whatever it leaves behind (or a detached demo, which has no supervisor).
    if let Some(pid) = state.supervisor_pid.filter(|p| procs::is_ours(*p, "tiers")) {
        say!("asking the foreground cairn tiers up (pid {pid}) to stop");
        procs::signal(pid, "TERM");
    }
    let procs = state.processes();
    let (stopped, killed) = procs::stop_pids(&procs).await;
    state.clear_pids();
    state.detached = false;
    state.save()?;
    match (stopped, killed) {
        (0, _) => say!("nothing was running in {}", state.data_dir.display()),
        (n, 0) => say!("stopped {n} processes; configs and logs stay in {}", state.data_dir.display()),
        (n, k) => say!("stopped {n} processes ({k} needed SIGKILL); configs and logs stay in {}", state.data_dir.display()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
    use super::*;

    fn demo() -> Topology {
        let text = "trust_domain = \"example.org\"\nserver \"root\" {}\nserver \"region-a\" { upstream = \"root\" }\nagent \"node-a\" { server = \"region-a\" }\n";
        Topology::from_tree(&crate::config::parse_text(text, false).unwrap()).unwrap()
    }

    #[test]
    fn generated_configs_are_valid() {
        let tmp = tempfile::tempdir().unwrap();
        let topo = demo();
        let state = plan(&topo, Path::new("t.conf"), tmp.path(), 0).unwrap();
        let root = &state.servers[0];
        let region = &state.servers[1];
        assert_eq!(
            state.agents.iter().map(|a| (a.name.as_str(), a.server.as_str())).collect::<Vec<_>>(),
            [("region-a/upstream-agent", "root"), ("node-a", "region-a")]
        );
        assert_eq!(state.agents[0].spiffe_id, "spiffe://example.org/region-a");
        assert_eq!(state.agents[1].spiffe_id, "spiffe://example.org/region-a/workload");
        let up = &state.agents[0];
        let text = server_conf("example.org", region, &topo.servers[1], Some((root.port, &up.socket)), None);
        let cfg = crate::config::server::ServerConfig::from_tree(
            &crate::config::parse_text(&text, false).unwrap(),
            &crate::config::server::ServerOverrides::default(),
        )
        .unwrap();
        assert_eq!((cfg.ca_ttl, cfg.default_x509_svid_ttl, cfg.jwt_publish_grace, cfg.ca_rotation_interval), (4 * 3600, 1800, 2, 1));
        assert!(matches!(cfg.upstream, Some(crate::config::server::UpstreamConfig::Spire(_))));
        let bootstrap = tmp.path().join("b.pem");
        std::fs::write(&bootstrap, "").unwrap();
        let text = agent_conf("example.org", up, root.port, &bootstrap, "tok\"en");
        let cfg = crate::config::agent::AgentConfig::from_tree(
            &crate::config::parse_text(&text, false).unwrap(),
            &crate::config::agent::AgentOverrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.socket_path, up.socket);
        assert_eq!(cfg.join_token.as_deref(), Some("tok\"en"));
    }

    #[test]
    fn softhsm_configs_put_each_servers_keys_under_its_own_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let topo = demo();
        let state = plan(&topo, Path::new("t.conf"), tmp.path(), 0).unwrap();
        let token = DemoToken { conf: tmp.path().join("softhsm2.conf"), pin_file: tmp.path().join("user.pin") };
        let mut prefixes = Vec::new();
        for (s, spec) in state.servers.iter().zip(&topo.servers) {
            let text = server_conf("example.org", s, spec, None, Some(&token));
            let cfg = crate::config::server::ServerConfig::from_tree(
                &crate::config::parse_text(&text, false).unwrap(),
                &crate::config::server::ServerOverrides::default(),
            )
            .unwrap();
            let crate::keymanager::KeyManagerConfig::Pkcs11(km) = cfg.key_manager else { panic!("{text}") };
            assert_eq!(km.token.token_label, SOFTHSM_TOKEN);
            assert_eq!(km.token.pin, crate::keymanager::pkcs11::PinSource::File(token.pin_file.clone()));
            prefixes.push(km.key_label_prefix);
        }
        assert_eq!(prefixes, ["root:", "region-a:"]);
    }

    #[test]
    fn data_dir_must_be_empty_or_an_old_demo() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("precious.txt"), "x").unwrap();
        let e = prepare_data_dir(tmp.path()).unwrap_err();
        assert!(e.contains("not empty") && e.contains("precious.txt"), "{e}");
        // An earlier demo that is not running is cleared; files it did not make stay refused.
        let dd = tmp.path().join("demo");
        std::fs::create_dir(&dd).unwrap();
        let dd = std::fs::canonicalize(&dd).unwrap();
        let state = plan(&demo(), Path::new("t.conf"), &dd, 0).unwrap();
        std::fs::create_dir_all(&state.servers[0].dir).unwrap();
        std::fs::write(state.servers[0].dir.join("keys.json"), "{}").unwrap();
        state.save().unwrap();
        assert_eq!(prepare_data_dir(&dd).unwrap(), dd);
        assert!(!state.servers[0].dir.exists() && !State::path(&dd).exists());
    }

    #[test]
    fn long_socket_paths_are_refused_up_front() {
        let long = PathBuf::from(format!("/tmp/{}", "d".repeat(90)));
        let e = plan(&demo(), Path::new("t.conf"), &long, 0).unwrap_err();
        assert!(e.contains("longer than Unix sockets allow"), "{e}");
    }
}
