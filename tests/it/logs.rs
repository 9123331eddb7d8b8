#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! Logs for machines and people (issue 8 item 5): no colour codes unless stderr is a terminal,
//! JSON lines, `log_file` and the `-logFile`/`-logFormat`/`-logLevel` flags, and SIGUSR2
//! reopening the log file (logrotate's way) without killing the server or the agent.

use crate::common;

use common::agent::{TestAgent, agent_config, token};
use common::{CAIRN, Reap, ServerOpts, TestServer, free_port, write_config};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn usr2(child: &mut Child) {
    assert!(Command::new("kill").arg("-USR2").arg(child.id().to_string()).status().unwrap().success());
}

fn alive(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// Starts `cairn server run` with extra flags; stderr goes to `dir/stderr.log`.
fn spawn_server(dir: &Path, config: &Path, flags: &[&str]) -> Reap {
    let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let child = Command::new(CAIRN)
        .args(["server", "run", "-config"])
        .arg(config)
        .args(flags)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let child = Reap(Some(child));
    let socket = dir.join("api.sock").display().to_string();
    wait_for("the server to answer healthcheck", || {
        Command::new(CAIRN).args(["server", "healthcheck", "-socketPath", &socket]).output().is_ok_and(|o| o.status.success())
    });
    child
}

#[test]
fn stderr_that_is_not_a_terminal_gets_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    // TestServer sends stderr to a file: not a terminal.
    let mut server = TestServer::start(dir.path(), &ServerOpts::default());
    server.cli_ok(&["bundle", "show"]);
    server.stop();
    let log = server.log();
    assert!(log.contains("INFO") || log.contains("DEBUG"), "the server logged nothing:\n{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in a log that is not a terminal:\n{log}");
}

#[test]
fn server_log_file_json_lines_and_sigusr2_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), &ServerOpts::default());
    let log_path = dir.path().join("server.json.log");
    let mut child = spawn_server(dir.path(), &config, &["-logFile", log_path.to_str().unwrap(), "-logFormat", "json", "-logLevel", "INFO"]);

    wait_for("log lines in log_file", || read(&log_path).lines().count() >= 2);
    let text = read(&log_path);
    assert!(!text.contains('\u{1b}'), "escape codes in log_file:\n{text}");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "JSON line without level/fields: {line}");
        // -logLevel INFO overrides the file's DEBUG.
        assert_ne!(v["level"], "DEBUG", "-logLevel INFO did not override log_level = DEBUG: {line}");
    }
    // Logs went to the file, not to stderr.
    assert!(!read(&dir.path().join("stderr.log")).contains("\"level\""), "JSON logs on stderr as well");

    // logrotate: rename, then SIGUSR2. The process lives and writes to a new file at the path.
    let rotated = dir.path().join("server.json.log.1");
    std::fs::rename(&log_path, &rotated).unwrap();
    usr2(child.child());
    wait_for("a new log file after SIGUSR2", || log_path.exists() && !read(&log_path).is_empty());
    assert!(alive(child.child()), "SIGUSR2 killed the server");
    let fresh = read(&log_path);
    assert!(fresh.contains("reopened log file"), "new file lacks the reopen event:\n{fresh}");
    for line in fresh.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
    // A second signal with nothing renamed keeps appending to the same file.
    usr2(child.child());
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(child.child()), "a second SIGUSR2 killed the server");
    child.stop(Duration::from_secs(15));
}

#[test]
fn server_without_log_file_survives_sigusr2() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), &ServerOpts::default());
    let mut child = spawn_server(dir.path(), &config, &[]);
    usr2(child.child());
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(child.child()), "SIGUSR2 killed a server that has no log_file:\n{}", read(&dir.path().join("stderr.log")));
    child.stop(Duration::from_secs(15));
}

#[test]
fn server_text_log_file_from_config_has_no_escape_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("text.log");
    let opts = ServerOpts { extra_server: format!("log_file = \"{}\"\nlog_format = \"text\"", log_path.display()), ..Default::default() };
    let config = write_config(dir.path(), free_port(), &opts);
    let child = spawn_server(dir.path(), &config, &[]);
    wait_for("log lines in log_file", || read(&log_path).lines().count() >= 2);
    child.stop(Duration::from_secs(15));
    let text = read(&log_path);
    assert!(text.contains("INFO") && !text.contains('\u{1b}'), "text log_file:\n{text}");
}

#[test]
fn agent_log_file_and_sigusr2_reopen() {
    let sdir = tempfile::tempdir().unwrap();
    let server = TestServer::start(sdir.path(), &ServerOpts::default());
    let adir = tempfile::tempdir().unwrap();
    let tok = token(&server, "spiffe://example.org/node/logs", "600");
    let config = agent_config(adir.path(), &server, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&tok));
    let log_path = adir.path().join("agent-file.log");
    let text = read(&config).replace("log_level = \"DEBUG\"", &format!("log_level = \"DEBUG\"\nlog_file = \"{}\"", log_path.display()));
    std::fs::write(&config, text).unwrap();
    let mut agent = TestAgent::start(adir.path(), config);
    wait_for("agent log lines in log_file", || read(&log_path).lines().count() >= 2);
    assert!(!read(&log_path).contains('\u{1b}'), "escape codes in the agent's log_file");

    std::fs::rename(&log_path, adir.path().join("agent-file.log.1")).unwrap();
    usr2(agent.child.as_mut().unwrap());
    wait_for("the agent's new log file after SIGUSR2", || read(&log_path).contains("reopened log file"));
    assert!(alive(agent.child.as_mut().unwrap()), "SIGUSR2 killed the agent");
    agent.stop();
}
