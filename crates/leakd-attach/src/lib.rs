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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, StackTraceMap};
use aya::EbpfLoader;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use serde_json::{json, Value};

use allocsnoop::{probes, ProbeArgs};
use leakd_common::bpf::{self, Filter, LostCounter};
use leakd_common::cli::{IntervalArgs, RunArgs, TargetArgs};
use leakd_common::event_loop::{EventLoop, Handler};
use leakd_common::out::Output;
use leakd_common::procmaps::MapsCache;
use leakd_common::text::{hex, WallClock};
use leakd_common::{anyhow, bail, launch, Context, Result};

#[allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]
pub mod sys {
    include!(concat!(env!("OUT_DIR"), "/leakd-attach.rs"));
}

// SAFETY: bindgen generated leakd_attach_alloc from bpf/leakd-attach.h as a
// #[repr(C)] struct of integers only (no padding: 3 x u64 + 2 x u32), so
// every bit pattern is a valid value.
unsafe impl aya::Pod for sys::leakd_attach_alloc {}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leakd-attach.bpf.o"));

/// Exit status when outstanding allocations pass the filters at the end.
pub const EXIT_LEAKS: i32 = 3;

/// How often the event loop wakes us: reports are due every `-i`, but a
/// SIGUSR1 should be answered without waiting for the next one.
const TICK: Duration = Duration::from_millis(100);

const EXAMPLES: &str = "\
Examples:
  leakd-attach -p 1234                         outstanding allocations of 1234 every 5 s
  leakd-attach -i 10 --top 5 -p 1234 | symres  the 5 fastest-growing stacks, symbolized
  leakd-attach -- ./leaker ten-nine            what a command left allocated at exit
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
    /// Print at most N stacks per report (0: all).
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    /// Only count blocks allocated at least MS milliseconds before the report.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    older_than: u64,
    /// Only track allocations of at least this many bytes.
    #[arg(long, value_name = "BYTES")]
    min_size: Option<u64>,
    /// Only track allocations of at most this many bytes.
    #[arg(long, value_name = "BYTES")]
    max_size: Option<u64>,
    /// Most live blocks tracked at once (the kernel map's size); more are counted as lost (map_full).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    max_allocs: u32,
    /// Growth is measured over the last N reports; a stack is "growing" when it rose in each.
    #[arg(long, value_name = "N", default_value_t = 3)]
    trend: usize,
}

pub fn command() -> clap::Command {
    Cli::command()
}

