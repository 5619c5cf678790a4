#!/usr/bin/env bash
# Installs everything the build, demo, tests and benchmarks need on a fresh
# Debian 12 machine. Idempotent: each step checks first, so a second run
# takes a second or two.
set -euo pipefail

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

# containernetworking-plugins: the reference CNI plugins (bridge,
# host-local) the CNI chaining test runs lb-cni after. ethtool: the XDP
# tests set veth offloads as a wire would have them.
APT_PACKAGES=(bpftool iproute2 iptables nftables iperf3 socat curl python3 python3-venv netsniff-ng
              containernetworking-plugins ethtool)

missing_apt=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_apt+=("$p")
done
if ((${#missing_apt[@]})); then
    log "apt: installing ${missing_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
fi

# The eBPF crate is built with -Z build-std=core for bpfel-unknown-none,
# which needs the standard library's sources.
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
    log "rustup: adding rust-src"
    rustup component add rust-src
fi

# bpf-linker must use the same LLVM major as rustc. crates.io's default
# features want a system LLVM we do not have, so link it against the
# libLLVM shared library that ships inside the Rust toolchain itself.
sysroot=$(rustc --print sysroot)
libllvm=$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n1 || true)
[[ -n "$libllvm" ]] || { log "no libLLVM.so in $sysroot/lib"; exit 1; }
llvm_major=$(basename "$libllvm" | sed -E 's/libLLVM\.so\.([0-9]+).*/\1/')
want_stamp="llvm-$llvm_major $(rustc --version)"
stamp_file="$HOME/.local/rust-llvm/bpf-linker.stamp"
if ! command -v bpf-linker >/dev/null || [[ "$(cat "$stamp_file" 2>/dev/null)" != "$want_stamp" ]]; then
    log "cargo: installing bpf-linker against the toolchain's LLVM $llvm_major"
    prefix="$HOME/.local/rust-llvm"
    mkdir -p "$prefix/lib"
    # Both names are needed: the build links -lLLVM, the loader looks up the soname.
    ln -sf "$libllvm" "$prefix/lib/libLLVM.so"
    ln -sf "$libllvm" "$prefix/lib/$(basename "$libllvm")"
    LLVM_PREFIX="$prefix" cargo install --locked bpf-linker --no-default-features --features "llvm-$llvm_major"
    echo "$want_stamp" >"$stamp_file"
fi

# The deployment's manifests are checked offline (tests/tests/deploy.rs):
# `kubectl apply --dry-run=client` needs an API server even in client mode,
# kubernetes-validate ships the Kubernetes JSON schemas. Pinned, in its own
# virtual environment so the system Python stays untouched.
KUBERNETES_VALIDATE_VERSION=1.37.0
venv="$HOME/.local/lb-venv"
if [[ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]]; then
    log "pip: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION in $venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
log "ready"
