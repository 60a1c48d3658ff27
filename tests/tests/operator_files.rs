//! The files operators deploy, checked by the tools that will read them: the libvirt domain
//! XMLs by libvirt's own schema validator (and the usbredir one by libvirt's QEMU driver and
//! QEMU itself), the systemd units by systemd, and the QEMU launch helper's command line
//! against the arguments the guest-booting tests attach vusb-backend with. No guest is booted
//! here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, ensure, Context, Result};
use vusb_vm_tests::qemu_chroot::shared_memory_args;
use vusb_vm_tests::{vhost_user_usb_args, workspace_root};

const DOMAIN_XML: &str = "scripts/libvirt/vhome-virtio-usb.xml";
const REDIR_XML: &str = "scripts/libvirt/vhome-usbredir.xml";

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

/// Runs `virt-xml-validate` on `xml` as a domain: whether it passed, and what it said.
fn validate_domain(xml: &str) -> Result<(bool, String)> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), xml)?;
    let path = file.path().to_str().context("temporary path")?;
    let out = run("virt-xml-validate", &[path, "domain"], &workspace_root())?;
    Ok((out.status.success(), text(&out)))
}

#[test]
fn libvirt_domain_xml_is_valid_for_libvirt() -> Result<()> {
    let root = workspace_root();
    let out = run("virt-xml-validate", &[DOMAIN_XML, "domain"], &root)?;
    ensure!(out.status.success(), "virt-xml-validate: {}", text(&out));

    // The validator does reject what libvirt would: the same domain with the QEMU
    // passthrough outside its namespace.
    let xml = std::fs::read_to_string(root.join(DOMAIN_XML))?;
    let (valid, said) = validate_domain(&xml.replace("qemu:commandline", "commandline"))?;
    ensure!(!valid, "a domain with an unknown element validated: {said}");
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

/// Where vhome-usbredir.xml connects: vusb-redir@vhome1-redir0's socket.
const REDIR_SOCKET: &str = "/run/vusb/vhome1-redir0.sock";
/// vhome-usbredir.xml's `<redirfilter>` in usbredir's filter format: `class:vendor:product:
/// version:allow` rules joined by `|`, -1 for any.
const REDIR_FILTER: &str =
    "0x08:-1:-1:-1:1|0x02:-1:-1:-1:1|0x0A:-1:-1:-1:1|-1:0x1209:0x0003:-1:1|-1:-1:-1:-1:0";

#[test]
fn libvirt_usbredir_xml_is_valid_for_libvirt() -> Result<()> {
    let root = workspace_root();
    let out = run("virt-xml-validate", &[REDIR_XML, "domain"], &root)?;
    ensure!(out.status.success(), "virt-xml-validate: {}", text(&out));

    // A filter rule that neither allows nor denies is refused.
    let xml = std::fs::read_to_string(root.join(REDIR_XML))?;
    ensure!(xml.contains("<usbdev allow='no'/>"), "no final deny rule");
    let (valid, said) =
        validate_domain(&xml.replace("<usbdev allow='no'/>", "<usbdev allow='never'/>"))?;
    ensure!(!valid, "a filter rule with allow='never' validated: {said}");
    Ok(())
}

#[test]
fn usbredir_unit_serves_the_socket_the_domain_connects_to() -> Result<()> {
    let root = workspace_root();
    let unit = std::fs::read_to_string(root.join("scripts/systemd/vusb-redir@.service"))?;
    let xml = std::fs::read_to_string(root.join(REDIR_XML))?;
    assert!(
        unit.contains("--frontend usbredir --socket-path /run/vusb/%i.sock "),
        "{unit}"
    );
    assert!(
        xml.contains(&format!("<source mode='connect' path='{REDIR_SOCKET}'>")),
        "{xml}"
    );
    assert!(xml.contains("vusb-redir@vhome1-redir0"), "{xml}");
    Ok(())
}

fn replace_once(xml: &mut String, from: &str, to: &str) -> Result<()> {
    ensure!(
        xml.matches(from).count() == 1,
        "{from} is not in the domain once"
    );
    *xml = xml.replacen(from, to, 1);
    Ok(())
}

/// vhome-usbredir.xml, changed where this host cannot have what it asks for.
fn redir_domain_for_this_host() -> Result<String> {
    let mut xml = std::fs::read_to_string(workspace_root().join(REDIR_XML))?;
    // No KVM here: libvirt refuses type='kvm' ("does not support virt type 'kvm'") and, under
    // TCG, host-passthrough. It creates the network's tap device while building the command
    // line, which takes CAP_NET_ADMIN. None of them touches usb-redir.
    replace_once(&mut xml, "<domain type='kvm'>", "<domain type='qemu'>")?;
    replace_once(&mut xml, "<cpu mode='host-passthrough'/>", "")?;
    let start = xml
        .find("<interface type='network'>")
        .context("no network")?;
    let end = xml[start..]
        .find("</interface>")
        .context("no </interface>")?
        + start;
    xml.replace_range(start..end + "</interface>".len(), "");
    Ok(xml)
}

/// Splits a command line as libvirt prints it: words in '…' quotes, `\` escaping outside.
fn shell_words(line: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => bail!("unterminated quote in {line}"),
                    }
                }
            }
            '\\' => {
                let c = chars.next().context("trailing backslash")?;
                word.get_or_insert_with(String::new).push(c);
            }
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// The QEMU command line libvirt's own QEMU driver makes of `xml`, from the emulator on.
fn libvirt_qemu_argv(xml: &str) -> Result<Vec<String>> {
    const NOBODY: u32 = 65534;
    let dir = tempfile::tempdir()?;
    let domain = dir.path().join("domain.xml");
    std::fs::write(&domain, xml)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let mut virsh = if unsafe { libc::geteuid() } == 0 {
        // As root the embedded driver is the privileged one, which looks up the user to run
        // QEMU as (libvirt-qemu, made by libvirt-daemon-system) before reading any
        // configuration, and fails without it. The unprivileged one runs QEMU as its caller.
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY))?;
        let mut setpriv = Command::new("setpriv");
        setpriv.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "virsh",
        ]);
        setpriv
    } else {
        Command::new("virsh")
    };
    // The embedded driver runs in virsh itself, its state under root=: no daemon.
    let out = virsh
        .arg("-c")
        .arg(format!(
            "qemu:///embed?root={}",
            dir.path().join("libvirt").display()
        ))
        .args(["domxml-to-native", "qemu-argv"])
        .arg(&domain)
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .context("running virsh (scripts/install-deps.sh installs it)")?;
    ensure!(
        out.status.success(),
        "virsh domxml-to-native: {}",
        text(&out)
    );
    let words = shell_words(&String::from_utf8(out.stdout)?)?;
    // Environment assignments come first.
    let emulator = words
        .iter()
        .position(|w| w == "/usr/bin/qemu-system-x86_64")
        .with_context(|| format!("no emulator in {words:?}"))?;
    Ok(words[emulator..].to_vec())
}

