//! The `unix` workload attestor: turns the caller of the Workload API (a
//! process on the other end of the agent's Unix socket) into SPIRE's `unix`
//! selectors.
//!
//! This mirrors SPIRE's built-in agent plugin of the same name
//! (`pkg/agent/plugin/workloadattestor/unix/unix_posix.go`, documented in
//! `doc/plugin_agent_workloadattestor_unix.md`) so that registration entries
//! written for SPIRE keep matching when cairn replaces the SPIRE agent:
//!
//! * Only the caller's pid is taken from the socket. SPIRE ignores the
//!   socket's uid/gid and reads `/proc/<pid>/status` instead, using the
//!   *effective* uid and gid (the second column of the `Uid:`/`Gid:` lines,
//!   or the only column if there is just one). We do the same so that, for
//!   example, a setuid binary attests as its effective user exactly as under
//!   SPIRE.
//! * Supplementary groups are the raw entries of the `Groups:` line, in the
//!   kernel's order, each followed by its name when it resolves. The primary
//!   gid is not filtered out of that list, because SPIRE does not filter it.
//! * A user or group name that cannot be resolved simply omits the
//!   `user:` / `group:` / `supplementary_group:` selector; it is never an
//!   error.
//! * With `discover_workload_path` the path selector is the raw target of
//!   `/proc/<pid>/exe` (including the kernel's ` (deleted)` suffix if the
//!   binary was unlinked), and unless `workload_size_limit` is negative the
//!   `sha256:` selector hashes the file opened *through* `/proc/<pid>/exe`.
//!   Opening the magic link reaches the exact inode the process runs, even
//!   when the workload lives in another mount namespace (a container) where
//!   the path string means nothing to the agent. A binary over a positive
//!   `workload_size_limit` fails attestation.
//!
//! Name resolution reads `passwd`/`group` files as text, following the rules
//! of Go's pure-Go `os/user` parser (which is what a statically linked SPIRE
//! effectively does too). NSS sources other than files (LDAP, SSSD,
//! systemd-userdb, NIS, ...) are **not** consulted: a user known only through
//! such a source gets a `uid:` selector but no `user:` selector.
//!
//! Everything here is blocking file I/O; the async caller is expected to run
//! [`attest`] inside `tokio::task::spawn_blocking`.
//!
//! Pid reuse (the caller exiting and its pid being recycled before or during
//! attestation) and exec are not detected here: as in SPIRE, the caller pins the
//! peer at accept and re-checks it afterwards ([`crate::net::peer`]). What this
//! attestor does check is that the effective uid and gid it reads are the ones
//! the kernel reported at connect: a process that gained privileges in between
//! (a setuid exec that later drops them again, say) is refused instead of being
//! described by a snapshot taken while it was privileged.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The selector type every selector from this attestor carries.
pub const SELECTOR_TYPE: &str = "unix";

/// Configuration of the `unix` attestor.
///
/// The first two fields are SPIRE's `plugin_data` keys for this plugin and
/// keep SPIRE's meaning and defaults; the path fields exist so that tests
/// (and unusual deployments, like SPIRE's `HOST_PROC`) can point the
/// attestor somewhere other than the host's `/proc` and `/etc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixAttestorConfig {
    /// SPIRE's `discover_workload_path`: also emit the `path:` selector and,
    /// subject to `workload_size_limit`, the `sha256:` selector. Off by
    /// default in SPIRE because it needs permission to read
    /// `/proc/<pid>/exe` of other users' processes.
    pub discover_workload_path: bool,
    /// SPIRE's `workload_size_limit`, in bytes: `0` hashes binaries of any
    /// size, a positive value fails attestation of binaries larger than it,
    /// and a negative value never computes the `sha256:` selector. Only
    /// consulted when `discover_workload_path` is set.
    pub workload_size_limit: i64,
    /// Root of the proc filesystem (`/proc`); `<proc_root>/<pid>/status` and
    /// `<proc_root>/<pid>/exe` are read.
    pub proc_root: PathBuf,
    /// The passwd file used to turn uids into user names (`/etc/passwd`).
    pub passwd_path: PathBuf,
    /// The group file used to turn gids into group names (`/etc/group`).
    pub group_path: PathBuf,
}

impl Default for UnixAttestorConfig {
    /// SPIRE's defaults (no path discovery, no size limit) against the host's
    /// `/proc`, `/etc/passwd` and `/etc/group`.
    fn default() -> Self {
        Self {
            discover_workload_path: false,
            workload_size_limit: 0,
            proc_root: PathBuf::from("/proc"),
            passwd_path: PathBuf::from("/etc/passwd"),
            group_path: PathBuf::from("/etc/group"),
        }
    }
}

