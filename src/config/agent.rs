//! `cairn agent` configuration: SPIRE's agent.conf keys.
//!
//! The walk mirrors [`super::server`]: every problem is collected with the dotted path of its
//! key (`agent.trust_bundle_url`, `plugins.NodeAttestor.x509pop.plugin_data.certificate_path`)
//! and all are reported at once.
//!
//! No key is taken in silence. Keys fall in four groups:
//! - used: the fields of [`AgentConfig`] (including `log_file`, `log_format` and
//!   `log_source_location`);
//! - accepted without effect, each logged at start with the reason ([`AgentConfig::notices`]):
//!   `rebootstrap_delay` (only read in "auto" mode), `disable_sds_api` (cairn has no SDS API),
//!   `experimental.use_sync_authorized_entries` (cairn always syncs that way);
//! - accepted only with the value that asks for nothing cairn lacks: `rebootstrap_mode =
//!   "never"`, `allow_unauthenticated_verifiers = false`, `disable_workload_api = false`,
//!   empty `authorized_delegates` / `allowed_foreign_jwt_claims` / `log_selectors`,
//!   `experimental.require_pq_kem = false`, empty `experimental.feature_flags`, an empty
//!   `telemetry` block;
//! - refused as "`<path>`: not supported by cairn (why)": everything else SPIRE has that cairn
//!   does not (the SVID cache sizes, `sds`, `availability_target`,
//!   `telemetry` sinks, ...), and keys SPIRE removed or renamed (with a hint naming the
//!   replacement).
//!
//! Deliberate differences from SPIRE:
//! - `server_port` defaults to 8081 (SPIRE requires it);
//! - a join token (`join_token`, `join_token_file`, `-joinToken`) with a `NodeAttestor` other
//!   than `join_token` is an error (SPIRE would silently attest with the token instead);
//! - `NodeAttestor "join_token"` without a token is accepted: an agent restarted with an SVID
//!   in its `data_dir` re-uses it and needs no token. A first start without one fails at run
//!   time, not here.

use super::hcl::{Object, Value};
use super::server::{HealthConfig, LogFormat};
use super::{ConfigError, ConfigErrors, Walker, join, plugin_decls, quote};
use crate::keymanager::KeyType;
use crate::spiffe::TrustDomain;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default Workload API socket (SPIRE's).
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/spire-agent/public/api.sock";
/// Default config file of `cairn agent run` (SPIRE's).
pub const DEFAULT_CONFIG_PATH: &str = "conf/agent/agent.conf";
/// Default server port.
pub const DEFAULT_SERVER_PORT: u16 = 8081;
/// Default `x509_svid_cache_max_size` and `jwt_svid_cache_max_size` (SPIRE's).
pub const DEFAULT_SVID_CACHE_SIZE: usize = 1000;

/// Default `experimental.sync_interval`.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// Format of the bootstrap trust bundle (`trust_bundle_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustBundleFormat {
    /// PEM certificates (the default).
    Pem,
    /// A SPIFFE bundle document (JWKS with `x509-svid` keys).
    Spiffe,
}

/// Where the agent gets the bundle it trusts the server with before its first SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustBundleSource {
    /// `trust_bundle_path` (`-trustBundle`).
    Path(PathBuf, TrustBundleFormat),
    /// `trust_bundle_url` (`-trustBundleUrl`), always `https://`.
    Url(String, TrustBundleFormat),
    /// `insecure_bootstrap = true`: trust the server's first answer.
    InsecureBootstrap,
}

/// The node attestor plugin (exactly one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAttestorConfig {
    /// `NodeAttestor "join_token"`; the token itself is [`AgentConfig::join_token`].
    JoinToken,
    /// `NodeAttestor "x509pop" { plugin_data { ... } }`.
    X509Pop {
        /// PEM private key of the node certificate.
        private_key_path: PathBuf,
        /// PEM node certificate (leaf first; more certificates may follow).
        certificate_path: PathBuf,
        /// PEM intermediates sent with the certificate.
        intermediates_path: Option<PathBuf>,
    },
}

/// The agent's key manager plugin (exactly one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentKeyManagerConfig {
    /// `KeyManager "memory"`: the agent key is lost on restart (the agent re-attests).
    Memory,
    /// `KeyManager "disk" { plugin_data { directory } }`.
    Disk {
        /// Directory the key file lives in.
        directory: PathBuf,
    },
}

