//! Emulated links between the home and the ISP, for benchmarks that compare USB tunnelling
//! paths over them.
//!
//! The HRH guest shapes its own network interface, which every tunnel crosses both ways:
//! outgoing packets wait in a netem qdisc at the root of `eth0`; incoming ones are handed by
//! `eth0`'s ingress qdisc (a matchall filter with a mirred action) to the ifb device `ifb0`,
//! whose root is a second netem. Each direction gets half the round-trip time, the full rate,
//! half the jitter and half the loss ([`Link::netem`]).
//!
//! | profile | rate | RTT | jitter | loss | the paper's setup |
//! |---|---|---|---|---|---|
//! | [`LAN`] `lan` | 100 Mbit/s | 0.5 ms | — | — | "same network", 100BASE-TX |
//! | [`METRO`] `metro` | 50 Mbit/s | 10 ms | ±4 ms | — | Madrid–Alcalá, ~30 km, residential HFC |
//! | [`LONG_HAUL`] `long-haul` | 20 Mbit/s | 25 ms | ±10 ms | 0.1 % | Madrid–Galicia, ~500 km, library WiFi |
//!
//! Where the numbers come from (the HRH paper's Tables I and II, and the figures the benchmark
//! was specified with; `docs/link-profiles.md` has the long form):
//!
//! - Rates are the access links the paper names: 100BASE-TX; Alcalá's HFC line, written
//!   "50 MB/s" and read as the 50 Mbit/s residential offer; for Galicia a fifth of the
//!   library's 100 Mbit/s HFC line, shared by its WiFi users. The same rate both ways.
//! - RTT: Table II's Bluetooth ping-pong takes at least 18.1 ms locally and 33.5 ms across
//!   Madrid–Alcalá, so the network adds at most 15.4 ms to the fastest round trip; `metro`
//!   takes 10 ms. The paper has no RTT for Galicia; its tunnelled throughput there (Table I,
//!   0.4/0.5 MB/s write/read) is about half Alcalá's (0.9/1.0 MB/s), both far below the access
//!   rates and so bound by round trips, which makes its RTT 2–2.25 × Alcalá's; `long-haul`
//!   takes 25 ms, the benchmark's figure. Table II sees no difference between local and same
//!   network; a switched LAN's round trip is well under a millisecond: 0.5 ms.
//! - Jitter: Alcalá's spread in Table II (std. dev. 43.5 ms against 6.9 ms locally, max 1.7 s)
//!   comes from a tail of rare long stalls that netem's jitter does not model; the profiles keep
//!   a moderate spread, wider on WiFi.
//! - Loss: none on the wired paths, 0.1 % of round trips on the shared WiFi.
//!
//! netem works on the packets the kernel hands it: with segmentation offloads (TSO/GSO out,
//! GRO in) one of them can stand for several wire frames, which its loss and queue limit then
//! count as one.

/// iproute2's tc. Busybox has a tc applet without netem, and the test guests' busybox sh runs
/// its applets ahead of anything on PATH, so the scripts call tc by the path iproute2 installs
/// it at (on Debian, and in the test initramfs).
pub const TC: &str = "/sbin/tc";

/// The ifb device the incoming direction is shaped on (`modprobe ifb numifbs=1` creates it).
pub const IFB: &str = "ifb0";

/// How long a full queue takes to drain at the link's rate. netem's own default (1000 packets)
/// would let a bulk transfer queue 0.6 s at 20 Mbit/s and hold every other packet back as
/// long; 50 ms is a modest modem buffer.
const QUEUE_MS: f64 = 50.0;

/// The largest frame netem sees on a 1500-byte-MTU Ethernet link (the FCS is not counted).
const FRAME_BYTES: f64 = 1514.0;

/// A link between the HRH and the ISP, the same both ways.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Link {
    /// `lan`, `metro` or `long-haul`: for command lines and reports.
    pub name: &'static str,
    /// The rate in each direction, counting Ethernet frames from their header to the end of
    /// the payload, as netem does.
    pub rate_mbit: u32,
    /// The round-trip time the link adds; half of it each way.
    pub rtt_ms: f64,
    /// How far a round trip strays from `rtt_ms` at most: each direction adds a delay drawn
    /// uniformly from ±`jitter_ms`/2 (netem's jitter without a distribution table).
    pub jitter_ms: f64,
    /// The share of round trips that lose a packet: each direction drops `loss_percent`/2 of
    /// its packets at random (for 0.1 %, round trips then lose 0.099975 %).
    pub loss_percent: f64,
    /// What the link stands for.
    pub about: &'static str,
}

/// The paper's "same network": HRH and ISP on one 100BASE-TX Ethernet.
pub const LAN: Link = Link {
    name: "lan",
    rate_mbit: 100,
    rtt_ms: 0.5,
    jitter_ms: 0.0,
    loss_percent: 0.0,
    about: "same network: one switched 100BASE-TX Ethernet",
};

