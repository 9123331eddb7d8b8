#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! SPIRE's own integration suites (spiffe/spire `test/integration/suites/`, copied unmodified
//! under tests/fixtures/spire-suites), replayed against cairn.
//!
//! Each test reads the suite's own config files and runs its steps in order with the same
//! commands, flags and assertions, through `spire-server` / `spire-agent` links to the cairn
//! binary. What differs is only what docker provided: processes on loopback instead of
//! containers (`/opt/spire` becomes a temporary directory, the `spire-server` host name becomes
//! 127.0.0.1 and port 8081 a free port), `docker compose logs` becomes the process's log file,
//! and the x509pop certificates that `setup/x509pop/gencerts.go` makes with Go are made with
//! openssl to the same shape (P-256 CA "Agent CA"; leaf with digitalSignature, CN = dir name).
//!
//! The suites rely on the default socket paths (`/tmp/spire-server/private/api.sock`,
//! `/tmp/spire-agent/public/api.sock`), as operators do, so the tests in this file take turns,
//! with each other and with test runs of other checkouts on the machine (all but
//! nested-rotation, which moves every socket).

use crate::common;

use common::agent::my_uid;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The turn on the default socket paths. They are the machine's, not this process's: a test
/// run of another checkout on the same machine uses them too, so the turn is an exclusive
/// `flock` on a file beside them (held until dropped), which threads of this process and other
/// processes alike wait for.
struct DefaultSockets {
    _locked: std::fs::File,
}

fn default_sockets() -> DefaultSockets {
    let path = "/tmp/cairn-test-spire-default-sockets.lock";
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).unwrap_or_else(|e| panic!("flock {path}: {e}"));
    DefaultSockets { _locked: f }
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spire-suites")
}

/// A process of the suite (a "container"), with its log.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
    fn down(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c, Duration::from_secs(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.down();
    }
}

/// One suite run: its directory (`/opt/spire` on loopback) and its processes.
struct Suite {
    _tmp: tempfile::TempDir,
    _turn: DefaultSockets,
    /// The suite's own directory (conf/ and steps), copied.
    run_dir: PathBuf,
    /// What the containers call /opt/spire.
    opt: PathBuf,
    port: u16,
}

impl Suite {
    fn new(name: &str) -> Self {
        let turn = default_sockets();
        for sock in ["/tmp/spire-server/private/api.sock", "/tmp/spire-agent/public/api.sock"] {
            let _ = std::fs::remove_file(sock);
        }
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("run");
        let (ok, out) = run(Command::new("cp").arg("-r").arg(fixtures().join("suites").join(name)).arg(&run_dir));
        assert!(ok, "{out}");
        let opt = tmp.path().join("opt/spire");
        std::fs::create_dir_all(opt.join("bin")).unwrap();
        std::fs::create_dir_all(opt.join("data")).unwrap();
        for link in ["spire-server", "spire-agent"] {
            std::os::unix::fs::symlink(CAIRN, opt.join("bin").join(link)).unwrap();
        }
        Self { _tmp: tmp, _turn: turn, run_dir, opt, port: free_port() }
    }

    /// `docker compose` mounts `./conf/<x>` at `/opt/spire/conf/<x>`: here the suite's conf
    /// directory is the container's, with docker's paths, host names and port rewritten.
    fn mount_conf(&self) {
        let conf = self.opt.join("conf");
        let _ = std::fs::remove_file(&conf);
        std::os::unix::fs::symlink(self.run_dir.join("conf"), &conf).unwrap();
    }

    /// The suite's config file with docker's environment replaced by loopback's.
    fn localize(&self, rel: &str) {
        let path = self.run_dir.join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text
            .replace("/opt/spire", &self.opt.display().to_string())
            .replace("\"spire-server\"", "\"127.0.0.1\"")
            .replace("\"0.0.0.0\"", "\"127.0.0.1\"")
            .replace("\"8081\"", &format!("\"{}\"", self.port));
        std::fs::write(path, text).unwrap();
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.opt.join("bin").join(name)
    }

    /// `docker compose exec -T <container> /opt/spire/bin/spire-server <args>`.
    fn server_cli(&self, args: &[&str]) -> Output {
        Command::new(self.bin("spire-server")).args(args).current_dir(&self.run_dir).output().unwrap()
    }

    fn agent_cli(&self, args: &[&str]) -> Output {
        Command::new(self.bin("spire-agent")).args(args).current_dir(&self.run_dir).output().unwrap()
    }

