//! Generated protobuf and gRPC code (compiled by build.rs with protox; no protoc needed).
//! Module paths mirror the proto packages, so SPIRE's wire names are kept exactly.
#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all, unreachable_pub)]

pub mod spire {
    pub mod agent {
        pub mod debug {
            pub mod v1 {
                tonic::include_proto!("spire.agent.debug.v1");
            }
        }
    }
    pub mod api {
        pub mod agent {
            pub mod logger {
                pub mod v1 {
                    tonic::include_proto!("spire.api.agent.logger.v1");
                }
            }
        }
        pub mod types {
            tonic::include_proto!("spire.api.types");
        }
        pub mod server {
            pub mod agent {
                pub mod v1 {
                    tonic::include_proto!("spire.api.server.agent.v1");
                }
            }
            pub mod bundle {
                pub mod v1 {
                    tonic::include_proto!("spire.api.server.bundle.v1");
                }
            }
            pub mod debug {
                pub mod v1 {
                    tonic::include_proto!("spire.api.server.debug.v1");
                }
            }
            pub mod entry {
                pub mod v1 {
                    tonic::include_proto!("spire.api.server.entry.v1");
                }
            }
            pub mod localauthority {
                pub mod v1 {
                    tonic::include_proto!("spire.api.server.localauthority.v1");
                }
            }
            pub mod logger {
                pub mod v1 {
                    tonic::include_proto!("spire.api.server.logger.v1");
                }
            }
            pub mod svid {
                pub mod v1 {
                    tonic::include_proto!("spire.api.server.svid.v1");
                }
            }
            pub mod trustdomain {
                pub mod v1 {
                    tonic::include_proto!("spire.api.server.trustdomain.v1");
                }
            }
        }
    }
}
pub mod cairn {
    pub mod api {
        pub mod agentsync {
            pub mod v1 {
                tonic::include_proto!("cairn.api.agentsync.v1");
            }
        }
        pub mod bundlewatch {
            pub mod v1 {
                tonic::include_proto!("cairn.api.bundlewatch.v1");
            }
        }
    }
}
/// gRPC health checking (`grpc.health.v1`, Check only): SPIRE's agent serves it on the
/// Workload API socket and `healthcheck` calls it.
pub mod grpc {
    pub mod health {
        pub mod v1 {
            tonic::include_proto!("grpc.health.v1");
        }
    }
}
/// SPIFFE Workload API (package-less proto; gRPC service `SpiffeWorkloadAPI`).
pub mod workload {
    tonic::include_proto!("workload");
}
