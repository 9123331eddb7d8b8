#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! `cairn agent ...` as a separate process against a fake Workload API served in this test
//! process (tonic on a Unix socket in a temp dir), plus `validate` on config files. The fake
//! answers only requests that carry `workload.spiffe.io: true`, so every passing command also
//! proves the header is sent. Files the CLI writes are checked with openssl.

use crate::common;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use cairn::spiffe::{Bundle, JwtAlg, JwtAuthority, TrustDomain};
use cairn::wire::pb::grpc::health::v1 as healthpb;
use cairn::wire::pb::workload as wl;
use common::{CAIRN, require};
use rcgen::string::Ia5String;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

const WORKLOAD_ID: &str = "spiffe://example.org/workload";

fn uri(s: &str) -> SanType {
    SanType::URI(Ia5String::try_from(s).unwrap())
}

fn ca(td: &str) -> (CertificateParams, KeyPair, Vec<u8>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, format!("{td} root"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![uri(&format!("spiffe://{td}"))];
    let der = params.self_signed(&key).unwrap().der().to_vec();
    (params, key, der)
}

/// Canned Workload API material: one SVID, its bundle, a federated bundle, a JWT key.
struct Material {
    x509: wl::X509svidResponse,
    jwt_key: EcdsaKeyPair,
    jwt_bundle: Bundle,
}

impl Material {
    fn new() -> Self {
        let (ca_params, ca_key, ca_der) = ca("example.org");
        let (_, _, other_der) = ca("other.org");
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut leaf = CertificateParams::default();
        leaf.distinguished_name.push(DnType::CommonName, "workload");
        leaf.subject_alt_names = vec![uri(WORKLOAD_ID)];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment, KeyUsagePurpose::KeyAgreement];
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf_der = leaf.signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key)).unwrap().der().to_vec();
        let x509 = wl::X509svidResponse {
            svids: vec![wl::X509svid {
                spiffe_id: WORKLOAD_ID.into(),
                x509_svid: leaf_der,
                x509_svid_key: leaf_key.serialize_der(),
                bundle: ca_der,
                hint: "internal".into(),
            }],
            crl: vec![],
            federated_bundles: [("spiffe://other.org".to_owned(), other_der)].into_iter().collect(),
        };
        let jwt_rc = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let jwt_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &jwt_rc.serialize_der()).unwrap();
        let mut jwt_bundle = Bundle::new(TrustDomain::new("example.org").unwrap());
        jwt_bundle.jwt_authorities.push(JwtAuthority {
            key_id: "k1".into(),
            public_key: rcgen::PublicKeyData::subject_public_key_info(&jwt_rc),
            expires_at: 0,
            tainted: false,
        });
        Self { x509, jwt_key, jwt_bundle }
    }

    fn token(&self, audience: &[String]) -> String {
        let now = cairn::now_unix();
        let claims = serde_json::json!({"sub": WORKLOAD_ID, "aud": audience, "exp": now + 300, "iat": now});
        let input = cairn::spiffe::signing_input(JwtAlg::ES256, "k1", &claims);
        let sig = self.jwt_key.sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes()).unwrap();
        cairn::spiffe::assemble(&input, sig.as_ref())
    }
}

#[derive(Clone, Copy, Default)]
struct FakeOpts {
    /// Serve grpc.health.v1 with this status.
    health: Option<healthpb::health_check_response::ServingStatus>,
    /// FetchX509SVID answers PermissionDenied (a caller with no identity).
    x509_denied: bool,
}

#[derive(Clone)]
struct Fake {
    m: Arc<Material>,
    opts: FakeOpts,
}

fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    let vals: Vec<_> = req.metadata().get_all("workload.spiffe.io").iter().collect();
    match vals.as_slice() {
        [v] if v.to_str().is_ok_and(|v| v == "true") => Ok(()),
        _ => Err(Status::invalid_argument("security header missing from request")),
    }
}

type Stream2<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// One message, then the stream stays open (as a real agent's does).
fn once_then_open<T: Send + 'static>(v: T) -> Stream2<T> {
    Box::pin(tokio_stream::once(Ok(v)).chain(tokio_stream::pending()))
}

#[tonic::async_trait]
impl wl::spiffe_workload_api_server::SpiffeWorkloadApi for Fake {
    type FetchX509SVIDStream = Stream2<wl::X509svidResponse>;
    type FetchX509BundlesStream = Stream2<wl::X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream2<wl::JwtBundlesResponse>;
    type FetchWITSVIDStream = Stream2<wl::WitsvidResponse>;
    type FetchWITBundlesStream = Stream2<wl::WitBundlesResponse>;

