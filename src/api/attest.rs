//! Node attestation on the server: join tokens (here) and x509pop (challenge-response on a
//! node certificate), and issuing the agent's X509-SVID afterwards.

use crate::api::ApiState;
use crate::wire::pb::spire::api::types as pt;
use crate::api::status::ApiError;
use crate::ca::X509SvidRequest;
use crate::datastore::{AttestedNode, Selector};
use crate::spiffe::SpiffeId;

/// Which node attestors the server accepts.
#[derive(Debug, Clone, Default)]
pub struct Attestors {
    /// Join-token attestation (always on in a server, as in SPIRE; off only in tests).
    pub join_token: bool,
    /// `NodeAttestor "x509pop"`: the trusted CA roots and the agent path template.
    pub x509pop: Option<X509PopServer>,
}

/// Server-side x509pop settings.
#[derive(Debug, Clone)]
pub struct X509PopServer {
    /// Roots node certificates must chain to (`ca_bundle_path`).
    pub roots: Vec<Vec<u8>>,
    /// `agent_path_template` (SPIRE's default when `None`).
    pub agent_path_template: Option<String>,
}

/// What attestation established about a node.
#[derive(Debug, Clone)]
pub struct Attested {
    /// The agent's SPIFFE ID.
    pub agent_id: SpiffeId,
    /// `join_token`, `x509pop`.
    pub attestation_type: &'static str,
    /// Node selectors.
    pub selectors: Vec<Selector>,
    /// Whether the agent re-attests instead of renewing.
    pub can_reattest: bool,
}

/// Consumes a join token (single use: deleted before the expiry check, as SPIRE does) and
/// returns the agent ID it grants.
///
/// # Errors
/// `InvalidArgument` for an unknown, used or expired token.
pub async fn attest_join_token(state: &ApiState, token: &str, now: i64) -> Result<Attested, ApiError> {
    if !state.attestors.join_token {
        return Err(ApiError::InvalidArgument("join_token node attestor is not enabled on this server".into()));
    }
    let expires_at = state
        .datastore
        .take_join_token(token)
        .await?
        .ok_or_else(|| ApiError::InvalidArgument("failed to attest: join token does not exist or has already been used".into()))?;
    if expires_at < now {
        return Err(ApiError::InvalidArgument("failed to attest: join token expired".into()));
    }
    let agent_id = SpiffeId::from_segments(&state.trust_domain, &["spire", "agent", "join_token", token])
        .map_err(|e| ApiError::InvalidArgument(format!("failed to attest: token cannot form an agent ID: {e}")))?;
    Ok(Attested { agent_id, attestation_type: "join_token", selectors: vec![], can_reattest: false })
}

