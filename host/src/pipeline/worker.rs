//! One input partition: records in order through the plugins, results out,
//! offsets stored only behind acknowledged deliveries.
//!
//! Each handled record (and each fired timer) becomes an entry in a FIFO of
//! pending deliveries. The head is settled first: when every record it
//! produced is acknowledged, its input offset is stored; a failed delivery
//! is re-sent (with back-off) and holds the head, so no later offset can be
//! stored past it. Intake pauses while `max_in_flight` entries are pending.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

use super::PipelineConsumer;
use super::records::{self, Failure, OutRecord, Source};
use crate::dispatch::{Dispatcher, Outcome};
use crate::event::{self, RecordMeta};
use crate::plugin::PluginSet;
use crate::state::changelog;
use crate::telemetry::{PipelineMetrics, RestoreGuard};
use crate::world::Timestamp;

/// How long to wait before re-sending a record whose delivery failed.
const RESEND_BACKOFF: Duration = Duration::from_millis(500);
/// The longest a worker sleeps before re-checking its timers.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(60);

/// Asks a worker to hand its partition back.
#[derive(Default)]
pub(super) struct Revoke {
    pub(super) requested: Notify,
}

pub(super) struct Worker {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) dispatcher: Dispatcher,
    /// New plugin sets, applied between records.
    pub(super) plugins: watch::Receiver<Arc<PluginSet>>,
    pub(super) producer: FutureProducer,
    pub(super) consumer: Arc<PipelineConsumer>,
    /// Where the dead letters and state changes of this partition go.
    pub(super) targets: Targets,
    /// Client settings for reading the changelog on start.
    pub(super) restore_client: rdkafka::ClientConfig,
    pub(super) restore_timeout: Duration,
    pub(super) max_in_flight: usize,
    pub(super) stats: Arc<PipelineMetrics>,
    pub(super) pending: VecDeque<Pending>,
}

/// What one input record (or timer firing) produced.
pub(super) struct Pending {
    offset: Option<i64>,
    sends: Vec<Send>,
}

struct Send {
    record: OutRecord,
    state: SendState,
}

enum SendState {
    /// Enqueued with the producer, awaiting the broker's acknowledgement.
    InFlight(DeliveryFuture),
    /// Acknowledged by the broker.
    Acked,
    /// Failed (or never enqueued); must be re-sent.
    Failed(String),
}

impl SendState {
    fn enqueue(producer: &FutureProducer, record: &OutRecord) -> Self {
        match record.enqueue(producer) {
            Ok(delivery) => Self::InFlight(delivery),
            Err(err) => Self::Failed(err.to_string()),
        }
    }
}

fn wall_now() -> Timestamp {
    jiff::Timestamp::now().as_millisecond()
}

impl Worker {
    /// Restores the partition's state (then drops `restoring`), runs
    /// until the channel closes (shutdown) or a revoke is requested, then
    /// settles everything pending. `done` is told when it has.
    pub(super) async fn run(
        mut self,
        mut records: mpsc::Receiver<OwnedMessage>,
        revoke: Arc<Revoke>,
        done: std::sync::mpsc::Sender<()>,
        restoring: RestoreGuard,
    ) {
        let span = info_span!("partition", topic = %self.topic, partition = self.partition);
        async {
            self.restore().await;
            drop(restoring);
            let mut plugins_open = true;
            loop {
                let next_due = self.dispatcher.next_due();
                let timer_sleep = next_due.map(|due| {
                    let ms = u64::try_from(due.saturating_sub(wall_now())).unwrap_or(0);
                    Duration::from_millis(ms).min(MAX_TIMER_SLEEP)
                });
                tokio::select! {
                    biased;
                    () = revoke.requested.notified() => {
                        debug!("Revoked; settling pending deliveries.");
                        break;
                    }
                    changed = self.plugins.changed(), if plugins_open => match changed {
                        Ok(()) => self.update_plugins(),
                        Err(_) => plugins_open = false,
                    },
                    failures = settle_head(&mut self.pending), if !self.pending.is_empty() => {
                        self.after_settle(failures).await;
                    }
                    () = tokio::time::sleep(timer_sleep.unwrap_or(MAX_TIMER_SLEEP)), if timer_sleep.is_some() => {
                        self.fire_timers();
                    }
                    record = records.recv(), if self.pending.len() < self.max_in_flight => match record {
                        Some(record) => self.handle(&record),
                        None => break,
                    },
                }
            }
            self.settle_all().await;
        }
        .instrument(span)
        .await;
        let _ = done.send(());
    }

