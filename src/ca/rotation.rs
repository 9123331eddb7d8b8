//! When to prepare and activate the next CA or JWT key: pure functions of `now`.
//!
//! SPIRE's thresholds: prepare the next slot once the current one has less than
//! min(lifetime/2, 30 days) left, activate it once less than min(lifetime/6, 7 days) is left.
//! With `ca_ttl = 24h` a CA is prepared at +12h and activated at +20h, so every new root is
//! in the bundle 8h before anything is signed with it.

/// Upper bound on how early the next slot is prepared.
pub const PREPARE_CAP_SECS: i64 = 30 * 24 * 3600;
/// Upper bound on how early the next slot is activated.
pub const ACTIVATE_CAP_SECS: i64 = 7 * 24 * 3600;

/// Validity window of a slot's credential, in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Start of validity (the certificate's notBefore, or the JWT key's issue time).
    pub not_before: i64,
    /// End of validity.
    pub not_after: i64,
}

/// What the rotator should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// No usable current credential: make one and use it at once.
    PrepareAndActivate,
    /// Make the next credential (and publish it) without using it yet.
    PrepareNext,
    /// Swap the prepared next credential in.
    ActivateNext,
    /// Nothing to do.
    Nothing,
}

impl Lifetime {
    fn life(self) -> i64 {
        (self.not_after - self.not_before).max(0)
    }

    /// The moment the next slot should be prepared.
    #[must_use]
    pub fn prepare_at(self) -> i64 {
        self.not_after - (self.life() / 2).min(PREPARE_CAP_SECS)
    }

    /// The moment the next slot should be activated.
    #[must_use]
    pub fn activate_at(self) -> i64 {
        self.not_after - (self.life() / 6).min(ACTIVATE_CAP_SECS)
    }

    /// Whether `now` lies inside the validity window.
    #[must_use]
    pub fn is_valid_at(self, now: i64) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// Decides the rotator's next step from the current and next slots.
#[must_use]
pub fn next_action(current: Option<Lifetime>, next: Option<Lifetime>, now: i64) -> Action {
    let next_usable = next.is_some_and(|n| n.is_valid_at(now));
    match current {
        Some(cur) if cur.is_valid_at(now) => {
            if now >= cur.activate_at() && next_usable {
                Action::ActivateNext
            } else if now >= cur.prepare_at() && !next_usable {
                Action::PrepareNext
            } else {
                Action::Nothing
            }
        }
        // Current missing or expired: a valid prepared slot is promoted, else start afresh.
        _ if next_usable => Action::ActivateNext,
        _ => Action::PrepareAndActivate,
    }
}

/// Which of this tier's X.509 CAs signs a downstream tier's CA, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamPlan {
    /// Sign with the prepared (next) CA rather than the active one.
    pub use_next: bool,
    /// notAfter of the downstream CA: the requested lifetime, capped at the signer's expiry.
    pub not_after: i64,
}

