#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! Changes reach workloads by push: with the agent polling only once an hour, an entry created
//! or deleted on the server, a new authority in the trust domain bundle and a changed federated
//! bundle all reach a workload's open Workload API stream (the `spiffe` crate's), carried by
//! cairn's `AgentSync` change stream. A server with the stream turned off (as a SPIRE server
//! has none) still gets its changes to workloads, by polling.

use crate::common;

use common::agent::*;
use common::*;
use futures::StreamExt;
use std::time::Duration;

/// A server, one agent attested with a join token (alias `node1`), one entry for this uid.
fn setup(tmp: &std::path::Path, server_extra: &str, sync_interval: &str) -> (TestServer, TestAgent) {
    server_and_agent(tmp, my_uid(), server_extra, sync_interval)
}

type Contexts = std::pin::Pin<Box<dyn futures::Stream<Item = Result<spiffe::X509Context, spiffe::WorkloadApiError>> + Send>>;

async fn open_stream(a: &TestAgent) -> Contexts {
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", a.socket.display())).await.unwrap();
    Box::pin(client.stream_x509_contexts().await.unwrap())
}

fn ids(ctx: &spiffe::X509Context) -> Vec<String> {
    let mut v: Vec<String> = ctx.svids().iter().map(|s| s.spiffe_id().to_string()).collect();
    v.sort();
    v
}

/// The next context on the stream that satisfies `want`; fails after 20 s (a bound so a broken
/// push path fails the test instead of hanging it; the agent under test polls hourly).
async fn next_where(stream: &mut Contexts, what: &str, want: impl Fn(&spiffe::X509Context) -> bool) -> spiffe::X509Context {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ctx = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: no such update reached the workload's stream"))
            .unwrap()
            .unwrap();
        if want(&ctx) {
            return ctx;
        }
    }
}

fn roots_of(ctx: &spiffe::X509Context, td: &str) -> usize {
    let td = spiffe::TrustDomain::new(td).unwrap();
    ctx.bundle_set().get(&td).map_or(0, |b| b.authorities().len())
}

/// A self-signed CA certificate for `spiffe://fed.org` (PEM), as a federated bundle.
fn fed_root_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.subject_alt_names = vec![rcgen::SanType::URI(rcgen::string::Ia5String::try_from("spiffe://fed.org").unwrap())];
    p.self_signed(&key).unwrap().pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_and_bundle_changes_reach_an_open_stream_with_hourly_polling() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, a) = tokio::task::block_in_place(|| setup(tmp.path(), "", "1h"));
    let mut stream = open_stream(&a).await;
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(ids(&first), ["spiffe://example.org/web"]);
    assert_eq!(roots_of(&first, "example.org"), 1);

    // A new entry.
    let uid_sel = format!("unix:uid:{}", my_uid());
    let created = s.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/node1",
        "-spiffeID",
        "spiffe://example.org/api",
        "-selector",
        &uid_sel,
    ]);
    let entry_id = created
        .lines()
        .find_map(|l| l.strip_prefix("Entry ID").and_then(|r| r.split_once(": ")).map(|(_, v)| v.trim()))
        .unwrap()
        .to_owned();
    next_where(&mut stream, "entry created", |c| ids(c) == ["spiffe://example.org/api", "spiffe://example.org/web"]).await;

    // Its deletion.
    s.cli_ok(&["entry", "delete", "-entryID", &entry_id]);
    next_where(&mut stream, "entry deleted", |c| ids(c) == ["spiffe://example.org/web"]).await;

    // A new X.509 authority in the trust domain bundle.
    s.cli_ok(&["localauthority", "x509", "prepare"]);
    next_where(&mut stream, "authority prepared", |c| roots_of(c, "example.org") == 2).await;

    // A federated bundle: set, an entry federating with it, then the bundle changed alone.
    let fed = tmp.path().join("fed.pem");
    std::fs::write(&fed, fed_root_pem()).unwrap();
    s.cli_ok(&["bundle", "set", "-id", "spiffe://fed.org", "-path", fed.to_str().unwrap()]);
    s.cli_ok(&[
        "entry",
        "update",
        "-entryID",
        &entry_of(&s, "spiffe://example.org/web"),
        "-parentID",
        "spiffe://example.org/node1",
        "-spiffeID",
        "spiffe://example.org/web",
        "-selector",
        &uid_sel,
        "-federatesWith",
        "spiffe://fed.org",
    ]);
    next_where(&mut stream, "entry federating with fed.org", |c| roots_of(c, "fed.org") == 1).await;
    let two = format!("{}{}", fed_root_pem(), fed_root_pem());
    std::fs::write(&fed, two).unwrap();
    s.cli_ok(&["bundle", "set", "-id", "spiffe://fed.org", "-path", fed.to_str().unwrap()]);
    next_where(&mut stream, "federated bundle changed", |c| roots_of(c, "fed.org") == 2).await;
    assert!(a.log().contains("following the server's change stream"), "{}", a.log());
}

fn entry_of(s: &TestServer, spiffe_id: &str) -> String {
    let out = s.cli_ok(&["entry", "show", "-spiffeID", spiffe_id]);
    out.lines().find_map(|l| l.strip_prefix("Entry ID").and_then(|r| r.split_once(": ")).map(|(_, v)| v.trim().to_owned())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_change_stream_the_agent_still_converges_by_polling() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, a) = tokio::task::block_in_place(|| setup(tmp.path(), "experimental { agent_push = false }", "1s"));
    let mut stream = open_stream(&a).await;
    assert_eq!(ids(&stream.next().await.unwrap().unwrap()), ["spiffe://example.org/web"]);
    s.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/node1",
        "-spiffeID",
        "spiffe://example.org/api",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ]);
    next_where(&mut stream, "entry created", |c| ids(c) == ["spiffe://example.org/api", "spiffe://example.org/web"]).await;
    let log = a.log();
    assert!(log.contains("the server has no change stream"), "{log}");
    assert!(!log.contains("following the server's change stream"), "{log}");
}
