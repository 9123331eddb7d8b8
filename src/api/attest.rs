//! Node attestation on the server, the API's half: the attestors themselves (join_token,
//! x509pop) live in [`crate::attest`]; here their challenge rounds ride the `AttestAgent`
//! stream, join tokens come from the datastore, and the agent's X509-SVID is issued.

use crate::api::ApiState;
use crate::api::status::ApiError;
use crate::attest::{AttestError, ChallengeChannel, NodeIdentity};
use crate::ca::X509SvidRequest;
use crate::datastore::{AttestedNode, Datastore};
use crate::spiffe::SpiffeId;
use crate::wire::pb::spire::api::server::agent::v1 as pb;
use crate::wire::pb::spire::api::types as pt;
use std::sync::Arc;

/// The datastore as the join-token attestor's token store.
pub struct DatastoreTokens(pub Arc<dyn Datastore>);

#[async_trait::async_trait]
impl crate::attest::join_token::TokenStore for DatastoreTokens {
    async fn take(&self, token: &str) -> Result<Option<i64>, AttestError> {
        self.0.take_join_token(token).await.map_err(|e| AttestError::Store(e.to_string()))
    }
}

/// Challenge rounds over the `AttestAgent` stream.
pub struct StreamChannel<'a> {
    /// Requests from the agent.
    pub inbound: &'a mut tonic::Streaming<pb::AttestAgentRequest>,
    /// Responses to the agent.
    pub tx: &'a tokio::sync::mpsc::Sender<Result<pb::AttestAgentResponse, tonic::Status>>,
}

#[async_trait::async_trait]
impl ChallengeChannel for StreamChannel<'_> {
    async fn challenge(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, AttestError> {
        self.tx
            .send(Ok(pb::AttestAgentResponse { step: Some(pb::attest_agent_response::Step::Challenge(challenge)) }))
            .await
            .map_err(|_| AttestError::InvalidArgument("client went away during attestation".into()))?;
        let reply = self
            .inbound
            .message()
            .await
            .map_err(|e| AttestError::InvalidArgument(format!("failed to receive challenge response: {}", e.message())))?;
        let Some(pb::AttestAgentRequest { step: Some(pb::attest_agent_request::Step::ChallengeResponse(response)) }) = reply else {
            return Err(AttestError::InvalidArgument("expected a challenge response".into()));
        };
        Ok(response)
    }
}

/// Mints the agent's SVID for the CSR's key and records (or updates) the node.
///
/// # Errors
/// A banned node, a bad CSR, or a signing/datastore failure.
pub async fn issue_agent_svid(
    state: &ApiState,
    attested: &NodeIdentity,
    attestation_type: &str,
    csr: &[u8],
    now: i64,
) -> Result<pt::X509svid, ApiError> {
    let ds = &state.datastore;
    let existing = ds.get_attested_node(&attested.agent_id).await?;
    if existing.as_ref().is_some_and(|n| n.cert_serial_number.is_empty()) {
        return Err(ApiError::Denied("failed to attest: agent is banned".into()));
    }
    let (svid, serial, not_after) = mint_agent_svid(state, &attested.agent_id, csr, now).await?;
    let mut selectors = attested.selectors.clone();
    selectors.sort();
    selectors.dedup();
    match existing {
        None => {
            ds.create_attested_node(&AttestedNode {
                spiffe_id: attested.agent_id.clone(),
                attestation_type: attestation_type.into(),
                cert_serial_number: serial,
                cert_not_after: not_after,
                new_cert_serial_number: String::new(),
                new_cert_not_after: 0,
                can_reattest: attested.can_reattest,
                selectors,
                created_at: now,
                agent_version: String::new(),
            })
            .await?;
        }
        Some(mut n) => {
            // Re-attestation replaces the current SVID: the previous one stops working.
            n.attestation_type = attestation_type.into();
            n.cert_serial_number = serial;
            n.cert_not_after = not_after;
            n.new_cert_serial_number.clear();
            n.new_cert_not_after = 0;
            n.can_reattest = attested.can_reattest;
            n.selectors = selectors;
            ds.update_attested_node(&n).await?;
        }
    }
    Ok(svid)
}

/// Checks an agent's CSR (size, syntax, key type, signature) and returns its key. Attestation
/// calls this before it consumes anything, so a bad CSR does not burn a single-use join token.
///
/// # Errors
/// `InvalidArgument` naming what is wrong with the CSR.
pub fn check_agent_csr(csr: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, ApiError> {
    use crate::pki::PkiError;
    // SPIRE's wording for the agent APIs.
    crate::pki::Csr::parse(csr).map(|c| c.public_key).map_err(|e| match e {
        PkiError::CsrMissing => ApiError::InvalidArgument("malformed param: missing CSR".into()),
        PkiError::CsrTooLarge { .. } => ApiError::InvalidArgument("CSR is too large".into()),
        other => ApiError::InvalidArgument(format!("failed to parse CSR: {other}")),
    })
}

/// Mints an agent SVID; returns it with its decimal serial and notAfter.
///
/// # Errors
/// A bad CSR or no CA.
pub async fn mint_agent_svid(state: &ApiState, agent_id: &SpiffeId, csr: &[u8], now: i64) -> Result<(pt::X509svid, String, i64), ApiError> {
    let spki = check_agent_csr(csr)?;
    let minted = state.ca.mint_x509_svid(&spki, &X509SvidRequest { id: agent_id, dns_names: &[], ttl: state.agent_ttl }, now).await?;
    Ok((
        pt::X509svid {
            cert_chain: minted.chain,
            id: Some(crate::wire::convert::id_to_proto(agent_id)),
            expires_at: minted.not_after,
            hint: String::new(),
        },
        minted.serial,
        minted.not_after,
    ))
}
