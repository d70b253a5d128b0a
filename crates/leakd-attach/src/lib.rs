//! leakd-attach: attach to a running process (or launch one) and report its
//! outstanding heap allocations grouped by allocating stack, and which of
//! those groups keep growing.
//!
//! Why a map and not a stream: a leak is an allocation *without* a matching
//! free, so the kernel side keeps the set of live blocks itself (address ->
//! size, time, stack id; frees delete). Nothing crosses to user space per
//! call, so the overhead does not depend on how fast we read; user space
//! only walks the map at each report. The probes are allocsnoop's (same
//! allocator detection, same probe sites, same realloc/nesting semantics).
//!
//! Why growth and not just totals: long-lived caches are outstanding too.
//! A stack whose outstanding bytes rose in each of the last `--trend`
//! reports is what a leak looks like over time, so stacks are ranked by
//! growth first.
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
//! Why stack ids are deleted: the kernel's stack map has a fixed size, and
//! a long run on a busy process would fill it with stacks whose blocks were
//! freed long ago. Sites idle for a whole interval with nothing outstanding
//! are deleted; their cumulative counts are kept here, by stack content,
//! and added back if the stack allocates again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, StackTraceMap};
use aya::EbpfLoader;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use serde_json::{json, Value};
use symres::{Options as SymOptions, Resolver};

use allocsnoop::ProbeArgs;
use leakd_common::bpf::{self, LostCounter};
use leakd_common::cli::{IntervalArgs, RunArgs, TargetArgs};
use leakd_common::event_loop::{End, EventLoop, Handler};
use leakd_common::out::Output;
use leakd_common::procmaps::MapsCache;
use leakd_common::text::{hex, WallClock};
use leakd_common::{Context, Result};
use leakd_unwind::{Mode, UnwindArgs, Unwinder};

#[allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]
pub mod sys {
    include!(concat!(env!("OUT_DIR"), "/leakd-attach.rs"));
}

// SAFETY: bindgen generated leakd_attach_alloc from bpf/leakd-attach.h as a
// #[repr(C)] struct of integers only (no padding: 3 x u64 + 2 x u32), so
// every bit pattern is a valid value.
unsafe impl aya::Pod for sys::leakd_attach_alloc {}
// SAFETY: as above: leakd_attach_site is u64 + 2 x u32 (no padding) and
// leakd_attach_stats 8 x u64, both #[repr(C)] integers only.
unsafe impl aya::Pod for sys::leakd_attach_site {}
// SAFETY: see leakd_attach_site.
unsafe impl aya::Pod for sys::leakd_attach_stats {}
// SAFETY: leakd_attach_block is u64 + 2 x u32 (explicit padding field),
// #[repr(C)] integers only.
unsafe impl aya::Pod for sys::leakd_attach_block {}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leakd-attach.bpf.o"));

/// Exit status when outstanding allocations pass the filters at the end.
pub const EXIT_LEAKS: i32 = 3;
/// Exit status when nothing was found outstanding but events were lost, so
/// "no leak" cannot be trusted (a CI job gating on 0 must not pass).
pub const EXIT_INCOMPLETE: i32 = 4;

/// How often the event loop wakes us: reports are due every `-i`, but a
/// SIGUSR1 should be answered without waiting for the next one.
const TICK: Duration = Duration::from_millis(100);

const EXAMPLES: &str = "\
Examples:
  leakd-attach -p 1234                         outstanding allocations of 1234 every 5 s
  leakd-attach -i 10 --top 5 -p 1234 | symres  the 5 fastest-growing stacks, symbolized
  leakd-attach -- ./leaker ten-nine            what a command left allocated at exit
  leakd-attach --combined --sample-bytes 524288 -p 1234
                                               cheap on a busy process: sampled, per-stack totals
  leakd-attach --symbolize -- ./leaker ten-nine with function names, files and lines
  kill -USR1 $(pidof leakd-attach)             report now";

