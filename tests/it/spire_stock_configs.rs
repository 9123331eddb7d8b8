#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! SPIRE's stock configs start (issue 8 item 4): `conf/server/server.conf`, `conf/agent/agent.conf`
//! and the `*_full.conf` files of SPIRE 1.15.3 (byte-exact under tests/fixtures/spire-1.15), run
//! through `spire-server` / `spire-agent` links to the real binary from a directory laid out as
//! SPIRE's source tree, so the configs' relative paths (`./.data`, `./conf/server/...`) hold as
//! written. Only the port and the sockets differ, and those through SPIRE's own flags
//! (`-serverPort`, `-socketPath`), so the files stay unchanged. The `*_full.conf` files list
//! every plugin SPIRE has; the test removes the blocks of plugins cairn lacks from a copy.

use crate::common;

use common::{CAIRN, Reap, free_port, openssl_x509, require, run, split_pem};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spire-1.15");

/// A directory shaped like SPIRE's checkout: `conf/server/`, `conf/agent/`, `bin/spire-*` links.
struct SpireTree {
    dir: tempfile::TempDir,
}

impl SpireTree {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (sub, files) in [
            ("conf/server", &["server.conf", "server_full.conf", "dummy_upstream_ca.crt", "dummy_upstream_ca.key"][..]),
            ("conf/agent", &["agent.conf", "agent_full.conf", "dummy_root_ca.crt"][..]),
        ] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
            for f in files {
                std::fs::copy(Path::new(FIXTURES).join(f), root.join(sub).join(f)).unwrap();
            }
        }
        std::fs::create_dir_all(root.join("bin")).unwrap();
        for name in ["spire-server", "spire-agent"] {
            std::os::unix::fs::symlink(CAIRN, root.join("bin").join(name)).unwrap();
        }
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(self.root().join("bin").join(program));
        c.current_dir(self.root());
        c
    }

    fn output(&self, program: &str, args: &[&str]) -> Output {
        self.cmd(program).args(args).output().unwrap()
    }

    /// Writes `text` as `conf/<rel>` and returns the relative path to pass to `-config`.
    fn write(&self, rel: &str, text: &str) -> String {
        std::fs::write(self.root().join("conf").join(rel), text).unwrap();
        format!("conf/{rel}")
    }

    fn spawn(&self, program: &str, args: &[&str], log: &str) -> Reap {
        let stderr = std::fs::File::create(self.root().join(log)).unwrap();
        Reap(Some(self.cmd(program).args(args).stdout(Stdio::null()).stderr(stderr).spawn().unwrap()))
    }

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.root().join(log)).unwrap_or_default()
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Removes from `conf` the block that opens on the line starting (after indentation) with
/// `header`, through its matching brace. Commented lines (`#`) are not counted.
fn remove_block(conf: &str, header: &str) -> String {
    let lines: Vec<&str> = conf.lines().collect();
    let start = lines.iter().position(|l| l.trim_start().starts_with(header)).unwrap_or_else(|| panic!("no block {header}"));
    let mut depth = 0i32;
    let mut end = start;
    for (i, l) in lines.iter().enumerate().skip(start) {
        if l.trim_start().starts_with('#') {
            continue;
        }
        depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
        if depth == 0 {
            end = i;
            break;
        }
    }
    let mut out: Vec<&str> = lines[..start].to_vec();
    out.extend_from_slice(&lines[end + 1..]);
    out.join("\n") + "\n"
}

