//! The operator's dealer for `mpc` jobs whose triples come from a dealer (issue "Secret-sharing
//! MPC", item 2a; a licence's `mpc` scene lists `dealer` in `protocols`, the job asks for it or
//! the scene allows nothing else).
//!
//! Each of the job's two workers opens its own link to the operator (`Operator.Dealer`, with
//! its worker credential and its task id); [`Scheduler::dealer_seat`] checks that the task is
//! the caller's, live, and signed for dealer triples, and [`DealerHub::join`] pairs the two
//! links of a job, then serves them with [`tessera_mpc::triples::run_dealer`] (a 32-byte seed
//! to the provider's worker, party 0; a seed and the correction vector to the buyer's, party 1)
//! until both close. The links never carry a party's data: only triple requests, seeds and
//! corrections.
//!
//! Threat model (semi-honest): the operator, as the dealer, knows every triple of the job; it
//! learns nothing of the inputs so long as it sees none of the values the parties open to each
//! other, which travel on their direct peer link (mutual TLS between the workers), never
//! through the operator. A dealer that colludes with either party (or reads their peer link)
//! learns the other party's inputs: a licence that must not trust the operator that far lists
//! only `ot` in its `mpc` scene's `protocols`.
//!
//! Bounds: at most [`DEALER_SESSIONS_MAX`] jobs waiting or being dealt at once; a job's first
//! link waits at most [`DEALER_PAIR_WAIT`] for the second; each request is bounded by the
//! dealer's own limits (`tessera_mpc::ELEMENTS_MAX`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use tessera_core::{Link, MpcTriples, TaskRole, TaskSpec};
use tessera_mpc::Party;
use tokio::sync::oneshot;

use crate::{Scheduler, SchedulerError};

/// Jobs that may wait for their second link or be dealt to at once.
pub const DEALER_SESSIONS_MAX: usize = 256;
/// How long a job's first link waits for the second.
pub const DEALER_PAIR_WAIT: Duration = Duration::from_secs(120);
/// How long the dealer waits for the next request on a link (the parties compute between
/// requests; a training asks at every step).
pub const DEALER_IDLE: Duration = Duration::from_secs(600);

/// Which job and which party a dealer link serves, as [`Scheduler::dealer_seat`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DealerSeat {
    /// The job.
    pub job_id: String,
    /// The party: the provider's task is party 0, the buyer's party 1.
    pub party: Party,
}

/// A link with the party it serves.
type Seated = (Party, Box<dyn Link>);

struct Waiting {
    party: Party,
    generation: u64,
    second: oneshot::Sender<Seated>,
}

#[derive(Default)]
struct HubState {
    waiting: HashMap<String, Waiting>,
    /// Jobs waiting or being dealt to.
    sessions: usize,
    generation: u64,
}

/// Pairs each dealer job's two links and deals to them (see the module docs). Cheap to clone.
#[derive(Clone, Default)]
pub struct DealerHub {
    state: Arc<std::sync::Mutex<HubState>>,
}

impl std::fmt::Debug for DealerHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("DealerHub")
            .field("waiting", &s.waiting.len())
            .field("sessions", &s.sessions)
            .finish()
    }
}

