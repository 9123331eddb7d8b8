#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
use super::*;
use crate::datastore::{Datastore, sql::SqliteDatastore};
use crate::keymanager::{KeyManager, KeyType, MemoryKeyManager};
use std::sync::Arc;
use x509_parser::prelude::*;

const H: i64 = 3600;
const T0: i64 = 1_800_000_000;

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn config(ca_ttl: i64) -> CaConfig {
    CaConfig {
        trust_domain: td(),
        ca_ttl,
        default_x509_svid_ttl: H,
        default_jwt_svid_ttl: 300,
        ca_key_type: KeyType::EcP256,
        jwt_key_type: KeyType::EcP256,
        ca_subject: CaSubject::default(),
        jwt_issuer: Some("https://issuer.example".into()),
        journal_key: "test".into(),
        jwt_publish_grace: 0,
        disable_jwt_svids: false,
        ca_rotation_interval: 10,
    }
}

async fn datastore() -> Arc<dyn Datastore> {
    Arc::new(SqliteDatastore::connect("sqlite::memory:").await.unwrap())
}

fn leaf_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

#[tokio::test]
async fn rotation_end_to_end_with_injected_clock() {
    let ds = datastore().await;
    let km: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::new());
    let m = CaManager::new(config(24 * H), km, None, Arc::clone(&ds));
    m.initialize(T0).await.unwrap();
    let first = m.ca().x509_authority().unwrap();
    let first_kid = m.ca().jwt_signer().unwrap().kid.clone();
    let bundle = ds.get_bundle(&td()).await.unwrap().unwrap();
    assert_eq!(bundle.x509_authorities, vec![first.cert_der.clone()]);
    assert_eq!(bundle.jwt_authorities.len(), 1);
    let seq0 = bundle.sequence_number;

    // Before the prepare threshold nothing changes.
    m.rotate(T0 + 11 * H).await.unwrap();
    assert_eq!(ds.get_bundle(&td()).await.unwrap().unwrap().sequence_number, seq0);
    // At half-life the next CA and JWT key are prepared and published, not used.
    m.rotate(T0 + 12 * H).await.unwrap();
    let bundle = ds.get_bundle(&td()).await.unwrap().unwrap();
    assert_eq!(bundle.x509_authorities.len(), 2);
    assert_eq!(bundle.jwt_authorities.len(), 2);
    assert!(bundle.sequence_number > seq0);
    assert_eq!(m.ca().x509_authority().unwrap().authority_id, first.authority_id);
    assert_eq!(m.ca().jwt_signer().unwrap().kid, first_kid);
    // At the activation threshold (5/6 of life) the prepared ones take over.
    m.rotate(T0 + 20 * H).await.unwrap();
    let second = m.ca().x509_authority().unwrap();
    assert_ne!(second.authority_id, first.authority_id);
    assert_ne!(m.ca().jwt_signer().unwrap().kid, first_kid);
    assert!(bundle.x509_authorities.contains(&second.cert_der));
    // SVIDs now chain to the new root.
    let key = leaf_key();
    let id = SpiffeId::new("spiffe://example.org/w").unwrap();
    let chain = m.ca().mint_x509_svid(&key, &X509SvidRequest { id: &id, dns_names: &[], ttl: 0 }, T0 + 20 * H).await.unwrap().chain;
    let (_, leaf) = parse_x509_certificate(&chain[0]).unwrap();
    let (_, root) = parse_x509_certificate(&second.cert_der).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    let status = m.status().await;
    assert_eq!(status.iter().filter(|s| s.role == "current").count(), 2);
}