    async fn fetch_x509svid(&self, req: Request<wl::X509svidRequest>) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&req)?;
        if self.opts.x509_denied {
            return Err(Status::permission_denied("no identity issued"));
        }
        Ok(Response::new(once_then_open(self.m.x509.clone())))
    }

    async fn fetch_x509_bundles(&self, req: Request<wl::X509BundlesRequest>) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&req)?;
        let svid = self.m.x509.svids.first().cloned().unwrap_or_default();
        Ok(Response::new(once_then_open(wl::X509BundlesResponse {
            crl: vec![],
            bundles: [("spiffe://example.org".to_owned(), svid.bundle)].into_iter().collect(),
        })))
    }

    async fn fetch_jwtsvid(&self, req: Request<wl::JwtsvidRequest>) -> Result<Response<wl::JwtsvidResponse>, Status> {
        check_header(&req)?;
        let r = req.into_inner();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.audience.iter().any(|a| a == "slow") {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        if !r.spiffe_id.is_empty() && r.spiffe_id != WORKLOAD_ID {
            return Err(Status::permission_denied("no identity issued"));
        }
        Ok(Response::new(wl::JwtsvidResponse {
            svids: vec![wl::Jwtsvid { spiffe_id: WORKLOAD_ID.into(), svid: self.m.token(&r.audience), hint: String::new() }],
        }))
    }

    async fn fetch_jwt_bundles(&self, req: Request<wl::JwtBundlesRequest>) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&req)?;
        Ok(Response::new(once_then_open(wl::JwtBundlesResponse {
            bundles: [("spiffe://example.org".to_owned(), self.m.jwt_bundle.jwt_jwks_json().into_bytes())].into_iter().collect(),
        })))
    }

    async fn validate_jwtsvid(&self, req: Request<wl::ValidateJwtsvidRequest>) -> Result<Response<wl::ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        let r = req.into_inner();
        let bundles = [self.m.jwt_bundle.clone()];
        let claims =
            cairn::spiffe::validate_jwt_svid(&r.svid, &[r.audience.as_str()], cairn::now_unix(), cairn::spiffe::bundle_keys(&bundles))
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let to_value = |v: &serde_json::Value| -> prost_types::Value {
            use prost_types::value::Kind;
            let kind = match v {
                serde_json::Value::String(s) => Kind::StringValue(s.clone()),
                serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
                serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                    values: a
                        .iter()
                        .map(|s| prost_types::Value { kind: Some(Kind::StringValue(s.as_str().unwrap_or_default().to_owned())) })
                        .collect(),
                }),
                other => Kind::StringValue(other.to_string()),
            };
            prost_types::Value { kind: Some(kind) }
        };
        Ok(Response::new(wl::ValidateJwtsvidResponse {
            spiffe_id: claims.subject.as_str().to_owned(),
            claims: Some(prost_types::Struct { fields: claims.raw.iter().map(|(k, v)| (k.clone(), to_value(v))).collect() }),
        }))
    }

    async fn fetch_witsvid(&self, _req: Request<wl::WitsvidRequest>) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented("WIT-SVIDs are not supported"))
    }

    async fn fetch_wit_bundles(&self, _req: Request<wl::WitBundlesRequest>) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("WIT-SVIDs are not supported"))
    }
}

struct FakeHealth(healthpb::health_check_response::ServingStatus);

#[tonic::async_trait]
impl healthpb::health_server::Health for FakeHealth {
    async fn check(&self, _req: Request<healthpb::HealthCheckRequest>) -> Result<Response<healthpb::HealthCheckResponse>, Status> {
        Ok(Response::new(healthpb::HealthCheckResponse { status: self.0.into() }))
    }
}

/// A fake agent: the Workload API on `socket`, served by its own runtime until dropped.
struct FakeAgent {
    dir: tempfile::TempDir,
    socket: PathBuf,
    _rt: tokio::runtime::Runtime,
}

