//! todo-eventd: consumes todo-app events from Kafka and dispatches each one
//! to sandboxed WebAssembly component plugins.
//!
//! - [`event`] decodes the shapes producers send into one typed event;
//! - [`world`] is the `todo:plugin` WIT world's bindings;
//! - [`sandbox`] runs plugins under wasmtime with limits;
//! - [`plugin`] loads and validates a plugins directory;
//! - [`state`] holds plugin state and timers per partition;
//! - [`dispatch`] runs events and timers through the plugins of a partition;
//! - [`offline`] is the `plugins test` bench.

pub mod dispatch;
pub mod event;
pub mod offline;
pub mod plugin;
pub mod sandbox;
pub mod state;
pub mod world;
