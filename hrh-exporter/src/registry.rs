//! The exported devices and who imports them: at most one importer per
//! device, released automatically when its connection ends however it ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::device::{DeviceIdentity, UsbDevice};

/// Why an import was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("no device with bus id {0:?}")]
    NoSuchDevice(String),
    #[error("device {busid} is already imported by {by}")]
    Busy { busid: String, by: SocketAddr },
}

#[derive(Debug)]
struct Entry {
    device: Arc<dyn UsbDevice>,
    importer: Option<SocketAddr>,
}

/// All exported devices, by bus id.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic elsewhere cannot leave the map half-updated (every update
        // is a single assignment), so a poisoned lock is still consistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a device under its bus id.
    pub fn add(&self, device: Arc<dyn UsbDevice>) {
        let busid = device.identity().info.busid;
        self.lock().insert(
            busid,
            Entry {
                device,
                importer: None,
            },
        );
    }

    /// Removes the device with `busid` (it was unplugged). Its importer, if
    /// any, learns it from the device itself.
    pub fn remove(&self, busid: &str) -> Option<Arc<dyn UsbDevice>> {
        self.lock().remove(busid).map(|e| e.device)
    }

    /// True when a device with `busid` is registered.
    pub fn contains(&self, busid: &str) -> bool {
        self.lock().contains_key(busid)
    }

    /// Every device that is not imported right now, as `usbipd` lists them.
    pub fn exportable(&self) -> Vec<DeviceIdentity> {
        self.lock()
            .values()
            .filter(|e| e.importer.is_none())
            .map(|e| e.device.identity())
            .collect()
    }

    /// Reserves `busid` for `importer`; the reservation ends when the
    /// returned [`Claim`] is dropped.
    pub fn claim(&self, busid: &str, importer: SocketAddr) -> Result<Claim, ImportError> {
        let mut entries = self.lock();
        let entry = entries
            .get_mut(busid)
            .ok_or_else(|| ImportError::NoSuchDevice(busid.to_owned()))?;
        if let Some(by) = entry.importer {
            return Err(ImportError::Busy {
                busid: busid.to_owned(),
                by,
            });
        }
        entry.importer = Some(importer);
        Ok(Claim {
            registry: self.clone(),
            busid: busid.to_owned(),
            device: entry.device.clone(),
        })
    }
}

/// An imported device. Dropping it makes the device importable again.
#[derive(Debug)]
pub struct Claim {
    registry: Registry,
    busid: String,
    device: Arc<dyn UsbDevice>,
}

impl Claim {
    pub fn device(&self) -> &Arc<dyn UsbDevice> {
        &self.device
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // The device may have been unplugged and another one plugged in
        // under the same bus id meanwhile: release only our own.
        if let Some(entry) = self.registry.lock().get_mut(&self.busid) {
            if Arc::ptr_eq(&entry.device, &self.device) {
                entry.importer = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use usbip_proto::DeviceInfo;

    use super::*;
    use crate::device::{EventSink, Urb};

    #[derive(Debug)]
    struct Fake(&'static str);

    impl UsbDevice for Fake {
        fn identity(&self) -> DeviceIdentity {
            DeviceIdentity {
                info: DeviceInfo {
                    busid: self.0.into(),
                    ..DeviceInfo::default()
                },
                interfaces: Vec::new(),
            }
        }
        fn attach(&self, _: EventSink) {}
        fn submit(&self, _: Urb) {}
        fn cancel(&self, _: u32) {}
        fn detach(&self) {}
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn one_importer_at_a_time() {
        let r = Registry::new();
        r.add(Arc::new(Fake("1-1")));
        let claim = r.claim("1-1", peer()).unwrap();
        assert!(matches!(
            r.claim("1-1", peer()),
            Err(ImportError::Busy { .. })
        ));
        assert!(r.exportable().is_empty());
        drop(claim);
        assert_eq!(r.exportable().len(), 1);
        assert!(matches!(
            r.claim("2-1", peer()),
            Err(ImportError::NoSuchDevice(_))
        ));
    }

    #[test]
    fn a_stale_claim_does_not_release_a_replugged_device() {
        let r = Registry::new();
        r.add(Arc::new(Fake("1-1")));
        let old = r.claim("1-1", peer()).unwrap();
        r.remove("1-1");
        r.add(Arc::new(Fake("1-1")));
        let new = r.claim("1-1", peer()).unwrap();
        drop(old);
        assert!(matches!(
            r.claim("1-1", peer()),
            Err(ImportError::Busy { .. })
        ));
        drop(new);
        assert!(r.claim("1-1", peer()).is_ok());
    }
}
