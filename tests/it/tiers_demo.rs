#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! `cairn tiers up --detach` with the real binary: every server's status.json and every
//! agent's Workload API (through the Rust `spiffe` crate, a client no one here wrote) see
//! every tier's JWT key; a JWT-SVID from one region validates at an agent of the other;
//! `cairn tiers status` describes each tier; `cairn tiers down` leaves no process behind.

use crate::common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The two demos run one after the other: each picks ports from a free one upwards, and two
/// demos probing at the same moment could both pick the same port.
static SERIAL: Mutex<()> = Mutex::new(());

/// A detached demo, stopped on drop even when an assertion fails.
struct Demo {
    data: PathBuf,
    up_output: String,
}

impl Demo {
    fn up(topology: &str, data: &Path, extra: &[&str]) -> Self {
        let out = Command::new(CAIRN)
            .args(["tiers", "up", topology, "--detach", "--data-dir"])
            .arg(data)
            .args(extra)
            .args(["--base-port", &free_port().to_string()])
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let demo = Self { data: data.to_owned(), up_output: text };
        assert!(out.status.success(), "cairn tiers up {topology} failed:\n{}\n{}", demo.up_output, demo.logs());
        demo
    }

    fn state(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.data.join("tiers.json")).unwrap()).unwrap()
    }

    fn tiers(&self, args: &[&str]) -> (bool, String) {
        run(Command::new(CAIRN).arg("tiers").args(args).arg("--data-dir").arg(&self.data))
    }

    /// Every log of the demo, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for kind in ["servers", "agents"] {
            if let Ok(text) = std::fs::read(self.data.join("tiers.json")) {
                let state: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
                for t in state[kind].as_array().into_iter().flatten() {
                    let log = t["log"].as_str().unwrap_or_default();
                    out.push_str(&format!("--- {log}\n{}\n", std::fs::read_to_string(log).unwrap_or_default()));
                }
            }
        }
        out
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.tiers(&["down"]);
    }
}

