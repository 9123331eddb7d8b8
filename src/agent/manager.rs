//! The agent's core: attestation, the agent SVID (persisted, renewed at half-life), and the
//! sync loop that keeps entries, bundles and workload SVIDs current and publishes them as a
//! [`Snapshot`] for the Workload API.

use super::cache::{FetchJwtError, Hold, Identity, Snapshot, WorkloadSource, X509SvidItem};
use super::client::{self, ClientIdentity, ServerTrust};
use crate::spiffe::Selector;
use crate::spiffe::{Bundle, SpiffeId, TrustDomain};
use crate::wire::convert::bundle_from_proto;
use crate::wire::pb::spire::api::server::{agent::v1 as agentpb, bundle::v1 as bundlepb, entry::v1 as entrypb, svid::v1 as svidpb};
use crate::wire::pb::spire::api::types as pt;
use base64::Engine as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// SVIDs requested per BatchNewX509SVID call (SPIRE's starting batch size).
const CSR_BATCH: usize = 500;

pub use crate::attest::NodeAttestation;

/// What the agent runtime needs (built from agent.conf).
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// `server_address:server_port`.
    pub server_addr: String,
    /// Bootstrap trust: roots from `trust_bundle_path`/`_url`, or insecure bootstrap.
    pub bootstrap: ServerTrust,
    /// Node attestation.
    pub attestation: NodeAttestation,
    /// Where the agent SVID and bundle persist (`None` = memory key manager).
    pub state_dir: Option<PathBuf>,
    /// Sync period.
    pub sync_interval: Duration,
    /// At most this many X509-SVIDs are kept (SPIRE's `x509_svid_cache_max_size`, a soft
    /// limit: a workload with an open stream keeps all of its own). `None`: no limit.
    pub x509_svid_cache_max_size: Option<usize>,
    /// At most this many JWT-SVIDs are cached (SPIRE's `jwt_svid_cache_max_size`). `None`: no
    /// limit.
    pub jwt_svid_cache_max_size: Option<usize>,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Attestation was refused (bad token, untrusted certificate...): retrying will not help.
    #[error("node attestation failed: {0}")]
    AttestationRefused(String),
    /// The server cannot be reached.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// The agent is banned or was evicted and cannot re-attest.
    #[error("{0}")]
    Denied(String),
    /// Local state (files, keys).
    #[error("{0}")]
    Local(String),
    /// The channel to the server could not be set up.
    #[error(transparent)]
    Client(#[from] super::client::ClientError),
}

/// Why one sync with the server failed (the previous state stays published; the loop retries).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// An RPC failed; `context` is SPIRE's wording of what was being done.
    #[error("{context}: {}", status.message())]
    Rpc {
        /// What the agent was doing.
        context: String,
        /// The server's answer.
        status: tonic::Status,
    },
    /// The server sent a bundle that does not convert.
    #[error("server sent an invalid bundle: {0}")]
    InvalidBundle(#[from] crate::wire::WireError),
    /// The server sent another trust domain's bundle.
    #[error("server sent the bundle of {got} instead of {want}")]
    WrongTrustDomain {
        /// What arrived.
        got: TrustDomain,
        /// What this agent belongs to.
        want: TrustDomain,
    },
    /// The server answered without the SVID it should have sent.
    #[error("{0}")]
    MissingSvid(&'static str),
    /// Re-attestation or a new channel failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A key or CSR could not be made.
    #[error("{0}")]
    Key(#[from] rcgen::Error),
}

impl SyncError {
    fn rpc(context: impl Into<String>, status: tonic::Status) -> Self {
        Self::Rpc { context: context.into(), status }
    }
}

#[derive(Clone)]
struct AgentSvid {
    chain: Vec<Vec<u8>>,
    key: Arc<Zeroizing<Vec<u8>>>,
    not_before: i64,
    not_after: i64,
    reattestable: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Persisted {
    chain: Vec<String>,
    key: String,
    reattestable: bool,
    bundle: Vec<String>,
}

/// A cached JWT-SVID's key: entry ID and sorted audience.
type JwtKey = (String, Vec<String>);

struct State {
    svid: AgentSvid,
    channel: tonic::transport::Channel,
    bundle: Bundle,
    federated: BTreeMap<TrustDomain, Bundle>,
    /// Shared with the next sync's listing, which keeps the entries whose revision did not move.
    entries: Vec<Arc<pt::Entry>>,
    svids: HashMap<String, (i64, Arc<X509SvidItem>)>,
    /// Cached JWT-SVIDs by (entry, sorted audience): token, iat, exp, last use.
    jwt: HashMap<JwtKey, (String, i64, i64, u64)>,
    /// When each entry's SVID was last handed to a workload (a sync counter; absent = never):
    /// the SVID cache evicts the least recently used first.
    last_access: HashMap<String, u64>,
    /// Counts syncs and JWT cache uses, the clock of `last_access` and of the JWT cache.
    tick: u64,
    /// Tainted roots already acted on.
    tainted_seen: std::collections::BTreeSet<Vec<u8>>,
    /// Entries whose SVID a tainted authority signed: re-minted at the next chance.
    force_remint: std::collections::HashSet<String>,
    /// The agent's own SVID chains to a tainted authority: renewed at the next chance.
    agent_svid_tainted: bool,
}

/// The agent's state as its admin API's Debug GetInfo reports it.
#[derive(Debug, Clone)]
pub struct DebugInfo {
    /// The agent's SVID chain (DER), leaf first, ending with the root it chains to.
    pub svid_chain: Vec<Vec<u8>>,
    /// X509-SVIDs held for workloads.
    pub x509_svids: usize,
    /// JWT-SVIDs cached for workloads.
    pub jwt_svids: usize,
    /// Last successful sync with the server, unix seconds (0: never).
    pub last_sync_success: i64,
}

/// The running agent: implements [`WorkloadSource`].
pub struct Agent {
    last_sync_success: std::sync::atomic::AtomicI64,
    /// Deferred entries (prefetch disabled) a workload asked for: minted at the next sync.
    wanted: Mutex<std::collections::HashSet<String>>,
    /// Wakes the sync loop early (a workload is waiting for a deferred SVID).
    wake: tokio::sync::Notify,
    /// Selectors of the workloads with a stream open now (see [`WorkloadSource::hold`]).
    subscribers: Arc<Mutex<HashMap<u64, Vec<Selector>>>>,
    /// Selectors of workloads that opened a stream since the last sync (marks their SVIDs used).
    touched: Mutex<HashSet<Vec<Selector>>>,
    next_hold: std::sync::atomic::AtomicU64,
    settings: AgentSettings,
    server_id: SpiffeId,
    state: tokio::sync::Mutex<State>,
    snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    /// Set when the agent must stop (banned, evicted and unable to re-attest).
    fatal: Mutex<Option<String>>,
}

fn keypair_and_csr(id: Option<&SpiffeId>) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), rcgen::Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CountryName, "US");
    dn.push(rcgen::DnType::OrganizationName, "SPIRE");
    p.distinguished_name = dn;
    if let Some(id) = id {
        p.subject_alt_names = vec![rcgen::SanType::URI(id.as_str().try_into()?)];
    }
    let csr = p.serialize_request(&key)?;
    Ok((csr.der().to_vec(), Zeroizing::new(key.serialize_der())))
}