impl FakeAgent {
    fn start(opts: FakeOpts) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = {
            let _g = rt.enter();
            tokio::net::UnixListener::bind(&socket).unwrap()
        };
        let fake = Fake { m: Arc::new(Material::new()), opts };
        rt.spawn(async move {
            let mut routes = tonic::service::Routes::new(wl::spiffe_workload_api_server::SpiffeWorkloadApiServer::new(fake));
            if let Some(status) = opts.health {
                routes = routes.add_service(healthpb::health_server::HealthServer::new(FakeHealth(status)));
            }
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self { dir, socket, _rt: rt }
    }

    fn sock(&self) -> &str {
        self.socket.to_str().unwrap()
    }
}

fn cairn(args: &[&str]) -> Output {
    Command::new(CAIRN).args(args).env_remove("SPIRE_AGENT_PUBLIC_SOCKET").output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn ok(args: &[&str]) -> String {
    let o = cairn(args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "cairn {args:?} failed:\nstdout:\n{out}\nstderr:\n{err}");
    out
}

fn fails(args: &[&str]) -> String {
    let o = cairn(args);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "cairn {args:?} should fail with 1:\nstdout:\n{out}\nstderr:\n{err}");
    err
}

fn openssl(args: &[&str]) -> String {
    let o = Command::new("openssl").args(args).output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "openssl {args:?} failed: {out}{err}");
    out
}

/// A `spire-agent` link to the binary in `dir`.
fn spire_agent_link(dir: &Path) -> PathBuf {
    let link = dir.join("spire-agent");
    std::os::unix::fs::symlink(CAIRN, &link).unwrap();
    link
}

