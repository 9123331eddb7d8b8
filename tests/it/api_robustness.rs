#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! Garbage, truncated and oversized requests to each RPC over the admin socket: each gets a
//! clear error with the right code, nothing is stored, and the server keeps serving.

use crate::common;

use cairn::wire::pb::spire::api::server::{agent::v1 as agentpb, bundle::v1 as bundlepb, entry::v1 as entrypb, svid::v1 as svidpb};
use cairn::wire::pb::spire::api::types as pt;
use common::*;
use tonic::Code;

fn id(td: &str, path: &str) -> Option<pt::Spiffeid> {
    Some(pt::Spiffeid { trust_domain: td.into(), path: path.into() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = tokio::task::block_in_place(|| TestServer::start(tmp.path(), &ServerOpts::default()));
    let ch = cairn::cli::client::connect_admin(&s.socket).await.unwrap();
    let mut svid = svidpb::svid_client::SvidClient::new(ch.clone());
    let mut entry = entrypb::entry_client::EntryClient::new(ch.clone());
    let mut bundle = bundlepb::bundle_client::BundleClient::new(ch.clone());
    let mut agent = agentpb::agent_client::AgentClient::new(ch.clone());
    let bundle_before = bundle.get_bundle(bundlepb::GetBundleRequest::default()).await.unwrap().into_inner();

    // MintX509SVID: empty, garbage, truncated, oversized CSRs.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI("spiffe://example.org/w".try_into().unwrap())];
    let good_csr = p.serialize_request(&key).unwrap().der().to_vec();
    let mut two_uris = p.clone();
    two_uris.subject_alt_names.push(rcgen::SanType::URI("spiffe://example.org/x".try_into().unwrap()));
    let two_uri_csr = two_uris.serialize_request(&key).unwrap().der().to_vec();
    let mut bad_sig = good_csr.clone();
    let last = bad_sig.len() - 3;
    bad_sig[last] ^= 0xff;
    let cases: Vec<(Vec<u8>, i32, Code, &str)> = vec![
        (vec![], 0, Code::InvalidArgument, "missing CSR"),
        (b"garbage".to_vec(), 0, Code::InvalidArgument, "malformed CSR"),
        (good_csr[..good_csr.len() / 2].to_vec(), 0, Code::InvalidArgument, "malformed CSR"),
        (bad_sig, 0, Code::InvalidArgument, "CSR"),
        (two_uri_csr, 0, Code::InvalidArgument, "exactly one URI SAN"),
        (vec![0x30; 20_000], 0, Code::InvalidArgument, "at most"),
        (good_csr.clone(), -5, Code::InvalidArgument, "ttl"),
    ];
    for (csr, ttl, code, msg) in cases {
        let err = svid.mint_x509svid(svidpb::MintX509svidRequest { csr, ttl }).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(msg), "{msg:?} not in {:?}", err.message());
    }
    // Over the message size limit: refused by the transport, server unharmed.
    let err = svid.mint_x509svid(svidpb::MintX509svidRequest { csr: vec![0u8; 5 * 1024 * 1024], ttl: 0 }).await.unwrap_err();
    assert!(matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange | Code::Internal | Code::Unknown), "{err:?}");
    assert!(svid.mint_x509svid(svidpb::MintX509svidRequest { csr: good_csr.clone(), ttl: 0 }).await.is_ok());

    // MintJWTSVID.
    for (req, msg) in [
        (svidpb::MintJwtsvidRequest { id: None, audience: vec!["a".into()], ttl: 0 }, "SPIFFE ID"),
        (svidpb::MintJwtsvidRequest { id: id("example.org", "/w"), audience: vec![], ttl: 0 }, "audience"),
        (svidpb::MintJwtsvidRequest { id: id("example.org", "/w"), audience: vec![String::new()], ttl: 0 }, "audience"),
        (svidpb::MintJwtsvidRequest { id: id("example.org", "/w"), audience: vec!["a".into(); 10_000], ttl: 0 }, "too many audiences"),
        (svidpb::MintJwtsvidRequest { id: id("Example.org", "/w"), audience: vec!["a".into()], ttl: 0 }, "trust domain"),
        (svidpb::MintJwtsvidRequest { id: id("example.org", "w"), audience: vec!["a".into()], ttl: 0 }, "leading slash"),
        (svidpb::MintJwtsvidRequest { id: id("example.org", "/a/../b"), audience: vec!["a".into()], ttl: 0 }, "invalid"),
    ] {
        let err = svid.mint_jwtsvid(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(msg), "{msg:?} not in {:?}", err.message());
    }

    // Entries: per-item results, nothing stored for the bad ones.
    let bad_entries = vec![
        pt::Entry::default(),
        pt::Entry { spiffe_id: id("example.org", "/w"), parent_id: id("example.org", "/agent"), ..Default::default() },
        pt::Entry {
            spiffe_id: id("example.org", "/w"),
            parent_id: id("example.org", "/agent"),
            selectors: vec![pt::Selector { r#type: "unix:x".into(), value: "1".into() }],
            ..Default::default()
        },
        pt::Entry {
            spiffe_id: id("example.org", "/w"),
            parent_id: id("example.org", "/agent"),
            selectors: vec![pt::Selector { r#type: "unix".into(), value: "uid:1".into() }],
            hint: "h".repeat(2000),
            ..Default::default()
        },
        pt::Entry {
            id: "bad id with spaces".into(),
            spiffe_id: id("example.org", "/w"),
            parent_id: id("example.org", "/agent"),
            selectors: vec![pt::Selector { r#type: "unix".into(), value: "uid:1".into() }],
            ..Default::default()
        },
    ];
    let n = bad_entries.len();
    let res =
        entry.batch_create_entry(entrypb::BatchCreateEntryRequest { entries: bad_entries, output_mask: None }).await.unwrap().into_inner();
    assert_eq!(res.results.len(), n);
    for r in &res.results {
        let st = r.status.as_ref().unwrap();
        assert_eq!(st.code, Code::InvalidArgument as i32, "{st:?}");
        assert!(!st.message.is_empty());
    }
    assert_eq!(entry.count_entries(entrypb::CountEntriesRequest::default()).await.unwrap().into_inner().count, 0);
    let err = entry.get_entry(entrypb::GetEntryRequest { id: String::new(), output_mask: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = entry.get_entry(entrypb::GetEntryRequest { id: "nope".into(), output_mask: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = entry
        .list_entries(entrypb::ListEntriesRequest { page_token: "garbage".into(), page_size: 1, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let res =
        entry.batch_delete_entry(entrypb::BatchDeleteEntryRequest { ids: vec![String::new(), "nope".into()] }).await.unwrap().into_inner();
    assert_eq!(res.results[0].status.as_ref().unwrap().code, Code::InvalidArgument as i32);
    assert_eq!(res.results[1].status.as_ref().unwrap().code, Code::NotFound as i32);

    // Bundles.
    let err = bundle.append_bundle(bundlepb::AppendBundleRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = bundle
        .append_bundle(bundlepb::AppendBundleRequest {
            x509_authorities: vec![pt::X509Certificate { asn1: b"junk".to_vec(), tainted: false }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = bundle
        .append_bundle(bundlepb::AppendBundleRequest {
            jwt_authorities: vec![pt::JwtKey { public_key: b"junk".to_vec(), key_id: "k".into(), ..Default::default() }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = bundle
        .get_federated_bundle(bundlepb::GetFederatedBundleRequest { trust_domain: "Bad TD".into(), output_mask: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = bundle
        .get_federated_bundle(bundlepb::GetFederatedBundleRequest { trust_domain: "missing.org".into(), output_mask: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let res = bundle
        .batch_set_federated_bundle(bundlepb::BatchSetFederatedBundleRequest {
            bundle: vec![pt::Bundle {
                trust_domain: "partner.org".into(),
                x509_authorities: vec![pt::X509Certificate { asn1: vec![0x30, 0x03, 0x02, 0x01], tainted: false }],
                ..Default::default()
            }],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.results[0].status.as_ref().unwrap().code, Code::InvalidArgument as i32);

    // Agents and tokens.
    let err = agent.create_join_token(agentpb::CreateJoinTokenRequest { ttl: 60, token: "a/b".into(), agent_id: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = agent.get_agent(agentpb::GetAgentRequest { id: None, output_mask: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = agent.delete_agent(agentpb::DeleteAgentRequest { id: id("example.org", "/spire/agent/join_token/x") }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Raw garbage on the socket: the connection dies, the server does not.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
        raw.write_all(b"\x00\xffGET / HTTP/1.1\r\n\r\nnot http2 at all").await.unwrap();
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), raw.read(&mut buf)).await;
    }
    // Still serving, and nothing changed.
    let bundle_after = bundle.get_bundle(bundlepb::GetBundleRequest::default()).await.unwrap().into_inner();
    assert_eq!(bundle_before, bundle_after);
    assert!(svid.mint_x509svid(svidpb::MintX509svidRequest { csr: good_csr, ttl: 0 }).await.is_ok());
    assert!(!s.log().contains("panicked"), "{}", s.log());
}
