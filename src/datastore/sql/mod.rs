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
//! # Adding PostgreSQL (or MySQL)
//! 1. A cairn feature that turns on sqlx's `postgres` feature.
//! 2. `src/datastore/migrations/postgres/`: the schema of `migrations/sqlite` as of today in one
//!    first migration (join tokens hashed from the start). Column types must decode as the store
//!    reads them: text as `String`, 64-bit integers `BIGINT` (`i64`), the two TTLs `INTEGER`
//!    (`i32`), flags `BOOLEAN`.
//! 3. `postgres.rs`: `impl Backend for sqlx::Postgres` (connect with pool options, `migrate!` of
//!    that folder, `DIALECT = Dialect::POSTGRES`).
//! 4. An arm in [`open`]; the datastore contract suite then runs against a server given by URL.
//!
//! Two servers sharing that database also need a shared change feed (see
//! [`crate::datastore::feed`]); [`SqlDatastore::with_feed`] takes one.

mod codec;
pub mod dialect;
mod sqlite;
mod store;
#[cfg(test)]
mod tests;

pub use dialect::Dialect;
pub use store::SqlDatastore;

use super::{Datastore, DatastoreError};
use std::future::Future;
use std::sync::Arc;

/// The datastore on SQLite.
pub type SqliteDatastore = SqlDatastore<sqlx::Sqlite>;

/// One sqlx driver as a datastore backend: how to reach the database and what schema to put in.
pub trait Backend: sqlx::Database {
    /// The SQL text choices of this database.
    const DIALECT: Dialect;

    /// The migrations of this database (`src/datastore/migrations/<dialect>/`), run on open.
    /// Files in it are never edited once released: sqlx stores their checksums and refuses a
    /// database whose applied migrations no longer match.
    fn migrator() -> &'static sqlx::migrate::Migrator;

    /// A connection pool for `connection_string`, with this database's session settings.
    fn connect(connection_string: &str) -> impl Future<Output = Result<sqlx::Pool<Self>, DatastoreError>> + Send;

    /// Data fix-ups that SQL migrations cannot do on this database, run after them.
    fn after_migrate(pool: &sqlx::Pool<Self>) -> impl Future<Output = Result<(), DatastoreError>> + Send;

    /// Rows an `UPDATE` or `DELETE` touched (every driver has it, but not through a common trait).
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

/// Opens the datastore that `database_type` names, running its migrations.
///
/// # Errors
/// A database type not built in, a bad connection string, or a failing database.
pub async fn open(database_type: &str, connection_string: &str) -> Result<Arc<dyn Datastore>, DatastoreError> {
    match database_type {
        "sqlite3" => Ok(Arc::new(SqliteDatastore::connect(connection_string).await?)),
        "postgres" | "mysql" => {
            Err(DatastoreError::Config(format!("database_type {database_type:?} is not built into this cairn yet; use \"sqlite3\"")))
        }
        other => Err(DatastoreError::Config(format!("unknown database_type {other:?} (expected sqlite3, postgres or mysql)"))),
    }
}
