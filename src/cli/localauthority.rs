//! `cairn server localauthority jwt|x509 show|prepare|activate|taint|revoke` and
//! `cairn server upstreamauthority taint|revoke`: SPIRE's verbs, flags, text and `-output json`
//! for forced rotation and compromise response (the Local Authority API).

use super::client::connect_admin;
use super::server::{Sock, code_name};
use crate::wire::pb::spire::api::server::localauthority::v1 as pb;
use clap::Subcommand;

type CliResult = Result<(), String>;
type Client = pb::local_authority_client::LocalAuthorityClient<tonic::transport::Channel>;

/// `localauthority` subcommands.
#[derive(Debug, Subcommand)]
pub enum LocalAuthorityCommand {
    /// This tier's JWT signing keys.
    Jwt {
        #[command(subcommand)]
        command: AuthorityVerb,
    },
    /// This tier's X.509 CAs.
    X509 {
        #[command(subcommand)]
        command: AuthorityVerb,
    },
}

/// What can be done to a local authority.
#[derive(Debug, Subcommand)]
pub enum AuthorityVerb {
    /// Show the active, prepared and old authorities.
    Show {
        #[command(flatten)]
        sock: Sock,
    },
    /// Prepare a new authority now (published in the bundle, not signing yet).
    Prepare {
        #[command(flatten)]
        sock: Sock,
    },
    /// Activate the prepared authority; the active one becomes old.
    Activate {
        /// The authority ID of the prepared authority.
        #[arg(long)]
        authority_id: Option<String>,
        #[command(flatten)]
        sock: Sock,
    },
    /// Mark the old authority as compromised: everything it signed is replaced.
    Taint {
        /// The authority ID of the old authority.
        #[arg(long)]
        authority_id: Option<String>,
        #[command(flatten)]
        sock: Sock,
    },
    /// Remove a tainted authority from the bundle: nothing it signed validates any more.
    Revoke {
        /// The authority ID of the tainted authority.
        #[arg(long)]
        authority_id: Option<String>,
        #[command(flatten)]
        sock: Sock,
    },
}

/// `upstreamauthority` subcommands.
#[derive(Debug, Subcommand)]
pub enum UpstreamAuthorityCommand {
    /// Mark the upstream authority that signed the old X.509 CA as compromised.
    Taint {
        /// The subject key ID of the upstream authority's CA certificate.
        #[arg(long)]
        subject_key_id: Option<String>,
        #[command(flatten)]
        sock: Sock,
    },
    /// Remove a tainted upstream authority from the bundle.
    Revoke {
        /// The subject key ID of the upstream authority's CA certificate.
        #[arg(long)]
        subject_key_id: Option<String>,
        #[command(flatten)]
        sock: Sock,
    },
}

#[derive(Clone, Copy)]
enum Kind {
    Jwt,
    X509,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Jwt => "JWT",
            Self::X509 => "X.509",
        }
    }
}

fn rpc_err(prefix: &str, e: &tonic::Status) -> String {
    let rpc = format!("rpc error: code = {} desc = {}", code_name(e.code()), e.message());
    if prefix.is_empty() { rpc } else { format!("{prefix}: {rpc}") }
}

/// SPIRE's state block.
fn block(kind: Kind, s: &pb::AuthorityState) -> String {
    let mut out = format!("  Authority ID: {}\n  Expires at: {}\n", s.authority_id, super::agent::go_time(s.expires_at));
    if let Kind::X509 = kind {
        if s.upstream_authority_subject_key_id.is_empty() {
            out.push_str("  Upstream authority ID: No upstream authority\n");
        } else {
            out.push_str(&format!("  Upstream authority Subject Key ID: {}\n", s.upstream_authority_subject_key_id));
        }
    }
    out
}

/// protojson of a state: proto field names, int64 as a string, keys sorted.
fn state_json(s: &pb::AuthorityState) -> serde_json::Value {
    serde_json::json!({
        "authority_id": s.authority_id,
        "expires_at": s.expires_at.to_string(),
        "upstream_authority_subject_key_id": s.upstream_authority_subject_key_id,
    })
}

