//! Quarantine: a plugin version that fails `after` calls in a row is
//! suspended, and retried after an exponential back-off.
//!
//! While a plugin is suspended its events are dead-lettered (kind
//! `quarantined`) and its timers wait. Once the back-off has passed the next
//! call is a trial: success — or a clean rejection of its input — lifts the
//! quarantine, failure suspends the plugin again for twice as long (up to
//! `max_backoff`). Health belongs to one loaded version, so a replaced
//! plugin starts with a clean record.
//!
//! Only the plugin's own failures count (traps, deadlines, memory, quotas,
//! denials, instantiation, `internal` errors, and `retryable` ones whose retries all
//! failed or that the retry budget would not pay a retry for — see
//! [`CallError::counts_toward_quarantine`]); a plugin
//! rejecting its input does not, and only a success ends a run of
//! failures. A timer storm — `on-timer` re-arming timers for (nearly) now
//! more than `storm_after` times within a minute — quarantines the plugin
//! at once.
//!
//! The record also holds the version's retry budget
//! ([`Health::spend_on_retry`]): how much longer its `retryable` errors may
//! keep partitions waiting.
//!
//! [`CallError::counts_toward_quarantine`]: crate::sandbox::CallError::counts_toward_quarantine

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::world::Timestamp;

/// When to quarantine and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantinePolicy {
    /// Consecutive failures that trigger a quarantine; 0 never does.
    pub after: u32,
    /// The first back-off.
    pub backoff: Duration,
    /// The longest back-off.
    pub max_backoff: Duration,
    /// Throttled timer re-arms within [`STORM_WINDOW`] that quarantine the
    /// plugin; 0 never does.
    pub storm_after: u32,
}

/// The window in which throttled re-arms are counted towards a storm.
pub const STORM_WINDOW: Duration = Duration::from_secs(60);

impl QuarantinePolicy {
    /// Never quarantine (the offline bench and benchmarks).
    pub const NEVER: Self = Self {
        after: 0,
        backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        storm_after: 0,
    };
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        Self {
            after: 5,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
            storm_after: 100,
        }
    }
}

/// A plugin that may not be called until `retry_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suspended {
    /// Consecutive failures so far.
    pub failures: u32,
    /// When the next trial call is allowed (ms since the epoch).
    pub retry_at: Timestamp,
}

/// A point-in-time view of a plugin's health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Failed calls since the last success.
    pub consecutive_failures: u32,
    /// Set while quarantined (until a call succeeds): when the next trial
    /// is allowed.
    pub retry_at: Option<Timestamp>,
    /// How often this version was quarantined.
    pub quarantines: u64,
    /// The most recent failure's message.
    pub last_error: Option<String>,
}

/// One plugin version's failure record, shared by every partition.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    /// Whether the record is clean: no failure since the last success and
    /// no quarantine. Then admitting a call and recording a success change
    /// nothing, and every partition's call skips the lock.
    clean: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            clean: AtomicBool::new(true),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    snapshot: HealthSnapshot,
    backoff: Duration,
    /// Throttled re-arms in the current storm window, and when it began.
    rearms: u32,
    rearm_window: Timestamp,
    /// What is left of the retry budget, and when that was reckoned
    /// (`None`: nothing spent yet, the budget is whole).
    retry_budget: Option<(Duration, Instant)>,
}

/// The share of the time passing by which a spent retry budget refills.
pub const RETRY_BUDGET_REFILL: f64 = 0.1;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What a recorded outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing worth reporting.
    None,
    /// The plugin was (re-)quarantined until the given time.
    Quarantined(Suspended),
    /// A trial call succeeded; the quarantine is lifted.
    Released,
}

impl State {
    fn is_clean(&self) -> bool {
        self.snapshot.consecutive_failures == 0 && self.snapshot.retry_at.is_none()
    }

    /// Ends the run of failures and any quarantine.
    fn end_run(&mut self) -> Transition {
        let was_quarantined = self.snapshot.retry_at.take().is_some();
        self.snapshot.consecutive_failures = 0;
        self.backoff = Duration::ZERO;
        if was_quarantined {
            Transition::Released
        } else {
            Transition::None
        }
    }
}

impl Health {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the record under the lock, keeping `clean` true to it.
    fn update<R>(&self, change: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state();
        let result = change(&mut state);
        self.clean.store(state.is_clean(), Ordering::Release);
        result
    }

    fn is_clean(&self) -> bool {
        self.clean.load(Ordering::Acquire)
    }

    /// `Err` while a quarantine's back-off has not passed at `now`.
    pub fn admit(&self, now: Timestamp) -> Result<(), Suspended> {
        if self.is_clean() {
            return Ok(());
        }
        let state = self.state();
        match state.snapshot.retry_at {
            Some(retry_at) if now < retry_at => Err(Suspended {
                failures: state.snapshot.consecutive_failures,
                retry_at,
            }),
            _ => Ok(()),
        }
    }