#[tokio::test]
async fn svid_profile_and_ttl_capping() {
    let ds = datastore().await;
    let m = CaManager::new(config(2 * H), Arc::new(MemoryKeyManager::new()), None, ds);
    m.initialize(T0).await.unwrap();
    let ca = m.ca();
    let key = leaf_key();
    let id = SpiffeId::new("spiffe://example.org/ns/prod/web").unwrap();
    let dns = vec!["web.example.org".to_owned()];
    // A TTL longer than the CA's remaining life is capped at the CA's notAfter.
    let minted = ca.mint_x509_svid(&key, &X509SvidRequest { id: &id, dns_names: &dns, ttl: 10 * H }, T0).await.unwrap();
    // What minting reports is what the certificate says (read back by x509-parser, not rcgen).
    let (_, cert) = parse_x509_certificate(&minted.chain[0]).unwrap();
    assert_eq!(minted.serial, cert.serial.to_str_radix(10));
    assert_eq!(minted.not_after, cert.validity().not_after.timestamp());
    assert_eq!(minted.not_before, cert.validity().not_before.timestamp());
    let chain = minted.chain;
    assert_eq!(chain.len(), 1, "a self-signed root's SVID chain is the leaf alone");
    let (_, leaf) = parse_x509_certificate(&chain[0]).unwrap();
    assert_eq!(leaf.validity().not_after.timestamp(), ca.x509_authority().unwrap().not_after);
    assert_eq!(leaf.validity().not_before.timestamp(), T0 - 10);
    assert!(!leaf.is_ca());
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let authority = ca.x509_authority().unwrap();
    let (_, ca_cert) = parse_x509_certificate(&authority.cert_der).unwrap();
    let ski = match ca_cert
        .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
        .unwrap()
        .unwrap()
        .parsed_extension()
    {
        ParsedExtension::SubjectKeyIdentifier(k) => k.0.to_vec(),
        _ => panic!("no SKI"),
    };
    let aki = match leaf
        .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
        .unwrap()
        .unwrap()
        .parsed_extension()
    {
        ParsedExtension::AuthorityKeyIdentifier(k) => k.key_identifier.as_ref().unwrap().0.to_vec(),
        _ => panic!("no AKI"),
    };
    assert_eq!(ski, aki);
    // Refusals.
    let other = SpiffeId::new("spiffe://other.org/w").unwrap();
    assert!(matches!(
        ca.mint_x509_svid(&key, &X509SvidRequest { id: &other, dns_names: &[], ttl: 0 }, T0).await,
        Err(CaError::InvalidRequest(_))
    ));
    let root = SpiffeId::new("spiffe://example.org").unwrap();
    assert!(matches!(
        ca.mint_x509_svid(&key, &X509SvidRequest { id: &root, dns_names: &[], ttl: 0 }, T0).await,
        Err(CaError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn jwt_svid_claims_and_exp_cap() {
    let ds = datastore().await;
    let m = CaManager::new(config(H), Arc::new(MemoryKeyManager::new()), None, Arc::clone(&ds));
    m.initialize(T0).await.unwrap();
    let id = SpiffeId::new("spiffe://example.org/w").unwrap();
    let (token, exp) = m.ca().mint_jwt_svid(&id, &["a".into()], 10 * H, T0).await.unwrap();
    assert_eq!(exp, m.ca().jwt_signer().unwrap().not_after);
    let bundle = ds.get_bundle(&td()).await.unwrap().unwrap();
    let claims = crate::spiffe::jwt::validate_jwt_svid(&token, &["a"], T0, |t, kid| {
        assert_eq!(t, &td());
        Ok(bundle.jwt_authorities.iter().find(|k| k.key_id == kid).map(|k| k.public_key.clone()))
    })
    .unwrap();
    assert_eq!(claims.subject, id);
    assert_eq!(claims.expiry, m.ca().jwt_signer().unwrap().not_after, "exp is capped at the key's expiry");
    assert_eq!(claims.issuer.as_deref(), Some("https://issuer.example"));
    assert!(m.ca().mint_jwt_svid(&id, &[], 0, T0).await.is_err());
    assert!(m.ca().mint_jwt_svid(&id, &vec!["a".to_owned(); 10_000], 0, T0).await.is_err());
}

#[tokio::test]
async fn restart_with_persistent_keys_resumes_and_memory_keys_remint() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("ds.sqlite3").display());
    let keys = dir.path().join("keys.json");
    let (first, kid) = {
        let ds: Arc<dyn Datastore> = Arc::new(SqliteDatastore::connect(&db).await.unwrap());
        let km = Arc::new(crate::keymanager::DiskKeyManager::open(&keys).unwrap());
        let m = CaManager::new(config(24 * H), km, None, ds);
        m.initialize(T0).await.unwrap();
        (m.ca().x509_authority().unwrap().cert_der.clone(), m.ca().jwt_signer().unwrap().kid.clone())
    };
    let ds: Arc<dyn Datastore> = Arc::new(SqliteDatastore::connect(&db).await.unwrap());
    let km = Arc::new(crate::keymanager::DiskKeyManager::open(&keys).unwrap());
    let m = CaManager::new(config(24 * H), km, None, Arc::clone(&ds));
    m.initialize(T0 + H).await.unwrap();
    assert_eq!(m.ca().x509_authority().unwrap().cert_der, first, "disk keys: same CA after restart");
    assert_eq!(m.ca().jwt_signer().unwrap().kid, kid);
    assert_eq!(ds.get_bundle(&td()).await.unwrap().unwrap().x509_authorities.len(), 1);
    // Memory keys: the journal's key is gone, so a new CA is minted; the old root stays.
    let m = CaManager::new(config(24 * H), Arc::new(MemoryKeyManager::new()), None, Arc::clone(&ds));
    m.initialize(T0 + 2 * H).await.unwrap();
    assert_ne!(m.ca().x509_authority().unwrap().cert_der, first);
    let bundle = ds.get_bundle(&td()).await.unwrap().unwrap();
    assert_eq!(bundle.x509_authorities.len(), 2);
    assert!(bundle.x509_authorities.contains(&first));
}

#[tokio::test]
async fn unreachable_upstream_fails_start_without_jwt_churn() {
    #[derive(Debug)]
    struct Down;
    #[async_trait::async_trait]
    impl crate::upstream::UpstreamAuthority for Down {
        async fn mint_x509_ca(&self, _: &[u8], _: i64) -> Result<crate::upstream::MintedCa, crate::upstream::UpstreamError> {
            Err(crate::upstream::UpstreamError::Unavailable("connection refused".into()))
        }
    }
    let ds = datastore().await;
    let km = Arc::new(MemoryKeyManager::new());
    let m = CaManager::new(config(H), Arc::clone(&km) as Arc<dyn KeyManager>, Some(Arc::new(Down)), Arc::clone(&ds));
    let err = m.initialize(T0).await.unwrap_err().to_string();
    assert!(err.contains("connection refused"), "{err}");
    assert!(km.get_key("JWT-Signer-A").await.unwrap().is_none(), "no JWT key made while there is no X.509 CA");
    assert!(ds.get_bundle(&td()).await.unwrap().is_none());
}

#[tokio::test]
async fn svids_are_capped_at_the_entry_expiry() {
    let m = CaManager::new(config(24 * H), Arc::new(MemoryKeyManager::new()), None, datastore().await);
    m.initialize(T0).await.unwrap();
    let ca = m.ca();
    let key = leaf_key();
    let id = SpiffeId::new("spiffe://example.org/w").unwrap();
    let req = X509SvidRequest { id: &id, dns_names: &[], ttl: H };
    let chain = ca.mint_x509_svid_until(&key, &req, T0 + 120, T0).await.unwrap().chain;
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    assert_eq!(leaf.validity().not_after.timestamp(), T0 + 120, "a 1h TTL is cut to the entry's expiry");
    // 0 = no limit: the TTL decides.
    let chain = ca.mint_x509_svid_until(&key, &req, 0, T0).await.unwrap().chain;
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    assert_eq!(leaf.validity().not_after.timestamp(), T0 + H);
    // A limit later than the TTL changes nothing.
    let chain = ca.mint_x509_svid_until(&key, &req, T0 + 2 * H, T0).await.unwrap().chain;
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    assert_eq!(leaf.validity().not_after.timestamp(), T0 + H);
    assert!(matches!(ca.mint_x509_svid_until(&key, &req, T0, T0).await, Err(CaError::InvalidRequest(_))), "an expired entry gets nothing");

    let (_, exp) = ca.mint_jwt_svid_until(&id, &["a".into()], H, T0 + 120, T0).await.unwrap();
    assert_eq!(exp, T0 + 120);
    let (_, exp) = ca.mint_jwt_svid_until(&id, &["a".into()], H, 0, T0).await.unwrap();
    assert_eq!(exp, T0 + H);
    assert!(ca.mint_jwt_svid_until(&id, &["a".into()], H, T0 - 1, T0).await.is_err());
}

#[tokio::test]
async fn a_vanished_disk_key_file_stops_the_restart_instead_of_minting_a_new_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys.json");
    let ds = datastore().await;
    let km: Arc<dyn KeyManager> = Arc::new(crate::keymanager::DiskKeyManager::open(&keys).unwrap());
    let m = CaManager::new(config(24 * H), km, None, Arc::clone(&ds));
    m.initialize(T0).await.unwrap();
    let first = m.ca().x509_authority().unwrap().authority_id.clone();

    // Same keys file: the CA resumes.
    let km: Arc<dyn KeyManager> = Arc::new(crate::keymanager::DiskKeyManager::open(&keys).unwrap());
    let m = CaManager::new(config(24 * H), km, None, Arc::clone(&ds));
    m.initialize(T0 + H).await.unwrap();
    assert_eq!(m.ca().x509_authority().unwrap().authority_id, first);

    // Keys file replaced by one holding other keys under the same ids: refuse too.
    let saved = std::fs::read(&keys).unwrap();
    std::fs::remove_file(&keys).unwrap();
    let other = crate::keymanager::DiskKeyManager::open(&keys).unwrap();
    for id in ["x509-CA-A", "x509-CA-B", "JWT-Signer-A", "JWT-Signer-B"] {
        other.generate_key(id, KeyType::EcP256).await.unwrap();
    }
    let km: Arc<dyn KeyManager> = Arc::new(crate::keymanager::DiskKeyManager::open(&keys).unwrap());
    let m = CaManager::new(config(24 * H), km, None, Arc::clone(&ds));
    let err = m.initialize(T0 + H).await.unwrap_err();
    assert!(matches!(err, CaError::KeysMissing { .. }) && err.to_string().contains("different one"), "{err}");
    std::fs::write(&keys, saved).unwrap();

    // Keys file gone: refuse, naming the file; no new CA is minted into the bundle.
    std::fs::remove_file(&keys).unwrap();
    let roots_before = ds.get_bundle(&td()).await.unwrap().unwrap().x509_authorities.len();
    let km: Arc<dyn KeyManager> = Arc::new(crate::keymanager::DiskKeyManager::open(&keys).unwrap());
    let m = CaManager::new(config(24 * H), km, None, Arc::clone(&ds));
    let err = m.initialize(T0 + 2 * H).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CaError::KeysMissing { .. }), "{msg}");
    assert!(msg.contains(&keys.display().to_string()) && msg.contains("x509-CA-") && msg.contains("remove the datastore"), "{msg}");
    assert_eq!(ds.get_bundle(&td()).await.unwrap().unwrap().x509_authorities.len(), roots_before);
    assert!(m.ca().x509_authority().is_none());

    // A memory key manager loses its keys by design: a new CA, the old root kept.
    let m = CaManager::new(config(24 * H), Arc::new(MemoryKeyManager::new()), None, Arc::clone(&ds));
    m.initialize(T0 + 3 * H).await.unwrap();
    assert_ne!(m.ca().x509_authority().unwrap().authority_id, first);
    assert_eq!(ds.get_bundle(&td()).await.unwrap().unwrap().x509_authorities.len(), roots_before + 1);
}

