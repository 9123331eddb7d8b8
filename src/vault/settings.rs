//! Connection settings as the config gives them, and as they are after SPIRE's environment
//! fallbacks (`VAULT_ADDR`, `VAULT_TOKEN`, ...) are applied.

use super::VaultError;
use std::path::PathBuf;
use zeroize::Zeroizing;

/// A credential: zeroized on drop, redacted in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a credential.
    #[must_use]
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// The credential itself, for the one request that carries it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The connection keys shared by SPIRE's `vault` UpstreamAuthority and `hashicorp_vault`
/// KeyManager, as written in the config (before environment fallbacks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VaultSettings {
    /// `vault_addr` (else `VAULT_ADDR`).
    pub vault_addr: Option<String>,
    /// `namespace` (else `VAULT_NAMESPACE`): sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// `ca_cert_path` (else `VAULT_CACERT`): PEM roots that Vault's TLS certificate chains to.
    pub ca_cert_path: Option<PathBuf>,
    /// `insecure_skip_verify`: accept any TLS certificate from Vault.
    pub insecure_skip_verify: bool,
    /// Exactly one authentication method.
    pub auth: AuthSettings,
}

/// One of the four authentication blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSettings {
    /// `token_auth { token }` (else `VAULT_TOKEN`).
    Token {
        /// The token.
        token: Option<Secret>,
    },
    /// `approle_auth { approle_auth_mount_point, approle_id, approle_secret_id }`.
    AppRole {
        /// Mount point (default `approle`).
        mount: String,
        /// Role ID (else `VAULT_APPROLE_ID`).
        role_id: Option<String>,
        /// Secret ID (else `VAULT_APPROLE_SECRET_ID`).
        secret_id: Option<Secret>,
    },
    /// `cert_auth { cert_auth_mount_point, cert_auth_role_name, client_cert_path, client_key_path }`.
    Cert {
        /// Mount point (default `cert`).
        mount: String,
        /// The role to log in against (Vault tries every role when empty).
        role_name: Option<String>,
        /// Client certificate, PEM (else `VAULT_CLIENT_CERT`).
        client_cert_path: Option<PathBuf>,
        /// Client key, PEM (else `VAULT_CLIENT_KEY`).
        client_key_path: Option<PathBuf>,
    },
    /// `k8s_auth { k8s_auth_mount_point, k8s_auth_role_name, token_path }`.
    K8s {
        /// Mount point (default `kubernetes`).
        mount: String,
        /// The role to log in against.
        role_name: String,
        /// The service account token file.
        token_path: PathBuf,
    },
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self::Token { token: None }
    }
}

/// Settings ready to connect with.
#[derive(Debug, Clone)]
pub struct ResolvedSettings {
    /// Base address without a trailing slash, e.g. `https://vault.example.org:8200`.
    pub addr: String,
    /// `X-Vault-Namespace`, if any.
    pub namespace: Option<String>,
    /// PEM roots for Vault's TLS certificate (system roots when `None`).
    pub ca_cert_path: Option<PathBuf>,
    /// Accept any TLS certificate.
    pub insecure_skip_verify: bool,
    /// How to authenticate.
    pub auth: ResolvedAuth,
    /// The config path of the plugin block, for error messages.
    pub config_path: String,
}

/// An authentication method with every credential present.
#[derive(Debug, Clone)]
pub enum ResolvedAuth {
    /// A fixed token: renewed while renewable, never re-obtained.
    Token(Secret),
    /// AppRole login.
    AppRole {
        /// Mount point.
        mount: String,
        /// Role ID.
        role_id: String,
        /// Secret ID.
        secret_id: Secret,
    },
    /// TLS client-certificate login.
    Cert {
        /// Mount point.
        mount: String,
        /// Role name, if given.
        role_name: Option<String>,
        /// Client certificate file.
        cert: PathBuf,
        /// Client key file.
        key: PathBuf,
    },
    /// Kubernetes service-account login.
    K8s {
        /// Mount point.
        mount: String,
        /// Role name.
        role_name: String,
        /// Token file, read at each login (kubelet rotates it).
        token_path: PathBuf,
    },
}

impl ResolvedAuth {
    /// The method's name as the config spells it.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Token(_) => "token_auth",
            Self::AppRole { .. } => "approle_auth",
            Self::Cert { .. } => "cert_auth",
            Self::K8s { .. } => "k8s_auth",
        }
    }
}