/// `WorkloadAttestor "unix" { plugin_data { ... } }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixAttestorSettings {
    /// Read `/proc/<pid>/exe` for `unix:path` and `unix:sha256` selectors (SPIRE's default:
    /// false; needs the agent to be able to read other processes' executables).
    pub discover_workload_path: bool,
    /// Largest binary hashed for `unix:sha256`: 0 = no limit, negative = never hash.
    pub workload_size_limit: i64,
}

/// A workload attestor plugin (at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadAttestorConfig {
    /// `WorkloadAttestor "unix"`.
    Unix(UnixAttestorSettings),
}

/// Validated agent configuration.
#[derive(Clone)]
pub struct AgentConfig {
    /// The trust domain the agent belongs to.
    pub trust_domain: TrustDomain,
    /// The server's DNS name or IP address.
    pub server_address: String,
    /// The server's port (default 8081).
    pub server_port: u16,
    /// Workload API socket (default `/tmp/spire-agent/public/api.sock`).
    pub socket_path: PathBuf,
    /// The admin socket (Debug and Logger APIs); off when unset, as in SPIRE.
    pub admin_socket_path: Option<PathBuf>,
    /// Directory for agent state (default `.`).
    pub data_dir: PathBuf,
    /// How the server is trusted at bootstrap.
    pub trust_bundle: TrustBundleSource,
    /// Join token (`join_token`, the contents of `join_token_file`, or `-joinToken`).
    /// Redacted from `Debug`.
    pub join_token: Option<String>,
    /// DEBUG, INFO, WARN, ERROR (or TRACE).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// `log_file`, if set.
    pub log_file: Option<PathBuf>,
    /// `log_source_location` (or `-logSourceLocation`).
    pub log_source_location: bool,
    /// Key type of workload X509-SVIDs (`workload_x509_svid_key_type`, default ec-p256).
    pub workload_key_type: KeyType,
    /// How often the agent syncs with the server (`experimental.sync_interval`, default 5s).
    pub sync_interval: Duration,
    /// Soft limit on the X509-SVIDs the agent keeps (`x509_svid_cache_max_size`, default 1000).
    pub x509_svid_cache_max_size: usize,
    /// Limit on the JWT-SVIDs the agent caches (`jwt_svid_cache_max_size`, default 1000).
    pub jwt_svid_cache_max_size: usize,
    /// Node attestor.
    pub node_attestor: NodeAttestorConfig,
    /// Key manager.
    pub key_manager: AgentKeyManagerConfig,
    /// Workload attestors, in file order (at least one).
    pub workload_attestors: Vec<WorkloadAttestorConfig>,
    /// `health_checks { ... }`.
    pub health: Option<HealthConfig>,
    /// Keys accepted without effect, with the reason; logged once logging is up.
    pub notices: Vec<String>,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("trust_domain", &self.trust_domain)
            .field("server_address", &self.server_address)
            .field("server_port", &self.server_port)
            .field("socket_path", &self.socket_path)
            .field("data_dir", &self.data_dir)
            .field("trust_bundle", &self.trust_bundle)
            .field("join_token", &self.join_token.as_ref().map(|_| "<redacted>"))
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("log_file", &self.log_file)
            .field("log_source_location", &self.log_source_location)
            .field("workload_key_type", &self.workload_key_type)
            .field("sync_interval", &self.sync_interval)
            .field("x509_svid_cache_max_size", &self.x509_svid_cache_max_size)
            .field("jwt_svid_cache_max_size", &self.jwt_svid_cache_max_size)
            .field("node_attestor", &self.node_attestor)
            .field("key_manager", &self.key_manager)
            .field("workload_attestors", &self.workload_attestors)
            .field("health", &self.health)
            .field("notices", &self.notices)
            .finish()
    }
}

/// Command-line overrides (SPIRE's `-serverAddress`, `-joinToken` ...), applied over the file.
/// Each replaces only its own key, as in SPIRE: `-trustBundle` beside a file's
/// `trust_bundle_url` is still "both given".
#[derive(Clone, Default)]
pub struct AgentOverrides {
    /// `-serverAddress`.
    pub server_address: Option<String>,
    /// `-serverPort`.
    pub server_port: Option<u16>,
    /// `-socketPath`.
    pub socket_path: Option<PathBuf>,
    /// `-trustDomain`.
    pub trust_domain: Option<String>,
    /// `-trustBundle`.
    pub trust_bundle_path: Option<PathBuf>,
    /// `-trustBundleUrl`.
    pub trust_bundle_url: Option<String>,
    /// `-trustBundleFormat`.
    pub trust_bundle_format: Option<String>,
    /// `-insecureBootstrap` (only `true` overrides; a flag cannot switch it off).
    pub insecure_bootstrap: bool,
    /// `-joinToken`.
    pub join_token: Option<String>,
    /// `-joinTokenFile`.
    pub join_token_file: Option<PathBuf>,
    /// `-dataDir`.
    pub data_dir: Option<PathBuf>,
    /// `-logLevel`.
    pub log_level: Option<String>,
    /// `-logFormat`.
    pub log_format: Option<String>,
    /// `-logFile`.
    pub log_file: Option<PathBuf>,
    /// `-logSourceLocation` (only `true` overrides).
    pub log_source_location: bool,
}

