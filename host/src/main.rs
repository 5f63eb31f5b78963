//! The `todo-eventd` binary: parses arguments, sets up logging and calls
//! into the library.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use todo_eventd::config::{Config, Override};
use todo_eventd::plugin::{self, LoadReport, bundled};
use todo_eventd::sandbox::Sandbox;
use todo_eventd::telemetry::Telemetry;
use todo_eventd::{daemon, kafka};
use todo_eventd::{offline, world::Timestamp};
use tracing_subscriber::EnvFilter;

/// Consumes todo-app events from Kafka and dispatches each one to sandboxed
/// WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Directory for compiled-component cache files (a second start does not
    /// recompile). Defaults to $XDG_CACHE_HOME/todo-eventd or
    /// ~/.cache/todo-eventd.
    #[arg(long, global = true, env = "TODO_EVENTD_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    /// Do not cache compiled components on disk.
    #[arg(long, global = true)]
    no_cache: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: consume task events, dispatch them to the plugins,
    /// produce their results. Without brokers, starts an embedded broker.
    Run(RunArgs),
    /// Run the whole pipeline on an embedded broker with a sample stream and
    /// print what lands on each output topic, then exit.
    Demo,
    /// Send NDJSON events (one per line) to a topic, keyed by user id.
    Produce {
        /// Bootstrap servers.
        #[arg(long, env = "TODO_EVENTD_BROKERS")]
        brokers: String,
        /// Destination topic.
        #[arg(long, default_value = "task-events")]
        topic: String,
        /// NDJSON file; `-` or nothing for stdin.
        file: Option<PathBuf>,
    },
    /// Work with plugin files.
    #[command(subcommand)]
    Plugins(PluginsCommand),
}

/// Flags of `run`. Each overrides the environment
/// (`TODO_EVENTD_<SECTION>_<KEY>`), which overrides the config file.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "TODO_EVENTD_CONFIG")]
    config: Option<PathBuf>,
    /// Bootstrap servers (`host:port[,host:port]`); sets `kafka.brokers`.
    #[arg(long)]
    brokers: Option<String>,
    /// Plugins directory; sets `plugins.dir`.
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Consumer group id; sets `kafka.group_id`.
    #[arg(long)]
    group: Option<String>,
    /// Input topics, comma-separated; sets `kafka.input_topics`.
    #[arg(long, value_delimiter = ',')]
    input_topics: Option<Vec<String>>,
    /// Dead-letter topic; sets `kafka.dead_letter_topic`.
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Admin endpoint address (`/metrics`, `/healthz`, `/readyz`,
    /// `/plugins`); sets `admin.addr`. Port 0 picks a free port.
    #[arg(long)]
    admin_addr: Option<std::net::SocketAddr>,
    /// Any configuration key, e.g. `--set plugins.quarantine_after=3` or
    /// `--set kafka.properties.security.protocol=SASL_SSL`. Repeatable.
    /// Every key can also come from the environment as
    /// `TODO_EVENTD_<SECTION>_<KEY>` (librdkafka properties as
    /// `TODO_EVENTD_KAFKA_PROPERTY_<NAME>`, `_` for `.`); flags win.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = Override::from_flag)]
    overrides: Vec<Override>,
}

