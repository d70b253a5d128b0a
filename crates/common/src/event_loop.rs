//! The one loop every streaming tool runs.
//!
//! It waits on everything that can end or advance a run in a single poll():
//! the ring buffer, SIGINT/SIGTERM (through a self-pipe), the traced process
//! exiting (a pidfd), stdout's reader going away (POLLERR on a pipe whose
//! reader closed), `--duration` and `--interval`. Waiting on the pidfd rather
//! than polling /proc means a target's last events are always drained: they
//! were written to the ring before the process could exit.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::bpf::LostCounter;
use crate::launch::Launched;
use crate::out::Output;
use crate::target::Target;

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Signal,
    Duration,
    /// The traced process exited; for a launched command, its exit status.
    TargetExited(Option<i32>),
    /// Nobody reads stdout any more.
    OutputClosed,
}

/// What a tool does with events and interval ticks.
pub trait Handler {
    fn event(&mut self, data: &[u8], out: &mut Output) -> Result<()>;
    fn interval(&mut self, _out: &mut Output) -> Result<()> {
        Ok(())
    }
    /// SIGUSR1 arrived: a tool that reports does so now; the others
    /// ignore it (it must not kill a tracer).
    fn usr1(&mut self, _out: &mut Output) -> Result<()> {
        Ok(())
    }
}

pub struct EventLoop {
    sig_r: UnixStream,
    usr1_r: UnixStream,
    target: Option<(OwnedFd, Option<Launched>)>,
    deadline: Option<Instant>,
    interval: Option<Duration>,
    /// `cgroup.events` of a container or pod traced: the run ends when
    /// no process is left in it.
    cgroup_events: Option<PathBuf>,
}

/// How often the lost-event counters are checked during a run.
const LOST_CHECK: Duration = Duration::from_secs(1);
/// The BPF side wakes us only once a batch has accumulated
/// (leakd_rb_flags in bpf/leakd.bpf.h); this bounds the latency of a quiet
/// stream.
const RING_POLL: Duration = Duration::from_millis(50);

