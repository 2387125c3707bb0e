//! Routing (DESIGN.md, "Execution", step 7): which encoders a job's shard
//! favours.
//!
//! The network's router — a cheap, pure-WebAssembly encoder named in
//! genesis — embeds each submission as it is applied. Pure wasm under fuel
//! is bit-identical on every machine, so every validator computes the same
//! vector; its signs against `region_bits` fixed hyperplanes (drawn from
//! a protocol constant) give the job's region. Each encoder keeps an
//! exponentially decayed performance score per region, updated when a job
//! of that region is decided; shard selection weights an encoder by its
//! bond times its score there (never below an exploration floor), so
//! encoders that do well on some kind of data are chosen more often for
//! it. Without a router every job is in the one region 0, and the scores
//! still learn which encoders do well at all.

use crate::params::{BPS, Parameters};
use crate::scoring::ONE;
use soma_host::package::VerifiedPackage;
use soma_host::{CompiledCache, Digest, Encoder, Engine, Limits, Seed};

/// Most hyperplanes (and so 2⁸ = 256 regions).
pub const MAX_REGION_BITS: u8 = 8;

/// Most fuel the router may spend on one submission, whatever its manifest
/// allows: far below what any machine runs into the wall-clock safety net
/// in, so that running out of fuel, never time, ends a router that loops.
pub const ROUTER_FUEL: u64 = 1_000_000_000;

/// Why a router cannot be used, or could not route a submission here.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Genesis names a router and none was given, or another one was.
    #[error("genesis names router {expected:?}; given {given:?}")]
    Mismatch {
        /// The genesis router, if any.
        expected: Option<Digest>,
        /// The router given, if any.
        given: Option<Digest>,
    },
    /// The router package has models: its output would depend on the CPU.
    #[error("router {0} ships models; a router must be pure WebAssembly")]
    NotPureWasm(Digest),
    /// The engine does not meter fuel: the router's cost would be time,
    /// which differs between validators.
    #[error("a router needs an engine that meters fuel")]
    Unmetered,
    /// The router's vectors do not have the network's dimension (the
    /// hyperplanes have).
    #[error("router {package} gives {dimension}-dimensional vectors; the network's are {expected}")]
    Dimension {
        /// The router package.
        package: Digest,
        /// What its manifest says.
        dimension: u32,
        /// The network's dimension.
        expected: u16,
    },
    /// The router component does not load.
    #[error("router {package} does not load: {source}")]
    Load {
        /// The router package.
        package: Digest,
        /// Why.
        source: soma_host::Error,
    },
    /// This node could not run the router (a host failure, not the
    /// router's): apply stops without writing, to be tried again.
    #[error("the router could not run on this node: {0}")]
    Local(soma_host::Error),
}

/// The network's router, loaded.
pub struct Router {
    package: Digest,
    encoder: Encoder,
    fuel: u64,
    planes: Planes,
}

impl Router {
    /// Loads the router `package` (pure wasm, of the network's dimension)
    /// into `engine`.
    pub fn load(
        engine: &Engine,
        package: &VerifiedPackage,
        cache: Option<&CompiledCache>,
        parameters: &Parameters,
    ) -> Result<Router, RouterError> {
        if !engine.meters_fuel() {
            return Err(RouterError::Unmetered);
        }
        let digest = package.digest();
        let manifest = package.manifest();
        if package.models().next().is_some() {
            return Err(RouterError::NotPureWasm(digest));
        }
        if manifest.dimension != u32::from(parameters.dimension) {
            return Err(RouterError::Dimension {
                package: digest,
                dimension: manifest.dimension,
                expected: parameters.dimension,
            });
        }
        let encoder = engine
            .load_package(package, cache)
            .map_err(|source| RouterError::Load {
                package: digest,
                source,
            })?;
        Ok(Router {
            package: digest,
            encoder,
            fuel: manifest.fuel_limit,
            planes: Planes::new(usize::from(parameters.dimension)),
        })
    }

    /// The router's package digest.
    pub fn package(&self) -> Digest {
        self.package
    }

    /// The region of `data` among `1 << bits`; `None` if the router fails
    /// on it deterministically (out of fuel, refused, trapped) or gives the
    /// zero vector, which no plane separates; an error if this node failed
    /// to run it.
    pub(crate) fn region(&self, data: &[u8], bits: u8) -> Result<Option<u16>, RouterError> {
        if bits == 0 {
            return Ok(Some(0));
        }
        let limits = Limits {
            fuel: self.fuel.min(ROUTER_FUEL),
            ..Limits::default()
        };
        let seed = Seed(blake3::derive_key("soma/router-sandbox/v1", data));
        let batch = [data.to_vec()];
        let mut outcome = self.encoder.embed(&batch, &limits, seed);
        if matches!(&outcome, Err(e) if !e.is_deterministic()) {
            outcome = self.encoder.embed(&batch, &limits, seed);
        }
        match outcome {
            Ok(embeddings) => {
                let vector = &embeddings.vectors[0];
                Ok(vector
                    .iter()
                    .any(|&x| x != 0.0)
                    .then(|| self.planes.region(bits, vector)))
            }
            Err(e) if e.is_deterministic() => Ok(None),
            Err(e) => Err(RouterError::Local(e)),
        }
    }
}