impl RunArgs {
    /// The config file (or defaults) with the environment and flags
    /// applied, validated.
    fn config(&self) -> Result<Config> {
        let mut overrides = Override::from_env(std::env::vars());
        overrides.extend(self.overrides.iter().cloned());
        let mut config = Config::load(self.config.as_deref(), &overrides)?;
        if let Some(addr) = self.admin_addr {
            config.admin.addr = addr;
            config.admin.enabled = true;
        }
        if let Some(brokers) = &self.brokers {
            config.kafka.brokers = Some(brokers.clone());
        }
        if let Some(dir) = &self.plugins {
            config.plugins.dir = Some(dir.clone());
        }
        if let Some(group) = &self.group {
            config.kafka.group_id = group.clone();
        }
        if let Some(topics) = &self.input_topics {
            config.kafka.input_topics = topics.clone();
        }
        if let Some(topic) = &self.dead_letter_topic {
            config.kafka.dead_letter_topic = topic.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // Partition workers settle deliveries while the consumer thread blocks
    // in a rebalance callback, so keep a few threads even on small machines.
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get().max(4));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("Shutdown signal received.");
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// Validate every plugin in a directory: one line per plugin; exit
    /// status 1 if any is invalid.
    Check {
        /// The plugins directory.
        dir: PathBuf,
    },
    /// Feed NDJSON events through the plugins with in-memory state and a
    /// virtual clock; print one JSON line per emit or dead-letter.
    Test {
        /// The plugins directory; default: the bundled plugins with their
        /// default manifests.
        #[arg(long)]
        plugins: Option<PathBuf>,
        /// NDJSON file of input events (`-` for stdin).
        #[arg(long)]
        events: PathBuf,
        /// Where the virtual clock starts (RFC 3339); default: the first
        /// event's timestamp.
        #[arg(long, value_parser = parse_rfc3339)]
        now: Option<Timestamp>,
        /// How far to advance the clock after the last event, firing due
        /// timers in order (e.g. `72h`, `30m`).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        advance: Duration,
    },
    /// Write the bundled plugins (reminders, recurrence, analytics) and their
    /// default manifests into a directory. Existing manifests are kept.
    Install {
        /// The plugins directory to write to.
        dir: PathBuf,
    },
}

fn parse_rfc3339(text: &str) -> Result<Timestamp, String> {
    text.parse::<jiff::Timestamp>()
        .map(jiff::Timestamp::as_millisecond)
        .map_err(|e| format!("not an RFC 3339 time: {e}"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let explicit_cache = cli.cache_dir.is_some() || cli.no_cache;
    let cache_dir = if cli.no_cache {
        None
    } else {
        cli.cache_dir.or_else(default_cache_dir)
    };
    let components = cache_dir.map(|d| d.join("components"));
    let sandbox = || daemon::sandbox(&Config::default(), components.clone());
    match cli.command {
        Command::Run(args) => {
            let mut config = args.config()?;
            if explicit_cache {
                // The flag (or its variable) beats `sandbox.cache_dir`.
                config.sandbox.cache_dir.clone_from(&components);
            }
            let sandbox = daemon::sandbox(&config, components.clone())?;
            let telemetry = Telemetry::default();
            let plugins = daemon::plugins(&sandbox, &config, &telemetry)?;
            let metrics = telemetry.pipeline.clone();
            runtime()?.block_on(daemon::run(config, plugins, telemetry, shutdown_signal()))?;
            eprintln!("{}", metrics.summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => {
            let config = Config::default();
            let sandbox = sandbox()?;
            let plugins = todo_eventd::demo::plugins(&sandbox)?;
            let stdout = std::io::stdout();
            runtime()?.block_on(todo_eventd::demo::run(config, plugins, stdout.lock()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Produce {
            brokers,
            topic,
            file,
        } => {
            let producer = kafka::producer(&brokers, &Config::default().kafka)?;
            let count = runtime()?.block_on(async {
                match file.as_deref() {
                    None => kafka::produce_lines(&producer, &topic, std::io::stdin().lock()).await,
                    Some(path) if path == Path::new("-") => {
                        kafka::produce_lines(&producer, &topic, std::io::stdin().lock()).await
                    }
                    Some(path) => {
                        let file = std::fs::File::open(path)
                            .with_context(|| format!("opening {}", path.display()))?;
                        kafka::produce_lines(&producer, &topic, BufReader::new(file)).await
                    }
                }
                .map_err(anyhow::Error::from)
            })?;
            eprintln!("produced {count} records to {topic} on {brokers}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::Check { dir }) => check(&sandbox()?, &dir),
        Command::Plugins(PluginsCommand::Test {
            plugins,
            events,
            now,
            advance,
        }) => test(&sandbox()?, plugins.as_deref(), &events, now, advance),
        Command::Plugins(PluginsCommand::Install { dir }) => {
            let written = bundled::install(&dir)
                .with_context(|| format!("installing bundled plugins into {}", dir.display()))?;
            let mut stdout = std::io::stdout().lock();
            for file in written {
                writeln!(stdout, "wrote {}", file.display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("todo-eventd"))
}

fn load(sandbox: &Arc<Sandbox>, dir: &Path) -> Result<LoadReport> {
    plugin::load_dir(sandbox, dir)
        .with_context(|| format!("reading plugins directory {}", dir.display()))
}

fn check(sandbox: &Arc<Sandbox>, dir: &Path) -> Result<ExitCode> {
    let report = load(sandbox, dir)?;
    let mut stdout = std::io::stdout().lock();
    for plugin in &report.plugins {
        let events: Vec<&str> = match &plugin.manifest.events {
            Some(kinds) => kinds.iter().map(|k| k.0.name()).collect(),
            None => vec!["all"],
        };
        let outputs: Vec<String> = plugin
            .manifest
            .outputs
            .iter()
            .map(|(name, topic)| format!("{name}->{topic}"))
            .collect();
        writeln!(
            stdout,
            "ok       {:<16} version={} sha256={} events={} outputs={}{}",
            plugin.name,
            plugin.manifest.version.as_deref().unwrap_or("-"),
            plugin.short_hash(),
            events.join(","),
            if outputs.is_empty() {
                "none".into()
            } else {
                outputs.join(",")
            },
            if plugin.wasi_imports.is_empty() {
                String::new()
            } else {
                format!(" wasi-imports={}", plugin.wasi_imports.len())
            },
        )?;
    }
    for name in &report.disabled {
        writeln!(
            stdout,
            "disabled {name:<16} (enabled = false in its manifest)"
        )?;
    }
    for err in &report.errors {
        writeln!(stdout, "invalid  {err}")?;
    }
    if report.plugins.is_empty() && report.errors.is_empty() && report.disabled.is_empty() {
        bail!("no plugins (*.wasm) in {}", dir.display());
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn test(
    sandbox: &Arc<Sandbox>,
    dir: Option<&Path>,
    events: &Path,
    now: Option<Timestamp>,
    advance: Duration,
) -> Result<ExitCode> {
    let report = match dir {
        Some(dir) => load(sandbox, dir)?,
        None => bundled::load(sandbox).context("loading the bundled plugins")?,
    };
    for err in &report.errors {
        eprintln!("warning: skipping invalid plugin: {err}");
    }
    if report.plugins.is_empty() {
        bail!("no valid plugins to run");
    }
    let options = offline::Options {
        start: now,
        advance,
    };
    let stdout = std::io::stdout().lock();
    let summary = if events == Path::new("-") {
        offline::run(&report.plugins, std::io::stdin().lock(), &options, stdout)
    } else {
        let file = std::fs::File::open(events)
            .with_context(|| format!("opening events file {}", events.display()))?;
        offline::run(&report.plugins, BufReader::new(file), &options, stdout)
    }
    .context("running events through the plugins")?;
    eprintln!(
        "{} events, {} emits, {} dead-letters, {} timers fired",
        summary.events, summary.emits, summary.dead_letters, summary.timers_fired
    );
    Ok(ExitCode::SUCCESS)
}
