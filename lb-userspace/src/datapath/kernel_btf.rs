//! Just enough of a BTF reader (the kernel's `/sys/kernel/btf/vmlinux`)
//! to find a function's type id and where a bitfield lies in a struct,
//! anonymous unions and structs included. aya parses BTF too, but keeps
//! struct members to itself.
//!
//! Layout: `Documentation/bpf/btf.rst` — a header, then the types back to
//! back (id 1 first), each a 12-byte common part and a kind-specific
//! tail, then the string section.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF (bad magic or truncated header)")]
    NotBtf,
    #[error("BTF type {0} is truncated or of an unknown kind")]
    Malformed(u32),
    #[error("no {kind} named {name} in the kernel's BTF")]
    Missing { kind: &'static str, name: String },
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_FUNC: u32 = 12;

/// One type's common part and where its tail starts.
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    tail: usize,
}

impl Type {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    /// Struct and union members carry a bitfield size in their offset.
    fn kind_flag(&self) -> bool {
        self.info >> 31 != 0
    }
}

/// A bitfield's place: the byte holding it and its lowest bit there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bitfield {
    pub byte_offset: u32,
    pub shift: u32,
    pub bits: u32,
}

/// The parsed type table over borrowed bytes (native byte order: the
/// running kernel's own BTF).
pub struct KernelBtf<'a> {
    types: Vec<Type>,
    data: &'a [u8],
    strings: &'a [u8],
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> KernelBtf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let magic = data.get(0..2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        if magic != Some(MAGIC) {
            return Err(BtfError::NotBtf);
        }
        let field = |at| u32_at(data, at).map(|v| v as usize).ok_or(BtfError::NotBtf);
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(4)?, field(8)?, field(12)?, field(16)?, field(20)?);
        let types_data = data.get(hdr_len + type_off..hdr_len + type_off + type_len).ok_or(BtfError::NotBtf)?;
        let strings = data.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or(BtfError::NotBtf)?;
        let mut types = Vec::new();
        let mut at = 0;
        while at < types_data.len() {
            let id = types.len() as u32 + 1;
            let word = |i: usize| u32_at(types_data, at + 4 * i).ok_or(BtfError::Malformed(id));
            let ty = Type { name_off: word(0)?, info: word(1)?, size_or_type: word(2)?, tail: at + 12 };
            at = ty.tail + tail_len(&ty).ok_or(BtfError::Malformed(id))?;
            types.push(ty);
        }
        if at != types_data.len() {
            return Err(BtfError::Malformed(types.len() as u32));
        }
        Ok(Self { types, data: types_data, strings })
    }

    fn name(&self, ty: &Type) -> &[u8] {
        let rest = self.strings.get(ty.name_off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    fn id_of(&self, kind: u32, name: &str) -> Option<u32> {
        let found = self.types.iter().position(|t| t.kind() == kind && self.name(t) == name.as_bytes())?;
        Some(found as u32 + 1)
    }

    /// The type id of the function `name` (a kfunc's call immediate).
    pub fn function_id(&self, name: &str) -> Result<u32, BtfError> {
        self.id_of(KIND_FUNC, name).ok_or_else(|| BtfError::Missing { kind: "function", name: name.into() })
    }

    /// Where bitfield `member` of struct `strukt` lies, looked for through
    /// anonymous structs and unions as C finds it. `None` when it is not a
    /// bitfield (or not there).
    pub fn bitfield(&self, strukt: &str, member: &str) -> Result<Option<Bitfield>, BtfError> {
        let id =
            self.id_of(KIND_STRUCT, strukt).ok_or_else(|| BtfError::Missing { kind: "struct", name: strukt.into() })?;
        Ok(self.find_bitfield(id, member, 0, 0))
    }

    /// `depth` bounds the walk through nested anonymous members.
    fn find_bitfield(&self, id: u32, member: &str, base_bits: u32, depth: u32) -> Option<Bitfield> {
        let ty = *self.get(id)?;
        if depth > 8 || !matches!(ty.kind(), KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for i in 0..ty.vlen() {
            let at = ty.tail + 12 * i;
            let (name_off, member_type, offset) =
                (u32_at(self.data, at)?, u32_at(self.data, at + 4)?, u32_at(self.data, at + 8)?);
            let (mut bit_offset, mut bits) =
                if ty.kind_flag() { (offset & 0xff_ffff, offset >> 24) } else { (offset, 0) };
            bit_offset += base_bits;
            let resolved = self.resolve(member_type)?;
            if name_off == 0 {
                if let Some(found) = self.find_bitfield(resolved, member, bit_offset, depth + 1) {
                    return Some(found);
                }
                continue;
            }
            if self.strings.get(name_off as usize..)?.split(|&b| b == 0).next()? != member.as_bytes() {
                continue;
            }
            let int = self.get(resolved)?;
            if bits == 0 && int.kind() == KIND_INT {
                // Without the kind flag a bitfield is an INT whose own
                // encoding gives its width and an extra offset.
                let encoding = u32_at(self.data, int.tail)?;
                let width = encoding & 0xff;
                if width != int.size_or_type * 8 {
                    bits = width;
                    bit_offset += (encoding >> 16) & 0xff;
                }
            }
            if bits == 0 {
                return None;
            }
            return Some(Bitfield { byte_offset: bit_offset / 8, shift: bit_offset % 8, bits });
        }
        None
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<u32> {
        for _ in 0..16 {
            let ty = self.get(id)?;
            if !matches!(ty.kind(), KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST) {
                return Some(id);
            }
            id = ty.size_or_type;
        }
        None
    }
}

/// Bytes after a type's common part, by kind.
fn tail_len(ty: &Type) -> Option<usize> {
    let vlen = ty.vlen();
    Some(match ty.kind() {
        // INT, VAR, DECL_TAG: one word.
        1 | 14 | 17 => 4,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
        2 | 7..=12 | 16 | 18 => 0,
        3 => 12,
        // STRUCT, UNION, DATASEC, ENUM64: 12 bytes a member.
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM, FUNC_PROTO: 8 bytes a member.
        6 | 13 => 8 * vlen,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob from types written as words, and a string table.
    struct Builder {
        words: Vec<u32>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self { words: Vec::new(), strings: vec![0] }
        }
        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            at
        }
        fn push(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size_or_type: u32, tail: &[u32]) {
            let name = self.string(name);
            self.words.extend([name, (u32::from(kind_flag) << 31) | (kind << 24) | vlen, size_or_type]);
            self.words.extend_from_slice(tail);
        }
        fn member(&mut self, name: &str, ty: u32, offset: u32) -> [u32; 3] {
            [self.string(name), ty, offset]
        }
        fn bytes(&self) -> Vec<u8> {
            let types: Vec<u8> = self.words.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let mut out = Vec::new();
            out.extend(MAGIC.to_ne_bytes());
            out.extend([1, 0]);
            for w in [24, 0, types.len() as u32, types.len() as u32, self.strings.len() as u32] {
                out.extend(w.to_ne_bytes());
            }
            out.extend(types);
            out.extend(&self.strings);
            out
        }
    }

    /// `struct sk_buff` cut down to the shape that matters: the bitfield
    /// inside an anonymous struct inside an anonymous union (the kernel's
    /// `struct_group`), after a plain member, with a kfunc beside it.
    fn skb_like(kind_flag: bool) -> Vec<u8> {
        let mut b = Builder::new();
        b.push("unsigned char", KIND_INT, 0, false, 1, &[8]); // 1
        b.push("__u8", KIND_TYPEDEF, 0, false, 1, &[]); // 2
        b.push("unsigned int", KIND_INT, 0, false, 4, &[32]); // 3
        // 4: the anonymous struct: pkt_type:3 at bit 0, ip_summed:2 at bit 5.
        let (pkt_type, ip_summed) = if kind_flag {
            (b.member("pkt_type", 2, (3 << 24) | 64), b.member("ip_summed", 2, (2 << 24) | 69))
        } else {
            // The old encoding: an INT per width, bit offset in the member.
            (b.member("pkt_type", 6, 64), b.member("ip_summed", 7, 69))
        };
        let len = b.member("len", 3, 0);
        let mut tail = len.to_vec();
        tail.extend(pkt_type);
        tail.extend(ip_summed);
        b.push("", KIND_STRUCT, 3, kind_flag, 12, &tail); // 4
        let anonymous = b.member("", 4, 0);
        b.push("", KIND_UNION, 1, false, 12, &anonymous); // 5
        b.push("bits3", KIND_INT, 0, false, 1, &[3]); // 6
        b.push("bits2", KIND_INT, 0, false, 1, &[2]); // 7
        let (first, union) = (b.member("next", 3, 0), b.member("", 5, 64));
        b.push("sk_buff", KIND_STRUCT, 2, false, 20, &[first, union].concat()); // 8
        b.push("bpf_cast_to_kern_ctx", KIND_FUNC, 0, false, 13, &[]); // 9
        b.push("", 13, 1, false, 0, &[0, 3]); // 10: FUNC_PROTO, one argument
        b.bytes()
    }

    #[test]
    fn a_bitfield_is_found_through_anonymous_members_in_both_encodings() {
        for kind_flag in [true, false] {
            let blob = skb_like(kind_flag);
            let btf = KernelBtf::parse(&blob).unwrap();
            // 8 bytes of `next`, then 8 of `len` inside the group, then
            // bit 5 of the next byte.
            assert_eq!(
                btf.bitfield("sk_buff", "ip_summed").unwrap(),
                Some(Bitfield { byte_offset: 16, shift: 5, bits: 2 }),
                "kind_flag {kind_flag}"
            );
            assert_eq!(btf.bitfield("sk_buff", "next").unwrap(), None, "not a bitfield");
            assert_eq!(btf.bitfield("sk_buff", "csum_level").unwrap(), None, "not there");
        }
    }

    #[test]
    fn functions_are_found_by_name_and_absent_ones_are_reported() {
        let blob = skb_like(true);
        let btf = KernelBtf::parse(&blob).unwrap();
        assert_eq!(btf.function_id("bpf_cast_to_kern_ctx"), Ok(9));
        assert!(matches!(btf.function_id("bpf_rdonly_cast"), Err(BtfError::Missing { .. })));
        assert!(matches!(btf.bitfield("xdp_buff", "flags"), Err(BtfError::Missing { .. })));
    }

    #[test]
    fn truncated_or_foreign_data_is_refused() {
        let blob = skb_like(true);
        assert_eq!(KernelBtf::parse(&blob[..10]).err(), Some(BtfError::NotBtf));
        assert_eq!(KernelBtf::parse(b"\x7fELF and more bytes than a header").err(), Some(BtfError::NotBtf));
        let mut cut = blob.clone();
        // Claim one more member for the last type than the data holds.
        let types_len = u32::from_ne_bytes(cut[12..16].try_into().unwrap()) as usize;
        let last_info = 24 + types_len - 20 + 4;
        cut[last_info] += 1;
        assert!(matches!(KernelBtf::parse(&cut), Err(BtfError::Malformed(_))));
    }

    #[test]
    fn the_running_kernel_s_sk_buff_has_a_two_bit_ip_summed() {
        let blob = std::fs::read("/sys/kernel/btf/vmlinux").expect("the kernel's BTF");
        let btf = KernelBtf::parse(&blob).expect("the kernel's BTF parses");
        let place = btf.bitfield("sk_buff", "ip_summed").unwrap().expect("ip_summed is a bitfield");
        assert_eq!(place.bits, 2);
        assert!(place.shift + place.bits <= 8, "{place:?}");
        assert!(place.byte_offset > 0 && place.byte_offset < 256, "{place:?}");
        btf.function_id("bpf_cast_to_kern_ctx").expect("the kfunc");
    }
}
