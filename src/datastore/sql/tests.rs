#![allow(clippy::unwrap_used, reason = "test code")]

use super::codec::join_token_hash;
use super::dialect::{Dialect, Placeholders};
use super::{Backend, SqliteDatastore};
use crate::datastore::counting::CountingDatastore;
use crate::datastore::feed::{ChangeFeed, LocalFeed};
use crate::datastore::{Change, Datastore, DatastoreError, contract};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::os::unix::fs::PermissionsExt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

async fn in_memory() -> SqliteDatastore {
    SqliteDatastore::connect("sqlite::memory:").await.unwrap()
}

/// Opens fresh database files in one directory (which the caller keeps alive).
fn files_in(dir: &std::path::Path) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Arc<dyn Datastore>>>> + '_ {
    let n = AtomicUsize::new(0);
    move || {
        let path = dir.join(format!("ds-{}.sqlite3", n.fetch_add(1, Ordering::Relaxed)));
        Box::pin(async move { Arc::new(SqliteDatastore::connect(path.to_str().unwrap()).await.unwrap()) as Arc<dyn Datastore> })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_on_sqlite_in_memory() {
    contract::run(|| async { Arc::new(in_memory().await) as Arc<dyn Datastore> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_on_a_sqlite_file() {
    let tmp = tempfile::tempdir().unwrap();
    contract::run(files_in(tmp.path())).await;
}

/// The code paths SQLite itself does not take: PostgreSQL's numbered placeholders and MySQL's
/// select-then-delete (no `RETURNING`). SQLite accepts `$N` parameters, so both run here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_on_sqlite_with_numbered_placeholders_and_no_returning() {
    let dialect = Dialect { placeholders: Placeholders::Numbered, delete_returning: false, ..Dialect::SQLITE };
    contract::run(|| async move { Arc::new(in_memory().await.with_dialect(dialect)) as Arc<dyn Datastore> }).await;
}

/// SPIRE's `datastore-postgres` suite runs SPIRE's datastore tests against PostgreSQL; here
/// the same contract every backend passes runs against a throwaway PostgreSQL (Debian's),
/// opened through SPIRE's keyword/value connection string.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_on_postgresql() {
    let pg = Arc::new(super::testdb::TestPostgres::start());
    contract::run(|| {
        let pg = Arc::clone(&pg);
        async move {
            let db = pg.create_db().await;
            // As SPIRE's harness does, the read-only connection string names the same database.
            let dsn = pg.keyword_dsn(&db);
            let ds = super::PostgresDatastore::connect(&dsn).await.unwrap().shared();
            Arc::new(ds.with_replica(Some(&dsn), &super::ConnectSettings::default()).await.unwrap()) as Arc<dyn Datastore>
        }
    })
    .await;
    two_servers_hear_each_other(&pg.url(&pg.create_db().await), open_postgres_for_test).await;
}

async fn open_postgres_for_test(url: String) -> Arc<dyn Datastore> {
    super::open("postgres", &url, None, &super::ConnectSettings::default()).await.unwrap()
}

async fn open_mysql_for_test(url: String) -> Arc<dyn Datastore> {
    super::open("mysql", &url, None, &super::ConnectSettings::default()).await.unwrap()
}

/// Two datastores on one database (two servers of a tier): they race (the contract's
/// `racing_servers`), and a write through one reaches the other's subscribers through the
/// events table, once; its own subscribers hear it at once and only once.
async fn two_servers_hear_each_other<F, Fut>(url: &str, open: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Arc<dyn Datastore>>,
{
    let a = open(url.to_owned()).await;
    let b = open(url.to_owned()).await;
    contract::racing_servers(&[Arc::clone(&a), Arc::clone(&b)]).await;
    // Let B's poller take its starting point (and hear the races' events).
    tokio::time::sleep(super::shared_feed::POLL_EVERY * 2).await;
    let (mut at_a, mut at_b) = (a.watch_changes(), b.watch_changes());
    tokio::time::sleep(super::shared_feed::POLL_EVERY * 2).await;
    at_a.drain();
    at_b.drain();
    let td = crate::spiffe::TrustDomain::new("heard.example").unwrap();
    a.append_bundle(&td, &[vec![1]], &[]).await.unwrap();
    assert_eq!(at_a.try_recv(), Ok(Change::Bundle), "the writer's own subscribers hear it at once");
    let heard = tokio::time::timeout(std::time::Duration::from_secs(5), at_b.recv()).await.expect("B heard nothing within 5 s");
    assert_eq!(heard, Ok(Change::Bundle));
    assert_eq!(b.get_bundle(&td).await.unwrap().map(|b| b.sequence_number), Some(1), "B reads what the event announced");
    tokio::time::sleep(super::shared_feed::POLL_EVERY * 2).await;
    assert!(at_b.try_recv().is_err(), "B heard the change once");
    assert!(at_a.try_recv().is_err(), "A does not hear its own change back");
}

/// SPIRE's `datastore-mysql` suite, likewise, against a throwaway MariaDB through SPIRE's
/// Go-driver DSN.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_on_mariadb() {
    let my = Arc::new(super::testdb::TestMariadb::start());
    contract::run(|| {
        let my = Arc::clone(&my);
        async move {
            let db = my.create_db().await;
            let dsn = my.go_dsn(&db);
            let ds = super::MysqlDatastore::connect(&dsn).await.unwrap().shared();
            Arc::new(ds.with_replica(Some(&dsn), &super::ConnectSettings::default()).await.unwrap()) as Arc<dyn Datastore>
        }
    })
    .await;
    two_servers_hear_each_other(&my.url(&my.create_db().await), open_mysql_for_test).await;
}

/// `ro_connection_string` on PostgreSQL: a hot standby streaming the primary's WAL serves the
/// entry cache's snapshots once caught up; while its replay is paused, or it is down, the
/// primary does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_replica_on_postgresql() {
    let pg = super::testdb::TestPostgres::start();
    let db = pg.create_db().await;
    let standby = super::testdb::TestPostgres::start_standby(&pg);
    let url = standby.url(&db);
    let replica = connect_eventually(|| sqlx::PgPool::connect(&url)).await;
    let ds = super::PostgresDatastore::connect(&pg.keyword_dsn(&db))
        .await
        .unwrap()
        .shared()
        .with_replica(Some(&standby.keyword_dsn(&db)), &super::ConnectSettings::default())
        .await
        .unwrap();
    contract::replica_snapshots(
        &ds,
        || ds.replica_reads(),
        || standby.pause_replay(),
        || standby.resume_replay(),
        || standby.pause(),
        |id| {
            let replica = replica.clone();
            async move {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM registered_entries WHERE entry_id = $1")
                    .bind(id)
                    .fetch_one(&replica)
                    .await
                    .unwrap();
                n == 1
            }
        },
    )
    .await;
}

/// The same on MariaDB: a replica following the primary's binary log by GTID.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_replica_on_mariadb() {
    let primary = super::testdb::TestMariadb::start_primary();
    let replica_db = super::testdb::TestMariadb::start_replica_of(&primary);
    let db = primary.create_db().await;
    let url = replica_db.url(&db);
    let replica = connect_eventually(|| sqlx::MySqlPool::connect(&url)).await;
    let ds = super::MysqlDatastore::connect(&primary.go_dsn(&db))
        .await
        .unwrap()
        .shared()
        .with_replica(Some(&replica_db.go_dsn(&db)), &super::ConnectSettings::default())
        .await
        .unwrap();
    contract::replica_snapshots(
        &ds,
        || ds.replica_reads(),
        || replica_db.pause_replay(),
        || replica_db.resume_replay(),
        || replica_db.pause(),
        |id| {
            let replica = replica.clone();
            async move {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM registered_entries WHERE entry_id = ?")
                    .bind(id)
                    .fetch_one(&replica)
                    .await
                    .unwrap();
                n == 1
            }
        },
    )
    .await;
}

