//! What a new back-end must be told to stand where the old one stood: the
//! front-end's setup, boiled down from the messages it sent to their
//! latest effect. No I/O.
//!
//! The front-end's history is not replayed as it happened: rings it set up
//! and later stopped pointed at memory the guest has since reused, and a
//! back-end that started them again, even for a moment, could write there.
//! Only the setup in force now is kept: features, memory table, and each
//! running ring's size, base, addresses, notifiers and enable state.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::message::{request, Message, FLAG_VERSION};

/// One running ring's setup, in the order it is replayed.
#[derive(Debug, Default, Clone)]
struct Ring {
    num: Option<Message>,
    base: Option<Message>,
    addr: Option<Message>,
    call: Option<Message>,
    err: Option<Message>,
    kick: Option<Message>,
    enable: Option<Message>,
}

/// The front-end's setup in force.
#[derive(Debug, Default)]
pub struct Journal {
    owned: bool,
    features: Option<Message>,
    protocol_features: Option<Message>,
    mem_table: Option<Message>,
    rings: BTreeMap<u32, Ring>,
}

impl Journal {
    /// Takes note of a message the front-end sent.
    pub fn record(&mut self, m: &Message) {
        use request::*;
        let keep = Some(m.without_ack());
        match m.header.request {
            SET_OWNER => self.owned = true,
            RESET_OWNER => *self = Self::default(),
            SET_FEATURES => self.features = keep,
            SET_PROTOCOL_FEATURES => self.protocol_features = keep,
            SET_MEM_TABLE => self.mem_table = keep,
            // A reset device starts again from nothing but its features.
            RESET_DEVICE => self.rings.clear(),
            // A stopped ring stays stopped: the front-end sets it up in
            // full when it starts it again.
            GET_VRING_BASE => {
                if let Some(i) = m.vring_index() {
                    self.rings.remove(&i);
                }
            }
            SET_VRING_NUM | SET_VRING_BASE | SET_VRING_ADDR | SET_VRING_CALL | SET_VRING_ERR
            | SET_VRING_KICK | SET_VRING_ENABLE => {
                let Some(i) = m.vring_index() else { return };
                let ring = self.rings.entry(i).or_default();
                let slot = match m.header.request {
                    SET_VRING_NUM => &mut ring.num,
                    SET_VRING_BASE => &mut ring.base,
                    SET_VRING_ADDR => &mut ring.addr,
                    SET_VRING_CALL => &mut ring.call,
                    SET_VRING_ERR => &mut ring.err,
                    SET_VRING_KICK => &mut ring.kick,
                    _ => &mut ring.enable,
                };
                *slot = keep;
            }
            // Queries, and settings this device does not use.
            _ => {}
        }
    }

    /// Whether the front-end has set anything up yet.
    pub fn is_empty(&self) -> bool {
        !self.owned && self.features.is_none() && self.mem_table.is_none()
    }

    /// The kick eventfds of the running rings. A front-end starts a ring
    /// with its kick signalled; a back-end brought back by a replay needs
    /// the same, or it would not look at a ring until the driver next adds
    /// to it.
    pub fn kick_fds(&self) -> Vec<Arc<OwnedFd>> {
        self.rings
            .values()
            .filter_map(|r| r.kick.as_ref())
            .flat_map(|m| m.fds.iter().cloned())
            .collect()
    }

