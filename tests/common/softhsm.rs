//! A private SoftHSM2 token directory for one test: the processes a test starts get
//! `SOFTHSM2_CONF` through [`SoftHsm::env`]; tokens are initialised with `softhsm2-util`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const PIN: &str = "1234";

pub struct SoftHsm {
    pub conf: PathBuf,
    /// A 0600 file holding [`PIN`].
    pub pin_file: PathBuf,
}

impl SoftHsm {
    /// A token directory under `dir` with `tokens` initialised (user PIN [`PIN`]).
    pub fn new(dir: &Path, tokens: &[&str]) -> Self {
        assert!(
            Path::new(MODULE).is_file(),
            "{MODULE} is missing: install SoftHSM2 and OpenSC (bash scripts/install-test-deps.sh, or apt-get install softhsm2 opensc)"
        );
        super::require("softhsm2-util");
        super::require("pkcs11-tool");
        let tokens_dir = dir.join("softhsm-tokens");
        std::fs::create_dir_all(&tokens_dir).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens_dir.display()
            ),
        )
        .unwrap();
        let pin_file = dir.join("hsm.pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        std::fs::set_permissions(&pin_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let hsm = Self { conf, pin_file };
        for t in tokens {
            let (ok, out) =
                super::run(hsm.cmd("softhsm2-util").args(["--init-token", "--free", "--label", t, "--pin", PIN, "--so-pin", "5678"]));
            assert!(ok, "softhsm2-util --init-token {t}: {out}");
        }
        hsm
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SOFTHSM2_CONF".to_owned(), self.conf.display().to_string())]
    }

    /// A command with `SOFTHSM2_CONF` set.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SOFTHSM2_CONF", &self.conf);
        c
    }

    /// `pkcs11-tool --module <softhsm> --token-label <token> --login --pin 1234 <args>`.
    pub fn pkcs11_tool(&self, token: &str, args: &[&str]) -> (bool, String) {
        super::run(self.cmd("pkcs11-tool").args(["--module", MODULE, "--token-label", token, "--login", "--pin", PIN]).args(args))
    }

    /// The `KeyManager "pkcs11"` block for `token`.
    pub fn key_manager(&self, token: &str, prefix: &str) -> String {
        format!(
            "KeyManager \"pkcs11\" {{ plugin_data {{ module_path = \"{MODULE}\" token_label = \"{token}\" pin_file = \"{}\" key_label_prefix = \"{prefix}\" }} }}",
            self.pin_file.display()
        )
    }
}
