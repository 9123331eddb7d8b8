#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! Nested tiers end to end, in SPIRE's own config and CLI spelling: a root (UpstreamAuthority
//! "disk"), downstream servers (UpstreamAuthority "spire") authenticated by root-tier agents,
//! and agents under each downstream. Separate processes on 127.0.0.1.

use crate::common;

use common::agent::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn openssl_root(dir: &Path) {
    let sh = format!(
        r#"set -e
cd {d}
openssl ecparam -name prime256v1 -genkey -noout -out upstream.key
openssl req -new -x509 -key upstream.key -subj "/C=US/O=Upstream Root" -days 30 -out upstream.crt \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -addext "subjectAltName=URI:spiffe://example.org"
"#,
        d = dir.display()
    );
    let (ok, out) = run(Command::new("sh").arg("-c").arg(sh));
    assert!(ok, "{out}");
}

struct Tier {
    server: TestServer,
    _upstream_agent: Option<TestAgent>,
}

/// A downstream tier under `upstream`: a root-tier agent on its "host", a -downstream entry
/// for the server's identity, and the server with UpstreamAuthority "spire".
fn downstream(base: &Path, name: &str, upstream: &TestServer, ca_ttl: &str, svid_ttl: &str) -> Tier {
    let extra = format!(
        "ca_ttl = \"{ca_ttl}\"\n default_x509_svid_ttl = \"{svid_ttl}\"\n default_jwt_svid_ttl = \"{svid_ttl}\"\n experimental {{ jwt_publish_grace = \"1s\" ca_rotation_interval = \"1s\" }}"
    );
    let (opts, agent) = downstream_setup(base, name, upstream, &extra);
    Tier { server: TestServer::start(&base.join(name), &opts), _upstream_agent: Some(agent) }
}

/// Everything a downstream tier needs but its own process: the upstream agent and entry, its
/// directory, and its server options with `extra_server` in the server block.
pub(crate) fn downstream_setup(base: &Path, name: &str, upstream: &TestServer, extra_server: &str) -> (ServerOpts, TestAgent) {
    let uid = my_uid();
    let node = format!("spiffe://example.org/nodes/{name}");
    let t = token(upstream, &node, "600");
    upstream.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        &node,
        "-spiffeID",
        &format!("spiffe://example.org/{name}"),
        "-selector",
        &format!("unix:uid:{uid}"),
        "-downstream",
    ]);
    let adir = base.join(format!("{name}-upstream-agent"));
    std::fs::create_dir(&adir).unwrap();
    let agent = TestAgent::start(&adir, agent_config(&adir, upstream, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t)));
    std::fs::create_dir(base.join(name)).unwrap();
    let opts = ServerOpts {
        extra_server: extra_server.to_owned(),
        extra_plugins: format!(
            "UpstreamAuthority \"spire\" {{ plugin_data {{ server_address = \"127.0.0.1\" server_port = \"{}\" workload_api_socket = \"{}\" }} }}",
            upstream.port,
            agent.socket.display()
        ),
        ..ServerOpts::default()
    };
    (opts, agent)
}

fn status_json(server: &TestServer) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(server.dir.join("status.json")).unwrap()).unwrap()
}

/// An agent under `server` with one workload entry for this process's uid.
pub(crate) fn workload_agent(base: &Path, name: &str, server: &TestServer, workload: &str) -> TestAgent {
    let node = format!("spiffe://example.org/nodes/{name}");
    let t = token(server, &node, "600");
    server.cli_ok(&["entry", "create", "-parentID", &node, "-spiffeID", workload, "-selector", &format!("unix:uid:{}", my_uid())]);
    let adir = base.join(name);
    std::fs::create_dir(&adir).unwrap();
    TestAgent::start(&adir, agent_config(&adir, server, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t)))
}

pub(crate) fn jwt_kids(server: &TestServer) -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_str(&server.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let mut kids: Vec<String> =
        doc["keys"].as_array().unwrap().iter().filter(|k| k["use"] == "jwt-svid").map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
    kids.sort();
    kids
}

