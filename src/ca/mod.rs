//! The server's certificate authority.
//!
//! [`Ca`] is the hot path: it holds the active X.509 CA and JWT key and mints X509-SVIDs,
//! JWT-SVIDs and downstream CAs. [`manager::CaManager`] owns the current/next slots, decides
//! rotation with the pure functions in [`rotation`], persists the journal in the datastore and
//! swaps the active credentials into the [`Ca`].

pub mod manager;
pub mod rotation;

use crate::keymanager::{Key, KeyManagerError, KeyRef, sign_off_runtime};
use crate::spiffe::{SpiffeId, TrustDomain};
use rcgen::PublicKeyData;
use std::sync::{Arc, RwLock};

use crate::pki as x509;
pub use crate::pki::CaSubject;
pub use manager::{AuthorityState, AuthorityStates, CaConfig, CaManager};

impl From<crate::pki::PkiError> for CaError {
    fn from(e: crate::pki::PkiError) -> Self {
        match &e {
            crate::pki::PkiError::InvalidRequest(_) | crate::pki::PkiError::CsrMissing | crate::pki::PkiError::CsrTooLarge { .. } => {
                Self::InvalidRequest(e.to_string())
            }
            crate::pki::PkiError::Template(m) => Self::Template(m.clone()),
            crate::pki::PkiError::Signing(m) => Self::Signing(m.clone()),
        }
    }
}

/// Errors from the CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// No active X.509 CA (still starting, or the upstream never answered).
    #[error("X509 CA is not available for signing")]
    NoX509Ca,
    /// No active JWT key.
    #[error("JWT key is not available for signing")]
    NoJwtKey,
    /// `disable_jwt_svids = true`: this tier has no JWT key and mints no JWT-SVIDs.
    #[error("JWT functionality is disabled")]
    JwtDisabled,
    /// The request cannot be served as asked (bad CSR, bad TTL, bad audience ...).
    #[error("{0}")]
    InvalidRequest(String),
    /// A certificate template could not be built.
    #[error("certificate template: {0}")]
    Template(String),
    /// Signing failed in the key's backend.
    #[error("signing: {0}")]
    Signing(String),
    /// The key manager failed.
    #[error(transparent)]
    KeyManager(#[from] KeyManagerError),
    /// The upstream authority failed or returned something unusable.
    #[error("upstream authority: {0}")]
    Upstream(String),
    /// The datastore failed.
    #[error("datastore: {0}")]
    Datastore(#[from] crate::datastore::DatastoreError),
    /// The CA journal names keys that the (persistent) key manager no longer has: the key file
    /// was deleted or replaced, or `keys_path` changed. Minting a new CA silently would replace
    /// the trust domain's root behind the operator's back, so the server refuses to start.
    #[error(
        "the CA journal in the datastore refers to {missing} that the key manager does not have ({store}); the keys were deleted or \
         replaced, or keys_path (or the token, or key_label_prefix) changed since the CA was created. Restore those keys to resume the \
         same CA; to start a new CA \
         deliberately, remove the datastore (or its ca_journals table), and expect every agent and downstream tier to need the new root"
    )]
    KeysMissing {
        /// The missing key ids, e.g. `x509-CA-A, JWT-Signer-A`.
        missing: String,
        /// Where the key manager keeps keys.
        store: String,
    },
}

/// The X.509 CA in use: its certificate, the chain that goes after an SVID, and its key.
pub struct X509Authority {
    /// DER of the CA certificate.
    pub cert_der: Vec<u8>,
    /// Certificates that follow a leaf in an SVID chain: empty for a self-signed root;
    /// [this CA, intermediates...] (roots excluded) when an upstream signed it.
    pub chain: Vec<Vec<u8>>,
    /// notAfter, unix seconds.
    pub not_after: i64,
    /// Hex subject key id (SPIRE's authority id).
    pub authority_id: String,
    issuer: rcgen::Issuer<'static, KeyRef>,
    key: Arc<dyn Key>,
}

