#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! SPIFFE federation between two trust domains (issue 12), replaying SPIRE's
//! `ghostunnel-federation` suite on loopback: two servers, each serving its bundle endpoint
//! and federating with the other; the bundles bootstrapped by hand (`bundle show` / `bundle
//! set`, the suite's step 02); workload entries with `-federatesWith` (step 04); and the
//! suite's proxy check done with openssl s_server/s_client on the Workload API material
//! (ghostunnel is not installable here). One direction uses `https_web` with a certificate from
//! a test CA (trusted through SSL_CERT_FILE), the other `https_spiffe`.

use crate::common;

use common::agent::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UP: &str = "upstream-domain.test";
const DOWN: &str = "downstream-domain.test";

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let (ok, out) = run(Command::new("openssl").args(args).current_dir(dir));
    assert!(ok, "openssl {args:?}: {out}");
}

/// A test CA and a server certificate for 127.0.0.1 / localhost signed by it.
fn web_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::write(dir.join("web.cnf"), "[ca]\nbasicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign\n[srv]\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "webca.key"]);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "webca.key",
            "-out",
            "webca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=cairn test web CA",
            "-extensions",
            "ca",
            "-config",
            "web.cnf",
        ],
    );
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "web.key"]);
    openssl(dir, &["req", "-new", "-key", "web.key", "-out", "web.csr", "-subj", "/CN=localhost", "-config", "web.cnf"]);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "1",
            "-CA",
            "webca.pem",
            "-CAkey",
            "webca.key",
            "-CAcreateserial",
            "-in",
            "web.csr",
            "-out",
            "web.pem",
            "-extensions",
            "srv",
            "-extfile",
            "web.cnf",
        ],
    );
    (dir.join("webca.pem"), dir.join("web.pem"), dir.join("web.key"))
}

/// An agent of `server` (trust domain `td`) with one workload entry for this uid that
/// federates with `federates_with`.
fn agent_with_workload(base: &Path, name: &str, server: &TestServer, td: &str, workload: &str, federates_with: &str) -> TestAgent {
    let node = format!("spiffe://{td}/nodes/{name}");
    let t = server.cli_ok(&["token", "generate", "-spiffeID", &node, "-ttl", "600"]);
    let t = t.split_whitespace().last().unwrap().to_owned();
    server.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        &node,
        "-spiffeID",
        workload,
        "-selector",
        &format!("unix:uid:{}", my_uid()),
        "-federatesWith",
        &format!("spiffe://{federates_with}"),
        "-x509SVIDTTL",
        "0",
    ]);
    let adir = base.join(name);
    std::fs::create_dir(&adir).unwrap();
    let config = agent_config(&adir, server, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t));
    let text = std::fs::read_to_string(&config).unwrap().replace("trust_domain = \"example.org\"", &format!("trust_domain = \"{td}\""));
    std::fs::write(&config, text).unwrap();
    TestAgent::start(&adir, config)
}

fn federation_status(s: &TestServer) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(s.dir.join("status.json")).unwrap_or_default()).unwrap_or_default();
    v["federation"].clone()
}

