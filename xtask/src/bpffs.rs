//! Leaves /sys/fs/bpf as a run found it. The tests, the demo and the
//! benchmarks mount bpffs there when it is missing (the agent and the
//! tests' pins need it), and on a kernel with BPF preload every bpffs
//! mount holds the kernel's own iterators, `maps.debug` and
//! `progs.debug`, which cannot be unlinked. So a run that found no bpffs
//! there unmounts the ones it left, once nothing else is pinned in them;
//! anything else found there is left in place and reported.

use std::process::Command;

const MOUNT_POINT: &str = "/sys/fs/bpf";
/// What the kernel puts in every bpffs mount (`CONFIG_BPF_PRELOAD`).
const PRELOADED: [&str; 2] = ["maps.debug", "progs.debug"];
/// Mounts stacked on the point by one run, at most.
const MAX_STACKED: usize = 16;

/// Whether bpffs was mounted at /sys/fs/bpf when a run started.
pub struct Before {
    mounted: bool,
}

/// Notes the mount before a run.
pub fn note() -> Before {
    Before { mounted: is_mounted() }
}

impl Before {
    /// Unmounts what the run mounted, if only the kernel's own entries
    /// are in it.
    pub fn restore(self) {
        if self.mounted {
            return;
        }
        for _ in 0..MAX_STACKED {
            if !is_mounted() {
                return;
            }
            let others = entries_besides_preloaded();
            if !others.is_empty() {
                eprintln!("{MOUNT_POINT}: left mounted, it holds {}", others.join(", "));
                return;
            }
            match Command::new("umount").arg(MOUNT_POINT).status() {
                Ok(status) if status.success() => {}
                outcome => {
                    eprintln!("{MOUNT_POINT}: umount failed ({outcome:?})");
                    return;
                }
            }
        }
    }
}

/// Whether the mount table has bpffs at the mount point.
fn is_mounted() -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(MOUNT_POINT) && fields.next() == Some("bpf")
    })
}

/// The mount point's entries other than the kernel's preloaded ones.
fn entries_besides_preloaded() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(MOUNT_POINT) else {
        return vec![format!("(unreadable: {MOUNT_POINT})")];
    };
    dir.filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !PRELOADED.contains(&name.as_str()))
        .collect()
}
