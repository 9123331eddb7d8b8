//! `spire.api.server.trustdomain.v1.TrustDomain`: federation relationships stored in the
//! datastore, and `RefreshBundle`. Admin and local callers only.
//!
//! Validation, messages and codes follow SPIRE's service, so `spire-server federation ...`
//! output is the same against cairn: a bad relationship is `InvalidArgument` "failed to convert
//! federation relationship: ...", a duplicate or missing one on create or update is `Internal`
//! (as SPIRE answers), a missing one on delete is `NotFound`. Relationships in the config file
//! are not listed here (as in SPIRE) but can be refreshed.

use super::status::{ApiError, ok_status};
use super::{Policy, Svc};
use crate::datastore::DatastoreError;
use crate::federation::client::RefreshNowError;
use crate::spiffe::federation::{ClientProfile, Relationship};
use crate::spiffe::{Bundle, SpiffeId, TrustDomain};
use crate::wire::convert::{bundle_from_proto, bundle_to_proto};
use crate::wire::pb::spire::api::server::trustdomain::v1 as pb;
use crate::wire::pb::spire::api::types as pt;
use pt::federation_relationship::BundleEndpointProfile;
use tonic::{Request, Response, Status};

/// A relationship from the wire, validated as SPIRE does; the bundle that came with it.
fn relationship_from_proto(r: &pt::FederationRelationship) -> Result<(Relationship, Option<Bundle>), String> {
    let trust_domain = TrustDomain::new(&r.trust_domain).map_err(|e| format!("failed to parse trust domain: {e}"))?;
    let url = reqwest::Url::parse(&r.bundle_endpoint_url).map_err(|e| format!("failed to parse bundle endpoint URL: {e}"))?;
    if url.scheme() != "https" {
        return Err("bundle endpoint URL must use the https scheme".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("bundle endpoint URL must specify the host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("bundle endpoint URL must not contain user info".into());
    }
    let profile = match &r.bundle_endpoint_profile {
        Some(BundleEndpointProfile::HttpsWeb(_)) => ClientProfile::HttpsWeb,
        Some(BundleEndpointProfile::HttpsSpiffe(p)) => ClientProfile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::new(&p.endpoint_spiffe_id).map_err(|e| format!("failed to parse endpoint SPIFFE ID: {e}"))?,
        },
        None => return Err("unsupported bundle endpoint profile type: <nil>".into()),
    };
    let bundle = match &r.trust_domain_bundle {
        Some(b) => {
            let b = bundle_from_proto(b).map_err(|e| format!("failed to parse bundle: {e}"))?;
            if b.trust_domain != trust_domain {
                return Err(format!(
                    "trust domain bundle ({:?}) must match the trust domain of the federation relationship ({:?})",
                    b.trust_domain.as_str(),
                    trust_domain.as_str()
                ));
            }
            Some(b)
        }
        None => None,
    };
    // The URL as given, not as re-serialized: it is what the operator typed and what the
    // refresher will request.
    Ok((Relationship { trust_domain, bundle_endpoint_url: r.bundle_endpoint_url.clone(), profile }, bundle))
}

/// A relationship for the wire, with the fields `mask` keeps (all without a mask).
fn relationship_to_proto(
    r: &Relationship,
    bundle: Option<&Bundle>,
    mask: Option<&pt::FederationRelationshipMask>,
) -> pt::FederationRelationship {
    let all = pt::FederationRelationshipMask { bundle_endpoint_url: true, bundle_endpoint_profile: true, trust_domain_bundle: true };
    let mask = mask.unwrap_or(&all);
    pt::FederationRelationship {
        trust_domain: r.trust_domain.as_str().to_owned(),
        bundle_endpoint_url: if mask.bundle_endpoint_url { r.bundle_endpoint_url.clone() } else { String::new() },
        bundle_endpoint_profile: mask.bundle_endpoint_profile.then(|| match &r.profile {
            ClientProfile::HttpsWeb => BundleEndpointProfile::HttpsWeb(pt::HttpsWebProfile {}),
            ClientProfile::HttpsSpiffe { endpoint_spiffe_id } => {
                BundleEndpointProfile::HttpsSpiffe(pt::HttpsspiffeProfile { endpoint_spiffe_id: endpoint_spiffe_id.to_string() })
            }
        }),
        trust_domain_bundle: if mask.trust_domain_bundle { bundle.map(bundle_to_proto) } else { None },
    }
}

fn parse_td(s: &str) -> Result<TrustDomain, ApiError> {
    TrustDomain::new(s).map_err(|e| ApiError::InvalidArgument(format!("failed to parse trust domain: {e}")))
}

impl Svc {
    /// The stored bundle of `td`, for replies (a read failure leaves it out, as it is only
    /// informative there).
    async fn stored_bundle(&self, td: &TrustDomain) -> Option<Bundle> {
        self.state().datastore.get_bundle(td).await.ok().flatten()
    }

    /// SPIRE's warning for an `https_spiffe` relationship that cannot authenticate its
    /// endpoint yet.
    async fn warn_if_no_endpoint_bundle(&self, rel: &Relationship, given: Option<&Bundle>) {
        if let ClientProfile::HttpsSpiffe { endpoint_spiffe_id } = &rel.profile {
            let td = endpoint_spiffe_id.trust_domain();
            let have = given.is_some_and(|b| &b.trust_domain == td) || self.stored_bundle(td).await.is_some();
            if !have {
                tracing::warn!(endpoint_spiffe_id = %endpoint_spiffe_id, "bundle not found for the endpoint SPIFFE ID trust domain");
            }
        }
    }

    async fn create_one(
        &self,
        r: &pt::FederationRelationship,
        mask: Option<&pt::FederationRelationshipMask>,
    ) -> Result<pt::FederationRelationship, ApiError> {
        let (rel, bundle) =
            relationship_from_proto(r).map_err(|e| ApiError::InvalidArgument(format!("failed to convert federation relationship: {e}")))?;
        if rel.trust_domain == self.state().trust_domain {
            return Err(ApiError::InvalidArgument("unable to create federation relationship for server trust domain".into()));
        }
        self.state().datastore.create_federation_relationship(&rel, bundle.as_ref()).await.map_err(|e| match e {
            DatastoreError::AlreadyExists { .. } | DatastoreError::Config(_) => {
                ApiError::InternalShown(format!("failed to create federation relationship: {e}"))
            }
            other => ApiError::from(other),
        })?;
        self.warn_if_no_endpoint_bundle(&rel, bundle.as_ref()).await;
        tracing::debug!(trust_domain = %rel.trust_domain, "Federation relationship created");
        Ok(relationship_to_proto(&rel, self.stored_bundle(&rel.trust_domain).await.as_ref(), mask))
    }

    async fn update_one(
        &self,
        r: &pt::FederationRelationship,
        input: Option<&pt::FederationRelationshipMask>,
        output: Option<&pt::FederationRelationshipMask>,
    ) -> Result<pt::FederationRelationship, ApiError> {
        let (given, bundle) =
            relationship_from_proto(r).map_err(|e| ApiError::InvalidArgument(format!("failed to convert federation relationship: {e}")))?;
        let ds = &self.state().datastore;
        let Some(mut rel) = ds.get_federation_relationship(&given.trust_domain).await? else {
            return Err(ApiError::InternalShown(
                "failed to update federation relationship: unable to fetch federation relationship: record not found".into(),
            ));
        };
        // Without an input mask every field is replaced (SPIRE's CLI sends none).
        let all = pt::FederationRelationshipMask { bundle_endpoint_url: true, bundle_endpoint_profile: true, trust_domain_bundle: true };
        let input = input.unwrap_or(&all);
        if input.bundle_endpoint_url {
            rel.bundle_endpoint_url = given.bundle_endpoint_url;
        }
        if input.bundle_endpoint_profile {
            rel.profile = given.profile;
        }
        let bundle = if input.trust_domain_bundle { bundle } else { None };
        ds.update_federation_relationship(&rel, bundle.as_ref()).await.map_err(|e| match e {
            DatastoreError::NotFound(_) | DatastoreError::Config(_) => {
                ApiError::InternalShown(format!("failed to update federation relationship: {e}"))
            }
            other => ApiError::from(other),
        })?;
        self.warn_if_no_endpoint_bundle(&rel, bundle.as_ref()).await;
        tracing::debug!(trust_domain = %rel.trust_domain, "Federation relationship updated");
        Ok(relationship_to_proto(&rel, self.stored_bundle(&rel.trust_domain).await.as_ref(), output))
    }

    async fn delete_one(&self, td: &str) -> Result<(), ApiError> {
        if td.is_empty() {
            return Err(ApiError::InvalidArgument("missing trust domain".into()));
        }
        let td = parse_td(td)?;
        self.state().datastore.delete_federation_relationship(&td).await.map_err(|e| match e {
            DatastoreError::NotFound(_) => ApiError::NotFound("federation relationship not found".into()),
            other => ApiError::Internal { public: "failed to delete federation relationship", detail: other.to_string() },
        })?;
        tracing::debug!(trust_domain = %td, "Federation relationship deleted");
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::trust_domain_server::TrustDomain for Svc {
    async fn list_federation_relationships(
        &self,
        req: Request<pb::ListFederationRelationshipsRequest>,
    ) -> Result<Response<pb::ListFederationRelationshipsResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.trustdomain.v1.TrustDomain/ListFederationRelationships").await?;
        let r = req.get_ref();
        if r.page_size < 0 {
            return Err(ApiError::InvalidArgument("page_size must not be negative".into()).into());
        }
        let all = self.state().datastore.list_federation_relationships().await.map_err(ApiError::from)?;
        // The page token is the last trust domain of the previous page (the list is ordered).
        let rest: Vec<_> =
            all.into_iter().filter(|rel| r.page_token.is_empty() || rel.trust_domain.as_str() > r.page_token.as_str()).collect();
        let size = if r.page_size == 0 { usize::MAX } else { usize::try_from(r.page_size).unwrap_or(usize::MAX) };
        let page: Vec<_> = rest.iter().take(size).collect();
        let next_page_token = match page.last() {
            Some(last) if rest.len() > page.len() => last.trust_domain.as_str().to_owned(),
            _ => String::new(),
        };
        let mut out = Vec::with_capacity(page.len());
        for rel in page {
            let bundle = if r.output_mask.as_ref().is_none_or(|m| m.trust_domain_bundle) {
                self.stored_bundle(&rel.trust_domain).await
            } else {
                None
            };
            out.push(relationship_to_proto(rel, bundle.as_ref(), r.output_mask.as_ref()));
        }
        Ok(Response::new(pb::ListFederationRelationshipsResponse { federation_relationships: out, next_page_token }))
    }

    async fn get_federation_relationship(
        &self,
        req: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<pt::FederationRelationship>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.trustdomain.v1.TrustDomain/GetFederationRelationship").await?;
        let r = req.get_ref();
        let td = parse_td(&r.trust_domain)?;
        let rel = self
            .state()
            .datastore
            .get_federation_relationship(&td)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound("federation relationship does not exist".into()))?;
        let bundle = self.stored_bundle(&td).await;
        Ok(Response::new(relationship_to_proto(&rel, bundle.as_ref(), r.output_mask.as_ref())))
    }

    async fn batch_create_federation_relationship(
        &self,
        req: Request<pb::BatchCreateFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchCreateFederationRelationshipResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.trustdomain.v1.TrustDomain/BatchCreateFederationRelationship")
            .await?;
        let r = req.get_ref();
        let mut results = Vec::with_capacity(r.federation_relationships.len());
        for rel in &r.federation_relationships {
            results.push(match self.create_one(rel, r.output_mask.as_ref()).await {
                Ok(fr) => pb::batch_create_federation_relationship_response::Result {
                    status: Some(ok_status()),
                    federation_relationship: Some(fr),
                },
                Err(e) => pb::batch_create_federation_relationship_response::Result {
                    status: Some(e.to_result_status()),
                    federation_relationship: None,
                },
            });
        }
        self.state().federation.trigger_reload();
        Ok(Response::new(pb::BatchCreateFederationRelationshipResponse { results }))
    }

    async fn batch_update_federation_relationship(
        &self,
        req: Request<pb::BatchUpdateFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchUpdateFederationRelationshipResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.trustdomain.v1.TrustDomain/BatchUpdateFederationRelationship")
            .await?;
        let r = req.get_ref();
        let mut results = Vec::with_capacity(r.federation_relationships.len());
        for rel in &r.federation_relationships {
            results.push(match self.update_one(rel, r.input_mask.as_ref(), r.output_mask.as_ref()).await {
                Ok(fr) => pb::batch_update_federation_relationship_response::Result {
                    status: Some(ok_status()),
                    federation_relationship: Some(fr),
                },
                Err(e) => pb::batch_update_federation_relationship_response::Result {
                    status: Some(e.to_result_status()),
                    federation_relationship: None,
                },
            });
        }
        self.state().federation.trigger_reload();
        Ok(Response::new(pb::BatchUpdateFederationRelationshipResponse { results }))
    }

    async fn batch_delete_federation_relationship(
        &self,
        req: Request<pb::BatchDeleteFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchDeleteFederationRelationshipResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.trustdomain.v1.TrustDomain/BatchDeleteFederationRelationship")
            .await?;
        let mut results = Vec::new();
        for td in &req.get_ref().trust_domains {
            let r = self.delete_one(td).await;
            results.push(pb::batch_delete_federation_relationship_response::Result {
                status: Some(r.map_or_else(|e| e.to_result_status(), |()| ok_status())),
                trust_domain: td.clone(),
            });
        }
        self.state().federation.trigger_reload();
        Ok(Response::new(pb::BatchDeleteFederationRelationshipResponse { results }))
    }

    async fn refresh_bundle(&self, req: Request<pb::RefreshBundleRequest>) -> Result<Response<()>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.trustdomain.v1.TrustDomain/RefreshBundle").await?;
        let td = parse_td(&req.get_ref().trust_domain)?;
        match self.state().federation.refresh_now(&td).await {
            Ok(_) => {
                tracing::debug!(trust_domain = %td, "Bundle refreshed");
                Ok(Response::new(()))
            }
            Err(e @ RefreshNowError::NotManaged(_)) => Err(ApiError::NotFound(e.to_string()).into()),
            Err(RefreshNowError::Failed(e)) => Err(ApiError::InternalShown(format!("failed to refresh bundle: {e}")).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(td: &str, url: &str) -> pt::FederationRelationship {
        pt::FederationRelationship {
            trust_domain: td.into(),
            bundle_endpoint_url: url.into(),
            bundle_endpoint_profile: Some(BundleEndpointProfile::HttpsWeb(pt::HttpsWebProfile {})),
            trust_domain_bundle: None,
        }
    }

    #[test]
    fn relationships_are_validated_as_spire_does() {
        let err = |r: pt::FederationRelationship| relationship_from_proto(&r).unwrap_err();
        assert!(err(web("Not A TD!", "https://a")).starts_with("failed to parse trust domain"));
        assert!(err(web("a.test", "no url")).starts_with("failed to parse bundle endpoint URL"));
        assert_eq!(err(web("a.test", "http://a.test/")), "bundle endpoint URL must use the https scheme");
        assert_eq!(err(web("a.test", "https://user:pw@a.test/")), "bundle endpoint URL must not contain user info");
        assert_eq!(
            err(pt::FederationRelationship { bundle_endpoint_profile: None, ..web("a.test", "https://a.test") }),
            "unsupported bundle endpoint profile type: <nil>"
        );
        let bad_id = pt::FederationRelationship {
            bundle_endpoint_profile: Some(BundleEndpointProfile::HttpsSpiffe(pt::HttpsspiffeProfile {
                endpoint_spiffe_id: "a.test/x".into(),
            })),
            ..web("a.test", "https://a.test")
        };
        assert!(err(bad_id).starts_with("failed to parse endpoint SPIFFE ID"));
        let other = pt::FederationRelationship {
            trust_domain_bundle: Some(pt::Bundle { trust_domain: "b.test".into(), ..pt::Bundle::default() }),
            ..web("a.test", "https://a.test")
        };
        assert_eq!(err(other), "trust domain bundle (\"b.test\") must match the trust domain of the federation relationship (\"a.test\")");
        let (rel, bundle) = relationship_from_proto(&web("a.test", "https://a.test:8443/b")).unwrap();
        assert_eq!((rel.bundle_endpoint_url.as_str(), rel.profile, bundle), ("https://a.test:8443/b", ClientProfile::HttpsWeb, None));
    }

    #[test]
    fn masks_leave_out_what_they_clear() {
        let rel = Relationship {
            trust_domain: TrustDomain::new("a.test").unwrap(),
            bundle_endpoint_url: "https://a.test".into(),
            profile: ClientProfile::HttpsSpiffe { endpoint_spiffe_id: SpiffeId::new("spiffe://a.test/spire/server").unwrap() },
        };
        let full = relationship_to_proto(&rel, None, None);
        assert_eq!(full.bundle_endpoint_url, "https://a.test");
        assert!(
            matches!(full.bundle_endpoint_profile, Some(BundleEndpointProfile::HttpsSpiffe(ref p)) if p.endpoint_spiffe_id == "spiffe://a.test/spire/server")
        );
        let none = relationship_to_proto(&rel, None, Some(&pt::FederationRelationshipMask::default()));
        assert_eq!((none.trust_domain.as_str(), none.bundle_endpoint_url.as_str(), none.bundle_endpoint_profile), ("a.test", "", None));
    }
}