/// The suite's proxy check (up to 15 tries, a second apart): the downstream workload
/// connects to the upstream workload over mTLS with nothing but Workload API material (its
/// SVID and key, the federated bundle), each side verifying the other; a line sent arrives.
fn proxy_check(base: &Path, up: &Path, down: &Path) {
    let port = free_port();
    // Each side sends its chain: the leaf and its tier's CA (the workloads live under
    // downstream tiers, whose CAs the peer's federated bundle does not hold).
    let intermediates = |dir: &Path| {
        let parts = split_pem(&dir.join("svid.0.pem"), dir, "svid-part-");
        let chain = dir.join("chain.pem");
        let text: String = parts.iter().skip(1).map(|p| std::fs::read_to_string(p).unwrap()).collect();
        std::fs::write(&chain, text).unwrap();
        chain
    };
    let (up_chain, down_chain) = (intermediates(up), intermediates(down));
    let howdy = base.join("howdy");
    let server = Command::new("openssl")
        .args(["s_server", "-quiet", "-naccept", "1", "-Verify", "1", "-verify_return_error", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(up.join("svid.0.pem"))
        .arg("-key")
        .arg(up.join("svid.0.key"))
        .arg("-cert_chain")
        .arg(&up_chain)
        .arg("-CAfile")
        .arg(up.join("federated_bundle.0.0.pem"))
        // A stdin that stays open: s_server ends a session when its stdin ends.
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&howdy).unwrap())
        .stderr(std::fs::File::create(base.join("s_server.err")).unwrap())
        .spawn()
        .unwrap();
    // s_server's stdout is a file, so it is flushed when s_server exits after its one session.
    let mut server = KillOnDrop(server);
    let mut last = String::new();
    for _ in 0..15 {
        let mut client = Command::new("openssl")
            .args(["s_client", "-quiet", "-no_ign_eof", "-verify_return_error", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(down.join("svid.0.pem"))
            .arg("-key")
            .arg(down.join("svid.0.key"))
            .arg("-cert_chain")
            .arg(&down_chain)
            .arg("-CAfile")
            .arg(down.join("federated_bundle.0.0.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = client.stdin.take().unwrap();
            let _ = stdin.write_all(b"HELLO\n");
            std::thread::sleep(Duration::from_millis(300));
        }
        let out = client.wait_with_output().unwrap();
        last = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.0.try_wait().unwrap().is_none() && Instant::now() < deadline && !last.contains("onnection refused") {
            std::thread::sleep(Duration::from_millis(50));
        }
        if std::fs::read_to_string(&howdy).unwrap_or_default().contains("HELLO") {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("Proxy failed: {last}\nserver: {}", std::fs::read_to_string(base.join("s_server.err")).unwrap_or_default());
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A downstream tier `name` under `root` (trust domain `td`): its upstream agent (join token,
/// a `-downstream` entry for this uid) and the server, with `extra_server` in its server block.
fn region(
    base: &Path,
    name: &str,
    td: &'static str,
    root: &TestServer,
    extra_server: String,
    env: Vec<(String, String)>,
) -> (TestServer, TestAgent) {
    let node = format!("spiffe://{td}/nodes/{name}");
    let t = root.cli_ok(&["token", "generate", "-spiffeID", &node, "-ttl", "600"]);
    let t = t.split_whitespace().last().unwrap().to_owned();
    root.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        &node,
        "-spiffeID",
        &format!("spiffe://{td}/{name}"),
        "-selector",
        &format!("unix:uid:{}", my_uid()),
        "-downstream",
    ]);
    let adir = base.join(format!("{name}-upstream-agent"));
    std::fs::create_dir(&adir).unwrap();
    let config = agent_config(&adir, root, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t));
    let text = std::fs::read_to_string(&config).unwrap().replace("trust_domain = \"example.org\"", &format!("trust_domain = \"{td}\""));
    std::fs::write(&config, text).unwrap();
    let agent = TestAgent::start(&adir, config);
    let sdir = base.join(name);
    std::fs::create_dir(&sdir).unwrap();
    let server = TestServer::start(
        &sdir,
        &ServerOpts {
            trust_domain: td,
            extra_server,
            env,
            extra_plugins: format!(
                "UpstreamAuthority \"spire\" {{ plugin_data {{ server_address = \"127.0.0.1\" server_port = \"{}\" workload_api_socket = \"{}\" }} }}",
                root.port,
                agent.socket.display()
            ),
            ..ServerOpts::default()
        },
    );
    (server, agent)
}

/// Waits until `s` reports a successful refresh of `other`'s bundle in status.json.
fn wait_refreshed(name: &str, s: &TestServer, other: &str) {
    let start = Instant::now();
    loop {
        let st = federation_status(s);
        if st[0]["trust_domain"] == other && st[0]["last_refresh"].as_i64().unwrap_or(0) > 0 && st[0]["last_error"].is_null() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{name} did not refresh {other}'s bundle: {st}\n{}", s.log());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The topology and SPIRE's `ghostunnel-federation` steps: two trust domains, each a
/// root plus a downstream tier, workloads under the downstream tiers. Each root serves the
/// bundle endpoint (upstream over `https_spiffe`, downstream over `https_web` with a test CA's
/// certificate, trusted through SSL_CERT_FILE); each downstream tier federates with the other
/// trust domain through that endpoint. The bundles are bootstrapped by hand (the suite's step
/// 02), the workload entries carry `-federatesWith` (step 04), and the proxy check (step 05)
/// is mTLS between the two workloads with nothing but Workload API material.
#[test]
fn two_trust_domains_federated_both_ways() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let (web_ca, web_cert, web_key) = web_pki(base);
    let (up_port, down_port) = (free_port(), free_port());
    // The roots serve the endpoints; upstream's CA lives 90 s, so it prepares a new root
    // during the test.
    let up_fed = format!(
        "ca_ttl = \"90s\"\ndefault_x509_svid_ttl = \"1m\"\nexperimental {{ jwt_publish_grace = \"1s\" }}\nfederation {{\n bundle_endpoint {{ address = \"127.0.0.1\" port = {up_port} refresh_hint = \"1m\" profile \"https_spiffe\" {{}} }}\n}}"
    );
    let down_fed = format!(
        "experimental {{ jwt_publish_grace = \"1s\" }}\nfederation {{\n bundle_endpoint {{ address = \"127.0.0.1\" port = {down_port} refresh_hint = \"1m\" profile \"https_web\" {{ serving_cert_file {{ cert_file_path = \"{}\" key_file_path = \"{}\" file_sync_interval = \"1s\" }} }} }}\n}}",
        web_cert.display(),
        web_key.display()
    );
    let (udir, ddir) = (base.join("up-root"), base.join("down-root"));
    std::fs::create_dir_all(&udir).unwrap();
    std::fs::create_dir_all(&ddir).unwrap();
    let up_root = TestServer::start(&udir, &ServerOpts { trust_domain: UP, extra_server: up_fed, ..ServerOpts::default() });
    let down_root = TestServer::start(&ddir, &ServerOpts { trust_domain: DOWN, extra_server: down_fed, ..ServerOpts::default() });
    assert!(up_root.log().contains("Serving bundle endpoint") && down_root.log().contains("Serving bundle endpoint"));

    // The downstream tiers: upstream's federates with downstream over https_web; downstream's
    // with upstream over https_spiffe (the suite's form of the key: spiffe://...).
    let region_tiers = "default_x509_svid_ttl = \"1m\"\nexperimental { jwt_publish_grace = \"1s\" }";
    // https_web trusts the system roots; SSL_CERT_FILE points them at the test CA.
    let (up_region, _ua) = region(
        base,
        "up-region",
        UP,
        &up_root,
        format!(
            "{region_tiers}\nfederation {{\n federates_with \"{DOWN}\" {{ bundle_endpoint_url = \"https://localhost:{down_port}\" bundle_endpoint_profile \"https_web\" {{}} }}\n}}"
        ),
        vec![("SSL_CERT_FILE".into(), web_ca.display().to_string())],
    );
    let (down_region, _da) = region(
        base,
        "down-region",
        DOWN,
        &down_root,
        format!(
            "{region_tiers}\nfederation {{\n federates_with \"spiffe://{UP}\" {{ bundle_endpoint_url = \"https://127.0.0.1:{up_port}\" bundle_endpoint_profile \"https_spiffe\" {{ endpoint_spiffe_id = \"spiffe://{UP}/spire/server\" }} }}\n}}"
        ),
        vec![],
    );

    // Step 02: bootstrap each federating tier with the other trust domain's bundle.
    let up_json = base.join("up-bundle.json");
    std::fs::write(&up_json, up_root.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let down_json = base.join("down-bundle.json");
    std::fs::write(&down_json, down_root.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    up_region.cli_ok(&["bundle", "set", "-format", "spiffe", "-id", &format!("spiffe://{DOWN}"), "-path", down_json.to_str().unwrap()]);
    down_region.cli_ok(&["bundle", "set", "-format", "spiffe", "-id", &format!("spiffe://{UP}"), "-path", up_json.to_str().unwrap()]);

    // The refreshers reach the other trust domain's endpoint (https_web one way, https_spiffe
    // the other) and report it in status.json.
    wait_refreshed("up-region", &up_region, DOWN);
    wait_refreshed("down-region", &down_region, UP);

    // Step 04: workloads under the downstream tiers that federate with the other side.
    let up_agent = agent_with_workload(base, "up-agent", &up_region, UP, &format!("spiffe://{UP}/upstream-workload"), DOWN);
    let down_agent = agent_with_workload(base, "down-agent", &down_region, DOWN, &format!("spiffe://{DOWN}/downstream-workload"), UP);
    let fetch = |a: &TestAgent, dir: &str| {
        let d = base.join(dir);
        let out = a.api(&["fetch", "x509", "-write", d.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(d.join("federated_bundle.0.0.pem").exists(), "no federated bundle from the Workload API in {}", d.display());
        d
    };
    let up_mat = fetch(&up_agent, "up-material");
    let down_mat = fetch(&down_agent, "down-material");
    // The federated bundle each workload got is the other trust domain's.
    assert_eq!(
        std::fs::read_to_string(up_mat.join("federated_bundle.0.0.pem")).unwrap().trim(),
        down_root.cli_ok(&["bundle", "show"]).trim()
    );
    assert_eq!(
        std::fs::read_to_string(down_mat.join("federated_bundle.0.0.pem")).unwrap().trim(),
        up_root.cli_ok(&["bundle", "show"]).trim()
    );
    // Step 05: the proxy check.
    proxy_check(base, &up_mat, &down_mat);

    // Beyond the suite: a JWT-SVID minted under one trust domain's downstream tier validates
    // at the other's agent (its key went up to its root, out through the root's endpoint, to
    // the other trust domain's downstream tier and agent).
    let out = down_agent.api(&["fetch", "jwt", "-audience", "orders"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let token = text.lines().skip_while(|l| !l.starts_with("token(")).nth(1).unwrap().trim().to_owned();
    wait_until("downstream's JWT-SVID to validate at the upstream agent", Duration::from_secs(40), || {
        let out = up_agent.api(&["validate", "jwt", "-audience", "orders", "-svid", &token]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&format!("spiffe://{DOWN}/downstream-workload"))
    });

    // A new root at upstream (its 90 s CA prepares the next at 45 s) reaches downstream's
    // workload through the bundle endpoint, with no `bundle set`.
    let roots_now = up_root.cli_ok(&["bundle", "show"]).matches("BEGIN CERTIFICATE").count();
    wait_until("a second root at upstream", Duration::from_secs(60), || {
        up_root.cli_ok(&["bundle", "show"]).matches("BEGIN CERTIFICATE").count() > roots_now
    });
    let want = up_root.cli_ok(&["bundle", "show"]);
    wait_until("upstream's new root in downstream's workload's federated bundle", Duration::from_secs(40), || {
        let d = base.join("down-material-2");
        let _ = std::fs::remove_dir_all(&d);
        let out = down_agent.api(&["fetch", "x509", "-write", d.to_str().unwrap()]);
        out.status.success() && std::fs::read_to_string(d.join("federated_bundle.0.0.pem")).unwrap_or_default().trim() == want.trim()
    });
}

/// A real JWKS consumer: OpenBao's JWT auth method, pointed at the root tier's OIDC discovery
/// (plain HTTP on loopback) with `jwks_url` and with `oidc_discovery_url`, accepts a JWT-SVID
/// minted under a downstream tier, refuses one signed by a key the trust domain does not have,
/// and accepts one under the downstream's rotated key without being reconfigured.
#[test]
fn openbao_jwt_auth_accepts_jwt_svids_through_cairns_jwks() {
    use crate::nested::{downstream_setup, jwt_kids, own_kid, wait_until as wait};
    require("python3");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let bao = common::openbao::OpenBao::dev(base);
    let oidc_port = free_port();
    let issuer = format!("http://127.0.0.1:{oidc_port}");
    let rdir = base.join("root");
    std::fs::create_dir_all(&rdir).unwrap();
    let root = TestServer::start(
        &rdir,
        &ServerOpts {
            extra_server: format!(
                "jwt_issuer = \"{issuer}\"\noidc_discovery {{ address = \"127.0.0.1\" port = {oidc_port} insecure_http = true }}\nexperimental {{ jwt_publish_grace = \"1s\" ca_rotation_interval = \"1s\" }}"
            ),
            ..ServerOpts::default()
        },
    );
    assert!(root.log().contains("Serving OIDC discovery"), "{}", root.log());
    // region1's CA and JWT key live 40 s, so the key rotates during the test. It serves a
    // bundle endpoint too: any tier can, as each holds the whole trust domain's bundle.
    let r1_endpoint = free_port();
    let (o1, _ua) = downstream_setup(
        base,
        "region1",
        &root,
        &format!(
            "ca_ttl = \"40s\"\n default_x509_svid_ttl = \"10s\"\n default_jwt_svid_ttl = \"10s\"\n experimental {{ jwt_publish_grace = \"1s\" ca_rotation_interval = \"1s\" }}\n federation {{ bundle_endpoint {{ address = \"127.0.0.1\" port = {r1_endpoint} profile \"https_spiffe\" {{}} }} }}"
        ),
    );
    let r1 = TestServer::start(&base.join("region1"), &o1);
    let k1 = own_kid(&r1);
    wait("region1's JWT key at the root", Duration::from_secs(30), || jwt_kids(&root).contains(&k1));
    // region1's endpoint serves the root's keys and its own: the whole bundle (read with curl;
    // https_spiffe authentication is checked in the two-trust-domain test).
    wait("region1's bundle endpoint to serve every JWT key", Duration::from_secs(30), || {
        let out = Command::new("curl").args(["-sk", "--max-time", "5", &format!("https://127.0.0.1:{r1_endpoint}/")]).output().unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let served: Vec<&str> = doc["keys"].as_array().map(|k| k.iter().filter_map(|k| k["kid"].as_str()).collect()).unwrap_or_default();
        let roots = doc["keys"].as_array().map_or(0, |k| k.iter().filter(|k| k["use"] == "x509-svid").count());
        jwt_kids(&root).iter().all(|k| served.contains(&k.as_str()))
            && roots == root.cli_ok(&["bundle", "show"]).matches("BEGIN CERTIFICATE").count()
    });

    bao.bao(&["auth", "enable", "jwt"]);
    bao.bao(&["write", "auth/jwt/config", &format!("jwks_url={issuer}/keys")]);
    let role = |mount: &str, sub: &str| {
        let bound = format!("bound_subject={sub}");
        let path = format!("auth/{mount}/role/workload");
        bao.bao(&[
            "write",
            &path,
            "role_type=jwt",
            "user_claim=sub",
            "bound_audiences=spire-test",
            &bound,
            "token_policies=default",
            "token_ttl=10m",
        ]);
    };
    role("jwt", "spiffe://example.org/region1/web");
    let svid = r1.cli_ok(&["jwt", "mint", "-spiffeID", "spiffe://example.org/region1/web", "-audience", "spire-test"]).trim().to_owned();
    let login = |mount: &str, jwt: &str| {
        let out = Command::new(common::openbao::bao_bin())
            .args(["write", "-format=json", &format!("auth/{mount}/login"), "role=workload", &format!("jwt={jwt}")])
            .env("BAO_ADDR", &bao.addr)
            .env_remove("BAO_TOKEN")
            .env("HOME", base)
            .output()
            .unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (ok, out) = login("jwt", &svid);
    assert!(ok && out.contains("client_token"), "OpenBao refused region1's JWT-SVID: {out}");

    // Signed by a key the trust domain does not have: refused.
    let forged = Command::new("python3")
        .arg("-c")
        .arg(
            "import jwt, time, sys\nfrom cryptography.hazmat.primitives.asymmetric import ec\nk = ec.generate_private_key(ec.SECP256R1())\nnow = int(time.time())\nprint(jwt.encode({'sub': 'spiffe://example.org/region1/web', 'aud': 'spire-test', 'iat': now, 'exp': now + 300}, k, algorithm='ES256', headers={'kid': sys.argv[1]}))",
        )
        .arg(&k1)
        .output()
        .unwrap();
    assert!(forged.status.success(), "{}", String::from_utf8_lossy(&forged.stderr));
    let forged = String::from_utf8_lossy(&forged.stdout).trim().to_owned();
    let (ok, out) = login("jwt", &forged);
    assert!(!ok && out.contains("signature"), "OpenBao accepted a forged JWT-SVID: {out}");

    // region1's key rotates; a JWT-SVID under the new key is accepted with OpenBao's config
    // unchanged (it fetches the JWKS again for a key ID it has not seen).
    wait("region1's JWT key to rotate", Duration::from_secs(90), || own_kid(&r1) != k1);
    let k2 = own_kid(&r1);
    wait("region1's new JWT key at the root", Duration::from_secs(30), || jwt_kids(&root).contains(&k2));
    let svid = r1.cli_ok(&["jwt", "mint", "-spiffeID", "spiffe://example.org/region1/web", "-audience", "spire-test"]).trim().to_owned();
    let header: serde_json::Value = {
        use base64::Engine as _;
        let h = svid.split('.').next().unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
    };
    assert_eq!(header["kid"], k2.as_str(), "the new JWT-SVID is signed with the rotated key");
    let (ok, out) = login("jwt", &svid);
    assert!(ok && out.contains("client_token"), "OpenBao refused a JWT-SVID under region1's rotated key: {out}");

    // OIDC discovery mode: OpenBao fetches the discovery document, whose issuer must equal the
    // configured URL byte for byte, then the JWKS it names.
    bao.bao(&["auth", "enable", "-path=jwt-oidc", "jwt"]);
    bao.bao(&["write", "auth/jwt-oidc/config", &format!("oidc_discovery_url={issuer}"), &format!("bound_issuer={issuer}")]);
    role("jwt-oidc", "spiffe://example.org/hq/api");
    let svid = root.cli_ok(&["jwt", "mint", "-spiffeID", "spiffe://example.org/hq/api", "-audience", "spire-test"]).trim().to_owned();
    let (ok, out) = login("jwt-oidc", &svid);
    assert!(ok && out.contains("client_token"), "OpenBao (discovery mode) refused the root's JWT-SVID: {out}");
}

/// SPIRE's `federation` verbs against cairn (spire-server `cli/federation`): a relationship
/// created with a bootstrap bundle through the Trust Domain API is refreshed on demand and by
/// the background refresher, shown, listed (text and JSON), updated (every field replaced),
/// and deleted without its bundle; refusals give SPIRE's messages and change nothing.
#[test]
fn federation_relationships_through_the_trust_domain_api() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let b_port = free_port();
    let (adir, bdir) = (base.join("a"), base.join("b"));
    std::fs::create_dir_all(&adir).unwrap();
    std::fs::create_dir_all(&bdir).unwrap();
    let b_fed = format!(
        "federation {{\n bundle_endpoint {{ address = \"127.0.0.1\" port = {b_port} refresh_hint = \"1m\" profile \"https_spiffe\" {{}} }}\n}}"
    );
    let a = TestServer::start(&adir, &ServerOpts { trust_domain: UP, ..ServerOpts::default() });
    let b = TestServer::start(&bdir, &ServerOpts { trust_domain: DOWN, extra_server: b_fed, ..ServerOpts::default() });
    let url = format!("https://127.0.0.1:{b_port}");
    let endpoint_id = format!("spiffe://{DOWN}/spire/server");
    let b_pem = base.join("b.pem");
    std::fs::write(&b_pem, b.cli_ok(&["bundle", "show"])).unwrap();

    assert_eq!(a.cli_ok(&["federation", "list"]).trim(), "Found 0 federation relationships");
    let create = [
        "federation",
        "create",
        "-trustDomain",
        DOWN,
        "-bundleEndpointURL",
        &url,
        "-bundleEndpointProfile",
        "https_spiffe",
        "-endpointSpiffeID",
        &endpoint_id,
        "-trustDomainBundlePath",
        b_pem.to_str().unwrap(),
        "-trustDomainBundleFormat",
        "pem",
    ];
    let block = format!(
        "Trust domain              : {DOWN}\nBundle endpoint URL       : {url}\nBundle endpoint profile   : https_spiffe\nEndpoint SPIFFE ID        : {endpoint_id}\n"
    );
    assert_eq!(a.cli_ok(&create), format!("\n{block}"));
    // The bootstrap bundle came with it (the refresher may already have replaced it with the
    // endpoint's, which it could only fetch by authenticating B with the bootstrap roots).
    assert!(a.cli_ok(&["bundle", "list", "-id", &format!("spiffe://{DOWN}")]).contains("BEGIN CERTIFICATE"));

    // A duplicate: SPIRE's report, on stderr, and exit 1.
    let dup = a.cli(&create);
    let err = String::from_utf8_lossy(&dup.stderr);
    assert!(!dup.status.success());
    assert!(err.contains("Failed to create the following federation relationship (code: Internal"), "{err}");
    assert!(err.contains("Error: failed to create one or more federation relationships"), "{err}");
    // Its own trust domain, and flags the CLI refuses before any call.
    let own =
        a.cli(&["federation", "create", "-trustDomain", UP, "-bundleEndpointURL", "https://x.test", "-bundleEndpointProfile", "https_web"]);
    assert!(String::from_utf8_lossy(&own.stderr).contains("unable to create federation relationship for server trust domain"));
    let no_id = a.cli(&[
        "federation",
        "create",
        "-trustDomain",
        "c.test",
        "-bundleEndpointURL",
        "https://c.test",
        "-bundleEndpointProfile",
        "https_spiffe",
    ]);
    assert!(String::from_utf8_lossy(&no_id.stderr).contains("endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is set"));
    let http = a.cli(&[
        "federation",
        "create",
        "-trustDomain",
        "c.test",
        "-bundleEndpointURL",
        "http://c.test",
        "-bundleEndpointProfile",
        "https_web",
    ]);
    assert!(String::from_utf8_lossy(&http.stderr).contains("bundle endpoint URL must use the https scheme"), "{http:?}");
    assert!(a.cli_ok(&["federation", "list"]).starts_with("Found 1 federation relationship\n"));

    // Show, and an on-demand refresh: B's whole bundle (with its JWT key) is now A's copy.
    assert_eq!(
        a.cli_ok(&["federation", "show", "-trustDomain", DOWN]),
        format!("Found a federation relationship with trust domain {DOWN}:\n\n{block}")
    );
    assert_eq!(a.cli_ok(&["federation", "refresh", "-id", DOWN]).trim(), "Bundle refreshed");
    let held = a.cli_ok(&["bundle", "list", "-id", &format!("spiffe://{DOWN}"), "-format", "spiffe"]);
    assert!(held.contains("jwt-svid"), "{held}");
    let unknown = a.cli(&["federation", "refresh", "-id", "unknown.test"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("there is no federation relationship with trust domain \"unknown.test\""));
    // The background refresher picked the relationship up too (status.json, tiers status).
    wait_until("the stored relationship in status.json", Duration::from_secs(20), || {
        let st = federation_status(&a);
        st[0]["trust_domain"] == DOWN && st[0]["last_refresh"].as_i64().unwrap_or(0) > 0
    });

    // JSON output for scripts.
    let json: serde_json::Value = serde_json::from_str(&a.cli_ok(&["federation", "list", "-output", "json"])).unwrap();
    assert_eq!(json["federation_relationships"][0]["https_spiffe"]["endpoint_spiffe_id"], endpoint_id.as_str());

    // Update replaces every field: now https_web at a URL where nothing answers; refreshing
    // fails with the reason and the stored bundle stays.
    let dead = format!("https://127.0.0.1:{}", free_port());
    a.cli_ok(&["federation", "update", "-trustDomain", DOWN, "-bundleEndpointURL", &dead, "-bundleEndpointProfile", "https_web"]);
    assert!(a.cli_ok(&["federation", "show", "-trustDomain", DOWN]).contains("Bundle endpoint profile   : https_web\n"));
    let failed = a.cli(&["federation", "refresh", "-id", DOWN]);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && err.contains("failed to refresh bundle") && err.contains(&dead), "{err}");
    assert_eq!(a.cli_ok(&["bundle", "list", "-id", &format!("spiffe://{DOWN}"), "-format", "spiffe"]), held);

    // Delete keeps the bundle; the relationship is gone for every verb.
    assert_eq!(a.cli_ok(&["federation", "delete", "-id", DOWN]).trim(), "federation relationship deleted.");
    assert_eq!(a.cli_ok(&["federation", "list"]).trim(), "Found 0 federation relationships");
    assert!(a.cli_ok(&["bundle", "list", "-id", &format!("spiffe://{DOWN}")]).contains("BEGIN CERTIFICATE"));
    let again = a.cli(&["federation", "delete", "-id", DOWN]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("federation relationship not found"));
    let shown = a.cli(&["federation", "show", "-trustDomain", DOWN]);
    assert!(String::from_utf8_lossy(&shown.stderr).contains("federation relationship does not exist"));
    wait_until("the deleted relationship out of status.json", Duration::from_secs(20), || {
        federation_status(&a).as_array().is_some_and(Vec::is_empty)
    });

    // `-data` files in SPIRE's JSON shape, with an inline SPIFFE bundle.
    let spiffe_bundle: serde_json::Value = serde_json::from_str(&b.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let data = serde_json::json!({"federationRelationships": [{
        "trustDomain": DOWN, "bundleEndpointURL": url, "bundleEndpointProfile": "https_spiffe",
        "endpointSPIFFEID": endpoint_id, "trustDomainBundle": spiffe_bundle, "trustDomainBundleFormat": "spiffe"
    }]});
    let data_path = base.join("rels.json");
    std::fs::write(&data_path, data.to_string()).unwrap();
    assert_eq!(a.cli_ok(&["federation", "create", "-data", data_path.to_str().unwrap()]), format!("\n{block}"));
    assert_eq!(a.cli_ok(&["federation", "refresh", "-id", DOWN]).trim(), "Bundle refreshed");
}

/// pebble, Let's Encrypt's ACME test server, on loopback: HTTPS with the test CA's
/// certificate, validating `tls-alpn-01` on `tls_port` (the bundle endpoint's port).
struct Pebble {
    _proc: Reap,
    directory: String,
    management: u16,
}

fn start_pebble(dir: &Path, cert: &Path, key: &Path, tls_port: u16) -> Pebble {
    require("pebble");
    let (acme, management) = (free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": cert, "privateKey": key,
        "httpPort": free_port(), "tlsPort": tls_port,
        "ocspResponderURL": "", "externalAccountBindingRequired": false
    }});
    let path = dir.join("pebble.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
    let child = Command::new("pebble")
        .arg("-config")
        .arg(&path)
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let p = Pebble { _proc: Reap(Some(child)), directory: format!("https://localhost:{acme}/dir"), management };
    wait_until("pebble to listen", Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", management)).is_ok());
    p
}

/// `curl` (an independent TLS client) trusting only `ca`: the body, or None on any failure.
fn curl(url: &str, ca: &Path) -> Option<String> {
    let out = Command::new("curl").args(["-sS", "--fail", "--max-time", "10", "--cacert"]).arg(ca).arg(url).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The SHA-256 fingerprint of the certificate `port` serves for `localhost`.
fn served_fingerprint(base: &Path, port: u16) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let pem = base.join("served.pem");
    std::fs::write(&pem, &out.stdout).unwrap();
    openssl_x509(&pem, &["-noout", "-fingerprint", "-sha256"])
}

/// SPIRE's `profile "https_web" { acme { ... } }` against a real ACME server: the bundle
/// endpoint gets its certificate from pebble by answering `tls-alpn-01` itself; a partner
/// trusting only pebble's root federates with it over `https_web`; a restart serves the cached
/// certificate without a new order; with `tos_accepted = false` nothing is ordered and the log
/// says why.
#[test]
fn acme_certificate_for_the_bundle_endpoint_from_pebble() {
    require("openssl");
    require("curl");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let (web_ca, web_cert, web_key) = web_pki(base);
    let b_port = free_port();
    let pebble = start_pebble(base, &web_cert, &web_key, b_port);
    let acme = |tos: bool| {
        format!(
            "federation {{\n bundle_endpoint {{ address = \"127.0.0.1\" port = {b_port} refresh_hint = \"1m\" profile \"https_web\" {{ acme {{ domain_name = \"localhost\" directory_url = \"{}\" email = \"ops@example.org\" tos_accepted = {tos} }} }} }}\n}}",
            pebble.directory
        )
    };
    // pebble's directory is served with the test CA's certificate.
    let ca_env = vec![("SSL_CERT_FILE".to_owned(), web_ca.display().to_string())];

    // Terms not accepted: the endpoint serves no certificate and the log says why.
    let ndir = base.join("no-tos");
    std::fs::create_dir_all(&ndir).unwrap();
    let mut refused = TestServer::start(
        &ndir,
        &ServerOpts { trust_domain: DOWN, extra_server: acme(false), env: ca_env.clone(), ..ServerOpts::default() },
    );
    wait_until("the terms-of-service refusal in the log", Duration::from_secs(10), || {
        refused.log().contains("Terms of Service have not been accepted")
    });
    assert!(!refused.log().contains("Created an ACME account"), "nothing may be sent to the ACME server");
    refused.stop();

    let bdir = base.join("b");
    std::fs::create_dir_all(&bdir).unwrap();
    let mut b =
        TestServer::start(&bdir, &ServerOpts { trust_domain: DOWN, extra_server: acme(true), env: ca_env, ..ServerOpts::default() });
    wait_until("an ACME certificate", Duration::from_secs(60), || b.log().contains("Obtained a bundle endpoint certificate"));
    for f in ["account.json", "key.pem", "cert.pem"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(bdir.join("bundle-acme").join(f)).unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
    }

    // An independent client trusting only pebble's root gets B's bundle from the endpoint.
    let root = curl(&format!("https://localhost:{}/roots/0", pebble.management), &web_ca).expect("pebble's root");
    let pebble_root = base.join("pebble-root.pem");
    std::fs::write(&pebble_root, root).unwrap();
    let served = curl(&format!("https://localhost:{b_port}/"), &pebble_root).expect("the bundle over the ACME certificate");
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert!(doc["keys"].as_array().is_some_and(|k| !k.is_empty()), "{served}");
    assert!(curl(&format!("https://localhost:{b_port}/"), &web_ca).is_none(), "the endpoint must not present the test CA's certificate");

    // A federation partner trusting pebble's root (SSL_CERT_FILE) refreshes B's bundle.
    let adir = base.join("a");
    std::fs::create_dir_all(&adir).unwrap();
    let a_fed = format!(
        "federation {{\n federates_with \"{DOWN}\" {{ bundle_endpoint_url = \"https://localhost:{b_port}\" bundle_endpoint_profile \"https_web\" {{}} }}\n}}"
    );
    let a = TestServer::start(
        &adir,
        &ServerOpts {
            trust_domain: UP,
            extra_server: a_fed,
            env: vec![("SSL_CERT_FILE".into(), pebble_root.display().to_string())],
            ..ServerOpts::default()
        },
    );
    wait_until("A to refresh B's bundle over https_web", Duration::from_secs(30), || {
        let st = federation_status(&a);
        st[0]["last_refresh"].as_i64().unwrap_or(0) > 0 && st[0]["last_error"].is_null()
    });
    assert_eq!(a.cli_ok(&["bundle", "list", "-id", &format!("spiffe://{DOWN}")]).trim(), b.cli_ok(&["bundle", "show"]).trim());

    // A restart serves the cached certificate: same fingerprint, no new order.
    let before = served_fingerprint(base, b_port);
    b.stop();
    b.spawn();
    wait_until("the cached certificate to load", Duration::from_secs(10), || b.log().contains("Loaded the cached ACME certificate"));
    assert_eq!(served_fingerprint(base, b_port), before);
    assert_eq!(b.log().matches("Obtained a bundle endpoint certificate").count(), 1, "no new order after a restart");
}
