//! One assigned partition's worker: restores the partition's plugin state,
//! then handles its records in order and fires its due timers, and stores
//! an input offset only once everything the record caused is acknowledged.
//!
//! The worker never blocks its thread: plugin calls are async and end at
//! their deadline, restores run on a blocking thread (and are abandoned
//! when the partition goes), deliveries are awaited cancel-safely. Between
//! two records it answers a stop request (revocation or shutdown), takes a
//! new plugin set, settles acknowledgements and fires timers — at most
//! [`TIMER_BATCH`] before it looks at anything else, then up to as many
//! records that are ready, so timers that stay due cannot starve the
//! records (nor records the timers: timers come first). Acknowledgements
//! are settled again after that batch. Intake pauses while
//! `max_in_flight` entries or `max_in_flight_bytes` are unacknowledged.
//! State changes are held and coalesced before they are written
//! ([`super::coalesce`]); an offset is stored once they are.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, OwnedMessage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::{Instrument, debug, debug_span, error, info, info_span, warn};

use super::PipelineConsumer;
use super::coalesce::Change;
use super::consumer::PartitionQueue;
use super::delivery::{Deliveries, Entry, Input, Role, Settings};
use super::records::{self, Failure, OutRecord, Stage};
use crate::clock::{self, Clock, rfc3339};
use crate::dispatch::{Dispatcher, Outcome};
use crate::event::{self, RecordMeta};
use crate::plugin::PluginSet;
use crate::state::PluginState;
use crate::state::changelog;
use crate::telemetry::{LogThrottle, PartitionStatus, PipelineMetrics, RestoreGuard};
use crate::units::ByteSize;
use crate::world::FiredTimer;

/// Timers fired in one go before the worker looks at anything else.
pub(super) const TIMER_BATCH: usize = 64;
/// The first wait after a failed restore; it doubles up to
/// [`MAX_RESTORE_BACKOFF`].
const FIRST_RESTORE_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two restore attempts.
const MAX_RESTORE_BACKOFF: Duration = Duration::from_secs(30);

/// What the run loop asks of a partition's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Handle records.
    Run,
    /// Take no more records; write what is held and settle what is pending
    /// (the partition is revoked, or the daemon is stopping).
    Drain,
    /// Give up at once: send nothing more, but wait for what the producer
    /// already has (draining took too long, or the assignment was lost —
    /// the partition may have a new owner already).
    Abandon,
}

