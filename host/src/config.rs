//! The daemon's configuration: a TOML file, overridden by environment
//! variables and command-line flags, validated before anything starts.
//!
//! ```toml
//! [kafka]
//! brokers = "kafka-1:9092,kafka-2:9092"   # absent: an embedded broker
//! group_id = "todo-eventd"
//! input_topics = ["task-events"]
//! dead_letter_topic = "task-events.dlq"
//! changelog_topic = "todo-eventd.plugin-state"   # default: GROUP_ID.plugin-state
//! create_topics = true
//! partitions = 3
//! replication_factor = 1
//! [kafka.properties]                      # passed to librdkafka as-is
//! "security.protocol" = "SASL_SSL"
//!
//! [plugins]
//! dir = "/var/lib/todo-eventd/plugins"    # absent: the bundled plugins
//! watch = true                            # hot reload
//! quarantine_after = 5
//!
//! [sandbox]
//! [sandbox.default_limits]                # for what a manifest leaves out
//! memory = "64MiB"
//! call_timeout = "200ms"
//! [sandbox.max_limits]                    # the most a manifest may ask for
//! call_timeout = "60s"
//!
//! [pipeline]
//! queue_capacity = 256
//! max_in_flight = 512
//! shutdown_timeout = "30s"
//!
//! [admin]
//! addr = "127.0.0.1:9477"                 # /metrics /healthz /readyz /plugins
//! ```
//!
//! Every key can also be set from the environment as
//! `TODO_EVENTD_<SECTION>_<KEY>` (e.g. `TODO_EVENTD_KAFKA_GROUP_ID`), a
//! librdkafka property as `TODO_EVENTD_KAFKA_PROPERTY_<NAME>` with `_` for
//! `.` (`TODO_EVENTD_KAFKA_PROPERTY_SASL_PASSWORD`), and on the command line
//! with `--set section.key=value`. Precedence: flags, then environment, then
//! the file. Values are TOML (`5`, `true`, `["a","b"]`) or else a string.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::sandbox::{Compiler, GrantPolicy, LimitSettings, Limits, LogPolicy, SandboxConfig};
use crate::units::{ByteSize, Count};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where events come from and results go.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Which plugins run.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Sandbox limits and the compiled-component cache.
    #[serde(default)]
    pub sandbox: SandboxSection,
    /// Queueing and shutdown.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// The admin HTTP endpoint.
    #[serde(default)]
    pub admin: AdminConfig,
}

/// The sections of the file, for environment overrides.
const SECTIONS: [&str; 5] = ["kafka", "plugins", "sandbox", "pipeline", "admin"];

/// Tables inside sections, for environment overrides:
/// `TODO_EVENTD_SANDBOX_DEFAULT_LIMITS_MEMORY` sets
/// `sandbox.default_limits.memory`.
const TABLES: [&str; 2] = ["default_limits", "max_limits"];

/// `[kafka]`. Its `Debug` shows secret-looking property values as `***`.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated. Absent: start an embedded
    /// Kafka-protocol broker in the process.
    pub brokers: Option<String>,
    /// Consumer group id; run several daemons with the same id to share the
    /// partitions.
    pub group_id: String,
    /// Topics to consume task events from (a list, or one comma-separated
    /// string).
    #[serde(deserialize_with = "list_or_csv")]
    pub input_topics: Vec<String>,
    /// Where undecodable records and failed plugin calls go.
    pub dead_letter_topic: String,
    /// The compacted topic plugin state and timers are written to and
    /// restored from. Default: `GROUP_ID.plugin-state`.
    pub changelog_topic: Option<String>,
    /// Create missing topics at start-up (inputs, outputs, dead letters).
    pub create_topics: bool,
    /// Partitions of topics the daemon creates.
    pub partitions: i32,
    /// Replication factor of topics the daemon creates.
    pub replication_factor: i32,
    /// Extra librdkafka properties for every client (SASL, TLS, tuning).
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties read from files when the configuration is
    /// loaded — the way to pass secrets (`"sasl.password" =
    /// "/run/secrets/kafka-password"`); a trailing newline is dropped.
    pub property_files: BTreeMap<String, PathBuf>,
}

/// The most instances `sandbox.max_instances` may ask the pool for.
pub const MAX_INSTANCES: u32 = 10_000;

/// The largest secret file read.
const MAX_SECRET_FILE_BYTES: ByteSize = ByteSize::kib(64);

/// The largest configuration file read (one is a few KiB): a file named by
/// mistake, or `/dev/zero`, is refused rather than read into memory whole.
const MAX_CONFIG_FILE_BYTES: ByteSize = ByteSize::mib(1);

/// Whether a property's name looks like it holds a secret (a password, a
/// secret, a token, a key, credentials, an auth config), misspellings such
/// as `sasl.passwrod` included. Its value is never shown.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token", "key", "cred", "auth"]
        .iter()
        .any(|word| name.contains(word))
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_name(k) { "***" } else { v.as_str() };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("input_topics", &self.input_topics)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("changelog_topic", &self.changelog_topic)
            .field("create_topics", &self.create_topics)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("properties", &properties)
            .field("property_files", &self.property_files)
            .finish()
    }
}

/// librdkafka's default `message.max.bytes`.
pub(crate) const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// The producer's `message.timeout.ms` unless the operator sets it.
pub const DEFAULT_MESSAGE_TIMEOUT_MS: u64 = 30_000;
/// librdkafka's default `request.timeout.ms`.
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// librdkafka's default `max.poll.interval.ms`.
const DEFAULT_MAX_POLL_INTERVAL_MS: u64 = 300_000;
/// The most `pipeline.max_concurrent_restores` may be: each restore holds
/// a blocking thread and a consumer of its own.
const MAX_CONCURRENT_RESTORES: usize = 64;

/// The largest `pipeline.queue_capacity`: records a partition's worker may
/// have queued (tokio's channels refuse a capacity near `usize::MAX`, and
/// a queue this long already holds ample work).
const MAX_QUEUE_CAPACITY: usize = 1_000_000;
/// Room left, besides the drain and the producer wait, for handing a
/// revoked partition back (a commit, the unassign) within the group's
/// rebalance timeout.
const HAND_BACK_MARGIN: Duration = Duration::from_secs(10);
/// What [`KafkaConfig::max_delivery_wait`] adds to the producer's timeouts.
const DELIVERY_WAIT_MARGIN: Duration = Duration::from_secs(5);

impl KafkaConfig {
    /// The largest record the producer sends: the operator's
    /// `message.max.bytes` property, or librdkafka's default. Emits, state
    /// values and dead letters are sized to fit it.
    pub fn max_record_bytes(&self) -> usize {
        self.properties
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
    }

