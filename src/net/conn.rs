//! Connection admission and reaping, shared by every listener cairn serves.
//!
//! Each listener has a [`Registry`] with a cap on its connections overall and per peer (a uid
//! on a Unix socket, an IP address on TCP). Every accepted connection is wrapped in
//! [`Tracked`], which closes it when
//! - it has not made its first request within `first_request_timeout` (this covers a client
//!   that never finishes TLS, never sends the HTTP/2 preface, or sends nothing at all);
//! - it has had no request in flight for `idle_timeout` (requests are counted by
//!   [`ActivityLayer`], so a long-lived stream keeps its connection);
//! - the registry evicts it to make room.
//!
//! At a cap, the newcomer is not simply refused: the registry evicts the oldest connection of
//! that scope that never made a request, else the oldest idle one, and only when every
//! connection is busy is the newcomer refused. A flood of silent connections therefore cannot
//! lock out a legitimate caller, even from the same address, and costs the flooder its own
//! oldest connections first.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a connection is charged to for the per-peer cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// A Unix socket caller, by effective uid.
    Uid(u32),
    /// A TCP caller, by address.
    Ip(IpAddr),
    /// The kernel did not say (charged to one shared bucket).
    Unknown,
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uid(u) => write!(f, "uid {u}"),
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Unknown => f.write_str("unknown peer"),
        }
    }
}

/// The limits of one listener.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Listener name for logs ("admin socket", "Workload API", ...).
    pub name: &'static str,
    /// From accept to the first request.
    pub first_request_timeout: Duration,
    /// With no request in flight.
    pub idle_timeout: Duration,
    /// Connections at once on this listener.
    pub max_connections: usize,
    /// Connections at once from one peer.
    pub max_per_peer: usize,
}

/// Per-connection state shared by the I/O wrapper, the activity layer and the registry.
#[derive(Debug)]
pub struct ConnTrack {
    id: u64,
    /// Requests in flight (a stream counts until its response body is dropped).
    active: AtomicUsize,
    served_any: AtomicBool,
    evicted: AtomicBool,
    /// Milliseconds since `opened` at which the connection last became idle.
    idle_since_ms: AtomicU64,
    opened: Instant,
    waker: AtomicWaker,
}

impl ConnTrack {
    fn new(id: u64) -> Self {
        Self {
            id,
            active: AtomicUsize::new(0),
            served_any: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
            waker: AtomicWaker::new(),
        }
    }

    /// Marks a request as started; the returned guard ends it when dropped.
    #[must_use]
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.served_any.store(true, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(Arc::clone(self))
    }

    fn is_idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// When the connection is to be closed, if nothing happens before; `None` while a request is
    /// in flight.
    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        if !self.is_idle() {
            return None;
        }
        let since = self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        let timeout = if self.served_any.load(Ordering::Relaxed) { limits.idle_timeout } else { limits.first_request_timeout };
        Some(since + timeout)
    }
}

/// Ends a request on its connection when dropped.
#[derive(Debug)]
pub struct ActiveGuard(Arc<ConnTrack>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let t = &self.0;
        // Record when the connection went idle before the count reaches zero, so the reaper
        // never sees an idle connection with a stale idle-since time.
        let ms = u64::try_from(t.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        t.idle_since_ms.store(ms, Ordering::Release);
        t.active.fetch_sub(1, Ordering::AcqRel);
        // Let the I/O wrapper re-arm its timer from the new idle time.
        t.waker.wake();
    }
}

#[derive(Debug, Default)]
struct RegistryState {
    total: usize,
    per_peer: HashMap<PeerKey, usize>,
    conns: BTreeMap<u64, (PeerKey, Weak<ConnTrack>)>,
    next_id: u64,
}

/// The connections of one listener.
#[derive(Debug)]
pub struct Registry {
    limits: ConnLimits,
    state: Mutex<RegistryState>,
    refusals: LogLimiter,
    evictions: LogLimiter,
}

/// A connection's place in its registry, released on drop.
#[derive(Debug)]
pub struct Admission {
    registry: Arc<Registry>,
    key: PeerKey,
    track: Arc<ConnTrack>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.registry.release(self.key, self.track.id);
    }
}

