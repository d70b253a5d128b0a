//! The kernel's table of live blocks (see bpf/leakd-attach.h), read in
//! place.
//!
//! Why mmap and not map lookups: a report reads every live block, a
//! million on a busy process. The table is an array map created with
//! `BPF_F_MMAPABLE`, so it is mapped once, read-only, and a report walks
//! its buckets in memory: no system call and no copy per block, where the
//! hash map it replaces was read in batches of lookups through the kernel.
//!
//! Why a key is read twice: the kernel inserts and deletes while we read.
//! A slot is read as a seqlock reader would: its key (0 empty, 1 being
//! written, else a block), then the record, then the key again; a slot
//! whose key changed in between is skipped (the block was freed, so it is
//! not outstanding anyway, or replaced, and then the next report sees it).

use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, AtomicU64, Ordering};

use aya::maps::{Array, MapData};

use leakd_common::{Context, Result};

use crate::sys;

pub(crate) type Bucket = sys::leakd_attach_bucket;
/// A live block's record, as the kernel keeps it.
pub(crate) type Alloc = sys::leakd_attach_alloc;

const SLOTS: u64 = sys::LEAKD_ATTACH_SLOTS as u64;
const WINDOW: u64 = sys::LEAKD_ATTACH_WINDOW as u64;
const BUCKET_BYTES: u64 = std::mem::size_of::<Bucket>() as u64;

/// The home buckets of a table for `max_allocs` blocks: twice as many
/// slots as blocks, so that windows rarely fill before `max_allocs` do
/// (with 7 slots a bucket and a window of 8 buckets, an insert into a
/// table holding `max_allocs` blocks finds its window full about once in
/// a million; blocks beyond `max_allocs` are refused first).
pub(crate) fn home_buckets(max_allocs: u32) -> u32 {
    // At most ceil(2 * (2^32 - 1) / 7) < 2^31: fits.
    (2 * u64::from(max_allocs)).div_ceil(SLOTS) as u32
}

/// Entries of the kernel's array for `home` home buckets: those and the
/// window's tail (blocks spill into the next buckets; the last home
/// bucket's too).
pub(crate) fn map_entries(home: u32) -> u32 {
    home + (WINDOW - 1) as u32
}

/// Kernel memory the table for `max_allocs` blocks takes, preallocated
/// (rounded to pages).
pub(crate) fn table_bytes(max_allocs: u32) -> u64 {
    (u64::from(map_entries(home_buckets(max_allocs))) * BUCKET_BYTES).next_multiple_of(4096)
}

/// The mapped table.
pub(crate) struct Table {
    /// The map whose memory is mapped: kept open while it is.
    _map: Array<MapData, Bucket>,
    base: NonNull<Bucket>,
    buckets: usize,
    len: usize,
}

