//! Global feature moments through secure aggregation, for the job-given standardisation of
//! [`crate::data`]: each provider inputs `(n_k, Σx, Σx²)` of its rows (per feature) to one
//! SecAgg+ round, and the job derives every feature's global mean and standard deviation
//! ([`Standardisation::Given`]) from the sum — no party sees another's statistics.
//!
//! **Encoding**: fixed point with [`FRACTION_BITS`] fractional bits, two's complement in
//! `Z_{2^64}` (so negative sums add correctly): `enc(v) = round(v · 2^20) mod 2^64`, decoded
//! as a signed integer. The sum is exact (each client's rounding error is at most `2^-21` per
//! element) as long as every client's encoded magnitude is below `2^63 / n`
//! ([`moments_input`] refuses larger ones: scale the column first). Layout:
//! `[n_k, Σx_0 … Σx_{d−1}, Σx_0² … Σx_{d−1}²]`, `2d + 1` elements.
//!
//! **What the aggregator learns**: the total row count and, per feature, the sum and the sum
//! of squares over the surviving providers — hence the global mean and variance, which the
//! job then gives every provider. That is the purpose of the round; no provider's own count
//! or moments are revealed beyond what the sum shows (as for any secure sum, with two
//! providers one of them learns the other's from the result). A constant feature (variance
//! 0) gets scale 1.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

use crate::data::{Dataset, Standardisation};
use crate::error::TrainError;
use crate::fedavg::{AggregationConfig, LocalProvider, SumInput, secure_sum_in_process};
use crate::{Modulus, SecAggConfig};

/// Fractional bits of the fixed-point encoding.
pub const FRACTION_BITS: u32 = 20;

fn scale() -> f64 {
    f64::from(1u32 << FRACTION_BITS)
}

/// The SecAgg parameters of the moments round of job `job` for `clients` providers of
/// `features` features (complete graph unless `aggregation.neighbours` says otherwise, as for
/// a FedAvg round). Errors: [`TrainError::Config`] (the ring must be `Z_{2^64}`).
pub fn moments_config(
    job: &[u8; 32],
    clients: u32,
    features: usize,
    aggregation: &AggregationConfig,
) -> Result<SecAggConfig, TrainError> {
    if aggregation.modulus != Modulus::Pow64 {
        return Err(TrainError::Config(
            "secure moments need the 2^64 ring".into(),
        ));
    }
    let mut h = Sha256::new();
    h.update(b"tessera-fl feature moments");
    h.update(job);
    let cfg = SecAggConfig {
        session_id: h.finalize().into(),
        clients,
        dim: u32::try_from(2 * features + 1)
            .map_err(|_| TrainError::Config(format!("{features} features")))?,
        neighbours: match aggregation.neighbours {
            Some(k) if k >= 3 && k % 2 == 1 && k < clients => k,
            _ => clients,
        },
        threshold: aggregation.threshold,
        modulus: Modulus::Pow64,
    };
    cfg.validate()
        .map_err(|e| TrainError::Config(e.to_string()))?;
    Ok(cfg)
}

/// One provider's input to the moments round (layout in the module docs), for a round of
/// `clients` providers. Errors: [`TrainError::Config`] if a sum is too large to encode.
pub fn moments_input(data: &Dataset, clients: u32) -> Result<Vec<u64>, TrainError> {
    let bound = (i64::MAX / i64::from(clients.max(1))) as f64;
    let enc = |v: f64| -> Result<u64, TrainError> {
        let f = (v * scale()).round();
        if !f.is_finite() || f.abs() >= bound {
            return Err(TrainError::Config(format!(
                "a feature sum of {v:e} is too large for the fixed-point moments: scale the column"
            )));
        }
        Ok(f as i64 as u64)
    };
    let x = data.x();
    let mut out = Vec::with_capacity(2 * data.features() + 1);
    out.push(data.rows() as u64);
    for col in x.columns() {
        out.push(enc(col.sum())?);
    }
    for col in x.columns() {
        out.push(enc(col.iter().map(|v| v * v).sum())?);
    }
    Ok(out)
}

