//! `todo-eventd plugins test`: the plugin author's test bench.
//!
//! Feeds NDJSON events through real plugins in the real sandbox, with
//! in-memory state and a virtual clock, and writes what happened as JSON
//! lines. The clock starts at `--now` (default: the first event's time),
//! follows event timestamps forward, fires timers at their due time as it
//! passes them, and after the last event advances by `--advance`.
//!
//! Input lines are bytes: a line that is not JSON (or not UTF-8) is a
//! dead letter with its line number, and the run goes on.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::clock::rfc3339;
use crate::dispatch::{Dispatcher, Outcome};
use crate::event::{self, RecordMeta};
use crate::plugin::Plugin;
use crate::units::ByteSize;
use crate::world::Timestamp;

/// Guard against a plugin that re-arms a timer at the current time forever.
const MAX_TIMER_FIRINGS: u64 = 1_000_000;

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where the clock starts; default the first event's timestamp.
    pub start: Option<Timestamp>,
    /// How far to advance the clock after the last event.
    pub advance: Duration,
    /// The largest line decoded (`pipeline.max_event_bytes`); a longer one
    /// is dead-lettered, as the daemon would.
    pub max_event_bytes: ByteSize,
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
    /// Calls, time and memory per plugin.
    pub plugins: BTreeMap<String, PluginStats>,
}

/// What one plugin used during a run, to size its `[limits]`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PluginStats {
    /// Wall time of every call (retries included), in call order.
    pub calls: Vec<Duration>,
    /// Calls that failed.
    pub failed: u64,
    /// The largest linear memory an instance used.
    pub memory_peak: usize,
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
            let mut calls = stats.calls.clone();
            calls.sort_unstable();
            let max = calls.last().copied().unwrap_or_default();
            text.push_str(&format!(
                "{:<16} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10}\n",
                name,
                calls.len(),
                stats.failed,
                format!("{:.2?}", nearest_rank(&calls, 0.5)),
                format!("{:.2?}", nearest_rank(&calls, 0.99)),
                format!("{max:.2?}"),
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
    /// A plugin kept re-arming timers without the clock moving.
    #[error("more than {MAX_TIMER_FIRINGS} timers fired; a plugin is re-arming a timer in a loop")]
    RunawayTimers,
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
        dispatcher: Dispatcher::new(plugins),
        now: options.start,
        summary: Summary::default(),
    };
    for (index, line) in events.split(b'\n').enumerate() {
        let line = line?;
        let line_no = index + 1;
        if line.trim_ascii().is_empty() {
            continue;
        }
        let line = line.trim_ascii();
        let decoded = event::decode_bounded(line, RecordMeta::default(), options.max_event_bytes);
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
        bench.fire_timers_until(at.max(now), &mut out).await?;
        let now = bench.now.map_or(at, |n| n.max(at));
        bench.now = Some(now);
        for outcome in bench.dispatcher.dispatch(&event, now).await {
            bench.report(outcome, now, ("line", json!(line_no)), &mut out)?;
        }
    }
    if let Some(now) = bench.now {
        let advance = i64::try_from(options.advance.as_millis()).unwrap_or(i64::MAX);
        bench
            .fire_timers_until(now.saturating_add(advance), &mut out)
            .await?;
    }
    out.flush()?;
    Ok(bench.summary)
}

struct Bench {
    dispatcher: Dispatcher,
    now: Option<Timestamp>,
    summary: Summary,
}

impl Bench {
    /// Fires every timer due at or before `until`, each with the clock at
    /// its due time, then leaves the clock at `until`.
    async fn fire_timers_until(
        &mut self,
        until: Timestamp,
        out: &mut impl Write,
    ) -> Result<(), Error> {
        while let Some(due) = self.dispatcher.next_due().filter(|due| *due <= until) {
            let now = self.now.map_or(due, |n| n.max(due));
            self.now = Some(now);
            let Some(firing) = self.dispatcher.fire_next(now).await else {
                break;
            };
            self.summary.timers_fired += 1;
            if self.summary.timers_fired > MAX_TIMER_FIRINGS {
                return Err(Error::RunawayTimers);
            }
            self.report(firing.outcome, now, ("timer", json!(firing.timer.key)), out)?;
        }
        self.now = Some(self.now.map_or(until, |n| n.max(until)));
        Ok(())
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
        stats.calls.push(outcome.took);
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
