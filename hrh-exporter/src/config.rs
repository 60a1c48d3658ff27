//! Command line and configuration file to validated configuration.
//!
//! The file gives the defaults of a deployment; the command line adds
//! devices to it and overrides its scalar settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Deserialize;

use crate::source::libusb::Selector;
use crate::source::simulated::SimKind;

/// Where USB/IP is served when neither the file nor the command line says.
const DEFAULT_LISTEN: &str = "0.0.0.0:3240";
/// How often real devices are looked for when neither says.
const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Export USB devices over USB/IP.
#[derive(Debug, Parser)]
#[command(name = "hrh-exporter", version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address and port to serve USB/IP on [default: 0.0.0.0:3240].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// Export real USB devices: a bus id (`1-1.3`) or `VID:PID` in hex
    /// (`046d:c52b`). Repeatable; devices plugged in later are exported
    /// when they match.
    #[arg(long, value_name = "BUSID|VID:PID")]
    pub device: Vec<Selector>,

    /// Export a simulated dongle: `sensor`, `pendrive=IMAGE` or `loopback`.
    /// Repeatable; bus ids are 1-1, 1-2, … in the order given.
    #[arg(long, value_name = "KIND[=ARG]")]
    pub simulate: Vec<SimKind>,

    /// Read settings from this TOML file (see README); the command line
    /// adds to its devices and overrides the rest.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// How soon to look again for a device still settling or failing, in
    /// milliseconds; and how often to look for plugged and unplugged
    /// devices where the kernel's device events cannot be received.
    #[arg(long, value_name = "MS")]
    pub scan_interval_ms: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the USB devices that could be exported, with their bus ids.
    List,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    simulate: Vec<String>,
    scan_interval_ms: Option<u64>,
}

/// What the exporter runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub devices: Vec<Selector>,
    pub simulated: Vec<SimKind>,
    pub scan_interval: Duration,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("nothing to export: give --device or --simulate (or devices in a --config file)")]
    NothingToExport,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("scan interval must be between 10 ms and 1 hour, not {0} ms")]
    ScanInterval(u64),
}

impl Config {
    /// Combines the command line with the file it names, if any.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let path = args.config.clone().unwrap_or_default();
        Self::merge(args, file, path)
    }

    fn merge(args: Args, file: FileConfig, path: PathBuf) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError::File {
            path: path.clone(),
            message,
        };
        let mut devices = file
            .devices
            .iter()
            .map(|s| s.parse().map_err(|e| bad(format!("devices: {e}"))))
            .collect::<Result<Vec<Selector>, _>>()?;
        devices.extend(args.device);
        let mut simulated = file
            .simulate
            .iter()
            .map(|s| s.parse().map_err(|e| bad(format!("simulate: {e}"))))
            .collect::<Result<Vec<SimKind>, _>>()?;
        simulated.extend(args.simulate);
        if devices.is_empty() && simulated.is_empty() {
            return Err(ConfigError::NothingToExport);
        }
        let scan_ms = args
            .scan_interval_ms
            .or(file.scan_interval_ms)
            .unwrap_or(DEFAULT_SCAN_INTERVAL.as_millis() as u64);
        if !(10..=3_600_000).contains(&scan_ms) {
            return Err(ConfigError::ScanInterval(scan_ms));
        }
        Ok(Config {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
            devices,
            simulated,
            scan_interval: Duration::from_millis(scan_ms),
        })
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("hrh-exporter").chain(argv.iter().copied())).unwrap()
    }

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn command_line_alone() {
        let c = Config::merge(
            args(&["--simulate", "sensor", "--device", "1-1.3"]),
            FileConfig::default(),
            PathBuf::new(),
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:3240".parse().unwrap());
        assert_eq!(c.simulated, vec![SimKind::Sensor]);
        assert_eq!(c.devices, vec![Selector::BusId("1-1.3".into())]);
        assert_eq!(c.scan_interval, Duration::from_secs(1));
    }

    #[test]
    fn file_gives_defaults_and_command_line_adds_and_overrides() {
        let f = file(
            r#"
            listen = "127.0.0.1:4000"
            devices = ["046d:c52b"]
            simulate = ["loopback"]
            scan_interval_ms = 250
            "#,
        );
        let c = Config::merge(
            args(&["--listen", "127.0.0.1:5000", "--device", "2-1"]),
            f,
            PathBuf::new(),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(
            c.devices,
            vec![
                Selector::VidPid(0x046d, 0xc52b),
                Selector::BusId("2-1".into())
            ]
        );
        assert_eq!(c.simulated, vec![SimKind::Loopback]);
        assert_eq!(c.scan_interval, Duration::from_millis(250));
    }

    #[test]
    fn bad_file_entries_name_the_file_and_the_field() {
        let err = Config::merge(
            args(&[]),
            file(r#"devices = ["nonsense:zz"]"#),
            PathBuf::from("/etc/hrh-exporter.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("/etc/hrh-exporter.toml: devices:"), "{err}");
        let unknown = toml::from_str::<FileConfig>("lisen = \"1.2.3.4:1\"").unwrap_err();
        assert!(unknown.to_string().contains("lisen"), "{unknown}");
    }

    #[test]
    fn nothing_to_export_and_silly_intervals_are_refused() {
        assert!(matches!(
            Config::merge(args(&[]), FileConfig::default(), PathBuf::new()),
            Err(ConfigError::NothingToExport)
        ));
        assert!(matches!(
            Config::merge(
                args(&["--simulate", "sensor", "--scan-interval-ms", "0"]),
                FileConfig::default(),
                PathBuf::new()
            ),
            Err(ConfigError::ScanInterval(0))
        ));
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = load_file(Path::new("/nonexistent/hrh.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/hrh.toml"), "{err}");
    }
}
