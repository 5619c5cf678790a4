//! How the tc programs read an sk_buff's checksum state (`ip_summed`),
//! which `__sk_buff` does not show. `bpf_cast_to_kern_ctx` (a kfunc the
//! verifier turns into a register move) gives the program the `struct
//! sk_buff` itself, readable through BTF, and the state's bitfield is read
//! at the place the running kernel's BTF gives.
//!
//! Rust cannot emit a kfunc call, so the datapath calls a helper id no
//! kernel has (`CAST_TO_KERN_CTX_PLACEHOLDER`) and the agent rewrites each
//! such call before loading: into the kfunc call where the kernel and the
//! agent's privileges allow it, else into `r0 = 0`, which the datapath
//! takes as "state unknown" and leaves the update to the kernel's helper.

/// The helper id the datapath calls in place of `bpf_cast_to_kern_ctx`.
pub const CAST_TO_KERN_CTX_PLACEHOLDER: u32 = 0x4c42_4b43;

/// Name of the datapath's read-only global holding `IP_SUMMED`'s place.
pub const IP_SUMMED_GLOBAL: &str = "LB_SKB_IP_SUMMED";

/// Where `ip_summed` (2 bits) lies in the kernel's `struct sk_buff`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BitPlace {
    /// Byte offset of the byte holding the bitfield.
    pub byte_offset: u32,
    /// Its lowest bit in that byte.
    pub shift: u32,
}

const _: () = assert!(core::mem::size_of::<BitPlace>() == 8);

crate::user_pod!(BitPlace);

/// `ip_summed` values (`include/linux/skbuff.h`).
pub const CHECKSUM_NONE: u8 = 0;
pub const CHECKSUM_UNNECESSARY: u8 = 1;
pub const CHECKSUM_COMPLETE: u8 = 2;
pub const CHECKSUM_PARTIAL: u8 = 3;
