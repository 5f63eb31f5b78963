//! Event time: what `now` is for plugins, timers, quarantine back-offs and
//! the registry, and how to wait for a point in it.
//!
//! The daemon runs on the [system clock](Clock::System). Tests and the
//! offline bench use a [`ManualClock`] that only moves when told to, so a
//! timer due in an hour fires as soon as the test advances the clock — no
//! test sleeps for real to see time pass.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::world::Timestamp;

/// The longest single sleep on the system clock; a wait re-reads the clock
/// at least this often, so a wall-clock jump is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// A source of event time.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The machine's wall clock.
    #[default]
    System,
    /// A clock that moves only when told to.
    Manual(Arc<ManualClock>),
}

impl Clock {
    /// A manual clock starting at `start`, and the handle that moves it.
    pub fn manual(start: Timestamp) -> (Self, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(start));
        (Self::Manual(clock.clone()), clock)
    }

    /// The current time (ms since the Unix epoch).
    pub fn now(&self) -> Timestamp {
        match self {
            Self::System => jiff::Timestamp::now().as_millisecond(),
            Self::Manual(clock) => clock.now(),
        }
    }

    /// Resolves once the clock reads `at` or later.
    pub async fn sleep_until(&self, at: Timestamp) {
        match self {
            Self::System => loop {
                let left = at.saturating_sub(self.now());
                if left <= 0 {
                    return;
                }
                let left = Duration::from_millis(u64::try_from(left).unwrap_or(u64::MAX));
                tokio::time::sleep(left.min(MAX_SLEEP)).await;
            },
            Self::Manual(clock) => clock.reached(at).await,
        }
    }
}

/// A clock for tests and the offline bench.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<Timestamp>,
}

impl ManualClock {
    fn new(start: Timestamp) -> Self {
        Self {
            now: watch::Sender::new(start),
        }
    }

    /// The time it reads.
    pub fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now.send_modify(|now| *now = now.saturating_add(by));
    }

    /// Sets the clock to `at` if that is later than what it reads.
    pub fn advance_to(&self, at: Timestamp) {
        self.now.send_if_modified(|now| {
            let later = at > *now;
            if later {
                *now = at;
            }
            later
        });
    }

    async fn reached(&self, at: Timestamp) {
        let mut now = self.now.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = now.wait_for(|now| *now >= at).await;
    }
}

/// The wait before retry number `attempt` (1 for the first): `first`,
/// doubling with each attempt, never more than `max`. Shared by failed
/// deliveries, failed restores and plugins asking for a retry.
pub fn backoff(first: Duration, attempt: u32, max: Duration) -> Duration {
    first
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(max)
}

/// RFC 3339 text of a timestamp (`2026-01-22T10:00:00Z`).
pub fn rfc3339(ms: Timestamp) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let ms = Duration::from_millis;
        assert_eq!(backoff(ms(100), 1, ms(30_000)), ms(100));
        assert_eq!(backoff(ms(100), 3, ms(30_000)), ms(400));
        assert_eq!(backoff(ms(100), 10, ms(30_000)), ms(30_000));
        // The most a manifest allows (10 s, 20 retries) stays capped.
        assert_eq!(backoff(ms(10_000), 20, ms(30_000)), ms(30_000));
        assert_eq!(backoff(ms(10_000), u32::MAX, ms(30_000)), ms(30_000));
    }

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_advanced() {
        let (clock, hand) = Clock::manual(1_000);
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(61_000).await }
        });
        hand.advance(Duration::from_secs(30));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        hand.advance_to(61_000);
        sleeper.await.unwrap();
        assert_eq!(clock.now(), 61_000);
        hand.advance_to(5);
        assert_eq!(clock.now(), 61_000, "never moves back");
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(1_769_076_000_000), "2026-01-22T10:00:00Z");
    }
}
