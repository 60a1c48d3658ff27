//! The USB Mass Storage Bulk-Only Transport (BOT 1.0): command block
//! wrappers in, data in either direction, command status wrappers out.
//!
//! This layer only moves bytes between the two bulk pipes and a [`Target`]
//! (the SCSI logical unit); it does no I/O of its own. Data phases are
//! streamed: every IN request is filled straight from the target and every
//! OUT request handed straight to it, so nothing larger than one USB request
//! is ever buffered here, whatever the host asks for.
//!
//! Host and device may disagree on the length or direction of a data phase
//! (the "thirteen cases" of BOT §6.7). The device's choices follow what
//! Linux's usb-storage copes with best: less data than expected is sent as a
//! short transfer and reported in the residue; a command that fails while
//! the host expects data stalls the IN pipe; surplus OUT data is accepted and
//! discarded; every real disagreement ends in a phase error.

use tracing::{debug, warn};

/// Length of a command block wrapper.
pub(crate) const CBW_LEN: usize = 31;
/// Length of a command status wrapper.
pub(crate) const CSW_LEN: usize = 13;
/// dCBWSignature, "USBC" in little-endian.
const CBW_SIGNATURE: u32 = 0x4342_5355;
/// dCSWSignature, "USBS" in little-endian.
const CSW_SIGNATURE: u32 = 0x5342_5355;
/// bmCBWFlags direction bit: the data phase goes device-to-host.
const CBW_FLAG_IN: u8 = 0x80;

/// Largest dCBWDataTransferLength accepted. Linux's usb-storage moves at
/// most `max_sectors` per command (120 KiB by default, a few MiB at most),
/// so a longer command is a broken or hostile host; refusing it keeps one
/// command from streaming gigabytes before the next can run.
pub(crate) const MAX_DATA_TRANSFER_LEN: u32 = 16 << 20;

/// The command ended with CHECK CONDITION; the target keeps the sense data
/// for the REQUEST SENSE that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckCondition;

/// What the target intends to do in the data phase of a command (the device
/// side, "Dn / Di / Do", of BOT §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// No data: the command has already completed with this outcome.
    NoData(Result<(), CheckCondition>),
    /// The target sends this many bytes, through [`Target::read`].
    In(usize),
    /// The target expects this many bytes, through [`Target::write`].
    Out(usize),
}

/// A logical unit as the transport sees it.
pub(crate) trait Target {
    /// Decodes and starts a command (`cdb` is 1..=16 bytes long).
    fn start(&mut self, lun: u8, cdb: &[u8]) -> Plan;

    /// Fills `buf` with the next bytes of the current command's data-in
    /// phase. The transport never asks for more than [`Plan::In`] announced.
    /// After an error it asks for nothing more.
    fn read(&mut self, buf: &mut [u8]) -> Result<(), CheckCondition>;

    /// Takes the next bytes of the current command's data-out phase. The
    /// transport never passes more than [`Plan::Out`] announced. After an
    /// error it passes nothing more.
    fn write(&mut self, data: &[u8]) -> Result<(), CheckCondition>;

    /// The transport refused a command whose dCBWDataTransferLength exceeds
    /// [`MAX_DATA_TRANSFER_LEN`] without starting it; the target records
    /// sense data saying so.
    fn refuse(&mut self);

    /// Forgets the current command (a reset).
    fn abort(&mut self);
}

/// bCSWStatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CswStatus {
    Passed = 0,
    Failed = 1,
    PhaseError = 2,
}

impl From<Result<(), CheckCondition>> for CswStatus {
    fn from(r: Result<(), CheckCondition>) -> Self {
        match r {
            Ok(()) => CswStatus::Passed,
            Err(CheckCondition) => CswStatus::Failed,
        }
    }
}

/// A command status wrapper waiting to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Csw {
    tag: u32,
    residue: u32,
    status: CswStatus,
}

