//! The change feed of servers that share one database: an events table.
//!
//! `publish` tells this process's subscribers at once and marks its kind of change as pending;
//! a flusher appends one row per pending kind (kind, this process's origin id) to
//! `cairn_events` at most every [`FLUSH_EVERY`], so a burst of writes (a batch of entries) costs
//! one row, not one per write. A poller reads the rows other processes appended, about once a
//! second, and tells this process's subscribers. Ids are taken in insert order but may commit
//! out of order, so the poller looks back over a window of ids and remembers which it has seen.
//! Rows older than an hour are deleted. A poll that fails is reported to subscribers as a lag
//! once the database answers again (events may have been missed meanwhile), so caches re-read
//! everything.

use super::Backend;
use crate::datastore::Change;
use crate::datastore::feed::{ChangeFeed, ChangeReceiver, LocalFeed};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// How often other servers' events are read.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long pending kinds gather before they are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Ids below the highest seen by more than this are not looked at again.
const LOOK_BACK: i64 = 1000;
/// Rows older than this (seconds) are deleted.
const KEEP_FOR: i64 = 3600;

fn kind_name(c: Change) -> &'static str {
    match c {
        Change::Entries => "entries",
        Change::Bundle => "bundle",
        Change::Nodes => "nodes",
        Change::Relationships => "relationships",
    }
}

fn kind_of(s: &str) -> Option<Change> {
    Some(match s {
        "entries" => Change::Entries,
        "bundle" => Change::Bundle,
        "nodes" => Change::Nodes,
        "relationships" => Change::Relationships,
        _ => return None,
    })
}

impl<DB: Backend> TableFeed<DB> {
    /// Queues `change`'s kind for the events table.
    fn announce(&self, change: Change) {
        if let Ok(mut p) = self.pending.lock() {
            p.insert(kind_name(change));
        }
        self.wake.notify_one();
    }
}

/// The events-table feed over `pool`.
#[derive(Debug)]
pub struct TableFeed<DB: Backend> {
    pool: Pool<DB>,
    local: LocalFeed,
    origin: String,
    /// Kinds published since the last flush.
    pending: std::sync::Mutex<BTreeSet<&'static str>>,
    wake: tokio::sync::Notify,
}

impl<DB> TableFeed<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'n> &'n str: ColumnIndex<DB::Row>,
{
    /// A feed over `pool`, with its poller running until the feed is dropped.
    pub fn start(pool: Pool<DB>) -> Arc<Self> {
        let me = Arc::new(Self {
            pool,
            local: LocalFeed::new(),
            origin: uuid::Uuid::new_v4().to_string(),
            pending: std::sync::Mutex::new(BTreeSet::new()),
            wake: tokio::sync::Notify::new(),
        });
        let flusher = Arc::downgrade(&me);
        tokio::spawn(async move {
            loop {
                let Some(feed) = flusher.upgrade() else { return };
                // Holding the feed only while there is work lets it be dropped when idle.
                let woken = tokio::time::timeout(Duration::from_secs(5), feed.wake.notified()).await.is_ok();
                if woken {
                    tokio::time::sleep(FLUSH_EVERY).await;
                    feed.flush().await;
                }
            }
        });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            let mut high = None;
            let mut failing = false;
            let mut polls: u64 = 0;
            loop {
                tokio::time::sleep(POLL_EVERY).await;
                let Some(feed) = weak.upgrade() else { return };
                match feed.poll(&mut seen, &mut high).await {
                    Ok(()) => {
                        if failing {
                            // Events may have been missed while the database was away.
                            tracing::info!("change feed: database reachable again; caches reload");
                            feed.local.send(Change::Entries);
                            feed.local.send(Change::Nodes);
                            feed.local.send(Change::Bundle);
                            feed.local.send(Change::Relationships);
                        }
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "change feed: cannot read other servers' changes");
                        }
                        failing = true;
                    }
                }
                polls += 1;
                if polls.is_multiple_of(600) {
                    let cut = crate::now_unix() - KEEP_FOR;
                    let sql = DB::DIALECT.sql("DELETE FROM cairn_events WHERE created_at < ?");
                    if let Err(e) = sqlx::query::<DB>(&sql).bind(cut).execute(&feed.pool).await {
                        tracing::debug!(error = %e, "change feed: pruning old events failed");
                    }
                }
            }
        });
        me
    }

    /// Writes one row per pending kind.
    async fn flush(&self) {
        let kinds = self.pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        let sql = DB::DIALECT.sql("INSERT INTO cairn_events (kind, origin, created_at) VALUES (?, ?, ?)");
        for kind in kinds {
            let done = sqlx::query::<DB>(&sql).bind(kind).bind(self.origin.as_str()).bind(crate::now_unix()).execute(&self.pool).await;
            if let Err(e) = done {
                // The write itself committed; other servers learn of it at their next full reload.
                tracing::warn!(error = %e, kind, "change feed: could not record a change for other servers");
            }
        }
    }

    /// Reads the events other processes appended since the last poll; tells subscribers.
    async fn poll(&self, seen: &mut BTreeSet<i64>, high: &mut Option<i64>) -> Result<(), sqlx::Error> {
        let Some(top) = *high else {
            // First poll: start after what is there now (the caches were just built).
            let row = sqlx::query::<DB>("SELECT MAX(id) AS top FROM cairn_events").fetch_one(&self.pool).await?;
            *high = Some(row.try_get::<Option<i64>, _>("top")?.unwrap_or(0));
            return Ok(());
        };
        let sql = DB::DIALECT.sql("SELECT id, kind, origin FROM cairn_events WHERE id > ? ORDER BY id");
        let rows = sqlx::query::<DB>(&sql).bind(top - LOOK_BACK).fetch_all(&self.pool).await?;
        let mut kinds = BTreeSet::new();
        for r in &rows {
            let id: i64 = r.try_get("id")?;
            if !seen.insert(id) {
                continue;
            }
            *high = Some(high.map_or(id, |h| h.max(id)));
            let origin: String = r.try_get_unchecked("origin")?;
            if origin == self.origin {
                continue;
            }
            let kind: String = r.try_get_unchecked("kind")?;
            if let Some(c) = kind_of(&kind) {
                kinds.insert(kind_name(c));
            }
        }
        let floor = high.unwrap_or(0) - LOOK_BACK;
        seen.retain(|id| *id > floor);
        for k in kinds {
            if let Some(c) = kind_of(k) {
                self.local.send(c);
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl<DB> ChangeFeed for TableFeed<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    async fn publish(&self, change: Change) {
        self.local.send(change);
        self.announce(change);
    }

    // This process's subscribers get the ids; other servers get the kind alone (the events
    // table holds kinds), so they re-read everything of that kind.
    async fn publish_ids(&self, change: Change, ids: Vec<String>) {
        self.local.send_ids(change, ids);
        self.announce(change);
    }

    fn subscribe(&self) -> ChangeReceiver {
        self.local.subscribe()
    }
}
