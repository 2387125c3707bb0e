//! Per-call resource limits and the limiter that enforces them.

use crate::Error;
use crate::error::LocalFailure;
use std::time::Duration;
use wasmtime::component::Component;

/// Resources one encoder call may use.
///
/// Fuel is the deterministic budget: running out is the encoder's fault and
/// every host agrees on it. Memory and tables are hard caps checked on
/// every growth; instances, memories and tables are counted as the
/// component is instantiated. The timeout is only a wall-clock safety net for
/// this host (see [`crate::Error::Timeout`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Fuel for the call (about one unit per wasm instruction).
    pub fuel: u64,
    /// Bytes of linear memory, summed over all memories of the instance.
    pub max_memory_bytes: u64,
    /// Elements per table.
    pub max_table_elements: u64,
    /// Core instances a component may create, and as many memories and
    /// tables ([`crate::Error::InstanceLimit`] past any of them).
    pub max_instances: u32,
    /// Wall-clock safety net.
    pub timeout: Duration,
}

impl Limits {
    /// Upper bound on [`Limits::max_memory_bytes`]: the pooling allocator
    /// reserves address space for this much per memory.
    pub const MEMORY_CEILING: u64 = 4 << 30;

    /// Longest wall-clock safety net: longer timeouts are cut to this.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 20_000_000_000,
            max_memory_bytes: 512 << 20,
            max_table_elements: 100_000,
            max_instances: 16,
            timeout: Duration::from_secs(60),
        }
    }
}

/// Bytes in a page of linear memory (the engine has no custom page sizes).
const WASM_PAGE_BYTES: u64 = 64 << 10;

impl Limits {
    /// Bytes of linear memory a store may hold in all:
    /// [`Limits::max_memory_bytes`], at most [`Limits::MEMORY_CEILING`].
    fn memory_budget(&self) -> u64 {
        self.max_memory_bytes.min(Limits::MEMORY_CEILING)
    }

    /// Refuses, as the encoder's [`Error::MemoryLimit`], to instantiate
    /// `component` when one of its linear memories starts out larger than
    /// a store may hold.
    ///
    /// The pooling allocator makes a memory's initial pages accessible
    /// before it asks the store's limiter. Usually that costs nothing and
    /// the limiter refuses next, but a host that commits memory strictly can
    /// fail the mapping itself: a local failure where every other host
    /// reports the limit. Checked here first, no single memory larger than
    /// the budget is ever mapped. Several memories that fit one by one but
    /// not together are still refused by the limiter, after the one that
    /// goes over was mapped: at most twice the budget in all, so a host
    /// that commits strictly may still fail there. (The exact sum would
    /// need the component parsed; wasmtime reports only the largest memory
    /// and the count.)
    pub(crate) fn check_initial_memory(&self, component: &Component) -> Result<(), Error> {
        // `None`: the component instantiates imported modules, whose
        // memories only the limiter sees. Encoders cannot import modules.
        let largest_pages = component
            .resources_required()
            .and_then(|r| r.max_initial_memory_size)
            .unwrap_or(0);
        match largest_pages.saturating_mul(WASM_PAGE_BYTES) > self.memory_budget() {
            true => Err(Error::MemoryLimit {
                limit_bytes: self.max_memory_bytes,
            }),
            false => Ok(()),
        }
    }
}

/// Fuel charged per byte a guest hands to the host (a log message, tensor
/// data, a name), before the host reads it.
pub const HOST_FUEL_PER_BYTE: u64 = 1;

/// Enforces [`Limits`] inside a store and remembers whether it refused
/// anything, so that the resulting trap can be reported as a limit.
pub(crate) struct Limiter {
    max_memory_bytes: usize,
    max_table_elements: usize,
    max_instances: usize,
    pub(crate) memory_in_use: usize,
    pub(crate) refused: bool,
}

impl Limiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        let clamp = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Limiter {
            max_memory_bytes: clamp(limits.memory_budget()),
            max_table_elements: clamp(limits.max_table_elements),
            max_instances: clamp(u64::from(limits.max_instances)),
            memory_in_use: 0,
            refused: false,
        }
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // wasmtime asks before it checks the memory's own maximum: a growth
        // past it is refused (a limit every host shares) and holds nothing.
        if maximum.is_some_and(|maximum| desired > maximum) {
            self.refused = true;
            return Ok(false);
        }
        let total = self.memory_in_use - current.min(self.memory_in_use) + desired;
        if total > self.max_memory_bytes {
            self.refused = true;
            return Ok(false);
        }
        self.memory_in_use = total;
        Ok(true)
    }

    /// A growth past a limit fails as wasm says (`memory.grow` gives -1);
    /// one this host failed ends the call at once as a local failure, so
    /// that the guest cannot go on to an outcome that only looks like its
    /// own.
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        match growth_past_a_limit(&error) {
            true => {
                self.refused = true;
                Ok(())
            }
            false => Err(LocalFailure(format!("growing linear memory failed: {error:#}")).into()),
        }
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_table_elements {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.refused = true;
        Ok(())
    }

    fn instances(&self) -> usize {
        self.max_instances
    }

    fn tables(&self) -> usize {
        self.max_instances
    }

    fn memories(&self) -> usize {
        self.max_instances
    }
}

