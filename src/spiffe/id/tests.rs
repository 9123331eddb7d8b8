#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "test code: a panic is a failed test")]

use super::*;

/// One row of the checklist's ID vector table: number, input, expected result.
type Vector = (u32, &'static str, Result<(), SpiffeIdError>);

fn long_valid_id() -> String {
    // Vector 12: exactly 2048 bytes.
    format!("spiffe://{}/{}", "a".repeat(250), "b".repeat(1788))
}

const VECTORS: &[Vector] = &[
    (1, "spiffe://trustdomain", Ok(())),
    (2, "spiffe://trustdomain/path", Ok(())),
    (3, "spiffe://example.org/foo/bar", Ok(())),
    (4, "spiffe://staging.example.com/payments/mysql", Ok(())),
    (5, "spiffe://k8s-west.example.com/ns/staging/sa/default", Ok(())),
    (6, "spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453", Ok(())),
    (7, "spiffe://trust_domain-1.example/Path_With-Upper.Case", Ok(())),
    (8, "spiffe://192.168.1.1/workload", Ok(())),
    (9, "spiffe://trustdomain/.path", Ok(())),
    (10, "spiffe://trustdomain/..path", Ok(())),
    (11, "spiffe://trustdomain/...", Ok(())),
    // 12 is built at run time, see `long_valid_id`.
    (13, "", Err(SpiffeIdError::Empty)),
    (14, "Spiffe://trustdomain", Err(SpiffeIdError::WrongScheme)),
    (15, "https://trustdomain/path", Err(SpiffeIdError::WrongScheme)),
    (16, "spiffe:/trustdomain/path", Err(SpiffeIdError::WrongScheme)),
    (17, "spiffe://", Err(SpiffeIdError::MissingTrustDomain)),
    (18, "spiffe:///path", Err(SpiffeIdError::MissingTrustDomain)),
    (19, "spiffe://trustdomain/", Err(SpiffeIdError::TrailingSlash)),
    (20, "spiffe://trustdomain/path/", Err(SpiffeIdError::TrailingSlash)),
    (21, "spiffe://trustdomain//path", Err(SpiffeIdError::EmptySegment)),
    (22, "spiffe://trustdomain//", Err(SpiffeIdError::EmptySegment)),
    (23, "spiffe://trustdomain/.", Err(SpiffeIdError::DotSegment)),
    (24, "spiffe://trustdomain/./path", Err(SpiffeIdError::DotSegment)),
    (25, "spiffe://trustdomain/path/../other", Err(SpiffeIdError::DotSegment)),
    (26, "spiffe://trustdomain/..", Err(SpiffeIdError::DotSegment)),
    (27, "spiffe://%62%61%64/path", Err(SpiffeIdError::BadTrustDomainChar { character: '%' })),
    (28, "spiffe://trustdomain/%62%61%64", Err(SpiffeIdError::BadPathSegmentChar { character: '%' })),
    (29, "spiffe://%F0%9F%A4%AF/path", Err(SpiffeIdError::BadTrustDomainChar { character: '%' })),
    (30, "spiffe://TrustDomain/path", Err(SpiffeIdError::BadTrustDomainChar { character: 'T' })),
    (31, "spiffe://trustdomain:8080/path", Err(SpiffeIdError::BadTrustDomainChar { character: ':' })),
    (32, "spiffe://user@trustdomain/path", Err(SpiffeIdError::BadTrustDomainChar { character: '@' })),
    (33, "spiffe://trustdomain/path?query=1", Err(SpiffeIdError::BadPathSegmentChar { character: '?' })),
    (34, "spiffe://trustdomain/path#fragment", Err(SpiffeIdError::BadPathSegmentChar { character: '#' })),
    (35, "spiffe://[::1]/path", Err(SpiffeIdError::BadTrustDomainChar { character: '[' })),
    (36, "spiffe://trust$domain", Err(SpiffeIdError::BadTrustDomainChar { character: '$' })),
    (37, "spiffe://trustdomain/path$", Err(SpiffeIdError::BadPathSegmentChar { character: '$' })),
    (38, "spiffe://trustdomain/pa th", Err(SpiffeIdError::BadPathSegmentChar { character: ' ' })),
    (39, "spiffe://trustdomain/páth", Err(SpiffeIdError::BadPathSegmentChar { character: 'á' })),
    (40, "spiffe://trustdomain/path~", Err(SpiffeIdError::BadPathSegmentChar { character: '~' })),
];

#[test]
fn checklist_vectors() {
    assert_eq!(VECTORS.len(), 39, "39 static rows plus vector 12");
    for (n, input, expected) in VECTORS {
        let got = SpiffeId::new(input).map(|_| ());
        assert_eq!(&got, expected, "vector {n}: {input:?}");
        assert_eq!(input.parse::<SpiffeId>().map(|_| ()), *expected, "vector {n} via FromStr");
    }
    let long = long_valid_id();
    assert_eq!(long.len(), MAX_ID_LEN);
    let id = SpiffeId::new(&long).unwrap();
    assert_eq!(id.trust_domain().as_str().len(), 250);
}

#[test]
fn valid_vectors_round_trip() {
    let mut inputs: Vec<String> = VECTORS.iter().filter(|(_, _, r)| r.is_ok()).map(|(_, s, _)| (*s).to_owned()).collect();
    inputs.push(long_valid_id());
    for s in inputs {
        let id = SpiffeId::new(&s).unwrap();
        assert_eq!(id.to_string(), s);
        assert_eq!(id.as_str(), s);
        let rebuilt = SpiffeId::from_path(id.trust_domain(), id.path()).unwrap();
        assert_eq!(rebuilt, id);
        assert!(id.is_member_of(id.trust_domain()));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
    }
}

#[test]
fn too_long_id_rejected() {
    let s = format!("spiffe://{}/{}", "a".repeat(250), "b".repeat(1789));
    assert_eq!(s.len(), 2049);
    assert_eq!(SpiffeId::new(&s), Err(SpiffeIdError::TooLong { len: 2049, max: MAX_ID_LEN }));
    let td = TrustDomain::new("td").unwrap();
    let path = format!("/{}", "x".repeat(MAX_ID_LEN));
    assert!(matches!(SpiffeId::from_path(&td, &path), Err(SpiffeIdError::TooLong { .. })));
}

#[test]
fn trust_domain_length_limit() {
    let ok = "a".repeat(255);
    assert_eq!(TrustDomain::new(&ok).unwrap().as_str(), ok);
    let long = "a".repeat(256);
    let err = SpiffeIdError::TrustDomainTooLong { len: 256, max: MAX_TRUST_DOMAIN_LEN };
    assert_eq!(TrustDomain::new(&long), Err(err.clone()));
    assert_eq!(SpiffeId::new(&format!("spiffe://{long}/x")), Err(err));
}

#[test]
fn trust_domain_parsing() {
    let cases: &[(&str, Result<&str, SpiffeIdError>)] = &[
        ("example.org", Ok("example.org")),
        ("spiffe://example.org", Ok("example.org")),
        ("spiffe://example.org/some/path", Ok("example.org")),
        ("192.168.1.1", Ok("192.168.1.1")),
        ("", Err(SpiffeIdError::EmptyTrustDomain)),
        ("Example.org", Err(SpiffeIdError::BadTrustDomainChar { character: 'E' })),
        ("example.org/", Err(SpiffeIdError::BadTrustDomainChar { character: '/' })),
        ("exa mple", Err(SpiffeIdError::BadTrustDomainChar { character: ' ' })),
        ("spiffe://", Err(SpiffeIdError::MissingTrustDomain)),
        ("spiffe://example.org/", Err(SpiffeIdError::TrailingSlash)),
        ("https://example.org", Err(SpiffeIdError::WrongScheme)),
        ("spiffe://EXAMPLE.org", Err(SpiffeIdError::BadTrustDomainChar { character: 'E' })),
    ];
    for (input, expected) in cases {
        let got = TrustDomain::new(input);
        assert_eq!(got.as_ref().map(TrustDomain::as_str), expected.as_ref().map(|s| *s), "{input:?}");
        assert_eq!(input.parse::<TrustDomain>(), got);
        assert_eq!(TrustDomain::try_from(*input), got);
    }
}

#[test]
fn trust_domain_accessors_and_serde() {
    let td = TrustDomain::new("example.org").unwrap();
    assert_eq!(td.to_string(), "example.org");
    assert_eq!(td.id_string(), "spiffe://example.org");
    let id = td.spiffe_id();
    assert_eq!(id.as_str(), "spiffe://example.org");
    assert!(id.is_trust_domain_id());
    assert_eq!(id.path(), "");
    assert_eq!(id, SpiffeId::new("spiffe://example.org").unwrap());
    assert_eq!(serde_json::to_string(&td).unwrap(), "\"example.org\"");
    assert_eq!(serde_json::from_str::<TrustDomain>("\"example.org\"").unwrap(), td);
    assert!(serde_json::from_str::<TrustDomain>("\"Bad\"").is_err());
    assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/\"").is_err());
}

