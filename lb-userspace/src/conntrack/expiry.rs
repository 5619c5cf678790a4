//! When a flow is over: its state, from the bits both of its entries
//! carry, picks a timeout; the flow expires once neither entry was used
//! for that long. Deciding on the flow, not the entry, keeps a one-way
//! stream alive: a UDP flow whose replies alone keep coming has an idle
//! original entry that must stay, or the next reply would go out
//! untranslated.

use std::time::Duration;

use lb_common::{
    conntrack::{FLAG_ESTABLISHED, FLAG_FIN, FLAG_RST},
    proto,
};

use super::flows::CtEntry;

/// kube-proxy sets the kernel's `nf_conntrack_tcp_timeout_established`
/// to this (`--conntrack-tcp-timeout-established`).
pub const TCP_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// A connection whose handshake never completed (SYN without answer, or
/// no packet after the SYN-ACK): the kernel's `SYN_RECV` timeout.
pub const TCP_SYN_TIMEOUT: Duration = Duration::from_secs(60);
/// After FIN both ways or an RST. Short, as Cilium's close timeout: a
/// client reusing the port sends a SYN, which is balanced afresh anyway;
/// the timeout only has to outlast the last ACK and retransmitted FINs.
pub const TCP_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// A UDP flow the backend never answered: the kernel's
/// `nf_conntrack_udp_timeout` (kube-proxy's `--conntrack-udp-timeout`
/// leaves it unset by default).
pub const UDP_TIMEOUT: Duration = Duration::from_secs(30);
/// A UDP flow the backend answered and still in use more than
/// `UDP_STREAM_AFTER_S` after it began: the kernel's
/// `nf_conntrack_udp_timeout_stream` (kube-proxy's
/// `--conntrack-udp-timeout-stream`). An exchange over sooner (a DNS
/// query and its answer) keeps `UDP_TIMEOUT`, as in the kernel, so a
/// source-NATed one gives its port back after 30 s, not 2 minutes.
pub const UDP_STREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// The kernel's "still active after two seconds": how long past its first
/// packet an answered UDP flow must be used to count as a stream. Whole
/// seconds of the conntrack clock, so more than 2 of them.
pub const UDP_STREAM_AFTER_S: u32 = 2;

/// Timeouts by flow state, in seconds of the conntrack clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_close: u32,
    pub udp: u32,
    pub udp_stream: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::from_durations(
            TCP_SYN_TIMEOUT,
            TCP_ESTABLISHED_TIMEOUT,
            TCP_CLOSE_TIMEOUT,
            UDP_TIMEOUT,
            UDP_STREAM_TIMEOUT,
        )
    }
}

impl Timeouts {
    /// Whole seconds (the clock's resolution), capped at `u32::MAX`.
    pub fn from_durations(
        syn: Duration,
        established: Duration,
        close: Duration,
        udp: Duration,
        stream: Duration,
    ) -> Self {
        let s = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        Self {
            tcp_syn: s(syn),
            tcp_established: s(established),
            tcp_close: s(close),
            udp: s(udp),
            udp_stream: s(stream),
        }
    }

    /// The shortest: an entry idle for less cannot belong to an expired flow.
    pub fn shortest(&self) -> u32 {
        [self.tcp_syn, self.tcp_established, self.tcp_close, self.udp, self.udp_stream].into_iter().min().unwrap_or(0)
    }

    fn of(&self, state: State) -> u32 {
        match state {
            State::Syn => self.tcp_syn,
            State::Established => self.tcp_established,
            State::Closing => self.tcp_close,
            State::Unreplied | State::Replied => self.udp,
            State::Stream => self.udp_stream,
        }
    }
}

/// A flow's state, as far as its timeout goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// TCP, the handshake not completed.
    Syn,
    /// TCP, open (also half-closed: FIN one way only).
    Established,
    /// TCP, FIN both ways or an RST.
    Closing,
    /// UDP, no answer from the backend yet.
    Unreplied,
    /// UDP, the backend answered, all within `UDP_STREAM_AFTER_S`.
    Replied,
    /// UDP, the backend answered, and the flow is used beyond that.
    Stream,
}

impl State {
    pub const ALL: [State; 6] =
        [State::Syn, State::Established, State::Closing, State::Unreplied, State::Replied, State::Stream];

    /// As `lbctl conntrack` shows it and as the metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            State::Syn => "syn",
            State::Established => "established",
            State::Closing => "closing",
            State::Unreplied => "unreplied",
            State::Replied => "replied",
            State::Stream => "stream",
        }
    }
}

/// The state of a flow of protocol `proto` from its entries (either may
/// be missing: an orphan is judged by the entry it has).
pub fn state<V: CtEntry>(proto: u8, original: Option<&V>, reply: Option<&V>) -> State {
    let bits = |entry: Option<&V>| entry.map_or(0, |e| e.flags());
    let (sent, answered) = (bits(original), bits(reply));
    if proto != proto::TCP {
        if answered & FLAG_ESTABLISHED == 0 {
            return State::Unreplied;
        }
        let entries = || original.into_iter().chain(reply);
        let began = entries().map(|e| e.created_s()).min().unwrap_or(0);
        let last = entries().map(|e| e.last_seen_s()).max().unwrap_or(0);
        return if last.saturating_sub(began) > UDP_STREAM_AFTER_S { State::Stream } else { State::Replied };
    }
    let both_fin = sent & answered & FLAG_FIN != 0;
    if (sent | answered) & FLAG_RST != 0 || both_fin {
        State::Closing
    } else if (sent | answered) & FLAG_ESTABLISHED != 0 {
        State::Established
    } else {
        State::Syn
    }
}

