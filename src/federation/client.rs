//! The federated bundle refresher: one loop per foreign trust domain, polling its bundle
//! endpoint and storing the bundle when it changed.
//!
//! Bounded on every side: a request gets 10 s to connect and 30 s in all, a body over 4 MiB is
//! refused, and nothing a foreign endpoint says replaces the stored bundle unless it parses, is
//! not empty and does not name another trust domain in its roots. A failed poll keeps the last
//! good bundle and is retried after 5 s, then twice as long each time up to the bundle's own
//! cadence (a quarter of its refresh hint, or every minute without a bundle); a
//! partner that is down never holds up start-up.

use super::{ClientProfile, FederationError, Relationship};
use crate::datastore::Datastore;
use crate::spiffe::{Bundle, TrustDomain};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Largest bundle document accepted.
pub const MAX_BUNDLE_BYTES: usize = 4 << 20;
/// Retry interval without any bundle (SPIRE: one minute).
const NO_BUNDLE_RETRY: i64 = 60;
/// First retry after a failed poll, doubled on each further failure up to the cadence.
const RETRY_FIRST: i64 = 5;
/// Refresh hints below this are raised to it (SPIRE's minimum).
const MIN_HINT: i64 = 60;

/// What the refresher last did for one trust domain (for `tiers status` and `status.json`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RelationshipStatus {
    /// The foreign trust domain.
    pub trust_domain: String,
    /// Its bundle endpoint.
    pub bundle_endpoint_url: String,
    /// `https_web` or `https_spiffe`.
    pub profile: String,
    /// Unix seconds of the last successful poll (0: none yet).
    pub last_refresh: i64,
    /// Sequence number of the stored bundle.
    pub sequence: u64,
    /// Why the last poll failed, if it did.
    pub last_error: Option<String>,
    /// Unix seconds of the next poll.
    pub next_refresh: i64,
    /// Failed polls since the last success.
    pub consecutive_failures: u32,
}

/// Seconds until the next poll given the bundle held: a quarter of its refresh hint, the hint
/// taken as at least a minute; without a hint, a tenth of the shortest root lifetime; without
/// a bundle, a minute.
#[must_use]
pub fn refresh_interval(bundle: Option<&Bundle>) -> i64 {
    let Some(b) = bundle else { return NO_BUNDLE_RETRY };
    let hint = match b.refresh_hint {
        Some(h) if h > 0 => h.max(MIN_HINT),
        _ => b
            .x509_authorities
            .iter()
            .filter_map(|c| x509_parser::parse_x509_certificate(c).ok())
            .map(|(_, c)| (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / 10)
            .min()
            .unwrap_or(MIN_HINT)
            .max(MIN_HINT),
    };
    hint / 4
}

/// How long and how much a poll may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// To open the connection.
    pub connect: Duration,
    /// For the whole request.
    pub total: Duration,
    /// Largest body.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { connect: Duration::from_secs(10), total: Duration::from_secs(30), max_body: MAX_BUNDLE_BYTES }
    }
}

/// How often the relationships stored through the Trust Domain API are re-read, besides on
/// every change event (SPIRE: 10 s).
const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// Keeps the federated bundles of every managed relationship fresh: those of the config file
/// and those stored through the Trust Domain API (the config file wins for a trust domain in
/// both, as in SPIRE).
#[derive(Debug)]
pub struct Refresher {
    datastore: Arc<dyn Datastore>,
    configured: Vec<Relationship>,
    /// The relationships polled now, with what their last poll did.
    managed: RwLock<BTreeMap<TrustDomain, (Relationship, RelationshipStatus)>>,
    /// Wakes the run loop to re-read the relationships now.
    reload: tokio::sync::Notify,
    limits: Limits,
    /// Roots for `https_web` in place of the system's (tests).
    web_roots: Option<Vec<Vec<u8>>>,
}

