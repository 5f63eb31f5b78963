//! `todo-eventd broker`: the embedded Kafka-protocol broker (librdkafka's
//! mock cluster) as a process of its own, for local development and tests —
//! several daemons, `todo-eventd produce` and any Kafka client can share
//! it, and a daemon can be killed and restarted against it.
//!
//! It prints its bootstrap address (`HOST:PORT`) as the first line on
//! stdout, creates the topics a daemon with the bundled plugins uses (the
//! broker has no CreateTopics), logs its limits and runs until SIGINT or
//! SIGTERM. Everything is in memory: the newest
//! [`EMBEDDED_RETENTION`](crate::kafka::EMBEDDED_RETENTION) records per
//! partition are kept, and nothing survives the process.

use std::collections::BTreeSet;
use std::future::Future;
use std::io::Write;

use anyhow::{Context, Result};
use tracing::info;

use crate::config::Config;
use crate::daemon;
use crate::kafka::{EMBEDDED_RETENTION, EmbeddedBroker};
use crate::plugin::bundled;
use crate::plugin::manifest::Manifest;

/// Starts the broker with `partitions` per topic, writes its address as a
/// line to `out`, and serves until `shutdown` resolves.
pub async fn serve(
    config: &Config,
    partitions: i32,
    mut out: impl Write,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    anyhow::ensure!(partitions >= 1, "--partitions: must be at least 1");
    let topics = default_topics(config)?;
    let broker = EmbeddedBroker::start()?;
    for topic in &topics {
        broker.create_topic(topic, partitions)?;
    }
    let address = broker.bootstrap_servers();
    let (records, bytes) = EMBEDDED_RETENTION;
    info!(
        bootstrap = %address,
        partitions,
        ?topics,
        retention_records = records,
        retention_bytes = bytes,
        "Embedded broker listening. It keeps everything in memory, at most the newest {records} records or {} MiB per partition (older records are dropped, so a changelog beyond that loses state), and nothing survives the process. Topics are created here only (no CreateTopics: run daemons against it with their topics among these, or with --set kafka.create_topics=false). It accepts transactional requests without isolating them.",
        bytes >> 20,
    );
    // Last, so whoever reads the address finds the broker ready.
    writeln!(out, "{address}")
        .and_then(|()| out.flush())
        .context("writing the broker's address")?;
    shutdown.await;
    info!("Embedded broker stopped.");
    Ok(())
}

/// The topics a daemon with the bundled plugins uses under `config`: its
/// input, dead-letter and changelog topics and the plugins' outputs.
pub fn default_topics(config: &Config) -> Result<BTreeSet<String>> {
    let manifests = bundled::ALL
        .iter()
        .map(|b| {
            Manifest::parse(b.manifest)
                .map_err(|e| anyhow::anyhow!("bundled manifest {}: {e}", b.name))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(daemon::topics_for(config, &manifests))
}
