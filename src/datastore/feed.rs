//! The change feed: how the datastore tells caches that something changed.
//!
//! Writers call [`ChangeFeed::publish`] after their write committed; readers hold a
//! [`ChangeReceiver`] from [`ChangeFeed::subscribe`] (through [`super::Datastore::watch_changes`]).
//! Events say *what kind* of record changed ([`Change`]) and, when the writer knows them, the
//! ids of the records it wrote ([`ChangeEvent::ids`]: entry ids, agent SPIFFE IDs); subscribers
//! re-read what they need, just those records when the ids are given (the entry cache applies
//! them one by one) and everything of that kind otherwise. A receiver that falls behind is told
//! so ([`RecvError::Lagged`]) and must then assume that everything changed: that is what the
//! entry cache and the bundle watchers do.
//!
//! [`LocalFeed`] is the one implementation today: an in-process broadcast, right for a datastore
//! that only this process writes (SQLite). Servers that share one database need to hear each
//! other's writes; a backend for such a database implements [`ChangeFeed`] in one of two ways,
//! and keeps a [`LocalFeed`] inside to fan events out to this process's subscribers:
//! - an events table: `publish` inserts a row (kind, id); a task polls for rows with an id above
//!   the last one seen and republishes them locally, and old rows are deleted after a while;
//! - PostgreSQL `LISTEN/NOTIFY`: `publish` runs `NOTIFY cairn_changes, '<kind>'`; a task holding
//!   a `LISTEN` connection republishes what arrives (a dropped listener connection is reported
//!   to subscribers as a lag, since events may have been missed while it was down).
//!
//! Either way publishing happens after commit, so an event can be lost if the process dies in
//! between; subscribers also re-read on a timer (the entry cache's full reload, the bundle
//! watchers' periodic check), which bounds how stale they can get.

use super::Change;
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before it is told it lagged.
const LOCAL_FEED_CAPACITY: usize = 64;

/// Where the datastore announces changes, and where caches subscribe to them.
#[async_trait]
pub trait ChangeFeed: Send + Sync + std::fmt::Debug + 'static {
    /// Announces `change` to every subscriber. Called after the write committed; failures are
    /// the feed's to log (the write itself succeeded, so there is nothing to return).
    async fn publish(&self, change: Change);

    /// Announces a `change` to the records `ids` (entry ids for [`Change::Entries`], agent
    /// SPIFFE IDs for [`Change::Nodes`]). A feed that cannot carry ids announces the kind
    /// alone, which subscribers read as "re-read everything of this kind".
    async fn publish_ids(&self, change: Change, ids: Vec<String>) {
        let _ = ids;
        self.publish(change).await;
    }

    /// A receiver of every change published from now on.
    fn subscribe(&self) -> ChangeReceiver;
}

/// Why [`ChangeReceiver::recv`] returned no change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The receiver fell behind and `missed` events were dropped: assume everything changed.
    #[error("change feed receiver lagged behind by {missed} events")]
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
    /// The feed is gone (the datastore was dropped): no more events will come.
    #[error("change feed closed")]
    Closed,
}

/// Why [`ChangeReceiver::try_recv`] returned no change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// Nothing is waiting.
    #[error("no change waiting")]
    Empty,
    /// The receiver fell behind and `missed` events were dropped: assume everything changed.
    #[error("change feed receiver lagged behind by {missed} events")]
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
    /// The feed is gone: no more events will come.
    #[error("change feed closed")]
    Closed,
}

/// One change as subscribers receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// What kind of record changed.
    pub change: Change,
    /// The records written, when the writer said (entry ids, agent SPIFFE IDs); `None` means
    /// any number of records of that kind may have changed.
    pub ids: Option<Arc<[String]>>,
}

/// One subscriber's view of a [`ChangeFeed`].
///
/// Every feed fans out in-process through a broadcast channel (a shared-database feed pumps
/// what it hears into one), so the receiver wraps that channel; the channel type stays private
/// so that subscribers depend only on this small API.
#[derive(Debug)]
pub struct ChangeReceiver {
    inner: broadcast::Receiver<ChangeEvent>,
}

/// The in-process change feed: a broadcast channel. Right when this process is the only writer.
#[derive(Debug, Clone)]
pub struct LocalFeed {
    sender: broadcast::Sender<ChangeEvent>,
}

// === impl ChangeReceiver ===

impl ChangeReceiver {
    /// Waits for the next change.
    ///
    /// # Errors
    /// [`RecvError::Lagged`] when events were dropped (the receiver then continues with the
    /// oldest one still held), [`RecvError::Closed`] when the feed is gone.
    pub async fn recv(&mut self) -> Result<Change, RecvError> {
        self.recv_event().await.map(|e| e.change)
    }

