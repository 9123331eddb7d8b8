//! The datastore contract: what every [`Datastore`] must do, as one suite.
//!
//! Each backend's tests call [`run`] with a function that opens a fresh, empty datastore (every
//! section gets its own). SQLite runs it in memory, on a file, and with the other dialects'
//! code paths; a PostgreSQL or MySQL backend runs it against a server given by URL. Each check
//! is there because an implementation could plausibly get it wrong: a sequence number bumped on
//! a no-op, selectors compared unsorted, a delete that does not return the row, an event not
//! sent (or sent for nothing), two concurrent creators of one entry both winning.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use super::{AttestedNode, Change, ChangeReceiver, Datastore, DatastoreError, Entry, EntryFilter, Selector};
use crate::spiffe::federation::{ClientProfile, Relationship};
use crate::spiffe::{Bundle, JwtAuthority, SpiffeId, TrustDomain};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Runs every section of the contract, each on a datastore from `make`.
pub(crate) async fn run<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Datastore>>,
{
    bundles(make().await.as_ref()).await;
    bundle_pruning(make().await.as_ref()).await;
    taint_and_revoke(make().await.as_ref()).await;
    entries(make().await.as_ref()).await;
    entry_filters(make().await.as_ref()).await;
    entry_pruning(make().await.as_ref()).await;
    concurrent_creates_of_one_entry(make().await, 8).await;
    batch_creates(make().await.as_ref()).await;
    join_tokens(make().await.as_ref()).await;
    attested_nodes(make().await.as_ref()).await;
    ca_journal(make().await.as_ref()).await;
    federation_relationships(make().await.as_ref()).await;
    change_feed(make().await.as_ref()).await;
    cache_snapshot(make().await.as_ref()).await;
}

/// The entry cache's snapshot holds every entry and node, as the list calls return them (in
/// any order: the cache indexes them), every field of an entry included.
async fn cache_snapshot(ds: &dyn Datastore) {
    let (entries, nodes) = ds.cache_snapshot().await.unwrap();
    assert!(entries.is_empty() && nodes.is_empty());
    ds.create_entry(&entry("snap-2", "spiffe://example.org/s2", "spiffe://example.org/agent", &[("unix", "uid:2")])).await.unwrap();
    ds.create_entry(&full_entry("snap-1")).await.unwrap();
    ds.create_entry(&entry("snap-0", "spiffe://example.org/s0", "spiffe://example.org/agent", &[("unix", "uid:0")])).await.unwrap();
    ds.create_attested_node(&node("spiffe://example.org/spire/agent/snap")).await.unwrap();
    let (mut entries, nodes) = ds.cache_snapshot().await.unwrap();
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(entries, ds.list_entries(&EntryFilter::default()).await.unwrap());
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[1], ds.get_entry("snap-1").await.unwrap().unwrap());
    assert_eq!(entries[1].dns_names, ["a.example.org", "b.example.org"], "a field read back wrong");
    assert_eq!(nodes, ds.list_attested_nodes().await.unwrap());
    assert_eq!(nodes.len(), 1);
}

/// An entry with every field away from its default, each value distinct, so a column read into
/// the wrong field shows.
pub(crate) fn full_entry(entry_id: &str) -> Entry {
    Entry {
        x509_svid_ttl: 3601,
        jwt_svid_ttl: 302,
        federates_with: vec![TrustDomain::new("one.test").unwrap(), TrustDomain::new("two.test").unwrap()],
        admin: true,
        downstream: true,
        dns_names: vec!["a.example.org".into(), "b.example.org".into()],
        expires_at: 4_000_000_003,
        hint: "the \"full\" entry".into(),
        store_svid: true,
        disable_x509_svid_prefetch: true,
        jwt_svid_include_jti: true,
        ..entry(entry_id, "spiffe://example.org/full", "spiffe://example.org/agent", &[("unix", "uid:7"), ("k8s", "ns:with,comma")])
    }
}

