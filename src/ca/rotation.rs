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
}
