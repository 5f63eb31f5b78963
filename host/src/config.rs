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
//!
//! [pipeline]
//! queue_capacity = 256
//! max_in_flight = 512
//! shutdown_timeout = "30s"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::plugin::manifest::{humantime_serde_opt, parse_bytes};

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
}

/// `[kafka]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated. Absent: start an embedded
    /// Kafka-protocol broker in the process.
    pub brokers: Option<String>,
    /// Consumer group id; run several daemons with the same id to share the
    /// partitions.
    pub group_id: String,
    /// Topics to consume task events from.
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
}

impl KafkaConfig {
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
        }
    }
}

/// `[plugins]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// The plugins directory. Absent: the bundled plugins.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

/// `[sandbox]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    /// Compiled-component cache directory.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Memory limit for plugins whose manifest sets none (e.g. `"64MiB"`).
    #[serde(default)]
    pub default_memory_limit: Option<String>,
    /// Call timeout for plugins whose manifest sets none (e.g. `"200ms"`).
    #[serde(default, with = "humantime_serde_opt")]
    pub default_call_timeout: Option<Duration>,
    /// Instances the pooling allocator holds at once.
    #[serde(default)]
    pub max_instances: Option<u32>,
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
    /// How long a graceful shutdown may take before it gives up waiting.
    #[serde(with = "humantime_serde_req")]
    pub shutdown_timeout: Duration,
    /// How long restoring one partition's state from the changelog may take.
    #[serde(with = "humantime_serde_req")]
    pub restore_timeout: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            max_in_flight: 512,
            shutdown_timeout: Duration::from_secs(30),
            restore_timeout: Duration::from_secs(300),
        }
    }
}

mod humantime_serde_req {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("\"{s}\" is not a duration (e.g. \"30s\"): {e}"))
        })
    }
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
    /// A value is out of range.
    #[error("{field}: {reason}")]
    Invalid {
        /// The dotted key, e.g. `kafka.partitions`.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl Config {
    /// Reads a configuration file.
    pub fn from_file(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
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
        if k.dead_letter_topic.trim().is_empty() {
            return invalid("kafka.dead_letter_topic", "is empty");
        }
        if k.input_topics.contains(&k.dead_letter_topic) {
            return invalid(
                "kafka.dead_letter_topic",
                "must not be one of the input topics",
            );
        }
        if k.partitions < 1 {
            return invalid("kafka.partitions", "must be at least 1");
        }
        if k.replication_factor < 1 {
            return invalid("kafka.replication_factor", "must be at least 1");
        }
        if let Some(limit) = &self.sandbox.default_memory_limit {
            parse_bytes(limit).map_err(|reason| ConfigError::Invalid {
                field: "sandbox.default_memory_limit",
                reason,
            })?;
        }
        if self
            .sandbox
            .default_call_timeout
            .is_some_and(|t| t.is_zero())
        {
            return invalid("sandbox.default_call_timeout", "must be more than zero");
        }
        if self.sandbox.max_instances == Some(0) {
            return invalid("sandbox.max_instances", "must be at least 1");
        }
        let p = &self.pipeline;
        if p.queue_capacity == 0 {
            return invalid("pipeline.queue_capacity", "must be at least 1");
        }
        if p.max_in_flight == 0 {
            return invalid("pipeline.max_in_flight", "must be at least 1");
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
            [sandbox]
            default_memory_limit = "32MiB"
            default_call_timeout = "50ms"
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
    fn errors_name_the_field() {
        let err = toml::from_str::<Config>("[kafka]\nbrokerz = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `brokerz`"), "{err}");
        let mut config = Config::default();
        config.kafka.partitions = 0;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "kafka.partitions: must be at least 1"
        );
        let mut config = Config::default();
        config.kafka.dead_letter_topic = "task-events".into();
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "kafka.dead_letter_topic: must not be one of the input topics"
        );
    }
}
