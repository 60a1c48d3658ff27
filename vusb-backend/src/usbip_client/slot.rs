//! One device slot: its live import, if any, and the guest's requests on it.
//!
//! The guest's calls (submit, cancel, reset) arrive on the device model's
//! threads and replies on the connection's task; both meet under one mutex,
//! so each request is answered exactly once whichever side gets there
//! first. Upcalls are queued under that mutex and delivered after it is
//! released (`delivery`).

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};
use usbip_proto::{CmdMessage, Direction, ProtoError, RetMessage, RetSubmit, RetUnlink};

use super::delivery::Delivery;
use super::framing::{self, Reply};
use super::inflight::{InFlight, ReplyTarget, UnlinkTarget};
use super::translate;
use crate::remote::RemoteDevice;
use crate::transfer::{Port, PortEvent, Speed, Status, Transfer, Upcall};

/// Problems with one connection's replies that are logged one by one;
/// past this, a hostile server could flood the log.
const LOGGED_PROBLEMS: u32 = 32;

/// An imported device on a live connection.
struct Link {
    port: Port,
    speed: Speed,
    devid: u32,
    inflight: InFlight,
    /// Encoded commands for the connection's writer task.
    tx: UnboundedSender<Bytes>,
    problems: u32,
}

impl Link {
    /// Queues a command for the writer. A writer that is gone has lost the
    /// connection: whatever was in flight is failed when the link is torn
    /// down, so a closed channel needs no handling here.
    fn send(&self, msg: &CmdMessage) -> Result<(), ProtoError> {
        let mut out = BytesMut::new();
        msg.encode(&mut out)?;
        let _ = self.tx.send(out.freeze());
        Ok(())
    }

