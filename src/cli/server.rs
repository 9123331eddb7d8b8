//! `cairn server ...` subcommands.

use super::client::connect_admin;
use crate::config::server::{DEFAULT_SOCKET_PATH, ServerConfig, ServerOverrides};
use crate::spiffe::{Bundle, SpiffeId, TrustDomain};
use crate::wire::convert::{bundle_from_proto, id_to_proto};
use crate::wire::pb::spire::api::server::{agent::v1 as agentpb, bundle::v1 as bundlepb, svid::v1 as svidpb};
use crate::wire::pb::spire::api::types as pt;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// `cairn server` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Run the server.
    Run(RunArgs),
    /// Check a config file and report every problem.
    Validate(RunArgs),
    /// Is the server up and serving?
    Healthcheck(HealthArgs),
    /// Registration entries.
    Entry {
        #[command(subcommand)]
        command: super::entry::EntryCommand,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The trust bundle and federated bundles.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Mint X509-SVIDs.
    X509 {
        #[command(subcommand)]
        command: X509Command,
    },
    /// Mint JWT-SVIDs.
    Jwt {
        #[command(subcommand)]
        command: JwtCommand,
    },
    /// Attested agents.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Dynamic federation relationships (Trust Domain API).
    Federation {
        #[command(subcommand)]
        command: super::federation::FederationCommand,
    },
    /// Forced rotation, taint and revocation of this tier's authorities (Local Authority API).
    Localauthority {
        #[command(subcommand)]
        command: super::localauthority::LocalAuthorityCommand,
    },
    /// The running log level (Logger API).
    Logger {
        #[command(subcommand)]
        command: super::logger::LoggerCommand,
    },
    /// Taint and revocation of the upstream authority that signed this tier's old X.509 CA.
    Upstreamauthority {
        #[command(subcommand)]
        command: super::localauthority::UpstreamAuthorityCommand,
    },
}

/// Flags of `run` and `validate` (SPIRE's).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Path to the config file.
    #[arg(long, default_value = "conf/server/server.conf")]
    config: PathBuf,
    /// Expand $VAR and ${VAR} in the config file.
    #[arg(long)]
    expand_env: bool,
    /// Override trust_domain.
    #[arg(long)]
    trust_domain: Option<String>,
    /// Override bind_address.
    #[arg(long)]
    bind_address: Option<String>,
    /// Override bind_port.
    #[arg(long)]
    server_port: Option<u16>,
    /// Override socket_path.
    #[arg(long)]
    socket_path: Option<PathBuf>,
    /// Override data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override log_level.
    #[arg(long)]
    log_level: Option<String>,
    /// Override log_format (text or json).
    #[arg(long)]
    log_format: Option<String>,
    /// Override log_file.
    #[arg(long)]
    log_file: Option<PathBuf>,
}

/// Flags shared by admin commands.
#[derive(Debug, Args, Clone)]
pub struct Sock {
    /// Path to the server's admin socket.
    #[arg(long, default_value = DEFAULT_SOCKET_PATH, global = true)]
    pub(crate) socket_path: PathBuf,
    /// Output format: pretty or json.
    #[arg(long, default_value = "pretty", global = true)]
    pub(crate) output: String,
    /// Instance name substituted for `%i` in $SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE.
    #[arg(long, global = true)]
    pub(crate) instance: Option<String>,
}

impl Sock {
    /// The admin socket to dial, chosen as SPIRE's CLI chooses: an explicit -socketPath, else
    /// -instance in $SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE, else $SPIRE_SERVER_PRIVATE_SOCKET,
    /// else the default.
    ///
    /// # Errors
    /// -instance without a template holding `%i`.
    pub(crate) fn path(&self) -> Result<PathBuf, String> {
        const TEMPLATE: &str = "SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE";
        let tpl = std::env::var(TEMPLATE).unwrap_or_default();
        if self.instance.is_some() {
            if tpl.is_empty() {
                return Err(format!("you must define {TEMPLATE} to use the instance flag"));
            }
            if !tpl.contains("%i") {
                return Err(format!("failed to find %i in {TEMPLATE}"));
            }
        }
        let sock = std::env::var("SPIRE_SERVER_PRIVATE_SOCKET").unwrap_or_default();
        Ok(if self.socket_path != std::path::Path::new(DEFAULT_SOCKET_PATH) {
            self.socket_path.clone()
        } else if let Some(i) = &self.instance {
            PathBuf::from(tpl.replace("%i", i))
        } else if !sock.is_empty() {
            PathBuf::from(sock)
        } else {
            self.socket_path.clone()
        })
    }
}

