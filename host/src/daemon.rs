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
    let settings = config.sandbox_config(default_cache);
    let (instances, memory) = (settings.max_instances, settings.max_limits.memory);
    let sandbox =
        Sandbox::with_metrics(settings, telemetry.plugins.clone()).map_err(anyhow::Error::from);
    // The engine's errors (an address-space reservation refused) name no
    // setting: these two size it.
    Ok(Arc::new(sandbox.with_context(|| {
        format!(
            "starting the wasm engine, whose instance pool reserves address space for \
             sandbox.max_instances ({instances}) instances of up to sandbox.max_limits.memory ({memory})"
        )
    })?))
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
            crate::blocking::spawn(move || {
                kafka::probe(&brokers_, &kafka, Duration::from_secs(30))
            })
            .await
            .context("connecting to the brokers")??;
            if config.kafka.create_topics {
                let compacted = BTreeSet::from([config.kafka.changelog_topic()]);
                let refused = kafka::ensure_topics(brokers, &config.kafka, &topics, &compacted)
                    .await
                    .with_context(|| format!("creating topics on {brokers}"))?;
                judge_refused(&config, &refused)?;
            }
            let (brokers_, kafka) = (brokers.clone(), config.kafka.clone());
            crate::blocking::spawn(move || kafka::check_changelog_partitions(&brokers_, &kafka))
                .await
                .context("checking the changelog topic")??;
            kafka::check_topic_settings(brokers, &config.kafka, &topics)
                .await
                .context("checking the topics' settings")?;
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
        watcher::watch(
            plugins.clone(),
            config.plugins.reload_debounce,
            watcher::FALLBACK_RESCAN,
        )
        .await
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

/// Judges the topics the broker refused to create (not authorised, a
/// policy). The daemon cannot run without an input, the dead-letter or the
/// changelog topic: that is an error naming it. A plugin's output topic it
/// can do without — every input whose output goes there is dead-lettered
/// as undeliverable until the topic exists — so one plugin's topic does
/// not stop the others: a warning per topic.
fn judge_refused(
    config: &Config,
    refused: &[(String, rdkafka::types::RDKafkaErrorCode)],
) -> Result<()> {
    let kafka = &config.kafka;
    let needed = |topic: &String| {
        kafka.input_topics.contains(topic)
            || *topic == kafka.dead_letter_topic
            || *topic == kafka.changelog_topic()
    };
    if let Some((topic, code)) = refused.iter().find(|(topic, _)| needed(topic)) {
        bail!(
            "creating topic {topic}: {code} (the daemon cannot run without it: create it, or allow the daemon to)"
        );
    }
    for (topic, code) in refused {
        warn!(
            topic = %crate::text::message(topic),
            error = %code,
            "Could not create a plugin output topic; the other topics serve, and every input whose output goes there is dead-lettered as undeliverable until it exists."
        );
    }
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
            Ok(refused) => {
                if let Err(err) = judge_refused(&config, &refused) {
                    warn!(error = %err, "Creating the output topics of a new plugin.");
                }
                // Those refused are tried again with the next change.
                known.extend(
                    missing
                        .into_iter()
                        .filter(|t| !refused.iter().any(|(r, _)| r == t)),
                );
            }
            Err(err) => warn!(error = %err, "Creating the output topics of a new plugin."),
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    /// A topic the broker will not create stops start-up only if the
    /// daemon cannot run without it; a plugin's output topic is a warning.
    #[test]
    fn only_a_topic_the_daemon_needs_stops_it() {
        let config = Config::default();
        let denied =
            |topic: &str| vec![(topic.to_owned(), RDKafkaErrorCode::TopicAuthorizationFailed)];
        assert!(judge_refused(&config, &[]).is_ok());
        assert!(judge_refused(&config, &denied("reminders")).is_ok());
        for needed in [
            config.kafka.input_topics[0].clone(),
            config.kafka.dead_letter_topic.clone(),
            config.kafka.changelog_topic(),
        ] {
            let mut refused = denied("reminders");
            refused.extend(denied(&needed));
            let err = judge_refused(&config, &refused)
                .expect_err(&needed)
                .to_string();
            assert!(
                err.contains(&format!("creating topic {needed}: "))
                    && err.contains("cannot run without it"),
                "{err}"
            );
        }
    }
}
