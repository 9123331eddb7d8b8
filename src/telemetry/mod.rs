//! Logging setup and the health listener.
//!
//! Logs go to stderr, or to `log_file` when one is set, as text or as one JSON object per
//! line. Colour (ANSI escapes) is used only when the output is stderr and stderr is a
//! terminal: a log file, a pipe or journald must get plain text a machine can read.
//!
//! With `log_file`, SIGUSR2 reopens the file, as SPIRE does (`pkg/common/log/reopen_posix.go`),
//! so logrotate can rename it and signal the process without `copytruncate`. SIGUSR2 is caught
//! even without `log_file`: its default action would kill the server, and an operator's
//! `killall -USR2` meant for rotation must never take a CA down.

pub mod health;

use crate::config::server::LogFormat;
use std::fs::File;
use std::io::{IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

pub use crate::config::LogSettings;

/// SPIRE's mode for log files (`pkg/common/log/reopen.go`: `fileMode = 0640`): logs may name
/// SPIFFE IDs and hosts, so they are not world-readable.
const LOG_FILE_MODE: u32 = 0o640;

fn open_log_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new().create(true).append(true).mode(LOG_FILE_MODE).open(path)
}

/// The log file, swappable under the writers' feet when SIGUSR2 asks for a reopen.
#[derive(Debug, Clone)]
struct ReopenableFile {
    path: PathBuf,
    current: Arc<RwLock<Arc<File>>>,
}

impl ReopenableFile {
    fn open(path: &Path) -> std::io::Result<Self> {
        let file = open_log_file(path)?;
        Ok(Self { path: path.to_owned(), current: Arc::new(RwLock::new(Arc::new(file))) })
    }

    /// Opens the path again (creating it after a rename) and sends later events there. On
    /// failure the old file stays in use, as in SPIRE: losing the log is worse than writing
    /// to a renamed file.
    fn reopen(&self) -> std::io::Result<()> {
        let file = open_log_file(&self.path)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(file);
        Ok(())
    }
}

/// One event's writer: the file current when the event began.
struct FileWriter(Arc<File>);

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (&*self.0).flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ReopenableFile {
    type Writer = FileWriter;

    fn make_writer(&'a self) -> Self::Writer {
        FileWriter(Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner)))
    }
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// `log_file` cannot be opened.
    #[error("log_file {}: {source}", path.display())]
    LogFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The levels an operator can choose: SPIRE's (logrus's) names. `panic` and `fatal` keep
/// only what cairn logs at ERROR, as tracing has nothing above it.
pub const LEVELS: [&str; 7] = ["panic", "fatal", "error", "warn", "info", "debug", "trace"];

/// Runtime control of the log level (SPIRE's Logger API): the filter is reloadable.
struct LevelControl {
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
    launch: &'static str,
    current: std::sync::Mutex<&'static str>,
}

static LEVEL_CONTROL: std::sync::OnceLock<LevelControl> = std::sync::OnceLock::new();

/// A level name in SPIRE's spelling (any case) as one of [`LEVELS`].
#[must_use]
pub fn level_name(level: &str) -> Option<&'static str> {
    let l = level.to_ascii_lowercase();
    let l = if l == "warning" { "warn".to_owned() } else { l };
    LEVELS.iter().copied().find(|n| *n == l)
}

fn filter_for(level: &str) -> tracing_subscriber::EnvFilter {
    let tracing_level = match level {
        "panic" | "fatal" => "error",
        other => other,
    };
    tracing_subscriber::EnvFilter::new(format!("warn,cairn={tracing_level}"))
}

/// The current and launch levels (lower case, from [`LEVELS`]), once logging is set up.
#[must_use]
pub fn log_levels() -> Option<(&'static str, &'static str)> {
    let c = LEVEL_CONTROL.get()?;
    Some((*c.current.lock().unwrap_or_else(PoisonError::into_inner), c.launch))
}