    fn submit(&mut self, t: &Transfer) -> Result<(), &'static str> {
        let direction = if t.is_in() {
            Direction::In
        } else {
            Direction::Out
        };
        let seqnum = self
            .inflight
            .submit(t.port, t.id, direction, t.length, t.iso_packets.clone())
            .ok_or("a transfer with this id is already in flight")?;
        let cmd = CmdMessage::Submit(translate::cmd_submit(t, seqnum, self.devid));
        if self.send(&cmd).is_err() {
            self.inflight.withdraw(seqnum);
            return Err("the transfer cannot be encoded for USB/IP");
        }
        Ok(())
    }

    fn problem(&mut self, remote: &RemoteDevice, what: std::fmt::Arguments<'_>) {
        self.problems = self.problems.saturating_add(1);
        if self.problems <= LOGGED_PROBLEMS {
            warn!(device = %remote, port = self.port, "bad reply from the server: {what}");
        }
        if self.problems == LOGGED_PROBLEMS {
            warn!(device = %remote, port = self.port, "not logging further bad replies on this connection");
        }
    }

    fn handle(&mut self, reply: Reply, remote: &RemoteDevice, out: &mut Vec<Upcall>) {
        match reply {
            Reply::Message(RetMessage::Submit(r)) => self.on_ret_submit(r, remote, out),
            Reply::Message(RetMessage::Unlink(u)) => self.on_ret_unlink(u, remote, out),
            Reply::Malformed { seqnum, error } => match self.inflight.take_reply(seqnum) {
                ReplyTarget::Transfer(req) => {
                    self.problem(
                        remote,
                        format_args!("seqnum {seqnum} (id {}): {error}", req.id),
                    );
                    out.push(Upcall::Completed(translate::request_failed(
                        &req,
                        Status::Protocol,
                    )));
                }
                ReplyTarget::Reset { token } => {
                    self.problem(remote, format_args!("port reset reply: {error}"));
                    out.push(self.reset_done(token, Status::Protocol));
                }
                ReplyTarget::Forgotten => {}
                ReplyTarget::Unknown => self.problem(
                    remote,
                    format_args!("unknown seqnum {seqnum}, skipped: {error}"),
                ),
            },
        }
    }

    fn on_ret_submit(&mut self, r: RetSubmit, remote: &RemoteDevice, out: &mut Vec<Upcall>) {
        let seqnum = r.header.seqnum;
        match self.inflight.take_reply(seqnum) {
            ReplyTarget::Transfer(req) => {
                let completion = translate::completion(&req, &r).unwrap_or_else(|problem| {
                    self.problem(
                        remote,
                        format_args!("seqnum {seqnum} (id {}): {problem}", req.id),
                    );
                    translate::request_failed(&req, Status::Protocol)
                });
                out.push(Upcall::Completed(completion));
            }
            ReplyTarget::Reset { token } => {
                out.push(self.reset_done(token, translate::reset_status(r.status)));
            }
            ReplyTarget::Forgotten => {
                debug!(device = %remote, seqnum, "dropping the reply to a request given up by a port reset");
            }
            ReplyTarget::Unknown => {
                self.problem(
                    remote,
                    format_args!("RET_SUBMIT for unknown seqnum {seqnum}, skipped"),
                );
            }
        }
    }

    fn on_ret_unlink(&mut self, u: RetUnlink, remote: &RemoteDevice, out: &mut Vec<Upcall>) {
        let seqnum = u.header.seqnum;
        match self.inflight.take_unlink(seqnum) {
            UnlinkTarget::Victim(req) => {
                // -ECONNRESET: the cancel won and no RET_SUBMIT follows.
                // Status 0 says the URB had completed, yet its RET_SUBMIT
                // never came: the request is over either way, and like
                // vhci-hcd the client gives it back now, as cancelled.
                let status = match u.status {
                    0 => Status::Cancelled,
                    s => translate::status_of(s),
                };
                if u.status == 0 {
                    debug!(device = %remote, id = req.id, "RET_UNLINK 0 without a RET_SUBMIT; completing as cancelled");
                }
                out.push(Upcall::Completed(translate::request_failed(&req, status)));
            }
            UnlinkTarget::Settled => {}
            UnlinkTarget::Unknown => {
                self.problem(
                    remote,
                    format_args!("RET_UNLINK for unknown seqnum {seqnum}, skipped"),
                );
            }
        }
    }

    fn reset_done(&self, token: u64, status: Status) -> Upcall {
        Upcall::ResetDone {
            port: self.port,
            token,
            status,
            speed: (status == Status::Ok).then_some(self.speed),
        }
    }
}

/// A device slot, shared by the client's handle and its connection task.
pub(super) struct Slot {
    pub remote: RemoteDevice,
    delivery: Arc<Delivery>,
    /// The import, while the device is connected.
    link: Mutex<Option<Link>>,
}

impl Slot {
    pub fn new(remote: RemoteDevice, delivery: Arc<Delivery>) -> Self {
        Self {
            remote,
            delivery,
            link: Mutex::new(None),
        }
    }

    /// Runs `f` on the link under the lock; the upcalls it produces are
    /// queued before the lock is released, so they are delivered in the
    /// order the state changed, and delivered after it is released.
    fn with_link<R>(&self, f: impl FnOnce(&mut Option<Link>, &mut Vec<Upcall>) -> R) -> R {
        let mut out = Vec::new();
        let r = {
            // Every critical section leaves the state consistent before it
            // could panic, so a poisoned lock is still usable.
            let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
            let r = f(&mut link, &mut out);
            self.delivery.enqueue(out);
            r
        };
        self.delivery.deliver();
        r
    }

    /// Sends a guest transfer, or answers it at once when it cannot go.
    pub fn submit(&self, t: Transfer) {
        let problem = self.with_link(|link, out| {
            let outcome = match link.as_mut() {
                Some(link) if link.port == t.port => match translate::check(&t) {
                    Ok(()) => link.submit(&t),
                    Err(problem) => Err(problem),
                }
                .map_err(|p| (Status::Invalid, p)),
                _ => Err((Status::NoDevice, "")),
            };
            outcome.err().map(|(status, problem)| {
                let failed = translate::failed(t.port, t.id, t.iso_packets.len(), status);
                out.push(Upcall::Completed(failed));
                problem
            })
        });
        if let Some(problem) = problem.filter(|p| !p.is_empty()) {
            warn!(device = %self.remote, port = t.port, id = t.id, "refusing transfer: {problem}");
        }
    }