#[tokio::test]
async fn a_fresh_jwt_key_waits_only_when_someone_may_hold_the_bundle_without_it() {
    let ds = datastore().await;
    let mut cfg = config(24 * H);
    cfg.jwt_publish_grace = 5;
    // First start on an empty datastore, no tier above: nobody can hold an older bundle, so
    // the key is used at once and the tier can sign both kinds of SVID.
    let m = CaManager::new(cfg.clone(), Arc::new(MemoryKeyManager::new()), None, Arc::clone(&ds));
    m.initialize(T0).await.unwrap();
    assert!(m.ca().jwt_signer().is_some() && m.ca().can_sign(T0));
    // A restart that lost its keys: agents and downstream tiers hold the old bundle, so the
    // new key waits out the grace, and the tier is not ready meanwhile.
    let m = CaManager::new(cfg, Arc::new(MemoryKeyManager::new()), None, Arc::clone(&ds));
    m.initialize(T0 + 60).await.unwrap();
    assert!(m.ca().x509_authority().is_some());
    assert!(m.ca().jwt_signer().is_none() && !m.ca().can_sign(T0 + 60), "a key others cannot know yet was used at once");
    m.rotate(T0 + 64).await.unwrap();
    assert!(m.ca().jwt_signer().is_none());
    m.rotate(T0 + 65).await.unwrap();
    assert!(m.ca().can_sign(T0 + 65));
}