/// The paper's Madrid–Alcalá: about 30 km, the ISP side on a residential 50 Mbit/s HFC line.
pub const METRO: Link = Link {
    name: "metro",
    rate_mbit: 50,
    rtt_ms: 10.0,
    jitter_ms: 4.0,
    loss_percent: 0.0,
    about: "Madrid-Alcala: ~30 km, residential 50 Mbit/s HFC",
};

/// The paper's Madrid–Galicia: about 500 km, the ISP side on a public library's WiFi, on a
/// 100 Mbit/s HFC line its users share.
pub const LONG_HAUL: Link = Link {
    name: "long-haul",
    rate_mbit: 20,
    rtt_ms: 25.0,
    jitter_ms: 10.0,
    loss_percent: 0.1,
    about: "Madrid-Galicia: ~500 km, shared library WiFi on 100 Mbit/s HFC",
};

/// Every profile, fastest first.
pub const LINKS: [Link; 3] = [LAN, METRO, LONG_HAUL];

/// The profile called `name`.
pub fn by_name(name: &str) -> Option<Link> {
    LINKS.into_iter().find(|link| link.name == name)
}

/// What one netem qdisc does: the settings each direction of a [`Link`] gets, or what
/// `tc qdisc show` reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Netem {
    pub delay_us: f64,
    pub jitter_us: f64,
    pub rate_bit: f64,
    pub loss_percent: f64,
    /// Packets the qdisc holds, those in its delay line included.
    pub limit: u32,
}

impl Link {
    /// The settings of each direction's netem qdisc.
    pub fn netem(&self) -> Netem {
        let rate_bit = f64::from(self.rate_mbit) * 1e6;
        let delay_us = self.rtt_ms * 1000.0 / 2.0;
        let jitter_us = self.jitter_ms * 1000.0 / 2.0;
        // The packets a direction holds at its rate over the longest delay, and a queue of
        // QUEUE_MS behind them.
        let held_s = (delay_us + jitter_us) / 1e6 + QUEUE_MS / 1000.0;
        let limit = (rate_bit * held_s / (FRAME_BYTES * 8.0)).ceil() as u32;
        Netem {
            delay_us: delay_us.round(),
            jitter_us: jitter_us.round(),
            rate_bit,
            loss_percent: self.loss_percent / 2.0,
            limit,
        }
    }
}

impl Netem {
    /// tc's arguments for it (after `netem`).
    ///
    /// netem draws each packet's delay on its own, so jitter alone lets a packet overtake one
    /// queued before it: with 5 ms ± 2 ms, packets less than 4 ms apart may swap. Real paths
    /// rarely reorder, and TCP takes reordering for loss (duplicate ACKs, retransmissions, a
    /// smaller window). With a rate, netem schedules each packet no earlier than the packet
    /// queued before it, plus its own time on the wire (the last queued packet is its time
    /// reference), so packets leave in the order they came. The jitter then spaces packets
    /// out without reordering them: an idle link's packets get delay ± jitter, while a
    /// burst's packets wait for the slowest one ahead of them. Every profile has a rate, so
    /// every direction has this property; the VM test checks it (no out-of-order segments
    /// reach the HRH's TCP). Every parameter is spelled out even when zero: `tc qdisc
    /// replace` on an existing netem keeps a setting it is not given (a previous profile's
    /// loss, say).
    pub fn args(&self) -> String {
        format!(
            "limit {} delay {}us {}us rate {}mbit loss {}%",
            self.limit,
            self.delay_us,
            self.jitter_us,
            self.rate_bit / 1e6,
            self.loss_percent
        )
    }

    /// Reads a netem qdisc line of `tc qdisc show`, e.g. `qdisc netem 1: root refcnt 2 limit
    /// 236 delay 5ms  2ms loss 0.05% rate 50Mbit`. Settings the line leaves out are zero.
    pub fn parse(line: &str) -> Option<Netem> {
        let mut words = line.split_whitespace().peekable();
        if words.next()? != "qdisc" || words.next()? != "netem" {
            return None;
        }
        let mut netem = Netem {
            delay_us: 0.0,
            jitter_us: 0.0,
            rate_bit: 0.0,
            loss_percent: 0.0,
            limit: 0,
        };
        while let Some(word) = words.next() {
            match word {
                "limit" => netem.limit = words.next()?.parse().ok()?,
                "delay" => {
                    netem.delay_us = parse_time_us(words.next()?)?;
                    if let Some(jitter) = words.peek().and_then(|w| parse_time_us(w)) {
                        netem.jitter_us = jitter;
                        words.next();
                    }
                }
                "loss" => {
                    let value = words.next()?;
                    // `loss random P%` is shown as `loss P%`; other loss models are not ours.
                    netem.loss_percent = value.strip_suffix('%')?.parse().ok()?;
                }
                "rate" => netem.rate_bit = parse_rate_bit(words.next()?)?,
                _ => {}
            }
        }
        Some(netem)
    }

