//! A gRPC client for the admin socket.

use std::path::Path;
use tonic::transport::{Channel, Endpoint};

/// Connects to the server's admin Unix socket.
///
/// # Errors
/// The socket is missing or refuses the connection, with a hint.
pub async fn connect_admin(path: &Path) -> Result<Channel, String> {
    let p = path.to_owned();
    // The URI is a placeholder: the connector below always dials the socket.
    let ep = Endpoint::try_from("http://cairn.admin.sock").map_err(|e| e.to_string())?;
    ep.connect_with_connector(tower::service_fn(move |_| {
        let p = p.clone();
        async move { tokio::net::UnixStream::connect(p).await.map(hyper_util::rt::TokioIo::new) }
    }))
    .await
    .map_err(|e| {
        format!(
            "cannot connect to the server's admin socket {}: {e} (is the server running? use -socketPath to point at it)",
            path.display()
        )
    })
}
