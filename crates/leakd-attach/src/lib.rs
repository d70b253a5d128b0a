//! leakd-attach: attach to a running process (or launch one) and report its
//! outstanding heap allocations grouped by allocating stack, and which of
//! those groups keep growing.
//!
//! Why a table and not a stream: a leak is an allocation *without* a
//! matching free, so the kernel side keeps the set of live blocks itself
//! (address -> size, time, stack id; frees delete). Nothing crosses to user
//! space per call, so the overhead does not depend on how fast we read;
//! user space only walks the table (mapped into its memory) at each
//! report. The probes are the alloc-probes crate's, as allocsnoop's (same
//! allocator detection, same probe sites, same realloc/nesting semantics).
//!
//! Why per-site totals in the kernel too: the free of a block knows its
//! site (its `allocs` entry holds it), so the kernel keeps, per site,
//! cumulative allocs and frees with atomic adds. That tells a stack that
//! made 10 blocks and freed 9 from one that made 1, and lets `--combined`
//! read one entry per site instead of every live block of a busy process.
//!
//! Why sampling is weighted by bytes: with `--sample-bytes N` a block of
//! size s is tracked with probability p = 1-exp(-s/N) (jemalloc's and
//! tcmalloc's scheme), so the big blocks, the ones that matter for memory,
//! are almost always seen and small ones rarely; each tracked block then
//! stands for s/p bytes and 1/p blocks, an unbiased estimate of the totals.
//!
//! One module per job: `cli` (options and exit codes), `sampling`
//! (the tables and weights), `sites` (site and line keys, the kernel's
//! stack and site maps), `table` (the kernel's table of live blocks) and
//! `report` (the reporter).

mod cli;
mod report;
mod sampling;
mod sites;
mod table;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use aya::EbpfLoader;
use clap::{ArgMatches, FromArgMatches};
use leakd_symbolize::{Options as SymOptions, Resolver};

use leakd_common::bpf::{self, LostCounter};
use leakd_common::captured::Captured;
use leakd_common::container::PidContainers;
use leakd_common::event_loop::{End, EventLoop};
use leakd_common::out::Output;
use leakd_common::procmaps::MapsCache;
use leakd_common::{bpf_mirror, bpf_object, bpf_pod, info, Context, Result};

pub use cli::{command, Cli, EXIT_INCOMPLETE, EXIT_LEAKS};
use leakd_unwind::Unwinder;
use report::{Reporter, Settings, Symbolizer};
use sites::{Sites, Stacks};

bpf_mirror!(pub mod sys = "leakd-attach");
// bindgen generated these from bpf/leakd-attach.h as #[repr(C)] structs of
// integers only, with no implicit padding: leakd_attach_alloc is 3 x u64 +
// 2 x u32, leakd_attach_site u64 + 2 x u32, leakd_attach_stats 8 x u64,
// leakd_attach_bucket 8 x u64 + 7 leakd_attach_alloc + 4 x u64,
// leakd_attach_exec 3 x u64 + 2 x u32 + 16 x u8, leakd_attach_mismatch
// 4 x u64 + 6 x u32 + 16 x u8 + 64 x u64.
bpf_pod!(
    unsafe sys::leakd_attach_mismatch,
    sys::leakd_attach_alloc,
    sys::leakd_attach_site,
    sys::leakd_attach_stats,
    sys::leakd_attach_bucket,
    sys::leakd_attach_exec,
);

static OBJECT: &[u8] = bpf_object!("leakd-attach");

/// How often the event loop wakes us: reports are due every `-i`, but a
/// SIGUSR1 should be answered without waiting for the next one.
const TICK: Duration = Duration::from_millis(100);

