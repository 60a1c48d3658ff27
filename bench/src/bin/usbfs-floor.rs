//! `usbfs-floor`: the least a USB/IP server in user space can do per URB (see
//! `vusb_bench::floor`). Not a server to deploy: a yardstick for hrh-exporter.

fn main() -> anyhow::Result<()> {
    vusb_bench::floor::main()
}