/// Picks the signer of a downstream CA asking for `ttl` seconds at `now`.
///
/// SPIRE always signs with the active CA and caps the downstream CA at its expiry
/// (`credtemplate.computeCappedLifetime`), so with equal `ca_ttl` at every tier a downstream CA
/// minted late in its upstream's life comes out short. When the active CA cannot cover the
/// request and the prepared CA has been published (its trust anchor in the bundle) for at
/// least `grace` seconds, every tier and agent can already chain to it, so the prepared CA
/// signs and the downstream gets up to its full lifetime. Otherwise the active CA signs and
/// caps, as SPIRE does. `next` is the prepared CA's validity and the time it was published.
#[must_use]
pub fn plan_downstream_ca(active: Lifetime, next: Option<(Lifetime, i64)>, now: i64, ttl: i64, grace: i64) -> DownstreamPlan {
    let want = now.saturating_add(ttl);
    if want <= active.not_after {
        return DownstreamPlan { use_next: false, not_after: want };
    }
    match next {
        Some((n, published_at)) if n.is_valid_at(now) && now >= published_at.saturating_add(grace) && n.not_after > active.not_after => {
            DownstreamPlan { use_next: true, not_after: want.min(n.not_after) }
        }
        _ => DownstreamPlan { use_next: false, not_after: active.not_after },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;

    #[test]
    fn thresholds_for_default_ttl() {
        let l = Lifetime { not_before: 0, not_after: 24 * H };
        assert_eq!(l.prepare_at(), 12 * H);
        assert_eq!(l.activate_at(), 20 * H);
    }

    #[test]
    fn thresholds_are_capped_for_long_ttls() {
        let year = 365 * 24 * H;
        let l = Lifetime { not_before: 0, not_after: year };
        assert_eq!(l.prepare_at(), year - PREPARE_CAP_SECS);
        assert_eq!(l.activate_at(), year - ACTIVATE_CAP_SECS);
    }

    #[test]
    fn walk_through_a_full_rotation_with_an_injected_clock() {
        let cur = Lifetime { not_before: 0, not_after: 24 * H };
        let next = Lifetime { not_before: 12 * H, not_after: 36 * H };
        // (current, next, now) -> action
        let cases = [
            (None, None, 0, Action::PrepareAndActivate),
            (Some(cur), None, H, Action::Nothing),
            (Some(cur), None, 12 * H - 1, Action::Nothing),
            (Some(cur), None, 12 * H, Action::PrepareNext),
            (Some(cur), Some(next), 13 * H, Action::Nothing),
            (Some(cur), Some(next), 20 * H - 1, Action::Nothing),
            (Some(cur), Some(next), 20 * H, Action::ActivateNext),
            // Past the activation point without a next slot: prepare first, activate next tick.
            (Some(cur), None, 21 * H, Action::PrepareNext),
            // Current expired (server was down): promote a still-valid next, else start over.
            (Some(cur), Some(next), 25 * H, Action::ActivateNext),
            (Some(cur), None, 25 * H, Action::PrepareAndActivate),
            // A prepared slot that itself expired is useless.
            (Some(cur), Some(next), 40 * H, Action::PrepareAndActivate),
        ];
        for (c, n, now, want) in cases {
            assert_eq!(next_action(c, n, now), want, "current={c:?} next={n:?} now={now}");
        }
    }

    #[test]
    fn downstream_ca_signer_and_cap() {
        let t = 24 * H;
        let active = Lifetime { not_before: 0, not_after: t };
        let next = Lifetime { not_before: 12 * H, not_after: 36 * H };
        let grace = 5;
        // (next, now, ttl) -> (use_next, not_after)
        let cases = [
            // The active CA covers the request: it signs, nothing is capped.
            (Some((next, 12 * H)), H, 4 * H, (false, 5 * H)),
            // No prepared CA: capped at the active CA's expiry (SPIRE's behaviour).
            (None, 12 * H, t, (false, t)),
            // A prepared CA published less than the grace ago: not every tier may know it yet.
            (Some((next, 12 * H)), 12 * H + grace - 1, t, (false, t)),
            // Published long enough ago: it signs, capped at its own expiry.
            (Some((next, 12 * H)), 12 * H + grace, t, (true, 36 * H)),
            (Some((next, 12 * H)), 13 * H, 4 * H - 1 + 12 * H, (true, 29 * H - 1)),
            // A prepared CA that is not valid yet is never used.
            (Some((Lifetime { not_before: 15 * H, not_after: 39 * H }, 12 * H)), 13 * H, t, (false, t)),
        ];
        for (n, now, ttl, (use_next, not_after)) in cases {
            assert_eq!(
                plan_downstream_ca(active, n, now, ttl, grace),
                DownstreamPlan { use_next, not_after },
                "next={n:?} now={now} ttl={ttl}"
            );
        }
        // A capped downstream CA (issued at 12h, cut at 24h) rotates on its actual lifetime.
        let capped = Lifetime { not_before: 12 * H, not_after: 24 * H };
        assert_eq!((capped.prepare_at(), capped.activate_at()), (18 * H, 22 * H));
    }

    /// One root and one downstream tier, both with the same `ca_ttl`, rotated with an
    /// injected clock over many lifetimes: the downstream always holds a valid CA with at
    /// least 1/12 of `ca_ttl` left, and no downstream CA comes out shorter than half of
    /// `ca_ttl` (signing only with the active CA, as SPIRE does, yields CAs of a quarter).
    #[test]
    fn equal_ca_ttl_at_both_tiers_rotates_without_short_cas() {
        let t = 24 * H;
        let tick = 10;
        let grace = 5;
        // (lifetime, published_at)
        let mut root_cur: Option<(Lifetime, i64)> = None;
        let mut root_next: Option<(Lifetime, i64)> = None;
        let mut down_cur: Option<Lifetime> = None;
        let mut down_next: Option<Lifetime> = None;
        let mut lifetimes = Vec::new();
        let mut min_left = i64::MAX;
        let mut now = 0;
        while now < 10 * t {
            match next_action(root_cur.map(|c| c.0), root_next.map(|n| n.0), now) {
                Action::Nothing => {}
                Action::PrepareNext => root_next = Some((Lifetime { not_before: now, not_after: now + t }, now)),
                Action::ActivateNext => root_cur = root_next.take(),
                Action::PrepareAndActivate => root_cur = Some((Lifetime { not_before: now, not_after: now + t }, now)),
            }
            let mut mint = |now: i64| {
                let (active, _) = root_cur.expect("root CA");
                let plan = plan_downstream_ca(active, root_next, now, t, grace);
                lifetimes.push(plan.not_after - now);
                Lifetime { not_before: now, not_after: plan.not_after }
            };
            match next_action(down_cur, down_next, now) {
                Action::Nothing => {}
                Action::PrepareNext => down_next = Some(mint(now)),
                Action::ActivateNext => down_cur = down_next.take(),
                Action::PrepareAndActivate => down_cur = Some(mint(now)),
            }
            let cur = down_cur.expect("downstream CA");
            assert!(cur.is_valid_at(now), "no valid downstream CA at {now}");
            min_left = min_left.min(cur.not_after - now);
            now += tick;
        }
        assert!(lifetimes.len() >= 10, "{lifetimes:?}");
        let shortest = lifetimes.iter().copied().min().unwrap_or(0);
        assert!(shortest >= t / 2 - tick, "a downstream CA lived only {shortest}s of {t}s: {lifetimes:?}");
        assert!(lifetimes.iter().any(|&l| l > t / 2 + H), "the prepared root never signed: {lifetimes:?}");
        assert!(min_left >= t / 12 - tick, "the downstream's CA had only {min_left}s left");
    }
}