/// The caller as the kernel reports it for the socket connection.
pub use crate::net::PeerCred;

/// Why attestation of a caller failed. Any error fails the whole attestation,
/// as any error does in SPIRE's plugin; there are no partial selector sets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnixAttestorError {
    /// The socket did not report the peer's pid, so there is no process to
    /// inspect.
    #[error("peer credentials carry no pid")]
    MissingPid,
    /// The pid reported for the peer is not a valid process id.
    #[error("invalid pid {0}")]
    InvalidPid(i32),
    /// The process is gone: it exited between connecting and being attested.
    #[error("failed to get process: process {pid} does not exist")]
    ProcessNotFound {
        /// The pid that was looked up.
        pid: i32,
    },
    /// `/proc/<pid>/status` could not be read.
    #[error("failed to read status of process {pid}: {source}")]
    ReadStatus {
        /// The pid being attested.
        pid: i32,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The process runs with other effective ids than it connected with.
    #[error("process {pid} runs as uid {now_uid} gid {now_gid} but connected as uid {uid} gid {gid}")]
    CredentialsChanged {
        /// The pid being attested.
        pid: i32,
        /// Effective uid at connect.
        uid: u32,
        /// Effective gid at connect.
        gid: u32,
        /// Effective uid now.
        now_uid: u32,
        /// Effective gid now.
        now_gid: u32,
    },
    /// `/proc/<pid>/status` lacks a usable `Uid:` or `Gid:` line.
    #[error("{what} lookup: {detail} (pid {pid})")]
    MalformedStatus {
        /// The pid being attested.
        pid: i32,
        /// Which ids were being read (`UIDs` or `GIDs`).
        what: &'static str,
        /// What was wrong with them.
        detail: String,
    },
    /// The target of `/proc/<pid>/exe` could not be read.
    #[error("path lookup: pid {pid}: {source}")]
    ExeLookup {
        /// The pid being attested.
        pid: i32,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The executable's path is not valid UTF-8 and so cannot be a selector
    /// value (selector values are protobuf strings).
    #[error("path lookup: pid {pid}: executable path {path:?} is not valid UTF-8")]
    NonUtf8ExePath {
        /// The pid being attested.
        pid: i32,
        /// The path the kernel reported.
        path: PathBuf,
    },
    /// The executable could not be opened, inspected or read for hashing.
    #[error("SHA256 digest: {path}: {source}", path = path.display())]
    Digest {
        /// The file being hashed (`<proc_root>/<pid>/exe`).
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The executable is larger than a positive `workload_size_limit`.
    #[error(
        "SHA256 digest: workload {path} exceeds size limit ({size} > {limit})",
        path = path.display()
    )]
    SizeLimitExceeded {
        /// The file that was to be hashed (`<proc_root>/<pid>/exe`).
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The configured limit in bytes.
        limit: i64,
    },
}

