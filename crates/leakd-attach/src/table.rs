//! The kernel's table of live blocks (see bpf/leakd-attach.h), read in
//! place.
//!
//! Why mmap and not map lookups: a report reads every live block, a
//! million on a busy process. The table is an array map created with
//! `BPF_F_MMAPABLE`, so it is mapped once and a report walks its buckets
//! in memory: no system call and no copy per block, where the hash map it
//! replaces was read in batches of lookups through the kernel. The mapping
//! is writable although nothing here writes: the keys are read as atomics
//! (the kernel changes them with atomic instructions), and Rust's atomics
//! may only point at memory valid for writes.
//!
//! Why a slot is read as it is: the kernel inserts and deletes while we
//! read. A slot is read as a seqlock reader would: its key (0 empty, 1
//! being written, else a block), then the record, then the key again; a
//! slot whose key changed in between is skipped (the block was freed, so
//! it is not outstanding anyway, or replaced, and then the next report
//! sees it). The key alone cannot tell a block freed and its address
//! allocated again by the same process, in the same slot, while we read
//! (the key goes back to what it was; the kernel fills a bucket's first
//! empty slot, and a malloc/free loop gets the same address each time,
//! so a reader preempted in the middle of a record would see it): the
//! record's time of allocation is its generation. The kernel writes it
//! last, after the rest of the record (seen in that order by other CPUs
//! on x86, the only target: see bucket_claim), so a reader that reads it
//! before and after the record and finds it unchanged read one block's
//! record (two allocations are never at the same nanosecond), never one
//! block's size with another's stack. A slot that keeps changing is skipped after
//! a few tries: its address is being freed and reused, so what it holds
//! is no leak.

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
        // SAFETY: a fresh shared mapping of the map's fd, at an address the
        // kernel picks; `len` is within the map's memory (its entries times
        // their size). Nothing else is mapped there, and it is unmapped in
        // drop, after every reader (all borrow self).
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
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
/// `base` must point at `n` buckets, aligned, valid for reads and writes
/// (the keys are read as atomics; nothing is written) for the whole call;
/// others may write them concurrently only as the kernel does (keys with
/// atomic instructions, a record only while its key is 1 (busy)).
unsafe fn scan(base: *mut Bucket, n: usize, mut f: impl FnMut(u32, &Alloc)) {
    for b in 0..n {
        // SAFETY: b < n, so the bucket is within the caller's buckets.
        let bucket = unsafe { base.add(b) };
        // SAFETY: a field of that bucket, its pointer made without a
        // reference (others write the bucket meanwhile).
        let keys = unsafe { ptr::addr_of_mut!((*bucket).keys) }.cast::<u64>();
        // SAFETY: as for keys.
        let recs = unsafe { ptr::addr_of!((*bucket).recs) }.cast::<Alloc>();
        for i in 0..SLOTS as usize {
            // SAFETY: i < SLOTS, the arrays' length; a key is a naturally
            // aligned u64 the kernel only writes atomically, and
            // the mapping is valid for reads and writes (see Table::new),
            // as AtomicU64::from_ptr requires; only loads are made.
            let key = unsafe { AtomicU64::from_ptr(keys.add(i)) };
            // SAFETY: i < SLOTS, within the bucket's records.
            let rec = unsafe { recs.add(i) };
            // SAFETY: the key and record of one slot of the caller's
            // buckets, written only as read_slot expects.
            if let Some(a) = unsafe { read_slot(key, rec) } {
                f(rec_pid(&a), &a);
            }
        }
    }
}

/// Tries at reading a slot that changes while read.
const READ_TRIES: usize = 4;