/// `healthcheck` flags.
#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    sock: Sock,
    /// Only check that the socket answers.
    #[arg(long)]
    shallow: bool,
    /// Print what is checked.
    #[arg(long)]
    verbose: bool,
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Generate a join token.
    Generate {
        /// Register this ID as an alias of the agent that attests with the token.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Token TTL: seconds or a duration (`10m`).
        #[arg(long, default_value_t = 600, value_parser = super::parse_ttl)]
        ttl: i32,
        #[command(flatten)]
        sock: Sock,
    },
}

/// `bundle` subcommands.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Show this trust domain's bundle.
    Show {
        /// pem or spiffe.
        #[arg(long, default_value = "pem")]
        format: String,
        #[command(flatten)]
        sock: Sock,
    },
    /// List federated bundles.
    List {
        /// Only this trust domain.
        #[arg(long)]
        id: Option<String>,
        /// pem or spiffe.
        #[arg(long, default_value = "pem")]
        format: String,
        #[command(flatten)]
        sock: Sock,
    },
    /// Create or replace a federated bundle.
    Set {
        /// Trust domain (SPIFFE ID form or bare name).
        #[arg(long)]
        id: String,
        /// File to read (stdin when absent).
        #[arg(long)]
        path: Option<PathBuf>,
        /// pem or spiffe.
        #[arg(long, default_value = "pem")]
        format: String,
        #[command(flatten)]
        sock: Sock,
    },
    /// Delete a federated bundle.
    Delete {
        /// Trust domain.
        #[arg(long)]
        id: String,
        /// restrict, delete or dissociate.
        #[arg(long, default_value = "restrict")]
        mode: String,
        #[command(flatten)]
        sock: Sock,
    },
    /// Count bundles.
    Count {
        #[command(flatten)]
        sock: Sock,
    },
}

/// `x509` subcommands.
#[derive(Debug, Subcommand)]
pub enum X509Command {
    /// Mint an X509-SVID (key made here, CSR sent).
    Mint {
        /// SPIFFE ID.
        #[arg(long)]
        spiffe_id: String,
        /// DNS SAN (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// TTL: seconds or a duration (`1h`, `90s`); 0 = server default.
        #[arg(long, default_value_t = 0, value_parser = super::parse_ttl)]
        ttl: i32,
        /// Directory to write svid.pem, key.pem, bundle.pem into.
        #[arg(long)]
        write: Option<PathBuf>,
        #[command(flatten)]
        sock: Sock,
    },
}

/// `jwt` subcommands.
#[derive(Debug, Subcommand)]
pub enum JwtCommand {
    /// Mint a JWT-SVID.
    Mint {
        /// SPIFFE ID.
        #[arg(long)]
        spiffe_id: String,
        /// Audience (repeatable).
        #[arg(long)]
        audience: Vec<String>,
        /// TTL: seconds or a duration (`1h`, `90s`); 0 = server default.
        #[arg(long, default_value_t = 0, value_parser = super::parse_ttl)]
        ttl: i32,
        /// File to write the token into.
        #[arg(long)]
        write: Option<PathBuf>,
        #[command(flatten)]
        sock: Sock,
    },
}

/// Filters of `agent list` and `agent count` (SPIRE's).
#[derive(Debug, Args, Clone)]
pub struct AgentQuery {
    /// Filter by node selector (repeatable).
    #[arg(long)]
    selector: Vec<String>,
    /// Selector match mode: exact, any, superset or subset.
    #[arg(long, default_value = "superset")]
    match_selectors_on: String,
    /// Filter by attestation type (join_token, x509pop, ...).
    #[arg(long)]
    attestation_type: Option<String>,
    /// `true`: agents that can re-attest; `false`: those that cannot; anything else: all.
    #[arg(long)]
    can_reattest: Option<String>,
    /// `true`: banned agents; `false`: agents not banned; anything else: all.
    #[arg(long)]
    banned: Option<String>,
    /// Agents whose SVID expires before this time ("2006-01-02 15:04:05 -0700 -07").
    #[arg(long)]
    expires_before: Option<String>,
}

/// `agent` subcommands.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List agents.
    List {
        #[command(flatten)]
        q: AgentQuery,
        #[command(flatten)]
        sock: Sock,
    },
    /// Delete agents that can re-attest and whose SVID expired long ago.
    Purge {
        /// How long ago the SVID must have expired (Go duration).
        #[arg(long, default_value = "720h")]
        expired_for: String,
        /// Only print what would be purged.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        sock: Sock,
    },
    /// Show one agent.
    Show {
        /// Agent SPIFFE ID.
        #[arg(long)]
        spiffe_id: String,
        #[command(flatten)]
        sock: Sock,
    },
    /// Evict (delete) an agent; it may attest again.
    Evict {
        /// Agent SPIFFE ID.
        #[arg(long)]
        spiffe_id: String,
        #[command(flatten)]
        sock: Sock,
    },
    /// Ban an agent.
    Ban {
        /// Agent SPIFFE ID.
        #[arg(long)]
        spiffe_id: String,
        #[command(flatten)]
        sock: Sock,
    },
    /// Count agents.
    Count {
        #[command(flatten)]
        q: AgentQuery,
        #[command(flatten)]
        sock: Sock,
    },
}