impl std::fmt::Debug for X509Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Authority")
            .field("authority_id", &self.authority_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl X509Authority {
    /// Wraps a CA certificate and its key for signing.
    ///
    /// # Errors
    /// When the certificate does not parse or its key differs from `key`.
    pub fn new(cert_der: Vec<u8>, chain: Vec<Vec<u8>>, key: Arc<dyn Key>) -> Result<Self, CaError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).map_err(|e| CaError::Template(format!("CA certificate: {e}")))?;
        if cert.public_key().raw != key.spki_der().as_slice() {
            return Err(CaError::Template("CA certificate does not match its key".into()));
        }
        let not_after = cert.validity().not_after.timestamp();
        let authority_id = hex(&x509::key_id(&KeyRef(Arc::clone(&key))));
        let issuer = rcgen::Issuer::from_ca_cert_der(&cert_der.as_slice().into(), KeyRef(Arc::clone(&key)))
            .map_err(|e| CaError::Template(e.to_string()))?;
        Ok(Self { cert_der, chain, not_after, authority_id, issuer, key })
    }

    /// Signs `params` for `public_key` with this CA, off the async runtime when the CA's key
    /// may block. Returns the certificate's DER.
    async fn sign(self: &Arc<Self>, params: rcgen::CertificateParams, public_key: &impl PublicKeyData) -> Result<Vec<u8>, CaError> {
        if !self.key.may_block() {
            return Ok(params.signed_by(public_key, &self.issuer).map_err(|e| CaError::Signing(e.to_string()))?.der().to_vec());
        }
        let spki = rcgen::SubjectPublicKeyInfo::from_der(&public_key.subject_public_key_info())
            .map_err(|e| CaError::InvalidRequest(format!("public key: {e}")))?;
        let ca = Arc::clone(self);
        let signed = sign_off_runtime(self.key.as_ref(), move || params.signed_by(&spki, &ca.issuer).map(|c| c.der().to_vec())).await?;
        signed.map_err(|e| CaError::Signing(e.to_string()))
    }
}

/// The JWT signing key in use.
#[derive(Debug)]
pub struct JwtSigner {
    /// The `kid` header value.
    pub kid: String,
    /// Expiry of the key; JWT-SVID `exp` never exceeds it.
    pub not_after: i64,
    key: Arc<dyn Key>,
}

impl JwtSigner {
    /// Wraps a JWT key.
    #[must_use]
    pub fn new(kid: String, not_after: i64, key: Arc<dyn Key>) -> Self {
        Self { kid, not_after, key }
    }
}

/// A certificate cairn just minted, with what callers need to know about it, so nothing
/// re-parses what it issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// The new certificate first, then the chain that follows it (roots excluded).
    pub chain: Vec<Vec<u8>>,
    /// notBefore of the new certificate, unix seconds.
    pub not_before: i64,
    /// notAfter of the new certificate, unix seconds.
    pub not_after: i64,
    /// Its serial number in decimal (as SPIRE records serials).
    pub serial: String,
}

/// Parameters of an X509-SVID request.
#[derive(Debug, Clone)]
pub struct X509SvidRequest<'a> {
    /// Identity to put in the URI SAN.
    pub id: &'a SpiffeId,
    /// DNS SANs (first one becomes the CN).
    pub dns_names: &'a [String],
    /// Requested TTL in seconds (0 = default).
    pub ttl: i64,
}

/// A prepared X.509 CA and when its trust anchor entered the bundle.
#[derive(Debug, Clone)]
struct PreparedX509 {
    authority: Arc<X509Authority>,
    issued_at: i64,
    published_at: i64,
}

/// The signing half of the CA. Cheap to share; swaps are atomic per credential.
#[derive(Debug)]
pub struct Ca {
    trust_domain: TrustDomain,
    default_x509_ttl: i64,
    default_jwt_ttl: i64,
    jwt_issuer: Option<String>,
    jwt_disabled: bool,
    /// Seconds a newly published authority needs to reach every tier (`jwt_publish_grace`).
    propagation_grace: i64,
    x509: RwLock<Option<Arc<X509Authority>>>,
    /// When the active CA was prepared (its lifetime, for the rotation thresholds, counts from here).
    x509_issued_at: RwLock<i64>,
    x509_next: RwLock<Option<PreparedX509>>,
    jwt: RwLock<Option<Arc<JwtSigner>>>,
    /// Why the last rotation check failed, while it keeps failing (health reports it).
    rotation_problem: RwLock<Option<String>>,
}

/// What [`Ca`] needs beyond its trust domain.
#[derive(Debug, Clone, Default)]
pub struct CaSettings {
    /// Default X509-SVID TTL, seconds.
    pub default_x509_ttl: i64,
    /// Default JWT-SVID TTL, seconds.
    pub default_jwt_ttl: i64,
    /// `iss` claim of JWT-SVIDs.
    pub jwt_issuer: Option<String>,
    /// `disable_jwt_svids`.
    pub jwt_disabled: bool,
    /// Seconds a newly published authority needs to reach every tier.
    pub propagation_grace: i64,
}