/// Why [`Refresher::refresh_now`] did not refresh.
#[derive(Debug, thiserror::Error)]
pub enum RefreshNowError {
    /// No relationship (configured or stored) with that trust domain.
    #[error("no relationship with trust domain \"{0}\"")]
    NotManaged(TrustDomain),
    /// The poll failed.
    #[error(transparent)]
    Failed(#[from] FederationError),
}

fn fresh_status(r: &Relationship) -> RelationshipStatus {
    RelationshipStatus {
        trust_domain: r.trust_domain.to_string(),
        bundle_endpoint_url: r.bundle_endpoint_url.clone(),
        profile: r.profile.name().to_owned(),
        ..RelationshipStatus::default()
    }
}

impl Refresher {
    /// A refresher for the `configured` relationships and those in the datastore.
    #[must_use]
    pub fn new(datastore: Arc<dyn Datastore>, configured: Vec<Relationship>) -> Arc<Self> {
        Arc::new(Self {
            datastore,
            configured,
            managed: RwLock::new(BTreeMap::new()),
            reload: tokio::sync::Notify::new(),
            limits: Limits::default(),
            web_roots: None,
        })
    }

    /// As [`Refresher::new`], with other limits and `https_web` roots (tests).
    #[must_use]
    pub fn with_limits(
        datastore: Arc<dyn Datastore>,
        configured: Vec<Relationship>,
        limits: Limits,
        web_roots: Option<Vec<Vec<u8>>>,
    ) -> Arc<Self> {
        let mut me = Self::new(datastore, configured);
        if let Some(m) = Arc::get_mut(&mut me) {
            m.limits = limits;
            m.web_roots = web_roots;
        }
        me
    }

    /// What each managed relationship's last poll did.
    #[must_use]
    pub fn status(&self) -> Vec<RelationshipStatus> {
        self.managed.read().map(|m| m.values().map(|(_, s)| s.clone()).collect()).unwrap_or_default()
    }

    /// The managed relationship with `td`.
    #[must_use]
    pub fn relationship(&self, td: &TrustDomain) -> Option<Relationship> {
        self.managed.read().ok().and_then(|m| m.get(td).map(|(r, _)| r.clone()))
    }

    /// Asks the run loop to re-read the stored relationships now (after a Trust Domain API
    /// write).
    pub fn trigger_reload(&self) {
        self.reload.notify_one();
    }

    /// The relationships to manage: the stored ones, overridden by the configured ones.
    ///
    /// # Errors
    /// The datastore could not be read.
    async fn wanted(&self) -> Result<BTreeMap<TrustDomain, Relationship>, FederationError> {
        let stored = self.datastore.list_federation_relationships().await.map_err(|e| FederationError::Datastore(e.to_string()))?;
        let mut all: BTreeMap<_, _> = stored.into_iter().map(|r| (r.trust_domain.clone(), r)).collect();
        for r in &self.configured {
            all.insert(r.trust_domain.clone(), r.clone());
        }
        Ok(all)
    }

    /// Re-reads the relationships and makes `managed` match; answers the trust domains whose
    /// relationship is new or changed (their loops must restart) and those no longer managed.
    async fn reconcile(&self) -> Result<(Vec<Relationship>, Vec<TrustDomain>), FederationError> {
        let wanted = self.wanted().await?;
        let mut started = Vec::new();
        let mut stopped = Vec::new();
        let Ok(mut managed) = self.managed.write() else { return Ok((started, stopped)) };
        managed.retain(|td, (rel, _)| {
            let keep = wanted.contains_key(td);
            if !keep {
                tracing::info!(trust_domain = %td, bundle_endpoint_url = %rel.bundle_endpoint_url, "Trust domain no longer managed");
                stopped.push(td.clone());
            }
            keep
        });
        for (td, rel) in wanted {
            match managed.get(&td) {
                Some((old, _)) if *old == rel => {}
                Some(_) => {
                    tracing::info!(entry = %td, bundle_endpoint_url = %rel.bundle_endpoint_url, bundle_endpoint_profile = rel.profile.name(), "Updated configuration for managed trust domain");
                    managed.insert(td, (rel.clone(), fresh_status(&rel)));
                    started.push(rel);
                }
                None => {
                    tracing::info!(trust_domain = %td, bundle_endpoint_url = %rel.bundle_endpoint_url, bundle_endpoint_profile = rel.profile.name(), "Trust domain is now managed");
                    managed.insert(td, (rel.clone(), fresh_status(&rel)));
                    started.push(rel);
                }
            }
        }
        Ok((started, stopped))
    }

