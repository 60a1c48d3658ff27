//! The files operators deploy, checked by the tools that will read them: the libvirt domain
//! XML by libvirt's own schema validator, the systemd units by systemd, and the QEMU launch
//! helper's command line against the arguments the guest-booting tests attach vusb-backend
//! with. No guest is booted here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use vusb_vm_tests::qemu_chroot::shared_memory_args;
use vusb_vm_tests::{vhost_user_usb_args, workspace_root};

const DOMAIN_XML: &str = "scripts/libvirt/vhome-virtio-usb.xml";

fn run(program: &str, args: &[&str], dir: &Path) -> Result<Output> {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {program} (scripts/install-deps.sh installs it)"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn libvirt_domain_xml_is_valid_for_libvirt() -> Result<()> {
    let root = workspace_root();
    let out = run("virt-xml-validate", &[DOMAIN_XML, "domain"], &root)?;
    ensure!(out.status.success(), "virt-xml-validate: {}", text(&out));

    // The validator does reject what libvirt would: the same domain with the QEMU
    // passthrough outside its namespace.
    let xml = std::fs::read_to_string(root.join(DOMAIN_XML))?;
    let broken = tempfile::NamedTempFile::new()?;
    std::fs::write(
        broken.path(),
        xml.replace("qemu:commandline", "commandline"),
    )?;
    let path = broken.path().to_str().context("temporary path")?;
    let out = run("virt-xml-validate", &[path, "domain"], &root)?;
    ensure!(
        !out.status.success(),
        "a domain with an unknown element validated: {}",
        text(&out)
    );
    Ok(())
}

/// The `<qemu:arg value='…'/>` values, in order.
fn qemu_args(xml: &str) -> Vec<String> {
    xml.split("<qemu:arg value='")
        .skip(1)
        .filter_map(|rest| rest.split_once("'/>").map(|(value, _)| value.to_owned()))
        .collect()
}

#[test]
fn libvirt_domain_xml_attaches_the_backend_as_the_tests_do() -> Result<()> {
    let xml = std::fs::read_to_string(workspace_root().join(DOMAIN_XML))?;
    let expected = vhost_user_usb_args("vusb0", Path::new("/run/vusb/vhome1.sock"));
    assert_eq!(qemu_args(&xml), expected);
    // vhost-user reaches guest memory through file descriptors: memfd, shared.
    assert!(xml.contains("<source type='memfd'/>"), "no memfd memory");
    assert!(xml.contains("<access mode='shared'/>"), "memory not shared");
    Ok(())
}

/// `systemd-analyze verify` of `unit` from scripts/systemd, with the binaries and files it
/// names pointed at ones that exist here. Returns its complaints.
fn verify_unit(unit: &str, instance: &str, replace: &[(&str, String)]) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let source = workspace_root().join("scripts/systemd").join(unit);
    let mut contents = std::fs::read_to_string(&source)?;
    for (from, to) in replace {
        ensure!(contents.contains(from), "{unit} does not mention {from}");
        contents = contents.replace(from, to);
    }
    std::fs::write(dir.path().join(unit), contents)?;
    let out = run(
        "systemd-analyze",
        &["verify", "--man=no", &format!("./{instance}")],
        dir.path(),
    )?;
    let complaints = text(&out);
    ensure!(out.status.success(), "systemd-analyze: {complaints}");
    Ok(complaints)
}

fn fake_binary(dir: &Path, name: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, "#!/bin/sh\n")?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