/// Largest audience list accepted on a JWT-SVID (bounds the token size).
pub const MAX_AUDIENCES: usize = 64;

impl Ca {
    /// An empty CA for `trust_domain`; the manager activates credentials into it.
    #[must_use]
    pub fn new(trust_domain: TrustDomain, settings: CaSettings) -> Self {
        Self {
            trust_domain,
            default_x509_ttl: settings.default_x509_ttl,
            default_jwt_ttl: settings.default_jwt_ttl,
            jwt_issuer: settings.jwt_issuer,
            jwt_disabled: settings.jwt_disabled,
            propagation_grace: settings.propagation_grace,
            x509: RwLock::new(None),
            x509_issued_at: RwLock::new(0),
            x509_next: RwLock::new(None),
            jwt: RwLock::new(None),
            rotation_problem: RwLock::new(None),
        }
    }

    /// Records why rotation checks fail (`None` once one succeeds again).
    pub fn set_rotation_problem(&self, problem: Option<String>) {
        if let Ok(mut p) = self.rotation_problem.write() {
            *p = problem;
        }
    }

    /// Why rotation checks currently fail, if they do: the tier still signs with its current
    /// credentials, but they will not be replaced until this clears.
    #[must_use]
    pub fn rotation_problem(&self) -> Option<String> {
        self.rotation_problem.read().ok().and_then(|p| p.clone())
    }

    /// Whether `disable_jwt_svids` is set.
    #[must_use]
    pub fn jwt_disabled(&self) -> bool {
        self.jwt_disabled
    }

    /// Whether the tier can do its job at `now`: an X.509 CA valid now and, unless JWT-SVIDs
    /// are disabled, a JWT key valid now. Readiness (`/ready`, `healthcheck`) reports this.
    #[must_use]
    pub fn can_sign(&self, now: i64) -> bool {
        let x509 = self.x509_authority().is_some_and(|a| a.not_after > now);
        let jwt = self.jwt_disabled || self.jwt_signer().is_some_and(|s| s.not_after > now);
        x509 && jwt
    }

    /// The trust domain.
    #[must_use]
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The active X.509 authority.
    #[must_use]
    pub fn x509_authority(&self) -> Option<Arc<X509Authority>> {
        self.x509.read().ok().and_then(|g| g.clone())
    }

    /// The active JWT key.
    #[must_use]
    pub fn jwt_signer(&self) -> Option<Arc<JwtSigner>> {
        self.jwt.read().ok().and_then(|g| g.clone())
    }

    /// Waits for a JWT key to become usable, at most the publication grace (plus a second for
    /// the rotator's tick); returns it and `now` moved on by the wait. A tier's first key waits
    /// out `jwt_publish_grace` before first use (so other tiers hold it before tokens signed
    /// with it reach them); a workload asking in that window gets its JWT-SVID a moment later
    /// instead of an error, as it would from SPIRE, whose first key is usable at once.
    async fn await_jwt_signer(&self, now: i64) -> Option<(Arc<JwtSigner>, i64)> {
        if self.propagation_grace <= 0 {
            return None;
        }
        let start = std::time::Instant::now();
        let limit = std::time::Duration::from_secs(self.propagation_grace.unsigned_abs() + 1);
        tracing::debug!("no JWT key is usable yet; waiting for the new one's publication grace");
        while start.elapsed() < limit {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if let Some(s) = self.jwt_signer() {
                let waited = i64::try_from(start.elapsed().as_secs()).unwrap_or(0);
                return Some((s, now + waited));
            }
        }
        None
    }

    pub(crate) fn set_x509(&self, a: Arc<X509Authority>, issued_at: i64) {
        if let Ok(mut g) = self.x509_next.write()
            && g.as_ref().is_some_and(|n| n.authority.authority_id == a.authority_id)
        {
            *g = None;
        }
        if let Ok(mut g) = self.x509_issued_at.write() {
            *g = issued_at;
        }
        if let Ok(mut g) = self.x509.write() {
            *g = Some(a);
        }
    }

    /// Offers the prepared CA for signing downstream CAs once it has been published for the
    /// propagation grace (see [`rotation::plan_downstream_ca`]); `None` withdraws it.
    pub(crate) fn set_x509_next(&self, next: Option<(Arc<X509Authority>, i64, i64)>) {
        if let Ok(mut g) = self.x509_next.write() {
            *g = next.map(|(authority, issued_at, published_at)| PreparedX509 { authority, issued_at, published_at });
        }
    }