    /// Polls `td`'s endpoint now (SPIRE's `RefreshBundle`), as the relationships read afresh
    /// say (configured or stored); answers whether the stored bundle changed.
    ///
    /// The managed set is left to the run loop (woken here): it alone starts and stops the
    /// polling loops, so a relationship first seen here still gets its loop.
    ///
    /// # Errors
    /// `td` is not managed, or the poll failed (the stored bundle is untouched then).
    pub async fn refresh_now(&self, td: &TrustDomain) -> Result<bool, RefreshNowError> {
        self.trigger_reload();
        let rel = match self.wanted().await {
            Ok(mut all) => all.remove(td),
            Err(e) => {
                tracing::error!(error = %e, "Failed to reload configs");
                self.relationship(td)
            }
        };
        let rel = rel.ok_or_else(|| RefreshNowError::NotManaged(td.clone()))?;
        let (changed, _) = self.poll_result(&rel).await;
        Ok(changed?)
    }

    /// Polls every managed relationship, each on its own cadence, and follows the stored
    /// relationships (every 10 s, on change events and on [`Refresher::trigger_reload`])
    /// until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut loops: BTreeMap<TrustDomain, tokio::task::AbortHandle> = BTreeMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut changes = Some(self.datastore.watch_changes());
        loop {
            match self.reconcile().await {
                Ok((started, stopped)) => {
                    for td in stopped {
                        if let Some(h) = loops.remove(&td) {
                            h.abort();
                            tracing::info!(trust_domain = %td, "No longer polling for updates");
                        }
                    }
                    for rel in started {
                        if let Some(h) = loops.remove(&rel.trust_domain) {
                            h.abort();
                        }
                        let me = Arc::clone(&self);
                        let mut stop = shutdown.clone();
                        let td = rel.trust_domain.clone();
                        let handle = tasks.spawn(async move {
                            loop {
                                let wait = me.poll(&rel).await;
                                tokio::select! {
                                    _ = stop.changed() => return,
                                    () = tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap_or(60))) => {}
                                }
                            }
                        });
                        loops.insert(td, handle);
                    }
                }
                Err(e) => tracing::error!(error = %e, "Failed to reload configs"),
            }
            // Wait for a reason to re-read: the timer, a trigger, or a relationship change event
            // (another server of this tier may have written it).
            let relationship_changed = async {
                loop {
                    match changes.as_mut() {
                        Some(rx) => match rx.recv().await {
                            Ok(crate::datastore::Change::Relationships) | Err(crate::datastore::RecvError::Lagged { .. }) => return,
                            Ok(_) => {}
                            Err(crate::datastore::RecvError::Closed) => changes = None,
                        },
                        None => std::future::pending::<()>().await,
                    }
                }
            };
            tokio::select! {
                _ = shutdown.changed() => break,
                () = tokio::time::sleep(RELOAD_EVERY) => {}
                () = self.reload.notified() => {}
                () = relationship_changed => {}
            }
            while tasks.try_join_next().is_some() {}
        }
        tasks.shutdown().await;
    }

    /// One poll of `rel`, logged and recorded; answers the seconds until the next.
    pub async fn poll(&self, rel: &Relationship) -> i64 {
        self.poll_result(rel).await.1
    }

    async fn poll_result(&self, rel: &Relationship) -> (Result<bool, FederationError>, i64) {
        tracing::debug!(trust_domain = %rel.trust_domain, "Polling for bundle update");
        let now = crate::now_unix();
        let result = self.refresh(rel).await;
        let stored = self.datastore.get_bundle(&rel.trust_domain).await.ok().flatten();
        let mut wait = refresh_interval(stored.as_ref());
        if let Ok(mut managed) = self.managed.write()
            && let Some((current, s)) = managed.get_mut(&rel.trust_domain)
            && current == rel
        {
            s.sequence = stored.as_ref().map_or(0, |b| b.sequence_number);
            match &result {
                Ok(_) => {
                    s.last_refresh = now;
                    s.last_error = None;
                    s.consecutive_failures = 0;
                }
                Err(e) => {
                    s.last_error = Some(e.to_string());
                    s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                    // A partner that was not up yet (servers started together) is tried again
                    // soon, then less and less often, up to the normal cadence.
                    wait = wait.min(RETRY_FIRST << (s.consecutive_failures - 1).min(4));
                }
            }
            s.next_refresh = now + wait;
        } else if result.is_err() {
            wait = wait.min(RETRY_FIRST);
        }
        match &result {
            Ok(true) => tracing::info!(trust_domain = %rel.trust_domain, "Bundle refreshed"),
            Ok(false) => tracing::debug!(trust_domain = %rel.trust_domain, "Bundle unchanged"),
            Err(e) => tracing::error!(trust_domain = %rel.trust_domain, error = %e, "Error updating bundle; keeping the last good bundle"),
        }
        (result, wait)
    }

    /// Fetches `rel`'s bundle and stores it if it changed; answers whether it did.
    ///
    /// # Errors
    /// The endpoint is unreachable, unauthenticated, slow, oversized or serves something that
    /// is not a bundle of that trust domain; the stored bundle is untouched then.
    pub async fn refresh(&self, rel: &Relationship) -> Result<bool, FederationError> {
        let url = &rel.bundle_endpoint_url;
        let tls = self.tls_for(rel).await?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(self.limits.connect)
            .timeout(self.limits.total)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| FederationError::Fetch { url: url.clone(), cause: e.to_string() })?;
        let fetch = |cause: String| FederationError::Fetch { url: url.clone(), cause };
        let mut resp = http.get(url).send().await.map_err(|e| fetch(describe(&e)))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(fetch(format!("unexpected status {}", resp.status())));
        }
        let max = self.limits.max_body;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(fetch(format!("body larger than {max} bytes")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fetch(describe(&e)))? {
            if body.len() + chunk.len() > max {
                return Err(fetch(format!("body larger than {max} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let bad = |why: String| FederationError::BadBundle { url: url.clone(), why };
        let fetched = Bundle::from_spiffe_json(rel.trust_domain.clone(), &body).map_err(|e| bad(e.to_string()))?;
        if fetched.x509_authorities.is_empty() && fetched.jwt_authorities.is_empty() {
            return Err(bad("the bundle holds no keys".into()));
        }
        if let Some(other) = foreign_root(&fetched) {
            return Err(bad(format!("its root CA belongs to trust domain {other}, not {}", rel.trust_domain)));
        }
        let stored = self.datastore.get_bundle(&rel.trust_domain).await.map_err(|e| FederationError::Datastore(e.to_string()))?;
        if stored.as_ref() == Some(&fetched) {
            return Ok(false);
        }
        self.datastore.set_bundle(&fetched).await.map_err(|e| FederationError::Datastore(e.to_string()))?;
        Ok(true)
    }

    async fn tls_for(&self, rel: &Relationship) -> Result<rustls::ClientConfig, FederationError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let fetch = |cause: String| FederationError::Fetch { url: rel.bundle_endpoint_url.clone(), cause };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| fetch(e.to_string()))?;
        let mut cfg = match &rel.profile {
            ClientProfile::HttpsWeb => {
                let mut roots = rustls::RootCertStore::empty();
                match &self.web_roots {
                    Some(given) => {
                        for c in given {
                            let _ = roots.add(c.clone().into());
                        }
                    }
                    None => {
                        for c in rustls_native_certs::load_native_certs().certs {
                            let _ = roots.add(c);
                        }
                    }
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            ClientProfile::HttpsSpiffe { endpoint_spiffe_id } => {
                let td = endpoint_spiffe_id.trust_domain();
                let bundle = self
                    .datastore
                    .get_bundle(td)
                    .await
                    .map_err(|e| FederationError::Datastore(e.to_string()))?
                    .filter(|b| !b.x509_authorities.is_empty())
                    .ok_or_else(|| FederationError::NoBootstrapBundle { trust_domain: td.clone() })?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(crate::agent::client::spiffe_server_verifier(
                        bundle.x509_authorities,
                        endpoint_spiffe_id.clone(),
                    ))
                    .with_no_client_auth()
            }
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// A trust domain other than the bundle's own that one of its roots names in its URI SAN.
fn foreign_root(b: &Bundle) -> Option<String> {
    let own = b.trust_domain.id_string();
    for der in &b.x509_authorities {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { continue };
        let Ok(Some(san)) = cert.subject_alternative_name() else { continue };
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = name
                && let Some(rest) = u.strip_prefix("spiffe://")
            {
                let td = rest.split('/').next().unwrap_or_default();
                if format!("spiffe://{td}") != own {
                    return Some(td.to_owned());
                }
            }
        }
    }
    None
}

/// A request error with its causes.
fn describe(e: &reqwest::Error) -> String {
    let chain = crate::text::error_chain(e);
    if e.is_timeout() { format!("timed out ({chain})") } else { chain }
}

#[cfg(test)]
mod tests;
