//! `spire.api.server.logger.v1.Logger`: the server's log level, changed at run time (SPIRE's
//! Logger API). Local or admin callers, on both listeners, as SPIRE serves it.

use super::status::ApiError;
use super::{Policy, Svc};
use crate::wire::convert::{log_level_request, logger_to_proto};
use crate::wire::pb::spire::api::server::logger::v1 as pb;
use crate::wire::pb::spire::api::types as pt;
use tonic::{Request, Response, Status};

fn answer(levels: Result<(&str, &str), String>) -> Result<Response<pt::Logger>, Status> {
    let (current, launch) = levels.map_err(ApiError::InternalShown)?;
    Ok(Response::new(logger_to_proto(current, launch)))
}

#[tonic::async_trait]
impl pb::logger_server::Logger for Svc {
    async fn get_logger(&self, req: Request<pb::GetLoggerRequest>) -> Result<Response<pt::Logger>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.logger.v1.Logger/GetLogger").await?;
        tracing::info!("GetLogger Called");
        answer(crate::telemetry::log_levels().ok_or_else(|| "logging is not set up in this process".to_owned()))
    }

    async fn set_log_level(&self, req: Request<pb::SetLogLevelRequest>) -> Result<Response<pt::Logger>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.logger.v1.Logger/SetLogLevel").await?;
        let level = log_level_request(req.get_ref().new_level).map_err(|m| ApiError::InvalidArgument(m.into()))?;
        tracing::info!(new_log_level = level, "SetLogLevel Called");
        answer(crate::telemetry::set_log_level(Some(level)))
    }

    async fn reset_log_level(&self, req: Request<pb::ResetLogLevelRequest>) -> Result<Response<pt::Logger>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.logger.v1.Logger/ResetLogLevel").await?;
        let r = crate::telemetry::set_log_level(None);
        if let Ok((_, launch)) = &r {
            tracing::info!(launch_log_level = launch, "ResetLogLevel Called");
        }
        answer(r)
    }
}
