//! `todo-eventd plugins test`: the plugin author's test bench.
//!
//! Feeds NDJSON events through real plugins in the real sandbox, with
//! in-memory state and a virtual clock, and writes what happened as JSON
//! lines. The clock starts at `--now` (default: the first event's time),
//! follows event timestamps forward, fires timers at their due time as it
//! passes them, and after the last event advances by `--advance`.
//!
//! Input lines are bytes: a line that is not JSON (or not UTF-8) is a
//! dead letter with its line number, and the run goes on. A line longer
//! than `pipeline.max_event_bytes` is a dead letter too, read past without
//! being held in memory (a file without a newline is one line).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::clock::rfc3339;
use crate::dispatch::{DispatchPolicy, Dispatcher, Outcome};
use crate::event::{self, DecodeError, RecordMeta};
use crate::lines::{BoundedLines, Line};
use crate::plugin::Plugin;
use crate::units::ByteSize;
use crate::world::Timestamp;

/// How many timers may fire while the clock makes one step (to an input
/// line's time, or by `--advance` after the last line) before the run
/// stops: a plugin re-arming a timer in a loop would never end it.
pub const MAX_TIMER_FIRINGS_PER_STEP: u64 = 1_000_000;

/// Options of one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the clock starts; default the first event's timestamp.
    pub start: Option<Timestamp>,
    /// How far to advance the clock after the last event.
    pub advance: Duration,
    /// The largest line decoded (`pipeline.max_event_bytes`); a longer one
    /// is dead-lettered, as the daemon would.
    pub max_event_bytes: ByteSize,
    /// `plugins.max_hops`; every line counts 0 hops, so only `0` refuses
    /// an emit to an input topic here.
    pub max_hops: u32,
    /// How many timer calls one step of the clock may make
    /// ([`MAX_TIMER_FIRINGS_PER_STEP`]).
    pub max_firings_per_step: u64,
}

/// The daemon's defaults.
impl Default for Options {
    fn default() -> Self {
        Self {
            start: None,
            advance: Duration::ZERO,
            max_event_bytes: crate::config::PipelineConfig::default().max_event_bytes,
            max_hops: crate::config::PluginsConfig::default().max_hops,
            max_firings_per_step: MAX_TIMER_FIRINGS_PER_STEP,
        }
    }
}

/// Counts of what a run produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Input lines that decoded.
    pub events: u64,
    /// Records emitted.
    pub emits: u64,
    /// Dead-letters (decode failures and failed calls).
    pub dead_letters: u64,
    /// Timers fired.
    pub timers_fired: u64,
    /// Timer firings put off because no instance was free
    /// (`sandbox.max_instances`): the timer was kept and tried again.
    pub timers_postponed: u64,
    /// Calls, time and memory per plugin.
    pub plugins: BTreeMap<String, PluginStats>,
}

/// What one plugin used during a run, to size its `[limits]`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PluginStats {
    /// Wall time of the calls (retries included).
    pub calls: CallTimes,
    /// Calls that failed.
    pub failed: u64,
    /// The largest linear memory an instance used.
    pub memory_peak: usize,
}

/// Call times, each kept to three significant digits: memory bounded by
/// the distinct values (a few thousand at most), not by the calls, however
/// long the replay; quantiles within 1 %.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CallTimes {
    /// Calls per rounded time, in nanoseconds.
    counts: BTreeMap<u64, u64>,
    count: u64,
    max: Duration,
}

impl CallTimes {
    /// Counts one call.
    pub fn record(&mut self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        *self.counts.entry(three_digits(nanos)).or_default() += 1;
        self.count += 1;
        self.max = self.max.max(took);
    }

    /// Calls counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The longest call, exactly.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The `q` quantile (0..=1) by nearest rank, to three significant
    /// digits; zero for no calls.
    pub fn quantile(&self, q: f64) -> Duration {
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count.max(1));
        let mut seen = 0;
        for (&nanos, &count) in &self.counts {
            seen += count;
            if seen >= rank {
                return Duration::from_nanos(nanos);
            }
        }
        Duration::ZERO
    }
}

/// `nanos` with all but its three leading digits zeroed.
fn three_digits(nanos: u64) -> u64 {
    let (mut value, mut scale) = (nanos, 1);
    while value >= 1000 {
        value /= 10;
        scale *= 10;
    }
    value * scale
}

/// The `q` quantile (0..=1) of `sorted` values, by nearest rank; zero for
/// none.
pub fn nearest_rank(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or_default()
}

