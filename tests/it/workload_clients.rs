#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! The Rust `spiffe` crate (a client no one here wrote) against a cairn agent attested to a
//! cairn server; SVIDs checked with openssl; stream updates on entry changes; refusals.

use crate::common;

use common::agent::*;
use common::*;
use futures::StreamExt;
use std::process::Command;
use std::time::{Duration, Instant};

fn setup(tmp: &std::path::Path, uid: u32) -> (TestServer, TestAgent) {
    server_and_agent(tmp, uid, "", "1s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_spiffe_crate_fetches_and_validates() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let (_s, a) = tokio::task::block_in_place(|| setup(tmp.path(), my_uid()));
    let endpoint = format!("unix:{}", a.socket.display());
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint).await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();

    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/web");
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let bundle = bundles.get(&td).unwrap();
    // openssl verifies the chain against the bundle the agent served, and the key matches.
    let pem = |tag: &str, der: &[u8]| pem::encode(&pem::Pem::new(tag, der.to_vec()));
    let leaf_path = tmp.path().join("leaf.pem");
    std::fs::write(&leaf_path, pem("CERTIFICATE", svid.cert_chain()[0].as_bytes())).unwrap();
    let roots_path = tmp.path().join("roots.pem");
    std::fs::write(&roots_path, bundle.authorities().iter().map(|c| pem("CERTIFICATE", c.as_bytes())).collect::<String>()).unwrap();
    let (ok, out) =
        run(Command::new("openssl").args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"]).arg(&roots_path).arg(&leaf_path));
    assert!(ok, "{out}");
    let key_path = tmp.path().join("key.pem");
    std::fs::write(&key_path, pem("PRIVATE KEY", svid.private_key().as_ref())).unwrap();
    let (_, k) = run(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key_path));
    let (_, c) = run(Command::new("openssl").args(["x509", "-noout", "-pubkey", "-in"]).arg(&leaf_path));
    assert_eq!(k, c, "the key in the response matches the certificate");

    let jwt = client.fetch_jwt_svid(["db"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), "spiffe://example.org/web");
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let local = spiffe::JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["db"]).unwrap();
    assert_eq!(local.spiffe_id().to_string(), "spiffe://example.org/web");
    assert_eq!(client.validate_jwt_token("db", jwt.token()).await.unwrap().spiffe_id().to_string(), "spiffe://example.org/web");
    assert!(client.validate_jwt_token("db", "not.a.jwt").await.is_err());
    let mut truncated = jwt.token().to_owned();
    truncated.truncate(truncated.len() / 2);
    assert!(client.validate_jwt_token("db", &truncated).await.is_err());

    let xs = spiffe::X509Source::builder().endpoint(&endpoint).build().await.unwrap();
    assert_eq!(xs.svid().unwrap().spiffe_id().to_string(), "spiffe://example.org/web");
    xs.shutdown().await;
    let js = spiffe::JwtSource::builder().endpoint(&endpoint).build().await.unwrap();
    let from_source = js.fetch_jwt_svid(["db"]).await.unwrap();
    assert_eq!(from_source.spiffe_id().to_string(), "spiffe://example.org/web");
    js.shutdown().await;

    // A 10,000-entry audience list is refused cleanly and the agent keeps serving.
    let many: Vec<String> = (0..10_000).map(|i| format!("aud-{i}")).collect();
    assert!(client.fetch_jwt_svid(many.iter().map(String::as_str), None).await.is_err());
    assert!(client.fetch_x509_svid().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_changes_reach_an_open_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, a) = tokio::task::block_in_place(|| setup(tmp.path(), my_uid()));
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", a.socket.display())).await.unwrap();
    let mut stream = Box::pin(client.stream_x509_contexts().await.unwrap());
    let ids = |ctx: &spiffe::X509Context| {
        let mut v: Vec<String> = ctx.svids().iter().map(|s| s.spiffe_id().to_string()).collect();
        v.sort();
        v
    };
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(ids(&first), ["spiffe://example.org/web"]);

    let created = tokio::task::block_in_place(|| {
        s.cli_ok(&[
            "entry",
            "create",
            "-parentID",
            "spiffe://example.org/node1",
            "-spiffeID",
            "spiffe://example.org/api",
            "-selector",
            &format!("unix:uid:{}", my_uid()),
        ])
    });
    let entry_id =
        created.lines().find_map(|l| l.strip_prefix("Entry ID").and_then(|r| r.split_once(": ")).map(|(_, v)| v)).unwrap().to_owned();
    let start = Instant::now();
    let grown = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no update after the entry was created")
        .unwrap()
        .unwrap();
    let added_after = start.elapsed();
    assert_eq!(ids(&grown), ["spiffe://example.org/api", "spiffe://example.org/web"]);

    tokio::task::block_in_place(|| s.cli_ok(&["entry", "delete", "-entryID", &entry_id]));
    let start = Instant::now();
    let shrunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no update after the entry was deleted")
        .unwrap()
        .unwrap();
    let removed_after = start.elapsed();
    assert_eq!(ids(&shrunk), ["spiffe://example.org/web"]);
    // The agent syncs every second here; an update must not take more than a few intervals.
    assert!(
        added_after < Duration::from_secs(4) && removed_after < Duration::from_secs(4),
        "added after {added_after:?}, removed after {removed_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_workloads_and_missing_headers_are_refused() {
    use cairn::wire::pb::workload::{X509svidRequest, spiffe_workload_api_client::SpiffeWorkloadApiClient};
    let tmp = tempfile::tempdir().unwrap();
    let (_s, a) = tokio::task::block_in_place(|| setup(tmp.path(), 4242));
    // Without the security header: InvalidArgument.
    let path = a.socket.clone();
    let ch = tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move { tokio::net::UnixStream::connect(p).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .unwrap();
    let err = SpiffeWorkloadApiClient::new(ch).fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // This process's uid matches no entry (the only entry is for uid 4242): PermissionDenied.
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", a.socket.display())).await.unwrap();
    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(format!("{err:?}").contains("PermissionDenied") || err.to_string().to_lowercase().contains("no identity"), "{err:?}");
    let out = Command::new(CAIRN).args(["agent", "api", "fetch", "x509", "-socketPath"]).arg(&a.socket).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && (text.contains("PermissionDenied") || text.contains("no identity issued")), "{text}");
    // Garbage on the socket does not stop the agent.
    {
        use tokio::io::AsyncWriteExt;
        let mut raw = tokio::net::UnixStream::connect(&a.socket).await.unwrap();
        raw.write_all(&[0xffu8; 4096]).await.unwrap();
    }
    let health = Command::new(CAIRN).args(["agent", "healthcheck", "-socketPath"]).arg(&a.socket).output().unwrap();
    assert!(health.status.success(), "{health:?}");
    assert!(client.fetch_x509_svid().await.is_err(), "still refusing, still up");
}
