//! `spire.api.server.svid.v1.SVID`.

use super::status::ApiError;
use super::{Policy, Svc, now};
use crate::ca::X509SvidRequest;
use crate::pki::Csr;
use crate::spiffe::SpiffeId;
use crate::spiffe::names::{check_wildcard_overlap, validate_dns_name, verify_trust_domain_workload_id};
use crate::wire::convert::{id_from_proto, id_to_proto};
use crate::wire::pb::spire::api::server::svid::v1 as pb;
use crate::wire::pb::spire::api::types as pt;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl pb::svid_server::Svid for Svc {
    async fn mint_x509svid(&self, req: Request<pb::MintX509svidRequest>) -> Result<Response<pb::MintX509svidResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.svid.v1.SVID/MintX509SVID").await?;
        let r = req.get_ref();
        crate::pki::csr::check_size(&r.csr).map_err(ApiError::from)?;
        if r.ttl < 0 {
            return Err(ApiError::InvalidArgument("ttl must not be negative".into()).into());
        }
        let Csr { public_key: spki, uris, dns_names: dns, .. } = Csr::parse(&r.csr).map_err(ApiError::from)?;
        let [uri] = uris.as_slice() else {
            return Err(ApiError::InvalidArgument(format!("CSR must have exactly one URI SAN, found {}", uris.len())).into());
        };
        let id = SpiffeId::new(uri).map_err(|e| ApiError::InvalidArgument(format!("CSR URI SAN is not a valid SPIFFE ID: {e}")))?;
        // SPIRE's checks, in SPIRE's order and words: an admin mints workload SVIDs only, never
        // the server's or an agent's identity, and only in this trust domain.
        verify_trust_domain_workload_id(&self.state().trust_domain, &id)
            .map_err(|m| ApiError::InvalidArgument(format!("CSR URI SAN is invalid: {m}")))?;
        for name in &dns {
            validate_dns_name(name).map_err(|m| ApiError::InvalidArgument(format!("CSR DNS name is invalid: {name:?}: {m}")))?;
        }
        check_wildcard_overlap(&dns).map_err(|m| {
            ApiError::InvalidArgument(format!("CSR DNS name contains a wildcard that covers another non-wildcard name: {m}"))
        })?;
        let minted = self
            .state()
            .ca
            .mint_x509_svid(&spki, &X509SvidRequest { id: &id, dns_names: &dns, ttl: i64::from(r.ttl) }, now())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::MintX509svidResponse {
            svid: Some(pt::X509svid {
                cert_chain: minted.chain,
                id: Some(id_to_proto(&id)),
                expires_at: minted.not_after,
                hint: String::new(),
            }),
        }))
    }

    async fn mint_jwtsvid(&self, req: Request<pb::MintJwtsvidRequest>) -> Result<Response<pb::MintJwtsvidResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.svid.v1.SVID/MintJWTSVID").await?;
        let r = req.get_ref();
        let id = id_from_proto(r.id.as_ref(), "SPIFFE ID")?;
        verify_trust_domain_workload_id(&self.state().trust_domain, &id)
            .map_err(|m| ApiError::InvalidArgument(format!("invalid SPIFFE ID: {m}")))?;
        if r.ttl < 0 {
            return Err(ApiError::InvalidArgument("ttl must not be negative".into()).into());
        }
        let now = now();
        let (token, exp) = self.state().ca.mint_jwt_svid(&id, &r.audience, i64::from(r.ttl), now).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::MintJwtsvidResponse {
            svid: Some(pt::Jwtsvid { token, id: Some(id_to_proto(&id)), expires_at: exp, issued_at: now, hint: String::new() }),
        }))
    }

    async fn mint_witsvid(&self, _req: Request<pb::MintWitsvidRequest>) -> Result<Response<pb::MintWitsvidResponse>, Status> {
        Err(ApiError::Unimplemented("WIT-SVIDs are not supported").into())
    }

    async fn batch_new_x509svid(
        &self,
        req: Request<pb::BatchNewX509svidRequest>,
    ) -> Result<Response<pb::BatchNewX509svidResponse>, Status> {
        let caller = self.authorize(&req, Policy::Agent, "/spire.api.server.svid.v1.SVID/BatchNewX509SVID").await?;
        let agent = caller.id().ok_or(ApiError::PermissionDenied("/spire.api.server.svid.v1.SVID/BatchNewX509SVID"))?;
        let params = req.into_inner().params;
        if params.is_empty() {
            return Err(ApiError::InvalidArgument("missing parameters".into()).into());
        }
        let now = now();
        // Shared with the agent's sync and its other batches: one crawl for all of them.
        let authorized = self.state().entry_cache.authorized_entries_shared(agent, now);
        // An agent's first sync sends its CSRs one batch at a time; split over the cores, a
        // batch takes about 1/cores of the time (checking CSRs and signing is nearly all of it).
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let parts = cores.min(params.len() / BATCH_PART_MIN).max(1);
        let results = if parts == 1 {
            mint_batch(self.state(), &authorized, &params, now).await
        } else {
            let per = params.len().div_ceil(parts);
            let mut params = params;
            let mut tasks = Vec::with_capacity(parts);
            while !params.is_empty() {
                let rest = params.split_off(per.min(params.len()));
                let part = std::mem::replace(&mut params, rest);
                let (state, authorized) = (self.state_arc(), std::sync::Arc::clone(&authorized));
                tasks.push(tokio::spawn(async move { mint_batch(&state, &authorized, &part, now).await }));
            }
            let mut results = Vec::with_capacity(per * parts);
            for t in tasks {
                let part = t
                    .await
                    .map_err(|e| ApiError::Internal { public: "failed to mint X509-SVIDs", detail: format!("minting task: {e}") })?;
                results.extend(part);
            }
            results
        };
        Ok(Response::new(pb::BatchNewX509svidResponse { results }))
    }

    async fn new_jwtsvid(&self, req: Request<pb::NewJwtsvidRequest>) -> Result<Response<pb::NewJwtsvidResponse>, Status> {
        let caller = self.authorize(&req, Policy::Agent, "/spire.api.server.svid.v1.SVID/NewJWTSVID").await?;
        let agent = caller.id().ok_or(ApiError::PermissionDenied("/spire.api.server.svid.v1.SVID/NewJWTSVID"))?;
        let r = req.get_ref();
        let now = now();
        let entry = self
            .state()
            .entry_cache
            .authorized_entry(agent, &r.entry_id, now)
            .ok_or_else(|| ApiError::NotFound("entry not found or not authorized".into()))?;
        let audience: Vec<String> = r.audience.iter().filter(|a| !a.is_empty()).cloned().collect();
        if audience.is_empty() {
            return Err(ApiError::InvalidArgument("at least one audience is required".into()).into());
        }
        // `exp` must not pass the entry's expiry.
        let (token, exp) = self
            .state()
            .ca
            .mint_jwt_svid_with(
                &entry.spiffe_id,
                &audience,
                i64::from(entry.jwt_svid_ttl),
                entry.expires_at,
                entry.jwt_svid_include_jti,
                now,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::NewJwtsvidResponse {
            svid: Some(pt::Jwtsvid {
                token,
                id: Some(id_to_proto(&entry.spiffe_id)),
                expires_at: exp,
                issued_at: now,
                hint: entry.hint.clone(),
            }),
        }))
    }

    async fn batch_new_witsvid(&self, _req: Request<pb::BatchNewWitsvidRequest>) -> Result<Response<pb::BatchNewWitsvidResponse>, Status> {
        Err(ApiError::Unimplemented("WIT-SVIDs are not supported").into())
    }

    async fn new_downstream_x509ca(
        &self,
        req: Request<pb::NewDownstreamX509caRequest>,
    ) -> Result<Response<pb::NewDownstreamX509caResponse>, Status> {
        self.authorize(&req, Policy::Downstream, "/spire.api.server.svid.v1.SVID/NewDownstreamX509CA").await?;
        let r = req.get_ref();
        crate::pki::csr::check_size(&r.csr).map_err(ApiError::from)?;
        if r.preferred_ttl < 0 {
            return Err(ApiError::InvalidArgument("preferred_ttl must not be negative".into()).into());
        }
        let spki = Csr::parse(&r.csr).map_err(ApiError::from)?.public_key;
        let ttl = if r.preferred_ttl == 0 { self.state().ca_ttl } else { i64::from(r.preferred_ttl) };
        let chain = self.state().ca.mint_downstream_ca(&spki, &self.state().ca_subject, ttl, now()).await.map_err(ApiError::from)?.chain;
        let bundle = self.state().datastore.get_bundle(&self.state().trust_domain).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::NewDownstreamX509caResponse {
            ca_cert_chain: chain,
            x509_authorities: bundle.map(|b| b.x509_authorities).unwrap_or_default(),
        }))
    }
}