/// A batch create answers per entry: the good ones are created, one similar to an existing
/// entry, one similar to an earlier entry of the same batch and one with a taken id fail
/// alone; one change event for the batch.
async fn batch_creates(ds: &dyn Datastore) {
    ds.create_entry(&entry("old", "spiffe://example.org/old", "spiffe://example.org/agent", &[("unix", "uid:1")])).await.unwrap();
    let mut rx = ds.watch_changes();
    let batch = [
        entry("b-1", "spiffe://example.org/b1", "spiffe://example.org/agent", &[("unix", "uid:2"), ("unix", "gid:2")]),
        entry("b-2", "spiffe://example.org/old", "spiffe://example.org/agent", &[("unix", "uid:1")]),
        entry("b-3", "spiffe://example.org/b1", "spiffe://example.org/agent", &[("unix", "gid:2"), ("unix", "uid:2")]),
        entry("old", "spiffe://example.org/b4", "spiffe://example.org/agent", &[("unix", "uid:4")]),
        entry("b-5", "spiffe://example.org/b5", "spiffe://example.org/agent", &[("unix", "uid:5")]),
        entry("b-5", "spiffe://example.org/b6", "spiffe://example.org/agent", &[("unix", "uid:6")]),
    ];
    let results = ds.create_entries(&batch).await;
    let shape: Vec<Result<&str, &str>> = results
        .iter()
        .map(|r| match r {
            Ok(e) => Ok(e.id.as_str()),
            Err(DatastoreError::AlreadyExists { what }) => Err(*what),
            Err(e) => panic!("unexpected error {e}"),
        })
        .collect();
    assert_eq!(shape, [Ok("b-1"), Err("similar entry"), Err("similar entry"), Err("entry id"), Ok("b-5"), Err("entry id")]);
    let created = results[0].as_ref().unwrap();
    assert_eq!(created.revision_number, 0);
    assert_eq!(created.selectors, ds.get_entry("b-1").await.unwrap().unwrap().selectors, "selectors come back sorted, as stored");
    assert_eq!(entry_ids(ds, EntryFilter::default()).await, ["b-1", "b-5", "old"]);
    let event = tokio::time::timeout(Duration::from_secs(10), rx.recv_event()).await.expect("a batch create announces").unwrap();
    assert_eq!(event.change, Change::Entries);
    let mut ids = event.ids.as_deref().expect("the event names the entries").to_vec();
    ids.sort();
    assert_eq!(ids, ["b-1", "b-5"], "the event names the entries created, and only those");
    assert!(rx.try_recv().is_err(), "one event for the batch");
    assert!(ds.create_entries(&[]).await.is_empty());

    // Batch updates and deletes: per-entry answers, one event each.
    let mut b1 = ds.get_entry("b-1").await.unwrap().unwrap();
    b1.hint = "updated".into();
    let ghost = entry("ghost", "spiffe://example.org/g", "spiffe://example.org/agent", &[("unix", "uid:9")]);
    let updated = ds.update_entries(&[b1.clone(), ghost]).await;
    assert_eq!(updated[0].as_ref().unwrap().revision_number, 1);
    assert!(matches!(updated[1], Err(DatastoreError::NotFound(_))), "{:?}", updated[1]);
    assert_eq!(ds.get_entry("b-1").await.unwrap().unwrap().hint, "updated");
    assert_eq!(next_change(&mut rx, "a batch update").await, Change::Entries);
    assert!(rx.try_recv().is_err(), "one event for the batch");
    let deleted = ds.delete_entries(&["b-5".into(), "ghost".into(), "old".into()]).await;
    assert_eq!(deleted[0].as_ref().unwrap().spiffe_id.as_str(), "spiffe://example.org/b5", "the deleted entry is returned");
    assert!(matches!(deleted[1], Err(DatastoreError::NotFound(_))), "{:?}", deleted[1]);
    assert!(deleted[2].is_ok());
    assert_eq!(entry_ids(ds, EntryFilter::default()).await, ["b-1"]);
    assert_eq!(next_change(&mut rx, "a batch delete").await, Change::Entries);
    assert!(rx.try_recv().is_err(), "one event for the batch");
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn id(uri: &str) -> SpiffeId {
    SpiffeId::new(uri).unwrap()
}

fn selectors(pairs: &[(&str, &str)]) -> Vec<Selector> {
    pairs.iter().map(|(k, v)| Selector { kind: (*k).into(), value: (*v).into() }).collect()
}

/// An entry with defaults for everything but its ids and selectors.
pub(crate) fn entry(entry_id: &str, spiffe_id: &str, parent_id: &str, sel: &[(&str, &str)]) -> Entry {
    Entry {
        id: entry_id.into(),
        spiffe_id: id(spiffe_id),
        parent_id: id(parent_id),
        selectors: selectors(sel),
        x509_svid_ttl: 0,
        jwt_svid_ttl: 0,
        federates_with: vec![],
        admin: false,
        downstream: false,
        dns_names: vec![],
        expires_at: 0,
        hint: String::new(),
        store_svid: false,
        disable_x509_svid_prefetch: false,
        jwt_svid_include_jti: false,
        revision_number: 0,
        created_at: 0,
    }
}

fn node(spiffe_id: &str) -> AttestedNode {
    AttestedNode {
        spiffe_id: id(spiffe_id),
        attestation_type: "join_token".into(),
        cert_serial_number: "1".into(),
        cert_not_after: 1_000,
        new_cert_serial_number: String::new(),
        new_cert_not_after: 0,
        can_reattest: false,
        selectors: vec![],
        created_at: 0,
        agent_version: String::new(),
    }
}

fn jwt_key(key_id: &str, key: u8, expires_at: i64) -> JwtAuthority {
    JwtAuthority { key_id: key_id.into(), public_key: vec![key; 4], expires_at, tainted: false }
}

/// A self-signed root that expires at `not_after` (unix seconds).
fn root_expiring(not_after: i64) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.not_before = time::OffsetDateTime::from_unix_timestamp(not_after - 3_600).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

/// A CA certificate (with a subject key ID) for the taint checks.
fn ca_root() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().der().to_vec()
}

/// SPIRE's `TaintX509CA`, `RevokeX509CA`, `TaintJWTKey`, `RevokeJWTKey`: found by subject key
/// ID or kid; taint twice, revoke untainted and unknown ids are refused with SPIRE's words and
/// change nothing; each success bumps the sequence number once; taint is kept by later
/// appends.
async fn taint_and_revoke(ds: &dyn Datastore) {
    let t = td("taint.example");
    assert!(matches!(ds.taint_x509_authority(&t, "00").await, Err(DatastoreError::NotFound(_))), "no bundle");
    let (r1, r2) = (ca_root(), ca_root());
    let (k1, k2) = (jwt_key("k1", 1, 0), jwt_key("k2", 2, 0));
    let b = ds.append_bundle(&t, &[r1.clone(), r2.clone()], &[k1.clone(), k2.clone()]).await.unwrap();
    let ski1 = crate::spiffe::x509::subject_key_id_hex(&r1).expect("a CA certificate has a subject key ID");
    let ski2 = crate::spiffe::x509::subject_key_id_hex(&r2).unwrap();
    let seq = b.sequence_number;
    let msg = |r: Result<Bundle, DatastoreError>| r.unwrap_err().to_string();

    assert_eq!(msg(ds.taint_x509_authority(&t, "0badc0de").await), "no ca found with provided subject key ID");
    assert_eq!(msg(ds.revoke_x509_authority(&t, &ski1).await), "it is not possible to revoke an untainted root CA");
    let tainted = ds.taint_x509_authority(&t, &ski1).await.unwrap();
    assert_eq!((tainted.sequence_number, tainted.tainted_x509.clone()), (seq + 1, vec![r1.clone()]));
    assert_eq!(ds.get_bundle(&t).await.unwrap().as_ref(), Some(&tainted), "the taint is stored");
    assert_eq!(msg(ds.taint_x509_authority(&t, &ski1).await), "root CA is already tainted");
    // An append of something else keeps the taint.
    let appended = ds.append_bundle(&t, &[], &[jwt_key("k3", 3, 0)]).await.unwrap();
    assert!(appended.is_tainted_x509(&r1) && !appended.is_tainted_x509(&r2));
    assert_eq!(msg(ds.revoke_x509_authority(&t, "0badc0de").await), "no root CA found with provided subject key ID");
    assert_eq!(msg(ds.revoke_x509_authority(&t, &ski2).await), "it is not possible to revoke an untainted root CA");
    let revoked = ds.revoke_x509_authority(&t, &ski1).await.unwrap();
    assert_eq!(revoked.sequence_number, appended.sequence_number + 1);
    assert_eq!((revoked.x509_authorities.clone(), revoked.tainted_x509.clone()), (vec![r2.clone()], vec![]));

    assert_eq!(msg(ds.taint_jwt_authority(&t, "nope").await), "no JWT Key found with provided key ID");
    assert_eq!(msg(ds.revoke_jwt_authority(&t, "k1").await), "it is not possible to revoke an untainted key");
    let tainted = ds.taint_jwt_authority(&t, "k1").await.unwrap();
    assert_eq!(tainted.sequence_number, revoked.sequence_number + 1);
    assert!(tainted.jwt_authority("k1").unwrap().tainted && !tainted.jwt_authority("k2").unwrap().tainted);
    assert_eq!(msg(ds.taint_jwt_authority(&t, "k1").await), "key is already tainted");
    assert_eq!(ds.get_bundle(&t).await.unwrap().as_ref(), Some(&tainted), "refusals change nothing");
    let revoked = ds.revoke_jwt_authority(&t, "k1").await.unwrap();
    assert_eq!(revoked.jwt_authorities.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(), ["k2", "k3"]);
    assert_eq!(revoked.sequence_number, tainted.sequence_number + 1);
    assert_eq!(msg(ds.revoke_jwt_authority(&t, "k1").await), "no JWT Key found with provided key ID");
}