impl Summary {
    /// A table of per-plugin calls, failures, call times (p50, p99, max)
    /// and peak memory.
    pub fn stats_table(&self) -> String {
        let mut text = format!(
            "{:<16} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10}\n",
            "plugin", "calls", "failed", "p50", "p99", "max", "memory"
        );
        for (name, stats) in &self.plugins {
            let calls = &stats.calls;
            text.push_str(&format!(
                "{:<16} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10}\n",
                name,
                calls.count(),
                stats.failed,
                format!("{:.2?}", calls.quantile(0.5)),
                format!("{:.2?}", calls.quantile(0.99)),
                format!("{:.2?}", calls.max()),
                ByteSize(stats.memory_peak as u64).to_string(),
            ));
        }
        text
    }
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading input or writing output failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Too many timer calls in one step of the clock.
    #[error(
        "more than {limit} timer calls while {step} moved the clock from {from} to {until} \
         ({calls} of them to plugin {plugin}): a plugin is re-arming a timer in a loop, or \
         that step spans far more time than the rest of the input"
    )]
    RunawayTimers {
        /// The bound ([`Options::max_firings_per_step`]).
        limit: u64,
        /// What moved the clock: `line N` or `--advance`.
        step: String,
        /// The clock before the step.
        from: String,
        /// Where the step was taking it.
        until: String,
        /// The plugin with the most timer calls in the step.
        plugin: String,
        /// Its timer calls in the step.
        calls: u64,
    },
}

/// Runs `events` (NDJSON) through `plugins`, writing one JSON object per
/// line to `out`.
pub async fn run(
    plugins: &[Arc<Plugin>],
    events: impl BufRead,
    options: &Options,
    mut out: impl Write,
) -> Result<Summary, Error> {
    let mut bench = Bench {
        dispatcher: Dispatcher::with(
            plugins,
            DispatchPolicy {
                max_hops: options.max_hops,
                ..DispatchPolicy::OFFLINE
            },
            Arc::default(),
        ),
        now: options.start,
        summary: Summary::default(),
        max_firings_per_step: options.max_firings_per_step,
    };
    let limit = options.max_event_bytes;
    // One byte over the bound: a line ending in CRLF whose text is at the
    // bound is still read (`decode_bounded` holds the trimmed text to it).
    let mut lines = BoundedLines::new(events, limit.as_usize().saturating_add(1));
    while let Some((line_no, line)) = lines.next_line()? {
        let decoded = match line {
            Line::TooLong { bytes } => Err(DecodeError::TooLarge { size: bytes, limit }),
            Line::Text(line) if line.trim_ascii().is_empty() => continue,
            Line::Text(line) => {
                event::decode_bounded(line.trim_ascii(), RecordMeta::default(), limit)
            }
        };
        let event = match decoded {
            Ok(event) => event,
            Err(err) => {
                bench.summary.dead_letters += 1;
                write_line(
                    &mut out,
                    &json!({"kind": "dead-letter", "plugin": null, "stage": "decode", "reason": err.to_string(), "line": line_no}),
                )?;
                continue;
            }
        };
        bench.summary.events += 1;
        let at = event.occurred_at;
        let now = *bench.now.get_or_insert(at);
        let step = Step::Line(line_no);
        bench.fire_timers_until(at.max(now), step, &mut out).await?;
        let now = bench.now.map_or(at, |n| n.max(at));
        bench.now = Some(now);
        for outcome in bench.dispatcher.dispatch(&event, 0, now).await {
            bench.report(outcome, now, ("line", json!(line_no)), &mut out)?;
        }
    }
    if let Some(now) = bench.now {
        let advance = i64::try_from(options.advance.as_millis()).unwrap_or(i64::MAX);
        bench
            .fire_timers_until(now.saturating_add(advance), Step::Advance, &mut out)
            .await?;
    }
    out.flush()?;
    Ok(bench.summary)
}

struct Bench {
    dispatcher: Dispatcher,
    now: Option<Timestamp>,
    summary: Summary,
    max_firings_per_step: u64,
}

/// What moves the clock.
#[derive(Clone, Copy)]
enum Step {
    /// An input line's time (by line number).
    Line(usize),
    /// `--advance` after the last line.
    Advance,
}

