//! allocsnoop: one JSON line per allocator call of a process (or of every
//! process), with the caller's stack when asked.
//!
//! The probe layer (which library, which functions, where in them) lives in
//! [`probes`] so leakd-attach attaches exactly the same way.

pub mod probes;

use std::path::PathBuf;

use aya::maps::{MapData, RingBuf};
use aya::EbpfLoader;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser};
use serde_json::{json, Value};

use leakd_common::bpf::{self, Filter, LostCounter, Pod};
use leakd_common::cli::{CgroupScope, RunArgs, TargetArgs};
use leakd_common::container::PidContainers;
use leakd_common::event_loop::{EventLoop, Handler};
use leakd_common::out::Output;
use leakd_common::procmaps::MapsCache;
use leakd_common::text::{c_string, hex, WallClock};
use leakd_common::{anyhow, bail, launch, Result};

#[allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]
pub mod sys {
    include!(concat!(env!("OUT_DIR"), "/allocsnoop.rs"));
}

// SAFETY: bindgen generated allocsnoop_event from bpf/allocsnoop.h as a
// #[repr(C)] struct of integers and integer arrays only.
unsafe impl Pod for sys::allocsnoop_event {}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/allocsnoop.bpf.o"));

const EXAMPLES: &str = "\
Examples:
  allocsnoop -p 1234                      every allocation and free of process 1234
  allocsnoop --stack -p 1234 | symres     with symbolized call stacks
  allocsnoop --min-size 1048576 -- app    allocations of 1 MiB or more by a command
  allocsnoop --op malloc,free -- ./leaker ten-nine";

#[derive(Parser, Debug)]
#[command(
    name = "allocsnoop",
    version,
    about = "Stream every malloc-family call and free of a process as JSON lines",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    probe: ProbeArgs,
    /// Attach each event's user stack (caller first).
    #[arg(long)]
    stack: bool,
    /// Only operations in this comma-separated list (malloc,calloc,realloc,reallocarray,free,
    /// posix_memalign,aligned_alloc,memalign,valloc,pvalloc,mmap,munmap).
    #[arg(long, value_name = "OPS", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(probes::OP_NAMES))]
    op: Vec<String>,
}

/// Options choosing what to probe; shared with leakd-attach.
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

