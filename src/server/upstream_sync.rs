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

/// Taint and revocation coming down from the upstream, as SPIRE's downstream servers take
/// them: a root newly tainted upstream makes this tier move its CA off it first (so that its
/// agents and the tiers below see the taint only once it is safe), then it is tainted here; a
/// root tainted here that the upstream no longer has was revoked there, and is revoked here.
/// JWT keys follow the same two rules.
async fn follow_taint(state: &ApiState, upstream: &Bundle) -> Result<(), String> {
    use crate::spiffe::x509::subject_key_id_hex;
    let ds = &state.datastore;
    let td = &state.trust_domain;
    let Some(local) = ds.get_bundle(td).await.map_err(|e| e.to_string())? else { return Ok(()) };
    let newly: Vec<String> = upstream
        .tainted_x509
        .iter()
        .filter(|d| local.x509_authorities.contains(*d) && !local.is_tainted_x509(d))
        .filter_map(|d| subject_key_id_hex(d))
        .collect();
    if !newly.is_empty() {
        for ski in &newly {
            tracing::info!(subject_key_id = %ski, "X.509 authority tainted");
        }
        state
            .ca_manager
            .rotate_away_from(&newly, crate::now_unix())
            .await
            .map_err(|e| format!("Failed to process tainted keys on upstream authority: {e}"))?;
        for ski in &newly {
            ds.taint_x509_authority(td, ski).await.map_err(|e| e.to_string())?;
        }
    }
    for d in local.tainted_x509.iter().filter(|d| !upstream.x509_authorities.contains(*d)) {
        if let Some(ski) = subject_key_id_hex(d) {
            ds.revoke_x509_authority(td, &ski).await.map_err(|e| format!("failed to revoke a tainted key {ski:?}: {e}"))?;
            tracing::info!(subject_key_id = %ski, "X.509 authority revoked");
        }
    }
    for k in upstream.jwt_authorities.iter().filter(|k| k.tainted) {
        if local.jwt_authority(&k.key_id).is_some_and(|l| !l.tainted) {
            ds.taint_jwt_authority(td, &k.key_id).await.map_err(|e| e.to_string())?;
            tracing::info!(local_authority_id = %k.key_id, "JWT authority tainted");
        }
    }
    for k in local.jwt_authorities.iter().filter(|k| k.tainted && upstream.jwt_authority(&k.key_id).is_none()) {
        ds.revoke_jwt_authority(td, &k.key_id).await.map_err(|e| e.to_string())?;
        tracing::info!(local_authority_id = %k.key_id, "JWT authority revoked");
    }
    Ok(())
}

async fn apply(state: &ApiState, upstream: &Bundle) -> Result<(), crate::datastore::DatastoreError> {
    let before = state.datastore.get_bundle(&state.trust_domain).await?;
    let after = state.datastore.append_bundle(&state.trust_domain, &upstream.x509_authorities, &upstream.jwt_authorities).await?;
    let after = if upstream.has_taint() || after.has_taint() {
        follow_taint(state, upstream).await.map_err(crate::datastore::DatastoreError::Database)?;
        state.datastore.get_bundle(&state.trust_domain).await?.unwrap_or(after)
    } else {
        after
    };
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