impl Table {
    pub(crate) fn new(map: Array<MapData, Bucket>) -> Result<Self> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};

        let buckets = map.len() as usize;
        let len = buckets
            .checked_mul(std::mem::size_of::<Bucket>())
            .filter(|&l| l > 0)
            .context("the allocs table has no buckets")?;
        let fd = map.map().fd().as_fd().as_raw_fd();
        // SAFETY: a fresh read-only shared mapping of the map's fd, at an
        // address the kernel picks; `len` is within the map's memory (its
        // entries times their size). Nothing else is mapped there, and it
        // is unmapped in drop, after every reader (all borrow self).
        let p =
            unsafe { libc::mmap(ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(leakd_common::Error::new(std::io::Error::last_os_error())
                .context("mapping the allocs table (mmap)"));
        }
        let base = NonNull::new(p.cast::<Bucket>()).context("mmap returned null")?;
        Ok(Table { _map: map, base, buckets, len })
    }

    /// Call `f(pid, record)` for every live block.
    pub(crate) fn for_each_block(&self, f: impl FnMut(u32, &Alloc)) {
        // SAFETY: base points at `buckets` buckets, mapped (page-aligned,
        // so aligned for Bucket) until self is dropped.
        unsafe { scan(self.base.as_ptr(), self.buckets, f) }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new, of this length; no reference
        // into it outlives for_each_block.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// The tgid of a record.
pub(crate) fn rec_pid(a: &Alloc) -> u32 {
    a.pid_op >> sys::LEAKD_ATTACH_OP_BITS
}

/// Call `f(pid, record)` for each block of the `n` buckets at `base` (see
/// the module's docs for the order of reads).
///
/// # Safety
/// `base` must point at `n` buckets, aligned, readable for the whole call;
/// others may write them concurrently only as the kernel does (keys with
/// atomic instructions, a record only while its key is 1 (busy)).
unsafe fn scan(base: *const Bucket, n: usize, mut f: impl FnMut(u32, &Alloc)) {
    for b in 0..n {
        // SAFETY (the block): b < n, so the bucket is within the caller's
        // buckets; the field pointers are made without references.
        let bucket = unsafe { base.add(b) };
        let keys = unsafe { ptr::addr_of!((*bucket).keys) }.cast::<u64>();
        let recs = unsafe { ptr::addr_of!((*bucket).recs) }.cast::<Alloc>();
        for i in 0..SLOTS as usize {
            // SAFETY: i < SLOTS, the arrays' length; a key is a naturally
            // aligned u64 the kernel only writes atomically, and
            // AtomicU64 only loads through the pointer (no write needs
            // the mapping to be writable).
            let key = unsafe { AtomicU64::from_ptr(keys.add(i).cast_mut()) };
            let k = key.load(Ordering::Acquire);
            if k <= u64::from(sys::LEAKD_ATTACH_KEY_BUSY) {
                continue;
            }
            // SAFETY: within the bucket; a volatile read, since the kernel
            // may rewrite the slot meanwhile (checked just below).
            let rec = unsafe { ptr::read_volatile(recs.add(i)) };
            fence(Ordering::Acquire);
            if key.load(Ordering::Relaxed) != k {
                continue;
            }
            f(rec_pid(&rec), &rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pid: u32, size: u64) -> Alloc {
        Alloc {
            size,
            ts_ns: 7,
            caller: 0x1234,
            stack_id: 9,
            pid_op: pid << sys::LEAKD_ATTACH_OP_BITS | 12,
        }
    }

    fn read(buckets: &[Bucket]) -> Vec<(u32, u64)> {
        let mut got = Vec::new();
        // SAFETY: a slice of buckets, nobody else writing.
        unsafe { scan(buckets.as_ptr(), buckets.len(), |pid, a| got.push((pid, a.size))) };
        got
    }

    #[test]
    fn reads_published_slots_only() {
        let mut t = vec![Bucket::default(); 3];
        t[0].keys[0] = 0x5000;
        t[0].recs[0] = rec(41, 16);
        // Being written: skipped, whatever its record holds.
        t[0].keys[1] = u64::from(sys::LEAKD_ATTACH_KEY_BUSY);
        t[0].recs[1] = rec(41, 32);
        // Empty, with a stale record: skipped.
        t[1].recs[3] = rec(41, 64);
        // The last slot of the last bucket, another process at the same
        // address (keys differ by the pid's bits).
        t[2].keys[6] = 0x5000 ^ (42u64 << 47);
        t[2].recs[6] = rec(42, 128);
        assert_eq!(read(&t), vec![(41, 16), (42, 128)]);
        assert_eq!(read(&[]), vec![]);
    }

    #[test]
    fn mirrors_the_kernels_layout() {
        // Keys and the spill counter fill the first cache line; buckets
        // are whole cache lines, so every bucket's keys are one line.
        assert_eq!(std::mem::offset_of!(Bucket, keys), 8);
        assert_eq!(std::mem::offset_of!(Bucket, recs), 64);
        assert_eq!(BUCKET_BYTES % 64, 0);
        assert_eq!(std::mem::size_of::<Alloc>(), 32);
        assert_eq!(rec_pid(&rec(4_194_303, 1)), 4_194_303);
    }

    #[test]
    fn sizes_the_table_for_twice_the_blocks() {
        assert_eq!(home_buckets(1), 1);
        assert_eq!(home_buckets(7), 2);
        assert_eq!(home_buckets(1_000_000), 285_715);
        assert_eq!(map_entries(home_buckets(1)), 8);
        assert!(u64::from(home_buckets(u32::MAX)) * SLOTS >= 2 * u64::from(u32::MAX));
        assert!(map_entries(home_buckets(u32::MAX)) < u32::MAX);
        // 1M blocks: ~87 MiB, where the hash map took ~122 MiB.
        assert_eq!(table_bytes(1_000_000), 91_435_008);
    }
}
