//! Logging setup and the health listener.

pub mod health;

use crate::config::server::LogFormat;

/// Installs the global tracing subscriber (stderr; text or JSON; level from config or
/// `CAIRN_LOG`). Secrets are never passed to tracing fields, so nothing here redacts.
pub fn init(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,cairn={}", level.to_ascii_lowercase())));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
