#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! CA rotation, SVID renewal and rotation across tiers on a manual clock: servers and agents run
//! in this process (`Server::run`, `agent::run::run_until`) and the test moves time a second at
//! a time, letting every loop act on each second (`ManualClock::settle`), instead of sleeping
//! through minutes. What is checked is checked as in the end-to-end tests: with the real
//! binary's CLI on the admin socket, the Workload API, and openssl (told the clock's time with
//! `-attime`). `tests/it/spire_suites.rs` keeps SPIRE's rotation suites in real time.
//!
//! The manual clock is process-wide, so this file is its own test binary and its tests take
//! turns.

mod common;

use cairn::clock::ManualClock;
use common::agent::{agent_config_for, my_uid};
use common::inproc::*;
use common::*;
use std::path::Path;
use std::time::Duration;

/// One manual clock at a time in this process.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn install_clock() -> ManualClock {
    ManualClock::install(cairn::now_unix()).expect("another manual clock is installed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moved_clock_wakes_the_loops_and_settle_waits_for_them() {
    let _turn = TURN.lock().await;
    let clock = install_clock();
    let start = clock.now();
    assert!(ManualClock::install(start).is_none(), "a second manual clock was installed");
    assert_eq!(cairn::now_unix(), start);

    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let mut moves = cairn::clock::moves();
    let looping = tokio::spawn(async move {
        loop {
            moves.next().await;
            // One wake-up's work, slow enough that settle() has to wait for it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if tx.send(cairn::now_unix()).is_err() {
                return;
            }
        }
    });
    assert!(clock.settle(Duration::from_secs(5)).await, "nothing moved yet: nothing to wait for");
    assert!(seen.try_recv().is_err());

    clock.advance(1);
    assert_eq!(cairn::now_unix(), start + 1);
    assert!(clock.settle(Duration::from_secs(5)).await);
    assert_eq!(seen.try_recv().ok(), Some(start + 1), "settle() returned before the loop had dealt with the move");

    // Two moves while the loop is busy: settled once it has acted on the later one.
    clock.advance(1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    clock.advance(1);
    assert!(clock.settle(Duration::from_secs(5)).await);
    let mut last = None;
    while let Ok(t) = seen.try_recv() {
        last = Some(t);
    }
    assert_eq!(last, Some(start + 3));

    // A loop stuck on something else is reported, not waited for forever.
    let mut stuck = cairn::clock::moves();
    let _ = tokio::time::timeout(Duration::from_millis(1), stuck.next()).await;
    clock.advance(1);
    assert!(!clock.settle(Duration::from_millis(200)).await, "settled although a loop never woke up");
    drop(stuck);
    assert!(clock.settle(Duration::from_secs(5)).await);

    looping.abort();
    let _ = looping.await;
    drop(clock);
    let system = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(cairn::now_unix().abs_diff(i64::try_from(system).unwrap()) <= 1, "the system clock is back");
}

fn roots_in(pem: &Path, dir: &Path, prefix: &str) -> usize {
    split_pem(pem, dir, prefix).len()
}

