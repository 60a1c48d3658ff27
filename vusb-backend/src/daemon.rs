//! The daemon's life: serve one vhost-user front-end after another on the
//! same socket, while the devices stay imported.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use tracing::{info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::vhost_user::{VusbBackend, UPCALL_EVENT};

/// Serves front-ends on `socket` until an unrecoverable error. The socket
/// stays in place between front-ends, so a restarted QEMU (or one with
/// `reconnect`) finds it.
pub fn serve_forever(backend: VusbBackend, socket: &Path) -> Result<()> {
    let upcall_fd = backend.upcall_fd();
    let backend = Arc::new(RwLock::new(backend));
    let mut listener = Listener::new(socket, true)
        .with_context(|| format!("listening on {}", socket.display()))?;
    info!(socket = %socket.display(), "listening for vhost-user front-ends");
    loop {
        let mut daemon = VhostUserDaemon::new(
            "vusb-backend".into(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| anyhow::anyhow!("creating the vhost-user daemon: {e:?}"))?;
        let handlers = daemon.get_epoll_handlers();
        handlers[0]
            .register_listener(upcall_fd, EventSet::IN, u64::from(UPCALL_EVENT))
            .context("watching the devices' completions")?;
        daemon
            .start(&mut listener)
            .map_err(|e| anyhow::anyhow!("accepting a front-end: {e:?}"))?;
        info!("front-end connected");
        match daemon.wait() {
            Ok(()) => info!("front-end disconnected"),
            // A guest powering off closes the socket mid-conversation.
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => info!("front-end disconnected"),
            Err(e) => warn!("front-end connection ended: {e:?}"),
        }
        for handler in &handlers {
            handler.send_exit_event();
        }
        backend
            .write()
            .expect("backend lock poisoned")
            .disconnected();
    }
}
