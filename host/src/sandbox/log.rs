//! A plugin's log lines — from the `log` import and from its stdout and
//! stderr — on their way into the daemon's log: cut to a maximum length,
//! with control characters escaped (no forged lines, no terminal escapes)
//! and rate-limited per plugin (a token bucket shared by every instance and
//! partition). Lines over the rate are dropped, counted in
//! `todo_eventd_plugin_log_dropped_total` and reported in one warning at
//! most every ten seconds.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use crate::telemetry::{Rate, TokenBucket};
use crate::text;
use crate::units::ByteSize;
use crate::world::LogLevel;

/// How often dropped lines are reported.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How much a plugin may log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPolicy {
    /// Sustained lines per second per plugin.
    pub lines_per_second: u32,
    /// Lines a plugin may write in a burst above the sustained rate.
    pub burst: u32,
    /// The longest line kept; the rest is cut.
    pub max_line: ByteSize,
}

impl Default for LogPolicy {
    fn default() -> Self {
        Self {
            lines_per_second: 100,
            burst: 500,
            max_line: ByteSize::kib(8),
        }
    }
}

/// One plugin's log, shared by all its instances.
#[derive(Debug)]
pub struct PluginLog {
    plugin: String,
    policy: LogPolicy,
    bucket: Mutex<Bucket>,
    dropped: Counter,
}

#[derive(Debug)]
struct Bucket {
    tokens: TokenBucket,
    unreported: u64,
    reported: Option<Instant>,
}

impl PluginLog {
    /// The log of `plugin`, counting dropped lines in `dropped`.
    pub fn new(plugin: &str, policy: LogPolicy, dropped: Counter) -> Self {
        Self {
            plugin: plugin.to_owned(),
            policy,
            bucket: Mutex::new(Bucket {
                tokens: TokenBucket::new(Rate {
                    per_second: policy.lines_per_second,
                    burst: policy.burst,
                }),
                unreported: 0,
                reported: None,
            }),
            dropped,
        }
    }

    /// Writes one line from the `log` import.
    pub fn line(&self, level: LogLevel, message: &str) {
        if !self.admit() {
            return;
        }
        let message = text::quote_bounded(message, self.policy.max_line.as_usize());
        let plugin = self.plugin.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    /// Writes one line the plugin printed to stdout or stderr.
    pub fn output(&self, line: &str) {
        if line.trim().is_empty() || !self.admit() {
            return;
        }
        let output = text::quote_bounded(line, self.policy.max_line.as_usize());
        tracing::info!(plugin = %self.plugin, output, "Plugin wrote to stdout/stderr.");
    }

    /// The longest line kept.
    pub fn max_line(&self) -> usize {
        self.policy.max_line.as_usize()
    }

    /// Takes a token; reports drops now and then.
    fn admit(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if bucket.tokens.take(now) {
            return true;
        }
        self.dropped.inc();
        bucket.unreported += 1;
        if bucket
            .reported
            .is_none_or(|at| now.duration_since(at) >= REPORT_EVERY)
        {
            tracing::warn!(
                plugin = %self.plugin,
                dropped = bucket.unreported,
                limit = self.policy.lines_per_second,
                "Plugin log lines dropped: over the per-plugin rate limit."
            );
            bucket.unreported = 0;
            bucket.reported = Some(now);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_past_the_bucket_is_dropped_and_counted() {
        let dropped = Counter::default();
        let log = PluginLog::new(
            "chatty",
            LogPolicy {
                lines_per_second: 1,
                burst: 10,
                max_line: ByteSize(16),
            },
            dropped.clone(),
        );
        for _ in 0..1000 {
            log.line(LogLevel::Info, "hello");
        }
        // Ten from the bucket, perhaps one refilled while looping.
        assert!((989..=990).contains(&dropped.get()), "{}", dropped.get());
    }
}
