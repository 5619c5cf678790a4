//! The plugin's commands: the protocol (`protocol`) in, kernel work
//! (`datapath::chained`, `host_side`) out, one CNI error code per way of
//! failing.

use crate::datapath::{
    chained::{self, PodHook},
    links,
};

use super::{
    host_side,
    pin_name::AttachmentKey,
    protocol::{self, Attachment, CniError, Command, NetConf, code},
};

/// What to print on stdout, and whether the process succeeds.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub success: bool,
}

/// Runs one invocation: `env` reads the CNI_* variables, `stdin` is the
/// configuration.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Output {
    match dispatch(&env, stdin) {
        Ok(stdout) => Output { stdout, success: true },
        Err(e) => Output { stdout: e.to_json(&protocol::error_version(stdin)), success: false },
    }
}

fn dispatch(env: &impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<String, CniError> {
    let command = protocol::command(env)?;
    if command == Command::Version {
        return Ok(protocol::version_result(stdin));
    }
    let conf = protocol::netconf(command, stdin)?;
    match command {
        Command::Add => add(&conf, &protocol::attachment(command, env)?),
        Command::Del => del(&conf, &protocol::attachment(command, env)?).map(|()| String::new()),
        Command::Check => check(&conf, &protocol::attachment(command, env)?).map(|()| String::new()),
        Command::Status => status(&conf).map(|()| String::new()),
        Command::Gc => gc(&conf).map(|()| String::new()),
        Command::Version => unreachable!("answered above"),
    }
}

fn key(conf: &NetConf, attachment: &Attachment) -> AttachmentKey {
    AttachmentKey::new(&conf.name, &attachment.container_id, &attachment.ifname)
}

fn prev_result(conf: &NetConf) -> Result<&str, CniError> {
    conf.prev_result.as_deref().map(|raw| raw.get()).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "lb-cni is a chained plugin: no prevResult",
            "list it in a conflist after the plugin that creates the pod's interface (bridge, ptp, ...)",
        )
    })
}

fn datapath_error(msg: &str) -> impl FnOnce(anyhow::Error) -> CniError + '_ {
    move |e| CniError::new(code::DATAPATH_FAILURE, msg, format!("{e:#}"))
}

/// The node-side interface of the pod's `CNI_IFNAME`.
fn host_interface(attachment: &Attachment, prev_result: &str) -> Result<String, CniError> {
    let netns = attachment.netns.as_deref().expect("ADD and CHECK require CNI_NETNS");
    if !host_side::netns_exists(netns) {
        return Err(CniError::new(
            code::CONTAINER_UNKNOWN,
            "the container's network namespace does not exist",
            netns.display().to_string(),
        ));
    }
    let listed = host_side::listed_host_interfaces(prev_result)
        .map_err(|e| CniError::new(code::DECODING_FAILURE, "cannot decode prevResult", e.to_string()))?;
    let peer = host_side::veth_peer(netns, &attachment.ifname)
        .map_err(|e| CniError::new(code::IO_FAILURE, "cannot read the pod's interface", format!("{e:#}")))?;
    host_side::choose(peer.as_deref(), &listed)
        .map_err(|details| CniError::new(code::NO_HOST_INTERFACE, "no node-side interface found for the pod", details))
}

/// Attaches the agent's programs at ingress and egress of the pod's
/// node-side interface; the result is `prevResult`, as received.
fn add(conf: &NetConf, attachment: &Attachment) -> Result<String, CniError> {
    let prev = prev_result(conf)?;
    let ifname = host_interface(attachment, prev)?;
    if pinned_program(conf, PodHook::Ingress)?.is_none() {
        return Err(not_published(conf, code::TRY_AGAIN_LATER));
    }
    if links::links_dir(&conf.pin_dir).join(&ifname).exists() {
        // Both would run: every packet through the datapath twice.
        eprintln!("lb-cni: warning: lb-agent's --interfaces also selects {ifname}; leave pod interfaces to lb-cni");
    }
    let name = key(conf, attachment).pin_name();
    for hook in PodHook::ALL {
        if hook == PodHook::Egress && pinned_program(conf, hook)?.is_none() {
            // An agent older than this plugin (mid-upgrade): ingress alone
            // serves every Service but those with a host-network endpoint here.
            eprintln!(
                "lb-cni: warning: lb-agent has not published {}: {ifname} gets no egress link, so replies from host-network endpoints to it stay untranslated",
                chained::program_pin(&conf.pin_dir, hook).display()
            );
            continue;
        }
        let ids = chained::attach(&conf.pin_dir, hook, &ifname, &name)
            .map_err(datapath_error("cannot attach the datapath"))?;
        eprintln!(
            "lb-cni: {ifname} {}: attached, link {} (program {}) pinned as {name}",
            hook.name(),
            ids.link_id,
            ids.program_id
        );
    }
    Ok(prev.to_owned())
}

