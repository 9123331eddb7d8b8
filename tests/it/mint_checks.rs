#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! Admin minting (`MintX509SVID`, `MintJWTSVID`) applies SPIRE's checks: workload IDs of this
//! trust domain only (never `/spire/server` or an agent ID), DNS names as entries have them, and
//! CSR keys cairn cannot verify are named as unsupported rather than as bad signatures.

use crate::common;

use cairn::wire::pb::spire::api::server::{bundle::v1 as bundlepb, svid::v1 as svidpb};
use cairn::wire::pb::spire::api::types as pt;
use common::*;
use std::path::Path;
use std::process::Command;
use tonic::Code;

fn csr(uri: &str, dns: &[&str]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    for d in dns {
        p.subject_alt_names.push(rcgen::SanType::DnsName((*d).try_into().unwrap()));
    }
    p.serialize_request(&key).unwrap().der().to_vec()
}

fn jwt_req(td: &str, path: &str) -> svidpb::MintJwtsvidRequest {
    svidpb::MintJwtsvidRequest {
        id: Some(pt::Spiffeid { trust_domain: td.into(), path: path.into() }),
        audience: vec!["db".into()],
        ttl: 0,
    }
}

fn pem(der_certs: &[Vec<u8>]) -> String {
    use base64::Engine as _;
    der_certs
        .iter()
        .map(|d| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(d);
            let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
            format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
        })
        .collect()
}

