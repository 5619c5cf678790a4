//! Scalar fields Services and EndpointSlices share: protocols, port
//! numbers, IP addresses. Errors are short phrases for a `Problem` message.

use std::net::{IpAddr, Ipv4Addr};

use crate::model::Protocol;

/// A port's `protocol`; Kubernetes defaults it to TCP and spells it in
/// upper case only.
pub(super) fn protocol(value: Option<&str>) -> Result<Protocol, String> {
    match value.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

/// A port number: 1..=65535 (0 is "unset" in the API, never a real port).
pub(super) fn port(value: i32) -> Result<u16, String> {
    u16::try_from(value).ok().filter(|p| *p != 0).ok_or_else(|| format!("port {value} out of range 1-65535"))
}

/// An IPv4 address; `what` names the field for the message. IPv6 is
/// valid Kubernetes input that the datapath cannot serve yet, so it gets
/// its own message.
pub(super) fn ipv4(value: &str, what: &str) -> Result<Ipv4Addr, String> {
    match value.parse::<IpAddr>() {
        Ok(IpAddr::V4(address)) => Ok(address),
        Ok(IpAddr::V6(_)) => Err(format!("{what} {value}: IPv6 not supported yet, skipped")),
        Err(_) => Err(format!("invalid {what} {value:?}, skipped")),
    }
}
