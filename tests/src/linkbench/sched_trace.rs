//! What the HRH's CPU does in a round trip, event by event: with `vusb-linkbench --trace`
//! the HRH kernel's own tracer (ftrace) records, while each round-trip workload runs, every
//! task switch and wake-up, system call, user page fault, softirq, address-space load and
//! packet into the stack. Per round trip, the summary gives the CPU time of each task (and
//! of softirqs), the time the CPU idled, and how many of each event there were.
//!
//! Why: `profile` samples where the time goes, but not what the CPU had to switch between.
//! A kernel USB/IP server's threads borrow whatever address space is loaded; a server in
//! user space needs its own, and so does the HRH's echo program, so every hand-over between
//! them loads one (x86's `tlb_flush` event, reason "flush on task switch"). Under TCG each
//! load empties the emulated TLB, and what runs next pays to fill it again.
//!
//! Only the stretch from the workload's first packet in to its last is summed up: the
//! workload's own start and end (the echo program starting, its results read) fall outside.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::workloads::Workload;
use crate::remote::Remote;

/// The workloads traced: the round trips.
pub const TRACED: [Workload; 3] = [
    Workload::SerialSlow,
    Workload::SerialBackToBack,
    Workload::HidPing,
];

const TRACEFS: &str = "/sys/kernel/tracing";

/// The events recorded (`events/<system>/<event>` under tracefs).
const EVENTS: [&str; 8] = [
    "sched/sched_switch",
    "sched/sched_wakeup",
    "raw_syscalls/sys_enter",
    "exceptions/page_fault_user",
    "tlb/tlb_flush",
    "irq/softirq_entry",
    "irq/softirq_exit",
    "net/netif_receive_skb",
];

/// The ring buffer, in KiB. A round trip takes a few hundred events, but dummy_hcd's timer
/// adds some 11,000 a second while a gadget has an URB queued: this holds about half a
/// minute of the HRH's events. Longer series lose their oldest events, and the summary
/// says how many.
const BUFFER_KIB: u32 = 32 * 1024;

/// Starts recording in `hrh`.
pub fn start(hrh: &mut Remote) -> Result<()> {
    let enable: String = EVENTS
        .iter()
        .map(|e| format!("echo 1 >{TRACEFS}/events/{e}/enable && "))
        .collect();
    hrh.check(
        &format!(
            "{{ [ -e {TRACEFS}/trace ] || mount -t tracefs nodev {TRACEFS}; }} && \
             echo 0 >{TRACEFS}/tracing_on && echo nop >{TRACEFS}/current_tracer && \
             echo 0 >{TRACEFS}/events/enable && echo {BUFFER_KIB} >{TRACEFS}/buffer_size_kb && \
             echo 1 >{TRACEFS}/options/record-tgid && echo >{TRACEFS}/trace && \
             {enable}echo 1 >{TRACEFS}/tracing_on"
        ),
        Duration::from_secs(60),
    )
    .context("starting the HRH's tracer")?;
    Ok(())
}

/// Stops recording in `hrh` and returns the trace's lines.
pub fn stop(hrh: &mut Remote) -> Result<Vec<String>> {
    hrh.check(
        &format!("echo 0 >{TRACEFS}/tracing_on"),
        Duration::from_secs(30),
    )?;
    // Mostly dummy_hcd's timer, several MB a second: the guest's serial line carries it
    // compressed.
    let out = hrh
        .check(
            &format!("cat {TRACEFS}/trace | gzip -1 | base64"),
            Duration::from_secs(600),
        )
        .context("reading the HRH's trace")?;
    // The buffer goes back to the kernel's default size: its memory is the HRH's.
    hrh.check(
        &format!(
            "echo 0 >{TRACEFS}/events/enable && echo >{TRACEFS}/trace && \
             echo 1408 >{TRACEFS}/buffer_size_kb"
        ),
        Duration::from_secs(60),
    )?;
    let text = unpack(&out.lines).context("unpacking the HRH's trace")?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// The text behind `base64` lines of a gzip stream.
fn unpack(lines: &[String]) -> Result<String> {
    use base64::Engine as _;
    use std::io::Read as _;
    let packed = base64::engine::general_purpose::STANDARD.decode(lines.concat().trim())?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&packed[..]).read_to_string(&mut text)?;
    Ok(text)
}

