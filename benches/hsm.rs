//! X509-SVID minting with the CA key on a PKCS#11 token (SoftHSM2) against the token's raw
//! CKM_ECDSA sign rate through cryptoki, and against a CA key in memory, in one run, with 1 and
//! 16 concurrent callers. Run with `scripts/bench-hsm.sh`, which makes a throwaway token and
//! sets SOFTHSM2_CONF. Prints figures and ratios; asserts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "benchmark driver")]

mod common;
use common::csrs;

use cairn::keymanager::pkcs11::{PinSource, Pkcs11Config, Pkcs11KeyManager, TokenConfig};
use cairn::keymanager::{KeyManager, KeyType, MemoryKeyManager};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SECS: f64 = 3.0;
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "cairn-bench";
const PIN: &str = "1234";

/// Raw CKM_ECDSA signatures per second through cryptoki: `callers` threads, each with its
/// own session, signing SHA-256 digests with one P-256 key made here.
fn raw_rate(callers: usize) -> f64 {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    let ctx = cryptoki::context::Pkcs11::new(MODULE).unwrap();
    let _ = ctx.initialize(cryptoki::context::CInitializeArgs::new(cryptoki::context::CInitializeFlags::OS_LOCKING_OK));
    let slot =
        ctx.get_slots_with_token().unwrap().into_iter().find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN).unwrap();
    let anchor = ctx.open_rw_session(slot).unwrap();
    let _ = anchor.login(cryptoki::session::UserType::User, Some(&cryptoki::types::AuthPin::from(PIN)));
    let label = b"raw-bench".to_vec();
    let key = match anchor.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(label.clone())]).unwrap().first() {
        Some(k) => *k,
        None => {
            let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
            let public = [Attribute::Token(true), Attribute::EcParams(p256), Attribute::Label(label.clone()), Attribute::Verify(true)];
            let private = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Sign(true),
                Attribute::Label(label),
            ];
            anchor.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private).unwrap().1
        }
    };
    let digest = [7u8; 32];
    let count = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..callers {
            let (ctx, count) = (ctx.clone(), Arc::clone(&count));
            scope.spawn(move || {
                let session = ctx.open_rw_session(slot).unwrap();
                while start.elapsed().as_secs_f64() < SECS {
                    std::hint::black_box(session.sign(&Mechanism::Ecdsa, key, &digest).unwrap());
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// `f()`'s rate per second and its CPU microseconds per operation, given that `f` returns how
/// many operations it did.
fn rate_and_cpu(f: impl FnOnce() -> usize) -> (f64, f64) {
    let (cpu0, start) = (common::cpu_seconds(None), Instant::now());
    let n = f() as f64;
    (n / start.elapsed().as_secs_f64(), (common::cpu_seconds(None) - cpu0) * 1e6 / n)
}

/// CPU microseconds to check one CSR's signature (aws-lc, as the mint path does): work every
/// mint does besides the token's signature, on the same cores SoftHSM signs on.
fn csr_check_cpu(csrs: &[Vec<u8>]) -> f64 {
    rate_and_cpu(|| {
        let n = 20_000;
        for i in 0..n {
            std::hint::black_box(cairn::pki::Csr::parse(&csrs[i % csrs.len()]).unwrap());
        }
        n
    })
    .1
}

/// Certificate signatures per second through cairn's key seam (`rcgen::SigningKey::sign` on
/// the token key: digest, C_Sign on a pooled session, r||s to DER), `callers` threads, no
/// async runtime: what the seam costs over the raw call.
fn seam_rate(key: &Arc<dyn cairn::keymanager::Key>, callers: usize) -> f64 {
    let count = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..callers {
            let (key, count) = (Arc::clone(key), Arc::clone(&count));
            scope.spawn(move || {
                while start.elapsed().as_secs_f64() < SECS {
                    std::hint::black_box(
                        rcgen::SigningKey::sign(key.as_ref(), b"to be signed: a certificate body of some length").unwrap(),
                    );
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// X509-SVIDs per second from `callers` tasks minting through the CA (the RPC's work: parse
/// and verify the CSR, build, sign), with the CA key in `km`.
async fn mint_rate(km: Arc<dyn KeyManager>, callers: usize, csrs: Arc<Vec<Vec<u8>>>) -> f64 {
    let m = common::ca_manager(km, &format!("bench-{callers}")).await;
    common::mint_loop(m.ca(), callers, csrs, SECS).await
}

fn main() {
    assert!(
        std::env::var_os("SOFTHSM2_CONF").is_some(),
        "run scripts/bench-hsm.sh: it makes a throwaway SoftHSM2 token and sets SOFTHSM2_CONF"
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let csrs = Arc::new(csrs(256));
    let hsm: Arc<dyn KeyManager> = Arc::new(
        Pkcs11KeyManager::open(&Pkcs11Config {
            token: TokenConfig {
                module_path: MODULE.into(),
                token_label: TOKEN.into(),
                pin: PinSource::Value(zeroize::Zeroizing::new(PIN.into())),
                // BENCH_HSM_MAX_SESSIONS tries another session cap than the default.
                max_sessions: std::env::var("BENCH_HSM_MAX_SESSIONS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(cairn::keymanager::pkcs11::DEFAULT_MAX_SESSIONS),
            },
            key_label_prefix: "bench:".into(),
        })
        .unwrap(),
    );
    println!(
        "X509-SVID minting with the CA key on SoftHSM2 vs its raw CKM_ECDSA rate (P-256, {SECS} s per figure, {} cores)",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    println!("{:<44} {:>12} {:>12}", "", "1 caller", "16 callers");
    let mut rows = Vec::new();
    // Interleaved, best of two rounds each, so a noisy neighbour hits every figure alike.
    let seam_key = rt.block_on(hsm.generate_key("seam-bench", KeyType::EcP256)).unwrap();
    // What bounds the ratio on this host: SoftHSM signs on the same cores, so a mint costs at
    // least one CSR check plus one C_Sign of CPU. One raw caller keeps exactly one core busy.
    let verify_us = csr_check_cpu(&csrs);
    let (raw1, sign_us) = {
        let (cpu0, r) = (common::cpu_seconds(None), raw_rate(1));
        (r, (common::cpu_seconds(None) - cpu0) * 1e6 / (r * SECS))
    };
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    let ceiling = (cores * 1e6 / (verify_us + sign_us)).min(raw1);
    let mut best = [[0f64; 2]; 4];
    for _round in 0..2 {
        for (ci, callers) in [1usize, 16].into_iter().enumerate() {
            best[0][ci] = best[0][ci].max(raw_rate(callers));
            best[3][ci] = best[3][ci].max(seam_rate(&seam_key, callers));
            best[1][ci] = best[1][ci].max(rt.block_on(mint_rate(Arc::clone(&hsm), callers, Arc::clone(&csrs))));
            best[2][ci] = best[2][ci].max(rt.block_on(mint_rate(Arc::new(MemoryKeyManager::new()), callers, Arc::clone(&csrs))));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for (name, r) in [
        ("raw C_Sign (cryptoki, session per thread)/s", best[0]),
        ("cairn key seam signatures/s (threads)", best[3]),
        ("cairn X509-SVIDs/s, CA key on SoftHSM", best[1]),
        ("cairn X509-SVIDs/s, CA key in memory", best[2]),
    ] {
        println!("{name:<44} {:>12.0} {:>12.0}", r[0], r[1]);
        rows.push(r);
    }
    println!(
        "{:<44} {:>11.0}% {:>11.0}%",
        "key seam / raw HSM sign rate",
        100.0 * best[3][0] / best[0][0],
        100.0 * best[3][1] / best[0][1]
    );
    println!(
        "{:<44} {:>11.0}% {:>11.0}%",
        "cairn with HSM / raw HSM sign rate",
        100.0 * best[1][0] / best[0][0],
        100.0 * best[1][1] / best[0][1]
    );
    println!(
        "{:<44} {:>11.0}% {:>11.0}%",
        "cairn with HSM / cairn with memory key",
        100.0 * best[1][0] / best[2][0],
        100.0 * best[1][1] / best[2][1]
    );
    println!("CPU per operation: CSR check {verify_us:.1} us, raw C_Sign {sign_us:.1} us (1 caller, {raw1:.0}/s); a mint needs both");
    println!(
        "ceiling for mints with SoftHSM on these {cores} cores: {ceiling:.0}/s = {:.0}% of raw; cairn reached {:.0}% of that ceiling (16 callers)",
        100.0 * ceiling / best[0][1],
        100.0 * best[1][1] / ceiling
    );
}