pub fn run(matches: &ArgMatches) -> Result<i32> {
    let cli = Cli::from_arg_matches(matches)?;
    let ops = alloc_probes::ops_for(&cli.probe, &[])?;
    cli::check_max_allocs(cli.max_allocs)?;
    if let Some(i) = cli.interval.interval.filter(|&i| i < TICK) {
        return Err(leakd_common::usage_error(format!(
            "-i {}: reports are checked every {} s, so -i must be at least that",
            i.as_secs_f64(),
            TICK.as_secs_f64()
        )));
    }
    // SIGUSR1 asks for a report now. Registered before anything can send it
    // (a launched command is still held), so it never kills us.
    let usr1 = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&usr1))
        .context("installing SIGUSR1 handler")?;

    let mut loader = EbpfLoader::new();
    let sample_bytes = cli.sample_bytes.unwrap_or(0);
    let neg_ln = sampling::neg_ln_table();
    let gt = sampling::g_table();
    loader.override_global("sample_bytes", &sample_bytes, true);
    loader.override_global("neg_ln", &neg_ln, true);
    loader.override_global("g_table", &gt, true);
    let buckets = cli.table_buckets.unwrap_or_else(|| table::home_buckets(cli.max_allocs));
    loader.override_global("table_buckets", &buckets, true);
    let max_allocs = u64::from(cli.max_allocs);
    loader.override_global("max_allocs", &max_allocs, true);
    loader.map_max_entries("allocs", table::map_entries(buckets));
    info!(
        "tracking at most {} live blocks in a table of {} buckets of {} slots ({:.1} MiB of \
         kernel memory); a block whose window of {} buckets is full before that (rare) is lost \
         as map_full",
        cli.max_allocs,
        table::map_entries(buckets),
        sys::LEAKD_ATTACH_SLOTS,
        (u64::from(table::map_entries(buckets))
            * std::mem::size_of::<sys::leakd_attach_bucket>() as u64) as f64
            / (1u64 << 20) as f64,
        sys::LEAKD_ATTACH_WINDOW,
    );
    let mode = cli.unwind.unwind;
    let mode_value = mode.bpf_value();
    leakd_unwind::configure(&mut loader, &mode_value);
    let alloc_probes::Tracer { mut ebpf, target, .. } =
        alloc_probes::load_tracer(OBJECT, loader, &cli.probe, &ops, &cli.target)?;
    let pid = target.pid();

    let allocs: Array<MapData, sys::leakd_attach_bucket> = bpf::take_map(&mut ebpf, "allocs")?;
    let allocs = table::Table::new(allocs)?;
    let unwinder = Unwinder::start(&mut ebpf, mode, &cli.target, &target)?;
    let stacks = Stacks(bpf::take_map(&mut ebpf, "unwind_stacks")?);
    let sites: BpfHashMap<MapData, sys::leakd_attach_site, sys::leakd_attach_stats> =
        bpf::take_map(&mut ebpf, "sites")?;
    // Before the command is released: its exec must not be missed.
    let btf = bpf::kernel_btf()?;
    bpf::attach_btf_tracepoint(&mut ebpf, &btf, "leakd_attach_exec", "sched_process_exec")?;
    let mut execs: RingBuf<MapData> = bpf::take_map(&mut ebpf, "execs")?;
    let mismatches: RingBuf<MapData> = bpf::take_map(&mut ebpf, "mismatches")?;
    let mut lost = LostCounter::new(&mut ebpf)?;
    let mut event_loop = EventLoop::new(cli.run.duration, Some(TICK))?;
    // What BPF recorded of the mappings of each new site's stack places its
    // frames after the process exited (its /proc maps read empty then).
    let mut maps = MapsCache::new().with_fallback(Box::new(Captured::take(&mut ebpf)?));
    // Snapshot the mappings now: they vanish when the target exits, and the
    // final report is formatted after that.
    // And the containers of the processes, for the same reason.
    let scope = target.scope.clone();
    let mut containers = PidContainers::new();
    event_loop.start_target(target, |pid| {
        maps.prime(pid);
        containers.prime(pid);
    })?;
    let every = cli.interval.interval.unwrap_or(Duration::from_secs(5));
    info!(
        "attached, tracking live allocations, reporting every {:.3} s (Ctrl-C to stop)",
        every.as_secs_f64()
    );
    let mut out = Output::stdout();
    let symbolizer = cli.symbolize.then(|| Symbolizer::new(Resolver::new(SymOptions::default())));
    let settings = Settings {
        combined: cli.combined,
        sample_bytes: cli.sample_bytes,
        top: cli.top,
        older_than_ns: cli.older_than.saturating_mul(1_000_000),
        trend: cli.trend,
        every,
    };
    let sites = Sites::new(stacks, sites, maps);
    let mut targets: Vec<u32> = scope.as_ref().map(|s| s.cgroup.pids()).unwrap_or_default();
    targets.extend(pid);
    let mut reporter = Reporter::new(allocs, sites, settings, symbolizer, pid, usr1, unwinder)
        .with_containers(containers, scope)
        .with_mismatches(mismatches);
    reporter.preload_modules(&targets);
    if event_loop.run(Some(&mut execs), &mut out, &mut lost, &mut reporter)? == End::OutputClosed {
        // Nobody reads the final report: don't walk the map for it.
        return Ok(leakd_common::EXIT_OK);
    }
    let outstanding = reporter.report(&mut out, true)?;
    reporter.unwind_summary();
    lost.report(&mut out)?;
    out.flush()?;
    Ok(cli::exit_code(outstanding, lost.events_lost()))
}