    /// Whether `shown` (from [`Self::parse`]) is these settings, allowing for tc printing
    /// times and percentages to three significant digits.
    pub fn matches(&self, shown: &Netem) -> bool {
        let close = |a: f64, b: f64| (a - b).abs() <= a.abs().max(b.abs()) * 0.01;
        close(self.delay_us, shown.delay_us)
            && close(self.jitter_us, shown.jitter_us)
            && close(self.rate_bit, shown.rate_bit)
            && close(self.loss_percent, shown.loss_percent)
            && self.limit == shown.limit
    }
}

/// `250us`, `5ms`, `12.5ms`, `1s` as microseconds.
fn parse_time_us(word: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = word.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = word.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = word.strip_suffix("ns") {
        (n, 1e-3)
    } else if let Some(n) = word.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// `50Mbit`, `1500Kbit`, `64bit` as bits per second.
fn parse_rate_bit(word: &str) -> Option<f64> {
    let number = word.strip_suffix("bit")?;
    let (number, scale) = match number.chars().last()? {
        'K' | 'k' => (&number[..number.len() - 1], 1e3),
        'M' | 'm' => (&number[..number.len() - 1], 1e6),
        'G' | 'g' => (&number[..number.len() - 1], 1e9),
        _ => (number, 1.0),
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// The shell commands (busybox sh or any POSIX sh, with iproute2's tc at [`TC`]) that shape
/// `dev` like `link` in both directions, as root. Running them again, with this or another
/// link, changes the settings in place.
pub fn shape_script(link: &Link, dev: &str) -> String {
    let netem = link.netem().args();
    format!(
        r#"# Link {name} ({about}) on {dev}, both ways: {rate} Mbit/s, RTT {rtt} ms +-{jitter} ms, loss {loss} %.
set -e
TC={TC}
# A kernel without /sbin/modprobe (the test guests) cannot load these on demand.
modprobe sch_netem
modprobe sch_ingress
modprobe cls_matchall
modprobe act_mirred
modprobe ifb numifbs=1
ip link set dev {IFB} up
$TC qdisc replace dev {IFB} root handle 1: netem {netem}
$TC qdisc replace dev {dev} root handle 1: netem {netem}
$TC qdisc replace dev {dev} handle ffff: ingress
# The redirect is the same for every link: added once, not stacked up on each run.
$TC filter show dev {dev} ingress | grep -q 'to device {IFB}' ||
    $TC filter add dev {dev} ingress matchall action mirred egress redirect dev {IFB}
"#,
        name = link.name,
        about = link.about,
        rate = link.rate_mbit,
        rtt = link.rtt_ms,
        jitter = link.jitter_ms,
        loss = link.loss_percent,
    )
}

/// The shell commands that take the shaping of [`shape_script`] off `dev` again; nothing
/// happens where there is none (tc refuses to delete a qdisc that is not there).
pub fn unshape_script(dev: &str) -> String {
    format!(
        r#"# No link shaping on {dev}.
set -e
TC={TC}
if $TC qdisc show dev {dev} | grep -q '^qdisc netem 1: root'; then
    $TC qdisc del dev {dev} root
fi
if $TC qdisc show dev {dev} | grep -q '^qdisc ingress ffff:'; then
    $TC qdisc del dev {dev} ingress
fi
if [ -e /sys/class/net/{IFB} ] && $TC qdisc show dev {IFB} | grep -q '^qdisc netem 1: root'; then
    $TC qdisc del dev {IFB} root
fi
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `script` that are not comments.
    fn commands(script: &str) -> Vec<&str> {
        script
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    }

    #[test]
    fn profiles_are_found_by_name() {
        for link in LINKS {
            assert_eq!(by_name(link.name), Some(link));
        }
        assert_eq!(by_name("long-haul"), Some(LONG_HAUL));
        assert_eq!(by_name("wan"), None);
    }

    #[test]
    fn profiles_get_slower_and_worse() {
        for pair in LINKS.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(a.rate_mbit > b.rate_mbit, "{a:?} {b:?}");
            assert!(a.rtt_ms < b.rtt_ms, "{a:?} {b:?}");
            assert!(a.jitter_ms <= b.jitter_ms, "{a:?} {b:?}");
            // A slower profile's fastest round trip is slower than a faster one's slowest.
            assert!(
                b.rtt_ms - b.jitter_ms > a.rtt_ms + a.jitter_ms,
                "{a:?} {b:?}"
            );
        }
        // A delay never goes below zero.
        for link in LINKS {
            assert!(link.jitter_ms < link.rtt_ms, "{link:?}");
        }
    }

    #[test]
    fn each_direction_gets_half_the_delay_jitter_and_loss_and_the_whole_rate() {
        assert_eq!(
            LAN.netem(),
            Netem {
                delay_us: 250.0,
                jitter_us: 0.0,
                rate_bit: 100e6,
                loss_percent: 0.0,
                // 100 Mbit/s over 50.25 ms, in 1514-byte frames.
                limit: 415,
            }
        );
        assert_eq!(
            METRO.netem(),
            Netem {
                delay_us: 5000.0,
                jitter_us: 2000.0,
                rate_bit: 50e6,
                loss_percent: 0.0,
                limit: 236,
            }
        );
        assert_eq!(
            LONG_HAUL.netem(),
            Netem {
                delay_us: 12500.0,
                jitter_us: 5000.0,
                rate_bit: 20e6,
                loss_percent: 0.05,
                limit: 112,
            }
        );
    }

    #[test]
    fn shape_script_per_profile() {
        let expected = [
            (LAN, "limit 415 delay 250us 0us rate 100mbit loss 0%"),
            (METRO, "limit 236 delay 5000us 2000us rate 50mbit loss 0%"),
            (
                LONG_HAUL,
                "limit 112 delay 12500us 5000us rate 20mbit loss 0.05%",
            ),
        ];
        for (link, netem) in expected {
            let script = shape_script(&link, "eth0");
            assert_eq!(
                commands(&script),
                [
                    "set -e",
                    "TC=/sbin/tc",
                    "modprobe sch_netem",
                    "modprobe sch_ingress",
                    "modprobe cls_matchall",
                    "modprobe act_mirred",
                    "modprobe ifb numifbs=1",
                    "ip link set dev ifb0 up",
                    &format!("$TC qdisc replace dev ifb0 root handle 1: netem {netem}"),
                    &format!("$TC qdisc replace dev eth0 root handle 1: netem {netem}"),
                    "$TC qdisc replace dev eth0 handle ffff: ingress",
                    "$TC filter show dev eth0 ingress | grep -q 'to device ifb0' ||",
                    "$TC filter add dev eth0 ingress matchall action mirred egress redirect dev ifb0",
                ],
                "{}",
                link.name
            );
            assert!(
                script.starts_with(&format!("# Link {} (", link.name)),
                "{script}"
            );
        }
    }

    #[test]
    fn shape_script_names_the_device() {
        let script = shape_script(&METRO, "enp1s0");
        assert!(script.contains("replace dev enp1s0 root handle 1: netem"));
        assert!(script.contains("replace dev enp1s0 handle ffff: ingress"));
        assert!(script.contains("filter add dev enp1s0 ingress matchall"));
        assert!(!script.contains("eth0"));
    }

    #[test]
    fn unshape_script_deletes_only_what_is_there() {
        let script = unshape_script("eth0");
        let commands = commands(&script);
        assert_eq!(commands[..2], ["set -e", "TC=/sbin/tc"]);
        for del in [
            "$TC qdisc del dev eth0 root",
            "$TC qdisc del dev eth0 ingress",
            "$TC qdisc del dev ifb0 root",
        ] {
            let at = commands.iter().position(|c| *c == del).expect(del);
            assert!(commands[at - 1].starts_with("if "), "{del} is not guarded");
        }
    }

    #[test]
    fn netem_lines_of_tc_are_read_back() {
        // As iproute2 6.1's tc prints them.
        let lan = "qdisc netem 1: root refcnt 2 limit 415 delay 250us rate 100Mbit";
        let metro = "qdisc netem 1: root refcnt 2 limit 236 delay 5ms  2ms rate 50Mbit";
        let long =
            "qdisc netem 1: root refcnt 2 limit 112 delay 12.5ms  5ms loss 0.05% rate 20Mbit";
        for (link, line) in [(LAN, lan), (METRO, metro), (LONG_HAUL, long)] {
            let shown = Netem::parse(line).expect(line);
            assert!(link.netem().matches(&shown), "{link:?} {shown:?}");
        }
        let shown = Netem::parse(metro).unwrap();
        assert!(!LAN.netem().matches(&shown));
        assert!(!LONG_HAUL.netem().matches(&shown));
        assert_eq!(
            Netem::parse("qdisc fq_codel 0: root refcnt 2 limit 10240p"),
            None
        );
        assert_eq!(
            Netem::parse("qdisc netem 1: root limit 7 delay 1s  1500ns rate 1500Kbit"),
            Some(Netem {
                delay_us: 1e6,
                jitter_us: 1.5,
                rate_bit: 1.5e6,
                loss_percent: 0.0,
                limit: 7
            })
        );
    }
}
