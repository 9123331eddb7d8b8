//! `cairn hsm ...`: what an HSM custodian needs around cairn's PKCS#11 keys: the tokens a
//! module offers and the keys on one, the root key ceremony for `UpstreamAuthority "pkcs11"`,
//! and a dry run that checks a server config's token settings before the server starts.

use crate::keymanager::pkcs11::{Curve, PinSource, Pkcs11Key, TokenConfig, ffi};
use crate::keymanager::{Key, KeyRef, KeyType, sign_off_runtime};
use crate::spiffe::TrustDomain;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

/// `cairn hsm` subcommands.
#[derive(Debug, Subcommand)]
pub enum HsmCommand {
    /// Lists the tokens a PKCS#11 module offers, or (with -tokenLabel) the keys on one.
    List(ListArgs),
    /// Key ceremony: creates a root CA key on the token and writes its self-signed certificate.
    InitRoot(InitRootArgs),
    /// Checks a server config's PKCS#11 settings (module, token, PIN, mechanisms, keys) without starting it.
    Check(CheckArgs),
}

/// Which token and how to log in.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The PKCS#11 module (library).
    #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
    module: PathBuf,
    /// The token, by label.
    #[arg(long)]
    token_label: Option<String>,
    /// A file holding the user PIN (mode 0600).
    #[arg(long)]
    pin_file: Option<PathBuf>,
    /// An environment variable holding the user PIN.
    #[arg(long)]
    pin_env: Option<String>,
}

impl TokenArgs {
    fn token(&self) -> Result<Option<TokenConfig>, String> {
        let Some(label) = self.token_label.clone() else { return Ok(None) };
        let pin = match (&self.pin_file, &self.pin_env) {
            (Some(f), None) => PinSource::File(f.clone()),
            (None, Some(v)) => PinSource::Env(v.clone()),
            _ => {
                return Err(
                    "give the user PIN with exactly one of -pinFile and -pinEnv (a PIN on the command line would show in ps)".into()
                );
            }
        };
        Ok(Some(TokenConfig {
            module_path: self.module.clone(),
            token_label: label,
            pin,
            max_sessions: crate::keymanager::pkcs11::DEFAULT_MAX_SESSIONS,
        }))
    }
}

/// `cairn hsm list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// Only keys whose label starts with this.
    #[arg(long, default_value = "")]
    label_prefix: String,
    /// `pretty` or `json`.
    #[arg(long, default_value = "pretty")]
    output: String,
}

/// `cairn hsm init-root`.
#[derive(Debug, Args)]
pub struct InitRootArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// CKA_LABEL of the new root key (the upstream's key_label).
    #[arg(long)]
    key_label: String,
    /// ec-p256 or ec-p384.
    #[arg(long, default_value = "ec-p384")]
    key_type: String,
    /// The trust domain the root certifies (its URI SAN).
    #[arg(long)]
    trust_domain: String,
    /// Where to write the self-signed root certificate (PEM).
    #[arg(long)]
    cert_out: PathBuf,
    /// Validity, as seconds or a Go duration.
    #[arg(long, default_value = "87600h", value_parser = parse_secs)]
    ttl: i64,
    /// The certificate's subject common name.
    #[arg(long, default_value = "cairn root CA")]
    common_name: String,
}

/// `cairn hsm check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The server config to check.
    #[arg(long, default_value = "conf/server/server.conf")]
    config: PathBuf,
    /// Expand $VARIABLES in the config, as `server run -expandEnv` does.
    #[arg(long)]
    expand_env: bool,
}

fn parse_secs(s: &str) -> Result<i64, String> {
    crate::cli::parse_ttl(s).map(i64::from)
}

/// Runs one `cairn hsm` command.
///
/// # Errors
/// A message for the operator.
pub async fn run(cmd: HsmCommand) -> Result<(), String> {
    match cmd {
        HsmCommand::List(a) => list(a).await,
        HsmCommand::InitRoot(a) => init_root(a).await,
        HsmCommand::Check(a) => check(a).await,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("PKCS#11 task: {e}"))?
}

async fn list(a: ListArgs) -> Result<(), String> {
    let json = match a.output.as_str() {
        "json" => true,
        "pretty" => false,
        other => return Err(format!("-output {other:?}: expected pretty or json")),
    };
    let module = a.token.module.clone();
    match a.token.token()? {
        None => {
            let tokens = blocking(move || ffi::list_tokens(&module).map_err(|e| e.to_string())).await?;
            if json {
                outln!("{}", serde_json::json!({ "tokens": tokens }));
                return Ok(());
            }
            if tokens.is_empty() {
                outln!("No tokens found in {}", a.token.module.display());
            }
            for t in tokens {
                outln!(
                    "Token {:?}: slot {}, {}, serial {}{}",
                    t.label,
                    t.slot,
                    t.model,
                    t.serial,
                    if t.pin_locked { ", USER PIN LOCKED" } else { "" }
                );
            }
        }
        Some(cfg) => {
            let prefix = a.label_prefix.clone();
            let keys = blocking(move || cfg.open().and_then(|t| t.list_keys(&prefix)).map_err(|e| e.to_string())).await?;
            if json {
                outln!("{}", serde_json::json!({ "keys": keys }));
                return Ok(());
            }
            if keys.is_empty() {
                outln!("No keys found");
            }
            for k in keys {
                let flag = |name: &str, v: Option<bool>| v.map(|b| format!(" {name}={b}")).unwrap_or_default();
                outln!(
                    "{:<40} {:<7} {:<8} id={}{}{}{}",
                    k.label,
                    k.class,
                    k.key_type,
                    k.id,
                    flag("sensitive", k.sensitive),
                    flag("extractable", k.extractable),
                    flag("never_extractable", k.never_extractable)
                );
            }
        }
    }
    Ok(())
}

