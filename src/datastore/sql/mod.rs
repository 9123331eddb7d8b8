//! `DataStore "sql"` over sqlx. `database_type = "sqlite3"` is the embedded default.
//!
//! # Layout
//! - [`SqlDatastore`] (`store.rs`): every query, written once for all databases, with `?`
//!   placeholders, and generic over the sqlx driver.
//! - [`Dialect`] (`dialect.rs`): the SQL text that differs per database (placeholder style,
//!   upsert, `DELETE ... RETURNING` or select-then-delete, how writers lock each other out).
//! - [`Backend`]: binds one sqlx driver to its dialect, its connection setup and its migrations
//!   folder (`src/datastore/migrations/<dialect>/`). `sqlite.rs` is the SQLite backend.
//! - `codec.rs`: how records become column values (JSON lists, the bundle document, hashed
//!   join tokens), the same on every database.
//! - [`open`]: the closed factory the server calls with `database_type`.
//!
//! - `postgres.rs`, `mysql.rs`: the PostgreSQL and MySQL/MariaDB backends, whose schemas are
//!   `migrations/postgres` and `migrations/mysql` (the SQLite schema as of its migration 0002, in
//!   one step). Column types decode as the store reads them: text as `String`, 64-bit integers
//!   `BIGINT` (`i64`), the two TTLs `INTEGER` (`i32`), flags `BOOLEAN`.
//! - `dsn.rs`: SPIRE's connection strings for them (libpq keyword/value, Go MySQL DSN).
//!
//! The datastore contract suite runs on every backend (`tests.rs`, with throwaway PostgreSQL
//! and MariaDB servers from `testdb.rs`).
//!
//! Two servers sharing that database also need a shared change feed (see
//! [`crate::datastore::feed`]); [`SqlDatastore::with_feed`] takes one.
//!
//! A read replica (`ro_connection_string`, [`SqlDatastore::with_replica`]) serves only the
//! entry cache's snapshots, and only once it has applied what the primary had committed when
//! the snapshot was asked for ([`Backend::log_position`], [`Backend::has_applied`]).

mod codec;
pub mod dialect;
pub mod dsn;
mod mysql;
mod postgres;
pub mod shared_feed;
mod sqlite;
mod store;
#[cfg(test)]
pub(crate) mod testdb;
#[cfg(test)]
mod tests;

pub use dialect::Dialect;
pub use store::SqlDatastore;

use super::{Datastore, DatastoreError};
use std::future::Future;
use std::sync::Arc;

/// The datastore on SQLite.
pub type SqliteDatastore = SqlDatastore<sqlx::Sqlite>;
/// The datastore on PostgreSQL.
pub type PostgresDatastore = SqlDatastore<sqlx::Postgres>;
/// The datastore on MySQL or MariaDB.
pub type MysqlDatastore = SqlDatastore<sqlx::MySql>;

/// One sqlx driver as a datastore backend: how to reach the database and what schema to put in.
pub trait Backend: sqlx::Database {
    /// The SQL text choices of this database.
    const DIALECT: Dialect;

    /// The migrations of this database (`src/datastore/migrations/<dialect>/`), run on open.
    /// Files in it are never edited once released: sqlx stores their checksums and refuses a
    /// database whose applied migrations no longer match.
    fn migrator() -> &'static sqlx::migrate::Migrator;

    /// A connection pool for `connection_string`, sized by `pool`, with this database's session
    /// settings.
    fn connect(connection_string: &str, pool: &ConnectSettings) -> impl Future<Output = Result<sqlx::Pool<Self>, DatastoreError>> + Send;

    /// Data fix-ups that SQL migrations cannot do on this database, run after them.
    fn after_migrate(pool: &sqlx::Pool<Self>) -> impl Future<Output = Result<(), DatastoreError>> + Send;

    /// Every registration entry, read by a path faster than sqlx's row stream where this
    /// database has one (the entry cache's full read at startup); `None` to use the common
    /// query.
    fn read_all_entries(
        pool: &sqlx::Pool<Self>,
    ) -> impl Future<Output = Result<Option<Vec<crate::datastore::Entry>>, DatastoreError>> + Send {
        let _ = pool;
        async { Ok(None) }
    }

