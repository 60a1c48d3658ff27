//! The thread that runs a libusb context's event handling: every transfer
//! completion callback runs on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusb::constants::LIBUSB_ERROR_INTERRUPTED;
use rusb::{ffi, UsbContext};
use tracing::warn;

/// Runs libusb's event handling for one context until dropped.
#[derive(Debug)]
pub struct EventLoop {
    context: rusb::Context,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    pub fn start(context: rusb::Context) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("libusb-events".into())
            .spawn({
                // The thread keeps the context alive: it is torn down
                // (libusb_exit) only after the thread stopped using it.
                let context = context.clone();
                let stop = Arc::clone(&stop);
                move || run(&context, &stop)
            })?;
        Ok(Self {
            context,
            stop,
            thread: Some(thread),
        })
    }
}

fn run(context: &rusb::Context, stop: &AtomicBool) {
    // The timeout only bounds how long a stop request could go unnoticed
    // if its wake-up were lost; libusb_interrupt_event_handler() normally
    // ends the wait at once.
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    while !stop.load(Ordering::Acquire) {
        // SAFETY: the context is valid for as long as `context` lives;
        // `timeout` outlives the call; a null `completed` is allowed.
        let rc = unsafe {
            ffi::libusb_handle_events_timeout_completed(
                context.as_raw(),
                &timeout,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 && rc != LIBUSB_ERROR_INTERRUPTED {
            warn!("libusb event handling failed: {}", rusb_error(rc));
            // Don't spin on a persistent error.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn rusb_error(code: i32) -> String {
    // SAFETY: libusb_error_name returns a pointer to a static string for
    // any code, known or not.
    let name = unsafe { std::ffi::CStr::from_ptr(ffi::libusb_error_name(code)) };
    name.to_string_lossy().into_owned()
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // SAFETY: the context is alive (we hold a reference to it).
        unsafe { ffi::libusb_interrupt_event_handler(self.context.as_raw()) };
        if let Some(thread) = self.thread.take() {
            // The last owner may be a completion callback running on the
            // event thread itself; that thread then ends on its own as
            // soon as the callback returns.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}
