//! `spire.api.server.localauthority.v1.LocalAuthority`: forced rotation and compromise
//! response for this tier's own authorities. Admin and local callers only.
//!
//! The operator prepares a new authority, activates it (the active one becomes "old"), taints
//! the old one (every SVID it signed is to be replaced: the bundle says so, agents and tiers
//! below react) and finally revokes it (it leaves the bundle, and nothing it signed validates).
//! With an upstream authority, the X.509 steps are taken on the upstream authority that signed
//! the old CA instead. Preconditions, codes and messages follow SPIRE's service, so that
//! `spire-server localauthority ...` and scripts written for SPIRE see the same answers.

use super::status::ApiError;
use super::{Policy, Svc};
use crate::ca::{AuthorityState, AuthorityStates};
use crate::wire::pb::spire::api::server::localauthority::v1 as pb;
use tonic::{Request, Response, Status};

const WIT: &str = "WIT-SVID functionality is not yet implemented";

fn to_proto(s: &AuthorityState) -> pb::AuthorityState {
    pb::AuthorityState {
        authority_id: s.authority_id.clone(),
        expires_at: s.expires_at,
        upstream_authority_subject_key_id: s.upstream_authority_id.clone(),
    }
}

/// Only the id (SPIRE answers taint and revoke of a JWT key, and revoke of an X.509 CA, so).
fn id_only(authority_id: &str) -> pb::AuthorityState {
    pb::AuthorityState { authority_id: authority_id.to_owned(), ..pb::AuthorityState::default() }
}

/// The authority in the second slot: prepared, or else old (SPIRE's "next" slot), with the
/// status SPIRE names in its messages.
fn next_of(states: &AuthorityStates) -> Option<(&AuthorityState, &'static str)> {
    states.prepared.as_ref().map(|p| (p, "PREPARED")).or_else(|| states.old.as_ref().map(|o| (o, "OLD")))
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::InternalShown(format!("{what}: {e}"))
}

/// Activation: `id` must name the prepared authority.
fn check_activation(states: &AuthorityStates, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::InvalidArgument("no authority ID provided".into()));
    }
    match next_of(states) {
        Some((next, _)) if next.authority_id != id => Err(ApiError::InvalidArgument("unexpected authority ID".into())),
        None => Err(ApiError::InvalidArgument("unexpected authority ID".into())),
        Some((_, "PREPARED")) => Ok(()),
        Some((_, status)) => {
            Err(internal("only Prepared authorities can be activated", format!("unsupported local authority status: {status}")))
        }
    }
}

/// Taint of a local authority: `id` must name the old one.
fn check_taint(states: &AuthorityStates, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::InvalidArgument("no authority ID provided".into()));
    }
    if states.active.as_ref().is_some_and(|a| a.authority_id == id) {
        return Err(ApiError::InvalidArgument("unable to taint current local authority".into()));
    }
    match next_of(states) {
        Some((next, "OLD")) if next.authority_id == id => Ok(()),
        Some((next, status)) if next.authority_id == id => Err(ApiError::InvalidArgument(format!(
            "only Old local authorities can be tainted: unsupported local authority status: {status}"
        ))),
        _ => Err(ApiError::InvalidArgument("unexpected authority ID".into())),
    }
}

/// The upstream authority of the old CA: `ski` must be it, and not the active CA's.
fn check_upstream(states: &AuthorityStates, ski: &str) -> Result<(), &'static str> {
    if ski.is_empty() {
        return Err("no subject key ID provided");
    }
    if states.active.as_ref().is_some_and(|a| a.upstream_authority_id == ski) {
        return Err("unable to use upstream authority singing current authority");
    }
    match next_of(states) {
        Some((next, status)) if next.upstream_authority_id == ski => {
            if status == "PREPARED" {
                Err("only upstream authorities signing an old authority can be used")
            } else {
                Ok(())
            }
        }
        _ => Err("upstream authority didn't sign the old local authority"),
    }
}

impl Svc {
    fn jwt_enabled(&self) -> Result<(), ApiError> {
        if self.state().ca.jwt_disabled() { Err(ApiError::Unimplemented("JWT functionality is disabled")) } else { Ok(()) }
    }

