//! The SQLite backend: a private database file (or an in-memory database for tests), WAL
//! journal, and the Rust half of migration 0002 (hashing join tokens, which SQLite's SQL cannot).

use super::codec::{EntryColumns, corrupt, join_token_hash};
use super::{Backend, Dialect};
use crate::datastore::{DatastoreError, Entry};
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

    async fn read_all_entries(pool: &SqlitePool) -> Result<Option<Vec<Entry>>, DatastoreError> {
        let file = std::path::PathBuf::from(pool.connect_options().get_filename());
        if is_in_memory(&file) {
            return Ok(None);
        }
        let read = tokio::task::spawn_blocking(move || read_all_entries(&file)).await;
        match read {
            Ok(Ok(entries)) => Ok(Some(entries)),
            // The file is open through the pool already, so this is unexpected; the pool's own
            // query still works, only slower.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "direct read of the entries failed; reading them through the pool");
                Ok(None)
            }
            Err(e) => Err(DatastoreError::Database(format!("entry read task failed: {e}"))),
        }
    }

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// Every registration entry in the database `file`, read on the calling (blocking) thread through
/// its own read-only connection, in one statement (so one consistent snapshot).
///
/// Why not sqlx: its SQLite driver copies every column value into a fresh allocation on its
/// worker thread and hands each row to the async side, which frees them. At a million entries
/// that was 17 million allocations split across two threads contending for the allocator's
/// locks: 19 s of restart. rusqlite (same `libsqlite3-sys`, so the same SQLite) reads values in
/// place on one thread. Both decode through [`EntryColumns`].
pub(super) fn read_all_entries(file: &std::path::Path) -> Result<Vec<Entry>, DatastoreError> {
    use rusqlite::OpenFlags;
    let err = |e: rusqlite::Error| DatastoreError::Database(e.to_string());
    let conn =
        rusqlite::Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(err)?;
    let mut stmt = conn
        .prepare(
            "SELECT entry_id, spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl, admin, downstream, federates_with, \
             dns_names, expires_at, hint, store_svid, disable_x509_svid_prefetch, jwt_svid_include_jti, revision_number, created_at \
             FROM registered_entries",
        )
        .map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(err)? {
        let text =
            |i: usize| -> Result<&str, DatastoreError> { row.get_ref(i).and_then(|v| Ok(v.as_str()?)).map_err(|e| corrupt("entry", e)) };
        let int =
            |i: usize| -> Result<i64, DatastoreError> { row.get_ref(i).and_then(|v| Ok(v.as_i64()?)).map_err(|e| corrupt("entry", e)) };
        let int32 = |i: usize| -> Result<i32, DatastoreError> { i32::try_from(int(i)?).map_err(|e| corrupt("entry", e)) };
        out.push(
            EntryColumns {
                entry_id: text(0)?,
                spiffe_id: text(1)?,
                parent_id: text(2)?,
                selectors: text(3)?,
                x509_svid_ttl: int32(4)?,
                jwt_svid_ttl: int32(5)?,
                admin: int(6)? != 0,
                downstream: int(7)? != 0,
                federates_with: text(8)?,
                dns_names: text(9)?,
                expires_at: int(10)?,
                hint: text(11)?,
                store_svid: int(12)? != 0,
                disable_x509_svid_prefetch: int(13)? != 0,
                jwt_svid_include_jti: int(14)? != 0,
                revision_number: int(15)?,
                created_at: int(16)?,
            }
            .decode()?,
        );
    }
    Ok(out)
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
