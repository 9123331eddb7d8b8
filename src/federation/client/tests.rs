//! The refresher against a foreign endpoint that misbehaves: a real TLS server on loopback
//! that is down, slow, serves garbage, an endless body, or another trust domain's bundle.
//! Each poll ends within its bounds with a clear error, and the stored bundle stays as it was.

use super::*;
use crate::datastore::sql::SqliteDatastore;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn td(s: &str) -> TrustDomain {
    TrustDomain::new(s).unwrap()
}

/// A self-signed CA whose URI SAN names `name`.
fn root_for(name: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.subject_alt_names = vec![rcgen::SanType::URI(format!("spiffe://{name}").try_into().unwrap())];
    p.self_signed(&key).unwrap().der().to_vec()
}

fn bundle_json(of: &str, named: &str, seq: u64) -> Vec<u8> {
    Bundle {
        trust_domain: td(of),
        x509_authorities: vec![root_for(named)],
        jwt_authorities: vec![],
        refresh_hint: Some(60),
        sequence_number: seq,
        tainted_x509: vec![],
    }
    .to_spiffe_json()
    .into_bytes()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Good,
    Slow,
    Garbage,
    Endless,
    HugeDeclared,
    OtherDomain,
    NotFound,
}

/// A TLS server for `localhost` answering per `mode`; returns its port and CA certificate.
async fn stub(mode: Arc<std::sync::Mutex<Mode>>, good: Arc<std::sync::Mutex<Vec<u8>>>, hits: Arc<AtomicUsize>) -> (u16, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
    let der = cert.der().to_vec();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone().into()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let (acceptor, mode, good, hits) = (acceptor.clone(), Arc::clone(&mode), Arc::clone(&good), Arc::clone(&hits));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else { return };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let m = *mode.lock().unwrap();
                let body: Vec<u8> = match m {
                    Mode::Good => good.lock().unwrap().clone(),
                    Mode::OtherDomain => bundle_json("partner.test", "evil.test", 9),
                    Mode::Garbage => b"<html>not a bundle</html>".to_vec(),
                    _ => Vec::new(),
                };
                let _ = match m {
                    Mode::Slow => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        Ok(())
                    }
                    Mode::NotFound => tls.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await,
                    Mode::HugeDeclared => tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\nConnection: close\r\n\r\n").await,
                    Mode::Endless => {
                        // No length: the body runs until the connection closes; 100 MB of it.
                        let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").await;
                        let chunk = vec![b'{'; 1 << 16];
                        for _ in 0..1600 {
                            if tls.write_all(&chunk).await.is_err() {
                                break;
                            }
                        }
                        Ok(())
                    }
                    _ => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = tls.write_all(head.as_bytes()).await;
                        tls.write_all(&body).await
                    }
                };
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, der)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_endpoint_is_bounded_and_loses_nothing() {
    let ds: Arc<dyn Datastore> = Arc::new(SqliteDatastore::connect("sqlite::memory:").await.unwrap());
    let mode = Arc::new(std::sync::Mutex::new(Mode::Good));
    let good = Arc::new(std::sync::Mutex::new(bundle_json("partner.test", "partner.test", 1)));
    let hits = Arc::new(AtomicUsize::new(0));
    let (port, ca) = stub(Arc::clone(&mode), Arc::clone(&good), Arc::clone(&hits)).await;
    let rel = Relationship {
        trust_domain: td("partner.test"),
        bundle_endpoint_url: format!("https://localhost:{port}"),
        profile: ClientProfile::HttpsWeb,
    };
    let limits = Limits { connect: Duration::from_secs(2), total: Duration::from_secs(2), max_body: MAX_BUNDLE_BYTES };
    let r = Refresher::with_limits(Arc::clone(&ds), vec![rel.clone()], limits, Some(vec![ca]));

    // A good bundle is stored once; the same bundle again changes nothing.
    assert!(r.refresh(&rel).await.unwrap());
    assert!(!r.refresh(&rel).await.unwrap());
    let kept = ds.get_bundle(&td("partner.test")).await.unwrap().unwrap();

    for (m, says) in [
        (Mode::Slow, "timed out"),
        (Mode::Garbage, "refused"),
        (Mode::Endless, "larger than"),
        (Mode::HugeDeclared, "larger than"),
        (Mode::OtherDomain, "evil.test"),
        (Mode::NotFound, "404"),
    ] {
        *mode.lock().unwrap() = m;
        let started = std::time::Instant::now();
        let err = r.refresh(&rel).await.unwrap_err().to_string();
        assert!(err.contains(says), "{m:?}: {err}");
        assert!(started.elapsed() < Duration::from_secs(10), "{m:?} took {:?}", started.elapsed());
        assert_eq!(ds.get_bundle(&td("partner.test")).await.unwrap().unwrap(), kept, "{m:?} changed the stored bundle");
    }

    // Down: a port nobody listens on.
    let down = Relationship { bundle_endpoint_url: format!("https://localhost:{}", free_port()), ..rel.clone() };
    let err = r.refresh(&down).await.unwrap_err().to_string();
    assert!(err.contains("onnection refused"), "{err}");
    assert_eq!(ds.get_bundle(&td("partner.test")).await.unwrap().unwrap(), kept);

    // A poll records the failure and retries soon; a good answer again clears it and stores.
    *mode.lock().unwrap() = Mode::Garbage;
    r.reconcile().await.unwrap();
    let wait = r.poll(&rel).await;
    assert_eq!(wait, RETRY_FIRST);
    let st = r.status();
    assert_eq!(st[0].consecutive_failures, 1);
    assert!(st[0].last_error.as_deref().unwrap_or_default().contains("refused"));
    *good.lock().unwrap() = bundle_json("partner.test", "partner.test", 2);
    *mode.lock().unwrap() = Mode::Good;
    r.poll(&rel).await;
    let st = r.status();
    assert_eq!((st[0].consecutive_failures, st[0].sequence), (0, 2));
    assert!(st[0].last_error.is_none() && st[0].last_refresh > 0);
    assert!(hits.load(Ordering::SeqCst) >= 9);
}

