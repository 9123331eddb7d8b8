//! The demo's child processes: spawning them with this binary, noticing when one dies,
//! stopping them (SIGTERM, then SIGKILL after a timeout), and finding them again by pid
//! after a detached `up` has exited.
//!
//! Signals go through `kill(1)`: the crate forbids `unsafe`, and so the libc call.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process gets between SIGTERM and SIGKILL. A server drains its tasks for up to
/// 10 s on its own, so this leaves it room to finish.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(12);

/// One child of `cairn tiers up`.
#[derive(Debug)]
pub struct Proc {
    /// `server root`, `agent node-a`, ...
    pub label: String,
    /// Its stderr.
    pub log: PathBuf,
    child: Child,
    /// Already reported as exited (foreground mode reports each death once).
    reported: bool,
}

impl Proc {
    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The children started so far, in start order.
#[derive(Debug)]
pub struct Supervisor {
    exe: PathBuf,
    procs: Vec<Proc>,
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl Supervisor {
    /// Children will run `exe` (this binary).
    #[must_use]
    pub fn new(exe: PathBuf) -> Self {
        Self { exe, procs: Vec::new(), env: Vec::new() }
    }

    /// Sets `key=value` in the environment of every child started from now on.
    pub fn set_env(&mut self, key: &str, value: &std::ffi::OsStr) {
        self.env.push((key.into(), value.to_owned()));
    }

    /// How many children were started.
    #[must_use]
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether none were started.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Starts `exe <args>` in `cwd`, stderr appended to `log`; returns its index.
    ///
    /// Each child gets its own process group, so a Ctrl-C in the terminal reaches only
    /// `cairn tiers up` (which then stops the tiers leaves first) and a detached demo survives
    /// the terminal it was started from.
    ///
    /// # Errors
    /// The log cannot be opened or the process cannot start.
    pub fn spawn(&mut self, label: &str, args: &[&std::ffi::OsStr], cwd: &Path, log: &Path) -> Result<usize, String> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::process::CommandExt;
        // Logs name agent IDs, which carry join tokens: owner only.
        let log_file = std::fs::OpenOptions::new()
            .mode(0o600)
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("cannot open the log {} for {label}: {e}", log.display()))?;
        let child = Command::new(&self.exe)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            // The logs are files: no terminal colour codes in them.
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {label} ({}): {e}", self.exe.display()))?;
        self.procs.push(Proc { label: label.to_owned(), log: log.to_owned(), child, reported: false });
        Ok(self.procs.len() - 1)
    }

    /// The child at `idx`.
    #[must_use]
    pub fn get(&self, idx: usize) -> Option<&Proc> {
        self.procs.get(idx)
    }

