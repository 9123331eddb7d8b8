#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! The TLS gRPC port: the server presents spiffe://<td>/spire/server (checked by openssl),
//! negotiates h2, serves GetBundle to anyone and admin RPCs only to admin SVIDs.

use crate::common;

use cairn::wire::pb::spire::api::server::{bundle::v1 as bundlepb, entry::v1 as entrypb};
use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use tonic::Code;

/// Accepts a server whose chain verifies against `roots` and whose SPIFFE ID is the server's.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Vec<Vec<u8>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.to_vec()];
        chain.extend(intermediates.iter().map(|c| c.to_vec()));
        cairn::spiffe::verify_chain(&chain, &self.roots, cairn::now_unix()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let id = cairn::spiffe::leaf_spiffe_id(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if id.as_str() != "spiffe://example.org/spire/server" {
            return Err(rustls::Error::General(format!("unexpected server {id}")));
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn pem_certs(path: &Path) -> Vec<Vec<u8>> {
    cairn::spiffe::parse_pem_certs(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn channel(
    port: u16,
    roots: Vec<Vec<u8>>,
    client: Option<(&Path, &Path)>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier { roots, provider }));
    let mut cfg = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = pem_certs(cert).into_iter().map(CertificateDer::from).collect();
            let key_pem = std::fs::read_to_string(key).unwrap();
            let der = pem::parse(key_pem).unwrap().into_contents();
            builder.with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(der.into())).unwrap()
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    tonic::transport::Endpoint::try_from(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                let tls = connector.connect(ServerName::try_from("spire-server").unwrap(), tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
}

#[test]
fn openssl_sees_the_server_svid_and_h2() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(tmp.path(), &ServerOpts::default());
    let bundle = tmp.path().join("bundle.pem");
    std::fs::write(&bundle, s.cli_ok(&["bundle", "show"])).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo | openssl s_client -connect 127.0.0.1:{} -CAfile {} -alpn h2 -verify_return_error -showcerts 2>&1",
            s.port,
            bundle.display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    let leaf = text.split("-----END CERTIFICATE-----").next().unwrap();
    let leaf_path = tmp.path().join("server.pem");
    std::fs::write(&leaf_path, format!("{}-----END CERTIFICATE-----\n", &leaf[leaf.find("-----BEGIN").unwrap()..])).unwrap();
    let ext = openssl_x509(&leaf_path, &["-ext", "subjectAltName,basicConstraints"]);
    assert!(ext.contains("URI:spiffe://example.org/spire/server") && ext.contains("CA:FALSE") && !ext.contains("DNS:"), "{ext}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rpcs_need_an_admin_svid_and_get_bundle_is_open() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = ServerOpts { extra_server: "admin_ids = [\"spiffe://example.org/admin\"]".into(), ..ServerOpts::default() };
    let s = tokio::task::block_in_place(|| TestServer::start(tmp.path(), &opts));
    let bundle = tmp.path().join("bundle.pem");
    std::fs::write(&bundle, s.cli_ok(&["bundle", "show"])).unwrap();
    let roots = pem_certs(&bundle);
    for (name, id) in [("admin", "spiffe://example.org/admin"), ("other", "spiffe://example.org/other")] {
        s.cli_ok(&["x509", "mint", "-spiffeID", id, "-write", tmp.path().join(name).to_str().unwrap()]);
    }

    // No client certificate: GetBundle works, admin RPCs are denied.
    let anon = channel(s.port, roots.clone(), None).await.unwrap();
    let b = bundlepb::bundle_client::BundleClient::new(anon.clone())
        .get_bundle(bundlepb::GetBundleRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.x509_authorities.len(), 1);
    let err =
        entrypb::entry_client::EntryClient::new(anon.clone()).count_entries(entrypb::CountEntriesRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("/spire.api.server.entry.v1.Entry/CountEntries"), "{err:?}");

    // An SVID that is not an admin: denied. The admin SVID: allowed.
    let other =
        channel(s.port, roots.clone(), Some((&tmp.path().join("other/svid.pem"), &tmp.path().join("other/key.pem")))).await.unwrap();
    let err = entrypb::entry_client::EntryClient::new(other).count_entries(entrypb::CountEntriesRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let admin =
        channel(s.port, roots.clone(), Some((&tmp.path().join("admin/svid.pem"), &tmp.path().join("admin/key.pem")))).await.unwrap();
    let n = entrypb::entry_client::EntryClient::new(admin)
        .count_entries(entrypb::CountEntriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, 0);

    // A client certificate from another CA fails the handshake.
    let other_dir = tempfile::tempdir().unwrap();
    let s2 = tokio::task::block_in_place(|| TestServer::start(other_dir.path(), &ServerOpts::default()));
    s2.cli_ok(&["x509", "mint", "-spiffeID", "spiffe://example.org/admin", "-write", other_dir.path().join("foreign").to_str().unwrap()]);
    let foreign =
        channel(s.port, roots, Some((&other_dir.path().join("foreign/svid.pem"), &other_dir.path().join("foreign/key.pem")))).await;
    let refused = match foreign {
        Err(_) => true,
        Ok(ch) => bundlepb::bundle_client::BundleClient::new(ch).get_bundle(bundlepb::GetBundleRequest::default()).await.is_err(),
    };
    assert!(refused, "a client certificate from another CA must be refused");
}

/// Admin and downstream rights granted by an entry end when the entry expires, even though the
/// entry is still in the datastore (it has not been pruned yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_admin_or_downstream_entry_grants_nothing() {
    use cairn::wire::pb::spire::api::server::svid::v1 as svidpb;
    let tmp = tempfile::tempdir().unwrap();
    let s = tokio::task::block_in_place(|| TestServer::start(tmp.path(), &ServerOpts::default()));
    let bundle = tmp.path().join("bundle.pem");
    std::fs::write(&bundle, s.cli_ok(&["bundle", "show"])).unwrap();
    let roots = pem_certs(&bundle);
    let parent = "spiffe://example.org/spire/server";
    for (name, flag, expiry) in [
        ("expired-admin", "-admin", "1000"),
        ("live-admin", "-admin", "0"),
        ("expired-ds", "-downstream", "1000"),
        ("live-ds", "-downstream", "0"),
    ] {
        let id = format!("spiffe://example.org/{name}");
        let mut args = vec!["entry", "create", "-parentID", parent, "-spiffeID", &id, "-selector", "unix:uid:4242", flag];
        if expiry != "0" {
            args.extend(["-entryExpiry", expiry]);
        }
        s.cli_ok(&args);
        s.cli_ok(&["x509", "mint", "-spiffeID", &id, "-write", tmp.path().join(name).to_str().unwrap()]);
    }
    let ch = |name: &str| {
        let (cert, key) = (tmp.path().join(name).join("svid.pem"), tmp.path().join(name).join("key.pem"));
        let roots = roots.clone();
        async move { channel(s.port, roots, Some((&cert, &key))).await.unwrap() }
    };
    let count = |c| async move { entrypb::entry_client::EntryClient::new(c).count_entries(entrypb::CountEntriesRequest::default()).await };
    assert_eq!(count(ch("live-admin").await).await.unwrap().into_inner().count, 4, "a live admin entry is admin");
    let err = count(ch("expired-admin").await).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "an admin entry that expired in 1970 still grants admin: {err:?}");

    let csr = rcgen::CertificateParams::default()
        .serialize_request(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap())
        .unwrap()
        .der()
        .to_vec();
    let downstream_ca = |name: &'static str| {
        let csr = csr.clone();
        let ch = ch(name);
        async move {
            svidpb::svid_client::SvidClient::new(ch.await)
                .new_downstream_x509ca(svidpb::NewDownstreamX509caRequest { csr, preferred_ttl: 0 })
                .await
        }
    };
    let ca = downstream_ca("live-ds").await.unwrap().into_inner();
    assert!(!ca.ca_cert_chain.is_empty(), "a live downstream entry gets a CA");
    let err = downstream_ca("expired-ds").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "a downstream entry that expired in 1970 still grants a CA: {err:?}");
}
