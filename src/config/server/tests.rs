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
    // An SVID TTL as long as ca_ttl works (SVIDs are capped at their CA's expiry): no error.
    assert!(!paths.contains(&"server.default_x509_svid_ttl"), "{text}");
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

/// SPIRE's own suites run these TTLs; SPIRE starts with a warning and caps each SVID at its
/// CA's expiry, and so does cairn, with SPIRE's words and numbers.
#[test]
fn svid_ttls_longer_than_a_sixth_of_ca_ttl_start_with_spire_warnings() {
    let conf = |server: &str| GOOD.replacen("ca_ttl = \"24h\"\n    default_x509_svid_ttl = \"1h\"", server, 1);
    // force-rotation-jwt-authority: ca_ttl 24h, default_jwt_svid_ttl 8h.
    let c = load(&conf("ca_ttl = \"24h\"\n default_jwt_svid_ttl = \"8h\"")).unwrap();
    assert_eq!(c.default_jwt_svid_ttl, 8 * 3600);
    assert_eq!(
        c.warnings,
        vec!["default_jwt_svid_ttl is too high for the configured ca_ttl value. SVIDs with shorter lifetimes may be issued. Please set default_jwt_svid_ttl to 4h or less, or the ca_ttl to 48h or more, to guarantee the full default_jwt_svid_ttl lifetime when CA rotations are scheduled.".to_owned()]
    );
    // evict-agent: ca_ttl 20m, default_x509_svid_ttl 10m.
    let c = load(&conf("ca_ttl = \"20m\"\n default_x509_svid_ttl = \"10m\"")).unwrap();
    assert_eq!((c.ca_ttl, c.default_x509_svid_ttl), (1200, 600));
    // SPIRE's default JWT-SVID TTL (5m) is over 20m/6 too, and SPIRE says so as well.
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings[1].contains("Please set default_jwt_svid_ttl to 3m20s or less, or the ca_ttl to 30m or more"), "{:?}", c.warnings);
    assert!(
        c.warnings[0].starts_with("default_x509_svid_ttl is too high for the configured ca_ttl value.")
            && c.warnings[0].contains("Please set default_x509_svid_ttl to 3m20s or less, or the ca_ttl to 1h or more"),
        "{:?}",
        c.warnings
    );
    // Past SPIRE's 7-day cap, the other two messages.
    let c = load(&conf("ca_ttl = \"240h\"\n default_x509_svid_ttl = \"200h\"")).unwrap();
    assert!(
        c.warnings[0].starts_with("default_x509_svid_ttl is too high and the ca_ttl is too low.")
            && c.warnings[0].contains("to 168h or less, and the ca_ttl to 1008h or more"),
        "{:?}",
        c.warnings
    );
    let c = load(&conf("ca_ttl = \"2000h\"\n default_x509_svid_ttl = \"200h\"")).unwrap();
    assert!(
        c.warnings[0].starts_with("default_x509_svid_ttl is too high. SVIDs") && c.warnings[0].contains("to 168h or less to guarantee"),
        "{:?}",
        c.warnings
    );
    // agent_ttl is checked only when set, as in SPIRE; the defaults warn about nothing.
    let c = load(&conf("ca_ttl = \"1h\"\n default_x509_svid_ttl = \"10m\"\n agent_ttl = \"1h\"")).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].starts_with("agent_ttl is too high"), "{:?}", c.warnings);
    assert!(load(GOOD).unwrap().warnings.is_empty());
    assert_eq!(go_duration(3630), "1h0m30s");
    assert_eq!(go_duration(90), "1m30s");
}

#[test]
fn disable_jwt_svids_is_read() {
    assert!(!load(GOOD).unwrap().disable_jwt_svids);
    let c = load(&GOOD.replacen("ca_ttl = \"24h\"", "ca_ttl = \"24h\"\n    disable_jwt_svids = true", 1)).unwrap();
    assert!(c.disable_jwt_svids);
}

/// `GOOD` with `server_extra` in the server block, `sql_extra` in the sql plugin_data and
/// `tail` after everything.
fn good_with(server_extra: &str, sql_extra: &str, tail: &str) -> String {
    GOOD.replacen("    jwt_issuer =", &format!("    {server_extra}\n    jwt_issuer ="), 1).replacen(
        "connection_string = \"./data/datastore.sqlite3\"",
        &format!("connection_string = \"./data/datastore.sqlite3\"\n {sql_extra}"),
        1,
    ) + tail
}