/// Whether a failed `memory.grow` went past a limit every host shares: the
/// memory type's maximum or the engine's (wasmtime's own words for the two;
/// the engine version is pinned, and a test holds it to them). Anything
/// else is this host's operating system refusing pages.
fn growth_past_a_limit(error: &wasmtime::Error) -> bool {
    let text = error.to_string();
    text.contains("memory growth exceeds memory type's limits")
        || text.contains("Memory maximum size exceeded")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn a_memory_that_starts_larger_than_the_budget_is_refused_before_instantiation() {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let engine = wasmtime::Engine::new(&config).unwrap();
        let component = |path: &str| Component::new(&engine, std::fs::read(path).unwrap()).unwrap();
        let oversized = component(soma_examples_artifacts::OVERSIZED_MEMORY);
        let err = Limits::default().check_initial_memory(&oversized);
        assert!(
            matches!(err, Err(Error::MemoryLimit { limit_bytes }) if limit_bytes == 512 << 20),
            "{err:?}"
        );
        // Its 768 MiB fit a budget of 1 GiB, and above the ceiling the
        // ceiling is the budget.
        for max_memory_bytes in [1 << 30, u64::MAX] {
            let limits = Limits {
                max_memory_bytes,
                ..Limits::default()
            };
            assert!(limits.check_initial_memory(&oversized).is_ok());
        }
        // The limiter allows a total equal to the limit; so does the check.
        let exact = Limits {
            max_memory_bytes: 768 << 20,
            ..Limits::default()
        };
        assert!(exact.check_initial_memory(&oversized).is_ok());
        let tight = Limits {
            max_memory_bytes: (768 << 20) - 1,
            ..Limits::default()
        };
        assert!(tight.check_initial_memory(&oversized).is_err());
        let hash = component(soma_examples_artifacts::HASH_ENCODER);
        assert!(Limits::default().check_initial_memory(&hash).is_ok());
    }

    #[test]
    fn a_growth_past_a_limit_is_refused_and_any_other_failure_is_the_hosts() {
        for words in [
            "memory growth exceeds memory type's limits",
            "Memory maximum size exceeded",
        ] {
            let mut limiter = Limiter::new(&Limits::default());
            limiter
                .memory_grow_failed(wasmtime::format_err!("{words}"))
                .unwrap();
            assert!(limiter.refused, "{words}");
        }
        // Wasmtime's own words, from a real growth past a memory's type.
        let engine = wasmtime::Engine::default();
        let mut store = wasmtime::Store::new(&engine, Limiter::new(&Limits::default()));
        store.limiter(|l| l);
        let memory =
            wasmtime::Memory::new(&mut store, wasmtime::MemoryType::new(1, Some(2))).unwrap();
        assert!(memory.grow(&mut store, 5).is_err());
        assert!(store.data().refused);

        let mut limiter = Limiter::new(&Limits::default());
        let enomem = std::io::Error::from_raw_os_error(12);
        let error = limiter.memory_grow_failed(enomem.into()).unwrap_err();
        assert!(!limiter.refused);
        assert!(error.downcast_ref::<LocalFailure>().is_some(), "{error}");
    }

    #[test]
    fn memory_is_summed_across_memories() {
        let mut limiter = Limiter::new(&Limits {
            max_memory_bytes: 100,
            ..Limits::default()
        });
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert!(!limiter.refused);
        assert!(!limiter.memory_growing(40, 41, None).unwrap());
        assert!(limiter.refused);
    }

    #[test]
    fn a_growth_past_the_memorys_own_maximum_holds_nothing() {
        let mut limiter = Limiter::new(&Limits::default());
        assert!(limiter.memory_growing(0, 10, Some(20)).unwrap());
        assert!(!limiter.memory_growing(10, 30, Some(20)).unwrap());
        assert!(limiter.refused);
        assert_eq!(limiter.memory_in_use, 10);
    }
}
