//! `DataStore "sql"` over sqlx. `database_type = "sqlite3"` is the embedded default.

use super::{AttestedNode, Change, Datastore, DatastoreError, Entry, EntryFilter, Selector};
use crate::spiffe::{Bundle, JwtAuthority, SpiffeId, TrustDomain};
use async_trait::async_trait;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::str::FromStr;
use tokio::sync::broadcast;

/// A datastore on a SQL database.
#[derive(Debug)]
pub struct SqlDatastore {
    pool: SqlitePool,
    changes: broadcast::Sender<Change>,
    queries: std::sync::atomic::AtomicU64,
}

/// How a bundle is stored: the authorities with their expiries (the SPIFFE JSON form has no
/// place for a JWT key's expiry, which pruning needs).
#[derive(Serialize, Deserialize)]
struct StoredBundle {
    x509_authorities: Vec<String>,
    jwt_authorities: Vec<StoredJwtKey>,
    refresh_hint: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct StoredJwtKey {
    key_id: String,
    public_key: String,
    expires_at: i64,
}

fn db_err(e: sqlx::Error) -> DatastoreError {
    DatastoreError::Database(e.to_string())
}

fn corrupt(what: &'static str, reason: impl ToString) -> DatastoreError {
    DatastoreError::Corrupt { what, reason: reason.to_string() }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl SqlDatastore {
    /// Opens the database named by `database_type` and `connection_string`, running migrations.
    ///
    /// # Errors
    /// An unsupported database type, a bad connection string, or a failing database.
    pub async fn open(database_type: &str, connection_string: &str) -> Result<Self, DatastoreError> {
        match database_type {
            "sqlite3" => {}
            "postgres" | "mysql" => {
                return Err(DatastoreError::Config(format!(
                    "database_type {database_type:?} is not built into this cairn yet; use \"sqlite3\""
                )));
            }
            other => return Err(DatastoreError::Config(format!("unknown database_type {other:?} (expected sqlite3, postgres or mysql)"))),
        }
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
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await.map_err(db_err)?;
        sqlx::migrate!("src/datastore/migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| DatastoreError::Database(format!("migration: {e}")))?;
        hash_legacy_join_tokens(&pool).await?;
        let (changes, _) = broadcast::channel(64);
        Ok(Self { pool, changes, queries: std::sync::atomic::AtomicU64::new(0) })
    }

    fn notify(&self, change: Change) {
        // No subscribers is normal; nothing to do then.
        let _ = self.changes.send(change);
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

/// The stored form of a join token: lowercase hex SHA-256.
fn join_token_hash(token: &str) -> String {
    use sha2::Digest as _;
    crate::text::hex(&sha2::Sha256::digest(token.as_bytes()))
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
        sqlx::query("INSERT OR IGNORE INTO join_tokens (token_hash, expires_at) VALUES (?, ?)")
            .bind(join_token_hash(r.get::<&str, _>("token")))
            .bind(r.get::<i64, _>("expires_at"))
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

fn encode_bundle(b: &Bundle) -> Result<String, DatastoreError> {
    let stored = StoredBundle {
        x509_authorities: b.x509_authorities.iter().map(|d| B64.encode(d)).collect(),
        jwt_authorities: b
            .jwt_authorities
            .iter()
            .map(|k| StoredJwtKey { key_id: k.key_id.clone(), public_key: B64.encode(&k.public_key), expires_at: k.expires_at })
            .collect(),
        refresh_hint: b.refresh_hint,
    };
    serde_json::to_string(&stored).map_err(|e| corrupt("bundle", e))
}

fn decode_bundle(td: &str, data: &str, seq: i64) -> Result<Bundle, DatastoreError> {
    let trust_domain = TrustDomain::new(td).map_err(|e| corrupt("bundle", e))?;
    let stored: StoredBundle = serde_json::from_str(data).map_err(|e| corrupt("bundle", e))?;
    let x509_authorities =
        stored.x509_authorities.iter().map(|s| B64.decode(s)).collect::<Result<Vec<_>, _>>().map_err(|e| corrupt("bundle", e))?;
    let jwt_authorities = stored
        .jwt_authorities
        .into_iter()
        .map(|k| {
            Ok(JwtAuthority {
                key_id: k.key_id,
                public_key: B64.decode(&k.public_key).map_err(|e| corrupt("bundle", e))?,
                expires_at: k.expires_at,
            })
        })
        .collect::<Result<Vec<_>, DatastoreError>>()?;
    Ok(Bundle {
        trust_domain,
        x509_authorities,
        jwt_authorities,
        refresh_hint: stored.refresh_hint,
        sequence_number: u64::try_from(seq).unwrap_or(0),
    })
}

fn same_content(a: &Bundle, b: &Bundle) -> bool {
    a.x509_authorities == b.x509_authorities && a.jwt_authorities == b.jwt_authorities && a.refresh_hint == b.refresh_hint
}

fn cert_not_after(der: &[u8]) -> Option<i64> {
    x509_parser::parse_x509_certificate(der).ok().map(|(_, c)| c.validity().not_after.timestamp())
}

fn json<T: Serialize>(v: &T) -> Result<String, DatastoreError> {
    serde_json::to_string(v).map_err(|e| corrupt("record", e))
}

fn entry_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Entry, DatastoreError> {
    let c = |e: &dyn std::fmt::Display| corrupt("entry", e.to_string());
    let selectors: Vec<(String, String)> = serde_json::from_str(row.get::<&str, _>("selectors")).map_err(|e| c(&e))?;
    let federates: Vec<String> = serde_json::from_str(row.get::<&str, _>("federates_with")).map_err(|e| c(&e))?;
    Ok(Entry {
        id: row.get("entry_id"),
        spiffe_id: SpiffeId::new(row.get::<&str, _>("spiffe_id")).map_err(|e| c(&e))?,
        parent_id: SpiffeId::new(row.get::<&str, _>("parent_id")).map_err(|e| c(&e))?,
        selectors: selectors.into_iter().map(|(kind, value)| Selector { kind, value }).collect(),
        x509_svid_ttl: row.get("x509_svid_ttl"),
        jwt_svid_ttl: row.get("jwt_svid_ttl"),
        federates_with: federates.iter().map(|t| TrustDomain::new(t)).collect::<Result<_, _>>().map_err(|e| c(&e))?,
        admin: row.get("admin"),
        downstream: row.get("downstream"),
        dns_names: serde_json::from_str(row.get::<&str, _>("dns_names")).map_err(|e| c(&e))?,
        expires_at: row.get("expires_at"),
        hint: row.get("hint"),
        store_svid: row.get("store_svid"),
        revision_number: row.get("revision_number"),
        created_at: row.get("created_at"),
    })
}

fn selectors_json(s: &[Selector]) -> Result<String, DatastoreError> {
    let mut pairs: Vec<(&str, &str)> = s.iter().map(|s| (s.kind.as_str(), s.value.as_str())).collect();
    pairs.sort_unstable();
    pairs.dedup();
    json(&pairs)
}

fn node_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<AttestedNode, DatastoreError> {
    let selectors: Vec<(String, String)> =
        serde_json::from_str(row.get::<&str, _>("selectors")).map_err(|e| corrupt("attested node", e))?;
    Ok(AttestedNode {
        spiffe_id: SpiffeId::new(row.get::<&str, _>("spiffe_id")).map_err(|e| corrupt("attested node", e))?,
        attestation_type: row.get("attestation_type"),
        cert_serial_number: row.get("cert_serial_number"),
        cert_not_after: row.get("cert_not_after"),
        new_cert_serial_number: row.get("new_cert_serial_number"),
        new_cert_not_after: row.get("new_cert_not_after"),
        can_reattest: row.get("can_reattest"),
        selectors: selectors.into_iter().map(|(kind, value)| Selector { kind, value }).collect(),
        created_at: row.get("created_at"),
    })
}

impl SqlDatastore {
    async fn upsert_bundle_tx(&self, td: &TrustDomain, mutate: impl FnOnce(&mut Bundle) -> bool) -> Result<Bundle, DatastoreError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let row = sqlx::query("SELECT data, sequence_number FROM bundles WHERE trust_domain = ?")
            .bind(td.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        let (mut bundle, existed) = match row {
            Some(r) => (decode_bundle(td.as_str(), r.get("data"), r.get("sequence_number"))?, true),
            None => (
                Bundle {
                    trust_domain: td.clone(),
                    x509_authorities: vec![],
                    jwt_authorities: vec![],
                    refresh_hint: None,
                    sequence_number: 0,
                },
                false,
            ),
        };
        if !mutate(&mut bundle) && existed {
            return Ok(bundle);
        }
        bundle.sequence_number += 1;
        let data = encode_bundle(&bundle)?;
        let seq = i64::try_from(bundle.sequence_number).map_err(|e| corrupt("bundle", e))?;
        sqlx::query("INSERT INTO bundles (trust_domain, data, sequence_number, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT(trust_domain) DO UPDATE SET data = excluded.data, sequence_number = excluded.sequence_number, updated_at = excluded.updated_at")
            .bind(td.as_str()).bind(data).bind(seq).bind(now())
            .execute(&mut *tx).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        self.notify(Change::Bundle);
        Ok(bundle)
    }
}

#[async_trait]
impl Datastore for SqlDatastore {
    async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let row = sqlx::query("SELECT data, sequence_number FROM bundles WHERE trust_domain = ?")
            .bind(td.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| decode_bundle(td.as_str(), r.get("data"), r.get("sequence_number"))).transpose()
    }

    async fn list_bundles(&self) -> Result<Vec<Bundle>, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rows = sqlx::query("SELECT trust_domain, data, sequence_number FROM bundles ORDER BY trust_domain")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| decode_bundle(r.get("trust_domain"), r.get("data"), r.get("sequence_number"))).collect()
    }

    async fn append_bundle(&self, td: &TrustDomain, x509: &[Vec<u8>], jwt: &[JwtAuthority]) -> Result<Bundle, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.upsert_bundle_tx(td, |b| {
            let mut changed = false;
            for der in x509 {
                if !b.x509_authorities.contains(der) {
                    b.x509_authorities.push(der.clone());
                    changed = true;
                }
            }
            for key in jwt {
                if !b.jwt_authorities.iter().any(|k| k.key_id == key.key_id && k.public_key == key.public_key) {
                    b.jwt_authorities.push(key.clone());
                    changed = true;
                }
            }
            changed
        })
        .await
    }

    async fn set_bundle(&self, bundle: &Bundle) -> Result<Bundle, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.upsert_bundle_tx(&bundle.trust_domain, |b| {
            if same_content(b, bundle) {
                return false;
            }
            b.x509_authorities.clone_from(&bundle.x509_authorities);
            b.jwt_authorities.clone_from(&bundle.jwt_authorities);
            b.refresh_hint = bundle.refresh_hint;
            true
        })
        .await
    }

    async fn create_bundle(&self, bundle: &Bundle) -> Result<Bundle, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.get_bundle(&bundle.trust_domain).await?.is_some() {
            return Err(DatastoreError::AlreadyExists { what: "bundle" });
        }
        self.set_bundle(bundle).await
    }