#[test]
fn keys_cairn_lacks_are_refused_by_path_with_a_reason() {
    let text = good_with(
        "proxy_protocol_trusted_cidrs = [\"10.0.0.0/8\"]\n prune_attested_nodes_expired_for = \"720h\"\n ratelimit { attestation = true }\n audit_log_enabled = true\n max_attested_node_info_staleness = \"1m\"\n experimental { auth_opa_policy_engine {} \n require_pq_kem = true }",
        "",
        "telemetry {\n Prometheus { port = 9988 }\n}\n",
    );
    let errs = load(&text).unwrap_err();
    for key in [
        "server.proxy_protocol_trusted_cidrs".to_owned(),
        "server.prune_attested_nodes_expired_for".to_owned(),
        "server.ratelimit".to_owned(),
        "server.audit_log_enabled".to_owned(),
        "server.max_attested_node_info_staleness".to_owned(),
        "server.experimental.auth_opa_policy_engine".to_owned(),
        "server.experimental.require_pq_kem".to_owned(),
        "telemetry.Prometheus".to_owned(),
    ] {
        let e = errs.0.iter().find(|e| e.path == key).unwrap_or_else(|| panic!("{key} not refused:\n{errs}"));
        assert!(e.message.starts_with("not supported by cairn (") && e.message.ends_with(')'), "{key}: {}", e.message);
    }
}

#[test]
fn log_keys_and_always_on_experimental_keys_are_honoured_or_noted() {
    let text = good_with(
        "log_file = \"/var/log/cairn.log\"\n log_format = \"json\"\n log_source_location = true\n audit_log_enabled = false\n max_attested_node_info_staleness = \"0s\"\n experimental { events_based_cache = true\n cache_reload_interval = \"5s\"\n prune_events_older_than = \"12h\" }",
        "disable_migration = false",
        "telemetry {}\n",
    );
    let c = load(&text).unwrap();
    assert_eq!(c.log_file, Some(PathBuf::from("/var/log/cairn.log")));
    assert_eq!(c.log_format, LogFormat::Json);
    assert!(c.log_source_location);
    for key in [
        "server.experimental.events_based_cache",
        "server.experimental.cache_reload_interval",
        "server.experimental.prune_events_older_than",
    ] {
        assert!(c.notices.iter().any(|n| n.starts_with(&format!("{key}: accepted; "))), "no notice for {key}: {:?}", c.notices);
    }
    // An empty log_file means stderr, as in SPIRE's server_full.conf.
    let c = load(&good_with("log_file = \"\"", "", "")).unwrap();
    assert_eq!(c.log_file, None);
    // -logFile / -logFormat override the file.
    let o = ServerOverrides { log_file: Some("/tmp/x.log".into()), log_format: Some("text".into()), ..Default::default() };
    let c = ServerConfig::from_tree(&super::super::parse_text(&text, false).unwrap(), &o).unwrap();
    assert_eq!((c.log_file, c.log_format), (Some(PathBuf::from("/tmp/x.log")), LogFormat::Text));
}

#[test]
fn pkcs11_key_manager_and_upstream() {
    use crate::keymanager::pkcs11::PinSource;
    let text = r#"
server { trust_domain = "example.org" ca_key_type = "ec-p384" }
plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "x" } }
    KeyManager "pkcs11" { plugin_data { module_path = "/usr/lib/softhsm/libsofthsm2.so" token_label = "ca" pin_env = "HSM_PIN" } }
    UpstreamAuthority "pkcs11" { plugin_data {
        module_path = "/usr/lib/softhsm/libsofthsm2.so" token_label = "root" pin = "secret-pin" key_label = "org-root" cert_file_path = "root.pem"
        max_sessions = 4
    } }
}"#;
    let c = load(text).unwrap();
    let KeyManagerConfig::Pkcs11(km) = &c.key_manager else { panic!("{:?}", c.key_manager) };
    assert_eq!((km.token.token_label.as_str(), km.key_label_prefix.as_str()), ("ca", "cairn:"));
    assert_eq!(km.token.pin, PinSource::Env("HSM_PIN".into()));
    let Some(UpstreamConfig::Pkcs11(u)) = &c.upstream else { panic!("{:?}", c.upstream) };
    assert_eq!((u.key_label.as_str(), u.cert_file_path.to_str()), ("org-root", Some("root.pem")));
    assert_eq!((km.token.max_sessions, u.token.max_sessions), (crate::keymanager::pkcs11::DEFAULT_MAX_SESSIONS, 4));
    assert!(!format!("{c:?}").contains("secret-pin"), "the PIN shows in the config's Debug");

    let bad = r#"
