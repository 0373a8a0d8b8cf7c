//! The two-party harness of the query and LR tests: both parties' sessions over in-memory
//! links, with dealer or dealer-free triples, each running the same closure.

use std::future::Future;
use std::pin::Pin;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_core::MemLink;
use tessera_mpc::triples::run_dealer;
use tessera_mpc::{
    ArithMethod, DealerClient, FixedPoint, MpcError, OtTriples, Party, Session, TripleSource,
};

pub type Sess<'a> = Session<'a, ChaCha20Rng>;
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Src {
    /// Triples from a dealer.
    Dealer,
    /// Dealer-free, Beaver triples by RLWE oblivious linear evaluation (the default).
    Ot,
    /// Dealer-free, Beaver triples by Gilboa's multiplication over OT.
    #[allow(dead_code)] // not every test binary uses it
    Gilboa,
}

/// Runs `f` on both parties' sessions and returns both outputs as they are (the dealer's
/// outcome is not checked: a party that fails leaves it with a broken request).
#[allow(dead_code)] // each test binary uses one of the two
pub async fn both_raw<T: Send>(
    src: Src,
    seed: u64,
    fx: FixedPoint,
    f: impl for<'a, 'l> Fn(&'a mut Sess<'l>) -> Fut<'a, T> + Sync,
) -> (T, T) {
    let (x, y, _dealer) = run(src, seed, fx, f).await;
    (x, y)
}

/// Runs `f` on both parties' sessions, which must both succeed, as must the dealer.
#[allow(dead_code)] // each test binary uses one of the two
pub async fn both_ok<T: Send>(
    src: Src,
    seed: u64,
    fx: FixedPoint,
    f: impl for<'a, 'l> Fn(&'a mut Sess<'l>) -> Fut<'a, Result<T, MpcError>> + Sync,
) -> (T, T) {
    let (x, y, dealer) = run(src, seed, fx, f).await;
    if let Some(d) = dealer {
        d.expect("dealer");
    }
    (x.expect("party 0"), y.expect("party 1"))
}

/// Both parties' outputs and, with a dealer, its outcome.
async fn run<T: Send>(
    src: Src,
    seed: u64,
    fx: FixedPoint,
    f: impl for<'a, 'l> Fn(&'a mut Sess<'l>) -> Fut<'a, T> + Sync,
) -> (T, T, Option<Result<u64, MpcError>>) {
    let (l0, l1) = MemLink::pair();
    let mut r0 = ChaCha20Rng::seed_from_u64(seed);
    let mut r1 = ChaCha20Rng::seed_from_u64(seed + 1000);
    let (s0, s1, dealer) = match src {
        Src::Dealer => {
            let (d0, p0) = MemLink::pair();
            let (d1, p1) = MemLink::pair();
            let dealer = tokio::spawn(async move {
                let mut r = ChaCha20Rng::seed_from_u64(seed + 7);
                run_dealer(&d0, &d1, &mut r).await
            });
            (
                TripleSource::Dealer(DealerClient::new(Party::P0, Box::new(p0))),
                TripleSource::Dealer(DealerClient::new(Party::P1, Box::new(p1))),
                Some(dealer),
            )
        }
        Src::Ot | Src::Gilboa => {
            let method = if src == Src::Ot {
                ArithMethod::Rlwe
            } else {
                ArithMethod::Gilboa
            };
            let (o0, o1) = tokio::join!(
                OtTriples::setup_with(Party::P0, &l0, &mut r0, method),
                OtTriples::setup_with(Party::P1, &l1, &mut r1, method)
            );
            (
                TripleSource::Ot(Box::new(o0.expect("ot setup"))),
                TripleSource::Ot(Box::new(o1.expect("ot setup"))),
                None,
            )
        }
    };
    let mut a = Session::new(Party::P0, &l0, fx, s0, r0);
    let mut b = Session::new(Party::P1, &l1, fx, s1, r1);
    let (x, y) = tokio::join!(f(&mut a), f(&mut b));
    drop((a, b));
    let dealer = match dealer {
        Some(d) => Some(d.await.expect("join")),
        None => None,
    };
    (x, y, dealer)
}
