//! `cairn agent`: node attestation, sync with the server, the SVID cache and the SPIFFE
//! Workload API on a Unix socket.

pub mod admin;
pub mod bootstrap;
pub mod cache;
pub mod client;
pub mod manager;
pub mod run;
pub mod unix_attestor;
pub mod workload;