/// Reads really go to `ro_connection_string`: pointed at another (primary) database whose
/// entries differ, a snapshot shows that database's entries. (A misconfiguration, used here
/// only to see where the reads go.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reads_go_to_the_ro_connection_string() {
    let pg = super::testdb::TestPostgres::start();
    let (main, other) = (pg.create_db().await, pg.create_db().await);
    let elsewhere = super::PostgresDatastore::connect(&pg.url(&other)).await.unwrap();
    let mut e = contract::entry("only-in-other", "spiffe://example.org/w", "spiffe://example.org/a", &[]);
    elsewhere.create_entry(&e).await.unwrap();
    let ds = super::PostgresDatastore::connect(&pg.url(&main))
        .await
        .unwrap()
        .with_replica(Some(&pg.url(&other)), &super::ConnectSettings::default())
        .await
        .unwrap();
    e.id = "only-in-main".into();
    ds.create_entry(&e).await.unwrap();
    let (entries, _) = ds.cache_snapshot().await.unwrap();
    assert_eq!(entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["only-in-other"]);
    assert_eq!(ds.replica_reads(), (1, 0));
    let listed = ds.list_entries(&crate::datastore::EntryFilter::default()).await.unwrap();
    assert_eq!(listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["only-in-main"], "other reads stay on the primary");
}

