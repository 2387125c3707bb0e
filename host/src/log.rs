//! The bounded `soma:encoder/log` import.

use crate::limits::HOST_FUEL_PER_BYTE;
use crate::sandbox::Sandbox;
use crate::sandbox::charge_fuel;
use serde::Serialize;
use wasmtime::component::{ComponentType, Lift, Linker, WasmStr};

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

/// Adds `soma:encoder/log` to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    linker.instance("soma:encoder/log@0.1.0")?.func_wrap(
        "log",
        |mut store, (level, message): (Level, WasmStr)| {
            let text = message.to_str(&store)?;
            let cost = LOG_FUEL_PER_CALL.saturating_add(text.len() as u64 * HOST_FUEL_PER_BYTE);
            let message = truncate(&text, MAX_LOG_MESSAGE_BYTES).to_owned();
            charge_fuel(&mut store, cost)?;
            let log = &mut store.data_mut().log;
            if log.records.len() < MAX_LOG_RECORDS {
                log.records.push(LogRecord { level, message });
            } else {
                log.dropped += 1;
            }
            Ok(())
        },
    )
}

/// The longest prefix of `s` of at most `max` bytes ending on a character
/// boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("hi", 10), "hi");
    }
}
