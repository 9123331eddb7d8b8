#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed unwrap is a failed test")]
//! Several servers of one tier on one shared PostgreSQL or MariaDB (issue 13), with SPIRE's
//! connection strings: each server keeps its own CA and JWT key, and both are in the shared
//! bundle; a join token made on one server attests an agent at the other; an agent attested
//! through server A keeps getting SVIDs (and new entries) from server B after A is stopped; a
//! JWT-SVID minted by A validates at an agent of B.

use crate::common;
use crate::nested::{jwt_kids, own_kid, wait_until};
use common::agent::*;
use common::*;
use std::path::Path;
use std::time::Duration;

fn server_on(dir: &Path, datastore: &str) -> TestServer {
    std::fs::create_dir_all(dir).unwrap();
    let block = format!("DataStore \"sql\" {{\n plugin_data {{ {datastore} }}\n }}");
    TestServer::start(dir, &ServerOpts { datastore_block: Some(block), ..ServerOpts::default() })
}

/// A workload entry `workload` for this uid under `node`, created at `registrar` with a join
/// token from it, and an agent attesting with that token at `attest_at`.
fn agent_via(base: &Path, registrar: &TestServer, attest_at: &TestServer, node: &str, workload: &str) -> TestAgent {
    let t = token(registrar, node, "600");
    registrar.cli_ok(&["entry", "create", "-parentID", node, "-spiffeID", workload, "-selector", &format!("unix:uid:{}", my_uid())]);
    let adir = base.join("agent");
    std::fs::create_dir(&adir).unwrap();
    TestAgent::start(&adir, agent_config(&adir, attest_at, "NodeAttestor \"join_token\" { plugin_data {} }", Some(&t)))
}

fn two_servers_share_one_database(datastore: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let mut a = server_on(&base.join("a"), datastore);
    let b = server_on(&base.join("b"), datastore);

    // Each server has its own CA and JWT key; the shared bundle holds both servers' keys and
    // roots, seen from either server.
    let (ka, kb) = (own_kid(&a), own_kid(&b));
    assert_ne!(ka, kb, "each server mints its own JWT key");
    wait_until("both JWT keys in the bundle", Duration::from_secs(10), || {
        let (at_a, at_b) = (jwt_kids(&a), jwt_kids(&b));
        at_a == at_b && at_a.contains(&ka) && at_a.contains(&kb)
    });
    assert_eq!(a.cli_ok(&["bundle", "show"]).matches("BEGIN CERTIFICATE").count(), 2, "both servers' roots");

    // A join token made at B attests an agent at A (one datastore): the agent and a workload
    // entry created at B.
    let node = "spiffe://example.org/nodes/shared";
    let mut agent = agent_via(base, &b, &a, node, "spiffe://example.org/ha/web");
    let fetched = |agent: &TestAgent, dir: &str| {
        let d = base.join(dir);
        let _ = std::fs::remove_dir_all(&d);
        let out = agent.api(&["fetch", "x509", "-write", d.to_str().unwrap()]);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), d)
    };
    wait_until("the workload's SVID through server A", Duration::from_secs(20), || {
        fetched(&agent, "svid-a").1.contains("spiffe://example.org/ha/web")
    });
    let token_again = b.cli(&["token", "generate", "-spiffeID", node, "-ttl", "600"]);
    assert!(token_again.status.success());

    // A JWT-SVID minted by server A validates at the agent (whose bundle came from the shared
    // datastore) for as long as it lives.
    let jwt = a.cli_ok(&["jwt", "mint", "-spiffeID", "spiffe://example.org/ha/api", "-audience", "ha"]).trim().to_owned();

    // Server A goes away; the agent is pointed at B (as a load balancer would) and keeps
    // working: its SVID is known to B, an entry created at B reaches the workload.
    a.stop();
    agent.stop();
    let text = std::fs::read_to_string(&agent.config)
        .unwrap()
        .replace(&format!("server_port = \"{}\"", a.port), &format!("server_port = \"{}\"", b.port));
    std::fs::write(&agent.config, text).unwrap();
    agent.spawn();
    b.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        node,
        "-spiffeID",
        "spiffe://example.org/ha/late",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ]);
    wait_until("an entry created at B, served through B", Duration::from_secs(30), || {
        fetched(&agent, "svid-b").1.contains("spiffe://example.org/ha/late")
    });
    let out = agent.api(&["validate", "jwt", "-audience", "ha", "-svid", &jwt]);
    assert!(
        out.status.success(),
        "A's JWT-SVID does not validate at B's agent: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The SVIDs B issued verify against the shared bundle with openssl.
    let (_, _, d) = fetched(&agent, "svid-b2");
    let parts = split_pem(&d.join("svid.0.pem"), &d, "part-");
    let (ok, out) = run(std::process::Command::new("openssl").arg("verify").arg("-CAfile").arg(d.join("bundle.0.pem")).arg(&parts[0]));
    assert!(ok, "openssl verify: {out}");
}