async fn entry_ids(ds: &dyn Datastore, filter: EntryFilter) -> Vec<String> {
    ds.list_entries(&filter).await.unwrap().into_iter().map(|e| e.id).collect()
}

fn already_exists<T: std::fmt::Debug>(r: &Result<T, DatastoreError>) -> bool {
    matches!(r, Err(DatastoreError::AlreadyExists { .. }))
}

fn not_found<T: std::fmt::Debug>(r: &Result<T, DatastoreError>) -> bool {
    matches!(r, Err(DatastoreError::NotFound(_)))
}

/// Appending adds only what is missing and bumps the sequence number only then; set replaces
/// and bumps only on a content change; create refuses an existing bundle; delete and list.
async fn bundles(ds: &dyn Datastore) {
    let a = td("a.example");
    assert_eq!(ds.get_bundle(&a).await.unwrap(), None);
    assert!(ds.list_bundles().await.unwrap().is_empty());
    let (r1, r2) = (vec![1u8, 2, 3], vec![4u8, 5, 6]);
    let k1 = jwt_key("k1", 1, 0);

    let b1 = ds.append_bundle(&a, std::slice::from_ref(&r1), std::slice::from_ref(&k1)).await.unwrap();
    assert_eq!(b1.sequence_number, 1, "creating a bundle by appending is a change");
    assert_eq!((b1.x509_authorities.clone(), b1.jwt_authorities.clone()), (vec![r1.clone()], vec![k1.clone()]));
    assert_eq!(ds.get_bundle(&a).await.unwrap().as_ref(), Some(&b1), "append returns what it stored");

    let same = ds.append_bundle(&a, std::slice::from_ref(&r1), std::slice::from_ref(&k1)).await.unwrap();
    assert_eq!(same, b1, "appending what is already there changes nothing, not even the sequence number");

    // Same key id with another key is a different key; r1 again is not repeated.
    let k1_other = jwt_key("k1", 9, 500);
    let b2 = ds.append_bundle(&a, &[r1.clone(), r2.clone()], std::slice::from_ref(&k1_other)).await.unwrap();
    assert_eq!(b2.sequence_number, 2);
    assert_eq!(b2.x509_authorities, [r1.clone(), r2.clone()]);
    assert_eq!(b2.jwt_authorities, [k1.clone(), k1_other.clone()], "a JWT key is present only if both its id and key match");
    assert_eq!(ds.get_bundle(&a).await.unwrap().as_ref(), Some(&b2));

    let mut replacement = b2.clone();
    replacement.x509_authorities = vec![r2.clone()];
    replacement.jwt_authorities = vec![];
    replacement.refresh_hint = Some(300);
    replacement.sequence_number = 99;
    let b3 = ds.set_bundle(&replacement).await.unwrap();
    assert_eq!(b3.sequence_number, 3, "set bumps the stored sequence number by one, whatever it was given");
    assert_eq!((b3.x509_authorities.clone(), b3.jwt_authorities.clone(), b3.refresh_hint), (vec![r2.clone()], vec![], Some(300)));
    assert_eq!(ds.get_bundle(&a).await.unwrap().as_ref(), Some(&b3));
    assert_eq!(ds.set_bundle(&replacement).await.unwrap().sequence_number, 3, "setting the same content is not a change");
    replacement.refresh_hint = Some(600);
    assert_eq!(ds.set_bundle(&replacement).await.unwrap().sequence_number, 4, "the refresh hint is part of the content");

    // The same key appended with another expiry: one key, the later expiry, a change.
    let e = td("e.example");
    let k = jwt_key("ke", 7, 100);
    ds.append_bundle(&e, &[vec![7u8]], std::slice::from_ref(&k)).await.unwrap();
    let longer = JwtAuthority { expires_at: 200, ..k.clone() };
    let b = ds.append_bundle(&e, &[], std::slice::from_ref(&longer)).await.unwrap();
    assert_eq!(b.jwt_authorities, std::slice::from_ref(&longer), "a key appended again with another expiry is neither dropped nor doubled");
    assert_eq!(b.sequence_number, 2);
    ds.delete_bundle(&e).await.unwrap();

    let c = td("c.example");
    let set_new = ds.set_bundle(&Bundle { trust_domain: c.clone(), ..replacement.clone() }).await.unwrap();
    assert_eq!((set_new.trust_domain.clone(), set_new.sequence_number), (c.clone(), 1), "set creates a missing bundle");

    let b = td("b.example");
    let new = Bundle {
        trust_domain: b.clone(),
        x509_authorities: vec![r1.clone()],
        jwt_authorities: vec![k1.clone()],
        refresh_hint: None,
        sequence_number: 0,
        tainted_x509: vec![],
    };
    let created = ds.create_bundle(&new).await.unwrap();
    assert_eq!(created, Bundle { sequence_number: 1, ..new.clone() });
    let other = Bundle { x509_authorities: vec![r2.clone()], ..new.clone() };
    assert!(already_exists(&ds.create_bundle(&other).await), "create refuses an existing bundle");
    assert_eq!(ds.get_bundle(&b).await.unwrap().as_ref(), Some(&created), "a refused create leaves the bundle as it was");

    let listed = ds.list_bundles().await.unwrap();
    assert_eq!(listed.iter().map(|b| b.trust_domain.as_str()).collect::<Vec<_>>(), ["a.example", "b.example", "c.example"]);
    assert_eq!(listed[1], created, "list returns the stored bundles");

    ds.delete_bundle(&b).await.unwrap();
    assert_eq!(ds.get_bundle(&b).await.unwrap(), None);
    assert!(not_found(&ds.delete_bundle(&b).await));
    assert_eq!(ds.list_bundles().await.unwrap().len(), 2);
}