#[test]
fn id_accessors() {
    let id = SpiffeId::new("spiffe://example.org/ns/Prod/sa").unwrap();
    assert_eq!(id.trust_domain().as_str(), "example.org");
    assert_eq!(id.path(), "/ns/Prod/sa");
    assert!(!id.is_trust_domain_id());
    assert!(id.is_member_of(&TrustDomain::new("example.org").unwrap()));
    assert!(!id.is_member_of(&TrustDomain::new("example.com").unwrap()));
    // Paths are case-sensitive: no normalisation.
    assert_ne!(id, SpiffeId::new("spiffe://example.org/ns/prod/sa").unwrap());
    assert_eq!(format!("{id:?}"), "SpiffeId(\"spiffe://example.org/ns/Prod/sa\")");
}

#[test]
fn reserved_paths() {
    let cases = [
        ("spiffe://td/spire", true),
        ("spiffe://td/spire/agent/x509pop/abc", true),
        ("spiffe://td/spire/server", true),
        ("spiffe://td/spirex", false),
        ("spiffe://td/Spire", false),
        ("spiffe://td/ns/spire", false),
        ("spiffe://td", false),
    ];
    for (s, reserved) in cases {
        assert_eq!(SpiffeId::new(s).unwrap().is_reserved(), reserved, "{s}");
    }
}

