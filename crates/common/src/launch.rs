//! Launching the command to trace, held until the probes are in place.
//!
//! A tracer that starts its command first and attaches afterwards misses the
//! command's first events (BCC's tools do); one that execs without the
//! arguments or without a PATH lookup traces something else than the user
//! asked for (libbpf-tools' memleak does). So: resolve the path and build the
//! whole argv *before* forking, fork, and let the child wait on a pipe; the
//! parent loads and attaches everything, then writes one byte, and the child
//! execs. Between fork and exec the child only makes async-signal-safe system
//! calls and never allocates: another thread of the parent could hold the
//! allocator's lock at fork time (and an allocation tracer would see it).

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};

extern "C" {
    static environ: *const *const libc::c_char;
}

/// A forked child waiting for [`Held::release`] before it execs. Dropped
/// without being released (an error while attaching), the child exits
/// without running anything and is reaped.
#[derive(Debug)]
pub struct Held {
    pid: Pid,
    /// Written to let the child exec.
    go: OwnedFd,
    /// Set once the child was told to exec: Drop then leaves it alone.
    released: bool,
    exec_err: OwnedFd,
    display: String,
    /// `--user`'s name, for errors.
    user: Option<String>,
}

/// A launched command that has exec'd.
#[derive(Debug)]
pub struct Launched {
    pub pid: u32,
}

/// Find `cmd` like execvp does: a name with a slash is used as is, otherwise
/// each directory of PATH is searched for an executable regular file.
pub fn resolve(cmd: &OsStr) -> Result<PathBuf> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if cmd.as_bytes().contains(&b'/') {
        let p = PathBuf::from(cmd);
        if !p.exists() {
            bail!("cannot run {}: no such file", p.display());
        }
        return Ok(p);
    }
    let path =
        std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(cmd);
        if is_exec(&candidate) {
            return Ok(candidate);
        }
    }
    bail!("cannot run {}: command not found in PATH", cmd.to_string_lossy())
}

/// Who a launched command runs as (`--user`).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups, from the group database.
    pub groups: Vec<libc::gid_t>,
}

impl Credentials {
    /// A user by name, or by numeric uid (which must be in the password
    /// database, for its group and groups).
    pub fn lookup(spec: &str) -> Result<Self> {
        use nix::unistd::{getgrouplist, Uid, User};
        let user = match spec.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(spec),
        }
        .with_context(|| format!("--user {spec}: looking up the user"))?;
        let Some(user) = user else { bail!("--user {spec}: no such user") };
        let c_name = CString::new(user.name.as_bytes()).context("--user: name contains a NUL")?;
        let groups = getgrouplist(&c_name, user.gid)
            .with_context(|| format!("--user {spec}: reading the groups of {}", user.name))?;
        Ok(Credentials {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: groups.into_iter().map(|g| g.as_raw()).collect(),
        })
    }
}

/// How a command is launched besides its argv.
#[derive(Debug, Default)]
pub struct Options {
    /// Run as this user instead of ours.
    pub user: Option<Credentials>,
    /// Its standard output; `None`: our standard error, so that our own
    /// standard output stays the tool's JSON lines.
    pub stdout: Option<OwnedFd>,
}

/// What the child was doing when it failed, sent with the errno.
const STAGE_EXEC: i32 = 0;
const STAGE_STDOUT: i32 = 1;
const STAGE_USER: i32 = 2;

/// Fork a child that will exec `argv` once released.
pub fn spawn_held(argv: &[OsString], opts: &Options) -> Result<Held> {
    let Some(first) = argv.first() else { bail!("no command given after --") };
    let path = resolve(first)?;
    let c_path =
        CString::new(path.as_os_str().as_bytes()).context("command path contains a NUL byte")?;
    let c_args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("command argument contains a NUL byte")?;
    let mut ptrs: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let stdout_fd = opts.stdout.as_ref().map_or(libc::STDERR_FILENO, |f| f.as_raw_fd());
    let creds = opts.user.as_ref();
    let groups: &[libc::gid_t] = creds.map_or(&[], |c| &c.groups[..]);
    let (go_r, go_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let (err_r, err_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;

    // SAFETY: the child branch below only calls async-signal-safe functions
    // (close, dup2, read, write, signal, raw set*id system calls, execve,
    // _exit) on memory prepared before the fork, and never returns into
    // Rust code.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let go = go_r.as_raw_fd();
            let err = err_w.as_raw_fd();
            // SAFETY: see above; every pointer refers to memory built before
            // fork (c_path, ptrs and the CStrings they point into, environ).
            unsafe {
                // The parent's ends: holding the write end of `go` would keep
                // the read below from ever seeing EOF when the parent dies or
                // gives up, leaving this child stuck forever.
                libc::close(go_w.as_raw_fd());
                libc::close(err_r.as_raw_fd());
                // Rust ignores SIGPIPE; ignored signals survive exec, and the
                // command should get the default behaviour. Reset before the
                // release: a tracer counts from there, and this call is not
                // the command's.
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                let fail = |stage: i32| -> ! {
                    let report = [stage, *libc::__errno_location()];
                    libc::write(err, report.as_ptr().cast(), std::mem::size_of_val(&report));
                    libc::_exit(127)
                };
                // Before the release, like everything here: a tracer counts
                // the command's system calls from the release on.
                if libc::dup2(stdout_fd, libc::STDOUT_FILENO) < 0 {
                    fail(STAGE_STDOUT);
                }
                if let Some(c) = creds {
                    // Raw system calls: glibc's wrappers signal every thread
                    // of the process, and set*id in a forked child of a
                    // threaded parent is not async-signal-safe there. Groups
                    // first, uid last: after it, nothing else may be changed.
                    if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                        || libc::syscall(libc::SYS_setgid, c.gid) != 0
                        || libc::syscall(libc::SYS_setuid, c.uid) != 0
                    {
                        fail(STAGE_USER);
                    }
                }
                let mut b = 0u8;
                loop {
                    let n = libc::read(go, (&mut b as *mut u8).cast(), 1);
                    if n == 1 {
                        break;
                    }
                    if n < 0 && *libc::__errno_location() == libc::EINTR {
                        continue;
                    }
                    // The parent gave up (error before release): never run.
                    libc::_exit(127);
                }
                libc::execve(c_path.as_ptr(), ptrs.as_ptr(), environ);
                fail(STAGE_EXEC);
            }
        }
        ForkResult::Parent { child } => {
            drop(go_r);
            drop(err_w);
            Ok(Held {
                pid: child,
                go: go_w,
                released: false,
                exec_err: err_r,
                display: path.display().to_string(),
                user: creds.map(|c| c.name.clone()),
            })
        }
    }
}

