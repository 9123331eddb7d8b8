//! gRPC status details SPIRE uses: `PermissionDeniedDetails` inside a `google.rpc.Status`,
//! which tells an agent whether to re-attest or stop. Written by the server's status map, read
//! by the agent.

use super::pb::spire::api::types::PermissionDeniedDetails;
use tonic::{Code, Status};

const DETAILS_TYPE: &str = "type.googleapis.com/spire.api.types.PermissionDeniedDetails";

/// `google.rpc.Status`, the container of gRPC status details.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// A `PermissionDenied` status carrying `PermissionDeniedDetails { reason }`.
#[must_use]
pub fn permission_denied(message: String, reason: i32) -> Status {
    let status = RpcStatus {
        code: Code::PermissionDenied as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: DETAILS_TYPE.into(),
            value: prost::Message::encode_to_vec(&PermissionDeniedDetails { reason }),
        }],
    };
    Status::with_details(Code::PermissionDenied, message, prost::Message::encode_to_vec(&status).into())
}

/// The `PermissionDeniedDetails.Reason` carried by a status, if any (agent side).
#[must_use]
pub fn denied_reason(status: &Status) -> Option<i32> {
    let s: RpcStatus = prost::Message::decode(status.details()).ok()?;
    s.details.iter().find(|a| a.type_url.ends_with("spire.api.types.PermissionDeniedDetails")).and_then(|a| {
        let d: PermissionDeniedDetails = prost::Message::decode(a.value.as_slice()).ok()?;
        Some(d.reason)
    })
}
