//! `spire.api.server.bundle.v1.Bundle`.

use super::status::{ApiError, ok_status};
use super::{Policy, Svc};
use crate::spiffe::TrustDomain;
use crate::wire::convert::{bundle_from_proto, bundle_to_proto, jwt_key_from_proto, jwt_key_to_proto, x509_authority_from_proto};
use crate::wire::pb::spire::api::server::bundle::v1 as pb;
use crate::wire::pb::spire::api::types as pt;
use tonic::{Request, Response, Status};

fn foreign_td(svc: &Svc, td: &str) -> Result<TrustDomain, ApiError> {
    let td = TrustDomain::new(td).map_err(|e| ApiError::InvalidArgument(format!("trust domain argument is not valid: {e}")))?;
    if &td == svc.state().trust_domain_ref() {
        return Err(ApiError::InvalidArgument(format!("{td} is this server's own trust domain; use GetBundle / AppendBundle")));
    }
    Ok(td)
}

impl super::ApiState {
    pub(crate) fn trust_domain_ref(&self) -> &TrustDomain {
        &self.trust_domain
    }
}

/// SPIRE's output masks: with a mask, only the fields it names are filled (the trust domain
/// always is); without one, everything.
fn masked(mut b: pt::Bundle, mask: Option<&pt::BundleMask>) -> pt::Bundle {
    if let Some(m) = mask {
        if !m.x509_authorities {
            b.x509_authorities.clear();
        }
        if !m.jwt_authorities {
            b.jwt_authorities.clear();
        }
        if !m.refresh_hint {
            b.refresh_hint = 0;
        }
        if !m.sequence_number {
            b.sequence_number = 0;
        }
    }
    b
}

