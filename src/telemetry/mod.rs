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

/// Installs the global tracing subscriber (level from the settings or `CAIRN_LOG`) and, inside
/// a tokio runtime, the SIGUSR2 handler. Secrets are never passed to tracing fields, so nothing
/// here redacts.
///
/// # Errors
/// `log_file` cannot be opened (named with its path).
pub fn init(settings: &LogSettings) -> Result<(), TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,cairn={}", settings.level.to_ascii_lowercase())));
    let file = match &settings.file {
        Some(path) => Some(ReopenableFile::open(path).map_err(|source| TelemetryError::LogFile { path: path.clone(), source })?),
        None => None,
    };
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_file(settings.source_location).with_line_number(settings.source_location);
    // A subscriber may already be installed (tests running several commands in one process);
    // the first one stays, which is what try_init reports and what we want.
    let _ = match (&file, settings.format) {
        (Some(f), LogFormat::Json) => builder.json().with_ansi(false).with_writer(f.clone()).try_init(),
        (Some(f), LogFormat::Text) => builder.with_ansi(false).with_writer(f.clone()).try_init(),
        (None, LogFormat::Json) => builder.json().with_ansi(false).with_writer(std::io::stderr).try_init(),
        (None, LogFormat::Text) => builder.with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).try_init(),
    };
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
