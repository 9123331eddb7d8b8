//! The CA manager: current/next slots for the X.509 CA and the JWT key, their journal in the
//! datastore, and the rotation loop.
//!
//! Order matters and follows from two SPIRE bugs: the X.509 CA is handled before the JWT key,
//! and JWT work is skipped while there is no X.509 CA, so a server whose upstream is down does
//! not churn JWT keys on every restart (SPIRE #5038); a JWT key is added to the bundle (and,
//! with an upstream that supports it, published upstream) when it is *prepared*, and a failed
//! publication fails the preparation, so no key is ever used before others can verify it.

use super::rotation::{self, Action, Lifetime};
use super::{Ca, CaError, JwtSigner, X509Authority};
use crate::datastore::Datastore;
use crate::keymanager::{Key, KeyManager, KeyRef, KeyType, sign_off_runtime};
use crate::pki::{self as tmpl, CaSubject};
use crate::spiffe::{JwtAuthority, TrustDomain};
use crate::upstream::{UpstreamAuthority, UpstreamError};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::Mutex;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Journal records kept per credential type.
const JOURNAL_CAP: usize = 10;
/// Expired authorities stay in the bundle this long (SPIRE's safety threshold).
const BUNDLE_PRUNE_GRACE: i64 = 24 * 3600;

/// What the CA manager needs from the server config.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Lifetime of each X.509 CA and JWT key, seconds.
    pub ca_ttl: i64,
    /// Default X509-SVID TTL, seconds.
    pub default_x509_svid_ttl: i64,
    /// Default JWT-SVID TTL, seconds.
    pub default_jwt_svid_ttl: i64,
    /// Key type of the X.509 CA.
    pub ca_key_type: KeyType,
    /// Key type of the JWT key.
    pub jwt_key_type: KeyType,
    /// Subject of CA certificates.
    pub ca_subject: CaSubject,
    /// `iss` claim of JWT-SVIDs, if any.
    pub jwt_issuer: Option<String>,
    /// The row this server's journal lives in (one per server when several share a database).
    pub journal_key: String,
    /// Seconds a newly published authority needs to reach every tier: a fresh JWT key that
    /// others may not know yet waits this long before first use (see `rotate_locked`), and a
    /// prepared X.509 CA signs downstream CAs only once published this long ago.
    pub jwt_publish_grace: i64,
    /// `disable_jwt_svids`: no JWT keys, no JWT-SVIDs.
    pub disable_jwt_svids: bool,
    /// Seconds between rotation checks; a CA must stay active for at least one of them.
    pub ca_rotation_interval: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Status {
    Prepared,
    Active,
    Old,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct X509Record {
    slot: String,
    /// When this server prepared the CA: rotation thresholds count from here (as SPIRE's
    /// do), not from the backdated notBefore.
    issued_at: i64,
    not_before: i64,
    not_after: i64,
    certificate: String,
    chain: Vec<String>,
    authority_id: String,
    status: Status,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JwtRecord {
    slot: String,
    issued_at: i64,
    not_after: i64,
    kid: String,
    public_key: String,
    status: Status,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Journal {
    x509: Vec<X509Record>,
    jwt: Vec<JwtRecord>,
    /// The authority id of the X.509 CA that was active before the current one, until the
    /// next preparation (SPIRE's "old" authority, the one an operator may taint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x509_old: Option<String>,
    /// Likewise the kid of the JWT key active before the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwt_old: Option<String>,
}

/// One authority as the local authority API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuthorityState {
    /// X.509: the CA certificate's subject key ID (hex); JWT: the kid.
    pub authority_id: String,
    /// Expiry, unix seconds.
    pub expires_at: i64,
    /// X.509 with an upstream authority: the CA certificate's authority key ID (hex), the
    /// upstream authority that signed it; empty otherwise.
    pub upstream_authority_id: String,
}

/// A tier's authorities of one kind: the active one, a prepared one and the previously
/// active ("old") one, each if present. Prepared and old are never both present: preparing
/// reuses the old one's slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuthorityStates {
    /// Signing now.
    pub active: Option<AuthorityState>,
    /// Published in the bundle, not signing yet.
    pub prepared: Option<AuthorityState>,
    /// Signed until the last activation; may be tainted and then revoked.
    pub old: Option<AuthorityState>,
}

struct X509Slot {
    record: X509Record,
    authority: Arc<X509Authority>,
}

struct JwtSlot {
    record: JwtRecord,
    signer: Arc<JwtSigner>,
}

#[derive(Default)]
struct Slots {
    x509_current: Option<X509Slot>,
    x509_next: Option<X509Slot>,
    x509_old: Option<X509Record>,
    jwt_current: Option<JwtSlot>,
    jwt_next: Option<JwtSlot>,
    jwt_old: Option<JwtRecord>,
    journal: Journal,
    /// The journal text last stored, to skip identical writes.
    journal_written: Option<String>,
    warned_no_jwt_publish: bool,
    /// Whether anyone may hold a copy of this tier's bundle: true once the tier serves, or at
    /// start when the datastore already had a bundle (a restart, or a second HA server).
    bundle_seen: bool,
}

/// A snapshot of the slots for status output.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// `x509` or `jwt`.
    pub kind: &'static str,
    /// `current` or `next`.
    pub role: &'static str,
    /// `A` or `B`.
    pub slot: String,
    /// Authority id (X.509: hex SKI; JWT: kid).
    pub id: String,
    /// When this tier prepared it, unix seconds: its lifetime counts from here.
    pub issued_at: i64,
    /// Expiry, unix seconds.
    pub not_after: i64,
}

