//! The CNI protocol as the plugin sees it (CNI spec 1.1.0, section 2 and 5):
//! which command, its environment, the configuration on stdin, the
//! versions spoken and the error result. Pure: the environment comes in as
//! a lookup function, so every rule is unit-tested.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::datapath::loader::DEFAULT_PIN_DIR;

/// Spec versions this plugin speaks. From 0.4.0 on (CHECK, `prevResult`
/// on DEL); the result it outputs is the `prevResult` it was given, so it
/// is in whatever version the runtime chose.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
/// STATUS and GC exist from this version on.
const STATUS_AND_GC_SINCE: &str = "1.1.0";

/// The spec's well-known error codes (section 5, "Error") used here.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific (100+): the attachment CHECK expects is not there.
    pub const NOT_ATTACHED: u32 = 100;
    /// Plugin-specific: the kernel refused an attach, pin or unpin.
    pub const DATAPATH_FAILURE: u32 = 101;
    /// Plugin-specific: no node-side interface carries the pod's traffic.
    pub const NO_HOST_INTERFACE: u32 = 102;
}

/// An error result: printed as JSON on stdout, with a non-zero exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: details.into() }
    }

    /// The spec's error structure, in `version`.
    pub fn to_json(&self, version: &str) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            #[serde(flatten)]
            error: &'a CniError,
        }
        serde_json::to_string(&Out { cni_version: version, error: self }).expect("plain strings and numbers serialize")
    }
}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Version,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            "GC" => Self::Gc,
            _ => return None,
        })
    }
}

/// The per-attachment parameters of ADD, DEL and CHECK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    /// Required for ADD and CHECK; DEL may come without it (the namespace
    /// can be gone already).
    pub netns: Option<PathBuf>,
}

/// Reads `CNI_COMMAND`.
pub fn command(env: impl Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    let value = env("CNI_COMMAND").unwrap_or_default();
    Command::parse(&value).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            "invalid CNI_COMMAND",
            format!("CNI_COMMAND is {value:?}; expected ADD, DEL, CHECK, STATUS, VERSION or GC"),
        )
    })
}

/// Reads and checks the attachment parameters `command` requires.
pub fn attachment(command: Command, env: impl Fn(&str) -> Option<String>) -> Result<Attachment, CniError> {
    let get = |name: &str| env(name).filter(|v| !v.is_empty());
    let mut missing = Vec::new();
    let container_id = get("CNI_CONTAINERID");
    let ifname = get("CNI_IFNAME");
    let netns = get("CNI_NETNS");
    for (name, value, required) in [
        ("CNI_CONTAINERID", &container_id, true),
        ("CNI_IFNAME", &ifname, true),
        ("CNI_NETNS", &netns, command != Command::Del),
    ] {
        if required && value.is_none() {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        return Err(CniError::new(code::INVALID_ENVIRONMENT, "missing environment variables", missing.join(", ")));
    }
    let (container_id, ifname) = (container_id.unwrap_or_default(), ifname.unwrap_or_default());
    if !valid_container_id(&container_id) {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            "invalid CNI_CONTAINERID",
            format!("{container_id:?}: must start with a letter or digit, then letters, digits, _ . -"),
        ));
    }
    if !valid_ifname(&ifname) {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            "invalid CNI_IFNAME",
            format!("{ifname:?}: 1 to 15 characters, not . or .., without / : or whitespace"),
        ));
    }
    Ok(Attachment { container_id, ifname, netns: netns.map(PathBuf::from) })
}

/// The spec's container id rule: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The kernel's interface name rules, as the spec restates them.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// One still-valid attachment named by GC.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The plugin's configuration on stdin (the runtime's "request
/// configuration": the conflist entry with `name`, `cniVersion` and, when
/// chained, `prevResult` injected).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// Where lb-agent pins its program and the plugin its links
    /// (lb-agent's `--pin-dir`).
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Kept as the exact text the runtime sent: ADD passes it on as its
    /// result, untouched.
    #[serde(default)]
    pub prev_result: Option<Box<RawValue>>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

fn default_pin_dir() -> PathBuf {
    DEFAULT_PIN_DIR.into()
}

/// Parses the configuration and checks that this plugin speaks its version
/// (and, for STATUS and GC, that the version has them).
pub fn netconf(command: Command, stdin: &[u8]) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::DECODING_FAILURE, "cannot decode the network configuration", e.to_string()))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!("cniVersion {:?}; this plugin supports {}", conf.cni_version, SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    if matches!(command, Command::Status | Command::Gc) && version_less(&conf.cni_version, STATUS_AND_GC_SINCE) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "{command:?} needs cniVersion {STATUS_AND_GC_SINCE} or later; the configuration has {}",
                conf.cni_version
            ),
        ));
    }
    if conf.name.is_empty() {
        return Err(CniError::new(code::INVALID_CONFIG, "invalid network configuration", "`name` is empty"));
    }
    Ok(conf)
}

/// `a < b` for dotted numeric versions.
fn version_less(a: &str, b: &str) -> bool {
    let parts = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
    parts(a) < parts(b)
}

/// The VERSION result for the version the runtime asked in.
pub fn version_result(stdin: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Asked {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    let asked = serde_json::from_slice::<Asked>(stdin).ok().and_then(|a| a.cni_version);
    let version = asked.unwrap_or_else(|| SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1].to_owned());
    serde_json::json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS }).to_string()
}

