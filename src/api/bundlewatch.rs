//! cairn's `BundleWatch` service: streams the trust domain bundle to downstream tiers whenever
//! its sequence number moves, so bundle changes propagate by push instead of by polling.
//! Open to any caller, like `GetBundle` (the bundle is public), so the number of open watches
//! is capped overall and per client address ([`Watchers`]), and a watch's task ends as soon as
//! its client goes away.

use crate::api::{Policy, Svc};
use crate::datastore::{Change, RecvError};
use crate::wire::convert::bundle_to_proto;
use crate::wire::pb::cairn::api::bundlewatch::v1 as pb;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// Open watches at once, in all.
pub const MAX_WATCHES: usize = 1024;
/// Open watches at once from one client address (a downstream tier needs one).
pub const MAX_WATCHES_PER_PEER: usize = 16;

/// Counts the open watches.
#[derive(Debug, Default)]
pub struct Watchers {
    open: Mutex<(usize, HashMap<Option<IpAddr>, usize>)>,
}

/// One open watch; dropping it frees its place.
#[derive(Debug)]
pub struct WatchPermit {
    watchers: Arc<Watchers>,
    peer: Option<IpAddr>,
}

impl Watchers {
    /// A place for a watch from `peer` (`None`: the admin socket), if the caps allow one.
    fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<WatchPermit, Status> {
        let mut open = self.open.lock().map_err(|_| Status::internal("watch registry poisoned"))?;
        let mine = open.1.get(&peer).copied().unwrap_or(0);
        if open.0 >= MAX_WATCHES || mine >= MAX_WATCHES_PER_PEER {
            let who = peer.map_or_else(|| "the admin socket".to_owned(), |p| p.to_string());
            return Err(Status::resource_exhausted(format!(
                "too many bundle watches open ({mine} from {who}, {} in all; at most {MAX_WATCHES_PER_PEER} per client and {MAX_WATCHES} in all)",
                open.0
            )));
        }
        open.0 += 1;
        *open.1.entry(peer).or_insert(0) += 1;
        Ok(WatchPermit { watchers: Arc::clone(self), peer })
    }

    /// Watches open now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.open.lock().map_or(0, |o| o.0)
    }
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        if let Ok(mut open) = self.watchers.open.lock() {
            open.0 = open.0.saturating_sub(1);
            if let Some(n) = open.1.get_mut(&self.peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.1.remove(&self.peer);
                }
            }
        }
    }
}

#[tonic::async_trait]
impl pb::bundle_watch_server::BundleWatch for Svc {
    type WatchBundleStream = futures::stream::BoxStream<'static, Result<pb::WatchBundleResponse, Status>>;

    async fn watch_bundle(&self, req: Request<pb::WatchBundleRequest>) -> Result<Response<Self::WatchBundleStream>, Status> {
        self.authorize(&req, Policy::Any, "/cairn.api.bundlewatch.v1.BundleWatch/WatchBundle").await?;
        let state = self.state_arc();
        let peer = req.extensions().get::<crate::net::ConnInfo>().and_then(crate::net::ConnInfo::remote_addr).map(|a| a.ip());
        let permit = state.watchers.admit(peer)?;
        let mut known = req.get_ref().known_sequence_number;
        let mut changes = state.datastore.watch_changes();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let current = match state.entry_cache.bundle() {
                    Some(b) => Some(b),
                    None => state.datastore.get_bundle(&state.trust_domain).await.ok().flatten().map(std::sync::Arc::new),
                };
                if let Some(b) = current
                    && b.sequence_number != known
                {
                    known = b.sequence_number;
                    if tx.send(Ok(pb::WatchBundleResponse { bundle: Some(bundle_to_proto(&b)) })).await.is_err() {
                        return;
                    }
                }
                // Wake on bundle changes; a periodic check covers missed events. The cache
                // reload after a change is asynchronous, so look again shortly after each event.
                // The client leaving ends the watch at once, not at the next event.
                let event = tokio::select! {
                    () = tx.closed() => return,
                    e = tokio::time::timeout(std::time::Duration::from_secs(30), changes.recv()) => e,
                };
                match event {
                    Ok(Ok(Change::Bundle) | Err(RecvError::Lagged { .. })) | Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(RecvError::Closed)) => return,
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