    /// Waits for the next change, with the ids of the records it touched when known.
    ///
    /// # Errors
    /// As [`ChangeReceiver::recv`].
    pub async fn recv_event(&mut self) -> Result<ChangeEvent, RecvError> {
        self.inner.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(missed) => RecvError::Lagged { missed },
            broadcast::error::RecvError::Closed => RecvError::Closed,
        })
    }

    /// The next change if one is waiting.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when nothing is waiting; otherwise as [`ChangeReceiver::recv`].
    pub fn try_recv(&mut self) -> Result<Change, TryRecvError> {
        self.try_recv_event().map(|e| e.change)
    }

    /// The next change if one is waiting, with its ids when known.
    ///
    /// # Errors
    /// As [`ChangeReceiver::try_recv`].
    pub fn try_recv_event(&mut self) -> Result<ChangeEvent, TryRecvError> {
        self.inner.try_recv().map_err(|e| match e {
            broadcast::error::TryRecvError::Empty => TryRecvError::Empty,
            broadcast::error::TryRecvError::Lagged(missed) => TryRecvError::Lagged { missed },
            broadcast::error::TryRecvError::Closed => TryRecvError::Closed,
        })
    }

    /// Drops every change already waiting, for subscribers that are about to re-read
    /// everything anyway (a burst of writes then costs one reload).
    pub fn drain(&mut self) {
        while let Ok(_) | Err(TryRecvError::Lagged { .. }) = self.try_recv() {}
    }

    /// Whether changes are waiting.
    #[must_use]
    pub fn has_pending(&self) -> bool {
        !self.inner.is_empty()
    }
}

// === impl LocalFeed ===

impl LocalFeed {
    /// A feed with no subscribers yet.
    #[must_use]
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(LOCAL_FEED_CAPACITY);
        Self { sender }
    }

    /// Publishes without waiting (broadcasting never blocks); for feeds that wrap this one.
    pub fn send(&self, change: Change) {
        // No subscribers is normal (nothing follows the feed yet); nothing to do then.
        let _ = self.sender.send(ChangeEvent { change, ids: None });
    }

    /// As [`LocalFeed::send`], naming the records written.
    pub fn send_ids(&self, change: Change, ids: Vec<String>) {
        let _ = self.sender.send(ChangeEvent { change, ids: Some(ids.into()) });
    }
}

impl Default for LocalFeed {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl ChangeFeed for LocalFeed {
    async fn publish(&self, change: Change) {
        self.send(change);
    }

    async fn publish_ids(&self, change: Change, ids: Vec<String>) {
        self.send_ids(change, ids);
    }

    fn subscribe(&self) -> ChangeReceiver {
        ChangeReceiver { inner: self.sender.subscribe() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_changes_published_after_they_subscribed() {
        let feed = LocalFeed::new();
        feed.publish(Change::Nodes).await;
        let mut a = feed.subscribe();
        let mut b = feed.subscribe();
        assert_eq!(a.try_recv(), Err(TryRecvError::Empty), "events before subscribing are not replayed");
        feed.publish(Change::Entries).await;
        feed.publish(Change::Bundle).await;
        assert_eq!(a.recv().await, Ok(Change::Entries));
        assert_eq!(a.recv().await, Ok(Change::Bundle));
        assert_eq!(b.try_recv(), Ok(Change::Entries), "every subscriber gets every event");
        b.drain();
        assert_eq!(b.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn a_receiver_that_falls_behind_is_told_it_lagged_then_continues() {
        let feed = LocalFeed::new();
        let mut rx = feed.subscribe();
        let extra = 5;
        for _ in 0..LOCAL_FEED_CAPACITY + extra {
            feed.publish(Change::Entries).await;
        }
        feed.publish(Change::Bundle).await;
        assert_eq!(rx.recv().await, Err(RecvError::Lagged { missed: u64::try_from(extra + 1).unwrap_or(0) }));
        // What is still held comes next, newest last.
        let mut last = None;
        while let Ok(c) = rx.try_recv() {
            last = Some(c);
        }
        assert_eq!(last, Some(Change::Bundle));
    }

    #[tokio::test]
    async fn dropping_the_feed_closes_its_receivers() {
        let feed = LocalFeed::new();
        let mut rx = feed.subscribe();
        feed.publish(Change::Nodes).await;
        drop(feed);
        assert_eq!(rx.recv().await, Ok(Change::Nodes), "what was sent is still delivered");
        assert_eq!(rx.recv().await, Err(RecvError::Closed));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    }
}
