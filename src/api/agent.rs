//! `spire.api.server.agent.v1.Agent` (admin half; attestation comes with the agent issue).

use super::convert::agent_to_proto;
use super::status::ApiError;
use super::{Policy, Svc, now};
use crate::datastore::{Entry, Selector};
use crate::spiffe::SpiffeId;
use crate::wire::convert::id_from_proto;
use crate::wire::pb::spire::api::server::agent::v1 as pb;
use crate::wire::pb::spire::api::types as pt;
use tonic::{Request, Response, Status, Streaming};

fn agent_id(id: Option<&pt::Spiffeid>, svc: &Svc) -> Result<SpiffeId, ApiError> {
    let id = id_from_proto(id, "agent ID")?;
    if !id.is_member_of(&svc.state().trust_domain) || !id.path().starts_with("/spire/agent/") {
        return Err(ApiError::InvalidArgument(format!(
            "invalid agent ID: {id} is not an agent of trust domain {}",
            svc.state().trust_domain
        )));
    }
    Ok(id)
}

type AttestTx = tokio::sync::mpsc::Sender<Result<pb::AttestAgentResponse, Status>>;

/// One attestation exchange: params, optional challenge rounds, then the agent SVID.
async fn attest_flow(
    state: &crate::api::ApiState,
    inbound: &mut Streaming<pb::AttestAgentRequest>,
    tx: &AttestTx,
) -> Result<pb::AttestAgentResponse, ApiError> {
    let first = inbound.message().await.map_err(|e| ApiError::InvalidArgument(format!("failed to receive request: {}", e.message())))?;
    let Some(pb::AttestAgentRequest { step: Some(pb::attest_agent_request::Step::Params(params)) }) = first else {
        return Err(ApiError::InvalidArgument("malformed param: missing params".into()));
    };
    let data = params.data.ok_or_else(|| ApiError::InvalidArgument("malformed param: missing attestation data".into()))?;
    let csr = params.params.map(|p| p.csr).unwrap_or_default();
    if csr.is_empty() {
        return Err(ApiError::InvalidArgument("malformed param: missing CSR".into()));
    }
    if data.r#type.is_empty() {
        return Err(ApiError::InvalidArgument("malformed param: missing attestation type".into()));
    }
    if data.payload.is_empty() {
        return Err(ApiError::InvalidArgument("malformed param: missing attestation data payload".into()));
    }
    // Before attestation: a join token is consumed by attesting, so a CSR refused afterwards
    // would burn it and leave the agent with no way to retry.
    crate::api::attest::check_agent_csr(&csr)?;
    let now = now();
    let attestor = state.attestors.get(&data.r#type)?;
    let mut channel = crate::api::attest::StreamChannel { inbound, tx };
    let attested = attestor.attest(&data.payload, &mut channel, now).await?;
    let svid = crate::api::attest::issue_agent_svid(state, &attested, attestor.kind(), &csr, now).await?;
    tracing::info!(agent_id = %attested.agent_id, attestation_type = attestor.kind(), "agent attested");
    Ok(pb::AttestAgentResponse {
        step: Some(pb::attest_agent_response::Step::Result(pb::attest_agent_response::Result {
            svid: Some(svid),
            reattestable: attested.can_reattest,
        })),
    })
}

/// ListAgents/CountAgents filter fields (their Filter messages are twins).
struct AgentFilter<'a> {
    by_attestation_type: &'a str,
    by_selector_match: Option<&'a pt::SelectorMatch>,
    by_banned: Option<bool>,
    by_can_reattest: Option<bool>,
    by_expires_before: &'a str,
}

