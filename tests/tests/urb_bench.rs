//! The URB benchmark's machinery (`vusb_vm_tests::urbbench`, `vusb-urbbench`) in one short
//! round: usbipd, hrh-exporter and the yardstick `usbfs-floor` in the HRH each carry bulk
//! URBs both ways to the sink gadget, and the HRH's CPU is read around every window, with
//! the server found working in each. A ticker runs beside each server, and must be running
//! when its turn ends and stop when told (`--ticker-us`). The numbers
//! themselves are not judged here (docs/link-benchmarks.md has them).
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only -E 'binary(urb_bench)'`
//! (or through scripts/test.sh).

use anyhow::Result;
use vusb_vm_tests::urbbench::{self, Contender, Options};

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn every_server_is_measured_in_every_window() -> Result<()> {
    let options = Options {
        rounds: 1,
        seconds: 1.0,
        sizes: vec![512],
        floor: true,
        ticker_us: Some(250),
        ..Options::default()
    };
    let samples = urbbench::run(&options, "urb-bench-hrh")?;
    let md = urbbench::markdown(&options, &samples);
    assert!(
        md.contains("`vusb-probe ticker` waking every 250 µs"),
        "{md}"
    );
    let seen: Vec<(Contender, String)> = samples
        .iter()
        .map(|s| (s.contender, s.cell.label()))
        .collect();
    assert_eq!(
        seen,
        [
            (Contender::Usbipd, "out 512 B x1".to_owned()),
            (Contender::Usbipd, "in 512 B x1".to_owned()),
            (Contender::HrhExporter, "out 512 B x1".to_owned()),
            (Contender::HrhExporter, "in 512 B x1".to_owned()),
            (Contender::Floor, "out 512 B x1".to_owned()),
            (Contender::Floor, "in 512 B x1".to_owned()),
        ],
        "{md}"
    );
    for s in &samples {
        assert!(s.urbs > 0, "{md}");
        assert!(
            s.hrh.busy_ms > 0.0 && s.hrh.busy_ms <= s.hrh.elapsed_ms,
            "{md}"
        );
        // The last window's closing reading comes before usbip-load lets go of the
        // device, so usbip-host's threads are still there to be read. The HRH's busy time
        // is sampled at its clock's ticks (10 ms), the server's counted exactly: over
        // these 1 s windows the first may come out a little below the second.
        let server = s.server_us_per_urb.unwrap_or(0.0);
        assert!(server > 0.0 && server <= 1.25 * s.hrh_us_per_urb, "{md}");
    }
    Ok(())
}
