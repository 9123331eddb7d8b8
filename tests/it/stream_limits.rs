#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! HTTP/2 stream floods on the TLS port (issue 7, item 4): streams past the per-connection cap
//! are refused, anonymous `WatchBundle` subscribers are capped per address, memory comes back
//! when the flooder leaves, and a legitimate caller is served throughout. The flooder is
//! `scripts/flood.py`, a raw HTTP/2 client on the `h2` package.

use crate::common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn flood_script() -> String {
    format!("{}/scripts/flood.py", env!("CARGO_MANIFEST_DIR"))
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap()
}

fn json_line(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("flood.py said {line:?}: {e}"))
}

fn server_pid(s: &TestServer) -> u32 {
    let out = Command::new("pgrep").arg("-f").arg(s.config.display().to_string()).output().unwrap();
    String::from_utf8(out.stdout).unwrap().lines().next().expect("server pid").trim().parse().unwrap()
}

#[test]
fn stream_floods_are_capped_and_their_memory_returns() {
    require("python3");
    let ok = Command::new("python3").args(["-c", "import h2"]).status().unwrap().success();
    assert!(ok, "python3 package h2 is required by this test: run scripts/install-test-deps.sh");
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(tmp.path(), &ServerOpts::default());
    let pid = server_pid(&s);
    let port = s.port.to_string();
    let probe = || {
        let out = Command::new("python3").args([&flood_script(), "probe", "--port", &port, "--samples", "3"]).output().unwrap();
        json_line(String::from_utf8_lossy(&out.stdout).trim())
    };
    assert_eq!(probe()["errors"], 0, "GetBundle over TLS fails before any flood");
    let baseline = rss_kb(pid);

    // Streams that never send their request stay open: each connection gets 100, the rest
    // are reset by the HTTP/2 layer.
    let out = Command::new("python3")
        .args([&flood_script(), "streams", "--port", &port, "--conns", "2", "--streams", "300", "--no-body", "--settle", "2"])
        .output()
        .unwrap();
    let v = json_line(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default());
    assert_eq!(v["attempted"], 600, "{v}");
    assert_eq!(v["refused_h2"], 400, "streams past 100 per connection must be refused: {v}");

    // 10,000 anonymous watches from one address: 16 are served, the rest refused with
    // RESOURCE_EXHAUSTED or, past the stream cap, reset. Held open while a caller is probed.
    let mut flood = Command::new("python3")
        .args([&flood_script(), "streams", "--port", &port, "--conns", "10", "--streams", "1000", "--settle", "1", "--hold-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(flood.stdout.take().unwrap()).lines();
    let v = json_line(&lines.next().unwrap().unwrap());
    assert_eq!(v["attempted"], 10_000, "{v}");
    assert_eq!(v["watching"], 16, "one address may hold 16 watches: {v}");
    assert!(v["grpc_codes"]["8"].as_u64().unwrap_or(0) > 5_000, "refusals are RESOURCE_EXHAUSTED: {v}");
    let during = rss_kb(pid);
    let p = probe();
    assert_eq!(p["errors"], 0, "a legitimate caller failed during the flood: {p}");
    writeln!(flood.stdin.as_mut().unwrap()).unwrap();
    assert!(lines.next().unwrap().unwrap().contains("released"));
    let _ = flood.wait();

    // The watches are gone: another 16 fit again at once, and memory is back near baseline.
    std::thread::sleep(Duration::from_secs(1));
    let out = Command::new("python3")
        .args([&flood_script(), "streams", "--port", &port, "--conns", "1", "--streams", "16", "--settle", "2"])
        .output()
        .unwrap();
    let v = json_line(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default());
    assert_eq!(v["watching"], 16, "watch permits were not released when the flooder left: {v}");
    let after = rss_kb(pid);
    eprintln!("server RSS: baseline {baseline} kB, during flood {during} kB, after {after} kB");
    assert!(after <= baseline + 20 * 1024, "memory did not return: baseline {baseline} kB, after {after} kB");
    assert!(during <= baseline + 64 * 1024, "a capped flood still cost {} kB", during - baseline);
}
