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
//! `/tmp/spire-agent/public/api.sock`), as operators do, so the tests in this file take turns.

mod common;

use common::agent::my_uid;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static DEFAULT_SOCKETS: Mutex<()> = Mutex::new(());

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
    _guard: std::sync::MutexGuard<'static, ()>,
    /// The suite's own directory (conf/ and steps), copied.
    run_dir: PathBuf,
    /// What the containers call /opt/spire.
    opt: PathBuf,
    port: u16,
}

impl Suite {
    fn new(name: &str) -> Self {
        let guard = DEFAULT_SOCKETS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
        Self { _tmp: tmp, _guard: guard, run_dir, opt, port: free_port() }
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
    let bundle = ok(&s.server_cli(&["bundle", "show"]), "bundle show");
    std::fs::write(s.path("conf/agent/bootstrap.crt"), bundle).unwrap();
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
#[ignore = "needs issue 8 item 3 (SPIRE's TTL ratios accepted and capped), merging next"]
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
    let bundle = ok(&s.server_cli(&["bundle", "show"]), "bundle show");
    std::fs::write(s.path("conf/agent/bootstrap.crt"), bundle).unwrap();
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
    let mut issuers = std::collections::BTreeSet::new();
    for i in 1..=15 {
        let dir = s.path(&format!("svid-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let out = s.agent_cli(&["api", "fetch", "x509", "-write", &dir.display().to_string()]);
        assert!(out.status.success(), "SVID check {i} failed: {out:?}\nagent:\n{}\nserver:\n{}", agent.logs(), server.logs());
        // Beyond the suite: the SVID verifies against the bundle it came with.
        let (v, vout) = run(Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(dir.join("bundle.0.pem"))
            .arg("-untrusted")
            .arg(dir.join("svid.0.pem"))
            .arg(dir.join("svid.0.pem")));
        assert!(v, "check {i}: openssl verify: {vout}");
        issuers.insert(openssl_x509(&dir.join("svid.0.pem"), &["-issuer"]));
        std::thread::sleep(Duration::from_secs(3));
    }
    assert!(issuers.len() >= 2, "45 s with ca_ttl 1m should span a CA rotation; issuers seen: {issuers:?}");
}

#[test]
#[ignore = "needs issue 8 item 3 (SPIRE's TTL ratios accepted and capped), merging next"]
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
    let bundle = ok(&s.server_cli(&["bundle", "show"]), "bundle show");
    std::fs::write(s.path("conf/agent/bootstrap.crt"), bundle).unwrap();
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
