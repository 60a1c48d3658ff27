//! The link benchmark: the research's measurements (pendrive write and read throughput,
//! serial round trips through a CDC-ACM dongle) and an interrupt-endpoint stream, through
//! five ways of reaching the HRH's devices, over emulated home-to-ISP links. The devices are
//! the HRH guest's real kernel gadgets ([`crate::hrh`]); the links are netem inside the HRH
//! guest ([`crate::link`]); the measuring is done inside the guests by `vusb-probe`.
//!
//! * `plan`: what is measured, full or quick;
//! * `paths`: bringing a path up (servers, backends, guests) and down again;
//! * `workloads`: running `vusb-probe` in a guest and reading its results;
//! * `runner`: the run itself, with its progress lines;
//! * `report`: the results as JSON and markdown;
//! * `capture`: where each transaction's time went, from a capture of the HRH's packets;
//! * `hrh_cpu`: what the HRH's CPU and its USB/IP server did during each workload;
//! * `profile`: where the HRH's CPU went, sampled by perf;
//! * `sched_trace`: what the HRH's CPU switched between in a round trip, traced by ftrace.
//!
//! `vusb-linkbench` (tests/src/bin) drives it; docs/link-benchmarks.md explains it.

pub mod capture;
pub mod hrh_cpu;
pub mod paths;
pub mod plan;
pub mod profile;
pub mod report;
pub mod runner;
pub mod sched_trace;
pub mod workloads;

pub use paths::PathKind;
pub use plan::Plan;
