#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! Floods of idle and half-open connections on every listener (issue 7, items 3 and 4): they
//! are reaped within their timeout, they never lock out a legitimate caller, and this holds with
//! the server and agent confined to 1,024 descriptors (systemd's default soft limit).

use crate::common;

use common::agent::*;
use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// More connections per listener than the process has descriptors.
const FLOOD: usize = 2500;
/// The listeners' first-request timeout, plus slack for a loaded machine.
const REAPED_WITHIN: Duration = Duration::from_secs(25);

/// A process started under `ulimit -n 1024` (hard and soft), stopped on drop.
struct Limited {
    child: Option<Child>,
    log: PathBuf,
}

impl Limited {
    fn spawn(args: &[&str], config: &Path, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 1024 && exec \"$0\" \"$@\"")
            .arg(CAIRN)
            .args(args)
            .arg("-config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child: Some(child), log }
    }
    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(Iterator::count).unwrap_or(0)
    }
    fn nofile(&self) -> String {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).unwrap();
        limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned()
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c, Duration::from_secs(10));
        }
    }
}

fn raise_own_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let _ = setrlimit(Resource::Nofile, Rlimit { current: cur.maximum, maximum: cur.maximum });
    let now = getrlimit(Resource::Nofile).current.unwrap_or(0);
    assert!(now >= 4 * FLOOD as u64 + 512, "the test needs {} descriptors; the hard limit is {now}", 4 * FLOOD + 512);
}