impl DealerHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Jobs waiting for their second link or being dealt to now.
    pub fn sessions(&self) -> usize {
        self.lock().sessions
    }

    /// Takes `seat`'s link: the job's first waits (at most [`DEALER_PAIR_WAIT`]) for the
    /// second, which starts the dealing on a task of its own seeded with `seed`. A party that
    /// comes again while its first link still waits (a task that ran again) replaces it.
    ///
    /// # Errors
    /// [`SchedulerError::Busy`] when [`DEALER_SESSIONS_MAX`] jobs are being served.
    pub fn join(
        &self,
        seat: DealerSeat,
        link: Box<dyn Link>,
        seed: [u8; 32],
    ) -> Result<(), SchedulerError> {
        let mut s = self.lock();
        match s.waiting.remove(&seat.job_id) {
            Some(w) if w.party != seat.party => {
                // The pair is complete: the waiting task deals.
                drop(s);
                // If the waiter has just timed out, this link is dropped and its worker
                // sees the dealer go; the task fails as a broken link.
                let _ = w.second.send((seat.party, link));
                Ok(())
            }
            stale => {
                let replacing = stale.is_some();
                if !replacing && s.sessions >= DEALER_SESSIONS_MAX {
                    return Err(SchedulerError::Busy(format!(
                        "the dealer serves {DEALER_SESSIONS_MAX} jobs already; try again later"
                    )));
                }
                if !replacing {
                    s.sessions += 1;
                }
                s.generation += 1;
                let generation = s.generation;
                let (tx, rx) = oneshot::channel();
                s.waiting.insert(
                    seat.job_id.clone(),
                    Waiting {
                        party: seat.party,
                        generation,
                        second: tx,
                    },
                );
                drop(s);
                let hub = self.clone();
                tokio::spawn(async move {
                    hub.wait_and_deal(seat, link, generation, rx, seed).await;
                });
                Ok(())
            }
        }
    }

    async fn wait_and_deal(
        &self,
        seat: DealerSeat,
        link: Box<dyn Link>,
        generation: u64,
        rx: oneshot::Receiver<Seated>,
        seed: [u8; 32],
    ) {
        let second = tokio::time::timeout(DEALER_PAIR_WAIT, rx).await;
        let (other_party, other) = match second {
            Ok(Ok(pair)) => pair,
            // Replaced by the same party's newer link, which carries the session on.
            Ok(Err(_)) => return,
            // Timed out: this link goes (its worker sees the dealer go), and the session ends.
            Err(_) => {
                let mut s = self.lock();
                if s.waiting
                    .get(&seat.job_id)
                    .is_some_and(|w| w.generation == generation)
                {
                    s.waiting.remove(&seat.job_id);
                }
                s.sessions = s.sessions.saturating_sub(1);
                tracing::info!(job = %seat.job_id, "the dealer's second link never came");
                return;
            }
        };
        let (p0, p1) = if seat.party == Party::P0 {
            (link, other)
        } else {
            debug_assert_eq!(other_party, Party::P0);
            (other, link)
        };
        let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
        let dealt = tessera_mpc::triples::run_dealer(p0.as_ref(), p1.as_ref(), &mut rng).await;
        let (s0, s1) = (p0.stats(), p1.stats());
        let (sent, received) = (
            s0.bytes_sent + s1.bytes_sent,
            s0.bytes_received + s1.bytes_received,
        );
        match dealt {
            Ok(batches) => tracing::info!(
                job = %seat.job_id, batches, bytes_sent = sent, bytes_received = received,
                "the job's dealer links closed"
            ),
            Err(e) => tracing::warn!(
                job = %seat.job_id, error = %e, bytes_sent = sent, "the dealer stopped"
            ),
        }
        let mut s = self.lock();
        s.sessions = s.sessions.saturating_sub(1);
    }
}

impl Scheduler {
    /// The dealer's seat of `worker_id`'s task `task_id`: a live task of that worker, of an
    /// `mpc` job signed for dealer triples; with a fresh seed for the dealing.
    ///
    /// # Errors
    /// [`SchedulerError::NotFound`] for no such live task of the worker; `Forbidden` for a
    /// task whose job runs dealer-free; a store failure.
    pub async fn dealer_seat(
        &self,
        worker_id: &str,
        task_id: &str,
    ) -> Result<(DealerSeat, [u8; 32]), SchedulerError> {
        let found = {
            let jobs = self.jobs.lock().await;
            jobs.iter()
                .find(|(_, j)| {
                    j.tasks.get(task_id).is_some_and(|t| {
                        t.worker_id == worker_id && t.report.is_none() && !t.stopped
                    })
                })
                .filter(|(_, j)| j.scene == tessera_core::job::scene::MPC)
                .map(|(id, j)| (id.clone(), j.tasks.get(task_id).map(|t| t.role)))
        };
        let Some((job_id, Some(role))) = found else {
            return Err(SchedulerError::NotFound(format!(
                "no live mpc task {task_id} of this worker"
            )));
        };
        let tasks = self.store.tasks(&job_id).await?;
        let spec: Option<TaskSpec> = tasks
            .iter()
            .find(|t| t.task_id == task_id)
            .and_then(|t| serde_json::from_str(&t.spec_json).ok());
        if spec
            .as_ref()
            .and_then(|s| s.mpc.as_ref())
            .is_none_or(|m| m.triples != MpcTriples::Dealer)
        {
            return Err(SchedulerError::Forbidden(format!(
                "task {task_id} runs dealer-free: its job was not admitted with dealer triples"
            )));
        }
        let party = match role {
            TaskRole::Sender => Party::P0,
            TaskRole::Receiver => Party::P1,
        };
        let mut seed = [0u8; 32];
        self.ids.fill(&mut seed);
        Ok((DealerSeat { job_id, party }, seed))
    }