/// Owns the CA's slots and rotates them.
pub struct CaManager {
    config: CaConfig,
    key_manager: Arc<dyn KeyManager>,
    upstream: Option<Arc<dyn UpstreamAuthority>>,
    datastore: Arc<dyn Datastore>,
    ca: Arc<Ca>,
    slots: Mutex<Slots>,
}

impl std::fmt::Debug for CaManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaManager").field("trust_domain", &self.config.trust_domain).finish_non_exhaustive()
    }
}

fn key_id(kind: &str, slot: &str) -> String {
    match kind {
        "x509" => format!("x509-CA-{slot}"),
        _ => format!("JWT-Signer-{slot}"),
    }
}

fn other_slot(slot: Option<&str>) -> &'static str {
    if slot == Some("A") { "B" } else { "A" }
}

fn random_kid() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| char::from(ALPHABET.get(usize::from(*b) % ALPHABET.len()).copied().unwrap_or(b'A'))).collect()
}

impl CaManager {
    /// A manager with empty slots; call [`CaManager::initialize`] before serving.
    #[must_use]
    pub fn new(
        config: CaConfig,
        key_manager: Arc<dyn KeyManager>,
        upstream: Option<Arc<dyn UpstreamAuthority>>,
        datastore: Arc<dyn Datastore>,
    ) -> Self {
        let ca = Arc::new(Ca::new(
            config.trust_domain.clone(),
            super::CaSettings {
                default_x509_ttl: config.default_x509_svid_ttl,
                default_jwt_ttl: config.default_jwt_svid_ttl,
                jwt_issuer: config.jwt_issuer.clone(),
                jwt_disabled: config.disable_jwt_svids,
                propagation_grace: config.jwt_publish_grace,
            },
        ));
        Self { config, key_manager, upstream, datastore, ca, slots: Mutex::new(Slots::default()) }
    }

    /// The signing half, shared with the API handlers.
    #[must_use]
    pub fn ca(&self) -> Arc<Ca> {
        Arc::clone(&self.ca)
    }

    /// Loads the journal (resuming slots whose keys the key manager still holds), then rotates
    /// once so that an X.509 CA and a JWT key are active. Fails when none can be made, e.g. the
    /// upstream authority is unreachable on first start.
    ///
    /// # Errors
    /// Datastore, key manager or upstream failures.
    pub async fn initialize(&self, now: i64) -> Result<(), CaError> {
        {
            let mut slots = self.slots.lock().await;
            self.load_journal(&mut slots).await?;
            slots.bundle_seen = self
                .datastore
                .get_bundle(&self.config.trust_domain)
                .await?
                .is_some_and(|b| !b.x509_authorities.is_empty() || !b.jwt_authorities.is_empty());
        }
        let result = self.rotate(now).await;
        // From here on the tier serves its bundle: anyone may hold a copy.
        self.slots.lock().await.bundle_seen = true;
        result
    }

    /// Whether a fresh JWT key must wait `jwt_publish_grace` before first use.
    ///
    /// A JWT-SVID is validated wherever the trust domain's bundle is known: at this tier's
    /// agents, at every other tier and their agents. A key may be used at once only when no
    /// one who must validate it can hold a bundle without it:
    /// - an upstream that is a tier of this trust domain (`spire`) validates this tier's
    ///   JWT-SVIDs and learns keys by publication and bundle sync, so the key waits there;
    ///   a CA on disk has no tier above it that validates JWTs;
    /// - everyone else learns keys from this tier's bundle (or the root's, which it feeds).
    ///   If that bundle was never served (first start on an empty datastore), nobody can hold
    ///   an older copy: nobody attested before this server first answered. Once it has been
    ///   served, or when the datastore already held it at start (a restart that lost its
    ///   keys, a second server on a shared datastore), agents and downstream tiers may hold a
    ///   copy without the new key until their next sync, so the key waits.
    ///
    /// Keys prepared ahead of rotation are published half a lifetime before use and never
    /// wait here.
    fn jwt_must_wait(&self, slots: &Slots) -> bool {
        self.upstream.as_ref().is_some_and(|u| u.is_trust_domain_tier()) || slots.bundle_seen
    }

