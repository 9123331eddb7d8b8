//! cairn: a SPIFFE certificate authority.
//!
//! One binary runs as the root tier of a trust domain, as a downstream tier whose CA is signed
//! by the tier above, or as the node agent that serves the SPIFFE Workload API. It speaks
//! SPIRE's wire protocols and reads SPIRE's HCL configuration.
//!
//! ```text
//!   cli, tiers ──> server (assembles) ──> api (handlers) ──> ca ──> keymanager
//!                     │                     │               │ └──> upstream ──> agent (embedded)
//!                     │                     │               └────> datastore
//!   agent ───────────────> wire (protos + conversions) ──> spiffe (pure types)
//!   every module may use: spiffe, pki, text, fsutil, net, telemetry, config (data only), clock
//! ```
//! ARCHITECTURE.md has the full map and the rules; `tests/it/module_graph.rs` checks that no
//! two top-level modules import each other, directly or in a ring, and that the agent and the
//! wire stay free of server-side modules.
//!
//! # Layout
//! - [`spiffe`]: pure SPIFFE types (IDs, selectors, bundles, SVID rules); no I/O.
//! - [`wire`]: SPIRE's and SPIFFE's protobuf messages, gRPC stubs and their conversions.
//! - [`pki`]: the certificate toolkit: CA and SVID templates, CSR intake.
//! - [`keymanager`]: key custody (`memory`, `disk`); keys sign through rcgen's `SigningKey`.
//! - [`ca`]: the X.509 CA and JWT key slots, rotation as pure functions of `now`, minting.
//! - [`upstream`]: where a tier's CA comes from (`disk`, `pkcs11`, `spire`, `vault`).
//! - [`vault`]: the Vault/OpenBao HTTP client (auth methods, token renewal) the `vault`
//!   upstream and key manager share.
//! - [`datastore`]: entries, nodes, join tokens, bundles, CA journal (SQLite via sqlx) and the
//!   entry cache that follows its change feed.
//! - [`federation`]: the SPIFFE bundle endpoint and the refresher of foreign bundles.
//! - [`attest`]: node attestation methods, both the agent's and the server's side.
//! - [`config`]: SPIRE-style HCL into validated config, every error naming its key path.
//! - [`api`]: SPIRE's gRPC service handlers; [`server`] assembles them with the CA,
//!   datastore and listeners.
//! - [`agent`]: node attestation, sync, SVID cache and the Workload API.
//! - [`cli`]: `cairn server ...` and `cairn agent ...` with SPIRE's flag spelling, `cairn tiers ...`.
//! - [`net`]: how every listener accepts, pins, caps and reaps connections; Unix-socket dialing.
//! - [`telemetry`]: logs and health endpoints.
//! - [`tiers`]: the local multi-tier demo (`cairn tiers up`): topology file, processes, report.
//! - [`text`], [`fsutil`]: hex and durations as text; files and directories with fixed modes.
//! - [`clock`]: the wall clock the edges read ([`now_unix`]), which tests can replace and move.

pub mod agent;
pub mod api;
pub mod attest;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod config;
pub mod datastore;
pub mod federation;
pub mod fsutil;
pub mod keymanager;
pub mod net;
pub mod pki;
pub mod server;
pub mod spiffe;
pub mod telemetry;
pub mod text;
pub mod tiers;
pub mod upstream;
pub mod vault;
pub mod wire;

/// Seconds since the Unix epoch, from the system clock (or a test's [`clock::ManualClock`]).
/// Domain logic takes `now` as a parameter; only the edges (handlers, loops) read the clock.
#[must_use]
pub fn now_unix() -> i64 {
    clock::now()
}