#[tokio::test]
async fn a_jwt_svid_asked_for_during_the_grace_waits_for_the_key_instead_of_failing() {
    let ds = datastore().await;
    let mut cfg = config(24 * H);
    cfg.jwt_publish_grace = 5;
    CaManager::new(cfg.clone(), Arc::new(MemoryKeyManager::new()), None, Arc::clone(&ds)).initialize(T0).await.unwrap();
    // A restart that lost its keys: the new JWT key waits out the grace.
    let m = CaManager::new(cfg, Arc::new(MemoryKeyManager::new()), None, Arc::clone(&ds));
    m.initialize(T0 + 60).await.unwrap();
    assert!(m.ca().jwt_signer().is_none());
    let id = SpiffeId::new("spiffe://example.org/w").unwrap();
    let audience = ["a".to_owned()];
    let ca = m.ca();
    let mint = ca.mint_jwt_svid(&id, &audience, 0, T0 + 65);
    let activate = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        m.rotate(T0 + 65).await.unwrap();
    };
    let (minted, ()) = tokio::join!(mint, activate);
    let (token, _) = minted.unwrap();
    let kid = crate::spiffe::jwt::header_kid(&token).unwrap();
    assert_eq!(Some(kid), m.ca().jwt_signer().map(|s| s.kid.clone()));
}

