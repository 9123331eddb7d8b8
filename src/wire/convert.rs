//! Conversions between SPIRE's proto types and cairn's SPIFFE types, with SPIRE's validation.
//! Shared by the API handlers, the agent, the `spire` upstream, the CLI and `tiers`.

use super::WireError;
use super::pb::spire::api::types as pt;
use crate::spiffe::{Bundle, JwtAuthority, Selector, SpiffeId, TrustDomain};

/// `SPIFFEID{trust_domain, path}` to a SPIFFE ID.
///
/// # Errors
/// [`WireError::Invalid`] naming the problem.
pub fn id_from_proto(id: Option<&pt::Spiffeid>, what: &str) -> Result<SpiffeId, WireError> {
    let id = id.ok_or_else(|| WireError::Invalid(format!("invalid {what}: request must specify SPIFFE ID")))?;
    let td = TrustDomain::new(&id.trust_domain).map_err(|e| WireError::Invalid(format!("invalid {what}: trust domain: {e}")))?;
    if !id.path.is_empty() && !id.path.starts_with('/') {
        return Err(WireError::Invalid(format!("invalid {what}: path must have a leading slash")));
    }
    SpiffeId::from_path(&td, &id.path).map_err(|e| WireError::Invalid(format!("invalid {what}: {e}")))
}

/// A SPIFFE ID as `SPIFFEID`.
#[must_use]
pub fn id_to_proto(id: &SpiffeId) -> pt::Spiffeid {
    pt::Spiffeid { trust_domain: id.trust_domain().as_str().to_owned(), path: id.path().to_owned() }
}

/// A domain bundle as the proto bundle.
#[must_use]
pub fn bundle_to_proto(b: &Bundle) -> pt::Bundle {
    pt::Bundle {
        trust_domain: b.trust_domain.as_str().to_owned(),
        x509_authorities: b
            .x509_authorities
            .iter()
            .map(|d| pt::X509Certificate { asn1: d.clone(), tainted: b.is_tainted_x509(d) })
            .collect(),
        jwt_authorities: b.jwt_authorities.iter().map(jwt_key_to_proto).collect(),
        refresh_hint: b.refresh_hint.unwrap_or(0),
        sequence_number: b.sequence_number,
        wit_authorities: vec![],
    }
}

/// A JWT authority as `JWTKey`.
#[must_use]
pub fn jwt_key_to_proto(k: &JwtAuthority) -> pt::JwtKey {
    pt::JwtKey { public_key: k.public_key.clone(), key_id: k.key_id.clone(), expires_at: k.expires_at, tainted: k.tainted }
}

/// `JWTKey` to a JWT authority, checking that the key parses and has an id.
///
/// # Errors
/// [`WireError::Invalid`].
pub fn jwt_key_from_proto(k: &pt::JwtKey) -> Result<JwtAuthority, WireError> {
    if k.key_id.is_empty() {
        return Err(WireError::Invalid("invalid JWT authority: missing key ID".into()));
    }
    use x509_parser::prelude::FromDer;
    match x509_parser::x509::SubjectPublicKeyInfo::from_der(&k.public_key) {
        Ok(([], _)) => {}
        _ => return Err(WireError::Invalid(format!("invalid JWT authority {:?}: public key is not PKIX DER", k.key_id))),
    }
    Ok(JwtAuthority { key_id: k.key_id.clone(), public_key: k.public_key.clone(), expires_at: k.expires_at, tainted: k.tainted })
}

/// An X.509 authority: must be one parseable CA certificate.
///
/// # Errors
/// [`WireError::Invalid`].
pub fn x509_authority_from_proto(c: &pt::X509Certificate) -> Result<Vec<u8>, WireError> {
    match x509_parser::parse_x509_certificate(&c.asn1) {
        Ok(([], cert)) => {
            if !cert.is_ca() {
                return Err(WireError::Invalid("invalid X.509 authority: not a CA certificate".into()));
            }
            Ok(c.asn1.clone())
        }
        _ => Err(WireError::Invalid("invalid X.509 authority: not a DER certificate".into())),
    }
}