/// Pruning drops roots and JWT keys that expired strictly before the cut-off, never the last
/// root, and bumps the sequence number only when something went.
async fn bundle_pruning(ds: &dyn Datastore) {
    let t = td("example.org");
    let (old_root, new_root) = (root_expiring(1_000), root_expiring(5_000));
    let (old_key, new_key, forever_key) = (jwt_key("old", 1, 1_000), jwt_key("new", 2, 5_000), jwt_key("forever", 3, 0));
    ds.append_bundle(&t, &[old_root.clone(), new_root.clone()], &[old_key, new_key.clone(), forever_key.clone()]).await.unwrap();

    assert!(!ds.prune_bundle(&t, 1_000).await.unwrap(), "something expiring at the cut-off itself stays");
    assert_eq!(ds.get_bundle(&t).await.unwrap().unwrap().sequence_number, 1, "a prune that removed nothing is not a change");

    assert!(ds.prune_bundle(&t, 1_001).await.unwrap());
    let b = ds.get_bundle(&t).await.unwrap().unwrap();
    assert_eq!(b.x509_authorities, std::slice::from_ref(&new_root));
    assert_eq!(b.jwt_authorities, [new_key, forever_key.clone()], "keys without an expiry never expire");
    assert_eq!(b.sequence_number, 2);

    assert!(ds.prune_bundle(&t, 6_000).await.unwrap(), "the expired JWT key goes");
    let b = ds.get_bundle(&t).await.unwrap().unwrap();
    assert_eq!(b.x509_authorities, [new_root], "the last root stays even once expired: an empty bundle trusts nothing");
    assert_eq!(b.jwt_authorities, [forever_key]);
    assert_eq!(b.sequence_number, 3);
    assert!(!ds.prune_bundle(&t, 6_000).await.unwrap());
    assert_eq!(ds.get_bundle(&t).await.unwrap().unwrap().sequence_number, 3);
}

/// Create (revision 0, creation time, sorted selectors, every field kept), the similar-entry
/// rule, duplicate ids, get, update (revision + 1, creation time kept), delete, count.
async fn entries(ds: &dyn Datastore) {
    let agent = "spiffe://example.org/spire/agent/a";
    let mut e = entry("e1", "spiffe://example.org/w", agent, &[("unix", "uid:2"), ("unix", "uid:1"), ("unix", "uid:1")]);
    e.x509_svid_ttl = 300;
    e.jwt_svid_ttl = 60;
    e.federates_with = vec![td("other.org"), td("third.org")];
    e.admin = true;
    e.dns_names = vec!["b.example".into(), "a.example".into()];
    e.expires_at = 4_000_000_000;
    e.hint = "hint".into();
    e.store_svid = true;
    e.disable_x509_svid_prefetch = true;
    e.jwt_svid_include_jti = true;
    e.revision_number = 7;
    e.created_at = 1;

    let before = crate::now_unix();
    let created = ds.create_entry(&e).await.unwrap();
    assert_eq!(created.revision_number, 0, "a new entry starts at revision 0, whatever it was given");
    assert!((before..=crate::now_unix()).contains(&created.created_at), "creation time is now, not what was given");
    assert_eq!(created.selectors, selectors(&[("unix", "uid:1"), ("unix", "uid:2")]), "selectors sorted, without duplicates");
    let expected = Entry { revision_number: 0, created_at: created.created_at, selectors: created.selectors.clone(), ..e.clone() };
    assert_eq!(created, expected, "every other field as given (DNS names in their order)");
    assert_eq!(ds.get_entry("e1").await.unwrap().as_ref(), Some(&created), "stored as returned");
    assert_eq!(ds.get_entry("e0").await.unwrap(), None);

    // Similar: same SPIFFE ID, parent and selector set (in any order), whatever else differs.
    let mut similar = entry("e2", "spiffe://example.org/w", agent, &[("unix", "uid:1"), ("unix", "uid:2")]);
    similar.hint = "other".into();
    assert_eq!(ds.find_similar_entry(&similar).await.unwrap().as_ref(), Some(&created));
    assert!(already_exists(&ds.create_entry(&similar).await));
    assert_eq!(ds.get_entry("e2").await.unwrap(), None, "a refused create stores nothing");
    let not_similar = [
        ("another SPIFFE ID", entry("v1", "spiffe://example.org/w2", agent, &[("unix", "uid:1"), ("unix", "uid:2")])),
        (
            "another parent",
            entry("v2", "spiffe://example.org/w", "spiffe://example.org/spire/agent/b", &[("unix", "uid:1"), ("unix", "uid:2")]),
        ),
        (
            "a superset of the selectors",
            entry("v3", "spiffe://example.org/w", agent, &[("unix", "uid:1"), ("unix", "uid:2"), ("unix", "gid:0")]),
        ),
        ("a subset of the selectors", entry("v4", "spiffe://example.org/w", agent, &[("unix", "uid:1")])),
    ];
    for (what, v) in &not_similar {
        assert_eq!(ds.find_similar_entry(v).await.unwrap(), None, "{what} is not similar");
        ds.create_entry(v).await.unwrap_or_else(|err| panic!("{what}: {err}"));
    }
    let dup_id = entry("e1", "spiffe://example.org/unrelated", agent, &[("unix", "uid:9")]);
    assert!(already_exists(&ds.create_entry(&dup_id).await), "entry ids are unique");
    assert_eq!(ds.count_entries().await.unwrap(), 5);

    // Update replaces every field but the creation time, and counts revisions.
    let mut changed = entry("e1", "spiffe://example.org/w3", "spiffe://example.org/spire/agent/c", &[("unix", "uid:3"), ("k8s", "ns:x")]);
    changed.x509_svid_ttl = 600;
    changed.jwt_svid_ttl = 120;
    changed.federates_with = vec![td("fourth.org")];
    changed.downstream = true;
    changed.dns_names = vec!["c.example".into()];
    changed.expires_at = 0;
    changed.revision_number = 40;
    changed.created_at = 5;
    let updated = ds.update_entry(&changed).await.unwrap();
    let expected = Entry {
        revision_number: 1,
        created_at: created.created_at,
        selectors: selectors(&[("k8s", "ns:x"), ("unix", "uid:3")]),
        ..changed.clone()
    };
    assert_eq!(updated, expected, "update: revision + 1, creation time kept, selectors sorted, the rest replaced");
    assert_eq!(ds.get_entry("e1").await.unwrap().as_ref(), Some(&updated));
    let again = ds.update_entry(&updated).await.unwrap();
    assert_eq!(again.revision_number, 2, "every update counts, even one that changes nothing else");
    assert!(not_found(&ds.update_entry(&entry("e0", "spiffe://example.org/x", agent, &[])).await));
    assert_eq!(ds.get_entry("e0").await.unwrap(), None, "updating a missing entry does not create it");

    let deleted = ds.delete_entry("e1").await.unwrap();
    assert_eq!(deleted, again, "delete returns the entry as it was");
    assert_eq!(ds.get_entry("e1").await.unwrap(), None);
    assert!(not_found(&ds.delete_entry("e1").await));
    assert_eq!(ds.count_entries().await.unwrap(), 4);
    assert_eq!(entry_ids(ds, EntryFilter::default()).await, ["v1", "v2", "v3", "v4"], "other entries untouched");
}

