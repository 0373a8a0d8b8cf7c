//! Every operation of `tessera-mpc` against the clear computation on random inputs and edge
//! cases, with both triple sources (dealer and dealer-free OT), over in-memory links; and the
//! hostile-peer cases (malformed frames, abort, a peer that leaves) as typed errors.

mod common;

use bytes::Bytes;
use common::Src;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_core::{Link, LinkError, MemLink};
use tessera_mpc::session::OneHot;
use tessera_mpc::triples::run_dealer;
use tessera_mpc::{
    DealerClient, FixedPoint, MpcError, OtTriples, Party, Session, Shares, TripleSource,
};

type Sess<'a> = common::Sess<'a>;
type Fut<'a, T> = common::Fut<'a, Result<T, MpcError>>;

const SOURCES: [Src; 3] = [Src::Dealer, Src::Ot, Src::Gilboa];

/// Runs `f` on both parties' sessions (f = 16) and returns both results.
async fn both<T: Send>(
    src: Src,
    seed: u64,
    f: impl for<'a, 'l> Fn(&'a mut Sess<'l>) -> Fut<'a, T> + Sync,
) -> (T, T) {
    both_fx(src, seed, FixedPoint::new(16).expect("fx"), f).await
}

async fn both_fx<T: Send>(
    src: Src,
    seed: u64,
    fx: FixedPoint,
    f: impl for<'a, 'l> Fn(&'a mut Sess<'l>) -> Fut<'a, T> + Sync,
) -> (T, T) {
    common::both_ok(src, seed, fx, f).await
}

fn randoms(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let mut r = ChaCha20Rng::seed_from_u64(seed);
    (0..n).map(|_| r.gen_range(lo..hi)).collect()
}

/// Shares x (party 0's) and y (party 1's) and returns both.
async fn inputs(s: &mut Sess<'_>, x: &[f64], y: &[f64]) -> Result<(Shares, Shares), MpcError> {
    let p = s.party();
    let a = s
        .input(Party::P0, (p == Party::P0).then_some(x), x.len())
        .await?;
    let b = s
        .input(Party::P1, (p == Party::P1).then_some(y), y.len())
        .await?;
    Ok((a, b))
}

fn check(name: &str, got: &[f64], want: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol(i),
            "{name}[{i}]: got {g}, want {w}, tolerance {}",
            tol(i)
        );
    }
}

const ULP: f64 = 1.0 / 65536.0;

