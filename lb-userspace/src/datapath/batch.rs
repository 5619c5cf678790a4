//! Whole-map reads with `BPF_MAP_LOOKUP_BATCH`: one syscall per few
//! thousand entries instead of two per entry (aya only iterates key by
//! key), so the periodic full sync can read every map back cheaply; and
//! many-entry writes with `BPF_MAP_UPDATE_BATCH` (Maglev tables). A
//! kernel or map type without batch support answers EINVAL or ENOTSUPP;
//! [`lookup_all`] then returns `None` ([`update_all`] `false`) and the
//! caller goes entry by entry instead.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's own "operation not supported" (not a libc errno).
const ENOTSUPP: i32 = 524;
/// Entries asked for per syscall; a hash bucket holding more makes the
/// kernel answer ENOSPC, and the read is retried with a larger buffer.
const FIRST_CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of `map`, or `None` if the kernel cannot batch this map.
pub fn lookup_all<K: Pod, V: Pod>(map: &MapData) -> io::Result<Option<Vec<(K, V)>>> {
    let mut chunk = FIRST_CHUNK;
    'restart: loop {
        let mut out = Vec::new();
        // The batch position: a bucket index (hash maps) or the last key
        // (arrays); 8 bytes hold either.
        let mut position = 0u64;
        let mut next = 0u64;
        let mut first = true;
        // SAFETY: K and V are Pod (plain bytes, any bit pattern valid).
        let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; chunk];
        let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; chunk];
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { std::ptr::from_ref(&position) as u64 },
                out_batch: std::ptr::from_mut(&mut next) as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: chunk as u32,
                map_fd: map.fd().as_fd().as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            // SAFETY: attr points at live buffers of `chunk` keys and values
            // of the map's key and value sizes, and at 8-byte positions.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    std::ptr::from_mut(&mut attr),
                    size_of::<BatchAttr>(),
                )
            };
            let error = (ret < 0).then(io::Error::last_os_error);
            let filled = attr.count as usize;
            match error.as_ref().and_then(io::Error::raw_os_error) {
                None | Some(libc::ENOENT) => {
                    out.extend(keys[..filled].iter().copied().zip(values[..filled].iter().copied()));
                    if error.is_some() {
                        // ENOENT: the walk reached the end.
                        return Ok(Some(out));
                    }
                }
                Some(libc::ENOSPC) => {
                    chunk *= 4;
                    continue 'restart;
                }
                Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) => return Ok(None),
                Some(_) => return Err(error.expect("an error")),
            }
            position = next;
            first = false;
        }
    }
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Writes `entries` with `BPF_MAP_UPDATE_BATCH`: one syscall instead of
/// one per entry (a new Maglev table is 16,381 entries). `Ok(false)`: the
/// kernel cannot batch this map, the caller writes entry by entry.
pub fn update_all<K: Pod, V: Pod>(map: &MapData, entries: &[(K, V)]) -> io::Result<bool> {
    if entries.is_empty() {
        return Ok(true);
    }
    let keys: Vec<K> = entries.iter().map(|(k, _)| *k).collect();
    let values: Vec<V> = entries.iter().map(|(_, v)| *v).collect();
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(entries.len()).expect("fewer than 2^32 entries"),
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: attr points at `count` keys and values of the map's key and
    // value sizes, which the kernel only reads.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, std::ptr::from_mut(&mut attr), size_of::<BatchAttr>())
    };
    if ret >= 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if attr.count == 0 => Ok(false),
        _ => Err(error),
    }
}
