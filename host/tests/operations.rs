//! Operating the daemon, on librdkafka's in-process mock cluster: a plugin
//! replaced (and a truncated file dropped in) while events flow, a plugin
//! quarantined and recovering, and the admin endpoint's `/metrics`,
//! `/readyz`, `/healthz` and `/plugins`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::harness::{Harness, header};
use common::{
    Sample, TEST_PLUGIN, created_events, event, eventually, http_get, mode, parse_metrics,
    plugin_dir, reader, sample, sandbox, value, with_custom_section,
};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use todo_eventd::admin::{self, Admin};
use todo_eventd::clock::Clock;
use todo_eventd::pipeline::Pipeline;
use todo_eventd::plugin::{Registry, watcher};
use todo_eventd::sandbox::Sandbox;
use todo_eventd::telemetry::Telemetry;

const TOPICS: [&str; 4] = [
    "task-events",
    "task-events.dlq",
    "out-topic",
    "todo-eventd.plugin-state",
];

/// Reads `topics` until `enough` holds (or 60 s pass), then `extra` longer
/// to catch anything beyond it (duplicates).
async fn read(
    brokers: &str,
    topics: &[&str],
    enough: impl Fn(&[OwnedMessage]) -> bool,
    extra: Duration,
) -> Vec<OwnedMessage> {
    let reader = reader(brokers, topics);
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !enough(&seen) {
        match tokio::time::timeout_at(deadline, reader.recv()).await {
            Ok(message) => seen.push(message.unwrap().detach()),
            Err(_) => break,
        }
    }
    while let Ok(message) = tokio::time::timeout(extra, reader.recv()).await {
        seen.push(message.unwrap().detach());
    }
    seen
}

