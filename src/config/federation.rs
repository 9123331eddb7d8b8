//! `server.federation` and `server.oidc_discovery` as data: what the federation module serves
//! and polls. Parsed in `config::server`; kept here (not in `federation`) so that `config`
//! imports no module that imports it back.

use std::path::PathBuf;

/// `server.federation`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FederationConfig {
    /// `bundle_endpoint { ... }`: serve this trust domain's bundle.
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// `federates_with "<td>" { ... }`: trust domains whose bundles this server keeps.
    pub federates_with: Vec<Relationship>,
}

/// `federation.bundle_endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpointConfig {
    /// `address` (default all interfaces).
    pub address: String,
    /// `port`.
    pub port: u16,
    /// `refresh_hint`, seconds (default 5m), served as `spiffe_refresh_hint`.
    pub refresh_hint: i64,
    /// How the endpoint authenticates itself.
    pub profile: EndpointProfile,
}

/// The endpoint's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointProfile {
    /// `https_spiffe`: the server's own X509-SVID (`spiffe://<td>/spire/server`).
    HttpsSpiffe,
    /// `https_web` with `serving_cert_file`: a Web PKI certificate and key from files, re-read
    /// every `file_sync_interval` when they change.
    HttpsWeb {
        /// PEM certificate chain.
        cert_file_path: PathBuf,
        /// PEM private key.
        key_file_path: PathBuf,
        /// Seconds between checks of the files.
        file_sync_interval: i64,
    },
    /// `https_web` with `acme`: a Web PKI certificate obtained (and renewed) from an ACME
    /// server, answering its `tls-alpn-01` challenge on the endpoint itself.
    HttpsWebAcme(AcmeConfig),
}

/// `acme { domain_name, directory_url, email, tos_accepted }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The name the certificate is for (and the only one the endpoint answers challenges for).
    pub domain_name: String,
    /// The ACME directory (default Let's Encrypt's).
    pub directory_url: String,
    /// Contact address of the ACME account (may be empty).
    pub email: String,
    /// Whether the ACME server's terms of service are accepted; nothing is ordered without.
    pub tos_accepted: bool,
}

/// Let's Encrypt's production directory, SPIRE's default.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `server.oidc_discovery` (cairn's): OIDC discovery and a JWKS of every tier's JWT keys for
/// JWT consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// `address`.
    pub address: String,
    /// `port`.
    pub port: u16,
    /// `issuer` (default `jwt_issuer`).
    pub issuer: String,
    /// `serving_cert_file { cert_file_path, key_file_path, file_sync_interval }`; `None` with
    /// `insecure_http = true` (loopback only).
    pub tls: Option<(PathBuf, PathBuf, i64)>,
}

pub use crate::spiffe::federation::{ClientProfile, Relationship};
