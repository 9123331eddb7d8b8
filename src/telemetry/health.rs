//! `health_checks`: `/live` and `/ready` over plain HTTP/1.

use crate::api::ApiState;
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

#[async_trait::async_trait]
impl Readiness for ApiState {
    /// A server is ready with a valid CA and a reachable datastore.
    async fn ready(&self) -> bool {
        self.ca.x509_authority().is_some_and(|a| a.not_after > crate::now_unix()) && self.datastore.count_entries().await.is_ok()
    }
}

#[async_trait::async_trait]
impl Readiness for crate::agent::manager::Agent {
    /// An agent is ready once it has synced with its server.
    async fn ready(&self) -> bool {
        crate::agent::cache::WorkloadSource::subscribe(self).borrow().is_some()
    }
}

/// Serves the health endpoints until `shutdown` resolves.
pub async fn serve<R: Readiness + ?Sized>(
    listener: TcpListener,
    cfg: HealthConfig,
    state: Arc<R>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let cfg = Arc::new(cfg);
    loop {
        let (sock, _) = tokio::select! {
            () = &mut shutdown => return,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let cfg = Arc::clone(&cfg);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let cfg = Arc::clone(&cfg);
                let state = Arc::clone(&state);
                async move {
                    let path = req.uri().path();
                    let (code, body) = if path == cfg.live_path {
                        (StatusCode::OK, "live\n")
                    } else if path == cfg.ready_path {
                        if state.ready().await { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
                    } else {
                        (StatusCode::NOT_FOUND, "not found\n")
                    };
                    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *resp.status_mut() = code;
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let io = hyper_util::rt::TokioIo::new(sock);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}
