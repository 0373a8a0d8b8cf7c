//! Process resource measurements through `getrusage(RUSAGE_SELF)`: CPU time (user + system)
//! and peak resident memory. Precise to the microsecond, with no assumption about the kernel's
//! clock-tick rate. On systems without `getrusage` the figures are reported as zero.

/// User + system CPU time of this process so far, in milliseconds (all threads, including
/// finished ones).
pub fn process_cpu_ms() -> u64 {
    imp::process_cpu_ms()
}

/// Peak resident set size of this process (`ru_maxrss`), in KiB.
///
/// On Linux this is at least `VmHWM`: the kernel keeps the high-water mark of the image the
/// process ran before its last `exec` (the shell or supervisor that started it), so a worker
/// started by a large process reports that process's peak if it is higher.
pub fn peak_rss_kb() -> u64 {
    imp::peak_rss_kb()
}

#[cfg(unix)]
mod imp {
    use nix::sys::resource::{Usage, UsageWho, getrusage};
    use nix::sys::time::{TimeVal, TimeValLike};

    fn usage() -> Option<Usage> {
        getrusage(UsageWho::RUSAGE_SELF).ok()
    }

    fn millis(t: TimeVal) -> u64 {
        u64::try_from(t.num_milliseconds()).unwrap_or(0)
    }

    pub(super) fn process_cpu_ms() -> u64 {
        usage().map_or(0, |u| {
            millis(u.user_time()).saturating_add(millis(u.system_time()))
        })
    }

    pub(super) fn peak_rss_kb() -> u64 {
        let max_rss = usage().map_or(0, |u| u64::try_from(u.max_rss()).unwrap_or(0));
        // macOS reports bytes; Linux and the BSDs report KiB.
        if cfg!(target_vendor = "apple") {
            max_rss / 1024
        } else {
            max_rss
        }
    }
}

#[cfg(not(unix))]
mod imp {
    pub(super) fn process_cpu_ms() -> u64 {
        0
    }

    pub(super) fn peak_rss_kb() -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn measurements_are_plausible() {
        if cfg!(unix) {
            assert!(super::peak_rss_kb() > 0);
            let before = super::process_cpu_ms();
            let t0 = std::time::Instant::now();
            let mut x = 0u64;
            while t0.elapsed() < std::time::Duration::from_millis(300) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
            assert!(super::process_cpu_ms() >= before + 100);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn peak_rss_agrees_with_proc() {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let hwm: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmHWM");
        let rss = super::peak_rss_kb();
        // `ru_maxrss` also covers the image before `exec` (here: the test runner), but the
        // kernel updates it lazily while `VmHWM` includes the current RSS: with other test
        // threads allocating, it may lag by what they touched since. Same unit (kB), same
        // order: within 16 MiB, and never below half.
        assert!(rss + 16 * 1024 >= hwm && rss * 2 >= hwm, "{rss} vs {hwm}");
    }
}
