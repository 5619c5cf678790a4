//! The interface a pinned tcx or XDP link is attached to, and the cgroup of a
//! pinned cgroup link. aya's `LinkInfo` gives
//! the link and program ids but not the tcx part of `bpf_link_info`, and
//! the CNI plugin's pins are named after the pod, not the interface: so
//! `lbctl links` asks the kernel itself (BPF_OBJ_GET, then
//! BPF_OBJ_GET_INFO_BY_FD).

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::Context as _;

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `BPF_LINK_TYPE_TCX`.
const LINK_TYPE_TCX: u32 = 11;
/// `BPF_LINK_TYPE_XDP`.
const LINK_TYPE_XDP: u32 = 6;
/// `BPF_LINK_TYPE_CGROUP`.
const LINK_TYPE_CGROUP: u32 = 3;

/// The `BPF_OBJ_GET` part of `union bpf_attr`. The kernel wants every byte
/// after the last field zero, so the tail padding is a field.
#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// The `BPF_OBJ_GET_INFO_BY_FD` part of `union bpf_attr`.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info`: type, id, prog_id, then (8-byte aligned) a union
/// whose tcx member starts with the ifindex. Room for the whole union; the
/// kernel fills what it has and wants the rest zero.
#[repr(C, align(8))]
struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    union: [u32; 32],
}

pub(crate) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly laid out `bpf_attr` prefix of the
    // size passed; the kernel reads and writes only within it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if ret < 0 { Err(std::io::Error::last_os_error()) } else { Ok(ret) }
}

/// Opens the BPF object pinned at `path`.
pub(crate) fn obj_get(path: &Path) -> anyhow::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).context("path with a NUL byte")?;
    let mut get = ObjGet { pathname: c_path.as_ptr() as u64, ..ObjGet::default() };
    let fd = bpf(BPF_OBJ_GET, &mut get).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor this function owns.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd)?) })
}

/// The interface index of the tcx or XDP link pinned at `path` (0 once
/// its interface is gone); None if the link is neither.
pub fn interface_index(path: &Path) -> anyhow::Result<Option<u32>> {
    let info = read(path)?;
    // Both union members start with the ifindex.
    Ok(matches!(info.link_type, LINK_TYPE_TCX | LINK_TYPE_XDP).then_some(info.union[0]))
}

/// The id of the cgroup the cgroup link pinned at `path` is attached to
/// (the inode number of its cgroup2 directory); None if the link is not a
/// cgroup link.
pub fn cgroup_id(path: &Path) -> anyhow::Result<Option<u64>> {
    let info = read(path)?;
    // The cgroup member of the union starts with `__u64 cgroup_id`.
    Ok((info.link_type == LINK_TYPE_CGROUP).then_some(u64::from(info.union[0]) | (u64::from(info.union[1]) << 32)))
}

fn read(path: &Path) -> anyhow::Result<LinkInfo> {
    let fd = obj_get(path)?;
    let mut info = LinkInfo { link_type: 0, id: 0, prog_id: 0, _pad: 0, union: [0; 32] };
    let mut attr = InfoByFd {
        bpf_fd: u32::try_from(fd.as_raw_fd())?,
        info_len: u32::try_from(size_of::<LinkInfo>())?,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).with_context(|| format!("reading the link info of {}", path.display()))?;
    Ok(info)
}
