//! `spire.api.server.debug.v1.Debug` (admin socket only).

use super::status::ApiError;
use super::{Policy, Svc};
use crate::wire::pb::spire::api::server::debug::v1 as pb;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl pb::debug_server::Debug for Svc {
    async fn get_info(&self, req: Request<pb::GetInfoRequest>) -> Result<Response<pb::GetInfoResponse>, Status> {
        self.authorize(&req, Policy::LocalOnly, "/spire.api.server.debug.v1.Debug/GetInfo").await?;
        let st = self.state();
        let entries = st.datastore.count_entries().await.map_err(ApiError::from)?;
        let agents = st.datastore.list_attested_nodes().await.map_err(ApiError::from)?.len();
        let federated =
            st.datastore.list_bundles().await.map_err(ApiError::from)?.iter().filter(|b| b.trust_domain != st.trust_domain).count();
        let chain = st.server_svid.read().map(|c| c.clone()).unwrap_or_default();
        let svid_chain = chain
            .iter()
            .filter_map(|der| {
                let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
                let id = crate::spiffe::x509::leaf_spiffe_id(der).ok().or_else(|| crate::spiffe::x509::ca_spiffe_id(der).ok().flatten());
                Some(pb::get_info_response::Cert {
                    id: id.as_ref().map(crate::wire::convert::id_to_proto),
                    expires_at: c.validity().not_after.timestamp(),
                    subject: c.subject().to_string(),
                })
            })
            .collect();
        Ok(Response::new(pb::GetInfoResponse {
            svid_chain,
            uptime: i32::try_from(st.started.elapsed().as_secs()).unwrap_or(i32::MAX),
            agents_count: i32::try_from(agents).unwrap_or(i32::MAX),
            federated_bundles_count: i32::try_from(federated).unwrap_or(i32::MAX),
            entries_count: i32::try_from(entries).unwrap_or(i32::MAX),
        }))
    }
}
