//! `UpstreamAuthority "spire"`: this server is a downstream tier of an upstream SPIRE-API
//! server (cairn or SPIRE) in the same trust domain.
//!
//! As in SPIRE, the downstream authenticates with the X509-SVID that a co-located agent of
//! the upper tier serves on its Workload API (`workload_api_socket`), requires the upstream to
//! present `spiffe://<td>/spire/server`, gets its CA from `NewDownstreamX509CA`, publishes its
//! JWT keys with `PublishJWTAuthority`, and keeps its bundle in step with the upstream's.
//! Bundle changes arrive by push when the upstream is cairn (its `BundleWatch` stream), and
//! by polling `GetBundle` when it is SPIRE (which has no such stream).

use super::{MintedCa, UpstreamAuthority, UpstreamError};
use crate::agent::client::{self, ClientIdentity, ServerTrust};
pub use crate::config::server::{EmbeddedAgent, IdentitySource, SpireUpstreamConfig};
use crate::spiffe::{Bundle, JwtAuthority, SpiffeId, TrustDomain};
use crate::wire::convert::{bundle_from_proto, jwt_key_to_proto};
use crate::wire::pb::spire::api::server::{bundle::v1 as bundlepb, svid::v1 as svidpb};
use crate::wire::pb::workload::{X509svidRequest, spiffe_workload_api_client::SpiffeWorkloadApiClient};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// The runtime settings of the embedded agent.
fn agent_settings(e: &EmbeddedAgent) -> crate::agent::manager::AgentSettings {
    crate::agent::manager::AgentSettings {
        trust_domain: e.trust_domain.clone(),
        server_addr: e.server_addr.clone(),
        bootstrap: ServerTrust::Roots(e.roots.clone()),
        attestation: e.attestation.clone(),
        state_dir: Some(e.state_dir.clone()),
        sync_interval: e.sync_interval,
        // The downstream tier's own identities: few, and all wanted.
        x509_svid_cache_max_size: None,
        jwt_svid_cache_max_size: None,
    }
}

/// The `spire` upstream authority.
pub struct SpireUpstream {
    config: SpireUpstreamConfig,
    trust_domain: TrustDomain,
    server_id: SpiffeId,
    embedded: tokio::sync::OnceCell<Arc<crate::agent::manager::Agent>>,
}

impl std::fmt::Debug for SpireUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpireUpstream")
            .field("server_address", &self.config.server_address)
            .field("server_port", &self.config.server_port)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: &tonic::Status) -> UpstreamError {
    match e.code() {
        tonic::Code::PermissionDenied | tonic::Code::InvalidArgument | tonic::Code::Unauthenticated => UpstreamError::Refused(format!(
            "{what}: {} ({:?}); is this server's SVID registered with -downstream on the upstream?",
            e.message(),
            e.code()
        )),
        _ => UpstreamError::Unavailable(format!("{what}: {}", e.message())),
    }
}

impl SpireUpstream {
    /// A client for `config` in `trust_domain`.
    ///
    /// # Errors
    /// Never in practice (the server ID is always valid).
    pub fn new(config: SpireUpstreamConfig, trust_domain: TrustDomain) -> Result<Self, UpstreamError> {
        let server_id = SpiffeId::from_segments(&trust_domain, &["spire", "server"]).map_err(|e| UpstreamError::Config(e.to_string()))?;
        Ok(Self { config, trust_domain, server_id, embedded: tokio::sync::OnceCell::new() })
    }

    /// The X509-SVID this server presents upstream, and the upstream trust bundle.
    async fn workload_svid(&self) -> Result<(ClientIdentity, Vec<Vec<u8>>), UpstreamError> {
        match &self.config.identity {
            IdentitySource::WorkloadApi(path) => self.workload_api_svid(path).await,
            IdentitySource::Embedded(settings) => self.embedded_svid(settings).await,
        }
    }