impl fmt::Debug for AgentOverrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentOverrides")
            .field("server_address", &self.server_address)
            .field("server_port", &self.server_port)
            .field("socket_path", &self.socket_path)
            .field("trust_domain", &self.trust_domain)
            .field("trust_bundle_path", &self.trust_bundle_path)
            .field("trust_bundle_url", &self.trust_bundle_url)
            .field("trust_bundle_format", &self.trust_bundle_format)
            .field("insecure_bootstrap", &self.insecure_bootstrap)
            .field("join_token", &self.join_token.as_ref().map(|_| "<redacted>"))
            .field("join_token_file", &self.join_token_file)
            .field("data_dir", &self.data_dir)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("log_file", &self.log_file)
            .field("log_source_location", &self.log_source_location)
            .finish()
    }
}

/// `agent { ... }` keys cairn reads or accepts.
const AGENT_KEYS: &[&str] = &[
    "admin_socket_path",
    "trust_domain",
    "server_address",
    "server_port",
    "socket_path",
    "data_dir",
    "trust_bundle_path",
    "trust_bundle_url",
    "trust_bundle_format",
    "insecure_bootstrap",
    "join_token",
    "join_token_file",
    "log_level",
    "log_format",
    "log_file",
    "log_source_location",
    "log_selectors",
    "workload_x509_svid_key_type",
    "rebootstrap_mode",
    "rebootstrap_delay",
    "allow_unauthenticated_verifiers",
    "authorized_delegates",
    "allowed_foreign_jwt_claims",
    "disable_workload_api",
    "disable_sds_api",
    "experimental",
    "x509_svid_cache_max_size",
    "jwt_svid_cache_max_size",
];

/// SPIRE agent keys cairn does not have, and why.
fn agent_unsupported(key: &str) -> Option<&'static str> {
    match key {
        "sds" => Some("it serves the Workload API only, no Envoy SDS API"),
        "availability_target" => Some("not yet: SVIDs rotate at half-life"),
        "trust_bundle_unix_socket" => Some("not yet: use trust_bundle_url over https or trust_bundle_path"),
        "trust_bundle_spiffe_workload_api" => Some("not yet: use trust_bundle_path or trust_bundle_url"),
        "profiling_enabled" | "profiling_port" | "profiling_freq" | "profiling_names" => Some("there is no profiling endpoint"),
        _ => None,
    }
}

fn agent_hint(key: &str) -> Option<&'static str> {
    match key {
        "enable_sds" => Some("removed in SPIRE 1.0; cairn has no SDS API, delete it"),
        "retry_rebootstrap" => Some("removed in SPIRE 1.12: use rebootstrap_mode"),
        "disable_reattest_to_renew" => Some("removed in SPIRE 1.10; delete it"),
        "disable_lru_cache" => Some("removed in SPIRE 1.10: the cache is always on; size it with x509_svid_cache_max_size"),
        "bind_address" => Some("the agent does not listen on TCP: set server_address (the server to connect to) and socket_path"),
        "bind_port" => Some("use server_port (the port of the server to connect to)"),
        "trust_bundle" => Some("use trust_bundle_path (the flag is -trustBundle, the key trust_bundle_path)"),
        "registration_uds_path" | "workload_api_socket_path" => Some("use socket_path"),
        "ca_ttl" | "default_x509_svid_ttl" | "default_svid_ttl" | "agent_ttl" => {
            Some("a server setting: the server decides SVID lifetimes")
        }
        _ => None,
    }
}

const EXPERIMENTAL_KEYS: &[&str] = &["sync_interval", "use_sync_authorized_entries", "require_pq_kem", "feature_flags"];

/// SPIRE `experimental` keys cairn does not have, and why.
fn experimental_unsupported(key: &str) -> Option<&'static str> {
    match key {
        "jwt_svid_cache_hit_timeout" => Some("not yet: JWT-SVIDs are fetched from the server on a cache miss without a hit timeout"),
        "named_pipe_name" | "admin_named_pipe_name" => Some("Windows only; cairn listens on socket_path"),
        "ratelimit" => Some("not yet: Workload API rate limits"),
        "broker" => Some("not yet: the SPIFFE Broker API"),
        _ => None,
    }
}