/// Resolves once `stop` says [`Stop::Abandon`] (never, should its sender
/// go without saying so).
async fn abandoned(mut stop: watch::Receiver<Stop>) {
    if stop.wait_for(|s| *s == Stop::Abandon).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sets its flag when dropped: cancels a restore read that is no longer
/// awaited.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A restore read in progress: holds its turn and counts in the
/// `restores_running` gauge until dropped (also should the read panic).
struct Reading {
    running: Gauge,
    _turn: OwnedSemaphorePermit,
}

impl Reading {
    fn start(running: Gauge, turn: OwnedSemaphorePermit) -> Self {
        running.inc();
        Self {
            running,
            _turn: turn,
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.running.dec();
    }
}

/// The next record of the partition's own queue (never, without one).
async fn recv(queue: Option<&PartitionQueue>) -> Result<OwnedMessage, KafkaError> {
    match queue {
        Some(queue) => queue.recv().await.map(|m| super::detach::detach(&m)),
        None => std::future::pending().await,
    }
}

/// What handling one record (or firing one timer) produced.
#[derive(Default)]
struct Produced {
    /// Outputs and dead letters.
    out: Vec<(OutRecord, Role)>,
    /// State changes, as changelog records.
    changes: Vec<Change>,
    /// Keys of an older changelog's records to tombstone once `changes`
    /// are written.
    retire: Vec<Vec<u8>>,
}

/// What every worker of a pipeline shares.
#[derive(Clone)]
pub(super) struct WorkerContext {
    pub(super) consumer: Arc<PipelineConsumer>,
    pub(super) producer: rdkafka::producer::FutureProducer,
    /// Client settings for reading the changelog.
    pub(super) restore_client: rdkafka::ClientConfig,
    pub(super) changelog: String,
    pub(super) dead_letters: String,
    pub(super) max_record_bytes: usize,
    /// The largest input record (value and headers) decoded.
    pub(super) max_event_bytes: ByteSize,
    pub(super) restore_timeout: Duration,
    /// One permit per restore that may read at once
    /// ([`crate::config::PipelineConfig::max_concurrent_restores`]).
    pub(super) restore_turns: Arc<Semaphore>,
    /// Plugins whose state a restore deletes (`plugins.forget`).
    pub(super) forget: Arc<[String]>,
    pub(super) max_in_flight: usize,
    pub(super) max_in_flight_bytes: usize,
    pub(super) changelog_flush_interval: Duration,
    pub(super) changelog_flush_idle: Duration,
    pub(super) clock: Clock,
    pub(super) stats: Arc<PipelineMetrics>,
    /// The rate of warnings about single records (shared by the workers).
    pub(super) warnings: Arc<LogThrottle>,
    /// The rate of warnings about errors reading partitions (shared by the
    /// workers: librdkafka repeats a fetch error for every partition it
    /// hits, each time it retries the fetch).
    pub(super) read_errors: Arc<LogThrottle>,
}

pub(super) struct Worker {
    topic: String,
    partition: i32,
    dispatcher: Dispatcher,
    /// New plugin sets, applied between records.
    plugins: watch::Receiver<Arc<PluginSet>>,
    deliveries: Deliveries,
    /// Live records of an older changelog format in this partition, by
    /// changelog key: tombstoned when their key is first written.
    legacy: HashSet<Vec<u8>>,
    context: WorkerContext,
}

impl Worker {
    pub(super) fn new(
        topic: &str,
        partition: i32,
        dispatcher: Dispatcher,
        plugins: watch::Receiver<Arc<PluginSet>>,
        status: PartitionStatus,
        context: WorkerContext,
    ) -> Self {
        let deliveries = Deliveries::new(
            context.producer.clone(),
            Settings {
                dead_letters: context.dead_letters.clone(),
                max_record_bytes: context.max_record_bytes,
                changelog: context.changelog.clone(),
                partition,
                flush_interval: context.changelog_flush_interval,
                flush_idle: context.changelog_flush_idle,
                max_entries: context.max_in_flight,
                max_bytes: context.max_in_flight_bytes,
                warnings: context.warnings.clone(),
            },
            context.stats.clone(),
            status,
        );
        Self {
            topic: topic.to_owned(),
            partition,
            dispatcher,
            plugins,
            deliveries,
            legacy: HashSet::new(),
            context,
        }
    }

    /// Restores the partition's state (then drops `restoring`), runs
    /// until `stop` leaves [`Stop::Run`] or the record channel closes, then
    /// settles what is pending — or, once `stop` says [`Stop::Abandon`],
    /// gives up at once and waits only for what the producer already has.
    /// The caller bounds how long it waits for either.
    pub(super) async fn run(
        mut self,
        queue: Option<PartitionQueue>,
        records: mpsc::Receiver<OwnedMessage>,
        stop: watch::Receiver<Stop>,
        restoring: RestoreGuard,
    ) {
        let span = info_span!("partition", topic = %self.topic, partition = self.partition);
        async {
            let (abandon, asked) = (stop.clone(), stop.clone());
            let work = AssertUnwindSafe(self.work(queue, records, stop, restoring)).catch_unwind();
            let ended = tokio::select! {
                biased;
                () = abandoned(abandon) => None,
                ended = work => Some(ended),
            };
            match ended {
                // Drained — or it saw the request to give up first.
                Some(Ok(())) if *asked.borrow() != Stop::Abandon => return,
                // A bug: what the producer has is settled all the same
                // before the panic goes on to `supervised`, which reports it.
                Some(Err(panic)) => {
                    self.deliveries.abandon().await;
                    std::panic::resume_unwind(panic);
                }
                Some(Ok(())) | None => {}
            }
            let left = self.deliveries.abandon().await;
            warn!(
                acknowledged = left.acknowledged,
                failed = left.failed,
                unsent = left.unsent,
                held_changes = left.held_changes,
                "Partition given up before it drained: what the producer had is settled, the rest is read again by the partition's next owner."
            );
        }
        .instrument(span)
        .await;
    }

    /// [`Self::run`] until the partition drained.
    async fn work(
        &mut self,
        queue: Option<PartitionQueue>,
        mut records: mpsc::Receiver<OwnedMessage>,
        mut stop: watch::Receiver<Stop>,
        restoring: RestoreGuard,
    ) {
        if !self.restore(&mut stop).await {
            return;
        }
        drop(restoring);
        let mut plugins_open = true;
        loop {
            let room = self.deliveries.has_room();
            let next_due = self.dispatcher.next_due();
            let clock = self.context.clock.clone();
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                changed = self.plugins.changed(), if plugins_open => match changed {
                    Ok(()) => self.update_plugins(),
                    Err(_) => plugins_open = false,
                },
                Some(offset) = self.deliveries.settle_head(), if !self.deliveries.is_empty() => {
                    self.store_offset(offset);
                }
                () = clock.sleep_until(next_due.unwrap_or(i64::MAX)), if room && next_due.is_some() => {
                    self.fire_timers().await;
                    self.handle_ready(&mut records, queue.as_ref(), &stop).await;
                }
                // Records that came through the main queue first: they
                // are older than the partition queue's.
                record = records.recv(), if room => match record {
                    Some(record) => self.handle(record).await,
                    None => break,
                },
                record = recv(queue.as_ref()), if room => match record {
                    Ok(record) => self.handle(record).await,
                    Err(err) => self.read_failed(&err),
                },
            }
        }
        // Asked to give up meanwhile (the loop may see the request as the
        // record channel closing, before `run` sees it): write nothing more.
        if *stop.borrow() == Stop::Abandon {
            return;
        }
        debug!("Settling pending deliveries.");
        self.deliveries.drain();
        while let Some(offset) = self.deliveries.settle_head().await {
            self.store_offset(offset);
        }
    }

    /// Rebuilds the plugins' state for this partition from the changelog,
    /// retrying with back-off until it succeeds: a partition never starts
    /// empty because a read failed (its next write would overwrite the
    /// state for good). Returns `false` if stopped first.
    async fn restore(&mut self, stop: &mut watch::Receiver<Stop>) -> bool {
        let mut attempts: u32 = 0;
        loop {
            // Wait for a turn: the permit goes with the read, and is given
            // back when the read ends (not when it is no longer awaited).
            let turn = tokio::select! {
                turn = self.context.restore_turns.clone().acquire_owned() => turn,
                _ = stop.changed() => return false,
            };
            let Ok(turn) = turn else {
                // The semaphore is never closed.
                return false;
            };
            let started = std::time::Instant::now();
            let cancel = Arc::new(AtomicBool::new(false));
            let task = crate::blocking::spawn({
                let (client, changelog, topic, partition, timeout, cancel) = (
                    self.context.restore_client.clone(),
                    self.context.changelog.clone(),
                    self.topic.clone(),
                    self.partition,
                    self.context.restore_timeout,
                    cancel.clone(),
                );
                let running = self.context.stats.restores_running.clone();
                // What the read logs names the partition, as the worker's
                // own lines do.
                let span = tracing::Span::current();
                move || {
                    let _entered = span.enter();
                    let _reading = Reading::start(running, turn);
                    super::restore::restore_partition(
                        &client, &changelog, partition, &topic, timeout, &cancel,
                    )
                }
            });
            // However the wait ends — a stop request, or the worker given
            // up mid-wait — the read stops with it.
            let _cancel = CancelOnDrop(cancel);
            let restored = tokio::select! {
                restored = task => restored,
                _ = stop.changed() => return false,
            };
            let error = match restored {
                Ok(Ok(mut restorer)) => {
                    let (applied, skipped, unreadable) =
                        (restorer.applied, restorer.skipped, restorer.unreadable);
                    let mut tombstones: Vec<Change> = restorer
                        .take_superseded()
                        .into_iter()
                        .map(|key| (key, None))
                        .collect();
                    let (mut states, mut legacy) = restorer.into_parts();
                    tombstones.extend(self.forget(&mut states, &mut legacy));
                    self.write_tombstones(tombstones);
                    self.dispatcher.restore(states);
                    self.legacy = legacy;
                    self.context.stats.restored_records.inc_by(applied);
                    self.context.stats.changelog_unreadable.inc_by(unreadable);
                    let timers = self.dispatcher.timer_count();
                    let elapsed_ms = started.elapsed().as_millis() as u64;
                    if unreadable > 0 {
                        warn!(
                            records = applied,
                            skipped,
                            unreadable,
                            timers,
                            elapsed_ms,
                            "Restored plugin state from the changelog, but some of its records could not be read: their keys start empty."
                        );
                    } else {
                        info!(
                            records = applied,
                            skipped,
                            timers,
                            elapsed_ms,
                            "Restored plugin state from the changelog."
                        );
                    }
                    return true;
                }
                Ok(Err(err)) => err.to_string(),
                Err(err) => err.to_string(),
            };
            attempts += 1;
            self.context.stats.restore_failures.inc();
            let backoff = clock::backoff(FIRST_RESTORE_BACKOFF, attempts, MAX_RESTORE_BACKOFF);
            warn!(
                changelog = %self.context.changelog,
                attempts,
                retry_in_ms = backoff.as_millis() as u64,
                %error,
                "Could not restore plugin state; the partition waits (no record is handled) and retries."
            );
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return false,
            }
        }
    }

    /// Takes out of the restored `states` (and the older changelog's live
    /// records, `legacy`) what each plugin `plugins.forget` names holds,
    /// unless it is loaded, and returns tombstones for all of it: the
    /// state is gone from memory now, and from the changelog once they are
    /// written (a partition given up first forgets it again at its next
    /// restore).
    fn forget(
        &self,
        states: &mut HashMap<String, PluginState>,
        legacy: &mut HashSet<Vec<u8>>,
    ) -> Vec<Change> {
        let mut tombstones = Vec::new();
        for name in self.context.forget.iter() {
            if self.dispatcher.plugins().any(|plugin| plugin.name == *name) {
                warn!(
                    plugin = %name,
                    "plugins.forget names a loaded plugin: its state is kept."
                );
                continue;
            }
            let state = states.remove(name).unwrap_or_default();
            let before = tombstones.len();
            tombstones.extend(changelog::forget(&self.topic, name, &state, legacy));
            if tombstones.len() > before {
                info!(
                    plugin = %name,
                    values = state.len(),
                    timers = state.timer_count(),
                    tombstones = tombstones.len() - before,
                    "Forgetting a removed plugin's state (plugins.forget)."
                );
            }
        }
        tombstones
    }

    /// Queues `tombstones` for the changelog, as changes of no record.
    fn write_tombstones(&mut self, tombstones: Vec<Change>) {
        if tombstones.is_empty() {
            return;
        }
        let input = Input {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: None,
            key: None,
            value: Vec::new(),
            event_id: None,
            hops: 0,
        };
        self.deliveries
            .push(Entry::new(None, input, Vec::new()), tombstones, Vec::new());
    }

    /// Switches the dispatcher to the newest plugin set. Called between
    /// records, so each record is handled by one version of each plugin.
    fn update_plugins(&mut self) {
        let set = self.plugins.borrow_and_update().clone();
        if self.dispatcher.update(&set.plugins) {
            debug!(
                generation = set.generation,
                plugins = set.plugins.len(),
                "Plugin set updated."
            );
        }
    }

    /// Decodes, dispatches and queues the results of one input record.
    async fn handle(&mut self, message: OwnedMessage) {
        self.context.stats.events_in.inc();
        let offset = message.offset();
        let span = debug_span!("record", offset, event_id = tracing::field::Empty);
        let mut input = Input {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: Some(offset),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().unwrap_or_default().to_vec(),
            event_id: None,
            hops: records::hops(message.headers().into_iter().flat_map(|headers| {
                headers
                    .iter()
                    .filter(|h| h.key == records::HOPS_HEADER)
                    .filter_map(|h| h.value)
            })),
        };
        let decoded = match message.payload() {
            None => Err("record has no value (a tombstone)".to_owned()),
            Some(value) => {
                let headers: Vec<(&str, &[u8])> = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .filter_map(|h| h.value.map(|v| (h.key, v)))
                            .collect()
                    })
                    .unwrap_or_default();
                let meta = RecordMeta {
                    headers: &headers,
                    timestamp: message.timestamp().to_millis(),
                };
                event::decode_bounded(value, meta, self.context.max_event_bytes)
                    .map_err(|e| e.to_string())
            }
        };
        let mut produced = Produced::default();
        match decoded {
            Err(reason) => {
                if self.context.warnings.admit() {
                    let _entered = span.enter();
                    warn!(error = %reason, "Undecodable record dead-lettered.");
                }
                let failure = Failure {
                    stage: Stage::Decode,
                    plugin: None,
                    kind: None,
                    message: &reason,
                };
                produced.out.push(self.dead_letter(&input, &failure));
            }
            Ok(event) => {
                span.record("event_id", event.id.as_str());
                input.event_id = Some(event.id.clone());
                let now = self.context.clock.now();
                let outcomes = self
                    .dispatcher
                    .dispatch(&event, input.hops, now)
                    .instrument(span)
                    .await;
                for outcome in outcomes {
                    self.collect(&outcome, &input, Stage::Plugin, &mut produced);
                }
            }
        }
        self.queue(Some(offset), input, produced);
    }

    /// Handles up to [`TIMER_BATCH`] records that are ready now, after a
    /// batch of timers: timers that stay due — a backlog after an outage,
    /// or a plugin re-arming slow timers for as soon as it may — take turns
    /// with the records instead of holding them up for good. It stops early
    /// for a stop request or a new plugin set, and when intake has no room.
    async fn handle_ready(
        &mut self,
        records: &mut mpsc::Receiver<OwnedMessage>,
        queue: Option<&PartitionQueue>,
        stop: &watch::Receiver<Stop>,
    ) {
        for _ in 0..TIMER_BATCH {
            // What `run` looks at between records comes first: a stop
            // request, a new plugin set.
            if !self.deliveries.has_room()
                || stop.has_changed().unwrap_or(true)
                || self.plugins.has_changed().unwrap_or(false)
            {
                return;
            }
            // The main queue first, as in `run`; a receive that is not
            // ready is dropped, which loses nothing (both are cancel-safe).
            let record = match records.try_recv() {
                Ok(record) => record,
                Err(_) => match recv(queue).now_or_never() {
                    Some(Ok(record)) => record,
                    Some(Err(err)) => {
                        self.read_failed(&err);
                        return;
                    }
                    None => return,
                },
            };
            self.handle(record).await;
        }
    }

    /// Counts and reports an error reading the partition's queue, at the
    /// workers' shared rate for these.
    fn read_failed(&self, err: &KafkaError) {
        self.context.stats.consumer_errors.inc();
        if self.context.read_errors.admit() {
            warn!(error = %err, "Error reading the partition.");
        }
    }

    /// Fires up to [`TIMER_BATCH`] timers that are due now.
    async fn fire_timers(&mut self) {
        let now = self.context.clock.now();
        for _ in 0..TIMER_BATCH {
            if !self.deliveries.has_room() {
                return;
            }
            let Some(firing) = self.dispatcher.fire_next(now).await else {
                return;
            };
            if firing.postponed.is_some() {
                // No room for an instance: the timer is back in place and
                // its plugin's timers wait; nothing to write.
                continue;
            }
            self.context.stats.timers_fired.inc();
            let value = timer_record(&firing.outcome.plugin.name, &firing.timer);
            let input = Input {
                topic: self.topic.clone(),
                partition: self.partition,
                offset: None,
                key: Some(firing.timer.key.clone().into_bytes()),
                value,
                event_id: None,
                hops: firing.hops,
            };
            let mut produced = Produced::default();
            self.collect(&firing.outcome, &input, Stage::Timer, &mut produced);
            self.queue(None, input, produced);
        }
        // A full batch: let the runtime run something else first.
        tokio::task::yield_now().await;
    }

    /// Hands what `input` (at `offset`; `None` for a timer) produced to the
    /// deliveries.
    fn queue(&mut self, offset: Option<i64>, input: Input, produced: Produced) {
        let Produced {
            out,
            changes,
            retire,
        } = produced;
        self.deliveries
            .push(Entry::new(offset, input, out), changes, retire);
    }

    /// Turns one plugin call's outcome into records: its emits or a dead
    /// letter, the state changes now in effect (as changelog keys and
    /// values), and the older changelog records they supersede.
    fn collect(&mut self, outcome: &Outcome, input: &Input, stage: Stage, produced: &mut Produced) {
        let out = &mut produced.out;
        let plugin = &outcome.plugin;
        let source = input.source();
        match &outcome.result {
            Ok(emits) => {
                for emit in emits {
                    out.push((
                        records::output(emit, plugin, &source),
                        Role::Output {
                            plugin: plugin.name.clone(),
                        },
                    ));
                }
            }
            Err(err) => {
                let message = err.to_string();
                let failure = Failure {
                    stage,
                    plugin: Some(&plugin.name),
                    kind: Some(err.kind()),
                    message: &message,
                };
                out.push(self.dead_letter(input, &failure));
            }
        }
        if outcome.changed.is_empty() {
            return;
        }
        let empty = PluginState::default();
        // The dispatcher holds the state of every plugin it returns an
        // outcome for (loaded or parked).
        let state = self.dispatcher.state(&plugin.name).unwrap_or(&empty);
        produced.changes.extend(changelog::records(
            &self.topic,
            &plugin.name,
            &outcome.changed,
            state,
        ));
        produced.retire.extend(changelog::superseded(
            &self.topic,
            &plugin.name,
            &outcome.changed,
            &mut self.legacy,
        ));
    }

    fn dead_letter(&self, input: &Input, failure: &Failure<'_>) -> (OutRecord, Role) {
        let record = records::dead_letter(
            &self.context.dead_letters,
            &input.source(),
            failure,
            self.context.max_record_bytes,
        );
        let role = Role::DeadLetter {
            stage: failure.stage,
            original_size: input.value.len(),
            minimal: false,
        };
        (record, role)
    }

    /// Stores the offset of a fully acknowledged input record.
    fn store_offset(&self, offset: Option<i64>) {
        let Some(offset) = offset else {
            return;
        };
        match self
            .context
            .consumer
            .store_offset(&self.topic, self.partition, offset)
        {
            Ok(()) => {
                self.context.stats.offsets_stored.inc();
            }
            Err(err) => {
                warn!(offset, error = %err, "Could not store offset (partition no longer assigned?).");
            }
        }
    }
}

