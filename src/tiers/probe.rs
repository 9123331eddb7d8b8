//! Talking to the demo's tiers: registration over each server's admin socket (the library's
//! gRPC clients, as `cairn server` uses them), the Workload API of each agent, and each
//! server's `status.json`.

use crate::spiffe::SpiffeId;
use crate::wire::convert::{bundle_from_proto, id_to_proto};
use crate::wire::pb::spire::api::server::{agent::v1 as agentpb, bundle::v1 as bundlepb, entry::v1 as entrypb};
use crate::wire::pb::spire::api::types as pt;
use crate::wire::pb::workload::{JwtBundlesRequest, X509svidRequest, spiffe_workload_api_client::SpiffeWorkloadApiClient};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Every call here is local; one that takes longer than this is stuck, not slow.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

async fn timed<T>(what: &str, fut: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(CALL_TIMEOUT, fut).await.map_err(|_| format!("{what}: no answer within {}s", CALL_TIMEOUT.as_secs()))?
}

/// Whether the server behind `socket` answers GetBundle (what `cairn server healthcheck` checks).
///
/// # Errors
/// Why not, yet.
pub async fn server_healthy(socket: &Path) -> Result<(), String> {
    timed("healthcheck", async {
        let ch = crate::net::dial::admin_channel(socket).await.map_err(|e| e.to_string())?;
        bundlepb::bundle_client::BundleClient::new(ch)
            .get_bundle(bundlepb::GetBundleRequest::default())
            .await
            .map_err(|e| format!("GetBundle: {}", e.message()))?;
        Ok(())
    })
    .await
}

/// The server's trust bundle as PEM (an agent's bootstrap trust).
///
/// # Errors
/// The server does not answer.
pub async fn bundle_pem(socket: &Path) -> Result<String, String> {
    timed("GetBundle", async {
        let ch = crate::net::dial::admin_channel(socket).await.map_err(|e| e.to_string())?;
        let b = bundlepb::bundle_client::BundleClient::new(ch)
            .get_bundle(bundlepb::GetBundleRequest::default())
            .await
            .map_err(|e| format!("GetBundle on {}: {}", socket.display(), e.message()))?
            .into_inner();
        Ok(bundle_from_proto(&b).map_err(|e| format!("the bundle from {} is invalid: {e}", socket.display()))?.x509_pem())
    })
    .await
}