/// The filter the `agent list|count` flags describe, checked as SPIRE checks them.
fn agent_filter(q: &AgentQuery) -> Result<agentpb::list_agents_request::Filter, String> {
    let mut f = agentpb::list_agents_request::Filter::default();
    if !q.selector.is_empty() {
        // SPIRE's agent commands word an unknown mode differently from its entry commands.
        let m = super::entry::match_behaviour(&q.match_selectors_on).map_err(|_| "unsupported match behavior".to_owned())?;
        let selectors = q
            .selector
            .iter()
            .map(|s| super::entry::parse_selector(s).map_err(|e| format!("error parsing selector {s:?}: {e}")))
            .collect::<Result<_, _>>()?;
        f.by_selector_match = Some(pt::SelectorMatch { selectors, r#match: m });
    }
    if let Some(e) = q.expires_before.as_ref().filter(|e| !e.is_empty()) {
        // Go's layout has four space-separated parts (the zone abbreviation last); the server
        // reads the time with the same parser.
        if e.split(' ').count() != 4 || crate::api::agent::parse_expires_before(e).is_none() {
            return Err(format!("date is not valid: {e:?} does not match \"2006-01-02 15:04:05 -0700 -07\""));
        }
        f.by_expires_before.clone_from(e);
    }
    if let Some(t) = q.attestation_type.as_ref().filter(|t| !t.is_empty()) {
        f.by_attestation_type.clone_from(t);
    }
    let tri = |v: &Option<String>| match v.as_deref() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    };
    f.by_can_reattest = tri(&q.can_reattest);
    f.by_banned = tri(&q.banned);
    Ok(f)
}

type CliResult = Result<(), String>;

fn s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn status_msg(st: &tonic::Status) -> String {
    format!("{}: {}", code_name(st.code()), st.message())
}

/// A gRPC error as Go's client prints it, which SPIRE's CLI messages embed.
pub(crate) fn rpc_error(st: &tonic::Status) -> String {
    format!("rpc error: code = {} desc = {}", code_name(st.code()), st.message())
}

pub(crate) fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match c {
        C::InvalidArgument => "InvalidArgument",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::Unauthenticated => "Unauthenticated",
        C::Unavailable => "Unavailable",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Ok => "OK",
        C::Cancelled => "Canceled",
        C::Unknown => "Unknown",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::DataLoss => "DataLoss",
    }
}

/// Runs one `cairn server` subcommand.
///
/// # Errors
/// A message for the operator.
pub async fn run(cmd: ServerCommand) -> CliResult {
    match cmd {
        ServerCommand::Run(a) => run_server(a).await,
        ServerCommand::Validate(a) => {
            let config = ServerConfig::load(&a.config, a.expand_env, &overrides(&a))
                .map_err(|e| format!("SPIRE server configuration file is invalid: config {} is not valid:\n{e}", a.config.display()))?;
            // Keys accepted without effect are shown, on stderr so stdout stays SPIRE's.
            for n in &config.notices {
                eprintln!("note: {n}");
            }
            // SPIRE's TTL warnings: the config works, but SVIDs may be cut short.
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            outln!("SPIRE server configuration file is valid.");
            Ok(())
        }
        ServerCommand::Healthcheck(h) => healthcheck(h).await,
        ServerCommand::Entry { command } => super::entry::run(command).await,
        ServerCommand::Token { command } => token(command).await,
        ServerCommand::Bundle { command } => bundle(command).await,
        ServerCommand::X509 { command } => x509(command).await,
        ServerCommand::Jwt { command } => jwt(command).await,
        ServerCommand::Agent { command } => agent(command).await,
        ServerCommand::Federation { command } => super::federation::run(command).await,
        ServerCommand::Localauthority { command } => super::localauthority::run(command).await,
        ServerCommand::Logger { command } => super::logger::run(command, super::logger::Program::Server).await,
        ServerCommand::Upstreamauthority { command } => super::localauthority::run_upstream(command).await,
    }
}

fn overrides(a: &RunArgs) -> ServerOverrides {
    ServerOverrides {
        trust_domain: a.trust_domain.clone(),
        bind_address: a.bind_address.clone(),
        server_port: a.server_port,
        socket_path: a.socket_path.clone(),
        data_dir: a.data_dir.clone(),
        log_level: a.log_level.clone(),
        log_format: a.log_format.clone(),
        log_file: a.log_file.clone(),
    }
}

