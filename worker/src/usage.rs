//! Process resource measurements from `/proc` (Linux): CPU time and peak resident memory.
//! On other systems the figures are reported as zero.

/// Clock ticks per second used by `/proc/self/stat` (the Linux default, `CLK_TCK` = 100).
const CLOCK_TICKS_PER_S: u64 = 100;

/// User + system CPU time of this process so far, in milliseconds.
pub fn process_cpu_ms() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * 1000 / CLOCK_TICKS_PER_S
}

/// Peak resident set size of this process (`VmHWM`), in KiB.
pub fn peak_rss_kb() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn measurements_are_plausible_on_linux() {
        if cfg!(target_os = "linux") {
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
}
