#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! Node attestation over the TLS port: a bad CSR does not burn a join token, failures are
//! logged with the peer address, and a peer that keeps failing is throttled.

use crate::common;

use cairn::wire::pb::spire::api::server::agent::v1 as agentpb;
use common::agent::{attest_with_join_token as attest, bootstrap_channel as tls_channel};
use common::*;
use std::time::Duration;
use tonic::Code;

fn good_csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::default().serialize_request(&key).unwrap().der().to_vec()
}

fn agent_id(resp: &agentpb::AttestAgentResponse) -> String {
    let Some(agentpb::attest_agent_response::Step::Result(r)) = &resp.step else { panic!("no result: {resp:?}") };
    let id = r.svid.as_ref().and_then(|s| s.id.as_ref()).unwrap();
    format!("spiffe://{}{}", id.trust_domain, id.path)
}

/// The log without terminal colour codes (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn token(s: &TestServer) -> String {
    let out = s.cli_ok(&["token", "generate", "-spiffeID", "spiffe://example.org/nodes/n1", "-ttl", "600"]);
    out.trim().strip_prefix("Token: ").unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_csr_does_not_burn_the_join_token() {
    let tmp = tempfile::tempdir().unwrap();
    let s = tokio::task::block_in_place(|| TestServer::start(tmp.path(), &ServerOpts::default()));
    let t = tokio::task::block_in_place(|| token(&s));
    let ch = tls_channel(s.port);
    let err = attest(&ch, &t, b"not a CSR".to_vec()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("failed to parse CSR: malformed CSR"), "{:?}", err.message());
    // The same token with a good CSR: the first attempt must not have consumed it.
    let resp = attest(&ch, &t, good_csr()).await.unwrap();
    assert_eq!(agent_id(&resp), format!("spiffe://example.org/spire/agent/join_token/{t}"));
    // Now it is used up, as a join token should be.
    let err = attest(&ch, &t, good_csr()).await.unwrap_err();
    assert!(err.message().contains("already been used"), "{:?}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attestations_are_logged_with_the_peer_and_throttled() {
    let tmp = tempfile::tempdir().unwrap();
    let s = tokio::task::block_in_place(|| TestServer::start(tmp.path(), &ServerOpts::default()));
    let valid = tokio::task::block_in_place(|| token(&s));
    let ch = tls_channel(s.port);
    // Ten failures (the default burst) are each answered with the attestation error ...
    for i in 0..10 {
        let err = attest(&ch, &format!("guess-{i}"), good_csr()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "attempt {i}: {err:?}");
    }
    // ... then the peer is throttled, even with a valid token, which is left unconsumed.
    let err = attest(&ch, &valid, good_csr()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("too many failed attestation attempts from 127.0.0.1"), "{:?}", err.message());

    let log = strip_ansi(&s.log());
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("node attestation refused")).collect();
    assert_eq!(refused.len(), 10, "one line per failure:\n{log}");
    assert!(refused.iter().all(|l| l.contains("peer=127.0.0.1:")), "failures logged without the peer:\n{log}");
    assert!(log.contains("peer throttled"), "the throttling is not logged:\n{log}");

    // One failure is forgiven every 6 s: then the valid token attests.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let resp = attest(&ch, &valid, good_csr()).await.unwrap();
    assert_eq!(agent_id(&resp), format!("spiffe://example.org/spire/agent/join_token/{valid}"));
}
