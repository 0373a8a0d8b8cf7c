//! SecAgg+ against the plain sum: random vectors, random dropout patterns at every stage, too
//! many dropouts, what the aggregator holds, hostile frames, and the async drivers over the
//! in-process transport.

use std::collections::BTreeSet;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_fl::graph::Graph;
use tessera_fl::transport::{in_process, run_client, run_server};
use tessera_fl::{
    Aggregate, Client, ClientId, FlError, Modulus, SecAggConfig, Server, ServerStep, Stage, wire,
};

fn config(
    clients: u32,
    dim: u32,
    neighbours: u32,
    threshold: u32,
    modulus: Modulus,
    seed: u8,
) -> SecAggConfig {
    SecAggConfig {
        session_id: [seed; 32],
        clients,
        dim,
        neighbours,
        threshold,
        modulus,
    }
}

fn inputs(cfg: &SecAggConfig, rng: &mut ChaCha20Rng) -> Vec<Vec<u64>> {
    let max = cfg.modulus.max_value();
    (0..cfg.clients)
        .map(|_| (0..cfg.dim).map(|_| rng.r#gen::<u64>() & max).collect())
        .collect()
}

fn plain_sum(cfg: &SecAggConfig, inputs: &[Vec<u64>], who: &BTreeSet<ClientId>) -> Vec<u64> {
    let mut s = vec![0u64; cfg.dim as usize];
    for u in who {
        for (a, x) in s.iter_mut().zip(&inputs[u.0 as usize]) {
            *a = a.wrapping_add(*x);
        }
    }
    let max = cfg.modulus.max_value();
    s.iter().map(|v| v & max).collect()
}

/// Who goes silent, and when: before advertising, after advertising (no shares), after
/// sharing (no masked input), after the masked input (no unmasking shares).
#[derive(Debug, Default, Clone)]
struct Drops {
    advertise: BTreeSet<ClientId>,
    share: BTreeSet<ClientId>,
    masked: BTreeSet<ClientId>,
    unmask: BTreeSet<ClientId>,
}

/// Everything the aggregator received, and the outcome.
struct Trace {
    received: Vec<(ClientId, Bytes)>,
    result: Result<Aggregate, FlError>,
    u3: BTreeSet<ClientId>,
}

fn step(server: &mut Server) -> Result<Vec<(ClientId, Bytes)>, FlError> {
    match server.close_round()? {
        ServerStep::Send(v) => Ok(v),
        ServerStep::Done(_) => panic!("done too early"),
    }
}

/// Drives one round sans-IO. A client whose own step fails (e.g. too few neighbours) goes
/// silent, as a real one would abort.
fn simulate(cfg: &SecAggConfig, inputs: &[Vec<u64>], drops: &Drops, seed: u64) -> Trace {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut server = Server::new(cfg).expect("test setup");
    let mut received = Vec::new();
    let mut deliver = |server: &mut Server, from: ClientId, f: Bytes| {
        server.receive(from, &f).expect("test setup");
        received.push((from, f));
    };
    let mut clients = Vec::new();
    for id in (0..cfg.clients).map(ClientId) {
        let (c, f) = Client::new(cfg, id, &mut rng).expect("test setup");
        if !drops.advertise.contains(&id) {
            deliver(&mut server, id, f);
            clients.push(c);
        }
    }
    let mut u3 = BTreeSet::new();
    let result = (|| {
        let out = step(&mut server)?;
        for (to, f) in out {
            let c = clients
                .iter_mut()
                .find(|c| c.id() == to)
                .expect("test setup");
            if drops.share.contains(&to) {
                continue;
            }
            if let Ok(r) = c.share_keys(&f, &mut rng) {
                deliver(&mut server, to, r);
            }
        }
        let out = step(&mut server)?;
        for (to, f) in out {
            if drops.masked.contains(&to) {
                continue;
            }
            let c = clients
                .iter_mut()
                .find(|c| c.id() == to)
                .expect("test setup");
            let r = c
                .masked_input(&f, &inputs[to.0 as usize])
                .expect("test setup");
            u3.insert(to);
            deliver(&mut server, to, r);
        }
        let out = step(&mut server)?;
        for (to, f) in out {
            if drops.unmask.contains(&to) {
                continue;
            }
            let c = clients
                .iter_mut()
                .find(|c| c.id() == to)
                .expect("test setup");
            if let Ok(r) = c.unmask(&f) {
                deliver(&mut server, to, r);
            }
        }
        match server.close_round()? {
            ServerStep::Done(a) => Ok(a),
            ServerStep::Send(_) => panic!("not done"),
        }
    })();
    Trace {
        received,
        result,
        u3,
    }
}

/// Whether the round must succeed: an independent model of the survivor sets and of who
/// holds which shares (Bell et al. Alg. 2).
fn model_succeeds(cfg: &SecAggConfig, d: &Drops) -> bool {
    let g = Graph::new(cfg);
    let t = cfg.threshold as usize;
    let all: BTreeSet<ClientId> = (0..cfg.clients).map(ClientId).collect();
    let u1: BTreeSet<_> = all.difference(&d.advertise).copied().collect();
    if u1.len() < t {
        return false;
    }
    let u2: BTreeSet<_> = u1
        .iter()
        .filter(|u| !d.share.contains(u))
        .filter(|u| g.neighbours(**u).iter().filter(|v| u1.contains(v)).count() + 1 >= t)
        .copied()
        .collect();
    let u3: BTreeSet<_> = u2
        .iter()
        .filter(|u| !d.masked.contains(u))
        .copied()
        .collect();
    let u4: BTreeSet<_> = u3
        .iter()
        .filter(|u| !d.unmask.contains(u))
        .copied()
        .collect();
    if u2.len() < t || u3.len() < t || u4.len() < t {
        return false;
    }
    u2.iter().all(|o| {
        let holders = std::iter::once(*o)
            .chain(g.neighbours(*o).into_iter().filter(|v| u2.contains(v)))
            .filter(|h| u4.contains(h))
            .count();
        holders >= t
    })
}

fn check(cfg: &SecAggConfig, drops: &Drops, seed: u64) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xabc);
    let xs = inputs(cfg, &mut rng);
    let trace = simulate(cfg, &xs, drops, seed);
    let expect_ok = model_succeeds(cfg, drops);
    match (&trace.result, expect_ok) {
        (Ok(a), true) => {
            assert_eq!(
                a.survivors.iter().copied().collect::<BTreeSet<_>>(),
                trace.u3
            );
            assert_eq!(a.sum, plain_sum(cfg, &xs, &trace.u3), "{cfg:?} {drops:?}");
        }
        (Err(FlError::TooManyDropouts { .. } | FlError::NotEnoughShares { .. }), false) => {}
        (r, e) => panic!("{cfg:?} {drops:?}: got {r:?}, model says success = {e}"),
    }
}