fn status_json(path: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn strings(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

/// The active JWT kid of each server, by name.
fn own_kids(state: &serde_json::Value) -> Vec<(String, String)> {
    state["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let st = status_json(s["status_file"].as_str().unwrap());
            let kid = st["slots"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["kind"] == "jwt" && x["role"] == "current")
                .unwrap_or_else(|| panic!("server {} has no active JWT key: {st}", s["name"]))["id"]
                .as_str()
                .unwrap()
                .to_owned();
            (s["name"].as_str().unwrap().to_owned(), kid)
        })
        .collect()
}

/// Every server's status.json and every agent's FetchJWTBundles list every server's key.
fn assert_everyone_sees_every_key(demo: &Demo, rt: &tokio::runtime::Runtime) -> BTreeSet<String> {
    let state = demo.state();
    let kids: BTreeSet<String> = own_kids(&state).into_iter().map(|(_, k)| k).collect();
    assert_eq!(kids.len(), state["servers"].as_array().unwrap().len(), "each server has its own key: {kids:?}");
    for s in state["servers"].as_array().unwrap() {
        let seen = strings(&status_json(s["status_file"].as_str().unwrap())["jwt_key_ids"]);
        assert!(seen.is_superset(&kids), "server {} sees {seen:?}, not all of {kids:?}", s["name"]);
    }
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    for a in state["agents"].as_array().unwrap() {
        let socket = a["socket"].as_str().unwrap();
        let seen: BTreeSet<String> = rt.block_on(async {
            let client = spiffe::WorkloadApiClient::connect_to(&format!("unix:{socket}")).await.unwrap();
            let bundles = client.fetch_jwt_bundles().await.unwrap();
            bundles.get(&td).unwrap().jwt_authorities().map(|k| k.key_id().to_owned()).collect()
        });
        assert!(seen.is_superset(&kids), "agent {} sees {seen:?}, not all of {kids:?}", a["name"]);
    }
    kids
}

fn pids(state: &serde_json::Value) -> Vec<u32> {
    ["servers", "agents"]
        .iter()
        .flat_map(|k| state[*k].as_array().unwrap().iter().map(|t| u32::try_from(t["pid"].as_u64().unwrap()).unwrap()))
        .collect()
}

/// Gone, or a zombie waiting for an init that does not reap (some containers).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

fn assert_down_stops_everything(demo: &Demo) {
    let before = pids(&demo.state());
    assert!(before.iter().all(|p| !gone(*p)), "every recorded process runs before down");
    let (ok, out) = demo.tiers(&["down"]);
    assert!(ok && out.contains(&format!("stopped {} processes", before.len())), "{out}");
    let alive: Vec<u32> = before.into_iter().filter(|p| !gone(*p)).collect();
    assert!(alive.is_empty(), "still running after cairn tiers down: {alive:?}");
    let (ok, out) = demo.tiers(&["down"]);
    assert!(ok && out.contains("nothing was running"), "{out}");
}

#[test]
fn demo_tiers_converge_and_stop() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::up("tiers/demo", &tmp.path().join("demo"), &[]);
    for want in [
        "├── region-a",
        "│   └── node-a",
        "└── region-b",
        "    └── node-b",
        "Converged: all 7 tiers (3 servers, 4 agents) see all 3 JWT keys",
    ] {
        assert!(demo.up_output.contains(want), "missing {want:?} in:\n{}", demo.up_output);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_everyone_sees_every_key(&demo, &rt);

    // The point of sharing keys: a JWT-SVID signed in region-a validates at region-b's agent.
    let state = demo.state();
    let socket = |name: &str| {
        let a = state["agents"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap();
        format!("unix:{}", a["socket"].as_str().unwrap())
    };
    rt.block_on(async {
        let a = spiffe::WorkloadApiClient::connect_to(&socket("node-a")).await.unwrap();
        let b = spiffe::WorkloadApiClient::connect_to(&socket("node-b")).await.unwrap();
        let token = a.fetch_jwt_svid(["x"], None).await.unwrap();
        let validated = b.validate_jwt_token("x", token.token()).await.unwrap();
        assert_eq!(validated.spiffe_id().to_string(), "spiffe://example.org/region-a/workload");
    });

    // status: every tier, its slots and its upstream sync.
    let (ok, out) = demo.tiers(&["status"]);
    assert!(ok, "{out}");
    for want in [
        "server root ",
        "server region-a ",
        "server region-b ",
        "upstream        none: the self-signed root",
        "upstream sync   root: last sync",
        "by push",
        "JWT active      slot A",
        "X.509 prepared  none",
        "CA lifetime     configured 24h, effective ",
        "3 JWT keys: root, region-a, region-b",
        "region-a/upstream-agent",
        "node-a ",
        "node-b ",
    ] {
        assert!(out.contains(want), "status lacks {want:?}:\n{out}");
    }
    for (name, kid) in own_kids(&state) {
        assert!(out.contains(&kid), "status lacks {name}'s kid {kid}:\n{out}");
    }
    assert_down_stops_everything(&demo);
}

/// Also the `--softhsm` demo: every server's CA and JWT keys on one SoftHSM2 token.
#[test]
fn three_level_tiers_converge() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    require("softhsm2-util");
    require("pkcs11-tool");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("three");
    let demo = Demo::up("tiers/three-level", &data, &["--softhsm"]);
    assert!(demo.up_output.contains("on SoftHSM2 token \"cairn-demo\""), "{}", demo.up_output);
    // pkcs11-tool, not cairn, lists the keys: each server's under its name, non-extractable,
    // and no keys file anywhere.
    let pin = std::fs::read_to_string(data.join("softhsm/user.pin")).unwrap();
    let (ok, listing) = run(Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", data.join("softhsm/softhsm2.conf"))
        .args(["--module", "/usr/lib/softhsm/libsofthsm2.so", "--token-label", "cairn-demo", "--login", "--pin", pin.trim()])
        .args(["--list-objects", "--type", "privkey"]));
    assert!(ok, "{listing}");
    for s in demo.state()["servers"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        for id in ["x509-CA-A", "JWT-Signer-A"] {
            let block = listing
                .split("Private Key Object")
                .find(|b| b.contains(&format!("label:      {name}:{id}\n")))
                .unwrap_or_else(|| panic!("{name}:{id} is not on the token:\n{listing}"));
            assert!(block.contains("never extractable"), "{block}");
        }
        assert!(!Path::new(s["dir"].as_str().unwrap()).join("keys.json").exists(), "{name} wrote a keys file");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kids = assert_everyone_sees_every_key(&demo, &rt);
    assert_eq!(kids.len(), 3);
    let state = demo.state();
    // The zone's CA chain runs through the region's CA; the zone's CA lives 40m (1/6 of 4h).
    let zone = state["servers"].as_array().unwrap().iter().find(|s| s["name"] == "zone").unwrap();
    let chain = status_json(zone["status_file"].as_str().unwrap())["ca_chain"].clone();
    assert_eq!(chain.as_array().unwrap().len(), 2, "{chain}");
    assert_eq!(zone["ca_ttl"], 2400);
    // A workload under the zone gets an SVID that chains to the root.
    let node = state["agents"].as_array().unwrap().iter().find(|a| a["name"] == "zone-node").unwrap();
    let (ok, out) = run(Command::new(CAIRN).args(["agent", "api", "fetch", "x509", "-socketPath", node["socket"].as_str().unwrap()]));
    assert!(ok && out.contains("spiffe://example.org/zone/workload"), "{out}");
    assert_down_stops_everything(&demo);
}

#[test]
fn bad_topologies_are_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let topo = tmp.path().join("topology.conf");
    std::fs::write(&topo, "trust_domain = \"example.org\"\nserver \"root\" {}\nserver \"a\" { upstream = \"b\" }\nserver \"b\" { upstream = \"a\" }\nagent \"n\" { server = \"zz\" }\n").unwrap();
    let data = tmp.path().join("data");
    let (ok, out) = run(Command::new(CAIRN).args(["tiers", "up"]).arg(tmp.path()).arg("--data-dir").arg(&data));
    assert!(!ok, "{out}");
    for want in ["server.a.upstream: cycle: a -> b -> a", "agent.n.server: no server named \"zz\""] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
    assert!(!data.exists(), "nothing is written for a topology that is not valid");
    let (ok, out) = run(Command::new(CAIRN).args(["tiers", "status", "--data-dir"]).arg(&data));
    assert!(!ok && out.contains("no demo in"), "{out}");
}
