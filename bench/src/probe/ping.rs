//! The round-trip loop shared by `serial-ping` and `hid-ping`: send a
//! numbered message, wait for the same message to come back, time it.
//!
//! Every reply is matched by its sequence number, so an echo that comes
//! after its ping timed out is counted as late while the next ping waits,
//! never taken for the next ping's answer.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::sys;
use crate::stats::Summary;

/// What a link made of the bytes or reports that came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// An intact echo of the message with this sequence number.
    Echo(u32),
    /// This many bytes (serial) or reports (HID) that are no intact echo.
    Garbage(u64),
}

/// A connection to something that echoes messages.
pub trait EchoLink {
    /// Sends the message with sequence number `seq`.
    fn send(&mut self, seq: u32) -> io::Result<()>;
    /// The next reply that arrives before `deadline` (`None`: none did),
    /// with the time it was read.
    fn recv(&mut self, deadline: Instant) -> io::Result<Option<(Reply, Instant)>>;
}

#[derive(Debug, Clone, Copy)]
pub struct PingSpec {
    pub count: u32,
    /// From one send to the next; 0: back to back. A ping that takes
    /// longer delays the next one, which then goes at once.
    pub interval: Duration,
    /// How long a ping waits for its echo.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct PingResult {
    pub count: u32,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub sent: u32,
    /// Pings whose echo came back within the timeout: `rtt_us.len()`.
    pub received: u32,
    /// Pings whose echo did not come back within the timeout.
    pub timeouts: u32,
    /// Of those, the echoes that came later (while a later ping waited).
    pub late: u32,
    /// Of those, the echoes never seen: `timeouts - late`.
    pub lost: u32,
    /// Intact echoes of no ping being waited for or timed out: duplicates.
    pub unexpected: u32,
    /// Bytes (serial) or reports (HID) that were no intact echo.
    pub garbage: u64,
    /// Stale bytes or reports discarded before the first ping.
    pub drained: u64,
    /// From the first send to the last reply or timeout.
    pub duration_s: f64,
    /// Round-trip time of every answered ping, in ping order.
    pub rtt_us: Vec<f64>,
    /// `None` (null) when no ping was answered.
    pub rtt_stats_us: Option<Summary>,
}

impl PingResult {
    pub fn failure(&self) -> Option<String> {
        (self.received == 0 && self.count > 0).then(|| "no echo came back at all".to_string())
    }
}

/// Replies seen so far that were not the awaited echo.
#[derive(Debug, Default)]
struct Tally {
    timed_out: HashSet<u32>,
    late: u32,
    unexpected: u32,
    garbage: u64,
}

impl Tally {
    /// Reads replies until `deadline` or until the echo of `want` comes;
    /// returns when that was read.
    fn collect(
        &mut self,
        link: &mut impl EchoLink,
        deadline: Instant,
        want: Option<u32>,
    ) -> io::Result<Option<Instant>> {
        loop {
            let Some((reply, at)) = link.recv(deadline)? else {
                return Ok(None);
            };
            match reply {
                Reply::Echo(seq) if Some(seq) == want => return Ok(Some(at)),
                Reply::Echo(seq) if self.timed_out.remove(&seq) => self.late += 1,
                Reply::Echo(_) => self.unexpected += 1,
                Reply::Garbage(n) => self.garbage += n,
            }
        }
    }
}

/// Runs the pings; `drained` is passed through to the result.
pub fn ping(link: &mut impl EchoLink, spec: &PingSpec, drained: u64) -> io::Result<PingResult> {
    let mut tally = Tally::default();
    let mut rtts = Vec::with_capacity(spec.count as usize);
    let mut timeouts = 0;
    let started = Instant::now();
    let mut next_send = started;
    for seq in 0..spec.count {
        // Waiting for the next send is also listening: a late echo is
        // classified now, as late, rather than met later.
        tally.collect(link, next_send, None)?;
        let sent_at = Instant::now();
        link.send(seq)?;
        match tally.collect(link, sent_at + spec.timeout, Some(seq))? {
            Some(at) => rtts.push(at.saturating_duration_since(sent_at)),
            None => {
                timeouts += 1;
                tally.timed_out.insert(seq);
            }
        }
        next_send = sent_at + spec.interval;
    }
    let nanos: Vec<u64> = rtts.iter().map(|d| d.as_nanos() as u64).collect();
    Ok(PingResult {
        count: spec.count,
        interval_ms: spec.interval.as_millis() as u64,
        timeout_ms: spec.timeout.as_millis() as u64,
        sent: spec.count,
        received: rtts.len() as u32,
        timeouts,
        late: tally.late,
        lost: timeouts - tally.late,
        unexpected: tally.unexpected,
        garbage: tally.garbage,
        drained,
        duration_s: started.elapsed().as_secs_f64(),
        rtt_us: nanos.iter().map(|&ns| ns as f64 / 1e3).collect(),
        rtt_stats_us: Summary::from_nanos(&nanos),
    })
}