/// Each filter alone, combined, and on nothing; results ordered by id.
async fn entry_filters(ds: &dyn Datastore) {
    let (a, b) = ("spiffe://example.org/a", "spiffe://example.org/b");
    let (p1, p2) = ("spiffe://example.org/spire/agent/1", "spiffe://example.org/spire/agent/2");
    let mut f4 = entry("f4", b, p1, &[("unix", "uid:2")]);
    f4.downstream = true;
    let mut f2 = entry("f2", a, p2, &[("unix", "uid:1")]);
    f2.downstream = true;
    // Created out of id order, so that "ordered by id" is not an accident of insertion order.
    for e in [entry("f3", b, p1, &[("unix", "uid:2"), ("unix", "uid:1")]), f4, entry("f1", a, p1, &[("unix", "uid:1")]), f2] {
        ds.create_entry(&e).await.unwrap();
    }
    let cases: Vec<(&str, EntryFilter, Vec<&str>)> = vec![
        ("no filter", EntryFilter::default(), vec!["f1", "f2", "f3", "f4"]),
        ("SPIFFE ID", EntryFilter { spiffe_id: Some(id(a)), ..Default::default() }, vec!["f1", "f2"]),
        ("parent", EntryFilter { parent_id: Some(id(p1)), ..Default::default() }, vec!["f1", "f3", "f4"]),
        (
            "exact selectors (not a superset)",
            EntryFilter { selectors_exact: Some(selectors(&[("unix", "uid:1")])), ..Default::default() },
            vec!["f1", "f2"],
        ),
        (
            "exact selectors in another order",
            EntryFilter { selectors_exact: Some(selectors(&[("unix", "uid:2"), ("unix", "uid:1")])), ..Default::default() },
            vec!["f3"],
        ),
        ("downstream", EntryFilter { downstream: Some(true), ..Default::default() }, vec!["f2", "f4"]),
        ("not downstream", EntryFilter { downstream: Some(false), ..Default::default() }, vec!["f1", "f3"]),
        (
            "all combined",
            EntryFilter {
                spiffe_id: Some(id(b)),
                parent_id: Some(id(p1)),
                selectors_exact: Some(selectors(&[("unix", "uid:2")])),
                downstream: Some(true),
            },
            vec!["f4"],
        ),
        (
            "matching nothing",
            EntryFilter { spiffe_id: Some(id(a)), downstream: Some(true), parent_id: Some(id(p1)), ..Default::default() },
            vec![],
        ),
    ];
    for (what, filter, want) in cases {
        assert_eq!(entry_ids(ds, filter).await, want, "filter: {what}");
    }
}

/// SPIRE's rule: entries with `expires_at != 0 && expires_at < cut-off` go, and are returned.
async fn entry_pruning(ds: &dyn Datastore) {
    let agent = "spiffe://example.org/spire/agent/a";
    let expiring =
        |name: &str, at: i64| Entry { expires_at: at, ..entry(name, &format!("spiffe://example.org/{name}"), agent, &[("unix", "uid:1")]) };
    let past = ds.create_entry(&expiring("past", 1)).await.unwrap();
    for e in [expiring("edge", 1_000), expiring("future", 2_000), expiring("never", 0)] {
        ds.create_entry(&e).await.unwrap();
    }
    assert_eq!(ds.prune_entries(1_000).await.unwrap(), [past], "the pruned entry is returned whole");
    assert_eq!(entry_ids(ds, EntryFilter::default()).await, ["edge", "future", "never"]);
    let mut pruned: Vec<String> = ds.prune_entries(2_001).await.unwrap().into_iter().map(|e| e.id).collect();
    pruned.sort();
    assert_eq!(pruned, ["edge", "future"]);
    assert_eq!(entry_ids(ds, EntryFilter::default()).await, ["never"], "expires_at = 0 never expires");
    assert!(ds.prune_entries(i64::MAX).await.unwrap().is_empty());
    assert_eq!(ds.count_entries().await.unwrap(), 1);
}

/// `n` creators of one entry (same SPIFFE ID, parent and selector set, distinct ids) at once:
/// exactly one wins, the others are told it already exists (not a database error), and one row
/// is stored. Then `n` creators of different entries at once all win.
pub(crate) async fn concurrent_creates_of_one_entry(ds: Arc<dyn Datastore>, n: usize) {
    let agent = "spiffe://example.org/spire/agent/a";
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (ds, start) = (Arc::clone(&ds), Arc::clone(&start));
        // The selector order differs between creators: the set is what counts.
        let sel: &[(&str, &str)] =
            if i % 2 == 0 { &[("unix", "uid:1"), ("unix", "gid:1")] } else { &[("unix", "gid:1"), ("unix", "uid:1")] };
        let e = entry(&format!("race-{i:02}"), "spiffe://example.org/raced", agent, sel);
        tasks.spawn(async move {
            start.wait().await;
            ds.create_entry(&e).await
        });
    }
    let results = tasks.join_all().await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    let refused = results.iter().filter(|r| already_exists(r)).count();
    assert_eq!((won, refused), (1, n - 1), "one creator wins, the rest get AlreadyExists: {results:?}");
    assert_eq!(ds.count_entries().await.unwrap(), 1);

    let start = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (ds, start) = (Arc::clone(&ds), Arc::clone(&start));
        let e = entry(&format!("distinct-{i:02}"), &format!("spiffe://example.org/distinct/{i}"), agent, &[("unix", "uid:1")]);
        tasks.spawn(async move {
            start.wait().await;
            ds.create_entry(&e).await
        });
    }
    let results = tasks.join_all().await;
    assert!(results.iter().all(Result::is_ok), "concurrent creators of different entries all succeed: {results:?}");
    assert_eq!(ds.count_entries().await.unwrap(), i64::try_from(n + 1).unwrap());
}