/// The plugins directory `dir` opened as a live registry on the system
/// clock.
async fn open_registry(dir: &std::path::Path, telemetry: &Telemetry) -> Arc<Registry> {
    let (registry, _) = Registry::open(
        sandbox(),
        dir.to_owned(),
        telemetry.plugins.clone(),
        Clock::System,
    )
    .await
    .unwrap();
    Arc::new(registry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_replaced_under_load_handles_every_event_exactly_once() {
    let cluster = Harness::new(&TOPICS);
    let dir = plugin_dir(&[("echo", TEST_PLUGIN, Some(&mode("echo")))]);
    let telemetry = Telemetry::default();
    let registry = open_registry(dir.path(), &telemetry).await;
    assert_eq!(registry.statuses()[0].name, "echo");
    let _watcher = watcher::watch(
        registry.clone(),
        Duration::from_millis(100),
        watcher::FALLBACK_RESCAN,
    )
    .await
    .unwrap();
    let v1 = Sandbox::content_hash(TEST_PLUGIN);
    let v2_bytes = with_custom_section(TEST_PLUGIN, "v2");
    let v2 = Sandbox::content_hash(&v2_bytes);
    let serving = |registry: &Registry| registry.statuses()[0].hash.clone().unwrap();

    let total = 3000;
    let lines: Vec<String> = (0..total)
        .map(|i| {
            let (user, task) = (format!("u{}", i % 40), format!("t{i}"));
            event(&format!("ev-{i:05}"), &user, &task, "created")
        })
        .collect();
    let pipeline = Pipeline {
        config: cluster.config.clone(),
        plugins: registry.clone(),
        telemetry: telemetry.clone(),
        clock: Clock::System,
    };
    let seen = cluster
        .run_while(&pipeline, async {
            for (n, batch) in lines.chunks(100).enumerate() {
                cluster.produce(batch).await;
                if n == 10 {
                    eventually("v1 handling events", || {
                        telemetry.pipeline.events_in.get() >= 500
                    })
                    .await;
                    // Replace atomically, as the README advises: write
                    // a hidden file, then rename it over the old one.
                    let temporary = dir.path().join(".echo.wasm.part");
                    std::fs::write(&temporary, &v2_bytes).unwrap();
                    std::fs::rename(&temporary, dir.path().join("echo.wasm")).unwrap();
                }
                if n == 20 {
                    eventually("v2 serving", || serving(&registry) == v2).await;
                    // A truncated file written in place is rejected; v2
                    // keeps serving.
                    let v3 = with_custom_section(TEST_PLUGIN, "v3");
                    std::fs::write(dir.path().join("echo.wasm"), &v3[..v3.len() / 2]).unwrap();
                    eventually("truncated file rejected", || {
                        registry.statuses()[0].last_error.is_some()
                    })
                    .await;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            read(
                &cluster.brokers,
                &["out-topic", "task-events.dlq"],
                |seen| seen.len() >= total,
                Duration::from_secs(2),
            )
            .await
        })
        .await;

    // Every event handled once, by one version, and nothing dead-lettered.
    assert_eq!(seen.len(), total, "one output per event, no more");
    let ids: BTreeSet<String> = seen
        .iter()
        .map(|m| value(m)["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), total);
    assert!(seen.iter().all(|m| m.topic() == "out-topic"));
    // Per input partition, in input order: v1 up to the swap, v2 after it.
    let mut by_partition: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for message in &seen {
        let offset = header(message, "source.offset")
            .unwrap_or_default()
            .parse()
            .unwrap();
        by_partition
            .entry(header(message, "source.partition").unwrap_or_default())
            .or_default()
            .push((
                offset,
                header(message, "source.plugin.hash").unwrap_or_default(),
            ));
    }
    let mut versions = BTreeSet::new();
    for (partition, mut handled) in by_partition {
        handled.sort();
        let hashes: Vec<String> = handled.into_iter().map(|(_, h)| h).collect();
        let switch = hashes.iter().position(|h| *h != v1).unwrap_or(hashes.len());
        assert!(
            hashes[switch..].iter().all(|h| *h == v2),
            "partition {partition}: a v1 after v2, or an unknown version"
        );
        versions.extend(hashes);
    }
    assert_eq!(versions, BTreeSet::from([v1.clone(), v2.clone()]));

    let status = &registry.statuses()[0];
    assert_eq!(
        (status.status.as_str(), status.hash.as_deref()),
        ("active", Some(v2.as_str()))
    );
    assert_eq!(status.reloads, 1);
    assert!(
        status.last_error.as_deref().unwrap().contains("echo.wasm"),
        "{status:?}"
    );
    let samples = parse_metrics(&telemetry.encode());
    let reloads = |result| {
        sample(
            &samples,
            "todo_eventd_plugin_reloads_total",
            &[("plugin", "echo"), ("result", result)],
        )
    };
    assert_eq!(reloads("loaded"), Some(1.0));
    assert!(reloads("rejected").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_plugin_is_quarantined_then_recovers() {
    let mut cluster = Harness::new(&TOPICS);
    cluster.config.plugins.quarantine_after = 3;
    cluster.config.plugins.quarantine_backoff = Duration::from_secs(10);
    cluster.config.plugins.quarantine_max_backoff = Duration::from_secs(60);
    // Event time is the test's: the plugin traps until 1 000 ms, which
    // the clock passes only when the test moves it.
    let (clock, hand) = Clock::manual(0);
    let flaky = format!("{}fail_until = 1000\n", mode("flaky"));
    let dir = plugin_dir(&[
        ("flaky", TEST_PLUGIN, Some(&flaky)),
        ("steady", TEST_PLUGIN, Some(&mode("echo"))),
    ]);
    let telemetry = Telemetry::default();
    let registry = open_registry(dir.path(), &telemetry).await;
    let pipeline = Pipeline {
        config: cluster.config.clone(),
        plugins: registry.clone(),
        telemetry: telemetry.clone(),
        clock,
    };
    // All for one user (so one partition, in order): five events while the
    // plugin fails — three traps quarantine it for 10 s of event time, two
    // are dead-lettered without calling it — then, 20 s later, the rest:
    // the first is a trial that succeeds.
    let total = 100;
    let lines: Vec<String> = (0..total)
        .map(|i| event(&format!("ev-{i:03}"), "u1", &format!("t{i}"), "created"))
        .collect();
    let seen = cluster
        .run_while(&pipeline, async {
            cluster.produce(&lines[..5]).await;
            eventually("five failures dead-lettered", || {
                telemetry.pipeline.dead_letters.get() >= 5
            })
            .await;
            hand.advance(Duration::from_secs(20));
            cluster.produce(&lines[5..]).await;
            read(
                &cluster.brokers,
                &["out-topic", "task-events.dlq"],
                |seen| seen.len() >= 2 * total,
                Duration::from_secs(1),
            )
            .await
        })
        .await;

    // The steady plugin handled everything; the flaky one handled or
    // dead-lettered each event exactly once.
    let of = |plugin: &str, topic: &str| -> Vec<&OwnedMessage> {
        seen.iter()
            .filter(|m| m.topic() == topic)
            .filter(|m| {
                header(m, "source.plugin").unwrap_or_default() == plugin
                    || header(m, "error.plugin").unwrap_or_default() == plugin
            })
            .collect()
    };
    assert_eq!(of("steady", "out-topic").len(), total);
    assert!(of("steady", "task-events.dlq").is_empty());
    let handled = of("flaky", "out-topic");
    let dead = of("flaky", "task-events.dlq");
    assert_eq!(handled.len() + dead.len(), total, "each event once");
    let ids: BTreeSet<String> = handled
        .iter()
        .map(|m| value(m)["event"].as_str().unwrap().to_owned())
        .chain(
            dead.iter()
                .map(|m| header(m, "source.event.id").unwrap_or_default()),
        )
        .collect();
    assert_eq!(ids.len(), total);
    let kinds: BTreeMap<String, usize> = dead.iter().fold(BTreeMap::new(), |mut kinds, m| {
        *kinds
            .entry(header(m, "error.kind").unwrap_or_default())
            .or_default() += 1;
        kinds
    });
    assert_eq!(kinds["panic"], 3, "{kinds:?}");
    assert_eq!(kinds["quarantined"], 2, "{kinds:?}");
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    // Once recovered it handles the rest: the last events all went through.
    let last: BTreeSet<String> = (total - 10..total).map(|i| format!("ev-{i:03}")).collect();
    let handled_ids: BTreeSet<String> = handled
        .iter()
        .map(|m| value(m)["event"].as_str().unwrap().to_owned())
        .collect();
    assert!(last.is_subset(&handled_ids));

    let samples = parse_metrics(&telemetry.encode());
    let flaky_sample = |name: &str| sample(&samples, name, &[("plugin", "flaky")]);
    assert_eq!(
        flaky_sample("todo_eventd_plugin_quarantines_total"),
        Some(1.0)
    );
    assert_eq!(flaky_sample("todo_eventd_plugin_quarantined"), Some(0.0));
    assert!(flaky_sample("todo_eventd_plugin_skipped_total").unwrap() >= 1.0);
    let statuses = registry.statuses();
    assert_eq!(statuses[0].name, "flaky");
    assert_eq!(statuses[0].status.as_str(), "active");
    assert_eq!(statuses[0].consecutive_failures, 0);
}

/// Connections to local `port` the server has accepted: established
/// sockets on that port with a file (an inode), which those still in the
/// kernel's accept queue do not have yet (`/proc/net/tcp`).
fn accepted_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f[1].ends_with(&local) && f[3] == "01" && f[9] != "0")
        .count()
}

/// What a kubelet's probe does: `GET /healthz` with a timeout of `patience`
/// for the whole exchange; the response, or why there is none.
fn probe(addr: std::net::SocketAddr, patience: Duration) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, patience)?;
    stream.set_read_timeout(Some(patience))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Whoever reaches the admin port is untrusted: clients that never finish
/// their headers hold at most `admin::MAX_CONNECTIONS` of the process's
/// descriptors, make way for newer connections, are cut off when their
/// headers are late, cannot make a probe wait behind them, and cannot hold
/// shutdown up. (Before, each was kept for as long as it liked — 1 100 of
/// them used up a daemon's 1 024 descriptors — and SIGTERM waited for all
/// of them to leave. Then, at the bound, new connections waited in the
/// kernel's queue: a client reconnecting fast kept a probe waiting about
/// 5 s for every 256 connections ahead of it, past a kubelet's timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_endpoint_holds_up_against_clients_that_never_finish() {
    use std::io::{Read as _, Write as _};
    const SLOW: usize = admin::MAX_CONNECTIONS + 100;
    // Well inside the 5 s a client has for its headers: a probe answered
    // within it did not wait for held connections to time out.
    const PATIENCE: Duration = Duration::from_secs(2);
    let listener = admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = plugin_dir(&[]);
    let telemetry = Telemetry::default();
    let admin = Admin {
        telemetry: telemetry.clone(),
        plugins: open_registry(dir.path(), &Telemetry::default()).await,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(admin.serve(listener, async {
        let _ = stopped.await;
    }));

    let connect = move |request: &[u8]| {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(request).unwrap();
        stream
    };
    let slow: Vec<_> = (0..SLOW)
        .map(|_| connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"))
        .collect();
    eventually("the newest are kept, the oldest closed for them", || {
        telemetry.admin_connections_cut.get() >= 100
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(accepted_on(addr.port()), admin::MAX_CONNECTIONS);

    // The oldest was closed without a response, the newest are still
    // open, and a probe gets through at once.
    let ended = |stream: &std::net::TcpStream| {
        let mut stream = stream.try_clone().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).map(|_| rest)
    };
    assert_eq!(ended(&slow[0]).expect("closed by the server"), b"");
    let newest = ended(&slow[SLOW - 1]).expect_err("still open");
    assert_eq!(newest.kind(), std::io::ErrorKind::WouldBlock, "{newest}");
    let reply = tokio::task::spawn_blocking(move || probe(addr, PATIENCE))
        .await
        .unwrap()
        .expect("a probe is answered while the slots are held");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("ok\n"), "{reply}");
    // Those left are cut off once their headers are late.
    let mut newest = slow[SLOW - 1].try_clone().unwrap();
    let cut = tokio::task::spawn_blocking(move || {
        newest
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut rest = Vec::new();
        newest.read_to_end(&mut rest).map(|_| rest)
    });
    let rest = cut
        .await
        .unwrap()
        .expect("a client that never finishes its headers is cut off");
    assert!(rest.is_empty(), "{rest:?}");

    // A client that keeps reconnecting: every probe is still answered.
    let stop_flood = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = std::thread::spawn({
        let stop_flood = stop_flood.clone();
        move || {
            let mut held = std::collections::VecDeque::new();
            while !stop_flood.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
                    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\n");
                    held.push_back(stream);
                }
                if held.len() > SLOW {
                    held.pop_front();
                }
            }
        }
    });
    for round in 0..10 {
        let reply = tokio::task::spawn_blocking(move || probe(addr, PATIENCE))
            .await
            .unwrap()
            .unwrap_or_else(|err| panic!("probe {round} under a flood: {err}"));
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_flood.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join().unwrap();
    drop(slow);

    // Shutdown, with connections just opened and their headers not yet
    // late: they get the grace, not their full header time.
    let _held: Vec<_> = (0..admin::MAX_CONNECTIONS)
        .map(|_| connect(b"GET /metrics HTTP/1.1\r\n"))
        .collect();
    eventually("the batch is taken", || {
        accepted_on(addr.port()) >= admin::MAX_CONNECTIONS
    })
    .await;
    let _ = stop.send(());
    let stopping = std::time::Instant::now();
    server.await.unwrap();
    let took = stopping.elapsed();
    assert!(
        took < admin::HEADER_TIMEOUT - Duration::from_secs(1),
        "shutdown took {took:?}: it waited for the clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_endpoint_reports_readiness_metrics_and_plugins() {
    let mut cluster = Harness::new(&TOPICS);
    cluster
        .config
        .kafka
        .properties
        .insert("statistics.interval.ms".into(), "200".into());
    let dir = plugin_dir(&[
        ("echo", TEST_PLUGIN, Some(&mode("echo"))),
        ("grumpy", TEST_PLUGIN, Some(&mode("panic"))),
    ]);
    let telemetry = Telemetry::default();
    let registry = open_registry(dir.path(), &telemetry).await;
    let listener = admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = Admin {
        telemetry: telemetry.clone(),
        plugins: registry.clone(),
    };
    tokio::spawn(admin.serve(listener, std::future::pending()));
    let get = move |path: &'static str| tokio::task::spawn_blocking(move || http_get(addr, path));

    // Before the pipeline joins the group: alive, not ready.
    assert_eq!(get("/healthz").await.unwrap().0, 200);
    let (status, body) = get("/readyz").await.unwrap();
    assert_eq!(status, 503);
    assert!(
        body.contains("waiting for a partition assignment"),
        "{body}"
    );

    let total = 30;
    let lines: Vec<String> = created_events(total);
    cluster.produce(&lines).await;
    let pipeline = Pipeline {
        config: cluster.config.clone(),
        plugins: registry.clone(),
        telemetry: telemetry.clone(),
        clock: Clock::System,
    };
    let metrics = cluster
        .run_while(&pipeline, async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while get("/readyz").await.unwrap().0 != 200 {
                assert!(tokio::time::Instant::now() < deadline, "never ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            eventually("every event handled, committed, no lag", || {
                let samples = parse_metrics(&telemetry.encode());
                let named = |name| samples.iter().filter(move |s: &&Sample| s.name == name);
                telemetry.pipeline.offsets_stored.get() >= total as u64
                    && named("todo_eventd_commit_duration_seconds_count").any(|s| s.value > 0.0)
                    && named("todo_eventd_consumer_lag")
                        .filter(|s| s.value == 0.0)
                        .count()
                        == 3
            })
            .await;
            get("/metrics").await.unwrap()
        })
        .await;
    let (status, text) = metrics;
    assert_eq!(status, 200);
    assert!(text.ends_with("# EOF\n"));
    let samples = parse_metrics(&text);
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    // Pipeline series.
    assert_eq!(value("todo_eventd_events_in_total", &[]), total as f64);
    assert_eq!(value("todo_eventd_outputs_total", &[]), total as f64);
    assert_eq!(value("todo_eventd_dead_letters_total", &[]), total as f64);
    assert!(value("todo_eventd_rebalances_total", &[("kind", "assign")]) >= 1.0);
    for partition in ["0", "1", "2"] {
        let lag = value(
            "todo_eventd_consumer_lag",
            &[("topic", "task-events"), ("partition", partition)],
        );
        assert_eq!(lag, 0.0, "partition {partition}");
    }
    assert!(value("todo_eventd_commit_duration_seconds_count", &[]) >= 1.0);
    assert!(
        value(
            "todo_eventd_commit_duration_seconds_bucket",
            &[("le", "+Inf")]
        ) >= 1.0
    );
    assert_eq!(value("todo_eventd_ready", &[]), 1.0);
    assert_eq!(value("todo_eventd_assigned_partitions", &[]), 3.0);
    // Plugin series.
    let echo = [("plugin", "echo")];
    assert_eq!(
        value(
            "todo_eventd_plugin_calls_total",
            &[("plugin", "echo"), ("handler", "on-event")]
        ),
        total as f64
    );
    assert_eq!(
        value("todo_eventd_plugin_call_duration_seconds_count", &echo),
        total as f64
    );
    assert!(value("todo_eventd_plugin_memory_high_water_bytes", &echo) > 0.0);
    assert_eq!(value("todo_eventd_plugin_quarantined", &echo), 0.0);
    // grumpy traps on every call: five failures in a row quarantine it
    // (the default; partitions racing may add one or two), and the rest
    // are dead-lettered without calling it.
    let grumpy = [("plugin", "grumpy")];
    let errors = value(
        "todo_eventd_plugin_errors_total",
        &[("plugin", "grumpy"), ("kind", "panic")],
    );
    assert!(errors >= 5.0, "{errors}");
    assert_eq!(value("todo_eventd_plugin_quarantined", &grumpy), 1.0);
    assert_eq!(
        value("todo_eventd_plugin_skipped_total", &grumpy) + errors,
        total as f64
    );
    // (Reload series appear once a file changes; see the hot-reload test.)

    // /plugins: name, version hash, file, status, last error.
    let (status, body) = get("/plugins").await.unwrap();
    assert_eq!(status, 200);
    let plugins: serde_json::Value = serde_json::from_str(&body).unwrap();
    let echo = &plugins[0];
    assert_eq!(echo["name"], "echo");
    assert_eq!(echo["status"], "active");
    assert_eq!(echo["hash"], Sandbox::content_hash(TEST_PLUGIN));
    assert!(echo["file"].as_str().unwrap().ends_with("echo.wasm"));
    assert!(echo["last_error"].is_null());
    let grumpy = &plugins[1];
    assert_eq!(grumpy["status"], "quarantined");
    assert!(
        grumpy["last_error"]
            .as_str()
            .unwrap()
            .contains("boom on event"),
        "{grumpy}"
    );
    assert!(grumpy["retry_at"].is_string());

    // After shutdown: not ready.
    let (status, body) = get("/readyz").await.unwrap();
    assert_eq!((status, body.as_str()), (503, "not ready: shutting down\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_left_without_partitions_is_ready_too() {
    // One input partition, two members: one gets it, the other stands by.
    // A stand-by must be ready, or a rolling update with more replicas than
    // partitions would never finish.
    let cluster = Harness::new(&TOPICS);
    cluster.broker.create_topic("solo", 1).unwrap();
    let mut config = cluster.config.clone();
    config.kafka.input_topics = vec!["solo".into()];
    let noop = plugin_dir(&[("noop", TEST_PLUGIN, None)]);
    let plugins = common::load(&sandbox(), noop.path()).await;
    let first = Pipeline::new(config.clone(), plugins.clone());
    let second = Pipeline::new(config, plugins);
    let (readiness_a, readiness_b) = (
        first.telemetry.readiness.clone(),
        second.telemetry.readiness.clone(),
    );
    let assigned = |p: &Pipeline| {
        parse_metrics(&p.telemetry.encode())
            .iter()
            .find(|s| s.name == "todo_eventd_assigned_partitions")
            .map(|s| s.value)
    };
    let counts = cluster
        .run_while(&first, async {
            cluster
                .run_while(&second, async {
                    eventually("both members ready", || {
                        readiness_a.is_ready() && readiness_b.is_ready()
                    })
                    .await;
                    [assigned(&first), assigned(&second)]
                })
                .await
        })
        .await;
    let mut counts = counts.map(Option::unwrap);
    counts.sort_by(f64::total_cmp);
    assert_eq!(counts, [0.0, 1.0]);
}

/// A file in the plugins directory written to without pause (a log, say)
/// cannot hold up hot reload: the rescan waits for quiet only so long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_without_pause_does_not_hold_up_a_reload() {
    let dir = plugin_dir(&[("echo", TEST_PLUGIN, Some(&mode("echo")))]);
    let telemetry = Telemetry::default();
    let registry = open_registry(dir.path(), &telemetry).await;
    let _watcher = watcher::watch(
        registry.clone(),
        Duration::from_millis(500),
        watcher::FALLBACK_RESCAN,
    )
    .await
    .unwrap();
    let notes = dir.path().join("notes.txt");
    let writer = tokio::spawn(async move {
        for n in 0.. {
            std::fs::write(&notes, format!("{n}\n")).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = with_custom_section(TEST_PLUGIN, "v2");
    let temporary = dir.path().join(".echo.wasm.part");
    std::fs::write(&temporary, &v2).unwrap();
    std::fs::rename(&temporary, dir.path().join("echo.wasm")).unwrap();
    let v2 = Sandbox::content_hash(&v2);
    eventually("v2 serving while notes.txt is written", || {
        registry.statuses()[0].hash.as_deref() == Some(v2.as_str())
    })
    .await;
    writer.abort();
}

/// A deploy that swaps the plugins directory under its path
/// (`ln -sfn releases/2 plugins`) is picked up at once, and the new
/// directory's own changes after it: the watch moves to the directory the
/// path leads to, rather than following the old one. The fallback rescan
/// is set to an hour, so only the watch can see either change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_directory_swapped_under_its_path_is_watched_anew() {
    let root = tempfile::tempdir().unwrap();
    let manifest = mode("echo");
    let release = |n: u32, bytes: &[u8]| {
        let dir = root.path().join(format!("releases/{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("echo.wasm"), bytes).unwrap();
        std::fs::write(dir.join("echo.toml"), &manifest).unwrap();
    };
    // What `ln -sfn` does: a new link, renamed over the old one.
    let point_at = |n: u32| {
        let link = root.path().join(".plugins.new");
        std::os::unix::fs::symlink(format!("releases/{n}"), &link).unwrap();
        std::fs::rename(&link, root.path().join("plugins")).unwrap();
    };
    release(1, TEST_PLUGIN);
    point_at(1);
    let telemetry = Telemetry::default();
    let registry = open_registry(&root.path().join("plugins"), &telemetry).await;
    let _watcher = watcher::watch(
        registry.clone(),
        Duration::from_millis(100),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let serving = |bytes: &[u8]| {
        let hash = Sandbox::content_hash(bytes);
        let registry = registry.clone();
        move || registry.statuses()[0].hash.as_deref() == Some(hash.as_str())
    };

    let v2 = with_custom_section(TEST_PLUGIN, "v2");
    release(2, &v2);
    point_at(2);
    eventually("v2 serving after the swap", serving(&v2)).await;

    let v3 = with_custom_section(TEST_PLUGIN, "v3");
    let temporary = root.path().join("releases/2/.echo.wasm.part");
    std::fs::write(&temporary, &v3).unwrap();
    std::fs::rename(&temporary, root.path().join("releases/2/echo.wasm")).unwrap();
    eventually("v3 serving, written into the new directory", serving(&v3)).await;

    // Removed and made again under the same path (the file system may give
    // it the old inode).
    let v4 = with_custom_section(TEST_PLUGIN, "v4");
    std::fs::remove_dir_all(root.path().join("releases/2")).unwrap();
    release(2, &v4);
    eventually("v4 serving, in the directory made again", serving(&v4)).await;
}