server { trust_domain = "example.org" ca_key_type = "rsa-2048" }
plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "x" } }
    KeyManager "pkcs11" { plugin_data { token_label = "ca" slot = 0 pin = "1" pin_file = "f" key_label_prefix = "" } }
    UpstreamAuthority "pkcs11" { plugin_data { module_path = "m" token_label = "root" key_file_path = "k" max_sessions = 0 } }
}"#;
    let errs = load(bad).unwrap_err();
    let text = errs.to_string();
    for (path, says) in [
        ("plugins.KeyManager.pkcs11.plugin_data.module_path", "missing"),
        ("plugins.KeyManager.pkcs11.plugin_data.slot", "token_label"),
        ("plugins.KeyManager.pkcs11.plugin_data.pin", "exactly one"),
        ("plugins.KeyManager.pkcs11.plugin_data.key_label_prefix", "must not be empty"),
        ("plugins.UpstreamAuthority.pkcs11.plugin_data.pin", "missing"),
        ("plugins.UpstreamAuthority.pkcs11.plugin_data.key_label", "missing"),
        ("plugins.UpstreamAuthority.pkcs11.plugin_data.cert_file_path", "missing"),
        ("plugins.UpstreamAuthority.pkcs11.plugin_data.key_file_path", "key_label"),
        ("plugins.UpstreamAuthority.pkcs11.plugin_data.max_sessions", "at least 1"),
    ] {
        assert!(errs.0.iter().any(|e| e.path == path && e.message.contains(says)), "no error at {path} saying {says:?}:\n{text}");
    }
    assert!(!text.contains("\"1\""), "{text}");
}

#[test]
fn vault_upstream_and_key_manager() {
    use crate::keymanager::vault::KeyIdentifier;
    use crate::vault::AuthSettings;
    // SPIRE's documented examples, as operators write them.
    let text = r#"
server { trust_domain = "example.org" }
plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "x" } }
    KeyManager "hashicorp_vault" { plugin_data {
        vault_addr = "https://vault.example.org/"
        key_identifier_file = "./server_id"
        approle_auth { approle_auth_mount_point = "my-approle" approle_id = "r" approle_secret_id = "s3cret-id" }
    } }
    UpstreamAuthority "vault" { plugin_data {
        vault_addr = "https://vault.example.org/"
        pki_mount_point = "test-pki"
        ca_cert_path = "/path/to/ca-cert.pem"
        namespace = "ns1"
        k8s_auth { k8s_auth_role_name = "my-role" token_path = "/var/run/secrets/tokens/vault" }
    } }
}"#;
    let c = load(text).unwrap();
    let KeyManagerConfig::HashicorpVault(km) = &c.key_manager else { panic!("{:?}", c.key_manager) };
    assert_eq!(km.key_identifier, KeyIdentifier::File("./server_id".into()));
    assert_eq!(km.transit_engine_path, None);
    assert!(matches!(&km.vault.auth, AuthSettings::AppRole { mount, .. } if mount == "my-approle"));
    let Some(UpstreamConfig::Vault(u)) = &c.upstream else { panic!("{:?}", c.upstream) };
    assert_eq!(u.pki_mount_point, "test-pki");
    assert_eq!(u.vault.namespace.as_deref(), Some("ns1"));
    assert!(matches!(&u.vault.auth, AuthSettings::K8s { mount, role_name, .. } if mount == "kubernetes" && role_name == "my-role"));
    assert!(!format!("{c:?}").contains("s3cret-id"), "a secret shows in the config's Debug");

    // Defaults: pki, cert mount.
    let text = r#"
server { trust_domain = "example.org" }
plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "x" } }
    KeyManager "memory" {}
    UpstreamAuthority "vault" { plugin_data { vault_addr = "https://v:8200" cert_auth {} } }
}"#;
    let c = load(text).unwrap();
    let Some(UpstreamConfig::Vault(u)) = &c.upstream else { panic!() };
    assert_eq!(u.pki_mount_point, "pki");
    assert!(matches!(&u.vault.auth, AuthSettings::Cert { mount, role_name: None, .. } if mount == "cert"));

    let bad = r#"