/// Moved from `tests/it/root_tier.rs`, where it slept through 25 s of a 30 s CA. A root tier with
/// `ca_ttl = 30s`: the next CA is prepared at half-life (15 s), not a second earlier, and its
/// root joins the bundle (with the next JWT key) while SVIDs still chain to the first CA; it is
/// activated at 5/6 of the lifetime (25 s), not a second earlier, and SVIDs then chain to the
/// second root only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_with_a_short_ca_ttl_prepares_then_activates_with_both_roots_in_the_bundle() {
    require("openssl");
    let _turn = TURN.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("cairn.log");
    log_to(&log);
    let clock = install_clock();
    let t0 = clock.now();
    let opts = ServerOpts {
        extra_server: "ca_ttl = \"30s\"\n default_x509_svid_ttl = \"5s\"\n default_jwt_svid_ttl = \"5s\"\n experimental { ca_rotation_interval = \"1s\" }".into(),
        ..ServerOpts::default()
    };
    let s = InProcServer::start(tmp.path(), &opts, &clock).await;
    assert_eq!(clock.now(), t0, "a root tier is healthy at once");
    let first = tmp.path().join("first.pem");
    std::fs::write(&first, s.cli_ok(&["bundle", "show"])).unwrap();
    assert_eq!(roots_in(&first, tmp.path(), "f"), 1);
    let both = tmp.path().join("both.pem");
    let mint = |name: &str| -> std::path::PathBuf {
        let d = tmp.path().join(name);
        s.cli_ok(&["x509", "mint", "-spiffeID", "spiffe://example.org/w", "-write", d.to_str().unwrap()]);
        d.join("svid.pem")
    };

    // Until half-life: one root.
    for t in 1..15 {
        step(&clock, 1).await;
        std::fs::write(&both, s.cli_ok(&["bundle", "show"])).unwrap();
        assert_eq!(roots_in(&both, tmp.path(), "b"), 1, "next CA prepared too early, at +{t}s:\n{}", log_tail(&log, 40));
    }
    // Prepared at half-life (15 s): the bundle gains a second root while SVIDs still come from the first.
    step(&clock, 1).await;
    std::fs::write(&both, s.cli_ok(&["bundle", "show"])).unwrap();
    assert_eq!(roots_in(&both, tmp.path(), "b"), 2, "next CA was not prepared at +15s:\n{}", log_tail(&log, 40));
    let spiffe = s.cli_ok(&["bundle", "show", "-format", "spiffe"]);
    assert_eq!(spiffe.matches("\"jwt-svid\"").count(), 2, "next JWT key published at preparation: {spiffe}");
    // Until 5/6 of the lifetime: SVIDs chain to the first CA.
    for t in 15..25 {
        let svid = mint(&format!("mid{t}"));
        let (ok, text) = openssl_verify_at(clock.now(), &first, None, &svid);
        assert!(ok, "before activation (+{t}s), SVIDs still chain to the first CA: {text}\n{}", log_tail(&log, 40));
        step(&clock, 1).await;
    }
    // Activated at 25 s: new SVIDs chain to the second root only.
    let svid = mint("late");
    let (old_ok, _) = openssl_verify_at(clock.now(), &first, None, &svid);
    assert!(!old_ok, "next CA was not activated at +25s:\n{}", log_tail(&log, 40));
    let (ok, text) = openssl_verify_at(clock.now(), &both, None, &svid);
    assert!(ok, "after activation SVIDs verify against the bundle: {text}");
    assert_eq!(clock.now(), t0 + 25);
    s.stop().await;
}

// === rotation across tiers ===

/// A tier under `upstream` and the root-tier agent on its "host" that serves its identity.
struct Tier {
    server: InProcServer,
    _upstream_agent: InProcAgent,
}

fn token(server: &InProcServer, alias: &str) -> String {
    let out = server.cli_ok(&["token", "generate", "-spiffeID", alias, "-ttl", "600"]);
    out.trim().strip_prefix("Token: ").unwrap().to_owned()
}

/// An agent under `server` (join token for node `nodes/<name>`) in `base/<name>`.
async fn agent_under(base: &Path, name: &str, server: &InProcServer) -> InProcAgent {
    let node = format!("spiffe://example.org/nodes/{name}");
    let t = token(server, &node);
    let adir = base.join(name);
    std::fs::create_dir(&adir).unwrap();
    let cfg = agent_config_for(
        &adir,
        server.port,
        || server.cli_ok(&["bundle", "show"]),
        "NodeAttestor \"join_token\" { plugin_data {} }",
        Some(&t),
        false,
    );
    InProcAgent::start(&adir, &cfg).await
}