async fn run_server(a: RunArgs) -> CliResult {
    let config = ServerConfig::load(&a.config, a.expand_env, &overrides(&a))
        .map_err(|e| format!("config {} is not valid:\n{e}", a.config.display()))?;
    crate::telemetry::init(&config.log_settings()).map_err(|e| e.to_string())?;
    for n in &config.notices {
        tracing::info!("config {n}");
    }
    let addr = format!("{}:{}", config.bind_address, config.bind_port);
    let tcp = tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("server.bind_address/bind_port {addr}: {e}"))?;
    let uds = crate::server::bind_admin_socket(&config.socket_path).await.map_err(s)?;
    let health = match &config.health {
        Some(h) if h.listener_enabled => {
            let haddr = format!("{}:{}", h.bind_address, h.bind_port);
            Some(tokio::net::TcpListener::bind(&haddr).await.map_err(|e| format!("health_checks {haddr}: {e}"))?)
        }
        _ => None,
    };
    let socket_path = config.socket_path.clone();
    let server = match crate::server::Server::build(config).await {
        Ok(server) => server,
        Err(e) => {
            // The socket was bound to fail fast on a clash; a server that cannot start leaves nothing behind.
            let _ = std::fs::remove_file(&socket_path);
            return Err(s(e));
        }
    };
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let r = server.run(tcp, uds, health, shutdown).await.map_err(s);
    let _ = std::fs::remove_file(&socket_path);
    r
}

async fn healthcheck(h: HealthArgs) -> CliResult {
    let path = h.sock.path()?;
    let ch = connect_admin(&path).await.map_err(|e| format!("Server is unhealthy: {e}"))?;
    if !h.shallow {
        let mut c = bundlepb::bundle_client::BundleClient::new(ch.clone());
        c.get_bundle(bundlepb::GetBundleRequest::default())
            .await
            .map_err(|e| format!("Server is unhealthy: unable to fetch bundle: {}", e.message()))?;
        // SPIRE's check: grpc.health.v1 on the admin socket, SERVING only once the server can
        // sign X.509 and JWT-SVIDs.
        use crate::wire::pb::grpc::health::v1 as healthpb;
        let resp = healthpb::health_client::HealthClient::new(ch)
            .check(healthpb::HealthCheckRequest::default())
            .await
            .map_err(|e| format!("Server is unhealthy: unable to determine health: {}", e.message()))?;
        if resp.get_ref().status != healthpb::health_check_response::ServingStatus::Serving as i32 {
            return Err("Server is unhealthy: server returned status \"NOT_SERVING\" (it cannot sign X.509 and JWT-SVIDs yet)".into());
        }
        if h.verbose {
            outln!("Fetched the trust bundle over {}", path.display());
        }
    }
    outln!("Server is healthy.");
    Ok(())
}

fn parse_id(s: &str, what: &str) -> Result<SpiffeId, String> {
    SpiffeId::new(s).map_err(|e| format!("invalid {what} {s:?}: {e}"))
}

fn check_result(status: Option<&pt::Status>) -> Result<(), String> {
    match status {
        Some(st) if st.code != 0 => Err(format!("{}: {}", code_name(tonic::Code::from_i32(st.code)), st.message)),
        _ => Ok(()),
    }
}

async fn token(cmd: TokenCommand) -> CliResult {
    let TokenCommand::Generate { spiffe_id, ttl, sock } = cmd;
    let agent_id = spiffe_id.as_deref().map(|s| parse_id(s, "SPIFFE ID")).transpose()?;
    let mut c = agentpb::agent_client::AgentClient::new(connect_admin(&sock.path()?).await?);
    let t = c
        .create_join_token(agentpb::CreateJoinTokenRequest { ttl, token: String::new(), agent_id: agent_id.as_ref().map(id_to_proto) })
        .await
        .map_err(|e| status_msg(&e))?
        .into_inner();
    if sock.output == "json" {
        outln!("{}", serde_json::json!({"value": t.value, "expires_at": t.expires_at}))
    } else {
        outln!("Token: {}", t.value)
    }
    Ok(())
}

fn render_bundle(b: &pt::Bundle, format: &str) -> Result<String, String> {
    let bundle = bundle_from_proto(b).map_err(s)?;
    match format {
        "pem" => Ok(bundle.x509_pem()),
        "spiffe" => Ok(bundle.to_spiffe_json()),
        other => Err(format!("unknown -format {other:?}: expected pem or spiffe")),
    }
}

