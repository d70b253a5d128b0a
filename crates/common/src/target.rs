//! Getting a tracer's target ready, the same way in every tool: validate
//! `-p`/`--cgroup` and resolve `--container`/`--pod`/`--pod-uid` (a
//! mistyped PID or name is reported whatever the privileges),
//! check what loading BPF needs, do the tool's own checks, and only then
//! launch `-- CMD`, held until the probes are attached, so a failed check
//! never leaves a command started.

use anyhow::{Context, Result};

use crate::bpf::{self, Filter};
use crate::cli::{CgroupScope, TargetArgs};
use crate::launch::{self, Held};

/// What a tracer traces, ready for its BPF filter and its event loop.
#[derive(Debug)]
pub struct Target {
    /// `-p PID`, watched by the event loop.
    pub requested_pid: Option<u32>,
    /// The launched command, held until the event loop releases it.
    pub held: Option<Held>,
    /// The cgroup subtree of `--cgroup`, `--container`, `--pod` or
    /// `--pod-uid`, and the containers chosen.
    pub scope: Option<CgroupScope>,
}

impl TargetArgs {
    /// Check the target and the system, then launch the command (held).
    pub fn prepare(&self) -> Result<Target> {
        self.prepare_with(|_| Ok(())).map(|(t, ())| t)
    }

    /// As [`prepare`](Self::prepare), with the tool's own checks run
    /// before the command is launched (an allocation tracer finds the
    /// allocator to probe, in the cgroup scope when there is one); their
    /// result is returned with the target.
    pub fn prepare_with<T>(
        &self,
        checks: impl FnOnce(Option<&CgroupScope>) -> Result<T>,
    ) -> Result<(Target, T)> {
        let scope = self.check()?;
        bpf::preflight()?;
        let checked = checks(scope.as_ref())?;
        let held = if self.command.is_empty() { None } else { Some(self.launch()?) };
        Ok((Target { requested_pid: self.pid, held, scope }, checked))
    }
}

impl TargetArgs {
    /// Fork the command, held, as --user with --command-output.
    fn launch(&self) -> Result<Held> {
        let user = self.user.as_deref().map(launch::Credentials::lookup).transpose()?;
        let stdout = match &self.command_output {
            Some(path) => Some(
                std::fs::File::create(path)
                    .with_context(|| format!("--command-output {}", path.display()))?
                    .into(),
            ),
            None => None,
        };
        launch::spawn_held(&self.command, &launch::Options { user, stdout })
    }
}

impl Target {
    /// The traced process: the launched command or `-p`; `None` when
    /// tracing every process (of the cgroup, with `--cgroup`).
    pub fn pid(&self) -> Option<u32> {
        self.held.as_ref().map(Held::pid).or(self.requested_pid)
    }

    /// The BPF filter for tracepoint-based tools: the process, and with a
    /// launched command its descendants too; and the cgroup.
    pub fn filter(&self) -> Filter {
        let (id, level) = CgroupScope::filter_of(self.scope.as_ref());
        Filter::new(self.pid().unwrap_or(0), self.held.is_some(), id).with_cgroup_level(level)
    }

    /// The BPF filter for uprobe-based tools: the kernel already scopes
    /// uprobes to the process (its mm), so only the cgroup is left. Without
    /// a process, a probe fires for every process mapping the file (every
    /// container of an image): the cgroup filter keeps the target's.
    pub fn cgroup_filter(&self) -> Filter {
        let (id, level) = CgroupScope::filter_of(self.scope.as_ref());
        Filter::new(0, false, id).with_cgroup_level(level)
    }
}