/// The values of every `option` in `argv`.
fn option_values<'a>(argv: &'a [String], option: &str) -> Vec<&'a str> {
    argv.windows(2)
        .filter(|w| w[0] == option)
        .map(|w| w[1].as_str())
        .collect()
}

/// The string `key` of a flat JSON object as libvirt prints it (no spaces, no escapes).
fn json_str<'a>(object: &'a str, key: &str) -> Option<&'a str> {
    let field = format!("\"{key}\":\"");
    let start = object.find(&field)? + field.len();
    object[start..].split('"').next()
}

/// The `-device` JSON objects of `argv` whose driver is `driver`.
fn devices<'a>(argv: &'a [String], driver: &str) -> Vec<&'a str> {
    option_values(argv, "-device")
        .into_iter()
        .filter(|d| json_str(d, "driver") == Some(driver))
        .collect()
}

/// A usbredir filter rule: class, vendor, product, bcdDevice (None: any), and allowed.
type Rule = ([Option<u16>; 4], bool);

/// A number as libvirt and usbredir write them: hex with 0x, else decimal.
fn number(s: &str) -> Result<u16> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .with_context(|| format!("not a number: {s:?}"))
}

/// The rules of a domain's `<redirfilter>`, in order.
fn redirfilter_rules(xml: &str) -> Result<Vec<Rule>> {
    xml.split("<usbdev")
        .skip(1)
        .map(|rest| {
            let element = rest.split("/>").next().context("unclosed <usbdev>")?;
            let attr = |name: &str| {
                let start = format!(" {name}='");
                element
                    .split_once(&start)
                    .and_then(|(_, v)| v.split('\'').next())
            };
            ensure!(attr("version").is_none(), "version= is not read here");
            let field = |name| attr(name).map(number).transpose();
            let allow = match attr("allow") {
                Some("yes") => true,
                Some("no") => false,
                other => bail!("allow={other:?}"),
            };
            Ok((
                [field("class")?, field("vendor")?, field("product")?, None],
                allow,
            ))
        })
        .collect()
}

/// The rules of a usbredir filter string.
fn usbredir_filter_rules(filter: &str) -> Result<Vec<Rule>> {
    filter
        .split('|')
        .map(|rule| {
            let fields: Vec<&str> = rule.split(':').collect();
            let [class, vendor, product, version, allow] = fields[..] else {
                bail!("rule {rule:?} does not have five fields");
            };
            let any = |f: &str| {
                if f == "-1" {
                    Ok(None)
                } else {
                    number(f).map(Some)
                }
            };
            let allow = match allow {
                "1" => true,
                "0" => false,
                other => bail!("allow {other:?}"),
            };
            Ok((
                [any(class)?, any(vendor)?, any(product)?, any(version)?],
                allow,
            ))
        })
        .collect()
}