/// Mints the agent's SVID for the CSR's key and records (or updates) the node.
///
/// # Errors
/// A banned node, a bad CSR, or a signing/datastore failure.
pub async fn issue_agent_svid(state: &ApiState, attested: &Attested, csr: &[u8], now: i64) -> Result<pt::X509svid, ApiError> {
    let ds = &state.datastore;
    let existing = ds.get_attested_node(&attested.agent_id).await?;
    if existing.as_ref().is_some_and(|n| n.cert_serial_number.is_empty()) {
        return Err(ApiError::Denied("failed to attest: agent is banned".into()));
    }
    let (svid, serial, not_after) = mint_agent_svid(state, &attested.agent_id, csr, now)?;
    let mut selectors = attested.selectors.clone();
    selectors.sort();
    selectors.dedup();
    match existing {
        None => {
            ds.create_attested_node(&AttestedNode {
                spiffe_id: attested.agent_id.clone(),
                attestation_type: attested.attestation_type.into(),
                cert_serial_number: serial,
                cert_not_after: not_after,
                new_cert_serial_number: String::new(),
                new_cert_not_after: 0,
                can_reattest: attested.can_reattest,
                selectors,
                created_at: now,
            })
            .await?;
        }
        Some(mut n) => {
            // Re-attestation replaces the current SVID: the previous one stops working.
            n.attestation_type = attested.attestation_type.into();
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
    if csr.is_empty() {
        return Err(ApiError::InvalidArgument("malformed param: missing CSR".into()));
    }
    if csr.len() > 16 * 1024 {
        return Err(ApiError::InvalidArgument("CSR is too large".into()));
    }
    let (spki, _) = crate::pki::csr_public_key(csr).map_err(|e| ApiError::InvalidArgument(format!("failed to parse CSR: {e}")))?;
    Ok(spki)
}

/// Mints an agent SVID; returns it with its decimal serial and notAfter.
///
/// # Errors
/// A bad CSR or no CA.
pub fn mint_agent_svid(state: &ApiState, agent_id: &SpiffeId, csr: &[u8], now: i64) -> Result<(pt::X509svid, String, i64), ApiError> {
    let spki = check_agent_csr(csr)?;
    let chain = state.ca.mint_x509_svid(&spki, &X509SvidRequest { id: agent_id, dns_names: &[], ttl: state.agent_ttl }, now)?;
    let leaf = chain.first().ok_or_else(|| ApiError::Internal { public: "failed to sign X509-SVID", detail: "empty chain".into() })?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| ApiError::Internal { public: "failed to sign X509-SVID", detail: e.to_string() })?;
    let serial = crate::pki::num_to_decimal(cert.raw_serial());
    let not_after = cert.validity().not_after.timestamp();
    Ok((
        pt::X509svid {
            cert_chain: chain,
            id: Some(crate::wire::convert::id_to_proto(agent_id)),
            expires_at: not_after,
            hint: String::new(),
        },
        serial,
        not_after,
    ))
}

/// x509pop: verify the node's certificate chain, challenge it to prove possession of the key,
/// then name it by the agent path template. Re-attestation is allowed.
///
/// # Errors
/// `PermissionDenied` when the chain or the proof fails; `InvalidArgument` for bad messages.
pub async fn attest_x509pop(
    state: &ApiState,
    payload: &[u8],
    inbound: &mut tonic::Streaming<crate::wire::pb::spire::api::server::agent::v1::AttestAgentRequest>,
    tx: &tokio::sync::mpsc::Sender<Result<crate::wire::pb::spire::api::server::agent::v1::AttestAgentResponse, tonic::Status>>,
    now: i64,
) -> Result<Attested, ApiError> {
    use crate::wire::pb::spire::api::server::agent::v1 as pb;
    use crate::attest::x509pop;
    let cfg =
        state.attestors.x509pop.as_ref().ok_or_else(|| {
            ApiError::InvalidArgument("error getting node attestor: could not find node attestor type \"x509pop\"".into())
        })?;
    let cert = x509pop::verify_payload(payload, &cfg.roots, now, 4).map_err(|e| ApiError::Denied(format!("nodeattestor(x509pop): {e}")))?;
    let (challenge, pending) = cert.make_challenge().map_err(|e| ApiError::Denied(format!("nodeattestor(x509pop): {e}")))?;
    tx.send(Ok(pb::AttestAgentResponse { step: Some(pb::attest_agent_response::Step::Challenge(challenge)) }))
        .await
        .map_err(|_| ApiError::InvalidArgument("client went away during attestation".into()))?;
    let reply =
        inbound.message().await.map_err(|e| ApiError::InvalidArgument(format!("failed to receive challenge response: {}", e.message())))?;
    let Some(pb::AttestAgentRequest { step: Some(pb::attest_agent_request::Step::ChallengeResponse(response)) }) = reply else {
        return Err(ApiError::InvalidArgument("expected a challenge response".into()));
    };
    pending
        .verify_response(&response)
        .map_err(|e| ApiError::Denied(format!("nodeattestor(x509pop): challenge response verification failed: {e}")))?;
    let path = cert
        .agent_path(state.trust_domain.as_str(), cfg.agent_path_template.as_deref())
        .map_err(|e| ApiError::Internal { public: "failed to build agent ID", detail: e.to_string() })?;
    let agent_id = SpiffeId::from_path(&state.trust_domain, &path)
        .map_err(|e| ApiError::Internal { public: "failed to build agent ID", detail: format!("{path}: {e}") })?;
    let selectors = cert.selectors(state.trust_domain.as_str()).into_iter().map(|(kind, value)| Selector { kind, value }).collect();
    Ok(Attested { agent_id, attestation_type: "x509pop", selectors, can_reattest: true })
}