server { trust_domain = "example.org" }
plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "x" } }
    KeyManager "hashicorp_vault" { plugin_data { key_identifier_file = "a" key_identifier_value = "b" pki_mount_point = "x" token_auth {} } }
    UpstreamAuthority "vault" { plugin_data { token_auth {} cert_auth {} k8s_auth { } tls_skip = true } }
}"#;
    let text = load(bad).unwrap_err().to_string();
    for (path, says) in [
        ("plugins.KeyManager.hashicorp_vault.plugin_data", "only one of 'key_identifier_file' or 'key_identifier_value'"),
        ("plugins.KeyManager.hashicorp_vault.plugin_data.pki_mount_point", "UpstreamAuthority"),
        (
            "plugins.UpstreamAuthority.vault.plugin_data",
            "only one authentication method can be configured, got token_auth, cert_auth, k8s_auth",
        ),
        ("plugins.UpstreamAuthority.vault.plugin_data.k8s_auth.k8s_auth_role_name", "missing"),
        ("plugins.UpstreamAuthority.vault.plugin_data.k8s_auth.token_path", "missing"),
        ("plugins.UpstreamAuthority.vault.plugin_data.tls_skip", "unknown key"),
    ] {
        assert!(text.lines().any(|l| l.contains(path) && l.contains(says)), "expected {path}: {says} in\n{text}");
    }
}

#[test]
fn federation_and_oidc_discovery() {
    use crate::config::federation::{ClientProfile, EndpointProfile};
    let text = r#"
server {
    trust_domain = "example.org"
    jwt_issuer = "https://oidc.example.org"
    federation {
        bundle_endpoint { address = "0.0.0.0" port = 8443 refresh_hint = "10m" profile "https_web" { serving_cert_file { cert_file_path = "c.pem" key_file_path = "k.pem" } } }
        federates_with "domain1.test" { bundle_endpoint_url = "https://a.test:8443" bundle_endpoint_profile "https_spiffe" { endpoint_spiffe_id = "spiffe://domain1.test/spire/server" } }
        federates_with "spiffe://domain2.test" { bundle_endpoint_url = "https://b.test/bundle" bundle_endpoint_profile "https_web" {} }
    }
    oidc_discovery { port = 8444 serving_cert_file { cert_file_path = "c.pem" key_file_path = "k.pem" } }
}
plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "x" } }
    KeyManager "memory" {}
}"#;
    let c = load(text).unwrap();
    let be = c.federation.bundle_endpoint.as_ref().unwrap();
    assert_eq!((be.port, be.refresh_hint), (8443, 600));
    assert!(matches!(&be.profile, EndpointProfile::HttpsWeb { file_sync_interval: 3600, .. }));
    assert_eq!(c.federation.federates_with.len(), 2);
    assert_eq!(c.federation.federates_with[1].trust_domain.to_string(), "domain2.test");
    assert!(
        matches!(&c.federation.federates_with[0].profile, ClientProfile::HttpsSpiffe { endpoint_spiffe_id } if endpoint_spiffe_id.to_string() == "spiffe://domain1.test/spire/server")
    );
    let oidc = c.oidc.as_ref().unwrap();
    assert_eq!((oidc.issuer.as_str(), oidc.port), ("https://oidc.example.org", 8444));

    let bad = r#"
server {
    trust_domain = "example.org"
    jwt_issuer = "https://oidc.example.org"
    federation {
        bundle_endpoint { port = 8443 profile "https_web" {} }
        federates_with "example.org" { bundle_endpoint_url = "http://x" bundle_endpoint_profile "https_spiffe" {} }
        federates_with "other.test" { bundle_endpoint_url = "https://x" }
    }
    oidc_discovery { address = "0.0.0.0" port = 1 issuer = "https://other" insecure_http = true }
}
plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "x" } }
    KeyManager "memory" {}
}"#;
    let text = load(bad).unwrap_err().to_string();
    for (path, says) in [
        ("server.federation.bundle_endpoint.profile", "'acme' or 'serving_cert_file' is required"),
        ("server.federation.federates_with.\"example.org\"", "own trust domain"),
        ("server.federation.federates_with.\"example.org\".bundle_endpoint_url", "HTTPS"),
        ("endpoint_spiffe_id", "missing"),
        ("server.federation.federates_with.\"other.test\"", "missing bundle endpoint configuration"),
        ("server.oidc_discovery.issuer", "differs from server.jwt_issuer"),
        ("server.oidc_discovery.insecure_http", "loopback"),
    ] {
        assert!(text.lines().any(|l| l.contains(path) && l.contains(says)), "expected {path}: {says} in\n{text}");
    }
}

