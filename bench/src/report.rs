//! Renders measurements as a one-line summary, a markdown report and JSON.

use std::fmt::Write as _;
use std::time::Duration;

use crate::stats::{Dir, Measurement};

/// The throughput goal: a 1 Gbit/s link's worth of bulk data, 125 MB/s,
/// with URBs of this size.
pub const TARGET_MB_PER_SEC: f64 = 125.0;
pub const TARGET_URB_SIZE: u32 = 64 * 1024;

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `65536` → `64 KiB`; sizes that are not whole KiB or MiB stay in bytes.
pub fn human_size(bytes: u32) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn percent(load: Option<f64>) -> String {
    load.map_or_else(|| "–".into(), |l| format!("{:.0}", l * 100.0))
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

fn json_opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "null".into(), |v| format!("{v:.decimals$}"))
}

/// One line for a terminal.
pub fn summary_line(m: &Measurement) -> String {
    let server = match (
        m.server_load(),
        m.server_cpu_per_urb(),
        m.server_wait_load(),
    ) {
        (Some(load), Some(per_urb), Some(wait)) => format!(
            "  server CPU {:>3.0}% ({:.1} us/URB, waiting {:.0}%)",
            load * 100.0,
            micros(per_urb),
            wait * 100.0
        ),
        _ => String::new(),
    };
    format!(
        "{:<3} {:>7} x {:<2} {:>8.0} URB/s {:>7.1} MB/s  latency p50 {:>7.1} us p99 {:>7.1} us max {:>8.1} us{server}  loader CPU {:>3.0}%  ({} URBs in {:.2} s{})",
        m.dir.as_str(),
        human_size(m.size),
        m.depth,
        m.urbs_per_sec(),
        m.mb_per_sec(),
        micros(m.latency.p50),
        micros(m.latency.p99),
        micros(m.latency.max),
        m.client_load() * 100.0,
        m.urbs,
        m.elapsed.as_secs_f64(),
        if m.verified { ", verified" } else { "" },
    )
}

/// The conditions a set of measurements was taken under.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub server: String,
    pub busid: String,
    pub window: String,
    pub warmup: Duration,
    pub verify: bool,
}

fn best(results: &[Measurement], dir: Dir, size: u32) -> Option<&Measurement> {
    results
        .iter()
        .filter(|m| m.dir == dir && m.size == size)
        .max_by(|a, b| a.mb_per_sec().total_cmp(&b.mb_per_sec()))
}