/// Registers a node on the server behind `socket`: a join token whose agent gets the alias
/// `node`, and an entry under that alias issuing `spiffe_id` to processes of `uid`
/// (`downstream` for a server of the tier below). Returns the token.
///
/// # Errors
/// The server refuses or does not answer.
pub async fn register_node(socket: &Path, node: &SpiffeId, spiffe_id: &SpiffeId, uid: u32, downstream: bool) -> Result<String, String> {
    timed("registration", async {
        let ch = crate::net::dial::admin_channel(socket).await.map_err(|e| e.to_string())?;
        let token = agentpb::agent_client::AgentClient::new(ch.clone())
            .create_join_token(agentpb::CreateJoinTokenRequest { ttl: 600, token: String::new(), agent_id: Some(id_to_proto(node)) })
            .await
            .map_err(|e| format!("CreateJoinToken for {node}: {}", e.message()))?
            .into_inner()
            .value;
        let entry = pt::Entry {
            spiffe_id: Some(id_to_proto(spiffe_id)),
            parent_id: Some(id_to_proto(node)),
            selectors: vec![pt::Selector { r#type: "unix".into(), value: format!("uid:{uid}") }],
            downstream,
            ..pt::Entry::default()
        };
        let resp = entrypb::entry_client::EntryClient::new(ch)
            .batch_create_entry(entrypb::BatchCreateEntryRequest { entries: vec![entry], output_mask: None })
            .await
            .map_err(|e| format!("creating the entry {spiffe_id}: {}", e.message()))?
            .into_inner();
        match resp.results.first().and_then(|r| r.status.as_ref()) {
            Some(st) if st.code != 0 => Err(format!("creating the entry {spiffe_id}: {}", st.message)),
            _ => Ok(token),
        }
    })
    .await
}

async fn workload_channel(socket: &Path) -> Result<tonic::transport::Channel, String> {
    crate::net::dial::unix_channel(socket, None)
        .await
        .map_err(|e| format!("cannot connect to the Workload API socket {}: {e}", socket.display()))
}

fn workload_request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    // The Workload API refuses requests without this header (SSRF protection).
    req.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
    req
}

/// The SPIFFE IDs an agent's FetchX509SVID gives this process.
///
/// # Errors
/// The agent does not answer.
pub async fn x509_svid_ids(socket: &Path) -> Result<Vec<String>, String> {
    timed("FetchX509SVID", async {
        let mut c = SpiffeWorkloadApiClient::new(workload_channel(socket).await?);
        let mut stream = c
            .fetch_x509svid(workload_request(X509svidRequest {}))
            .await
            .map_err(|e| format!("FetchX509SVID: {}", e.message()))?
            .into_inner();
        let msg = stream.message().await.map_err(|e| format!("FetchX509SVID: {}", e.message()))?.ok_or("FetchX509SVID: no answer")?;
        Ok(msg.svids.into_iter().map(|s| s.spiffe_id).collect())
    })
    .await
}

/// The JWT key ids an agent's FetchJWTBundles returns for `trust_domain_id` (`spiffe://td`).
///
/// # Errors
/// The agent does not answer, or sends no bundle for the trust domain.
pub async fn jwt_bundle_kids(socket: &Path, trust_domain_id: &str) -> Result<BTreeSet<String>, String> {
    timed("FetchJWTBundles", async {
        let mut c = SpiffeWorkloadApiClient::new(workload_channel(socket).await?);
        let mut stream = c
            .fetch_jwt_bundles(workload_request(JwtBundlesRequest {}))
            .await
            .map_err(|e| format!("FetchJWTBundles: {}", e.message()))?
            .into_inner();
        let msg = stream.message().await.map_err(|e| format!("FetchJWTBundles: {}", e.message()))?.ok_or("FetchJWTBundles: no answer")?;
        let jwks = msg.bundles.get(trust_domain_id).ok_or_else(|| format!("FetchJWTBundles: no bundle for {trust_domain_id}"))?;
        jwks_kids(jwks)
    })
    .await
}

/// The `kid`s of a JWKS document.
fn jwks_kids(jwks: &[u8]) -> Result<BTreeSet<String>, String> {
    let v: serde_json::Value = serde_json::from_slice(jwks).map_err(|e| format!("FetchJWTBundles sent invalid JWKS: {e}"))?;
    Ok(v.get("keys")
        .and_then(serde_json::Value::as_array)
        .map(|keys| keys.iter().filter_map(|k| k.get("kid").and_then(serde_json::Value::as_str).map(str::to_owned)).collect())
        .unwrap_or_default())
}

/// A server's `status.json` (written each second by `server::write_status`). Read with
/// defaults so a file from an older or newer cairn still shows what it has.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct ServerStatus {
    /// Unix seconds of the last write.
    pub updated_at: i64,
    /// The server's configured `ca_ttl`, seconds (0: not recorded).
    pub ca_ttl: i64,
    /// What its active X.509 CA actually lives, seconds: less than `ca_ttl` when the upstream
    /// CA that signed it expires sooner.
    pub effective_ca_ttl: Option<i64>,
    /// X.509 CA and JWT key slots.
    pub slots: Vec<Slot>,
    /// This tier's CA chain, its own CA first: "subject (issuer ...; until ...)".
    pub ca_chain: Vec<String>,
    /// Sequence number of this tier's bundle.
    pub bundle_sequence: u64,
    /// X.509 roots in the bundle.
    pub x509_roots: usize,
    /// JWT key ids in the bundle.
    pub jwt_key_ids: Vec<String>,
    /// Bundle sync with the upstream (downstream tiers only).
    pub upstream: Option<UpstreamSync>,
    /// Federation relationships: each foreign trust domain's last refresh.
    pub federation: Vec<FederationSync>,
    /// The previously active X.509 CA and JWT key (`old` of `localauthority ... show`).
    pub x509_authorities: AuthorityStates,
    /// See `x509_authorities`.
    pub jwt_authorities: AuthorityStates,
    /// Subject key IDs of the roots the bundle marks tainted.
    pub tainted_x509: Vec<String>,
    /// Key IDs of the JWT keys the bundle marks tainted.
    pub tainted_jwt: Vec<String>,
}

