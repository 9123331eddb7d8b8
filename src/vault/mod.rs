//! A client for the HashiCorp Vault (and OpenBao) HTTP API, shared by `UpstreamAuthority
//! "vault"` (PKI engine) and `KeyManager "hashicorp_vault"` (transit engine).
//!
//! What it owns: the connection settings (SPIRE's plugin keys and environment fallbacks), the
//! four authentication methods, the token's life (renewal while renewable, a fresh login when
//! it lapses or is refused), and turning Vault's answers into errors that name the path, the
//! status and what the operator can do. Tokens, secret IDs and keys never reach a log or a
//! `Debug` string.

mod client;
mod settings;

pub use client::{Method, VaultClient};
pub use settings::{AuthSettings, ResolvedAuth, ResolvedSettings, Secret, VaultSettings};

/// What went wrong talking to Vault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The settings are unusable (a missing credential, an unreadable file); names the key.
    #[error("{0}")]
    Config(String),
    /// Vault could not be reached at all.
    #[error("Vault at {addr} is unreachable ({method} {path}): {cause}")]
    Unreachable {
        /// `vault_addr`.
        addr: String,
        /// HTTP method of the request.
        method: &'static str,
        /// API path, e.g. `pki/root/sign-intermediate`.
        path: String,
        /// The connection error.
        cause: String,
    },
    /// Vault answered with an error status.
    #[error("Vault refused {method} {path}: HTTP {status}: {message}{hint}", hint = refusal_hint(*.status, .message))]
    Refused {
        /// HTTP method of the request.
        method: &'static str,
        /// API path.
        path: String,
        /// HTTP status.
        status: u16,
        /// Vault's own error text (its `errors` list, joined).
        message: String,
    },
    /// Vault answered 2xx with something cairn cannot use (or must not trust).
    #[error("Vault's answer to {path} is unusable: {why}")]
    BadResponse {
        /// API path.
        path: String,
        /// What is wrong with it.
        why: String,
    },
}

impl VaultError {
    /// Whether retrying later may help (Vault down, sealed, or overloaded), as opposed to a
    /// refusal that needs the operator.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Refused { status, .. } => *status == 503 || *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Whether Vault refused the credentials (a new login may help).
    #[must_use]
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Self::Refused { status: 403, .. })
    }
}

/// What the operator can do about a refusal, from its status and Vault's message.
fn refusal_hint(status: u16, message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("sealed") {
        " (Vault is sealed: unseal it; cairn retries)"
    } else if status == 403 || m.contains("permission denied") {
        " (the token lacks a policy for this path, or it expired or was revoked)"
    } else if m.contains("no handler for route") || m.contains("unsupported path") || status == 404 {
        " (nothing is mounted there: check pki_mount_point, transit_engine_path or the auth mount point)"
    } else if m.contains("invalid role or secret id") || m.contains("invalid secret id") {
        " (check approle_id and approle_secret_id; a secret ID may have expired or been used up)"
    } else if status == 503 {
        " (Vault is unavailable; cairn retries)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests;