/// Where a workload's trace is written in the output folder.
pub fn trace_path(out: &Path, link: Option<&str>, path: &str, workload: Workload) -> PathBuf {
    out.join("traces").join(format!(
        "{}-{path}-{}.txt",
        link.unwrap_or("local"),
        workload.name()
    ))
}

/// One line of the trace.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    /// The task the event happened in (the one switched away from, for a switch).
    task: Task,
    cpu: u32,
    /// Seconds, on the HRH's clock.
    time: f64,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
struct Task {
    comm: String,
    pid: u32,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Switch {
        next: Task,
    },
    Wakeup,
    Syscall,
    PageFault,
    /// An address space loaded at a task switch.
    MmLoad,
    /// Any other TLB flush.
    TlbFlush,
    /// A softirq starting, with its action (`NET_RX`, `HRTIMER`, ...).
    SoftirqEntry(String),
    SoftirqExit,
    PacketIn,
    Other,
}

/// Parses a line of ftrace's text output (`TASK-PID (TGID) [CPU] FLAGS TIME: EVENT: ...`);
/// `None` for comments and lines that are not events.
fn parse_line(line: &str) -> Option<Event> {
    if line.trim_start().starts_with('#') {
        return None;
    }
    // The task's name may hold spaces and dashes; the CPU in brackets comes after it.
    let open = line
        .find(") [")
        .map(|i| i + 2)
        .or_else(|| line.find(" [").map(|i| i + 1))?;
    let close = open + line[open..].find(']')?;
    let cpu = line[open + 1..close].trim().parse().ok()?;
    let head = line[..open].trim_end();
    let head = match head.rfind(" (") {
        Some(i) if head.ends_with(')') => head[..i].trim_end(),
        _ => head,
    };
    let (comm, pid) = head.trim_start().rsplit_once('-')?;
    let task = Task {
        comm: comm.to_owned(),
        pid: pid.parse().ok()?,
    };
    let rest = &line[close + 1..];
    let (stamp, rest) = rest.split_once(": ")?;
    let time = stamp.split_whitespace().last()?.parse().ok()?;
    let (name, fields) = rest
        .split_once(": ")
        .unwrap_or((rest.trim_end_matches(':'), ""));
    let kind = match name.trim() {
        "sched_switch" => {
            let next = fields.split_once("==> ")?.1;
            Kind::Switch {
                next: Task {
                    comm: field(next, "next_comm")?.to_owned(),
                    pid: field(next, "next_pid")?.parse().ok()?,
                },
            }
        }
        "sched_wakeup" => Kind::Wakeup,
        "sys_enter" => Kind::Syscall,
        "page_fault_user" => Kind::PageFault,
        "tlb_flush" if fields.contains("task switch") => Kind::MmLoad,
        "tlb_flush" => Kind::TlbFlush,
        "softirq_entry" => Kind::SoftirqEntry(
            fields
                .split_once("action=")
                .map_or("?", |(_, a)| a.trim_end_matches(']'))
                .to_owned(),
        ),
        "softirq_exit" => Kind::SoftirqExit,
        "netif_receive_skb" => Kind::PacketIn,
        _ => Kind::Other,
    };
    Some(Event {
        task,
        cpu,
        time,
        kind,
    })
}

/// The value of `key=value` in an event's fields. A task's name may hold spaces, so a
/// value runs to the next ` key=`.
fn field<'a>(fields: &'a str, key: &str) -> Option<&'a str> {
    let start = fields.find(&format!("{key}="))? + key.len() + 1;
    let rest = &fields[start..];
    let end = rest
        .match_indices(' ')
        .find(|(i, _)| {
            let word = rest[i + 1..].split(' ').next().unwrap_or("");
            word.contains('=') || word == "==>"
        })
        .map_or(rest.len(), |(i, _)| i);
    Some(&rest[..end])
}

/// Who a stretch of CPU time is charged to: the task by its name, with a kernel thread's
/// CPU number or instance dropped (`kworker/0:1` is `kworker`), the idle task as `idle`.
/// Softirqs, whichever task they interrupt, are charged as `softirq ACTION`.
fn who(task: &Task) -> String {
    if task.pid == 0 {
        return "idle".into();
    }
    match task.comm.split_once('/') {
        Some((base, _)) => base.to_owned(),
        None => task.comm.clone(),
    }
}

