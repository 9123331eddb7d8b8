//! cairn's `BundleWatch` service: streams the trust domain bundle to downstream tiers whenever
//! its sequence number moves, so bundle changes propagate by push instead of by polling.
//! Open to any caller, like `GetBundle` (the bundle is public).

use crate::api::convert::bundle_to_proto;
use crate::api::pb::cairn::api::bundlewatch::v1 as pb;
use crate::api::{Policy, Svc};
use crate::datastore::Change;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl pb::bundle_watch_server::BundleWatch for Svc {
    type WatchBundleStream = futures::stream::BoxStream<'static, Result<pb::WatchBundleResponse, Status>>;

    async fn watch_bundle(&self, req: Request<pb::WatchBundleRequest>) -> Result<Response<Self::WatchBundleStream>, Status> {
        self.authorize(&req, Policy::Any, "/cairn.api.bundlewatch.v1.BundleWatch/WatchBundle").await?;
        let state = self.state_arc();
        let mut known = req.get_ref().known_sequence_number;
        let mut changes = state.datastore.watch_changes();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
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
                let event = tokio::time::timeout(std::time::Duration::from_secs(30), changes.recv()).await;
                match event {
                    Ok(Ok(Change::Bundle) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) | Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