    async fn delete_bundle(&self, td: &TrustDomain) -> Result<(), DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let done = sqlx::query("DELETE FROM bundles WHERE trust_domain = ?").bind(td.as_str()).execute(&self.pool).await.map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(DatastoreError::NotFound("bundle"));
        }
        self.notify(Change::Bundle);
        Ok(())
    }

    async fn prune_bundle(&self, td: &TrustDomain, before: i64) -> Result<bool, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut pruned = false;
        self.upsert_bundle_tx(td, |b| {
            let n = b.x509_authorities.len() + b.jwt_authorities.len();
            // Never prune the last root: an empty bundle would distrust everything.
            let keep: Vec<Vec<u8>> = b.x509_authorities.iter().filter(|d| cert_not_after(d).is_none_or(|t| t >= before)).cloned().collect();
            if !keep.is_empty() {
                b.x509_authorities = keep;
            }
            b.jwt_authorities.retain(|k| k.expires_at == 0 || k.expires_at >= before);
            pruned = n != b.x509_authorities.len() + b.jwt_authorities.len();
            pruned
        })
        .await?;
        Ok(pruned)
    }

    async fn create_entry(&self, e: &Entry) -> Result<Entry, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.find_similar_entry(e).await?.is_some() {
            return Err(DatastoreError::AlreadyExists { what: "similar entry" });
        }
        let mut entry = e.clone();
        entry.revision_number = 0;
        entry.created_at = now();
        sqlx::query("INSERT INTO registered_entries (entry_id, spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl, admin, downstream, federates_with, dns_names, expires_at, hint, store_svid, revision_number, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
            .bind(&entry.id).bind(entry.spiffe_id.as_str()).bind(entry.parent_id.as_str()).bind(selectors_json(&entry.selectors)?)
            .bind(entry.x509_svid_ttl).bind(entry.jwt_svid_ttl).bind(entry.admin).bind(entry.downstream)
            .bind(json(&entry.federates_with.iter().map(TrustDomain::as_str).collect::<Vec<_>>())?).bind(json(&entry.dns_names)?)
            .bind(entry.expires_at).bind(&entry.hint).bind(entry.store_svid).bind(entry.revision_number).bind(entry.created_at)
            .execute(&self.pool).await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => DatastoreError::AlreadyExists { what: "entry id" },
                other => db_err(other),
            })?;
        entry.selectors = sorted_selectors(&entry.selectors);
        self.notify(Change::Entries);
        Ok(entry)
    }

    async fn find_similar_entry(&self, e: &Entry) -> Result<Option<Entry>, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rows = sqlx::query("SELECT * FROM registered_entries WHERE spiffe_id = ? AND parent_id = ? AND selectors = ?")
            .bind(e.spiffe_id.as_str())
            .bind(e.parent_id.as_str())
            .bind(selectors_json(&e.selectors)?)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.first().map(entry_from_row).transpose()
    }

    async fn get_entry(&self, id: &str) -> Result<Option<Entry>, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let row =
            sqlx::query("SELECT * FROM registered_entries WHERE entry_id = ?").bind(id).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.as_ref().map(entry_from_row).transpose()
    }

    async fn list_entries(&self, f: &EntryFilter) -> Result<Vec<Entry>, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut sql = String::from("SELECT * FROM registered_entries WHERE 1=1");
        if f.spiffe_id.is_some() {
            sql.push_str(" AND spiffe_id = ?");
        }
        if f.parent_id.is_some() {
            sql.push_str(" AND parent_id = ?");
        }
        if f.selectors_exact.is_some() {
            sql.push_str(" AND selectors = ?");
        }
        if f.downstream.is_some() {
            sql.push_str(" AND downstream = ?");
        }
        sql.push_str(" ORDER BY entry_id");
        let mut q = sqlx::query(&sql);
        if let Some(id) = &f.spiffe_id {
            q = q.bind(id.as_str());
        }
        if let Some(id) = &f.parent_id {
            q = q.bind(id.as_str());
        }
        if let Some(s) = &f.selectors_exact {
            q = q.bind(selectors_json(s)?);
        }
        if let Some(d) = f.downstream {
            q = q.bind(d);
        }
        let rows = q.fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn update_entry(&self, e: &Entry) -> Result<Entry, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let row = sqlx::query("SELECT revision_number, created_at FROM registered_entries WHERE entry_id = ?")
            .bind(&e.id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        let Some(row) = row else { return Err(DatastoreError::NotFound("entry")) };
        let mut entry = e.clone();
        entry.revision_number = row.get::<i64, _>("revision_number") + 1;
        entry.created_at = row.get("created_at");
        entry.selectors = sorted_selectors(&entry.selectors);
        sqlx::query("UPDATE registered_entries SET spiffe_id=?, parent_id=?, selectors=?, x509_svid_ttl=?, jwt_svid_ttl=?, admin=?, downstream=?, federates_with=?, dns_names=?, expires_at=?, hint=?, store_svid=?, revision_number=? WHERE entry_id=?")
            .bind(entry.spiffe_id.as_str()).bind(entry.parent_id.as_str()).bind(selectors_json(&entry.selectors)?)
            .bind(entry.x509_svid_ttl).bind(entry.jwt_svid_ttl).bind(entry.admin).bind(entry.downstream)
            .bind(json(&entry.federates_with.iter().map(TrustDomain::as_str).collect::<Vec<_>>())?).bind(json(&entry.dns_names)?)
            .bind(entry.expires_at).bind(&entry.hint).bind(entry.store_svid).bind(entry.revision_number).bind(&entry.id)
            .execute(&mut *tx).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        self.notify(Change::Entries);
        Ok(entry)
    }

    async fn delete_entry(&self, id: &str) -> Result<Entry, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(entry) = self.get_entry(id).await? else { return Err(DatastoreError::NotFound("entry")) };
        sqlx::query("DELETE FROM registered_entries WHERE entry_id = ?").bind(id).execute(&self.pool).await.map_err(db_err)?;
        self.notify(Change::Entries);
        Ok(entry)
    }

    async fn count_entries(&self) -> Result<i64, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sqlx::query("SELECT COUNT(*) AS n FROM registered_entries").fetch_one(&self.pool).await.map(|r| r.get("n")).map_err(db_err)
    }

    async fn prune_entries(&self, expires_before: i64) -> Result<Vec<Entry>, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Same rule as SPIRE's sqlstore: `expiry != 0 AND expiry < expires_before`.
        let rows = sqlx::query("DELETE FROM registered_entries WHERE expires_at != 0 AND expires_at < ? RETURNING *")
            .bind(expires_before)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        let pruned = rows.iter().map(entry_from_row).collect::<Result<Vec<_>, _>>()?;
        if !pruned.is_empty() {
            self.notify(Change::Entries);
        }
        Ok(pruned)
    }

    async fn create_join_token(&self, token: &str, expires_at: i64) -> Result<(), DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sqlx::query("INSERT INTO join_tokens (token_hash, expires_at) VALUES (?, ?)")
            .bind(join_token_hash(token))
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => DatastoreError::AlreadyExists { what: "join token" },
                other => db_err(other),
            })?;
        Ok(())
    }

    async fn take_join_token(&self, token: &str) -> Result<Option<i64>, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let row = sqlx::query("DELETE FROM join_tokens WHERE token_hash = ? RETURNING expires_at")
            .bind(join_token_hash(token))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.get("expires_at")))
    }

    async fn create_attested_node(&self, n: &AttestedNode) -> Result<(), DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sqlx::query("INSERT INTO attested_nodes (spiffe_id, attestation_type, cert_serial_number, cert_not_after, new_cert_serial_number, new_cert_not_after, can_reattest, selectors, created_at) VALUES (?,?,?,?,?,?,?,?,?)")
            .bind(n.spiffe_id.as_str()).bind(&n.attestation_type).bind(&n.cert_serial_number).bind(n.cert_not_after)
            .bind(&n.new_cert_serial_number).bind(n.new_cert_not_after).bind(n.can_reattest).bind(selectors_json(&n.selectors)?).bind(now())
            .execute(&self.pool).await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => DatastoreError::AlreadyExists { what: "attested node" },
                other => db_err(other),
            })?;
        self.notify(Change::Nodes);
        Ok(())
    }

    async fn get_attested_node(&self, id: &SpiffeId) -> Result<Option<AttestedNode>, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let row = sqlx::query("SELECT * FROM attested_nodes WHERE spiffe_id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(node_from_row).transpose()
    }

    async fn list_attested_nodes(&self) -> Result<Vec<AttestedNode>, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rows = sqlx::query("SELECT * FROM attested_nodes ORDER BY spiffe_id").fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(node_from_row).collect()
    }

    async fn update_attested_node(&self, n: &AttestedNode) -> Result<(), DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let done = sqlx::query("UPDATE attested_nodes SET attestation_type=?, cert_serial_number=?, cert_not_after=?, new_cert_serial_number=?, new_cert_not_after=?, can_reattest=?, selectors=? WHERE spiffe_id=?")
            .bind(&n.attestation_type).bind(&n.cert_serial_number).bind(n.cert_not_after).bind(&n.new_cert_serial_number)
            .bind(n.new_cert_not_after).bind(n.can_reattest).bind(selectors_json(&n.selectors)?).bind(n.spiffe_id.as_str())
            .execute(&self.pool).await.map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(DatastoreError::NotFound("agent"));
        }
        self.notify(Change::Nodes);
        Ok(())
    }

    async fn delete_attested_node(&self, id: &SpiffeId) -> Result<AttestedNode, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(node) = self.get_attested_node(id).await? else { return Err(DatastoreError::NotFound("agent")) };
        sqlx::query("DELETE FROM attested_nodes WHERE spiffe_id = ?").bind(id.as_str()).execute(&self.pool).await.map_err(db_err)?;
        self.notify(Change::Nodes);
        Ok(node)
    }

    async fn get_ca_journal(&self, server_key: &str) -> Result<Option<String>, DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let row = sqlx::query("SELECT data FROM ca_journals WHERE server_key = ?")
            .bind(server_key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.get("data")))
    }

    async fn set_ca_journal(&self, server_key: &str, data: &str) -> Result<(), DatastoreError> {
        self.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sqlx::query("INSERT INTO ca_journals (server_key, data, updated_at) VALUES (?, ?, ?) ON CONFLICT(server_key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at")
            .bind(server_key).bind(data).bind(now()).execute(&self.pool).await.map_err(db_err)?;
        Ok(())
    }

    fn watch_changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn query_count(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn sorted_selectors(s: &[Selector]) -> Vec<Selector> {
    let mut v = s.to_vec();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
        let ds = SqlDatastore::open("sqlite3", db.to_str().unwrap()).await.unwrap();
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
        let _ds = SqlDatastore::open("sqlite3", "sqlite::memory:").await.unwrap();
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
            let m = sqlx::migrate!("src/datastore/migrations/sqlite");
            let first = m.iter().next().unwrap();
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
        let ds = SqlDatastore::open("sqlite3", db.to_str().unwrap()).await.unwrap();
        assert!(!file_bytes_contain(&db, token), "plaintext left in the database file after migrating");
        assert_eq!(ds.take_join_token(token).await.unwrap(), Some(99));
    }
}