/// Computes SPIRE's `unix` selectors for the process behind `peer`.
///
/// Returns `(type, value)` pairs with type `"unix"` and the value without
/// the `unix:` prefix, in SPIRE's order: `uid`, `user`, `gid`, `group`, then
/// `supplementary_gid`/`supplementary_group` pairs in the kernel's order,
/// then `path` and `sha256`. Name selectors are omitted when the id has no
/// entry in the configured passwd/group file.
///
/// Blocking: reads procfs, the passwd/group files and possibly the whole
/// workload binary, so async callers should use `spawn_blocking`.
///
/// # Errors
///
/// Fails when the peer has no valid pid, the process no longer exists, its
/// status cannot be read or parsed, or (with path discovery) its executable
/// cannot be resolved or hashed, including a binary over a positive
/// `workload_size_limit`.
pub fn attest(peer: &PeerCred, cfg: &UnixAttestorConfig) -> Result<Vec<(String, String)>, UnixAttestorError> {
    let pid = peer.pid.ok_or(UnixAttestorError::MissingPid)?;
    // SPIRE (via gopsutil) rejects non-positive pids before touching /proc;
    // pid 0 or a negative value would otherwise name a non-process path.
    if pid <= 0 {
        return Err(UnixAttestorError::InvalidPid(pid));
    }
    let proc_dir = cfg.proc_root.join(pid.to_string());

    // Existence check first, like gopsutil's NewProcess, so a caller that has
    // already exited gets a clear "does not exist" error.
    match std::fs::metadata(&proc_dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(UnixAttestorError::ProcessNotFound { pid });
        }
        Err(source) => return Err(UnixAttestorError::ReadStatus { pid, source }),
    }

    // Read status once and take uid, gid and groups from the same snapshot;
    // SPIRE re-reads it per field, which can only add inconsistency.
    let status = match std::fs::read(proc_dir.join("status")) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        // The process may exit between the existence check and this read.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(UnixAttestorError::ProcessNotFound { pid });
        }
        Err(source) => return Err(UnixAttestorError::ReadStatus { pid, source }),
    };
    let ids = parse_status(&status, pid)?;
    if (ids.uid, ids.gid) != (peer.uid, peer.gid) {
        return Err(UnixAttestorError::CredentialsChanged { pid, uid: peer.uid, gid: peer.gid, now_uid: ids.uid, now_gid: ids.gid });
    }

    // A missing or unreadable passwd/group file resolves nothing, just as a
    // failed lookup in SPIRE only drops the name selector.
    let passwd = read_optional(&cfg.passwd_path);
    let group = read_optional(&cfg.group_path);

    let mut selectors = Vec::new();
    let mut push = |kind: &str, value: &str| {
        selectors.push((SELECTOR_TYPE.to_owned(), format!("{kind}:{value}")));
    };

    let uid = ids.uid.to_string();
    push("uid", &uid);
    if let Some(name) = lookup_user_name(&passwd, &uid) {
        push("user", name);
    }

    let gid = ids.gid.to_string();
    push("gid", &gid);
    if let Some(name) = lookup_group_name(&group, &gid) {
        push("group", name);
    }

    for sgid in &ids.groups {
        push("supplementary_gid", sgid);
        if let Some(name) = lookup_group_name(&group, sgid) {
            push("supplementary_group", name);
        }
    }

    // Path and digest need permission to read another user's
    // /proc/<pid>/exe, which is why SPIRE keeps them behind a flag.
    if cfg.discover_workload_path {
        let exe_link = proc_dir.join("exe");
        let target = std::fs::read_link(&exe_link).map_err(|source| UnixAttestorError::ExeLookup { pid, source })?;
        let path = target.to_str().ok_or_else(|| UnixAttestorError::NonUtf8ExePath { pid, path: target.clone() })?;
        push("path", path);

        if cfg.workload_size_limit >= 0 {
            // Hash through the magic link, not the path string: the string
            // is relative to the workload's mount namespace and may even be
            // a deleted file, while the link always opens the running inode.
            let digest = sha256_file(&exe_link, cfg.workload_size_limit)?;
            push("sha256", &digest);
        }
    }

    Ok(selectors)
}

/// The ids SPIRE takes from `/proc/<pid>/status`.
#[derive(Debug, PartialEq, Eq)]
struct StatusIds {
    uid: u32,
    gid: u32,
    /// Raw `Groups:` entries; SPIRE passes them through unparsed.
    groups: Vec<String>,
}

/// Extracts the effective uid/gid and the supplementary groups from the text
/// of a `/proc/<pid>/status` file.
fn parse_status(status: &str, pid: i32) -> Result<StatusIds, UnixAttestorError> {
    let mut uids = None;
    let mut gids = None;
    let mut groups = Vec::new();
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "Uid" => uids = Some(parse_id_list(value, pid, "UIDs")?),
            "Gid" => gids = Some(parse_id_list(value, pid, "GIDs")?),
            // SPIRE matches this key case-insensitively; the kernel only
            // ever writes "Groups", but being lenient costs nothing.
            k if k.eq_ignore_ascii_case("groups") => {
                groups = value.split_whitespace().map(str::to_owned).collect();
            }
            _ => {}
        }
    }
    Ok(StatusIds {
        uid: pick_effective(&uids.unwrap_or_default(), pid, "UIDs")?,
        gid: pick_effective(&gids.unwrap_or_default(), pid, "GIDs")?,
        groups,
    })
}

/// Parses the whitespace-separated numbers of a `Uid:`/`Gid:` line. Like
/// gopsutil, any unparsable entry makes the whole lookup fail rather than
/// silently shifting which column counts as "effective".
fn parse_id_list(value: &str, pid: i32, what: &'static str) -> Result<Vec<u32>, UnixAttestorError> {
    value
        .split_whitespace()
        .map(|field| {
            field.parse::<u32>().map_err(|_| UnixAttestorError::MalformedStatus { pid, what, detail: format!("invalid id {field:?}") })
        })
        .collect()
}

