//! cairn's `AgentSync` service: a stream per attested agent that says "sync now" as soon as
//! what the agent syncs has changed, so a new or changed entry reaches workloads in well under
//! a second instead of at the agent's next poll (SPIRE's agents poll every 5 s, and its server
//! cache adds up to 5 s more).
//!
//! Notices carry no data: the agent then syncs through SPIRE's own APIs, so there is one way
//! to learn entries and bundles, and a lost or coalesced notice costs only latency (the agent
//! still polls, slowly, as a safety net). The server decides per agent whether an entry change
//! concerns it, by comparing a digest of the agent's authorized entries before and after, so
//! one agent's entries changing wakes only that agent. It re-crawls an agent's entries only
//! when the change touched an ID its last crawl visited (the entry cache records the parents
//! each change touched): with a thousand agents, one entry change costs one crawl, not a
//! thousand.

use crate::api::status::ApiError;
use crate::api::{Policy, Svc, now};
use crate::datastore::Entry;
use crate::spiffe::SpiffeId;
use crate::wire::pb::cairn::api::agentsync::v1 as pb;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

const METHOD: &str = "/cairn.api.agentsync.v1.AgentSync/WatchChanges";

/// Change streams one agent may hold open at once (a restart may overlap the old stream).
pub const MAX_STREAMS_PER_AGENT: usize = 4;

/// Counts open change streams per agent.
#[derive(Debug, Default)]
pub struct AgentStreams {
    open: Mutex<HashMap<SpiffeId, usize>>,
    /// Crawls of agents' authorized entries made by streams after an entry change.
    crawls: std::sync::atomic::AtomicU64,
}

/// One open stream; dropping it frees its place.
#[derive(Debug)]
struct StreamPermit {
    streams: Arc<AgentStreams>,
    agent: SpiffeId,
}

impl AgentStreams {
    fn admit(self: &Arc<Self>, agent: &SpiffeId) -> Result<StreamPermit, Status> {
        let mut open = self.open.lock().map_err(|_| Status::internal("stream registry poisoned"))?;
        let n = open.entry(agent.clone()).or_insert(0);
        if *n >= MAX_STREAMS_PER_AGENT {
            return Err(Status::resource_exhausted(format!(
                "agent {agent} already has {n} change streams open (at most {MAX_STREAMS_PER_AGENT})"
            )));
        }
        *n += 1;
        Ok(StreamPermit { streams: Arc::clone(self), agent: agent.clone() })
    }

    /// Streams open now, all agents together.
    #[must_use]
    pub fn open(&self) -> usize {
        self.open.lock().map_or(0, |o| o.values().sum())
    }

    /// How many times streams re-crawled an agent's authorized entries after an entry change.
    #[must_use]
    pub fn crawls(&self) -> u64 {
        self.crawls.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Ok(mut open) = self.streams.open.lock()
            && let Some(n) = open.get_mut(&self.agent)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.agent);
            }
        }
    }
}

/// What of an agent's authorized entries a sync would bring it: which entries, at which
/// revision. Entries are sorted by ID, so equal sets hash alike.
fn digest(entries: &[Arc<Entry>]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for e in entries {
        e.id.hash(&mut h);
        e.revision_number.hash(&mut h);
    }
    h.finish()
}

/// Whether the two sets share an ID (walking the smaller one).
fn intersect(a: &std::collections::HashSet<SpiffeId>, b: &std::collections::HashSet<SpiffeId>) -> bool {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small.iter().any(|id| large.contains(id))
}

fn notice(generation: u64, kind: pb::change_notice::Kind) -> Result<pb::ChangeNotice, Status> {
    Ok(pb::ChangeNotice { generation, kind: kind as i32 })
}

#[tonic::async_trait]
impl pb::agent_sync_server::AgentSync for Svc {
    type WatchChangesStream = futures::stream::BoxStream<'static, Result<pb::ChangeNotice, Status>>;

    async fn watch_changes(&self, req: Request<pb::WatchChangesRequest>) -> Result<Response<Self::WatchChangesStream>, Status> {
        let caller = self.authorize(&req, Policy::Agent, METHOD).await?;
        let agent = caller.id().cloned().ok_or(ApiError::PermissionDenied(METHOD))?;
        let state = self.state_arc();
        let permit = state.agent_streams.admit(&agent)?;
        let mut generation = state.entry_cache.watch_generation();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            use pb::change_notice::Kind;
            let _permit = permit;
            let mut seen = *generation.borrow_and_update();
            let (entries, mut visited) = state.entry_cache.authorized_entries_and_crawl(&agent, now());
            let mut held = digest(&entries);
            let mut count = 0;
            // The first notice says the stream is live (and covers anything that changed
            // between the agent's last sync and now).
            if tx.send(notice(count, Kind::Unspecified)).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    changed = generation.changed() => if changed.is_err() { return },
                }
                let now_gen = *generation.borrow_and_update();
                // Crawl again only if a change since the last crawl may concern this agent.
                let concerned = now_gen.entries != seen.entries
                    && state.entry_cache.touched_between(seen.entries, now_gen.entries).is_none_or(|ids| intersect(&ids, &visited));
                let mut entries_changed = false;
                if concerned {
                    state.agent_streams.crawls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (entries, crawled) = state.entry_cache.authorized_entries_and_crawl(&agent, now());
                    let d = digest(&entries);
                    entries_changed = d != held;
                    held = d;
                    visited = crawled;
                }
                let kind = if now_gen.bundles != seen.bundles {
                    Some(Kind::Bundles)
                } else if entries_changed {
                    Some(Kind::Entries)
                } else {
                    None
                };
                seen = now_gen;
                if let Some(kind) = kind {
                    count += 1;
                    // The channel holds one notice: while the agent has not read it, newer
                    // changes need no notice of their own (its next sync sees them all).
                    match tx.try_send(notice(count, kind)) {
                        Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {}
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