/// The proto bundle to a domain bundle (federated bundles).
///
/// # Errors
/// [`WireError::Invalid`].
pub fn bundle_from_proto(b: &pt::Bundle) -> Result<Bundle, WireError> {
    let trust_domain =
        TrustDomain::new(&b.trust_domain).map_err(|e| WireError::Invalid(format!("invalid trust domain {:?}: {e}", b.trust_domain)))?;
    Ok(Bundle {
        trust_domain,
        x509_authorities: b.x509_authorities.iter().map(x509_authority_from_proto).collect::<Result<_, _>>()?,
        jwt_authorities: b.jwt_authorities.iter().map(jwt_key_from_proto).collect::<Result<_, _>>()?,
        refresh_hint: (b.refresh_hint > 0).then_some(b.refresh_hint),
        sequence_number: b.sequence_number,
        tainted_x509: b.x509_authorities.iter().filter(|c| c.tainted).map(|c| c.asn1.clone()).collect(),
    })
}

/// Validates a selector (`type` without `:`, both parts non-empty).
///
/// # Errors
/// [`WireError::Invalid`].
pub fn selector_from_proto(s: &pt::Selector) -> Result<Selector, WireError> {
    if s.r#type.is_empty() {
        return Err(WireError::Invalid("invalid selector: missing selector type".into()));
    }
    if s.r#type.contains(':') {
        return Err(WireError::Invalid(format!("invalid selector: selector type {:?} contains ':'", s.r#type)));
    }
    if s.value.is_empty() {
        return Err(WireError::Invalid(format!("invalid selector: missing value for type {:?}", s.r#type)));
    }
    Ok(Selector { kind: s.r#type.clone(), value: s.value.clone() })
}

/// SPIRE's LogLevel enum value for a level name of [`crate::telemetry::LEVELS`].
#[must_use]
pub fn log_level_to_proto(name: &str) -> i32 {
    use crate::wire::pb::spire::api::types::LogLevel as L;
    (match name {
        "panic" => L::Panic,
        "fatal" => L::Fatal,
        "error" => L::Error,
        "warn" => L::Warn,
        "info" => L::Info,
        "debug" => L::Debug,
        "trace" => L::Trace,
        _ => L::Unspecified,
    }) as i32
}

/// The level name of a SPIRE LogLevel value; `None` for UNSPECIFIED or an unknown value.
#[must_use]
pub fn log_level_from_proto(v: i32) -> Option<&'static str> {
    use crate::wire::pb::spire::api::types::LogLevel as L;
    Some(match L::try_from(v).ok()? {
        L::Panic => "panic",
        L::Fatal => "fatal",
        L::Error => "error",
        L::Warn => "warn",
        L::Info => "info",
        L::Debug => "debug",
        L::Trace => "trace",
        L::Unspecified => return None,
    })
}

/// SetLogLevel's check, shared by the server's and the agent's Logger API: the level name, or
/// SPIRE's InvalidArgument message.
///
/// # Errors
/// UNSPECIFIED, or a value outside the enum.
pub fn log_level_request(v: i32) -> Result<&'static str, &'static str> {
    if v == crate::wire::pb::spire::api::types::LogLevel::Unspecified as i32 {
        return Err("newLevel value cannot be LogLevel_UNSPECIFIED");
    }
    log_level_from_proto(v).ok_or("unsupported log level")
}

/// The Logger API's answer: current and launch levels.
#[must_use]
pub fn logger_to_proto(current: &str, launch: &str) -> crate::wire::pb::spire::api::types::Logger {
    crate::wire::pb::spire::api::types::Logger { current_level: log_level_to_proto(current), launch_level: log_level_to_proto(launch) }
}
