use super::*;

fn settings(auth: AuthSettings) -> VaultSettings {
    VaultSettings { vault_addr: Some("https://vault.example.org:8200/".into()), auth, ..VaultSettings::default() }
}

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn the_environment_wins_as_in_spire_and_the_config_fills_gaps() {
    let env = |k: &str| match k {
        "VAULT_ADDR" => Some("http://from-env:8200".to_owned()),
        "VAULT_TOKEN" => Some("env-token".to_owned()),
        "VAULT_NAMESPACE" => Some("ns1".to_owned()),
        _ => None,
    };
    let r = settings(AuthSettings::Token { token: Some(Secret::new("cfg-token".into())) }).resolve("p", &env).unwrap();
    assert_eq!(r.addr, "http://from-env:8200");
    assert_eq!(r.namespace.as_deref(), Some("ns1"));
    let ResolvedAuth::Token(t) = &r.auth else { panic!() };
    assert_eq!(t.expose(), "env-token");
    let r = settings(AuthSettings::Token { token: Some(Secret::new("cfg-token".into())) }).resolve("p", &no_env).unwrap();
    assert_eq!(r.addr, "https://vault.example.org:8200");
    let ResolvedAuth::Token(t) = &r.auth else { panic!() };
    assert_eq!(t.expose(), "cfg-token");
    let r = VaultSettings { auth: AuthSettings::Token { token: None }, ..VaultSettings::default() }.resolve("p", &env).unwrap();
    assert_eq!(r.addr, "http://from-env:8200");
    let ResolvedAuth::Token(t) = &r.auth else { panic!() };
    assert_eq!(t.expose(), "env-token");
}

#[test]
fn missing_credentials_name_the_key_and_the_variable() {
    let e = settings(AuthSettings::Token { token: None }).resolve("plugins.X.plugin_data", &no_env).unwrap_err().to_string();
    assert!(e.contains("plugins.X.plugin_data.token_auth.token") && e.contains("VAULT_TOKEN"), "{e}");
    let e = settings(AuthSettings::AppRole { mount: "approle".into(), role_id: Some("r".into()), secret_id: None })
        .resolve("p", &no_env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("approle_secret_id") && e.contains("VAULT_APPROLE_SECRET_ID"), "{e}");
    let e = settings(AuthSettings::Cert { mount: "cert".into(), role_name: None, client_cert_path: None, client_key_path: None })
        .resolve("p", &no_env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("client_cert_path") && e.contains("VAULT_CLIENT_CERT"), "{e}");
    let e = VaultSettings { auth: AuthSettings::Token { token: Some(Secret::new("t".into())) }, ..VaultSettings::default() }
        .resolve("p", &no_env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("p.vault_addr") && e.contains("VAULT_ADDR"), "{e}");
}

#[test]
fn addresses_are_checked() {
    for bad in ["vault:8200", "ftp://vault", "https://", "https://vault/v1/pki", "https://user@vault"] {
        let s = VaultSettings {
            vault_addr: Some(bad.into()),
            auth: AuthSettings::Token { token: Some(Secret::new("t".into())) },
            ..Default::default()
        };
        let e = s.resolve("p", &no_env).unwrap_err().to_string();
        assert!(e.starts_with("p.vault_addr:"), "{bad}: {e}");
    }
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let s = settings(AuthSettings::AppRole {
        mount: "approle".into(),
        role_id: Some("role".into()),
        secret_id: Some(Secret::new("s3cr3t-id".into())),
    });
    let r = s.resolve("p", &no_env).unwrap();
    for text in [format!("{s:?}"), format!("{r:?}")] {
        assert!(!text.contains("s3cr3t-id"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}

#[test]
fn refusals_say_what_to_do() {
    let e =
        VaultError::Refused { method: "POST", path: "pki/root/sign-intermediate".into(), status: 403, message: "permission denied".into() };
    let t = e.to_string();
    assert!(t.contains("pki/root/sign-intermediate") && t.contains("403") && t.contains("policy"), "{t}");
    assert!(e.is_permission_denied() && !e.is_transient());
    let e = VaultError::Refused {
        method: "GET",
        path: "nope/cert/ca".into(),
        status: 404,
        message: "no handler for route \"nope/cert/ca\". route entry not found.".into(),
    };
    assert!(e.to_string().contains("pki_mount_point"), "{e}");
    let e = VaultError::Refused { method: "GET", path: "pki/cert/ca".into(), status: 503, message: "Vault is sealed".into() };
    assert!(e.to_string().contains("sealed") && e.is_transient(), "{e}");
}