/// How stale input is counted while draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    /// One per read: a HID device hands out one report per read.
    Reads,
}

/// Reads and discards input until none has come for `quiet`, or for at
/// most `limit` in all: whatever a previous run or the device left behind.
pub fn drain(file: &mut File, quiet: Duration, limit: Duration, unit: Unit) -> io::Result<u64> {
    let end = Instant::now() + limit;
    let mut discarded = 0;
    let mut buf = [0; 4096];
    while sys::wait(file, libc::POLLIN, Some((Instant::now() + quiet).min(end)))? {
        match sys::try_read(file, &mut buf)? {
            Some(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Some(n) => {
                discarded += match unit {
                    Unit::Bytes => n as u64,
                    Unit::Reads => 1,
                }
            }
            None => {}
        }
        if Instant::now() >= end {
            break;
        }
    }
    Ok(discarded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A link whose replies are scripted per ping: what comes back after
    /// each send, and after how long.
    struct Scripted {
        script: VecDeque<Vec<(Reply, Duration)>>,
        queue: Vec<(Reply, Instant)>,
    }

    impl EchoLink for Scripted {
        fn send(&mut self, _seq: u32) -> io::Result<()> {
            let now = Instant::now();
            let next = self.script.pop_front().unwrap_or_default();
            self.queue
                .extend(next.into_iter().map(|(r, d)| (r, now + d)));
            self.queue.sort_by_key(|&(_, at)| at);
            Ok(())
        }

        fn recv(&mut self, deadline: Instant) -> io::Result<Option<(Reply, Instant)>> {
            match self.queue.first() {
                Some(&(reply, at)) if at <= deadline => {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    self.queue.remove(0);
                    Ok(Some((reply, Instant::now())))
                }
                _ => {
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    Ok(None)
                }
            }
        }
    }

    #[test]
    fn late_wrong_and_missing_echoes_are_told_apart() {
        let ms = Duration::from_millis;
        let mut link = Scripted {
            script: VecDeque::from(vec![
                vec![(Reply::Echo(0), ms(5))],
                // Garbage first, then the echo.
                vec![(Reply::Garbage(3), ms(1)), (Reply::Echo(1), ms(5))],
                // Lost.
                vec![],
                // Too late: comes while ping 4 waits.
                vec![(Reply::Echo(3), ms(120))],
                vec![(Reply::Echo(4), ms(30))],
                // A duplicate of 4 before the right answer.
                vec![(Reply::Echo(4), ms(1)), (Reply::Echo(5), ms(10))],
            ]),
            queue: Vec::new(),
        };
        let spec = PingSpec {
            count: 6,
            interval: Duration::ZERO,
            timeout: ms(100),
        };
        let r = ping(&mut link, &spec, 7).unwrap();
        assert_eq!((r.sent, r.received, r.timeouts), (6, 4, 2));
        assert_eq!((r.late, r.lost, r.unexpected, r.garbage), (1, 1, 1, 3));
        assert_eq!(r.drained, 7);
        assert_eq!(r.rtt_us.len(), 4);
        // Ping 4's echo came 30 ms after its send, not when 3's late one
        // arrived (20 ms in).
        assert!(r.rtt_us[2] >= 30_000.0, "{:?}", r.rtt_us);
        assert!(r.rtt_us.iter().all(|&us| us < 100_000.0));
        assert_eq!(r.rtt_stats_us.unwrap().count, 4);
        assert_eq!(r.failure(), None);
    }

    #[test]
    fn pings_keep_their_interval_and_nothing_back_fails() {
        let mut link = Scripted {
            script: VecDeque::new(),
            queue: Vec::new(),
        };
        let spec = PingSpec {
            count: 3,
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(10),
        };
        let r = ping(&mut link, &spec, 0).unwrap();
        assert_eq!((r.received, r.timeouts, r.lost), (0, 3, 3));
        assert!(r.rtt_stats_us.is_none());
        // Two full intervals and the last timeout.
        assert!(r.duration_s >= 0.11, "{}", r.duration_s);
        assert!(r.failure().is_some());
    }
}
