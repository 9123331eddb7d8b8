//! `spire.api.server.agent.v1.Agent` (admin half; attestation comes with the agent issue).

use super::convert::{agent_to_proto, id_from_proto};
use super::pb::spire::api::server::agent::v1 as pb;
use super::pb::spire::api::types as pt;
use super::status::ApiError;
use super::{Policy, Svc, now};
use crate::datastore::{Entry, Selector};
use crate::spiffe::SpiffeId;
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

/// Longest join token accepted (it becomes a path segment of the agent ID).
const MAX_TOKEN_LEN: usize = 255;

#[tonic::async_trait]
impl pb::agent_server::Agent for Svc {
    async fn count_agents(&self, req: Request<pb::CountAgentsRequest>) -> Result<Response<pb::CountAgentsResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.agent.v1.Agent/CountAgents").await?;
        let n = self.state().datastore.list_attested_nodes().await.map_err(ApiError::from)?.len();
        Ok(Response::new(pb::CountAgentsResponse { count: i32::try_from(n).unwrap_or(i32::MAX) }))
    }

    async fn list_agents(&self, req: Request<pb::ListAgentsRequest>) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.agent.v1.Agent/ListAgents").await?;
        let mut nodes = self.state().datastore.list_attested_nodes().await.map_err(ApiError::from)?;
        if let Some(f) = &req.get_ref().filter {
            if !f.by_attestation_type.is_empty() {
                nodes.retain(|n| n.attestation_type == f.by_attestation_type);
            }
            if let Some(banned) = f.by_banned {
                nodes.retain(|n| n.cert_serial_number.is_empty() == banned);
            }
            if let Some(r) = f.by_can_reattest {
                nodes.retain(|n| n.can_reattest == r);
            }
        }
        Ok(Response::new(pb::ListAgentsResponse { agents: nodes.iter().map(agent_to_proto).collect(), next_page_token: String::new() }))
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
        Ok(Response::new(agent_to_proto(&n)))
    }

    async fn delete_agent(&self, req: Request<pb::DeleteAgentRequest>) -> Result<Response<()>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.agent.v1.Agent/DeleteAgent").await?;
        let id = agent_id(req.get_ref().id.as_ref(), self)?;
        self.state().datastore.delete_attested_node(&id).await.map_err(ApiError::from)?;
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
        Ok(Response::new(()))
    }

    type AttestAgentStream = futures::stream::BoxStream<'static, Result<pb::AttestAgentResponse, Status>>;

    async fn attest_agent(&self, _req: Request<Streaming<pb::AttestAgentRequest>>) -> Result<Response<Self::AttestAgentStream>, Status> {
        Err(ApiError::Unimplemented("node attestation is not in this cairn yet").into())
    }

    async fn renew_agent(&self, _req: Request<pb::RenewAgentRequest>) -> Result<Response<pb::RenewAgentResponse>, Status> {
        Err(ApiError::Unimplemented("node attestation is not in this cairn yet").into())
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
                id: uuid::Uuid::new_v4().to_string(),
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
                revision_number: 0,
                created_at: 0,
            };
            ds.create_entry(&entry).await.map_err(ApiError::from)?;
        }
        Ok(Response::new(pt::JoinToken { value: token, expires_at }))
    }

    async fn post_status(&self, _req: Request<pb::PostStatusRequest>) -> Result<Response<pb::PostStatusResponse>, Status> {
        Err(ApiError::Unimplemented("agent status is not in this cairn yet").into())
    }
}