    /// Rebuilds the plugins' state for this partition from the changelog.
    /// On failure the partition starts empty rather than not at all; the
    /// error is logged.
    async fn restore(&mut self) {
        let started = std::time::Instant::now();
        let (client, changelog, topic, partition, timeout) = (
            self.restore_client.clone(),
            self.targets.changelog.clone(),
            self.topic.clone(),
            self.partition,
            self.restore_timeout,
        );
        let restored = tokio::task::spawn_blocking(move || {
            super::restore::restore_partition(&client, &changelog, partition, &topic, timeout)
        })
        .await;
        match restored {
            Ok(Ok(restorer)) => {
                let (applied, skipped) = (restorer.applied, restorer.skipped);
                self.dispatcher.restore(restorer.into_states());
                self.stats.restored_records.inc_by(applied);
                info!(
                    records = applied,
                    skipped,
                    timers = self.dispatcher.timer_count(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "Restored plugin state from the changelog."
                );
            }
            Ok(Err(err)) => {
                warn!(changelog = %self.targets.changelog, error = %err, "Could not restore plugin state; starting empty.")
            }
            Err(err) => warn!(error = %err, "State restore task failed; starting empty."),
        }
    }

    async fn settle_all(&mut self) {
        while !self.pending.is_empty() {
            let failures = settle_head(&mut self.pending).await;
            self.after_settle(failures).await;
        }
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

    /// Decodes, dispatches and sends the results of one input record.
    fn handle(&mut self, message: &OwnedMessage) {
        self.stats.events_in.inc();
        let value = message.payload().unwrap_or_default();
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
        let mut source = Source {
            topic: message.topic(),
            partition: message.partition(),
            offset: Some(message.offset()),
            key: message.key(),
            value,
            event_id: None,
        };
        let span = debug_span!(
            "record",
            offset = message.offset(),
            event_id = tracing::field::Empty
        );
        let _entered = span.enter();
        let mut out = Vec::new();
        let decoded = if message.payload().is_none() {
            Err("record has no value (a tombstone)".to_owned())
        } else {
            event::decode_record(value, meta).map_err(|e| e.to_string())
        };
        match decoded {
            Err(reason) => {
                warn!(offset = message.offset(), error = %reason, "Undecodable record dead-lettered.");
                let failure = Failure {
                    stage: "decode",
                    plugin: None,
                    kind: None,
                    message: &reason,
                };
                out.push(records::dead_letter(
                    &self.targets.dead_letters,
                    &source,
                    &failure,
                ));
            }
            Ok(event) => {
                span.record("event_id", event.id.as_str());
                source.event_id = Some(&event.id);
                for outcome in self.dispatcher.dispatch(&event, wall_now()) {
                    collect(outcome, &source, "plugin", &self.targets, &mut out);
                }
            }
        }
        self.send(Some(message.offset()), out);
    }

    /// Fires every timer that is due now.
    fn fire_timers(&mut self) {
        let now = wall_now();
        while let Some(firing) = self.dispatcher.fire_next(now) {
            self.stats.timers_fired.inc();
            let value = serde_json::json!({
                "plugin": firing.outcome.plugin.name,
                "timer": firing.timer.key,
                "due": crate::offline::rfc3339(firing.timer.due),
            })
            .to_string();
            let source = Source {
                topic: &self.topic,
                partition: self.partition,
                offset: None,
                key: Some(firing.timer.key.as_bytes()),
                value: value.as_bytes(),
                event_id: None,
            };
            let mut out = Vec::new();
            // The fired timer is gone unless the handler set it again.
            let rearmed = matches!(&firing.outcome.result,
                Ok(e) if e.changes.timers.contains_key(&firing.timer.key));
            if !rearmed {
                let plugin = &firing.outcome.plugin.name;
                let key = changelog::key(&self.topic, plugin, true, &firing.timer.key);
                out.push(self.targets.changelog_record(key, None));
            }
            collect(firing.outcome, &source, "timer", &self.targets, &mut out);
            self.send(None, out);
        }
    }

    /// Hands records to the producer and queues them as one pending entry.
    fn send(&mut self, offset: Option<i64>, records: Vec<OutRecord>) {
        let sends = records
            .into_iter()
            .map(|record| {
                let state = SendState::enqueue(&self.producer, &record);
                Send { record, state }
            })
            .collect();
        self.pending.push_back(Pending { offset, sends });
    }

    /// Pops the head if it is fully acknowledged and stores its offset;
    /// otherwise re-sends what failed.
    async fn after_settle(&mut self, failures: Vec<(usize, String)>) {
        if failures.is_empty() {
            let Some(head) = self.pending.pop_front() else {
                return;
            };
            for send in &head.sends {
                let counter = if send.record.topic == self.targets.dead_letters {
                    &self.stats.dead_letters
                } else if send.record.topic == self.targets.changelog {
                    &self.stats.changelog_records
                } else {
                    &self.stats.outputs
                };
                counter.inc();
            }
            if let Some(offset) = head.offset {
                match self
                    .consumer
                    .store_offset(&self.topic, self.partition, offset)
                {
                    Ok(()) => {
                        self.stats.offsets_stored.inc();
                    }
                    Err(err) => {
                        warn!(offset, error = %err, "Could not store offset (partition no longer assigned?).")
                    }
                }
            }
            return;
        }
        tokio::time::sleep(RESEND_BACKOFF).await;
        let Some(head) = self.pending.front_mut() else {
            return;
        };
        for (index, error) in failures {
            if let Some(send) = head.sends.get_mut(index) {
                warn!(topic = %send.record.topic, error = %error, "Delivery failed; re-sending. The input offset does not advance until it succeeds.");
                self.stats.resends.inc();
                send.state = SendState::enqueue(&self.producer, &send.record);
            }
        }
    }
}

/// Where a partition's records go besides plugin outputs.
pub(super) struct Targets {
    pub(super) dead_letters: String,
    pub(super) changelog: String,
    pub(super) input_topic: String,
    pub(super) partition: i32,
}

impl Targets {
    /// A changelog record, in the partition numbered like the input's.
    fn changelog_record(&self, key: Vec<u8>, value: Option<Vec<u8>>) -> OutRecord {
        OutRecord {
            topic: self.changelog.clone(),
            partition: Some(self.partition),
            key: Some(key),
            value,
            headers: Vec::new(),
        }
    }
}

/// Turns one plugin call's outcome into records: its emits, or a dead letter.
fn collect(
    outcome: Outcome,
    source: &Source<'_>,
    stage: &'static str,
    targets: &Targets,
    out: &mut Vec<OutRecord>,
) {
    let dlq = targets.dead_letters.as_str();
    match outcome.result {
        Ok(effects) => {
            for emit in &effects.emits {
                out.push(records::output(emit, &outcome.plugin, source));
            }
            let plugin = outcome.plugin.name.as_str();
            for (key, value) in changelog::records(&targets.input_topic, plugin, &effects.changes) {
                out.push(targets.changelog_record(key, value));
            }
        }
        Err(err) => {
            let message = err.to_string();
            let failure = Failure {
                stage,
                plugin: Some(&outcome.plugin.name),
                kind: Some(err.kind()),
                message: &message,
            };
            out.push(records::dead_letter(dlq, source, &failure));
        }
    }
}

/// Waits for every delivery of the head entry. Outcomes are recorded as
/// they arrive, so this is safe to cancel and call again. Returns the
/// indices that failed, with the reason.
async fn settle_head(pending: &mut VecDeque<Pending>) -> Vec<(usize, String)> {
    let Some(head) = pending.front_mut() else {
        return Vec::new();
    };
    let mut failures = Vec::new();
    for (index, send) in head.sends.iter_mut().enumerate() {
        if let SendState::InFlight(delivery) = &mut send.state {
            send.state = match delivery.await {
                Ok(Ok(_)) => SendState::Acked,
                Ok(Err((err, _))) => SendState::Failed(err.to_string()),
                Err(_canceled) => SendState::Failed("the producer dropped the delivery".into()),
            };
        }
        if let SendState::Failed(reason) = &send.state {
            failures.push((index, reason.clone()));
        }
    }
    failures
}
