//! The one place API errors become gRPC statuses.
//!
//! Codes follow SPIRE (`pkg/common/api/status.go` and the per-RPC table in
//! `shared/reference/spire-protocol.md` §7). Internal causes are logged in full and answered
//! with a generic message, so datastore and key details never reach a caller.

use crate::ca::CaError;
use crate::datastore::DatastoreError;
use tonic::{Code, Status};

/// Errors an API handler returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed or names something invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named record does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A record with the same identity exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller may not call this method.
    #[error("authorization denied for method {0}")]
    PermissionDenied(&'static str),
    /// An agent failed the agent check; `reason` is SPIRE's `PermissionDeniedDetails.Reason`,
    /// sent in the status details so agents know whether to re-attest or stop.
    #[error("authorization denied for method {method}")]
    AgentDenied {
        /// The method called.
        method: &'static str,
        /// `PermissionDeniedDetails.Reason` value.
        reason: i32,
        /// What is logged.
        detail: String,
    },
    /// Refused with a message of its own (attestation failures).
    #[error("{0}")]
    Denied(String),
    /// The caller presented an unusable certificate.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller has made too many (failed) attempts and must wait.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request is not allowed in this server's configuration or state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The server cannot serve this now (e.g. no CA yet).
    #[error("{0}")]
    Unavailable(String),
    /// Not implemented by this cairn.
    #[error("{0}")]
    Unimplemented(&'static str),
    /// A failure SPIRE reports as `Internal` whose message names nothing secret, so it is shown
    /// as is (e.g. a refresh that failed, with the endpoint's reason).
    #[error("{0}")]
    InternalShown(String),
    /// A failure inside the server; `public` is what the caller sees.
    #[error("{public}: {detail}")]
    Internal {
        /// What the caller is told.
        public: &'static str,
        /// What is logged.
        detail: String,
    },
}

impl ApiError {
    /// The code of this error (also used for per-item results of batch RPCs).
    #[must_use]
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::PermissionDenied(_) | Self::AgentDenied { .. } | Self::Denied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::Internal { .. } | Self::InternalShown(_) => Code::Internal,
        }
    }

    /// The message a caller sees.
    #[must_use]
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal { public, detail } => {
                tracing::error!(error = %detail, "{public}");
                (*public).to_owned()
            }
            other => other.to_string(),
        }
    }

    /// The `spire.api.types.Status` for a batch result.
    #[must_use]
    pub fn to_result_status(&self) -> crate::wire::pb::spire::api::types::Status {
        crate::wire::pb::spire::api::types::Status { code: self.code() as i32, message: self.public_message() }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        if let ApiError::AgentDenied { reason, detail, .. } = &e {
            tracing::info!(reason, %detail, "agent denied");
            let msg = e.public_message();
            return crate::wire::details::permission_denied(msg, *reason);
        }
        Status::new(e.code(), e.public_message())
    }
}

impl From<crate::wire::WireError> for ApiError {
    fn from(e: crate::wire::WireError) -> Self {
        match e {
            crate::wire::WireError::Invalid(m) => Self::InvalidArgument(m),
        }
    }
}

impl From<crate::wire::WireError> for Status {
    fn from(e: crate::wire::WireError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<crate::attest::AttestError> for ApiError {
    fn from(e: crate::attest::AttestError) -> Self {
        use crate::attest::AttestError;
        match e {
            AttestError::InvalidArgument(m) => Self::InvalidArgument(m),
            AttestError::Denied(m) => Self::Denied(m),
            AttestError::Store(detail) => Self::Internal { public: "datastore error", detail },
            AttestError::Internal { public, detail } => Self::Internal { public, detail },
        }
    }
}

impl From<DatastoreError> for ApiError {
    fn from(e: DatastoreError) -> Self {
        match e {
            DatastoreError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            DatastoreError::AlreadyExists { what } => Self::AlreadyExists(format!("{what} already exists")),
            DatastoreError::Refused(m) => Self::InvalidArgument(m),
            DatastoreError::Missing(m) => Self::NotFound(m),
            DatastoreError::Corrupt { .. } | DatastoreError::Database(_) | DatastoreError::Config(_) => {
                Self::Internal { public: "datastore error", detail: e.to_string() }
            }
        }
    }
}

impl From<crate::pki::PkiError> for ApiError {
    fn from(e: crate::pki::PkiError) -> Self {
        CaError::from(e).into()
    }
}

impl From<CaError> for ApiError {
    fn from(e: CaError) -> Self {
        match e {
            CaError::InvalidRequest(m) => Self::InvalidArgument(m),
            CaError::NoX509Ca => {
                Self::Internal { public: "failed to sign X509-SVID: X509 CA is not available for signing", detail: e.to_string() }
            }
            // SPIRE's answer to MintJWTSVID and NewJWTSVID under `disable_jwt_svids`.
            CaError::JwtDisabled => Self::Unimplemented("JWT functionality is disabled"),
            CaError::NoJwtKey => {
                Self::Internal { public: "failed to sign JWT-SVID: JWT key is not available for signing", detail: e.to_string() }
            }
            CaError::Template(_)
            | CaError::Signing(_)
            | CaError::KeyManager(_)
            | CaError::Upstream(_)
            | CaError::Datastore(_)
            | CaError::KeysMissing { .. } => Self::Internal { public: "failed to sign", detail: e.to_string() },
        }
    }
}

/// The OK status of a batch result.
#[must_use]
pub fn ok_status() -> crate::wire::pb::spire::api::types::Status {
    crate::wire::pb::spire::api::types::Status { code: 0, message: "OK".into() }
}