impl Csw {
    fn to_bytes(self) -> [u8; CSW_LEN] {
        let mut b = [0u8; CSW_LEN];
        b[0..4].copy_from_slice(&CSW_SIGNATURE.to_le_bytes());
        b[4..8].copy_from_slice(&self.tag.to_le_bytes());
        b[8..12].copy_from_slice(&self.residue.to_le_bytes());
        b[12] = self.status as u8;
        b
    }
}

/// What the host announced in the CBW (the "Hn / Hi / Ho" of BOT §6.7).
#[derive(Debug, Clone, Copy)]
enum HostPhase {
    None,
    In(u32),
    Out(u32),
}

#[derive(Debug)]
enum State {
    /// Waiting for a CBW; IN requests wait too.
    Idle,
    /// Sending `to_send` bytes of a data-in phase the host announced as
    /// `host_len` bytes long.
    DataIn {
        tag: u32,
        host_len: u32,
        to_send: usize,
        sent: usize,
        /// The status once every byte is sent (a phase error when the device
        /// had more than the host asked for).
        status: CswStatus,
    },
    /// Receiving a data-out phase of `host_len` bytes; the first `to_write`
    /// go to the target (while `status` stays Passed), the rest are
    /// discarded.
    DataOut {
        tag: u32,
        host_len: u32,
        received: usize,
        to_write: usize,
        written: usize,
        status: CswStatus,
    },
    /// The next IN request stalls, then the CSW follows.
    StallIn(Csw),
    /// The CSW is ready for the next IN request.
    Status(Csw),
    /// An invalid CBW arrived: both pipes stall until a Bulk-Only Mass
    /// Storage Reset (BOT §6.6.1, reset recovery §5.3.4).
    Halted,
}

/// The transport's answer to an OUT transfer that must stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutStall;

/// What the transport answers to an IN request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InAnswer {
    Data(Vec<u8>),
    Nak,
    Stall,
}

/// The Bulk-Only Transport state machine in front of one [`Target`].
#[derive(Debug)]
pub(crate) struct BulkOnly<T> {
    target: T,
    state: State,
}

impl<T: Target> BulkOnly<T> {
    pub(crate) fn new(target: T) -> Self {
        Self {
            target,
            state: State::Idle,
        }
    }

    /// Bulk-Only Mass Storage Reset, port reset or a configuration change:
    /// back to waiting for a CBW.
    pub(crate) fn reset(&mut self) {
        self.target.abort();
        self.state = State::Idle;
    }

    /// A transfer on the bulk OUT pipe.
    pub(crate) fn data_out(&mut self, data: &[u8]) -> Result<(), OutStall> {
        match self.state {
            State::Idle => self.command(data),
            State::DataOut { .. } => {
                self.receive(data);
                Ok(())
            }
            State::Halted => Err(OutStall),
            // A CBW before the previous command's CSW was read is not valid
            // (BOT §6.2.1), nor is OUT data during a data-in phase.
            State::DataIn { .. } | State::StallIn(_) | State::Status(_) => {
                warn!(
                    len = data.len(),
                    "mass storage: OUT transfer while a command is pending; halting until reset"
                );
                self.halt()
            }
        }
    }

    /// A request of at most `max_len` bytes on the bulk IN pipe.
    pub(crate) fn data_in(&mut self, max_len: usize) -> InAnswer {
        match self.state {
            State::Idle | State::DataOut { .. } => InAnswer::Nak,
            State::Halted => InAnswer::Stall,
            State::StallIn(csw) => {
                self.state = State::Status(csw);
                InAnswer::Stall
            }
            State::Status(csw) => {
                if max_len < CSW_LEN {
                    // The CSW cannot be cut in two; a host reading it into a
                    // smaller buffer gets a stall and may try again.
                    warn!(max_len, "mass storage: CSW read with a short buffer");
                    return InAnswer::Stall;
                }
                self.state = State::Idle;
                InAnswer::Data(csw.to_bytes().to_vec())
            }
            State::DataIn { .. } => self.send(max_len),
        }
    }

    fn halt(&mut self) -> Result<(), OutStall> {
        self.target.abort();
        self.state = State::Halted;
        Err(OutStall)
    }