fn pinned_program(conf: &NetConf, hook: PodHook) -> Result<Option<u32>, CniError> {
    chained::pinned_program_id(&conf.pin_dir, hook).map_err(datapath_error("cannot open lb-agent's program"))
}

/// The error for "no agent has pinned its program here yet".
fn not_published(conf: &NetConf, code: u32) -> CniError {
    CniError::new(
        code,
        "lb-agent has not published its datapath program",
        format!(
            "nothing pinned at {}: is lb-agent running on this node with --pin-dir {} (the plugin's pinDir)?",
            chained::program_pin(&conf.pin_dir, PodHook::Ingress).display(),
            conf.pin_dir.display()
        ),
    )
}

/// Removes the attachment's pinned links; succeeds when they are gone already.
fn del(conf: &NetConf, attachment: &Attachment) -> Result<(), CniError> {
    let name = key(conf, attachment).pin_name();
    for hook in PodHook::ALL {
        let removed =
            chained::remove(&conf.pin_dir, hook, &name).map_err(datapath_error("cannot remove the pinned link"))?;
        let what = if removed { "link removed" } else { "no link pinned: nothing to do" };
        eprintln!("lb-cni: {name} {}: {what}", hook.name());
    }
    Ok(())
}

/// The attachment is there: pinned, on the pod's interface, running the
/// programs the agent pinned (egress only when the agent pins one).
fn check(conf: &NetConf, attachment: &Attachment) -> Result<(), CniError> {
    let ifname = host_interface(attachment, prev_result(conf)?)?;
    let name = key(conf, attachment).pin_name();
    let not_attached = |msg: &str, details: String| CniError::new(code::NOT_ATTACHED, msg, details);
    for hook in PodHook::ALL {
        let program = match pinned_program(conf, hook)? {
            Some(program) => program,
            None if hook == PodHook::Egress => continue,
            None => return Err(not_published(conf, code::NOT_ATTACHED)),
        };
        let path = chained::cni_links_dir(&conf.pin_dir, hook).join(&name);
        let link = chained::link_ids(&path)
            .map_err(datapath_error("cannot open the pinned link"))?
            .ok_or_else(|| not_attached("the pod's datapath link is not pinned", path.display().to_string()))?;
        if link.program_id != program {
            return Err(not_attached(
                "the pod's link runs another program than lb-agent's",
                format!("link {} runs program {}, lb-agent pinned program {program}", link.link_id, link.program_id),
            ));
        }
        let attached = chained::attached_programs(&ifname, hook)
            .map_err(datapath_error("cannot list the interface's programs"))?;
        if !attached.contains(&link.program_id) {
            return Err(not_attached(
                "the datapath is not attached to the pod's interface",
                format!("{ifname} {} runs programs {attached:?}, not {}", hook.name(), link.program_id),
            ));
        }
    }
    Ok(())
}

/// Ready for ADD once the agent has pinned its program.
fn status(conf: &NetConf) -> Result<(), CniError> {
    match chained::pinned_program_id(&conf.pin_dir, PodHook::Ingress) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(not_published(conf, code::NOT_AVAILABLE)),
        Err(e) => Err(CniError::new(code::NOT_AVAILABLE, "cannot open lb-agent's program", format!("{e:#}"))),
    }
}

