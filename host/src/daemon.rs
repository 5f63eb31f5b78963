//! Start-up: from a validated [`Config`] to a running [`Pipeline`] — the
//! sandbox, the plugins, the broker (external, or embedded when none is
//! configured) and its topics.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tracing::{info, warn};

use crate::config::Config;
use crate::kafka::{self, EmbeddedBroker};
use crate::pipeline::{Pipeline, Stats};
use crate::plugin::manifest::parse_bytes;
use crate::plugin::{self, Plugin, bundled};
use crate::sandbox::{Sandbox, SandboxConfig};

/// Builds the sandbox from `[sandbox]`.
pub fn sandbox(config: &Config, default_cache: Option<std::path::PathBuf>) -> Result<Arc<Sandbox>> {
    let section = &config.sandbox;
    let mut sandbox = SandboxConfig {
        cache_dir: section.cache_dir.clone().or(default_cache),
        ..SandboxConfig::default()
    };
    if let Some(limit) = &section.default_memory_limit {
        sandbox.default_memory_limit =
            parse_bytes(limit).map_err(|e| anyhow::anyhow!("sandbox.default_memory_limit: {e}"))?;
    }
    if let Some(timeout) = section.default_call_timeout {
        sandbox.default_call_timeout = timeout;
    }
    if let Some(max) = section.max_instances {
        sandbox.max_instances = max;
    }
    let sandbox = Sandbox::new(sandbox).map_err(anyhow::Error::from);
    Ok(Arc::new(sandbox.context("starting the wasm engine")?))
}

/// Loads the plugins directory (or the bundled plugins). A bad plugin is
/// logged and skipped; having no usable plugin at all is an error.
pub fn plugins(sandbox: &Arc<Sandbox>, config: &Config) -> Result<Vec<Arc<Plugin>>> {
    let report = match &config.plugins.dir {
        Some(dir) => plugin::load_dir(sandbox, dir)
            .with_context(|| format!("reading plugins directory {}", dir.display()))?,
        None => bundled::load(sandbox).context("loading the bundled plugins")?,
    };
    for err in &report.errors {
        warn!(file = %err.file().display(), error = %err, "Plugin rejected; the others keep running.");
    }
    for name in &report.disabled {
        info!(plugin = %name, "Plugin disabled by its manifest.");
    }
    for plugin in &report.plugins {
        info!(plugin = %plugin.name, hash = %plugin.short_hash(), "Plugin loaded.");
    }
    if report.plugins.is_empty() {
        bail!("no usable plugins; see the errors above");
    }
    Ok(report.plugins)
}

/// Every topic the daemon reads or writes.
pub fn topics(config: &Config, plugins: &[Arc<Plugin>]) -> BTreeSet<String> {
    let mut topics: BTreeSet<String> = config.kafka.input_topics.iter().cloned().collect();
    topics.insert(config.kafka.dead_letter_topic.clone());
    topics.insert(config.kafka.changelog_topic());
    for plugin in plugins {
        topics.extend(plugin.manifest.outputs.values().cloned());
    }
    topics
}

/// Runs the daemon until `shutdown` resolves. With no brokers configured,
/// an embedded broker is started first and its address logged.
pub async fn run(
    config: Config,
    plugins: Vec<Arc<Plugin>>,
    shutdown: impl Future<Output = ()>,
) -> Result<Arc<Stats>> {
    let topics = topics(&config, &plugins);
    let embedded;
    let brokers = match &config.kafka.brokers {
        Some(brokers) => {
            if config.kafka.create_topics {
                let compacted = BTreeSet::from([config.kafka.changelog_topic()]);
                kafka::ensure_topics(brokers, &config.kafka, &topics, &compacted)
                    .await
                    .with_context(|| format!("creating topics on {brokers}"))?;
            }
            kafka::check_changelog_partitions(brokers, &config.kafka)?;
            brokers.clone()
        }
        None => {
            embedded = EmbeddedBroker::start()?;
            for topic in &topics {
                embedded.create_topic(topic, config.kafka.partitions)?;
            }
            let brokers = embedded.bootstrap_servers();
            info!(
                bootstrap = %brokers,
                topics = ?topics,
                "No brokers configured: started an embedded Kafka-protocol broker. Produce to it with `todo-eventd produce --brokers {brokers} --topic {} FILE`.",
                config.kafka.input_topics[0]
            );
            eprintln!("embedded broker listening on {brokers}");
            brokers
        }
    };
    let pipeline = Pipeline {
        config,
        plugins,
        stats: Arc::default(),
    };
    pipeline.run(&brokers, shutdown).await?;
    Ok(pipeline.stats)
}
