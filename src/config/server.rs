//! `cairn server` configuration: SPIRE's server.conf keys.

use super::hcl::Object;
use super::{ConfigErrors, Walker, join, plugin_decls, quote};
use crate::keymanager::KeyType;
use crate::pki::CaSubject;
use crate::spiffe::{SpiffeId, TrustDomain};
use std::path::PathBuf;

/// Where the datastore lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreConfig {
    /// `sqlite3`, `postgres` or `mysql`.
    pub database_type: String,
    /// Driver connection string (for sqlite3: a file path or `sqlite://...`; for postgres a URL
    /// or libpq's keyword/value form; for mysql a URL or the Go driver's DSN).
    pub connection_string: String,
    /// `ro_connection_string`: a read replica for reads that tolerate staleness (postgres and
    /// mysql only).
    pub ro_connection_string: Option<String>,
    /// `max_open_conns`, `max_idle_conns`, `conn_max_lifetime`, `disable_migration`, and
    /// MySQL's TLS files.
    pub settings: crate::datastore::sql::ConnectSettings,
}

pub use crate::keymanager::KeyManagerConfig;

/// The upstream authority plugin.
#[derive(Debug, Clone)]
pub enum UpstreamConfig {
    /// `UpstreamAuthority "disk"`.
    Disk(DiskUpstreamConfig),
    /// `UpstreamAuthority "spire"`: this server is a downstream tier.
    Spire(SpireUpstreamConfig),
    /// `UpstreamAuthority "pkcs11"`: `disk`'s certificate files with the key on a token.
    Pkcs11(Pkcs11UpstreamConfig),
    /// `UpstreamAuthority "vault"`: a Vault/OpenBao PKI engine signs this tier's CA.
    Vault(VaultUpstreamConfig),
}

/// `plugin_data` of `UpstreamAuthority "vault"`.
#[derive(Debug, Clone)]
pub struct VaultUpstreamConfig {
    /// Connection and authentication (SPIRE's keys; environment fallbacks apply later).
    pub vault: crate::vault::VaultSettings,
    /// `pki_mount_point` (default `pki`).
    pub pki_mount_point: String,
}

/// `plugin_data` of `UpstreamAuthority "pkcs11"`.
#[derive(Debug, Clone)]
pub struct Pkcs11UpstreamConfig {
    /// The token holding the upstream CA key.
    pub token: crate::keymanager::pkcs11::TokenConfig,
    /// `key_label`: CKA_LABEL of the upstream CA's key pair on the token.
    pub key_label: String,
    /// PEM certificate chain, the upstream CA (whose key is on the token) first.
    pub cert_file_path: PathBuf,
    /// PEM trust anchors, when the upstream CA is not itself a root.
    pub bundle_file_path: Option<PathBuf>,
}

/// Files of the upstream CA.
#[derive(Debug, Clone)]
pub struct DiskUpstreamConfig {
    /// PEM certificate chain, the upstream CA first.
    pub cert_file_path: PathBuf,
    /// PEM private key of the first certificate.
    pub key_file_path: PathBuf,
    /// PEM trust anchors, when the upstream CA is not itself a root.
    pub bundle_file_path: Option<PathBuf>,
}

/// `plugin_data` of `UpstreamAuthority "spire"`.
#[derive(Debug, Clone)]
pub struct SpireUpstreamConfig {
    /// Upstream server host.
    pub server_address: String,
    /// Upstream server port.
    pub server_port: u16,
    /// Where this server's identity toward the upstream comes from.
    pub identity: IdentitySource,
}

/// How a downstream server gets the X509-SVID it presents upstream.
#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// SPIRE's arrangement: the Workload API socket of an upper-tier agent on this host.
    WorkloadApi(PathBuf),
    /// cairn's one-binary arrangement: the server attests itself to the upstream as an agent
    /// (join_token or x509pop) and uses the SVID of an entry parented to that agent identity.
    Embedded(Box<EmbeddedAgent>),
}

/// The agent a downstream server runs in-process to authenticate upstream (cairn's one-binary
/// arrangement), with its files already read.
#[derive(Debug, Clone)]
pub struct EmbeddedAgent {
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// `server_address:server_port` of the upstream.
    pub server_addr: String,
    /// Roots from `trust_bundle_path`, trusted for the upstream's certificate.
    pub roots: Vec<Vec<u8>>,
    /// How it attests (join_token or x509pop).
    pub attestation: crate::attest::NodeAttestation,
    /// Where its SVID persists.
    pub state_dir: PathBuf,
    /// How often it syncs.
    pub sync_interval: std::time::Duration,
}

/// `health_checks { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Whether the HTTP listener runs.
    pub listener_enabled: bool,
    /// Listen address (default `localhost`).
    pub bind_address: String,
    /// Listen port (default 80).
    pub bind_port: u16,
    /// Liveness path (default `/live`).
    pub live_path: String,
    /// Readiness path (default `/ready`).
    pub ready_path: String,
}

/// `NodeAttestor "x509pop" { plugin_data { ... } }` on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509PopSettings {
    /// PEM files with the CAs node certificates must chain to (`ca_bundle_path` and/or `ca_bundle_paths`).
    pub ca_bundle_paths: Vec<PathBuf>,
    /// `agent_path_template` (SPIRE's default when absent).
    pub agent_path_template: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The trust domain served.
    pub trust_domain: TrustDomain,
    /// gRPC listen address.
    pub bind_address: String,
    /// gRPC listen port (default 8081).
    pub bind_port: u16,
    /// Admin socket path.
    pub socket_path: PathBuf,
    /// Directory for server state.
    pub data_dir: PathBuf,
    /// DEBUG, INFO, WARN or ERROR.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// `log_file`: logs go here instead of stderr (reopened on SIGUSR2).
    pub log_file: Option<PathBuf>,
    /// `log_source_location`: each event names its source file and line.
    pub log_source_location: bool,
    /// Lifetime of CAs and JWT keys, seconds.
    pub ca_ttl: i64,
    /// Default X509-SVID TTL, seconds.
    pub default_x509_svid_ttl: i64,
    /// Default JWT-SVID TTL, seconds.
    pub default_jwt_svid_ttl: i64,
    /// Agent SVID TTL, seconds.
    pub agent_ttl: i64,
    /// CA key type.
    pub ca_key_type: KeyType,
    /// JWT key type.
    pub jwt_key_type: KeyType,
    /// CA subject.
    pub ca_subject: CaSubject,
    /// `iss` for JWT-SVIDs.
    pub jwt_issuer: Option<String>,
    /// SPIFFE IDs allowed to call admin APIs over TLS.
    pub admin_ids: Vec<SpiffeId>,
    /// Datastore plugin.
    pub datastore: DatastoreConfig,
    /// Key manager plugin.
    pub key_manager: KeyManagerConfig,
    /// Node attestors enabled (`join_token`, `x509pop`).
    pub node_attestors: Vec<String>,
    /// `NodeAttestor "x509pop"` settings, when enabled.
    pub x509pop: Option<X509PopSettings>,
    /// Upstream authority, if any (none = self-signed root).
    pub upstream: Option<UpstreamConfig>,
    /// Health listener.
    pub health: Option<HealthConfig>,
    /// How often the CA rotator checks its slots (`experimental.ca_rotation_interval`, default 10s).
    pub ca_rotation_interval: i64,
    /// Seconds a JWT key published upstream waits before first use
    /// (`experimental.jwt_publish_grace`, default 5s).
    pub jwt_publish_grace: i64,
    /// How often the upstream bundle is polled when the upstream cannot push it
    /// (`experimental.upstream_bundle_poll_interval`, default 5s, SPIRE's).
    pub upstream_poll_interval: i64,
    /// How often expired registration entries are pruned
    /// (`experimental.entry_prune_interval`, default 5m, SPIRE's pruning cadence).
    pub entry_prune_interval: i64,
    /// Use polling even when the upstream can push (`experimental.upstream_bundle_push = false`),
    /// to compare the two paths.
    pub upstream_bundle_push: bool,
    /// Serve cairn's `AgentSync` change stream, so cairn agents sync as soon as something they
    /// hold changes (`experimental.agent_push`, default true; false: agents poll, as SPIRE's).
    pub agent_push: bool,
    /// `disable_jwt_svids` (SPIRE 1.14+): no JWT keys, no JWT-SVIDs.
    pub disable_jwt_svids: bool,
    /// `federation { bundle_endpoint { ... } federates_with "<td>" { ... } }`.
    pub federation: super::federation::FederationConfig,
    /// `oidc_discovery { ... }` (cairn's): OIDC discovery and JWKS for JWT consumers.
    pub oidc: Option<super::federation::OidcConfig>,
    /// Settings that work but may surprise, in SPIRE's words; logged when the server starts.
    pub warnings: Vec<String>,
    /// Keys accepted without effect, with the reason; logged once logging is up.
    pub notices: Vec<String>,
}

