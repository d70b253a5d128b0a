//! The allocation probe layer shared by allocsnoop and leakd-attach: which
//! object holds the target's allocator, where in each function to probe
//! (see [`probes`]), and how a tracer built on `bpf/alloc.bpf.h` is loaded
//! and attached. Its own crate so that neither tool depends on the other.

pub mod probes;

use std::path::PathBuf;

use aya::EbpfLoader;
use clap::Args;
use serde_json::{json, Value};

use leakd_common::bpf;
use leakd_common::cli::{CgroupScope, TargetArgs};
use leakd_common::procmaps::MapsCache;
use leakd_common::target::Target;
use leakd_common::text::hex;
use leakd_common::{anyhow, bail, debug, info, launch, warn, Result};

/// `enum alloc_op` of bpf/alloc.h, the attach cookie of every probe.
#[allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]
pub mod sys {
    include!(concat!(env!("OUT_DIR"), "/alloc.rs"));
}

/// Options choosing what to probe; flattened into allocsnoop and leakd-attach.
#[derive(Args, Debug, Clone, Default)]
pub struct ProbeArgs {
    /// Probe this object instead of the detected allocator (jemalloc, tcmalloc, a static binary...).
    #[arg(long, value_name = "PATH")]
    pub lib: Option<PathBuf>,
    /// Symbol prefix of the allocator functions (e.g. je_ for je_malloc).
    #[arg(long, value_name = "PREFIX", default_value = "")]
    pub prefix: String,
    /// Also trace mmap and munmap.
    #[arg(long)]
    pub mmap: bool,
    /// Only allocations of at least this many bytes.
    #[arg(long, value_name = "BYTES")]
    pub min_size: Option<u64>,
    /// Only allocations of at most this many bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_size: Option<u64>,
}

impl ProbeArgs {
    /// `--min-size`..=`--max-size`; an empty range is a usage error.
    pub fn size_range(&self) -> Result<(u64, u64)> {
        let (min, max) = (self.min_size.unwrap_or(0), self.max_size.unwrap_or(u64::MAX));
        if min > max {
            return Err(leakd_common::usage_error(format!(
                "--min-size {min} is larger than --max-size {max}: nothing would match"
            )));
        }
        Ok((min, max))
    }
}

/// Choose the allocator object for a target (see [`probes::find_allocator`]).
pub fn resolve_lib(
    args: &ProbeArgs,
    pid: Option<u32>,
    exe: Option<&std::path::Path>,
) -> Result<(PathBuf, &'static str)> {
    if let Some(lib) = &args.lib {
        // What is not a regular file is refused where it is read (probes).
        if !lib.exists() {
            bail!("--lib {}: no such file", lib.display());
        }
        return Ok((lib.clone(), "--lib"));
    }
    match (pid, exe) {
        (_, Some(exe)) => probes::allocator_for_exec(exe, &args.prefix),
        (Some(pid), None) => probes::find_allocator(pid, &args.prefix),
        (None, None) => probes::find_allocator(std::process::id(), &args.prefix),
    }
}

/// The ops to probe for a set of options.
pub fn ops_for(args: &ProbeArgs, only: &[String]) -> Result<Vec<u32>> {
    if !only.is_empty() {
        return only
            .iter()
            .map(|n| {
                probes::op_from_name(n.trim())
                    .ok_or_else(|| anyhow!("--op: unknown operation '{n}'"))
            })
            .collect();
    }
    let mut ops = probes::HEAP_OPS.to_vec();
    ops.extend(probes::CXX_OPS);
    if args.mmap {
        ops.extend([probes::OP_MMAP, probes::OP_MUNMAP]);
    }
    Ok(ops)
}

/// One allocator file to probe and its sites.
struct Planned {
    lib: PathBuf,
    sites: Vec<probes::Site>,
}

/// Where to probe: each allocator file's functions, and C++'s operators.
struct Plan {
    allocators: Vec<Planned>,
    cxx: Option<Planned>,
}

