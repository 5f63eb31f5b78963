//! The daemon's run loop: a Kafka consumer group member that feeds each
//! assigned partition to its own worker, in order, and produces what the
//! plugins emit.
//!
//! Delivery is at-least-once: an input offset is stored (and later
//! committed) only after every plugin handled the record — or it was
//! dead-lettered — and every record it caused was acknowledged by the
//! broker ([`delivery`]). Partitions run in parallel, each on its own task
//! ([`worker`]); nothing a plugin, a record or the broker does blocks the
//! loop that polls the consumer ([`consumer`]).
//!
//! The loop, top to bottom: start workers for assigned partitions; drain
//! revoked ones in the background and give them back once settled; route
//! each record to its worker (pausing a partition whose worker is behind);
//! on shutdown, stop intake, drain every worker, commit and leave — bounded
//! by `pipeline.shutdown_timeout`, and the last commit and leaving the group
//! by bounds of their own, so a broker that stops answering cannot hold
//! the stop up.
//!
//! Workers take new plugin sets from the [`Registry`] between records, so a
//! hot reload never splits an event between two versions of a plugin.

mod coalesce;
mod consumer;
mod delivery;
mod detach;
mod records;
mod restore;
mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{error, info, warn};

pub(crate) use self::consumer::PipelineConsumer;
use self::consumer::{
    GroupEvent, Intake, Partition, PartitionQueue, PipelineContext, WorkerHandle,
};
pub(crate) use self::detach::detach;
pub use self::records::{Failure, Source, Stage, dead_letter, output};
pub use self::restore::{RestoreError, restore_partition};
use self::worker::{Stop, Worker, WorkerContext};
use crate::clock::Clock;
use crate::config::Config;
use crate::dispatch::{DispatchPolicy, Dispatcher, RetryWait};
use crate::kafka;
use crate::plugin::health::QuarantinePolicy;
use crate::plugin::{Plugin, Registry};
use crate::telemetry::{LogThrottle, Rate, Telemetry};

/// The longest gap between two consumer-error log lines.
const CONSUMER_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long an attempt at the last commit that starts after the shutdown
/// deadline may wait for the coordinator's answer (see [`last_commit`]).
const LAST_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a periodic commit may go unanswered before it is reported
/// (logged and counted as failed).
const STALLED_COMMIT: Duration = Duration::from_secs(30);

/// How long flushing the producer and leaving the group may take at
/// shutdown. librdkafka's close can wait forever: an answer to a rebalance
/// event that reaches the group just as it terminates is dropped
/// unanswered, and the call waits for good (confluentinc/librdkafka#4884).
/// Past this the daemon stops without it; the group drops the member after
/// `session.timeout.ms`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors that stop the pipeline from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka client could not be created or subscribed.
    #[error(transparent)]
    Kafka(#[from] kafka::Error),
    /// The consumer failed in a way it cannot recover from.
    #[error("consuming from {topics}: {source}")]
    Consume {
        /// The input topics.
        topics: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The consumer failed for good (librdkafka's fatal error): this member
    /// takes no more part in the group.
    #[error(
        "consuming from {topics}: the consumer failed for good ({reason}); its partitions were \
         given up and its uncommitted records go to the group's other members (does another \
         process share this one's group.instance.id?)"
    )]
    ConsumerFatal {
        /// The input topics.
        topics: String,
        /// librdkafka's reason.
        reason: String,
    },
}

/// The pipeline's dependencies.
pub struct Pipeline {
    /// Validated configuration.
    pub config: Config,
    /// The plugins serving (and any later versions of them).
    pub plugins: Arc<Registry>,
    /// Metrics and readiness, shared with the admin endpoint.
    pub telemetry: Telemetry,
    /// Event time for plugins and timers.
    pub clock: Clock,
}

/// A revoked partition set draining in the background.
/// Resolves with the partitions, and whether they were lost.
type Draining = FuturesUnordered<BoxFuture<'static, (TopicPartitionList, bool)>>;

impl Pipeline {
    /// A pipeline over a fixed set of plugins, with fresh telemetry, on the
    /// system clock.
    pub fn new(config: Config, plugins: Vec<Arc<Plugin>>) -> Self {
        Self::with_clock(config, plugins, Clock::System)
    }