#[test]
fn libvirt_gives_qemu_a_usb_redir_with_reconnect_and_the_filter() -> Result<()> {
    let xml = redir_domain_for_this_host()?;
    let argv = libvirt_qemu_argv(&xml)?;
    let line = argv.join(" ");

    let xhci = devices(&argv, "qemu-xhci");
    assert_eq!(xhci.len(), 1, "{line}");
    let xhci_id = json_str(xhci[0], "id").context("qemu-xhci without an id")?;

    // reconnect=1: QEMU connects again a second after losing the front-end.
    let chardevs: Vec<&str> = option_values(&argv, "-chardev")
        .into_iter()
        .filter(|c| c.contains(REDIR_SOCKET))
        .collect();
    assert_eq!(
        chardevs,
        [format!(
            "socket,id=charredir0,path={REDIR_SOCKET},reconnect=1"
        )],
        "{line}"
    );

    let redir = devices(&argv, "usb-redir");
    assert_eq!(redir.len(), 1, "{line}");
    assert_eq!(json_str(redir[0], "chardev"), Some("charredir0"), "{line}");
    assert_eq!(
        json_str(redir[0], "bus"),
        Some(format!("{xhci_id}.0").as_str()),
        "{line}"
    );
    let filter = json_str(redir[0], "filter").context("usb-redir without a filter")?;
    assert_eq!(filter, REDIR_FILTER);
    // Rule for rule what the domain says, in its order (the first match wins).
    let rules = redirfilter_rules(&xml)?;
    assert_eq!(rules.len(), 5);
    assert_eq!(usbredir_filter_rules(filter)?, rules);
    Ok(())
}

/// Starts QEMU stopped with `args` (and no guest), runs `monitor` on its monitor, and quits.
fn qemu_monitor(qemu: &str, args: &[String], monitor: &str) -> Result<Output> {
    use std::io::Write;
    let mut child = Command::new("timeout")
        .args(["60", qemu])
        .args(["-S", "-nodefaults", "-display", "none", "-machine", "q35"])
        .args(["-accel", "tcg", "-monitor", "stdio"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {qemu}"))?;
    let mut stdin = child.stdin.take().context("QEMU's stdin")?;
    stdin.write_all(format!("{monitor}\nquit\n").as_bytes())?;
    drop(stdin);
    Ok(child.wait_with_output()?)
}

#[test]
fn qemu_takes_libvirts_usb_redir() -> Result<()> {
    let argv = libvirt_qemu_argv(&redir_domain_for_this_host()?)?;
    let dir = tempfile::tempdir()?;
    // Nothing listens here; the real path might have a front-end behind it.
    let socket = dir.path().join("nobody-listens.sock");
    // The USB part alone, with the PCIe ports the controller sits on: the rest names files
    // libvirt makes when it starts a domain.
    let mut args = Vec::new();
    for driver in ["pcie-root-port", "qemu-xhci", "usb-redir"] {
        for device in devices(&argv, driver) {
            args.extend(["-device".to_owned(), device.to_owned()]);
        }
    }
    for chardev in option_values(&argv, "-chardev") {
        if chardev.contains(REDIR_SOCKET) {
            let chardev = chardev.replace(REDIR_SOCKET, &socket.display().to_string());
            args.extend(["-chardev".to_owned(), chardev]);
        }
    }
    let out = qemu_monitor(&argv[0], &args, "info usb")?;
    ensure!(out.status.success(), "QEMU: {}", text(&out));
    let said = text(&out);
    assert!(
        said.lines()
            .any(|l| l.contains("Port 1,") && l.ends_with("USB Redirection Device, ID: redir0")),
        "{said}"
    );

    // QEMU does read the filter: a rule short of a field is refused.
    let broken: Vec<String> = args
        .iter()
        .map(|a| a.replace(REDIR_FILTER, "0x08:-1:-1:1|-1:-1:-1:-1:0"))
        .collect();
    ensure!(broken != args, "no filter to break");
    let out = qemu_monitor(&argv[0], &broken, "info usb")?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("expects a usb device filter string"),
        "{}",
        text(&out)
    );
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

    // One device per front-end: the example's first alone.
    let redir_conf = bin.path().join("guest1-redir0.conf");
    std::fs::write(
        &redir_conf,
        "VUSB_BACKEND_ARGS=\"--device tcp://hrh-42.example.net:3240/1-1\"\n",
    )?;
    let complaints = verify_unit(
        "vusb-redir@.service",
        "vusb-redir@guest1-redir0.service",
        &[
            ("/usr/local/bin/vusb-backend", backend.display().to_string()),
            (
                "/etc/vusb/%i.conf",
                bin.path().join("%i.conf").display().to_string(),
            ),
        ],
    )?;
    assert_eq!(complaints, "", "vusb-redir@.service");

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