    /// How long a partition given up before it drained waits for what the
    /// producer already has of it: the longest librdkafka takes to report
    /// what became of a record it was given — its message timeout
    /// (`message.timeout.ms`, or its alias `delivery.timeout.ms`) — plus
    /// `request.timeout.ms` and 5 s as a margin for a request still on the
    /// wire when that passes (an overestimate).
    pub fn max_delivery_wait(&self) -> Duration {
        let property = |names: &[&str], default: u64| {
            names
                .iter()
                .find_map(|name| self.properties.get(*name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        let message = property(
            &["message.timeout.ms", "delivery.timeout.ms"],
            DEFAULT_MESSAGE_TIMEOUT_MS,
        );
        let request = property(&["request.timeout.ms"], DEFAULT_REQUEST_TIMEOUT_MS);
        Duration::from_millis(message.saturating_add(request)) + DELIVERY_WAIT_MARGIN
    }

    /// The group's rebalance timeout: how long a member may take to hand
    /// back revoked partitions before the group throws it out
    /// (`max.poll.interval.ms`).
    fn rebalance_timeout(&self) -> Duration {
        let ms = self
            .properties
            .get("max.poll.interval.ms")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_POLL_INTERVAL_MS);
        Duration::from_millis(ms)
    }

    /// `text` with the value of every secret-looking property replaced by
    /// `***`: for errors that quote what librdkafka was given.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (name, value) in &self.properties {
            if is_secret_name(name) && !value.is_empty() {
                text = text.replace(value.as_str(), "***");
            }
        }
        text
    }

    /// Reads `property_files` into `properties`; the error names the key
    /// and the file, never the contents.
    fn read_property_files(&mut self) -> Result<(), ConfigError> {
        for (name, file) in &self.property_files {
            let invalid = |reason: String| ConfigError::Invalid {
                field: "kafka.property_files",
                reason: format!("{name}: {}: {reason}", file.display()),
            };
            let text = crate::files::read_text_bounded(file, MAX_SECRET_FILE_BYTES)
                .map_err(|e| invalid(e.to_string()))?;
            let value = text.strip_suffix('\n').unwrap_or(&text);
            let value = value.strip_suffix('\r').unwrap_or(value);
            self.properties.insert(name.clone(), value.to_owned());
        }
        Ok(())
    }

    /// The changelog topic, explicit or derived from the group id.
    pub fn changelog_topic(&self) -> String {
        self.changelog_topic
            .clone()
            .unwrap_or_else(|| format!("{}.plugin-state", self.group_id))
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            group_id: "todo-eventd".into(),
            input_topics: vec!["task-events".into()],
            dead_letter_topic: "task-events.dlq".into(),
            changelog_topic: None,
            create_topics: true,
            partitions: 3,
            replication_factor: 1,
            properties: BTreeMap::new(),
            property_files: BTreeMap::new(),
        }
    }
}

/// `[plugins]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// The plugins directory. Absent: the bundled plugins.
    pub dir: Option<PathBuf>,
    /// Reload plugins when files in `dir` change.
    pub watch: bool,
    /// How long the directory must be quiet before a change is loaded.
    #[serde(with = "crate::units::duration")]
    pub reload_debounce: Duration,
    /// Consecutive failed calls (the plugin's own failures: traps,
    /// deadlines, memory, quotas) that quarantine a plugin; 0 never does.
    pub quarantine_after: u32,
    /// The first quarantine's length; each failed retry doubles it.
    #[serde(with = "crate::units::duration")]
    pub quarantine_backoff: Duration,
    /// The longest quarantine.
    #[serde(with = "crate::units::duration")]
    pub quarantine_max_backoff: Duration,
    /// The soonest a timer set during `on-timer` may fire; sooner ones are
    /// pushed back to it.
    #[serde(with = "crate::units::duration")]
    pub min_timer_rearm: Duration,
    /// Throttled re-arms within a minute that quarantine a plugin as a
    /// timer storm; 0 never does.
    pub timer_storm_quarantine_after: u32,
    /// The most a plugin's retries of `retryable` errors (their back-off
    /// and the failed tries) may keep partitions waiting at once; it
    /// refills at a tenth of the time passing. A retry it cannot pay for
    /// is not made: the event is dead-lettered, and counts toward
    /// quarantine.
    #[serde(with = "crate::units::duration")]
    pub retry_budget: Duration,
    /// How many plugin emits a record may be from its producer's record
    /// and still come back as input: a call handling a record this many
    /// hops away may not emit to an input topic (its event is
    /// dead-lettered, kind `max-hops`). Bounds loops through the input
    /// topics; 0 lets no plugin write to one.
    pub max_hops: u32,
    /// Names of plugins removed for good whose state to delete. A removed
    /// plugin's state is otherwise kept (restored and held in memory for
    /// every partition, its timers waiting) until a plugin of that name
    /// returns. At each partition's restore, the state of a plugin named
    /// here that is not loaded is dropped and its changelog records are
    /// tombstoned; a loaded plugin's is kept (with a warning).
    #[serde(deserialize_with = "list_or_csv")]
    pub forget: Vec<String>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            watch: true,
            reload_debounce: Duration::from_millis(500),
            quarantine_after: 5,
            quarantine_backoff: Duration::from_secs(10),
            quarantine_max_backoff: Duration::from_secs(600),
            min_timer_rearm: Duration::from_secs(1),
            timer_storm_quarantine_after: 100,
            retry_budget: crate::dispatch::DEFAULT_RETRY_BUDGET,
            max_hops: crate::dispatch::DEFAULT_MAX_HOPS,
            forget: Vec::new(),
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin endpoint.
    pub enabled: bool,
    /// Where to listen: loopback by default; use `0.0.0.0:9477` in a
    /// container so probes and Prometheus can reach it.
    pub addr: std::net::SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9477)),
        }
    }
}

/// `[sandbox]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSection {
    /// Compiled-component cache directory.
    pub cache_dir: Option<PathBuf>,
    /// Limits for what a plugin's manifest leaves out (`memory`,
    /// `call_timeout`, and the quotas; see the manifest's `[limits]`).
    pub default_limits: LimitSettings,
    /// The most a manifest may ask for, limit by limit.
    pub max_limits: LimitSettings,
    /// Instances the pooling allocator holds at once.
    pub max_instances: Option<u32>,
    /// The largest `.wasm` file accepted.
    pub max_component_size: ByteSize,
    /// Log lines per second each plugin may write (stdout and stderr
    /// included); more are dropped and counted.
    pub log_lines_per_second: Count,
    /// Lines a plugin may write in a burst above that rate.
    pub log_burst: Count,
    /// The longest plugin log line kept; the rest is cut.
    pub log_line_max: ByteSize,
    /// Write a perf map of the compiled plugins (for profiling with `perf`).
    pub perf_map: bool,
    /// The most resident memory compiling one plugin may take (in a child
    /// process; more rejects the plugin).
    pub compile_memory: ByteSize,
    /// The longest compiling one plugin may take.
    #[serde(with = "crate::units::duration")]
    pub compile_timeout: Duration,
    /// Environment variables a manifest may grant (`[wasi] env`); none by
    /// default, and never the daemon's own `TODO_EVENTD_*`.
    pub allowed_env: Vec<String>,
    /// Directories under which a manifest may grant read-only access
    /// (`[wasi] dirs`); none by default.
    pub allowed_dirs: Vec<PathBuf>,
    /// Directories under which a manifest may grant read-write access;
    /// none by default. Never the plugins directory or the component
    /// cache, nor `/proc`, `/sys` or `/dev`.
    pub writable_dirs: Vec<PathBuf>,
    /// Topics a manifest's `[outputs]` may map to: names, or prefixes
    /// ending in `*` (`"reminders"`, `"team-a.*"`). Empty: any topic but
    /// the daemon's own and the broker's internal ones. With
    /// `kafka.create_topics` on, a mapped topic is created: this bounds
    /// what a plugin package's manifest can create and write to.
    pub allowed_topics: Vec<String>,
    /// The `todo-eventd` binary that compiles plugins in a child process
    /// (set by the binary itself, not read from the file); `None`
    /// compiles in this process.
    #[serde(skip)]
    pub compiler_program: Option<PathBuf>,
}

