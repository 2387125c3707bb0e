//! The inference worker the Soma host starts (see `soma_host::worker`).
//! Not meant to be run by hand, except as
//! `soma-inference-worker --check-confinement`, which reports whether this
//! machine's kernel confines it.

fn main() -> std::process::ExitCode {
    soma_host::worker::main()
}