#[derive(Parser, Debug)]
#[command(
    name = "leakd-attach",
    version,
    about = "Report a process's outstanding heap allocations by stack, and which stacks keep growing",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    interval: IntervalArgs,
    #[command(flatten)]
    probe: ProbeArgs,
    #[command(flatten)]
    unwind: UnwindArgs,
    /// Print at most N stacks per report (0: all).
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    /// Only count blocks allocated at least MS milliseconds before the report.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    older_than: u64,
    /// Most live blocks tracked at once (the kernel map's size); more are counted as lost (map_full).
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_allocs: u32,
    /// Growth is measured over the last N reports; a stack is "growing" when it rose in each.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = at_least_one)]
    trend: usize,
    /// Report from per-stack totals kept up to date in the kernel (one entry per stack) instead
    /// of reading every live block; no oldest_age_ms, no --older-than.
    #[arg(long, conflicts_with = "older_than")]
    combined: bool,
    /// Track a block of s bytes with probability 1-exp(-s/N) and scale the totals up
    /// (estimates, marked "estimated": true).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_SAMPLE_BYTES))]
    sample_bytes: Option<u64>,
    /// Resolve stack frames to functions, files and lines in process (as `| symres` would).
    #[arg(long)]
    symbolize: bool,
}

/// Largest --sample-bytes: keeps the kernel's fixed-point products in u64.
const MAX_SAMPLE_BYTES: u64 = 1 << 40;

/// Table of -ln(u) for u = (i + 0.5) / n, in units of 1/ONE, scaled so its
/// mean is exactly 1 (the quantized draw then still has mean N).
fn neg_ln_table() -> [u32; sys::LEAKD_ATTACH_LN_ENTRIES as usize] {
    let n = sys::LEAKD_ATTACH_LN_ENTRIES as usize;
    let raw: Vec<f64> = (0..n).map(|i| -(((i as f64) + 0.5) / n as f64).ln()).collect();
    let mean = raw.iter().sum::<f64>() / n as f64;
    let mut t = [0u32; sys::LEAKD_ATTACH_LN_ENTRIES as usize];
    for (slot, v) in t.iter_mut().zip(raw) {
        *slot = (v / mean * f64::from(sys::LEAKD_ATTACH_ONE)).round() as u32;
    }
    t
}

/// g(x) = x / (e^x - 1), with g(0) = 1.
fn g(x: f64) -> f64 {
    if x < 1e-9 {
        1.0
    } else {
        x / x.exp_m1()
    }
}

/// Table of g at the middle of each step of 1/G_STEPS, in units of 1/ONE.
fn g_table() -> [u32; sys::LEAKD_ATTACH_G_ENTRIES as usize] {
    let mut t = [0u32; sys::LEAKD_ATTACH_G_ENTRIES as usize];
    for (i, slot) in t.iter_mut().enumerate() {
        let x = (i as f64 + 0.5) / f64::from(sys::LEAKD_ATTACH_G_STEPS);
        *slot = (g(x) * f64::from(sys::LEAKD_ATTACH_ONE)).round() as u32;
    }
    t
}

