//! The link benchmark's machinery (`vusb_vm_tests::linkbench`, `scripts/bench-links.sh`) in
//! its quick form over the LAN profile: every path comes up against one HRH guest, every
//! workload gives a result, nothing read back differs from what was written and no round
//! trip is lost, the HRH's USB/IP server is seen at work, and the results on disk say the
//! same. With the HRH's packets captured, every round trip of the USB/IP paths is found
//! again in the capture; with the HRH's kernel traced, its USB/IP server is seen in each
//! round trip, hrh-exporter's threads loading the address space that usbip-host's kernel
//! threads do without. The numbers themselves are not judged here
//! (docs/link-benchmarks.md has them).
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only -E
//! 'binary(link_benchmark)'` (or through scripts/test.sh).

use anyhow::{Context, Result};
use serde_json::Value;
use vusb_vm_tests::linkbench::sched_trace::TRACED;
use vusb_vm_tests::linkbench::workloads::Workload;
use vusb_vm_tests::linkbench::{runner, PathKind, Plan};

#[test]
#[ignore = "boots QEMU guests; run via scripts/test.sh"]
fn the_quick_link_benchmark_measures_every_path() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let plan = Plan::quick().only_links(&["lan".into()])?;
    let options = runner::Options {
        capture: true,
        trace: true,
        ..Default::default()
    };
    let results = runner::run(&plan, dir.path(), options)?;
    assert!(results.all_ok(), "failures:\n{}", results.markdown());
    let paths: Vec<PathKind> = results.cells.iter().map(|c| c.path).collect();
    assert_eq!(paths, PathKind::ALL);

    for cell in &results.cells {
        let get = |w: Workload| {
            cell.results
                .get(w.name())
                .with_context(|| format!("{}: no {} result", cell.path.name(), w.name()))
        };
        let who = cell.path.name();
        for w in [Workload::DiskWrite, Workload::DiskRead] {
            let r = get(w)?;
            assert_eq!(r["bytes"], u64::from(plan.disk_mib) << 20, "{who}: {r}");
            assert!(r["mb_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{who}: {r}");
        }
        assert_eq!(get(Workload::DiskRead)?["mismatched_blocks"], 0, "{who}");
        for (w, count) in [
            (Workload::SerialSlow, plan.pings),
            (Workload::SerialBackToBack, plan.pings),
            (Workload::HidPing, plan.hid_pings),
        ] {
            let r = get(w)?;
            assert_eq!(r["received"], count, "{who} {}: {r}", w.name());
            assert_eq!(r["rtt_us"].as_array().map(Vec::len), Some(count as usize));
        }
        // The HRH's CPU was read around every workload, and in the tunnelled paths the
        // USB/IP server (hrh-exporter's threads or usbip-host's) was found working.
        for w in Workload::ALL {
            let cpu = cell.hrh_cpu.get(w.name());
            let cpu = cpu.with_context(|| format!("{who}: no HRH CPU for {}", w.name()))?;
            assert!(cpu.busy_ms <= cpu.elapsed_ms, "{who} {}: {cpu:?}", w.name());
            if cell.path.tunnelled() {
                assert!(
                    cpu.server_ms.is_some_and(|ms| ms > 0.0),
                    "{who} {}: {cpu:?}",
                    w.name()
                );
            }
        }
        let stream = get(Workload::HidStream)?;
        assert_eq!(stream["end"], "complete", "{who}: {stream}");
        assert!(
            stream["rate_per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{who}: {stream}"
        );
    }

    // The trace: every traced round-trip series of a tunnelled path, none of its events
    // dropped, shows the server at work. hrh-exporter's threads (its runtime and a reaping
    // thread per device) make system calls, and the CPU loads their address space again
    // in every round trip, after the gadget's echo program; usbip-host's are kernel
    // threads, which make none.
    for cell in results.cells.iter().filter(|c| c.path.tunnelled()) {
        let who = cell.path.name();
        for w in TRACED {
            let t = cell
                .traces
                .get(w.name())
                .with_context(|| format!("{who}: no trace of {}", w.name()))?;
            let what = format!("{who} {}: {t:?}", w.name());
            assert_eq!(t.lost_events, 0, "{what}");
            let ran = |prefix: &str| {
                t.cpu_us
                    .iter()
                    .any(|(k, &us)| k.starts_with(prefix) && us > 0.0)
            };
            match cell.path {
                PathKind::OursVirtio | PathKind::OursUsbredir => {
                    assert!(ran("hrh-exporter") && ran("reap-"), "{what}");
                    assert!(t.counts.syscalls.get("hrh-exporter") > Some(&0.0), "{what}");
                    assert!(t.counts.mm_loads >= 1.0, "{what}");
                }
                _ => {
                    assert!(ran("stub_rx") && ran("stub_tx"), "{what}");
                    assert!(!t.counts.syscalls.contains_key("stub_rx"), "{what}");
                }
            }
        }
    }
    assert!(results.cells[0].traces.is_empty(), "local is not traced");

    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json"))?)?;
    assert_eq!(on_disk["cells"].as_array().map(Vec::len), Some(5));
    let md = std::fs::read_to_string(dir.path().join("results.md"))?;
    assert!(md.contains("| lan | ours-virtio |"), "{md}");

    // The capture: each serial and HID round trip of a tunnelled path (USB/IP on the HRH's
    // link, whatever the ISP side does with it) is one transaction at the HRH's interface,
    // and the pendrive's commands are there too. Local crosses no network: nothing of it.
    let split: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("capture.json"))?)?;
    let split = split.as_array().context("capture.json is not a list")?;
    let found = |path: &str, w: Workload| {
        split
            .iter()
            .find(|s| s["path"] == path && s["workload"] == w.name())
            .map(|s| s["transactions"].as_u64().unwrap_or(0))
    };
    for path in PathKind::ALL.into_iter().filter(|p| p.tunnelled()) {
        let who = path.name();
        for (w, count) in [
            (Workload::SerialBackToBack, plan.pings),
            (Workload::HidPing, plan.hid_pings),
        ] {
            assert_eq!(found(who, w), Some(u64::from(count)), "{who} {}", w.name());
        }
        for w in [Workload::DiskWrite, Workload::DiskRead] {
            // At least one SCSI command per MiB written or read.
            let n = found(who, w).unwrap_or(0);
            assert!(n >= u64::from(plan.disk_mib), "{who} {}: {n}", w.name());
        }
    }
    assert!(
        split.iter().all(|s| s["path"] != PathKind::Local.name()),
        "{split:?}"
    );
    Ok(())
}
