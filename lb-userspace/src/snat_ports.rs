//! The node's ephemeral port range against the datapath's SNAT ports
//! (`lb_common::conntrack::SNAT_PORT_SPANS`): a port the node's own
//! connections may pick must not be one SNAT hands out, or a reply to one
//! could be taken for the other's. Linux's default range
//! (32768–60999) sits between the two SNAT spans; a wider one is reported.

use lb_common::conntrack::SNAT_PORT_SPANS;

/// Where the kernel keeps the range, in the agent's network namespace.
pub const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The SNAT ports inside the node's ephemeral range `text` (the file's
/// contents: "low<whitespace>high"), as inclusive spans; empty when they
/// do not meet. `None`: unreadable text.
pub fn overlap(text: &str) -> Option<Vec<(u16, u16)>> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    let (low, high) = (fields.next()?.ok()?, fields.next()?.ok()?);
    Some(SNAT_PORT_SPANS.iter().map(|&(a, b)| (a.max(low), b.min(high))).filter(|(a, b)| a <= b).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_range_meets_no_snat_port() {
        assert_eq!(overlap("32768\t60999\n"), Some(vec![]));
    }

    #[test]
    fn a_wider_range_is_reported_span_by_span() {
        assert_eq!(overlap("1024 65535"), Some(vec![(1024, 32767), (61000, 65535)]));
        assert_eq!(overlap("30000 61500"), Some(vec![(30000, 32767), (61000, 61500)]));
    }

    #[test]
    fn unreadable_text_is_none() {
        assert_eq!(overlap(""), None);
        assert_eq!(overlap("low high"), None);
    }
}