/// What one sampled block of `size` bytes stands for: (bytes, blocks) =
/// (s/p, 1/p) with p = 1-exp(-s/N).
fn sample_weight(size: u64, n: u64) -> (f64, f64) {
    let x = size as f64 / n as f64;
    if size == 0 {
        return (0.0, 1.0);
    }
    let bytes = size as f64 + n as f64 * g(x);
    (bytes, bytes / size as f64)
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub fn command() -> clap::Command {
    Cli::command()
}

pub fn run(matches: &ArgMatches) -> Result<i32> {
    let cli = Cli::from_arg_matches(matches)?;
    let ops = allocsnoop::ops_for(&cli.probe, &[])?;
    let verbose = cli.run.verbose;
    // SIGUSR1 asks for a report now. Registered before anything can send it
    // (a launched command is still held), so it never kills us.
    let usr1 = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&usr1))
        .context("installing SIGUSR1 handler")?;

    let mut loader = EbpfLoader::new();
    let sample_bytes = cli.sample_bytes.unwrap_or(0);
    let neg_ln = neg_ln_table();
    let gt = g_table();
    loader.override_global("sample_bytes", &sample_bytes, true);
    loader.override_global("neg_ln", &neg_ln, true);
    loader.override_global("g_table", &gt, true);
    loader.map_max_entries("allocs", cli.max_allocs);
    let mode = cli.unwind.unwind;
    let mode_value = mode.bpf_value();
    leakd_unwind::configure(&mut loader, &mode_value);
    if mode == Mode::Fp {
        loader.map_max_entries("unwind_stacks", 1);
    } else {
        loader.map_max_entries("stacks", 1);
    }
    let allocsnoop::Tracer { mut ebpf, held, pid } = allocsnoop::load_tracer(
        "leakd-attach",
        OBJECT,
        loader,
        &cli.probe,
        &ops,
        &cli.target,
        verbose,
    )?;

    let allocs: BpfHashMap<MapData, sys::leakd_attach_block, sys::leakd_attach_alloc> =
        bpf::take_map(&mut ebpf, "allocs")?;
    let unwinder =
        allocsnoop::start_unwinder(&mut ebpf, mode, &cli.target, "leakd-attach", verbose)?;
    let stacks = if mode == Mode::Fp {
        Stacks::Fp(bpf::take_map(&mut ebpf, "stacks")?)
    } else {
        Stacks::Dwarf(bpf::take_map(&mut ebpf, "unwind_stacks")?)
    };
    let sites: BpfHashMap<MapData, sys::leakd_attach_site, sys::leakd_attach_stats> =
        bpf::take_map(&mut ebpf, "sites")?;
    let mut lost = LostCounter::new(&mut ebpf)?;
    let mut event_loop = EventLoop::new(cli.run.duration, Some(TICK))?;
    let mut maps = MapsCache::new();
    // Snapshot the mappings now: they vanish when the target exits, and the
    // final report is formatted after that.
    event_loop.start_target(cli.target.pid, held, |pid| maps.prime(pid))?;
    let every = cli.interval.interval.unwrap_or(Duration::from_secs(5));
    if verbose > 0 {
        eprintln!(
            "leakd-attach: attached, tracking live allocations, reporting every {:.3} s (Ctrl-C to stop)",
            every.as_secs_f64()
        );
    }
    let mut out = Output::stdout();
    let symbolizer = cli.symbolize.then(|| Symbolizer {
        resolver: Resolver::new(SymOptions { verbose, ..SymOptions::default() }),
        line: Vec::new(),
        out: Vec::new(),
    });
    let mut reporter = Reporter {
        allocs,
        stacks,
        sites,
        combined: cli.combined,
        sample_bytes: cli.sample_bytes,
        symbolizer,
        folded: HashMap::new(),
        idle: HashMap::new(),
        lines: HashMap::new(),
        maps,
        clock: WallClock::new(),
        pid,
        max_allocs: cli.max_allocs,
        top: cli.top,
        older_than_ns: cli.older_than.saturating_mul(1_000_000),
        trend: cli.trend,
        history: HashMap::new(),
        every,
        next_report: Instant::now() + every,
        ticks: 0,
        usr1,
        verbose,
        unwinder,
    };
    if event_loop.run(None, &mut out, &mut lost, &mut reporter)? == End::OutputClosed {
        // Nobody reads the final report: don't walk the map for it.
        return Ok(leakd_common::EXIT_OK);
    }
    let outstanding = reporter.report(&mut out, true)?;
    if let Some(u) = &reporter.unwinder {
        u.summary();
    }
    lost.report(&mut out)?;
    out.flush()?;
    let lost_events = lost.events_lost();
    if outstanding > 0 {
        return Ok(EXIT_LEAKS);
    }
    if lost_events > 0 {
        eprintln!("leakd-attach: warning: {lost_events} event(s) lost (see the \"lost\" lines): the absence of leaks is not certain");
        return Ok(EXIT_INCOMPLETE);
    }
    Ok(leakd_common::EXIT_OK)
}

/// Live blocks of one allocation site: same process, same stack id (or,
/// when the stack could not be stored, same caller). The kernel's key of
/// the `sites` map, used as is.
type SiteKey = sys::leakd_attach_site;

/// What a report says about one site. Counts and bytes are exact without
/// sampling and estimates (rounded) with it.
#[derive(Debug, Default, Clone, Copy)]
struct Group {
    bytes: u64,
    count: u64,
    /// With sampling, in the default mode: the scaled-up sums.
    est_bytes: f64,
    est_count: f64,
    /// None in --combined mode (the kernel keeps no per-block times there).
    oldest_ts_ns: Option<u64>,
}

impl Group {
    /// Count one live block of `size` bytes allocated at `ts_ns`.
    fn add_block(&mut self, size: u64, ts_ns: u64, sample_bytes: Option<u64>) {
        let (est_bytes, est_count) = sample_bytes.map_or((0.0, 0.0), |n| sample_weight(size, n));
        self.merge(&Group {
            bytes: size,
            count: 1,
            est_bytes,
            est_count,
            oldest_ts_ns: Some(ts_ns),
        });
    }

    fn merge(&mut self, o: &Group) {
        if let Some(ts) = o.oldest_ts_ns {
            if self.oldest_ts_ns.is_none_or(|t| ts < t) {
                self.oldest_ts_ns = Some(ts);
            }
        }
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.count = self.count.saturating_add(o.count);
        self.est_bytes += o.est_bytes;
        self.est_count += o.est_count;
    }
}

