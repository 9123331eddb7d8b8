#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
use super::*;

const GOOD: &str = r#"
server {
    bind_address = "127.0.0.1"
    bind_port = "8081"
    socket_path = "/tmp/cairn-test/api.sock"
    trust_domain = "example.org"
    data_dir = "./data",
    log_level = "DEBUG"
    ca_ttl = "24h"
    default_x509_svid_ttl = "1h"
    ca_subject = {
        country = ["US"]
        organization = ["SPIFFE"]
        common_name = ""
    }
    jwt_issuer = "https://oidc.example.org"
}

plugins {
    DataStore "sql" {
        plugin_data { database_type = "sqlite3" connection_string = "./data/datastore.sqlite3" }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "disk" {
        plugin_data = { keys_path = "./data/keys.json" }
    }
    UpstreamAuthority "disk" {
        plugin_data {
            key_file_path = "./conf/dummy_upstream_ca.key"
            cert_file_path = "./conf/dummy_upstream_ca.crt"
        }
    }
}

health_checks {
    listener_enabled = true
    bind_address = "127.0.0.1"
    bind_port = "8080"
}
"#;

fn load(text: &str) -> Result<ServerConfig, ConfigErrors> {
    ServerConfig::from_tree(&super::super::parse_text(text, false)?, &ServerOverrides::default())
}

#[test]
fn spire_style_config_is_accepted() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.trust_domain.as_str(), "example.org");
    assert_eq!(c.bind_port, 8081);
    assert_eq!(c.ca_ttl, 86_400);
    assert_eq!(c.default_jwt_svid_ttl, 300);
    assert_eq!(c.log_level, "DEBUG");
    assert_eq!(c.key_manager, KeyManagerConfig::Disk { keys_path: "./data/keys.json".into() });
    assert_eq!(c.datastore.database_type, "sqlite3");
    assert!(matches!(c.upstream, Some(UpstreamConfig::Disk(ref d)) if d.bundle_file_path.is_none()));
    assert_eq!(c.jwt_issuer.as_deref(), Some("https://oidc.example.org"));
    assert_eq!(c.ca_subject.common_name, None);
    assert_eq!(c.health.as_ref().map(|h| h.bind_port), Some(8080));
    assert_eq!(c.node_attestors, vec!["join_token".to_owned()]);
}

#[test]
fn every_error_names_its_key_and_all_are_reported_at_once() {
    let bad = r#"
server {
    trust_domain = "Example.ORG"
    bind_port = 99999
    ca_ttl = "1h"
    default_x509_svid_ttl = "1h"
    ca_key_type = "rsa-1024"
    registration_uds_path = "/tmp/x"
    log_level = "LOUD"
    frobnicate = true
}
plugins {
    DataStore "sql" { plugin_data { database_type = "oracle" } }
    KeyManager "disk" { plugin_data { } }
    UpstreamAuthority "disk" { plugin_data { cert_file_path = "x" } }
    NodeResolver "noop" {}
}
"#;
    let errs = load(bad).unwrap_err();
    let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "server.trust_domain",
        "server.bind_port",
        "server.default_x509_svid_ttl",
        "server.ca_key_type",
        "server.registration_uds_path",
        "server.log_level",
        "server.frobnicate",
        "plugins.DataStore.sql.plugin_data.database_type",
        "plugins.DataStore.sql.plugin_data.connection_string",
        "plugins.KeyManager.disk.plugin_data.keys_path",
        "plugins.UpstreamAuthority.disk.plugin_data.key_file_path",
        "plugins.NodeResolver",
    ] {
        assert!(paths.contains(&want), "missing error for {want}; got:\n{errs}");
    }
    let text = errs.to_string();
    assert!(text.contains("use socket_path"), "{text}");
    assert!(text.contains("raise ca_ttl to at least 6h"), "{text}");
}

#[test]
fn missing_blocks_and_syntax_errors() {
    let errs = load("").unwrap_err().to_string();
    assert!(errs.contains("server: missing") && errs.contains("plugins: missing"), "{errs}");
    let errs = load("server { trust_domain = \"x\"").unwrap_err().to_string();
    assert!(errs.contains("syntax error") && errs.contains("line 1"), "{errs}");
}

#[test]
fn overrides_win_and_json_is_accepted() {
    let json = r#"{"server": {"trust_domain": "example.org"}, "plugins": {"DataStore": {"sql": {"plugin_data": {"database_type": "sqlite3", "connection_string": "x.db"}}}, "KeyManager": {"memory": {}}}}"#;
    let tree = super::super::parse_text(json, false).unwrap();
    let o = ServerOverrides { trust_domain: Some("other.org".into()), server_port: Some(9000), ..Default::default() };
    let c = ServerConfig::from_tree(&tree, &o).unwrap();
    assert_eq!(c.trust_domain.as_str(), "other.org");
    assert_eq!(c.bind_port, 9000);
    assert_eq!(c.key_manager, KeyManagerConfig::Memory);
}

#[test]
fn external_plugins_are_refused_clearly() {
    let text = r#"
server { trust_domain = "example.org" }
plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "x" } }
    KeyManager "disk" { plugin_cmd = "/usr/bin/evil" plugin_data { keys_path = "k" } }
}"#;
    let errs = load(text).unwrap_err().to_string();
    assert!(errs.contains("plugins.KeyManager.disk.plugin_cmd"), "{errs}");
}