/// Removes the links of this network's attachments the runtime no longer
/// lists; goes on past a failure and reports them all.
fn gc(conf: &NetConf) -> Result<(), CniError> {
    // Without the list, "nothing is valid" would detach every pod: refuse.
    let valid = conf.valid_attachments.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC without cni.dev/valid-attachments",
            "the runtime must list the attachments still in use; nothing was removed",
        )
    })?;
    let mut failures = Vec::new();
    for hook in PodHook::ALL {
        let dir = chained::cni_links_dir(&conf.pin_dir, hook);
        let names = links::pinned_names(&dir).map_err(datapath_error("cannot list the pinned links"))?;
        for name in names {
            let Some(key) = AttachmentKey::from_pin_name(&name) else {
                continue;
            };
            let listed = valid.iter().any(|v| v.container_id == key.container_id && v.ifname == key.ifname);
            if key.network != conf.name || listed {
                continue;
            }
            match chained::remove(&conf.pin_dir, hook, &name) {
                Ok(_) => eprintln!("lb-cni: gc: {name} {}: stale link removed", hook.name()),
                Err(e) => failures.push(format!("{name} {}: {e:#}", hook.name())),
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(code::DATAPATH_FAILURE, "cannot remove stale links", failures.join("; ")))
    }
}

/// The error result for a configuration that could not even be read.
pub fn io_error(e: &std::io::Error) -> String {
    let version = protocol::SUPPORTED_VERSIONS[protocol::SUPPORTED_VERSIONS.len() - 1];
    CniError::new(code::IO_FAILURE, "cannot read the configuration from stdin", e.to_string()).to_json(version)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Runs the plugin with these variables and stdin; the decoded output.
    fn invoke(vars: &[(&str, &str)], stdin: &str) -> (bool, serde_json::Value) {
        let vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        let out = run(|k| vars.get(k).cloned(), stdin.as_bytes());
        let json =
            if out.stdout.is_empty() { serde_json::Value::Null } else { serde_json::from_str(&out.stdout).unwrap() };
        (out.success, json)
    }

    fn conf(pin_dir: &std::path::Path, extra: &str) -> String {
        format!(r#"{{"cniVersion":"1.0.0","name":"pods","type":"lb-cni","pinDir":{:?}{extra}}}"#, pin_dir)
    }

    #[test]
    fn version_needs_nothing_but_the_command() {
        let (ok, out) = invoke(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
        assert!(ok);
        assert_eq!(out["cniVersion"], "1.0.0");
    }

    #[test]
    fn del_of_nothing_succeeds_without_namespace_or_prev_result() {
        let dir = std::env::temp_dir().join(format!("lb-cni-del-{}", std::process::id()));
        let vars = [("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")];
        for _ in 0..2 {
            assert_eq!(invoke(&vars, &conf(&dir, "")), (true, serde_json::Value::Null));
        }
        assert!(!dir.exists(), "DEL creates nothing");
    }

    #[test]
    fn add_errors_come_in_the_spec_shape_with_their_codes() {
        let dir = std::env::temp_dir().join(format!("lb-cni-add-{}", std::process::id()));
        let (ok, out) = invoke(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")], &conf(&dir, ""));
        assert!(!ok);
        assert_eq!(out["code"], code::INVALID_ENVIRONMENT);
        assert_eq!(out["cniVersion"], "1.0.0", "in the configuration's version");
        assert!(out["details"].as_str().unwrap().contains("CNI_CONTAINERID"), "{out}");

        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/lb-cni-test-no-such-namespace"),
        ];
        let (ok, out) = invoke(&vars, &conf(&dir, ""));
        assert!(!ok);
        assert_eq!(out["code"], code::INVALID_CONFIG, "a chained plugin without prevResult: {out}");
        let (ok, out) = invoke(&vars, &conf(&dir, r#","prevResult":{"cniVersion":"1.0.0"}"#));
        assert!(!ok);
        assert_eq!(out["code"], code::CONTAINER_UNKNOWN, "{out}");
        assert!(!dir.exists(), "a failed ADD creates nothing");
    }
}