/// Single use, keyed by the token itself (not by what is stored for it), unique.
async fn join_tokens(ds: &dyn Datastore) {
    ds.create_join_token("token-a", 1_234).await.unwrap();
    ds.create_join_token("token-b", 5_678).await.unwrap();
    assert!(already_exists(&ds.create_join_token("token-a", 1).await));
    let stored_form = {
        use sha2::Digest as _;
        crate::text::hex(&sha2::Sha256::digest(b"token-a"))
    };
    assert_eq!(ds.take_join_token(&stored_form).await.unwrap(), None, "the stored hash is not itself a token");
    assert_eq!(ds.take_join_token("token-c").await.unwrap(), None);
    assert_eq!(ds.take_join_token("token-a").await.unwrap(), Some(1_234), "the expiry given at creation (not the refused duplicate's)");
    assert_eq!(ds.take_join_token("token-a").await.unwrap(), None, "single use");
    assert_eq!(ds.take_join_token("token-b").await.unwrap(), Some(5_678), "taking one token leaves the others");
}

/// Create (unique, creation time set, selectors sorted), get, list by SPIFFE ID, update (every
/// field but the creation time), delete returning the node.
async fn attested_nodes(ds: &dyn Datastore) {
    let (n1, n2) = ("spiffe://example.org/spire/agent/1", "spiffe://example.org/spire/agent/2");
    assert_eq!(ds.get_attested_node(&id(n1)).await.unwrap(), None);
    assert!(ds.list_attested_nodes().await.unwrap().is_empty());

    let before = crate::now_unix();
    let mut first = node(n1);
    first.selectors = selectors(&[("x509pop", "cn:b"), ("x509pop", "cn:a")]);
    first.created_at = 7;
    ds.create_attested_node(&node(n2)).await.unwrap();
    ds.create_attested_node(&first).await.unwrap();
    assert!(already_exists(&ds.create_attested_node(&node(n1)).await));

    let got = ds.get_attested_node(&id(n1)).await.unwrap().unwrap();
    assert!((before..=crate::now_unix()).contains(&got.created_at), "creation time is now, not what was given");
    let expected =
        AttestedNode { created_at: got.created_at, selectors: selectors(&[("x509pop", "cn:a"), ("x509pop", "cn:b")]), ..first.clone() };
    assert_eq!(got, expected);
    let listed: Vec<String> = ds.list_attested_nodes().await.unwrap().into_iter().map(|n| n.spiffe_id.to_string()).collect();
    assert_eq!(listed, [n1, n2], "listed by SPIFFE ID");

    let changed = AttestedNode {
        spiffe_id: id(n1),
        attestation_type: "x509pop".into(),
        cert_serial_number: "22".into(),
        cert_not_after: 2_000,
        new_cert_serial_number: "23".into(),
        new_cert_not_after: 3_000,
        can_reattest: true,
        selectors: selectors(&[("x509pop", "cn:c")]),
        created_at: 1,
        agent_version: "1.15.0".into(),
    };
    ds.update_attested_node(&changed).await.unwrap();
    let got = ds.get_attested_node(&id(n1)).await.unwrap().unwrap();
    assert_eq!(got, AttestedNode { created_at: expected.created_at, ..changed.clone() }, "update replaces all but the creation time");
    assert_eq!(ds.get_attested_node(&id(n2)).await.unwrap().unwrap().cert_serial_number, "1", "other nodes untouched");
    assert!(not_found(&ds.update_attested_node(&node("spiffe://example.org/spire/agent/3")).await));
    assert_eq!(ds.get_attested_node(&id("spiffe://example.org/spire/agent/3")).await.unwrap(), None, "update does not create");

    assert_eq!(ds.delete_attested_node(&id(n1)).await.unwrap(), got, "delete returns the node as it was");
    assert_eq!(ds.get_attested_node(&id(n1)).await.unwrap(), None);
    assert!(not_found(&ds.delete_attested_node(&id(n1)).await));
    assert_eq!(ds.list_attested_nodes().await.unwrap().len(), 1);
}

/// One journal per server key, overwritten in place.
async fn ca_journal(ds: &dyn Datastore) {
    assert_eq!(ds.get_ca_journal("s1").await.unwrap(), None);
    ds.set_ca_journal("s1", "one").await.unwrap();
    ds.set_ca_journal("s2", "other").await.unwrap();
    assert_eq!(ds.get_ca_journal("s1").await.unwrap().as_deref(), Some("one"));
    ds.set_ca_journal("s1", "two").await.unwrap();
    assert_eq!(ds.get_ca_journal("s1").await.unwrap().as_deref(), Some("two"));
    assert_eq!(ds.get_ca_journal("s2").await.unwrap().as_deref(), Some("other"), "keys are independent");
}

/// The next change on `rx`, waiting a while: a feed shared between servers may deliver late.
async fn next_change(rx: &mut ChangeReceiver, after: &str) -> Change {
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("after {after}: {e}"),
        Err(_) => panic!("after {after}: no change announced"),
    }
}