async fn started(tmp: &Path) -> (TestServer, svidpb::svid_client::SvidClient<tonic::transport::Channel>, tonic::transport::Channel) {
    let s = tokio::task::block_in_place(|| TestServer::start(tmp, &ServerOpts::default()));
    let ch = cairn::cli::client::connect_admin(&s.socket).await.unwrap();
    (s, svidpb::svid_client::SvidClient::new(ch.clone()), ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_rpcs_refuse_reserved_and_foreign_ids_and_bad_dns_names_with_spires_codes() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let (_s, mut svid, ch) = started(tmp.path()).await;

    // IDs: SPIRE's VerifyTrustDomainWorkloadID, behind "CSR URI SAN is invalid" (X.509) and
    // "invalid SPIFFE ID" (JWT).
    let reserved = "path is in the reserved namespace";
    let id_cases = [
        ("example.org", "/spire/server", reserved),
        ("example.org", "/spire/agent/x", reserved),
        ("example.org", "/spire", reserved),
        ("other.org", "/w", "is not a member of trust domain \"example.org\""),
    ];
    for (td, path, why) in id_cases {
        let uri = format!("spiffe://{td}{path}");
        let err = svid.mint_x509svid(svidpb::MintX509svidRequest { csr: csr(&uri, &[]), ttl: 0 }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{uri}: {err:?}");
        assert!(err.message().starts_with("CSR URI SAN is invalid: "), "{uri}: {:?}", err.message());
        assert!(err.message().contains(why), "{uri}: {:?} lacks {why:?}", err.message());
        let err = svid.mint_jwtsvid(jwt_req(td, path)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{uri}: {err:?}");
        assert!(err.message().starts_with("invalid SPIFFE ID: "), "{uri}: {:?}", err.message());
        assert!(err.message().contains(why), "{uri}: {:?} lacks {why:?}", err.message());
    }

    // DNS names: SPIRE's x509util.ValidateLabel and CheckForWildcardOverlap.
    let label64 = format!("{}.example.org", "a".repeat(64));
    let name254 = format!("{}.{}.{}.{}.org", "a".repeat(62), "b".repeat(62), "c".repeat(62), "d".repeat(61));
    assert_eq!(name254.len(), 254);
    let dns_cases: [(&[&str], &str); 7] = [
        (&["a\0b.example.org"], "CSR DNS name is invalid"),
        (&["*"], "CSR DNS name is invalid"),
        (&["*.*.example.org"], "CSR DNS name is invalid"),
        (&["web.example.org."], "CSR DNS name is invalid"),
        (&[&label64], "CSR DNS name is invalid"),
        (&[&name254], "CSR DNS name is invalid"),
        (&["*.example.org", "a.example.org"], "CSR DNS name contains a wildcard that covers another non-wildcard name"),
    ];
    for (dns, msg) in dns_cases {
        let err = svid.mint_x509svid(svidpb::MintX509svidRequest { csr: csr("spiffe://example.org/w", dns), ttl: 0 }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{dns:?}: {err:?}");
        assert!(err.message().starts_with(msg), "{dns:?}: {:?} lacks {msg:?}", err.message());
    }

    // A normal workload SVID still works, wildcard included, and openssl verifies it.
    let mut bundle = bundlepb::bundle_client::BundleClient::new(ch);
    let roots: Vec<Vec<u8>> = bundle
        .get_bundle(bundlepb::GetBundleRequest::default())
        .await
        .unwrap()
        .into_inner()
        .x509_authorities
        .into_iter()
        .map(|c| c.asn1)
        .collect();
    let bundle_pem = tmp.path().join("bundle.pem");
    std::fs::write(&bundle_pem, pem(&roots)).unwrap();
    let ok = svid
        .mint_x509svid(svidpb::MintX509svidRequest {
            csr: csr("spiffe://example.org/w", &["web.example.org", "*.api.example.org"]),
            ttl: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    let leaf = tmp.path().join("leaf.pem");
    std::fs::write(&leaf, pem(&ok.cert_chain[..1])).unwrap();
    let (verified, text) =
        run(Command::new("openssl").args(["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile"]).arg(&bundle_pem).arg(&leaf));
    assert!(verified && text.contains(": OK"), "openssl verify failed: {text}");
    let ext = openssl_x509(&leaf, &["-subject", "-ext", "subjectAltName"]);
    assert!(ext.contains("DNS:web.example.org") && ext.contains("DNS:*.api.example.org"), "{ext}");
    assert!(ext.contains("CN=web.example.org") || ext.contains("CN = web.example.org"), "{ext}");
    assert!(svid.mint_jwtsvid(jwt_req("example.org", "/w")).await.is_ok());

    // A DNS name longer than a CN may be (RFC 5280: 64) is valid in the SAN, as in SPIRE, but
    // is not copied into the CN, which would make the subject non-conforming.
    let long = format!("{}.{}.example.org", "a".repeat(60), "b".repeat(30));
    assert!(long.len() > 64);
    let ok = svid
        .mint_x509svid(svidpb::MintX509svidRequest { csr: csr("spiffe://example.org/w", &[&long]), ttl: 0 })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    std::fs::write(&leaf, pem(&ok.cert_chain[..1])).unwrap();
    let ext = openssl_x509(&leaf, &["-subject", "-ext", "subjectAltName"]);
    assert!(ext.contains(&format!("DNS:{long}")), "{ext}");
    assert!(!ext.contains("CN"), "a CN longer than 64 characters was issued: {ext}");
}

/// A CSR made by openssl with `-newkey <spec>`, DER.
fn openssl_csr(dir: &Path, name: &str, newkey: &[&str]) -> Vec<u8> {
    let out = dir.join(format!("{name}.csr"));
    let (ok, text) = run(Command::new("openssl")
        .args(["req", "-new", "-nodes", "-subj", "/CN=w", "-addext", "subjectAltName=URI:spiffe://example.org/w", "-outform", "DER"])
        .args(newkey)
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(&out));
    assert!(ok, "openssl req {newkey:?} failed: {text}");
    std::fs::read(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_keys_cairn_cannot_verify_are_called_unsupported() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let (_s, mut svid, _) = started(tmp.path()).await;
    let p521 = openssl_csr(tmp.path(), "p521", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"]);
    let rsa1024 = openssl_csr(tmp.path(), "rsa1024", &["-newkey", "rsa:1024"]);
    for (csr, what) in [(p521, "EC P-521"), (rsa1024, "RSA 1024 bits")] {
        let err = svid.mint_x509svid(svidpb::MintX509svidRequest { csr, ttl: 0 }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(&format!("unsupported CSR key: {what}")), "{what}: {:?}", err.message());
        assert!(err.message().contains("supported: EC P-256, EC P-384, RSA 2048-8192 bits"), "{what}: {:?}", err.message());
    }
    // The supported kinds still mint.
    for (name, newkey) in
        [("rsa2048", &["-newkey", "rsa:2048"][..]), ("p384", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"][..])]
    {
        let csr = openssl_csr(tmp.path(), name, newkey);
        assert!(svid.mint_x509svid(svidpb::MintX509svidRequest { csr, ttl: 0 }).await.is_ok(), "{name}");
    }
}
