#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
use super::*;

/// SPIRE's own conf/agent/agent.conf, with HCL1 habits (commas, two attributes on a line).
const SPIRE_DEFAULT: &str = r#"
agent {
    data_dir = "./.data"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "8081"
    socket_path ="/tmp/spire-agent/public/api.sock"
    trust_bundle_path = "./conf/agent/dummy_root_ca.crt"
    trust_domain = "example.org"
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {
        }
    }
    KeyManager "disk" {
        plugin_data {
            directory = "./.data"
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {
        }
    }
}
"#;

/// A fuller config in the style of SPIRE's agent_full.conf.
const FULL: &str = r#"
agent {
    data_dir = "/var/lib/spire/agent",
    log_level = "info"
    log_format = "json"
    server_address = "spire-server.example.org" server_port = 443
    socket_path = "/run/spire/agent/api.sock"
    trust_bundle_url = "https://bundle.example.org/root.json"
    trust_bundle_format = "spiffe"
    trust_domain = "example.org"
    rebootstrap_mode = "never"
    rebootstrap_delay = "10m"
    disable_sds_api = true
    allow_unauthenticated_verifiers = false
    authorized_delegates = []
    workload_x509_svid_key_type = "ec-p384"
    log_selectors = []
    experimental {
        sync_interval = "30s"
        use_sync_authorized_entries = true
    }
}
plugins {
    NodeAttestor "x509pop" {
        plugin_data {
            private_key_path = "/etc/spire/node.key"
            certificate_path = "/etc/spire/node.crt"
        }
    }
    KeyManager "memory" { plugin_data {} }
    WorkloadAttestor "unix" {
        plugin_data { discover_workload_path = true workload_size_limit = "-1" }
    }
}
health_checks {
    listener_enabled = true
    bind_address = "127.0.0.1"
    bind_port = "8088"
}
telemetry {}
"#;

fn load_with(text: &str, o: &AgentOverrides) -> Result<AgentConfig, ConfigErrors> {
    AgentConfig::from_tree(&super::super::parse_text(text, false)?, o)
}

fn load(text: &str) -> Result<AgentConfig, ConfigErrors> {
    load_with(text, &AgentOverrides::default())
}

fn paths(errs: &ConfigErrors) -> Vec<&str> {
    errs.0.iter().map(|e| e.path.as_str()).collect()
}

/// A minimal valid config with `agent_extra` inside the agent block and `plugins` as the plugins body.
fn with(agent_extra: &str, plugins: &str) -> String {
    format!(
        "agent {{\n trust_domain = \"example.org\"\n server_address = \"127.0.0.1\"\n trust_bundle_path = \"b.pem\"\n {agent_extra}\n}}\nplugins {{\n{plugins}\n}}\n"
    )
}

const PLUGINS: &str = r#"NodeAttestor "join_token" {}
KeyManager "memory" {}
WorkloadAttestor "unix" {}"#;

#[test]
fn spire_default_agent_conf_is_accepted() {
    let c = load(SPIRE_DEFAULT).unwrap();
    assert_eq!(c.trust_domain.as_str(), "example.org");
    assert_eq!(c.server_address, "127.0.0.1");
    assert_eq!(c.server_port, 8081);
    assert_eq!(c.socket_path, PathBuf::from("/tmp/spire-agent/public/api.sock"));
    assert_eq!(c.data_dir, PathBuf::from("./.data"));
    assert_eq!(c.log_level, "DEBUG");
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.trust_bundle, TrustBundleSource::Path("./conf/agent/dummy_root_ca.crt".into(), TrustBundleFormat::Pem));
    assert_eq!(c.join_token, None, "NodeAttestor join_token without a token is accepted (restart with a stored SVID)");
    assert_eq!(c.node_attestor, NodeAttestorConfig::JoinToken);
    assert_eq!(c.key_manager, AgentKeyManagerConfig::Disk { directory: "./.data".into() });
    assert_eq!(
        c.workload_attestors,
        vec![WorkloadAttestorConfig::Unix(UnixAttestorSettings { discover_workload_path: false, workload_size_limit: 0 })]
    );
    assert_eq!(c.sync_interval, Duration::from_secs(5));
    assert_eq!(c.workload_key_type, KeyType::EcP256);
    assert!(c.health.is_none() && c.log_file.is_none());
    assert!(c.notices.is_empty(), "{:?}", c.notices);
}