pub fn run(matches: &ArgMatches) -> Result<i32> {
    let cli = Cli::from_arg_matches(matches)?;
    if cli.max_allocs == 0 {
        bail!("--max-allocs must be at least 1");
    }
    if cli.trend == 0 {
        bail!("--trend must be at least 1");
    }
    let ops = allocsnoop::ops_for(&cli.probe, &[])?;
    bpf::preflight()?;
    let cgroup_id = cli.target.check()?.unwrap_or(0);
    let exe = match cli.target.command.first() {
        Some(c) => Some(launch::resolve(c)?),
        None => None,
    };
    let (lib, kind) = allocsnoop::resolve_lib(&cli.probe, cli.target.pid, exe.as_deref())?;
    let (sites, missing) = probes::plan(&lib, &cli.probe.prefix, &ops)?;
    if sites.is_empty() {
        bail!("{} defines none of the functions to probe ({})", lib.display(), missing.join(", "));
    }
    let verbose = cli.run.verbose;
    if verbose > 0 {
        eprintln!("leakd-attach: allocator: {} ({kind})", lib.display());
        if !missing.is_empty() {
            eprintln!("leakd-attach: not in {}: {}", lib.display(), missing.join(", "));
        }
    }
    // SIGUSR1 asks for a report now. Registered before anything can send it
    // (a launched command is still held), so it never kills us.
    let usr1 = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&usr1)).context("installing SIGUSR1 handler")?;

    let held = if cli.target.command.is_empty() { None } else { Some(launch::spawn_held(&cli.target.command)?) };
    let pid = held.as_ref().map(|h| h.pid()).or(cli.target.pid);
    // Uprobes are scoped to the process by the kernel; the BPF filter then
    // only needs the cgroup (as in allocsnoop).
    let filter = Filter::new(0, false, cgroup_id);
    let min = cli.min_size.unwrap_or(0);
    let max = cli.max_size.unwrap_or(u64::MAX);
    let mut loader = EbpfLoader::new();
    filter.apply(&mut loader);
    loader.override_global("min_size", &min, true);
    loader.override_global("max_size", &max, true);
    loader.map_max_entries("allocs", cli.max_allocs);
    let mut ebpf = bpf::load(&mut loader, OBJECT)?;
    probes::attach(&mut ebpf, &lib, &sites, pid, verbose, "leakd-attach")?;

    let allocs: BpfHashMap<MapData, u64, sys::leakd_attach_alloc> =
        BpfHashMap::try_from(ebpf.take_map("allocs").ok_or_else(|| anyhow!("map allocs missing"))?)
            .context("opening the allocs map")?;
    let stacks = StackTraceMap::try_from(ebpf.take_map("stacks").ok_or_else(|| anyhow!("map stacks missing"))?)
        .context("opening the stacks map")?;
    let mut lost = LostCounter::new(&mut ebpf)?;
    let mut event_loop = EventLoop::new(cli.run.duration, Some(TICK))?;
    let mut maps = MapsCache::new();
    if let Some(pid) = cli.target.pid {
        event_loop.watch(pid, None)?;
        maps.prime(pid);
    }
    if let Some(held) = held {
        let launched = held.release()?;
        // Snapshot the mappings now: they vanish when the command exits,
        // and the final report is formatted after that.
        maps.prime(launched.pid);
        event_loop.watch(launched.pid, Some(launched))?;
    }
    let every = cli.interval.interval.unwrap_or(Duration::from_secs(5));
    if verbose > 0 {
        eprintln!(
            "leakd-attach: attached, tracking live allocations, reporting every {:.3} s (Ctrl-C to stop)",
            every.as_secs_f64()
        );
    }
    let mut out = Output::stdout();
    let mut reporter = Reporter {
        allocs,
        stacks,
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
    };
    event_loop.run(None, &mut out, &mut lost, &mut reporter)?;
    let outstanding = reporter.report(&mut out, true)?;
    lost.report(&mut out)?;
    out.flush()?;
    Ok(if outstanding > 0 { EXIT_LEAKS } else { leakd_common::EXIT_OK })
}

/// Live blocks of one allocation site: same process, same stack id (or,
/// when the stack could not be stored, same caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SiteKey {
    pid: u32,
    stack_id: u32,
    caller: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Group {
    bytes: u64,
    count: u64,
    oldest_ts_ns: u64,
}

/// Outstanding bytes of one site at the last reports, oldest first.
type History = VecDeque<(Instant, u64)>;

struct Reporter {
    allocs: BpfHashMap<MapData, u64, sys::leakd_attach_alloc>,
    stacks: StackTraceMap<MapData>,
    maps: MapsCache,
    clock: WallClock,
    pid: Option<u32>,
    max_allocs: u32,
    top: usize,
    older_than_ns: u64,
    trend: usize,
    history: HashMap<SiteKey, History>,
    every: Duration,
    next_report: Instant,
    ticks: u32,
    usr1: Arc<AtomicBool>,
    verbose: u8,
}

impl Handler for Reporter {
    fn event(&mut self, _data: &[u8], _out: &mut Output) -> Result<()> {
        Ok(())
    }