    /// Attests once as an agent of the upstream, keeps that agent syncing in the background,
    /// and takes the first SVID it holds (the entry registered for this server, which must be
    /// `-downstream` and parented to the agent ID or to an alias of it).
    async fn embedded_svid(&self, settings: &EmbeddedAgent) -> Result<(ClientIdentity, Vec<Vec<u8>>), UpstreamError> {
        use crate::agent::cache::WorkloadSource;
        let agent = self
            .embedded
            .get_or_try_init(|| async {
                let agent = crate::agent::manager::Agent::start(agent_settings(settings))
                    .await
                    .map_err(|e| UpstreamError::Unavailable(format!("embedded agent: {e}")))?;
                agent.sync_once().await.map_err(|e| UpstreamError::Unavailable(format!("embedded agent: {e}")))?;
                let runner = Arc::clone(&agent);
                tokio::spawn(async move {
                    if let Err(e) = runner.run(std::future::pending::<()>()).await {
                        tracing::error!(error = %e, "embedded upstream agent stopped");
                    }
                });
                Ok::<_, UpstreamError>(agent)
            })
            .await?;
        let snap =
            agent.subscribe().borrow().clone().ok_or_else(|| UpstreamError::Unavailable("embedded agent has not synced yet".into()))?;
        let svid = snap.svids.first().ok_or_else(|| {
            UpstreamError::Refused("the embedded agent holds no SVID: register this server on the upstream with `entry create -parentID <agent ID> -spiffeID <id> -selector ... -downstream`".into())
        })?;
        Ok((ClientIdentity { chain: svid.chain.clone(), key_pkcs8: Arc::clone(&svid.key_pkcs8) }, snap.bundle.x509_authorities.clone()))
    }

    /// The X509-SVID (and its trust bundle) from the co-located upper-tier agent.
    async fn workload_api_svid(&self, socket: &std::path::Path) -> Result<(ClientIdentity, Vec<Vec<u8>>), UpstreamError> {
        let ch = crate::net::dial::unix_channel(socket, None)
            .await
            .map_err(|e| UpstreamError::Unavailable(format!("workload_api_socket {}: {e}", socket.display())))?;
        let mut req = tonic::Request::new(X509svidRequest {});
        req.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
        req.set_timeout(Duration::from_secs(10));
        let mut stream = SpiffeWorkloadApiClient::new(ch)
            .fetch_x509svid(req)
            .await
            .map_err(|e| unavailable("fetching this server's X509-SVID from workload_api_socket", &e))?
            .into_inner();
        let msg = stream
            .message()
            .await
            .map_err(|e| unavailable("reading the X509-SVID", &e))?
            .ok_or_else(|| UpstreamError::Unavailable("workload API closed the stream".into()))?;
        let svid = msg.svids.into_iter().next().ok_or_else(|| UpstreamError::Unavailable("workload API returned no SVID".into()))?;
        let chain = split_der(&svid.x509_svid)?;
        let roots = split_der(&svid.bundle)?;
        Ok((ClientIdentity { chain, key_pkcs8: Arc::new(zeroize::Zeroizing::new(svid.x509_svid_key)) }, roots))
    }

    async fn channel(&self) -> Result<tonic::transport::Channel, UpstreamError> {
        let (identity, roots) = self.workload_svid().await?;
        let addr = format!("{}:{}", self.config.server_address, self.config.server_port);
        client::connect(&addr, ServerTrust::Roots(roots), self.server_id.clone(), Some(&identity))
            .map_err(|e| UpstreamError::Config(e.to_string()))
    }

    async fn get_bundle(&self, ch: tonic::transport::Channel) -> Result<Bundle, UpstreamError> {
        let b = bundlepb::bundle_client::BundleClient::new(ch)
            .get_bundle(bundlepb::GetBundleRequest::default())
            .await
            .map_err(|e| unavailable("GetBundle", &e))?
            .into_inner();
        let b = bundle_from_proto(&b).map_err(|e| UpstreamError::Refused(format!("upstream bundle is invalid: {e}")))?;
        if b.trust_domain != self.trust_domain {
            return Err(UpstreamError::Refused(format!(
                "upstream serves trust domain {} but this server is {}",
                b.trust_domain, self.trust_domain
            )));
        }
        Ok(b)
    }
}