#[test]
fn full_config_is_accepted() {
    let c = load(FULL).unwrap();
    assert_eq!(c.server_address, "spire-server.example.org");
    assert_eq!(c.server_port, 443);
    assert_eq!(c.log_level, "INFO");
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.trust_bundle, TrustBundleSource::Url("https://bundle.example.org/root.json".into(), TrustBundleFormat::Spiffe));
    // Keys accepted without effect are each noted, with the reason.
    for key in ["agent.rebootstrap_delay", "agent.disable_sds_api", "agent.experimental.use_sync_authorized_entries"] {
        assert!(c.notices.iter().any(|n| n.starts_with(&format!("{key}: accepted; "))), "no notice for {key}: {:?}", c.notices);
    }
    assert_eq!(
        c.node_attestor,
        NodeAttestorConfig::X509Pop {
            private_key_path: "/etc/spire/node.key".into(),
            certificate_path: "/etc/spire/node.crt".into(),
            intermediates_path: None
        }
    );
    assert_eq!(c.key_manager, AgentKeyManagerConfig::Memory);
    assert_eq!(
        c.workload_attestors,
        vec![WorkloadAttestorConfig::Unix(UnixAttestorSettings { discover_workload_path: true, workload_size_limit: -1 })]
    );
    assert_eq!(c.sync_interval, Duration::from_secs(30));
    assert_eq!(c.workload_key_type, KeyType::EcP384);
    assert_eq!(c.health.as_ref().map(|h| (h.listener_enabled, h.bind_port)), Some((true, 8088)));
}

#[test]
fn every_error_names_its_key_and_all_are_reported_at_once() {
    let bad = r#"
agent {
    trust_domain = "Example.ORG"
    server_port = 99999
    trust_bundle_path = "a.pem"
    trust_bundle_url = "http://insecure.example.org/b"
    trust_bundle_format = "der"
    log_level = "LOUD"
    log_format = "xml"
    enable_sds = true
    sds { default_svid_name = "x" }
    frobnicate = 1
    allow_unauthenticated_verifiers = true
    rebootstrap_mode = "sometimes"
    x509_svid_cache_max_size = -5
    workload_x509_svid_key_type = "rsa-2048"
    experimental {
        sync_interval = "5 minutes"
        ratelimit { fetch_x509_svid = 10 }
    }
}
plugins {
    NodeAttestor "x509pop" { plugin_data { certificate_path = "c.pem" } }
    KeyManager "disk" { plugin_data { keys_path = "k.json" } }
    WorkloadAttestor "unix" { plugin_data { discover_workload_path = "maybe" workload_size_limit = "big" } }
    WorkloadAttestor "docker" {}
    DataStore "sql" {}
}
health_checks { bind_port = "http" }
"#;
    let errs = load(bad).unwrap_err();
    let got = paths(&errs);
    for want in [
        "agent.trust_domain",
        "agent.server_address",
        "agent.server_port",
        "agent.trust_bundle_url",
        "agent.trust_bundle_format",
        "agent.log_level",
        "agent.log_format",
        "agent.enable_sds",
        "agent.sds",
        "agent.frobnicate",
        "agent.allow_unauthenticated_verifiers",
        "agent.rebootstrap_mode",
        "agent.x509_svid_cache_max_size",
        "agent.workload_x509_svid_key_type",
        "agent.experimental.sync_interval",
        "agent.experimental.ratelimit",
        "plugins.NodeAttestor.x509pop.plugin_data.private_key_path",
        "plugins.KeyManager.disk.plugin_data.keys_path",
        "plugins.KeyManager.disk.plugin_data.directory",
        "plugins.WorkloadAttestor.unix.plugin_data.discover_workload_path",
        "plugins.WorkloadAttestor.unix.plugin_data.workload_size_limit",
        "plugins.WorkloadAttestor.docker",
        "plugins.DataStore",
        "health_checks.bind_port",
    ] {
        assert!(got.contains(&want), "missing error for {want}; got:\n{errs}");
    }
    let text = errs.to_string();
    assert!(text.contains("removed in SPIRE 1.0"), "{text}");
    assert!(text.contains("must start with https://"), "{text}");
    assert!(text.contains("no Envoy SDS API"), "{text}");
    assert!(text.contains("the agent's takes directory"), "{text}");
}