#[test]
fn intervals_follow_the_hint_with_floors() {
    let b = |hint| Bundle {
        trust_domain: td("example.org"),
        x509_authorities: vec![],
        jwt_authorities: vec![],
        refresh_hint: hint,
        sequence_number: 1,
        tainted_x509: vec![],
    };
    assert_eq!(refresh_interval(None), 60);
    assert_eq!(refresh_interval(Some(&b(Some(300)))), 75);
    assert_eq!(refresh_interval(Some(&b(Some(5)))), 15);
    assert_eq!(refresh_interval(Some(&b(None))), 15);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Relationships stored through the Trust Domain API join the configured ones; the config file
/// wins for a trust domain in both; a deleted one is no longer managed; refreshing an unknown
/// trust domain says so.
#[tokio::test]
async fn stored_relationships_are_managed_beside_configured_ones() {
    let ds: Arc<dyn Datastore> = Arc::new(SqliteDatastore::connect("sqlite::memory:").await.unwrap());
    let rel = |t: &str, url: &str| Relationship { trust_domain: td(t), bundle_endpoint_url: url.into(), profile: ClientProfile::HttpsWeb };
    let configured = rel("both.test", "https://from-config.test/");
    let r = Refresher::new(Arc::clone(&ds), vec![configured.clone()]);
    ds.create_federation_relationship(&rel("stored.test", "https://stored.test/"), None).await.unwrap();
    ds.create_federation_relationship(&rel("both.test", "https://from-api.test/"), None).await.unwrap();

    let (started, stopped) = r.reconcile().await.unwrap();
    assert_eq!((started.len(), stopped.len()), (2, 0));
    assert_eq!(r.relationship(&td("both.test")), Some(configured), "the config file wins");
    assert!(r.relationship(&td("stored.test")).is_some());
    assert_eq!(r.status().len(), 2);
    assert_eq!(r.reconcile().await.unwrap(), (vec![], vec![]), "nothing changed, nothing restarts");

    let moved = rel("stored.test", "https://moved.test/");
    ds.update_federation_relationship(&moved, None).await.unwrap();
    assert_eq!(r.reconcile().await.unwrap().0, vec![moved.clone()], "a changed relationship restarts");
    ds.delete_federation_relationship(&td("stored.test")).await.unwrap();
    assert_eq!(r.reconcile().await.unwrap().1, vec![td("stored.test")]);
    assert!(r.relationship(&td("stored.test")).is_none());
    assert!(matches!(r.refresh_now(&td("stored.test")).await, Err(RefreshNowError::NotManaged(_))));
    // A relationship an on-demand refresh sees first is still started by the run loop.
    let fresh = rel("fresh.test", "https://fresh.test/");
    ds.create_federation_relationship(&fresh, None).await.unwrap();
    assert!(r.refresh_now(&td("fresh.test")).await.is_err(), "nothing answers at fresh.test");
    assert_eq!(r.reconcile().await.unwrap().0, vec![fresh], "the refresh left starting its loop to the run loop");
    let err = r.refresh_now(&td("both.test")).await.unwrap_err().to_string();
    assert!(err.contains("from-config.test"), "the refresh polled the configured URL: {err}");
}
