//! The Workload API over a real Unix socket: the server runs in-process on a listener in a
//! temporary directory, fed by a fake [`WorkloadSource`] holding real certificates (rcgen) and
//! minting real JWT-SVIDs (aws-lc), and is called with the generated tonic client and, in one
//! test, with the independent Rust `spiffe` crate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "test code: a panic is a failed test")]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use prost_types::value::Kind;
use rcgen::string::Ia5String;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};
use zeroize::Zeroizing;

use super::*;
use crate::spiffe::{JwtAlg, JwtAuthority, assemble, signing_input};
use crate::wire::pb::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// How long a test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits to be reasonably sure something does not happen.
const QUIET: Duration = Duration::from_millis(300);

const OWN_TD: &str = "example.org";
const FED_TD: &str = "fed.org";
const OWN_KID: &str = "own-k1";
const FED_KID: &str = "fed-k1";

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn sel(kind: &str, value: &str) -> Selector {
    Selector { kind: kind.to_owned(), value: value.to_owned() }
}

/// The selectors the default test caller attests to.
fn caller_selectors() -> Vec<Selector> {
    vec![sel("unix", "uid:1000"), sel("unix", "gid:1000")]
}

// === PKI ===

/// Certificates and keys for two trust domains.
struct Pki {
    own_root: Vec<u8>,
    fed_root: Vec<u8>,
    /// `spiffe://example.org/web`: leaf, intermediate; federates with fed.org.
    web: Arc<X509SvidItem>,
    /// `spiffe://example.org/db`: leaf directly under the root.
    db: Arc<X509SvidItem>,
    /// `spiffe://example.org/other`: for another workload (uid 2000).
    other: Arc<X509SvidItem>,
    own_jwt: EcdsaKeyPair,
    fed_jwt: EcdsaKeyPair,
}

fn ca_params(id: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, id);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id).unwrap())];
    params
}

fn leaf_params(id: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id).unwrap())];
    params
}

fn item(
    entry_id: &str,
    id: &str,
    chain: Vec<Vec<u8>>,
    key: &KeyPair,
    selectors: Vec<Selector>,
    hint: &str,
    federates_with: &[&str],
) -> Arc<X509SvidItem> {
    Arc::new(X509SvidItem {
        entry_id: entry_id.to_owned(),
        spiffe_id: SpiffeId::new(id).unwrap(),
        selectors,
        chain,
        key_pkcs8: Arc::new(Zeroizing::new(key.serialize_der())),
        hint: hint.to_owned(),
        federates_with: federates_with.iter().map(|t| td(t)).collect(),
        not_before: crate::now_unix() - 10,
        not_after: crate::now_unix() + 3600,
        entry_expires_at: 0,
    })
}

impl Pki {
    fn new() -> Self {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("spiffe://example.org");
        let own_root = root_params.self_signed(&root_key).unwrap().der().to_vec();
        let root = Issuer::new(root_params, root_key);

        let int_key = KeyPair::generate().unwrap();
        let int_params = ca_params("spiffe://example.org");
        let intermediate = int_params.signed_by(&int_key, &root).unwrap().der().to_vec();
        let int_issuer = Issuer::new(int_params, int_key);

        let web_key = KeyPair::generate().unwrap();
        let web_leaf = leaf_params("spiffe://example.org/web").signed_by(&web_key, &int_issuer).unwrap().der().to_vec();
        let db_key = KeyPair::generate().unwrap();
        let db_leaf = leaf_params("spiffe://example.org/db").signed_by(&db_key, &root).unwrap().der().to_vec();
        let other_key = KeyPair::generate().unwrap();
        let other_leaf = leaf_params("spiffe://example.org/other").signed_by(&other_key, &root).unwrap().der().to_vec();

        let fed_key = KeyPair::generate().unwrap();
        let fed_root = ca_params("spiffe://fed.org").self_signed(&fed_key).unwrap().der().to_vec();

        Self {
            own_root,
            fed_root,
            web: item(
                "e-web",
                "spiffe://example.org/web",
                vec![web_leaf, intermediate],
                &web_key,
                vec![sel("unix", "uid:1000")],
                "web",
                &[FED_TD],
            ),
            db: item("e-db", "spiffe://example.org/db", vec![db_leaf], &db_key, caller_selectors(), "db", &[]),
            other: item(
                "e-other",
                "spiffe://example.org/other",
                vec![other_leaf],
                &other_key,
                vec![sel("unix", "uid:2000")],
                "",
                &[FED_TD],
            ),
            own_jwt: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            fed_jwt: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        }
    }

    fn own_bundle(&self) -> Bundle {
        Bundle {
            trust_domain: td(OWN_TD),
            x509_authorities: vec![self.own_root.clone()],
            jwt_authorities: vec![JwtAuthority {
                key_id: OWN_KID.to_owned(),
                public_key: spki(&self.own_jwt),
                expires_at: 0,
                tainted: false,
            }],
            refresh_hint: None,
            sequence_number: 1,
            tainted_x509: vec![],
        }
    }

    fn fed_bundle(&self) -> Bundle {
        Bundle {
            trust_domain: td(FED_TD),
            x509_authorities: vec![self.fed_root.clone()],
            jwt_authorities: vec![JwtAuthority {
                key_id: FED_KID.to_owned(),
                public_key: spki(&self.fed_jwt),
                expires_at: 0,
                tainted: false,
            }],
            refresh_hint: None,
            sequence_number: 1,
            tainted_x509: vec![],
        }
    }

    /// A snapshot with these identities, the own bundle and fed.org's.
    fn snapshot(&self, svids: &[&Arc<X509SvidItem>]) -> Option<Arc<Snapshot>> {
        Some(Arc::new(Snapshot {
            trust_domain: td(OWN_TD),
            bundle: self.own_bundle(),
            federated: BTreeMap::from([(td(FED_TD), self.fed_bundle())]),
            svids: svids.iter().map(|s| Arc::clone(s)).collect(),
            unminted: vec![],
        }))
    }