#[test]
fn trust_bundle_sources_are_exclusive() {
    // (agent block extra, expected error path or None for success)
    let cases: &[(&str, Option<&str>)] = &[
        ("", None),
        ("trust_bundle_url = \"https://x/b.pem\"", Some("agent.trust_bundle_url")),
        ("insecure_bootstrap = true", Some("agent.insecure_bootstrap")),
        ("insecure_bootstrap = true\n trust_bundle_url = \"https://x/b.pem\"", Some("agent.insecure_bootstrap")),
    ];
    for (extra, want) in cases {
        let r = load(&with(extra, PLUGINS));
        match want {
            None => assert!(r.is_ok(), "{extra}: {r:?}"),
            Some(p) => {
                let errs = r.unwrap_err();
                assert!(paths(&errs).contains(p), "{extra}: want {p}, got\n{errs}");
            }
        }
    }
    // No source at all.
    let text = "agent { trust_domain = \"example.org\" server_address = \"s\" }\nplugins {\n".to_owned() + PLUGINS + "\n}";
    let errs = load(&text).unwrap_err();
    assert!(paths(&errs).contains(&"agent.trust_bundle_path"), "{errs}");
    assert!(errs.to_string().contains("insecure_bootstrap = true"), "{errs}");
    // Insecure bootstrap alone.
    let text = "agent { trust_domain = \"example.org\" server_address = \"s\" insecure_bootstrap = true }\nplugins {\n".to_owned()
        + PLUGINS
        + "\n}";
    assert_eq!(load(&text).unwrap().trust_bundle, TrustBundleSource::InsecureBootstrap);
}

#[test]
fn join_token_rules() {
    // Join token with join_token attestor: used.
    let c = load(&with("join_token = \"abc\"", PLUGINS)).unwrap();
    assert_eq!(c.join_token.as_deref(), Some("abc"));
    assert!(!format!("{c:?}").contains("abc"), "join token must not appear in Debug output");
    // Join token with x509pop: refused, naming the key.
    let x509pop = r#"NodeAttestor "x509pop" { plugin_data { private_key_path = "k" certificate_path = "c" intermediates_path = "i" } }
KeyManager "memory" {}
WorkloadAttestor "unix" {}"#;
    let errs = load(&with("join_token = \"abc\"", x509pop)).unwrap_err();
    assert_eq!(paths(&errs), vec!["agent.join_token"], "{errs}");
    let c = load(&with("", x509pop)).unwrap();
    assert!(
        matches!(c.node_attestor, NodeAttestorConfig::X509Pop { intermediates_path: Some(ref i), .. } if i.as_path() == Path::new("i"))
    );
    // The flag counts as a token too.
    let o = AgentOverrides { join_token: Some("flag".into()), ..Default::default() };
    assert_eq!(paths(&load_with(&with("", x509pop), &o).unwrap_err()), vec!["agent.join_token"]);
    // join_token_file: read and trimmed; missing or empty files and both keys are errors.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("token");
    std::fs::write(&f, "  tok-from-file\n").unwrap();
    let c = load(&with(&format!("join_token_file = \"{}\"", f.display()), PLUGINS)).unwrap();
    assert_eq!(c.join_token.as_deref(), Some("tok-from-file"));
    let both = format!("join_token = \"a\"\n join_token_file = \"{}\"", f.display());
    assert_eq!(paths(&load(&with(&both, PLUGINS)).unwrap_err()), vec!["agent.join_token_file"]);
    std::fs::write(&f, "\n").unwrap();
    assert_eq!(paths(&load(&with(&format!("join_token_file = \"{}\"", f.display()), PLUGINS)).unwrap_err()), vec!["agent.join_token_file"]);
    let missing = dir.path().join("nope");
    assert_eq!(
        paths(&load(&with(&format!("join_token_file = \"{}\"", missing.display()), PLUGINS)).unwrap_err()),
        vec!["agent.join_token_file"]
    );
}

