//! A process that only wakes up, again and again: `vusb-probe ticker`. On a
//! one-CPU gateway every wake-up takes the CPU from whatever runs, and
//! hands it back, the way the gadgets' echo programs do in the link
//! benchmark. The URB benchmark runs it beside each USB/IP server
//! (`vusb-urbbench --ticker-us`) to see what another process in every
//! round trip costs each server.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::sys;

/// What a ticker did.
#[derive(Debug, Serialize)]
pub struct TickerResult {
    pub wakeups: u64,
    pub seconds: f64,
}

/// Sleeps `interval` at a time until `run_for` has passed or a signal asks
/// it to stop.
pub fn tick(interval: Duration, run_for: Duration) -> TickerResult {
    let started = Instant::now();
    let mut wakeups = 0;
    while started.elapsed() < run_for && !sys::stop_requested() {
        std::thread::sleep(interval);
        wakeups += 1;
    }
    TickerResult {
        wakeups,
        seconds: started.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_wakes_until_its_time_is_up() {
        let r = tick(Duration::from_millis(1), Duration::from_millis(20));
        assert!(r.wakeups >= 1 && r.wakeups <= 20, "{r:?}");
        assert!(r.seconds >= 0.02, "{r:?}");
    }
}