    async fn load_journal(&self, slots: &mut Slots) -> Result<(), CaError> {
        let Some(text) = self.datastore.get_ca_journal(&self.config.journal_key).await? else { return Ok(()) };
        let journal: Journal = match serde_json::from_str(&text) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "CA journal unreadable; starting with fresh slots");
                return Ok(());
            }
        };
        self.check_journal_keys_present(&journal).await?;
        for rec in journal.x509.iter().filter(|r| r.status != Status::Old) {
            match self.restore_x509(rec).await {
                Ok(Some(slot)) => {
                    let target = if rec.status == Status::Active { &mut slots.x509_current } else { &mut slots.x509_next };
                    *target = Some(slot);
                }
                // Only preparing a slot regenerates its key, and an active slot is never being
                // prepared: with persistent keys a mismatch here means the keys were replaced.
                Ok(None) if rec.status == Status::Active && self.key_manager.is_persistent() => {
                    return Err(self.keys_missing(format!(
                        "key {} matching the active X.509 CA (the key stored under that id is a different one)",
                        key_id("x509", &rec.slot)
                    )));
                }
                Ok(None) => {
                    tracing::info!(slot = %rec.slot, "X.509 CA in the journal has no matching key (non-persistent key manager?); it will be replaced")
                }
                Err(e) => tracing::warn!(slot = %rec.slot, error = %e, "X.509 CA in the journal is unusable; it will be replaced"),
            }
        }
        for rec in journal.jwt.iter().filter(|r| r.status != Status::Old) {
            match self.restore_jwt(rec).await {
                Ok(Some(slot)) => {
                    let target = if rec.status == Status::Active { &mut slots.jwt_current } else { &mut slots.jwt_next };
                    *target = Some(slot);
                }
                Ok(None) if rec.status == Status::Active && self.key_manager.is_persistent() => {
                    return Err(self.keys_missing(format!(
                        "key {} matching the active JWT key (the key stored under that id is a different one)",
                        key_id("jwt", &rec.slot)
                    )));
                }
                Ok(None) => tracing::info!(slot = %rec.slot, "JWT key in the journal has no matching key; it will be replaced"),
                Err(e) => tracing::warn!(slot = %rec.slot, error = %e, "JWT key in the journal is unusable; it will be replaced"),
            }
        }
        if slots.x509_next.is_none() {
            slots.x509_old = journal.x509_old.as_ref().and_then(|id| journal.x509.iter().find(|r| &r.authority_id == id)).cloned();
        }
        if slots.jwt_next.is_none() {
            slots.jwt_old = journal.jwt_old.as_ref().and_then(|id| journal.jwt.iter().find(|r| &r.kid == id)).cloned();
        }
        slots.journal = journal;
        if let Some(next) = &slots.x509_next {
            self.ca.set_x509_next(Some((Arc::clone(&next.authority), next.record.issued_at, next.record.issued_at)));
        }
        if let Some(cur) = &slots.x509_current {
            self.ca.set_x509(Arc::clone(&cur.authority), cur.record.issued_at);
            tracing::info!(authority_id = %cur.record.authority_id, not_after = cur.record.not_after, "resumed X.509 CA from the journal");
        }
        if let Some(cur) = slots.jwt_current.as_ref().filter(|_| !self.config.disable_jwt_svids) {
            self.ca.set_jwt(Arc::clone(&cur.signer));
            tracing::info!(kid = %cur.record.kid, "resumed JWT key from the journal");
        }
        Ok(())
    }

    /// With a persistent key manager every key the journal's live slots name was written before
    /// the journal was (keys are persisted first), so a missing one means the key store was
    /// deleted or swapped. Going on would mint a new CA and root in silence; refuse instead.
    /// A memory key manager loses its keys on every restart by design, and then a new CA is
    /// minted while the old root stays in the bundle.
    async fn check_journal_keys_present(&self, journal: &Journal) -> Result<(), CaError> {
        if !self.key_manager.is_persistent() {
            return Ok(());
        }
        let live = journal
            .x509
            .iter()
            .filter(|r| r.status != Status::Old)
            .map(|r| key_id("x509", &r.slot))
            .chain(journal.jwt.iter().filter(|r| r.status != Status::Old).map(|r| key_id("jwt", &r.slot)));
        let mut missing = Vec::new();
        for id in live {
            if self.key_manager.get_key(&id).await?.is_none() {
                missing.push(id);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(self.keys_missing(format!("key{} {}", if missing.len() == 1 { "" } else { "s" }, missing.join(", "))))
    }

    fn keys_missing(&self, missing: String) -> CaError {
        CaError::KeysMissing { missing, store: self.key_manager.location().unwrap_or_else(|| "its key store".to_owned()) }
    }

    async fn restore_x509(&self, rec: &X509Record) -> Result<Option<X509Slot>, CaError> {
        let Some(key) = self.key_manager.get_key(&key_id("x509", &rec.slot)).await? else { return Ok(None) };
        let cert = B64.decode(&rec.certificate).map_err(|e| CaError::Template(e.to_string()))?;
        let chain = rec.chain.iter().map(|c| B64.decode(c)).collect::<Result<Vec<_>, _>>().map_err(|e| CaError::Template(e.to_string()))?;
        match X509Authority::new(cert, chain, key) {
            Ok(a) => Ok(Some(X509Slot { record: rec.clone(), authority: Arc::new(a) })),
            // The slot's key was regenerated since (a crash between key and journal write).
            Err(CaError::Template(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn restore_jwt(&self, rec: &JwtRecord) -> Result<Option<JwtSlot>, CaError> {
        let Some(key) = self.key_manager.get_key(&key_id("jwt", &rec.slot)).await? else { return Ok(None) };
        if B64.encode(key.spki_der()) != rec.public_key {
            return Ok(None);
        }
        Ok(Some(JwtSlot { record: rec.clone(), signer: Arc::new(JwtSigner::new(rec.kid.clone(), rec.not_after, key)) }))
    }

    /// One rotation step at `now`: prepare, activate or nothing, for X.509 then JWT.
    ///
    /// # Errors
    /// When a needed preparation fails; the active credentials are untouched then.
    pub async fn rotate(&self, now: i64) -> Result<(), CaError> {
        {
            let mut slots = self.slots.lock().await;
            let result = self.rotate_locked(&mut slots, now).await;
            // Whatever happened, record what is in the slots now.
            self.save_journal(&mut slots).await?;
            result?;
        }
        // A taint another server applied (servers sharing the datastore, or a downstream
        // tier's sibling that took the taint in first) reaches this server's CA here
        // (SPIRE #5587): move off a tainted authority whoever marked it.
        let tainted: Vec<String> = self
            .datastore
            .get_bundle(&self.config.trust_domain)
            .await?
            .map(|b| b.tainted_x509.iter().filter_map(|d| crate::spiffe::x509::subject_key_id_hex(d)).collect())
            .unwrap_or_default();
        if !tainted.is_empty() {
            self.rotate_away_from(&tainted, now).await?;
            self.drop_tainted_next(&tainted).await?;
        }
        if let Err(e) = self.datastore.prune_bundle(&self.config.trust_domain, now - BUNDLE_PRUNE_GRACE).await {
            tracing::warn!(error = %e, "pruning expired authorities from the bundle failed");
        }
        Ok(())
    }

    async fn rotate_locked(&self, slots: &mut Slots, now: i64) -> Result<(), CaError> {
        let lt = |r: &X509Record| Lifetime { not_before: r.issued_at, not_after: r.not_after };
        match rotation::next_action(
            slots.x509_current.as_ref().map(|s| lt(&s.record)),
            slots.x509_next.as_ref().map(|s| lt(&s.record)),
            now,
        ) {
            Action::Nothing => {}
            Action::PrepareNext => {
                let slot = other_slot(slots.x509_current.as_ref().map(|s| s.record.slot.as_str()));
                let next = self.prepare_x509(slot, now, false).await?;
                self.ca.set_x509_next(Some((Arc::clone(&next.authority), now, now)));
                self.log_prepared_x509(&next.record, "prepared next X.509 CA");
                slots.x509_next = Some(next);
                slots.x509_old = None;
            }
            Action::ActivateNext => activate_x509(slots, &self.ca),
            Action::PrepareAndActivate => {
                let slot = other_slot(slots.x509_current.as_ref().map(|s| s.record.slot.as_str()));
                let first = slots.x509_current.is_none() && slots.x509_next.is_none();
                let next = self.prepare_x509(slot, now, first).await?;
                self.log_prepared_x509(&next.record, "prepared X.509 CA for immediate use");
                slots.x509_next = Some(next);
                activate_x509(slots, &self.ca);
            }
        }
        if slots.x509_current.is_none() {
            // Never touch JWT keys without an X.509 CA (SPIRE #5038).
            return Err(CaError::NoX509Ca);
        }
        if self.config.disable_jwt_svids {
            // SPIRE's PrepareJWTKey/ActivateJWTKey are no-ops then: no key, nothing published.
            return Ok(());
        }
        let lt = |r: &JwtRecord| Lifetime { not_before: r.issued_at, not_after: r.not_after };
        // A key others may not know yet needs a moment to reach their bundles; until then
        // JWT-SVIDs signed with it would fail validation elsewhere (SPIRE #5317, #3582). Such
        // a key waits `jwt_publish_grace` before first use, even when there is no current key
        // to fall back on; see `jwt_must_wait` for who must know it.
        let grace = if self.jwt_must_wait(slots) { self.config.jwt_publish_grace } else { 0 };
        let next_ready = |s: &Slots| s.jwt_next.as_ref().is_some_and(|n| now >= n.record.issued_at + grace);
        match rotation::next_action(slots.jwt_current.as_ref().map(|s| lt(&s.record)), slots.jwt_next.as_ref().map(|s| lt(&s.record)), now)
        {
            Action::Nothing => {}
            Action::PrepareNext => {
                let slot = other_slot(slots.jwt_current.as_ref().map(|s| s.record.slot.as_str()));
                slots.jwt_next = Some(self.prepare_jwt(slots, slot, now).await?);
                slots.jwt_old = None;
                tracing::info!(slot, "prepared next JWT key");
            }
            Action::ActivateNext => {
                if next_ready(slots) {
                    activate_jwt(slots, &self.ca);
                }
            }
            Action::PrepareAndActivate => {
                let slot = other_slot(slots.jwt_current.as_ref().map(|s| s.record.slot.as_str()));
                slots.jwt_next = Some(self.prepare_jwt(slots, slot, now).await?);
                if next_ready(slots) {
                    activate_jwt(slots, &self.ca);
                } else {
                    tracing::info!(
                        grace_secs = grace,
                        "JWT key published; activating it once it has had time to reach every tier and agent"
                    );
                }
            }
        }
        Ok(())
    }

    /// Makes a CA in `slot`. `first`: this tier holds no CA at all, so a key already in the
    /// slot can only be left by an attempt that failed before its CA was journaled (an
    /// upstream that refused); it was never certified for use and is taken again, so that
    /// repeated failed starts do not churn keys. A later rotation always takes a fresh key.
    async fn prepare_x509(&self, slot: &str, now: i64, first: bool) -> Result<X509Slot, CaError> {
        if let Some(up) = &self.upstream {
            up.check_ready().await.map_err(|e| CaError::Upstream(e.to_string()))?;
        }
        let id = key_id("x509", slot);
        let leftover = match (first, &self.upstream) {
            (true, Some(_)) => self.key_manager.get_key(&id).await?.filter(|k| k.key_type() == self.config.ca_key_type),
            _ => None,
        };
        let key = match leftover {
            Some(k) => {
                tracing::info!(slot, "reusing the CA key of an earlier attempt that the upstream did not sign");
                k
            }
            None => self.key_manager.generate_key(&id, self.config.ca_key_type).await?,
        };
        let td = &self.config.trust_domain;
        let (cert, chain) = match &self.upstream {
            None => {
                let (signer, td2, subject, ttl) =
                    (KeyRef(Arc::clone(&key)), td.clone(), self.config.ca_subject.clone(), self.config.ca_ttl);
                let cert = sign_off_runtime(key.as_ref(), move || tmpl::self_signed_ca(&signer, &td2, &subject, now, ttl)).await??;
                self.datastore.append_bundle(td, std::slice::from_ref(&cert), &[]).await?;
                (cert, Vec::new())
            }
            Some(up) => {
                let csr = self.ca_csr(&key).await?;
                let minted = up.mint_x509_ca(&csr, self.config.ca_ttl).await.map_err(|e| CaError::Upstream(e.to_string()))?;
                validate_minted(&minted.chain, &minted.roots, &key, td, now)?;
                self.check_minted_lifetime(&minted.chain, now)?;
                self.datastore.append_bundle(td, &minted.roots, &[]).await?;
                let first = minted.chain.first().cloned().ok_or_else(|| CaError::Upstream("empty chain".into()))?;
                (first, minted.chain)
            }
        };
        let authority = X509Authority::new(cert.clone(), chain.clone(), key)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).map_err(|e| CaError::Template(e.to_string()))?;
        let record = X509Record {
            slot: slot.to_owned(),
            issued_at: now,
            not_before: parsed.validity().not_before.timestamp(),
            not_after: authority.not_after,
            certificate: B64.encode(&cert),
            chain: chain.iter().map(|c| B64.encode(c)).collect(),
            authority_id: authority.authority_id.clone(),
            status: Status::Prepared,
        };
        Ok(X509Slot { record, authority: Arc::new(authority) })
    }

    /// One line per prepared CA: configured and effective lifetime, and when it rotates. A
    /// CA minted upstream is capped at the expiry of the upstream CA that signed it (as in
    /// SPIRE), so it may live less than `ca_ttl`; its rotation thresholds count from its
    /// actual lifetime.
    fn log_prepared_x509(&self, rec: &X509Record, what: &str) {
        let life = Lifetime { not_before: rec.issued_at, not_after: rec.not_after };
        let effective = rec.not_after - rec.issued_at;
        let capped = effective + slack(self.config.ca_ttl) < self.config.ca_ttl;
        tracing::info!(
            slot = %rec.slot,
            authority_id = %rec.authority_id,
            configured_ca_ttl = %crate::text::format_duration(self.config.ca_ttl),
            effective_ca_ttl = %crate::text::format_duration(effective),
            capped_by_upstream = capped,
            not_after = rec.not_after,
            next_prepare_at = life.prepare_at(),
            next_activate_at = life.activate_at(),
            "{what}: lives {} of ca_ttl {}{}; next CA prepared in {}, activated in {}",
            crate::text::format_duration(effective),
            crate::text::format_duration(self.config.ca_ttl),
            if capped { " (capped at the upstream CA's expiry)" } else { "" },
            crate::text::format_duration(life.prepare_at() - rec.issued_at),
            crate::text::format_duration(life.activate_at() - rec.issued_at),
        );
    }

    /// Refuses a CA minted upstream that lives too short to rotate at all: it must stay
    /// active (the last sixth of its life) for at least one rotation check, or the tier
    /// would be left without a valid CA between checks. Anything longer works: a CA shorter
    /// than `ca_ttl` (the upstream's CA expires sooner) only rotates more often, and the
    /// SVIDs it signs are capped at its expiry, as in SPIRE.
    fn check_minted_lifetime(&self, chain: &[Vec<u8>], now: i64) -> Result<(), CaError> {
        let not_after = chain
            .first()
            .and_then(|c| x509_parser::parse_x509_certificate(c).ok().map(|(_, c)| c.validity().not_after.timestamp()))
            .ok_or_else(|| CaError::Upstream("unparsable CA certificate".into()))?;
        let life = not_after - now;
        let min = 6 * self.config.ca_rotation_interval;
        if life < min {
            return Err(CaError::Upstream(format!(
                "the upstream signed this tier's CA for only {} (its own CA expires then), less than 6 x ca_rotation_interval ({}): it would expire between rotation checks. Raise the upstream tier's ca_ttl (this tier asked for {}) or lower server.experimental.ca_rotation_interval to at most {}",
                crate::text::format_duration(life.max(0)),
                crate::text::format_duration(min),
                crate::text::format_duration(self.config.ca_ttl),
                crate::text::format_duration((life / 6).max(1)),
            )));
        }
        Ok(())
    }

    async fn ca_csr(&self, key: &Arc<dyn Key>) -> Result<Vec<u8>, CaError> {
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        for c in &self.config.ca_subject.country {
            dn.push(rcgen::DnType::CountryName, c.as_str());
        }
        for o in &self.config.ca_subject.organization {
            dn.push(rcgen::DnType::OrganizationName, o.as_str());
        }
        params.distinguished_name = dn;
        params.subject_alt_names = vec![rcgen::SanType::URI(
            self.config.trust_domain.id_string().try_into().map_err(|e: rcgen::Error| CaError::Template(e.to_string()))?,
        )];
        let signer = KeyRef(Arc::clone(key));
        let csr = sign_off_runtime(key.as_ref(), move || params.serialize_request(&signer).map(|c| c.der().to_vec())).await?;
        csr.map_err(|e| CaError::Signing(e.to_string()))
    }

    async fn prepare_jwt(&self, slots: &mut Slots, slot: &str, now: i64) -> Result<JwtSlot, CaError> {
        let key = self.key_manager.generate_key(&key_id("jwt", slot), self.config.jwt_key_type).await?;
        let kid = random_kid();
        let not_after = now + self.config.ca_ttl;
        let authority = JwtAuthority { key_id: kid.clone(), public_key: key.spki_der(), expires_at: not_after, tainted: false };
        let td = &self.config.trust_domain;
        let mut keys = vec![authority.clone()];
        if let Some(up) = &self.upstream {
            match up.publish_jwt_key(&authority).await {
                Ok(upstream_keys) => keys.extend(upstream_keys.into_iter().filter(|k| k.key_id != kid)),
                Err(UpstreamError::Unsupported) => {
                    if !slots.warned_no_jwt_publish {
                        tracing::warn!(
                            "the upstream authority cannot publish JWT keys: JWT-SVIDs from this tier validate only where this tier's bundle is known"
                        );
                        slots.warned_no_jwt_publish = true;
                    }
                }
                Err(e) => return Err(CaError::Upstream(format!("publishing JWT key: {e}"))),
            }
        }
        self.datastore.append_bundle(td, &[], &keys).await?;
        let record = JwtRecord {
            slot: slot.to_owned(),
            issued_at: now,
            not_after,
            kid: kid.clone(),
            public_key: B64.encode(key.spki_der()),
            status: Status::Prepared,
        };
        Ok(JwtSlot { record, signer: Arc::new(JwtSigner::new(kid, not_after, key)) })
    }

    async fn save_journal(&self, slots: &mut Slots) -> Result<(), CaError> {
        let mut journal = slots.journal.clone();
        for (slot, status) in [(&slots.x509_current, Status::Active), (&slots.x509_next, Status::Prepared)] {
            if let Some(s) = slot {
                journal.x509.retain(|r| r.certificate != s.record.certificate);
                let mut r = s.record.clone();
                r.status = status;
                journal.x509.push(r);
            }
        }
        for (slot, status) in [(&slots.jwt_current, Status::Active), (&slots.jwt_next, Status::Prepared)] {
            if let Some(s) = slot {
                journal.jwt.retain(|r| r.kid != s.record.kid);
                let mut r = s.record.clone();
                r.status = status;
                journal.jwt.push(r);
            }
        }
        // Anything no longer in a slot is old.
        let live_x509: Vec<&str> =
            [&slots.x509_current, &slots.x509_next].iter().filter_map(|s| s.as_ref().map(|s| s.record.certificate.as_str())).collect();
        for r in &mut journal.x509 {
            if !live_x509.contains(&r.certificate.as_str()) {
                r.status = Status::Old;
            }
        }
        let live_jwt: Vec<&str> =
            [&slots.jwt_current, &slots.jwt_next].iter().filter_map(|s| s.as_ref().map(|s| s.record.kid.as_str())).collect();
        for r in &mut journal.jwt {
            if !live_jwt.contains(&r.kid.as_str()) {
                r.status = Status::Old;
            }
        }
        journal.x509_old = slots.x509_old.as_ref().map(|r| r.authority_id.clone());
        journal.jwt_old = slots.jwt_old.as_ref().map(|r| r.kid.clone());
        let x_len = journal.x509.len();
        journal.x509.drain(..x_len.saturating_sub(JOURNAL_CAP));
        let j_len = journal.jwt.len();
        journal.jwt.drain(..j_len.saturating_sub(JOURNAL_CAP));
        let text = serde_json::to_string(&journal).map_err(|e| CaError::Template(e.to_string()))?;
        // Most rotation ticks change nothing: skip the write then.
        if slots.journal_written.as_deref() != Some(text.as_str()) {
            self.datastore.set_ca_journal(&self.config.journal_key, &text).await?;
            slots.journal_written = Some(text);
        }
        slots.journal = journal;
        Ok(())
    }

    /// The slots, for status output.
    pub async fn status(&self) -> Vec<SlotStatus> {
        let slots = self.slots.lock().await;
        let mut out = Vec::new();
        for (role, s) in [("current", &slots.x509_current), ("next", &slots.x509_next)] {
            if let Some(s) = s {
                out.push(SlotStatus {
                    kind: "x509",
                    role,
                    slot: s.record.slot.clone(),
                    id: s.record.authority_id.clone(),
                    issued_at: s.record.issued_at,
                    not_after: s.record.not_after,
                });
            }
        }
        for (role, s) in [("current", &slots.jwt_current), ("next", &slots.jwt_next)] {
            if let Some(s) = s {
                out.push(SlotStatus {
                    kind: "jwt",
                    role,
                    slot: s.record.slot.clone(),
                    id: s.record.kid.clone(),
                    issued_at: s.record.issued_at,
                    not_after: s.record.not_after,
                });
            }
        }
        out
    }

    /// The X.509 authorities: active, prepared and old (SPIRE's `GetX509AuthorityState`).
    pub async fn x509_states(&self) -> AuthorityStates {
        let slots = self.slots.lock().await;
        AuthorityStates {
            active: slots.x509_current.as_ref().map(|s| x509_state(&s.record)),
            prepared: slots.x509_next.as_ref().map(|s| x509_state(&s.record)),
            old: slots.x509_old.as_ref().map(x509_state),
        }
    }

    /// The JWT authorities: active, prepared and old.
    pub async fn jwt_states(&self) -> AuthorityStates {
        let slots = self.slots.lock().await;
        AuthorityStates {
            active: slots.jwt_current.as_ref().map(|s| jwt_state(&s.record)),
            prepared: slots.jwt_next.as_ref().map(|s| jwt_state(&s.record)),
            old: slots.jwt_old.as_ref().map(jwt_state),
        }
    }

    /// Whether this tier's CA is signed by an upstream authority.
    #[must_use]
    pub fn has_upstream(&self) -> bool {
        self.upstream.is_some()
    }

    /// Prepares a new X.509 CA now, whatever the rotation schedule says (SPIRE's
    /// `PrepareX509Authority`): it replaces a prepared one, and the old one is forgotten.
    ///
    /// # Errors
    /// As a rotation's preparation; nothing changes then.
    pub async fn prepare_x509_now(&self, now: i64) -> Result<AuthorityState, CaError> {
        let mut slots = self.slots.lock().await;
        if slots.x509_current.is_none() {
            return Err(CaError::NoX509Ca);
        }
        let slot = other_slot(slots.x509_current.as_ref().map(|s| s.record.slot.as_str()));
        let next = self.prepare_x509(slot, now, false).await?;
        self.ca.set_x509_next(Some((Arc::clone(&next.authority), now, now)));
        self.log_prepared_x509(&next.record, "X509 CA prepared");
        let state = x509_state(&next.record);
        slots.x509_next = Some(next);
        slots.x509_old = None;
        self.save_journal(&mut slots).await?;
        Ok(state)
    }

    /// Activates the prepared X.509 CA `authority_id` now (SPIRE's `ActivateX509Authority`);
    /// the active one becomes old.
    ///
    /// # Errors
    /// `InvalidRequest` when no prepared CA has that id.
    pub async fn activate_x509_now(&self, authority_id: &str) -> Result<AuthorityState, CaError> {
        let mut slots = self.slots.lock().await;
        if slots.x509_next.as_ref().is_none_or(|n| n.record.authority_id != authority_id) {
            return Err(CaError::InvalidRequest("unexpected authority ID".into()));
        }
        activate_x509(&mut slots, &self.ca);
        self.save_journal(&mut slots).await?;
        Ok(slots.x509_current.as_ref().map(|s| x509_state(&s.record)).unwrap_or_default())
    }

    /// Prepares (and publishes) a new JWT key now (SPIRE's `PrepareJWTAuthority`).
    ///
    /// # Errors
    /// `JwtDisabled`, or as a rotation's preparation.
    pub async fn prepare_jwt_now(&self, now: i64) -> Result<AuthorityState, CaError> {
        if self.config.disable_jwt_svids {
            return Err(CaError::JwtDisabled);
        }
        let mut slots = self.slots.lock().await;
        let slot = other_slot(slots.jwt_current.as_ref().map(|s| s.record.slot.as_str()));
        let next = self.prepare_jwt(&mut slots, slot, now).await?;
        tracing::info!(slot, local_authority_id = %next.record.kid, not_after = next.record.not_after, "JWT key prepared");
        let state = jwt_state(&next.record);
        slots.jwt_next = Some(next);
        slots.jwt_old = None;
        self.save_journal(&mut slots).await?;
        Ok(state)
    }

    /// SPIRE's reaction to an upstream authority marked tainted: when the active X.509 CA
    /// chains to one of `tainted` (subject key IDs, lowercase hex), a CA that does not is
    /// activated at once: the prepared one if it is clean, else one prepared now (the upstream
    /// signs it with its active CA). Answers whether the CA changed.
    ///
    /// # Errors
    /// As a preparation; the active CA stays then, and the caller retries.
    pub async fn rotate_away_from(&self, tainted: &[String], now: i64) -> Result<bool, CaError> {
        let mut slots = self.slots.lock().await;
        if !slots.x509_current.as_ref().is_some_and(|c| chains_to_any(&c.record, tainted)) {
            return Ok(false);
        }
        tracing::info!("Current root CA is signed by a tainted upstream authority, preparing rotation");
        if slots.x509_next.as_ref().is_none_or(|n| chains_to_any(&n.record, tainted)) {
            if slots.x509_next.is_some() {
                tracing::info!("Next authority is tainted, prepare new X.509 authority");
            }
            let slot = other_slot(slots.x509_current.as_ref().map(|s| s.record.slot.as_str()));
            let next = self.prepare_x509(slot, now, false).await?;
            self.log_prepared_x509(&next.record, "X509 CA prepared");
            slots.x509_next = Some(next);
        }
        activate_x509(&mut slots, &self.ca);
        self.save_journal(&mut slots).await?;
        Ok(true)
    }

    /// Forgets a prepared X.509 CA that chains to a tainted authority, so that it is never
    /// activated; the schedule prepares a clean one.
    async fn drop_tainted_next(&self, tainted: &[String]) -> Result<(), CaError> {
        let mut slots = self.slots.lock().await;
        if slots.x509_next.as_ref().is_some_and(|n| chains_to_any(&n.record, tainted)) {
            tracing::info!("Next authority is tainted, prepare new X.509 authority");
            slots.x509_next = None;
            self.ca.set_x509_next(None);
            self.save_journal(&mut slots).await?;
        }
        Ok(())
    }

    /// Activates the prepared JWT key `kid` now (SPIRE's `ActivateJWTAuthority`).
    ///
    /// # Errors
    /// `InvalidRequest` when no prepared key has that kid.
    pub async fn activate_jwt_now(&self, kid: &str) -> Result<AuthorityState, CaError> {
        let mut slots = self.slots.lock().await;
        if slots.jwt_next.as_ref().is_none_or(|n| n.record.kid != kid) {
            return Err(CaError::InvalidRequest("unexpected authority ID".into()));
        }
        activate_jwt(&mut slots, &self.ca);
        self.save_journal(&mut slots).await?;
        Ok(slots.jwt_current.as_ref().map(|s| jwt_state(&s.record)).unwrap_or_default())
    }

    /// Rotates every `interval` until `shutdown` resolves; failures are logged and retried.
    /// A test's manual clock moving triggers a rotation check at once.
    pub async fn run(self: Arc<Self>, interval: std::time::Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut moves = crate::clock::moves();
        let mut failures: u32 = 0;
        loop {
            // Wake at the next tick, or sooner when a published JWT key's grace period ends,
            // so a fresh downstream is not left without a JWT key for a whole interval. After
            // failures, back off (x2 each time, at most x8 the interval): an upstream that is
            // down is not hammered, and is retried well within a CA's active sixth.
            let tick = interval.saturating_mul(1 << failures.min(3));
            let wait = match self.pending_jwt_activation().await {
                Some(at) => {
                    let secs = u64::try_from((at - crate::now_unix()).max(0)).unwrap_or(0);
                    tick.min(std::time::Duration::from_secs(secs) + std::time::Duration::from_millis(50))
                }
                None => tick,
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
                () = moves.next() => {}
            }
            match self.rotate(crate::now_unix()).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(failures, "CA rotation works again");
                    }
                    failures = 0;
                    self.ca.set_rotation_problem(None);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let retry = interval.saturating_mul(1 << failures.min(3));
                    tracing::warn!(
                        error = %e,
                        failures,
                        retry_in_secs = retry.as_secs(),
                        "CA rotation failed; keeping the current credentials and retrying"
                    );
                    self.ca.set_rotation_problem(Some(format!("CA rotation failing ({failures} in a row): {e}")));
                }
            }
        }
    }

    /// When a prepared JWT key waiting out its publication grace becomes usable, if one is.
    async fn pending_jwt_activation(&self) -> Option<i64> {
        let slots = self.slots.lock().await;
        if !self.jwt_must_wait(&slots) {
            return None;
        }
        let next = slots.jwt_next.as_ref()?;
        // Only a key that would be activated right away (no usable current one) is urgent.
        let current_ok = slots.jwt_current.as_ref().is_some_and(|c| c.record.not_after > crate::now_unix());
        (!current_ok).then_some(next.record.issued_at + self.config.jwt_publish_grace)
    }
}

/// Tolerance when telling a capped lifetime from a full one (clocks and rounding between tiers).
fn slack(ca_ttl: i64) -> i64 {
    (ca_ttl / 100).clamp(1, 60)
}

fn activate_x509(slots: &mut Slots, ca: &Ca) {
    if let Some(next) = slots.x509_next.take() {
        ca.set_x509(Arc::clone(&next.authority), next.record.issued_at);
        tracing::info!(
            local_authority_id = %next.record.authority_id,
            upstream_authority_id = %upstream_authority_id(&next.record),
            not_after = next.record.not_after,
            "X509 CA activated"
        );
        slots.x509_old = slots.x509_current.replace(next).map(|s| s.record);
    }
}

fn activate_jwt(slots: &mut Slots, ca: &Ca) {
    if let Some(next) = slots.jwt_next.take() {
        ca.set_jwt(Arc::clone(&next.signer));
        tracing::info!(local_authority_id = %next.record.kid, not_after = next.record.not_after, "JWT key activated");
        slots.jwt_old = slots.jwt_current.replace(next).map(|s| s.record);
    }
}

/// The authority key ID of a CA minted upstream (hex): the upstream authority that signed it.
/// Empty for a self-signed CA, whose chain is empty.
fn upstream_authority_id(rec: &X509Record) -> String {
    if rec.chain.is_empty() {
        return String::new();
    }
    B64.decode(&rec.certificate).ok().and_then(|der| crate::spiffe::x509::authority_key_id_hex(&der)).unwrap_or_default()
}

/// Whether a CA's chain (the CA and the upstream certificates above it) was signed by, or is,
/// one of the authorities with subject key IDs `skis`.
fn chains_to_any(rec: &X509Record, skis: &[String]) -> bool {
    std::iter::once(&rec.certificate).chain(rec.chain.iter()).filter_map(|c| B64.decode(c).ok()).any(|der| {
        [crate::spiffe::x509::authority_key_id_hex(&der), crate::spiffe::x509::subject_key_id_hex(&der)]
            .into_iter()
            .flatten()
            .any(|id| skis.contains(&id))
    })
}

fn x509_state(rec: &X509Record) -> AuthorityState {
    AuthorityState { authority_id: rec.authority_id.clone(), expires_at: rec.not_after, upstream_authority_id: upstream_authority_id(rec) }
}

fn jwt_state(rec: &JwtRecord) -> AuthorityState {
    AuthorityState { authority_id: rec.kid.clone(), expires_at: rec.not_after, upstream_authority_id: String::new() }
}

/// Checks a CA minted upstream before it is used (SPIRE's credential validator): a currently
/// valid CA for our key with the trust-domain URI SAN, chaining to the returned roots.
fn validate_minted(chain: &[Vec<u8>], roots: &[Vec<u8>], key: &Arc<dyn Key>, td: &TrustDomain, now: i64) -> Result<(), CaError> {
    let bad = |why: &str| CaError::Upstream(format!("X509 CA minted by upstream authority is invalid: {why}"));
    let first = chain.first().ok_or_else(|| bad("empty chain"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(first).map_err(|_| bad("unparsable certificate"))?;
    if !cert.is_ca() {
        return Err(bad("not a CA"));
    }
    if cert.public_key().raw != key.spki_der().as_slice() {
        return Err(bad("public key differs from the CSR's"));
    }
    if !(cert.validity().not_before.timestamp() <= now && now < cert.validity().not_after.timestamp()) {
        return Err(bad("not valid now (check clock skew between tiers)"));
    }
    let ku_ok = cert.key_usage().ok().flatten().is_some_and(|ku| ku.value.key_cert_sign());
    if !ku_ok {
        return Err(bad("keyCertSign missing"));
    }
    let uris: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| if let x509_parser::extensions::GeneralName::URI(u) = g { Some((*u).to_owned()) } else { None })
                .collect()
        })
        .unwrap_or_default();
    if !(uris.is_empty() || uris == [td.id_string()]) {
        return Err(bad("URI SAN is not the trust domain ID"));
    }
    if roots.is_empty() {
        return Err(bad("no upstream roots"));
    }
    // Walk the chain to a root.
    let mut current = first.clone();
    for next in chain.iter().skip(1).chain(std::iter::once(&Vec::new())) {
        let (_, c) = x509_parser::parse_x509_certificate(&current).map_err(|_| bad("unparsable certificate"))?;
        // The one signature check (Go's algorithm set: SPIRE's own dummy upstream CA signs with
        // ECDSA-SHA512, which x509-parser's check lacks).
        if roots.iter().any(|r| {
            x509_parser::parse_x509_certificate(r).is_ok_and(|(_, r)| crate::spiffe::x509::signature::verify_signed_by(&c, &r).is_ok())
        }) {
            return Ok(());
        }
        if next.is_empty() {
            break;
        }
        let (_, n) = x509_parser::parse_x509_certificate(next).map_err(|_| bad("unparsable certificate"))?;
        if crate::spiffe::x509::signature::verify_signed_by(&c, &n).is_err() {
            return Err(bad("chain is broken"));
        }
        current.clone_from(next);
    }
    Err(bad("does not chain to the upstream roots"))
}