fn validity(der: &[u8]) -> (i64, i64) {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| (c.validity().not_before.timestamp(), c.validity().not_after.timestamp()))
        .unwrap_or((0, 0))
}

/// SPIRE's agent reaction to authorities its trust domain's bundle marks tainted: cached
/// JWT-SVIDs a tainted key signed are dropped (the next fetch mints a new one with the active
/// key), X509-SVIDs that chain to a newly tainted root are re-minted now rather than at half
/// life, and so is the agent's own SVID.
fn react_to_taint(st: &mut State, bundle: &Bundle, now: i64) {
    let tainted_kids: std::collections::BTreeSet<&str> =
        bundle.jwt_authorities.iter().filter(|k| k.tainted).map(|k| k.key_id.as_str()).collect();
    if !tainted_kids.is_empty() {
        let mut removed: BTreeMap<String, usize> = BTreeMap::new();
        st.jwt.retain(|_, (token, _, _, _)| match crate::spiffe::jwt::header_kid(token) {
            Some(kid) if tainted_kids.contains(kid.as_str()) => {
                *removed.entry(kid).or_default() += 1;
                false
            }
            _ => true,
        });
        for (kid, n) in removed {
            tracing::info!(
                jwt_authority_key_ids = %kid,
                tainted_jwt_svids = n,
                "JWT-SVIDs were removed from the JWT cache because they were issued by a tainted authority"
            );
        }
    }
    let new: Vec<Vec<u8>> = bundle.tainted_x509.iter().filter(|d| !st.tainted_seen.contains(*d)).cloned().collect();
    if new.is_empty() {
        return;
    }
    let skis: Vec<String> = new.iter().filter_map(|d| crate::spiffe::x509::subject_key_id_hex(d)).collect();
    tracing::debug!(subject_key_ids = %skis.join(","), "New tainted X.509 authorities found");
    tracing::debug!(count = st.svids.len(), "Scheduled rotation for SVID entries due to tainted X.509 authorities");
    let tainted: Vec<String> = st
        .svids
        .iter()
        .filter(|(_, (_, item))| crate::spiffe::x509::verify_chain(&item.chain, &new, now).is_ok())
        .map(|(id, _)| id.clone())
        .collect();
    tracing::info!(tainted_x509_svids = tainted.len(), "Tainted X.509 SVIDs");
    st.force_remint.extend(tainted);
    if crate::spiffe::x509::verify_chain(&st.svid.chain, &new, now).is_ok() {
        tracing::info!("Agent SVID is tainted by a root authority, forcing rotation");
        st.agent_svid_tainted = true;
    }
    st.tainted_seen.extend(new);
}

/// SPIRE's agent cache lines at DEBUG, per entry that arrived, changed or left at a sync.
fn log_entry_changes(old: &[Arc<pt::Entry>], new: &[Arc<pt::Entry>]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let id = |e: &pt::Entry| e.spiffe_id.as_ref().map(|i| format!("spiffe://{}{}", i.trust_domain, i.path)).unwrap_or_default();
    let before: HashMap<&str, &pt::Entry> = old.iter().map(|e| (e.id.as_str(), e.as_ref())).collect();
    let after: std::collections::HashSet<&str> = new.iter().map(|e| e.id.as_str()).collect();
    for e in new {
        match before.get(e.id.as_str()) {
            None => tracing::debug!(entry = %e.id, spiffe_id = %id(e), "Entry created"),
            Some(o) if *o != e.as_ref() => tracing::debug!(entry = %e.id, spiffe_id = %id(e), "Entry updated"),
            Some(_) => {}
        }
    }
    for o in old.iter().filter(|o| !after.contains(o.id.as_str())) {
        tracing::debug!(entry = %o.id, spiffe_id = %id(o), "Entry removed");
    }
}

/// Whether two listings hold the same entries in the same order. Entries kept from the last
/// sync are the same allocation, so only fetched ones are compared field by field.
fn same_entries(a: &[Arc<pt::Entry>], b: &[Arc<pt::Entry>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y) || x == y)
}

fn half_life_passed(nb: i64, na: i64, now: i64) -> bool {
    now >= nb + (na - nb) / 2
}

impl Agent {
    /// Starts the agent: resumes a persisted SVID or attests, then fetches the bundle.
    ///
    /// # Errors
    /// Attestation refused or impossible, or the server unreachable.
    pub async fn start(settings: AgentSettings) -> Result<Arc<Self>, AgentError> {
        let server_id =
            SpiffeId::from_segments(&settings.trust_domain, &["spire", "server"]).map_err(|e| AgentError::Local(e.to_string()))?;
        let persisted = settings.state_dir.as_ref().and_then(|d| load_persisted(&d.join("agent-svid.json")));
        let now = crate::now_unix();
        let (svid, roots) = match persisted {
            Some((svid, roots)) if svid.not_after > now + 5 => {
                // SPIRE's wording: operators' scripts and SPIRE's suites grep for these lines.
                let id = svid.chain.first().and_then(|l| crate::spiffe::leaf_spiffe_id(l).ok()).map(|i| i.to_string());
                tracing::info!(spiffe_id = ?id, not_after = svid.not_after, "SVID loaded");
                (svid, roots)
            }
            _ => {
                tracing::info!("SVID is not found. Starting node attestation");
                let trust = settings.bootstrap.clone();
                let svid = attest(&settings, &server_id, trust.clone()).await?;
                // The bundle, fetched over the attestation trust (no client certificate).
                let ch = client::connect(&settings.server_addr, trust, server_id.clone(), None)?;
                let b = bundlepb::bundle_client::BundleClient::new(ch)
                    .get_bundle(bundlepb::GetBundleRequest::default())
                    .await
                    .map_err(|e| AgentError::Unavailable(e.message().to_owned()))?
                    .into_inner();
                (svid, b.x509_authorities.into_iter().map(|c| c.asn1).collect())
            }
        };
        let bundle = Bundle {
            trust_domain: settings.trust_domain.clone(),
            x509_authorities: roots,
            jwt_authorities: vec![],
            refresh_hint: None,
            sequence_number: 0,
            tainted_x509: vec![],
        };
        let channel = mtls(&settings, &server_id, &svid, &bundle)?;
        let (snapshot, _) = watch::channel(None);
        let agent = Arc::new(Self {
            last_sync_success: std::sync::atomic::AtomicI64::new(0),
            wanted: Mutex::new(std::collections::HashSet::new()),
            wake: tokio::sync::Notify::new(),
            subscribers: Arc::new(Mutex::new(HashMap::new())),
            touched: Mutex::new(HashSet::new()),
            next_hold: std::sync::atomic::AtomicU64::new(0),
            settings,
            server_id,
            state: tokio::sync::Mutex::new(State {
                svid,
                channel,
                bundle,
                federated: BTreeMap::new(),
                entries: vec![],
                svids: HashMap::new(),
                jwt: HashMap::new(),
                last_access: HashMap::new(),
                tick: 0,
                tainted_seen: std::collections::BTreeSet::new(),
                force_remint: std::collections::HashSet::new(),
                agent_svid_tainted: false,
            }),
            snapshot,
            fatal: Mutex::new(None),
        });
        let channel = {
            let st = agent.state.lock().await;
            agent.persist(&st);
            st.channel.clone()
        };
        // Tell the server which version runs here (SPIRE's PostStatus; `agent show` prints it).
        // Best effort: a server without it (older SPIRE) answers Unimplemented.
        let status = agentpb::PostStatusRequest { current_bundle_serial: 0, agent_version: env!("CARGO_PKG_VERSION").to_owned() };
        if let Err(e) = agentpb::agent_client::AgentClient::new(channel).post_status(status).await {
            tracing::debug!(code = ?e.code(), message = e.message(), "could not post the agent status");
        }
        Ok(agent)
    }

