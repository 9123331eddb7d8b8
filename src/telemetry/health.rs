//! `health_checks`: `/live` and `/ready` over plain HTTP/1.

use crate::config::server::HealthConfig;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;
use tokio::net::TcpListener;

/// What `/ready` asks.
#[async_trait::async_trait]
pub trait Readiness: Send + Sync + 'static {
    /// Whether the process can do its job now.
    async fn ready(&self) -> bool;
}

/// Connection limits of a health listener: probes are one short request each.
fn limits(nofile: u64) -> crate::net::ConnLimits {
    let max = crate::net::fd_budget(nofile, 5, 256);
    crate::net::ConnLimits {
        name: "health",
        first_request_timeout: std::time::Duration::from_secs(5),
        idle_timeout: std::time::Duration::from_secs(5),
        max_connections: max,
        max_per_peer: (max / 2).max(4),
    }
}

/// Serves the health endpoints until `shutdown` resolves. Each connection answers one request
/// (probes do not reuse connections), must send it within 5 s, and connections are capped like
/// every other listener's.
pub async fn serve<R: Readiness + ?Sized>(
    listener: TcpListener,
    cfg: HealthConfig,
    state: Arc<R>,
    nofile: u64,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let cfg = Arc::new(cfg);
    let registry = crate::net::Registry::new(limits(nofile));
    let log = crate::net::LogLimiter::new();
    loop {
        let (sock, remote) = tokio::select! {
            () = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(listener = "health", error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(admission) = registry.admit(crate::net::PeerKey::Ip(remote.ip())) else { continue };
        let sock = crate::net::Tracked::new(sock, admission);
        let track = sock.track();
        let cfg = Arc::clone(&cfg);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let cfg = Arc::clone(&cfg);
                let state = Arc::clone(&state);
                let guard = track.begin();
                async move {
                    let path = req.uri().path();
                    let (code, body) = if path == cfg.live_path {
                        (StatusCode::OK, "live\n")
                    } else if path == cfg.ready_path {
                        if state.ready().await { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
                    } else {
                        (StatusCode::NOT_FOUND, "not found\n")
                    };
                    drop(guard);
                    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *resp.status_mut() = code;
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let io = hyper_util::rt::TokioIo::new(sock);
            let _ = hyper::server::conn::http1::Builder::new().keep_alive(false).serve_connection(io, svc).await;
        });
    }
}
