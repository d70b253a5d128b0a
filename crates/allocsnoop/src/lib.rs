//! allocsnoop: one JSON line per allocator call of a process (or of every
//! process), with the caller's stack when asked.
//!
//! The probe layer (which library, which functions, where in them) is the
//! alloc-probes crate, shared with leakd-attach.

use aya::maps::{MapData, RingBuf};
use aya::EbpfLoader;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use serde_json::{json, Value};

use alloc_probes::sys as ops;
use alloc_probes::{kept_frames, load_tracer, ops_for, probes, stack_frames, ProbeArgs, Tracer};
use leakd_common::bpf::{self, LostCounter};
use leakd_common::cli::{RunArgs, TargetArgs};
use leakd_common::event_loop::{EventLoop, Handler};
use leakd_common::out::Output;
use leakd_common::procmaps::MapsCache;
use leakd_common::text::{c_string, hex, WallClock};
use leakd_common::{bpf_mirror, bpf_object, bpf_pod, info, Result};

bpf_mirror!(pub mod sys = "allocsnoop");
// bindgen generated allocsnoop_event from bpf/allocsnoop.h as a #[repr(C)]
// struct of integers and integer arrays only.
bpf_pod!(unsafe sys::allocsnoop_event);

static OBJECT: &[u8] = bpf_object!("allocsnoop");

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

pub fn command() -> clap::Command {
    Cli::command()
}

pub fn run(matches: &ArgMatches) -> Result<i32> {
    let cli = Cli::from_arg_matches(matches)?;
    let ops = ops_for(&cli.probe, &cli.op)?;
    let stack = u8::from(cli.stack);
    let mut loader = EbpfLoader::new();
    loader.override_global("capture_stack", &stack, true);
    let Tracer { mut ebpf, target } = load_tracer(OBJECT, loader, &cli.probe, &ops, &cli.target)?;

    let mut ring: RingBuf<MapData> = bpf::take_map(&mut ebpf, "events")?;
    let mut lost = LostCounter::new(&mut ebpf)?;
    let mut event_loop = EventLoop::new(cli.run.duration, None)?;
    let mut maps = MapsCache::new();
    // Remember the target's mappings now, in case it exits before its
    // first event is formatted.
    event_loop.start_target(target, |pid| maps.prime(pid))?;
    info!("attached, tracing allocations (Ctrl-C to stop)");
    let mut out = Output::stdout();
    let mut printer = Printer { clock: WallClock::new(), maps, stack: cli.stack };
    event_loop.run(Some(&mut ring), &mut out, &mut lost, &mut printer)?;
    Ok(0)
}

struct Printer {
    clock: WallClock,
    maps: MapsCache,
    stack: bool,
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
        if matches!(e.op, ops::alloc_op_ALLOC_OP_REALLOC | ops::alloc_op_ALLOC_OP_REALLOCARRAY) {
            v["old_addr"] = json!(hex(e.old_addr));
        }
        if matches!(
            e.op,
            ops::alloc_op_ALLOC_OP_POSIX_MEMALIGN
                | ops::alloc_op_ALLOC_OP_ALIGNED_ALLOC
                | ops::alloc_op_ALLOC_OP_MEMALIGN
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
