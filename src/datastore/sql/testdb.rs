//! Throwaway PostgreSQL and MariaDB servers for tests (Debian's packages, as
//! `shared/reference/components.md` starts them): a private data directory, loopback only,
//! fsync off, stopped on drop. A missing server fails the test with what to install.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const INSTALL: &str = "run scripts/install-test-deps.sh (apt-get install postgresql mariadb-server)";

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `cmd` as `user` when running as root (the servers refuse to run as root), else as is.
fn as_user(user: &str, program: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", user, "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

fn check(what: &str, c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}; {INSTALL}"));
    assert!(out.status.success(), "{what} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// A scratch directory the server's user can enter and own.
fn scratch(user: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("cairn-db-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    if is_root() {
        check("chown", Command::new("chown").args([&format!("{user}:{user}")]).arg(dir.path()));
    }
    dir
}

/// A test CA and a server certificate for `localhost` / 127.0.0.1 in `dir` (`ca.pem`,
/// `server.pem`, `server.key`, the key readable only by `owner`); answers the CA's path.
pub(crate) fn server_tls(dir: &Path, owner: &str) -> PathBuf {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "cairn test database CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    let key_path = dir.join("server.key");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if is_root() {
        for f in ["ca.pem", "server.pem", "server.key"] {
            check("chown", Command::new("chown").args([&format!("{owner}:{owner}")]).arg(dir.join(f)));
        }
    }
    dir.join("ca.pem")
}

/// A PostgreSQL server on loopback, trusting local connections.
pub(crate) struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    next: AtomicUsize,
    /// Server settings beyond the defaults (TLS).
    extra: String,
    /// The CA of the server's certificate, when TLS is on.
    pub(crate) ca: Option<PathBuf>,
}

impl TestPostgres {
    pub(crate) fn start() -> Self {
        Self::start_with(false)
    }

    /// With TLS on (a test CA's certificate for localhost / 127.0.0.1); plain connections are
    /// still allowed.
    #[allow(dead_code, reason = "not every test crate that includes this file uses it")]
    pub(crate) fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).max())
            .unwrap_or_else(|| panic!("no PostgreSQL server in /usr/lib/postgresql; {INSTALL}"));
        let dir = scratch("postgres");
        let data = dir.path().join("data");
        let port = free_port();
        check(
            "initdb",
            &mut as_user(
                "postgres",
                &bin.join("initdb"),
                &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
            ),
        );
        let (extra, ca) = if tls {
            let ca = server_tls(dir.path(), "postgres");
            let d = dir.path().display();
            (format!(" -c ssl=on -c ssl_cert_file={d}/server.pem -c ssl_key_file={d}/server.key"), Some(ca))
        } else {
            (String::new(), None)
        };
        let me = Self { dir, bin, port, next: AtomicUsize::new(0), extra, ca };
        me.resume();
        me
    }

    /// A URL for database `db`.
    pub(crate) fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    /// The server's port.
    #[allow(dead_code, reason = "not every test crate that includes this file uses it")]
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// SPIRE's keyword/value form of [`TestPostgres::url`].
    pub(crate) fn keyword_dsn(&self, db: &str) -> String {
        format!("dbname={db} user=postgres host=127.0.0.1 port={} sslmode=disable", self.port)
    }

    /// A new, empty database; answers its name.
    pub(crate) async fn create_db(&self) -> String {
        let name = format!("cairn_{}", self.next.fetch_add(1, Ordering::Relaxed));
        let pool = sqlx::PgPool::connect(&self.url("postgres")).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&pool).await.unwrap();
        pool.close().await;
        name
    }

    /// A hot standby of this server, streaming its WAL (`pg_basebackup -R`), on its own port.
    #[allow(dead_code, reason = "not every test crate that includes this file uses it")]
    pub(crate) fn start_standby(&self) -> Self {
        let dir = scratch("postgres");
        let data = dir.path().join("data");
        let port = self.port.to_string();
        check(
            "pg_basebackup",
            &mut as_user(
                "postgres",
                &self.bin.join("pg_basebackup"),
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "postgres",
                    "-D",
                    data.to_str().unwrap(),
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                ],
            ),
        );
        let me = Self { dir, bin: self.bin.clone(), port: free_port(), next: AtomicUsize::new(0), extra: String::new(), ca: None };
        me.resume();
        me
    }

    /// Runs `sql` as the superuser, through the server's socket.
    fn psql(&self, sql: &str) {
        let port = self.port.to_string();
        let host = self.dir.path().to_str().unwrap().to_owned();
        check("psql", &mut as_user("postgres", &self.bin.join("psql"), &["-h", &host, "-p", &port, "-U", "postgres", "-Atc", sql]));
    }

    /// On a standby: stops applying the primary's WAL (a replica that lags).
    #[allow(dead_code, reason = "not every test crate that includes this file uses it")]
    pub(crate) fn pause_replay(&self) {
        self.psql("SELECT pg_wal_replay_pause()");
    }

    /// On a standby: applies the primary's WAL again.
    #[allow(dead_code, reason = "not every test crate that includes this file uses it")]
    pub(crate) fn resume_replay(&self) {
        self.psql("SELECT pg_wal_replay_resume()");
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let data = self.dir.path().join("data");
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        as_user("postgres", &self.bin.join("pg_ctl"), &all)
    }

    /// Stops the server (a database outage); [`TestPostgres::resume`] starts it again on the
    /// same port with the same data.
    #[allow(dead_code, reason = "used by the integration tests, which include this file")]
    pub(crate) fn pause(&self) {
        check("pg_ctl stop", &mut self.pg_ctl(&["-m", "fast", "-w", "stop"]));
    }

    pub(crate) fn resume(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400{}",
            self.port,
            self.dir.path().display(),
            self.extra
        );
        let log = self.dir.path().join("pg.log");
        check("pg_ctl start", &mut self.pg_ctl(&["-l", log.to_str().unwrap(), "-w", "-o", &opts, "start"]));
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_user("postgres", &self.bin.join("pg_ctl"), &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]).output();
    }
}