    fn persist(&self, st: &State) {
        let Some(dir) = &self.settings.state_dir else { return };
        let p = Persisted {
            chain: st.svid.chain.iter().map(|c| B64.encode(c)).collect(),
            key: B64.encode(st.svid.key.as_slice()),
            reattestable: st.svid.reattestable,
            bundle: st.bundle.x509_authorities.iter().map(|c| B64.encode(c)).collect(),
        };
        // The directory holds the agent's private key: owner only.
        let res = crate::fsutil::create_dir_all_mode(dir, 0o700).and_then(|()| {
            let text = Zeroizing::new(serde_json::to_vec(&p).map_err(std::io::Error::other)?);
            crate::fsutil::write_private_atomic(&dir.join("agent-svid.json"), &text)
        });
        if let Err(e) = res {
            tracing::warn!(error = %e, "could not persist the agent SVID");
        }
    }

    /// The agent's SPIFFE ID.
    pub async fn agent_id(&self) -> Option<SpiffeId> {
        let st = self.state.lock().await;
        st.svid.chain.first().and_then(|l| crate::spiffe::leaf_spiffe_id(l).ok())
    }

    /// Runs the sync loop until `shutdown` or a fatal refusal.
    ///
    /// # Errors
    /// The agent was banned or evicted and cannot re-attest.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
        let follower = tokio::spawn(Arc::clone(&self).follow_server_changes());
        let result = Arc::clone(&self).sync_loop(shutdown).await;
        follower.abort();
        result
    }

    /// Holds the server's change stream (cairn's `AgentSync`) and wakes the sync loop on each
    /// notice, so changes reach workloads as they happen; reconnects when the stream ends. A
    /// server without it (SPIRE, or `agent_push = false`) answers Unimplemented, and the agent
    /// then only polls, as SPIRE's does.
    async fn follow_server_changes(self: Arc<Self>) {
        use crate::wire::pb::cairn::api::agentsync::v1::{WatchChangesRequest, agent_sync_client::AgentSyncClient};
        let mut backoff = Duration::from_secs(1);
        loop {
            let channel = self.state.lock().await.channel.clone();
            match AgentSyncClient::new(channel).watch_changes(WatchChangesRequest {}).await {
                Err(e) if e.code() == tonic::Code::Unimplemented => {
                    tracing::info!(
                        sync_interval = ?self.settings.sync_interval,
                        "the server has no change stream (a SPIRE server, or agent_push is off): polling only"
                    );
                    return;
                }
                Err(e) => tracing::debug!(code = ?e.code(), error = e.message(), "could not open the server's change stream"),
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    let mut live = false;
                    loop {
                        match stream.message().await {
                            Ok(Some(notice)) => {
                                if !live {
                                    tracing::debug!("following the server's change stream");
                                    live = true;
                                    backoff = Duration::from_secs(1);
                                } else {
                                    tracing::debug!(generation = notice.generation, kind = notice.kind, "server reported a change");
                                }
                                self.wake.notify_one();
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::debug!(code = ?e.code(), error = e.message(), "the server's change stream ended");
                                break;
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn sync_loop(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        // Zero while syncs succeed. The first retry comes after a second: most failures are
        // one lost request (the server ending a connection at its max age, a restart), and
        // waiting a whole interval or more would hold back a change the server just pushed.
        // Further retries back off to at most 12 intervals.
        let mut backoff = Duration::ZERO;
        // A test's manual clock moving triggers a sync at once (SVIDs due for renewal).
        let mut moves = crate::clock::moves();
        loop {
            let wait = match self.sync_once().await {
                Ok(()) => {
                    backoff = Duration::ZERO;
                    self.settings.sync_interval
                }
                Err(e) => {
                    if let Some(msg) = self.fatal.lock().ok().and_then(|g| g.clone()) {
                        return Err(AgentError::Denied(msg));
                    }
                    tracing::warn!(error = %e, "sync failed; retrying");
                    backoff = (backoff * 2).min(self.settings.sync_interval * 12).max(Duration::from_secs(1));
                    backoff
                }
            };
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(wait) => {}
                () = moves.next() => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// One sync: renew the agent SVID if due, fetch entries and bundles, mint what is missing
    /// or due for rotation, publish the snapshot if anything changed.
    ///
    /// # Errors
    /// A failed RPC (the previous state stays published).
    pub async fn sync_once(&self) -> Result<(), SyncError> {
        self.sync_inner().await?;
        self.last_sync_success.store(crate::now_unix(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// What the agent admin API's Debug GetInfo reports.
    pub async fn debug_info(&self) -> DebugInfo {
        let st = self.state.lock().await;
        let now = crate::now_unix();
        // SPIRE reports the chain up to the root it verifies against.
        let mut chain = st.svid.chain.clone();
        if let Some(root) = st
            .bundle
            .x509_authorities
            .iter()
            .find(|r| crate::spiffe::x509::verify_chain(&st.svid.chain, std::slice::from_ref(*r), now).is_ok())
            && chain.last() != Some(root)
        {
            chain.push(root.clone());
        }
        DebugInfo {
            svid_chain: chain,
            x509_svids: st.svids.len(),
            jwt_svids: st.jwt.len(),
            last_sync_success: self.last_sync_success.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    async fn sync_inner(&self) -> Result<(), SyncError> {
        let mut st = self.state.lock().await;
        let now = crate::now_unix();
        if half_life_passed(st.svid.not_before, st.svid.not_after, now) || st.agent_svid_tainted {
            self.renew(&mut st).await?;
            st.agent_svid_tainted = false;
        }
        let ch = st.channel.clone();
        let mut entries = match fetch_authorized_entries(ch.clone(), &st.entries).await {
            Ok(entries) => entries,
            Err(e) => {
                let err = format!("failed to fetch authorized entries: {}", e.message());
                self.check_fatal(&e, &err, &mut st).await;
                return Err(SyncError::rpc("failed to fetch authorized entries", e));
            }
        };
        // A server with a stale cache (or an older one) may still list an expired entry: it is
        // neither minted for nor served.
        entries.retain(|e| e.expires_at == 0 || e.expires_at > now);
        let b = bundlepb::bundle_client::BundleClient::new(ch.clone())
            .get_bundle(bundlepb::GetBundleRequest::default())
            .await
            .map_err(|e| SyncError::rpc("fetching bundle", e))?
            .into_inner();
        let bundle = bundle_from_proto(&b)?;
        if bundle.trust_domain != self.settings.trust_domain {
            return Err(SyncError::WrongTrustDomain { got: bundle.trust_domain, want: self.settings.trust_domain.clone() });
        }
        react_to_taint(&mut st, &bundle, now);
        let mut federated = BTreeMap::new();
        let wanted: std::collections::BTreeSet<String> = entries.iter().flat_map(|e| e.federates_with.iter().cloned()).collect();
        for td in wanted {
            match bundlepb::bundle_client::BundleClient::new(ch.clone())
                .get_federated_bundle(bundlepb::GetFederatedBundleRequest { trust_domain: td.clone(), output_mask: None })
                .await
            {
                Ok(r) => {
                    if let Ok(fb) = bundle_from_proto(&r.into_inner()) {
                        federated.insert(fb.trust_domain.clone(), fb);
                    }
                }
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(SyncError::rpc(format!("fetching federated bundle {td}"), e)),
            }
        }
        // Which entries hold an SVID after this sync (the SVID cache's plan), then which of
        // those need a (new) one.
        let keep = self.plan_svid_cache(&mut st, &entries);
        let due: Vec<&Arc<pt::Entry>> = entries
            .iter()
            .filter(|e| keep.contains(&e.id))
            .filter(|e| match st.svids.get(&e.id) {
                _ if st.force_remint.contains(&e.id) => true,
                None => true,
                Some((rev, item)) => *rev != e.revision_number || half_life_passed(item.not_before, item.not_after, now),
            })
            .collect();
        let mut minted: HashMap<String, (i64, Arc<X509SvidItem>)> = HashMap::new();
        for batch in due.chunks(CSR_BATCH) {
            let mut keys = Vec::with_capacity(batch.len());
            let mut params = Vec::with_capacity(batch.len());
            for e in batch {
                let id = e.spiffe_id.as_ref().and_then(|i| SpiffeId::from_path(&TrustDomain::new(&i.trust_domain).ok()?, &i.path).ok());
                let (csr, key) = keypair_and_csr(id.as_ref())?;
                keys.push(key);
                params.push(svidpb::NewX509svidParams { entry_id: e.id.clone(), csr });
            }
            let resp =
                match svidpb::svid_client::SvidClient::new(ch.clone()).batch_new_x509svid(svidpb::BatchNewX509svidRequest { params }).await
                {
                    Ok(r) => r.into_inner(),
                    Err(e) => {
                        let err = format!("failed to batch new X509 SVID(s): {}", e.message());
                        self.check_fatal(&e, &err, &mut st).await;
                        return Err(SyncError::rpc("failed to batch new X509 SVID(s)", e));
                    }
                };
            for ((e, key), r) in batch.iter().zip(keys).zip(resp.results) {
                match (r.status.as_ref().map(|s| s.code), r.svid) {
                    (Some(0), Some(svid)) => {
                        let Some(item) = svid_item(e, svid.cert_chain, key) else { continue };
                        let what = if st.svids.contains_key(&e.id) { "Renewing X509-SVID" } else { "Creating X509-SVID" };
                        tracing::info!(entry_id = %e.id, spiffe_id = %item.spiffe_id, "{what}");
                        st.force_remint.remove(&e.id);
                        minted.insert(e.id.clone(), (e.revision_number, Arc::new(item)));
                    }
                    (_, _) => tracing::warn!(entry_id = %e.id, status = ?r.status, "server did not mint an SVID for entry"),
                }
            }
        }
        // Keep SVIDs only for entries still authorized.
        let mut svids: HashMap<String, (i64, Arc<X509SvidItem>)> = HashMap::new();
        for e in &entries {
            if let Some(m) = minted.remove(&e.id) {
                svids.insert(e.id.clone(), m);
            } else if let Some(old) = st.svids.get(&e.id).filter(|_| keep.contains(&e.id)) {
                svids.insert(e.id.clone(), old.clone());
            }
        }
        let changed = st.bundle != bundle
            || st.federated != federated
            || !same_entries(&entries, &st.entries)
            || svids.keys().collect::<std::collections::BTreeSet<_>>() != st.svids.keys().collect()
            || !minted_is_empty(&svids, &st.svids);
        log_entry_changes(&st.entries, &entries);
        if let Ok(mut w) = self.wanted.lock() {
            // Only what is still deferred stays wanted.
            w.retain(|id| entries.iter().any(|e| &e.id == id) && !svids.contains_key(id));
        }
        st.entries = entries;
        st.svids = svids;
        let bundle_changed = st.bundle.x509_authorities != bundle.x509_authorities;
        st.bundle = bundle;
        st.federated = federated;
        st.jwt.retain(|_, (_, _, exp, _)| *exp > now);
        if bundle_changed {
            // New connections to the server must trust the roots the bundle has now: after a
            // CA rotation the server's own SVID moves to the new root, and after a revocation
            // the old root is gone.
            st.channel = mtls(&self.settings, &self.server_id, &st.svid, &st.bundle)?;
            self.persist(&st);
        }
        if st.agent_svid_tainted {
            // With the new bundle in place, so the renewed channel trusts the new roots.
            self.renew(&mut st).await?;
            st.agent_svid_tainted = false;
        }
        if changed || self.snapshot.borrow().is_none() {
            let snap = self.build_snapshot(&st);
            self.snapshot.send_replace(Some(Arc::new(snap)));
        }
        Ok(())
    }

    fn build_snapshot(&self, st: &State) -> Snapshot {
        let mut svids: Vec<Arc<X509SvidItem>> = st.entries.iter().filter_map(|e| st.svids.get(&e.id).map(|(_, s)| Arc::clone(s))).collect();
        // Stable order: by SPIFFE ID then entry id, so a caller's default identity does not flap.
        svids.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id).then_with(|| a.entry_id.cmp(&b.entry_id)));
        let mut unminted: Vec<Arc<Identity>> =
            st.entries.iter().filter(|e| !st.svids.contains_key(&e.id)).filter_map(|e| entry_identity(e).map(Arc::new)).collect();
        unminted.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id).then_with(|| a.entry_id.cmp(&b.entry_id)));
        Snapshot {
            trust_domain: self.settings.trust_domain.clone(),
            bundle: st.bundle.clone(),
            federated: st.federated.clone(),
            svids,
            unminted,
        }
    }

    /// The SVID cache's plan for this sync: the entries that hold an X509-SVID afterwards.
    ///
    /// SPIRE's LRU cache, in cairn's words: an entry a workload is entitled to while its stream
    /// is open, or that a workload has asked for, always gets one (the size is a soft limit);
    /// beyond that, SVIDs past `x509_svid_cache_max_size` are evicted least recently used
    /// first, and free room is filled with entries not yet minted, those workloads used before
    /// first. Entries that opt out of pre-fetching are minted only when asked for.
    fn plan_svid_cache(&self, st: &mut State, entries: &[Arc<pt::Entry>]) -> HashSet<String> {
        st.tick += 1;
        let demand = Demand {
            open: self.subscribers.lock().map(|s| s.values().cloned().collect()).unwrap_or_default(),
            touched: self.touched.lock().map(|mut t| t.drain().collect()).unwrap_or_default(),
            wanted: self.wanted.lock().map(|w| w.clone()).unwrap_or_default(),
        };
        let held: HashSet<&str> = st.svids.keys().map(String::as_str).collect();
        let cap = self.settings.x509_svid_cache_max_size.unwrap_or(usize::MAX);
        svid_cache_plan(entries, &held, &demand, &mut st.last_access, st.tick, cap)
    }

    async fn renew(&self, st: &mut State) -> Result<(), SyncError> {
        let new = if st.svid.reattestable {
            let trust = ServerTrust::Roots(st.bundle.x509_authorities.clone());
            attest(&self.settings, &self.server_id, trust).await?
        } else {
            let (csr, key) = keypair_and_csr(None)?;
            let resp = agentpb::agent_client::AgentClient::new(st.channel.clone())
                .renew_agent(agentpb::RenewAgentRequest { params: Some(agentpb::AgentX509svidParams { csr }) })
                .await
                .map_err(|e| SyncError::rpc("renewing agent SVID", e))?
                .into_inner();
            let chain = resp.svid.ok_or(SyncError::MissingSvid("server returned no SVID"))?.cert_chain;
            let (nb, na) = validity(chain.first().ok_or(SyncError::MissingSvid("empty chain"))?);
            AgentSvid { chain, key: Arc::new(key), not_before: nb, not_after: na, reattestable: false }
        };
        st.channel = mtls(&self.settings, &self.server_id, &new, &st.bundle)?;
        st.svid = new;
        self.persist(st);
        tracing::info!(not_after = st.svid.not_after, "renewed agent SVID");
        Ok(())
    }

    /// Reacts to the server's verdict on this agent: banned -> stop; evicted or unknown ->
    /// re-attest when the attestor allows it, else stop.
    /// Reacts to a refusal of this agent (`err` is what failed, for the log): re-attests when it
    /// may, else records why it must stop and removes its stored SVID.
    async fn check_fatal(&self, status: &tonic::Status, err: &str, st: &mut State) {
        use crate::wire::pb::spire::api::types::permission_denied_details::Reason;
        let Some(reason) = crate::wire::details::denied_reason(status) else { return };
        let reason = Reason::try_from(reason).unwrap_or(Reason::Unknown);
        let msg = match reason {
            Reason::AgentBanned => {
                tracing::error!(error = %err, "Agent is banned: removing SVID and shutting down");
                Some("the agent is banned on the server".to_owned())
            }
            Reason::AgentNotAttested | Reason::AgentExpired | Reason::AgentNotActive | Reason::AgentMustReattest => {
                if st.svid.reattestable || crate::attest::agent_attestor(&self.settings.attestation).can_reattest() {
                    let trust = ServerTrust::Roots(st.bundle.x509_authorities.clone());
                    match attest(&self.settings, &self.server_id, trust).await {
                        Ok(svid) => match mtls(&self.settings, &self.server_id, &svid, &st.bundle) {
                            Ok(ch) => {
                                st.channel = ch;
                                st.svid = svid;
                                self.persist(st);
                                None
                            }
                            Err(e) => Some(e.to_string()),
                        },
                        Err(e) => Some(format!("re-attestation failed: {e}")),
                    }
                } else {
                    Some(format!(
                        "the server no longer accepts this agent ({reason:?}) and join-token agents cannot re-attest; generate a new token"
                    ))
                }
            }
            Reason::Unknown => None,
        };
        if let Some(m) = msg {
            if let Some(dir) = &self.settings.state_dir {
                let _ = std::fs::remove_file(dir.join("agent-svid.json"));
            }
            if let Ok(mut g) = self.fatal.lock() {
                *g = Some(m);
            }
        }
    }
}

/// What workloads asked of the SVID cache since the last sync.
#[derive(Debug, Default)]
struct Demand {
    /// Selectors of workloads with a stream open.
    open: Vec<Vec<Selector>>,
    /// Selectors of workloads that opened a stream since the last sync.
    touched: Vec<Vec<Selector>>,
    /// Entries a workload is waiting for.
    wanted: HashSet<String>,
}

/// [`Agent::plan_svid_cache`]'s logic: `held` are the entries with an SVID now, `last_access`
/// is updated to `tick` for the entries workloads used, and the result is the set of entries
/// that hold one after the sync (at most `cap`, unless workloads need more).
fn svid_cache_plan(
    entries: &[Arc<pt::Entry>],
    held: &HashSet<&str>,
    demand: &Demand,
    last_access: &mut HashMap<String, u64>,
    tick: u64,
    cap: usize,
) -> HashSet<String> {
    let (subscribers, touched, wanted) = (&demand.open, &demand.touched, &demand.wanted);
    let mut active: HashSet<&str> = entries.iter().filter(|e| wanted.contains(&e.id)).map(|e| e.id.as_str()).collect();
    if !subscribers.is_empty() || !touched.is_empty() {
        for e in entries {
            let granted = |caller: &Vec<Selector>| {
                !e.selectors.is_empty() && e.selectors.iter().all(|s| caller.iter().any(|c| c.kind == s.r#type && c.value == s.value))
            };
            let open = subscribers.iter().any(granted);
            if open || touched.iter().any(granted) {
                last_access.insert(e.id.clone(), tick);
            }
            if open {
                active.insert(&e.id);
            }
        }
    }
    let present: HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    last_access.retain(|id, _| present.contains(id.as_str()));
    let mut keep: HashSet<String> = entries.iter().filter(|e| held.contains(e.id.as_str())).map(|e| e.id.clone()).collect();
    if keep.len() > cap {
        let mut victims: Vec<(u64, String)> = keep
            .iter()
            .filter(|id| !active.contains(id.as_str()))
            .map(|id| (last_access.get(id).copied().unwrap_or(0), id.clone()))
            .collect();
        victims.sort();
        for (used, id) in victims {
            if keep.len() <= cap {
                break;
            }
            tracing::debug!(record_id = %id, record_timestamp = used, "Removing SVID record");
            keep.remove(&id);
        }
    }
    keep.extend(active.iter().map(|id| (*id).to_owned()));
    if keep.len() < cap {
        let mut fill: Vec<(std::cmp::Reverse<u64>, usize, &str)> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !keep.contains(&e.id) && !e.additional_attributes.is_some_and(|a| a.disable_x509_svid_prefetch))
            .map(|(i, e)| (std::cmp::Reverse(last_access.get(&e.id).copied().unwrap_or(0)), i, e.id.as_str()))
            .collect();
        fill.sort_unstable();
        let room = cap - keep.len();
        keep.extend(fill.into_iter().take(room).map(|(_, _, id)| id.to_owned()));
    }
    keep
}

fn minted_is_empty(new: &HashMap<String, (i64, Arc<X509SvidItem>)>, old: &HashMap<String, (i64, Arc<X509SvidItem>)>) -> bool {
    new.iter().all(|(k, (_, v))| old.get(k).is_some_and(|(_, o)| Arc::ptr_eq(o, v)))
}

/// What an entry grants, without SVID material (`None` if its SPIFFE ID does not parse).
fn entry_identity(e: &pt::Entry) -> Option<Identity> {
    let id = e.spiffe_id.as_ref()?;
    Some(Identity {
        entry_id: e.id.clone(),
        spiffe_id: SpiffeId::from_path(&TrustDomain::new(&id.trust_domain).ok()?, &id.path).ok()?,
        selectors: e.selectors.iter().map(|s| Selector { kind: s.r#type.clone(), value: s.value.clone() }).collect(),
        hint: e.hint.clone(),
        federates_with: e.federates_with.iter().filter_map(|t| TrustDomain::new(t).ok()).collect(),
        entry_expires_at: e.expires_at,
    })
}

fn svid_item(e: &pt::Entry, chain: Vec<Vec<u8>>, key: Zeroizing<Vec<u8>>) -> Option<X509SvidItem> {
    let (not_before, not_after) = validity(chain.first()?);
    let Identity { entry_id, spiffe_id, selectors, hint, federates_with, entry_expires_at } = entry_identity(e)?;
    Some(X509SvidItem {
        entry_id,
        spiffe_id,
        selectors,
        chain,
        key_pkcs8: Arc::new(key),
        hint,
        federates_with,
        not_before,
        not_after,
        entry_expires_at,
    })
}

fn mtls(
    settings: &AgentSettings,
    server_id: &SpiffeId,
    svid: &AgentSvid,
    bundle: &Bundle,
) -> Result<tonic::transport::Channel, AgentError> {
    let identity = ClientIdentity { chain: svid.chain.clone(), key_pkcs8: Arc::clone(&svid.key) };
    Ok(client::connect(&settings.server_addr, ServerTrust::Roots(bundle.x509_authorities.clone()), server_id.clone(), Some(&identity))?)
}

fn load_persisted(path: &std::path::Path) -> Option<(AgentSvid, Vec<Vec<u8>>)> {
    let text = Zeroizing::new(std::fs::read(path).ok()?);
    let p: Persisted = serde_json::from_slice(&text).ok()?;
    let chain: Vec<Vec<u8>> = p.chain.iter().map(|c| B64.decode(c)).collect::<Result<_, _>>().ok()?;
    let key = Zeroizing::new(B64.decode(&p.key).ok()?);
    let roots: Vec<Vec<u8>> = p.bundle.iter().map(|c| B64.decode(c)).collect::<Result<_, _>>().ok()?;
    let (nb, na) = validity(chain.first()?);
    Some((AgentSvid { chain, key: Arc::new(key), not_before: nb, not_after: na, reattestable: p.reattestable }, roots))
}

/// Runs AttestAgent: params, then challenge rounds (x509pop), then the SVID.
async fn attest(settings: &AgentSettings, server_id: &SpiffeId, trust: ServerTrust) -> Result<AgentSvid, AgentError> {
    let (csr, key) = keypair_and_csr(None).map_err(|e| AgentError::Local(format!("agent key: {e}")))?;
    let attestor = crate::attest::agent_attestor(&settings.attestation);
    let (kind, payload) = (attestor.kind(), attestor.payload().map_err(|e| AgentError::AttestationRefused(e.to_string()))?);
    let ch = client::connect(&settings.server_addr, trust, server_id.clone(), None)?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(agentpb::AttestAgentRequest {
        step: Some(agentpb::attest_agent_request::Step::Params(agentpb::attest_agent_request::Params {
            data: Some(pt::AttestationData { r#type: kind.into(), payload }),
            params: Some(agentpb::AgentX509svidParams { csr }),
        })),
    })
    .await
    .map_err(|e| AgentError::Local(e.to_string()))?;
    let mut resp = agentpb::agent_client::AgentClient::new(ch)
        .attest_agent(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(classify)?
        .into_inner();
    loop {
        let msg = resp
            .message()
            .await
            .map_err(classify)?
            .ok_or_else(|| AgentError::Unavailable("server closed the attestation stream".into()))?;
        match msg.step {
            Some(agentpb::attest_agent_response::Step::Challenge(challenge)) => {
                let answer = attestor.respond(&challenge).map_err(|e| AgentError::AttestationRefused(e.to_string()))?;
                tx.send(agentpb::AttestAgentRequest { step: Some(agentpb::attest_agent_request::Step::ChallengeResponse(answer)) })
                    .await
                    .map_err(|e| AgentError::Local(e.to_string()))?;
            }
            Some(agentpb::attest_agent_response::Step::Result(r)) => {
                let chain = r.svid.ok_or_else(|| AgentError::Unavailable("attestation result without SVID".into()))?.cert_chain;
                let (nb, na) = validity(chain.first().ok_or_else(|| AgentError::Unavailable("empty SVID chain".into()))?);
                let id = chain.first().and_then(|l| crate::spiffe::leaf_spiffe_id(l).ok());
                tracing::info!(spiffe_id = ?id.map(|i| i.to_string()), reattestable = r.reattestable, "Node attestation was successful");
                return Ok(AgentSvid { chain, key: Arc::new(key), not_before: nb, not_after: na, reattestable: r.reattestable });
            }
            None => return Err(AgentError::Unavailable("empty attestation response".into())),
        }
    }
}

fn classify(e: tonic::Status) -> AgentError {
    match e.code() {
        tonic::Code::InvalidArgument | tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition | tonic::Code::NotFound => {
            AgentError::AttestationRefused(e.message().to_owned())
        }
        _ => AgentError::Unavailable(e.message().to_owned()),
    }
}

#[tonic::async_trait]
impl WorkloadSource for Agent {
    fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.snapshot.subscribe()
    }

    fn request_svids(&self, entry_ids: Vec<String>) {
        if let Ok(mut w) = self.wanted.lock() {
            w.extend(entry_ids);
        }
        self.wake.notify_one();
    }

    fn hold(&self, selectors: &[Selector]) -> Hold {
        let id = self.next_hold.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut s) = self.subscribers.lock() {
            s.insert(id, selectors.to_vec());
        }
        if let Ok(mut t) = self.touched.lock() {
            t.insert(selectors.to_vec());
        }
        let subscribers = Arc::clone(&self.subscribers);
        Hold(Some(Box::new(move || {
            if let Ok(mut s) = subscribers.lock() {
                s.remove(&id);
            }
        })))
    }

    async fn fetch_jwt_svid(&self, svid: &Identity, audience: &[String]) -> Result<(String, i64), FetchJwtError> {
        let mut aud = audience.to_vec();
        aud.sort();
        aud.dedup();
        let key = (svid.entry_id.clone(), aud.clone());
        let now = crate::now_unix();
        let (ch, uncached) = {
            let mut st = self.state.lock().await;
            st.tick += 1;
            let tick = st.tick;
            // An entry whose JWT-SVIDs carry a `jti` wants a fresh token each time (SPIRE's
            // `jwt_svid_include_jti`): never served from, nor kept in, the cache.
            let uncached = st
                .entries
                .iter()
                .find(|e| e.id == svid.entry_id)
                .and_then(|e| e.additional_attributes)
                .is_some_and(|a| a.jwt_svid_include_jti);
            if let Some((token, iat, exp, used)) = st.jwt.get_mut(&key).filter(|_| !uncached) {
                // Cached until half-life, as SPIRE's agent does.
                if !half_life_passed(*iat, *exp, now) {
                    *used = tick;
                    return Ok((token.clone(), *exp));
                }
            }
            (st.channel.clone(), uncached)
        };
        let resp = svidpb::svid_client::SvidClient::new(ch)
            .new_jwtsvid(svidpb::NewJwtsvidRequest { entry_id: svid.entry_id.clone(), audience: aud })
            .await
            .map_err(|e| match e.code() {
                tonic::Code::InvalidArgument => FetchJwtError::InvalidArgument(e.message().to_owned()),
                // SPIRE's agent wraps the server's status whole ("failed to fetch JWT SVID: rpc
                // error: code = Unimplemented desc = JWT functionality is disabled"), and
                // SPIRE's suites grep the server's code and message out of it.
                code => FetchJwtError::Unavailable(format!("failed to fetch JWT SVID: rpc error: code = {code:?} desc = {}", e.message())),
            })?
            .into_inner();
        let j = resp.svid.ok_or_else(|| FetchJwtError::Unavailable("server returned no JWT-SVID".into()))?;
        if !uncached {
            let mut st = self.state.lock().await;
            st.tick += 1;
            let tick = st.tick;
            st.jwt.insert(key, (j.token.clone(), j.issued_at, j.expires_at, tick));
            // Bounded as SPIRE's `jwt_svid_cache_max_size`: the least recently used go first.
            let cap = self.settings.jwt_svid_cache_max_size.unwrap_or(usize::MAX);
            while st.jwt.len() > cap {
                let Some(oldest) = st.jwt.iter().min_by_key(|(_, v)| v.3).map(|(k, _)| k.clone()) else { break };
                st.jwt.remove(&oldest);
            }
        }
        Ok((j.token, j.expires_at))
    }
}

#[async_trait::async_trait]
impl crate::telemetry::health::Readiness for Agent {
    /// An agent is ready once it has synced with its server.
    async fn ready(&self) -> bool {
        super::cache::WorkloadSource::subscribe(self).borrow().is_some()
    }
}

/// The agent's authorized entries, through SPIRE's `SyncAuthorizedEntries` (what SPIRE's own
/// agents use since 1.12). Past the server's page size the server lists ids and revisions
/// first, and only the entries `known` lacks at that revision (or creation time) come back in
/// full; a smaller set comes whole. A server without the RPC (an older SPIRE) answers
/// Unimplemented, and `GetAuthorizedEntries` is used instead.
async fn fetch_authorized_entries(ch: tonic::transport::Channel, known: &[Arc<pt::Entry>]) -> Result<Vec<Arc<pt::Entry>>, tonic::Status> {
    const ASK_IDS: usize = 10_000;
    let mut client = entrypb::entry_client::EntryClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel::<entrypb::SyncAuthorizedEntriesRequest>(2);
    let first = entrypb::SyncAuthorizedEntriesRequest { output_mask: None, ids: vec![] };
    tx.send(first).await.map_err(|_| tonic::Status::internal("sync request channel closed"))?;
    let mut stream = match client.sync_authorized_entries(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) if e.code() == tonic::Code::Unimplemented => {
            let entries = client.get_authorized_entries(entrypb::GetAuthorizedEntriesRequest::default()).await?.into_inner().entries;
            return Ok(entries.into_iter().map(Arc::new).collect());
        }
        Err(e) => return Err(e),
    };
    // One phase: responses up to the one that says no more follow.
    async fn phase(
        stream: &mut tonic::Streaming<entrypb::SyncAuthorizedEntriesResponse>,
        entries: &mut Vec<pt::Entry>,
        revisions: &mut Vec<entrypb::EntryRevision>,
    ) -> Result<(), tonic::Status> {
        loop {
            let r = stream.message().await?.ok_or_else(|| tonic::Status::unavailable("the server ended the entry sync early"))?;
            entries.extend(r.entries);
            revisions.extend(r.entry_revisions);
            if !r.more {
                return Ok(());
            }
        }
    }
    let (mut full, mut revisions) = (Vec::new(), Vec::new());
    phase(&mut stream, &mut full, &mut revisions).await?;
    if revisions.is_empty() {
        return Ok(full.into_iter().map(Arc::new).collect());
    }
    let held: HashMap<&str, &Arc<pt::Entry>> = known.iter().map(|e| (e.id.as_str(), e)).collect();
    let needed: Vec<String> = revisions
        .iter()
        .filter(|r| held.get(r.id.as_str()).is_none_or(|e| e.revision_number != r.revision_number || e.created_at != r.created_at))
        .map(|r| r.id.clone())
        .collect();
    // Asked for in chunks: 100,000 ids in one request would pass the server's 4 MB message cap.
    for chunk in needed.chunks(ASK_IDS) {
        let ask = entrypb::SyncAuthorizedEntriesRequest { output_mask: None, ids: chunk.to_vec() };
        tx.send(ask).await.map_err(|_| tonic::Status::internal("sync request channel closed"))?;
        phase(&mut stream, &mut full, &mut Vec::new()).await?;
    }
    drop(tx);
    let mut fetched: HashMap<String, pt::Entry> = full.into_iter().map(|e| (e.id.clone(), e)).collect();
    // In the server's listing order; an entry deleted between the listing and the fetch is
    // left out (the next sync confirms it). Entries still current are shared, not copied: this
    // runs at every sync for every entry the agent holds.
    Ok(revisions
        .iter()
        .filter_map(|r| fetched.remove(&r.id).map(Arc::new).or_else(|| held.get(r.id.as_str()).map(|e| Arc::clone(e))))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn entry(id: &str, uid: u32, prefetch: bool) -> Arc<pt::Entry> {
        Arc::new(pt::Entry {
            id: id.to_owned(),
            selectors: vec![pt::Selector { r#type: "unix".into(), value: format!("uid:{uid}") }],
            additional_attributes: (!prefetch)
                .then_some(pt::entry::AdditionalAttributes { disable_x509_svid_prefetch: true, ..Default::default() }),
            ..Default::default()
        })
    }

    fn uid(n: u32) -> Vec<Selector> {
        vec![Selector { kind: "unix".into(), value: format!("uid:{n}") }, Selector { kind: "unix".into(), value: "gid:0".into() }]
    }

    fn sorted(keep: HashSet<String>) -> Vec<String> {
        let mut v: Vec<String> = keep.into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn a_full_cache_mints_no_more_and_free_room_is_filled_in_entry_order() {
        let entries: Vec<Arc<pt::Entry>> = (1..=5).map(|i| entry(&format!("e{i}"), 1, true)).collect();
        let mut used = HashMap::new();
        let keep = svid_cache_plan(&entries, &HashSet::new(), &Demand::default(), &mut used, 1, 3);
        assert_eq!(sorted(keep), ["e1", "e2", "e3"]);
        let keep = svid_cache_plan(&entries, &HashSet::new(), &Demand::default(), &mut used, 1, usize::MAX);
        assert_eq!(keep.len(), 5);
    }

    #[test]
    fn an_open_stream_keeps_all_its_svids_beyond_the_size_and_the_rest_are_evicted_least_recently_used_first() {
        let mut entries: Vec<Arc<pt::Entry>> = (1..=4).map(|i| entry(&format!("a{i}"), 1, true)).collect();
        entries.extend((1..=4).map(|i| entry(&format!("b{i}"), 2, true)));
        let held: HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        // uid 2 used its identities at tick 5, a3 was used at tick 7 on its own.
        let mut used: HashMap<String, u64> = (1..=4).map(|i| (format!("b{i}"), 5)).collect();
        used.insert("a3".into(), 7);
        used.insert("gone".into(), 9);
        // uid 1 streams now: its four stay, and one slot of the size 5 is left for the most
        // recently used of the others.
        let demand = Demand { open: vec![uid(1)], ..Demand::default() };
        let keep = svid_cache_plan(&entries, &held, &demand, &mut used, 10, 5);
        assert_eq!(sorted(keep), ["a1", "a2", "a3", "a4", "b4"]);
        assert_eq!(used.get("a1"), Some(&10), "an open stream marks its identities used");
        assert!(!used.contains_key("gone"), "entries no longer authorized are forgotten");
        // With uid 2 streaming as well, all eight are held: the size is a soft limit.
        let demand = Demand { open: vec![uid(1), uid(2)], ..Demand::default() };
        assert_eq!(svid_cache_plan(&entries, &held, &demand, &mut used, 11, 5).len(), 8);
        // Nobody streaming: back to the size, keeping the most recently used.
        used.insert("b1".into(), 12);
        used.insert("a4".into(), 13);
        let keep = svid_cache_plan(&entries, &held, &Demand::default(), &mut used, 13, 2);
        assert_eq!(sorted(keep), ["a4", "b1"], "{used:?}");
    }

    #[test]
    fn a_workload_that_used_an_identity_before_gets_it_prefetched_first() {
        let entries: Vec<Arc<pt::Entry>> = (1..=4).map(|i| entry(&format!("e{i}"), i, true)).collect();
        let mut used = HashMap::new();
        let demand = Demand { touched: vec![uid(4)], ..Demand::default() };
        let keep = svid_cache_plan(&entries, &HashSet::new(), &demand, &mut used, 1, 2);
        assert_eq!(sorted(keep), ["e1", "e4"]);
    }

    #[test]
    fn entries_that_opt_out_of_prefetch_are_minted_only_when_asked_for() {
        let entries = vec![entry("lazy", 1, false), entry("eager", 1, true)];
        let mut used = HashMap::new();
        let keep = svid_cache_plan(&entries, &HashSet::new(), &Demand::default(), &mut used, 1, 10);
        assert_eq!(sorted(keep), ["eager"]);
        let demand = Demand { wanted: HashSet::from(["lazy".to_owned()]), ..Demand::default() };
        let keep = svid_cache_plan(&entries, &HashSet::new(), &demand, &mut used, 2, 1);
        assert_eq!(sorted(keep), ["lazy"], "asked for: minted even though the cache is full");
        let held = HashSet::from(["lazy"]);
        let keep = svid_cache_plan(&entries, &held, &Demand::default(), &mut used, 3, 10);
        assert_eq!(sorted(keep), ["eager", "lazy"], "once minted it is kept current");
    }
}