    async fn x509_states_ready(&self) -> Result<AuthorityStates, ApiError> {
        let states = self.state().ca_manager.x509_states().await;
        if states.active.is_none() {
            return Err(ApiError::Unavailable("server is initializing".into()));
        }
        Ok(states)
    }

    async fn jwt_states_ready(&self) -> Result<AuthorityStates, ApiError> {
        self.jwt_enabled()?;
        let states = self.state().ca_manager.jwt_states().await;
        if states.active.is_none() {
            return Err(ApiError::Unavailable("server is initializing".into()));
        }
        Ok(states)
    }

    fn no_upstream(&self, msg: &str) -> Result<(), ApiError> {
        if self.state().ca_manager.has_upstream() { Err(ApiError::FailedPrecondition(msg.to_owned())) } else { Ok(()) }
    }

    fn need_upstream(&self) -> Result<(), ApiError> {
        if self.state().ca_manager.has_upstream() {
            Ok(())
        } else {
            Err(ApiError::FailedPrecondition("upstream authority is not configured".into()))
        }
    }

    /// Whether `kid` is one of the bundle's JWT keys (revocation may name any key there that is
    /// neither active nor prepared).
    async fn bundle_has_kid(&self, kid: &str) -> Result<bool, ApiError> {
        let st = self.state();
        let bundle =
            st.datastore.get_bundle(&st.trust_domain).await.map_err(|e| ApiError::InvalidArgument(format!("invalid authority ID: {e}")))?;
        Ok(bundle.is_some_and(|b| b.jwt_authority(kid).is_some()))
    }
}