    /// Sends a CMD_UNLINK for transfer `id` if it is in flight on `port`.
    pub fn cancel(&self, port: Port, id: u64) {
        self.with_link(|link, _| {
            let Some(link) = link.as_mut().filter(|l| l.port == port) else {
                return;
            };
            if let Some((seqnum, victim)) = link.inflight.cancel(id) {
                let unlink = CmdMessage::Unlink(translate::cmd_unlink(seqnum, link.devid, victim));
                // An unlink always encodes.
                let _ = link.send(&unlink);
            }
        });
    }

    /// Resets the device on `port`: fails what is in flight with
    /// `Shutdown` (unlinking it on the server), then sends the reset. The
    /// failures are queued before the reset is even sent, so they precede
    /// its ResetDone.
    pub fn reset(&self, port: Port, token: u64) {
        self.with_link(|link, out| {
            let Some(link) = link.as_mut().filter(|l| l.port == port) else {
                out.push(no_device_reset(port, token));
                return;
            };
            for (req, unlink, victim) in link.inflight.forget_transfers() {
                if let Some(seqnum) = unlink {
                    let cmd = CmdMessage::Unlink(translate::cmd_unlink(seqnum, link.devid, victim));
                    let _ = link.send(&cmd);
                }
                out.push(Upcall::Completed(translate::request_failed(
                    &req,
                    Status::Shutdown,
                )));
            }
            let seqnum = link.inflight.reset(token);
            let cmd = CmdMessage::Submit(translate::port_reset(seqnum, link.devid));
            // A port reset always encodes.
            let _ = link.send(&cmd);
        });
    }

    /// A connection imported the device: it now sits on `port`.
    pub fn attach(&self, port: Port, speed: Speed, devid: u32, tx: UnboundedSender<Bytes>) {
        self.with_link(|link, out| {
            *link = Some(Link {
                port,
                speed,
                devid,
                inflight: InFlight::new(),
                tx,
                problems: 0,
            });
            out.push(Upcall::Event(PortEvent::Connected { port, speed }));
        });
    }

    /// The connection is gone: fails everything in flight with `NoDevice`,
    /// then reports the port empty. Returns how many requests failed.
    pub fn detach(&self) -> usize {
        self.with_link(|link, out| {
            let Some(mut link) = link.take() else {
                return 0;
            };
            let (transfers, resets) = link.inflight.drain();
            let port = link.port;
            out.extend(
                transfers
                    .iter()
                    .map(|r| Upcall::Completed(translate::request_failed(r, Status::NoDevice))),
            );
            out.extend(resets.into_iter().map(|token| no_device_reset(port, token)));
            out.push(Upcall::Event(PortEvent::Disconnected { port }));
            transfers.len()
        })
    }

    /// Handles every whole reply in `buf`. An error means the stream cannot
    /// be read any further.
    pub fn on_replies(&self, buf: &mut BytesMut) -> Result<(), ProtoError> {
        self.with_link(|link, out| {
            let Some(link) = link.as_mut() else {
                return Ok(());
            };
            loop {
                let inflight = &link.inflight;
                match framing::next_reply(buf, |s| inflight.direction_of(s))? {
                    Some(reply) => link.handle(reply, &self.remote, out),
                    None => return Ok(()),
                }
            }
        })
    }
}

fn no_device_reset(port: Port, token: u64) -> Upcall {
    Upcall::ResetDone {
        port,
        token,
        status: Status::NoDevice,
        speed: None,
    }
}