/// `disable_migration`: an empty database is refused with what to do, and nothing is created
/// in it; once a server with migrations has run, the schema is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_migration_needs_a_current_schema() {
    let pg = super::testdb::TestPostgres::start();
    let db = pg.create_db().await;
    let off = super::ConnectSettings { migrate: false, ..super::ConnectSettings::default() };
    let err = super::open("postgres", &pg.url(&db), None, &off).await.unwrap_err().to_string();
    assert!(err.contains("disable_migration is set but the database has no cairn schema"), "{err}");
    let raw = sqlx::PgPool::connect(&pg.url(&db)).await.unwrap();
    let tables: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'").fetch_one(&raw).await.unwrap();
    assert_eq!(tables, 0, "nothing was created");
    super::open("postgres", &pg.url(&db), None, &super::ConnectSettings::default()).await.unwrap();
    let ds = super::open("postgres", &pg.url(&db), None, &off).await.unwrap();
    assert_eq!(ds.count_entries().await.unwrap(), 0);
    // A migration this build does not know of (a newer cairn ran here) is refused too.
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99990101000000, 'future', true, '\\x00', 0)")
        .execute(&raw)
        .await
        .unwrap();
    let err = super::open("postgres", &pg.url(&db), None, &off).await.unwrap_err().to_string();
    assert!(err.contains("newer than this build"), "{err}");
}

/// Connects once the database exists there (a replica gets it from the primary shortly).
async fn connect_eventually<P, F>(connect: impl Fn() -> F) -> P
where
    F: Future<Output = Result<P, sqlx::Error>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match connect().await {
            Ok(p) => return p,
            Err(e) => assert!(std::time::Instant::now() < deadline, "the replica never had the database: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// TLS to the database, as SPIRE configures it: PostgreSQL through `sslmode=verify-full
/// sslrootcert=...` in the connection string, MySQL through `root_ca_path` (and the Go
/// driver's `tls` parameter). The sessions are encrypted (the servers say so), a server whose
/// certificate another CA signed is refused, and MariaDB requiring TLS refuses `tls=false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgresql_and_mariadb() {
    let other = tempfile::tempdir().unwrap();
    let other_ca = super::testdb::server_tls(other.path(), &whoami());

    let pg = super::testdb::TestPostgres::start_tls();
    let db = pg.create_db().await;
    let ca = pg.ca.clone().unwrap();
    let dsn = |ca: &std::path::Path| {
        format!("dbname={db} user=postgres host=localhost port={} sslmode=verify-full sslrootcert={}", pg.port(), ca.display())
    };
    let pool = sqlx::PgPool::connect_with(super::dsn::postgres(&dsn(&ca)).unwrap()).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(&pool).await.unwrap();
    assert!(ssl, "the PostgreSQL session is not encrypted");
    pool.close().await;
    super::PostgresDatastore::connect(&dsn(&ca)).await.unwrap().count_entries().await.unwrap();
    let refused = super::PostgresDatastore::connect(&dsn(&other_ca)).await.unwrap_err().to_string();
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");

    let my = super::testdb::TestMariadb::start_tls();
    let db = my.create_db().await;
    let files = super::MysqlTls { root_ca: my.ca.clone(), ..super::MysqlTls::default() };
    let go = format!("cairn:cairnpw@tcp(127.0.0.1:{})/{db}?parseTime=true&tls=custom", my.port());
    let pool = sqlx::MySqlPool::connect_with(super::dsn::mysql(&go, &files).unwrap()).await.unwrap();
    let (_, cipher): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'").fetch_one(&pool).await.unwrap();
    assert!(!cipher.is_empty(), "the MariaDB session is not encrypted");
    pool.close().await;
    let settings = super::ConnectSettings { mysql_tls: files.clone(), ..super::ConnectSettings::default() };
    super::open("mysql", &go, None, &settings).await.unwrap().count_entries().await.unwrap();
    let wrong = super::ConnectSettings {
        mysql_tls: super::MysqlTls { root_ca: Some(other_ca), ..super::MysqlTls::default() },
        ..super::ConnectSettings::default()
    };
    let refused = super::open("mysql", &go, None, &wrong).await.unwrap_err().to_string();
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    let plain = format!("cairn:cairnpw@tcp(127.0.0.1:{})/{db}?tls=false", my.port());
    let refused = super::open("mysql", &plain, None, &super::ConnectSettings::default()).await.unwrap_err().to_string();
    // MariaDB 10.11 answers a plain session under require_secure_transport with "Access denied"
    // (the same password works over TLS, above); MySQL says "secure transport".
    assert!(refused.contains("secure transport") || refused.contains("Access denied"), "{refused}");
}

fn whoami() -> String {
    String::from_utf8(std::process::Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().to_owned()
}

/// The benchmark wrapper passes every call through unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_through_the_counting_wrapper() {
    contract::run(|| async { Arc::new(CountingDatastore::new(Arc::new(in_memory().await))) as Arc<dyn Datastore> }).await;
}

#[tokio::test]
async fn the_counting_wrapper_counts_each_call_once() {
    let ds = CountingDatastore::new(Arc::new(in_memory().await));
    let td = crate::spiffe::TrustDomain::new("example.org").unwrap();
    let _rx = ds.watch_changes();
    assert_eq!(ds.calls(), 0, "subscribing is not a datastore call");
    ds.append_bundle(&td, &[vec![1]], &[]).await.unwrap();
    ds.get_bundle(&td).await.unwrap();
    assert!(ds.take_join_token("x").await.unwrap().is_none());
    assert_eq!(ds.calls(), 3);
}

/// Many creators on a file database (separate connections, WAL): without the similar-entry
/// check and the insert in one write transaction, most of them would insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_entry_insert_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = SqliteDatastore::connect(tmp.path().join("ds.sqlite3").to_str().unwrap()).await.unwrap();
    contract::concurrent_creates_of_one_entry(Arc::new(ds), 32).await;
}