impl Default for SandboxSection {
    fn default() -> Self {
        let log = LogPolicy::default();
        Self {
            cache_dir: None,
            default_limits: LimitSettings::default(),
            max_limits: LimitSettings::default(),
            max_instances: None,
            max_component_size: ByteSize::mib(64),
            log_lines_per_second: Count(u64::from(log.lines_per_second)),
            log_burst: Count(u64::from(log.burst)),
            log_line_max: log.max_line,
            perf_map: false,
            compile_memory: ByteSize::mib(1024),
            compile_timeout: Duration::from_secs(120),
            allowed_env: Vec::new(),
            allowed_dirs: Vec::new(),
            writable_dirs: Vec::new(),
            allowed_topics: Vec::new(),
            compiler_program: None,
        }
    }
}

impl SandboxSection {
    /// The limits for what a manifest leaves out, and the most it may ask.
    pub fn limits(&self) -> (Limits, Limits) {
        (
            Limits::DEFAULT.merge(&self.default_limits),
            Limits::MAX.merge(&self.max_limits),
        )
    }
}

/// `[pipeline]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Records buffered per partition between the consumer and its worker.
    pub queue_capacity: usize,
    /// Input records per partition handled but not yet acknowledged by the
    /// broker; intake pauses beyond this.
    pub max_in_flight: usize,
    /// Bytes per partition (inputs and what they produced) not yet
    /// acknowledged; intake pauses beyond this.
    pub max_in_flight_bytes: ByteSize,
    /// The largest input record decoded (its value and headers). A larger
    /// one is dead-lettered (stage `decode`) before any plugin sees it, so
    /// that one record cannot make a plugin run out of memory or emit past
    /// `message.max.bytes` — failures that would count against the plugin.
    /// The default leaves room for an output holding two copies of a task
    /// (the audit plugin's before and after) under the default 1 MB.
    pub max_event_bytes: ByteSize,
    /// How long a graceful shutdown (or a revoked partition's drain) may
    /// take before it gives up waiting.
    #[serde(with = "crate::units::duration")]
    pub shutdown_timeout: Duration,
    /// How long one attempt to restore a partition's state from the
    /// changelog may go without reading a record (failed attempts are
    /// retried).
    #[serde(with = "crate::units::duration")]
    pub restore_timeout: Duration,
    /// Partitions reading the changelog to restore their state at once.
    /// Each read is a consumer of its own, with its own connections,
    /// thread and fetch buffers (up to `fetch.max.bytes`, 64 MiB by
    /// default): a member assigned many partitions would otherwise hold
    /// them all at once. The others wait their turn, not ready.
    pub max_concurrent_restores: usize,
    /// How often stored offsets are committed.
    #[serde(with = "crate::units::duration")]
    pub commit_interval: Duration,
    /// How long state changes are held to coalesce — only the latest value
    /// of a key is written — before they go to the changelog. Input
    /// offsets are stored only once their changes are written; `0s` writes
    /// them as soon as the previous write is acknowledged.
    #[serde(with = "crate::units::duration")]
    pub changelog_flush_interval: Duration,
    /// A partition whose state has not changed for this long writes what it
    /// holds without waiting out `changelog_flush_interval` (nothing is left
    /// to coalesce with; the offsets behind a burst are stored sooner). At
    /// or above the flush interval, changes are always held for all of it.
    #[serde(with = "crate::units::duration")]
    pub changelog_flush_idle: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            max_in_flight: 512,
            max_in_flight_bytes: ByteSize::mib(32),
            max_event_bytes: ByteSize::kib(256),
            shutdown_timeout: Duration::from_secs(30),
            restore_timeout: Duration::from_secs(300),
            max_concurrent_restores: 4,
            commit_interval: Duration::from_secs(1),
            changelog_flush_interval: Duration::from_secs(1),
            changelog_flush_idle: Duration::from_millis(50),
        }
    }
}

fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(list) => list,
        ListOrCsv::Csv(csv) => csv.split(',').map(|t| t.trim().to_owned()).collect(),
    })
}

/// A configuration problem, naming the field (and file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid for this schema.
    #[error("{}: {message}", file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// An environment variable or `--set` flag is not valid.
    #[error("{origin} ({key}): {message}")]
    Override {
        /// The variable or flag, e.g. `TODO_EVENTD_KAFKA_PARTITIONS`.
        origin: String,
        /// The dotted key it sets.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A limit is out of its bounds (the message names the key).
    #[error("{0}")]
    Limits(String),
    /// A value is out of range.
    #[error("{field}: {reason}")]
    Invalid {
        /// The dotted key, e.g. `kafka.partitions`.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// One `section.key = value` from the environment or the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Where it came from, for errors (`TODO_EVENTD_…` or `--set`).
    pub origin: String,
    /// The dotted key: `section.key`, or `kafka.properties.NAME`.
    pub key: String,
    /// The value as written.
    pub value: String,
}

impl Override {
    /// Parses a `--set section.key=value` argument.
    pub fn from_flag(arg: &str) -> Result<Self, String> {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("`{arg}` is not KEY=VALUE (e.g. kafka.group_id=orders)"))?;
        Ok(Self {
            origin: format!("--set {key}"),
            key: key.trim().to_owned(),
            value: value.to_owned(),
        })
    }

    /// The overrides among environment variables: `TODO_EVENTD_<SECTION>_<KEY>`
    /// for a known section, and `TODO_EVENTD_KAFKA_PROPERTY_<NAME>`.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Self> {
        let mut overrides: Vec<Self> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix("TODO_EVENTD_")?.to_ascii_lowercase();
                let key = if let Some(property) = rest.strip_prefix("kafka_property_file_") {
                    format!("kafka.property_files.{}", property.replace('_', "."))
                } else if let Some(property) = rest.strip_prefix("kafka_property_") {
                    format!("kafka.properties.{}", property.replace('_', "."))
                } else {
                    let (section, key) = SECTIONS
                        .iter()
                        .find_map(|s| Some((*s, rest.strip_prefix(s)?.strip_prefix('_')?)))?;
                    match TABLES
                        .iter()
                        .find_map(|t| Some((*t, key.strip_prefix(t)?.strip_prefix('_')?)))
                    {
                        Some((table, key)) => format!("{section}.{table}.{key}"),
                        None => format!("{section}.{key}"),
                    }
                };
                Some(Self {
                    origin: name,
                    key,
                    value,
                })
            })
            .collect();
        overrides.sort_by(|a, b| a.origin.cmp(&b.origin));
        overrides
    }

    /// The value read as TOML (`8`, `true`, `["a", "b"]`, `"quoted"`), or
    /// as the text itself when it is not TOML (`orders`, `64MiB`).
    fn value(&self) -> toml::Value {
        toml::from_str::<toml::Table>(&format!("v = {}", self.value))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(self.value.clone()))
    }

    /// Sets the value in `table` (as text whatever it looks like, with
    /// `as_text`). Returns an error for a key that is not
    /// `section.key[.name]`.
    fn apply(&self, table: &mut toml::Table, as_text: bool) -> Result<(), String> {
        let mut parts = self.key.splitn(3, '.');
        let (Some(section), Some(key)) = (parts.next(), parts.next()) else {
            return Err("expected SECTION.KEY, e.g. kafka.group_id".into());
        };
        let value = if as_text {
            toml::Value::String(self.value.clone())
        } else {
            self.value()
        };
        let section = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section) = section else {
            return Err("is not a section".into());
        };
        match parts.next() {
            None => {
                section.insert(key.to_owned(), value);
            }
            Some(name) => {
                let sub = section
                    .entry(key)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(sub) = sub else {
                    return Err(format!("{key} is not a table"));
                };
                // librdkafka properties are strings, taken as given (a
                // password `0x1F` read as TOML would become `31`); only
                // a quoted one is unquoted.
                let value = match value {
                    toml::Value::String(s) => s,
                    _ => self.value.clone(),
                };
                sub.insert(name.to_owned(), toml::Value::String(value));
            }
        }
        Ok(())
    }
}