/// As in `tests/it/nested.rs`: a -downstream entry for the tier's server on a root-tier agent,
/// and the server with UpstreamAuthority "spire" on that agent's Workload API.
async fn downstream(base: &Path, name: &str, upstream: &InProcServer, ca_ttl: &str, svid_ttl: &str, clock: &ManualClock) -> Tier {
    let node = format!("spiffe://example.org/nodes/{name}-upstream-agent");
    upstream.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        &node,
        "-spiffeID",
        &format!("spiffe://example.org/{name}"),
        "-selector",
        &format!("unix:uid:{}", my_uid()),
        "-downstream",
    ]);
    let agent = agent_under(base, &format!("{name}-upstream-agent"), upstream).await;
    std::fs::create_dir(base.join(name)).unwrap();
    let opts = ServerOpts {
        extra_server: format!(
            "ca_ttl = \"{ca_ttl}\"\n default_x509_svid_ttl = \"{svid_ttl}\"\n default_jwt_svid_ttl = \"{svid_ttl}\"\n experimental {{ jwt_publish_grace = \"1s\" ca_rotation_interval = \"1s\" }}"
        ),
        extra_plugins: format!(
            "UpstreamAuthority \"spire\" {{ plugin_data {{ server_address = \"127.0.0.1\" server_port = \"{}\" workload_api_socket = \"{}\" }} }}",
            upstream.port,
            agent.socket.display()
        ),
        ..ServerOpts::default()
    };
    Tier { server: InProcServer::start(&base.join(name), &opts, clock).await, _upstream_agent: agent }
}

/// An agent under `server` with one workload entry (this process's uid) for `workload`.
async fn workload_agent(base: &Path, name: &str, server: &InProcServer, workload: &str) -> InProcAgent {
    let node = format!("spiffe://example.org/nodes/{name}");
    server.cli_ok(&["entry", "create", "-parentID", &node, "-spiffeID", workload, "-selector", &format!("unix:uid:{}", my_uid())]);
    agent_under(base, name, server).await
}

/// Moved from `tests/it/nested.rs`, where each case slept through 150 s. A root and two downstream
/// tiers, each with an agent, for 150 s of the clock: every 2 s, an X509-SVID fresh from each
/// agent verifies against the root's bundle through its chain, and a JWT-SVID fresh from each
/// agent (a new audience each time) validates at the agent of the other region; the first
/// downstream goes through at least three CAs.
async fn rotations_leave_no_gap(root_ca_ttl: &str, root_svid_ttl: &str, down_ca_ttl: &str) {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let log = base.join("cairn.log");
    log_to(&log);
    let clock = install_clock();
    let rdir = base.join("root");
    std::fs::create_dir(&rdir).unwrap();
    let root_opts = ServerOpts {
        extra_server: format!(
            "ca_ttl = \"{root_ca_ttl}\"\n default_x509_svid_ttl = \"{root_svid_ttl}\"\n default_jwt_svid_ttl = \"{root_svid_ttl}\"\n experimental {{ ca_rotation_interval = \"1s\" }}"
        ),
        ..ServerOpts::default()
    };
    let root = InProcServer::start(&rdir, &root_opts, &clock).await;
    let d1 = downstream(base, "r1", &root, down_ca_ttl, "10s", &clock).await;
    let d2 = downstream(base, "r2", &root, down_ca_ttl, "10s", &clock).await;
    let a1 = workload_agent(base, "a1", &d1.server, "spiffe://example.org/r1/web").await;
    let a2 = workload_agent(base, "a2", &d2.server, "spiffe://example.org/r2/api").await;
    let root_pem = base.join("root.pem");
    let mut seen_cas = std::collections::BTreeSet::new();
    let start = clock.now();
    let mut checks = 0;
    while clock.now() - start < 150 {
        let after = clock.now() - start;
        // The root rotates too when its CA is short: read its bundle afresh.
        std::fs::write(&root_pem, root.cli_ok(&["bundle", "show"])).unwrap();
        for (i, (agent, other)) in [(&a1, &a2), (&a2, &a1)].into_iter().enumerate() {
            let dir = base.join(format!("x{checks}-{i}"));
            std::fs::create_dir(&dir).unwrap();
            let resp = agent.fetch_x509().await.unwrap_or_else(|e| panic!("+{after}s: no X509-SVID: {e:?}\n{}", log_tail(&log, 60)));
            let chain = split_der(&resp.svids[0].x509_svid);
            assert!(chain.len() >= 2, "leaf + downstream CA");
            write_pem(&dir.join("leaf.pem"), &chain[..1]);
            write_pem(&dir.join("inter.pem"), &chain[1..]);
            let (ok, text) = openssl_verify_at(clock.now(), &root_pem, Some(&dir.join("inter.pem")), &dir.join("leaf.pem"));
            assert!(ok, "after +{after}s: a fresh X509-SVID failed to verify: {text}\n{}", log_tail(&log, 60));
            // A fresh audience forces a freshly minted JWT-SVID.
            let aud = format!("aud-{checks}-{i}");
            let token =
                agent.fetch_jwt(&aud).await.unwrap_or_else(|e| panic!("no JWT-SVID after +{after}s: {e:?}\n{}", log_tail(&log, 60)));
            assert!(!token.is_empty(), "no JWT-SVID after +{after}s");
            if let Err(e) = other.validate_jwt(&aud, &token).await {
                panic!("after +{after}s: a fresh JWT-SVID from one region failed in the other: {e:?}\n{}", log_tail(&log, 60));
            }
        }
        if let Some(ca) = d1.server.current_x509_ca().await {
            seen_cas.insert(ca);
        }
        checks += 1;
        step(&clock, 2).await;
    }
    eprintln!("{checks} rounds, downstream CAs: {seen_cas:?}");
    assert!(seen_cas.len() >= 3, "expected several downstream CA rotations, saw {} CAs in {checks} rounds", seen_cas.len());
    for a in [a1, a2] {
        a.stop().await;
    }
    for t in [d1, d2] {
        t.server.stop().await;
        t._upstream_agent.stop().await;
    }
    root.stop().await;
}

