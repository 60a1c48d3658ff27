//! Real kernel USB devices exported by an HRH guest and used by a client guest through the
//! stock Linux USB/IP client: once with Debian's `usbipd` + usbip-host, once with
//! `hrh-exporter`, and both side by side to compare what the client gets.
//!
//! The HRH's devices (see `tests/src/hrh.rs`): a CDC-ACM serial port, a mass-storage device
//! and a vendor-defined HID device (configfs gadgets on dummy_hcd), and QEMU's emulated USB
//! audio device (isochronous OUT). The scenario moves data both ways through each, then
//! unplugs the gadgets while they are attached and plugs the serial port back in.
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only` after
//! `cargo build --workspace` (or through scripts/test.sh).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use vusb_vm_tests::hrh::{check_tone_reached, wav_sample_signs};
use vusb_vm_tests::{boot_client, Hrh, HrhConfig, HrhDevice, Output, Remote, Server};

/// Two TCG guests boot at once on a small machine: 10–20 s alone, more together.
const BOOT: Duration = Duration::from_secs(180);
/// An ordinary step (a few shell commands).
const STEP: Duration = Duration::from_secs(60);
/// How much data the storage step writes and reads back.
const STORAGE_MIB: u32 = 8;
/// How long the audio step plays.
const AUDIO_SECONDS: u32 = 2;

/// The client's view of one USB/IP server, normalised so that two servers can be compared.
/// Durations are kept out of comparisons.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    /// `usbip list -r` before anything is attached.
    listing: Vec<ListedDevice>,
    /// Bus ids `usbip list -r` still shows while every device is attached.
    listed_while_attached: Vec<String>,
    /// Per device name: what `usbip port` and the client's USB core report once attached.
    attached: BTreeMap<String, AttachedDevice>,
    serial_to_hrh: bool,
    serial_to_client: bool,
    /// The data written through the client's /dev/sda came back from it, and is in the HRH's
    /// backing file.
    storage_read_back: bool,
    storage_in_backing_file: bool,
    /// Hex of the reports as received at the other end.
    hid_to_client: Option<String>,
    hid_to_hrh: Option<String>,
    /// The client's `dd` to the audio device succeeded.
    audio_played: bool,
    /// The client saw the unplugged gadgets vanish, and the processes using them ended.
    unplug_noticed: bool,
    /// Devices still imported after the unplug (names).
    ports_after_unplug: Vec<String>,
    /// The serial gadget, plugged back in, is exported again within 15 s without anyone's
    /// help...
    replug_listed_by_itself: bool,
    /// ... and (after `usbip bind` again where the server needs it) can be attached and used.
    replug_works: bool,
    server_alive_at_end: bool,
    notes: Notes,
}

/// What is printed for the report but left out of comparisons: durations (TCG makes them
/// vary widely) and the server's bus/device numbers, which are the server's to choose.
#[derive(Debug, Clone, Default)]
#[allow(dead_code)] // read through Debug
struct Notes {
    storage_roundtrip: Duration,
    audio_dd: Duration,
    unplug_to_gone: Duration,
    replug_to_listed: Duration,
    /// `usbip port`'s "remote bus/dev" per device name.
    remote_bus_dev: BTreeMap<String, String>,
    /// The server's mappings of usbfs files after the storage step: hrh-exporter's
    /// transfer buffers (usbipd, in the kernel, has none).
    usbfs_mappings: u32,
}

impl PartialEq for Notes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// One device of `usbip list -r`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListedDevice {
    busid: String,
    /// "vendor : product (vid:pid)"
    ids: String,
    /// The device class line, e.g. "Miscellaneous Device / ? / Interface Association (ef/02/01)".
    class: String,
    /// Interface lines, e.g. "0 - Communications / Abstract (modem) / None (02/02/00)".
    interfaces: Vec<String>,
    /// The sysfs path line: differs between servers by design (usbipd shows the HRH's sysfs
    /// path), so it is kept for the report and left out of comparisons.
    path: String,
}

/// How the client sees an attached device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AttachedDevice {
    /// `usbip port`: "High Speed(480Mbps)" etc.
    port_speed: String,
    /// The client's sysfs: speed, active configuration, hash of all descriptors as read from
    /// the device, interfaces with their drivers.
    speed: String,
    configuration: String,
    descriptors_sha256: String,
    interfaces: Vec<String>,
}

/// Parses `usbip list -r` output (the lines after "LIST: ").
fn parse_listing(out: &Output) -> Vec<ListedDevice> {
    let mut devices: Vec<ListedDevice> = Vec::new();
    let mut extra = 0usize;
    for line in out.lines.iter().filter_map(|l| l.strip_prefix("LIST: ")) {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix(": ") {
            let Some(device) = devices.last_mut() else {
                continue;
            };
            match extra {
                0 => device.path = rest.trim().to_owned(),
                1 => device.class = rest.trim().to_owned(),
                _ => device.interfaces.push(rest.trim().to_owned()),
            }
            extra += 1;
        } else if let Some((busid, ids)) = trimmed.split_once(": ") {
            if !busid.is_empty()
                && busid
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '-' || c == '.')
            {
                devices.push(ListedDevice {
                    busid: busid.to_owned(),
                    ids: ids.trim().to_owned(),
                    class: String::new(),
                    interfaces: Vec::new(),
                    path: String::new(),
                });
                extra = 0;
            }
        }
    }
    devices.sort_by(|a, b| a.ids.cmp(&b.ids));
    devices
}

/// What `usbip port` (lines after "PORT: ") says of an imported device.
#[derive(Debug, Clone, Default)]
struct PortInfo {
    /// "High Speed(480Mbps)" etc.
    speed: String,
    /// "019/002": the server's bus and device numbers.
    remote_bus_dev: String,
}

/// `usbip port` per imported busid.
fn parse_ports(out: &Output) -> BTreeMap<String, PortInfo> {
    let mut ports = BTreeMap::new();
    let mut speed = String::new();
    let mut busid = String::new();
    for line in out.lines.iter().filter_map(|l| l.strip_prefix("PORT: ")) {
        if let Some((_, s)) = line.split_once(" at ") {
            speed = s.trim().to_owned();
        } else if let Some((_, url)) = line.split_once("-> usbip://") {
            busid = url.trim().rsplit('/').next().unwrap_or_default().to_owned();
            ports.insert(
                busid.clone(),
                PortInfo {
                    speed: speed.clone(),
                    remote_bus_dev: String::new(),
                },
            );
        } else if let Some((_, bus_dev)) = line.split_once("-> remote bus/dev ") {
            if let Some(port) = ports.get_mut(&busid) {
                port.remote_bus_dev = bus_dev.trim().to_owned();
            }
        }
    }
    ports
}

fn lines_with_prefix(out: &Output, prefix: &str) -> Vec<String> {
    out.lines
        .iter()
        .filter_map(|l| l.strip_prefix(prefix).map(str::to_owned))
        .collect()
}

fn token(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{what}-{nanos:09}")
}

fn busid_of<'a>(devices: &'a [HrhDevice], name: &str) -> Result<&'a str> {
    devices
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.busid.as_str())
        .with_context(|| format!("the HRH has no {name} device: {devices:?}"))
}

/// Boots the HRH and the client together and waits for both.
fn boot_pair(name: &str, config: HrhConfig) -> Result<(Hrh, Remote, Vec<HrhDevice>)> {
    let mut hrh = Hrh::boot(config)?;
    let mut client = boot_client(&format!("{name}-client"), hrh.port())?;
    let devices = hrh.wait_ready(BOOT)?;
    client.wait_ready(BOOT)?;
    for name in ["acm", "storage", "hid", "audio"] {
        busid_of(&devices, name)?;
    }
    Ok((hrh, client, devices))
}

/// The scenario: list, attach everything, move data through each device, unplug the gadgets
/// while attached, plug the serial port back in and use it, then put everything back as it
/// was (all gadgets plugged in, nothing attached, server stopped). `tone` is the 8-bit sample
/// (octal) the audio step plays, so that two runs can be told apart in the WAV file.
fn run_scenario(
    hrh: &mut Hrh,
    client: &mut Remote,
    devices: &[HrhDevice],
    server: Server,
    tone: &str,
) -> Result<Observed> {
    let note = |hrh: &mut Hrh, client: &mut Remote, text: &str| {
        hrh.remote().guest().note(text);
        client.guest().note(text);
    };
    note(
        hrh,
        client,
        &format!("==== scenario with {} ====", server.name()),
    );
    hrh.start_server(server)?;

    let listing = parse_listing(&client.check("remote_list", STEP)?);

    // Attach everything, then wait for each class driver's device node.
    for device in devices {
        client.check(&format!("attach {} {}", device.busid, device.id), STEP)?;
    }
    for (node, test) in [
        ("/dev/ttyACM0", "-c"),
        ("/dev/sda", "-b"),
        ("/dev/hidraw0", "-c"),
        ("/dev/dsp", "-c"),
    ] {
        client.check(
            &format!("wait_for 60 test {test} {node} || fail '{node} did not appear'"),
            Duration::from_secs(90),
        )?;
    }
    let ports = parse_ports(&client.check("ports", STEP)?);
    let mut attached = BTreeMap::new();
    let mut remote_bus_dev = BTreeMap::new();
    for device in devices {
        let out = client.check(&format!("describe {}", device.id), STEP)?;
        let port = ports.get(&device.busid).cloned().unwrap_or_default();
        remote_bus_dev.insert(device.name.clone(), port.remote_bus_dev);
        attached.insert(
            device.name.clone(),
            AttachedDevice {
                port_speed: port.speed,
                speed: out.required("SPEED")?.to_owned(),
                configuration: out.required("CONFIGURATION")?.to_owned(),
                descriptors_sha256: out.required("DESCRIPTORS-SHA256")?.to_owned(),
                interfaces: lines_with_prefix(&out, "INTERFACE="),
            },
        );
    }
    let listed_while_attached = parse_listing(&client.check("remote_list", STEP)?)
        .into_iter()
        .map(|d| d.busid)
        .collect();

    // Serial, both ways.
    hrh.remote().check("serial_listen", STEP)?;
    client.check("serial_listen", STEP)?;
    let to_hrh = token("to-hrh");
    client.check(&format!("serial_send {to_hrh}"), STEP)?;
    let serial_to_hrh = hrh
        .remote()
        .run(&format!("serial_expect {to_hrh} 20"), STEP)?
        .rc
        == 0;
    let to_client = token("to-client");
    hrh.remote()
        .check(&format!("serial_send {to_client}"), STEP)?;
    let serial_to_client = client
        .run(&format!("serial_expect {to_client} 20"), STEP)?
        .rc
        == 0;

    // Mass storage: random data written, read back past the page cache, and found in the
    // HRH's backing file.
    let out = client.check(
        &format!("storage_roundtrip {STORAGE_MIB}"),
        Duration::from_secs(240),
    )?;
    let storage_time = out.elapsed;
    let written = out.required("WRITTEN-SHA256")?.to_owned();
    let storage_read_back = out.required("READBACK-SHA256")? == written;
    let image = hrh
        .remote()
        .check(&format!("storage_sha256 {STORAGE_MIB}"), STEP)?;
    let storage_in_backing_file = image.required("IMAGE-SHA256")? == written;
    let usbfs_mappings = hrh
        .remote()
        .check("server_usbfs_mappings", STEP)?
        .required("USBFS-MAPPINGS")?
        .parse()?;

    // HID: an input report from the HRH's /dev/hidg0 to the client's /dev/hidraw0, and an
    // output report back.
    client.check("hid_listen", STEP)?;
    hrh.remote().check("hid_send 0102030405060708", STEP)?;
    let out = client.run("hid_received 20", STEP)?;
    let hid_to_client = out.value("HID-RECEIVED").map(str::to_owned);
    hrh.remote().check("hid_listen", STEP)?;
    client.check("hid_send a0a1a2a3a4a5a6a7", STEP)?;
    let out = hrh.remote().run("hid_received 20", STEP)?;
    let hid_to_hrh = out.value("HID-RECEIVED").map(str::to_owned);

    // Audio: isochronous OUT packets to QEMU's device.
    let out = client.check(
        &format!("audio_play {AUDIO_SECONDS} {tone}"),
        Duration::from_secs(120),
    )?;
    let audio_played = out.value("AUDIO-RC") == Some("0");
    let audio_time = out.elapsed;

    // Unplug the three gadgets while attached, with processes blocked reading them and disk
    // reads in flight.
    client.check("unplug_watchers", STEP)?;
    let gadget_busids: Vec<&str> = ["acm", "storage", "hid"]
        .iter()
        .map(|name| busid_of(devices, name))
        .collect::<Result<_>>()?;
    hrh.remote().check(
        "sh /hrh-gadgets.sh down acm && sh /hrh-gadgets.sh down storage && sh /hrh-gadgets.sh down hid",
        STEP,
    )?;
    let unplugged_at = Instant::now();
    let out = client.run(
        &format!("wait_for 60 unplugged {}", gadget_busids.join(" ")),
        Duration::from_secs(90),
    )?;
    let unplug_noticed = out.rc == 0;
    let unplug_to_gone = unplugged_at.elapsed();
    if !unplug_noticed {
        client.run(
            "ls -l /dev/ttyACM0 /dev/sda /dev/hidraw0; ports; ps; for f in /tmp/watch-*.pid; do echo \"$f: $(cat $f)\"; done",
            STEP,
        )?;
    }
    let remaining = parse_ports(&client.check("ports", STEP)?);
    let ports_after_unplug = devices
        .iter()
        .filter(|d| remaining.contains_key(&d.busid))
        .map(|d| d.name.clone())
        .collect();

    // Plug the serial port back in: the server should offer it again and it should work.
    let out = hrh.remote().check("sh /hrh-gadgets.sh up acm", STEP)?;
    let acm_busid = out
        .lines
        .iter()
        .find_map(|l| {
            l.strip_prefix("HRH-GADGET name=acm busid=")
                .and_then(|r| r.split_whitespace().next())
        })
        .context("no busid for the replugged serial gadget")?
        .to_owned();
    let replugged_at = Instant::now();
    // hrh-exporter looks for its devices about once a second.
    let replug_listed_by_itself = hrh
        .remote()
        .run(&format!("wait_for 15 listed_locally {acm_busid}"), STEP)?
        .rc
        == 0;
    let replug_to_listed = replugged_at.elapsed();
    let mut relisted = replug_listed_by_itself;
    if !relisted && server == Server::Usbipd {
        // usbip-host lets go of a device that goes away: on the way back the device gets its
        // ordinary drivers, and an operator has to `usbip bind` it again.
        relisted = hrh
            .remote()
            .run(
                &format!("usbip bind -b {acm_busid} && wait_for 30 listed_locally {acm_busid}"),
                STEP,
            )?
            .rc
            == 0;
    }
    let mut replug_works = false;
    if relisted {
        let attach = client.run(&format!("attach {acm_busid} 1209:000a"), STEP)?;
        if attach.rc == 0
            && client
                .run(
                    "wait_for 60 test -c /dev/ttyACM0 && serial_listen",
                    Duration::from_secs(90),
                )?
                .rc
                == 0
        {
            let again = token("replugged");
            hrh.remote().check(&format!("serial_send {again}"), STEP)?;
            replug_works = client.run(&format!("serial_expect {again} 20"), STEP)?.rc == 0;
        }
    }

    let server_alive_at_end = hrh.remote().run("server_alive", STEP)?.rc == 0;

    // Back to the starting point.
    client.check("detach_all", STEP)?;
    hrh.remote().check(
        "sh /hrh-gadgets.sh up storage && sh /hrh-gadgets.sh up hid",
        STEP,
    )?;
    hrh.stop_server()?;
    note(
        hrh,
        client,
        &format!("==== end of scenario with {} ====", server.name()),
    );

    Ok(Observed {
        listing,
        listed_while_attached,
        attached,
        serial_to_hrh,
        serial_to_client,
        storage_read_back,
        storage_in_backing_file,
        hid_to_client,
        hid_to_hrh,
        audio_played,
        unplug_noticed,
        ports_after_unplug,
        replug_listed_by_itself,
        replug_works,
        server_alive_at_end,
        notes: Notes {
            storage_roundtrip: storage_time,
            audio_dd: audio_time,
            unplug_to_gone,
            replug_to_listed,
            remote_bus_dev,
            usbfs_mappings,
        },
    })
}

/// What every correct server must achieve in the scenario.
fn assert_scenario_works(server: Server, devices: &[HrhDevice], seen: &Observed) -> Result<()> {
    let who = server.name();
    eprintln!("{who}: {seen:#?}");
    let mut listed: Vec<&str> = seen.listing.iter().map(|d| d.busid.as_str()).collect();
    listed.sort_unstable();
    let mut expected: Vec<&str> = devices.iter().map(|d| d.busid.as_str()).collect();
    expected.sort_unstable();
    ensure!(
        listed == expected,
        "{who} lists {listed:?}, the HRH has {expected:?}"
    );
    for device in devices {
        let listed = seen
            .listing
            .iter()
            .find(|d| d.busid == device.busid)
            .context("listed")?;
        ensure!(
            listed.ids.ends_with(&format!("({})", device.id)),
            "{who} lists {} as {:?}, expected id {}",
            device.busid,
            listed.ids,
            device.id
        );
        let attached = seen
            .attached
            .get(&device.name)
            .with_context(|| format!("{who}: {} was not attached", device.name))?;
        ensure!(
            attached.interfaces.iter().all(|i| !i.ends_with("driver=")),
            "{who}: an interface of {} has no driver on the client: {:?}",
            device.name,
            attached.interfaces
        );
    }
    ensure!(
        seen.serial_to_hrh,
        "{who}: a line written to the client's /dev/ttyACM0 did not reach the HRH's /dev/ttyGS0"
    );
    ensure!(
        seen.serial_to_client,
        "{who}: a line written to the HRH's /dev/ttyGS0 did not reach the client's /dev/ttyACM0"
    );
    ensure!(
        seen.storage_read_back,
        "{who}: data read back from /dev/sda differs from what was written"
    );
    ensure!(
        seen.storage_in_backing_file,
        "{who}: the HRH's backing file does not hold what the client wrote"
    );
    ensure!(
        seen.hid_to_client.as_deref() == Some("0102030405060708"),
        "{who}: HID input report at the client: {:?}",
        seen.hid_to_client
    );
    ensure!(
        seen.hid_to_hrh.as_deref() == Some("a0a1a2a3a4a5a6a7"),
        "{who}: HID output report at the HRH: {:?}",
        seen.hid_to_hrh
    );
    ensure!(
        seen.audio_played,
        "{who}: playing to the USB audio device failed"
    );
    ensure!(
        seen.unplug_noticed,
        "{who}: the client did not let go of the unplugged devices within 60 s"
    );
    ensure!(
        seen.ports_after_unplug == ["audio"],
        "{who}: imported after the unplug: {:?} (expected only the audio device)",
        seen.ports_after_unplug
    );
    ensure!(
        seen.replug_works,
        "{who}: the replugged serial port could not be attached and used"
    );
    ensure!(
        seen.server_alive_at_end,
        "{who}: the server died during the scenario"
    );
    Ok(())
}

/// hrh-exporter's bulk transfers ran in buffers mapped from usbfs, which the kernel uses
/// without copying: the storage step's data, verified above, went through them.
fn ensure_transfers_were_mapped(seen: &Observed) -> Result<()> {
    ensure!(
        seen.notes.usbfs_mappings > 0,
        "hrh-exporter holds no usbfs mapping after the storage step: its transfers were copied"
    );
    Ok(())
}

/// Shuts both guests down; the HRH last, so that its WAV file is complete.
fn shut_down(hrh: Hrh, client: Remote) -> Result<std::path::PathBuf> {
    let wav = hrh.wav_path().to_path_buf();
    assert_eq!(client.finish(STEP)?, 0, "the client's script failed");
    assert_eq!(hrh.finish(STEP)?, 0, "the HRH's script failed");
    Ok(wav)
}

#[test]
#[ignore = "boots QEMU guests; run via scripts/test.sh"]
fn stock_usbipd_exports_real_devices() -> Result<()> {
    let name = "hrh_usbipd";
    let (mut hrh, mut client, devices) = boot_pair(name, HrhConfig::new(name))?;
    let seen = run_scenario(&mut hrh, &mut client, &devices, Server::Usbipd, "300")?;
    let wav = shut_down(hrh, client)?;
    assert_scenario_works(Server::Usbipd, &devices, &seen)?;
    let (positive, _) = wav_sample_signs(&wav)?;
    check_tone_reached(positive, AUDIO_SECONDS, "usbipd")
}

#[test]
#[ignore = "boots QEMU guests; run via scripts/test.sh"]
fn hrh_exporter_exports_real_devices() -> Result<()> {
    let name = "hrh_exporter";
    let (mut hrh, mut client, devices) = boot_pair(name, HrhConfig::new(name).with_exporter())?;
    let seen = run_scenario(&mut hrh, &mut client, &devices, Server::HrhExporter, "100")?;
    let wav = shut_down(hrh, client)?;
    assert_scenario_works(Server::HrhExporter, &devices, &seen)?;
    ensure_transfers_were_mapped(&seen)?;
    // Its devices are selected by bus id and looked for about once a second, so a dongle
    // plugged back in is offered again without anyone's help (usbipd needs `usbip bind`).
    ensure!(
        seen.replug_listed_by_itself,
        "hrh-exporter did not offer the replugged serial port again within 15 s"
    );
    let (_, negative) = wav_sample_signs(&wav)?;
    check_tone_reached(negative, AUDIO_SECONDS, "hrh-exporter")
}

#[test]
#[ignore = "boots QEMU guests; run via scripts/test.sh"]
fn usbipd_and_hrh_exporter_agree() -> Result<()> {
    // One pair of guests for both servers: the same device instances, the same client.
    let name = "hrh_compare";
    let (mut hrh, mut client, devices) = boot_pair(name, HrhConfig::new(name).with_exporter())?;
    let stock = run_scenario(&mut hrh, &mut client, &devices, Server::Usbipd, "300")?;
    let ours = run_scenario(&mut hrh, &mut client, &devices, Server::HrhExporter, "100")?;
    let wav = shut_down(hrh, client)?;
    eprintln!("usbipd: {stock:#?}\nhrh-exporter: {ours:#?}");
    compare(&devices, &stock, &ours)?;
    ensure_transfers_were_mapped(&ours)?;
    // Each server's run played a tone of its own sign.
    let (positive, negative) = wav_sample_signs(&wav)?;
    check_tone_reached(positive, AUDIO_SECONDS, "usbipd")?;
    check_tone_reached(negative, AUDIO_SECONDS, "hrh-exporter")
}

/// The interface class triple "(cc/ss/pp)" at the end of a `usbip list` interface line.
fn listed_class(line: &str) -> Option<&str> {
    let open = line.rfind('(')?;
    line[open + 1..].strip_suffix(')')
}

/// What the two servers must agree on, and where they differ, which one is right.
fn compare(devices: &[HrhDevice], stock: &Observed, ours: &Observed) -> Result<()> {
    assert_scenario_works(Server::Usbipd, devices, stock)?;
    assert_scenario_works(Server::HrhExporter, devices, ours)?;

    // The device list. Bus ids, ids and device classes must match. The path line differs on
    // purpose: it names the server's own sysfs device and is only informative.
    ensure!(
        stock.listing.len() == ours.listing.len(),
        "usbipd lists {} devices, hrh-exporter {}",
        stock.listing.len(),
        ours.listing.len()
    );
    for (s, o) in stock.listing.iter().zip(&ours.listing) {
        ensure!(
            (&s.busid, &s.ids, &s.class) == (&o.busid, &o.ids, &o.class),
            "usbipd lists {s:?}\nhrh-exporter lists {o:?}"
        );
        // Interfaces: usbipd sends none. usbip-host, a USB *device* driver, takes the device
        // away from the generic driver, which unconfigures it; usbipd then reads an empty
        // bNumInterfaces from sysfs until a client sets a configuration. The protocol's
        // OP_REP_DEVLIST is meant to carry the interfaces (which `usbip list` prints), so
        // hrh-exporter, which sends those of the configuration the client will get, is right.
        // They must be exactly the interfaces the client then finds on the attached device.
        ensure!(
            s.interfaces.is_empty() || s.interfaces == o.interfaces,
            "usbipd and hrh-exporter list different interfaces for {}: {:?} / {:?}",
            s.busid,
            s.interfaces,
            o.interfaces
        );
        let device = devices
            .iter()
            .find(|d| d.busid == o.busid)
            .context("listed device")?;
        let attached = &ours.attached[&device.name];
        let listed: Vec<&str> = o
            .interfaces
            .iter()
            .filter_map(|i| listed_class(i))
            .collect();
        let seen: Vec<&str> = attached
            .interfaces
            .iter()
            .filter_map(|i| i.split_whitespace().nth(1))
            .collect();
        ensure!(
            listed == seen,
            "hrh-exporter lists interfaces {listed:?} for {}, the client finds {seen:?}",
            o.busid
        );
    }

    // Both hide devices that a client has imported: usbipd on purpose (an import would fail,
    // and it would tell other clients what is in use); hrh-exporter must do the same for a
    // client to see the same thing.
    ensure!(
        stock.listed_while_attached == ours.listed_while_attached,
        "listed while attached: usbipd {:?}, hrh-exporter {:?}",
        stock.listed_while_attached,
        ours.listed_while_attached
    );

    // What the client's USB core gets: speed, configuration, every descriptor byte (hashed),
    // interfaces and the drivers bound to them.
    for (name, s) in &stock.attached {
        let o = ours
            .attached
            .get(name)
            .with_context(|| format!("hrh-exporter: {name} not attached"))?;
        ensure!(
            s == o,
            "the client sees {name} differently:\nusbipd:       {s:?}\nhrh-exporter: {o:?}"
        );
    }

    // Replug: usbip-host does not take a device back when it reappears (it gets its ordinary
    // drivers, and `usbip bind` is needed again), while hrh-exporter keeps offering what its
    // --device selectors match. For a gateway whose dongles get replugged, or re-enumerate
    // after a firmware reset, hrh-exporter's behaviour is the one wanted; after the bind,
    // both must behave the same.
    ensure!(
        ours.replug_listed_by_itself,
        "hrh-exporter did not offer the replugged device again by itself"
    );
    if stock.replug_listed_by_itself {
        eprintln!("note: this usbip-host took the replugged device back by itself");
    }

    // Everything else the scenario observed must be the same.
    let normalise = |o: &Observed| Observed {
        listing: Vec::new(),
        replug_listed_by_itself: false,
        ..o.clone()
    };
    ensure!(
        normalise(stock) == normalise(ours),
        "usbipd and hrh-exporter behave differently:\nusbipd: {stock:#?}\nhrh-exporter: {ours:#?}"
    );
    eprintln!(
        "durations (TCG, informative only):\n  usbipd:       {:?}\n  hrh-exporter: {:?}",
        stock.notes, ours.notes
    );
    Ok(())
}