    fn all(&self) -> Option<Arc<Snapshot>> {
        self.snapshot(&[&self.web, &self.db, &self.other])
    }
}

fn spki(key: &EcdsaKeyPair) -> Vec<u8> {
    let der: PublicKeyX509Der<'static> = key.public_key().as_der().unwrap();
    der.as_ref().to_vec()
}

/// A compact ES256 JWT over `claims`.
fn sign_jwt(key: &EcdsaKeyPair, kid: &str, claims: &Value) -> String {
    let input = signing_input(JwtAlg::ES256, kid, claims);
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    assemble(&input, sig.as_ref())
}

// === fake source and server ===

/// Plays the agent's sync loop: a watch channel the test publishes on, and JWT-SVIDs minted
/// with the trust domain's JWT key.
struct FakeSource {
    pki: Arc<Pki>,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    /// `(spiffe id, audience)` of every JWT-SVID fetched.
    jwt_calls: Mutex<Vec<(String, Vec<String>)>>,
}

#[tonic::async_trait]
impl WorkloadSource for FakeSource {
    fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.tx.subscribe()
    }

    async fn fetch_jwt_svid(&self, svid: &Identity, audience: &[String]) -> Result<(String, i64), FetchJwtError> {
        self.jwt_calls.lock().unwrap().push((svid.spiffe_id.to_string(), audience.to_vec()));
        let now = crate::now_unix();
        let exp = now + 300;
        let claims = json!({ "sub": svid.spiffe_id.as_str(), "aud": audience, "exp": exp, "iat": now });
        Ok((sign_jwt(&self.pki.own_jwt, OWN_KID, &claims), exp))
    }
}

type AttestResult = Result<Vec<Selector>, String>;

/// A running server and the knobs the tests turn.
struct TestServer {
    _dir: tempfile::TempDir,
    path: PathBuf,
    pki: Arc<Pki>,
    source: Arc<FakeSource>,
    /// What the attestor answers.
    attest: Arc<Mutex<AttestResult>>,
    /// Every caller the attestor saw.
    seen: Arc<Mutex<Vec<CallerInfo>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl TestServer {
    async fn start(initial: impl FnOnce(&Pki) -> Option<Arc<Snapshot>>) -> Self {
        let pki = Arc::new(Pki::new());
        let source =
            Arc::new(FakeSource { pki: Arc::clone(&pki), tx: watch::Sender::new(initial(&pki)), jwt_calls: Mutex::new(Vec::new()) });
        let attest: Arc<Mutex<AttestResult>> = Arc::new(Mutex::new(Ok(caller_selectors())));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let attestor = {
            let attest = Arc::clone(&attest);
            let seen = Arc::clone(&seen);
            move |caller: &CallerInfo| {
                seen.lock().unwrap().push(*caller);
                attest.lock().unwrap().clone().map_err(WorkloadAttestError::from)
            }
        };
        Self::start_with(pki, source, Arc::new(attestor), attest, seen)
    }

    fn start_with(
        pki: Arc<Pki>,
        source: Arc<FakeSource>,
        attestor: Arc<dyn WorkloadAttestor>,
        attest: Arc<Mutex<AttestResult>>,
        seen: Arc<Mutex<Vec<CallerInfo>>>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let api = WorkloadApi::new(Arc::clone(&source) as Arc<dyn WorkloadSource>, attestor);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(api, listener, default_limits(1024), async move {
            let _ = stopped.await;
        }));
        Self { _dir: dir, path, pki, source, attest, seen, stop: Some(stop), task: Some(task) }
    }

    async fn client(&self) -> SpiffeWorkloadApiClient<Channel> {
        let channel = Endpoint::from_shared(format!("unix:{}", self.path.display())).unwrap().connect().await.unwrap();
        SpiffeWorkloadApiClient::new(channel)
    }

    fn publish(&self, snapshot: Option<Arc<Snapshot>>) {
        self.source.tx.send_replace(snapshot);
    }

    fn set_attest(&self, result: AttestResult) {
        *self.attest.lock().unwrap() = result;
    }

    /// Stops the server and returns what `serve` returned.
    async fn shutdown(&mut self) -> Result<(), tonic::transport::Error> {
        let _ = self.stop.take().unwrap().send(());
        timeout(WAIT, self.task.take().unwrap()).await.expect("serve did not return after shutdown").unwrap()
    }
}

/// A request carrying the security header.
fn req<T>(message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert(SECURITY_HEADER, "true".parse().unwrap());
    req
}

async fn next<M>(stream: &mut Streaming<M>) -> Result<Option<M>, Status> {
    timeout(WAIT, stream.message()).await.expect("no stream message in time")
}

async fn next_msg<M>(stream: &mut Streaming<M>) -> M {
    next(stream).await.unwrap().expect("stream ended")
}

fn jwt_req(audience: &[&str], spiffe_id: &str) -> Request<JwtsvidRequest> {
    req(JwtsvidRequest { audience: audience.iter().map(|a| (*a).to_owned()).collect(), spiffe_id: spiffe_id.to_owned() })
}

fn validate_req(audience: &str, svid: &str) -> Request<ValidateJwtsvidRequest> {
    req(ValidateJwtsvidRequest { audience: audience.to_owned(), svid: svid.to_owned() })
}

fn ids(resp: &X509svidResponse) -> Vec<&str> {
    resp.svids.iter().map(|s| s.spiffe_id.as_str()).collect()
}

fn keys<V>(map: &HashMap<String, V>) -> BTreeSet<&str> {
    map.keys().map(String::as_str).collect()
}

// === security header ===