#[test]
fn no_dropouts_equals_the_plain_sum() {
    for (n, k, t, m) in [
        (5, 5, 3, Modulus::Pow32),
        (12, 5, 3, Modulus::Pow32),
        (12, 7, 4, Modulus::Pow64),
        (30, 11, 6, Modulus::Pow32),
        (9, 9, 9, Modulus::Pow64),
    ] {
        check(
            &config(n, 300, k, t, m, n as u8),
            &Drops::default(),
            u64::from(n),
        );
    }
}

#[test]
fn a_long_vector_spanning_several_prg_chunks_sums_exactly() {
    let mut d = Drops::default();
    d.masked.insert(ClientId(2));
    check(&config(6, 200_003, 5, 3, Modulus::Pow32, 1), &d, 1);
    check(&config(6, 100_001, 5, 3, Modulus::Pow64, 2), &d, 2);
}

#[test]
fn random_dropout_patterns_at_every_stage_equal_the_plain_sum_or_fail_cleanly() {
    let mut rng = ChaCha20Rng::seed_from_u64(2026);
    let (mut ok, mut failed) = (0, 0);
    for case in 0..120u64 {
        let n = rng.gen_range(4..=24u32);
        // The complete graph, or an odd k below n.
        let k = match rng.gen_range(3..n) | 1 {
            k if k < n && !rng.gen_bool(0.3) => k,
            _ => n,
        };
        let t = rng.gen_range(2..=k);
        let m = if rng.gen_bool(0.5) {
            Modulus::Pow32
        } else {
            Modulus::Pow64
        };
        let cfg = config(n, rng.gen_range(1..70), k, t, m, case as u8);
        let p = rng.gen_range(0.0..0.25);
        let mut d = Drops::default();
        for id in (0..n).map(ClientId) {
            if rng.gen_bool(p) {
                match rng.gen_range(0..4) {
                    0 => d.advertise.insert(id),
                    1 => d.share.insert(id),
                    2 => d.masked.insert(id),
                    _ => d.unmask.insert(id),
                };
            }
        }
        if model_succeeds(&cfg, &d) {
            ok += 1
        } else {
            failed += 1
        }
        check(&cfg, &d, case);
    }
    // Both outcomes were exercised.
    assert!(ok > 40 && failed > 5, "ok {ok}, failed {failed}");
}

