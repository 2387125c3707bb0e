//! The bounded `soma:encoder/log` import.

use crate::limits::HOST_FUEL_PER_BYTE;
use crate::log::{LOG_FUEL_PER_CALL, Level, LogRecord, MAX_LOG_MESSAGE_BYTES, MAX_LOG_RECORDS};
use crate::sandbox::{Sandbox, charge_fuel};
use wasmtime::component::{Linker, WasmStr};

/// Adds `soma:encoder/log` to `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
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