/// What a stack line stands for: the process and the return addresses as
/// printed (cut by [`allocsnoop::kept_frames`]). Without frame pointers the
/// kernel's walk goes on through stack garbage that can differ from call to
/// call, so one call path may get several stack ids (and sites); they print
/// the same frames and are merged into one line. Shared, not copied: a
/// report uses each key in several tables (groups, totals, history).
type LineKey = Rc<(u32, Vec<u64>)>;

/// Outstanding bytes of one site at the last reports, oldest first.
type History = VecDeque<(Instant, u64)>;

/// The resolver of --symbolize, and its buffers, reused from line to line.
struct Symbolizer {
    resolver: Resolver,
    line: Vec<u8>,
    out: Vec<u8>,
}

/// Where stacks are kept: the kernel's stack map (frame pointers), or the
/// DWARF walker's table (same ids space: theirs have bit 31 set).
enum Stacks {
    Fp(StackTraceMap<MapData>),
    Dwarf(BpfHashMap<MapData, u32, [u64; leakd_unwind::sys::UNWIND_MAX_FRAMES as usize]>),
}

impl Stacks {
    fn get(&self, id: u32) -> Result<Vec<u64>, MapError> {
        match self {
            Stacks::Fp(m) => Ok(m.get(&id, 0)?.frames().iter().map(|f| f.ip).collect()),
            Stacks::Dwarf(m) => {
                let ips = m.get(&id, 0)?;
                Ok(ips.iter().take_while(|&&ip| ip != 0).copied().collect())
            }
        }
    }

    fn remove(&mut self, id: u32) -> Result<(), MapError> {
        match self {
            Stacks::Fp(m) => m.remove(&id),
            Stacks::Dwarf(m) => m.remove(&id),
        }
    }
}

struct Reporter {
    allocs: BpfHashMap<MapData, sys::leakd_attach_block, sys::leakd_attach_alloc>,
    stacks: Stacks,
    sites: BpfHashMap<MapData, sys::leakd_attach_site, sys::leakd_attach_stats>,
    combined: bool,
    sample_bytes: Option<u64>,
    /// With --symbolize.
    symbolizer: Option<Symbolizer>,
    /// Cumulative counts of sites whose stack id was deleted, added back
    /// when the same stack allocates again.
    folded: HashMap<LineKey, sys::leakd_attach_stats>,
    /// Each site's alloc count at the last report: a site is deleted when
    /// it had nothing outstanding and no alloc during a whole interval.
    idle: HashMap<SiteKey, u64>,
    /// The line each known site is printed in: reading its stack and
    /// checking its frames against the process's mappings is done once per
    /// site, not at every report. Pruned to the sites still in the kernel.
    lines: HashMap<SiteKey, LineKey>,
    maps: MapsCache,
    clock: WallClock,
    pid: Option<u32>,
    max_allocs: u32,
    top: usize,
    older_than_ns: u64,
    trend: usize,
    history: HashMap<LineKey, History>,
    every: Duration,
    next_report: Instant,
    ticks: u32,
    usr1: Arc<AtomicBool>,
    verbose: u8,
    /// The DWARF walker's tables (None with --unwind fp).
    unwinder: Option<Unwinder>,
}

impl Handler for Reporter {
    fn event(&mut self, _data: &[u8], _out: &mut Output) -> Result<()> {
        Ok(())
    }

    fn interval(&mut self, out: &mut Output) -> Result<()> {
        let now = Instant::now();
        self.ticks = self.ticks.saturating_add(1);
        if let Some(u) = self.unwinder.as_mut() {
            u.poll();
        }
        // Shared libraries are mapped by ld.so after exec, once the command
        // runs; refresh our copy of the maps often at first, so frames in
        // them resolve even when the command exits before the first report.
        if self.ticks <= PRIME_TICKS {
            if let Some(pid) = self.pid {
                self.maps.prime(pid);
            }
        }
        let asked = self.usr1.swap(false, Ordering::Relaxed);
        if asked || now >= self.next_report {
            self.report(out, false)?;
            if !asked {
                // Keep the cadence: a SIGUSR1 report does not shift it.
                while self.next_report <= now {
                    self.next_report += self.every;
                }
            }
        }
        Ok(())
    }
}

/// Ticks during which the target's maps are re-read at every tick.
const PRIME_TICKS: u32 = 20;

