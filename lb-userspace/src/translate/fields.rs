//! Scalar fields Services and EndpointSlices share: protocols, port
//! numbers, IP addresses. Errors are short phrases for a `Problem` message.

use std::net::IpAddr;

use crate::model::{IpFamily, Protocol};

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

/// An IP address of either family; `what` names the field for the message.
/// Which family is served is the caller's choice: a Service's addresses of
/// the other family are valid input for the other family's table.
pub(super) fn address(value: &str, what: &str) -> Result<IpAddr, String> {
    value.parse().map_err(|_| format!("invalid {what} {value:?}, skipped"))
}

/// An IP address that must be of `family`, as the endpoint addresses of a
/// slice must match its `addressType`.
pub(super) fn address_of(family: IpFamily, value: &str, what: &str) -> Result<IpAddr, String> {
    let address = address(value, what)?;
    if IpFamily::of(address) == family {
        Ok(address)
    } else {
        Err(format!("{what} {value} is not {}, skipped", family.as_str()))
    }
}
