//! What one connection has in flight, by USB/IP seqnum.
//!
//! Servers answer with the seqnum alone (Linux's usbip-host zeroes devid,
//! direction and ep in its replies), so everything needed to frame, check
//! and deliver a reply lives here. No I/O: the connection code asks, this
//! answers.

use std::collections::HashMap;

use usbip_proto::Direction;

use crate::transfer::{IsoPacket, Port};

/// How many abandoned requests (see [`InFlight::forget_transfers`]) are
/// remembered for framing their late replies. A server that never answers
/// the unlinks that settle them cannot make this grow without bound; past
/// it, a late reply is framed from its own header like any unknown one.
const MAX_FORGOTTEN: usize = 1 << 16;

/// A guest transfer sent as CMD_SUBMIT and not answered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub port: Port,
    pub id: u64,
    pub direction: Direction,
    /// The transfer buffer's size: the most a reply may carry.
    pub length: u32,
    /// The request's packets (offsets into the guest's buffer), to spread
    /// compacted isochronous IN data back out; empty if not isochronous.
    pub iso_packets: Vec<IsoPacket>,
    /// Submission order, so leftovers fail in the order they were sent
    /// (requests on one endpoint complete in submission order).
    order: u64,
    /// A CMD_UNLINK for it has been sent.
    unlinking: bool,
}

#[derive(Debug)]
enum Pending {
    Transfer(Request),
    /// The SET_FEATURE(PORT_RESET) of a port reset.
    Reset {
        token: u64,
    },
}

/// Whom a RET_SUBMIT (or an undecodable reply) is for.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyTarget {
    Transfer(Request),
    Reset {
        token: u64,
    },
    /// A request given up by a port reset: its reply is dropped quietly.
    Forgotten,
    /// A seqnum never sent, or already answered.
    Unknown,
}

/// What a RET_UNLINK settles.
#[derive(Debug, PartialEq, Eq)]
pub enum UnlinkTarget {
    /// The victim had no RET_SUBMIT yet: it completes with the unlink.
    Victim(Request),
    /// The victim was answered already or given up: nothing to do.
    Settled,
    /// No CMD_UNLINK with this seqnum was sent.
    Unknown,
}

/// The bookkeeping of one connection.
#[derive(Debug)]
pub struct InFlight {
    next_seqnum: u32,
    next_order: u64,
    pending: HashMap<u32, Pending>,
    /// Guest id → seqnum, for cancels.
    by_id: HashMap<u64, u32>,
    /// CMD_UNLINK seqnum → the seqnum it unlinks.
    unlinks: HashMap<u32, u32>,
    /// Requests given up by a port reset, whose late replies must still be
    /// framed: seqnum → direction.
    forgotten: HashMap<u32, Direction>,
}

impl Default for InFlight {
    fn default() -> Self {
        Self::new()
    }
}

impl InFlight {
    pub fn new() -> Self {
        Self {
            next_seqnum: 1,
            next_order: 0,
            pending: HashMap::new(),
            by_id: HashMap::new(),
            unlinks: HashMap::new(),
            forgotten: HashMap::new(),
        }
    }

    /// A seqnum that nothing outstanding uses. Linux clients start at 1 and
    /// never send 0; after wrapping, seqnums still in use are skipped.
    fn alloc_seqnum(&mut self) -> u32 {
        loop {
            let s = self.next_seqnum;
            self.next_seqnum = match s.wrapping_add(1) {
                0 => 1,
                n => n,
            };
            let busy = self.pending.contains_key(&s)
                || self.unlinks.contains_key(&s)
                || self.forgotten.contains_key(&s);
            if !busy {
                return s;
            }
        }
    }

    /// Records a transfer and returns its seqnum; `None` if the guest
    /// already has a transfer with this id in flight.
    pub fn submit(
        &mut self,
        port: Port,
        id: u64,
        direction: Direction,
        length: u32,
        iso_packets: Vec<IsoPacket>,
    ) -> Option<u32> {
        if self.by_id.contains_key(&id) {
            return None;
        }
        let seqnum = self.alloc_seqnum();
        let order = self.next_order;
        self.next_order += 1;
        self.by_id.insert(id, seqnum);
        self.pending.insert(
            seqnum,
            Pending::Transfer(Request {
                port,
                id,
                direction,
                length,
                iso_packets,
                order,
                unlinking: false,
            }),
        );
        Some(seqnum)
    }

    /// Takes back a transfer just recorded (it could not be sent).
    pub fn withdraw(&mut self, seqnum: u32) -> Option<Request> {
        match self.take_reply(seqnum) {
            ReplyTarget::Transfer(r) => Some(r),
            _ => None,
        }
    }

