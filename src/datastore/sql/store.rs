//! [`SqlDatastore`]: the [`Datastore`] on any [`Backend`], each statement written once.
//!
//! Statements are written with `?` placeholders and go through the dialect on their way to the
//! driver ([`Dialect::sql`]); the few constructs that differ (upserts, deletes that return what
//! they removed, the write lock) are asked of the dialect. Every check-then-write (the "similar
//! entry" check and its insert, a bundle's read-modify-write, an entry's revision bump) runs in
//! one write transaction ([`SqlDatastore::write_tx`]), so concurrent writers cannot interleave.

use super::codec::{
    EntryColumns, cert_not_after, corrupt, decode_bundle, empty_bundle, encode_bundle, federates_json, join_token_hash, json,
    parse_selectors, same_content, selectors_json, sorted_selectors,
};
use super::{Backend, Dialect};
use crate::datastore::feed::{ChangeFeed, ChangeReceiver, LocalFeed};
use crate::datastore::{AttestedNode, Change, Datastore, DatastoreError, Entry, EntryFilter};
use crate::spiffe::federation::{ClientProfile, Relationship};
use crate::spiffe::{Bundle, JwtAuthority, SpiffeId, TrustDomain};
use async_trait::async_trait;
use sqlx::migrate::Migrate;
use sqlx::query::Query;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Pool, Row, Transaction, Type};
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

/// A datastore on a SQL database.
#[derive(Debug)]
pub struct SqlDatastore<DB: Backend> {
    pool: Pool<DB>,
    dialect: Dialect,
    feed: Arc<dyn ChangeFeed>,
    /// The read replica (`ro_connection_string`), when configured.
    replica: Option<Replica<DB>>,
}

/// A read replica and how its reads went.
#[derive(Debug)]
struct Replica<DB: Backend> {
    pool: Pool<DB>,
    /// Snapshots it served.
    served: std::sync::atomic::AtomicU64,
    /// Snapshots the primary served because the replica was behind or failing.
    bypassed: std::sync::atomic::AtomicU64,
}

/// How often, and how far apart, a snapshot asks a replica whether it has caught up before it
/// reads the primary instead. A healthy streaming replica is a few milliseconds behind.
const REPLICA_CHECKS: u32 = 5;
const REPLICA_CHECK_GAP: std::time::Duration = std::time::Duration::from_millis(20);
/// How long a snapshot waits for a replica connection before the primary answers.
const REPLICA_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The value a delete is keyed by (see [`SqlDatastore::delete_returning`]).
#[derive(Clone, Copy)]
enum Key<'a> {
    Text(&'a str),
    Int(i64),
}

fn db_err(e: sqlx::Error) -> DatastoreError {
    DatastoreError::Database(e.to_string())
}

/// `db_err`, except that a unique-key violation means the record already exists.
fn insert_err(what: &'static str) -> impl Fn(sqlx::Error) -> DatastoreError {
    move |e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => DatastoreError::AlreadyExists { what },
        other => db_err(other),
    }
}

const INSERT_ENTRY: &str = "INSERT INTO registered_entries (entry_id, spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl, admin, downstream, federates_with, dns_names, expires_at, hint, store_svid, revision_number, created_at, disable_x509_svid_prefetch, jwt_svid_include_jti) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
const SIMILAR_ENTRY: &str = "SELECT * FROM registered_entries WHERE spiffe_id = ? AND parent_id = ? AND selectors = ?";

// === impl SqlDatastore ===