    /// `docker-up <service>`: `spire-server run` / `spire-agent run` with the mounted config.
    fn up(&self, service: &str, program: &str, config: &str) -> Proc {
        let log = self.run_dir.join(format!("{service}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let err = file.try_clone().unwrap();
        let child = Command::new(self.bin(program))
            .args(["run", "-config"])
            .arg(self.opt.join("conf").join(config))
            .current_dir(&self.run_dir)
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap();
        Proc { child: Some(child), log }
    }

    /// `docker-spire-server-up`: up, then wait for `healthcheck`.
    fn server_up(&self, service: &str, config: &str) -> Proc {
        let mut p = self.up(service, "spire-server", config);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.server_cli(&["healthcheck"]).status.success() {
            assert!(p.running(), "{service} exited:\n{}", p.logs());
            assert!(Instant::now() < deadline, "{service} never healthy:\n{}", p.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.run_dir.join(rel)
    }

    /// The suites' bootstrap step: `spire-server bundle show > conf/agent/bootstrap.crt`.
    fn bootstrap_agent(&self) -> String {
        let bundle = ok(&self.server_cli(&["bundle", "show"]), "bundle show");
        std::fs::write(self.path("conf/agent/bootstrap.crt"), &bundle).unwrap();
        bundle
    }
}

/// The suites' `MAXCHECKS=30; CHECKINTERVAL=1` loop over a container's logs.
fn wait_log(p: &Proc, needle: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.logs().contains(needle) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}: no {needle:?} in the log:\n{}", p.logs());
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `setup/x509pop/setup.sh SERVERDIR AGENTDIR...`: a P-256 "Agent CA" in SERVERDIR, and per
/// AGENTDIR a leaf (digitalSignature, CN = the directory's name) with its PKCS#8 key.
fn x509pop_setup(server_dir: &Path, agent_dirs: &[&Path]) {
    let ca_key = server_dir.join("agent-ca.key");
    let (okc, out) = run(Command::new("sh").arg("-c").arg(format!(
        "openssl ecparam -name prime256v1 -genkey -noout -out {k} && openssl req -new -x509 -key {k} -subj '/CN=Agent CA' -days 1 -addext basicConstraints=critical,CA:TRUE -out {c}",
        k = ca_key.display(),
        c = server_dir.join("agent-cacert.pem").display()
    )));
    assert!(okc, "{out}");
    for dir in agent_dirs {
        let cn = dir.file_name().unwrap().to_string_lossy().into_owned();
        let (okl, out) = run(Command::new("sh").arg("-c").arg(format!(
            "cd {d} && openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out agent.key.pem && \
             openssl req -new -key agent.key.pem -subj '/CN={cn}' -out agent.csr && \
             printf 'keyUsage=digitalSignature\\n' > leaf.ext && \
             openssl x509 -req -in agent.csr -CA {ca} -CAkey {k} -CAcreateserial -days 1 -extfile leaf.ext -out agent.crt.pem",
            d = dir.display(),
            ca = server_dir.join("agent-cacert.pem").display(),
            k = ca_key.display(),
        )));
        assert!(okl, "{out}");
    }
}

/// The suites' `fingerprint`: SHA-1 of the certificate's DER, lower-case hex.
fn fingerprint(cert: &Path) -> String {
    let (okf, out) = run(Command::new("sh")
        .arg("-c")
        .arg(format!("openssl x509 -in {} -outform DER | openssl sha1 -r | awk '{{print $1}}'", cert.display())));
    assert!(okf, "{out}");
    out.trim().to_owned()
}

#[test]
fn join_token_suite() {
    join_token_steps(false);
}

/// The same suite with the server's `NodeAttestor "join_token"` block removed: SPIRE treats
/// join tokens as built in (its CLI suite's server has no such block), and so does cairn.
#[test]
fn join_token_suite_without_the_node_attestor_block() {
    join_token_steps(true);
}

fn join_token_steps(strip_block: bool) {
    require("openssl");
    let s = Suite::new("join-token");
    if strip_block {
        let path = s.path("conf/server/server.conf");
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("\tNodeAttestor \"join_token\"").expect("the suite's block");
        let end = start + text[start..].find("\n\t}\n").expect("block end") + 4;
        let stripped = format!("{}{}", &text[..start], &text[end..]);
        assert!(!stripped.contains("NodeAttestor"), "{stripped}");
        std::fs::write(&path, stripped).unwrap();
    }
    s.localize("conf/server/server.conf");
    s.localize("conf/agent/agent.conf");
    s.mount_conf();
    // 01-start-server
    let _server = s.server_up("spire-server", "server/server.conf");
    // 02-bootstrap-agents
    s.bootstrap_agent();
    let out = ok(&s.server_cli(&["token", "generate", "-spiffeID", "spiffe://domain.test/node"]), "token generate");
    let token = out.split_whitespace().nth(1).expect("awk '{print $2}'").to_owned();
    let conf = std::fs::read_to_string(s.path("conf/agent/agent.conf")).unwrap().replace("TOKEN", &token);
    std::fs::write(s.path("conf/agent/agent.conf"), conf).unwrap();
    let (okc, out) = run(Command::new("cp").arg("-R").arg(s.path("conf/agent")).arg(s.path("conf/bad-agent")));
    assert!(okc, "{out}");
    // The bad agent is another container: its own data directory.
    let bad = std::fs::read_to_string(s.path("conf/bad-agent/agent.conf"))
        .unwrap()
        .replace(&format!("{}/data/agent", s.opt.display()), &format!("{}/data/bad-agent", s.opt.display()))
        .replace("agent {", &format!("agent {{\n    socket_path = \"{}/bad-agent.sock\"", s.opt.display()));
    std::fs::write(s.path("conf/bad-agent/agent.conf"), bad).unwrap();
    // 03-start-agent
    let agent = s.up("spire-agent", "spire-agent", "agent/agent.conf");
    // 04-create-workload-entry
    ok(
        &s.server_cli(&[
            "entry",
            "create",
            "-parentID",
            "spiffe://domain.test/node",
            "-spiffeID",
            "spiffe://domain.test/workload",
            "-selector",
            "unix:uid:0",
            "-x509SVIDTTL",
            "0",
            "-jwtSVIDTTL",
            "0",
        ]),
        "entry create",
    );
    wait_log(&agent, "spiffe://domain.test/workload", "agent to sync down entry");
    // 05-check-svid (the container runs it as root)
    assert_eq!(my_uid(), 0, "the suite's workload entry is unix:uid:0: run as root (CI does)");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = s.agent_cli(&["api", "fetch", "x509"]);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "SVID check failed: {out:?}\n{}", agent.logs());
        std::thread::sleep(Duration::from_millis(250));
    }
    // 06-start-bad-agent
    let bad = s.up("bad-spire-agent", "spire-agent", "bad-agent/agent.conf");
    wait_log(&bad, "failed to attest: join token does not exist or has already been used", "the bad agent to fail attestation");
}

#[test]
fn rotation_suite() {
    require("openssl");
    let s = Suite::new("rotation");
    s.localize("conf/server/server.conf");
    s.localize("conf/agent/agent.conf");
    s.mount_conf();
    let steps = std::fs::read_to_string(s.path("00-setup")).unwrap_or_default();
    if steps.contains("x509pop/setup.sh") {
        x509pop_setup(&s.path("conf/server"), &[&s.path("conf/agent")]);
    }
    // 01-start-server
    let server = s.server_up("spire-server", "server/server.conf");
    // 02-bootstrap-agent
    s.bootstrap_agent();
    if std::fs::read_to_string(s.path("conf/agent/agent.conf")).unwrap().contains("TOKEN") {
        let out = ok(&s.server_cli(&["token", "generate", "-spiffeID", "spiffe://domain.test/node"]), "token generate");
        let token = out.split_whitespace().nth(1).unwrap().to_owned();
        let conf = std::fs::read_to_string(s.path("conf/agent/agent.conf")).unwrap().replace("TOKEN", &token);
        std::fs::write(s.path("conf/agent/agent.conf"), conf).unwrap();
    }
    // 03-start-agent
    let agent = s.up("spire-agent", "spire-agent", "agent/agent.conf");
    // 04-create-workload-entry: the suite's own command line.
    let step = std::fs::read_to_string(s.path("04-create-workload-entry")).unwrap();
    let parent = if step.contains("x509pop") {
        format!("spiffe://domain.test/spire/agent/x509pop/{}", fingerprint(&s.path("conf/agent/agent.crt.pem")))
    } else {
        "spiffe://domain.test/node".to_owned()
    };
    ok(
        &s.server_cli(&["entry", "create", "-parentID", &parent, "-spiffeID", "spiffe://domain.test/workload", "-selector", "unix:uid:0"]),
        "entry create",
    );
    wait_log(&agent, "spiffe://domain.test/workload", "agent to sync down entry");
    // 05-check-svids: 15 checks, 3 s apart, across CA rotations (ca_ttl 1m, SVIDs 10s).
    assert_eq!(my_uid(), 0, "the suite's workload entry is unix:uid:0: run as root (CI does)");
    // One `spire-agent api fetch x509 -write` into svid-<i>/; beyond the suite, the SVID must
    // verify (openssl) against the bundle it came with. Returns its issuer.
    let check = |i: usize| -> String {
        let dir = s.path(&format!("svid-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let out = s.agent_cli(&["api", "fetch", "x509", "-write", &dir.display().to_string()]);
        assert!(out.status.success(), "SVID check {i} failed: {out:?}\nagent:\n{}\nserver:\n{}", agent.logs(), server.logs());
        let (v, vout) = run(Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(dir.join("bundle.0.pem"))
            .arg("-untrusted")
            .arg(dir.join("svid.0.pem"))
            .arg(dir.join("svid.0.pem")));
        assert!(v, "check {i}: openssl verify: {vout}");
        openssl_x509(&dir.join("svid.0.pem"), &["-issuer"])
    };
    let mut issuers = std::collections::BTreeSet::new();
    for i in 1..=15 {
        issuers.insert(check(i));
        std::thread::sleep(Duration::from_secs(3));
    }
    // Beyond the suite, which only checks each SVID is valid: keep looking (SPIRE's thresholds
    // activate the next CA 50 s into a 1m CA) until an SVID from the next CA is served.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 15;
    while issuers.len() < 2 {
        assert!(Instant::now() < deadline, "no SVID from a rotated CA within 60 s more; issuers seen: {issuers:?}\n{}", server.logs());
        i += 1;
        issuers.insert(check(i));
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn evict_agent_suite() {
    require("openssl");
    let s = Suite::new("evict-agent");
    s.localize("conf/server/server.conf");
    s.localize("conf/agent/agent.conf");
    s.mount_conf();
    // 00-setup
    x509pop_setup(&s.path("conf/server"), &[&s.path("conf/agent")]);
    // 01-start-server
    let server = s.server_up("spire-server", "server/server.conf");
    // 02-bootstrap-agent
    s.bootstrap_agent();
    // 03-start-agent
    let mut agent = s.up("spire-agent", "spire-agent", "agent/agent.conf");
    let spiffe_id = format!("spiffe://domain.test/spire/agent/x509pop/{}", fingerprint(&s.path("conf/agent/agent.crt.pem")));
    // 04-ban-agent: retried until the agent is registered and the server logs the ban.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if s.server_cli(&["agent", "ban", "-spiffeID", &spiffe_id]).status.success() && server.logs().contains("Agent banned") {
            break;
        }
        assert!(Instant::now() < deadline, "timed out waiting for successful ban:\n{}", server.logs());
        std::thread::sleep(Duration::from_secs(1));
    }
    // 05-agent-is-banned
    wait_log(&agent, "Agent is banned: removing SVID and shutting down", "agent to shut down");
    // 06-agent-failed-to-start
    agent.down();
    let mut agent = s.up("spire-agent", "spire-agent", "agent/agent.conf");
    wait_log(&agent, "failed to fetch authorized entries:", "the banned agent to fail");
    // 07-evict-agent
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = s.server_cli(&["agent", "evict", "-spiffeID", &spiffe_id]);
        if server.logs().contains("Agent deleted") {
            break;
        }
        assert!(Instant::now() < deadline, "timed out evicting:\n{}", server.logs());
        std::thread::sleep(Duration::from_secs(1));
    }
    // 08-agent-reattest-attempt: docker-up restarts the agent until it says it attests anew.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if !agent.running() {
            agent = s.up("spire-agent", "spire-agent", "agent/agent.conf");
        }
        if agent.logs().contains("SVID is not found. Starting node attestation") {
            break;
        }
        assert!(Instant::now() < deadline, "timed out waiting for agent to try to re-attest:\n{}", agent.logs());
        std::thread::sleep(Duration::from_secs(1));
    }
    // 09-agent-reattested
    wait_log(&agent, "Node attestation was successful", "agent to re-attest");
    // 10-start-agent
    agent.down();
    let agent = s.up("spire-agent", "spire-agent", "agent/agent.conf");
    wait_log(&agent, "Starting agent APIs", "agent to be back up");
}

/// One "container" of a multi-container suite: its own `/opt/spire`, run as `uid`.
struct Container {
    name: &'static str,
    opt: PathBuf,
    uid: u32,
}

/// nested-rotation: root, two intermediates under it, a leaf under each, a server and an agent
/// for each. The downstream servers are attested by the agent above them; where the suite
/// tells them apart by docker label (`docker:label:org.integration.name:<x>`), this replay
/// runs each as its own uid and registers `unix:uid:<uid>`, which is what that label stands
/// for on a host without docker. Each server gets its own admin socket path (containers would
/// each have their own /tmp), and every agent its own Workload API socket, so this suite uses
/// no default path and runs beside the others rather than taking its turn: it is the longest
/// (15 checks 6 s apart), and waiting for it kept the rest of the test binary waiting too.
#[test]
fn nested_rotation_suite_steps_1_to_10() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    require("openssl");
    assert_eq!(my_uid(), 0, "nested-rotation runs servers and workloads as other uids: run as root (CI does)");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run_dir = tmp.path().join("run");
    let (okc, out) = run(Command::new("cp").arg("-r").arg(fixtures().join("suites/nested-rotation")).arg(&run_dir));
    assert!(okc, "{out}");
    let r = |rel: &str| run_dir.join(rel);
    // 00-setup
    for d in [
        "shared/rootSocket",
        "shared/intermediateASocket",
        "shared/intermediateBSocket",
        "shared/intermediateA/data",
        "shared/intermediateB/data",
    ] {
        std::fs::create_dir_all(r(d)).unwrap();
        std::fs::set_permissions(r(d), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    for tier in ["root", "intermediateA", "leafA", "intermediateB", "leafB"] {
        x509pop_setup(&r(&format!("{tier}/server")), &[&r(&format!("{tier}/agent"))]);
    }
    let (okc, out) = run(Command::new("chmod").arg("-R").arg("a+rX").arg(&run_dir));
    assert!(okc, "{out}");

    let servers = ["root", "intermediateA", "intermediateB", "leafA", "leafB"];
    let ports: std::collections::HashMap<&str, u16> = servers.iter().map(|s| (*s, free_port())).collect();
    let uid_of = |tier: &str| match tier {
        "intermediateA" => 2001,
        "intermediateB" => 2002,
        "leafA" => 2003,
        "leafB" => 2004,
        _ => 0,
    };
    // docker-compose's volumes, per container.
    let container = |name: &'static str| -> Container {
        let (tier, kind) = name.rsplit_once('-').unwrap();
        let opt = tmp.path().join("c").join(name).join("opt/spire");
        for d in ["bin", "conf", "data", "private"] {
            std::fs::create_dir_all(opt.join(d)).unwrap();
        }
        for link in ["spire-server", "spire-agent"] {
            let _ = std::os::unix::fs::symlink(CAIRN, opt.join("bin").join(link));
        }
        let _ = std::os::unix::fs::symlink(r(&format!("{tier}/{kind}")), opt.join("conf").join(kind));
        let sockets = match (tier, kind) {
            ("root", "agent") | ("intermediateA" | "intermediateB", "server") => Some("shared/rootSocket"),
            ("intermediateA", "agent") | ("leafA", "server") => Some("shared/intermediateASocket"),
            ("intermediateB", "agent") | ("leafB", "server") => Some("shared/intermediateBSocket"),
            _ => None,
        };
        match sockets {
            Some(s) => {
                let _ = std::os::unix::fs::symlink(r(s), opt.join("sockets"));
            }
            None => std::fs::create_dir_all(opt.join("sockets")).unwrap(),
        }
        if kind == "server" && tier.starts_with("intermediate") {
            std::fs::remove_dir(opt.join("data")).unwrap();
            std::fs::create_dir_all(opt.join("data")).unwrap();
            let _ = std::os::unix::fs::symlink(r(&format!("shared/{tier}/data")), opt.join("data/server"));
        }
        let uid = if kind == "server" { uid_of(tier) } else { 0 };
        let (okc, out) = run(Command::new("chown").arg("-R").arg(format!("{uid}:{uid}")).arg(tmp.path().join("c").join(name)));
        assert!(okc, "{out}");
        let (okc, out) = run(Command::new("chmod").arg("-R").arg("a+rX").arg(tmp.path().join("c")));
        assert!(okc, "{out}");
        Container { name, opt, uid }
    };
    // The container's view of its config: docker's paths, host names and ports made local.
    let localize = |c: &Container, file: &Path| {
        let (tier, kind) = c.name.rsplit_once('-').unwrap();
        let mut text = std::fs::read_to_string(file).unwrap().replace("/opt/spire", &c.opt.display().to_string());
        for s in servers {
            let host = format!("\"{s}-server\"");
            if text.contains(&host) {
                text = text
                    .replace(&host, "\"127.0.0.1\"")
                    .replace("server_port         = 8081", &format!("server_port = {}", ports[s]))
                    .replace("server_port = \"8081\"", &format!("server_port = \"{}\"", ports[s]));
            }
        }
        if kind == "server" {
            text =
                text.replace("bind_port = \"8081\"", &format!("bind_port = \"{}\"", ports[tier])).replace("\"0.0.0.0\"", "\"127.0.0.1\"");
            text = text.replacen("server {", &format!("server {{\n\tsocket_path = \"{}/private/api.sock\"", c.opt.display()), 1);
        } else if let Some(start) = text.find("WorkloadAttestor \"docker\"") {
            // cairn has no docker attestor: the unix one stands in (see above).
            if text.contains("WorkloadAttestor \"unix\"") {
                let end = start + text[start..].find("}\n    }").unwrap() + 7;
                text = format!("{}{}", &text[..start], &text[end..]);
            } else {
                text = text.replace("WorkloadAttestor \"docker\"", "WorkloadAttestor \"unix\"");
            }
        }
        std::fs::write(file, text).unwrap();
    };
    let up = |c: &Container| -> Proc {
        let (_, kind) = c.name.rsplit_once('-').unwrap();
        let conf = c.opt.join(format!("conf/{kind}/{kind}.conf"));
        let log = tmp.path().join(format!("{}.log", c.name));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let err = file.try_clone().unwrap();
        let mut cmd = Command::new(c.opt.join(format!("bin/spire-{kind}")));
        cmd.args(["run", "-config"]).arg(&conf).current_dir(&c.opt).stdout(file).stderr(err);
        if c.uid != 0 {
            cmd.uid(c.uid).gid(c.uid);
        }
        Proc { child: Some(cmd.spawn().unwrap()), log }
    };
    let server_cli = |c: &Container, args: &[&str]| -> Output {
        let mut a: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        a.push("-socketPath".into());
        a.push(c.opt.join("private/api.sock").display().to_string());
        Command::new(c.opt.join("bin/spire-server")).args(&a).output().unwrap()
    };
    let check_server_started = |p: &Proc, name: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.logs().matches("Starting Server APIs").count() < 2 {
            assert!(Instant::now() < deadline, "timed out waiting for {name} to start:\n{}", p.logs());
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let start_tier = |tier: &'static str, server: &Container, agent: &Container| -> (Proc, Proc) {
        localize(server, &r(&format!("{tier}/server/server.conf")));
        localize(agent, &r(&format!("{tier}/agent/agent.conf")));
        let sp = up(server);
        check_server_started(&sp, server.name);
        let bundle = ok(&server_cli(server, &["bundle", "show"]), "bundle show");
        std::fs::write(r(&format!("{tier}/agent/bootstrap.crt")), bundle).unwrap();
        let ap = up(agent);
        (sp, ap)
    };
    let names: [(&'static str, &'static str, &'static str); 5] = [
        ("root", "root-server", "root-agent"),
        ("intermediateA", "intermediateA-server", "intermediateA-agent"),
        ("leafA", "leafA-server", "leafA-agent"),
        ("intermediateB", "intermediateB-server", "intermediateB-agent"),
        ("leafB", "leafB-server", "leafB-agent"),
    ];
    let mut cs = std::collections::HashMap::new();
    for (tier, s, a) in names {
        cs.insert(s, container(s));
        cs.insert(a, container(a));
        let _ = tier;
    }
    let agent_id =
        |tier: &str| format!("spiffe://domain.test/spire/agent/x509pop/{}", fingerprint(&r(&format!("{tier}/agent/agent.crt.pem"))));
    let downstream = |c: &Container, parent: &str, id: &str, label: &str, ttl: &str| {
        let uid = uid_of(label);
        ok(
            &server_cli(
                c,
                &[
                    "entry",
                    "create",
                    "-parentID",
                    parent,
                    "-spiffeID",
                    id,
                    "-selector",
                    &format!("unix:uid:{uid}"),
                    "-downstream",
                    "-x509SVIDTTL",
                    ttl,
                ],
            ),
            "downstream entry create",
        );
    };
    // 01-start-root
    let (_root_s, root_a) = start_tier("root", &cs["root-server"], &cs["root-agent"]);
    // 02-create-intermediate-downstream-entries
    for x in ["intermediateA", "intermediateB"] {
        downstream(&cs["root-server"], &agent_id("root"), &format!("spiffe://domain.test/{x}"), x, "3600");
        wait_log(&root_a, &format!("spiffe://domain.test/{x}"), "root-agent to sync down entry");
    }
    // 03-start-intermediateA
    let (_ia_s, ia_a) = start_tier("intermediateA", &cs["intermediateA-server"], &cs["intermediateA-agent"]);
    // 04-create-leafA-downstream-entry
    downstream(&cs["intermediateA-server"], &agent_id("intermediateA"), "spiffe://domain.test/leafA", "leafA", "90");
    wait_log(&ia_a, "spiffe://domain.test/leafA", "intermediateA-agent to sync down entry");
    // 05-start-leafA
    let (_la_s, la_a) = start_tier("leafA", &cs["leafA-server"], &cs["leafA-agent"]);
    // 06-start-intermediateB
    let (_ib_s, ib_a) = start_tier("intermediateB", &cs["intermediateB-server"], &cs["intermediateB-agent"]);
    // 07-create-leafB-downstream-entry
    downstream(&cs["intermediateB-server"], &agent_id("intermediateB"), "spiffe://domain.test/leafB", "leafB", "90");
    wait_log(&ib_a, "spiffe://domain.test/leafB", "intermediateB-agent to sync down entry");
    // 08-start-leafB
    let (_lb_s, lb_a) = start_tier("leafB", &cs["leafB-server"], &cs["leafB-agent"]);
    // 09-create-workload-entries
    for (tier, agent) in [("intermediateA", &ia_a), ("leafA", &la_a), ("intermediateB", &ib_a), ("leafB", &lb_a)] {
        let id = format!("spiffe://domain.test/{tier}/workload");
        ok(
            &server_cli(
                &cs[format!("{tier}-server").as_str()],
                &["entry", "create", "-parentID", &agent_id(tier), "-spiffeID", &id, "-selector", "unix:uid:1001", "-x509SVIDTTL", "0"],
            ),
            "workload entry create",
        );
        wait_log(agent, &id, "agent to sync down entry");
    }
    // 10-check-svids
    let sock = |agent: &str| cs[agent].opt.join("sockets/workload_api.sock").display().to_string();
    let as_1001 = |args: &[&str]| -> Output { Command::new(CAIRN).arg("agent").args(args).uid(1001).gid(1001).output().unwrap() };
    let out = as_1001(&["api", "fetch", "jwt", "-audience", "testIt", "-socketPath", &sock("intermediateB-agent"), "-output", "json"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "Expected JWT command to fail but it succeeded: {text}");
    assert!(
        text.contains("code = Unimplemented desc = JWT functionality is disabled"),
        "Expected JWT to be disabled on intermediateB. Got: {text}"
    );
    let scratch = |agent: &str| {
        let d = tmp.path().join("c").join(agent).join("tmp");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        d
    };
    let validate_x509 = |a: &str, b: &str| {
        let (ta, tb) = (scratch(a), scratch(b));
        ok(&as_1001(&["api", "fetch", "x509", "-socketPath", &sock(a), "-write", &ta.display().to_string()]), "x509-SVID check");
        let copied = tmp.path().join("c").join(b).join("opt/svid.0.pem");
        std::fs::copy(ta.join("svid.0.pem"), &copied).unwrap();
        ok(&as_1001(&["api", "fetch", "x509", "-socketPath", &sock(b), "-write", &tb.display().to_string()]), "x509-SVID check");
        let (v, vout) = run(Command::new("openssl")
            .arg("verify")
            .arg("-verbose")
            .arg("-CAfile")
            .arg(tb.join("bundle.0.pem"))
            .arg("-untrusted")
            .arg(&copied)
            .arg(&copied));
        assert!(v, "SVID from {a} does not verify with {b}'s bundle: {vout}");
    };
    let validate_jwt = |a: &str, b: &str| {
        let out =
            ok(&as_1001(&["api", "fetch", "jwt", "-audience", "testIt", "-socketPath", &sock(a), "-output", "json"]), "JWT-SVID check");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("fetch jwt -output json: {e}: {out}"));
        let token = v[0]["svids"][0]["svid"].as_str().unwrap_or_else(|| panic!("no .[0].svids[0].svid in {out}")).to_owned();
        ok(&as_1001(&["api", "validate", "jwt", "-audience", "testIt", "-svid", &token, "-socketPath", &sock(b)]), "JWT-SVID validation");
    };
    for i in 1..=15 {
        eprintln!("check {i} of 15");
        validate_x509("intermediateA-agent", "intermediateB-agent");
        validate_x509("leafA-agent", "leafB-agent");
        validate_jwt("intermediateA-agent", "intermediateB-agent");
        validate_jwt("leafA-agent", "leafB-agent");
        std::thread::sleep(Duration::from_secs(6));
    }
}

/// `setup/downstreamclient` (a Go program) as this replay runs it: the SVID comes from the
/// agent's Workload API as the client's uid would get it (`spire-agent api fetch x509 -write`
/// run as that uid), then NewDownstreamX509CA and PublishJWTAuthority go to the server over
/// mTLS with it, checked as the Go client checks them.
fn downstream_client(s: &Suite, uid: u32, expect_errors: bool) {
    use cairn::agent::client::{ClientIdentity, ServerTrust, connect};
    use cairn::wire::pb::spire::api::server::{bundle::v1 as bundlepb, svid::v1 as svidpb};
    use cairn::wire::pb::spire::api::types::JwtKey;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = s.path(&format!("downstreamclient-{uid}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(s.bin("spire-agent"))
            .args(["api", "fetch", "x509", "-write"])
            .arg(&dir)
            .current_dir(&dir)
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "Unable to create X509Source as uid {uid}: {out:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let certs = |f: &str| -> Vec<Vec<u8>> {
        pem::parse_many(std::fs::read(dir.join(f)).unwrap()).unwrap().into_iter().map(|p| p.into_contents()).collect()
    };
    let key = pem::parse(std::fs::read(dir.join("svid.0.key")).unwrap()).unwrap().into_contents();
    let identity = ClientIdentity { chain: certs("svid.0.pem"), key_pkcs8: std::sync::Arc::new(zeroize::Zeroizing::new(key)) };
    let server_id = cairn::spiffe::SpiffeId::new("spiffe://domain.test/spire/server").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let ch = connect(&format!("127.0.0.1:{}", s.port), ServerTrust::Roots(certs("bundle.0.pem")), server_id, Some(&identity)).unwrap();
        // validateNewDownstreamX509CA: a CSR with an empty subject.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&ca_key).unwrap().der().to_vec();
        let r = svidpb::svid_client::SvidClient::new(ch.clone()).new_downstream_x509ca(svidpb::NewDownstreamX509caRequest { csr, preferred_ttl: 0 }).await;
        if expect_errors {
            let e = r.expect_err("NewDownstreamX509CA: no error returned");
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "NewDownstreamX509CA: unexpected error returned: {e:?}");
        } else {
            let r = r.unwrap_or_else(|e| panic!("failed to call NewDownstreamX509CA: {e:?}")).into_inner();
            assert!(!r.ca_cert_chain.is_empty(), "no CA returned");
            assert!(!r.x509_authorities.is_empty(), "no authorities returned");
        }
        // validatePublishJWTAUthorirty: SPIRE's fixed key, expiring in a minute.
        use base64::Engine as _;
        let public_key = base64::engine::general_purpose::STANDARD
            .decode("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYSlUVLqTD8DEnA4F1EWMTf5RXc5lnCxw+5WKJwngEL3rPc9i4Tgzz9riR3I/NiSlkgRO1WsxBusqpC284j9dXA==")
            .unwrap();
        let jwt_key = JwtKey { public_key, key_id: "authority1".into(), expires_at: cairn::now_unix() + 60, tainted: false };
        let r = bundlepb::bundle_client::BundleClient::new(ch)
            .publish_jwt_authority(bundlepb::PublishJwtAuthorityRequest { jwt_authority: Some(jwt_key.clone()) })
            .await;
        if expect_errors {
            let e = r.expect_err("PublishJWTAuthority: no error returned");
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "PublishJWTAuthority: unexpected error returned: {e:?}");
        } else {
            let r = r.unwrap_or_else(|e| panic!("failed to publish JWT authority: {e:?}")).into_inner();
            assert!(!r.jwt_authorities.is_empty(), "no authorities returned");
            assert!(r.jwt_authorities.contains(&jwt_key), "authority was not added: {:?}", r.jwt_authorities);
        }
    });
}