#[tonic::async_trait]
impl pb::bundle_server::Bundle for Svc {
    async fn count_bundles(&self, req: Request<pb::CountBundlesRequest>) -> Result<Response<pb::CountBundlesResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.bundle.v1.Bundle/CountBundles").await?;
        let n = self.state().datastore.list_bundles().await.map_err(ApiError::from)?.len();
        Ok(Response::new(pb::CountBundlesResponse { count: i32::try_from(n).unwrap_or(i32::MAX) }))
    }

    async fn get_bundle(&self, req: Request<pb::GetBundleRequest>) -> Result<Response<pt::Bundle>, Status> {
        self.authorize(&req, Policy::Any, "/spire.api.server.bundle.v1.Bundle/GetBundle").await?;
        // Served from memory (kept current by bundle change events): agents call this every sync.
        let mask = req.get_ref().output_mask;
        if let Some(b) = self.state().entry_cache.bundle() {
            return Ok(Response::new(masked(bundle_to_proto(&b), mask.as_ref())));
        }
        let b = self.state().datastore.get_bundle(&self.state().trust_domain).await.map_err(ApiError::from)?;
        let b = b.ok_or_else(|| ApiError::NotFound("bundle not found".into()))?;
        Ok(Response::new(masked(bundle_to_proto(&b), mask.as_ref())))
    }

    async fn append_bundle(&self, req: Request<pb::AppendBundleRequest>) -> Result<Response<pt::Bundle>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.bundle.v1.Bundle/AppendBundle").await?;
        let r = req.get_ref();
        if r.x509_authorities.is_empty() && r.jwt_authorities.is_empty() {
            return Err(ApiError::InvalidArgument("no authorities to append".into()).into());
        }
        let x509 = r.x509_authorities.iter().map(x509_authority_from_proto).collect::<Result<Vec<_>, _>>()?;
        let jwt = r.jwt_authorities.iter().map(jwt_key_from_proto).collect::<Result<Vec<_>, _>>()?;
        let b = self.state().datastore.append_bundle(&self.state().trust_domain, &x509, &jwt).await.map_err(ApiError::from)?;
        // Read-your-writes for the in-memory copy GetBundle serves.
        self.state().entry_cache.reload_bundle(self.state().datastore.as_ref()).await.map_err(ApiError::from)?;
        Ok(Response::new(masked(bundle_to_proto(&b), r.output_mask.as_ref())))
    }

    async fn publish_jwt_authority(
        &self,
        req: Request<pb::PublishJwtAuthorityRequest>,
    ) -> Result<Response<pb::PublishJwtAuthorityResponse>, Status> {
        self.authorize(&req, Policy::Downstream, "/spire.api.server.bundle.v1.Bundle/PublishJWTAuthority").await?;
        let key = req.get_ref().jwt_authority.as_ref().ok_or_else(|| ApiError::InvalidArgument("missing JWT authority".into()))?;
        let key = jwt_key_from_proto(key)?;
        let mut keys = vec![key.clone()];
        // A downstream tier publishes further up first, so the key reaches the root (and
        // from there every tier) before this tier reports it accepted.
        if let Some(up) = &self.state().upstream {
            match up.publish_jwt_key(&key).await {
                Ok(upstream_keys) => keys.extend(upstream_keys),
                Err(crate::upstream::UpstreamError::Unsupported) => {}
                Err(e) => return Err(ApiError::Internal { public: "failed to publish JWT key", detail: e.to_string() }.into()),
            }
        }
        let b = self.state().datastore.append_bundle(&self.state().trust_domain, &[], &keys).await.map_err(ApiError::from)?;
        self.state().entry_cache.reload_bundle(self.state().datastore.as_ref()).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::PublishJwtAuthorityResponse { jwt_authorities: b.jwt_authorities.iter().map(jwt_key_to_proto).collect() }))
    }

    async fn publish_wit_authority(
        &self,
        _req: Request<pb::PublishWitAuthorityRequest>,
    ) -> Result<Response<pb::PublishWitAuthorityResponse>, Status> {
        Err(ApiError::Unimplemented("WIT-SVIDs are not supported").into())
    }

    async fn list_federated_bundles(
        &self,
        req: Request<pb::ListFederatedBundlesRequest>,
    ) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.bundle.v1.Bundle/ListFederatedBundles").await?;
        let own = &self.state().trust_domain;
        let r = req.get_ref();
        if r.page_size < 0 {
            return Err(ApiError::InvalidArgument("page size cannot be negative".into()).into());
        }
        let mut bundles = self.state().datastore.list_bundles().await.map_err(ApiError::from)?;
        bundles.retain(|b| &b.trust_domain != own);
        bundles.sort_by(|a, b| a.trust_domain.as_str().cmp(b.trust_domain.as_str()));
        // Pages in trust domain order; the token is the last trust domain of the page, and a
        // full page always carries one (as SPIRE's SQL paging does).
        if !r.page_token.is_empty() {
            bundles.retain(|b| b.trust_domain.as_str() > r.page_token.as_str());
        }
        let mut next_page_token = String::new();
        if let Ok(size) = usize::try_from(r.page_size)
            && size > 0
            && bundles.len() >= size
        {
            bundles.truncate(size);
            next_page_token = bundles.last().map(|b| b.trust_domain.as_str().to_owned()).unwrap_or_default();
        }
        Ok(Response::new(pb::ListFederatedBundlesResponse {
            bundles: bundles.iter().map(|b| masked(bundle_to_proto(b), r.output_mask.as_ref())).collect(),
            next_page_token,
        }))
    }

    async fn get_federated_bundle(&self, req: Request<pb::GetFederatedBundleRequest>) -> Result<Response<pt::Bundle>, Status> {
        self.authorize(&req, Policy::LocalAdminOrAgent, "/spire.api.server.bundle.v1.Bundle/GetFederatedBundle").await?;
        let td = foreign_td(self, &req.get_ref().trust_domain)?;
        let b = self
            .state()
            .datastore
            .get_bundle(&td)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound("bundle not found".into()))?;
        Ok(Response::new(masked(bundle_to_proto(&b), req.get_ref().output_mask.as_ref())))
    }

    async fn batch_create_federated_bundle(
        &self,
        req: Request<pb::BatchCreateFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchCreateFederatedBundleResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.bundle.v1.Bundle/BatchCreateFederatedBundle").await?;
        let mut results = Vec::new();
        for b in &req.get_ref().bundle {
            let r: Result<pt::Bundle, ApiError> = async {
                foreign_td(self, &b.trust_domain)?;
                let b = bundle_from_proto(b)?;
                Ok(masked(bundle_to_proto(&self.state().datastore.create_bundle(&b).await?), req.get_ref().output_mask.as_ref()))
            }
            .await;
            results.push(match r {
                Ok(b) => pb::batch_create_federated_bundle_response::Result { status: Some(ok_status()), bundle: Some(b) },
                Err(e) => pb::batch_create_federated_bundle_response::Result { status: Some(e.to_result_status()), bundle: None },
            });
        }
        Ok(Response::new(pb::BatchCreateFederatedBundleResponse { results }))
    }

    async fn batch_update_federated_bundle(
        &self,
        req: Request<pb::BatchUpdateFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchUpdateFederatedBundleResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.bundle.v1.Bundle/BatchUpdateFederatedBundle").await?;
        let mask = req.get_ref().input_mask;
        let mut results = Vec::new();
        for b in &req.get_ref().bundle {
            let r: Result<pt::Bundle, ApiError> = async {
                let td = foreign_td(self, &b.trust_domain)?;
                let Some(existing) = self.state().datastore.get_bundle(&td).await? else {
                    return Err(ApiError::NotFound("bundle not found".into()));
                };
                // Fields outside the input mask keep their stored values (no mask: all given).
                let merged = match &mask {
                    None => b.clone(),
                    Some(m) => {
                        let mut merged = bundle_to_proto(&existing);
                        if m.x509_authorities {
                            merged.x509_authorities.clone_from(&b.x509_authorities);
                        }
                        if m.jwt_authorities {
                            merged.jwt_authorities.clone_from(&b.jwt_authorities);
                        }
                        if m.refresh_hint {
                            merged.refresh_hint = b.refresh_hint;
                        }
                        merged
                    }
                };
                Ok(masked(
                    bundle_to_proto(&self.state().datastore.set_bundle(&bundle_from_proto(&merged)?).await?),
                    req.get_ref().output_mask.as_ref(),
                ))
            }
            .await;
            results.push(match r {
                Ok(b) => pb::batch_update_federated_bundle_response::Result { status: Some(ok_status()), bundle: Some(b) },
                Err(e) => pb::batch_update_federated_bundle_response::Result { status: Some(e.to_result_status()), bundle: None },
            });
        }
        Ok(Response::new(pb::BatchUpdateFederatedBundleResponse { results }))
    }

    async fn batch_set_federated_bundle(
        &self,
        req: Request<pb::BatchSetFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchSetFederatedBundleResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.bundle.v1.Bundle/BatchSetFederatedBundle").await?;
        let mut results = Vec::new();
        for b in &req.get_ref().bundle {
            let r: Result<pt::Bundle, ApiError> = async {
                foreign_td(self, &b.trust_domain)?;
                Ok(masked(
                    bundle_to_proto(&self.state().datastore.set_bundle(&bundle_from_proto(b)?).await?),
                    req.get_ref().output_mask.as_ref(),
                ))
            }
            .await;
            results.push(match r {
                Ok(b) => pb::batch_set_federated_bundle_response::Result { status: Some(ok_status()), bundle: Some(b) },
                Err(e) => pb::batch_set_federated_bundle_response::Result { status: Some(e.to_result_status()), bundle: None },
            });
        }
        Ok(Response::new(pb::BatchSetFederatedBundleResponse { results }))
    }

    async fn batch_delete_federated_bundle(
        &self,
        req: Request<pb::BatchDeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchDeleteFederatedBundleResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.bundle.v1.Bundle/BatchDeleteFederatedBundle").await?;
        use pb::batch_delete_federated_bundle_request::Mode;
        let mode = Mode::try_from(req.get_ref().mode).map_err(|_| ApiError::InvalidArgument("unknown delete mode".into()))?;
        let mut results = Vec::new();
        for t in &req.get_ref().trust_domains {
            let r: Result<(), ApiError> = async {
                let td = foreign_td(self, t)?;
                let ds = &self.state().datastore;
                if ds.get_bundle(&td).await?.is_none() {
                    return Err(ApiError::NotFound("bundle not found".into()));
                }
                // SPIRE's modes for entries that federate with the bundle: refuse, delete them,
                // or take the trust domain out of them.
                let using: Vec<_> = ds
                    .list_entries(&crate::datastore::EntryFilter::default())
                    .await?
                    .into_iter()
                    .filter(|e| e.federates_with.contains(&td))
                    .collect();
                match mode {
                    Mode::Restrict if !using.is_empty() => {
                        return Err(ApiError::FailedPrecondition(format!(
                            "failed to delete federated bundle: cannot delete bundle; federated with {} registration entries",
                            using.len()
                        )));
                    }
                    Mode::Restrict => {}
                    Mode::Delete => {
                        for e in &using {
                            ds.delete_entry(&e.id).await?;
                        }
                    }
                    Mode::Dissociate => {
                        for e in &using {
                            let mut e = e.clone();
                            e.federates_with.retain(|f| f != &td);
                            ds.update_entry(&e).await?;
                        }
                    }
                }
                Ok(ds.delete_bundle(&td).await?)
            }
            .await;
            results.push(pb::batch_delete_federated_bundle_response::Result {
                status: Some(r.map_or_else(|e| e.to_result_status(), |()| ok_status())),
                trust_domain: t.clone(),
            });
        }
        Ok(Response::new(pb::BatchDeleteFederatedBundleResponse { results }))
    }
}
