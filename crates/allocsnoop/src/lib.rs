//! allocsnoop: one JSON line per allocator call of a process (or of every
//! process), with the caller's stack when asked.
//!
//! The probe layer (which library, which functions, where in them) is the
//! alloc-probes crate, shared with leakd-attach.

use std::collections::HashMap;

use aya::maps::{MapData, RingBuf};
use aya::EbpfLoader;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use serde_json::{json, Value};

use alloc_probes::sys as ops;
use alloc_probes::{kept_frames, load_tracer, ops_for, probes, stack_frames, ProbeArgs, Tracer};
use leakd_common::bpf::{self, LostCounter};
use leakd_common::captured::Captured;
use leakd_common::cli::{RunArgs, TargetArgs};
use leakd_common::container::PidContainers;
use leakd_common::event_loop::{EventLoop, Handler};
use leakd_common::out::Output;
use leakd_common::procmaps::MapsCache;
use leakd_common::text::{c_string, hex, WallClock};
use leakd_common::{bpf_mirror, bpf_object, bpf_pod, info, warn, Result};
use leakd_unwind::{Mode, UnwindArgs, Unwinder};

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
    #[command(flatten)]
    unwind: UnwindArgs,
    /// Only operations in this comma-separated list (malloc,calloc,realloc,reallocarray,free,
    /// posix_memalign,aligned_alloc,memalign,valloc,pvalloc,mmap,munmap,new,new[],delete,delete[]).
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
    let mode = if cli.stack { cli.unwind.unwind } else { Mode::Fp };
    let mode_value = mode.bpf_value();
    let mut loader = EbpfLoader::new();
    loader.override_global("capture_stack", &stack, true);
    leakd_unwind::configure(&mut loader, &mode_value);
    if !cli.stack {
        // Mappings are recorded only for stacks.
        for map in ["mappings_vmas", "mappings_paths", "stacks_seen"] {
            loader.map_max_entries(map, 1);
        }
    }
    let Tracer { mut ebpf, target, cxx } =
        load_tracer(OBJECT, loader, &cli.probe, &ops, &cli.target)?;
    let unwinder = Unwinder::start(&mut ebpf, mode, &cli.target, &target)?;

    let mut ring: RingBuf<MapData> = bpf::take_map(&mut ebpf, "events")?;
    let mut lost = LostCounter::new(&mut ebpf)?;
    // With DWARF stacks, files met without a table are looked for often.
    let tick = unwinder.is_some().then_some(leakd_unwind::POLL);
    let mut event_loop = EventLoop::new(cli.run.duration, tick)?;
    // What BPF recorded of the mappings of each new stack places frames of
    // processes that exited before their event was formatted.
    let mut maps = MapsCache::new().with_fallback(Box::new(Captured::take(&mut ebpf)?));
    // Remember the target's mappings now, in case it exits before its
    // first event is formatted.
    // Events of a traced container (or of -p's, when in one) say which.
    let mut containers =
        (target.scope.is_some() || target.requested_pid.is_some()).then(PidContainers::new);
    event_loop.start_target(target, |pid| {
        maps.prime(pid);
        if let Some(c) = containers.as_mut() {
            c.prime(pid);
        }
    })?;
    info!("attached, tracing allocations (Ctrl-C to stop)");
    let mut out = Output::stdout();
    let mut printer = Printer {
        clock: WallClock::new(),
        maps,
        stack: cli.stack,
        containers,
        unwinder,
        blocks: Blocks { check: cxx, ..Blocks::default() },
    };
    event_loop.run(Some(&mut ring), &mut out, &mut lost, &mut printer)?;
    if let Some(u) = &printer.unwinder {
        u.summary();
    }
    Ok(0)
}