    /// Parses a CBW and sets up the data phase.
    fn command(&mut self, cbw: &[u8]) -> Result<(), OutStall> {
        let Ok(cbw) = <&[u8; CBW_LEN]>::try_from(cbw) else {
            warn!(len = cbw.len(), "mass storage: CBW of the wrong size");
            return self.halt();
        };
        if u32::from_le_bytes([cbw[0], cbw[1], cbw[2], cbw[3]]) != CBW_SIGNATURE {
            warn!("mass storage: CBW with a bad signature");
            return self.halt();
        }
        let tag = u32::from_le_bytes([cbw[4], cbw[5], cbw[6], cbw[7]]);
        let host_len = u32::from_le_bytes([cbw[8], cbw[9], cbw[10], cbw[11]]);
        let (flags, lun, cb_len) = (cbw[12], cbw[13], cbw[14]);
        // Reserved bits set or an impossible command block length: the CBW
        // is not meaningful (BOT §6.2.2). Like Linux's own mass-storage
        // gadget, treat it as invalid rather than guess.
        if flags & !CBW_FLAG_IN != 0 || lun & 0xf0 != 0 || !(1..=16).contains(&cb_len) {
            warn!(flags, lun, cb_len, "mass storage: CBW not meaningful");
            return self.halt();
        }
        let cdb = &cbw[15..15 + usize::from(cb_len)];
        let host = match (host_len, flags & CBW_FLAG_IN != 0) {
            (0, _) => HostPhase::None,
            (n, true) => HostPhase::In(n),
            (n, false) => HostPhase::Out(n),
        };
        let plan = if host_len > MAX_DATA_TRANSFER_LEN {
            debug!(host_len, "mass storage: transfer length over the limit");
            self.target.refuse();
            Plan::NoData(Err(CheckCondition))
        } else {
            self.target.start(lun, cdb)
        };
        debug!(tag, ?host, ?plan, opcode = cdb[0], "mass storage: command");
        self.state = Self::phase(tag, host, plan);
        Ok(())
    }

    /// The data phase (or the CSW) for each of the thirteen cases.
    fn phase(tag: u32, host: HostPhase, plan: Plan) -> State {
        // A zero-length data phase is no data phase.
        let plan = match plan {
            Plan::In(0) | Plan::Out(0) => Plan::NoData(Ok(())),
            p => p,
        };
        let status = |residue, status| Csw {
            tag,
            residue,
            status,
        };
        let discard = |host_len, status| State::DataOut {
            tag,
            host_len,
            received: 0,
            to_write: 0,
            written: 0,
            status,
        };
        match (host, plan) {
            // Case 1.
            (HostPhase::None, Plan::NoData(r)) => State::Status(status(0, r.into())),
            // Cases 2 and 3: the device wants a data phase the host didn't plan.
            (HostPhase::None, Plan::In(_) | Plan::Out(_)) => {
                State::Status(status(0, CswStatus::PhaseError))
            }
            // Case 4, success: a zero-length transfer ends the data phase.
            (HostPhase::In(h), Plan::NoData(Ok(()))) => State::DataIn {
                tag,
                host_len: h,
                to_send: 0,
                sent: 0,
                status: CswStatus::Passed,
            },
            // Case 4, failure: stall the IN pipe so the host stops waiting.
            (HostPhase::In(h), Plan::NoData(Err(_))) => {
                State::StallIn(status(h, CswStatus::Failed))
            }
            // Cases 5, 6 and 7 (too much data: send what fits, phase error).
            (HostPhase::In(h), Plan::In(d)) => {
                let host_len = h as usize;
                State::DataIn {
                    tag,
                    host_len: h,
                    to_send: d.min(host_len),
                    sent: 0,
                    status: if d > host_len {
                        CswStatus::PhaseError
                    } else {
                        CswStatus::Passed
                    },
                }
            }
            // Case 10: the host waits for data the device wants to receive.
            (HostPhase::In(h), Plan::Out(_)) => State::StallIn(status(h, CswStatus::PhaseError)),
            // Case 9: accept and discard.
            (HostPhase::Out(h), Plan::NoData(r)) => discard(h, r.into()),
            // Case 8: the host sends while the device wants to send.
            (HostPhase::Out(h), Plan::In(_)) => discard(h, CswStatus::PhaseError),
            // Cases 11 and 12: take what the device wants, discard the rest.
            (HostPhase::Out(h), Plan::Out(d)) if d <= h as usize => State::DataOut {
                tag,
                host_len: h,
                received: 0,
                to_write: d,
                written: 0,
                status: CswStatus::Passed,
            },
            // Case 13: the host sends less than the command needs; writing
            // part of it would leave a half-done command behind.
            (HostPhase::Out(h), Plan::Out(_)) => discard(h, CswStatus::PhaseError),
        }
    }

