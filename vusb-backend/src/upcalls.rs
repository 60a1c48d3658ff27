//! Carrying [`Upcall`]s from the devices' threads to the vhost-user worker
//! thread: a channel, plus an eventfd the worker's epoll loop watches.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};

use tracing::warn;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::transfer::{Upcall, UpcallSink};

/// The sending side, given to the devices.
#[derive(Debug)]
pub struct UpcallSender {
    tx: Sender<Upcall>,
    ready: Arc<EventFd>,
}

/// The receiving side, drained by the worker thread.
#[derive(Debug)]
pub struct UpcallReceiver {
    rx: Mutex<Receiver<Upcall>>,
    ready: Arc<EventFd>,
}

pub fn channel() -> std::io::Result<(Arc<UpcallSender>, UpcallReceiver)> {
    let (tx, rx) = mpsc::channel();
    let ready = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    Ok((
        Arc::new(UpcallSender {
            tx,
            ready: ready.clone(),
        }),
        UpcallReceiver {
            rx: Mutex::new(rx),
            ready,
        },
    ))
}

impl UpcallSink for UpcallSender {
    fn upcall(&self, upcall: Upcall) {
        // The receiver lives as long as the daemon; after it is gone nobody
        // is left to tell.
        if self.tx.send(upcall).is_ok() {
            if let Err(e) = self.ready.write(1) {
                warn!("waking the vhost-user worker: {e}");
            }
        }
    }
}

impl UpcallReceiver {
    /// The eventfd that becomes readable when upcalls wait.
    pub fn fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    /// Takes every waiting upcall, oldest first.
    pub fn drain(&self) -> Vec<Upcall> {
        // Reset the counter before reading, so an upcall sent meanwhile
        // wakes the worker again instead of being missed.
        let _ = self.ready.read();
        let rx = self.rx.lock().expect("upcall receiver poisoned");
        let mut out = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(u) => out.push(u),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }
}