/// The server's active JWT key id, from its status file (a downstream's key becomes active
/// only after its publication grace period).
pub(crate) fn own_kid(server: &TestServer) -> String {
    let read = || -> Option<String> {
        let status: serde_json::Value = serde_json::from_slice(&std::fs::read(server.dir.join("status.json")).ok()?).ok()?;
        Some(status["slots"].as_array()?.iter().find(|s| s["kind"] == "jwt" && s["role"] == "current")?["id"].as_str()?.to_owned())
    };
    wait_until("an active JWT key", Duration::from_secs(15), || read().is_some());
    read().unwrap()
}

pub(crate) fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

pub(crate) fn fetch_x509(agent: &TestAgent, dir: &Path) -> PathBuf {
    let out = agent.api(&["fetch", "x509", "-write", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), agent.log());
    dir.to_path_buf()
}

/// Splits an SVID file (leaf first) under `base` with `tag`, writes its intermediates to
/// `<tag>-inter.pem`, and asserts that openssl (`-x509_strict`) verifies the leaf against
/// `roots` through them. Returns the split certificates and the intermediates file.
pub(crate) fn verify_through_chain(base: &Path, svid: &Path, roots: &Path, tag: &str) -> (Vec<PathBuf>, PathBuf) {
    let chain = split_pem(svid, base, &format!("{tag}c"));
    let inter = base.join(format!("{tag}-inter.pem"));
    std::fs::write(&inter, chain.iter().skip(1).map(|p| std::fs::read_to_string(p).unwrap()).collect::<String>()).unwrap();
    let (ok, text) =
        run(Command::new("openssl").args(["verify", "-x509_strict", "-CAfile"]).arg(roots).arg("-untrusted").arg(&inter).arg(&chain[0]));
    assert!(ok, "openssl verify {}: {text}", svid.display());
    (chain, inter)
}

pub(crate) const PYJWT_ROOT: &str = r#"
import json, sys, jwt
from jwt.algorithms import ECAlgorithm
token, bundle_path, aud = sys.argv[1:4]
doc = json.load(open(bundle_path))
kid = jwt.get_unverified_header(token)["kid"]
key = ECAlgorithm.from_jwk(json.dumps(next(k for k in doc["keys"] if k.get("kid") == kid)))
claims = jwt.decode(token, key, algorithms=["ES256"], audience=aud)
print("OK", claims["sub"])
"#;