    /// When the next trial call is allowed, while quarantined.
    pub fn retry_at(&self) -> Option<Timestamp> {
        if self.is_clean() {
            return None;
        }
        self.state().snapshot.retry_at
    }

    /// A successful call: the failure run ends.
    pub fn succeeded(&self) -> Transition {
        if self.is_clean() {
            return Transition::None;
        }
        self.update(State::end_run)
    }

    /// A call that failed without it being the plugin's fault (it
    /// rejected its input): a quarantine's trial call passes — the plugin
    /// runs and answers — but a run of failures outside quarantine goes on.
    pub fn answered(&self) -> Transition {
        if self.is_clean() {
            return Transition::None;
        }
        self.update(|state| {
            if state.snapshot.retry_at.is_some() {
                state.end_run()
            } else {
                Transition::None
            }
        })
    }

    /// A failed call at `now`; quarantines under `policy` when the run of
    /// failures is long enough.
    pub fn failed(&self, policy: &QuarantinePolicy, now: Timestamp, error: &str) -> Transition {
        self.update(|state| {
            let snapshot = &mut state.snapshot;
            snapshot.consecutive_failures = snapshot.consecutive_failures.saturating_add(1);
            // Shown on `/plugins`: one line of at most 1 KiB.
            snapshot.last_error = Some(crate::text::message(error));
            if policy.after == 0 || snapshot.consecutive_failures < policy.after {
                return Transition::None;
            }
            Self::suspend(state, policy, now)
        })
    }

    /// Pays `cost` (a retry's back-off and the failed try before it) out
    /// of the retry budget at `now`, if what is left covers it: the budget
    /// holds up to `budget` and refills at [`RETRY_BUDGET_REFILL`] of the
    /// time passing. `false`: the retry is not to be made. The budget is
    /// the version's, shared by every partition, so a plugin answering
    /// `retryable` to every event costs each partition at most a tenth of
    /// its time once the budget is spent; its errors then fail at once,
    /// and count toward quarantine.
    pub fn spend_on_retry(&self, cost: Duration, budget: Duration, now: Instant) -> bool {
        let mut state = self.state();
        let (left, at) = state.retry_budget.unwrap_or((budget, now));
        let refilled = now
            .saturating_duration_since(at)
            .mul_f64(RETRY_BUDGET_REFILL);
        let left = left.saturating_add(refilled).min(budget);
        let (left, paid) = match left.checked_sub(cost) {
            Some(rest) => (rest, true),
            None => (left, false),
        };
        // Partitions on other threads may have reckoned it at a later
        // instant already: refill from the latest only.
        state.retry_budget = Some((left, at.max(now)));
        paid
    }

    /// Counts `count` timer re-arms throttled at `now`; past the policy's
    /// storm bound within [`STORM_WINDOW`] the plugin is quarantined with
    /// the reason recorded. A trial call after a quarantine that re-arms
    /// like this again is a failed trial.
    pub fn throttled(&self, policy: &QuarantinePolicy, now: Timestamp, count: u32) -> Transition {
        if policy.storm_after == 0 {
            return Transition::None;
        }
        self.update(|state| {
            if now.saturating_sub(state.rearm_window) >= millis(STORM_WINDOW) {
                state.rearm_window = now;
                state.rearms = 0;
            }
            state.rearms = state.rearms.saturating_add(count);
            let trial = state.snapshot.retry_at.is_some();
            if !trial && state.rearms < policy.storm_after {
                return Transition::None;
            }
            state.snapshot.last_error = Some(format!(
                "timer storm: on-timer re-armed timers for immediate firing {} times within {}s",
                state.rearms,
                STORM_WINDOW.as_secs()
            ));
            state.rearms = 0;
            state.snapshot.consecutive_failures =
                state.snapshot.consecutive_failures.saturating_add(1);
            Self::suspend(state, policy, now)
        })
    }

    /// Quarantines, or backs off twice as long after a failed trial. A
    /// failure while the quarantine still runs — a call begun before it,
    /// on another partition — is recorded but changes nothing: else the
    /// back-off would grow with the partitions busy, not with the trials.
    fn suspend(state: &mut State, policy: &QuarantinePolicy, now: Timestamp) -> Transition {
        if state.snapshot.retry_at.is_some_and(|at| at > now) {
            return Transition::None;
        }
        let backoff = if state.backoff.is_zero() {
            policy.backoff
        } else {
            (state.backoff * 2).min(policy.max_backoff)
        };
        state.backoff = backoff;
        let retry_at = now.saturating_add(millis(backoff));
        state.snapshot.retry_at = Some(retry_at);
        state.snapshot.quarantines += 1;
        Transition::Quarantined(Suspended {
            failures: state.snapshot.consecutive_failures,
            retry_at,
        })
    }

