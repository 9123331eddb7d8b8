//! The one place Workload API errors become gRPC statuses, as `api/status.rs` is for the
//! server. Codes follow the SPIFFE Workload API spec and SPIRE's agent: a caller with no
//! identity gets `PermissionDenied`, an agent not ready yet `Unavailable`.

use tonic::Status;

/// Errors a Workload API handler returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadError {
    /// The `workload.spiffe.io: true` header is missing.
    #[error("security header missing from request")]
    MissingHeader,
    /// The agent has not synchronised with its server yet.
    #[error("workload API is not ready: the agent has not synchronised with the server yet")]
    NotReady,
    /// The caller could not be attested.
    #[error("workload attestation failed")]
    AttestationFailed,
    /// The process behind the connection changed after it connected.
    #[error("the calling process is not the one that connected")]
    PeerChanged,
    /// No registration entry matches the caller.
    #[error("no identity issued")]
    NoIdentity,
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The agent cannot answer now.
    #[error("{0}")]
    Unavailable(String),
    /// Not implemented by cairn.
    #[error("{0}")]
    Unimplemented(&'static str),
}

impl From<WorkloadError> for Status {
    fn from(e: WorkloadError) -> Self {
        let msg = e.to_string();
        match e {
            WorkloadError::MissingHeader | WorkloadError::InvalidArgument(_) => Status::invalid_argument(msg),
            WorkloadError::NotReady | WorkloadError::AttestationFailed | WorkloadError::Unavailable(_) => Status::unavailable(msg),
            WorkloadError::PeerChanged | WorkloadError::NoIdentity => Status::permission_denied(msg),
            WorkloadError::Unimplemented(_) => Status::unimplemented(msg),
        }
    }
}