/// The version to write an error in: the configuration's when it can be
/// read, else the newest this plugin speaks.
pub fn error_version(stdin: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Versioned {
        #[serde(rename = "cniVersion")]
        cni_version: String,
    }
    serde_json::from_slice::<Versioned>(stdin)
        .map(|v| v.cni_version)
        .unwrap_or_else(|_| SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1].to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    const FULL: [(&str, &str); 4] =
        [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc123"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/run/netns/p")];

    #[test]
    fn commands_and_an_unknown_one() {
        assert_eq!(command(env(&[("CNI_COMMAND", "CHECK")])), Ok(Command::Check));
        assert_eq!(command(env(&[("CNI_COMMAND", "STATUS")])), Ok(Command::Status));
        let err = command(env(&[("CNI_COMMAND", "ATTACH")])).unwrap_err();
        assert_eq!(err.code, code::INVALID_ENVIRONMENT);
        assert!(err.details.contains("ATTACH"), "{err}");
        assert_eq!(command(env(&[])).unwrap_err().code, code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn add_needs_the_namespace_del_does_not() {
        let all = attachment(Command::Add, env(&FULL)).unwrap();
        assert_eq!(all.netns, Some(PathBuf::from("/run/netns/p")));
        let without_netns = env(&FULL[..3]);
        let err = attachment(Command::Add, &without_netns).unwrap_err();
        assert_eq!((err.code, err.details.as_str()), (code::INVALID_ENVIRONMENT, "CNI_NETNS"));
        assert_eq!(attachment(Command::Del, &without_netns).unwrap().netns, None);
        let err = attachment(Command::Check, env(&[("CNI_NETNS", "/x")])).unwrap_err();
        assert_eq!(err.details, "CNI_CONTAINERID, CNI_IFNAME", "names every missing variable");
    }

    #[test]
    fn container_ids_and_interface_names_follow_the_spec() {
        for (id, ok) in [("abc", true), ("a.b_c-d", true), ("9", true), ("-a", false), (".a", false), ("a/b", false)] {
            assert_eq!(valid_container_id(id), ok, "{id}");
        }
        for (name, ok) in [("eth0", true), ("a.b", true), ("", false), ("..", false), ("a:b", false), ("a b", false)] {
            assert_eq!(valid_ifname(name), ok, "{name}");
        }
        assert!(!valid_ifname("sixteen-chars-xx"));
        let err =
            attachment(Command::Add, env(&[("CNI_CONTAINERID", "-x"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/n")]))
                .unwrap_err();
        assert_eq!(err.msg, "invalid CNI_CONTAINERID");
    }

    #[test]
    fn netconf_keeps_prev_result_verbatim_and_defaults_the_pin_dir() {
        let prev = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"}],  "ips":[]}"#;
        let stdin = format!(r#"{{"cniVersion":"1.0.0","name":"pods","type":"lb-cni","prevResult":{prev}}}"#);
        let conf = netconf(Command::Add, stdin.as_bytes()).unwrap();
        assert_eq!(conf.prev_result.unwrap().get(), prev, "byte for byte, spacing included");
        assert_eq!(conf.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        let conf = netconf(Command::Del, br#"{"cniVersion":"1.1.0","name":"n","pinDir":"/sys/fs/bpf/x"}"#).unwrap();
        assert_eq!((conf.pin_dir, conf.prev_result.is_none()), (PathBuf::from("/sys/fs/bpf/x"), true));
    }

    #[test]
    fn bad_configurations_get_the_spec_codes() {
        assert_eq!(netconf(Command::Add, b"{not json").unwrap_err().code, code::DECODING_FAILURE);
        assert_eq!(netconf(Command::Add, br#"{"name":"n"}"#).unwrap_err().code, code::DECODING_FAILURE);
        let old = netconf(Command::Add, br#"{"cniVersion":"0.3.1","name":"n"}"#).unwrap_err();
        assert_eq!(old.code, code::INCOMPATIBLE_VERSION);
        assert!(old.details.contains("0.3.1") && old.details.contains("1.1.0"), "{old}");
        let status = netconf(Command::Status, br#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap_err();
        assert_eq!(status.code, code::INCOMPATIBLE_VERSION, "STATUS is a 1.1.0 command");
        assert!(netconf(Command::Gc, br#"{"cniVersion":"1.1.0","name":"n"}"#).is_ok());
        assert_eq!(
            netconf(Command::Add, br#"{"cniVersion":"1.0.0","name":""}"#).unwrap_err().code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn gc_reads_the_valid_attachments() {
        let stdin =
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#;
        let conf = netconf(Command::Gc, stdin).unwrap();
        assert_eq!(
            conf.valid_attachments,
            Some(vec![ValidAttachment { container_id: "c1".into(), ifname: "eth0".into() }])
        );
    }

    #[test]
    fn version_and_error_results() {
        let v: serde_json::Value = serde_json::from_str(&version_result(br#"{"cniVersion":"1.0.0"}"#)).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"], serde_json::json!(["0.4.0", "1.0.0", "1.1.0"]));
        let v: serde_json::Value = serde_json::from_str(&version_result(b"")).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0", "no input: the newest");
        let e: serde_json::Value =
            serde_json::from_str(&CniError::new(11, "try later", "no program").to_json("1.0.0")).unwrap();
        assert_eq!(
            e,
            serde_json::json!({"cniVersion": "1.0.0", "code": 11, "msg": "try later", "details": "no program"})
        );
        assert_eq!(error_version(b"garbage"), "1.1.0");
    }
}