pub fn command() -> clap::Command {
    Cli::command()
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

/// Find the allocator(s) of the target (`-p`, `-- CMD`, a cgroup or
/// container, or the whole system) and plan a probe site for each op; logs
/// the choice under `-v`.
fn plan_for_target(
    probe: &ProbeArgs,
    ops: &[u32],
    target: &TargetArgs,
    scope: Option<&CgroupScope>,
    verbose: u8,
    tool: &str,
) -> Result<Vec<Planned>> {
    let exe = match target.command.first() {
        Some(c) => Some(launch::resolve(c)?),
        None => None,
    };
    let mut libs: Vec<(PathBuf, &'static str)> = Vec::new();
    match scope {
        // Every process of the cgroup subtree now, one probe per file they
        // really map (the same file for every container of an image).
        Some(s) if probe.lib.is_none() && exe.is_none() && target.pid.is_none() => {
            let pids: Vec<u32> =
                s.cgroup.pids().into_iter().filter(|&p| p != std::process::id()).collect();
            let (files, failed) = probes::find_allocators(&pids, &probe.prefix);
            for (pid, why) in &failed {
                if verbose > 0 || files.is_empty() {
                    eprintln!("{tool}: process {pid} of {}: {why}", s.cgroup.dir.display());
                }
            }
            if files.is_empty() && !pids.is_empty() {
                bail!(
                    "no process of {} ({} found) maps an allocator to probe",
                    s.cgroup.dir.display(),
                    pids.len()
                );
            }
            for (f, users) in files {
                if verbose > 0 {
                    eprintln!(
                        "{tool}: allocator of {} process(es) ({}): {} as {}",
                        users.len(),
                        users.iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
                        f.shown.display(),
                        f.path.display()
                    );
                }
                libs.push((f.path, f.kind));
            }
            if libs.is_empty() {
                // An empty cgroup: what joins it later runs the host's libc
                // most likely.
                libs.push(resolve_lib(probe, None, None)?);
            }
            eprintln!(
                "{tool}: note: processes that start in {} after this are traced only if they use \
                 an allocator file probed now",
                s.cgroup.dir.display()
            );
        }
        _ => libs.push(resolve_lib(probe, target.pid, exe.as_deref())?),
    }
    let mut planned = Vec::new();
    for (lib, kind) in libs {
        let (sites, missing) = probes::plan(&lib, &probe.prefix, ops)?;
        if sites.is_empty() {
            bail!(
                "{} defines none of the functions to probe ({})",
                lib.display(),
                missing.join(", ")
            );
        }
        if verbose > 0 {
            eprintln!("{tool}: allocator: {} ({kind})", lib.display());
            if !missing.is_empty() {
                eprintln!("{tool}: not in {}: {}", lib.display(), missing.join(", "));
            }
        }
        planned.push(Planned { lib, sites });
    }
    Ok(planned)
}

/// An allocation tracer loaded and attached to its target.
pub struct Tracer {
    pub ebpf: aya::Ebpf,
    /// The launched command, held until the event loop releases it.
    pub held: Option<launch::Held>,
    /// The traced process (launched or `-p`); `None` system-wide.
    pub pid: Option<u32>,
    /// The cgroup subtree (`--cgroup`, `--container`, `--pod`) traced.
    pub scope: Option<CgroupScope>,
}

/// What allocsnoop and leakd-attach both do before their loops: check the
/// system and the target, plan a probe site per op, launch the command
/// (held), then load `object` through `loader` (which holds the tool's own
/// globals) with the shared filter and size range, and attach.
pub fn load_tracer(
    tool: &str,
    object: &[u8],
    loader: EbpfLoader<'_>,
    probe: &ProbeArgs,
    ops: &[u32],
    target: &TargetArgs,
    verbose: u8,
) -> Result<Tracer> {
    let (min, max) = probe.size_range()?;
    // A mistyped PID is reported whatever the privileges.
    let scope = target.check()?;
    let (cgroup_id, cgroup_level) = CgroupScope::filter_of(scope.as_ref());
    bpf::preflight()?;
    let planned = plan_for_target(probe, ops, target, scope.as_ref(), verbose, tool)?;
    let held =
        if target.command.is_empty() { None } else { Some(launch::spawn_held(&target.command)?) };
    let pid = held.as_ref().map(|h| h.pid()).or(target.pid);
    // Uprobes are scoped to the process (its mm) by the kernel; the BPF
    // filter then only needs the cgroup. Without a process, a probe fires
    // for every process mapping the file (every container of an image):
    // the cgroup filter keeps the target's.
    let filter = Filter::new(0, false, cgroup_id).with_cgroup_level(cgroup_level);
    // Narrowed to this function: the globals below borrow its locals.
    let mut loader: EbpfLoader<'_> = loader;
    filter.apply(&mut loader);
    loader.override_global("min_size", &min, true);
    loader.override_global("max_size", &max, true);
    let mut ebpf = bpf::load(&mut loader, object)?;
    for p in &planned {
        probes::attach(&mut ebpf, &p.lib, &p.sites, pid, verbose, tool)?;
    }
    Ok(Tracer { ebpf, held, pid, scope })
}

pub fn run(matches: &ArgMatches) -> Result<i32> {
    let cli = Cli::from_arg_matches(matches)?;
    let ops = ops_for(&cli.probe, &cli.op)?;
    let verbose = cli.run.verbose;
    let stack = u8::from(cli.stack);
    let mut loader = EbpfLoader::new();
    loader.override_global("capture_stack", &stack, true);
    let Tracer { mut ebpf, held, scope, .. } =
        load_tracer("allocsnoop", OBJECT, loader, &cli.probe, &ops, &cli.target, verbose)?;

    let mut ring: RingBuf<MapData> = bpf::take_map(&mut ebpf, "events")?;
    let mut lost = LostCounter::new(&mut ebpf)?;
    let mut event_loop = EventLoop::new(cli.run.duration, None)?;
    let mut maps = MapsCache::new();
    // Remember the target's mappings now, in case it exits before its
    // first event is formatted.
    // Events of a traced container (or of -p's, when in one) say which.
    let mut containers = (scope.is_some() || cli.target.pid.is_some()).then(PidContainers::new);
    event_loop.start_target(cli.target.pid, held, |pid| {
        maps.prime(pid);
        if let Some(c) = containers.as_mut() {
            c.prime(pid);
        }
    })?;
    if let Some(s) = &scope {
        for p in s.cgroup.pids() {
            maps.prime(p);
            if let Some(c) = containers.as_mut() {
                c.prime(p);
            }
        }
        // A container or pod that exits ends the run, as a -p process does.
        if s.selected.is_some() {
            event_loop.watch_cgroup(&s.cgroup.dir);
        }
    }
    if verbose > 0 {
        eprintln!("allocsnoop: attached, tracing allocations (Ctrl-C to stop)");
    }
    let mut out = Output::stdout();
    let mut printer = Printer { clock: WallClock::new(), maps, stack: cli.stack, containers };
    event_loop.run(Some(&mut ring), &mut out, &mut lost, &mut printer)?;
    Ok(0)
}

struct Printer {
    clock: WallClock,
    maps: MapsCache,
    stack: bool,
    /// The container of each process, read once per process.
    containers: Option<PidContainers>,
}

impl Handler for Printer {
    fn event(&mut self, data: &[u8], out: &mut Output) -> Result<()> {
        let e: sys::allocsnoop_event = bpf::read_event(data);
        let mut v = json!({
            "type": "alloc",
            "op": probes::op_name(e.op),
            "ts_ns": self.clock.wall_ns(e.ts_ns),
            "pid": e.pid,
            "tid": e.tid,
            "comm": c_string(&e.comm),
        });
        if e.op != probes::OP_FREE {
            v["size_bytes"] = json!(e.size_bytes);
        }
        v["addr"] = json!(hex(e.addr));
        if matches!(e.op, sys::alloc_op_ALLOC_OP_REALLOC | sys::alloc_op_ALLOC_OP_REALLOCARRAY) {
            v["old_addr"] = json!(hex(e.old_addr));
        }
        if matches!(
            e.op,
            sys::alloc_op_ALLOC_OP_POSIX_MEMALIGN
                | sys::alloc_op_ALLOC_OP_ALIGNED_ALLOC
                | sys::alloc_op_ALLOC_OP_MEMALIGN
        ) {
            v["align_bytes"] = json!(e.align);
        }
        if e.failed != 0 {
            v["failed"] = json!(true);
        }
        if self.stack {
            let n = (e.nr_frames as usize).min(e.frames.len());
            let kept = kept_frames(&mut self.maps, e.pid, &e.frames[..n]);
            v["stack"] = Value::Array(stack_frames(&mut self.maps, e.pid, &e.frames[..kept]));
        }
        let c = self.containers.as_mut().and_then(|c| c.get(e.pid));
        if let (Some(c), Some(obj)) = (c, v.as_object_mut()) {
            c.enrich(obj);
        }
        out.line(&v)?;
        Ok(())
    }
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