/// Splits concatenated DER certificates (the Workload API's encoding).
fn split_der(mut data: &[u8]) -> Result<Vec<Vec<u8>>, UpstreamError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(data)
            .map_err(|e| UpstreamError::Refused(format!("workload API sent an invalid certificate: {e}")))?;
        let used = data.len() - rest.len();
        out.push(data.get(..used).unwrap_or_default().to_vec());
        data = rest;
    }
    Ok(out)
}

#[async_trait]
impl UpstreamAuthority for SpireUpstream {
    fn is_trust_domain_tier(&self) -> bool {
        true
    }

    async fn mint_x509_ca(&self, csr_der: &[u8], preferred_ttl: i64) -> Result<MintedCa, UpstreamError> {
        let ch = self.channel().await?;
        let ttl = i32::try_from(preferred_ttl).unwrap_or(i32::MAX);
        let resp = svidpb::svid_client::SvidClient::new(ch.clone())
            .new_downstream_x509ca(svidpb::NewDownstreamX509caRequest { csr: csr_der.to_vec(), preferred_ttl: ttl })
            .await
            .map_err(|e| unavailable("NewDownstreamX509CA", &e))?
            .into_inner();
        // As SPIRE does, the roots come from GetBundle (which carries taint flags), not the RPC.
        let bundle = self.get_bundle(ch).await?;
        let roots = if bundle.x509_authorities.is_empty() { resp.x509_authorities } else { bundle.x509_authorities };
        Ok(MintedCa { chain: resp.ca_cert_chain, roots })
    }

    async fn publish_jwt_key(&self, key: &JwtAuthority) -> Result<Vec<JwtAuthority>, UpstreamError> {
        let ch = self.channel().await?;
        let resp = bundlepb::bundle_client::BundleClient::new(ch)
            .publish_jwt_authority(bundlepb::PublishJwtAuthorityRequest { jwt_authority: Some(jwt_key_to_proto(key)) })
            .await
            .map_err(|e| unavailable("PublishJWTAuthority", &e))?
            .into_inner();
        resp.jwt_authorities
            .iter()
            .map(|k| crate::wire::convert::jwt_key_from_proto(k).map_err(|e| UpstreamError::Refused(e.to_string())))
            .collect()
    }

    async fn upstream_bundle(&self) -> Result<Bundle, UpstreamError> {
        let ch = self.channel().await?;
        self.get_bundle(ch).await
    }

    async fn watch_upstream_bundle(&self, known_sequence: u64, tx: tokio::sync::mpsc::Sender<Bundle>) -> Result<(), UpstreamError> {
        use crate::wire::pb::cairn::api::bundlewatch::v1 as watchpb;
        let ch = self.channel().await?;
        let mut stream = watchpb::bundle_watch_client::BundleWatchClient::new(ch)
            .watch_bundle(watchpb::WatchBundleRequest { known_sequence_number: known_sequence })
            .await
            .map_err(|e| if e.code() == tonic::Code::Unimplemented { UpstreamError::Unsupported } else { unavailable("WatchBundle", &e) })?
            .into_inner();
        while let Some(msg) = stream.message().await.map_err(|e| unavailable("WatchBundle", &e))? {
            if let Some(b) = msg.bundle {
                let b = bundle_from_proto(&b).map_err(|e| UpstreamError::Refused(format!("upstream bundle is invalid: {e}")))?;
                if tx.send(b).await.is_err() {
                    return Ok(());
                }
            }
        }
        Err(UpstreamError::Unavailable("upstream closed the bundle watch".into()))
    }
}