    /// The current record.
    pub fn snapshot(&self) -> HealthSnapshot {
        self.state().snapshot.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: QuarantinePolicy = QuarantinePolicy {
        after: 3,
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(3),
        storm_after: 10,
    };

    #[test]
    fn a_timer_storm_quarantines_at_once() {
        let health = Health::default();
        // Spread over more than a window: no storm.
        for minute in 0..5 {
            assert_eq!(
                health.throttled(&POLICY, minute * 60_000, 9),
                Transition::None
            );
        }
        let mut outcome = Transition::None;
        for second in 0..10 {
            outcome = health.throttled(&POLICY, 400_000 + second * 1000, 1);
        }
        assert!(matches!(outcome, Transition::Quarantined(_)), "{outcome:?}");
        let snapshot = health.snapshot();
        assert!(
            snapshot
                .last_error
                .unwrap()
                .starts_with("timer storm: on-timer re-armed")
        );
        assert!(health.admit(409_000).is_err());
        // The trial storms again: back off twice as long.
        let Transition::Quarantined(again) = health.throttled(&POLICY, 410_000, 1) else {
            panic!("a storming trial fails");
        };
        assert_eq!(again.retry_at, 412_000);
    }

    #[test]
    fn quarantines_after_a_run_of_failures_and_backs_off() {
        let health = Health::default();
        assert_eq!(health.failed(&POLICY, 0, "a"), Transition::None);
        assert_eq!(
            health.succeeded(),
            Transition::None,
            "a success resets the run"
        );
        for _ in 0..2 {
            assert_eq!(health.failed(&POLICY, 0, "b"), Transition::None);
        }
        let first = health.failed(&POLICY, 10, "c");
        assert_eq!(
            first,
            Transition::Quarantined(Suspended {
                failures: 3,
                retry_at: 1_010
            })
        );
        assert!(health.admit(1_009).is_err());
        assert!(health.admit(1_010).is_ok(), "a trial after the back-off");
        // Failed trials double the back-off, up to the maximum.
        let retry_ats: Vec<_> = [1_010, 3_010, 6_010]
            .into_iter()
            .map(|now| match health.failed(&POLICY, now, "d") {
                Transition::Quarantined(s) => s.retry_at - now,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(retry_ats, [2_000, 3_000, 3_000]);
        assert_eq!(health.snapshot().quarantines, 4);
        assert_eq!(health.snapshot().last_error.as_deref(), Some("d"));
        health.failed(
            &POLICY,
            6_010,
            &format!("line\nforged{}", "x".repeat(1 << 20)),
        );
        let shown = health.snapshot().last_error.unwrap();
        assert!(
            shown.len() < 1200 && shown.starts_with("line\\nforged"),
            "{}",
            &shown[..40]
        );
        assert_eq!(health.succeeded(), Transition::Released);
        assert_eq!(health.retry_at(), None);
        // The back-off starts over after a release.
        for now in 0..3 {
            health.failed(&POLICY, now, "e");
        }
        assert_eq!(health.retry_at(), Some(2 + 1_000));
    }

    /// Calls on other partitions that were running when the plugin was
    /// quarantined, and fail after it, neither double the back-off nor
    /// count as more quarantines; a failed trial after it does.
    #[test]
    fn failures_during_a_quarantine_do_not_extend_it() {
        let health = Health::default();
        for _ in 0..3 {
            health.failed(&POLICY, 10, "a");
        }
        assert_eq!(health.retry_at(), Some(1_010));
        for now in [10, 500, 1_009] {
            assert_eq!(health.failed(&POLICY, now, "late"), Transition::None);
        }
        assert_eq!(health.retry_at(), Some(1_010));
        assert_eq!(health.snapshot().quarantines, 1);
        assert_eq!(health.snapshot().last_error.as_deref(), Some("late"));
        // The trial fails: twice as long, once.
        let Transition::Quarantined(again) = health.failed(&POLICY, 1_010, "trial") else {
            panic!("a failed trial quarantines again");
        };
        assert_eq!(again.retry_at, 3_010);
        assert_eq!(health.failed(&POLICY, 1_011, "trial"), Transition::None);
        assert_eq!(health.retry_at(), Some(3_010));
        assert_eq!(health.snapshot().quarantines, 2);
    }

    #[test]
    fn never_policy_never_quarantines() {
        let health = Health::default();
        for now in 0..100 {
            assert_eq!(
                health.failed(&QuarantinePolicy::NEVER, now, "x"),
                Transition::None
            );
        }
        assert!(health.admit(0).is_ok());
    }

    #[test]
    fn retries_are_paid_for_from_a_budget_that_refills_slowly() {
        let health = Health::default();
        let budget = Duration::from_secs(60);
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert!(health.spend_on_retry(Duration::from_secs(50), budget, at(0)));
        assert!(!health.spend_on_retry(Duration::from_secs(20), budget, at(0)));
        // 100 s later a tenth of them is back: 10 + 10 s.
        assert!(health.spend_on_retry(Duration::from_secs(20), budget, at(100)));
        assert!(!health.spend_on_retry(Duration::from_secs(1), budget, at(100)));
        // Never more than the whole budget, however long it rests.
        assert!(!health.spend_on_retry(Duration::from_secs(61), budget, at(100_000)));
        assert!(health.spend_on_retry(Duration::from_secs(60), budget, at(100_000)));
    }
}