    /// The next IN request of a data-in phase.
    fn send(&mut self, max_len: usize) -> InAnswer {
        let State::DataIn {
            tag,
            host_len,
            to_send,
            ref mut sent,
            status,
        } = self.state
        else {
            return InAnswer::Nak;
        };
        let csw = |sent: usize, status| Csw {
            tag,
            residue: residue(host_len, sent),
            status,
        };
        if *sent == to_send {
            // Everything went out in requests the host filled completely, yet
            // it expected more: a zero-length packet tells it the transfer
            // is over (what a real device's short packet would).
            let done = csw(*sent, status);
            self.state = State::Status(done);
            return InAnswer::Data(Vec::new());
        }
        let n = max_len.min(to_send - *sent);
        if n == 0 {
            return InAnswer::Data(Vec::new());
        }
        let mut buf = vec![0u8; n];
        match self.target.read(&mut buf) {
            Ok(()) => {
                *sent += n;
                // The transfer ends here unless the host filled its request
                // and is still owed bytes it will never get (then a
                // zero-length packet follows).
                if *sent == to_send && (to_send == host_len as usize || n < max_len) {
                    let done = csw(*sent, status);
                    self.state = State::Status(done);
                }
                InAnswer::Data(buf)
            }
            Err(CheckCondition) => {
                let failed = csw(*sent, CswStatus::Failed);
                self.state = State::Status(failed);
                InAnswer::Stall
            }
        }
    }

    /// One OUT request of a data-out phase.
    fn receive(&mut self, data: &[u8]) {
        let State::DataOut {
            tag,
            host_len,
            ref mut received,
            to_write,
            ref mut written,
            ref mut status,
        } = self.state
        else {
            return;
        };
        let room = host_len as usize - *received;
        let take = data.len().min(room);
        if *status == CswStatus::Passed && *received < to_write {
            let part = &data[..take.min(to_write - *received)];
            match self.target.write(part) {
                Ok(()) => *written += part.len(),
                Err(CheckCondition) => *status = CswStatus::Failed,
            }
        }
        *received += take;
        if data.len() > take {
            warn!(
                extra = data.len() - take,
                "mass storage: host sent more than its CBW announced"
            );
            *status = CswStatus::PhaseError;
        }
        if *received == host_len as usize || data.len() > take {
            let done = Csw {
                tag,
                residue: residue(host_len, *written),
                status: *status,
            };
            self.state = State::Status(done);
        }
    }

    #[cfg(test)]
    pub(crate) fn target(&self) -> &T {
        &self.target
    }
}

