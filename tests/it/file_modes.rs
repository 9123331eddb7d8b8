#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! Secrets at rest: the modes of every file and directory the server and the agent create, under
//! a permissive and the usual umask; join tokens never stored in clear; a vanished keys file
//! stops the server instead of silently minting a new CA.

use crate::common;

use common::agent::my_uid;
use common::*;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A cairn process stopped when the test ends, whether it passes or fails.
struct Proc(Option<Child>);

impl Proc {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            terminate(c, Duration::from_secs(15));
        }
    }
}

/// Runs `cairn <args>` under `umask`, logging to `log`.
fn spawn_with_umask(umask: &str, args: &[&str], log: &Path) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Proc(Some(
        Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(CAIRN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ))
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

fn wait_for(what: &str, log: &Path, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not happen:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

struct Layout {
    base: PathBuf,
    data: PathBuf,
    db: PathBuf,
    keys: PathBuf,
    sock: PathBuf,
    conf: PathBuf,
    port: u16,
}

/// A server config whose every directory is left for cairn to create.
fn server_layout(base: &Path) -> Layout {
    let l = Layout {
        base: base.to_owned(),
        data: base.join("data"),
        db: base.join("db/sub/datastore.sqlite3"),
        keys: base.join("keys/k/keys.json"),
        sock: base.join("run/admin/api.sock"),
        conf: base.join("server.conf"),
        port: free_port(),
    };
    let text = format!(
        r#"
server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{sock}"
    trust_domain = "example.org"
    data_dir = "{data}"
    log_level = "DEBUG"
}}
plugins {{
    DataStore "sql" {{ plugin_data {{ database_type = "sqlite3" connection_string = "{db}" }} }}
    KeyManager "disk" {{ plugin_data {{ keys_path = "{keys}" }} }}
    NodeAttestor "join_token" {{ plugin_data {{}} }}
}}
"#,
        port = l.port,
        sock = l.sock.display(),
        data = l.data.display(),
        db = l.db.display(),
        keys = l.keys.display(),
    );
    std::fs::write(&l.conf, text).unwrap();
    l
}

fn server_cli(l: &Layout, args: &[&str]) -> std::process::Output {
    Command::new(CAIRN).arg("server").args(args).arg("-socketPath").arg(&l.sock).output().unwrap()
}

