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

    /// Conditions an operator should know of even while ready (e.g. rotation failing because
    /// the upstream authority is down); one line each, added to the `/ready` body.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
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
                        (StatusCode::OK, "live\n".to_owned())
                    } else if path == cfg.ready_path {
                        let (code, mut body) = if state.ready().await {
                            (StatusCode::OK, "ready\n".to_owned())
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned())
                        };
                        for w in state.warnings() {
                            body.push_str("warning: ");
                            body.push_str(&w.replace('\n', " "));
                            body.push('\n');
                        }
                        (code, body)
                    } else {
                        (StatusCode::NOT_FOUND, "not found\n".to_owned())
                    };
                    drop(guard);
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = code;
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let io = hyper_util::rt::TokioIo::new(sock);
            let _ = hyper::server::conn::http1::Builder::new().keep_alive(false).serve_connection(io, svc).await;
        });
    }
}