/// Active, prepared and old authorities of one kind, as `status.json` holds them.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct AuthorityStates {
    /// The previously active authority, until the next preparation.
    pub old: Option<AuthorityState>,
}

/// One authority in `status.json`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct AuthorityState {
    /// X.509: subject key ID; JWT: kid.
    pub authority_id: String,
}

/// One federation relationship as the server's refresher last saw it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct FederationSync {
    /// The foreign trust domain.
    pub trust_domain: String,
    /// `https_web` or `https_spiffe`.
    pub profile: String,
    /// Unix seconds of the last successful refresh (0: none yet).
    pub last_refresh: i64,
    /// Sequence of the foreign bundle held.
    pub sequence: u64,
    /// The last error, when the last poll failed.
    pub last_error: Option<String>,
}

/// One CA slot.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct Slot {
    /// `x509` or `jwt`.
    pub kind: String,
    /// `current` (active) or `next` (prepared).
    pub role: String,
    /// `A` or `B`.
    pub slot: String,
    /// SKI (X.509) or kid (JWT).
    pub id: String,
    /// Expiry, unix seconds.
    pub not_after: i64,
}

/// The last exchange with the upstream.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct UpstreamSync {
    /// Unix seconds of the last successful sync (0: none yet).
    pub last_sync: i64,
    /// Upstream bundle sequence last seen.
    pub upstream_sequence: u64,
    /// `push` or `poll`.
    pub mode: String,
    /// The last error, when the last attempt failed.
    pub last_error: Option<String>,
}

impl ServerStatus {
    /// Reads `path`.
    ///
    /// # Errors
    /// Missing or unreadable.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The slots of one kind (`x509`, `jwt`), current first.
    pub fn slots_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Slot> + 'a {
        let mut v: Vec<&Slot> = self.slots.iter().filter(|s| s.kind == kind).collect();
        v.sort_by_key(|s| s.role != "current");
        v.into_iter()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
    use super::*;

    #[test]
    fn kids_come_from_the_jwks() {
        let kids = jwks_kids(br#"{"keys":[{"kty":"EC","kid":"a"},{"kty":"EC","kid":"b"},{"kty":"EC"}]}"#).unwrap();
        assert_eq!(kids.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(jwks_kids(b"not json").is_err());
    }

    #[test]
    fn status_file_reads_with_defaults() {
        let s: ServerStatus = serde_json::from_str(
            r#"{"updated_at":5,"slots":[{"kind":"jwt","role":"next","slot":"B","id":"k2","not_after":9},{"kind":"jwt","role":"current","slot":"A","id":"k1","not_after":7}],"future_field":1}"#,
        )
        .unwrap();
        assert_eq!(s.slots_of("jwt").map(|s| s.id.as_str()).collect::<Vec<_>>(), ["k1", "k2"]);
        assert!(s.upstream.is_none() && s.jwt_key_ids.is_empty());
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    /// `status.json`'s federation entries, as the server writes them, read back by the report.
    #[test]
    fn federation_status_round_trips() {
        let written = crate::federation::client::RelationshipStatus {
            trust_domain: "partner.test".into(),
            bundle_endpoint_url: "https://p:8443".into(),
            profile: "https_spiffe".into(),
            last_refresh: 100,
            sequence: 7,
            last_error: Some("fetching: down".into()),
            next_refresh: 115,
            consecutive_failures: 1,
        };
        let json = serde_json::json!({ "updated_at": 1, "federation": [written] }).to_string();
        let read: ServerStatus = serde_json::from_str(&json).unwrap();
        let f = &read.federation[0];
        assert_eq!((f.trust_domain.as_str(), f.profile.as_str(), f.last_refresh, f.sequence), ("partner.test", "https_spiffe", 100, 7));
        assert_eq!(f.last_error.as_deref(), Some("fetching: down"));
    }
}