/// Command-line overrides (SPIRE's `-trustDomain`, `-serverPort` ...), applied over the file.
#[derive(Debug, Clone, Default)]
pub struct ServerOverrides {
    /// `-trustDomain`.
    pub trust_domain: Option<String>,
    /// `-bindAddress`.
    pub bind_address: Option<String>,
    /// `-serverPort`.
    pub server_port: Option<u16>,
    /// `-socketPath`.
    pub socket_path: Option<PathBuf>,
    /// `-dataDir`.
    pub data_dir: Option<PathBuf>,
    /// `-logLevel`.
    pub log_level: Option<String>,
    /// `-logFormat`.
    pub log_format: Option<String>,
    /// `-logFile`.
    pub log_file: Option<PathBuf>,
}

const SERVER_KEYS: &[&str] = &[
    "trust_domain",
    "bind_address",
    "bind_port",
    "socket_path",
    "data_dir",
    "log_level",
    "log_format",
    "log_file",
    "log_source_location",
    "ca_ttl",
    "default_x509_svid_ttl",
    "default_jwt_svid_ttl",
    "agent_ttl",
    "ca_key_type",
    "jwt_key_type",
    "ca_subject",
    "jwt_issuer",
    "admin_ids",
    "disable_jwt_svids",
    "experimental",
    "audit_log_enabled",
    "max_attested_node_info_staleness",
    "federation",
    "oidc_discovery",
];

/// SPIRE server keys cairn does not have, and why (refused as "not supported by cairn (why)").
fn server_unsupported(key: &str) -> Option<&'static str> {
    match key {
        "proxy_protocol_trusted_cidrs" => Some("the TCP listener does not read PROXY protocol headers"),
        "prune_attested_nodes_expired_for" | "prune_tofu_nodes" | "prune_attested_nodes_batch_size" => {
            Some("not yet: attested nodes are not pruned; remove it")
        }
        "ratelimit" => Some("no per-IP request rate limits; cairn throttles failed attestations per peer instead"),
        "profiling_enabled" | "profiling_port" | "profiling_freq" | "profiling_names" => Some("there is no profiling endpoint"),
        _ => None,
    }
}

/// SPIRE `experimental` server keys cairn does not have, and why.
fn server_experimental_unsupported(key: &str) -> Option<&'static str> {
    match key {
        "auth_opa_policy_engine" => Some("authorization is built in; there is no OPA policy engine"),
        "sql_transaction_timeout" => Some("not yet: SQLite transactions have no timeout setting"),
        "wit_key_type" | "wit_issuer" => Some("WIT-SVIDs are not issued"),
        "named_pipe_name" => Some("Windows only; cairn listens on socket_path"),
        _ => None,
    }
}

/// `experimental` server keys that ask for something cairn always does: accepted and logged.
const SERVER_EXPERIMENTAL_ALWAYS: &[(&str, &str)] = &[
    ("events_based_cache", "cairn's entry cache is always driven by datastore change events"),
    ("cache_reload_interval", "cairn's entry cache follows change events as they happen; there is no reload interval"),
    ("full_cache_reload_interval", "cairn's entry cache follows change events; a full read every 5 minutes, in the background, checks it"),
    ("prune_events_older_than", "cairn's change events live in memory only; there is nothing to prune"),
    ("event_timeout", "cairn's change events are delivered in process and cannot be skipped"),
];

fn server_hint(key: &str) -> Option<&'static str> {
    match key {
        "registration_uds_path" => Some("renamed: use socket_path"),
        "default_svid_ttl" => Some("renamed: use default_x509_svid_ttl"),
        "svid_ttl" => Some("use default_x509_svid_ttl"),
        "upstream_bundle" => Some("removed in SPIRE 1.0: the upstream bundle is always used"),
        _ => None,
    }
}

/// Default admin socket (SPIRE's).
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/spire-server/private/api.sock";

impl ServerConfig {
    /// Where and how this server logs.
    #[must_use]
    pub fn log_settings(&self) -> super::LogSettings {
        super::LogSettings {
            level: self.log_level.clone(),
            format: self.log_format,
            file: self.log_file.clone(),
            source_location: self.log_source_location,
        }
    }