/// Counts per round trip of one kind of event.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Counts {
    pub switches: f64,
    /// Address spaces loaded at task switches (each one empties TCG's TLB).
    pub mm_loads: f64,
    pub other_tlb_flushes: f64,
    pub wakeups: f64,
    pub softirqs: f64,
    pub packets_in: f64,
    /// System calls, by who made them.
    pub syscalls: BTreeMap<String, f64>,
    /// User page faults, by who took them.
    pub page_faults: BTreeMap<String, f64>,
}

/// One workload's trace, per round trip.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub round_trips: u32,
    /// Seconds from the first packet in to the last.
    pub seconds: f64,
    /// Events the ring buffer could not keep (the counts are then too low).
    pub lost_events: u64,
    /// CPU time per round trip in µs, by who (see [`who`]), idle included.
    pub cpu_us: BTreeMap<String, f64>,
    pub counts: Counts,
}

impl Summary {
    /// Sums up `lines` (ftrace's output) from the first packet in to the last, per round
    /// trip.
    pub fn of(lines: &[String], round_trips: u32) -> Result<Self> {
        if round_trips == 0 {
            bail!("no round trips to share the trace out over");
        }
        let events: Vec<Event> = lines.iter().filter_map(|l| parse_line(l)).collect();
        let mut packets = events.iter().filter(|e| e.kind == Kind::PacketIn);
        let Some(first) = packets.next() else {
            bail!("the trace holds no packets in ({} events)", events.len());
        };
        let (from, to) = (first.time, packets.next_back().unwrap_or(first).time);
        let n = f64::from(round_trips);
        let mut summary = Summary {
            round_trips,
            seconds: to - from,
            lost_events: lost(lines),
            ..Self::default()
        };
        for s in charge(&events) {
            let clipped = s.to.min(to) - s.from.max(from);
            if clipped > 0.0 {
                *summary.cpu_us.entry(s.who).or_default() += clipped * 1e6 / n;
            }
        }
        let c = &mut summary.counts;
        let per = 1.0 / n;
        for e in events.iter().filter(|e| e.time >= from && e.time <= to) {
            match &e.kind {
                Kind::Switch { .. } => c.switches += per,
                Kind::MmLoad => c.mm_loads += per,
                Kind::TlbFlush => c.other_tlb_flushes += per,
                Kind::Wakeup => c.wakeups += per,
                Kind::SoftirqEntry(_) => c.softirqs += per,
                Kind::PacketIn => c.packets_in += per,
                Kind::Syscall => *c.syscalls.entry(who(&e.task)).or_default() += per,
                Kind::PageFault => *c.page_faults.entry(who(&e.task)).or_default() += per,
                Kind::SoftirqExit | Kind::Other => {}
            }
        }
        Ok(summary)
    }
}