/// The kernel lists real, effective, saved and filesystem ids; SPIRE uses
/// the effective one (index 1), falling back to a lone entry.
fn pick_effective(ids: &[u32], pid: i32, what: &'static str) -> Result<u32, UnixAttestorError> {
    match ids {
        [] => Err(UnixAttestorError::MalformedStatus { pid, what, detail: "no ids for process".to_owned() }),
        [only] => Ok(*only),
        [_, effective, ..] => Ok(*effective),
    }
}

/// Reads a passwd/group file, treating any failure as an empty database.
/// Invalid UTF-8 is replaced rather than rejected so one bad line cannot
/// hide every other entry; such a line can then only match with a mangled
/// name, which is still preferable to failing attestation.
fn read_optional(path: &Path) -> String {
    std::fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
}

/// Yields the meaningful lines of a colon file, skipping blank lines and
/// comments the way glibc and Go's `os/user` do.
fn colon_file_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'))
}

/// Entry names beginning with `+` or `-` are NIS compat markers, not real
/// accounts; glibc and Go both refuse to resolve ids to them.
fn is_real_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('+') && !name.starts_with('-')
}

/// Whether a numeric field would be accepted by Go's `strconv.Atoi`, which
/// `os/user` uses to reject rows with garbage in their id columns.
fn is_go_int(field: &str) -> bool {
    let digits = field.strip_prefix('+').or_else(|| field.strip_prefix('-')).unwrap_or(field);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Finds the user name for `uid` (decimal text) in passwd-format `text`.
///
/// A row needs all seven fields (`name:pw:uid:gid:gecos:home:shell`), a real
/// name and numeric uid/gid columns; the uid column must equal `uid` as text
/// (Go's `os/user` compares strings, so `01000` does not match `1000`).
/// The first matching row wins, malformed rows are skipped.
fn lookup_user_name<'a>(text: &'a str, uid: &str) -> Option<&'a str> {
    colon_file_lines(text).find_map(|line| {
        let mut fields = line.splitn(7, ':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let row_uid = fields.next()?;
        let primary_gid = fields.next()?;
        // gecos, home and shell must be present even though unused.
        fields.next()?;
        fields.next()?;
        fields.next()?;
        (row_uid == uid && is_real_name(name) && is_go_int(row_uid) && is_go_int(primary_gid)).then_some(name)
    })
}

/// Finds the group name for `gid` (decimal text) in group-format `text`.
///
/// A row needs four fields (`name:pw:gid:members`), a real name and a
/// numeric gid column equal to `gid` as text. The first matching row wins,
/// malformed rows are skipped.
fn lookup_group_name<'a>(text: &'a str, gid: &str) -> Option<&'a str> {
    colon_file_lines(text).find_map(|line| {
        let mut fields = line.splitn(4, ':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let row_gid = fields.next()?;
        let _members = fields.next()?;
        (row_gid == gid && is_real_name(name) && is_go_int(row_gid)).then_some(name)
    })
}