impl Held {
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Let the child exec; returns once it has (or reports why it could not).
    pub fn release(mut self) -> Result<Launched> {
        // On failure Drop kills and reaps the child.
        nix::unistd::write(&self.go, &[1u8]).context("releasing the launched command")?;
        self.released = true;
        let mut buf = [0u8; 8];
        // EOF (0 bytes) means the exec succeeded: the CLOEXEC pipe closed.
        let n = loop {
            match nix::unistd::read(self.exec_err.as_raw_fd(), &mut buf) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other.unwrap_or(0),
            }
        };
        if n == 8 {
            let stage = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let _ = waitpid(self.pid, None);
            let e = std::io::Error::from_raw_os_error(errno);
            match stage {
                STAGE_STDOUT => bail!("cannot run {}: redirecting its output: {e}", self.display),
                STAGE_USER => bail!(
                    "cannot run {} as {}: {e}",
                    self.display,
                    self.user.as_deref().unwrap_or("?")
                ),
                _ => bail!("cannot run {}: {e}", self.display),
            }
        }
        let pid = self.pid.as_raw() as u32;
        wait_for_exe_mapping(pid);
        Ok(Launched { pid })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Never released (or the release failed): the child must not run
        // the command. Closing `go` alone is not enough if another child
        // forked meanwhile inherited it, so kill it, then reap it.
        if !self.released {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            while let Err(nix::errno::Errno::EINTR) = waitpid(self.pid, None) {}
        }
    }
}

/// Wait (at most ~50 ms) until the new program is in the process's maps.
///
/// The exec-error pipe closes when the kernel closes close-on-exec files,
/// which is *before* it maps the new program's segments; a tool that reads
/// the maps right away (to keep them for after the command exits) could see
/// none of the program. Shared libraries come later still (ld.so maps them),
/// which callers handle by re-reading the maps on demand.
fn wait_for_exe_mapping(pid: u32) {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return };
    // readlink says " (deleted)" where the maps parser strips it.
    let exe = match exe.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(b) => PathBuf::from(OsStr::from_bytes(b)),
        None => exe,
    };
    for _ in 0..200 {
        match crate::procmaps::read_maps(pid) {
            Ok(maps) if maps.iter().any(|m| m.exec && m.path.as_deref() == Some(exe.as_path())) => {
                return
            }
            Ok(_) => std::thread::sleep(std::time::Duration::from_micros(250)),
            Err(_) => return,
        }
    }
}

impl Launched {
    /// Reap the command; call after it has exited. Returns its exit status in
    /// shell convention (128+signal for a signal).
    pub fn reap(&self) -> Option<i32> {
        match waitpid(Pid::from_raw(self.pid as i32), None) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_command_dropped_unreleased_never_runs_and_is_reaped() {
        let marker = std::env::temp_dir().join(format!("leakd-held-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let argv: Vec<OsString> = ["/bin/touch".into(), marker.clone().into_os_string()].into();
        let held = spawn_held(&argv, &Options::default()).unwrap();
        let pid = held.pid();
        drop(held);
        // Reaped by the drop: the pid no longer exists (not even a zombie).
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "child {pid} left behind");
        assert!(!marker.exists(), "the command ran");
    }

    #[test]
    fn a_released_command_runs_with_its_arguments() {
        let marker = std::env::temp_dir().join(format!("leakd-released-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let argv: Vec<OsString> = ["touch".into(), marker.clone().into_os_string()].into();
        let launched = spawn_held(&argv, &Options::default()).unwrap().release().unwrap();
        assert_eq!(launched.reap(), Some(0));
        assert!(marker.exists());
        let _ = std::fs::remove_file(&marker);
    }
}