fn print_states(
    kind: Kind,
    sock: &Sock,
    active: Option<&pb::AuthorityState>,
    prepared: Option<&pb::AuthorityState>,
    old: Option<&pb::AuthorityState>,
) {
    let parts = [("active", "Active", active), ("prepared", "Prepared", prepared), ("old", "Old", old)];
    if sock.output == "json" {
        let mut m = serde_json::Map::new();
        for (key, _, s) in parts {
            if let Some(s) = s {
                m.insert(key.to_owned(), state_json(s));
            }
        }
        outln!("{}", serde_json::Value::Object(m));
        return;
    }
    for (i, (key, title, s)) in parts.into_iter().enumerate() {
        if i > 0 {
            outln!();
        }
        outln!("{title} {} authority:", kind.name());
        match s {
            Some(s) => out!("{}", block(kind, s)),
            None => outln!("  No {key} {} authority found", kind.name()),
        }
    }
}

/// One state answered by prepare/activate/taint/revoke: `field` is its protojson name.
fn print_one(kind: Kind, sock: &Sock, verb: &str, field: &str, state: Option<pb::AuthorityState>) -> CliResult {
    let Some(s) = state else {
        let what = verb.to_lowercase();
        return Err(format!("internal error: expected to have {what} {} authority information", kind.name()));
    };
    if sock.output == "json" {
        outln!("{}", serde_json::json!({ field: state_json(&s) }));
    } else {
        outln!("{verb} {} authority:", kind.name());
        out!("{}", block(kind, &s));
    }
    Ok(())
}

fn required(id: Option<String>) -> Result<String, String> {
    id.filter(|s| !s.is_empty()).ok_or_else(|| "an authority ID is required".to_owned())
}

async fn client(sock: &Sock) -> Result<Client, String> {
    Ok(pb::local_authority_client::LocalAuthorityClient::new(connect_admin(&sock.path()?).await?))
}

/// Runs one `localauthority` subcommand.
///
/// # Errors
/// A message for the operator.
pub async fn run(cmd: LocalAuthorityCommand) -> CliResult {
    match cmd {
        LocalAuthorityCommand::Jwt { command } => jwt(command).await,
        LocalAuthorityCommand::X509 { command } => x509(command).await,
    }
}

async fn jwt(cmd: AuthorityVerb) -> CliResult {
    let k = Kind::Jwt;
    match cmd {
        AuthorityVerb::Show { sock } => {
            let r = client(&sock).await?.get_jwt_authority_state(pb::GetJwtAuthorityStateRequest {}).await.map_err(|e| rpc_err("", &e))?;
            let r = r.into_inner();
            print_states(k, &sock, r.active.as_ref(), r.prepared.as_ref(), r.old.as_ref());
            Ok(())
        }
        AuthorityVerb::Prepare { sock } => {
            let r = client(&sock).await?.prepare_jwt_authority(pb::PrepareJwtAuthorityRequest {}).await;
            let r = r.map_err(|e| rpc_err("could not prepare JWT authority", &e))?.into_inner();
            print_one(k, &sock, "Prepared", "prepared_authority", r.prepared_authority)
        }
        AuthorityVerb::Activate { authority_id, sock } => {
            let authority_id = required(authority_id)?;
            let r = client(&sock).await?.activate_jwt_authority(pb::ActivateJwtAuthorityRequest { authority_id }).await;
            let r = r.map_err(|e| rpc_err("could not activate JWT authority", &e))?.into_inner();
            print_one(k, &sock, "Activated", "activated_authority", r.activated_authority)
        }
        AuthorityVerb::Taint { authority_id, sock } => {
            let authority_id = required(authority_id)?;
            let r = client(&sock).await?.taint_jwt_authority(pb::TaintJwtAuthorityRequest { authority_id }).await;
            let r = r.map_err(|e| rpc_err("could not taint JWT authority", &e))?.into_inner();
            print_one(k, &sock, "Tainted", "tainted_authority", r.tainted_authority)
        }
        AuthorityVerb::Revoke { authority_id, sock } => {
            let authority_id = required(authority_id)?;
            let r = client(&sock).await?.revoke_jwt_authority(pb::RevokeJwtAuthorityRequest { authority_id }).await;
            let r = r.map_err(|e| rpc_err("could not revoke JWT authority", &e))?.into_inner();
            print_one(k, &sock, "Revoked", "revoked_authority", r.revoked_authority)
        }
    }
}

