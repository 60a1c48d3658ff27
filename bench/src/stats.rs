//! What one load run measured, and its derived rates; the sample statistics
//! shared by the load generators and `vusb-probe`.

use std::time::Duration;

/// Transfer direction, from the host's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Dir {
    /// Device to host: the loopback's pattern source.
    In,
    /// Host to device: the loopback's sink.
    Out,
}

impl Dir {
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Out => "out",
        }
    }
}

impl std::fmt::Display for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Latency percentiles of the URBs completed in the measuring window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latency {
    /// Nearest-rank percentiles; sorts `samples` (nanoseconds) in place.
    pub fn from_samples(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| Duration::from_nanos(nearest_rank(samples, q));
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: Duration::from_nanos(samples[samples.len() - 1]),
        }
    }
}

/// Nearest-rank percentile `q` (0 to 1) of `sorted`, which must be sorted
/// and not empty: the smallest sample with at least a share `q` of all
/// samples at or below it. Always one of the samples, never interpolated.
pub fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The spread of a set of durations, in microseconds: what `vusb-probe`
/// reports for round trips and intervals.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    pub count: usize,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Population standard deviation (divided by `count`, as numpy's
    /// default), so a single sample has 0.
    pub std: f64,
    /// Nearest-rank percentiles, like [`Latency`].
    pub p50: f64,
    pub p99: f64,
}

impl Summary {
    /// Summarises samples given in nanoseconds; `None` without samples.
    pub fn from_nanos(samples: &[u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let n = sorted.len() as f64;
        let mean = sorted.iter().map(|&s| s as f64).sum::<f64>() / n;
        let var = sorted
            .iter()
            .map(|&s| (s as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        // Rounded to the nanosecond the samples have.
        let us = |ns: f64| ns.round() / 1e3;
        Some(Self {
            count: sorted.len(),
            min: us(sorted[0] as f64),
            max: us(sorted[sorted.len() - 1] as f64),
            mean: us(mean),
            std: us(var.sqrt()),
            p50: us(nearest_rank(&sorted, 0.50) as f64),
            p99: us(nearest_rank(&sorted, 0.99) as f64),
        })
    }
}

/// CPU time spent during the measuring window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuUse {
    /// By the load generator.
    pub client: Duration,
    /// By the server, when its process was watched.
    pub server: Option<Duration>,
    /// Time the server's threads were ready to run but other threads had
    /// the CPU (its own other threads included).
    pub server_wait: Option<Duration>,
}

/// The outcome of one load run: a direction, a transfer size and a queue
/// depth, measured over a window during which the queue stayed full.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub dir: Dir,
    /// Bytes per URB.
    pub size: u32,
    /// URBs kept in flight.
    pub depth: usize,
    /// URBs completed inside the window.
    pub urbs: u64,
    /// Length of the window.
    pub elapsed: Duration,
    pub latency: Latency,
    pub cpu: CpuUse,
    /// Whether the data (IN) or byte count (OUT) was checked.
    pub verified: bool,
}

impl Measurement {
    pub fn bytes(&self) -> u64 {
        self.urbs * u64::from(self.size)
    }

    pub fn urbs_per_sec(&self) -> f64 {
        self.urbs as f64 / self.elapsed.as_secs_f64()
    }

    /// Payload throughput in MB/s (10^6 bytes), headers not counted.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes() as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    /// Share of one core the server used (1.0 = one core busy).
    pub fn server_load(&self) -> Option<f64> {
        Some(self.cpu.server?.as_secs_f64() / self.elapsed.as_secs_f64())
    }

    /// Server run-queue wait over the window (can exceed 1.0 when several
    /// of its threads wait at once).
    pub fn server_wait_load(&self) -> Option<f64> {
        Some(self.cpu.server_wait?.as_secs_f64() / self.elapsed.as_secs_f64())
    }

    /// Share of one core the load generator used.
    pub fn client_load(&self) -> f64 {
        self.cpu.client.as_secs_f64() / self.elapsed.as_secs_f64()
    }