/// Each write announces its kind of change, after the write; no-ops, failed writes, reads,
/// join tokens and the CA journal announce nothing. "Nothing" is checked by making a write of
/// another kind next and seeing that its event is the next one, which also holds for a feed
/// that delivers late.
async fn change_feed(ds: &dyn Datastore) {
    let mut rx = ds.watch_changes();
    let agent = "spiffe://example.org/spire/agent/a";
    let t = td("example.org");
    let e = entry("c1", "spiffe://example.org/w", agent, &[("unix", "uid:1")]);

    ds.create_entry(&e).await.unwrap();
    assert_eq!(next_change(&mut rx, "create_entry").await, Change::Entries);
    // The subscriber can read what the event announced.
    assert!(ds.get_entry("c1").await.unwrap().is_some());
    ds.update_entry(&e).await.unwrap();
    assert_eq!(next_change(&mut rx, "update_entry").await, Change::Entries);
    ds.create_attested_node(&node(agent)).await.unwrap();
    assert_eq!(next_change(&mut rx, "create_attested_node").await, Change::Nodes);
    ds.update_attested_node(&node(agent)).await.unwrap();
    assert_eq!(next_change(&mut rx, "update_attested_node").await, Change::Nodes);
    ds.append_bundle(&t, &[vec![1]], &[]).await.unwrap();
    assert_eq!(next_change(&mut rx, "append_bundle").await, Change::Bundle);

    // Silent: no-ops, refusals, reads, tokens, journal.
    ds.append_bundle(&t, &[vec![1]], &[]).await.unwrap();
    let same = ds.get_bundle(&t).await.unwrap().unwrap();
    ds.set_bundle(&same).await.unwrap();
    ds.prune_bundle(&t, 0).await.unwrap();
    assert!(already_exists(&ds.create_entry(&Entry { id: "c2".into(), ..e.clone() }).await));
    assert!(not_found(&ds.update_entry(&entry("c0", "spiffe://example.org/x", agent, &[])).await));
    assert!(not_found(&ds.delete_entry("c0").await));
    assert!(ds.prune_entries(i64::MAX).await.unwrap().is_empty());
    assert!(already_exists(&ds.create_attested_node(&node(agent)).await));
    assert!(not_found(&ds.delete_attested_node(&id("spiffe://example.org/spire/agent/zz")).await));
    ds.create_join_token("t", 1).await.unwrap();
    ds.take_join_token("t").await.unwrap();
    ds.set_ca_journal("s", "j").await.unwrap();
    ds.list_entries(&EntryFilter::default()).await.unwrap();
    ds.delete_attested_node(&id(agent)).await.unwrap();
    assert_eq!(next_change(&mut rx, "the silent calls, then delete_attested_node").await, Change::Nodes);

    let mut late = ds.watch_changes();
    ds.set_bundle(&Bundle { refresh_hint: Some(60), ..same.clone() }).await.unwrap();
    assert_eq!(next_change(&mut rx, "set_bundle").await, Change::Bundle);
    assert_eq!(next_change(&mut late, "set_bundle").await, Change::Bundle, "a later subscriber gets what follows");
    ds.delete_bundle(&t).await.unwrap();
    assert_eq!(next_change(&mut rx, "delete_bundle").await, Change::Bundle);
    ds.delete_entry("c1").await.unwrap();
    assert_eq!(next_change(&mut rx, "delete_entry").await, Change::Entries);
    ds.create_entry(&Entry { expires_at: 5, ..e.clone() }).await.unwrap();
    assert_eq!(next_change(&mut rx, "create_entry").await, Change::Entries);
    assert_eq!(ds.prune_entries(6).await.unwrap().len(), 1);
    assert_eq!(next_change(&mut rx, "prune_entries").await, Change::Entries);
    assert_eq!(next_change(&mut late, "the same writes").await, Change::Bundle, "every subscriber gets every change");
}

/// Relationships are created once, read back as written (both profiles), replaced whole by an
/// update, and deleted without their bundle; a bundle given with a create or an update is
/// stored in the same write, and a bundle of another trust domain refuses the whole write.
async fn federation_relationships(ds: &dyn Datastore) {
    let a = td("a.example");
    let web =
        Relationship { trust_domain: a.clone(), bundle_endpoint_url: "https://a.example:8443/".into(), profile: ClientProfile::HttpsWeb };
    let spiffe = Relationship {
        trust_domain: td("b.example"),
        bundle_endpoint_url: "https://b.example/bundle".into(),
        profile: ClientProfile::HttpsSpiffe { endpoint_spiffe_id: id("spiffe://b.example/spire/server") },
    };
    assert_eq!(ds.get_federation_relationship(&a).await.unwrap(), None);
    assert!(ds.list_federation_relationships().await.unwrap().is_empty());

    let mut rx = ds.watch_changes();
    assert_eq!(ds.create_federation_relationship(&spiffe, None).await.unwrap(), spiffe);
    assert_eq!(next_change(&mut rx, "create_federation_relationship").await, Change::Relationships);
    assert_eq!(ds.get_bundle(&spiffe.trust_domain).await.unwrap(), None, "no bundle given, none stored");
    let bundle = Bundle { x509_authorities: vec![vec![7; 8]], ..Bundle::new(a.clone()) };
    ds.create_federation_relationship(&web, Some(&bundle)).await.unwrap();
    assert_eq!(ds.get_bundle(&a).await.unwrap().map(|b| b.x509_authorities), Some(vec![vec![7; 8]]), "the bundle came with it");
    assert_eq!(ds.list_federation_relationships().await.unwrap(), vec![web.clone(), spiffe.clone()], "ordered by trust domain");
    assert_eq!(ds.get_federation_relationship(&spiffe.trust_domain).await.unwrap().as_ref(), Some(&spiffe));

    assert!(already_exists(&ds.create_federation_relationship(&web, None).await), "one relationship per trust domain");
    let foreign = Bundle { x509_authorities: vec![vec![9]], ..Bundle::new(td("c.example")) };
    let moved = Relationship { bundle_endpoint_url: "https://elsewhere.example/".into(), ..web.clone() };
    assert!(ds.update_federation_relationship(&moved, Some(&foreign)).await.is_err(), "a bundle of another trust domain");
    assert_eq!(ds.get_federation_relationship(&a).await.unwrap().as_ref(), Some(&web), "the refused update changed nothing");
    assert_eq!(ds.get_bundle(&td("c.example")).await.unwrap(), None);

    let to_spiffe =
        Relationship { profile: ClientProfile::HttpsSpiffe { endpoint_spiffe_id: id("spiffe://a.example/spire/server") }, ..moved.clone() };
    let newer = Bundle { x509_authorities: vec![vec![8; 8]], ..Bundle::new(a.clone()) };
    ds.update_federation_relationship(&to_spiffe, Some(&newer)).await.unwrap();
    assert_eq!(ds.get_federation_relationship(&a).await.unwrap().as_ref(), Some(&to_spiffe), "an update replaces every field");
    let stored = ds.get_bundle(&a).await.unwrap().unwrap();
    assert_eq!((stored.x509_authorities, stored.sequence_number), (vec![vec![8; 8]], 2), "the update's bundle, one more sequence");
    ds.update_federation_relationship(&web, None).await.unwrap();
    assert_eq!(ds.get_federation_relationship(&a).await.unwrap().as_ref(), Some(&web), "back to https_web: no endpoint ID left");
    assert!(not_found(&ds.update_federation_relationship(&Relationship { trust_domain: td("z.example"), ..web.clone() }, None).await));

    ds.delete_federation_relationship(&a).await.unwrap();
    assert_eq!(ds.get_federation_relationship(&a).await.unwrap(), None);
    assert!(ds.get_bundle(&a).await.unwrap().is_some(), "deleting a relationship keeps its bundle");
    assert!(not_found(&ds.delete_federation_relationship(&a).await));
    assert_eq!(ds.list_federation_relationships().await.unwrap(), vec![spiffe]);
}

