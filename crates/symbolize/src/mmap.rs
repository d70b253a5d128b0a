//! Read-only file mappings that survive the file being truncated.
//!
//! Reading a 45 MB debug build into memory costs tens of milliseconds of
//! copying and page faults before the first answer, and most of it (the
//! code, most of the DWARF) is never looked at when a few addresses are
//! resolved. A mapping costs only the pages touched. Its danger is that a
//! file truncated under us (`cp` over a binary does that) turns every
//! access past the new end into SIGBUS, which would kill the process. So
//! while a mapping lives it is registered, and a SIGBUS handler replaces a
//! faulting page of a registered mapping with a page of zeros: the read is
//! retried, sees zeros (garbage to the parsers, which cope with garbage),
//! and the stream goes on. A SIGBUS anywhere else goes to the previous
//! handler (by default: the process dies, as it would have).
//!
//! A file rewritten in place (same size), or a page swapped for zeros,
//! changes bytes under a `&[u8]`: strictly, Rust's aliasing rules do not
//! allow that, and it is an accepted risk here, the same one every mmap-based
//! reader of binaries takes. In practice the parsers see garbage, as from a
//! corrupt file, and every read stays bounds-checked against the mapping's
//! fixed length, which stays mapped until the last reader drops.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use nix::libc;

/// Live mappings, as (start, len); (0, 0) is a free slot. Fixed-size and
/// atomic so the signal handler can read it without locks.
const SLOTS: usize = 256;
#[allow(clippy::declare_interior_mutable_const)]
const FREE: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(0), AtomicUsize::new(0));
static MAPS: [(AtomicUsize, AtomicUsize); SLOTS] = [FREE; SLOTS];
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static INSTALL: Once = Once::new();
static INSTALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The handler that was there before ours (a `libc::sigaction`, boxed and
/// leaked once, so the signal handler can read it).
static OLD: std::sync::atomic::AtomicPtr<libc::sigaction> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// A whole file mapped read-only.
#[derive(Debug)]
pub struct Map {
    ptr: *const u8,
    len: usize,
    slot: usize,
}

// SAFETY: the mapping is read-only and owned by this value; sharing the
// pointer between threads only shares reads of it.
unsafe impl Send for Map {}
// SAFETY: as above; `&Map` only gives out `&[u8]`.
unsafe impl Sync for Map {}

impl Map {
    /// Map `file` (of `len` bytes, as stat said), or `None` when that is not
    /// possible or not safe (empty file, no free slot, no SIGBUS handler):
    /// the caller then reads the file instead.
    pub fn new(file: &File, len: usize) -> Option<Map> {
        if len == 0 {
            return None;
        }
        install_handler();
        if !INSTALLED.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: a fresh private read-only mapping chosen by the kernel
        // (no MAP_FIXED), so no existing memory is affected; the result is
        // checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        let start = ptr as usize;
        for (i, (s, l)) in MAPS.iter().enumerate() {
            if s.compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                l.store(len, Ordering::Release);
                return Some(Map { ptr: ptr as *const u8, len, slot: i });
            }
        }
        // SAFETY: unmapping the mapping made above, which nothing refers to.
        unsafe { libc::munmap(ptr, len) };
        None
    }
}

impl std::ops::Deref for Map {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes until
        // `drop`; pages past a truncated end are replaced with zeros by the
        // SIGBUS handler instead of faulting (see the module docs).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // Unregister first: the handler must not patch the range once it
        // may be reused by another mapping.
        if let Some((s, l)) = MAPS.get(self.slot) {
            l.store(0, Ordering::Release);
            s.store(0, Ordering::Release);
        }
        // SAFETY: our own mapping; no `&[u8]` into it outlives `self`.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

fn install_handler() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if let Ok(p) = usize::try_from(page) {
            if p.is_power_of_two() {
                PAGE.store(p, Ordering::Relaxed);
            }
        }
        // SAFETY: zeroed sigaction structs are valid (empty mask, no flags);
        // the handler is an `extern "C"` function with the SA_SIGINFO
        // signature, and the old action is kept for chaining.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus
                as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut act.sa_mask);
            let old: *mut libc::sigaction = Box::into_raw(Box::new(std::mem::zeroed()));
            if libc::sigaction(libc::SIGBUS, &act, old) == 0 {
                OLD.store(old, Ordering::Release);
                INSTALLED.store(true, Ordering::Release);
            } else {
                drop(Box::from_raw(old));
            }
        }
    });
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let page = PAGE.load(Ordering::Relaxed);
    // Only a fault the kernel raised (si_code > 0) has a meaningful address;
    // a SIGBUS sent with kill() goes to the previous handler.
    let faults = if code > 0 { &MAPS[..] } else { &MAPS[..0] };
    for (s, l) in faults {
        let start = s.load(Ordering::Acquire);
        let len = l.load(Ordering::Acquire);
        if start != 0 && addr >= start && addr - start < len {
            let at = addr & !(page - 1);
            // SAFETY: `at` is a page inside one of our own read-only file
            // mappings (registered until it is unmapped); MAP_FIXED replaces
            // just that page with zeros, which is what a reader past the end
            // of a truncated file should see. mmap is a plain system call,
            // safe to make in a signal handler.
            let r = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    page,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if r != libc::MAP_FAILED {
                return;
            }
        }
    }
    // Not ours: hand over to the previous handler.
    let old = OLD.load(Ordering::Acquire);
    if old.is_null() {
        return;
    }
    // SAFETY: `old` was filled in by sigaction and is never freed. The
    // default action is reinstated and the signal raised again, so the
    // process ends as it would have without us; an ignored one is ignored
    // (a fault's SIGBUS cannot be: the kernel forces it); a handler function
    // is called as the kernel would have.
    unsafe {
        let h = (*old).sa_sigaction;
        if h == libc::SIG_IGN {
            return;
        }
        if h == libc::SIG_DFL {
            libc::sigaction(libc::SIGBUS, old, std::ptr::null_mut());
            libc::raise(libc::SIGBUS);
        } else if (*old).sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(h);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(h);
            f(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_mapping_reads_zeros_instead_of_crashing() {
        let path = std::env::temp_dir().join(format!("symres-mmap-{}", std::process::id()));
        let page = 4096 * 4;
        std::fs::write(&path, vec![7u8; page * 4]).unwrap();
        let f = File::open(&path).unwrap();
        let m = Map::new(&f, page * 4).expect("mapped");
        assert_eq!(m[page * 3], 7);
        // Truncate under the mapping, as `cp` over a binary would.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(page as u64).unwrap();
        let sum: u64 = m.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(m[0], 7);
        assert_eq!(m[page * 3 + 5], 0);
        assert_eq!(sum, 7 * page as u64, "the first {page} bytes, then zeros");
        drop(m);
        let _ = std::fs::remove_file(&path);
    }
}