/// SPIRE's `-output json` of a bundle: protojson with proto field names, 64-bit integers as
/// strings, keys in alphabetical order, `tainted` always present.
pub(crate) fn bundle_json(b: &pt::Bundle) -> serde_json::Value {
    use base64::Engine as _;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    serde_json::json!({
        "jwt_authorities": b.jwt_authorities.iter().map(|k| serde_json::json!({
            "expires_at": k.expires_at.to_string(),
            "key_id": k.key_id,
            "public_key": b64(&k.public_key),
            "tainted": k.tainted,
        })).collect::<Vec<_>>(),
        "refresh_hint": b.refresh_hint.to_string(),
        "sequence_number": b.sequence_number.to_string(),
        "trust_domain": b.trust_domain,
        "wit_authorities": [],
        "x509_authorities": b.x509_authorities.iter().map(|c| serde_json::json!({"asn1": b64(&c.asn1), "tainted": c.tainted})).collect::<Vec<_>>(),
    })
}

async fn bundle(cmd: BundleCommand) -> CliResult {
    match cmd {
        BundleCommand::Show { format, sock } => {
            let mut c = bundlepb::bundle_client::BundleClient::new(connect_admin(&sock.path()?).await?);
            let b = c.get_bundle(bundlepb::GetBundleRequest::default()).await.map_err(|e| status_msg(&e))?.into_inner();
            if sock.output == "json" {
                outln!("{}", bundle_json(&b));
                return Ok(());
            }
            out!("{}", render_bundle(&b, &format)?);
            if format == "spiffe" {
                outln!();
            }
            Ok(())
        }
        BundleCommand::List { id, format, sock } => {
            let mut c = bundlepb::bundle_client::BundleClient::new(connect_admin(&sock.path()?).await?);
            let one = id.is_some();
            let bundles = if let Some(id) = id {
                let td = TrustDomain::new(&id).map_err(|e| format!("invalid -id {id:?}: {e}"))?;
                vec![
                    c.get_federated_bundle(bundlepb::GetFederatedBundleRequest { trust_domain: td.as_str().into(), output_mask: None })
                        .await
                        .map_err(|e| status_msg(&e))?
                        .into_inner(),
                ]
            } else {
                c.list_federated_bundles(bundlepb::ListFederatedBundlesRequest::default())
                    .await
                    .map_err(|e| status_msg(&e))?
                    .into_inner()
                    .bundles
            };
            if sock.output == "json" {
                // protojson of GetFederatedBundle's bundle, or of ListFederatedBundles' reply.
                match (one, bundles.first()) {
                    (true, Some(b)) => outln!("{}", bundle_json(b)),
                    _ => outln!(
                        "{}",
                        serde_json::json!({"bundles": bundles.iter().map(bundle_json).collect::<Vec<_>>(), "next_page_token": ""})
                    ),
                }
                return Ok(());
            }
            // SPIRE: `-id` prints that bundle alone; the list heads each with its trust domain
            // and separates them with a blank line.
            for (i, b) in bundles.iter().enumerate() {
                if one {
                    outln!("{}", render_bundle(b, &format)?);
                    continue;
                }
                if i > 0 {
                    outln!();
                }
                outln!("****************************************");
                outln!("* {}", b.trust_domain);
                outln!("****************************************");
                outln!("{}", render_bundle(b, &format)?);
            }
            Ok(())
        }
        BundleCommand::Set { id, path, format, sock } => {
            let td = TrustDomain::new(&id).map_err(|e| format!("invalid -id {id:?}: {e}"))?;
            let data = match &path {
                Some(p) => std::fs::read(p).map_err(|e| format!("-path {}: {e}", p.display()))?,
                None => {
                    use std::io::Read;
                    let mut v = Vec::new();
                    std::io::stdin().read_to_end(&mut v).map_err(s)?;
                    v
                }
            };
            let bundle = match format.as_str() {
                "pem" => {
                    let text = String::from_utf8(data).map_err(|_| "bundle file is not text")?;
                    Bundle {
                        trust_domain: td.clone(),
                        x509_authorities: crate::spiffe::parse_pem_certs(&text).map_err(s)?,
                        jwt_authorities: vec![],
                        refresh_hint: None,
                        sequence_number: 0,
                        tainted_x509: vec![],
                    }
                }
                "spiffe" => Bundle::from_spiffe_json(td.clone(), &data).map_err(|e| format!("invalid SPIFFE bundle: {e}"))?,
                other => return Err(format!("unknown -format {other:?}: expected pem or spiffe")),
            };
            let mut c = bundlepb::bundle_client::BundleClient::new(connect_admin(&sock.path()?).await?);
            let resp = c
                .batch_set_federated_bundle(bundlepb::BatchSetFederatedBundleRequest {
                    bundle: vec![crate::wire::convert::bundle_to_proto(&bundle)],
                    output_mask: None,
                })
                .await
                .map_err(|e| status_msg(&e))?
                .into_inner();
            check_result(resp.results.first().and_then(|r| r.status.as_ref()))?;
            if sock.output == "json" {
                let results: Vec<serde_json::Value> = resp
                    .results
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "bundle": r.bundle.as_ref().map(bundle_json),
                            "status": super::entry::status_json(r.status.as_ref()),
                        })
                    })
                    .collect();
                outln!("{}", serde_json::json!({"results": results}));
            } else {
                outln!("bundle set.");
            }
            Ok(())
        }
        BundleCommand::Delete { id, mode, sock } => {
            let td = TrustDomain::new(&id).map_err(|e| format!("invalid -id {id:?}: {e}"))?;
            let mode = match mode.as_str() {
                "restrict" => 0,
                "delete" => 1,
                "dissociate" => 2,
                other => return Err(format!("unknown -mode {other:?}: expected restrict, delete or dissociate")),
            };
            let mut c = bundlepb::bundle_client::BundleClient::new(connect_admin(&sock.path()?).await?);
            let resp = c
                .batch_delete_federated_bundle(bundlepb::BatchDeleteFederatedBundleRequest {
                    trust_domains: vec![td.as_str().into()],
                    mode,
                })
                .await
                .map_err(|e| status_msg(&e))?
                .into_inner();
            check_result(resp.results.first().and_then(|r| r.status.as_ref()))?;
            if sock.output == "json" {
                let results: Vec<serde_json::Value> = resp
                    .results
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "status": super::entry::status_json(r.status.as_ref()),
                            "trust_domain": r.trust_domain,
                        })
                    })
                    .collect();
                outln!("{}", serde_json::json!({"results": results}));
            } else {
                outln!("bundle deleted.");
            }
            Ok(())
        }
        BundleCommand::Count { sock } => {
            let mut c = bundlepb::bundle_client::BundleClient::new(connect_admin(&sock.path()?).await?);
            let n = c.count_bundles(bundlepb::CountBundlesRequest {}).await.map_err(|e| status_msg(&e))?.into_inner().count;
            if sock.output == "json" {
                outln!("{}", serde_json::json!({"count": n}));
            } else {
                outln!("{n} bundle{}", if n == 1 { "" } else { "s" });
            }
            Ok(())
        }
    }
}