    /// Server CPU time per URB.
    pub fn server_cpu_per_urb(&self) -> Option<Duration> {
        let cpu = self.cpu.server?;
        (self.urbs > 0).then(|| cpu / self.urbs.min(u64::from(u32::MAX)) as u32)
    }

    /// MB/s the server would carry with one core all to itself: payload
    /// per second of server CPU time. Unlike [`Self::mb_per_sec`] it does
    /// not drop when other processes take turns on the server's core.
    pub fn mb_per_server_core(&self) -> Option<f64> {
        let cpu = self.cpu.server?.as_secs_f64();
        (cpu > 0.0).then(|| self.bytes() as f64 / cpu / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<u64> = (1..=100).rev().collect();
        let l = Latency::from_samples(&mut samples);
        assert_eq!(l.p50, Duration::from_nanos(50));
        assert_eq!(l.p90, Duration::from_nanos(90));
        assert_eq!(l.p99, Duration::from_nanos(99));
        assert_eq!(l.max, Duration::from_nanos(100));
        assert_eq!(Latency::from_samples(&mut [7]).p50, Duration::from_nanos(7));
        assert_eq!(Latency::from_samples(&mut []), Latency::default());
    }

    #[test]
    fn nearest_rank_picks_a_sample_without_interpolating() {
        let sorted = [10, 20, 30, 40];
        assert_eq!(nearest_rank(&sorted, 0.0), 10);
        assert_eq!(nearest_rank(&sorted, 0.25), 10);
        assert_eq!(nearest_rank(&sorted, 0.26), 20);
        assert_eq!(nearest_rank(&sorted, 0.5), 20);
        assert_eq!(nearest_rank(&sorted, 0.99), 40);
        assert_eq!(nearest_rank(&sorted, 1.0), 40);
        assert_eq!(nearest_rank(&[5], 0.99), 5);
    }

    #[test]
    fn summary_is_in_microseconds_with_population_std() {
        assert_eq!(Summary::from_nanos(&[]), None);
        // 2, 4, 4, 4, 5, 5, 7, 9 ms: mean 5, population std exactly 2.
        let ms = [9, 4, 5, 4, 2, 7, 4, 5];
        let ns: Vec<u64> = ms.iter().map(|m| m * 1_000_000).collect();
        let s = Summary::from_nanos(&ns).unwrap();
        assert_eq!(s.count, 8);
        assert_eq!(s.min, 2000.0);
        assert_eq!(s.max, 9000.0);
        assert_eq!(s.mean, 5000.0);
        assert_eq!(s.std, 2000.0);
        assert_eq!(s.p50, 4000.0);
        assert_eq!(s.p99, 9000.0);
        // The input order is the caller's (round trips in ping order).
        assert_eq!(ns[0], 9_000_000);

        let one = Summary::from_nanos(&[1500]).unwrap();
        assert_eq!((one.min, one.max, one.std, one.p99), (1.5, 1.5, 0.0, 1.5));

        // p99 of 300 round trips is the 297th smallest.
        let ns: Vec<u64> = (1..=300).map(|i| i * 1000).collect();
        let s = Summary::from_nanos(&ns).unwrap();
        assert_eq!((s.p50, s.p99), (150.0, 297.0));
    }

    #[test]
    fn rates_count_payload_in_decimal_megabytes() {
        let m = Measurement {
            dir: Dir::In,
            size: 65536,
            depth: 8,
            urbs: 2000,
            elapsed: Duration::from_secs(2),
            latency: Latency::default(),
            cpu: CpuUse {
                client: Duration::from_millis(500),
                server: Some(Duration::from_secs(1)),
                server_wait: Some(Duration::from_millis(200)),
            },
            verified: true,
        };
        assert_eq!(m.urbs_per_sec(), 1000.0);
        assert!((m.mb_per_sec() - 65.536).abs() < 1e-9);
        assert_eq!(m.client_load(), 0.25);
        assert_eq!(m.server_load(), Some(0.5));
        assert_eq!(m.server_wait_load(), Some(0.1));
        assert_eq!(m.server_cpu_per_urb(), Some(Duration::from_micros(500)));
        assert!((m.mb_per_server_core().unwrap() - 131.072).abs() < 1e-9);
    }
}