impl Registry {
    /// A registry enforcing `limits`.
    #[must_use]
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(Self { limits, state: Mutex::new(RegistryState::default()), refusals: LogLimiter::new(), evictions: LogLimiter::new() })
    }

    /// The limits.
    #[must_use]
    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Connections currently admitted.
    #[must_use]
    pub fn count(&self) -> usize {
        self.state.lock().map_or(0, |s| s.total)
    }

    /// Admits a new connection from `key`, evicting an unused one at a cap; `None` (and a
    /// rate-limited log line) when every connection in the way is busy.
    #[must_use]
    pub fn admit(self: &Arc<Self>, key: PeerKey) -> Option<Admission> {
        let Ok(mut st) = self.state.lock() else { return None };
        let mut evicted = 0;
        if st.per_peer.get(&key).copied().unwrap_or(0) >= self.limits.max_per_peer {
            if !Self::evict_one(&st, Some(key)) {
                drop(st);
                self.refused(key, "per-peer");
                return None;
            }
            evicted += 1;
        }
        if st.total >= self.limits.max_connections + evicted {
            if !Self::evict_one(&st, None) {
                drop(st);
                self.refused(key, "listener");
                return None;
            }
            evicted += 1;
        }
        st.next_id += 1;
        let track = Arc::new(ConnTrack::new(st.next_id));
        st.conns.insert(track.id, (key, Arc::downgrade(&track)));
        st.total += 1;
        *st.per_peer.entry(key).or_insert(0) += 1;
        drop(st);
        if evicted > 0
            && let Some(suppressed) = self.evictions.allow()
        {
            tracing::info!(listener = self.limits.name, peer = %key, suppressed, "connection cap reached: closed an unused connection to admit a new one");
        }
        Some(Admission { registry: Arc::clone(self), key, track })
    }

    /// Marks the oldest never-used (else oldest idle) connection of `scope` (or of any peer)
    /// for closing. Its slot frees when it has closed.
    fn evict_one(st: &RegistryState, scope: Option<PeerKey>) -> bool {
        let live = || {
            st.conns
                .values()
                .filter(|(k, _)| scope.is_none_or(|s| s == *k))
                .filter_map(|(_, w)| w.upgrade())
                .filter(|t| !t.evicted.load(Ordering::Acquire) && t.is_idle())
        };
        let victim = live().find(|t| !t.served_any.load(Ordering::Relaxed)).or_else(|| live().next());
        victim.is_some_and(|t| {
            t.evict();
            true
        })
    }

    fn release(&self, key: PeerKey, id: u64) {
        let Ok(mut st) = self.state.lock() else { return };
        if st.conns.remove(&id).is_some() {
            st.total = st.total.saturating_sub(1);
            if let Some(n) = st.per_peer.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.per_peer.remove(&key);
                }
            }
        }
    }

    fn refused(&self, key: PeerKey, which: &str) {
        if let Some(suppressed) = self.refusals.allow() {
            tracing::warn!(
                listener = self.limits.name,
                peer = %key,
                cap = which,
                max_connections = self.limits.max_connections,
                max_per_peer = self.limits.max_per_peer,
                suppressed,
                "connection refused: every connection counted against the cap is busy"
            );
        }
    }
}

/// An accepted connection under its registry's timeouts.
pub struct Tracked<IO> {
    io: IO,
    admission: Admission,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<IO> std::fmt::Debug for Tracked<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked").field("id", &self.admission.track.id).finish_non_exhaustive()
    }
}

impl<IO> Tracked<IO> {
    /// Puts `io` under `admission`'s limits.
    pub fn new(io: IO, admission: Admission) -> Self {
        let first = Instant::now() + admission.registry.limits.first_request_timeout;
        Self { io, admission, timer: Box::pin(tokio::time::sleep_until(first.into())) }
    }

    /// The connection's activity counter (for [`ActivityLayer`]).
    #[must_use]
    pub fn track(&self) -> Arc<ConnTrack> {
        Arc::clone(&self.admission.track)
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Whether the connection must close now; re-arms the timer otherwise.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let track = &self.admission.track;
        let limits = &self.admission.registry.limits;
        track.waker.register(cx.waker());
        loop {
            if track.evicted.load(Ordering::Acquire) {
                return Some(io::Error::new(io::ErrorKind::ConnectionAborted, "evicted to admit another connection"));
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            match track.deadline(limits) {
                Some(d) if d <= now => {
                    let what = if track.served_any.load(Ordering::Relaxed) { "idle" } else { "no request" };
                    tracing::debug!(listener = limits.name, what, "closing connection after timeout");
                    return Some(io::Error::new(io::ErrorKind::TimedOut, format!("connection closed: {what} timeout")));
                }
                Some(d) => self.timer.as_mut().reset(d.into()),
                // Busy: look again one idle period from now (the guard's drop also wakes us).
                None => self.timer.as_mut().reset((now + limits.idle_timeout).into()),
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.admission.track.evicted.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "evicted")));
        }
        Pin::new(&mut self.io).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One log line per interval at most, counting what it held back.
#[derive(Debug)]
pub struct LogLimiter {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    const INTERVAL: Duration = Duration::from_secs(10);