#[tonic::async_trait]
impl pb::local_authority_server::LocalAuthority for Svc {
    async fn get_jwt_authority_state(
        &self,
        req: Request<pb::GetJwtAuthorityStateRequest>,
    ) -> Result<Response<pb::GetJwtAuthorityStateResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/GetJWTAuthorityState").await?;
        let s = self.jwt_states_ready().await?;
        Ok(Response::new(pb::GetJwtAuthorityStateResponse {
            active: s.active.as_ref().map(to_proto),
            prepared: s.prepared.as_ref().map(to_proto),
            old: s.old.as_ref().map(to_proto),
        }))
    }

    async fn prepare_jwt_authority(
        &self,
        req: Request<pb::PrepareJwtAuthorityRequest>,
    ) -> Result<Response<pb::PrepareJwtAuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/PrepareJWTAuthority").await?;
        self.jwt_states_ready().await?;
        let prepared =
            self.state().ca_manager.prepare_jwt_now(crate::now_unix()).await.map_err(|e| internal("failed to prepare JWT authority", e))?;
        Ok(Response::new(pb::PrepareJwtAuthorityResponse { prepared_authority: Some(to_proto(&prepared)) }))
    }

    async fn activate_jwt_authority(
        &self,
        req: Request<pb::ActivateJwtAuthorityRequest>,
    ) -> Result<Response<pb::ActivateJwtAuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/ActivateJWTAuthority").await?;
        self.jwt_enabled()?;
        let id = &req.get_ref().authority_id;
        check_activation(&self.state().ca_manager.jwt_states().await, id)?;
        let active = self.state().ca_manager.activate_jwt_now(id).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ActivateJwtAuthorityResponse { activated_authority: Some(to_proto(&active)) }))
    }

    async fn taint_jwt_authority(
        &self,
        req: Request<pb::TaintJwtAuthorityRequest>,
    ) -> Result<Response<pb::TaintJwtAuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/TaintJWTAuthority").await?;
        self.jwt_enabled()?;
        let id = &req.get_ref().authority_id;
        check_taint(&self.state().ca_manager.jwt_states().await, id)?;
        let st = self.state();
        st.datastore.taint_jwt_authority(&st.trust_domain, id).await.map_err(|e| internal("failed to taint JWT authority", e))?;
        tracing::info!(local_authority_id = %id, "JWT authority tainted successfully");
        Ok(Response::new(pb::TaintJwtAuthorityResponse { tainted_authority: Some(id_only(id)) }))
    }

    async fn revoke_jwt_authority(
        &self,
        req: Request<pb::RevokeJwtAuthorityRequest>,
    ) -> Result<Response<pb::RevokeJwtAuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/RevokeJWTAuthority").await?;
        self.jwt_enabled()?;
        let id = &req.get_ref().authority_id;
        let states = self.state().ca_manager.jwt_states().await;
        let invalid = |why: &str| ApiError::InvalidArgument(format!("invalid authority ID: {why}"));
        if id.is_empty() {
            return Err(invalid("no authority ID provided").into());
        }
        match next_of(&states) {
            Some((next, "PREPARED")) if &next.authority_id == id => return Err(invalid("unable to use a prepared key").into()),
            Some((next, _)) if &next.authority_id == id => {}
            _ => {
                if states.active.as_ref().is_some_and(|a| &a.authority_id == id) {
                    return Err(invalid("unable to use current authority").into());
                }
                if !self.bundle_has_kid(id).await? {
                    return Err(invalid("no JWT authority found with provided authority ID").into());
                }
            }
        }
        let st = self.state();
        st.datastore.revoke_jwt_authority(&st.trust_domain, id).await.map_err(|e| internal("failed to revoke JWT authority", e))?;
        tracing::info!(local_authority_id = %id, "JWT authority revoked successfully");
        Ok(Response::new(pb::RevokeJwtAuthorityResponse { revoked_authority: Some(id_only(id)) }))
    }

    async fn get_x509_authority_state(
        &self,
        req: Request<pb::GetX509AuthorityStateRequest>,
    ) -> Result<Response<pb::GetX509AuthorityStateResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/GetX509AuthorityState").await?;
        let s = self.x509_states_ready().await?;
        Ok(Response::new(pb::GetX509AuthorityStateResponse {
            active: s.active.as_ref().map(to_proto),
            prepared: s.prepared.as_ref().map(to_proto),
            old: s.old.as_ref().map(to_proto),
        }))
    }

    async fn prepare_x509_authority(
        &self,
        req: Request<pb::PrepareX509AuthorityRequest>,
    ) -> Result<Response<pb::PrepareX509AuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/PrepareX509Authority").await?;
        self.x509_states_ready().await?;
        let prepared = self
            .state()
            .ca_manager
            .prepare_x509_now(crate::now_unix())
            .await
            .map_err(|e| internal("failed to prepare X.509 authority", e))?;
        Ok(Response::new(pb::PrepareX509AuthorityResponse { prepared_authority: Some(to_proto(&prepared)) }))
    }

    async fn activate_x509_authority(
        &self,
        req: Request<pb::ActivateX509AuthorityRequest>,
    ) -> Result<Response<pb::ActivateX509AuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/ActivateX509Authority").await?;
        let id = &req.get_ref().authority_id;
        check_activation(&self.state().ca_manager.x509_states().await, id)?;
        let active = self.state().ca_manager.activate_x509_now(id).await.map_err(ApiError::from)?;
        tracing::debug!(trust_domain_id = %self.state().trust_domain.id_string(), "Successfully rotated X.509 CA");
        Ok(Response::new(pb::ActivateX509AuthorityResponse { activated_authority: Some(to_proto(&active)) }))
    }

    async fn taint_x509_authority(
        &self,
        req: Request<pb::TaintX509AuthorityRequest>,
    ) -> Result<Response<pb::TaintX509AuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/TaintX509Authority").await?;
        self.no_upstream("local authority can't be tainted if there is an upstream authority")?;
        let id = &req.get_ref().authority_id;
        let states = self.state().ca_manager.x509_states().await;
        check_taint(&states, id)?;
        let st = self.state();
        st.datastore.taint_x509_authority(&st.trust_domain, id).await.map_err(|e| internal("failed to taint X.509 authority", e))?;
        tracing::info!(local_authority_id = %id, "X.509 authority tainted successfully");
        let old = states.old.as_ref().map(to_proto);
        Ok(Response::new(pb::TaintX509AuthorityResponse { tainted_authority: old }))
    }

    async fn taint_x509_upstream_authority(
        &self,
        req: Request<pb::TaintX509UpstreamAuthorityRequest>,
    ) -> Result<Response<pb::TaintX509UpstreamAuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/TaintX509UpstreamAuthority").await?;
        self.need_upstream()?;
        let ski = req.get_ref().subject_key_id.to_lowercase();
        check_upstream(&self.state().ca_manager.x509_states().await, &ski)
            .map_err(|why| ApiError::InvalidArgument(format!("provided subject key id is not valid: {why}")))?;
        let st = self.state();
        st.datastore.taint_x509_authority(&st.trust_domain, &ski).await.map_err(|e| internal("failed to taint upstream authority", e))?;
        tracing::info!(subject_key_id = %ski, "X.509 upstream authority tainted successfully");
        Ok(Response::new(pb::TaintX509UpstreamAuthorityResponse { upstream_authority_subject_key_id: ski }))
    }

    async fn revoke_x509_authority(
        &self,
        req: Request<pb::RevokeX509AuthorityRequest>,
    ) -> Result<Response<pb::RevokeX509AuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/RevokeX509Authority").await?;
        self.no_upstream("local authority can't be revoked if there is an upstream authority")?;
        let id = &req.get_ref().authority_id;
        let states = self.state().ca_manager.x509_states().await;
        let invalid = |why: &str| ApiError::InvalidArgument(format!("invalid authority ID: {why}"));
        if id.is_empty() {
            return Err(invalid("no authority ID provided").into());
        }
        if states.active.as_ref().is_some_and(|a| &a.authority_id == id) {
            return Err(invalid("unable to use current authority").into());
        }
        if !matches!(next_of(&states), Some((next, "OLD")) if &next.authority_id == id) {
            return Err(invalid("only Old local authority can be revoked").into());
        }
        let st = self.state();
        st.datastore.revoke_x509_authority(&st.trust_domain, id).await.map_err(|e| internal("failed to revoke X.509 authority", e))?;
        tracing::info!(local_authority_id = %id, "X.509 authority revoked successfully");
        Ok(Response::new(pb::RevokeX509AuthorityResponse { revoked_authority: Some(id_only(id)) }))
    }

    async fn revoke_x509_upstream_authority(
        &self,
        req: Request<pb::RevokeX509UpstreamAuthorityRequest>,
    ) -> Result<Response<pb::RevokeX509UpstreamAuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/RevokeX509UpstreamAuthority")
            .await?;
        self.need_upstream()?;
        let ski = req.get_ref().subject_key_id.to_lowercase();
        check_upstream(&self.state().ca_manager.x509_states().await, &ski)
            .map_err(|why| ApiError::InvalidArgument(format!("invalid subject key ID: {why}")))?;
        let st = self.state();
        st.datastore
            .revoke_x509_authority(&st.trust_domain, &ski)
            .await
            .map_err(|e| internal("failed to revoke X.509 upstream authority", e))?;
        tracing::info!(subject_key_id = %ski, "X.509 upstream authority successfully revoked");
        Ok(Response::new(pb::RevokeX509UpstreamAuthorityResponse { upstream_authority_subject_key_id: ski }))
    }

    async fn get_wit_authority_state(
        &self,
        req: Request<pb::GetWitAuthorityStateRequest>,
    ) -> Result<Response<pb::GetWitAuthorityStateResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/GetWITAuthorityState").await?;
        Err(ApiError::Unimplemented(WIT).into())
    }

    async fn prepare_wit_authority(
        &self,
        req: Request<pb::PrepareWitAuthorityRequest>,
    ) -> Result<Response<pb::PrepareWitAuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/PrepareWITAuthority").await?;
        Err(ApiError::Unimplemented(WIT).into())
    }

    async fn activate_wit_authority(
        &self,
        req: Request<pb::ActivateWitAuthorityRequest>,
    ) -> Result<Response<pb::ActivateWitAuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/ActivateWITAuthority").await?;
        Err(ApiError::Unimplemented(WIT).into())
    }

    async fn taint_wit_authority(
        &self,
        req: Request<pb::TaintWitAuthorityRequest>,
    ) -> Result<Response<pb::TaintWitAuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/TaintWITAuthority").await?;
        Err(ApiError::Unimplemented(WIT).into())
    }

    async fn revoke_wit_authority(
        &self,
        req: Request<pb::RevokeWitAuthorityRequest>,
    ) -> Result<Response<pb::RevokeWitAuthorityResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.localauthority.v1.LocalAuthority/RevokeWITAuthority").await?;
        Err(ApiError::Unimplemented(WIT).into())
    }
}