#[test]
fn from_path_cases() {
    let td = TrustDomain::new("td").unwrap();
    let cases: &[(&str, Result<&str, SpiffeIdError>)] = &[
        ("", Ok("spiffe://td")),
        ("/a/b", Ok("spiffe://td/a/b")),
        ("a/b", Err(SpiffeIdError::MissingLeadingSlash)),
        ("/", Err(SpiffeIdError::TrailingSlash)),
        ("/a/", Err(SpiffeIdError::TrailingSlash)),
        ("//a", Err(SpiffeIdError::EmptySegment)),
        ("/a/./b", Err(SpiffeIdError::DotSegment)),
        ("/a?b", Err(SpiffeIdError::BadPathSegmentChar { character: '?' })),
    ];
    for (path, expected) in cases {
        let got = SpiffeId::from_path(&td, path);
        assert_eq!(got.as_ref().map(SpiffeId::as_str), expected.as_ref().map(|s| *s), "{path:?}");
    }
}

#[test]
fn from_segments_cases() {
    let td = TrustDomain::new("td").unwrap();
    let cases: &[(&[&str], Result<&str, SpiffeIdError>)] = &[
        (&[], Ok("spiffe://td")),
        (&["ns", "prod"], Ok("spiffe://td/ns/prod")),
        (&["..path", "..."], Ok("spiffe://td/..path/...")),
        (&["a/b"], Err(SpiffeIdError::BadPathSegmentChar { character: '/' })),
        (&["/a"], Err(SpiffeIdError::BadPathSegmentChar { character: '/' })),
        (&[""], Err(SpiffeIdError::EmptySegment)),
        (&["a", ""], Err(SpiffeIdError::EmptySegment)),
        (&["."], Err(SpiffeIdError::DotSegment)),
        (&[".."], Err(SpiffeIdError::DotSegment)),
        (&["a b"], Err(SpiffeIdError::BadPathSegmentChar { character: ' ' })),
        (&["%41"], Err(SpiffeIdError::BadPathSegmentChar { character: '%' })),
    ];
    for (segments, expected) in cases {
        let got = SpiffeId::from_segments(&td, segments);
        assert_eq!(got.as_ref().map(SpiffeId::as_str), expected.as_ref().map(|s| *s), "{segments:?}");
    }
}

