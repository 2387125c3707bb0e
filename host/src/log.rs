//! What an encoder logs: the records the `soma:encoder/log` import keeps, bounded.

use serde::Serialize;
use wasmtime::component::{ComponentType, Lift};

/// Messages kept per call; later ones are counted and dropped.
pub const MAX_LOG_RECORDS: usize = 64;

/// Bytes kept per message; longer messages are cut at a character boundary.
pub const MAX_LOG_MESSAGE_BYTES: usize = 1024;

/// Fuel charged per `log` call on top of the bytes.
pub const LOG_FUEL_PER_CALL: u64 = 1_000;

/// Severity of a log message, as in the WIT `log.level` enum.
#[derive(ComponentType, Lift, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[component(enum)]
#[repr(u8)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Very detailed tracing.
    #[component(name = "trace")]
    Trace,
    /// Debugging detail.
    #[component(name = "debug")]
    Debug,
    /// Normal information.
    #[component(name = "info")]
    Info,
    /// Something looks wrong.
    #[component(name = "warn")]
    Warn,
    /// Something failed.
    #[component(name = "error")]
    Error,
}

/// One message an encoder logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogRecord {
    /// Severity.
    pub level: Level,
    /// The message, cut to [`MAX_LOG_MESSAGE_BYTES`].
    pub message: String,
}

/// The messages of one call.
#[derive(Debug, Default, Clone)]
pub(crate) struct LogBuffer {
    pub(crate) records: Vec<LogRecord>,
    pub(crate) dropped: u64,
}
