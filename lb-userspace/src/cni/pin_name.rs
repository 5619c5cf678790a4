//! The name of an attachment's pinned link: the spec's key for plugin
//! state, (network name, container id, interface name), in one bpffs file
//! name.
//!
//! bpffs refuses names with a dot, and container ids and interface names
//! may contain dots. So each part is percent-encoded (every byte outside
//! `A-Z a-z 0-9 _ -`) and the parts are joined with `:`, which the
//! encoding never produces: the name decodes back unambiguously (GC and
//! `lbctl links` read them back).

/// The three parts of the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentKey {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl AttachmentKey {
    pub fn new(network: &str, container_id: &str, ifname: &str) -> Self {
        Self { network: network.into(), container_id: container_id.into(), ifname: ifname.into() }
    }

    /// The pin file name.
    pub fn pin_name(&self) -> String {
        [&self.network, &self.container_id, &self.ifname].map(|p| encode(p)).join(":")
    }

    /// Reads a pin file name back; None if it is not one this module made.
    pub fn from_pin_name(name: &str) -> Option<Self> {
        let mut parts = name.split(':');
        let key = Self {
            network: decode(parts.next()?)?,
            container_id: decode(parts.next()?)?,
            ifname: decode(parts.next()?)?,
        };
        parts.next().is_none().then_some(key)
    }
}

fn encode(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for byte in part.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn decode(part: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(part.len());
    let mut rest = part.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_no_dots_and_read_back() {
        for key in [
            AttachmentKey::new("pods", "0123abcdef", "eth0"),
            AttachmentKey::new("k8s-pod.network", "a.b_c-d", "net1.100"),
            AttachmentKey::new("n%:x", "c", "é"),
        ] {
            let name = key.pin_name();
            assert!(!name.contains('.') && !name.contains('/'), "{name}");
            assert_eq!(AttachmentKey::from_pin_name(&name), Some(key), "{name}");
        }
        assert_eq!(AttachmentKey::new("pods", "c1", "eth0").pin_name(), "pods:c1:eth0");
        assert_eq!(AttachmentKey::new("a.b", "c", "d").pin_name(), "a%2Eb:c:d");
    }

    #[test]
    fn other_names_are_not_attachments() {
        for name in ["eth0", "a:b", "a:b:c:d", "a:%2:c", "a:%zz:c", "a:%FF:c"] {
            assert_eq!(AttachmentKey::from_pin_name(name), None, "{name}");
        }
    }
}