/// SPIRE's keyword/value connection string, as its docs write it.
#[test]
fn two_servers_on_postgresql() {
    let pg = common::db::TestPostgres::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(pg.create_db());
    two_servers_share_one_database(&format!("database_type = \"postgres\" connection_string = \"{}\"", pg.keyword_dsn(&db)));
}

/// The Go MySQL driver's DSN, as SPIRE's docs write it.
#[test]
fn two_servers_on_mariadb() {
    let my = common::db::TestMariadb::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(my.create_db());
    two_servers_share_one_database(&format!("database_type = \"mysql\" connection_string = \"{}\"", my.go_dsn(&db)));
}

/// The shared database stops for 30 s while two servers serve an agent: the agent keeps
/// getting SVIDs (from the servers' caches), a write is refused with a clear error within the
/// pool's bounded wait, and when the database returns both servers recover on their own: what
/// was written before is there, and a write at one server reaches the agent of the other.
fn a_database_outage_loses_nothing(datastore: &str, pause: impl Fn(), resume: impl Fn()) {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let a = server_on(&base.join("a"), datastore);
    let b = server_on(&base.join("b"), datastore);
    let node = "spiffe://example.org/nodes/outage";
    let agent = agent_via(base, &a, &b, node, "spiffe://example.org/outage/before");
    let fetch = |what: &str| {
        let d = base.join("svid");
        let _ = std::fs::remove_dir_all(&d);
        let out = agent.api(&["fetch", "x509", "-write", d.to_str().unwrap()]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(what)
    };
    wait_until("the SVID before the outage", Duration::from_secs(20), || fetch("spiffe://example.org/outage/before"));

    pause();
    let outage = std::time::Instant::now();
    // Writes are refused with a reason, in bounded time.
    let refused =
        b.cli(&["entry", "create", "-parentID", node, "-spiffeID", "spiffe://example.org/outage/during", "-selector", "unix:uid:1"]);
    assert!(!refused.status.success(), "a write succeeded with the database down");
    assert!(String::from_utf8_lossy(&refused.stderr).to_lowercase().contains("datastore"), "{}", String::from_utf8_lossy(&refused.stderr));
    // The agent keeps being served (sync and new SVIDs come from the servers' caches).
    while outage.elapsed() < Duration::from_secs(30) {
        assert!(fetch("spiffe://example.org/outage/before"), "the workload lost its SVID during the outage");
        assert!(b.cli(&["bundle", "show"]).status.success(), "the bundle is served from memory during the outage");
        std::thread::sleep(Duration::from_secs(3));
    }
    resume();

    // Both servers recover on their own: a write at A reaches the agent of B.
    wait_until("a write at A after the outage", Duration::from_secs(30), || {
        a.cli(&[
            "entry",
            "create",
            "-parentID",
            node,
            "-spiffeID",
            "spiffe://example.org/outage/after",
            "-selector",
            &format!("unix:uid:{}", my_uid()),
        ])
        .status
        .success()
    });
    wait_until("the new entry at B's agent", Duration::from_secs(30), || fetch("spiffe://example.org/outage/after"));
    let shown = b.cli_ok(&["entry", "show"]);
    assert!(shown.contains("outage/before") && shown.contains("outage/after") && !shown.contains("outage/during"), "{shown}");
}

#[test]
fn a_postgresql_outage_loses_nothing() {
    let pg = common::db::TestPostgres::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(pg.create_db());
    a_database_outage_loses_nothing(
        &format!("database_type = \"postgres\" connection_string = \"{}\"", pg.keyword_dsn(&db)),
        || pg.pause(),
        || pg.resume(),
    );
}

#[test]
fn a_mariadb_outage_loses_nothing() {
    let my = common::db::TestMariadb::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(my.create_db());
    a_database_outage_loses_nothing(
        &format!("database_type = \"mysql\" connection_string = \"{}\"", my.go_dsn(&db)),
        || my.pause(),
        || my.resume(),
    );
}

/// `ro_connection_string` pointing at a hot standby, as SPIRE operators configure it: the
/// server's entry cache reads the standby when it has caught up. While the standby's replay is
/// paused (a replica that lags), an entry created at the server still reaches the workload,
/// and a deleted one leaves it: the cache reads the primary until the standby catches up.
#[test]
fn a_lagging_read_replica_hides_no_change() {
    let pg = common::db::TestPostgres::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(pg.create_db());
    let standby = common::db::TestPostgres::start_standby(&pg);
    let on_standby = |entry_spiffe_id: &str| {
        rt.block_on(async {
            let pool = sqlx::PgPool::connect(&standby.url(&db)).await.ok()?;
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM registered_entries WHERE spiffe_id = $1")
                .bind(entry_spiffe_id)
                .fetch_one(&pool)
                .await
                .ok()?;
            Some(n)
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let server = server_on(
        &base.join("server"),
        &format!(
            "database_type = \"postgres\" connection_string = \"{}\" ro_connection_string = \"{}\"",
            pg.keyword_dsn(&db),
            standby.keyword_dsn(&db)
        ),
    );
    let node = "spiffe://example.org/nodes/replica";
    let agent = agent_via(base, &server, &server, node, "spiffe://example.org/replica/before");
    let ids = || {
        let d = base.join("svid");
        let _ = std::fs::remove_dir_all(&d);
        let out = agent.api(&["fetch", "x509", "-write", d.to_str().unwrap()]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until("the SVID before the lag", Duration::from_secs(20), || ids().contains("spiffe://example.org/replica/before"));
    wait_until("the standby has the first entry", Duration::from_secs(20), || on_standby("spiffe://example.org/replica/before") == Some(1));

    standby.pause_replay();
    let uid = format!("unix:uid:{}", my_uid());
    let created =
        server.cli_ok(&["entry", "create", "-parentID", node, "-spiffeID", "spiffe://example.org/replica/lagging", "-selector", &uid]);
    let before_id = server.cli_ok(&["entry", "show", "-spiffeID", "spiffe://example.org/replica/before"]);
    let before_id = before_id.lines().find_map(|l| l.strip_prefix("Entry ID")).map(|l| l.trim_start_matches([' ', ':']).trim().to_owned());
    assert!(created.contains("replica/lagging"), "{created}");
    wait_until("the entry created during the lag at the workload", Duration::from_secs(20), || {
        ids().contains("spiffe://example.org/replica/lagging")
    });
    server.cli_ok(&["entry", "delete", "-entryID", &before_id.expect("the first entry's id")]);
    wait_until("the deleted entry gone from the workload", Duration::from_secs(20), || {
        let now = ids();
        now.contains("replica/lagging") && !now.contains("replica/before")
    });
    assert_eq!(on_standby("spiffe://example.org/replica/lagging"), Some(0), "the standby really lagged");

    standby.resume_replay();
    wait_until("the standby catches up", Duration::from_secs(20), || on_standby("spiffe://example.org/replica/lagging") == Some(1));
    server.cli_ok(&["entry", "create", "-parentID", node, "-spiffeID", "spiffe://example.org/replica/after", "-selector", &uid]);
    wait_until("an entry created after the lag at the workload", Duration::from_secs(20), || {
        ids().contains("spiffe://example.org/replica/after")
    });
}