/// SPIRE's two ACME forms: `profile "https_web" { acme { ... } }` and the deprecated
/// `bundle_endpoint { acme { ... } }` (with its warning and its stricter checks).
#[test]
fn bundle_endpoint_acme() {
    use crate::config::federation::EndpointProfile;
    let with = |federation: &str| {
        format!(
            "server {{\n trust_domain = \"example.org\"\n federation {{ {federation} }}\n}}\nplugins {{\n DataStore \"sql\" {{ plugin_data {{ database_type = \"sqlite3\" connection_string = \"x\" }} }}\n KeyManager \"memory\" {{}}\n}}"
        )
    };
    let c = load(&with("bundle_endpoint { port = 443 profile \"https_web\" { acme { domain_name = \"bundle.example.org\" email = \"ops@example.org\" tos_accepted = true } } }")).unwrap();
    let Some(EndpointProfile::HttpsWebAcme(a)) = c.federation.bundle_endpoint.map(|b| b.profile) else { panic!("not ACME") };
    assert_eq!((a.domain_name.as_str(), a.email.as_str(), a.tos_accepted), ("bundle.example.org", "ops@example.org", true));
    assert_eq!(a.directory_url, crate::config::federation::LETS_ENCRYPT_DIRECTORY, "Let's Encrypt unless told otherwise");

    let c = load(&with("bundle_endpoint { port = 443 acme { domain_name = \"b.example.org\" email = \"e@example.org\" directory_url = \"https://acme.test/dir\" } }")).unwrap();
    assert!(c.warnings.iter().any(|w| w.contains("ACME configuration within the bundle_endpoint is deprecated")));
    assert!(c.warnings.iter().any(|w| w.contains("Terms of Service have not been accepted")), "{:?}", c.warnings);
    assert!(
        matches!(c.federation.bundle_endpoint.map(|b| b.profile), Some(EndpointProfile::HttpsWebAcme(a)) if a.directory_url == "https://acme.test/dir")
    );

    for (federation, path, says) in [
        ("bundle_endpoint { port = 443 acme { domain_name = \"b.example.org\" } }", "bundle_endpoint.acme.email", "must be configured"),
        ("bundle_endpoint { port = 443 profile \"https_web\" { acme { email = \"e@x\" } } }", "acme.domain_name", "must be configured"),
        (
            "bundle_endpoint { port = 443 acme { domain_name = \"b\" email = \"e\" } profile \"https_spiffe\" {} }",
            "server.federation.bundle_endpoint",
            "either bundle endpoint 'acme' or 'profile' can be set, but not both",
        ),
        (
            "bundle_endpoint { port = 443 profile \"https_web\" { acme { domain_name = \"b\" directory_url = \"http://acme.test\" } } }",
            "acme.directory_url",
            "HTTPS",
        ),
        ("bundle_endpoint { port = 443 profile \"https_web\" { acme { domain_name = \"b\" tos = true } } }", "acme.tos", "unknown"),
    ] {
        let text = load(&with(federation)).unwrap_err().to_string();
        assert!(text.lines().any(|l| l.contains(path) && l.contains(says)), "expected {path}: {says} in\n{text}");
    }
}