/// Whether the server closed this connection (EOF or reset), without blocking.
fn closed_by_peer(s: &mut impl Read) -> bool {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Waits until every flood connection was closed by the far end; returns how long it took.
fn wait_all_closed<S: Read>(conns: &mut [S], what: &str, log: &dyn Fn() -> String) -> Duration {
    let start = Instant::now();
    let mut open: Vec<usize> = (0..conns.len()).collect();
    while !open.is_empty() {
        open.retain(|&i| !closed_by_peer(&mut conns[i]));
        assert!(
            start.elapsed() < REAPED_WITHIN,
            "{} of {} {what} connections still open after {REAPED_WITHIN:?}\n{}",
            open.len(),
            conns.len(),
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

fn tcp_flood(port: u16) -> Vec<std::net::TcpStream> {
    (0..FLOOD)
        .map(|_| {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect()
}

fn uds_flood(path: &Path) -> Vec<std::os::unix::net::UnixStream> {
    (0..FLOOD)
        .map(|_| {
            let s = std::os::unix::net::UnixStream::connect(path).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect()
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn floods_on_every_server_listener_are_reaped_and_never_lock_out_a_caller() {
    raise_own_nofile();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let health = free_port();
    let config = write_config(dir, port, &ServerOpts { health_port: Some(health), ..ServerOpts::default() });
    let server = Limited::spawn(&["server", "run"], &config, dir.join("server.log"));
    let socket = dir.join("api.sock");
    let cli = |args: &[&str]| Command::new(CAIRN).arg("server").args(args).arg("-socketPath").arg(&socket).output().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(socket.exists() && cli(&["healthcheck"]).status.success()) {
        assert!(Instant::now() < deadline, "server did not start:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.nofile().contains("1024"), "not confined: {}", server.nofile());
    let baseline_fds = server.open_fds();

    // Half-open connections on all three listeners at once, well past the descriptor limit.
    let mut tls = tcp_flood(port);
    let mut admin = uds_flood(&socket);
    let mut probes = tcp_flood(health);

    // Legitimate callers get through during the flood, on every listener.
    let out = cli(&["healthcheck"]);
    assert!(out.status.success(), "admin socket locked out: {out:?}\n{}", server.log());
    let t = cli(&["token", "generate", "-spiffeID", "spiffe://example.org/node1"]);
    assert!(t.status.success(), "{t:?}");
    let token = String::from_utf8(t.stdout).unwrap().trim().trim_start_matches("Token: ").to_owned();
    let live = http_get(health, "/live");
    assert!(live.starts_with("HTTP/1.1 200"), "health port locked out: {live:?}");
    // A new agent attests over the TLS port and is served.
    let adir = dir.join("agent");
    std::fs::create_dir(&adir).unwrap();
    std::fs::write(adir.join("bootstrap.pem"), String::from_utf8(cli(&["bundle", "show"]).stdout).unwrap()).unwrap();
    let acfg = adir.join("agent.conf");
    std::fs::write(
        &acfg,
        format!(
            "agent {{\n data_dir = \"{d}\"\n server_address = \"127.0.0.1\"\n server_port = \"{port}\"\n socket_path = \"{d}/agent.sock\"\n trust_bundle_path = \"{d}/bootstrap.pem\"\n trust_domain = \"example.org\"\n join_token = \"{token}\"\n}}\nplugins {{\n NodeAttestor \"join_token\" {{ plugin_data {{}} }}\n KeyManager \"memory\" {{ plugin_data {{}} }}\n WorkloadAttestor \"unix\" {{ plugin_data {{}} }}\n}}\n",
            d = adir.display()
        ),
    )
    .unwrap();
    let agent = Limited::spawn(&["agent", "run"], &acfg, adir.join("agent.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let agents = loop {
        let out = String::from_utf8(cli(&["agent", "list"]).stdout).unwrap();
        if out.contains(&format!("join_token/{token}")) {
            break out;
        }
        assert!(Instant::now() < deadline, "agent could not attest during the TLS flood:\n{}\n{}", agent.log(), server.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(agents.contains("example.org"));

    // Every flood connection is closed by the server within its first-request timeout.
    let tls_took = wait_all_closed(&mut tls, "TLS", &|| server.log());
    let admin_took = wait_all_closed(&mut admin, "admin socket", &|| server.log());
    let probe_took = wait_all_closed(&mut probes, "health", &|| server.log());
    eprintln!("reaped: TLS {tls_took:?}, admin {admin_took:?}, health {probe_took:?}");
    drop((tls, admin, probes));
    std::thread::sleep(Duration::from_secs(1));
    let after = server.open_fds();
    assert!(after <= baseline_fds + 16, "descriptors not released: {baseline_fds} before, {after} after");
    assert!(server.log().contains("connection cap reached"), "caps never tripped:\n{}", server.log());
    assert!(cli(&["healthcheck"]).status.success());
}

#[test]
fn a_workload_api_flood_by_one_uid_locks_out_neither_other_uids_nor_itself() {
    raise_own_nofile();
    assert_eq!(my_uid(), 0, "this test runs a flood as uid 65534 and must run as root (CI does)");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sdir = dir.join("server");
    std::fs::create_dir(&sdir).unwrap();
    let s = TestServer::start(&sdir, &ServerOpts::default());
    let t = token(&s, "spiffe://example.org/node1", "600");
    for (name, uid) in [("root", 0), ("nobody", 65534)] {
        s.cli_ok(&[
            "entry",
            "create",
            "-parentID",
            "spiffe://example.org/node1",
            "-spiffeID",
            &format!("spiffe://example.org/{name}"),
            "-selector",
            &format!("unix:uid:{uid}"),
        ]);
    }
    let adir = dir.join("agent");
    std::fs::create_dir(&adir).unwrap();
    let public = dir.join("public");
    std::fs::create_dir(&public).unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = public.join("api.sock");
    let cfg = agent_config(&adir, &s, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("socket_path = \"{}/agent.sock\"", adir.display()), &format!("socket_path = \"{}\"", socket.display()));
    std::fs::write(&cfg, text).unwrap();
    let agent = Limited::spawn(&["agent", "run"], &cfg, adir.join("agent.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "agent did not start:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let fetch = |uid: u32| {
        let out =
            Command::new(CAIRN).args(["agent", "api", "fetch", "x509", "-socketPath"]).arg(&socket).uid(uid).gid(uid).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fetch(0).contains("spiffe://example.org/root") {
        assert!(Instant::now() < deadline, "no SVID before the flood:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    // uid 65534 opens more connections than the agent has descriptors and holds them.
    let flood = format!(
        "import socket, sys, time\nconns = []\nfor _ in range({FLOOD}):\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({sock:?})\n    conns.append(s)\nprint('flooding', flush=True)\nt = time.time()\nwhile time.time() - t < 60:\n    time.sleep(0.2)\n    for s in conns:\n        s.setblocking(False)\n    closed = 0\n    for s in conns:\n        try:\n            if s.recv(1) == b'':\n                closed += 1\n        except BlockingIOError:\n            pass\n        except OSError:\n            closed += 1\n    if closed == len(conns):\n        print('all closed', round(time.time() - t, 1), flush=True)\n        break\n",
        sock = socket.display().to_string()
    );
    let mut py = Command::new("python3").arg("-c").arg(flood).uid(65534).gid(65534).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = py.stdout.take().unwrap();
    let mut first = [0u8; 9];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"flooding\n");
    // Root is served; so is the flooding uid's own legitimate workload.
    assert!(fetch(0).contains("spiffe://example.org/root"), "root locked out:\n{}", agent.log());
    assert!(fetch(65534).contains("spiffe://example.org/nobody"), "nobody locked out:\n{}", agent.log());
    // And every flood connection is reaped within the first-request timeout.
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let _ = py.wait();
    assert!(rest.starts_with("all closed"), "flood connections were not reaped: {rest:?}\n{}", agent.log());
}