struct Printer {
    clock: WallClock,
    maps: MapsCache,
    stack: bool,
    /// The container of each process, read once per process.
    containers: Option<PidContainers>,
    /// The DWARF walker's tables (None with --unwind fp or without --stack).
    unwinder: Option<Unwinder>,
    blocks: Blocks,
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
        let dealloc = matches!(
            e.op,
            probes::OP_FREE | ops::alloc_op_ALLOC_OP_DELETE | ops::alloc_op_ALLOC_OP_DELETE_ARRAY
        );
        if !dealloc {
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
        if matches!(e.op, ops::alloc_op_ALLOC_OP_NEW | ops::alloc_op_ALLOC_OP_NEW_ARRAY)
            && e.align != 0
        {
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
        let mismatch = self.blocks.event(&e, &v, self.stack, &mut self.maps);
        out.line(&v)?;
        if let Some(m) = mismatch {
            out.line(&m)?;
        }
        Ok(())
    }
}

/// Which deallocation a block calls for: free (the malloc family),
/// delete (new) or delete[] (new[]).
fn family(op: u32) -> Option<u8> {
    match op {
        ops::alloc_op_ALLOC_OP_NEW | ops::alloc_op_ALLOC_OP_DELETE => Some(1),
        ops::alloc_op_ALLOC_OP_NEW_ARRAY | ops::alloc_op_ALLOC_OP_DELETE_ARRAY => Some(2),
        ops::alloc_op_ALLOC_OP_MMAP | ops::alloc_op_ALLOC_OP_MUNMAP => None,
        _ => Some(0),
    }
}

/// Most live blocks remembered for the mismatch check; past it, new
/// blocks are not checked (a leaking process must not grow us forever).
const MAX_LIVE: usize = 1 << 20;

/// The live blocks of the stream, by process and address, with the op
/// that made them (and its stack, with --stack), to report a block freed
/// with the wrong operator: new[] by delete or free, malloc by delete
/// (valgrind's "mismatched free() / delete / delete []").
#[derive(Default)]
struct Blocks {
    /// Whether to check at all: without C++'s operators probed, every
    /// free matches its allocation.
    check: bool,
    /// The op and the (kept) return addresses of each live block; frames
    /// are rendered only for a mismatch.
    live: HashMap<(u32, u64), (u32, Vec<u64>)>,
    /// Whether the note that MAX_LIVE was reached has been said.
    said_full: bool,
}
impl Blocks {
    /// Account for one event; the mismatch line it makes, if any.
    fn event(
        &mut self,
        e: &sys::allocsnoop_event,
        v: &Value,
        stack: bool,
        maps: &mut MapsCache,
    ) -> Option<Value> {
        if !self.check {
            return None;
        }
        let fam = family(e.op)?;
        let freed = match e.op {
            probes::OP_FREE
            | ops::alloc_op_ALLOC_OP_DELETE
            | ops::alloc_op_ALLOC_OP_DELETE_ARRAY => Some(e.addr),
            ops::alloc_op_ALLOC_OP_REALLOC | ops::alloc_op_ALLOC_OP_REALLOCARRAY
                if e.old_addr != 0 && (e.addr != 0 || e.size_bytes == 0) =>
            {
                Some(e.old_addr)
            }
            _ => None,
        };
        let mut mismatch = None;
        if let Some(addr) = freed {
            if let Some((op, pcs)) = self.live.remove(&(e.pid, addr)) {
                if family(op) != Some(fam) {
                    let mut m = json!({
                        "type": "mismatch",
                        "ts_ns": v["ts_ns"],
                        "pid": e.pid,
                        "tid": e.tid,
                        "comm": v["comm"],
                        "addr": hex(addr),
                        "alloc": { "op": probes::op_name(op) },
                        "free": { "op": probes::op_name(e.op) },
                    });
                    if stack {
                        m["alloc"]["stack"] = Value::Array(stack_frames(maps, e.pid, &pcs));
                    }
                    if let Some(st) = v.get("stack") {
                        m["free"]["stack"] = st.clone();
                    }
                    mismatch = Some(m);
                }
            }
        }
        let made = !matches!(
            e.op,
            probes::OP_FREE | ops::alloc_op_ALLOC_OP_DELETE | ops::alloc_op_ALLOC_OP_DELETE_ARRAY
        );
        if made && e.failed == 0 && e.addr != 0 {
            if self.live.len() < MAX_LIVE {
                let pcs = if stack {
                    let n = (e.nr_frames as usize).min(e.frames.len());
                    e.frames[..kept_frames(maps, e.pid, &e.frames[..n])].to_vec()
                } else {
                    Vec::new()
                };
                self.live.insert((e.pid, e.addr), (e.op, pcs));
            } else if !self.said_full {
                self.said_full = true;
                warn!(
                    "{MAX_LIVE} live blocks remembered: blocks allocated from now on are not \
                     checked for a mismatched free"
                );
            }
        }
        mismatch
    }
}