    /// If the child at `idx` has exited: a message with its status and the end of its log.
    pub fn exit_message(&mut self, idx: usize) -> Option<String> {
        let p = self.procs.get_mut(idx)?;
        match p.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status}); end of {}:\n{}", p.label, p.log.display(), log_tail(&p.log, 15))),
            _ => None,
        }
    }

    /// Children that exited since the last call, each reported once.
    pub fn newly_exited(&mut self) -> Vec<(String, ExitStatus, PathBuf)> {
        let mut out = Vec::new();
        for p in self.procs.iter_mut().filter(|p| !p.reported) {
            if let Ok(Some(status)) = p.child.try_wait() {
                p.reported = true;
                out.push((p.label.clone(), status, p.log.clone()));
            }
        }
        out
    }

    /// Stops every child: SIGTERM to all (last started first, so agents and lower tiers go
    /// before the servers they depend on), then SIGKILL to those still running after
    /// [`STOP_TIMEOUT`]. Returns how many needed SIGKILL.
    pub async fn stop_all(&mut self) -> usize {
        for p in self.procs.iter_mut().rev() {
            if matches!(p.child.try_wait(), Ok(None)) {
                signal(p.child.id(), "TERM");
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline && self.procs.iter_mut().any(|p| matches!(p.child.try_wait(), Ok(None))) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut killed = 0;
        for p in &mut self.procs {
            if matches!(p.child.try_wait(), Ok(None)) {
                warn_line!("{} (pid {}) did not stop within {}s of SIGTERM; killing it", p.label, p.child.id(), STOP_TIMEOUT.as_secs());
                let _ = p.child.kill();
                let _ = p.child.wait();
                killed += 1;
            }
        }
        self.procs.clear();
        killed
    }

    /// Leaves the children running: the handles are dropped without killing (std's `Child`
    /// never kills on drop), and init adopts them when this process exits.
    pub fn detach(&mut self) {
        self.procs.clear();
    }
}

/// Sends `SIGsig` to `pid` with kill(1); false when kill refuses (no such process, ...).
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `pid` is alive and is the process we started: its command line contains `marker`
/// (the config path it was started with). A pid reused by something else, or a zombie
/// (empty command line), does not count. Without /proc, `kill -0` decides alone.
#[must_use]
pub fn is_ours(pid: u32, marker: &str) -> bool {
    if Path::new("/proc/self").exists() {
        match std::fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(bytes) => {
                let cmdline = String::from_utf8_lossy(&bytes).replace('\0', " ");
                !cmdline.trim().is_empty() && cmdline.contains(marker)
            }
            Err(_) => false,
        }
    } else {
        signal(pid, "0")
    }
}

/// Stops processes this program did not spawn (a detached demo): SIGTERM to each live one,
/// wait up to [`STOP_TIMEOUT`], then SIGKILL. `procs` are (label, pid, marker) in stop order.
/// Returns (stopped, killed).
pub async fn stop_pids(procs: &[(String, u32, String)]) -> (usize, usize) {
    let live: Vec<&(String, u32, String)> = procs.iter().filter(|(_, pid, m)| is_ours(*pid, m)).collect();
    for (_, pid, _) in &live {
        signal(*pid, "TERM");
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline && live.iter().any(|(_, pid, m)| is_ours(*pid, m)) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut killed = 0;
    for (label, pid, m) in &live {
        if is_ours(*pid, m) {
            warn_line!("{label} (pid {pid}) did not stop within {}s of SIGTERM; killing it", STOP_TIMEOUT.as_secs());
            signal(*pid, "KILL");
            killed += 1;
        }
    }
    (live.len(), killed)
}

/// The last `n` lines of a log file (for messages about a process that died).
#[must_use]
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines.get(lines.len().saturating_sub(n)..).unwrap_or_default();
    if tail.is_empty() { "  (empty)".to_owned() } else { tail.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n") }
}

/// `n` ports on 127.0.0.1 from `base` up that nothing listens on now (each is bound and
/// released; a server binds it moments later).
///
/// # Errors
/// Not enough free ports below 65536.
pub fn free_ports(base: u16, n: usize) -> Result<Vec<u16>, String> {
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Ok(out);
    }
    let mut port = base;
    loop {
        if port != 0 && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
            if out.len() == n {
                return Ok(out);
            }
        }
        port = port
            .checked_add(1)
            .ok_or_else(|| format!("only {} free ports from --base-port {base} up to 65535; {n} are needed", out.len()))?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
    use super::*;

    #[test]
    fn busy_ports_are_skipped() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = busy.local_addr().unwrap().port();
        let got = free_ports(p, 2).unwrap();
        assert!(!got.contains(&p) && got.iter().all(|g| *g > p), "{got:?}");
        assert!(free_ports(65535, 3).is_err());
    }

    #[test]
    fn liveness_needs_the_marker() {
        let me = std::process::id();
        // argv[0] is in the command line however the test binary was started.
        let exe = std::env::args().next().unwrap();
        assert!(is_ours(me, &exe));
        if Path::new("/proc/self").exists() {
            assert!(!is_ours(me, "no-such-marker-in-this-command-line"));
        }
        assert!(!is_ours(u32::MAX - 1, &exe));
    }
}
