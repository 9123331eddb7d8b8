//! The wall clock, read in one place.
//!
//! Domain code takes `now` (unix seconds) as a parameter. The edges read it through
//! [`crate::now_unix`]: request handlers, the CA rotation loop, SVID renewal in the server and the
//! agent, entry pruning, and certificate checks in TLS handshakes. Normally that is the system
//! clock.
//!
//! A test can install a [`ManualClock`] instead and move time itself: every reader sees the new
//! time at once, and the periodic loops that hold [`Moves`] wake up to act on it. Half a CA
//! lifetime then passes in a few milliseconds instead of minutes of sleeping, and
//! [`ManualClock::settle`] says when every loop has dealt with the latest move.
//!
//! The manual clock is process-wide on purpose. A tier's server, its agents, the embedded agent
//! of a `spire` upstream and both ends of every TLS handshake must agree on the time, and they
//! all read it here, so a test need not thread a clock through each of them. The price: a test
//! that installs one must have the process to itself (its own test binary, its tests taking
//! turns). Only one manual clock can be installed at a time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Whether a [`ManualClock`] is installed.
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Whether readers take the manual clock's time (set once it holds its start time).
static MANUAL: AtomicBool = AtomicBool::new(false);
/// The manual clock's time, unix seconds.
static MANUAL_NOW: AtomicI64 = AtomicI64::new(0);
/// Every move of the manual clock, as the time it moved to. Never sent while the system clock
/// is in use, so [`Moves::next`] then never resolves.
static MOVED: LazyLock<watch::Sender<i64>> = LazyLock::new(|| watch::Sender::new(i64::MIN));
/// For [`ManualClock::settle`]: each live [`Moves`] and the latest move it has dealt with.
static DEALT_WITH: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(Registry::default()));

#[derive(Default)]
struct Registry {
    next_id: u64,
    dealt_with: BTreeMap<u64, i64>,
}

/// Seconds since the Unix epoch: the manual clock's when one is installed, else the system's.
#[must_use]
pub fn now() -> i64 {
    if MANUAL.load(Ordering::Acquire) { MANUAL_NOW.load(Ordering::Acquire) } else { system_now() }
}

fn system_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A periodic loop's view of the manual clock: [`Moves::next`] resolves when the clock moves.
///
/// A loop calls `next()` in the same `select!` as its timer and its shutdown signal. Calling it
/// again also reports that the loop has finished with the moves it woke up for, which is what
/// [`ManualClock::settle`] waits for.
#[derive(Debug)]
pub struct Moves {
    id: u64,
    rx: watch::Receiver<i64>,
    /// The latest move this loop had seen when it last woke up.
    woke_at: i64,
}

/// A [`Moves`] for a periodic loop.
#[must_use]
pub fn moves() -> Moves {
    let mut rx = MOVED.subscribe();
    let woke_at = *rx.borrow_and_update();
    let mut reg = DEALT_WITH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let id = reg.next_id;
    reg.next_id += 1;
    // A new loop acts on the time it starts with: nothing earlier to deal with.
    reg.dealt_with.insert(id, woke_at);
    Moves { id, rx, woke_at }
}

impl Moves {
    /// Resolves when the manual clock has moved since this loop last woke up through here
    /// (at once if it already has); never while the system clock is in use.
    pub async fn next(&mut self) {
        if let Ok(mut reg) = DEALT_WITH.lock() {
            reg.dealt_with.insert(self.id, self.woke_at);
        }
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.woke_at = *self.rx.borrow_and_update();
    }
}

impl Drop for Moves {
    fn drop(&mut self) {
        if let Ok(mut reg) = DEALT_WITH.lock() {
            reg.dealt_with.remove(&self.id);
        }
    }
}

/// A clock that only moves when told to, installed for the whole process (see the module
/// docs). Dropping it puts the system clock back.
#[derive(Debug)]
pub struct ManualClock {
    _installed: (),
}

impl ManualClock {
    /// Installs a manual clock reading `start`; `None` if one is installed already.
    #[must_use]
    pub fn install(start: i64) -> Option<Self> {
        if INSTALLED.swap(true, Ordering::AcqRel) {
            return None;
        }
        MANUAL_NOW.store(start, Ordering::Release);
        MANUAL.store(true, Ordering::Release);
        MOVED.send_replace(start);
        Some(Self { _installed: () })
    }

    /// The time it reads.
    #[must_use]
    pub fn now(&self) -> i64 {
        MANUAL_NOW.load(Ordering::Acquire)
    }

    /// Moves it `secs` seconds forward and wakes every loop holding a [`Moves`].
    pub fn advance(&self, secs: i64) {
        let t = MANUAL_NOW.fetch_add(secs, Ordering::AcqRel) + secs;
        MOVED.send_replace(t);
    }

    /// Waits until every loop holding a [`Moves`] has woken up for the latest move and come
    /// back to wait for the next one. `false` if that takes longer than `timeout` (a loop
    /// stuck on something other than the clock).
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let latest = self.now();
            let settled = DEALT_WITH.lock().map(|reg| reg.dealt_with.values().all(|t| *t >= latest)).unwrap_or(false);
            if settled {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for ManualClock {
    fn drop(&mut self) {
        MANUAL.store(false, Ordering::Release);
        INSTALLED.store(false, Ordering::Release);
    }
}