#[test]
fn ordering_and_hash_follow_the_string() {
    use std::collections::BTreeSet;
    let set: BTreeSet<SpiffeId> =
        ["spiffe://b/x", "spiffe://a/y", "spiffe://a/x", "spiffe://a/x"].iter().map(|s| SpiffeId::new(s).unwrap()).collect();
    let got: Vec<&str> = set.iter().map(SpiffeId::as_str).collect();
    assert_eq!(got, ["spiffe://a/x", "spiffe://a/y", "spiffe://b/x"]);
}

#[test]
fn selectors() {
    type Case = (&'static str, Result<(&'static str, &'static str), SelectorError>);
    let cases: &[Case] = &[
        ("unix:uid:1000", Ok(("unix", "uid:1000"))),
        ("k8s:ns:default", Ok(("k8s", "ns:default"))),
        ("docker:label:a:b", Ok(("docker", "label:a:b"))),
        ("type:v", Ok(("type", "v"))),
        ("novalue", Err(SelectorError::MissingSeparator)),
        ("", Err(SelectorError::MissingSeparator)),
        (":value", Err(SelectorError::EmptyType)),
        ("type:", Err(SelectorError::EmptyValue)),
        (":", Err(SelectorError::EmptyType)),
    ];
    for (input, expected) in cases {
        let got = parse_selector(input);
        let got = got.as_ref().map(|(t, v)| (t.as_str(), v.as_str()));
        assert_eq!(got, expected.as_ref().map(|p| *p), "{input:?}");
    }
}

#[test]
fn error_messages_are_lowercase() {
    let errors = [
        SpiffeIdError::Empty.to_string(),
        SpiffeIdError::WrongScheme.to_string(),
        SpiffeIdError::TooLong { len: 1, max: 2 }.to_string(),
        SelectorError::MissingSeparator.to_string(),
    ];
    for e in errors {
        assert!(e.chars().next().is_some_and(char::is_lowercase), "{e}");
        assert!(!e.ends_with('.'), "{e}");
    }
}

#[test]
fn never_panics_on_mangled_input() {
    // Deterministic xorshift, so a failure reproduces.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"spiffe:/.-_%?#@[]aZ09 ~\xc3\xa1";
    for (_, seed, _) in VECTORS {
        for _ in 0..200 {
            let mut bytes = seed.as_bytes().to_vec();
            let pos = usize::try_from(next()).unwrap() % (bytes.len() + 1);
            let byte = alphabet[usize::try_from(next()).unwrap() % alphabet.len()];
            match next() % 3 {
                0 => bytes.insert(pos, byte),
                1 if pos < bytes.len() => bytes[pos] = byte,
                _ => bytes.truncate(pos),
            }
            let s = String::from_utf8_lossy(&bytes);
            if let Ok(id) = SpiffeId::new(&s) {
                assert_eq!(id.as_str(), s);
                assert_eq!(SpiffeId::from_path(id.trust_domain(), id.path()).unwrap(), id);
            }
            let _ = TrustDomain::new(&s);
            let _ = parse_selector(&s);
        }
    }
}