async fn x509(cmd: AuthorityVerb) -> CliResult {
    let k = Kind::X509;
    match cmd {
        AuthorityVerb::Show { sock } => {
            let r = client(&sock).await?.get_x509_authority_state(pb::GetX509AuthorityStateRequest {}).await;
            let r = r.map_err(|e| rpc_err("could not get X.509 authorities", &e))?.into_inner();
            print_states(k, &sock, r.active.as_ref(), r.prepared.as_ref(), r.old.as_ref());
            Ok(())
        }
        AuthorityVerb::Prepare { sock } => {
            let r = client(&sock).await?.prepare_x509_authority(pb::PrepareX509AuthorityRequest {}).await;
            let r = r.map_err(|e| rpc_err("could not prepare X.509 authority", &e))?.into_inner();
            print_one(k, &sock, "Prepared", "prepared_authority", r.prepared_authority)
        }
        AuthorityVerb::Activate { authority_id, sock } => {
            let authority_id = required(authority_id)?;
            let r = client(&sock).await?.activate_x509_authority(pb::ActivateX509AuthorityRequest { authority_id }).await;
            let r = r.map_err(|e| rpc_err("could not activate X.509 authority", &e))?.into_inner();
            print_one(k, &sock, "Activated", "activated_authority", r.activated_authority)
        }
        AuthorityVerb::Taint { authority_id, sock } => {
            let authority_id = required(authority_id)?;
            let r = client(&sock).await?.taint_x509_authority(pb::TaintX509AuthorityRequest { authority_id }).await;
            let r = r.map_err(|e| rpc_err("could not taint X.509 authority", &e))?.into_inner();
            print_one(k, &sock, "Tainted", "tainted_authority", r.tainted_authority)
        }
        AuthorityVerb::Revoke { authority_id, sock } => {
            let authority_id = required(authority_id)?;
            let r = client(&sock).await?.revoke_x509_authority(pb::RevokeX509AuthorityRequest { authority_id }).await;
            let r = r.map_err(|e| rpc_err("could not revoke X.509 authority", &e))?.into_inner();
            print_one(k, &sock, "Revoked", "revoked_authority", r.revoked_authority)
        }
    }
}

/// Runs one `upstreamauthority` subcommand.
///
/// # Errors
/// A message for the operator.
pub async fn run_upstream(cmd: UpstreamAuthorityCommand) -> CliResult {
    let (verb, ski, sock) = match cmd {
        UpstreamAuthorityCommand::Taint { subject_key_id, sock } => ("Tainted", subject_key_id, sock),
        UpstreamAuthorityCommand::Revoke { subject_key_id, sock } => ("Revoked", subject_key_id, sock),
    };
    let subject_key_id =
        ski.filter(|s| !s.is_empty()).ok_or_else(|| "the Subject Key ID of the X.509 upstream authority is required".to_owned())?;
    let mut c = client(&sock).await?;
    let answered = if verb == "Tainted" {
        c.taint_x509_upstream_authority(pb::TaintX509UpstreamAuthorityRequest { subject_key_id })
            .await
            .map_err(|e| rpc_err("could not taint X.509 upstream authority", &e))?
            .into_inner()
            .upstream_authority_subject_key_id
    } else {
        c.revoke_x509_upstream_authority(pb::RevokeX509UpstreamAuthorityRequest { subject_key_id })
            .await
            .map_err(|e| rpc_err("could not revoke X.509 upstream authority", &e))?
            .into_inner()
            .upstream_authority_subject_key_id
    };
    if sock.output == "json" {
        outln!("{}", serde_json::json!({ "upstream_authority_subject_key_id": answered }));
    } else {
        outln!("{verb} X.509 upstream authority:");
        outln!("  Subject Key ID: {answered}");
    }
    Ok(())
}