/// The record a fired timer stands for, as its dead letter carries it
/// should the call fail: the plugin, the key, when it was due and its
/// payload (`payload` when it is UTF-8, else `payload_base64`), so the
/// timer can be set again by hand — the call removed it.
fn timer_record(plugin: &str, timer: &FiredTimer) -> Vec<u8> {
    let mut value = serde_json::json!({
        "plugin": plugin,
        "timer": timer.key,
        "due": rfc3339(timer.due),
    });
    match std::str::from_utf8(&timer.payload) {
        Ok(text) => value["payload"] = text.into(),
        Err(_) => {
            use base64::Engine as _;
            let encoded = base64::engine::general_purpose::STANDARD.encode(&timer.payload);
            value["payload_base64"] = encoded.into();
        }
    }
    value.to_string().into_bytes()
}

/// Runs a partition's worker. Should it panic (a bug), the partition is
/// reported stalled — not ready, with the panic's message, and an error
/// logged — until `status` goes with the partition's handle, instead of
/// the partition silently making no more progress.
pub(super) async fn supervised(run: impl Future<Output = ()>, status: Arc<PartitionStatus>) {
    let Err(panic) = AssertUnwindSafe(run).catch_unwind().await else {
        return;
    };
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    let what = crate::text::message(&what);
    error!(panic = %what, "A partition's worker panicked; the partition makes no progress until it is reassigned or the daemon restarts.");
    status.stalled(format!("its worker panicked: {what}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{NotReady, Readiness};

    #[tokio::test]
    async fn a_worker_that_panics_leaves_its_partition_reported_stalled() {
        let readiness = Arc::new(Readiness::default());
        readiness.assigned(1);
        let status = Arc::new(readiness.partition("task-events", 3));
        // The worker's own status, dropped as it unwinds, clears its own
        // reports; the supervisor's report comes after.
        let own = readiness.partition("task-events", 3);
        let task = tokio::spawn(supervised(
            async move {
                let _own = own;
                panic!("invariant broken");
            },
            status.clone(),
        ));
        task.await.unwrap();
        match readiness.check() {
            Err(NotReady::Stalled { reason, .. }) => {
                assert!(
                    reason.contains("its worker panicked: invariant broken"),
                    "{reason}"
                );
            }
            other => panic!("not reported: {other:?}"),
        }
        drop(status);
        assert!(readiness.is_ready(), "the report goes with the partition");

        supervised(async {}, Arc::new(readiness.partition("task-events", 4))).await;
        assert!(readiness.is_ready());
    }
}
