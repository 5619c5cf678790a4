//! Prepares the datapath object so its tc programs read each packet's
//! checksum state from the sk_buff (`lb_common::skb_checksum`): the
//! placeholder calls become `bpf_cast_to_kern_ctx` calls and the
//! program learns where `ip_summed` lies, when the running kernel's BTF
//! has both and this process may read kernel structures (`CAP_PERFMON`
//! or `CAP_SYS_ADMIN`, which the verifier asks for). Otherwise they become
//! `r0 = 0` and the state is learned through the kernel's helper, one
//! call more per translated packet.

use anyhow::Context as _;
use lb_common::skb_checksum::{BitPlace, CAST_TO_KERN_CTX_PLACEHOLDER};
use object::{Object as _, ObjectSection as _, SectionKind};

use super::kernel_btf::KernelBtf;

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const KFUNC: &str = "bpf_cast_to_kern_ctx";
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;

/// How the tc programs will know a packet's checksum state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateSource {
    /// Read from the sk_buff: the kfunc's BTF id and the bitfield's place.
    SkBuff { kfunc_id: u32, place: BitPlace },
    /// Learned through the helper, for the reason given.
    Helper { why: String },
}

impl StateSource {
    /// What this kernel and this process allow.
    pub fn detect() -> Self {
        match read_from_kernel() {
            Ok(source) => source,
            Err(e) => Self::Helper { why: format!("{e:#}") },
        }
    }

    /// The helper path, whatever the kernel offers.
    pub fn helper(why: &str) -> Self {
        Self::Helper { why: why.into() }
    }
}

fn read_from_kernel() -> anyhow::Result<StateSource> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    anyhow::ensure!(
        may_read_kernel_structs(&status),
        "neither CAP_PERFMON nor CAP_SYS_ADMIN: the verifier refuses reads of the sk_buff"
    );
    let blob = std::fs::read(VMLINUX_BTF).with_context(|| format!("reading {VMLINUX_BTF}"))?;
    let btf = KernelBtf::parse(&blob)?;
    let kfunc_id = btf.function_id(KFUNC)?;
    let field = btf
        .bitfield("sk_buff", "ip_summed")?
        .filter(|f| f.bits == 2 && f.shift + f.bits <= 8)
        .context("struct sk_buff has no 2-bit ip_summed within one byte")?;
    Ok(StateSource::SkBuff { kfunc_id, place: BitPlace { byte_offset: field.byte_offset, shift: field.shift } })
}

/// Whether the effective capabilities in `/proc/self/status` text allow
/// BTF reads of kernel structures.
fn may_read_kernel_structs(status: &str) -> bool {
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    effective & (1 << CAP_PERFMON | 1 << CAP_SYS_ADMIN) != 0
}

/// The object to load, its calls rewritten, and the place to give the
/// program (a zero place with the helper path: never read).
pub struct Prepared {
    pub object: Vec<u8>,
    pub place: BitPlace,
    pub calls: usize,
}

/// Rewrites every placeholder call in `object`'s code sections.
pub fn prepare(object: &[u8], source: &StateSource) -> anyhow::Result<Prepared> {
    let (replacement, place) = match source {
        StateSource::SkBuff { kfunc_id, place } => (kfunc_call(*kfunc_id), *place),
        StateSource::Helper { .. } => (NULL_RESULT, BitPlace::default()),
    };
    let file = object::File::parse(object).context("parsing the datapath object")?;
    let code: Vec<(usize, usize)> = file
        .sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .filter_map(|s| s.file_range())
        .map(|(start, len)| (start as usize, len as usize))
        .collect();
    let mut patched = object.to_vec();
    let mut calls = 0;
    for (start, len) in code {
        let section = patched.get_mut(start..start + len).context("a code section outside the object")?;
        calls += rewrite_calls(section, replacement);
    }
    Ok(Prepared { object: patched, place, calls })
}

/// `call <imm>` with no pseudo source: how a helper call is encoded.
fn is_placeholder_call(insn: &[u8]) -> bool {
    insn[0] == BPF_JMP_CALL
        && insn[1] == 0
        && insn[2..4] == [0, 0]
        && insn[4..8] == CAST_TO_KERN_CTX_PLACEHOLDER.to_le_bytes()
}

/// Replaces each placeholder call in `code` (8-byte instructions, little
/// endian) with `replacement`; returns how many there were.
fn rewrite_calls(code: &mut [u8], replacement: [u8; 8]) -> usize {
    let mut count = 0;
    for insn in code.chunks_exact_mut(8) {
        if is_placeholder_call(insn) {
            insn.copy_from_slice(&replacement);
            count += 1;
        }
    }
    count
}

const BPF_JMP_CALL: u8 = 0x85;
/// `BPF_PSEUDO_KFUNC_CALL` in the source register nibble.
const PSEUDO_KFUNC_CALL: u8 = 2 << 4;
/// `r0 = 0` (`BPF_ALU64 | BPF_MOV | BPF_K`).
const NULL_RESULT: [u8; 8] = [0xb7, 0, 0, 0, 0, 0, 0, 0];

fn kfunc_call(btf_id: u32) -> [u8; 8] {
    let id = btf_id.to_le_bytes();
    [BPF_JMP_CALL, PSEUDO_KFUNC_CALL, 0, 0, id[0], id[1], id[2], id[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholder() -> [u8; 8] {
        let imm = CAST_TO_KERN_CTX_PLACEHOLDER.to_le_bytes();
        [BPF_JMP_CALL, 0, 0, 0, imm[0], imm[1], imm[2], imm[3]]
    }

    #[test]
    fn only_placeholder_calls_are_rewritten() {
        let helper_call = [BPF_JMP_CALL, 0, 0, 0, 5, 0, 0, 0];
        // A load whose immediate happens to equal the placeholder.
        let mut lookalike = placeholder();
        lookalike[0] = 0x18;
        let mut code = [placeholder(), helper_call, lookalike, placeholder()].concat();
        assert_eq!(rewrite_calls(&mut code, kfunc_call(63387)), 2);
        let expected = [kfunc_call(63387), helper_call, lookalike, kfunc_call(63387)].concat();
        assert_eq!(code, expected);
        assert_eq!(kfunc_call(63387), [0x85, 0x20, 0, 0, 0x9b, 0xf7, 0, 0]);
    }

    #[test]
    fn the_datapath_object_has_its_calls_rewritten_either_way() {
        let count = |object: &[u8]| rewrite_calls(&mut object.to_vec(), placeholder());
        let sources = [
            StateSource::SkBuff { kfunc_id: 7, place: BitPlace { byte_offset: 128, shift: 5 } },
            StateSource::helper("test"),
        ];
        for source in sources {
            let prepared = prepare(crate::EBPF_OBJECT, &source).unwrap();
            assert!(prepared.calls > 0, "the tc paths read the state");
            assert_eq!(count(&prepared.object), 0, "{source:?}: none left");
            assert_eq!(prepared.object.len(), crate::EBPF_OBJECT.len());
        }
    }

    #[test]
    fn kernel_structs_need_perfmon_or_sys_admin() {
        let status = |caps: u64| format!("Name:\tlb-agent\nCapEff:\t{caps:016x}\n");
        assert!(may_read_kernel_structs(&status(1 << CAP_PERFMON | 1 << 39)));
        assert!(may_read_kernel_structs(&status(1 << CAP_SYS_ADMIN)));
        // CAP_BPF and CAP_NET_ADMIN alone load and attach, but do not read.
        assert!(!may_read_kernel_structs(&status(1 << 39 | 1 << 12)));
        assert!(!may_read_kernel_structs("Name:\tlb-agent\n"));
    }
}
