//! Writing the cache of answers after symres has exited.
//!
//! A first run writes what it answered (15–25 MB for a large binary's 100k
//! frames) after its last line is out, but the run was not over until the
//! file was written: 0.03–0.1 s more before the exit a shell, a pipeline or
//! a script waits for, and as much CPU time on the run's clock (+9% on a
//! large debug build, +21% on node, measured by scripts/bench-symres). The
//! issue that asked for the cache allows it to be built in the background,
//! and the user waits for the output, not for the cache.
//!
//! So, once the output is flushed and every other thread has ended, symres
//! forks a child, `symres-cache`, that writes the file while the tool exits.
//! The child shares the answers through the fork's copy of memory (nothing
//! is gathered or copied for it), holds neither standard input nor standard
//! output (a reader of symres's output sees its end when symres exits), and
//! keeps standard error only under `-v`, to say what it wrote (a reader of
//! that stderr then sees its end once the write is done). The file is
//! written as before: aside, then renamed (a writer killed at any point
//! leaves no half file), merged with what is there, safe beside other runs.
//!
//! Neither process lets go of the answers: the fork shares their pages
//! until one side writes to them, and dropping 100k answers writes to
//! each one's count of references, so that nearly every page of the heap
//! was copied: in symres, that cost the first run as much as the write it
//! had handed away (node: +25 ms of 105, before it was left out).
//!
//! `LEAKD_SYMRES_CACHE_FOREGROUND=1` writes it before exiting, as before
//! (scripts that run symres twice and need the second run answered from
//! the cache, tests). A run with nothing new to write, a fork that fails,
//! or a process that still has other threads (a fork would copy only this
//! one, and a lock another held would stay locked in the child) writes in
//! the foreground too.

use std::os::fd::AsRawFd;

use leakd_symbolize::{log, CacheWrite};
use nix::unistd::{dup2, fork, ForkResult};

/// The environment variable that keeps the write in the foreground.
pub const FOREGROUND_ENV: &str = "LEAKD_SYMRES_CACHE_FOREGROUND";

/// Name of the child (in `ps`), so it is not taken for symres itself.
const NAME: &std::ffi::CStr = c"symres-cache";

/// Write `w` (see the module docs): in a child process that outlives this
/// one when it can, else now. Call after the last output is flushed.
pub fn write_cache(mut w: CacheWrite) {
    // Written here, the answers are not dropped either: the process is
    // about to exit, and the kernel frees them at once.
    let here = |mut w: CacheWrite| {
        w.run();
        std::mem::forget(w);
    };
    if w.is_light() || foreground() || !single_threaded() {
        here(w);
        return;
    }
    let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") else {
        here(w);
        return;
    };
    // SAFETY: this process has one thread (checked just above, and none is
    // started in between), so the child's copy of memory holds no lock
    // taken by a thread it lacks, and may allocate and run Rust code. It
    // never returns into the caller: it ends with _exit, which runs no
    // destructor and flushes no buffer of the parent's.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let verbose = log::enabled(1);
            let _ = nix::sys::prctl::set_name(NAME);
            // Not the parent's streams: its readers must see their end
            // when it exits. Standard error only under -v, to say what
            // was written.
            let fd = null.as_raw_fd();
            let _ = dup2(fd, 0);
            let _ = dup2(fd, 1);
            if !verbose {
                let _ = dup2(fd, 2);
            }
            drop(null);
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run())).is_ok();
            // SAFETY: ends this process at once, which is all it is for
            // (the answers are not dropped: that would write to every
            // page they share with the parent, a copy of each).
            unsafe { nix::libc::_exit(i32::from(!ok)) }
        }
        Ok(ForkResult::Parent { child }) => {
            // Not dropped: dropping the answers writes to each one's
            // count of references, and every page the fork shared with
            // the child would be copied for it (100k answers: most of the
            // heap, 20 ms on node). The process is about to exit.
            std::mem::forget(w);
            if log::enabled(1) {
                log::say(format_args!(
                    "cache: written by process {child} (symres-cache), after this one exits"
                ));
            }
        }
        Err(_) => here(w),
    }
}

/// Whether `FOREGROUND_ENV` asks for the write before exiting (set, not
/// empty, not "0").
fn foreground() -> bool {
    std::env::var_os(FOREGROUND_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether this process has a single thread (/proc/self/task lists one).
/// A thread just joined may still be listed for a few microseconds (the
/// kernel wakes its joiner before it has finished exiting): it is given
/// that long.
fn single_threaded() -> bool {
    for _ in 0..JOIN_TRIES {
        match std::fs::read_dir("/proc/self/task").map(|d| d.take(2).count()) {
            Ok(1) => return true,
            Ok(_) => std::thread::yield_now(),
            Err(_) => return false,
        }
    }
    false
}

/// Looks at /proc/self/task before a thread still listed is taken for a
/// live one (each look and yield takes microseconds).
const JOIN_TRIES: usize = 1000;
