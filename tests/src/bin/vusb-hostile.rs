//! A virtio-usb device that breaks the specification on purpose, for the guest driver's
//! bad-input tests: vusb-backend's device model, importing real devices, with one fault.
//!
//!   vusb-hostile FAULT --socket-path PATH --device URL [--device URL…]
//!
//! FAULT is one of:
//! * `magic`: the configuration space starts with another magic;
//! * `version`: it announces virtio-usb 2.0;
//! * `phantom-port`: it announces one USB 2.0 port and no USB 3 port, yet reports the second
//!   device on port 2;
//! * `overlong`: every transfer completes claiming more bytes than its buffer holds, or a used
//!   length beyond what the driver gave;
//! * `silent`: transfers are taken and never answered (cancels are answered "not found").

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vusb_backend::remote::RemoteDevice;
use vusb_backend::transfer::{PortLayout, Ports, UpcallSink};
use vusb_backend::upcalls;
use vusb_backend::usbip_client::UsbipClient;
use vusb_backend::vhost_user::{VusbBackend, UPCALL_EVENT};
use vusb_backend::virtio_usb::chain::Chain;
use vusb_backend::virtio_usb::wire::{XferResp, REQUEST_QUEUE, XFER_RESP_LEN};
use vusb_backend::virtio_usb::{Controller, Limits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Magic,
    Version,
    PhantomPort,
    Overlong,
    Silent,
}

impl Fault {
    fn parse(s: &str) -> Option<Fault> {
        Some(match s {
            "magic" => Fault::Magic,
            "version" => Fault::Version,
            "phantom-port" => Fault::PhantomPort,
            "overlong" => Fault::Overlong,
            "silent" => Fault::Silent,
            _ => return None,
        })
    }
}

struct Hostile {
    inner: VusbBackend,
    fault: Fault,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    answered: u64,
}

impl Hostile {
    /// Takes every request off `requestq`; `overlong` answers each one wrongly, `silent` never.
    fn take_requests(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let Some(atomic) = self.mem.clone() else {
            return Ok(());
        };
        let mem = atomic.memory();
        loop {
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else {
                // Publishes where we are (EVENT_IDX), or the driver stops kicking.
                if vring.enable_notification().map_err(io::Error::other)? {
                    continue;
                }
                break;
            };
            let Ok(chain) = Chain::collect(chain) else {
                continue;
            };
            if self.fault == Fault::Silent {
                continue;
            }
            let writable = chain.writable_len();
            if writable < XFER_RESP_LEN as u64 {
                continue;
            }
            self.answered += 1;
            // Alternately: more bytes than the buffer holds, and a used length beyond the
            // chain.
            let data_len = writable - XFER_RESP_LEN as u64;
            let (actual, used) = if self.answered % 2 == 1 {
                (data_len as u32 + 512, writable as u32)
            } else {
                (0, writable as u32 + 4096)
            };
            let resp = XferResp {
                status: 0,
                actual_length: actual,
                start_frame: 0,
                error_count: 0,
            };
            let _ = chain.write(&*mem, data_len, &resp.to_bytes());
            vring.add_used(chain.head, used).map_err(io::Error::other)?;
        }
        vring.signal_used_queue()
    }
}

impl VhostUserBackendMut for Hostile {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.inner.num_queues()
    }
    fn max_queue_size(&self) -> usize {
        self.inner.max_queue_size()
    }
    fn features(&self) -> u64 {
        self.inner.features()
    }
    fn acked_features(&mut self, features: u64) {
        self.inner.acked_features(features)
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.inner.protocol_features()
    }
    fn reset_device(&mut self) {
        self.inner.reset_device()
    }
    fn set_event_idx(&mut self, enabled: bool) {
        // Notifications on every used entry keep the faulty paths simple.
        self.inner.set_event_idx(enabled)
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut config = self.inner.get_config(0, 64);
        match self.fault {
            Fault::Magic => config[0..4].copy_from_slice(b"vUSX"),
            Fault::Version => config[4..6].copy_from_slice(&2u16.to_le_bytes()),
            Fault::PhantomPort => {
                config[8] = 1;
                config[9] = 0;
            }
            Fault::Overlong | Fault::Silent => {}
        }
        let start = offset as usize;
        (start..start + size as usize)
            .map(|i| config.get(i).copied().unwrap_or(0))
            .collect()
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem.clone());
        self.inner.update_memory(mem)
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.inner.exit_event(thread_index)
    }

    fn stop_vring(&mut self, queue_index: u32) -> io::Result<()> {
        self.inner.stop_vring(queue_index)
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        let takes_requests = matches!(self.fault, Fault::Overlong | Fault::Silent);
        if device_event == REQUEST_QUEUE && takes_requests {
            return self.take_requests(&vrings[usize::from(REQUEST_QUEUE)]);
        }
        self.inner
            .handle_event(device_event, evset, vrings, thread_id)
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: vusb-hostile magic|version|phantom-port|overlong|silent \
         --socket-path PATH --device URL [--device URL…]"
    );
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let fault = args
        .next()
        .and_then(|f| Fault::parse(&f))
        .unwrap_or_else(|| usage());
    let mut socket = None;
    let mut devices: Vec<RemoteDevice> = Vec::new();
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--socket-path" => socket = Some(PathBuf::from(value)),
            "--device" => devices.push(value.parse().unwrap_or_else(|e| {
                eprintln!("vusb-hostile: {value}: {e}");
                std::process::exit(2)
            })),
            _ => usage(),
        }
    }
    let Some(socket) = socket else { usage() };
    if devices.is_empty() {
        usage();
    }
    if let Err(e) = run(fault, &socket, devices) {
        eprintln!("vusb-hostile: {e}");
        std::process::exit(1);
    }
}

fn run(fault: Fault, socket: &PathBuf, devices: Vec<RemoteDevice>) -> Result<(), String> {
    let layout = PortLayout::for_devices(devices.len());
    let (sender, receiver) = upcalls::channel().map_err(|e| e.to_string())?;
    let sink: Arc<dyn UpcallSink> = sender;
    let client = UsbipClient::start(devices, layout, sink).map_err(|e| e.to_string())?;
    let ports: Arc<dyn Ports> = Arc::new(client);
    let limits = Limits {
        max_transfer: 1 << 20,
        max_iso_packets: 1024,
        iso: true,
    };
    let inner = VusbBackend::new(Controller::new(ports, layout, limits), receiver);
    let upcall_fd: RawFd = inner.upcall_fd();
    let backend = Arc::new(RwLock::new(Hostile {
        inner,
        fault,
        mem: None,
        answered: 0,
    }));
    let mut listener = Listener::new(socket, true).map_err(|e| format!("{e:?}"))?;
    eprintln!(
        "vusb-hostile: fault {fault:?}, listening on {}",
        socket.display()
    );
    loop {
        let mut daemon = VhostUserDaemon::new(
            "vusb-hostile".into(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| format!("{e:?}"))?;
        let handlers = daemon.get_epoll_handlers();
        handlers[0]
            .register_listener(upcall_fd, EventSet::IN, u64::from(UPCALL_EVENT))
            .map_err(|e| e.to_string())?;
        daemon.start(&mut listener).map_err(|e| format!("{e:?}"))?;
        let _ = daemon.wait();
        for h in &handlers {
            h.send_exit_event();
        }
        backend.write().unwrap().inner.disconnected();
    }
}
