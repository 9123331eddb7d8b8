//! The bundle endpoint on loopback: GETs per second with 1 and 16 keep-alive HTTPS clients,
//! cairn's endpoint (as the server runs it: serialized once per bundle change) beside a static responder
//! that answers the same bytes prepared once, over the same TLS, in one run. Run with
//! `scripts/bench-federation.sh` (which also measures how long a new root takes to reach a
//! federated trust domain). Prints figures and ratios; asserts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "benchmark driver")]

use cairn::federation::endpoint::{BundleResponder, BundleSource, Responder};
use cairn::spiffe::{Bundle, JwtAuthority, TrustDomain};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SECS: f64 = 3.0;

struct Fixed(Arc<Bundle>);

#[async_trait::async_trait]
impl BundleSource for Fixed {
    async fn bundle(&self) -> Result<Arc<Bundle>, String> {
        Ok(Arc::clone(&self.0))
    }
}

/// The same answer, serialized once.
struct Static(Bytes);

#[async_trait::async_trait]
impl Responder for Static {
    async fn respond(&self, _: &Method, _: &str) -> (StatusCode, &'static str, Bytes) {
        (StatusCode::OK, "application/json", self.0.clone())
    }
}

/// A bundle like a two-tier trust domain's: two roots, four JWT keys.
fn bundle() -> Bundle {
    let root = |name: &str| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.subject_alt_names = vec![rcgen::SanType::URI(format!("spiffe://example.org/{name}").try_into().unwrap())];
        p.self_signed(&key).unwrap().der().to_vec()
    };
    let jwt = |i: usize| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        JwtAuthority {
            key_id: format!("kid-{i}"),
            public_key: rcgen::PublicKeyData::subject_public_key_info(&key),
            expires_at: 0,
            tainted: false,
        }
    };
    Bundle {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        x509_authorities: vec![root("a"), root("b")],
        jwt_authorities: (0..4).map(jwt).collect(),
        refresh_hint: Some(300),
        sequence_number: 42,
        tainted_x509: vec![],
    }
}

fn tls() -> (Arc<rustls::ServerConfig>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
    let der = cert.der().to_vec();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone().into()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    (Arc::new(cfg), der)
}

async fn start(responder: Arc<dyn Responder>, tls: Arc<rustls::ServerConfig>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(cairn::federation::endpoint::serve(listener, Some(tls), responder, "bench", 65_536, std::future::pending()));
    port
}

async fn rate(port: u16, ca: &[u8], callers: usize) -> f64 {
    let count = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.to_vec().into()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder().use_preconfigured_tls(cfg).build().unwrap();
        let count = Arc::clone(&count);
        tasks.push(tokio::spawn(async move {
            while start.elapsed().as_secs_f64() < SECS {
                let body = http.get(format!("https://localhost:{port}/")).send().await.unwrap().bytes().await.unwrap();
                std::hint::black_box(body);
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let b = bundle();
    let mut served = b.clone();
    served.refresh_hint = Some(300);
    let (cfg, ca) = tls();
    let (cairn_port, static_port) = rt.block_on(async {
        let cairn = start(Arc::new(BundleResponder::new(Arc::new(Fixed(Arc::new(b))), 300)), Arc::clone(&cfg)).await;
        let fixed = start(Arc::new(Static(Bytes::from(served.to_spiffe_json()))), Arc::clone(&cfg)).await;
        (cairn, fixed)
    });
    println!(
        "bundle endpoint GETs/s on loopback, HTTPS keep-alive ({} cores, {SECS} s per figure; 2 roots + 4 JWT keys)",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    println!("{:<40} {:>10} {:>10}", "", "1 client", "16 clients");
    let mut best = [[0f64; 2]; 2];
    for _round in 0..2 {
        for (ci, callers) in [1usize, 16].into_iter().enumerate() {
            best[0][ci] = best[0][ci].max(rt.block_on(rate(cairn_port, &ca, callers)));
            best[1][ci] = best[1][ci].max(rt.block_on(rate(static_port, &ca, callers)));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("{:<40} {:>10.0} {:>10.0}", "cairn bundle endpoint", best[0][0], best[0][1]);
    println!("{:<40} {:>10.0} {:>10.0}", "static bytes, same server and TLS", best[1][0], best[1][1]);
    println!("{:<40} {:>9.0}% {:>9.0}%", "cairn / static", 100.0 * best[0][0] / best[1][0], 100.0 * best[0][1] / best[1][1]);
}
