//! The client side: gRPC channels over a Unix socket (the admin socket, a Workload API).

use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A socket that could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {what} {}: {source}{hint}", path.display())]
pub struct DialError {
    /// What the socket is, e.g. "the server's admin socket".
    pub what: &'static str,
    /// The socket's path.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: tonic::transport::Error,
    /// What to check, appended to the message (may be empty).
    pub hint: &'static str,
}

/// A channel over the Unix socket at `path`; the URI tonic needs is a placeholder, as the
/// connector always dials the socket.
///
/// # Errors
/// The socket is missing or refuses the connection.
pub async fn unix_channel(path: &Path, connect_timeout: Option<Duration>) -> Result<Channel, tonic::transport::Error> {
    let p = path.to_owned();
    let mut ep = Endpoint::from_static("http://cairn.unix.sock");
    if let Some(t) = connect_timeout {
        ep = ep.connect_timeout(t);
    }
    ep.connect_with_connector(tower::service_fn(move |_| {
        let p = p.clone();
        async move { tokio::net::UnixStream::connect(p).await.map(hyper_util::rt::TokioIo::new) }
    }))
    .await
}

/// A channel to a server's admin socket.
///
/// # Errors
/// [`DialError`] with a hint (is the server running? `-socketPath`).
pub async fn admin_channel(path: &Path) -> Result<Channel, DialError> {
    unix_channel(path, None).await.map_err(|source| DialError {
        what: "the server's admin socket",
        path: path.to_owned(),
        source,
        hint: " (is the server running? use -socketPath to point at it)",
    })
}
