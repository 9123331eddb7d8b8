#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! A cairn agent attested to a cairn server, serving the Workload API to real SPIFFE clients
//! (the Python `spiffe` package here; the Rust `spiffe` crate in workload_clients.rs).

use crate::common;

use common::agent::*;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const PY_CLIENT: &str = r#"
import sys, datetime
from spiffe import WorkloadApiClient, JwtSvid, TrustDomain
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import hashes, serialization
sock, want = sys.argv[1], sys.argv[2]
with WorkloadApiClient(socket_path="unix:" + sock) as c:
    svid = c.fetch_x509_svid()
    assert str(svid.spiffe_id) == want, svid.spiffe_id
    bundle = c.fetch_x509_bundles().get_bundle_for_trust_domain(TrustDomain("example.org"))
    roots = bundle.x509_authorities
    assert len(roots) >= 1
    # The chain verifies: each certificate is signed by the next, the last by a bundle root.
    chain = list(svid.cert_chain)
    issuers = chain[1:] + [None]
    for cert, issuer in zip(chain, issuers):
        if issuer is None:
            issuer = next(r for r in roots if r.subject == cert.issuer)
        issuer.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    # The private key matches the leaf.
    pub1 = svid.private_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub2 = svid.leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pub1 == pub2
    jwt = c.fetch_jwt_svid(audience={"test-audience"})
    assert str(jwt.spiffe_id) == want, jwt.spiffe_id
    jb = c.fetch_jwt_bundles().get_bundle_for_trust_domain(TrustDomain("example.org"))
    parsed = JwtSvid.parse_and_validate(jwt.token, jb, {"test-audience"})
    assert str(parsed.spiffe_id) == want
    validated = c.validate_jwt_svid(jwt.token, "test-audience")
    assert str(validated.spiffe_id) == want
    try:
        c.validate_jwt_svid(jwt.token, "other-audience")
        raise SystemExit("wrong audience accepted")
    except Exception as e:
        assert "audience" in str(e).lower() or "invalid" in str(e).lower(), e
print("PY-OK", want)
"#;