    /// Reads and validates a server config file.
    ///
    /// # Errors
    /// Every problem found, each naming its key.
    pub fn load(path: &std::path::Path, expand_env: bool, overrides: &ServerOverrides) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![super::ConfigError {
                path: String::new(),
                message: format!("cannot read config file {}: {e}", path.display()),
            }])
        })?;
        let tree = super::parse_text(&text, expand_env)?;
        Self::from_tree(&tree, overrides)
    }

    /// Validates a parsed config tree.
    ///
    /// # Errors
    /// Every problem found, each naming its key.
    #[allow(clippy::too_many_lines, reason = "one linear walk over the server keys reads best in one place")]
    pub fn from_tree(tree: &Object, overrides: &ServerOverrides) -> Result<Self, ConfigErrors> {
        let mut w = Walker::new();
        w.unknown_keys(tree, &["server", "plugins", "health_checks", "telemetry"], "", |k| match k {
            "federation" => Some("federation goes inside the server block"),
            _ => None,
        });
        w.telemetry(tree);
        let empty = Object::default();
        let server = w.block(tree, "server", "").unwrap_or_else(|| {
            w.err("server", "missing: a server { ... } block is required");
            &empty
        });
        let p = "server";
        w.unsupported_and_unknown_keys(server, SERVER_KEYS, p, server_unsupported, server_hint);
        if w.boolean(server, "audit_log_enabled", p) == Some(true) {
            w.unsupported("server.audit_log_enabled", "not yet: there is no audit log; API calls are logged at DEBUG");
        }
        if let Some(secs) = w.duration(server, "max_attested_node_info_staleness", p)
            && secs != 0
        {
            w.unsupported(
                "server.max_attested_node_info_staleness",
                "cairn reads attested-node records from the datastore on every agent call, so they are never stale; only 0s is accepted",
            );
        }

        let td_text = overrides.trust_domain.clone().or_else(|| w.string(server, "trust_domain", p));
        let trust_domain = match td_text {
            None => {
                w.err("server.trust_domain", "missing: set the trust domain name, e.g. \"example.org\"");
                None
            }
            Some(t) if t.starts_with("spiffe://") => {
                w.err("server.trust_domain", "give the bare name (example.org), not a SPIFFE ID");
                None
            }
            Some(t) => match TrustDomain::new(&t) {
                Ok(td) => Some(td),
                Err(e) => {
                    w.err("server.trust_domain", format!("invalid trust domain {}: {e}", quote(t)));
                    None
                }
            },
        };
        let bind_address =
            overrides.bind_address.clone().or_else(|| w.string(server, "bind_address", p)).unwrap_or_else(|| "0.0.0.0".into());
        if bind_address.parse::<std::net::IpAddr>().is_err() {
            w.err("server.bind_address", format!("{} is not an IP address", quote(&bind_address)));
        }
        let bind_port = overrides.server_port.or_else(|| w.port(server, "bind_port", p)).unwrap_or(8081);
        let socket_path = overrides
            .socket_path
            .clone()
            .or_else(|| w.string(server, "socket_path", p).map(PathBuf::from))
            .unwrap_or_else(|| DEFAULT_SOCKET_PATH.into());
        let data_dir =
            overrides.data_dir.clone().or_else(|| w.string(server, "data_dir", p).map(PathBuf::from)).unwrap_or_else(|| ".".into());
        let log_level =
            overrides.log_level.clone().or_else(|| w.string(server, "log_level", p)).unwrap_or_else(|| "INFO".into()).to_ascii_uppercase();
        if !["DEBUG", "INFO", "WARN", "ERROR", "TRACE"].contains(&log_level.as_str()) {
            w.err("server.log_level", format!("{}: expected DEBUG, INFO, WARN or ERROR", quote(&log_level)));
        }
        let log_format =
            match overrides.log_format.clone().or_else(|| w.string(server, "log_format", p)).map(|s| s.to_ascii_lowercase()).as_deref() {
                None | Some("" | "text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    w.err("server.log_format", format!("{}: expected text or json", quote(other)));
                    LogFormat::Text
                }
            };
        // An empty log_file means stderr, as in SPIRE (server_full.conf's `log_file = ""`).
        let log_file = overrides.log_file.clone().or_else(|| w.string(server, "log_file", p).filter(|s| !s.is_empty()).map(PathBuf::from));
        let log_source_location = w.boolean(server, "log_source_location", p).unwrap_or(false);
        let positive = |w: &mut Walker, key: &str, v: Option<i64>, default: i64| -> i64 {
            match v {
                Some(0) => {
                    w.err(&join(p, key), "must be greater than zero");
                    default
                }
                Some(v) => v,
                None => default,
            }
        };
        let v = w.duration(server, "ca_ttl", p);
        let ca_ttl = positive(&mut w, "ca_ttl", v, 24 * 3600);
        let v = w.duration(server, "default_x509_svid_ttl", p);
        let default_x509_svid_ttl = positive(&mut w, "default_x509_svid_ttl", v, 3600);
        let v = w.duration(server, "default_jwt_svid_ttl", p);
        let default_jwt_svid_ttl = positive(&mut w, "default_jwt_svid_ttl", v, 300);
        let v = w.duration(server, "agent_ttl", p);
        let agent_ttl = positive(&mut w, "agent_ttl", v, default_x509_svid_ttl);
        // SPIRE accepts any SVID TTL and caps each SVID at its CA's expiry; it only warns when
        // an SVID may be cut short by a scheduled rotation. So does cairn, in SPIRE's words.
        let agent_ttl_set = server.get_all("agent_ttl").next().is_some();
        let mut warnings = svid_ttl_warnings(ca_ttl, default_x509_svid_ttl, default_jwt_svid_ttl, agent_ttl_set.then_some(agent_ttl));
        let key_type = |w: &mut Walker, key: &str, default: KeyType| -> KeyType {
            match w.string(server, key, p) {
                None => default,
                Some(s) => s.parse().unwrap_or_else(|_| {
                    w.err(&join(p, key), format!("{}: expected ec-p256, ec-p384, rsa-2048 or rsa-4096", quote(s)));
                    default
                }),
            }
        };
        let ca_key_type = key_type(&mut w, "ca_key_type", KeyType::EcP256);
        let jwt_key_type = key_type(&mut w, "jwt_key_type", ca_key_type);
        let ca_subject = match w.block(server, "ca_subject", p) {
            None => CaSubject::default(),
            Some(o) => {
                let sp = "server.ca_subject";
                w.unknown_keys(o, &["country", "organization", "common_name"], sp, |_| None);
                let d = CaSubject::default();
                CaSubject {
                    country: w.strings(o, "country", sp).unwrap_or(d.country),
                    organization: w.strings(o, "organization", sp).unwrap_or(d.organization),
                    common_name: w.string(o, "common_name", sp).filter(|s| !s.is_empty()),
                }
            }
        };
        let jwt_issuer = w.string(server, "jwt_issuer", p).filter(|s| !s.is_empty());
        let admin_ids = w
            .strings(server, "admin_ids", p)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| match SpiffeId::new(&s) {
                Ok(id) => Some(id),
                Err(e) => {
                    w.err("server.admin_ids", format!("{}: {e}", quote(s)));
                    None
                }
            })
            .collect();
        let disable_jwt_svids = w.boolean(server, "disable_jwt_svids", p).unwrap_or(false);
        let mut ca_rotation_interval = 10;
        let mut jwt_publish_grace = 5;
        let mut upstream_poll_interval = 5;
        let mut upstream_bundle_push = true;
        let mut agent_push = true;
        let mut entry_prune_interval = 300;
        if let Some(exp) = w.block(server, "experimental", p) {
            let ep = "server.experimental";
            let mut known = vec![
                "ca_rotation_interval",
                "jwt_publish_grace",
                "upstream_bundle_poll_interval",
                "upstream_bundle_push",
                "agent_push",
                "entry_prune_interval",
                "require_pq_kem",
                "feature_flags",
                "agent_spiffe_id_as_selector",
            ];
            known.extend(SERVER_EXPERIMENTAL_ALWAYS.iter().map(|(k, _)| *k));
            w.unsupported_and_unknown_keys(exp, &known, ep, server_experimental_unsupported, |_| None);
            for (key, why) in SERVER_EXPERIMENTAL_ALWAYS {
                if exp.get_all(key).next().is_some() {
                    w.notice(&join(ep, key), why);
                }
            }
            if w.boolean(exp, "require_pq_kem", ep) == Some(true) {
                w.unsupported("server.experimental.require_pq_kem", "not yet: its TLS offers no post-quantum key exchange");
            }
            if w.strings(exp, "feature_flags", ep).is_some_and(|l| !l.is_empty()) {
                w.unsupported("server.experimental.feature_flags", "cairn has no feature flags; leave the list empty");
            }
            if w.boolean(exp, "agent_spiffe_id_as_selector", ep) == Some(true) {
                w.unsupported("server.experimental.agent_spiffe_id_as_selector", "not yet: agents get no spiffe_id selector");
            }
            if let Some(v) = w.duration(exp, "ca_rotation_interval", ep) {
                if v == 0 {
                    w.err("server.experimental.ca_rotation_interval", "must be greater than zero");
                } else {
                    ca_rotation_interval = v;
                }
            }
            if let Some(v) = w.duration(exp, "jwt_publish_grace", ep) {
                jwt_publish_grace = v;
            }
            if let Some(v) = w.duration(exp, "upstream_bundle_poll_interval", ep) {
                if v == 0 {
                    w.err("server.experimental.upstream_bundle_poll_interval", "must be greater than zero");
                } else {
                    upstream_poll_interval = v;
                }
            }
            if let Some(v) = w.boolean(exp, "agent_push", ep) {
                agent_push = v;
            }
            if let Some(v) = w.boolean(exp, "upstream_bundle_push", ep) {
                upstream_bundle_push = v;
            }
            if let Some(v) = w.duration(exp, "entry_prune_interval", ep) {
                if v == 0 {
                    w.err("server.experimental.entry_prune_interval", "must be greater than zero");
                } else {
                    entry_prune_interval = v;
                }
            }
        }

        let plugins = Plugins::read(&mut w, tree, trust_domain.as_ref(), overrides, server);
        if let Some(Plugins { key_manager: KeyManagerConfig::Pkcs11(_), .. }) = &plugins {
            // Caught here, before anything is opened or written, rather than at key generation.
            for (key, kt) in [("ca_key_type", ca_key_type), ("jwt_key_type", jwt_key_type)] {
                if kt.is_rsa() {
                    w.err(&join("server", key), format!("{}: KeyManager \"pkcs11\" keeps ec-p256 and ec-p384 keys", kt.as_str()));
                }
            }
        }
        let oidc = w.block(server, "oidc_discovery", p).and_then(|o| oidc_config(&mut w, o, jwt_issuer.as_deref()));
        let federation = w
            .block(server, "federation", p)
            .map(|f| federation_config(&mut w, &mut warnings, f, trust_domain.as_ref()))
            .unwrap_or_default();
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

        match (trust_domain, plugins, w.errors.is_empty()) {
            (Some(trust_domain), Some(pl), true) => Ok(Self {
                trust_domain,
                bind_address,
                bind_port,
                socket_path,
                data_dir,
                log_level,
                log_format,
                log_file,
                log_source_location,
                ca_ttl,
                default_x509_svid_ttl,
                default_jwt_svid_ttl,
                agent_ttl,
                ca_key_type,
                jwt_key_type,
                ca_subject,
                jwt_issuer,
                admin_ids,
                datastore: pl.datastore,
                key_manager: pl.key_manager,
                node_attestors: pl.node_attestors,
                x509pop: pl.x509pop,
                upstream: pl.upstream,
                health,
                ca_rotation_interval,
                jwt_publish_grace,
                upstream_poll_interval,
                upstream_bundle_push,
                agent_push,
                entry_prune_interval,
                disable_jwt_svids,
                federation,
                oidc,
                warnings,
                notices: w.notices,
            }),
            _ => Err(ConfigErrors(w.errors)),
        }
    }
}