impl VaultSettings {
    /// Applies SPIRE's environment variables (as in SPIRE, a variable that is set wins over the
    /// config; unlike SPIRE, a variable set to the empty string counts as unset) and checks that every credential the method needs is present.
    /// `config_path` is the plugin block's path, used in error messages.
    ///
    /// # Errors
    /// A missing address or credential, named by its config key and variable.
    pub fn resolve(&self, config_path: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<ResolvedSettings, VaultError> {
        let pick = |given: Option<&str>, var: &str| -> Option<String> {
            env(var).filter(|s| !s.is_empty()).or_else(|| given.filter(|s| !s.is_empty()).map(str::to_owned))
        };
        let missing = |key: &str, var: &str, what: &str| VaultError::Config(format!("{config_path}.{key}: missing: {what} (or set {var})"));
        let addr = pick(self.vault_addr.as_deref(), "VAULT_ADDR")
            .ok_or_else(|| missing("vault_addr", "VAULT_ADDR", "the Vault address, e.g. https://vault.example.org:8200"))?;
        let addr = check_addr(&addr).map_err(|why| VaultError::Config(format!("{config_path}.vault_addr: {why}")))?;
        let namespace = pick(self.namespace.as_deref(), "VAULT_NAMESPACE");
        let ca_cert_path = pick(self.ca_cert_path.as_deref().and_then(|p| p.to_str()), "VAULT_CACERT").map(PathBuf::from);
        let auth = match &self.auth {
            AuthSettings::Token { token } => {
                let t = pick(token.as_ref().map(Secret::expose), "VAULT_TOKEN")
                    .ok_or_else(|| missing("token_auth.token", "VAULT_TOKEN", "the Vault token"))?;
                ResolvedAuth::Token(Secret::new(t))
            }
            AuthSettings::AppRole { mount, role_id, secret_id } => ResolvedAuth::AppRole {
                mount: mount.clone(),
                role_id: pick(role_id.as_deref(), "VAULT_APPROLE_ID")
                    .ok_or_else(|| missing("approle_auth.approle_id", "VAULT_APPROLE_ID", "the AppRole role ID"))?,
                secret_id: Secret::new(
                    pick(secret_id.as_ref().map(Secret::expose), "VAULT_APPROLE_SECRET_ID")
                        .ok_or_else(|| missing("approle_auth.approle_secret_id", "VAULT_APPROLE_SECRET_ID", "the AppRole secret ID"))?,
                ),
            },
            AuthSettings::Cert { mount, role_name, client_cert_path, client_key_path } => ResolvedAuth::Cert {
                mount: mount.clone(),
                role_name: role_name.clone().filter(|r| !r.is_empty()),
                cert: pick(client_cert_path.as_deref().and_then(|p| p.to_str()), "VAULT_CLIENT_CERT")
                    .ok_or_else(|| missing("cert_auth.client_cert_path", "VAULT_CLIENT_CERT", "the client certificate (PEM)"))?
                    .into(),
                key: pick(client_key_path.as_deref().and_then(|p| p.to_str()), "VAULT_CLIENT_KEY")
                    .ok_or_else(|| missing("cert_auth.client_key_path", "VAULT_CLIENT_KEY", "the client key (PEM)"))?
                    .into(),
            },
            AuthSettings::K8s { mount, role_name, token_path } => {
                ResolvedAuth::K8s { mount: mount.clone(), role_name: role_name.clone(), token_path: token_path.clone() }
            }
        };
        Ok(ResolvedSettings {
            addr,
            namespace,
            ca_cert_path,
            insecure_skip_verify: self.insecure_skip_verify,
            auth,
            config_path: config_path.to_owned(),
        })
    }
}

/// `http(s)://host[:port][/]` with nothing after the authority but slashes; returns it without
/// trailing slashes.
fn check_addr(addr: &str) -> Result<String, String> {
    let trimmed = addr.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(|| format!("{addr:?} must start with https:// or http://"))?;
    if rest.is_empty() || rest.contains('/') || rest.contains('?') || rest.contains('#') || rest.contains('@') {
        return Err(format!("{addr:?} must be a scheme and host[:port] only, e.g. https://vault.example.org:8200"));
    }
    Ok(trimmed.to_owned())
}
