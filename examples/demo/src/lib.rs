//! A Soma network of the example encoders on this machine: what `cargo
//! xtask demo` runs and the localnet benchmark measures.
//!
//! [`Network::start`] signs the example encoders into packages (MiniLM-L6
//! and MiniLM-L3 with their ONNX models, the pure-wasm hash encoder, the
//! dishonest random encoder, and the router), compiles them once into the
//! cache the validators share, writes a genesis and starts a `soma node`
//! process per validator on 127.0.0.1.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use soma_crypto::SecretKey;
use soma_host::package::{EncoderMeta, Package, VerifiedPackage};
use soma_host::{CompiledCache, Engine, Limits};
use soma_validator::client::ApiClient;
use soma_validator::config::{ClientFile, Localnet, localnet_compiled_cache, write_localnet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `work` in a new temporary directory named `prefix…`, removed
/// afterwards unless `work` failed: then it is kept, and its path said, so
/// the validators' logs can be read.
pub fn in_scratch_dir<T>(prefix: &str, work: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    let result = work(dir.path());
    if result.is_err() {
        let kept = dir.keep();
        eprintln!("the network's files and logs are in {}", kept.display());
    }
    result
}

/// A running network of the example encoders.
pub struct Network {
    /// The validator processes.
    pub nodes: Nodes,
    /// Where its genesis, configurations and logs are.
    pub dir: PathBuf,
    /// The router's package, then the encoders'.
    pub packages: Vec<(PathBuf, VerifiedPackage)>,
    /// What a client needs: the APIs, an API key and its account.
    pub client: ClientFile,
    /// Each validator's API, with the API key.
    pub apis: Vec<ApiClient>,
}

impl Network {
    /// Starts `validators` validators (the `soma` executable) with their
    /// files under `dir`; returns once every API answers.
    pub fn start(soma: &Path, dir: &Path, validators: usize) -> Result<Network> {
        let net = dir.join("net");
        let packages = example_packages(&dir.join("packages"), &net)?;
        let paths: Vec<PathBuf> = packages.iter().map(|(path, _)| path.clone()).collect();
        let (router, encoders) = paths.split_first().expect("a router and encoders");
        let configs = write_localnet(&Localnet {
            dir: &net,
            validators,
            base_port: free_ports(2 * validators as u16)?,
            encoders,
            router: Some(router),
        })?;
        let client: ClientFile =
            serde_json::from_str(&std::fs::read_to_string(net.join("client.json"))?)?;
        let mut nodes = Nodes::start(soma, &configs)?;
        let apis: Vec<ApiClient> = client
            .apis
            .iter()
            .map(|&a| api(a, Some(client.api_key.clone())))
            .collect();
        wait(
            &format!("starting {validators} validators"),
            Duration::from_secs(180),
            &mut nodes,
            || {
                apis.iter()
                    .all(|a| a.get("/health").is_ok_and(|r| r.status == 200))
            },
        )?;
        Ok(Network {
            nodes,
            dir: net,
            packages,
            client,
            apis,
        })
    }
}

/// Signs the example encoders into packages in `dir` and compiles them
/// into the cache shared by the validators of a localnet to be written to
/// `net`: the router's package first, then the encoders'.
pub fn example_packages(dir: &Path, net: &Path) -> Result<Vec<(PathBuf, VerifiedPackage)>> {
    println!("Signing the example encoders into packages...");
    sign_packages(dir, &localnet_compiled_cache(net))
}

/// A model file in a package: (name, bytes).
type Model = (String, Vec<u8>);

/// Compiles (and pre-initialises) each example component into `cache`,
/// which the validators share so that none of them compiles during a job,
/// and signs it as the encoder its `info()` says it is (as `soma-host
/// sign` does). The router first, then the encoders: (package file,
/// package).
fn sign_packages(dir: &Path, cache: &Path) -> Result<Vec<(PathBuf, VerifiedPackage)>> {
    std::fs::create_dir_all(dir)?;
    let models = PathBuf::from(
        std::env::var_os("SOMA_MODELS_DIR")
            .context("SOMA_MODELS_DIR is not set; run `cargo xtask setup`")?,
    );
    let model = |file: &str| -> Result<Model> {
        let path = models.join(file);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read {}; run `cargo xtask setup`", path.display()))?;
        Ok((file.to_string(), bytes))
    };
    use soma_examples_artifacts as artifacts;
    let list: Vec<(&str, Vec<Model>)> = vec![
        (artifacts::ROUTER_ENCODER, vec![]),
        (
            artifacts::MINILM_L6,
            vec![model("all-minilm-l6-v2-int8.onnx")?],
        ),
        (
            artifacts::MINILM_L3,
            vec![model("paraphrase-minilm-l3-v2.onnx")?],
        ),
        (artifacts::HASH_ENCODER, vec![]),
        (artifacts::RANDOM_ENCODER, vec![]),
    ];
    let cache = CompiledCache::open(cache)?;
    let engine = Engine::new()?;
    let author = SecretKey::generate()?;
    let bar = ProgressBar::new(list.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} compiling {msg} [{pos}/{len}] {elapsed}")
            .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let mut packages = Vec::new();
    for (path, models) in list {
        let component = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
        let file_name = Path::new(path).file_name().unwrap_or_default();
        bar.set_message(file_name.to_string_lossy().into_owned());
        // Compiled under the default limits, the same key the package's
        // load (on the default fuel limit) finds in the cache.
        let (encoder, _) = engine
            .load_cached(&component, &cache)
            .with_context(|| format!("cannot load {path}"))?;
        let meta = EncoderMeta::from_info(encoder.info(), Limits::default().fuel);
        let package = Package::sign(&author, &meta, component, models)?;
        engine
            .load_package(&package, Some(&cache))
            .with_context(|| format!("cannot load the package of {}", meta.name))?;
        let file = dir.join(format!("{}.somapkg", meta.name));
        std::fs::write(&file, package.encode())?;
        packages.push((file, package));
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("Signed and compiled {} packages.", packages.len());
    Ok(packages)
}

/// The validator processes, killed when dropped.
pub struct Nodes {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Nodes {
    fn start(soma: &Path, configs: &[PathBuf]) -> Result<Nodes> {
        let mut nodes = Nodes {
            children: Vec::new(),
            logs: Vec::new(),
        };
        for config in configs {
            let log = config.with_file_name("node.log");
            let child = Command::new(soma)
                .args(["node", "--config"])
                .arg(config)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .with_context(|| format!("cannot start {}", soma.display()))?;
            nodes.children.push(child);
            nodes.logs.push(log);
        }
        Ok(nodes)
    }

    /// An error naming the first validator that exited, with its log's end.
    pub fn check(&mut self) -> Result<()> {
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&self.logs[i]).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                bail!(
                    "validator {i} exited ({status}); the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    /// Kills every validator and waits for it.
    pub fn stop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client of the API at `address` (with an API key, if given).
fn api(address: SocketAddr, key: Option<String>) -> ApiClient {
    ApiClient::new(address, key, Duration::from_secs(300))
}

/// A spinner showing `message` and the time spent.
pub fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner()
        .with_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a valid template"),
        )
        .with_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Waits until `done`, showing `what`; fails if a validator exits or
/// `timeout` passes.
pub fn wait(
    what: &str,
    timeout: Duration,
    nodes: &mut Nodes,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    let bar = spinner(what);
    let started = Instant::now();
    while !done() {
        if let Err(e) = nodes.check() {
            bar.finish_and_clear();
            return Err(e);
        }
        if started.elapsed() > timeout {
            bar.finish_and_clear();
            bail!("{what}: not done after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
    Ok(())
}

/// A base port with `n` free ports after it, below Linux's ephemeral range
/// (32768 up), where an outgoing connection could take a port between
/// this check and the validator's bind.
fn free_ports(n: u16) -> Result<u16> {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (0..100)
        .map(|k| start + k * n)
        .find(|&base| (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .context("no free ports on 127.0.0.1")
}
