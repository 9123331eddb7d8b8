//! Conversions between SPIRE's proto types and cairn's domain types, with SPIRE's validation.

use super::status::ApiError;
use crate::datastore::{AttestedNode, Entry};
use crate::spiffe::TrustDomain;
use crate::spiffe::names::validate_dns_name;
use crate::wire::convert::{id_from_proto, id_to_proto, selector_from_proto};
use crate::wire::pb::spire::api::types as pt;

/// Longest hint SPIRE accepts on an entry.
pub const MAX_HINT_LEN: usize = 1024;

fn valid_entry_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Validates and converts an entry (the id is generated when empty).
///
/// # Errors
/// `InvalidArgument` naming the field.
pub fn entry_from_proto(e: &pt::Entry, td: &TrustDomain) -> Result<Entry, ApiError> {
    let bad = |m: String| ApiError::InvalidArgument(format!("failed to convert entry: {m}"));
    let spiffe_id = id_from_proto(e.spiffe_id.as_ref(), "spiffe ID").map_err(|e| bad(e.to_string()))?;
    let parent_id = id_from_proto(e.parent_id.as_ref(), "parent ID").map_err(|e| bad(e.to_string()))?;
    if !spiffe_id.is_member_of(td) {
        return Err(bad(format!("invalid spiffe ID: {spiffe_id} is not a member of trust domain {td}")));
    }
    if spiffe_id.is_trust_domain_id() || spiffe_id.is_reserved() {
        return Err(bad(format!("invalid spiffe ID: {spiffe_id}: paths under /spire and the bare trust domain are reserved")));
    }
    if !parent_id.is_member_of(td) || parent_id.is_trust_domain_id() {
        return Err(bad(format!("invalid parent ID: {parent_id} must be a member of trust domain {td} with a path")));
    }
    if e.selectors.is_empty() {
        return Err(bad("selector list is empty".into()));
    }
    let selectors = e.selectors.iter().map(selector_from_proto).collect::<Result<Vec<_>, _>>().map_err(|e| bad(e.to_string()))?;
    if e.x509_svid_ttl < 0 || e.jwt_svid_ttl < 0 {
        return Err(bad("TTLs must not be negative".into()));
    }
    if e.hint.len() > MAX_HINT_LEN {
        return Err(bad(format!("hint is longer than {MAX_HINT_LEN} bytes")));
    }
    for name in &e.dns_names {
        validate_dns_name(name).map_err(|m| bad(format!("invalid DNS name {name:?}: {m}")))?;
    }
    let federates_with = e
        .federates_with
        .iter()
        .map(|t| TrustDomain::new(t).map_err(|err| bad(format!("invalid federated trust domain {t:?}: {err}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let id = if e.id.is_empty() {
        crate::datastore::new_entry_id()
    } else if valid_entry_id(&e.id) {
        e.id.clone()
    } else {
        return Err(bad(format!("invalid entry ID {:?}: at most 255 characters of [A-Za-z0-9._-]", e.id)));
    };
    Ok(Entry {
        id,
        spiffe_id,
        parent_id,
        selectors,
        x509_svid_ttl: e.x509_svid_ttl,
        jwt_svid_ttl: e.jwt_svid_ttl,
        federates_with,
        admin: e.admin,
        downstream: e.downstream,
        dns_names: e.dns_names.clone(),
        expires_at: e.expires_at,
        hint: e.hint.clone(),
        store_svid: e.store_svid,
        disable_x509_svid_prefetch: e.additional_attributes.is_some_and(|a| a.disable_x509_svid_prefetch),
        jwt_svid_include_jti: e.additional_attributes.is_some_and(|a| a.jwt_svid_include_jti),
        revision_number: e.revision_number,
        created_at: e.created_at,
    })
}

/// A domain entry as the proto entry.
#[must_use]
pub fn entry_to_proto(e: &Entry) -> pt::Entry {
    pt::Entry {
        id: e.id.clone(),
        spiffe_id: Some(id_to_proto(&e.spiffe_id)),
        parent_id: Some(id_to_proto(&e.parent_id)),
        selectors: e.selectors.iter().map(|s| pt::Selector { r#type: s.kind.clone(), value: s.value.clone() }).collect(),
        x509_svid_ttl: e.x509_svid_ttl,
        federates_with: e.federates_with.iter().map(|t| t.as_str().to_owned()).collect(),
        admin: e.admin,
        downstream: e.downstream,
        expires_at: e.expires_at,
        dns_names: e.dns_names.clone(),
        revision_number: e.revision_number,
        store_svid: e.store_svid,
        jwt_svid_ttl: e.jwt_svid_ttl,
        hint: e.hint.clone(),
        created_at: e.created_at,
        // Present when either attribute is on (entries without them print as before).
        additional_attributes: (e.disable_x509_svid_prefetch || e.jwt_svid_include_jti).then_some(pt::entry::AdditionalAttributes {
            disable_x509_svid_prefetch: e.disable_x509_svid_prefetch,
            jwt_svid_include_jti: e.jwt_svid_include_jti,
        }),
    }
}

/// An attested node as the proto agent.
#[must_use]
pub fn agent_to_proto(n: &AttestedNode) -> pt::Agent {
    pt::Agent {
        id: Some(id_to_proto(&n.spiffe_id)),
        attestation_type: n.attestation_type.clone(),
        x509svid_serial_number: n.cert_serial_number.clone(),
        x509svid_expires_at: n.cert_not_after,
        selectors: n.selectors.iter().map(|s| pt::Selector { r#type: s.kind.clone(), value: s.value.clone() }).collect(),
        banned: n.cert_serial_number.is_empty(),
        can_reattest: n.can_reattest,
        agent_version: n.agent_version.clone(),
    }
}