/// SPIRE's nested walk-through with SPIRE's TTLs: `ca_ttl = "24h"` at the root and at both
/// downstreams (SPIRE's default, which cairn used to refuse: the root CA does not live 6 x
/// the downstream's). Every server agrees on every JWT key, and a JWT-SVID from under one
/// downstream validates at the other downstream's agent.
#[test]
fn nested_walkthrough_jwt_keys_cross_every_tier() {
    require("openssl");
    require("python3");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let pki = base.join("pki");
    std::fs::create_dir(&pki).unwrap();
    openssl_root(&pki);
    let rdir = base.join("root");
    std::fs::create_dir(&rdir).unwrap();
    let root_opts = ServerOpts {
        extra_server: "ca_ttl = \"24h\"".into(),
        extra_plugins: format!(
            "UpstreamAuthority \"disk\" {{ plugin_data {{ cert_file_path = \"{}\" key_file_path = \"{}\" }} }}",
            pki.join("upstream.crt").display(),
            pki.join("upstream.key").display()
        ),
        ..ServerOpts::default()
    };
    let mut root = TestServer::start(&rdir, &root_opts);
    let d1 = downstream(base, "downstream1", &root, "24h", "30m");
    // Its CA is capped a few seconds short of 24h by the root CA's expiry, and it says so.
    let st = status_json(&d1.server);
    assert_eq!(st["ca_ttl"], 86_400, "{st}");
    let eff = st["effective_ca_ttl"].as_i64().unwrap();
    assert!((86_400 - 120..=86_400).contains(&eff), "{st}");
    let a1 = workload_agent(base, "agent1", &d1.server, "spiffe://example.org/region1/web");

    // Both servers list both JWT keys.
    let two = |s: &TestServer| jwt_kids(s).len() >= 2;
    wait_until("root and downstream1 to share two JWT keys", Duration::from_secs(15), || two(&root) && two(&d1.server));
    let k_root = own_kid(&root);
    let k_d1 = own_kid(&d1.server);
    for s in [&root, &d1.server] {
        let kids = jwt_kids(s);
        assert!(kids.contains(&k_root) && kids.contains(&k_d1), "{kids:?}");
    }

    // A second downstream: all three keys at all three servers, and at its workloads.
    let d2 = downstream(base, "downstream2", &root, "24h", "30m");
    let a2 = workload_agent(base, "agent2", &d2.server, "spiffe://example.org/region2/api");
    let k_d2 = own_kid(&d2.server);
    let want = {
        let mut v = vec![k_root.clone(), k_d1.clone(), k_d2.clone()];
        v.sort();
        v
    };
    let took = wait_until("all three keys at all three servers", Duration::from_secs(15), || {
        [&root, &d1.server, &d2.server].iter().all(|s| jwt_kids(s) == want)
    });
    eprintln!("three keys at three servers after {took:?}");
    wait_until("agent2's FetchJWTBundles to have all three keys", Duration::from_secs(15), || {
        let out = a2.api(&["fetch", "jwt", "-audience", "probe"]);
        let text = String::from_utf8_lossy(&out.stdout);
        want.iter().all(|k| text.contains(k.as_str()))
    });

    // A JWT-SVID minted for a workload under downstream1 validates at an agent under
    // downstream2, and with PyJWT against the root's bundle.
    let out = a1.api(&["fetch", "jwt", "-audience", "orders"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let token = text.lines().skip_while(|l| !l.starts_with("token(")).nth(1).unwrap().trim().to_owned();
    let out = a2.api(&["validate", "jwt", "-audience", "orders", "-svid", &token]);
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && v.contains("SVID is valid.") && v.contains("spiffe://example.org/region1/web"),
        "{v}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root_bundle = base.join("root-bundle.json");
    std::fs::write(&root_bundle, root.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let (ok, out) = run(Command::new("python3").arg("-c").arg(PYJWT_ROOT).arg(&token).arg(&root_bundle).arg("orders"));
    assert!(ok && out.contains("OK spiffe://example.org/region1/web"), "{out}");

    // X509-SVIDs from downstream1 verify against the root bundle through the chain, and a
    // workload under downstream1 and one under downstream2 complete mTLS with only Workload
    // API material.
    let w1 = fetch_x509(&a1, &base.join("w1"));
    let w2 = fetch_x509(&a2, &base.join("w2"));
    let root_pem = base.join("root.pem");
    std::fs::write(&root_pem, root.cli_ok(&["bundle", "show"])).unwrap();
    let (chain, inter) = verify_through_chain(base, &w1.join("svid.0.pem"), &root_pem, "w1");
    assert!(chain.len() >= 2, "leaf + downstream CA");
    let chain2 = split_pem(&w2.join("svid.0.pem"), base, "w2c");
    let inter2 = base.join("w2-inter.pem");
    std::fs::write(&inter2, chain2.iter().skip(1).map(|p| std::fs::read_to_string(p).unwrap()).collect::<String>()).unwrap();
    let port = free_port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
        .arg(w2.join("svid.0.pem"))
        .arg("-key")
        .arg(w2.join("svid.0.key"))
        .arg("-cert_chain")
        .arg(&inter2)
        .arg("-CAfile")
        .arg(w2.join("bundle.0.pem"))
        .args(["-Verify", "3", "-verify_return_error", "-naccept", "1", "-www"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (_, text) = run(Command::new("sh").arg("-c").arg(format!(
        "echo Q | openssl s_client -connect 127.0.0.1:{port} -cert {c} -key {k} -cert_chain {i} -CAfile {b} -verify_return_error -brief 2>&1",
        c = w1.join("svid.0.pem").display(),
        k = w1.join("svid.0.key").display(),
        b = w1.join("bundle.0.pem").display(),
        i = inter.display()
    )));
    let _ = server.kill();
    let _ = server.wait();
    assert!(text.contains("Verification: OK"), "mTLS between regions failed: {text}");

    // Kill the root: downstreams keep issuing. Restart it: bundles converge again.
    root.stop();
    std::thread::sleep(Duration::from_secs(1));
    d1.server.cli_ok(&["x509", "mint", "-spiffeID", "spiffe://example.org/while-root-down"]);
    assert!(d1.server.cli_ok(&["jwt", "mint", "-spiffeID", "spiffe://example.org/x", "-audience", "a"]).contains('.'));
    assert!(fetch_x509(&a2, &base.join("w2-down")).join("svid.0.pem").exists());
    root.spawn();
    // A JWT key appended at the root reaches both downstreams once they reconnect.
    let extra = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use cairn::wire::pb::spire::api::server::bundle::v1 as bundlepb;
        let ch = cairn::cli::client::connect_admin(&root.socket).await.unwrap();
        bundlepb::bundle_client::BundleClient::new(ch)
            .append_bundle(bundlepb::AppendBundleRequest {
                jwt_authorities: vec![cairn::wire::pb::spire::api::types::JwtKey {
                    public_key: rcgen::PublicKeyData::subject_public_key_info(&extra),
                    key_id: "operator-added".into(),
                    expires_at: cairn::now_unix() + 3600,
                    tainted: false,
                }],
                ..Default::default()
            })
            .await
            .unwrap();
    });
    let took = wait_until("the root's new key at both downstreams", Duration::from_secs(40), || {
        jwt_kids(&d1.server).contains(&"operator-added".to_owned()) && jwt_kids(&d2.server).contains(&"operator-added".to_owned())
    });
    eprintln!("converged {took:?} after the root came back");
}

#[test]
fn only_downstream_entries_may_mint_cas_or_publish_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let rdir = base.join("root");
    std::fs::create_dir(&rdir).unwrap();
    let root = TestServer::start(&rdir, &ServerOpts::default());
    // A workload (not downstream) under a root agent tries to act as a downstream server.
    let a = workload_agent(base, "plain", &root, "spiffe://example.org/not-downstream");
    let sdir = base.join("impostor");
    std::fs::create_dir(&sdir).unwrap();
    let opts = ServerOpts {
        extra_server: "ca_ttl = \"4h\"\n default_x509_svid_ttl = \"30m\"".into(),
        extra_plugins: format!(
            "UpstreamAuthority \"spire\" {{ plugin_data {{ server_address = \"127.0.0.1\" server_port = \"{}\" workload_api_socket = \"{}\" }} }}",
            root.port,
            a.socket.display()
        ),
        ..ServerOpts::default()
    };
    let conf = write_config(&sdir, free_port(), &opts);
    let out = Command::new(CAIRN).args(["server", "run", "-config"]).arg(&conf).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a non-downstream identity got a CA");
    assert!(err.contains("PermissionDenied") && err.contains("NewDownstreamX509CA"), "{err}");
    // And it gets no JWT key into the root's bundle.
    assert_eq!(jwt_kids(&root).len(), 1);

    // A downstream whose upstream is down fails at start, clearly.
    let sdir = base.join("orphan");
    std::fs::create_dir(&sdir).unwrap();
    let opts = ServerOpts {
        extra_server: "ca_ttl = \"4h\"\n default_x509_svid_ttl = \"30m\"".into(),
        extra_plugins: format!(
            "UpstreamAuthority \"spire\" {{ plugin_data {{ server_address = \"127.0.0.1\" server_port = \"{}\" workload_api_socket = \"{}\" }} }}",
            free_port(),
            base.join("no-agent.sock").display()
        ),
        ..ServerOpts::default()
    };
    let conf = write_config(&sdir, free_port(), &opts);
    let out = Command::new(CAIRN).args(["server", "run", "-config"]).arg(&conf).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("workload_api_socket"), "{err}");
}

/// TTLs SPIRE accepts run: a downstream asking for more than its upstream's CA has left is
/// capped at that CA's expiry (SPIRE's rule), says so in one log line and in its status, and
/// its SVIDs verify. A downstream with `disable_jwt_svids` publishes no JWT key. Only a CA
/// too short to rotate at all is refused, naming the numbers to change.
#[test]
fn spire_ttls_run_capped_and_only_unworkable_ones_are_refused() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let rdir = base.join("root");
    std::fs::create_dir(&rdir).unwrap();
    let root = TestServer::start(
        &rdir,
        &ServerOpts { extra_server: "ca_ttl = \"1h\"\n default_x509_svid_ttl = \"10m\"".into(), ..ServerOpts::default() },
    );
    // A 2h downstream under a 1h root (cairn used to refuse anything under a 12h root).
    let (opts, _a) = downstream_setup(
        base,
        "d",
        &root,
        "ca_ttl = \"2h\"\n default_x509_svid_ttl = \"10m\"\n experimental { jwt_publish_grace = \"1s\" }",
    );
    let d = TestServer::start(&base.join("d"), &opts);
    let st = status_json(&d);
    let eff = st["effective_ca_ttl"].as_i64().unwrap();
    assert!(st["ca_ttl"] == 7200 && (3500..=3600).contains(&eff), "{st}");
    let log = d.log();
    assert!(log.contains("of ca_ttl 2h (capped at the upstream CA's expiry); next CA prepared in"), "{log}");
    let out = base.join("svid");
    d.cli_ok(&["x509", "mint", "-spiffeID", "spiffe://example.org/w", "-write", out.to_str().unwrap()]);
    let certs = split_pem(&out.join("svid.pem"), base, "c");
    let inter = base.join("inter.pem");
    std::fs::write(&inter, certs.iter().skip(1).map(|p| std::fs::read_to_string(p).unwrap()).collect::<String>()).unwrap();
    let root_pem = base.join("root.pem");
    std::fs::write(&root_pem, root.cli_ok(&["bundle", "show"])).unwrap();
    let (ok, text) = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&root_pem)
        .arg("-untrusted")
        .arg(&inter)
        .arg(&certs[0]));
    assert!(ok, "{text}");
    let ca_end = openssl_x509(&certs[1], &["-enddate"]);
    let root_end = openssl_x509(&root_pem, &["-enddate"]);
    assert_eq!(ca_end, root_end, "the downstream CA ends with the root CA that signed it");

    // disable_jwt_svids on a downstream: it publishes nothing up, mints no JWT-SVIDs.
    wait_until("root and d to share two JWT keys", Duration::from_secs(15), || jwt_kids(&root).len() == 2);
    let before = jwt_kids(&root);
    let (opts, _b) = downstream_setup(base, "nojwt", &root, "ca_ttl = \"30m\"\n disable_jwt_svids = true");
    let nojwt = TestServer::start(&base.join("nojwt"), &opts);
    let out = nojwt.cli(&["jwt", "mint", "-spiffeID", "spiffe://example.org/x", "-audience", "a"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("JWT functionality is disabled"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(jwt_kids(&root), before, "a downstream with disable_jwt_svids published a JWT key");
    // Its bundle still carries the other tiers' keys (it follows the root's bundle).
    wait_until("nojwt to follow the root's JWT keys", Duration::from_secs(15), || jwt_kids(&nojwt) == before);

    // A root whose CAs live 40s cannot give a downstream a CA that outlives one rotation
    // check (10s, SPIRE's): refused at start with the numbers to change.
    let r2dir = base.join("root2");
    std::fs::create_dir(&r2dir).unwrap();
    let root2 = TestServer::start(
        &r2dir,
        &ServerOpts {
            extra_server: "ca_ttl = \"40s\"\n default_x509_svid_ttl = \"5s\"\n default_jwt_svid_ttl = \"5s\"".into(),
            ..ServerOpts::default()
        },
    );
    let (opts, _c) = downstream_setup(base, "short", &root2, "ca_ttl = \"1h\"\n default_x509_svid_ttl = \"5m\"");
    let conf = write_config(&base.join("short"), free_port(), &opts);
    let out = Command::new(CAIRN).args(["server", "run", "-config"]).arg(&conf).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("less than 6 x ca_rotation_interval (1m)")
            && err.contains("Raise the upstream tier's ca_ttl (this tier asked for 1h)"),
        "{err}"
    );
}

// The rotations across tiers (`rotations_across_tiers_leave_no_validation_gap`,
// `rotations_with_equal_ca_ttl_at_every_tier_leave_no_validation_gap`) run in
// `tests/clock.rs`, on a manual clock instead of 150 s of real time each.

/// One binary: a downstream server that attests itself to the upstream (join_token) instead
/// of relying on a separate upper-tier agent process.
#[test]
fn downstream_with_an_embedded_agent_identity() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let rdir = base.join("root");
    std::fs::create_dir(&rdir).unwrap();
    let root = TestServer::start(&rdir, &ServerOpts::default());
    let t = root.cli_ok(&["token", "generate", "-ttl", "600"]).trim().strip_prefix("Token: ").unwrap().to_owned();
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{t}");
    root.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        &agent_id,
        "-spiffeID",
        "spiffe://example.org/embedded-region",
        "-selector",
        "unix:uid:0",
        "-downstream",
    ]);
    let bundle = base.join("root.pem");
    std::fs::write(&bundle, root.cli_ok(&["bundle", "show"])).unwrap();
    let ddir = base.join("region");
    std::fs::create_dir(&ddir).unwrap();
    let opts = ServerOpts {
        extra_server: "ca_ttl = \"4h\"\n default_x509_svid_ttl = \"30m\"\n experimental { jwt_publish_grace = \"3s\" }".into(),
        extra_plugins: format!(
            "UpstreamAuthority \"spire\" {{ plugin_data {{ server_address = \"127.0.0.1\" server_port = \"{}\" join_token = \"{t}\" trust_bundle_path = \"{}\" }} }}",
            root.port,
            bundle.display()
        ),
        ..ServerOpts::default()
    };
    // Start returns once `healthcheck` passes; a downstream's first JWT key waits out its
    // publication grace (3s) before use, and healthcheck must not pass before it can sign.
    let d = TestServer::start(&ddir, &opts);
    let out = d.cli(&["jwt", "mint", "-spiffeID", "spiffe://example.org/region-workload", "-audience", "a"]);
    assert!(out.status.success(), "healthy but cannot mint a JWT-SVID: {}", String::from_utf8_lossy(&out.stderr));
    assert!(root.cli_ok(&["agent", "list"]).contains(&agent_id), "the server attested itself as an agent of the root");
    wait_until("both JWT keys at both servers", Duration::from_secs(15), || jwt_kids(&root).len() == 2 && jwt_kids(&d).len() == 2);
    let out = base.join("svid");
    d.cli_ok(&["x509", "mint", "-spiffeID", "spiffe://example.org/region-workload", "-write", out.to_str().unwrap()]);
    let certs = split_pem(&out.join("svid.pem"), base, "c");
    let inter = base.join("inter.pem");
    std::fs::write(&inter, certs.iter().skip(1).map(|p| std::fs::read_to_string(p).unwrap()).collect::<String>()).unwrap();
    let (ok, text) = run(Command::new("openssl").args(["verify", "-CAfile"]).arg(&bundle).arg("-untrusted").arg(&inter).arg(&certs[0]));
    assert!(ok, "{text}");
}