    pub(crate) fn set_jwt(&self, s: Arc<JwtSigner>) {
        if let Ok(mut g) = self.jwt.write() {
            *g = Some(s);
        }
    }

    /// Mints an X509-SVID for `public_key`; returns the chain, leaf first.
    ///
    /// # Errors
    /// No active CA, an ID outside the trust domain or without a path, or a signing failure.
    pub async fn mint_x509_svid(&self, public_key: &impl PublicKeyData, req: &X509SvidRequest<'_>, now: i64) -> Result<Minted, CaError> {
        self.mint_x509_svid_until(public_key, req, 0, now).await
    }

    /// Like [`Ca::mint_x509_svid`], but the SVID's notAfter never passes `until` (unix seconds;
    /// 0 = no limit): an SVID minted for a registration entry must not outlive the entry.
    ///
    /// # Errors
    /// As [`Ca::mint_x509_svid`]; also `InvalidRequest` when `until` has already passed.
    pub async fn mint_x509_svid_until(
        &self,
        public_key: &impl PublicKeyData,
        req: &X509SvidRequest<'_>,
        until: i64,
        now: i64,
    ) -> Result<Minted, CaError> {
        if !req.id.is_member_of(&self.trust_domain) {
            return Err(CaError::InvalidRequest(format!("{} is not a member of trust domain {}", req.id, self.trust_domain)));
        }
        if req.id.is_trust_domain_id() {
            return Err(CaError::InvalidRequest("an X509-SVID needs a SPIFFE ID with a path".into()));
        }
        if req.ttl < 0 {
            return Err(CaError::InvalidRequest("ttl must not be negative".into()));
        }
        let ca = self.x509_authority().ok_or(CaError::NoX509Ca)?;
        let ttl = if req.ttl == 0 { self.default_x509_ttl } else { req.ttl };
        let not_after = cap_at(until, (now + ttl).min(ca.not_after), now)?;
        let params = x509::svid_params(req.id, req.dns_names, public_key, now - x509::NOT_BEFORE_CUSHION, not_after)?;
        let serial = serial_of(&params);
        let leaf = ca.sign(params, public_key).await?;
        let mut chain = Vec::with_capacity(1 + ca.chain.len());
        chain.push(leaf);
        chain.extend(ca.chain.iter().cloned());
        Ok(Minted { chain, not_before: now - x509::NOT_BEFORE_CUSHION, not_after, serial })
    }

    /// Mints a CA certificate for a downstream tier's public key: the trust-domain URI SAN,
    /// the parent's subject with `OU=DOWNSTREAM-n`, lifetime `ttl` capped at the signing CA's
    /// expiry. The signer is the active CA, or the prepared one when only it can cover `ttl`
    /// and every tier has had time to learn it ([`rotation::plan_downstream_ca`]).
    /// Returns [new CA, the signer's chain...].
    ///
    /// # Errors
    /// No active CA, or a signing failure.
    pub async fn mint_downstream_ca(
        &self,
        public_key: &impl PublicKeyData,
        subject: &CaSubject,
        ttl: i64,
        now: i64,
    ) -> Result<Minted, CaError> {
        let active = self.x509_authority().ok_or(CaError::NoX509Ca)?;
        let issued_at = self.x509_issued_at.read().map(|g| *g).unwrap_or(0);
        let next = self.x509_next.read().ok().and_then(|g| g.clone());
        let plan = rotation::plan_downstream_ca(
            rotation::Lifetime { not_before: issued_at, not_after: active.not_after },
            next.as_ref().map(|n| (rotation::Lifetime { not_before: n.issued_at, not_after: n.authority.not_after }, n.published_at)),
            now,
            ttl,
            self.propagation_grace,
        );
        let ca = match next {
            Some(n) if plan.use_next => n.authority,
            _ => active,
        };
        let not_after = plan.not_after;
        if not_after < now + ttl {
            tracing::info!(
                requested_secs = ttl,
                granted_secs = not_after - now,
                signer = %ca.authority_id,
                "downstream CA capped at the expiry of the CA that signs it"
            );
        }
        let ou = format!("DOWNSTREAM-{}", ca.chain.len().max(1));
        let params = x509::ca_params(&self.trust_domain, subject, Some(&ou), public_key, now - x509::NOT_BEFORE_CUSHION, not_after)?;
        let serial = serial_of(&params);
        let mut chain = vec![ca.sign(params, public_key).await?];
        // [new CA] + this tier's chain; under a self-signed root that chain is empty, since the
        // root travels in the bundle, not in chains.
        chain.extend(ca.chain.iter().cloned());
        Ok(Minted { chain, not_before: now - x509::NOT_BEFORE_CUSHION, not_after, serial })
    }

