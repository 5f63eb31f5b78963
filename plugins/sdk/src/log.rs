//! Log macros: `info!("task {id} done")` writes a line to the daemon's log,
//! tagged with the plugin and the event being handled.

/// Logs at `trace`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::host::log($crate::host::LogLevel::Trace, &::std::format!($($arg)*)) };
}

/// Logs at `debug`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::host::log($crate::host::LogLevel::Debug, &::std::format!($($arg)*)) };
}

/// Logs at `info`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::host::log($crate::host::LogLevel::Info, &::std::format!($($arg)*)) };
}

/// Logs at `warn`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::host::log($crate::host::LogLevel::Warn, &::std::format!($($arg)*)) };
}

/// Logs at `error`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::host::log($crate::host::LogLevel::Error, &::std::format!($($arg)*)) };
}
