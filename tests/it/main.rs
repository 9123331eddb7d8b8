//! The end-to-end tests, one module per area, in one test binary: each file used to be its
//! own binary, and each of those linked the whole crate again. Run one area with
//! `cargo test --test it <module>::` (for example `cargo test --test it nested::`).
//!
//! `tests/clock.rs` stays a binary of its own: it installs a process-wide manual clock, which
//! the tests here must not see. Areas whose tests need a fixed order or a shared resource
//! serialise themselves (a `Mutex` in the module, e.g. `spire_suites`, `tiers_demo`).

#[path = "../common/mod.rs"]
mod common;

mod agent_cli;
mod agent_e2e;
mod agent_push;
mod agent_x509pop;
mod api_robustness;
mod attest_hardening;
mod compromise;
mod connection_limits;
mod entry_expiry;
mod federation;
mod file_modes;
mod grpcio_admin;
mod ha_datastore;
mod hsm;
mod logs;
mod mint_checks;
mod module_graph;
mod nested;
mod root_tier;
mod rsa_keys;
mod spire_scripts;
mod spire_stock_configs;
mod spire_suites;
mod stream_limits;
mod tiers_demo;
mod tls_port;
mod ttl_flags;
mod upstream_disk;
mod vault;
mod workload_clients;
mod workload_peer;