#[tokio::test]
async fn every_method_requires_the_security_header() {
    let server = TestServer::start(Pki::all).await;
    let mut client = server.client().await;

    let missing = client.fetch_x509svid(Request::new(X509svidRequest {})).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(missing.message(), "security header missing from request");
    assert_eq!(client.fetch_x509_bundles(Request::new(X509BundlesRequest {})).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(client.fetch_jwt_bundles(Request::new(JwtBundlesRequest {})).await.unwrap_err().code(), Code::InvalidArgument);
    let jwt = JwtsvidRequest { audience: vec!["a".to_owned()], spiffe_id: String::new() };
    assert_eq!(client.fetch_jwtsvid(Request::new(jwt)).await.unwrap_err().code(), Code::InvalidArgument);
    let validate = ValidateJwtsvidRequest { audience: "a".to_owned(), svid: "x.y.z".to_owned() };
    assert_eq!(client.validate_jwtsvid(Request::new(validate)).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(client.fetch_witsvid(Request::new(WitsvidRequest::default())).await.unwrap_err().code(), Code::InvalidArgument);

    // Wrong value, wrong case, and the value twice are all refused.
    for values in [&["false"][..], &["True"], &["true", "true"]] {
        let mut r = Request::new(X509svidRequest {});
        for v in values {
            r.metadata_mut().append(SECURITY_HEADER, v.parse().unwrap());
        }
        let err = client.fetch_x509svid(r).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{values:?}");
    }
    // The header check comes before attestation: nobody was attested.
    assert!(server.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn wit_methods_are_unimplemented() {
    let server = TestServer::start(Pki::all).await;
    let mut client = server.client().await;
    assert_eq!(client.fetch_witsvid(req(WitsvidRequest::default())).await.unwrap_err().code(), Code::Unimplemented);
    assert_eq!(client.fetch_wit_bundles(req(WitBundlesRequest {})).await.unwrap_err().code(), Code::Unimplemented);
}

// === caller attestation and entitlement ===

#[tokio::test]
async fn peer_credentials_of_the_connection_are_attested() {
    let server = TestServer::start(Pki::all).await;
    let mut client = server.client().await;
    let _ = client.fetch_x509svid(req(X509svidRequest {})).await.unwrap();
    let _ = client.fetch_jwtsvid(jwt_req(&["a"], "")).await.unwrap();
    let seen = server.seen.lock().unwrap().clone();
    // Once per request, and the caller is this very process (the uid that owns the files it
    // creates).
    assert_eq!(seen.len(), 2);
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&server.path).unwrap());
    for caller in seen {
        assert_eq!(caller.pid, Some(i32::try_from(std::process::id()).unwrap()));
        assert_eq!(caller.uid, uid);
    }
}

#[tokio::test]
async fn attestation_failure_is_unavailable() {
    let server = TestServer::start(Pki::all).await;
    server.set_attest(Err("cannot read /proc".to_owned()));
    let mut client = server.client().await;
    let err = client.fetch_x509svid(req(X509svidRequest {})).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "workload attestation failed");
    assert_eq!(client.fetch_jwtsvid(jwt_req(&["a"], "")).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(client.validate_jwtsvid(validate_req("a", "x.y.z")).await.unwrap_err().code(), Code::Unavailable);
}

#[tokio::test]
async fn caller_without_identity_is_permission_denied() {
    let server = TestServer::start(Pki::all).await;
    server.set_attest(Ok(vec![sel("unix", "uid:4242")]));
    let mut client = server.client().await;
    let err = client.fetch_x509svid(req(X509svidRequest {})).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "no identity issued");
    assert_eq!(client.fetch_x509_bundles(req(X509BundlesRequest {})).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(client.fetch_jwt_bundles(req(JwtBundlesRequest {})).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(client.fetch_jwtsvid(jwt_req(&["a"], "")).await.unwrap_err().code(), Code::PermissionDenied);
    // Only part of an entry's selectors is not enough: db needs uid and gid.
    server.set_attest(Ok(vec![sel("unix", "gid:1000")]));
    assert_eq!(client.fetch_x509svid(req(X509svidRequest {})).await.unwrap_err().code(), Code::PermissionDenied);
    assert!(server.source.jwt_calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn before_the_first_sync_everything_is_unavailable() {
    let server = TestServer::start(|_| None).await;
    let mut client = server.client().await;
    assert_eq!(client.fetch_x509svid(req(X509svidRequest {})).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(client.fetch_x509_bundles(req(X509BundlesRequest {})).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(client.fetch_jwt_bundles(req(JwtBundlesRequest {})).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(client.fetch_jwtsvid(jwt_req(&["a"], "")).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(client.validate_jwtsvid(validate_req("a", "x.y.z")).await.unwrap_err().code(), Code::Unavailable);
    // Once the sync has happened, the same client is served.
    server.publish(server.pki.all());
    let mut stream = client.fetch_x509svid(req(X509svidRequest {})).await.unwrap().into_inner();
    assert_eq!(ids(&next_msg(&mut stream).await), ["spiffe://example.org/web", "spiffe://example.org/db"]);
}

// === FetchX509SVID ===

#[tokio::test]
async fn x509_svid_first_message_carries_everything() {
    let server = TestServer::start(Pki::all).await;
    let pki = &server.pki;
    let mut client = server.client().await;
    let mut stream = client.fetch_x509svid(req(X509svidRequest {})).await.unwrap().into_inner();
    let msg = next_msg(&mut stream).await;

    // web and db, in snapshot order (web is the default); not other's.
    assert_eq!(ids(&msg), ["spiffe://example.org/web", "spiffe://example.org/db"]);
    let web = &msg.svids[0];
    assert_eq!(web.x509_svid, [pki.web.chain[0].clone(), pki.web.chain[1].clone()].concat(), "leaf then intermediate, DER");
    assert_eq!(web.x509_svid_key, pki.web.key_pkcs8.as_slice());
    assert_eq!(web.bundle, pki.own_root);
    assert_eq!(web.hint, "web");
    let db = &msg.svids[1];
    assert_eq!(db.x509_svid, pki.db.chain[0]);
    assert_eq!(db.x509_svid_key, pki.db.key_pkcs8.as_slice());
    assert_eq!(db.bundle, pki.own_root);
    // web federates with fed.org; the own trust domain is not a federated bundle.
    assert_eq!(keys(&msg.federated_bundles), BTreeSet::from(["spiffe://fed.org"]));
    assert_eq!(msg.federated_bundles["spiffe://fed.org"], pki.fed_root);
    assert!(msg.crl.is_empty());

    // A federated trust domain the agent holds no bundle for is simply left out.
    server.publish(Some(Arc::new(Snapshot { federated: BTreeMap::new(), ..(*pki.all().unwrap()).clone() })));
    let msg = next_msg(&mut stream).await;
    assert!(msg.federated_bundles.is_empty());
}

#[tokio::test]
async fn x509_svid_duplicate_hints_keep_the_first() {
    let server = TestServer::start(|pki| {
        let db_same_hint = Arc::new(X509SvidItem { hint: "web".to_owned(), ..(*pki.db).clone() });
        pki.snapshot(&[&pki.web, &db_same_hint])
    })
    .await;
    let mut client = server.client().await;
    let mut stream = client.fetch_x509svid(req(X509svidRequest {})).await.unwrap().into_inner();
    assert_eq!(ids(&next_msg(&mut stream).await), ["spiffe://example.org/web"]);
}

#[tokio::test]
async fn x509_svid_stream_follows_changes() {
    let server = TestServer::start(|pki| pki.snapshot(&[&pki.web])).await;
    let pki = Arc::clone(&server.pki);
    let mut client = server.client().await;
    let mut stream = client.fetch_x509svid(req(X509svidRequest {})).await.unwrap().into_inner();
    assert_eq!(ids(&next_msg(&mut stream).await), ["spiffe://example.org/web"]);

    // An identity added.
    server.publish(pki.snapshot(&[&pki.web, &pki.db]));
    assert_eq!(ids(&next_msg(&mut stream).await), ["spiffe://example.org/web", "spiffe://example.org/db"]);

    // Changes this caller does not see (a new snapshot with equal content, another
    // workload's identity) send nothing: the next message is the next real change.
    server.publish(pki.snapshot(&[&pki.web, &pki.db]));
    server.publish(pki.snapshot(&[&pki.web, &pki.db, &pki.other]));
    assert!(timeout(QUIET, stream.message()).await.is_err(), "nothing changed for this caller");

    // An identity removed.
    server.publish(pki.snapshot(&[&pki.db, &pki.other]));
    let msg = next_msg(&mut stream).await;
    assert_eq!(ids(&msg), ["spiffe://example.org/db"]);
    // db does not federate: fed.org's bundle is withdrawn with web.
    assert!(msg.federated_bundles.is_empty());

    // A rotated SVID (new chain) is sent.
    let rotated = Arc::new(X509SvidItem { chain: pki.web.chain.clone(), ..(*pki.db).clone() });
    server.publish(pki.snapshot(&[&rotated]));
    assert_eq!(next_msg(&mut stream).await.svids[0].x509_svid, pki.web.chain.concat());

    // The last identity removed: the stream ends with PermissionDenied.
    server.publish(pki.snapshot(&[&pki.other]));
    let err = next(&mut stream).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "no identity issued");
}

#[tokio::test]
async fn streams_end_with_unavailable_on_shutdown() {
    let mut server = TestServer::start(Pki::all).await;
    let mut client = server.client().await;
    let mut x509 = client.fetch_x509svid(req(X509svidRequest {})).await.unwrap().into_inner();
    let mut jwt = client.fetch_jwt_bundles(req(JwtBundlesRequest {})).await.unwrap().into_inner();
    next_msg(&mut x509).await;
    next_msg(&mut jwt).await;
    server.shutdown().await.unwrap();
    assert_eq!(next(&mut x509).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(next(&mut jwt).await.unwrap_err().code(), Code::Unavailable);
}

// === FetchX509Bundles ===

#[tokio::test]
async fn x509_bundles_own_and_federated() {
    let server = TestServer::start(|pki| pki.snapshot(&[&pki.db])).await;
    let pki = Arc::clone(&server.pki);
    let mut client = server.client().await;
    let mut stream = client.fetch_x509_bundles(req(X509BundlesRequest {})).await.unwrap().into_inner();
    let msg = next_msg(&mut stream).await;
    // db does not federate: own trust domain only.
    assert_eq!(keys(&msg.bundles), BTreeSet::from(["spiffe://example.org"]));
    assert_eq!(msg.bundles["spiffe://example.org"], pki.own_root);

    // web arrives and federates with fed.org.
    server.publish(pki.snapshot(&[&pki.web, &pki.db]));
    let msg = next_msg(&mut stream).await;
    assert_eq!(keys(&msg.bundles), BTreeSet::from(["spiffe://example.org", "spiffe://fed.org"]));
    assert_eq!(msg.bundles["spiffe://fed.org"], pki.fed_root);

    // A new SVID changes nothing in the bundles: no message. A new root does.
    let rotated = Arc::new(X509SvidItem { chain: pki.other.chain.clone(), ..(*pki.db).clone() });
    server.publish(pki.snapshot(&[&pki.web, &rotated]));
    let mut snapshot = (*pki.snapshot(&[&pki.web, &rotated]).unwrap()).clone();
    snapshot.bundle.x509_authorities.push(pki.fed_root.clone());
    server.publish(Some(Arc::new(snapshot)));
    let msg = next_msg(&mut stream).await;
    assert_eq!(msg.bundles["spiffe://example.org"], [pki.own_root.clone(), pki.fed_root.clone()].concat());

    server.publish(pki.snapshot(&[]));
    assert_eq!(next(&mut stream).await.unwrap_err().code(), Code::PermissionDenied);
}

// === FetchJWTBundles ===

#[tokio::test]
async fn jwt_bundles_are_jwks_with_the_kid() {
    let server = TestServer::start(Pki::all).await;
    let mut client = server.client().await;
    let mut stream = client.fetch_jwt_bundles(req(JwtBundlesRequest {})).await.unwrap().into_inner();
    let msg = next_msg(&mut stream).await;
    assert_eq!(keys(&msg.bundles), BTreeSet::from(["spiffe://example.org", "spiffe://fed.org"]));

    let own: Value = serde_json::from_slice(&msg.bundles["spiffe://example.org"]).unwrap();
    let own_keys = own["keys"].as_array().unwrap();
    assert_eq!(own_keys.len(), 1);
    assert_eq!(own_keys[0]["kid"], OWN_KID);
    assert_eq!(own_keys[0]["kty"], "EC");
    // Parsed back, it gives the same key.
    let parsed = Bundle::from_jwks_json(td(OWN_TD), &msg.bundles["spiffe://example.org"]).unwrap();
    assert_eq!(parsed.jwt_authority(OWN_KID).unwrap().public_key, spki(&server.pki.own_jwt));
    let fed: Value = serde_json::from_slice(&msg.bundles["spiffe://fed.org"]).unwrap();
    assert_eq!(fed["keys"][0]["kid"], FED_KID);

    // A new JWT key is sent.
    let mut snapshot = (*server.pki.all().unwrap()).clone();
    snapshot.bundle.jwt_authorities.push(JwtAuthority {
        key_id: "own-k2".to_owned(),
        public_key: spki(&server.pki.fed_jwt),
        expires_at: 0,
        tainted: false,
    });
    server.publish(Some(Arc::new(snapshot)));
    let msg = next_msg(&mut stream).await;
    let own: Value = serde_json::from_slice(&msg.bundles["spiffe://example.org"]).unwrap();
    assert_eq!(own["keys"].as_array().unwrap().len(), 2);
}

// === FetchJWTSVID ===

#[tokio::test]
async fn jwt_svids_are_issued_for_identities_the_svid_cache_holds_no_certificate_for() {
    // db's X509-SVID is not held (the agent's cache is full): FetchJWTSVID still answers for
    // it, at once and without asking for an X509-SVID, as SPIRE's LRU cache does.
    let server = TestServer::start(|pki| {
        let mut snap = (*pki.snapshot(&[&pki.web]).unwrap()).clone();
        snap.unminted = vec![Arc::new(pki.db.identity())];
        Some(Arc::new(snap))
    })
    .await;
    let mut client = server.client().await;
    let resp = client.fetch_jwtsvid(jwt_req(&["aud"], "")).await.unwrap().into_inner();
    let got: Vec<_> = resp.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(got, ["spiffe://example.org/web", "spiffe://example.org/db"]);
    let bundles = [server.pki.own_bundle()];
    let claims = validate_jwt_svid(&resp.svids[1].svid, &["aud"], crate::now_unix(), crate::spiffe::bundle_keys(&bundles)).unwrap();
    assert_eq!(claims.subject.as_str(), "spiffe://example.org/db");
}

#[tokio::test]
async fn jwt_svid_for_every_identity_or_the_requested_one() {
    let server = TestServer::start(Pki::all).await;
    let mut client = server.client().await;

    let resp = client.fetch_jwtsvid(jwt_req(&["aud-1", "aud-2"], "")).await.unwrap().into_inner();
    let got: Vec<_> = resp.svids.iter().map(|s| (s.spiffe_id.as_str(), s.hint.as_str())).collect();
    assert_eq!(got, [("spiffe://example.org/web", "web"), ("spiffe://example.org/db", "db")]);
    let bundles = [server.pki.own_bundle()];
    for svid in &resp.svids {
        let claims = validate_jwt_svid(&svid.svid, &["aud-2"], crate::now_unix(), crate::spiffe::bundle_keys(&bundles)).unwrap();
        assert_eq!(claims.subject.as_str(), svid.spiffe_id);
        assert_eq!(claims.audience, ["aud-1", "aud-2"]);
    }
    assert_eq!(
        server.source.jwt_calls.lock().unwrap()[0],
        ("spiffe://example.org/web".to_owned(), vec!["aud-1".to_owned(), "aud-2".to_owned()])
    );

    let resp = client.fetch_jwtsvid(jwt_req(&["aud"], "spiffe://example.org/db")).await.unwrap().into_inner();
    assert_eq!(resp.svids.len(), 1);
    assert_eq!(resp.svids[0].spiffe_id, "spiffe://example.org/db");

    // Someone else's identity, or one nobody has.
    for id in ["spiffe://example.org/other", "spiffe://example.org/nobody", "spiffe://fed.org/web"] {
        let err = client.fetch_jwtsvid(jwt_req(&["aud"], id)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{id}");
    }
    for id in ["not-an-id", "spiffe://example.org/a//b", "https://example.org/web"] {
        let err = client.fetch_jwtsvid(jwt_req(&["aud"], id)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{id}");
        assert!(err.message().starts_with("invalid requested SPIFFE ID"), "{}", err.message());
    }
}

#[tokio::test]
async fn jwt_svid_audience_is_required_and_bounded() {
    let server = TestServer::start(Pki::all).await;
    let mut client = server.client().await;

    let err = client.fetch_jwtsvid(jwt_req(&[], "")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "audience must be specified");
    assert_eq!(client.fetch_jwtsvid(jwt_req(&[""], "")).await.unwrap_err().code(), Code::InvalidArgument);

    // 10,000 one-byte audiences fit in the message size limit and reach the count check.
    let many: Vec<String> = (0..10_000).map(|i| (i % 10).to_string()).collect();
    let err = client.fetch_jwtsvid(req(JwtsvidRequest { audience: many, spiffe_id: String::new() })).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("too many audiences"), "{}", err.message());
    // 10,000 longer ones exceed the message size limit and are refused before decoding.
    let big: Vec<String> = (0..10_000).map(|i| format!("spiffe://example.org/audience/{i}")).collect();
    let err = client.fetch_jwtsvid(req(JwtsvidRequest { audience: big, spiffe_id: String::new() })).await.unwrap_err();
    assert_ne!(err.code(), Code::Ok);

    let limit: Vec<String> = (0..MAX_AUDIENCES).map(|i| format!("a{i}")).collect();
    assert!(client.fetch_jwtsvid(req(JwtsvidRequest { audience: limit.clone(), spiffe_id: String::new() })).await.is_ok());
    let over = [limit, vec!["one-more".to_owned()]].concat();
    assert_eq!(
        client.fetch_jwtsvid(req(JwtsvidRequest { audience: over, spiffe_id: String::new() })).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let long = "a".repeat(MAX_AUDIENCE_LEN + 1);
    assert_eq!(client.fetch_jwtsvid(jwt_req(&[&long], "")).await.unwrap_err().code(), Code::InvalidArgument);

    // None of the refused requests reached the source; the server still serves.
    assert_eq!(server.source.jwt_calls.lock().unwrap().len(), 2);
    assert!(client.fetch_jwtsvid(jwt_req(&["ok"], "")).await.is_ok());
}

/// A source that refuses or fails to mint.
struct FailingSource {
    inner: Arc<FakeSource>,
    invalid: bool,
}

#[tonic::async_trait]
impl WorkloadSource for FailingSource {
    fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.inner.subscribe()
    }

    async fn fetch_jwt_svid(&self, _svid: &Identity, _audience: &[String]) -> Result<(String, i64), FetchJwtError> {
        if self.invalid {
            Err(FetchJwtError::InvalidArgument("bad audience".to_owned()))
        } else {
            Err(FetchJwtError::Unavailable("server down".to_owned()))
        }
    }
}

#[tokio::test]
async fn jwt_svid_source_errors_map_to_codes() {
    for (invalid, code) in [(true, Code::InvalidArgument), (false, Code::Unavailable)] {
        let pki = Arc::new(Pki::new());
        let inner = Arc::new(FakeSource { pki: Arc::clone(&pki), tx: watch::Sender::new(pki.all()), jwt_calls: Mutex::new(Vec::new()) });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let api = WorkloadApi::new(Arc::new(FailingSource { inner, invalid }), Arc::new(|_: &CallerInfo| Ok(caller_selectors())));
        let task = tokio::spawn(serve(api, listener, default_limits(1024), std::future::pending()));
        let channel = Endpoint::from_shared(format!("unix:{}", path.display())).unwrap().connect().await.unwrap();
        let mut client = SpiffeWorkloadApiClient::new(channel);
        assert_eq!(client.fetch_jwtsvid(jwt_req(&["a"], "")).await.unwrap_err().code(), code);
        task.abort();
    }
}

// === ValidateJWTSVID ===

fn field<'s>(claims: &'s prost_types::Struct, name: &str) -> &'s Kind {
    claims.fields.get(name).and_then(|v| v.kind.as_ref()).unwrap_or_else(|| panic!("no claim {name}"))
}

#[tokio::test]
async fn validate_jwt_svid_accepts_a_good_token() {
    let server = TestServer::start(Pki::all).await;
    let mut client = server.client().await;
    let token = client.fetch_jwtsvid(jwt_req(&["svc-a"], "spiffe://example.org/db")).await.unwrap().into_inner().svids.remove(0).svid;

    let resp = client.validate_jwtsvid(validate_req("svc-a", &token)).await.unwrap().into_inner();
    assert_eq!(resp.spiffe_id, "spiffe://example.org/db");
    let claims = resp.claims.expect("claims are always set");
    assert_eq!(field(&claims, "sub"), &Kind::StringValue("spiffe://example.org/db".to_owned()));
    let Kind::ListValue(aud) = field(&claims, "aud") else { panic!("aud is not a list") };
    assert_eq!(aud.values, [prost_types::Value { kind: Some(Kind::StringValue("svc-a".to_owned())) }]);
    let Kind::NumberValue(exp) = field(&claims, "exp") else { panic!("exp is not a number") };
    assert!(*exp > 1e9);
    assert!(matches!(field(&claims, "iat"), Kind::NumberValue(_)));

    // A token whose `aud` is a single string is answered with a list too, and extra claims of
    // the own trust domain are passed on.
    let now = crate::now_unix();
    let claims = json!({ "sub": "spiffe://example.org/x", "aud": "svc-b", "exp": now + 60, "extra": { "k": [1, true, null] } });
    let token = sign_jwt(&server.pki.own_jwt, OWN_KID, &claims);
    let claims = client.validate_jwtsvid(validate_req("svc-b", &token)).await.unwrap().into_inner().claims.unwrap();
    assert!(matches!(field(&claims, "aud"), Kind::ListValue(l) if l.values.len() == 1));
    let Kind::StructValue(extra) = field(&claims, "extra") else { panic!("extra is not an object") };
    let Kind::ListValue(k) = field(extra, "k") else { panic!("k is not a list") };
    let kinds: Vec<_> = k.values.iter().map(|v| v.kind.clone().unwrap()).collect();
    assert_eq!(kinds, [Kind::NumberValue(1.0), Kind::BoolValue(true), Kind::NullValue(0)]);
}

#[tokio::test]
async fn validate_jwt_svid_rejects_bad_tokens() {
    let server = TestServer::start(Pki::all).await;
    let mut client = server.client().await;
    let token = client.fetch_jwtsvid(jwt_req(&["svc-a"], "")).await.unwrap().into_inner().svids.remove(0).svid;

    let cases = [
        ("svc-a", "garbage".to_owned()),
        ("svc-a", "a.b.c".to_owned()),
        ("svc-a", token[..token.len() - 10].to_owned()),
        ("svc-a", token[..token.rfind('.').unwrap()].to_owned()),
        ("other-audience", token.clone()),
        (
            "svc-a",
            sign_jwt(
                &server.pki.fed_jwt,
                OWN_KID,
                &json!({ "sub": "spiffe://example.org/x", "aud": "svc-a", "exp": crate::now_unix() + 60 }),
            ),
        ),
        (
            "svc-a",
            sign_jwt(
                &server.pki.own_jwt,
                OWN_KID,
                &json!({ "sub": "spiffe://example.org/x", "aud": "svc-a", "exp": crate::now_unix() - 3600 }),
            ),
        ),
        (
            "svc-a",
            sign_jwt(
                &server.pki.own_jwt,
                "unknown-kid",
                &json!({ "sub": "spiffe://example.org/x", "aud": "svc-a", "exp": crate::now_unix() + 60 }),
            ),
        ),
    ];
    for (audience, svid) in &cases {
        let err = client.validate_jwtsvid(validate_req(audience, svid)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{audience} {svid}");
        assert!(!err.message().is_empty());
    }
    let err = client.validate_jwtsvid(validate_req("other-audience", &token)).await.unwrap_err();
    assert!(err.message().contains("audience"), "{}", err.message());

    let err = client.validate_jwtsvid(validate_req("", &token)).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "audience must be specified"));
    let err = client.validate_jwtsvid(validate_req("svc-a", "")).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "svid must be specified"));
    // Larger than the request limit: refused before decoding, and the server lives on.
    let huge = "a".repeat(MAX_REQUEST_BYTES + 1);
    assert_ne!(client.validate_jwtsvid(validate_req("svc-a", &huge)).await.unwrap_err().code(), Code::Ok);
    assert!(client.validate_jwtsvid(validate_req("svc-a", &token)).await.is_ok());
}

#[tokio::test]
async fn validate_jwt_svid_needs_no_identity_and_trusts_only_federated_domains() {
    let server = TestServer::start(Pki::all).await;
    let mut client = server.client().await;
    let now = crate::now_unix();
    let own = sign_jwt(&server.pki.own_jwt, OWN_KID, &json!({ "sub": "spiffe://example.org/x", "aud": "v", "exp": now + 60 }));
    let foreign = sign_jwt(
        &server.pki.fed_jwt,
        FED_KID,
        &json!({ "sub": "spiffe://fed.org/y", "aud": ["v"], "exp": now + 60, "iat": now, "extra": 1 }),
    );

    // The default caller has web, which federates with fed.org: foreign tokens validate, with
    // only the SPIFFE claims passed on.
    let resp = client.validate_jwtsvid(validate_req("v", &foreign)).await.unwrap().into_inner();
    assert_eq!(resp.spiffe_id, "spiffe://fed.org/y");
    let claims = resp.claims.unwrap();
    assert_eq!(claims.fields.keys().map(String::as_str).collect::<BTreeSet<_>>(), BTreeSet::from(["aud", "exp", "sub"]));

    // A caller without any identity may still validate tokens of the own trust domain...
    server.set_attest(Ok(vec![sel("unix", "uid:4242")]));
    let resp = client.validate_jwtsvid(validate_req("v", &own)).await.unwrap().into_inner();
    assert_eq!(resp.spiffe_id, "spiffe://example.org/x");
    // ...but has no reason to trust fed.org.
    let err = client.validate_jwtsvid(validate_req("v", &foreign)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("fed.org"), "{}", err.message());
    // Nor does db, which does not federate.
    server.set_attest(Ok(caller_selectors()));
    server.publish(server.pki.snapshot(&[&server.pki.db]));
    assert_eq!(client.validate_jwtsvid(validate_req("v", &foreign)).await.unwrap_err().code(), Code::InvalidArgument);
}

// === robustness ===

#[tokio::test]
async fn garbage_on_the_socket_does_not_stop_the_server() {
    let server = TestServer::start(Pki::all).await;
    let inputs: [&[u8]; 4] = [
        b"\x00\xff\x13garbage garbage garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        // A valid HTTP/2 preface followed by a malformed frame.
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x99\x00\xff\xff\xff\xff\x01\x02\x03\x04",
        &[0xAB; 70_000],
    ];
    for input in inputs {
        let mut raw = tokio::net::UnixStream::connect(&server.path).await.unwrap();
        // The server may close before reading everything; that is fine.
        let _ = raw.write_all(input).await;
        let mut buf = vec![0; 4096];
        let _ = timeout(Duration::from_secs(2), raw.read(&mut buf)).await;
    }
    // A connection that sends nothing and stays open does not block others either.
    let _idle = tokio::net::UnixStream::connect(&server.path).await.unwrap();

    let mut client = server.client().await;
    let mut stream = client.fetch_x509svid(req(X509svidRequest {})).await.unwrap().into_inner();
    assert_eq!(next_msg(&mut stream).await.svids.len(), 2);
}

// === the Rust `spiffe` crate as client ===

/// A stand-in for `crate::agent::unix_attestor`, with its signature, so the wiring the agent
/// uses is exercised here without depending on that module.
mod unix_attestor {
    use std::path::PathBuf;

    pub struct UnixAttestorConfig {
        pub discover_workload_path: bool,
        pub workload_size_limit: i64,
        pub proc_root: PathBuf,
        pub passwd_path: PathBuf,
        pub group_path: PathBuf,
    }

    impl Default for UnixAttestorConfig {
        fn default() -> Self {
            Self {
                discover_workload_path: false,
                workload_size_limit: 0,
                proc_root: "/proc".into(),
                passwd_path: "/etc/passwd".into(),
                group_path: "/etc/group".into(),
            }
        }
    }

    pub struct PeerCred {
        pub pid: Option<i32>,
        pub uid: u32,
        pub gid: u32,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("unix attestation failed")]
    pub struct UnixAttestorError;

    pub fn attest(peer: &PeerCred, cfg: &UnixAttestorConfig) -> Result<Vec<(String, String)>, UnixAttestorError> {
        let _ = (cfg.discover_workload_path, cfg.workload_size_limit, &cfg.proc_root, &cfg.passwd_path, &cfg.group_path);
        if peer.pid.is_none() {
            return Err(UnixAttestorError);
        }
        Ok(vec![("unix".to_owned(), format!("uid:{}", peer.uid)), ("unix".to_owned(), format!("gid:{}", peer.gid))])
    }
}

/// The unix attestor behind the [`WorkloadAttestor`] interface, as the agent wires it.
fn unix_workload_attestor(cfg: unix_attestor::UnixAttestorConfig) -> Arc<dyn WorkloadAttestor> {
    Arc::new(move |caller: &CallerInfo| {
        let peer = unix_attestor::PeerCred { pid: caller.pid, uid: caller.uid, gid: caller.gid };
        unix_attestor::attest(&peer, &cfg)
            .map(|selectors| selectors.into_iter().map(|(kind, value)| Selector { kind, value }).collect())
            .map_err(WorkloadAttestError::from)
    })
}

fn own_uid(path: &Path) -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path).unwrap())
}

#[tokio::test]
async fn rust_spiffe_crate_client_works() {
    use x509_parser::prelude::{FromDer, X509Certificate};

    // Entries select this process by its real uid, through the unix attestor interface.
    let pki = Arc::new(Pki::new());
    let probe = tempfile::tempdir().unwrap();
    let uid = own_uid(probe.path());
    let mine = vec![sel("unix", &format!("uid:{uid}"))];
    let web = Arc::new(X509SvidItem { selectors: mine.clone(), ..(*pki.web).clone() });
    let db = Arc::new(X509SvidItem { selectors: mine, ..(*pki.db).clone() });
    let source = Arc::new(FakeSource {
        pki: Arc::clone(&pki),
        tx: watch::Sender::new(pki.snapshot(&[&web, &db])),
        jwt_calls: Mutex::new(Vec::new()),
    });
    let attestor = unix_workload_attestor(unix_attestor::UnixAttestorConfig::default());
    let mut server = TestServer::start_with(pki, source, attestor, Arc::new(Mutex::new(Ok(Vec::new()))), Arc::new(Mutex::new(Vec::new())));

    let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", server.path.display())).await.unwrap();
    let own_td = spiffe::TrustDomain::new(OWN_TD).unwrap();
    let fed_td = spiffe::TrustDomain::new(FED_TD).unwrap();

    // X.509: the default SVID, its chain verifying up to the bundle's root.
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/web");
    assert_eq!(svid.hint(), Some("web"));
    assert_eq!(svid.cert_chain().len(), 2);
    let all = client.fetch_all_x509_svids().await.unwrap();
    assert_eq!(all.iter().map(|s| s.spiffe_id().to_string()).collect::<Vec<_>>(), ["spiffe://example.org/web", "spiffe://example.org/db"]);

    let bundles = client.fetch_x509_bundles().await.unwrap();
    let own_bundle = bundles.get(&own_td).expect("own bundle");
    assert_eq!(own_bundle.authorities().len(), 1);
    assert!(bundles.get(&fed_td).is_some(), "web federates with fed.org");
    let (_, root) = X509Certificate::from_der(own_bundle.authorities()[0].as_bytes()).unwrap();
    let (_, leaf) = X509Certificate::from_der(svid.cert_chain()[0].as_bytes()).unwrap();
    let (_, intermediate) = X509Certificate::from_der(svid.cert_chain()[1].as_bytes()).unwrap();
    leaf.verify_signature(Some(intermediate.public_key())).unwrap();
    intermediate.verify_signature(Some(root.public_key())).unwrap();
    assert!(leaf.verify_signature(Some(root.public_key())).is_err(), "the leaf is signed by the intermediate, not the root");
    let (_, db_leaf) = X509Certificate::from_der(all[1].cert_chain()[0].as_bytes()).unwrap();
    db_leaf.verify_signature(Some(root.public_key())).unwrap();

    let ctx = client.fetch_x509_context().await.unwrap();
    assert_eq!(ctx.svids().len(), 2);

    // JWT: fetch, bundles, local validation with the served JWKS, and server-side validation.
    let jwt = client.fetch_jwt_svid(["spire-test"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), "spiffe://example.org/web");
    assert_eq!(jwt.audience(), ["spire-test"]);
    assert_eq!(jwt.key_id(), OWN_KID);
    let db_id = spiffe::SpiffeId::new("spiffe://example.org/db").unwrap();
    let db_jwt = client.fetch_jwt_svid(["spire-test"], Some(&db_id)).await.unwrap();
    assert_eq!(db_jwt.spiffe_id(), &db_id);

    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    assert!(jwt_bundles.get(&own_td).unwrap().find_jwt_authority(OWN_KID).is_some());
    assert!(jwt_bundles.get(&fed_td).unwrap().find_jwt_authority(FED_KID).is_some());
    let local = spiffe::JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["spire-test"]).unwrap();
    assert_eq!(local.spiffe_id().to_string(), "spiffe://example.org/web");

    let validated = client.validate_jwt_token("spire-test", jwt.token()).await.unwrap();
    assert_eq!(validated.spiffe_id().to_string(), "spiffe://example.org/web");
    assert!(client.validate_jwt_token("someone-else", jwt.token()).await.is_err());

    // The streaming sources start and see the default identity too.
    let source = spiffe::X509Source::builder().endpoint(format!("unix:{}", server.path.display())).build().await.unwrap();
    assert_eq!(source.svid().unwrap().spiffe_id().to_string(), "spiffe://example.org/web");
    source.shutdown().await;

    drop(client);
    server.shutdown().await.unwrap();
}
