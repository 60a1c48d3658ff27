//! Benchmarks of the USB/IP tunnel.
//!
//! The `usbip-load` binary drives a USB/IP server (ours or Linux's usbipd)
//! with bulk URBs against the loopback dongle's source and sink endpoints
//! and reports URB rate, payload throughput and latency.
//!
//! The `vusb-probe` binary ([`probe`]) measures from inside the test
//! guests: pendrive throughput, serial and HID round trips, and a HID
//! report stream.
//!
//! The `usbfs-floor` binary ([`floor`]) is the least a USB/IP server in
//! user space can do per URB: a yardstick for hrh-exporter in the URB
//! benchmark.

pub mod client;
pub mod cpu;
pub mod floor;
pub mod pattern;
pub mod probe;
pub mod report;
pub mod stats;

/// Parses a transfer size: `512`, `4K`, `64KiB`, `1M`, `1MiB` (binary
/// multiples: URB sizes are powers of two).
pub fn parse_size(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 512, 64K, 1M)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (use K or M)"
            ))
        }
    };
    n.checked_shl(shift)
        .filter(|&v| v >> shift == n)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size(" 1 MiB "), Ok(1 << 20));
        assert!(parse_size("").is_err());
        assert!(parse_size("1G").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("8192M").is_err());
    }
}