#[test]
fn systemd_units_pass_systemd_analyze() -> Result<()> {
    let bin = tempfile::tempdir()?;
    let backend = fake_binary(bin.path(), "vusb-backend")?;
    let conf = bin.path().join("guest1.conf");
    std::fs::copy(
        workspace_root().join("scripts/systemd/vusb-backend.conf.example"),
        &conf,
    )?;
    let complaints = verify_unit(
        "vusb-backend@.service",
        "vusb-backend@guest1.service",
        &[
            ("/usr/local/bin/vusb-backend", backend.display().to_string()),
            (
                "/etc/vusb/%i.conf",
                bin.path().join("%i.conf").display().to_string(),
            ),
        ],
    )?;
    assert_eq!(complaints, "", "vusb-backend@.service");

    let keeper = fake_binary(bin.path(), "vusb-keeper")?;
    let complaints = verify_unit(
        "vusb-keeper@.service",
        "vusb-keeper@guest1.service",
        &[("/usr/local/bin/vusb-keeper", keeper.display().to_string())],
    )?;
    assert_eq!(complaints, "", "vusb-keeper@.service");

    let exporter = fake_binary(bin.path(), "hrh-exporter")?;
    let complaints = verify_unit(
        "hrh-exporter.service",
        "hrh-exporter.service",
        &[(
            "/usr/local/bin/hrh-exporter",
            exporter.display().to_string(),
        )],
    )?;
    assert_eq!(complaints, "", "hrh-exporter.service");
    Ok(())
}

#[test]
fn systemd_analyze_catches_a_broken_unit() -> Result<()> {
    let bin = tempfile::tempdir()?;
    let exporter = fake_binary(bin.path(), "hrh-exporter")?;
    let complaints = verify_unit(
        "hrh-exporter.service",
        "hrh-exporter.service",
        &[
            (
                "/usr/local/bin/hrh-exporter",
                exporter.display().to_string(),
            ),
            ("Restart=on-failure", "Restart=sometimes".to_owned()),
        ],
    )?;
    assert!(complaints.contains("sometimes"), "{complaints:?}");
    Ok(())
}

/// A listening Unix socket, as a running vusb-backend leaves.
fn listening_socket(dir: &Path, name: &str) -> Result<(std::os::unix::net::UnixListener, String)> {
    let path = dir.join(name);
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    Ok((listener, path.display().to_string()))
}

fn vhome_qemu(args: &[&str]) -> Result<Output> {
    let script = workspace_root().join("scripts/vhome-qemu.sh");
    Command::new(&script)
        .args(args)
        .output()
        .with_context(|| format!("running {}", script.display()))
}

#[test]
fn vhome_qemu_attaches_each_backend_with_shared_memory() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_a, first) = listening_socket(dir.path(), "a.sock")?;
    let (_b, second) = listening_socket(dir.path(), "b.sock")?;
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"")?;
    let out = vhome_qemu(&[
        "--print",
        "--qemu",
        "qemu-system-x86_64",
        "--memory",
        "768",
        "--socket",
        &first,
        "--socket",
        &second,
        "--kernel",
        kernel.to_str().context("path")?,
    ])?;
    ensure!(out.status.success(), "{}", text(&out));
    let line = String::from_utf8(out.stdout)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let contains = |wanted: &[String]| words.windows(wanted.len()).any(|w| w == wanted);
    assert!(contains(&shared_memory_args(768)), "{line}");
    assert!(contains(&["-m".to_owned(), "768M".to_owned()]), "{line}");
    assert!(
        contains(&vhost_user_usb_args("vusb0", Path::new(&first))),
        "{line}"
    );
    assert!(
        contains(&vhost_user_usb_args("vusb1", Path::new(&second))),
        "{line}"
    );
    Ok(())
}

#[test]
fn vhome_qemu_refuses_what_qemu_would_trip_over() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_s, socket) = listening_socket(dir.path(), "s.sock")?;
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"")?;
    let kernel = kernel.display().to_string();
    let missing = dir.path().join("nobody-listens.sock").display().to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["--kernel", &kernel], "no --socket"),
        (
            &["--socket", &missing, "--kernel", &kernel],
            "is not a socket",
        ),
        (&["--socket", &socket], "nothing to boot"),
        (
            &["--socket", &socket, "--kernel", &kernel, "--memory", "lots"],
            "--memory must be",
        ),
    ];
    for (args, message) in cases {
        let out = vhome_qemu(args)?;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains(message),
            "{args:?}: expected {message:?}, got {}",
            text(&out)
        );
    }
    Ok(())
}
