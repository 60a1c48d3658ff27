//! Naming a device on a USB/IP server: `tcp://HOST[:PORT]/BUSID` or
//! `tcp://HOST[:PORT]/VID:PID`.

use std::fmt;
use std::str::FromStr;

/// Which of a server's exported devices to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelector {
    /// The server's bus id, e.g. `1-1.2`.
    BusId(String),
    /// The first exported device with this vendor and product, resolved
    /// through OP_REQ_DEVLIST at each (re)connection.
    VidPid(u16, u16),
}

/// A device on a USB/IP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDevice {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub selector: DeviceSelector,
}

impl RemoteDevice {
    /// `host:port`, bracketing IPv6 addresses, for `TcpStream::connect`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for RemoteDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.selector {
            DeviceSelector::BusId(b) => write!(f, "tcp://{}/{}", self.address(), b),
            DeviceSelector::VidPid(v, p) => {
                write!(f, "tcp://{}/{:04x}:{:04x}", self.address(), v, p)
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad device {input:?}: {reason} (expected tcp://HOST[:PORT]/BUSID or tcp://HOST[:PORT]/VID:PID)")]
pub struct ParseError {
    input: String,
    reason: &'static str,
}

impl FromStr for RemoteDevice {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseError {
            input: s.to_owned(),
            reason,
        };
        let rest = s
            .strip_prefix("tcp://")
            .ok_or_else(|| err("it must start with tcp://"))?;
        let (authority, device) = rest
            .split_once('/')
            .ok_or_else(|| err("no device after the host"))?;
        let (host, port) = split_host_port(authority).ok_or_else(|| err("bad HOST[:PORT]"))?;
        if host.is_empty() {
            return Err(err("empty host"));
        }
        let selector = parse_selector(device).ok_or_else(|| err("bad BUSID or VID:PID"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
            selector,
        })
    }
}

fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let default = usbip_proto::USBIP_PORT;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        return match after {
            "" => Some((host, default)),
            _ => Some((host, after.strip_prefix(':')?.parse().ok()?)),
        };
    }
    match authority.split_once(':') {
        None => Some((authority, default)),
        Some((host, port)) => Some((host, port.parse().ok()?)),
    }
}

fn parse_selector(device: &str) -> Option<DeviceSelector> {
    if let Some((vid, pid)) = device.split_once(':') {
        let hex16 = |s: &str| {
            (s.len() == 4)
                .then(|| u16::from_str_radix(s, 16).ok())
                .flatten()
        };
        return Some(DeviceSelector::VidPid(hex16(vid)?, hex16(pid)?));
    }
    // A bus id as usbip names devices: digits, '-' and '.', below 32 bytes.
    let valid = !device.is_empty()
        && device.len() < usbip_proto::BUSID_SIZE
        && device
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b'.');
    valid.then(|| DeviceSelector::BusId(device.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_busid_and_vid_pid() {
        let d: RemoteDevice = "tcp://hrh.example:3241/1-1.2".parse().unwrap();
        assert_eq!(d.host, "hrh.example");
        assert_eq!(d.port, 3241);
        assert_eq!(d.selector, DeviceSelector::BusId("1-1.2".into()));
        let d: RemoteDevice = "tcp://10.0.0.2/1209:0002".parse().unwrap();
        assert_eq!(d.port, 3240);
        assert_eq!(d.selector, DeviceSelector::VidPid(0x1209, 2));
        let d: RemoteDevice = "tcp://[fe80::1]:4000/2-1".parse().unwrap();
        assert_eq!(d.host, "fe80::1");
        assert_eq!(d.address(), "[fe80::1]:4000");
        assert_eq!(d.to_string(), "tcp://[fe80::1]:4000/2-1");
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in [
            "1-1",
            "usbip://h/1-1",
            "tcp://h",
            "tcp://h/",
            "tcp:///1-1",
            "tcp://h:99999/1-1",
            "tcp://h:x/1-1",
            "tcp://h/1209:02",
            "tcp://h/zzzz:0001",
            "tcp://h/1-1;rm",
            "tcp://[::1/1-1",
        ] {
            let e = bad.parse::<RemoteDevice>().unwrap_err();
            assert!(e.to_string().contains("expected tcp://"), "{bad}: {e}");
        }
    }
}
