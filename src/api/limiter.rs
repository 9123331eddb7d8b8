//! Per-peer throttling of failed node attestations.
//!
//! SPIRE has no such limit. cairn adds one so that a peer guessing join tokens, or replaying
//! node certificates it cannot prove, is slowed down and shows up in the log. Only failures
//! count: a fleet of agents behind one NAT attesting successfully never meets the limit, and a
//! peer that is throttled is told so (`ResourceExhausted`) with the wait.
//!
//! The bucket is kept in its GCRA form: one timestamp per peer ("theoretical arrival time"),
//! which each failure pushes `interval` further into the future. A peer is throttled while that
//! time lies more than `(burst - 1) * interval` ahead of now, so `burst` failures in a row are
//! allowed and then one more per `interval`. Time is passed in, so the rules are tested
//! without sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits of [`FailureLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterConfig {
    /// Failures a peer may have in a row before it is throttled.
    pub burst: u32,
    /// One failure is forgiven per `interval` (`burst` per `burst * interval`).
    pub interval: Duration,
    /// Peers tracked at most; past this, peers whose failures have all been forgiven are
    /// dropped, and if every slot still holds a throttled peer, new peers are not tracked
    /// (memory stays bounded whatever the number of source addresses).
    pub max_peers: usize,
}

impl Default for LimiterConfig {
    /// 10 failures a minute per peer: far above what a misconfigured agent's retries produce,
    /// far below what guessing needs.
    fn default() -> Self {
        Self { burst: 10, interval: Duration::from_secs(6), max_peers: 100_000 }
    }
}

/// Failed-attempt limiter keyed by peer address (IPv6 by /64, the usual size of one host's
/// allocation, so an attacker cannot escape by rotating addresses inside it).
#[derive(Debug)]
pub struct FailureLimiter {
    config: LimiterConfig,
    peers: Mutex<HashMap<IpAddr, Instant>>,
}

// === impl FailureLimiter ===

impl FailureLimiter {
    /// A limiter with `config`.
    #[must_use]
    pub fn new(config: LimiterConfig) -> Self {
        Self { config, peers: Mutex::new(HashMap::new()) }
    }

    /// `Err(wait)` when `peer` is throttled at `now`: it may try again after `wait`.
    ///
    /// # Errors
    /// The time left before the peer's next attempt is accepted.
    pub fn check(&self, peer: IpAddr, now: Instant) -> Result<(), Duration> {
        let Ok(peers) = self.peers.lock() else { return Ok(()) };
        match peers.get(&key(peer)) {
            Some(tat) => {
                let wait = tat.saturating_duration_since(now).saturating_sub(self.allowance());
                if wait.is_zero() { Ok(()) } else { Err(wait) }
            }
            None => Ok(()),
        }
    }

    /// Records a failed attempt by `peer` at `now`. Returns true when this failure makes the
    /// peer throttled (once per episode, so the caller can log it without flooding).
    pub fn record_failure(&self, peer: IpAddr, now: Instant) -> bool {
        let Ok(mut peers) = self.peers.lock() else { return false };
        let k = key(peer);
        if !peers.contains_key(&k) && peers.len() >= self.config.max_peers {
            // Forgiven peers carry no information; drop them before refusing to track.
            peers.retain(|_, tat| *tat > now);
            if peers.len() >= self.config.max_peers {
                return false;
            }
        }
        let tat = peers.entry(k).or_insert(now);
        let was_throttled = tat.saturating_duration_since(now) > self.allowance();
        *tat = (*tat).max(now) + self.config.interval;
        let throttled = tat.saturating_duration_since(now) > self.allowance();
        throttled && !was_throttled
    }

    /// How far ahead of now a peer's arrival time may be without throttling.
    fn allowance(&self) -> Duration {
        self.config.interval.saturating_mul(self.config.burst.saturating_sub(1))
    }

    /// Peers tracked (tests).
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.peers.lock().map(|p| p.len()).unwrap_or(0)
    }
}

impl Default for FailureLimiter {
    fn default() -> Self {
        Self::new(LimiterConfig::default())
    }
}

/// The address a peer is counted under: IPv4 as is (also when mapped into IPv6), IPv6 by /64.
fn key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limiter(burst: u32, secs: u64, max_peers: usize) -> FailureLimiter {
        FailureLimiter::new(LimiterConfig { burst, interval: Duration::from_secs(secs), max_peers })
    }

    #[test]
    fn burst_failures_then_one_per_interval() {
        let l = limiter(3, 10, 16);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert!(!l.record_failure(a, t0));
        assert!(!l.record_failure(a, t0));
        assert_eq!(l.check(a, t0), Ok(()), "two failures of a burst of three are allowed");
        assert!(l.record_failure(a, t0), "the third failure throttles, and says so once");
        assert_eq!(l.check(a, t0), Err(Duration::from_secs(10)));
        assert_eq!(l.check(a, t0 + Duration::from_secs(4)), Err(Duration::from_secs(6)));
        // After one interval, one more attempt; failing it throttles again.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(l.check(a, t1), Ok(()));
        assert!(l.record_failure(a, t1));
        assert_eq!(l.check(a, t1), Err(Duration::from_secs(10)));
        // Long quiet: everything is forgiven, a whole burst is available again.
        let t2 = t1 + Duration::from_secs(60);
        assert!(!l.record_failure(a, t2));
        assert!(!l.record_failure(a, t2));
        assert_eq!(l.check(a, t2), Ok(()));
    }

    #[test]
    fn a_throttled_peer_failing_again_is_not_reported_again() {
        let l = limiter(1, 5, 16);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert!(l.record_failure(a, t0));
        assert!(!l.record_failure(a, t0), "already throttled");
        assert_eq!(l.check(a, t0), Err(Duration::from_secs(10)), "failing while throttled extends the wait");
    }

    #[test]
    fn peers_are_counted_apart_and_ipv6_by_slash_64() {
        let l = limiter(1, 60, 16);
        let t0 = Instant::now();
        l.record_failure(ip("192.0.2.1"), t0);
        assert!(l.check(ip("192.0.2.1"), t0).is_err());
        assert!(l.check(ip("::ffff:192.0.2.1"), t0).is_err(), "an IPv4-mapped address is the same peer");
        assert_eq!(l.check(ip("192.0.2.2"), t0), Ok(()));
        l.record_failure(ip("2001:db8:1:2::1"), t0);
        assert!(l.check(ip("2001:db8:1:2:ffff::9"), t0).is_err(), "same /64");
        assert_eq!(l.check(ip("2001:db8:1:3::1"), t0), Ok(()), "another /64");
    }

    #[test]
    fn memory_is_bounded_and_forgiven_peers_make_room() {
        let l = limiter(1, 10, 2);
        let t0 = Instant::now();
        l.record_failure(ip("192.0.2.1"), t0);
        l.record_failure(ip("192.0.2.2"), t0);
        // Full of throttled peers: a third is not tracked (and so not throttled).
        assert!(!l.record_failure(ip("192.0.2.3"), t0));
        assert_eq!(l.check(ip("192.0.2.3"), t0), Ok(()));
        assert_eq!(l.tracked(), 2);
        // Once the first two are forgiven, they make room.
        let later = t0 + Duration::from_secs(11);
        assert!(l.record_failure(ip("192.0.2.3"), later));
        assert_eq!(l.tracked(), 1);
        assert!(l.check(ip("192.0.2.3"), later).is_err());
    }
}