#[test]
fn plugin_cardinality() {
    let cases: &[(&str, &str)] = &[
        ("KeyManager \"memory\" {}\nWorkloadAttestor \"unix\" {}", "plugins.NodeAttestor"),
        ("NodeAttestor \"join_token\" {}\nWorkloadAttestor \"unix\" {}", "plugins.KeyManager"),
        ("NodeAttestor \"join_token\" {}\nKeyManager \"memory\" {}", "plugins.WorkloadAttestor"),
        (
            "NodeAttestor \"join_token\" {}\nNodeAttestor \"x509pop\" { plugin_data { private_key_path = \"k\" certificate_path = \"c\" } }\nKeyManager \"memory\" {}\nWorkloadAttestor \"unix\" {}",
            "plugins.NodeAttestor",
        ),
        (
            "NodeAttestor \"join_token\" {}\nKeyManager \"memory\" {}\nKeyManager \"disk\" { plugin_data { directory = \"d\" } }\nWorkloadAttestor \"unix\" {}",
            "plugins.KeyManager",
        ),
        (
            "NodeAttestor \"join_token\" {}\nKeyManager \"memory\" {}\nWorkloadAttestor \"unix\" {}\nWorkloadAttestor \"unix\" {}",
            "plugins.WorkloadAttestor.unix",
        ),
        ("NodeAttestor \"aws_iid\" {}\nKeyManager \"memory\" {}\nWorkloadAttestor \"unix\" {}", "plugins.NodeAttestor.aws_iid"),
        ("NodeAttestor \"join_token\" {}\nKeyManager \"pkcs11\" {}\nWorkloadAttestor \"unix\" {}", "plugins.KeyManager.pkcs11"),
        (
            "NodeAttestor \"join_token\" { plugin_cmd = \"/bin/evil\" }\nKeyManager \"memory\" {}\nWorkloadAttestor \"unix\" {}",
            "plugins.NodeAttestor.join_token.plugin_cmd",
        ),
        (
            "NodeAttestor \"join_token\" {}\nKeyManager \"memory\" {}\nWorkloadAttestor \"unix\" {}\nSVIDStore \"aws_secretsmanager\" {}",
            "plugins.SVIDStore",
        ),
    ];
    for (plugins, want) in cases {
        let errs = load(&with("", plugins)).unwrap_err();
        assert!(paths(&errs).contains(want), "want {want} for\n{plugins}\ngot:\n{errs}");
    }
    // A disabled plugin does not count.
    let p =
        "NodeAttestor \"join_token\" {}\nKeyManager \"memory\" {}\nKeyManager \"disk\" { enabled = false }\nWorkloadAttestor \"unix\" {}";
    assert_eq!(load(&with("", p)).unwrap().key_manager, AgentKeyManagerConfig::Memory);
}