#[tokio::test]
async fn writes_are_announced_on_the_feed_the_store_was_given() {
    let feed = LocalFeed::new();
    let mut rx = feed.subscribe();
    let ds = in_memory().await.with_feed(Arc::new(feed.clone()));
    ds.create_join_token("t", 1).await.unwrap();
    ds.set_ca_journal("k", "j").await.unwrap();
    ds.append_bundle(&crate::spiffe::TrustDomain::new("example.org").unwrap(), &[vec![1]], &[]).await.unwrap();
    assert_eq!(rx.try_recv(), Ok(Change::Bundle));
    assert!(rx.try_recv().is_err(), "one event per change");
    let mut from_ds = ds.watch_changes();
    feed.publish(Change::Nodes).await;
    assert_eq!(from_ds.try_recv(), Ok(Change::Nodes), "watch_changes subscribes to that feed too");
}

#[tokio::test]
async fn open_picks_the_backend_from_the_database_type() {
    let ds = super::open("sqlite3", "sqlite::memory:", None, &super::ConnectSettings::default()).await.unwrap();
    assert_eq!(ds.count_entries().await.unwrap(), 0);
    for (database_type, wanted) in [
        ("postgres", "connection_string: expected key=value"),
        ("mysql", "connection_string: expected"),
        ("oracle", "unknown database_type"),
    ] {
        match super::open(database_type, "x", None, &super::ConnectSettings::default()).await {
            Err(DatastoreError::Config(msg)) => assert!(msg.contains(wanted), "{database_type}: {msg}"),
            other => panic!("{database_type}: {other:?}"),
        }
    }
    // A database that is not there: a clear error naming it, after the pool's bounded wait.
    for (database_type, dsn, wanted) in [
        ("postgres", "host=127.0.0.1 port=1 user=spire dbname=spire sslmode=disable", "connecting to PostgreSQL"),
        ("mysql", "spire:pw@tcp(127.0.0.1:1)/spire", "connecting to MySQL"),
    ] {
        match super::open(database_type, dsn, None, &super::ConnectSettings::default()).await {
            Err(DatastoreError::Database(msg)) => assert!(msg.contains(wanted) && !msg.contains(":pw"), "{database_type}: {msg}"),
            other => panic!("{database_type}: {other:?}"),
        }
    }
}

fn file_bytes_contain(path: &std::path::Path, needle: &str) -> bool {
    let mut found = false;
    for suffix in ["", "-wal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(bytes) = std::fs::read(std::path::PathBuf::from(p)) {
            found |= bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
        }
    }
    found
}