/// Random values plus edge cases: zeros, ±1 ulp, negatives.
fn with_edges(mut v: Vec<f64>) -> Vec<f64> {
    v.extend([0.0, 0.0, ULP, -ULP, -1.0, 1.0, -37.5]);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_mul_and_truncation_match_the_clear_computation() {
    for src in SOURCES {
        for n in [0usize, 1, 1000] {
            let x = with_edges(randoms(1, n, -50.0, 50.0));
            let y = with_edges(randoms(2, n, -50.0, 50.0));
            let (xa, ya) = (x.clone(), y.clone());
            let (got, _) = both(src, 3, move |s| {
                let (x, y) = (xa.clone(), ya.clone());
                Box::pin(async move {
                    let (a, b) = inputs(s, &x, &y).await?;
                    let sum = s.add(&a, &b)?;
                    let diff = s.sub(&a, &b)?;
                    let prod = s.mul(&a, &b).await?;
                    let scaled = s.mul_public(&a, -2.5)?;
                    let shifted = s.add_public(&a, 3.25)?;
                    let dot = s.dot(&a, &b).await?;
                    let mut out = Vec::new();
                    for v in [sum, diff, prod, scaled, shifted, dot] {
                        out.push(s.reveal_fixed(&v).await?);
                    }
                    Ok(out)
                })
            })
            .await;
            let e = |f: fn(f64, f64) -> f64| -> Vec<f64> {
                x.iter().zip(&y).map(|(a, b)| f(*a, *b)).collect()
            };
            // Inputs are rounded to the ulp; a product adds |x|+|y| half-ulps and one ulp.
            check("add", &got[0], &e(|a, b| a + b), |_| ULP);
            check("sub", &got[1], &e(|a, b| a - b), |_| ULP);
            check("mul", &got[2], &e(|a, b| a * b), |i| {
                (x[i].abs() + y[i].abs() + 2.0) * ULP
            });
            check("mul_public", &got[3], &e(|a, _| -2.5 * a), |_| 4.0 * ULP);
            check("add_public", &got[4], &e(|a, _| a + 3.25), |_| ULP);
            // The inner product: each product's input rounding, one truncation.
            let dot: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
            let tol: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| a.abs() + b.abs())
                .sum::<f64>()
                * ULP
                / 2.0
                + 2.0 * ULP;
            check("dot", &got[5], &[dot], |_| tol);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_magnitudes_near_the_fixed_point_range() {
    let fx = FixedPoint::new(16).expect("fx");
    let big = fx.max_abs();
    let x = vec![big, -big, big / 2.0, -(2f64.powi(14)), 2f64.powi(14) - ULP];
    let y = vec![-big / 2.0, big / 2.0, 0.0, 1.0 - ULP, -0.999];
    let (xa, ya) = (x.clone(), y.clone());
    let (got, _) = both(Src::Dealer, 4, move |s| {
        let (x, y) = (xa.clone(), ya.clone());
        Box::pin(async move {
            let (a, b) = inputs(s, &x, &y).await?;
            let sum = s.add(&a, &b)?;
            // Products only where they stay in range: the last three.
            let a3 = Shares::from_words(a.words()[2..].to_vec());
            let b3 = Shares::from_words(b.words()[2..].to_vec());
            let prod = s.mul(&a3, &b3).await?;
            let lt = s.less_than(&a, &b).await?;
            Ok((
                s.reveal_fixed(&sum).await?,
                s.reveal_fixed(&prod).await?,
                s.reveal(&lt).await?,
            ))
        })
    })
    .await;
    let sums: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    check("big add", &got.0, &sums, |_| ULP);
    let prods: Vec<f64> = x[2..].iter().zip(&y[2..]).map(|(a, b)| a * b).collect();
    check("big mul", &got.1, &prods, |i| (x[i + 2].abs() + 2.0) * ULP);
    let lts: Vec<u64> = x.iter().zip(&y).map(|(a, b)| u64::from(a < b)).collect();
    assert_eq!(got.2, lts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matmul_matches_the_clear_product() {
    for src in SOURCES {
        for (m, k, n) in [(3usize, 4usize, 5usize), (1, 1, 1), (7, 20, 1), (0, 3, 2)] {
            let x = randoms(10, m * k, -4.0, 4.0);
            let y = randoms(11, k * n, -4.0, 4.0);
            let (xa, ya) = (x.clone(), y.clone());
            let (got, _) = both(src, 12, move |s| {
                let (x, y) = (xa.clone(), ya.clone());
                Box::pin(async move {
                    let (a, b) = inputs(s, &x, &y).await?;
                    let z = s.matmul(&a, &b, (m, k, n)).await?;
                    s.reveal_fixed(&z).await
                })
            })
            .await;
            let mut want = vec![0.0; m * n];
            for i in 0..m {
                for j in 0..n {
                    want[i * n + j] = (0..k).map(|l| x[i * k + l] * y[l * n + j]).sum();
                }
            }
            // Each of k input pairs rounds to half an ulp: k · (|x|+|y|)/2 ulps, plus one.
            check(&format!("matmul {src:?}"), &got, &want, |_| {
                (k as f64 * 4.0 + 2.0) * ULP
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shape_and_length_errors_are_typed() {
    let (got, _) = both(Src::Dealer, 13, |s| {
        Box::pin(async move {
            let a = Shares::from_words(vec![0; 3]);
            let b = Shares::from_words(vec![0; 4]);
            let e1 = s.mul(&a, &b).await.err();
            let e2 = s.matmul(&a, &b, (2, 2, 2)).await.err();
            let e3 = s.matmul(&a, &b, (1 << 20, 1 << 10, 1 << 10)).await.err();
            let e4 = s.input(s.party(), None, 3).await.err();
            let e5 = s.mean(&Shares::default()).err();
            let e6 = s.div_public(&a, 0).err();
            let e7 = s.one_hot_input(s.party(), Some(&[0, 5]), 2, 3).await.err();
            let e8 = s.input(s.party(), Some(&[f64::NAN]), 1).await.err();
            // Still in step afterwards: none of these sent anything.
            let z = s.add_public(&a, 1.0)?;
            let r = s.reveal_fixed(&z).await?;
            Ok((vec![e1, e2, e3, e4, e5, e6, e7], e8, r))
        })
    })
    .await;
    let (errs, e8, r) = got;
    assert!(matches!(
        errs[0],
        Some(MpcError::LengthMismatch { left: 3, right: 4 })
    ));
    assert!(matches!(errs[1], Some(MpcError::LengthMismatch { .. })));
    for e in &errs[2..] {
        assert!(matches!(e, Some(MpcError::Bounds(_))), "{e:?}");
    }
    assert!(matches!(e8, Some(MpcError::Bounds(_))), "{e8:?}");
    assert_eq!(r, vec![1.0; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparison_and_relu_are_exact() {
    for src in SOURCES {
        let mut x = randoms(20, 300, -100.0, 100.0);
        let mut y = randoms(21, 300, -100.0, 100.0);
        // Equal values, neighbours one ulp apart, zero, and the extremes of the range.
        let big = FixedPoint::default().max_abs();
        // (|x − y| must stay below 2^63 as ring integers: half the range each way.)
        x.extend([
            0.0,
            1.0,
            1.0,
            -ULP,
            ULP,
            big / 2.0,
            -big / 2.0,
            5.0,
            big,
            -big,
        ]);
        y.extend([
            0.0,
            1.0,
            1.0 + ULP,
            0.0,
            0.0,
            -big / 2.0,
            big / 2.0,
            5.0 - ULP,
            0.0,
            0.0,
        ]);
        let (xa, ya) = (x.clone(), y.clone());
        let (got, _) = both(src, 22, move |s| {
            let (x, y) = (xa.clone(), ya.clone());
            Box::pin(async move {
                let (a, b) = inputs(s, &x, &y).await?;
                let lt = s.less_than(&a, &b).await?;
                let msb = s.msb(&a).await?;
                let relu = s.relu(&a).await?;
                let empty = s.msb(&Shares::default()).await?;
                Ok((
                    s.reveal(&lt).await?,
                    s.reveal(&msb).await?,
                    s.reveal_fixed(&relu).await?,
                    empty.len(),
                ))
            })
        })
        .await;
        let lts: Vec<u64> = x.iter().zip(&y).map(|(a, b)| u64::from(a < b)).collect();
        assert_eq!(got.0, lts, "{src:?}");
        let neg: Vec<u64> = x.iter().map(|a| u64::from(*a < 0.0)).collect();
        assert_eq!(got.1, neg, "{src:?}");
        let relu: Vec<f64> = x.iter().map(|a| a.max(0.0)).collect();
        check("relu", &got.2, &relu, |_| ULP / 2.0);
        assert_eq!(got.3, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigmoid_is_within_its_stated_bound() {
    for src in SOURCES {
        let mut x = randoms(30, 400, -12.0, 12.0);
        x.extend([-8.0, 8.0, -7.75, 0.0, -0.5, 0.25, 30.0, -30.0, 7.999]);
        let xa = x.clone();
        let (got, _) = both(src, 31, move |s| {
            let x = xa.clone();
            Box::pin(async move {
                let (a, _) = inputs(s, &x, &[]).await?;
                let y = s.sigmoid(&a).await?;
                s.reveal_fixed(&y).await
            })
        })
        .await;
        let want: Vec<f64> = x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
        check("sigmoid", &got, &want, |i| {
            tessera_mpc::compare::SIGMOID_ERROR_BOUND + (35.0 + x[i].abs() / 2.0) * ULP
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reciprocal_and_division_are_within_their_bounds() {
    for frac in [16u32, 20] {
        let fx = FixedPoint::new(frac).expect("fx");
        let ulp = fx.ulp();
        let mut y = randoms(40, 200, 0.0, 1.0);
        for (i, v) in y.iter_mut().enumerate() {
            // Log-uniform over the domain [2^-8, 2^16).
            *v = 2f64.powf(-8.0 + 24.0 * *v).min(65535.0);
            if i % 7 == 0 {
                *v = 2f64.powi((i % 24) as i32 - 8);
            }
        }
        let x = randoms(41, 200, -10.0, 10.0);
        let (xa, ya) = (x.clone(), y.clone());
        let (got, _) = both_fx(Src::Dealer, 42, fx, move |s| {
            let (x, y) = (xa.clone(), ya.clone());
            Box::pin(async move {
                let (a, b) = inputs(s, &x, &y).await?;
                let r = s.reciprocal(&b).await?;
                let q = s.divide(&a, &b).await?;
                Ok((s.reveal_fixed(&r).await?, s.reveal_fixed(&q).await?))
            })
        })
        .await;
        // Against the inputs as encoded (rounded to the ulp): the rounding of a small y alone
        // moves 1/y by ulp / (2 y²).
        let enc = |v: f64| fx.decode(fx.encode(v).expect("encode"));
        let recip: Vec<f64> = y.iter().map(|v| 1.0 / enc(*v)).collect();
        let bound = |i: usize| 2f64.powi(-12) / y[i] + 8.0 * ulp;
        check("reciprocal", &got.0, &recip, bound);
        let quot: Vec<f64> = x.iter().zip(&y).map(|(a, b)| enc(*a) / enc(*b)).collect();
        check("divide", &got.1, &quot, |i| {
            x[i].abs() * bound(i) + 2.0 * ulp
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sum_mean_and_variance_match() {
    for src in SOURCES {
        for n in [1usize, 2, 999] {
            let x = randoms(50 + n as u64, n, -20.0, 30.0);
            let xa = x.clone();
            let (got, _) = both(src, 51, move |s| {
                let x = xa.clone();
                Box::pin(async move {
                    let (a, _) = inputs(s, &x, &[]).await?;
                    let sum = s.sum(&a);
                    let mean = s.mean(&a)?;
                    let var = s.variance(&a).await?;
                    Ok((
                        s.reveal_fixed(&sum).await?,
                        s.reveal_fixed(&mean).await?,
                        s.reveal_fixed(&var).await?,
                    ))
                })
            })
            .await;
            let sum: f64 = x.iter().sum();
            let mean = sum / n as f64;
            let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            // Inputs are rounded to half an ulp each.
            check("sum", &got.0, &[sum], |_| n as f64 * ULP / 2.0);
            check("mean", &got.1, &[mean], |_| 2.0 * ULP);
            check("variance", &got.2, &[var], |_| (2.0 * 50.0 + 4.0) * ULP);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_and_group_sums_through_one_hot() {
    for src in SOURCES {
        let (rows, k) = (500usize, 7usize);
        let mut r = ChaCha20Rng::seed_from_u64(60);
        let cats: Vec<u32> = (0..rows).map(|_| r.gen_range(0..k as u32 - 1)).collect();
        let vals = randoms(61, rows, -100.0, 100.0);
        let (ca, va) = (cats.clone(), vals.clone());
        let (got, _) = both(src, 62, move |s| {
            let (cats, vals) = (ca.clone(), va.clone());
            Box::pin(async move {
                // The categories are party 0's column, the values party 1's.
                let p = s.party();
                let h: OneHot = s
                    .one_hot_input(Party::P0, (p == Party::P0).then_some(&cats[..]), rows, k)
                    .await?;
                let v = s
                    .input(Party::P1, (p == Party::P1).then_some(&vals[..]), rows)
                    .await?;
                let hist = s.histogram(&h);
                let sums = s.group_sum(&h, &v).await?;
                Ok((s.reveal(&hist).await?, s.reveal_fixed(&sums).await?))
            })
        })
        .await;
        let mut counts = vec![0u64; k];
        let mut sums = vec![0f64; k];
        for (c, v) in cats.iter().zip(&vals) {
            counts[*c as usize] += 1;
            sums[*c as usize] += v;
        }
        assert_eq!(got.0, counts, "{src:?}");
        assert_eq!(counts[k - 1], 0, "an empty category is in the test");
        check("group sums", &got.1, &sums, |c| {
            counts[c] as f64 * ULP / 2.0 + 1e-12
        });
    }
}

// ------------------------------------------------------------------------- hostile peer

/// Party 0 (dealer triples) runs a multiplication of 10 elements while the "peer" (the raw
/// link) sends `frames` and then leaves; returns the result and whether a later call is
/// refused as out of step.
async fn mul_against(frames: Vec<Bytes>) -> (Result<Shares, MpcError>, bool) {
    let (l0, l1) = MemLink::pair();
    let (d0, p0) = MemLink::pair();
    let (d1, p1) = MemLink::pair();
    let dealer = tokio::spawn(async move {
        let mut r = ChaCha20Rng::seed_from_u64(5);
        run_dealer(&d0, &d1, &mut r).await
    });
    let mut c1 = DealerClient::new(Party::P1, Box::new(p1));
    let mut s = Session::new(
        Party::P0,
        &l0,
        FixedPoint::default(),
        TripleSource::Dealer(DealerClient::new(Party::P0, Box::new(p0))),
        ChaCha20Rng::seed_from_u64(6),
    );
    // Party 1's dealer client takes its batch so the dealer can serve party 0.
    let fetch = async {
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        c1_arith(&mut c1, &mut rng).await
    };
    let peer = async {
        for f in frames {
            if l1.send(f).await.is_err() {
                break;
            }
        }
        drop(l1);
    };
    let x = Shares::from_words(vec![1; 10]);
    let (got, _, ()) = tokio::join!(s.mul(&x, &x), fetch, peer);
    let again = s.reveal(&x).await;
    drop(s);
    drop(c1);
    let _ = dealer.await;
    (got, matches!(again, Err(MpcError::OutOfStep)))
}

async fn c1_arith(c1: &mut DealerClient, rng: &mut ChaCha20Rng) {
    let (l, _other) = MemLink::pair();
    let mut src = TripleSource::Dealer(std::mem::replace(
        c1,
        DealerClient::new(Party::P1, Box::new(MemLink::pair().0)),
    ));
    let _ = src.arith(&l, rng, 10).await;
    if let TripleSource::Dealer(d) = src {
        *c1 = d;
    }
}

fn frame(kind: u8, count: u32, payload: usize) -> Bytes {
    let mut f = vec![kind];
    f.extend_from_slice(&count.to_le_bytes());
    f.resize(5 + payload, 0x5a);
    Bytes::from(f)
}

#[tokio::test]
async fn malformed_share_frames_are_typed_errors() {
    use tessera_mpc::wire::{KIND_INPUT, KIND_OPEN};
    let malformed = [
        Bytes::new(),
        Bytes::from_static(&[KIND_OPEN]),
        Bytes::from_static(&[KIND_OPEN, 1, 0]),
        frame(KIND_OPEN, 20, 20 * 8 - 1),
        frame(KIND_OPEN, 21, 21 * 8),
        frame(KIND_OPEN, 0, 0),
        frame(KIND_OPEN, u32::MAX, 8),
        frame(KIND_INPUT, 20, 20 * 8),
        frame(0x13, 20, 20 * 8),
    ];
    for f in malformed {
        let (got, out_of_step) = mul_against(vec![f.clone()]).await;
        assert!(
            matches!(got, Err(MpcError::Malformed(_))),
            "{:?}: {got:?}",
            &f[..f.len().min(6)]
        );
        assert!(out_of_step, "a failed call leaves the session out of step");
    }
    let mut r = ChaCha20Rng::seed_from_u64(70);
    for len in [1usize, 3, 9, 100, 200] {
        let mut b = vec![0u8; len];
        r.fill(&mut b[..]);
        let (got, _) = mul_against(vec![Bytes::from(b)]).await;
        assert!(got.is_err());
    }
}

#[tokio::test]
async fn abort_short_message_and_oversize_frames_are_typed_errors() {
    use tessera_mpc::wire::KIND_OPEN;
    let (got, _) = mul_against(vec![Bytes::from_static(&[0x7F, 9])]).await;
    assert!(matches!(got, Err(MpcError::PeerAborted(9))), "{got:?}");
    // Half the opening, then the peer leaves.
    let (got, _) = mul_against(vec![frame(KIND_OPEN, 10, 80)]).await;
    assert!(
        matches!(got, Err(MpcError::Link(LinkError::PeerGone(_)))),
        "{got:?}"
    );
    // Nothing at all.
    let (got, _) = mul_against(vec![]).await;
    assert!(
        matches!(got, Err(MpcError::Link(LinkError::PeerGone(_)))),
        "{got:?}"
    );

    // An oversize frame is refused by the link before it is parsed.
    let (l0, l1) = MemLink::pair_with_limit(64);
    l1.dangerous_send_unchecked(frame(KIND_OPEN, 20, 160))
        .await
        .expect("send");
    let got = tessera_mpc::wire::recv_words(&l0, KIND_OPEN, 20).await;
    assert!(
        matches!(got, Err(MpcError::Link(LinkError::FrameTooLarge { .. }))),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_leaving_during_ot_triples_is_a_typed_error() {
    let (l0, l1) = MemLink::pair();
    let mut r0 = ChaCha20Rng::seed_from_u64(80);
    let mut r1 = ChaCha20Rng::seed_from_u64(81);
    let (o0, o1) = tokio::join!(
        OtTriples::setup(Party::P0, &l0, &mut r0),
        OtTriples::setup(Party::P1, &l1, &mut r1)
    );
    let mut src = TripleSource::Ot(Box::new(o0.expect("setup")));
    drop(o1);
    // Garbage where the peer's OT-extension matrix should be, then the peer leaves.
    l1.send(Bytes::from_static(&[0x42, 1, 0, 0, 0, 1]))
        .await
        .expect("send");
    drop(l1);
    let got = src.arith(&l0, &mut r0, 100).await;
    assert!(matches!(got, Err(MpcError::Malformed(_))), "{got:?}");
}

#[tokio::test]
async fn debug_shows_no_secret() {
    let s = Shares::from_words(vec![0xdead_beef_1234_5678; 3]);
    assert_eq!(format!("{s:?}"), "Shares(len 3)");
    let (l0, _l1) = MemLink::pair();
    let sess = Session::new(
        Party::P0,
        &l0 as &dyn Link,
        FixedPoint::default(),
        TripleSource::Dealer(DealerClient::new(Party::P0, Box::new(MemLink::pair().0))),
        ChaCha20Rng::seed_from_u64(1),
    );
    let text = format!("{sess:?}");
    assert!(!text.contains("dead"), "{text}");
    assert!(text.starts_with("Session { party: P0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matmul_ring_is_exact_and_reveal_to_opens_to_one_party_only() {
    for src in SOURCES {
        // A 0/1 ring matrix (party 0's) times fixed-point values (party 1's): exact, no
        // truncation; then opened to party 1 only.
        let (m, k, n) = (4usize, 9usize, 3usize);
        let mut r = ChaCha20Rng::seed_from_u64(90);
        let bits: Vec<u64> = (0..m * k).map(|_| r.gen_range(0..2u64)).collect();
        let vals = randoms(91, k * n, -100.0, 100.0);
        let (ba, va) = (bits.clone(), vals.clone());
        let (g0, g1) = both(src, 92, move |s| {
            let (bits, vals) = (ba.clone(), va.clone());
            Box::pin(async move {
                let p = s.party();
                let a = s
                    .input_ring(Party::P0, (p == Party::P0).then_some(&bits[..]), m * k)
                    .await?;
                let b = s
                    .input(Party::P1, (p == Party::P1).then_some(&vals[..]), k * n)
                    .await?;
                let z = s.matmul_ring(&a, &b, (m, k, n)).await?;
                s.reveal_to(Party::P1, &z).await
            })
        })
        .await;
        assert_eq!(g0, None, "{src:?}: party 0 learns nothing");
        let fx = FixedPoint::new(16).expect("fx");
        let got = g1.expect("party 1 gets the values");
        for i in 0..m {
            for j in 0..n {
                // Exact over the encoded values.
                let want = (0..k).fold(0u64, |acc, l| {
                    acc.wrapping_add(
                        bits[i * k + l].wrapping_mul(fx.encode(vals[l * n + j]).expect("enc")),
                    )
                });
                assert_eq!(got[i * n + j], want, "{src:?} ({i}, {j})");
            }
        }
    }
}