/// The global mean and standard deviation of each of `features` features from the moments
/// round's sum. Errors: [`TrainError::Config`] for a sum of the wrong length or no rows.
pub fn standardisation_from_sum(
    sum: &[u64],
    features: usize,
) -> Result<Standardisation, TrainError> {
    if sum.len() != 2 * features + 1 {
        return Err(TrainError::Config(format!(
            "a moments sum of {} elements for {features} features",
            sum.len()
        )));
    }
    let n = match sum.first() {
        Some(&n) if n > 0 => n as f64,
        _ => return Err(TrainError::Config("the moments sum holds no rows".into())),
    };
    let dec = |u: u64| u as i64 as f64 / scale();
    let (sums, squares) = sum[1..].split_at(features);
    let mean: Vec<f64> = sums.iter().map(|&s| dec(s) / n).collect();
    let scale = squares
        .iter()
        .zip(&mean)
        .map(|(&q, m)| {
            let var = dec(q) / n - m * m;
            if var > 1e-12 { var.sqrt() } else { 1.0 }
        })
        .collect();
    Ok(Standardisation::Given { mean, scale })
}

/// Runs the moments round with every provider in this process (over the in-process
/// transport, like [`crate::fedavg::train_in_process`]) and returns the standardisation to
/// give every provider. `dropouts` are provider indices that share keys and then go silent.
/// Errors: [`TrainError`] (a failed aggregation is [`TrainError::SecAgg`] of round 0).
pub async fn secure_moments_in_process(
    job: &[u8; 32],
    aggregation: &AggregationConfig,
    providers: &mut [LocalProvider],
    dropouts: &std::collections::BTreeSet<usize>,
) -> Result<Standardisation, TrainError> {
    let features = providers
        .first()
        .map(|p| p.data.features())
        .ok_or_else(|| TrainError::Config("no providers".into()))?;
    let clients = u32::try_from(providers.len())
        .map_err(|_| TrainError::Config("too many providers".into()))?;
    let cfg = moments_config(job, clients, features, aggregation)?;
    let mut inputs = Vec::with_capacity(providers.len());
    for (k, p) in providers.iter_mut().enumerate() {
        if p.data.features() != features {
            return Err(TrainError::Config(format!(
                "provider {k} has {} features, provider 0 {features}",
                p.data.features()
            )));
        }
        inputs.push(SumInput {
            input: moments_input(&p.data, clients)?,
            rng: ChaCha20Rng::from_rng(&mut p.rng)
                .map_err(|e| TrainError::Config(e.to_string()))?,
            drop_out: dropouts.contains(&k),
        });
    }
    let aggregate = secure_sum_in_process(&cfg, inputs, 0).await?;
    standardisation_from_sum(&aggregate.sum, features)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, array};

    /// Negative sums survive the two's-complement encoding and a wrapping sum; oversized sums,
    /// wrong lengths and empty sums are refused.
    #[test]
    fn encoding_round_trips_signed_sums_and_refuses_what_it_cannot_hold() {
        let a = Dataset::new(
            array![[-1.5, 2.0], [-2.5, 4.0]],
            Array1::from(vec![0.0, 1.0]),
        )
        .expect("a");
        let b = Dataset::new(array![[1.0, 6.0]], Array1::from(vec![1.0])).expect("b");
        let (ia, ib) = (
            moments_input(&a, 2).expect("a"),
            moments_input(&b, 2).expect("b"),
        );
        let sum: Vec<u64> = ia
            .iter()
            .zip(&ib)
            .map(|(x, y)| x.wrapping_add(*y))
            .collect();
        let Standardisation::Given { mean, scale } =
            standardisation_from_sum(&sum, 2).expect("moments")
        else {
            panic!("given")
        };
        // Feature 0: −1.5, −2.5, 1 → mean −1, variance (0.25 + 2.25 + 4) / 3.
        assert!((mean[0] + 1.0).abs() < 1e-9 && (mean[1] - 4.0).abs() < 1e-9);
        assert!((scale[0] - (6.5f64 / 3.0).sqrt()).abs() < 1e-9);
        assert!((scale[1] - (8.0f64 / 3.0).sqrt()).abs() < 1e-9);
        let huge = Dataset::new(array![[1e15]], Array1::from(vec![1.0])).expect("huge");
        assert!(matches!(
            moments_input(&huge, 2),
            Err(TrainError::Config(_))
        ));
        assert!(standardisation_from_sum(&sum, 3).is_err());
        assert!(standardisation_from_sum(&[0, 0, 0], 1).is_err());
        // A constant feature gets scale 1.
        let c = Dataset::new(array![[2.0], [2.0]], Array1::from(vec![0.0, 1.0])).expect("c");
        let Standardisation::Given { scale, .. } =
            standardisation_from_sum(&moments_input(&c, 2).expect("c"), 1).expect("moments")
        else {
            panic!("given")
        };
        assert_eq!(scale, vec![1.0]);
        let pow32 = AggregationConfig {
            modulus: Modulus::Pow32,
            ..AggregationConfig::default()
        };
        assert!(moments_config(&[0; 32], 3, 2, &pow32).is_err());
    }
}
