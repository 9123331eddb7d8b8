#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! Test harness: runs the real `cairn` binary as separate processes on 127.0.0.1 and checks
//! what it issues with independent tools (openssl, PyJWT).
#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

pub mod agent;
/// Throwaway PostgreSQL and MariaDB servers (the same file the library's tests use).
#[path = "../../src/datastore/sql/testdb.rs"]
pub mod db;
pub mod inproc;
pub mod openbao;
pub mod softhsm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Fails loudly when a tool the tests depend on is missing (never skips silently).
pub fn require(tool: &str) {
    let ok =
        Command::new("sh").arg("-c").arg(format!("command -v {tool}")).stdout(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "{tool} is required by this test: run scripts/install-test-deps.sh");
}

pub struct ServerOpts {
    pub key_manager: &'static str,
    pub extra_server: String,
    pub extra_plugins: String,
    pub health_port: Option<u16>,
    /// A whole `KeyManager "..." { ... }` block, in place of `key_manager`'s.
    pub key_manager_block: Option<String>,
    /// Extra environment for the server process (`SOFTHSM2_CONF`).
    pub env: Vec<(String, String)>,
    /// The trust domain (default `example.org`).
    pub trust_domain: &'static str,
    /// A whole `DataStore "sql" { ... }` block in place of the SQLite one.
    pub datastore_block: Option<String>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        Self {
            key_manager: "disk",
            extra_server: String::new(),
            extra_plugins: String::new(),
            health_port: None,
            key_manager_block: None,
            env: Vec::new(),
            trust_domain: "example.org",
            datastore_block: None,
        }
    }
}

/// A running `cairn server run` in its own directory.
pub struct TestServer {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    pub config: PathBuf,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

pub fn write_config(dir: &Path, port: u16, opts: &ServerOpts) -> PathBuf {
    let socket = dir.join("api.sock");
    let km = match opts.key_manager {
        _ if opts.key_manager_block.is_some() => opts.key_manager_block.clone().unwrap_or_default(),
        "memory" => "KeyManager \"memory\" {}".to_owned(),
        _ => format!("KeyManager \"disk\" {{ plugin_data {{ keys_path = \"{}\" }} }}", dir.join("keys.json").display()),
    };
    let health = opts
        .health_port
        .map(|p| format!("health_checks {{\n listener_enabled = true\n bind_address = \"127.0.0.1\"\n bind_port = \"{p}\"\n}}"))
        .unwrap_or_default();
    let text = format!(
        r#"
server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{socket}"
    trust_domain = "{td}"
    data_dir = "{dir}"
    log_level = "DEBUG"
    {extra_server}
}}
plugins {{
    {datastore}
    {km}
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    {extra_plugins}
}}
{health}
"#,
        socket = socket.display(),
        dir = dir.display(),
        datastore = opts.datastore_block.clone().unwrap_or_else(|| format!(
            "DataStore \"sql\" {{\n plugin_data {{ database_type = \"sqlite3\" connection_string = \"{}/datastore.sqlite3\" }}\n }}",
            dir.display()
        )),
        extra_server = opts.extra_server,
        extra_plugins = opts.extra_plugins,
        td = opts.trust_domain,
    );
    let path = dir.join("server.conf");
    std::fs::write(&path, text).unwrap();
    path
}

impl TestServer {
    pub fn start(dir: &Path, opts: &ServerOpts) -> Self {
        let port = free_port();
        let config = write_config(dir, port, opts);
        let mut s = Self { dir: dir.to_owned(), socket: dir.join("api.sock"), port, config, env: opts.env.clone(), child: None };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).unwrap();
        let child = Command::new(CAIRN)
            .args(["server", "run", "-config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("server exited with {status}:\n{}", self.log());
            }
            if self.socket.exists() && self.cli(&["healthcheck"]).status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "server did not become healthy:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c, Duration::from_secs(15));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Runs `cairn server <args> -socketPath <sock>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        server_cli(&self.socket, args)
    }

    /// Like `cli` but asserts success and returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        server_cli_ok(&self.socket, args)
    }
}

/// Runs `cairn server <args> -socketPath <socket>`.
pub fn server_cli(socket: &Path, args: &[&str]) -> Output {
    let mut a: Vec<String> = vec!["server".into()];
    a.extend(args.iter().map(|s| (*s).to_owned()));
    a.push("-socketPath".into());
    a.push(socket.display().to_string());
    Command::new(CAIRN).args(&a).output().unwrap()
}

/// Like `server_cli` but asserts success and returns stdout.
pub fn server_cli_ok(socket: &Path, args: &[&str]) -> String {
    let out = server_cli(socket, args);
    assert!(
        out.status.success(),
        "cairn server {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Owns a spawned process: a test that fails half-way kills it on drop, so no server or agent
/// outlives its test.
pub struct Reap(pub Option<Child>);

impl Reap {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }

    /// SIGTERM and wait (SIGKILL after `grace`).
    pub fn stop(mut self, grace: Duration) {
        if let Some(c) = self.0.take() {
            terminate(c, grace);
        }
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`.
pub fn terminate(mut child: Child, grace: Duration) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs a command, returning (success, stdout+stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `openssl x509 -noout <args>` on a PEM file.
pub fn openssl_x509(pem: &Path, args: &[&str]) -> String {
    let (ok, out) = run(Command::new("openssl").arg("x509").arg("-in").arg(pem).arg("-noout").args(args));
    assert!(ok, "openssl x509 {args:?} failed: {out}");
    out
}

/// Splits a PEM file with several certificates into one file per certificate.
pub fn split_pem(pem: &Path, out_dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(pem).unwrap();
    let mut files = Vec::new();
    for (i, block) in text.split("-----END CERTIFICATE-----").filter(|b| b.contains("BEGIN")).enumerate() {
        let p = out_dir.join(format!("{prefix}{i}.pem"));
        std::fs::write(&p, format!("{}-----END CERTIFICATE-----\n", block.trim_start())).unwrap();
        files.push(p);
    }
    files
}

/// Starts `cairn server run` expecting it to fail; returns its stderr.
pub fn start_fails(config: &Path, env: &[(String, String)]) -> String {
    let mut child = Command::new(CAIRN)
        .args(["server", "run", "-config"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success());
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started although it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
