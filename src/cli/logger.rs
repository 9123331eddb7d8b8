//! `spire-server logger ...` and `spire-agent logger ...` (get, set, reset the running log
//! level through the Logger API), and `spire-agent debug getinfo` (the agent's Debug API), as
//! SPIRE prints them.

use super::client::connect_admin;
use super::server::rpc_error;
use crate::wire::convert::{log_level_from_proto, log_level_to_proto};
use crate::wire::pb::spire::agent::debug::v1 as debugpb;
use crate::wire::pb::spire::api::agent::logger::v1 as agentlog;
use crate::wire::pb::spire::api::server::logger::v1 as serverlog;
use crate::wire::pb::spire::api::types as pt;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;

/// SPIRE agent's default admin socket.
pub const AGENT_ADMIN_SOCKET: &str = "/tmp/spire-agent/private/admin.sock";

/// Socket and output flags of these commands; the socket's default depends on the program.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// The admin socket (server: its admin socket; agent: admin_socket_path).
    #[arg(long)]
    socket_path: Option<PathBuf>,
    /// Output format: pretty or json.
    #[arg(long, default_value = "pretty")]
    output: String,
}

/// `logger` subcommands.
#[derive(Debug, Subcommand)]
pub enum LoggerCommand {
    /// Show the current and launch log levels.
    Get {
        #[command(flatten)]
        t: Target,
    },
    /// Set the log level until the next reset or restart.
    Set {
        /// The new level: panic, fatal, error, warn, info, debug or trace.
        #[arg(long, default_value = "")]
        level: String,
        #[command(flatten)]
        t: Target,
    },
    /// Go back to the level the config file set.
    Reset {
        #[command(flatten)]
        t: Target,
    },
}

/// `debug` subcommands (agent).
#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// The agent's uptime, last sync, cached SVID counts and SVID chain.
    Getinfo {
        #[command(flatten)]
        t: Target,
    },
}

/// Whose Logger API.
#[derive(Debug, Clone, Copy)]
pub enum Program {
    /// spire-server: its admin socket.
    Server,
    /// spire-agent: its admin_socket_path.
    Agent,
}

fn level_text(v: i32) -> &'static str {
    log_level_from_proto(v).unwrap_or("unspecified")
}

fn enum_name(v: i32) -> &'static str {
    pt::LogLevel::try_from(v).map_or("UNSPECIFIED", |l| l.as_str_name())
}

fn print_logger(l: &pt::Logger, output: &str) {
    if output == "json" {
        outln!("{}", json!({"current_level": enum_name(l.current_level), "launch_level": enum_name(l.launch_level)}));
    } else {
        outln!("Logger Level : {}\nLaunch Level : {}\n", level_text(l.current_level), level_text(l.launch_level));
    }
}

/// Runs one `logger` subcommand against `program`'s Logger API.
///
/// # Errors
/// A message for the operator, as SPIRE words it.
pub async fn run(cmd: LoggerCommand, program: Program) -> Result<(), String> {
    let default = match program {
        Program::Server => PathBuf::from(crate::config::server::DEFAULT_SOCKET_PATH),
        Program::Agent => PathBuf::from(AGENT_ADMIN_SOCKET),
    };
    let (t, request) = match cmd {
        LoggerCommand::Get { t } => (t, None),
        LoggerCommand::Set { level, t } => {
            if level.is_empty() {
                return Err("a value (-level) must be set".into());
            }
            let name = crate::telemetry::level_name(&level).ok_or_else(|| format!("the value {level:?} is not a valid setting"))?;
            (t, Some(Some(log_level_to_proto(name))))
        }
        LoggerCommand::Reset { t } => (t, Some(None)),
    };
    let ch = connect_admin(t.socket_path.as_deref().unwrap_or(&default)).await?;
    let logger = match (program, request) {
        (Program::Server, None) => serverlog::logger_client::LoggerClient::new(ch)
            .get_logger(serverlog::GetLoggerRequest {})
            .await
            .map_err(|e| format!("error fetching logger: {}", rpc_error(&e)))?,
        (Program::Server, Some(Some(new_level))) => serverlog::logger_client::LoggerClient::new(ch)
            .set_log_level(serverlog::SetLogLevelRequest { new_level })
            .await
            .map_err(|e| format!("failed to set log level: {}", rpc_error(&e)))?,
        (Program::Server, Some(None)) => serverlog::logger_client::LoggerClient::new(ch)
            .reset_log_level(serverlog::ResetLogLevelRequest {})
            .await
            .map_err(|e| format!("failed to reset logger: {}", rpc_error(&e)))?,
        (Program::Agent, None) => agentlog::logger_client::LoggerClient::new(ch)
            .get_logger(agentlog::GetLoggerRequest {})
            .await
            .map_err(|e| format!("error fetching logger: {}", rpc_error(&e)))?,
        (Program::Agent, Some(Some(new_level))) => agentlog::logger_client::LoggerClient::new(ch)
            .set_log_level(agentlog::SetLogLevelRequest { new_level })
            .await
            .map_err(|e| format!("failed to set log level: {}", rpc_error(&e)))?,
        (Program::Agent, Some(None)) => agentlog::logger_client::LoggerClient::new(ch)
            .reset_log_level(agentlog::ResetLogLevelRequest {})
            .await
            .map_err(|e| format!("failed to reset logger: {}", rpc_error(&e)))?,
    }
    .into_inner();
    print_logger(&logger, &t.output);
    Ok(())
}