/// `server.oidc_discovery`: where to serve, the issuer (consistent with `jwt_issuer`), and
/// HTTPS from files or plain HTTP on loopback.
fn oidc_config(w: &mut Walker, o: &Object, jwt_issuer: Option<&str>) -> Option<super::federation::OidcConfig> {
    let op = "server.oidc_discovery";
    w.unknown_keys(o, &["address", "port", "issuer", "serving_cert_file", "insecure_http"], op, |_| None);
    let address = w.string(o, "address", op).filter(|a| !a.is_empty()).unwrap_or_else(|| "127.0.0.1".into());
    let port = w.port(o, "port", op);
    if port.is_none() {
        w.err(&join(op, "port"), "missing: the port to serve OIDC discovery on");
    }
    let issuer = match (w.string(o, "issuer", op).filter(|i| !i.is_empty()), jwt_issuer) {
        (Some(i), Some(j)) if i != j => {
            w.err(
                &join(op, "issuer"),
                format!("{} differs from server.jwt_issuer {}: JWT-SVIDs carry jwt_issuer as iss, and consumers compare it with the discovery issuer byte for byte", quote(&i), quote(j)),
            );
            None
        }
        (Some(i), _) => Some(i),
        (None, Some(j)) => Some(j.to_owned()),
        (None, None) => {
            w.err(&join(op, "issuer"), "missing: set it (or server.jwt_issuer), e.g. https://oidc.example.org");
            None
        }
    };
    let insecure = w.boolean(o, "insecure_http", op).unwrap_or(false);
    let tls = match w.block(o, "serving_cert_file", op) {
        Some(sc) => {
            let sp = join(op, "serving_cert_file");
            w.unknown_keys(sc, &["cert_file_path", "key_file_path", "file_sync_interval"], &sp, |_| None);
            let cert = w.string(sc, "cert_file_path", &sp).filter(|c| !c.is_empty());
            let key = w.string(sc, "key_file_path", &sp).filter(|c| !c.is_empty());
            if cert.is_none() || key.is_none() {
                w.err(&sp, "needs cert_file_path and key_file_path");
            }
            let every = match w.duration(sc, "file_sync_interval", &sp) {
                Some(0) | None => 60,
                Some(v) => v,
            };
            cert.zip(key).map(|(c, k)| (PathBuf::from(c), PathBuf::from(k), every))
        }
        None => None,
    };
    let loopback = address.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback()) || address == "localhost";
    match (&tls, insecure) {
        (Some(_), true) => w.err(op, "give either serving_cert_file (HTTPS) or insecure_http = true, not both"),
        (None, false) => {
            w.err(op, "missing: serving_cert_file { cert_file_path, key_file_path } (or insecure_http = true on a loopback address)")
        }
        (None, true) if !loopback => {
            w.err(&join(op, "insecure_http"), format!("plain HTTP is only served on a loopback address, not {}", quote(&address)));
        }
        _ => {}
    }
    Some(super::federation::OidcConfig { address, port: port?, issuer: issuer?, tls })
}

/// The labelled blocks `key "<label>" { ... }` of `obj`, as (label, body, path).
fn labelled<'a>(w: &mut Walker, obj: &'a Object, key: &str, path: &str) -> Vec<(String, &'a Object, String)> {
    let mut out = Vec::new();
    for item in obj.get_all(key) {
        let blocks: Vec<&Object> = match &item.value {
            super::hcl::Value::List(l) => l.iter().filter_map(super::as_object).collect(),
            v => super::as_object(v).into_iter().collect(),
        };
        if blocks.is_empty() {
            w.err(&join(path, key), format!("expected {key} \"<name>\" {{ ... }}"));
        }
        for b in blocks {
            for inner in &b.items {
                let p = format!("{}.{}", join(path, key), quote(&inner.key));
                match super::as_object(&inner.value) {
                    Some(body) => out.push((inner.key.clone(), body, p)),
                    None => w.err(&p, "expected a block { ... }"),
                }
            }
        }
    }
    out
}

/// An `acme { ... }` block. `legacy` is SPIRE's older form directly in `bundle_endpoint`,
/// where SPIRE requires `domain_name` and `email`; the profile form requires `domain_name`.
fn acme_config(w: &mut Walker, warnings: &mut Vec<String>, a: &Object, ap: &str, legacy: bool) -> Option<super::federation::AcmeConfig> {
    w.unknown_keys(a, &["domain_name", "directory_url", "email", "tos_accepted"], ap, |_| None);
    let domain_name = w.string(a, "domain_name", ap).filter(|d| !d.is_empty());
    let email = w.string(a, "email", ap).unwrap_or_default();
    if domain_name.is_none() {
        w.err(&join(ap, "domain_name"), "must be configured: the name the bundle endpoint's certificate is for");
    }
    if legacy && email.is_empty() {
        w.err(&join(ap, "email"), "must be configured");
    }
    let directory_url =
        w.string(a, "directory_url", ap).filter(|d| !d.is_empty()).unwrap_or_else(|| super::federation::LETS_ENCRYPT_DIRECTORY.to_owned());
    if !directory_url.to_ascii_lowercase().starts_with("https://") {
        w.err(&join(ap, "directory_url"), format!("must use the HTTPS protocol; URL found: {}", quote(&directory_url)));
    }
    let tos_accepted = w.boolean(a, "tos_accepted", ap).unwrap_or(false);
    if !tos_accepted {
        warnings.push(format!(
            "ACME Terms of Service have not been accepted ({ap}.tos_accepted = false): no certificate will be requested from {directory_url}"
        ));
    }
    Some(super::federation::AcmeConfig { domain_name: domain_name?, directory_url, email, tos_accepted })
}

