//! The process on the other end of a Unix socket, pinned when the connection is accepted.
//!
//! The kernel reports the connecting process's pid, effective uid and effective gid
//! (`SO_PEERCRED`), frozen at `connect()`. A pid alone is a weak handle: the connected socket
//! can be passed to another process (SCM_RIGHTS, or inheritance), after which the process that
//! connected may `exec` a setuid program, or exit and have its pid reused. Anything that reads
//! `/proc/<pid>` later would then describe a different identity than the one that connected.
//!
//! So at accept we record, besides the credentials, an open handle on `/proc/<pid>` (which
//! stays bound to that one process: once it exits, lookups through the handle fail with
//! `ESRCH` even if the pid is reused), the process start time, and the identity of its
//! executable. [`PeerProcess::verify`], called after attestation, refuses the caller when the
//! process is gone, was replaced, exec'd another program, or no longer runs with the
//! credentials it connected with. This is SPIRE's peer tracker, plus the executable check.
//!
//! A window remains between `connect()` and our accept: a process that connects and exits at
//! once, with its pid reused before the agent accepts, is pinned as the new process. Exhausting
//! the pid space in that window is not practical; Linux 6.5's `SO_PEERPIDFD` would close it.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};

/// The credentials `SO_PEERCRED` reported for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id of the peer at connect time; `None` when the kernel did not report one.
    pub pid: Option<i32>,
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
}

/// Why a caller no longer is the process that connected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerChanged {
    /// No pid was reported, or `/proc/<pid>` could not be opened at accept.
    #[error("the connecting process could not be pinned at accept ({0})")]
    NotPinned(String),
    /// The process that connected has exited (its pid may now belong to another process).
    #[error("the process that connected has exited")]
    Exited,
    /// A process with another start time holds the pid.
    #[error("pid now belongs to another process (start time {then} at connect, {now} now)")]
    Replaced {
        /// Start time (clock ticks since boot) recorded at accept.
        then: u64,
        /// Start time read now.
        now: u64,
    },
    /// The process runs as another user or group than it connected as (a setuid or setgid
    /// exec, or a privilege change).
    #[error("process credentials changed: connected as uid {uid} gid {gid}, now {now_uid}:{now_gid}")]
    Credentials {
        /// uid at connect.
        uid: u32,
        /// gid at connect.
        gid: u32,
        /// Owner of `/proc/<pid>` now.
        now_uid: u32,
        /// Group of `/proc/<pid>` now.
        now_gid: u32,
    },
    /// The process exec'd another program since it connected.
    #[error("process executes another program than when it connected")]
    Exec,
    /// `/proc` could not be read.
    #[error("reading /proc: {0}")]
    Proc(String),
}

/// A connection's peer, pinned at accept. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct PeerProcess(Arc<Pinned>);

#[derive(Debug)]
struct Pinned {
    cred: PeerCred,
    /// Open `/proc/<pid>` directory, or why it could not be opened.
    dir: Result<OwnedFd, String>,
    start_time: Option<u64>,
    /// (device, inode) of the executable, when this process may see it.
    exe: Option<(u64, u64)>,
}

