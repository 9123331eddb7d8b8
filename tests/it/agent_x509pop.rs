#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! x509pop node attestation end to end: a node certificate from an openssl CA, proven by a
//! challenge-response with its key.

use crate::common;

use common::agent::*;
use common::*;
use std::path::Path;
use std::process::Command;

fn node_pki(dir: &Path) {
    let sh = format!(
        r#"set -e
cd {d}
for ca in ca other; do
  openssl ecparam -name prime256v1 -genkey -noout -out $ca.key
  openssl req -new -x509 -key $ca.key -subj "/O=Node CA $ca" -days 30 -out $ca.crt -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
done
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > leaf.ext
for n in node foreign; do
  openssl ecparam -name prime256v1 -genkey -noout -out $n.key.sec1
  openssl pkcs8 -topk8 -nocrypt -in $n.key.sec1 -out $n.key
  openssl req -new -key $n.key -subj "/CN=$n.example.org" -out $n.csr
done
openssl x509 -req -in node.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 10 -extfile leaf.ext -out node.crt
openssl x509 -req -in foreign.csr -CA other.crt -CAkey other.key -CAcreateserial -days 10 -extfile leaf.ext -out foreign.crt
"#,
        d = dir.display()
    );
    let (ok, out) = run(Command::new("sh").arg("-c").arg(sh));
    assert!(ok, "{out}");
}

fn x509pop_block(dir: &Path, cert: &str, key: &str) -> String {
    format!(
        "NodeAttestor \"x509pop\" {{ plugin_data {{ private_key_path = \"{}\" certificate_path = \"{}\" }} }}",
        dir.join(key).display(),
        dir.join(cert).display()
    )
}

#[test]
fn x509pop_attestation_proves_key_possession() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    node_pki(&pki);
    let sdir = tmp.path().join("server");
    std::fs::create_dir(&sdir).unwrap();
    let opts = ServerOpts {
        extra_plugins: format!("NodeAttestor \"x509pop\" {{ plugin_data {{ ca_bundle_path = \"{}\" }} }}", pki.join("ca.crt").display()),
        ..ServerOpts::default()
    };
    let s = TestServer::start(&sdir, &opts);
    let fp = openssl_x509(&pki.join("node.crt"), &["-fingerprint", "-sha1"]);
    let fp = fp.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    let agent_id = format!("spiffe://example.org/spire/agent/x509pop/{fp}");
    s.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        &agent_id,
        "-spiffeID",
        "spiffe://example.org/pop-workload",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ]);

    let adir = tmp.path().join("agent");
    std::fs::create_dir(&adir).unwrap();
    let a = TestAgent::start(&adir, agent_config(&adir, &s, &x509pop_block(&pki, "node.crt", "node.key"), None));
    let shown = s.cli_ok(&["agent", "show", "-spiffeID", &agent_id]);
    assert!(shown.contains("x509pop") && shown.contains("Can re-attest     : true"), "{shown}");
    assert!(shown.contains("\nSelectors         : x509pop:"), "SPIRE lists the node selectors: {shown}");
    let out = a.api(&["fetch", "x509"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("spiffe://example.org/pop-workload"),
        "{text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.log()
    );

    // A certificate from another CA, and the right certificate with the wrong key: refused.
    for (name, cert, key, want) in [("foreign", "foreign.crt", "foreign.key", "verif"), ("wrongkey", "node.crt", "foreign.key", "")] {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).unwrap();
        let cfg = agent_config(&d, &s, &x509pop_block(&pki, cert, key), None);
        let out = Command::new(CAIRN).args(["agent", "run", "-config"]).arg(&cfg).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "{name} attested");
        assert!(err.contains("attestation") || err.contains(want), "{name}: {err}");
    }
    // The server keeps serving the good agent.
    assert!(a.api(&["fetch", "x509"]).status.success());
}