    fn interval(&mut self, out: &mut Output) -> Result<()> {
        let now = Instant::now();
        self.ticks = self.ticks.saturating_add(1);
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

impl Reporter {
    /// Read every live block from the kernel map.
    ///
    /// The map changes while we walk it: a key deleted under us makes the
    /// kernel restart the walk from the first key, so keys are de-duplicated
    /// and the walk is bounded; entries gone between "next key" and lookup
    /// are skipped.
    fn snapshot(&self) -> Result<Vec<sys::leakd_attach_alloc>> {
        let mut seen = HashSet::new();
        let mut blocks = Vec::new();
        let limit = 2 * self.max_allocs as usize + 1024;
        for (steps, key) in self.allocs.keys().enumerate() {
            if steps >= limit {
                break;
            }
            let key = match key {
                Ok(k) => k,
                Err(e) => return Err(leakd_common::Error::new(e).context("walking the allocs map")),
            };
            if !seen.insert(key) {
                continue;
            }
            match self.allocs.get(&key, 0) {
                Ok(v) => blocks.push(v),
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(leakd_common::Error::new(e).context("reading the allocs map")),
            }
        }
        Ok(blocks)
    }

    fn frames(&mut self, key: &SiteKey) -> Vec<Value> {
        let mut addrs = Vec::new();
        if key.stack_id != sys::LEAKD_ATTACH_NO_STACK {
            match self.stacks.get(&key.stack_id, 0) {
                Ok(st) => addrs.extend(st.frames().iter().map(|f| f.ip)),
                Err(e) if self.verbose > 1 => eprintln!("leakd-attach: stack {}: {e}", key.stack_id),
                Err(_) => {}
            }
        }
        if addrs.is_empty() {
            addrs.push(key.caller);
        }
        allocsnoop::stack_frames(&mut self.maps, key.pid, &addrs)
    }

    /// Print one report; returns the number of outstanding blocks that
    /// passed the filters.
    fn report(&mut self, out: &mut Output, final_: bool) -> Result<u64> {
        if !final_ {
            if let Some(pid) = self.pid {
                self.maps.prime(pid);
            }
        }
        let blocks = self.snapshot()?;
        let mono_now = WallClock::monotonic_now_ns();
        let now = Instant::now();
        let mut groups: HashMap<SiteKey, Group> = HashMap::new();
        for b in &blocks {
            let age = mono_now.saturating_sub(b.ts_ns);
            if age < self.older_than_ns {
                continue;
            }
            let g = groups.entry(SiteKey { pid: b.pid, stack_id: b.stack_id, caller: b.caller }).or_default();
            if g.count == 0 || b.ts_ns < g.oldest_ts_ns {
                g.oldest_ts_ns = b.ts_ns;
            }
            g.bytes += b.size;
            g.count += 1;
        }

        // Update the growth history: a site with nothing outstanding now
        // counts as 0, and is forgotten once it stayed at 0 for the window.
        for (k, h) in self.history.iter_mut() {
            if !groups.contains_key(k) {
                h.push_back((now, 0));
            }
        }
        for (k, g) in &groups {
            self.history.entry(*k).or_default().push_back((now, g.bytes));
        }
        let keep = self.trend + 1;
        self.history.retain(|_, h| {
            while h.len() > keep {
                h.pop_front();
            }
            h.iter().any(|s| s.1 > 0)
        });

        let total_bytes: u64 = groups.values().map(|g| g.bytes).sum();
        let total_count: u64 = groups.values().map(|g| g.count).sum();
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
        out.line(&header)?;

        let mut ranked: Vec<(SiteKey, Group, f64, bool)> = groups
            .into_iter()
            .map(|(k, g)| {
                let (rate, growing) = self.history.get(&k).map_or((0.0, false), |h| growth(h, self.trend));
                (k, g, rate, growing)
            })
            .collect();
        ranked.sort_by(|a, b| rank(&(a.2, a.1.bytes), &(b.2, b.1.bytes)));
        let n = if self.top == 0 { ranked.len() } else { self.top.min(ranked.len()) };
        for (k, g, rate, growing) in ranked.into_iter().take(n) {
            let stack = self.frames(&k);
            let v = json!({
                "type": "stack",
                "pid": k.pid,
                "outstanding_bytes": g.bytes,
                "outstanding_count": g.count,
                "oldest_age_ms": mono_now.saturating_sub(g.oldest_ts_ns) / 1_000_000,
                "growth_bytes_per_s": (rate * 10.0).round() / 10.0,
                "growing": growing,
                "caller": hex(k.caller),
                "stack": stack,
            });
            out.line(&v)?;
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
        let h: History = [(t, 0), (t + Duration::from_secs(1), 10), (t + Duration::from_secs(2), 20), (t + Duration::from_secs(3), 30)]
            .into_iter()
            .collect();
        let (rate, growing) = growth(&h, 3);
        assert!((rate - 10.0).abs() < 1e-9);
        assert!(growing);
        let flat: History = [(t, 10), (t + Duration::from_secs(1), 20), (t + Duration::from_secs(2), 20), (t + Duration::from_secs(3), 30)]
            .into_iter()
            .collect();
        assert!(!growth(&flat, 3).1);
        // Too short a history is never "growing".
        let short: History = [(t, 10), (t + Duration::from_secs(1), 20)].into_iter().collect();
        assert!(!growth(&short, 3).1);
    }

    #[test]
    fn ranks_growth_before_bytes() {
        let mut v = vec![(0.0, 100u64), (5.0, 1), (0.0, 200)];
        v.sort_by(rank);
        assert_eq!(v, vec![(5.0, 1), (0.0, 200), (0.0, 100)]);
    }
}
