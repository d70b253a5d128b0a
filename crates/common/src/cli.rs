//! Options every tool shares, defined once and flattened into each tool's
//! clap definition, so `-p`, `-d`, `--cgroup`, `-v` and `-- CMD` mean the same
//! thing everywhere (and appear the same way in every man page).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use crate::container::{self, CgroupTarget, ContainerInfo, Selected};
use crate::text::parse_seconds;

/// Which processes to trace: one PID, a command we launch, or everything.
#[derive(Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Trace only this process (by PID).
    #[arg(short = 'p', long = "pid", value_name = "PID", conflicts_with = "command")]
    pub pid: Option<u32>,

    /// Trace only tasks in this cgroup v2 and the cgroups below it (path to its directory, e.g.
    /// /sys/fs/cgroup/my.slice, or /sys/fs/cgroup/unified/... on hybrid hosts).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["container", "pod", "pod_uid"])]
    pub cgroup: Option<PathBuf>,

    /// Trace only this container: its name (podman, docker, containerd, CRI), its id, or a
    /// unique prefix of the id. Found from /proc/*/cgroup and the runtimes' files, no daemon
    /// asked; the container's whole cgroup is traced, processes started in it later included.
    #[arg(long, value_name = "NAME|ID", conflicts_with_all = ["pid", "command", "pod", "pod_uid"])]
    pub container: Option<String>,

    /// Trace only this Kubernetes pod (or podman pod): every container of it. Found from the
    /// kubepods cgroups and the CRI annotations the runtimes record; NAMESPACE may be left
    /// out when the name is unique on the node.
    #[arg(long, value_name = "[NAMESPACE/]NAME", conflicts_with_all = ["pid", "command", "pod_uid"])]
    pub pod: Option<String>,

    /// Trace only the pod with this uid (metadata.uid), as --pod.
    #[arg(long = "pod-uid", value_name = "UID", conflicts_with_all = ["pid", "command"])]
    pub pod_uid: Option<String>,

    /// Launch CMD with its arguments (PATH is searched) and trace it (execsnoop and syscount:
    /// and its children); probes are attached before it runs its first instruction. The tool
    /// ends when CMD exits; if the tool ends first (--duration, a signal, closed output), CMD
    /// is sent SIGTERM, then SIGKILL if it is still running 2 s later (CMD only: what it left
    /// running in the background is not signalled, as with `timeout --foreground`). CMD's
    /// standard output goes to the tool's standard error (standard output is the tool's JSON),
    /// or to --command-output.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,

    /// Run CMD as this user (a name or a numeric uid): its uid, primary group and
    /// supplementary groups, as `strace -u` does; the tool keeps its privileges.
    #[arg(long, value_name = "USER", requires = "command")]
    pub user: Option<String>,

    /// Write CMD's standard output to FILE (created, or truncated) instead of to the tool's
    /// standard error.
    #[arg(long, value_name = "FILE", requires = "command")]
    pub command_output: Option<PathBuf>,
}

/// Options about the run itself.
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Stop after this many seconds (fractions allowed).
    #[arg(short = 'd', long, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,

    /// Print diagnostics to stderr (for the tracers, also the BPF verifier's log when it rejects a
    /// program).
    #[arg(short = 'v', long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `-i/--interval`, for the tools where periodic output means something.
#[derive(Args, Debug, Clone, Default)]
pub struct IntervalArgs {
    /// Print output every SECS seconds instead of only at the end.
    #[arg(short = 'i', long, value_name = "SECS", value_parser = parse_seconds)]
    pub interval: Option<Duration>,
}

impl TargetArgs {
    /// `--container`, `--pod` or `--pod-uid`, if one was given.
    pub fn selector(&self) -> Option<crate::container::Selector> {
        use crate::container::Selector;
        self.container
            .clone()
            .map(Selector::Container)
            .or_else(|| self.pod.as_deref().map(Selector::pod))
            .or_else(|| self.pod_uid.clone().map(Selector::PodUid))
    }

    /// Validate `-p` (the process must exist) and resolve `--cgroup`,
    /// `--container`, `--pod` or `--pod-uid` to the cgroup subtree to
    /// filter on, if any.
    pub fn check(&self) -> Result<Option<CgroupScope>> {
        if let Some(pid) = self.pid {
            if pid == 0 || !crate::procmaps::process_exists(pid) {
                bail!("no such process: {pid}");
            }
            if is_kernel_thread(pid) {
                bail!("process {pid} is a kernel thread: it has no user space to trace");
            }
            if is_exiting(pid) {
                bail!("process {pid} is exiting (a zombie): it has no user space left to trace");
            }
            // /proc/TID exists too (unlisted), but the tools filter by process.
            if let Some(tgid) = thread_group(pid).filter(|&t| t != pid) {
                bail!("{pid} is a thread of process {tgid}: give the process ID (-p {tgid})");
            }
        }
        if let Some(sel) = self.selector() {
            let selected = container::select(&sel)?;
            return Ok(Some(CgroupScope {
                cgroup: selected.cgroup.clone(),
                selected: Some(selected),
            }));
        }
        match &self.cgroup {
            Some(dir) => {
                Ok(Some(CgroupScope { cgroup: CgroupTarget::of_dir(dir)?, selected: None }))
            }
            None => Ok(None),
        }
    }
}

/// The cgroup subtree a run is limited to, and the containers it was
/// chosen by (`--container`, `--pod`, `--pod-uid`; none for `--cgroup`).
#[derive(Debug, Clone)]
pub struct CgroupScope {
    pub cgroup: CgroupTarget,
    pub selected: Option<Selected>,
}

impl CgroupScope {
    /// The id and level for the BPF filter; (0, 0) without a scope.
    pub fn filter_of(scope: Option<&CgroupScope>) -> (u64, u32) {
        scope.map_or((0, 0), |s| (s.cgroup.id, s.cgroup.level))
    }

    /// The container the run was limited to by `--container`, if so.
    pub fn container(&self) -> Option<&ContainerInfo> {
        let s = self.selected.as_ref()?;
        match (&s.selector, s.resolved.containers.as_slice()) {
            (container::Selector::Container(_), [one]) => Some(one),
            _ => None,
        }
    }
}

/// The process (thread group) a thread ID belongs to.
fn thread_group(tid: u32) -> Option<u32> {
    crate::procmaps::status_field(&tid.to_string(), "Tgid")?.parse().ok()
}

/// The state letter of /proc/PID/stat (or /proc/PID/task/TID/stat).
fn stat_state(stat_path: &Path) -> Option<char> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The comm field may hold spaces and parentheses: the state follows
    // the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// Whether every thread of a process has exited (Z, zombie, or X, dead):
/// it is waiting to be reaped and has no address space left. A leader
/// that exited while other threads run is a zombie too, but its process
/// is not exiting.
fn is_exiting(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    let mut any = false;
    for t in tasks.flatten() {
        any = true;
        if !matches!(stat_state(&t.path().join("stat")), Some('Z' | 'X') | None) {
            return false;
        }
    }
    any
}

/// PF_KTHREAD in the flags field of /proc/PID/stat.
fn is_kernel_thread(pid: u32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The comm field may hold spaces and parentheses: fields start after the
    // last ')'. Then: state ppid pgrp session tty_nr tpgid flags.
    let flags = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok());
    flags.is_some_and(|f| f & PF_KTHREAD != 0)
}
