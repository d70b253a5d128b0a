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
use leakd_common::cli::{RunArgs, TargetArgs};
use leakd_common::event_loop::{EventLoop, Handler};
use leakd_common::out::Output;
use leakd_common::procmaps::MapsCache;
use leakd_common::text::{c_string, hex, WallClock};
use leakd_common::{anyhow, bail, launch, Result};
use leakd_unwind::{Mode, UnwindArgs, Unwinder};

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
    #[command(flatten)]
    unwind: UnwindArgs,
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

/// Find the allocator of the target (`-p`, `-- CMD` or the whole system)
/// and plan a probe site for each op; logs the choice under `-v`.
fn plan_for_target(
    probe: &ProbeArgs,
    ops: &[u32],
    target: &TargetArgs,
    verbose: u8,
    tool: &str,
) -> Result<(PathBuf, Vec<probes::Site>)> {
    let exe = match target.command.first() {
        Some(c) => Some(launch::resolve(c)?),
        None => None,
    };
    let (lib, kind) = resolve_lib(probe, target.pid, exe.as_deref())?;
    let (sites, missing) = probes::plan(&lib, &probe.prefix, ops)?;
    if sites.is_empty() {
        bail!("{} defines none of the functions to probe ({})", lib.display(), missing.join(", "));
    }
    if verbose > 0 {
        eprintln!("{tool}: allocator: {} ({kind})", lib.display());
        if !missing.is_empty() {
            eprintln!("{tool}: not in {}: {}", lib.display(), missing.join(", "));
        }
    }
    Ok((lib, sites))
}

/// An allocation tracer loaded and attached to its target.
pub struct Tracer {
    pub ebpf: aya::Ebpf,
    /// The launched command, held until the event loop releases it.
    pub held: Option<launch::Held>,
    /// The traced process (launched or `-p`); `None` system-wide.
    pub pid: Option<u32>,
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
    let cgroup_id = target.check()?.unwrap_or(0);
    bpf::preflight()?;
    let (lib, sites) = plan_for_target(probe, ops, target, verbose, tool)?;
    let held =
        if target.command.is_empty() { None } else { Some(launch::spawn_held(&target.command)?) };
    let pid = held.as_ref().map(|h| h.pid()).or(target.pid);
    // Uprobes are scoped to the process (its mm) by the kernel; the BPF
    // filter then only needs the cgroup.
    let filter = Filter::new(0, false, cgroup_id);
    // Narrowed to this function: the globals below borrow its locals.
    let mut loader: EbpfLoader<'_> = loader;
    filter.apply(&mut loader);
    loader.override_global("min_size", &min, true);
    loader.override_global("max_size", &max, true);
    let mut ebpf = bpf::load(&mut loader, object)?;
    probes::attach(&mut ebpf, &lib, &sites, pid, verbose, tool)?;
    Ok(Tracer { ebpf, held, pid })
}

pub fn run(matches: &ArgMatches) -> Result<i32> {
    let cli = Cli::from_arg_matches(matches)?;
    let ops = ops_for(&cli.probe, &cli.op)?;
    let verbose = cli.run.verbose;
    let stack = u8::from(cli.stack);
    let mode = if cli.stack { cli.unwind.unwind } else { Mode::Fp };
    let mode_value = mode.bpf_value();
    let mut loader = EbpfLoader::new();
    loader.override_global("capture_stack", &stack, true);
    leakd_unwind::configure(&mut loader, &mode_value);
    let Tracer { mut ebpf, held, .. } =
        load_tracer("allocsnoop", OBJECT, loader, &cli.probe, &ops, &cli.target, verbose)?;
    let unwinder = start_unwinder(&mut ebpf, mode, &cli.target, "allocsnoop", verbose)?;

    let mut ring: RingBuf<MapData> = bpf::take_map(&mut ebpf, "events")?;
    let mut lost = LostCounter::new(&mut ebpf)?;
    // With DWARF stacks, files met without a table are looked for often.
    let tick = unwinder.is_some().then_some(UNWIND_POLL);
    let mut event_loop = EventLoop::new(cli.run.duration, tick)?;
    let mut maps = MapsCache::new();
    // Remember the target's mappings now, in case it exits before its
    // first event is formatted.
    event_loop.start_target(cli.target.pid, held, |pid| maps.prime(pid))?;
    if verbose > 0 {
        eprintln!("allocsnoop: attached, tracing allocations (Ctrl-C to stop)");
    }
    let mut out = Output::stdout();
    let mut printer = Printer { clock: WallClock::new(), maps, stack: cli.stack, unwinder };
    event_loop.run(Some(&mut ring), &mut out, &mut lost, &mut printer)?;
    if let Some(u) = &printer.unwinder {
        u.summary();
    }
    Ok(0)
}

/// How often files the DWARF walker met without a table are looked for.
pub const UNWIND_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The DWARF walker's user-space side, with the tables of the target's
/// files loaded (a launched command is still held: before it runs). `None`
/// with --unwind fp.
pub fn start_unwinder(
    ebpf: &mut aya::Ebpf,
    mode: Mode,
    target: &TargetArgs,
    tool: &'static str,
    verbose: u8,
) -> Result<Option<Unwinder>> {
    let Some(mut u) = Unwinder::new(ebpf, mode, tool, verbose)? else { return Ok(None) };
    if let Some(pid) = target.pid {
        u.preload_pid(pid);
    }
    if let Some(cmd) = target.command.first() {
        u.preload_exec(&launch::resolve(cmd)?);
    }
    Ok(Some(u))
}

struct Printer {
    clock: WallClock,
    maps: MapsCache,
    stack: bool,
    unwinder: Option<Unwinder>,
}

impl Handler for Printer {
    fn interval(&mut self, _out: &mut Output) -> Result<()> {
        if let Some(u) = self.unwinder.as_mut() {
            u.poll();
        }
        Ok(())
    }

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
