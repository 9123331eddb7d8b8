//! A gRPC client for the admin socket.

use std::path::Path;
use tonic::transport::Channel;

/// Connects to the server's admin Unix socket.
///
/// # Errors
/// The socket is missing or refuses the connection, with a hint.
pub async fn connect_admin(path: &Path) -> Result<Channel, String> {
    crate::net::dial::admin_channel(path).await.map_err(|e| e.to_string())
}
