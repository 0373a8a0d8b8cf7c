//! Progress bars for the long CLI commands (`job submit --watch`, `job watch`, `demo`,
//! `bench psi`), drawn with `indicatif` on stderr, and only when stderr is a terminal: in a
//! pipe, a log or a test they are hidden and print nothing.
//!
//! A bar follows a phased count (a PSI side goes through its phases, each counted from 0 to
//! its total). Reports can arrive out of order, so a bar never goes backwards: a report for a
//! phase already left, or a smaller count within the current phase, is ignored. Phases of one
//! family (the name up to its first space: "bucket 2/9" after "bucket 1/9") are one count;
//! the bar shows the full name and, when the operator estimates it, the time left.

use std::io::{self, IsTerminal};
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A set of bars drawn together: on stderr if it is a terminal, else hidden.
pub fn multi() -> MultiProgress {
    let target = if io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    MultiProgress::with_draw_target(target)
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>12} {msg:<16} [{bar:30}] {pos}/{len}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Where a bar stands: the phases seen so far (the last is current) and the count in it.
#[derive(Debug, Default)]
struct PhaseState {
    phases: Vec<String>,
    done: u64,
}

/// One bar following a phased count; see the module documentation.
#[derive(Debug)]
pub struct PhaseBar {
    bar: ProgressBar,
    state: Mutex<PhaseState>,
}

impl PhaseBar {
    /// A new bar in `multi`, labelled `label` (a party, a PSI role).
    pub fn new(multi: &MultiProgress, label: &str) -> Self {
        let bar = multi.add(ProgressBar::new(0));
        bar.set_style(style());
        bar.set_prefix(label.to_string());
        Self {
            bar,
            state: Mutex::new(PhaseState::default()),
        }
    }

    /// `done` of `total` units of `phase` are complete. Returns whether the bar moved.
    pub fn update(&self, phase: &str, done: u64, total: u64) -> bool {
        self.update_with_eta(phase, done, total, None)
    }

    /// [`PhaseBar::update`] with the operator's estimate of the time left in the phase.
    pub fn update_with_eta(&self, phase: &str, done: u64, total: u64, eta_ms: Option<u64>) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let family = tessera_scheduler::phase_family(phase);
        if phase == tessera_scheduler::resume::PHASE_WAITING {
            // The run broke off: what follows is a new attempt, whose phases start again.
            st.phases.clear();
            st.phases.push(family.to_string());
            st.done = 0;
            self.bar.set_message(phase.to_string());
            self.bar.set_length(1);
            self.bar.set_position(0);
            return true;
        }
        match st.phases.iter().position(|p| p == family) {
            Some(i) if i + 1 < st.phases.len() => return false,
            Some(_) if done <= st.done => return false,
            Some(_) => {}
            None => {
                st.phases.push(family.to_string());
                st.done = 0;
                self.bar.set_position(0);
            }
        }
        self.bar.set_message(match eta_ms {
            Some(ms) => format!("{phase}, {}s left", ms.div_ceil(1000)),
            None => phase.to_string(),
        });
        st.done = done;
        self.bar.set_length(total.max(done));
        self.bar.set_position(done);
        true
    }

    /// The current phase and count.
    #[cfg(test)]
    pub fn position(&self) -> Option<(String, u64)> {
        let st = self.state.lock().ok()?;
        st.phases.last().map(|p| (p.clone(), st.done))
    }

    /// Stops drawing the bar, leaving its last state on screen.
    pub fn finish(&self) {
        self.bar.abandon();
    }
}

impl tessera_psi::Progress for PhaseBar {
    fn report(&self, phase: &str, done: u64, total: u64) {
        self.update(phase, done, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_never_go_backwards() {
        let m = MultiProgress::with_draw_target(ProgressDrawTarget::hidden());
        let b = PhaseBar::new(&m, "buyer");
        assert!(b.update("hash", 10, 100));
        assert!(
            !b.update("hash", 5, 100),
            "a late, smaller count is ignored"
        );
        assert!(b.update("hash", 100, 100));
        assert!(b.update("blind", 1, 50));
        assert!(
            !b.update("hash", 100, 100),
            "a phase already left is ignored"
        );
        assert_eq!(b.position(), Some(("blind".into(), 1)));
        assert!(b.update("bucket 1/3", 10, 30));
        assert!(b.update("bucket 2/3", 20, 30), "one family, one count");
        assert!(
            !b.update("bucket 1/3", 15, 30),
            "a late report of the family"
        );
        assert_eq!(b.position(), Some(("bucket".into(), 20)));
        b.finish();
    }

    #[test]
    fn a_resumed_run_draws_its_phases_again() {
        let m = MultiProgress::with_draw_target(ProgressDrawTarget::hidden());
        let b = PhaseBar::new(&m, "provider");
        assert!(b.update("read", 100, 100));
        assert!(b.update("bucket 40/100", 4_000, 10_000));
        assert!(b.update(tessera_scheduler::resume::PHASE_WAITING, 0, 0));
        assert_eq!(b.position(), Some(("waiting".into(), 0)));
        // The resumed attempt reads (restores) and goes on from bucket 39.
        assert!(b.update("read", 100, 100));
        assert!(b.update("bucket 39/100", 3_900, 10_000));
        assert!(b.update("bucket 41/100", 4_100, 10_000));
        assert_eq!(b.position(), Some(("bucket".into(), 4_100)));
        b.finish();
    }
}
