//! Leaving the slow part of tearing down probes to after the tool exits.
//!
//! Detaching a uprobe waits for RCU grace periods, and the kernel detaches
//! one uprobe at a time: about 0.1 s each on an idle machine, several times
//! that under load. An allocation tracer has tens of probes (every allocator
//! function, entry and return, in every allocator file), so it took 2 s
//! idle and 7 to 12 s loaded to exit after its last line, holding up the
//! user's shell and every pipeline it was in. Dropping the links from
//! parallel threads did not help: the kernel serialises them (measured:
//! each close returned ~0.1 s after the previous one).
//!
//! So the tool forks a child that shares its file descriptors, the probes'
//! links among them, and closes only its standard streams. The child waits
//! until the tool has exited (a pipe whose write end only the tool holds
//! reads end-of-file then) and exits in turn: the probes are detached when
//! the last holder of each link closes it, which is now the child, after
//! the tool's exit status and output have reached whoever waits for them.
//! Meanwhile the probes stay attached a few seconds longer; their events
//! go nowhere.
//!
//! The child keeps only what the detach needs: anonymous-inode descriptors
//! (links, perf events, programs, maps). Any other descriptor the tool
//! inherited or opened (a pipe above stderr, a file, a socket) is closed, or
//! a reader waiting for its end-of-file would wait for the detach too. Its
//! signal handlers and mask go back to the defaults, so a SIGTERM or SIGHUP
//! ends it (its exit then detaches) instead of reaching the tool's handlers.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::OFlag;
use nix::unistd::{fork, pipe2, ForkResult};

/// Name of the child (in `ps`), so it is not taken for the tool itself.
const NAME: &[u8] = b"leakd-detach\0";

/// Hand the closing of this process's descriptors to a child that outlives
/// it (see the module docs). Call when the run is over and no new probe will
/// be attached; best effort: if the fork fails, the tool detaches on exit as
/// before.
pub fn after_exit() {
    // Listed before the fork: the child must not allocate.
    let foreign = foreign_fds();
    let Ok((r, w)) = pipe2(OFlag::O_CLOEXEC) else { return };
    // SAFETY: the child makes only async-signal-safe system calls (prctl,
    // signal, sigprocmask, close, read, _exit) on memory prepared before
    // the fork, and never
    // returns into Rust code, so a lock another thread held at fork time
    // (the allocator's) is never taken in it.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let (rfd, wfd) = (r.as_raw_fd(), w.as_raw_fd());
            let mut byte = 0u8;
            // SAFETY: plain system calls on descriptors this process owns;
            // the buffer is a local byte.
            unsafe {
                libc::prctl(libc::PR_SET_NAME, NAME.as_ptr() as libc::c_ulong, 0, 0, 0);
                // Not the tool's: its reader must see end-of-file when the
                // tool exits, and the tool's write end must be the last.
                for fd in [wfd, libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
                    libc::close(fd);
                }
                for &fd in &foreign {
                    if fd != rfd {
                        libc::close(fd);
                    }
                }
                for sig in 1..libc::SIGRTMIN() {
                    if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                        libc::signal(sig, libc::SIG_DFL);
                    }
                }
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                // Until the tool exits (0) or the read fails for good.
                while libc::read(rfd, (&mut byte as *mut u8).cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                libc::_exit(0);
            }
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(r);
            // Held until this process exits: its closing is the signal.
            std::mem::forget(w);
        }
        Err(_) => {}
    }
}

/// The descriptors above stderr that the detach does not need: all but
/// anonymous inodes (`anon_inode:bpf_link`, `anon_inode:[perf_event]`, ...).
fn foreign_fds() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return Vec::new() };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let fd: RawFd = entry.file_name().to_str()?.parse().ok()?;
        let target = std::fs::read_link(entry.path()).ok()?;
        (fd > libc::STDERR_FILENO && !target.as_os_str().as_bytes().starts_with(b"anon_inode:"))
            .then_some(fd)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    #[test]
    fn foreign_fds_are_files_and_pipes_not_anonymous_inodes() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        // SAFETY: a plain system call; the descriptor is owned from here.
        let epoll = unsafe { OwnedFd::from_raw_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC)) };
        let fds = super::foreign_fds();
        for fd in [r.as_raw_fd(), w.as_raw_fd(), file.as_raw_fd()] {
            assert!(fds.contains(&fd), "{fd} not in {fds:?}");
        }
        assert!(epoll.as_raw_fd() > 2);
        assert!(!fds.contains(&epoll.as_raw_fd()), "{fds:?}");
        assert!(fds.iter().all(|&fd| fd > 2), "{fds:?}");
    }
}