fn server_cli_ok(l: &Layout, args: &[&str]) -> String {
    let out = server_cli(l, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn start_server(l: &Layout, umask: &str) -> Proc {
    let log = l.base.join("server.log");
    let mut child = spawn_with_umask(umask, &["server", "run", "-config", l.conf.to_str().unwrap()], &log);
    wait_for("server start", &log, || {
        if let Ok(Some(st)) = child.child().try_wait() {
            panic!("server exited with {st}:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        server_cli(l, &["healthcheck"]).status.success()
    });
    child
}

fn check_modes_under(umask: &str) {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let l = server_layout(tmp.path());
    let server = start_server(&l, umask);
    let log = l.base.join("server.log");

    // A token that is never used: it must not be readable from the database files.
    let unused = server_cli_ok(&l, &["token", "generate", "-ttl", "600"]);
    let unused = unused.trim().strip_prefix("Token: ").unwrap().to_owned();
    let token = server_cli_ok(&l, &["token", "generate", "-spiffeID", "spiffe://example.org/node1", "-ttl", "600"]);
    let token = token.trim().strip_prefix("Token: ").unwrap().to_owned();
    server_cli_ok(
        &l,
        &[
            "entry",
            "create",
            "-parentID",
            "spiffe://example.org/node1",
            "-spiffeID",
            "spiffe://example.org/w",
            "-selector",
            &format!("unix:uid:{}", my_uid()),
        ],
    );
    wait_for("status.json", &log, || l.data.join("status.json").exists());

    // The agent, same umask; its directories are left for it to create too.
    let adata = l.base.join("agent/data");
    let akeys = adata.join("keys");
    let asock = l.base.join("agent-run/public/api.sock");
    let bundle = l.base.join("bootstrap.pem");
    std::fs::write(&bundle, server_cli_ok(&l, &["bundle", "show"])).unwrap();
    let aconf = l.base.join("agent.conf");
    std::fs::write(
        &aconf,
        format!(
            r#"
agent {{
    data_dir = "{data}"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{sock}"
    trust_bundle_path = "{bundle}"
    trust_domain = "example.org"
    join_token = "{token}"
    experimental {{ sync_interval = "1s" }}
}}
plugins {{
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    KeyManager "disk" {{ plugin_data {{ directory = "{keys}" }} }}
    WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
"#,
            data = adata.display(),
            port = l.port,
            sock = asock.display(),
            bundle = bundle.display(),
            keys = akeys.display(),
        ),
    )
    .unwrap();
    let alog = l.base.join("agent.log");
    let agent = spawn_with_umask(umask, &["agent", "run", "-config", aconf.to_str().unwrap()], &alog);
    let out_dir = l.base.join("fetched");
    wait_for("an X509-SVID from the agent", &alog, || {
        Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(CAIRN)
            .args(["agent", "api", "fetch", "x509", "-socketPath"])
            .arg(&asock)
            .arg("-write")
            .arg(&out_dir)
            .output()
            .is_ok_and(|o| o.status.success())
    });

    let expect: Vec<(PathBuf, u32)> = vec![
        // Server: everything owner-only except the admin socket's user+group (SPIRE's modes).
        (l.data.clone(), 0o700),
        (l.data.join("server_id"), 0o600),
        (l.data.join("status.json"), 0o600),
        (l.base.join("db"), 0o700),
        (l.base.join("db/sub"), 0o700),
        (l.db.clone(), 0o600),
        (with_suffix(&l.db, "-wal"), 0o600),
        (with_suffix(&l.db, "-shm"), 0o600),
        (l.base.join("keys"), 0o700),
        (l.base.join("keys/k"), 0o700),
        (l.keys.clone(), 0o600),
        (l.base.join("run"), 0o750),
        (l.base.join("run/admin"), 0o750),
        (l.sock.clone(), 0o770),
        // Agent: its state is owner-only; the Workload API socket is for every local uid.
        (adata.clone(), 0o700),
        (akeys.clone(), 0o700),
        (akeys.join("agent-svid.json"), 0o600),
        (l.base.join("agent-run"), 0o755),
        (l.base.join("agent-run/public"), 0o755),
        (asock.clone(), 0o777),
        // `agent api fetch x509 -write`: the directory and key private, certificates readable.
        (out_dir.clone(), 0o700),
        (out_dir.join("svid.0.key"), 0o600),
        (out_dir.join("svid.0.pem"), 0o644),
        (out_dir.join("bundle.0.pem"), 0o644),
    ];
    let mut wrong = Vec::new();
    for (p, want) in &expect {
        let got = mode(p);
        if got != *want {
            wrong.push(format!("{}: {got:o}, want {want:o}", p.display()));
        }
    }
    assert!(std::fs::symlink_metadata(&l.sock).unwrap().file_type().is_socket());

    // Nothing else cairn made is open to others (the test's own config and logs excluded).
    let listed: Vec<&PathBuf> = expect.iter().map(|(p, _)| p).collect();
    let mut stack = vec![l.base.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p.clone());
            }
            let ours = [".conf", ".log", "bootstrap.pem"].iter().any(|s| name.ends_with(s));
            if !ours && !listed.contains(&&p) {
                let m = mode(&p);
                if m & 0o077 != 0 {
                    wrong.push(format!("{}: {m:o}, open to others", p.display()));
                }
            }
        }
    }

    // The unused join token is nowhere in the database files.
    for f in [l.db.clone(), with_suffix(&l.db, "-wal")] {
        if contains(&f, &unused) {
            wrong.push(format!("{}: holds the unused join token in clear", f.display()));
        }
    }
    assert!(wrong.is_empty(), "umask {umask}:\n{}", wrong.join("\n"));

    drop(agent);
    drop(server);
}

#[test]
fn modes_under_umask_000() {
    check_modes_under("000");
}

#[test]
fn modes_under_umask_022() {
    check_modes_under("022");
}

#[test]
fn a_deleted_keys_file_stops_the_server_with_a_message_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let l = server_layout(tmp.path());
    let server = start_server(&l, "022");
    let root = server_cli_ok(&l, &["bundle", "show"]);
    drop(server);

    std::fs::remove_file(&l.keys).unwrap();
    let log = l.base.join("restart.log");
    let mut restart = spawn_with_umask("022", &["server", "run", "-config", l.conf.to_str().unwrap()], &log);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = restart.child().try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline && !server_cli(&l, &["healthcheck"]).status.success(),
            "the server started without its CA keys:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains(&l.keys.display().to_string()), "the keys file is not named:\n{err}");
    assert!(err.contains("remove the datastore"), "no way forward given:\n{err}");
    assert!(!l.keys.exists() || !contains(&l.keys, "x509-CA"), "a new CA key was written anyway");

    // Putting things back as they were is not refused: with the datastore removed, a new CA
    // starts deliberately, with a different root.
    std::fs::remove_dir_all(l.base.join("db")).unwrap();
    let _server = start_server(&l, "022");
    assert_ne!(server_cli_ok(&l, &["bundle", "show"]), root);
}