/// Hex SHA-256 of the file at `path`, refusing files larger than a positive
/// `limit`. The size is taken from the opened handle so that the check and
/// the hash refer to the same file even if a path component changes.
fn sha256_file(path: &Path, limit: i64) -> Result<String, UnixAttestorError> {
    let digest_err = |source| UnixAttestorError::Digest { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(digest_err)?;
    if limit > 0 {
        let size = file.metadata().map_err(digest_err)?.len();
        // A negative limit never reaches here, so the conversion only fails
        // for limits no file can exceed.
        if u64::try_from(limit).is_ok_and(|max| size > max) {
            return Err(UnixAttestorError::SizeLimitExceeded { path: path.to_path_buf(), size, limit });
        }
    }
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(digest_err)?;
    Ok(hex_lower(&hasher.finalize()))
}

/// Lower-case hex, the encoding SPIRE's `hex.EncodeToString` produces.
fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// SHA-256 of the four bytes "data"; the same vector SPIRE's tests use.
    const DATA_SHA256: &str = "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7";

    /// A throwaway directory removed on drop (no tempfile dependency).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("cairn-unixatt-{}-{tag}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
        fn path(&self) -> &Path {
            &self.0
        }
        fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(&p, contents).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const PASSWD: &str = "\
# comment line
root:x:0:0:root:/root:/bin/bash

   alice:x:1000:1000:Alice,,,:/home/alice:/bin/zsh
bob:x:1001:1001:Bob:/home/bob
broken line without colons
:x:1002:1002::/home/noname:/bin/sh
+nis:x:1003:1003::/:/bin/sh
-nis2:x:1004:1004::/:/bin/sh
carol:x:10o5:1005::/home/carol:/bin/sh
dave:x:1006:notanumber::/home/dave:/bin/sh
erin:x:01007:1007::/home/erin:/bin/sh
frank:x:1008:1008::/home/frank:/bin/sh
frank2:x:1008:1008::/home/frank2:/bin/sh
gecos:x:1009:1009:a:b:c:d:/home/g:/bin/sh
";

    const GROUP: &str = "\
# groups
root:x:0:
staff:x:50:alice,bob
sudo:x:27:alice
short:x:60
:x:61:
+nisgrp:x:62:
weird:x:6x3:
video:x:44:
video2:x:44:
\u{0}\u{1}garbage:::::::
";

    /// A fake `/proc/<pid>` with the given status text and an `exe` symlink.
    fn fake_proc(tmp: &TempDir, pid: i32, status: &str, exe_target: Option<&Path>) -> PathBuf {
        let root = tmp.path().join("proc");
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("status"), status).unwrap();
        if let Some(target) = exe_target {
            std::os::unix::fs::symlink(target, dir.join("exe")).unwrap();
        }
        root
    }

    fn cfg_for(tmp: &TempDir, proc_root: PathBuf) -> UnixAttestorConfig {
        UnixAttestorConfig {
            discover_workload_path: false,
            workload_size_limit: 0,
            proc_root,
            passwd_path: tmp.write("etc/passwd", PASSWD.as_bytes()),
            group_path: tmp.write("etc/group", GROUP.as_bytes()),
        }
    }

    /// Attests `pid` as a caller that connected with the effective ids its status shows now.
    fn attest_as_connected(pid: i32, cfg: &UnixAttestorConfig) -> Result<Vec<(String, String)>, UnixAttestorError> {
        let (uid, gid) = std::fs::read_to_string(cfg.proc_root.join(pid.to_string()).join("status"))
            .ok()
            .and_then(|s| parse_status(&s, pid).ok())
            .map_or((0, 0), |ids| (ids.uid, ids.gid));
        attest(&PeerCred { pid: Some(pid), uid, gid }, cfg)
    }

    #[test]
    fn a_process_running_with_other_ids_than_it_connected_with_is_refused() {
        // Connected as nobody, now effectively root (a setuid exec): no selectors at all.
        let tmp = TempDir::new("credchange");
        let root = fake_proc(&tmp, 77, &status_text("65534\t0\t0\t0", "65534\t65534\t65534\t65534", ""), None);
        let cfg = cfg_for(&tmp, root);
        let nobody = PeerCred { pid: Some(77), uid: 65534, gid: 65534 };
        assert!(matches!(attest(&nobody, &cfg), Err(UnixAttestorError::CredentialsChanged { pid: 77, uid: 65534, now_uid: 0, .. })));
        // The same process, had it connected as root, is attested.
        let as_root = PeerCred { pid: Some(77), uid: 0, gid: 65534 };
        assert!(attest(&as_root, &cfg).is_ok());
    }

    fn values(selectors: &[(String, String)]) -> Vec<&str> {
        assert!(selectors.iter().all(|(t, _)| t == "unix"));
        selectors.iter().map(|(_, v)| v.as_str()).collect()
    }

    fn status_text(uid: &str, gid: &str, groups: &str) -> String {
        format!(
            "Name:\tworkload\nState:\tS (sleeping)\nPid:\t4242\nUid:\t{uid}\nGid:\t{gid}\nFDSize:\t64\nGroups:\t{groups}\nVmPeak:\t  1000 kB\n"
        )
    }

    /// The effective id column of our own status line, parsed independently.
    fn own_effective(key: &str) -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap();
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    }

    fn own_groups() -> Vec<String> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
        line.trim_start_matches("Groups:").split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn attests_own_process() {
        let tmp = TempDir::new("self");
        let uid = own_effective("Uid");
        let gid = own_effective("Gid");
        let passwd = tmp.write("passwd", format!("tester:x:{uid}:{gid}::/home/tester:/bin/sh\n").as_bytes());
        let group = tmp.write("group", format!("testgrp:x:{gid}:\n").as_bytes());
        let cfg =
            UnixAttestorConfig { discover_workload_path: true, passwd_path: passwd, group_path: group, ..UnixAttestorConfig::default() };
        let pid = i32::try_from(std::process::id()).unwrap();
        let selectors = attest_as_connected(pid, &cfg).unwrap();

        let exe = std::env::current_exe().unwrap();
        let expected_hash = hex_lower(&Sha256::digest(std::fs::read(&exe).unwrap()));
        let mut expected = vec![format!("uid:{uid}"), "user:tester".to_owned(), format!("gid:{gid}"), "group:testgrp".to_owned()];
        for g in own_groups() {
            expected.push(format!("supplementary_gid:{g}"));
            if g == gid.to_string() {
                expected.push("supplementary_group:testgrp".to_owned());
            }
        }
        expected.push(format!("path:{}", exe.display()));
        expected.push(format!("sha256:{expected_hash}"));
        assert_eq!(values(&selectors), expected);
    }

    #[test]
    fn own_process_without_path_discovery_has_no_path_or_hash() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let selectors = attest_as_connected(pid, &UnixAttestorConfig::default()).unwrap();
        let vals = values(&selectors);
        assert_eq!(vals.first().copied(), Some(format!("uid:{}", own_effective("Uid")).as_str()));
        assert!(vals.iter().all(|v| !v.starts_with("path:") && !v.starts_with("sha256:")));
    }

    #[test]
    fn own_process_negative_limit_skips_hash() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let cfg = UnixAttestorConfig { discover_workload_path: true, workload_size_limit: -1, ..UnixAttestorConfig::default() };
        let vals = attest_as_connected(pid, &cfg).unwrap();
        let vals = values(&vals);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(vals.last().copied(), Some(format!("path:{}", exe.display()).as_str()));
        assert!(vals.iter().all(|v| !v.starts_with("sha256:")));
    }

    #[test]
    fn own_process_over_size_limit_fails() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let cfg = UnixAttestorConfig { discover_workload_path: true, workload_size_limit: 1, ..UnixAttestorConfig::default() };
        match attest_as_connected(pid, &cfg) {
            Err(UnixAttestorError::SizeLimitExceeded { size, limit: 1, path }) => {
                assert!(size > 1);
                assert_eq!(path, Path::new("/proc").join(pid.to_string()).join("exe"));
            }
            other => panic!("expected size limit error, got {other:?}"),
        }
    }

    #[test]
    fn nonexistent_pid_is_an_error() {
        let tmp = TempDir::new("nopid");
        let cfg = cfg_for(&tmp, tmp.path().join("proc"));
        assert!(matches!(attest_as_connected(4242, &cfg), Err(UnixAttestorError::ProcessNotFound { pid: 4242 })));
        // Against the real /proc too: pid_max is at most 2^22.
        let real = UnixAttestorConfig::default();
        assert!(matches!(attest_as_connected(i32::MAX, &real), Err(UnixAttestorError::ProcessNotFound { .. })));
    }

    #[test]
    fn missing_or_invalid_pid_is_an_error() {
        let cfg = UnixAttestorConfig::default();
        let no_pid = PeerCred { pid: None, uid: 0, gid: 0 };
        assert!(matches!(attest(&no_pid, &cfg), Err(UnixAttestorError::MissingPid)));
        assert!(matches!(attest_as_connected(0, &cfg), Err(UnixAttestorError::InvalidPid(0))));
        assert!(matches!(attest_as_connected(-5, &cfg), Err(UnixAttestorError::InvalidPid(-5))));
    }

    #[test]
    fn uses_effective_ids_and_resolves_names() {
        let tmp = TempDir::new("effective");
        // Real 1001/1001, effective 1000/50: SPIRE reports the effective ids.
        let root = fake_proc(&tmp, 4242, &status_text("1001\t1000\t1000\t1000", "1001\t50\t50\t50", ""), None);
        let cfg = cfg_for(&tmp, root);
        let sel = attest_as_connected(4242, &cfg).unwrap();
        assert_eq!(values(&sel), ["uid:1000", "user:alice", "gid:50", "group:staff"]);
    }

    #[test]
    fn single_id_column_is_used() {
        let tmp = TempDir::new("single");
        let root = fake_proc(&tmp, 7, &status_text("0", "0", ""), None);
        let cfg = cfg_for(&tmp, root);
        let sel = attest_as_connected(7, &cfg).unwrap();
        assert_eq!(values(&sel), ["uid:0", "user:root", "gid:0", "group:root"]);
    }

    #[test]
    fn supplementary_groups_in_kernel_order_with_names_when_known() {
        let tmp = TempDir::new("supp");
        let root = fake_proc(&tmp, 4242, &status_text("1000\t1000\t1000\t1000", "1000\t1000\t1000\t1000", "50 27 999 44 "), None);
        let cfg = cfg_for(&tmp, root);
        let sel = attest_as_connected(4242, &cfg).unwrap();
        assert_eq!(
            values(&sel),
            [
                "uid:1000",
                "user:alice",
                "gid:1000",
                "supplementary_gid:50",
                "supplementary_group:staff",
                "supplementary_gid:27",
                "supplementary_group:sudo",
                "supplementary_gid:999",
                "supplementary_gid:44",
                "supplementary_group:video",
            ]
        );
    }

    #[test]
    fn unresolvable_names_are_omitted() {
        let tmp = TempDir::new("unknown");
        let root = fake_proc(&tmp, 9, &status_text("1999\t1999\t1999\t1999", "2999\t2999\t2999\t2999", ""), None);
        let cfg = cfg_for(&tmp, root);
        let sel = attest_as_connected(9, &cfg).unwrap();
        assert_eq!(values(&sel), ["uid:1999", "gid:2999"]);
    }

    #[test]
    fn missing_passwd_and_group_files_only_drop_names() {
        let tmp = TempDir::new("nofiles");
        let root = fake_proc(&tmp, 9, &status_text("0\t0\t0\t0", "0\t0\t0\t0", "0"), None);
        let cfg = UnixAttestorConfig {
            passwd_path: tmp.path().join("absent-passwd"),
            group_path: tmp.path().join("absent-group"),
            ..cfg_for(&tmp, root)
        };
        let sel = attest_as_connected(9, &cfg).unwrap();
        assert_eq!(values(&sel), ["uid:0", "gid:0", "supplementary_gid:0"]);
    }

    #[test]
    fn passwd_parsing_rules() {
        assert_eq!(lookup_user_name(PASSWD, "0"), Some("root"));
        // Leading whitespace is trimmed; gecos commas are irrelevant.
        assert_eq!(lookup_user_name(PASSWD, "1000"), Some("alice"));
        // Too few fields.
        assert_eq!(lookup_user_name(PASSWD, "1001"), None);
        // Empty name and NIS compat markers.
        assert_eq!(lookup_user_name(PASSWD, "1002"), None);
        assert_eq!(lookup_user_name(PASSWD, "1003"), None);
        assert_eq!(lookup_user_name(PASSWD, "1004"), None);
        // Non-numeric gid column disqualifies the row.
        assert_eq!(lookup_user_name(PASSWD, "1006"), None);
        // Text comparison, like Go's os/user.
        assert_eq!(lookup_user_name(PASSWD, "1007"), None);
        assert_eq!(lookup_user_name(PASSWD, "01007"), Some("erin"));
        // First match wins.
        assert_eq!(lookup_user_name(PASSWD, "1008"), Some("frank"));
        // Extra colons end up in the shell field and do not break the row.
        assert_eq!(lookup_user_name(PASSWD, "1009"), Some("gecos"));
        // Degenerate inputs never panic.
        for text in ["", ":", "::::::", "\n\n#\n", "a:b:c:d:e:f:g:h", "\u{fffd}:x:1:1:::"] {
            for id in ["", "0", "1", "x"] {
                let _ = lookup_user_name(text, id);
                let _ = lookup_group_name(text, id);
            }
        }
    }

    #[test]
    fn group_parsing_rules() {
        assert_eq!(lookup_group_name(GROUP, "0"), Some("root"));
        assert_eq!(lookup_group_name(GROUP, "50"), Some("staff"));
        assert_eq!(lookup_group_name(GROUP, "27"), Some("sudo"));
        // Missing members field (three fields only).
        assert_eq!(lookup_group_name(GROUP, "60"), None);
        assert_eq!(lookup_group_name(GROUP, "61"), None);
        assert_eq!(lookup_group_name(GROUP, "62"), None);
        assert_eq!(lookup_group_name(GROUP, "6x3"), None);
        assert_eq!(lookup_group_name(GROUP, "44"), Some("video"));
        assert_eq!(lookup_group_name(GROUP, "12345"), None);
    }

    #[test]
    fn non_utf8_passwd_does_not_hide_other_entries() {
        let tmp = TempDir::new("binary");
        let mut passwd = b"\xff\xfe:x:5:5::/:/bin/sh\n".to_vec();
        passwd.extend_from_slice(b"zed:x:1000:1000::/home/zed:/bin/sh\n");
        let root = fake_proc(&tmp, 3, &status_text("1000\t1000\t1000\t1000", "1\t1\t1\t1", ""), None);
        let cfg = UnixAttestorConfig { passwd_path: tmp.write("bin-passwd", &passwd), ..cfg_for(&tmp, root) };
        let sel = attest_as_connected(3, &cfg).unwrap();
        assert_eq!(values(&sel), ["uid:1000", "user:zed", "gid:1"]);
    }

    #[test]
    fn malformed_status_is_an_error() {
        let tmp = TempDir::new("badstatus");
        let cases = [
            (1, "Name:\tx\nGid:\t0\t0\t0\t0\n".to_owned(), "UIDs"),
            (2, "Name:\tx\nUid:\t0\t0\t0\t0\n".to_owned(), "GIDs"),
            (3, status_text("", "0", ""), "UIDs"),
            (4, status_text("1000\tabc\t1000\t1000", "0", ""), "UIDs"),
            (5, status_text("0", "-1", ""), "GIDs"),
        ];
        for (pid, status, _) in &cases {
            fake_proc(&tmp, *pid, status, None);
        }
        let cfg = cfg_for(&tmp, tmp.path().join("proc"));
        for (pid, _, which) in &cases {
            match attest_as_connected(*pid, &cfg) {
                Err(UnixAttestorError::MalformedStatus { what, .. }) => assert_eq!(what, *which),
                other => panic!("pid {pid}: expected malformed status, got {other:?}"),
            }
        }
    }

    #[test]
    fn fixture_exe_path_and_hash_match_spire_vectors() {
        let tmp = TempDir::new("exe");
        let exe = tmp.write("bin/workload", b"data");
        let root = fake_proc(&tmp, 12, &status_text("1000\t1000\t1000\t1000", "50\t50\t50\t50", ""), Some(&exe));
        let cfg = UnixAttestorConfig { discover_workload_path: true, ..cfg_for(&tmp, root.clone()) };
        let sel = attest_as_connected(12, &cfg).unwrap();
        let path_sel = format!("path:{}", exe.display());
        let hash_sel = format!("sha256:{DATA_SHA256}");
        assert_eq!(values(&sel), ["uid:1000", "user:alice", "gid:50", "group:staff", path_sel.as_str(), hash_sel.as_str()]);

        // Exactly at the limit is fine; one byte over is refused.
        let at_limit = UnixAttestorConfig { workload_size_limit: 4, ..cfg.clone() };
        assert_eq!(values(&attest_as_connected(12, &at_limit).unwrap()).last().copied(), Some(hash_sel.as_str()));
        let over = UnixAttestorConfig { workload_size_limit: 2, ..cfg.clone() };
        let err = attest_as_connected(12, &over).unwrap_err();
        assert!(matches!(err, UnixAttestorError::SizeLimitExceeded { size: 4, limit: 2, .. }));
        assert_eq!(err.to_string(), format!("SHA256 digest: workload {} exceeds size limit (4 > 2)", root.join("12/exe").display()));

        // A negative limit disables hashing, so even an oversized file passes.
        let no_hash = UnixAttestorConfig { workload_size_limit: -1, ..cfg };
        assert_eq!(values(&attest_as_connected(12, &no_hash).unwrap()).last().copied(), Some(path_sel.as_str()));
    }

    #[test]
    fn deleted_or_unreadable_exe() {
        let tmp = TempDir::new("deleted");
        // The kernel reports unlinked binaries with a " (deleted)" suffix;
        // SPIRE uses that string verbatim. Our fixture link dangles, so the
        // hash (through the link) fails while the path alone succeeds.
        let target = Path::new("/nonexistent/bin/app (deleted)");
        let root = fake_proc(&tmp, 20, &status_text("0", "0", ""), Some(target));
        fake_proc(&tmp, 21, &status_text("0", "0", ""), None);
        let cfg = UnixAttestorConfig { discover_workload_path: true, ..cfg_for(&tmp, root) };
        assert!(matches!(attest_as_connected(20, &cfg), Err(UnixAttestorError::Digest { .. })));
        let path_only = UnixAttestorConfig { workload_size_limit: -1, ..cfg.clone() };
        let sel = attest_as_connected(20, &path_only).unwrap();
        assert_eq!(values(&sel).last().copied(), Some("path:/nonexistent/bin/app (deleted)"));
        // No exe link at all (e.g. a zombie or a kernel thread).
        assert!(matches!(attest_as_connected(21, &cfg), Err(UnixAttestorError::ExeLookup { pid: 21, .. })));
    }

    #[test]
    fn hex_encoding() {
        assert_eq!(hex_lower(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex_lower(&Sha256::digest(b"data")), DATA_SHA256);
    }
}