/// `server.federation`, with SPIRE's checks and messages.
fn federation_config(
    w: &mut Walker,
    warnings: &mut Vec<String>,
    f: &Object,
    own: Option<&TrustDomain>,
) -> super::federation::FederationConfig {
    use super::federation::{BundleEndpointConfig, ClientProfile, EndpointProfile, FederationConfig, Relationship};
    let fp = "server.federation";
    w.unknown_keys(f, &["bundle_endpoint", "federates_with"], fp, |_| None);
    let bundle_endpoint = w.block(f, "bundle_endpoint", fp).and_then(|b| {
        let bp = join(fp, "bundle_endpoint");
        w.unknown_keys(b, &["address", "port", "refresh_hint", "profile", "acme"], &bp, |_| None);
        // SPIRE's older form: `acme` directly in `bundle_endpoint`.
        let legacy_acme = w.block(b, "acme", &bp).map(|a| {
            warnings.push(String::from("ACME configuration within the bundle_endpoint is deprecated. Please use ACME configuration as part of the https_web profile instead."));
            acme_config(w, warnings, a, &join(&bp, "acme"), true)
        });
        let address = w.string(b, "address", &bp).filter(|a| !a.is_empty()).unwrap_or_else(|| "0.0.0.0".into());
        let port = w.port(b, "port", &bp).unwrap_or(0);
        let refresh_hint = w.duration(b, "refresh_hint", &bp).unwrap_or(300);
        if refresh_hint >= 24 * 3600 {
            warnings.push(String::from("Bundle endpoint refresh hint set to a high value. To cover the case of unscheduled trust bundle updates, it's recommended to have a smaller value, e.g. 5m"));
        } else if refresh_hint < 60 {
            warnings.push(String::from("Bundle endpoint refresh hint set too low. SPIRE will not refresh more often than 1 minute"));
        }
        let profiles = labelled(w, b, "profile", &bp);
        if legacy_acme.is_some() && !profiles.is_empty() {
            w.err(&bp, "either bundle endpoint 'acme' or 'profile' can be set, but not both");
        }
        let profile = match profiles.as_slice() {
            [] if legacy_acme.is_some() => legacy_acme.flatten().map(EndpointProfile::HttpsWebAcme),
            [] => {
                warnings.push(String::from("Bundle endpoint is configured but has no profile set, using https_spiffe as default; please configure a profile explicitly. This will be fatal in a future release."));
                Some(EndpointProfile::HttpsSpiffe)
            }
            [(name, body, pp)] if name == "https_spiffe" => {
                w.unknown_keys(body, &[], pp, |_| None);
                Some(EndpointProfile::HttpsSpiffe)
            }
            [(name, body, pp)] if name == "https_web" => {
                w.unknown_keys(body, &["serving_cert_file", "acme"], pp, |_| None);
                let acme = w.block(body, "acme", pp).map(|a| acme_config(w, warnings, a, &join(pp, "acme"), false));
                if acme.is_some() && body.get_all("serving_cert_file").next().is_some() {
                    w.err(pp, "malformed https_web profile configuration: 'acme' and 'serving_cert_file' are mutually exclusive");
                }
                if let Some(acme) = acme {
                    return acme.map(|a| BundleEndpointConfig { address, port, refresh_hint, profile: EndpointProfile::HttpsWebAcme(a) });
                }
                match w.block(body, "serving_cert_file", pp) {
                    Some(sc) => {
                        let sp = join(pp, "serving_cert_file");
                        w.unknown_keys(sc, &["cert_file_path", "key_file_path", "file_sync_interval"], &sp, |_| None);
                        let cert = w.string(sc, "cert_file_path", &sp).filter(|c| !c.is_empty());
                        let key = w.string(sc, "key_file_path", &sp).filter(|c| !c.is_empty());
                        if cert.is_none() {
                            w.err(&join(&sp, "cert_file_path"), "missing: the PEM certificate chain the endpoint serves");
                        }
                        if key.is_none() {
                            w.err(&join(&sp, "key_file_path"), "missing: the PEM private key of that certificate");
                        }
                        let interval = match w.duration(sc, "file_sync_interval", &sp) {
                            Some(0) | None => 3600,
                            Some(v) => v,
                        };
                        match (cert, key) {
                            (Some(c), Some(k)) => Some(EndpointProfile::HttpsWeb { cert_file_path: c.into(), key_file_path: k.into(), file_sync_interval: interval }),
                            _ => None,
                        }
                    }
                    None => {
                        w.err(pp, "malformed https_web profile configuration: 'acme' or 'serving_cert_file' is required");
                        None
                    }
                }
            }
            [(_, _, pp)] => {
                w.err(pp, "unknown bundle endpoint profile configured; current supported profiles are \"https_spiffe\" and \"https_web\"");
                None
            }
            _ => {
                w.err(&join(&bp, "profile"), "exactly one bundle endpoint profile is expected");
                None
            }
        };
        profile.map(|profile| BundleEndpointConfig { address, port, refresh_hint, profile })
    });
    let mut federates_with = Vec::new();
    for (label, body, rp) in labelled(w, f, "federates_with", fp) {
        w.unknown_keys(body, &["bundle_endpoint_url", "bundle_endpoint_profile"], &rp, |_| None);
        let td = match TrustDomain::new(label.strip_prefix("spiffe://").unwrap_or(&label)) {
            Ok(td) => td,
            Err(e) => {
                w.err(&rp, format!("not a trust domain: {e}"));
                continue;
            }
        };
        if own == Some(&td) {
            w.err(&rp, "a server cannot federate with its own trust domain");
        }
        if federates_with.iter().any(|r: &Relationship| r.trust_domain == td) {
            w.err(&rp, "trust domain given more than once");
        }
        let url = w.string(body, "bundle_endpoint_url", &rp).filter(|u| !u.is_empty());
        match &url {
            None => w.err(&join(&rp, "bundle_endpoint_url"), "must be configured"),
            Some(u) if !u.to_ascii_lowercase().starts_with("https://") => {
                w.err(&join(&rp, "bundle_endpoint_url"), format!("must use the HTTPS protocol; URL found: {}", quote(u)));
            }
            Some(_) => {}
        }
        let profiles = labelled(w, body, "bundle_endpoint_profile", &rp);
        let profile = match profiles.as_slice() {
            [] => {
                w.err(&rp, "missing bundle endpoint configuration: bundle_endpoint_profile \"https_web\" {} or \"https_spiffe\" { endpoint_spiffe_id = ... }");
                None
            }
            [(name, pb, pp)] if name == "https_web" => {
                w.unknown_keys(pb, &[], pp, |_| None);
                Some(ClientProfile::HttpsWeb)
            }
            [(name, pb, pp)] if name == "https_spiffe" => {
                w.unknown_keys(pb, &["endpoint_spiffe_id"], pp, |_| None);
                match w.string(pb, "endpoint_spiffe_id", pp).map(|s| SpiffeId::new(&s)) {
                    Some(Ok(id)) => Some(ClientProfile::HttpsSpiffe { endpoint_spiffe_id: id }),
                    Some(Err(e)) => {
                        w.err(&join(pp, "endpoint_spiffe_id"), format!("could not get endpoint SPIFFE ID: {e}"));
                        None
                    }
                    None => {
                        w.err(
                            &join(pp, "endpoint_spiffe_id"),
                            "missing: the SPIFFE ID the endpoint presents (e.g. spiffe://<td>/spire/server)",
                        );
                        None
                    }
                }
            }
            [(_, _, pp)] => {
                w.err(pp, "no bundle endpoint profile defined; current supported profiles are \"https_spiffe\" and \"https_web\"");
                None
            }
            _ => {
                w.err(&join(&rp, "bundle_endpoint_profile"), "exactly one bundle endpoint profile is expected");
                None
            }
        };
        if let (Some(url), Some(profile)) = (url, profile) {
            federates_with.push(Relationship { trust_domain: td, bundle_endpoint_url: url, profile });
        }
    }
    FederationConfig { bundle_endpoint, federates_with }
}

/// SPIRE's `activationThresholdCap`: an SVID longer than this can never be guaranteed.
const MAX_SVID_TTL: i64 = 7 * 24 * 3600;

/// SPIRE's warnings for SVID TTLs that a scheduled CA rotation may cut short
/// (`cmd/spire-server/cli/run/run.go`, the `ttlChecks` loop), word for word, with the same
/// numbers: the largest TTL guaranteed is min(ca_ttl/6, 7 days).
fn svid_ttl_warnings(ca_ttl: i64, x509: i64, jwt: i64, agent: Option<i64>) -> Vec<String> {
    let max_for_ca = (ca_ttl / 6).min(MAX_SVID_TTL);
    let mut checks = vec![("default_x509_svid_ttl", x509), ("default_jwt_svid_ttl", jwt)];
    if let Some(a) = agent {
        checks.push(("agent_ttl", a));
    }
    checks
        .into_iter()
        .filter(|&(_, ttl)| ttl > max_for_ca)
        .map(|(name, ttl)| {
            if ttl < MAX_SVID_TTL {
                format!(
                    "{name} is too high for the configured ca_ttl value. SVIDs with shorter lifetimes may be issued. Please set {name} to {} or less, or the ca_ttl to {} or more, to guarantee the full {name} lifetime when CA rotations are scheduled.",
                    go_duration(max_for_ca),
                    go_duration(ttl * 6)
                )
            } else if ca_ttl < 6 * MAX_SVID_TTL {
                format!(
                    "{name} is too high and the ca_ttl is too low. SVIDs with shorter lifetimes may be issued. Please set {name} to {} or less, and the ca_ttl to {} or more, to guarantee the full {name} lifetime when CA rotations are scheduled.",
                    go_duration(MAX_SVID_TTL),
                    go_duration(6 * MAX_SVID_TTL)
                )
            } else {
                format!(
                    "{name} is too high. SVIDs with shorter lifetimes may be issued. Please set {name} to {} or less to guarantee the full {name} lifetime when CA rotations are scheduled.",
                    go_duration(max_for_ca)
                )
            }
        })
        .collect()
}

/// A duration as SPIRE prints it (`printDuration`: Go's `Duration.String`, with a trailing
/// `0s` and then `0m` dropped): `4h`, `3h20m`, `1h0m30s`, `10m`, `90s` -> `1m30s`.
fn go_duration(secs: i64) -> String {
    let (h, m, sec) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    };
    if out.ends_with("m0s") {
        out.truncate(out.len() - 2);
    }
    if out.ends_with("h0m") {
        out.truncate(out.len() - 2);
    }
    out
}

/// How an embedded upstream agent attests.
enum EmbeddedAttestation {
    JoinToken(String),
    X509Pop { key: PathBuf, cert: PathBuf },
}

fn data_dir_for_embedded(overrides: &ServerOverrides, server: &Object) -> PathBuf {
    let base = overrides
        .data_dir
        .clone()
        .or_else(|| {
            server
                .get_all("data_dir")
                .next()
                .and_then(|i| if let super::hcl::Value::String(s) = &i.value { Some(PathBuf::from(s)) } else { None })
        })
        .unwrap_or_else(|| ".".into());
    base.join("upstream-agent")
}

/// The settings of the agent a downstream server runs in-process to authenticate upstream.
/// Files are read here, so a bad path is a config error at start.
fn embedded_settings(
    td: TrustDomain,
    addr: &str,
    port: u16,
    bundle: &str,
    attestation: EmbeddedAttestation,
    dir: PathBuf,
) -> Result<EmbeddedAgent, String> {
    use crate::attest::NodeAttestation;
    let text = std::fs::read_to_string(bundle).map_err(|e| format!("trust_bundle_path {bundle}: {e}"))?;
    let roots = crate::spiffe::parse_pem_certs(&text).map_err(|e| format!("trust_bundle_path {bundle}: {e}"))?;
    let attestation = match attestation {
        EmbeddedAttestation::JoinToken(t) => NodeAttestation::JoinToken(Some(t)),
        EmbeddedAttestation::X509Pop { key, cert } => {
            crate::attest::x509pop::load_agent_files(&key, &cert, None).map_err(|e| format!("x509pop.{e}"))?
        }
    };
    Ok(EmbeddedAgent {
        trust_domain: td,
        server_addr: format!("{addr}:{port}"),
        roots,
        attestation,
        state_dir: dir,
        sync_interval: std::time::Duration::from_secs(1),
    })
}

