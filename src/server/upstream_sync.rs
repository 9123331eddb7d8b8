//! Keeps a downstream tier's bundle in step with its upstream's: the upstream's X.509 roots
//! and every tier's JWT keys are appended to this tier's bundle, from where they reach this
//! tier's agents and further downstream tiers.
//!
//! A cairn upstream pushes every change over its `BundleWatch` stream, so a key prepared
//! anywhere crosses each tier in well under a second; a SPIRE upstream has no such stream and
//! is polled with `GetBundle` (SPIRE's own 5 s). Failures back off and retry; the tier keeps
//! issuing with the CA it has meanwhile.

use crate::api::ApiState;
use crate::spiffe::Bundle;
use crate::upstream::{UpstreamAuthority, UpstreamError};
use std::sync::Arc;
use std::time::Duration;

pub use crate::upstream::UpstreamStatus;

async fn apply(state: &ApiState, upstream: &Bundle) -> Result<(), crate::datastore::DatastoreError> {
    let before = state.datastore.get_bundle(&state.trust_domain).await?;
    let after = state.datastore.append_bundle(&state.trust_domain, &upstream.x509_authorities, &upstream.jwt_authorities).await?;
    if before.as_ref().map(|b| b.sequence_number) != Some(after.sequence_number) {
        // Read-your-writes for GetBundle and the agents' next sync.
        state.entry_cache.reload_bundle(state.datastore.as_ref()).await?;
        tracing::info!(
            upstream_sequence = upstream.sequence_number,
            sequence = after.sequence_number,
            jwt_keys = after.jwt_authorities.len(),
            "bundle updated from upstream"
        );
    }
    if let Ok(mut s) = state.upstream_status.write() {
        s.last_sync = crate::now_unix();
        s.upstream_sequence = upstream.sequence_number;
        s.last_error = None;
    }
    Ok(())
}

fn record_error(state: &ApiState, e: &str) {
    if let Ok(mut s) = state.upstream_status.write() {
        s.last_error = Some(e.to_owned());
    }
}

/// Runs until `shutdown`.
pub async fn run(
    upstream: Arc<dyn UpstreamAuthority>,
    state: Arc<ApiState>,
    poll: Duration,
    push: bool,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(500);
    let mut push = push;
    loop {
        let attempt = async {
            if push {
                if let Ok(mut s) = state.upstream_status.write() {
                    s.mode = "push".into();
                }
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Bundle>(4);
                let known = state.upstream_status.read().map(|s| s.upstream_sequence).unwrap_or(0);
                let watch = upstream.watch_upstream_bundle(known, tx);
                tokio::pin!(watch);
                loop {
                    tokio::select! {
                        r = &mut watch => return r,
                        b = rx.recv() => match b {
                            Some(b) => apply(&state, &b).await.map_err(|e| UpstreamError::Unavailable(e.to_string()))?,
                            None => return Ok(()),
                        },
                    }
                }
            } else {
                if let Ok(mut s) = state.upstream_status.write() {
                    s.mode = "poll".into();
                }
                let b = upstream.upstream_bundle().await?;
                apply(&state, &b).await.map_err(|e| UpstreamError::Unavailable(e.to_string()))
            }
        };
        let result = tokio::select! {
            () = &mut shutdown => return,
            r = attempt => r,
        };
        let wait = match result {
            Ok(()) => {
                backoff = Duration::from_millis(500);
                poll
            }
            Err(UpstreamError::Unsupported) if push => {
                tracing::info!("upstream cannot push bundle changes (a SPIRE server?); polling GetBundle instead");
                push = false;
                Duration::ZERO
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX), "upstream bundle sync failed; this tier keeps issuing with its current CA");
                record_error(&state, &e.to_string());
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                w
            }
        };
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