/// SPIRE's `by_expires_before` layout (Go's "2006-01-02 15:04:05 -0700 -07"); like SPIRE, a
/// value that does not parse filters nothing.
pub(crate) fn parse_expires_before(s: &str) -> Option<i64> {
    // "YYYY-MM-DD HH:MM:SS ±hhmm" (the trailing zone abbreviation is not needed).
    let mut parts = s.split(' ');
    let (date, clock, offset) = (parts.next()?, parts.next()?, parts.next()?);
    let num = |t: &str| t.parse::<u32>().ok();
    let d: Vec<u32> = date.split('-').map(num).collect::<Option<_>>()?;
    let c: Vec<u32> = clock.split(':').map(num).collect::<Option<_>>()?;
    let ([y, mo, da], [h, mi, se]) = (<[u32; 3]>::try_from(d).ok()?, <[u32; 3]>::try_from(c).ok()?);
    let sign = match offset.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let off = offset.get(1..)?;
    if off.len() != 4 {
        return None;
    }
    let (oh, om) = (num(off.get(..2)?)?, num(off.get(2..)?)?);
    let date =
        time::Date::from_calendar_date(i32::try_from(y).ok()?, time::Month::try_from(u8::try_from(mo).ok()?).ok()?, u8::try_from(da).ok()?)
            .ok()?;
    let t = time::Time::from_hms(u8::try_from(h).ok()?, u8::try_from(mi).ok()?, u8::try_from(se).ok()?).ok()?;
    let local = time::PrimitiveDateTime::new(date, t).assume_utc().unix_timestamp();
    Some(local - sign * (i64::from(oh) * 3600 + i64::from(om) * 60))
}

/// The [`AgentFilter`] view of either request's Filter message.
macro_rules! agent_filter {
    ($f:expr) => {
        AgentFilter {
            by_attestation_type: &$f.by_attestation_type,
            by_selector_match: $f.by_selector_match.as_ref(),
            by_banned: $f.by_banned,
            by_can_reattest: $f.by_can_reattest,
            by_expires_before: &$f.by_expires_before,
        }
    };
}

