//! Node attestation methods shared by the agent (which proves) and the server (which checks).

pub mod x509pop;