    /// The operator's dealer.
    pub fn dealer(&self) -> &DealerHub {
        &self.dealer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::MemLink;
    use tessera_mpc::{DealerClient, FixedPoint, Session, TripleSource};

    fn seat(job: &str, party: Party) -> DealerSeat {
        DealerSeat {
            job_id: job.into(),
            party,
        }
    }

    /// Both parties' sessions, each with its link to the hub's dealer, multiply: the product
    /// opens right, whichever party came first.
    #[tokio::test]
    async fn two_links_of_a_job_are_paired_and_dealt_to() {
        let hub = DealerHub::default();
        for first in [Party::P0, Party::P1] {
            let job = format!("j-{first:?}");
            let (d0, w0) = MemLink::pair();
            let (d1, w1) = MemLink::pair();
            let second = if first == Party::P0 {
                Party::P1
            } else {
                Party::P0
            };
            let (a, b) = if first == Party::P0 {
                (d0, d1)
            } else {
                (d1, d0)
            };
            hub.join(seat(&job, first), Box::new(a), [1; 32])
                .expect("first");
            hub.join(seat(&job, second), Box::new(b), [2; 32])
                .expect("second");
            let (p0, p1) = MemLink::pair();
            let fx = FixedPoint::new(16).expect("fx");
            let run = |party, peer: MemLink, dealer: MemLink, x: f64| async move {
                let mut s = Session::new(
                    party,
                    &peer,
                    fx,
                    TripleSource::Dealer(DealerClient::new(party, Box::new(dealer))),
                    rand_chacha::ChaCha20Rng::seed_from_u64(party as u64),
                );
                let xs = s
                    .input(Party::P0, (party == Party::P0).then_some(&[x][..]), 1)
                    .await?;
                let ys = s
                    .input(Party::P1, (party == Party::P1).then_some(&[x][..]), 1)
                    .await?;
                let z = s.mul(&xs, &ys).await?;
                s.reveal_fixed(&z).await
            };
            let (r0, r1) = tokio::join!(run(Party::P0, p0, w0, 1.5), run(Party::P1, p1, w1, -2.0));
            let (r0, r1) = (r0.expect("p0"), r1.expect("p1"));
            assert!((r0[0] + 3.0).abs() < 1e-3, "{r0:?}");
            assert_eq!(r0, r1);
        }
        // Both dealings end when the parties drop their links (waited for, up to 10 s).
        for _ in 0..500 {
            if hub.sessions() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(hub.sessions(), 0);
    }

    #[tokio::test]
    async fn a_party_coming_again_replaces_its_waiting_link_and_the_bound_holds() {
        let hub = DealerHub::default();
        let (d_old, w_old) = MemLink::pair();
        hub.join(seat("j", Party::P1), Box::new(d_old), [0; 32])
            .expect("first");
        let (d_new, _w_new) = MemLink::pair();
        hub.join(seat("j", Party::P1), Box::new(d_new), [0; 32])
            .expect("again");
        assert_eq!(hub.sessions(), 1, "one job");
        // The replaced link is closed: its worker sees the dealer go.
        let gone = tokio::time::timeout(Duration::from_secs(5), w_old.recv())
            .await
            .expect("closed promptly");
        assert!(gone.is_err());
        let mut keep = Vec::new();
        for i in 1..DEALER_SESSIONS_MAX {
            let (d, w) = MemLink::pair();
            hub.join(seat(&format!("j{i}"), Party::P0), Box::new(d), [0; 32])
                .expect("within the bound");
            keep.push(w);
        }
        let (d, _w) = MemLink::pair();
        let e = hub
            .join(seat("one-too-many", Party::P0), Box::new(d), [0; 32])
            .expect_err("past the bound");
        assert!(matches!(e, SchedulerError::Busy(_)), "{e:?}");
    }
}