fn pem_of(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

async fn x509(cmd: X509Command) -> CliResult {
    let X509Command::Mint { spiffe_id, dns, ttl, write, sock } = cmd;
    let id = parse_id(&spiffe_id, "SPIFFE ID")?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(s)?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.as_str().try_into().map_err(|e: rcgen::Error| e.to_string())?)];
    for d in &dns {
        params
            .subject_alt_names
            .push(rcgen::SanType::DnsName(d.as_str().try_into().map_err(|e: rcgen::Error| format!("invalid -dns {d:?}: {e}"))?));
    }
    let csr = params.serialize_request(&key).map_err(s)?;
    let ch = connect_admin(&sock.path()?).await?;
    let mut c = svidpb::svid_client::SvidClient::new(ch.clone());
    let resp =
        c.mint_x509svid(svidpb::MintX509svidRequest { csr: csr.der().to_vec(), ttl }).await.map_err(|e| status_msg(&e))?.into_inner();
    let svid = resp.svid.ok_or("server returned no SVID")?;
    let mut b = bundlepb::bundle_client::BundleClient::new(ch);
    let bundle = b.get_bundle(bundlepb::GetBundleRequest::default()).await.map_err(|e| status_msg(&e))?.into_inner();
    let svid_pem: String = svid.cert_chain.iter().map(|c| pem_of("CERTIFICATE", c)).collect();
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    let bundle_pem: String = bundle.x509_authorities.iter().map(|c| pem_of("CERTIFICATE", &c.asn1)).collect();
    match write {
        Some(dir) => {
            // The directory receives a private key: a directory cairn creates is the caller's alone.
            crate::fsutil::create_dir_all_mode(&dir, 0o700).map_err(|e| format!("-write {}: {e}", dir.display()))?;
            let w = |name: &str, data: &[u8], private: bool| -> Result<(), String> {
                let p = dir.join(name);
                if private { crate::fsutil::write_private_atomic(&p, data) } else { crate::fsutil::write_public(&p, data) }
                    .map_err(|e| format!("{}: {e}", p.display()))
            };
            w("svid.pem", svid_pem.as_bytes(), false)?;
            w("key.pem", key_pem.as_bytes(), true)?;
            w("bundle.pem", bundle_pem.as_bytes(), false)?;
            outln!("X509-SVID written to {}", dir.join("svid.pem").display());
            outln!("Private key written to {}", dir.join("key.pem").display());
            outln!("Root CAs written to {}", dir.join("bundle.pem").display());
        }
        None => {
            outln!("X509-SVID:\n{svid_pem}");
            outln!("Private key:\n{}", key_pem.as_str());
            outln!("Root CAs:\n{bundle_pem}");
        }
    }
    Ok(())
}

