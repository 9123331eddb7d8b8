//! Deletes registration entries whose `entryExpiry` has passed, as SPIRE's registration manager
//! does (`pkg/server/registration/manager.go`: every 5 minutes, `PruneRegistrationEntries`
//! with "expires before now").
//!
//! Pruning is housekeeping, not the access check: between prunes an expired entry is already
//! refused everywhere it could authorize something (see [`crate::datastore::Entry::is_expired`]).

use crate::datastore::{Datastore, DatastoreError};
use std::time::Duration;

/// One prune at `now`: deletes entries that expired before it and logs each one.
///
/// # Errors
/// The datastore failed; nothing is lost, the next round tries again.
pub async fn prune_once(ds: &dyn Datastore, now: i64) -> Result<usize, DatastoreError> {
    let pruned = ds.prune_entries(now).await?;
    for e in &pruned {
        tracing::info!(entry_id = %e.id, spiffe_id = %e.spiffe_id, parent_id = %e.parent_id, expires_at = e.expires_at, "pruned an expired registration entry");
    }
    Ok(pruned.len())
}

/// Prunes every `interval` until `shutdown`; the first round runs at once, so entries that
/// expired while the server was down do not wait a whole interval.
pub async fn run(ds: std::sync::Arc<dyn Datastore>, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut moves = crate::clock::moves();
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
            () = moves.next() => {}
        }
        if let Err(e) = prune_once(ds.as_ref(), crate::now_unix()).await {
            tracing::error!(error = %e, "failed pruning registration entries");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use crate::datastore::{Entry, EntryFilter, Selector, sql::SqliteDatastore};
    use crate::spiffe::SpiffeId;

    fn entry(id: &str, expires_at: i64) -> Entry {
        Entry {
            id: id.into(),
            spiffe_id: SpiffeId::new(&format!("spiffe://example.org/w/{id}")).unwrap(),
            parent_id: SpiffeId::new("spiffe://example.org/spire/agent/x").unwrap(),
            selectors: vec![Selector { kind: "unix".into(), value: format!("uid:{id}") }],
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: vec![],
            admin: false,
            downstream: false,
            dns_names: vec![],
            expires_at,
            hint: String::new(),
            store_svid: false,
            disable_x509_svid_prefetch: false,
            jwt_svid_include_jti: false,
            revision_number: 0,
            created_at: 0,
        }
    }

    #[tokio::test]
    async fn prunes_only_entries_expired_before_now() {
        let ds = SqliteDatastore::connect("sqlite::memory:").await.unwrap();
        for e in [entry("past", 1), entry("edge", 1000), entry("future", 2000), entry("never", 0)] {
            ds.create_entry(&e).await.unwrap();
        }
        let mut changes = ds.watch_changes();
        assert_eq!(prune_once(&ds, 1000).await.unwrap(), 1);
        assert!(changes.try_recv().is_ok(), "the entry cache is told to reload");
        let left: Vec<String> = ds.list_entries(&EntryFilter::default()).await.unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(left, ["edge", "future", "never"], "SPIRE's rule: expires_at != 0 and expires_at < expires_before");
        assert_eq!(prune_once(&ds, 2001).await.unwrap(), 2);
        let left: Vec<String> = ds.list_entries(&EntryFilter::default()).await.unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(left, ["never"]);
        assert_eq!(prune_once(&ds, 2001).await.unwrap(), 0);
        assert!(changes.try_recv().is_ok() && changes.try_recv().is_err(), "no change event when nothing was pruned");
    }
}
