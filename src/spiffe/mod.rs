//! The SPIFFE core: identities, trust bundles and SVID validation, as pure
//! functions with no I/O, no clock and no async.
//!
//! ```text
//!            id ─────────────┬──────────────┬────────────┐
//!   SpiffeId, TrustDomain    │              │            │
//!                            ▼              ▼            ▼
//!                        bundle ───────▶  jwt         x509
//!   Bundle <-> SPIFFE JSON / JWKS / PEM   JWT-SVID    X509-SVID rules,
//!   (strict JSON, JWK <-> SPKI)           validate,   path validation
//!                                         sign halves
//! ```
//!
//! | module     | what                                                  | checklist |
//! |------------|-------------------------------------------------------|-----------|
//! | [`id`]     | [`SpiffeId`], [`TrustDomain`], selector text form     | §1        |
//! | [`bundle`] | [`Bundle`]: SPIFFE bundle JSON, plain JWKS, PEM        | §4        |
//! | [`federation`] | [`federation::Relationship`]: a foreign bundle endpoint | §5 (bundle spec) |
//! | [`jwt`]    | [`validate_jwt_svid`], [`signing_input`], [`assemble`] | §3        |
//! | [`x509`]   | leaf/CA rules, [`verify_chain`]                        | §2        |
//!
//! Everything that depends on time takes `now` (unix seconds) as an
//! argument. Every function that reads untrusted input returns a typed error
//! and never panics; inputs that come over the network have size limits
//! ([`bundle::MAX_BUNDLE_LEN`], [`jwt::MAX_TOKEN_LEN`], [`id::MAX_ID_LEN`],
//! [`x509::MAX_CHAIN_LEN`]).
//!
//! Signing is not done here: the CA builds [`signing_input`], signs it with
//! its key manager, and calls [`assemble`]; X.509 issuance lives in the CA.

pub mod bundle;
pub mod federation;
pub mod id;
pub mod jwt;
pub mod names;
pub mod selector;
pub mod x509;

pub use bundle::{Bundle, BundleError, JwtAuthority, parse_pem_certs};
pub use id::{SelectorError, SpiffeId, SpiffeIdError, TrustDomain, parse_selector};
pub use jwt::{JwtAlg, JwtSvidClaims, JwtSvidError, assemble, bundle_keys, signing_input, validate_jwt_svid};
pub use selector::Selector;
pub use x509::{CertPosition, X509SvidError, ca_spiffe_id, leaf_spiffe_id, validate_x509_svid_chain, verify_chain, verify_x509_svid};
