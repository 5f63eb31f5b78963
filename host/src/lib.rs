//! todo-eventd: consumes todo-app events from Kafka and dispatches each one
//! to sandboxed WebAssembly component plugins.
//!
//! - [`event`] decodes the shapes producers send into one typed event;
//! - [`world`] is the `todo:plugin` WIT world's bindings;
//! - [`sandbox`] runs plugins under wasmtime with limits;
//! - [`plugin`] loads and validates a plugins directory;
//! - [`state`] holds plugin state and timers per partition;
//! - [`dispatch`] runs events and timers through the plugins of a partition;
//! - [`offline`] is the `plugins test` bench;
//! - [`pipeline`] is the daemon: Kafka in, plugins, Kafka out;
//! - [`kafka`] holds client settings, topic creation and the embedded broker;
//! - [`config`] is the validated configuration, [`cli`] the command line;
//! - [`telemetry`] holds the metrics and readiness, [`admin`] serves them;
//! - [`blocking`] runs the daemon's own blocking work on threads no plugin
//!   can take;
//! - [`clock`], [`units`] and [`text`] are the small shared pieces: event
//!   time, sizes and durations as operators write them, and bounded text
//!   from untrusted input.

pub mod admin;
pub mod blocking;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod descriptors;
pub mod dispatch;
pub mod event;
pub mod files;
pub mod heap;
pub mod kafka;
pub mod kit;
pub mod lines;
pub mod offline;
pub mod pipeline;
pub mod plugin;
pub mod private_dir;
pub mod sandbox;
pub mod state;
pub mod telemetry;
pub mod text;
pub mod units;
pub mod world;