fn wait_healthy(tree: &SpireTree, child: &mut Child, socket: &str, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("spire-server exited with {status}:\n{}", tree.log(log));
        }
        if tree.output("spire-server", &["healthcheck", "-socketPath", socket]).status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "spire-server did not become healthy:\n{}", tree.log(log));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_file(path: &Path, child: &mut Child, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status}:\n{}", log());
        }
        assert!(Instant::now() < deadline, "{what} did not start:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `spire-server run -config <config>` with the port and socket moved by flag; returns
/// the child, the port and the socket path.
fn start_server(tree: &SpireTree, config: &str, log: &str) -> (Reap, u16, String) {
    let port = free_port();
    let socket = tree.root().join("server-api.sock").display().to_string();
    let mut child = tree.spawn("spire-server", &["run", "-config", config, "-serverPort", &port.to_string(), "-socketPath", &socket], log);
    wait_healthy(tree, child.child(), &socket, log);
    (child, port, socket)
}

/// The token and the agent's SPIFFE ID for a join token generated on `socket`.
fn join_token(tree: &SpireTree, socket: &str) -> (String, String) {
    let o = tree.output("spire-server", &["token", "generate", "-socketPath", socket]);
    assert!(o.status.success(), "{}", text(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().strip_prefix("Token: ").unwrap().to_owned();
    let id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    (token, id)
}

fn my_uid() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// `openssl verify` of `svid.pem` (leaf + intermediates) against `ca`.
fn openssl_verifies(dir: &Path, svid: &Path, ca: &Path) {
    let parts = split_pem(svid, dir, "chain-");
    let (ok, out) = run(Command::new("openssl").arg("verify").arg("-CAfile").arg(ca).arg("-untrusted").arg(svid).arg(&parts[0]));
    assert!(ok && out.contains(": OK"), "openssl verify failed: {out}");
}

#[test]
fn stock_server_and_agent_confs_validate_start_and_chain_to_the_dummy_upstream_ca() {
    require("openssl");
    let tree = SpireTree::new();
    let o = tree.output("spire-server", &["validate", "-config", "conf/server/server.conf"]);
    assert!(o.status.success(), "SPIRE's server.conf is refused:\n{}", text(&o));
    let o = tree.output("spire-agent", &["validate", "-config", "conf/agent/agent.conf"]);
    assert!(o.status.success(), "SPIRE's agent.conf is refused:\n{}", text(&o));

    // UpstreamAuthority "disk" with SPIRE's dummy CA (P-384, self-signed with ecdsa-with-SHA512).
    let (server, port, socket) = start_server(&tree, "conf/server/server.conf", "server.log");
    let out = tree.root().join("minted");
    let o = tree.output(
        "spire-server",
        &["x509", "mint", "-spiffeID", "spiffe://example.org/w", "-ttl", "10m", "-write", "minted", "-socketPath", &socket],
    );
    assert!(o.status.success(), "{}", text(&o));
    let ca = tree.root().join("conf/server/dummy_upstream_ca.crt");
    openssl_verifies(&out, &out.join("svid.pem"), &ca);
    // The bundle's root is SPIRE's dummy CA itself.
    let bundle_root = split_pem(&out.join("bundle.pem"), &out, "root-");
    assert_eq!(openssl_x509(&bundle_root[0], &["-fingerprint"]), openssl_x509(&ca, &["-fingerprint"]));

    // SPIRE's agent.conf, from the same directory (its trust bundle is the dummy CA as well).
    let (token, agent_id) = join_token(&tree, &socket);
    let agent_socket = tree.root().join("agent-api.sock");
    let agent_socket_s = agent_socket.display().to_string();
    let mut agent = tree.spawn(
        "spire-agent",
        &[
            "run",
            "-config",
            "conf/agent/agent.conf",
            "-serverPort",
            &port.to_string(),
            "-socketPath",
            &agent_socket_s,
            "-joinToken",
            &token,
        ],
        "agent.log",
    );
    wait_file(&agent_socket, agent.child(), "spire-agent", || tree.log("agent.log"));
    let o = tree.output(
        "spire-server",
        &[
            "entry",
            "create",
            "-parentID",
            &agent_id,
            "-spiffeID",
            "spiffe://example.org/myservice",
            "-selector",
            &format!("unix:uid:{}", my_uid()),
            "-socketPath",
            &socket,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let fetched = tree.root().join("fetched");
    std::fs::create_dir_all(&fetched).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = tree.output("spire-agent", &["api", "fetch", "x509", "-write", "fetched", "-socketPath", &agent_socket_s]);
        if o.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "no SVID from the stock agent: {}\n{}", text(&o), tree.log("agent.log"));
        std::thread::sleep(Duration::from_millis(300));
    }
    openssl_verifies(&fetched, &fetched.join("svid.0.pem"), &ca);
    agent.stop(Duration::from_secs(10));
    server.stop(Duration::from_secs(15));
}

#[test]
fn full_confs_reduced_to_cairns_plugins_validate_and_start() {
    let tree = SpireTree::new();
    let full = std::fs::read_to_string(tree.root().join("conf/server/server_full.conf")).unwrap();
    // UpstreamAuthority "ejbca" is a plugin cairn lacks (and SPIRE allows only one upstream).
    let reduced = remove_block(&full, "UpstreamAuthority \"ejbca\"");
    let config = tree.write("server/server_full.reduced.conf", &reduced);
    let o = tree.output("spire-server", &["validate", "-config", &config]);
    // Everything in it is honoured, the bundle endpoint's ACME profile included; its
    // tos_accepted is left false there, which is said (nothing would be ordered).
    assert!(o.status.success(), "server_full.conf was refused: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Terms of Service have not been accepted"), "{}", text(&o));

    // With the https_spiffe profile in place of ACME, the stock federation block is accepted.
    let files = remove_block(&reduced, "acme {").replace("profile \"https_web\" {", "profile \"https_spiffe\" {");
    assert!(!files.contains("acme") || files.matches("acme").count() < reduced.matches("acme").count(), "the ACME block was not removed");
    let config = tree.write("server/server_full.fed.conf", &files);
    let o = tree.output("spire-server", &["validate", "-config", &config]);
    assert!(o.status.success(), "{}", text(&o));

    let without_federation = remove_block(&reduced, "federation {");
    let config = tree.write("server/server_full.nofed.conf", &without_federation);
    let o = tree.output("spire-server", &["validate", "-config", &config]);
    assert!(o.status.success(), "{}", text(&o));
    let (server, port, socket) = start_server(&tree, &config, "server-full.log");

    // agent_full.conf: keep the plugins cairn has, one of each kind as SPIRE requires.
    let mut agent = std::fs::read_to_string(tree.root().join("conf/agent/agent_full.conf")).unwrap();
    for block in [
        "KeyManager \"memory\"",
        "NodeAttestor \"aws_iid\"",
        "NodeAttestor \"azure_msi\"",
        "NodeAttestor \"gcp_iit\"",
        "NodeAttestor \"k8s_psat\"",
        "NodeAttestor \"sshpop\"",
        "NodeAttestor \"x509pop\"",
        "NodeAttestor \"tpm_devid\"",
        "SVIDStore \"gcp_secretmanager\"",
        "SVIDStore \"aws_secretsmanager\"",
        "WorkloadAttestor \"docker\"",
        "WorkloadAttestor \"k8s\"",
        "WorkloadAttestor \"slurm\"",
        "WorkloadAttestor \"systemd\"",
    ] {
        agent = remove_block(&agent, block);
    }
    let config = tree.write("agent/agent_full.reduced.conf", &agent);
    let o = tree.output("spire-agent", &["validate", "-config", &config]);
    assert!(o.status.success(), "{}", text(&o));
    // rebootstrap_delay has no effect with rebootstrap_mode "never": accepted, and said so.
    assert!(String::from_utf8_lossy(&o.stderr).contains("note: agent.rebootstrap_delay: accepted; "), "{}", text(&o));

    let (token, _) = join_token(&tree, &socket);
    let agent_socket = tree.root().join("agent-full.sock");
    let mut child = tree.spawn(
        "spire-agent",
        &["run", "-config", &config, "-serverPort", &port.to_string(), "-socketPath", agent_socket.to_str().unwrap(), "-joinToken", &token],
        "agent-full.log",
    );
    wait_file(&agent_socket, child.child(), "spire-agent (agent_full.conf)", || tree.log("agent-full.log"));
    child.stop(Duration::from_secs(10));
    server.stop(Duration::from_secs(15));
}

#[test]
fn refused_keys_name_their_path() {
    let tree = SpireTree::new();
    let server = std::fs::read_to_string(tree.root().join("conf/server/server.conf")).unwrap();
    let cases: [(&str, String, &[&str]); 2] = [
        (
            "spire-server",
            tree.write(
                "server/refused.conf",
                &(server.replacen("log_level = \"DEBUG\"", "log_level = \"DEBUG\"\n    ratelimit { attestation = false }", 1).replacen(
                    "connection_string = \"./.data/datastore.sqlite3\"",
                    "connection_string = \"./.data/datastore.sqlite3\"\n            ro_connection_string = \"./.data/replica.sqlite3\"",
                    1,
                ) + "telemetry {\n    Prometheus {\n        port = 9988\n    }\n}\n"),
            ),
            &["server.ratelimit", "plugins.DataStore.sql.plugin_data.ro_connection_string", "telemetry.Prometheus"],
        ),
        (
            "spire-agent",
            tree.write(
                "agent/refused.conf",
                &std::fs::read_to_string(tree.root().join("conf/agent/agent.conf")).unwrap().replacen(
                    "log_level = \"DEBUG\"",
                    "log_level = \"DEBUG\"\n    availability_target = \"24h\"",
                    1,
                ),
            ),
            &["agent.availability_target"],
        ),
    ];
    for (program, config, paths) in cases {
        let o = tree.output(program, &["validate", "-config", &config]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{program} accepted {config}");
        for p in paths {
            // A read replica is supported, but not for SQLite.
            let why = if p.ends_with("ro_connection_string") {
                "read replicas are for database_type postgres and mysql"
            } else {
                "not supported by cairn ("
            };
            assert!(err.lines().any(|l| l.starts_with(&format!("{p}: {why}"))), "{p} not refused by path:\n{err}");
        }
    }
}

/// SPIRE's Linux quickstart (spiffe.io "Quickstart for Linux and MacOS X"), step by step, with
/// SPIRE's stock configs and dummy upstream CA: run the server, `healthcheck`, mint a JWT-SVID
/// at once (a tier that says it is healthy can sign), generate a token, run the agent with it,
/// `healthcheck` the agent, register the current uid, and fetch the SVID with SPIRE's file names.
#[test]
fn linux_quickstart_step_by_step() {
    require("openssl");
    let tree = SpireTree::new();
    // bin/spire-server run -config conf/server/server.conf &
    let port = free_port();
    let socket = tree.root().join("server-api.sock").display().to_string();
    let mut server = tree.spawn(
        "spire-server",
        &["run", "-config", "conf/server/server.conf", "-serverPort", &port.to_string(), "-socketPath", &socket],
        "server.log",
    );
    // bin/spire-server healthcheck
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        if let Ok(Some(status)) = server.child().try_wait() {
            panic!("spire-server exited with {status}:\n{}", tree.log("server.log"));
        }
        let o = tree.output("spire-server", &["healthcheck", "-socketPath", &socket]);
        if o.status.success() {
            break o;
        }
        assert!(Instant::now() < deadline, "never healthy:\n{}", tree.log("server.log"));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(String::from_utf8_lossy(&health.stdout).trim(), "Server is healthy.");
    // Healthy means able to sign: a JWT-SVID right away.
    let o = tree.output(
        "spire-server",
        &["jwt", "mint", "-spiffeID", "spiffe://example.org/myservice", "-audience", "test", "-socketPath", &socket],
    );
    assert!(o.status.success(), "jwt mint right after a passing healthcheck failed:\n{}\n{}", text(&o), tree.log("server.log"));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim().matches('.').count(), 2, "{}", text(&o));
    // bin/spire-server token generate -spiffeID spiffe://example.org/myagent
    let o = tree.output("spire-server", &["token", "generate", "-spiffeID", "spiffe://example.org/myagent", "-socketPath", &socket]);
    assert!(o.status.success(), "{}", text(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().strip_prefix("Token: ").unwrap().to_owned();
    // bin/spire-agent run -config conf/agent/agent.conf -joinToken <token> &
    let agent_socket = tree.root().join("agent-api.sock");
    let asock = agent_socket.display().to_string();
    let mut agent = tree.spawn(
        "spire-agent",
        &["run", "-config", "conf/agent/agent.conf", "-serverPort", &port.to_string(), "-socketPath", &asock, "-joinToken", &token],
        "agent.log",
    );
    // bin/spire-agent healthcheck
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = agent.child().try_wait() {
            panic!("spire-agent exited with {status}:\n{}", tree.log("agent.log"));
        }
        let o = tree.output("spire-agent", &["healthcheck", "-socketPath", &asock]);
        if o.status.success() {
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "Agent is healthy.");
            break;
        }
        assert!(Instant::now() < deadline, "agent never healthy:\n{}", tree.log("agent.log"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // bin/spire-server entry create -parentID spiffe://example.org/myagent \
    //     -spiffeID spiffe://example.org/myservice -selector unix:uid:$(id -u)
    let selector = format!("unix:uid:{}", my_uid());
    let o = tree.output(
        "spire-server",
        &[
            "entry",
            "create",
            "-parentID",
            "spiffe://example.org/myagent",
            "-spiffeID",
            "spiffe://example.org/myservice",
            "-selector",
            &selector,
            "-socketPath",
            &socket,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // bin/spire-agent api fetch x509 -write /tmp/  (retried while the entry syncs down)
    let out = tree.root().join("fetched");
    std::fs::create_dir_all(&out).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = tree.output("spire-agent", &["api", "fetch", "x509", "-write", &format!("{}/", out.display()), "-socketPath", &asock]);
        if o.status.success() {
            assert!(String::from_utf8_lossy(&o.stdout).contains("spiffe://example.org/myservice"), "{}", text(&o));
            break;
        }
        assert!(Instant::now() < deadline, "no SVID:\n{}\n{}", text(&o), tree.log("agent.log"));
        std::thread::sleep(Duration::from_millis(250));
    }
    // SPIRE's file names, and openssl x509 -in /tmp/svid.0.pem -text -noout
    for f in ["svid.0.pem", "svid.0.key", "bundle.0.pem"] {
        assert!(out.join(f).exists(), "{f} not written by fetch x509 -write");
    }
    let text_out = openssl_x509(&out.join("svid.0.pem"), &["-text"]);
    assert!(text_out.contains("URI:spiffe://example.org/myservice"), "{text_out}");
    let (ok, vout) = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(out.join("bundle.0.pem"))
        .arg("-untrusted")
        .arg(out.join("svid.0.pem"))
        .arg(out.join("svid.0.pem")));
    assert!(ok, "{vout}");
    agent.stop(Duration::from_secs(10));
    server.stop(Duration::from_secs(10));
}