/// Sets the level from now on; `None` goes back to the launch level.
///
/// # Errors
/// Logging is not set up in this process, or the level is not one of [`LEVELS`].
pub fn set_log_level(level: Option<&str>) -> Result<(&'static str, &'static str), String> {
    let c = LEVEL_CONTROL.get().ok_or("logging is not set up in this process")?;
    let name = match level {
        None => c.launch,
        Some(l) => level_name(l).ok_or_else(|| format!("{l:?} is not a log level (one of {})", LEVELS.join(", ")))?,
    };
    c.handle.reload(filter_for(name)).map_err(|e| format!("cannot change the log level: {e}"))?;
    *c.current.lock().unwrap_or_else(PoisonError::into_inner) = name;
    Ok((name, c.launch))
}

/// Installs the global tracing subscriber (level from the settings or `CAIRN_LOG`) and, inside
/// a tokio runtime, the SIGUSR2 handler. Secrets are never passed to tracing fields, so nothing
/// here redacts. The level can be changed later with [`set_log_level`].
///
/// # Errors
/// `log_file` cannot be opened (named with its path).
pub fn init(settings: &LogSettings) -> Result<(), TelemetryError> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let launch = level_name(&settings.level).unwrap_or("info");
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| filter_for(launch));
    let file = match &settings.file {
        Some(path) => Some(ReopenableFile::open(path).map_err(|source| TelemetryError::LogFile { path: path.clone(), source })?),
        None => None,
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    type Filtered = tracing_subscriber::layer::Layered<
        tracing_subscriber::reload::Layer<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
        tracing_subscriber::Registry,
    >;
    type Boxed = Box<dyn tracing_subscriber::Layer<Filtered> + Send + Sync>;
    let base = tracing_subscriber::fmt::layer().with_file(settings.source_location).with_line_number(settings.source_location);
    let fmt: Boxed = match (&file, settings.format) {
        (Some(f), LogFormat::Json) => Box::new(base.json().with_ansi(false).with_writer(f.clone())),
        (Some(f), LogFormat::Text) => Box::new(base.with_ansi(false).with_writer(f.clone())),
        (None, LogFormat::Json) => Box::new(base.json().with_ansi(false).with_writer(std::io::stderr)),
        (None, LogFormat::Text) => Box::new(base.with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr)),
    };
    // A subscriber may already be installed (tests running several commands in one process);
    // the first one stays, which is what try_init reports and what we want.
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        let _ = LEVEL_CONTROL.set(LevelControl { handle, launch, current: std::sync::Mutex::new(launch) });
    }
    reopen_on_sigusr2(file);
    Ok(())
}

/// Catches SIGUSR2 for the life of the process and reopens the log file on each one. Outside a
/// tokio runtime (unit tests) there is nothing to install.
fn reopen_on_sigusr2(file: Option<ReopenableFile>) {
    use tokio::signal::unix::{SignalKind, signal};
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let mut usr2 = match signal(SignalKind::user_defined2()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot catch SIGUSR2: log rotation by signal is unavailable");
            return;
        }
    };
    // The task lives as long as the process: the signal disposition must outlive any one run.
    tokio::spawn(async move {
        while usr2.recv().await.is_some() {
            match &file {
                Some(f) => match f.reopen() {
                    Ok(()) => tracing::info!(path = %f.path.display(), "reopened log file after SIGUSR2"),
                    Err(e) => tracing::error!(path = %f.path.display(), error = %e, "failed to rotate log after signal"),
                },
                None => tracing::info!("SIGUSR2 received; no log_file is set, so there is nothing to reopen"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter as _;

    #[test]
    fn reopen_follows_the_path_after_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.log");
        let f = ReopenableFile::open(&path).unwrap();
        f.make_writer().write_all(b"one\n").unwrap();
        let rotated = dir.path().join("cairn.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        // Before the reopen, writes follow the renamed file (the open descriptor).
        f.make_writer().write_all(b"two\n").unwrap();
        f.reopen().unwrap();
        f.make_writer().write_all(b"three\n").unwrap();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, LOG_FILE_MODE);
    }
}