impl EventLoop {
    pub fn new(duration: Option<Duration>, interval: Option<Duration>) -> Result<Self> {
        let (sig_r, sig_w) = UnixStream::pair().context("socketpair")?;
        sig_r.set_nonblocking(true)?;
        // SIGHUP too: a closed terminal ends the run like Ctrl-C, with the
        // final lines written; unless it is ignored (`nohup`), which stays so.
        for sig in
            [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP]
        {
            if sig == signal_hook::consts::SIGHUP && is_ignored(sig) {
                continue;
            }
            signal_hook::low_level::pipe::register(sig, sig_w.try_clone()?)
                .context("installing signal handler")?;
        }
        let (usr1_r, usr1_w) = UnixStream::pair().context("socketpair")?;
        usr1_r.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGUSR1, usr1_w)
            .context("installing signal handler")?;
        Ok(EventLoop {
            sig_r,
            usr1_r,
            target: None,
            deadline: duration.map(|d| Instant::now() + d),
            interval,
            cgroup_events: None,
        })
    }

    /// Start on the target once the probes are attached: watch a `-p`
    /// process, or release the held command and watch it, or a container's
    /// or pod's cgroup. `on_target` sees the target's pids first (e.g. to
    /// read their mappings, which vanish when they exit).
    pub fn start_target(&mut self, target: Target, mut on_target: impl FnMut(u32)) -> Result<()> {
        let Target { requested_pid, held, scope } = target;
        if let Some(s) = &scope {
            for pid in s.cgroup.pids() {
                on_target(pid);
            }
            // A container or pod that exits ends the run, as a -p process
            // does; a --cgroup may be empty at first (filled later).
            if s.selected.is_some() {
                self.watch_cgroup(&s.cgroup.dir);
            }
        }
        if let Some(pid) = requested_pid {
            on_target(pid);
            self.watch(pid, None)?;
        }
        if let Some(held) = held {
            let launched = held.release()?;
            on_target(launched.pid);
            self.watch(launched.pid, Some(launched))?;
        }
        Ok(())
    }

    /// End the run when `pid` exits (a `-p` target, or our launched command,
    /// which is then reaped for its exit status).
    pub fn watch(&mut self, pid: u32, launched: Option<Launched>) -> Result<()> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
        // no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("watching process {pid}"));
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        self.target = Some((fd, launched));
        Ok(())
    }

    /// End the run when cgroup `dir` (a container's, a pod's) and its
    /// subtree have no process left, as a `-p` run ends with its process.
    /// Checked at every wakeup (at least once a second).
    pub fn watch_cgroup(&mut self, dir: &Path) {
        self.cgroup_events = Some(dir.join("cgroup.events"));
    }

    pub fn run(
        &mut self,
        mut ring: Option<&mut RingBuf<MapData>>,
        out: &mut Output,
        lost: &mut LostCounter,
        handler: &mut dyn Handler,
    ) -> Result<End> {
        let start = Instant::now();
        let mut next_tick = self.interval.map(|i| start + i);
        let mut next_lost = start + LOST_CHECK;
        let stdout = std::io::stdout();
        let end = loop {
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                break End::Duration;
            }
            let mut wake = next_lost;
            let ring_wake = ring.is_some().then(|| now + RING_POLL);
            for t in [self.deadline, next_tick, ring_wake].into_iter().flatten() {
                wake = wake.min(t);
            }
            let ms = wake.saturating_duration_since(now).as_millis().min(i32::MAX as u128) as i32;
            let (sig_ready, out_closed, usr1_ready, target_ready) = {
                let mut fds = vec![
                    PollFd::new(self.sig_r.as_fd(), PollFlags::POLLIN),
                    PollFd::new(stdout.as_fd(), PollFlags::empty()),
                    PollFd::new(self.usr1_r.as_fd(), PollFlags::POLLIN),
                ];
                if let Some((pidfd, _)) = &self.target {
                    fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
                }
                if let Some(r) = ring.as_deref() {
                    fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e).context("poll"),
                }
                let ready =
                    |i: usize| fds.get(i).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
                (ready(0), ready(1), ready(2), self.target.is_some() && ready(3))
            };
            if let Some(r) = ring.as_deref_mut() {
                drain(r, out, handler, Instant::now() + DRAIN_SLICE)?;
            }
            out.flush()?;
            if out_closed {
                break End::OutputClosed;
            }
            if sig_ready {
                let mut buf = [0u8; 64];
                let _ = self.sig_r.read(&mut buf);
                break End::Signal;
            }
            if usr1_ready {
                let mut buf = [0u8; 64];
                let _ = self.usr1_r.read(&mut buf);
                handler.usr1(out)?;
                out.flush()?;
            }
            if target_ready {
                let status =
                    self.target.as_ref().and_then(|(_, l)| l.as_ref()).and_then(Launched::reap);
                break End::TargetExited(status);
            }
            if self.cgroup_events.as_deref().is_some_and(cgroup_empty) {
                break End::TargetExited(None);
            }
            let now = Instant::now();
            if let (Some(t), Some(i)) = (next_tick, self.interval) {
                if now >= t {
                    handler.interval(out)?;
                    lost.report(out)?;
                    next_tick = Some(t + i);
                }
            }
            if now >= next_lost {
                lost.report(out)?;
                next_lost = now + LOST_CHECK;
            }
        };
        if !matches!(end, End::TargetExited(_)) {
            self.stop_launched();
        }
        if end != End::OutputClosed {
            if let Some(r) = ring {
                // What the ring holds at the end; the producers of a traced
                // command have stopped, but system-wide (or -p on a busy
                // process) they have not, so the ring may never empty: read
                // for FINAL_DRAIN at most, which covers a full ring.
                drain(r, out, handler, Instant::now() + FINAL_DRAIN)?;
            }
            lost.report(out)?;
            out.flush()?;
        }
        // No probe is attached from here on; the tool still reports.
        crate::detach::after_exit();
        Ok(end)
    }

    /// A command we launched does not outlive a run that ended before it
    /// (--duration, a signal, closed output): it gets SIGTERM, as `timeout`
    /// would send, rather than running on untraced and orphaned, and
    /// SIGKILL if it is still there after [`KILL_GRACE`] (it ignores or
    /// handles SIGTERM without exiting). Sent through the pidfd, so they
    /// cannot reach a recycled pid.
    fn stop_launched(&self) {
        if let Some((pidfd, Some(_))) = &self.target {
            send(pidfd, libc::SIGTERM);
            // The pidfd becomes readable when the process exits.
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            let deadline = Instant::now() + KILL_GRACE;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    send(pidfd, libc::SIGKILL);
                    return;
                }
                let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX);
                match poll(&mut fds, ms) {
                    Ok(n) if n > 0 => return,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => {
                        send(pidfd, libc::SIGKILL);
                        return;
                    }
                }
            }
        }
    }
}

/// How long a launched command has to exit after SIGTERM before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Send `sig` to the process of a pidfd.
fn send(pidfd: &OwnedFd, sig: i32) {
    // SAFETY: pidfd_send_signal takes a pidfd we own, a signal number, a
    // null siginfo and no flags; no memory is passed.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

/// Whether a cgroup's `cgroup.events` says no process is left in its
/// subtree (or the cgroup is gone).
fn cgroup_empty(events: &Path) -> bool {
    match std::fs::read_to_string(events) {
        Ok(s) => s.lines().any(|l| l == "populated 0"),
        Err(_) => true,
    }
}

/// Whether `sig` is currently ignored (SIG_IGN inherited from `nohup`).
fn is_ignored(sig: i32) -> bool {
    // SAFETY: a zeroed sigaction is a valid out-parameter; a null new action
    // makes this a pure query.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Time spent handling events per wakeup at most: producers that outpace us
/// must not keep us from seeing a signal, the deadline or a closed stdout.
const DRAIN_SLICE: Duration = Duration::from_millis(50);
/// Time spent reading what the ring holds once the run has ended.
const FINAL_DRAIN: Duration = Duration::from_secs(1);
/// Events handled between two looks at the clock.
const CLOCK_EVERY: usize = 256;

/// Handle events until the ring is empty (`false`) or `until` has passed
/// (`true`: more may be waiting).
fn drain(
    ring: &mut RingBuf<MapData>,
    out: &mut Output,
    handler: &mut dyn Handler,
    until: Instant,
) -> Result<bool> {
    loop {
        for _ in 0..CLOCK_EVERY {
            let Some(item) = ring.next() else { return Ok(false) };
            handler.event(&item, out)?;
        }
        if Instant::now() >= until {
            return Ok(true);
        }
    }
}