#[test]
fn accepted_only_with_harmless_values() {
    for ok in [
        "allow_unauthenticated_verifiers = false",
        "disable_workload_api = false",
        "disable_sds_api = true",
        "rebootstrap_mode = \"never\"",
        "authorized_delegates = []",
        "log_selectors = []",
        "log_file = \"/var/log/agent.log\"",
        "experimental { require_pq_kem = false\n feature_flags = [] }",
    ] {
        assert!(load(&with(ok, PLUGINS)).is_ok(), "{ok}");
    }
    for (bad, path) in [
        ("disable_workload_api = true", "agent.disable_workload_api"),
        ("rebootstrap_mode = \"auto\"", "agent.rebootstrap_mode"),
        ("authorized_delegates = [\"spiffe://example.org/x\"]", "agent.authorized_delegates"),
        ("availability_target = \"24h\"", "agent.availability_target"),
        ("trust_bundle_unix_socket = \"/x\"", "agent.trust_bundle_unix_socket"),
        ("experimental { require_pq_kem = true }", "agent.experimental.require_pq_kem"),
        ("experimental { named_pipe_name = \"x\" }", "agent.experimental.named_pipe_name"),
        ("experimental { sync_interval = \"0s\" }", "agent.experimental.sync_interval"),
        ("admin_socket_path = \"/tmp/spire-agent/public/api.sock\"", "agent.admin_socket_path"),
        ("bind_port = 8081", "agent.bind_port"),
    ] {
        let errs = load(&with(bad, PLUGINS)).unwrap_err();
        assert_eq!(paths(&errs), vec![path], "{bad}: {errs}");
    }
}

#[test]
fn missing_blocks_syntax_errors_and_server_configs() {
    let errs = load("").unwrap_err().to_string();
    assert!(errs.contains("agent: missing") && errs.contains("plugins: missing"), "{errs}");
    let errs = load("agent { trust_domain = \"x\"").unwrap_err().to_string();
    assert!(errs.contains("syntax error") && errs.contains("line 1"), "{errs}");
    let errs = load("server { trust_domain = \"x\" }").unwrap_err();
    assert!(errs.to_string().contains("this is a server config"), "{errs}");
}

#[test]
fn overrides_win_and_json_is_accepted() {
    let json = r#"{
        "agent": {"trust_domain": "example.org", "server_address": "10.0.0.1", "server_port": 9000,
                  "trust_bundle_path": "file.pem", "join_token": "from-file"},
        "plugins": {
            "NodeAttestor": {"join_token": {"plugin_data": {}}},
            "KeyManager": {"disk": {"plugin_data": {"directory": "/var/lib/agent"}}},
            "WorkloadAttestor": {"unix": {"plugin_data": {"discover_workload_path": true}}}
        }
    }"#;
    let c = load(json).unwrap();
    assert_eq!((c.server_address.as_str(), c.server_port), ("10.0.0.1", 9000));
    assert_eq!(c.join_token.as_deref(), Some("from-file"));
    assert_eq!(c.key_manager, AgentKeyManagerConfig::Disk { directory: "/var/lib/agent".into() });
    let o = AgentOverrides {
        server_address: Some("server.internal".into()),
        server_port: Some(8443),
        socket_path: Some("/run/a.sock".into()),
        trust_domain: Some("other.org".into()),
        trust_bundle_path: Some("flag.pem".into()),
        trust_bundle_format: Some("spiffe".into()),
        join_token: Some("from-flag".into()),
        data_dir: Some("/data".into()),
        log_level: Some("warn".into()),
        ..Default::default()
    };
    let c = load_with(json, &o).unwrap();
    assert_eq!(c.trust_domain.as_str(), "other.org");
    assert_eq!((c.server_address.as_str(), c.server_port), ("server.internal", 8443));
    assert_eq!(c.socket_path, PathBuf::from("/run/a.sock"));
    assert_eq!(c.trust_bundle, TrustBundleSource::Path("flag.pem".into(), TrustBundleFormat::Spiffe));
    assert_eq!(c.join_token.as_deref(), Some("from-flag"));
    assert_eq!(c.data_dir, PathBuf::from("/data"));
    assert_eq!(c.log_level, "WARN");
    // -trustBundleUrl beside the file's trust_bundle_path: both given, as in SPIRE.
    let o = AgentOverrides { trust_bundle_url: Some("https://x/b".into()), ..Default::default() };
    assert_eq!(paths(&load_with(json, &o).unwrap_err()), vec!["agent.trust_bundle_url"]);
    // -insecureBootstrap beside the file's trust_bundle_path: both given.
    let o = AgentOverrides { insecure_bootstrap: true, ..Default::default() };
    assert_eq!(paths(&load_with(json, &o).unwrap_err()), vec!["agent.insecure_bootstrap"]);
}