/// Find the allocator(s) of the target (`-p`, `-- CMD`, a cgroup or
/// container, or the whole system) and its C++ runtime, and plan a probe
/// site for each op; logs the choice under `-v`.
fn plan_for_target(
    probe: &ProbeArgs,
    ops: &[u32],
    target: &TargetArgs,
    scope: Option<&CgroupScope>,
) -> Result<Plan> {
    let exe = match target.command.first() {
        Some(c) => Some(launch::resolve(c)?),
        None => None,
    };
    let (c_ops, cxx_ops): (Vec<u32>, Vec<u32>) = ops.iter().partition(|&&o| !probes::is_cxx(o));
    let libs = match scope {
        Some(s) if probe.lib.is_none() && exe.is_none() && target.pid.is_none() => {
            scope_allocators(probe, s)?
        }
        None if probe.lib.is_none() && exe.is_none() && target.pid.is_none() => {
            match system_allocators(probe) {
                libs if libs.is_empty() => vec![resolve_lib(probe, None, None)?],
                libs => libs,
            }
        }
        _ => vec![resolve_lib(probe, target.pid, exe.as_deref())?],
    };
    let mut allocators = Vec::new();
    for (lib, kind) in libs {
        let (sites, missing) = probes::plan(&lib, &probe.prefix, &c_ops)?;
        if sites.is_empty() && !c_ops.is_empty() {
            bail!(
                "{} defines none of the functions to probe ({})",
                lib.display(),
                missing.join(", ")
            );
        }
        info!("allocator: {} ({kind})", lib.display());
        if !missing.is_empty() {
            info!("not in {}: {}", lib.display(), missing.join(", "));
        }
        allocators.push(Planned { lib, sites });
    }
    // C++'s operators, where the target has a C++ runtime (--lib names
    // the allocator only).
    let runtime = if cxx_ops.is_empty() || probe.lib.is_some() {
        None
    } else if let Some(exe) = &exe {
        probes::cxx_runtime_for_exec(exe, &leakd_unwind::exec_files(exe))
    } else if let Some(pid) = target.pid {
        probes::find_cxx_runtime(pid)
    } else {
        // A container's or pod's: the first of its processes that has one.
        scope.and_then(|s| s.cgroup.pids().into_iter().find_map(probes::find_cxx_runtime))
    };
    let cxx = match runtime {
        Some(rt) => {
            let sites = probes::plan_cxx(&rt, &cxx_ops)?;
            info!("C++ runtime: {} ({} operators)", rt.display(), sites.len());
            Some(Planned { lib: rt, sites })
        }
        None => None,
    };
    Ok(Plan { allocators, cxx })
}

/// The allocators of every process of a cgroup subtree (a container, a
/// pod), one per file they really map: the same file for every container
/// of an image gets one probe.
fn scope_allocators(probe: &ProbeArgs, s: &CgroupScope) -> Result<Vec<(PathBuf, &'static str)>> {
    let dir = s.cgroup.dir.display();
    let pids: Vec<u32> = s.cgroup.pids().into_iter().filter(|&p| p != std::process::id()).collect();
    let (files, failed) = probes::find_allocators(&pids, &probe.prefix);
    for (pid, why) in &failed {
        if files.is_empty() {
            warn!("process {pid} of {dir}: {why}");
        } else {
            info!("process {pid} of {dir}: {why}");
        }
    }
    if files.is_empty() && !pids.is_empty() {
        bail!("no process of {dir} ({} found) maps an allocator to probe", pids.len());
    }
    let mut libs = Vec::new();
    for (f, users) in files {
        info!(
            "allocator of {} process(es) ({}): {} as {}",
            users.len(),
            users.iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
            f.shown.display(),
            f.path.display()
        );
        libs.push((f.path, f.kind));
    }
    if libs.is_empty() {
        // An empty cgroup: what joins it later most likely runs the
        // host's libc.
        libs.push(resolve_lib(probe, None, None)?);
    }
    leakd_common::log::print(format_args!(
        "note: processes that start in {dir} after this are traced only if they use an \
         allocator file probed now"
    ));
    Ok(libs)
}

