#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! The Workload API binds a caller's identity to the process that connected, not to whatever
//! process holds its pid later (issue 7, item 1).
//!
//! The attack: an unprivileged workload (`nobody`) connects to the agent, hands the connected
//! socket to its parent with SCM_RIGHTS, and then either execs a setuid-root program or exits
//! so that a root process takes over its pid. An agent that re-reads `/proc/<pid>` per request
//! would then attest the stolen connection as uid 0 and hand `nobody` root's SVIDs. The parent
//! relays the stolen connection through a socket of its own, so a stock client (`cairn agent
//! api fetch`) can drive it.
//!
//! These tests need root (a setuid binary, a workload run as `nobody`, and
//! `/proc/sys/kernel/ns_last_pid` to steer pid reuse); CI runs as root.

use crate::common;

use common::agent::*;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

/// The attacker, run as `nobody`: `attacker.py <agent socket> <relay socket> <exec|exit> <program>`.
/// Prints `child=<pid>` once the connecting child has exec'd (exec) or exited (exit), waits for
/// a line on stdin, then relays one client connection on the relay socket to the stolen one.
const ATTACKER: &str = r#"
import os, socket, sys, threading, time
agent_sock, relay_sock, mode, prog = sys.argv[1:5]
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
child = os.fork()
if child == 0:
    a.close()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(agent_sock)
    socket.send_fds(b, [b"x"], [s.fileno()])
    s.close()
    b.recv(1)
    time.sleep(0.5)  # let the agent accept (and pin) the connection first
    if mode == "exec":
        os.execv(prog, [prog, "120"])
    os._exit(0)
b.close()
_, fds, _, _ = socket.recv_fds(a, 1, 1)
stolen = socket.socket(fileno=fds[0])
a.send(b"k")
if mode == "exec":
    # Wait until the child runs the setuid program (its effective uid becomes 0).
    deadline = time.time() + 10
    while time.time() < deadline:
        with open(f"/proc/{child}/status") as f:
            uid = next(l for l in f if l.startswith("Uid:")).split()
        if uid[2] == "0":
            break
        time.sleep(0.05)
    else:
        sys.exit("child never became root")
else:
    os.waitpid(child, 0)
print(f"child={child}", flush=True)
sys.stdin.readline()
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(relay_sock)
os.chmod(relay_sock, 0o777)
srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
t = threading.Thread(target=pipe, args=(stolen, conn), daemon=True)
t.start()
pipe(conn, stolen)
t.join(5)
"#;

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    _server: TestServer,
    agent: TestAgent,
    setuid_sleep: PathBuf,
}

fn require_root() {
    assert_eq!(
        my_uid(),
        0,
        "this test must run as root: it installs a setuid program and runs a workload as uid {NOBODY} (CI runs as root)"
    );
}