    /// A limiter that has not logged yet.
    #[must_use]
    pub fn new() -> Self {
        Self { last: Mutex::new(None), suppressed: AtomicU64::new(0) }
    }

    /// `Some(lines held back since the last one)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let Ok(mut last) = self.last.lock() else { return None };
        if last.is_some_and(|l| now.duration_since(l) < Self::INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts a connection's requests in flight, so [`Tracked`] can tell idle connections from
/// busy ones. Finds the connection through [`super::ConnInfo`] in the request's extensions.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = Activity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Activity { inner }
    }
}

/// See [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct Activity<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Activity<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ActiveBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = req.extensions().get::<super::ConnInfo>().map(|c| c.track.begin());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| ActiveBody { inner: body, _guard: guard }))
        })
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
#[derive(Debug)]
pub struct ActiveBody<B> {
    inner: B,
    _guard: Option<ActiveGuard>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for ActiveBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]
    use super::*;

    fn limits(max: usize, per_peer: usize) -> ConnLimits {
        ConnLimits {
            name: "test",
            first_request_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(400),
            max_connections: max,
            max_per_peer: per_peer,
        }
    }

    #[test]
    fn at_the_per_peer_cap_the_flooders_own_unused_connection_goes_first() {
        let r = Registry::new(limits(10, 2));
        let a = PeerKey::Uid(65534);
        let first = r.admit(a).unwrap();
        let second = r.admit(a).unwrap();
        drop(second.track.begin()); // in flight, then done: used, but idle
        let third = r.admit(a).unwrap();
        assert!(first.track.evicted.load(Ordering::Acquire), "the never-used connection is evicted first");
        assert!(!second.track.evicted.load(Ordering::Acquire));
        drop(first);
        assert_eq!(r.count(), 2);
        drop((second, third));
        assert_eq!(r.count(), 0);
    }

    #[test]
    fn busy_connections_are_never_evicted_and_the_newcomer_is_refused() {
        let r = Registry::new(limits(2, 2));
        let k = PeerKey::Ip("127.0.0.1".parse().unwrap());
        let a = r.admit(k).unwrap();
        let b = r.admit(k).unwrap();
        let _ga = a.track.begin();
        let _gb = b.track.begin();
        assert!(r.admit(k).is_none());
        assert!(r.admit(PeerKey::Uid(0)).is_none(), "the listener cap holds for other peers too");
    }

    #[test]
    fn another_peer_gets_in_at_the_listener_cap() {
        let r = Registry::new(limits(3, 3));
        let flood = PeerKey::Uid(65534);
        let conns: Vec<_> = (0..3).map(|_| r.admit(flood).unwrap()).collect();
        let legit = r.admit(PeerKey::Uid(0));
        assert!(legit.is_some());
        assert_eq!(conns.iter().filter(|c| c.track.evicted.load(Ordering::Acquire)).count(), 1);
    }

    #[test]
    fn deadlines_follow_activity() {
        let l = limits(1, 1);
        let t = Arc::new(ConnTrack::new(1));
        let d0 = t.deadline(&l).unwrap();
        assert!(d0 <= t.opened + l.first_request_timeout);
        let g = t.begin();
        assert_eq!(t.deadline(&l), None, "a request in flight keeps the connection");
        drop(g);
        let d1 = t.deadline(&l).unwrap();
        assert!(d1 >= t.opened + l.idle_timeout, "after a request the idle timeout applies");
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_first_request_timeout() {
        use tokio::io::AsyncReadExt;
        let r = Registry::new(limits(4, 4));
        let (client, server) = tokio::io::duplex(64);
        let mut t = Tracked::new(server, r.admit(PeerKey::Unknown).unwrap());
        let start = Instant::now();
        let mut buf = [0u8; 8];
        let err = t.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(190));
        drop((t, client));
        assert_eq!(r.count(), 0);
    }

    #[test]
    fn the_log_limiter_counts_what_it_held_back() {
        let l = LogLimiter::new();
        let t0 = Instant::now();
        assert_eq!(l.allow_at(t0), Some(0));
        assert_eq!(l.allow_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow_at(t0 + Duration::from_secs(2)), None);
        assert_eq!(l.allow_at(t0 + Duration::from_secs(11)), Some(2));
    }
}