/// The fewest CSRs of a batch worth a task of their own.
const BATCH_PART_MIN: usize = 64;

/// BatchNewX509SVID's work for `params`, in order: each CSR checked and its entry's SVID
/// minted, or the reason it was not.
async fn mint_batch(
    state: &super::ApiState,
    authorized: &[std::sync::Arc<crate::datastore::Entry>],
    params: &[pb::NewX509svidParams],
    now: i64,
) -> Vec<pb::batch_new_x509svid_response::Result> {
    let mut results = Vec::with_capacity(params.len());
    let mut next = 0;
    for p in params {
        let r: Result<pt::X509svid, ApiError> = async {
            if p.entry_id.is_empty() {
                return Err(ApiError::InvalidArgument("missing entry ID".into()));
            }
            crate::pki::csr::check_size(&p.csr)?;
            let entry = crate::datastore::entrycache::find_entry_after(authorized, &p.entry_id, &mut next)
                .ok_or_else(|| ApiError::NotFound("entry not found or not authorized".into()))?;
            let csr = Csr::parse(&p.csr)?;
            let req = X509SvidRequest { id: &entry.spiffe_id, dns_names: &entry.dns_names, ttl: i64::from(entry.x509_svid_ttl) };
            // The SVID must not outlive its entry.
            let minted = state.ca.mint_x509_svid_until(&csr.public_key, &req, entry.expires_at, now).await?;
            Ok(pt::X509svid {
                cert_chain: minted.chain,
                id: Some(id_to_proto(&entry.spiffe_id)),
                expires_at: minted.not_after,
                hint: String::new(),
            })
        }
        .await;
        results.push(match r {
            Ok(svid) => pb::batch_new_x509svid_response::Result { status: Some(super::status::ok_status()), svid: Some(svid) },
            Err(e) => pb::batch_new_x509svid_response::Result { status: Some(e.to_result_status()), svid: None },
        });
    }
    results
}