impl Summary {
    /// The `n` tasks with the most CPU per round trip, idle left out: `name µs, …`.
    pub fn busiest(&self, n: usize) -> String {
        let mut busy: Vec<(&String, &f64)> = self
            .cpu_us
            .iter()
            .filter(|(who, _)| *who != "idle")
            .collect();
        busy.sort_by(|a, b| b.1.total_cmp(a.1));
        busy.iter()
            .take(n)
            .map(|(who, us)| format!("{who} {us:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What ftrace's header says it dropped: `entries-in-buffer/entries-written: A/B`.
fn lost(lines: &[String]) -> u64 {
    lines
        .iter()
        .find_map(|l| l.split_once("entries-in-buffer/entries-written:"))
        .and_then(|(_, rest)| {
            let (kept, written) = rest.split_whitespace().next()?.split_once('/')?;
            Some(
                written
                    .parse::<u64>()
                    .ok()?
                    .saturating_sub(kept.parse().ok()?),
            )
        })
        .unwrap_or(0)
}

/// A stretch of one CPU's time and who had it.
#[derive(Debug, Clone, PartialEq)]
struct Stretch {
    cpu: u32,
    who: String,
    from: f64,
    to: f64,
}

/// Who had each CPU between consecutive events: the task an event names runs until it
/// switches away; between a softirq's entry and exit the time is the softirq's.
fn charge(events: &[Event]) -> Vec<Stretch> {
    struct Cpu {
        since: f64,
        task: Task,
        softirq: Option<String>,
    }
    let mut cpus: BTreeMap<u32, Cpu> = BTreeMap::new();
    let mut stretches: Vec<Stretch> = Vec::new();
    for e in events {
        let cpu = cpus.entry(e.cpu).or_insert_with(|| Cpu {
            since: e.time,
            task: e.task.clone(),
            softirq: None,
        });
        let holder = match &cpu.softirq {
            Some(action) => format!("softirq {action}"),
            None => who(&e.task),
        };
        if e.time > cpu.since {
            match stretches.last_mut() {
                Some(s) if s.cpu == e.cpu && s.who == holder && s.to == cpu.since => s.to = e.time,
                _ => stretches.push(Stretch {
                    cpu: e.cpu,
                    who: holder,
                    from: cpu.since,
                    to: e.time,
                }),
            }
        }
        cpu.since = e.time;
        cpu.task = e.task.clone();
        match &e.kind {
            Kind::Switch { next } => cpu.task = next.clone(),
            Kind::SoftirqEntry(action) => cpu.softirq = Some(action.clone()),
            Kind::SoftirqExit => cpu.softirq = None,
            _ => {}
        }
    }
    stretches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    const SAMPLE: &str = "\
# tracer: nop
#
# entries-in-buffer/entries-written: 15/18   #P:1
#
#           TASK-PID     TGID     CPU#  |||||  TIMESTAMP  FUNCTION
              sh-100     (    100) [000] .....    99.990000: sys_enter: NR 1 (1, 7f, 2, 0, 0, 0)
              sh-100     (    100) [000] d..2.    99.990010: sched_switch: prev_comm=sh prev_pid=100 prev_prio=120 prev_state=S ==> next_comm=swapper/0 next_pid=0 next_prio=120
          <idle>-0       (-------) [000] ..s1.   100.000000: softirq_entry: vec=3 [action=NET_RX]
          <idle>-0       (-------) [000] ..s1.   100.000010: netif_receive_skb: dev=eth0 skbaddr=00000000abcd len=100
          <idle>-0       (-------) [000] dNs3.   100.000020: sched_wakeup: comm=hrh-exporter pid=230 prio=120 target_cpu=000
          <idle>-0       (-------) [000] ..s1.   100.000030: softirq_exit: vec=3 [action=NET_RX]
          <idle>-0       (-------) [000] d..2.   100.000040: sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=hrh-exporter next_pid=230 next_prio=120
          <idle>-0       (-------) [000] d..2.   100.000040: tlb_flush: pages:-1 reason:flush on task switch (0)
    hrh-exporter-230     (    230) [000] .....   100.000100: sys_enter: NR 45 (5, 7f, 10000, 0, 0, 0)
    hrh-exporter-230     (    230) [000] .....   100.000200: page_fault_user: address=0x7f00 ip=0x5500 error_code=0x6
    hrh-exporter-230     (    230) [000] d..2.   100.000300: sched_switch: prev_comm=hrh-exporter prev_pid=230 prev_prio=120 prev_state=S ==> next_comm=reap 3-1 next_pid=231 next_prio=120
       reap 3-1-231      (    230) [000] .....   100.000400: sys_enter: NR 16 (6, 0, 0, 0, 0, 0)
       reap 3-1-231      (    230) [000] d..2.   100.000500: sched_switch: prev_comm=reap 3-1 prev_pid=231 prev_prio=120 prev_state=S ==> next_comm=swapper/0 next_pid=0 next_prio=120
          <idle>-0       (-------) [000] ..s1.   100.001000: softirq_entry: vec=8 [action=HRTIMER]
          <idle>-0       (-------) [000] ..s1.   100.001030: softirq_exit: vec=8 [action=HRTIMER]
          <idle>-0       (-------) [000] ..s1.   100.002000: softirq_entry: vec=3 [action=NET_RX]
          <idle>-0       (-------) [000] ..s1.   100.002010: netif_receive_skb: dev=eth0 skbaddr=00000000abce len=52
          <idle>-0       (-------) [000] ..s1.   100.002020: softirq_exit: vec=3 [action=NET_RX]
          <idle>-0       (-------) [000] d..2.   100.050000: sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=kworker/0:1 next_pid=12 next_prio=120
";

    #[test]
    fn a_line_names_its_task_cpu_time_and_event() {
        let e = parse_line(
            "       reap 3-1-231      (    230) [000] d..2.   100.000500: sched_switch: \
             prev_comm=reap 3-1 prev_pid=231 prev_prio=120 prev_state=S ==> \
             next_comm=swapper/0 next_pid=0 next_prio=120",
        )
        .unwrap();
        assert_eq!(e.task.comm, "reap 3-1");
        assert_eq!(e.task.pid, 231);
        assert_eq!(e.cpu, 0);
        assert!((e.time - 100.0005).abs() < 1e-9);
        assert_eq!(
            e.kind,
            Kind::Switch {
                next: Task {
                    comm: "swapper/0".into(),
                    pid: 0
                }
            }
        );
        assert_eq!(parse_line("# tracer: nop"), None);
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn a_line_without_tgids_parses_too() {
        let e = parse_line(
            "    hrh-exporter-230   [000] .....   100.000100: sys_enter: NR 45 (5, 7f, 0, 0, 0, 0)",
        )
        .unwrap();
        assert_eq!((e.task.comm.as_str(), e.task.pid), ("hrh-exporter", 230));
        assert_eq!(e.kind, Kind::Syscall);
    }

    #[test]
    fn time_between_the_first_and_last_packet_goes_to_whoever_ran() {
        let s = Summary::of(&lines(SAMPLE), 1).unwrap();
        let cpu = |who: &str| s.cpu_us.get(who).copied().unwrap_or(0.0);
        let near = |a: f64, b: f64| (a - b).abs() < 0.01;
        assert!(near(s.seconds * 1e6, 2000.0), "{}", s.seconds);
        assert!(near(cpu("softirq NET_RX"), 30.0), "{:?}", s.cpu_us);
        assert!(near(cpu("softirq HRTIMER"), 30.0), "{:?}", s.cpu_us);
        assert!(near(cpu("hrh-exporter"), 260.0), "{:?}", s.cpu_us);
        assert!(near(cpu("reap 3-1"), 200.0), "{:?}", s.cpu_us);
        assert!(near(cpu("idle"), 1480.0), "{:?}", s.cpu_us);
        // The shell before the first packet and the kworker after the last are not counted.
        assert_eq!(cpu("sh") + cpu("kworker"), 0.0, "{:?}", s.cpu_us);
        assert!(!s.counts.syscalls.contains_key("sh"));
        assert_eq!(s.counts.switches, 3.0);
        assert_eq!(s.counts.mm_loads, 1.0);
        assert_eq!(s.counts.softirqs, 2.0);
        assert_eq!(s.counts.packets_in, 2.0);
        assert_eq!(s.counts.syscalls["hrh-exporter"], 1.0);
        assert_eq!(s.counts.syscalls["reap 3-1"], 1.0);
        assert_eq!(s.counts.page_faults["hrh-exporter"], 1.0);
        assert_eq!(s.lost_events, 3);
        assert_eq!(s.busiest(2), "hrh-exporter 260, reap 3-1 200");
    }

    #[test]
    fn counts_are_per_round_trip() {
        let s = Summary::of(&lines(SAMPLE), 2).unwrap();
        assert_eq!(s.counts.switches, 1.5);
        assert!((s.cpu_us["reap 3-1"] - 100.0).abs() < 0.01);
    }

    #[test]
    fn a_trace_comes_out_of_the_guest_packed() {
        use base64::Engine as _;
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(SAMPLE.as_bytes()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        // base64 wraps its lines at 76 characters.
        let wrapped: Vec<String> = b64
            .as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        assert!(wrapped.len() > 1);
        assert_eq!(unpack(&wrapped).unwrap(), SAMPLE);
        assert!(unpack(&["not base64!".to_owned()]).is_err());
    }

    #[test]
    fn a_trace_without_packets_is_an_error() {
        let e = Summary::of(&lines("# tracer: nop\n"), 1).unwrap_err();
        assert!(e.to_string().contains("no packets"), "{e}");
        assert!(Summary::of(&lines(SAMPLE), 0).is_err());
    }
}
