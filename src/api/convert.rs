//! Conversions between SPIRE's proto types and cairn's domain types, with SPIRE's validation.

use crate::wire::pb::spire::api::types as pt;
use super::status::ApiError;
use crate::datastore::{AttestedNode, Entry};
use crate::wire::convert::{id_from_proto, id_to_proto, selector_from_proto};
use crate::spiffe::{SpiffeId, TrustDomain};

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
        uuid::Uuid::new_v4().to_string()
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
        revision_number: e.revision_number,
        created_at: e.created_at,
    })
}

/// DNS SAN rules for entries and minted SVIDs (SPIRE's `x509util.ValidateLabel`): ASCII LDH
/// labels of 1-63 bytes, at most 253 bytes in all, no trailing dot, and a wildcard only as the
/// whole first label of a longer name (`*.example.org`; a bare `*` would match any host).
///
/// # Errors
/// What is wrong with `name`, for the caller to prefix with its context.
pub fn validate_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("length must be 1-253 bytes, is {}", name.len()));
    }
    let rest = match name.strip_prefix("*.") {
        Some(rest) => rest,
        None if name.contains('*') => {
            return Err("a wildcard must be the whole first label of a longer name (\"*.example.org\")".into());
        }
        None => name,
    };
    for label in rest.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("label {label:?} is empty or longer than 63 bytes"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?}: labels are ASCII letters, digits and inner hyphens"));
        }
    }
    Ok(())
}

/// SPIRE's `CheckForWildcardOverlap` (MintX509SVID): `*.example.org` beside `a.example.org`
/// is refused, as the wildcard already covers the other name.
///
/// # Errors
/// The first name a wildcard in `names` covers.
pub fn check_wildcard_overlap(names: &[String]) -> Result<(), String> {
    for name in names.iter().filter(|n| !n.starts_with('*')) {
        let covering = match name.split_once('.') {
            Some((_, parent)) => format!("*.{parent}"),
            None => "*".to_owned(),
        };
        if names.contains(&covering) {
            return Err(format!("name {name:?} overlaps with an existing wildcard name in the list"));
        }
    }
    Ok(())
}

/// SPIRE's `VerifyTrustDomainWorkloadID`: `id` is in `td`, has a path, and the path is not
/// under `/spire`, which names SPIRE's own servers and agents (an SVID for
/// `/spire/server` would let its holder pose as the server to every agent).
///
/// # Errors
/// SPIRE's message for the first rule broken.
pub fn verify_trust_domain_workload_id(td: &TrustDomain, id: &SpiffeId) -> Result<(), String> {
    let (q_id, q_td) = (id.as_str(), td.as_str());
    if !id.is_member_of(td) {
        return Err(format!("{q_id:?} is not a member of trust domain {q_td:?}"));
    }
    if id.is_trust_domain_id() {
        return Err(format!("{q_id:?} is not a workload in trust domain {q_td:?}; path is empty"));
    }
    if id.is_reserved() {
        return Err(format!("{q_id:?} is not a workload in trust domain {q_td:?}; path is in the reserved namespace"));
    }
    Ok(())
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
        additional_attributes: None,
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
        agent_version: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_follow_spires_validate_label() {
        for ok in ["com", "example.org", "*.example.org", "a-b.example.org", &format!("{}.org", "a".repeat(63))] {
            assert_eq!(validate_dns_name(ok), Ok(()), "{ok}");
        }
        let long_label = format!("{}.org", "a".repeat(64));
        let too_long = format!("{}.{}.{}.{}.org", "a".repeat(62), "b".repeat(62), "c".repeat(62), "d".repeat(62));
        for bad in [
            "",
            "*",
            "*.",
            "*.*.org",
            "a.*.org",
            "a*.org",
            "example.org.",
            ".org",
            "-a.org",
            "a-.org",
            "a\0b.org",
            "é.org",
            &long_label,
            &too_long,
        ] {
            assert!(validate_dns_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn wildcards_may_not_cover_other_names() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_wildcard_overlap(&names(&["example.org", "*.example.org"])).is_ok());
        assert!(check_wildcard_overlap(&names(&["example.org", "*.example.org", "a.b.example.org"])).is_ok());
        let err = check_wildcard_overlap(&names(&["*.example.org", "a.example.org"])).unwrap_err();
        assert!(err.contains("\"a.example.org\""), "{err}");
    }

    #[test]
    fn workload_ids_are_members_with_a_path_outside_spire() {
        let td = TrustDomain::new("example.org").unwrap();
        let id = |s: &str| SpiffeId::new(s).unwrap();
        assert_eq!(verify_trust_domain_workload_id(&td, &id("spiffe://example.org/w")), Ok(()));
        assert_eq!(verify_trust_domain_workload_id(&td, &id("spiffe://example.org/spiree")), Ok(()));
        for (bad, why) in [
            ("spiffe://example.org/spire/server", "reserved namespace"),
            ("spiffe://example.org/spire/agent/join_token/x", "reserved namespace"),
            ("spiffe://example.org/spire", "reserved namespace"),
            ("spiffe://example.org", "path is empty"),
            ("spiffe://other.org/w", "is not a member of trust domain \"example.org\""),
        ] {
            let err = verify_trust_domain_workload_id(&td, &id(bad)).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