/// A MariaDB server on loopback with a user `cairn` (password `cairnpw`) that may create
/// databases.
pub(crate) struct TestMariadb {
    dir: tempfile::TempDir,
    child: std::sync::Mutex<Option<std::process::Child>>,
    /// `mariadbd`'s arguments, for restarts.
    args: Vec<String>,
    socket: PathBuf,
    port: u16,
    next: AtomicUsize,
    /// The CA of the server's certificate, when TLS is on (and required).
    pub(crate) ca: Option<PathBuf>,
}

impl TestMariadb {
    pub(crate) fn start() -> Self {
        Self::start_with(false, &[])
    }

    /// With TLS required on TCP (a test CA's certificate for localhost / 127.0.0.1).
    #[allow(dead_code, reason = "not every test crate that includes this file uses it")]
    pub(crate) fn start_tls() -> Self {
        Self::start_with(true, &[])
    }

    /// With a binary log (GTIDs), so that replicas can follow it.
    #[allow(dead_code, reason = "not every test crate that includes this file uses it")]
    pub(crate) fn start_primary() -> Self {
        Self::start_with(false, &["--log-bin=binlog", "--server-id=1"])
    }

    /// A replica of `primary` (which [`TestMariadb::start_primary`] started), following its
    /// binary log from the start by GTID.
    #[allow(dead_code, reason = "not every test crate that includes this file uses it")]
    pub(crate) fn start_replica_of(primary: &Self) -> Self {
        let me = Self::start_with(false, &["--server-id=2", "--read-only=ON"]);
        me.root_sql(&format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='cairn', MASTER_PASSWORD='cairnpw', MASTER_USE_GTID=slave_pos; START SLAVE;",
            primary.port
        ));
        me
    }

    /// On a replica: stops applying what it receives (a replica that lags).
    #[allow(dead_code, reason = "not every test crate that includes this file uses it")]
    pub(crate) fn pause_replay(&self) {
        self.root_sql("STOP SLAVE SQL_THREAD");
    }

    /// On a replica: applies what it receives again.
    #[allow(dead_code, reason = "not every test crate that includes this file uses it")]
    pub(crate) fn resume_replay(&self) {
        self.root_sql("START SLAVE SQL_THREAD");
    }

    /// Runs `sql` as root through the server's socket.
    fn root_sql(&self, sql: &str) {
        check(
            "mariadb",
            Command::new("mariadb").args(["--no-defaults", &format!("--socket={}", self.socket.display()), "-uroot", "-e", sql]),
        );
    }

    fn start_with(tls: bool, extra: &[&str]) -> Self {
        let install = Path::new("/usr/bin/mariadb-install-db");
        let server = Path::new("/usr/sbin/mariadbd");
        assert!(install.exists() && server.exists(), "no MariaDB server; {INSTALL}");
        let dir = scratch("mysql");
        let data = dir.path().join("data");
        let root = is_root();
        let mut args =
            vec![format!("--datadir={}", data.display()), "--auth-root-authentication-method=socket".into(), "--skip-test-db".into()];
        if root {
            args.push("--user=mysql".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check("mariadb-install-db", Command::new(install).args(&args));
        let port = free_port();
        let socket = dir.path().join("mysqld.sock");
        let d = dir.path().display().to_string();
        let mut args = vec!["--no-defaults".to_owned()];
        if root {
            args.push("--user=mysql".into());
        }
        args.extend([
            format!("--datadir={}", data.display()),
            format!("--socket={}", socket.display()),
            format!("--pid-file={d}/mysqld.pid"),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".into(),
            "--skip-name-resolve".into(),
            "--innodb-flush-log-at-trx-commit=0".into(),
            "--max-connections=400".into(),
            format!("--log-error={d}/err.log"),
        ]);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let ca = tls.then(|| {
            let ca = server_tls(dir.path(), "mysql");
            args.extend([
                format!("--ssl-ca={d}/ca.pem"),
                format!("--ssl-cert={d}/server.pem"),
                format!("--ssl-key={d}/server.key"),
                "--require-secure-transport=ON".into(),
            ]);
            ca
        });
        let me = Self { dir, child: std::sync::Mutex::new(None), args, socket: socket.clone(), port, next: AtomicUsize::new(0), ca };
        me.resume();
        // Not written to the binary log: a replica creates the same user itself.
        me.root_sql(
            "SET sql_log_bin = 0; CREATE USER 'cairn'@'127.0.0.1' IDENTIFIED BY 'cairnpw'; GRANT ALL ON *.* TO 'cairn'@'127.0.0.1';",
        );
        me
    }

    /// Starts `mariadbd` (again) and waits until it answers.
    pub(crate) fn resume(&self) {
        let child = Command::new("/usr/sbin/mariadbd")
            .args(&self.args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("mariadbd: {e}; {INSTALL}"));
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin = || {
            Command::new("mariadb-admin").args(["--no-defaults", &format!("--socket={}", self.socket.display()), "-uroot", "ping"]).output()
        };
        while !admin().is_ok_and(|o| o.status.success()) {
            assert!(
                Instant::now() < deadline,
                "MariaDB did not start: {}",
                std::fs::read_to_string(self.dir.path().join("err.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server cleanly (a database outage); [`TestMariadb::resume`] starts it again.
    #[allow(dead_code, reason = "used by the integration tests, which include this file")]
    pub(crate) fn pause(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// A URL for database `db`.
    pub(crate) fn url(&self, db: &str) -> String {
        format!("mysql://cairn:cairnpw@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's port.
    #[allow(dead_code, reason = "not every test crate that includes this file uses it")]
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// SPIRE's Go-driver DSN form of [`TestMariadb::url`].
    pub(crate) fn go_dsn(&self, db: &str) -> String {
        format!("cairn:cairnpw@tcp(127.0.0.1:{})/{db}?parseTime=true", self.port)
    }

    /// A new, empty database; answers its name.
    pub(crate) async fn create_db(&self) -> String {
        let name = format!("cairn_{}", self.next.fetch_add(1, Ordering::Relaxed));
        let pool = sqlx::MySqlPool::connect(&self.url("mysql")).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&pool).await.unwrap();
        pool.close().await;
        name
    }
}

impl Drop for TestMariadb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.lock().ok().and_then(|mut g| g.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
