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
        if let Some(entry) = self.registry.lock().get_mut(&self.busid) {
            entry.importer = None;
        }
    }
}
