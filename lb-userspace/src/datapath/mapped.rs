//! An array map created with `BPF_F_MMAPABLE`, mapped into this
//! process: its values are read and written as memory, with no syscall
//! per element. A Maglev table is 16,381 values; writing one with
//! `BPF_MAP_UPDATE_BATCH` took the kernel a millisecond or more (it
//! copies and stores each element in turn), reading it back with
//! `BPF_MAP_LOOKUP_BATCH` as long, and a node has a table per NodePort
//! frontend. The port and address filters are 65,536 values each:
//! reading one back element by element took the kernel 16–18 ms, at
//! every full sync.
//!
//! The kernel stores each array value in 8 bytes (value sizes are
//! rounded up to 8), so value `i` is at byte `8 * i`. Values are accessed
//! as atomics with relaxed ordering: a BPF program may read a value while
//! it is written, and sees the old or the new one, never a torn one.

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering},
};

use aya::maps::{Array, IterableMap as _, MapData};

/// Bytes between consecutive values in an array map's memory.
const VALUE_STRIDE: usize = 8;

/// A value an array map's memory holds whole: loaded and stored at once.
pub trait MappedValue: Copy {
    /// # Safety
    /// `at` is valid and aligned for `Self` for the call.
    unsafe fn load(at: *mut u8) -> Self;
    /// # Safety
    /// As for `load`.
    unsafe fn store(at: *mut u8, value: Self);
}

macro_rules! mapped_value {
    ($($value:ty => $atomic:ty),*) => {$(
        impl MappedValue for $value {
            unsafe fn load(at: *mut u8) -> Self {
                // SAFETY: the caller's promise.
                unsafe { <$atomic>::from_ptr(at.cast()) }.load(Ordering::Relaxed)
            }
            unsafe fn store(at: *mut u8, value: Self) {
                // SAFETY: the caller's promise.
                unsafe { <$atomic>::from_ptr(at.cast()) }.store(value, Ordering::Relaxed)
            }
        }
    )*};
}
mapped_value!(u8 => AtomicU8, u32 => AtomicU32, u64 => AtomicU64);

pub struct MappedArray<V: MappedValue = u32> {
    base: NonNull<u8>,
    /// Bytes mapped (a whole number of pages).
    len: usize,
    values: usize,
    value: PhantomData<V>,
}

// SAFETY: the mapping is plain shared memory, reached only through
// atomics; it stays valid wherever the owner goes.
unsafe impl<V: MappedValue> Send for MappedArray<V> {}
// SAFETY: as above: every access is atomic.
unsafe impl<V: MappedValue> Sync for MappedArray<V> {}

impl MappedArray<u32> {
    /// Maps every value of `array`, which must have been created with
    /// `BPF_F_MMAPABLE` (the kernel refuses others with EINVAL).
    pub fn of(array: &Array<MapData, u32>) -> io::Result<Self> {
        Self::of_map(array.map(), array.len() as usize)
    }
}

impl<V: MappedValue> MappedArray<V> {
    /// Maps the `values` values of the array `map`, as `of` does.
    pub fn of_map(map: &MapData, values: usize) -> io::Result<Self> {
        let page = page_size();
        let len = (values * VALUE_STRIDE).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the map's value area, which the
        // kernel keeps alive (and the map with it) until `munmap`.
        let address = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(address.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { base, len, values, value: PhantomData })
    }

    fn at(&self, index: usize) -> *mut u8 {
        assert!(index < self.values, "value {index} of {}", self.values);
        // SAFETY: in bounds (checked above) of a mapping that lives as
        // long as `self`.
        unsafe { self.base.as_ptr().add(index * VALUE_STRIDE) }
    }

    fn get(&self, index: usize) -> V {
        // SAFETY: 8-byte aligned in a page-aligned mapping (`at`).
        unsafe { V::load(self.at(index)) }
    }

    fn set(&self, index: usize, value: V) {
        // SAFETY: as in `get`.
        unsafe { V::store(self.at(index), value) }
    }

    /// Every value, in index order.
    pub fn read_all(&self) -> Vec<V> {
        (0..self.values).map(|i| self.get(i)).collect()
    }

    /// Sets the values from index 0 on, in order.
    pub fn write_all(&self, values: impl IntoIterator<Item = V>) {
        for (index, value) in values.into_iter().enumerate() {
            self.set(index, value);
        }
    }

    /// Sets the values at the given indexes.
    pub fn write(&self, changes: &[(u32, V)]) {
        for &(index, value) in changes {
            self.set(index as usize, value);
        }
    }
}

impl<V: MappedValue> Drop for MappedArray<V> {
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