/// Short CA lifetimes at every tier: through several downstream rotations, every fresh
/// X509-SVID verifies against the root bundle and every fresh JWT-SVID from one region
/// validates in the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotations_across_tiers_leave_no_validation_gap() {
    let _turn = TURN.lock().await;
    rotations_leave_no_gap("6m", "30s", "60s").await;
}

/// The same with SPIRE's arrangement of one `ca_ttl` at every tier (2m here, so the root
/// rotates too): downstream CAs are capped or signed by the root's prepared CA, and still no
/// fresh SVID fails anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotations_with_equal_ca_ttl_at_every_tier_leave_no_validation_gap() {
    let _turn = TURN.lock().await;
    rotations_leave_no_gap("2m", "10s", "2m").await;
}

/// An agent keeps a workload's X509-SVID through its syncs until half its lifetime has passed,
/// then renews it: not at every sync, and not later. (The agent reads the SVID's validity once,
/// when it is minted; a wrong `not_before` there re-mints at every sync or never.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workload_svid_is_kept_until_half_life_then_renewed() {
    let _turn = TURN.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    log_to(&base.join("cairn.log"));
    let clock = install_clock();
    std::fs::create_dir(base.join("root")).unwrap();
    let opts = ServerOpts {
        extra_server: "default_x509_svid_ttl = \"60s\"\n experimental { ca_rotation_interval = \"1s\" }".into(),
        ..ServerOpts::default()
    };
    let root = InProcServer::start(&base.join("root"), &opts, &clock).await;
    let agent = workload_agent(base, "a", &root, "spiffe://example.org/web").await;
    let leaf = || async { split_der(&agent.fetch_x509().await.unwrap().svids[0].x509_svid)[0].clone() };
    let first = leaf().await;
    let half_life = {
        let (_, c) = x509_parser::parse_x509_certificate(&first).unwrap();
        let (nb, na) = (c.validity().not_before.timestamp(), c.validity().not_after.timestamp());
        nb + (na - nb) / 2
    };
    // The agent syncs at every second of the manual clock.
    step(&clock, half_life - 3 - clock.now()).await;
    assert_eq!(leaf().await, first, "the SVID was re-minted before half its lifetime");
    step(&clock, 5).await;
    assert_ne!(leaf().await, first, "the SVID was not renewed past half its lifetime");
    agent.stop().await;
    root.stop().await;
}