/// Seconds since either entry was last used (0 if one was used after `now_s`).
pub fn idle_s<V: CtEntry>(now_s: u32, original: Option<&V>, reply: Option<&V>) -> u32 {
    let last = original.iter().chain(reply.iter()).map(|e| e.last_seen_s()).max().unwrap_or(0);
    now_s.saturating_sub(last)
}

/// `Some(state)` when the flow is past its state's timeout: both its
/// entries may go.
pub fn expired<V: CtEntry>(
    proto: u8,
    original: Option<&V>,
    reply: Option<&V>,
    now_s: u32,
    timeouts: &Timeouts,
) -> Option<State> {
    let state = state(proto, original, reply);
    (idle_s(now_s, original, reply) > timeouts.of(state)).then_some(state)
}

#[cfg(test)]
mod tests {
    use lb_common::conntrack::CtValueV4;

    use super::*;

    const NOW: u32 = 100_000;

    fn entry(flags: u16, idle: u32) -> CtValueV4 {
        CtValueV4 { flags, last_seen_s: NOW - idle, created_s: NOW - idle, ..CtValueV4::default() }
    }

    fn tcp(original: CtValueV4, reply: CtValueV4) -> Option<State> {
        expired(proto::TCP, Some(&original), Some(&reply), NOW, &Timeouts::default())
    }

    #[test]
    fn an_unanswered_syn_expires_after_the_syn_timeout() {
        assert_eq!(tcp(entry(0, 61), entry(0, 61)), Some(State::Syn));
        assert_eq!(tcp(entry(0, 59), entry(0, 59)), None);
    }

    #[test]
    fn an_established_connection_lives_a_day_idle() {
        let day = 24 * 3600;
        assert_eq!(tcp(entry(FLAG_ESTABLISHED, day - 1), entry(FLAG_ESTABLISHED, day - 1)), None);
        assert_eq!(tcp(entry(FLAG_ESTABLISHED, day + 1), entry(FLAG_ESTABLISHED, day + 1)), Some(State::Established));
    }

    #[test]
    fn a_half_closed_connection_is_still_established() {
        let fin = FLAG_ESTABLISHED | FLAG_FIN;
        assert_eq!(state(proto::TCP, Some(&entry(fin, 0)), Some(&entry(FLAG_ESTABLISHED, 0))), State::Established);
        assert_eq!(tcp(entry(fin, 3600), entry(FLAG_ESTABLISHED, 5)), None, "data still flows the other way");
    }

    #[test]
    fn fin_both_ways_or_rst_closes_after_the_close_timeout() {
        let fin = FLAG_ESTABLISHED | FLAG_FIN;
        assert_eq!(tcp(entry(fin, 11), entry(fin, 11)), Some(State::Closing));
        assert_eq!(tcp(entry(fin, 9), entry(fin, 9)), None);
        let rst = FLAG_ESTABLISHED | FLAG_RST;
        assert_eq!(tcp(entry(rst, 11), entry(rst, 11)), Some(State::Closing));
    }

    #[test]
    fn an_entry_past_its_timeout_stays_while_its_partner_is_used() {
        // Replies keep coming, nothing is sent: a one-way stream.
        let udp = |original: CtValueV4, reply: CtValueV4| {
            expired(proto::UDP, Some(&original), Some(&reply), NOW, &Timeouts::default())
        };
        assert_eq!(udp(entry(0, 1000), entry(FLAG_ESTABLISHED, 1)), None);
        assert_eq!(udp(entry(0, 1000), entry(FLAG_ESTABLISHED, 121)), Some(State::Stream));
    }

    /// As the kernel's UDP tracking: unanswered or a quick exchange (a
    /// DNS query) 30 s; answered and still used after 2 s, 120 s.
    #[test]
    fn only_a_udp_flow_used_past_two_seconds_is_a_stream() {
        let udp = |original: CtValueV4, reply: CtValueV4| {
            expired(proto::UDP, Some(&original), Some(&reply), NOW, &Timeouts::default())
        };
        assert_eq!(udp(entry(0, 31), entry(0, 31)), Some(State::Unreplied));
        assert_eq!(udp(entry(0, 31), entry(FLAG_ESTABLISHED, 31)), Some(State::Replied), "a DNS-like exchange");
        assert_eq!(udp(entry(0, 29), entry(FLAG_ESTABLISHED, 29)), None);
        let began_long_ago = |flags, idle| CtValueV4 { created_s: NOW - 600, ..entry(flags, idle) };
        assert_eq!(udp(began_long_ago(0, 31), began_long_ago(FLAG_ESTABLISHED, 31)), None, "a stream lives on");
        assert_eq!(udp(began_long_ago(0, 121), began_long_ago(FLAG_ESTABLISHED, 121)), Some(State::Stream));
        // Three seconds of use, not two: the clock has whole seconds.
        let short = |flags| CtValueV4 { flags, created_s: NOW - 2, last_seen_s: NOW, ..CtValueV4::default() };
        assert_eq!(state(proto::UDP, Some(&short(0)), Some(&short(FLAG_ESTABLISHED))), State::Replied);
    }

    #[test]
    fn an_orphan_is_judged_by_its_own_entry() {
        let lone = entry(FLAG_ESTABLISHED, 11);
        assert_eq!(expired(proto::TCP, Some(&lone), None, NOW, &Timeouts::default()), None);
        let reset = entry(FLAG_RST, 11);
        assert_eq!(expired(proto::TCP, None, Some(&reset), NOW, &Timeouts::default()), Some(State::Closing));
    }

    #[test]
    fn an_entry_used_after_the_sweep_read_the_clock_is_not_idle() {
        assert_eq!(idle_s(NOW, Some(&entry(0, 0)), None), 0);
        let later = CtValueV4 { last_seen_s: NOW + 1, ..CtValueV4::default() };
        assert_eq!(idle_s(NOW, Some(&later), None), 0);
    }
}
