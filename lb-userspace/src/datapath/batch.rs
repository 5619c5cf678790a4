//! Whole-map reads with `BPF_MAP_LOOKUP_BATCH`: one syscall per few
//! thousand entries instead of two per entry (aya only iterates key by
//! key), so the periodic full sync can read every map back cheaply; and
//! many-entry writes with `BPF_MAP_UPDATE_BATCH` (Maglev tables) and
//! deletes with `BPF_MAP_DELETE_BATCH` (conntrack garbage collection). A
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
    let mut out = Vec::new();
    let whole = for_each_chunk(map, |keys: &[K], values: &[V]| {
        out.extend(keys.iter().copied().zip(values.iter().copied()));
    })?;
    Ok(whole.then_some(out))
}

/// Reads `map` a chunk at a time, handing each chunk to `chunk`, so a
/// large map is walked in bounded memory. `Ok(false)`: the kernel cannot
/// batch this map (nothing was handed over). Entries added or removed
/// during the walk may be seen or not; none is seen twice unless it was
/// re-created meanwhile.
pub fn for_each_chunk<K: Pod, V: Pod>(map: &MapData, mut chunk: impl FnMut(&[K], &[V])) -> io::Result<bool> {
    let mut size = FIRST_CHUNK;
    // SAFETY: K and V are Pod (plain bytes, any bit pattern valid).
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; size];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; size];
    // The batch position: a bucket index (hash maps) or the last key
    // (arrays); 8 bytes hold either. `None`: from the start.
    let mut position: Option<u64> = None;
    loop {
        let mut next = 0u64;
        let mut attr = BatchAttr {
            in_batch: position.as_ref().map_or(0, |p| std::ptr::from_ref(p) as u64),
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: size as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at live buffers of `size` keys and values of
        // the map's key and value sizes, and at 8-byte positions.
        let ret = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, std::ptr::from_mut(&mut attr), size_of::<BatchAttr>())
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        let filled = attr.count as usize;
        match error.as_ref().and_then(io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {
                chunk(&keys[..filled], &values[..filled]);
                if error.is_some() {
                    // ENOENT: the walk reached the end.
                    return Ok(true);
                }
            }
            Some(libc::ENOSPC) => {
                // One bucket holds more than a chunk: the same position
                // again, with room for it.
                size *= 4;
                keys.resize(size, keys[0]);
                values.resize(size, values[0]);
                continue;
            }
            Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if position.is_none() => return Ok(false),
            Some(_) => return Err(error.expect("an error")),
        }
        position = Some(next);
    }
}

const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Deletes `keys` with `BPF_MAP_DELETE_BATCH`, a few thousand per
/// syscall; keys already gone are skipped. Returns how many were deleted,
/// or `None` if the kernel cannot batch this map (nothing deleted).
pub fn delete_all<K: Pod>(map: &MapData, keys: &[K]) -> io::Result<Option<usize>> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(FIRST_CHUNK)];
        let mut attr = BatchAttr {
            keys: batch.as_ptr() as u64,
            count: batch.len() as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at `count` keys of the map's key size, which
        // the kernel only reads.
        let ret = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_DELETE_BATCH, std::ptr::from_mut(&mut attr), size_of::<BatchAttr>())
        };
        let done = attr.count as usize;
        deleted += done;
        if ret >= 0 {
            rest = &rest[batch.len()..];
            continue;
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            // The kernel stops at a key that is gone (evicted, or removed
            // by the datapath's own re-balancing): skip it.
            Some(libc::ENOENT) => rest = &rest[done + 1..],
            Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if deleted == 0 => return Ok(None),
            _ => return Err(error),
        }
    }
    Ok(Some(deleted))
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// A batched write that stopped at an error: the first `done` entries
/// were written, the others not.
#[derive(Debug)]
pub struct Stopped {
    pub done: usize,
    pub error: io::Error,
}

/// Writes `entries` with `BPF_MAP_UPDATE_BATCH`: one syscall per few
/// thousand entries instead of one per entry (a new Maglev table is
/// 16,381 entries, a first sync of 10,000 Services 130,000). The kernel
/// writes them one after the other in the order given, so a batch keeps
/// the order a caller depends on. `Ok(false)`: the kernel cannot batch
/// this map (nothing written), the caller writes entry by entry.
pub fn update_in_order<K: Pod, V: Pod>(map: &MapData, entries: &[(K, V)]) -> Result<bool, Stopped> {
    let mut done = 0;
    for chunk in entries.chunks(FIRST_CHUNK) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at `count` keys and values of the map's key
        // and value sizes, which the kernel only reads.
        let ret = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, std::ptr::from_mut(&mut attr), size_of::<BatchAttr>())
        };
        if ret < 0 {
            let error = io::Error::last_os_error();
            // The entry that failed is not among the written ones.
            let written = (attr.count as usize).min(chunk.len() - 1);
            return match error.raw_os_error() {
                Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if done == 0 && written == 0 => Ok(false),
                _ => Err(Stopped { done: done + written, error }),
            };
        }
        done += chunk.len();
    }
    Ok(true)
}

/// [`update_in_order`] where a partial write is only an error.
pub fn update_all<K: Pod, V: Pod>(map: &MapData, entries: &[(K, V)]) -> io::Result<bool> {
    update_in_order(map, entries).map_err(|stopped| stopped.error)
}