fn experimental_hint(key: &str) -> Option<&'static str> {
    match key {
        "x509_svid_cache_max_size" | "jwt_svid_cache_max_size" => Some("moved out of experimental: set it in the agent block"),
        "disable_lru_cache" => Some("removed in SPIRE 1.10; delete it"),
        _ => None,
    }
}

impl AgentConfig {
    /// Where and how this agent logs.
    #[must_use]
    pub fn log_settings(&self) -> super::LogSettings {
        super::LogSettings {
            level: self.log_level.clone(),
            format: self.log_format,
            file: self.log_file.clone(),
            source_location: self.log_source_location,
        }
    }

    /// Reads and validates an agent config file.
    ///
    /// # Errors
    /// Every problem found, each naming its key.
    pub fn load(path: &Path, expand_env: bool, overrides: &AgentOverrides) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let message = if e.kind() == std::io::ErrorKind::NotFound {
                format!("could not find config file {}: please use the -config flag", path.display())
            } else {
                format!("cannot read config file {}: {e}", path.display())
            };
            ConfigErrors(vec![ConfigError { path: String::new(), message }])
        })?;
        let tree = super::parse_text(&text, expand_env)?;
        Self::from_tree(&tree, overrides)
    }

    /// Validates a parsed config tree. The only I/O is reading `join_token_file`, if given.
    ///
    /// # Errors
    /// Every problem found, each naming its key.
    #[allow(clippy::too_many_lines, reason = "one linear walk over the agent keys reads best in one place")]
    pub fn from_tree(tree: &Object, overrides: &AgentOverrides) -> Result<Self, ConfigErrors> {
        let mut w = Walker::new();
        w.unknown_keys(tree, &["agent", "plugins", "health_checks", "telemetry"], "", |k| match k {
            "server" => Some("this is a server config: `cairn agent` reads an agent { ... } block"),
            _ => None,
        });
        w.telemetry(tree);
        let empty = Object::default();
        let agent = w.block(tree, "agent", "").unwrap_or_else(|| {
            w.err("agent", "missing: an agent { ... } block is required");
            &empty
        });
        let p = "agent";
        w.unsupported_and_unknown_keys(agent, AGENT_KEYS, p, agent_unsupported, agent_hint);

        let td_text = overrides.trust_domain.clone().or_else(|| w.string(agent, "trust_domain", p));
        let trust_domain = trust_domain(&mut w, td_text);

        let server_address = overrides.server_address.clone().or_else(|| w.string(agent, "server_address", p)).filter(|s| !s.is_empty());
        if server_address.is_none() {
            w.err("agent.server_address", "missing: the DNS name or IP address of the server (or -serverAddress)");
        }
        let server_port = match overrides.server_port.or_else(|| w.port(agent, "server_port", p)) {
            Some(0) => {
                w.err("agent.server_port", "must not be 0");
                DEFAULT_SERVER_PORT
            }
            Some(port) => port,
            None => DEFAULT_SERVER_PORT,
        };
        let socket_path = overrides
            .socket_path
            .clone()
            .or_else(|| nonempty_path(&mut w, agent, "socket_path", p))
            .unwrap_or_else(|| DEFAULT_SOCKET_PATH.into());
        let data_dir = overrides.data_dir.clone().or_else(|| nonempty_path(&mut w, agent, "data_dir", p)).unwrap_or_else(|| ".".into());
        let admin_socket_path = nonempty_path(&mut w, agent, "admin_socket_path", p);
        if let Some(a) = &admin_socket_path
            && let Err(e) = check_admin_socket_placement(a, &socket_path)
        {
            w.err("agent.admin_socket_path", e);
        }

        let trust_bundle = trust_bundle(&mut w, agent, overrides);
        let join_token = join_token(&mut w, agent, overrides);

        let log_level =
            overrides.log_level.clone().or_else(|| w.string(agent, "log_level", p)).unwrap_or_else(|| "INFO".into()).to_ascii_uppercase();
        if !["DEBUG", "INFO", "WARN", "ERROR", "TRACE"].contains(&log_level.as_str()) {
            w.err("agent.log_level", format!("{}: expected DEBUG, INFO, WARN or ERROR", quote(&log_level)));
        }
        let log_format = match overrides.log_format.clone().or_else(|| w.string(agent, "log_format", p)).map(|s| s.to_ascii_lowercase()) {
            None => LogFormat::Text,
            Some(s) if s.is_empty() || s == "text" => LogFormat::Text,
            Some(s) if s == "json" => LogFormat::Json,
            Some(other) => {
                w.err("agent.log_format", format!("{}: expected text or json", quote(other)));
                LogFormat::Text
            }
        };
        let log_file = overrides.log_file.clone().or_else(|| nonempty_path(&mut w, agent, "log_file", p));
        let log_source_location = overrides.log_source_location || w.boolean(agent, "log_source_location", p) == Some(true);
        if w.strings(agent, "log_selectors", p).is_some_and(|l| !l.is_empty()) {
            w.unsupported("agent.log_selectors", "workload selectors are logged in full; remove it or leave the list empty");
        }
        let workload_key_type = match w.string(agent, "workload_x509_svid_key_type", p) {
            None => KeyType::EcP256,
            Some(s) => match s.parse::<KeyType>() {
                Ok(k) if !k.is_rsa() => k,
                _ if s == "rsa-2048" => {
                    w.err("agent.workload_x509_svid_key_type", "rsa-2048 is not supported by cairn: use ec-p256 or ec-p384");
                    KeyType::EcP256
                }
                _ => {
                    w.err("agent.workload_x509_svid_key_type", format!("{}: expected ec-p256 or ec-p384", quote(s)));
                    KeyType::EcP256
                }
            },
        };
        match w.string(agent, "rebootstrap_mode", p).as_deref() {
            None | Some("" | "never") => {}
            Some("auto" | "always") => w.err(
                "agent.rebootstrap_mode",
                "not supported by cairn yet: only \"never\" (re-bootstrap by hand: delete the agent's data_dir)",
            ),
            Some(other) => w.err("agent.rebootstrap_mode", format!("{}: expected never, auto or always", quote(other))),
        }
        if w.duration(agent, "rebootstrap_delay", p).is_some() {
            // SPIRE reads it only in "auto" mode; cairn has "never", where SPIRE ignores it too.
            w.notice("agent.rebootstrap_delay", "only used by rebootstrap_mode \"auto\"; cairn never re-bootstraps by itself");
        }
        if w.boolean(agent, "allow_unauthenticated_verifiers", p) == Some(true) {
            w.err("agent.allow_unauthenticated_verifiers", "not supported by cairn yet: unregistered callers get no bundle");
        }
        if w.boolean(agent, "disable_workload_api", p) == Some(true) {
            w.err("agent.disable_workload_api", "cairn serves only the Workload API on socket_path; it cannot be disabled");
        }
        if let Some(v) = w.boolean(agent, "disable_sds_api", p) {
            let why = if v {
                "cairn has no SDS API, so it is always off"
            } else {
                "cairn has no SDS API to enable; only the Workload API is served"
            };
            w.notice("agent.disable_sds_api", why);
        }
        for (key, what) in
            [("authorized_delegates", "the Delegated Identity API"), ("allowed_foreign_jwt_claims", "foreign JWT claim filtering")]
        {
            if w.strings(agent, key, p).is_some_and(|l| !l.is_empty()) {
                w.err(&join(p, key), format!("not supported by cairn yet ({what}); remove it or leave the list empty"));
            }
        }

        // SPIRE: 0 (or absent) means its default; a negative size is an error.
        let mut cache_size = |key: &str| match int(&mut w, agent, key, p) {
            Some(n) if n < 0 => {
                w.err(&join(p, key), format!("{n}: must not be negative"));
                DEFAULT_SVID_CACHE_SIZE
            }
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => DEFAULT_SVID_CACHE_SIZE,
        };
        let x509_svid_cache_max_size = cache_size("x509_svid_cache_max_size");
        let jwt_svid_cache_max_size = cache_size("jwt_svid_cache_max_size");

        let mut sync_interval = DEFAULT_SYNC_INTERVAL;
        if let Some(exp) = w.block(agent, "experimental", p) {
            let ep = "agent.experimental";
            w.unsupported_and_unknown_keys(exp, EXPERIMENTAL_KEYS, ep, experimental_unsupported, experimental_hint);
            match w.duration(exp, "sync_interval", ep) {
                Some(0) => w.err("agent.experimental.sync_interval", "must be greater than zero"),
                Some(secs) => sync_interval = Duration::from_secs(secs.unsigned_abs()),
                None => {}
            }
            if w.boolean(exp, "use_sync_authorized_entries", ep).is_some() {
                w.notice(
                    "agent.experimental.use_sync_authorized_entries",
                    "cairn always syncs entries with SyncAuthorizedEntries (SPIRE's default since 1.12)",
                );
            }
            if w.boolean(exp, "require_pq_kem", ep) == Some(true) {
                w.err("agent.experimental.require_pq_kem", "not supported by cairn yet: its TLS offers no post-quantum key exchange");
            }
            if w.strings(exp, "feature_flags", ep).is_some_and(|l| !l.is_empty()) {
                w.err("agent.experimental.feature_flags", "cairn has no feature flags; leave the list empty");
            }
        }

        let plugins = Plugins::read(&mut w, tree);
        if let (Some(pl), Some(_)) = (&plugins, &join_token)
            && let Some(NodeAttestorConfig::X509Pop { .. }) = &pl.node_attestor
        {
            w.err(
                "agent.join_token",
                "a join token is only used with NodeAttestor \"join_token\", and this config uses \"x509pop\": remove the token (join_token, join_token_file, -joinToken) or switch the NodeAttestor",
            );
        }

        let health = w.block(tree, "health_checks", "").map(|o| {
            let hp = "health_checks";
            w.unknown_keys(o, &["listener_enabled", "bind_address", "bind_port", "live_path", "ready_path"], hp, |_| None);
            HealthConfig {
                listener_enabled: w.boolean(o, "listener_enabled", hp).unwrap_or(false),
                bind_address: w.string(o, "bind_address", hp).unwrap_or_else(|| "localhost".into()),
                bind_port: w.port(o, "bind_port", hp).unwrap_or(80),
                live_path: w.string(o, "live_path", hp).unwrap_or_else(|| "/live".into()),
                ready_path: w.string(o, "ready_path", hp).unwrap_or_else(|| "/ready".into()),
            }
        });

        match (trust_domain, server_address, trust_bundle, plugins, w.errors.is_empty()) {
            (
                Some(trust_domain),
                Some(server_address),
                Some(trust_bundle),
                Some(Plugins { node_attestor: Some(node_attestor), key_manager: Some(key_manager), workload_attestors }),
                true,
            ) => Ok(Self {
                trust_domain,
                server_address,
                server_port,
                socket_path,
                admin_socket_path,
                data_dir,
                trust_bundle,
                join_token,
                log_level,
                log_format,
                log_file,
                log_source_location,
                workload_key_type,
                sync_interval,
                x509_svid_cache_max_size,
                jwt_svid_cache_max_size,
                node_attestor,
                key_manager,
                workload_attestors,
                health,
                notices: w.notices,
            }),
            _ => Err(ConfigErrors(w.errors)),
        }
    }
}