async fn jwt(cmd: JwtCommand) -> CliResult {
    let JwtCommand::Mint { spiffe_id, audience, ttl, write, sock } = cmd;
    let id = parse_id(&spiffe_id, "SPIFFE ID")?;
    if audience.is_empty() {
        return Err("at least one audience is required (-audience)".into());
    }
    let mut c = svidpb::svid_client::SvidClient::new(connect_admin(&sock.path()?).await?);
    let resp = c
        .mint_jwtsvid(svidpb::MintJwtsvidRequest { id: Some(id_to_proto(&id)), audience, ttl })
        .await
        .map_err(|e| status_msg(&e))?
        .into_inner();
    let token = resp.svid.ok_or("server returned no SVID")?.token;
    match write {
        Some(p) => {
            crate::fsutil::write_private_atomic(&p, token.as_bytes()).map_err(|e| format!("-write {}: {e}", p.display()))?;
            outln!("JWT-SVID written to {}", p.display());
        }
        None => outln!("{token}"),
    }
    Ok(())
}

/// SPIRE's agent block: a banned agent shows `Banned` where others show their serial.
fn print_agent(a: &pt::Agent) {
    let id = a.id.as_ref().map(|i| format!("spiffe://{}{}", i.trust_domain, i.path)).unwrap_or_default();
    outln!("SPIFFE ID         : {id}");
    outln!("Attestation type  : {}", a.attestation_type);
    outln!("Expiration time   : {}", super::agent::go_time(a.x509svid_expires_at));
    if a.banned {
        outln!("Banned            : true");
    } else {
        outln!("Serial number     : {}", a.x509svid_serial_number);
    }
    outln!("Can re-attest     : {}", a.can_reattest);
    if !a.agent_version.is_empty() {
        outln!("Agent version     : {}", a.agent_version);
    }
    outln!();
}

