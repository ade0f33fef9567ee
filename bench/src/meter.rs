//! What one child process measures: wall time of the timed section, peak resident memory above the
//! resident memory at its start, minor page faults, and workload-specific extras.

use std::time::Instant;

/// One measured run of one (allocator, workload) pair.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Wall time of the timed section.
    pub time_ns: u64,
    /// Operations done (allocations + frees, or as the workload defines them).
    pub ops: u64,
    /// Peak resident set from the workload's start (set-up included) to the end of the timed section,
    /// minus the resident set at the workload's start, KiB.
    pub peak_kib: u64,
    /// Minor page faults during the timed section.
    pub minflt: u64,
    /// Workload-specific figures (name, value), e.g. the smallest rmalloc budget.
    pub extra: Vec<(String, f64)>,
}

impl Sample {
    /// The single line a child prints for its parent.
    pub fn to_line(&self) -> String {
        let mut s = format!(
            "RESULT time_ns={} ops={} peak_kib={} minflt={}",
            self.time_ns, self.ops, self.peak_kib, self.minflt
        );
        for (k, v) in &self.extra {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }

    /// Parses [`Sample::to_line`].
    pub fn from_line(line: &str) -> Option<Sample> {
        let rest = line.strip_prefix("RESULT ")?;
        let mut s = Sample::default();
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "time_ns" => s.time_ns = v.parse().ok()?,
                "ops" => s.ops = v.parse().ok()?,
                "peak_kib" => s.peak_kib = v.parse().ok()?,
                "minflt" => s.minflt = v.parse().ok()?,
                _ => s.extra.push((k.to_string(), v.parse().ok()?)),
            }
        }
        Some(s)
    }

    /// The extra called `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.extra.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn minflt() -> u64 {
    // SAFETY: getrusage writes into the struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_minflt as u64
    }
}

/// Brackets the timed section of a workload.
#[derive(Default)]
pub struct Meter {
    t0: Option<Instant>,
    base_kib: u64,
    begun: bool,
    flt0: u64,
    /// The result so far.
    pub sample: Sample,
}

impl Meter {
    /// Marks the start of the workload, before its set-up: resets the kernel's peak-RSS mark
    /// (`/proc/self/clear_refs`, value 5) and notes the resident set, so that the peak counts the
    /// workload's live objects and the allocator's overheads, not the harness binary.
    pub fn begin(&mut self) {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        self.base_kib = status_kib("VmRSS:");
        self.begun = true;
    }

    /// Starts the clock, after the workload's untimed set-up ([`Meter::begin`] is implied if it was
    /// not called).
    pub fn start(&mut self) {
        if !self.begun {
            self.begin();
        }
        self.flt0 = minflt();
        self.t0 = Some(Instant::now());
    }

    /// Stops the clock; `ops` is the number of operations done.
    pub fn stop(&mut self, ops: u64) {
        self.stop_at(ops, Instant::now());
    }

    /// Stops the clock as of `end` (an instant taken by a worker thread).
    pub fn stop_at(&mut self, ops: u64, end: Instant) {
        let t = end.duration_since(self.t0.take().expect("Meter::stop without start"));
        self.sample.time_ns = t.as_nanos() as u64;
        self.sample.ops = ops;
        self.sample.minflt = minflt() - self.flt0;
        self.sample.peak_kib = status_kib("VmHWM:").saturating_sub(self.base_kib);
    }

    /// Adds a workload-specific figure.
    pub fn extra(&mut self, name: &str, v: f64) {
        self.sample.extra.push((name.to_string(), v));
    }
}

/// A small fast deterministic PRNG (xorshift64*), the same sequence for every allocator.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (seed 0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next 64 random bits.
    #[inline(always)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    #[inline(always)]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    /// Uniform in `0..n`.
    #[inline(always)]
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_survives_its_line() {
        let s = Sample { time_ns: 12, ops: 34, peak_kib: 56, minflt: 78, extra: vec![("budget".into(), 1.5)] };
        let back = Sample::from_line(&s.to_line()).unwrap();
        assert_eq!((back.time_ns, back.ops, back.peak_kib, back.minflt), (12, 34, 56, 78));
        assert_eq!(back.get("budget"), Some(1.5));
        assert!(Sample::from_line("RESULT time_ns=x").is_none());
        assert!(Sample::from_line("something else").is_none());
    }

    #[test]
    fn the_meter_sees_memory_touched_in_the_timed_section() {
        let mut m = Meter::default();
        m.begin();
        m.start();
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        m.stop(1);
        assert!(m.sample.peak_kib >= 60 << 10, "peak {} KiB", m.sample.peak_kib);
        assert!(m.sample.minflt > 1000);
    }
}