    /// Rows an `UPDATE` or `DELETE` touched (every driver has it, but not through a common trait).
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// Where the primary's change log stands now (PostgreSQL's WAL position, MariaDB's binlog
    /// GTID position, MySQL's executed GTID set); `None` when this database cannot say, and then
    /// reads that need a caught-up replica go to the primary.
    fn log_position(primary: &sqlx::Pool<Self>) -> impl Future<Output = Result<Option<String>, DatastoreError>> + Send {
        let _ = primary;
        async { Ok(None) }
    }

    /// Whether the database behind `replica` has applied every change up to `position` (from
    /// [`Backend::log_position`] on the primary).
    fn has_applied(replica: &sqlx::Pool<Self>, position: &str) -> impl Future<Output = Result<bool, DatastoreError>> + Send {
        let _ = (replica, position);
        async { Ok(false) }
    }
}

/// SPIRE's pool settings (`max_open_conns`, `max_idle_conns`, `conn_max_lifetime`) and its
/// MySQL TLS files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MysqlTls {
    /// `root_ca_path`: the CA that must have signed the server's certificate.
    pub root_ca: Option<std::path::PathBuf>,
    /// `client_cert_path`.
    pub client_cert: Option<std::path::PathBuf>,
    /// `client_key_path`.
    pub client_key: Option<std::path::PathBuf>,
}

/// How to connect: the pool's size and lifetimes, and TLS files the connection string cannot
/// carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSettings {
    /// Most connections open at once (SPIRE's default: 100).
    pub max_open: u32,
    /// Idle connections kept open at least this long are closed; sqlx has no cap on the
    /// number of idle connections, so `max_idle_conns = 0` becomes "close when idle".
    pub idle_timeout: Option<std::time::Duration>,
    /// Connections are replaced after this long (`conn_max_lifetime`; none by default).
    pub max_lifetime: Option<std::time::Duration>,
    /// MySQL only: SPIRE's `root_ca_path`, `client_cert_path`, `client_key_path`.
    pub mysql_tls: MysqlTls,
    /// How long a query waits for a connection (a replica that is down gives up sooner, so
    /// that the primary answers instead).
    pub acquire_timeout: std::time::Duration,
    /// Bring the schema up to date at start (SPIRE's `disable_migration` turns this off: the
    /// schema must then already be current, or the server refuses to start).
    pub migrate: bool,
}

impl Default for ConnectSettings {
    fn default() -> Self {
        Self {
            max_open: 100,
            idle_timeout: Some(std::time::Duration::from_secs(600)),
            max_lifetime: None,
            mysql_tls: MysqlTls::default(),
            acquire_timeout: std::time::Duration::from_secs(10),
            migrate: true,
        }
    }
}

impl ConnectSettings {
    /// Applies these settings to sqlx pool options.
    fn apply<DB: sqlx::Database>(&self, o: sqlx::pool::PoolOptions<DB>) -> sqlx::pool::PoolOptions<DB> {
        o.max_connections(self.max_open.max(1))
            .acquire_timeout(self.acquire_timeout)
            .idle_timeout(self.idle_timeout)
            .max_lifetime(self.max_lifetime)
    }
}

/// Opens the datastore that `database_type` names, running its migrations (unless
/// `pool.migrate` is off), with reads that tolerate staleness served by the read replica at
/// `ro_connection_string` when one is given.
///
/// # Errors
/// A database type not built in, a bad connection string, a failing database, a replica for
/// SQLite, or (with migrations off) a schema that is not current.
pub async fn open(
    database_type: &str,
    connection_string: &str,
    ro_connection_string: Option<&str>,
    pool: &ConnectSettings,
) -> Result<Arc<dyn Datastore>, DatastoreError> {
    match (database_type, ro_connection_string) {
        ("sqlite3", None) => Ok(Arc::new(SqliteDatastore::connect_with(connection_string, pool).await?)),
        ("sqlite3", Some(_)) => {
            Err(DatastoreError::Config("ro_connection_string: read replicas are for database_type postgres and mysql".into()))
        }
        // Several servers may share these databases: changes go through the events table.
        ("postgres", ro) => {
            Ok(Arc::new(PostgresDatastore::connect_with(connection_string, pool).await?.shared().with_replica(ro, pool).await?))
        }
        ("mysql", ro) => Ok(Arc::new(MysqlDatastore::connect_with(connection_string, pool).await?.shared().with_replica(ro, pool).await?)),
        (other, _) => Err(DatastoreError::Config(format!("unknown database_type {other:?} (expected sqlite3, postgres or mysql)"))),
    }
}
