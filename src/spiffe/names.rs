//! Name rules SPIRE applies to what it issues: DNS SANs (`x509util.ValidateLabel`,
//! `CheckForWildcardOverlap`) and workload IDs (`VerifyTrustDomainWorkloadID`). Pure checks;
//! callers prefix the messages with their context.

use super::{SpiffeId, TrustDomain};

/// Why a DNS name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsNameError {
    /// Empty, or longer than 253 bytes.
    #[error("length must be 1-253 bytes, is {0}")]
    Length(usize),
    /// A `*` anywhere but as the whole first label of a longer name.
    #[error("a wildcard must be the whole first label of a longer name (\"*.example.org\")")]
    Wildcard,
    /// An empty label or one over 63 bytes.
    #[error("label {0:?} is empty or longer than 63 bytes")]
    LabelLength(String),
    /// A label with characters outside letters, digits and inner hyphens.
    #[error("label {0:?}: labels are ASCII letters, digits and inner hyphens")]
    LabelCharacters(String),
    /// A name a wildcard in the same list already covers.
    #[error("name {0:?} overlaps with an existing wildcard name in the list")]
    WildcardOverlap(String),
}

/// Why an ID is not a workload ID of a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadIdError {
    /// In another trust domain.
    #[error("{id:?} is not a member of trust domain {trust_domain:?}")]
    NotMember {
        /// The ID.
        id: String,
        /// The trust domain.
        trust_domain: String,
    },
    /// The trust domain's own ID.
    #[error("{id:?} is not a workload in trust domain {trust_domain:?}; path is empty")]
    NoPath {
        /// The ID.
        id: String,
        /// The trust domain.
        trust_domain: String,
    },
    /// Under `/spire`, which names servers and agents.
    #[error("{id:?} is not a workload in trust domain {trust_domain:?}; path is in the reserved namespace")]
    Reserved {
        /// The ID.
        id: String,
        /// The trust domain.
        trust_domain: String,
    },
}

/// DNS SAN rules for entries and minted SVIDs (SPIRE's `x509util.ValidateLabel`): ASCII LDH
/// labels of 1-63 bytes, at most 253 bytes in all, no trailing dot, and a wildcard only as the
/// whole first label of a longer name (`*.example.org`; a bare `*` would match any host).
///
/// # Errors
/// What is wrong with `name`, for the caller to prefix with its context.
pub fn validate_dns_name(name: &str) -> Result<(), DnsNameError> {
    if name.is_empty() || name.len() > 253 {
        return Err(DnsNameError::Length(name.len()));
    }
    let rest = match name.strip_prefix("*.") {
        Some(rest) => rest,
        None if name.contains('*') => return Err(DnsNameError::Wildcard),
        None => name,
    };
    for label in rest.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(DnsNameError::LabelLength(label.to_owned()));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || label.starts_with('-') || label.ends_with('-') {
            return Err(DnsNameError::LabelCharacters(label.to_owned()));
        }
    }
    Ok(())
}

/// SPIRE's `CheckForWildcardOverlap` (MintX509SVID): `*.example.org` beside `a.example.org`
/// is refused, as the wildcard already covers the other name.
///
/// # Errors
/// The first name a wildcard in `names` covers.
pub fn check_wildcard_overlap(names: &[String]) -> Result<(), DnsNameError> {
    for name in names.iter().filter(|n| !n.starts_with('*')) {
        let covering = match name.split_once('.') {
            Some((_, parent)) => format!("*.{parent}"),
            None => "*".to_owned(),
        };
        if names.contains(&covering) {
            return Err(DnsNameError::WildcardOverlap(name.clone()));
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
pub fn verify_trust_domain_workload_id(td: &TrustDomain, id: &SpiffeId) -> Result<(), WorkloadIdError> {
    let (q_id, q_td) = (id.as_str().to_owned(), td.as_str().to_owned());
    if !id.is_member_of(td) {
        return Err(WorkloadIdError::NotMember { id: q_id, trust_domain: q_td });
    }
    if id.is_trust_domain_id() {
        return Err(WorkloadIdError::NoPath { id: q_id, trust_domain: q_td });
    }
    if id.is_reserved() {
        return Err(WorkloadIdError::Reserved { id: q_id, trust_domain: q_td });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
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
        assert!(err.to_string().contains("\"a.example.org\""), "{err}");
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
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }
}