#[tokio::test]
async fn join_tokens_are_stored_hashed_and_consumed_by_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("d/ds.sqlite3");
    let ds = SqliteDatastore::connect(db.to_str().unwrap()).await.unwrap();
    let token = "4d1f0c1e-token-in-clear-7a9b";
    ds.create_join_token(token, 1234).await.unwrap();
    assert!(!file_bytes_contain(&db, token), "the token is in the database file in clear");
    assert!(file_bytes_contain(&db, &join_token_hash(token)));
    assert!(matches!(ds.create_join_token(token, 1).await, Err(DatastoreError::AlreadyExists { .. })));
    assert_eq!(ds.take_join_token(&join_token_hash(token)).await.unwrap(), None, "the stored hash is not itself a token");
    assert_eq!(ds.take_join_token(token).await.unwrap(), Some(1234));
    assert_eq!(ds.take_join_token(token).await.unwrap(), None, "single use");
    // The file and its directory were created private.
    assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(db.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
}

#[tokio::test]
async fn an_in_memory_database_leaves_no_file_behind() {
    let _ds = in_memory().await;
    let stray: Vec<String> = std::fs::read_dir(".")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("file:"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

/// A database from before migration 0002 had plaintext tokens: they still work once, and the
/// plaintext is gone from the file.
#[tokio::test]
async fn plaintext_tokens_of_an_older_database_are_hashed_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("ds.sqlite3");
    let token = "legacy-plaintext-token-5f2e";
    {
        // Build the pre-0002 state: schema 0001 applied, a plaintext token stored.
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display())).unwrap().create_if_missing(true);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await.unwrap();
        let first = <sqlx::Sqlite as Backend>::migrator().iter().next().unwrap();
        sqlx::raw_sql(&first.sql).execute(&pool).await.unwrap();
        sqlx::query("CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)").execute(&pool).await.unwrap();
        sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (?, ?, 1, ?, 0)")
            .bind(first.version)
            .bind(first.description.as_ref())
            .bind(first.checksum.as_ref())
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO join_tokens (token, expires_at) VALUES (?, 99)").bind(token).execute(&pool).await.unwrap();
        pool.close().await;
    }
    assert!(file_bytes_contain(&db, token));
    let ds = SqliteDatastore::connect(db.to_str().unwrap()).await.unwrap();
    assert!(!file_bytes_contain(&db, token), "plaintext left in the database file after migrating");
    assert_eq!(ds.take_join_token(token).await.unwrap(), Some(99));
}

/// The entry cache's whole-table read on a SQLite file goes through rusqlite, not sqlx: it
/// returns what the sqlx queries return, field for field, and a damaged row is an error that
/// says so rather than a panic or a skipped entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_entry_read_matches_the_sqlx_read() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("ds.sqlite3");
    let ds = SqliteDatastore::connect(db.to_str().unwrap()).await.unwrap();
    for i in 0..50 {
        let id = format!("e-{:02}", (i * 37) % 50);
        let e = if i % 3 == 0 {
            contract::full_entry(&id)
        } else {
            contract::entry(&id, &format!("spiffe://example.org/w/{i}"), "spiffe://example.org/agent", &[("unix", &format!("uid:{i}"))])
        };
        let e = crate::datastore::Entry { spiffe_id: crate::spiffe::SpiffeId::new(&format!("spiffe://example.org/w/{i}")).unwrap(), ..e };
        ds.create_entry(&e).await.unwrap();
    }
    let mut direct = tokio::task::spawn_blocking({
        let db = db.clone();
        move || super::sqlite::read_all_entries(&db)
    })
    .await
    .unwrap()
    .unwrap();
    direct.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(direct, ds.list_entries(&crate::datastore::EntryFilter::default()).await.unwrap());
    assert_eq!(direct.iter().filter(|e| e.admin && e.jwt_svid_include_jti).count(), 17);

    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE registered_entries SET spiffe_id = 'not a spiffe id' WHERE entry_id = 'e-07'", [])
        .unwrap();
    let err = super::sqlite::read_all_entries(&db).unwrap_err();
    assert!(matches!(err, DatastoreError::Corrupt { what: "entry", .. }), "{err}");
    let through_the_store = ds.cache_snapshot().await.unwrap_err().to_string();
    assert!(through_the_store.contains("entry"), "{through_the_store}");
}
