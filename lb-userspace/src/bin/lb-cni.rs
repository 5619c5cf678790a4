//! lb-cni: the CNI plugin chaining lb's datapath after another plugin.
//! The runtime passes CNI_* variables and the configuration on stdin; the
//! result (or the error, in the spec's JSON shape) goes to stdout, logs to
//! stderr.

use std::io::{Read as _, Write as _};

use lb_userspace::cni::plugin;

fn main() {
    let mut stdin = Vec::new();
    let output = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => plugin::run(|name| std::env::var(name).ok(), &stdin),
        Err(e) => plugin::Output { stdout: plugin::io_error(&e), success: false },
    };
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_all(output.stdout.as_bytes()).and_then(|()| stdout.flush());
    std::process::exit(if output.success && written.is_ok() { 0 } else { 1 });
}
