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

/// BatchNewX509SVID as an agent calls it, over mTLS with the agent's SVID, with 300 CSRs
/// mixing good requests, unknown and empty entry ids and malformed CSRs. The server splits a
/// batch this size across its cores; results must still come back one per request, in the
/// request's order: each good one an SVID for that entry's SPIFFE ID and that CSR's key, which
/// openssl verifies against the bundle, and each bad one SPIRE's code for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_mixed_batch_answers_each_csr_in_order() {
    use cairn::wire::pb::spire::api::server::{agent::v1 as agentpb, entry::v1 as entrypb};
    let tmp = tempfile::tempdir().unwrap();
    let (s, _, admin) = started(tmp.path()).await;
    let token = tokio::task::block_in_place(|| s.cli_ok(&["token", "generate", "-spiffeID", "spiffe://example.org/nodes/n1"]));
    let token = token.trim().strip_prefix("Token: ").unwrap().to_owned();
    // Attest as an agent would: join token and a CSR for the agent's own key.
    let agent_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&agent_key).unwrap().der().to_vec();
    let resp = common::agent::attest_with_join_token(&common::agent::bootstrap_channel(s.port), &token, csr).await.unwrap();
    let Some(agentpb::attest_agent_response::Step::Result(r)) = resp.step else { panic!("no attestation result") };
    let bundle = bundlepb::bundle_client::BundleClient::new(admin.clone())
        .get_bundle(bundlepb::GetBundleRequest::default())
        .await
        .unwrap()
        .into_inner();
    let roots: Vec<Vec<u8>> = bundle.x509_authorities.iter().map(|a| a.asn1.clone()).collect();
    let identity = cairn::agent::client::ClientIdentity {
        chain: r.svid.unwrap().cert_chain,
        key_pkcs8: std::sync::Arc::new(zeroize::Zeroizing::new(agent_key.serialize_der())),
    };
    let agent = cairn::agent::client::connect(
        &format!("127.0.0.1:{}", s.port),
        cairn::agent::client::ServerTrust::Roots(roots.clone()),
        cairn::spiffe::SpiffeId::new("spiffe://example.org/spire/server").unwrap(),
        Some(&identity),
    )
    .unwrap();

    // 40 entries under the agent's node alias.
    let entries: Vec<pt::Entry> = (0..40)
        .map(|i| pt::Entry {
            parent_id: Some(pt::Spiffeid { trust_domain: "example.org".into(), path: "/nodes/n1".into() }),
            spiffe_id: Some(pt::Spiffeid { trust_domain: "example.org".into(), path: format!("/batch/{i}") }),
            selectors: vec![pt::Selector { r#type: "unix".into(), value: format!("uid:{}", 5000 + i) }],
            ..Default::default()
        })
        .collect();
    let created = entrypb::entry_client::EntryClient::new(admin)
        .batch_create_entry(entrypb::BatchCreateEntryRequest { entries, output_mask: None })
        .await
        .unwrap()
        .into_inner()
        .results;
    let ids: Vec<(String, String)> = created
        .iter()
        .map(|r| {
            let e = r.entry.as_ref().unwrap();
            let id = e.spiffe_id.as_ref().unwrap();
            (e.id.clone(), format!("spiffe://{}{}", id.trust_domain, id.path))
        })
        .collect();

    // What each request is, and what it must get.
    enum Want {
        Svid { spiffe_id: String, key: rcgen::KeyPair },
        Code(i32),
    }
    let mut params = Vec::new();
    let mut wants = Vec::new();
    for i in 0..300usize {
        let (entry_id, spiffe_id) = &ids[(i * 7) % ids.len()];
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap().der().to_vec();
        let (entry_id, csr, want) = match i % 5 {
            1 => (format!("no-such-entry-{i}"), csr, Want::Code(Code::NotFound as i32)),
            2 => (String::new(), csr, Want::Code(Code::InvalidArgument as i32)),
            3 => (entry_id.clone(), csr[..csr.len() / 2].to_vec(), Want::Code(Code::InvalidArgument as i32)),
            _ => (entry_id.clone(), csr, Want::Svid { spiffe_id: spiffe_id.clone(), key }),
        };
        params.push(svidpb::NewX509svidParams { entry_id, csr });
        wants.push(want);
    }
    let results = svidpb::svid_client::SvidClient::new(agent)
        .batch_new_x509svid(svidpb::BatchNewX509svidRequest { params })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), wants.len(), "one result per request");
    let ca = tmp.path().join("bundle.pem");
    std::fs::write(&ca, pem(&roots)).unwrap();
    let mut verified = 0;
    for (i, (r, want)) in results.iter().zip(&wants).enumerate() {
        let code = r.status.as_ref().map(|s| s.code);
        match want {
            Want::Code(c) => assert_eq!((code, r.svid.is_some()), (Some(*c), false), "request {i}: {:?}", r.status),
            Want::Svid { spiffe_id, key } => {
                assert_eq!(code, Some(0), "request {i}: {:?}", r.status);
                let leaf = &r.svid.as_ref().unwrap().cert_chain[0];
                let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
                let uris: Vec<String> = cert
                    .subject_alternative_name()
                    .unwrap()
                    .unwrap()
                    .value
                    .general_names
                    .iter()
                    .filter_map(|g| if let x509_parser::extensions::GeneralName::URI(u) = g { Some((*u).to_owned()) } else { None })
                    .collect();
                assert_eq!(uris, std::slice::from_ref(spiffe_id), "request {i} got another entry's SVID");
                assert_eq!(
                    cert.public_key().raw,
                    rcgen::PublicKeyData::subject_public_key_info(key).as_slice(),
                    "request {i} got an SVID for another CSR's key"
                );
                if i % 50 == 0 {
                    let leaf_pem = tmp.path().join(format!("leaf{i}.pem"));
                    std::fs::write(&leaf_pem, pem(std::slice::from_ref(leaf))).unwrap();
                    let out = Command::new("openssl").arg("verify").arg("-CAfile").arg(&ca).arg(&leaf_pem).output().unwrap();
                    assert!(out.status.success(), "openssl verify: {}", String::from_utf8_lossy(&out.stderr));
                    verified += 1;
                }
            }
        }
    }
    assert!(verified >= 3, "openssl checked {verified} SVIDs");
}
