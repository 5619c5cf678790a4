//! An array map of `u32` values created with `BPF_F_MMAPABLE`, mapped
//! into this process: its values are read and written as memory, with no
//! syscall per element. A Maglev table is 16,381 values; writing one with
//! `BPF_MAP_UPDATE_BATCH` took the kernel a millisecond or more (it
//! copies and stores each element in turn), reading it back with
//! `BPF_MAP_LOOKUP_BATCH` as long, and a node has a table per NodePort
//! frontend.
//!
//! The kernel stores each array value in 8 bytes (value sizes are
//! rounded up to 8), so value `i` of a `u32` array is at byte `8 * i`.
//! Values are accessed as `AtomicU32` with relaxed ordering: a BPF
//! program may read a value while it is written, and sees the old or the
//! new id, never a torn one.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::{Array, IterableMap as _, MapData};

/// Bytes between consecutive values in an array map's memory.
const VALUE_STRIDE: usize = 8;

pub struct MappedArray {
    base: NonNull<u8>,
    /// Bytes mapped (a whole number of pages).
    len: usize,
    values: usize,
}

impl MappedArray {
    /// Maps every value of `array`, which must have been created with
    /// `BPF_F_MMAPABLE` (the kernel refuses others with EINVAL).
    pub fn of(array: &Array<MapData, u32>) -> io::Result<Self> {
        let values = array.len() as usize;
        let page = page_size();
        let len = (values * VALUE_STRIDE).div_ceil(page) * page;
        let fd = array.map().fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the map's value area, which the
        // kernel keeps alive (and the map with it) until `munmap`.
        let address = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(address.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { base, len, values })
    }

    fn value(&self, index: usize) -> &AtomicU32 {
        assert!(index < self.values, "value {index} of {}", self.values);
        // SAFETY: in bounds (checked above), 8-byte aligned in a
        // page-aligned mapping that lives as long as `self`.
        unsafe { &*self.base.as_ptr().add(index * VALUE_STRIDE).cast::<AtomicU32>() }
    }

    /// Every value, in index order.
    pub fn read_all(&self) -> Vec<u32> {
        (0..self.values).map(|i| self.value(i).load(Ordering::Relaxed)).collect()
    }

    /// Sets the values from index 0 on, in order.
    pub fn write_all(&self, values: impl IntoIterator<Item = u32>) {
        for (index, value) in values.into_iter().enumerate() {
            self.value(index).store(value, Ordering::Relaxed);
        }
    }

    /// Sets the values at the given indexes.
    pub fn write(&self, changes: &[(u32, u32)]) {
        for &(index, value) in changes {
            self.value(index as usize).store(value, Ordering::Relaxed);
        }
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `of`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}