#[test]
fn python_spiffe_client_against_an_attested_agent() {
    require("python3");
    let tmp = tempfile::tempdir().unwrap();
    let sdir = tmp.path().join("server");
    std::fs::create_dir(&sdir).unwrap();
    let s = TestServer::start(&sdir, &ServerOpts::default());
    let t = token(&s, "spiffe://example.org/node1", "600");
    s.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/node1",
        "-spiffeID",
        "spiffe://example.org/workload",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ]);
    let adir = tmp.path().join("agent");
    std::fs::create_dir(&adir).unwrap();
    let cfg = agent_config(&adir, &s, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t));
    let mut a = TestAgent::start(&adir, cfg.clone());
    let (ok, out) = run(Command::new("python3").arg("-c").arg(PY_CLIENT).arg(&a.socket).arg("spiffe://example.org/workload"));
    assert!(ok && out.contains("PY-OK"), "py-spiffe failed: {out}\nagent log:\n{}", a.log());
    // SPIRE's DEBUG line per X509-SVID sent, with the method and the SPIFFE ID (operators grep).
    let log = a.log();
    assert!(
        log.lines().any(|l| l.contains("Fetched X.509 SVID") && l.contains("FetchX509SVID") && l.contains("spiffe://example.org/workload")),
        "no 'Fetched X.509 SVID' debug line:\n{log}"
    );
    // The agent is recorded on the server under its join-token ID.
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{t}");
    let agents = s.cli_ok(&["agent", "list"]);
    assert!(agents.starts_with(&format!("Found 1 attested agent:\n\nSPIFFE ID         : {agent_id}\n")), "{agents}");
    assert!(agents.contains("Expiration time   : 20") && agents.contains(" +0000 UTC\n"), "Go's time format: {agents}");
    // SPIRE's `-output json`, as `jq` pipelines read it.
    let listed: serde_json::Value = serde_json::from_str(&s.cli_ok(&["agent", "list", "-output", "json"])).unwrap();
    let first = &listed["agents"][0];
    assert_eq!(
        (first["id"]["path"].as_str(), first["attestation_type"].as_str()),
        (agent_id.strip_prefix("spiffe://example.org"), Some("join_token")),
        "{listed}"
    );
    assert!(first["x509svid_expires_at"].is_string() && first["banned"] == false, "{listed}");
    let shown = s.cli_ok(&["agent", "show", "-spiffeID", &agent_id]);
    assert!(shown.starts_with("Found an attested agent given its SPIFFE ID\n\nSPIFFE ID"), "{shown}");
    let shown: serde_json::Value = serde_json::from_str(&s.cli_ok(&["agent", "show", "-spiffeID", &agent_id, "-output", "json"])).unwrap();
    assert_eq!(shown["id"]["trust_domain"], "example.org");
    // The version the agent posted at start (PostStatus), stored and shown as SPIRE shows it.
    assert_eq!(shown["agent_version"], env!("CARGO_PKG_VERSION"), "{shown}");
    let text = s.cli_ok(&["agent", "show", "-spiffeID", &agent_id]);
    assert!(text.contains(&format!("Agent version     : {}", env!("CARGO_PKG_VERSION"))), "{text}");

    // Restart with disk keys: same identity, no token needed (the token is spent anyway).
    a.stop();
    let cfg2 = agent_config(&adir, &s, "NodeAttestor \"join_token\" { plugin_data {} }", None);
    a.config = cfg2;
    a.spawn();
    let (ok, out) = run(Command::new("python3").arg("-c").arg(PY_CLIENT).arg(&a.socket).arg("spiffe://example.org/workload"));
    assert!(ok, "after restart: {out}\n{}", a.log());
    assert!(s.cli_ok(&["agent", "count"]).starts_with("1 "), "restart must not create a second agent");

    // The token is single use: a second agent presenting it is refused, clearly.
    let bdir = tmp.path().join("agent2");
    std::fs::create_dir(&bdir).unwrap();
    let cfg = agent_config(&bdir, &s, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t));
    let out = Command::new(CAIRN).args(["agent", "run", "-config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("join token does not exist or has already been used"), "{err}");
    // The first agent keeps serving.
    let (ok, _) = run(Command::new("python3").arg("-c").arg(PY_CLIENT).arg(&a.socket).arg("spiffe://example.org/workload"));
    assert!(ok);
}

#[test]
fn expired_token_and_banned_agent_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let sdir = tmp.path().join("server");
    std::fs::create_dir(&sdir).unwrap();
    let s = TestServer::start(&sdir, &ServerOpts::default());
    let t = token(&s, "spiffe://example.org/node-exp", "1");
    std::thread::sleep(Duration::from_millis(2100));
    let adir = tmp.path().join("a");
    std::fs::create_dir(&adir).unwrap();
    let cfg = agent_config(&adir, &s, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t));
    let out = Command::new(CAIRN).args(["agent", "run", "-config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("expired"), "{err}");

    // A banned agent is told so and stops.
    let t2 = token(&s, "spiffe://example.org/node-ban", "600");
    let bdir = tmp.path().join("b");
    std::fs::create_dir(&bdir).unwrap();
    let cfg = agent_config(&bdir, &s, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t2));
    let mut a = TestAgent::start(&bdir, cfg);
    s.cli_ok(&["agent", "ban", "-spiffeID", &format!("spiffe://example.org/spire/agent/join_token/{t2}")]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let exited = loop {
        if let Some(c) = a.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(exited.is_some_and(|s| !s.success()), "a banned agent must stop:\n{}", a.log());
    assert!(a.log().contains("banned"), "{}", a.log());
}

/// `trust_bundle_url`: the agent fetches its first bundle over HTTPS (the web server's
/// certificate checked against the roots in SSL_CERT_FILE), then attests.
#[test]
fn bootstrap_bundle_from_a_url() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let sdir = tmp.path().join("server");
    std::fs::create_dir(&sdir).unwrap();
    let s = TestServer::start(&sdir, &ServerOpts::default());
    let web = tmp.path().join("web");
    std::fs::create_dir(&web).unwrap();
    std::fs::write(web.join("bundle.pem"), s.cli_ok(&["bundle", "show"])).unwrap();
    let sh = format!(
        r#"set -e
cd {d}
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -new -x509 -key ca.key -subj "/CN=web test CA" -days 2 -out ca.crt -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
openssl ecparam -name prime256v1 -genkey -noout -out web.key
openssl req -new -key web.key -subj "/CN=localhost" -out web.csr
printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > web.ext
openssl x509 -req -in web.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile web.ext -out web.crt
"#,
        d = web.display()
    );
    let (ok, out) = run(Command::new("sh").arg("-c").arg(sh));
    assert!(ok, "{out}");
    let port = free_port();
    let mut httpd = Command::new("openssl")
        .current_dir(&web)
        .args(["s_server", "-WWW", "-accept", &format!("127.0.0.1:{port}"), "-cert", "web.crt", "-key", "web.key"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t = token(&s, "spiffe://example.org/url-node", "600");
    let adir = tmp.path().join("agent");
    std::fs::create_dir(&adir).unwrap();
    let cfg = agent_config(&adir, &s, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t));
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        &format!("trust_bundle_path = \"{}\"", adir.join("bootstrap.pem").display()),
        &format!("trust_bundle_url = \"https://localhost:{port}/bundle.pem\""),
    );
    std::fs::write(&cfg, &text).unwrap();
    assert!(text.contains("trust_bundle_url"), "{text}");
    let mut agent = Command::new(CAIRN)
        .args(["agent", "run", "-config"])
        .arg(&cfg)
        .env("SSL_CERT_FILE", web.join("ca.crt"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(adir.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !adir.join("agent.sock").exists() && start.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(st)) = agent.try_wait() {
            panic!("agent exited {st}: {}", std::fs::read_to_string(adir.join("agent.log")).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let attested = s.cli_ok(&["agent", "list"]).contains(&t);
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = httpd.kill();
    let _ = httpd.wait();
    assert!(
        attested,
        "agent did not attest after fetching the bundle over HTTPS: {}",
        std::fs::read_to_string(adir.join("agent.log")).unwrap_or_default()
    );
}

/// SPIRE's entry attributes end to end, watched through the agent's admin socket (Debug
/// GetInfo, as `spire-agent debug getinfo` and SPIRE's debug client read it):
/// `-disableX509SVIDPrefetch` keeps an entry's X509-SVID unminted until a workload asks, and
/// `-jwtSVIDIncludeJTI` gives every JWT-SVID a fresh `jti` (no agent caching); the logger API
/// changes the agent's level at run time.
#[test]
fn prefetch_disabled_and_jti_entries_and_the_admin_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(tmp.path(), &ServerOpts::default());
    let t = token(&s, "spiffe://example.org/node1", "600");
    let uid = format!("unix:uid:{}", my_uid());
    for (path, extra) in [("eager", None), ("lazy", Some("-disableX509SVIDPrefetch")), ("jti", Some("-jwtSVIDIncludeJTI"))] {
        let id = format!("spiffe://example.org/{path}");
        let mut args = vec!["entry", "create", "-parentID", "spiffe://example.org/node1", "-spiffeID", &id, "-selector", &uid];
        args.extend(extra);
        let out = s.cli_ok(&args);
        if let Some(flag) = extra {
            let line = if flag.contains("Prefetch") { "DisableX509SvidPrefetch : true" } else { "JwtSvidIncludeJti       : true" };
            assert!(out.contains(line), "{out}");
        }
    }
    let adir = tmp.path().join("agent");
    std::fs::create_dir(&adir).unwrap();
    let cfg = agent_config(&adir, &s, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t));
    let admin = tmp.path().join("agent-admin").join("admin.sock");
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "agent {",
        &format!("agent {{\n    admin_socket_path = \"{}\"", admin.display()),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let a = TestAgent::start(&adir, cfg);
    let admin_s = admin.display().to_string();
    let info = || -> serde_json::Value {
        let o = Command::new(CAIRN).args(["agent", "debug", "getinfo", "-socketPath", &admin_s, "-output", "json"]).output().unwrap();
        assert!(o.status.success(), "{o:?}");
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // Owner-only socket.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&admin).unwrap().permissions().mode() & 0o777, 0o600);
    // Prefetched: eager, jti and the join token's alias entry (node1); the lazy one waits.
    let deadline = Instant::now() + Duration::from_secs(20);
    while info()["cached_x509_svids_count"] != 3 {
        assert!(Instant::now() < deadline, "never 3 cached SVIDs: {}\n{}", info(), a.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(info()["cached_x509_svids_count"], 3, "the prefetch-disabled entry was minted before anyone asked");
    let got = a.api(&["fetch", "x509", "-output", "json"]);
    assert!(got.status.success(), "{got:?}\n{}", a.log());
    let got: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    let ids: Vec<&str> = got["svids"].as_array().unwrap().iter().map(|s| s["spiffe_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"spiffe://example.org/lazy") && ids.len() == 3, "the first fetch must carry the deferred SVID: {ids:?}");
    assert_eq!(info()["cached_x509_svids_count"], 4, "minted on demand and kept");
    let log = a.log();
    assert!(log.contains("Entry created") && log.contains("spiffe://example.org/lazy"), "SPIRE's 'Entry created' debug line:\n{log}");

    // JWT-SVIDs: the jti entry's are fresh every time and carry a jti; the others are cached.
    let jwt = |sub: &str| -> String {
        let o = a.api(&["fetch", "jwt", "-audience", "db", "-spiffeID", sub, "-output", "json"]);
        assert!(o.status.success(), "{o:?}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v[0]["svids"][0]["svid"].as_str().unwrap().to_owned()
    };
    let claims = |token: &str| -> serde_json::Value {
        use base64::Engine as _;
        let body = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap()
    };
    let (j1, j2) = (jwt("spiffe://example.org/jti"), jwt("spiffe://example.org/jti"));
    assert_ne!(j1, j2, "a jti entry's JWT-SVID came from the cache");
    assert!(claims(&j1)["jti"].is_string() && claims(&j1)["jti"] != claims(&j2)["jti"], "{} / {}", claims(&j1), claims(&j2));
    let (e1, e2) = (jwt("spiffe://example.org/eager"), jwt("spiffe://example.org/eager"));
    assert_eq!(e1, e2, "an ordinary entry's JWT-SVID is cached until half-life");
    assert!(claims(&e1).get("jti").is_none(), "{}", claims(&e1));

    // Logger API on the admin socket: set, get, reset.
    let logger = |args: &[&str]| -> serde_json::Value {
        let mut v = vec!["agent", "logger"];
        v.extend_from_slice(args);
        v.extend_from_slice(&["-socketPath", &admin_s, "-output", "json"]);
        let o = Command::new(CAIRN).args(&v).output().unwrap();
        assert!(o.status.success(), "{o:?}");
        serde_json::from_slice(&o.stdout).unwrap()
    };
    assert_eq!(logger(&["get"]), serde_json::json!({"current_level": "DEBUG", "launch_level": "DEBUG"}));
    assert_eq!(logger(&["set", "-level", "warn"])["current_level"], "WARN");
    assert_eq!(logger(&["reset"])["current_level"], "DEBUG");
    let bad = Command::new(CAIRN).args(["agent", "logger", "set", "-level", "loud", "-socketPath", &admin_s]).output().unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("the value \"loud\" is not a valid setting"), "{bad:?}");
}