/// The plugin_data keys that choose a PKCS#11 token and log in to it.
const TOKEN_KEYS: &[&str] = &["module_path", "token_label", "pin", "pin_file", "pin_env", "max_sessions"];

fn token_key_hint(key: &str) -> Option<&'static str> {
    match key {
        "slot" | "slot_id" | "slot_number" | "token_slot" => {
            Some("tokens are chosen by token_label: slot numbers change when a token is initialised")
        }
        "user_pin" | "pin_code" => Some("the PIN is given as pin, pin_file or pin_env"),
        _ => None,
    }
}

/// `module_path`, `token_label`, exactly one of `pin`, `pin_file`, `pin_env`, and optionally
/// `max_sessions` (at least 1).
fn token_config(w: &mut Walker, data: &Object, path: &str) -> Option<crate::keymanager::pkcs11::TokenConfig> {
    use crate::keymanager::pkcs11::{PinSource, TokenConfig};
    let module = w.string(data, "module_path", path).filter(|m| !m.is_empty());
    let label = w.string(data, "token_label", path).filter(|l| !l.is_empty());
    if module.is_none() {
        w.err(&join(path, "module_path"), "missing: the PKCS#11 library (e.g. /usr/lib/softhsm/libsofthsm2.so)");
    }
    if label.is_none() {
        w.err(&join(path, "token_label"), "missing: the label of the token that holds the keys");
    }
    let pin = w.string(data, "pin", path).map(|p| PinSource::Value(zeroize::Zeroizing::new(p)));
    let file = w.string(data, "pin_file", path).map(|p| PinSource::File(p.into()));
    let env = w.string(data, "pin_env", path).map(PinSource::Env);
    let mut given: Vec<PinSource> = [pin, file, env].into_iter().flatten().collect();
    let pin = match given.len() {
        1 => given.pop(),
        0 => {
            w.err(&join(path, "pin"), "missing: give the user PIN as pin, pin_file (a 0600 file) or pin_env (an environment variable)");
            None
        }
        _ => {
            w.err(&join(path, "pin"), "give exactly one of pin, pin_file and pin_env");
            None
        }
    };
    let max_sessions = match w.count(data, "max_sessions", path) {
        None => Some(crate::keymanager::pkcs11::DEFAULT_MAX_SESSIONS),
        Some(0) => {
            w.err(&join(path, "max_sessions"), "must be at least 1: no session would sign");
            None
        }
        Some(n) => usize::try_from(n).ok(),
    };
    Some(TokenConfig { module_path: module?.into(), token_label: label?, pin: pin?, max_sessions: max_sessions? })
}

/// Keys every Vault plugin block shares (SPIRE's `vault` UpstreamAuthority and
/// `hashicorp_vault` KeyManager).
const VAULT_KEYS: &[&str] =
    &["vault_addr", "namespace", "ca_cert_path", "insecure_skip_verify", "token_auth", "approle_auth", "cert_auth", "k8s_auth"];

/// The connection and the one authentication method of a Vault plugin block.
fn vault_settings(w: &mut Walker, data: &Object, path: &str) -> Option<crate::vault::VaultSettings> {
    use crate::vault::{AuthSettings, Secret, VaultSettings};
    let nonempty = |s: Option<String>| s.filter(|v| !v.is_empty());
    let vault_addr = nonempty(w.string(data, "vault_addr", path));
    let namespace = nonempty(w.string(data, "namespace", path));
    let ca_cert_path = nonempty(w.string(data, "ca_cert_path", path)).map(PathBuf::from);
    let insecure_skip_verify = w.boolean(data, "insecure_skip_verify", path).unwrap_or(false);
    let mut methods: Vec<AuthSettings> = Vec::new();
    let mut named: Vec<&str> = Vec::new();
    if let Some(o) = w.block(data, "token_auth", path) {
        let p = join(path, "token_auth");
        w.unknown_keys(o, &["token"], &p, |_| None);
        methods.push(AuthSettings::Token { token: nonempty(w.string(o, "token", &p)).map(Secret::new) });
        named.push("token_auth");
    }
    if let Some(o) = w.block(data, "approle_auth", path) {
        let p = join(path, "approle_auth");
        w.unknown_keys(o, &["approle_auth_mount_point", "approle_id", "approle_secret_id"], &p, |_| None);
        methods.push(AuthSettings::AppRole {
            mount: nonempty(w.string(o, "approle_auth_mount_point", &p)).unwrap_or_else(|| "approle".into()),
            role_id: nonempty(w.string(o, "approle_id", &p)),
            secret_id: nonempty(w.string(o, "approle_secret_id", &p)).map(Secret::new),
        });
        named.push("approle_auth");
    }
    if let Some(o) = w.block(data, "cert_auth", path) {
        let p = join(path, "cert_auth");
        w.unknown_keys(o, &["cert_auth_mount_point", "cert_auth_role_name", "client_cert_path", "client_key_path"], &p, |_| None);
        methods.push(AuthSettings::Cert {
            mount: nonempty(w.string(o, "cert_auth_mount_point", &p)).unwrap_or_else(|| "cert".into()),
            role_name: nonempty(w.string(o, "cert_auth_role_name", &p)),
            client_cert_path: nonempty(w.string(o, "client_cert_path", &p)).map(PathBuf::from),
            client_key_path: nonempty(w.string(o, "client_key_path", &p)).map(PathBuf::from),
        });
        named.push("cert_auth");
    }
    if let Some(o) = w.block(data, "k8s_auth", path) {
        let p = join(path, "k8s_auth");
        w.unknown_keys(o, &["k8s_auth_mount_point", "k8s_auth_role_name", "token_path"], &p, |_| None);
        let role = nonempty(w.string(o, "k8s_auth_role_name", &p));
        let token_path = nonempty(w.string(o, "token_path", &p));
        if role.is_none() {
            w.err(&join(&p, "k8s_auth_role_name"), "missing: the Vault role to log in against");
        }
        if token_path.is_none() {
            w.err(&join(&p, "token_path"), "missing: the service account token file (e.g. /var/run/secrets/tokens/vault)");
        }
        if let (Some(role_name), Some(t)) = (role, token_path) {
            methods.push(AuthSettings::K8s {
                mount: nonempty(w.string(o, "k8s_auth_mount_point", &p)).unwrap_or_else(|| "kubernetes".into()),
                role_name,
                token_path: t.into(),
            });
        }
        named.push("k8s_auth");
    }
    let auth = match named.len() {
        0 => {
            w.err(path, "must be configured one of these authentication method: token_auth, approle_auth, cert_auth or k8s_auth");
            None
        }
        1 => methods.pop(),
        _ => {
            w.err(path, format!("only one authentication method can be configured, got {}", named.join(", ")));
            None
        }
    };
    Some(VaultSettings { vault_addr, namespace, ca_cert_path, insecure_skip_verify, auth: auth? })
}

struct Plugins {
    datastore: DatastoreConfig,
    key_manager: KeyManagerConfig,
    node_attestors: Vec<String>,
    x509pop: Option<X509PopSettings>,
    upstream: Option<UpstreamConfig>,
}

