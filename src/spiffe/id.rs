//! SPIFFE IDs, trust-domain names and SPIRE selectors.
//!
//! Parsing follows the SPIFFE ID standard strictly (checklist §1): lowercase
//! `spiffe` scheme, trust domain in `[a-z0-9._-]`, path segments in
//! `[a-zA-Z0-9._-]`, no empty, `.` or `..` segments, no trailing slash, no
//! percent-encoding, query, fragment, userinfo or port. Nothing is ever
//! normalised, so a parsed ID prints back byte-for-byte and equality is byte
//! equality.
//!
//! Length limits: a trust-domain name is at most [`MAX_TRUST_DOMAIN_LEN`]
//! bytes and a whole ID at most [`MAX_ID_LEN`] bytes. The standard only
//! obliges parsers to *accept* IDs up to 2048 bytes; we also *reject* longer
//! ones (go-spiffe does not), because every ID we parse may end up in a
//! certificate or a token we issue, and the standard says those should not
//! exceed the limit.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest trust-domain name we accept, in bytes.
///
/// [SPIFFE-ID §2.3](https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md):
/// the trust domain is a URI host, which is limited to 255 bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Largest SPIFFE ID we accept, in bytes, scheme and trust domain included.
///
/// [SPIFFE-ID §2.3](https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md):
/// implementations must support IDs up to 2048 bytes and should not
/// generate longer ones. We also reject longer ones (see the module docs).
pub const MAX_ID_LEN: usize = 2048;

const SCHEME_PREFIX: &str = "spiffe://";

/// Reserved path prefix: SPIRE gives agents and servers IDs under `/spire`.
const RESERVED_PATH: &str = "/spire";

/// Why a SPIFFE ID or trust-domain name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The input was the empty string.
    #[error("spiffe id is empty")]
    Empty,
    /// The input does not start with the exact lowercase `spiffe://`.
    #[error("scheme is missing or invalid")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// A trust-domain name was empty where a bare name was expected.
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// A character outside `[a-z0-9._-]` in the trust domain.
    #[error("trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores (found {character:?})")]
    BadTrustDomainChar {
        /// The first offending character.
        character: char,
    },
    /// A character outside `[a-zA-Z0-9._-]` in a path segment.
    #[error("path segment characters are limited to letters, numbers, dots, dashes, and underscores (found {character:?})")]
    BadPathSegmentChar {
        /// The first offending character.
        character: char,
    },
    /// A `//` inside the path, or an empty segment given to a builder.
    #[error("path cannot contain empty segments")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("path cannot contain dot segments")]
    DotSegment,
    /// The path ends with `/` (including the bare `spiffe://td/`).
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    /// A path given on its own did not start with `/`.
    #[error("path must have a leading slash")]
    MissingLeadingSlash,
    /// The whole ID is longer than [`MAX_ID_LEN`].
    #[error("spiffe id is {len} bytes, longer than the limit of {max}")]
    TooLong {
        /// Length of the rejected input in bytes.
        len: usize,
        /// The limit, [`MAX_ID_LEN`].
        max: usize,
    },
    /// The trust-domain name is longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("trust domain is {len} bytes, longer than the limit of {max}")]
    TrustDomainTooLong {
        /// Length of the rejected name in bytes.
        len: usize,
        /// The limit, [`MAX_TRUST_DOMAIN_LEN`].
        max: usize,
    },
}

/// Why a selector string was rejected by [`parse_selector`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// No `:` between type and value.
    #[error("selector must have the form type:value")]
    MissingSeparator,
    /// Nothing before the first `:`.
    #[error("selector type is empty")]
    EmptyType,
    /// Nothing after the first `:`.
    #[error("selector value is empty")]
    EmptyValue,
}

/// A validated trust-domain name such as `example.org`.
///
/// Always non-empty, at most [`MAX_TRUST_DOMAIN_LEN`] bytes, and made only of
/// `[a-z0-9._-]`. Displays as the bare name; serialises as the bare name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

