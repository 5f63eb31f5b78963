//! The command line: arguments (clap), logging, and what each command does
//! with the library. `main.rs` only parses and calls [`run`].

use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, Override};
use crate::plugin::{self, LoadReport, Plugin, bundled};
use crate::sandbox::Sandbox;
use crate::telemetry::Telemetry;
use crate::units::ByteSize;
use crate::world::{EventKind, Timestamp};
use crate::{broker, daemon, demo, kafka, kit, offline};

/// How long the runtime waits for blocking work (a compile, a restore
/// read) when the process exits.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Consumes todo-app events from Kafka and dispatches each one to sandboxed
/// WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "todo-eventd", version, about)]
pub struct Cli {
    /// Directory for compiled-component cache files (a second start does not
    /// recompile). Defaults to $XDG_CACHE_HOME/todo-eventd or
    /// ~/.cache/todo-eventd.
    #[arg(long, global = true, env = "TODO_EVENTD_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    /// Do not cache compiled components on disk.
    #[arg(long, global = true)]
    no_cache: bool,

    /// Log format: `text` for people, `json` (one object per line) for log
    /// shippers. The level comes from RUST_LOG (default: `info` for `run`,
    /// `warn` otherwise).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "TODO_EVENTD_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only on a terminal without NO_COLOR.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: consume task events, dispatch them to the plugins,
    /// produce their results. Without brokers, starts an embedded broker.
    Run(RunArgs),
    /// Run the whole pipeline on an embedded broker with a sample stream and
    /// print what lands on each output topic, then exit.
    Demo,
    /// Run the embedded Kafka-protocol broker on its own, for local
    /// development: prints its address (HOST:PORT) as the first line,
    /// creates the default topics, runs until SIGINT or SIGTERM.
    Broker {
        /// Partitions of each topic it creates.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
    },
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
    // `compile-component`, the daemon running itself to compile a plugin,
    // is handled in `main` before any argument parsing
    // (`sandbox::CHILD_COMMAND`).
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

/// The daemon's configuration, for the commands that judge plugins by it.
#[derive(Debug, clap::Args)]
struct DaemonConfig {
    /// The daemon's TOML configuration file, so that plugins are held to
    /// the limits the daemon applies (`sandbox.default_limits`,
    /// `sandbox.max_limits`, `pipeline.max_event_bytes`, the producer's
    /// `message.max.bytes`). The environment's `TODO_EVENTD_<SECTION>_<KEY>`
    /// settings apply too, as for `run`; `kafka.property_files` (secrets)
    /// are not read.
    #[arg(long, env = "TODO_EVENTD_CONFIG")]
    config: Option<PathBuf>,
}

impl DaemonConfig {
    /// The config file (or defaults) with the environment applied,
    /// validated; no secret is read.
    fn load(&self) -> Result<Config> {
        let config = Config::load_settings(
            self.config.as_deref(),
            &Override::from_env(std::env::vars()),
        )?;
        config.validate()?;
        Ok(config)
    }
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// Validate every plugin in a directory — compile it and start it under
    /// its limits — and show what each may do: one block per plugin; exit
    /// status 1 if any is invalid.
    Check {
        /// The plugins directory.
        dir: PathBuf,
        #[command(flatten)]
        config: DaemonConfig,
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
        /// Print per-plugin calls, p50/p99/max call time and peak memory
        /// to stderr, to size `[limits]`.
        #[arg(long)]
        stats: bool,
        #[command(flatten)]
        config: DaemonConfig,
    },
    /// Write the bundled plugins (reminders, recurrence, analytics, audit)
    /// and their default manifests into a directory. Existing manifests are
    /// kept.
    Install {
        /// The plugins directory to write to.
        dir: PathBuf,
    },
    /// Create a plugin project, PARENT/NAME: a handler that emits one record
    /// per event to its output `out`, the manifest mapping it, sample events
    /// and a README. It builds outside this repository.
    New {
        /// The plugin's name (lower-case letters, digits, '-', '_').
        name: String,
        /// The language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: kit::Lang,
        /// Where to create the project directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build a plugin project into NAME.wasm + NAME.toml: cargo for the
    /// wasm32-wasip2 target (added with rustup if missing), or
    /// componentize-py (installed on first use) for Python.
    Build {
        /// The project directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to write the plugin files; default: DIR/dist.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn parse_rfc3339(text: &str) -> Result<Timestamp, String> {
    text.parse::<jiff::Timestamp>()
        .map(jiff::Timestamp::as_millisecond)
        .map_err(|e| format!("not an RFC 3339 time: {e}"))
}

impl Cli {
    /// Whether this command raises the process's open-file limit
    /// ([`crate::descriptors`]): all but the plugin kit's `new` and
    /// `build`, which only run build tools — and those would inherit a
    /// soft limit they did not ask for (a tool still using `select()`
    /// fails on descriptors past 1024).
    pub fn raises_open_file_limit(&self) -> bool {
        !matches!(
            self.command,
            Command::Plugins(PluginsCommand::New { .. } | PluginsCommand::Build { .. })
        )
    }

    /// Sets up logging for this command: RUST_LOG if set, else `info` for
    /// `run` and `broker`, `warn` for the rest; ANSI colours only when
    /// stderr is a terminal and NO_COLOR is not set.
    pub fn init_logging(&self) {
        let default = match self.command {
            Command::Run(_) | Command::Broker { .. } => "info",
            _ => "warn",
        };
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.with_ansi(ansi).init(),
            LogFormat::Json => builder.json().with_ansi(false).init(),
        }
    }
}

/// Runs the command; the exit code says whether it succeeded.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(execute(cli));
    // Blocking work left on the runtime's pool (a plugin's file call stuck
    // on a FIFO) must not hold the exit up; the daemon's own runs on
    // `blocking`'s pool, which the exit does not wait for either.
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

async fn execute(cli: Cli) -> Result<ExitCode> {
    let explicit_cache = cli.cache_dir.is_some() || cli.no_cache;
    let cache_root = cli.cache_dir.or_else(default_cache_dir);
    let cache_dir = if cli.no_cache {
        None
    } else {
        cache_root.clone()
    };
    let components = cache_dir.map(|d| d.join("components"));
    let telemetry = Telemetry::default();
    // Where `demo`, `plugins check` and `plugins test` run plugins: under
    // `config`, with this user's cache (a daemon configuration's own
    // `sandbox.cache_dir` is for the service's user).
    let sandbox = |mut config: Config| {
        config.sandbox.cache_dir.clone_from(&components);
        config.sandbox.compiler_program = this_program();
        daemon::sandbox(&config, components.clone(), &telemetry)
    };
    match cli.command {
        Command::Run(args) => {
            let mut config = args.config()?;
            config.sandbox.compiler_program = this_program();
            if explicit_cache {
                // The flag (or its variable) beats `sandbox.cache_dir`.
                config.sandbox.cache_dir.clone_from(&components);
            }
            let sandbox = daemon::sandbox(&config, components.clone(), &telemetry)?;
            let plugins = daemon::plugins(&sandbox, &config, &telemetry).await?;
            let metrics = telemetry.pipeline.clone();
            daemon::run(config, plugins, telemetry, shutdown_signal()).await?;
            eprintln!("{}", metrics.summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => {
            let plugins = demo::plugins(&sandbox(Config::default())?).await?;
            demo::run(Config::default(), plugins, std::io::stdout().lock()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Broker { partitions } => {
            let config = Config::load(None, &Override::from_env(std::env::vars()))?;
            broker::serve(&config, partitions, std::io::stdout(), shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Produce {
            brokers,
            topic,
            file,
        } => {
            // TLS and SASL settings from the environment, as `run` reads them.
            let config = Config::load(None, &Override::from_env(std::env::vars()))?;
            let producer = kafka::producer(&brokers, &config.kafka)?;
            let max = config.kafka.max_record_bytes();
            let count = match file.as_deref() {
                None => kafka::produce_lines(&producer, &topic, std::io::stdin().lock(), max).await,
                Some(path) if path == Path::new("-") => {
                    kafka::produce_lines(&producer, &topic, std::io::stdin().lock(), max).await
                }
                Some(path) => {
                    let file = std::fs::File::open(path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    kafka::produce_lines(&producer, &topic, BufReader::new(file), max).await
                }
            }?;
            eprintln!("produced {count} records to {topic} on {brokers}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::Check { dir, config }) => {
            let mut config = config.load()?;
            // The directory checked is where code is read from here: no
            // plugin in it may be granted to write to it.
            config.plugins.dir = Some(dir.clone());
            check(&sandbox(config)?, &dir).await
        }
        Command::Plugins(PluginsCommand::Test {
            plugins,
            events,
            now,
            advance,
            stats,
            config,
        }) => {
            let mut config = config.load()?;
            if let Some(dir) = &plugins {
                config.plugins.dir = Some(dir.clone());
            }
            let options = offline::Options {
                start: now,
                advance,
                max_event_bytes: config.pipeline.max_event_bytes,
                max_hops: config.plugins.max_hops,
                max_firings_per_step: offline::MAX_TIMER_FIRINGS_PER_STEP,
            };
            test(
                &sandbox(config)?,
                plugins.as_deref(),
                &events,
                &options,
                stats,
            )
            .await
        }
        Command::Plugins(PluginsCommand::New { name, lang, dir }) => {
            let (project, files) = kit::new_project(&name, lang, &dir)?;
            let mut stdout = std::io::stdout().lock();
            for file in files {
                writeln!(stdout, "wrote {}", file.display())?;
            }
            writeln!(
                stdout,
                "\nnext: cd {} && todo-eventd plugins build && todo-eventd plugins test --plugins dist --events events.ndjson --stats",
                project.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::Build { dir, out }) => {
            // Tools installed on first use live beside the component cache
            // (like the test suite's broker). Never in a shared temporary
            // directory: whoever may write there picks the program run.
            let tools = cache_root;
            let built =
                crate::blocking::spawn(move || kit::build(&dir, out.as_deref(), tools.as_deref()))
                    .await
                    .context("the build task failed")??;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "built {}", built.name)?;
            writeln!(stdout, "wrote {}", built.wasm.display())?;
            writeln!(stdout, "wrote {}", built.manifest.display())?;
            Ok(ExitCode::SUCCESS)
        }
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

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("Shutdown signal received.");
}

/// This very binary, to run as the compiler child (see
/// [`crate::sandbox::Compiler`]): `/proc/self/exe` names it even after a
/// package upgrade replaced the file, and a child of the same build
/// compiles with the same settings.
fn this_program() -> Option<PathBuf> {
    let this = PathBuf::from("/proc/self/exe");
    if this.exists() {
        return Some(this);
    }
    tracing::warn!(
        "No /proc: plugins are compiled in this process, without sandbox.compile_memory or \
         sandbox.compile_timeout."
    );
    None
}

/// `$XDG_CACHE_HOME/todo-eventd` or `~/.cache/todo-eventd`. A variable
/// that is empty or not an absolute path is ignored (as the XDG spec
/// says): it would put the cache, whose programs are run, wherever the
/// daemon happens to be started.
fn default_cache_dir() -> Option<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    absolute("XDG_CACHE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".cache")))
        .map(|dir| dir.join("todo-eventd"))
}

async fn load(sandbox: &Arc<Sandbox>, dir: &Path) -> Result<LoadReport> {
    plugin::load_dir(sandbox, dir)
        .await
        .with_context(|| format!("reading plugins directory {}", dir.display()))
}

async fn check(sandbox: &Arc<Sandbox>, dir: &Path) -> Result<ExitCode> {
    let report = load(sandbox, dir).await?;
    let mut stdout = std::io::stdout().lock();
    for plugin in &report.plugins {
        write!(stdout, "{}", describe(plugin))?;
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

/// What `plugins check` shows of a valid plugin: the summary line, then
/// its grants and limits, indented.
pub fn describe(plugin: &Plugin) -> String {
    let manifest = &plugin.manifest;
    let events: Vec<&str> = match &manifest.events {
        Some(kinds) => kinds.iter().map(EventKind::name).collect(),
        None => vec!["all"],
    };
    let outputs: Vec<String> = manifest
        .outputs
        .iter()
        .map(|(name, topic)| format!("{name}->{topic}"))
        .collect();
    let mut text = format!(
        "ok       {:<16} version={} wit=todo:plugin@{} sha256={} events={} outputs={}\n",
        plugin.name,
        crate::text::quote_bounded(manifest.version.as_deref().unwrap_or("-"), 64),
        plugin.wit_version(),
        plugin.short_hash(),
        events.join(","),
        if outputs.is_empty() {
            "none".into()
        } else {
            outputs.join(",")
        },
    );
    if outputs.is_empty() {
        text.push_str("         warning: no [outputs] mapped, so every emit will fail\n");
    }
    // The grants as the plugin gets them (host paths resolved), escaped:
    // guest paths are the manifest's own text, and no line may be made to
    // overwrite another.
    for grant in plugin.spec.wasi.describe() {
        let grant = crate::text::quote_bounded(&grant, 512);
        text.push_str(&format!("         grant  {grant}\n"));
    }
    if !plugin.wasi_imports.is_empty() {
        text.push_str(&format!(
            "         imports {} WASI interfaces (empty unless granted above)\n",
            plugin.wasi_imports.len()
        ));
    }
    let limit = plugin.spec.limits.memory;
    text.push_str(&format!(
        "         starts in {} of memory (limit {limit})\n",
        ByteSize(plugin.start_memory as u64)
    ));
    if plugin.start_memory as u64 > limit.bytes() / 4 * 3 {
        text.push_str(
            "         warning: starting takes over 3/4 of limits.memory, leaving little room for calls; raise limits.memory\n",
        );
    }
    let limits: Vec<String> = plugin
        .spec
        .limits
        .entries()
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    text.push_str(&format!("         limits {}\n", limits.join(" ")));
    text
}

async fn test(
    sandbox: &Arc<Sandbox>,
    dir: Option<&Path>,
    events: &Path,
    options: &offline::Options,
    stats: bool,
) -> Result<ExitCode> {
    let report = match dir {
        Some(dir) => load(sandbox, dir).await?,
        None => bundled::load(sandbox)
            .await
            .context("loading the bundled plugins")?,
    };
    for err in &report.errors {
        eprintln!("warning: skipping invalid plugin: {err}");
    }
    if report.plugins.is_empty() {
        bail!("no valid plugins to run");
    }
    let stdout = std::io::stdout().lock();
    let summary = if events == Path::new("-") {
        offline::run(&report.plugins, std::io::stdin().lock(), options, stdout).await
    } else {
        let file = std::fs::File::open(events)
            .with_context(|| format!("opening events file {}", events.display()))?;
        offline::run(&report.plugins, BufReader::new(file), options, stdout).await
    }
    .with_context(|| {
        format!(
            "running events from {} through the plugins",
            events.display()
        )
    })?;
    eprint!(
        "{} events, {} emits, {} dead-letters, {} timers fired",
        summary.events, summary.emits, summary.dead_letters, summary.timers_fired
    );
    if summary.timers_postponed > 0 {
        eprint!(", {} timer calls postponed", summary.timers_postponed);
    }
    eprintln!();
    if stats {
        eprint!("{}", summary.stats_table());
    }
    // The valid plugins ran, but a CI step testing the directory must not
    // pass with one of its plugins unable to load.
    if !report.errors.is_empty() {
        eprintln!(
            "error: {} invalid plugin(s) skipped (see the warnings above); the output is the others'",
            report.errors.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kit's build tools keep the open-file limit their user gave;
    /// the daemon and the commands running plugins raise it.
    #[test]
    fn only_commands_running_plugins_raise_the_open_file_limit() {
        let raises = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("todo-eventd").chain(args.iter().copied()))
                .expect("parses")
                .raises_open_file_limit()
        };
        assert!(raises(&["run"]));
        assert!(raises(&["demo"]));
        assert!(raises(&["plugins", "test", "--events", "e.ndjson"]));
        assert!(!raises(&["plugins", "build"]));
        assert!(!raises(&["plugins", "new", "hello"]));
    }
}