fn filter_agents(nodes: &mut Vec<crate::datastore::AttestedNode>, f: &AgentFilter<'_>) -> Result<(), ApiError> {
    if !f.by_attestation_type.is_empty() {
        nodes.retain(|n| n.attestation_type == f.by_attestation_type);
    }
    if let Some(banned) = f.by_banned {
        nodes.retain(|n| n.cert_serial_number.is_empty() == banned);
    }
    if let Some(r) = f.by_can_reattest {
        nodes.retain(|n| n.can_reattest == r);
    }
    if let Some(before) = parse_expires_before(f.by_expires_before) {
        nodes.retain(|n| n.cert_not_after < before);
    }
    if let Some(m) = f.by_selector_match {
        let wanted = m
            .selectors
            .iter()
            .map(crate::wire::convert::selector_from_proto)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::InvalidArgument(format!("failed to parse selectors: {e}")))?;
        // An agent without node selectors matches no selector filter, as in SPIRE's datastore.
        nodes.retain(|n| !n.selectors.is_empty() && super::entry::set_match(&n.selectors, &wanted, m.r#match));
    }
    Ok(())
}

/// Clears what the output mask leaves out (the ID is always returned), as SPIRE's applyMask.
fn apply_agent_mask(a: &mut pt::Agent, mask: Option<&pt::AgentMask>) {
    let Some(m) = mask else { return };
    if !m.attestation_type {
        a.attestation_type.clear();
    }
    if !m.x509svid_serial_number {
        a.x509svid_serial_number.clear();
    }
    if !m.x509svid_expires_at {
        a.x509svid_expires_at = 0;
    }
    if !m.selectors {
        a.selectors.clear();
    }
    if !m.banned {
        a.banned = false;
    }
    if !m.can_reattest {
        a.can_reattest = false;
    }
    if !m.agent_version {
        a.agent_version.clear();
    }
}

/// Longest join token accepted (it becomes a path segment of the agent ID).
const MAX_TOKEN_LEN: usize = 255;

#[tonic::async_trait]
impl pb::agent_server::Agent for Svc {
    async fn count_agents(&self, req: Request<pb::CountAgentsRequest>) -> Result<Response<pb::CountAgentsResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.agent.v1.Agent/CountAgents").await?;
        let mut nodes = self.state().datastore.list_attested_nodes().await.map_err(ApiError::from)?;
        if let Some(f) = &req.get_ref().filter {
            filter_agents(&mut nodes, &agent_filter!(f))?;
        }
        Ok(Response::new(pb::CountAgentsResponse { count: i32::try_from(nodes.len()).unwrap_or(i32::MAX) }))
    }

    async fn list_agents(&self, req: Request<pb::ListAgentsRequest>) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.agent.v1.Agent/ListAgents").await?;
        let r = req.get_ref();
        if r.page_size < 0 {
            return Err(ApiError::InvalidArgument("page_size must not be negative".into()).into());
        }
        let mut nodes = self.state().datastore.list_attested_nodes().await.map_err(ApiError::from)?;
        if let Some(f) = &r.filter {
            filter_agents(&mut nodes, &agent_filter!(f))?;
        }
        // Pages in agent ID order; the token is the last ID of the previous page, so agents
        // attesting or leaving between pages neither repeat nor shift the rest.
        nodes.sort_by(|a, b| a.spiffe_id.as_str().cmp(b.spiffe_id.as_str()));
        if !r.page_token.is_empty() {
            nodes.retain(|n| n.spiffe_id.as_str() > r.page_token.as_str());
        }
        let mut next_page_token = String::new();
        if r.page_size > 0 {
            let size = usize::try_from(r.page_size).unwrap_or(usize::MAX);
            if nodes.len() > size {
                nodes.truncate(size);
            }
            // SPIRE answers a full page with a token, even when nothing follows it.
            if nodes.len() == size {
                next_page_token = nodes.last().map(|n| n.spiffe_id.to_string()).unwrap_or_default();
            }
        }
        let agents = nodes
            .iter()
            .map(|n| {
                let mut a = agent_to_proto(n);
                apply_agent_mask(&mut a, r.output_mask.as_ref());
                a
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents, next_page_token }))
    }

    async fn get_agent(&self, req: Request<pb::GetAgentRequest>) -> Result<Response<pt::Agent>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.agent.v1.Agent/GetAgent").await?;
        let id = agent_id(req.get_ref().id.as_ref(), self)?;
        let n = self
            .state()
            .datastore
            .get_attested_node(&id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound("agent not found".into()))?;
        let mut a = agent_to_proto(&n);
        apply_agent_mask(&mut a, req.get_ref().output_mask.as_ref());
        Ok(Response::new(a))
    }

    async fn delete_agent(&self, req: Request<pb::DeleteAgentRequest>) -> Result<Response<()>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.agent.v1.Agent/DeleteAgent").await?;
        let id = agent_id(req.get_ref().id.as_ref(), self)?;
        let ds = &self.state().datastore;
        let node = ds.delete_attested_node(&id).await.map_err(ApiError::from)?;
        tracing::info!(spiffe_id = %id, "Agent deleted");
        if node.attestation_type == "join_token" {
            // As SPIRE does: the alias entry attestation made for a join-token agent (parent the
            // agent, one `spiffe_id` selector naming it) goes with the agent, since no other
            // agent can ever have that token again. Entries an operator made are kept.
            let filter = crate::datastore::EntryFilter { parent_id: Some(id.clone()), ..Default::default() };
            for e in ds.list_entries(&filter).await.map_err(ApiError::from)? {
                if let [sel] = e.selectors.as_slice()
                    && sel.kind == "spiffe_id"
                    && sel.value == id.as_str()
                {
                    ds.delete_entry(&e.id).await.map_err(ApiError::from)?;
                    tracing::info!(spiffe_id = %e.spiffe_id, parent_id = %e.parent_id, registration_id = %e.id, "Cascade-deleted registration entry on attested node deletion");
                }
            }
        }
        Ok(Response::new(()))
    }

    async fn ban_agent(&self, req: Request<pb::BanAgentRequest>) -> Result<Response<()>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.agent.v1.Agent/BanAgent").await?;
        let id = agent_id(req.get_ref().id.as_ref(), self)?;
        let ds = &self.state().datastore;
        let mut n = ds.get_attested_node(&id).await.map_err(ApiError::from)?.ok_or_else(|| ApiError::NotFound("agent not found".into()))?;
        // An empty serial is SPIRE's ban marker: no SVID of this agent is accepted any more.
        n.cert_serial_number.clear();
        n.new_cert_serial_number.clear();
        ds.update_attested_node(&n).await.map_err(ApiError::from)?;
        tracing::info!(spiffe_id = %id, "Agent banned");
        Ok(Response::new(()))
    }

    type AttestAgentStream = futures::stream::BoxStream<'static, Result<pb::AttestAgentResponse, Status>>;

    async fn attest_agent(&self, req: Request<Streaming<pb::AttestAgentRequest>>) -> Result<Response<Self::AttestAgentStream>, Status> {
        self.authorize(&req, Policy::Any, "/spire.api.server.agent.v1.Agent/AttestAgent").await?;
        // The TCP peer (None on the admin socket, whose callers are trusted and not throttled).
        let peer = req.extensions().get::<crate::net::ConnInfo>().and_then(crate::net::ConnInfo::remote_addr);
        let state = self.state_arc();
        if let Some(addr) = peer
            && let Err(wait) = state.attest_limiter.check(addr.ip(), std::time::Instant::now())
        {
            // Debug only: a throttled peer hammering would otherwise flood the log; the moment
            // it became throttled was logged at warn.
            tracing::debug!(peer = %addr, wait_secs = wait.as_secs(), "node attestation throttled");
            return Err(ApiError::ResourceExhausted(format!(
                "too many failed attestation attempts from {}; retry in {} s",
                addr.ip(),
                wait.as_secs().max(1)
            ))
            .into());
        }
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            // The whole exchange is bounded so a silent client cannot hold a task forever.
            let flow = attest_flow(&state, &mut inbound, &tx);
            let result = match tokio::time::timeout(std::time::Duration::from_secs(30), flow).await {
                Ok(r) => r,
                Err(_) => Err(ApiError::InvalidArgument("attestation timed out".into())),
            };
            let msg = result.map_err(|e| {
                let peer_text = peer.map_or_else(|| "local".to_owned(), |a| a.to_string());
                tracing::info!(peer = %peer_text, error = %e, "node attestation refused");
                // The server's own failures (datastore, signing) are not the peer's doing.
                let peers_fault = !matches!(e, ApiError::Internal { .. } | ApiError::Unavailable(_));
                if let Some(addr) = peer
                    && peers_fault
                    && state.attest_limiter.record_failure(addr.ip(), std::time::Instant::now())
                {
                    tracing::warn!(peer = %addr.ip(), "repeated failed node attestations: peer throttled");
                }
                Status::from(e)
            });
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn renew_agent(&self, req: Request<pb::RenewAgentRequest>) -> Result<Response<pb::RenewAgentResponse>, Status> {
        let caller = self.authorize(&req, Policy::Agent, "/spire.api.server.agent.v1.Agent/RenewAgent").await?;
        let id = caller.id().cloned().ok_or(ApiError::PermissionDenied("/spire.api.server.agent.v1.Agent/RenewAgent"))?;
        let ds = &self.state().datastore;
        let mut node =
            ds.get_attested_node(&id).await.map_err(ApiError::from)?.ok_or_else(|| ApiError::NotFound("agent not found".into()))?;
        if node.can_reattest {
            return Err(ApiError::AgentDenied {
                method: "/spire.api.server.agent.v1.Agent/RenewAgent",
                reason: pt::permission_denied_details::Reason::AgentMustReattest as i32,
                detail: "agent must reattest instead of renew".into(),
            }
            .into());
        }
        let csr = req.get_ref().params.as_ref().map(|p| p.csr.clone()).unwrap_or_default();
        let (svid, serial, not_after) = crate::api::attest::mint_agent_svid(self.state(), &id, &csr, now()).await?;
        // The old SVID keeps working until the new one is first presented (then promoted).
        node.new_cert_serial_number = serial;
        node.new_cert_not_after = not_after;
        ds.update_attested_node(&node).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::RenewAgentResponse { svid: Some(svid) }))
    }

    async fn create_join_token(&self, req: Request<pb::CreateJoinTokenRequest>) -> Result<Response<pt::JoinToken>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.agent.v1.Agent/CreateJoinToken").await?;
        let r = req.get_ref();
        if r.ttl < 1 {
            return Err(ApiError::InvalidArgument("ttl is required, you must provide one".into()).into());
        }
        let token = if r.token.is_empty() { uuid::Uuid::new_v4().to_string() } else { r.token.clone() };
        let td = &self.state().trust_domain;
        // The token becomes a path segment of the agent's ID: refuse now what would fail later.
        let parent = SpiffeId::from_segments(td, &["spire", "agent", "join_token", &token])
            .map_err(|e| ApiError::InvalidArgument(format!("token {token:?} cannot be part of a SPIFFE ID: {e}")))?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(ApiError::InvalidArgument(format!("token is longer than {MAX_TOKEN_LEN} characters")).into());
        }
        let alias = match &r.agent_id {
            Some(a) => {
                let id = id_from_proto(Some(a), "agent ID")?;
                if !id.is_member_of(td) || id.is_trust_domain_id() || id.is_reserved() {
                    return Err(ApiError::InvalidArgument(format!(
                        "invalid agent ID: {id} must be a non-reserved ID in trust domain {td}"
                    ))
                    .into());
                }
                Some(id)
            }
            None => None,
        };
        let expires_at = now() + i64::from(r.ttl);
        let ds = &self.state().datastore;
        ds.create_join_token(&token, expires_at).await.map_err(ApiError::from)?;
        if let Some(id) = alias {
            // As SPIRE does: an entry under the agent-to-be, so workloads can be parented to `id`.
            let entry = Entry {
                id: crate::datastore::new_entry_id(),
                spiffe_id: id,
                parent_id: parent.clone(),
                selectors: vec![Selector { kind: "spiffe_id".into(), value: parent.to_string() }],
                x509_svid_ttl: 0,
                jwt_svid_ttl: 0,
                federates_with: vec![],
                admin: false,
                downstream: false,
                dns_names: vec![],
                expires_at: 0,
                hint: String::new(),
                store_svid: false,
                disable_x509_svid_prefetch: false,
                jwt_svid_include_jti: false,
                revision_number: 0,
                created_at: 0,
            };
            ds.create_entry(&entry).await.map_err(ApiError::from)?;
        }
        Ok(Response::new(pt::JoinToken { value: token, expires_at }))
    }

    async fn post_status(&self, req: Request<pb::PostStatusRequest>) -> Result<Response<pb::PostStatusResponse>, Status> {
        let caller = self.authorize(&req, Policy::Agent, "/spire.api.server.agent.v1.Agent/PostStatus").await?;
        let version = &req.get_ref().agent_version;
        if version.len() > 255 {
            return Err(ApiError::InvalidArgument("agent version is too long (max 255 characters)".into()).into());
        }
        if !version.is_empty() {
            let id = caller.id().cloned().ok_or(ApiError::PermissionDenied("/spire.api.server.agent.v1.Agent/PostStatus"))?;
            let ds = &self.state().datastore;
            let mut n =
                ds.get_attested_node(&id).await.map_err(ApiError::from)?.ok_or_else(|| ApiError::NotFound("agent not found".into()))?;
            if &n.agent_version != version {
                n.agent_version.clone_from(version);
                ds.update_attested_node(&n).await.map_err(ApiError::from)?;
            }
            tracing::debug!(spiffe_id = %id, agent_version = %version, "Agent status updated");
        }
        Ok(Response::new(pb::PostStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn expires_before_reads_spires_layout() {
        assert_eq!(super::parse_expires_before("2026-12-03 15:00:00 +0000 UTC"), Some(1_796_310_000));
        assert_eq!(super::parse_expires_before("2026-12-03 17:00:00 +0200 +02"), Some(1_796_310_000));
        assert_eq!(super::parse_expires_before("2026-12-03"), None);
        assert_eq!(super::parse_expires_before("yesterday"), None);
    }
}
