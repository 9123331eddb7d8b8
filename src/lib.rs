//! cairn: a SPIFFE certificate authority.
//!
//! One binary runs as the root tier of a trust domain, as a downstream tier whose CA is signed
//! by the tier above, or as the node agent that serves the SPIFFE Workload API. It speaks
//! SPIRE's wire protocols and reads SPIRE's HCL configuration.
//!
//! ```text
//!   cli ──> api (tonic services, admin socket + mTLS) ──> ca (slots, minting) ──> keymanager
//!                         │                                   │                  (memory, disk)
//!                         └────────> datastore (sqlx) <───────┴──> upstream (disk; later
//!                                                                   vault, pkcs11, spire)
//! ```
//!
//! # Layout
//! - [`spiffe`]: pure SPIFFE types (IDs, bundles, SVID rules); no I/O.
//! - [`keymanager`]: key custody (`memory`, `disk`); keys sign through rcgen's `SigningKey`.
//! - [`ca`]: the X.509 CA and JWT key slots, rotation as pure functions of `now`, minting.
//! - [`upstream`]: where a tier's CA comes from (`disk`; later `vault`, `pkcs11`, `spire`).
//! - [`datastore`]: entries, nodes, join tokens, bundles, CA journal (SQLite via sqlx).
//! - [`config`]: SPIRE-style HCL into validated config, every error naming its key path.
//! - [`api`], [`server`]: SPIRE's gRPC services over the admin socket and TLS.
//! - [`cli`]: `cairn server ...` and `cairn agent ...` with SPIRE's flag spelling, `cairn tiers ...`.
//! - [`net`]: how every listener accepts, pins, caps and reaps connections.
//! - [`tiers`]: the local multi-tier demo (`cairn tiers up`): topology file, processes, report.

pub mod agent;
pub mod api;
pub mod attest;
pub mod ca;
pub mod cli;
pub mod config;
pub mod datastore;
pub mod fsutil;
pub mod keymanager;
pub mod net;
pub mod server;
pub mod spiffe;
pub mod telemetry;
pub mod tiers;
pub mod upstream;

/// Seconds since the Unix epoch, from the system clock. Domain logic takes `now` as a
/// parameter; only the edges (handlers, loops) read the clock.
#[must_use]
pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
