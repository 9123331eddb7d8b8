//! The certification path search behind every chain cairn verifies: SVID
//! chains ([`super::verify_chain`]) and x509pop node certificates.
//!
//! The search walks depth-first up from the leaf. At each step the possible
//! issuers of the current certificate are the roots, then the presented
//! intermediates, in the order given, keeping those whose subject is byte for
//! byte the current certificate's issuer. A root that is accepted closes a
//! path; an accepted intermediate is pushed and the search continues above it.
//!
//! What differs between callers is left to a [`PathRules`] value: whether a
//! candidate is its child's issuer at all (signature), whether it may issue
//! (validity, CA flag, path length, ...) and how a refusal is worded, extra
//! pruning, and a budget on the checks. The search keeps the first refusal
//! it is told about: "root certificate 0 has expired" helps an operator more
//! than "unknown authority".
//!
//! A certificate of the pools is never put on a path twice, whatever the
//! rules say, so the search ends even when two CAs sign each other. The
//! number of paths can still grow quickly with the number of intermediates;
//! callers bound their pools, and rules may cap the checks.

use x509_parser::certificate::X509Certificate;

/// Where a certificate on a path comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The certificate the path starts from.
    Leaf,
    /// `intermediates[i]`.
    Intermediate(usize),
    /// `roots[i]`.
    Root(usize),
}

/// One certificate of a path, leaf first.
#[derive(Debug)]
pub(crate) struct Link<'p, N> {
    /// Which pool it was taken from, and where.
    pub(crate) origin: Origin,
    /// The caller's node holding the certificate.
    pub(crate) node: &'p N,
}

/// Whether to stop at the first path found or collect them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Stop as soon as one path reaches a root.
    FirstPath,
    /// Collect every path, in the order found.
    AllPaths,
}

/// Anything the search can read a certificate from: a bare certificate, or a
/// caller's struct that keeps the DER next to it.
pub(crate) trait PathNode {
    /// The parsed certificate.
    fn certificate(&self) -> &X509Certificate<'_>;
}

/// What one caller of [`find_paths`] accepts as an issuer, and how it
/// words a refusal.
pub(crate) trait PathRules<N> {
    /// A refusal, as the caller reports it.
    type Error;

    /// Whether to pass over `candidate` without checking it, given the path
    /// so far (leaf first, the candidate's would-be child last). The search
    /// already passes over certificates on the path.
    fn skip(&self, candidate: &N, path: &[Link<'_, N>]) -> bool {
        let _ = (candidate, path);
        false
    }

    /// Called before each [`check`](Self::check); an error is noted and ends
    /// the whole search, keeping the paths found so far.
    ///
    /// # Errors
    ///
    /// When the caller's budget of checks is spent.
    fn charge(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Whether `candidate` issued `child` and may have: `Ok(true)` to put it
    /// on the path, `Ok(false)` when it is not `child`'s issuer at all (the
    /// search moves on silently).
    ///
    /// # Errors
    ///
    /// Why `candidate` cannot be used here; the search notes it and moves on.
    fn check(&self, child: &N, candidate: Link<'_, N>, path: &[Link<'_, N>]) -> Result<bool, Self::Error>;

    /// The error to report when no path was found and nothing was refused.
    fn unknown_authority(&self) -> Self::Error;
}

/// Every path (or the first, by `mode`) from `leaf` through `intermediates`
/// to one of `roots`, each leaf first and ending with a root.
///
/// # Errors
///
/// When no path is found: the first refusal noted, else
/// [`PathRules::unknown_authority`].
pub(crate) fn find_paths<'p, N: PathNode, R: PathRules<N>>(
    leaf: &'p N,
    intermediates: &'p [N],
    roots: &'p [N],
    rules: &mut R,
    mode: Mode,
) -> Result<Vec<Vec<Link<'p, N>>>, R::Error> {
    let mut search = Search { intermediates, roots, rules, mode, paths: Vec::new(), first_error: None };
    search.extend(&mut vec![Link { origin: Origin::Leaf, node: leaf }]);
    if search.paths.is_empty() {
        return Err(search.first_error.unwrap_or_else(|| search.rules.unknown_authority()));
    }
    Ok(search.paths)
}

/// The state of one [`find_paths`] call.
struct Search<'p, 'r, N, R: PathRules<N>> {
    intermediates: &'p [N],
    roots: &'p [N],
    rules: &'r mut R,
    mode: Mode,
    paths: Vec<Vec<Link<'p, N>>>,
    first_error: Option<R::Error>,
}

/// Whether the search goes on after a step.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

// === impl Link ===

// Written out: derived impls would require `N: Clone`, but a link only
// copies a reference.
impl<N> Clone for Link<'_, N> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<N> Copy for Link<'_, N> {}

// === impl PathNode ===

impl PathNode for X509Certificate<'_> {
    fn certificate(&self) -> &X509Certificate<'_> {
        self
    }
}

// === impl Search ===

impl<'p, N: PathNode, R: PathRules<N>> Search<'p, '_, N, R> {
    /// Tries every issuer of the last certificate of `path`, recursing above
    /// accepted intermediates; `path` is as given when this returns.
    fn extend(&mut self, path: &mut Vec<Link<'p, N>>) -> Flow {
        let Some(&child) = path.last() else {
            return Flow::Continue;
        };
        let issuer = child.node.certificate().issuer().as_raw();
        let roots = self.roots.iter().enumerate().map(|(i, node)| Link { origin: Origin::Root(i), node });
        let intermediates = self.intermediates.iter().enumerate().map(|(i, node)| Link { origin: Origin::Intermediate(i), node });
        for candidate in roots.chain(intermediates) {
            if candidate.node.certificate().subject().as_raw() != issuer
                || path.iter().any(|link| link.origin == candidate.origin)
                || self.rules.skip(candidate.node, path)
            {
                continue;
            }
            if let Err(e) = self.rules.charge() {
                self.note(e);
                return Flow::Stop;
            }
            match self.rules.check(child.node, candidate, path) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    self.note(e);
                    continue;
                }
            }
            path.push(candidate);
            let flow = if let Origin::Root(_) = candidate.origin {
                self.paths.push(path.clone());
                if self.mode == Mode::FirstPath { Flow::Stop } else { Flow::Continue }
            } else {
                self.extend(path)
            };
            path.pop();
            if flow == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    fn note(&mut self, error: R::Error) {
        self.first_error.get_or_insert(error);
    }
}

#[cfg(test)]
mod tests;
