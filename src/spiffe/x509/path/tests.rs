#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "test code: a panic is a failed test")]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use x509_parser::prelude::FromDer as _;

use super::*;
use crate::spiffe::x509::signature::verify_signed_by;

/// A subject name and key; certificates for it are made by [`Ca::signed_by`].
struct Ca {
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Self { params, key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap() }
    }

    fn self_signed(&self) -> Vec<u8> {
        self.params.self_signed(&self.key).unwrap().der().to_vec()
    }

    /// This CA's name and key, vouched for by `issuer`.
    fn signed_by(&self, issuer: &Ca) -> Vec<u8> {
        self.params.signed_by(&self.key, &Issuer::from_params(&issuer.params, &issuer.key)).unwrap().der().to_vec()
    }
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

fn parse_all(ders: &[Vec<u8>]) -> Vec<X509Certificate<'_>> {
    ders.iter().map(|der| parse(der)).collect()
}

/// Signatures only, a budget of checks, and optionally every root refused.
struct SignatureRules {
    checks: usize,
    budget: usize,
    refuse_roots: bool,
}

impl SignatureRules {
    fn new() -> Self {
        Self { checks: 0, budget: usize::MAX, refuse_roots: false }
    }
}

impl PathRules<X509Certificate<'_>> for SignatureRules {
    type Error = String;

    fn charge(&mut self) -> Result<(), String> {
        self.checks += 1;
        if self.checks > self.budget { Err("out of checks".into()) } else { Ok(()) }
    }

    fn check(
        &self,
        child: &X509Certificate<'_>,
        candidate: Link<'_, X509Certificate<'_>>,
        _path: &[Link<'_, X509Certificate<'_>>],
    ) -> Result<bool, String> {
        if verify_signed_by(child, candidate.node).is_err() {
            return Ok(false);
        }
        if self.refuse_roots && matches!(candidate.origin, Origin::Root(_)) {
            return Err(format!("refused {:?}", candidate.origin));
        }
        Ok(true)
    }

    fn unknown_authority(&self) -> String {
        "unknown authority".into()
    }
}

fn origins(paths: &[Vec<Link<'_, X509Certificate<'_>>>]) -> Vec<Vec<Origin>> {
    paths.iter().map(|path| path.iter().map(|link| link.origin).collect()).collect()
}

/// A root re-keyed under a new name is trusted alongside the old one, which
/// has cross-signed it: a leaf of the new root has a direct path and one
/// through the cross-signed copy.
#[test]
fn cross_signed_root_gives_two_paths() {
    let (new_root, old_root) = (Ca::new("new root"), Ca::new("old root"));
    let leaf_der = Ca::new("leaf").signed_by(&new_root);
    let cross = [new_root.signed_by(&old_root)];
    let roots = [new_root.self_signed(), old_root.self_signed()];
    let (leaf, cross, roots) = (parse(&leaf_der), parse_all(&cross), parse_all(&roots));

    let first = find_paths(&leaf, &cross, &roots, &mut SignatureRules::new(), Mode::FirstPath).unwrap();
    // Roots are tried before intermediates.
    assert_eq!(origins(&first), [vec![Origin::Leaf, Origin::Root(0)]]);

    let mut rules = SignatureRules::new();
    let all = find_paths(&leaf, &cross, &roots, &mut rules, Mode::AllPaths).unwrap();
    assert_eq!(origins(&all), [vec![Origin::Leaf, Origin::Root(0)], vec![Origin::Leaf, Origin::Intermediate(0), Origin::Root(1)]]);
    assert_eq!(rules.checks, 3);
    // The links lend out the caller's own certificates.
    assert!(std::ptr::eq(all[1][1].node, &cross[0]));
    assert!(std::ptr::eq(all[1][2].node, &roots[1]));

    // A budget ends the search but keeps what was found.
    let mut short = SignatureRules { budget: 1, ..SignatureRules::new() };
    let found = find_paths(&leaf, &cross, &roots, &mut short, Mode::AllPaths).unwrap();
    assert_eq!(origins(&found), [vec![Origin::Leaf, Origin::Root(0)]]);
    let mut none = SignatureRules { budget: 0, ..SignatureRules::new() };
    assert_eq!(find_paths(&leaf, &cross, &roots, &mut none, Mode::AllPaths).unwrap_err(), "out of checks");

    // Without a path, the first refusal is reported rather than "unknown authority".
    let mut picky = SignatureRules { refuse_roots: true, ..SignatureRules::new() };
    assert_eq!(find_paths(&leaf, &cross, &roots, &mut picky, Mode::AllPaths).unwrap_err(), "refused Root(0)");
    assert_eq!(find_paths(&leaf, &[], &[], &mut SignatureRules::new(), Mode::AllPaths).unwrap_err(), "unknown authority");
}

/// Two CAs that sign each other: the search goes round once and stops,
/// even though the rules prune nothing.
#[test]
fn loop_of_cas_terminates() {
    let (a, b, root) = (Ca::new("a"), Ca::new("b"), Ca::new("root"));
    let leaf_der = Ca::new("leaf").signed_by(&a);
    let pool = [a.signed_by(&b), b.signed_by(&a), b.signed_by(&root)];
    let roots = [root.self_signed()];
    let (leaf, pool, roots) = (parse(&leaf_der), parse_all(&pool), parse_all(&roots));

    // Without B's certificate from the root: a -> b -> a is cut, nothing found.
    let mut rules = SignatureRules::new();
    let looped = &pool[..2];
    assert_eq!(find_paths(&leaf, looped, &roots, &mut rules, Mode::AllPaths).unwrap_err(), "unknown authority");
    // leaf <- a (by b), a (by b) <- b (by a); b (by a) <- a (by b) is already on the path.
    assert_eq!(rules.checks, 2);

    let mut rules = SignatureRules::new();
    let found = find_paths(&leaf, &pool, &roots, &mut rules, Mode::AllPaths).unwrap();
    assert_eq!(origins(&found), [vec![Origin::Leaf, Origin::Intermediate(0), Origin::Intermediate(2), Origin::Root(0)]]);
    assert_eq!(rules.checks, 4);
}
