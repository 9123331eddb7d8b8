//! The `vault` upstream, measured against OpenBao itself in one run: time to mint a tier CA
//! through `pki/root/sign-intermediate` (p50 of 20), and X509-SVIDs per second issued by cairn
//! under that Vault-signed CA beside OpenBao's own `pki/sign/<role>` rate for equivalent leaf
//! certificates (P-256 CSRs, URI SAN only), with 1 and 4 callers. Run with
//! `scripts/bench-vault.sh`, which starts a throwaway OpenBao dev server and sets VAULT_ADDR and
//! VAULT_TOKEN. Prints figures and ratios; asserts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "benchmark driver")]

mod common;
use common::csrs;

use cairn::keymanager::MemoryKeyManager;
use cairn::spiffe::TrustDomain;
use cairn::upstream::UpstreamAuthority;
use cairn::upstream::vault::{VaultUpstream, VaultUpstreamConfig};
use cairn::vault::{AuthSettings, VaultSettings};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

const SECS: f64 = 3.0;

fn upstream() -> Arc<dyn UpstreamAuthority> {
    // VAULT_ADDR and VAULT_TOKEN come from the environment, as SPIRE's plugin reads them.
    let cfg = VaultUpstreamConfig {
        vault: VaultSettings { auth: AuthSettings::Token { token: None }, ..VaultSettings::default() },
        pki_mount_point: "pki".into(),
    };
    Arc::new(VaultUpstream::new(&cfg, TrustDomain::new("example.org").unwrap()).unwrap())
}

/// A CA CSR as the CA manager makes one (P-256, URI SAN = the trust domain).
fn ca_csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI("spiffe://example.org".try_into().unwrap())];
    p.serialize_request(&key).unwrap().der().to_vec()
}

/// Milliseconds per CA mint through Vault, `n` times after two warm-ups; sorted.
async fn ca_mint_times(up: &Arc<dyn UpstreamAuthority>, n: usize) -> Vec<f64> {
    let csr = ca_csr();
    for _ in 0..2 {
        up.mint_x509_ca(&csr, 86_400).await.unwrap();
    }
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        up.mint_x509_ca(&csr, 86_400).await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times
}

/// X509-SVIDs per second from `callers` tasks minting through a CA that Vault signed.
async fn cairn_rate(up: Arc<dyn UpstreamAuthority>, callers: usize, csrs: Arc<Vec<Vec<u8>>>) -> f64 {
    let m = common::ca_manager_under(Arc::new(MemoryKeyManager::new()), &format!("vault-{callers}"), Some(up)).await;
    common::mint_loop(m.ca(), callers, csrs, SECS).await
}

/// Leaf certificates per second from OpenBao's `pki/sign/svid`, `callers` keep-alive clients.
async fn openbao_rate(callers: usize, csrs: Arc<Vec<Vec<u8>>>) -> f64 {
    let addr = std::env::var("VAULT_ADDR").unwrap();
    let token = std::env::var("VAULT_TOKEN").unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..callers {
        let (count, csrs, addr, token) = (Arc::clone(&count), Arc::clone(&csrs), addr.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let http = plain_http();
            let mut i = t;
            while start.elapsed().as_secs_f64() < SECS {
                let pem = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", csrs[i % csrs.len()].clone()));
                let body = serde_json::json!({ "csr": pem, "uri_sans": format!("spiffe://example.org/w/{}", i % csrs.len()), "ttl": "1h" });
                let resp = http.post(format!("{addr}/v1/pki/sign/svid")).header("X-Vault-Token", &token).json(&body).send().await.unwrap();
                assert!(resp.status().is_success(), "{}", resp.text().await.unwrap_or_default());
                std::hint::black_box(resp.bytes().await.unwrap());
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

fn main() {
    assert!(
        std::env::var_os("VAULT_ADDR").is_some() && std::env::var_os("VAULT_TOKEN").is_some(),
        "run scripts/bench-vault.sh: it starts a throwaway OpenBao and sets VAULT_ADDR and VAULT_TOKEN"
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let up = upstream();
    let csrs = Arc::new(csrs(256));
    println!(
        "vault upstream against OpenBao {} ({} cores, {SECS} s per rate)",
        std::env::var("BAO_VERSION").unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    let times = rt.block_on(ca_mint_times(&up, 20));
    println!(
        "tier CA minted through pki/root/sign-intermediate (n=20): p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[times.len() - 1]
    );
    println!("{:<48} {:>10} {:>10}", "", "1 caller", "4 callers");
    // Interleaved, best of two rounds, so a noisy neighbour hits every figure alike.
    let mut best = [[0f64; 2]; 2];
    for _round in 0..2 {
        for (ci, callers) in [1usize, 4].into_iter().enumerate() {
            best[0][ci] = best[0][ci].max(rt.block_on(cairn_rate(Arc::clone(&up), callers, Arc::clone(&csrs))));
            best[1][ci] = best[1][ci].max(rt.block_on(openbao_rate(callers, Arc::clone(&csrs))));
        }
    }
    println!("{:<48} {:>10.0} {:>10.0}", "cairn X509-SVIDs/s under the Vault-signed CA", best[0][0], best[0][1]);
    println!("{:<48} {:>10.0} {:>10.0}", "OpenBao pki/sign leaf certificates/s", best[1][0], best[1][1]);
    println!("{:<48} {:>9.1}x {:>9.1}x", "cairn / OpenBao", best[0][0] / best[1][0], best[0][1] / best[1][1]);
}

/// A plain-HTTP keep-alive client (the bench's OpenBao listens on loopback without TLS; reqwest
/// is built without a TLS provider of its own, so it gets cairn's).
fn plain_http() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder().use_preconfigured_tls(tls).build().unwrap()
}