#[test]
fn dropouts_after_sharing_and_during_unmasking_are_recovered() {
    let cfg = config(20, 500, 9, 3, Modulus::Pow32, 3);
    let mut d = Drops::default();
    d.masked.extend([ClientId(1), ClientId(7), ClientId(13)]);
    d.unmask.extend([ClientId(2), ClientId(8)]);
    d.share.insert(ClientId(5));
    d.advertise.insert(ClientId(19));
    assert!(model_succeeds(&cfg, &d));
    check(&cfg, &d, 3);
}

#[test]
fn too_many_dropouts_fail_with_the_counts() {
    let cfg = config(10, 50, 10, 6, Modulus::Pow32, 4);
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let xs = inputs(&cfg, &mut rng);
    let mut d = Drops::default();
    d.masked.extend((0..5).map(ClientId));
    let e = simulate(&cfg, &xs, &d, 4).result.unwrap_err();
    assert_eq!(
        e,
        FlError::TooManyDropouts {
            stage: Stage::MaskedInput,
            survivors: 5,
            threshold: 6
        }
    );
    assert_eq!(
        e.to_string(),
        "too many dropouts at stage masked_input: 5 clients survived, threshold is 6"
    );
    // Enough survive the masked input, too few answer the unmasking.
    let mut d = Drops::default();
    d.unmask.extend((0..5).map(ClientId));
    let e = simulate(&cfg, &xs, &d, 5).result.unwrap_err();
    assert!(
        matches!(
            e,
            FlError::TooManyDropouts {
                stage: Stage::Unmask,
                survivors: 5,
                threshold: 6
            }
        ),
        "{e}"
    );
    // Sparse graph: every stage has enough, but one client's shareholders are gone.
    let cfg = config(15, 20, 5, 4, Modulus::Pow32, 6);
    let g = Graph::new(&cfg);
    let victim = ClientId(0);
    let mut d = Drops::default();
    d.unmask.extend(g.neighbours(victim).into_iter().take(2));
    let xs = inputs(&cfg, &mut rng);
    let e = simulate(&cfg, &xs, &d, 6).result.unwrap_err();
    assert!(
        matches!(
            e,
            FlError::NotEnoughShares {
                shares: 3,
                threshold: 4,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn the_aggregator_never_holds_an_unmasked_input() {
    for m in [Modulus::Pow32, Modulus::Pow64] {
        let cfg = config(12, 2000, 5, 3, m, 7);
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        // Low-entropy inputs (small integers, many zeros) make a leak easy to see.
        let xs: Vec<Vec<u64>> = (0..12)
            .map(|_| (0..2000).map(|_| rng.gen_range(0..4)).collect())
            .collect();
        let mut d = Drops::default();
        d.masked.insert(ClientId(3));
        let trace = simulate(&cfg, &xs, &d, 7);
        let agg = trace.result.as_ref().unwrap();
        assert_eq!(agg.sum, plain_sum(&cfg, &xs, &trace.u3));
        let wb = m.word_bytes() as usize;
        let mut masked_frames = 0;
        for (from, f) in &trace.received {
            for x in &xs {
                // No frame carries any client's input as a run of 8 consecutive elements.
                let needle: Vec<u8> = x[100..108]
                    .iter()
                    .flat_map(|v| v.to_le_bytes()[..wb].to_vec())
                    .collect();
                assert!(
                    !f.windows(needle.len()).any(|w| w == needle.as_slice()),
                    "frame from {from}"
                );
            }
            if wire::kind_of(f) == Some(wire::KIND_MASKED_INPUT) {
                masked_frames += 1;
                let body = &f[wire::MASKED_HEADER_BYTES..];
                let words: Vec<u64> = body
                    .chunks_exact(wb)
                    .map(|c| c.iter().rev().fold(0u64, |a, &b| (a << 8) | u64::from(b)))
                    .collect();
                let x = &xs[from.0 as usize];
                let equal = words.iter().zip(x).filter(|(a, b)| a == b).count();
                let small = words.iter().filter(|&&w| w < 4).count();
                assert!(
                    equal <= 1 && small <= 1,
                    "masked input of {from} equals its input in {equal} places"
                );
            }
        }
        assert_eq!(masked_frames, trace.u3.len());
    }
}

/// A server that has received the advertised keys of all `n` clients, and their frames.
fn hostile_setup() -> (SecAggConfig, Server, Vec<Client>, Vec<Bytes>) {
    let cfg = config(6, 16, 5, 3, Modulus::Pow32, 9);
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let server = Server::new(&cfg).expect("test setup");
    let (clients, frames): (Vec<_>, Vec<_>) = (0..6)
        .map(|i| Client::new(&cfg, ClientId(i), &mut rng).expect("test setup"))
        .unzip();
    (cfg, server, clients, frames)
}

#[test]
fn garbled_frames_are_typed_errors_and_change_nothing() {
    let (_, mut server, _, frames) = hostile_setup();
    let f = &frames[0];
    for len in 0..f.len() {
        assert!(
            server.receive(ClientId(0), &f[..len]).is_err(),
            "truncated to {len}"
        );
    }
    let mut long = f.to_vec();
    long.push(0);
    assert!(matches!(
        server.receive(ClientId(0), &long),
        Err(FlError::MalformedMessage { .. })
    ));
    let mut wrong_version = f.to_vec();
    wrong_version[0] = 9;
    assert!(matches!(
        server.receive(ClientId(0), &wrong_version),
        Err(FlError::MalformedMessage { .. })
    ));
    // A client claiming another id.
    assert_eq!(
        server.receive(ClientId(1), f),
        Err(FlError::IdMismatch {
            claimed: ClientId(0),
            actual: ClientId(1)
        })
    );
    assert_eq!(
        server.receive(ClientId(6), f),
        Err(FlError::UnknownClient(ClientId(6)))
    );
    // A low-order public key (the identity point, all zeros) is refused at the aggregator.
    let mut low_order = f.to_vec();
    low_order[6..38].fill(0);
    assert!(matches!(
        server.receive(ClientId(0), &low_order),
        Err(FlError::MalformedMessage { .. })
    ));
    // Nothing was recorded: the honest frame is still accepted, once.
    server.receive(ClientId(0), f).unwrap();
    assert_eq!(
        server.receive(ClientId(0), f),
        Err(FlError::DuplicateClient(ClientId(0)))
    );
    // A frame of a later stage.
    let early = wire::encode_unmask_request(&[ClientId(0)]);
    assert!(matches!(
        server.receive(ClientId(1), &early),
        Err(FlError::UnexpectedMessage { kind: 6, .. })
    ));
}

#[test]
fn hostile_frames_at_every_stage_are_refused() {
    let (cfg, mut server, mut clients, frames) = hostile_setup();
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    for (i, f) in frames.iter().enumerate() {
        server.receive(ClientId(i as u32), f).unwrap();
    }
    let out = step(&mut server).unwrap();
    // Client side: garbled neighbour keys.
    for len in 0..out[0].1.len() {
        assert!(clients[0].share_keys(&out[0].1[..len], &mut rng).is_err());
    }
    let shares: Vec<Bytes> = out
        .iter()
        .map(|(to, f)| clients[to.0 as usize].share_keys(f, &mut rng).unwrap())
        .collect();
    // Server side: every single-byte flip of a share frame is refused or changes only
    // ciphertext bytes (which the addressee's AEAD refuses); none panics.
    let mut flips_refused = 0;
    for i in 0..shares[0].len() {
        let mut g = shares[0].to_vec();
        g[i] ^= 0x80;
        let mut probe = Server::new(&cfg).unwrap();
        for (j, f) in frames.iter().enumerate() {
            probe.receive(ClientId(j as u32), f).unwrap();
        }
        step(&mut probe).unwrap();
        if probe.receive(ClientId(0), &g).is_err() {
            flips_refused += 1;
        }
    }
    assert!(flips_refused >= 2 + 4 + 4);
    for (i, f) in shares.iter().enumerate() {
        server.receive(ClientId(i as u32), f).unwrap();
    }
    let out = step(&mut server).unwrap();
    // A tampered ciphertext: the addressee refuses it with a typed error.
    let mut bad = out[1].1.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        clients[1].masked_input(&bad, &[0; 16]),
        Err(FlError::ShareDecryption { .. })
    ));
    // Wrong input length, and an input element above the modulus.
    assert!(matches!(
        clients[1].masked_input(&out[1].1, &[0; 15]),
        Err(FlError::InconsistentLength {
            expected: 16,
            actual: 15
        })
    ));
    assert!(matches!(
        clients[1].masked_input(&out[1].1, &[1 << 33; 16]),
        Err(FlError::InvalidInput(_))
    ));
    let masked: Vec<Bytes> = out
        .iter()
        .map(|(to, f)| clients[to.0 as usize].masked_input(f, &[5; 16]).unwrap())
        .collect();
    // A masked input of the wrong length (truncated, or claiming another dim).
    assert!(
        server
            .receive(ClientId(0), &masked[0][..masked[0].len() - 4])
            .is_err()
    );
    let mut other_dim = masked[0].to_vec();
    other_dim[10] ^= 1;
    assert!(matches!(
        server.receive(ClientId(0), &other_dim),
        Err(FlError::InconsistentLength { .. })
    ));
    for (i, f) in masked.iter().enumerate() {
        server.receive(ClientId(i as u32), f).unwrap();
    }
    let out = step(&mut server).unwrap();
    let unmask: Vec<Bytes> = out
        .iter()
        .map(|(to, f)| clients[to.0 as usize].unmask(f).unwrap())
        .collect();
    // A client answering twice, or out of stage.
    assert!(clients[0].unmask(&out[0].1).is_err());
    // A corrupted share value: parsed (canonical) but wrong, caught by the commitment.
    let mut corrupt = unmask[0].to_vec();
    corrupt[2 + 8 + 5] ^= 1;
    server.receive(ClientId(0), &corrupt).unwrap();
    for (i, f) in unmask.iter().enumerate().skip(1) {
        server.receive(ClientId(i as u32), f).unwrap();
    }
    // Holders are taken in id order, so client 0's corrupt share is among the t used.
    assert!(
        matches!(server.close_round(), Err(FlError::ShareMismatch(_))),
        "corrupt share not caught"
    );
}

#[test]
fn configurations_out_of_bounds_are_refused() {
    let ok = config(10, 10, 5, 3, Modulus::Pow32, 0);
    assert!(ok.validate().is_ok());
    for bad in [
        SecAggConfig {
            clients: 1,
            ..ok.clone()
        },
        SecAggConfig {
            dim: 0,
            ..ok.clone()
        },
        SecAggConfig {
            dim: tessera_fl::DIM_MAX + 1,
            ..ok.clone()
        },
        SecAggConfig {
            neighbours: 4,
            ..ok.clone()
        },
        SecAggConfig {
            neighbours: 11,
            ..ok.clone()
        },
        SecAggConfig {
            threshold: 1,
            ..ok.clone()
        },
        SecAggConfig {
            threshold: 6,
            ..ok.clone()
        },
    ] {
        assert!(
            matches!(Server::new(&bad), Err(FlError::Config(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn secrets_do_not_print() {
    let (_, _, clients, _) = hostile_setup();
    let s = format!("{:?}", clients[0]);
    assert!(
        s.contains("Client") && !s.contains("seed") && !s.contains("secret"),
        "{s}"
    );
    let seed = tessera_fl::keys::Seed::from_bytes([7; 16]);
    assert_eq!(format!("{seed:?}"), "Seed(<redacted>)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_over_the_in_process_transport_with_dropouts_and_a_hostile_client() {
    let cfg = config(12, 1000, 7, 3, Modulus::Pow32, 11);
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let xs = inputs(&cfg, &mut rng);
    let (agg, ends) = in_process(cfg.clients, cfg.frame_bytes_max());
    let mut tasks = Vec::new();
    for (i, link) in ends.into_iter().enumerate() {
        let cfg = cfg.clone();
        let x = xs[i].clone();
        tasks.push(tokio::spawn(async move {
            let id = ClientId(i as u32);
            let mut rng = ChaCha20Rng::seed_from_u64(100 + i as u64);
            use tessera_core::Link;
            match i {
                // Drops after sharing: runs two stages by hand, then closes its link.
                2 | 5 => {
                    let (mut c, f) = Client::new(&cfg, id, &mut rng).unwrap();
                    link.send(f).await.unwrap();
                    let f = link.recv().await.unwrap();
                    link.send(c.share_keys(&f, &mut rng).unwrap())
                        .await
                        .unwrap();
                    let _ = link.recv().await;
                    drop(link);
                    Ok(())
                }
                // Never shows up.
                7 => Ok(()),
                // Claims another client's id in its first frame.
                9 => {
                    let (_, f) = Client::new(&cfg, ClientId(10), &mut rng).unwrap();
                    link.send(f).await.unwrap();
                    let _ = link.recv().await;
                    Ok(())
                }
                _ => run_client(&link, &cfg, id, &x, &mut rng).await,
            }
        }));
    }
    let outcome = run_server(&agg, &cfg).await.unwrap();
    let survivors: BTreeSet<ClientId> = [0, 1, 3, 4, 6, 8, 10, 11].map(ClientId).into();
    assert_eq!(
        outcome
            .aggregate
            .survivors
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
        survivors
    );
    assert_eq!(outcome.aggregate.sum, plain_sum(&cfg, &xs, &survivors));
    assert_eq!(outcome.refused.len(), 1);
    assert!(matches!(
        outcome.refused[0],
        (ClientId(9), FlError::IdMismatch { .. })
    ));
    drop(agg);
    for t in tasks {
        let _ = t.await.unwrap();
    }
}