#[tokio::test]
async fn disable_jwt_svids_makes_no_key_and_mints_nothing() {
    let ds = datastore().await;
    let mut cfg = config(24 * H);
    cfg.disable_jwt_svids = true;
    let km = Arc::new(MemoryKeyManager::new());
    let m = CaManager::new(cfg, Arc::clone(&km) as Arc<dyn KeyManager>, None, Arc::clone(&ds));
    m.initialize(T0).await.unwrap();
    m.rotate(T0 + 12 * H).await.unwrap();
    assert!(km.get_key("JWT-Signer-A").await.unwrap().is_none() && km.get_key("JWT-Signer-B").await.unwrap().is_none());
    let bundle = ds.get_bundle(&td()).await.unwrap().unwrap();
    assert!(bundle.jwt_authorities.is_empty(), "{:?}", bundle.jwt_authorities);
    assert_eq!(bundle.x509_authorities.len(), 2);
    let id = SpiffeId::new("spiffe://example.org/w").unwrap();
    assert!(matches!(m.ca().mint_jwt_svid(&id, &["a".into()], 0, T0).await, Err(CaError::JwtDisabled)));
    assert_eq!(CaError::JwtDisabled.to_string(), "JWT functionality is disabled");
    // Ready without a JWT key; X.509 still works.
    assert!(m.ca().can_sign(T0 + 12 * H));
    let req = X509SvidRequest { id: &id, dns_names: &[], ttl: 0 };
    assert!(m.ca().mint_x509_svid(&leaf_key(), &req, T0 + 12 * H).await.is_ok());
}

/// Equal `ca_ttl` at both tiers: a downstream asking for more than the active CA has left is
/// signed by the prepared CA once that has been in the bundle for the grace, else capped.
#[tokio::test]
async fn downstream_ca_is_signed_by_the_prepared_ca_once_everyone_knows_it() {
    let ds = datastore().await;
    let mut cfg = config(24 * H);
    cfg.jwt_publish_grace = 5;
    let m = CaManager::new(cfg, Arc::new(MemoryKeyManager::new()), None, Arc::clone(&ds));
    m.initialize(T0).await.unwrap();
    let r1 = m.ca().x509_authority().unwrap();
    m.rotate(T0 + 12 * H).await.unwrap();
    let bundle = ds.get_bundle(&td()).await.unwrap().unwrap();
    let r2_der = bundle.x509_authorities.iter().find(|c| **c != r1.cert_der).unwrap().clone();
    let key = leaf_key();
    let subject = CaSubject::default();
    let mint = async |now: i64, ttl: i64| {
        let chain = m.ca().mint_downstream_ca(&key, &subject, ttl, now).await.unwrap().chain;
        assert_eq!(chain.len(), 1, "under a self-signed root the chain is the new CA alone");
        let (_, c) = X509Certificate::from_der(&chain[0]).unwrap();
        let by = |der: &[u8]| c.verify_signature(Some(X509Certificate::from_der(der).unwrap().1.public_key())).is_ok();
        (by(&r1.cert_der), by(&r2_der), c.validity().not_after.timestamp())
    };
    // Short request: the active CA covers it.
    assert_eq!(mint(T0 + 12 * H + 1, 4 * H).await, (true, false, T0 + 16 * H + 1));
    // The prepared CA was published 1s ago, less than the grace: capped at the active's expiry.
    assert_eq!(mint(T0 + 12 * H + 1, 24 * H).await, (true, false, T0 + 24 * H));
    // Published long enough ago: the prepared CA signs, capped at its own expiry.
    assert_eq!(mint(T0 + 13 * H, 24 * H).await, (false, true, T0 + 36 * H));
    assert_eq!(mint(T0 + 13 * H, 20 * H).await, (false, true, T0 + 33 * H));
    // Once it is active it simply signs.
    m.rotate(T0 + 20 * H).await.unwrap();
    assert_eq!(mint(T0 + 20 * H, 4 * H).await, (false, true, T0 + 24 * H));
}
