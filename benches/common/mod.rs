//! What the minting benchmarks share: the CSRs they mint from and a CA manager on an in-memory
//! datastore, so `mint` and `hsm` measure the same work.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark driver")]
#![allow(dead_code, reason = "not every benchmark uses every helper")]

use cairn::ca::{CaConfig, CaManager, CaSubject};
use cairn::datastore::sql::SqliteDatastore;
use cairn::keymanager::{KeyManager, KeyType};
use cairn::spiffe::TrustDomain;
use std::sync::Arc;

/// `n` P-256 CSRs for `spiffe://example.org/w/<i>`.
pub fn csrs(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = rcgen::CertificateParams::default();
            p.subject_alt_names = vec![rcgen::SanType::URI(format!("spiffe://example.org/w/{i}").try_into().unwrap())];
            p.serialize_request(&key).unwrap().der().to_vec()
        })
        .collect()
}

/// An initialised CA manager for example.org (EC P-256, SQLite in memory) with keys in `km`.
pub async fn ca_manager(km: Arc<dyn KeyManager>, journal_key: &str) -> CaManager {
    ca_manager_under(km, journal_key, None).await
}

/// As [`ca_manager`], with the CA signed by `upstream` (a self-signed root when `None`).
pub async fn ca_manager_under(
    km: Arc<dyn KeyManager>,
    journal_key: &str,
    upstream: Option<Arc<dyn cairn::upstream::UpstreamAuthority>>,
) -> CaManager {
    let ds = Arc::new(SqliteDatastore::connect("sqlite::memory:").await.unwrap());
    let cfg = CaConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        ca_ttl: 86_400,
        default_x509_svid_ttl: 3600,
        default_jwt_svid_ttl: 300,
        ca_key_type: KeyType::EcP256,
        jwt_key_type: KeyType::EcP256,
        ca_subject: CaSubject::default(),
        jwt_issuer: None,
        journal_key: journal_key.into(),
        jwt_publish_grace: 0,
        disable_jwt_svids: false,
        ca_rotation_interval: 10,
    };
    let m = CaManager::new(cfg, km, upstream, ds);
    m.initialize(cairn::now_unix()).await.unwrap();
    m
}

/// X509-SVIDs per second from `callers` tasks minting through `ca` for `secs` (the RPC's work:
/// parse and verify the CSR, build, sign).
pub async fn mint_loop(ca: Arc<cairn::ca::Ca>, callers: usize, csrs: Arc<Vec<Vec<u8>>>, secs: f64) -> f64 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = Arc::new(AtomicUsize::new(0));
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for t in 0..callers {
        let (ca, count, csrs) = (Arc::clone(&ca), Arc::clone(&count), Arc::clone(&csrs));
        tasks.push(tokio::spawn(async move {
            let now = cairn::now_unix();
            let mut i = t;
            while start.elapsed().as_secs_f64() < secs {
                let parsed = cairn::pki::Csr::parse(&csrs[i % csrs.len()]).unwrap();
                let id = cairn::spiffe::SpiffeId::new(&parsed.uris[0]).unwrap();
                let req = cairn::ca::X509SvidRequest { id: &id, dns_names: &[], ttl: 0 };
                std::hint::black_box(ca.mint_x509_svid(&parsed.public_key, &req, now).await.unwrap());
                count.fetch_add(1, Ordering::Relaxed);
                i += callers;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// CPU time (user + system) of the calling thread, in seconds.
pub fn thread_cpu_seconds() -> f64 {
    stat_cpu_seconds("/proc/thread-self/stat")
}

/// CPU time (user + system) of process `pid`, or of this process when `None`, in seconds.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    stat_cpu_seconds(&pid.map_or_else(|| "/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat")))
}

/// utime + stime from a /proc `stat` file, in seconds.
fn stat_cpu_seconds(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