/// Ranking of stacks: growth first, then outstanding bytes.
fn rank(a: &(f64, u64), b: &(f64, u64)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(b.1.cmp(&a.1))
}

/// Growth over a history window: bytes per second between the oldest and
/// newest sample, and whether every step rose. `trend` steps are needed to
/// call a site growing.
fn growth(h: &History, trend: usize) -> (f64, bool) {
    let (Some(&(t0, b0)), Some(&(t1, b1))) = (h.front(), h.back()) else { return (0.0, false) };
    let secs = t1.duration_since(t0).as_secs_f64();
    let rate = if secs > 0.0 { (b1 as f64 - b0 as f64) / secs } else { 0.0 };
    let growing = h.len() > trend && h.iter().zip(h.iter().skip(1)).all(|(a, b)| b.1 > a.1);
    (rate, growing)
}

fn add_stats(a: &mut sys::leakd_attach_stats, b: &sys::leakd_attach_stats) {
    a.allocs = a.allocs.wrapping_add(b.allocs);
    a.frees = a.frees.wrapping_add(b.frees);
    a.alloc_bytes = a.alloc_bytes.wrapping_add(b.alloc_bytes);
    a.free_bytes = a.free_bytes.wrapping_add(b.free_bytes);
    a.est_allocs = a.est_allocs.wrapping_add(b.est_allocs);
    a.est_frees = a.est_frees.wrapping_add(b.est_frees);
    a.est_alloc_bytes = a.est_alloc_bytes.wrapping_add(b.est_alloc_bytes);
    a.est_free_bytes = a.est_free_bytes.wrapping_add(b.est_free_bytes);
}

/// Blocks allocated and freed as reported: counted, or estimated with
/// sampling.
fn allocs_frees(st: &sys::leakd_attach_stats, sampling: bool) -> (u64, u64) {
    if sampling {
        (fixed_to_count(st.est_allocs), fixed_to_count(st.est_frees))
    } else {
        (st.allocs, st.frees)
    }
}

/// An estimated count kept by the kernel in units of 1/ONE, rounded.
fn fixed_to_count(v: u64) -> u64 {
    let one = u64::from(sys::LEAKD_ATTACH_ONE);
    v.saturating_add(one / 2) / one
}

/// Walk a BPF hash map that changes under us. A key deleted during the walk
/// makes the kernel restart from the first key, so keys are de-duplicated
/// and the walk is bounded; entries gone between "next key" and lookup are
/// skipped.
fn walk<K, V>(map: &BpfHashMap<MapData, K, V>, limit: usize, what: &str) -> Result<Vec<(K, V)>>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    for (steps, key) in map.keys().enumerate() {
        if steps >= limit {
            break;
        }
        let key = key
            .map_err(|e| leakd_common::Error::new(e).context(format!("walking the {what} map")))?;
        if seen.contains(&key) {
            continue;
        }
        match map.get(&key, 0) {
            Ok(v) => {
                seen.insert(key);
                entries.push((key, v));
            }
            Err(MapError::KeyNotFound) => {}
            Err(e) => {
                return Err(leakd_common::Error::new(e).context(format!("reading the {what} map")))
            }
        }
    }
    Ok(entries)
}

impl Reporter {
    /// Read every live block from the kernel map.
    fn snapshot(&self) -> Result<Vec<sys::leakd_attach_alloc>> {
        let limit = 2 * self.max_allocs as usize + 1024;
        Ok(walk(&self.allocs, limit, "allocs")?.into_iter().map(|(_, v)| v).collect())
    }

    /// Per-site totals from the kernel.
    fn site_totals(&self) -> Result<HashMap<SiteKey, sys::leakd_attach_stats>> {
        let entries = walk(&self.sites, 2 * sys::LEAKD_ATTACH_MAX_SITES as usize + 1024, "sites")?;
        Ok(entries.into_iter().collect())
    }

    /// The return addresses of a site's stack (empty when unavailable).
    fn stack_ips(&self, key: &SiteKey) -> Vec<u64> {
        if key.stack_id == sys::LEAKD_ATTACH_NO_STACK {
            return Vec::new();
        }
        match self.stacks.get(key.stack_id) {
            Ok(ips) => ips,
            Err(e) => {
                if self.verbose > 1 {
                    eprintln!("leakd-attach: stack {}: {e}", key.stack_id);
                }
                Vec::new()
            }
        }
    }