impl PeerProcess {
    /// Pins the peer whose credentials the kernel reported, under `proc_root` (`/proc`).
    ///
    /// Never fails: a peer that cannot be pinned is recorded as such, and [`verify`] refuses
    /// it, so the decision stays with the caller that needs identity.
    ///
    /// [`verify`]: PeerProcess::verify
    #[must_use]
    pub fn pin(cred: PeerCred, proc_root: &std::path::Path) -> Self {
        let dir = match cred.pid {
            Some(pid) if pid > 0 => {
                rustix::fs::open(proc_root.join(pid.to_string()), OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                    .map_err(|e| format!("/proc/{pid}: {e}"))
            }
            Some(pid) => Err(format!("invalid pid {pid}")),
            None => Err("no pid reported".to_owned()),
        };
        let (start_time, exe) = match &dir {
            Ok(fd) => (read_start_time(fd).ok(), exe_identity(fd)),
            Err(_) => (None, None),
        };
        Self(Arc::new(Pinned { cred, dir, start_time, exe }))
    }

    /// The credentials reported at connect.
    #[must_use]
    pub fn cred(&self) -> PeerCred {
        self.0.cred
    }

    /// Checks that the process that connected still exists under its pid, with the same start
    /// time, the same credentials and the same executable. Blocking (reads procfs).
    ///
    /// # Errors
    /// What changed.
    pub fn verify(&self) -> Result<(), PeerChanged> {
        let p = &*self.0;
        let dir = p.dir.as_ref().map_err(|e| PeerChanged::NotPinned(e.clone()))?;
        let then = p.start_time.ok_or_else(|| PeerChanged::NotPinned("start time unreadable".to_owned()))?;
        let now = read_start_time(dir).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => PeerChanged::Exited,
            _ if e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) => PeerChanged::Exited,
            _ => PeerChanged::Proc(e.to_string()),
        })?;
        if now != then {
            return Err(PeerChanged::Replaced { then, now });
        }
        // A lookup through the handle (not fstat on it) refreshes procfs's idea of the owner,
        // which follows the task's effective ids (root when it is not dumpable).
        let st = rustix::fs::statat(dir, "status", AtFlags::empty()).map_err(|e| {
            if e == rustix::io::Errno::SRCH || e == rustix::io::Errno::NOENT {
                PeerChanged::Exited
            } else {
                PeerChanged::Proc(e.to_string())
            }
        })?;
        if st.st_uid != p.cred.uid || st.st_gid != p.cred.gid {
            return Err(PeerChanged::Credentials { uid: p.cred.uid, gid: p.cred.gid, now_uid: st.st_uid, now_gid: st.st_gid });
        }
        if let Some(exe) = p.exe
            && exe_identity(dir) != Some(exe)
        {
            return Err(PeerChanged::Exec);
        }
        Ok(())
    }
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted after the last `)`.
fn read_start_time(dir: &OwnedFd) -> io::Result<u64> {
    let fd = rustix::fs::openat(dir, "stat", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let text = io::read_to_string(std::fs::File::from(fd))?;
    parse_start_time(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/<pid>/stat"))
}

fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After ")" come field 3 (state) onwards; the start time is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// (device, inode) of the process's executable, following `/proc/<pid>/exe`. `None` when it
/// cannot be seen (another user's process and no ptrace-read permission, a kernel thread).
fn exe_identity(dir: &OwnedFd) -> Option<(u64, u64)> {
    rustix::fs::statat(dir, "exe", AtFlags::empty()).ok().map(|st| (st.st_dev, st.st_ino))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use std::path::Path;

    fn own_cred() -> PeerCred {
        PeerCred {
            pid: Some(i32::try_from(std::process::id()).unwrap()),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    #[test]
    fn start_time_is_counted_after_the_last_parenthesis() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (x) S 1"), None);
    }

    #[test]
    fn a_live_process_verifies() {
        let p = PeerProcess::pin(own_cred(), Path::new("/proc"));
        assert_eq!(p.verify(), Ok(()));
    }

    #[test]
    fn an_exited_process_fails_even_when_its_pid_would_read_fine() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let cred = PeerCred { pid: Some(i32::try_from(child.id()).unwrap()), ..own_cred() };
        let p = PeerProcess::pin(cred, Path::new("/proc"));
        assert_eq!(p.verify(), Ok(()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(p.verify(), Err(PeerChanged::Exited));
    }

    #[test]
    fn other_credentials_than_at_connect_fail() {
        let cred = PeerCred { uid: own_cred().uid.wrapping_add(1), ..own_cred() };
        let p = PeerProcess::pin(cred, Path::new("/proc"));
        assert!(matches!(p.verify(), Err(PeerChanged::Credentials { .. })));
    }

    #[test]
    fn an_unpinnable_peer_fails() {
        let p = PeerProcess::pin(PeerCred { pid: None, uid: 0, gid: 0 }, Path::new("/proc"));
        assert!(matches!(p.verify(), Err(PeerChanged::NotPinned(_))));
        let p = PeerProcess::pin(PeerCred { pid: Some(i32::MAX), uid: 0, gid: 0 }, Path::new("/proc"));
        assert!(matches!(p.verify(), Err(PeerChanged::NotPinned(_))));
    }
}
