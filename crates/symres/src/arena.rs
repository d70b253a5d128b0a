//! Letting glibc's malloc grow a resolving thread's heap in one step.
//!
//! glibc gives each thread that allocates its own arena, and grows an
//! arena's heap by the least an allocation needs: a page at a time, each
//! an mprotect(2) that takes the process's memory-map lock for writing
//! (and waits for the other threads' page faults). A cold run over a
//! large debug build made 17,000 of them, 8,000 per resolving thread
//! (node: 2,300), where one thread made none (the main heap grows by
//! brk(2), 128 KiB at a time).
//!
//! So symres lets malloc serve blocks of up to 32 MiB from its heaps
//! (M_MMAP_THRESHOLD; above it, a block is a mapping of its own, as
//! before), and each resolving thread, as it starts, asks for two blocks
//! of 30 MiB, given back at once: its heap (64 MiB at most) is then
//! writable that far, and grows within it with no system call (glibc
//! gives freed pages back with madvise(2), leaving them writable). Nothing
//! is touched: the blocks cost address space, not memory.

/// The blocks each resolving thread's heap is made writable for at once:
/// more than a thread allocated in a cold run over a large debug build
/// (45 MiB), each under the 32 MiB a block from a heap may take, together
/// under the 64 MiB a heap may take.
const THREAD_HEAP: [usize; 2] = [30 << 20; 2];

/// Blocks up to this size come from malloc's heaps (glibc's default is
/// 128 KiB, raised as mappings are freed, up to this).
const HEAP_BLOCKS: i32 = 32 << 20;

/// Before the resolving threads start: let blocks of up to `HEAP_BLOCKS`
/// come from heaps (`grow_thread_heap` asks for one).
pub fn prepare() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of glibc's allocator, under its
    // own lock; any value is valid (one it refuses is left as it was).
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, HEAP_BLOCKS);
    }
}

/// In a resolving thread, before its first lookup: make its heap writable
/// for the `THREAD_HEAP` blocks (see the module docs).
pub fn grow_thread_heap() {
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        // Allocated and freed, never touched; kept from being optimized
        // away, which would leave the heap as it was.
        // try_reserve: a refusal (strict overcommit, a tight RLIMIT_AS)
        // costs the speed-up only, where with_capacity would abort.
        let blocks: Vec<Vec<u8>> = THREAD_HEAP
            .iter()
            .map(|&n| {
                let mut v = Vec::new();
                let _ = v.try_reserve_exact(n);
                v
            })
            .collect();
        drop(std::hint::black_box(blocks));
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Bytes writable from `p` on, by /proc/self/maps (the rest of the
    /// mapping that holds it, which must be writable).
    fn writable_from(p: usize) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for l in maps.lines() {
            let range = l.split(' ').next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) =
                (usize::from_str_radix(a, 16).unwrap(), usize::from_str_radix(b, 16).unwrap());
            if a <= p && p < b {
                assert!(l.contains(" rw-p "), "{l}");
                return b - p;
            }
        }
        panic!("{p:#x} not mapped:\n{maps}")
    }

    /// A resolving thread's heap is writable for both blocks at once
    /// (before: a page at a time, as it grew).
    #[test]
    fn a_resolving_threads_heap_is_writable_at_once() {
        prepare();
        let (before, after) = std::thread::spawn(|| {
            // In the thread's heap: under the size of a mapping of its own.
            let probe: Vec<u8> = std::hint::black_box(Vec::with_capacity(1 << 20));
            let p = probe.as_ptr() as usize;
            let before = writable_from(p);
            grow_thread_heap();
            (before, writable_from(p))
        })
        .join()
        .unwrap();
        assert!(after > 48 << 20, "{after} bytes writable after (before: {before})");
        assert!(after > before, "{after} bytes writable after (before: {before})");
    }
}