    /// Mints a JWT-SVID; returns the token and its `exp`, which is capped at the key's expiry.
    ///
    /// # Errors
    /// No active key, an empty or oversized audience list, an ID outside the trust domain.
    pub async fn mint_jwt_svid(&self, id: &SpiffeId, audience: &[String], ttl: i64, now: i64) -> Result<(String, i64), CaError> {
        self.mint_jwt_svid_until(id, audience, ttl, 0, now).await
    }

    /// Like [`Ca::mint_jwt_svid`], but `exp` never passes `until` (unix seconds; 0 = no limit),
    /// for JWT-SVIDs minted for a registration entry that expires.
    ///
    /// # Errors
    /// As [`Ca::mint_jwt_svid`]; also `InvalidRequest` when `until` has already passed.
    pub async fn mint_jwt_svid_until(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: i64,
        until: i64,
        now: i64,
    ) -> Result<(String, i64), CaError> {
        self.mint_jwt_svid_with(id, audience, ttl, until, false, now).await
    }

    /// Like [`Ca::mint_jwt_svid_until`]; with `include_jti` the token carries a fresh random
    /// `jti` claim (SPIRE's entry attribute `jwt_svid_include_jti`).
    ///
    /// # Errors
    /// As [`Ca::mint_jwt_svid_until`].
    pub async fn mint_jwt_svid_with(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: i64,
        until: i64,
        include_jti: bool,
        now: i64,
    ) -> Result<(String, i64), CaError> {
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(CaError::InvalidRequest("at least one audience is required".into()));
        }
        if audience.len() > MAX_AUDIENCES {
            return Err(CaError::InvalidRequest(format!("too many audiences: {} (at most {MAX_AUDIENCES})", audience.len())));
        }
        if !id.is_member_of(&self.trust_domain) || id.is_trust_domain_id() {
            return Err(CaError::InvalidRequest(format!("{id} is not a workload ID of trust domain {}", self.trust_domain)));
        }
        if ttl < 0 {
            return Err(CaError::InvalidRequest("ttl must not be negative".into()));
        }
        if self.jwt_disabled {
            return Err(CaError::JwtDisabled);
        }
        let (signer, now) = match self.jwt_signer() {
            Some(s) => (s, now),
            None => self.await_jwt_signer(now).await.ok_or(CaError::NoJwtKey)?,
        };
        let ttl = if ttl == 0 { self.default_jwt_ttl } else { ttl };
        let exp = cap_at(until, (now + ttl).min(signer.not_after), now)?;
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), id.as_str().into());
        claims.insert("aud".into(), audience.to_vec().into());
        claims.insert("exp".into(), exp.into());
        claims.insert("iat".into(), now.into());
        if let Some(iss) = &self.jwt_issuer {
            claims.insert("iss".into(), iss.clone().into());
        }
        if include_jti {
            claims.insert("jti".into(), uuid::Uuid::new_v4().to_string().into());
        }
        let alg = signer.key.key_type().jwt_alg();
        let input = crate::spiffe::jwt::signing_input(alg, &signer.kid, &serde_json::Value::Object(claims));
        let key = Arc::clone(&signer.key);
        let message = input.clone().into_bytes();
        let sig = sign_off_runtime(signer.key.as_ref(), move || key.sign_jws(&message)).await??;
        Ok((crate::spiffe::jwt::assemble(&input, &sig), exp))
    }
}

/// The serial a template will carry, in decimal.
fn serial_of(params: &rcgen::CertificateParams) -> String {
    params.serial_number.as_ref().map(|s| x509::num_to_decimal(s.as_ref())).unwrap_or_default()
}

/// `not_after` lowered to `until` when that is set (non-zero); an `until` already reached leaves
/// no lifetime to issue.
fn cap_at(until: i64, not_after: i64, now: i64) -> Result<i64, CaError> {
    if until == 0 {
        return Ok(not_after);
    }
    if until <= now {
        return Err(CaError::InvalidRequest(format!("the registration entry expired at {until} (now {now})")));
    }
    Ok(not_after.min(until))
}

pub use crate::text::hex;

#[cfg(test)]
mod tests;