    /// The messages that bring a new back-end to the recorded setup, in
    /// the order a front-end sends them. None asks for an acknowledgement;
    /// the two feature queries come first because a back-end learns from
    /// them what the later messages mean, and their replies are to be
    /// read and dropped.
    pub fn replay(&self) -> Vec<Message> {
        let mut out = vec![Message::new(
            request::GET_FEATURES,
            FLAG_VERSION,
            Vec::new(),
        )];
        if let Some(p) = &self.protocol_features {
            out.push(Message::new(
                request::GET_PROTOCOL_FEATURES,
                FLAG_VERSION,
                Vec::new(),
            ));
            out.push(p.clone());
        }
        if self.owned {
            out.push(Message::new(request::SET_OWNER, FLAG_VERSION, Vec::new()));
        }
        out.extend(self.features.iter().cloned());
        out.extend(self.mem_table.iter().cloned());
        for ring in self.rings.values() {
            // A ring is only worth restoring once it was started.
            if ring.kick.is_none() {
                continue;
            }
            // The call notifier before the kick: the back-end starts the
            // ring on its kick and may answer at once.
            for m in [
                &ring.num,
                &ring.base,
                &ring.addr,
                &ring.call,
                &ring.err,
                &ring.kick,
                &ring.enable,
            ]
            .into_iter()
            .flatten()
            {
                out.push(m.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keeper::message::FLAG_NEED_REPLY;

    fn state(req: u32, index: u32, num: u32) -> Message {
        let mut p = index.to_le_bytes().to_vec();
        p.extend_from_slice(&num.to_le_bytes());
        Message::new(req, FLAG_VERSION, p)
    }

    fn notifier(req: u32, index: u8) -> Message {
        Message::new(req, FLAG_VERSION, vec![index, 0, 0, 0, 0, 0, 0, 0])
    }

    fn start_ring(j: &mut Journal, i: u32, base: u32) {
        j.record(&state(request::SET_VRING_NUM, i, 256));
        j.record(&state(request::SET_VRING_BASE, i, base));
        j.record(&Message::new(request::SET_VRING_ADDR, FLAG_VERSION, {
            let mut p = i.to_le_bytes().to_vec();
            p.extend_from_slice(&[0; 44]);
            p
        }));
        j.record(&notifier(request::SET_VRING_KICK, i as u8));
        j.record(&notifier(request::SET_VRING_CALL, i as u8));
        j.record(&state(request::SET_VRING_ENABLE, i, 1));
    }

    fn requests(ms: &[Message]) -> Vec<u32> {
        ms.iter().map(|m| m.header.request).collect()
    }

    fn set_up(j: &mut Journal) {
        j.record(&Message::new(request::GET_FEATURES, FLAG_VERSION, vec![]));
        j.record(&Message::new(
            request::SET_PROTOCOL_FEATURES,
            FLAG_VERSION,
            vec![0; 8],
        ));
        j.record(&Message::new(request::SET_OWNER, FLAG_VERSION, vec![]));
        j.record(&Message::new(
            request::SET_FEATURES,
            FLAG_VERSION,
            vec![0; 8],
        ));
        j.record(&Message::new(
            request::SET_MEM_TABLE,
            FLAG_VERSION | FLAG_NEED_REPLY,
            vec![0; 40],
        ));
    }

    #[test]
    fn a_running_device_replays_in_front_end_order_without_acks() {
        use request::*;
        let mut j = Journal::default();
        assert!(j.is_empty());
        set_up(&mut j);
        start_ring(&mut j, 0, 0);
        start_ring(&mut j, 2, 0);
        let replay = j.replay();
        assert_eq!(
            requests(&replay),
            [
                GET_FEATURES,
                GET_PROTOCOL_FEATURES,
                SET_PROTOCOL_FEATURES,
                SET_OWNER,
                SET_FEATURES,
                SET_MEM_TABLE,
                SET_VRING_NUM,
                SET_VRING_BASE,
                SET_VRING_ADDR,
                SET_VRING_CALL,
                SET_VRING_KICK,
                SET_VRING_ENABLE,
                SET_VRING_NUM,
                SET_VRING_BASE,
                SET_VRING_ADDR,
                SET_VRING_CALL,
                SET_VRING_KICK,
                SET_VRING_ENABLE,
            ]
        );
        assert!(replay.iter().all(|m| m.header.flags & FLAG_NEED_REPLY == 0));
        assert_eq!(replay[8].vring_index(), Some(0));
        assert_eq!(replay[14].vring_index(), Some(2));
    }

    #[test]
    fn stopped_rings_are_not_restored_and_the_latest_setup_wins() {
        use request::*;
        let mut j = Journal::default();
        set_up(&mut j);
        start_ring(&mut j, 0, 0);
        start_ring(&mut j, 1, 0);
        // The guest resets the device: both rings stop, and only ring 0
        // is started again, elsewhere.
        j.record(&state(GET_VRING_BASE, 0, 0));
        j.record(&state(GET_VRING_BASE, 1, 0));
        start_ring(&mut j, 0, 5);
        let replay = j.replay();
        let rings: Vec<_> = replay.iter().filter_map(Message::vring_index).collect();
        assert!(rings.iter().all(|i| *i == 0), "{rings:?}");
        let base = replay
            .iter()
            .find(|m| m.header.request == SET_VRING_BASE)
            .unwrap();
        assert_eq!(&base.payload[4..8], &5u32.to_le_bytes());

        // A ring set up but never kicked was never started.
        j.record(&state(SET_VRING_NUM, 1, 256));
        assert_eq!(j.replay().len(), replay.len());
    }

    #[test]
    fn reset_owner_forgets_everything() {
        let mut j = Journal::default();
        set_up(&mut j);
        start_ring(&mut j, 0, 0);
        j.record(&Message::new(request::RESET_OWNER, FLAG_VERSION, vec![]));
        assert!(j.is_empty());
        assert_eq!(requests(&j.replay()), [request::GET_FEATURES]);
    }
}