    /// The line a site is printed in, memoized (see `lines`).
    fn line_key(&mut self, k: &SiteKey, memo: &mut HashMap<SiteKey, LineKey>) -> LineKey {
        if let Some(l) = memo.get(k) {
            return l.clone();
        }
        let mut addrs = self.stack_ips(k);
        if addrs.is_empty() {
            addrs.push(k.caller);
        }
        addrs.truncate(allocsnoop::kept_frames(&mut self.maps, k.pid, &addrs));
        let l = Rc::new((k.pid, addrs));
        memo.insert(*k, l.clone());
        l
    }

    /// Delete the stack ids and totals of sites that had nothing
    /// outstanding and no new allocation for a whole interval, so a long
    /// run does not fill the kernel's fixed-size stack map with stacks of
    /// blocks freed long ago. Their cumulative counts are kept here, by
    /// stack content, and added back if the stack allocates again. A stack
    /// id shared by several processes is deleted only when all are idle.
    fn sites_gc(
        &mut self,
        totals: &HashMap<SiteKey, sys::leakd_attach_stats>,
        live: &HashSet<SiteKey>,
        memo: &mut HashMap<SiteKey, LineKey>,
    ) -> Result<()> {
        let idle_now =
            |k: &SiteKey, st: &sys::leakd_attach_stats| st.allocs == st.frees && !live.contains(k);
        let mut stack_ok: HashMap<u32, bool> = HashMap::new();
        let mut candidates = Vec::new();
        for (k, st) in totals {
            let ok = idle_now(k, st) && self.idle.get(k) == Some(&st.allocs);
            if k.stack_id != sys::LEAKD_ATTACH_NO_STACK {
                let e = stack_ok.entry(k.stack_id).or_insert(true);
                *e &= ok;
            }
            if ok {
                candidates.push(*k);
            }
        }
        self.idle = totals.iter().map(|(k, st)| (*k, st.allocs)).collect();
        let mut deleted_stacks: HashSet<u32> = HashSet::new();
        for k in candidates {
            if k.stack_id != sys::LEAKD_ATTACH_NO_STACK
                && !stack_ok.get(&k.stack_id).copied().unwrap_or(false)
            {
                continue;
            }
            // Before the stack is gone.
            let line = self.line_key(&k, memo);
            if k.stack_id != sys::LEAKD_ATTACH_NO_STACK && deleted_stacks.insert(k.stack_id) {
                // Stack first: an alloc racing with us re-creates the same
                // id (same stack, same hash bucket).
                match self.stacks.remove(k.stack_id) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => {
                        return Err(
                            leakd_common::Error::new(e).context("deleting from the stacks map")
                        )
                    }
                }
            }
            // Read again right before deleting, to lose as little as possible
            // of what a racing alloc adds.
            let st = match self.sites.get(&k, 0) {
                Ok(st) => st,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(leakd_common::Error::new(e).context("reading the sites map")),
            };
            match self.sites.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(leakd_common::Error::new(e).context("deleting from the sites map"))
                }
            }
            self.idle.remove(&k);
            memo.remove(&k);
            if self.verbose > 2 {
                eprintln!(
                    "leakd-attach: folding {line:x?}: {} allocs, {} frees",
                    st.allocs, st.frees
                );
            }
            add_stats(self.folded.entry(line).or_default(), &st);
        }
        if self.verbose > 1 && !deleted_stacks.is_empty() {
            eprintln!("leakd-attach: deleted {} idle stack(s)", deleted_stacks.len());
        }
        Ok(())
    }

    /// Write a line, symbolized with --symbolize (exactly as `| symres`).
    fn emit(&mut self, out: &mut Output, v: Value) -> Result<()> {
        let Some(Symbolizer { resolver, line, out: resolved }) = self.symbolizer.as_mut() else {
            out.line(&v)?;
            return Ok(());
        };
        // Serialized once; symres rewrites the bytes (or leaves them).
        line.clear();
        serde_json::to_writer(&mut *line, &v).context("formatting a stack line")?;
        resolved.clear();
        match resolver.process_line_into(line, resolved) {
            Ok(true) => out.json_line(resolved)?,
            Ok(false) => out.json_line(line)?,
            Err(e) => {
                eprintln!("leakd-attach: warning: symbolizing: {e}");
                out.json_line(line)?;
            }
        }
        Ok(())
    }

    /// Print one report; returns the number of outstanding blocks that
    /// passed the filters.
    fn report(&mut self, out: &mut Output, final_: bool) -> Result<u64> {
        // Fresh maps for a live target (interval() has just read them
        // during the first ticks).
        if !final_ && self.ticks > PRIME_TICKS {
            if let Some(pid) = self.pid {
                self.maps.prime(pid);
            }
        }
        // Live blocks first, totals second: the kernel counts an alloc before
        // it inserts the block, so every block seen is already counted and a
        // line never shows more outstanding than allocated.
        let blocks = if self.combined { Vec::new() } else { self.snapshot()? };
        let totals = self.site_totals()?;
        let mono_now = WallClock::monotonic_now_ns();
        let now = Instant::now();
        let sampling = self.sample_bytes.is_some();
        let mut memo = std::mem::take(&mut self.lines);
        if self.ticks <= PRIME_TICKS {
            // Libraries may not all be mapped yet: the frames kept may change.
            memo.clear();
        }
        let mut groups: HashMap<LineKey, Group> = HashMap::new();
        let mut live: HashSet<SiteKey> = HashSet::new();
        if self.combined {
            for (k, st) in &totals {
                let count = st.allocs.saturating_sub(st.frees);
                if count == 0 {
                    continue;
                }
                let (bytes, count) = if sampling {
                    (
                        st.est_alloc_bytes.saturating_sub(st.est_free_bytes),
                        fixed_to_count(st.est_allocs.saturating_sub(st.est_frees)),
                    )
                } else {
                    (st.alloc_bytes.saturating_sub(st.free_bytes), count)
                };
                let g = groups.entry(self.line_key(k, &mut memo)).or_default();
                g.bytes = g.bytes.saturating_add(bytes);
                g.count = g.count.saturating_add(count);
            }
        } else {
            // Summed per site first (a small key per block), then per line
            // (a line key holds a whole stack: built and hashed per site).
            let mut sites: HashMap<SiteKey, Group> = HashMap::new();
            for b in &blocks {
                let key = SiteKey { caller: b.caller, stack_id: b.stack_id, pid: b.pid };
                live.insert(key);
                let age = mono_now.saturating_sub(b.ts_ns);
                if age < self.older_than_ns {
                    continue;
                }
                sites.entry(key).or_default().add_block(b.size, b.ts_ns, self.sample_bytes);
            }
            for (key, site) in &sites {
                groups.entry(self.line_key(key, &mut memo)).or_default().merge(site);
            }
            if sampling {
                for g in groups.values_mut() {
                    g.bytes = g.est_bytes.round() as u64;
                    g.count = g.est_count.round() as u64;
                }
            }
        }
        // Cumulative totals per line: merged over its sites, plus those of
        // its sites deleted earlier.
        let mut line_totals: HashMap<LineKey, sys::leakd_attach_stats> = HashMap::new();
        for (k, st) in &totals {
            let line = self.line_key(k, &mut memo);
            if groups.contains_key(&line) {
                add_stats(line_totals.entry(line).or_default(), st);
            }
        }
        for (line, st) in line_totals.iter_mut() {
            if let Some(f) = self.folded.get(line) {
                add_stats(st, f);
            }
        }
        // Every tracked block since the start, outstanding or not (shows
        // that tracing saw the traffic even when nothing is left); summed
        // before sites_gc folds idle sites away.
        let mut all = sys::leakd_attach_stats::default();
        for st in totals.values().chain(self.folded.values()) {
            add_stats(&mut all, st);
        }
        if !final_ {
            self.sites_gc(&totals, &live, &mut memo)?;
        }
        memo.retain(|k, _| totals.contains_key(k) || live.contains(k));
        self.lines = memo;

        // Update the growth history: a site with nothing outstanding now
        // counts as 0, and is forgotten once it stayed at 0 for the window.
        for (k, h) in self.history.iter_mut() {
            if !groups.contains_key(k) {
                h.push_back((now, 0));
            }
        }
        for (k, g) in &groups {
            self.history.entry(k.clone()).or_default().push_back((now, g.bytes));
        }
        let keep = self.trend + 1;
        self.history.retain(|_, h| {
            while h.len() > keep {
                h.pop_front();
            }
            h.iter().any(|s| s.1 > 0)
        });

        // Saturating: sizes come from the kernel (and from the target's
        // arguments), so a sum may not fit.
        let total_bytes = groups.values().fold(0u64, |a, g| a.saturating_add(g.bytes));
        let total_count = groups.values().fold(0u64, |a, g| a.saturating_add(g.count));
        let mut header = json!({
            "type": "report",
            "ts_ns": self.clock.wall_ns(mono_now),
        });
        if let Some(pid) = self.pid {
            header["pid"] = json!(pid);
        }
        header["final"] = json!(final_);
        header["outstanding_bytes"] = json!(total_bytes);
        header["outstanding_count"] = json!(total_count);
        header["stacks"] = json!(groups.len());
        let (allocs, frees) = allocs_frees(&all, sampling);
        header["allocs"] = json!(allocs);
        header["frees"] = json!(frees);
        if let Some(n) = self.sample_bytes {
            header["estimated"] = json!(true);
            header["sample_bytes"] = json!(n);
        }
        out.line(&header)?;

        let mut ranked: Vec<(LineKey, Group, f64, bool)> = groups
            .into_iter()
            .map(|(k, g)| {
                let (rate, growing) =
                    self.history.get(&k).map_or((0.0, false), |h| growth(h, self.trend));
                (k, g, rate, growing)
            })
            .collect();
        ranked.sort_by(|a, b| rank(&(a.2, a.1.bytes), &(b.2, b.1.bytes)));
        let n = if self.top == 0 { ranked.len() } else { self.top.min(ranked.len()) };
        for (k, g, rate, growing) in ranked.into_iter().take(n) {
            let st = line_totals.get(&k).copied().unwrap_or_default();
            let (allocs, frees) = allocs_frees(&st, sampling);
            let (pid, addrs) = &*k;
            let caller = addrs.first().copied().unwrap_or(0);
            let stack = allocsnoop::stack_frames(&mut self.maps, *pid, addrs);
            let mut v = json!({
                "type": "stack",
                "pid": pid,
                "outstanding_bytes": g.bytes,
                "outstanding_count": g.count,
                "allocs": allocs,
                "frees": frees,
            });
            if let Some(ts) = g.oldest_ts_ns {
                v["oldest_age_ms"] = json!(mono_now.saturating_sub(ts) / 1_000_000);
            }
            v["growth_bytes_per_s"] = json!((rate * 10.0).round() / 10.0);
            v["growing"] = json!(growing);
            if sampling {
                v["estimated"] = json!(true);
            }
            v["caller"] = json!(hex(caller));
            v["stack"] = Value::Array(stack);
            self.emit(out, v)?;
        }
        out.flush()?;
        Ok(total_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_needs_a_rise_at_every_step() {
        let t = Instant::now();
        let h: History = [
            (t, 0),
            (t + Duration::from_secs(1), 10),
            (t + Duration::from_secs(2), 20),
            (t + Duration::from_secs(3), 30),
        ]
        .into_iter()
        .collect();
        let (rate, growing) = growth(&h, 3);
        assert!((rate - 10.0).abs() < 1e-9);
        assert!(growing);
        let flat: History = [
            (t, 10),
            (t + Duration::from_secs(1), 20),
            (t + Duration::from_secs(2), 20),
            (t + Duration::from_secs(3), 30),
        ]
        .into_iter()
        .collect();
        assert!(!growth(&flat, 3).1);
        // Too short a history is never "growing".
        let short: History = [(t, 10), (t + Duration::from_secs(1), 20)].into_iter().collect();
        assert!(!growth(&short, 3).1);
    }

    #[test]
    fn sample_tables_are_calibrated() {
        // The exponential draws have mean 1 (in units of ONE).
        let t = neg_ln_table();
        let mean = t.iter().map(|&v| f64::from(v)).sum::<f64>() / t.len() as f64;
        assert!((mean / f64::from(sys::LEAKD_ATTACH_ONE) - 1.0).abs() < 1e-4, "{mean}");
        // g(0) = 1, g falls, and s + N g(s/N) = s / (1 - exp(-s/N)).
        let gt = g_table();
        assert!(gt[0] <= sys::LEAKD_ATTACH_ONE && gt[0] > sys::LEAKD_ATTACH_ONE - 200);
        assert!(gt.windows(2).all(|w| w[1] <= w[0]));
        let (b, c) = sample_weight(4096, 4096);
        let p = 1.0 - (-1.0f64).exp();
        assert!((b - 4096.0 / p).abs() < 1e-6 && (c - 1.0 / p).abs() < 1e-9);
    }

    #[test]
    fn ranks_growth_before_bytes() {
        let mut v = vec![(0.0, 100u64), (5.0, 1), (0.0, 200)];
        v.sort_by(rank);
        assert_eq!(v, vec![(5.0, 1), (0.0, 200), (0.0, 100)]);
    }
}