/// The hyperplanes regions are cut by: for each of [`MAX_REGION_BITS`]
/// planes, a normal with coordinates ±1 drawn from a fixed seed (a
/// protocol constant: rebuilding the router does not move them). Drawn
/// once, when the router is loaded; a region of `bits` bits uses the first
/// `bits` planes.
struct Planes {
    /// Sign bits, plane after plane, `per_plane` bytes each.
    signs: Vec<u8>,
    per_plane: usize,
}

impl Planes {
    fn new(dimension: usize) -> Planes {
        let per_plane = dimension.div_ceil(8);
        let mut signs = vec![0u8; per_plane * usize::from(MAX_REGION_BITS)];
        blake3::Hasher::new_derive_key("soma/routing-planes/v1")
            .finalize_xof()
            .fill(&mut signs);
        Planes { signs, per_plane }
    }

    /// The region of `vector`: bit `b` says whether it lies on the
    /// positive side of plane `b`. Integer arithmetic on the host's 2⁻¹⁶
    /// grid.
    fn region(&self, bits: u8, vector: &[f32]) -> u16 {
        (0..usize::from(bits.min(MAX_REGION_BITS))).fold(0u16, |region, b| {
            let plane = &self.signs[b * self.per_plane..(b + 1) * self.per_plane];
            let dot: i64 = vector
                .iter()
                .take(self.per_plane * 8)
                .enumerate()
                .map(|(k, &x)| {
                    let x = crate::runner::fixed(x) as i64;
                    if plane[k / 8] >> (k % 8) & 1 == 1 {
                        x
                    } else {
                        -x
                    }
                })
                .sum();
            region | (u16::from(dot > 0) << b)
        })
    }
}

/// Regions an encoder keeps scores for.
pub(crate) fn regions(parameters: &Parameters, router: Option<&Digest>) -> usize {
    match router {
        Some(_) => 1 << parameters.region_bits,
        None => 1,
    }
}

/// A new encoder's scores: [`ONE`] in every region, as if it had done as
/// well as the best.
pub(crate) fn initial_performance(regions: usize) -> Vec<u32> {
    vec![ONE as u32; regions]
}

/// Moves `score` toward `sample` (both fixed point, at most [`ONE`]) by
/// `decay_bps` of the difference.
pub(crate) fn update(score: u32, sample: u32, decay_bps: u16) -> u32 {
    let (score, sample) = (i64::from(score), i64::from(sample));
    // Rounded down either way, so a score falling toward 0 reaches it.
    let moved = ((sample - score) * i64::from(decay_bps)).div_euclid(i64::from(BPS));
    (score + moved) as u32
}

/// An encoder's weight in shard selection for a region where it scores
/// `score`: its bond, scaled by the score but never below `floor`.
pub(crate) fn selection_weight(bond: u64, score: u32, floor: u32) -> u64 {
    let factor = u128::from(score.max(floor).min(ONE as u32));
    (u128::from(bond) * factor / ONE as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_a_function_of_the_vector() {
        let v: Vec<f32> = (0..384)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 400.0)
            .collect();
        let minus: Vec<f32> = v.iter().map(|x| -x).collect();
        let planes = Planes::new(384);
        let region = planes.region(8, &v);
        assert_eq!(planes.region(8, &v), region);
        // The opposite vector is on the other side of every plane (none
        // of these dot products is zero).
        assert_eq!(planes.region(8, &minus), !region & 0xff);
        assert_eq!(planes.region(3, &v), region & 0b111);
        // Vectors along different axes fall in many different regions.
        let axis = |k: usize| {
            let mut v = vec![0.0f32; 384];
            v[k] = 1.0;
            planes.region(8, &v)
        };
        let regions: std::collections::BTreeSet<u16> = (0..384).map(axis).collect();
        assert!(regions.len() > 64, "{}", regions.len());
    }

    #[test]
    fn scores_decay_toward_samples_and_weights_keep_a_floor() {
        let one = ONE as u32;
        // 65 536 − 13 107.2, rounded down.
        assert_eq!(update(one, 0, 2_000), 52_428);
        assert_eq!(update(0, one, 2_000), one / 5);
        assert_eq!(update(one / 2, one / 2, 2_000), one / 2);
        assert_eq!(update(one, 0, BPS), 0);
        let mut score = one;
        for _ in 0..200 {
            score = update(score, 0, 1_000);
        }
        assert_eq!(score, 0);
        assert_eq!(selection_weight(1_000, one, one / 4), 1_000);
        assert_eq!(selection_weight(1_000, one / 2, one / 4), 500);
        assert_eq!(selection_weight(1_000, 0, one / 4), 250);
        assert_eq!(selection_weight(u64::MAX, one, 0), u64::MAX);
    }
}