impl Plugins {
    fn read(
        w: &mut Walker,
        tree: &Object,
        trust_domain: Option<&TrustDomain>,
        overrides: &ServerOverrides,
        server: &Object,
    ) -> Option<Self> {
        let Some(plugins) = w.block(tree, "plugins", "") else {
            w.err("plugins", "missing: a plugins { ... } block with DataStore and KeyManager is required");
            return None;
        };
        w.unknown_keys(
            plugins,
            &["DataStore", "KeyManager", "NodeAttestor", "UpstreamAuthority", "Notifier", "BundlePublisher", "CredentialComposer"],
            "plugins",
            |k| match k {
                "NodeResolver" => Some("the NodeResolver plugin type was removed from SPIRE; delete this block"),
                "UpstreamCA" => Some("renamed: use UpstreamAuthority"),
                _ => None,
            },
        );
        for kind in ["Notifier", "BundlePublisher", "CredentialComposer"] {
            if plugins.get_all(kind).next().is_some() {
                w.err(&join("plugins", kind), "this plugin type is not supported by cairn yet");
            }
        }
        let empty = Object::default();

        let ds = plugin_decls(w, plugins, "DataStore");
        let datastore = match ds.as_slice() {
            [d] if d.name == "sql" => {
                let data = d.data.as_deref().unwrap_or(&empty);
                w.unsupported_and_unknown_keys(
                    data,
                    &[
                        "database_type",
                        "connection_string",
                        "ro_connection_string",
                        "disable_migration",
                        "max_open_conns",
                        "max_idle_conns",
                        "conn_max_lifetime",
                        "root_ca_path",
                        "client_cert_path",
                        "client_key_path",
                    ],
                    &d.path,
                    |_| None,
                    |_| None,
                );
                let mut settings = crate::datastore::sql::ConnectSettings::default();
                if w.boolean(data, "disable_migration", &d.path) == Some(true) {
                    settings.migrate = false;
                }
                if let Some(n) = w.count(data, "max_open_conns", &d.path) {
                    settings.max_open = n.max(1);
                }
                if let Some(n) = w.count(data, "max_idle_conns", &d.path) {
                    if n == 0 {
                        settings.idle_timeout = Some(std::time::Duration::ZERO);
                    } else {
                        w.notice(
                            &join(&d.path, "max_idle_conns"),
                            "the pool closes connections idle for 10 minutes rather than capping how many stay idle",
                        );
                    }
                }
                if let Some(secs) = w.duration(data, "conn_max_lifetime", &d.path) {
                    settings.max_lifetime = (secs > 0).then(|| std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0)));
                }
                let database_type = w.string(data, "database_type", &d.path);
                // SPIRE's TLS files for MySQL (PostgreSQL takes sslrootcert/sslcert/sslkey in its
                // connection string).
                for (key, slot) in [
                    ("root_ca_path", &mut settings.mysql_tls.root_ca),
                    ("client_cert_path", &mut settings.mysql_tls.client_cert),
                    ("client_key_path", &mut settings.mysql_tls.client_key),
                ] {
                    if let Some(v) = w.string(data, key, &d.path).filter(|v| !v.is_empty()) {
                        if database_type.as_deref() != Some("mysql") {
                            w.err(
                                &join(&d.path, key),
                                "MySQL only; for PostgreSQL put sslrootcert, sslcert and sslkey in connection_string",
                            );
                        }
                        *slot = Some(v.into());
                    }
                }
                if settings.mysql_tls.client_cert.is_some() != settings.mysql_tls.client_key.is_some() {
                    w.err(&d.path, "client_cert_path and client_key_path go together");
                }
                let connection_string = w.string(data, "connection_string", &d.path);
                match database_type.as_deref() {
                    None => w.err(&join(&d.path, "database_type"), "missing (e.g. \"sqlite3\")"),
                    Some("sqlite3" | "postgres" | "mysql") => {}
                    Some(t) => w.err(&join(&d.path, "database_type"), format!("{}: expected sqlite3, postgres or mysql", quote(t))),
                }
                if connection_string.as_deref().is_none_or(str::is_empty) {
                    w.err(&join(&d.path, "connection_string"), "missing (for sqlite3: a file path such as \"./data/datastore.sqlite3\")");
                }
                let ro_connection_string = w.string(data, "ro_connection_string", &d.path).filter(|s| !s.is_empty());
                if ro_connection_string.is_some() && database_type.as_deref() == Some("sqlite3") {
                    w.err(&join(&d.path, "ro_connection_string"), "read replicas are for database_type postgres and mysql");
                }
                match (database_type, connection_string) {
                    (Some(t), Some(c)) => Some(DatastoreConfig { database_type: t, connection_string: c, ro_connection_string, settings }),
                    _ => None,
                }
            }
            [d] => {
                w.err(&d.path.replace(".plugin_data", ""), "unknown DataStore: the only one is \"sql\"");
                None
            }
            [] => {
                w.err("plugins.DataStore", "missing: configure DataStore \"sql\"");
                None
            }
            _ => {
                w.err("plugins.DataStore", "exactly one DataStore may be configured");
                None
            }
        };

        let km = plugin_decls(w, plugins, "KeyManager");
        let key_manager = match km.as_slice() {
            [k] if k.name == "memory" => {
                if let Some(d) = k.data.as_deref() {
                    w.unknown_keys(d, &[], &k.path, |_| None);
                }
                Some(KeyManagerConfig::Memory)
            }
            [k] if k.name == "disk" => {
                let data = k.data.as_deref().unwrap_or(&empty);
                w.unknown_keys(data, &["keys_path"], &k.path, |_| None);
                match w.string(data, "keys_path", &k.path) {
                    Some(p) if !p.is_empty() => Some(KeyManagerConfig::Disk { keys_path: p.into() }),
                    _ => {
                        w.err(&join(&k.path, "keys_path"), "missing: the file the disk key manager keeps keys in");
                        None
                    }
                }
            }
            [k] if k.name == "hashicorp_vault" => {
                use crate::keymanager::vault::{KeyIdentifier, VaultKeyManagerConfig};
                let data = k.data.as_deref().unwrap_or(&empty);
                let mut known = VAULT_KEYS.to_vec();
                known.extend(["transit_engine_path", "key_identifier_file", "key_identifier_value"]);
                w.unknown_keys(data, &known, &k.path, |k| (k == "pki_mount_point").then_some("that is UpstreamAuthority \"vault\"'s key"));
                let transit = w.string(data, "transit_engine_path", &k.path).filter(|t| !t.trim_matches('/').is_empty());
                let file = w.string(data, "key_identifier_file", &k.path).filter(|f| !f.is_empty());
                let value = w.string(data, "key_identifier_value", &k.path).filter(|v| !v.is_empty());
                let key_identifier = match (file, value) {
                    (Some(f), None) => Some(KeyIdentifier::File(f.into())),
                    (None, Some(v)) => Some(KeyIdentifier::Value(v)),
                    (Some(_), Some(_)) => {
                        w.err(&k.path, "only one of 'key_identifier_file' or 'key_identifier_value' should be provided");
                        None
                    }
                    (None, None) => {
                        w.err(
                            &k.path,
                            "one of 'key_identifier_file' or 'key_identifier_value' must be provided (it keeps this server's keys apart from others' on the transit mount)",
                        );
                        None
                    }
                };
                let vault = vault_settings(w, data, &k.path);
                match (vault, key_identifier) {
                    (Some(vault), Some(key_identifier)) => Some(KeyManagerConfig::HashicorpVault(VaultKeyManagerConfig {
                        vault,
                        transit_engine_path: transit,
                        key_identifier,
                    })),
                    _ => None,
                }
            }
            [k] if k.name == "pkcs11" => {
                let data = k.data.as_deref().unwrap_or(&empty);
                let mut known = TOKEN_KEYS.to_vec();
                known.push("key_label_prefix");
                w.unknown_keys(data, &known, &k.path, token_key_hint);
                let prefix = w
                    .string(data, "key_label_prefix", &k.path)
                    .unwrap_or_else(|| crate::keymanager::pkcs11::DEFAULT_KEY_LABEL_PREFIX.to_owned());
                if prefix.is_empty() {
                    w.err(&join(&k.path, "key_label_prefix"), "must not be empty: it keeps cairn's keys apart from others on the token");
                }
                token_config(w, data, &k.path)
                    .map(|token| KeyManagerConfig::Pkcs11(crate::keymanager::pkcs11::Pkcs11Config { token, key_label_prefix: prefix }))
            }
            [k] => {
                w.err(
                    &k.path.replace(".plugin_data", ""),
                    "unknown KeyManager: expected \"memory\", \"disk\", \"pkcs11\" or \"hashicorp_vault\"",
                );
                None
            }
            [] => {
                w.err("plugins.KeyManager", "missing: configure KeyManager \"disk\", \"pkcs11\" or \"memory\"");
                None
            }
            _ => {
                w.err("plugins.KeyManager", "exactly one KeyManager may be configured");
                None
            }
        };

        let mut node_attestors = Vec::new();
        let mut x509pop = None;
        for na in plugin_decls(w, plugins, "NodeAttestor") {
            match na.name.as_str() {
                "join_token" => {
                    if let Some(d) = na.data.as_deref() {
                        w.unknown_keys(d, &[], &na.path, |_| None);
                    }
                    node_attestors.push(na.name);
                }
                "x509pop" => {
                    let data = na.data.as_deref().unwrap_or(&empty);
                    w.unknown_keys(data, &["ca_bundle_path", "ca_bundle_paths", "agent_path_template", "mode"], &na.path, |_| None);
                    if let Some(mode) = w.string(data, "mode", &na.path).filter(|m| m != "external_pki") {
                        w.err(&join(&na.path, "mode"), format!("{}: this cairn supports external_pki", quote(mode)));
                    }
                    let mut paths: Vec<PathBuf> = w.string(data, "ca_bundle_path", &na.path).into_iter().map(PathBuf::from).collect();
                    paths.extend(w.strings(data, "ca_bundle_paths", &na.path).unwrap_or_default().into_iter().map(PathBuf::from));
                    if paths.is_empty() {
                        w.err(&join(&na.path, "ca_bundle_path"), "missing: the PEM file of the CA that signs node certificates");
                    }
                    let agent_path_template = w.string(data, "agent_path_template", &na.path);
                    x509pop = Some(X509PopSettings { ca_bundle_paths: paths, agent_path_template });
                    node_attestors.push(na.name);
                }
                other => w.err(
                    &na.path.replace(".plugin_data", ""),
                    format!("unknown NodeAttestor {}: this cairn has join_token and x509pop", quote(other)),
                ),
            }
        }

        let ua = plugin_decls(w, plugins, "UpstreamAuthority");
        let upstream = match ua.as_slice() {
            [] => None,
            [u] if u.name == "disk" => {
                let data = u.data.as_deref().unwrap_or(&empty);
                w.unknown_keys(data, &["cert_file_path", "key_file_path", "bundle_file_path"], &u.path, |k| match k {
                    "ttl" => Some("removed: the downstream's ca_ttl decides"),
                    _ => None,
                });
                let cert = w.string(data, "cert_file_path", &u.path).filter(|s| !s.is_empty());
                let key = w.string(data, "key_file_path", &u.path).filter(|s| !s.is_empty());
                let bundle = w.string(data, "bundle_file_path", &u.path).filter(|s| !s.is_empty());
                if cert.is_none() || key.is_none() {
                    // SPIRE's words, which operators' checks look for.
                    let which = if cert.is_none() { "cert_file_path" } else { "key_file_path" };
                    w.err(&join(&u.path, which), "'cert_file_path' and 'key_file_path' must be set and not empty");
                }
                match (cert, key) {
                    (Some(c), Some(k)) => Some(UpstreamConfig::Disk(DiskUpstreamConfig {
                        cert_file_path: c.into(),
                        key_file_path: k.into(),
                        bundle_file_path: bundle.map(PathBuf::from),
                    })),
                    _ => None,
                }
            }
            [u] if u.name == "spire" => {
                let data = u.data.as_deref().unwrap_or(&empty);
                w.unknown_keys(
                    data,
                    &[
                        "server_address",
                        "server_port",
                        "workload_api_socket",
                        "join_token",
                        "x509pop",
                        "trust_bundle_path",
                        "agent_data_dir",
                        "experimental",
                    ],
                    &u.path,
                    |_| None,
                );
                let addr = w.string(data, "server_address", &u.path);
                let port = w.port(data, "server_port", &u.path);
                let socket = w.string(data, "workload_api_socket", &u.path);
                let token = w.string(data, "join_token", &u.path);
                let pop = w.block(data, "x509pop", &u.path);
                let bundle = w.string(data, "trust_bundle_path", &u.path);
                let agent_dir = w.string(data, "agent_data_dir", &u.path);
                if addr.is_none() {
                    w.err(&join(&u.path, "server_address"), "missing: the upstream server's address");
                }
                if port.is_none() {
                    w.err(&join(&u.path, "server_port"), "missing: the upstream server's port");
                }
                let embedded = token.is_some() || pop.is_some();
                let identity = match (socket, embedded) {
                    (Some(s), false) => Some(IdentitySource::WorkloadApi(s.into())),
                    (Some(_), true) => {
                        w.err(
                            &join(&u.path, "workload_api_socket"),
                            "give either workload_api_socket (an upper-tier agent on this host) or join_token/x509pop (this server attests itself), not both",
                        );
                        None
                    }
                    (None, false) => {
                        w.err(
                            &join(&u.path, "workload_api_socket"),
                            "missing: the Workload API socket of the upper tier's agent on this host (or join_token / x509pop for an embedded agent identity)",
                        );
                        None
                    }
                    (None, true) => {
                        if bundle.is_none() {
                            w.err(
                                &join(&u.path, "trust_bundle_path"),
                                "missing: the upstream's bundle (PEM) to trust it before the first attestation",
                            );
                        }
                        let attestation = if let Some(o) = pop {
                            let pp = join(&u.path, "x509pop");
                            w.unknown_keys(o, &["private_key_path", "certificate_path"], &pp, |_| None);
                            let k = w.string(o, "private_key_path", &pp);
                            let c = w.string(o, "certificate_path", &pp);
                            match (k, c) {
                                (Some(k), Some(c)) => Some(EmbeddedAttestation::X509Pop { key: k.into(), cert: c.into() }),
                                _ => {
                                    w.err(&pp, "needs private_key_path and certificate_path");
                                    None
                                }
                            }
                        } else {
                            token.map(EmbeddedAttestation::JoinToken)
                        };
                        match (trust_domain.cloned(), bundle, attestation, &addr, port) {
                            (Some(td), Some(b), Some(a), Some(addr), Some(port)) => {
                                let dir = agent_dir.map_or_else(|| data_dir_for_embedded(overrides, server), PathBuf::from);
                                match embedded_settings(td, addr, port, &b, a, dir) {
                                    Ok(s) => Some(IdentitySource::Embedded(Box::new(s))),
                                    Err(e) => {
                                        w.err(&u.path, e);
                                        None
                                    }
                                }
                            }
                            _ => None,
                        }
                    }
                };
                match (addr, port, identity) {
                    (Some(server_address), Some(server_port), Some(identity)) => {
                        Some(UpstreamConfig::Spire(SpireUpstreamConfig { server_address, server_port, identity }))
                    }
                    _ => None,
                }
            }
            [u] if u.name == "pkcs11" => {
                let data = u.data.as_deref().unwrap_or(&empty);
                let mut known = TOKEN_KEYS.to_vec();
                known.extend(["key_label", "cert_file_path", "bundle_file_path"]);
                w.unknown_keys(data, &known, &u.path, |k| match k {
                    "key_file_path" => Some("the key is on the token: name it with key_label"),
                    other => token_key_hint(other),
                });
                let cert = w.string(data, "cert_file_path", &u.path);
                let label = w.string(data, "key_label", &u.path).filter(|l| !l.is_empty());
                let bundle = w.string(data, "bundle_file_path", &u.path).filter(|s| !s.is_empty());
                if cert.is_none() {
                    w.err(&join(&u.path, "cert_file_path"), "missing: the upstream CA certificate (as `cairn hsm init-root` writes it)");
                }
                if label.is_none() {
                    w.err(&join(&u.path, "key_label"), "missing: the label of the upstream CA's key on the token");
                }
                match (token_config(w, data, &u.path), cert, label) {
                    (Some(token), Some(c), Some(key_label)) => Some(UpstreamConfig::Pkcs11(Pkcs11UpstreamConfig {
                        token,
                        key_label,
                        cert_file_path: c.into(),
                        bundle_file_path: bundle.map(PathBuf::from),
                    })),
                    _ => None,
                }
            }
            [u] if u.name == "vault" => {
                let data = u.data.as_deref().unwrap_or(&empty);
                let mut known = VAULT_KEYS.to_vec();
                known.push("pki_mount_point");
                w.unknown_keys(data, &known, &u.path, |_| None);
                let mount = w.string(data, "pki_mount_point", &u.path).filter(|m| !m.trim_matches('/').is_empty());
                vault_settings(w, data, &u.path).map(|vault| {
                    UpstreamConfig::Vault(VaultUpstreamConfig { vault, pki_mount_point: mount.unwrap_or_else(|| "pki".into()) })
                })
            }
            [u] => {
                w.err(
                    &u.path.replace(".plugin_data", ""),
                    "unknown UpstreamAuthority: this cairn has \"disk\", \"pkcs11\", \"spire\" and \"vault\"",
                );
                None
            }
            _ => {
                w.err("plugins.UpstreamAuthority", "at most one UpstreamAuthority may be configured");
                None
            }
        };
        Some(Self { datastore: datastore?, key_manager: key_manager?, node_attestors, x509pop, upstream })
    }
}

#[cfg(test)]
mod tests;