    /// A pipeline over a fixed set of plugins on `clock`.
    pub fn with_clock(config: Config, plugins: Vec<Arc<Plugin>>, clock: Clock) -> Self {
        let telemetry = Telemetry::default();
        let plugins = Arc::new(Registry::fixed(
            plugins,
            telemetry.plugins.clone(),
            clock.clone(),
        ));
        Self {
            config,
            plugins,
            telemetry,
            clock,
        }
    }

    /// Consumes from `brokers` until `shutdown` resolves, then drains,
    /// commits and leaves the group.
    pub async fn run(
        &self,
        brokers: &str,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let kafka = &self.config.kafka;
        let topics = kafka.input_topics.join(",");
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let consumer = Arc::new(self.consumer(brokers, events_tx, &topics)?);
        let context = WorkerContext {
            consumer: consumer.clone(),
            producer: kafka::producer(brokers, kafka)?,
            restore_client: kafka::client_config(brokers, kafka, &[]),
            changelog: kafka.changelog_topic(),
            dead_letters: kafka.dead_letter_topic.clone(),
            max_record_bytes: kafka.max_record_bytes(),
            max_event_bytes: self.config.pipeline.max_event_bytes,
            restore_timeout: self.config.pipeline.restore_timeout,
            restore_turns: Arc::new(Semaphore::new(self.config.pipeline.max_concurrent_restores)),
            forget: self.config.plugins.forget.clone().into(),
            max_in_flight: self.config.pipeline.max_in_flight,
            max_in_flight_bytes: self.config.pipeline.max_in_flight_bytes.as_usize(),
            changelog_flush_interval: self.config.pipeline.changelog_flush_interval,
            changelog_flush_idle: self.config.pipeline.changelog_flush_idle,
            clock: self.clock.clone(),
            stats: self.telemetry.pipeline.clone(),
            warnings: Arc::new(LogThrottle::new(
                "records",
                Rate::WARNINGS,
                self.telemetry.pipeline.warnings_suppressed.clone(),
            )),
            read_errors: Arc::new(LogThrottle::new(
                "partition reads",
                Rate::WARNINGS,
                self.telemetry.pipeline.warnings_suppressed.clone(),
            )),
        };
        info!(brokers, topics, group = %kafka.group_id, plugins = self.plugins.current().plugins.len(), "Pipeline started.");

        let committer = tokio::spawn(commit_periodically(
            consumer.clone(),
            self.config.pipeline.commit_interval,
            self.telemetry.clone(),
        ));
        let mut intake = Intake::default();
        let mut draining = Draining::new();
        let mut errors_logged: Option<Instant> = None;
        // A fatal consumer error (this member fenced by another with the
        // same `group.instance.id`): the consumer takes no more part in
        // the group, so the daemon gives its partitions up and exits with
        // it, rather than stay up, reporting ready, with nothing assigned.
        let mut fatal: Option<String> = None;
        // Said once the member gives every partition up, those already
        // draining (revoked just before) included.
        let (give_up_all, member_given_up) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(event) = events.recv() => match event {
                    GroupEvent::Assigned(partitions) => {
                        self.assign(&consumer, &mut intake, &partitions, &context);
                    }
                    GroupEvent::Revoked { partitions, lost } => {
                        draining.push(self.revoke(&mut intake, partitions, lost, member_given_up.clone()));
                    }
                },
                Some((partitions, lost)) = draining.next() => {
                    self.telemetry.readiness.revoked(partitions.count());
                    for e in partitions.elements() {
                        intake.handed_back(&(e.topic().to_owned(), e.partition()));
                    }
                    // Committing waits on the coordinator: not in this loop.
                    tokio::spawn(hand_back(consumer.clone(), self.telemetry.clone(), partitions, lost));
                }
                Some(room) = intake.next_room() => intake.fill(room),
                message = consumer.recv() => match message {
                    Ok(message) => intake.route(detach(&message)),
                    Err(err @ KafkaError::MessageConsumptionFatal(_)) => {
                        self.telemetry.pipeline.consumer_errors.inc();
                        let reason = consumer
                            .client()
                            .fatal_error()
                            .map_or_else(|| err.to_string(), |(_, reason)| reason);
                        let reason = self.config.kafka.redact(&reason);
                        error!(error = %reason, "Fatal consumer error; giving the partitions up and stopping.");
                        fatal = Some(reason);
                        break;
                    }
                    Err(err) => {
                        self.telemetry.pipeline.consumer_errors.inc();
                        if errors_logged.is_none_or(|at| at.elapsed() >= CONSUMER_ERROR_LOG_EVERY) {
                            errors_logged = Some(Instant::now());
                            warn!(error = %err, "Consumer error.");
                        }
                    }
                },
            }
        }

        self.telemetry.readiness.stopping();
        committer.abort();
        let _ = committer.await;
        // A fenced member's partitions are already another's (with static
        // membership, at once and without a rebalance): they are given up
        // as lost ones are, not drained — a late write of held state
        // changes could land after the new owner's restore.
        let (stop, drain_for) = if fatal.is_some() {
            info!("Shutting down: giving the partitions up.");
            give_up_all.send_replace(true);
            (Stop::Abandon, Duration::ZERO)
        } else {
            info!("Shutting down: draining partitions.");
            (Stop::Drain, self.config.pipeline.shutdown_timeout)
        };
        let deadline = tokio::time::Instant::now() + drain_for;
        let workers = intake.drain();
        for worker in &workers {
            let _ = worker.stop.send(stop);
        }
        // Partitions revoked before the shutdown are still draining: they
        // settle side by side with the rest, each within its own bound
        // (see `revoke`), before anything is committed or the group left.
        // They are handed back with the last commit.
        let revoked = async {
            let mut settled = Vec::new();
            while let Some(revoked) = draining.next().await {
                settled.push(revoked);
            }
            settled
        };
        let ((), revoked) = tokio::join!(
            settle_workers(
                workers,
                deadline,
                self.abandon_grace(),
                member_given_up.clone()
            ),
            revoked
        );
        // A fenced member's commits are refused for good: what it did is
        // redelivered.
        if fatal.is_none() {
            last_commit(&consumer, &mut events, revoked, &self.telemetry, deadline).await;
        } else {
            for (partitions, lost) in revoked {
                answer_at_once(&consumer, GroupEvent::Revoked { partitions, lost });
            }
        }
        // From here on the closing consumer answers the group itself (the
        // rebalance callback finds nobody listening). What the group asked
        // before that is answered now: an answer left out keeps the group
        // waiting for it, and leaving it then waits for good.
        events.close();
        while let Ok(event) = events.try_recv() {
            answer_at_once(&consumer, event);
        }
        drop(events);
        // The worker context's share of the consumer goes first, so that
        // the last one (whose drop leaves the group) is dropped in the
        // bounded work below, off the async threads. Only work given up on
        // (a commit, a hand-back) can still hold one: the consumer then
        // closes on that work's thread when it returns.
        let WorkerContext {
            producer,
            consumer: shared,
            ..
        } = context;
        drop(shared);
        let closed = crate::blocking::spawn(move || {
            let flushed = producer.flush(Duration::from_secs(5));
            if Arc::strong_count(&consumer) > 1 {
                warn!(
                    "Work given up on (a commit or a hand-back) still holds the consumer: the group is left when it returns."
                );
            }
            drop(consumer);
            flushed
        });
        match tokio::time::timeout(CLOSE_TIMEOUT, closed).await {
            Ok(Ok(Err(err))) => warn!(error = %err, "Flushing the producer."),
            Ok(_) => {}
            Err(_) => error!(
                timeout = ?CLOSE_TIMEOUT,
                "Leaving the consumer group did not finish in time; stopping without it. \
                 The group drops this member after session.timeout.ms."
            ),
        }
        info!(summary = %self.telemetry.pipeline.summary(), "Pipeline stopped.");
        match fatal {
            Some(reason) => Err(Error::ConsumerFatal { topics, reason }),
            None => Ok(()),
        }
    }

    fn consumer(
        &self,
        brokers: &str,
        events: mpsc::UnboundedSender<GroupEvent>,
        topics: &str,
    ) -> Result<PipelineConsumer, Error> {
        let kafka = &self.config.kafka;
        let defaults = [
            ("group.id", kafka.group_id.as_str()),
            // Offsets are stored behind acknowledged deliveries and committed
            // by `commit_periodically` (timed for the metrics).
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("statistics.interval.ms", "5000"),
            ("auto.offset.reset", "earliest"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("session.timeout.ms", "10000"),
            // Records prefetched per partition (librdkafka's default is
            // 64 MiB): a partition's queue fills while its worker is busy.
            ("queued.max.messages.kbytes", "16384"),
            // How long a fetch may wait for data (librdkafka: 500 ms). Some
            // brokers hold a fetch that long even when data arrives, which
            // set produce → output latency at ~450 ms p50 on tansu; 10 ms
            // gives 48 ms (BENCHMARKS.md), at the cost of more fetch
            // requests while idle.
            ("fetch.wait.max.ms", "10"),
        ];
        let context = PipelineContext {
            events,
            telemetry: self.telemetry.clone(),
        };
        let failed = |source| Error::Consume {
            topics: topics.to_owned(),
            source: kafka::redact(source, &self.config.kafka),
        };
        let consumer: PipelineConsumer = kafka::client_config(brokers, kafka, &defaults)
            .create_with_context(context)
            .map_err(failed)?;
        let input: Vec<&str> = kafka.input_topics.iter().map(String::as_str).collect();
        consumer.subscribe(&input).map_err(failed)?;
        Ok(consumer)
    }

    /// Gives newly assigned partitions their queues and workers, then takes
    /// them (so no record of theirs reaches the main queue first).
    fn assign(
        &self,
        consumer: &Arc<PipelineConsumer>,
        intake: &mut Intake,
        partitions: &TopicPartitionList,
        context: &WorkerContext,
    ) {
        for e in partitions.elements() {
            let partition = (e.topic().to_owned(), e.partition());
            if intake.has(&partition) {
                continue;
            }
            let queue = consumer.split_partition_queue(&partition.0, partition.1);
            let worker = self.spawn_worker(&partition, queue, context);
            intake.insert(partition, worker);
        }
        match consumer::take(consumer.as_ref(), partitions) {
            Ok(()) => info!(partitions = partitions.count(), "Partitions assigned."),
            Err(err) => warn!(error = %err, "Taking an assignment failed."),
        }
        self.telemetry.pipeline.rebalance("assign");
        self.telemetry.readiness.assigned(partitions.count());
    }

    /// Starts the worker of a newly assigned partition, reading `queue`.
    fn spawn_worker(
        &self,
        (topic, partition): &Partition,
        queue: Option<PartitionQueue>,
        context: &WorkerContext,
    ) -> WorkerHandle {
        let (records, rx) = mpsc::channel(self.config.pipeline.queue_capacity);
        let (stop, stopped) = watch::channel(Stop::Run);
        let plugins = self.plugins.subscribe();
        let dispatcher = Dispatcher::with(
            &plugins.borrow().plugins,
            self.dispatch_policy(),
            self.telemetry.plugins.clone(),
        );
        let worker = Worker::new(
            topic,
            *partition,
            dispatcher,
            plugins,
            self.telemetry.readiness.partition(topic, *partition),
            context.clone(),
        );
        let restoring = self.telemetry.readiness.restoring();
        let supervision = Arc::new(self.telemetry.readiness.partition(topic, *partition));
        let task = tokio::spawn(worker::supervised(
            worker.run(queue, rx, stopped, restoring),
            supervision.clone(),
        ));
        WorkerHandle {
            records,
            stop,
            task,
            _supervision: supervision,
        }
    }

    /// Stops the workers of revoked partitions — drained, or given up at
    /// once if the assignment was `lost` (the partitions may have a new
    /// owner already, which must not see this member write more state).
    /// The returned future resolves (with the partitions) once they have
    /// settled; see [`settle_workers`] for the bound.
    fn revoke(
        &self,
        intake: &mut Intake,
        partitions: TopicPartitionList,
        lost: bool,
        member_given_up: watch::Receiver<bool>,
    ) -> BoxFuture<'static, (TopicPartitionList, bool)> {
        let workers: Vec<WorkerHandle> = partitions
            .elements()
            .iter()
            .filter_map(|e| intake.remove(&(e.topic().to_owned(), e.partition())))
            .collect();
        let stop = if lost { Stop::Abandon } else { Stop::Drain };
        for worker in &workers {
            let _ = worker.stop.send(stop);
        }
        // A lost partition is not drained: only the grace applies.
        let drain_for = if lost {
            Duration::ZERO
        } else {
            self.config.pipeline.shutdown_timeout
        };
        let deadline = tokio::time::Instant::now() + drain_for;
        let grace = self.abandon_grace();
        Box::pin(async move {
            settle_workers(workers, deadline, grace, member_given_up).await;
            (partitions, lost)
        })
    }

    /// How long a given-up worker may wait for what the producer already
    /// has: the longest librdkafka takes to settle a record, and a little.
    fn abandon_grace(&self) -> Duration {
        self.config.kafka.max_delivery_wait()
    }

    fn dispatch_policy(&self) -> DispatchPolicy {
        let p = &self.config.plugins;
        DispatchPolicy {
            quarantine: QuarantinePolicy {
                after: p.quarantine_after,
                backoff: p.quarantine_backoff,
                max_backoff: p.quarantine_max_backoff,
                storm_after: p.timer_storm_quarantine_after,
            },
            min_timer_rearm: p.min_timer_rearm,
            retry_wait: RetryWait::Backoff {
                budget: p.retry_budget,
            },
            max_hops: p.max_hops,
        }
    }
}