#[test]
fn downstream_endpoints_suite() {
    require("openssl");
    assert_eq!(my_uid(), 0, "the suite's workloads run as uids 1001 and 1002: run as root (CI does)");
    let s = Suite::new("downstream-endpoints");
    {
        use std::os::unix::fs::PermissionsExt;
        // The workloads (other uids) reach the agent's socket and binaries, as in the container.
        for p in
            [s.run_dir.parent().unwrap(), s.run_dir.parent().unwrap().join("opt").as_path(), s.opt.as_path(), s.opt.join("bin").as_path()]
        {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    s.localize("conf/server/server.conf");
    s.localize("conf/agent/agent.conf");
    s.mount_conf();
    // 00-setup
    x509pop_setup(&s.path("conf/server"), &[&s.path("conf/agent")]);
    // 01-start-server
    let _server = s.server_up("spire-server", "server/server.conf");
    // 02-bootstrap-agent
    s.bootstrap_agent();
    // 03-start-agent
    let agent = s.up("spire-agent", "spire-agent", "agent/agent.conf");
    // 04-create-entries
    let parent = format!("spiffe://domain.test/spire/agent/x509pop/{}", fingerprint(&s.path("conf/agent/agent.crt.pem")));
    ok(
        &s.server_cli(&[
            "entry",
            "create",
            "-parentID",
            &parent,
            "-spiffeID",
            "spiffe://domain.test/downstream",
            "-selector",
            "unix:uid:1001",
            "-downstream",
            "-x509SVIDTTL",
            "0",
        ]),
        "downstream entry create",
    );
    wait_log(&agent, "spiffe://domain.test/downstream", "agent to sync down entry");
    ok(
        &s.server_cli(&[
            "entry",
            "create",
            "-parentID",
            &parent,
            "-spiffeID",
            "spiffe://domain.test/workload",
            "-selector",
            "unix:uid:1002",
            "-x509SVIDTTL",
            "0",
        ]),
        "workload entry create",
    );
    wait_log(&agent, "spiffe://domain.test/workload", "agent to sync down entry");
    // 05-test-endpoints
    downstream_client(&s, 1001, false);
    downstream_client(&s, 1002, true);
}

/// `setup/node-attestation` (a Go program driving the agent API) as this replay runs it, one
/// step per function, with the same calls and checks.
mod node_attestation_client {
    use cairn::agent::client::{ClientIdentity, ServerTrust, connect};
    use cairn::wire::pb::spire::api::server::agent::v1 as agentpb;
    use cairn::wire::pb::spire::api::types as pt;
    use std::path::Path;
    use std::sync::Arc;
    use tonic::transport::Channel;

    pub const ADMIN_SOCKET: &str = "/tmp/spire-server/private/api.sock";

    fn server_id() -> cairn::spiffe::SpiffeId {
        cairn::spiffe::SpiffeId::new("spiffe://domain.test/spire/server").unwrap()
    }

    /// The Go client's fixed key: one P-256 key for its CSRs and its client certificate.
    pub struct Key(pub rcgen::KeyPair);

    impl Key {
        pub fn new() -> Self {
            Self(rcgen::KeyPair::generate().unwrap())
        }
        /// `x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)`.
        fn csr(&self) -> Vec<u8> {
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.serialize_request(&self.0).unwrap().der().to_vec()
        }
        fn identity(&self, cert: &[u8]) -> ClientIdentity {
            ClientIdentity { chain: vec![cert.to_vec()], key_pkcs8: Arc::new(zeroize::Zeroizing::new(self.0.serialize_der())) }
        }
    }

    fn insecure(port: u16) -> Channel {
        connect(&format!("127.0.0.1:{port}"), ServerTrust::InsecureBootstrap, server_id(), None).unwrap()
    }

    /// doJoinTokenStep: a token named `test_token_<n>` with TTL 1000 on the local socket.
    pub async fn join_token() -> String {
        let ch = cairn::cli::client::connect_admin(Path::new(ADMIN_SOCKET)).await.unwrap();
        let name = format!("test_token_{}", rand_u32() % 1_000_000);
        agentpb::agent_client::AgentClient::new(ch)
            .create_join_token(agentpb::CreateJoinTokenRequest { ttl: 1000, token: name.clone(), agent_id: None })
            .await
            .unwrap_or_else(|e| panic!("unable to create join token: {e:?}"));
        name
    }

    fn rand_u32() -> u32 {
        let mut b = [0u8; 4];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    async fn attest(port: u16, key: &Key, data: pt::AttestationData, pop_key: Option<&[u8]>) -> Result<pt::X509svid, tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(agentpb::AttestAgentRequest {
            step: Some(agentpb::attest_agent_request::Step::Params(agentpb::attest_agent_request::Params {
                data: Some(data),
                params: Some(agentpb::AgentX509svidParams { csr: key.csr() }),
            })),
        })
        .await
        .unwrap();
        let mut stream = agentpb::agent_client::AgentClient::new(insecure(port))
            .attest_agent(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        loop {
            let msg = stream.message().await?.expect("stream ended without a result");
            match msg.step {
                Some(agentpb::attest_agent_response::Step::Challenge(c)) => {
                    let resp = cairn::attest::x509pop::challenge_response(pop_key.expect("challenge for a join token"), &c).unwrap();
                    tx.send(agentpb::AttestAgentRequest { step: Some(agentpb::attest_agent_request::Step::ChallengeResponse(resp)) })
                        .await
                        .unwrap();
                }
                Some(agentpb::attest_agent_response::Step::Result(r)) => return Ok(r.svid.expect("result without SVID")),
                None => panic!("empty response"),
            }
        }
    }

    /// doJoinTokenAttestStep: the agent SVID's leaf.
    pub async fn join_token_attest(port: u16, key: &Key, token: &str) -> Vec<u8> {
        let data = pt::AttestationData { r#type: "join_token".into(), payload: token.as_bytes().to_vec() };
        let svid = attest(port, key, data, None).await.unwrap_or_else(|e| panic!("failed receive response to AttestAgent: {e:?}"));
        x509_parser::parse_x509_certificate(&svid.cert_chain[0]).expect("failed to parse cert");
        svid.cert_chain[0].clone()
    }

    /// doRenewStep: RenewAgent over mTLS with `cert`; the renewed leaf.
    pub async fn renew(port: u16, key: &Key, cert: &[u8], roots: &[Vec<u8>]) -> Result<Vec<u8>, tonic::Status> {
        let ch = connect(&format!("127.0.0.1:{port}"), ServerTrust::Roots(roots.to_vec()), server_id(), Some(&key.identity(cert))).unwrap();
        let r = agentpb::agent_client::AgentClient::new(ch)
            .renew_agent(agentpb::RenewAgentRequest { params: Some(agentpb::AgentX509svidParams { csr: key.csr() }) })
            .await?
            .into_inner();
        let leaf = r.svid.expect("no SVID").cert_chain[0].clone();
        assert_ne!(leaf, cert, "renewed agent successfully, but the old cert and the new cert are identical");
        Ok(leaf)
    }

    /// doBanStep, on the local socket.
    pub async fn ban_join_token_agent(token: &str) {
        let ch = cairn::cli::client::connect_admin(Path::new(ADMIN_SOCKET)).await.unwrap();
        let id = pt::Spiffeid { trust_domain: "domain.test".into(), path: format!("/spire/agent/join_token/{token}") };
        agentpb::agent_client::AgentClient::new(ch)
            .ban_agent(agentpb::BanAgentRequest { id: Some(id) })
            .await
            .unwrap_or_else(|e| panic!("failed to ban agent: {e:?}"));
    }

    /// x509popAttest with `-popCertificate`/`-popKey`.
    pub async fn x509pop_attest(port: u16, key: &Key, pop_cert_pem: &[u8], pop_key_pem: &[u8]) -> Result<pt::X509svid, tonic::Status> {
        let chain: Vec<Vec<u8>> = pem::parse_many(pop_cert_pem).unwrap().into_iter().map(|p| p.into_contents()).collect();
        let pop_key = pem::parse(pop_key_pem).unwrap().into_contents();
        let data = pt::AttestationData { r#type: "x509pop".into(), payload: cairn::attest::x509pop::attestation_payload(&chain) };
        attest(port, key, data, Some(&pop_key)).await
    }

    /// doX509popStep's admin client: the SVID the suite's uid 1000 gets from the agent.
    pub fn admin(port: u16, svid: &[Vec<u8>], svid_key: &[u8], roots: &[Vec<u8>]) -> agentpb::agent_client::AgentClient<Channel> {
        let identity = ClientIdentity { chain: svid.to_vec(), key_pkcs8: Arc::new(zeroize::Zeroizing::new(svid_key.to_vec())) };
        let ch = connect(&format!("127.0.0.1:{port}"), ServerTrust::Roots(roots.to_vec()), server_id(), Some(&identity)).unwrap();
        agentpb::agent_client::AgentClient::new(ch)
    }
}

#[test]
fn node_attestation_suite() {
    use node_attestation_client as nac;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    require("openssl");
    assert_eq!(my_uid(), 0, "the suite's admin client runs as uid 1000: run as root (CI does)");
    let s = Suite::new("node-attestation");
    for p in [s.run_dir.parent().unwrap(), s.run_dir.parent().unwrap().join("opt").as_path(), s.opt.as_path(), s.opt.join("bin").as_path()]
    {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    s.localize("conf/server/server.conf");
    s.localize("conf/agent/agent.conf");
    s.mount_conf();
    // 00-setup: certificates for the agent and for the test client (moved to test.*.pem).
    let client_dir = s.path("conf/client");
    std::fs::create_dir_all(&client_dir).unwrap();
    x509pop_setup(&s.path("conf/server"), &[&s.path("conf/agent"), &client_dir]);
    std::fs::rename(client_dir.join("agent.key.pem"), s.path("conf/agent/test.key.pem")).unwrap();
    std::fs::rename(client_dir.join("agent.crt.pem"), s.path("conf/agent/test.crt.pem")).unwrap();
    // 01-start-server
    let _server = s.server_up("spire-server", "server/server.conf");
    // 02-start-agent
    let bundle = s.bootstrap_agent();
    let roots: Vec<Vec<u8>> = pem::parse_many(bundle.as_bytes()).unwrap().into_iter().map(|p| p.into_contents()).collect();
    let agent = s.up("spire-agent", "spire-agent", "agent/agent.conf");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // 03-test-node-attestation
    let key = nac::Key::new();
    rt.block_on(async {
        let token = nac::join_token().await;
        let svid1 = nac::join_token_attest(s.port, &key, &token).await;
        let svid2 = nac::renew(s.port, &key, &svid1, &roots).await.unwrap_or_else(|e| panic!("Failed to do SVID renewal: {e:?}"));
        nac::ban_join_token_agent(&token).await;
        assert!(nac::renew(s.port, &key, &svid2, &roots).await.is_err(), "Expected agent to be banned");
    });
    // 04-test-x509pop-attestation
    let parent = format!("spiffe://domain.test/spire/agent/x509pop/{}", fingerprint(&s.path("conf/agent/agent.crt.pem")));
    ok(
        &s.server_cli(&[
            "entry",
            "create",
            "-parentID",
            &parent,
            "-spiffeID",
            "spiffe://domain.test/admin",
            "-selector",
            "unix:uid:1000",
            "-admin",
            "-x509SVIDTTL",
            "0",
        ]),
        "admin entry create",
    );
    wait_log(&agent, "spiffe://domain.test/admin", "agent to sync down entry");
    let dir = s.path("admin-svid");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Command::new(s.bin("spire-agent"))
        .args(["api", "fetch", "x509", "-write"])
        .arg(&dir)
        .uid(1000)
        .gid(1000)
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "uid 1000 never got its admin SVID:\n{}", agent.logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    let pems = |f: &str| -> Vec<Vec<u8>> {
        pem::parse_many(std::fs::read(dir.join(f)).unwrap()).unwrap().into_iter().map(|p| p.into_contents()).collect()
    };
    let admin_key = pems("svid.0.key").remove(0);
    let (pop_cert, pop_key) =
        (std::fs::read(s.path("conf/agent/test.crt.pem")).unwrap(), std::fs::read(s.path("conf/agent/test.key.pem")).unwrap());
    rt.block_on(async {
        let mut admin = nac::admin(s.port, &pems("svid.0.pem"), &admin_key, &pems("bundle.0.pem"));
        let attest = || nac::x509pop_attest(s.port, &key, &pop_cert, &pop_key);
        attest().await.unwrap_or_else(|e| panic!("failed to attest: {e:?}"));
        let svid = attest().await.unwrap_or_else(|e| panic!("failed to re-attest agent for renewal: {e:?}"));
        admin
            .delete_agent(cairn::wire::pb::spire::api::server::agent::v1::DeleteAgentRequest { id: svid.id.clone() })
            .await
            .unwrap_or_else(|e| panic!("failed to delete agent: {e:?}"));
        let svid = attest().await.unwrap_or_else(|e| panic!("failed to attest deleted agent: {e:?}"));
        admin
            .ban_agent(cairn::wire::pb::spire::api::server::agent::v1::BanAgentRequest { id: svid.id.clone() })
            .await
            .unwrap_or_else(|e| panic!("failed to ban agent: {e:?}"));
        match attest().await {
            Ok(_) => panic!("error expected when attesting banned agent"),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "unexpected error returned: {e:?}");
                assert_eq!(e.message(), "failed to attest: agent is banned", "unexpected error returned: {e:?}");
            }
        }
        admin
            .delete_agent(cairn::wire::pb::spire::api::server::agent::v1::DeleteAgentRequest { id: svid.id.clone() })
            .await
            .unwrap_or_else(|e| panic!("failed to delete agent: {e:?}"));
        attest().await.unwrap_or_else(|e| panic!("failed to attest deleted agent: {e:?}"));
    });
}