#[test]
fn fetch_x509_prints_and_writes_like_spire() {
    require("openssl");
    let agent = FakeAgent::start(FakeOpts::default());
    let out_dir = agent.dir.path().join("out");
    let out_str = out_dir.to_str().unwrap();
    let out = ok(&["agent", "api", "fetch", "x509", "-socketPath", agent.sock(), "-write", out_str]);
    assert!(out.starts_with("Received 1 svid after "), "{out}");
    for want in [
        &format!("\nSPIFFE ID:\t\t{WORKLOAD_ID}\n"),
        "\nHint:\t\t\tinternal\n",
        "\nSVID Valid After:\t",
        "\nSVID Valid Until:\t",
        "\nCA #1 Valid After:\t",
        "\nCA #1 Valid Until:\t",
        "\n[spiffe://other.org] CA #1 Valid After:\t",
        " +0000 UTC\n",
        &format!("Writing SVID #0 to file {out_str}/svid.0.pem.\n"),
        &format!("Writing key #0 to file {out_str}/svid.0.key.\n"),
        &format!("Writing bundle #0 to file {out_str}/bundle.0.pem.\n"),
        &format!("Writing federated bundle #0 for trust domain spiffe://other.org to file {out_str}/federated_bundle.0.0.pem.\n"),
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let file = |n: &str| out_dir.join(n);
    let key_mode = std::fs::metadata(file("svid.0.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600, "the private key must be 0600");
    for n in ["svid.0.pem", "bundle.0.pem", "federated_bundle.0.0.pem"] {
        let pem_text = std::fs::read_to_string(file(n)).unwrap();
        let certs = cairn::spiffe::parse_pem_certs(&pem_text).unwrap();
        assert_eq!(certs.len(), 1, "{n}");
    }
    let svid = file("svid.0.pem");
    let verify = openssl(&["verify", "-CAfile", file("bundle.0.pem").to_str().unwrap(), svid.to_str().unwrap()]);
    assert!(verify.contains(": OK"), "{verify}");
    // The key is the SVID's key.
    let cert_pub = openssl(&["x509", "-in", svid.to_str().unwrap(), "-noout", "-pubkey"]);
    let key_pub = openssl(&["pkey", "-in", file("svid.0.key").to_str().unwrap(), "-pubout"]);
    assert_eq!(cert_pub, key_pub);
    let san = openssl(&["x509", "-in", svid.to_str().unwrap(), "-noout", "-ext", "subjectAltName"]);
    assert!(san.contains(&format!("URI:{WORKLOAD_ID}")), "{san}");

    // `api fetch` without a kind is `api fetch x509`; -silent prints no SVID summary.
    let out = ok(&["agent", "api", "fetch", "-socketPath", agent.sock()]);
    assert!(out.contains(WORKLOAD_ID), "{out}");
    let out = ok(&["agent", "api", "fetch", "x509", "-socketPath", agent.sock(), "-silent"]);
    assert_eq!(out, "");
    // JSON: SPIRE's protojson shape.
    let out = ok(&["agent", "api", "fetch", "x509", "-socketPath", agent.sock(), "-output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["svids"][0]["spiffe_id"], WORKLOAD_ID);
    assert_eq!(v["svids"][0]["hint"], "internal");
    assert!(v["federated_bundles"]["spiffe://other.org"].is_string() && v["crl"].is_array(), "{v}");
    // Through a spire-agent link.
    let link = spire_agent_link(agent.dir.path());
    let o = Command::new(&link).args(["api", "fetch", "x509", "-socketPath", agent.sock()]).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains(WORKLOAD_ID));
}

#[test]
fn fetch_and_validate_jwt() {
    let agent = FakeAgent::start(FakeOpts::default());
    let out = ok(&["agent", "api", "fetch", "jwt", "-socketPath", agent.sock(), "-audience", "a"]);
    let prefix = format!("token({WORKLOAD_ID}):\n\t");
    let token = out.strip_prefix(&prefix).and_then(|r| r.lines().next()).unwrap_or_else(|| panic!("{out}")).to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert!(out.contains("\nbundle(spiffe://example.org):\n\t{\"keys\":["), "{out}");

    let out = ok(&["agent", "api", "validate", "jwt", "-socketPath", agent.sock(), "-audience", "a", "-svid", &token]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("SVID is valid."));
    assert_eq!(lines.next(), Some(format!("SPIFFE ID : {WORKLOAD_ID}").as_str()));
    let claims_line = lines.next().unwrap();
    let claims: serde_json::Value = serde_json::from_str(claims_line.strip_prefix("Claims    : ").unwrap()).unwrap();
    assert_eq!(claims["aud"], serde_json::json!(["a"]));
    assert_eq!(claims["sub"], WORKLOAD_ID);
    assert!(claims["exp"].is_i64(), "whole numbers print without a fraction: {claims_line}");

    // JSON forms.
    let out = ok(&["agent", "api", "fetch", "jwt", "-socketPath", agent.sock(), "-audience", "a,b", "-output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["svids"][0]["spiffe_id"], WORKLOAD_ID);
    assert!(v[1]["bundles"]["spiffe://example.org"].is_string(), "{v}");
    let out = ok(&["agent", "api", "validate", "jwt", "-socketPath", agent.sock(), "-audience", "a", "-svid", &token, "-output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spiffe_id"], WORKLOAD_ID);

    // Failures, as SPIRE words them.
    let err = fails(&["agent", "api", "validate", "jwt", "-socketPath", agent.sock(), "-audience", "other", "-svid", &token]);
    assert!(err.contains("SVID is not valid: "), "{err}");
    let err = fails(&["agent", "api", "validate", "jwt", "-socketPath", agent.sock(), "-audience", "a", "-svid", "not.a.token"]);
    assert!(err.contains("SVID is not valid: "), "{err}");
    assert!(
        fails(&["agent", "api", "validate", "jwt", "-socketPath", agent.sock(), "-svid", &token]).contains("audience must be specified")
    );
    assert!(fails(&["agent", "api", "validate", "jwt", "-socketPath", agent.sock(), "-audience", "a"]).contains("svid must be specified"));
    assert!(fails(&["agent", "api", "fetch", "jwt", "-socketPath", agent.sock()]).contains("audience must be specified"));
    let err =
        fails(&["agent", "api", "fetch", "jwt", "-socketPath", agent.sock(), "-audience", "a", "-spiffeID", "spiffe://example.org/x"]);
    assert!(err.contains("rpc error: code = PermissionDenied desc = no identity issued"), "{err}");
    let err = fails(&["agent", "api", "fetch", "jwt", "-socketPath", agent.sock(), "-audience", "slow", "-timeout", "1s"]);
    assert!(err.contains("DeadlineExceeded"), "{err}");
}

#[test]
fn healthcheck_asks_the_health_service_or_probes_the_workload_api() {
    use healthpb::health_check_response::ServingStatus;
    // No health service: the Workload API answering means healthy, and so does PermissionDenied.
    for opts in [FakeOpts::default(), FakeOpts { x509_denied: true, ..FakeOpts::default() }] {
        let agent = FakeAgent::start(opts);
        let out = ok(&["agent", "healthcheck", "-socketPath", agent.sock(), "-verbose"]);
        assert!(out.starts_with("Checking agent health...\n") && out.ends_with("Agent is healthy.\n"), "{out}");
        assert_eq!(ok(&["agent", "healthcheck", "-socketPath", agent.sock(), "-shallow"]), "Agent is healthy.\n");
    }
    // A health service: its answer decides.
    let agent = FakeAgent::start(FakeOpts { health: Some(ServingStatus::Serving), x509_denied: false });
    assert_eq!(ok(&["agent", "healthcheck", "-socketPath", agent.sock()]), "Agent is healthy.\n");
    let agent = FakeAgent::start(FakeOpts { health: Some(ServingStatus::NotServing), x509_denied: false });
    let err = fails(&["agent", "healthcheck", "-socketPath", agent.sock()]);
    assert!(err.contains("Agent is unhealthy: agent returned status \"NOT_SERVING\""), "{err}");
    // Nothing listening.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let err = fails(&["agent", "healthcheck", "-socketPath", missing.to_str().unwrap()]);
    assert!(err.contains("Agent is unhealthy") && err.contains("none.sock"), "{err}");
    let err = fails(&["agent", "api", "fetch", "x509", "-socketPath", missing.to_str().unwrap()]);
    assert!(err.contains("cannot connect to the Workload API socket"), "{err}");
    // SPIRE_AGENT_PUBLIC_SOCKET is honoured when -socketPath is not given.
    let agent = FakeAgent::start(FakeOpts::default());
    let o = Command::new(CAIRN).args(["agent", "healthcheck"]).env("SPIRE_AGENT_PUBLIC_SOCKET", agent.sock()).output().unwrap();
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn watch_prints_updates_until_stopped() {
    let agent = FakeAgent::start(FakeOpts::default());
    let mut child = Command::new(CAIRN)
        .args(["agent", "api", "watch", "-socketPath", agent.sock()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("[other.org] CA #1 Valid Until:") {
                let _ = tx.send(seen.clone());
            }
        }
    });
    let seen = rx.recv_timeout(Duration::from_secs(20));
    child.kill().unwrap();
    child.wait().unwrap();
    let seen = seen.expect("no update printed within 20s");
    assert!(seen.starts_with("Received 1 svid after "), "{seen}");
    assert!(seen.contains(&format!("SPIFFE ID:\t\t{WORKLOAD_ID}")), "{seen}");
}

const GOOD_CONF: &str = r#"
agent {
    data_dir = "./.data"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "8081"
    socket_path ="/tmp/spire-agent/public/api.sock"
    trust_bundle_path = "./conf/agent/dummy_root_ca.crt"
    trust_domain = "example.org"
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {
        }
    }
    KeyManager "disk" {
        plugin_data {
            directory = "./.data"
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {
        }
    }
}
"#;

#[test]
fn validate_reports_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("agent.conf");
    std::fs::write(&good, GOOD_CONF).unwrap();
    let good_s = good.to_str().unwrap();
    assert_eq!(ok(&["agent", "validate", "-config", good_s]), "SPIRE agent configuration file is valid.\n");
    let link = spire_agent_link(dir.path());
    let o = Command::new(&link).args(["validate", "-config", good_s]).output().unwrap();
    assert!(o.status.success(), "{o:?}");

    let bad = dir.path().join("bad.conf");
    std::fs::write(
        &bad,
        GOOD_CONF
            .replace("server_address = \"127.0.0.1\"", "")
            .replace("trust_domain = \"example.org\"", "trust_domain = \"spiffe://example.org\"\n    enable_sds = true")
            .replace("directory = \"./.data\"", "keys_path = \"./k\""),
    )
    .unwrap();
    let bad_s = bad.to_str().unwrap();
    let err = fails(&["agent", "validate", "-config", bad_s]);
    for want in [
        "agent.server_address",
        "agent.trust_domain",
        "agent.enable_sds",
        "plugins.KeyManager.disk.plugin_data.keys_path",
        "plugins.KeyManager.disk.plugin_data.directory",
    ] {
        assert!(err.contains(want), "missing {want} in:\n{err}");
    }
    // Flags fill in and override the file, with SPIRE's spelling.
    let fixed = dir.path().join("fixed.conf");
    std::fs::write(&fixed, GOOD_CONF.replace("server_address = \"127.0.0.1\"", "").replace("join_token", "x509pop")).unwrap();
    let err = fails(&["agent", "validate", "-config", fixed.to_str().unwrap(), "-serverAddress", "10.0.0.1"]);
    assert!(err.contains("private_key_path") && !err.contains("server_address"), "{err}");
}

#[test]
fn run_refuses_a_bad_config_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("agent.conf");
    std::fs::write(&bad, GOOD_CONF.replace("trust_bundle_path = \"./conf/agent/dummy_root_ca.crt\"", "")).unwrap();
    let err = fails(&["agent", "run", "-config", bad.to_str().unwrap()]);
    assert!(err.contains("agent.trust_bundle_path"), "{err}");
    let err = fails(&["agent", "run", "-config", dir.path().join("missing.conf").to_str().unwrap()]);
    assert!(err.contains("please use the -config flag"), "{err}");
}
