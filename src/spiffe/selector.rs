//! Selectors: what attestation says about a node or a workload.

/// A selector (`type:value`), e.g. `unix:uid:1000`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Selector {
    /// The attestor that produces it (`unix`, `join_token`, `spiffe_id`, ...).
    pub kind: String,
    /// The value; may itself contain colons.
    pub value: String,
}