/// dCSWDataResidue: what the host announced minus what was transferred.
fn residue(host_len: u32, done: usize) -> u32 {
    let done = u32::try_from(done).unwrap_or(u32::MAX);
    host_len.saturating_sub(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target whose next plan and data the test sets.
    #[derive(Debug, Default)]
    struct Fake {
        plan: Option<Plan>,
        data: Vec<u8>,
        pos: usize,
        written: Vec<u8>,
        fail_after: Option<usize>,
        refused: usize,
        aborted: usize,
        started: usize,
    }

    impl Target for Fake {
        fn start(&mut self, _lun: u8, _cdb: &[u8]) -> Plan {
            self.started += 1;
            self.pos = 0;
            self.plan.expect("test set no plan")
        }
        fn read(&mut self, buf: &mut [u8]) -> Result<(), CheckCondition> {
            if self.fail_after.is_some_and(|f| self.pos + buf.len() > f) {
                return Err(CheckCondition);
            }
            buf.copy_from_slice(&self.data[self.pos..self.pos + buf.len()]);
            self.pos += buf.len();
            Ok(())
        }
        fn write(&mut self, data: &[u8]) -> Result<(), CheckCondition> {
            if self
                .fail_after
                .is_some_and(|f| self.written.len() + data.len() > f)
            {
                return Err(CheckCondition);
            }
            self.written.extend_from_slice(data);
            Ok(())
        }
        fn refuse(&mut self) {
            self.refused += 1;
        }
        fn abort(&mut self) {
            self.aborted += 1;
        }
    }

    fn bot(plan: Plan) -> BulkOnly<Fake> {
        BulkOnly::new(Fake {
            plan: Some(plan),
            data: (0..=255u8).cycle().take(4096).collect(),
            ..Fake::default()
        })
    }

    /// A CBW with tag 0x11223344 and a one-byte command block.
    fn cbw(len: u32, dir_in: bool) -> [u8; CBW_LEN] {
        let mut c = [0u8; CBW_LEN];
        c[0..4].copy_from_slice(b"USBC");
        c[4..8].copy_from_slice(&0x1122_3344u32.to_le_bytes());
        c[8..12].copy_from_slice(&len.to_le_bytes());
        c[12] = if dir_in { 0x80 } else { 0 };
        c[14] = 6;
        c
    }

    /// Reads the CSW and returns (residue, status).
    fn csw(b: &mut BulkOnly<Fake>) -> (u32, u8) {
        let InAnswer::Data(d) = b.data_in(CSW_LEN) else {
            panic!("no CSW")
        };
        assert_eq!(d.len(), CSW_LEN);
        assert_eq!(&d[0..4], b"USBS");
        assert_eq!(&d[4..8], &0x1122_3344u32.to_le_bytes());
        assert_eq!(b.data_in(CSW_LEN), InAnswer::Nak, "CSW sent twice");
        (u32::from_le_bytes([d[8], d[9], d[10], d[11]]), d[12])
    }

    fn data(a: InAnswer) -> Vec<u8> {
        match a {
            InAnswer::Data(d) => d,
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn case_1_no_data_either_side() {
        let mut b = bot(Plan::NoData(Ok(())));
        b.data_out(&cbw(0, false)).unwrap();
        assert_eq!(csw(&mut b), (0, 0));
        let mut b = bot(Plan::NoData(Err(CheckCondition)));
        b.data_out(&cbw(0, true)).unwrap();
        assert_eq!(csw(&mut b), (0, 1));
    }

    #[test]
    fn cases_2_and_3_device_wants_data_the_host_did_not_plan() {
        for plan in [Plan::In(36), Plan::Out(512)] {
            let mut b = bot(plan);
            b.data_out(&cbw(0, true)).unwrap();
            assert_eq!(csw(&mut b), (0, 2));
            assert!(b.target().written.is_empty());
        }
    }

    #[test]
    fn case_4_no_data_for_an_in_phase() {
        // Success: a zero-length packet, then the full residue.
        let mut b = bot(Plan::NoData(Ok(())));
        b.data_out(&cbw(64, true)).unwrap();
        assert_eq!(data(b.data_in(64)), Vec::<u8>::new());
        assert_eq!(csw(&mut b), (64, 0));
        // Failure: the IN pipe stalls, then the CSW says so.
        let mut b = bot(Plan::NoData(Err(CheckCondition)));
        b.data_out(&cbw(64, true)).unwrap();
        assert_eq!(b.data_in(64), InAnswer::Stall);
        assert_eq!(csw(&mut b), (64, 1));
    }

    #[test]
    fn case_5_short_data_in_ends_with_a_short_packet() {
        let mut b = bot(Plan::In(36));
        b.data_out(&cbw(96, true)).unwrap();
        assert_eq!(data(b.data_in(96)), b.target().data[..36].to_vec());
        assert_eq!(csw(&mut b), (60, 0));
    }

    #[test]
    fn case_5_data_ending_on_a_full_request_gets_a_zero_length_packet() {
        let mut b = bot(Plan::In(1024));
        b.data_out(&cbw(2048, true)).unwrap();
        assert_eq!(data(b.data_in(512)).len(), 512);
        assert_eq!(data(b.data_in(512)).len(), 512);
        assert_eq!(data(b.data_in(512)), Vec::<u8>::new());
        assert_eq!(csw(&mut b), (1024, 0));
    }

    #[test]
    fn case_6_data_in_over_requests_of_any_size() {
        let mut b = bot(Plan::In(4096));
        b.data_out(&cbw(4096, true)).unwrap();
        let mut got = Vec::new();
        for n in [1, 7, 500, 3000, 4096] {
            got.extend(data(b.data_in(n)));
        }
        assert_eq!(got, b.target().data);
        assert_eq!(csw(&mut b), (0, 0));
    }

    #[test]
    fn case_7_more_data_than_the_host_wants_is_a_phase_error() {
        let mut b = bot(Plan::In(1024));
        b.data_out(&cbw(512, true)).unwrap();
        assert_eq!(data(b.data_in(4096)).len(), 512);
        assert_eq!(csw(&mut b), (0, 2));
    }

    #[test]
    fn case_8_host_sends_while_device_wants_to_send() {
        let mut b = bot(Plan::In(36));
        b.data_out(&cbw(100, false)).unwrap();
        assert_eq!(b.data_in(13), InAnswer::Nak);
        b.data_out(&[0; 100]).unwrap();
        assert_eq!(csw(&mut b), (100, 2));
    }

    #[test]
    fn case_9_unexpected_out_data_is_discarded() {
        let mut b = bot(Plan::NoData(Ok(())));
        b.data_out(&cbw(100, false)).unwrap();
        b.data_out(&[0; 60]).unwrap();
        b.data_out(&[0; 40]).unwrap();
        assert_eq!(csw(&mut b), (100, 0));
        assert!(b.target().written.is_empty());
    }

    #[test]
    fn case_10_host_waits_for_data_the_device_wants_to_receive() {
        let mut b = bot(Plan::Out(512));
        b.data_out(&cbw(512, true)).unwrap();
        assert_eq!(b.data_in(512), InAnswer::Stall);
        assert_eq!(csw(&mut b), (512, 2));
    }

    #[test]
    fn case_11_surplus_out_data_is_discarded_and_reported() {
        let mut b = bot(Plan::Out(512));
        b.data_out(&cbw(1024, false)).unwrap();
        b.data_out(&[7; 700]).unwrap();
        b.data_out(&[8; 324]).unwrap();
        assert_eq!(csw(&mut b), (512, 0));
        assert_eq!(b.target().written, vec![7; 512]);
    }

    #[test]
    fn case_12_out_data_over_requests_of_any_size() {
        let mut b = bot(Plan::Out(1024));
        b.data_out(&cbw(1024, false)).unwrap();
        for (i, n) in [1usize, 510, 13, 500].into_iter().enumerate() {
            assert_eq!(b.data_in(13), InAnswer::Nak);
            b.data_out(&vec![i as u8; n]).unwrap();
        }
        assert_eq!(csw(&mut b), (0, 0));
        assert_eq!(b.target().written.len(), 1024);
        assert_eq!(b.target().written[1..511], [1; 510]);
    }

    #[test]
    fn case_13_too_little_out_data_writes_nothing() {
        let mut b = bot(Plan::Out(1024));
        b.data_out(&cbw(512, false)).unwrap();
        b.data_out(&[1; 512]).unwrap();
        assert_eq!(csw(&mut b), (512, 2));
        assert!(b.target().written.is_empty());
    }

    #[test]
    fn a_failing_read_stalls_mid_phase_with_the_residue() {
        let mut b = bot(Plan::In(2048));
        b.target.fail_after = Some(1024);
        b.data_out(&cbw(2048, true)).unwrap();
        assert_eq!(data(b.data_in(1024)).len(), 1024);
        assert_eq!(b.data_in(1024), InAnswer::Stall);
        assert_eq!(csw(&mut b), (1024, 1));
    }

    #[test]
    fn a_failing_write_discards_the_rest() {
        let mut b = bot(Plan::Out(2048));
        b.target.fail_after = Some(1024);
        b.data_out(&cbw(2048, false)).unwrap();
        b.data_out(&[1; 1024]).unwrap();
        b.data_out(&[2; 1024]).unwrap();
        assert_eq!(csw(&mut b), (1024, 1));
        assert_eq!(b.target().written, vec![1; 1024]);
    }

    #[test]
    fn excess_out_data_is_a_phase_error() {
        let mut b = bot(Plan::Out(512));
        b.data_out(&cbw(512, false)).unwrap();
        b.data_out(&[1; 600]).unwrap();
        assert_eq!(csw(&mut b), (0, 2));
        assert_eq!(b.target().written, vec![1; 512]);
    }

    #[test]
    fn oversized_transfer_is_refused_without_starting() {
        let mut b = bot(Plan::In(1));
        b.data_out(&cbw(MAX_DATA_TRANSFER_LEN + 1, true)).unwrap();
        assert_eq!(b.target().started, 0);
        assert_eq!(b.target().refused, 1);
        assert_eq!(b.data_in(512), InAnswer::Stall);
        assert_eq!(csw(&mut b), (MAX_DATA_TRANSFER_LEN + 1, 1));
    }

    #[test]
    fn not_meaningful_cbws_halt_both_pipes() {
        let mut bad = Vec::new();
        let mut c = cbw(0, false);
        c[12] = 0x01; // reserved flag bit
        bad.push(c);
        let mut c = cbw(0, false);
        c[13] = 0x10; // reserved LUN bits
        bad.push(c);
        for len in [0, 17, 0x26] {
            let mut c = cbw(0, false);
            c[14] = len;
            bad.push(c);
        }
        for c in bad {
            let mut b = bot(Plan::NoData(Ok(())));
            assert_eq!(b.data_out(&c), Err(OutStall));
            assert_eq!(b.data_in(13), InAnswer::Stall);
            assert_eq!(b.data_out(&cbw(0, false)), Err(OutStall));
            b.reset();
            b.data_out(&cbw(0, false)).unwrap();
            assert_eq!(csw(&mut b), (0, 0));
        }
    }

    #[test]
    fn a_cbw_before_the_csw_was_read_halts() {
        let mut b = bot(Plan::NoData(Ok(())));
        b.data_out(&cbw(0, false)).unwrap();
        assert_eq!(b.data_out(&cbw(0, false)), Err(OutStall));
        assert_eq!(b.data_in(13), InAnswer::Stall);
        assert_eq!(b.data_in(13), InAnswer::Stall);
    }

    #[test]
    fn csw_read_into_a_short_buffer_stalls_and_keeps_the_csw() {
        let mut b = bot(Plan::NoData(Ok(())));
        b.data_out(&cbw(0, false)).unwrap();
        assert_eq!(b.data_in(12), InAnswer::Stall);
        assert_eq!(csw(&mut b), (0, 0));
    }

    #[test]
    fn reset_mid_phase_returns_to_idle() {
        let mut b = bot(Plan::In(4096));
        b.data_out(&cbw(4096, true)).unwrap();
        let _ = b.data_in(100);
        b.reset();
        assert_eq!(b.target().aborted, 1);
        assert_eq!(b.data_in(512), InAnswer::Nak);
        b.data_out(&cbw(4096, true)).unwrap();
        assert_eq!(data(b.data_in(4096)), b.target().data);
    }
}