/// SPIRE's `-output json` of an agent: protojson with proto field names, int64 as a string,
/// keys in alphabetical order.
fn agent_json(a: &pt::Agent) -> serde_json::Value {
    serde_json::json!({
        "agent_version": a.agent_version,
        "attestation_type": a.attestation_type,
        "banned": a.banned,
        "can_reattest": a.can_reattest,
        "id": a.id.as_ref().map(|i| serde_json::json!({"path": i.path, "trust_domain": i.trust_domain})),
        "selectors": a.selectors.iter().map(|s| serde_json::json!({"type": s.r#type, "value": s.value})).collect::<Vec<_>>(),
        "x509svid_expires_at": a.x509svid_expires_at.to_string(),
        "x509svid_serial_number": a.x509svid_serial_number,
    })
}

/// `agent purge`: SPIRE's, for agents that can re-attest (a banned or evicted one of those
/// just attests again) whose SVID expired more than `-expiredFor` ago.
async fn purge(expired_for: &str, dry_run: bool, sock: &Sock) -> CliResult {
    let age = crate::config::parse_duration(expired_for).map_err(|e| format!("invalid value {expired_for:?} for flag -expiredFor: {e}"))?;
    let mut c = agentpb::agent_client::AgentClient::new(connect_admin(&sock.path()?).await?);
    let agents = c
        .list_agents(agentpb::ListAgentsRequest {
            filter: Some(agentpb::list_agents_request::Filter { by_can_reattest: Some(true), ..Default::default() }),
            output_mask: Some(pt::AgentMask { x509svid_expires_at: true, ..Default::default() }),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .map_err(|e| format!("failed to list agents: {}", rpc_error(&e)))?
        .into_inner()
        .agents;
    let now = crate::now_unix();
    let mut results = Vec::new();
    for a in agents.iter().filter(|a| now - a.x509svid_expires_at > age) {
        let id = a.id.as_ref().map(|i| format!("spiffe://{}{}", i.trust_domain, i.path)).unwrap_or_default();
        let (deleted, error) = if dry_run {
            (false, String::new())
        } else {
            match c.delete_agent(agentpb::DeleteAgentRequest { id: a.id.clone() }).await {
                Ok(_) => (true, String::new()),
                Err(e) => (false, rpc_error(&e)),
            }
        };
        results.push((id, deleted, error));
    }
    if sock.output == "json" {
        let list: Vec<serde_json::Value> = results
            .iter()
            .map(|(id, deleted, error)| {
                let mut v = serde_json::json!({"agent_id": id, "deleted": deleted});
                if !error.is_empty() {
                    v["error"] = serde_json::json!(error);
                }
                v
            })
            .collect();
        outln!("{}", serde_json::json!({"expired_agents": list}));
        return Ok(());
    }
    if results.is_empty() {
        outln!("No agents to purge.");
        return Ok(());
    }
    outln!("Found {} expired agent{}\n", results.len(), if results.len() == 1 { "" } else { "s" });
    if dry_run {
        outln!("\nAgents that can be purged:");
        for (id, _, _) in &results {
            outln!("SPIFFE ID         : {id}");
        }
        return Ok(());
    }
    let (done, failed): (Vec<_>, Vec<_>) = results.iter().partition(|(_, deleted, _)| *deleted);
    if !done.is_empty() {
        outln!("Agents purged:");
        for (id, _, _) in &done {
            outln!("SPIFFE ID         : {id}");
        }
    }
    if !failed.is_empty() {
        outln!("Agents not purged:");
        for (id, _, e) in &failed {
            outln!("SPIFFE ID         : {id}");
            outln!("Error             : {e}");
        }
    }
    Ok(())
}

async fn agent(cmd: AgentCommand) -> CliResult {
    let agent_ref = |s: &str| parse_id(s, "agent SPIFFE ID").map(|i| id_to_proto(&i));
    match cmd {
        AgentCommand::List { q, sock } => {
            let filter = agent_filter(&q)?;
            let mut c = agentpb::agent_client::AgentClient::new(connect_admin(&sock.path()?).await?);
            let mut agents = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = c
                    .list_agents(agentpb::ListAgentsRequest {
                        filter: Some(filter.clone()),
                        output_mask: None,
                        page_size: 1000,
                        page_token,
                    })
                    .await
                    .map_err(|e| rpc_error(&e))?
                    .into_inner();
                agents.extend(r.agents);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            if sock.output == "json" {
                outln!("{}", serde_json::json!({"agents": agents.iter().map(agent_json).collect::<Vec<_>>(), "next_page_token": ""}));
                return Ok(());
            }
            if agents.is_empty() {
                outln!("No attested agents found");
                return Ok(());
            }
            outln!("Found {} attested agent{}:\n", agents.len(), if agents.len() == 1 { "" } else { "s" });
            agents.iter().for_each(print_agent);
            Ok(())
        }
        AgentCommand::Show { spiffe_id, sock } => {
            let mut c = agentpb::agent_client::AgentClient::new(connect_admin(&sock.path()?).await?);
            let a = c
                .get_agent(agentpb::GetAgentRequest { id: Some(agent_ref(&spiffe_id)?), output_mask: None })
                .await
                .map_err(|e| status_msg(&e))?
                .into_inner();
            if sock.output == "json" {
                outln!("{}", agent_json(&a));
                return Ok(());
            }
            outln!("Found an attested agent given its SPIFFE ID\n");
            print_agent(&a);
            for s in &a.selectors {
                outln!("Selectors         : {}:{}", s.r#type, s.value);
            }
            Ok(())
        }
        AgentCommand::Evict { spiffe_id, sock } => {
            let mut c = agentpb::agent_client::AgentClient::new(connect_admin(&sock.path()?).await?);
            c.delete_agent(agentpb::DeleteAgentRequest { id: Some(agent_ref(&spiffe_id)?) }).await.map_err(|e| status_msg(&e))?;
            outln!("Agent evicted successfully");
            Ok(())
        }
        AgentCommand::Ban { spiffe_id, sock } => {
            let mut c = agentpb::agent_client::AgentClient::new(connect_admin(&sock.path()?).await?);
            c.ban_agent(agentpb::BanAgentRequest { id: Some(agent_ref(&spiffe_id)?) }).await.map_err(|e| status_msg(&e))?;
            outln!("Agent banned successfully");
            Ok(())
        }
        AgentCommand::Count { q, sock } => {
            let f = agent_filter(&q)?;
            let filter = agentpb::count_agents_request::Filter {
                by_attestation_type: f.by_attestation_type,
                by_selector_match: f.by_selector_match,
                by_banned: f.by_banned,
                by_can_reattest: f.by_can_reattest,
                by_expires_before: f.by_expires_before,
            };
            let mut c = agentpb::agent_client::AgentClient::new(connect_admin(&sock.path()?).await?);
            let n =
                c.count_agents(agentpb::CountAgentsRequest { filter: Some(filter) }).await.map_err(|e| rpc_error(&e))?.into_inner().count;
            if sock.output == "json" {
                outln!("{}", serde_json::json!({"count": n}));
            } else {
                outln!("{n} attested agent{}", if n == 1 { "" } else { "s" });
            }
            Ok(())
        }
        AgentCommand::Purge { expired_for, dry_run, sock } => purge(&expired_for, dry_run, &sock).await,
    }
}