/// Runs `spire-agent debug getinfo`.
///
/// # Errors
/// The admin socket is unreachable or refuses.
pub async fn run_debug(cmd: DebugCommand) -> Result<(), String> {
    let DebugCommand::Getinfo { t } = cmd;
    let ch = connect_admin(t.socket_path.as_deref().unwrap_or(std::path::Path::new(AGENT_ADMIN_SOCKET))).await?;
    let r = debugpb::debug_client::DebugClient::new(ch).get_info(debugpb::GetInfoRequest {}).await.map_err(|e| rpc_error(&e))?.into_inner();
    let id = |c: &debugpb::get_info_response::Cert| {
        c.id.as_ref().map_or_else(|| "(none)".to_owned(), |i| format!("spiffe://{}{}", i.trust_domain, i.path))
    };
    if t.output == "json" {
        let chain: Vec<serde_json::Value> = r
            .svid_chain
            .iter()
            .map(|c| {
                json!({"id": c.id.as_ref().map(|i| json!({"path": i.path, "trust_domain": i.trust_domain})), "expires_at": c.expires_at.to_string(), "subject": c.subject})
            })
            .collect();
        outln!(
            "{}",
            json!({
                "svid_chain": chain, "uptime": r.uptime, "svids_count": r.svids_count,
                "last_sync_success": r.last_sync_success.to_string(), "cached_x509_svids_count": r.cached_x509_svids_count,
                "cached_jwt_svids_count": r.cached_jwt_svids_count, "cached_svidstore_x509_svids_count": r.cached_svidstore_x509_svids_count,
            })
        );
        return Ok(());
    }
    let rfc3339 = |t: i64| super::agent::go_time(t).replacen(' ', "T", 1).replace(" +0000 UTC", "Z");
    outln!("Agent Debug Info:");
    outln!(
        "  Uptime:                          {}",
        super::agent::go_duration(std::time::Duration::from_secs(u64::try_from(r.uptime).unwrap_or(0)))
    );
    outln!(
        "  Last Sync Success:               {}",
        if r.last_sync_success == 0 { "(never)".to_owned() } else { rfc3339(r.last_sync_success) }
    );
    outln!("  Cached X.509 SVIDs:              {}", r.cached_x509_svids_count);
    outln!("  Cached JWT SVIDs:                {}", r.cached_jwt_svids_count);
    outln!("  Cached SVID Store X.509 SVIDs:   {}", r.cached_svidstore_x509_svids_count);
    if !r.svid_chain.is_empty() {
        outln!("  SVID Chain:");
        for (i, c) in r.svid_chain.iter().enumerate() {
            outln!("    [{i}] SPIFFE ID:  {}", id(c));
            outln!("        Subject:    {}", c.subject);
            outln!("        Expires At: {}", rfc3339(c.expires_at));
        }
    }
    Ok(())
}