impl Bench {
    /// Fires every timer due at or before `until`, each with the clock at
    /// its due time, then leaves the clock at `until`. More than
    /// `max_firings_per_step` timer calls on the way stop the run.
    async fn fire_timers_until(
        &mut self,
        until: Timestamp,
        step: Step,
        out: &mut impl Write,
    ) -> Result<(), Error> {
        let from = self.now;
        let mut calls: BTreeMap<String, u64> = BTreeMap::new();
        let mut total = 0_u64;
        while let Some(due) = self.dispatcher.next_due().filter(|due| *due <= until) {
            let now = self.now.map_or(due, |n| n.max(due));
            self.now = Some(now);
            let Some(firing) = self.dispatcher.fire_next(now).await else {
                break;
            };
            total += 1;
            let plugin = &firing.outcome.plugin.name;
            match calls.get_mut(plugin.as_str()) {
                Some(count) => *count += 1,
                None => {
                    calls.insert(plugin.clone(), 1);
                }
            }
            if total > self.max_firings_per_step {
                return Err(self.runaway(step, from, until, &calls));
            }
            let timer = ("timer", json!(firing.timer.key));
            if let Some(retry_at) = firing.postponed {
                self.summary.timers_postponed += 1;
                write_line(
                    out,
                    &json!({"kind": "postponed", "plugin": plugin, "timer": timer.1, "reason": "no instance could start now (the instance pool is full: sandbox.max_instances; or a granted directory does not answer); the timer is kept", "at": rfc3339(now), "retry_at": rfc3339(retry_at)}),
                )?;
                continue;
            }
            self.summary.timers_fired += 1;
            self.report(firing.outcome, now, timer, out)?;
        }
        self.now = Some(self.now.map_or(until, |n| n.max(until)));
        Ok(())
    }

    /// The error for a step that made too many timer calls, naming the
    /// plugin that made the most.
    fn runaway(
        &self,
        step: Step,
        from: Option<Timestamp>,
        until: Timestamp,
        calls: &BTreeMap<String, u64>,
    ) -> Error {
        let (plugin, most) = calls
            .iter()
            .max_by_key(|(_, count)| **count)
            .map_or((String::new(), 0), |(name, count)| (name.clone(), *count));
        Error::RunawayTimers {
            limit: self.max_firings_per_step,
            step: match step {
                Step::Line(line) => format!("line {line}"),
                Step::Advance => "--advance".to_owned(),
            },
            from: from.map_or_else(|| "the start".to_owned(), rfc3339),
            until: rfc3339(until),
            plugin,
            calls: most,
        }
    }

    fn report(
        &mut self,
        outcome: Outcome,
        now: Timestamp,
        source: (&'static str, Value),
        out: &mut impl Write,
    ) -> Result<(), Error> {
        let plugin = outcome.plugin.name.as_str();
        let stats = self.summary.plugins.entry(plugin.to_owned()).or_default();
        stats.calls.record(outcome.took);
        stats.failed += u64::from(outcome.result.is_err());
        stats.memory_peak = stats.memory_peak.max(outcome.memory_peak);
        match outcome.result {
            Ok(emits) => {
                for emit in emits {
                    self.summary.emits += 1;
                    // Emitted values are usually JSON; anything else is shown
                    // as a string.
                    let value = serde_json::from_str::<Value>(&emit.value)
                        .unwrap_or(Value::String(emit.value));
                    write_line(
                        out,
                        &json!({"kind": "emit", "plugin": plugin, "output": emit.output, "key": emit.key, "value": value, "at": rfc3339(now)}),
                    )?;
                }
            }
            Err(err) => {
                self.summary.dead_letters += 1;
                let mut line = json!({"kind": "dead-letter", "plugin": plugin, "stage": "plugin", "error": err.kind(), "reason": err.to_string(), "at": rfc3339(now)});
                line[source.0] = source.1;
                write_line(out, &line)?;
            }
        }
        Ok(())
    }
}

fn write_line(out: &mut impl Write, value: &Value) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long replay's call times take memory by distinct value, not by
    /// call, and its quantiles stay within 1 %.
    #[test]
    fn call_times_are_kept_in_bounded_memory() {
        let mut times = CallTimes::default();
        for n in 1..=1_000_000_u64 {
            times.record(Duration::from_nanos(1_000 + n));
        }
        assert_eq!(times.count(), 1_000_000);
        assert_eq!(times.max(), Duration::from_nanos(1_001_000));
        // 900 values per decade, three decades.
        assert!(
            times.counts.len() <= 2_701,
            "{} buckets",
            times.counts.len()
        );
        for (q, exact) in [(0.5, 501_000_u64), (0.99, 991_000)] {
            let got = times.quantile(q).as_nanos() as f64;
            assert!(
                (got / exact as f64 - 1.0).abs() < 0.01,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(CallTimes::default().quantile(0.99), Duration::ZERO);
        assert_eq!(three_digits(123_456), 123_000);
        assert_eq!(three_digits(999), 999);
    }
}
