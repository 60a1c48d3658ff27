//! What a run measures: the workloads' sizes, the paths and the links.

use anyhow::{bail, Result};
use serde::Serialize;

use super::PathKind;
use crate::link::{self, Link};

/// The sizes of the workloads and what they run over.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Written and then read back, sequentially, on the pendrive (Table I).
    pub disk_mib: u32,
    /// Serial round trips per series (Table II), at 1 Hz and back to back.
    pub pings: u32,
    /// The slow series' period (the research's: one inquiry a second).
    pub slow_interval_ms: u32,
    /// HID reports of the interrupt stream, and their period.
    pub stream_reports: u32,
    pub stream_interval_ms: u32,
    /// Round trips through the interrupt endpoints.
    pub hid_pings: u32,
    pub paths: Vec<PathKind>,
    pub links: Vec<Link>,
    pub quick: bool,
}

/// More round trips than any comparison needs (100,000 at 1 Hz is a day).
const MAX_ROUND_TRIPS: u32 = 100_000;

impl Plan {
    /// The run: 64 MiB, 300 round trips at 1 Hz and back to back, every path over
    /// every link. It takes a good hour and a half under TCG.
    pub fn full() -> Self {
        Self {
            disk_mib: 64,
            pings: 300,
            slow_interval_ms: 1000,
            stream_reports: 1000,
            stream_interval_ms: 8,
            hid_pings: 300,
            paths: PathKind::ALL.to_vec(),
            links: link::LINKS.to_vec(),
            quick: false,
        }
    }

    /// A few minutes' version of the same, for trying the benchmark out (and for CI): small
    /// sizes, a tenth of a second between the slow series' pings.
    pub fn quick() -> Self {
        Self {
            disk_mib: 8,
            pings: 20,
            slow_interval_ms: 100,
            stream_reports: 100,
            stream_interval_ms: 8,
            hid_pings: 20,
            quick: true,
            ..Self::full()
        }
    }

    /// Keeps only the paths named (by [`PathKind::name`]), in the plan's order.
    pub fn only_paths(mut self, names: &[String]) -> Result<Self> {
        for n in names {
            if PathKind::by_name(n).is_none() {
                let known: Vec<&str> = PathKind::ALL.iter().map(|p| p.name()).collect();
                bail!("unknown path {n:?}; the paths are {}", known.join(", "));
            }
        }
        self.paths.retain(|p| names.iter().any(|n| n == p.name()));
        Ok(self)
    }

    /// `n` round trips in each serial series and through the HID device, instead of the
    /// plan's own: a quick run's 20 are too few to spread a workload's fixed costs over,
    /// when comparing servers' CPU per round trip.
    pub fn with_round_trips(mut self, n: u32) -> Result<Self> {
        if !(1..=MAX_ROUND_TRIPS).contains(&n) {
            bail!("round trips must be between 1 and {MAX_ROUND_TRIPS}, not {n}");
        }
        self.pings = n;
        self.hid_pings = n;
        Ok(self)
    }

    /// Keeps only the links named (by [`Link::name`]).
    pub fn only_links(mut self, names: &[String]) -> Result<Self> {
        for n in names {
            if link::by_name(n).is_none() {
                let known: Vec<&str> = link::LINKS.iter().map(|l| l.name).collect();
                bail!("unknown link {n:?}; the links are {}", known.join(", "));
            }
        }
        self.links.retain(|l| names.iter().any(|n| n == l.name));
        Ok(self)
    }

    /// The (link, path) cells in the order they run: per link, every tunnelled path; the
    /// local path, which crosses no link, once, with `None`.
    pub fn cells(&self) -> Vec<(Option<Link>, PathKind)> {
        let mut cells = Vec::new();
        if self.paths.contains(&PathKind::Local) {
            cells.push((None, PathKind::Local));
        }
        for l in &self.links {
            for p in self.paths.iter().filter(|p| p.tunnelled()) {
                cells.push((Some(*l), *p));
            }
        }
        cells
    }
}

/// What a run records besides the measurements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Options {
    /// The HRH's packets, split into where each transaction's time went (`capture.md`,
    /// `capture.json`, see [`super::capture`]).
    pub capture: bool,
    /// Where the HRH's CPU goes during the round trips and the pendrive's workloads
    /// (`profiles/`, see [`super::profile`]). Sampling costs the HRH CPU.
    pub profile: bool,
    /// What the HRH's CPU switches between in the round trips (`traces/` and a table, see
    /// [`super::sched_trace`]). Tracing costs the HRH some CPU per event.
    pub trace: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_plan_runs_local_once_and_every_tunnel_over_every_link() {
        let cells = Plan::full().cells();
        assert_eq!(cells.len(), 1 + 4 * 3);
        assert_eq!(cells[0], (None, PathKind::Local));
        assert!(cells[1..].iter().all(|(l, p)| l.is_some() && p.tunnelled()));
    }

    #[test]
    fn paths_and_links_can_be_narrowed_by_name() {
        let plan = Plan::quick()
            .only_paths(&["stock".into(), "ours-virtio".into()])
            .unwrap()
            .only_links(&[link::LINKS[0].name.into()])
            .unwrap();
        assert_eq!(plan.cells().len(), 2);
        let e = Plan::quick().only_paths(&["nope".into()]).unwrap_err();
        assert!(e.to_string().contains("the paths are local, stock"), "{e}");
        assert!(Plan::quick().only_links(&["nope".into()]).is_err());
    }

    #[test]
    fn the_round_trips_can_be_set_within_bounds() {
        let plan = Plan::quick().with_round_trips(200).unwrap();
        assert_eq!((plan.pings, plan.hid_pings), (200, 200));
        assert_eq!(plan.disk_mib, Plan::quick().disk_mib);
        for bad in [0, MAX_ROUND_TRIPS + 1] {
            let e = Plan::quick().with_round_trips(bad).unwrap_err();
            assert!(e.to_string().contains("between 1 and"), "{e}");
        }
    }
}