    /// Records a port reset's control request and returns its seqnum.
    pub fn reset(&mut self, token: u64) -> u32 {
        let seqnum = self.alloc_seqnum();
        self.pending.insert(seqnum, Pending::Reset { token });
        seqnum
    }

    /// Direction of the request `seqnum` answers, to frame the reply.
    pub fn direction_of(&self, seqnum: u32) -> Option<Direction> {
        match self.pending.get(&seqnum) {
            Some(Pending::Transfer(r)) => Some(r.direction),
            Some(Pending::Reset { .. }) => Some(Direction::Out),
            None => self.forgotten.get(&seqnum).copied(),
        }
    }

    /// Removes and returns what a RET_SUBMIT for `seqnum` answers.
    pub fn take_reply(&mut self, seqnum: u32) -> ReplyTarget {
        match self.pending.remove(&seqnum) {
            Some(Pending::Transfer(r)) => {
                self.by_id.remove(&r.id);
                ReplyTarget::Transfer(r)
            }
            Some(Pending::Reset { token }) => ReplyTarget::Reset { token },
            None if self.forgotten.remove(&seqnum).is_some() => ReplyTarget::Forgotten,
            None => ReplyTarget::Unknown,
        }
    }

    /// Starts cancelling the transfer with guest id `id`: returns the
    /// CMD_UNLINK's seqnum and the seqnum it unlinks, or `None` if no such
    /// transfer is in flight or an unlink for it is already on its way.
    pub fn cancel(&mut self, id: u64) -> Option<(u32, u32)> {
        let victim = *self.by_id.get(&id)?;
        match self.pending.get_mut(&victim) {
            Some(Pending::Transfer(r)) if !r.unlinking => r.unlinking = true,
            _ => return None,
        }
        let seqnum = self.alloc_seqnum();
        self.unlinks.insert(seqnum, victim);
        Some((seqnum, victim))
    }

    /// Handles the RET_UNLINK with `seqnum`.
    pub fn take_unlink(&mut self, seqnum: u32) -> UnlinkTarget {
        let Some(victim) = self.unlinks.remove(&seqnum) else {
            return UnlinkTarget::Unknown;
        };
        // Either the server cancelled the victim (no RET_SUBMIT will come)
        // or it answered it before this reply: a forgotten victim is
        // settled either way.
        self.forgotten.remove(&victim);
        match self.take_reply(victim) {
            ReplyTarget::Transfer(r) => UnlinkTarget::Victim(r),
            ReplyTarget::Reset { token } => {
                // Unlinks are only sent for transfers; put it back.
                self.pending.insert(victim, Pending::Reset { token });
                UnlinkTarget::Settled
            }
            ReplyTarget::Forgotten | ReplyTarget::Unknown => UnlinkTarget::Settled,
        }
    }