fn open_up(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A server, an agent whose Workload API socket `nobody` can reach, entries for uid 0 and for
/// `nobody`, and a setuid-root copy of `sleep`.
fn setup() -> Setup {
    require_root();
    require("python3");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    open_up(&dir);
    let sdir = dir.join("server");
    std::fs::create_dir(&sdir).unwrap();
    let server = TestServer::start(&sdir, &ServerOpts::default());
    let t = token(&server, "spiffe://example.org/node1", "600");
    for (id, uid) in [("root", 0), ("nobody", NOBODY)] {
        server.cli_ok(&[
            "entry",
            "create",
            "-parentID",
            "spiffe://example.org/node1",
            "-spiffeID",
            &format!("spiffe://example.org/wl/{id}"),
            "-selector",
            &format!("unix:uid:{uid}"),
        ]);
    }
    let adir = dir.join("agent");
    std::fs::create_dir(&adir).unwrap();
    let public = dir.join("public");
    std::fs::create_dir(&public).unwrap();
    open_up(&public);
    let socket = public.join("api.sock");
    let cfg = agent_config(&adir, &server, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("socket_path = \"{}/agent.sock\"", adir.display()), &format!("socket_path = \"{}\"", socket.display()));
    assert!(text.contains(&socket.display().to_string()), "socket path not replaced in:\n{text}");
    std::fs::write(&cfg, text).unwrap();
    let mut agent = TestAgent { dir: adir, socket, config: cfg, child: None };
    agent.spawn();
    // Root's own call proves the uid-0 entry is served to uid 0 (so a refusal below is the fix
    // at work, not a missing entry).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = agent.api(&["fetch", "x509"]);
        if String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/wl/root") {
            break;
        }
        assert!(Instant::now() < deadline, "root never got its SVID: {out:?}\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let sleep = String::from_utf8(Command::new("sh").args(["-c", "command -v sleep"]).output().unwrap().stdout).unwrap();
    let setuid_sleep = dir.join("suid-sleep");
    std::fs::copy(sleep.trim(), &setuid_sleep).unwrap();
    std::fs::set_permissions(&setuid_sleep, std::fs::Permissions::from_mode(0o4755)).unwrap();
    Setup { _tmp: tmp, dir, _server: server, agent, setuid_sleep }
}

/// The attacker process (as `nobody`), its stdin and the lines it printed so far.
struct Attacker {
    child: Child,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    relay: PathBuf,
}

impl Attacker {
    fn start(s: &Setup, mode: &str) -> Self {
        // A directory the attacker (nobody) may create its relay socket in.
        let rdir = s.dir.join(format!("relay-{mode}"));
        std::fs::create_dir(&rdir).unwrap();
        std::fs::set_permissions(&rdir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let relay = rdir.join("relay.sock");
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(ATTACKER)
            .arg(&s.agent.socket)
            .arg(&relay)
            .arg(mode)
            .arg(&s.setuid_sleep)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, stdin, lines, relay }
    }

    fn expect_line(&self, prefix: &str) -> String {
        let line = self.lines.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|e| panic!("attacker said nothing ({e})"));
        assert!(line.starts_with(prefix), "attacker said {line:?}, expected {prefix}...");
        line
    }

    /// Lets the attacker relay, then asks for X509-SVIDs through the stolen connection.
    fn fetch_through_relay(&mut self) -> String {
        writeln!(self.stdin, "go").unwrap();
        self.expect_line("ready");
        let out = Command::new(CAIRN)
            .args(["agent", "api", "fetch", "x509", "-socketPath"])
            .arg(&self.relay)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill_pid(pid: u32) {
    let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
}

#[test]
fn a_connection_handed_to_a_setuid_program_gets_nothing_of_roots() {
    let s = setup();
    let mut attacker = Attacker::start(&s, "exec");
    let line = attacker.expect_line("child=");
    let pid: u32 = line.trim_start_matches("child=").parse().unwrap();
    let got = attacker.fetch_through_relay();
    kill_pid(pid);
    assert!(!got.contains("wl/root"), "nobody received root's SVID through a setuid exec:\n{got}");
    assert!(got.contains("PermissionDenied") || got.to_lowercase().contains("permission"), "expected PermissionDenied:\n{got}");
    let log = s.agent.log();
    assert!(
        log.lines().any(|l| l.contains("changed since it connected") && l.contains(&pid.to_string())),
        "the refusal is not logged with the pid {pid}:\n{log}"
    );
}

#[test]
fn a_connection_whose_pid_a_root_process_reuses_gets_nothing_of_roots() {
    let s = setup();
    let mut attacker = Attacker::start(&s, "exit");
    let line = attacker.expect_line("child=");
    let pid: u32 = line.trim_start_matches("child=").parse().unwrap();
    // Make a root process take the dead child's pid: the kernel hands out ns_last_pid + 1 next.
    let mut squatter = None;
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let c = Command::new("sleep").arg("120").spawn().unwrap();
        if c.id() == pid {
            squatter = Some(c);
            break;
        }
        let mut c = c;
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut squatter = squatter.unwrap_or_else(|| panic!("could not make a root process take pid {pid}"));
    let got = attacker.fetch_through_relay();
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert!(!got.contains("wl/root"), "nobody received root's SVID through a reused pid:\n{got}");
    assert!(got.contains("PermissionDenied") || got.to_lowercase().contains("permission"), "expected PermissionDenied:\n{got}");
}

#[test]
fn a_plain_workload_still_gets_its_own_svid_and_only_that() {
    let s = setup();
    let out = Command::new(CAIRN)
        .args(["agent", "api", "fetch", "x509", "-socketPath"])
        .arg(&s.agent.socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "nobody's fetch failed: {out:?}\n{}", s.agent.log());
    assert!(text.contains("spiffe://example.org/wl/nobody"), "{text}");
    assert!(!text.contains("wl/root"), "{text}");
}