fn trust_domain(w: &mut Walker, text: Option<String>) -> Option<TrustDomain> {
    let path = "agent.trust_domain";
    match text {
        None => {
            w.err(path, "missing: set the trust domain name, e.g. \"example.org\" (or -trustDomain)");
            None
        }
        Some(t) if t.starts_with("spiffe://") => {
            w.err(path, "give the bare name (example.org), not a SPIFFE ID");
            None
        }
        Some(t) => match TrustDomain::new(&t) {
            Ok(td) => Some(td),
            Err(e) => {
                w.err(path, format!("invalid trust domain {}: {e}", quote(t)));
                None
            }
        },
    }
}

/// A path-valued string key; an empty string counts as unset (as in SPIRE).
/// Refuses an admin socket inside the Workload API socket's directory (SPIRE's rule and words).
///
/// # Errors
/// The admin socket would be reachable by every local user.
fn check_admin_socket_placement(admin: &Path, workload: &Path) -> Result<(), String> {
    let abs = |p: &Path| if p.is_absolute() { p.to_owned() } else { std::env::current_dir().unwrap_or_default().join(p) };
    let (admin, workload) = (abs(admin), abs(workload));
    if let Some(dir) = workload.parent()
        && admin.starts_with(dir)
    {
        return Err("admin socket cannot be in the same directory or a subdirectory as that containing the Workload API socket".into());
    }
    Ok(())
}