/// SPIRE's SQL datastore keys for PostgreSQL and MySQL: the database types, and the pool
/// settings, which size the pool (`max_idle_conns` other than 0 is noted: sqlx closes idle
/// connections by age, not by count).
#[test]
fn sql_datastore_for_postgres_and_mysql() {
    let with = |data: &str| {
        format!(
            "server {{\n trust_domain = \"example.org\"\n}}\nplugins {{\n DataStore \"sql\" {{ plugin_data {{ {data} }} }}\n KeyManager \"memory\" {{}}\n}}"
        )
    };
    let c = load(&with("database_type = \"postgres\" connection_string = \"dbname=spire user=spire host=db\" max_open_conns = 20 max_idle_conns = 2 conn_max_lifetime = \"1h\"")).unwrap();
    assert_eq!(c.datastore.database_type, "postgres");
    assert_eq!((c.datastore.settings.max_open, c.datastore.settings.max_lifetime), (20, Some(std::time::Duration::from_secs(3600))));
    assert!(c.notices.iter().any(|n| n.contains("max_idle_conns: accepted; ")), "{:?}", c.notices);
    let c = load(&with("database_type = \"mysql\" connection_string = \"u:p@tcp(db:3306)/spire\" max_idle_conns = 0")).unwrap();
    assert_eq!(c.datastore.settings.idle_timeout, Some(std::time::Duration::ZERO));
    let text = load(&with("database_type = \"mysql\" connection_string = \"x\" max_open_conns = -1")).unwrap_err().to_string();
    assert!(text.contains("max_open_conns: expected a whole number"), "{text}");
    // SPIRE's MySQL TLS files; refused for PostgreSQL (whose connection string carries them),
    // and a client certificate needs its key.
    let c = load(&with("database_type = \"mysql\" connection_string = \"u@tcp(db)/spire?tls=custom\" root_ca_path = \"/etc/ca.pem\" client_cert_path = \"/etc/c.pem\" client_key_path = \"/etc/c.key\"")).unwrap();
    assert_eq!(c.datastore.settings.mysql_tls.root_ca.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
    let text = load(&with("database_type = \"postgres\" connection_string = \"dbname=x\" root_ca_path = \"/etc/ca.pem\""))
        .unwrap_err()
        .to_string();
    assert!(text.contains("root_ca_path: MySQL only"), "{text}");
    let text = load(&with("database_type = \"mysql\" connection_string = \"u@tcp(db)/x\" client_cert_path = \"/etc/c.pem\""))
        .unwrap_err()
        .to_string();
    assert!(text.contains("client_cert_path and client_key_path go together"), "{text}");
    // A read replica and migrations left to the operator, as in SPIRE; no replica for SQLite.
    let c = load(&with("database_type = \"postgres\" connection_string = \"dbname=x host=primary\" ro_connection_string = \"dbname=x host=replica\" disable_migration = true")).unwrap();
    assert_eq!(c.datastore.ro_connection_string.as_deref(), Some("dbname=x host=replica"));
    assert!(!c.datastore.settings.migrate);
    let c = load(&with("database_type = \"mysql\" connection_string = \"u@tcp(db)/x\" ro_connection_string = \"\"")).unwrap();
    assert_eq!(c.datastore.ro_connection_string, None);
    assert!(c.datastore.settings.migrate);
    let text =
        load(&with("database_type = \"sqlite3\" connection_string = \"x.db\" ro_connection_string = \"y.db\"")).unwrap_err().to_string();
    assert!(
        text.contains("plugins.DataStore.sql.plugin_data.ro_connection_string: read replicas are for database_type postgres and mysql"),
        "{text}"
    );
}

#[test]
fn plugin_data_file_is_read_like_plugin_data_and_a_missing_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.conf");
    std::fs::write(&file, "cert_file_path = \"./up.crt\"\nkey_file_path = \"./up.key\"\n").unwrap();
    let inline = "plugin_data {\n            key_file_path = \"./conf/dummy_upstream_ca.key\"\n            cert_file_path = \"./conf/dummy_upstream_ca.crt\"\n        }";
    assert!(GOOD.contains(inline));
    let c = load(&GOOD.replace(inline, &format!("plugin_data_file = {:?}", file.display().to_string()))).unwrap();
    match c.upstream {
        Some(UpstreamConfig::Disk(d)) => {
            assert_eq!(d.cert_file_path, PathBuf::from("./up.crt"));
            assert_eq!(d.key_file_path, PathBuf::from("./up.key"));
        }
        other => panic!("{other:?}"),
    }
    // SPIRE's words for a file that is not there, and no second error about the missing keys.
    let errs = load(&GOOD.replace(inline, "plugin_data_file = \"conf/nowhere.conf\"")).unwrap_err().to_string();
    assert!(
        errs.contains("plugins.UpstreamAuthority.disk.plugin_data_file: failed to read plugin configuration: open conf/nowhere.conf: no such file or directory"),
        "{errs}"
    );
    assert!(!errs.contains("cert_file_path"), "{errs}");
    let both = load(&GOOD.replace(inline, &format!("{inline}\n plugin_data_file = \"x\""))).unwrap_err().to_string();
    assert!(both.contains("only one of plugin_data and plugin_data_file"), "{both}");
}