/// Servers sharing one database race each other (call with two or more datastores on one
/// database): of concurrent creators of one entry one wins; a join token is consumed once;
/// concurrent bundle appends each get their own sequence number and none is lost; concurrent
/// updates of one entry each get their own revision.
/// A datastore with a read replica (`ro_connection_string`): entry-cache snapshots come from
/// the replica once it has applied everything committed before the snapshot was asked for, and
/// from the primary while it lags or is down, so a snapshot never misses a committed write.
/// `reads` answers (snapshots the replica served, snapshots the primary served instead);
/// `replica_has` asks the replica directly whether it holds an entry id.
pub(crate) async fn replica_snapshots<HF>(
    ds: &dyn Datastore,
    reads: impl Fn() -> (u64, u64),
    pause_replay: impl Fn(),
    resume_replay: impl Fn(),
    stop_replica: impl Fn(),
    replica_has: impl Fn(&'static str) -> HF,
) where
    HF: Future<Output = bool>,
{
    let has = |(entries, nodes): &(Vec<Entry>, Vec<AttestedNode>), entry_id: &str, node_id: Option<&str>| {
        entries.iter().any(|e| e.id == entry_id) && node_id.is_none_or(|n| nodes.iter().any(|x| x.spiffe_id.as_str() == n))
    };
    ds.create_entry(&entry("replica-1", "spiffe://example.org/r1", "spiffe://example.org/agent", &[("unix", "uid:1")])).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let before = reads().0;
        let snap = ds.cache_snapshot().await.unwrap();
        assert!(has(&snap, "replica-1", None), "a snapshot misses a committed entry");
        if reads().0 > before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the replica never served a snapshot: {:?}", reads());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The replica stops applying changes: the primary serves, and nothing is missed.
    pause_replay();
    ds.create_entry(&entry("replica-2", "spiffe://example.org/r2", "spiffe://example.org/agent", &[("unix", "uid:2")])).await.unwrap();
    ds.create_attested_node(&node("spiffe://example.org/spire/agent/replica")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(replica_has("replica-1").await && !replica_has("replica-2").await, "the replica should hold the first entry only");
    let before = reads();
    let snap = ds.cache_snapshot().await.unwrap();
    assert!(has(&snap, "replica-2", Some("spiffe://example.org/spire/agent/replica")), "a lagging replica's snapshot was used");
    assert_eq!(reads(), (before.0, before.1 + 1), "the primary serves while the replica lags");

    // Caught up again: the replica serves, with the writes it had missed.
    resume_replay();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let before = reads().0;
        let snap = ds.cache_snapshot().await.unwrap();
        assert!(has(&snap, "replica-2", Some("spiffe://example.org/spire/agent/replica")));
        if reads().0 > before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the replica never served again: {:?}", reads());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(replica_has("replica-2").await);

    // The replica goes away: the primary serves.
    stop_replica();
    let before = reads();
    let snap = ds.cache_snapshot().await.unwrap();
    assert!(has(&snap, "replica-2", None));
    assert_eq!(reads(), (before.0, before.1 + 1), "the primary serves while the replica is down");
}

pub(crate) async fn racing_servers(servers: &[Arc<dyn Datastore>]) {
    const N: usize = 8;
    let pick = |i: usize| Arc::clone(&servers[i % servers.len()]);
    let agent = "spiffe://example.org/spire/agent/a";

    let start = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (ds, start) = (pick(i), Arc::clone(&start));
        let e = entry(&format!("race-{i:02}"), "spiffe://example.org/raced", agent, &[("unix", "uid:1")]);
        tasks.spawn(async move {
            start.wait().await;
            ds.create_entry(&e).await
        });
    }
    let results = tasks.join_all().await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!((won, results.iter().filter(|r| already_exists(r)).count()), (1, N - 1), "{results:?}");

    pick(0).create_join_token("raced-token", i64::MAX).await.unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (ds, start) = (pick(i), Arc::clone(&start));
        tasks.spawn(async move {
            start.wait().await;
            ds.take_join_token("raced-token").await
        });
    }
    let taken = tasks.join_all().await;
    assert_eq!(taken.iter().filter(|r| matches!(r, Ok(Some(_)))).count(), 1, "one server consumes the token: {taken:?}");
    assert!(taken.iter().all(Result::is_ok), "{taken:?}");

    let t = td("raced.example");
    let start = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (ds, start, t) = (pick(i), Arc::clone(&start), t.clone());
        tasks.spawn(async move {
            start.wait().await;
            ds.append_bundle(&t, &[vec![u8::try_from(i).unwrap(); 4]], &[]).await.map(|b| b.sequence_number)
        });
    }
    let mut seqs: Vec<u64> = tasks.join_all().await.into_iter().map(Result::unwrap).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>(), "each append its own sequence number, none repeated or skipped");
    assert_eq!(pick(1).get_bundle(&t).await.unwrap().unwrap().x509_authorities.len(), N, "no append lost");

    let e = pick(0).get_entry(&results.iter().find_map(|r| r.as_ref().ok()).unwrap().id).await.unwrap().unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (ds, start) = (pick(i), Arc::clone(&start));
        let e = Entry { hint: format!("by {i}"), ..e.clone() };
        tasks.spawn(async move {
            start.wait().await;
            ds.update_entry(&e).await.map(|u| u.revision_number)
        });
    }
    let mut revs: Vec<i64> = tasks.join_all().await.into_iter().map(Result::unwrap).collect();
    revs.sort_unstable();
    assert_eq!(revs, (1..=8).collect::<Vec<i64>>(), "each update its own revision");
}