/// The record of one slot, if it holds a block (see the module's docs).
///
/// # Safety
/// `rec` must be readable and aligned; the kernel writes it only while
/// `key` reads 1 (busy), `ts_ns` last, and publishes it by setting `key`
/// atomically.
unsafe fn read_slot(key: &AtomicU64, rec: *const Alloc) -> Option<Alloc> {
    for _ in 0..READ_TRIES {
        let k = key.load(Ordering::Acquire);
        if k <= u64::from(sys::LEAKD_ATTACH_KEY_BUSY) {
            return None;
        }
        // SAFETY: readable and aligned (the caller's contract); volatile
        // reads, since the kernel may rewrite the slot meanwhile (checked
        // below: its key, then its generation, in the reverse order of
        // the kernel's last two writes: a record read in part from a new
        // block sees that block's key only after its time).
        let ts = unsafe { ptr::addr_of!((*rec).ts_ns) };
        // SAFETY: as above, the record's time alone.
        let t0 = unsafe { ptr::read_volatile(ts) };
        fence(Ordering::Acquire);
        // SAFETY: as above, the whole record.
        let a = unsafe { ptr::read_volatile(rec) };
        fence(Ordering::Acquire);
        let k2 = key.load(Ordering::Acquire);
        // SAFETY: as above, the record's time alone.
        let t1 = unsafe { ptr::read_volatile(ts) };
        if k2 == k && t1 == t0 {
            return Some(a);
        }
    }
    None
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

    fn read(buckets: &mut [Bucket]) -> Vec<(u32, u64)> {
        let mut got = Vec::new();
        // SAFETY: a slice of buckets, borrowed mutably, nobody else writing.
        unsafe { scan(buckets.as_mut_ptr(), buckets.len(), |pid, a| got.push((pid, a.size))) };
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
        assert_eq!(read(&mut t), vec![(41, 16), (42, 128)]);
        assert_eq!(read(&mut []), vec![]);
    }

    /// The kernel's free and new insert of the same address in the same
    /// slot, over and over while a reader reads it: the key goes back to
    /// the same value each time, so only the record's generation (its
    /// time, written last) can tell a record mixed from two blocks, and
    /// none may be returned. Blocks of even times are x's, odd y's.
    #[test]
    fn never_returns_a_record_mixed_from_two_blocks() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;

        const K: u64 = 0x5000;
        let words = |a: &Alloc| {
            [a.size, a.ts_ns, a.caller, u64::from(a.stack_id) | u64::from(a.pid_op) << 32]
        };
        let x = Alloc { ts_ns: 0, ..rec(41, 16) };
        let y = Alloc { ts_ns: 1, caller: 0x99, stack_id: 3, ..rec(41, 4040) };
        let slot = Arc::new((AtomicU64::new(K), [const { AtomicU64::new(0) }; 4]));
        for (w, v) in slot.1.iter().zip(words(&x)) {
            w.store(v, Ordering::Relaxed);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (slot, stop) = (slot.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    // As table_take, then bucket_claim: empty, busy, the
                    // record word by word with its time last, then the
                    // same key.
                    slot.0.store(0, Ordering::SeqCst);
                    slot.0.store(u64::from(sys::LEAKD_ATTACH_KEY_BUSY), Ordering::SeqCst);
                    let w = words(&Alloc { ts_ns: n, ..if n % 2 == 0 { x } else { y } });
                    for i in [0, 2, 3, 1] {
                        slot.1[i].store(w[i], Ordering::Release);
                    }
                    slot.0.swap(K, Ordering::SeqCst);
                    n += 1;
                }
            })
        };
        let (mut read, mut seen) = (0, [false; 2]);
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(1500) {
            // SAFETY: the four words are laid out as an Alloc (32 bytes,
            // 8-aligned); the writer changes them only while the key is 1,
            // its time last.
            let got = unsafe { read_slot(&slot.0, slot.1.as_ptr().cast::<Alloc>()) };
            if let Some(a) = got {
                let want = if a.ts_ns % 2 == 0 { x } else { y };
                assert!(
                    (a.size, a.caller, a.stack_id, a.pid_op)
                        == (want.size, want.caller, want.stack_id, want.pid_op),
                    "a mixed record: {:?}",
                    (a.size, a.ts_ns, a.caller, a.stack_id)
                );
                seen[(a.ts_ns % 2) as usize] = true;
                read += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(read > 0, "no read succeeded");
        assert!(seen[0] || seen[1]);
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