/// A parse error of the configuration `text`: toml's own text, which
/// quotes the offending line, unless that line sets a secret-looking key
/// (a password with a bad escape, say): then only where and what.
fn parse_message(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        return error.to_string().trim_end().to_owned();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |at| at + 1);
    let line = text[line_start..].lines().next().unwrap_or_default();
    let key = line.split('=').next().unwrap_or_default();
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    if !is_secret_name(key) {
        return error.to_string().trim_end().to_owned();
    }
    let number = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    format!(
        "TOML parse error at line {number}, column {column} (a secret's line, not shown): {}",
        error.message().trim_end()
    )
}

impl Config {
    /// Reads a configuration file.
    pub fn from_file(file: &Path) -> Result<Self, ConfigError> {
        Self::load(Some(file), &[])
    }

    /// Reads the file (if any) and applies `overrides` in order; the error
    /// names the file or the override at fault. Not yet validated.
    pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<Self, ConfigError> {
        let mut config = Self::load_settings(file, overrides)?;
        config.kafka.read_property_files()?;
        Ok(config)
    }

    /// As [`load`](Self::load), without reading `kafka.property_files`:
    /// for the commands that judge plugins by the configuration and need no
    /// secret (which the user running them may not be allowed to read).
    pub fn load_settings(file: Option<&Path>, overrides: &[Override]) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(file) => {
                let text = crate::files::read_text_capped(file, MAX_CONFIG_FILE_BYTES).map_err(
                    |source| ConfigError::Read {
                        file: file.to_owned(),
                        source,
                    },
                )?;
                let parse_error = |e: toml::de::Error| ConfigError::Parse {
                    file: file.to_owned(),
                    message: parse_message(&text, &e),
                };
                // Parsed from the text first, for errors with line and key.
                toml::from_str::<Self>(&text).map_err(parse_error)?;
                toml::from_str::<toml::Table>(&text).map_err(parse_error)?
            }
            None => toml::Table::new(),
        };
        let parse = |table: &toml::Table| toml::Value::Table(table.clone()).try_into::<Self>();
        for o in overrides {
            let error = |message: String| ConfigError::Override {
                origin: o.origin.clone(),
                key: o.key.clone(),
                // Never echo a secret-looking value, even misplaced.
                message: if is_secret_name(&o.key) && !o.value.is_empty() {
                    message.replace(o.value.as_str(), "***")
                } else {
                    message
                },
            };
            let before = table.clone();
            o.apply(&mut table, false).map_err(error)?;
            // Check after each one, so the error names the override at fault.
            if let Err(e) = parse(&table) {
                // A value that reads as a number or a boolean may be
                // meant as text: `TODO_EVENTD_KAFKA_GROUP_ID=12345`.
                let mut as_text = before;
                let retried = !o.value().is_str()
                    && o.apply(&mut as_text, true).is_ok()
                    && parse(&as_text).is_ok();
                if !retried {
                    return Err(error(e.to_string().trim_end().to_owned()));
                }
                table = as_text;
            }
        }
        parse(&table).map_err(|e| ConfigError::Parse {
            file: file.map(ToOwned::to_owned).unwrap_or_default(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// The sandbox settings this configuration asks for, caching compiled
    /// components in `sandbox.cache_dir` or else `default_cache`.
    pub fn sandbox_config(&self, default_cache: Option<PathBuf>) -> SandboxConfig {
        let section = &self.sandbox;
        let (default_limits, max_limits) = section.limits();
        let cache_dir = section.cache_dir.clone().or(default_cache);
        let protected = [
            (self.plugins.dir.clone(), "plugins.dir"),
            (cache_dir.clone(), "sandbox.cache_dir"),
        ];
        let mut sandbox = SandboxConfig {
            grants: GrantPolicy {
                env: section.allowed_env.clone(),
                readable: section.allowed_dirs.clone(),
                writable: section.writable_dirs.clone(),
                protected: protected
                    .into_iter()
                    .filter_map(|(dir, setting)| Some((dir?, setting)))
                    .collect(),
            },
            cache_dir,
            default_limits,
            max_limits,
            max_component_bytes: section.max_component_size,
            max_record_bytes: self.kafka.max_record_bytes(),
            log: LogPolicy {
                lines_per_second: u32::try_from(section.log_lines_per_second.0).unwrap_or(u32::MAX),
                burst: u32::try_from(section.log_burst.0).unwrap_or(u32::MAX),
                max_line: section.log_line_max,
            },
            perf_map: section.perf_map,
            compiler: section.compiler_program.clone().map(|program| Compiler {
                program,
                memory: section.compile_memory,
                timeout: section.compile_timeout,
            }),
            input_topics: self.kafka.input_topics.clone(),
            allowed_topics: section.allowed_topics.clone(),
            reserved_topics: vec![
                (self.kafka.changelog_topic(), "kafka.changelog_topic"),
                (
                    self.kafka.dead_letter_topic.clone(),
                    "kafka.dead_letter_topic",
                ),
            ],
            ..SandboxConfig::default()
        };
        if let Some(max) = section.max_instances {
            sandbox.max_instances = max;
        }
        sandbox
    }

    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        let k = &self.kafka;
        if k.brokers.as_deref().is_some_and(|b| b.trim().is_empty()) {
            return invalid(
                "kafka.brokers",
                "is empty (leave it out for the embedded broker)",
            );
        }
        if k.group_id.trim().is_empty() {
            return invalid("kafka.group_id", "is empty");
        }
        if k.input_topics.is_empty() || k.input_topics.iter().any(|t| t.trim().is_empty()) {
            return invalid(
                "kafka.input_topics",
                "needs at least one non-empty topic name",
            );
        }
        if ["message.timeout.ms", "delivery.timeout.ms"]
            .iter()
            .any(|name| {
                k.properties
                    .get(*name)
                    .is_some_and(|v| v.trim().parse::<u64>() == Ok(0))
            })
        {
            // librdkafka would never report a send failed, so a partition
            // whose output cannot be delivered would never be reported.
            return invalid(
                "kafka.properties.message.timeout.ms",
                "0 (wait forever) would hide a stalled partition; give it a bound",
            );
        }
        // Properties the daemon's guarantees rest on, which an operator's
        // value (every client takes them) would quietly undo.
        let property = |name: &str| {
            k.properties
                .get(name)
                .map(|v| v.trim().to_ascii_lowercase())
        };
        if k.properties.contains_key("group.id") {
            return invalid(
                "kafka.properties.group.id",
                "is set by kafka.group_id, which also names the changelog topic: set that instead",
            );
        }
        if property("enable.auto.offset.store")
            .is_some_and(|v| !matches!(v.as_str(), "false" | "f" | "0"))
        {
            // librdkafka would store each offset as the record is handed
            // over, and commit records no plugin has run on yet.
            return invalid(
                "kafka.properties.enable.auto.offset.store",
                "must stay false: offsets are stored once a record's outputs are acknowledged, and true would commit records before their plugins ran",
            );
        }
        if property("statistics.interval.ms").is_some_and(|v| v.parse::<u64>() == Ok(0)) {
            return invalid(
                "kafka.properties.statistics.interval.ms",
                "0 turns off the statistics that readiness (a broker down) and consumer lag are read from; give it an interval",
            );
        }
        if property("group.protocol").is_some_and(|v| v != "classic") {
            // librdkafka refuses a KIP-848 consumer with the session timeout
            // and assignment strategy the daemon sets.
            return invalid(
                "kafka.properties.group.protocol",
                "only the classic protocol is supported; leave it out",
            );
        }
        if k.input_topics.iter().any(|t| t.starts_with('^')) {
            // librdkafka would subscribe by pattern, and the daemon could
            // no longer tell which topics a plugin output feeds back to.
            return invalid(
                "kafka.input_topics",
                "takes topic names, not patterns (^…): list the topics",
            );
        }
        if k.dead_letter_topic.trim().is_empty() {
            return invalid("kafka.dead_letter_topic", "is empty");
        }
        if k.input_topics.contains(&k.dead_letter_topic) {
            return invalid(
                "kafka.dead_letter_topic",
                "must not be one of the input topics",
            );
        }
        // The changelog is compacted (created so when missing): an input
        // topic there would lose unread events to compaction, and the
        // dead letters would be read back as state.
        let changelog = k.changelog_topic();
        if changelog.trim().is_empty() {
            return invalid("kafka.changelog_topic", "is empty");
        }
        if k.input_topics.contains(&changelog) || changelog == k.dead_letter_topic {
            return invalid(
                "kafka.changelog_topic",
                "must be neither an input topic nor the dead-letter topic",
            );
        }
        // Kafka's rule for every topic named here, so a bad name fails
        // the load, not topic creation or the subscription later.
        let derived = if k.changelog_topic.is_none() {
            " (derived from kafka.group_id: set kafka.changelog_topic)"
        } else {
            ""
        };
        let named = k
            .input_topics
            .iter()
            .map(|topic| ("kafka.input_topics", topic.as_str(), ""))
            .chain([
                ("kafka.dead_letter_topic", k.dead_letter_topic.as_str(), ""),
                ("kafka.changelog_topic", changelog.as_str(), derived),
            ]);
        for (field, topic, note) in named {
            if let Some(reason) = crate::kafka::topic_name_error(topic) {
                return invalid(field, &format!("{reason}{note}"));
            }
        }
        // The broker's own topics (`__consumer_offsets`, …) are never
        // written to.
        for (field, topic) in [
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
            ("kafka.changelog_topic", &changelog),
        ] {
            if topic.starts_with("__") {
                return invalid(field, "starts with __, which names the broker's own topics");
            }
        }
        let revoke = self.pipeline.shutdown_timeout + k.max_delivery_wait() + HAND_BACK_MARGIN;
        if revoke >= k.rebalance_timeout() {
            // A revoked partition may take that long to be handed back (its
            // commit and unassign included); past the rebalance timeout the
            // group throws the member out, and every partition it has is
            // lost.
            return Err(ConfigError::Invalid {
                field: "pipeline.shutdown_timeout",
                reason: format!(
                    "{} s, plus {} s waiting for the producer (message.timeout.ms + request.timeout.ms + 5 s), \
                     must stay 10 s below the group's rebalance timeout (kafka.properties.max.poll.interval.ms, {} s)",
                    self.pipeline.shutdown_timeout.as_secs(),
                    k.max_delivery_wait().as_secs(),
                    k.rebalance_timeout().as_secs()
                ),
            });
        }
        if k.partitions < 1 {
            return invalid("kafka.partitions", "must be at least 1");
        }
        if k.replication_factor < 1 {
            return invalid("kafka.replication_factor", "must be at least 1");
        }
        let (defaults, max) = self.sandbox.limits();
        max.check(&Limits::MAX, "sandbox.max_limits")
            .and_then(|()| defaults.check(&max, "sandbox.default_limits"))
            .map_err(ConfigError::Limits)?;
        if self
            .sandbox
            .max_instances
            .is_some_and(|n| !(1..=MAX_INSTANCES).contains(&n))
        {
            // Each instance's memories are address space the pool
            // reserves up front; far more would fail in the engine.
            return invalid(
                "sandbox.max_instances",
                &format!("must be between 1 and {MAX_INSTANCES}"),
            );
        }
        if self.sandbox.compile_memory < ByteSize::mib(64) {
            return invalid("sandbox.compile_memory", "must be at least 64MiB");
        }
        if self.sandbox.compile_timeout < Duration::from_secs(1) {
            return invalid("sandbox.compile_timeout", "must be at least 1s");
        }
        if self.sandbox.log_lines_per_second.0 == 0 || self.sandbox.log_burst.0 == 0 {
            return invalid(
                "sandbox.log_lines_per_second",
                "and sandbox.log_burst must be at least 1",
            );
        }
        let misplaced_star = |pattern: &String| {
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            name.contains('*') || pattern.is_empty()
        };
        if self.sandbox.allowed_topics.iter().any(misplaced_star) {
            return invalid(
                "sandbox.allowed_topics",
                "takes topic names, or prefixes ending in a single '*'",
            );
        }
        let p = &self.pipeline;
        if !(1..=MAX_QUEUE_CAPACITY).contains(&p.queue_capacity) {
            return invalid(
                "pipeline.queue_capacity",
                &format!("must be between 1 and {MAX_QUEUE_CAPACITY}"),
            );
        }
        if p.max_in_flight == 0 {
            return invalid("pipeline.max_in_flight", "must be at least 1");
        }
        if !(1..=MAX_CONCURRENT_RESTORES).contains(&p.max_concurrent_restores) {
            return invalid(
                "pipeline.max_concurrent_restores",
                &format!("must be between 1 and {MAX_CONCURRENT_RESTORES}"),
            );
        }
        if p.commit_interval.is_zero() {
            return invalid("pipeline.commit_interval", "must be more than zero");
        }
        // A restore waits this long for the first fetch answer too: less
        // than a second could fail every attempt on a healthy broker.
        if p.restore_timeout < Duration::from_secs(1) {
            return invalid("pipeline.restore_timeout", "must be at least 1s");
        }
        if p.max_in_flight_bytes.bytes() < (1 << 20) {
            return invalid("pipeline.max_in_flight_bytes", "must be at least 1MiB");
        }
        if !(1 << 10..=1 << 30).contains(&p.max_event_bytes.bytes()) {
            return invalid("pipeline.max_event_bytes", "must be between 1KiB and 1GiB");
        }
        let plugins = &self.plugins;
        if plugins.max_hops > crate::dispatch::MAX_HOPS {
            return invalid(
                "plugins.max_hops",
                &format!("must be at most {}", crate::dispatch::MAX_HOPS),
            );
        }
        if plugins.forget.iter().any(String::is_empty) {
            return invalid("plugins.forget", "lists an empty plugin name");
        }
        // A timer re-armed for the instant it fired would not count as
        // re-armed too soon: the storm guard would never see it.
        if plugins.min_timer_rearm < Duration::from_millis(1) {
            return invalid("plugins.min_timer_rearm", "must be at least 1ms");
        }
        if plugins.quarantine_after > 0 && plugins.quarantine_backoff.is_zero() {
            return invalid("plugins.quarantine_backoff", "must be more than zero");
        }
        if plugins.quarantine_max_backoff < plugins.quarantine_backoff {
            return invalid(
                "plugins.quarantine_max_backoff",
                "must be at least plugins.quarantine_backoff",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config: Config = toml::from_str("").unwrap();
        assert_eq!(config, Config::default());
        config.validate().unwrap();
        assert_eq!(config.kafka.input_topics, ["task-events"]);
        assert!(config.kafka.brokers.is_none(), "embedded broker by default");
    }

    /// How long a given-up partition waits for the producer follows the
    /// producer's own timeouts, by either name of the message timeout.
    #[test]
    fn the_delivery_wait_follows_the_producer_timeouts() {
        let mut kafka = KafkaConfig::default();
        assert_eq!(kafka.max_delivery_wait(), Duration::from_secs(65));
        kafka
            .properties
            .insert("delivery.timeout.ms".into(), "5000".into());
        assert_eq!(kafka.max_delivery_wait(), Duration::from_secs(40));
        kafka
            .properties
            .insert("message.timeout.ms".into(), "1000".into());
        kafka
            .properties
            .insert("request.timeout.ms".into(), "2000".into());
        assert_eq!(kafka.max_delivery_wait(), Duration::from_secs(8));
    }

    /// A revoke that could outlast the rebalance timeout (here with
    /// librdkafka's own 300 s message timeout) is refused, naming the
    /// setting.
    #[test]
    fn a_revoke_must_fit_in_the_rebalance_timeout() {
        let mut config = Config::default();
        config
            .kafka
            .properties
            .insert("message.timeout.ms".into(), "300000".into());
        let err = config.validate().expect_err("refused").to_string();
        assert!(
            err.contains("pipeline.shutdown_timeout")
                && err.contains("max.poll.interval.ms, 300 s"),
            "{err}"
        );
        config
            .kafka
            .properties
            .insert("max.poll.interval.ms".into(), "600000".into());
        config.validate().expect("fits a longer rebalance timeout");
    }

    #[test]
    fn full_file() {
        let config: Config = toml::from_str(
            r#"
            [kafka]
            brokers = "b1:9092,b2:9092"
            group_id = "g"
            input_topics = ["a", "b"]
            [kafka.properties]
            "security.protocol" = "SASL_SSL"
            [plugins]
            dir = "/srv/plugins"
            [sandbox.default_limits]
            memory = "32MiB"
            call_timeout = "50ms"
            [pipeline]
            shutdown_timeout = "5s"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(config.pipeline.shutdown_timeout, Duration::from_secs(5));
    }

    #[test]
    fn overrides_from_env_and_flags() {
        let env = Override::from_env([
            ("TODO_EVENTD_KAFKA_GROUP_ID".to_owned(), "orders".to_owned()),
            (
                "TODO_EVENTD_KAFKA_INPUT_TOPICS".to_owned(),
                "a, b".to_owned(),
            ),
            (
                "TODO_EVENTD_KAFKA_PROPERTY_SASL_PASSWORD".to_owned(),
                "s3cret".to_owned(),
            ),
            (
                "TODO_EVENTD_PLUGINS_QUARANTINE_AFTER".to_owned(),
                "3".to_owned(),
            ),
            (
                "TODO_EVENTD_SANDBOX_DEFAULT_LIMITS_MEMORY".to_owned(),
                "16MiB".to_owned(),
            ),
            ("TODO_EVENTD_CACHE_DIR".to_owned(), "/tmp".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ]);
        assert_eq!(env.len(), 5, "{env:?}");
        let mut overrides = env;
        overrides.push(Override::from_flag("admin.addr=0.0.0.0:9000").unwrap());
        overrides.push(Override::from_flag("kafka.group_id=billing").unwrap());
        let config = Config::load(None, &overrides).unwrap();
        config.validate().unwrap();
        assert_eq!(config.kafka.group_id, "billing", "later overrides win");
        assert_eq!(config.kafka.input_topics, ["a", "b"]);
        assert_eq!(config.kafka.properties["sasl.password"], "s3cret");
        assert_eq!(config.plugins.quarantine_after, 3);
        assert_eq!(config.sandbox.limits().0.memory, ByteSize::mib(16));
        assert_eq!(config.admin.addr.port(), 9000);
    }

    /// librdkafka properties are strings: an override is taken as given,
    /// not read as TOML first (`0x1F` became `31`, `1.50` `1.5`: a
    /// password silently changed, and redacted wherever it is shown).
    #[test]
    fn property_overrides_are_taken_as_given() {
        let overrides: Vec<Override> = [
            "kafka.properties.sasl.password=0x1F",
            "kafka.properties.sasl.username=1_000",
            "kafka.properties.socket.timeout.ms=1.50",
            "kafka.properties.client.id=\"quoted\"",
        ]
        .into_iter()
        .map(|flag| Override::from_flag(flag).unwrap())
        .collect();
        let config = Config::load(None, &overrides).unwrap();
        let properties = &config.kafka.properties;
        assert_eq!(properties["sasl.password"], "0x1F");
        assert_eq!(properties["sasl.username"], "1_000");
        assert_eq!(properties["socket.timeout.ms"], "1.50");
        assert_eq!(properties["client.id"], "quoted");
    }

    /// A value for a text setting that reads as a number or a boolean is
    /// taken as the text it is; numbers stay numbers where one is wanted.
    #[test]
    fn text_overrides_may_look_like_numbers() {
        let mut overrides = Override::from_env([
            ("TODO_EVENTD_KAFKA_GROUP_ID".to_owned(), "12345".to_owned()),
            ("TODO_EVENTD_KAFKA_PARTITIONS".to_owned(), "12".to_owned()),
        ]);
        for flag in ["kafka.dead_letter_topic=1_000", "plugins.dir=true"] {
            overrides.push(Override::from_flag(flag).unwrap());
        }
        let config = Config::load(None, &overrides).unwrap();
        assert_eq!(config.kafka.group_id, "12345");
        assert_eq!(config.kafka.partitions, 12);
        assert_eq!(config.kafka.dead_letter_topic, "1_000");
        assert_eq!(config.plugins.dir, Some(PathBuf::from("true")));
        let many =
            Override::from_env([("TODO_EVENTD_KAFKA_PARTITIONS".to_owned(), "many".to_owned())]);
        let err = Config::load(None, &many).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "TODO_EVENTD_KAFKA_PARTITIONS (kafka.partitions): invalid type: string \"many\""
            ),
            "{err}"
        );
        let list = [Override::from_flag("kafka.input_topics=2026").unwrap()];
        let config = Config::load(None, &list).unwrap();
        assert_eq!(config.kafka.input_topics, ["2026"]);
    }

    /// toml's parse errors quote the offending line: not when it sets a
    /// secret (a password with a bad escape would be printed whole).
    #[test]
    fn a_parse_error_does_not_show_a_secrets_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("todo-eventd.toml");
        std::fs::write(
            &file,
            "[kafka.properties]\n\"sasl.password\" = \"hunter\\q2\"\n",
        )
        .unwrap();
        let err = Config::from_file(&file).unwrap_err().to_string();
        assert!(!err.contains("hunter"), "{err}");
        assert!(
            err.contains("line 2, column 27 (a secret's line, not shown)"),
            "{err}"
        );
        // Any other line is quoted as toml quotes it.
        std::fs::write(&file, "[kafka]\ngroup_id = \"orders\\q\"\n").unwrap();
        let err = Config::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("group_id = \"orders\\q\""), "{err}");
    }

    /// A configuration file is read up to 1 MiB: an endless one
    /// (`/dev/zero`) or a large file named by mistake is refused naming
    /// the file, not read into memory whole. A pipe may still be one.
    #[test]
    fn an_endless_or_huge_config_file_is_refused_by_name() {
        for endless in [Path::new("/dev/zero"), Path::new("/dev/urandom")] {
            let err = Config::from_file(endless).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "{}: refused: larger than the limit of 1MiB",
                    endless.display()
                )
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("todo-eventd.toml");
        let mut text = "[kafka]\ngroup_id = \"orders\"\n".to_owned();
        text.push_str(&"# padding\n".repeat(200_000));
        std::fs::write(&file, &text).unwrap();
        let err = Config::from_file(&file).unwrap_err().to_string();
        assert!(err.starts_with(&file.display().to_string()), "{err}");
        assert!(
            err.ends_with("refused: larger than the limit of 1MiB"),
            "{err}"
        );
        text.truncate(100_000);
        std::fs::write(&file, &text).unwrap();
        assert_eq!(Config::from_file(&file).unwrap().kafka.group_id, "orders");
    }

    #[test]
    fn secrets_come_from_files_and_are_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "TOPSECRET-0\n").unwrap();
        let overrides = Override::from_env([
            (
                "TODO_EVENTD_KAFKA_PROPERTY_FILE_SASL_PASSWORD".to_owned(),
                file.display().to_string(),
            ),
            (
                "TODO_EVENTD_KAFKA_PROPERTY_SSL_KEY_PASSWORD".to_owned(),
                "TOPSECRET-2".to_owned(),
            ),
        ]);
        let mut overrides = overrides;
        overrides.push(Override::from_flag("kafka.properties.sasl.passwrod=TOPSECRET-1").unwrap());
        let config = Config::load(None, &overrides).unwrap();
        assert_eq!(config.kafka.properties["sasl.password"], "TOPSECRET-0");
        let shown = format!("{config:?}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");
        assert!(shown.contains("\"sasl.passwrod\": \"***\""), "{shown}");
        assert_eq!(
            config
                .kafka
                .redact("bad value TOPSECRET-1 or TOPSECRET-2 for x"),
            "bad value *** or *** for x"
        );
        let missing = Override::from_env([(
            "TODO_EVENTD_KAFKA_PROPERTY_FILE_SASL_PASSWORD".to_owned(),
            "/nonexistent/secret".to_owned(),
        )]);
        let err = Config::load(None, &missing).unwrap_err().to_string();
        assert!(
            err.starts_with("kafka.property_files: sasl.password: /nonexistent/secret: "),
            "{err}"
        );
        // A FIFO would block startup and /dev/zero would never end: both
        // are refused by what they are, without being read.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        for (file, what) in [
            (fifo.as_path(), "a FIFO (named pipe)"),
            (Path::new("/dev/zero"), "a character device"),
        ] {
            let secret = Override::from_env([(
                "TODO_EVENTD_KAFKA_PROPERTY_FILE_SASL_PASSWORD".to_owned(),
                file.display().to_string(),
            )]);
            let err = Config::load(None, &secret).unwrap_err().to_string();
            let expected = format!(
                "kafka.property_files: sasl.password: {}: refused: {what}, not a regular file",
                file.display()
            );
            assert!(err.contains(&expected), "{err}");
        }
        let large = dir.path().join("large");
        std::fs::write(&large, vec![b'x'; 65 << 10]).unwrap();
        let secret = Override::from_env([(
            "TODO_EVENTD_KAFKA_PROPERTY_FILE_SASL_PASSWORD".to_owned(),
            large.display().to_string(),
        )]);
        let err = Config::load(None, &secret).unwrap_err().to_string();
        assert!(err.contains("larger than the limit of 64KiB"), "{err}");
        // A secret-looking key given a value of the wrong type.
        let err = Config::load(
            None,
            &[Override::from_flag("kafka.group_id_token=TOPSECRET-3").unwrap()],
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("TOPSECRET"), "{err}");
    }

    #[test]
    fn bad_overrides_name_their_origin() {
        let cases = [
            (
                "TODO_EVENTD_KAFKA_BROKERZ",
                "x",
                "TODO_EVENTD_KAFKA_BROKERZ (kafka.brokerz): unknown field `brokerz`",
            ),
            (
                "TODO_EVENTD_KAFKA_PARTITIONS",
                "many",
                "TODO_EVENTD_KAFKA_PARTITIONS (kafka.partitions): invalid type",
            ),
            (
                "TODO_EVENTD_ADMIN_ADDR",
                "localhost",
                "TODO_EVENTD_ADMIN_ADDR (admin.addr): invalid socket address",
            ),
        ];
        for (name, value, want) in cases {
            let overrides = Override::from_env([(name.to_owned(), value.to_owned())]);
            let err = Config::load(None, &overrides).unwrap_err().to_string();
            assert!(err.starts_with(want), "{name}: {err}");
        }
        assert!(Override::from_flag("kafka.group_id").is_err());
    }

    #[test]
    fn example_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for file in [
            "deploy/config.example.toml",
            "deploy/config.mtls.example.toml",
            "deploy/kubernetes/todo-eventd.toml",
        ] {
            // Parsed as written (the secret files they name exist only
            // where they are deployed).
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let config: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            config.validate().unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    #[test]
    fn errors_name_the_field() {
        // What a default configuration with one change is refused for.
        let refused = |change: fn(&mut Config)| {
            let mut config = Config::default();
            change(&mut config);
            config.validate().unwrap_err().to_string()
        };
        let err = toml::from_str::<Config>("[kafka]\nbrokerz = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `brokerz`"), "{err}");
        assert_eq!(
            refused(|c| c.kafka.partitions = 0),
            "kafka.partitions: must be at least 1"
        );
        assert_eq!(
            refused(|c| {
                c.kafka
                    .properties
                    .insert("message.timeout.ms".into(), "0".into());
            }),
            "kafka.properties.message.timeout.ms: 0 (wait forever) would hide a stalled partition; give it a bound"
        );
        let with_property = |name: &str, value: &str| {
            let mut config = Config::default();
            config.kafka.properties.insert(name.into(), value.into());
            config.validate().map_err(|err| err.to_string())
        };
        for (name, value, refused) in [
            ("group.id", "other", true),
            ("enable.auto.offset.store", "true", true),
            ("enable.auto.offset.store", " True", true),
            ("enable.auto.offset.store", "false", false),
            ("enable.auto.offset.store", "F", false),
            ("statistics.interval.ms", "0", true),
            ("statistics.interval.ms", "1000", false),
            ("group.protocol", "consumer", true),
            ("group.protocol", "classic", false),
        ] {
            let checked = with_property(name, value);
            match checked {
                Err(err) if refused => {
                    assert!(
                        err.starts_with(&format!("kafka.properties.{name}: ")),
                        "{err}"
                    );
                }
                Ok(()) if !refused => {}
                other => panic!("{name}={value}: {other:?}"),
            }
        }
        assert_eq!(
            refused(|c| c.kafka.input_topics = vec!["^task-.*".into()]),
            "kafka.input_topics: takes topic names, not patterns (^…): list the topics"
        );
        assert_eq!(
            refused(|c| c.plugins.max_hops = 65),
            "plugins.max_hops: must be at most 64"
        );
        assert_eq!(
            refused(|c| c.kafka.dead_letter_topic = "task-events".into()),
            "kafka.dead_letter_topic: must not be one of the input topics"
        );
        assert_eq!(
            refused(|c| c.pipeline.max_event_bytes = ByteSize(100)),
            "pipeline.max_event_bytes: must be between 1KiB and 1GiB"
        );
        assert_eq!(
            refused(|c| c.sandbox.allowed_topics = vec!["a*b".into()]),
            "sandbox.allowed_topics: takes topic names, or prefixes ending in a single '*'"
        );
        assert_eq!(
            refused(|c| c.plugins.forget = vec!["old".into(), String::new()]),
            "plugins.forget: lists an empty plugin name"
        );
        assert_eq!(
            refused(|c| c.pipeline.max_concurrent_restores = 0),
            "pipeline.max_concurrent_restores: must be between 1 and 64"
        );
        assert_eq!(
            refused(|c| c.pipeline.restore_timeout = Duration::ZERO),
            "pipeline.restore_timeout: must be at least 1s"
        );
        for topic in ["task-events", "task-events.dlq", " "] {
            let reason = if topic.trim().is_empty() {
                "is empty"
            } else {
                "must be neither an input topic nor the dead-letter topic"
            };
            let mut config = Config::default();
            config.kafka.changelog_topic = Some(topic.into());
            assert_eq!(
                config.validate().unwrap_err().to_string(),
                format!("kafka.changelog_topic: {reason}"),
                "{topic}"
            );
        }
        // Kafka's topic rule, for every topic the configuration names.
        let rule = "is not a Kafka topic name (1 to 249 letters, digits, '.', '_' or '-')";
        assert_eq!(
            refused(|c| c.kafka.input_topics = vec!["tasks".into(), "task events".into()]),
            format!("kafka.input_topics: \"task events\" {rule}")
        );
        assert_eq!(
            refused(|c| c.kafka.dead_letter_topic = "..".into()),
            format!("kafka.dead_letter_topic: \"..\" {rule}")
        );
        assert_eq!(
            refused(|c| c.kafka.changelog_topic = Some("t".repeat(250))),
            format!(
                "kafka.changelog_topic: \"{}… (250 bytes)\" {rule}",
                "t".repeat(64)
            )
        );
        assert_eq!(
            refused(|c| c.kafka.group_id = "billing/eu".into()),
            format!(
                "kafka.changelog_topic: \"billing/eu.plugin-state\" {rule} \
                 (derived from kafka.group_id: set kafka.changelog_topic)"
            )
        );
        let mut config = Config::default();
        config.kafka.group_id = "billing/eu".into();
        config.kafka.changelog_topic = Some("billing-eu.state".into());
        config.validate().unwrap();
        for (field, set) in [
            (
                "kafka.dead_letter_topic",
                (|c: &mut Config| c.kafka.dead_letter_topic = "__consumer_offsets".into())
                    as fn(&mut Config),
            ),
            ("kafka.changelog_topic", |c: &mut Config| {
                c.kafka.changelog_topic = Some("__transaction_state".into())
            }),
        ] {
            assert_eq!(
                refused(set),
                format!("{field}: starts with __, which names the broker's own topics")
            );
        }
        for n in [0, MAX_INSTANCES + 1] {
            let mut config = Config::default();
            config.sandbox.max_instances = Some(n);
            assert_eq!(
                config.validate().unwrap_err().to_string(),
                "sandbox.max_instances: must be between 1 and 10000"
            );
        }
        assert_eq!(
            refused(|c| c.plugins.min_timer_rearm = Duration::ZERO),
            "plugins.min_timer_rearm: must be at least 1ms"
        );
        assert_eq!(
            refused(|c| c.pipeline.queue_capacity = usize::MAX),
            "pipeline.queue_capacity: must be between 1 and 1000000"
        );
        // A duration too long to add anywhere is refused where it is read.
        let err =
            toml::from_str::<Config>("[pipeline]\nshutdown_timeout = \"18446744073709551615s\"")
                .unwrap_err()
                .to_string();
        assert!(err.contains("is longer than the 10 years"), "{err}");
        let config: Config =
            toml::from_str("[sandbox]\ncompile_memory = \"32MiB\"\ncompile_timeout = \"3s\"")
                .unwrap();
        assert_eq!(config.sandbox.compile_timeout, Duration::from_secs(3));
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "sandbox.compile_memory: must be at least 64MiB"
        );
        assert_eq!(
            refused(|c| c.sandbox.compile_timeout = Duration::from_millis(10)),
            "sandbox.compile_timeout: must be at least 1s"
        );
        // The program is the binary's to set, never the file's.
        let err =
            toml::from_str::<Config>("[sandbox]\ncompiler_program = \"/bin/sh\"").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `compiler_program`"),
            "{err}"
        );
    }
}