async fn init_root(a: InitRootArgs) -> Result<(), String> {
    let cfg = a.token.token()?.ok_or("-tokenLabel is required")?;
    let td = TrustDomain::new(&a.trust_domain).map_err(|e| format!("-trustDomain: {e}"))?;
    let key_type: KeyType = a.key_type.parse().map_err(|e| format!("-keyType: {e}"))?;
    let curve = Curve::for_key_type(key_type).map_err(|e| format!("-keyType: {e}"))?;
    if a.ttl <= 0 {
        return Err("-ttl must be positive".into());
    }
    if a.cert_out.exists() {
        return Err(format!("-certOut {} exists; a key ceremony does not overwrite certificates", a.cert_out.display()));
    }
    let label = a.key_label.clone();
    let key: Arc<dyn Key> = blocking(move || {
        let token = Arc::new(cfg.open().map_err(|e| e.to_string())?);
        // A ceremony never replaces a key: an existing root key may be what every tier trusts.
        if token.find_key(&label).map_err(|e| e.to_string())?.is_some() {
            return Err(format!("token {:?} already holds a key labelled {label:?}; choose another -keyLabel", token.label()));
        }
        Ok(Arc::new(Pkcs11Key::generate(token, &label, curve).map_err(|e| e.to_string())?) as Arc<dyn Key>)
    })
    .await?;
    let subject = crate::pki::CaSubject { common_name: Some(a.common_name.clone()), ..crate::pki::CaSubject::default() };
    let signer = KeyRef(Arc::clone(&key));
    let now = crate::now_unix();
    let ttl = a.ttl;
    let td2 = td.clone();
    let der = sign_off_runtime(key.as_ref(), move || crate::pki::self_signed_ca(&signer, &td2, &subject, now, ttl))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("signing the root certificate: {e}"))?;
    let pem = ::pem::encode(&::pem::Pem::new("CERTIFICATE", der.clone()));
    crate::fsutil::write_public(&a.cert_out, pem.as_bytes()).map_err(|e| format!("-certOut {}: {e}", a.cert_out.display()))?;
    use sha2::Digest as _;
    outln!("Created root key {:?} ({}) on token {:?}", a.key_label, key_type.as_str(), a.token.token_label.as_deref().unwrap_or_default());
    outln!("Wrote the self-signed root certificate for {} to {}", td.id_string(), a.cert_out.display());
    outln!("SHA-256 fingerprint: {}", crate::text::hex(&sha2::Sha256::digest(&der)));
    outln!(
        "Use it with UpstreamAuthority \"pkcs11\" {{ plugin_data {{ module_path = {:?} token_label = {:?} key_label = {:?} cert_file_path = {:?} pin_file = ... }} }}",
        a.token.module.display().to_string(),
        a.token.token_label.as_deref().unwrap_or_default(),
        a.key_label,
        a.cert_out.display().to_string()
    );
    Ok(())
}

async fn check(a: CheckArgs) -> Result<(), String> {
    use crate::config::server::{ServerConfig, ServerOverrides, UpstreamConfig};
    use crate::keymanager::KeyManagerConfig;
    let config = ServerConfig::load(&a.config, a.expand_env, &ServerOverrides::default()).map_err(|e| e.to_string())?;
    let mut checked = 0;
    if let KeyManagerConfig::Pkcs11(km) = &config.key_manager {
        let manager = crate::keymanager::build(&config.key_manager).map_err(|e| format!("KeyManager \"pkcs11\": {e}"))?;
        outln!("KeyManager \"pkcs11\": token {:?} found, logged in, CKM_ECDSA and CKM_EC_KEY_PAIR_GEN offered", km.token.token_label);
        for id in ["x509-CA-A", "x509-CA-B", "JWT-Signer-A", "JWT-Signer-B"] {
            match manager.get_key(id).await.map_err(|e| e.to_string())? {
                Some(k) => outln!("  key {}{id}: {}", km.key_label_prefix, k.key_type().as_str()),
                None => outln!("  key {}{id}: not created yet", km.key_label_prefix),
            }
        }
        checked += 1;
    }
    if let Some(UpstreamConfig::Pkcs11(u)) = &config.upstream {
        crate::upstream::build(config.upstream.as_ref(), &config.trust_domain).map_err(|e| format!("UpstreamAuthority \"pkcs11\": {e}"))?;
        outln!(
            "UpstreamAuthority \"pkcs11\": key {:?} on token {:?} matches {}",
            u.key_label,
            u.token.token_label,
            u.cert_file_path.display()
        );
        checked += 1;
    }
    if checked == 0 {
        return Err(format!("{}: neither the KeyManager nor the UpstreamAuthority is \"pkcs11\"; nothing to check", a.config.display()));
    }
    outln!("OK");
    Ok(())
}
