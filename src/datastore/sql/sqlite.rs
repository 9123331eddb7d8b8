//! The SQLite backend: a private database file (or an in-memory database for tests), WAL
//! journal, and the Rust half of migration 0002 (hashing join tokens, which SQLite's SQL cannot).

use super::codec::join_token_hash;
use super::{Backend, Dialect};
use crate::datastore::DatastoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool};
use std::str::FromStr;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("src/datastore/migrations/sqlite");

impl Backend for Sqlite {
    const DIALECT: Dialect = Dialect::SQLITE;

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATIONS
    }

    async fn connect(connection_string: &str, _pool: &super::ConnectSettings) -> Result<SqlitePool, DatastoreError> {
        let url =
            if connection_string.starts_with("sqlite:") { connection_string.to_owned() } else { format!("sqlite://{connection_string}") };
        let opts = SqliteConnectOptions::from_str(&url)
            .map_err(|e| DatastoreError::Config(format!("connection_string: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true)
            // Deleted rows (consumed join-token hashes, entries, old journals) are zeroed rather
            // than left readable in free pages of the file.
            .pragma("secure_delete", "ON");
        let file = std::path::Path::new(opts.get_filename());
        if !is_in_memory(file) {
            prepare_private_db_file(file)?;
        }
        // One file, one writer at a time: a few connections are all SQLite can use, whatever
        // `max_open_conns` says.
        SqlitePoolOptions::new().max_connections(4).connect_with(opts).await.map_err(|e| DatastoreError::Database(e.to_string()))
    }

    async fn after_migrate(pool: &SqlitePool) -> Result<(), DatastoreError> {
        hash_legacy_join_tokens(pool).await
    }

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// In-memory databases have no file; sqlx names them `file:sqlx-in-memory-N`, and SQLite URI
/// filenames (`file:...?mode=memory`) are not plain paths either, so neither is pre-created.
fn is_in_memory(file: &std::path::Path) -> bool {
    let name = file.as_os_str().to_string_lossy();
    name.is_empty() || name == ":memory:" || name.starts_with("file:")
}

/// Creates the database file with mode 0600 before SQLite opens it. SQLite would create it with
/// 0644 minus the umask (0666 under `umask 000`), and gives its `-wal` and `-shm` files the mode
/// of the database file, so this one decision covers all three. Its directory (when cairn makes
/// it) is 0700. A database left group- or world-readable by an older cairn is narrowed, loudly.
fn prepare_private_db_file(file: &std::path::Path) -> Result<(), DatastoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let cfg =
        |what: &std::path::Path, e: &dyn std::fmt::Display| DatastoreError::Config(format!("connection_string: {}: {e}", what.display()));
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::fsutil::create_dir_all_mode(parent, 0o700).map_err(|e| cfg(parent, &e))?;
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(cfg(file, &e)),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        let p = std::path::PathBuf::from(name);
        if let Ok(m) = std::fs::metadata(&p)
            && m.is_file()
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %p.display(), mode = format!("{:o}", m.permissions().mode() & 0o777), "datastore file was readable by others; setting it to 0600");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(|e| cfg(&p, &e))?;
        }
    }
    Ok(())
}

fn db_err(e: sqlx::Error) -> DatastoreError {
    DatastoreError::Database(e.to_string())
}

/// Migration 0002 moved plaintext join tokens aside; hash them into `join_tokens` and drop the
/// old table, then checkpoint so the plaintext does not linger in the WAL either.
async fn hash_legacy_join_tokens(pool: &SqlitePool) -> Result<(), DatastoreError> {
    let legacy = sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'join_tokens_plaintext'")
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    if legacy.is_none() {
        return Ok(());
    }
    let mut tx = pool.begin().await.map_err(db_err)?;
    let rows = sqlx::query("SELECT token, expires_at FROM join_tokens_plaintext").fetch_all(&mut *tx).await.map_err(db_err)?;
    for r in &rows {
        let token: String = r.try_get("token").map_err(db_err)?;
        let expires_at: i64 = r.try_get("expires_at").map_err(db_err)?;
        sqlx::query("INSERT OR IGNORE INTO join_tokens (token_hash, expires_at) VALUES (?, ?)")
            .bind(join_token_hash(&token))
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
    }
    sqlx::query("DROP TABLE join_tokens_plaintext").execute(&mut *tx).await.map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(pool).await.map_err(db_err)?;
    tracing::info!(tokens = rows.len(), "join tokens in the datastore are now stored hashed");
    Ok(())
}