/// Waits for stopped workers to settle until `deadline`, or until
/// `member_given_up` says the whole member gave its partitions up (a fatal
/// consumer error: another owns them already). Those that do not are given
/// up ([`Stop::Abandon`]: their unacknowledged records will be
/// redelivered) and waited for `grace` more, while what the producer
/// already has of theirs settles — so a changelog batch still being
/// retried cannot land after the partition's next owner has restored its
/// state, and roll that state back. Only a worker still not done then is
/// aborted.
async fn settle_workers(
    workers: Vec<WorkerHandle>,
    deadline: tokio::time::Instant,
    grace: Duration,
    mut member_given_up: watch::Receiver<bool>,
) {
    let mut overdue = Vec::new();
    for worker in workers {
        let WorkerHandle {
            records,
            stop,
            mut task,
            _supervision,
        } = worker;
        drop(records);
        let drained = if *member_given_up.borrow() {
            task.is_finished()
        } else {
            tokio::select! {
                biased;
                _ = &mut task => true,
                () = tokio::time::sleep_until(deadline) => false,
                // Never, should the run loop go without saying so.
                Ok(_) = member_given_up.wait_for(|given_up| *given_up) => false,
            }
        };
        if !drained {
            let _ = stop.send(Stop::Abandon);
            overdue.push((task, stop, _supervision));
        }
    }
    if overdue.is_empty() {
        return;
    }
    warn!(
        partitions = overdue.len(),
        grace_s = grace.as_secs(),
        "Partitions not drained in time (or lost); giving them up once what the producer has of theirs is settled. Their unacknowledged records will be redelivered."
    );
    let until = tokio::time::Instant::now() + grace;
    for (mut task, _stop, _supervision) in overdue {
        if tokio::time::timeout_at(until, &mut task).await.is_err() {
            error!(
                "A partition's worker did not settle even after its grace; aborted. A state change it sent may still land after the partition's next owner restored its state."
            );
            task.abort();
            // Until its future is dropped it holds a share of the consumer,
            // whose last drop leaves the group: not on an async thread
            // later. (Its polls are short: plugin calls run elsewhere.)
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

/// Commits what the drained partitions stored — unless they were `lost`:
/// this member is no longer in the group's generation, and librdkafka
/// refuses such a commit — and hands them back to the group (off the async
/// threads: both wait on librdkafka).
async fn hand_back(
    consumer: Arc<PipelineConsumer>,
    telemetry: Telemetry,
    partitions: TopicPartitionList,
    lost: bool,
) {
    let handed = crate::blocking::spawn(move || {
        if !lost {
            commit(&consumer, &telemetry);
        }
        consumer::give_back(consumer.as_ref(), &partitions)
    })
    .await;
    match handed {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(error = %err, "Handing back revoked partitions."),
        Err(err) => warn!(error = %err, "Handing back revoked partitions."),
    }
}

/// Commits the stored offsets every `interval`, timing each commit.
async fn commit_periodically(
    consumer: Arc<PipelineConsumer>,
    interval: Duration,
    telemetry: Telemetry,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (consumer, counted) = (consumer.clone(), telemetry.clone());
        // A synchronous commit waits for the coordinator; keep it off the
        // runtime's threads.
        let mut committing = crate::blocking::spawn(move || commit(&consumer, &counted));
        let committed = match tokio::time::timeout(STALLED_COMMIT, &mut committing).await {
            Ok(committed) => committed,
            Err(_) => {
                // librdkafka waits for the coordinator's answer until its
                // request timeouts and retries give up (minutes). No new
                // commit starts meanwhile; say so, and count it as failed
                // (again if it then fails).
                telemetry.pipeline.commit_failed();
                warn!(
                    waited = ?STALLED_COMMIT,
                    "A commit has had no answer from the group coordinator; no commit starts until it returns."
                );
                committing.await
            }
        };
        if committed.is_err() {
            return;
        }
    }
}

/// Commits the stored offsets now. Nothing new to commit is not an error.
/// Blocking.
fn commit(consumer: &PipelineConsumer, telemetry: &Telemetry) {
    if let Err(err) = try_commit(consumer, telemetry) {
        warn!(error = %err, "Committing offsets failed; they will be committed with the next commit.");
    }
}

fn try_commit(consumer: &PipelineConsumer, telemetry: &Telemetry) -> Result<(), KafkaError> {
    let started = Instant::now();
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {
            telemetry.pipeline.committed(started.elapsed());
            Ok(())
        }
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(err) => {
            telemetry.pipeline.commit_failed();
            Err(err)
        }
    }
}

/// [`try_commit`] off the async threads.
async fn commit_now(
    consumer: &Arc<PipelineConsumer>,
    telemetry: &Telemetry,
) -> Result<(), KafkaError> {
    let (consumer, telemetry) = (consumer.clone(), telemetry.clone());
    crate::blocking::spawn(move || try_commit(&consumer, &telemetry))
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// The last commit at shutdown, and the hand-back (commit, then give
/// back) of the partitions `revoked` before it that have settled since. A
/// group rebalancing (another member leaving, say) refuses or holds the
/// commit until the rebalance completes, which needs this member to
/// answer: so the group is answered, without new workers, while each
/// attempt runs and between attempts, until one goes through or the
/// shutdown `deadline` passes. An attempt may run until the
/// deadline, or for [`LAST_COMMIT_TIMEOUT`] if it starts later: a broker
/// that does not answer is left, and what was not committed is redelivered.
async fn last_commit(
    consumer: &Arc<PipelineConsumer>,
    events: &mut mpsc::UnboundedReceiver<GroupEvent>,
    revoked: Vec<(TopicPartitionList, bool)>,
    telemetry: &Telemetry,
    deadline: tokio::time::Instant,
) {
    let mut handing = FuturesUnordered::new();
    for (partitions, lost) in revoked {
        let revoked = GroupEvent::Revoked { partitions, lost };
        answer(consumer, telemetry, revoked, &mut handing);
    }
    let mut attempt_by;
    loop {
        attempt_by = deadline.max(tokio::time::Instant::now() + LAST_COMMIT_TIMEOUT);
        let attempt = commit_now(consumer, telemetry);
        tokio::pin!(attempt);
        let committed = loop {
            tokio::select! {
                committed = &mut attempt => break Some(committed),
                () = tokio::time::sleep_until(attempt_by) => break None,
                Some(event) = events.recv() => answer(consumer, telemetry, event, &mut handing),
                Some(()) = handing.next() => {}
                _ = consumer.recv() => {}
            }
        };
        let err = match committed {
            Some(Ok(())) => break,
            Some(Err(err)) => err,
            None => {
                warn!(
                    "Last commit got no answer in time; uncommitted records will be redelivered."
                );
                break;
            }
        };
        if tokio::time::Instant::now() >= deadline {
            warn!(error = %err, "Last commit failed; uncommitted records will be redelivered.");
            break;
        }
        let serve = async {
            loop {
                tokio::select! {
                    Some(event) = events.recv() => answer(consumer, telemetry, event, &mut handing),
                    Some(()) = handing.next() => {}
                    _ = consumer.recv() => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), serve).await;
    }
    // Partitions revoked meanwhile are committed and handed back within
    // the same bound.
    let handed = async { while handing.next().await.is_some() {} };
    if tokio::time::timeout_at(attempt_by, handed).await.is_err() {
        warn!("Handing back partitions revoked at shutdown got no answer in time.");
    }
}

/// Answers a rebalance while shutting down: takes what is assigned (no
/// worker will read it); what is revoked (drained already, its offsets
/// stored) is committed and then given back, as [`hand_back`] does, in
/// `handing` — not given back first, which would leave its offsets out of
/// the commit.
fn answer(
    consumer: &Arc<PipelineConsumer>,
    telemetry: &Telemetry,
    event: GroupEvent,
    handing: &mut FuturesUnordered<BoxFuture<'static, ()>>,
) {
    match event {
        assigned @ GroupEvent::Assigned(_) => answer_at_once(consumer, assigned),
        GroupEvent::Revoked { partitions, lost } => handing.push(Box::pin(hand_back(
            consumer.clone(),
            telemetry.clone(),
            partitions,
            lost,
        ))),
    }
}

/// Answers a rebalance while shutting down, committing nothing: takes what
/// is assigned (no worker will read it) or gives back what is revoked.
fn answer_at_once(consumer: &PipelineConsumer, event: GroupEvent) {
    let answered = match event {
        GroupEvent::Assigned(partitions) => consumer::take(consumer, &partitions),
        GroupEvent::Revoked { partitions, .. } => consumer::give_back(consumer, &partitions),
    };
    if let Err(err) = answered {
        warn!(error = %err, "Answering a rebalance while shutting down.");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::telemetry::Readiness;

    /// A worker that never drains, and once given up takes `settling` to
    /// settle what the producer has of it; `settled` is set then.
    fn stuck_worker(
        readiness: &Arc<Readiness>,
        settling: Duration,
    ) -> (WorkerHandle, Arc<AtomicBool>) {
        let (records, _) = mpsc::channel(1);
        let (stop, mut stopped) = watch::channel(Stop::Drain);
        let settled = Arc::new(AtomicBool::new(false));
        let flag = settled.clone();
        let task = tokio::spawn(async move {
            let _ = stopped.wait_for(|s| *s == Stop::Abandon).await;
            tokio::time::sleep(settling).await;
            flag.store(true, Ordering::SeqCst);
        });
        let worker = WorkerHandle {
            records,
            stop,
            task,
            _supervision: Arc::new(readiness.partition("task-events", 0)),
        };
        (worker, settled)
    }

    /// A drain overdue at the deadline is given up, not cut short: the
    /// worker is waited for while it settles what the producer has (else
    /// a changelog batch of its could land after the next owner restored
    /// the partition), and aborted only once its grace has passed too.
    #[tokio::test(start_paused = true)]
    async fn an_overdue_drain_is_given_up_and_waited_for() {
        let readiness = Arc::new(Readiness::default());
        let grace = Duration::from_secs(60);

        let (worker, settled) = stuck_worker(&readiness, Duration::from_secs(10));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        settle_workers(vec![worker], deadline, grace, never_given_up()).await;
        assert!(settled.load(Ordering::SeqCst), "waited for while settling");

        let (worker, settled) = stuck_worker(&readiness, Duration::from_secs(3600));
        let started = tokio::time::Instant::now();
        settle_workers(
            vec![worker],
            started + Duration::from_secs(1),
            grace,
            never_given_up(),
        )
        .await;
        assert!(!settled.load(Ordering::SeqCst));
        assert_eq!(
            started.elapsed().as_secs(),
            61,
            "aborted once the deadline and the grace had passed (paused time)"
        );
    }

    /// A member's give-up that never comes (its sender gone unsaid).
    fn never_given_up() -> watch::Receiver<bool> {
        watch::channel(false).1
    }

    /// Workers already draining (their partitions revoked just before)
    /// are given up at once when the whole member gives its partitions up
    /// (a fatal consumer error: another process owns them already), not
    /// left to drain on — and write held state changes — for up to
    /// `shutdown_timeout` (before, only the workers still taking records
    /// were given up).
    #[tokio::test(start_paused = true)]
    async fn draining_workers_are_given_up_with_the_member() {
        let readiness = Arc::new(Readiness::default());
        let (worker, settled) = stuck_worker(&readiness, Duration::from_secs(1));
        let (other, other_settled) = stuck_worker(&readiness, Duration::from_secs(1));
        let (give_up_all, member_given_up) = watch::channel(false);
        let started = tokio::time::Instant::now();
        let settling = tokio::spawn(settle_workers(
            vec![worker, other],
            started + Duration::from_secs(3600),
            Duration::from_secs(60),
            member_given_up,
        ));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!settling.is_finished(), "still draining");
        give_up_all.send_replace(true);
        settling.await.unwrap();
        assert!(settled.load(Ordering::SeqCst), "waited for while settling");
        assert!(other_settled.load(Ordering::SeqCst));
        assert_eq!(
            started.elapsed().as_secs(),
            11,
            "given up at once, then its second of settling (paused time)"
        );
    }
}
