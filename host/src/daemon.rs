//! Start-up: from a validated [`Config`] to a running [`Pipeline`] — the
//! sandbox, the plugins (watched for changes), the broker (external, or
//! embedded when none is configured) and its topics, and the admin
//! endpoint.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tracing::{info, warn};

use crate::admin::{self, Admin};
use crate::clock::Clock;
use crate::config::Config;
use crate::kafka::{self, EmbeddedBroker};
use crate::pipeline::Pipeline;
use crate::plugin::manifest::Manifest;
use crate::plugin::{Plugin, PluginSet, Registry, bundled, watcher};
use crate::sandbox::Sandbox;
use crate::telemetry::Telemetry;

/// Builds the sandbox from `[sandbox]`, counting into `telemetry`.
pub fn sandbox(
    config: &Config,
    default_cache: Option<std::path::PathBuf>,
    telemetry: &Telemetry,
) -> Result<Arc<Sandbox>> {
    let sandbox = Sandbox::with_metrics(
        config.sandbox_config(default_cache),
        telemetry.plugins.clone(),
    )
    .map_err(anyhow::Error::from);
    Ok(Arc::new(sandbox.context("starting the wasm engine")?))
}

/// The plugins: the configured directory (loaded now, reloaded on change
/// when watched) or the bundled plugins. A bad plugin is logged and
/// skipped. Having no usable plugin is an error unless the directory is
/// watched (plugins may arrive later).
pub async fn plugins(
    sandbox: &Arc<Sandbox>,
    config: &Config,
    telemetry: &Telemetry,
) -> Result<Arc<Registry>> {
    let metrics = telemetry.plugins.clone();
    let registry = match &config.plugins.dir {
        Some(dir) => {
            // The registry logs each plugin it loads or rejects.
            let (registry, _report) =
                Registry::open(sandbox.clone(), dir.clone(), metrics, Clock::System)
                    .await
                    .with_context(|| format!("reading plugins directory {}", dir.display()))?;
            registry
        }
        None => {
            let report = bundled::load(sandbox)
                .await
                .context("loading the bundled plugins")?;
            for plugin in &report.plugins {
                info!(plugin = %plugin.name, hash = %plugin.short_hash(), "Bundled plugin loaded.");
            }
            Registry::fixed(report.plugins, metrics, Clock::System)
        }
    };
    if registry.current().plugins.is_empty() {
        if config.plugins.dir.is_none() || !config.plugins.watch {
            bail!("no usable plugins; see the errors above");
        }
        warn!(
            "No usable plugins yet; events are consumed and committed without effect until one is added."
        );
    }
    Ok(Arc::new(registry))
}

/// Every topic the daemon reads or writes.
pub fn topics(config: &Config, plugins: &[Arc<Plugin>]) -> BTreeSet<String> {
    let manifests: Vec<&Manifest> = plugins.iter().map(|p| &p.manifest).collect();
    topics_for(config, manifests)
}

/// The topics a daemon under `config` uses with plugins of these
/// manifests: inputs, dead letters, changelog and the plugins' outputs.
pub fn topics_for<'a>(
    config: &Config,
    manifests: impl IntoIterator<Item = &'a Manifest>,
) -> BTreeSet<String> {
    let mut topics: BTreeSet<String> = config.kafka.input_topics.iter().cloned().collect();
    topics.insert(config.kafka.dead_letter_topic.clone());
    topics.insert(config.kafka.changelog_topic());
    for manifest in manifests {
        topics.extend(manifest.outputs.values().cloned());
    }
    topics
}

/// Runs the daemon until `shutdown` resolves: the admin endpoint, the
/// plugins directory watcher and the pipeline. With no brokers configured,
/// an embedded broker is started first and its address logged.
pub async fn run(
    config: Config,
    plugins: Arc<Registry>,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let topics = topics(&config, &plugins.current().plugins);
    let embedded;
    let brokers = match &config.kafka.brokers {
        Some(brokers) => {
            let (brokers_, kafka) = (brokers.clone(), config.kafka.clone());
            tokio::task::spawn_blocking(move || {
                kafka::probe(&brokers_, &kafka, Duration::from_secs(30))
            })
            .await
            .context("connecting to the brokers")??;
            if config.kafka.create_topics {
                let compacted = BTreeSet::from([config.kafka.changelog_topic()]);
                kafka::ensure_topics(brokers, &config.kafka, &topics, &compacted)
                    .await
                    .with_context(|| format!("creating topics on {brokers}"))?;
            }
            let (brokers_, kafka) = (brokers.clone(), config.kafka.clone());
            tokio::task::spawn_blocking(move || {
                kafka::check_changelog_partitions(&brokers_, &kafka)
            })
            .await
            .context("checking the changelog topic")??;
            kafka::check_record_limits(brokers, &config.kafka, &topics)
                .await
                .context("checking the topics' record limits")?;
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

    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = if config.admin.enabled {
        let listener = admin::bind(config.admin.addr).await?;
        let admin = Admin {
            telemetry: telemetry.clone(),
            plugins: plugins.clone(),
        };
        Some(tokio::spawn(admin.serve(listener, async {
            let _ = admin_stopped.await;
        })))
    } else {
        None
    };
    let _watcher = if config.plugins.watch {
        watcher::watch(plugins.clone(), config.plugins.reload_debounce)
            .context("watching the plugins directory")?
    } else {
        None
    };
    let new_topics = (config.kafka.create_topics && config.kafka.brokers.is_some())
        .then(|| tokio::spawn(create_output_topics(config.clone(), plugins.subscribe())));

    let pipeline = Pipeline {
        config,
        plugins,
        telemetry,
        clock: Clock::System,
    };
    let ran = pipeline.run(&brokers, shutdown).await;
    if let Some(task) = new_topics {
        task.abort();
    }
    let _ = stop_admin.send(());
    if let Some(admin) = admin
        && let Err(err) = admin.await
    {
        warn!(error = %err, "Admin endpoint failed.");
    }
    ran?;
    Ok(())
}

/// Creates the output topics of plugins added while running.
async fn create_output_topics(
    config: Config,
    mut plugins: tokio::sync::watch::Receiver<Arc<PluginSet>>,
) {
    let Some(brokers) = config.kafka.brokers.clone() else {
        return;
    };
    let mut known = topics(&config, &plugins.borrow_and_update().plugins);
    while plugins.changed().await.is_ok() {
        let wanted = topics(&config, &plugins.borrow_and_update().plugins);
        let missing: BTreeSet<String> = wanted.difference(&known).cloned().collect();
        if missing.is_empty() {
            continue;
        }
        match kafka::ensure_topics(&brokers, &config.kafka, &missing, &BTreeSet::new()).await {
            Ok(()) => {
                info!(topics = ?missing, "Created the output topics of a new plugin.");
                known.extend(missing);
            }
            Err(err) => warn!(error = %err, "Creating the output topics of a new plugin."),
        }
    }
}
