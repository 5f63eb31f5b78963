//! Warnings that input can raise once per record or per call — an
//! undecodable record, a plugin rejecting its input — held to a rate, so a
//! hostile producer or plugin cannot flood the daemon's log through them.
//!
//! What each warning reports is also counted in a metric and, for a record,
//! carried by its dead letter: a suppressed line loses nothing but the
//! line. Lines over the rate are counted in a `*_warnings_suppressed_total`
//! metric, and the next line let through is preceded by one saying how many
//! were left out.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

/// How many lines a [`LogThrottle`] lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained lines per second.
    pub per_second: u32,
    /// Lines let through in a burst above the sustained rate.
    pub burst: u32,
}

impl Rate {
    /// The rate of the daemon's per-record and per-call warnings: enough to
    /// see what is wrong, and a line a second while it goes on.
    pub const WARNINGS: Self = Self {
        per_second: 1,
        burst: 20,
    };
}

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: Rate,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: Rate) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst.max(1)),
            refilled: Instant::now(),
        }
    }

    /// Takes a token if there is one, refilling first.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.rate.per_second))
            .min(f64::from(self.rate.burst.max(1)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One kind of warning, held to a [`Rate`].
#[derive(Debug)]
pub struct LogThrottle {
    /// What the warnings are about, for the summary line (`records`, or a
    /// plugin's name).
    about: String,
    state: Mutex<Throttled>,
    suppressed: Counter,
}

#[derive(Debug)]
struct Throttled {
    bucket: TokenBucket,
    /// Lines left out since the last one let through.
    unreported: u64,
}

impl LogThrottle {
    /// Warnings about `about`, at most `rate`; lines left out are counted
    /// in `suppressed`.
    pub fn new(about: impl Into<String>, rate: Rate, suppressed: Counter) -> Self {
        Self {
            about: about.into(),
            state: Mutex::new(Throttled {
                bucket: TokenBucket::new(rate),
                unreported: 0,
            }),
            suppressed,
        }
    }

    /// Whether to write the next warning. When lines were left out before
    /// it, one line saying how many comes first.
    pub fn admit(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.bucket.take(Instant::now()) {
            state.unreported += 1;
            self.suppressed.inc();
            return false;
        }
        let left_out = std::mem::take(&mut state.unreported);
        drop(state);
        if left_out > 0 {
            tracing::warn!(
                about = %self.about,
                suppressed = left_out,
                "Similar warnings suppressed: over the rate limit (their metrics and dead letters are complete)."
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_let_through_and_the_rest_counted() {
        let suppressed = Counter::default();
        let throttle = LogThrottle::new(
            "records",
            Rate {
                per_second: 1,
                burst: 5,
            },
            suppressed.clone(),
        );
        let started = Instant::now();
        let admitted = (0..1000).filter(|_| throttle.admit()).count() as u64;
        // Five from the bucket, and one a second since.
        let refilled = started.elapsed().as_secs() + 1;
        assert!((5..=5 + refilled).contains(&admitted), "{admitted}");
        assert_eq!(suppressed.get(), 1000 - admitted);
    }

    #[test]
    fn the_bucket_refills_at_its_rate_up_to_its_burst() {
        let mut bucket = TokenBucket::new(Rate {
            per_second: 10,
            burst: 3,
        });
        let start = bucket.refilled;
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        // 100 ms: one token.
        let later = start + std::time::Duration::from_millis(100);
        assert!(bucket.take(later));
        assert!(!bucket.take(later));
        // An hour: no more than the burst.
        let much_later = later + std::time::Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| bucket.take(much_later)).count(), 3);
    }
}
