//! Software prefetches: a line's lookups (a dozen frames or more) each
//! miss the cache once or twice in tables of megabytes; asking for all
//! their memory first lets those misses overlap instead of following one
//! another.

/// Ask the CPU to bring the cache line at the start of `b` in, without
/// waiting for it.
pub fn prefetch(b: &[u8]) {
    if !b.is_empty() {
        prefetch_ptr(b.as_ptr());
    }
}

/// `prefetch` of the line holding `p`, which must point into memory the
/// program holds.
pub fn prefetch_ptr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and never faults
    // (callers pass an address inside memory they hold all the same). SSE
    // is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