/// A validated SPIFFE ID, `spiffe://<trust-domain>[<path>]`.
///
/// The canonical string is kept as given (parsing never normalises), so
/// comparison, hashing and ordering are those of the string.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    /// The full ID, `spiffe://` + trust domain + path.
    id: String,
    trust_domain: TrustDomain,
}

/// Splits a SPIRE selector in its text form `type:value` on the first `:`.
///
/// The value may itself contain colons (`k8s:ns:default` is type `k8s`,
/// value `ns:default`), which is why only the first one separates.
///
/// # Errors
///
/// [`SelectorError`] when there is no colon or either side is empty.
pub fn parse_selector(s: &str) -> Result<(String, String), SelectorError> {
    let (kind, value) = s.split_once(':').ok_or(SelectorError::MissingSeparator)?;
    if kind.is_empty() {
        return Err(SelectorError::EmptyType);
    }
    if value.is_empty() {
        return Err(SelectorError::EmptyValue);
    }
    Ok((kind.to_owned(), value.to_owned()))
}

fn is_trust_domain_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')
}

fn is_path_segment_char(c: char) -> bool {
    matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_')
}

fn validate_trust_domain_name(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if let Some(character) = name.chars().find(|c| !is_trust_domain_char(*c)) {
        return Err(SpiffeIdError::BadTrustDomainChar { character });
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: name.len(), max: MAX_TRUST_DOMAIN_LEN });
    }
    Ok(())
}

/// Checks one path segment (without slashes).
///
/// `last` says whether it is the final segment, so that an empty one can be
/// reported as the trailing slash it came from.
fn validate_segment(segment: &str, last: bool) -> Result<(), SpiffeIdError> {
    if let Some(character) = segment.chars().find(|c| !is_path_segment_char(*c)) {
        return Err(SpiffeIdError::BadPathSegmentChar { character });
    }
    match segment {
        "" if last => Err(SpiffeIdError::TrailingSlash),
        "" => Err(SpiffeIdError::EmptySegment),
        "." | ".." => Err(SpiffeIdError::DotSegment),
        _ => Ok(()),
    }
}

/// Checks a path: empty, or `/seg(/seg)*`.
fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let rest = path.strip_prefix('/').ok_or(SpiffeIdError::MissingLeadingSlash)?;
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        validate_segment(segment, segments.peek().is_none())?;
    }
    Ok(())
}

fn check_id_len(len: usize) -> Result<(), SpiffeIdError> {
    if len > MAX_ID_LEN {
        return Err(SpiffeIdError::TooLong { len, max: MAX_ID_LEN });
    }
    Ok(())
}

// === impl TrustDomain ===

impl TrustDomain {
    /// Parses a trust domain from a bare name (`example.org`) or from a SPIFFE
    /// ID (`spiffe://example.org[/path]`), keeping only its trust domain.
    ///
    /// The ID form is accepted because the Workload API keys bundle maps by
    /// the trust domain's ID (checklist §1 item 20). Anything containing
    /// `:/` is taken for a URI and must then be a valid SPIFFE ID.
    ///
    /// # Errors
    ///
    /// [`SpiffeIdError`] when the name or the ID is invalid.
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        if s.contains(":/") {
            return SpiffeId::new(s).map(|id| id.trust_domain);
        }
        validate_trust_domain_name(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The bare name, e.g. `example.org`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID as a string, `spiffe://<name>`.
    #[must_use]
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }

    /// The trust domain's own ID, `spiffe://<name>` with an empty path.
    #[must_use]
    pub fn spiffe_id(&self) -> SpiffeId {
        SpiffeId { id: self.id_string(), trust_domain: self.clone() }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TrustDomain").field(&self.0).finish()
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for TrustDomain {
    type Error = SpiffeIdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = SpiffeIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<TrustDomain> for String {
    fn from(td: TrustDomain) -> Self {
        td.0
    }
}

impl AsRef<str> for TrustDomain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// === impl SpiffeId ===

impl SpiffeId {
    /// Parses a SPIFFE ID strictly (checklist §1).
    ///
    /// # Errors
    ///
    /// [`SpiffeIdError`] naming the first rule the input breaks.
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        // Checked first so that oversized input costs nothing more to reject.
        check_id_len(s.len())?;
        let rest = s.strip_prefix(SCHEME_PREFIX).ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        // The character check comes before the emptiness check so that the
        // error names the real problem for `spiffe://:8080` and the like.
        if let Some(character) = td.chars().find(|c| !is_trust_domain_char(*c)) {
            return Err(SpiffeIdError::BadTrustDomainChar { character });
        }
        if td.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        validate_trust_domain_name(td)?;
        validate_path(path)?;
        Ok(Self { id: s.to_owned(), trust_domain: TrustDomain(td.to_owned()) })
    }

    /// Builds an ID from a trust domain and a path that is empty or starts
    /// with `/` (e.g. `/ns/prod/sa/web`).
    ///
    /// # Errors
    ///
    /// [`SpiffeIdError::MissingLeadingSlash`] for a non-empty path without
    /// the slash, the segment errors for a bad path, and
    /// [`SpiffeIdError::TooLong`] when the result would exceed [`MAX_ID_LEN`].
    pub fn from_path(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        validate_path(path)?;
        let id = format!("{SCHEME_PREFIX}{}{path}", trust_domain.0);
        check_id_len(id.len())?;
        Ok(Self { id, trust_domain: trust_domain.clone() })
    }

    /// Builds an ID from a trust domain and path segments given without
    /// slashes; no segments gives the trust domain's own ID.
    ///
    /// # Errors
    ///
    /// Each segment is checked on its own: empty, `.`/`..`, or containing a
    /// character outside `[a-zA-Z0-9._-]` (a `/` included) is rejected; and
    /// [`SpiffeIdError::TooLong`] when the result would exceed [`MAX_ID_LEN`].
    pub fn from_segments(trust_domain: &TrustDomain, segments: &[&str]) -> Result<Self, SpiffeIdError> {
        let mut path = String::new();
        for segment in segments {
            validate_segment(segment, false)?;
            path.push('/');
            path.push_str(segment);
        }
        Self::from_path(trust_domain, &path)
    }

    /// The trust domain this ID belongs to.
    #[must_use]
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path with its leading slash, or `""` for a trust domain's own ID.
    #[must_use]
    pub fn path(&self) -> &str {
        let start = SCHEME_PREFIX.len() + self.trust_domain.0.len();
        // The constructor guarantees `start` is in range and on a char
        // boundary; the fallback only keeps this free of panics.
        self.id.get(start..).unwrap_or_default()
    }

    /// Whether this is a trust domain's own ID (`spiffe://td`, no path).
    #[must_use]
    pub fn is_trust_domain_id(&self) -> bool {
        self.path().is_empty()
    }

    /// Whether this ID belongs to `trust_domain`.
    #[must_use]
    pub fn is_member_of(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain == *trust_domain
    }

    /// Whether the path is `/spire` or lies under `/spire/`, which SPIRE
    /// reserves for the IDs of its own agents and servers; registration
    /// must not hand such IDs to workloads.
    #[must_use]
    pub fn is_reserved(&self) -> bool {
        let path = self.path();
        path.strip_prefix(RESERVED_PATH).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The canonical string, `spiffe://td/path`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

// Equality, hashing and ordering use only the string: the trust domain is
// derived from it, and comparing it again would be wasted work.
impl PartialEq for SpiffeId {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for SpiffeId {}

impl std::hash::Hash for SpiffeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl PartialOrd for SpiffeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SpiffeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SpiffeId").field(&self.id).finish()
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.id
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests;