/// The allocators of every process now running, one per file really
/// mapped (ours first: the host's libc, or the image's when we run in a
/// container): a system-wide run also sees the processes of containers,
/// whose libc is another file than the host's.
fn system_allocators(probe: &ProbeArgs) -> Vec<(PathBuf, &'static str)> {
    let me = std::process::id();
    let mut pids = vec![me];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        pids.extend(
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|&p| p != me),
        );
    }
    let (files, failed) = probes::find_allocators(&pids, &probe.prefix);
    for (pid, why) in &failed {
        debug!("process {pid}: {why}");
    }
    let libs: Vec<_> = files
        .into_iter()
        .map(|(f, users)| {
            info!(
                "allocator of {} process(es): {} as {}",
                users.len(),
                f.shown.display(),
                f.path.display()
            );
            (f.path, f.kind)
        })
        .collect();
    info!(
        "processes started after this are traced only if they use an allocator file probed \
         now ({} file(s))",
        libs.len()
    );
    libs
}

/// An allocation tracer loaded and attached to its target.
pub struct Tracer {
    pub ebpf: aya::Ebpf,
    /// What is traced; its launched command is held until the event loop
    /// releases it.
    pub target: Target,
    /// Whether C++'s operators are probed too (a C++ runtime was found):
    /// only then can a block be freed with the wrong operator.
    pub cxx: bool,
}

/// What allocsnoop and leakd-attach both do before their loops: prepare
/// the target (see [`TargetArgs::prepare_with`]) with probe sites planned
/// per op in each allocator file, then load `object` through `loader`
/// (which holds the tool's own globals) with the shared filter and size
/// range, and attach.
pub fn load_tracer(
    object: &[u8],
    loader: EbpfLoader<'_>,
    probe: &ProbeArgs,
    ops: &[u32],
    target_args: &TargetArgs,
) -> Result<Tracer> {
    let (min, max) = probe.size_range()?;
    let (target, plan) =
        target_args.prepare_with(|scope| plan_for_target(probe, ops, target_args, scope))?;
    let filter = target.cgroup_filter();
    // Narrowed to this function: the globals below borrow its locals.
    let mut loader: EbpfLoader<'_> = loader;
    filter.apply(&mut loader);
    loader.override_global("min_size", &min, true);
    loader.override_global("max_size", &max, true);
    let mut ebpf = bpf::load(&mut loader, object)?;
    for p in plan.allocators.iter().chain(&plan.cxx) {
        if let Err(e) = probes::attach(&mut ebpf, &p.lib, &p.sites, target.pid()) {
            // Beyond one process (system-wide, a cgroup, a container), the
            // files were found through the processes using them, and one
            // may exit (its root and file gone) before its turn: its
            // blocks are gone too, and the others are still to trace.
            if target.pid().is_none() && !p.lib.exists() {
                warn!("{} is gone (its processes exited): not probed", p.lib.display());
                continue;
            }
            return Err(e);
        }
    }
    Ok(Tracer { ebpf, target, cxx: plan.cxx.is_some() })
}

/// The frames of a stack as printed (all return addresses), for addresses
/// already cut to [`kept_frames`].
pub fn stack_frames(maps: &mut MapsCache, pid: u32, addrs: &[u64]) -> Vec<Value> {
    addrs
        .iter()
        .map(|&a| {
            let mut f = maps.frame(pid, a).unwrap_or_else(|| json!({ "addr": hex(a) }));
            // Every frame is where a call returns to; symres then reports
            // the line of the call itself.
            f["return_address"] = json!(true);
            f
        })
        .collect()
}

/// How many of `addrs` make the stack: the first (the direct caller, right
/// even without frame pointers) always; deeper ones come from a
/// frame-pointer walk that produces garbage through code built without
/// frame pointers, so the stack stops at the first address outside an
/// executable mapping.
pub fn kept_frames(maps: &mut MapsCache, pid: u32, addrs: &[u64]) -> usize {
    let Some(rest) = addrs.get(1..) else { return 0 };
    1 + rest.iter().take_while(|&&a| maps.lookup(pid, a).is_some_and(|m| m.exec)).count()
}