fn nonempty_path(w: &mut Walker, obj: &Object, key: &str, path: &str) -> Option<PathBuf> {
    w.string(obj, key, path).filter(|s| !s.is_empty()).map(PathBuf::from)
}

/// An integer, given as a number or a numeric string.
fn int(w: &mut Walker, obj: &Object, key: &str, path: &str) -> Option<i64> {
    let item = w.single(obj, key, path)?;
    let n = match &item.value {
        Value::Int(n) => Some(*n),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    if n.is_none() {
        w.err(&join(path, key), "expected an integer");
    }
    n
}

fn trust_bundle(w: &mut Walker, agent: &Object, o: &AgentOverrides) -> Option<TrustBundleSource> {
    let p = "agent";
    let format = match o.trust_bundle_format.clone().or_else(|| w.string(agent, "trust_bundle_format", p)).as_deref() {
        None | Some("" | "pem") => Some(TrustBundleFormat::Pem),
        Some("spiffe") => Some(TrustBundleFormat::Spiffe),
        Some(other) => {
            w.err("agent.trust_bundle_format", format!("{}: expected \"pem\" or \"spiffe\"", quote(other)));
            None
        }
    };
    let path = o.trust_bundle_path.clone().or_else(|| nonempty_path(w, agent, "trust_bundle_path", p));
    let url = o.trust_bundle_url.clone().or_else(|| w.string(agent, "trust_bundle_url", p)).filter(|s| !s.is_empty());
    let insecure = o.insecure_bootstrap || w.boolean(agent, "insecure_bootstrap", p) == Some(true);
    if let Some(u) = &url
        && !u.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    {
        w.err("agent.trust_bundle_url", format!("{}: the trust bundle URL must start with https://", quote(u)));
    }
    match (insecure, path, url) {
        (true, None, None) => Some(TrustBundleSource::InsecureBootstrap),
        (true, Some(_), Some(_)) => {
            w.err(
                "agent.insecure_bootstrap",
                "only one of insecure_bootstrap, trust_bundle_url, or trust_bundle_path can be specified, not the three options",
            );
            None
        }
        (true, Some(_), None) => {
            w.err("agent.insecure_bootstrap", "only one of insecure_bootstrap or trust_bundle_path can be specified, not both");
            None
        }
        (true, None, Some(_)) => {
            w.err("agent.insecure_bootstrap", "only one of insecure_bootstrap or trust_bundle_url can be specified, not both");
            None
        }
        (false, Some(_), Some(_)) => {
            w.err("agent.trust_bundle_url", "only one of trust_bundle_url or trust_bundle_path can be specified, not both");
            None
        }
        (false, Some(path), None) => Some(TrustBundleSource::Path(path, format?)),
        (false, None, Some(url)) => Some(TrustBundleSource::Url(url, format?)),
        (false, None, None) => {
            w.err(
                "agent.trust_bundle_path",
                "missing: set trust_bundle_path (-trustBundle) or trust_bundle_url (-trustBundleUrl), or insecure_bootstrap = true",
            );
            None
        }
    }
}

fn join_token(w: &mut Walker, agent: &Object, o: &AgentOverrides) -> Option<String> {
    let p = "agent";
    let token = o.join_token.clone().or_else(|| w.string(agent, "join_token", p)).filter(|s| !s.is_empty());
    let file = o.join_token_file.clone().or_else(|| nonempty_path(w, agent, "join_token_file", p));
    match (token, file) {
        (Some(_), Some(_)) => {
            w.err("agent.join_token_file", "only one of join_token or join_token_file can be specified, not both");
            None
        }
        (Some(t), None) => Some(t),
        (None, Some(f)) => match std::fs::read_to_string(&f) {
            Ok(text) if text.trim().is_empty() => {
                w.err("agent.join_token_file", format!("{} is empty", f.display()));
                None
            }
            Ok(text) => Some(text.trim().to_owned()),
            Err(e) => {
                w.err("agent.join_token_file", format!("unable to read join token file {}: {e}", f.display()));
                None
            }
        },
        (None, None) => None,
    }
}

struct Plugins {
    node_attestor: Option<NodeAttestorConfig>,
    key_manager: Option<AgentKeyManagerConfig>,
    workload_attestors: Vec<WorkloadAttestorConfig>,
}

fn required_path(w: &mut Walker, data: &Object, key: &str, path: &str, what: &str) -> Option<PathBuf> {
    let v = nonempty_path(w, data, key, path);
    if v.is_none() {
        w.err(&join(path, key), format!("missing: {what}"));
    }
    v
}

impl Plugins {
    #[allow(clippy::too_many_lines, reason = "one match per plugin type, read top to bottom")]
    fn read(w: &mut Walker, tree: &Object) -> Option<Self> {
        let Some(plugins) = w.block(tree, "plugins", "") else {
            w.err("plugins", "missing: a plugins { ... } block with NodeAttestor, KeyManager and WorkloadAttestor is required");
            return None;
        };
        w.unknown_keys(plugins, &["NodeAttestor", "KeyManager", "WorkloadAttestor", "SVIDStore"], "plugins", |k| match k {
            "DataStore" | "UpstreamAuthority" | "Notifier" | "BundlePublisher" | "CredentialComposer" => {
                Some("a server plugin type; the agent has NodeAttestor, KeyManager, WorkloadAttestor")
            }
            "NodeResolver" => Some("the NodeResolver plugin type was removed from SPIRE; delete this block"),
            _ => None,
        });
        if plugins.get_all("SVIDStore").next().is_some() {
            w.err("plugins.SVIDStore", "this plugin type is not supported by cairn yet");
        }
        let empty = Object::default();

        let na = plugin_decls(w, plugins, "NodeAttestor");
        let node_attestor = match na.as_slice() {
            [n] if n.name == "join_token" => {
                if let Some(d) = n.data.as_deref() {
                    w.unknown_keys(d, &[], &n.path, |k| (k == "join_token").then_some("the token goes in agent.join_token"));
                }
                Some(NodeAttestorConfig::JoinToken)
            }
            [n] if n.name == "x509pop" => {
                let data = n.data.as_deref().unwrap_or(&empty);
                w.unknown_keys(data, &["private_key_path", "certificate_path", "intermediates_path"], &n.path, |k| match k {
                    "spiffe_endpoint_socket" => Some("not supported by cairn yet: give private_key_path and certificate_path"),
                    _ => None,
                });
                let key = required_path(w, data, "private_key_path", &n.path, "the PEM private key of the node certificate");
                let cert = required_path(w, data, "certificate_path", &n.path, "the PEM node certificate");
                let intermediates_path = nonempty_path(w, data, "intermediates_path", &n.path);
                match (key, cert) {
                    (Some(private_key_path), Some(certificate_path)) => {
                        Some(NodeAttestorConfig::X509Pop { private_key_path, certificate_path, intermediates_path })
                    }
                    _ => None,
                }
            }
            [n] => {
                w.err(n.block_path(), format!("unknown NodeAttestor {}: this cairn has \"join_token\" and \"x509pop\"", quote(&n.name)));
                None
            }
            [] => {
                w.err("plugins.NodeAttestor", "missing: configure NodeAttestor \"join_token\" or \"x509pop\"");
                None
            }
            _ => {
                w.err("plugins.NodeAttestor", "exactly one NodeAttestor may be configured");
                None
            }
        };

        let km = plugin_decls(w, plugins, "KeyManager");
        let key_manager = match km.as_slice() {
            [k] if k.name == "memory" => {
                if let Some(d) = k.data.as_deref() {
                    w.unknown_keys(d, &[], &k.path, |_| None);
                }
                Some(AgentKeyManagerConfig::Memory)
            }
            [k] if k.name == "disk" => {
                let data = k.data.as_deref().unwrap_or(&empty);
                w.unknown_keys(data, &["directory"], &k.path, |k| match k {
                    "keys_path" => Some("that is the server's disk KeyManager; the agent's takes directory"),
                    _ => None,
                });
                required_path(w, data, "directory", &k.path, "the directory the disk key manager keeps the agent key in")
                    .map(|directory| AgentKeyManagerConfig::Disk { directory })
            }
            [k] => {
                w.err(k.block_path(), format!("unknown KeyManager {}: expected \"disk\" or \"memory\"", quote(&k.name)));
                None
            }
            [] => {
                w.err("plugins.KeyManager", "missing: configure KeyManager \"disk\" or \"memory\"");
                None
            }
            _ => {
                w.err("plugins.KeyManager", "exactly one KeyManager may be configured");
                None
            }
        };

        let mut workload_attestors = Vec::new();
        let wa = plugin_decls(w, plugins, "WorkloadAttestor");
        for a in &wa {
            match a.name.as_str() {
                "unix" => {
                    let data = a.data.as_deref().unwrap_or(&empty);
                    w.unknown_keys(data, &["discover_workload_path", "workload_size_limit"], &a.path, |_| None);
                    workload_attestors.push(WorkloadAttestorConfig::Unix(UnixAttestorSettings {
                        discover_workload_path: w.boolean(data, "discover_workload_path", &a.path).unwrap_or(false),
                        workload_size_limit: int(w, data, "workload_size_limit", &a.path).unwrap_or(0),
                    }));
                }
                other => w.err(
                    a.block_path(),
                    format!("unknown WorkloadAttestor {}: this cairn has \"unix\" (docker, k8s and systemd come later)", quote(other)),
                ),
            }
        }
        if wa.is_empty() {
            w.err("plugins.WorkloadAttestor", "missing: configure at least one WorkloadAttestor, e.g. WorkloadAttestor \"unix\" {}");
        }
        Some(Self { node_attestor, key_manager, workload_attestors })
    }
}

#[cfg(test)]
mod tests;
