//! How cairn accepts connections: one path for every listener it serves.
//!
//! - Unix sockets (the server's admin socket, the agent's Workload API, and any later one)
//!   go through [`uds_incoming`]: the peer is pinned at accept ([`peer::PeerProcess`]), gRPC
//!   C-core clients get their `:authority` fixed ([`authority`]), and the
//!   connection is admitted and reaped by [`conn`].
//! - TCP with TLS (the server's gRPC port) goes through [`tls_incoming`]: per-address caps,
//!   handshake timeout, the same reaping.
//! - [`grpc_server`] is the tonic builder every gRPC listener starts from, with caps on
//!   streams, header size and keepalive.
//! - [`raise_nofile_limit`] lifts the soft descriptor limit at start, and [`fd_budget`] splits
//!   what is available between listeners, so caps trip before `accept` runs out of descriptors.

pub mod authority;
pub mod conn;
pub mod dial;
pub mod peer;

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener, UnixStream};

pub use conn::{ActivityLayer, ConnLimits, ConnTrack, LogLimiter, PeerKey, Registry, Tracked};
pub use peer::{PeerChanged, PeerCred, PeerProcess};

/// Most concurrent HTTP/2 streams one client connection may have open on any cairn server.
/// cairn's own clients use a handful (an agent: sync, SVID batches and a bundle watch); real
/// Workload API clients a few watches. Streams past the cap are refused by the HTTP/2 layer.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// Largest HTTP/2 header block a client may send (SPIRE's metadata is a few hundred bytes).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Who is on the other end of a connection: what handlers find in a request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The connection's activity counter.
    pub track: Arc<ConnTrack>,
    /// The peer.
    pub peer: Peer,
}

/// The peer of a connection, by transport.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A local process on a Unix socket, pinned at accept.
    Unix(PeerProcess),
    /// A TLS client.
    Tls {
        /// Its address.
        remote: SocketAddr,
        /// Its certificate chain, if it presented one.
        certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    },
}

impl ConnInfo {
    /// The TLS client's certificates, if any.
    #[must_use]
    pub fn peer_certs(&self) -> Option<Arc<Vec<CertificateDer<'static>>>> {
        match &self.peer {
            Peer::Tls { certs, .. } => certs.clone(),
            Peer::Unix(_) => None,
        }
    }

    /// The TLS client's address.
    #[must_use]
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        match &self.peer {
            Peer::Tls { remote, .. } => Some(*remote),
            Peer::Unix(_) => None,
        }
    }
}

/// An accepted connection with what is known about its peer.
pub struct Conn<IO> {
    io: IO,
    info: ConnInfo,
}

impl<IO> std::fmt::Debug for Conn<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("peer", &self.info.peer).finish_non_exhaustive()
    }
}

impl<IO> Conn<IO> {
    /// What is known about the peer.
    #[must_use]
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO> tonic::transport::server::Connected for Conn<IO> {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// A Unix socket connection as served: pinned peer, fixed `:authority`, admission and reaping.
pub type UdsConn = Conn<authority::AuthorityFix<Tracked<UnixStream>>>;

/// A TLS connection as served.
pub type TlsConn = Conn<tokio_rustls::server::TlsStream<Tracked<tokio::net::TcpStream>>>;

/// Waits a little after a failed accept (out of descriptors, mostly) so the loop does not spin,
/// logging at most once per interval.
async fn accept_failed(name: &'static str, log: &LogLimiter, e: &std::io::Error) {
    if let Some(suppressed) = log.allow() {
        tracing::warn!(listener = name, error = %e, suppressed, "accept failed");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The connections of a Unix socket listener, ready for tonic. Never yields an error.
pub fn uds_incoming(
    listener: UnixListener,
    registry: Arc<Registry>,
) -> impl Stream<Item = Result<UdsConn, std::io::Error>> + Send + 'static {
    let log = Arc::new(LogLimiter::new());
    futures::stream::unfold((listener, registry, log), |(listener, registry, log)| async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    accept_failed(registry.limits().name, &log, &e).await;
                    continue;
                }
            };
            let cred = match stream.peer_cred() {
                Ok(c) => PeerCred { pid: c.pid(), uid: c.uid(), gid: c.gid() },
                Err(e) => {
                    tracing::debug!(listener = registry.limits().name, error = %e, "no peer credentials; closing");
                    continue;
                }
            };
            let Some(admission) = registry.admit(PeerKey::Uid(cred.uid)) else { continue };
            // Pinning reads a few procfs entries: microseconds, so it stays on the accept path,
            // as close to the client's connect() as possible.
            let peer = PeerProcess::pin(cred, Path::new("/proc"));
            let tracked = Tracked::new(stream, admission);
            let info = ConnInfo { track: tracked.track(), peer: Peer::Unix(peer) };
            let conn = Conn { io: authority::AuthorityFix::new(tracked), info };
            return Some((Ok(conn), (listener, registry, log)));
        }
    })
}

/// How long a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections of a TLS listener, handshaken concurrently (a silent client cannot stall
/// others), ready for tonic. Never yields an error.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    registry: Arc<Registry>,
) -> impl Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
    let log = LogLimiter::new();
    let accept = async move {
        loop {
            let (sock, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        accept_failed(registry.limits().name, &log, &e).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            // Small gRPC messages must not wait for Nagle.
            let _ = sock.set_nodelay(true);
            let Some(admission) = registry.admit(PeerKey::Ip(remote.ip())) else { continue };
            let tracked = Tracked::new(sock, admission);
            let track = tracked.track();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tracked)).await {
                    Ok(Ok(tls)) => {
                        let certs =
                            tls.get_ref().1.peer_certificates().map(|c| Arc::new(c.iter().map(|d| d.clone().into_owned()).collect()));
                        let info = ConnInfo { track, peer: Peer::Tls { remote, certs } };
                        let _ = tx.send(Ok(Conn { io: tls, info })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    };
    tokio::spawn(accept);
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The tonic server builder every cairn gRPC listener starts from: stream and header caps,
/// keepalive pings (a peer that stops answering is dropped), and request counting for the
/// idle reaper.
#[must_use]
pub fn grpc_server() -> tonic::transport::Server<tower::layer::util::Stack<ActivityLayer, tower::layer::util::Identity>> {
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(ActivityLayer)
}

/// Raises the soft limit on open descriptors to the hard limit (as Go does for SPIRE at start),
/// returning the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.current != cur.maximum {
        let want = Rlimit { current: cur.maximum, maximum: cur.maximum };
        match setrlimit(Resource::Nofile, want) {
            Ok(()) => tracing::debug!(from = ?cur.current, to = ?cur.maximum, "raised the open-files limit"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Descriptors kept back from listeners for everything else (datastore, key files, logs,
/// outgoing connections).
const FD_RESERVE: u64 = 128;

/// How many connections a listener may hold: `percent` of the descriptors left after the
/// reserve, at most `ceiling`, at least 16.
#[must_use]
pub fn fd_budget(nofile: u64, percent: u64, ceiling: usize) -> usize {
    let avail = nofile.saturating_sub(FD_RESERVE).saturating_mul(percent) / 100;
    usize::try_from(avail).unwrap_or(usize::MAX).clamp(16, ceiling.max(16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_leave_a_reserve_and_respect_ceilings() {
        assert_eq!(fd_budget(1024, 50, 100_000), 448);
        assert_eq!(fd_budget(1_048_576, 50, 10_000), 10_000);
        assert_eq!(fd_budget(100, 50, 10_000), 16);
    }
}