// The bounds say what the driver must support: running queries on a pool or a transaction,
// binding and decoding the Rust types the schema uses, naming columns, and migrating. Every sqlx
// driver meets them. They are spelled out (here and, identical, on the `Datastore` impl) because
// Rust does not carry bounds on other types along with a trait like `Backend`.
impl<DB> SqlDatastore<DB>
where
    DB: Backend,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'n> &'n str: ColumnIndex<DB::Row>,
{
    /// Connects to the database named by `connection_string` and brings its schema up to date.
    /// Changes are announced on an in-process [`LocalFeed`].
    ///
    /// # Errors
    /// A bad connection string, a failing database, or a failed migration.
    pub async fn connect(connection_string: &str) -> Result<Self, DatastoreError> {
        Self::connect_with(connection_string, &super::ConnectSettings::default()).await
    }

    /// [`SqlDatastore::connect`] with the pool sized by `pool`.
    ///
    /// # Errors
    /// As [`SqlDatastore::connect`].
    pub async fn connect_with(connection_string: &str, pool: &super::ConnectSettings) -> Result<Self, DatastoreError> {
        let settings = pool;
        let pool = DB::connect(connection_string, settings).await?;
        if settings.migrate {
            DB::migrator().run(&pool).await.map_err(|e| DatastoreError::Database(format!("migration: {e}")))?;
            DB::after_migrate(&pool).await?;
        } else {
            Self::check_schema(&pool).await?;
        }
        Ok(Self { pool, dialect: DB::DIALECT, feed: Arc::new(LocalFeed::new()), replica: None })
    }

    /// With migrations off (`disable_migration`): the schema must be exactly what this build's
    /// migrations make, or the server would run queries against tables that are not there.
    async fn check_schema(pool: &Pool<DB>) -> Result<(), DatastoreError> {
        let mut conn = pool.acquire().await.map_err(db_err)?;
        let applied = conn.list_applied_migrations().await.map_err(|e| {
            DatastoreError::Config(format!(
                "disable_migration is set but the database has no cairn schema ({e}); start once without disable_migration to create it"
            ))
        })?;
        for m in DB::migrator().iter().filter(|m| m.migration_type.is_up_migration()) {
            match applied.iter().find(|a| a.version == m.version) {
                None => {
                    return Err(DatastoreError::Config(format!(
                        "disable_migration is set but the schema is not current: migration {} ({}) has not been applied; start one server without disable_migration to apply it",
                        m.version, m.description
                    )));
                }
                Some(a) if a.checksum != m.checksum => {
                    return Err(DatastoreError::Config(format!(
                        "schema migration {} ({}) in the database differs from this build's",
                        m.version, m.description
                    )));
                }
                Some(_) => {}
            }
        }
        if let Some(a) = applied.iter().find(|a| !DB::migrator().iter().any(|m| m.version == a.version)) {
            return Err(DatastoreError::Config(format!(
                "the database schema is newer than this build (migration {} is unknown to it)",
                a.version
            )));
        }
        Ok(())
    }

    /// Serves reads that tolerate staleness (the entry cache's snapshots) from the read replica
    /// at `ro_connection_string`, when given; the replica is never written to.
    ///
    /// # Errors
    /// A bad connection string or an unreachable replica.
    pub async fn with_replica(
        mut self,
        ro_connection_string: Option<&str>,
        settings: &super::ConnectSettings,
    ) -> Result<Self, DatastoreError> {
        if let Some(ro) = ro_connection_string.filter(|s| !s.is_empty()) {
            let settings = super::ConnectSettings { acquire_timeout: REPLICA_ACQUIRE_TIMEOUT, ..settings.clone() };
            let pool = DB::connect(ro, &settings).await.map_err(|e| match e {
                DatastoreError::Config(m) => DatastoreError::Config(format!("ro_connection_string: {m}")),
                DatastoreError::Database(m) => DatastoreError::Database(format!("read replica (ro_connection_string): {m}")),
                other => other,
            })?;
            self.replica = Some(Replica { pool, served: 0.into(), bypassed: 0.into() });
        }
        Ok(self)
    }

    /// Entry-cache snapshots served by the replica, and by the primary instead because the
    /// replica was behind or failing.
    #[must_use]
    pub fn replica_reads(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.replica.as_ref().map_or((0, 0), |r| (r.served.load(Relaxed), r.bypassed.load(Relaxed)))
    }

    /// Every entry and node, from `pool`.
    async fn snapshot_from(&self, pool: &Pool<DB>) -> Result<(Vec<Entry>, Vec<AttestedNode>), DatastoreError> {
        let entries = match DB::read_all_entries(pool).await? {
            Some(entries) => entries,
            None => self.select_entries(pool, &EntryFilter::default()).await?,
        };
        Ok((entries, self.select_nodes(pool).await?))
    }

    /// The snapshot from the replica if it has applied everything the primary had committed
    /// when this was called; `None` when it has not (or the database cannot say).
    async fn replica_snapshot(&self, r: &Replica<DB>) -> Result<Option<(Vec<Entry>, Vec<AttestedNode>)>, DatastoreError> {
        // Every change this process has been told of (its own writes, and other servers' through
        // the events table) committed on the primary before this position was read.
        let Some(position) = DB::log_position(&self.pool).await? else { return Ok(None) };
        for attempt in 0..REPLICA_CHECKS {
            if DB::has_applied(&r.pool, &position).await? {
                // The replica only moves forward: what it returns now includes the position.
                return self.snapshot_from(&r.pool).await.map(Some);
            }
            if attempt + 1 < REPLICA_CHECKS {
                tokio::time::sleep(REPLICA_CHECK_GAP).await;
            }
        }
        Ok(None)
    }

    /// Announces changes through the database's events table, so that every server sharing the
    /// database hears every other's writes (see [`super::shared_feed`]).
    #[must_use]
    pub fn shared(mut self) -> Self {
        self.feed = super::shared_feed::TableFeed::start(self.pool.clone());
        self
    }

    /// Announces changes on `feed` instead (a feed shared by every server on the database).
    #[must_use]
    pub fn with_feed(mut self, feed: Arc<dyn ChangeFeed>) -> Self {
        self.feed = feed;
        self
    }

    /// Renders statements with `dialect` instead of the backend's: lets tests run the other
    /// dialects' code paths (numbered placeholders, no `RETURNING`) on SQLite.
    #[cfg(test)]
    pub(crate) fn with_dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    fn sql<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.dialect.sql(text)
    }

    /// Entries matching `f`, from `pool` (the primary or the replica).
    async fn select_entries(&self, pool: &Pool<DB>, f: &EntryFilter) -> Result<Vec<Entry>, DatastoreError> {
        let mut text = String::from("SELECT * FROM registered_entries WHERE 1=1");
        if f.spiffe_id.is_some() {
            text.push_str(" AND spiffe_id = ?");
        }
        if f.parent_id.is_some() {
            text.push_str(" AND parent_id = ?");
        }
        if f.selectors_exact.is_some() {
            text.push_str(" AND selectors = ?");
        }
        if f.downstream.is_some() {
            text.push_str(" AND downstream = ?");
        }
        text.push_str(" ORDER BY entry_id");
        let sql = self.sql(&text);
        let mut q = sqlx::query::<DB>(&sql);
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
        // Decoded row by row as they stream in: at a million entries, holding every raw row
        // and every decoded entry at once doubled the peak memory of the cache's full read.
        let mut rows = q.fetch(pool);
        let mut out = Vec::new();
        while let Some(row) = futures::TryStreamExt::try_next(&mut rows).await.map_err(db_err)? {
            out.push(entry_from_row::<DB>(&row)?);
        }
        Ok(out)
    }

    /// Every attested node, from `pool`.
    async fn select_nodes(&self, pool: &Pool<DB>) -> Result<Vec<AttestedNode>, DatastoreError> {
        let rows = sqlx::query::<DB>("SELECT * FROM attested_nodes ORDER BY spiffe_id").fetch_all(pool).await.map_err(db_err)?;
        rows.iter().map(node_from_row::<DB>).collect()
    }

    /// A transaction for a read followed by a write to `table`: it holds the dialect's write
    /// lock from the start, so what it read is still true when it writes.
    async fn write_tx(&self, table: &str) -> Result<Transaction<'static, DB>, DatastoreError> {
        let mut tx = self.pool.begin_with(self.dialect.begin_write).await.map_err(db_err)?;
        if let Some(lock) = self.dialect.lock_statement(table) {
            sqlx::query::<DB>(&lock).execute(&mut *tx).await.map_err(db_err)?;
        }
        Ok(tx)
    }

    fn bind_key<'q>(q: Query<'q, DB, DB::Arguments<'q>>, key: Key<'q>) -> Query<'q, DB, DB::Arguments<'q>> {
        match key {
            Key::Text(s) => q.bind(s),
            Key::Int(n) => q.bind(n),
        }
    }

    /// Deletes the rows of `table` matching `condition` (one `?`, bound to `key`) and returns
    /// their `columns`: with `DELETE ... RETURNING` where the dialect has it, otherwise by
    /// selecting and deleting under the write lock, so no one else deletes or changes them in
    /// between.
    async fn delete_returning(&self, table: &str, columns: &str, condition: &str, key: Key<'_>) -> Result<Vec<DB::Row>, DatastoreError> {
        if self.dialect.delete_returning {
            let text = format!("DELETE FROM {table} WHERE {condition} RETURNING {columns}");
            let sql = self.sql(&text);
            return Self::bind_key(sqlx::query(&sql), key).fetch_all(&self.pool).await.map_err(db_err);
        }
        let mut tx = self.write_tx(table).await?;
        let select = format!("SELECT {columns} FROM {table} WHERE {condition}");
        let select = self.sql(&select);
        let rows = Self::bind_key(sqlx::query(&select), key).fetch_all(&mut *tx).await.map_err(db_err)?;
        if !rows.is_empty() {
            let delete = format!("DELETE FROM {table} WHERE {condition}");
            let delete = self.sql(&delete);
            Self::bind_key(sqlx::query(&delete), key).execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(rows)
    }

    /// Reads the bundle of `td` (or an empty one), lets `change` edit it, and stores it with the
    /// next sequence number, all under the write lock. `change` gets whether the bundle existed
    /// and answers whether it changed anything; an existing bundle left unchanged is not
    /// written (its sequence number stays), a new one always is.
    async fn modify_bundle(
        &self,
        td: &TrustDomain,
        change: impl FnOnce(&mut Bundle, bool) -> Result<bool, DatastoreError> + Send,
    ) -> Result<Bundle, DatastoreError> {
        let mut tx = self.write_tx("bundles").await?;
        let (bundle, written) = self.modify_bundle_in(&mut tx, td, change).await?;
        if written {
            tx.commit().await.map_err(db_err)?;
            self.feed.publish(Change::Bundle).await;
        }
        Ok(bundle)
    }

    /// [`SqlDatastore::modify_bundle`] inside `tx`, which must hold the `bundles` write lock;
    /// answers the bundle and whether it was written. The caller commits.
    async fn modify_bundle_in(
        &self,
        tx: &mut Transaction<'static, DB>,
        td: &TrustDomain,
        change: impl FnOnce(&mut Bundle, bool) -> Result<bool, DatastoreError> + Send,
    ) -> Result<(Bundle, bool), DatastoreError> {
        let row = sqlx::query::<DB>(&self.sql("SELECT data, sequence_number FROM bundles WHERE trust_domain = ?"))
            .bind(td.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?;
        let (mut bundle, existed) = match row {
            Some(r) => {
                (decode_bundle(td.as_str(), &col::<DB, String>(&r, "data", "bundle")?, col(&r, "sequence_number", "bundle")?)?, true)
            }
            None => (empty_bundle(td), false),
        };
        if !change(&mut bundle, existed)? && existed {
            return Ok((bundle, false));
        }
        bundle.sequence_number += 1;
        let data = encode_bundle(&bundle)?;
        let seq = i64::try_from(bundle.sequence_number).map_err(|e| corrupt("bundle", e))?;
        let upsert = self.dialect.upsert("bundles", "trust_domain", &["trust_domain", "data", "sequence_number", "updated_at"]);
        sqlx::query::<DB>(&self.sql(&upsert))
            .bind(td.as_str())
            .bind(data)
            .bind(seq)
            .bind(crate::now_unix())
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        Ok((bundle, true))
    }

    /// Writes a federation relationship (`INSERT` when `create`, else `UPDATE` of an existing
    /// one) and, when given, its trust domain's bundle, in one transaction.
    async fn write_relationship(&self, rel: &Relationship, bundle: Option<&Bundle>, create: bool) -> Result<Relationship, DatastoreError> {
        if let Some(b) = bundle
            && b.trust_domain != rel.trust_domain
        {
            return Err(DatastoreError::Config(format!(
                "trust domain bundle ({}) must match the trust domain of the federation relationship ({})",
                b.trust_domain, rel.trust_domain
            )));
        }
        let endpoint_id = match &rel.profile {
            ClientProfile::HttpsWeb => String::new(),
            ClientProfile::HttpsSpiffe { endpoint_spiffe_id } => endpoint_spiffe_id.to_string(),
        };
        // The relationship is one statement; the lock is for the bundle's read-modify-write.
        let mut tx = self.write_tx("bundles").await?;
        let text = if create {
            "INSERT INTO federation_relationships (bundle_endpoint_url, bundle_endpoint_profile, endpoint_spiffe_id, trust_domain) VALUES (?, ?, ?, ?)"
        } else {
            "UPDATE federation_relationships SET bundle_endpoint_url = ?, bundle_endpoint_profile = ?, endpoint_spiffe_id = ? WHERE trust_domain = ?"
        };
        let done = sqlx::query::<DB>(&self.sql(text))
            .bind(rel.bundle_endpoint_url.as_str())
            .bind(rel.profile.name())
            .bind(endpoint_id)
            .bind(rel.trust_domain.as_str())
            .execute(&mut *tx)
            .await
            .map_err(insert_err("federation relationship"))?;
        if DB::rows_affected(&done) == 0 {
            return Err(DatastoreError::NotFound("federation relationship"));
        }
        let mut bundle_written = false;
        if let Some(b) = bundle {
            bundle_written = self.modify_bundle_in(&mut tx, &rel.trust_domain, |stored, _| Ok(replace_content(stored, b))).await?.1;
        }
        tx.commit().await.map_err(db_err)?;
        self.feed.publish(Change::Relationships).await;
        if bundle_written {
            self.feed.publish(Change::Bundle).await;
        }
        Ok(rel.clone())
    }

    /// The similar entry (same SPIFFE ID, parent and selector set), through `ex`: the pool for
    /// a plain lookup, the creating transaction for the check before an insert.
    async fn similar_entry<'c, E>(&self, ex: E, e: &Entry) -> Result<Option<Entry>, DatastoreError>
    where
        E: Executor<'c, Database = DB>,
    {
        let row = sqlx::query::<DB>(&self.sql(SIMILAR_ENTRY))
            .bind(e.spiffe_id.as_str())
            .bind(e.parent_id.as_str())
            .bind(selectors_json(&e.selectors)?)
            .fetch_optional(ex)
            .await
            .map_err(db_err)?;
        row.as_ref().map(entry_from_row::<DB>).transpose()
    }

    /// Binds one row of [`INSERT_ENTRY`]'s values for `entry`, its selectors already encoded
    /// as `selectors` (the single insert and the bulk one share the column order here).
    fn bind_new_entry<'q>(
        q: Query<'q, DB, DB::Arguments<'q>>,
        entry: &'q Entry,
        selectors: String,
    ) -> Result<Query<'q, DB, DB::Arguments<'q>>, DatastoreError> {
        Ok(q.bind(entry.id.as_str())
            .bind(entry.spiffe_id.as_str())
            .bind(entry.parent_id.as_str())
            .bind(selectors)
            .bind(entry.x509_svid_ttl)
            .bind(entry.jwt_svid_ttl)
            .bind(entry.admin)
            .bind(entry.downstream)
            .bind(federates_json(&entry.federates_with)?)
            .bind(json(&entry.dns_names)?)
            .bind(entry.expires_at)
            .bind(entry.hint.as_str())
            .bind(entry.store_svid)
            .bind(entry.revision_number)
            .bind(entry.created_at)
            .bind(entry.disable_x509_svid_prefetch)
            .bind(entry.jwt_svid_include_jti))
    }

    /// Creates `entries` in one write transaction with a few statements per 500 entries,
    /// whatever the batch size: the taken ids and the similar entries (same SPIFFE ID, parent
    /// and selectors) already stored are read in bulk under the write lock, each entry is
    /// checked against them and against the entries before it in the batch, and the accepted
    /// ones are inserted with multi-row INSERTs. Each entry gets the answer
    /// [`Self::create_entry_in`] would have given it. Any other error rolls everything back and
    /// is returned.
    async fn create_entries_in_bulk(&self, entries: &[Entry], now: i64) -> Result<Vec<Result<Entry, DatastoreError>>, DatastoreError> {
        // Statements stay far below every dialect's bound-parameter limit (SQLite's is 32,766).
        const CHUNK: usize = 500;
        let mut tx = self.write_tx("registered_entries").await?;
        let mut taken: HashSet<String> = HashSet::new();
        let mut similar: HashSet<(String, String, String)> = HashSet::new();
        for chunk in entries.chunks(CHUNK) {
            let marks = vec!["?"; chunk.len()].join(",");
            let sql = self.sql(&format!("SELECT entry_id FROM registered_entries WHERE entry_id IN ({marks})")).into_owned();
            let mut q = sqlx::query::<DB>(&sql);
            for e in chunk {
                q = q.bind(e.id.as_str());
            }
            for row in q.fetch_all(&mut *tx).await.map_err(db_err)? {
                taken.insert(col(&row, "entry_id", "entry")?);
            }
            let sql = self
                .sql(&format!("SELECT spiffe_id, parent_id, selectors FROM registered_entries WHERE spiffe_id IN ({marks})"))
                .into_owned();
            let mut q = sqlx::query::<DB>(&sql);
            for e in chunk {
                q = q.bind(e.spiffe_id.as_str());
            }
            for row in q.fetch_all(&mut *tx).await.map_err(db_err)? {
                similar.insert((col(&row, "spiffe_id", "entry")?, col(&row, "parent_id", "entry")?, col(&row, "selectors", "entry")?));
            }
        }
        let mut results = Vec::with_capacity(entries.len());
        let mut accepted: Vec<(Entry, String)> = Vec::with_capacity(entries.len());
        for e in entries {
            let selectors = selectors_json(&e.selectors)?;
            let key = (e.spiffe_id.as_str().to_owned(), e.parent_id.as_str().to_owned(), selectors);
            if similar.contains(&key) {
                results.push(Err(DatastoreError::AlreadyExists { what: "similar entry" }));
                continue;
            }
            if !taken.insert(e.id.clone()) {
                results.push(Err(DatastoreError::AlreadyExists { what: "entry id" }));
                continue;
            }
            let mut entry = e.clone();
            entry.revision_number = 0;
            entry.created_at = now;
            entry.selectors = sorted_selectors(&entry.selectors);
            results.push(Ok(entry.clone()));
            accepted.push((entry, key.2.clone()));
            similar.insert(key);
        }
        let values = INSERT_ENTRY.split_once(" VALUES ").map_or("", |(_, v)| v);
        let head = INSERT_ENTRY.split_once(" VALUES ").map_or(INSERT_ENTRY, |(h, _)| h);
        for chunk in accepted.chunks(CHUNK) {
            let sql = self.sql(&format!("{head} VALUES {}", vec![values; chunk.len()].join(", "))).into_owned();
            let mut q = sqlx::query::<DB>(&sql);
            for (entry, selectors) in chunk {
                q = Self::bind_new_entry(q, entry, selectors.clone())?;
            }
            q.execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        if !accepted.is_empty() {
            self.feed.publish_ids(Change::Entries, accepted.into_iter().map(|(e, _)| e.id).collect()).await;
        }
        Ok(results)
    }

    /// Replaces entry `e` inside `tx`, bumping its revision; `NotFound` if there is none.
    async fn update_entry_in(&self, tx: &mut Transaction<'static, DB>, e: &Entry) -> Result<Entry, DatastoreError> {
        let row = sqlx::query::<DB>(&self.sql("SELECT revision_number, created_at FROM registered_entries WHERE entry_id = ?"))
            .bind(&e.id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?;
        let Some(row) = row else { return Err(DatastoreError::NotFound("entry")) };
        let mut entry = e.clone();
        entry.revision_number = col::<DB, i64>(&row, "revision_number", "entry")? + 1;
        entry.created_at = col(&row, "created_at", "entry")?;
        entry.selectors = sorted_selectors(&entry.selectors);
        sqlx::query::<DB>(&self.sql(
            "UPDATE registered_entries SET spiffe_id = ?, parent_id = ?, selectors = ?, x509_svid_ttl = ?, jwt_svid_ttl = ?, admin = ?, downstream = ?, federates_with = ?, dns_names = ?, expires_at = ?, hint = ?, store_svid = ?, revision_number = ?, disable_x509_svid_prefetch = ?, jwt_svid_include_jti = ? WHERE entry_id = ?",
        ))
        .bind(entry.spiffe_id.as_str())
        .bind(entry.parent_id.as_str())
        .bind(selectors_json(&entry.selectors)?)
        .bind(entry.x509_svid_ttl)
        .bind(entry.jwt_svid_ttl)
        .bind(entry.admin)
        .bind(entry.downstream)
        .bind(federates_json(&entry.federates_with)?)
        .bind(json(&entry.dns_names)?)
        .bind(entry.expires_at)
        .bind(&entry.hint)
        .bind(entry.store_svid)
        .bind(entry.revision_number)
        .bind(entry.disable_x509_svid_prefetch)
        .bind(entry.jwt_svid_include_jti)
        .bind(&entry.id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(entry)
    }

    /// Deletes entry `id` inside `tx`, returning it; `NotFound` if there is none.
    async fn delete_entry_in(&self, tx: &mut Transaction<'static, DB>, id: &str) -> Result<Entry, DatastoreError> {
        let row = sqlx::query::<DB>(&self.sql("SELECT * FROM registered_entries WHERE entry_id = ?"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?;
        let Some(row) = row else { return Err(DatastoreError::NotFound("entry")) };
        let entry = entry_from_row::<DB>(&row)?;
        sqlx::query::<DB>(&self.sql("DELETE FROM registered_entries WHERE entry_id = ?"))
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        Ok(entry)
    }

    /// Runs `op` for every item inside one write transaction on the entries table and commits
    /// once. `NotFound` and `AlreadyExists` are the item's own answer; any other error rolls
    /// the batch back and is returned (the caller then goes item by item).
    async fn batch_in_one_tx<T, F>(&self, items: &[T], op: F) -> Result<Vec<Result<Entry, DatastoreError>>, DatastoreError>
    where
        T: Sync,
        F: for<'a> Fn(
            &'a Self,
            &'a mut Transaction<'static, DB>,
            &'a T,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Entry, DatastoreError>> + Send + 'a>>,
    {
        let mut tx = self.write_tx("registered_entries").await?;
        let mut results = Vec::with_capacity(items.len());
        let mut changed = Vec::new();
        for item in items {
            match op(self, &mut tx, item).await {
                Ok(e) => {
                    changed.push(e.id.clone());
                    results.push(Ok(e));
                }
                Err(e @ (DatastoreError::NotFound(_) | DatastoreError::AlreadyExists { .. })) => results.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        tx.commit().await.map_err(db_err)?;
        if !changed.is_empty() {
            self.feed.publish_ids(Change::Entries, changed).await;
        }
        Ok(results)
    }

    /// Creates entry `e` inside `tx` (created at `now`): `AlreadyExists` if a similar entry
    /// or one with its id exists (the transaction sees its own inserts, so this holds within a
    /// batch too).
    async fn create_entry_in(&self, tx: &mut Transaction<'static, DB>, e: &Entry, now: i64) -> Result<Entry, DatastoreError> {
        if self.similar_entry(&mut **tx, e).await?.is_some() {
            return Err(DatastoreError::AlreadyExists { what: "similar entry" });
        }
        let taken = sqlx::query::<DB>(&self.sql("SELECT entry_id FROM registered_entries WHERE entry_id = ?"))
            .bind(&e.id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?
            .is_some();
        if taken {
            return Err(DatastoreError::AlreadyExists { what: "entry id" });
        }
        let mut entry = e.clone();
        entry.revision_number = 0;
        entry.created_at = now;
        let sql = self.sql(INSERT_ENTRY);
        Self::bind_new_entry(sqlx::query::<DB>(&sql), &entry, selectors_json(&entry.selectors)?)?
            .execute(&mut **tx)
            .await
            .map_err(insert_err("entry id"))?;
        entry.selectors = sorted_selectors(&entry.selectors);
        Ok(entry)
    }
}

/// Column `name` of `row`; a value that does not decode means a damaged `what` record.
fn col<'r, DB, T>(row: &'r DB::Row, name: &str, what: &'static str) -> Result<T, DatastoreError>
where
    DB: sqlx::Database,
    T: FromColumn<'r, DB>,
    for<'n> &'n str: ColumnIndex<DB::Row>,
{
    T::get(row, name).map_err(|e| corrupt(what, e))
}

/// How one column type is read.
trait FromColumn<'r, DB: sqlx::Database>: Sized {
    fn get(row: &'r DB::Row, name: &str) -> Result<Self, sqlx::Error>
    where
        for<'n> &'n str: ColumnIndex<DB::Row>;
}

/// Text is read without sqlx's type check: MySQL flags text in a `_bin` collation (cairn's, so
/// that IDs compare byte for byte) as binary, which sqlx would refuse as a `String`; decoding
/// still checks that the bytes are UTF-8.
impl<'r, DB> FromColumn<'r, DB> for String
where
    DB: sqlx::Database,
    String: Decode<'r, DB> + Type<DB>,
{
    fn get(row: &'r DB::Row, name: &str) -> Result<Self, sqlx::Error>
    where
        for<'n> &'n str: ColumnIndex<DB::Row>,
    {
        row.try_get_unchecked(name)
    }
}

impl<'r, DB> FromColumn<'r, DB> for &'r str
where
    DB: sqlx::Database,
    &'r str: Decode<'r, DB> + Type<DB>,
{
    fn get(row: &'r DB::Row, name: &str) -> Result<Self, sqlx::Error>
    where
        for<'n> &'n str: ColumnIndex<DB::Row>,
    {
        row.try_get_unchecked(name)
    }
}

macro_rules! checked_column {
    ($($t:ty),*) => {$(
        impl<'r, DB> FromColumn<'r, DB> for $t
        where
            DB: sqlx::Database,
            $t: Decode<'r, DB> + Type<DB>,
        {
            fn get(row: &'r DB::Row, name: &str) -> Result<Self, sqlx::Error>
            where
                for<'n> &'n str: ColumnIndex<DB::Row>,
            {
                row.try_get(name)
            }
        }
    )*};
}
checked_column!(i64, i32, bool);

fn entry_from_row<DB>(row: &DB::Row) -> Result<Entry, DatastoreError>
where
    DB: sqlx::Database,
    for<'q> &'q str: Decode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> i32: Decode<'q, DB> + Type<DB>,
    for<'q> bool: Decode<'q, DB> + Type<DB>,
    for<'n> &'n str: ColumnIndex<DB::Row>,
{
    const W: &str = "entry";
    EntryColumns {
        entry_id: col(row, "entry_id", W)?,
        spiffe_id: col(row, "spiffe_id", W)?,
        parent_id: col(row, "parent_id", W)?,
        selectors: col(row, "selectors", W)?,
        x509_svid_ttl: col(row, "x509_svid_ttl", W)?,
        jwt_svid_ttl: col(row, "jwt_svid_ttl", W)?,
        admin: col(row, "admin", W)?,
        downstream: col(row, "downstream", W)?,
        federates_with: col(row, "federates_with", W)?,
        dns_names: col(row, "dns_names", W)?,
        expires_at: col(row, "expires_at", W)?,
        hint: col(row, "hint", W)?,
        store_svid: col(row, "store_svid", W)?,
        disable_x509_svid_prefetch: col(row, "disable_x509_svid_prefetch", W)?,
        jwt_svid_include_jti: col(row, "jwt_svid_include_jti", W)?,
        revision_number: col(row, "revision_number", W)?,
        created_at: col(row, "created_at", W)?,
    }
    .decode()
}

const RELATIONSHIP_COLUMNS: &str = "trust_domain, bundle_endpoint_url, bundle_endpoint_profile, endpoint_spiffe_id";

fn relationship_from_row<DB>(row: &DB::Row) -> Result<Relationship, DatastoreError>
where
    DB: Backend,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'n> &'n str: ColumnIndex<DB::Row>,
{
    const WHAT: &str = "federation relationship";
    let td: String = col::<DB, String>(row, "trust_domain", WHAT)?;
    let trust_domain = TrustDomain::new(&td).map_err(|e| corrupt(WHAT, e))?;
    let profile = match col::<DB, String>(row, "bundle_endpoint_profile", WHAT)?.as_str() {
        "https_web" => ClientProfile::HttpsWeb,
        "https_spiffe" => ClientProfile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::new(&col::<DB, String>(row, "endpoint_spiffe_id", WHAT)?).map_err(|e| corrupt(WHAT, e))?,
        },
        other => return Err(corrupt(WHAT, format!("unknown bundle endpoint profile type: {other:?}"))),
    };
    Ok(Relationship { trust_domain, bundle_endpoint_url: col(row, "bundle_endpoint_url", WHAT)?, profile })
}

fn node_from_row<DB>(row: &DB::Row) -> Result<AttestedNode, DatastoreError>
where
    DB: sqlx::Database,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> bool: Decode<'q, DB> + Type<DB>,
    for<'n> &'n str: ColumnIndex<DB::Row>,
{
    const W: &str = "attested node";
    Ok(AttestedNode {
        spiffe_id: SpiffeId::new(&col::<DB, String>(row, "spiffe_id", W)?).map_err(|e| corrupt(W, e))?,
        attestation_type: col(row, "attestation_type", W)?,
        cert_serial_number: col(row, "cert_serial_number", W)?,
        cert_not_after: col(row, "cert_not_after", W)?,
        new_cert_serial_number: col(row, "new_cert_serial_number", W)?,
        new_cert_not_after: col(row, "new_cert_not_after", W)?,
        can_reattest: col(row, "can_reattest", W)?,
        selectors: parse_selectors(W, &col::<DB, String>(row, "selectors", W)?)?,
        created_at: col(row, "created_at", W)?,
        agent_version: col(row, "agent_version", W)?,
    })
}

#[async_trait]
impl<DB> Datastore for SqlDatastore<DB>
where
    DB: Backend,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'n> &'n str: ColumnIndex<DB::Row>,
{
    async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>, DatastoreError> {
        let row = sqlx::query::<DB>(&self.sql("SELECT data, sequence_number FROM bundles WHERE trust_domain = ?"))
            .bind(td.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| decode_bundle(td.as_str(), &col::<DB, String>(&r, "data", "bundle")?, col(&r, "sequence_number", "bundle")?))
            .transpose()
    }

    async fn list_bundles(&self) -> Result<Vec<Bundle>, DatastoreError> {
        let rows = sqlx::query::<DB>("SELECT trust_domain, data, sequence_number FROM bundles ORDER BY trust_domain")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                decode_bundle(
                    &col::<DB, String>(r, "trust_domain", "bundle")?,
                    &col::<DB, String>(r, "data", "bundle")?,
                    col(r, "sequence_number", "bundle")?,
                )
            })
            .collect()
    }

    async fn append_bundle(&self, td: &TrustDomain, x509: &[Vec<u8>], jwt: &[JwtAuthority]) -> Result<Bundle, DatastoreError> {
        self.modify_bundle(td, |b, _| {
            let mut changed = false;
            for der in x509 {
                if !b.x509_authorities.contains(der) {
                    b.x509_authorities.push(der.clone());
                    changed = true;
                }
            }
            for key in jwt {
                match b.jwt_authorities.iter_mut().find(|k| k.key_id == key.key_id && k.public_key == key.public_key) {
                    None => {
                        b.jwt_authorities.push(key.clone());
                        changed = true;
                    }
                    // The same key with another expiry: SPIRE compares whole keys and would
                    // keep both (two entries under one kid); cairn keeps one, with the expiry
                    // appended last, so the caller's change is not dropped either.
                    Some(k) if k.expires_at != key.expires_at => {
                        k.expires_at = key.expires_at;
                        changed = true;
                    }
                    Some(_) => {}
                }
            }
            Ok(changed)
        })
        .await
    }

    async fn set_bundle(&self, bundle: &Bundle) -> Result<Bundle, DatastoreError> {
        self.modify_bundle(&bundle.trust_domain, |b, _| Ok(replace_content(b, bundle))).await
    }

    async fn create_bundle(&self, bundle: &Bundle) -> Result<Bundle, DatastoreError> {
        self.modify_bundle(&bundle.trust_domain, |b, existed| {
            if existed {
                return Err(DatastoreError::AlreadyExists { what: "bundle" });
            }
            Ok(replace_content(b, bundle))
        })
        .await
    }

    async fn delete_bundle(&self, td: &TrustDomain) -> Result<(), DatastoreError> {
        let done = sqlx::query::<DB>(&self.sql("DELETE FROM bundles WHERE trust_domain = ?"))
            .bind(td.as_str())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        if DB::rows_affected(&done) == 0 {
            return Err(DatastoreError::NotFound("bundle"));
        }
        self.feed.publish(Change::Bundle).await;
        Ok(())
    }

    async fn prune_bundle(&self, td: &TrustDomain, before: i64) -> Result<bool, DatastoreError> {
        let mut pruned = false;
        self.modify_bundle(td, |b, _| {
            let n = b.x509_authorities.len() + b.jwt_authorities.len();
            // Never prune the last root: an empty bundle would distrust everything.
            let keep: Vec<Vec<u8>> = b.x509_authorities.iter().filter(|d| cert_not_after(d).is_none_or(|t| t >= before)).cloned().collect();
            if !keep.is_empty() {
                b.x509_authorities = keep;
            }
            b.jwt_authorities.retain(|k| k.expires_at == 0 || k.expires_at >= before);
            pruned = n != b.x509_authorities.len() + b.jwt_authorities.len();
            Ok(pruned)
        })
        .await?;
        Ok(pruned)
    }

    async fn create_entry(&self, e: &Entry) -> Result<Entry, DatastoreError> {
        // The checks and the insert share one write transaction: two creators of the same
        // entry queue on the write lock, and the second one sees the first one's row.
        let mut tx = self.write_tx("registered_entries").await?;
        let entry = self.create_entry_in(&mut tx, e, crate::now_unix()).await?;
        tx.commit().await.map_err(db_err)?;
        self.feed.publish_ids(Change::Entries, vec![entry.id.clone()]).await;
        Ok(entry)
    }

    async fn create_entries(&self, entries: &[Entry]) -> Vec<Result<Entry, DatastoreError>> {
        if entries.len() > 1 {
            match self.create_entries_in_bulk(entries, crate::now_unix()).await {
                Ok(results) => return results,
                // Nothing was written (the transaction rolled back): one at a time, so each
                // entry gets its own answer.
                Err(e) => tracing::debug!(error = %e, entries = entries.len(), "batch insert failed; creating entries one by one"),
            }
        }
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push(self.create_entry(e).await);
        }
        out
    }

    async fn find_similar_entry(&self, e: &Entry) -> Result<Option<Entry>, DatastoreError> {
        self.similar_entry(&self.pool, e).await
    }

    async fn get_entry(&self, id: &str) -> Result<Option<Entry>, DatastoreError> {
        let row = sqlx::query::<DB>(&self.sql("SELECT * FROM registered_entries WHERE entry_id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(entry_from_row::<DB>).transpose()
    }

    async fn get_entries(&self, ids: &[String]) -> Result<Vec<Entry>, DatastoreError> {
        // Chunks keep every dialect under its bound-parameter limit.
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(",");
            let sql = self.sql(&format!("SELECT * FROM registered_entries WHERE entry_id IN ({marks})")).into_owned();
            let mut q = sqlx::query::<DB>(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            for row in q.fetch_all(&self.pool).await.map_err(db_err)? {
                out.push(entry_from_row::<DB>(&row)?);
            }
        }
        Ok(out)
    }

    async fn list_entries(&self, f: &EntryFilter) -> Result<Vec<Entry>, DatastoreError> {
        self.select_entries(&self.pool, f).await
    }

    async fn update_entry(&self, e: &Entry) -> Result<Entry, DatastoreError> {
        let mut tx = self.write_tx("registered_entries").await?;
        let entry = self.update_entry_in(&mut tx, e).await?;
        tx.commit().await.map_err(db_err)?;
        self.feed.publish_ids(Change::Entries, vec![entry.id.clone()]).await;
        Ok(entry)
    }

    async fn update_entries(&self, entries: &[Entry]) -> Vec<Result<Entry, DatastoreError>> {
        if entries.len() > 1 {
            match self.batch_in_one_tx(entries, |s, tx, e| Box::pin(s.update_entry_in(tx, e))).await {
                Ok(results) => return results,
                Err(e) => tracing::debug!(error = %e, entries = entries.len(), "batch update failed; updating entries one by one"),
            }
        }
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push(self.update_entry(e).await);
        }
        out
    }

    async fn delete_entry(&self, id: &str) -> Result<Entry, DatastoreError> {
        let rows = self.delete_returning("registered_entries", "*", "entry_id = ?", Key::Text(id)).await?;
        let Some(row) = rows.first() else { return Err(DatastoreError::NotFound("entry")) };
        let entry = entry_from_row::<DB>(row)?;
        self.feed.publish_ids(Change::Entries, vec![entry.id.clone()]).await;
        Ok(entry)
    }

    async fn delete_entries(&self, ids: &[String]) -> Vec<Result<Entry, DatastoreError>> {
        if ids.len() > 1 {
            match self.batch_in_one_tx(ids, |s, tx, id| Box::pin(s.delete_entry_in(tx, id))).await {
                Ok(results) => return results,
                Err(e) => tracing::debug!(error = %e, entries = ids.len(), "batch delete failed; deleting entries one by one"),
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.delete_entry(id).await);
        }
        out
    }

    async fn count_entries(&self) -> Result<i64, DatastoreError> {
        let row = sqlx::query::<DB>("SELECT COUNT(*) AS n FROM registered_entries").fetch_one(&self.pool).await.map_err(db_err)?;
        col(&row, "n", "entry count")
    }

    async fn prune_entries(&self, expires_before: i64) -> Result<Vec<Entry>, DatastoreError> {
        // Same rule as SPIRE's sqlstore: `expiry != 0 AND expiry < expires_before`.
        let rows = self.delete_returning("registered_entries", "*", "expires_at != 0 AND expires_at < ?", Key::Int(expires_before)).await?;
        let pruned = rows.iter().map(entry_from_row::<DB>).collect::<Result<Vec<_>, _>>()?;
        if !pruned.is_empty() {
            self.feed.publish_ids(Change::Entries, pruned.iter().map(|e| e.id.clone()).collect()).await;
        }
        Ok(pruned)
    }

    async fn create_join_token(&self, token: &str, expires_at: i64) -> Result<(), DatastoreError> {
        sqlx::query::<DB>(&self.sql("INSERT INTO join_tokens (token_hash, expires_at) VALUES (?, ?)"))
            .bind(join_token_hash(token))
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(insert_err("join token"))?;
        Ok(())
    }

    async fn take_join_token(&self, token: &str) -> Result<Option<i64>, DatastoreError> {
        let hash = join_token_hash(token);
        let rows = self.delete_returning("join_tokens", "expires_at", "token_hash = ?", Key::Text(&hash)).await?;
        rows.first().map(|r| col(r, "expires_at", "join token")).transpose()
    }

    async fn create_attested_node(&self, n: &AttestedNode) -> Result<(), DatastoreError> {
        sqlx::query::<DB>(&self.sql("INSERT INTO attested_nodes (spiffe_id, attestation_type, cert_serial_number, cert_not_after, new_cert_serial_number, new_cert_not_after, can_reattest, selectors, created_at, agent_version) VALUES (?,?,?,?,?,?,?,?,?,?)"))
            .bind(n.spiffe_id.as_str())
            .bind(&n.attestation_type)
            .bind(&n.cert_serial_number)
            .bind(n.cert_not_after)
            .bind(&n.new_cert_serial_number)
            .bind(n.new_cert_not_after)
            .bind(n.can_reattest)
            .bind(selectors_json(&n.selectors)?)
            .bind(crate::now_unix())
            .bind(&n.agent_version)
            .execute(&self.pool)
            .await
            .map_err(insert_err("attested node"))?;
        self.feed.publish_ids(Change::Nodes, vec![n.spiffe_id.to_string()]).await;
        Ok(())
    }

    async fn get_attested_node(&self, id: &SpiffeId) -> Result<Option<AttestedNode>, DatastoreError> {
        let row = sqlx::query::<DB>(&self.sql("SELECT * FROM attested_nodes WHERE spiffe_id = ?"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(node_from_row::<DB>).transpose()
    }

    async fn list_attested_nodes(&self) -> Result<Vec<AttestedNode>, DatastoreError> {
        self.select_nodes(&self.pool).await
    }

    async fn update_attested_node(&self, n: &AttestedNode) -> Result<(), DatastoreError> {
        let done = sqlx::query::<DB>(&self.sql("UPDATE attested_nodes SET attestation_type = ?, cert_serial_number = ?, cert_not_after = ?, new_cert_serial_number = ?, new_cert_not_after = ?, can_reattest = ?, selectors = ?, agent_version = ? WHERE spiffe_id = ?"))
            .bind(&n.attestation_type)
            .bind(&n.cert_serial_number)
            .bind(n.cert_not_after)
            .bind(&n.new_cert_serial_number)
            .bind(n.new_cert_not_after)
            .bind(n.can_reattest)
            .bind(selectors_json(&n.selectors)?)
            .bind(&n.agent_version)
            .bind(n.spiffe_id.as_str())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        if DB::rows_affected(&done) == 0 {
            return Err(DatastoreError::NotFound("agent"));
        }
        self.feed.publish_ids(Change::Nodes, vec![n.spiffe_id.to_string()]).await;
        Ok(())
    }

    async fn delete_attested_node(&self, id: &SpiffeId) -> Result<AttestedNode, DatastoreError> {
        let rows = self.delete_returning("attested_nodes", "*", "spiffe_id = ?", Key::Text(id.as_str())).await?;
        let Some(row) = rows.first() else { return Err(DatastoreError::NotFound("agent")) };
        let node = node_from_row::<DB>(row)?;
        self.feed.publish_ids(Change::Nodes, vec![node.spiffe_id.to_string()]).await;
        Ok(node)
    }

    async fn get_ca_journal(&self, server_key: &str) -> Result<Option<String>, DatastoreError> {
        let row = sqlx::query::<DB>(&self.sql("SELECT data FROM ca_journals WHERE server_key = ?"))
            .bind(server_key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| col(&r, "data", "CA journal")).transpose()
    }

    async fn set_ca_journal(&self, server_key: &str, data: &str) -> Result<(), DatastoreError> {
        let upsert = self.dialect.upsert("ca_journals", "server_key", &["server_key", "data", "updated_at"]);
        sqlx::query::<DB>(&self.sql(&upsert))
            .bind(server_key)
            .bind(data)
            .bind(crate::now_unix())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn get_federation_relationship(&self, td: &TrustDomain) -> Result<Option<Relationship>, DatastoreError> {
        let text = format!("SELECT {RELATIONSHIP_COLUMNS} FROM federation_relationships WHERE trust_domain = ?");
        let row = sqlx::query::<DB>(&self.sql(&text)).bind(td.as_str()).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.as_ref().map(relationship_from_row::<DB>).transpose()
    }

    async fn list_federation_relationships(&self) -> Result<Vec<Relationship>, DatastoreError> {
        let text = format!("SELECT {RELATIONSHIP_COLUMNS} FROM federation_relationships ORDER BY trust_domain");
        let rows = sqlx::query::<DB>(&text).fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(relationship_from_row::<DB>).collect()
    }

    async fn create_federation_relationship(&self, rel: &Relationship, bundle: Option<&Bundle>) -> Result<Relationship, DatastoreError> {
        self.write_relationship(rel, bundle, true).await
    }

    async fn update_federation_relationship(&self, rel: &Relationship, bundle: Option<&Bundle>) -> Result<Relationship, DatastoreError> {
        self.write_relationship(rel, bundle, false).await
    }

    async fn delete_federation_relationship(&self, td: &TrustDomain) -> Result<(), DatastoreError> {
        let done = sqlx::query::<DB>(&self.sql("DELETE FROM federation_relationships WHERE trust_domain = ?"))
            .bind(td.as_str())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        if DB::rows_affected(&done) == 0 {
            return Err(DatastoreError::NotFound("federation relationship"));
        }
        self.feed.publish(Change::Relationships).await;
        Ok(())
    }

    async fn taint_x509_authority(&self, td: &TrustDomain, ski: &str) -> Result<Bundle, DatastoreError> {
        self.modify_bundle(td, |b, existed| {
            existing_bundle(existed)?;
            let found = matching_roots(b, ski);
            if found.is_empty() {
                return Err(DatastoreError::Missing("no ca found with provided subject key ID".into()));
            }
            if found.iter().any(|d| b.is_tainted_x509(d)) {
                return Err(DatastoreError::Refused("root CA is already tainted".into()));
            }
            b.tainted_x509.extend(found);
            Ok(true)
        })
        .await
    }

    async fn revoke_x509_authority(&self, td: &TrustDomain, ski: &str) -> Result<Bundle, DatastoreError> {
        self.modify_bundle(td, |b, existed| {
            existing_bundle(existed)?;
            let found = matching_roots(b, ski);
            if found.is_empty() {
                return Err(DatastoreError::Missing("no root CA found with provided subject key ID".into()));
            }
            if found.iter().any(|d| !b.is_tainted_x509(d)) {
                return Err(DatastoreError::Refused("it is not possible to revoke an untainted root CA".into()));
            }
            b.x509_authorities.retain(|d| !found.contains(d));
            b.tainted_x509.retain(|d| !found.contains(d));
            Ok(true)
        })
        .await
    }

    async fn taint_jwt_authority(&self, td: &TrustDomain, kid: &str) -> Result<Bundle, DatastoreError> {
        self.modify_bundle(td, |b, existed| {
            existing_bundle(existed)?;
            let key = one_jwt_key(b, kid)?;
            if key.tainted {
                return Err(DatastoreError::Refused("key is already tainted".into()));
            }
            key.tainted = true;
            Ok(true)
        })
        .await
    }

    async fn revoke_jwt_authority(&self, td: &TrustDomain, kid: &str) -> Result<Bundle, DatastoreError> {
        self.modify_bundle(td, |b, existed| {
            existing_bundle(existed)?;
            if !one_jwt_key(b, kid)?.tainted {
                return Err(DatastoreError::Refused("it is not possible to revoke an untainted key".into()));
            }
            b.jwt_authorities.retain(|k| k.key_id != kid);
            Ok(true)
        })
        .await
    }

    async fn cache_snapshot(&self) -> Result<(Vec<Entry>, Vec<AttestedNode>), DatastoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(r) = &self.replica {
            match self.replica_snapshot(r).await {
                Ok(Some(snapshot)) => {
                    r.served.fetch_add(1, Relaxed);
                    return Ok(snapshot);
                }
                Ok(None) => tracing::debug!("read replica is behind the primary; the entry cache reads the primary"),
                Err(e) => tracing::warn!(error = %e, "read replica failed; the entry cache reads the primary"),
            }
            r.bypassed.fetch_add(1, Relaxed);
        }
        self.snapshot_from(&self.pool).await
    }

    fn watch_changes(&self) -> ChangeReceiver {
        self.feed.subscribe()
    }
}

/// Taint and revoke need the bundle to exist (SPIRE: "record not found").
fn existing_bundle(existed: bool) -> Result<(), DatastoreError> {
    if existed { Ok(()) } else { Err(DatastoreError::NotFound("bundle")) }
}

/// The roots of `b` whose subject key ID, as lowercase hex, is `ski`.
fn matching_roots(b: &Bundle, ski: &str) -> Vec<Vec<u8>> {
    b.x509_authorities.iter().filter(|d| crate::spiffe::x509::subject_key_id_hex(d).as_deref() == Some(ski)).cloned().collect()
}

/// The one JWT key `kid` of `b` (SPIRE refuses a bundle holding the kid twice).
fn one_jwt_key<'b>(b: &'b mut Bundle, kid: &str) -> Result<&'b mut crate::spiffe::JwtAuthority, DatastoreError> {
    match b.jwt_authorities.iter().filter(|k| k.key_id == kid).count() {
        0 => Err(DatastoreError::Missing("no JWT Key found with provided key ID".into())),
        1 => b.jwt_authorities.iter_mut().find(|k| k.key_id == kid).ok_or_else(|| DatastoreError::Missing(String::new())),
        _ => Err(DatastoreError::Refused("another JWT Key found with the same KeyID".into())),
    }
}

/// Makes `b` carry `with`'s authorities and refresh hint; answers whether that changed it.
fn replace_content(b: &mut Bundle, with: &Bundle) -> bool {
    if same_content(b, with) {
        return false;
    }
    b.x509_authorities.clone_from(&with.x509_authorities);
    b.jwt_authorities.clone_from(&with.jwt_authorities);
    b.refresh_hint = with.refresh_hint;
    true
}