/// A markdown report: the goal's verdict, MB/s at a glance (sizes down,
/// direction × depth across), then every number.
pub fn markdown(info: &RunInfo, results: &[Measurement]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Server `{}`, bus id `{}`; each cell measured for {} after {:.1} s of warm-up at full queue; data {}.\n",
        info.server,
        info.busid,
        info.window,
        info.warmup.as_secs_f64(),
        if info.verify { "verified" } else { "not verified" },
    );

    for dir in [Dir::In, Dir::Out] {
        if let Some(m) = best(results, dir, TARGET_URB_SIZE) {
            let verdict = if m.mb_per_sec() >= TARGET_MB_PER_SEC {
                "meets"
            } else {
                "misses"
            };
            let _ = write!(
                s,
                "- **{}, {}**: best {:.1} MB/s (depth {}) — {verdict} the {TARGET_MB_PER_SEC} MB/s target",
                dir.as_str().to_uppercase(),
                human_size(TARGET_URB_SIZE),
                m.mb_per_sec(),
                m.depth,
            );
            if let (Some(load), Some(per_core)) = (m.server_load(), m.mb_per_server_core()) {
                let _ = write!(
                    s,
                    "; the server used {:.0}% of a core, {:.0} MB per second of its CPU time",
                    load * 100.0,
                    per_core
                );
            }
            s.push_str(".\n");
        }
    }
    s.push('\n');

    let mut columns: Vec<(Dir, usize)> = Vec::new();
    let mut sizes: Vec<u32> = Vec::new();
    for m in results {
        if !columns.contains(&(m.dir, m.depth)) {
            columns.push((m.dir, m.depth));
        }
        if !sizes.contains(&m.size) {
            sizes.push(m.size);
        }
    }
    columns.sort_by_key(|&(dir, depth)| (dir == Dir::Out, depth));
    sizes.sort_unstable();

    let grid = |s: &mut String, title: &str, cell: &dyn Fn(&Measurement) -> String| {
        let _ = write!(s, "{title}\n\n| size |");
        for (dir, depth) in &columns {
            let _ = write!(s, " {} ×{} |", dir.as_str(), depth);
        }
        s.push_str("\n|---:|");
        for _ in &columns {
            s.push_str("---:|");
        }
        s.push('\n');
        for size in &sizes {
            let _ = write!(s, "| {} |", human_size(*size));
            for (dir, depth) in &columns {
                let found = results
                    .iter()
                    .find(|m| m.size == *size && m.dir == *dir && m.depth == *depth);
                let _ = write!(s, " {} |", found.map_or_else(|| "–".into(), cell));
            }
            s.push('\n');
        }
    };
    grid(
        &mut s,
        "MB/s (URB/s) by transfer size, direction and URBs in flight:",
        &|m| format!("{:.1} ({:.0})", m.mb_per_sec(), m.urbs_per_sec()),
    );
    if results.iter().any(|m| m.cpu.server.is_some()) {
        grid(
            &mut s,
            "\nServer CPU time per URB (µs) and MB of payload per second of server CPU time \
             (what one core would carry if the server had it to itself):",
            &|m| {
                format!(
                    "{} µs, {} MB/s",
                    opt(m.server_cpu_per_urb().map(micros), 1),
                    opt(m.mb_per_server_core(), 0)
                )
            },
        );
    }

    s.push_str(
        "\nAll cells: URB latency from submit to reply in µs; CPU use in % of one core \
         during the window; \"server waiting\": time its threads were ready to run but \
         did not have the CPU, in % of the window:\n\n\
         | dir | size | depth | URBs | URB/s | MB/s | p50 | p90 | p99 | max | server CPU | server waiting | loader CPU | verified |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for m in results {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {:.0} | {} |",
            m.dir.as_str(),
            human_size(m.size),
            m.depth,
            m.urbs,
            m.urbs_per_sec(),
            m.mb_per_sec(),
            micros(m.latency.p50),
            micros(m.latency.p90),
            micros(m.latency.p99),
            micros(m.latency.max),
            percent(m.server_load()),
            percent(m.server_wait_load()),
            m.client_load() * 100.0,
            if m.verified { "yes" } else { "no" },
        );
    }
    s
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The same numbers as JSON, one object per cell, for tools and for
/// comparing runs.
pub fn json(info: &RunInfo, results: &[Measurement]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{{\n  \"server\": {},\n  \"busid\": {},\n  \"window\": {},\n  \"warmup_s\": {},\n  \"verify\": {},\n  \"results\": [",
        json_string(&info.server),
        json_string(&info.busid),
        json_string(&info.window),
        info.warmup.as_secs_f64(),
        info.verify,
    );
    for (i, m) in results.iter().enumerate() {
        let _ = write!(
            s,
            "    {{\"direction\": \"{}\", \"size\": {}, \"depth\": {}, \"urbs\": {}, \"seconds\": {:.6}, \
             \"urbs_per_s\": {:.1}, \"mb_per_s\": {:.3}, \"latency_us\": {{\"p50\": {:.1}, \"p90\": {:.1}, \
             \"p99\": {:.1}, \"max\": {:.1}}}, \"server_cpu_load\": {}, \"server_wait_load\": {}, \"server_cpu_us_per_urb\": {}, \
             \"mb_per_server_core_s\": {}, \"loader_cpu_load\": {:.3}, \"verified\": {}}}",
            m.dir.as_str(),
            m.size,
            m.depth,
            m.urbs,
            m.elapsed.as_secs_f64(),
            m.urbs_per_sec(),
            m.mb_per_sec(),
            micros(m.latency.p50),
            micros(m.latency.p90),
            micros(m.latency.p99),
            micros(m.latency.max),
            json_opt(m.server_load(), 3),
            json_opt(m.server_wait_load(), 3),
            json_opt(m.server_cpu_per_urb().map(micros), 2),
            json_opt(m.mb_per_server_core(), 1),
            m.client_load(),
            m.verified,
        );
        s.push_str(if i + 1 < results.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ]\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{CpuUse, Latency};

    fn cell(dir: Dir, size: u32, depth: usize, urbs: u64) -> Measurement {
        Measurement {
            dir,
            size,
            depth,
            urbs,
            elapsed: Duration::from_secs(1),
            latency: Latency {
                p50: Duration::from_micros(10),
                p90: Duration::from_micros(20),
                p99: Duration::from_micros(30),
                max: Duration::from_micros(40),
            },
            cpu: CpuUse {
                client: Duration::from_millis(300),
                server: Some(Duration::from_millis(500)),
                server_wait: Some(Duration::from_millis(100)),
            },
            verified: true,
        }
    }

    fn info() -> RunInfo {
        RunInfo {
            server: "127.0.0.1:3240".into(),
            busid: "1-1".into(),
            window: "1.0 s".into(),
            warmup: Duration::from_millis(200),
            verify: true,
        }
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(64), "64 B");
        assert_eq!(human_size(4096), "4 KiB");
        assert_eq!(human_size(1 << 20), "1 MiB");
        assert_eq!(human_size(1500), "1500 B");
    }

    #[test]
    fn markdown_judges_the_target_and_fills_the_grid() {
        let results = [
            cell(Dir::In, 65536, 1, 1000),
            cell(Dir::In, 65536, 8, 3000),
            cell(Dir::Out, 65536, 8, 1000),
            cell(Dir::In, 512, 1, 5000),
        ];
        let md = markdown(&info(), &results);
        assert!(
            md.contains(
                "**IN, 64 KiB**: best 196.6 MB/s (depth 8) — meets the 125 MB/s target; \
                 the server used 50% of a core, 393 MB per second of its CPU time."
            ),
            "{md}"
        );
        assert!(
            md.contains("**OUT, 64 KiB**: best 65.5 MB/s (depth 8) — misses"),
            "{md}"
        );
        assert!(md.contains("| size | in ×1 | in ×8 | out ×8 |"), "{md}");
        assert!(md.contains("| 512 B | 2.6 (5000) | – | – |"), "{md}");
        assert!(
            md.contains("| 64 KiB | 65.5 (1000) | 196.6 (3000) | 65.5 (1000) |"),
            "{md}"
        );
        assert!(
            md.contains("| 64 KiB | 500.0 µs, 131 MB/s | 166.7 µs, 393 MB/s |"),
            "{md}"
        );
        assert!(md.contains(
            "| in | 64 KiB | 8 | 3000 | 3000 | 196.6 | 10.0 | 20.0 | 30.0 | 40.0 | 50 | 10 | 30 | yes |"
        ));
    }

    #[test]
    fn json_is_well_formed_enough_to_round_trip_by_eye() {
        let mut i = info();
        i.server = "a\"b".into();
        let j = json(&i, &[cell(Dir::Out, 64, 32, 10), cell(Dir::In, 64, 1, 10)]);
        assert!(j.contains("\"server\": \"a\\\"b\""));
        assert!(j.contains("\"direction\": \"out\", \"size\": 64, \"depth\": 32, \"urbs\": 10"));
        assert!(j.contains("\"server_cpu_load\": 0.500, \"server_wait_load\": 0.100, \"server_cpu_us_per_urb\": 50000.00"));
        assert_eq!(j.matches("\"direction\"").count(), 2);
        assert_eq!(j.matches('{').count(), j.matches('}').count());
        assert!(j.trim_end().ends_with('}'));
    }
}