#[test]
fn json_plugin_lists_are_accepted() {
    let json = r#"{
        "agent": {"trust_domain": "example.org", "server_address": "s", "insecure_bootstrap": true},
        "plugins": {
            "NodeAttestor": [{"join_token": {"plugin_data": {}}}],
            "KeyManager": [{"memory": {"plugin_data": {}}}],
            "WorkloadAttestor": [{"unix": {"plugin_data": {}}}, {"docker": {"plugin_data": {}}}]
        }
    }"#;
    let errs = load(json).unwrap_err();
    assert_eq!(paths(&errs), vec!["plugins.WorkloadAttestor.docker"], "{errs}");
    let c = load(&json.replace(r#", {"docker": {"plugin_data": {}}}"#, "")).unwrap();
    assert_eq!(c.key_manager, AgentKeyManagerConfig::Memory);
    assert_eq!(c.trust_bundle, TrustBundleSource::InsecureBootstrap);
}

#[test]
fn load_reads_files_and_expands_env_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("agent.conf");
    std::fs::write(&f, SPIRE_DEFAULT.replace("\"127.0.0.1\"", "\"${CAIRN_AGENT_TEST_ADDR}\"")).unwrap();
    // The variable is unset: with expansion the address becomes empty, hence missing.
    let errs = AgentConfig::load(&f, true, &AgentOverrides::default()).unwrap_err();
    assert_eq!(paths(&errs), vec!["agent.server_address"], "{errs}");
    let c = AgentConfig::load(&f, false, &AgentOverrides::default()).unwrap();
    assert_eq!(c.server_address, "${CAIRN_AGENT_TEST_ADDR}");
    let errs = AgentConfig::load(&dir.path().join("missing.conf"), false, &AgentOverrides::default()).unwrap_err();
    assert!(errs.to_string().contains("please use the -config flag"), "{errs}");
}

#[test]
fn svid_cache_sizes_default_to_spires_and_zero_means_the_default() {
    let c = load(&with("", PLUGINS)).unwrap();
    assert_eq!((c.x509_svid_cache_max_size, c.jwt_svid_cache_max_size), (1000, 1000));
    let c = load(&with("x509_svid_cache_max_size = 8\n jwt_svid_cache_max_size = \"0\"", PLUGINS)).unwrap();
    assert_eq!((c.x509_svid_cache_max_size, c.jwt_svid_cache_max_size), (8, 1000));
    let errs = load(&with("jwt_svid_cache_max_size = -1", PLUGINS)).unwrap_err();
    let e = errs.0.iter().find(|e| e.path == "agent.jwt_svid_cache_max_size").unwrap();
    assert!(e.message.contains("must not be negative"), "{}", e.message);
}

#[test]
fn keys_cairn_lacks_are_refused_by_path_with_a_reason() {
    let text = with("log_selectors = [\"unix:user\"]", PLUGINS) + "telemetry {\n Prometheus { port = 9988 }\n}\n";
    let errs = load(&text).unwrap_err();
    for key in ["agent.log_selectors", "telemetry.Prometheus"] {
        let e = errs.0.iter().find(|e| e.path == key).unwrap_or_else(|| panic!("{key} not refused:\n{errs}"));
        assert!(e.message.starts_with("not supported by cairn (") && e.message.ends_with(')'), "{key}: {}", e.message);
    }
}

#[test]
fn the_admin_socket_may_not_share_the_workload_sockets_directory() {
    let w = Path::new("/tmp/spire-agent/public/api.sock");
    assert!(check_admin_socket_placement(Path::new("/tmp/spire-agent/public/admin.sock"), w).is_err());
    assert!(check_admin_socket_placement(Path::new("/tmp/spire-agent/public/sub/admin.sock"), w).is_err());
    assert!(check_admin_socket_placement(Path::new("/tmp/spire-agent/private/admin.sock"), w).is_ok());
    assert!(check_admin_socket_placement(Path::new("/opt/debug.sock"), w).is_ok());
}
