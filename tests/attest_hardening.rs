#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! Node attestation over the TLS port: a bad CSR does not burn a join token.

mod common;

use cairn::api::pb::spire::api::server::agent::v1 as agentpb;
use cairn::api::pb::spire::api::types as pt;
use common::*;
use tonic::Code;

fn good_csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::default().serialize_request(&key).unwrap().der().to_vec()
}

fn tls_channel(port: u16) -> tonic::transport::Channel {
    let server_id = cairn::spiffe::SpiffeId::new("spiffe://example.org/spire/server").unwrap();
    cairn::agent::client::connect(&format!("127.0.0.1:{port}"), cairn::agent::client::ServerTrust::InsecureBootstrap, server_id, None)
        .unwrap()
}

/// One join_token AttestAgent exchange; the first response or the refusal.
async fn attest(ch: &tonic::transport::Channel, token: &str, csr: Vec<u8>) -> Result<agentpb::AttestAgentResponse, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(agentpb::AttestAgentRequest {
        step: Some(agentpb::attest_agent_request::Step::Params(agentpb::attest_agent_request::Params {
            data: Some(pt::AttestationData { r#type: "join_token".into(), payload: token.as_bytes().to_vec() }),
            params: Some(agentpb::AgentX509svidParams { csr }),
        })),
    })
    .await
    .unwrap();
    let mut stream = agentpb::agent_client::AgentClient::new(ch.clone())
        .attest_agent(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    stream.message().await?.ok_or_else(|| tonic::Status::unknown("stream closed without a response"))
}

fn agent_id(resp: &agentpb::AttestAgentResponse) -> String {
    let Some(agentpb::attest_agent_response::Step::Result(r)) = &resp.step else { panic!("no result: {resp:?}") };
    let id = r.svid.as_ref().and_then(|s| s.id.as_ref()).unwrap();
    format!("spiffe://{}{}", id.trust_domain, id.path)
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