    /// Gives up every transfer in flight (a port reset): returns them in
    /// submission order, each with the seqnum of a CMD_UNLINK to send for
    /// it (`None` when one is on its way already) and its own seqnum. Their
    /// later replies are recognised and dropped quietly.
    pub fn forget_transfers(&mut self) -> Vec<(Request, Option<u32>, u32)> {
        let seqnums: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(p, Pending::Transfer(_)))
            .map(|(&s, _)| s)
            .collect();
        let mut out = Vec::with_capacity(seqnums.len());
        for victim in seqnums {
            let Some(Pending::Transfer(r)) = self.pending.remove(&victim) else {
                continue;
            };
            self.by_id.remove(&r.id);
            if self.forgotten.len() < MAX_FORGOTTEN {
                self.forgotten.insert(victim, r.direction);
            }
            let unlink = (!r.unlinking).then(|| {
                let seqnum = self.alloc_seqnum();
                self.unlinks.insert(seqnum, victim);
                seqnum
            });
            out.push((r, unlink, victim));
        }
        out.sort_by_key(|(r, _, _)| r.order);
        out
    }

    /// Empties the table (the connection is gone): the transfers in
    /// submission order, and the tokens of port resets in progress.
    pub fn drain(&mut self) -> (Vec<Request>, Vec<u64>) {
        let mut transfers = Vec::new();
        let mut resets = Vec::new();
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Transfer(r) => transfers.push(r),
                Pending::Reset { token } => resets.push(token),
            }
        }
        transfers.sort_by_key(|r| r.order);
        resets.sort_unstable();
        self.by_id.clear();
        self.unlinks.clear();
        self.forgotten.clear();
        (transfers, resets)
    }

    /// Requests and resets awaiting a reply.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk_in(t: &mut InFlight, id: u64) -> u32 {
        t.submit(1, id, Direction::In, 64, Vec::new()).unwrap()
    }

    #[test]
    fn seqnums_are_fresh_and_replies_find_their_request() {
        let mut t = InFlight::new();
        let a = bulk_in(&mut t, 10);
        let b = t.submit(1, 11, Direction::Out, 8, Vec::new()).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, 0);
        assert_eq!(t.direction_of(a), Some(Direction::In));
        assert_eq!(t.direction_of(b), Some(Direction::Out));
        let ReplyTarget::Transfer(r) = t.take_reply(b) else {
            panic!()
        };
        assert_eq!((r.id, r.length), (11, 8));
        assert_eq!(t.take_reply(b), ReplyTarget::Unknown);
        assert_eq!(t.direction_of(b), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_duplicate_guest_id_is_refused() {
        let mut t = InFlight::new();
        bulk_in(&mut t, 5);
        assert_eq!(t.submit(1, 5, Direction::In, 8, Vec::new()), None);
    }

    #[test]
    fn seqnums_skip_zero_and_those_in_use_after_wrapping() {
        let mut t = InFlight::new();
        t.next_seqnum = u32::MAX;
        let last = bulk_in(&mut t, 1);
        assert_eq!(last, u32::MAX);
        let wrapped = bulk_in(&mut t, 2);
        assert_eq!(wrapped, 1);
        t.next_seqnum = u32::MAX;
        assert_eq!(bulk_in(&mut t, 3), 2, "skips MAX and 1, both in flight");
    }

    #[test]
    fn cancel_won_completes_the_victim_with_the_unlink() {
        let mut t = InFlight::new();
        let victim = bulk_in(&mut t, 7);
        let (unlink, v) = t.cancel(7).unwrap();
        assert_eq!(v, victim);
        assert_eq!(t.cancel(7), None, "one unlink per request");
        let UnlinkTarget::Victim(r) = t.take_unlink(unlink) else {
            panic!()
        };
        assert_eq!(r.id, 7);
        assert!(t.is_empty());
        assert_eq!(t.cancel(7), None);
    }

    #[test]
    fn cancel_lost_lets_the_reply_complete_and_settles_the_unlink() {
        let mut t = InFlight::new();
        let victim = bulk_in(&mut t, 7);
        let (unlink, _) = t.cancel(7).unwrap();
        assert!(matches!(t.take_reply(victim), ReplyTarget::Transfer(_)));
        assert_eq!(t.take_unlink(unlink), UnlinkTarget::Settled);
        assert_eq!(t.take_unlink(unlink), UnlinkTarget::Unknown);
    }

    #[test]
    fn cancel_of_an_unknown_id_does_nothing() {
        let mut t = InFlight::new();
        assert_eq!(t.cancel(99), None);
    }

    #[test]
    fn a_reset_forgets_transfers_in_order_and_drops_their_replies() {
        let mut t = InFlight::new();
        let a = bulk_in(&mut t, 1);
        let b = bulk_in(&mut t, 2);
        let c = bulk_in(&mut t, 3);
        let (cancel_b, _) = t.cancel(2).unwrap();
        let forgotten = t.forget_transfers();
        let ids: Vec<u64> = forgotten.iter().map(|(r, _, _)| r.id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert!(forgotten[0].1.is_some());
        assert_eq!(forgotten[1].1, None, "an unlink is already on its way");
        let unlink_c = forgotten[2].1.unwrap();
        assert!(t.is_empty());
        // Late replies are framed, then dropped quietly.
        assert_eq!(t.direction_of(a), Some(Direction::In));
        assert_eq!(t.take_reply(a), ReplyTarget::Forgotten);
        assert_eq!(t.take_unlink(cancel_b), UnlinkTarget::Settled);
        assert_eq!(t.direction_of(b), None, "the unlink settled it");
        assert_eq!(t.take_unlink(unlink_c), UnlinkTarget::Settled);
        assert_eq!(t.take_reply(c), ReplyTarget::Unknown);
        let token = t.reset(42);
        assert_eq!(t.direction_of(token), Some(Direction::Out));
        assert_eq!(t.take_reply(token), ReplyTarget::Reset { token: 42 });
    }

    #[test]
    fn drain_returns_everything_in_submission_order() {
        let mut t = InFlight::new();
        for id in 0..20 {
            bulk_in(&mut t, id);
        }
        t.reset(9);
        let (transfers, resets) = t.drain();
        let ids: Vec<u64> = transfers.iter().map(|r| r.id).collect();
        assert_eq!(ids, (0..20).collect::<Vec<_>>());
        assert_eq!(resets, vec![9]);
        assert!(t.is_empty());
        assert!(t.submit(1, 0, Direction::In, 1, Vec::new()).is_some());
    }

    #[test]
    fn withdraw_forgets_an_unsent_transfer() {
        let mut t = InFlight::new();
        let s = bulk_in(&mut t, 4);
        assert_eq!(t.withdraw(s).map(|r| r.id), Some(4));
        assert!(t.is_empty());
        assert!(t.submit(1, 4, Direction::In, 1, Vec::new()).is_some());
    }
}
