//! End-to-end harness: a real `tansu` broker process (installed from
//! crates.io on first use and cached), real `todo-eventd` processes, and a
//! reader for the topics they write.

#![allow(dead_code, clippy::unwrap_used)]

pub mod tls;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message};

/// The tansu version the suite runs against.
pub const TANSU_VERSION: &str = "0.6.0";

/// The `tansu` binary: `$TANSU` if set, else the cached install under
/// `~/.cache/todo-eventd`, installed with `cargo install` if missing.
pub fn tansu_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("TANSU") {
            return PathBuf::from(bin);
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let root = home
            .join(".cache/todo-eventd")
            .join(format!("tansu-{TANSU_VERSION}"));
        let bin = root.join("bin/tansu");
        if !bin.exists() {
            eprintln!(
                "installing tansu {TANSU_VERSION} into {} (first run only)",
                root.display()
            );
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "install",
                    "tansu",
                    "--version",
                    TANSU_VERSION,
                    "--features",
                    "dynostore",
                    "--locked",
                    "--root",
                ])
                .arg(&root)
                .status()
                .expect("run cargo install tansu");
            assert!(status.success(), "cargo install tansu failed");
        }
        bin
    })
    .clone()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    /// Sends SIGTERM and waits for a graceful exit.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// SIGKILL: no drain, no commit, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to a minute) until the daemon has been assigned partitions;
    /// fails the test with its log otherwise.
    pub fn assert_assigned(&self) {
        assert!(
            self.wait_for_log("Partitions assigned", Duration::from_secs(60)),
            "no partitions assigned:\n{}",
            self.log_text()
        );
    }

    /// The admin endpoint's address, from the log line announcing it.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        let needle = "Admin endpoint listening";
        assert!(
            self.wait_for_log(needle, Duration::from_secs(60)),
            "no admin endpoint:\n{}",
            self.log_text()
        );
        let log = self.log_text();
        let line = log.lines().find(|l| l.contains(needle)).unwrap();
        let addr = line.split("addr=").nth(1).unwrap();
        addr.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// The embedded broker's address, from the line the daemon prints.
    pub fn embedded_broker(&self) -> String {
        let needle = "embedded broker listening on ";
        assert!(
            self.wait_for_log(needle, Duration::from_secs(60)),
            "no embedded broker:\n{}",
            self.log_text()
        );
        let log = self.log_text();
        let line = log.lines().find(|l| l.contains(needle)).unwrap();
        line.split(needle).nth(1).unwrap().trim().to_owned()
    }

    /// Resident memory of the process, in MiB.
    pub fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tansu broker on a free localhost port with in-memory storage.
pub struct Broker {
    pub address: String,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Self {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tansu.log");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{address}"),
                "--advertised-listener-url",
                &format!("tcp://{address}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("tansu.err")).unwrap(),
            ))
            .spawn()
            .expect("start tansu");
        let process = Process { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start listening on {address}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            address,
            _process: process,
            _dir: dir,
        }
    }
}

/// Starts `todo-eventd run` against `brokers` with extra args; its stderr
/// (the log) goes to a file in `dir`.
pub fn daemon(bin: &Path, brokers: &str, dir: &Path, name: &str, args: &[&str]) -> Process {
    let mut all = vec!["--brokers", brokers];
    all.extend_from_slice(args);
    spawn_daemon(bin, dir, name, &all)
}

/// Starts `todo-eventd run` with no brokers configured: on its own
/// embedded broker (see [`Process::embedded_broker`]).
pub fn daemon_embedded(bin: &Path, dir: &Path, name: &str, args: &[&str]) -> Process {
    spawn_daemon(bin, dir, name, args)
}

fn spawn_daemon(bin: &Path, dir: &Path, name: &str, args: &[&str]) -> Process {
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(bin)
        .args(["run", "--admin-addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info,todo_eventd=debug")
        .env("NO_COLOR", "1")
        .env("TODO_EVENTD_CACHE_DIR", dir.join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("start todo-eventd");
    Process { child, log }
}

/// Reads `topics` from the beginning until `enough` or the timeout.
pub async fn read_until(
    brokers: &str,
    topics: &[&str],
    timeout: Duration,
    enough: impl Fn(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    read_until_with(brokers, &[], topics, timeout, enough).await
}

/// [`read_until`] with extra client `properties` (TLS, SASL).
pub async fn read_until_with(
    brokers: &str,
    properties: &[(&str, &str)],
    topics: &[&str],
    timeout: Duration,
    enough: impl Fn(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-reader-{}", free_port()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    for (key, value) in properties {
        config.set(*key, *value);
    }
    let consumer: StreamConsumer = config.create().unwrap();
    consumer.subscribe(topics).unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !enough(&seen) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => seen.push(message.detach()),
            Ok(Err(err)) => eprintln!("reader: {err}"),
            Err(_) => break,
        }
    }
    seen
}

pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    todo_eventd::kafka::header(message, name)
}

pub fn json(message: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(message.payload().unwrap_or_default()).unwrap_or(serde_json::Value::Null)
}

/// Messages grouped by topic.
pub fn by_topic(messages: &[OwnedMessage]) -> BTreeMap<String, Vec<&OwnedMessage>> {
    let mut map: BTreeMap<String, Vec<&OwnedMessage>> = BTreeMap::new();
    for m in messages {
        map.entry(m.topic().to_owned()).or_default().push(m);
    }
    map
}
